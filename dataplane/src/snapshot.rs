//! The tables workers read: immutable, built by the control side, swapped in
//! whole between batches (see `runtime`). Nothing here is written per packet.
#![forbid(unsafe_code)]

use crate::policy::{CompiledPolicy, PolicyError, PolicySpec};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};

/// The snapshot's lookup maps, read by the pass per packet (endpoints by
/// address, Service frontends, tunnel peers and routes, uplink prefixes):
/// hashed with foldhash (`fast::RandomState`, seeded per process) instead
/// of std's SipHash-1-3, which was 4–8 % of the pass at 1k flows (perf of
/// `conntrack_bench`, docs/performance.md). foldhash is not built to resist
/// HashDoS, and needs not here: the keys *stored* are the control plane's
/// (pod, Service, node addresses and prefixes), so a packet can only probe
/// them, and a probe costs at most the chain its hash lands on, which
/// addresses from the API server decide. Maps keyed by what packets bring
/// (the L7 flows, conntrack) keep their own hashing.
pub(crate) type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
type Set<K> = HashSet<K, foldhash::fast::RandomState>;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Index of a managed interface in [`SnapshotSpec::ports`].
pub type PortId = u16;

/// A managed interface on this node: the node-side end of a pod's veth.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Port {
    /// Interface name in the node's network namespace.
    pub name: String,
    /// MAC of the node-side end; the source MAC of frames weir sends to the pod,
    /// and the MAC the pod's gateway (169.254.1.1 / fe80::1) resolves to.
    pub mac: [u8; 6],
    /// MTU of the pod's link (IP packet size); bigger packets are not forwarded.
    #[serde(default = "default_mtu")]
    pub mtu: u16,
}

fn default_mtu() -> u16 {
    1500
}

/// A pod on this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// `namespace/name`, for status, flows and explain.
    pub name: String,
    /// The port (interface) the pod sits behind.
    pub port: PortId,
    /// The pod's own MAC (its eth0): destination MAC of frames weir sends to it.
    pub mac: [u8; 6],
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
}

/// Plain-data form of a snapshot: what the agent writes and the dataplane reads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotSpec {
    /// Increases with every change; workers report the generation they run.
    pub generation: u64,
    pub node: String,
    /// Node address used as the source of ICMP errors weir generates (IPv4).
    pub node_ipv4: Option<Ipv4Addr>,
    /// Node address used as the source of ICMPv6 errors weir generates.
    pub node_ipv6: Option<Ipv6Addr>,
    pub ports: Vec<Port>,
    pub endpoints: Vec<Endpoint>,
    /// Compiled network policy (see [`crate::policy`]); empty = allow all.
    #[serde(default)]
    pub policy: PolicySpec,
    /// The overlay to the other nodes (absent: single-node, no tunnel).
    #[serde(default)]
    pub tunnel: Option<TunnelSpec>,
    /// Service frontends of the whole cluster (every node load-balances its
    /// own pods' traffic to a ClusterIP): see docs/services.md.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<ServiceFrontend>,
    /// The node's own port into the dataplane (absent: pod ↔ node traffic
    /// is the kernel's, and the node cannot reach its pods).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<HostPort>,
    /// The way out to the world (SNAT on the underlay address): see
    /// docs/egress.md. Absent: traffic to addresses outside every pod CIDR
    /// is `no-route`, as before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uplink: Option<UplinkSpec>,
}

/// The host port: a veth pair whose node end (`weir-host0`) carries routes
/// to the node's pod CIDRs, and whose other end is the port `port` (a pod
/// port without an endpoint). Frames from it are the node's; pod frames to
/// one of `addrs` leave through it. See docs/datapath.md, "The host port".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostPort {
    /// Index in [`SnapshotSpec::ports`] of the dataplane's end.
    pub port: PortId,
    /// MAC of the node's end: destination MAC of frames delivered to the node.
    pub node_mac: [u8; 6],
    /// The node's addresses: the sources the node may send from, and the
    /// destinations pods reach the node at.
    pub addrs: Vec<IpAddr>,
}

/// First port of weir's SNAT range on the node's underlay address. Outside
/// the kernel's default `ip_local_port_range` (32768-60999) and the NodePort
/// range (30000-32767); the XDP program's underlay branch hands TCP/UDP to
/// these ports to the dataplane (`SNAT_FIRST`/`SNAT_LAST` there, kept equal
/// by a test in `xdp-redirect`).
pub const SNAT_PORT_FIRST: u16 = 61000;
/// Last port of weir's SNAT range.
pub const SNAT_PORT_LAST: u16 = 65535;

