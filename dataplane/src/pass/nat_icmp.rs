//! NAT of ICMP (docs/egress.md, docs/services.md): byte-level rewrites the
//! SNAT and Service stages share.
//!
//! - **Echo** (`rewrite_echo`): the identifier plays the port, as in
//!   Linux's masquerade: an echo request leaves with the node's address and
//!   an identifier of weir's SNAT range; the reply gets the pod's back.
//! - **Errors** (`translate_error`): an ICMP/ICMPv6 error about a
//!   translated flow quotes the packet as it left the translator; it is
//!   rewritten to quote the packet as its sender sent it, and its outer
//!   address follows: the outer header's and the quoted header's addresses
//!   and port, the quoted IPv4 header checksum and the quoted L4 checksum
//!   (when the quote holds it) incrementally (RFC 1624), then the ICMP
//!   checksum over the whole message from scratch (the quote is at most a
//!   few hundred bytes; an incremental update would need every changed
//!   word anyway).
//!
//! Everything is bounds-checked with `get`; a frame that does not fit is
//! `None` (the caller drops it, counted).

use std::net::IpAddr;

use super::parse::Parsed;
use crate::flow_key::FlowKey;
use crate::snapshot::{NODE_PORT_FIRST, NODE_PORT_LAST, SNAT_PORT_FIRST, SNAT_PORT_LAST};
use crate::wire::{checksum, ethernet, icmp, ip_proto};

/// `FlowKey::dport` of an ICMPv4 echo request / reply (type << 8 | code).
pub(super) const ECHO_REQUEST_V4: u16 = (icmp::v4::ECHO_REQUEST as u16) << 8;
pub(super) const ECHO_REPLY_V4: u16 = (icmp::v4::ECHO_REPLY as u16) << 8;
/// The same for ICMPv6 (SNAT66 of pings, docs/egress.md).
pub(super) const ECHO_REQUEST_V6: u16 = (icmp::v6::ECHO_REQUEST as u16) << 8;
pub(super) const ECHO_REPLY_V6: u16 = (icmp::v6::ECHO_REPLY as u16) << 8;

/// Which end of the quoted packet is rewritten.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum End {
    Src,
    Dst,
}

fn word(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn put(b: &mut [u8], at: usize, v: u16) -> Option<()> {
    b.get_mut(at..at + 2)?.copy_from_slice(&v.to_be_bytes());
    Some(())
}

fn addr_bytes(a: IpAddr) -> ([u8; 16], usize) {
    match a {
        IpAddr::V4(a) => {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&a.octets());
            (b, 4)
        }
        IpAddr::V6(a) => (a.octets(), 16),
    }
}

/// Replaces the address at `at` (4 or 16 bytes, as `to`) and returns the
/// (old, new) sums of its words.
fn swap_addr(b: &mut [u8], at: usize, to: IpAddr) -> Option<(u16, u16)> {
    let (bytes, n) = addr_bytes(to);
    let field = b.get_mut(at..at + n)?;
    let old = checksum::data(field);
    field.copy_from_slice(&bytes[..n]);
    Some((old, checksum::data(&bytes[..n])))
}

/// Offsets of the source and destination addresses in an IP header.
fn addr_offsets(v4: bool) -> (usize, usize) {
    if v4 {
        (12, 16)
    } else {
        (8, 24)
    }
}

/// Rewrites the IP source and/or destination of a non-first fragment (it
/// carries no transport header: the first fragment's rewrite already fixed
/// the datagram's L4 checksum); the IPv4 header checksum is updated
/// incrementally.
pub(super) fn rewrite_addrs(
    buf: &mut [u8],
    pkt: &Parsed,
    src: Option<IpAddr>,
    dst: Option<IpAddr>,
) -> Option<()> {
    let v4 = pkt.key.src.is_ipv4();
    let ip = ethernet::HEADER_LEN;
    let (src_at, dst_at) = addr_offsets(v4);
    let (mut old, mut new) = (0u16, 0u16);
    for (change, at) in [(src, src_at), (dst, dst_at)] {
        let Some(a) = change else { continue };
        if a.is_ipv4() != v4 {
            return None;
        }
        let (o, n) = swap_addr(buf, ip + at, a)?;
        old = checksum::combine(&[old, o]);
        new = checksum::combine(&[new, n]);
    }
    if v4 {
        let c = checksum::update(word(buf, ip + 10)?, old, new);
        put(buf, ip + 10, c)?;
    }
    Some(())
}

