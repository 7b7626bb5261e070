//! VXLAN header view (RFC 7348) with the Group Policy extension
//! (draft-smith-vxlan-group-policy, "VXLAN-GBP", as Linux and Cilium speak it).
//!
//! ```text
//!  0                   1                   2                   3
//! |G|R|R|R|I|R|R|R|R|D|R|R|A|R|R|R|       Group Policy ID         |
//! |                VXLAN Network Identifier (VNI) |   Reserved    |
//! ```
//!
//! Plain VXLAN has only the I flag (0x08) and zeros where GBP puts its
//! fields. Contract (see [`crate::wire`]): once `check_len()` passed (the
//! buffer holds the 8-byte header), no accessor or setter panics.
#![forbid(unsafe_code)]

use super::Error;

mod field {
    use core::ops::Range;
    pub const FLAGS: usize = 0;
    pub const GBP_FLAGS: usize = 1;
    pub const GROUP: Range<usize> = 2..4;
    pub const VNI: Range<usize> = 4..7;
    pub const RESERVED: usize = 7;
}

/// Length of the VXLAN header.
pub const HEADER_LEN: usize = field::RESERVED + 1;

/// IANA UDP port of VXLAN.
pub const UDP_PORT: u16 = 4789;

/// Bits of byte 0.
pub mod flags {
    /// G: the Group Policy ID is present (VXLAN-GBP).
    pub const G: u8 = 0x80;
    /// I: the VNI is valid (always set).
    pub const I: u8 = 0x08;
}

/// Bits of byte 1 (VXLAN-GBP only).
pub mod gbp_flags {
    /// D: don't learn.
    pub const D: u8 = 0x40;
    /// A: policy already applied.
    pub const A: u8 = 0x08;
}

/// Largest VNI (24 bits).
pub const VNI_MAX: u32 = 0x00ff_ffff;

/// A view of a VXLAN header and the inner frame behind it.
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

    /// The buffer holds the 8-byte header.
    pub fn check_len(&self) -> Result<(), Error> {
        if self.buffer.as_ref().len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    /// The I flag: the VNI is valid. RFC 7348 requires it.
    pub fn vni_valid(&self) -> bool {
        self.flags() & flags::I != 0
    }

    /// The G flag: a Group Policy ID is present.
    pub fn has_group(&self) -> bool {
        self.flags() & flags::G != 0
    }

    pub fn gbp_flags(&self) -> u8 {
        self.buffer.as_ref()[field::GBP_FLAGS]
    }

    /// The Group Policy ID (meaningful only when [`has_group`](Self::has_group)).
    pub fn group(&self) -> u16 {
        let b = &self.buffer.as_ref()[field::GROUP];
        u16::from_be_bytes([b[0], b[1]])
    }

    pub fn vni(&self) -> u32 {
        let b = &self.buffer.as_ref()[field::VNI];
        u32::from_be_bytes([0, b[0], b[1], b[2]])
    }

    /// The inner Ethernet frame.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    pub fn set_flags(&mut self, v: u8) {
        self.buffer.as_mut()[field::FLAGS] = v;
    }

    pub fn set_gbp_flags(&mut self, v: u8) {
        self.buffer.as_mut()[field::GBP_FLAGS] = v;
    }

    pub fn set_group(&mut self, v: u16) {
        self.buffer.as_mut()[field::GROUP].copy_from_slice(&v.to_be_bytes());
    }

    /// Sets the 24-bit VNI (higher bits ignored) and clears the reserved byte.
    pub fn set_vni(&mut self, v: u32) {
        let b = v.to_be_bytes();
        self.buffer.as_mut()[field::VNI].copy_from_slice(&b[1..]);
        self.buffer.as_mut()[field::RESERVED] = 0;
    }

    /// Writes a whole header: plain VXLAN when `group` is `None`, VXLAN-GBP
    /// (G flag, D/A clear) otherwise.
    pub fn emit(&mut self, vni: u32, group: Option<u16>) {
        match group {
            Some(g) => {
                self.set_flags(flags::G | flags::I);
                self.set_gbp_flags(0);
                self.set_group(g);
            }
            None => {
                self.set_flags(flags::I);
                self.set_gbp_flags(0);
                self.set_group(0);
            }
        }
        self.set_vni(vni);
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[HEADER_LEN..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plain VXLAN, VNI 0x123456, two bytes of inner frame.
    static PLAIN: [u8; 10] = [0x08, 0x00, 0x00, 0x00, 0x12, 0x34, 0x56, 0x00, 0xaa, 0xbb];
    /// VXLAN-GBP, D and A set, group 0x0bcd, VNI 42.
    static GBP: [u8; 8] = [0x88, 0x48, 0x0b, 0xcd, 0x00, 0x00, 0x2a, 0x00];

    #[test]
    fn deconstruct_plain() {
        let p = Packet::new_checked(&PLAIN[..]).unwrap();
        assert!(p.vni_valid());
        assert!(!p.has_group());
        assert_eq!(p.vni(), 0x123456);
        assert_eq!(p.payload(), &[0xaa, 0xbb]);
    }

    #[test]
    fn construct_plain() {
        let mut buf = [0xa5u8; 10];
        let mut p = Packet::new_unchecked(&mut buf[..]);
        p.emit(0x123456, None);
        p.payload_mut().copy_from_slice(&[0xaa, 0xbb]);
        assert_eq!(buf, PLAIN);
    }

    #[test]
    fn deconstruct_gbp() {
        let p = Packet::new_checked(&GBP[..]).unwrap();
        assert!(p.vni_valid() && p.has_group());
        assert_eq!(p.gbp_flags(), gbp_flags::D | gbp_flags::A);
        assert_eq!(p.group(), 0x0bcd);
        assert_eq!(p.vni(), 42);
        assert!(p.payload().is_empty());
    }

    #[test]
    fn construct_gbp() {
        let mut buf = [0xa5u8; 8];
        let mut p = Packet::new_unchecked(&mut buf[..]);
        p.emit(42, Some(0x0bcd));
        p.set_gbp_flags(gbp_flags::D | gbp_flags::A);
        assert_eq!(buf, GBP);
    }

    #[test]
    fn vni_is_24_bits() {
        let mut buf = [0xa5u8; 8];
        let mut p = Packet::new_unchecked(&mut buf[..]);
        p.set_vni(0xff12_3456);
        assert_eq!(p.vni(), 0x12_3456);
        assert_eq!(buf[7], 0);
    }

    #[test]
    fn short_is_truncated() {
        for n in 0..HEADER_LEN {
            assert_eq!(Packet::new_checked(&GBP[..n]).err(), Some(Error::Truncated));
        }
    }
}
