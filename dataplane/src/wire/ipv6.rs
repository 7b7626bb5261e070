//! IPv6 header view (RFC 8200) and a walk of the extension-header chain far
//! enough to find the upper-layer protocol.
//!
//! Contract (see [`crate::wire`]): once `check_len()` passed, no accessor panics.
//! `check_len` validates lengths only; the version nibble is the caller's to check.
#![forbid(unsafe_code)]

use super::{ip_proto, Error};
use std::net::Ipv6Addr;

mod field {
    use core::ops::Range;
    pub const VER_TC_FLOW: Range<usize> = 0..4;
    pub const LENGTH: Range<usize> = 4..6;
    pub const NXT_HDR: usize = 6;
    pub const HOP_LIMIT: usize = 7;
    pub const SRC_ADDR: Range<usize> = 8..24;
    pub const DST_ADDR: Range<usize> = 24..40;
}

/// Length of the fixed IPv6 header.
pub const HEADER_LEN: usize = field::DST_ADDR.end;

/// The IPv6 minimum MTU (RFC 8200 §5); ICMPv6 errors fit in it (RFC 4443 §2.4).
pub const MIN_MTU: usize = 1280;

/// A view of an IPv6 packet (header, payload, and possibly trailing bytes
/// beyond the payload length, which [`Packet::payload`] excludes).
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    pub const fn new_unchecked(buffer: T) -> Self {
        Packet { buffer }
    }

    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Buffer ≥ 40 bytes and 40 + payload length ≤ buffer length.
    pub fn check_len(&self) -> Result<(), Error> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN || self.total_len() > len {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn first_word(&self) -> u32 {
        let b = &self.buffer.as_ref()[field::VER_TC_FLOW];
        u32::from_be_bytes([b[0], b[1], b[2], b[3]])
    }

    pub fn version(&self) -> u8 {
        (self.first_word() >> 28) as u8
    }

    pub fn traffic_class(&self) -> u8 {
        (self.first_word() >> 20) as u8
    }

    pub fn flow_label(&self) -> u32 {
        self.first_word() & 0x000f_ffff
    }

    pub fn payload_len(&self) -> u16 {
        let b = &self.buffer.as_ref()[field::LENGTH];
        u16::from_be_bytes([b[0], b[1]])
    }

    /// Header + payload length in bytes.
    pub fn total_len(&self) -> usize {
        HEADER_LEN + usize::from(self.payload_len())
    }

    pub fn next_header(&self) -> u8 {
        self.buffer.as_ref()[field::NXT_HDR]
    }

    pub fn hop_limit(&self) -> u8 {
        self.buffer.as_ref()[field::HOP_LIMIT]
    }

    pub fn src_addr(&self) -> Ipv6Addr {
        addr(&self.buffer.as_ref()[field::SRC_ADDR])
    }

    pub fn dst_addr(&self) -> Ipv6Addr {
        addr(&self.buffer.as_ref()[field::DST_ADDR])
    }

    /// The payload (extension headers included), `payload_len` bytes.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..self.total_len()]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Writes version 6, the traffic class and the flow label.
    pub fn set_version_tc_flow(&mut self, traffic_class: u8, flow_label: u32) {
        let w = (6u32 << 28) | (u32::from(traffic_class) << 20) | (flow_label & 0x000f_ffff);
        self.buffer.as_mut()[field::VER_TC_FLOW].copy_from_slice(&w.to_be_bytes());
    }

    pub fn set_payload_len(&mut self, v: u16) {
        self.buffer.as_mut()[field::LENGTH].copy_from_slice(&v.to_be_bytes());
    }

    pub fn set_next_header(&mut self, v: u8) {
        self.buffer.as_mut()[field::NXT_HDR] = v;
    }

    pub fn set_hop_limit(&mut self, v: u8) {
        self.buffer.as_mut()[field::HOP_LIMIT] = v;
    }

    pub fn set_src_addr(&mut self, a: Ipv6Addr) {
        self.buffer.as_mut()[field::SRC_ADDR].copy_from_slice(&a.octets());
    }

    pub fn set_dst_addr(&mut self, a: Ipv6Addr) {
        self.buffer.as_mut()[field::DST_ADDR].copy_from_slice(&a.octets());
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        let end = self.total_len();
        &mut self.buffer.as_mut()[HEADER_LEN..end]
    }
}

