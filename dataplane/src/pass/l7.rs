//! Stage 8: inline HTTP inspection (docs/l7.md).

use core::ops::ControlFlow::{self, Break, Continue};

use super::parse::{Fragment, Parsed};
use super::policy::{judge, local_endpoint, HttpNeed};
use super::route::Route;
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

/// After a split pipelined deny, how long the connection waits for the
/// client to acknowledge the server's answer before it is reset anyway.
const SPLIT_WAIT_NS: u64 = 2_000_000_000;

/// What the HTTP stage asks of the final verdict.
#[derive(Debug, Clone, Copy)]
pub(super) enum L7Out {
    Pass,
    Hold(u32),
    Release(u32),
    /// Forward the frame cut to this many bytes (the stage already cut it:
    /// lengths, FIN and checksums).
    Trim(usize),
}

impl L7Out {
    /// The rewrite's verdict, held or releasing the slot's held frames.
    pub(super) fn apply(self, v: Verdict) -> Verdict {
        match (self, v) {
            (L7Out::Hold(slot), Verdict::Tx { port, len }) => Verdict::Hold { port, len, slot },
            (L7Out::Release(slot), Verdict::Tx { port, len }) => {
                Verdict::Release { port, len, slot }
            }
            (L7Out::Trim(n), Verdict::Tx { port, len }) => Verdict::Tx {
                port,
                len: n.min(len),
            },
            (_, v) => v,
        }
    }
}

/// Sets the byte at `at` of a TCP segment whose header is at `l4` and
/// updates its checksum incrementally (RFC 1624, over the 16-bit word that
/// holds the byte, aligned from the TCP header).
fn patch_tcp_byte(buf: &mut [u8], l4: usize, at: usize, byte: u8) {
    let w = l4 + ((at - l4) & !1);
    let (Some(&[a, b]), Some(&[c0, c1])) = (
        buf.get(w..w + 2).and_then(|s| <&[u8; 2]>::try_from(s).ok()),
        buf.get(l4 + 16..l4 + 18)
            .and_then(|s| <&[u8; 2]>::try_from(s).ok()),
    ) else {
        return;
    };
    let old = u16::from_be_bytes([a, b]);
    let mut new = [a, b];
    new[at - w] = byte;
    let new = u16::from_be_bytes(new);
    let sum = crate::wire::checksum::update(u16::from_be_bytes([c0, c1]), old, new);
    buf[at] = byte;
    buf[l4 + 16..l4 + 18].copy_from_slice(&sum.to_be_bytes());
}

