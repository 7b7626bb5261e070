//! The worker's state the pass works on: conntrack and flow-log handles,
//! counters, the time of the batch, and the inline-L7 slots.

use std::sync::Arc;

use serde::Serialize;

use super::l7::l7_event;
use super::FlowKey;
use crate::conntrack::{self, Conntrack, CtStats};
use crate::flows::FlowLog;
use crate::fqdn::FqdnTable;
use crate::l7::h2::{H2Inspector, H2Limits};
use crate::l7::{InspectorPool, Limits, SlotId};

/// Per-worker scratch, counters and handles of the pass: the node's shared
/// time of the current batch.
#[derive(Debug)]
pub struct WorkerState {
    pub(super) icmp_errors_sent: u64,
    /// New Service flows sent with a remapped source port (a clash with
    /// another ClusterIP's flow to the same backend, `Pass::clash_port`).
    pub(super) nat_port_remaps: u64,
    pub(super) now_ns: u64,
    pub(super) ct: Arc<Conntrack>,
    pub(super) flows: Arc<FlowLog>,
    pub(super) ct_stats: Arc<CtStats>,
    pub(super) l7: L7State,
    /// The node's learned FQDN table (shared by the workers).
    pub(super) fqdn: Arc<FqdnTable>,
    pub(super) dns_refused: u64,
    /// A frame answered in place (RST, ICMP) that also counts as a drop
    /// under this reason (`service-no-endpoints`); the worker takes it.
    pub(super) reply_drop: Option<crate::DropReason>,
    /// This worker's share of the SNAT port range: (index, workers). Worker
    /// `i` of `n` allocates only ports `p` with `p % n == i`, so no two
    /// workers ever hand out the same port.
    pub(super) snat_slice: (u16, u16),
    /// WireGuard between nodes (docs/encryption.md): the node's peers, and
    /// this worker's buffer to seal and open into (allocated once).
    pub(super) wg: Option<Arc<crate::wireguard::WgTable>>,
    pub(super) wg_scratch: Vec<u8>,
    /// This worker's established Service flows (`service_cache.rs`).
    pub(super) svc_cache: super::service_cache::ServiceCache,
    /// The caller seals and opens WireGuard messages per batch, grouped
    /// by peer (`batch_wireguard`); the seal stage 11 left to it, and the
    /// flag that this frame was already opened (both for one frame).
    pub(super) wg_batch: bool,
    pub(super) wg_seal: Option<super::tunnel::SealJob>,
    pub(super) wg_opened: bool,
    /// A conntrack hint set by the caller for the frame being judged
    /// ([`WorkerState::set_ct_hint`]; stage 0's own are in `stage0s`).
    pub(super) ct_hint: Option<crate::conntrack::CtHint>,
    /// What stage 0 learned about each frame of the batch
    /// ([`WorkerState::stage0_push`]): slots written in place, reused
    /// batch after batch (a [`super::Stage0`] is ~200 bytes: not moved
    /// per frame; the vector grows only when a batch is larger than any
    /// before), `stage0_n` of them written for this batch, and which of
    /// them is the frame being judged ([`WorkerState::stage0_for`]).
    pub(super) stage0s: Vec<super::Stage0>,
    pub(super) stage0_n: usize,
    pub(super) stage0_at: Option<usize>,
    /// How many frames ahead of the one being judged stage 0's first
    /// loads run ([`STAGE0_LEAD`]).
    pub(super) stage0_lead: usize,
    /// Whether batches run stage 0 (`--ct-prefetch`), and the flows it
    /// counted.
    pub(super) census: super::FlowCensus,
}

/// How many frames ahead of the one being judged stage 0's second step
/// runs ([`crate::conntrack::Conntrack::prefetch_entry`]): far enough
/// that the bucket line loaded by its first step has arrived, near enough
/// that the entry line it starts loading arrives before the frame is judged.
pub const STAGE0_AHEAD: usize = 4;