/// The node's uplink: pod traffic to an address outside the cluster leaves
/// through the underlay interface to `gateway_mac`, its source rewritten to
/// the underlay address (`tunnel.underlay.ipv4`) unless the destination is
/// in `non_masquerade`. IPv6 destinations outside the cluster leave the
/// same way, masqueraded on `node_ipv6` (none: they stay `no-route`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UplinkSpec {
    /// The next hop toward the world (informative; its MAC is what counts).
    pub gateway_ipv4: Ipv4Addr,
    /// Destination MAC of frames to the world.
    pub gateway_mac: [u8; 6],
    /// Cluster ranges (pod CIDRs of every node, Service ranges, the
    /// underlay subnet): a destination in them that does not route is
    /// `no-route`, never sent to the world.
    pub cluster_cidrs: Vec<(IpAddr, u8)>,
    /// Destinations reached without SNAT (ip-masq-agent's
    /// `nonMasqueradeCIDRs`): the pod's address stays the source.
    #[serde(default)]
    pub non_masquerade: Vec<(IpAddr, u8)>,
    /// This node's IPv4 pod CIDR: with `non_masquerade` set, frames from
    /// the uplink to it (the replies of non-masqueraded flows, and flows
    /// those destinations open) are the dataplane's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_cidr_v4: Option<(Ipv4Addr, u8)>,
    /// The node's IPv6 underlay address: the SNAT66 source of pod → IPv6
    /// world traffic (docs/egress.md). `None`: IPv6 to the world is
    /// `no-route`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_ipv6: Option<Ipv6Addr>,
    /// The gateway's IPv6 address (informative, like `gateway_ipv4`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_ipv6: Option<Ipv6Addr>,
    /// Destination MAC of IPv6 frames to the world (`None`: `gateway_mac`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_mac_v6: Option<[u8; 6]>,
    /// This node's IPv6 pod CIDR: with an IPv6 `non_masquerade` entry (and
    /// `node_ipv6`), frames from the uplink to it are the dataplane's, as
    /// `pod_cidr_v4`'s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_cidr_v6: Option<(Ipv6Addr, u8)>,
}

/// One (ClusterIP, protocol, port) of a Service and its backends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceFrontend {
    /// `namespace/name` of the Service.
    pub service: String,
    /// The Service port's name, if any.
    #[serde(default)]
    pub port_name: Option<String>,
    pub ip: IpAddr,
    /// IP protocol number: 6 (TCP), 17 (UDP) or 132 (SCTP).
    pub proto: u8,
    pub port: u16,
    /// Backends of the ClusterIP's family, sorted by pod name.
    pub backends: Vec<ServiceBackend>,
    /// `sessionAffinity: ClientIP` timeout in seconds.
    #[serde(default)]
    pub affinity_timeout_s: Option<u32>,
    /// The Service port's `nodePort` (NodePort Services): reachable on the
    /// node's underlay address of the frontend's family from the uplink
    /// (docs/services.md, NodePort). In [`NODE_PORT_FIRST`]..=[`NODE_PORT_LAST`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_port: Option<u16>,
    /// `externalTrafficPolicy: Local`: node-port traffic goes to this
    /// node's backends only, without SNAT.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub external_local: bool,
    /// `internalTrafficPolicy: Local`: pods' flows to the ClusterIP go to
    /// backends on their own node only (none: refused as without
    /// endpoints).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub internal_local: bool,
    /// `ip` is one of the Service's external addresses (`spec.externalIPs`,
    /// a load balancer's), not its ClusterIP: TCP/UDP from the uplink to it
    /// is load balanced as a node port's (docs/services.md, LoadBalancer
    /// and external IPs).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub external: bool,
}

/// The NodePort range (defined with the Service types in weir-model).
pub use weir_model::service::{NODE_PORT_FIRST, NODE_PORT_LAST};

/// A backend of a [`ServiceFrontend`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceBackend {
    /// `namespace/name` of the pod (the Maglev key with its address).
    pub pod: String,
    pub ip: IpAddr,
    pub port: u16,
    /// Ready and not terminating: takes new flows. Others only keep the
    /// flows conntrack already sent them.
    pub active: bool,
}

/// Encapsulation of the overlay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encap {
    /// VXLAN (RFC 7348); with the Group Policy extension toward
    /// identity-aware peers.
    Vxlan,
    /// Geneve (RFC 8926); with weir's identity option toward identity-aware
    /// peers.
    Geneve,
}

/// The node's interface toward the other nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Underlay {
    /// Interface name in the node's network namespace (e.g. `ul0`).
    pub name: String,
    pub mac: [u8; 6],
    /// Outer source address of encapsulated frames; outer destination of
    /// those weir decapsulates.
    pub ipv4: Ipv4Addr,
    /// MTU of the underlay link (IP packet size).
    pub mtu: u16,
}

