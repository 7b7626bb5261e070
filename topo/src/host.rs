//! The host port of a weir node: a veth pair in the node's namespace,
//! `weir-host0` (the node's end, carrying routes to the node's pod CIDRs)
//! and `weir-host1` (the dataplane's end, attached with XDP and AF_XDP like a
//! pod port). The node reaches its pods, and pods reach the node, through
//! the dataplane (docs/datapath.md, "The host port").
//!
//! Routes: `<pod CIDR v4> via 169.254.1.2 dev weir-host0 onlink src <.1>` and
//! `<pod CIDR v6> via fe80::2 dev weir-host0 src <::1>`, with permanent
//! neighbours for both gateways at `weir-host1`'s MAC (nothing answers ARP or
//! NDP there). TX checksum offload is off on `weir-host0`, as on a pod's
//! `eth0` (see docs/datapath.md#checksums).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::path::Path;

use crate::cluster::{sysctl, RealizedNode};
use crate::netlink::{Netlink, Veth};
use crate::{ethtool, netns, TopoError};

/// The node's end of the host veth.
pub const HOST_IFNAME: &str = "weir-host0";
/// The dataplane's end of the host veth (a port of the snapshot).
pub const HOST_PORT_IFNAME: &str = "weir-host1";
/// MAC of `weir-host0` (locally administered; every node is its own
/// namespace, so all nodes may share it).
pub const HOST_MAC: [u8; 6] = [0x0a, 0x77, 0x68, 0x6f, 0x00, 0x00];
/// MAC of `weir-host1`.
pub const HOST_PORT_MAC: [u8; 6] = [0x0a, 0x77, 0x68, 0x6f, 0x00, 0x01];
/// The next hop of the node's IPv4 routes to its pods (resolves to
/// `weir-host1` through a permanent neighbour).
pub const HOST_GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 2);
/// The next hop of the node's IPv6 routes to its pods.
pub const HOST_GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 2);

/// Makes the host veth of `node` in its namespace, with routes to its pod
/// CIDRs (sourced from the node's `.1`/`::1`).
pub fn realize(node: &RealizedNode, mtu: u32, queues: u32) -> Result<(), TopoError> {
    let own = netns::open(&node.netns)?;
    netns::run_in(&node.netns, || -> Result<(), TopoError> {
        let nl = Netlink::open(&node.netns)?;
        nl.add_veth(&Veth {
            host: HOST_IFNAME,
            host_mac: HOST_MAC,
            peer: HOST_PORT_IFNAME,
            peer_mac: HOST_PORT_MAC,
            peer_netns_fd: own.as_raw_fd(),
            mtu,
            queues,
        })?;
        for ifname in [HOST_IFNAME, HOST_PORT_IFNAME] {
            let dad = format!("/proc/sys/net/ipv6/conf/{ifname}/accept_dad");
            if Path::new(&dad).exists() {
                sysctl(&node.netns, &dad, "0")?;
            }
        }
        ethtool::tx_checksum_off(HOST_IFNAME).map_err(|error| TopoError::Ethtool {
            netns: node.netns.clone(),
            ifname: HOST_IFNAME.to_string(),
            error,
        })?;
        nl.link_up(HOST_PORT_IFNAME)?;
        let index = nl.link_up(HOST_IFNAME)?;
        if let (Some(net), Some(src)) = (node.pod_cidr_v4(), node.ipv4) {
            let gw = IpAddr::V4(HOST_GATEWAY_V4);
            nl.neigh_add(HOST_IFNAME, index, gw, HOST_PORT_MAC)?;
            let (dst, len) = (IpAddr::V4(net.network()), net.prefix_len());
            nl.route_onlink_src(HOST_IFNAME, index, dst, len, gw, IpAddr::V4(src))?;
        }
        if let (Some(net), Some(src)) = (node.pod_cidr_v6(), node.ipv6) {
            if Path::new("/proc/sys/net/ipv6").exists() {
                let gw = IpAddr::V6(HOST_GATEWAY_V6);
                nl.neigh_add(HOST_IFNAME, index, gw, HOST_PORT_MAC)?;
                let (dst, len) = (IpAddr::V6(net.network()), net.prefix_len());
                nl.route_onlink_src(HOST_IFNAME, index, dst, len, gw, IpAddr::V6(src))?;
            }
        }
        Ok(())
    })?
}

/// Routes the Service ranges through the host port too (sourced from the
/// node's `.1`/`::1`, via the same gateways as its pod CIDRs), so the
/// node's own clients (kubelet, node-local agents) reach ClusterIPs through
/// the dataplane, which load balances them as it does for pods
/// (docs/services.md, "From the node"). A family the node has no address
/// of is skipped. Call after [`realize`] (its neighbours are the gateways').
pub fn route_services(node: &RealizedNode, ranges: &[ipnet::IpNet]) -> Result<(), TopoError> {
    if ranges.is_empty() {
        return Ok(());
    }
    netns::run_in(&node.netns, || -> Result<(), TopoError> {
        let nl = Netlink::open(&node.netns)?;
        let Some(index) = nl.link_index(HOST_IFNAME)? else {
            return Ok(());
        };
        for r in ranges {
            let (dst, len) = (r.network(), r.prefix_len());
            match (r, node.ipv4, node.ipv6) {
                (ipnet::IpNet::V4(_), Some(src), _) => {
                    let gw = IpAddr::V4(HOST_GATEWAY_V4);
                    nl.route_onlink_src(HOST_IFNAME, index, dst, len, gw, IpAddr::V4(src))?;
                }
                (ipnet::IpNet::V6(_), _, Some(src)) if Path::new("/proc/sys/net/ipv6").exists() => {
                    let gw = IpAddr::V6(HOST_GATEWAY_V6);
                    nl.route_onlink_src(HOST_IFNAME, index, dst, len, gw, IpAddr::V6(src))?;
                }
                _ => {}
            }
        }
        Ok(())
    })?
}
