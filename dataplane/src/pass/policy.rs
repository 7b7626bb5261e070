//! Stage 5: conntrack and policy (see the module doc of the pass), with
//! fragments and ICMP errors that quote a flow.

use core::ops::ControlFlow::{self, Break, Continue};
use std::net::IpAddr;

use super::parse::{Fragment, Parsed};
use super::{drop, FlowKey, Pass};
use crate::conntrack::{self, Admission, Insert, Seg, Track};
use crate::flows::{FlowEvent, FlowKind};
use crate::fqdn::FqdnTable;
use crate::frag::{self, FragKey};
use crate::policy::{Identity, Judgement, Peer, RuleId};
use crate::snapshot::Snapshot;
use crate::wire::{icmp, ip_proto, tcp};
use crate::{DropReason, Verdict};

/// What the policy stage asks of the later stages.
#[derive(Debug, Clone, Copy)]
pub(super) enum Need {
    None,
    /// A client→server TCP packet of a flow under HTTP rules.
    Http(HttpNeed),
    /// A packet of a flow under DNS rules.
    Dns(DnsNeed),
    /// A server→client TCP packet of a flow under HTTP rules (the flow log
    /// reads the status line of a response; the verdict is not changed).
    HttpResponse,
    /// A client→server TCP packet of a flow admitted by a `toFQDNs` rule:
    /// its ClientHello's server name is cross-checked (`sni.rs`).
    Sni(SniNeed),
}

/// A client→server TCP packet of a flow a `toFQDNs` rule admitted.
#[derive(Debug, Clone, Copy)]
pub(super) struct SniNeed {
    /// The client's endpoint (whose `toFQDNs` rules judge the name).
    pub(super) ep: u32,
}

/// A client→server TCP packet of a flow admitted under HTTP rules.
#[derive(Debug, Clone, Copy)]
pub(super) struct HttpNeed {
    /// The rule set (known when the flow was judged by this packet).
    pub(super) set: Option<u32>,
    /// The identity a tunnel header carried (to judge again).
    pub(super) wire_id: Option<Identity>,
}

/// A packet of a flow admitted by an egress rule carrying DNS rules.
#[derive(Debug, Clone, Copy)]
pub(super) struct DnsNeed {
    /// Client→server (a query); else server→client (a response).
    pub(super) query: bool,
    /// The rule set (known when the flow was judged by this packet).
    pub(super) set: Option<u32>,
}

