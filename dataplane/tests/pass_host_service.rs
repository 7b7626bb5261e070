//! Table tests of the node reaching ClusterIPs through its host port
//! (docs/services.md, "From the node"): the node's own flow to a Service
//! is DNATed as a pod's, to a backend on this node (out of its pod port)
//! or on another node (through the tunnel, the node's `.1` kept as the
//! source, which the peer's source check admits: it is in this node's pod
//! CIDR); the reply is restored to come from the ClusterIP and leaves
//! through the host port. Golden bytes built with etherparse, which also
//! checks every checksum of what leaves.

use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};
use std::net::{IpAddr, Ipv4Addr};
use weir_dataplane::pass::{process, WorkerState};
use weir_dataplane::policy::PolicySpec;
use weir_dataplane::snapshot::{
    Encap, HostPort, ServiceBackend, ServiceFrontend, TunnelPeer, TunnelSpec, Underlay, UplinkSpec,
};
use weir_dataplane::{DropReason, Endpoint, Port, Snapshot, SnapshotSpec, Verdict};

/// Pod a on this node (port 0), pod b on node-2.
const A: [u8; 4] = [10, 244, 0, 2];
const B: [u8; 4] = [10, 244, 1, 5];
/// The node's `.1` (the source of its routes to pods and Services).
const NODE: [u8; 4] = [10, 244, 0, 1];
/// A ClusterIP served by a, one served by b.
const SVC_LOCAL: [u8; 4] = [10, 96, 0, 10];
const SVC_REMOTE: [u8; 4] = [10, 96, 0, 11];
const HOST: u16 = 1;
const UNDERLAY: u16 = 2;
const POD_MAC: [u8; 6] = [0x06, 0, 10, 244, 0, 2];
const PORT_MAC: [u8; 6] = [0x02, 0xee, 0, 0, 0, 0];
const HOST_PORT_MAC: [u8; 6] = [0x0a, 0x77, 0x68, 0x6f, 0, 1];
const NODE_MAC: [u8; 6] = [0x0a, 0x77, 0x68, 0x6f, 0, 0];
const UL_ME: [u8; 4] = [192, 168, 0, 1];
const UL_2: [u8; 4] = [192, 168, 0, 2];
const UL_MAC_ME: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 1];
const UL_MAC_2: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 2];
const VTEP_ME: [u8; 6] = [0x0e, 0, 192, 168, 0, 1];
const VTEP_2: [u8; 6] = [0x0e, 0, 192, 168, 0, 2];
const SEC: u64 = 1_000_000_000;
/// `SVC_REMOTE`'s node port.
const NODE_PORT: u16 = 30080;

fn frontend(ip: [u8; 4], pod: &str, backend: [u8; 4]) -> ServiceFrontend {
    ServiceFrontend {
        service: format!("default/{pod}-svc"),
        port_name: None,
        ip: IpAddr::from(ip),
        proto: 6,
        port: 80,
        backends: vec![ServiceBackend {
            pod: format!("default/{pod}"),
            ip: IpAddr::from(backend),
            port: 8080,
            active: true,
        }],
        affinity_timeout_s: None,
        node_port: None,
        external_local: false,
        internal_local: false,
        external: false,
    }
}

