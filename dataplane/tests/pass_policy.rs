//! Table tests of the pass with conntrack and policy: frames + snapshots
//! (with a small compiled PolicySpec) → verdicts and flow events.

use etherparse::{icmpv4::DestUnreachableHeader, Icmpv4Type, IpHeaders, Ipv4Header, PacketBuilder};
use weir_dataplane::conntrack::State;
use weir_dataplane::flows::{FlowEvent, FlowKind};
use weir_dataplane::pass::{process, FlowKey, WorkerState};
use weir_dataplane::policy::{
    CellSpec, Decision, Direction, EndpointTables, PolicySpec, RuleId, RuleInfo, Tier,
    IDENTITY_WORLD,
};
use weir_dataplane::{DropReason, Endpoint, Port, Snapshot, SnapshotSpec, Verdict};

const A: [u8; 4] = [10, 1, 0, 1];
const B: [u8; 4] = [10, 1, 0, 2];
const SEC: u64 = 1_000_000_000;

fn port_mac(p: u8) -> [u8; 6] {
    [0x02, 0xee, 0, 0, 0, p]
}
fn pod_mac(p: u8) -> [u8; 6] {
    [0x0a, 0x58, 0, 0, 0, p]
}

/// Pods a (port 0) and b (port 1); if `isolate_b`, b's ingress is isolated
/// by a policy that allows nothing (egress unrestricted everywhere).
fn snap(generation: u64, isolate_b: bool) -> Snapshot {
    let port = |i: u8| Port {
        name: format!("veth{i}"),
        mac: port_mac(i),
        mtu: 1500,
    };
    let ep = |i: u8, name: &str, a: [u8; 4]| Endpoint {
        name: format!("default/{name}"),
        port: u16::from(i),
        mac: pod_mac(i),
        ipv4: Some(a.into()),
        ipv6: None,
    };
    let policy = if isolate_b {
        PolicySpec {
            generation,
            rules: vec![RuleInfo {
                tier: Tier::Namespace,
                kind: "networkpolicies".into(),
                namespace: Some("default".into()),
                name: "isolate-b".into(),
                direction: Direction::Ingress,
                index: 0,
                action: "Allow".into(),
                priority: None,
            }],
            classes: vec![IDENTITY_WORLD, 256, 257],
            addresses: vec![(A.into(), 1), (B.into(), 2)],
            prefixes: vec![],
            world_class: 0,
            cells: vec![CellSpec::uniform(Decision::deny(RuleId::IMPLICIT_DENY))],
            tables: vec![vec![0, 0, 0]],
            endpoints: vec![
                EndpointTables::default(),
                EndpointTables {
                    ingress: Some(0),
                    egress: None,
                },
            ],
            http: vec![],
            ..Default::default()
        }
    } else {
        PolicySpec {
            generation,
            ..PolicySpec::default()
        }
    };
    Snapshot::build(SnapshotSpec {
        generation,
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

#[derive(Clone, Copy)]
enum Tcp {
    Syn,
    SynAck,
    Ack,
    Rst,
}

/// A TCP segment from the pod behind `from` (0 = a, 1 = b).
fn tcp(from: u8, sport: u16, dport: u16, flags: Tcp) -> Vec<u8> {
    let (src, dst) = if from == 0 { (A, B) } else { (B, A) };
    let b = PacketBuilder::ethernet2(pod_mac(from), port_mac(from)).ipv4(src, dst, 64);
    let b = b.tcp(sport, dport, 1000, 64240);
    let b = match flags {
        Tcp::Syn => b.syn(),
        Tcp::SynAck => b.syn().ack(1001),
        Tcp::Ack => b.ack(1001),
        Tcp::Rst => b.rst(),
    };
    let mut out = Vec::new();
    b.write(&mut out, &[]).unwrap();
    out
}

fn udp(from: u8, sport: u16, dport: u16) -> Vec<u8> {
    let (src, dst) = if from == 0 { (A, B) } else { (B, A) };
    let mut out = Vec::new();
    PacketBuilder::ethernet2(pod_mac(from), port_mac(from))
        .ipv4(src, dst, 64)
        .udp(sport, dport)
        .write(&mut out, b"hello")
        .unwrap();
    out
}

/// ICMP port unreachable from `from`, quoting the IP header + 8 bytes of
/// the UDP datagram `quoted` (a frame).
fn port_unreachable(from: u8, quoted: &[u8]) -> Vec<u8> {
    let (src, dst) = if from == 0 { (A, B) } else { (B, A) };
    let hdr = Ipv4Header {
        source: src,
        destination: dst,
        time_to_live: 64,
        ..Default::default()
    };
    let mut out = Vec::new();
    PacketBuilder::ethernet2(pod_mac(from), port_mac(from))
        .ip(IpHeaders::Ipv4(hdr, Default::default()))
        .icmpv4(Icmpv4Type::DestinationUnreachable(
            DestUnreachableHeader::Port,
        ))
        .write(&mut out, &quoted[14..14 + 28])
        .unwrap();
    out
}

fn run(frame: &[u8], s: &Snapshot, st: &mut WorkerState) -> Verdict {
    let mut buf = vec![0u8; 2048];
    buf[..frame.len()].copy_from_slice(frame);
    let ingress = u16::from(frame[6 + 5]);
    process(&mut buf, frame.len(), ingress, s, st)
}

fn to(port: u16) -> Verdict {
    Verdict::Tx {
        port,
        len: 0, // compared by port only
    }
}

fn assert_tx(v: Verdict, port: u16) {
    match v {
        Verdict::Tx { port: p, .. } if p == port => {}
        other => panic!("expected {:?}, got {other:?}", to(port)),
    }
}

fn events(st: &WorkerState) -> Vec<FlowEvent> {
    let mut v = Vec::new();
    st.flows().drain(&mut v);
    v
}

fn key(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, proto: u8) -> FlowKey {
    FlowKey {
        src: src.into(),
        dst: dst.into(),
        proto,
        sport,
        dport,
    }
}

#[test]
fn isolated_pod_gets_replies_to_its_own_egress() {
    let s = snap(1, true);
    let mut st = WorkerState::new();
    st.set_now(SEC);
    // b (ingress-isolated) connects to a:80: egress unrestricted, a open.
    assert_tx(run(&tcp(1, 40000, 80, Tcp::Syn), &s, &mut st), 0);
    // a's SYN-ACK to b passes: it is a reply, not a new flow into b.
    assert_tx(run(&tcp(0, 80, 40000, Tcp::SynAck), &s, &mut st), 1);
    assert_tx(run(&tcp(1, 40000, 80, Tcp::Ack), &s, &mut st), 0);
    assert_tx(run(&tcp(0, 80, 40000, Tcp::Ack), &s, &mut st), 1);
    let k = key(B, 40000, A, 80, 6);
    assert_eq!(
        st.conntrack().peek(&k, SEC).map(|p| p.1),
        Some(State::Established)
    );
    // UDP too: b asks a's DNS, the answer comes back.
    assert_tx(run(&udp(1, 5353, 53), &s, &mut st), 0);
    assert_tx(run(&udp(0, 53, 5353), &s, &mut st), 1);
    // But a new connection from a into b is denied and leaves no entry.
    assert_eq!(
        run(&tcp(0, 40001, 22, Tcp::Syn), &s, &mut st),
        Verdict::Drop(DropReason::PolicyDenied)
    );
    assert!(st.conntrack().peek(&key(A, 40001, B, 22, 6), SEC).is_none());
    let ev = events(&st);
    let kinds: Vec<FlowKind> = ev.iter().map(|e| e.kind).collect();
    assert_eq!(kinds, [FlowKind::New, FlowKind::New, FlowKind::Drop]);
    let drop = ev[2];
    assert_eq!(drop.reason, Some(DropReason::PolicyDenied));
    assert_eq!(drop.ingress_rule, RuleId::IMPLICIT_DENY);
    assert_eq!((drop.src_endpoint, drop.dst_endpoint), (Some(0), Some(1)));
    assert!(!drop.allowed);
    assert_eq!(st.ct_stats().inserts.get(), 2);
}

#[test]
fn new_flow_denied_and_a_flood_of_denied_syns_makes_no_entries() {
    let s = snap(1, true);
    let mut st = WorkerState::new();
    for p in 0..10_000u16 {
        assert_eq!(
            run(&tcp(0, 1024 + p, 80, Tcp::Syn), &s, &mut st),
            Verdict::Drop(DropReason::PolicyDenied)
        );
    }
    assert_eq!(st.conntrack().count(0), 0);
    // The flow log is bounded: the excess is counted, not queued.
    assert_eq!(st.flows().pushed() + st.flows().lost(), 10_000);
    assert!(st.flows().lost() > 0);
}

#[test]
fn revocation_drops_an_established_flow_on_its_next_packet() {
    let open = snap(1, false);
    let mut st = WorkerState::new();
    st.set_now(SEC);
    assert_tx(run(&tcp(0, 40000, 80, Tcp::Syn), &open, &mut st), 1);
    assert_tx(run(&tcp(1, 80, 40000, Tcp::SynAck), &open, &mut st), 0);
    assert_tx(run(&tcp(0, 40000, 80, Tcp::Ack), &open, &mut st), 1);
    // A new policy isolates b: a's idle connection's next segment drops.
    let closed = snap(2, true);
    st.set_now(100 * SEC);
    assert_eq!(
        run(&tcp(0, 40000, 80, Tcp::Ack), &closed, &mut st),
        Verdict::Drop(DropReason::PolicyDenied)
    );
    // b's side cannot revive it as a mid-stream pickup either.
    assert_eq!(
        run(&tcp(1, 80, 40000, Tcp::Ack), &closed, &mut st),
        Verdict::Drop(DropReason::PolicyDenied)
    );
    assert_eq!(
        run(&tcp(0, 40000, 80, Tcp::Ack), &closed, &mut st),
        Verdict::Drop(DropReason::PolicyDenied)
    );
    let ev = events(&st);
    assert_eq!(ev.last().unwrap().kind, FlowKind::Revoked);
    assert_eq!(ev.last().unwrap().generation, 2);
    assert_eq!(st.ct_stats().revoked.get(), 1);
    // Flows that stay allowed are re-judged once and go on.
    let mut st = WorkerState::new();
    assert_tx(run(&tcp(1, 40000, 80, Tcp::Syn), &open, &mut st), 0);
    assert_tx(run(&tcp(0, 80, 40000, Tcp::SynAck), &closed, &mut st), 1);
    assert_tx(run(&tcp(1, 40000, 80, Tcp::Ack), &closed, &mut st), 0);
    assert_eq!(st.ct_stats().rejudged.get(), 1);
}

#[test]
fn a_newly_allowed_flow_starts_passing() {
    let closed = snap(1, true);
    let mut st = WorkerState::new();
    assert_eq!(
        run(&tcp(0, 40000, 80, Tcp::Syn), &closed, &mut st),
        Verdict::Drop(DropReason::PolicyDenied)
    );
    let open = snap(2, false);
    assert_tx(run(&tcp(0, 40000, 80, Tcp::Syn), &open, &mut st), 1);
    assert_tx(run(&tcp(1, 80, 40000, Tcp::SynAck), &open, &mut st), 0);
    // After a revocation, a later policy that allows it again lets the
    // tombstone go and the flow is judged afresh.
    let closed3 = snap(3, true);
    assert_eq!(
        run(&tcp(0, 40000, 80, Tcp::Ack), &closed3, &mut st),
        Verdict::Drop(DropReason::PolicyDenied)
    );
    let open4 = snap(4, false);
    assert_tx(run(&tcp(0, 40000, 80, Tcp::Ack), &open4, &mut st), 1);
}

/// A revoked connection cannot come back through its other direction: the
/// server's segment (allowed as a new flow server → client) after a later,
/// unrelated policy generation is judged in the flow's original direction,
/// still denied; and the tombstone outlives a retransmission gap.
#[test]
fn a_revoked_flow_stays_cut_when_its_server_sends_first() {
    let open = snap(1, false);
    let mut st = WorkerState::new();
    assert_tx(run(&tcp(0, 40000, 80, Tcp::Syn), &open, &mut st), 1);
    assert_tx(run(&tcp(1, 80, 40000, Tcp::SynAck), &open, &mut st), 0);
    assert_tx(run(&tcp(0, 40000, 80, Tcp::Ack), &open, &mut st), 1);
    let closed2 = snap(2, true);
    assert_eq!(
        run(&tcp(0, 40000, 80, Tcp::Ack), &closed2, &mut st),
        Verdict::Drop(DropReason::PolicyDenied)
    );
    // Policy changes again (still denying 0 → 1:80); the server speaks first.
    let closed3 = snap(3, true);
    assert_eq!(
        run(&tcp(1, 80, 40000, Tcp::Ack), &closed3, &mut st),
        Verdict::Drop(DropReason::PolicyDenied)
    );
    assert_eq!(
        run(&tcp(0, 40000, 80, Tcp::Ack), &closed3, &mut st),
        Verdict::Drop(DropReason::PolicyDenied)
    );
    // A plain new flow from the server's side is not affected.
    assert_tx(run(&tcp(1, 5555, 22, Tcp::Syn), &closed3, &mut st), 0);
}

#[test]
fn mid_stream_pickup_after_restart() {
    let s = snap(1, true);
    let mut st = WorkerState::new();
    // No entry (fresh table): b's ACK to a is judged like new and allowed.
    assert_tx(run(&tcp(1, 40000, 80, Tcp::Ack), &s, &mut st), 0);
    assert_tx(run(&tcp(0, 80, 40000, Tcp::Ack), &s, &mut st), 1);
    let ev = events(&st);
    assert_eq!(ev.len(), 1);
    assert!(ev[0].pickup);
    // A RST for no flow passes if allowed and creates nothing.
    assert_tx(run(&tcp(1, 40001, 80, Tcp::Rst), &s, &mut st), 0);
    assert!(st.conntrack().peek(&key(B, 40001, A, 80, 6), 0).is_none());
}

#[test]
fn tcp_invalid_for_state_is_dropped() {
    let s = snap(1, false);
    let mut st = WorkerState::new();
    assert_tx(run(&tcp(0, 40000, 80, Tcp::Syn), &s, &mut st), 1);
    // The server's data before its SYN-ACK.
    assert_eq!(
        run(&tcp(1, 80, 40000, Tcp::Ack), &s, &mut st),
        Verdict::Drop(DropReason::CtInvalid)
    );
}

#[test]
fn icmp_errors_related_to_a_flow_pass() {
    let s = snap(1, true);
    let mut st = WorkerState::new();
    // b sends UDP to a:53; a answers port unreachable: related, passes
    // although b's ingress is isolated.
    let dgram = udp(1, 5353, 53);
    assert_tx(run(&dgram, &s, &mut st), 0);
    assert_tx(run(&port_unreachable(0, &dgram), &s, &mut st), 1);
    assert_eq!(events(&st).last().unwrap().kind, FlowKind::Related);
    // An error quoting a flow that does not exist does not.
    let other = udp(1, 5354, 53);
    assert_eq!(
        run(&port_unreachable(0, &other), &s, &mut st),
        Verdict::Drop(DropReason::CtInvalid)
    );
}

#[test]
fn table_full_of_established_flows_refuses_new_ones() {
    use std::sync::Arc;
    use weir_dataplane::conntrack::{Conntrack, Timeouts, WAYS};
    let s = snap(1, false);
    // One bucket.
    let ct = Arc::new(Conntrack::new(WAYS, Timeouts::default()));
    let mut st = WorkerState::with_shared(ct, Arc::default(), Arc::default());
    for p in 0..WAYS as u16 {
        assert_tx(run(&udp(0, 1000 + p, 53), &s, &mut st), 1);
        assert_tx(run(&udp(1, 53, 1000 + p), &s, &mut st), 0);
    }
    assert_eq!(
        run(&udp(0, 999, 53), &s, &mut st),
        Verdict::Drop(DropReason::CtTableFull)
    );
    // Established flows keep passing.
    assert_tx(run(&udp(0, 1000, 53), &s, &mut st), 1);
    assert_eq!(st.ct_stats().table_full.get(), 1);
}
