//! One pinned worker: its UMEM, the sockets of the queues it serves, and the
//! batch loop that runs every frame through [`pass::process`].
//!
//! Per batch (one "round"): load the snapshot once; reap completions into the
//! free list; restore every fill ring to its floor; take up to `batch`
//! descriptors from each socket and top its fill ring up at once (to a
//! target that grows with the socket's demand, see [`crate::budget`]); run
//! the pass on each frame; collect TX descriptors per destination
//! socket and produce them to its TX ring once per source socket; at the end
//! of the round kick each TX socket that got frames (in copy mode the kick
//! does the transmit, at most 32 frames per kick: a socket is kicked again,
//! within the round and in later rounds, until its TX ring is drained). Nothing on this path allocates, locks, or makes a
//! syscall other than the kicks and, when idle, `poll`.
//!
//! Sockets arrive and leave through a channel the worker drains between
//! rounds ([`Control`]): the control thread creates a socket on the worker's
//! UMEM (socket creation is serialised on the UMEM by xsk-rs), registers its
//! fd in the XSKMAP and hands it over; on removal the control thread clears
//! the XSKMAP entry first, then the worker deletes the socket and reclaims
//! every frame its ledger shows lent through it.
#![forbid(unsafe_code)]

use std::ops::ControlFlow::{Break, Continue};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::{ArcSwap, Cache};
use crossbeam::channel::{Receiver, Sender, TryRecvError};
use hdrhistogram::Histogram;
use xsk_rs::FrameDesc;

use crate::budget::FrameBudget;
use crate::coalesce::Coalesce;
use crate::pass::{self, WorkerState};
use crate::runtime::PollMode;
use crate::stats::{self, KernelDrops, WorkerStats};
use crate::xsk::{self, Frames, HeldFrame, WorkerUmem, XskSocket};
use crate::{DropReason, PortId, Snapshot, Verdict};

#[path = "multibuf.rs"]
pub mod multibuf;

/// What the control thread tells a worker between rounds.
#[derive(Debug)]
pub enum Control {
    /// Serve this socket: fill its fill ring to the floor, then answer on
    /// the channel (the control thread registers it in its port's XSKMAP
    /// after that).
    Add(Box<XskSocket>, Sender<()>),
    /// Stop serving every socket on this interface and reclaim its frames
    /// (the XSKMAP entries were cleared before this is sent).
    Remove(String),
}

/// Tuning of a worker's loop.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub batch: usize,
    pub poll: PollMode,
    /// Adaptive: empty rounds before the worker may sleep...
    pub idle_rounds: u32,
    /// ...and time without traffic before it does.
    pub idle_after: Duration,
    /// Adaptive: yield the core on every empty round until then.
    pub idle_yield: bool,
    /// Longest sleep in `poll`; bounds how late a stop or a new socket is seen.
    pub sleep_ms: i32,
    /// How many frames each socket's fill ring gets (the UMEM's plan).
    pub budget: FrameBudget,
    /// Record the latency breakdown per batch (RX wait, pass, TX kick;
    /// `weir up --latency-breakdown`). Off: the round tests one `Option`
    /// per batch and reads no extra clock.
    pub breakdown: bool,
    /// `--busy-poll`: drive every socket's NAPI poll once a round
    /// ([`XskSocket::busy_poll`]) before looking at its RX ring.
    pub busy_poll: bool,
    /// Adaptive: longest sleep after a round that took fewer than half a
    /// batch (`--coalesce-us`, [`crate::coalesce`]), µs; 0: off.
    pub coalesce_us: u32,
    /// When batches run stage 0, the conntrack prefetch (`--ct-prefetch`).
    pub ct_prefetch: weir_model::status::CtPrefetch,
}

const NO_SLOT: u16 = u16::MAX;

/// Publish intervals (of [`stats::PUBLISH_EVERY`]) without traffic after
/// which a socket's fill target decays to the floor: 8 × 250 ms = 2 s.
const QUIET_INTERVALS: u32 = 8;

/// Kicks per TX socket per round (in copy mode each sends up to the
/// socket's TX budget: [`xsk::TX_PER_ROUND`] with Linux 6.17's
/// `XDP_MAX_TX_SKB_BUDGET`, 32 before), and at most about
/// [`xsk::TX_PER_ROUND`] frames in all.
const MAX_KICKS: u32 = 8;

struct Slot {
    sock: XskSocket,
    /// The port this socket's interface is in the worker's snapshot.
    port: Option<PortId>,
    /// Frames on the fill ring (lent, not yet received back).
    in_fill: usize,
    /// Frames on the TX or completion ring (lent, not yet reaped).
    in_tx: usize,
    /// The fill ring's target: the floor, more while the socket is busy.
    target: usize,
    /// Frames received since the last publish.
    rx_recent: u64,
    /// Publish intervals in a row without a frame received (the target
    /// decays to the floor after [`QUIET_INTERVALS`]).
    quiet: u32,
    /// TX descriptors collected for this socket, flushed after each source.
    tx: Vec<HeldFrame>,
    kick: bool,
}