/// A flow event for a flow inline L7 denied (the callers fill in what they know).
/// Where a flow record of the L7 stage happened: the generation the pass ran
/// under, the local source endpoint and the routed destination endpoint.
fn place(
    ev: &mut FlowEvent,
    snap: &crate::snapshot::Snapshot,
    key: &FlowKey,
    route: &Route,
    generation: u64,
) {
    ev.generation = generation;
    ev.src_endpoint = local_endpoint(snap, key.src);
    ev.dst_endpoint = (route.endpoint != u32::MAX).then_some(route.endpoint);
}

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
                    l7s.h2.release(slot);
                    l7s.pool.restart(SlotId(slot), seq.wrapping_add(1));
                    if let Some(p) = l7s.pending.get_mut(slot as usize) {
                        *p = None;
                    }
                }
                slot
            }
            None if syn => {
                let Some(slot) = l7s.open_slot(pkt.key, seq) else {
                    // At the limit: the flow is refused (the client's SYN
                    // retransmissions try again).
                    l7s.no_slot += 1;
                    let mut ev = l7_event(now, &pkt.key, crate::l7::L7Reason::Policy, None);
                    ev.reason = Some(DropReason::L7NoSlot);
                    ev.l7 = None;
                    place(&mut ev, snap, &pkt.key, route, generation);
                    st.flows.push(ev);
                    return drop(DropReason::L7NoSlot);
                };
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
        // The last request head this segment completed that the rules allowed
        // (for the flow log; pipelined heads in one segment: the last one).
        let mut allowed = None;
        let id = SlotId(slot);
        let tls = rules.tls();
        let was_denied = l7s.pool.get(id).and_then(|i| i.denied()).is_some();
        // HTTP/2 with prior knowledge (docs/l7.md, "HTTP/2"): a flow whose
        // first client bytes are the h2c preface gets an HTTP/2 inspector.
        let h2 = match l7s.h2.of(slot) {
            Some(i) => Some(i),
            None if !rst
                && tls.is_none()
                && payload.starts_with(b"PRI ")
                && l7s.pool.get(id).is_some_and(|s| {
                    s.requests() == 0 && !s.head_open() && s.next_seq() == seq
                }) =>
            {
                match l7s.h2.acquire(slot, seq) {
                    Some(i) => Some(i),
                    None => {
                        l7s.busy += 1;
                        return drop(DropReason::L7Busy);
                    }
                }
            }
            None => None,
        };
        if let Some(i) = h2 {
            if rst {
                l7s.free(slot);
                return Continue(L7Out::Pass);
            }
            let Some(h) = l7s.h2.pool.get_mut(i as usize) else {
                return drop(DropReason::L7NoSlot);
            };
            let before = h.next_seq();
            let feed = h.feed_segment(seq, payload, fin, |head| {
                if rules.judge(head).is_some() {
                    L7Verdict::Allow
                } else {
                    note.get_or_insert(
                        L7Note::new(crate::l7::L7Reason::Policy)
                            .with_request(head.method(), head.path()),
                    );
                    L7Verdict::Deny
                }
            });
            let (finished, last) = (h.finished(), h.last_request());
            return match feed {
                Feed::Forward => {
                    // Streams refused in place: their `:method` byte, in
                    // this copy of the bytes and in any retransmission,
                    // becomes a `:status` (docs/l7.md, "A denied stream is
                    // refused"); the connection goes on.
                    let plen = pkt.frame_len().saturating_sub(pay_at);
                    for (off, byte) in h.rewrites_in(seq, plen) {
                        patch_tcp_byte(buf, pkt.l4_offset, pay_at + off, byte);
                    }
                    let (refused, _) = h.refused();
                    if refused > 0 {
                        l7s.denied += refused as u64;
                        l7s.h2_refused += refused as u64;
                        let mut ev = l7_event(now, &pkt.key, L7Reason::Policy, note);
                        ev.kind = FlowKind::L7;
                        if let Some((_, _, adm)) = st.ct.peek(&pkt.key, now) {
                            ev.egress_rule = adm.egress_rule;
                            ev.ingress_rule = adm.ingress_rule;
                        }
                        place(&mut ev, snap, &pkt.key, route, generation);
                        st.flows.push(ev);
                    }
                    if finished {
                        st.l7.free(slot);
                    }
                    Continue(L7Out::Pass)
                }
                Feed::Deny(r) => {
                    // An HTTP/2 server speaks first (SETTINGS) and may have
                    // sent bytes the client has not acknowledged yet: the
                    // answer goes after the last server byte forwarded, and
                    // no server byte past it is forwarded any more (the
                    // entry is closed in the same atomic step).
                    let otherwise = if flags & tcp::flags::ACK != 0 { ack } else { 0 };
                    let server_next = st.ct.server_ends().close(&pkt.key, otherwise);
                    // The reply acknowledges the whole segment; the server
                    // was sent everything before it.
                    let end = seq.wrapping_add(payload.len() as u32);
                    let client_next = if (end.wrapping_sub(before) as i32) > 0 {
                        end
                    } else {
                        before
                    };
                    let seqs = (client_next, before, server_next);
                    Break(self.http_deny(
                        pkt,
                        route,
                        reply_port,
                        slot,
                        r,
                        note,
                        seqs,
                        (false, false),
                        Some(last),
                    ))
                }
                _ => drop(DropReason::L7OutOfOrder),
            };
        }
        let feed = if rst {
            // The client reset the connection: nothing more can come on it.
            match l7s.pool.abort(id) {
                Some(r) => Feed::Deny(r),
                None => {
                    l7s.free(slot);
                    return Continue(L7Out::Pass);
                }
            }
        } else if let Some(tls) = tls {
            // TLS server-name rules: judged on the ClientHello (docs/l7.md,
            // "TLS server names"); nothing is held.
            l7s.pool.feed_tls_segment(id, seq, payload, fin, |sni| {
                if tls.judge(sni).is_some() {
                    L7Verdict::Allow
                } else {
                    note = Some(L7Note::new(L7Reason::TlsSniDenied).with_request("TLS", sni));
                    L7Verdict::Deny
                }
            })
        } else {
            let may_hold = l7s.held_total < l7s.held_max;
            l7s.pool
                .feed_segment(id, seq, payload, fin, now, may_hold, |head| {
                    if rules.judge(head).is_some() {
                        allowed = Some(L7Note::http_request(
                            head.method(),
                            head.path(),
                            head.host(),
                        ));
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
        if let Some(n) = allowed {
            // The allowed request, in the flow log (sampled), and remembered
            // for the status of its response.
            let mut ev = l7_event(now, &pkt.key, L7Reason::Policy, Some(n));
            ev.kind = FlowKind::L7;
            ev.allowed = true;
            ev.reason = None;
            if let Some((_, _, adm)) = st.ct.peek(&pkt.key, now) {
                ev.egress_rule = adm.egress_rule;
                ev.ingress_rule = adm.ingress_rule;
            }
            place(&mut ev, snap, &pkt.key, route, generation);
            st.flows.push_sampled(ev);
            if let Some(p) = l7s.pending.get_mut(slot as usize) {
                *p = Some(n);
            }
        }
        let Some(insp) = l7s.pool.get(id) else {
            return drop(DropReason::L7NoSlot);
        };
        let (client_next, server_expects) = (insp.next_seq(), insp.released_seq());
        // The client's FIN was accepted: no request can follow, the slot goes
        // back now (its later segments pass without one, see above).
        let finished = insp.finished();
        let split = insp.deny_split();
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
                let keep = server_expects.wrapping_sub(seq) as i32;
                let plen = pkt.frame_len().saturating_sub(pay_at);
                if split && !was_denied && keep > 0 && (keep as usize) < plen {
                    // Pipelined: the allowed requests' bytes before the
                    // denied head go on (this frame cut before it); the
                    // connection ends at the client's next segment.
                    let mut ev = l7_event(now, &pkt.key, r, note);
                    place(&mut ev, snap, &pkt.key, route, generation);
                    st.flows.push(ev);
                    if let Some(m) = l7s.meta.get_mut(slot as usize) {
                        m.split = Some((ack, now));
                    }
                    let n = pay_at + keep as usize;
                    return match cut_tcp_frame(buf, pkt, n) {
                        Some(()) => Continue(L7Out::Trim(n)),
                        None => drop(DropReason::L7Denied),
                    };
                }
                if split && was_denied && !rst {
                    // After a split: the connection ends once the client
                    // acknowledges something of the server's answer (its
                    // ACK moved), or after the hold time; its earlier
                    // segments (a tail-loss probe, a retransmission of the
                    // denied bytes) are dropped, so the RST does not
                    // overtake the answer to the allowed requests.
                    let meta = l7s.meta.get(slot as usize).and_then(|m| m.split);
                    if let Some((ack0, t0)) = meta {
                        let moved =
                            flags & tcp::flags::ACK != 0 && (ack.wrapping_sub(ack0) as i32) > 0;
                        if !moved && now.saturating_sub(t0) < SPLIT_WAIT_NS {
                            return drop(DropReason::L7Denied);
                        }
                    }
                }
                let server_next = if flags & tcp::flags::ACK != 0 { ack } else { 0 };
                let seqs = (client_next, server_expects, server_next);
                let reset_client = tls.is_some() || split;
                Break(self.http_deny(
                    pkt,
                    route,
                    reply_port,
                    slot,
                    r,
                    note,
                    seqs,
                    (reset_client, split),
                    None,
                ))
            }
        }
    }

    /// A server→client TCP segment of a flow under HTTP rules: when this
    /// worker inspects the flow and an allowed request waits for its
    /// response, a segment whose payload starts with a status line
    /// (`HTTP/1.x NNN`, only its first 12 bytes are read) logs the request
    /// again with that status (kind `l7`, sampled). Never changes the verdict.
    pub(super) fn http_response(&mut self, pkt: &Parsed) {
        let (buf, snap, st) = (&*self.buf, self.snap, &mut *self.st);
        let l7s = &mut st.l7;
        if l7s.pool.in_use() == 0 || pkt.fragment != Fragment::Whole {
            return;
        }
        let orig = FlowKey {
            src: pkt.key.dst,
            dst: pkt.key.src,
            proto: pkt.key.proto,
            sport: pkt.key.dport,
            dport: pkt.key.sport,
        };
        let Some(&slot) = l7s.by_key.get(&orig) else {
            return;
        };
        let Some(pending) = l7s.pending.get_mut(slot as usize) else {
            return;
        };
        if pending.is_none() {
            return;
        }
        let bytes = buf.get(pkt.l4_offset..pkt.frame_len()).unwrap_or_default();
        let Ok(t) = tcp::Packet::new_checked(bytes) else {
            return;
        };
        let Some(status) = bytes.get(t.header_len()..).and_then(status_code) else {
            return;
        };
        let Some(mut n) = pending.take() else {
            return;
        };
        n.status = status;
        let now = st.now_ns;
        let mut ev = l7_event(now, &pkt.key, L7Reason::Policy, Some(n));
        ev.kind = FlowKind::L7;
        ev.allowed = true;
        ev.reason = None;
        if let Some((_, _, adm)) = st.ct.peek(&pkt.key, now) {
            ev.egress_rule = adm.egress_rule;
            ev.ingress_rule = adm.ingress_rule;
        }
        ev.generation = snap.policy().generation();
        ev.src_endpoint = local_endpoint(snap, pkt.key.src);
        ev.dst_endpoint = local_endpoint(snap, pkt.key.dst);
        st.flows.push_sampled(ev);
    }

    /// A server→client TCP segment of a flow under HTTP rules: for an
    /// HTTP/2 connection, remember where the server's byte stream ends
    /// (weir's answer to a denied stream goes after it, docs/l7.md), in a
    /// table shared by the workers: this direction may be carried by
    /// another worker than the one judging the requests. One hash and one
    /// atomic store per server→client segment of a flow under HTTP rules.
    /// `false`: weir has answered a denied request on this flow and the
    /// segment reaches past that answer: it must be dropped (its bytes
    /// would overlap the answer at the client).
    pub(super) fn h2_server_segment(&mut self, pkt: &Parsed) -> bool {
        let orig = FlowKey {
            src: pkt.key.dst,
            dst: pkt.key.src,
            proto: pkt.key.proto,
            sport: pkt.key.dport,
            dport: pkt.key.sport,
        };
        let bytes = self
            .buf
            .get(pkt.l4_offset..pkt.frame_len())
            .unwrap_or_default();
        let Ok(t) = tcp::Packet::new_checked(bytes) else {
            return true;
        };
        let len = bytes.len() - t.header_len();
        let f = t.flags();
        let ctl = u32::from(f & (tcp::flags::SYN | tcp::flags::FIN) != 0);
        let end = t.seq_number().wrapping_add(len as u32).wrapping_add(ctl);
        let syn = f & tcp::flags::SYN != 0;
        self.st.ct.server_ends().note(&orig, end, syn)
    }

    /// A denied request (or a flow that cannot go on): the worker drops the
    /// held frames of `slot` with this verdict; the slot goes back now, and
    /// conntrack learns of the RST weir sends to the server (the flow's
    /// later data drops as `l7-after-close`; a new SYN on the tuple gets a
    /// fresh slot). The frame's buffer gets the 403 for the client: out of
    /// its pod port, or — for a client behind a peer node — encapsulated
    /// toward that peer (inner MACs: our VTEP → the peer's VTEP).
    /// `seqs`: the client's next sequence number, the first client byte the
    /// server was not sent, the server's next sequence number. `tls`: the
    /// client gets a RST instead of the 403 (TLS server-name rules: it
    /// speaks TLS, a plain-text 403 would only be a decode error; or a split
    /// pipelined deny, `split`: the server's answer to the allowed requests
    /// may still be on its way, a 403 would land inside it; its flow event
    /// was logged when the deny was decided).
    /// `h2`: the denied HTTP/2 request (the reply is HTTP/2 frames, not
    /// the 403).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn http_deny(
        &mut self,
        pkt: &Parsed,
        route: &Route,
        reply_port: Option<PortId>,
        slot: u32,
        r: L7Reason,
        note: Option<L7Note>,
        (client_next, server_expects, server_next): (u32, u32, u32),
        (tls, split): (bool, bool),
        h2: Option<crate::l7::h2::LastRequest>,
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
        place(&mut ev, snap, &pkt.key, route, generation);
        if !split {
            st.flows.push(ev);
        }
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
            let built = if tls {
                // RST client ← server: seq = what the client expects next
                // from the server, ack = every client byte.
                let reset = DeniedFlow {
                    client: to_client.server,
                    server: to_client.client,
                    client_next_seq: 0,
                    server_expects_seq: server_next,
                    server_next_seq: client_next,
                };
                crate::l7::reply::build_rst_frame(buf, &reset)
            } else {
                match h2 {
                    Some(req) => {
                        crate::l7::reply::build_h2_deny_frame(buf, &to_client, req, r.as_str())
                    }
                    None => crate::l7::reply::build_403_frame(buf, &to_client, r.as_str()),
                }
            };
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
            reason: r.drop_reason(),
        }
    }
}

