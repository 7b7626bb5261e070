//! Table tests of the host port (`SnapshotSpec::host`): frames from the
//! node into its pods and from pods to the node's addresses, on golden
//! bytes; the node's addresses compiled as the host identity (the default,
//! `weir.dev/host-ingress: allow`) or as plain addresses (`policy`); and
//! host endpoint policy (`PolicySpec::host`: the node's own tables, with
//! failsafe ports resolved into them).

use etherparse::PacketBuilder;
use std::net::{IpAddr, Ipv6Addr};
use weir_dataplane::pass::{process, FlowKey, WorkerState};
use weir_dataplane::policy::{
    CellSpec, Decision, Direction, EndpointTables, HostTables, PolicySpec, RuleId, RuleInfo, Tier,
    IDENTITY_HOST, IDENTITY_WORLD,
};
use weir_dataplane::snapshot::HostPort;
use weir_dataplane::{DropReason, Endpoint, Port, Snapshot, SnapshotSpec, Verdict};

/// Pod a (port 0).
const A: [u8; 4] = [10, 244, 0, 2];
const A6: [u8; 16] = [0xfd, 0, 0, 0x10, 0x02, 0x44, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
/// The node: its `.1`/`::1` and its underlay address.
const NODE: [u8; 4] = [10, 244, 0, 1];
const NODE6: [u8; 16] = [0xfd, 0, 0, 0x10, 0x02, 0x44, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const NODE_UL: [u8; 4] = [172, 30, 0, 1];
/// The host port's id (after the pod port).
const HOST: u16 = 1;
const POD_MAC: [u8; 6] = [0x06, 0, 10, 244, 0, 2];
const PORT_MAC: [u8; 6] = [0x02, 0xee, 0, 0, 0, 0];
const HOST_PORT_MAC: [u8; 6] = [0x0a, 0x77, 0x68, 0x6f, 0, 1];
const NODE_MAC: [u8; 6] = [0x0a, 0x77, 0x68, 0x6f, 0, 0];
const SEC: u64 = 1_000_000_000;

/// What a's ingress policy says.
#[derive(Clone, Copy)]
enum Ingress {
    /// No policy.
    Open,
    /// Isolated, nothing allowed (a default-deny NetworkPolicy).
    DenyAll,
    /// Isolated, only addresses outside the pods allowed (an ipBlock that
    /// names the node's address: the node is no pod, so it is in the
    /// world class).
    AllowWorld,
}

/// How the compiler saw the node's addresses.
#[derive(Clone, Copy, PartialEq)]
enum HostIngress {
    /// The host identity (always allowed).
    Allow,
    /// Plain addresses (world, or an ipBlock's region).
    Policy,
}

fn snap(ingress: Ingress, host: HostIngress) -> Snapshot {
    let mut classes = vec![IDENTITY_WORLD, 256];
    let mut addresses: Vec<(IpAddr, u32)> = vec![(A.into(), 1), (A6.into(), 1)];
    if host == HostIngress::Allow {
        classes.push(IDENTITY_HOST);
        addresses.extend([(NODE.into(), 2), (NODE6.into(), 2)]);
    }
    let n = classes.len();
    let policy = match ingress {
        Ingress::Open => PolicySpec {
            generation: 1,
            ..PolicySpec::default()
        },
        Ingress::DenyAll | Ingress::AllowWorld => PolicySpec {
            generation: 1,
            rules: vec![RuleInfo {
                tier: Tier::Namespace,
                kind: "networkpolicies".into(),
                namespace: Some("default".into()),
                name: "a-ingress".into(),
                direction: Direction::Ingress,
                index: 0,
                action: "Allow".into(),
                priority: None,
            }],
            classes,
            addresses,
            prefixes: vec![],
            world_class: 0,
            cells: vec![
                CellSpec::uniform(Decision::deny(RuleId::IMPLICIT_DENY)),
                CellSpec::uniform(Decision::allow(RuleId(0))),
            ],
            tables: vec![match ingress {
                Ingress::AllowWorld => [vec![1], vec![0; n - 1]].concat(),
                _ => vec![0; n],
            }],
            endpoints: vec![EndpointTables {
                ingress: Some(0),
                egress: None,
            }],
            http: vec![],
            ..Default::default()
        },
    };
    Snapshot::build(SnapshotSpec {
        generation: 1,
        node: "n1".into(),
        node_ipv4: Some(NODE.into()),
        node_ipv6: Some(NODE6.into()),
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
            ipv6: Some(A6.into()),
        }],
        policy,
        tunnel: None,
        services: Vec::new(),
        host: Some(HostPort {
            port: HOST,
            node_mac: NODE_MAC,
            addrs: vec![
                IpAddr::from(NODE),
                IpAddr::from(NODE6),
                IpAddr::from(NODE_UL),
            ],
        }),
        uplink: None,
    })
    .unwrap()
}

