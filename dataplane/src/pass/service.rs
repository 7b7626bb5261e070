//! Stage 3b: Services. Runs after the source check and before the route
//! and policy, so routing and policy judge the backend pod (as Kubernetes
//! requires), and conntrack tracks the flow as client ↔ backend.
//!
//! - A new flow to a frontend (ClusterIP, proto, port) takes a backend:
//!   the client's affinity entry when the Service has `sessionAffinity:
//!   ClientIP` and it has not expired, else Maglev on the 5-tuple hash.
//!   Destination address and port are rewritten (checksums updated
//!   incrementally, RFC 1624) and the choice is kept in the node's NAT
//!   table ([`crate::svc_nat`]): later packets of the flow keep their
//!   backend even when the backend set changes; a flow whose backend is no
//!   longer a backend of the frontend picks again (its TCP connection then
//!   ends with the new backend's RST).
//! - Replies (backend → client) get the reverse NAT in the same pass: the
//!   source becomes the ClusterIP and port again. Conntrack and policy see
//!   the reply as it came (backend → client), routing sees it rewritten.
//! - Hairpin: a client that is its own backend would get a packet from
//!   itself, which its kernel drops; its source is rewritten to
//!   [`HAIRPIN_V4`] / [`HAIRPIN_V6`], and back on the reply.
//! - A frontend without an active backend (or a ClusterIP on a port it
//!   does not serve): TCP is answered with an RST, UDP with ICMP port
//!   unreachable, and the frame counts as `service-no-endpoints`.
//!
//! Not handled here: SCTP (its CRC32c checksum cannot be updated
//! incrementally; SCTP frontends are refused like ones without endpoints).
//! Non-first fragments of a Service flow follow their first fragment's
//! translation (`service_later_fragment`); ICMP errors about Service flows
//! are translated back by `nat_icmp` (docs/services.md).

use core::ops::ControlFlow::{self, Break, Continue};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::nat_icmp::{self, End};
use super::parse::{Fragment, Parsed};
use super::Pass;
use crate::frag::{self, FragKey};
use crate::snapshot::ServiceFrontend;
use crate::svc_nat::{Kind, Nat};
use crate::wire::{checksum, ethernet, ip_proto, tcp};
use crate::{DropReason, Verdict};

/// Source of hairpin flows (IPv4): link-local, never a pod's, the address
/// Cilium uses for the same purpose.
pub const HAIRPIN_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 42, 1);
/// Source of hairpin flows (IPv6): the last usable address of the IPv6
/// Service range (fd00:96::/112), never allocated as a ClusterIP... except
/// when the whole range is used, which the allocator reaches last.
pub const HAIRPIN_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0xfffe);

/// Seed of the 5-tuple hash Maglev picks with (fixed: every worker and
/// node picks the same backend for the same tuple).
const PICK_SEED: u64 = 0x6d61_676c_6576_0001;

/// A known Service flow's packets refresh its reverse NAT entry once per
/// 2^30 ns epoch (see `Pass::service`).
const REVERSE_EPOCH_SHIFT: u32 = 30;

