//! The multi-node half of a cluster: the underlay that joins the nodes, the
//! encapsulation's MTU budget, and the kernel VXLAN wiring of
//! `weir.dev/dataplane: kernel` nodes (the scheme is in the crate doc).
#![forbid(unsafe_code)]

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use crate::manifest::{overlaps, ManifestError, NodeSpec};
use crate::netlink::{Netlink, Vxlan};
use crate::{netns, RealizedNode, TopoError};

/// The node side of the underlay veth, in every node netns.
pub const UNDERLAY_IFNAME: &str = "ul0";
/// The Linux bridge in the underlay netns that joins all nodes' `ul0`.
pub const UNDERLAY_BRIDGE: &str = "br0";
/// The kernel VXLAN device of `kernel`-dataplane nodes.
pub const VXLAN_IFNAME: &str = "vxlan0";
/// The IANA VXLAN port, used by every node.
pub const VXLAN_PORT: u16 = 4789;
/// The Geneve port (weir nodes with [`Encap::Geneve`]).
pub const GENEVE_PORT: u16 = 6081;
/// The underlay subnet when no node has an `InternalIP`.
pub const DEFAULT_UNDERLAY_NET: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 0);

/// The tunnel encapsulation between nodes (cluster-wide).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Encap {
    /// VXLAN (RFC 7348), UDP port 4789: 50 bytes of overhead
    /// (outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8).
    #[default]
    Vxlan,
    /// Geneve (RFC 8926), UDP port 6081, with weir's 8-byte identity option:
    /// 58 bytes of overhead (14 + 20 + 8 + 8 + 8).
    Geneve,
}

impl Encap {
    /// Bytes the encapsulation adds around a pod's IP packet, counting the
    /// outer Ethernet header (the inner one rides in the payload): the pod
    /// MTU is at most `underlay_mtu - overhead()`.
    pub const fn overhead(self) -> u32 {
        match self {
            Encap::Vxlan => 14 + 20 + 8 + 8,
            Encap::Geneve => 14 + 20 + 8 + 8 + 8,
        }
    }

    /// `vxlan` or `geneve`.
    pub fn as_str(self) -> &'static str {
        match self {
            Encap::Vxlan => "vxlan",
            Encap::Geneve => "geneve",
        }
    }

    /// The outer UDP destination port.
    pub const fn udp_port(self) -> u16 {
        match self {
            Encap::Vxlan => VXLAN_PORT,
            Encap::Geneve => GENEVE_PORT,
        }
    }
}

impl fmt::Display for Encap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A node's end of the underlay.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct UnderlayInfo {
    /// `ul0`, in the node netns.
    pub ifname: String,
    /// The bridge side, `ul-` + 8 hex digits of FNV-1a-32(node name), in the
    /// underlay netns, enslaved to `br0`.
    #[serde(default)]
    pub peer_ifname: String,
    /// `0a:00:<ipv4 octets>`.
    pub mac: [u8; 6],
    pub ipv4: Ipv4Addr,
    pub prefix_len: u8,
    /// Its IPv6 underlay address on `ul0` ([`underlay_ipv6`], `/64`): the
    /// uplink's SNAT66 address (docs/egress.md). `None` in states saved
    /// before it, on real nodes, and when [`UNDERLAY_V6_NET`] overlaps a
    /// podCIDR. The tunnel stays IPv4.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Ipv6Addr>,
}

/// The underlay's IPv6 subnet in local clusters (ULA, disjoint from the
/// default pod ranges `fd00:10:244::/48` and Service range `fd00:96::/112`).
pub const UNDERLAY_V6_NET: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x172, 0x30, 0, 0, 0, 0, 0);
/// Its prefix length.
pub const UNDERLAY_V6_PREFIX_LEN: u8 = 64;