/// Rewrites an ICMP echo request/reply in place: the outer source and/or
/// destination address, and the identifier; IPv4 header checksum and ICMP
/// checksum updated incrementally (ICMPv6's covers the addresses too).
pub(super) fn rewrite_echo(
    buf: &mut [u8],
    pkt: &Parsed,
    src: Option<IpAddr>,
    dst: Option<IpAddr>,
    ident: u16,
) -> Option<()> {
    let v4 = pkt.key.src.is_ipv4();
    let ip = ethernet::HEADER_LEN;
    let l4 = pkt.l4_offset;
    if l4 == 0 {
        return None;
    }
    let (src_at, dst_at) = addr_offsets(v4);
    let (mut ip_old, mut ip_new) = (0u16, 0u16);
    for (change, at) in [(src, src_at), (dst, dst_at)] {
        let Some(a) = change else { continue };
        if a.is_ipv4() != v4 {
            return None;
        }
        let (o, n) = swap_addr(buf, ip + at, a)?;
        ip_old = checksum::combine(&[ip_old, o]);
        ip_new = checksum::combine(&[ip_new, n]);
    }
    if v4 {
        let c = checksum::update(word(buf, ip + 10)?, ip_old, ip_new);
        put(buf, ip + 10, c)?;
    }
    let old_ident = word(buf, l4 + 4)?;
    put(buf, l4 + 4, ident)?;
    let (mut old, mut new) = (old_ident, ident);
    if !v4 {
        old = checksum::combine(&[old, ip_old]);
        new = checksum::combine(&[new, ip_new]);
    }
    let c = checksum::update(word(buf, l4 + 2)?, old, new);
    put(buf, l4 + 2, c)
}

/// The flow an ICMP error is about, as it quotes it (the packet that left
/// toward the error's sender); `None` when the frame is no error or the
/// quote is unreadable.
pub(super) fn quoted(buf: &[u8], pkt: &Parsed) -> Option<FlowKey> {
    if !pkt.icmp_error || pkt.l4_offset == 0 {
        return None;
    }
    let quote = buf.get(pkt.l4_offset + icmp::HEADER_LEN..pkt.frame_len())?;
    crate::conntrack::quoted_key(quote, !pkt.key.src.is_ipv4())
}

/// The reply direction of `k` (TCP/UDP: ports swapped; ICMP echo: the
/// identifier as destination "port" and the request's type as source, the
/// shape of the `SnatIn` key of an echo flow).
pub(super) fn reverse(k: &FlowKey) -> FlowKey {
    FlowKey {
        src: k.dst,
        dst: k.src,
        proto: k.proto,
        sport: k.dport,
        dport: k.sport,
    }
}

/// Translates an ICMP error in place (see the module doc): the outer
/// source / destination become `outer_src` / `outer_dst` when given; the
/// quoted packet's `end` (address and port, or echo identifier) becomes
/// `to`.
pub(super) fn translate_error(
    buf: &mut [u8],
    pkt: &Parsed,
    outer_src: Option<IpAddr>,
    outer_dst: Option<IpAddr>,
    end: End,
    to: (IpAddr, u16),
) -> Option<()> {
    let v4 = pkt.key.src.is_ipv4();
    let ip = ethernet::HEADER_LEN;
    let l4 = pkt.l4_offset;
    let end_at = pkt.frame_len();
    if l4 == 0 || end_at > buf.len() || to.0.is_ipv4() != v4 {
        return None;
    }
    // Outer header.
    let (src_at, dst_at) = addr_offsets(v4);
    let (mut ip_old, mut ip_new) = (0u16, 0u16);
    for (change, at) in [(outer_src, src_at), (outer_dst, dst_at)] {
        let Some(a) = change else { continue };
        if a.is_ipv4() != v4 {
            return None;
        }
        let (o, n) = swap_addr(buf, ip + at, a)?;
        ip_old = checksum::combine(&[ip_old, o]);
        ip_new = checksum::combine(&[ip_new, n]);
    }
    if v4 {
        let c = checksum::update(word(buf, ip + 10)?, ip_old, ip_new);
        put(buf, ip + 10, c)?;
    }
    // The quoted header.
    let q = l4 + icmp::HEADER_LEN;
    let (q_l4, q_proto) = if v4 {
        let ihl = usize::from(*buf.get(q)? & 0x0f) * 4;
        (q + ihl, *buf.get(q + 9)?)
    } else {
        (q + 40, *buf.get(q + 6)?)
    };
    let (qs, qd) = addr_offsets(v4);
    let addr_at = q + if end == End::Src { qs } else { qd };
    let (a_old, a_new) = swap_addr(buf, addr_at, to.0)?;
    if v4 {
        let c = checksum::update(word(buf, q + 10)?, a_old, a_new);
        put(buf, q + 10, c)?;
    }
    let (port_at, csum_at, pseudo) = match q_proto {
        ip_proto::TCP => (if end == End::Src { 0 } else { 2 }, 16, true),
        ip_proto::UDP => (if end == End::Src { 0 } else { 2 }, 6, true),
        ip_proto::SCTP => (if end == End::Src { 0 } else { 2 }, usize::MAX, false),
        ip_proto::ICMP => (4, 2, false),
        ip_proto::ICMPV6 => (4, 2, true),
        _ => return None,
    };
    let p_old = word(buf, q_l4 + port_at)?;
    if q_l4 + port_at + 2 > end_at {
        return None;
    }
    put(buf, q_l4 + port_at, to.1)?;
    // The quoted L4 checksum, when the quote holds it (UDP over IPv4 may
    // carry none).
    if csum_at != usize::MAX && q_l4 + csum_at + 2 <= end_at {
        let field = word(buf, q_l4 + csum_at)?;
        if !(q_proto == ip_proto::UDP && v4 && field == 0) {
            let (mut old, mut new) = (p_old, to.1);
            if pseudo {
                old = checksum::combine(&[old, a_old]);
                new = checksum::combine(&[new, a_new]);
            }
            let mut c = checksum::update(field, old, new);
            if q_proto == ip_proto::UDP && c == 0 {
                c = 0xffff;
            }
            put(buf, q_l4 + csum_at, c)?;
        }
    }
    // The ICMP checksum, from scratch.
    put(buf, l4 + 2, 0)?;
    let msg = buf.get(l4..end_at)?;
    let mut sum = checksum::data(msg);
    if !v4 {
        let s: [u8; 16] = buf.get(ip + 8..ip + 24)?.try_into().ok()?;
        let d: [u8; 16] = buf.get(ip + 24..ip + 40)?.try_into().ok()?;
        let len = u32::try_from(end_at - l4).ok()?;
        sum = checksum::combine(&[
            sum,
            checksum::pseudo_header_v6(s.into(), d.into(), ip_proto::ICMPV6, len),
        ]);
    }
    put(buf, l4 + 2, !sum)
}

