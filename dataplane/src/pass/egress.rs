//! Pod → world through the node's uplink (docs/egress.md).
//!
//! - **Out** (after route, policy, TTL and MTU, so egress NetworkPolicy
//!   judges the pod's own address before any rewrite): a TCP/UDP packet to
//!   an address outside every cluster range leaves on the underlay port to
//!   the uplink gateway's MAC. Unless its destination is in the
//!   non-masquerade list, its source becomes the node's underlay address
//!   and a port of weir's SNAT range ([`SNAT_PORT_FIRST`]..=[`SNAT_PORT_LAST`]).
//!   Ports are per destination (address, port, protocol): the mapping is
//!   kept in the node's NAT table as two entries, `SnatOut` (the pod's
//!   tuple → node port, so later packets keep their port) and `SnatIn`
//!   (world → node:port ⇒ the pod's address and port). A worker allocates
//!   only from its own share of the range (ports whose offset in the range
//!   is ≡ its index mod the worker count), so two workers never hand out
//!   the same port, whatever the timing; a full share is
//!   `snat-ports-exhausted`.
//! - **In** (before parse): a frame on the underlay port that is TCP/UDP
//!   over IPv4 to the node's underlay address and a port of the range is a
//!   reply from the world (the XDP program hands exactly those to the
//!   dataplane); its destination becomes the pod's again in the same pass
//!   (`snat-no-entry` without a mapping), then it routes, is tracked and
//!   judged like any packet to the pod (conntrack sees pod ↔ world).
//!
//! - **ICMP** (`nat_icmp.rs`): echo requests are SNATed by identifier
//!   (the identifier plays the port); echo replies and ICMP errors from the
//!   world about a SNAT flow come back translated for the pod.
//! - **Fragments**: later fragments follow their first fragment's mapping
//!   (policy gave them the flow's ports); only their IP source changes.
//! - **TCP close**: FIN or RST shortens the mapping to conntrack's closing
//!   timeouts (`snat_closing`).
//!
//! - **IPv6** (SNAT66): with the node's IPv6 underlay address in the
//!   snapshot (`UplinkTables::node_ipv6`), IPv6 to the world is
//!   masqueraded on it the same way (TCP/UDP ports, ICMPv6 echo
//!   identifiers, the same shares; NAT keys carry the family); replies
//!   are recognised by [`is_from_uplink6`]. Without it: `no-route`.
//!
//!   ICMPv6 errors about SNAT66 or IPv6 node-port flows are recognised by
//!   `nat_icmp::is_snat_icmp6` and translated as IPv4's.
//!
//!   Non-masqueraded IPv6 destinations work as IPv4's (`routed_v6`,
//!   [`is_routed_to_pods6`]).
//!
//! Not handled: other ICMP toward the world (`snat-unsupported`),
//! fragments from the world (the XDP program leaves them to the kernel).

use core::ops::ControlFlow::{self, Continue};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::nat_icmp::{self, End, ECHO_REPLY_V4, ECHO_REPLY_V6, ECHO_REQUEST_V4, ECHO_REQUEST_V6};
use super::parse::{Fragment, Parsed};
use super::{drop, Pass};
use crate::flow_key::FlowKey;
use crate::snapshot::{NODE_PORT_FIRST, NODE_PORT_LAST, SNAT_PORT_FIRST, SNAT_PORT_LAST};
use crate::svc_nat::{Kind, Nat};
use crate::wire::{ethernet, ip_proto};
use crate::{DropReason, Verdict};

/// Ports tried before a new flow is refused as `snat-ports-exhausted`.
const MAX_PROBES: u32 = 64;
/// Seed of the hash that picks where a flow's probe starts.
const PORT_SEED: u64 = 0x736e_6174_0000_0001;