/// A TCP SYN (or a SYN-ACK with `reply`) from `src` to `dst`, sent by the
/// node (`from_node`) or by pod a.
fn tcp4(from_node: bool, src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
    let (smac, dmac) = macs(from_node);
    let mut out = Vec::new();
    PacketBuilder::ethernet2(smac, dmac)
        .ipv4(src, dst, 64)
        .tcp(sport, dport, 1000, 64240)
        .syn()
        .write(&mut out, &[])
        .unwrap();
    out
}

fn udp6(from_node: bool, src: [u8; 16], dst: [u8; 16], sport: u16, dport: u16) -> Vec<u8> {
    let (smac, dmac) = macs(from_node);
    let mut out = Vec::new();
    PacketBuilder::ethernet2(smac, dmac)
        .ipv6(src, dst, 64)
        .udp(sport, dport)
        .write(&mut out, b"ping")
        .unwrap();
    out
}

fn macs(from_node: bool) -> ([u8; 6], [u8; 6]) {
    if from_node {
        (NODE_MAC, HOST_PORT_MAC)
    } else {
        (POD_MAC, PORT_MAC)
    }
}

/// Runs `frame` arriving on `ingress`; returns the verdict and the frame as
/// it would leave.
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

fn assert_tx(v: &Verdict, port: u16) {
    assert!(
        matches!(v, Verdict::Tx { port: p, .. } if *p == port),
        "expected Tx on port {port}, got {v:?}"
    );
}

/// The frame `out` left with: destination and source MAC, and the IPv4 TTL
/// or IPv6 hop limit.
fn link(out: &[u8]) -> ([u8; 6], [u8; 6], u8) {
    let ttl = if out[12..14] == [0x86, 0xdd] {
        out[14 + 7]
    } else {
        out[14 + 8]
    };
    (
        out[0..6].try_into().unwrap(),
        out[6..12].try_into().unwrap(),
        ttl,
    )
}

#[test]
fn node_to_pod_and_reply_v4_and_v6() {
    let s = snap(Ingress::Open, HostIngress::Allow);
    let mut st = WorkerState::new();
    st.set_now(SEC);
    // The node's SYN to a:80 leaves on a's port, addressed to a.
    let syn = tcp4(true, NODE, A, 40000, 80);
    let (v, out) = run(&syn, HOST, &s, &mut st);
    assert_tx(&v, 0);
    assert_eq!(link(&out), (POD_MAC, PORT_MAC, 63));
    assert_eq!(
        out[14 + 12..14 + 20],
        syn[14 + 12..14 + 20],
        "addresses kept"
    );
    // a's answer goes to the node through the host port.
    let (v, out) = run(&tcp4(false, A, NODE, 80, 40000), 0, &s, &mut st);
    assert_tx(&v, HOST);
    assert_eq!(link(&out), (NODE_MAC, HOST_PORT_MAC, 63));
    // IPv6 UDP both ways.
    let (v, out) = run(&udp6(true, NODE6, A6, 5000, 53), HOST, &s, &mut st);
    assert_tx(&v, 0);
    assert_eq!(link(&out), (POD_MAC, PORT_MAC, 63));
    let (v, out) = run(&udp6(false, A6, NODE6, 53, 5000), 0, &s, &mut st);
    assert_tx(&v, HOST);
    assert_eq!(link(&out), (NODE_MAC, HOST_PORT_MAC, 63));
    // Both flows are tracked.
    let k = FlowKey {
        src: IpAddr::from(NODE),
        dst: IpAddr::from(A),
        proto: 6,
        sport: 40000,
        dport: 80,
    };
    assert!(st.conntrack().peek(&k, SEC).is_some());
    assert_eq!(st.ct_stats().inserts.get(), 2);
}

#[test]
fn pod_reaches_every_node_address_through_the_host_port() {
    let s = snap(Ingress::Open, HostIngress::Allow);
    let mut st = WorkerState::new();
    st.set_now(SEC);
    for (i, dst) in [NODE, NODE_UL].into_iter().enumerate() {
        let (v, out) = run(&tcp4(false, A, dst, 41000 + i as u16, 22), 0, &s, &mut st);
        assert_tx(&v, HOST);
        assert_eq!(link(&out).0, NODE_MAC);
    }
    // The pods' gateway stays the kernel's: a frame that reached a worker
    // anyway is not forwarded.
    let (v, _) = run(&tcp4(false, A, [169, 254, 1, 1], 41002, 22), 0, &s, &mut st);
    assert_eq!(v, Verdict::Drop(DropReason::ToNode));
}

