//! Inline HTTP rules through `process`: a flow admitted by a rule carrying
//! an HTTP rule set is inspected; allowed requests are released unchanged,
//! others are denied with a 403 to the client and an RST to the server.
use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};
use weir_dataplane::flows::FlowEvent;
use weir_dataplane::l7::reply::build_rst_frame;
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
            rules: vec![HttpRuleSpec {
                method: Some("GET".into()),
                path: Some(PathMatchSpec::Prefix("/public".into())),
                ..HttpRuleSpec::default()
            }],
            tls: vec![],
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

const PUBLIC: &[u8] = b"GET /public/x HTTP/1.1\r\nHost: app1\r\n\r\n";
const PRIVATE: &[u8] = b"GET /private HTTP/1.1\r\nHost: app1\r\n\r\n";

#[test]
fn allowed_get_public_is_forwarded_unchanged() {
    let s = snap();
    let mut st = WorkerState::new();
    let seq = open(&s, &mut st);
    let r = req(&s, &mut st, seq, PUBLIC);
    assert!(matches!(r.v, Verdict::Tx { port: 1, .. }), "{:?}", r.v);
    assert_eq!(tcp_payload(&r.out), PUBLIC);
    assert_eq!(&r.out[0..6], &pod_mac(1));
    // The response passes as today.
    let resp = seg(
        1,
        SERVER_ISN + 1,
        Some(seq + PUBLIC.len() as u32),
        false,
        b"HTTP/1.1 200 OK\r\n\r\n",
    );
    assert!(matches!(
        run(&resp, &s, &mut st).v,
        Verdict::Tx { port: 0, .. }
    ));
    assert_eq!(st.l7_slots_in_use(), 1);
    assert_eq!(st.l7_counts(), (0, 0));
}

#[test]
fn get_private_is_denied_with_403_to_client_and_rst_to_server() {
    let s = snap();
    let mut st = WorkerState::new();
    let seq = open(&s, &mut st);
    events(&st);
    let r = req(&s, &mut st, seq, PRIVATE);
    let Verdict::L7Deny {
        reply_port,
        reply_len,
        rst_port,
        rst,
        ..
    } = r.v
    else {
        panic!("expected L7Deny, got {:?}", r.v);
    };
    assert_eq!((reply_port, rst_port), (0, 1));
    assert!(reply_len > 0);
    // 403: b:80 → a:40000, PSH|ACK|FIN, seq = what a acknowledged, ack =
    // after the denied request.
    let p = SlicedPacket::from_ethernet(&r.out).unwrap();
    let eth = p.link.as_ref().unwrap().to_header().unwrap();
    let eth = match eth {
        etherparse::LinkHeader::Ethernet2(e) => e,
        other => panic!("{other:?}"),
    };
    assert_eq!(eth.destination, pod_mac(0));
    assert_eq!(eth.source, port_mac(0));
    let Some(etherparse::NetSlice::Ipv4(ip)) = &p.net else {
        panic!("not IPv4");
    };
    assert_eq!(ip.header().source(), B);
    assert_eq!(ip.header().destination(), A);
    let Some(TransportSlice::Tcp(t)) = &p.transport else {
        panic!("not TCP");
    };
    assert_eq!((t.source_port(), t.destination_port()), (80, 40000));
    assert!(t.fin() && t.ack() && t.psh() && !t.rst());
    assert_eq!(t.sequence_number(), SERVER_ISN + 1);
    assert_eq!(t.acknowledgment_number(), seq + PRIVATE.len() as u32);
    assert!(
        t.payload().starts_with(b"HTTP/1.1 403"),
        "{:?}",
        String::from_utf8_lossy(t.payload())
    );
    // RST toward the server: a:40000 → b:80 at the first byte b never got.
    let mut rbuf = [0u8; 128];
    let n = build_rst_frame(&mut rbuf, &rst).unwrap();
    let p = SlicedPacket::from_ethernet(&rbuf[..n]).unwrap();
    let Some(TransportSlice::Tcp(t)) = &p.transport else {
        panic!("not TCP");
    };
    assert_eq!((t.source_port(), t.destination_port()), (40000, 80));
    assert!(t.rst());
    assert_eq!(t.sequence_number(), seq);
    let Some(etherparse::NetSlice::Ipv4(ip)) = &p.net else {
        panic!("not IPv4");
    };
    assert_eq!(ip.header().destination(), B);
    assert_eq!(&rbuf[0..6], &pod_mac(1));
    // Flow log: a drop with reason l7-denied, method and path.
    let ev = events(&st);
    let d = ev
        .iter()
        .find(|e| e.reason == Some(DropReason::L7Denied))
        .unwrap();
    let note = d.l7.unwrap();
    assert_eq!((note.method(), note.path()), ("GET", "/private"));
    assert_eq!(d.ingress_rule, RuleId(0));
    let json = serde_json::to_string(d).unwrap();
    assert!(json.contains("\"path\":\"/private\""), "{json}");
    // The slot went back with the deny; conntrack took weir's RST: the
    // client's next data is refused, never passed unjudged.
    assert_eq!(st.l7_slots_in_use(), 0);
    let r = req(&s, &mut st, seq + PRIVATE.len() as u32, PUBLIC);
    assert_eq!(r.v, Verdict::Drop(DropReason::L7AfterClose));
    assert_eq!(st.l7_counts(), (1, 0), "not counted as no-slot");
}