/// Whether `frame` is for weir from the uplink: IPv4 TCP/UDP (fragment
/// offset 0 and no MF) to `node` with a destination port in the SNAT range
/// (a reply from the world) or the NodePort range. A raw peek, before
/// parse.
pub(super) fn is_from_uplink(frame: &[u8], node: Ipv4Addr) -> bool {
    let Some((proto, dst, l4)) = super::parse::peek_whole_v4(frame) else {
        return false;
    };
    if !matches!(proto, ip_proto::TCP | ip_proto::UDP) || dst != node.octets() {
        return false;
    }
    let Some(dport) = frame.get(l4 + 2..l4 + 4) else {
        return false;
    };
    let dport = u16::from_be_bytes([dport[0], dport[1]]);
    (SNAT_PORT_FIRST..=SNAT_PORT_LAST).contains(&dport)
        || (NODE_PORT_FIRST..=NODE_PORT_LAST).contains(&dport)
}

/// Whether `frame` is for weir from the uplink over IPv6 (SNAT66,
/// docs/egress.md): TCP/UDP directly after the IPv6 header (no extension
/// header) to `node` with a destination port in the SNAT range (a reply)
/// or the NodePort range, or an
/// ICMPv6 echo reply to `node` whose identifier is in the SNAT range. A
/// raw peek, before parse; the XDP program's underlay branch hands exactly
/// these to the dataplane.
pub(super) fn is_from_uplink6(frame: &[u8], node: Ipv6Addr) -> bool {
    let ip_at = ethernet::HEADER_LEN;
    let l4 = ip_at + 40;
    let (Some(ty), Some(&ver), Some(&next), Some(dst), Some(w0), Some(w1)) = (
        frame.get(12..14),
        frame.get(ip_at),
        frame.get(ip_at + 6),
        frame.get(ip_at + 24..ip_at + 40),
        frame.get(l4..l4 + 2),
        frame.get(l4 + 2..l4 + 6),
    ) else {
        return false;
    };
    if ty != [0x86, 0xdd] || ver >> 4 != 6 || dst != node.octets() {
        return false;
    }
    let snat = |p: u16| (SNAT_PORT_FIRST..=SNAT_PORT_LAST).contains(&p);
    match next {
        ip_proto::TCP | ip_proto::UDP => {
            let dport = u16::from_be_bytes([w1[0], w1[1]]);
            snat(dport) || (NODE_PORT_FIRST..=NODE_PORT_LAST).contains(&dport)
        }
        ip_proto::ICMPV6 => {
            u16::from_be_bytes([w0[0], w0[1]]) == ECHO_REPLY_V6
                && snat(u16::from_be_bytes([w1[2], w1[3]]))
        }
        _ => false,
    }
}

/// Whether `frame` (from the uplink) is IPv4 to `(network, mask)`, this
/// node's pod CIDR: routed to a pod as sent (non-masqueraded peers). A raw
/// peek, before parse.
pub(super) fn is_routed_to_pods(frame: &[u8], (net, mask): (u32, u32)) -> bool {
    let ip_at = ethernet::HEADER_LEN;
    let (Some(ty), Some(&ver_ihl), Some(dst)) = (
        frame.get(12..14),
        frame.get(ip_at),
        frame.get(ip_at + 16..ip_at + 20),
    ) else {
        return false;
    };
    ty == [0x08, 0x00]
        && ver_ihl >> 4 == 4
        && u32::from_be_bytes([dst[0], dst[1], dst[2], dst[3]]) & mask == net
}

/// Whether `frame` (from the uplink) is IPv6 to `(network, mask)`, this
/// node's IPv6 pod CIDR (non-masqueraded IPv6 destinations). A raw peek,
/// before parse; the XDP program's `routed_v6` tests the same.
pub(super) fn is_routed_to_pods6(frame: &[u8], (net, mask): (u128, u128)) -> bool {
    let ip_at = ethernet::HEADER_LEN;
    let (Some(ty), Some(&ver), Some(dst)) = (
        frame.get(12..14),
        frame.get(ip_at),
        frame.get(ip_at + 24..ip_at + 40),
    ) else {
        return false;
    };
    let Ok(dst) = <[u8; 16]>::try_from(dst) else {
        return false;
    };
    ty == [0x86, 0xdd] && ver >> 4 == 6 && u128::from_be_bytes(dst) & mask == net
}

