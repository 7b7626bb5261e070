//! Table tests of the pass on fragmented datagrams, IPv6 extension
//! headers and SCTP, under a policy: b's ingress allows TCP, UDP and SCTP
//! port 80 from a, nothing else. Fragments are cut by hand from frames etherparse built.

use etherparse::PacketBuilder;
use std::net::Ipv6Addr;
use weir_dataplane::conntrack::State;
use weir_dataplane::flows::{FlowEvent, FlowKind};
use weir_dataplane::pass::{process, WorkerState};
use weir_dataplane::policy::{
    CellSpec, Decision, Direction, EndpointTables, PolicySpec, RuleId, RuleInfo, Tier,
    IDENTITY_WORLD,
};
use weir_dataplane::{DropReason, Endpoint, Port, Snapshot, SnapshotSpec, Verdict};

const A: [u8; 4] = [10, 1, 0, 1];
const B: [u8; 4] = [10, 1, 0, 2];
const SEC: u64 = 1_000_000_000;

fn a6() -> [u8; 16] {
    Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1).octets()
}
fn b6() -> [u8; 16] {
    Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2).octets()
}
fn port_mac(p: u8) -> [u8; 6] {
    [0x02, 0xee, 0, 0, 0, p]
}
fn pod_mac(p: u8) -> [u8; 6] {
    [0x0a, 0x58, 0, 0, 0, p]
}

/// Pods a (port 0) and b (port 1), both families; b's ingress allows TCP
/// and UDP port 80 from a (generation `generation`), or nothing at all
/// (`deny_all`).
fn snap(generation: u64, deny_all: bool) -> Snapshot {
    let port = |i: u8| Port {
        name: format!("veth{i}"),
        mac: port_mac(i),
        mtu: 1500,
    };
    let ep = |i: u8, name: &str, a: [u8; 4], a6: [u8; 16]| Endpoint {
        name: format!("default/{name}"),
        port: u16::from(i),
        mac: pod_mac(i),
        ipv4: Some(a.into()),
        ipv6: Some(a6.into()),
    };
    let deny = Decision::deny(RuleId::IMPLICIT_DENY);
    let allow = Decision::allow(RuleId(0));
    let port80 = if deny_all {
        CellSpec::uniform(deny)
    } else {
        CellSpec {
            other: deny,
            tcp: vec![(0, deny), (80, allow), (81, deny)],
            udp: vec![(0, deny), (80, allow), (81, deny)],
            sctp: vec![(0, deny), (80, allow), (81, deny)],
        }
    };
    let policy = PolicySpec {
        generation,
        rules: vec![RuleInfo {
            tier: Tier::Namespace,
            kind: "networkpolicies".into(),
            namespace: Some("default".into()),
            name: "b-port-80".into(),
            direction: Direction::Ingress,
            index: 0,
            action: "Allow".into(),
            priority: None,
        }],
        classes: vec![IDENTITY_WORLD, 256, 257],
        addresses: vec![
            (A.into(), 1),
            (B.into(), 2),
            (a6().into(), 1),
            (b6().into(), 2),
        ],
        prefixes: vec![],
        world_class: 0,
        cells: vec![CellSpec::uniform(deny), port80],
        tables: vec![vec![0, 1, 0]],
        endpoints: vec![
            EndpointTables::default(),
            EndpointTables {
                ingress: Some(0),
                egress: None,
            },
        ],
        http: vec![],
        ..Default::default()
    };
    Snapshot::build(SnapshotSpec {
        generation,
        node: "node-1".into(),
        node_ipv4: Some([10, 0, 0, 10].into()),
        node_ipv6: Some(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x10)),
        ports: vec![port(0), port(1)],
        endpoints: vec![ep(0, "a", A, a6()), ep(1, "b", B, b6())],
        policy,
        tunnel: None,
        services: Vec::new(),
        host: None,
        uplink: None,
    })
    .unwrap()
}

/// A whole UDP datagram from a to b with `n` bytes of payload.
fn udp4(dport: u16, n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(pod_mac(0), port_mac(0))
        .ipv4(A, B, 64)
        .udp(40000, dport)
        .write(&mut out, &vec![0x5a; n])
        .unwrap();
    out
}

fn udp6(dport: u16, n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(pod_mac(0), port_mac(0))
        .ipv6(a6(), b6(), 64)
        .udp(40000, dport)
        .write(&mut out, &vec![0x5a; n])
        .unwrap();
    out
}

