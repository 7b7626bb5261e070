//! The per-packet pass: parse → source check → route → (policy) → hop limit
//! → MTU → rewrite, each a plain function returning
//! `ControlFlow<Verdict, T>`, so [`process`] reads top to bottom and `?` ends
//! the pass as soon as a stage decides.
//!
//! Node topology assumed: every pod sits behind its own veth (a [`Port`]);
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
//! - L4 checksums are never touched (pods send complete checksums, weir does
//!   no NAT); the IPv4 header checksum is updated incrementally (RFC 1624).
//!
//! - Policy ([`policy`] stage): a packet of a tracked flow admitted under the
//!   current policy generation passes (replies included: that is what lets
//!   an ingress-isolated pod get the replies to its own connections); a new
//!   flow, or one admitted under an older generation, is judged by
//!   `CompiledPolicy::judge` in its original direction. Denied new flows get
//!   no entry; a denied stale flow's entry becomes a short-lived tombstone
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
//! - Overlay (see `encap` and docs/tunnel.md): a destination in a peer
//!   node's pod CIDR routes to that peer; only the source's egress is
//!   judged here, then the frame is wrapped (VXLAN/-GBP or Geneve) and sent
//!   on the underlay port, with PMTUD against the tunnel's inner MTU.
//!   Frames from the underlay are unwrapped and judged by the identity the
//!   header carried ([`crate::policy::CompiledPolicy::judge_with_src_identity`]).
//!
//! Allocation-free, panic-free, lock-free except conntrack's per-bucket
//! lock (see `conntrack`): every view is built with
//! `new_checked` and every slice with `get`, so malformed input becomes a
//! drop, never a panic.
#![forbid(unsafe_code)]

use core::ops::ControlFlow::{self, Break, Continue};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use serde::Serialize;

use crate::conntrack::{self, Admission, Conntrack, CtStats, Insert, Seg, Track};
use crate::encap;
use crate::flows::{FlowEvent, FlowKind, FlowLog, L7Note};
use crate::fqdn::FqdnTable;
use crate::frag::{self, FragKey};
use crate::l7::reply::{DeniedFlow, TcpEnd};
use crate::l7::{Feed, InspectorPool, L7Verdict, Limits, SlotId};
use crate::policy::{Identity, Judgement, Peer};
use crate::snapshot::{Port, PortId, Snapshot, TunnelSpec, TunnelTables};
use crate::wire::ethernet::{self, ethertype, Frame, Mac};
use crate::wire::{icmp, ip_proto, ipv4, ipv6, sctp, tcp, udp, Error as WireError};
use crate::{DropReason, Verdict};

/// Per-worker scratch, counters and handles of the pass: the node's shared
/// conntrack table, this worker's flow log and conntrack counters, and the
/// time of the current batch.
#[derive(Debug)]
pub struct WorkerState {
    icmp_errors_sent: u64,
    now_ns: u64,
    ct: Arc<Conntrack>,
    flows: Arc<FlowLog>,
    ct_stats: Arc<CtStats>,
    l7: L7State,
    /// The node's learned FQDN table (shared by the workers).
    fqdn: Arc<FqdnTable>,
    dns_refused: u64,
}

/// Flows under HTTP rules one worker inspects at once, by default.
pub const DEFAULT_L7_MAX_FLOWS: usize = 16384;
/// Inspector slots per worker by default (the old name of
/// [`DEFAULT_L7_MAX_FLOWS`]).
pub const L7_SLOTS: usize = DEFAULT_L7_MAX_FLOWS;
/// Most frames one flow may hold: with TCP flags known, the inspector holds
/// at most the one frame that carries the final CR of a head.
const L7_HELD_PER_FLOW: u16 = 2;

/// Sizes of a worker's inline-L7 state (docs/l7.md, "Capacity"); all of it
/// is allocated when the worker state is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct L7Capacity {
    /// Flows under HTTP rules open at once on this worker (a client SYN
    /// beyond them is refused: `l7-no-slot`).
    pub flows: usize,
    /// Head buffers (`head_max + 1` bytes each), held by flows only while a
    /// request head stays open across segments (`l7-busy` when none is free).
    pub head_buffers: usize,
    /// Frames held at once by all flows (UMEM frames out of circulation;
    /// `l7-busy` beyond it).
    pub held_frames: usize,
}

impl L7Capacity {
    /// The sizes for `flows` flows: head buffers and held frames are
    /// `min(flows, 1024)` each.
    pub fn for_flows(flows: usize) -> Self {
        let flows = flows.max(1);
        L7Capacity {
            flows,
            head_buffers: flows.min(1024),
            held_frames: flows.min(1024),
        }
    }

    /// Bytes this costs per worker (state, side table, buffers, hold
    /// queues), approximately.
    pub fn memory_bytes(&self) -> usize {
        let per_flow = core::mem::size_of::<crate::l7::StreamState>()
            + core::mem::size_of::<SlotMeta>()
            // side table entry (key, slot, control byte, at 7/8 load) and
            // the free lists
            + (core::mem::size_of::<(FlowKey, u32)>() + 1) * 8 / 7
            + 2 * core::mem::size_of::<u32>()
            + 1
            // the worker's hold queue of the slot
            + core::mem::size_of::<Vec<u8>>()
            + (usize::from(L7_HELD_PER_FLOW) + 1) * 16;
        self.flows * per_flow + self.head_buffers * (Limits::default().head_max + 1 + 4)
    }
}

impl Default for L7Capacity {
    fn default() -> Self {
        Self::for_flows(DEFAULT_L7_MAX_FLOWS)
    }
}

/// What the worker's inline L7 holds now, and its counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct L7Usage {
    pub flows: usize,
    pub flows_max: usize,
    pub head_buffers: usize,
    pub head_buffers_max: usize,
    pub held_frames: usize,
    pub held_frames_max: usize,
    /// Requests denied inline.
    pub denied: u64,
    /// Frames refused for want of an inspector (new flows at the limit,
    /// pickups).
    pub no_slot: u64,
    /// Segments dropped for want of a head buffer or hold room.
    pub busy: u64,
}

/// The worker's inline-L7 state: its inspector pool, which flow owns which
/// slot, and the slots whose held frames the worker must drop.
///
/// Assumption (docs/l7.md): one worker sees every client→server frame of a
/// flow (the client's veth hashes a flow to one queue; the underlay hashes
/// the outer UDP source port, which is per flow). A slot is taken by the
/// client's SYN and given back as soon as the connection can carry no more
/// requests (the client's FIN accepted, a RST from the client, a deny), or
/// when its conntrack entry is gone. A client→server frame of an L7 flow
/// that finds no slot here is dropped (`l7-no-slot`), except for segments
/// without payload of a closed flow (they pass) and data of a closed flow
/// (`l7-after-close`).
#[derive(Debug)]
struct L7State {
    pool: InspectorPool,
    /// Original-direction key → slot.
    by_key: std::collections::HashMap<FlowKey, u32>,
    meta: Vec<SlotMeta>,
    /// Slots whose held frames must be dropped (expired, flow gone,
    /// restarted); the worker drains this after every pass and sweep.
    flush: Vec<u32>,
    /// Frames held by all slots, and the most allowed.
    held_total: usize,
    held_max: usize,
    /// Where the next upkeep sweep starts.
    sweep: usize,
    denied: u64,
    no_slot: u64,
    busy: u64,
}

#[derive(Debug, Clone, Copy)]
struct SlotMeta {
    key: Option<FlowKey>,
    set: u32,
    generation: u64,
    held: u32,
}

/// Slots the upkeep looks at per call (every 5 ms: 16 384 slots in 160 ms).
const L7_SWEEP: usize = 512;

