//! Differential test of the HTTP/1.x inspector (issue 15): generated
//! request streams, cut into segments, are fed to weir's inspector (every
//! complete head allowed, so the inspector's own checks decide); the bytes
//! it lets reach the server (up to its last `Release`/`Forward`) are then
//! parsed by two independent parsers, `httparse` and Node's llhttp
//! (`llhttp_heads.js`, node's internal binding, strict mode). Every head a
//! reference completes in those bytes must be, in order, a head weir judged,
//! with the same method and target: a reference that sees a request weir
//! did not judge (smuggling), or another method or path, is a failure, and
//! the input is saved under `target/http-differential/`. A reference that
//! rejects the bytes (an error) is fine: that server answers 400.
//!
//! `HTTP_DIFF_CASES` (default 4000) and `HTTP_DIFF_SEED` set the run.
//! Needs `node` on PATH (scripts/setup.sh installs it).

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use weir_model::l7::{Feed, HttpInspector, L7Verdict, Limits};

/// splitmix64: a seeded generator, so a failing case replays from its seed
/// (the node reference is run once over the whole batch, which rules out
/// proptest's one-case-at-a-time runner; a crate for ten lines is not worth it).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.below(xs.len())]
    }
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
}

const METHODS: &[&str] = &[
    "GET", "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "get", "G ET", "GET\t", "CONNECT",
    "PRI", "FOO", "",
];
const SP: &[&str] = &[" ", " ", " ", "  ", "\t", ""];
const TARGETS: &[&str] = &[
    "/public/x",
    "/public/../private",
    "/private",
    "/public%2f..%2fprivate",
    "/public?q=1",
    "/public#frag",
    "http://h/public",
    "*",
    "/pub lic",
    "/public\x00",
    "/\u{e9}",
    "//public",
    "",
];
const VERSIONS: &[&str] = &[
    "HTTP/1.1",
    "HTTP/1.1",
    "HTTP/1.0",
    "HTTP/1.1 ",
    "http/1.1",
    "HTTP/2.0",
    "HTTP/1.10",
    "HTTP/1",
    "",
];
const EOL: &[&str] = &["\r\n", "\r\n", "\r\n", "\r\n", "\n", "\r", "\r\r\n"];
const GOOD_HEADERS: &[&str] = &[
    "X-A: b",
    "Content-Length: 5",
    "Content-Length: 0",
    "Transfer-Encoding: chunked",
    "Connection: keep-alive",
];
const HEADERS: &[&str] = &[
    "Host: a",
    "Host: a",
    "Content-Length: 5",
    "Content-Length: 0",
    "Content-Length: 5, 5",
    "Content-Length: 3",
    "Content-Length: -1",
    "Content-Length: +5",
    "Transfer-Encoding: chunked",
    "Transfer-Encoding: gzip, chunked",
    "Transfer-Encoding: chunked, gzip",
    "Transfer-Encoding : chunked",
    "Transfer-Encoding:\tchunked",
    " folded: x",
    "\tfolded",
    "X-A: b",
    "X-A:",
    "Bad Name: x",
    "NoColon",
    ":empty",
    "Connection: close",
    "Expect: 100-continue",
];
const BODIES: &[&str] = &[
    "",
    "hello",
    "5\r\nhello\r\n0\r\n\r\n",
    "0\r\n\r\n",
    "3;x=y\r\nabc\r\n0\r\nT: v\r\n\r\n",
    "GET /private HTTP/1.1\r\n\r\n",
    "0\r\n\r\nGET /private HTTP/1.1\r\nHost: a\r\n\r\n",
    "5\r\nhello\r\n0\r\n",
    "ffffffffffffffffff\r\n",
];

fn request(r: &mut Rng, out: &mut Vec<u8>) {
    let start = out.len();
    let eol = if r.chance(85) { "\r\n" } else { r.pick(EOL) };
    let mut line = String::new();
    line.push_str(if r.chance(70) { "GET" } else { r.pick(METHODS) });
    line.push_str(if r.chance(93) { " " } else { r.pick(SP) });
    line.push_str(if r.chance(60) {
        "/public/x"
    } else {
        r.pick(TARGETS)
    });
    line.push_str(if r.chance(93) { " " } else { r.pick(SP) });
    line.push_str(if r.chance(80) {
        "HTTP/1.1"
    } else {
        r.pick(VERSIONS)
    });
    out.extend_from_slice(line.as_bytes());
    out.extend_from_slice(eol.as_bytes());
    if r.chance(90) {
        out.extend_from_slice(b"Host: a\r\n");
    }
    for _ in 0..r.below(4) {
        let eol = if r.chance(90) { "\r\n" } else { r.pick(EOL) };
        let h = if r.chance(85) {
            r.pick(GOOD_HEADERS)
        } else {
            r.pick(HEADERS)
        };
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(eol.as_bytes());
    }
    out.extend_from_slice(eol.as_bytes());
    // Mostly the body the headers announce, sometimes one they do not.
    let cl5 = out[start..].windows(17).any(|w| w == b"Content-Length: 5") || r.chance(10);
    let te = out[start..]
        .windows(26)
        .any(|w| w == b"Transfer-Encoding: chunked");
    if r.chance(15) {
        out.extend_from_slice(r.pick(BODIES).as_bytes());
    } else if te {
        out.extend_from_slice(b"5\r\nhello\r\n0\r\n\r\n");
    } else if cl5 {
        out.extend_from_slice(b"hello");
    }
}