fn tcp4(dport: u16, n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(pod_mac(0), port_mac(0))
        .ipv4(A, B, 64)
        .tcp(40000, dport, 1, 64240)
        .syn()
        .write(&mut out, &vec![0x5a; n])
        .unwrap();
    out
}

fn ip_checksum(h: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in h.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The IPv4 fragment of the whole frame `whole` carrying `len` bytes of
/// its IP payload from `off` (a multiple of 8), identification `id`.
fn frag4(whole: &[u8], id: u16, off: usize, len: usize, more: bool) -> Vec<u8> {
    let payload = &whole[34..];
    let data = &payload[off..(off + len).min(payload.len())];
    let mut f = whole[..34].to_vec();
    f.extend_from_slice(data);
    let total = (20 + data.len()) as u16;
    f[16..18].copy_from_slice(&total.to_be_bytes());
    f[18..20].copy_from_slice(&id.to_be_bytes());
    let flags = (off as u16 >> 3) | if more { 0x2000 } else { 0 };
    f[20..22].copy_from_slice(&flags.to_be_bytes());
    f[24..26].copy_from_slice(&[0, 0]);
    let c = ip_checksum(&f[14..34]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
    f
}

/// The IPv6 fragment (fragment header inserted after the fixed header,
/// before `ext`, which goes in the first fragment only).
fn frag6(whole: &[u8], id: u32, off: usize, len: usize, more: bool) -> Vec<u8> {
    let nh = whole[20];
    let payload = &whole[54..];
    let data = &payload[off..(off + len).min(payload.len())];
    let mut f = whole[..54].to_vec();
    f[20] = 44;
    let offm = (off as u16) | u16::from(more);
    f.extend_from_slice(&[nh, 0]);
    f.extend_from_slice(&offm.to_be_bytes());
    f.extend_from_slice(&id.to_be_bytes());
    f.extend_from_slice(data);
    let plen = (8 + data.len()) as u16;
    f[18..20].copy_from_slice(&plen.to_be_bytes());
    f
}

fn run(frame: &[u8], s: &Snapshot, st: &mut WorkerState) -> Verdict {
    let mut buf = vec![0u8; 4096];
    buf[..frame.len()].copy_from_slice(frame);
    let ingress = u16::from(frame[6 + 5]);
    process(&mut buf, frame.len(), ingress, s, st)
}

fn tx(len: usize) -> Verdict {
    Verdict::Tx { port: 1, len }
}

fn dropped(r: DropReason) -> Verdict {
    Verdict::Drop(r)
}

fn events(st: &WorkerState) -> Vec<FlowEvent> {
    let mut v = Vec::new();
    st.flows().drain(&mut v);
    v
}

fn state() -> WorkerState {
    let mut st = WorkerState::new();
    st.set_now(SEC);
    st
}

#[test]
fn allowed_datagram_passes_in_every_fragment_both_families() {
    let s = snap(1, false);
    let mut st = state();
    let whole = udp4(80, 3000);
    let f = [
        frag4(&whole, 7, 0, 1480, true),
        frag4(&whole, 7, 1480, 1480, true),
        frag4(&whole, 7, 2960, 48, false),
    ];
    for f in &f {
        assert_eq!(run(f, &s, &mut st), tx(f.len()));
    }
    let whole6 = udp6(80, 3000);
    let f6 = [
        frag6(&whole6, 9, 0, 1448, true),
        frag6(&whole6, 9, 1448, 1448, true),
        frag6(&whole6, 9, 2896, 112, false),
    ];
    for f in &f6 {
        assert_eq!(run(f, &s, &mut st), tx(f.len()));
    }
    assert_eq!(st.ct_stats().frag_datagrams.get(), 2);
    assert_eq!(st.ct_stats().frag_followed.get(), 4);
    // One flow per family, admitted by the first fragment.
    assert_eq!(st.conntrack().count(SEC), 2);
    let ev = events(&st);
    assert_eq!(ev.len(), 2);
    assert!(ev
        .iter()
        .all(|e| e.kind == FlowKind::New && e.key.dport == 80));
}

#[test]
fn denied_datagram_stays_denied_in_every_fragment() {
    let s = snap(1, false);
    let mut st = state();
    let whole = udp4(81, 3000);
    for (off, len, more) in [(0, 1480, true), (1480, 1480, true), (2960, 48, false)] {
        let f = frag4(&whole, 7, off, len, more);
        assert_eq!(run(&f, &s, &mut st), dropped(DropReason::PolicyDenied));
    }
    let whole6 = udp6(81, 3000);
    for (off, len, more) in [(0, 1448, true), (1448, 1448, true), (2896, 112, false)] {
        let f = frag6(&whole6, 7, off, len, more);
        assert_eq!(run(&f, &s, &mut st), dropped(DropReason::PolicyDenied));
    }
    assert_eq!(st.ct_stats().frag_followed.get(), 0);
    assert_eq!(st.conntrack().count(SEC), 0);
}

#[test]
fn without_policy_fragments_pass() {
    let s = snap(1, false);
    let mut st = state();
    // b → a: a has no policy.
    let mut whole = Vec::new();
    PacketBuilder::ethernet2(pod_mac(1), port_mac(1))
        .ipv4(B, A, 64)
        .udp(5000, 9999)
        .write(&mut whole, &[1; 2000])
        .unwrap();
    for (off, len, more) in [(0, 1480, true), (1480, 1480, false)] {
        let f = frag4(&whole, 1, off, len, more);
        assert_eq!(
            run(&f, &s, &mut st),
            Verdict::Tx {
                port: 0,
                len: f.len()
            }
        );
    }
}

#[test]
fn later_fragment_before_its_first_is_dropped_with_its_own_reason() {
    let s = snap(1, false);
    let mut st = state();
    let whole = udp4(80, 2000);
    let (first, second) = (
        frag4(&whole, 7, 0, 1480, true),
        frag4(&whole, 7, 1480, 528, false),
    );
    assert_eq!(
        run(&second, &s, &mut st),
        dropped(DropReason::FragmentNoFirst)
    );
    let ev = events(&st);
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].reason, Some(DropReason::FragmentNoFirst));
    assert_eq!(ev[0].kind, FlowKind::Drop);
    assert_eq!((ev[0].key.sport, ev[0].key.dport), (0, 0));
    // In order afterwards, the same datagram passes (the retransmission
    // of a UDP protocol would).
    assert_eq!(run(&first, &s, &mut st), tx(first.len()));
    assert_eq!(run(&second, &s, &mut st), tx(second.len()));
    // After the entry's lifetime, a straggler is unknown again.
    st.set_now(SEC + weir_dataplane::frag::DEFAULT_TIMEOUT);
    assert_eq!(
        run(&second, &s, &mut st),
        dropped(DropReason::FragmentNoFirst)
    );
}

