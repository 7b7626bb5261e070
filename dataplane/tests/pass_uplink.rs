//! Table tests of the uplink (docs/egress.md): pod → world with SNAT on the
//! node's underlay address, the reverse SNAT of replies in the same pass,
//! ports per worker share without collisions, non-masquerade destinations,
//! exhaustion and the other drops. Frames are built with etherparse (the
//! referee, with checksums computed from scratch).

use std::collections::HashSet;
use std::sync::Arc;

use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};
use weir_dataplane::conntrack::{Conntrack, Timeouts};
use weir_dataplane::pass::{process, WorkerState};
use weir_dataplane::snapshot::{
    Encap, TunnelSpec, Underlay, UplinkSpec, SNAT_PORT_FIRST, SNAT_PORT_LAST,
};
use weir_dataplane::{DropReason, Endpoint, Port, Snapshot, SnapshotSpec, Verdict};

const UMEM: usize = 2048;
const A: [u8; 4] = [10, 1, 0, 2];
const B: [u8; 4] = [10, 1, 0, 3];
const WORLD: [u8; 4] = [198, 51, 100, 1];
/// A world address not masqueraded.
const DIRECT: [u8; 4] = [198, 51, 100, 2];
const UL_ME: [u8; 4] = [172, 30, 0, 1];
const UL_MAC_ME: [u8; 6] = [0x0a, 0, 172, 30, 0, 1];
const GW_MAC: [u8; 6] = [0x0a, 2, 172, 30, 0, 254];
/// Port ids: pods a, b on 0, 1; the underlay is 2.
const UNDERLAY: u16 = 2;

fn port_mac(p: u8) -> [u8; 6] {
    [0x02, 0xee, 0, 0, 0, p]
}
fn pod_mac(p: u8) -> [u8; 6] {
    [0x0a, 0x58, 0, 0, 0, p]
}

fn snap() -> Snapshot {
    let port = |i: u8| Port {
        name: format!("veth{i}"),
        mac: port_mac(i),
        mtu: 1450,
    };
    let ep = |i: u8, name: &str, a: [u8; 4]| Endpoint {
        name: format!("default/{name}"),
        port: u16::from(i),
        mac: pod_mac(i),
        ipv4: Some(a.into()),
        ipv6: None,
    };
    Snapshot::build(SnapshotSpec {
        generation: 1,
        node: "node-1".into(),
        node_ipv4: Some([10, 1, 0, 1].into()),
        ports: vec![port(0), port(1)],
        endpoints: vec![ep(0, "a", A), ep(1, "b", B)],
        tunnel: Some(TunnelSpec {
            encap: Encap::Vxlan,
            vni: 1,
            udp_port: 4789,
            underlay: Underlay {
                name: "ul0".into(),
                mac: UL_MAC_ME,
                ipv4: UL_ME.into(),
                mtu: 1500,
            },
            vtep_mac: [0x0e, 0, 172, 30, 0, 1],
            peers: vec![],
        }),
        uplink: Some(UplinkSpec {
            gateway_ipv4: [172, 30, 0, 254].into(),
            gateway_mac: GW_MAC,
            cluster_cidrs: vec![
                ([10, 0, 0, 0].into(), 8),
                ([172, 30, 0, 0].into(), 24),
                ("fd00::".parse().unwrap(), 8),
            ],
            non_masquerade: vec![(DIRECT.into(), 32)],
            pod_cidr_v4: Some(([10, 1, 0, 0].into(), 24)),
            node_ipv6: None,
            gateway_ipv6: None,
            gateway_mac_v6: None,
            pod_cidr_v6: None,
        }),
        ..Default::default()
    })
    .unwrap()
}

fn tcp(macs: ([u8; 6], [u8; 6]), src: ([u8; 4], u16), dst: ([u8; 4], u16), ttl: u8) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(macs.0, macs.1)
        .ipv4(src.0, dst.0, ttl)
        .tcp(src.1, dst.1, 1000, 64240)
        .syn()
        .write(&mut out, &[])
        .unwrap();
    out
}

fn udp(macs: ([u8; 6], [u8; 6]), src: ([u8; 4], u16), dst: ([u8; 4], u16), ttl: u8) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(macs.0, macs.1)
        .ipv4(src.0, dst.0, ttl)
        .udp(src.1, dst.1)
        .write(&mut out, b"hello")
        .unwrap();
    out
}

fn run(snap: &Snapshot, st: &mut WorkerState, frame: &[u8], ingress: u16) -> (Verdict, Vec<u8>) {
    let mut buf = vec![0u8; UMEM];
    buf[..frame.len()].copy_from_slice(frame);
    let v = process(&mut buf, frame.len(), ingress, snap, st);
    let out = match v {
        Verdict::Tx { len, .. } => buf[..len].to_vec(),
        _ => Vec::new(),
    };
    (v, out)
}

fn src_port(frame: &[u8]) -> u16 {
    match SlicedPacket::from_ethernet(frame).unwrap().transport {
        Some(TransportSlice::Tcp(t)) => t.source_port(),
        Some(TransportSlice::Udp(u)) => u.source_port(),
        other => panic!("not TCP/UDP: {other:?}"),
    }
}

fn shared(ct: &Arc<Conntrack>) -> WorkerState {
    WorkerState::with_shared(Arc::clone(ct), Arc::default(), Arc::default())
}

#[test]
fn pod_to_world_is_snated_and_the_reply_restored() {
    let s = snap();
    let mut st = WorkerState::new();
    for is_tcp in [true, false] {
        let build = if is_tcp { tcp } else { udp };
        let out_frame = build((pod_mac(0), port_mac(0)), (A, 40000), (WORLD, 8080), 64);
        let (v, out) = run(&s, &mut st, &out_frame, 0);
        assert!(
            matches!(v, Verdict::Tx { port: UNDERLAY, .. }),
            "tcp={is_tcp}: {v:?}"
        );
        let p = src_port(&out);
        assert!((SNAT_PORT_FIRST..=SNAT_PORT_LAST).contains(&p), "{p}");
        // Exactly etherparse's frame: node address and port as source, the
        // uplink's MACs, TTL − 1, checksums right.
        assert_eq!(
            out,
            build((UL_MAC_ME, GW_MAC), (UL_ME, p), (WORLD, 8080), 63),
            "tcp={is_tcp}"
        );
        // The next packet of the flow keeps its port.
        let (_, again) = run(&s, &mut st, &out_frame, 0);
        assert_eq!(src_port(&again), p);
        // The reply comes in on the underlay and goes to the pod, restored.
        let reply = build((GW_MAC, UL_MAC_ME), (WORLD, 8080), (UL_ME, p), 64);
        let (v, back) = run(&s, &mut st, &reply, UNDERLAY);
        assert!(
            matches!(v, Verdict::Tx { port: 0, .. }),
            "tcp={is_tcp}: {v:?}"
        );
        assert_eq!(
            back,
            build((port_mac(0), pod_mac(0)), (WORLD, 8080), (A, 40000), 63),
            "tcp={is_tcp}"
        );
    }
}

#[test]
fn non_masquerade_keeps_the_pod_source() {
    let s = snap();
    let mut st = WorkerState::new();
    let f = udp((pod_mac(1), port_mac(1)), (B, 5000), (DIRECT, 53), 64);
    let (v, out) = run(&s, &mut st, &f, 1);
    assert!(matches!(v, Verdict::Tx { port: UNDERLAY, .. }), "{v:?}");
    assert_eq!(out, udp((UL_MAC_ME, GW_MAC), (B, 5000), (DIRECT, 53), 63));
    // Its reply comes in on the underlay to the pod's own address and is
    // delivered as sent (MACs and TTL only).
    let reply = udp((GW_MAC, UL_MAC_ME), (DIRECT, 53), (B, 5000), 64);
    let (v, back) = run(&s, &mut st, &reply, UNDERLAY);
    assert!(matches!(v, Verdict::Tx { port: 1, .. }), "{v:?}");
    assert_eq!(
        back,
        udp((port_mac(1), pod_mac(1)), (DIRECT, 53), (B, 5000), 63)
    );
    // A masqueraded world address cannot reach a pod's own address.
    let stray = udp((GW_MAC, UL_MAC_ME), (WORLD, 53), (B, 5000), 64);
    assert_eq!(
        run(&s, &mut st, &stray, UNDERLAY).0,
        Verdict::Drop(DropReason::NoRoute)
    );
}

#[test]
fn workers_never_share_a_port() {
    let s = snap();
    let ct = Arc::new(Conntrack::new(1 << 14, Timeouts::default()));
    let mut w0 = shared(&ct).with_snat_slice(0, 2);
    let mut w1 = shared(&ct).with_snat_slice(1, 2);
    let mut seen = HashSet::new();
    for i in 0..400u16 {
        // Two pods, the same destination, the same source ports: only the
        // node's port tells the flows apart on the wire.
        let (pod, src, port) = if i % 2 == 0 { (0, A, 0) } else { (1, B, 1) };
        let st = if i % 3 == 0 { &mut w0 } else { &mut w1 };
        let f = tcp(
            (pod_mac(pod), port_mac(pod)),
            (src, 30000 + i / 2),
            (WORLD, 80),
            64,
        );
        let (v, out) = run(&s, st, &f, port);
        assert!(matches!(v, Verdict::Tx { port: UNDERLAY, .. }), "{v:?}");
        let p = src_port(&out);
        let slice = if i % 3 == 0 { 0 } else { 1 };
        assert_eq!(
            (p - SNAT_PORT_FIRST) % 2,
            slice,
            "port {p} outside its share"
        );
        assert!(seen.insert(p), "port {p} handed out twice");
    }
    // Every reply finds its own pod, whichever worker takes it.
    for (k, st) in [&mut w0, &mut w1].into_iter().enumerate() {
        let p = *seen.iter().nth(k).unwrap();
        let reply = tcp((GW_MAC, UL_MAC_ME), (WORLD, 80), (UL_ME, p), 64);
        let (v, _) = run(&s, st, &reply, UNDERLAY);
        assert!(matches!(v, Verdict::Tx { port: 0 | 1, .. }), "{v:?}");
    }
}