#[test]
fn a_head_split_across_segments_is_forwarded_until_its_end() {
    let s = snap();
    let mut st = WorkerState::new();
    let seq = open(&s, &mut st);
    // Bytes of an incomplete head are forwarded (the server ACKs them).
    let (a, b) = PUBLIC.split_at(10);
    let r = req(&s, &mut st, seq, a);
    assert_eq!(
        r.v,
        Verdict::Tx {
            port: 1,
            len: r.out.len()
        }
    );
    assert_eq!(tcp_payload(&r.out), a);
    let r = req(&s, &mut st, seq + 10, b);
    assert_eq!(
        r.v,
        Verdict::Tx {
            port: 1,
            len: r.out.len()
        }
    );
    // The segment with the final CR is held until the final LF.
    let seq = seq + PUBLIC.len() as u32;
    let (a, b) = PUBLIC.split_at(PUBLIC.len() - 1);
    let r = req(&s, &mut st, seq, a);
    let Verdict::Hold { port: 1, slot, len } = r.v else {
        panic!("expected Hold, got {:?}", r.v);
    };
    assert_eq!(tcp_payload(&r.out[..len]), a);
    let r = req(&s, &mut st, seq + a.len() as u32, b);
    assert_eq!(
        r.v,
        Verdict::Release {
            port: 1,
            len: r.out.len(),
            slot
        }
    );
    assert_eq!(tcp_payload(&r.out), b);
    // Split, then denied: the RST starts at the denied frame.
    let seq = seq + PUBLIC.len() as u32;
    let (a, b) = PRIVATE.split_at(7);
    assert!(matches!(req(&s, &mut st, seq, a).v, Verdict::Tx { .. }));
    let r = req(&s, &mut st, seq + 7, b);
    let Verdict::L7Deny { rst, .. } = r.v else {
        panic!("{:?}", r.v)
    };
    assert_eq!(
        rst.server_expects_seq,
        seq + 7,
        "RST where the server stopped"
    );
}

#[test]
fn a_held_final_cr_goes_with_the_deny() {
    let s = snap();
    let mut st = WorkerState::new();
    let seq = open(&s, &mut st);
    let (a, b) = PRIVATE.split_at(PRIVATE.len() - 1);
    assert!(matches!(
        req(&s, &mut st, seq, &a[..20]).v,
        Verdict::Tx { .. }
    ));
    assert!(matches!(
        req(&s, &mut st, seq + 20, &a[20..]).v,
        Verdict::Hold { .. }
    ));
    let r = req(&s, &mut st, seq + a.len() as u32, b);
    let Verdict::L7Deny { rst, .. } = r.v else {
        panic!("{:?}", r.v)
    };
    assert_eq!(rst.server_expects_seq, seq + 20, "RST at the held frame");
}

