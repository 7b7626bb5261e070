//! HTTP/2 (h2c) inspection on the client→server stream: a real curl
//! connection (golden bytes), requests judged per stream with the HTTP
//! rules, gRPC calls, and the evasion / bad-input corpus (CONTINUATION
//! floods, HPACK table tricks, SETTINGS and padding abuse, stream id
//! games). Every case is also fed split at every byte boundary: each ends
//! in the same counted denial or the same clean pass, never a panic.

use proptest::prelude::*;
use weir_dataplane::l7::h2::hpack::{Decoder, Field};
use weir_dataplane::l7::h2::{
    deny_reply, H2Inspector, H2Limits, LastRequest, PREFACE, REFUSALS_MAX,
};
use weir_dataplane::l7::{Feed, HttpRuleSet, HttpRuleSetSpec, L7Reason, L7Verdict};

const ISN: u32 = 7000;

/// `curl --http2-prior-knowledge -H 'x-team: blue'
/// http://app1.test:PORT/public/a?b=1` (curl 7.88.1 / nghttp2 1.52.0),
/// captured once: preface, SETTINGS, WINDOW_UPDATE, HEADERS (Huffman,
/// incremental indexing).
const CURL: &str = "505249202a20485454502f322e300d0a0d0a534d0d0a0d0a000012040000000000000300\
00006400040200000000020000000000000408000000000001ff00010000350105000000\
0182048a62bb63a0c4607fe4700786418b1d7585749509b8d3ed05ff7a8825b650c3abbc\
f2e153032a2f2a4085f2b24a3a7f838e8b4b";

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| c.is_ascii_hexdigit()).collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// The paper's rules, plus a gRPC rule (POST /pkg.Svc/Get, what
/// `grpc: [{service: pkg.Svc, method: Get}]` compiles to).
fn rules() -> HttpRuleSet {
    let spec: HttpRuleSetSpec = serde_json::from_str(
        r#"{"rules":[{"method":"GET","path":{"prefix":"/public"}},
                     {"method":"POST","path":{"exact":"/pkg.Svc/Get"}}]}"#,
    )
    .unwrap();
    HttpRuleSet::compile(&spec).unwrap()
}