#[test]
fn a_full_share_is_counted_as_exhausted() {
    let s = snap();
    // 64 workers: this one's share is 71 ports.
    let mut st = WorkerState::new().with_snat_slice(0, 64);
    let share = usize::from(SNAT_PORT_LAST - SNAT_PORT_FIRST + 1).div_ceil(64);
    let mut ok = HashSet::new();
    let mut exhausted = 0;
    for i in 0..(share as u16 + 20) {
        let f = udp((pod_mac(0), port_mac(0)), (A, 20000 + i), (WORLD, 53), 64);
        match run(&s, &mut st, &f, 0) {
            (Verdict::Tx { .. }, out) => assert!(ok.insert(src_port(&out))),
            (Verdict::Drop(DropReason::SnatPortsExhausted), _) => exhausted += 1,
            (v, _) => panic!("{v:?}"),
        }
    }
    assert!(
        ok.len() <= share,
        "{} ports in a share of {share}",
        ok.len()
    );
    assert!(exhausted >= 20, "{exhausted}");
    // Another destination has ports of its own.
    let f = udp((pod_mac(0), port_mac(0)), (A, 20000), (WORLD, 54), 64);
    assert!(matches!(run(&s, &mut st, &f, 0).0, Verdict::Tx { .. }));
}

#[test]
fn drops_of_the_uplink() {
    let s = snap();
    let mut st = WorkerState::new();
    // A reply to a SNAT port nobody allocated.
    let f = udp((GW_MAC, UL_MAC_ME), (WORLD, 53), (UL_ME, 61234), 64);
    assert_eq!(
        run(&s, &mut st, &f, UNDERLAY).0,
        Verdict::Drop(DropReason::SnatNoEntry)
    );
    // ICMP other than echo (here a timestamp request) is not translated.
    let mut ping = Vec::new();
    PacketBuilder::ethernet2(pod_mac(0), port_mac(0))
        .ipv4(A, WORLD, 64)
        .icmpv4_raw(13, 0, [0, 7, 0, 1])
        .write(&mut ping, &[0; 12])
        .unwrap();
    assert_eq!(
        run(&s, &mut st, &ping, 0).0,
        Verdict::Drop(DropReason::SnatUnsupported)
    );
    // A cluster address that does not route is not sent to the world.
    let f = udp((pod_mac(0), port_mac(0)), (A, 1), ([10, 9, 9, 9], 53), 64);
    assert_eq!(
        run(&s, &mut st, &f, 0).0,
        Verdict::Drop(DropReason::NoRoute)
    );
    let f = udp((pod_mac(0), port_mac(0)), (A, 1), ([172, 30, 0, 2], 53), 64);
    assert_eq!(
        run(&s, &mut st, &f, 0).0,
        Verdict::Drop(DropReason::NoRoute)
    );
}

#[test]
fn an_uplink_without_underlay_is_refused() {
    let mut spec = snap().spec.clone();
    spec.tunnel = None;
    assert!(Snapshot::build(spec).is_err());
}

/// NodePort: a Service port with nodePort 30080 over backends a (local)
/// and r (on the peer node-2), and one with Local policy over r only.
fn np_snap() -> Snapshot {
    use weir_dataplane::snapshot::{ServiceBackend, ServiceFrontend, TunnelPeer};
    let mut spec = snap().spec.clone();
    let t = spec.tunnel.as_mut().unwrap();
    t.peers.push(TunnelPeer {
        node: "node-2".into(),
        ipv4: [172, 30, 0, 2].into(),
        mac: [0x0a, 0, 172, 30, 0, 2],
        vtep_mac: [0x0e, 0, 172, 30, 0, 2],
        pod_cidrs: vec![([10, 2, 0, 0].into(), 24)],
        identity_aware: true,
    });
    let b = |pod: &str, ip: [u8; 4]| ServiceBackend {
        pod: pod.into(),
        ip: ip.into(),
        port: 80,
        active: true,
    };
    let f = |ip: [u8; 4], np: u16, local: bool, backends| ServiceFrontend {
        service: format!("default/np{np}"),
        port_name: None,
        ip: ip.into(),
        proto: 6,
        port: 80,
        backends,
        affinity_timeout_s: None,
        node_port: Some(np),
        external_local: local,
        internal_local: false,
        external: false,
    };
    spec.services = vec![
        f(
            [10, 96, 0, 1],
            30080,
            false,
            vec![b("a", A), b("r", [10, 2, 0, 9])],
        ),
        f([10, 96, 0, 2], 30081, true, vec![b("r", [10, 2, 0, 9])]),
    ];
    Snapshot::build(spec).unwrap()
}

#[test]
fn node_port_to_local_and_remote_backends() {
    let s = np_snap();
    let mut st = WorkerState::new();
    let client = [198, 51, 100, 1];
    let (mut local, mut remote) = (0, 0);
    for sport in 40000..40040u16 {
        let f = tcp((GW_MAC, UL_MAC_ME), (client, sport), (UL_ME, 30080), 64);
        match run(&s, &mut st, &f, UNDERLAY) {
            // Local backend a: DNAT only, the client's address kept.
            (Verdict::Tx { port: 0, .. }, out) => {
                assert_eq!(
                    out,
                    tcp((port_mac(0), pod_mac(0)), (client, sport), (A, 80), 63)
                );
                local += 1;
                // a's reply leaves through the uplink from the node port.
                let r = tcp((pod_mac(0), port_mac(0)), (A, 80), (client, sport), 64);
                let (v, back) = run(&s, &mut st, &r, 0);
                assert!(matches!(v, Verdict::Tx { port: UNDERLAY, .. }), "{v:?}");
                assert_eq!(
                    back,
                    tcp((UL_MAC_ME, GW_MAC), (UL_ME, 30080), (client, sport), 63)
                );
            }
            // Remote backend: through the tunnel (checked by its length:
            // outer headers added).
            (
                Verdict::Tx {
                    port: UNDERLAY,
                    len,
                },
                _,
            ) => {
                assert!(len > f.len() + 40, "{len}");
                remote += 1;
            }
            (v, _) => panic!("{v:?}"),
        }
    }
    assert!(local > 5 && remote > 5, "local {local} remote {remote}");
    // Local policy on a node without a local backend: counted drop.
    let f = tcp((GW_MAC, UL_MAC_ME), (client, 1234), (UL_ME, 30081), 64);
    assert_eq!(
        run(&s, &mut st, &f, UNDERLAY).0,
        Verdict::Drop(DropReason::NodePortNoLocalEndpoint)
    );
    // A node port no Service has.
    let f = tcp((GW_MAC, UL_MAC_ME), (client, 1234), (UL_ME, 30999), 64);
    assert_eq!(
        run(&s, &mut st, &f, UNDERLAY).0,
        Verdict::Drop(DropReason::NoRoute)
    );
}

#[test]
fn node_ports_outside_the_range_or_twice_are_refused() {
    let mut spec = np_snap().spec.clone();
    spec.services[1].node_port = Some(30080);
    assert!(Snapshot::build(spec.clone()).is_err());
    spec.services[1].node_port = Some(8080);
    assert!(Snapshot::build(spec).is_err());
}

#[test]
fn internal_traffic_local_picks_this_nodes_backends_only() {
    let mut spec = np_snap().spec.clone();
    for (i, f) in spec.services.iter_mut().enumerate() {
        f.node_port = None;
        f.internal_local = true;
        f.ip = [10, 96, 0, 10 + i as u8].into();
    }
    let s = Snapshot::build(spec).unwrap();
    let mut st = WorkerState::new();
    // 10.96.0.10: backends a (here) and r (node-2): always a.
    for sport in 1000..1020u16 {
        let f = tcp(
            (pod_mac(1), port_mac(1)),
            (B, sport),
            ([10, 96, 0, 10], 80),
            64,
        );
        let (v, out) = run(&s, &mut st, &f, 1);
        assert!(matches!(v, Verdict::Tx { port: 0, .. }), "{v:?}");
        assert_eq!(out, tcp((port_mac(0), pod_mac(0)), (B, sport), (A, 80), 63));
    }
    // 10.96.0.11: only r, on node-2: refused here (RST back to the pod).
    let f = tcp(
        (pod_mac(1), port_mac(1)),
        (B, 2000),
        ([10, 96, 0, 11], 80),
        64,
    );
    assert!(matches!(
        run(&s, &mut st, &f, 1).0,
        Verdict::Tx { port: 1, .. }
    ));
    assert_eq!(st.take_reply_drop(), Some(DropReason::ServiceNoEndpoints));
}

fn ping(
    macs: ([u8; 6], [u8; 6]),
    src: [u8; 4],
    dst: [u8; 4],
    ttl: u8,
    id: u16,
    reply: bool,
) -> Vec<u8> {
    let mut out = Vec::new();
    let b = PacketBuilder::ethernet2(macs.0, macs.1).ipv4(src, dst, ttl);
    let b = if reply {
        b.icmpv4_echo_reply(id, 3)
    } else {
        b.icmpv4_echo_request(id, 3)
    };
    b.write(&mut out, b"ping payload").unwrap();
    out
}

