//! IPv4 header view (RFC 791), options allowed (skipped, never interpreted).
//!
//! Contract (see [`crate::wire`]): once `check_len()` passed, no accessor panics.
//! `check_len` validates lengths only; the version nibble is the caller's to check.
#![forbid(unsafe_code)]

use super::{checksum, Error};
use std::net::Ipv4Addr;

mod field {
    use core::ops::Range;
    pub const VER_IHL: usize = 0;
    pub const DSCP_ECN: usize = 1;
    pub const LENGTH: Range<usize> = 2..4;
    pub const IDENT: Range<usize> = 4..6;
    pub const FLG_OFF: Range<usize> = 6..8;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: Range<usize> = 10..12;
    pub const SRC_ADDR: Range<usize> = 12..16;
    pub const DST_ADDR: Range<usize> = 16..20;
}

/// Length of an IPv4 header without options.
pub const HEADER_LEN: usize = field::DST_ADDR.end;

const FLAG_DF: u16 = 0x4000;
const FLAG_MF: u16 = 0x2000;
const OFFSET_MASK: u16 = 0x1fff;

/// A view of an IPv4 packet (header, options, payload, and possibly trailing
/// bytes beyond the total length, which [`Packet::payload`] excludes).
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

    /// Buffer ≥ 20 bytes, 20 ≤ IHL·4 ≤ total length ≤ buffer length.
    pub fn check_len(&self) -> Result<(), Error> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(Error::Truncated);
        }
        let hl = self.header_len();
        let total = usize::from(self.total_len());
        if hl < HEADER_LEN || total < hl {
            return Err(Error::Malformed);
        }
        if total > len {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn u16_at(&self, r: core::ops::Range<usize>) -> u16 {
        let b = &self.buffer.as_ref()[r];
        u16::from_be_bytes([b[0], b[1]])
    }

    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_IHL] >> 4
    }

    /// Header length in bytes (IHL · 4), options included.
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::VER_IHL] & 0x0f) * 4
    }

    pub fn dscp_ecn(&self) -> u8 {
        self.buffer.as_ref()[field::DSCP_ECN]
    }

    /// Total length (header + payload) in bytes.
    pub fn total_len(&self) -> u16 {
        self.u16_at(field::LENGTH)
    }

    pub fn ident(&self) -> u16 {
        self.u16_at(field::IDENT)
    }

    pub fn dont_frag(&self) -> bool {
        self.u16_at(field::FLG_OFF) & FLAG_DF != 0
    }

    pub fn more_frags(&self) -> bool {
        self.u16_at(field::FLG_OFF) & FLAG_MF != 0
    }

    /// Fragment offset in bytes (the field · 8).
    pub fn frag_offset(&self) -> u16 {
        (self.u16_at(field::FLG_OFF) & OFFSET_MASK) << 3
    }

    pub fn ttl(&self) -> u8 {
        self.buffer.as_ref()[field::TTL]
    }

    pub fn protocol(&self) -> u8 {
        self.buffer.as_ref()[field::PROTOCOL]
    }

    pub fn checksum(&self) -> u16 {
        self.u16_at(field::CHECKSUM)
    }

    pub fn src_addr(&self) -> Ipv4Addr {
        addr(&self.buffer.as_ref()[field::SRC_ADDR])
    }

    pub fn dst_addr(&self) -> Ipv4Addr {
        addr(&self.buffer.as_ref()[field::DST_ADDR])
    }

    /// The header checksum covers the header (options included) correctly.
    pub fn verify_checksum(&self) -> bool {
        checksum::data(&self.buffer.as_ref()[..self.header_len()]) == 0xffff
    }

    /// The payload: from the end of the options to the total length.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..usize::from(self.total_len())]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    fn set_u16_at(&mut self, r: core::ops::Range<usize>, v: u16) {
        self.buffer.as_mut()[r].copy_from_slice(&v.to_be_bytes());
    }

    /// Sets version 4 and the header length in bytes (a multiple of 4, ≤ 60).
    pub fn set_version_and_header_len(&mut self, header_len: usize) {
        self.buffer.as_mut()[field::VER_IHL] = 0x40 | ((header_len / 4) as u8 & 0x0f);
    }

    pub fn set_dscp_ecn(&mut self, v: u8) {
        self.buffer.as_mut()[field::DSCP_ECN] = v;
    }

    pub fn set_total_len(&mut self, v: u16) {
        self.set_u16_at(field::LENGTH, v)
    }

    pub fn set_ident(&mut self, v: u16) {
        self.set_u16_at(field::IDENT, v)
    }

    /// Sets DF, MF and the fragment offset (in bytes, a multiple of 8).
    pub fn set_flags_and_offset(&mut self, dont_frag: bool, more_frags: bool, offset: u16) {
        let mut v = (offset >> 3) & OFFSET_MASK;
        if dont_frag {
            v |= FLAG_DF;
        }
        if more_frags {
            v |= FLAG_MF;
        }
        self.set_u16_at(field::FLG_OFF, v)
    }

    pub fn set_ttl(&mut self, v: u8) {
        self.buffer.as_mut()[field::TTL] = v;
    }

    pub fn set_protocol(&mut self, v: u8) {
        self.buffer.as_mut()[field::PROTOCOL] = v;
    }

    pub fn set_checksum(&mut self, v: u16) {
        self.set_u16_at(field::CHECKSUM, v)
    }

    pub fn set_src_addr(&mut self, a: Ipv4Addr) {
        self.buffer.as_mut()[field::SRC_ADDR].copy_from_slice(&a.octets());
    }

    pub fn set_dst_addr(&mut self, a: Ipv4Addr) {
        self.buffer.as_mut()[field::DST_ADDR].copy_from_slice(&a.octets());
    }

    /// Computes and writes the header checksum (over IHL·4 bytes).
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let c = !checksum::data(&self.buffer.as_ref()[..self.header_len()]);
        self.set_checksum(c);
    }

    /// TTL − 1 with the RFC 1624 incremental checksum update. The caller
    /// makes sure the TTL is above zero (a router drops at TTL ≤ 1 anyway);
    /// at zero the TTL stays zero.
    pub fn decrement_ttl(&mut self) {
        let ttl = self.ttl();
        if ttl == 0 {
            return;
        }
        let proto = self.protocol();
        let old = u16::from_be_bytes([ttl, proto]);
        let new = u16::from_be_bytes([ttl - 1, proto]);
        let c = checksum::update(self.checksum(), old, new);
        self.set_ttl(ttl - 1);
        self.set_checksum(c);
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        let (hl, total) = (self.header_len(), usize::from(self.total_len()));
        &mut self.buffer.as_mut()[hl..total]
    }
}