fn frame(t: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let l = (payload.len() as u32).to_be_bytes();
    let mut f = vec![l[1], l[2], l[3], t, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

const HEADERS: u8 = 1;
const CONT: u8 = 9;
const END_STREAM: u8 = 1;
const END_HEADERS: u8 = 4;
const PADDED: u8 = 8;

/// HPACK literal without indexing, literal name, no Huffman.
fn lit(name: &str, value: &str) -> Vec<u8> {
    let mut b = vec![0x00];
    str_lit(&mut b, name.as_bytes());
    str_lit(&mut b, value.as_bytes());
    b
}

/// Same with incremental indexing (enters the dynamic table).
fn lit_idx(name: &str, value: &str) -> Vec<u8> {
    let mut b = vec![0x40];
    str_lit(&mut b, name.as_bytes());
    str_lit(&mut b, value.as_bytes());
    b
}

fn str_lit(b: &mut Vec<u8>, s: &[u8]) {
    int(b, 0x00, 7, s.len());
    b.extend_from_slice(s);
}

fn int(b: &mut Vec<u8>, first: u8, prefix: u32, mut v: usize) {
    let max = (1usize << prefix) - 1;
    if v < max {
        b.push(first | v as u8);
        return;
    }
    b.push(first | max as u8);
    v -= max;
    while v >= 128 {
        b.push((v % 128 + 128) as u8);
        v /= 128;
    }
    b.push(v as u8);
}

/// A request block: method, path, then extra fields.
fn req(method: &str, path: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut b = lit(":method", method);
    b.extend(lit(":scheme", "http"));
    b.extend(lit(":path", path));
    b.extend(lit(":authority", "app1"));
    for (n, v) in extra {
        b.extend(lit(n, v));
    }
    b
}

fn start() -> Vec<u8> {
    let mut b = PREFACE.to_vec();
    b.extend(frame(4, 0, 0, &[0, 3, 0, 0, 0, 100]));
    b
}

fn get(stream: u32, path: &str) -> Vec<u8> {
    frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        stream,
        &req("GET", path, &[]),
    )
}

#[derive(Debug, PartialEq)]
enum End {
    /// Every segment forwarded; the requests judged ("METHOD path").
    Pass(Vec<String>),
    Deny(L7Reason),
}

/// Feeds `bytes` in segments cut at `cuts` (offsets), then FIN when `fin`.
fn run_cut(bytes: &[u8], cuts: &[usize], fin: bool) -> (End, H2Inspector) {
    let rules = rules();
    let mut insp = H2Inspector::new(H2Limits::default());
    insp.start(ISN);
    let mut judged = Vec::new();
    let mut at = 0;
    let mut bounds: Vec<usize> = cuts
        .iter()
        .copied()
        .filter(|&c| c > 0 && c < bytes.len())
        .collect();
    bounds.push(bytes.len());
    for (i, &end) in bounds.iter().enumerate() {
        let last = i + 1 == bounds.len();
        let f = insp.feed_segment(
            ISN.wrapping_add(at as u32),
            &bytes[at..end],
            fin && last,
            |h| {
                judged.push(format!("{} {}", h.method(), h.path()));
                if rules.judge(h).is_some() {
                    L7Verdict::Allow
                } else {
                    L7Verdict::Deny
                }
            },
        );
        match f {
            Feed::Forward => {}
            Feed::Deny(r) => return (End::Deny(r), insp),
            other => panic!("unexpected {other:?} at segment {i}"),
        }
        at = end;
    }
    (End::Pass(judged), insp)
}

/// Runs whole, then split at every byte boundary (in two), then in 1-byte
/// segments: all must end the same.
fn run(bytes: &[u8]) -> End {
    let (whole, _) = run_cut(bytes, &[], false);
    for cut in 1..bytes.len() {
        let (e, _) = run_cut(bytes, &[cut], false);
        assert_eq!(e, whole, "cut at {cut}");
    }
    let all: Vec<usize> = (1..bytes.len()).collect();
    assert_eq!(run_cut(bytes, &all, false).0, whole, "1-byte segments");
    whole
}

fn deny(bytes: &[u8]) -> L7Reason {
    match run(bytes) {
        End::Deny(r) => r,
        e => panic!("expected a deny, got {e:?}"),
    }
}

fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

#[test]
fn real_curl_request_is_judged_allowed() {
    let b = hex(CURL);
    assert_eq!(run(&b), End::Pass(vec!["GET /public/a".into()]));
    let (_, insp) = run_cut(&b, &[], false);
    assert_eq!(insp.requests(), 1);
    assert_eq!(
        insp.last_request(),
        LastRequest {
            stream: 1,
            grpc: false
        }
    );
    // curl indexes :authority, user-agent, accept and x-team.
    assert_eq!(insp.table().0, 4);
}

#[test]
fn every_stream_is_judged_and_a_denied_one_denies() {
    let b = cat(&[start(), get(1, "/public/1"), get(3, "/public/2")]);
    assert_eq!(
        run(&b),
        End::Pass(vec!["GET /public/1".into(), "GET /public/2".into()])
    );
    let b = cat(&[start(), get(1, "/public/1"), get(3, "/private")]);
    assert_eq!(deny(&b), L7Reason::Policy);
    let (_, insp) = run_cut(&b, &[], false);
    assert_eq!(
        insp.last_request(),
        LastRequest {
            stream: 3,
            grpc: false
        }
    );
    // Sticky: the retransmission and anything later is denied too.
    let (_, mut insp) = run_cut(&b, &[], false);
    assert_eq!(
        insp.feed_segment(ISN, &b, false, |_| L7Verdict::Allow),
        Feed::Deny(L7Reason::Policy)
    );
}

#[test]
fn the_segment_with_the_last_block_byte_is_the_one_denied() {
    let pre = cat(&[start(), get(1, "/public/1")]);
    let denied = get(3, "/private");
    let b = cat(&[pre.clone(), denied.clone()]);
    for cut in pre.len() + 1..b.len() {
        let rules = rules();
        let mut insp = H2Inspector::new(H2Limits::default());
        insp.start(ISN);
        let j = |h: &weir_dataplane::l7::RequestHead<'_>| {
            if rules.judge(h).is_some() {
                L7Verdict::Allow
            } else {
                L7Verdict::Deny
            }
        };
        assert_eq!(insp.feed_segment(ISN, &b[..cut], false, j), Feed::Forward);
        assert_eq!(
            insp.feed_segment(ISN + cut as u32, &b[cut..], false, j),
            Feed::Deny(L7Reason::Policy)
        );
    }
}

#[test]
fn grpc_calls() {
    let call = |stream, m: &str| {
        frame(
            HEADERS,
            END_HEADERS,
            stream,
            &req(
                "POST",
                &format!("/pkg.Svc/{m}"),
                &[("content-type", "application/grpc"), ("te", "trailers")],
            ),
        )
    };
    let data = frame(0, END_STREAM, 1, &[0, 0, 0, 0, 0]);
    let b = cat(&[start(), call(1, "Get"), data]);
    assert_eq!(run(&b), End::Pass(vec!["POST /pkg.Svc/Get".into()]));
    let b = cat(&[start(), call(1, "Get"), call(3, "Delete")]);
    assert_eq!(deny(&b), L7Reason::Policy);
    let (_, insp) = run_cut(&b, &[], false);
    assert_eq!(
        insp.last_request(),
        LastRequest {
            stream: 3,
            grpc: true
        }
    );
}

/// Decodes weir's reply frames with an HPACK decoder: (type, flags,
/// stream, fields or payload).
type Frames = Vec<(u8, u8, u32, Vec<(String, String)>, Vec<u8>)>;

fn frames(mut b: &[u8]) -> Frames {
    let mut d = Decoder::new();
    let mut v = Vec::new();
    while !b.is_empty() {
        let len = u32::from_be_bytes([0, b[0], b[1], b[2]]) as usize;
        let (t, fl) = (b[3], b[4]);
        let s = u32::from_be_bytes([b[5], b[6], b[7], b[8]]);
        let p = &b[9..9 + len];
        let mut fields = Vec::new();
        if t == HEADERS {
            let mut out = [0u8; 1024];
            let mut fs = [Field::default(); 16];
            let n = d.decode(p, &mut out, &mut fs).unwrap();
            for f in &fs[..n] {
                let g = |(a, l): (u32, u32)| {
                    String::from_utf8(out[a as usize..(a + l) as usize].to_vec()).unwrap()
                };
                fields.push((g(f.name), g(f.value)));
            }
        }
        v.push((t, fl, s, fields, p.to_vec()));
        b = &b[9 + len..];
    }
    assert_eq!(
        d.table(),
        (0, 0),
        "the reply must not touch the client's table"
    );
    v
}

