//! The per-packet pass. [`process`] runs one frame through these stages, in
//! this order; each is a method on one context ([`Pass`]: the frame, the
//! snapshot, the worker's state, the ingress port) returning
//! `ControlFlow<Verdict, T>`, so `?` ends the pass as soon as a stage decides.
//!
//! 0. **Prefetch** (`prefetch.rs`, over the whole batch, run by the worker
//!    before the batch's first frame is judged; [`prefetch()`]): parse each
//!    frame and start loading its conntrack bucket and entry lines (the
//!    first `STAGE0_LEAD` frames' at once, each later frame's while the
//!    frame that many before it is judged), so a table far larger than
//!    the cache costs no serial memory waits; each
//!    frame's hash goes to its lookup, and its parse to stage 2
//!    ([`WorkerState::stage0_push`], [`WorkerState::stage0_for`]), used
//!    there only if the frame is still
//!    the bytes stage 0 parsed; a few frames ahead of the one being judged,
//!    an entry off its home way is loaded too. A hint only: no verdict or
//!    state depends on it. The worker runs it when its flow census says the
//!    flows in use outgrow the cache (`--ct-prefetch auto`: from ~4096
//!    distinct flows per 16 384 packets; [`FlowCensus`]).
//! 1. **Tunnel in** (`tunnel.rs`, frames from the underlay only): check the
//!    outer headers and unwrap the inner frame; remember the sending peer
//!    and the source identity the header carried.
//! 2. **Parse** (`parse.rs`): Ethernet, IPv4/IPv6 (with extension headers),
//!    the L4 header; the [`FlowKey`] and where a fragment sits (or stage
//!    0's parse of the same bytes, [`Stage0::parsed_for`]).
//! 3. **Source** (`route.rs`): a pod's frame carries its own address; a
//!    peer's carries an address of that peer's pod CIDRs.
//!    Then **Services** (`service.rs`): DNAT of new flows to a ClusterIP
//!    (Maglev, affinity, hairpin), reverse NAT of their replies, RST / port
//!    unreachable for frontends without endpoints.
//! 4. **Route** (`route.rs`): multicast and node-bound traffic stop; a
//!    local pod routes to its port, a remote pod CIDR to its peer node, a
//!    node address (with a host port) to the host port.
//! 5. **Conntrack and policy** (`policy.rs`): tracked flows pass, new or
//!    stale ones are judged; fragments follow their first fragment.
//! 6. **Hop limit** (`icmp.rs`): TTL/hop limit 1 is answered with Time
//!    Exceeded.
//! 7. **MTU** (`icmp.rs`): too big is answered with Fragmentation Needed /
//!    Packet Too Big (or dropped without DF).
//! 8. **HTTP** (`l7.rs`): inline inspection of the client→server stream of
//!    flows under HTTP rules (hold, release, deny with 403 + RST).
//!    **8b. FQDN server names** (`sni.rs`): the ClientHello of a flow a
//!    `toFQDNs` rule admitted must name a server learned for that address.
//! 9. **DNS** (`dns.rs`): queries under DNS rules are judged by name
//!    (REFUSED in place); responses teach the learned FQDN table.
//! 10. **Rewrite** (`rewrite.rs`): trim padding, TTL − 1, MACs of the
//!     destination link.
//! 11. **Tunnel out** (`tunnel.rs`, destinations behind a peer node): the
//!     rewritten inner frame is wrapped (VXLAN/-GBP or Geneve) for the
//!     underlay. **Uplink out** (`egress.rs`, destinations outside every
//!     cluster range): SNAT on the node's underlay address and out on the
//!     underlay to the uplink gateway; replies from the world are
//!     reverse-SNATed right after parse (docs/egress.md).
//!
//! Node topology assumed: every pod sits behind its own veth (a [`crate::snapshot::Port`]);
//! its IPv4 is a /32 with default route via 169.254.1.1 and its IPv6 a /128
//! with default route via fe80::1, both resolving to the port's MAC.
//!
//! Decisions worth knowing:
//! - Trailing bytes after the IP total length (Ethernet padding) are trimmed:
//!   the verdict's `len` is Ethernet header + IP length.
//! - Link-scoped traffic is the node's: an IPv6 link-local source (fe80::/10)
//!   or destination, and an IPv4 169.254/16 destination, drop as
//!   [`DropReason::ToNode`]. A router never forwards link-local addresses
//!   (RFC 4291 §2.5.6, RFC 3927 §7); the XDP program already hands NDP to the
//!   kernel, so anything link-scoped that reaches a worker was not for a pod.
//! - IPv4 without DF that exceeds the destination MTU is dropped
//!   ([`DropReason::TooBig`]); weir does not fragment.
//! - ICMP errors (time exceeded, fragmentation needed, packet too big) are
//!   built in place in the frame and sent back out of the ingress port;
//!   never in answer to an ICMP error or to a non-first fragment (RFC 1122
//!   §3.2.2, RFC 4443 §2.4), and not when the node has no address of that
//!   family or the UMEM frame is too small. Then the frame is dropped with
//!   the stage's reason. No rate limiting yet.
//! - L4 checksums are left alone except where weir translates addresses or
//!   ports (Services, NodePort, SNAT, ICMP errors about translated flows):
//!   there they are updated incrementally, as is the IPv4 header checksum
//!   (RFC 1624); pods send complete checksums.
//!
//! - Policy (stage 5): a packet of a tracked flow admitted under the
//!   current policy generation passes (replies included: that is what lets
//!   an ingress-isolated pod get the replies to its own connections); a new
//!   flow, or one admitted under an older generation, is judged by
//!   `CompiledPolicy::judge` in its original direction. Denied new flows get
//!   no entry; a denied stale flow's entry becomes a tombstone (judged again in the original direction under later policies)
//!   that drops both directions (revocation cuts existing connections on
//!   their next packet, and the other direction cannot sneak back in as a
//!   mid-stream pickup). A TCP segment without SYN for an
//!   unknown flow is judged as new and tracked as a mid-stream pickup, so
//!   connections survive a dataplane restart when policy allows them. ICMP
//!   errors pass only when they quote a tracked, still-allowed flow.
//!
//! - Fragments ([`crate::frag`], docs/conntrack.md): a first fragment is
//!   judged as any packet and its outcome recorded for its datagram in the
//!   node's fragment table; later fragments follow it (taking the flow's
//!   ports into their key) or drop (`fragment-no-first`,
//!   `fragment-overlap`); a first fragment without its whole transport
//!   header drops as `fragment-invalid`. SCTP ports are judged like TCP/UDP
//!   ports and associations tracked through the TCP state machine.
//!
//! - Host port (`SnapshotSpec::host`, docs/datapath.md "The host port"):
//!   frames arriving on it are the node's (source: one of the node's
//!   addresses) and route to local pods only; pod frames to a node address
//!   route to it. Both directions are tracked and judged like any flow with
//!   the node as the peer address: node addresses compiled as the host
//!   identity are always allowed, others meet ipBlock rules (docs/policy.md,
//!   "The node"). Under host endpoint policy (`PolicySpec::host`) the
//!   node's own side is judged too: its ingress for flows to its addresses,
//!   its egress for flows from them (`CompiledPolicy::judge`; failsafe
//!   ports already resolved in its tables).
//!
//! - Overlay (see `encap` and docs/tunnel.md): a destination in a peer
//!   node's pod CIDR routes to that peer; only the source's egress is
//!   judged here, then the frame is wrapped and sent on the underlay port,
//!   with PMTUD against the tunnel's inner MTU. Frames from the underlay are
//!   unwrapped and judged by the identity the header carried
//!   ([`crate::policy::CompiledPolicy::judge_with_src_identity`]); they
//!   route to a local pod only, and the destination's ingress is judged.
//!   With WireGuard on (`WorkerState::with_wireguard`, docs/encryption.md)
//!   the wrapped frame is sealed for the peer after stage 11, and a frame
//!   from the underlay is opened before stage 1's decapsulation; a worker
//!   does both per batch, grouped by peer (`WorkerState::batch_wireguard`).
//!
//! Allocation-free, panic-free, lock-free except conntrack's per-bucket
//! lock (see `conntrack`): every view is built with
//! `new_checked` and every slice with `get`, so malformed input becomes a
//! drop, never a panic.
#![forbid(unsafe_code)]

