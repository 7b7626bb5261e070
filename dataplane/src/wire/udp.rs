//! UDP header view (RFC 768).
//!
//! Contract (see [`crate::wire`]): once `check_len()` passed, no accessor panics.
//! The port getters only need the 8-byte header ([`HEADER_LEN`]); the pass
//! uses them alone on a first fragment, whose UDP length covers the whole
//! datagram and so exceeds the buffer.
#![forbid(unsafe_code)]

use std::net::IpAddr;

use super::{checksum, ip_proto, Error};

mod field {
    use core::ops::Range;
    pub const SRC_PORT: Range<usize> = 0..2;
    pub const DST_PORT: Range<usize> = 2..4;
    pub const LENGTH: Range<usize> = 4..6;
    pub const CHECKSUM: Range<usize> = 6..8;
}

/// Length of the UDP header.
pub const HEADER_LEN: usize = field::CHECKSUM.end;

/// A view of a UDP datagram.
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

    /// Buffer ≥ 8 bytes and 8 ≤ length field ≤ buffer length.
    pub fn check_len(&self) -> Result<(), Error> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(Error::Truncated);
        }
        let l = usize::from(self.length());
        if l < HEADER_LEN {
            return Err(Error::Malformed);
        }
        if l > len {
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

    pub fn src_port(&self) -> u16 {
        self.u16_at(field::SRC_PORT)
    }

    pub fn dst_port(&self) -> u16 {
        self.u16_at(field::DST_PORT)
    }

    /// The length field: header + payload.
    pub fn length(&self) -> u16 {
        self.u16_at(field::LENGTH)
    }

    pub fn checksum(&self) -> u16 {
        self.u16_at(field::CHECKSUM)
    }

    /// The payload, up to the length field.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..usize::from(self.length())]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    fn set_u16_at(&mut self, r: core::ops::Range<usize>, v: u16) {
        self.buffer.as_mut()[r].copy_from_slice(&v.to_be_bytes());
    }

    pub fn set_src_port(&mut self, v: u16) {
        self.set_u16_at(field::SRC_PORT, v)
    }

    pub fn set_dst_port(&mut self, v: u16) {
        self.set_u16_at(field::DST_PORT, v)
    }

    pub fn set_length(&mut self, v: u16) {
        self.set_u16_at(field::LENGTH, v)
    }

    pub fn set_checksum(&mut self, v: u16) {
        self.set_u16_at(field::CHECKSUM, v)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Computes and writes the checksum over the pseudo-header of `src` →
    /// `dst` and the whole buffer (a computed zero is sent as `0xffff`,
    /// RFC 768). Two addresses of different families write nothing.
    pub fn fill_checksum(&mut self, src: IpAddr, dst: IpAddr) {
        self.set_checksum(0);
        let b = self.buffer.as_ref();
        let pseudo = match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                checksum::pseudo_header_v4(s, d, ip_proto::UDP, b.len() as u16)
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                checksum::pseudo_header_v6(s, d, ip_proto::UDP, b.len() as u32)
            }
            _ => return,
        };
        let c = !checksum::combine(&[pseudo, checksum::data(b)]);
        self.set_checksum(if c == 0 { 0xffff } else { c });
    }
}

/// A UDP header weir writes (the REFUSED answer to a DNS query).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    pub src_port: u16,
    pub dst_port: u16,
    /// Bytes after the header.
    pub payload_len: usize,
}

impl Repr {
    /// Bytes [`Repr::emit`] writes.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the header at the start of `p`'s buffer with a zero checksum
    /// (fill it with [`Packet::fill_checksum`] once the payload is in
    /// place). `Truncated` when the buffer is shorter than the header,
    /// `Malformed` when the length does not fit its field.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, p: &mut Packet<T>) -> Result<(), Error> {
        if p.buffer.as_ref().len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        let len = u16::try_from(HEADER_LEN + self.payload_len).map_err(|_| Error::Malformed)?;
        p.set_src_port(self.src_port);
        p.set_dst_port(self.dst_port);
        p.set_length(len);
        p.set_checksum(0);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static DATAGRAM: [u8; 12] = [
        0x00, 0x35, 0xc0, 0x00, // 53 → 49152
        0x00, 0x0a, // length 10
        0x12, 0x34, // checksum (not verified)
        0xaa, 0xbb, // payload
        0x00, 0x00, // beyond the length
    ];

    #[test]
    fn deconstruct() {
        let p = Packet::new_checked(&DATAGRAM[..]).unwrap();
        assert_eq!(p.src_port(), 53);
        assert_eq!(p.dst_port(), 49152);
        assert_eq!(p.length(), 10);
        assert_eq!(p.checksum(), 0x1234);
        assert_eq!(p.payload(), &[0xaa, 0xbb]);
    }

    #[test]
    fn construct() {
        let mut buf = [0xa5u8; 12];
        let mut p = Packet::new_unchecked(&mut buf[..]);
        p.set_src_port(53);
        p.set_dst_port(49152);
        p.set_length(10);
        p.set_checksum(0x1234);
        buf[8..].copy_from_slice(&[0xaa, 0xbb, 0, 0]);
        assert_eq!(buf, DATAGRAM);
    }

    #[test]
    fn bad_lengths() {
        for n in 0..10 {
            assert_eq!(
                Packet::new_checked(&DATAGRAM[..n]).err(),
                Some(Error::Truncated)
            );
        }
        let mut b = DATAGRAM;
        b[5] = 7;
        assert_eq!(Packet::new_checked(&b[..]).err(), Some(Error::Malformed));
    }
}