#[test]
fn deny_replies_are_valid_frames() {
    let mut out = [0u8; 512];
    let n = deny_reply(
        LastRequest {
            stream: 3,
            grpc: false,
        },
        "l7-policy",
        &mut out,
    )
    .unwrap();
    let f = frames(&out[..n]);
    assert_eq!(f.len(), 3);
    // An empty SETTINGS first: the client's first frame from the server
    // must be SETTINGS, and the server may not have spoken yet.
    assert_eq!((f[0].0, f[0].1, f[0].2, f[0].4.len()), (4, 0, 0, 0));
    let f = &f[1..];
    assert_eq!(
        (f[0].0, f[0].1, f[0].2),
        (HEADERS, END_HEADERS | END_STREAM, 3)
    );
    assert_eq!(
        f[0].3,
        vec![
            (":status".into(), "403".into()),
            ("x-weir-reason".into(), "l7-policy".into())
        ]
    );
    assert_eq!((f[1].0, f[1].2), (7, 0));
    assert_eq!(f[1].4, vec![0, 0, 0, 1, 0, 0, 0, 0]);
    let n = deny_reply(
        LastRequest {
            stream: 5,
            grpc: true,
        },
        "l7-policy",
        &mut out,
    )
    .unwrap();
    let f = frames(&out[..n]);
    assert_eq!(f[0].0, 4);
    let f = &f[1..];
    assert_eq!(
        f[0].3,
        vec![
            (":status".into(), "200".into()),
            ("content-type".into(), "application/grpc".into()),
            ("grpc-status".into(), "7".into()),
            ("grpc-message".into(), "weir: l7-policy".into())
        ]
    );
    assert_eq!(f[1].4[..4], [0, 0, 0, 3]);
    assert!(deny_reply(
        LastRequest {
            stream: 5,
            grpc: true
        },
        "x",
        &mut out[..20]
    )
    .is_none());
}

#[test]
fn headers_split_over_continuation_and_padding() {
    let block = req("GET", "/public/c", &[("x-a", "1")]);
    let (a, rest) = block.split_at(5);
    let (b2, c) = rest.split_at(7);
    let b = cat(&[
        start(),
        frame(HEADERS, END_STREAM, 1, a),
        frame(CONT, 0, 1, b2),
        frame(CONT, END_HEADERS, 1, c),
    ]);
    assert_eq!(run(&b), End::Pass(vec!["GET /public/c".into()]));
    // Padded and with priority fields.
    let mut p = vec![3u8, 0, 0, 0, 0, 16];
    p.extend(req("GET", "/private", &[]));
    p.extend([0, 0, 0]);
    let b = cat(&[start(), frame(HEADERS, END_HEADERS | PADDED | 0x20, 1, &p)]);
    assert_eq!(deny(&b), L7Reason::Policy);
}

// ---- Evasion and bad input: each a counted denial. ----

#[test]
fn continuation_floods_are_bounded() {
    let mut parts = vec![start(), frame(HEADERS, 0, 1, &req("GET", "/public", &[]))];
    for _ in 0..17 {
        parts.push(frame(CONT, 0, 1, &[]));
    }
    assert_eq!(deny(&cat(&parts)), L7Reason::H2TooLarge);
    // A block beyond 16 KiB over CONTINUATIONs.
    let mut parts = vec![start(), frame(HEADERS, 0, 1, &req("GET", "/public", &[]))];
    for _ in 0..2 {
        parts.push(frame(CONT, 0, 1, &vec![0x82; 9000]));
    }
    assert_eq!(deny(&cat(&parts)), L7Reason::H2TooLarge);
    // A frame beyond SETTINGS_MAX_FRAME_SIZE (only its header is needed).
    assert_eq!(
        run_cut(
            &cat(&[start(), vec![0, 0x40, 1, 0, 0, 0, 0, 0, 1]]),
            &[],
            false
        )
        .0,
        End::Deny(L7Reason::H2TooLarge)
    );
    // Any other frame inside an open block.
    let b = cat(&[
        start(),
        frame(HEADERS, 0, 1, &req("GET", "/public", &[])),
        frame(6, 0, 0, &[0; 8]),
        frame(CONT, END_HEADERS, 1, &[]),
    ]);
    assert_eq!(deny(&b), L7Reason::H2Protocol);
    // A CONTINUATION of another stream, or without HEADERS.
    let b = cat(&[
        start(),
        frame(HEADERS, 0, 1, &req("GET", "/public", &[])),
        frame(CONT, END_HEADERS, 3, &[]),
    ]);
    assert_eq!(deny(&b), L7Reason::H2Protocol);
    assert_eq!(
        deny(&cat(&[start(), frame(CONT, END_HEADERS, 1, &[0x82])])),
        L7Reason::H2Protocol
    );
}