struct Case {
    seed: u64,
    input: Vec<u8>,
    /// Bytes the inspector let through.
    forwarded: usize,
    /// Heads weir judged (and allowed) in those bytes: (method, target).
    heads: Vec<(String, String)>,
}

fn run_weir(seed: u64, input: Vec<u8>, cuts: &[usize]) -> Case {
    let mut insp = HttpInspector::new(Limits::default());
    let start = 1000u32;
    insp.start(start);
    let mut judged: Vec<(String, String)> = Vec::new();
    let (mut committed, mut forwarded) = (0, 0);
    let mut at = 0;
    for (i, &end) in cuts.iter().chain(std::iter::once(&input.len())).enumerate() {
        if end < at {
            continue;
        }
        // FIN on the last segment now and then (a FIN inside a head denies).
        let fin = i == cuts.len() && seed.is_multiple_of(8);
        let seg = &input[at..end];
        let seq = start.wrapping_add(at as u32);
        let feed = insp.feed_segment(seq, seg, fin, 1, |h| {
            judged.push((h.method().to_string(), h.target().to_string()));
            L7Verdict::Allow
        });
        at = end;
        match feed {
            Feed::Release | Feed::Forward => {
                committed = judged.len();
                forwarded = end;
            }
            Feed::Hold => {}
            Feed::Drop | Feed::Busy | Feed::Deny(_) => {
                if std::env::var_os("HTTP_DIFF_DEBUG").is_some() {
                    eprintln!("{feed:?} {:?}", String::from_utf8_lossy(&input));
                }
                break;
            }
        }
    }
    judged.truncate(committed);
    Case {
        seed,
        input,
        forwarded,
        heads: judged,
    }
}

fn httparse_first(bytes: &[u8]) -> Option<(String, String)> {
    let mut h = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut h);
    match req.parse(bytes) {
        Ok(httparse::Status::Complete(_)) => Some((
            req.method.unwrap_or_default().to_string(),
            req.path.unwrap_or_default().to_string(),
        )),
        _ => None,
    }
}

fn b64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for c in bytes.chunks(3) {
        let n = c
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= c.len() {
                s.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

fn node_heads(cases: &[Case]) -> Vec<Vec<(String, String)>> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/llhttp_heads.js");
    let mut child = Command::new("node")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("node (Node.js) on PATH: scripts/setup.sh installs it");
    let mut stdin = child.stdin.take().expect("stdin");
    let lines: String = cases
        .iter()
        .map(|c| b64(&c.input[..c.forwarded]) + "\n")
        .collect();
    let writer = std::thread::spawn(move || stdin.write_all(lines.as_bytes()));
    let out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut all = Vec::new();
    for line in out.lines() {
        let v: serde_json::Value = serde_json::from_str(&line.expect("line")).expect("json");
        let heads = v["heads"]
            .as_array()
            .expect("heads")
            .iter()
            .map(|h| {
                (
                    h[0].as_str().unwrap_or_default().to_string(),
                    h[1].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        all.push(heads);
    }
    writer.join().expect("writer").expect("write to node");
    assert!(child.wait().expect("node").success(), "node failed");
    assert_eq!(all.len(), cases.len(), "node answered every case");
    all
}

/// `reference` may stop early (an error, or waiting for bytes), never differ
/// from or go beyond what weir judged.
fn agrees(weir: &[(String, String)], reference: &[(String, String)]) -> bool {
    reference.len() <= weir.len() && reference.iter().zip(weir).all(|(r, w)| r == w)
}

#[test]
fn inspector_forwards_only_heads_that_httparse_and_llhttp_read_the_same() {
    let n: usize = std::env::var("HTTP_DIFF_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4000);
    let seed0: u64 = std::env::var("HTTP_DIFF_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(15);
    let mut cases = Vec::with_capacity(n);
    for i in 0..n as u64 {
        let seed = seed0.wrapping_mul(1_000_003).wrapping_add(i);
        let mut r = Rng(seed);
        let mut input = Vec::new();
        for _ in 0..1 + r.below(3) {
            request(&mut r, &mut input);
        }
        let mut cuts: Vec<usize> = (0..r.below(4)).map(|_| r.below(input.len() + 1)).collect();
        cuts.sort_unstable();
        cases.push(run_weir(seed, input, &cuts));
    }
    let node = node_heads(&cases);
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/http-differential");
    let mut failures = Vec::new();
    let (mut with_heads, mut total_heads) = (0, 0);
    for (c, node) in cases.iter().zip(&node) {
        with_heads += usize::from(!c.heads.is_empty());
        total_heads += c.heads.len();
        let fwd = &c.input[..c.forwarded];
        let hp: Vec<_> = httparse_first(fwd).into_iter().collect();
        let ok_hp = agrees(&c.heads, &hp);
        let ok_node = agrees(&c.heads, node);
        if !(ok_hp && ok_node) {
            std::fs::create_dir_all(&dir).expect("dir");
            let file = dir.join(format!("seed-{}.bin", c.seed));
            std::fs::write(&file, &c.input).expect("save input");
            failures.push(format!(
                "seed {} ({}): weir {:?}, httparse {:?}, llhttp {:?}, forwarded {:?}",
                c.seed,
                file.display(),
                c.heads,
                hp,
                node,
                String::from_utf8_lossy(fwd)
            ));
        }
    }
    eprintln!(
        "http differential: {n} streams, {with_heads} with allowed heads ({total_heads} heads), {} disagreements",
        failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(
        with_heads > n / 8,
        "the generator must reach allowed heads often"
    );
}