fn echo_ident(frame: &[u8]) -> u16 {
    match SlicedPacket::from_ethernet(frame).unwrap().transport {
        Some(TransportSlice::Icmpv4(i)) => u16::from_be_bytes([i.bytes5to8()[0], i.bytes5to8()[1]]),
        other => panic!("not ICMPv4: {other:?}"),
    }
}

/// An ICMPv4 error from `src` to `dst` quoting `quote` (an IP packet).
fn icmp_error(
    macs: ([u8; 6], [u8; 6]),
    src: [u8; 4],
    dst: [u8; 4],
    ttl: u8,
    ty: etherparse::Icmpv4Type,
    quote: &[u8],
) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(macs.0, macs.1)
        .ipv4(src, dst, ttl)
        .icmpv4(ty)
        .write(&mut out, quote)
        .unwrap();
    out
}

/// ICMP echo leaves with the node's address and an identifier of the SNAT
/// range (the identifier plays the port, as in Linux's masquerade); the
/// reply gets the pod's address and identifier back. Byte for byte as
/// etherparse builds them (checksums from scratch).
#[test]
fn ping_to_the_world_is_snated_by_identifier() {
    let s = snap();
    let mut st = WorkerState::new();
    let req = ping((pod_mac(0), port_mac(0)), A, WORLD, 64, 7, false);
    let (v, out) = run(&s, &mut st, &req, 0);
    assert!(matches!(v, Verdict::Tx { port: UNDERLAY, .. }), "{v:?}");
    let id = echo_ident(&out);
    assert!((SNAT_PORT_FIRST..=SNAT_PORT_LAST).contains(&id), "{id}");
    assert_eq!(out, ping((UL_MAC_ME, GW_MAC), UL_ME, WORLD, 63, id, false));
    // The same ping keeps its identifier; pod b's ping with the same
    // identifier gets another.
    assert_eq!(echo_ident(&run(&s, &mut st, &req, 0).1), id);
    let req_b = ping((pod_mac(1), port_mac(1)), B, WORLD, 64, 7, false);
    let (_, out_b) = run(&s, &mut st, &req_b, 1);
    let id_b = echo_ident(&out_b);
    assert_ne!(id_b, id);
    // The replies go back to their pods, restored.
    let reply = ping((GW_MAC, UL_MAC_ME), WORLD, UL_ME, 64, id, true);
    let (v, back) = run(&s, &mut st, &reply, UNDERLAY);
    assert!(matches!(v, Verdict::Tx { port: 0, .. }), "{v:?}");
    assert_eq!(back, ping((port_mac(0), pod_mac(0)), WORLD, A, 63, 7, true));
    let reply_b = ping((GW_MAC, UL_MAC_ME), WORLD, UL_ME, 64, id_b, true);
    let (v, back) = run(&s, &mut st, &reply_b, UNDERLAY);
    assert!(matches!(v, Verdict::Tx { port: 1, .. }), "{v:?}");
    assert_eq!(back, ping((port_mac(1), pod_mac(1)), WORLD, B, 63, 7, true));
    // A reply to an identifier nobody allocated.
    let stray = ping((GW_MAC, UL_MAC_ME), WORLD, UL_ME, 64, 61999, true);
    assert_eq!(
        run(&s, &mut st, &stray, UNDERLAY).0,
        Verdict::Drop(DropReason::SnatNoEntry)
    );
}

/// ICMP errors from the world about SNAT flows go to the pod translated:
/// outer destination, quoted source address and port (or identifier),
/// quoted IP checksum, quoted UDP checksum, ICMP checksum: byte for byte
/// what the pod's own packet would have drawn (quoted with TTL 63, as it
/// left the node).
#[test]
fn icmp_errors_about_snat_flows_reach_the_pod_translated() {
    use etherparse::{icmpv4::DestUnreachableHeader, icmpv4::TimeExceededCode, Icmpv4Type};
    let s = snap();
    let mut st = WorkerState::new();
    let ip = |f: &[u8]| f[14..].to_vec();
    let router = [203, 0, 113, 9];
    // UDP to a closed port: port unreachable, quoting the whole datagram.
    let dgram = udp((pod_mac(0), port_mac(0)), (A, 40000), (WORLD, 9), 64);
    let (_, out) = run(&s, &mut st, &dgram, 0);
    let unreach = Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::Port);
    let err = icmp_error(
        (GW_MAC, UL_MAC_ME),
        WORLD,
        UL_ME,
        64,
        unreach.clone(),
        &ip(&out),
    );
    let (v, back) = run(&s, &mut st, &err, UNDERLAY);
    assert!(matches!(v, Verdict::Tx { port: 0, .. }), "{v:?}");
    let as_sent = udp((pod_mac(0), port_mac(0)), (A, 40000), (WORLD, 9), 63);
    assert_eq!(
        back,
        icmp_error(
            (port_mac(0), pod_mac(0)),
            WORLD,
            A,
            63,
            unreach,
            &ip(&as_sent)
        )
    );
    // TCP, fragmentation needed from a router, quoting 28 bytes (no TCP
    // checksum in the quote).
    let syn = tcp((pod_mac(0), port_mac(0)), (A, 40001), (WORLD, 8080), 64);
    let (_, out) = run(&s, &mut st, &syn, 0);
    let frag = Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded {
        next_hop_mtu: 1400,
    });
    let err = icmp_error(
        (GW_MAC, UL_MAC_ME),
        router,
        UL_ME,
        64,
        frag.clone(),
        &ip(&out)[..28],
    );
    let (v, back) = run(&s, &mut st, &err, UNDERLAY);
    assert!(matches!(v, Verdict::Tx { port: 0, .. }), "{v:?}");
    let as_sent = tcp((pod_mac(0), port_mac(0)), (A, 40001), (WORLD, 8080), 63);
    assert_eq!(
        back,
        icmp_error(
            (port_mac(0), pod_mac(0)),
            router,
            A,
            63,
            frag,
            &ip(&as_sent)[..28]
        )
    );
    // Time exceeded about a ping, quoting the whole echo request.
    let req = ping((pod_mac(0), port_mac(0)), A, WORLD, 64, 9, false);
    let (_, out) = run(&s, &mut st, &req, 0);
    let ttl = Icmpv4Type::TimeExceeded(TimeExceededCode::TtlExceededInTransit);
    let err = icmp_error(
        (GW_MAC, UL_MAC_ME),
        router,
        UL_ME,
        64,
        ttl.clone(),
        &ip(&out),
    );
    let (v, back) = run(&s, &mut st, &err, UNDERLAY);
    assert!(matches!(v, Verdict::Tx { port: 0, .. }), "{v:?}");
    let as_sent = ping((pod_mac(0), port_mac(0)), A, WORLD, 63, 9, false);
    assert_eq!(
        back,
        icmp_error((port_mac(0), pod_mac(0)), router, A, 63, ttl, &ip(&as_sent))
    );
    // An error quoting a SNAT port nobody holds is `snat-no-entry`.
    let stray = udp((UL_MAC_ME, GW_MAC), (UL_ME, 61999), (WORLD, 9), 63);
    let unreach = Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::Port);
    let err = icmp_error((GW_MAC, UL_MAC_ME), WORLD, UL_ME, 64, unreach, &ip(&stray));
    assert_eq!(
        run(&s, &mut st, &err, UNDERLAY).0,
        Verdict::Drop(DropReason::SnatNoEntry)
    );
}

fn tcp_flags(
    macs: ([u8; 6], [u8; 6]),
    src: ([u8; 4], u16),
    dst: ([u8; 4], u16),
    flags: &str,
) -> Vec<u8> {
    let mut out = Vec::new();
    let mut b = PacketBuilder::ethernet2(macs.0, macs.1)
        .ipv4(src.0, dst.0, 64)
        .tcp(src.1, dst.1, 1000, 64240);
    for f in flags.chars() {
        b = match f {
            'S' => b.syn(),
            'A' => b.ack(1),
            'F' => b.fin(),
            'R' => b.rst(),
            _ => unreachable!(),
        };
    }
    b.write(&mut out, &[]).unwrap();
    out
}

