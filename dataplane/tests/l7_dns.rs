//! DNS: golden query bytes, name patterns, REFUSED in place, answers along
//! the CNAME chain, compression-pointer loops, and properties.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;
use weir_dataplane::l7::dns::{
    parse_query, parse_query_tcp, parse_response, refuse_in_place, refuse_in_place_tcp, DnsError,
    DnsRuleSet, NamePattern, TYPE_A, TYPE_AAAA,
};

/// What `dig example.com` (9.18) sends: id 0x8d3a, RD|AD, one question,
/// one additional record (EDNS OPT, UDP size 1232, a COOKIE option).
#[rustfmt::skip]
const DIG_QUERY: [u8; 52] = [
    0x8d, 0x3a, 0x01, 0x20, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01,
    0x07, b'e', b'x', b'a', b'm', b'p', b'l', b'e', 0x03, b'c', b'o', b'm', 0x00,
    0x00, 0x01, 0x00, 0x01,
    // OPT: root name, type 41, UDP size 1232, ext-rcode/version/flags 0, rdlen 12
    0x00, 0x00, 0x29, 0x04, 0xd0, 0x00, 0x00, 0x00, 0x00, 0x00, 0x0c,
    // COOKIE option (10), 8-byte client cookie
    0x00, 0x0a, 0x00, 0x08, 0x5b, 0x1e, 0x9c, 0x21, 0x7a, 0x44, 0x03, 0xe8,
];

fn dotted(n: &weir_dataplane::l7::dns::Name<'_>) -> String {
    let mut b = [0u8; 256];
    let len = n.write_dotted(&mut b).unwrap();
    String::from_utf8(b[..len].to_vec()).unwrap()
}

#[test]
fn dig_query_parses() {
    let q = parse_query(&DIG_QUERY).unwrap();
    assert_eq!(q.id, 0x8d3a);
    assert!(q.rd);
    assert_eq!(dotted(&q.qname), "example.com");
    assert_eq!(q.qname.label_count(), 2);
    assert_eq!((q.qtype, q.qclass), (TYPE_A, 1));
    assert_eq!(q.question_end, 29);
}

#[test]
fn dig_query_over_tcp() {
    let mut s = vec![0x00, 52];
    s.extend_from_slice(&DIG_QUERY);
    let q = parse_query_tcp(&s).unwrap();
    assert_eq!(dotted(&q.qname), "example.com");
    assert_eq!(parse_query_tcp(&s[..40]).unwrap_err(), DnsError::Incomplete);
    assert_eq!(parse_query_tcp(&s[..1]).unwrap_err(), DnsError::Incomplete);
    let n = refuse_in_place_tcp(&mut s).unwrap();
    assert_eq!(n, 31);
    assert_eq!(&s[..2], &[0, 29]);
    assert_eq!(parse_response(&s[2..n]).unwrap().rcode, 5);
}

#[test]
fn refused_golden_bytes() {
    let mut m = DIG_QUERY;
    let n = refuse_in_place(&mut m).unwrap();
    #[rustfmt::skip]
    let want: [u8; 29] = [
        0x8d, 0x3a, 0x81, 0x05, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x07, b'e', b'x', b'a', b'm', b'p', b'l', b'e', 0x03, b'c', b'o', b'm', 0x00,
        0x00, 0x01, 0x00, 0x01,
    ];
    assert_eq!(&m[..n], &want[..]);
    let r = parse_response(&m[..n]).unwrap();
    assert_eq!((r.id, r.rcode), (0x8d3a, 5));
    assert_eq!(r.addresses().count(), 0);
}