#[test]
fn the_host_port_carries_only_the_nodes_addresses_to_local_pods() {
    let s = snap(Ingress::Open, HostIngress::Allow);
    let mut st = WorkerState::new();
    st.set_now(SEC);
    // A source that is not the node's: spoofed.
    let (v, _) = run(&tcp4(true, [10, 9, 9, 9], A, 1, 80), HOST, &s, &mut st);
    assert_eq!(v, Verdict::Drop(DropReason::SourceSpoofed));
    // A pod's own address from the host port: spoofed too.
    let (v, _) = run(&tcp4(true, A, A, 1, 80), HOST, &s, &mut st);
    assert_eq!(v, Verdict::Drop(DropReason::SourceSpoofed));
    // The node to itself through its port: not forwarded.
    let (v, _) = run(&tcp4(true, NODE, NODE_UL, 1, 80), HOST, &s, &mut st);
    assert_eq!(v, Verdict::Drop(DropReason::ToNode));
    // The node to an address no pod has: no route.
    let (v, _) = run(
        &tcp4(true, NODE, [10, 244, 0, 77], 1, 80),
        HOST,
        &s,
        &mut st,
    );
    assert_eq!(v, Verdict::Drop(DropReason::NoRoute));
    // A link-local source (the node's NDP that reached a worker): the node's.
    let ll = [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9];
    let (v, _) = run(&udp6(true, ll, A6, 1, 53), HOST, &s, &mut st);
    assert_eq!(v, Verdict::Drop(DropReason::ToNode));
    // A pod cannot pose as the node.
    let (v, _) = run(&tcp4(false, NODE, A, 1, 80), 0, &s, &mut st);
    assert_eq!(v, Verdict::Drop(DropReason::SourceSpoofed));
}

#[test]
fn the_node_as_host_identity_passes_a_default_deny_policy() {
    let s = snap(Ingress::DenyAll, HostIngress::Allow);
    let mut st = WorkerState::new();
    st.set_now(SEC);
    let (v, _) = run(&tcp4(true, NODE, A, 40000, 80), HOST, &s, &mut st);
    assert_tx(&v, 0);
    let (v, _) = run(&udp6(true, NODE6, A6, 5000, 53), HOST, &s, &mut st);
    assert_tx(&v, 0);
    // A stale flow (policy changed) is judged the same way again.
    let mut s2 = snap(Ingress::DenyAll, HostIngress::Allow).spec.clone();
    s2.generation = 2;
    s2.policy.generation = 2;
    let s2 = Snapshot::build(s2).unwrap();
    let (v, _) = run(&tcp4(false, A, NODE, 80, 40000), 0, &s2, &mut st);
    assert_tx(&v, HOST);
}

#[test]
fn host_ingress_policy_judges_the_node_as_an_address() {
    // Default deny: the node is denied like anyone.
    let s = snap(Ingress::DenyAll, HostIngress::Policy);
    let mut st = WorkerState::new();
    st.set_now(SEC);
    let (v, _) = run(&tcp4(true, NODE, A, 40000, 80), HOST, &s, &mut st);
    assert_eq!(v, Verdict::Drop(DropReason::PolicyDenied));
    let (v, _) = run(&udp6(true, NODE6, A6, 5000, 53), HOST, &s, &mut st);
    assert_eq!(v, Verdict::Drop(DropReason::PolicyDenied));
    // An allow for addresses outside the pods (an ipBlock) admits it.
    let s = snap(Ingress::AllowWorld, HostIngress::Policy);
    let mut st = WorkerState::new();
    st.set_now(SEC);
    let (v, _) = run(&tcp4(true, NODE, A, 40000, 80), HOST, &s, &mut st);
    assert_tx(&v, 0);
}

#[test]
fn a_host_port_must_be_a_port_without_a_pod() {
    let mut spec = snap(Ingress::Open, HostIngress::Allow).spec.clone();
    spec.host.as_mut().unwrap().port = 0;
    let e = Snapshot::build(spec.clone()).unwrap_err().to_string();
    assert!(e.contains("also pod default/a"), "{e}");
    spec.host.as_mut().unwrap().port = 7;
    let e = Snapshot::build(spec.clone()).unwrap_err().to_string();
    assert!(e.contains("not in the port list"), "{e}");
    spec.host.as_mut().unwrap().port = HOST;
    spec.host
        .as_mut()
        .unwrap()
        .addrs
        .push(IpAddr::V6(Ipv6Addr::from(A6)));
    let e = Snapshot::build(spec).unwrap_err().to_string();
    assert!(e.contains("also a pod's"), "{e}");
}

