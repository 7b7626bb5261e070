//! What a denied HTTP flow gets: a 403 response toward the client (in one
//! PSH|ACK|FIN segment, as if from the server) and a RST toward the server
//! (as if from the client), built as whole Ethernet/IPv4-or-IPv6/TCP frames
//! into caller-provided buffers, with valid checksums. No allocation.
#![forbid(unsafe_code)]

use std::net::IpAddr;

use crate::wire::ethernet::{self, ethertype};
use crate::wire::tcp::{self, flags};
use crate::wire::{ip_proto, ipv4, ipv6};

/// The start of every 403 this module writes, up to the body.
const STATUS: &[u8] = b"HTTP/1.1 403 Forbidden\r\ncontent-length: ";
const HEADERS: &[u8] = b"\r\ncontent-type: text/plain\r\nconnection: close\r\n\r\n";
const BODY: &[u8] = b"Access denied by weir policy ";

/// Writes the 403 response whose body is `Access denied by weir policy
/// <rule>\n` into `out`; returns its length, or `None` if `out` is too
/// short. `rule` names what denied (e.g. `l7-policy` or a rule name); bytes
/// outside printable ASCII are written as `?`.
pub fn write_403(out: &mut [u8], rule: &str) -> Option<usize> {
    let body_len = BODY.len() + rule.len() + 1;
    let mut digits = [0u8; 20];
    let mut n = body_len;
    let mut nd = 0;
    loop {
        digits[19 - nd] = b'0' + (n % 10) as u8;
        nd += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let total = STATUS.len() + nd + HEADERS.len() + body_len;
    let out = out.get_mut(..total)?;
    let mut w = Writer { out, at: 0 };
    w.put(STATUS);
    w.put(&digits[20 - nd..]);
    w.put(HEADERS);
    w.put(BODY);
    for b in rule.bytes() {
        w.put(&[if (0x20..0x7f).contains(&b) { b } else { b'?' }]);
    }
    w.put(b"\n");
    Some(total)
}

/// Length of the response [`write_403`] writes for `rule`.
pub fn len_403(rule: &str) -> usize {
    let body_len = BODY.len() + rule.len() + 1;
    let mut digits = 1;
    let mut n = body_len / 10;
    while n > 0 {
        digits += 1;
        n /= 10;
    }
    STATUS.len() + digits + HEADERS.len() + body_len
}

struct Writer<'a> {
    out: &'a mut [u8],
    at: usize,
}

impl Writer<'_> {
    fn put(&mut self, b: &[u8]) {
        if let Some(d) = self.out.get_mut(self.at..self.at + b.len()) {
            d.copy_from_slice(b);
        }
        self.at += b.len();
    }
}

/// One end of a TCP connection as seen on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpEnd {
    pub mac: [u8; 6],
    pub ip: IpAddr,
    pub port: u16,
}

/// What the pass knows of a denied connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeniedFlow {
    pub client: TcpEnd,
    pub server: TcpEnd,
    /// Next sequence number the client sends (after every byte it sent,
    /// [`super::HttpInspector::next_seq`]): the 403 acknowledges it.
    pub client_next_seq: u32,
    /// First client byte the server was not sent
    /// ([`super::HttpInspector::released_seq`]): the RST's sequence number,
    /// exactly what the server expects next.
    pub server_expects_seq: u32,
    /// Next sequence number the server sends (from conntrack or the last
    /// server→client segment): the 403's sequence number, and the RST's
    /// acknowledgment.
    pub server_next_seq: u32,
}

const ETH_LEN: usize = ethernet::HEADER_LEN;
const TCP_LEN: usize = tcp::HEADER_LEN;
const HOP_LIMIT: u8 = 64;
/// Window advertised by the 403 segment.
const WINDOW_403: u16 = 0;

/// Builds the frame client ← server carrying the 403 (PSH|ACK|FIN) into
/// `out`; returns its length, or `None` if `out` is too short or the two
/// ends are of different IP versions.
pub fn build_403_frame(out: &mut [u8], flow: &DeniedFlow, rule: &str) -> Option<usize> {
    let l3 = l3_len(flow.client.ip, flow.server.ip)?;
    let payload_at = ETH_LEN + l3 + TCP_LEN;
    let plen = write_403(out.get_mut(payload_at..)?, rule)?;
    write_headers(
        out,
        &flow.server,
        &flow.client,
        flow.server_next_seq,
        flow.client_next_seq,
        flags::PSH | flags::ACK | flags::FIN,
        WINDOW_403,
        plen,
    )
}

