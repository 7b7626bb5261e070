//! Stages 6 and 7: the hop limit and the MTU, answered with ICMP errors
//! built in place in the frame (see the module doc of the pass for when).

use core::ops::ControlFlow::{self, Break, Continue};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::parse::{Fragment, Parsed};
use super::{drop, Pass};
use crate::snapshot::Port;
use crate::wire::ethernet::{self, ethertype, Frame};
use crate::wire::{icmp, ip_proto, ipv4, ipv6};
use crate::{DropReason, Verdict};

#[derive(Clone, Copy)]
enum IcmpError {
    TimeExceeded,
    TooBig {
        mtu: u16,
    },
    /// A Service frontend without endpoints (UDP), as kube-proxy answers.
    PortUnreachable,
}

/// TTL of the IPv4 / hop limit of the IPv6 errors weir sends.
const ICMP_ERROR_TTL: u8 = 64;
/// DSCP CS6 (internetwork control), as Linux marks ICMP errors.
const ICMP_ERROR_TOS: u8 = 0xc0;

impl Pass<'_> {
    /// Stage 6: a packet that would leave with TTL/hop limit 0 is answered
    /// with Time Exceeded (when allowed) instead of forwarded.
    pub(super) fn check_hop_limit(&mut self, pkt: &Parsed) -> ControlFlow<Verdict, ()> {
        if pkt.ttl > 1 {
            return Continue(());
        }
        Break(self.icmp_error(pkt, IcmpError::TimeExceeded, DropReason::TtlExceeded))
    }

    /// Stage 7: a packet bigger than the destination link's MTU is answered
    /// with Fragmentation Needed / Packet Too Big (DF or IPv6) or dropped.
    pub(super) fn check_mtu(&mut self, pkt: &Parsed, mtu: u16) -> ControlFlow<Verdict, ()> {
        if pkt.ip_len <= usize::from(mtu) {
            return Continue(());
        }
        if !pkt.dont_frag {
            return drop(DropReason::TooBig);
        }
        Break(self.icmp_error(pkt, IcmpError::TooBig { mtu }, DropReason::TooBig))
    }

    /// Replaces the frame by an ICMP port unreachable for its sender (a
    /// Service without endpoints); `None` when none can be sent.
    pub(super) fn port_unreachable(&mut self, pkt: &Parsed) -> Option<Verdict> {
        match self.icmp_error(
            pkt,
            IcmpError::PortUnreachable,
            DropReason::ServiceNoEndpoints,
        ) {
            v @ Verdict::Tx { .. } => Some(v),
            _ => None,
        }
    }

    /// Replaces the frame by an ICMP error addressed back to its sender and
    /// returns the verdict that sends it out of the ingress port, or
    /// `Drop(reason)` when no error may or can be sent.
    fn icmp_error(&mut self, pkt: &Parsed, kind: IcmpError, reason: DropReason) -> Verdict {
        if pkt.icmp_error || pkt.fragment == Fragment::Later {
            return Verdict::Drop(reason);
        }
        let snap = self.snap;
        // From outside the node, on the underlay (host endpoint policy,
        // `host_in.rs`; `one_way`): the error goes back out of the
        // underlay, from the node's address the sender reached (RFC 1812
        // §4.3.2.4) — so a too-big segment gets its Fragmentation Needed
        // instead of a silent drop (a PMTUD black hole).
        let outside = match snap.tunnel() {
            Some((t, tables)) if self.one_way && tables.port == self.ingress => {
                Some((t.underlay.mac, pkt.key.dst))
            }
            _ => None,
        };
        let (mac, from) = match (snap.port(self.ingress), outside) {
            (Some(port), _) => (port.mac, None),
            (None, Some((mac, dst))) => (mac, Some(dst)),
            (None, None) => return Verdict::Drop(reason),
        };
        let buf = &mut *self.buf;
        let built = match (pkt.key.src, from) {
            (IpAddr::V4(sender), Some(IpAddr::V4(node))) => {
                build_icmpv4_error(buf, pkt, mac, node, sender, kind)
            }
            (IpAddr::V6(sender), Some(IpAddr::V6(node))) => {
                build_icmpv6_error(buf, pkt, mac, node, sender, kind)
            }
            (_, Some(_)) => None,
            (IpAddr::V4(sender), None) => snap
                .spec
                .node_ipv4
                .and_then(|node| build_icmpv4_error(buf, pkt, mac, node, sender, kind)),
            (IpAddr::V6(sender), None) => snap
                .spec
                .node_ipv6
                .and_then(|node| build_icmpv6_error(buf, pkt, mac, node, sender, kind)),
        };
        match built {
            Some(len) => {
                self.st.icmp_errors_sent += 1;
                Verdict::Tx {
                    port: self.ingress,
                    len,
                }
            }
            None => Verdict::Drop(reason),
        }
    }
}

/// Writes the reply's Ethernet header: back to the sender, from the port.
pub(super) fn reply_ethernet(frame: &mut [u8], port: &Port, ethertype: u16) -> Option<()> {
    reply_ethernet_from(frame, port.mac, ethertype)
}

