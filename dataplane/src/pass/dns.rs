//! Stage 9: DNS rules (docs/l7.md).

use core::ops::ControlFlow::{self, Break, Continue};
use std::net::IpAddr;

use super::icmp::reply_ethernet;
use super::l7::l7_event;
use super::parse::{Fragment, Parsed};
use super::policy::{judge, local_endpoint, DnsNeed};
use super::route::Route;
use super::state::WorkerState;
use super::{drop, FlowKey, Pass};
use crate::flows::{FlowEvent, FlowKind, L7Note};
use crate::snapshot::{PortId, Snapshot};
use crate::wire::ethernet::{self, ethertype};
use crate::wire::{ip_proto, ipv4, ipv6, tcp, udp};

/// TTL / hop limit of the REFUSED answers weir sends.
const REPLY_TTL: u8 = 64;
use crate::{DropReason, Verdict};

fn dns_event(st: &WorkerState, key: &FlowKey, reason: DropReason, note: L7Note) -> FlowEvent {
    FlowEvent {
        reason: Some(reason),
        l7: Some(note),
        ..l7_event(st.now_ns, key, crate::l7::L7Reason::DnsRefused, None)
    }
}

/// An allowed DNS query (`rcode: None`) or the answer to one, for the flow
/// log (kind `l7`, sampled).
fn dns_allowed(st: &WorkerState, snap: &Snapshot, key: &FlowKey, name: &str, rcode: Option<u8>) {
    let mut note = L7Note::dns_query(crate::l7::L7Reason::DnsRefused, name);
    note.rcode = rcode;
    let ev = FlowEvent {
        kind: FlowKind::L7,
        allowed: true,
        reason: None,
        l7: Some(note),
        generation: snap.policy().generation(),
        src_endpoint: local_endpoint(snap, key.src),
        dst_endpoint: local_endpoint(snap, key.dst),
        ..l7_event(st.now_ns, key, crate::l7::L7Reason::DnsRefused, None)
    };
    st.flows.push_sampled(ev);
}

