//! Typed views over packet bytes, one file per header (smoltcp's `wire/`).
//!
//! # Contract
//!
//! Every view is a thin wrapper `Packet<T>` (or `Frame<T>`) over a borrowed
//! buffer `T`. Getters live on `impl<T: AsRef<[u8]>>`, setters only on
//! `impl<T: AsRef<[u8]> + AsMut<[u8]>>`, so whether a view can write shows in
//! its type.
//!
//! * `new_unchecked` wraps any buffer and checks nothing.
//! * `check_len` validates that the buffer holds the header and every length
//!   the header claims (IHL, total length, data offset, ...).
//! * `new_checked` = `new_unchecked` + `check_len`; untrusted bytes always
//!   go through it.
//!
//! **Once `check_len()` returned `Ok`, no getter or setter of that view
//! panics.** Setters that change a length field (e.g. `set_header_len`) can
//! break that; call `check_len` again before using length-dependent accessors.
//!
//! Only what weir's pass needs is here: Ethernet, IPv4, IPv6 (with an
//! extension-header walk), TCP/UDP/SCTP ports and TCP flags, ICMP/ICMPv6 (shared
//! layout), VXLAN (with GBP) and Geneve (with its option walk) for the
//! overlay, and the Internet checksum helpers. No `Repr` machinery: weir
//! constructs ICMP errors (field by field in `pass`) and tunnel headers
//! (`emit` on the VXLAN/Geneve views, the rest in `encap`).
#![forbid(unsafe_code)]

pub mod checksum;
pub mod ethernet;
pub mod geneve;
pub mod icmp;
pub mod ipv4;
pub mod ipv6;
pub mod sctp;
pub mod tcp;
pub mod udp;
pub mod vxlan;

/// Why a view refused a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// The buffer is shorter than the header, or than a length the header claims.
    Truncated,
    /// A length field has an impossible value (e.g. IHL < 5, UDP length < 8).
    Malformed,
    /// Valid but beyond what weir walks (e.g. an over-long IPv6 extension chain).
    Unsupported,
    /// A first fragment that ends inside the IPv6 header chain (RFC 7112).
    IncompleteChain,
}

/// IP protocol / IPv6 next-header numbers weir looks at.
pub mod ip_proto {
    pub const HOP_BY_HOP: u8 = 0;
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const ROUTING: u8 = 43;
    pub const FRAGMENT: u8 = 44;
    pub const ESP: u8 = 50;
    pub const AH: u8 = 51;
    pub const SCTP: u8 = 132;
    pub const ICMPV6: u8 = 58;
    pub const NO_NEXT_HEADER: u8 = 59;
    pub const DEST_OPTS: u8 = 60;
}
