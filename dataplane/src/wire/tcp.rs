//! TCP header view (RFC 9293): ports, sequence numbers, data offset, flags.
//! weir never rewrites TCP; setters exist for tests and future NAT.
//!
//! Contract (see [`crate::wire`]): once `check_len()` passed, no accessor panics.
#![forbid(unsafe_code)]

use std::net::IpAddr;

use super::{checksum, ip_proto, Error};

mod field {
    use core::ops::Range;
    pub const SRC_PORT: Range<usize> = 0..2;
    pub const DST_PORT: Range<usize> = 2..4;
    pub const SEQ_NUM: Range<usize> = 4..8;
    pub const ACK_NUM: Range<usize> = 8..12;
    pub const DATA_OFF: usize = 12;
    pub const FLAGS: usize = 13;
    pub const WIN_SIZE: Range<usize> = 14..16;
    pub const CHECKSUM: Range<usize> = 16..18;
    pub const URGENT: Range<usize> = 18..20;
}

/// Length of a TCP header without options.
pub const HEADER_LEN: usize = field::URGENT.end;

/// Flag bits of byte 13.
pub mod flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;
    pub const ECE: u8 = 0x40;
    pub const CWR: u8 = 0x80;
}

/// A view of a TCP segment.
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

    /// Buffer ≥ 20 bytes and 20 ≤ data offset·4 ≤ buffer length.
    pub fn check_len(&self) -> Result<(), Error> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(Error::Truncated);
        }
        let hl = self.header_len();
        if hl < HEADER_LEN {
            return Err(Error::Malformed);
        }
        if hl > len {
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

    fn u32_at(&self, r: core::ops::Range<usize>) -> u32 {
        let b = &self.buffer.as_ref()[r];
        u32::from_be_bytes([b[0], b[1], b[2], b[3]])
    }

    pub fn src_port(&self) -> u16 {
        self.u16_at(field::SRC_PORT)
    }

    pub fn dst_port(&self) -> u16 {
        self.u16_at(field::DST_PORT)
    }

    pub fn seq_number(&self) -> u32 {
        self.u32_at(field::SEQ_NUM)
    }

    pub fn ack_number(&self) -> u32 {
        self.u32_at(field::ACK_NUM)
    }

    /// Header length in bytes (data offset · 4), options included.
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::DATA_OFF] >> 4) * 4
    }

    /// The flag byte (see [`flags`]).
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    pub fn fin(&self) -> bool {
        self.flags() & flags::FIN != 0
    }

    pub fn syn(&self) -> bool {
        self.flags() & flags::SYN != 0
    }

    pub fn rst(&self) -> bool {
        self.flags() & flags::RST != 0
    }

    pub fn psh(&self) -> bool {
        self.flags() & flags::PSH != 0
    }

    pub fn ack(&self) -> bool {
        self.flags() & flags::ACK != 0
    }

    pub fn urg(&self) -> bool {
        self.flags() & flags::URG != 0
    }

    pub fn window_len(&self) -> u16 {
        self.u16_at(field::WIN_SIZE)
    }

    pub fn checksum(&self) -> u16 {
        self.u16_at(field::CHECKSUM)
    }

    pub fn urgent_at(&self) -> u16 {
        self.u16_at(field::URGENT)
    }

    /// Everything after the header (options excluded).
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    fn set_u16_at(&mut self, r: core::ops::Range<usize>, v: u16) {
        self.buffer.as_mut()[r].copy_from_slice(&v.to_be_bytes());
    }

    fn set_u32_at(&mut self, r: core::ops::Range<usize>, v: u32) {
        self.buffer.as_mut()[r].copy_from_slice(&v.to_be_bytes());
    }

    pub fn set_src_port(&mut self, v: u16) {
        self.set_u16_at(field::SRC_PORT, v)
    }

    pub fn set_dst_port(&mut self, v: u16) {
        self.set_u16_at(field::DST_PORT, v)
    }

    pub fn set_seq_number(&mut self, v: u32) {
        self.set_u32_at(field::SEQ_NUM, v)
    }

    pub fn set_ack_number(&mut self, v: u32) {
        self.set_u32_at(field::ACK_NUM, v)
    }

    /// Sets the data offset from a length in bytes (reserved bits cleared).
    pub fn set_header_len(&mut self, len: usize) {
        self.buffer.as_mut()[field::DATA_OFF] = ((len / 4) as u8) << 4;
    }

    pub fn set_flags(&mut self, v: u8) {
        self.buffer.as_mut()[field::FLAGS] = v;
    }

    pub fn set_window_len(&mut self, v: u16) {
        self.set_u16_at(field::WIN_SIZE, v)
    }

    pub fn set_checksum(&mut self, v: u16) {
        self.set_u16_at(field::CHECKSUM, v)
    }

    pub fn set_urgent_at(&mut self, v: u16) {
        self.set_u16_at(field::URGENT, v)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Computes and writes the checksum over the pseudo-header of `src` →
    /// `dst` and the whole buffer (header and payload). Two addresses of
    /// different families write nothing.
    pub fn fill_checksum(&mut self, src: IpAddr, dst: IpAddr) {
        self.set_checksum(0);
        let b = self.buffer.as_ref();
        let pseudo = match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                checksum::pseudo_header_v4(s, d, ip_proto::TCP, b.len() as u16)
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                checksum::pseudo_header_v6(s, d, ip_proto::TCP, b.len() as u32)
            }
            _ => return,
        };
        let c = !checksum::combine(&[pseudo, checksum::data(b)]);
        self.set_checksum(c);
    }
}