/// The IPv6 underlay address that goes with underlay IPv4 `ip` of the
/// `/prefix_len` subnet: [`UNDERLAY_V6_NET`] + the IPv4 host part (node
/// `172.30.0.1` → `fd00:172:30::1`, the world `.254` → `fd00:172:30::fe`).
pub fn underlay_ipv6(ip: Ipv4Addr, prefix_len: u8) -> Ipv6Addr {
    let host = u32::from(ip) & u32::MAX.checked_shr(u32::from(prefix_len)).unwrap_or(0);
    Ipv6Addr::from(u128::from(UNDERLAY_V6_NET) | u128::from(host))
}

/// Whether the IPv6 underlay can be used: [`UNDERLAY_V6_NET`]/64 overlaps
/// no podCIDR of `nodes`.
pub(crate) fn underlay_v6_usable(nodes: &[NodeSpec]) -> bool {
    let net =
        IpNet::V6(Ipv6Net::new(UNDERLAY_V6_NET, UNDERLAY_V6_PREFIX_LEN).expect("a valid /64"));
    !nodes
        .iter()
        .flat_map(|n| n.pod_cidrs.iter())
        .any(|c| overlaps(&net, c))
}

/// `weir-<cluster>-underlay`.
pub fn underlay_netns(cluster: &str) -> String {
    format!("weir-{cluster}-underlay")
}

/// `0a:00:<ipv4 octets>`: a node's `ul0`.
pub fn underlay_mac(ip: Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x0a, 0x00, o[0], o[1], o[2], o[3]]
}

/// `0a:01:<ipv4 octets>`: the bridge side of a node's underlay veth.
pub fn underlay_peer_mac(ip: Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x0a, 0x01, o[0], o[1], o[2], o[3]]
}

/// `0e:00:<underlay ipv4 octets>`: a node's VTEP MAC, the inner destination
/// MAC other nodes put in tunnel frames for it.
pub fn vtep_mac(ip: Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x0e, 0x00, o[0], o[1], o[2], o[3]]
}

/// `ul-` + 8 hex digits of FNV-1a-32(`<node>`).
pub(crate) fn underlay_peer_ifname(node: &str) -> String {
    format!("ul-{:08x}", crate::cluster::fnv1a32(node.as_bytes()))
}

/// The underlay IPv4 of every node, in node order: the node's `InternalIP`
/// when given, else the lowest free host address of the underlay subnet
/// (the `/prefix_len` of the first given `InternalIP`, else
/// `172.30.0.0/prefix_len`), so without any `InternalIP` node *n* gets
/// `172.30.0.<n+1>`. All must be hosts of that one subnet (the underlay is
/// one L2 segment), and the subnet must not overlap a podCIDR.
pub(crate) fn plan_underlay(
    nodes: &[NodeSpec],
    prefix_len: u8,
) -> Result<(Ipv4Net, Vec<Ipv4Addr>), TopoError> {
    let first = nodes.iter().find(|n| n.internal_ip.is_some());
    let base = first
        .and_then(|n| n.internal_ip)
        .unwrap_or(DEFAULT_UNDERLAY_NET);
    let subnet = Ipv4Net::new(base, prefix_len)
        .map_err(|e| TopoError::Options {
            field: "underlay_prefix_len",
            msg: e.to_string(),
        })?
        .trunc();
    for n in nodes {
        for c in &n.pod_cidrs {
            if overlaps(&IpNet::V4(subnet), c) {
                return Err(TopoError::Conflict {
                    object: "underlay".into(),
                    msg: format!(
                        "subnet {subnet} overlaps podCIDR {c} of nodes/{}; choose other InternalIPs",
                        n.name
                    ),
                });
            }
        }
    }
    let hosts =
        |ip: Ipv4Addr| subnet.contains(&ip) && ip != subnet.network() && ip != subnet.broadcast();
    let mut taken: HashSet<Ipv4Addr> = HashSet::new();
    for n in nodes {
        if let Some(ip) = n.internal_ip {
            if !hosts(ip) {
                let source = first.map(|f| f.name.as_str()).unwrap_or_default();
                return Err(ManifestError::Invalid {
                    object: n.object(),
                    field: "status.addresses".into(),
                    msg: format!(
                        "InternalIP {ip} is not a host address of the underlay subnet {subnet} (from nodes/{source}); all nodes share one L2 underlay: use one /{prefix_len}, or another underlay_prefix_len"
                    ),
                }
                .into());
            }
            taken.insert(ip);
        }
    }
    let mut out = Vec::with_capacity(nodes.len());
    let mut next = u32::from(subnet.network()) + 1;
    for n in nodes {
        if let Some(ip) = n.internal_ip {
            out.push(ip);
            continue;
        }
        loop {
            let ip = Ipv4Addr::from(next);
            if !hosts(ip) {
                return Err(TopoError::Conflict {
                    object: n.object(),
                    msg: format!("the underlay subnet {subnet} has no free address left"),
                });
            }
            next += 1;
            if taken.insert(ip) {
                out.push(ip);
                break;
            }
        }
    }
    Ok((subnet, out))
}

