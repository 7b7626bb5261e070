//! TLS server-name rules through `process` (docs/l7.md, "TLS server
//! names"): a flow admitted by a rule whose L7 set has `tls` patterns is
//! judged on its ClientHello; allowed hellos (also split over segments)
//! pass unchanged, others are denied with an RST to each end.
use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};
use weir_dataplane::flows::FlowEvent;
use weir_dataplane::l7::tls::TlsRuleSpec;
use weir_dataplane::l7::HttpRuleSetSpec;
use weir_dataplane::pass::{process, WorkerState};
use weir_dataplane::policy::{
    CellSpec, Decision, Direction, EndpointTables, PolicySpec, RuleId, RuleInfo, Tier,
    IDENTITY_WORLD,
};
use weir_dataplane::{DropReason, Endpoint, Port, Snapshot, SnapshotSpec, Verdict};

const A: [u8; 4] = [10, 1, 0, 1]; // app2, the client
const B: [u8; 4] = [10, 1, 0, 2]; // app1, the server (TCP 80)
const ISN: u32 = 1000;
const SERVER_ISN: u32 = 5000;

fn port_mac(p: u8) -> [u8; 6] {
    [0x02, 0, 0, 0, 0, p]
}
fn pod_mac(p: u8) -> [u8; 6] {
    [0x0a, 0, 0, 0, 0, p]
}

/// To b (id=app1) on TCP 80, only from a (id=app2), only TLS to
/// `api.example.com` or `*.svc.example`. Everything else to b: implicit deny.
fn snap() -> Snapshot {
    let port = |i: u8| Port {
        name: format!("veth{i}"),
        mac: port_mac(i),
        mtu: 1500,
    };
    let ep = |i: u8, name: &str, a: [u8; 4]| Endpoint {
        name: name.into(),
        port: u16::from(i),
        mac: pod_mac(i),
        ipv4: Some(a.into()),
        ipv6: None,
    };
    let deny = Decision::deny(RuleId::IMPLICIT_DENY);
    let l7_allow = Decision {
        l7: Some(0),
        ..Decision::allow(RuleId(0))
    };
    let policy = PolicySpec {
        generation: 1,
        rules: vec![RuleInfo {
            tier: Tier::Namespace,
            kind: "weirpolicies".into(),
            namespace: Some("default".into()),
            name: "app1-tls".into(),
            direction: Direction::Ingress,
            index: 0,
            action: "Allow".into(),
            priority: None,
        }],
        classes: vec![IDENTITY_WORLD, 256, 257],
        addresses: vec![(A.into(), 1), (B.into(), 2)],
        prefixes: vec![],
        world_class: 0,
        cells: vec![
            CellSpec::uniform(deny),
            CellSpec {
                other: deny,
                tcp: vec![(0, deny), (80, l7_allow), (81, deny)],
                udp: vec![(0, deny)],
                sctp: vec![(0, deny)],
            },
        ],
        tables: vec![vec![0, 1, 0]],
        endpoints: vec![
            EndpointTables::default(),
            EndpointTables {
                ingress: Some(0),
                egress: None,
            },
        ],
        http: vec![HttpRuleSetSpec {
            rules: vec![],
            tls: vec![
                TlsRuleSpec {
                    sni: "api.example.com".into(),
                },
                TlsRuleSpec {
                    sni: "*.svc.example".into(),
                },
            ],
        }],
        ..Default::default()
    };
    Snapshot::build(SnapshotSpec {
        generation: 1,
        node: "node-1".into(),
        node_ipv4: Some([10, 0, 0, 10].into()),
        node_ipv6: None,
        ports: vec![port(0), port(1)],
        endpoints: vec![ep(0, "a", A), ep(1, "b", B)],
        policy,
        tunnel: None,
        services: Vec::new(),
        host: None,
        uplink: None,
    })
    .unwrap()
}

