//! L7 micro-benchmark (run with --release; prints, never asserts):
//!
//!   cargo run --release -p weir-dataplane --example l7_bench
//!
//! Requests judged per second on one core, for a typical ~300-byte GET head
//! against the paper's rule set (GET, path prefix /public) plus a regex and
//! a host rule in front of it:
//! - one head per segment (the common case: parsed from the frame, no copy);
//! - the same head split into 3 segments (held, copied, judged from the slot);
//! - 8 pipelined heads per segment;
//! - the parser alone, and the matcher alone;
//! - DNS: query parse + name match, and a REFUSED in place.
use std::hint::black_box;
use std::time::Instant;

use weir_dataplane::l7::dns::{parse_query, refuse_in_place, DnsRuleSet};
use weir_dataplane::l7::{
    parse_head, Feed, HttpInspector, HttpRuleSet, HttpRuleSetSpec, L7Verdict, Limits,
};

const HEAD: &[u8] = b"GET /public/assets/app.js?v=3 HTTP/1.1\r\n\
Host: app1.default.svc.cluster.local\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64) ApacheBench/2.3\r\n\
Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n\
Accept-Encoding: gzip, deflate\r\n\
Accept-Language: en-US,en;q=0.5\r\n\
Connection: keep-alive\r\n\r\n";

fn rules() -> HttpRuleSet {
    let spec: HttpRuleSetSpec = serde_json::from_str(
        r#"{"rules":[
            {"method":"POST","path":{"regex":"/api/v[0-9]+/items/[a-z0-9-]+"}},
            {"method":"GET","host":"*.internal.example"},
            {"method":"GET","path":{"prefix":"/public"}}
        ]}"#,
    )
    .unwrap();
    HttpRuleSet::compile(&spec).unwrap()
}

fn report(name: &str, n: u64, secs: f64) {
    println!(
        "{name:<44} {:>12.0} /s/core  {:>8.1} ns each",
        n as f64 / secs,
        secs * 1e9 / n as f64
    );
}

fn main() {
    let rules = rules();
    let n: u64 = 2_000_000;
    println!("head: {} bytes", HEAD.len());

    let judge = |h: &weir_dataplane::l7::RequestHead<'_>| {
        if rules.judge(h).is_some() {
            L7Verdict::Allow
        } else {
            L7Verdict::Deny
        }
    };

    // One head per segment.
    let mut insp = HttpInspector::new(Limits::default());
    insp.start(0);
    let mut seq = 0u32;
    let t = Instant::now();
    for _ in 0..n {
        let f = insp.feed(seq, black_box(HEAD), 0, judge);
        assert_eq!(f, Feed::Release);
        seq = seq.wrapping_add(HEAD.len() as u32);
    }
    report(
        "feed+judge, 1 head per segment",
        n,
        t.elapsed().as_secs_f64(),
    );

    // Split in 3 segments (held, copied).
    let cuts = [0, 20, 150, HEAD.len()];
    let t = Instant::now();
    for _ in 0..n {
        for w in cuts.windows(2) {
            let f = insp.feed(seq, black_box(&HEAD[w[0]..w[1]]), 0, judge);
            assert!(matches!(f, Feed::Hold | Feed::Release));
            seq = seq.wrapping_add((w[1] - w[0]) as u32);
        }
    }
    report(
        "feed+judge, head in 3 segments",
        n,
        t.elapsed().as_secs_f64(),
    );

    // 8 pipelined heads per segment.
    let pipe: Vec<u8> = HEAD.repeat(8);
    let t = Instant::now();
    for _ in 0..n / 8 {
        let f = insp.feed(seq, black_box(&pipe), 0, judge);
        assert_eq!(f, Feed::Release);
        seq = seq.wrapping_add(pipe.len() as u32);
    }
    report(
        "feed+judge, 8 pipelined heads per segment",
        n,
        t.elapsed().as_secs_f64(),
    );
    assert_eq!(insp.requests(), 3 * n);

    let t = Instant::now();
    for _ in 0..n {
        black_box(parse_head(black_box(HEAD)).unwrap());
    }
    report("parse_head alone", n, t.elapsed().as_secs_f64());

    let head = parse_head(HEAD).unwrap();
    let t = Instant::now();
    for _ in 0..n {
        black_box(rules.judge(black_box(&head)));
    }
    report(
        "HttpRuleSet::judge alone (3 rules)",
        n,
        t.elapsed().as_secs_f64(),
    );

    #[rustfmt::skip]
    let query: [u8; 52] = [
        0x8d, 0x3a, 0x01, 0x20, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01,
        0x07, b'e', b'x', b'a', b'm', b'p', b'l', b'e', 0x03, b'c', b'o', b'm', 0x00,
        0x00, 0x01, 0x00, 0x01,
        0x00, 0x00, 0x29, 0x04, 0xd0, 0x00, 0x00, 0x00, 0x00, 0x00, 0x0c,
        0x00, 0x0a, 0x00, 0x08, 0x5b, 0x1e, 0x9c, 0x21, 0x7a, 0x44, 0x03, 0xe8,
    ];
    let dns = DnsRuleSet::compile(&["*.cluster.local", "api.example.org", "example.com"]).unwrap();
    let t = Instant::now();
    for _ in 0..n {
        let q = parse_query(black_box(&query)).unwrap();
        black_box(dns.allows(&q.qname));
    }
    report(
        "DNS parse_query + match (3 patterns)",
        n,
        t.elapsed().as_secs_f64(),
    );
    let t = Instant::now();
    for _ in 0..n {
        let mut m = query;
        black_box(refuse_in_place(black_box(&mut m)).unwrap());
    }
    report("DNS refuse_in_place", n, t.elapsed().as_secs_f64());
}