fn snap() -> Snapshot {
    Snapshot::build(SnapshotSpec {
        generation: 1,
        node: "n1".into(),
        node_ipv4: Some(NODE.into()),
        node_ipv6: None,
        ports: vec![
            Port {
                name: "wc0".into(),
                mac: PORT_MAC,
                mtu: 1450,
            },
            Port {
                name: "weir-host1".into(),
                mac: HOST_PORT_MAC,
                mtu: 1450,
            },
        ],
        endpoints: vec![Endpoint {
            name: "default/a".into(),
            port: 0,
            mac: POD_MAC,
            ipv4: Some(A.into()),
            ipv6: None,
        }],
        policy: PolicySpec {
            generation: 1,
            ..PolicySpec::default()
        },
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
            vtep_mac: VTEP_ME,
            peers: vec![TunnelPeer {
                node: "n2".into(),
                ipv4: UL_2.into(),
                mac: UL_MAC_2,
                vtep_mac: VTEP_2,
                pod_cidrs: vec![(Ipv4Addr::from([10, 244, 1, 0]).into(), 24)],
                identity_aware: true,
            }],
        }),
        services: vec![
            frontend(SVC_LOCAL, "a", A),
            ServiceFrontend {
                node_port: Some(NODE_PORT),
                ..frontend(SVC_REMOTE, "b", B)
            },
        ],
        host: Some(HostPort {
            port: HOST,
            node_mac: NODE_MAC,
            addrs: vec![IpAddr::from(NODE), IpAddr::from(UL_ME)],
        }),
        uplink: Some(UplinkSpec {
            gateway_ipv4: [192, 168, 0, 254].into(),
            gateway_mac: [0x0a, 2, 192, 168, 0, 254],
            cluster_cidrs: vec![
                (IpAddr::from([10, 244, 0, 0]), 16),
                (IpAddr::from([10, 96, 0, 0]), 16),
                (IpAddr::from([192, 168, 0, 0]), 24),
            ],
            non_masquerade: Vec::new(),
            pod_cidr_v4: None,
            node_ipv6: None,
            gateway_ipv6: None,
            gateway_mac_v6: None,
            pod_cidr_v6: None,
        }),
    })
    .unwrap()
}

/// A TCP segment (SYN, or SYN-ACK with `ack`).
fn tcp4(
    macs: ([u8; 6], [u8; 6]),
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    ack: bool,
) -> Vec<u8> {
    let mut out = Vec::new();
    let b = PacketBuilder::ethernet2(macs.0, macs.1)
        .ipv4(src, dst, 64)
        .tcp(sport, dport, 1000, 64240)
        .syn();
    let b = if ack { b.ack(7) } else { b };
    b.write(&mut out, &[]).unwrap();
    out
}

/// `inner` in VXLAN from node-2 (GBP, group 300), as its dataplane sends it.
fn from_peer(inner: &[u8]) -> Vec<u8> {
    let mut t = vec![0x88, 0x00, 0x01, 0x2c, 0, 0, 1, 0];
    t.extend_from_slice(inner);
    let mut out = Vec::new();
    PacketBuilder::ethernet2(UL_MAC_2, UL_MAC_ME)
        .ipv4(UL_2, UL_ME, 64)
        .udp(50000, 4789)
        .write(&mut out, &t)
        .unwrap();
    out
}

fn run(frame: &[u8], ingress: u16, s: &Snapshot, st: &mut WorkerState) -> (Verdict, Vec<u8>) {
    let mut buf = vec![0u8; 2048];
    buf[..frame.len()].copy_from_slice(frame);
    let v = process(&mut buf, frame.len(), ingress, s, st);
    let len = match v {
        Verdict::Tx { len, .. } => len,
        _ => 0,
    };
    buf.truncate(len);
    (v, buf)
}

/// (source, destination) address and port of an IPv4 TCP frame, after
/// etherparse checked its IPv4 and TCP checksums.
fn tcp_ends(frame: &[u8]) -> ([u8; 4], u16, [u8; 4], u16) {
    let p = SlicedPacket::from_ethernet(frame).expect("a frame etherparse reads");
    let Some(etherparse::NetSlice::Ipv4(ip)) = &p.net else {
        panic!("not IPv4")
    };
    let h = ip.header();
    assert_eq!(
        h.to_header().calc_header_checksum(),
        h.header_checksum(),
        "IPv4 checksum"
    );
    let Some(TransportSlice::Tcp(t)) = &p.transport else {
        panic!("not TCP")
    };
    let (src, dst) = (h.source(), h.destination());
    let sum = t
        .to_header()
        .calc_checksum_ipv4_raw(src, dst, t.payload())
        .unwrap();
    assert_eq!(sum, t.checksum(), "TCP checksum");
    (src, t.source_port(), dst, t.destination_port())
}

