//! Geneve header view (RFC 8926) and its option TLVs.
//!
//! ```text
//!  0                   1                   2                   3
//! |Ver|  Opt Len  |O|C|    Rsvd.  |          Protocol Type        |
//! |        Virtual Network Identifier (VNI)       |    Reserved   |
//! |                    Variable-Length Options                    |
//! option: |  Option Class (16)  |C|Type (7)|R|R|R| Length (5) | data (Length × 4 bytes)
//! ```
//!
//! Contract (see [`crate::wire`]): once `check_len()` passed (the buffer
//! holds the fixed header and the `Opt Len` words of options it claims), no
//! accessor or setter panics. The option walk ([`Packet::options`])
//! bounds-checks every TLV against the options area and reports an option
//! that runs past it as [`Error::Malformed`].
//!
//! weir's identity option: class [`WEIR_OPTION_CLASS`] (0xFFF1, from the
//! IANA "Experimental Use" block 0xFFF0–0xFFFF of the Geneve Option Class
//! registry, so it cannot collide with an assigned class: Cilium's is
//! 0x014B (its DSR option), OVN's 0x0102), type [`WEIR_OPT_IDENTITY`]
//! (0x01, not critical), 4 bytes of data: the source's 32-bit identity.
#![forbid(unsafe_code)]

use super::Error;

mod field {
    use core::ops::Range;
    pub const VER_OPTLEN: usize = 0;
    pub const FLAGS: usize = 1;
    pub const PROTOCOL: Range<usize> = 2..4;
    pub const VNI: Range<usize> = 4..7;
    pub const RESERVED: usize = 7;
}

/// Length of the fixed Geneve header.
pub const HEADER_LEN: usize = field::RESERVED + 1;
/// Length of an option's own header (class, type, length).
pub const OPTION_HEADER_LEN: usize = 4;
/// Longest options area (6-bit word count).
pub const MAX_OPTIONS_LEN: usize = 63 * 4;

/// IANA UDP port of Geneve.
pub const UDP_PORT: u16 = 6081;
/// Protocol type of an inner Ethernet frame ("Transparent Ethernet Bridging").
pub const PROTO_ETHERNET: u16 = 0x6558;

/// Bits of byte 1.
pub mod flags {
    /// O: control (OAM) packet.
    pub const O: u8 = 0x80;
    /// C: critical options present.
    pub const C: u8 = 0x40;
}

/// Critical bit of an option type.
pub const OPT_TYPE_CRITICAL: u8 = 0x80;
/// weir's option class (experimental range; see the module doc).
pub const WEIR_OPTION_CLASS: u16 = 0xfff1;
/// weir's option type carrying the source identity (4 bytes, big endian).
pub const WEIR_OPT_IDENTITY: u8 = 0x01;
/// Bytes the identity option takes on the wire (header + 4 bytes of data).
pub const IDENTITY_OPTION_LEN: usize = OPTION_HEADER_LEN + 4;

/// A view of a Geneve header, its options and the payload behind them.
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

/// One option TLV.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GeneveOption<'a> {
    pub class: u16,
    /// Type including the critical bit.
    pub opt_type: u8,
    pub data: &'a [u8],
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

    /// The buffer holds the fixed header and all the options `Opt Len` claims.
    pub fn check_len(&self) -> Result<(), Error> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(Error::Truncated);
        }
        if self.header_len() > len {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Version (0 is the only one defined).
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_OPTLEN] >> 6
    }

    /// Length of the options area in bytes.
    pub fn options_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::VER_OPTLEN] & 0x3f) * 4
    }

    /// Fixed header + options.
    pub fn header_len(&self) -> usize {
        HEADER_LEN + self.options_len()
    }

    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    pub fn protocol(&self) -> u16 {
        let b = &self.buffer.as_ref()[field::PROTOCOL];
        u16::from_be_bytes([b[0], b[1]])
    }

    pub fn vni(&self) -> u32 {
        let b = &self.buffer.as_ref()[field::VNI];
        u32::from_be_bytes([0, b[0], b[1], b[2]])
    }

    /// The raw options area.
    pub fn options_bytes(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..self.header_len()]
    }

    /// Walks the options; an option whose length runs past the options area
    /// yields `Err(Malformed)` (and ends the walk).
    pub fn options(&self) -> Options<'_> {
        Options {
            rest: self.options_bytes(),
        }
    }

    /// The data of the first option of `class`/`opt_type` (critical bit
    /// ignored), after checking every option before it.
    pub fn find_option(&self, class: u16, opt_type: u8) -> Result<Option<&[u8]>, Error> {
        for o in self.options() {
            let o = o?;
            if o.class == class && o.opt_type & !OPT_TYPE_CRITICAL == opt_type {
                return Ok(Some(o.data));
            }
        }
        Ok(None)
    }

    /// weir's identity option, if present and exactly 4 bytes of data.
    /// Walks (and so validates) every option.
    pub fn identity(&self) -> Result<Option<u32>, Error> {
        let mut found = None;
        for o in self.options() {
            let o = o?;
            if found.is_none()
                && o.class == WEIR_OPTION_CLASS
                && o.opt_type & !OPT_TYPE_CRITICAL == WEIR_OPT_IDENTITY
            {
                let d: [u8; 4] = o.data.try_into().map_err(|_| Error::Malformed)?;
                found = Some(u32::from_be_bytes(d));
            }
        }
        Ok(found)
    }

    /// The inner frame (after the options).
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..]
    }
}