impl Pass<'_> {
    /// Stage 9: DNS rules (docs/l7.md). A query (client→server) must be one
    /// well-formed standard query whose name the flow's DNS rule set allows.
    /// Refused over UDP: the query is rewritten in place into a REFUSED
    /// response and sent back out of `reply_port` (`Verdict::Tx`); over TCP (or
    /// with no reply port) it is dropped. A UDP response (server→client) to an
    /// allowed name teaches the node's learned FQDN table the addresses it
    /// carries for names some `toFQDNs` selector wants; it always passes.
    pub(super) fn dns(
        &mut self,
        pkt: &Parsed,
        need: DnsNeed,
        reply_port: Option<PortId>,
        route: Option<&Route>,
    ) -> ControlFlow<Verdict, ()> {
        let (buf, snap, st) = (&mut *self.buf, self.snap, &mut *self.st);
        use crate::l7::dns;
        let udp = pkt.key.proto == ip_proto::UDP;
        if !udp && pkt.key.proto != ip_proto::TCP {
            return Continue(());
        }
        if pkt.fragment != Fragment::Whole {
            // A query's name cannot be judged in pieces: fail closed.
            return if need.query {
                drop(DropReason::DnsMalformed)
            } else {
                Continue(())
            };
        }
        let pol = snap.policy();
        let orig = if need.query {
            pkt.key
        } else {
            FlowKey {
                src: pkt.key.dst,
                dst: pkt.key.src,
                proto: pkt.key.proto,
                sport: pkt.key.dport,
                dport: pkt.key.sport,
            }
        };
        // Responses (UDP, or TCP whole in one segment) give the flow log its
        // rcode and teach FQDN rules: read below.
        let set = match need.set {
            Some(s) => Some(s),
            None => judge(snap, &orig, None, &st.fqdn, st.now_ns).0.egress.dns,
        };
        let Some(rules) = set.and_then(|s| pol.dns_set(s)) else {
            // The flow is no longer under DNS rules (policy changed).
            return Continue(());
        };
        let end = pkt.frame_len();
        let start = if udp {
            pkt.l4_offset + udp::HEADER_LEN
        } else {
            let hl = buf
                .get(pkt.l4_offset..end)
                .and_then(|b| tcp::Packet::new_checked(b).ok())
                .map(|t| t.header_len());
            match hl {
                Some(hl) => pkt.l4_offset + hl,
                None => return drop(DropReason::L4Truncated),
            }
        };
        let msg = buf.get(start..end).unwrap_or_default();
        if !need.query {
            // Over TCP: only a response whole in one segment (its 2-byte
            // length prefix is the rest of the segment) teaches.
            let msg = match (udp, msg.get(..2)) {
                (true, _) => msg,
                (false, Some(l))
                    if usize::from(u16::from_be_bytes([l[0], l[1]])) + 2 == msg.len() =>
                {
                    &msg[2..]
                }
                (false, _) => return Continue(()),
            };
            let Ok(r) = dns::parse_response(msg) else {
                return Continue(());
            };
            if !rules.allows(&r.qname) {
                return Continue(());
            }
            let mut name = [0u8; dns::MAX_NAME];
            let Some(n) = r.qname.write_dotted(&mut name) else {
                return Continue(());
            };
            let Ok(name) = std::str::from_utf8(&name[..n]) else {
                return Continue(());
            };
            dns_allowed(st, snap, &pkt.key, name, Some(r.rcode));
            if pol.has_fqdn() && pol.fqdn_wanted(name) {
                for (addr, ttl) in r.addresses() {
                    st.fqdn.learn(name, addr, ttl, st.now_ns);
                }
            }
            return Continue(());
        }
        if !udp && msg.is_empty() {
            return Continue(());
        }
        let parsed = if udp {
            dns::parse_query(msg)
        } else {
            dns::parse_query_tcp(msg)
        };
        let q = match parsed {
            Ok(q) => q,
            Err(_) => return drop(DropReason::DnsMalformed),
        };
        let mut name = [0u8; dns::MAX_NAME];
        let n = q.qname.write_dotted(&mut name).unwrap_or(0);
        if rules.allows(&q.qname) {
            let name = std::str::from_utf8(&name[..n]).unwrap_or("");
            dns_allowed(st, snap, &pkt.key, name, None);
            return Continue(());
        }
        let note = L7Note::dns_query(
            crate::l7::L7Reason::DnsRefused,
            std::str::from_utf8(&name[..n]).unwrap_or(""),
        );
        st.dns_refused += 1;
        st.flows
            .push(dns_event(st, &pkt.key, DropReason::DnsRefused, note));
        if let (true, Some(port)) = (udp, reply_port) {
            if let Some(len) = refused_reply(buf, pkt, start, port, snap) {
                return Break(Verdict::Tx { port, len });
            }
        }
        if let (false, Some(port)) = (udp, reply_port) {
            if let Some(v) = refused_tcp(buf, pkt, start, port, snap, route, st) {
                return Break(v);
            }
        }
        drop(DropReason::DnsRefused)
    }
}