fn addr(b: &[u8]) -> Ipv6Addr {
    let mut o = [0u8; 16];
    o.copy_from_slice(b);
    Ipv6Addr::from(o)
}

/// `fe80::/10`.
pub fn is_link_local(a: Ipv6Addr) -> bool {
    a.segments()[0] & 0xffc0 == 0xfe80
}

/// A fragment header met on the way to the upper layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FragmentInfo {
    /// Fragment offset in bytes.
    pub offset: u16,
    pub more: bool,
    pub ident: u32,
    /// Where the fragment's data (the fragmentable part) starts in the IPv6
    /// payload: right after the fragment header.
    pub data_at: usize,
}

/// Where the upper-layer header starts, found by [`upper_layer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpperLayer {
    /// Upper-layer protocol (TCP, UDP, ICMPv6, ESP, No Next Header, ...). For a
    /// non-first fragment it is the fragment header's next header, and
    /// `offset` points at fragment data, not at that protocol's header.
    pub protocol: u8,
    /// Offset of the upper-layer header in the IPv6 payload (≤ payload length).
    pub offset: usize,
    pub fragment: Option<FragmentInfo>,
}

/// At most this many extension headers are walked; longer chains are
/// [`Error::Unsupported`].
pub const MAX_EXTENSION_HEADERS: usize = 8;

/// Walks hop-by-hop, routing, destination-options, fragment and AH headers
/// starting at `first` (the fixed header's next header) over the IPv6
/// `payload`. Stops at the first other protocol (ESP is opaque and ends the
/// walk too) or after a fragment header with a non-zero offset.
///
/// Refused: a hop-by-hop header anywhere but first ([`Error::Malformed`],
/// RFC 8200 §4.3); a routing header with segments left (any type: the
/// packet would go on from its destination to an address policy never saw;
/// type 0 is deprecated by RFC 5095) ([`Error::Unsupported`]). A header that
/// runs past the payload is [`Error::Truncated`], or
/// [`Error::IncompleteChain`] after a first fragment's fragment header: the
/// first fragment must carry the whole chain up to the upper-layer header
/// (RFC 7112).
pub fn upper_layer(first: u8, payload: &[u8]) -> Result<UpperLayer, Error> {
    let mut nh = first;
    let mut off = 0usize;
    let mut fragment: Option<FragmentInfo> = None;
    for i in 0..=MAX_EXTENSION_HEADERS {
        let cut = if fragment.is_some_and(|f| f.more) {
            Error::IncompleteChain
        } else {
            Error::Truncated
        };
        let len = match nh {
            ip_proto::HOP_BY_HOP if i > 0 => return Err(Error::Malformed),
            ip_proto::HOP_BY_HOP | ip_proto::ROUTING | ip_proto::DEST_OPTS => {
                let h = payload.get(off..off + 2).ok_or(cut)?;
                (usize::from(h[1]) + 1) * 8
            }
            ip_proto::AH => {
                let h = payload.get(off..off + 2).ok_or(cut)?;
                (usize::from(h[1]) + 2) * 4
            }
            ip_proto::FRAGMENT => 8,
            _ => {
                return Ok(UpperLayer {
                    protocol: nh,
                    offset: off,
                    fragment,
                })
            }
        };
        let h = payload.get(off..off + len).ok_or(cut)?;
        let next = h[0];
        if nh == ip_proto::ROUTING && h[3] != 0 {
            return Err(Error::Unsupported);
        }
        if nh == ip_proto::FRAGMENT {
            if fragment.is_some() {
                // Two fragment headers: no reassembly makes sense of it.
                return Err(Error::Malformed);
            }
            let off_flags = u16::from_be_bytes([h[2], h[3]]);
            let f = FragmentInfo {
                offset: off_flags & 0xfff8,
                more: off_flags & 1 != 0,
                ident: u32::from_be_bytes([h[4], h[5], h[6], h[7]]),
                data_at: off + len,
            };
            fragment = Some(f);
            if f.offset != 0 {
                return Ok(UpperLayer {
                    protocol: next,
                    offset: off + len,
                    fragment,
                });
            }
        }
        nh = next;
        off += len;
    }
    Err(Error::Unsupported)
}

/// An IPv6 header weir writes (replies it builds): traffic class and flow
/// label zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    pub next_header: u8,
    /// Bytes after the fixed header.
    pub payload_len: usize,
    pub hop_limit: u8,
}