/// Cuts the TCP segment in `buf` to a frame of `n` bytes (its payload's
/// start kept): IP length, FIN cleared (it followed the cut bytes), IP and
/// TCP checksums recomputed. `None` if the frame is not what `pkt` says.
fn cut_tcp_frame(buf: &mut [u8], pkt: &Parsed, n: usize) -> Option<()> {
    use crate::wire::{ipv4, ipv6};
    use std::net::IpAddr;
    let ip_at = crate::wire::ethernet::HEADER_LEN;
    let ip_len = n.checked_sub(ip_at)?;
    if n >= pkt.frame_len() {
        return None;
    }
    match pkt.key.src {
        IpAddr::V4(_) => {
            let mut ip = ipv4::Packet::new_checked(buf.get_mut(ip_at..pkt.frame_len())?).ok()?;
            ip.set_total_len(u16::try_from(ip_len).ok()?);
            ip.fill_checksum();
        }
        IpAddr::V6(_) => {
            let mut ip = ipv6::Packet::new_checked(buf.get_mut(ip_at..pkt.frame_len())?).ok()?;
            let pl = ip_len.checked_sub(ipv6::HEADER_LEN)?;
            ip.set_payload_len(u16::try_from(pl).ok()?);
        }
    }
    let mut t = tcp::Packet::new_checked(buf.get_mut(pkt.l4_offset..n)?).ok()?;
    let f = t.flags();
    t.set_flags(f & !tcp::flags::FIN);
    t.fill_checksum(pkt.key.src, pkt.key.dst);
    Some(())
}