#[test]
fn a_fin_inside_a_head_is_denied() {
    let s = snap();
    let mut st = WorkerState::new();
    let seq = open(&s, &mut st);
    let head = b"GET /private HTTP/1.1\r\nHost: app1\r\n";
    assert!(matches!(req(&s, &mut st, seq, head).v, Verdict::Tx { .. }));
    let fin = PacketBuilder::ethernet2(pod_mac(0), port_mac(0))
        .ipv4(A, B, 64)
        .tcp(40000, 80, seq + head.len() as u32, 64240)
        .ack(SERVER_ISN + 1)
        .fin();
    let mut frame = Vec::new();
    fin.write(&mut frame, b"").unwrap();
    let r = run(&frame, &s, &mut st);
    let Verdict::L7Deny { rst, .. } = r.v else {
        panic!("{:?}", r.v)
    };
    assert_eq!(rst.server_expects_seq, seq + head.len() as u32);
    let ev = events(&st);
    let d = ev
        .iter()
        .find(|e| e.reason == Some(DropReason::L7Denied))
        .unwrap();
    assert_eq!(d.l7.unwrap().reason.as_str(), "http-incomplete-head");
}

#[test]
fn a_pipelined_second_request_is_denied() {
    let s = snap();
    let mut st = WorkerState::new();
    let seq = open(&s, &mut st);
    let mut both = PUBLIC.to_vec();
    both.extend_from_slice(PRIVATE);
    let r = req(&s, &mut st, seq, &both);
    // The allowed request goes on alone: the frame cut before the denied
    // head, lengths and checksums fixed (etherparse checks them).
    assert!(matches!(r.v, Verdict::Tx { port: 1, .. }), "{:?}", r.v);
    assert_eq!(tcp_payload(&r.out), PUBLIC);
    let p = SlicedPacket::from_ethernet(&r.out).unwrap();
    let Some(etherparse::NetSlice::Ipv4(ip)) = p.net else {
        panic!("not IPv4");
    };
    assert_eq!(usize::from(ip.header().total_len()), r.out.len() - 14);
    assert_eq!(
        ip.header().header_checksum(),
        ip.header().to_header().calc_header_checksum()
    );
    let Some(TransportSlice::Tcp(t)) = p.transport else {
        panic!("not TCP");
    };
    let sum = t
        .to_header()
        .calc_checksum_ipv4(&ip.header().to_header(), t.payload())
        .unwrap();
    assert_eq!(t.checksum(), sum);
    let ev = events(&st);
    // (The allowed request before it has its own, allowed, L7 record.)
    let d = ev
        .iter()
        .find(|e| e.l7.is_some() && !e.allowed)
        .expect("deny event");
    assert_eq!(d.l7.unwrap().path(), "/private");
    // The client's retransmission of the denied bytes ends the connection:
    // a RST to the client (no 403: the 200 may still be on its way), a RST
    // to the server at the denied head's first byte.
    let at = seq + PUBLIC.len() as u32;
    let r = run(
        &seg(0, at, Some(SERVER_ISN + 1 + 19), false, PRIVATE),
        &s,
        &mut st,
    );
    let Verdict::L7Deny { rst, reply_len, .. } = r.v else {
        panic!("expected L7Deny, got {:?}", r.v);
    };
    assert!(reply_len > 0);
    assert!(tcp_payload(&r.out).is_empty());
    let p = SlicedPacket::from_ethernet(&r.out).unwrap();
    let Some(TransportSlice::Tcp(t)) = p.transport else {
        panic!("not TCP");
    };
    assert!(t.rst());
    assert_eq!(t.sequence_number(), SERVER_ISN + 1 + 19);
    assert_eq!(rst.server_expects_seq, at);
    // One event for the denial.
    assert!(events(&st).iter().all(|e| e.l7.is_none()));
    // Before the client acknowledges any of the answer, its segments (a
    // retransmission of the whole first segment too: not cut again) are
    // dropped; after the wait, the connection is reset anyway.
    let mut st = WorkerState::new();
    st.set_now(10 * SEC);
    let seq = open(&s, &mut st);
    assert!(matches!(req(&s, &mut st, seq, &both).v, Verdict::Tx { .. }));
    assert_eq!(
        req(&s, &mut st, seq, &both).v,
        Verdict::Drop(DropReason::L7Denied)
    );
    st.set_now(13 * SEC);
    assert!(matches!(
        req(&s, &mut st, seq, &both).v,
        Verdict::L7Deny { .. }
    ));
}