/// Host endpoint policy as the compiler writes it for a WeirClusterPolicy
/// `host-fw` selecting the node: ingress `[0]` Allow TCP 10256, `[1]` Deny
/// (everything else), with the failsafe TCP 22 open; egress `[0]` Deny,
/// with the failsafe UDP 53 open. Pod a has no policy of its own.
fn host_policy_snap() -> Snapshot {
    let mut spec = snap(Ingress::Open, HostIngress::Allow).spec.clone();
    let rule = |direction, index, action: &str| RuleInfo {
        tier: Tier::Admin,
        kind: "weirclusterpolicies".into(),
        namespace: None,
        name: "host-fw".into(),
        direction,
        index,
        action: action.into(),
        priority: Some(10),
    };
    let deny_in = Decision::deny(RuleId(1));
    let deny_out = Decision::deny(RuleId(2));
    spec.policy = PolicySpec {
        generation: 1,
        rules: vec![
            rule(Direction::Ingress, 0, "Allow"),
            rule(Direction::Ingress, 1, "Deny"),
            rule(Direction::Egress, 0, "Deny"),
        ],
        classes: vec![IDENTITY_WORLD, 256, IDENTITY_HOST],
        addresses: vec![
            (A.into(), 1),
            (A6.into(), 1),
            (NODE.into(), 2),
            (NODE6.into(), 2),
        ],
        prefixes: vec![],
        world_class: 0,
        cells: vec![
            CellSpec {
                other: deny_in,
                tcp: vec![
                    (0, deny_in),
                    (22, Decision::FAILSAFE),
                    (23, deny_in),
                    (10256, Decision::allow(RuleId(0))),
                    (10257, deny_in),
                ],
                udp: vec![(0, deny_in)],
                sctp: vec![(0, deny_in)],
            },
            CellSpec {
                other: deny_out,
                tcp: vec![(0, deny_out)],
                udp: vec![(0, deny_out), (53, Decision::FAILSAFE), (54, deny_out)],
                sctp: vec![(0, deny_out)],
            },
        ],
        tables: vec![vec![0; 3], vec![1; 3]],
        endpoints: vec![EndpointTables::default()],
        host: Some(HostTables {
            addrs: vec![NODE.into(), NODE6.into(), NODE_UL.into()],
            tables: EndpointTables {
                ingress: Some(0),
                egress: Some(1),
            },
        }),
        ..Default::default()
    };
    Snapshot::build(spec).unwrap()
}

/// The node's SYN-ACK to a's SYN (`reply` of [`tcp4`]).
fn synack4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(NODE_MAC, HOST_PORT_MAC)
        .ipv4(src, dst, 64)
        .tcp(sport, dport, 5000, 64240)
        .syn()
        .ack(1001)
        .write(&mut out, &[])
        .unwrap();
    out
}

#[test]
fn host_policy_judges_pod_to_node_with_failsafe_ports() {
    let s = host_policy_snap();
    let mut st = WorkerState::new();
    st.set_now(SEC);
    // The allowed port, on the node's .1 and its underlay address.
    for (i, dst) in [NODE, NODE_UL].into_iter().enumerate() {
        let (v, _) = run(
            &tcp4(false, A, dst, 42000 + i as u16, 10256),
            0,
            &s,
            &mut st,
        );
        assert_tx(&v, HOST);
    }
    // The node's reply passes as the reply of a tracked flow, although
    // its own egress rule denies new flows.
    let (v, _) = run(&synack4(NODE, A, 10256, 42000), HOST, &s, &mut st);
    assert_tx(&v, 0);
    // Any other port: denied by the host rule, with the rule in the event.
    let mut events = Vec::new();
    st.flows().drain(&mut events);
    let (v, _) = run(&tcp4(false, A, NODE, 42010, 8080), 0, &s, &mut st);
    assert_eq!(v, Verdict::Drop(DropReason::PolicyDenied));
    events.clear();
    st.flows().drain(&mut events);
    let ev = events.last().expect("a flow event");
    assert!(!ev.allowed);
    assert_eq!(ev.ingress_rule, RuleId(1));
    assert_eq!(
        s.policy().rule(ev.ingress_rule).unwrap().to_string(),
        "weirclusterpolicies/host-fw ingress[1]"
    );
    // The failsafe port stays open under the Deny, on every node address.
    for (i, dst) in [NODE, NODE_UL].into_iter().enumerate() {
        let (v, _) = run(&tcp4(false, A, dst, 42020 + i as u16, 22), 0, &s, &mut st);
        assert_tx(&v, HOST);
    }
    // IPv6 UDP to the node: denied.
    let (v, _) = run(&udp6(false, A6, NODE6, 5000, 9999), 0, &s, &mut st);
    assert_eq!(v, Verdict::Drop(DropReason::PolicyDenied));
}

#[test]
fn host_policy_judges_node_to_pod_with_failsafe_ports() {
    let s = host_policy_snap();
    let mut st = WorkerState::new();
    st.set_now(SEC);
    // The node's egress rule denies its new flows to pods ...
    let (v, _) = run(&tcp4(true, NODE, A, 40000, 80), HOST, &s, &mut st);
    assert_eq!(v, Verdict::Drop(DropReason::PolicyDenied));
    let mut events = Vec::new();
    st.flows().drain(&mut events);
    let ev = events.last().expect("a flow event");
    assert_eq!(ev.egress_rule, RuleId(2));
    // ... except DNS, an outbound failsafe port.
    let (v, _) = run(&udp6(true, NODE6, A6, 5000, 53), HOST, &s, &mut st);
    assert_tx(&v, 0);
    // Without host tables the same frame passes (host identity).
    let open = snap(Ingress::Open, HostIngress::Allow);
    let mut st = WorkerState::new();
    st.set_now(SEC);
    let (v, _) = run(&tcp4(true, NODE, A, 40000, 80), HOST, &open, &mut st);
    assert_tx(&v, 0);
}