impl Pass<'_> {
    /// Stage 3b (see the module doc). Returns the packet as routing must
    /// see it when that differs from `pkt` (a reply whose bytes were
    /// reverse-NATed while conntrack and policy keep its wire key).
    /// `as_sent`: the packet is as its sender sent it (not a node-port
    /// flow `uplink_in` already translated, whose reverse entry is new).
    pub(super) fn service(
        &mut self,
        pkt: &mut Parsed,
        as_sent: bool,
    ) -> ControlFlow<Verdict, Option<Parsed>> {
        let snap = self.snap;
        let svc = snap.services();
        if !snap.spec.services.is_empty() && pkt.fragment == Fragment::Later {
            return self.service_later_fragment(pkt);
        }
        if snap.spec.services.is_empty()
            || pkt.icmp_error
            || pkt.fragment == Fragment::Later
            || !matches!(
                pkt.key.proto,
                ip_proto::TCP | ip_proto::UDP | ip_proto::SCTP
            )
        {
            return Continue(None);
        }
        let now = self.st.now_ns;
        let syn = pkt.key.proto == ip_proto::TCP && pkt.tcp_flags & tcp::flags::SYN != 0;
        // Fast path (`service_cache.rs`): a packet of a flow this worker
        // translated under this snapshot in this epoch takes the same
        // translation without the lookups below. SYNs and fragments take
        // the full stage (they write the reverse entry / the fragment
        // table).
        let epoch = now >> REVERSE_EPOCH_SHIFT;
        let cacheable = as_sent && !syn && pkt.fragment == Fragment::Whole;
        if cacheable {
            if let Some((chosen, d)) = self.st.svc_cache.get(&pkt.key, snap.instance(), epoch) {
                if apply_nat(self.buf, pkt, &chosen, d).is_err() {
                    return Break(Verdict::Drop(DropReason::L4Truncated));
                }
                pkt.key.src = chosen.other.unwrap_or(pkt.key.src);
                pkt.key.dst = chosen.addr;
                pkt.key.dport = chosen.port;
                return Continue(None);
            }
        }
        let idle = match pkt.key.proto {
            ip_proto::TCP => self.st.ct.timeouts().tcp_established,
            _ => self.st.ct.timeouts().udp_replied,
        };
        let nat = self.st.ct.nat();
        // A pod (or the node) reaching a node port at this node's own
        // address is load balanced as the Service's ClusterIP (kube-proxy's
        // "hairpin to node IP"); the reply comes back from that address and
        // node port (the reverse entry records what was sent to).
        // Another node's address is served here too (`node_port_at`).
        let node_port_front = match as_sent {
            true => snap.node_port_at(pkt.key.dst, pkt.key.proto, pkt.key.dport),
            false => None,
        };
        if node_port_front.is_some() || svc.is_cluster_ip(pkt.key.dst) {
            let front =
                node_port_front.or_else(|| svc.frontend(pkt.key.dst, pkt.key.proto, pkt.key.dport));
            let front = match front {
                Some(i) if pkt.key.proto != ip_proto::SCTP => i,
                _ => return Break(self.refuse(pkt)),
            };
            let f = snap.frontend(front);
            let known = nat
                .get_aged(&pkt.key, Kind::Forward, now, now + idle)
                .filter(|(n, _)| has_backend(f, n.addr, n.port));
            let (chosen, last_packet) = match known {
                Some((n, before)) => (n, Some(before.saturating_sub(idle))),
                None => match self.pick(pkt, front, f) {
                    Some(n) => {
                        // A new flow that left with a remapped port.
                        if n.other_port != 0 {
                            self.st.nat_port_remaps += 1;
                        }
                        (n, None)
                    }
                    None => return Break(self.refuse(pkt)),
                },
            };
            // The reverse entry is written for a new flow, and refreshed by
            // a known flow's packets at most once per ~1.07 s epoch (2^30
            // ns): one bucket lock per packet fewer on established Service
            // flows; its life still ends at most one epoch before the
            // forward entry's (idle timeouts are minutes to hours).
            // A SYN (a connection (re)opening on this tuple) always writes
            // it: a direct connection on the same tuple may have removed it.
            let refresh = match last_packet {
                None => true,
                _ if syn => true,
                Some(t) => t >> REVERSE_EPOCH_SHIFT != now >> REVERSE_EPOCH_SHIFT,
            };
            let src = chosen.other.unwrap_or(pkt.key.src);
            // The reply as it will come back: backend → client (or → the
            // hairpin address; to the remapped port of a clashing flow).
            let reply = crate::flow_key::FlowKey {
                src: chosen.addr,
                dst: src,
                proto: pkt.key.proto,
                sport: chosen.port,
                dport: source_port(&chosen, pkt.key.sport),
            };
            if refresh {
                nat.set(
                    &reply,
                    Kind::Reverse,
                    Nat {
                        addr: pkt.key.dst,
                        port: pkt.key.dport,
                        other: chosen.other.map(|_| pkt.key.src),
                        frontend: front,
                        other_port: match chosen.other_port {
                            0 => 0,
                            _ => pkt.key.sport,
                        },
                    },
                    now,
                    now + idle,
                );
            }
            // A remapped flow (rare) takes the full stage every packet.
            if cacheable && chosen.other_port == 0 {
                self.st.svc_cache.put(
                    &pkt.key,
                    chosen,
                    NatDeltas::of(&pkt.key, &chosen),
                    snap.instance(),
                    epoch,
                );
            }
            let wire = pkt.key;
            self.service_forward(pkt, chosen)?;
            if pkt.fragment == Fragment::First {
                // The rest of the datagram comes addressed to the
                // ClusterIP, without ports: remember them under that
                // address (`service_later_fragment`).
                let first = frag::First {
                    sport: wire.sport,
                    dport: wire.dport,
                    proto: wire.proto,
                    generation: snap.policy().generation() as u32,
                    verdict: None,
                    end: pkt.frag.len,
                };
                let fk = FragKey::new(wire.src, wire.dst, wire.proto, pkt.frag.ident);
                self.st.ct.frags().first(&fk, first, now);
            }
            return Continue(None);
        }
        // A new TCP connection straight to a backend (a SYN without ACK)
        // ends any Service flow of the same wire 5-tuple: the client
        // reused the port after that flow closed. Its reverse entry would
        // otherwise rewrite this connection's SYN-ACK to come from the
        // ClusterIP (and the client would refuse it).
        if as_sent
            && pkt.key.proto == ip_proto::TCP
            && pkt.tcp_flags & (tcp::flags::SYN | tcp::flags::ACK) == tcp::flags::SYN
            && svc.is_backend(pkt.key.dst, pkt.key.proto, pkt.key.dport)
        {
            let reply = crate::flow_key::FlowKey {
                src: pkt.key.dst,
                dst: pkt.key.src,
                proto: pkt.key.proto,
                sport: pkt.key.dport,
                dport: pkt.key.sport,
            };
            nat.remove(&reply, Kind::Reverse);
            return Continue(None);
        }
        // A reply of a Service flow? Only a backend sends one.
        if !svc.is_backend(pkt.key.src, pkt.key.proto, pkt.key.sport) {
            return Continue(None);
        }
        let Some(r) = nat.get(&pkt.key, Kind::Reverse, now, now + idle) else {
            return Continue(None);
        };
        let dst = r.other.unwrap_or(pkt.key.dst);
        let dport = source_port(&r, pkt.key.dport);
        if rewrite(
            self.buf,
            pkt,
            Some((r.addr, r.port)),
            r.other.map(|a| (a, dport)),
        )
        .is_err()
        {
            return Break(Verdict::Drop(DropReason::L4Truncated));
        }
        let mut routed = *pkt;
        routed.key.src = r.addr;
        routed.key.sport = r.port;
        routed.key.dst = dst;
        routed.key.dport = dport;
        Continue(Some(routed))
    }

    /// Rewrites a packet to a frontend toward its backend `chosen` (and
    /// from the hairpin address): the bytes, then the key routing, conntrack
    /// and policy see.
    fn service_forward(
        &mut self,
        pkt: &mut Parsed,
        chosen: Nat,
    ) -> ControlFlow<Verdict, Option<Parsed>> {
        let sport = source_port(&chosen, pkt.key.sport);
        if rewrite(
            self.buf,
            pkt,
            chosen.other.map(|a| (a, sport)),
            Some((chosen.addr, chosen.port)),
        )
        .is_err()
        {
            return Break(Verdict::Drop(DropReason::L4Truncated));
        }
        pkt.key.src = chosen.other.unwrap_or(pkt.key.src);
        pkt.key.sport = sport;
        pkt.key.dst = chosen.addr;
        pkt.key.dport = chosen.port;
        Continue(None)
    }

    /// A non-first fragment follows its first fragment's translation
    /// (docs/services.md): to a ClusterIP, the first fragment's ports were
    /// recorded under the ClusterIP (see the forward path), so the flow's
    /// forward entry names the backend; from a backend, the fragment table
    /// has the reply's ports (policy recorded them) and the reverse entry
    /// names the ClusterIP. Only IP addresses change (no transport header
    /// here). Anything else goes on untouched: policy then follows or drops
    /// it as for any fragment.
    fn service_later_fragment(&mut self, pkt: &mut Parsed) -> ControlFlow<Verdict, Option<Parsed>> {
        let svc = self.snap.services();
        let now = self.st.now_ns;
        let fk = FragKey::new(pkt.key.src, pkt.key.dst, pkt.key.proto, pkt.frag.ident);
        let frag::Later::Pass {
            sport,
            dport,
            proto,
            ..
        } = self.st.ct.frags().later(&fk, pkt.frag.offset, now)
        else {
            return Continue(None);
        };
        if !matches!(proto, ip_proto::TCP | ip_proto::UDP) {
            return Continue(None);
        }
        let k = crate::flow_key::FlowKey {
            src: pkt.key.src,
            dst: pkt.key.dst,
            proto,
            sport,
            dport,
        };
        let nat = self.st.ct.nat();
        if svc.is_cluster_ip(k.dst) {
            let Some(n) = nat.get(&k, Kind::Forward, now, now) else {
                return Continue(None);
            };
            if nat_icmp::rewrite_addrs(self.buf, pkt, n.other, Some(n.addr)).is_none() {
                return Break(Verdict::Drop(DropReason::Ipv4Malformed));
            }
            pkt.key.src = n.other.unwrap_or(pkt.key.src);
            pkt.key.dst = n.addr;
            return Continue(None);
        }
        if !svc.is_backend(k.src, proto, sport) {
            return Continue(None);
        }
        let Some(r) = nat.get(&k, Kind::Reverse, now, now) else {
            return Continue(None);
        };
        if nat_icmp::rewrite_addrs(self.buf, pkt, Some(r.addr), r.other).is_none() {
            return Break(Verdict::Drop(DropReason::Ipv4Malformed));
        }
        let mut routed = *pkt;
        routed.key.src = r.addr;
        routed.key.dst = r.other.unwrap_or(pkt.key.dst);
        Continue(Some(routed))
    }

    /// An ICMP/ICMPv6 error a backend sends about a Service flow (port
    /// unreachable, packet too big, ...): it quotes the packet as the
    /// backend received it (client → backend); the client must see it
    /// quote what it sent (client → ClusterIP:port) and come from the
    /// ClusterIP, as Linux's NAT does for related errors. Runs after
    /// policy, which matched the quote as it came against conntrack (the
    /// flow is tracked client → backend). Hairpin flows (the client is its
    /// own backend) are left as they are; errors about anything else pass
    /// untouched.
    pub(super) fn service_error(&mut self, pkt: &mut Parsed) -> ControlFlow<Verdict, ()> {
        if !pkt.icmp_error || self.snap.spec.services.is_empty() {
            return Continue(());
        }
        let Some(q) = nat_icmp::quoted(self.buf, pkt) else {
            return Continue(());
        };
        if !matches!(q.proto, ip_proto::TCP | ip_proto::UDP)
            || !self.snap.services().is_backend(q.dst, q.proto, q.dport)
        {
            return Continue(());
        }
        let now = self.st.now_ns;
        // An error does not keep a mapping alive.
        let back = nat_icmp::reverse(&q);
        let Some(r) = self.st.ct.nat().get(&back, Kind::Reverse, now, now) else {
            return Continue(());
        };
        // A flow whose source port was remapped (`clash_port`): the quote's
        // source port goes back to the client's own too. Hairpin flows
        // (their quote comes from the hairpin address) stay as they are.
        let remapped = match (r.other, r.other_port) {
            (Some(client), p) if p != 0 && client == q.src => Some((client, p)),
            (None, _) => None,
            _ => return Continue(()),
        };
        let outer_src = (pkt.key.src == q.dst).then_some(r.addr);
        let to = (r.addr, r.port);
        if nat_icmp::translate_error(self.buf, pkt, outer_src, None, End::Dst, to).is_none() {
            return Break(Verdict::Drop(DropReason::L4Truncated));
        }
        if let Some(from) = remapped {
            if nat_icmp::translate_error(self.buf, pkt, None, None, End::Src, from).is_none() {
                return Break(Verdict::Drop(DropReason::L4Truncated));
            }
        }
        if let Some(a) = outer_src {
            pkt.key.src = a;
        }
        Continue(())
    }

    /// Chooses a backend for a new flow and records it (forward entry,
    /// affinity); `None` when the frontend has no active backend.
    fn pick(&self, pkt: &Parsed, front: u32, f: &ServiceFrontend) -> Option<Nat> {
        let now = self.st.now_ns;
        let nat = self.st.ct.nat();
        let aff_key = crate::flow_key::FlowKey {
            sport: 0,
            ..pkt.key
        };
        let affinity = f.affinity_timeout_s.map(|s| u64::from(s) * 1_000_000_000);
        let from_affinity = affinity.and_then(|t| {
            nat.get(&aff_key, Kind::Affinity, now, now + t)
                .filter(|n| active_backend(f, n.addr, n.port))
        });
        let (addr, port) = match from_affinity {
            Some(n) => (n.addr, n.port),
            None if f.internal_local => {
                // internalTrafficPolicy: Local: this node's backends only.
                let snap = self.snap;
                let local = |b: &&crate::snapshot::ServiceBackend| {
                    b.active
                        && match b.ip {
                            IpAddr::V4(a) => snap.endpoint_by_v4(a).is_some(),
                            IpAddr::V6(a) => snap.endpoint_by_v6(a).is_some(),
                        }
                };
                let n = f.backends.iter().filter(local).count();
                if n == 0 {
                    return None;
                }
                let k = (tuple_hash(pkt) % n as u64) as usize;
                let b = f.backends.iter().filter(local).nth(k)?;
                (b.ip, b.port)
            }
            None => {
                let b = self.snap.services().pick(front, tuple_hash(pkt))?;
                let b = f.backends.get(usize::from(b))?;
                (b.ip, b.port)
            }
        };
        let hairpin = (addr == pkt.key.src).then_some(match addr {
            IpAddr::V4(_) => IpAddr::V4(HAIRPIN_V4),
            IpAddr::V6(_) => IpAddr::V6(HAIRPIN_V6),
        });
        let chosen = Nat {
            addr,
            port,
            other: hairpin,
            frontend: front,
            other_port: 0,
        };
        if let Some(t) = affinity {
            nat.set(&aff_key, Kind::Affinity, chosen, now, now + t);
        }
        let mut chosen = chosen;
        if hairpin.is_none() {
            if let Some(port) = self.clash_port(pkt, &chosen) {
                chosen.other = Some(pkt.key.src);
                chosen.other_port = port;
            }
        }
        let idle = match pkt.key.proto {
            ip_proto::TCP => self.st.ct.timeouts().tcp_established,
            _ => self.st.ct.timeouts().udp_replied,
        };
        nat.set(&pkt.key, Kind::Forward, chosen, now, now + idle);
        Some(chosen)
    }

    /// A new flow's reply tuple (backend → client:sport) already belongs
    /// to a live flow of *another* frontend (the client used the same
    /// source port toward two ClusterIPs that share the backend): the
    /// backend would see both as one connection (a TCP SYN meeting the
    /// other's TIME_WAIT is refused until it ends), and the replies would
    /// be restored to the other frontend. The new flow then leaves with a
    /// free source port of this worker's share of the SNAT range (61000–
    /// 65535, outside Linux's default ephemeral range), as Linux's NAT
    /// remaps a clashing source port. `None`: no clash (the same frontend
    /// again is the client reusing its own tuple: kept, as without NAT),
    /// or no free port (the flow keeps its port, as before).
    fn clash_port(&self, pkt: &Parsed, chosen: &Nat) -> Option<u16> {
        let now = self.st.now_ns;
        let reply = |port| crate::flow_key::FlowKey {
            src: chosen.addr,
            dst: pkt.key.src,
            proto: pkt.key.proto,
            sport: chosen.port,
            dport: port,
        };
        // `until` = now: a look, not a refresh.
        let owner = self
            .st
            .ct
            .nat()
            .get(&reply(pkt.key.sport), Kind::Reverse, now, now)?;
        if owner.addr == pkt.key.dst && owner.port == pkt.key.dport && owner.other.is_none() {
            return None;
        }
        self.free_port(tuple_hash(pkt), reply, Kind::Reverse)
    }

    /// Answers a flow to a frontend without endpoints: TCP RST, UDP ICMP
    /// port unreachable; counted as `service-no-endpoints` either way.
    fn refuse(&mut self, pkt: &Parsed) -> Verdict {
        self.st.reply_drop = Some(DropReason::ServiceNoEndpoints);
        let v = match pkt.key.proto {
            ip_proto::TCP => self.tcp_rst(pkt),
            ip_proto::UDP => self.port_unreachable(pkt),
            _ => None,
        };
        match v {
            Some(v) => v,
            None => {
                self.st.reply_drop = None;
                Verdict::Drop(DropReason::ServiceNoEndpoints)
            }
        }
    }

    /// An RST|ACK from the frontend to the client, in place of the frame.
    fn tcp_rst(&mut self, pkt: &Parsed) -> Option<Verdict> {
        use crate::l7::reply::{build_rst_frame, DeniedFlow, TcpEnd};
        if pkt.tcp_flags & crate::wire::tcp::flags::RST != 0 {
            return None;
        }
        let port = self.snap.port(self.ingress)?;
        let frame = self.buf.get(..pkt.frame_len())?;
        let eth = ethernet::Frame::new_checked(frame).ok()?;
        let client_mac = eth.src_addr();
        let l4 = frame.get(pkt.l4_offset..)?;
        let seq = u32::from_be_bytes(l4.get(4..8)?.try_into().ok()?);
        let ack = u32::from_be_bytes(l4.get(8..12)?.try_into().ok()?);
        let data_off = usize::from(l4.get(12)? >> 4) * 4;
        let payload = (pkt.frame_len() - pkt.l4_offset).saturating_sub(data_off) as u32;
        let syn = pkt.tcp_flags & crate::wire::tcp::flags::SYN != 0;
        let ack_set = pkt.tcp_flags & crate::wire::tcp::flags::ACK != 0;
        // RFC 793 reset generation: seq = their ack if ACK, else 0; ack =
        // their seq + length (SYN counts one).
        let flow = DeniedFlow {
            client: TcpEnd {
                mac: port.mac,
                ip: pkt.key.dst,
                port: pkt.key.dport,
            },
            server: TcpEnd {
                mac: client_mac,
                ip: pkt.key.src,
                port: pkt.key.sport,
            },
            client_next_seq: 0,
            server_expects_seq: if ack_set { ack } else { 0 },
            server_next_seq: seq.wrapping_add(payload).wrapping_add(u32::from(syn)),
        };
        let len = build_rst_frame(self.buf, &flow)?;
        Some(Verdict::Tx {
            port: self.ingress,
            len,
        })
    }
}

