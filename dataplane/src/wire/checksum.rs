//! The Internet checksum (RFC 1071), pseudo-headers, and the incremental
//! update of RFC 1624.
//!
//! All functions return the *folded one's complement sum* (not complemented)
//! unless their name says otherwise, so partial sums can be [`combine`]d; a
//! checksum field holds `!combine(..)`. A buffer whose checksum field is
//! correct sums to `0xffff`.
#![forbid(unsafe_code)]

use std::net::{Ipv4Addr, Ipv6Addr};

fn fold(mut acc: u64) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// One's complement sum of `data` as big-endian 16-bit words (an odd last
/// byte is padded with zero).
pub fn data(data: &[u8]) -> u16 {
    let mut acc: u64 = 0;
    let mut words = data.chunks_exact(2);
    for w in &mut words {
        acc += u64::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        acc += u64::from(*last) << 8;
    }
    fold(acc)
}

/// One's complement sum of partial sums.
pub fn combine(parts: &[u16]) -> u16 {
    fold(parts.iter().map(|&p| u64::from(p)).sum())
}

/// Sum of the IPv4 pseudo-header (RFC 793 / RFC 768).
pub fn pseudo_header_v4(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, len: u16) -> u16 {
    combine(&[
        data(&src.octets()),
        data(&dst.octets()),
        u16::from(protocol),
        len,
    ])
}

/// Sum of the IPv6 pseudo-header (RFC 8200 §8.1), used by TCP, UDP and ICMPv6.
pub fn pseudo_header_v6(src: Ipv6Addr, dst: Ipv6Addr, next_header: u8, len: u32) -> u16 {
    combine(&[
        data(&src.octets()),
        data(&dst.octets()),
        (len >> 16) as u16,
        len as u16,
        u16::from(next_header),
    ])
}

/// RFC 1624 eqn. 3: the new checksum *field* after one 16-bit word of the
/// covered data changed from `old` to `new`: `HC' = ~(~HC + ~m + m')`.
pub fn update(checksum_field: u16, old: u16, new: u16) -> u16 {
    !combine(&[!checksum_field, !old, new])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_example() {
        // RFC 1071 §3: 00 01 f2 03 f4 f5 f6 f7 sums to 0xddf2.
        assert_eq!(
            data(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            0xddf2
        );
    }

    #[test]
    fn odd_length_pads_with_zero() {
        assert_eq!(data(&[0x12, 0x34, 0x56]), 0x1234 + 0x5600);
    }

    #[test]
    fn incremental_matches_full_recompute() {
        let mut hdr = [
            0x45, 0x00, 0x00, 0x54, 0x12, 0x34, 0x40, 0x00, 0x40, 0x01, 0x00, 0x00, 10, 0, 0, 1,
            10, 0, 0, 2,
        ];
        for ttl in (2..=255u8).rev() {
            hdr[8] = ttl;
            hdr[10..12].copy_from_slice(&[0, 0]);
            let c = !data(&hdr);
            hdr[10..12].copy_from_slice(&c.to_be_bytes());
            let old = u16::from_be_bytes([hdr[8], hdr[9]]);
            let new = old - 0x0100;
            let inc = update(c, old, new);
            hdr[8] = ttl - 1;
            hdr[10..12].copy_from_slice(&inc.to_be_bytes());
            assert_eq!(data(&hdr), 0xffff, "ttl {ttl}");
        }
    }

    #[test]
    fn pseudo_header_v6_counts_length_and_next_header() {
        let a = Ipv6Addr::UNSPECIFIED;
        assert_eq!(pseudo_header_v6(a, a, 58, 0x0001_0002), 1 + 2 + 58);
    }
}
