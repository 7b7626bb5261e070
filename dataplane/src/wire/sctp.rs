//! SCTP common header view (RFC 9260 §3.1) and the first chunk's header.
//!
//! Contract (see [`crate::wire`]): once `check_len()` passed, no accessor
//! panics. weir reads ports (for policy) and the first chunk's type; it
//! never checks or rewrites the CRC32c checksum (it does no NAT).
#![forbid(unsafe_code)]

use super::Error;

mod field {
    use core::ops::Range;
    pub const SRC_PORT: Range<usize> = 0..2;
    pub const DST_PORT: Range<usize> = 2..4;
    pub const VTAG: Range<usize> = 4..8;
    pub const CHECKSUM: Range<usize> = 8..12;
    pub const CHUNK_TYPE: usize = 12;
}

/// Length of the SCTP common header.
pub const HEADER_LEN: usize = field::CHECKSUM.end;

/// Chunk types weir names (RFC 9260 §3.2).
pub mod chunk {
    pub const DATA: u8 = 0;
    pub const INIT: u8 = 1;
    pub const INIT_ACK: u8 = 2;
    pub const HEARTBEAT: u8 = 4;
    pub const ABORT: u8 = 6;
    pub const SHUTDOWN: u8 = 7;
    pub const SHUTDOWN_ACK: u8 = 8;
    pub const COOKIE_ECHO: u8 = 10;
    pub const COOKIE_ACK: u8 = 11;
    pub const SHUTDOWN_COMPLETE: u8 = 14;
}

/// A view of an SCTP packet.
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

    /// Buffer ≥ the 12-byte common header.
    pub fn check_len(&self) -> Result<(), Error> {
        if self.buffer.as_ref().len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        Ok(())
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

    pub fn verification_tag(&self) -> u32 {
        let b = &self.buffer.as_ref()[field::VTAG];
        u32::from_be_bytes([b[0], b[1], b[2], b[3]])
    }

    pub fn checksum(&self) -> u32 {
        let b = &self.buffer.as_ref()[field::CHECKSUM];
        u32::from_be_bytes([b[0], b[1], b[2], b[3]])
    }

    /// Type of the first chunk, if the packet carries one.
    pub fn first_chunk_type(&self) -> Option<u8> {
        self.buffer.as_ref().get(field::CHUNK_TYPE).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 5000 → 80, vtag 0, CRC32c 0x12345678, an INIT chunk header.
    static INIT: [u8; 16] = [
        0x13, 0x88, 0x00, 0x50, 0, 0, 0, 0, 0x12, 0x34, 0x56, 0x78, 1, 0, 0, 20,
    ];

    #[test]
    fn deconstruct() {
        let p = Packet::new_checked(&INIT[..]).unwrap();
        assert_eq!((p.src_port(), p.dst_port()), (5000, 80));
        assert_eq!(p.verification_tag(), 0);
        assert_eq!(p.checksum(), 0x1234_5678);
        assert_eq!(p.first_chunk_type(), Some(chunk::INIT));
        let bare = Packet::new_checked(&INIT[..12]).unwrap();
        assert_eq!(bare.first_chunk_type(), None);
    }

    #[test]
    fn short_is_truncated() {
        for n in 0..12 {
            assert_eq!(
                Packet::new_checked(&INIT[..n]).err(),
                Some(Error::Truncated)
            );
        }
    }
}