/// The source port a Service flow's packets leave with (`nat` a forward
/// entry), or the destination port its replies are restored to (`nat` a
/// reverse entry): the entry's `other_port` when the flow's port was
/// remapped (`Pass::clash_port`), else the packet's own.
fn source_port(nat: &Nat, port: u16) -> u16 {
    match (nat.other, nat.other_port) {
        (Some(_), p) if p != 0 => p,
        _ => port,
    }
}

/// Whether `addr:port` is still a backend of `f` (active or draining).
pub(super) fn has_backend(f: &ServiceFrontend, addr: IpAddr, port: u16) -> bool {
    f.backends.iter().any(|b| b.ip == addr && b.port == port)
}

/// Whether `addr:port` is an active backend of `f`.
fn active_backend(f: &ServiceFrontend, addr: IpAddr, port: u16) -> bool {
    f.backends
        .iter()
        .any(|b| b.active && b.ip == addr && b.port == port)
}

/// The 5-tuple hash Maglev picks with.
pub(super) fn tuple_hash(pkt: &Parsed) -> u64 {
    let (s, _) = crate::conntrack::addr_bytes(pkt.key.src);
    let (d, _) = crate::conntrack::addr_bytes(pkt.key.dst);
    let last =
        u64::from(pkt.key.sport) | u64::from(pkt.key.dport) << 16 | u64::from(pkt.key.proto) << 32;
    crate::conntrack::hash_addrs(PICK_SEED, &s, &d, last)
}

