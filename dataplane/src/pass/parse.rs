//! Stage 2: parse. A pure function of the frame's bytes (tests and tools
//! call it directly): Ethernet, IPv4/IPv6 with extension headers, the L4
//! header, and what the later stages need to know.

use core::ops::ControlFlow::{self, Continue};

use super::{drop, or_drop, FlowKey};
use crate::conntrack;
use crate::wire::ethernet::{self, ethertype, Frame};
use crate::wire::{icmp, ip_proto, ipv4, ipv6, sctp, tcp, udp, Error as WireError};
use crate::{DropReason, Verdict};

/// Where a packet sits in a fragmented datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fragment {
    /// Not fragmented (an IPv6 atomic fragment counts as whole).
    Whole,
    /// Offset 0, more to come: L4 header checked, ports known.
    First,
    /// Offset > 0: no L4 header here; ports are zero.
    Later,
}

/// What [`parse`] learned about a frame. Later stages work from this and the
/// bytes; nothing here borrows the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parsed {
    pub key: FlowKey,
    /// IP header + payload, from the IP total/payload length (padding excluded).
    pub ip_len: usize,
    /// TTL or hop limit as received.
    pub ttl: u8,
    pub fragment: Fragment,
    /// IPv4 DF flag; always true for IPv6 (routers never fragment it).
    pub dont_frag: bool,
    /// The L4 message is an ICMP/ICMPv6 error (never answered with one).
    pub icmp_error: bool,
    /// TCP flags (0 for other protocols and non-first fragments); for SCTP
    /// the first chunk as TCP flags ([`conntrack::sctp_as_tcp_flags`]).
    pub tcp_flags: u8,
    /// Offset of the L4 header in the frame (0 for non-first fragments).
    pub l4_offset: usize,
    /// Where a fragment sits in its datagram (zeros when whole).
    pub frag: FragPos,
}

/// A fragment's identification, offset and length (see [`crate::frag`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FragPos {
    /// IPv4 identification, or the IPv6 fragment header's identification.
    pub ident: u32,
    /// Offset of the fragment's data in the datagram, in bytes.
    pub offset: u16,
    /// Bytes of fragment data this fragment carries.
    pub len: u16,
}

impl Parsed {
    /// A placeholder (an unwritten stage 0 slot; never judged).
    pub(super) const NONE: Parsed = Parsed {
        key: FlowKey::UNSPECIFIED,
        ip_len: 0,
        ttl: 0,
        fragment: Fragment::Whole,
        dont_frag: false,
        icmp_error: false,
        tcp_flags: 0,
        l4_offset: 0,
        frag: FragPos {
            ident: 0,
            offset: 0,
            len: 0,
        },
    };

    /// Length of the frame to forward: Ethernet header + IP length.
    pub fn frame_len(&self) -> usize {
        ethernet::HEADER_LEN + self.ip_len
    }
}

/// A raw peek, before [`parse`], for the stages that decide from the
/// underlay's frames who sent them (`egress.rs`, `host_in.rs`,
/// `external.rs`): when `frame` is a whole IPv4 datagram (no MF, fragment
/// offset 0) with a valid version and header length, its protocol, its
/// destination address and where its L4 header starts.
pub(super) fn peek_whole_v4(frame: &[u8]) -> Option<(u8, [u8; 4], usize)> {
    let ip_at = ethernet::HEADER_LEN;
    let (Some(ty), Some(&ver_ihl), Some(&proto), Some(frag), Some(dst)) = (
        frame.get(12..14),
        frame.get(ip_at),
        frame.get(ip_at + 9),
        frame.get(ip_at + 6..ip_at + 8),
        frame.get(ip_at + 16..ip_at + 20),
    ) else {
        return None;
    };
    let ihl = usize::from(ver_ihl & 0x0f) * 4;
    if ty != [0x08, 0x00] || ver_ihl >> 4 != 4 || ihl < 20 || frag[0] & 0x3f != 0 || frag[1] != 0 {
        return None;
    }
    Some((proto, <[u8; 4]>::try_from(dst).ok()?, ip_at + ihl))
}