#[test]
fn smuggling_cl_te_is_denied() {
    let s = snap();
    let mut st = WorkerState::new();
    let seq = open(&s, &mut st);
    let smuggle = b"GET /public HTTP/1.1\r\nHost: app1\r\nContent-Length: 44\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /private HTTP/1.1\r\nHost: app1\r\n\r\n";
    let r = req(&s, &mut st, seq, smuggle);
    assert!(matches!(r.v, Verdict::L7Deny { .. }), "{:?}", r.v);
    let ev = events(&st);
    let d = ev
        .iter()
        .find(|e| e.reason == Some(DropReason::L7Denied))
        .unwrap();
    assert_eq!(d.l7.unwrap().reason.as_str(), "http-cl-and-te");
}

#[test]
fn a_gap_is_dropped_and_a_pickup_has_no_slot() {
    let s = snap();
    let mut st = WorkerState::new();
    let seq = open(&s, &mut st);
    let r = req(&s, &mut st, seq + 5, PUBLIC);
    assert_eq!(r.v, Verdict::Drop(DropReason::L7OutOfOrder));
    // A flow picked up mid-stream (no SYN seen by this worker): refused.
    let mut other = WorkerState::new();
    let r = req(&s, &mut other, seq, PUBLIC);
    assert_eq!(r.v, Verdict::Drop(DropReason::L7NoSlot));
    assert_eq!(other.l7_counts().1, 1);
}

/// After a dataplane restart (a fresh worker state) the *server* of an
/// inspected connection may send first (a retransmitted response, a
/// SYN-ACK): admitted as a flow of its own, the client's later requests
/// would be its replies and never inspected. It is refused as a pickup in
/// the client's direction is, and so is the client's request after it.
#[test]
fn a_server_segment_picked_up_first_cannot_make_requests_replies() {
    let s = snap();
    let mut st = WorkerState::new();
    let seq = open(&s, &mut st);
    let mut fresh = WorkerState::new();
    let r = run(
        &seg(
            1,
            SERVER_ISN + 1,
            Some(seq),
            false,
            b"HTTP/1.1 200 OK\r\n\r\n",
        ),
        &s,
        &mut fresh,
    );
    assert_eq!(r.v, Verdict::Drop(DropReason::L7NoSlot));
    let r = run(&seg(1, SERVER_ISN, Some(seq), true, b""), &s, &mut fresh);
    assert_eq!(r.v, Verdict::Drop(DropReason::L7NoSlot), "a SYN-ACK");
    let r = req(&s, &mut fresh, seq, PRIVATE);
    assert_eq!(r.v, Verdict::Drop(DropReason::L7NoSlot));
    assert_eq!(fresh.l7_counts().1, 3);
    // A lone SYN from a client still opens an inspected flow.
    assert!(matches!(
        run(&tcp(0, 40001, ISN, 0, SYN, b""), &s, &mut fresh).v,
        Verdict::Tx { port: 1, .. }
    ));
}

#[test]
fn a_hold_past_the_limit_is_flushed_and_the_flow_denied() {
    let s = snap();
    let mut st = WorkerState::new();
    let seq = open(&s, &mut st);
    let held = &PUBLIC[..PUBLIC.len() - 1];
    let Verdict::Hold { slot, .. } = req(&s, &mut st, seq, held).v else {
        panic!()
    };
    st.set_now(3 * SEC);
    st.l7_maintain();
    assert_eq!(st.l7_take_flush(), Some(slot));
    assert_eq!(st.l7_take_flush(), None);
    // The retransmission gets the 403.
    assert!(matches!(
        req(&s, &mut st, seq, held).v,
        Verdict::L7Deny { .. }
    ));
}

#[test]
fn slots_are_freed_when_the_flow_ends_and_refused_when_full() {
    let s = snap();
    let mut st = WorkerState::new().with_l7_slots(1);
    open(&s, &mut st);
    assert_eq!(st.l7_slots_in_use(), 1);
    // A second connection: no slot left, its SYN is refused.
    let syn2 = {
        let mut out = Vec::new();
        PacketBuilder::ethernet2(pod_mac(0), port_mac(0))
            .ipv4(A, B, 64)
            .tcp(40001, 80, 7, 64240)
            .syn()
            .write(&mut out, &[])
            .unwrap();
        out
    };
    assert_eq!(
        run(&syn2, &s, &mut st).v,
        Verdict::Drop(DropReason::L7NoSlot)
    );
    // The first flow's entry expires (established timeout is long; jump).
    st.set_now(10 * 24 * 3600 * SEC);
    st.l7_maintain();
    assert_eq!(st.l7_slots_in_use(), 0);
    assert!(matches!(
        run(&syn2, &s, &mut st).v,
        Verdict::Tx { port: 1, .. }
    ));
}