/// Iterator over option TLVs (see [`Packet::options`]).
#[derive(Debug, Clone)]
pub struct Options<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Options<'a> {
    type Item = Result<GeneveOption<'a>, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let r = self.rest;
        if r.len() < OPTION_HEADER_LEN {
            self.rest = &[];
            return Some(Err(Error::Malformed));
        }
        let data_len = usize::from(r[3] & 0x1f) * 4;
        let Some(data) = r.get(OPTION_HEADER_LEN..OPTION_HEADER_LEN + data_len) else {
            self.rest = &[];
            return Some(Err(Error::Malformed));
        };
        self.rest = &r[OPTION_HEADER_LEN + data_len..];
        Some(Ok(GeneveOption {
            class: u16::from_be_bytes([r[0], r[1]]),
            opt_type: r[2],
            data,
        }))
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets version 0 and the options length (bytes, a multiple of 4, ≤ 252).
    pub fn set_version_and_options_len(&mut self, options_len: usize) {
        self.buffer.as_mut()[field::VER_OPTLEN] = ((options_len / 4) & 0x3f) as u8;
    }

    pub fn set_flags(&mut self, v: u8) {
        self.buffer.as_mut()[field::FLAGS] = v;
    }

    pub fn set_protocol(&mut self, v: u16) {
        self.buffer.as_mut()[field::PROTOCOL].copy_from_slice(&v.to_be_bytes());
    }

    /// Sets the 24-bit VNI (higher bits ignored) and clears the reserved byte.
    pub fn set_vni(&mut self, v: u32) {
        let b = v.to_be_bytes();
        self.buffer.as_mut()[field::VNI].copy_from_slice(&b[1..]);
        self.buffer.as_mut()[field::RESERVED] = 0;
    }

    /// Writes a whole header for an inner Ethernet frame: version 0, no
    /// flags, and weir's identity option when `identity` is given. Returns
    /// the header length written. The buffer must hold it (`emit_len`).
    pub fn emit(&mut self, vni: u32, identity: Option<u32>) -> usize {
        let opts = if identity.is_some() {
            IDENTITY_OPTION_LEN
        } else {
            0
        };
        self.set_version_and_options_len(opts);
        self.set_flags(0);
        self.set_protocol(PROTO_ETHERNET);
        self.set_vni(vni);
        if let Some(id) = identity {
            let o = &mut self.buffer.as_mut()[HEADER_LEN..HEADER_LEN + IDENTITY_OPTION_LEN];
            o[0..2].copy_from_slice(&WEIR_OPTION_CLASS.to_be_bytes());
            o[2] = WEIR_OPT_IDENTITY;
            o[3] = 1; // one 4-byte word of data
            o[4..8].copy_from_slice(&id.to_be_bytes());
        }
        HEADER_LEN + opts
    }
}

