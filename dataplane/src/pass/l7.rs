//! Stage 8: inline HTTP inspection (docs/l7.md).

use core::ops::ControlFlow::{self, Break, Continue};

use super::parse::{Fragment, Parsed};
use super::policy::{judge, local_endpoint, HttpNeed};
use super::route::Route;
use super::state::SlotMeta;
use super::{drop, or_drop, FlowKey, Pass};
use crate::conntrack::{self, Seg};
use crate::encap;
use crate::flows::{FlowEvent, FlowKind, L7Note};
use crate::l7::reply::{DeniedFlow, TcpEnd};
use crate::l7::{Feed, L7Reason, L7Verdict, SlotId};
use crate::snapshot::PortId;
use crate::wire::ethernet::Frame;
use crate::wire::tcp;
use crate::{DropReason, Verdict};

/// What the HTTP stage asks of the final verdict.
#[derive(Debug, Clone, Copy)]
pub(super) enum L7Out {
    Pass,
    Hold(u32),
    Release(u32),
}

impl L7Out {
    /// The rewrite's verdict, held or releasing the slot's held frames.
    pub(super) fn apply(self, v: Verdict) -> Verdict {
        match (self, v) {
            (L7Out::Hold(slot), Verdict::Tx { port, len }) => Verdict::Hold { port, len, slot },
            (L7Out::Release(slot), Verdict::Tx { port, len }) => {
                Verdict::Release { port, len, slot }
            }
            (_, v) => v,
        }
    }
}

/// A flow event for a flow inline L7 denied (the callers fill in what they know).
pub(super) fn l7_event(
    now: u64,
    key: &FlowKey,
    r: crate::l7::L7Reason,
    note: Option<L7Note>,
) -> FlowEvent {
    FlowEvent {
        time_ns: now,
        key: *key,
        kind: FlowKind::Drop,
        allowed: false,
        reason: Some(r.drop_reason()),
        egress_rule: crate::policy::RuleId::NOT_APPLICABLE,
        ingress_rule: crate::policy::RuleId::NOT_APPLICABLE,
        audit: false,
        pickup: false,
        generation: 0,
        src_endpoint: None,
        dst_endpoint: None,
        l7: Some(note.unwrap_or(L7Note::new(r))),
    }
}