impl L7State {
    fn new(cap: L7Capacity) -> Self {
        let slots = cap.flows.max(1);
        let limits = Limits {
            held_segments_max: L7_HELD_PER_FLOW,
            ..Limits::default()
        };
        L7State {
            pool: InspectorPool::with_buffers(slots, cap.head_buffers, limits),
            by_key: std::collections::HashMap::with_capacity(slots + 1),
            meta: vec![
                SlotMeta {
                    key: None,
                    set: 0,
                    generation: 0,
                    held: 0,
                };
                slots
            ],
            flush: Vec::with_capacity(slots + 1),
            held_total: 0,
            held_max: cap.held_frames,
            sweep: 0,
            denied: 0,
            no_slot: 0,
            busy: 0,
        }
    }

    fn set_held(&mut self, slot: u32, n: u32) {
        if let Some(m) = self.meta.get_mut(slot as usize) {
            self.held_total = (self.held_total + n as usize).saturating_sub(m.held as usize);
            m.held = n;
        }
    }

    fn push_flush(&mut self, slot: u32) {
        let held = self.meta.get(slot as usize).map_or(0, |m| m.held);
        if held > 0 && self.flush.len() < self.flush.capacity() {
            self.flush.push(slot);
        }
        self.set_held(slot, 0);
    }

    fn free(&mut self, slot: u32) {
        self.push_flush(slot);
        if let Some(m) = self.meta.get_mut(slot as usize) {
            if let Some(k) = m.key.take() {
                self.by_key.remove(&k);
            }
        }
        self.pool.release(SlotId(slot));
    }
}

/// Entries of the private table [`WorkerState::new`] makes (tests, tools).
pub const STANDALONE_CONNTRACK_SIZE: usize = 4096;

impl Default for WorkerState {
    fn default() -> Self {
        Self::new()
    }
}

impl WorkerState {
    /// A worker state with a private conntrack table of
    /// [`STANDALONE_CONNTRACK_SIZE`] entries and its own flow log.
    pub fn new() -> Self {
        Self::with_shared(
            Arc::new(Conntrack::new(
                STANDALONE_CONNTRACK_SIZE,
                conntrack::Timeouts::default(),
            )),
            Arc::new(FlowLog::default()),
            Arc::default(),
        )
    }

    /// A worker state on the node's shared table, with this worker's flow
    /// log and conntrack counters (also held by the runtime, which reads them).
    pub fn with_shared(ct: Arc<Conntrack>, flows: Arc<FlowLog>, ct_stats: Arc<CtStats>) -> Self {
        WorkerState {
            icmp_errors_sent: 0,
            now_ns: 0,
            ct,
            flows,
            ct_stats,
            l7: L7State::new(L7Capacity::default()),
            fqdn: Arc::default(),
            dns_refused: 0,
        }
    }

    /// Uses the node's shared learned FQDN table (the runtime gives every
    /// worker the same one).
    pub fn with_fqdn(mut self, fqdn: Arc<FqdnTable>) -> Self {
        self.fqdn = fqdn;
        self
    }

    /// The learned FQDN table.
    pub fn fqdn(&self) -> &Arc<FqdnTable> {
        &self.fqdn
    }

    /// DNS queries refused (answered REFUSED or dropped) by this worker.
    pub fn dns_refused(&self) -> u64 {
        self.dns_refused
    }

    /// Replaces the inspector pool by one for `slots` flows, sized by
    /// [`L7Capacity::for_flows`] (tests, tuning).
    pub fn with_l7_slots(self, slots: usize) -> Self {
        self.with_l7_capacity(L7Capacity::for_flows(slots))
    }

    /// Replaces the inline-L7 state by one of these sizes.
    pub fn with_l7_capacity(mut self, cap: L7Capacity) -> Self {
        self.l7 = L7State::new(cap);
        self
    }

    /// Inspector slots in use (flows under HTTP rules on this worker).
    pub fn l7_slots_in_use(&self) -> usize {
        self.l7.pool.in_use()
    }

    /// Inspector slots (the capacity of the hold queues the worker keeps).
    pub fn l7_slots(&self) -> usize {
        self.l7.pool.capacity()
    }

    /// Most frames one slot may hold (size of the worker's per-slot queue).
    pub fn l7_hold_max(&self) -> usize {
        usize::from(L7_HELD_PER_FLOW)
    }

    /// HTTP requests denied inline, and L7 frames refused for want of a slot.
    pub fn l7_counts(&self) -> (u64, u64) {
        (self.l7.denied, self.l7.no_slot)
    }

    /// What the inline L7 holds now, and its counters.
    pub fn l7_usage(&self) -> L7Usage {
        let l7 = &self.l7;
        L7Usage {
            flows: l7.pool.in_use(),
            flows_max: l7.pool.capacity(),
            head_buffers: l7.pool.buffers_in_use(),
            head_buffers_max: l7.pool.buffer_count(),
            held_frames: l7.held_total,
            held_frames_max: l7.held_max,
            denied: l7.denied,
            no_slot: l7.no_slot,
            busy: l7.busy,
        }
    }

    /// Takes the next slot whose held frames the worker must drop.
    pub fn l7_take_flush(&mut self) -> Option<u32> {
        self.l7.flush.pop()
    }

    /// Periodic L7 upkeep (the worker calls it every few ms, tests when
    /// they like), over the next [`L7_SWEEP`] slots: flows holding frames
    /// past the hold limit are denied (their held frames go to the flush
    /// list, the client's retransmission gets the 403); slots of flows
    /// whose conntrack entry is gone are freed. Allocation-free.
    pub fn l7_maintain(&mut self) {
        if self.l7.pool.in_use() == 0 {
            return;
        }
        let now = self.now_ns;
        let n = self.l7.meta.len();
        let start = self.l7.sweep;
        for step in 0..L7_SWEEP.min(n) {
            let slot = ((start + step) % n) as u32;
            let Some(key) = self.l7.meta.get(slot as usize).and_then(|m| m.key) else {
                continue;
            };
            if let Some(r) = self.l7.pool.expire(SlotId(slot), now) {
                self.l7.denied += 1;
                self.l7.push_flush(slot);
                self.flows.push(l7_event(now, &key, r, None));
            }
            if self.ct.peek(&key, now).is_none() {
                self.l7.free(slot);
            }
        }
        self.l7.sweep = (start + L7_SWEEP.min(n)) % n.max(1);
    }

    /// Sets the time of the packets to come (CLOCK_MONOTONIC ns; the worker
    /// calls this once per batch, tests whenever they like).
    pub fn set_now(&mut self, now_ns: u64) {
        self.now_ns = now_ns;
    }

    pub fn now(&self) -> u64 {
        self.now_ns
    }

    pub fn conntrack(&self) -> &Arc<Conntrack> {
        &self.ct
    }

    pub fn flows(&self) -> &Arc<FlowLog> {
        &self.flows
    }

    pub fn ct_stats(&self) -> &CtStats {
        &self.ct_stats
    }

    /// ICMP/ICMPv6 errors the pass built and returned as `Verdict::Tx` on the
    /// ingress port (the frame it answered was not forwarded).
    pub fn icmp_errors_sent(&self) -> u64 {
        self.icmp_errors_sent
    }
}

/// The flow a packet belongs to, as conntrack and policy will key it.
///
/// Ports are zero for protocols without them and for non-first fragments.
/// ICMP/ICMPv6: `sport` is the echo identifier for echo request/reply (zero
/// for other types), `dport` is `type << 8 | code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct FlowKey {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
}

/// Where a packet sits in a fragmented datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fragment {
    /// Not fragmented (an IPv6 atomic fragment counts as whole).
    Whole,
    /// Offset 0, more to come: L4 header checked, ports known.
    First,
    /// Offset > 0: no L4 header here; ports are zero.
    Later,
}