fn addr(b: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(b[0], b[1], b[2], b[3])
}

/// An IPv4 header weir writes (replies it builds): 20 bytes, no options,
/// identification 0, never a fragment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub protocol: u8,
    /// Bytes after the header.
    pub payload_len: usize,
    pub ttl: u8,
    pub dscp_ecn: u8,
    pub dont_frag: bool,
}

impl Repr {
    /// Bytes [`Repr::emit`] writes.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the header and its checksum at the start of `p`'s buffer.
    /// `Truncated` when the buffer is shorter than the header, `Malformed`
    /// when the total length does not fit its field; nothing written then.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, p: &mut Packet<T>) -> Result<(), Error> {
        if p.buffer.as_ref().len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        let total = u16::try_from(HEADER_LEN + self.payload_len).map_err(|_| Error::Malformed)?;
        p.set_version_and_header_len(HEADER_LEN);
        p.set_dscp_ecn(self.dscp_ecn);
        p.set_total_len(total);
        p.set_ident(0);
        p.set_flags_and_offset(self.dont_frag, false, 0);
        p.set_ttl(self.ttl);
        p.set_protocol(self.protocol);
        p.set_src_addr(self.src);
        p.set_dst_addr(self.dst);
        p.fill_checksum();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 10.0.0.1 → 10.0.0.2, UDP, DF, TTL 64, 8 bytes payload.
    static PACKET: [u8; 28] = [
        0x45, 0x00, 0x00, 0x1c, 0x12, 0x34, 0x40, 0x00, 0x40, 0x11, 0x14, 0x9b, 10, 0, 0, 1, 10, 0,
        0, 2, // header
        1, 2, 3, 4, 5, 6, 7, 8, // payload
    ];

    /// With one 4-byte option, MF set, offset 40, and 4 bytes of trailing padding.
    static FRAGMENT_WITH_OPTION: [u8; 36] = [
        0x46, 0x00, 0x00, 0x20, 0x12, 0x34, 0x20, 0x05, 0x40, 0x11, 0x31, 0x91, 10, 0, 0, 1, 10, 0,
        0, 2, 1, 1, 1, 0, // header + option (NOP NOP NOP EOL)
        1, 2, 3, 4, 5, 6, 7, 8, // payload
        0, 0, 0, 0, // padding
    ];

