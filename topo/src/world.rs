//! The "world" of a local cluster: one netns `weir-<cluster>-world`, an
//! external host on the underlay bridge that is no node, for pod → world
//! (SNAT) and NodePort tests (docs/topology.md, docs/egress.md).
//!
//! - `eth0` (its bridge side `ul-world` on `br0`) with the highest free host
//!   address of the underlay subnet (`172.30.0.254/24` by default), its
//!   IPv6 counterpart (`fd00:172:30::fe/64`, the nodes' IPv6 underlay
//!   addresses on-link) and MAC
//!   `0a:02:<ipv4 octets>`; TX checksum offload off, as on pods (its frames
//!   reach weir's AF_XDP sockets in copy mode, where nobody would complete
//!   a partial checksum).
//! - On `lo`: [`WORLD_V4`] (TEST-NET-2, RFC 5737) and [`WORLD_V6`]
//!   (documentation prefix, RFC 3849), outside every cluster range.
//! - Routes: the nodes' underlay addresses are on-link (the underlay /24);
//!   each weir node's IPv4 podCIDR via that node's underlay address, so a
//!   non-masqueraded pod source can be answered.
//! - A server answering `world\n` on TCP and UDP [`WORLD_PORT`] of each
//!   `lo` address (run by the supervisor, like pod servers:
//!   [`crate::serve::PodServers::start_in`]). Bound per address, not on the
//!   wildcard: a UDP answer from a wildcard socket would leave from the
//!   address of the route back (`eth0`'s), not the one the client asked.
#![forbid(unsafe_code)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::manifest::{ContainerPort, Protocol};
use crate::netlink::Netlink;
use crate::overlay::UNDERLAY_BRIDGE;
use crate::{netns, Cluster, NodeDataplane, TopoError};

/// The world host's addresses on its `lo`, the ones pods reach: the first
/// is the masqueraded destination of tests, the second one a test can list
/// as not masqueraded.
pub const WORLD_V4: [Ipv4Addr; 2] = [
    Ipv4Addr::new(198, 51, 100, 1),
    Ipv4Addr::new(198, 51, 100, 2),
];
/// The world host's IPv6 address (reached from pods through SNAT66 on the
/// nodes' IPv6 underlay addresses).
pub const WORLD_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 5, 0, 0, 0, 0, 1);
/// TCP and UDP port of the world server (answers `world\n`).
pub const WORLD_PORT: u16 = 8080;
/// The world's interface, in its netns.
pub const WORLD_IFNAME: &str = "eth0";
/// Its bridge side, in the underlay netns.
pub const WORLD_PEER_IFNAME: &str = "ul-world";

/// The world host as built.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct WorldInfo {
    /// `weir-<cluster>-world`.
    pub netns: String,
    /// Its underlay address: every node's uplink gateway.
    pub ipv4: Ipv4Addr,
    pub prefix_len: u8,
    /// Its IPv6 underlay address (`/64` on `eth0`, [`crate::overlay::underlay_ipv6`]):
    /// every node's IPv6 uplink gateway. `None` in states saved before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Ipv6Addr>,
    /// `0a:02:<ipv4 octets>`: the destination MAC of frames to the world.
    pub mac: [u8; 6],
    /// The destination MAC of IPv6 frames to the world when the IPv6
    /// gateway is another neighbour (a node agent's IPv6 default route);
    /// `None`: `mac`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac_v6: Option<[u8; 6]>,
    /// The addresses on its `lo`.
    pub addrs: Vec<IpAddr>,
    /// The server's TCP and UDP port.
    pub port: u16,
}

impl WorldInfo {
    /// The ports its server answers on.
    pub fn ports(&self) -> Vec<ContainerPort> {
        [Protocol::Tcp, Protocol::Udp]
            .into_iter()
            .map(|protocol| ContainerPort {
                name: None,
                port: self.port,
                protocol,
            })
            .collect()
    }
}

/// `weir-<cluster>-world`.
pub fn world_netns(cluster: &str) -> String {
    format!("weir-{cluster}-world")
}

/// `0a:02:<ipv4 octets>`.
pub fn world_mac(ip: Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x0a, 0x02, o[0], o[1], o[2], o[3]]
}