/// SNAT mappings end with their TCP connection: after RST they live
/// `tcp_close` (10 s), after FIN/FIN `tcp_time_wait` (120 s), instead of
/// the established idle timeout (6 h); so a worker's full share frees up
/// once its connections closed, while open ones still hold theirs.
#[test]
fn snat_ports_are_freed_when_the_connection_closes() {
    const SEC: u64 = 1_000_000_000;
    let s = snap();
    let t = Timeouts::default();
    // 64 workers: this one's share is 71 ports.
    let mut st = WorkerState::new().with_snat_slice(0, 64);
    let pod = (pod_mac(0), port_mac(0));
    let world = (GW_MAC, UL_MAC_ME);
    // Opens a connection from `sport`; returns its SNAT port, or None
    // when the share is exhausted.
    let open = |st: &mut WorkerState, sport: u16| -> Option<u16> {
        match run(&s, st, &tcp_flags(pod, (A, sport), (WORLD, 8080), "S"), 0) {
            (Verdict::Tx { .. }, out) => {
                let p = src_port(&out);
                let sa = tcp_flags(world, (WORLD, 8080), (UL_ME, p), "SA");
                assert!(matches!(run(&s, st, &sa, UNDERLAY).0, Verdict::Tx { .. }));
                let a = tcp_flags(pod, (A, sport), (WORLD, 8080), "A");
                assert!(matches!(run(&s, st, &a, 0).0, Verdict::Tx { .. }));
                Some(p)
            }
            (Verdict::Drop(DropReason::SnatPortsExhausted), _) => None,
            (v, _) => panic!("{v:?}"),
        }
    };
    let mut held = Vec::new();
    let mut sport = 20000;
    while let Some(p) = open(&mut st, sport) {
        held.push((sport, p));
        sport += 1;
    }
    assert!(held.len() > 40, "{}", held.len());
    // Established connections hold their ports for hours.
    st.set_now(t.tcp_close + SEC);
    assert_eq!(open(&mut st, 30000), None);
    // Half of them are reset by the pod, the other half closed with
    // FIN/FIN (world first, then the pod) and the last ACK.
    st.set_now(2 * SEC);
    let (reset, fin) = held.split_at(held.len() / 2);
    for &(sp, _) in reset {
        let r = tcp_flags(pod, (A, sp), (WORLD, 8080), "RA");
        assert!(matches!(run(&s, &mut st, &r, 0).0, Verdict::Tx { .. }));
    }
    for &(sp, p) in fin {
        let f = tcp_flags(world, (WORLD, 8080), (UL_ME, p), "FA");
        assert!(matches!(
            run(&s, &mut st, &f, UNDERLAY).0,
            Verdict::Tx { .. }
        ));
        let f = tcp_flags(pod, (A, sp), (WORLD, 8080), "FA");
        assert!(matches!(run(&s, &mut st, &f, 0).0, Verdict::Tx { .. }));
        let a = tcp_flags(world, (WORLD, 8080), (UL_ME, p), "A");
        assert!(matches!(
            run(&s, &mut st, &a, UNDERLAY).0,
            Verdict::Tx { .. }
        ));
    }
    // New connections until the share is full again: they get ports of
    // the closed connections only. A new flow probes 64 of the share's 71
    // ports, so the last few free ones may be out of its reach.
    let refill = |st: &mut WorkerState, from: u16| -> Vec<u16> {
        (from..).map_while(|sp| open(st, sp)).collect()
    };
    // 10 s after the RSTs: the reset connections' ports are free again,
    // the FIN-closed ones are still in TIME_WAIT.
    st.set_now(2 * SEC + t.tcp_close + SEC);
    let got = refill(&mut st, 31000);
    assert!(
        got.len() + 7 >= reset.len(),
        "{} of {}",
        got.len(),
        reset.len()
    );
    assert!(
        got.iter().all(|p| reset.iter().any(|&(_, q)| q == *p)),
        "{got:?}"
    );
    // After TIME_WAIT (120 s) the FIN-closed ones are free too.
    st.set_now(2 * SEC + t.tcp_time_wait + SEC);
    let got = refill(&mut st, 33000);
    assert!(got.len() + 7 >= fin.len(), "{} of {}", got.len(), fin.len());
    assert!(
        got.iter().all(|p| fin.iter().any(|&(_, q)| q == *p)),
        "{got:?}"
    );
}

/// An Ethernet + IPv4 frame cut into fragments of at most `mtu` IP bytes
/// (IPv4 identification `ident`), as a host's IP layer cuts it.
pub fn fragment(frame: &[u8], mtu: usize, ident: u16) -> Vec<Vec<u8>> {
    use etherparse::{IpFragOffset, Ipv4Header};
    let (h, payload) = Ipv4Header::from_slice(&frame[14..]).unwrap();
    let chunk = (mtu - h.header_len()) / 8 * 8;
    let mut out = Vec::new();
    let mut at = 0;
    while at < payload.len() {
        let end = (at + chunk).min(payload.len());
        let mut f = h.clone();
        f.identification = ident;
        f.dont_fragment = false;
        f.more_fragments = end < payload.len();
        f.fragment_offset = IpFragOffset::try_new((at / 8) as u16).unwrap();
        f.set_payload_len(end - at).unwrap();
        f.header_checksum = f.calc_header_checksum();
        let mut v = frame[..14].to_vec();
        v.extend_from_slice(&f.to_bytes());
        v.extend_from_slice(&payload[at..end]);
        out.push(v);
        at = end;
    }
    out
}

/// Reassembles IPv4 fragments (checking each one's header checksum and
/// addresses): the datagram's IP payload.
fn reassemble(frags: &[Vec<u8>], src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    use etherparse::Ipv4Header;
    let mut data = Vec::new();
    for f in frags {
        let (h, payload) = Ipv4Header::from_slice(&f[14..]).unwrap();
        assert_eq!(h.calc_header_checksum(), h.header_checksum);
        assert_eq!((h.source, h.destination), (src, dst));
        let off = usize::from(h.fragment_offset.value()) * 8;
        data.resize(data.len().max(off + payload.len()), 0);
        data[off..off + payload.len()].copy_from_slice(payload);
    }
    data
}

fn big_udp(macs: ([u8; 6], [u8; 6]), src: ([u8; 4], u16), dst: ([u8; 4], u16), ttl: u8) -> Vec<u8> {
    let data: Vec<u8> = (0..3000u32).map(|i| (i * 7) as u8).collect();
    let mut out = Vec::new();
    PacketBuilder::ethernet2(macs.0, macs.1)
        .ipv4(src.0, dst.0, ttl)
        .udp(src.1, dst.1)
        .write(&mut out, &data)
        .unwrap();
    out
}

/// A UDP datagram larger than the pod's MTU leaves in fragments: the first
/// one is SNATed as any datagram (address, port, UDP checksum over the
/// whole datagram), the later ones follow it (address only); reassembled,
/// the world gets exactly etherparse's datagram from the node's address
/// and port. A later fragment whose first was never seen stays dropped.
#[test]
fn fragments_to_the_world_follow_their_first() {
    let s = snap();
    let mut st = WorkerState::new();
    let whole = big_udp((pod_mac(0), port_mac(0)), (A, 40000), (WORLD, 9), 64);
    let frags = fragment(&whole, 1450, 0x1234);
    assert_eq!(frags.len(), 3);
    let mut out = Vec::new();
    for f in &frags {
        let (v, o) = run(&s, &mut st, f, 0);
        assert!(matches!(v, Verdict::Tx { port: UNDERLAY, .. }), "{v:?}");
        assert_eq!(&o[..12], &[GW_MAC, UL_MAC_ME].concat()[..]);
        out.push(o);
    }
    let p = u16::from_be_bytes([out[0][34], out[0][35]]);
    assert!((SNAT_PORT_FIRST..=SNAT_PORT_LAST).contains(&p), "{p}");
    let expect = big_udp((UL_MAC_ME, GW_MAC), (UL_ME, p), (WORLD, 9), 63);
    assert_eq!(reassemble(&out, UL_ME, WORLD), expect[34..].to_vec());
    // The next datagram of the flow keeps the port; one whose first
    // fragment never came is refused.
    let again = fragment(&whole, 1450, 0x1235);
    let (_, o) = run(&s, &mut st, &again[0], 0);
    assert_eq!(u16::from_be_bytes([o[34], o[35]]), p);
    let orphan = fragment(&whole, 1450, 0x1236);
    assert_eq!(
        run(&s, &mut st, &orphan[1], 0).0,
        Verdict::Drop(DropReason::FragmentNoFirst)
    );
}

/// An ICMP error from the world about a node-port flow served on this
/// node (here a router's Fragmentation Needed about the backend's reply)
/// reaches the backend quoting the reply as the backend sent it.
#[test]
fn icmp_errors_about_node_port_flows_reach_the_local_backend() {
    use etherparse::{icmpv4::DestUnreachableHeader, Icmpv4Type};
    let s = np_snap();
    let mut st = WorkerState::new();
    let client = [198, 51, 100, 1];
    let router = [203, 0, 113, 9];
    let ty = Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded {
        next_hop_mtu: 1400,
    });
    let mut checked = 0;
    for sport in 40000..40040u16 {
        let f = tcp((GW_MAC, UL_MAC_ME), (client, sport), (UL_ME, 30080), 64);
        let (Verdict::Tx { port: 0, .. }, _) = run(&s, &mut st, &f, UNDERLAY) else {
            continue;
        };
        let r = tcp((pod_mac(0), port_mac(0)), (A, 80), (client, sport), 64);
        let (_, out) = run(&s, &mut st, &r, 0);
        let err = icmp_error(
            (GW_MAC, UL_MAC_ME),
            router,
            UL_ME,
            64,
            ty.clone(),
            &out[14..],
        );
        let (v, back) = run(&s, &mut st, &err, UNDERLAY);
        assert!(matches!(v, Verdict::Tx { port: 0, .. }), "{v:?}");
        let as_sent = tcp((pod_mac(0), port_mac(0)), (A, 80), (client, sport), 63);
        assert_eq!(
            back,
            icmp_error(
                (port_mac(0), pod_mac(0)),
                router,
                A,
                63,
                ty.clone(),
                &as_sent[14..]
            )
        );
        checked += 1;
    }
    assert!(checked > 5, "{checked}");
    // About a node-port flow nobody opened.
    let stray = tcp((UL_MAC_ME, GW_MAC), (UL_ME, 30080), (client, 1), 63);
    let err = icmp_error((GW_MAC, UL_MAC_ME), router, UL_ME, 64, ty, &stray[14..]);
    assert_eq!(
        run(&s, &mut st, &err, UNDERLAY).0,
        Verdict::Drop(DropReason::SnatNoEntry)
    );
}

// ---- IPv6 to the world: SNAT66 on the node's IPv6 underlay address ----