#[test]
fn host_tables_out_of_range_are_refused() {
    let mut spec = host_policy_snap().spec.clone();
    spec.policy.host.as_mut().unwrap().tables.egress = Some(9);
    let e = Snapshot::build(spec).unwrap_err().to_string();
    assert!(e.contains("host: table 9 out of range"), "{e}");
}

/// The underlay port of [`outside_snap`] (the tunnel's port id: the one
/// after the pod and host ports).
const UL: u16 = 2;
const UL_MAC: [u8; 6] = [0x0a, 0x01, 172, 30, 0, 1];
/// Another node's underlay address and MAC; its pod CIDR 10.244.1.0/24.
const N2_UL: [u8; 4] = [172, 30, 0, 2];
const N2_MAC: [u8; 6] = [0x0a, 0x01, 172, 30, 0, 2];
/// The world host (TEST-NET-2).
const WORLD: [u8; 4] = [198, 51, 100, 1];

/// [`host_policy_snap`] on a node with an underlay (`ul0`, VXLAN port
/// 4789) and a peer n2: frames from outside arrive on port [`UL`].
fn outside_snap(host_policy: bool) -> Snapshot {
    use weir_dataplane::snapshot::{Encap, TunnelPeer, TunnelSpec, Underlay};
    let mut spec = host_policy_snap().spec.clone();
    if !host_policy {
        spec.policy = snap(Ingress::Open, HostIngress::Allow).spec.policy.clone();
    }
    spec.tunnel = Some(TunnelSpec {
        encap: Encap::Vxlan,
        vni: 1,
        udp_port: 4789,
        underlay: Underlay {
            name: "ul0".into(),
            mac: UL_MAC,
            ipv4: NODE_UL.into(),
            mtu: 1500,
        },
        vtep_mac: [0x0a, 0x58, 0, 0, 0, 1],
        peers: vec![TunnelPeer {
            node: "n2".into(),
            ipv4: N2_UL.into(),
            mac: N2_MAC,
            vtep_mac: [0x0a, 0x58, 0, 0, 0, 2],
            pod_cidrs: vec![(IpAddr::from([10, 244, 1, 0]), 24)],
            identity_aware: true,
        }],
    });
    Snapshot::build(spec).unwrap()
}

/// A TCP SYN from outside (the world or n2, on the underlay) to the
/// node's underlay address.
fn syn_from(src: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(N2_MAC, UL_MAC)
        .ipv4(src, NODE_UL, 64)
        .tcp(sport, dport, 1000, 64240)
        .syn()
        .write(&mut out, &[])
        .unwrap();
    out
}

/// Host policy judges the flows that open to the node from outside (the
/// underlay's XDP program hands them over, `host_in`): allowed → the host
/// port (the node's kernel), byte for byte but for MACs and TTL; denied →
/// `policy-denied` with the host rule in the flow event; the failsafe port
/// open under the Deny; a forged pod source refused.
#[test]
fn host_policy_judges_flows_from_outside_the_node() {
    let s = outside_snap(true);
    let mut st = WorkerState::new();
    st.set_now(SEC);
    // The allowed port, from the world and from n2: to the node's kernel.
    for (i, src) in [WORLD, N2_UL].into_iter().enumerate() {
        let syn = syn_from(src, 40000 + i as u16, 10256);
        let (v, out) = run(&syn, UL, &s, &mut st);
        assert_tx(&v, HOST);
        assert_eq!(link(&out), (NODE_MAC, HOST_PORT_MAC, 63), "{src:?}");
        // Only the MACs, the TTL and the IPv4 header checksum changed.
        assert_eq!(out.len(), syn.len());
        assert_eq!(out[34..], syn[34..], "transport bytes");
        assert_eq!(out[26..34], syn[26..34], "addresses");
    }
    // Another port: denied by the host rule, named in the flow event.
    let mut events = Vec::new();
    st.flows().drain(&mut events);
    let (v, _) = run(&syn_from(WORLD, 40010, 8080), UL, &s, &mut st);
    assert_eq!(v, Verdict::Drop(DropReason::PolicyDenied));
    events.clear();
    st.flows().drain(&mut events);
    let ev = events.last().expect("a flow event");
    assert!(!ev.allowed);
    assert_eq!(ev.ingress_rule, RuleId(1));
    assert_eq!(
        ev.key,
        FlowKey {
            src: IpAddr::from(WORLD),
            dst: IpAddr::from(NODE_UL),
            proto: 6,
            sport: 40010,
            dport: 8080,
        }
    );
    // The failsafe port stays open under the Deny.
    let (v, _) = run(&syn_from(N2_UL, 40020, 22), UL, &s, &mut st);
    assert_tx(&v, HOST);
    // UDP outside the ephemeral range and ICMP echo: judged, denied.
    let mut udp = Vec::new();
    PacketBuilder::ethernet2(N2_MAC, UL_MAC)
        .ipv4(WORLD, NODE_UL, 64)
        .udp(5000, 9999)
        .write(&mut udp, b"ping")
        .unwrap();
    assert_eq!(
        run(&udp, UL, &s, &mut st).0,
        Verdict::Drop(DropReason::PolicyDenied)
    );
    let mut echo = Vec::new();
    PacketBuilder::ethernet2(N2_MAC, UL_MAC)
        .ipv4(WORLD, NODE_UL, 64)
        .icmpv4_echo_request(7, 1)
        .write(&mut echo, b"ping")
        .unwrap();
    assert_eq!(
        run(&echo, UL, &s, &mut st).0,
        Verdict::Drop(DropReason::PolicyDenied)
    );
    // A raw underlay frame cannot pose as a local pod, a peer's pod or the
    // node itself (pod peers of host rules are met through the tunnel).
    for src in [A, [10, 244, 1, 5], NODE] {
        let (v, _) = run(&syn_from(src, 40030, 10256), UL, &s, &mut st);
        assert_eq!(v, Verdict::Drop(DropReason::SourceSpoofed), "{src:?}");
    }
    // Without host policy the same SYN is not the dataplane's (the XDP
    // program leaves it to the kernel): were it handed over anyway, it is
    // no tunnel frame and never reaches the host port.
    let open = outside_snap(false);
    let mut st = WorkerState::new();
    st.set_now(SEC);
    let (v, _) = run(&syn_from(WORLD, 40000, 10256), UL, &open, &mut st);
    assert!(matches!(v, Verdict::Drop(_)), "{v:?}");
}

