//! UDP header view (RFC 768).
//!
//! Contract (see [`crate::wire`]): once `check_len()` passed, no accessor panics.
//! The port getters only need the 8-byte header ([`HEADER_LEN`]); the pass
//! uses them alone on a first fragment, whose UDP length covers the whole
//! datagram and so exceeds the buffer.
#![forbid(unsafe_code)]

use super::Error;

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