const A6: [u8; 16] = [0xfd, 0, 0, 0x10, 0x02, 0x44, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2];
const B6: [u8; 16] = [0xfd, 0, 0, 0x10, 0x02, 0x44, 0, 1, 0, 0, 0, 0, 0, 0, 0, 3];
/// `2001:db8:5::1`, the world host.
const WORLD6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
/// `fd00:172:30::1`, the node's IPv6 underlay address.
const UL6_ME: [u8; 16] = [0xfd, 0, 0x01, 0x72, 0, 0x30, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

/// `snap()` with dual-stack pods and, with `v6`, the node's IPv6 underlay
/// address on the uplink.
fn snap6(v6: bool) -> Snapshot {
    let mut spec = snap().spec.clone();
    spec.endpoints[0].ipv6 = Some(A6.into());
    spec.endpoints[1].ipv6 = Some(B6.into());
    if v6 {
        let u = spec.uplink.as_mut().unwrap();
        u.node_ipv6 = Some(UL6_ME.into());
        u.gateway_ipv6 = Some("fd00:172:30::fe".parse().unwrap());
        u.cluster_cidrs.push(("fd00:172:30::".parse().unwrap(), 64));
    }
    Snapshot::build(spec).unwrap()
}

fn l4_6(
    macs: ([u8; 6], [u8; 6]),
    src: ([u8; 16], u16),
    dst: ([u8; 16], u16),
    hops: u8,
    is_tcp: bool,
) -> Vec<u8> {
    let mut out = Vec::new();
    let b = PacketBuilder::ethernet2(macs.0, macs.1).ipv6(src.0, dst.0, hops);
    if is_tcp {
        b.tcp(src.1, dst.1, 1000, 64240)
            .syn()
            .write(&mut out, &[])
            .unwrap();
    } else {
        b.udp(src.1, dst.1).write(&mut out, b"hello").unwrap();
    }
    out
}

fn ping6(
    macs: ([u8; 6], [u8; 6]),
    src: [u8; 16],
    dst: [u8; 16],
    hops: u8,
    id: u16,
    reply: bool,
) -> Vec<u8> {
    let mut out = Vec::new();
    let b = PacketBuilder::ethernet2(macs.0, macs.1).ipv6(src, dst, hops);
    let b = if reply {
        b.icmpv6_echo_reply(id, 3)
    } else {
        b.icmpv6_echo_request(id, 3)
    };
    b.write(&mut out, b"ping6 payload").unwrap();
    out
}

fn echo6_ident(frame: &[u8]) -> u16 {
    match SlicedPacket::from_ethernet(frame).unwrap().transport {
        Some(TransportSlice::Icmpv6(i)) => u16::from_be_bytes([i.bytes5to8()[0], i.bytes5to8()[1]]),
        other => panic!("not ICMPv6: {other:?}"),
    }
}

/// TCP and UDP from a pod to an IPv6 world address leave with the node's
/// IPv6 underlay address and a SNAT port; the reply gets the pod's address
/// and port back. Byte for byte etherparse's frames (checksums from
/// scratch, hop limit − 1).
#[test]
fn pod_to_ipv6_world_is_snated_and_the_reply_restored() {
    let s = snap6(true);
    let mut st = WorkerState::new();
    for is_tcp in [true, false] {
        let f = l4_6(
            (pod_mac(0), port_mac(0)),
            (A6, 40000),
            (WORLD6, 8080),
            64,
            is_tcp,
        );
        let (v, out) = run(&s, &mut st, &f, 0);
        assert!(
            matches!(v, Verdict::Tx { port: UNDERLAY, .. }),
            "tcp={is_tcp}: {v:?}"
        );
        let p = src_port(&out);
        assert!((SNAT_PORT_FIRST..=SNAT_PORT_LAST).contains(&p), "{p}");
        assert_eq!(
            out,
            l4_6((UL_MAC_ME, GW_MAC), (UL6_ME, p), (WORLD6, 8080), 63, is_tcp),
            "tcp={is_tcp}"
        );
        assert_eq!(src_port(&run(&s, &mut st, &f, 0).1), p);
        // Pod b, the same source port: another node port.
        let fb = l4_6(
            (pod_mac(1), port_mac(1)),
            (B6, 40000),
            (WORLD6, 8080),
            64,
            is_tcp,
        );
        let pb = src_port(&run(&s, &mut st, &fb, 1).1);
        assert_ne!(pb, p);
        let reply = l4_6((GW_MAC, UL_MAC_ME), (WORLD6, 8080), (UL6_ME, p), 64, is_tcp);
        let (v, back) = run(&s, &mut st, &reply, UNDERLAY);
        assert!(
            matches!(v, Verdict::Tx { port: 0, .. }),
            "tcp={is_tcp}: {v:?}"
        );
        assert_eq!(
            back,
            l4_6(
                (port_mac(0), pod_mac(0)),
                (WORLD6, 8080),
                (A6, 40000),
                63,
                is_tcp
            ),
            "tcp={is_tcp}"
        );
        let reply_b = l4_6(
            (GW_MAC, UL_MAC_ME),
            (WORLD6, 8080),
            (UL6_ME, pb),
            64,
            is_tcp,
        );
        let (v, back) = run(&s, &mut st, &reply_b, UNDERLAY);
        assert!(matches!(v, Verdict::Tx { port: 1, .. }), "{v:?}");
        assert_eq!(
            back,
            l4_6(
                (port_mac(1), pod_mac(1)),
                (WORLD6, 8080),
                (B6, 40000),
                63,
                is_tcp
            )
        );
    }
    // IPv4 and IPv6 flows with the same ports keep apart (the NAT table's
    // keys carry the family).
    let f4 = udp((pod_mac(0), port_mac(0)), (A, 40000), (WORLD, 8080), 64);
    let (v, out4) = run(&s, &mut st, &f4, 0);
    assert!(matches!(v, Verdict::Tx { port: UNDERLAY, .. }), "{v:?}");
    assert_eq!(
        out4,
        udp(
            (UL_MAC_ME, GW_MAC),
            (UL_ME, src_port(&out4)),
            (WORLD, 8080),
            63
        )
    );
}

/// ICMPv6 echo is SNATed by identifier; the reply comes back translated
/// (the ICMPv6 checksum covers the addresses: byte for byte etherparse's).
#[test]
fn ping6_to_the_world_is_snated_by_identifier() {
    let s = snap6(true);
    let mut st = WorkerState::new();
    let req = ping6((pod_mac(0), port_mac(0)), A6, WORLD6, 64, 7, false);
    let (v, out) = run(&s, &mut st, &req, 0);
    assert!(matches!(v, Verdict::Tx { port: UNDERLAY, .. }), "{v:?}");
    let id = echo6_ident(&out);
    assert!((SNAT_PORT_FIRST..=SNAT_PORT_LAST).contains(&id), "{id}");
    assert_eq!(
        out,
        ping6((UL_MAC_ME, GW_MAC), UL6_ME, WORLD6, 63, id, false)
    );
    let req_b = ping6((pod_mac(1), port_mac(1)), B6, WORLD6, 64, 7, false);
    let id_b = echo6_ident(&run(&s, &mut st, &req_b, 1).1);
    assert_ne!(id_b, id);
    let reply = ping6((GW_MAC, UL_MAC_ME), WORLD6, UL6_ME, 64, id, true);
    let (v, back) = run(&s, &mut st, &reply, UNDERLAY);
    assert!(matches!(v, Verdict::Tx { port: 0, .. }), "{v:?}");
    assert_eq!(
        back,
        ping6((port_mac(0), pod_mac(0)), WORLD6, A6, 63, 7, true)
    );
    let reply_b = ping6((GW_MAC, UL_MAC_ME), WORLD6, UL6_ME, 64, id_b, true);
    let (v, back) = run(&s, &mut st, &reply_b, UNDERLAY);
    assert!(matches!(v, Verdict::Tx { port: 1, .. }), "{v:?}");
    assert_eq!(
        back,
        ping6((port_mac(1), pod_mac(1)), WORLD6, B6, 63, 7, true)
    );
    let stray = ping6((GW_MAC, UL_MAC_ME), WORLD6, UL6_ME, 64, 61999, true);
    assert_eq!(
        run(&s, &mut st, &stray, UNDERLAY).0,
        Verdict::Drop(DropReason::SnatNoEntry)
    );
}

/// What stays refused: without an IPv6 underlay address IPv6 to the world
/// is `no-route`; an IPv6 cluster address that does not route never leaves;
/// a reply to a SNAT port nobody holds is `snat-no-entry`; other ICMPv6
/// toward the world is `snat-unsupported`.
#[test]
fn drops_of_the_ipv6_uplink() {
    let mut st = WorkerState::new();
    let f = l4_6((pod_mac(0), port_mac(0)), (A6, 1), (WORLD6, 53), 64, false);
    assert_eq!(
        run(&snap6(false), &mut st, &f, 0).0,
        Verdict::Drop(DropReason::NoRoute)
    );
    let s = snap6(true);
    let cluster = "fd00:99::9".parse::<std::net::Ipv6Addr>().unwrap().octets();
    let f = l4_6((pod_mac(0), port_mac(0)), (A6, 1), (cluster, 53), 64, false);
    assert_eq!(
        run(&s, &mut st, &f, 0).0,
        Verdict::Drop(DropReason::NoRoute)
    );
    let f = l4_6(
        (GW_MAC, UL_MAC_ME),
        (WORLD6, 53),
        (UL6_ME, 61234),
        64,
        false,
    );
    assert_eq!(
        run(&s, &mut st, &f, UNDERLAY).0,
        Verdict::Drop(DropReason::SnatNoEntry)
    );
    let mut other = Vec::new();
    PacketBuilder::ethernet2(pod_mac(0), port_mac(0))
        .ipv6(A6, WORLD6, 64)
        .icmpv6_raw(200, 0, [0; 4])
        .write(&mut other, &[0; 8])
        .unwrap();
    assert_eq!(
        run(&s, &mut st, &other, 0).0,
        Verdict::Drop(DropReason::SnatUnsupported)
    );
}

/// NodePort on the node's IPv6 underlay address: a dual-stack Service
/// (IPv4 and IPv6 frontends share nodePort 30080) reaches its local IPv6
/// backend a with the client's address kept, a's reply leaves from
/// `[node]:30080`; the IPv4 frontend still answers on the same number; a
/// Local frontend without a local IPv6 backend is a counted drop.
#[test]
fn node_port_on_ipv6() {
    use weir_dataplane::snapshot::{ServiceBackend, ServiceFrontend};
    let mut spec = snap6(true).spec.clone();
    let b = |pod: &str, ip: std::net::IpAddr| ServiceBackend {
        pod: pod.into(),
        ip,
        port: 80,
        active: true,
    };
    let f = |ip: std::net::IpAddr, np: u16, local: bool, backends| ServiceFrontend {
        service: format!("default/np{np}"),
        port_name: None,
        ip,
        proto: 6,
        port: 80,
        backends,
        affinity_timeout_s: None,
        node_port: Some(np),
        external_local: local,
        internal_local: false,
        external: false,
    };
    let v6 = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
    spec.services = vec![
        f([10, 96, 0, 1].into(), 30080, false, vec![b("a", A.into())]),
        f(v6("fd00:96::1"), 30080, false, vec![b("a", A6.into())]),
        f(
            v6("fd00:96::2"),
            30081,
            true,
            vec![b("r", v6("fd00:99::9"))],
        ),
    ];
    let s = Snapshot::build(spec).unwrap();
    let mut st = WorkerState::new();
    let client = WORLD6;
    let f = l4_6(
        (GW_MAC, UL_MAC_ME),
        (client, 40000),
        (UL6_ME, 30080),
        64,
        true,
    );
    let (v, out) = run(&s, &mut st, &f, UNDERLAY);
    assert!(matches!(v, Verdict::Tx { port: 0, .. }), "{v:?}");
    assert_eq!(
        out,
        l4_6(
            (port_mac(0), pod_mac(0)),
            (client, 40000),
            (A6, 80),
            63,
            true
        )
    );
    let r = l4_6(
        (pod_mac(0), port_mac(0)),
        (A6, 80),
        (client, 40000),
        64,
        true,
    );
    let (v, back) = run(&s, &mut st, &r, 0);
    assert!(matches!(v, Verdict::Tx { port: UNDERLAY, .. }), "{v:?}");
    assert_eq!(
        back,
        l4_6(
            (UL_MAC_ME, GW_MAC),
            (UL6_ME, 30080),
            (client, 40000),
            63,
            true
        )
    );
    // The IPv4 frontend on the same number.
    let f4 = tcp((GW_MAC, UL_MAC_ME), (WORLD, 40000), (UL_ME, 30080), 64);
    let (v, out) = run(&s, &mut st, &f4, UNDERLAY);
    assert!(matches!(v, Verdict::Tx { port: 0, .. }), "{v:?}");
    assert_eq!(
        out,
        tcp((port_mac(0), pod_mac(0)), (WORLD, 40000), (A, 80), 63)
    );
    // Local without a local IPv6 backend; a node port no IPv6 frontend has.
    let f = l4_6(
        (GW_MAC, UL_MAC_ME),
        (client, 1234),
        (UL6_ME, 30081),
        64,
        true,
    );
    assert_eq!(
        run(&s, &mut st, &f, UNDERLAY).0,
        Verdict::Drop(DropReason::NodePortNoLocalEndpoint)
    );
    let f = l4_6(
        (GW_MAC, UL_MAC_ME),
        (client, 1234),
        (UL6_ME, 30999),
        64,
        true,
    );
    assert_eq!(
        run(&s, &mut st, &f, UNDERLAY).0,
        Verdict::Drop(DropReason::NoRoute)
    );
}

/// An ICMPv6 error from `src` to `dst` quoting `quote` (an IPv6 packet).
fn icmp6_error(
    macs: ([u8; 6], [u8; 6]),
    src: [u8; 16],
    dst: [u8; 16],
    hops: u8,
    ty: etherparse::Icmpv6Type,
    quote: &[u8],
) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(macs.0, macs.1)
        .ipv6(src, dst, hops)
        .icmpv6(ty)
        .write(&mut out, quote)
        .unwrap();
    out
}

