//! Stage 8b: the server-name cross-check of FQDN egress (docs/l7.md,
//! "FQDN egress and the server name"; Cilium issue 31803).
//!
//! A TCP flow admitted by a `toFQDNs` rule reaches an address because an
//! allowed name resolved to it; other names may be served on that address
//! (a CDN, a shared load balancer). When the client's first flight is a TLS
//! ClientHello (always on port 443, where anything else is refused; on
//! other ports when its first byte is a TLS handshake record), its server
//! name must be one the endpoint's `toFQDNs` rules select AND that was
//! learned for this very address ([`CompiledPolicy::fqdn_name_allowed`]);
//! else both ends get a RST. The hello is reassembled and parsed by the
//! same machinery as TLS server-name rules (`feed_tls_segment`, the flow's
//! L7 slot; nothing held, nothing allocated).
//!
//! The slot is needed only until the first flight is judged: once a hello
//! is allowed (or the first byte on a port other than 443 is not TLS), the
//! conntrack entry is marked ([`Conntrack::set_hello_done`]) and the slot
//! goes back, so later segments skip this stage (stage 5 no longer asks for
//! it) and a worker's slots bound the hellos in flight, not the FQDN flows
//! open. A denied flow is reset and closed in conntrack: its later data is
//! refused (`l7-after-close`) without a slot.
//!
//! [`Conntrack::set_hello_done`]: crate::conntrack::Conntrack::set_hello_done
//!
//! [`CompiledPolicy::fqdn_name_allowed`]: crate::policy::CompiledPolicy::fqdn_name_allowed

use core::ops::ControlFlow::{self, Break, Continue};

use super::l7::l7_event;
use super::parse::{Fragment, Parsed};
use super::policy::{local_endpoint, SniNeed};
use super::route::Route;
use super::{drop, or_drop, Pass};
use crate::conntrack::{self, Seg};
use crate::flows::L7Note;
use crate::l7::reply::{build_rst_frame, DeniedFlow, TcpEnd};
use crate::l7::{Feed, L7Reason, L7Verdict, SlotId};
use crate::snapshot::PortId;
use crate::wire::ethernet::Frame;
use crate::wire::tcp;
use crate::{DropReason, Verdict};

/// The TLS port: there the first flight must be a ClientHello.
pub const TLS_PORT: u16 = 443;

/// Where the flow's server is.
#[derive(Clone, Copy)]
pub(super) enum SniTo<'a> {
    /// A local pod or the node: the server gets its RST from the worker.
    Route(&'a Route),
    /// The world, through the uplink: the server's RST is SNATed like the
    /// flow's segments (and ends the mapping).
    Uplink,
    /// A pod behind a peer node: only the client gets a RST (the server's
    /// side times out).
    Remote,
}