/// Another node of the overlay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunnelPeer {
    pub node: String,
    /// Its underlay address (outer destination).
    pub ipv4: Ipv4Addr,
    /// Its underlay MAC: the outer destination MAC (bridged underlay, the
    /// peer is the next hop).
    pub mac: [u8; 6],
    /// Inner destination MAC toward it (its VTEP).
    pub vtep_mac: [u8; 6],
    /// The pod CIDRs behind it (network, prefix length).
    pub pod_cidrs: Vec<(IpAddr, u8)>,
    /// weir peer: VXLAN-GBP / Geneve identity option. False for kernel
    /// VXLAN peers: plain VXLAN, and their frames are judged by address.
    pub identity_aware: bool,
}

/// The overlay: encapsulation, VNI, port, underlay and peers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunnelSpec {
    pub encap: Encap,
    /// 24-bit virtual network identifier.
    pub vni: u32,
    /// UDP destination port (4789 for VXLAN, 6081 for Geneve by convention).
    pub udp_port: u16,
    pub underlay: Underlay,
    /// Our VTEP MAC: inner source MAC of frames we send, and the inner
    /// destination MAC kernel peers send to us.
    pub vtep_mac: [u8; 6],
    pub peers: Vec<TunnelPeer>,
}

/// Errors in a snapshot spec; a bad spec is rejected whole, the previous one stays.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SnapshotError {
    /// endpoint {0}: port index {1} is not in the port list
    #[error("endpoint {0}: port index {1} is not in the port list")]
    UnknownPort(String, PortId),
    /// endpoint {0}: address {1} is already used by endpoint {2}
    #[error("endpoint {0}: address {1} is already used by endpoint {2}")]
    DuplicateAddress(String, String, String),
    /// too many ports ({0}); at most 65535
    #[error("too many ports ({0}); at most 65535")]
    TooManyPorts(usize),
    /// the compiled policy is inconsistent
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// policy has tables for {0} endpoints but the snapshot has {1}
    #[error("policy has tables for {0} endpoints but the snapshot has {1}")]
    PolicyEndpoints(usize, usize),
    /// tunnel: {0}
    #[error("tunnel: {0}")]
    Tunnel(String),
    /// service {0}: {1}
    #[error("service {0}: {1}")]
    Service(String, String),
    /// host port: {0}
    #[error("host port: {0}")]
    Host(String),
    /// uplink: {0}
    #[error("uplink: {0}")]
    Uplink(String),
}

/// A set of IPv4 prefixes, looked up by longest prefix in one hash set per
/// prefix length present (at most 33 probes).
#[derive(Debug, Clone, Default)]
pub struct PrefixSet4 {
    by_len: Vec<(u8, Set<u32>)>,
}

/// A short list of IPv6 prefixes (the cluster ranges: a handful), looked
/// up linearly; no allocation per lookup.
#[derive(Debug, Clone, Default)]
pub struct PrefixSet6 {
    nets: Vec<(u128, u128)>,
}

impl PrefixSet6 {
    /// The IPv6 entries of `cidrs` (IPv4 ones are [`PrefixSet4`]'s).
    fn build(what: &str, cidrs: &[(IpAddr, u8)]) -> Result<Self, SnapshotError> {
        let mut nets = Vec::new();
        for &(a, len) in cidrs {
            match a {
                IpAddr::V6(a) if len <= 128 => {
                    let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
                    nets.push((u128::from(a) & mask, mask));
                }
                IpAddr::V6(a) => {
                    return Err(SnapshotError::Uplink(format!(
                        "{what}: bad prefix {a}/{len}"
                    )))
                }
                IpAddr::V4(_) => {}
            }
        }
        Ok(PrefixSet6 { nets })
    }

    pub fn contains(&self, a: Ipv6Addr) -> bool {
        let a = u128::from(a);
        self.nets.iter().any(|&(net, mask)| a & mask == net)
    }
}

impl PrefixSet4 {
    fn build(what: &str, cidrs: &[(IpAddr, u8)]) -> Result<Self, SnapshotError> {
        let mut by_len: Vec<(u8, Set<u32>)> = Vec::new();
        for &(a, len) in cidrs {
            match a {
                IpAddr::V4(a) if len <= 32 => {
                    let i = match by_len.iter().position(|e| e.0 == len) {
                        Some(i) => i,
                        None => {
                            by_len.push((len, Set::default()));
                            by_len.len() - 1
                        }
                    };
                    by_len[i].1.insert(mask4(a.into(), len));
                }
                // IPv6 ranges are `PrefixSet6`'s.
                IpAddr::V6(_) if len <= 128 => {}
                _ => {
                    return Err(SnapshotError::Uplink(format!(
                        "{what}: bad prefix {a}/{len}"
                    )))
                }
            }
        }
        Ok(PrefixSet4 { by_len })
    }