/// [`reply_ethernet`] from the MAC `src`.
fn reply_ethernet_from(frame: &mut [u8], src: [u8; 6], ethertype: u16) -> Option<()> {
    let mut eth = Frame::new_checked(frame).ok()?;
    let repr = ethernet::Repr {
        src,
        dst: eth.src_addr(),
        ethertype,
    };
    repr.emit(&mut eth).ok()
}

/// ICMPv4 error (RFC 792): quotes the original IP header + 8 bytes.
/// Returns the new frame length, or None if it does not fit in `buf`.
fn build_icmpv4_error(
    buf: &mut [u8],
    pkt: &Parsed,
    mac: [u8; 6],
    node: Ipv4Addr,
    sender: Ipv4Addr,
    kind: IcmpError,
) -> Option<usize> {
    const ETH: usize = ethernet::HEADER_LEN;
    const IP: usize = ipv4::HEADER_LEN;
    let orig_hl = ipv4::Packet::new_checked(buf.get(ETH..pkt.frame_len())?)
        .ok()?
        .header_len();
    let quote = (orig_hl + 8).min(pkt.ip_len);
    let icmp_len = icmp::HEADER_LEN + quote;
    let frame = buf.get_mut(..ETH + IP + icmp_len)?;
    frame.copy_within(ETH..ETH + quote, ETH + IP + icmp::HEADER_LEN);
    reply_ethernet_from(frame, mac, ethertype::IPV4)?;

    let (ip_bytes, icmp_bytes) = frame.get_mut(ETH..)?.split_at_mut_checked(IP)?;
    let ip = ipv4::Repr {
        src: node,
        dst: sender,
        protocol: ip_proto::ICMP,
        payload_len: icmp_len,
        ttl: ICMP_ERROR_TTL,
        dscp_ecn: ICMP_ERROR_TOS,
        dont_frag: false,
    };
    ip.emit(&mut ipv4::Packet::new_unchecked(ip_bytes)).ok()?;

    let mut msg = icmp::Packet::new_checked(icmp_bytes).ok()?;
    match kind {
        IcmpError::TimeExceeded => {
            msg.set_msg_type(icmp::v4::TIME_EXCEEDED);
            msg.set_code(icmp::v4::CODE_TTL_EXCEEDED);
            msg.set_rest_of_header(0);
        }
        IcmpError::TooBig { mtu } => {
            msg.set_msg_type(icmp::v4::DEST_UNREACHABLE);
            msg.set_code(icmp::v4::CODE_FRAG_NEEDED);
            msg.set_rest_of_header(u32::from(mtu));
        }
        IcmpError::PortUnreachable => {
            msg.set_msg_type(icmp::v4::DEST_UNREACHABLE);
            msg.set_code(3);
            msg.set_rest_of_header(0);
        }
    }
    msg.fill_checksum_v4();
    Some(ETH + IP + icmp_len)
}

/// ICMPv6 error (RFC 4443): quotes as much of the original as keeps the
/// error within the IPv6 minimum MTU (1280) and the UMEM frame.
fn build_icmpv6_error(
    buf: &mut [u8],
    pkt: &Parsed,
    mac: [u8; 6],
    node: Ipv6Addr,
    sender: Ipv6Addr,
    kind: IcmpError,
) -> Option<usize> {
    const ETH: usize = ethernet::HEADER_LEN;
    const IP: usize = ipv6::HEADER_LEN;
    const HDRS: usize = ETH + IP + icmp::HEADER_LEN;
    let quote = pkt
        .ip_len
        .min(ipv6::MIN_MTU - IP - icmp::HEADER_LEN)
        .min(buf.len().saturating_sub(HDRS));
    if quote < ipv6::HEADER_LEN {
        return None;
    }
    let icmp_len = icmp::HEADER_LEN + quote;
    let frame = buf.get_mut(..HDRS + quote)?;
    frame.copy_within(ETH..ETH + quote, HDRS);
    reply_ethernet_from(frame, mac, ethertype::IPV6)?;

    let (ip_bytes, icmp_bytes) = frame.get_mut(ETH..)?.split_at_mut_checked(IP)?;
    let ip = ipv6::Repr {
        src: node,
        dst: sender,
        next_header: ip_proto::ICMPV6,
        payload_len: icmp_len,
        hop_limit: ICMP_ERROR_TTL,
    };
    ip.emit(&mut ipv6::Packet::new_unchecked(ip_bytes)).ok()?;

    let mut msg = icmp::Packet::new_checked(icmp_bytes).ok()?;
    match kind {
        IcmpError::TimeExceeded => {
            msg.set_msg_type(icmp::v6::TIME_EXCEEDED);
            msg.set_code(icmp::v6::CODE_HOP_LIMIT_EXCEEDED);
            msg.set_rest_of_header(0);
        }
        IcmpError::TooBig { mtu } => {
            msg.set_msg_type(icmp::v6::PACKET_TOO_BIG);
            msg.set_code(0);
            msg.set_rest_of_header(u32::from(mtu));
        }
        IcmpError::PortUnreachable => {
            msg.set_msg_type(icmp::v6::DEST_UNREACHABLE);
            msg.set_code(4);
            msg.set_rest_of_header(0);
        }
    }
    msg.fill_checksum_v6(node, sender);
    Some(HDRS + quote)
}
