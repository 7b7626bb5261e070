//! ICMP (RFC 792) and ICMPv6 (RFC 4443) share one header layout: type, code,
//! checksum, four bytes whose meaning depends on the type, then the body.
//! One view serves both; the checksum differs (ICMPv6 covers a pseudo-header).
//!
//! Contract (see [`crate::wire`]): once `check_len()` passed, no accessor panics.
#![forbid(unsafe_code)]

use super::{checksum, ip_proto, Error};
use std::net::Ipv6Addr;

mod field {
    use core::ops::{Range, RangeFrom};
    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: Range<usize> = 2..4;
    /// Type-dependent: echo identifier + sequence, next-hop MTU, PTB MTU, unused.
    pub const REST: Range<usize> = 4..8;
    pub const ECHO_IDENT: Range<usize> = 4..6;
    pub const ECHO_SEQ: Range<usize> = 6..8;
    pub const PAYLOAD: RangeFrom<usize> = 8..;
}

/// Length of the ICMP/ICMPv6 header.
pub const HEADER_LEN: usize = field::PAYLOAD.start;

/// ICMP (v4) types and codes weir uses.
pub mod v4 {
    pub const ECHO_REPLY: u8 = 0;
    pub const DEST_UNREACHABLE: u8 = 3;
    pub const ECHO_REQUEST: u8 = 8;
    pub const TIME_EXCEEDED: u8 = 11;
    /// Destination Unreachable code: fragmentation needed and DF set.
    pub const CODE_FRAG_NEEDED: u8 = 4;
    /// Time Exceeded code: TTL exceeded in transit.
    pub const CODE_TTL_EXCEEDED: u8 = 0;

    /// Whether a type must not be answered with an ICMP error (RFC 1122
    /// §3.2.2): the error messages, and, conservatively, any type that is
    /// not a known query/reply.
    pub fn is_error(t: u8) -> bool {
        !matches!(t, 0 | 8 | 9 | 10 | 13 | 14 | 15 | 16 | 17 | 18)
    }
}

/// ICMPv6 types and codes weir uses.
pub mod v6 {
    pub const DEST_UNREACHABLE: u8 = 1;
    pub const PACKET_TOO_BIG: u8 = 2;
    pub const TIME_EXCEEDED: u8 = 3;
    pub const ECHO_REQUEST: u8 = 128;
    pub const ECHO_REPLY: u8 = 129;
    /// Time Exceeded code: hop limit exceeded in transit.
    pub const CODE_HOP_LIMIT_EXCEEDED: u8 = 0;

    /// Error messages are types 0–127 (RFC 4443 §2.1).
    pub fn is_error(t: u8) -> bool {
        t < 128
    }
}