fn in_snat_range(p: u16) -> bool {
    (SNAT_PORT_FIRST..=SNAT_PORT_LAST).contains(&p)
}

/// Whether `frame` (from the uplink) is ICMPv4 for weir's SNAT: an echo
/// reply to `node` whose identifier is in the SNAT range, or an error to
/// `node` quoting a packet `node` sent from a SNAT port or a node port (or
/// with a SNAT identifier). Whole datagrams only. A raw peek, before parse; the XDP
/// program's underlay branch tests the same.
pub(super) fn is_snat_icmp(frame: &[u8], node: std::net::Ipv4Addr) -> bool {
    let ip = ethernet::HEADER_LEN;
    let check = || -> Option<bool> {
        let ver_ihl = *frame.get(ip)?;
        let ihl = usize::from(ver_ihl & 0x0f) * 4;
        if frame.get(12..14)? != [0x08, 0x00] || ver_ihl >> 4 != 4 || ihl < 20 {
            return Some(false);
        }
        let frag = frame.get(ip + 6..ip + 8)?;
        if *frame.get(ip + 9)? != ip_proto::ICMP || frag[0] & 0x3f != 0 || frag[1] != 0 {
            return Some(false);
        }
        if frame.get(ip + 16..ip + 20)? != node.octets() {
            return Some(false);
        }
        let l4 = ip + ihl;
        let ty = *frame.get(l4)?;
        if ty == icmp::v4::ECHO_REPLY {
            return Some(in_snat_range(word(frame, l4 + 4)?));
        }
        if !icmp::v4::is_error(ty) {
            return Some(false);
        }
        let q = l4 + icmp::HEADER_LEN;
        let q_ihl = usize::from(*frame.get(q)? & 0x0f) * 4;
        if frame.get(q + 12..q + 16)? != node.octets() {
            return Some(false);
        }
        let port = match *frame.get(q + 9)? {
            ip_proto::TCP | ip_proto::UDP => {
                let p = word(frame, q + q_ihl)?;
                // A node port's reply (docs/services.md).
                if (NODE_PORT_FIRST..=NODE_PORT_LAST).contains(&p) {
                    return Some(true);
                }
                p
            }
            ip_proto::ICMP => word(frame, q + q_ihl + 4)?,
            _ => return Some(false),
        };
        Some(in_snat_range(port))
    };
    check().unwrap_or(false)
}