/// Stage 2: validate Ethernet, IPv4/IPv6 (with IPv6 extension headers) and
/// the L4 header, and extract the [`FlowKey`].
#[inline]
pub fn parse(frame: &[u8]) -> ControlFlow<Verdict, Parsed> {
    let mut p = Parsed::NONE;
    parse_into(frame, &mut p)?;
    Continue(p)
}

/// [`parse`], writing the result into `out` (stage 0 writes it straight
/// into the worker's slot: returned by value, the ~70-byte [`Parsed`]
/// went through the stack, written field by field and read back in wider
/// loads, and stalled its caller on store forwarding; perf,
/// docs/performance.md). On a drop `out` is left partly written.
#[inline]
pub(super) fn parse_into(frame: &[u8], out: &mut Parsed) -> ControlFlow<Verdict> {
    let eth = or_drop(Frame::new_checked(frame), DropReason::FrameTooShort)?;
    match eth.ethertype() {
        ethertype::IPV4 => parse_ipv4(eth.payload(), out),
        ethertype::IPV6 => parse_ipv6(eth.payload(), out),
        _ => drop(DropReason::UnsupportedEtherType),
    }
}

#[inline(always)]
fn parse_ipv4(bytes: &[u8], out: &mut Parsed) -> ControlFlow<Verdict> {
    let ip = or_drop(ipv4::Packet::new_checked(bytes), DropReason::Ipv4Malformed)?;
    if ip.version() != 4 {
        return drop(DropReason::Ipv4Malformed);
    }
    let fragment = if ip.frag_offset() != 0 {
        Fragment::Later
    } else if ip.more_frags() {
        Fragment::First
    } else {
        Fragment::Whole
    };
    let l4 = parse_l4(ip.protocol(), ip.payload(), fragment, Family::V4)?;
    *out = Parsed {
        key: FlowKey {
            src: ip.src_addr().into(),
            dst: ip.dst_addr().into(),
            proto: ip.protocol(),
            sport: l4.sport,
            dport: l4.dport,
        },
        ip_len: usize::from(ip.total_len()),
        ttl: ip.ttl(),
        fragment,
        dont_frag: ip.dont_frag(),
        icmp_error: l4.icmp_error,
        tcp_flags: l4.tcp_flags,
        l4_offset: if fragment == Fragment::Later {
            0
        } else {
            ethernet::HEADER_LEN + ip.header_len()
        },
        frag: FragPos {
            ident: u32::from(ip.ident()),
            offset: ip.frag_offset(),
            len: ip.total_len().saturating_sub(ip.header_len() as u16),
        },
    };
    Continue(())
}