// ------------------------------------------------- slots and closing ----

const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const FIN: u8 = 0x01;
const ACK: u8 = 0x10;

/// A TCP segment of the connection a:`sport` → b:80 with explicit flags.
fn tcp(from: u8, sport: u16, seq: u32, ack: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    let (src, dst, sp, dp) = if from == 0 {
        (A, B, sport, 80)
    } else {
        (B, A, 80, sport)
    };
    let mut b = PacketBuilder::ethernet2(pod_mac(from), port_mac(from))
        .ipv4(src, dst, 64)
        .tcp(sp, dp, seq, 64240);
    if flags & SYN != 0 {
        b = b.syn();
    }
    if flags & FIN != 0 {
        b = b.fin();
    }
    if flags & RST != 0 {
        b = b.rst();
    }
    if flags & ACK != 0 {
        b = b.ack(ack);
    }
    let mut out = Vec::new();
    b.write(&mut out, payload).unwrap();
    out
}

/// One client connection on `sport`, step by step.
struct Conn {
    sport: u16,
    c: u32,
    s: u32,
}

impl Conn {
    fn new(sport: u16) -> Self {
        Conn {
            sport,
            c: ISN,
            s: SERVER_ISN,
        }
    }
    fn client(&self, st: &mut WorkerState, s: &Snapshot, flags: u8, data: &[u8]) -> Verdict {
        run(&tcp(0, self.sport, self.c, self.s, flags, data), s, st).v
    }
    fn server(&self, st: &mut WorkerState, s: &Snapshot, flags: u8, data: &[u8]) -> Verdict {
        run(&tcp(1, self.sport, self.s, self.c, flags, data), s, st).v
    }
    /// SYN, SYN-ACK, ACK; returns the client SYN's verdict.
    fn open(&mut self, st: &mut WorkerState, s: &Snapshot) -> Verdict {
        let v = self.client(st, s, SYN, b"");
        if !matches!(v, Verdict::Tx { .. }) {
            return v;
        }
        self.c += 1;
        assert!(matches!(
            self.server(st, s, SYN | ACK, b""),
            Verdict::Tx { port: 0, .. }
        ));
        self.s += 1;
        assert!(matches!(
            self.client(st, s, ACK, b""),
            Verdict::Tx { port: 1, .. }
        ));
        v
    }
    /// A request and its response.
    fn request(&mut self, st: &mut WorkerState, s: &Snapshot, head: &[u8]) -> Verdict {
        let v = self.client(st, s, ACK, head);
        if matches!(v, Verdict::Tx { .. }) {
            self.c += head.len() as u32;
            let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
            assert!(matches!(
                self.server(st, s, ACK, resp),
                Verdict::Tx { port: 0, .. }
            ));
            self.s += resp.len() as u32;
        }
        v
    }
    /// The server closes first (HTTP/1.0, `Connection: close`): server
    /// FIN, client ACK + FIN, server's last ACK. Checks each passes.
    fn close(&mut self, st: &mut WorkerState, s: &Snapshot) {
        assert!(matches!(
            self.server(st, s, FIN | ACK, b""),
            Verdict::Tx { port: 0, .. }
        ));
        self.s += 1;
        assert!(matches!(
            self.client(st, s, ACK, b""),
            Verdict::Tx { port: 1, .. }
        ));
        assert!(matches!(
            self.client(st, s, FIN | ACK, b""),
            Verdict::Tx { port: 1, .. }
        ));
        self.c += 1;
        assert!(matches!(
            self.server(st, s, ACK, b""),
            Verdict::Tx { port: 0, .. }
        ));
    }
}