/// What [`parse`] learned about a frame. Later stages work from this and the
/// bytes; nothing here borrows the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parsed {
    pub key: FlowKey,
    /// IP header + payload, from the IP total/payload length (padding excluded).
    pub ip_len: usize,
    /// TTL or hop limit as received.
    pub ttl: u8,
    pub fragment: Fragment,
    /// IPv4 DF flag; always true for IPv6 (routers never fragment it).
    pub dont_frag: bool,
    /// The L4 message is an ICMP/ICMPv6 error (never answered with one).
    pub icmp_error: bool,
    /// TCP flags (0 for other protocols and non-first fragments); for SCTP
    /// the first chunk as TCP flags ([`conntrack::sctp_as_tcp_flags`]).
    pub tcp_flags: u8,
    /// Offset of the L4 header in the frame (0 for non-first fragments).
    pub l4_offset: usize,
    /// Where a fragment sits in its datagram (zeros when whole).
    pub frag: FragPos,
}

/// A fragment's identification, offset and length (see [`crate::frag`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FragPos {
    /// IPv4 identification, or the IPv6 fragment header's identification.
    pub ident: u32,
    /// Offset of the fragment's data in the datagram, in bytes.
    pub offset: u16,
    /// Bytes of fragment data this fragment carries.
    pub len: u16,
}

impl Parsed {
    /// Length of the frame to forward: Ethernet header + IP length.
    pub fn frame_len(&self) -> usize {
        ethernet::HEADER_LEN + self.ip_len
    }
}

/// Where [`route`] sends a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// Index of the destination endpoint in the snapshot.
    pub endpoint: u32,
    /// The port the destination pod sits behind.
    pub port: PortId,
    /// Destination MAC: the pod's own.
    pub dst_mac: Mac,
    /// Source MAC: the node-side end of the destination port.
    pub src_mac: Mac,
    /// MTU of the destination link (IP packet size).
    pub mtu: u16,
}

/// Runs one received frame through the pass. `buf` is the whole UMEM frame;
/// the received frame is `buf[..len]` (a `len` beyond `buf.len()` is clamped).
/// The pass may rewrite in place and may grow the frame up to `buf.len()`
/// (ICMP errors).
pub fn process(
    buf: &mut [u8],
    len: usize,
    ingress: PortId,
    snap: &Snapshot,
    st: &mut WorkerState,
) -> Verdict {
    match pass(buf, len, ingress, snap, st) {
        Break(v) | Continue(v) => v,
    }
}

fn pass(
    buf: &mut [u8],
    len: usize,
    ingress: PortId,
    snap: &Snapshot,
    st: &mut WorkerState,
) -> ControlFlow<Verdict, Verdict> {
    let len = len.min(buf.len());
    if let Some((t, tables)) = snap.tunnel() {
        if ingress == tables.port {
            return from_tunnel(buf, len, ingress, snap, st, t, tables);
        }
    }
    let mut pkt = parse(buf.get(..len).unwrap_or_default())?;
    let src_endpoint = check_source(&pkt, ingress, snap)?;
    match route(&pkt, snap)? {
        Next::Local(route) => {
            let dst = Some(route.endpoint);
            let need = policy(buf, &mut pkt, Some(src_endpoint), dst, None, snap, st)?;
            check_hop_limit(buf, &pkt, ingress, snap, st)?;
            check_mtu(buf, &pkt, route.mtu, ingress, snap, st)?;
            deliver(buf, &pkt, need, &route, Some(ingress), snap, st)
        }
        Next::Remote { peer, inner_mtu } => {
            // Egress of the local source here; the peer judges ingress.
            let need = policy(buf, &mut pkt, Some(src_endpoint), None, None, snap, st)?;
            check_hop_limit(buf, &pkt, ingress, snap, st)?;
            check_mtu(buf, &pkt, inner_mtu, ingress, snap, st)?;
            if let Need::Dns(need) = need {
                dns(buf, &pkt, need, Some(ingress), snap, st)?;
            }
            Continue(to_tunnel(buf, &pkt, peer, snap))
        }
    }
}

/// A frame from the underlay: decapsulate, then the inner frame goes
/// through the same stages as a pod's, from the sending peer: its source
/// must lie in that peer's pod CIDRs, it routes to a local pod only, and
/// the destination's ingress policy judges the identity the tunnel header
/// carried (the source address when it carried none). ICMP errors are not
/// sent back through the tunnel: TTL expiry and oversize drop.
fn from_tunnel(
    buf: &mut [u8],
    len: usize,
    ingress: PortId,
    snap: &Snapshot,
    st: &mut WorkerState,
    t: &TunnelSpec,
    tables: &TunnelTables,
) -> ControlFlow<Verdict, Verdict> {
    let d = encap::decapsulate(buf, len, t, tables)?;
    let mut pkt = parse(buf.get(..d.inner_len).unwrap_or_default())?;
    if tables.peer_for(pkt.key.src) != Some(d.peer) {
        return drop(DropReason::SourceSpoofed);
    }
    let Next::Local(route) = route(&pkt, snap)? else {
        // No transit between peers through this node.
        return drop(DropReason::NoRoute);
    };
    let need = policy(
        buf,
        &mut pkt,
        None,
        Some(route.endpoint),
        d.identity,
        snap,
        st,
    )?;
    check_hop_limit(buf, &pkt, ingress, snap, st)?;
    check_mtu(buf, &pkt, route.mtu, ingress, snap, st)?;
    // The client is behind a peer node: a 403 goes back encapsulated toward
    // it (see `l7`); the server gets its RST as for a local client.
    deliver(buf, &pkt, need, &route, None, snap, st)
}

/// The last stages toward a local pod: L7 inspection when the flow's rule
/// carries it, then the rewrite. `reply_port` is where weir's own replies
/// (REFUSED, 403) leave: the client's pod port, or `None` for a client
/// behind a peer node.
fn deliver(
    buf: &mut [u8],
    pkt: &Parsed,
    need: Need,
    route: &Route,
    reply_port: Option<PortId>,
    snap: &Snapshot,
    st: &mut WorkerState,
) -> ControlFlow<Verdict, Verdict> {
    let held = match need {
        Need::Http(need) => l7(buf, pkt, need, route, reply_port, snap, st)?,
        Need::Dns(need) => {
            dns(buf, pkt, need, reply_port, snap, st)?;
            L7Out::Pass
        }
        Need::None => L7Out::Pass,
    };
    Continue(held.apply(rewrite(buf, pkt, route)))
}