    pub fn contains(&self, a: Ipv4Addr) -> bool {
        let a = u32::from(a);
        self.by_len
            .iter()
            .any(|(len, set)| set.contains(&mask4(a, *len)))
    }
}

/// Lookup form of [`UplinkSpec`].
#[derive(Debug, Clone)]
pub struct UplinkTables {
    /// The underlay port.
    pub port: PortId,
    /// The SNAT address (the underlay address).
    pub node_ipv4: Ipv4Addr,
    pub node_mac: [u8; 6],
    pub gateway_mac: [u8; 6],
    pub mtu: u16,
    pub cluster: PrefixSet4,
    pub non_masquerade: PrefixSet4,
    /// (network, mask) of this node's IPv4 pod CIDR when destinations are
    /// not masqueraded: frames from the uplink to it are routed to pods.
    pub routed_v4: Option<(u32, u32)>,
    /// The SNAT66 address (the node's IPv6 underlay address), if any.
    pub node_ipv6: Option<Ipv6Addr>,
    pub gateway_mac_v6: [u8; 6],
    /// The IPv6 cluster ranges.
    pub cluster6: PrefixSet6,
    /// IPv6 destinations reached without SNAT66.
    pub non_masquerade6: PrefixSet6,
    /// (network, mask) of this node's IPv6 pod CIDR when IPv6 destinations
    /// are not masqueraded: frames from the uplink to it are routed to pods.
    pub routed_v6: Option<(u128, u128)>,
}

/// Key of a Service frontend: (ClusterIP, IP protocol, port).
pub type FrontendKey = (IpAddr, u8, u16);

/// Lookup form of the frontends: exact match on (ClusterIP, proto, port),
/// and per frontend a Maglev table over its active backends.
#[derive(Debug, Clone, Default)]
pub struct ServiceTables {
    by_key: Map<FrontendKey, u32>,
    /// Every ClusterIP (a packet to one on a port no frontend has is not
    /// a Service flow: it is refused like one without endpoints).
    ips: Set<IpAddr>,
    /// Every backend (address, proto, port) of every frontend, active or
    /// not: only a packet from one can be a Service reply, so other
    /// traffic skips the NAT table (and its lock).
    backends: Set<FrontendKey>,
    /// Per frontend: Maglev entries, each an index into its `backends`.
    maglev: Vec<Vec<u16>>,
    /// (proto, nodePort) → frontend.
    node_ports: Map<(u8, u16, bool), u32>,
    /// The external frontends' addresses (`ServiceFrontend::external`).
    externals: Set<IpAddr>,
}

impl ServiceTables {
    fn build(fronts: &[ServiceFrontend]) -> Result<Self, SnapshotError> {
        let mut by_key = Map::with_capacity_and_hasher(fronts.len(), Default::default());
        let mut ips = Set::default();
        let mut backends = Set::default();
        let mut maglev = Vec::with_capacity(fronts.len());
        let mut node_ports = Map::default();
        let mut externals = Set::default();
        for (i, f) in fronts.iter().enumerate() {
            let err = |m: String| SnapshotError::Service(f.service.clone(), m);
            if let Some(np) = f.node_port {
                if !(NODE_PORT_FIRST..=NODE_PORT_LAST).contains(&np) {
                    return Err(err(format!(
                        "nodePort {np} is outside {NODE_PORT_FIRST}-{NODE_PORT_LAST}"
                    )));
                }
                // A dual-stack Service's IPv4 and IPv6 frontends share
                // the number: one map per family.
                if node_ports
                    .insert((f.proto, np, f.ip.is_ipv6()), i as u32)
                    .is_some()
                {
                    return Err(err(format!("nodePort {np}/{} given twice", f.proto)));
                }
            }
            if f.port == 0 || !matches!(f.proto, 6 | 17 | 132) {
                return Err(err(format!("bad frontend {}/{}", f.proto, f.port)));
            }
            if by_key.insert((f.ip, f.proto, f.port), i as u32).is_some() {
                return Err(err(format!(
                    "frontend {}:{}/{} given twice",
                    f.ip, f.port, f.proto
                )));
            }
            if f.backends.len() >= usize::from(u16::MAX) {
                return Err(err("too many backends".into()));
            }
            for b in &f.backends {
                if b.ip.is_ipv4() != f.ip.is_ipv4() || b.port == 0 {
                    return Err(err(format!(
                        "backend {} {}:{} is unusable",
                        b.pod, b.ip, b.port
                    )));
                }
            }
            // Pods reach external addresses as ClusterIPs (kube-proxy's
            // short-circuit).
            ips.insert(f.ip);
            if f.external {
                externals.insert(f.ip);
            }
            backends.extend(f.backends.iter().map(|b| (b.ip, f.proto, b.port)));
            // Keys: pod name and address, so a re-created pod with a new
            // address is a new backend.
            let active: Vec<(usize, Vec<u8>)> = f
                .backends
                .iter()
                .enumerate()
                .filter(|(_, b)| b.active)
                .map(|(j, b)| (j, format!("{}|{}", b.pod, b.ip).into_bytes()))
                .collect();
            let keys: Vec<&[u8]> = active.iter().map(|(_, k)| k.as_slice()).collect();
            let table = crate::maglev::build(&keys, crate::maglev::size_for(keys.len()));
            maglev.push(
                table
                    .into_iter()
                    .map(|e| active[e as usize].0 as u16)
                    .collect(),
            );
        }
        Ok(ServiceTables {
            by_key,
            ips,
            backends,
            maglev,
            node_ports,
            externals,
        })
    }