/// Header length [`Packet::emit`] writes.
pub const fn emit_len(identity: bool) -> usize {
    if identity {
        HEADER_LEN + IDENTITY_OPTION_LEN
    } else {
        HEADER_LEN
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Version 0, 8 bytes of options (weir identity 0x00012345), VNI 0x00abcd,
    /// then one inner byte.
    static WITH_IDENTITY: [u8; 17] = [
        0x02, 0x00, 0x65, 0x58, // ver 0, opt len 2 words; flags; proto
        0x00, 0xab, 0xcd, 0x00, // VNI, reserved
        0xff, 0xf1, 0x01, 0x01, // class, type, len 1 word
        0x00, 0x01, 0x23, 0x45, // identity
        0xee, // inner frame
    ];
    static PLAIN: [u8; 8] = [0x00, 0x00, 0x65, 0x58, 0x00, 0x00, 0x07, 0x00];

    #[test]
    fn deconstruct_with_identity() {
        let p = Packet::new_checked(&WITH_IDENTITY[..]).unwrap();
        assert_eq!(p.version(), 0);
        assert_eq!(p.options_len(), 8);
        assert_eq!(p.header_len(), 16);
        assert_eq!(p.flags(), 0);
        assert_eq!(p.protocol(), PROTO_ETHERNET);
        assert_eq!(p.vni(), 0xabcd);
        assert_eq!(p.identity(), Ok(Some(0x12345)));
        let opts: Vec<_> = p.options().collect();
        assert_eq!(
            opts,
            vec![Ok(GeneveOption {
                class: WEIR_OPTION_CLASS,
                opt_type: WEIR_OPT_IDENTITY,
                data: &[0x00, 0x01, 0x23, 0x45],
            })]
        );
        assert_eq!(p.payload(), &[0xee]);
    }

    #[test]
    fn construct_with_identity() {
        let mut buf = [0xa5u8; 17];
        let mut p = Packet::new_unchecked(&mut buf[..]);
        assert_eq!(p.emit(0xabcd, Some(0x12345)), emit_len(true));
        buf[16] = 0xee;
        assert_eq!(buf, WITH_IDENTITY);
    }

    #[test]
    fn deconstruct_plain() {
        let p = Packet::new_checked(&PLAIN[..]).unwrap();
        assert_eq!(p.vni(), 7);
        assert_eq!(p.identity(), Ok(None));
        assert!(p.payload().is_empty());
    }

    #[test]
    fn construct_plain() {
        let mut buf = [0xa5u8; 8];
        let mut p = Packet::new_unchecked(&mut buf[..]);
        assert_eq!(p.emit(7, None), emit_len(false));
        assert_eq!(buf, PLAIN);
    }

    #[test]
    fn other_options_are_skipped() {
        // A foreign option (class 0x0102, 2 words of data) before ours.
        let mut b = vec![0x05, flags::C, 0x65, 0x58, 0, 0, 1, 0];
        b.extend_from_slice(&[0x01, 0x02, 0x80, 0x02, 1, 2, 3, 4, 5, 6, 7, 8]);
        b.extend_from_slice(&[0xff, 0xf1, 0x01, 0x01, 0, 0, 1, 0]);
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!(
            p.find_option(0x0102, 0x00),
            Ok(Some(&[1u8, 2, 3, 4, 5, 6, 7, 8][..]))
        );
        assert_eq!(p.identity(), Ok(Some(256)));
    }

    #[test]
    fn option_overflowing_the_area_is_malformed() {
        // Opt len 1 word, but the option claims 1 word of data (needs 2).
        let b = [
            0x01, 0, 0x65, 0x58, 0, 0, 1, 0, 0xff, 0xf1, 0x01, 0x01, 0, 0, 0, 0,
        ];
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!(p.identity(), Err(Error::Malformed));
        // Opt len 3 words but only 2 present.
        assert_eq!(
            Packet::new_checked(&[0x03u8, 0, 0x65, 0x58, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0][..])
                .err(),
            Some(Error::Truncated)
        );
    }

    #[test]
    fn identity_with_wrong_length_is_malformed() {
        let b = [
            0x03, 0, 0x65, 0x58, 0, 0, 1, 0, 0xff, 0xf1, 0x01, 0x02, 0, 0, 0, 1, 0, 0, 0, 2,
        ];
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!(p.identity(), Err(Error::Malformed));
    }

    #[test]
    fn short_is_truncated() {
        for n in 0..HEADER_LEN {
            assert_eq!(
                Packet::new_checked(&PLAIN[..n]).err(),
                Some(Error::Truncated)
            );
        }
    }
}