/// How many frames ahead of the one being judged stage 0 starts loading a
/// frame's bucket and home-way lines: the batch's first `STAGE0_LEAD`
/// frames while stage 0 parses them, each later one while the pass judges
/// the frame `STAGE0_LEAD` before it.
/// Loading the whole batch's lines at once (as stage 0 did first) kept
/// more loads in flight than the core has room for: at 1M flows the
/// parse of stage 0 waited on them (docs/performance.md, "stage 0
/// pipelined"). Above [`STAGE0_AHEAD`], so that a bucket line has
/// `STAGE0_LEAD - STAGE0_AHEAD` frames to arrive before the second step
/// reads its tags (with a lead of 4 or less the second step found them
/// missing and the 1M-flow rate fell by a third).
pub const STAGE0_LEAD: usize = 8;

/// Flows under HTTP rules one worker inspects at once, by default.
pub const DEFAULT_L7_MAX_FLOWS: usize = 16384;
/// Inspector slots per worker by default (the old name of
/// [`DEFAULT_L7_MAX_FLOWS`]).
pub const L7_SLOTS: usize = DEFAULT_L7_MAX_FLOWS;
/// Most frames one flow may hold: with TCP flags known, the inspector holds
/// at most the one frame that carries the final CR of a head.
pub(super) const L7_HELD_PER_FLOW: u16 = 2;

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
    /// Segments dropped for want of a head buffer or hold room (or of an
    /// HTTP/2 inspector).
    pub busy: u64,
    /// HTTP/2 inspectors lent to connections now.
    pub h2_flows: usize,
    /// HTTP/2 streams refused in place (their `:method` rewritten; the
    /// connection went on), also counted in `denied`.
    pub h2_streams_refused: u64,
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
pub(super) struct L7State {
    pub(super) pool: InspectorPool,
    /// Original-direction key → slot.
    pub(super) by_key: std::collections::HashMap<FlowKey, u32>,
    pub(super) meta: Vec<SlotMeta>,
    /// Slots whose held frames must be dropped (expired, flow gone,
    /// restarted); the worker drains this after every pass and sweep.
    pub(super) flush: Vec<u32>,
    /// Frames held by all slots, and the most allowed.
    pub(super) held_total: usize,
    pub(super) held_max: usize,
    /// Where the next upkeep sweep starts.
    pub(super) sweep: usize,
    pub(super) denied: u64,
    pub(super) no_slot: u64,
    pub(super) busy: u64,
    /// Per slot: the last allowed request head whose response status the
    /// flow log still waits for (see `Pass::http_response`).
    pub(super) pending: Vec<Option<crate::flows::L7Note>>,
    /// HTTP/2 inspectors, lent to flows whose client opened with the h2c
    /// preface (docs/l7.md, "HTTP/2").
    pub(super) h2: H2Slots,
    /// HTTP/2 streams refused in place (docs/l7.md).
    pub(super) h2_refused: u64,
}

/// Most HTTP/2 connections under HTTP rules open at once per worker (each
/// inspector owns ~38 KiB: header block, HPACK table, decoded fields); a
/// further one is `l7-busy` until one ends.
pub const L7_H2_MAX: usize = 64;

/// HTTP/2 inspectors lent to slots.
#[derive(Debug)]
pub(super) struct H2Slots {
    /// Slot → inspector index (`u32::MAX`: an HTTP/1 flow).
    pub(super) of_slot: Vec<u32>,
    pub(super) pool: Vec<H2Inspector>,
    pub(super) free: Vec<u32>,
}

impl H2Slots {
    fn new(slots: usize, n: usize) -> Self {
        H2Slots {
            of_slot: vec![u32::MAX; slots],
            pool: (0..n)
                .map(|_| H2Inspector::new(H2Limits::default()))
                .collect(),
            free: (0..n as u32).rev().collect(),
        }
    }

    /// The inspector lent to `slot`, if any.
    pub(super) fn of(&self, slot: u32) -> Option<u32> {
        self.of_slot
            .get(slot as usize)
            .copied()
            .filter(|&i| i != u32::MAX)
    }

    /// Lends an inspector to `slot`, started at `first_seq`.
    pub(super) fn acquire(&mut self, slot: u32, first_seq: u32) -> Option<u32> {
        let i = self.free.pop()?;
        if let (Some(o), Some(insp)) = (
            self.of_slot.get_mut(slot as usize),
            self.pool.get_mut(i as usize),
        ) {
            *o = i;
            insp.start(first_seq);
            Some(i)
        } else {
            self.free.push(i);
            None
        }
    }

