// Reference parser for tests/http_differential.rs: Node's own HTTP/1.x
// parser (llhttp, through node's internal `_http_common` binding, in its
// default strict mode). Reads one base64 request stream per stdin line and
// prints one JSON line per input: the heads llhttp completed, in order, as
// [method, url] pairs, and the error that stopped it (null if none).
'use strict';
const { HTTPParser, methods } = require('_http_common');
const readline = require('readline');

const rl = readline.createInterface({ input: process.stdin });
rl.on('line', (line) => {
  const bytes = Buffer.from(line, 'base64');
  const heads = [];
  const p = new HTTPParser();
  p.initialize(HTTPParser.REQUEST, {});
  // As node's _http_common does: a head flushed early (a long one) hands its
  // URL to kOnHeaders, not to kOnHeadersComplete; a trailer section is
  // flushed the same way, and dropped at message end.
  let flushedUrl = '';
  p[HTTPParser.kOnHeaders] = (headers, url) => {
    flushedUrl += url;
  };
  p[HTTPParser.kOnHeadersComplete] = (major, minor, headers, method, url) => {
    heads.push([methods[method], url === undefined ? flushedUrl : url]);
    flushedUrl = '';
    return 0;
  };
  p[HTTPParser.kOnBody] = () => {};
  p[HTTPParser.kOnMessageComplete] = () => {
    flushedUrl = '';
  };
  let error = null;
  const r = p.execute(bytes);
  if (r instanceof Error) error = r.code || String(r);
  p.close();
  process.stdout.write(JSON.stringify({ heads, error }) + '\n');
});