#[test]
fn hpack_table_tricks() {
    // A size update above the 4096 the server allows.
    let mut blk = vec![0x3f, 0xe2, 0x1f];
    blk.extend(req("GET", "/public", &[]));
    assert_eq!(
        deny(&cat(&[start(), frame(HEADERS, 5, 1, &blk)])),
        L7Reason::H2Hpack
    );
    // A size update after a field.
    let mut blk = req("GET", "/public", &[]);
    blk.push(0x20);
    assert_eq!(
        deny(&cat(&[start(), frame(HEADERS, 5, 1, &blk)])),
        L7Reason::H2Hpack
    );
    // An index past the dynamic table.
    let mut blk = req("GET", "/public", &[]);
    blk.push(0xc0);
    assert_eq!(
        deny(&cat(&[start(), frame(HEADERS, 5, 1, &blk)])),
        L7Reason::H2Hpack
    );
    // Indexed :path /public, then the table emptied by a size update to 0:
    // the index no longer exists (for weir as for the server).
    let mut b1 = lit(":method", "GET");
    b1.extend(lit(":scheme", "http"));
    b1.extend(lit_idx(":path", "/public/x"));
    b1.extend(lit(":authority", "app1"));
    let mut b3 = vec![0x20];
    b3.extend(lit(":method", "GET"));
    b3.extend(lit(":scheme", "http"));
    b3.push(0xbe);
    b3.extend(lit(":authority", "app1"));
    let b = cat(&[
        start(),
        frame(HEADERS, 5, 1, &b1),
        frame(HEADERS, 5, 3, &b3),
    ]);
    assert_eq!(deny(&b), L7Reason::H2Hpack);
    // Without the size update the index resolves to /public/x: allowed,
    // exactly what the server decodes.
    let b3 = b3[1..].to_vec();
    let b = cat(&[
        start(),
        frame(HEADERS, 5, 1, &b1),
        frame(HEADERS, 5, 3, &b3),
    ]);
    assert_eq!(
        run(&b),
        End::Pass(vec!["GET /public/x".into(), "GET /public/x".into()])
    );
    // Huffman garbage: EOS inside a string, and padding that is not ones.
    for garbage in [vec![0x85, 0xff, 0xff, 0xff, 0xff, 0xff], vec![0x81, 0x00]] {
        let mut blk = req("GET", "/public", &[]);
        blk.extend([0x00, 0x01, b'x']);
        blk.extend(garbage);
        assert_eq!(
            deny(&cat(&[start(), frame(HEADERS, 5, 1, &blk)])),
            L7Reason::H2Hpack
        );
    }
    // A string longer than its block, an integer that never ends.
    let mut blk = req("GET", "/public", &[]);
    blk.extend([0x00, 0x7f, 0xff, 0xff, 0x03, b'x']);
    assert_eq!(
        deny(&cat(&[start(), frame(HEADERS, 5, 1, &blk)])),
        L7Reason::H2Hpack
    );
    let mut blk = req("GET", "/public", &[]);
    blk.extend([0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
    assert_eq!(
        deny(&cat(&[start(), frame(HEADERS, 5, 1, &blk)])),
        L7Reason::H2Hpack
    );
    // A huge literal: decoded fields beyond the head bound.
    let big = "v".repeat(9000);
    let blk = req("GET", "/public", &[("x-big", &big)]);
    assert_eq!(
        deny(&cat(&[start(), frame(HEADERS, 5, 1, &blk)])),
        L7Reason::H2TooLarge
    );
}

#[test]
fn settings_and_padding_abuse() {
    for f in [
        frame(4, 0, 0, &[0; 5]),       // length not a multiple of 6
        frame(4, 0, 1, &[0; 6]),       // on a stream
        frame(4, 1, 0, &[0; 6]),       // ACK with a payload
        frame(6, 0, 0, &[0; 7]),       // PING of 7 bytes
        frame(6, 0, 1, &[0; 8]),       // PING on a stream
        frame(8, 0, 1, &[0; 5]),       // WINDOW_UPDATE of 5
        frame(3, 0, 0, &[0; 4]),       // RST_STREAM on stream 0
        frame(2, 0, 1, &[0; 4]),       // PRIORITY of 4
        frame(7, 0, 1, &[0; 8]),       // GOAWAY on a stream
        frame(0, 0, 0, &[0; 8]),       // DATA on stream 0
        frame(5, 4, 1, &[0, 0, 0, 2]), // PUSH_PROMISE from a client
    ] {
        assert_eq!(
            deny(&cat(&[start(), f.clone()])),
            L7Reason::H2Protocol,
            "{f:02x?}"
        );
    }
    // Padding as long as the frame, and an empty padded frame.
    let mut p = vec![200u8];
    p.extend(req("GET", "/public", &[]));
    assert_eq!(
        deny(&cat(&[start(), frame(HEADERS, 5 | PADDED, 1, &p)])),
        L7Reason::H2Protocol
    );
    assert_eq!(
        deny(&cat(&[start(), frame(HEADERS, 5 | PADDED, 1, &[])])),
        L7Reason::H2Protocol
    );
    // Many settings and an unknown frame type pass (receivers ignore them).
    let mut parts = vec![start()];
    for _ in 0..50 {
        parts.push(frame(4, 0, 0, &[0, 4, 0, 1, 0, 0]));
    }
    parts.push(frame(0xfa, 0, 0, b"ignored"));
    parts.push(get(1, "/public/s"));
    assert_eq!(run(&cat(&parts)), End::Pass(vec!["GET /public/s".into()]));
}

#[test]
fn stream_id_games() {
    // Even id, id 0.
    assert_eq!(
        deny(&cat(&[start(), get(2, "/public")])),
        L7Reason::H2Protocol
    );
    assert_eq!(
        deny(&cat(&[start(), get(0, "/public")])),
        L7Reason::H2Protocol
    );
    // A decreasing or reused id is never a new request: trailers (END_STREAM,
    // no pseudo-header) pass, anything else is denied.
    let b = cat(&[start(), get(5, "/public"), get(3, "/private")]);
    assert_eq!(deny(&b), L7Reason::H2Malformed);
    let b = cat(&[start(), get(5, "/public"), get(5, "/private")]);
    assert_eq!(deny(&b), L7Reason::H2Malformed);
    let b = cat(&[
        start(),
        get(5, "/public"),
        frame(HEADERS, END_HEADERS, 5, &lit("x-trailer", "1")),
    ]);
    assert_eq!(deny(&b), L7Reason::H2Protocol);
    let b = cat(&[
        start(),
        frame(HEADERS, END_HEADERS, 5, &req("GET", "/public", &[])),
        frame(HEADERS, END_HEADERS | END_STREAM, 5, &lit("x-trailer", "1")),
    ]);
    assert_eq!(run(&b), End::Pass(vec!["GET /public".into()]));
    // A stream id with the reserved bit set is the same stream.
    let mut f = get(1, "/private");
    f[5] |= 0x80;
    assert_eq!(deny(&cat(&[start(), f])), L7Reason::Policy);
}

#[test]
fn malformed_requests() {
    let cases: Vec<(Vec<u8>, L7Reason)> = vec![
        (
            req("GET", "/public", &[("X-Up", "1")]),
            L7Reason::H2Malformed,
        ),
        (
            req("GET", "/public", &[("connection", "close")]),
            L7Reason::H2Malformed,
        ),
        (
            req("GET", "/public", &[("transfer-encoding", "chunked")]),
            L7Reason::H2Malformed,
        ),
        (
            req("GET", "/public", &[("te", "gzip")]),
            L7Reason::H2Malformed,
        ),
        (
            req("GET", "/public", &[("x-a", "1\r\nx: y")]),
            L7Reason::H2Malformed,
        ),
        (
            req("GET", "/public", &[("x-a", " 1")]),
            L7Reason::H2Malformed,
        ),
        (
            req("GET", "/public", &[("host", "other")]),
            L7Reason::HostMismatch,
        ),
        (
            req("GET", "/public/../private", &[]),
            L7Reason::PathNotNormal,
        ),
        (
            req("GET", "/public/%2e%2e/private", &[]),
            L7Reason::PathNotNormal,
        ),
        (
            req("GET", "/public\r\nGET /private", &[]),
            L7Reason::H2Malformed,
        ),
        (req("G ET", "/public", &[]), L7Reason::BadRequestLine),
        (
            {
                let mut b = req("GET", "/public", &[("x-a", "1")]);
                b.extend(lit(":path", "/private"));
                b
            },
            L7Reason::H2Malformed,
        ),
        (
            {
                let mut b = req("GET", "/public", &[]);
                b.extend(lit(":path", "/public"));
                b
            },
            L7Reason::H2Malformed,
        ),
        (
            {
                let mut b = lit(":method", "CONNECT");
                b.extend(lit(":authority", "app1:443"));
                b
            },
            L7Reason::H2Malformed,
        ),
        (
            {
                let mut b = req("GET", "/public", &[]);
                b.splice(0..0, lit(":protocol", "websocket"));
                b
            },
            L7Reason::H2Malformed,
        ),
    ];
    for (blk, want) in cases {
        let b = cat(&[start(), frame(HEADERS, 5, 1, &blk)]);
        assert_eq!(deny(&b), want, "{blk:02x?}");
    }
}

#[test]
fn preface_and_tcp_edges() {
    // HTTP/1 on an HTTP/2 port, or a broken preface.
    assert_eq!(deny(b"GET /public HTTP/1.1\r\n\r\n"), L7Reason::H2Protocol);
    let mut p = start();
    p[3] = b'X';
    assert_eq!(deny(&p), L7Reason::H2Protocol);
    // FIN inside a frame or a block denies; FIN between frames finishes.
    let b = cat(&[start(), get(1, "/public")]);
    let (e, _) = run_cut(&b[..b.len() - 1], &[], true);
    assert_eq!(e, End::Deny(L7Reason::IncompleteHead));
    let blk = req("GET", "/public", &[]);
    let open = cat(&[start(), frame(HEADERS, 0, 1, &blk)]);
    assert_eq!(
        run_cut(&open, &[], true).0,
        End::Deny(L7Reason::IncompleteHead)
    );
    let (e, insp) = run_cut(&b, &[], true);
    assert_eq!(e, End::Pass(vec!["GET /public".into()]));
    assert!(insp.finished());
    // A gap drops; old bytes pass (judged already); new bytes after them
    // are judged.
    let mut insp = H2Inspector::new(H2Limits::default());
    insp.start(ISN);
    let allow = |_: &weir_dataplane::l7::RequestHead<'_>| L7Verdict::Allow;
    assert_eq!(
        insp.feed_segment(ISN + 1, &b[1..], false, allow),
        Feed::Drop
    );
    assert_eq!(
        insp.feed_segment(ISN, &b[..30], false, allow),
        Feed::Forward
    );
    assert_eq!(
        insp.feed_segment(ISN, &b[..10], false, allow),
        Feed::Forward
    );
    assert_eq!(
        insp.feed_segment(ISN + 20, &b[20..], false, allow),
        Feed::Forward
    );
    assert_eq!(insp.requests(), 1);
    assert_eq!(insp.next_seq(), ISN + b.len() as u32);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Any bytes after the preface, cut anywhere: no panic, and every
    /// answer is Forward, Drop or a counted Deny.
    #[test]
    fn never_panics(body in proptest::collection::vec(any::<u8>(), 0..600), cut in 0usize..700) {
        let b = cat(&[start(), body]);
        let (_e, insp) = run_cut(&b, &[cut], false);
        prop_assert!(insp.table().1 <= 4096);
    }

    /// Valid frames with random HPACK blocks: same for weir split anywhere.
    #[test]
    fn random_blocks_split_anywhere(blk in proptest::collection::vec(any::<u8>(), 0..200), cut in 0usize..260) {
        let b = cat(&[start(), frame(HEADERS, 5, 1, &blk)]);
        let whole = run_cut(&b, &[], false).0;
        prop_assert_eq!(run_cut(&b, &[cut], false).0, whole);
    }
}

// Per-stream refusal (docs/l7.md, "A denied stream is refused"): a denied
// request whose `:method` representation is one byte with no HPACK table
// effect, in the segment that completes its block, is refused in place:
// that byte becomes a `:status` one, the segment goes on, so do the other
// streams.

/// A request block whose `:method` is `method_rep` (raw HPACK bytes).
fn req_rep(method_rep: &[u8], path: &str) -> Vec<u8> {
    let mut b = method_rep.to_vec();
    b.extend(lit(":scheme", "http"));
    b.extend(lit(":path", path));
    b.extend(lit(":authority", "app1"));
    b
}

fn judge_rules(
    rules: &HttpRuleSet,
) -> impl FnMut(&weir_dataplane::l7::RequestHead<'_>) -> L7Verdict + '_ {
    |h| {
        if rules.judge(h).is_some() {
            L7Verdict::Allow
        } else {
            L7Verdict::Deny
        }
    }
}

/// Feeds `bytes` as one segment; returns the feed, the inspector and the
/// bytes as forwarded (the rewrites applied).
fn refuse_one(bytes: &[u8]) -> (Feed, H2Inspector, Vec<u8>) {
    let rules = rules();
    let mut insp = H2Inspector::new(H2Limits::default());
    insp.start(ISN);
    let f = insp.feed_segment(ISN, bytes, false, judge_rules(&rules));
    let mut out = bytes.to_vec();
    for (off, byte) in insp.rewrites_in(ISN, out.len()) {
        out[off] = byte;
    }
    (f, insp, out)
}

/// The forwarded bytes differ from the client's in exactly `at`, now `to`.
fn only_changed(orig: &[u8], out: &[u8], at: usize, to: u8) {
    assert_eq!(orig.len(), out.len());
    let diff: Vec<usize> = (0..orig.len()).filter(|&i| orig[i] != out[i]).collect();
    assert_eq!(diff, vec![at], "changed bytes");
    assert_eq!(out[at], to);
}

#[test]
fn a_denied_stream_with_an_indexed_method_is_refused_in_place() {
    for (rep, to) in [(0x82u8, 0x88u8), (0x83, 0x88)] {
        let denied = frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            3,
            &req_rep(&[rep], "/private"),
        );
        let pre = cat(&[start(), get(1, "/public/1")]);
        let b = cat(&[pre.clone(), denied, get(5, "/public/2")]);
        let (f, insp, out) = refuse_one(&b);
        assert_eq!(f, Feed::Forward, "{rep:#x}");
        // The :method byte is the first of stream 3's block (after the
        // 9-byte frame header).
        only_changed(&b, &out, pre.len() + 9, to);
        let (n, last) = insp.refused();
        assert_eq!((n, last.stream), (1, 3));
        assert_eq!(insp.requests(), 3, "the later stream is judged too");
        assert_eq!(insp.denied(), None);
        // A retransmission of the segment (old bytes) is rewritten the same
        // way, and so is one that starts inside it.
        let mut insp = insp;
        assert_eq!(
            insp.feed_segment(ISN, &b, false, |_| L7Verdict::Allow),
            Feed::Forward
        );
        assert_eq!(insp.refused().0, 0, "not refused twice");
        let at = pre.len() + 9;
        assert_eq!(
            insp.rewrites_in(ISN, b.len()).collect::<Vec<_>>(),
            vec![(at, to)]
        );
        assert_eq!(
            insp.rewrites_in(ISN + at as u32 - 3, 10)
                .collect::<Vec<_>>(),
            vec![(3, to)]
        );
        assert_eq!(insp.rewrites_in(ISN + at as u32 + 1, 10).count(), 0);
    }
}

#[test]
fn a_denied_stream_with_a_literal_method_by_static_name_is_refused_in_place() {
    // Without indexing (0x02) and never indexed (0x12), value "DELETE".
    for (first, to) in [(0x02u8, 0x08u8), (0x12, 0x18)] {
        let mut rep = vec![first, 6];
        rep.extend_from_slice(b"DELETE");
        let pre = start();
        let b = cat(&[
            pre.clone(),
            frame(
                HEADERS,
                END_HEADERS | END_STREAM,
                1,
                &req_rep(&rep, "/public/x"),
            ),
        ]);
        let (f, insp, out) = refuse_one(&b);
        assert_eq!(f, Feed::Forward, "{first:#x}");
        only_changed(&b, &out, pre.len() + 9, to);
        assert_eq!(insp.refused().0, 1);
    }
}

#[test]
fn padding_priority_and_continuation_shift_the_rewritten_byte() {
    // HEADERS with PADDED (1 byte pad length) and PRIORITY (5 bytes): the
    // block starts 6 bytes into the payload.
    let blk = req_rep(&[0x83], "/private");
    let mut p = vec![3u8];
    p.extend_from_slice(&[0, 0, 0, 0, 16]);
    p.extend_from_slice(&blk);
    p.extend_from_slice(&[0, 0, 0]);
    let pre = start();
    let b = cat(&[
        pre.clone(),
        frame(HEADERS, END_HEADERS | END_STREAM | PADDED | 0x20, 1, &p),
    ]);
    let (f, _, out) = refuse_one(&b);
    assert_eq!(f, Feed::Forward);
    only_changed(&b, &out, pre.len() + 9 + 6, 0x88);
    // The :method in a CONTINUATION: the HEADERS carries the other fields
    // (pseudo-header order does not matter to HPACK) and the method comes
    // in the CONTINUATION frame, in the same segment.
    let mut first = lit(":scheme", "http");
    first.extend(lit(":path", "/private"));
    first.extend(lit(":authority", "app1"));
    let b = cat(&[
        pre.clone(),
        frame(HEADERS, END_STREAM, 1, &first),
        frame(CONT, END_HEADERS, 1, &[0x82]),
    ]);
    let (f, _, out) = refuse_one(&b);
    assert_eq!(f, Feed::Forward);
    only_changed(&b, &out, b.len() - 1, 0x88);
}

#[test]
fn refusal_falls_back_to_ending_the_connection() {
    let pre = start();
    // :method as a literal with incremental indexing (0x42): it adds a
    // table entry, rewriting its name would desynchronise HPACK.
    let mut rep = vec![0x42, 6];
    rep.extend_from_slice(b"DELETE");
    let b = cat(&[
        pre.clone(),
        frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            1,
            &req_rep(&rep, "/public/x"),
        ),
    ]);
    assert_eq!(refuse_one(&b).0, Feed::Deny(L7Reason::Policy));
    assert_eq!(deny(&b), L7Reason::Policy);
    // A literal name ":method" (0x00 + string): no same-length :status.
    let b = cat(&[pre.clone(), get(1, "/private")]);
    assert_eq!(refuse_one(&b).0, Feed::Deny(L7Reason::Policy));
    // A gRPC call keeps the connection-level PERMISSION_DENIED.
    let mut blk = req_rep(&[0x83], "/pkg.Svc/Delete");
    blk.extend(lit("content-type", "application/grpc"));
    let b = cat(&[pre.clone(), frame(HEADERS, END_HEADERS, 1, &blk)]);
    assert_eq!(refuse_one(&b).0, Feed::Deny(L7Reason::Policy));
    // The :method byte in an earlier segment (already forwarded): the
    // server has it, the connection ends. Cut anywhere after it.
    let b = cat(&[
        pre.clone(),
        frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            1,
            &req_rep(&[0x82], "/private"),
        ),
    ]);
    let at = pre.len() + 9;
    for cut in at + 1..b.len() {
        let (e, _) = run_cut(&b, &[cut], false);
        assert_eq!(e, End::Deny(L7Reason::Policy), "cut at {cut}");
    }
    // Cut before it (or at it): refused in place.
    for cut in [1, pre.len(), at] {
        let (e, insp) = run_cut(&b, &[cut], false);
        assert_eq!(e, End::Pass(vec!["GET /private".into()]), "cut at {cut}");
        assert_eq!(insp.refusals().len(), 1);
    }
}