pub struct Worker {
    id: usize,
    cfg: WorkerConfig,
    umem: WorkerUmem,
    frames: Frames,
    slots: Vec<Option<Slot>>,
    ctl: Receiver<Control>,
    snap: Cache<Arc<ArcSwap<Snapshot>>, Arc<Snapshot>>,
    cur: Arc<Snapshot>,
    stop: Arc<AtomicBool>,
    stats: Arc<WorkerStats>,
    state: WorkerState,
    hist: Histogram<u64>,
    /// PortId -> slot that transmits on that port.
    port_slot: Vec<u16>,
    /// Slots that got TX descriptors from the current source socket. A slot's
    /// `kick` stays set while its TX ring is not empty.
    touched: Vec<u16>,
    rx_buf: Vec<HeldFrame>,
    scratch: Vec<FrameDesc>,
    pollfds: Vec<libc::pollfd>,
    /// Frames every socket keeps on its fill ring ([`FrameBudget::floor_for`]
    /// the live sockets).
    floor: usize,
    /// Kernel drops of sockets already removed.
    kernel_retired: KernelDrops,
    /// Some TX ring still had frames after its kicks: kick again next round.
    kick_pending: bool,
    /// Per L7 inspector slot: the frames held for that flow (descriptor,
    /// destination port), in arrival order. Preallocated.
    held: Vec<Vec<(HeldFrame, PortId)>>,
    last_l7_upkeep: u64,
    /// Where the worker's time went, summed per round (stored in `stats`
    /// per publish).
    time: TimeAccount,
    /// The latency breakdown's histograms, when on (boxed: the worker's
    /// hot fields stay together when off).
    breakdown: Option<Box<Breakdown>>,
    /// WireGuard per batch (docs/encryption.md), all preallocated to the
    /// batch size: what the open before the pass made of each received
    /// frame, the frames stage 11 left to seal (with their port and the
    /// result), and the peer of each (`WgTable::grouped`'s input).
    wg_in: Vec<WgIn>,
    wg_out: Vec<(HeldFrame, PortId, pass::SealJob, Result<usize, DropReason>)>,
    wg_addrs: Vec<Option<std::net::Ipv4Addr>>,
    /// Multi-buffer (the UMEM's sockets bound `XDP_USE_SG`): the batch's
    /// chains and the linear buffer ([`multibuf`]). `None`: off.
    chains: Option<Box<multibuf::Chains>>,
}

/// A received frame after the batch's WireGuard open.
#[derive(Debug, Clone, Copy)]
enum WgIn {
    /// Not a WireGuard message to open: the pass takes it whole.
    Pass,
    /// Opened: it holds the peer's overlay datagram.
    Opened,
    /// Done: a handshake reply to send, or a drop.
    Done(Verdict),
}

/// Per-batch stage histograms of the latency breakdown, in ns (the stages
/// of [`weir_model::status::BREAKDOWN_STAGES`], in that order).
struct Breakdown {
    stages: [Histogram<u64>; 3],
    /// When the worker last looked at its RX rings: the previous round's
    /// clock read, or the wake-up from `poll`.
    last_look: u64,
}

impl Breakdown {
    const RX_WAIT: usize = 0;
    const PASS: usize = 1;
    const TX_KICK: usize = 2;

    fn new() -> Box<Breakdown> {
        Box::new(Breakdown {
            stages: std::array::from_fn(|_| stats::new_latency_histogram()),
            last_look: crate::runtime::monotonic_ns(),
        })
    }

    #[inline]
    fn record(&mut self, stage: usize, ns: u64) {
        stats::record_latency(&mut self.stages[stage], ns, 1);
    }
}

/// What a round was, for the time accounting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RoundKind {
    Busy,
    Idle,
    Slept,
    /// The rest of a busy round after its coalescing sleep.
    BusyTail,
}

/// Per-round time accounting, in the worker's locals: the wall time from
/// one round's clock read to the next goes to the kind of the earlier round
/// (no extra clock read: the round reads the clock anyway).
#[derive(Debug, Default, Clone, Copy)]
struct TimeAccount {
    busy_ns: u64,
    busy_rounds: u64,
    idle_ns: u64,
    empty_rounds: u64,
    sleep_ns: u64,
    rx_visits: u64,
    full_batches: u64,
    /// Coalescing sleeps (`--coalesce-us`) and their wall time (also in
    /// `sleep_ns`).
    coalesce_sleeps: u64,
    coalesce_ns: u64,
}

impl TimeAccount {
    #[inline]
    fn charge(&mut self, kind: RoundKind, ns: u64) {
        match kind {
            RoundKind::Busy => {
                self.busy_ns += ns;
                self.busy_rounds += 1;
            }
            RoundKind::BusyTail => self.busy_ns += ns,
            RoundKind::Idle => {
                self.idle_ns += ns;
                self.empty_rounds += 1;
            }
            RoundKind::Slept => {
                self.sleep_ns += ns;
                self.empty_rounds += 1;
            }
        }
    }

    /// A coalescing sleep of `ns` after a busy round (no round of its own).
    #[inline]
    fn coalesced(&mut self, ns: u64) {
        self.sleep_ns += ns;
        self.coalesce_ns += ns;
        self.coalesce_sleeps += 1;
    }
}