#[test]
fn node_to_cluster_ip_with_a_backend_on_this_node() {
    let s = snap();
    let mut st = WorkerState::new();
    st.set_now(SEC);
    let syn = tcp4((NODE_MAC, HOST_PORT_MAC), NODE, SVC_LOCAL, 40000, 80, false);
    let (v, out) = run(&syn, HOST, &s, &mut st);
    assert!(matches!(v, Verdict::Tx { port: 0, .. }), "{v:?}");
    assert_eq!(out[0..6], POD_MAC);
    assert_eq!(tcp_ends(&out), (NODE, 40000, A, 8080), "DNAT to a");
    // a's SYN-ACK: restored to come from the ClusterIP, to the node.
    let synack = tcp4((POD_MAC, PORT_MAC), A, NODE, 8080, 40000, true);
    let (v, out) = run(&synack, 0, &s, &mut st);
    assert!(matches!(v, Verdict::Tx { port: HOST, .. }), "{v:?}");
    assert_eq!(
        (&out[0..6], &out[6..12]),
        (&NODE_MAC[..], &HOST_PORT_MAC[..])
    );
    assert_eq!(tcp_ends(&out), (SVC_LOCAL, 80, NODE, 40000), "reverse NAT");
}

#[test]
fn node_to_cluster_ip_with_a_backend_on_another_node() {
    let s = snap();
    let mut st = WorkerState::new();
    st.set_now(SEC);
    let syn = tcp4(
        (NODE_MAC, HOST_PORT_MAC),
        NODE,
        SVC_REMOTE,
        40001,
        80,
        false,
    );
    let (v, out) = run(&syn, HOST, &s, &mut st);
    assert!(matches!(v, Verdict::Tx { port: UNDERLAY, .. }), "{v:?}");
    // Outer: to node-2; inner (after 14 + 20 + 8 + 8): the node's .1 → b.
    assert_eq!(out[0..6], UL_MAC_2);
    let inner = &out[50..];
    assert_eq!(inner[0..6], VTEP_2);
    assert_eq!(tcp_ends(inner), (NODE, 40001, B, 8080), "DNAT to b");
    // b's SYN-ACK comes back through the tunnel: to the node, from the
    // ClusterIP.
    let synack = tcp4((VTEP_2, VTEP_ME), B, NODE, 8080, 40001, true);
    let (v, out) = run(&from_peer(&synack), UNDERLAY, &s, &mut st);
    assert!(matches!(v, Verdict::Tx { port: HOST, .. }), "{v:?}");
    assert_eq!(
        (&out[0..6], &out[6..12]),
        (&NODE_MAC[..], &HOST_PORT_MAC[..])
    );
    assert_eq!(tcp_ends(&out), (SVC_REMOTE, 80, NODE, 40001), "reverse NAT");
}

/// The node reaches other nodes' pods through its host port only as a
/// Service's backends: straight to b stays `no-route`, and a peer's frame
/// to the node that is no Service reply stays `to-node`.
#[test]
fn the_node_reaches_remote_pods_only_through_services() {
    let s = snap();
    let mut st = WorkerState::new();
    st.set_now(SEC);
    let syn = tcp4((NODE_MAC, HOST_PORT_MAC), NODE, B, 40002, 8080, false);
    assert_eq!(
        run(&syn, HOST, &s, &mut st).0,
        Verdict::Drop(DropReason::NoRoute)
    );
    let stray = tcp4((VTEP_2, VTEP_ME), B, NODE, 8080, 40003, false);
    assert_eq!(
        run(&from_peer(&stray), UNDERLAY, &s, &mut st).0,
        Verdict::Drop(DropReason::ToNode)
    );
}