#[test]
fn queries_that_are_not_queries_refused() {
    let mut m = DIG_QUERY;
    m[2] |= 0x80; // QR
    assert_eq!(parse_query(&m).unwrap_err(), DnsError::NotAQuery);
    let mut m = DIG_QUERY;
    m[2] |= 0x28; // opcode 5 (UPDATE)
    assert_eq!(parse_query(&m).unwrap_err(), DnsError::NotAQuery);
    let mut m = DIG_QUERY;
    m[5] = 2; // two questions
    assert_eq!(parse_query(&m).unwrap_err(), DnsError::NotAQuery);
    assert_eq!(
        parse_query(&DIG_QUERY[..20]).unwrap_err(),
        DnsError::Truncated
    );
    assert_eq!(
        parse_query(&DIG_QUERY[..27]).unwrap_err(),
        DnsError::Truncated
    );
}

fn header(flags: u16, qd: u16, an: u16) -> Vec<u8> {
    let mut m = vec![0x12, 0x34];
    m.extend_from_slice(&flags.to_be_bytes());
    m.extend_from_slice(&qd.to_be_bytes());
    m.extend_from_slice(&an.to_be_bytes());
    m.extend_from_slice(&[0, 0, 0, 0]);
    m
}

#[test]
fn pointer_to_itself_refused() {
    let mut m = header(0x0100, 1, 0);
    m.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
    assert_eq!(parse_query(&m).unwrap_err(), DnsError::BadName);
}

#[test]
fn forward_pointer_refused() {
    let mut m = header(0x0100, 1, 0);
    m.extend_from_slice(&[0xc0, 18, 0, 1, 0, 1, 0x01, b'a', 0]);
    assert_eq!(parse_query(&m).unwrap_err(), DnsError::BadName);
}

#[test]
fn pointer_loop_between_two_names_refused() {
    // Question "a" + pointer to offset 12 (its own start: a loop through
    // a label).
    let mut m = header(0x0100, 1, 0);
    m.extend_from_slice(&[0x01, b'a', 0xc0, 12, 0, 1, 0, 1]);
    assert_eq!(parse_query(&m).unwrap_err(), DnsError::BadName);
    // A response whose answer owner points to a later pointer that points back.
    let mut m = header(0x8180, 1, 1);
    m.extend_from_slice(&[0x01, b'a', 0x00, 0, 1, 0, 1]); // question at 12
                                                          // answer at 19: owner = "b" + pointer to 19 (itself)
    m.extend_from_slice(&[
        0x01, b'b', 0xc0, 19, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 1, 2, 3, 4,
    ]);
    assert_eq!(parse_response(&m).unwrap_err(), DnsError::BadName);
}

#[test]
fn reserved_label_types_and_long_names_refused() {
    let mut m = header(0x0100, 1, 0);
    m.extend_from_slice(&[0x41, b'a', 0, 0, 1, 0, 1]);
    assert_eq!(parse_query(&m).unwrap_err(), DnsError::BadName);
    let mut m = header(0x0100, 1, 0);
    for _ in 0..128 {
        m.extend_from_slice(&[1, b'x']);
    }
    m.extend_from_slice(&[0, 0, 1, 0, 1]);
    assert_eq!(parse_query(&m).unwrap_err(), DnsError::BadName);
}

#[test]
fn name_patterns() {
    let mut m = header(0x0100, 1, 0);
    let q = |name: &str| {
        let mut m = header(0x0100, 1, 0);
        for l in name.split('.') {
            m.push(l.len() as u8);
            m.extend_from_slice(l.as_bytes());
        }
        m.extend_from_slice(&[0, 0, 1, 0, 1]);
        m
    };
    let rules = DnsRuleSet::compile(&["api.example.com", "*.cdn.example.net."]).unwrap();
    for (name, ok) in [
        ("api.example.com", true),
        ("API.Example.COM", true),
        ("x.api.example.com", false),
        ("example.com", false),
        ("a.cdn.example.net", true),
        ("cdn.example.net", false),     // * does not match the apex
        ("a.b.cdn.example.net", false), // * is exactly one label
        ("acdn.example.net", false),
    ] {
        let msg = q(name);
        let parsed = parse_query(&msg).unwrap();
        assert_eq!(rules.allows(&parsed.qname), ok, "{name}");
    }
    m.extend_from_slice(&[0, 0, 1, 0, 1]); // the root name
    let any = NamePattern::parse("*").unwrap();
    assert!(any.matches(&parse_query(&m).unwrap().qname));
    for bad in ["", "a..b", "*.*.a", "a.*", "a b.c", "*x.a"] {
        assert!(NamePattern::parse(bad).is_none(), "{bad:?}");
    }
    assert!(DnsRuleSet::compile(&["ok.com", "bad..com"]).is_err());
}