    /// Whether `ip` is an external address of some Service (from the
    /// uplink: load balanced, docs/services.md).
    pub fn is_external(&self, ip: IpAddr) -> bool {
        !self.externals.is_empty() && self.externals.contains(&ip)
    }

    /// The external IPv4 addresses, sorted (the XDP program's
    /// `EXTERNAL_V4`).
    pub fn external_v4(&self) -> Vec<Ipv4Addr> {
        let mut v: Vec<Ipv4Addr> = self
            .externals
            .iter()
            .filter_map(|a| match a {
                IpAddr::V4(a) => Some(*a),
                IpAddr::V6(_) => None,
            })
            .collect();
        v.sort();
        v
    }

    /// The frontend index of (ClusterIP, proto, port).
    pub fn frontend(&self, ip: IpAddr, proto: u8, port: u16) -> Option<u32> {
        self.by_key.get(&(ip, proto, port)).copied()
    }

    /// Whether (`ip`, `proto`, `port`) is a backend of some frontend (a
    /// packet from it may be a Service reply).
    pub fn is_backend(&self, ip: IpAddr, proto: u8, port: u16) -> bool {
        self.backends.contains(&(ip, proto, port))
    }

    /// Whether `ip` is a ClusterIP.
    /// The frontend of a node port (IPv4).
    pub fn node_port(&self, proto: u8, port: u16) -> Option<u32> {
        self.node_ports.get(&(proto, port, false)).copied()
    }

    /// The frontend of a node port on the node's IPv6 underlay address.
    pub fn node_port_v6(&self, proto: u8, port: u16) -> Option<u32> {
        self.node_ports.get(&(proto, port, true)).copied()
    }

    pub fn is_cluster_ip(&self, ip: IpAddr) -> bool {
        self.ips.contains(&ip)
    }

    /// The backend index Maglev gives `hash` in frontend `idx`; `None`
    /// when the frontend has no active backend.
    pub fn pick(&self, idx: u32, hash: u64) -> Option<u16> {
        let t = self.maglev.get(idx as usize)?;
        if t.is_empty() {
            return None;
        }
        Some(t[(hash % t.len() as u64) as usize])
    }
}

/// Lookup form of a [`TunnelSpec`]: peers by underlay address, remote pod
/// CIDRs by longest prefix (one hash map per prefix length present, longest
/// first: at most 33 / 129 probes whatever the number of peers).
#[derive(Debug, Clone, Default)]
pub struct TunnelTables {
    /// The underlay's port id: one past the pod ports.
    pub port: PortId,
    /// Inner MTU (IP packet size) toward peers: underlay MTU − the largest
    /// encapsulation overhead of this encap.
    pub inner_mtu: u16,
    by_ip: Map<Ipv4Addr, u32>,
    v4: Vec<(u8, Map<u32, u32>)>,
    v6: Vec<(u8, Map<u128, u32>)>,
}

fn mask4(a: u32, len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        a & (u32::MAX << (32 - u32::from(len)))
    }
}

fn mask6(a: u128, len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        a & (u128::MAX << (128 - u32::from(len)))
    }
}