/// CPU time of the calling thread, in ns (0 if the clock cannot be read).
fn thread_cpu_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

/// How often the worker runs the L7 upkeep (hold timeouts, ended flows).
const L7_UPKEEP_NS: u64 = 5_000_000;

fn held_queues(state: &WorkerState) -> Vec<Vec<(HeldFrame, PortId)>> {
    (0..state.l7_slots())
        .map(|_| Vec::with_capacity(state.l7_hold_max() + 1))
        .collect()
}

/// Queues `d` for transmission on `port` (or drops it when that port has
/// no socket or its batch is full).
#[allow(clippy::too_many_arguments)]
fn push_tx(
    port_slot: &[u16],
    slots: &mut [Option<Slot>],
    touched: &mut Vec<u16>,
    frames: &mut Frames,
    stats: &WorkerStats,
    d: HeldFrame,
    port: PortId,
) {
    let t = port_slot.get(port as usize).copied().unwrap_or(NO_SLOT);
    match slots.get_mut(t as usize).and_then(Option::as_mut) {
        Some(dst) if dst.tx.len() < dst.tx.capacity() => {
            if dst.tx.is_empty() {
                touched.push(t);
            }
            dst.tx.push(d);
        }
        Some(_) => {
            stats.count_drop(DropReason::TxBatchFull, 1);
            frames.release(d);
        }
        None => {
            // The verdict named a port this worker has no socket on.
            stats.count_drop(DropReason::NoRoute, 1);
            frames.release(d);
        }
    }
}