#[test]
fn refusals_per_connection_are_bounded() {
    let mut parts = vec![start()];
    for i in 0..=REFUSALS_MAX as u32 {
        parts.push(frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            1 + 2 * i,
            &req_rep(&[0x82], "/private"),
        ));
    }
    let rules = rules();
    let mut insp = H2Inspector::new(H2Limits::default());
    insp.start(ISN);
    let mut seq = ISN;
    for (i, p) in parts.iter().enumerate() {
        let f = insp.feed_segment(seq, p, false, judge_rules(&rules));
        seq += p.len() as u32;
        if i <= REFUSALS_MAX {
            assert_eq!(f, Feed::Forward, "segment {i}");
        } else {
            assert_eq!(f, Feed::Deny(L7Reason::Policy), "the one beyond the table");
        }
    }
    assert_eq!(insp.refusals().len(), REFUSALS_MAX);
    // Disabled: every denial ends the connection.
    let mut insp = H2Inspector::new(H2Limits {
        stream_refusals_max: 0,
        ..H2Limits::default()
    });
    insp.start(ISN);
    let b = cat(&parts[..2]);
    assert_eq!(
        insp.feed_segment(ISN, &b, false, judge_rules(&rules)),
        Feed::Deny(L7Reason::Policy)
    );
}