impl Pass<'_> {
    fn snat_idle(&self, proto: u8) -> u64 {
        match proto {
            ip_proto::TCP => self.st.ct.timeouts().tcp_established,
            ip_proto::ICMP | ip_proto::ICMPV6 => self.st.ct.timeouts().icmp,
            _ => self.st.ct.timeouts().udp_replied,
        }
    }

    /// Reverse SNAT of a reply from the world (see the module doc): the
    /// destination becomes the pod's address and port again.
    pub(super) fn uplink_in(&mut self, pkt: &mut Parsed) -> ControlFlow<Verdict, ()> {
        // A Service's external address (`external.rs`).
        if self.snap.services().is_external(pkt.key.dst) {
            return self.external_in(pkt);
        }
        // Not to the node's address: routed to a pod, as sent. Only a
        // non-masqueraded destination knows pod addresses (replies of its
        // flows, or flows it opens; conntrack and the pod's ingress policy
        // judge them as any other); anything else is `no-route`.
        if let (Some(u), IpAddr::V4(dst), IpAddr::V4(src)) =
            (self.snap.uplink(), pkt.key.dst, pkt.key.src)
        {
            if dst != u.node_ipv4 {
                if u.non_masquerade.contains(src) && !u.cluster.contains(src) {
                    return Continue(());
                }
                return drop(DropReason::NoRoute);
            }
        }
        // IPv6: to the node's IPv6 underlay address (SNAT66 replies), or
        // from a non-masqueraded IPv6 destination to a pod, as for IPv4.
        if let IpAddr::V6(dst) = pkt.key.dst {
            let u = self.snap.uplink();
            if u.and_then(|u| u.node_ipv6) != Some(dst) {
                if let (Some(u), IpAddr::V6(src)) = (u, pkt.key.src) {
                    if u.routed_v6.is_some()
                        && u.non_masquerade6.contains(src)
                        && !u.cluster6.contains(src)
                    {
                        return Continue(());
                    }
                }
                return drop(DropReason::NoRoute);
            }
        }
        if pkt.fragment != Fragment::Whole {
            return drop(DropReason::SnatNoEntry);
        }
        if pkt.icmp_error {
            return self.snat_error_in(pkt);
        }
        if matches!(pkt.key.proto, ip_proto::ICMP | ip_proto::ICMPV6) {
            return self.snat_echo_in(pkt);
        }
        if (NODE_PORT_FIRST..=NODE_PORT_LAST).contains(&pkt.key.dport) {
            return self.node_port_in(pkt);
        }
        let now = self.st.now_ns;
        let idle = self.snat_idle(pkt.key.proto);
        let Some(n) = self
            .st
            .ct
            .nat()
            .get(&pkt.key, Kind::SnatIn, now, now + idle)
        else {
            return drop(DropReason::SnatNoEntry);
        };
        if super::service::rewrite(self.buf, pkt, None, Some((n.addr, n.port))).is_err() {
            return drop(DropReason::L4Truncated);
        }
        let pod = FlowKey {
            src: n.addr,
            dst: pkt.key.src,
            proto: pkt.key.proto,
            sport: n.port,
            dport: pkt.key.sport,
        };
        self.snat_closing(&pod, &pkt.key, pkt.tcp_flags, false);
        pkt.key.dst = n.addr;
        pkt.key.dport = n.port;
        Continue(())
    }

    /// An echo reply from the world: its identifier was a SNAT port; the
    /// pod's address and identifier come back (`snat-no-entry` without a
    /// mapping, or for any other ICMP message).
    fn snat_echo_in(&mut self, pkt: &mut Parsed) -> ControlFlow<Verdict, ()> {
        let (reply, request) = if pkt.key.proto == ip_proto::ICMPV6 {
            (ECHO_REPLY_V6, ECHO_REQUEST_V6)
        } else {
            (ECHO_REPLY_V4, ECHO_REQUEST_V4)
        };
        if pkt.key.dport != reply {
            return drop(DropReason::SnatNoEntry);
        }
        // The `SnatIn` key of an echo flow (see `snat_port`'s `reply`).
        let key = FlowKey {
            sport: request,
            dport: pkt.key.sport,
            ..pkt.key
        };
        let now = self.st.now_ns;
        let idle = self.snat_idle(pkt.key.proto);
        let Some(n) = self.st.ct.nat().get(&key, Kind::SnatIn, now, now + idle) else {
            return drop(DropReason::SnatNoEntry);
        };
        if nat_icmp::rewrite_echo(self.buf, pkt, None, Some(n.addr), n.port).is_none() {
            return drop(DropReason::L4Truncated);
        }
        pkt.key.dst = n.addr;
        pkt.key.sport = n.port;
        Continue(())
    }

    /// An ICMP error from the world about a SNAT flow (port unreachable,
    /// fragmentation needed, time exceeded, ...): it quotes the packet as
    /// it left (node address and SNAT port or identifier as source); it
    /// goes to the pod quoting the packet as the pod sent it
    /// (`snat-no-entry` when it quotes no live mapping).
    fn snat_error_in(&mut self, pkt: &mut Parsed) -> ControlFlow<Verdict, ()> {
        let Some(q) = nat_icmp::quoted(self.buf, pkt) else {
            return drop(DropReason::SnatNoEntry);
        };
        if q.src != pkt.key.dst {
            return drop(DropReason::SnatNoEntry);
        }
        if matches!(q.proto, ip_proto::TCP | ip_proto::UDP)
            && (NODE_PORT_FIRST..=NODE_PORT_LAST).contains(&q.sport)
        {
            return self.node_port_error_in(pkt, &q);
        }
        let now = self.st.now_ns;
        // An error does not keep a mapping alive.
        let Some(n) = self
            .st
            .ct
            .nat()
            .get(&nat_icmp::reverse(&q), Kind::SnatIn, now, now)
        else {
            return drop(DropReason::SnatNoEntry);
        };
        let to = (n.addr, n.port);
        if nat_icmp::translate_error(self.buf, pkt, None, Some(n.addr), End::Src, to).is_none() {
            return drop(DropReason::L4Truncated);
        }
        pkt.key.dst = n.addr;
        Continue(())
    }

    /// An ICMP error from the world about a node-port flow served by a
    /// backend on this node: it quotes the backend's reply as it left
    /// (node address and nodePort → client); it goes to the backend
    /// quoting the reply as the backend sent it. The flow's forward entry
    /// (client → node:nodePort) names the backend. Flows sent to a backend
    /// on another node (SNATed through the tunnel) are not translated:
    /// `snat-no-entry`.
    fn node_port_error_in(&mut self, pkt: &mut Parsed, q: &FlowKey) -> ControlFlow<Verdict, ()> {
        let now = self.st.now_ns;
        let Some(n) = self
            .st
            .ct
            .nat()
            .get(&nat_icmp::reverse(q), Kind::Forward, now, now)
        else {
            return drop(DropReason::SnatNoEntry);
        };
        if n.other.is_some() {
            return drop(DropReason::SnatNoEntry);
        }
        let to = (n.addr, n.port);
        if nat_icmp::translate_error(self.buf, pkt, None, Some(n.addr), End::Src, to).is_none() {
            return drop(DropReason::L4Truncated);
        }
        pkt.key.dst = n.addr;
        Continue(())
    }

    /// A TCP segment with FIN or RST ends its mapping (docs/egress.md):
    /// the mapping then lives as long as its conntrack entry would in the
    /// state the segment leads to (FIN: `tcp_fin_wait`; the second FIN:
    /// `tcp_time_wait`; RST: `tcp_close`), and later segments no longer
    /// extend it. `pod` is the pod's tuple (`SnatOut`), `back` the world's
    /// reply tuple (`SnatIn`); `tracked`: conntrack has seen this segment
    /// (on the way out) or not yet (on the way in).
    fn snat_closing(&self, pod: &FlowKey, back: &FlowKey, flags: u8, tracked: bool) {
        use crate::conntrack::State;
        use crate::wire::tcp::flags::{FIN, RST};
        if pod.proto != ip_proto::TCP || flags & (FIN | RST) == 0 {
            return;
        }
        let t = self.st.ct.timeouts();
        let now = self.st.now_ns;
        let life = if flags & RST != 0 {
            t.tcp_close
        } else {
            match (self.st.ct.peek(pod, now).map(|(_, s, _)| s), tracked) {
                (Some(State::Close | State::Denied), _) => t.tcp_close,
                (Some(State::FinWait), true) => t.tcp_fin_wait,
                (Some(State::FinWait | State::LastAck | State::TimeWait), _) => t.tcp_time_wait,
                (_, false) => t.tcp_fin_wait,
                (_, true) => return,
            }
        };
        let nat = self.st.ct.nat();
        nat.set_life(pod, Kind::SnatOut, now, now + life);
        nat.set_life(back, Kind::SnatIn, now, now + life);
    }

    /// Toward the world (see the module doc): SNAT unless the destination
    /// is not masqueraded, then MACs and TTL for the uplink.
    pub(super) fn uplink_out(&mut self, pkt: &Parsed) -> Verdict {
        let Some(u) = self.snap.uplink() else {
            return Verdict::Drop(DropReason::NoRoute);
        };
        let (port, mac) = (u.port, u.node_mac);
        // A NodePort reply already carries the node's address as source,
        // an external address's reply that address (`external.rs`).
        // IPv6: masqueraded on the node's IPv6 underlay address (SNAT66)
        // unless the destination is not masqueraded.
        let (masquerade, node, gw) = match pkt.key.dst {
            IpAddr::V4(a) => {
                let node = IpAddr::V4(u.node_ipv4);
                let masq = pkt.key.src != node
                    && !u.non_masquerade.contains(a)
                    && !self.snap.services().is_external(pkt.key.src);
                (masq, node, u.gateway_mac)
            }
            IpAddr::V6(a) => {
                let Some(node6) = u.node_ipv6 else {
                    return Verdict::Drop(DropReason::NoRoute);
                };
                let node = IpAddr::V6(node6);
                let masq = pkt.key.src != node
                    && !u.non_masquerade6.contains(a)
                    && !self.snap.services().is_external(pkt.key.src);
                (masq, node, u.gateway_mac_v6)
            }
        };
        if masquerade {
            let echo = (pkt.key.proto == ip_proto::ICMP && pkt.key.dport == ECHO_REQUEST_V4)
                || (pkt.key.proto == ip_proto::ICMPV6 && pkt.key.dport == ECHO_REQUEST_V6);
            if !(echo || matches!(pkt.key.proto, ip_proto::TCP | ip_proto::UDP)) {
                return Verdict::Drop(DropReason::SnatUnsupported);
            }
            if pkt.fragment == Fragment::Later {
                return self.snat_later_fragment(pkt, node, gw, mac, port);
            }
            let Some(sport) = self.snat_port(&pkt.key, node) else {
                return Verdict::Drop(DropReason::SnatPortsExhausted);
            };
            let done = if echo {
                nat_icmp::rewrite_echo(self.buf, pkt, Some(node), None, sport)
            } else {
                super::service::rewrite(self.buf, pkt, Some((node, sport)), None).ok()
            };
            if done.is_none() {
                return Verdict::Drop(DropReason::L4Truncated);
            }
            let back = FlowKey {
                src: pkt.key.dst,
                dst: node,
                proto: pkt.key.proto,
                sport: pkt.key.dport,
                dport: sport,
            };
            self.snat_closing(&pkt.key, &back, pkt.tcp_flags, true);
        }
        match self.rewrite_frame(pkt, gw, mac) {
            Ok(len) => Verdict::Tx { port, len },
            Err(v) => v,
        }
    }

    /// A non-first fragment toward the world follows its first fragment's
    /// translation: policy gave it the flow's ports (`crate::frag`), so
    /// the flow's `SnatOut` mapping names the node's address; only the IP
    /// source changes (no transport header here). No mapping (its first
    /// fragment was never translated): `snat-no-entry`.
    fn snat_later_fragment(
        &mut self,
        pkt: &Parsed,
        node: IpAddr,
        gw: [u8; 6],
        mac: [u8; 6],
        port: crate::snapshot::PortId,
    ) -> Verdict {
        let now = self.st.now_ns;
        if self
            .st
            .ct
            .nat()
            .get(&pkt.key, Kind::SnatOut, now, now)
            .is_none()
        {
            return Verdict::Drop(DropReason::SnatNoEntry);
        }
        if nat_icmp::rewrite_addrs(self.buf, pkt, Some(node), None).is_none() {
            return Verdict::Drop(DropReason::Ipv4Malformed);
        }
        match self.rewrite_frame(pkt, gw, mac) {
            Ok(len) => Verdict::Tx { port, len },
            Err(v) => v,
        }
    }

    /// The node port of the pod's flow `key`: the one it has, else a free
    /// one of this worker's share (recorded both ways); `None` when the
    /// probes found none free.
    fn snat_port(&self, key: &FlowKey, node: IpAddr) -> Option<u16> {
        let nat = self.st.ct.nat();
        let now = self.st.now_ns;
        let until = now + self.snat_idle(key.proto);
        if let Some(n) = nat.get(key, Kind::SnatOut, now, until) {
            return Some(n.port);
        }
        let (s, _) = crate::conntrack::addr_bytes(key.src);
        let (d, _) = crate::conntrack::addr_bytes(key.dst);
        let last = u64::from(key.sport) | u64::from(key.dport) << 16 | u64::from(key.proto) << 32;
        let hash = crate::conntrack::hash_addrs(PORT_SEED, &s, &d, last);
        let reply = |port| FlowKey {
            src: key.dst,
            dst: node,
            proto: key.proto,
            sport: key.dport,
            dport: port,
        };
        let port = self.free_snat_port(hash, reply)?;
        let back = Nat {
            addr: key.src,
            port: key.sport,
            other: None,
            frontend: 0,
            other_port: 0,
        };
        nat.set(&reply(port), Kind::SnatIn, back, now, until);
        let out = Nat {
            addr: node,
            port,
            other: None,
            frontend: 0,
            other_port: 0,
        };
        nat.set(key, Kind::SnatOut, out, now, until);
        Some(port)
    }

    /// A port of this worker's share of the SNAT range whose reply tuple
    /// `reply(port)` has no live `SnatIn` entry, probing from `hash`; the
    /// caller records it (no other worker allocates from this share, so
    /// nothing can take it in between).
    pub(super) fn free_snat_port(&self, hash: u64, reply: impl Fn(u16) -> FlowKey) -> Option<u16> {
        self.free_port(hash, reply, Kind::SnatIn)
    }

    /// [`free_snat_port`](Self::free_snat_port) for entries of `kind`: a
    /// port of this worker's share of the SNAT range whose `reply(port)`
    /// has no live entry of that kind.
    pub(super) fn free_port(
        &self,
        hash: u64,
        reply: impl Fn(u16) -> FlowKey,
        kind: Kind,
    ) -> Option<u16> {
        let nat = self.st.ct.nat();
        let now = self.st.now_ns;
        let (index, workers) = self.st.snat_slice;
        let (index, workers) = (u32::from(index), u32::from(workers.max(1)));
        let size = u32::from(SNAT_PORT_LAST - SNAT_PORT_FIRST) + 1;
        let share = (size.checked_sub(index)?).div_ceil(workers);
        if share == 0 {
            return None;
        }
        let start = (hash % u64::from(share)) as u32;
        for probe in 0..MAX_PROBES.min(share) {
            let k = (start + probe) % share;
            let port = u16::try_from(u32::from(SNAT_PORT_FIRST) + index + k * workers).ok()?;
            if !nat.contains(&reply(port), kind, now) {
                return Some(port);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;

    /// The XDP program hands the dataplane the same range the pass serves.
    #[test]
    fn xdp_program_redirects_the_same_range() {
        let src = include_str!("../../../xdp-redirect/ebpf/src/main.rs");
        assert!(src.contains(&format!("const SNAT_FIRST: u16 = {SNAT_PORT_FIRST};")));
        assert!(src.contains(&format!("const SNAT_LAST: u16 = {SNAT_PORT_LAST};")));
        assert!(src.contains(&format!("const NODE_PORT_FIRST: u16 = {NODE_PORT_FIRST};")));
        assert!(src.contains(&format!("const NODE_PORT_LAST: u16 = {NODE_PORT_LAST};")));
    }

    #[test]
    fn uplink_peek() {
        let node = Ipv4Addr::new(172, 30, 0, 1);
        let frame = |dst: [u8; 4], dport: u16, tcp: bool| {
            let b = PacketBuilder::ethernet2([2; 6], [4; 6]).ipv4([198, 51, 100, 1], dst, 64);
            let mut out = Vec::new();
            if tcp {
                b.tcp(8080, dport, 1, 1000).write(&mut out, b"x").unwrap();
            } else {
                b.udp(8080, dport).write(&mut out, b"x").unwrap();
            }
            out
        };
        assert!(is_from_uplink(&frame(node.octets(), 61000, true), node));
        assert!(is_from_uplink(&frame(node.octets(), 65535, false), node));
        assert!(!is_from_uplink(&frame(node.octets(), 60999, true), node));
        assert!(is_from_uplink(&frame(node.octets(), 30000, true), node));
        assert!(is_from_uplink(&frame(node.octets(), 32767, false), node));
        assert!(!is_from_uplink(&frame(node.octets(), 29999, true), node));
        assert!(!is_from_uplink(&frame(node.octets(), 32768, true), node));
        assert!(!is_from_uplink(&frame(node.octets(), 4789, false), node));
        assert!(!is_from_uplink(&frame([172, 30, 0, 2], 61000, true), node));
        let short = frame(node.octets(), 61000, true);
        assert!(!is_from_uplink(&short[..36], node));
    }

    #[test]
    fn uplink_peek_v6() {
        let node: Ipv6Addr = "fd00:172:30::1".parse().unwrap();
        let world: Ipv6Addr = "2001:db8:5::1".parse().unwrap();
        let frame = |dst: Ipv6Addr, dport: u16, kind: u8| {
            let b = PacketBuilder::ethernet2([2; 6], [4; 6]).ipv6(world.octets(), dst.octets(), 64);
            let mut out = Vec::new();
            match kind {
                0 => b.tcp(8080, dport, 1, 1000).write(&mut out, b"x").unwrap(),
                1 => b.udp(8080, dport).write(&mut out, b"x").unwrap(),
                2 => b.icmpv6_echo_reply(dport, 1).write(&mut out, b"x").unwrap(),
                _ => b
                    .icmpv6_echo_request(dport, 1)
                    .write(&mut out, b"x")
                    .unwrap(),
            }
            out
        };
        assert!(is_from_uplink6(&frame(node, 61000, 0), node));
        assert!(is_from_uplink6(&frame(node, 65535, 1), node));
        assert!(is_from_uplink6(&frame(node, 61000, 2), node));
        assert!(!is_from_uplink6(&frame(node, 61000, 3), node));
        assert!(!is_from_uplink6(&frame(node, 60999, 0), node));
        assert!(!is_from_uplink6(&frame(node, 60999, 2), node));
        assert!(!is_from_uplink6(&frame(node, 4789, 1), node));
        assert!(is_from_uplink6(&frame(node, 30000, 0), node));
        assert!(is_from_uplink6(&frame(node, 32767, 1), node));
        assert!(!is_from_uplink6(&frame(node, 32768, 0), node));
        assert!(!is_from_uplink6(&frame(node, 30000, 2), node));
        assert!(!is_from_uplink6(&frame(world, 61000, 0), node));
        // IPv4 frames are `is_from_uplink`'s.
        let v4 = Ipv4Addr::new(172, 30, 0, 1);
        let mut out = Vec::new();
        PacketBuilder::ethernet2([2; 6], [4; 6])
            .ipv4([198, 51, 100, 1], v4.octets(), 64)
            .udp(8080, 61000)
            .write(&mut out, b"x")
            .unwrap();
        assert!(!is_from_uplink6(&out, node));
        let short = frame(node, 61000, 0);
        assert!(!is_from_uplink6(&short[..56], node));
        // The IPv6 pod CIDR (non-masqueraded destinations).
        let pods: Ipv6Addr = "fd00:10:244:1::".parse().unwrap();
        let mask = u128::MAX << 64;
        let cidr = (u128::from(pods), mask);
        let pod: Ipv6Addr = "fd00:10:244:1::5".parse().unwrap();
        assert!(is_routed_to_pods6(&frame(pod, 5000, 1), cidr));
        assert!(!is_routed_to_pods6(&frame(node, 5000, 1), cidr));
        assert!(!is_routed_to_pods6(&out, cidr));
        assert!(!is_routed_to_pods6(&frame(pod, 5000, 1)[..50], cidr));
    }
}