    /// Gives `slot`'s inspector back (no-op for an HTTP/1 flow).
    pub(super) fn release(&mut self, slot: u32) {
        if let Some(i) = self.of(slot) {
            self.of_slot[slot as usize] = u32::MAX;
            self.free.push(i);
        }
    }

    pub(super) fn in_use(&self) -> usize {
        self.pool.len() - self.free.len()
    }
}

#[derive(Debug, Clone, Copy)]
pub(super) struct SlotMeta {
    pub(super) key: Option<FlowKey>,
    pub(super) set: u32,
    pub(super) generation: u64,
    pub(super) held: u32,
    /// A split pipelined deny (docs/l7.md): the client's ACK number in the
    /// split segment and when it came.
    pub(super) split: Option<(u32, u64)>,
}

/// Slots the upkeep looks at per call (every 5 ms: 16 384 slots in 160 ms).
const L7_SWEEP: usize = 512;

impl L7State {
    pub(super) fn new(cap: L7Capacity) -> Self {
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
                    split: None,
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
            pending: vec![None; slots],
            h2: H2Slots::new(slots, slots.min(L7_H2_MAX)),
            h2_refused: 0,
        }
    }

    pub(super) fn set_held(&mut self, slot: u32, n: u32) {
        if let Some(m) = self.meta.get_mut(slot as usize) {
            self.held_total = (self.held_total + n as usize).saturating_sub(m.held as usize);
            m.held = n;
        }
    }

    pub(super) fn push_flush(&mut self, slot: u32) {
        let held = self.meta.get(slot as usize).map_or(0, |m| m.held);
        if held > 0 && self.flush.len() < self.flush.capacity() {
            self.flush.push(slot);
        }
        self.set_held(slot, 0);
    }

    /// A client's SYN opens an inspected flow (HTTP/TLS rules, or the
    /// server-name check of FQDN egress): a slot for `key`, its inspector
    /// started at the client's first data byte (`isn + 1`), its pending
    /// record and rule set reset. `None`: at the limit (the caller refuses
    /// the flow and counts it).
    pub(super) fn open_slot(&mut self, key: FlowKey, isn: u32) -> Option<u32> {
        let SlotId(slot) = self.pool.acquire()?;
        if let Some(i) = self.pool.get(SlotId(slot)) {
            i.start(isn.wrapping_add(1));
        }
        self.by_key.insert(key, slot);
        if let Some(p) = self.pending.get_mut(slot as usize) {
            *p = None;
        }
        if let Some(m) = self.meta.get_mut(slot as usize) {
            *m = SlotMeta {
                key: Some(key),
                set: 0,
                generation: u64::MAX,
                held: 0,
                split: None,
            };
        }
        Some(slot)
    }

    pub(super) fn free(&mut self, slot: u32) {
        self.h2.release(slot);
        self.push_flush(slot);
        if let Some(p) = self.pending.get_mut(slot as usize) {
            *p = None;
        }
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
        Self::standalone(L7Capacity::default())
    }

    /// [`new`](Self::new) with an inline-L7 state of these sizes, built once
    /// (`new().with_l7_capacity(..)` first builds the default one, tens of
    /// MB: fuzz targets and benchmarks that make many states use this).
    pub fn standalone(cap: L7Capacity) -> Self {
        Self::shared_with_l7(
            Arc::new(Conntrack::new(
                STANDALONE_CONNTRACK_SIZE,
                conntrack::Timeouts::default(),
            )),
            Arc::new(FlowLog::default()),
            Arc::default(),
            cap,
        )
    }

    /// [`standalone`](Self::standalone) with every table small: a private
    /// conntrack table (and its NAT and fragment tables) of at least
    /// `conntrack` entries, a flow log of `flow_log` events. For fuzz
    /// targets, which build a fresh state per input: the default tables
    /// are a few MB to allocate and zero each time, most of a short
    /// input's cost; small tables also fill, so their full paths run.
    pub fn standalone_sized(conntrack: usize, flow_log: usize, cap: L7Capacity) -> Self {
        let ct = Conntrack::with_frag_table(
            conntrack,
            conntrack::Timeouts::default(),
            crate::frag::FragTable::new(conntrack, crate::frag::DEFAULT_TIMEOUT),
        );
        Self::shared_with_l7(
            Arc::new(ct),
            Arc::new(FlowLog::new(flow_log)),
            Arc::default(),
            cap,
        )
    }

    /// A worker state on the node's shared table, with this worker's flow
    /// log and conntrack counters (also held by the runtime, which reads them).
    pub fn with_shared(ct: Arc<Conntrack>, flows: Arc<FlowLog>, ct_stats: Arc<CtStats>) -> Self {
        Self::shared_with_l7(ct, flows, ct_stats, L7Capacity::default())
    }

    fn shared_with_l7(
        ct: Arc<Conntrack>,
        flows: Arc<FlowLog>,
        ct_stats: Arc<CtStats>,
        cap: L7Capacity,
    ) -> Self {
        WorkerState {
            icmp_errors_sent: 0,
            nat_port_remaps: 0,
            now_ns: 0,
            ct,
            flows,
            ct_stats,
            l7: L7State::new(cap),
            fqdn: Arc::default(),
            dns_refused: 0,
            reply_drop: None,
            snat_slice: (0, 1),
            wg: None,
            wg_scratch: Vec::new(),
            svc_cache: Default::default(),
            wg_batch: false,
            wg_seal: None,
            wg_opened: false,
            ct_hint: None,
            stage0s: vec![super::Stage0::EMPTY; 64],
            stage0_n: 0,
            stage0_at: None,
            stage0_lead: STAGE0_LEAD,
            census: super::FlowCensus::new(weir_model::status::CtPrefetch::Auto),
        }
    }

    /// The hint [`super::prefetch_hint`] gave for the next frame the pass
    /// judges (`None`: it was not prefetched). The conntrack lookup uses it
    /// only if the frame's key is the hinted one.
    pub fn set_ct_hint(&mut self, hint: Option<crate::conntrack::CtHint>) {
        self.ct_hint = hint;
        self.stage0_at = None;
    }

    /// How far ahead stage 0 loads lines ([`STAGE0_LEAD`], the default;
    /// at least [`STAGE0_AHEAD`] + 1). For comparisons (`conntrack_bench`):
    /// a batch's size or more loads the whole batch's lines up front.
    pub fn set_stage0_lead(&mut self, frames: usize) {
        self.stage0_lead = frames.max(STAGE0_AHEAD + 1);
    }

    /// When batches run stage 0 (`--ct-prefetch`; a new census).
    pub fn set_ct_prefetch(&mut self, mode: weir_model::status::CtPrefetch) {
        self.census = super::FlowCensus::new(mode);
    }

    /// Once per batch, before stage 0: whether this batch runs it (the
    /// census's decision, [`super::FlowCensus::wanted`]).
    #[inline]
    pub fn stage0_wanted(&mut self) -> bool {
        self.census.wanted()
    }

    /// The conntrack prefetch now and the census's last count.
    pub fn ct_prefetch_status(&self) -> weir_model::status::CtPrefetchStatus {
        self.census.status()
    }

    /// Stage 0 over a new batch: forgets the last batch's frames.
    pub fn stage0_clear(&mut self) {
        self.stage0_n = 0;
        self.stage0_at = None;
        self.ct_hint = None;
    }

    /// Stage 0 ([`super::stage0`]) for the batch's next frame (index: the
    /// number of frames pushed since [`stage0_clear`](Self::stage0_clear)),
    /// written in place into that frame's slot.
    pub fn stage0_push(&mut self, frame: &[u8]) {
        let i = self.stage0_n;
        if i == self.stage0s.len() {
            // A batch larger than any before (not per packet).
            self.stage0s.push(super::Stage0::EMPTY);
        }
        if let Some(slot) = self.stage0s.get_mut(i) {
            super::prefetch::stage0_into(frame, &self.ct, slot, i < self.stage0_lead);
            if let Some(s) = slot.get() {
                self.census.record(s.ct_hint().hash());
            }
            self.stage0_n = i + 1;
        }
    }

    /// The next frame the pass judges is the batch's `i`-th (`None`, or a
    /// frame stage 0 did not push or prefetch: no hint). Its conntrack hint
    /// goes to the lookup (as [`set_ct_hint`](Self::set_ct_hint)) and its
    /// parse to stage 2, which uses it only if the frame is still the
    /// bytes stage 0 parsed ([`super::Stage0::parsed_for`]).
    pub fn stage0_for(&mut self, i: Option<usize>) {
        self.stage0_at = i.filter(|&i| i < self.stage0_n);
        self.ct_hint = None;
        // Stage 0's second step for the frame STAGE0_AHEAD further on.
        let ahead = i.map(|i| i + STAGE0_AHEAD).filter(|&a| a < self.stage0_n);
        if let Some(s) = ahead.and_then(|a| self.stage0s.get(a)?.get()) {
            self.ct.prefetch_entry(s.ct_hint());
        }
        // The first step for the frame `stage0_lead` further on.
        let lead = i
            .map(|i| i + self.stage0_lead)
            .filter(|&a| a < self.stage0_n);
        if let Some(s) = lead.and_then(|a| self.stage0s.get(a)?.get()) {
            self.ct.prefetch_lines(s.ct_hint());
        }
    }

    /// [`stage0_for`](Self::stage0_for) with a hint made by the caller
    /// ([`super::stage0`], on this frame or, in tests, on another one).
    pub fn set_stage0(&mut self, hint: Option<super::Stage0>) {
        self.stage0_clear();
        if let (Some(h), Some(slot)) = (hint, self.stage0s.first_mut()) {
            *slot = h;
            self.stage0_n = 1;
        }
        self.stage0_for(Some(0));
    }

    /// Stage 0's result for the frame being judged, if any.
    #[inline]
    pub(super) fn stage0(&self) -> Option<&super::Stage0> {
        self.stage0s.get(self.stage0_at?)?.get()
    }

    /// The conntrack hint for the frame being judged: stage 0's, or the
    /// caller's ([`set_ct_hint`](Self::set_ct_hint)).
    #[inline]
    pub(super) fn ct_hint(&self) -> Option<&crate::conntrack::CtHint> {
        match self.stage0() {
            Some(s) => Some(s.ct_hint()),
            None => self.ct_hint.as_ref(),
        }
    }

    /// This worker is worker `index` of `workers`: it allocates SNAT ports
    /// of its own share only (see docs/egress.md).
    pub fn with_snat_slice(mut self, index: usize, workers: usize) -> Self {
        let n = workers.clamp(1, 64) as u16;
        self.snat_slice = ((index as u16) % n, n);
        self
    }

    /// Encrypts traffic to peer nodes with WireGuard (docs/encryption.md):
    /// every frame to or from a peer goes through `wg`.
    pub fn with_wireguard(mut self, wg: Arc<crate::wireguard::WgTable>) -> Self {
        self.wg = Some(wg);
        self.wg_scratch = vec![0; 65536];
        self
    }

    /// The caller (a worker) seals and opens WireGuard messages per batch,
    /// taking each peer's lock once per batch (docs/encryption.md): stage
    /// 11 leaves its seal in [`Self::take_wireguard_seal`] (the frame, in
    /// clear, must not leave before `pass::seal_deferred` sealed it), and
    /// frames the caller opened (`pass::open_deferred`) are marked with
    /// [`Self::wireguard_opened`] before the pass runs on them.
    pub fn batch_wireguard(mut self) -> Self {
        self.wg_batch = true;
        self
    }

    /// The node's WireGuard peers, when WireGuard is on.
    pub fn wireguard(&self) -> Option<&Arc<crate::wireguard::WgTable>> {
        self.wg.as_ref()
    }

    /// The seal the last frame's stage 11 left to the caller (taken).
    pub fn take_wireguard_seal(&mut self) -> Option<super::tunnel::SealJob> {
        self.wg_seal.take()
    }

    /// The next frame given to the pass was opened by the caller
    /// (`pass::open_deferred`): stage 1 only decapsulates it.
    pub fn wireguard_opened(&mut self) {
        self.wg_opened = true;
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

    /// The drop reason of the last frame the pass answered in place
    /// instead of forwarding (taken: counted once).
    pub fn take_reply_drop(&mut self) -> Option<crate::DropReason> {
        self.reply_drop.take()
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
            h2_flows: l7.h2.in_use(),
            h2_streams_refused: l7.h2_refused,
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

    /// New Service flows whose source port was remapped because their reply
    /// tuple clashed with another frontend's flow (docs/services.md).
    pub fn nat_port_remaps(&self) -> u64 {
        self.nat_port_remaps
    }
}