/// Whether `frame` (from the uplink) is an ICMPv6 error for weir's SNAT66
/// or an IPv6 node port (docs/egress.md): ICMPv6 directly after the fixed
/// header, to `node`, of type Destination Unreachable, Packet Too Big,
/// Time Exceeded or Parameter Problem (1–4), quoting an IPv6 packet from
/// `node` that is TCP/UDP directly after its fixed header from a SNAT
/// port or a node port, or an echo request with a SNAT identifier. Fixed
/// offsets only; a raw peek, before parse; the XDP program's `underlay6`
/// tests the same.
pub(super) fn is_snat_icmp6(frame: &[u8], node: std::net::Ipv6Addr) -> bool {
    let ip = ethernet::HEADER_LEN;
    let check = || -> Option<bool> {
        if frame.get(12..14)? != [0x86, 0xdd]
            || *frame.get(ip)? >> 4 != 6
            || *frame.get(ip + 6)? != ip_proto::ICMPV6
            || frame.get(ip + 24..ip + 40)? != node.octets()
        {
            return Some(false);
        }
        let l4 = ip + 40;
        if !(1..=4).contains(frame.get(l4)?) {
            return Some(false);
        }
        let q = l4 + icmp::HEADER_LEN;
        if *frame.get(q)? >> 4 != 6 || frame.get(q + 8..q + 24)? != node.octets() {
            return Some(false);
        }
        let q_l4 = q + 40;
        Some(match *frame.get(q + 6)? {
            ip_proto::TCP | ip_proto::UDP => {
                let p = word(frame, q_l4)?;
                in_snat_range(p) || (NODE_PORT_FIRST..=NODE_PORT_LAST).contains(&p)
            }
            ip_proto::ICMPV6 => {
                *frame.get(q_l4)? == icmp::v6::ECHO_REQUEST && in_snat_range(word(frame, q_l4 + 4)?)
            }
            _ => false,
        })
    };
    check().unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{icmpv6::DestUnreachableCode, Icmpv6Type, PacketBuilder};
    use std::net::Ipv6Addr;

    /// The ICMPv6 error peek: what the XDP program's `snat_icmp6_error`
    /// hands the dataplane.
    #[test]
    fn snat_icmp6_peek() {
        let node: Ipv6Addr = "fd00:172:30::1".parse().unwrap();
        let other: Ipv6Addr = "fd00:172:30::2".parse().unwrap();
        let world: Ipv6Addr = "2001:db8:5::1".parse().unwrap();
        // The packet that left: `proto` 0 TCP, 1 UDP, 2 echo request,
        // 3 echo reply; from `src` port (or identifier) `sport`.
        let quote = |src: Ipv6Addr, sport: u16, proto: u8| {
            let b = PacketBuilder::ipv6(src.octets(), world.octets(), 63);
            let mut out = Vec::new();
            match proto {
                0 => b.tcp(sport, 80, 1, 1000).write(&mut out, &[]).unwrap(),
                1 => b.udp(sport, 9).write(&mut out, b"x").unwrap(),
                2 => b
                    .icmpv6_echo_request(sport, 1)
                    .write(&mut out, b"x")
                    .unwrap(),
                _ => b.icmpv6_echo_reply(sport, 1).write(&mut out, b"x").unwrap(),
            }
            out
        };
        let error = |to: Ipv6Addr, ty: Icmpv6Type, q: &[u8]| {
            let mut out = Vec::new();
            PacketBuilder::ethernet2([2; 6], [4; 6])
                .ipv6(world.octets(), to.octets(), 64)
                .icmpv6(ty)
                .write(&mut out, q)
                .unwrap();
            out
        };
        let peek = |to, ty: Icmpv6Type, q: Vec<u8>| is_snat_icmp6(&error(to, ty, &q), node);
        let unreach = Icmpv6Type::DestinationUnreachable(DestUnreachableCode::Port);
        let ptb = Icmpv6Type::PacketTooBig { mtu: 1280 };
        assert!(peek(node, unreach, quote(node, 61000, 1)));
        assert!(peek(node, ptb, quote(node, 65535, 0)));
        assert!(peek(node, ptb, quote(node, 30080, 0)));
        assert!(peek(node, unreach, quote(node, 61000, 2)));
        // Not ours: the node's own ports, an echo reply, another address
        // (outer or quoted), not an error, a quote cut in its port.
        assert!(!peek(node, unreach, quote(node, 40000, 1)));
        assert!(!peek(node, unreach, quote(node, 61000, 3)));
        assert!(!peek(node, unreach, quote(other, 61000, 1)));
        assert!(!peek(other, unreach, quote(node, 61000, 1)));
        let echo = Icmpv6Type::EchoRequest(etherparse::IcmpEchoHeader { id: 61000, seq: 1 });
        assert!(!peek(node, echo, quote(node, 61000, 1)));
        let full = error(node, unreach, &quote(node, 61000, 1));
        assert!(!is_snat_icmp6(&full[..14 + 40 + 8 + 41], node));
    }
}