fn addr_words(a: IpAddr) -> ([u8; 16], usize) {
    match a {
        IpAddr::V4(a) => {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&a.octets());
            (b, 4)
        }
        IpAddr::V6(a) => (a.octets(), 16),
    }
}

/// What a Service flow's forward translation (destination → backend
/// address and port, source → the hairpin address) adds to the IPv4 header
/// checksum and to the L4 checksum, as one's-complement sums (RFC 1624:
/// the sum of the new words and of the complements of the old ones).
/// Fixed per flow, so the fast path (`service_cache.rs`) computes them
/// once and each packet's rewrite is two additions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct NatDeltas {
    pub(super) ip: u16,
    pub(super) l4: u16,
}

impl NatDeltas {
    /// The sums of translating `key` (as on the wire) with `chosen`.
    pub(super) fn of(key: &crate::flow_key::FlowKey, chosen: &Nat) -> NatDeltas {
        let sum = |a: IpAddr| {
            let (b, n) = addr_words(a);
            checksum::data(&b[..n])
        };
        let mut old = sum(key.dst);
        let mut new = sum(chosen.addr);
        if let Some(h) = chosen.other {
            old = checksum::combine(&[old, sum(key.src)]);
            new = checksum::combine(&[new, sum(h)]);
        }
        let ip = checksum::combine(&[!old, new]);
        NatDeltas {
            ip,
            l4: checksum::combine(&[ip, !key.dport, chosen.port]),
        }
    }
}

