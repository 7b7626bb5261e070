//! HTTP/2 (h2c) under HTTP rules through `process`: a connection opening
//! with the preface gets an HTTP/2 inspector; allowed streams are forwarded
//! unchanged; a denied one whose `:method` is one byte with no HPACK table
//! effect is refused in place (that byte becomes a `:status`, checksum
//! fixed, the connection goes on); any other denied one denies the
//! connection with an HTTP/2 answer to the client (403 HEADERS or gRPC
//! PERMISSION_DENIED, then GOAWAY) and a RST to the server. (Helpers as in
//! pass_l7.rs.)
#![allow(dead_code)]
use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};
use weir_dataplane::flows::FlowEvent;
use weir_dataplane::l7::h2::hpack::{Decoder, Field};
use weir_dataplane::l7::h2::PREFACE;
use weir_dataplane::l7::{HttpRuleSetSpec, HttpRuleSpec, PathMatchSpec};
use weir_dataplane::pass::{process, WorkerState};
use weir_dataplane::policy::{
    CellSpec, Decision, Direction, EndpointTables, PolicySpec, RuleId, RuleInfo, Tier,
    IDENTITY_WORLD,
};
use weir_dataplane::{DropReason, Endpoint, Port, Snapshot, SnapshotSpec, Verdict};

const A: [u8; 4] = [10, 1, 0, 1]; // app2, the client
const B: [u8; 4] = [10, 1, 0, 2]; // app1, the server (TCP 80)
const SEC: u64 = 1_000_000_000;
const ISN: u32 = 1000;
const SERVER_ISN: u32 = 5000;

fn port_mac(p: u8) -> [u8; 6] {
    [0x02, 0, 0, 0, 0, p]
}
fn pod_mac(p: u8) -> [u8; 6] {
    [0x0a, 0, 0, 0, 0, p]
}

/// The founding paper's scenario: to b (id=app1) on TCP 80, only from a
/// (id=app2), only `GET /public...`. Everything else to b: implicit deny.
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
            name: "app1-l7".into(),
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
            rules: vec![
                HttpRuleSpec {
                    method: Some("GET".into()),
                    path: Some(PathMatchSpec::Prefix("/public".into())),
                    ..HttpRuleSpec::default()
                },
                // grpc: [{service: pkg.Svc, method: Get}]
                HttpRuleSpec {
                    method: Some("POST".into()),
                    path: Some(PathMatchSpec::Exact("/pkg.Svc/Get".into())),
                    ..HttpRuleSpec::default()
                },
            ],
            tls: Vec::new(),
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

fn events(st: &WorkerState) -> Vec<FlowEvent> {
    let mut v = Vec::new();
    st.flows().drain(&mut v);
    v
}