/// Stage 6 toward a peer node: the inner frame is rewritten as for a local
/// hop (inner MACs: our VTEP → the peer's VTEP, TTL − 1), then wrapped.
fn to_tunnel(buf: &mut [u8], pkt: &Parsed, peer: u32, snap: &Snapshot) -> Verdict {
    let Some((t, tables)) = snap.tunnel() else {
        return Verdict::Drop(DropReason::NoRoute);
    };
    let Some(p) = t.peers.get(peer as usize) else {
        return Verdict::Drop(DropReason::NoRoute);
    };
    let len = match rewrite_frame(buf, pkt, p.vtep_mac, t.vtep_mac) {
        Ok(len) => len,
        Err(v) => return v,
    };
    let identity = snap.policy().identity_if_known(pkt.key.src);
    let sport = encap::flow_sport(&pkt.key);
    match encap::encapsulate(buf, len, t, p, identity, sport) {
        Some(len) => Verdict::Tx {
            port: tables.port,
            len,
        },
        None => Verdict::Drop(DropReason::TooBig),
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

// ---------------------------------------------------------------- parse ----

/// Stage 1: validate Ethernet, IPv4/IPv6 (with IPv6 extension headers) and
/// the L4 header, and extract the [`FlowKey`].
pub fn parse(frame: &[u8]) -> ControlFlow<Verdict, Parsed> {
    let eth = or_drop(Frame::new_checked(frame), DropReason::FrameTooShort)?;
    match eth.ethertype() {
        ethertype::IPV4 => parse_ipv4(eth.payload()),
        ethertype::IPV6 => parse_ipv6(eth.payload()),
        _ => drop(DropReason::UnsupportedEtherType),
    }
}

fn parse_ipv4(bytes: &[u8]) -> ControlFlow<Verdict, Parsed> {
    let ip = or_drop(ipv4::Packet::new_checked(bytes), DropReason::Ipv4Malformed)?;
    if ip.version() != 4 {
        return drop(DropReason::Ipv4Malformed);
    }
    let fragment = if ip.frag_offset() != 0 {
        Fragment::Later
    } else if ip.more_frags() {
        Fragment::First
    } else {
        Fragment::Whole
    };
    let l4 = parse_l4(ip.protocol(), ip.payload(), fragment, Family::V4)?;
    Continue(Parsed {
        key: FlowKey {
            src: ip.src_addr().into(),
            dst: ip.dst_addr().into(),
            proto: ip.protocol(),
            sport: l4.sport,
            dport: l4.dport,
        },
        ip_len: usize::from(ip.total_len()),
        ttl: ip.ttl(),
        fragment,
        dont_frag: ip.dont_frag(),
        icmp_error: l4.icmp_error,
        tcp_flags: l4.tcp_flags,
        l4_offset: if fragment == Fragment::Later {
            0
        } else {
            ethernet::HEADER_LEN + ip.header_len()
        },
        frag: FragPos {
            ident: u32::from(ip.ident()),
            offset: ip.frag_offset(),
            len: ip.total_len().saturating_sub(ip.header_len() as u16),
        },
    })
}

fn parse_ipv6(bytes: &[u8]) -> ControlFlow<Verdict, Parsed> {
    let ip = or_drop(ipv6::Packet::new_checked(bytes), DropReason::Ipv6Malformed)?;
    if ip.version() != 6 {
        return drop(DropReason::Ipv6Malformed);
    }
    let upper = match ipv6::upper_layer(ip.next_header(), ip.payload()) {
        Ok(u) => u,
        Err(WireError::Unsupported) => return drop(DropReason::Ipv6Unsupported),
        Err(WireError::IncompleteChain) => return drop(DropReason::FragmentInvalid),
        Err(_) => return drop(DropReason::Ipv6Malformed),
    };
    let fragment = match upper.fragment {
        Some(f) if f.offset != 0 => Fragment::Later,
        Some(f) if f.more => Fragment::First,
        _ => Fragment::Whole,
    };
    let Some(l4_bytes) = ip.payload().get(upper.offset..) else {
        return drop(DropReason::Ipv6Malformed);
    };
    let l4 = parse_l4(upper.protocol, l4_bytes, fragment, Family::V6)?;
    Continue(Parsed {
        key: FlowKey {
            src: ip.src_addr().into(),
            dst: ip.dst_addr().into(),
            proto: upper.protocol,
            sport: l4.sport,
            dport: l4.dport,
        },
        ip_len: ip.total_len(),
        ttl: ip.hop_limit(),
        fragment,
        dont_frag: true,
        icmp_error: l4.icmp_error,
        tcp_flags: l4.tcp_flags,
        l4_offset: if fragment == Fragment::Later {
            0
        } else {
            ethernet::HEADER_LEN + ipv6::HEADER_LEN + upper.offset
        },
        frag: upper.fragment.map_or(FragPos::default(), |f| FragPos {
            ident: f.ident,
            offset: f.offset,
            len: u16::try_from(ip.payload().len().saturating_sub(f.data_at)).unwrap_or(u16::MAX),
        }),
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

#[derive(Default)]
struct L4 {
    sport: u16,
    dport: u16,
    icmp_error: bool,
    tcp_flags: u8,
}

/// Checks the L4 header length and reads ports / ICMP type. A non-first
/// fragment carries no L4 header. A first fragment's UDP length covers the
/// whole datagram, so only the 8-byte header is required there.
fn parse_l4(
    proto: u8,
    bytes: &[u8],
    fragment: Fragment,
    family: Family,
) -> ControlFlow<Verdict, L4> {
    if fragment == Fragment::Later {
        return Continue(L4::default());
    }
    // A first fragment too short for its transport header is the "tiny
    // fragment" of RFC 1858: the rest of the header would come in a later
    // fragment, unjudged.
    let trunc = if fragment == Fragment::First {
        DropReason::FragmentInvalid
    } else {
        DropReason::L4Truncated
    };
    let icmp_proto = match family {
        Family::V4 => ip_proto::ICMP,
        Family::V6 => ip_proto::ICMPV6,
    };
    match proto {
        ip_proto::TCP => {
            let t = or_drop(tcp::Packet::new_checked(bytes), trunc)?;
            Continue(L4 {
                sport: t.src_port(),
                dport: t.dst_port(),
                icmp_error: false,
                tcp_flags: t.flags(),
            })
        }
        ip_proto::UDP => {
            let u = if fragment == Fragment::First {
                let u = udp::Packet::new_unchecked(bytes);
                if bytes.len() < udp::HEADER_LEN || usize::from(u.length()) < udp::HEADER_LEN {
                    return drop(trunc);
                }
                u
            } else {
                or_drop(udp::Packet::new_checked(bytes), trunc)?
            };
            Continue(L4 {
                sport: u.src_port(),
                dport: u.dst_port(),
                ..L4::default()
            })
        }
        ip_proto::SCTP => {
            let c = or_drop(sctp::Packet::new_checked(bytes), trunc)?;
            Continue(L4 {
                sport: c.src_port(),
                dport: c.dst_port(),
                icmp_error: false,
                tcp_flags: conntrack::sctp_as_tcp_flags(c.first_chunk_type()),
            })
        }
        p if p == icmp_proto => {
            let i = or_drop(icmp::Packet::new_checked(bytes), trunc)?;
            let t = i.msg_type();
            let (is_echo, is_error) = match family {
                Family::V4 => (
                    t == icmp::v4::ECHO_REQUEST || t == icmp::v4::ECHO_REPLY,
                    icmp::v4::is_error(t),
                ),
                Family::V6 => (
                    t == icmp::v6::ECHO_REQUEST || t == icmp::v6::ECHO_REPLY,
                    icmp::v6::is_error(t),
                ),
            };
            Continue(L4 {
                sport: if is_echo { i.echo_ident() } else { 0 },
                dport: u16::from_be_bytes([t, i.code()]),
                icmp_error: is_error,
                tcp_flags: 0,
            })
        }
        _ => Continue(L4::default()),
    }
}

// -------------------------------------------------------- source, route ----

/// Stage 2: the frame came from a managed pod and carries its own address.
/// Returns the source endpoint's index.
fn check_source(pkt: &Parsed, ingress: PortId, snap: &Snapshot) -> ControlFlow<Verdict, u32> {
    let Some((idx, ep)) = snap.endpoint_on_port(ingress) else {
        return drop(DropReason::UnknownIngress);
    };
    let own = match pkt.key.src {
        IpAddr::V4(a) => ep.ipv4 == Some(a),
        IpAddr::V6(a) if ipv6::is_link_local(a) => return drop(DropReason::ToNode),
        IpAddr::V6(a) => ep.ipv6 == Some(a),
    };
    if !own {
        return drop(DropReason::SourceSpoofed);
    }
    Continue(idx)
}

/// Where a packet goes after the `route` stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// A pod on this node.
    Local(Route),
    /// A pod behind a peer node (index in the tunnel spec's peers), through
    /// the tunnel whose inner MTU is `inner_mtu`.
    Remote { peer: u32, inner_mtu: u16 },
}

/// Stage 3: multicast and node-bound traffic stop here; a local pod's
/// address routes to its port, a remote pod CIDR's to its peer node.
fn route(pkt: &Parsed, snap: &Snapshot) -> ControlFlow<Verdict, Next> {
    let found = match pkt.key.dst {
        IpAddr::V4(a) => {
            if a.is_multicast() || a.is_broadcast() {
                return drop(DropReason::Multicast);
            }
            if Some(a) == snap.spec.node_ipv4 || a.is_link_local() {
                return drop(DropReason::ToNode);
            }
            snap.endpoint_by_v4(a)
        }
        IpAddr::V6(a) => {
            if a.is_multicast() {
                return drop(DropReason::Multicast);
            }
            if Some(a) == snap.spec.node_ipv6 || ipv6::is_link_local(a) {
                return drop(DropReason::ToNode);
            }
            snap.endpoint_by_v6(a)
        }
    };
    let Some((endpoint, ep)) = found else {
        if let Some((_, t)) = snap.tunnel() {
            if let Some(peer) = t.peer_for(pkt.key.dst) {
                return Continue(Next::Remote {
                    peer,
                    inner_mtu: t.inner_mtu,
                });
            }
        }
        return drop(DropReason::NoRoute);
    };
    let Some(port) = snap.port(ep.port) else {
        return drop(DropReason::NoRoute);
    };
    Continue(Next::Local(Route {
        endpoint,
        port: ep.port,
        dst_mac: ep.mac,
        src_mac: port.mac,
        mtu: port.mtu,
    }))
}

// --------------------------------------------------------------- policy ----

/// Stage 3½: conntrack and policy (see the module doc). `src_ep` and
/// `dst_ep` are the packet's local endpoints (none for the remote side of
/// a tunnelled flow); `wire_id` the source identity a tunnel header carried.
///
/// Fragments (see [`crate::frag`]): a first fragment is judged as any
/// packet and its outcome recorded for its datagram; a later fragment
/// follows that outcome, and takes the flow's ports into its key (so the
/// later stages, the tunnel's outer source port included, see the flow).
fn policy(
    buf: &[u8],
    pkt: &mut Parsed,
    src_ep: Option<u32>,
    dst_ep: Option<u32>,
    wire_id: Option<Identity>,
    snap: &Snapshot,
    st: &mut WorkerState,
) -> ControlFlow<Verdict, Need> {
    match pkt.fragment {
        Fragment::Whole => flow_policy(buf, pkt, src_ep, dst_ep, wire_id, snap, st),
        Fragment::First => {
            let r = flow_policy(buf, pkt, src_ep, dst_ep, wire_id, snap, st);
            first_fragment(pkt, r, snap, st)
        }
        Fragment::Later => {
            later_fragment(pkt, snap, st)?;
            Continue(Need::None)
        }
    }
}

fn frag_key(pkt: &Parsed) -> FragKey {
    FragKey::new(pkt.key.src, pkt.key.dst, pkt.key.proto, pkt.frag.ident)
}

/// Records a first fragment's outcome `r` for its datagram; a datagram
/// poisoned by an overlapping fragment stays dropped.
fn first_fragment(
    pkt: &Parsed,
    r: ControlFlow<Verdict, Need>,
    snap: &Snapshot,
    st: &mut WorkerState,
) -> ControlFlow<Verdict, Need> {
    // Inspection needs whole messages: the first fragment of a flow under
    // HTTP rules, or of a DNS query under DNS rules, is dropped by the
    // later stages, and so are the rest of its datagram.
    let verdict = match r {
        Continue(Need::Http(_)) => Some(DropReason::L7OutOfOrder),
        Continue(Need::Dns(d)) if d.query => Some(DropReason::DnsMalformed),
        Continue(_) => None,
        Break(Verdict::Drop(reason)) => Some(reason),
        Break(_) => Some(DropReason::PolicyDenied),
    };
    let first = frag::First {
        sport: pkt.key.sport,
        dport: pkt.key.dport,
        proto: pkt.key.proto,
        generation: snap.policy().generation() as u32,
        verdict,
        end: pkt.frag.len,
    };
    let rec = st.ct.frags().first(&frag_key(pkt), first, st.now_ns);
    st.ct_stats.frag_datagrams.add(1);
    st.ct_stats.frag_evictions.add(u64::from(rec.evicted));
    match (rec.verdict, r) {
        (Some(DropReason::FragmentOverlap), _) => {
            fragment_event(st, pkt, DropReason::FragmentOverlap, snap);
            drop(DropReason::FragmentOverlap)
        }
        (_, r) => r,
    }
}

/// A later fragment follows its datagram's first fragment. If policy
/// changed since, the flow decides (judged again when it is stale).
fn later_fragment(
    pkt: &mut Parsed,
    snap: &Snapshot,
    st: &mut WorkerState,
) -> ControlFlow<Verdict, ()> {
    let now = st.now_ns;
    let fk = frag_key(pkt);
    let (sport, dport, proto, admitted) = match st.ct.frags().later(&fk, pkt.frag.offset, now) {
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
                fragment_event(st, pkt, reason, snap);
            }
            return drop(reason);
        }
    };
    pkt.key.sport = sport;
    pkt.key.dport = dport;
    pkt.key.proto = proto;
    let generation = snap.policy().generation();
    if admitted == generation as u32 {
        st.ct_stats.frag_followed.add(1);
        return Continue(());
    }
    let allowed = match st.ct.lookup(&pkt.key, generation, now) {
        Track::Pass { .. } => true,
        Track::Stale { orig, .. } => {
            st.ct_stats.rejudged.add(1);
            let (j, src, dst) = judge(snap, &orig, None, &st.fqdn, now);
            if j.allowed {
                st.ct.readmit(&orig, admission(&j, generation), now);
            } else {
                st.ct.revoke(&orig, generation, now);
                st.ct_stats.revoked.add(1);
                let why = Some(DropReason::PolicyDenied);
                let who = (src, dst, false);
                log_flow(st, &orig, FlowKind::Revoked, why, &j, generation, who);
            }
            j.allowed
        }
        Track::Denied | Track::Miss | Track::Invalid { .. } => false,
    };
    let verdict = (!allowed).then_some(DropReason::PolicyDenied);
    st.ct.frags().rejudged(&fk, generation as u32, verdict, now);
    if allowed {
        st.ct_stats.frag_followed.add(1);
        Continue(())
    } else {
        drop(DropReason::PolicyDenied)
    }
}

/// Logs a fragment dropped for a fragment reason (the flow is whatever the
/// fragment's key says: ports are zero when its first was never seen).
fn fragment_event(st: &WorkerState, pkt: &Parsed, reason: DropReason, snap: &Snapshot) {
    st.flows.push(FlowEvent {
        time_ns: st.now_ns,
        key: pkt.key,
        kind: FlowKind::Drop,
        allowed: false,
        reason: Some(reason),
        egress_rule: crate::policy::RuleId::NOT_APPLICABLE,
        ingress_rule: crate::policy::RuleId::NOT_APPLICABLE,
        audit: false,
        pickup: false,
        generation: snap.policy().generation(),
        src_endpoint: local_endpoint(snap, pkt.key.src),
        dst_endpoint: local_endpoint(snap, pkt.key.dst),
        l7: None,
    });
}

/// Conntrack and policy of one packet that carries its flow's ports.
fn flow_policy(
    buf: &[u8],
    pkt: &Parsed,
    src_ep: Option<u32>,
    dst_ep: Option<u32>,
    wire_id: Option<Identity>,
    snap: &Snapshot,
    st: &mut WorkerState,
) -> ControlFlow<Verdict, Need> {
    if pkt.icmp_error {
        return related(buf, pkt, snap, st).map_continue(|()| Need::None);
    }
    let pol = snap.policy();
    let generation = pol.generation();
    let now = st.now_ns;
    let tcp = pkt.key.proto == ip_proto::TCP;
    // SCTP goes through the TCP state machine (`conntrack::sctp_as_tcp_flags`).
    let stateful = tcp || pkt.key.proto == ip_proto::SCTP;
    let seg = if stateful && pkt.fragment != Fragment::Later {
        Seg::Tcp(pkt.tcp_flags)
    } else {
        Seg::Other
    };
    // At most a few rounds: another worker may insert or re-admit the same
    // flow between our look-up and our write.
    for _ in 0..3 {
        match st.ct.track(&pkt.key, seg, generation, now) {
            Track::Pass { dir, adm, .. } => {
                let l7 = tcp
                    && seg != Seg::Other
                    && dir == conntrack::Dir::Orig
                    && pol.has_l7()
                    && pol.rule_has_l7(adm.ingress_rule);
                if l7 {
                    return Continue(Need::Http(L7Need { set: None, wire_id }));
                }
                if pol.has_dns() && pol.rule_has_dns(adm.egress_rule) {
                    return Continue(Need::Dns(DnsNeed {
                        query: dir == conntrack::Dir::Orig,
                        set: None,
                    }));
                }
                return Continue(Need::None);
            }
            Track::Invalid { .. } => {
                st.ct_stats.invalid.add(1);
                return drop(DropReason::CtInvalid);
            }
            Track::Denied => return drop(DropReason::PolicyDenied),
            Track::Stale { orig, .. } => {
                st.ct_stats.rejudged.add(1);
                // The carried identity is the source's only when this
                // packet travels in the flow's original direction.
                let id = wire_id.filter(|_| orig == pkt.key);
                let (j, src, dst) = judge(snap, &orig, id, &st.fqdn, now);
                if !j.allowed {
                    st.ct.revoke(&pkt.key, generation, now);
                    st.ct_stats.revoked.add(1);
                    let why = Some(DropReason::PolicyDenied);
                    log_flow(
                        st,
                        &orig,
                        FlowKind::Revoked,
                        why,
                        &j,
                        generation,
                        (src, dst, false),
                    );
                    return drop(DropReason::PolicyDenied);
                }
                st.ct.readmit(&pkt.key, admission(&j, generation), now);
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
                    (&st.fqdn, now),
                );
                let (src, dst) = (src_ep, dst_ep);
                if !j.allowed {
                    let why = Some(DropReason::PolicyDenied);
                    log_flow(
                        st,
                        &pkt.key,
                        FlowKind::Drop,
                        why,
                        &j,
                        generation,
                        (src, dst, false),
                    );
                    return drop(DropReason::PolicyDenied);
                }
                // A RST for no known flow is forwarded (if allowed) but
                // creates nothing.
                if matches!(seg, Seg::Tcp(f) if f & tcp::flags::RST != 0) {
                    return Continue(Need::None);
                }
                let need = match (seg, j.ingress.l7, j.egress.dns) {
                    (Seg::Tcp(_), Some(set), _) if tcp => Need::Http(L7Need {
                        set: Some(set),
                        wire_id,
                    }),
                    (_, _, Some(set)) => Need::Dns(DnsNeed {
                        query: true,
                        set: Some(set),
                    }),
                    _ => Need::None,
                };
                let pickup = matches!(seg, Seg::Tcp(f) if f & tcp::flags::SYN == 0);
                match st.ct.insert(&pkt.key, seg, admission(&j, generation), now) {
                    Insert::Inserted { evicted } => {
                        st.ct_stats.inserts.add(1);
                        st.ct_stats.evictions.add(u64::from(evicted));
                        st.ct_stats.pickups.add(u64::from(pickup));
                        let who = (src, dst, pickup);
                        log_flow(st, &pkt.key, FlowKind::New, None, &j, generation, who);
                        return Continue(need);
                    }
                    Insert::Exists => {}
                    Insert::Full => {
                        st.ct_stats.table_full.add(1);
                        let why = Some(DropReason::CtTableFull);
                        log_flow(
                            st,
                            &pkt.key,
                            FlowKind::Drop,
                            why,
                            &j,
                            generation,
                            (src, dst, false),
                        );
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
fn related(
    buf: &[u8],
    pkt: &Parsed,
    snap: &Snapshot,
    st: &mut WorkerState,
) -> ControlFlow<Verdict, ()> {
    let v6 = pkt.key.src.is_ipv6();
    let quote = buf
        .get(pkt.l4_offset + icmp::HEADER_LEN..pkt.frame_len())
        .unwrap_or_default();
    let inner = match conntrack::quoted_key(quote, v6) {
        Some(k) if k.src == pkt.key.dst => k,
        _ => {
            st.ct_stats.invalid.add(1);
            return drop(DropReason::CtInvalid);
        }
    };
    let generation = snap.policy().generation();
    let now = st.now_ns;
    match st.ct.lookup(&inner, generation, now) {
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
            st.flows.push(ev);
            Continue(())
        }
        Track::Stale { orig, .. } => {
            st.ct_stats.rejudged.add(1);
            let (j, src, dst) = judge(snap, &orig, None, &st.fqdn, now);
            if j.allowed {
                st.ct.readmit(&orig, admission(&j, generation), now);
                return Continue(());
            }
            st.ct.revoke(&orig, generation, now);
            st.ct_stats.revoked.add(1);
            let why = Some(DropReason::PolicyDenied);
            log_flow(
                st,
                &orig,
                FlowKind::Revoked,
                why,
                &j,
                generation,
                (src, dst, false),
            );
            drop(DropReason::PolicyDenied)
        }
        Track::Denied => drop(DropReason::PolicyDenied),
        Track::Miss | Track::Invalid { .. } => {
            st.ct_stats.invalid.add(1);
            drop(DropReason::CtInvalid)
        }
    }
}

/// Judges `k` (a flow's original direction) with the snapshot's policy;
/// `src_id` is the source identity a tunnel header carried, if any.
fn judge(
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

fn local_endpoint(snap: &Snapshot, a: IpAddr) -> Option<u32> {
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

/// Queues a flow event; `reason` is `None` when the packet passed. A
/// TCP flow admitted without a SYN is flagged as a mid-stream pickup.
fn log_flow(
    st: &WorkerState,
    key: &FlowKey,
    kind: FlowKind,
    reason: Option<DropReason>,
    j: &Judgement,
    generation: u64,
    (src_endpoint, dst_endpoint, pickup): (Option<u32>, Option<u32>, bool),
) {
    st.flows.push(FlowEvent {
        time_ns: st.now_ns,
        key: *key,
        kind,
        allowed: reason.is_none(),
        reason,
        egress_rule: j.egress.rule,
        ingress_rule: j.ingress.rule,
        audit: j.egress.audit || j.ingress.audit,
        pickup,
        generation,
        src_endpoint,
        dst_endpoint,
        l7: None,
    });
}

// ------------------------------------------------------------------ L7 ----

/// A client→server TCP packet of a flow admitted under HTTP rules.
#[derive(Debug, Clone, Copy)]
struct L7Need {
    /// The rule set (known when the flow was judged by this packet).
    set: Option<u32>,
    /// The identity a tunnel header carried (to judge again).
    wire_id: Option<Identity>,
}

/// What the policy stage asks of the later stages.
#[derive(Debug, Clone, Copy)]
enum Need {
    None,
    /// A client→server TCP packet of a flow under HTTP rules.
    Http(L7Need),
    /// A packet of a flow under DNS rules.
    Dns(DnsNeed),
}

/// A packet of a flow admitted by an egress rule carrying DNS rules.
#[derive(Debug, Clone, Copy)]
struct DnsNeed {
    /// Client→server (a query); else server→client (a response).
    query: bool,
    /// The rule set (known when the flow was judged by this packet).
    set: Option<u32>,
}

/// What the L7 stage asks of the final verdict.
#[derive(Debug, Clone, Copy)]
enum L7Out {
    Pass,
    Hold(u32),
    Release(u32),
}

impl L7Out {
    fn apply(self, v: Verdict) -> Verdict {
        match (self, v) {
            (L7Out::Hold(slot), Verdict::Tx { port, len }) => Verdict::Hold { port, len, slot },
            (L7Out::Release(slot), Verdict::Tx { port, len }) => {
                Verdict::Release { port, len, slot }
            }
            (_, v) => v,
        }
    }
}

fn l7_event(now: u64, key: &FlowKey, r: crate::l7::L7Reason, note: Option<L7Note>) -> FlowEvent {
    FlowEvent {
        time_ns: now,
        key: *key,
        kind: FlowKind::Drop,
        allowed: false,
        reason: Some(DropReason::L7Denied),
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

fn dns_event(st: &WorkerState, key: &FlowKey, reason: DropReason, note: L7Note) -> FlowEvent {
    FlowEvent {
        reason: Some(reason),
        l7: Some(note),
        ..l7_event(st.now_ns, key, crate::l7::L7Reason::DnsRefused, None)
    }
}

/// Stage 5¾: DNS rules (docs/l7.md). A query (client→server) must be one
/// well-formed standard query whose name the flow's DNS rule set allows.
/// Refused over UDP: the query is rewritten in place into a REFUSED
/// response and sent back out of `reply_port` (`Verdict::Tx`); over TCP (or
/// with no reply port) it is dropped. A UDP response (server→client) to an
/// allowed name teaches the node's learned FQDN table the addresses it
/// carries for names some `toFQDNs` selector wants; it always passes.
fn dns(
    buf: &mut [u8],
    pkt: &Parsed,
    need: DnsNeed,
    reply_port: Option<PortId>,
    snap: &Snapshot,
    st: &mut WorkerState,
) -> ControlFlow<Verdict, ()> {
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
    if !need.query && (!udp || !pol.has_fqdn()) {
        // Responses only teach FQDN rules, and only over UDP.
        return Continue(());
    }
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
        if pol.fqdn_wanted(name) {
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
    if rules.allows(&q.qname) {
        return Continue(());
    }
    let mut name = [0u8; dns::MAX_NAME];
    let n = q.qname.write_dotted(&mut name).unwrap_or(0);
    let note = L7Note::new(crate::l7::L7Reason::DnsRefused)
        .with_request("DNS", std::str::from_utf8(&name[..n]).unwrap_or(""));
    st.dns_refused += 1;
    st.flows
        .push(dns_event(st, &pkt.key, DropReason::DnsRefused, note));
    if let (true, Some(port)) = (udp, reply_port) {
        if let Some(len) = refused_reply(buf, pkt, start, port, snap) {
            return Break(Verdict::Tx { port, len });
        }
    }
    drop(DropReason::DnsRefused)
}

/// Turns the UDP query frame in `buf` (DNS message at `start`) into the
/// REFUSED response back to the client: DNS header rewritten, addresses and
/// ports swapped, lengths and checksums recomputed, MACs from `port`.
/// Returns the frame length.
fn refused_reply(
    buf: &mut [u8],
    pkt: &Parsed,
    start: usize,
    port: PortId,
    snap: &Snapshot,
) -> Option<usize> {
    use crate::wire::checksum;
    let n = crate::l7::dns::refuse_in_place(buf.get_mut(start..pkt.frame_len())?).ok()?;
    let udp_len = u16::try_from(udp::HEADER_LEN + n).ok()?;
    let l4 = pkt.l4_offset;
    let ip = ethernet::HEADER_LEN;
    let (ethertype, pseudo) = match (pkt.key.src, pkt.key.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let hl = l4 - ip;
            let h = buf.get_mut(ip..l4)?;
            h[12..16].copy_from_slice(&d.octets());
            h[16..20].copy_from_slice(&s.octets());
            let total = u16::try_from(hl + usize::from(udp_len)).ok()?;
            h[2..4].copy_from_slice(&total.to_be_bytes());
            h[8] = 64;
            h[10..12].copy_from_slice(&[0, 0]);
            let c = !checksum::data(h);
            h[10..12].copy_from_slice(&c.to_be_bytes());
            (
                ethertype::IPV4,
                checksum::pseudo_header_v4(d, s, ip_proto::UDP, udp_len),
            )
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let h = buf.get_mut(ip..l4)?;
            h[8..24].copy_from_slice(&d.octets());
            h[24..40].copy_from_slice(&s.octets());
            let payload = u16::try_from(l4 - ip - ipv6::HEADER_LEN + usize::from(udp_len)).ok()?;
            h[4..6].copy_from_slice(&payload.to_be_bytes());
            h[7] = 64;
            (
                ethertype::IPV6,
                checksum::pseudo_header_v6(d, s, ip_proto::UDP, u32::from(udp_len)),
            )
        }
        _ => return None,
    };
    let u = buf.get_mut(l4..l4 + usize::from(udp_len))?;
    u[0..2].copy_from_slice(&pkt.key.dport.to_be_bytes());
    u[2..4].copy_from_slice(&pkt.key.sport.to_be_bytes());
    u[4..6].copy_from_slice(&udp_len.to_be_bytes());
    u[6..8].copy_from_slice(&[0, 0]);
    let c = !checksum::combine(&[pseudo, checksum::data(u)]);
    let c = if c == 0 { 0xffff } else { c };
    u[6..8].copy_from_slice(&c.to_be_bytes());
    reply_ethernet(buf, snap.port(port)?, ethertype)?;
    Some(l4 + usize::from(udp_len))
}

/// Stage 5½: inline HTTP inspection of the client→server stream (see
/// docs/l7.md for the hold/release contract). `reply_port` is where a 403
/// for the client goes (the ingress port; `None`: the client is behind the
/// tunnel, no 403).
fn l7(
    buf: &mut [u8],
    pkt: &Parsed,
    need: L7Need,
    route: &Route,
    reply_port: Option<PortId>,
    snap: &Snapshot,
    st: &mut WorkerState,
) -> ControlFlow<Verdict, L7Out> {
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
                ev.dst_endpoint = Some(route.endpoint);
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
            // The worker drops the held frames with this verdict; the slot
            // goes back now, and conntrack learns of the RST weir sends to
            // the server (the flow's later data drops as `l7-after-close`;
            // a new SYN on the tuple gets a fresh slot).
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
            ev.dst_endpoint = Some(route.endpoint);
            st.flows.push(ev);
            let server_next = if flags & tcp::flags::ACK != 0 { ack } else { 0 };
            let client_mac = buf
                .get(6..12)
                .and_then(|m| <[u8; 6]>::try_from(m).ok())
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
            // Where the 403 goes: out of the client's pod port, or — for a
            // client behind a peer node — encapsulated toward that peer
            // (inner MACs: our VTEP → the peer's VTEP).
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
                    }
                    _ => None,
                };
                if let Some(n) = built {
                    reply_len = n;
                    out_port = port;
                }
            }
            Break(Verdict::L7Deny {
                slot,
                reply_port: out_port,
                reply_len,
                rst_port: route.port,
                rst,
            })
        }
    }
}

// ------------------------------------------------------ hop limit, MTU ----

/// Stage 4: a packet that would leave with TTL/hop limit 0 is answered with
/// Time Exceeded (when allowed) instead of forwarded.
fn check_hop_limit(
    buf: &mut [u8],
    pkt: &Parsed,
    ingress: PortId,
    snap: &Snapshot,
    st: &mut WorkerState,
) -> ControlFlow<Verdict, ()> {
    if pkt.ttl > 1 {
        return Continue(());
    }
    Break(icmp_error(
        buf,
        pkt,
        ingress,
        snap,
        st,
        IcmpError::TimeExceeded,
        DropReason::TtlExceeded,
    ))
}

/// Stage 5: a packet bigger than the destination link's MTU is answered
/// with Fragmentation Needed / Packet Too Big (DF or IPv6) or dropped.
fn check_mtu(
    buf: &mut [u8],
    pkt: &Parsed,
    mtu: u16,
    ingress: PortId,
    snap: &Snapshot,
    st: &mut WorkerState,
) -> ControlFlow<Verdict, ()> {
    if pkt.ip_len <= usize::from(mtu) {
        return Continue(());
    }
    if !pkt.dont_frag {
        return drop(DropReason::TooBig);
    }
    Break(icmp_error(
        buf,
        pkt,
        ingress,
        snap,
        st,
        IcmpError::TooBig { mtu },
        DropReason::TooBig,
    ))
}

// -------------------------------------------------------------- rewrite ----

/// Stage 6: trim padding, TTL/hop limit − 1, MACs for the destination link.
fn rewrite(buf: &mut [u8], pkt: &Parsed, route: &Route) -> Verdict {
    match rewrite_frame(buf, pkt, route.dst_mac, route.src_mac) {
        Ok(len) => Verdict::Tx {
            port: route.port,
            len,
        },
        Err(v) => v,
    }
}

/// Trims padding, sets the MACs, decrements TTL / hop limit; returns the
/// frame length.
fn rewrite_frame(buf: &mut [u8], pkt: &Parsed, dst: Mac, src: Mac) -> Result<usize, Verdict> {
    let len = pkt.frame_len();
    let Some(frame) = buf.get_mut(..len) else {
        return Err(Verdict::Drop(DropReason::FrameTooShort));
    };
    let Ok(mut eth) = Frame::new_checked(frame) else {
        return Err(Verdict::Drop(DropReason::FrameTooShort));
    };
    eth.set_dst_addr(dst);
    eth.set_src_addr(src);
    match pkt.key.src {
        IpAddr::V4(_) => match ipv4::Packet::new_checked(eth.payload_mut()) {
            Ok(mut ip) => ip.decrement_ttl(),
            Err(_) => return Err(Verdict::Drop(DropReason::Ipv4Malformed)),
        },
        IpAddr::V6(_) => match ipv6::Packet::new_checked(eth.payload_mut()) {
            Ok(mut ip) => ip.set_hop_limit(pkt.ttl.saturating_sub(1)),
            Err(_) => return Err(Verdict::Drop(DropReason::Ipv6Malformed)),
        },
    }
    Ok(len)
}

// ----------------------------------------------------------- ICMP errors ----

#[derive(Clone, Copy)]
enum IcmpError {
    TimeExceeded,
    TooBig { mtu: u16 },
}

/// TTL of the IPv4 / hop limit of the IPv6 errors weir sends.
const ICMP_ERROR_TTL: u8 = 64;
/// DSCP CS6 (internetwork control), as Linux marks ICMP errors.
const ICMP_ERROR_TOS: u8 = 0xc0;

/// Replaces the frame in `buf` by an ICMP error addressed back to its sender
/// and returns the verdict that sends it out of `ingress`, or `Drop(reason)`
/// when no error may or can be sent.
fn icmp_error(
    buf: &mut [u8],
    pkt: &Parsed,
    ingress: PortId,
    snap: &Snapshot,
    st: &mut WorkerState,
    kind: IcmpError,
    reason: DropReason,
) -> Verdict {
    if pkt.icmp_error || pkt.fragment == Fragment::Later {
        return Verdict::Drop(reason);
    }
    let Some(port) = snap.port(ingress) else {
        return Verdict::Drop(reason);
    };
    let built = match pkt.key.src {
        IpAddr::V4(sender) => snap
            .spec
            .node_ipv4
            .and_then(|node| build_icmpv4_error(buf, pkt, port, node, sender, kind)),
        IpAddr::V6(sender) => snap
            .spec
            .node_ipv6
            .and_then(|node| build_icmpv6_error(buf, pkt, port, node, sender, kind)),
    };
    match built {
        Some(len) => {
            st.icmp_errors_sent += 1;
            Verdict::Tx { port: ingress, len }
        }
        None => Verdict::Drop(reason),
    }
}

/// Writes the reply's Ethernet header: back to the sender, from the port.
fn reply_ethernet(frame: &mut [u8], port: &Port, ethertype: u16) -> Option<()> {
    let mut eth = Frame::new_checked(frame).ok()?;
    let sender_mac = eth.src_addr();
    eth.set_dst_addr(sender_mac);
    eth.set_src_addr(port.mac);
    eth.set_ethertype(ethertype);
    Some(())
}

/// ICMPv4 error (RFC 792): quotes the original IP header + 8 bytes.
/// Returns the new frame length, or None if it does not fit in `buf`.
fn build_icmpv4_error(
    buf: &mut [u8],
    pkt: &Parsed,
    port: &Port,
    node: Ipv4Addr,
    sender: Ipv4Addr,
    kind: IcmpError,
) -> Option<usize> {
    const ETH: usize = ethernet::HEADER_LEN;
    const IP: usize = ipv4::HEADER_LEN;
    let orig_hl = ipv4::Packet::new_checked(buf.get(ETH..pkt.frame_len())?)
        .ok()?
        .header_len();
    let quote = (orig_hl + 8).min(pkt.ip_len);
    let icmp_len = icmp::HEADER_LEN + quote;
    let frame = buf.get_mut(..ETH + IP + icmp_len)?;
    frame.copy_within(ETH..ETH + quote, ETH + IP + icmp::HEADER_LEN);
    reply_ethernet(frame, port, ethertype::IPV4)?;

    let (ip_bytes, icmp_bytes) = frame.get_mut(ETH..)?.split_at_mut_checked(IP)?;
    let mut ip = ipv4::Packet::new_unchecked(ip_bytes);
    ip.set_version_and_header_len(IP);
    ip.set_dscp_ecn(ICMP_ERROR_TOS);
    ip.set_total_len((IP + icmp_len) as u16);
    ip.set_ident(0);
    ip.set_flags_and_offset(false, false, 0);
    ip.set_ttl(ICMP_ERROR_TTL);
    ip.set_protocol(ip_proto::ICMP);
    ip.set_src_addr(node);
    ip.set_dst_addr(sender);
    ip.fill_checksum();

    let mut msg = icmp::Packet::new_checked(icmp_bytes).ok()?;
    match kind {
        IcmpError::TimeExceeded => {
            msg.set_msg_type(icmp::v4::TIME_EXCEEDED);
            msg.set_code(icmp::v4::CODE_TTL_EXCEEDED);
            msg.set_rest_of_header(0);
        }
        IcmpError::TooBig { mtu } => {
            msg.set_msg_type(icmp::v4::DEST_UNREACHABLE);
            msg.set_code(icmp::v4::CODE_FRAG_NEEDED);
            msg.set_rest_of_header(u32::from(mtu));
        }
    }
    msg.fill_checksum_v4();
    Some(ETH + IP + icmp_len)
}

/// ICMPv6 error (RFC 4443): quotes as much of the original as keeps the
/// error within the IPv6 minimum MTU (1280) and the UMEM frame.
fn build_icmpv6_error(
    buf: &mut [u8],
    pkt: &Parsed,
    port: &Port,
    node: Ipv6Addr,
    sender: Ipv6Addr,
    kind: IcmpError,
) -> Option<usize> {
    const ETH: usize = ethernet::HEADER_LEN;
    const IP: usize = ipv6::HEADER_LEN;
    const HDRS: usize = ETH + IP + icmp::HEADER_LEN;
    let quote = pkt
        .ip_len
        .min(ipv6::MIN_MTU - IP - icmp::HEADER_LEN)
        .min(buf.len().saturating_sub(HDRS));
    if quote < ipv6::HEADER_LEN {
        return None;
    }
    let icmp_len = icmp::HEADER_LEN + quote;
    let frame = buf.get_mut(..HDRS + quote)?;
    frame.copy_within(ETH..ETH + quote, HDRS);
    reply_ethernet(frame, port, ethertype::IPV6)?;

    let (ip_bytes, icmp_bytes) = frame.get_mut(ETH..)?.split_at_mut_checked(IP)?;
    let mut ip = ipv6::Packet::new_unchecked(ip_bytes);
    ip.set_version_tc_flow(0, 0);
    ip.set_payload_len(icmp_len as u16);
    ip.set_next_header(ip_proto::ICMPV6);
    ip.set_hop_limit(ICMP_ERROR_TTL);
    ip.set_src_addr(node);
    ip.set_dst_addr(sender);

    let mut msg = icmp::Packet::new_checked(icmp_bytes).ok()?;
    match kind {
        IcmpError::TimeExceeded => {
            msg.set_msg_type(icmp::v6::TIME_EXCEEDED);
            msg.set_code(icmp::v6::CODE_HOP_LIMIT_EXCEEDED);
            msg.set_rest_of_header(0);
        }
        IcmpError::TooBig { mtu } => {
            msg.set_msg_type(icmp::v6::PACKET_TOO_BIG);
            msg.set_code(0);
            msg.set_rest_of_header(u32::from(mtu));
        }
    }
    msg.fill_checksum_v6(node, sender);
    Some(HDRS + quote)
}