impl TunnelTables {
    fn build(t: &TunnelSpec, port: PortId) -> Result<Self, SnapshotError> {
        let err = |m: String| Err(SnapshotError::Tunnel(m));
        if t.vni > crate::wire::vxlan::VNI_MAX {
            return err(format!("VNI {} does not fit 24 bits", t.vni));
        }
        if t.udp_port == 0 {
            return err("UDP port 0".into());
        }
        let overhead = crate::encap::max_overhead(t.encap) as u16;
        // 68: the smallest IPv4 MTU (RFC 791).
        if t.underlay.mtu < overhead + 68 {
            return err(format!(
                "underlay MTU {} leaves no room for {overhead} bytes of encapsulation",
                t.underlay.mtu
            ));
        }
        let mut by_ip = Map::default();
        let mut names = HashSet::new();
        // (family, first, last, peer) of every CIDR, for the overlap check.
        let mut ranges: Vec<(u8, u128, u128, u32)> = Vec::new();
        let mut v4: Vec<(u8, Map<u32, u32>)> = Vec::new();
        let mut v6: Vec<(u8, Map<u128, u32>)> = Vec::new();
        for (i, p) in t.peers.iter().enumerate() {
            let idx = i as u32;
            if !names.insert(p.node.as_str()) {
                return err(format!("peer {} listed twice", p.node));
            }
            if p.ipv4 == t.underlay.ipv4 {
                return err(format!("peer {} has this node's underlay address", p.node));
            }
            if by_ip.insert(p.ipv4, idx).is_some() {
                return err(format!(
                    "peer {}: underlay address {} used twice",
                    p.node, p.ipv4
                ));
            }
            for &(a, len) in &p.pod_cidrs {
                match a {
                    IpAddr::V4(a) if len <= 32 => {
                        let n = mask4(a.into(), len);
                        let last = n | (u32::MAX.checked_shr(u32::from(len)).unwrap_or(0));
                        ranges.push((4, n.into(), last.into(), idx));
                        let i = match v4.iter().position(|e| e.0 == len) {
                            Some(i) => i,
                            None => {
                                v4.push((len, Map::default()));
                                v4.len() - 1
                            }
                        };
                        v4[i].1.insert(n, idx);
                    }
                    IpAddr::V6(a) if len <= 128 => {
                        let n = mask6(a.into(), len);
                        let last = n | (u128::MAX.checked_shr(u32::from(len)).unwrap_or(0));
                        ranges.push((6, n, last, idx));
                        let i = match v6.iter().position(|e| e.0 == len) {
                            Some(i) => i,
                            None => {
                                v6.push((len, Map::default()));
                                v6.len() - 1
                            }
                        };
                        v6[i].1.insert(n, idx);
                    }
                    _ => return err(format!("peer {}: bad prefix {a}/{len}", p.node)),
                }
            }
        }
        // Sorted by start, any overlap shows between neighbours.
        ranges.sort_unstable();
        for w in ranges.windows(2) {
            let (a, b) = (w[0], w[1]);
            if a.0 == b.0 && b.1 <= a.2 {
                return err(format!(
                    "pod CIDRs of peers {} and {} overlap",
                    t.peers[a.3 as usize].node, t.peers[b.3 as usize].node
                ));
            }
        }
        v4.sort_by_key(|e| std::cmp::Reverse(e.0));
        v6.sort_by_key(|e| std::cmp::Reverse(e.0));
        Ok(TunnelTables {
            port,
            inner_mtu: t.underlay.mtu - overhead,
            by_ip,
            v4,
            v6,
        })
    }

    /// The peer whose pod CIDRs hold `a` (longest prefix).
    pub fn peer_for(&self, a: IpAddr) -> Option<u32> {
        match a {
            IpAddr::V4(a) => {
                let a = u32::from(a);
                self.v4
                    .iter()
                    .find_map(|(len, m)| m.get(&mask4(a, *len)).copied())
            }
            IpAddr::V6(a) => {
                let a = u128::from(a);
                self.v6
                    .iter()
                    .find_map(|(len, m)| m.get(&mask6(a, *len)).copied())
            }
        }
    }

    /// The peer with this underlay address.
    pub fn peer_by_ip(&self, a: Ipv4Addr) -> Option<u32> {
        self.by_ip.get(&a).copied()
    }
}

/// The lookup form workers use.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub spec: SnapshotSpec,
    by_v4: Map<Ipv4Addr, u32>,
    by_v6: Map<Ipv6Addr, u32>,
    /// Endpoint index behind each port, if any (a port holds one pod).
    by_port: Vec<Option<u32>>,
    policy: CompiledPolicy,
    tunnel: Option<TunnelTables>,
    services: ServiceTables,
    uplink: Option<UplinkTables>,
    /// Unique per [`Snapshot::build`] (see [`Snapshot::instance`]).
    instance: u64,
}