    #[test]
    fn deconstruct() {
        let p = Packet::new_checked(&PACKET[..]).unwrap();
        assert_eq!(p.version(), 4);
        assert_eq!(p.header_len(), 20);
        assert_eq!(p.dscp_ecn(), 0);
        assert_eq!(p.total_len(), 28);
        assert_eq!(p.ident(), 0x1234);
        assert!(p.dont_frag());
        assert!(!p.more_frags());
        assert_eq!(p.frag_offset(), 0);
        assert_eq!(p.ttl(), 64);
        assert_eq!(p.protocol(), 17);
        assert_eq!(p.checksum(), 0x149b);
        assert!(p.verify_checksum());
        assert_eq!(p.src_addr(), Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(p.dst_addr(), Ipv4Addr::new(10, 0, 0, 2));
        assert_eq!(p.payload(), &[1, 2, 3, 4, 5, 6, 7, 8]);
    }

    #[test]
    fn deconstruct_options_fragment_padding() {
        let p = Packet::new_checked(&FRAGMENT_WITH_OPTION[..]).unwrap();
        assert_eq!(p.header_len(), 24);
        assert!(!p.dont_frag());
        assert!(p.more_frags());
        assert_eq!(p.frag_offset(), 40);
        assert!(p.verify_checksum());
        assert_eq!(p.payload(), &[1, 2, 3, 4, 5, 6, 7, 8]);
    }

    #[test]
    fn construct() {
        let mut buf = [0xa5u8; 28];
        let mut p = Packet::new_unchecked(&mut buf[..]);
        p.set_version_and_header_len(20);
        p.set_dscp_ecn(0);
        p.set_total_len(28);
        p.set_ident(0x1234);
        p.set_flags_and_offset(true, false, 0);
        p.set_ttl(64);
        p.set_protocol(17);
        p.set_src_addr(Ipv4Addr::new(10, 0, 0, 1));
        p.set_dst_addr(Ipv4Addr::new(10, 0, 0, 2));
        p.fill_checksum();
        p.payload_mut().copy_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(buf, PACKET);
    }

    #[test]
    fn construct_options_fragment() {
        let mut buf = [0xa5u8; 32];
        let mut p = Packet::new_unchecked(&mut buf[..]);
        p.set_version_and_header_len(24);
        p.set_dscp_ecn(0);
        p.set_total_len(32);
        p.set_ident(0x1234);
        p.set_flags_and_offset(false, true, 40);
        p.set_ttl(64);
        p.set_protocol(17);
        p.set_src_addr(Ipv4Addr::new(10, 0, 0, 1));
        p.set_dst_addr(Ipv4Addr::new(10, 0, 0, 2));
        buf[20..24].copy_from_slice(&[1, 1, 1, 0]);
        let mut p = Packet::new_unchecked(&mut buf[..]);
        p.fill_checksum();
        p.payload_mut().copy_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(buf[..], FRAGMENT_WITH_OPTION[..32]);
    }

    #[test]
    fn decrement_ttl_golden() {
        let mut buf = PACKET;
        Packet::new_unchecked(&mut buf[..]).decrement_ttl();
        assert_eq!(buf[8], 63);
        assert_eq!(buf[10..12], [0x15, 0x9b]);
        assert!(Packet::new_unchecked(&buf[..]).verify_checksum());
    }

    #[test]
    fn bad_lengths() {
        for n in 0..28 {
            assert_eq!(
                Packet::new_checked(&PACKET[..n]).err(),
                Some(Error::Truncated),
                "{n}"
            );
        }
        let mut b = PACKET;
        b[0] = 0x44; // IHL 4
        assert_eq!(Packet::new_checked(&b[..]).err(), Some(Error::Malformed));
        let mut b = PACKET;
        b[2..4].copy_from_slice(&19u16.to_be_bytes()); // total < header
        assert_eq!(Packet::new_checked(&b[..]).err(), Some(Error::Malformed));
        let mut b = PACKET;
        b[0] = 0x4f; // IHL 15 = 60 bytes > total 28
        assert_eq!(Packet::new_checked(&b[..]).err(), Some(Error::Malformed));
    }

    #[test]
    fn repr_emit_golden() {
        let repr = Repr {
            src: Ipv4Addr::new(10, 0, 0, 1),
            dst: Ipv4Addr::new(10, 0, 0, 2),
            protocol: 6,
            payload_len: 20,
            ttl: 64,
            dscp_ecn: 0,
            dont_frag: true,
        };
        let mut buf = [0xa5u8; 21];
        repr.emit(&mut Packet::new_unchecked(&mut buf[..])).unwrap();
        let want: [u8; 20] = [
            0x45, 0x00, 0x00, 0x28, 0x00, 0x00, 0x40, 0x00, 0x40, 0x06, 0x26, 0xce, 10, 0, 0, 1,
            10, 0, 0, 2,
        ];
        assert_eq!(&buf[..20], &want);
        assert_eq!(buf[20], 0xa5);
        let p = Packet::new_unchecked(&buf[..20]);
        assert!(p.verify_checksum());
        assert_eq!(
            repr.emit(&mut Packet::new_unchecked(&mut [0u8; 19][..])),
            Err(Error::Truncated)
        );
        let huge = Repr {
            payload_len: 65_516,
            ..repr
        };
        assert_eq!(
            huge.emit(&mut Packet::new_unchecked(&mut [0u8; 20][..])),
            Err(Error::Malformed)
        );
    }
}
