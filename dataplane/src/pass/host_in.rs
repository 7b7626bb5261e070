//! Host endpoint policy for flows from outside the node (docs/policy.md,
//! "Host endpoint policy"): with host policy selecting the node, the
//! underlay's XDP program hands the frames that open a flow to one of the
//! node's own IPv4 or IPv6 addresses to the dataplane (`host_in` and
//! `host_in6` in
//! `xdp-redirect/ebpf/src/main.rs`). The pass recognises them here, before
//! decapsulation, as [`super::Sender::Outside`]; they are then judged by the
//! node's ingress rules (failsafe ports first) like the pods' flows to the
//! node, and the allowed ones go to the node's kernel through the host port.
//!
//! TCP to a server port of the node (outside the kernel's ephemeral range)
//! comes here whole, not only its SYN: conntrack tracks such flows one way
//! (the node's replies leave through its kernel), so a policy change
//! re-judges an established connection (denied: dropped, `policy-denied`)
//! and a segment with no entry (a SYN-cookie ACK, a connection older than
//! the policy) is judged like an opening. Segments to an ephemeral port are
//! the replies of the node's own connections and stay the kernel's (a
//! server of the node listening on an ephemeral port is judged at its SYN
//! only).
#![forbid(unsafe_code)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

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
/// is TCP with SYN and without ACK, any other TCP segment to a port outside
/// the ephemeral range (every packet of a flow to a node's server, so a
/// policy change reaches established connections), UDP to a port outside
/// the ephemeral range and other than the tunnel's, an ICMP echo request,
/// or any other IP protocol. A raw peek, before parse; the XDP program's
/// `host_in` hands exactly these to the dataplane.
pub(super) fn is_host_in(frame: &[u8], snap: &Snapshot, tunnel_port: u16) -> bool {
    if !snap.policy().has_host_endpoint() || snap.host().is_none() {
        return false;
    }
    if frame.get(12..14) == Some(&[0x86, 0xdd]) {
        return is_host_in6(frame, snap);
    }
    let Some((proto, dst, l4)) = super::parse::peek_whole_v4(frame) else {
        return false;
    };
    let dst = Ipv4Addr::from(dst);
    if !snap.is_host_addr(IpAddr::V4(dst)) || dst.is_link_local() {
        return false;
    }
    match proto {
        ip_proto::TCP => is_judged_tcp(frame, l4),
        ip_proto::UDP => frame.get(l4 + 2..l4 + 4).is_some_and(|p| {
            let p = u16::from_be_bytes([p[0], p[1]]);
            p != tunnel_port && !(EPHEMERAL_FIRST..=EPHEMERAL_LAST).contains(&p)
        }),
        ip_proto::ICMP => frame.get(l4) == Some(&8),
        _ => true,
    }
}

/// TCP at `l4`: a SYN (without ACK) to any port, or any segment to a
/// port outside the ephemeral range.
fn is_judged_tcp(frame: &[u8], l4: usize) -> bool {
    match (frame.get(l4 + 2..l4 + 4), frame.get(l4 + 13)) {
        (Some(p), Some(&flags)) => {
            let p = u16::from_be_bytes([p[0], p[1]]);
            flags & 0x12 == 0x02 || !(EPHEMERAL_FIRST..=EPHEMERAL_LAST).contains(&p)
        }
        _ => false,
    }
}

/// [`is_host_in`] for IPv6 (the XDP program's `host_in6`): to one of the
/// node's addresses other than link-local ones (fe80::/10: NDP and the
/// kernel's link traffic), with the next header directly after the fixed
/// header: TCP and UDP as IPv4's (no tunnel over IPv6), an ICMPv6 echo
/// request; a fragment header stays the kernel's (as IPv4 fragments do);
/// any other next header (an extension header: the pass walks it and
/// judges the transport behind it, or another protocol) is judged.
fn is_host_in6(frame: &[u8], snap: &Snapshot) -> bool {
    let ip_at = ethernet::HEADER_LEN;
    let l4 = ip_at + 40;
    let (Some(&ver), Some(&next), Some(dst)) = (
        frame.get(ip_at),
        frame.get(ip_at + 6),
        frame.get(ip_at + 24..l4),
    ) else {
        return false;
    };
    let Ok(dst) = <[u8; 16]>::try_from(dst) else {
        return false;
    };
    let dst = Ipv6Addr::from(dst);
    if ver >> 4 != 6 || !snap.is_host_addr(IpAddr::V6(dst)) || dst.is_unicast_link_local() {
        return false;
    }
    match next {
        ip_proto::TCP => is_judged_tcp(frame, l4),
        ip_proto::UDP => frame.get(l4 + 2..l4 + 4).is_some_and(|p| {
            !(EPHEMERAL_FIRST..=EPHEMERAL_LAST).contains(&u16::from_be_bytes([p[0], p[1]]))
        }),
        ip_proto::ICMPV6 => frame.get(l4) == Some(&ECHO_REQUEST_V6),
        ip_proto::FRAGMENT => false,
        _ => true,
    }
}

/// ICMPv6 echo request.
const ECHO_REQUEST_V6: u8 = 128;

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