/// A refused query over TCP (the whole length-prefixed query in this
/// segment): the frame becomes the REFUSED response (length-prefixed) from
/// the server, with FIN, acknowledging the query, out of `port` to the
/// client. The server never saw the query, so the connection cannot go on
/// (the client's and the server's byte streams now differ): with the
/// server's route known (a local pod) the worker also sends it a RST at the
/// query's first byte (`Verdict::L7Deny`, no L7 slot); otherwise the server
/// gets nothing (its side times out). Conntrack learns of the close.
fn refused_tcp(
    buf: &mut [u8],
    pkt: &Parsed,
    start: usize,
    port: PortId,
    snap: &Snapshot,
    route: Option<&Route>,
    st: &mut WorkerState,
) -> Option<Verdict> {
    use crate::l7::reply::{build_data_frame, data_offset, DeniedFlow, TcpEnd};
    let end = pkt.frame_len();
    let (seq, ack) = {
        let t = tcp::Packet::new_checked(buf.get(pkt.l4_offset..end)?).ok()?;
        (t.seq_number(), t.ack_number())
    };
    let client_next = seq.wrapping_add(u32::try_from(end - start).ok()?);
    let client_mac = ethernet::Frame::new_checked(&buf[..]).ok()?.src_addr();
    let n = crate::l7::dns::refuse_in_place_tcp(buf.get_mut(start..end)?).ok()?;
    let at = data_offset(pkt.key.dst, pkt.key.src)?;
    if buf.len() < at + n {
        return None;
    }
    buf.copy_within(start..start + n, at);
    let client = TcpEnd {
        mac: client_mac,
        ip: pkt.key.src,
        port: pkt.key.sport,
    };
    let server = TcpEnd {
        mac: snap.port(port)?.mac,
        ip: pkt.key.dst,
        port: pkt.key.dport,
    };
    let flags = tcp::flags::PSH | tcp::flags::ACK | tcp::flags::FIN;
    let len = build_data_frame(buf, &server, &client, ack, client_next, flags, n)?;
    let generation = snap.policy().generation();
    let rst = tcp::flags::RST | tcp::flags::ACK;
    st.ct.track(
        &pkt.key,
        crate::conntrack::Seg::Tcp(rst),
        generation,
        st.now_ns,
    );
    Some(match route {
        Some(r) => Verdict::L7Deny {
            slot: u32::MAX,
            reply_port: port,
            reply_len: len,
            rst_port: r.port,
            rst: DeniedFlow {
                client: TcpEnd {
                    mac: r.src_mac,
                    ..client
                },
                server: TcpEnd {
                    mac: r.dst_mac,
                    ..server
                },
                client_next_seq: client_next,
                server_expects_seq: seq,
                server_next_seq: ack,
            },
            reason: DropReason::DnsRefused,
        },
        None => Verdict::Tx { port, len },
    })
}

/// Turns the UDP query frame in the buffer (DNS message at `start`) into
/// the REFUSED response back to the client: DNS header rewritten, addresses
/// and ports swapped, lengths and checksums recomputed (the IP header keeps
/// its other fields and options), MACs from `port`. Returns the frame length.
fn refused_reply(
    buf: &mut [u8],
    pkt: &Parsed,
    start: usize,
    port: PortId,
    snap: &Snapshot,
) -> Option<usize> {
    let n = crate::l7::dns::refuse_in_place(buf.get_mut(start..pkt.frame_len())?).ok()?;
    let udp_len = udp::HEADER_LEN + n;
    let l4 = pkt.l4_offset;
    let ip_at = ethernet::HEADER_LEN;
    let (client, server) = (pkt.key.src, pkt.key.dst);
    let ethertype = match (client, server) {
        (IpAddr::V4(c), IpAddr::V4(s)) => {
            let mut ip = ipv4::Packet::new_checked(buf.get_mut(ip_at..pkt.frame_len())?).ok()?;
            ip.set_src_addr(s);
            ip.set_dst_addr(c);
            ip.set_total_len(u16::try_from(l4 - ip_at + udp_len).ok()?);
            ip.set_ttl(REPLY_TTL);
            ip.fill_checksum();
            ethertype::IPV4
        }
        (IpAddr::V6(c), IpAddr::V6(s)) => {
            let mut ip = ipv6::Packet::new_checked(buf.get_mut(ip_at..pkt.frame_len())?).ok()?;
            ip.set_src_addr(s);
            ip.set_dst_addr(c);
            ip.set_payload_len(u16::try_from(l4 - ip_at - ipv6::HEADER_LEN + udp_len).ok()?);
            ip.set_hop_limit(REPLY_TTL);
            ethertype::IPV6
        }
        _ => return None,
    };
    let repr = udp::Repr {
        src_port: pkt.key.dport,
        dst_port: pkt.key.sport,
        payload_len: n,
    };
    let mut u = udp::Packet::new_unchecked(buf.get_mut(l4..l4 + udp_len)?);
    repr.emit(&mut u).ok()?;
    u.fill_checksum(server, client);
    reply_ethernet(buf, snap.port(port)?, ethertype)?;
    Some(l4 + udp_len)
}