impl Pass<'_> {
    /// Stage 5: conntrack and policy. `src_ep` and `dst_ep` are the
    /// packet's local endpoints (none for the remote side of a tunnelled
    /// flow); `wire_id` the source identity a tunnel header carried.
    ///
    /// Fragments (see [`crate::frag`]): a first fragment is judged as any
    /// packet and its outcome recorded for its datagram; a later fragment
    /// follows that outcome, and takes the flow's ports into its key (so the
    /// later stages, the tunnel's outer source port included, see the flow).
    pub(super) fn policy(
        &mut self,
        pkt: &mut Parsed,
        src_ep: Option<u32>,
        dst_ep: Option<u32>,
        wire_id: Option<Identity>,
    ) -> ControlFlow<Verdict, Need> {
        match pkt.fragment {
            Fragment::Whole => self.flow_policy(pkt, src_ep, dst_ep, wire_id),
            Fragment::First => {
                let r = self.flow_policy(pkt, src_ep, dst_ep, wire_id);
                self.first_fragment(pkt, r)
            }
            Fragment::Later => {
                self.later_fragment(pkt)?;
                Continue(Need::None)
            }
        }
    }

    /// Records a first fragment's outcome `r` for its datagram; a datagram
    /// poisoned by an overlapping fragment stays dropped.
    fn first_fragment(
        &mut self,
        pkt: &Parsed,
        r: ControlFlow<Verdict, Need>,
    ) -> ControlFlow<Verdict, Need> {
        // Inspection needs whole messages: the first fragment of a flow under
        // HTTP rules, or of a DNS query under DNS rules, is dropped by the
        // later stages, and so are the rest of its datagram.
        let verdict = match r {
            Continue(Need::Http(_) | Need::Sni(_)) => Some(DropReason::L7OutOfOrder),
            Continue(Need::Dns(d)) if d.query => Some(DropReason::DnsMalformed),
            Continue(_) => None,
            Break(Verdict::Drop(reason)) => Some(reason),
            Break(_) => Some(DropReason::PolicyDenied),
        };
        let first = frag::First {
            sport: pkt.key.sport,
            dport: pkt.key.dport,
            proto: pkt.key.proto,
            generation: self.snap.policy().generation() as u32,
            verdict,
            end: pkt.frag.len,
        };
        let st = &mut *self.st;
        let rec = st.ct.frags().first(&frag_key(pkt), first, st.now_ns);
        st.ct_stats.frag_datagrams.add(1);
        st.ct_stats.frag_evictions.add(u64::from(rec.evicted));
        match (rec.verdict, r) {
            (Some(DropReason::FragmentOverlap), _) => {
                self.fragment_event(pkt, DropReason::FragmentOverlap);
                drop(DropReason::FragmentOverlap)
            }
            (_, r) => r,
        }
    }

    /// A later fragment follows its datagram's first fragment. If policy
    /// changed since, the flow decides (judged again when it is stale).
    fn later_fragment(&mut self, pkt: &mut Parsed) -> ControlFlow<Verdict, ()> {
        let now = self.st.now_ns;
        let fk = frag_key(pkt);
        let later = self.st.ct.frags().later(&fk, pkt.frag.offset, now);
        let (sport, dport, proto, admitted) = match later {
            frag::Later::Pass {
                sport,
                dport,
                proto,
                generation,
            } => (sport, dport, proto, generation),
            frag::Later::Drop(reason) => {
                if matches!(
                    reason,
                    DropReason::FragmentNoFirst | DropReason::FragmentOverlap
                ) {
                    self.fragment_event(pkt, reason);
                }
                return drop(reason);
            }
        };
        pkt.key.sport = sport;
        pkt.key.dport = dport;
        pkt.key.proto = proto;
        let generation = self.snap.policy().generation();
        if admitted == generation as u32 {
            self.st.ct_stats.frag_followed.add(1);
            return Continue(());
        }
        let allowed = match self.st.ct.lookup(&pkt.key, generation, now) {
            Track::Pass { .. } => true,
            Track::Stale { orig, .. } => self.rejudge(&orig, &orig, None),
            Track::Denied | Track::Miss | Track::Invalid { .. } => false,
        };
        let verdict = (!allowed).then_some(DropReason::PolicyDenied);
        self.st
            .ct
            .frags()
            .rejudged(&fk, generation as u32, verdict, now);
        if allowed {
            self.st.ct_stats.frag_followed.add(1);
            Continue(())
        } else {
            drop(DropReason::PolicyDenied)
        }
    }

    /// Logs a fragment dropped for a fragment reason (the flow is whatever the
    /// fragment's key says: ports are zero when its first was never seen).
    fn fragment_event(&self, pkt: &Parsed, reason: DropReason) {
        let snap = self.snap;
        self.st.flows.push(FlowEvent {
            time_ns: self.st.now_ns,
            key: pkt.key,
            kind: FlowKind::Drop,
            allowed: false,
            reason: Some(reason),
            egress_rule: RuleId::NOT_APPLICABLE,
            ingress_rule: RuleId::NOT_APPLICABLE,
            audit: false,
            pickup: false,
            generation: snap.policy().generation(),
            src_endpoint: local_endpoint(snap, pkt.key.src),
            dst_endpoint: local_endpoint(snap, pkt.key.dst),
            l7: None,
        });
    }

    /// Whether a packet that found no flow is the *server's* side of a flow
    /// weir would inspect in the other direction: a TCP segment that is not
    /// a lone SYN, or a UDP datagram, whose reverse (this packet's
    /// destination → its source, to its source port) is allowed under HTTP/
    /// TLS/gRPC ingress rules or DNS egress rules. Admitted as a flow of its
    /// own, the client's later requests would travel as its replies and
    /// never be inspected (after a dataplane restart, a server that
    /// retransmits first; or a peer sending first on purpose). Such packets
    /// are refused as L7 flows without an inspector are
    /// (docs/reliability.md, "Mid-stream pickup"). A second judgement only on
    /// a conntrack miss of such a packet when the policy has L7 or DNS rules.
    fn server_side_of_inspected(
        &self,
        pkt: &Parsed,
        seg: Seg,
        (src_ep, dst_ep): (Option<u32>, Option<u32>),
    ) -> bool {
        let pol = self.snap.policy();
        if !(pol.has_l7() || pol.has_dns()) {
            return false;
        }
        let opens = match seg {
            Seg::Tcp(f) => f & (tcp::flags::SYN | tcp::flags::ACK) == tcp::flags::SYN,
            Seg::Other => pkt.key.proto != ip_proto::UDP,
        };
        if opens {
            return false;
        }
        let rev = pol.judge_learned(
            Peer {
                endpoint: dst_ep,
                addr: pkt.key.dst,
            },
            None,
            Peer {
                endpoint: src_ep,
                addr: pkt.key.src,
            },
            pkt.key.proto,
            pkt.key.sport,
            (&self.st.fqdn, self.st.now_ns),
        );
        rev.allowed
            && ((pkt.key.proto == ip_proto::TCP && rev.ingress.l7.is_some())
                || rev.egress.dns.is_some())
    }

    /// Conntrack and policy of one packet that carries its flow's ports.
    fn flow_policy(
        &mut self,
        pkt: &Parsed,
        src_ep: Option<u32>,
        dst_ep: Option<u32>,
        wire_id: Option<Identity>,
    ) -> ControlFlow<Verdict, Need> {
        if pkt.icmp_error {
            return self.related(pkt).map_continue(|()| Need::None);
        }
        let pol = self.snap.policy();
        let generation = pol.generation();
        let now = self.st.now_ns;
        let tcp = pkt.key.proto == ip_proto::TCP;
        // SCTP goes through the TCP state machine (`conntrack::sctp_as_tcp_flags`).
        let stateful = tcp || pkt.key.proto == ip_proto::SCTP;
        // A one-way flow (from outside to the node, `host_in.rs`) is
        // tracked without the TCP state machine: only its original direction
        // is ever seen, so an ACK after the SYN would look invalid. Every
        // packet still finds the flow's entry, so a policy change re-judges
        // it and a segment with no entry (a SYN-cookie ACK, a connection
        // older than the policy) is judged as a new flow.
        let seg = if stateful && pkt.fragment != Fragment::Later && !self.one_way {
            Seg::Tcp(pkt.tcp_flags)
        } else {
            Seg::Other
        };
        // At most a few rounds: another worker may insert or re-admit the same
        // flow between our look-up and our write.
        for _ in 0..3 {
            match self
                .st
                .ct
                .track_hinted(&pkt.key, self.st.ct_hint(), seg, generation, now)
            {
                Track::Pass {
                    dir,
                    adm,
                    hello_done,
                    ..
                } => {
                    let l7 = tcp
                        && seg != Seg::Other
                        && dir == conntrack::Dir::Orig
                        && pol.has_l7()
                        && pol.rule_has_l7(adm.ingress_rule);
                    if l7 {
                        return Continue(Need::Http(HttpNeed { set: None, wire_id }));
                    }
                    // `hello_done`: the first flight was judged and the
                    // flow's L7 slot given back (`pass/sni.rs`).
                    if let Some(ep) = src_ep.filter(|&ep| {
                        tcp && seg != Seg::Other
                            && !hello_done
                            && dir == conntrack::Dir::Orig
                            && pol.has_fqdn()
                            && pol.is_fqdn_rule(ep, adm.egress_rule)
                    }) {
                        return Continue(Need::Sni(SniNeed { ep }));
                    }
                    if tcp
                        && seg != Seg::Other
                        && dir == conntrack::Dir::Reply
                        && pol.has_l7()
                        && pol.rule_has_l7(adm.ingress_rule)
                        && !self.h2_server_segment(pkt)
                    {
                        // Past weir's answer to a denied request.
                        return drop(DropReason::L7AfterClose);
                    }
                    if pol.has_dns() && pol.rule_has_dns(adm.egress_rule) {
                        return Continue(Need::Dns(DnsNeed {
                            query: dir == conntrack::Dir::Orig,
                            set: None,
                        }));
                    }
                    if tcp
                        && seg != Seg::Other
                        && dir == conntrack::Dir::Reply
                        && pol.has_l7()
                        && pol.rule_has_l7(adm.ingress_rule)
                    {
                        return Continue(Need::HttpResponse);
                    }
                    return Continue(Need::None);
                }
                Track::Invalid { .. } => {
                    self.st.ct_stats.invalid.add(1);
                    return drop(DropReason::CtInvalid);
                }
                Track::Denied => return drop(DropReason::PolicyDenied),
                Track::Stale { orig, .. } => {
                    // The carried identity is the source's only when this
                    // packet travels in the flow's original direction.
                    let id = wire_id.filter(|_| orig == pkt.key);
                    if !self.rejudge(&pkt.key, &orig, id) {
                        return drop(DropReason::PolicyDenied);
                    }
                }
                Track::Miss => {
                    let j = pol.judge_learned(
                        Peer {
                            endpoint: src_ep,
                            addr: pkt.key.src,
                        },
                        wire_id,
                        Peer {
                            endpoint: dst_ep,
                            addr: pkt.key.dst,
                        },
                        pkt.key.proto,
                        pkt.key.dport,
                        (&self.st.fqdn, now),
                    );
                    let who = (src_ep, dst_ep, false);
                    if !j.allowed {
                        let why = Some(DropReason::PolicyDenied);
                        self.log_flow(&pkt.key, FlowKind::Drop, why, &j, who);
                        return drop(DropReason::PolicyDenied);
                    }
                    // A RST for no known flow is forwarded (if allowed) but
                    // creates nothing.
                    if matches!(seg, Seg::Tcp(f) if f & tcp::flags::RST != 0) {
                        return Continue(Need::None);
                    }
                    if self.server_side_of_inspected(pkt, seg, (src_ep, dst_ep)) {
                        let why = Some(DropReason::L7NoSlot);
                        self.log_flow(&pkt.key, FlowKind::Drop, why, &j, who);
                        self.st.l7.no_slot += 1;
                        return drop(DropReason::L7NoSlot);
                    }
                    let need = match (seg, j.ingress.l7, j.egress.dns) {
                        (Seg::Tcp(_), Some(set), _) if tcp => Need::Http(HttpNeed {
                            set: Some(set),
                            wire_id,
                        }),
                        (_, _, Some(set)) => Need::Dns(DnsNeed {
                            query: true,
                            set: Some(set),
                        }),
                        (Seg::Tcp(_), None, None)
                            if tcp
                                && pol.has_fqdn()
                                && src_ep.is_some_and(|ep| pol.is_fqdn_rule(ep, j.egress.rule)) =>
                        {
                            Need::Sni(SniNeed {
                                ep: src_ep.unwrap_or(u32::MAX),
                            })
                        }
                        _ => Need::None,
                    };
                    let pickup = matches!(seg, Seg::Tcp(f) if f & tcp::flags::SYN == 0);
                    let st = &mut *self.st;
                    match st.ct.insert(&pkt.key, seg, admission(&j, generation), now) {
                        Insert::Inserted { evicted } => {
                            st.ct_stats.inserts.add(1);
                            st.ct_stats.evictions.add(u64::from(evicted));
                            st.ct_stats.pickups.add(u64::from(pickup));
                            let who = (src_ep, dst_ep, pickup);
                            self.log_flow(&pkt.key, FlowKind::New, None, &j, who);
                            return Continue(need);
                        }
                        Insert::Exists => {}
                        Insert::Full => {
                            st.ct_stats.table_full.add(1);
                            let why = Some(DropReason::CtTableFull);
                            self.log_flow(&pkt.key, FlowKind::Drop, why, &j, who);
                            return drop(DropReason::CtTableFull);
                        }
                    }
                }
            }
        }
        Continue(Need::None)
    }

    /// An ICMP error passes when it quotes a packet of a tracked flow that its
    /// destination sent, and that flow is (still) allowed.
    fn related(&mut self, pkt: &Parsed) -> ControlFlow<Verdict, ()> {
        let v6 = pkt.key.src.is_ipv6();
        let quote = self
            .buf
            .get(pkt.l4_offset + icmp::HEADER_LEN..pkt.frame_len())
            .unwrap_or_default();
        let inner = match conntrack::quoted_key(quote, v6) {
            Some(k) if k.src == pkt.key.dst => k,
            _ => {
                self.st.ct_stats.invalid.add(1);
                return drop(DropReason::CtInvalid);
            }
        };
        let snap = self.snap;
        let generation = snap.policy().generation();
        let now = self.st.now_ns;
        match self.st.ct.lookup(&inner, generation, now) {
            Track::Pass { adm, .. } => {
                let ev = FlowEvent {
                    time_ns: now,
                    key: pkt.key,
                    kind: FlowKind::Related,
                    allowed: true,
                    reason: None,
                    egress_rule: adm.egress_rule,
                    ingress_rule: adm.ingress_rule,
                    audit: adm.audit,
                    pickup: false,
                    generation,
                    src_endpoint: local_endpoint(snap, inner.src),
                    dst_endpoint: local_endpoint(snap, inner.dst),
                    l7: None,
                };
                self.st.flows.push(ev);
                Continue(())
            }
            Track::Stale { orig, .. } => {
                if self.rejudge(&orig, &orig, None) {
                    Continue(())
                } else {
                    drop(DropReason::PolicyDenied)
                }
            }
            Track::Denied => drop(DropReason::PolicyDenied),
            Track::Miss | Track::Invalid { .. } => {
                self.st.ct_stats.invalid.add(1);
                drop(DropReason::CtInvalid)
            }
        }
    }

    /// A flow admitted under an older policy generation, judged again in
    /// its original direction `orig` (`src_id`: the source identity a
    /// tunnel header carried). Still allowed: re-admitted under the current
    /// generation. Denied: its entry (found by `ct_key`) becomes a
    /// tombstone and the revocation is logged. Returns whether it is allowed.
    fn rejudge(&mut self, ct_key: &FlowKey, orig: &FlowKey, src_id: Option<Identity>) -> bool {
        let generation = self.snap.policy().generation();
        let now = self.st.now_ns;
        self.st.ct_stats.rejudged.add(1);
        let (j, src, dst) = judge(self.snap, orig, src_id, &self.st.fqdn, now);
        if j.allowed {
            self.st.ct.readmit(ct_key, admission(&j, generation), now);
        } else {
            self.st.ct.revoke(ct_key, generation, now);
            self.st.ct_stats.revoked.add(1);
            let why = Some(DropReason::PolicyDenied);
            self.log_flow(orig, FlowKind::Revoked, why, &j, (src, dst, false));
        }
        j.allowed
    }

    /// Queues a flow event; `reason` is `None` when the packet passed. A
    /// TCP flow admitted without a SYN is flagged as a mid-stream pickup.
    fn log_flow(
        &self,
        key: &FlowKey,
        kind: FlowKind,
        reason: Option<DropReason>,
        j: &Judgement,
        (src_endpoint, dst_endpoint, pickup): (Option<u32>, Option<u32>, bool),
    ) {
        self.st.flows.push(FlowEvent {
            time_ns: self.st.now_ns,
            key: *key,
            kind,
            allowed: reason.is_none(),
            reason,
            egress_rule: j.egress.rule,
            ingress_rule: j.ingress.rule,
            audit: j.egress.audit || j.ingress.audit,
            pickup,
            generation: self.snap.policy().generation(),
            src_endpoint,
            dst_endpoint,
            l7: None,
        });
    }
}