/// A TCP segment from outside to the node's underlay address with the
/// given flags (`S` SYN, `A` ACK, `P` PSH, `F` FIN, `R` RST) and payload.
fn seg_from(src: [u8; 4], sport: u16, dport: u16, flags: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut b = PacketBuilder::ethernet2(N2_MAC, UL_MAC)
        .ipv4(src, NODE_UL, 64)
        .tcp(sport, dport, 1001, 64240);
    for f in flags.chars() {
        b = match f {
            'S' => b.syn(),
            'A' => b.ack(5001),
            'P' => b.psh(),
            'F' => b.fin(),
            'R' => b.rst(),
            _ => panic!("flag {f}"),
        };
    }
    b.write(&mut out, payload).unwrap();
    out
}

/// [`outside_snap`] with host policy under policy generation `generation`,
/// TCP 10256 allowed (`open`) or denied by the host rule.
fn outside_snap_gen(generation: u64, open: bool) -> Snapshot {
    let mut spec = outside_snap(true).spec.clone();
    spec.policy.generation = generation;
    if !open {
        for (port, d) in &mut spec.policy.cells[0].tcp {
            if *port == 10256 {
                *d = Decision::deny(RuleId(1));
            }
        }
    }
    Snapshot::build(spec).unwrap()
}

/// Every segment of a flow from outside to a server port of the node goes
/// through the pass (the XDP program hands them all, `host_in`), tracked
/// one way: the handshake's ACK and the data pass after the SYN; a policy
/// change that denies the port cuts the established flow (`policy-denied`),
/// a later one that allows it again revives it; a segment with no entry
/// (a SYN-cookie ACK, a flow older than the policy) is judged like an
/// opening; a reply to the node's own flow (to an ephemeral port) is not
/// the host policy's.
#[test]
fn host_policy_follows_established_flows_from_outside() {
    let open = outside_snap_gen(1, true);
    let closed = outside_snap_gen(2, false);
    let reopened = outside_snap_gen(3, true);
    let mut st = WorkerState::new();
    st.set_now(SEC);
    let denied = Verdict::Drop(DropReason::PolicyDenied);
    // (snapshot, segment, expected: Some(port) = Tx there, None = dropped
    // as policy-denied).
    let table: [(&Snapshot, Vec<u8>, Option<u16>); 14] = [
        // The handshake and data of an allowed flow: all to the kernel.
        (&open, seg_from(WORLD, 40000, 10256, "S", b""), Some(HOST)),
        (&open, seg_from(WORLD, 40000, 10256, "A", b""), Some(HOST)),
        (
            &open,
            seg_from(WORLD, 40000, 10256, "PA", b"one"),
            Some(HOST),
        ),
        // A SYN-cookie ACK (no SYN seen): the allowed port passes, the
        // denied one does not, nor data or a FIN there.
        (&open, seg_from(N2_UL, 40001, 10256, "A", b""), Some(HOST)),
        (&open, seg_from(N2_UL, 40002, 10257, "A", b""), None),
        (&open, seg_from(N2_UL, 40002, 10257, "PA", b"x"), None),
        (&open, seg_from(N2_UL, 40003, 8080, "FA", b""), None),
        // The failsafe port, mid-stream: open.
        (&open, seg_from(N2_UL, 40004, 22, "PA", b"ssh"), Some(HOST)),
        // The policy changes: 10256 denied. The established flow stops,
        // both of them, and a new SYN is refused.
        (&closed, seg_from(WORLD, 40000, 10256, "PA", b"two"), None),
        (&closed, seg_from(WORLD, 40000, 10256, "PA", b"two"), None),
        (&closed, seg_from(N2_UL, 40001, 10256, "A", b""), None),
        (&closed, seg_from(WORLD, 40005, 10256, "S", b""), None),
        // Allowed again: the flow passes again.
        (
            &reopened,
            seg_from(WORLD, 40000, 10256, "PA", b"three"),
            Some(HOST),
        ),
        (&reopened, seg_from(N2_UL, 40004, 22, "A", b""), Some(HOST)),
    ];
    for (i, (s, frame, want)) in table.iter().enumerate() {
        let (v, out) = run(frame, UL, s, &mut st);
        match want {
            Some(port) => {
                assert_tx(&v, *port);
                // Byte for byte but for the MACs, the TTL and the IPv4
                // header checksum.
                assert_eq!(out[34..], frame[34..], "row {i}: transport bytes");
                assert_eq!(link(&out), (NODE_MAC, HOST_PORT_MAC, 63), "row {i}");
            }
            None => assert_eq!(v, denied, "row {i}"),
        }
    }
    // The flow event of the cut names the host rule.
    let mut events = Vec::new();
    st.flows().drain(&mut events);
    assert!(
        events.iter().any(|e| !e.allowed
            && e.key.sport == 40000
            && e.key.dport == 10256
            && e.ingress_rule == RuleId(1)),
        "{events:?}"
    );
    // A reply to the node's own flow (an ACK to an ephemeral port) is not
    // judged by host policy: never handed to the kernel through the pass
    // (the XDP program leaves it to the kernel).
    let (v, _) = run(&seg_from(WORLD, 443, 40000, "PA", b"r"), UL, &open, &mut st);
    assert!(
        matches!(v, Verdict::Drop(r) if r != DropReason::PolicyDenied),
        "{v:?}"
    );
}