/// A TCP segment: `from` 0 = client a (sport 40000 → 80), 1 = server b.
fn seg(from: u8, seq: u32, ack: Option<u32>, syn: bool, payload: &[u8]) -> Vec<u8> {
    let (src, dst, sp, dp) = if from == 0 {
        (A, B, 40000, 80)
    } else {
        (B, A, 80, 40000)
    };
    let b = PacketBuilder::ethernet2(pod_mac(from), port_mac(from))
        .ipv4(src, dst, 64)
        .tcp(sp, dp, seq, 64240);
    let b = if syn { b.syn() } else { b };
    let b = match ack {
        Some(a) => b.ack(a),
        None => b,
    };
    let b = if payload.is_empty() { b } else { b.psh() };
    let mut out = Vec::new();
    b.write(&mut out, payload).unwrap();
    out
}

struct Run {
    v: Verdict,
    out: Vec<u8>,
}

fn run(frame: &[u8], s: &Snapshot, st: &mut WorkerState) -> Run {
    let mut buf = vec![0u8; 2048];
    buf[..frame.len()].copy_from_slice(frame);
    let ingress = u16::from(frame[6 + 5]);
    let v = process(&mut buf, frame.len(), ingress, s, st);
    let n = match v {
        Verdict::Tx { len, .. } | Verdict::Hold { len, .. } | Verdict::Release { len, .. } => len,
        Verdict::L7Deny { reply_len, .. } => reply_len,
        Verdict::Drop(_) => 0,
    };
    Run {
        v,
        out: buf[..n].to_vec(),
    }
}

/// Handshake a → b; returns the client's next sequence number.
fn open(s: &Snapshot, st: &mut WorkerState) -> u32 {
    assert!(matches!(
        run(&seg(0, ISN, None, true, b""), s, st).v,
        Verdict::Tx { port: 1, .. }
    ));
    assert!(matches!(
        run(&seg(1, SERVER_ISN, Some(ISN + 1), true, b""), s, st).v,
        Verdict::Tx { port: 0, .. }
    ));
    assert!(matches!(
        run(&seg(0, ISN + 1, Some(SERVER_ISN + 1), false, b""), s, st).v,
        Verdict::Tx { port: 1, .. }
    ));
    ISN + 1
}

fn req(s: &Snapshot, st: &mut WorkerState, seq: u32, data: &[u8]) -> Run {
    run(&seg(0, seq, Some(SERVER_ISN + 1), false, data), s, st)
}

fn tcp_payload(frame: &[u8]) -> Vec<u8> {
    let p = SlicedPacket::from_ethernet(frame).unwrap();
    match p.transport {
        Some(TransportSlice::Tcp(t)) => t.payload().to_vec(),
        _ => panic!("not TCP"),
    }
}

/// The flow events of L7 denials (new-flow events left out).
fn events(st: &WorkerState) -> Vec<FlowEvent> {
    let mut v = Vec::new();
    st.flows().drain(&mut v);
    v.retain(|e| e.l7.is_some());
    v
}

fn sni_ext(name: &[u8]) -> (u16, Vec<u8>) {
    let mut d = Vec::new();
    d.extend_from_slice(&((name.len() + 3) as u16).to_be_bytes());
    d.push(0);
    d.extend_from_slice(&(name.len() as u16).to_be_bytes());
    d.extend_from_slice(name);
    (0, d)
}

/// A ClientHello with these extensions, in one handshake record.
fn hello(exts: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let mut b = vec![3, 3];
    b.extend_from_slice(&[0x5a; 32]);
    b.push(0);
    b.extend_from_slice(&[0, 2, 0x13, 0x01, 1, 0]);
    let mut e = Vec::new();
    for (t, d) in exts {
        e.extend_from_slice(&t.to_be_bytes());
        e.extend_from_slice(&(d.len() as u16).to_be_bytes());
        e.extend_from_slice(d);
    }
    b.extend_from_slice(&(e.len() as u16).to_be_bytes());
    b.extend_from_slice(&e);
    let mut m = vec![1];
    m.extend_from_slice(&(b.len() as u32).to_be_bytes()[1..]);
    m.extend_from_slice(&b);
    let mut r = vec![22, 3, 1];
    r.extend_from_slice(&(m.len() as u16).to_be_bytes());
    r.extend_from_slice(&m);
    r
}