#[test]
fn overlapping_fragment_cannot_rewrite_the_ports() {
    let s = snap(1, false);
    let mut st = state();
    let whole = udp4(80, 2000);
    let first = frag4(&whole, 7, 0, 1480, true);
    assert_eq!(run(&first, &s, &mut st), tx(first.len()));
    // A later fragment at offset 8 < 1480 overlaps the first fragment's
    // data: whatever it carries, it could rewrite the header at b.
    let overlap = frag4(&whole, 7, 8, 200, true);
    assert_eq!(
        run(&overlap, &s, &mut st),
        dropped(DropReason::FragmentOverlap)
    );
    // ...and the rest of the datagram with it; a repeated first fragment
    // does not bring it back.
    let rest = frag4(&whole, 7, 1480, 528, false);
    assert_eq!(
        run(&rest, &s, &mut st),
        dropped(DropReason::FragmentOverlap)
    );
    assert_eq!(
        run(&first, &s, &mut st),
        dropped(DropReason::FragmentOverlap)
    );
    let ev = events(&st);
    assert!(ev
        .iter()
        .any(|e| e.reason == Some(DropReason::FragmentOverlap)));
}

#[test]
fn a_second_first_fragment_is_judged_on_its_own_ports() {
    let s = snap(1, false);
    let mut st = state();
    // First fragment to 80 (allowed), then one to 81 with the same
    // identification (denied): the datagram's later fragments drop.
    let ok = frag4(&udp4(80, 2000), 7, 0, 1480, true);
    let bad = frag4(&udp4(81, 2000), 7, 0, 1480, true);
    let rest = frag4(&udp4(80, 2000), 7, 1480, 528, false);
    assert_eq!(run(&ok, &s, &mut st), tx(ok.len()));
    assert_eq!(run(&bad, &s, &mut st), dropped(DropReason::PolicyDenied));
    assert_eq!(run(&rest, &s, &mut st), dropped(DropReason::PolicyDenied));
    // The other order: the denied first never reaches b; the allowed one
    // and its later fragments do.
    let ok = frag4(&udp4(80, 2000), 8, 0, 1480, true);
    let bad = frag4(&udp4(81, 2000), 8, 0, 1480, true);
    let rest = frag4(&udp4(80, 2000), 8, 1480, 528, false);
    assert_eq!(run(&bad, &s, &mut st), dropped(DropReason::PolicyDenied));
    assert_eq!(run(&ok, &s, &mut st), tx(ok.len()));
    assert_eq!(run(&rest, &s, &mut st), tx(rest.len()));
}