use core::ops::ControlFlow::{self, Break, Continue};

use crate::policy::Identity;
use crate::snapshot::{PortId, Snapshot};
use crate::wire::Error as WireError;
use crate::{DropReason, Verdict};

mod dns;
mod egress;
mod external;
mod host_in;
mod icmp;
mod l7;
mod nat_icmp;
mod nodeport;
mod parse;
mod policy;
mod prefetch;
mod rewrite;
mod route;
mod service;
mod service_cache;
mod sni;
mod state;
mod tunnel;

pub use crate::flow_key::FlowKey;
pub use parse::{parse, FragPos, Fragment, Parsed};
pub use prefetch::{
    prefetch, prefetch_hint, stage0, FlowCensus, Stage0, CENSUS_OFF_FLOWS, CENSUS_ON_FLOWS,
    CENSUS_SAMPLE_EVERY, CENSUS_WINDOW, HEAD as STAGE0_HEAD, HEAD_AT as STAGE0_HEAD_AT,
};
pub use route::{Next, Route};
pub use service::{rewrite as service_rewrite, HAIRPIN_V4, HAIRPIN_V6};
pub use state::{
    L7Capacity, L7Usage, WorkerState, DEFAULT_L7_MAX_FLOWS, L7_H2_MAX, L7_SLOTS, STAGE0_AHEAD,
    STAGE0_LEAD, STANDALONE_CONNTRACK_SIZE,
};
pub use tunnel::{open_deferred, seal_deferred, wg_source, SealJob};