/// The world's plan: the highest host address of `subnet` no node has.
pub(crate) fn plan(
    cluster: &str,
    subnet: Ipv4Net,
    taken: &[Ipv4Addr],
    v6: bool,
) -> Result<WorldInfo, TopoError> {
    let mut ip = u32::from(subnet.broadcast()).saturating_sub(1);
    while taken.contains(&Ipv4Addr::from(ip)) {
        ip = ip.saturating_sub(1);
    }
    let ipv4 = Ipv4Addr::from(ip);
    if !subnet.contains(&ipv4) || ipv4 == subnet.network() {
        return Err(TopoError::Conflict {
            object: "world".into(),
            msg: format!(
                "the underlay subnet {subnet} has no free address left for the world host"
            ),
        });
    }
    let mut addrs: Vec<IpAddr> = WORLD_V4.iter().map(|a| IpAddr::V4(*a)).collect();
    addrs.push(IpAddr::V6(WORLD_V6));
    Ok(WorldInfo {
        netns: world_netns(cluster),
        ipv4,
        ipv6: v6.then(|| crate::overlay::underlay_ipv6(ipv4, subnet.prefix_len())),
        prefix_len: subnet.prefix_len(),
        mac: world_mac(ipv4),
        mac_v6: None,
        addrs,
        port: WORLD_PORT,
    })
}

/// Builds the world netns (the underlay netns and the nodes exist).
pub(crate) fn realize(cluster: &Cluster, w: &WorldInfo) -> Result<(), TopoError> {
    let Some(ul_ns) = &cluster.underlay_netns else {
        return Ok(());
    };
    netns::create(&w.netns)?;
    let world_ns = netns::open(&w.netns)?;
    let mtu = cluster.underlay_mtu;
    netns::run_in(ul_ns, || -> Result<(), TopoError> {
        use std::os::fd::AsRawFd;
        let nl = Netlink::open(ul_ns)?;
        let o = w.ipv4.octets();
        nl.add_veth(&crate::netlink::Veth {
            host: WORLD_PEER_IFNAME,
            host_mac: [0x0a, 0x03, o[0], o[1], o[2], o[3]],
            peer: WORLD_IFNAME,
            peer_mac: w.mac,
            peer_netns_fd: world_ns.as_raw_fd(),
            mtu,
            queues: 1,
        })?;
        nl.set_master(WORLD_PEER_IFNAME, UNDERLAY_BRIDGE)?;
        nl.link_up(WORLD_PEER_IFNAME)?;
        Ok(())
    })??;
    drop(world_ns);
    netns::run_in(&w.netns, || -> Result<(), TopoError> {
        let nl = Netlink::open(&w.netns)?;
        let lo = nl.link_up("lo")?;
        for a in &w.addrs {
            let len = if a.is_ipv4() { 32 } else { 128 };
            nl.addr_add("lo", lo, *a, len, a.is_ipv6())?;
        }
        crate::ethtool::tx_checksum_off(WORLD_IFNAME).map_err(|error| TopoError::Netns {
            netns: w.netns.clone(),
            op: "turn TX checksum offload off on eth0",
            error,
        })?;
        let eth = nl.link_up(WORLD_IFNAME)?;
        nl.addr_add(WORLD_IFNAME, eth, IpAddr::V4(w.ipv4), w.prefix_len, false)?;
        if let Some(v6) = w.ipv6 {
            // The nodes' IPv6 underlay addresses are on-link (the /64).
            let len = crate::overlay::UNDERLAY_V6_PREFIX_LEN;
            nl.addr_add(WORLD_IFNAME, eth, IpAddr::V6(v6), len, true)?;
        }
        for n in &cluster.nodes {
            let (Some(ul), Some(net)) = (&n.underlay, n.pod_cidr_v4()) else {
                continue;
            };
            if n.dataplane != NodeDataplane::Weir {
                continue;
            }
            nl.route_onlink(
                WORLD_IFNAME,
                eth,
                IpAddr::V4(net.network()),
                net.prefix_len(),
                IpAddr::V4(ul.ipv4),
            )?;
            // The IPv6 pod CIDR via the node's IPv6 underlay address
            // (non-masqueraded IPv6 destinations, docs/egress.md).
            if let (Some(net6), Some(ul6), Some(_)) = (n.pod_cidr_v6(), ul.ipv6, w.ipv6) {
                nl.route_onlink(
                    WORLD_IFNAME,
                    eth,
                    IpAddr::V6(net6.network()),
                    net6.prefix_len(),
                    IpAddr::V6(ul6),
                )?;
            }
        }
        Ok(())
    })?
}