/// The reported failure, on the pass: 1000 sequential short connections
/// (each its own tuple, closed by FIN) through a worker with ONE slot all
/// get their request through: the slot goes back at the client's FIN, not
/// when conntrack forgets the flow. (Before: the second connection's SYN
/// was refused as `l7-no-slot`.)
#[test]
fn a_thousand_sequential_connections_share_one_slot() {
    let s = snap();
    let mut st = WorkerState::new().with_l7_slots(1);
    for i in 0..1000u16 {
        let mut c = Conn::new(20000 + i);
        assert!(
            matches!(c.open(&mut st, &s), Verdict::Tx { port: 1, .. }),
            "conn {i}"
        );
        assert!(
            matches!(c.request(&mut st, &s, PUBLIC), Verdict::Tx { port: 1, .. }),
            "conn {i}"
        );
        c.close(&mut st, &s);
        assert_eq!(
            st.l7_slots_in_use(),
            0,
            "conn {i}: slot back at the client's FIN"
        );
    }
    assert_eq!(st.l7_counts(), (0, 0));
    assert_eq!(st.l7_usage().flows_max, 1);
}

/// After the slot went back: retransmitted FINs and ACKs pass (not
/// `l7-no-slot`), data never passes, and a new SYN on the same tuple gets
/// a fresh slot whose requests are judged.
#[test]
fn a_closed_flow_passes_its_last_segments_and_reopens_judged() {
    let s = snap();
    let mut st = WorkerState::new().with_l7_slots(1);
    let mut c = Conn::new(30000);
    c.open(&mut st, &s);
    c.request(&mut st, &s, PUBLIC);
    // The client closes first this time (half-close): its FIN frees the slot.
    assert!(matches!(
        c.client(&mut st, &s, FIN | ACK, b""),
        Verdict::Tx { port: 1, .. }
    ));
    c.c += 1;
    assert_eq!(st.l7_slots_in_use(), 0);
    // The server still sends; the client's ACKs of it pass.
    assert!(matches!(
        c.server(&mut st, &s, ACK, b"more"),
        Verdict::Tx { port: 0, .. }
    ));
    c.s += 4;
    assert!(matches!(
        c.client(&mut st, &s, ACK, b""),
        Verdict::Tx { port: 1, .. }
    ));
    // A retransmitted FIN (seq one before) passes.
    c.c -= 1;
    assert!(matches!(
        c.client(&mut st, &s, FIN | ACK, b""),
        Verdict::Tx { port: 1, .. }
    ));
    c.c += 1;
    // Data after the FIN: refused.
    assert_eq!(
        c.client(&mut st, &s, ACK, PRIVATE),
        Verdict::Drop(DropReason::L7AfterClose)
    );
    assert!(matches!(
        c.server(&mut st, &s, FIN | ACK, b""),
        Verdict::Tx { port: 0, .. }
    ));
    c.s += 1;
    assert!(matches!(
        c.client(&mut st, &s, ACK, b""),
        Verdict::Tx { port: 1, .. }
    ));
    assert_eq!(st.l7_counts(), (0, 0), "nothing counted as no-slot");
    // The tuple is reused: a fresh slot, and GET /private is denied.
    let mut again = Conn::new(30000);
    again.c = ISN + 100_000;
    assert!(matches!(
        again.open(&mut st, &s),
        Verdict::Tx { port: 1, .. }
    ));
    assert_eq!(st.l7_slots_in_use(), 1);
    assert!(matches!(
        again.request(&mut st, &s, PRIVATE),
        Verdict::L7Deny { .. }
    ));
    assert_eq!(st.l7_slots_in_use(), 0, "a deny gives the slot back");
}