/// Writes a name as labels, ending with a pointer if given.
fn name(m: &mut Vec<u8>, labels: &[&str], ptr: Option<u16>) {
    for l in labels {
        m.push(l.len() as u8);
        m.extend_from_slice(l.as_bytes());
    }
    match ptr {
        Some(p) => m.extend_from_slice(&(0xc000 | p).to_be_bytes()),
        None => m.push(0),
    }
}

fn rr(m: &mut Vec<u8>, rtype: u16, ttl: u32, rdata: &[u8]) {
    m.extend_from_slice(&rtype.to_be_bytes());
    m.extend_from_slice(&1u16.to_be_bytes());
    m.extend_from_slice(&ttl.to_be_bytes());
    m.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
    m.extend_from_slice(rdata);
}

/// www.example.com → CNAME cdn.example.net (300 s) → CNAME edge.cdn.example.net
/// (60 s) → A 93.184.216.34 (120 s), AAAA 2606:2800::1 (30 s); plus an
/// A record for an unrelated name (ignored) and a TXT record.
fn cname_chain_response() -> Vec<u8> {
    let mut m = header(0x8180, 1, 6);
    name(&mut m, &["www", "example", "com"], None); // 12
    m.extend_from_slice(&[0, 1, 0, 1]);
    // 1: www.example.com CNAME cdn.example.net
    name(&mut m, &[], Some(12));
    let cdn_at = m.len() + 10; // rdata offset
    let mut rd = Vec::new();
    name(&mut rd, &["cdn", "example", "net"], None);
    rr(&mut m, 5, 300, &rd);
    // 2: cdn.example.net CNAME edge.<cdn.example.net>
    name(&mut m, &[], Some(cdn_at as u16));
    let edge_at = m.len() + 10;
    let mut rd = Vec::new();
    name(&mut rd, &["edge"], Some(cdn_at as u16));
    rr(&mut m, 5, 60, &rd);
    // 3: edge A
    name(&mut m, &[], Some(edge_at as u16));
    rr(&mut m, TYPE_A, 120, &[93, 184, 216, 34]);
    // 4: evil.example.org A (not on the chain)
    name(&mut m, &["evil", "example", "org"], None);
    rr(&mut m, TYPE_A, 9999, &[6, 6, 6, 6]);
    // 5: edge AAAA
    name(&mut m, &[], Some(edge_at as u16));
    let v6 = Ipv6Addr::new(0x2606, 0x2800, 0, 0, 0, 0, 0, 1);
    rr(&mut m, TYPE_AAAA, 30, &v6.octets());
    // 6: TXT for the question (not an address)
    name(&mut m, &[], Some(12));
    rr(&mut m, 16, 10, b"\x02hi");
    m
}

#[test]
fn answers_along_the_cname_chain() {
    let m = cname_chain_response();
    let r = parse_response(&m).unwrap();
    assert_eq!(dotted(&r.qname), "www.example.com");
    let got: Vec<(IpAddr, u32)> = r.addresses().collect();
    assert_eq!(
        got,
        vec![
            (IpAddr::V4(Ipv4Addr::new(93, 184, 216, 34)), 60),
            (
                IpAddr::V6(Ipv6Addr::new(0x2606, 0x2800, 0, 0, 0, 0, 0, 1)),
                30
            ),
        ],
        "TTL: the smallest along the chain; off-chain records ignored"
    );
}