/// Builds the frame client ← server answering a denied HTTP/2 request
/// (PSH|ACK|FIN): HEADERS `:status 403` (or a gRPC trailers-only
/// PERMISSION_DENIED) on the denied stream, then GOAWAY
/// ([`crate::l7::h2::deny_reply`]); returns its length.
pub fn build_h2_deny_frame(
    out: &mut [u8],
    flow: &DeniedFlow,
    req: crate::l7::h2::LastRequest,
    rule: &str,
) -> Option<usize> {
    let l3 = l3_len(flow.client.ip, flow.server.ip)?;
    let payload_at = ETH_LEN + l3 + TCP_LEN;
    let plen = crate::l7::h2::deny_reply(req, rule, out.get_mut(payload_at..)?)?;
    write_headers(
        out,
        &flow.server,
        &flow.client,
        flow.server_next_seq,
        flow.client_next_seq,
        flags::PSH | flags::ACK | flags::FIN,
        WINDOW_403,
        plen,
    )
}

/// Builds the RST (RST|ACK) client → server into `out`; returns its length.
pub fn build_rst_frame(out: &mut [u8], flow: &DeniedFlow) -> Option<usize> {
    write_headers(
        out,
        &flow.client,
        &flow.server,
        flow.server_expects_seq,
        flow.server_next_seq,
        flags::RST | flags::ACK,
        0,
        0,
    )
}

/// Where [`build_data_frame`] expects the payload of a segment from `src`
/// to `dst` (after Ethernet, IP and a 20-byte TCP header).
pub fn data_offset(src: IpAddr, dst: IpAddr) -> Option<usize> {
    Some(ETH_LEN + l3_len(src, dst)? + TCP_LEN)
}

/// Builds the frame `src` → `dst` around a payload of `plen` bytes already
/// at [`data_offset`] in `out` (headers and checksums); returns its length.
#[allow(clippy::too_many_arguments)]
pub fn build_data_frame(
    out: &mut [u8],
    src: &TcpEnd,
    dst: &TcpEnd,
    seq: u32,
    ack: u32,
    tcp_flags: u8,
    plen: usize,
) -> Option<usize> {
    write_headers(out, src, dst, seq, ack, tcp_flags, WINDOW_403, plen)
}

fn l3_len(a: IpAddr, b: IpAddr) -> Option<usize> {
    match (a, b) {
        (IpAddr::V4(_), IpAddr::V4(_)) => Some(ipv4::HEADER_LEN),
        (IpAddr::V6(_), IpAddr::V6(_)) => Some(ipv6::HEADER_LEN),
        _ => None,
    }
}

/// Writes Ethernet, IP and TCP headers before a payload of `plen` bytes
/// already at its place, and both checksums.
#[allow(clippy::too_many_arguments)]
fn write_headers(
    out: &mut [u8],
    src: &TcpEnd,
    dst: &TcpEnd,
    seq: u32,
    ack: u32,
    tcp_flags: u8,
    window: u16,
    plen: usize,
) -> Option<usize> {
    let l3 = l3_len(src.ip, dst.ip)?;
    let seg_len = TCP_LEN + plen;
    let total = ETH_LEN + l3 + seg_len;
    let out = out.get_mut(..total)?;
    let (eth, rest) = out.split_at_mut_checked(ETH_LEN)?;
    let (ip, seg) = rest.split_at_mut_checked(l3)?;
    let ethertype = match (src.ip, dst.ip) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let repr = ipv4::Repr {
                src: s,
                dst: d,
                protocol: ip_proto::TCP,
                payload_len: seg_len,
                ttl: HOP_LIMIT,
                dscp_ecn: 0,
                dont_frag: true,
            };
            repr.emit(&mut ipv4::Packet::new_unchecked(ip)).ok()?;
            ethertype::IPV4
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let repr = ipv6::Repr {
                src: s,
                dst: d,
                next_header: ip_proto::TCP,
                payload_len: seg_len,
                hop_limit: HOP_LIMIT,
            };
            repr.emit(&mut ipv6::Packet::new_unchecked(ip)).ok()?;
            ethertype::IPV6
        }
        _ => return None,
    };
    let eth_repr = ethernet::Repr {
        src: src.mac,
        dst: dst.mac,
        ethertype,
    };
    eth_repr
        .emit(&mut ethernet::Frame::new_unchecked(eth))
        .ok()?;
    let tcp_repr = tcp::Repr {
        src_port: src.port,
        dst_port: dst.port,
        seq,
        ack,
        flags: tcp_flags,
        window,
    };
    let mut tcp = tcp::Packet::new_unchecked(seg);
    tcp_repr.emit(&mut tcp).ok()?;
    tcp.fill_checksum(src.ip, dst.ip);
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_403() {
        let mut buf = [0xa5u8; 256];
        let n = write_403(&mut buf, "l7-policy").unwrap();
        let want: &[u8] = b"HTTP/1.1 403 Forbidden\r\ncontent-length: 39\r\ncontent-type: text/plain\r\nconnection: close\r\n\r\nAccess denied by weir policy l7-policy\n";
        assert_eq!(&buf[..n], want);
        assert_eq!(n, len_403("l7-policy"));
        assert_eq!(buf[n], 0xa5);
        assert_eq!(write_403(&mut buf[..n - 1], "l7-policy"), None);
        let n = write_403(&mut buf, "a\x01b").unwrap();
        assert!(buf[..n].ends_with(b"policy a?b\n"));
    }
}