#[test]
fn refused_block_leaves_the_hpack_table_as_the_client_encoded_it() {
    // The denied block adds "x-tag: secret" (incremental indexing, 0x40) to
    // the table; a later allowed block indexes it (0xbe = 62). The
    // rewritten segment, decoded by a fresh decoder as the server would,
    // gives the same table and the same later request.
    let mut blk = req_rep(&[0x82], "/private");
    blk.extend(lit_idx("x-tag", "secret"));
    let mut later = req_rep(&[0x82], "/public/3");
    later.push(0xbe);
    let b = cat(&[
        start(),
        frame(HEADERS, END_HEADERS | END_STREAM, 1, &blk),
        frame(HEADERS, END_HEADERS | END_STREAM, 3, &later),
    ]);
    let (f, insp, out) = refuse_one(&b);
    assert_eq!(f, Feed::Forward);
    assert_eq!(insp.table().0, 1);
    let mut blocks = Vec::new();
    let mut rest = &out[PREFACE.len()..];
    while !rest.is_empty() {
        let len = u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) as usize;
        if rest[3] == HEADERS {
            blocks.push(rest[9..9 + len].to_vec());
        }
        rest = &rest[9 + len..];
    }
    let mut server = Decoder::new();
    let mut o = [0u8; 1024];
    let mut fs = [Field::default(); 16];
    let n = server.decode(&blocks[0], &mut o, &mut fs).unwrap();
    let name = |f: &Field, o: &[u8]| o[f.name.0 as usize..(f.name.0 + f.name.1) as usize].to_vec();
    assert_eq!(name(&fs[0], &o), b":status", "the server sees no :method");
    assert!(!fs[..n].iter().any(|f| name(f, &o) == b":method"));
    assert_eq!(server.table(), insp.table());
    let n = server.decode(&blocks[1], &mut o, &mut fs).unwrap();
    assert_eq!(name(&fs[n - 1], &o), b"x-tag");
}