impl Repr {
    /// Bytes [`Repr::emit`] writes.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the header at the start of `p`'s buffer. `Truncated` when the
    /// buffer is shorter than the header, `Malformed` when the payload
    /// length does not fit its field; nothing written then.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, p: &mut Packet<T>) -> Result<(), Error> {
        if p.buffer.as_ref().len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        let len = u16::try_from(self.payload_len).map_err(|_| Error::Malformed)?;
        p.set_version_tc_flow(0, 0);
        p.set_payload_len(len);
        p.set_next_header(self.next_header);
        p.set_hop_limit(self.hop_limit);
        p.set_src_addr(self.src);
        p.set_dst_addr(self.dst);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2001:db8::1 → 2001:db8::2, UDP, hop limit 64, tc 0x12, flow 0x34567, 8 bytes.
    static PACKET: [u8; 48] = [
        0x61, 0x23, 0x45, 0x67, 0x00, 0x08, 17, 64, // ver/tc/flow, len, nh, hl
        0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, // src
        0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, // dst
        1, 2, 3, 4, 5, 6, 7, 8, // payload
    ];

    fn a(last: u16) -> Ipv6Addr {
        Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, last)
    }

    #[test]
    fn deconstruct() {
        let p = Packet::new_checked(&PACKET[..]).unwrap();
        assert_eq!(p.version(), 6);
        assert_eq!(p.traffic_class(), 0x12);
        assert_eq!(p.flow_label(), 0x34567);
        assert_eq!(p.payload_len(), 8);
        assert_eq!(p.next_header(), 17);
        assert_eq!(p.hop_limit(), 64);
        assert_eq!(p.src_addr(), a(1));
        assert_eq!(p.dst_addr(), a(2));
        assert_eq!(p.payload(), &[1, 2, 3, 4, 5, 6, 7, 8]);
    }

    #[test]
    fn construct() {
        let mut buf = [0xa5u8; 48];
        let mut p = Packet::new_unchecked(&mut buf[..]);
        p.set_version_tc_flow(0x12, 0x34567);
        p.set_payload_len(8);
        p.set_next_header(17);
        p.set_hop_limit(64);
        p.set_src_addr(a(1));
        p.set_dst_addr(a(2));
        p.payload_mut().copy_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(buf, PACKET);
    }

    #[test]
    fn short_is_truncated() {
        for n in 0..48 {
            assert_eq!(
                Packet::new_checked(&PACKET[..n]).err(),
                Some(Error::Truncated)
            );
        }
    }

    #[test]
    fn walk_plain() {
        assert_eq!(
            upper_layer(ip_proto::TCP, &[]),
            Ok(UpperLayer {
                protocol: ip_proto::TCP,
                offset: 0,
                fragment: None
            })
        );
    }

    #[test]
    fn walk_hop_by_hop_dest_opts_fragment() {
        let payload = [
            ip_proto::DEST_OPTS,
            0,
            1,
            4,
            0,
            0,
            0,
            0, // hop-by-hop, 8 bytes (PadN)
            ip_proto::FRAGMENT,
            1,
            1,
            12,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0, // dest-opts, 16
            ip_proto::UDP,
            0,
            0x00,
            0x01,
            0xde,
            0xad,
            0xbe,
            0xef, // fragment: offset 0, M
            0x12,
            0x34, // start of UDP
        ];
        let u = upper_layer(ip_proto::HOP_BY_HOP, &payload).unwrap();
        assert_eq!(u.protocol, ip_proto::UDP);
        assert_eq!(u.offset, 32);
        assert_eq!(
            u.fragment,
            Some(FragmentInfo {
                offset: 0,
                more: true,
                ident: 0xdeadbeef,
                data_at: 32,
            })
        );
    }

    #[test]
    fn walk_later_fragment_stops() {
        let payload = [ip_proto::TCP, 0, 0x05, 0x48, 0, 0, 0, 1, 0xff];
        let u = upper_layer(ip_proto::FRAGMENT, &payload).unwrap();
        assert_eq!(u.protocol, ip_proto::TCP);
        assert_eq!(u.offset, 8);
        assert_eq!(u.fragment.unwrap().offset, 0x548);
        assert!(!u.fragment.unwrap().more);
    }

    #[test]
    fn walk_truncated_and_too_long() {
        assert_eq!(
            upper_layer(ip_proto::HOP_BY_HOP, &[17, 1, 0, 0, 0, 0, 0, 0]),
            Err(Error::Truncated)
        );
        assert_eq!(upper_layer(ip_proto::ROUTING, &[17]), Err(Error::Truncated));
        let chain = [ip_proto::DEST_OPTS, 0, 0, 0, 0, 0, 0, 0].repeat(10);
        assert_eq!(
            upper_layer(ip_proto::DEST_OPTS, &chain),
            Err(Error::Unsupported)
        );
    }

    #[test]
    fn walk_refuses_routing_with_segments_left_and_misplaced_hop_by_hop() {
        // Routing header type 0, 2 segments left (RFC 5095): refused.
        let mut rh0 = vec![ip_proto::UDP, 4, 0, 2, 0, 0, 0, 0];
        rh0.extend_from_slice(&[0; 32]);
        assert_eq!(
            upper_layer(ip_proto::ROUTING, &rh0),
            Err(Error::Unsupported)
        );
        // Any type with segments left: refused; with none left: walked over.
        rh0[2] = 4;
        assert_eq!(
            upper_layer(ip_proto::ROUTING, &rh0),
            Err(Error::Unsupported)
        );
        rh0[3] = 0;
        assert_eq!(
            upper_layer(ip_proto::ROUTING, &rh0).map(|u| (u.protocol, u.offset)),
            Ok((ip_proto::UDP, 40))
        );
        // Hop-by-hop after a destination-options header.
        let chain = [
            ip_proto::HOP_BY_HOP,
            0,
            1,
            4,
            0,
            0,
            0,
            0,
            17,
            0,
            1,
            4,
            0,
            0,
            0,
            0,
        ];
        assert_eq!(
            upper_layer(ip_proto::DEST_OPTS, &chain),
            Err(Error::Malformed)
        );
        // Two fragment headers.
        let two = [
            ip_proto::FRAGMENT,
            0,
            0,
            1,
            0,
            0,
            0,
            1,
            17,
            0,
            0,
            1,
            0,
            0,
            0,
            1,
        ];
        assert_eq!(upper_layer(ip_proto::FRAGMENT, &two), Err(Error::Malformed));
    }

    #[test]
    fn first_fragment_must_carry_the_whole_chain() {
        // Fragment header (offset 0, M) then a destination-options header
        // that claims 16 bytes of which the fragment carries 8 (RFC 7112).
        let payload = [
            ip_proto::DEST_OPTS,
            0,
            0,
            1,
            0,
            0,
            0,
            9, // fragment
            ip_proto::UDP,
            1,
            1,
            4,
            0,
            0,
            0,
            0, // dest-opts, cut
        ];
        assert_eq!(
            upper_layer(ip_proto::FRAGMENT, &payload),
            Err(Error::IncompleteChain)
        );
        // The same cut in an unfragmented packet is plain truncation.
        assert_eq!(
            upper_layer(ip_proto::DEST_OPTS, &payload[8..]),
            Err(Error::Truncated)
        );
    }

    #[test]
    fn link_local() {
        assert!(is_link_local("fe80::1".parse().unwrap()));
        assert!(is_link_local("febf::1".parse().unwrap()));
        assert!(!is_link_local("fec0::1".parse().unwrap()));
        assert!(!is_link_local(a(1)));
    }

    #[test]
    fn repr_emit_golden() {
        let repr = Repr {
            src: "fd00::1".parse().unwrap(),
            dst: "fd00::2".parse().unwrap(),
            next_header: 58,
            payload_len: 8,
            hop_limit: 64,
        };
        let mut buf = [0xa5u8; 41];
        repr.emit(&mut Packet::new_unchecked(&mut buf[..])).unwrap();
        let mut want = [0u8; 40];
        want[..8].copy_from_slice(&[0x60, 0, 0, 0, 0, 8, 58, 64]);
        want[8] = 0xfd;
        want[23] = 1;
        want[24] = 0xfd;
        want[39] = 2;
        assert_eq!(&buf[..40], &want);
        assert_eq!(buf[40], 0xa5);
        assert_eq!(
            repr.emit(&mut Packet::new_unchecked(&mut [0u8; 39][..])),
            Err(Error::Truncated)
        );
    }
}