#[test]
fn tiny_first_fragment_is_refused() {
    let s = snap(1, false);
    let mut st = state();
    // TCP: the first fragment carries 8 bytes (ports, not flags).
    let whole = tcp4(80, 100);
    let tiny = frag4(&whole, 3, 0, 8, true);
    assert_eq!(
        run(&tiny, &s, &mut st),
        dropped(DropReason::FragmentInvalid)
    );
    let rest = frag4(&whole, 3, 8, 112, false);
    assert_eq!(
        run(&rest, &s, &mut st),
        dropped(DropReason::FragmentNoFirst)
    );
    // 16 bytes: still short of the 20-byte TCP header.
    let tiny = frag4(&whole, 4, 0, 16, true);
    assert_eq!(
        run(&tiny, &s, &mut st),
        dropped(DropReason::FragmentInvalid)
    );
    // IPv6: an empty first fragment.
    let whole6 = udp6(80, 100);
    let tiny6 = frag6(&whole6, 3, 0, 0, true);
    assert_eq!(
        run(&tiny6, &s, &mut st),
        dropped(DropReason::FragmentInvalid)
    );
}

#[test]
fn ipv6_first_fragment_must_carry_the_whole_header_chain() {
    let s = snap(1, false);
    let mut st = state();
    // Fragment header, then a 16-byte destination-options header of which
    // the first fragment carries 8 bytes (RFC 7112).
    let whole = udp6(80, 100);
    let mut f = whole[..54].to_vec();
    f[20] = 44;
    f.extend_from_slice(&[60, 0, 0, 1, 0, 0, 0, 5]); // fragment: offset 0, M
    f.extend_from_slice(&[17, 1, 1, 4, 0, 0, 0, 0]); // dest-opts (claims 16)
    let plen = (f.len() - 54) as u16;
    f[18..20].copy_from_slice(&plen.to_be_bytes());
    assert_eq!(run(&f, &s, &mut st), dropped(DropReason::FragmentInvalid));
}

#[test]
fn ipv6_extension_headers_reach_the_transport_header_for_policy() {
    let s = snap(1, false);
    let mut st = state();
    // hop-by-hop (PadN) + destination options (PadN) before UDP.
    let ext = |dport: u16| {
        let whole = udp6(dport, 20);
        let mut f = whole[..54].to_vec();
        f[20] = 0;
        f.extend_from_slice(&[60, 0, 1, 4, 0, 0, 0, 0]);
        f.extend_from_slice(&[17, 0, 1, 4, 0, 0, 0, 0]);
        f.extend_from_slice(&whole[54..]);
        let plen = (f.len() - 54) as u16;
        f[18..20].copy_from_slice(&plen.to_be_bytes());
        f
    };
    let ok = ext(80);
    assert_eq!(run(&ok, &s, &mut st), tx(ok.len()));
    assert_eq!(
        run(&ext(81), &s, &mut st),
        dropped(DropReason::PolicyDenied)
    );
    // A routing header with segments left: refused whatever its type.
    for rtype in [0u8, 4] {
        let whole = udp6(80, 20);
        let mut f = whole[..54].to_vec();
        f[20] = 43;
        f.extend_from_slice(&[17, 2, rtype, 1, 0, 0, 0, 0]);
        f.extend_from_slice(&b6());
        f.extend_from_slice(&whole[54..]);
        let plen = (f.len() - 54) as u16;
        f[18..20].copy_from_slice(&plen.to_be_bytes());
        assert_eq!(
            run(&f, &s, &mut st),
            dropped(DropReason::Ipv6Unsupported),
            "type {rtype}"
        );
        // With no segments left it is only walked over.
        f[54 + 3] = 0;
        assert_eq!(run(&f, &s, &mut st), tx(f.len()), "type {rtype}");
    }
}