/// A client RST between requests frees the slot and passes; inside a head
/// it denies (weir's own RST reaches the server at the exact sequence
/// number), and later data is refused.
#[test]
fn a_client_rst_frees_the_slot_or_denies_an_open_head() {
    let s = snap();
    let mut st = WorkerState::new().with_l7_slots(1);
    let mut c = Conn::new(31000);
    c.open(&mut st, &s);
    c.request(&mut st, &s, PUBLIC);
    assert!(matches!(
        c.client(&mut st, &s, RST | ACK, b""),
        Verdict::Tx { port: 1, .. }
    ));
    assert_eq!(st.l7_slots_in_use(), 0);
    assert_eq!(
        c.client(&mut st, &s, ACK, PUBLIC),
        Verdict::Drop(DropReason::L7AfterClose)
    );
    let mut d = Conn::new(31001);
    d.open(&mut st, &s);
    assert!(matches!(
        d.client(&mut st, &s, ACK, b"GET /public HTTP/1.1\r\n"),
        Verdict::Tx { .. }
    ));
    d.c += 22;
    let Verdict::L7Deny { rst, .. } = d.client(&mut st, &s, RST | ACK, b"") else {
        panic!("a RST inside a head is a deny");
    };
    assert_eq!(rst.server_expects_seq, d.c);
    assert_eq!(st.l7_slots_in_use(), 0);
    // A FIN (no payload) of the reset flow passes: the server was reset.
    assert!(matches!(
        d.client(&mut st, &s, FIN | ACK, b""),
        Verdict::Tx { .. }
    ));
    assert_eq!(st.l7_counts(), (1, 0));
}

/// At the limit (8 flows): the 9th connection's SYN is refused, counted
/// and logged; the 8 keep working; after one closes, the 9th's
/// retransmitted SYN gets the slot.
#[test]
fn at_the_limit_new_flows_are_refused_until_one_closes() {
    let s = snap();
    let mut st = WorkerState::new().with_l7_slots(8);
    let mut conns: Vec<Conn> = (0..8).map(|i| Conn::new(32000 + i)).collect();
    for c in &mut conns {
        assert!(matches!(c.open(&mut st, &s), Verdict::Tx { port: 1, .. }));
    }
    events(&st);
    let mut ninth = Conn::new(32100);
    assert_eq!(ninth.open(&mut st, &s), Verdict::Drop(DropReason::L7NoSlot));
    assert_eq!(st.l7_counts(), (0, 1));
    let ev = events(&st);
    assert!(
        ev.iter()
            .any(|e| e.reason == Some(DropReason::L7NoSlot) && e.key.sport == 32100),
        "the refusal is a flow event: {ev:?}"
    );
    for c in &mut conns {
        assert!(matches!(
            c.request(&mut st, &s, PUBLIC),
            Verdict::Tx { port: 1, .. }
        ));
    }
    conns[3].close(&mut st, &s);
    assert_eq!(st.l7_slots_in_use(), 7);
    assert!(matches!(
        ninth.open(&mut st, &s),
        Verdict::Tx { port: 1, .. }
    ));
    assert!(matches!(
        ninth.request(&mut st, &s, PUBLIC),
        Verdict::Tx { port: 1, .. }
    ));
    assert!(matches!(
        ninth.request(&mut st, &s, PRIVATE),
        Verdict::L7Deny { .. }
    ));
}

/// Head buffers are shared: with one, a second head open across segments
/// is dropped (`l7-busy`, state unchanged: the retransmission is judged
/// afresh), whole heads still pass, and idle flows need none.
#[test]
fn head_buffers_are_lent_only_while_a_head_is_open() {
    use weir_dataplane::pass::L7Capacity;
    let s = snap();
    let mut st = WorkerState::new().with_l7_capacity(L7Capacity {
        flows: 4,
        head_buffers: 1,
        held_frames: 4,
    });
    let mut a = Conn::new(33000);
    let mut b = Conn::new(33001);
    a.open(&mut st, &s);
    b.open(&mut st, &s);
    let (p1, p2) = PUBLIC.split_at(12);
    assert!(matches!(a.client(&mut st, &s, ACK, p1), Verdict::Tx { .. }));
    a.c += p1.len() as u32;
    assert_eq!(st.l7_usage().head_buffers, 1);
    assert_eq!(
        b.client(&mut st, &s, ACK, p1),
        Verdict::Drop(DropReason::L7Busy)
    );
    assert!(
        matches!(b.request(&mut st, &s, PUBLIC), Verdict::Tx { .. }),
        "whole head"
    );
    assert!(matches!(a.client(&mut st, &s, ACK, p2), Verdict::Tx { .. }));
    assert_eq!(st.l7_usage().head_buffers, 0);
    assert!(matches!(
        b.client(&mut st, &s, ACK, b"GET /private HT"),
        Verdict::Tx { .. }
    ));
    b.c += 15;
    assert!(matches!(
        b.client(&mut st, &s, ACK, b"TP/1.1\r\nHost: app1\r\n\r\n"),
        Verdict::L7Deny { .. }
    ));
    assert_eq!(st.l7_usage().busy, 1);
}