fn hello_for(name: &str) -> Vec<u8> {
    hello(&[(10, vec![0, 2, 0, 29]), sni_ext(name.as_bytes())])
}

/// The TCP header of a built frame: (seq, ack, flags byte).
fn tcp_of(frame: &[u8]) -> (u32, u32, bool, bool) {
    let p = SlicedPacket::from_ethernet(frame).unwrap();
    match p.transport {
        Some(TransportSlice::Tcp(t)) => (
            t.sequence_number(),
            t.acknowledgment_number(),
            t.rst(),
            t.ack(),
        ),
        _ => panic!("not TCP"),
    }
}

#[test]
fn allowed_names_pass_unchanged_and_the_rest_of_the_connection_follows() {
    for name in ["api.example.com", "API.example.COM", "x.svc.example"] {
        let s = snap();
        let mut st = WorkerState::new();
        let seq = open(&s, &mut st);
        let h = hello_for(name);
        let r = req(&s, &mut st, seq, &h);
        assert!(
            matches!(r.v, Verdict::Tx { port: 1, .. }),
            "{name}: {:?}",
            r.v
        );
        assert_eq!(tcp_payload(&r.out), h);
        // Later client bytes (encrypted records) pass unjudged.
        let next = seq + h.len() as u32;
        let app = [0x17, 3, 3, 0, 3, 1, 2, 3];
        let r = req(&s, &mut st, next, &app);
        assert!(matches!(r.v, Verdict::Tx { port: 1, .. }), "{:?}", r.v);
        assert_eq!(st.l7_counts(), (0, 0));
        assert!(events(&st).is_empty());
    }
}

#[test]
fn a_hello_split_over_segments_is_reassembled() {
    let s = snap();
    let mut st = WorkerState::new();
    let seq = open(&s, &mut st);
    let h = hello_for("api.example.com");
    // 1-byte, 4-byte, then the rest: the incomplete parts are forwarded
    // (a TLS server cannot answer part of a hello), the last one judged.
    let cuts = [0, 1, 5, 40, h.len()];
    for w in cuts.windows(2) {
        let r = req(&s, &mut st, seq + w[0] as u32, &h[w[0]..w[1]]);
        assert!(
            matches!(r.v, Verdict::Tx { port: 1, .. }),
            "{w:?}: {:?}",
            r.v
        );
        assert_eq!(tcp_payload(&r.out), &h[w[0]..w[1]]);
    }
    // A retransmission of the first part with other bytes is refused.
    let s2 = snap();
    let mut st2 = WorkerState::new();
    let seq2 = open(&s2, &mut st2);
    assert!(matches!(
        req(&s2, &mut st2, seq2, &h[..10]).v,
        Verdict::Tx { .. }
    ));
    let mut other = h[..10].to_vec();
    other[9] ^= 1;
    let r = req(&s2, &mut st2, seq2, &other);
    assert!(matches!(r.v, Verdict::L7Deny { .. }), "{:?}", r.v);
}