/// ICMPv6 errors from the world about SNAT66 flows (port unreachable from
/// the server, Packet Too Big and Time Exceeded from a router) reach the
/// pod translated: byte for byte the error its own packet would have drawn
/// (outer destination, quoted source address and port or identifier, the
/// quoted L4 checksum and the ICMPv6 checksum over the new pseudo-header).
/// A quote of a port nobody holds is `snat-no-entry`.
#[test]
fn icmpv6_errors_about_snat66_flows_reach_the_pod_translated() {
    use etherparse::icmpv6::{DestUnreachableCode, TimeExceededCode};
    use etherparse::Icmpv6Type;
    let s = snap6(true);
    let mut st = WorkerState::new();
    let ip = |f: &[u8]| f[14..].to_vec();
    // `2001:db8:7::9`, a router on the way.
    let router = [0x20, 0x01, 0x0d, 0xb8, 0, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9];
    let pod = (pod_mac(0), port_mac(0));
    let cases = [
        // UDP to a closed port: port unreachable, the whole datagram.
        (
            l4_6(pod, (A6, 40000), (WORLD6, 9), 64, false),
            WORLD6,
            Icmpv6Type::DestinationUnreachable(DestUnreachableCode::Port),
            None,
        ),
        // The same quoted short (48 bytes: the UDP header, its checksum).
        (
            l4_6(pod, (A6, 40003), (WORLD6, 9), 64, false),
            WORLD6,
            Icmpv6Type::DestinationUnreachable(DestUnreachableCode::Port),
            Some(48),
        ),
        // A TCP SYN too big for a router's next hop.
        (
            l4_6(pod, (A6, 40001), (WORLD6, 8080), 64, true),
            router,
            Icmpv6Type::PacketTooBig { mtu: 1280 },
            None,
        ),
        // A ping whose hop limit ran out.
        (
            ping6(pod, A6, WORLD6, 64, 9, false),
            router,
            Icmpv6Type::TimeExceeded(TimeExceededCode::HopLimitExceeded),
            None,
        ),
    ];
    for (sent, from, ty, cut) in cases {
        let (v, out) = run(&s, &mut st, &sent, 0);
        assert!(matches!(v, Verdict::Tx { port: UNDERLAY, .. }), "{v:?}");
        let cut = cut.unwrap_or(out.len() - 14);
        let err = icmp6_error((GW_MAC, UL_MAC_ME), from, UL6_ME, 64, ty, &ip(&out)[..cut]);
        let (v, back) = run(&s, &mut st, &err, UNDERLAY);
        assert!(matches!(v, Verdict::Tx { port: 0, .. }), "{ty:?}: {v:?}");
        // The pod's packet as it left the pod (hop limit as the world saw it).
        let mut as_sent = sent.clone();
        as_sent[14 + 7] -= 1;
        assert_eq!(
            back,
            icmp6_error(
                (port_mac(0), pod_mac(0)),
                from,
                A6,
                63,
                ty,
                &ip(&as_sent)[..cut]
            )
        );
    }
    // An error quoting a SNAT port nobody holds.
    let stray = l4_6((UL_MAC_ME, GW_MAC), (UL6_ME, 61999), (WORLD6, 9), 63, false);
    let err = icmp6_error(
        (GW_MAC, UL_MAC_ME),
        WORLD6,
        UL6_ME,
        64,
        Icmpv6Type::DestinationUnreachable(DestUnreachableCode::Port),
        &ip(&stray),
    );
    assert_eq!(
        run(&s, &mut st, &err, UNDERLAY).0,
        Verdict::Drop(DropReason::SnatNoEntry)
    );
}

/// `snap6(true)` with a dual-stack NodePort Service on 30080 (TCP, IPv4
/// and IPv6 frontends) whose only backend is pod a (port 80).
fn np6_snap() -> Snapshot {
    use weir_dataplane::snapshot::{ServiceBackend, ServiceFrontend};
    let mut spec = snap6(true).spec.clone();
    let f = |ip: std::net::IpAddr, backend: std::net::IpAddr| ServiceFrontend {
        service: "default/np".into(),
        port_name: None,
        ip,
        proto: 6,
        port: 80,
        backends: vec![ServiceBackend {
            pod: "a".into(),
            ip: backend,
            port: 80,
            active: true,
        }],
        affinity_timeout_s: None,
        node_port: Some(30080),
        external_local: false,
        internal_local: false,
        external: false,
    };
    spec.services = vec![
        f([10, 96, 0, 1].into(), A.into()),
        f("fd00:96::1".parse().unwrap(), A6.into()),
    ];
    Snapshot::build(spec).unwrap()
}