/// Held frames are UMEM frames: their number over all flows is bounded;
/// beyond it the frame that would be held drops (`l7-busy`) and is judged
/// again when retransmitted.
#[test]
fn held_frames_are_bounded_per_worker() {
    use weir_dataplane::pass::L7Capacity;
    let s = snap();
    let mut st = WorkerState::new().with_l7_capacity(L7Capacity {
        flows: 4,
        head_buffers: 4,
        held_frames: 1,
    });
    let mut a = Conn::new(34000);
    let mut b = Conn::new(34001);
    a.open(&mut st, &s);
    b.open(&mut st, &s);
    let upto_cr = &PUBLIC[..PUBLIC.len() - 1];
    assert!(matches!(
        a.client(&mut st, &s, ACK, upto_cr),
        Verdict::Hold { .. }
    ));
    a.c += upto_cr.len() as u32;
    assert_eq!(st.l7_usage().held_frames, 1);
    assert_eq!(
        b.client(&mut st, &s, ACK, upto_cr),
        Verdict::Drop(DropReason::L7Busy)
    );
    assert!(matches!(
        a.client(&mut st, &s, ACK, b"\n"),
        Verdict::Release { .. }
    ));
    assert_eq!(st.l7_usage().held_frames, 0);
    assert!(matches!(
        b.client(&mut st, &s, ACK, upto_cr),
        Verdict::Hold { .. }
    ));
}

/// Allowed requests are flow records too (kind `l7`): the request head's
/// method, path and host, then the same request with the status of its
/// response (read from the response's status line). A denied one stays a
/// `drop` record; a body segment of the response adds nothing.
#[test]
fn allowed_requests_and_their_response_status_are_flow_records() {
    use weir_dataplane::flows::FlowKind;
    let s = snap();
    let mut st = WorkerState::new();
    let seq = open(&s, &mut st);
    let _ = events(&st);
    assert!(matches!(
        req(&s, &mut st, seq, PUBLIC).v,
        Verdict::Tx { port: 1, .. }
    ));
    let ev = events(&st);
    assert_eq!(ev.len(), 1, "{ev:?}");
    let n = ev[0].l7.expect("note");
    assert_eq!(ev[0].kind, FlowKind::L7);
    assert!(ev[0].allowed && ev[0].reason.is_none());
    assert_eq!(
        (n.method(), n.path(), n.host(), n.status),
        ("GET", "/public/x", "app1", 0)
    );
    assert_eq!((ev[0].key.sport, ev[0].key.dport), (40000, 80));
    let ack = seq + PUBLIC.len() as u32;
    let head = b"HTTP/1.1 404 Not Found\r\nContent-Length: 4\r\n\r\n";
    let resp = seg(1, SERVER_ISN + 1, Some(ack), false, head);
    assert!(matches!(
        run(&resp, &s, &mut st).v,
        Verdict::Tx { port: 0, .. }
    ));
    let ev = events(&st);
    assert_eq!(ev.len(), 1, "{ev:?}");
    let n = ev[0].l7.expect("note");
    assert_eq!(ev[0].kind, FlowKind::L7);
    assert_eq!((n.method(), n.path(), n.status), ("GET", "/public/x", 404));
    // The response's direction: server → client.
    assert_eq!((ev[0].key.sport, ev[0].key.dport), (80, 40000));
    // A later segment that happens to start like a status line: no request
    // waits for a response, nothing is logged.
    let body = seg(
        1,
        SERVER_ISN + 1 + head.len() as u32,
        Some(ack),
        false,
        b"HTTP/1.1 200 ",
    );
    assert!(matches!(
        run(&body, &s, &mut st).v,
        Verdict::Tx { port: 0, .. }
    ));
    assert!(events(&st).is_empty());
    // A denied request: one drop record, no l7 record.
    let r = req(&s, &mut st, ack, PRIVATE);
    assert!(matches!(r.v, Verdict::L7Deny { .. }), "{:?}", r.v);
    let ev = events(&st);
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(ev[0].kind, FlowKind::Drop);
}