#[test]
fn direct_answer_and_error_rcode() {
    let mut m = header(0x8180, 1, 1);
    name(&mut m, &["a", "io"], None);
    m.extend_from_slice(&[0, 1, 0, 1]);
    name(&mut m, &[], Some(12));
    rr(&mut m, TYPE_A, 42, &[10, 1, 2, 3]);
    let r = parse_response(&m).unwrap();
    assert_eq!(
        r.addresses().collect::<Vec<_>>(),
        vec![(IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)), 42)]
    );
    // NXDOMAIN: nothing learned.
    m[3] = 0x83;
    assert_eq!(parse_response(&m).unwrap().addresses().count(), 0);
    // A truncated answer section is refused as a whole.
    assert_eq!(
        parse_response(&m[..m.len() - 1]).unwrap_err(),
        DnsError::Truncated
    );
    // A query is not a response.
    assert_eq!(
        parse_response(&DIG_QUERY).unwrap_err(),
        DnsError::NotAResponse
    );
}

#[test]
fn cname_loop_in_answers_ends() {
    // a.io CNAME b.io, b.io CNAME a.io, and an A for c.io: nothing, no hang.
    let mut m = header(0x8180, 1, 3);
    name(&mut m, &["a", "io"], None);
    m.extend_from_slice(&[0, 1, 0, 1]);
    name(&mut m, &[], Some(12));
    let b_at = m.len() + 10;
    let mut rd = Vec::new();
    name(&mut rd, &["b", "io"], None);
    rr(&mut m, 5, 5, &rd);
    name(&mut m, &[], Some(b_at as u16));
    let mut rd = Vec::new();
    name(&mut rd, &[], Some(12));
    rr(&mut m, 5, 5, &rd);
    name(&mut m, &["c", "io"], None);
    rr(&mut m, TYPE_A, 5, &[1, 1, 1, 1]);
    assert_eq!(parse_response(&m).unwrap().addresses().count(), 0);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        if let Ok(q) = parse_query(&bytes) {
            let _ = (q.qname.label_count(), q.qname.write_dotted(&mut [0u8; 64]));
        }
        if let Ok(r) = parse_response(&bytes) {
            let _ = r.addresses().count();
        }
        let _ = parse_query_tcp(&bytes);
        let mut b = bytes.clone();
        let _ = refuse_in_place(&mut b);
    }

    #[test]
    fn mutated_response_never_panics(flips in prop::collection::vec((0usize..200, any::<u8>()), 1..8)) {
        let mut m = cname_chain_response();
        for (i, b) in flips { if let Some(x) = m.get_mut(i) { *x = b; } }
        if let Ok(r) = parse_response(&m) {
            let _ = r.addresses().count();
        }
    }

    /// emit (a query built from labels) then parse gives the labels back;
    /// refusing it gives a response with the same id and question.
    #[test]
    fn query_round_trip(
        id in any::<u16>(),
        labels in prop::collection::vec("[a-z0-9-]{1,20}", 1..6),
        qtype in any::<u16>(),
    ) {
        let mut m = vec![0, 0, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        m[..2].copy_from_slice(&id.to_be_bytes());
        let refs: Vec<&str> = labels.iter().map(String::as_str).collect();
        name(&mut m, &refs, None);
        m.extend_from_slice(&qtype.to_be_bytes());
        m.extend_from_slice(&[0, 1]);
        let q = parse_query(&m).unwrap();
        prop_assert_eq!(q.id, id);
        prop_assert_eq!(q.qtype, qtype);
        prop_assert_eq!(dotted(&q.qname), labels.join("."));
        prop_assert_eq!(q.question_end, m.len());
        let mut r = m.clone();
        let n = refuse_in_place(&mut r).unwrap();
        let resp = parse_response(&r[..n]).unwrap();
        prop_assert_eq!(resp.id, id);
        prop_assert_eq!(resp.rcode, 5);
        prop_assert!(resp.qname.eq_name(&q.qname));
        prop_assert_eq!(&r[12..n], &m[12..]);
    }
}