#[test]
fn policy_change_between_fragments_is_applied_to_the_rest() {
    let open = snap(1, false);
    let closed = snap(2, true);
    let mut st = state();
    let whole = udp4(80, 4000);
    let f0 = frag4(&whole, 5, 0, 1480, true);
    let f1 = frag4(&whole, 5, 1480, 1480, true);
    let f2 = frag4(&whole, 5, 2960, 1048, false);
    assert_eq!(run(&f0, &open, &mut st), tx(f0.len()));
    assert_eq!(run(&f1, &open, &mut st), tx(f1.len()));
    // Policy now denies UDP 80 into b: the flow is judged again and revoked.
    assert_eq!(
        run(&f2, &closed, &mut st),
        dropped(DropReason::PolicyDenied)
    );
    assert_eq!(st.ct_stats().revoked.get(), 1);
    // Still allowed under a new generation of the same rules: passes.
    let whole = udp4(80, 4000);
    let g0 = frag4(&whole, 6, 0, 1480, true);
    let g1 = frag4(&whole, 6, 1480, 1480, true);
    let mut st = state();
    assert_eq!(run(&g0, &open, &mut st), tx(g0.len()));
    assert_eq!(run(&g1, &snap(3, false), &mut st), tx(g1.len()));
    assert_eq!(st.ct_stats().rejudged.get(), 1);
}

#[test]
fn fragmented_icmp_echo_follows_its_first() {
    // ping -s 3000 from b to a (a has no policy): every fragment passes;
    // a's large echo reply comes back the same way.
    let s = snap(1, false);
    let mut st = state();
    let mut req = Vec::new();
    PacketBuilder::ethernet2(pod_mac(1), port_mac(1))
        .ipv4(B, A, 64)
        .icmpv4_echo_request(77, 1)
        .write(&mut req, &[9; 3000])
        .unwrap();
    for (off, len, more) in [(0, 1480, true), (1480, 1480, true), (2960, 48, false)] {
        let f = frag4(&req, 11, off, len, more);
        assert_eq!(
            run(&f, &s, &mut st),
            Verdict::Tx {
                port: 0,
                len: f.len()
            }
        );
    }
    let mut rep = Vec::new();
    PacketBuilder::ethernet2(pod_mac(0), port_mac(0))
        .ipv4(A, B, 64)
        .icmpv4_echo_reply(77, 1)
        .write(&mut rep, &[9; 3000])
        .unwrap();
    for (off, len, more) in [(0, 1480, true), (1480, 1480, true), (2960, 48, false)] {
        let f = frag4(&rep, 12, off, len, more);
        assert_eq!(run(&f, &s, &mut st), tx(f.len()));
    }
}

#[test]
fn a_flood_of_first_fragments_is_bounded_and_counted() {
    let s = snap(1, false);
    let mut st = state();
    let cap = st.conntrack().frags().capacity();
    let whole = udp4(80, 3000);
    let n = 60_000u16;
    for id in 0..n {
        let f = frag4(&whole, id, 0, 1480, true);
        assert_eq!(run(&f, &s, &mut st), tx(f.len()));
    }
    // Every bucket filled up, then every new datagram evicted an old one.
    assert_eq!(st.conntrack().frags().count(SEC), cap);
    assert_eq!(
        st.ct_stats().frag_evictions.get(),
        u64::from(n) - cap as u64
    );
}

/// An SCTP packet (common header + one chunk header of type `chunk`) from
/// the pod behind `from` (0 = a, 1 = b), IPv4 or IPv6.
fn sctp(from: u8, v6: bool, sport: u16, dport: u16, chunk: u8) -> Vec<u8> {
    let mut l4 = Vec::new();
    l4.extend_from_slice(&sport.to_be_bytes());
    l4.extend_from_slice(&dport.to_be_bytes());
    l4.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0]); // vtag, CRC32c (unchecked)
    l4.extend_from_slice(&[chunk, 0, 0, 4]);
    let macs = (pod_mac(from), port_mac(from));
    let mut out = Vec::new();
    let b = PacketBuilder::ethernet2(macs.0, macs.1);
    let b = match (v6, from) {
        (false, 0) => b.ipv4(A, B, 64),
        (false, _) => b.ipv4(B, A, 64),
        (true, 0) => b.ipv6(a6(), b6(), 64),
        (true, _) => b.ipv6(b6(), a6(), 64),
    };
    b.write(&mut out, etherparse::IpNumber::SCTP, &l4).unwrap();
    out
}