/// The IPv4 podCIDR's network address: a kernel node's tunnel gateway for
/// that node (flannel style).
pub(crate) fn gateway_v4(node: &RealizedNode) -> Option<(Ipv4Net, Ipv4Addr)> {
    node.pod_cidrs.iter().find_map(|c| match c {
        IpNet::V4(n) => Some((*n, n.network())),
        IpNet::V6(_) => None,
    })
}

/// The IPv6 podCIDR's first address (`<prefix>::`), the IPv6 counterpart.
pub(crate) fn gateway_v6(node: &RealizedNode) -> Option<(Ipv6Net, Ipv6Addr)> {
    node.pod_cidrs.iter().find_map(|c| match c {
        IpNet::V6(n) => Some((*n, n.network())),
        IpNet::V4(_) => None,
    })
}

/// Bridge-netfilter switches, per netns since Linux 5.3 (present when
/// `br_netfilter` is loaded or built in).
const BRIDGE_NF_SYSCTLS: [&str; 3] = [
    "/proc/sys/net/bridge/bridge-nf-call-iptables",
    "/proc/sys/net/bridge/bridge-nf-call-ip6tables",
    "/proc/sys/net/bridge/bridge-nf-call-arptables",
];

/// Creates the underlay netns with `lo` and `br0` up.
///
/// The underlay stands for the physical switch between nodes: where
/// `br_netfilter` is loaded (built in on some kernels, on by default in every
/// netns), each bridged frame would also cross this netns's iptables hooks
/// (~7 % of a core in a two-node flood, docs/performance.md), which no switch
/// does. Turned off here, in this netns only.
pub(crate) fn realize_underlay(netns_name: &str) -> Result<(), TopoError> {
    netns::create(netns_name)?;
    netns::run_in(netns_name, || -> Result<(), TopoError> {
        for path in BRIDGE_NF_SYSCTLS {
            if std::path::Path::new(path).exists() {
                crate::cluster::sysctl(netns_name, path, "0")?;
            }
        }
        let nl = Netlink::open(netns_name)?;
        nl.link_up("lo")?;
        nl.add_bridge(UNDERLAY_BRIDGE)?;
        nl.link_up(UNDERLAY_BRIDGE)?;
        Ok(())
    })?
}