fn frame(t: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let l = (payload.len() as u32).to_be_bytes();
    let mut f = vec![l[1], l[2], l[3], t, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn lit(b: &mut Vec<u8>, n: &str, v: &str) {
    b.push(0);
    b.push(n.len() as u8);
    b.extend_from_slice(n.as_bytes());
    b.push(v.len() as u8);
    b.extend_from_slice(v.as_bytes());
}

fn headers(stream: u32, method: &str, path: &str, grpc: bool) -> Vec<u8> {
    let mut b = Vec::new();
    lit(&mut b, ":method", method);
    lit(&mut b, ":scheme", "http");
    lit(&mut b, ":path", path);
    lit(&mut b, ":authority", "app1");
    if grpc {
        lit(&mut b, "content-type", "application/grpc");
        lit(&mut b, "te", "trailers");
    }
    frame(1, 4 | u8::from(!grpc), stream, &b)
}

fn preface() -> Vec<u8> {
    let mut b = PREFACE.to_vec();
    b.extend(frame(4, 0, 0, &[0, 3, 0, 0, 0, 100]));
    b
}

/// The HEADERS fields and the GOAWAY of weir's answer (after its empty
/// SETTINGS, the server preface the client may not have had yet).
fn answer(payload: &[u8]) -> (u32, Vec<(String, String)>, Vec<u8>) {
    assert_eq!(
        payload[..9],
        [0, 0, 0, 4, 0, 0, 0, 0, 0],
        "empty SETTINGS first"
    );
    let payload = &payload[9..];
    let len = u32::from_be_bytes([0, payload[0], payload[1], payload[2]]) as usize;
    assert_eq!(payload[3], 1, "HEADERS first");
    assert_eq!(payload[4], 5, "END_STREAM | END_HEADERS");
    let stream = u32::from_be_bytes(payload[5..9].try_into().unwrap());
    let mut out = [0u8; 512];
    let mut fs = [Field::default(); 8];
    let n = Decoder::new()
        .decode(&payload[9..9 + len], &mut out, &mut fs)
        .unwrap();
    let s =
        |(a, l): (u32, u32)| String::from_utf8(out[a as usize..(a + l) as usize].to_vec()).unwrap();
    let fields = fs[..n].iter().map(|f| (s(f.name), s(f.value))).collect();
    let goaway = payload[9 + len..].to_vec();
    (stream, fields, goaway)
}

#[test]
fn h2c_streams_are_judged_and_a_denied_one_answers_in_http2() {
    let s = snap();
    let mut st = WorkerState::new();
    let mut seq = open(&s, &mut st);
    // The preface + SETTINGS, then an allowed stream: forwarded unchanged.
    let p = preface();
    let r = req(&s, &mut st, seq, &p);
    assert!(matches!(r.v, Verdict::Tx { port: 1, .. }), "{:?}", r.v);
    seq += p.len() as u32;
    assert_eq!(st.l7_usage().h2_flows, 1);
    // The server's SETTINGS, not yet acknowledged by the client: weir's
    // answer must come after it.
    let settings = frame(4, 0, 0, &[0, 3, 0, 0, 0, 100]);
    let r = run(
        &seg(1, SERVER_ISN + 1, Some(seq), false, &settings),
        &s,
        &mut st,
    );
    assert!(matches!(r.v, Verdict::Tx { port: 0, .. }), "{:?}", r.v);
    let h = headers(1, "GET", "/public/a", false);
    let r = req(&s, &mut st, seq, &h);
    assert!(matches!(r.v, Verdict::Tx { port: 1, .. }), "{:?}", r.v);
    assert_eq!(tcp_payload(&r.out), h);
    seq += h.len() as u32;
    // An allowed gRPC call.
    let h = headers(3, "POST", "/pkg.Svc/Get", true);
    let r = req(&s, &mut st, seq, &h);
    assert!(matches!(r.v, Verdict::Tx { port: 1, .. }), "{:?}", r.v);
    seq += h.len() as u32;
    // A denied stream: the connection is denied, the client gets a 403
    // HEADERS on stream 5 and a GOAWAY, the server a RST.
    let h = headers(5, "GET", "/private", false);
    let r = req(&s, &mut st, seq, &h);
    let Verdict::L7Deny {
        reply_port,
        rst_port,
        rst,
        ..
    } = r.v
    else {
        panic!("expected L7Deny, got {:?}", r.v);
    };
    assert_eq!((reply_port, rst_port), (0, 1));
    assert_eq!(rst.server_expects_seq, seq);
    let p = SlicedPacket::from_ethernet(&r.out).unwrap();
    let Some(TransportSlice::Tcp(t)) = &p.transport else {
        panic!("not TCP");
    };
    assert!(t.fin() && t.ack() && t.psh());
    assert_eq!(t.sequence_number(), SERVER_ISN + 1 + settings.len() as u32);
    assert_eq!(t.acknowledgment_number(), seq + h.len() as u32);
    let (stream, fields, goaway) = answer(t.payload());
    assert_eq!(stream, 5);
    assert_eq!(fields[0], (":status".into(), "403".into()));
    assert_eq!(goaway, frame(7, 0, 0, &[0, 0, 0, 3, 0, 0, 0, 0]));
    assert_eq!(st.l7_counts().0, 1);
    assert_eq!(st.l7_usage().h2_flows, 0, "the inspector goes back");
    let ev = events(&st);
    let d = ev
        .iter()
        .find(|e| e.reason == Some(DropReason::L7Denied))
        .unwrap();
    let note = d.l7.unwrap();
    assert_eq!((note.method(), note.path()), ("GET", "/private"));
    // Later data of the flow is refused.
    let r = req(&s, &mut st, seq, &h);
    assert!(matches!(r.v, Verdict::Drop(_)), "{:?}", r.v);
}

#[test]
fn denied_grpc_call_gets_permission_denied() {
    let s = snap();
    let mut st = WorkerState::new();
    let seq = open(&s, &mut st);
    let mut b = preface();
    b.extend(headers(1, "POST", "/pkg.Svc/Delete", true));
    // Preface and the call in one segment.
    let r = req(&s, &mut st, seq, &b);
    let Verdict::L7Deny { .. } = r.v else {
        panic!("expected L7Deny, got {:?}", r.v);
    };
    let p = SlicedPacket::from_ethernet(&r.out).unwrap();
    let Some(TransportSlice::Tcp(t)) = &p.transport else {
        panic!("not TCP");
    };
    let (stream, fields, _) = answer(t.payload());
    assert_eq!(stream, 1);
    assert!(
        fields.contains(&("grpc-status".into(), "7".into())),
        "{fields:?}"
    );
    assert!(fields.contains(&("content-type".into(), "application/grpc".into())));
    assert_eq!(t.acknowledgment_number(), seq + b.len() as u32);
    // The server had not spoken: the answer (with its own SETTINGS) takes
    // the server's first sequence numbers, and the server's SETTINGS that
    // comes now would overlap it at the client: dropped, never forwarded.
    assert_eq!(t.sequence_number(), SERVER_ISN + 1);
    let settings = frame(4, 0, 0, &[0, 3, 0, 0, 0, 100]);
    let r = run(
        &seg(1, SERVER_ISN + 1, Some(seq), false, &settings),
        &s,
        &mut st,
    );
    assert!(
        matches!(r.v, Verdict::Drop(DropReason::L7AfterClose)),
        "{:?}",
        r.v
    );
}

#[test]
fn bad_http2_is_a_counted_denial_and_http1_still_works() {
    let s = snap();
    let mut st = WorkerState::new();
    let seq = open(&s, &mut st);
    let mut b = preface();
    b.extend(frame(5, 4, 1, &[0, 0, 0, 2])); // PUSH_PROMISE from a client
    let r = req(&s, &mut st, seq, &b);
    assert!(matches!(r.v, Verdict::L7Deny { .. }), "{:?}", r.v);
    let ev = events(&st);
    assert!(format!("{:?}", ev).contains("H2Protocol"), "{ev:?}");
    // A new connection (reused tuple) speaking HTTP/1 is judged as HTTP/1.
    let seq = open(&s, &mut st);
    let r = req(
        &s,
        &mut st,
        seq,
        b"GET /public/x HTTP/1.1\r\nHost: app1\r\n\r\n",
    );
    assert!(matches!(r.v, Verdict::Tx { port: 1, .. }), "{:?}", r.v);
    assert_eq!(st.l7_usage().h2_flows, 0);
}

/// A client segment a:sport → b:80.
fn cseg(sport: u16, seq: u32, ack: Option<u32>, syn: bool, payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(pod_mac(0), port_mac(0))
        .ipv4(A, B, 64)
        .tcp(sport, 80, seq, 64240);
    let b = if syn { b.syn() } else { b };
    let b = match ack {
        Some(a) => b.ack(a),
        None => b,
    };
    let mut out = Vec::new();
    b.write(&mut out, payload).unwrap();
    out
}

#[test]
fn http2_inspectors_are_bounded_and_lent_back() {
    let s = snap();
    let mut st = WorkerState::new();
    let p = preface();
    let n = weir_dataplane::pass::L7_H2_MAX as u16;
    let open_h2 = |st: &mut WorkerState, sport: u16| -> Verdict {
        assert!(matches!(
            run(&cseg(sport, ISN, None, true, b""), &s, st).v,
            Verdict::Tx { .. }
        ));
        let synack = PacketBuilder::ethernet2(pod_mac(1), port_mac(1))
            .ipv4(B, A, 64)
            .tcp(80, sport, SERVER_ISN, 64240)
            .syn()
            .ack(ISN + 1);
        let mut f = Vec::new();
        synack.write(&mut f, b"").unwrap();
        assert!(matches!(run(&f, &s, st).v, Verdict::Tx { .. }));
        run(
            &cseg(sport, ISN + 1, Some(SERVER_ISN + 1), false, &p),
            &s,
            st,
        )
        .v
    };
    for i in 0..n {
        let v = open_h2(&mut st, 41000 + i);
        assert!(matches!(v, Verdict::Tx { port: 1, .. }), "{i}: {v:?}");
    }
    assert_eq!(st.l7_usage().h2_flows, usize::from(n));
    // One more HTTP/2 connection waits (its preface is dropped, counted).
    let v = open_h2(&mut st, 41000 + n);
    assert_eq!(v, Verdict::Drop(DropReason::L7Busy));
    // A FIN between frames gives an inspector back; the retransmitted
    // preface of the waiting connection then gets it.
    let fin = PacketBuilder::ethernet2(pod_mac(0), port_mac(0))
        .ipv4(A, B, 64)
        .tcp(41000, 80, ISN + 1 + p.len() as u32, 64240)
        .ack(SERVER_ISN + 1)
        .fin();
    let mut f = Vec::new();
    fin.write(&mut f, b"").unwrap();
    let r = run(&f, &s, &mut st);
    assert!(matches!(r.v, Verdict::Tx { .. }), "{:?}", r.v);
    assert_eq!(st.l7_usage().h2_flows, usize::from(n) - 1);
    let v = run(
        &cseg(41000 + n, ISN + 1, Some(SERVER_ISN + 1), false, &p),
        &s,
        &mut st,
    )
    .v;
    assert!(matches!(v, Verdict::Tx { port: 1, .. }), "{v:?}");
}

/// A request block whose `:method` is the indexed field `method` (0x82
/// GET, 0x83 POST), literals after it.
fn headers_indexed(stream: u32, method: u8, path: &str) -> Vec<u8> {
    let mut b = vec![method];
    lit(&mut b, ":scheme", "http");
    lit(&mut b, ":path", path);
    lit(&mut b, ":authority", "app1");
    frame(1, 5, stream, &b)
}

/// The TCP header and payload of an IPv4 frame without options.
fn tcp_bytes(frame: &[u8]) -> &[u8] {
    &frame[14 + 20..]
}

#[test]
fn a_denied_stream_is_refused_in_place_and_the_connection_goes_on() {
    let s = snap();
    let mut st = WorkerState::new();
    let mut seq = open(&s, &mut st);
    // Preface, an allowed stream, a denied one (indexed GET), an allowed
    // one, in one segment.
    let mut b = preface();
    b.extend(headers_indexed(1, 0x82, "/public/a"));
    let at = b.len() + 9;
    b.extend(headers_indexed(3, 0x82, "/private"));
    b.extend(headers_indexed(5, 0x82, "/public/b"));
    let r = req(&s, &mut st, seq, &b);
    assert!(matches!(r.v, Verdict::Tx { port: 1, .. }), "{:?}", r.v);
    // Golden: the same segment with the denied stream's :method byte now
    // 0x88 (:status 200), checksum right (etherparse computed the expected
    // one), nothing else changed.
    let mut want = b.clone();
    want[at] = 0x88;
    let expected = seg(0, seq, Some(SERVER_ISN + 1), false, &want);
    assert_eq!(tcp_bytes(&r.out), tcp_bytes(&expected));
    assert_eq!(tcp_payload(&r.out), want);
    assert_eq!(st.l7_usage().h2_streams_refused, 1);
    assert_eq!(st.l7_usage().denied, 1);
    assert_eq!(st.l7_usage().h2_flows, 1, "the connection goes on");
    let ev = events(&st);
    let d = ev
        .iter()
        .find(|e| e.reason == Some(DropReason::L7Denied))
        .expect("a denied record");
    let note = d.l7.unwrap();
    assert_eq!((note.method(), note.path()), ("GET", "/private"));
    // A retransmission of the segment is rewritten the same way.
    let r = req(&s, &mut st, seq, &b);
    assert!(matches!(r.v, Verdict::Tx { port: 1, .. }), "{:?}", r.v);
    assert_eq!(tcp_bytes(&r.out), tcp_bytes(&expected));
    assert_eq!(st.l7_usage().h2_streams_refused, 1, "counted once");
    seq += b.len() as u32;
    // DATA on the refused stream passes (the server reset it), and a later
    // allowed stream is forwarded unchanged.
    let data = frame(0, 1, 3, b"x");
    let r = req(&s, &mut st, seq, &data);
    assert!(matches!(r.v, Verdict::Tx { port: 1, .. }), "{:?}", r.v);
    seq += data.len() as u32;
    let h = headers_indexed(7, 0x82, "/public/c");
    let r = req(&s, &mut st, seq, &h);
    assert!(matches!(r.v, Verdict::Tx { port: 1, .. }), "{:?}", r.v);
    assert_eq!(tcp_payload(&r.out), h);
    seq += h.len() as u32;
    // A denied request with a literal :method name still ends the
    // connection (no same-length :status for it).
    let h = headers(9, "GET", "/private", false);
    let r = req(&s, &mut st, seq, &h);
    assert!(matches!(r.v, Verdict::L7Deny { .. }), "{:?}", r.v);
    assert_eq!(st.l7_usage().h2_flows, 0);
}

#[test]
fn the_rewritten_byte_keeps_the_checksum_right_at_either_word_half() {
    let mut parities = Vec::new();
    for first in ["/public/a", "/public/aa"] {
        let s = snap();
        let mut st = WorkerState::new();
        let seq = open(&s, &mut st);
        let mut b = preface();
        b.extend(headers_indexed(1, 0x82, first));
        let at = b.len() + 9;
        b.extend(headers_indexed(3, 0x83, "/private"));
        let r = req(&s, &mut st, seq, &b);
        assert!(matches!(r.v, Verdict::Tx { port: 1, .. }), "{:?}", r.v);
        let mut want = b.clone();
        want[at] = 0x88;
        let expected = seg(0, seq, Some(SERVER_ISN + 1), false, &want);
        assert_eq!(tcp_bytes(&r.out), tcp_bytes(&expected), "{first}");
        parities.push(at % 2);
    }
    parities.sort();
    assert_eq!(parities, [0, 1]);
}