/// A denied request with a one-byte `:method`, between allowed ones, fed
/// in segments cut at every pair of offsets: each run either ends the
/// connection or forwards everything with exactly the `:method` byte
/// rewritten — never the denied request as sent.
#[test]
fn a_denied_stream_is_never_forwarded_as_sent_however_it_is_cut() {
    let pre = cat(&[start(), get(1, "/public/1")]);
    let at = pre.len() + 9;
    let blk = req_rep(&[0x82], "/private");
    // The offset of the denied block's last byte.
    let last = at + blk.len() - 1;
    let b = cat(&[
        pre,
        frame(HEADERS, END_HEADERS | END_STREAM, 3, &blk),
        get(5, "/public/2"),
    ]);
    let rules = rules();
    let (mut refused, mut ended) = (0, 0);
    for c1 in (1..b.len()).step_by(3) {
        for c2 in (c1..b.len()).step_by(5) {
            let mut insp = H2Inspector::new(H2Limits::default());
            insp.start(ISN);
            let mut sent = Vec::new();
            let mut denied = false;
            for (from, to) in [(0, c1), (c1, c2), (c2, b.len())] {
                if from == to {
                    continue;
                }
                let seq = ISN + from as u32;
                match insp.feed_segment(seq, &b[from..to], false, judge_rules(&rules)) {
                    Feed::Forward => {
                        let mut seg = b[from..to].to_vec();
                        for (off, byte) in insp.rewrites_in(seq, seg.len()) {
                            seg[off] = byte;
                        }
                        sent.extend(seg);
                    }
                    Feed::Deny(r) => {
                        assert_eq!(r, L7Reason::Policy);
                        denied = true;
                        break;
                    }
                    other => panic!("{other:?}"),
                }
            }
            // A cut between the method byte and the block's last byte: the
            // method went to the server before the block was complete.
            let split = [c1, c2].iter().any(|&c| c > at && c <= last);
            assert_eq!(denied, split, "cuts {c1} {c2}");
            if denied {
                assert!(sent.len() <= last, "the completing segment is dropped");
                ended += 1;
            } else {
                only_changed(&b, &sent, at, 0x88);
                refused += 1;
            }
        }
    }
    assert!(refused > 0 && ended > 0, "{refused} {ended}");
}