/// A pod reaching a node port at its own node's address (kube-proxy's
/// "hairpin to node IP"): load balanced as the Service (here to b on
/// node-2), the reply restored to come from (node address, node port).
/// The node's own client does the same through the host port.
#[test]
fn pods_and_the_node_reach_a_node_port_at_the_nodes_address() {
    let s = snap();
    let mut st = WorkerState::new();
    st.set_now(SEC);
    let syn = tcp4((POD_MAC, PORT_MAC), A, UL_ME, 41000, NODE_PORT, false);
    let (v, out) = run(&syn, 0, &s, &mut st);
    assert!(matches!(v, Verdict::Tx { port: UNDERLAY, .. }), "{v:?}");
    assert_eq!(tcp_ends(&out[50..]), (A, 41000, B, 8080), "DNAT to b");
    let synack = tcp4((VTEP_2, VTEP_ME), B, A, 8080, 41000, true);
    let (v, out) = run(&from_peer(&synack), UNDERLAY, &s, &mut st);
    assert!(matches!(v, Verdict::Tx { port: 0, .. }), "{v:?}");
    assert_eq!(tcp_ends(&out), (UL_ME, NODE_PORT, A, 41000), "reverse NAT");

    let syn = tcp4(
        (NODE_MAC, HOST_PORT_MAC),
        NODE,
        UL_ME,
        41001,
        NODE_PORT,
        false,
    );
    let (v, out) = run(&syn, HOST, &s, &mut st);
    assert!(matches!(v, Verdict::Tx { port: UNDERLAY, .. }), "{v:?}");
    assert_eq!(tcp_ends(&out[50..]), (NODE, 41001, B, 8080), "DNAT to b");
    let synack = tcp4((VTEP_2, VTEP_ME), B, NODE, 8080, 41001, true);
    let (v, out) = run(&from_peer(&synack), UNDERLAY, &s, &mut st);
    assert!(matches!(v, Verdict::Tx { port: HOST, .. }), "{v:?}");
    assert_eq!(
        tcp_ends(&out),
        (UL_ME, NODE_PORT, NODE, 41001),
        "reverse NAT"
    );

    // Another port of the node's address is still the node's own.
    let syn = tcp4((POD_MAC, PORT_MAC), A, UL_ME, 41002, 22, false);
    let (v, _) = run(&syn, 0, &s, &mut st);
    assert!(matches!(v, Verdict::Tx { port: HOST, .. }), "{v:?}");
}

/// A pod reaching a node port at *another* node's address is load balanced
/// on its own node as at its node's address (the reply comes back from the
/// address and port it sent to); another port of that address is not a
/// Service flow.
#[test]
fn pods_reach_a_node_port_at_another_nodes_address() {
    let s = snap();
    let mut st = WorkerState::new();
    st.set_now(SEC);
    let syn = tcp4((POD_MAC, PORT_MAC), A, UL_2, 41010, NODE_PORT, false);
    let (v, out) = run(&syn, 0, &s, &mut st);
    assert!(matches!(v, Verdict::Tx { port: UNDERLAY, .. }), "{v:?}");
    assert_eq!(tcp_ends(&out[50..]), (A, 41010, B, 8080), "DNAT to b");
    let synack = tcp4((VTEP_2, VTEP_ME), B, A, 8080, 41010, true);
    let (v, out) = run(&from_peer(&synack), UNDERLAY, &s, &mut st);
    assert!(matches!(v, Verdict::Tx { port: 0, .. }), "{v:?}");
    assert_eq!(tcp_ends(&out), (UL_2, NODE_PORT, A, 41010), "reverse NAT");
    // A port outside the node-port range at that address: no Service.
    let syn = tcp4((POD_MAC, PORT_MAC), A, UL_2, 41011, 22, false);
    let (v, _) = run(&syn, 0, &s, &mut st);
    assert_eq!(v, Verdict::Drop(DropReason::NoRoute));
}