use policy::Need;

/// Runs one received frame through the pass. `buf` is the whole UMEM frame;
/// the received frame is `buf[..len]` (a `len` beyond `buf.len()` is clamped).
/// The pass may rewrite in place and may grow the frame up to `buf.len()`
/// (ICMP errors, replies).
pub fn process(
    buf: &mut [u8],
    len: usize,
    ingress: PortId,
    snap: &Snapshot,
    st: &mut WorkerState,
) -> Verdict {
    let mut pass = Pass {
        buf,
        front: None,
        moved: 0,
        snap,
        st,
        ingress,
        one_way: false,
    };
    match pass.run(len) {
        Break(v) | Continue(v) => v,
    }
}

/// [`process`] for a frame whose start may move: `frame[head..head +
/// len]` is the received frame and `frame[..head]` the room in front of
/// it (the UMEM frame's XDP headroom, `xsk::WorkerUmem::with_frame_room`).
/// Returns the verdict and the frame's new offset in `frame`, which the
/// verdict's lengths count from: an encapsulated frame starts with its
/// outer headers, written in the room (the inner frame does not move), a
/// decapsulated one with its inner frame (the outer headers are left
/// behind). Where the room is too small, or WireGuard seals the frame,
/// [`process`]'s memmove is the fallback: same bytes out, same offset.
pub fn process_at(
    frame: &mut [u8],
    head: usize,
    len: usize,
    ingress: PortId,
    snap: &Snapshot,
    st: &mut WorkerState,
) -> (Verdict, usize) {
    let head = head.min(frame.len());
    let (front, buf) = frame.split_at_mut(head);
    let mut pass = Pass {
        buf,
        front: Some(front),
        moved: 0,
        snap,
        st,
        ingress,
        one_way: false,
    };
    let v = match pass.run(len) {
        Break(v) | Continue(v) => v,
    };
    (v, head.saturating_add_signed(pass.moved))
}