/// A pod reaching a node port at its own node's IPv6 underlay address
/// (kube-proxy's "hairpin to node IP", as for IPv4): load balanced as the
/// Service's IPv6 frontend (DNAT to a, the client's address kept), the
/// reply restored to come from `[node]:30080`; byte for byte etherparse's.
/// Another port of that address does not route.
#[test]
fn pods_reach_a_node_port_at_the_nodes_ipv6_address() {
    let s = np6_snap();
    let mut st = WorkerState::new();
    let syn = l4_6(
        (pod_mac(1), port_mac(1)),
        (B6, 41000),
        (UL6_ME, 30080),
        64,
        true,
    );
    let (v, out) = run(&s, &mut st, &syn, 1);
    assert!(matches!(v, Verdict::Tx { port: 0, .. }), "{v:?}");
    assert_eq!(
        out,
        l4_6((port_mac(0), pod_mac(0)), (B6, 41000), (A6, 80), 63, true)
    );
    let reply = l4_6((pod_mac(0), port_mac(0)), (A6, 80), (B6, 41000), 64, true);
    let (v, back) = run(&s, &mut st, &reply, 0);
    assert!(matches!(v, Verdict::Tx { port: 1, .. }), "{v:?}");
    assert_eq!(
        back,
        l4_6(
            (port_mac(1), pod_mac(1)),
            (UL6_ME, 30080),
            (B6, 41000),
            63,
            true
        )
    );
    // UDP on the same number has no frontend; another port is no
    // Service's: neither is load balanced.
    for (port, tcp) in [(30080, false), (22, true)] {
        let f = l4_6(
            (pod_mac(1), port_mac(1)),
            (B6, 41001),
            (UL6_ME, port),
            64,
            tcp,
        );
        assert_eq!(
            run(&s, &mut st, &f, 1).0,
            Verdict::Drop(DropReason::NoRoute)
        );
    }
}

/// An ICMPv6 error from the world about an IPv6 node-port flow served on
/// this node (a router's Packet Too Big about the backend's reply) reaches
/// the backend quoting the reply as the backend sent it.
#[test]
fn icmpv6_errors_about_node_port_flows_reach_the_local_backend() {
    let s = np6_snap();
    let mut st = WorkerState::new();
    let router = [0x20, 0x01, 0x0d, 0xb8, 0, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9];
    let f = l4_6(
        (GW_MAC, UL_MAC_ME),
        (WORLD6, 40000),
        (UL6_ME, 30080),
        64,
        true,
    );
    assert!(matches!(
        run(&s, &mut st, &f, UNDERLAY).0,
        Verdict::Tx { port: 0, .. }
    ));
    let r = l4_6(
        (pod_mac(0), port_mac(0)),
        (A6, 80),
        (WORLD6, 40000),
        64,
        true,
    );
    let (v, out) = run(&s, &mut st, &r, 0);
    assert!(matches!(v, Verdict::Tx { port: UNDERLAY, .. }), "{v:?}");
    let ptb = etherparse::Icmpv6Type::PacketTooBig { mtu: 1280 };
    let err = icmp6_error((GW_MAC, UL_MAC_ME), router, UL6_ME, 64, ptb, &out[14..]);
    let (v, back) = run(&s, &mut st, &err, UNDERLAY);
    assert!(matches!(v, Verdict::Tx { port: 0, .. }), "{v:?}");
    let as_sent = l4_6(
        (pod_mac(0), port_mac(0)),
        (A6, 80),
        (WORLD6, 40000),
        63,
        true,
    );
    assert_eq!(
        back,
        icmp6_error(
            (port_mac(0), pod_mac(0)),
            router,
            A6,
            63,
            ptb,
            &as_sent[14..]
        )
    );
}

/// An Ethernet + IPv6 frame (no extension header) cut into fragments of
/// `chunk` payload bytes (a multiple of 8) with a fragment header of
/// identification `id`, as a host's IPv6 layer cuts it.
fn fragment6(whole: &[u8], chunk: usize, id: u32) -> Vec<Vec<u8>> {
    let nh = whole[20];
    let payload = &whole[54..];
    let mut out = Vec::new();
    let mut at = 0;
    while at < payload.len() {
        let end = (at + chunk).min(payload.len());
        let mut f = whole[..54].to_vec();
        f[20] = 44;
        let offm = (at as u16) | u16::from(end < payload.len());
        f.extend_from_slice(&[nh, 0]);
        f.extend_from_slice(&offm.to_be_bytes());
        f.extend_from_slice(&id.to_be_bytes());
        f.extend_from_slice(&payload[at..end]);
        f[18..20].copy_from_slice(&((8 + end - at) as u16).to_be_bytes());
        out.push(f);
        at = end;
    }
    out
}

/// Reassembles IPv6 fragments (checking each one's addresses and
/// identification): the datagram's IPv6 payload.
fn reassemble6(frags: &[Vec<u8>], src: [u8; 16], dst: [u8; 16], id: u32) -> Vec<u8> {
    let mut data = Vec::new();
    for f in frags {
        assert_eq!((&f[22..38], &f[38..54]), (&src[..], &dst[..]));
        assert_eq!(f[20], 44);
        assert_eq!(u32::from_be_bytes([f[58], f[59], f[60], f[61]]), id);
        let off = usize::from(u16::from_be_bytes([f[56], f[57]]) & !7);
        let payload = &f[62..];
        data.resize(data.len().max(off + payload.len()), 0);
        data[off..off + payload.len()].copy_from_slice(payload);
    }
    data
}

fn big_udp6(
    macs: ([u8; 6], [u8; 6]),
    src: ([u8; 16], u16),
    dst: ([u8; 16], u16),
    hops: u8,
) -> Vec<u8> {
    let data: Vec<u8> = (0..3000u32).map(|i| (i * 7) as u8).collect();
    let mut out = Vec::new();
    PacketBuilder::ethernet2(macs.0, macs.1)
        .ipv6(src.0, dst.0, hops)
        .udp(src.1, dst.1)
        .write(&mut out, &data)
        .unwrap();
    out
}

/// IPv6 fragments toward the world (SNAT66) follow their first, as IPv4's:
/// the first fragment is translated as any datagram (address, port, UDP
/// checksum over the whole datagram), the later ones get the node's
/// address only; reassembled, the world gets exactly etherparse's datagram
/// from the node's IPv6 address and port. An orphan later fragment stays
/// `fragment-no-first`.
#[test]
fn ipv6_fragments_to_the_world_follow_their_first() {
    let s = snap6(true);
    let mut st = WorkerState::new();
    let whole = big_udp6((pod_mac(0), port_mac(0)), (A6, 40000), (WORLD6, 9), 64);
    let frags = fragment6(&whole, 1392, 0x0102_0304);
    assert_eq!(frags.len(), 3);
    let mut out = Vec::new();
    for f in &frags {
        let (v, o) = run(&s, &mut st, f, 0);
        assert!(matches!(v, Verdict::Tx { port: UNDERLAY, .. }), "{v:?}");
        assert_eq!(&o[..12], &[GW_MAC, UL_MAC_ME].concat()[..]);
        assert_eq!(o[21], 63, "hop limit − 1");
        out.push(o);
    }
    let p = u16::from_be_bytes([out[0][62], out[0][63]]);
    assert!((SNAT_PORT_FIRST..=SNAT_PORT_LAST).contains(&p), "{p}");
    let expect = big_udp6((UL_MAC_ME, GW_MAC), (UL6_ME, p), (WORLD6, 9), 63);
    assert_eq!(
        reassemble6(&out, UL6_ME, WORLD6, 0x0102_0304),
        expect[54..].to_vec()
    );
    let orphan = fragment6(&whole, 1392, 0x0102_0305);
    assert_eq!(
        run(&s, &mut st, &orphan[1], 0).0,
        Verdict::Drop(DropReason::FragmentNoFirst)
    );
}

/// Non-masqueraded IPv6 destinations (docs/egress.md): the pod's own IPv6
/// address stays the source; the reply, routed by the world to the node's
/// IPv6 pod CIDR, is delivered as sent (MACs and hop limit only); a
/// masqueraded world address cannot reach a pod's own address
/// (`no-route`), nor can anything without an IPv6 non-masqueraded entry.
#[test]
fn ipv6_non_masquerade_keeps_the_pod_source() {
    // `2001:db8:5::2`.
    const DIRECT6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
    let with = |non_masq: bool| {
        let mut spec = snap6(true).spec.clone();
        let u = spec.uplink.as_mut().unwrap();
        if non_masq {
            u.non_masquerade.push((DIRECT6.into(), 128));
        }
        u.pod_cidr_v6 = Some(("fd00:10:244:1::".parse().unwrap(), 64));
        Snapshot::build(spec).unwrap()
    };
    let s = with(true);
    let mut st = WorkerState::new();
    let f = l4_6(
        (pod_mac(1), port_mac(1)),
        (B6, 5000),
        (DIRECT6, 53),
        64,
        false,
    );
    let (v, out) = run(&s, &mut st, &f, 1);
    assert!(matches!(v, Verdict::Tx { port: UNDERLAY, .. }), "{v:?}");
    assert_eq!(
        out,
        l4_6((UL_MAC_ME, GW_MAC), (B6, 5000), (DIRECT6, 53), 63, false)
    );
    let reply = l4_6((GW_MAC, UL_MAC_ME), (DIRECT6, 53), (B6, 5000), 64, false);
    let (v, back) = run(&s, &mut st, &reply, UNDERLAY);
    assert!(matches!(v, Verdict::Tx { port: 1, .. }), "{v:?}");
    assert_eq!(
        back,
        l4_6(
            (port_mac(1), pod_mac(1)),
            (DIRECT6, 53),
            (B6, 5000),
            63,
            false
        )
    );
    // Other IPv6 destinations are still masqueraded.
    let f = l4_6(
        (pod_mac(1), port_mac(1)),
        (B6, 5000),
        (WORLD6, 53),
        64,
        false,
    );
    let (_, out) = run(&s, &mut st, &f, 1);
    assert_eq!(&out[22..38], &UL6_ME[..]);
    // A masqueraded world address cannot reach a pod's own address.
    let stray = l4_6((GW_MAC, UL_MAC_ME), (WORLD6, 53), (B6, 5000), 64, false);
    assert_eq!(
        run(&s, &mut st, &stray, UNDERLAY).0,
        Verdict::Drop(DropReason::NoRoute)
    );
    // Without the entry, the reply is no one's either.
    let s = with(false);
    assert!(s.uplink().unwrap().routed_v6.is_none());
    let mut st = WorkerState::new();
    let (v, _) = run(&s, &mut st, &reply, UNDERLAY);
    assert!(matches!(v, Verdict::Drop(_)), "{v:?}");
}