#[test]
fn a_block_of_more_frames_than_remembered_is_not_refused_in_place() {
    // continuations_max raised above the 17 frames whose positions the
    // inspector keeps: the method in the 20th frame cannot be located, the
    // denial ends the connection.
    let mut insp = H2Inspector::new(H2Limits {
        continuations_max: 32,
        ..H2Limits::default()
    });
    insp.start(ISN);
    let rules = rules();
    let mut parts = vec![
        start(),
        frame(HEADERS, END_STREAM, 1, &lit(":scheme", "http")),
    ];
    parts.push(frame(CONT, 0, 1, &lit(":path", "/private")));
    parts.push(frame(CONT, 0, 1, &lit(":authority", "app1")));
    for _ in 0..16 {
        parts.push(frame(CONT, 0, 1, &[]));
    }
    parts.push(frame(CONT, END_HEADERS, 1, &[0x82]));
    let b = cat(&parts);
    assert_eq!(
        insp.feed_segment(ISN, &b, false, judge_rules(&rules)),
        Feed::Deny(L7Reason::Policy)
    );
    // The same with 16 empty CONTINUATIONs fewer: refused in place.
    let mut insp = H2Inspector::new(H2Limits::default());
    insp.start(ISN);
    let b = cat(&[&parts[..4], &parts[parts.len() - 1..]].concat());
    assert_eq!(
        insp.feed_segment(ISN, &b, false, judge_rules(&rules)),
        Feed::Forward
    );
    assert_eq!(insp.refusals().len(), 1);
    assert_eq!(
        insp.rewrites_in(ISN, b.len()).next(),
        Some((b.len() - 1, 0x88))
    );
}