/// The context every stage works in: the frame's UMEM buffer, the snapshot
/// of this batch, the worker's state and the port the frame came in on.
struct Pass<'a> {
    buf: &'a mut [u8],
    /// The bytes in front of `buf` when its start may move
    /// ([`process_at`]); `None` for [`process`], whose frame starts at
    /// `buf[0]` whatever happens.
    front: Option<&'a mut [u8]>,
    /// How far the frame's start moved from where it was received
    /// (negative: back into `front`).
    moved: isize,
    snap: &'a Snapshot,
    st: &'a mut WorkerState,
    ingress: PortId,
    /// The frame belongs to a flow whose other direction never crosses the
    /// dataplane (from outside to the node under host policy: the node's
    /// replies leave through its kernel), so conntrack follows it without
    /// the TCP state machine (`policy.rs`, `host_in.rs`).
    one_way: bool,
}

/// Who sent the frame: a local pod (behind the ingress port) or a peer node
/// through the tunnel.
#[derive(Debug, Clone, Copy)]
enum Sender {
    Pod,
    /// A peer node (index in the tunnel spec), and the source identity the
    /// tunnel header carried, if any.
    Peer {
        peer: u32,
        identity: Option<Identity>,
    },
    /// The node itself, through the host port.
    Host,
    /// The world, through the uplink: a reply to a SNAT flow
    /// (docs/egress.md) or a flow to a node port (docs/services.md).
    World,
    /// Outside the node (the world or another node, on the underlay), to
    /// the node's own address under host endpoint policy (`host_in.rs`).
    Outside,
}