#[test]
fn sctp_ports_are_judged_and_tracked() {
    use weir_dataplane::wire::sctp::chunk;
    let s = snap(1, false);
    let mut st = state();
    for v6 in [false, true] {
        // a → b: SCTP 80 allowed, 81 denied (NetworkPolicy SCTP ports).
        let init = sctp(0, v6, 5000, 80, chunk::INIT);
        assert_eq!(run(&init, &s, &mut st), tx(init.len()), "v6 {v6}");
        let denied = sctp(0, v6, 5000, 81, chunk::INIT);
        assert_eq!(
            run(&denied, &s, &mut st),
            dropped(DropReason::PolicyDenied),
            "v6 {v6}"
        );
        // b's INIT-ACK is the association's reply.
        let ack = sctp(1, v6, 80, 5000, chunk::INIT_ACK);
        assert_eq!(
            run(&ack, &s, &mut st),
            Verdict::Tx {
                port: 0,
                len: ack.len()
            }
        );
        // b (isolated for ingress) opens an association to a: a's answers
        // pass as replies, a's own new association into b does not.
        let out = sctp(1, v6, 6000, 9999, chunk::INIT);
        assert_eq!(
            run(&out, &s, &mut st),
            Verdict::Tx {
                port: 0,
                len: out.len()
            }
        );
        let back = sctp(0, v6, 9999, 6000, chunk::INIT_ACK);
        assert_eq!(run(&back, &s, &mut st), tx(back.len()));
        let new = sctp(0, v6, 9999, 6001, chunk::INIT);
        assert_eq!(run(&new, &s, &mut st), dropped(DropReason::PolicyDenied));
        // Shorter than the common header.
        let mut short = sctp(0, v6, 5000, 80, chunk::INIT);
        let ip = if v6 { 54 } else { 34 };
        short.truncate(ip + 8);
        if v6 {
            short[18..20].copy_from_slice(&8u16.to_be_bytes());
        } else {
            short[16..18].copy_from_slice(&28u16.to_be_bytes());
            short[24..26].copy_from_slice(&[0, 0]);
            let c = ip_checksum(&short[14..34]);
            short[24..26].copy_from_slice(&c.to_be_bytes());
        }
        assert_eq!(run(&short, &s, &mut st), dropped(DropReason::L4Truncated));
    }
    // The association's states: INIT, INIT-ACK, COOKIE-ECHO → established;
    // SHUTDOWN both ways, SHUTDOWN-COMPLETE → time-wait.
    let k = weir_dataplane::pass::FlowKey {
        src: A.into(),
        dst: B.into(),
        proto: 132,
        sport: 7000,
        dport: 80,
    };
    let state = |st: &WorkerState| st.conntrack().peek(&k, SEC).map(|p| p.1);
    let steps: [(u8, u16, u16, u8, State); 6] = [
        (0, 7000, 80, chunk::INIT, State::SynSent),
        (1, 80, 7000, chunk::INIT_ACK, State::SynRecv),
        (0, 7000, 80, chunk::COOKIE_ECHO, State::Established),
        (0, 7000, 80, chunk::DATA, State::Established),
        (1, 80, 7000, chunk::SHUTDOWN, State::FinWait),
        (0, 7000, 80, chunk::SHUTDOWN_ACK, State::LastAck),
    ];
    for (from, sp, dp, c, want) in steps {
        let f = sctp(from, false, sp, dp, c);
        assert!(matches!(run(&f, &s, &mut st), Verdict::Tx { .. }), "{c}");
        assert_eq!(state(&st), Some(want), "after chunk {c}");
    }
    let f = sctp(1, false, 80, 7000, chunk::SHUTDOWN_COMPLETE);
    assert!(matches!(run(&f, &s, &mut st), Verdict::Tx { .. }));
    assert_eq!(state(&st), Some(State::TimeWait));
    // DATA before the association is set up is out of state.
    let f = sctp(0, false, 7001, 80, chunk::INIT);
    assert!(matches!(run(&f, &s, &mut st), Verdict::Tx { .. }));
    let f = sctp(0, false, 7001, 80, chunk::DATA);
    assert_eq!(run(&f, &s, &mut st), dropped(DropReason::CtInvalid));
    // ABORT closes.
    let f = sctp(1, false, 80, 7001, chunk::ABORT);
    assert!(matches!(run(&f, &s, &mut st), Verdict::Tx { .. }));
    // Flow events carry the SCTP ports.
    let ev = events(&st);
    assert!(ev
        .iter()
        .any(|e| e.key.proto == 132 && e.key.dport == 81 && !e.allowed));
}