/// A view of an ICMP or ICMPv6 message.
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

    /// Buffer ≥ 8 bytes. The whole buffer is the message (checksums cover it).
    pub fn check_len(&self) -> Result<(), Error> {
        if self.buffer.as_ref().len() < HEADER_LEN {
            Err(Error::Truncated)
        } else {
            Ok(())
        }
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn u16_at(&self, r: core::ops::Range<usize>) -> u16 {
        let b = &self.buffer.as_ref()[r];
        u16::from_be_bytes([b[0], b[1]])
    }

    pub fn msg_type(&self) -> u8 {
        self.buffer.as_ref()[field::TYPE]
    }

    pub fn code(&self) -> u8 {
        self.buffer.as_ref()[field::CODE]
    }

    pub fn checksum(&self) -> u16 {
        self.u16_at(field::CHECKSUM)
    }

    /// Bytes 4..8 as a big-endian word (the ICMPv6 Packet Too Big MTU).
    pub fn rest_of_header(&self) -> u32 {
        let b = &self.buffer.as_ref()[field::REST];
        u32::from_be_bytes([b[0], b[1], b[2], b[3]])
    }

    /// Echo request/reply identifier.
    pub fn echo_ident(&self) -> u16 {
        self.u16_at(field::ECHO_IDENT)
    }

    /// Echo request/reply sequence number.
    pub fn echo_seq(&self) -> u16 {
        self.u16_at(field::ECHO_SEQ)
    }

    /// ICMPv4 Fragmentation Needed: the next-hop MTU (RFC 1191).
    pub fn next_hop_mtu(&self) -> u16 {
        self.u16_at(field::ECHO_SEQ)
    }

    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD]
    }

    /// ICMPv4: the checksum over the whole buffer is correct.
    pub fn verify_checksum_v4(&self) -> bool {
        checksum::data(self.buffer.as_ref()) == 0xffff
    }

    /// ICMPv6: the checksum over pseudo-header + whole buffer is correct.
    pub fn verify_checksum_v6(&self, src: Ipv6Addr, dst: Ipv6Addr) -> bool {
        let b = self.buffer.as_ref();
        checksum::combine(&[
            checksum::pseudo_header_v6(src, dst, ip_proto::ICMPV6, b.len() as u32),
            checksum::data(b),
        ]) == 0xffff
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    fn set_u16_at(&mut self, r: core::ops::Range<usize>, v: u16) {
        self.buffer.as_mut()[r].copy_from_slice(&v.to_be_bytes());
    }

    pub fn set_msg_type(&mut self, v: u8) {
        self.buffer.as_mut()[field::TYPE] = v;
    }

    pub fn set_code(&mut self, v: u8) {
        self.buffer.as_mut()[field::CODE] = v;
    }

    pub fn set_checksum(&mut self, v: u16) {
        self.set_u16_at(field::CHECKSUM, v)
    }

    pub fn set_rest_of_header(&mut self, v: u32) {
        self.buffer.as_mut()[field::REST].copy_from_slice(&v.to_be_bytes());
    }

    pub fn set_echo_ident(&mut self, v: u16) {
        self.set_u16_at(field::ECHO_IDENT, v)
    }

    pub fn set_echo_seq(&mut self, v: u16) {
        self.set_u16_at(field::ECHO_SEQ, v)
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::PAYLOAD]
    }

    /// ICMPv4: computes and writes the checksum over the whole buffer.
    pub fn fill_checksum_v4(&mut self) {
        self.set_checksum(0);
        let c = !checksum::data(self.buffer.as_ref());
        self.set_checksum(c);
    }

    /// ICMPv6: computes and writes the checksum over pseudo-header + buffer.
    pub fn fill_checksum_v6(&mut self, src: Ipv6Addr, dst: Ipv6Addr) {
        self.set_checksum(0);
        let b = self.buffer.as_ref();
        let c = !checksum::combine(&[
            checksum::pseudo_header_v6(src, dst, ip_proto::ICMPV6, b.len() as u32),
            checksum::data(b),
        ]);
        self.set_checksum(c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static ECHO_V4: [u8; 12] = [
        8, 0, 0x21, 0x04, 0x12, 0x34, 0x00, 0x01, b'a', b'b', b'c', b'd',
    ];
    static ECHO_V6: [u8; 12] = [
        128, 0, 0x4d, 0x48, 0x12, 0x34, 0x00, 0x01, b'a', b'b', b'c', b'd',
    ];

    fn a(last: u16) -> Ipv6Addr {
        Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, last)
    }

    #[test]
    fn deconstruct_v4() {
        let p = Packet::new_checked(&ECHO_V4[..]).unwrap();
        assert_eq!(p.msg_type(), v4::ECHO_REQUEST);
        assert_eq!(p.code(), 0);
        assert_eq!(p.checksum(), 0x2104);
        assert_eq!(p.echo_ident(), 0x1234);
        assert_eq!(p.echo_seq(), 1);
        assert_eq!(p.rest_of_header(), 0x1234_0001);
        assert_eq!(p.payload(), b"abcd");
        assert!(p.verify_checksum_v4());
    }

    #[test]
    fn construct_v4() {
        let mut buf = [0xa5u8; 12];
        let mut p = Packet::new_unchecked(&mut buf[..]);
        p.set_msg_type(v4::ECHO_REQUEST);
        p.set_code(0);
        p.set_echo_ident(0x1234);
        p.set_echo_seq(1);
        p.payload_mut().copy_from_slice(b"abcd");
        p.fill_checksum_v4();
        assert_eq!(buf, ECHO_V4);
    }

    #[test]
    fn deconstruct_v6() {
        let p = Packet::new_checked(&ECHO_V6[..]).unwrap();
        assert_eq!(p.msg_type(), v6::ECHO_REQUEST);
        assert_eq!(p.checksum(), 0x4d48);
        assert!(p.verify_checksum_v6(a(1), a(2)));
        assert!(!p.verify_checksum_v6(a(2), a(3)));
    }

    #[test]
    fn construct_v6() {
        let mut buf = [0xa5u8; 12];
        let mut p = Packet::new_unchecked(&mut buf[..]);
        p.set_msg_type(v6::ECHO_REQUEST);
        p.set_code(0);
        p.set_rest_of_header(0x1234_0001);
        p.payload_mut().copy_from_slice(b"abcd");
        p.fill_checksum_v6(a(1), a(2));
        assert_eq!(buf, ECHO_V6);
    }

    #[test]
    fn error_types() {
        assert!(v4::is_error(v4::TIME_EXCEEDED) && v4::is_error(v4::DEST_UNREACHABLE));
        assert!(!v4::is_error(v4::ECHO_REQUEST) && !v4::is_error(v4::ECHO_REPLY));
        assert!(v6::is_error(v6::PACKET_TOO_BIG) && !v6::is_error(v6::ECHO_REPLY));
    }

    #[test]
    fn short_is_truncated() {
        for n in 0..8 {
            assert_eq!(
                Packet::new_checked(&ECHO_V4[..n]).err(),
                Some(Error::Truncated)
            );
        }
    }
}