impl Pass<'_> {
    /// The stages in order (see the module doc).
    fn run(&mut self, len: usize) -> ControlFlow<Verdict, Verdict> {
        let len = len.min(self.buf.len());
        // 1. Frames from the underlay: the inner frame is now at the start.
        let (len, sender) = self.tunnel_in(len)?;
        let sender = match self.snap.host() {
            Some(h) if h.port == self.ingress => Sender::Host,
            _ => sender,
        };
        self.one_way = matches!(sender, Sender::Outside);
        // 2. (Stage 0's parse, when this frame is still the bytes it
        //    parsed.)
        let frame = self.buf.get(..len).unwrap_or_default();
        let mut pkt = match self.st.stage0().and_then(|s| s.parsed_for(frame)) {
            Some(p) => p,
            None => parse(frame)?,
        };
        // 2b. From the world: a reply goes back to its pod (reverse SNAT),
        //     a node-port flow to its backend (DNAT, maybe SNAT).
        if let Sender::World = sender {
            self.uplink_in(&mut pkt)?;
        }
        // 3. The local source endpoint (none behind a peer).
        let src_ep = self.check_source(&pkt, sender)?;
        // 3b. Services: a new flow to a ClusterIP is sent to a backend
        //     (routing and policy see the backend); a reply is reverse
        //     NATed (routing sees the rewritten packet, conntrack and
        //     policy the packet as it came).
        //     A remote backend's reply to a node-port flow this node
        //     SNATed is restored first (docs/services.md, NodePort).
        let np_reply = self.node_port_reply(&pkt)?;
        let dst_as_sent = pkt.key.dst;
        let routed = match np_reply {
            Some(r) => Some(r),
            None => self.service(&mut pkt, !matches!(sender, Sender::World | Sender::Outside))?,
        };
        // 4. Frames from a peer route to a local pod only (no transit
        //    between peers through this node).
        let next = self.route(routed.as_ref().unwrap_or(&pkt))?;
        let (dst_ep, mtu) = match (next, sender) {
            (Next::Local(r), _) => (Some(r.endpoint), r.mtu),
            (Next::Host(r), Sender::Pod) => (None, r.mtu),
            // A Service's reply (reverse-NATed) to the node's own client,
            // from a backend on another node (docs/services.md, "From the
            // node").
            (Next::Host(r), Sender::Peer { .. }) if routed.is_some() => (None, r.mtu),
            // From outside to the node itself, judged by its host policy.
            (Next::Host(r), Sender::Outside) => (None, r.mtu),
            (Next::Host(_), _) => return drop(DropReason::ToNode),
            (Next::Remote { inner_mtu, .. }, Sender::Pod) => (None, self.peer_mtu(inner_mtu)),
            // The node's own flow to a ClusterIP whose backend is on another
            // node (DNATed above; the node reaches no remote pod otherwise).
            (Next::Remote { inner_mtu, .. }, Sender::Host) if pkt.key.dst != dst_as_sent => {
                (None, self.peer_mtu(inner_mtu))
            }
            // A node port's flow to a backend on another node.
            (Next::Remote { inner_mtu, .. }, Sender::World) => (None, self.peer_mtu(inner_mtu)),
            (Next::Uplink { mtu }, Sender::Pod) => (None, mtu),
            // That backend's reply, on its way back to the client.
            (Next::Uplink { mtu }, Sender::Peer { .. }) if np_reply.is_some() => (None, mtu),
            (Next::Remote { .. } | Next::Uplink { .. }, _) => return drop(DropReason::NoRoute),
        };
        // 5. Toward a peer, only the source's egress is judged here.
        let wire_id = match sender {
            Sender::Pod | Sender::Host | Sender::World | Sender::Outside => None,
            Sender::Peer { identity, .. } => identity,
        };
        let need = self.policy(&mut pkt, src_ep, dst_ep, wire_id)?;
        // 5b. A backend's ICMP error about a Service flow quotes the
        //     ClusterIP to the client (after policy matched it as sent).
        self.service_error(&mut pkt)?;
        // 6, 7.
        self.check_hop_limit(&pkt)?;
        self.check_mtu(&pkt, mtu)?;
        // Where weir's own replies (REFUSED, 403) leave: the client's pod
        // port, or none for a client behind a peer node (a 403 then goes
        // back encapsulated, see `l7.rs`).
        let reply_port = match sender {
            Sender::Pod | Sender::Host => Some(self.ingress),
            Sender::Peer { .. } | Sender::World | Sender::Outside => None,
        };
        match next {
            Next::Local(route) | Next::Host(route) => {
                let held = match need {
                    // 8.
                    Need::Http(need) => self.http(&pkt, need, &route, reply_port)?,
                    // 9.
                    Need::Dns(need) => {
                        self.dns(&pkt, need, reply_port, Some(&route))?;
                        l7::L7Out::Pass
                    }
                    Need::None => l7::L7Out::Pass,
                    Need::HttpResponse => {
                        self.http_response(&pkt);
                        l7::L7Out::Pass
                    }
                    // 8b.
                    Need::Sni(need) => {
                        self.sni(&pkt, need, sni::SniTo::Route(&route), reply_port)?;
                        l7::L7Out::Pass
                    }
                };
                // 10.
                Continue(held.apply(self.rewrite(&pkt, &route)))
            }
            Next::Remote { peer, .. } => {
                // 9.
                if let Need::Dns(need) = need {
                    self.dns(&pkt, need, reply_port, None)?;
                }
                if let Need::HttpResponse = need {
                    self.http_response(&pkt);
                }
                // 8b.
                if let Need::Sni(need) = need {
                    self.sni(&pkt, need, sni::SniTo::Remote, reply_port)?;
                }
                // 10, 11.
                Continue(self.tunnel_out(&pkt, peer))
            }
            Next::Uplink { .. } => {
                // 9.
                if let Need::Dns(need) = need {
                    self.dns(&pkt, need, reply_port, None)?;
                }
                // 8b.
                if let Need::Sni(need) = need {
                    self.sni(&pkt, need, sni::SniTo::Uplink, reply_port)?;
                }
                // 10, with SNAT (docs/egress.md); node-port replies
                // (rewritten for routing) already come from the node.
                let out = routed.unwrap_or(pkt);
                Continue(self.uplink_out(&out))
            }
        }
    }
}

fn drop<T>(reason: DropReason) -> ControlFlow<Verdict, T> {
    Break(Verdict::Drop(reason))
}

fn or_drop<T>(r: Result<T, WireError>, reason: DropReason) -> ControlFlow<Verdict, T> {
    match r {
        Ok(v) => Continue(v),
        Err(_) => drop(reason),
    }
}