fn frag_key(pkt: &Parsed) -> FragKey {
    FragKey::new(pkt.key.src, pkt.key.dst, pkt.key.proto, pkt.frag.ident)
}

/// Judges `k` (a flow's original direction) with the snapshot's policy;
/// `src_id` is the source identity a tunnel header carried, if any.
pub(super) fn judge(
    snap: &Snapshot,
    k: &FlowKey,
    src_id: Option<Identity>,
    fqdn: &FqdnTable,
    now: u64,
) -> (Judgement, Option<u32>, Option<u32>) {
    let src = local_endpoint(snap, k.src);
    let dst = local_endpoint(snap, k.dst);
    let j = snap.policy().judge_learned(
        Peer {
            endpoint: src,
            addr: k.src,
        },
        src_id,
        Peer {
            endpoint: dst,
            addr: k.dst,
        },
        k.proto,
        k.dport,
        (fqdn, now),
    );
    (j, src, dst)
}

/// The index of the local endpoint that has address `a`, if any.
pub(super) fn local_endpoint(snap: &Snapshot, a: IpAddr) -> Option<u32> {
    match a {
        IpAddr::V4(a) => snap.endpoint_by_v4(a),
        IpAddr::V6(a) => snap.endpoint_by_v6(a),
    }
    .map(|(i, _)| i)
}

fn admission(j: &Judgement, generation: u64) -> Admission {
    Admission {
        generation: generation as u32,
        egress_rule: j.egress.rule,
        ingress_rule: j.ingress.rule,
        audit: j.egress.audit || j.ingress.audit,
    }
}