/// The forward translation `chosen` of a Service flow's packet with its
/// precomputed checksum sums `d` ([`NatDeltas::of`] of the same key): the
/// same bytes as [`rewrite`] (`rewrite_matches_apply_nat` checks it), with
/// the same UDP rules (a v4 checksum of 0 stays 0, a computed 0 is sent as
/// 0xffff).
fn apply_nat(buf: &mut [u8], pkt: &Parsed, chosen: &Nat, d: NatDeltas) -> Result<(), RewriteError> {
    let ip_at = ethernet::HEADER_LEN;
    let l4 = pkt.l4_offset;
    let csum_at = match pkt.key.proto {
        ip_proto::TCP => l4 + 16,
        ip_proto::UDP => l4 + 6,
        _ => return Err(RewriteError::Unfit),
    };
    if buf.len() < csum_at + 2 || l4 == 0 {
        return Err(RewriteError::Unfit);
    }
    let (src_at, dst_at, addr_end) = match pkt.key.src {
        IpAddr::V4(_) => (ip_at + 12, ip_at + 16, ip_at + 20),
        IpAddr::V6(_) => (ip_at + 8, ip_at + 24, ip_at + 40),
    };
    // Every write below ends at or before `csum_at + 2`.
    if l4 < addr_end {
        return Err(RewriteError::Unfit);
    }
    let put_addr = |buf: &mut [u8], at: usize, a: IpAddr| match a {
        IpAddr::V4(a) if pkt.key.src.is_ipv4() => {
            buf[at..at + 4].copy_from_slice(&a.octets());
            Ok(())
        }
        IpAddr::V6(a) if pkt.key.src.is_ipv6() => {
            buf[at..at + 16].copy_from_slice(&a.octets());
            Ok(())
        }
        _ => Err(RewriteError::Unfit),
    };
    put_addr(buf, dst_at, chosen.addr)?;
    if let Some(h) = chosen.other {
        put_addr(buf, src_at, h)?;
    }
    buf[l4 + 2..l4 + 4].copy_from_slice(&chosen.port.to_be_bytes());
    let word = |b: &[u8], at: usize| u16::from_be_bytes([b[at], b[at + 1]]);
    let add = |field: u16, delta: u16| !checksum::combine(&[!field, delta]);
    if pkt.key.src.is_ipv4() {
        let at = ip_at + 10;
        let c = add(word(buf, at), d.ip);
        buf[at..at + 2].copy_from_slice(&c.to_be_bytes());
    }
    let field = word(buf, csum_at);
    if pkt.key.proto == ip_proto::UDP && pkt.key.src.is_ipv4() && field == 0 {
        return Ok(());
    }
    let mut c = add(field, d.l4);
    if pkt.key.proto == ip_proto::UDP && c == 0 {
        c = 0xffff;
    }
    buf[csum_at..csum_at + 2].copy_from_slice(&c.to_be_bytes());
    Ok(())
}