#[test]
fn a_denied_name_resets_both_ends() {
    let s = snap();
    let mut st = WorkerState::new();
    let seq = open(&s, &mut st);
    let h = hello_for("evil.example.com");
    // The first part passes; the part completing the hello is denied.
    assert!(matches!(
        req(&s, &mut st, seq, &h[..30]).v,
        Verdict::Tx { .. }
    ));
    let r = req(&s, &mut st, seq + 30, &h[30..]);
    let Verdict::L7Deny {
        reply_port,
        reply_len,
        rst_port,
        rst,
        reason,
        ..
    } = r.v
    else {
        panic!("expected L7Deny, got {:?}", r.v);
    };
    assert_eq!(reason, DropReason::TlsSniDenied);
    assert_eq!((reply_port, rst_port), (0, 1));
    assert!(reply_len > 0);
    // To the client: a RST as from the server, at the server's next
    // sequence number, acknowledging every client byte; no payload.
    let (rseq, rack, is_rst, is_ack) = tcp_of(&r.out);
    assert_eq!(
        (rseq, rack, is_rst, is_ack),
        (SERVER_ISN + 1, seq + h.len() as u32, true, true)
    );
    assert!(tcp_payload(&r.out).is_empty());
    assert_eq!(&r.out[0..6], &pod_mac(0));
    // To the server: a RST at the first byte it was not sent.
    assert_eq!(rst.server_expects_seq, seq + 30);
    let ev = events(&st);
    assert_eq!(ev.len(), 1);
    let note = ev[0].l7.unwrap();
    assert_eq!(note.reason.as_str(), "tls-sni-denied");
    assert_eq!((note.method(), note.path()), ("TLS", "evil.example.com"));
    assert_eq!(ev[0].reason, Some(DropReason::TlsSniDenied));
    // Later data of the flow never passes.
    let r = req(&s, &mut st, seq + h.len() as u32, b"\x17\x03\x03\x00\x01x");
    assert!(matches!(r.v, Verdict::Drop(_)), "{:?}", r.v);
}

#[test]
fn no_name_ech_and_malformed_first_flights_are_denied() {
    let cases: Vec<(Vec<u8>, &str, DropReason)> = vec![
        (
            hello(&[(10, vec![0, 2, 0, 29])]),
            "tls-no-sni",
            DropReason::TlsSniDenied,
        ),
        (
            hello(&[sni_ext(b"api.example.com"), (0xfe0d, vec![0; 32])]),
            "tls-ech",
            DropReason::TlsSniDenied,
        ),
        (
            hello(&[sni_ext(b"api.example.com"), sni_ext(b"api.example.com")]),
            "tls-malformed",
            DropReason::TlsMalformed,
        ),
        (
            b"GET / HTTP/1.1\r\nHost: api.example.com\r\n\r\n".to_vec(),
            "tls-malformed",
            DropReason::TlsMalformed,
        ),
        (
            hello_for("api.example.com."),
            "tls-malformed",
            DropReason::TlsMalformed,
        ),
    ];
    for (bytes, name, drop) in cases {
        let s = snap();
        let mut st = WorkerState::new();
        let seq = open(&s, &mut st);
        let r = req(&s, &mut st, seq, &bytes);
        let Verdict::L7Deny { reason, .. } = r.v else {
            panic!("{name}: expected L7Deny, got {:?}", r.v);
        };
        assert_eq!(reason, drop, "{name}");
        let ev = events(&st);
        assert_eq!(ev[0].l7.unwrap().reason.as_str(), name);
    }
}

#[test]
fn fin_inside_the_hello_is_denied() {
    let s = snap();
    let mut st = WorkerState::new();
    let seq = open(&s, &mut st);
    let h = hello_for("api.example.com");
    let mut f = seg(0, seq, Some(SERVER_ISN + 1), false, &h[..20]);
    // Set FIN on the segment (TCP flags byte: offset 14 + 20 + 13) and fix
    // the checksum by rebuilding with etherparse.
    let b = PacketBuilder::ethernet2(pod_mac(0), port_mac(0))
        .ipv4(A, B, 64)
        .tcp(40000, 80, seq, 64240)
        .ack(SERVER_ISN + 1)
        .fin();
    f.clear();
    b.write(&mut f, &h[..20]).unwrap();
    let r = run(&f, &s, &mut st);
    let Verdict::L7Deny { reason, .. } = r.v else {
        panic!("expected L7Deny, got {:?}", r.v);
    };
    assert_eq!(reason, DropReason::TlsMalformed);
}