/// The status code of an HTTP/1.x status line at the start of `payload`
/// (`HTTP/1.0 200` or `HTTP/1.1 404 ...`: exactly the first 12 bytes are
/// read), or `None`.
pub(crate) fn status_code(payload: &[u8]) -> Option<u16> {
    let line = payload.get(..12)?;
    if !line.starts_with(b"HTTP/1.") || !matches!(line[7], b'0' | b'1') || line[8] != b' ' {
        return None;
    }
    let mut code = 0u16;
    for &d in &line[9..12] {
        if !d.is_ascii_digit() {
            return None;
        }
        code = code * 10 + u16::from(d - b'0');
    }
    (100..=599).contains(&code).then_some(code)
}

#[cfg(test)]
mod tests {
    use super::status_code;

    #[test]
    fn status_lines() {
        assert_eq!(status_code(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(status_code(b"HTTP/1.0 404"), Some(404));
        for bad in [
            &b"HTTP/1.1 20"[..],
            b"HTTP/2.0 200 OK",
            b"HTTP/1.1 2x0 OK",
            b"HTTP/1.1 099 OK",
            b"HTTP/1.1  200 OK",
            b"GET / HTTP/1.1\r\n",
            b"",
        ] {
            assert_eq!(status_code(bad), None, "{bad:?}");
        }
    }
}