/// Why [`rewrite`] refused a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RewriteError {
    /// the frame is shorter than its headers, not TCP/UDP, or of the other family
    #[error("the frame is shorter than its headers, not TCP/UDP, or of the other family")]
    Unfit,
}

/// Rewrites source and/or destination (address, port) of a TCP or UDP
/// packet in place, updating the IPv4 header checksum and the L4 checksum
/// incrementally (RFC 1624: the sum of the old words out, of the new words
/// in). A UDP/IPv4 checksum of 0 (none) stays 0; a computed 0 is sent as
/// 0xffff (RFC 768). Errors when the frame is shorter than its headers or
/// the families differ.
pub fn rewrite(
    buf: &mut [u8],
    pkt: &Parsed,
    src: Option<(IpAddr, u16)>,
    dst: Option<(IpAddr, u16)>,
) -> Result<(), RewriteError> {
    let v4 = pkt.key.src.is_ipv4();
    let ip_at = ethernet::HEADER_LEN;
    let (src_at, dst_at) = if v4 {
        (ip_at + 12, ip_at + 16)
    } else {
        (ip_at + 8, ip_at + 24)
    };
    let l4 = pkt.l4_offset;
    let csum_at = match pkt.key.proto {
        ip_proto::TCP => l4 + 16,
        ip_proto::UDP => l4 + 6,
        _ => return Err(RewriteError::Unfit),
    };
    if buf.len() < csum_at + 2 || l4 == 0 {
        return Err(RewriteError::Unfit);
    }
    let word = |b: &[u8], at: usize| u16::from_be_bytes([b[at], b[at + 1]]);
    // Sums of what leaves and what comes in, for both checksums.
    let (mut ip_old, mut ip_new) = (0u16, 0u16);
    let (mut l4_old, mut l4_new) = (0u16, 0u16);
    for (change, addr_at, port_at) in [(src, src_at, l4), (dst, dst_at, l4 + 2)] {
        let Some((addr, port)) = change else { continue };
        if addr.is_ipv4() != v4 {
            return Err(RewriteError::Unfit);
        }
        let (bytes, n) = addr_words(addr);
        let old = checksum::data(&buf[addr_at..addr_at + n]);
        let new = checksum::data(&bytes[..n]);
        ip_old = checksum::combine(&[ip_old, old]);
        ip_new = checksum::combine(&[ip_new, new]);
        l4_old = checksum::combine(&[l4_old, old, word(buf, port_at)]);
        l4_new = checksum::combine(&[l4_new, new, port]);
        buf[addr_at..addr_at + n].copy_from_slice(&bytes[..n]);
        buf[port_at..port_at + 2].copy_from_slice(&port.to_be_bytes());
    }
    if v4 {
        let at = ip_at + 10;
        let c = checksum::update(word(buf, at), ip_old, ip_new);
        buf[at..at + 2].copy_from_slice(&c.to_be_bytes());
    }
    let field = word(buf, csum_at);
    if pkt.key.proto == ip_proto::UDP && v4 && field == 0 {
        return Ok(());
    }
    let mut c = checksum::update(field, l4_old, l4_new);
    if pkt.key.proto == ip_proto::UDP && c == 0 {
        c = 0xffff;
    }
    buf[csum_at..csum_at + 2].copy_from_slice(&c.to_be_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;

    const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 2];

    fn frame(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, tcp: bool) -> Vec<u8> {
        let b = PacketBuilder::ethernet2(MAC_A, MAC_B);
        let b = match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => b.ipv4(s.octets(), d.octets(), 64),
            (IpAddr::V6(s), IpAddr::V6(d)) => b.ipv6(s.octets(), d.octets(), 64),
            _ => unreachable!(),
        };
        let payload = b"hello, service";
        let mut out = Vec::new();
        if tcp {
            b.tcp(sport, dport, 0x0102_0304, 1000)
                .syn()
                .write(&mut out, payload)
                .unwrap();
        } else {
            b.udp(sport, dport).write(&mut out, payload).unwrap();
        }
        out
    }

    fn parsed(f: &[u8]) -> Parsed {
        match super::super::parse(f) {
            Continue(p) => p,
            Break(v) => panic!("{v:?}"),
        }
    }

    /// (client, ClusterIP, backend, hairpin source) for IPv4 and IPv6.
    fn nat_cases() -> [(IpAddr, IpAddr, IpAddr, IpAddr); 2] {
        let ip = |a: &str| a.parse::<IpAddr>().unwrap();
        [
            (
                ip("10.244.0.2"),
                ip("10.96.0.10"),
                ip("10.244.1.7"),
                ip("169.254.42.1"),
            ),
            (
                ip("fd00:10:244::2"),
                ip("fd00:96::a"),
                ip("fd00:10:244:1::7"),
                ip("fd00:96::fffe"),
            ),
        ]
    }

    /// DNAT and the reverse NAT give exactly the bytes etherparse builds
    /// from scratch for the rewritten packet (checksums computed anew).
    #[test]
    fn golden_rewrites() {
        for (client, vip, backend, hairpin) in nat_cases() {
            for tcp in [true, false] {
                // DNAT.
                let mut f = frame(client, vip, 40000, 80, tcp);
                let p = parsed(&f);
                rewrite(&mut f, &p, None, Some((backend, 8080))).unwrap();
                assert_eq!(
                    f,
                    frame(client, backend, 40000, 8080, tcp),
                    "dnat {vip} tcp={tcp}"
                );
                // Reverse NAT of the reply.
                let mut f = frame(backend, client, 8080, 40000, tcp);
                let p = parsed(&f);
                rewrite(&mut f, &p, Some((vip, 80)), None).unwrap();
                assert_eq!(
                    f,
                    frame(vip, client, 80, 40000, tcp),
                    "rnat {vip} tcp={tcp}"
                );
                // Hairpin: both ends at once.
                let mut f = frame(client, vip, 40000, 80, tcp);
                let p = parsed(&f);
                rewrite(&mut f, &p, Some((hairpin, 40000)), Some((client, 8080))).unwrap();
                assert_eq!(f, frame(hairpin, client, 40000, 8080, tcp), "hairpin {vip}");
                let mut f = frame(client, hairpin, 8080, 40000, tcp);
                let p = parsed(&f);
                rewrite(&mut f, &p, Some((vip, 80)), Some((client, 40000))).unwrap();
                assert_eq!(f, frame(vip, client, 80, 40000, tcp), "hairpin reply {vip}");
            }
        }
    }

    /// The fast path's rewrite (precomputed sums) gives exactly the bytes
    /// of [`rewrite`]: DNAT and hairpin, v4 and v6, TCP and UDP, and a UDP/v4
    /// packet without checksum.
    #[test]
    fn rewrite_matches_apply_nat() {
        for (client, vip, backend, hairpin) in nat_cases() {
            for tcp in [true, false] {
                for (to, other) in [(backend, None), (client, Some(hairpin))] {
                    for zero_udp in [false, true] {
                        if zero_udp && (tcp || client.is_ipv6()) {
                            continue;
                        }
                        // Ports whose checksums cross 0 / 0xffff somewhere.
                        for (sport, dport, port) in
                            [(40000, 80, 8080), (1, 65535, 0), (65535, 0, 65535)]
                        {
                            let mut f = frame(client, vip, sport, dport, tcp);
                            let p = parsed(&f);
                            if zero_udp {
                                f[p.l4_offset + 6] = 0;
                                f[p.l4_offset + 7] = 0;
                            }
                            let mut g = f.clone();
                            let chosen = Nat {
                                addr: to,
                                port,
                                other,
                                frontend: 0,
                                other_port: 0,
                            };
                            rewrite(&mut f, &p, other.map(|h| (h, sport)), Some((to, port)))
                                .unwrap();
                            apply_nat(&mut g, &p, &chosen, NatDeltas::of(&p.key, &chosen)).unwrap();
                            assert_eq!(
                                f,
                                g,
                                "{client} → {vip}:{dport} → {to}:{port} tcp={tcp} hairpin={}",
                                other.is_some()
                            );
                        }
                    }
                }
            }
        }
        // Unfit frames are refused, not written past their end.
        let c: IpAddr = "10.244.0.2".parse().unwrap();
        let v: IpAddr = "10.96.0.10".parse().unwrap();
        let f = frame(c, v, 1, 80, true);
        let p = parsed(&f);
        let chosen = Nat {
            addr: c,
            port: 1,
            other: None,
            frontend: 0,
            other_port: 0,
        };
        let mut short = f[..40].to_vec();
        assert!(apply_nat(&mut short, &p, &chosen, NatDeltas::of(&p.key, &chosen)).is_err());
        let v6 = Nat {
            addr: "fd00::1".parse().unwrap(),
            ..chosen
        };
        let mut g = f.clone();
        assert!(apply_nat(&mut g, &p, &v6, NatDeltas::of(&p.key, &v6)).is_err());
    }

    #[test]
    fn udp_v4_without_checksum_stays_without() {
        let c: IpAddr = "10.244.0.2".parse().unwrap();
        let v: IpAddr = "10.96.0.10".parse().unwrap();
        let b: IpAddr = "10.244.0.3".parse().unwrap();
        let mut f = frame(c, v, 1, 53, false);
        let p = parsed(&f);
        let at = p.l4_offset + 6;
        f[at] = 0;
        f[at + 1] = 0;
        rewrite(&mut f, &p, None, Some((b, 5353))).unwrap();
        assert_eq!(&f[at..at + 2], &[0, 0]);
        // The IPv4 header checksum is still right.
        assert_eq!(checksum::data(&f[14..34]), 0xffff);
    }

    #[test]
    fn family_mismatch_and_short_frames_refused() {
        let c: IpAddr = "10.244.0.2".parse().unwrap();
        let v: IpAddr = "10.96.0.10".parse().unwrap();
        let mut f = frame(c, v, 1, 80, true);
        let p = parsed(&f);
        assert!(rewrite(&mut f, &p, None, Some(("fd00::1".parse().unwrap(), 1))).is_err());
        let mut short = f[..40].to_vec();
        assert!(rewrite(&mut short, &p, None, Some((c, 1))).is_err());
    }
}