impl Pass<'_> {
    /// Stage 8b (see the module doc): a client→server TCP segment of a flow
    /// admitted by a `toFQDNs` rule of endpoint `need.ep`.
    pub(super) fn sni(
        &mut self,
        pkt: &Parsed,
        need: SniNeed,
        to: SniTo,
        reply_port: Option<PortId>,
    ) -> ControlFlow<Verdict, ()> {
        if pkt.fragment != Fragment::Whole {
            // Not reassembled: refused as for HTTP rules.
            return drop(DropReason::L7OutOfOrder);
        }
        let (seq, ack, flags, pay_at) = {
            let bytes = self
                .buf
                .get(pkt.l4_offset..pkt.frame_len())
                .unwrap_or_default();
            let t = or_drop(tcp::Packet::new_checked(bytes), DropReason::L4Truncated)?;
            (
                t.seq_number(),
                t.ack_number(),
                t.flags(),
                pkt.l4_offset + t.header_len(),
            )
        };
        let (snap, st) = (self.snap, &mut *self.st);
        let now = st.now_ns;
        let syn = flags & tcp::flags::SYN != 0 && flags & tcp::flags::ACK == 0;
        let rst = flags & tcp::flags::RST != 0;
        let fin = flags & tcp::flags::FIN != 0;
        let l7s = &mut st.l7;
        let slot = match l7s.by_key.get(&pkt.key) {
            Some(&slot) => {
                if syn {
                    l7s.pool.restart(SlotId(slot), seq.wrapping_add(1));
                    if let Some(m) = l7s.meta.get_mut(slot as usize) {
                        m.set = 0;
                    }
                }
                slot
            }
            None if syn => {
                let Some(slot) = l7s.open_slot(pkt.key, seq) else {
                    l7s.no_slot += 1;
                    return drop(DropReason::L7NoSlot);
                };
                slot
            }
            None => {
                // As for HTTP rules (`Pass::http`): a closed flow's empty
                // segments pass, data never passes unjudged.
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
                    (true, true) => Continue(()),
                    (true, false) => drop(DropReason::L7AfterClose),
                    (false, _) => {
                        l7s.no_slot += 1;
                        drop(DropReason::L7NoSlot)
                    }
                };
            }
        };
        if rst {
            l7s.free(slot);
            return Continue(());
        }
        let payload = self.buf.get(pay_at..pkt.frame_len()).unwrap_or_default();
        let id = SlotId(slot);
        // The first client byte on a port other than 443: a TLS handshake
        // record is cross-checked, anything else is not (docs/l7.md).
        let first = l7s
            .pool
            .get(id)
            .is_some_and(|s| s.requests() == 0 && !s.head_open() && s.next_seq() == seq);
        if first && payload.is_empty() && fin {
            // The client closes without having sent a byte: nothing to
            // judge, nothing reached the server.
            l7s.free(slot);
            return Continue(());
        }
        if first && pkt.key.dport != TLS_PORT && payload.first().is_some_and(|&b| b != 22) {
            // Decided: the rest of the connection passes unchecked, without
            // the slot.
            if !fin {
                st.ct.set_hello_done(&pkt.key, now);
            }
            l7s.free(slot);
            return Continue(());
        }
        let pol = snap.policy();
        let fqdn = &st.fqdn;
        let (addr, proto, dport) = (pkt.key.dst, pkt.key.proto, pkt.key.dport);
        let mut note = None;
        let feed = l7s.pool.feed_tls_segment(id, seq, payload, fin, |sni| {
            if pol.fqdn_name_allowed(need.ep, addr, proto, dport, sni, (fqdn, now)) {
                L7Verdict::Allow
            } else {
                note = Some(L7Note::new(L7Reason::FqdnSniMismatch).with_request("TLS", sni));
                L7Verdict::Deny
            }
        });
        let Some(insp) = l7s.pool.get(id) else {
            return drop(DropReason::L7NoSlot);
        };
        let (client_next, server_expects, finished, allowed) = (
            insp.next_seq(),
            insp.released_seq(),
            insp.finished(),
            insp.tls_allowed(),
        );
        match feed {
            Feed::Forward | Feed::Hold | Feed::Release => {
                if allowed && !finished {
                    // Judged and allowed: later segments pass unjudged (as
                    // the inspector would pass them), without the slot.
                    st.ct.set_hello_done(&pkt.key, now);
                }
                if finished || allowed {
                    l7s.free(slot);
                }
                Continue(())
            }
            Feed::Drop => drop(DropReason::L7OutOfOrder),
            Feed::Busy => {
                l7s.busy += 1;
                drop(DropReason::L7Busy)
            }
            Feed::Deny(r) => {
                let r = match (r, note.is_some()) {
                    (L7Reason::TlsSniDenied, true) => L7Reason::FqdnSniMismatch,
                    (r, _) => r,
                };
                let server_next = if flags & tcp::flags::ACK != 0 { ack } else { 0 };
                let seqs = (client_next, server_expects, server_next);
                Break(match to {
                    SniTo::Route(route) => self.http_deny(
                        pkt,
                        route,
                        reply_port,
                        slot,
                        r,
                        note,
                        seqs,
                        (true, false),
                        None,
                    ),
                    SniTo::Uplink | SniTo::Remote => {
                        self.sni_deny_away(pkt, slot, r, note, seqs, reply_port, to)
                    }
                })
            }
        }
    }

    /// A denied hello toward the world or a peer node: the client (a local
    /// pod, behind `reply_port`) gets a RST as from the server; toward the
    /// world the server gets a RST at the first byte it was not sent,
    /// SNATed on its way out (`Verdict::L7Deny`: the frame's buffer holds
    /// the server's RST, the worker builds the client's).
    #[allow(clippy::too_many_arguments)]
    fn sni_deny_away(
        &mut self,
        pkt: &Parsed,
        slot: u32,
        r: L7Reason,
        note: Option<L7Note>,
        (client_next, server_expects, server_next): (u32, u32, u32),
        reply_port: Option<PortId>,
        to: SniTo,
    ) -> Verdict {
        let (snap, st) = (self.snap, &mut *self.st);
        let generation = snap.policy().generation();
        let now = st.now_ns;
        st.l7.free(slot);
        st.l7.denied += 1;
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
        st.flows.push(ev);
        let reason = r.drop_reason();
        let Some((port, port_mac)) = reply_port.and_then(|p| snap.port(p).map(|pp| (p, pp.mac)))
        else {
            return Verdict::Drop(reason);
        };
        let pod_mac = Frame::new_checked(&self.buf[..])
            .map(|f| f.src_addr())
            .unwrap_or_default();
        let pod = TcpEnd {
            mac: pod_mac,
            ip: pkt.key.src,
            port: pkt.key.sport,
        };
        let server = TcpEnd {
            mac: port_mac,
            ip: pkt.key.dst,
            port: pkt.key.dport,
        };
        // RST client ← server: seq = what the client expects next from the
        // server, ack = every client byte.
        let to_client = DeniedFlow {
            client: server,
            server: pod,
            client_next_seq: 0,
            server_expects_seq: server_next,
            server_next_seq: client_next,
        };
        if let SniTo::Uplink = to {
            let to_server = DeniedFlow {
                client: pod,
                server,
                client_next_seq: client_next,
                server_expects_seq: server_expects,
                server_next_seq: server_next,
            };
            let out = build_rst_frame(self.buf, &to_server)
                .and_then(|n| super::parse(self.buf.get(..n)?).continue_value());
            if let Some(rst_pkt) = out {
                if let Verdict::Tx { port: up, len } = self.uplink_out(&rst_pkt) {
                    return Verdict::L7Deny {
                        slot: u32::MAX,
                        reply_port: up,
                        reply_len: len,
                        rst_port: port,
                        rst: to_client,
                        reason,
                    };
                }
            }
        }
        // Only the client's RST, in the frame's buffer; counted as a drop.
        match build_rst_frame(self.buf, &to_client) {
            Some(len) => {
                self.st.reply_drop = Some(reason);
                Verdict::Tx { port, len }
            }
            None => Verdict::Drop(reason),
        }
    }
}