/// Wires the node's `ul0` to the bridge: the veth is made from the underlay
/// side (its peer created directly in the node netns), then `ul0` gets its
/// address and goes up.
pub(crate) fn realize_node_underlay(
    underlay_ns: &str,
    node: &RealizedNode,
    mtu: u32,
    queues: u32,
) -> Result<(), TopoError> {
    let Some(ul) = &node.underlay else {
        return Ok(());
    };
    let node_ns = netns::open(&node.netns)?;
    netns::run_in(underlay_ns, || -> Result<(), TopoError> {
        use std::os::fd::AsRawFd;
        let nl = Netlink::open(underlay_ns)?;
        nl.add_veth(&crate::netlink::Veth {
            host: &ul.peer_ifname,
            host_mac: underlay_peer_mac(ul.ipv4),
            peer: &ul.ifname,
            peer_mac: ul.mac,
            peer_netns_fd: node_ns.as_raw_fd(),
            mtu,
            queues,
        })?;
        nl.set_master(&ul.peer_ifname, UNDERLAY_BRIDGE)?;
        nl.link_up(&ul.peer_ifname)?;
        Ok(())
    })??;
    drop(node_ns);
    netns::run_in(&node.netns, || -> Result<(), TopoError> {
        let nl = Netlink::open(&node.netns)?;
        let index = nl.link_up(&ul.ifname)?;
        nl.addr_add(&ul.ifname, index, IpAddr::V4(ul.ipv4), ul.prefix_len, false)?;
        if let Some(v6) = ul.ipv6 {
            // No DAD: the address is usable at once (the plan made it
            // unique on the segment).
            nl.addr_add(
                &ul.ifname,
                index,
                IpAddr::V6(v6),
                UNDERLAY_V6_PREFIX_LEN,
                true,
            )?;
        }
        Ok(())
    })?
}

/// A `kernel` node's tunnel, flannel's vxlan backend style: `vxlan0` (VNI
/// `vni`, port 4789, local = the node's underlay address, dev `ul0`,
/// nolearning, MAC = its VTEP MAC, MTU `underlay_mtu - 50`, address = its
/// IPv4 podCIDR's network address `/32`), and for every other node N: an fdb
/// entry `N.vtep_mac dst N.underlay`, permanent neighbours `<N gateway>
/// lladdr N.vtep_mac` and routes `N.podCIDR via <N gateway> dev vxlan0
/// onlink`, per family, where `<N gateway>` is the network address of N's
/// podCIDR.
pub(crate) fn realize_kernel_tunnel(
    node: &RealizedNode,
    others: &[&RealizedNode],
    vni: u32,
    underlay_mtu: u32,
) -> Result<(), TopoError> {
    let Some(ul) = &node.underlay else {
        return Ok(());
    };
    netns::run_in(&node.netns, || -> Result<(), TopoError> {
        let nl = Netlink::open(&node.netns)?;
        let link = nl.link_up(&ul.ifname)?;
        nl.add_vxlan(&Vxlan {
            name: VXLAN_IFNAME,
            mac: node.vtep_mac,
            mtu: underlay_mtu - Encap::Vxlan.overhead(),
            vni,
            link,
            local: ul.ipv4,
            port: VXLAN_PORT,
        })?;
        let dad = format!("/proc/sys/net/ipv6/conf/{VXLAN_IFNAME}/accept_dad");
        if std::path::Path::new(&dad).exists() {
            crate::cluster::sysctl(&node.netns, &dad, "0")?;
        }
        let vx = nl.link_up(VXLAN_IFNAME)?;
        if let Some((_, gw)) = gateway_v4(node) {
            nl.addr_add(VXLAN_IFNAME, vx, IpAddr::V4(gw), 32, false)?;
        }
        for other in others {
            let Some(oul) = &other.underlay else { continue };
            nl.fdb_add(VXLAN_IFNAME, vx, other.vtep_mac, oul.ipv4)?;
            if let Some((net, gw)) = gateway_v4(other) {
                nl.neigh_add(VXLAN_IFNAME, vx, IpAddr::V4(gw), other.vtep_mac)?;
                nl.route_onlink(
                    VXLAN_IFNAME,
                    vx,
                    IpAddr::V4(net.network()),
                    net.prefix_len(),
                    IpAddr::V4(gw),
                )?;
            }
            if let Some((net, gw)) = gateway_v6(other) {
                nl.neigh_add(VXLAN_IFNAME, vx, IpAddr::V6(gw), other.vtep_mac)?;
                nl.route_onlink(
                    VXLAN_IFNAME,
                    vx,
                    IpAddr::V6(net.network()),
                    net.prefix_len(),
                    IpAddr::V6(gw),
                )?;
            }
        }
        Ok(())
    })?
}