/// A TCP header weir writes (the segments that end a denied connection):
/// 20 bytes, no options, urgent pointer zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    pub src_port: u16,
    pub dst_port: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub window: u16,
}

impl Repr {
    /// Bytes [`Repr::emit`] writes.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the header at the start of `p`'s buffer with a zero checksum
    /// (fill it with [`Packet::fill_checksum`] once the payload is in
    /// place). `Truncated` when the buffer is shorter than the header.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, p: &mut Packet<T>) -> Result<(), Error> {
        if p.buffer.as_ref().len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        p.set_src_port(self.src_port);
        p.set_dst_port(self.dst_port);
        p.set_seq_number(self.seq);
        p.set_ack_number(self.ack);
        p.set_header_len(HEADER_LEN);
        p.set_flags(self.flags);
        p.set_window_len(self.window);
        p.set_checksum(0);
        p.set_urgent_at(0);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static SEGMENT: [u8; 24] = [
        0x30, 0x39, 0x00, 0x50, // 12345 → 80
        0x01, 0x02, 0x03, 0x04, // seq
        0x05, 0x06, 0x07, 0x08, // ack
        0x50, 0x12, // offset 5, SYN|ACK
        0xff, 0xff, // window
        0xab, 0xcd, // checksum (not verified)
        0x00, 0x00, // urgent
        0xde, 0xad, 0xbe, 0xef, // payload
    ];

    #[test]
    fn deconstruct() {
        let p = Packet::new_checked(&SEGMENT[..]).unwrap();
        assert_eq!(p.src_port(), 12345);
        assert_eq!(p.dst_port(), 80);
        assert_eq!(p.seq_number(), 0x01020304);
        assert_eq!(p.ack_number(), 0x05060708);
        assert_eq!(p.header_len(), 20);
        assert!(p.syn() && p.ack());
        assert!(!p.fin() && !p.rst() && !p.psh() && !p.urg());
        assert_eq!(p.window_len(), 0xffff);
        assert_eq!(p.checksum(), 0xabcd);
        assert_eq!(p.urgent_at(), 0);
        assert_eq!(p.payload(), &[0xde, 0xad, 0xbe, 0xef]);
    }

    #[test]
    fn construct() {
        let mut buf = [0xa5u8; 24];
        let mut p = Packet::new_unchecked(&mut buf[..]);
        p.set_src_port(12345);
        p.set_dst_port(80);
        p.set_seq_number(0x01020304);
        p.set_ack_number(0x05060708);
        p.set_header_len(20);
        p.set_flags(flags::SYN | flags::ACK);
        p.set_window_len(0xffff);
        p.set_checksum(0xabcd);
        p.set_urgent_at(0);
        buf[20..].copy_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(buf, SEGMENT);
    }

    #[test]
    fn bad_lengths() {
        for n in 0..20 {
            assert_eq!(
                Packet::new_checked(&SEGMENT[..n]).err(),
                Some(Error::Truncated)
            );
        }
        let mut b = SEGMENT;
        b[12] = 0x40; // offset 4
        assert_eq!(Packet::new_checked(&b[..]).err(), Some(Error::Malformed));
        b[12] = 0x70; // 28 bytes > 24
        assert_eq!(Packet::new_checked(&b[..]).err(), Some(Error::Truncated));
        b[12] = 0x60; // 24 bytes, options fit exactly
        assert!(Packet::new_checked(&b[..]).is_ok());
    }
}