impl Pass<'_> {
    /// Stage 8: inline HTTP inspection of the client→server stream (see
    /// docs/l7.md for the hold/release contract). `reply_port` is where a 403
    /// for the client goes (the ingress port; `None`: the client is behind the
    /// tunnel, the 403 goes back encapsulated).
    pub(super) fn http(
        &mut self,
        pkt: &Parsed,
        need: HttpNeed,
        route: &Route,
        reply_port: Option<PortId>,
    ) -> ControlFlow<Verdict, L7Out> {
        let (buf, snap, st) = (&mut *self.buf, self.snap, &mut *self.st);
        if pkt.fragment != Fragment::Whole {
            // Fragmented TCP under HTTP rules: not reassembled, refused.
            return drop(DropReason::L7OutOfOrder);
        }
        let (seq, ack, flags, pay_at) = {
            let bytes = buf.get(pkt.l4_offset..pkt.frame_len()).unwrap_or_default();
            // new_checked guarantees 20 ≤ header length ≤ bytes.
            let t = or_drop(tcp::Packet::new_checked(bytes), DropReason::L4Truncated)?;
            let hl = t.header_len();
            (
                t.seq_number(),
                t.ack_number(),
                t.flags(),
                pkt.l4_offset + hl,
            )
        };
        let pol = snap.policy();
        let generation = pol.generation();
        let now = st.now_ns;
        let syn = flags & tcp::flags::SYN != 0 && flags & tcp::flags::ACK == 0;
        let rst = flags & tcp::flags::RST != 0;
        let fin = flags & tcp::flags::FIN != 0;
        let l7s = &mut st.l7;
        let slot = match l7s.by_key.get(&pkt.key) {
            Some(&slot) => {
                if syn {
                    // Conntrack accepted a client SYN: a (re)opening connection
                    // (SYN-SENT retransmit or a reused tuple). Start over.
                    l7s.push_flush(slot);
                    l7s.pool.restart(SlotId(slot), seq.wrapping_add(1));
                }
                slot
            }
            None if syn => {
                let Some(SlotId(slot)) = l7s.pool.acquire() else {
                    // At the limit: the flow is refused (the client's SYN
                    // retransmissions try again).
                    l7s.no_slot += 1;
                    let mut ev = l7_event(now, &pkt.key, crate::l7::L7Reason::Policy, None);
                    ev.reason = Some(DropReason::L7NoSlot);
                    ev.l7 = None;
                    ev.generation = generation;
                    ev.src_endpoint = local_endpoint(snap, pkt.key.src);
                    ev.dst_endpoint = (route.endpoint != u32::MAX).then_some(route.endpoint);
                    st.flows.push(ev);
                    return drop(DropReason::L7NoSlot);
                };
                if let Some(i) = l7s.pool.get(SlotId(slot)) {
                    i.start(seq.wrapping_add(1));
                }
                l7s.by_key.insert(pkt.key, slot);
                if let Some(m) = l7s.meta.get_mut(slot as usize) {
                    *m = SlotMeta {
                        key: Some(pkt.key),
                        set: 0,
                        generation: u64::MAX,
                        held: 0,
                    };
                }
                slot
            }
            None => {
                // No inspector: a closed flow's last segments (its slot was
                // given back at the client's FIN or RST, or at a deny), or a
                // flow this worker never saw open (pickup, refused at the
                // limit). Nothing without payload can make a server act on a
                // request whose head it does not have complete: those of a
                // closed flow pass; data never passes unjudged.
                let closed = matches!(
                    st.ct.peek(&pkt.key, now),
                    Some((
                        _,
                        conntrack::State::FinWait
                            | conntrack::State::LastAck
                            | conntrack::State::TimeWait
                            | conntrack::State::Close,
                        _
                    ))
                );
                let empty = pay_at >= pkt.frame_len();
                return match (closed, empty) {
                    (true, true) => Continue(L7Out::Pass),
                    (true, false) => drop(DropReason::L7AfterClose),
                    (false, _) => {
                        l7s.no_slot += 1;
                        drop(DropReason::L7NoSlot)
                    }
                };
            }
        };
        // The flow's rule set under the current policy generation.
        let Some(meta) = l7s.meta.get(slot as usize).copied() else {
            return drop(DropReason::L7NoSlot);
        };
        let set = match need.set {
            Some(set) => set,
            None if meta.generation == generation => meta.set,
            None => {
                let (j, _, _) = judge(snap, &pkt.key, need.wire_id, &st.fqdn, now);
                match j.ingress.l7 {
                    Some(set) if j.allowed => set,
                    _ => {
                        // No longer under HTTP rules (or no longer allowed,
                        // which conntrack handles): forget the inspector.
                        l7s.free(slot);
                        return Continue(L7Out::Pass);
                    }
                }
            }
        };
        if let Some(m) = l7s.meta.get_mut(slot as usize) {
            m.set = set;
            m.generation = generation;
        }
        let Some(rules) = pol.http_set(set) else {
            return drop(DropReason::L7NoSlot);
        };
        let payload = buf.get(pay_at..pkt.frame_len()).unwrap_or_default();
        let mut note = None;
        let id = SlotId(slot);
        let feed = if rst {
            // The client reset the connection: nothing more can come on it.
            match l7s.pool.abort(id) {
                Some(r) => Feed::Deny(r),
                None => {
                    l7s.free(slot);
                    return Continue(L7Out::Pass);
                }
            }
        } else {
            let may_hold = l7s.held_total < l7s.held_max;
            l7s.pool
                .feed_segment(id, seq, payload, fin, now, may_hold, |head| {
                    if rules.judge(head).is_some() {
                        L7Verdict::Allow
                    } else {
                        note.get_or_insert(
                            L7Note::new(crate::l7::L7Reason::Policy)
                                .with_request(head.method(), head.path()),
                        );
                        L7Verdict::Deny
                    }
                })
        };
        let Some(insp) = l7s.pool.get(id) else {
            return drop(DropReason::L7NoSlot);
        };
        let (client_next, server_expects) = (insp.next_seq(), insp.released_seq());
        // The client's FIN was accepted: no request can follow, the slot goes
        // back now (its later segments pass without one, see above).
        let finished = insp.finished();
        let held = l7s.meta.get(slot as usize).map_or(0, |m| m.held);
        match feed {
            Feed::Forward => {
                if finished {
                    l7s.free(slot);
                }
                Continue(L7Out::Pass)
            }
            Feed::Hold => {
                l7s.set_held(slot, held + 1);
                Continue(L7Out::Hold(slot))
            }
            Feed::Release => {
                l7s.set_held(slot, 0);
                if finished {
                    l7s.free(slot);
                }
                if held > 0 {
                    Continue(L7Out::Release(slot))
                } else {
                    Continue(L7Out::Pass)
                }
            }
            Feed::Drop => drop(DropReason::L7OutOfOrder),
            Feed::Busy => {
                l7s.busy += 1;
                drop(DropReason::L7Busy)
            }
            Feed::Deny(r) => {
                let server_next = if flags & tcp::flags::ACK != 0 { ack } else { 0 };
                let seqs = (client_next, server_expects, server_next);
                Break(self.http_deny(pkt, route, reply_port, slot, r, note, seqs))
            }
        }
    }

    /// A denied request (or a flow that cannot go on): the worker drops the
    /// held frames of `slot` with this verdict; the slot goes back now, and
    /// conntrack learns of the RST weir sends to the server (the flow's
    /// later data drops as `l7-after-close`; a new SYN on the tuple gets a
    /// fresh slot). The frame's buffer gets the 403 for the client: out of
    /// its pod port, or — for a client behind a peer node — encapsulated
    /// toward that peer (inner MACs: our VTEP → the peer's VTEP).
    /// `seqs`: the client's next sequence number, the first client byte the
    /// server was not sent, the server's next sequence number.
    #[allow(clippy::too_many_arguments)]
    fn http_deny(
        &mut self,
        pkt: &Parsed,
        route: &Route,
        reply_port: Option<PortId>,
        slot: u32,
        r: L7Reason,
        note: Option<L7Note>,
        (client_next, server_expects, server_next): (u32, u32, u32),
    ) -> Verdict {
        let (buf, snap, st) = (&mut *self.buf, self.snap, &mut *self.st);
        let generation = snap.policy().generation();
        let now = st.now_ns;
        let l7s = &mut st.l7;
        l7s.set_held(slot, 0);
        l7s.free(slot);
        l7s.denied += 1;
        st.ct.track(
            &pkt.key,
            Seg::Tcp(tcp::flags::RST | tcp::flags::ACK),
            generation,
            now,
        );
        let mut ev = l7_event(now, &pkt.key, r, note);
        if let Some((_, _, adm)) = st.ct.peek(&pkt.key, now) {
            ev.egress_rule = adm.egress_rule;
            ev.ingress_rule = adm.ingress_rule;
        }
        ev.generation = generation;
        ev.src_endpoint = local_endpoint(snap, pkt.key.src);
        ev.dst_endpoint = (route.endpoint != u32::MAX).then_some(route.endpoint);
        st.flows.push(ev);
        let client_mac = Frame::new_checked(&buf[..])
            .map(|f| f.src_addr())
            .unwrap_or_default();
        let client = TcpEnd {
            mac: route.src_mac,
            ip: pkt.key.src,
            port: pkt.key.sport,
        };
        let server = TcpEnd {
            mac: route.dst_mac,
            ip: pkt.key.dst,
            port: pkt.key.dport,
        };
        let rst = DeniedFlow {
            client,
            server,
            client_next_seq: client_next,
            server_expects_seq: server_expects,
            server_next_seq: server_next,
        };
        let mut reply_len = 0;
        let mut out_port = route.port;
        let tunnel = snap.tunnel();
        let reply_to = match reply_port.and_then(|p| snap.port(p).map(|pp| (p, pp.mac))) {
            Some((p, mac)) => Some((p, client_mac, mac, None)),
            None => tunnel.and_then(|(t, tables)| {
                let pi = tables.peer_for(pkt.key.src)?;
                let peer = t.peers.get(pi as usize)?;
                Some((tables.port, peer.vtep_mac, t.vtep_mac, Some(peer)))
            }),
        };
        if let Some((port, cmac, smac, peer)) = reply_to {
            let to_client = DeniedFlow {
                client: TcpEnd {
                    mac: cmac,
                    ..client
                },
                server: TcpEnd {
                    mac: smac,
                    ..server
                },
                ..rst
            };
            let built = crate::l7::reply::build_403_frame(buf, &to_client, r.as_str());
            let built = match (built, peer, tunnel) {
                (Some(n), None, _) => Some(n),
                (Some(n), Some(peer), Some((t, _))) => {
                    let identity = snap.policy().identity_if_known(pkt.key.dst);
                    let sport = encap::flow_sport(&pkt.key);
                    encap::encapsulate(buf, n, t, peer, identity, sport)
                        .and_then(|n| super::tunnel::wg_seal(buf, st, n, t, peer, sport).ok())
                }
                _ => None,
            };
            if let Some(n) = built {
                reply_len = n;
                out_port = port;
            }
        }
        Verdict::L7Deny {
            slot,
            reply_port: out_port,
            reply_len,
            rst_port: route.port,
            rst,
        }
    }
}