/// LoadBalancer / externalIPs from the world (docs/services.md): the
/// frontends of `np_snap` served at external address 203.0.113.10 (port
/// 80, Cluster: backends a here and r on node-2) and 203.0.113.11 (port
/// 80, Local: r only), as agent.rs compiles them (no node port).
fn lb_snap() -> Snapshot {
    let mut spec = np_snap().spec.clone();
    let mut ext = Vec::new();
    for (f, last) in spec.services.iter().zip([10u8, 11]) {
        let mut e = f.clone();
        e.ip = [203, 0, 113, last].into();
        e.node_port = None;
        e.external = true;
        ext.push(e);
    }
    spec.services.extend(ext);
    Snapshot::build(spec).unwrap()
}

/// The inner frame of a VXLAN frame the pass sent to node-2.
fn inner_of(frame: &[u8]) -> &[u8] {
    &frame[14 + 20 + 8 + 8..]
}

/// `inner` in VXLAN (GBP) from node-2, as its dataplane sends it.
fn from_node2(inner: &[u8]) -> Vec<u8> {
    let mut t = vec![0x88, 0x00, 0x01, 0x2c, 0, 0, 1, 0];
    t.extend_from_slice(inner);
    let mut out = Vec::new();
    PacketBuilder::ethernet2([0x0a, 0, 172, 30, 0, 2], UL_MAC_ME)
        .ipv4([172, 30, 0, 2], UL_ME, 64)
        .udp(50000, 4789)
        .write(&mut out, &t)
        .unwrap();
    out
}

#[test]
fn external_address_from_the_world_is_load_balanced_like_a_node_port() {
    let s = lb_snap();
    let mut st = WorkerState::new();
    let client = [198, 51, 100, 1];
    let lb = [203, 0, 113, 10];
    let (node_gw, vtep_me, vtep_2) = (
        [10, 1, 0, 1],
        [0x0e, 0, 172, 30, 0, 1],
        [0x0e, 0, 172, 30, 0, 2],
    );
    let (mut local, mut remote) = (0, 0);
    for sport in 40000..40040u16 {
        let f = tcp((GW_MAC, UL_MAC_ME), (client, sport), (lb, 80), 64);
        match run(&s, &mut st, &f, UNDERLAY) {
            // Local backend a: DNAT only, the client's address kept; a's
            // reply leaves the uplink from the external address, not
            // masqueraded.
            (Verdict::Tx { port: 0, .. }, out) => {
                assert_eq!(
                    out,
                    tcp((port_mac(0), pod_mac(0)), (client, sport), (A, 80), 63)
                );
                local += 1;
                let r = tcp((pod_mac(0), port_mac(0)), (A, 80), (client, sport), 64);
                let (v, back) = run(&s, &mut st, &r, 0);
                assert!(matches!(v, Verdict::Tx { port: UNDERLAY, .. }), "{v:?}");
                assert_eq!(
                    back,
                    tcp((UL_MAC_ME, GW_MAC), (lb, 80), (client, sport), 63)
                );
            }
            // Remote backend r: SNAT to this node's pod-CIDR gateway and a
            // SNAT port, through the tunnel; r's reply (through the tunnel)
            // leaves the uplink from the external address to the client.
            (Verdict::Tx { port: UNDERLAY, .. }, out) => {
                let inner = inner_of(&out);
                let snat = src_port(inner);
                assert!((SNAT_PORT_FIRST..=SNAT_PORT_LAST).contains(&snat));
                assert_eq!(
                    inner,
                    tcp((vtep_me, vtep_2), (node_gw, snat), ([10, 2, 0, 9], 80), 63)
                );
                remote += 1;
                let r = tcp((vtep_2, vtep_me), ([10, 2, 0, 9], 80), (node_gw, snat), 64);
                let (v, back) = run(&s, &mut st, &from_node2(&r), UNDERLAY);
                assert!(matches!(v, Verdict::Tx { port: UNDERLAY, .. }), "{v:?}");
                assert_eq!(
                    back,
                    tcp((UL_MAC_ME, GW_MAC), (lb, 80), (client, sport), 63)
                );
            }
            (v, _) => panic!("{v:?}"),
        }
    }
    assert!(local > 5 && remote > 5, "local {local} remote {remote}");
    // A client inside a cluster range (the underlay's subnet, as the
    // world host of `weir up`): a's reply still leaves the uplink.
    let near = [172, 30, 0, 254];
    let mut near_local = 0;
    for sport in 50000..50020u16 {
        let f = tcp((GW_MAC, UL_MAC_ME), (near, sport), (lb, 80), 64);
        if let (Verdict::Tx { port: 0, .. }, _) = run(&s, &mut st, &f, UNDERLAY) {
            let r = tcp((pod_mac(0), port_mac(0)), (A, 80), (near, sport), 64);
            let (v, back) = run(&s, &mut st, &r, 0);
            assert!(matches!(v, Verdict::Tx { port: UNDERLAY, .. }), "{v:?}");
            assert_eq!(back, tcp((UL_MAC_ME, GW_MAC), (lb, 80), (near, sport), 63));
            near_local += 1;
        }
    }
    assert!(near_local > 0);
    // UDP to a port the Service does not serve at that address (its TCP
    // port 80 only), a TCP port it does not have: counted drops.
    let f = udp((GW_MAC, UL_MAC_ME), (client, 1234), (lb, 80), 64);
    assert_eq!(
        run(&s, &mut st, &f, UNDERLAY).0,
        Verdict::Drop(DropReason::NoRoute)
    );
    let f = tcp((GW_MAC, UL_MAC_ME), (client, 1234), (lb, 81), 64);
    assert_eq!(
        run(&s, &mut st, &f, UNDERLAY).0,
        Verdict::Drop(DropReason::NoRoute)
    );
    // The node-port number at the external address is not a node port.
    let f = tcp((GW_MAC, UL_MAC_ME), (client, 1234), (lb, 30080), 64);
    assert_eq!(
        run(&s, &mut st, &f, UNDERLAY).0,
        Verdict::Drop(DropReason::NoRoute)
    );
    // externalTrafficPolicy Local without a backend on this node.
    let f = tcp(
        (GW_MAC, UL_MAC_ME),
        (client, 1234),
        ([203, 0, 113, 11], 80),
        64,
    );
    assert_eq!(
        run(&s, &mut st, &f, UNDERLAY).0,
        Verdict::Drop(DropReason::NodePortNoLocalEndpoint)
    );
    // An address next to it no Service has: the world's, not weir's
    // (it would be the kernel's; here no peer sent it: no-route).
    let f = tcp(
        (GW_MAC, UL_MAC_ME),
        (client, 1234),
        ([203, 0, 113, 12], 80),
        64,
    );
    assert!(matches!(run(&s, &mut st, &f, UNDERLAY).0, Verdict::Drop(_)));
    // The external addresses are marked for the XDP program.
    assert_eq!(
        s.services().external_v4(),
        vec![
            std::net::Ipv4Addr::from([203, 0, 113, 10]),
            std::net::Ipv4Addr::from([203, 0, 113, 11])
        ]
    );
    assert!(snap().services().external_v4().is_empty());
}

/// eTP Local: the backend on this node only, the client's address kept.
#[test]
fn external_address_with_local_policy_keeps_the_client_address() {
    let mut spec = lb_snap().spec.clone();
    let e = spec
        .services
        .iter_mut()
        .find(|f| f.external && f.ip == std::net::IpAddr::from([203, 0, 113, 10]))
        .unwrap();
    e.external_local = true;
    let s = Snapshot::build(spec).unwrap();
    let mut st = WorkerState::new();
    let client = [198, 51, 100, 7];
    for sport in 1000..1020u16 {
        let f = udp(
            (GW_MAC, UL_MAC_ME),
            (client, sport),
            ([203, 0, 113, 10], 80),
            64,
        );
        // The frontend is TCP: UDP is not served.
        assert_eq!(
            run(&s, &mut st, &f, UNDERLAY).0,
            Verdict::Drop(DropReason::NoRoute)
        );
        let f = tcp(
            (GW_MAC, UL_MAC_ME),
            (client, sport),
            ([203, 0, 113, 10], 80),
            64,
        );
        let (v, out) = run(&s, &mut st, &f, UNDERLAY);
        assert!(matches!(v, Verdict::Tx { port: 0, .. }), "{v:?}");
        assert_eq!(
            out,
            tcp((port_mac(0), pod_mac(0)), (client, sport), (A, 80), 63)
        );
    }
}