/// The next [`Snapshot::instance`] (0 is a default, never built, snapshot's).
static NEXT_INSTANCE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl Snapshot {
    /// Validates `spec` and builds the lookup tables.
    pub fn build(spec: SnapshotSpec) -> Result<Self, SnapshotError> {
        // With a tunnel the underlay takes the port id after the last pod port.
        let max_ports = PortId::MAX as usize - usize::from(spec.tunnel.is_some());
        if spec.ports.len() > max_ports {
            return Err(SnapshotError::TooManyPorts(spec.ports.len()));
        }
        let mut by_v4 = Map::default();
        let mut by_v6 = Map::default();
        let mut by_port = vec![None; spec.ports.len()];
        for (i, ep) in spec.endpoints.iter().enumerate() {
            let idx = i as u32;
            if ep.port as usize >= spec.ports.len() {
                return Err(SnapshotError::UnknownPort(ep.name.clone(), ep.port));
            }
            by_port[ep.port as usize] = Some(idx);
            if let Some(a) = ep.ipv4 {
                if let Some(prev) = by_v4.insert(a, idx) {
                    return Err(SnapshotError::DuplicateAddress(
                        ep.name.clone(),
                        a.to_string(),
                        spec.endpoints[prev as usize].name.clone(),
                    ));
                }
            }
            if let Some(a) = ep.ipv6 {
                if let Some(prev) = by_v6.insert(a, idx) {
                    return Err(SnapshotError::DuplicateAddress(
                        ep.name.clone(),
                        a.to_string(),
                        spec.endpoints[prev as usize].name.clone(),
                    ));
                }
            }
        }
        let pol = &spec.policy;
        if !pol.endpoints.is_empty() && pol.endpoints.len() != spec.endpoints.len() {
            return Err(SnapshotError::PolicyEndpoints(
                pol.endpoints.len(),
                spec.endpoints.len(),
            ));
        }
        let policy = CompiledPolicy::build(pol.clone())?;
        let tunnel = match &spec.tunnel {
            Some(t) => {
                if spec.ports.iter().any(|p| p.name == t.underlay.name) {
                    return Err(SnapshotError::Tunnel(format!(
                        "underlay {} is also a pod port",
                        t.underlay.name
                    )));
                }
                Some(TunnelTables::build(t, spec.ports.len() as PortId)?)
            }
            None => None,
        };
        let services = ServiceTables::build(&spec.services)?;
        if let Some(h) = &spec.host {
            if h.port as usize >= spec.ports.len() {
                return Err(SnapshotError::Host(format!(
                    "port index {} is not in the port list",
                    h.port
                )));
            }
            if let Some(ep) = by_port[h.port as usize] {
                return Err(SnapshotError::Host(format!(
                    "port {} is also pod {}'s",
                    spec.ports[h.port as usize].name, spec.endpoints[ep as usize].name
                )));
            }
            if let Some(a) = h.addrs.iter().find(|a| match a {
                IpAddr::V4(a) => by_v4.contains_key(a),
                IpAddr::V6(a) => by_v6.contains_key(a),
            }) {
                return Err(SnapshotError::Host(format!("address {a} is also a pod's")));
            }
        }
        let uplink = match (&spec.uplink, &spec.tunnel, &tunnel) {
            (None, _, _) => None,
            (Some(u), Some(t), Some(tt)) => Some(UplinkTables {
                port: tt.port,
                node_ipv4: t.underlay.ipv4,
                node_mac: t.underlay.mac,
                gateway_mac: u.gateway_mac,
                mtu: t.underlay.mtu,
                cluster: PrefixSet4::build("cluster_cidrs", &u.cluster_cidrs)?,
                non_masquerade: PrefixSet4::build("non_masquerade", &u.non_masquerade)?,
                routed_v4: match u.pod_cidr_v4 {
                    Some((a, len))
                        if u.non_masquerade.iter().any(|(a, _)| a.is_ipv4())
                            && (1..=32).contains(&len) =>
                    {
                        let mask = u32::MAX << (32 - u32::from(len));
                        Some((u32::from(a) & mask, mask))
                    }
                    _ => None,
                },
                node_ipv6: u.node_ipv6,
                gateway_mac_v6: u.gateway_mac_v6.unwrap_or(u.gateway_mac),
                cluster6: PrefixSet6::build("cluster_cidrs", &u.cluster_cidrs)?,
                non_masquerade6: PrefixSet6::build("non_masquerade", &u.non_masquerade)?,
                routed_v6: match u.pod_cidr_v6 {
                    Some((a, len))
                        if u.node_ipv6.is_some()
                            && u.non_masquerade.iter().any(|(a, _)| a.is_ipv6())
                            && (1..=128).contains(&len) =>
                    {
                        let mask = u128::MAX << (128 - u32::from(len));
                        Some((u128::from(a) & mask, mask))
                    }
                    _ => None,
                },
            }),
            _ => {
                return Err(SnapshotError::Uplink(
                    "needs the underlay (tunnel) it leaves through".into(),
                ))
            }
        };
        Ok(Snapshot {
            spec,
            by_v4,
            by_v6,
            by_port,
            policy,
            tunnel,
            services,
            uplink,
            instance: NEXT_INSTANCE.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        })
    }

    pub fn generation(&self) -> u64 {
        self.spec.generation
    }

    /// Which build this is: different for every [`Snapshot::build`] in the
    /// process (generations may repeat, e.g. in tests); clones share it.
    /// Per-worker caches of what was decided under a snapshot key on it.
    pub fn instance(&self) -> u64 {
        self.instance
    }

    /// The compiled policy workers judge new flows with.
    pub fn policy(&self) -> &CompiledPolicy {
        &self.policy
    }

    /// The overlay's lookup tables, if the node has a tunnel.
    pub fn tunnel(&self) -> Option<(&TunnelSpec, &TunnelTables)> {
        match (&self.spec.tunnel, &self.tunnel) {
            (Some(s), Some(t)) => Some((s, t)),
            _ => None,
        }
    }

    /// The Service frontends' lookup tables.
    pub fn services(&self) -> &ServiceTables {
        &self.services
    }

    /// Frontend `idx` as compiled.
    pub fn frontend(&self, idx: u32) -> &ServiceFrontend {
        &self.spec.services[idx as usize]
    }

    /// The uplink, if the node has one.
    pub fn uplink(&self) -> Option<&UplinkTables> {
        self.uplink.as_ref()
    }

    /// The node-port frontend a packet to `dst:port` reaches when `dst` is
    /// a node's address: this node's IPv4 or IPv6 uplink address, or
    /// another node's IPv4 underlay address (served on the client's node,
    /// as Cilium's kube-proxy replacement does: pods cannot reach the
    /// underlay). Only a port in the node-port range pays the peer lookup.
    /// `None` without an uplink, for other addresses, or when no Service
    /// has that node port.
    pub fn node_port_at(&self, dst: IpAddr, proto: u8, port: u16) -> Option<u32> {
        let u = self.uplink()?;
        match dst {
            IpAddr::V4(a) if a == u.node_ipv4 => self.services.node_port(proto, port),
            IpAddr::V4(a)
                if (NODE_PORT_FIRST..=NODE_PORT_LAST).contains(&port)
                    && self
                        .tunnel()
                        .is_some_and(|(_, t)| t.peer_by_ip(a).is_some()) =>
            {
                self.services.node_port(proto, port)
            }
            IpAddr::V6(a) if Some(a) == u.node_ipv6 => self.services.node_port_v6(proto, port),
            _ => None,
        }
    }

    /// The port id of the underlay (one past the pod ports), if any.
    pub fn underlay_port(&self) -> Option<PortId> {
        self.tunnel.as_ref().map(|t| t.port)
    }

    /// Name of the interface behind a port id: a pod port or the underlay.
    pub fn port_name(&self, id: PortId) -> Option<&str> {
        match self.port(id) {
            Some(p) => Some(&p.name),
            None if Some(id) == self.underlay_port() => {
                self.spec.tunnel.as_ref().map(|t| t.underlay.name.as_str())
            }
            None => None,
        }
    }

    pub fn endpoint(&self, idx: u32) -> &Endpoint {
        &self.spec.endpoints[idx as usize]
    }

    pub fn port(&self, id: PortId) -> Option<&Port> {
        self.spec.ports.get(id as usize)
    }

    pub fn endpoint_by_v4(&self, a: Ipv4Addr) -> Option<(u32, &Endpoint)> {
        self.by_v4.get(&a).map(|&i| (i, self.endpoint(i)))
    }

    pub fn endpoint_by_v6(&self, a: Ipv6Addr) -> Option<(u32, &Endpoint)> {
        self.by_v6.get(&a).map(|&i| (i, self.endpoint(i)))
    }

    /// The host port, if the node has one.
    pub fn host(&self) -> Option<&HostPort> {
        self.spec.host.as_ref()
    }

    /// `a` is one of the node's addresses behind the host port.
    pub fn is_host_addr(&self, a: IpAddr) -> bool {
        self.spec
            .host
            .as_ref()
            .is_some_and(|h| h.addrs.contains(&a))
    }

    /// The endpoint behind a port (the pod that sends on it).
    pub fn endpoint_on_port(&self, port: PortId) -> Option<(u32, &Endpoint)> {
        self.by_port
            .get(port as usize)
            .copied()
            .flatten()
            .map(|i| (i, self.endpoint(i)))
    }
}