/// The node's IPv6 underlay address and a world host's.
const NODE_UL6: [u8; 16] = [0xfd, 0, 1, 0x72, 0, 0x30, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const WORLD6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

/// [`outside_snap_gen`] with the node's IPv6 underlay address among its
/// own (behind the host port and in its host tables).
fn outside_snap6(generation: u64, open: bool) -> Snapshot {
    let mut spec = outside_snap_gen(generation, open).spec.clone();
    spec.host.as_mut().unwrap().addrs.push(NODE_UL6.into());
    spec.policy
        .host
        .as_mut()
        .unwrap()
        .addrs
        .push(NODE_UL6.into());
    Snapshot::build(spec).unwrap()
}

/// An IPv6 frame from the world to `dst`: TCP with `flags` (as
/// [`seg_from`]), or UDP (`flags` = "udp"), or an ICMPv6 echo request
/// (`flags` = "echo").
fn from_world6(dst: [u8; 16], sport: u16, dport: u16, flags: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let b = PacketBuilder::ethernet2(N2_MAC, UL_MAC).ipv6(WORLD6, dst, 64);
    match flags {
        "udp" => b.udp(sport, dport).write(&mut out, b"ping").unwrap(),
        "echo" => b
            .icmpv6_echo_request(7, 1)
            .write(&mut out, b"ping")
            .unwrap(),
        _ => {
            let mut t = b.tcp(sport, dport, 1001, 64240);
            for f in flags.chars() {
                t = match f {
                    'S' => t.syn(),
                    'A' => t.ack(5001),
                    'P' => t.psh(),
                    _ => panic!("flag {f}"),
                };
            }
            t.write(&mut out, b"").unwrap()
        }
    }
    out
}

/// `frame` (IPv6) with an 8-byte Hop-by-Hop Options header (a PadN
/// option) between the fixed header and the transport.
fn with_hop_by_hop(frame: &[u8]) -> Vec<u8> {
    let (eth_ip, l4) = frame.split_at(14 + 40);
    let mut out = eth_ip.to_vec();
    let next = out[14 + 6];
    out[14 + 6] = 0; // Hop-by-Hop
    let plen = u16::from_be_bytes([out[14 + 4], out[14 + 5]]) + 8;
    out[14 + 4..14 + 6].copy_from_slice(&plen.to_be_bytes());
    out.extend_from_slice(&[next, 0, 1, 4, 0, 0, 0, 0]);
    out.extend_from_slice(l4);
    out
}

/// Host policy judges IPv6 from outside (the XDP program's `host_in6`) as
/// it does IPv4: the allowed port reaches the node's kernel byte for byte
/// (hop limit − 1), every segment of it; other ports, UDP outside the
/// ephemeral range, an echo request and a SYN behind a Hop-by-Hop header
/// are denied; the failsafe port is open; a policy change cuts the
/// established flow; a link-local destination and a reply to an ephemeral
/// port are not the host policy's.
#[test]
fn host_policy_judges_ipv6_from_outside_the_node() {
    let open = outside_snap6(1, true);
    let closed = outside_snap6(2, false);
    let mut st = WorkerState::new();
    st.set_now(SEC);
    let denied = Verdict::Drop(DropReason::PolicyDenied);
    let ul = NODE_UL6;
    let table: [(&Snapshot, Vec<u8>, Option<u16>); 11] = [
        (&open, from_world6(ul, 40000, 10256, "S"), Some(HOST)),
        (&open, from_world6(ul, 40000, 10256, "A"), Some(HOST)),
        (&open, from_world6(ul, 40000, 10256, "PA"), Some(HOST)),
        (&open, from_world6(ul, 40001, 8080, "S"), None),
        (&open, from_world6(ul, 40002, 10257, "A"), None),
        (&open, from_world6(ul, 40003, 22, "S"), Some(HOST)),
        (&open, from_world6(ul, 5000, 9999, "udp"), None),
        (&open, from_world6(ul, 0, 0, "echo"), None),
        (
            &open,
            with_hop_by_hop(&from_world6(ul, 40004, 8080, "S")),
            None,
        ),
        // The policy changes: the established flow stops.
        (&closed, from_world6(ul, 40000, 10256, "PA"), None),
        (&closed, from_world6(ul, 40005, 10256, "S"), None),
    ];
    for (i, (s, frame, want)) in table.iter().enumerate() {
        let (v, out) = run(frame, UL, s, &mut st);
        match want {
            Some(port) => {
                assert_tx(&v, *port);
                assert_eq!(out[54..], frame[54..], "row {i}: transport bytes");
                assert_eq!(out[22..54], frame[22..54], "row {i}: addresses");
                assert_eq!(link(&out), (NODE_MAC, HOST_PORT_MAC, 63), "row {i}");
            }
            None => assert_eq!(v, denied, "row {i}"),
        }
    }
    // Not the host policy's: a reply to the node's own flow (to an
    // ephemeral port), UDP to one, and a link-local destination.
    let mut ll = [0u8; 16];
    ll[0] = 0xfe;
    ll[1] = 0x80;
    ll[15] = 1;
    for frame in [
        from_world6(ul, 443, 40000, "PA"),
        from_world6(ul, 53, 40000, "udp"),
        from_world6(ll, 40006, 8080, "S"),
    ] {
        let (v, _) = run(&frame, UL, &open, &mut st);
        assert!(
            matches!(v, Verdict::Drop(r) if r != DropReason::PolicyDenied),
            "{v:?}"
        );
    }
}

/// A full-size segment (1500-byte IP datagram, DF) from outside to a
/// server of the node, under host policy, does not fit the host port (the
/// pods' MTU, 1450): the sender gets Fragmentation Needed back out of the
/// underlay — from the node's address it reached, to its MAC, naming the
/// host port's MTU — instead of a silent drop (a PMTUD black hole: TCP
/// from a sender with a 1500-byte path stalled). Found by `weir-perf
/// host-policy`. The same segment at 1450 bytes goes to the kernel.
#[test]
fn a_too_big_segment_from_outside_gets_fragmentation_needed_on_the_underlay() {
    let open = outside_snap_gen(1, true);
    let mut st = WorkerState::new();
    st.set_now(SEC);
    let seg = |ip_len: usize| {
        let mut f = seg_from(WORLD, 40000, 10256, "PA", &vec![0x61; ip_len - 40]);
        // DF, and the header checksum again.
        f[14 + 6] |= 0x40;
        f[14 + 10..14 + 12].fill(0);
        let sum = internet_checksum(&f[14..34]);
        f[14 + 10..14 + 12].copy_from_slice(&sum.to_be_bytes());
        f
    };
    let (v, _) = run(&seg_from(WORLD, 40000, 10256, "S", b""), UL, &open, &mut st);
    assert_tx(&v, HOST);
    let (v, _) = run(&seg(1450), UL, &open, &mut st);
    assert_tx(&v, HOST);
    let big = seg(1500);
    let (v, out) = run(&big, UL, &open, &mut st);
    assert_tx(&v, UL);
    assert_eq!(&out[..6], &N2_MAC, "back to the sender's MAC");
    assert_eq!(&out[6..12], &UL_MAC, "from the underlay's");
    let p = etherparse::SlicedPacket::from_ethernet(&out).expect("ICMP frame");
    let Some(etherparse::NetSlice::Ipv4(ip)) = p.net else {
        panic!("IPv4")
    };
    assert_eq!(ip.header().source(), NODE_UL, "from the address reached");
    assert_eq!(ip.header().destination(), WORLD);
    let icmp = ip.payload().payload;
    assert_eq!((icmp[0], icmp[1]), (3, 4), "fragmentation needed");
    assert_eq!(
        u16::from_be_bytes([icmp[6], icmp[7]]),
        1450,
        "the next-hop MTU"
    );
    // It quotes the segment's header.
    assert_eq!(&icmp[8..8 + 20], &big[14..34]);
}

/// RFC 1071's checksum of `b` (even length).
fn internet_checksum(b: &[u8]) -> u16 {
    let mut sum: u32 = b
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}
