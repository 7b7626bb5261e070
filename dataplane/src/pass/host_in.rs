//! Host endpoint policy for flows from outside the node (docs/policy.md,
//! "Host endpoint policy"): with host policy selecting the node, the
//! underlay's XDP program hands the frames that open a flow to one of the
//! node's own IPv4 addresses to the dataplane (`host_in` in
//! `xdp-redirect/ebpf/src/main.rs`). The pass recognises them here, before
//! decapsulation, as [`super::Sender::Outside`]; they are then judged by the
//! node's ingress rules (failsafe ports first) like the pods' flows to the
//! node, and the allowed ones go to the node's kernel through the host port.
#![forbid(unsafe_code)]

use std::net::{IpAddr, Ipv4Addr};

use crate::snapshot::Snapshot;
use crate::wire::{ethernet, ip_proto};

/// The kernel's default `ip_local_port_range`: UDP to these ports of the
/// node is a reply to one of the node's own flows (which leave through the
/// kernel, not the dataplane), so it stays the kernel's. Equal to the XDP
/// program's `EPHEMERAL_FIRST`/`LAST` (a unit test keeps them so).
pub const EPHEMERAL_FIRST: u16 = 32768;
pub const EPHEMERAL_LAST: u16 = 60999;

/// Whether `frame` (from the underlay, not a SNAT reply nor a node-port
/// flow) is a flow opening to the node that host policy judges: a whole
/// IPv4 datagram to one of the node's addresses, with host policy on, that
/// is TCP with SYN and without ACK, UDP to a port outside the ephemeral
/// range and other than the tunnel's, an ICMP echo request, or any other
/// IP protocol. A raw peek, before parse; the XDP program's `host_in`
/// hands exactly these to the dataplane.
pub(super) fn is_host_in(frame: &[u8], snap: &Snapshot, tunnel_port: u16) -> bool {
    if !snap.policy().has_host_endpoint() || snap.host().is_none() {
        return false;
    }
    let ip_at = ethernet::HEADER_LEN;
    let (Some(ty), Some(&ver_ihl), Some(&proto), Some(frag), Some(dst)) = (
        frame.get(12..14),
        frame.get(ip_at),
        frame.get(ip_at + 9),
        frame.get(ip_at + 6..ip_at + 8),
        frame.get(ip_at + 16..ip_at + 20),
    ) else {
        return false;
    };
    let ihl = usize::from(ver_ihl & 0x0f) * 4;
    if ty != [0x08, 0x00] || ver_ihl >> 4 != 4 || ihl < 20 || frag[0] & 0x3f != 0 || frag[1] != 0 {
        return false;
    }
    let dst = Ipv4Addr::new(dst[0], dst[1], dst[2], dst[3]);
    if !snap.is_host_addr(IpAddr::V4(dst)) || dst.is_link_local() {
        return false;
    }
    let l4 = ip_at + ihl;
    match proto {
        ip_proto::TCP => frame
            .get(l4 + 13)
            .is_some_and(|&flags| flags & 0x12 == 0x02),
        ip_proto::UDP => frame.get(l4 + 2..l4 + 4).is_some_and(|p| {
            let p = u16::from_be_bytes([p[0], p[1]]);
            p != tunnel_port && !(EPHEMERAL_FIRST..=EPHEMERAL_LAST).contains(&p)
        }),
        ip_proto::ICMP => frame.get(l4) == Some(&8),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The XDP program's copy of the range (it cannot share the constant).
    #[test]
    fn ephemeral_range_equals_the_xdp_programs() {
        let src = include_str!("../../../xdp-redirect/ebpf/src/main.rs");
        assert!(src.contains(&format!("const EPHEMERAL_FIRST: u16 = {EPHEMERAL_FIRST};")));
        assert!(src.contains(&format!("const EPHEMERAL_LAST: u16 = {EPHEMERAL_LAST};")));
    }
}