#[inline(never)]
fn parse_ipv6(bytes: &[u8], out: &mut Parsed) -> ControlFlow<Verdict> {
    let ip = or_drop(ipv6::Packet::new_checked(bytes), DropReason::Ipv6Malformed)?;
    if ip.version() != 6 {
        return drop(DropReason::Ipv6Malformed);
    }
    let upper = match ipv6::upper_layer(ip.next_header(), ip.payload()) {
        Ok(u) => u,
        Err(WireError::Unsupported) => return drop(DropReason::Ipv6Unsupported),
        Err(WireError::IncompleteChain) => return drop(DropReason::FragmentInvalid),
        Err(_) => return drop(DropReason::Ipv6Malformed),
    };
    let fragment = match upper.fragment {
        Some(f) if f.offset != 0 => Fragment::Later,
        Some(f) if f.more => Fragment::First,
        _ => Fragment::Whole,
    };
    let Some(l4_bytes) = ip.payload().get(upper.offset..) else {
        return drop(DropReason::Ipv6Malformed);
    };
    let l4 = parse_l4(upper.protocol, l4_bytes, fragment, Family::V6)?;
    *out = Parsed {
        key: FlowKey {
            src: ip.src_addr().into(),
            dst: ip.dst_addr().into(),
            proto: upper.protocol,
            sport: l4.sport,
            dport: l4.dport,
        },
        ip_len: ip.total_len(),
        ttl: ip.hop_limit(),
        fragment,
        dont_frag: true,
        icmp_error: l4.icmp_error,
        tcp_flags: l4.tcp_flags,
        l4_offset: if fragment == Fragment::Later {
            0
        } else {
            ethernet::HEADER_LEN + ipv6::HEADER_LEN + upper.offset
        },
        frag: upper.fragment.map_or(FragPos::default(), |f| FragPos {
            ident: f.ident,
            offset: f.offset,
            len: u16::try_from(ip.payload().len().saturating_sub(f.data_at)).unwrap_or(u16::MAX),
        }),
    };
    Continue(())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

#[derive(Default)]
struct L4 {
    sport: u16,
    dport: u16,
    icmp_error: bool,
    tcp_flags: u8,
}

/// Checks the L4 header length and reads ports / ICMP type. A non-first
/// fragment carries no L4 header. A first fragment's UDP length covers the
/// whole datagram, so only the 8-byte header is required there.
fn parse_l4(
    proto: u8,
    bytes: &[u8],
    fragment: Fragment,
    family: Family,
) -> ControlFlow<Verdict, L4> {
    if fragment == Fragment::Later {
        return Continue(L4::default());
    }
    // A first fragment too short for its transport header is the "tiny
    // fragment" of RFC 1858: the rest of the header would come in a later
    // fragment, unjudged.
    let trunc = if fragment == Fragment::First {
        DropReason::FragmentInvalid
    } else {
        DropReason::L4Truncated
    };
    let icmp_proto = match family {
        Family::V4 => ip_proto::ICMP,
        Family::V6 => ip_proto::ICMPV6,
    };
    match proto {
        ip_proto::TCP => {
            let t = or_drop(tcp::Packet::new_checked(bytes), trunc)?;
            Continue(L4 {
                sport: t.src_port(),
                dport: t.dst_port(),
                icmp_error: false,
                tcp_flags: t.flags(),
            })
        }
        ip_proto::UDP => {
            let u = if fragment == Fragment::First {
                let u = udp::Packet::new_unchecked(bytes);
                if bytes.len() < udp::HEADER_LEN || usize::from(u.length()) < udp::HEADER_LEN {
                    return drop(trunc);
                }
                u
            } else {
                or_drop(udp::Packet::new_checked(bytes), trunc)?
            };
            Continue(L4 {
                sport: u.src_port(),
                dport: u.dst_port(),
                ..L4::default()
            })
        }
        ip_proto::SCTP => {
            let c = or_drop(sctp::Packet::new_checked(bytes), trunc)?;
            Continue(L4 {
                sport: c.src_port(),
                dport: c.dst_port(),
                icmp_error: false,
                tcp_flags: conntrack::sctp_as_tcp_flags(c.first_chunk_type()),
            })
        }
        p if p == icmp_proto => {
            let i = or_drop(icmp::Packet::new_checked(bytes), trunc)?;
            let t = i.msg_type();
            let (is_echo, is_error) = match family {
                Family::V4 => (
                    t == icmp::v4::ECHO_REQUEST || t == icmp::v4::ECHO_REPLY,
                    icmp::v4::is_error(t),
                ),
                Family::V6 => (
                    t == icmp::v6::ECHO_REQUEST || t == icmp::v6::ECHO_REPLY,
                    icmp::v6::is_error(t),
                ),
            };
            Continue(L4 {
                sport: if is_echo { i.echo_ident() } else { 0 },
                dport: u16::from_be_bytes([t, i.code()]),
                icmp_error: is_error,
                tcp_flags: 0,
            })
        }
        _ => Continue(L4::default()),
    }
}