impl Worker {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: usize,
        cfg: WorkerConfig,
        umem: WorkerUmem,
        frames: Frames,
        ctl: Receiver<Control>,
        snap: Arc<ArcSwap<Snapshot>>,
        stop: Arc<AtomicBool>,
        stats: Arc<WorkerStats>,
    ) -> Self {
        let cur = snap.load_full();
        let batch = cfg.batch;
        // Multi-buffer: room to finish a chain the batch ends inside.
        let rx_cap = match umem.multi_buffer() {
            true => batch + xsk::MAX_CHAIN,
            false => batch,
        };
        let chains = umem.multi_buffer().then(|| multibuf::Chains::new(rx_cap));
        Worker {
            id,
            umem,
            frames,
            slots: Vec::new(),
            ctl,
            snap: Cache::new(snap),
            cur,
            stop,
            stats,
            state: {
                let mut st = WorkerState::new();
                st.set_ct_prefetch(cfg.ct_prefetch);
                st
            },
            hist: stats::new_latency_histogram(),
            port_slot: Vec::new(),
            touched: Vec::new(),
            rx_buf: Vec::with_capacity(rx_cap),
            scratch: vec![FrameDesc::default(); rx_cap.max(64)],
            pollfds: Vec::new(),
            floor: 0,
            kernel_retired: KernelDrops::default(),
            kick_pending: false,
            held: Vec::new(),
            last_l7_upkeep: 0,
            time: TimeAccount::default(),
            breakdown: cfg.breakdown.then(Breakdown::new),
            wg_in: Vec::with_capacity(batch),
            wg_out: Vec::with_capacity(batch),
            wg_addrs: Vec::with_capacity(batch),
            chains,
            cfg,
        }
        .with_hold_queues()
    }

    fn with_hold_queues(mut self) -> Self {
        self.held = held_queues(&self.state);
        self
    }

    /// Replaces the pass's per-worker state (the runtime hands in one on the
    /// node's shared conntrack table).
    pub fn with_state(mut self, mut state: WorkerState) -> Self {
        state.set_ct_prefetch(self.cfg.ct_prefetch);
        self.state = state;
        self.with_hold_queues()
    }

    /// Drops the frames held for L7 slot `slot`.
    fn drop_held(&mut self, slot: u32) {
        if let Some(q) = self.held.get_mut(slot as usize) {
            self.stats.count_drop(DropReason::L7Denied, q.len() as u64);
            for (d, _) in q.drain(..) {
                self.frames.release(d);
            }
        }
    }

    /// Drops the held frames of every slot the pass asked to flush.
    fn drain_l7_flush(&mut self) {
        while let Some(slot) = self.state.l7_take_flush() {
            self.drop_held(slot);
        }
    }

    /// Runs until the stop flag is set; then deletes its sockets.
    pub fn run(mut self) {
        let mut last_publish = crate::runtime::monotonic_ns();
        let mut last_traffic = last_publish;
        let idle_after = self.cfg.idle_after.as_nanos() as u64;
        let publish_every = stats::PUBLISH_EVERY.as_nanos() as u64;
        let mut idle = 0u32;
        // The previous round's clock read and kind (time accounting).
        let mut prev = (last_publish, RoundKind::Idle);
        let mut coalesce = match self.cfg.poll {
            PollMode::Adaptive => Coalesce::new(self.cfg.coalesce_us),
            PollMode::Busy | PollMode::Wakeup => Coalesce::new(0),
        };
        if coalesce.enabled() {
            // The kernel's default slack (50 µs) would stretch every
            // coalescing sleep by up to that much: the sleeps are a few µs.
            if let Err(e) = nix::sys::prctl::set_timerslack(1) {
                log::warn!("worker {}: PR_SET_TIMERSLACK: {e}", self.id);
            }
        }
        self.remap();
        while !self.stop.load(Relaxed) {
            self.drain_control();
            self.refresh_snapshot();
            let (moved, now) = self.round();
            self.time.charge(prev.1, now.saturating_sub(prev.0));
            prev.0 = now;
            if moved > 0 || self.kick_pending {
                idle = 0;
                last_traffic = now;
                prev.1 = RoundKind::Busy;
                // Thin traffic: sleep so that the next round finds a batch
                // (never while a TX ring still waits for its kick).
                if let Some(d) = coalesce.after_round(moved, self.cfg.batch) {
                    if !self.kick_pending {
                        prev = self.coalesce_sleep(d, prev.0);
                    }
                }
            } else {
                coalesce.after_round(0, self.cfg.batch);
                prev.1 = RoundKind::Idle;
                idle = idle.saturating_add(1);
                let sleep = match self.cfg.poll {
                    PollMode::Busy => false,
                    PollMode::Wakeup => true,
                    PollMode::Adaptive => {
                        idle >= self.cfg.idle_rounds
                            && now.saturating_sub(last_traffic) >= idle_after
                    }
                };
                if sleep {
                    self.sleep();
                    prev.1 = RoundKind::Slept;
                } else if self.cfg.idle_yield && self.cfg.poll == PollMode::Adaptive {
                    // Adaptive handback: an empty round gives the core to
                    // any other thread runnable on it (a co-located node's
                    // worker, the application about to answer) and returns
                    // at once when there is none. Never per frame: only
                    // rounds that moved nothing yield.
                    std::thread::yield_now();
                } else {
                    std::hint::spin_loop();
                }
            }
            if now.saturating_sub(last_publish) >= publish_every {
                last_publish = now;
                self.publish();
            }
        }
        self.publish();
        log::debug!("worker {} stopping", self.id);
    }

    fn publish(&mut self) {
        self.stats.publish_latency(&self.hist);
        if let Some(b) = &self.breakdown {
            self.stats.publish_breakdown(&b.stages);
        }
        // The kernel's drops before frames reach our rings (a getsockopt per
        // socket, every PUBLISH_EVERY; never per packet).
        let mut k = self.kernel_retired;
        let (mut fill, mut tx, mut hot) = (0, 0, 0);
        for slot in self.slots.iter_mut().flatten() {
            if let Ok(s) = slot.sock.kernel_stats() {
                k.add(&s);
            }
            fill += slot.in_fill;
            tx += slot.in_tx;
            // A socket that received nothing for QUIET_INTERVALS goes back to
            // the floor. Not after one interval: a client that bursts every
            // few hundred ms (a prober, a batch job) would meet the floor at
            // every burst, and a burst bigger than the floor while the worker
            // is descheduled is dropped by the kernel (fill ring empty).
            if slot.rx_recent == 0 {
                slot.quiet = slot.quiet.saturating_add(1);
                if slot.quiet >= QUIET_INTERVALS {
                    slot.target = self.floor;
                }
            } else {
                slot.quiet = 0;
            }
            slot.rx_recent = 0;
            hot += usize::from(slot.in_fill > self.floor);
        }
        let st = &self.stats;
        let t = self.time;
        st.busy_ns.set(t.busy_ns);
        st.busy_rounds.set(t.busy_rounds);
        st.idle_ns.set(t.idle_ns);
        st.empty_rounds.set(t.empty_rounds);
        st.sleep_ns.set(t.sleep_ns);
        st.rx_visits.set(t.rx_visits);
        st.full_batches.set(t.full_batches);
        st.coalesce_sleeps.set(t.coalesce_sleeps);
        st.coalesce_ns.set(t.coalesce_ns);
        st.cpu_ns.set(thread_cpu_ns());
        let ct = self.state.ct_prefetch_status();
        st.ct_prefetch_on.set(u64::from(ct.on));
        st.ct_prefetch_flows.set(ct.flows);
        st.ct_prefetch_window.set(ct.window);
        st.ct_prefetch_switches.set(ct.switches);
        st.kernel_rx_ring_full.set(k.rx_ring_full);
        st.kernel_fill_ring_empty.set(k.fill_ring_empty);
        st.kernel_rx_dropped.set(k.rx_dropped);
        st.kernel_rx_invalid.set(k.rx_invalid);
        st.kernel_tx_invalid.set(k.tx_invalid);
        let (held, lent) = self.frames.census();
        let free = self.frames.free_count();
        st.free_frames.set(free as u64);
        st.frames_total.set(self.frames.total() as u64);
        st.frames_fill.set(fill as u64);
        st.frames_tx.set(tx as u64);
        st.frames_held.set(held as u64);
        // Lent frames no live socket's counts explain: a leak if nonzero.
        st.frames_unaccounted
            .set(lent.saturating_sub(fill + tx) as u64);
        st.fill_floor.set(self.floor as u64);
        st.fill_hot.set(u64::from(self.cfg.budget.hot));
        st.frames_reserve.set(u64::from(self.cfg.budget.reserve));
        st.sockets_hot.set(hot as u64);
        st.icmp_errors_sent.set(self.state.icmp_errors_sent());
        st.nat_port_remaps.set(self.state.nat_port_remaps());
        let l7 = self.state.l7_usage();
        st.l7_flows.set(l7.flows as u64);
        st.l7_flows_max.set(l7.flows_max as u64);
        st.l7_head_buffers.set(l7.head_buffers as u64);
        st.l7_held_frames.set(l7.held_frames as u64);
        st.l7_h2_streams_refused.set(l7.h2_streams_refused);
    }

    /// A coalescing sleep of `d` after a busy round that began at `round_ns`:
    /// the round's time is charged, the sleep goes to `sleep_ns`; returns the
    /// time accounting's new starting point.
    fn coalesce_sleep(&mut self, d: Duration, round_ns: u64) -> (u64, RoundKind) {
        let t0 = crate::runtime::monotonic_ns();
        self.time
            .charge(RoundKind::Busy, t0.saturating_sub(round_ns));
        std::thread::sleep(d);
        let t1 = crate::runtime::monotonic_ns();
        self.time.coalesced(t1.saturating_sub(t0));
        // From here to the next round's clock read: busy, not a round.
        (t1, RoundKind::BusyTail)
    }

    fn sleep(&mut self) {
        self.stats.sleeps.add(1);
        if let Err(e) = xsk::poll_fds(&mut self.pollfds, self.cfg.sleep_ms) {
            log::warn!("worker {}: poll failed: {e}", self.id);
            std::thread::sleep(Duration::from_millis(1));
        }
        if let Some(b) = self.breakdown.as_deref_mut() {
            // Frames that woke the poll waited from here, not from the
            // round before the sleep.
            b.last_look = crate::runtime::monotonic_ns();
        }
    }

    fn drain_control(&mut self) {
        loop {
            match self.ctl.try_recv() {
                Ok(Control::Add(sock, filled)) => {
                    self.add(*sock);
                    let _ = filled.send(());
                }
                Ok(Control::Remove(name)) => self.remove(&name),
                Err(TryRecvError::Empty) | Err(TryRecvError::Disconnected) => return,
            }
        }
    }

    fn add(&mut self, sock: XskSocket) {
        let slot = Slot {
            sock,
            port: None,
            in_fill: 0,
            in_tx: 0,
            target: self.floor.max(1),
            rx_recent: 0,
            quiet: 0,
            // Room for a batch plus a released hold queue and L7 replies.
            tx: Vec::with_capacity(self.cfg.batch + 2 * (self.state.l7_hold_max() + 2)),
            kick: false,
        };
        let s = match self.slots.iter().position(Option::is_none) {
            Some(i) => i,
            None if self.slots.len() < xsk::MAX_SLOTS => {
                self.slots.push(None);
                self.slots.len() - 1
            }
            None => {
                log::error!("worker {}: too many sockets; dropping one", self.id);
                return;
            }
        };
        self.slots[s] = Some(slot);
        self.remap();
        if let Some(slot) = &mut self.slots[s] {
            slot.in_fill += slot.sock.refill(s, &mut self.frames, self.floor);
        }
    }

    fn remove(&mut self, ifname: &str) {
        for s in 0..self.slots.len() {
            if !matches!(&self.slots[s], Some(sl) if sl.sock.ifname() == ifname) {
                continue;
            }
            if let Some(mut slot) = self.slots[s].take() {
                slot.sock.reap(&mut self.frames, &mut self.scratch);
                // Its kernel counters stay in the worker's sums.
                if let Ok(k) = slot.sock.kernel_stats() {
                    self.kernel_retired.add(&k);
                }
                // Deleting the socket makes the kernel forget its rings, so
                // whatever the ledger still shows lent through it is ours.
                drop(slot);
                let n = self.frames.reclaim(s);
                log::debug!(
                    "worker {}: removed {ifname} slot {s}, reclaimed {n} frames",
                    self.id
                );
            }
        }
        self.remap();
    }

    fn refresh_snapshot(&mut self) {
        let latest = self.snap.load();
        if !Arc::ptr_eq(latest, &self.cur) {
            self.cur = Arc::clone(latest);
            self.remap();
        }
    }

    /// Recomputes which port each socket is, which socket transmits on each
    /// port (the one on the lowest queue), the fill target and the pollfds.
    /// Runs on snapshot or socket changes only (it may allocate).
    fn remap(&mut self) {
        let snap = &self.cur;
        let ports = &snap.spec.ports;
        // The underlay, if any, is the port id after the pod ports.
        let underlay = snap
            .underlay_port()
            .zip(snap.port_name(ports.len() as PortId));
        self.port_slot.clear();
        self.port_slot
            .resize(ports.len() + usize::from(underlay.is_some()), NO_SLOT);
        self.pollfds.clear();
        let mut live = 0usize;
        for slot in self.slots.iter_mut().flatten() {
            live += 1;
            self.pollfds.push(slot.sock.pollfd());
            slot.port = ports
                .iter()
                .position(|p| p.name == slot.sock.ifname())
                .map(|p| p as PortId)
                .or(underlay
                    .filter(|(_, name)| *name == slot.sock.ifname())
                    .map(|(id, _)| id));
        }
        for (s, slot) in self.slots.iter().enumerate() {
            let Some(slot) = slot else { continue };
            let Some(p) = slot.port else { continue };
            let cur = self.port_slot[p as usize];
            let better = match self.slots.get(cur as usize).and_then(Option::as_ref) {
                None => true,
                Some(c) => slot.sock.queue() < c.sock.queue(),
            };
            if better {
                self.port_slot[p as usize] = s as u16;
            }
        }
        self.touched = Vec::with_capacity(live);
        // Every socket keeps the floor; more sockets than the UMEM was
        // planned for share what is left beside the reserve.
        let floor = self.cfg.budget.floor_for(live);
        if floor < self.floor && live as u32 > self.cfg.budget.planned_sockets {
            log::warn!(
                "worker {}: {live} sockets, UMEM planned for {}: fill floor {floor} frames (planned {})",
                self.id,
                self.cfg.budget.planned_sockets,
                self.cfg.budget.floor
            );
        }
        self.floor = floor;
        for slot in self.slots.iter_mut().flatten() {
            slot.target = slot.target.max(floor);
        }
        self.stats.sockets.set(live as u64);
        self.stats.generation.set(snap.generation());
    }

    /// One round over all sockets. Returns the frames received and the time
    /// read at RX.
    fn round(&mut self) -> (usize, u64) {
        // Completions and fill floors first, so RX has somewhere to land.
        for s in 0..self.slots.len() {
            let Some(slot) = &mut self.slots[s] else {
                continue;
            };
            // Most sockets of a full node sent nothing: skip their
            // completion rings.
            if slot.in_tx > 0 {
                let reaped = slot.sock.reap(&mut self.frames, &mut self.scratch);
                slot.in_tx = slot.in_tx.saturating_sub(reaped);
            }
            if slot.in_fill < self.floor {
                slot.in_fill += slot
                    .sock
                    .refill(s, &mut self.frames, self.floor - slot.in_fill);
            }
        }
        // One clock read per round: conntrack/L7 time and the batch latency.
        let now_ns = crate::runtime::monotonic_ns();
        self.state.set_now(now_ns);
        if now_ns.saturating_sub(self.last_l7_upkeep) >= L7_UPKEEP_NS {
            self.last_l7_upkeep = now_ns;
            self.state.l7_maintain();
            self.drain_l7_flush();
        }
        let mut total = 0usize;
        let mut any_tx = false;
        // The breakdown's look-back for this round (None when off; the
        // loop below tests it once per batch).
        let rx_wait = self
            .breakdown
            .as_deref_mut()
            .map(|b| now_ns.saturating_sub(std::mem::replace(&mut b.last_look, now_ns)));
        for s in 0..self.slots.len() {
            let Some(slot) = &mut self.slots[s] else {
                continue;
            };
            let Some(ingress) = slot.port else { continue };
            if self.cfg.busy_poll {
                slot.sock.busy_poll();
            }
            let before = slot.in_fill;
            let n = slot
                .sock
                .rx(&mut self.frames, &mut self.scratch, &mut self.rx_buf);
            if n == 0 {
                continue;
            }
            self.time.rx_visits += 1;
            if n >= self.cfg.batch {
                self.time.full_batches += 1;
            }
            slot.in_fill = before.saturating_sub(n);
            slot.rx_recent += n as u64;
            // Demand: a socket that drained half its fill ring since the
            // last visit goes to the hot target at once. Top it up now,
            // before its batch is processed, so that the kernel keeps
            // finding frames ([`FrameBudget::top_up`]).
            let (target, want) = self.cfg.budget.top_up(
                slot.target,
                before,
                n,
                self.floor,
                self.frames.free_count(),
            );
            slot.target = target;
            slot.in_fill += slot.sock.refill(s, &mut self.frames, want);
            total += n;
            let pass_t0 = match (rx_wait, self.breakdown.as_deref_mut()) {
                (Some(w), Some(b)) => {
                    b.record(Breakdown::RX_WAIT, w);
                    crate::runtime::monotonic_ns()
                }
                _ => 0,
            };
            // Taken out for the loop (the frames move out of it; its
            // capacity comes back with it).
            let mut rx = std::mem::take(&mut self.rx_buf);
            let bytes: u64 = rx.iter().map(|d| d.data_len() as u64).sum();
            // Multi-buffer: one entry per packet, chains' tails set aside.
            self.chains_split(&mut rx);
            // WireGuard messages from peers: opened first, each peer's
            // lock taken once for the batch.
            self.wg_open_batch(ingress, &mut rx);
            // Stage 0: the batch's conntrack lines in flight ahead of
            // the frames (when the worker's flow census says the flows in
            // use outgrow the cache: with few it costs more than it saves).
            // The hashes and parses it made go to the pass (one parse and
            // one hash a frame).
            self.state.stage0_clear();
            if self.state.stage0_wanted() {
                for d in rx.iter_mut() {
                    let st = &mut self.state;
                    self.umem.with_frame(d, |buf, len| {
                        st.stage0_push(buf.get(..len).unwrap_or_default());
                        ((), len)
                    });
                }
            }
            for (i, mut d) in rx.drain(..).enumerate() {
                self.state.stage0_for(Some(i));
                let tails = self.chain_tails(i);
                if tails > 0 {
                    let wg = self.wg_in.get(i).copied();
                    self.chain_pass(d, tails, ingress, wg);
                    continue;
                }
                match self.wg_in.get(i) {
                    Some(WgIn::Done(v)) => {
                        let v = *v;
                        self.dispatch(v, d);
                        continue;
                    }
                    Some(WgIn::Opened) => self.state.wireguard_opened(),
                    Some(WgIn::Pass) | None => {}
                }
                let state = &mut self.state;
                let snap = &self.cur;
                // With the room in front of the frame: encapsulation and
                // decapsulation move the descriptor's start, not the bytes
                // (docs/tunnel.md, "Growing the frame").
                let verdict = self.umem.with_frame_room(&mut d, |buf, head, len| {
                    let (v, new_head) = pass::process_at(buf, head, len, ingress, snap, state);
                    let new_len = match v {
                        Verdict::Tx { len, .. }
                        | Verdict::Hold { len, .. }
                        | Verdict::Release { len, .. } => len,
                        Verdict::L7Deny { reply_len, .. } if reply_len > 0 => reply_len,
                        Verdict::Drop(_) | Verdict::L7Deny { .. } => len,
                    };
                    (v, new_head, new_len)
                });
                match (self.state.take_wireguard_seal(), verdict) {
                    // Sealed below with the batch's other frames to that
                    // peer; in clear until then, never sent unsealed.
                    (Some(job), Verdict::Tx { port, .. }) => {
                        self.wg_out
                            .push((d, port, job, Err(DropReason::WireguardNoPeer)))
                    }
                    // Stage 11 ends with `Tx` whenever it leaves a seal.
                    (Some(_), _) => {
                        self.stats.count_drop(DropReason::WireguardMalformed, 1);
                        self.frames.release(d);
                    }
                    (None, v) => self.dispatch(v, d),
                }
                if let Some(r) = self.state.take_reply_drop() {
                    self.stats.count_drop(r, 1);
                }
                self.drain_l7_flush();
            }
            self.rx_buf = rx;
            self.wg_seal_batch();
            self.stats.rx_packets.add(n as u64);
            self.stats.rx_bytes.add(bytes);
            any_tx |= self.flush_tx();
            if let Some(b) = self.breakdown.as_deref_mut() {
                b.record(
                    Breakdown::PASS,
                    crate::runtime::monotonic_ns().saturating_sub(pass_t0),
                );
            }
        }
        if any_tx || self.kick_pending {
            let kick_t0 = match self.breakdown {
                Some(_) => crate::runtime::monotonic_ns(),
                None => 0,
            };
            self.kick_pending = false;
            for slot in self.slots.iter_mut().flatten() {
                if slot.kick {
                    match slot.sock.kick(MAX_KICKS, xsk::TX_PER_ROUND) {
                        Ok(empty) => slot.kick = !empty,
                        Err(e) => log::warn!("worker {}: TX kick failed: {e}", self.id),
                    }
                    self.kick_pending |= slot.kick;
                }
            }
            if let Some(b) = self.breakdown.as_deref_mut() {
                b.record(
                    Breakdown::TX_KICK,
                    crate::runtime::monotonic_ns().saturating_sub(kick_t0),
                );
            }
        }
        if total > 0 {
            let ns = crate::runtime::monotonic_ns().saturating_sub(now_ns);
            stats::record_latency(&mut self.hist, ns, total as u64);
            self.stats.batches.add(1);
        }
        (total, now_ns)
    }

    /// With WireGuard on, the batch's frames from peers on the tunnel port
    /// are opened before the pass, grouped by peer: one lock per peer and
    /// batch (docs/encryption.md). Fills `wg_in` (one entry per frame;
    /// empty when nothing was opened).
    fn wg_open_batch(&mut self, ingress: PortId, rx: &mut [HeldFrame]) {
        self.wg_in.clear();
        self.wg_addrs.clear();
        let Some(wg) = self.state.wireguard().cloned() else {
            return;
        };
        if self.cur.tunnel().is_none_or(|(_, t)| t.port != ingress) {
            return;
        }
        for d in rx.iter_mut() {
            let (snap, st) = (&self.cur, &self.state);
            let a = self.umem.with_frame(d, |buf, len| {
                (pass::wg_source(buf, len, ingress, snap, st), len)
            });
            self.wg_addrs.push(a);
            self.wg_in.push(WgIn::Pass);
        }
        let (umem, snap, st, addrs, wg_in) = (
            &self.umem,
            &self.cur,
            &mut self.state,
            &self.wg_addrs,
            &mut self.wg_in,
        );
        wg.grouped(addrs, |i, peer| {
            let (Some(d), Some(Some(src)), Some(slot)) =
                (rx.get_mut(i), addrs.get(i).copied(), wg_in.get_mut(i))
            else {
                return;
            };
            *slot = umem.with_frame(d, |buf, len| {
                match pass::open_deferred(buf, len, src, peer, snap, st) {
                    Continue(n) => (WgIn::Opened, n),
                    Break(v @ Verdict::Tx { len, .. }) => (WgIn::Done(v), len),
                    Break(v) => (WgIn::Done(v), len),
                }
            });
        });
    }

    /// Seals the frames stage 11 left to seal, grouped by peer (one lock
    /// per peer and batch), then sends them; a frame that could not be
    /// sealed is dropped under its reason, never sent in clear.
    fn wg_seal_batch(&mut self) {
        if self.wg_out.is_empty() {
            return;
        }
        self.wg_addrs.clear();
        self.wg_addrs
            .extend(self.wg_out.iter().map(|(_, _, job, _)| Some(job.peer)));
        if let Some(wg) = self.state.wireguard().cloned() {
            let (umem, st, out) = (&self.umem, &mut self.state, &mut self.wg_out);
            wg.grouped(&self.wg_addrs, |i, peer| {
                let Some((d, _, job, res)) = out.get_mut(i) else {
                    return;
                };
                *res = umem.with_frame(d, |buf, len| {
                    match pass::seal_deferred(buf, len, peer, st, job) {
                        Ok(n) => (Ok(n), n),
                        Err(r) => (Err(r), len),
                    }
                });
            });
        }
        let mut out = std::mem::take(&mut self.wg_out);
        for (d, port, _, res) in out.drain(..) {
            let v = match res {
                Ok(len) => Verdict::Tx { port, len },
                Err(r) => Verdict::Drop(r),
            };
            self.dispatch(v, d);
        }
        self.wg_out = out;
    }

    /// Acts on one frame's verdict.
    fn dispatch(&mut self, verdict: Verdict, d: HeldFrame) {
        macro_rules! tx {
            ($d:expr, $port:expr) => {
                push_tx(
                    &self.port_slot,
                    &mut self.slots,
                    &mut self.touched,
                    &mut self.frames,
                    &self.stats,
                    $d,
                    $port,
                )
            };
        }
        match verdict {
            Verdict::Tx { port, .. } => tx!(d, port),
            Verdict::Drop(reason) => {
                self.stats.count_drop(reason, 1);
                self.frames.release(d);
            }
            Verdict::Hold { port, slot, .. } => {
                match self.held.get_mut(slot as usize) {
                    Some(q) if q.len() < q.capacity() => q.push((d, port)),
                    _ => {
                        // Cannot happen (the inspector bounds held frames);
                        // dropping is safe: the client retransmits.
                        self.stats.count_drop(DropReason::L7HoldFull, 1);
                        self.frames.release(d);
                    }
                }
            }
            Verdict::Release { port, slot, .. } => {
                if let Some(q) = self.held.get_mut(slot as usize) {
                    for (h, p) in q.drain(..) {
                        tx!(h, p)
                    }
                }
                tx!(d, port)
            }
            Verdict::L7Deny {
                slot,
                reply_port,
                reply_len,
                rst_port,
                rst,
                reason,
            } => {
                self.drop_held(slot);
                self.stats.count_drop(reason, 1);
                if reply_len > 0 {
                    tx!(d, reply_port);
                } else {
                    self.frames.release(d);
                }
                match self.frames.take() {
                    Some(mut f) => {
                        let built = self.umem.with_frame(&mut f, |buf, _| {
                            let n = crate::l7::reply::build_rst_frame(buf, &rst);
                            (n, n.unwrap_or(0))
                        });
                        if built.is_some() {
                            tx!(f, rst_port);
                        } else {
                            self.frames.release(f);
                        }
                    }
                    None => self.stats.count_drop(DropReason::NoFreeFrame, 1),
                }
            }
        }
    }

    /// Produces the collected TX descriptors to their sockets' TX rings.
    fn flush_tx(&mut self) -> bool {
        let mut any = false;
        let mut tx_packets = 0u64;
        let mut tx_bytes = 0u64;
        for &t in &self.touched {
            let Some(dst) = self.slots[t as usize].as_mut() else {
                continue;
            };
            let want = dst.tx.len();
            let bytes: usize = dst.tx.iter().map(HeldFrame::data_len).sum();
            let done = dst.sock.tx(t as usize, &mut self.frames, &mut dst.tx);
            dst.in_tx += done;
            // What did not fit stays in `dst.tx`.
            let left: usize = dst.tx.iter().map(HeldFrame::data_len).sum();
            tx_bytes += (bytes - left) as u64;
            let full = want - done;
            if full > 0 {
                self.stats.count_drop(DropReason::TxRingFull, full as u64);
                for d in dst.tx.drain(..) {
                    self.frames.release(d);
                }
            }
            if done > 0 {
                dst.kick = true;
                any = true;
            }
            tx_packets += done as u64;
        }
        self.touched.clear();
        self.stats.tx_packets.add(tx_packets);
        self.stats.tx_bytes.add(tx_bytes);
        any
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Sockets go first (they hold the UMEM); the ledger goes with us.
        self.slots.clear();
    }
}
