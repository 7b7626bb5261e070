//! Per-worker counters and latency histograms.
//!
//! Each [`WorkerStats`] has exactly one writer, its worker: counters are
//! plain `AtomicU64`s updated with a relaxed load and a relaxed store (no
//! read-modify-write, so no bus lock), and readers (`Dataplane::status`) sum
//! them. Latency is recorded into an `hdrhistogram` the worker owns; every
//! [`PUBLISH_EVERY`] the worker clones it into an `ArcSwap` readers load, so
//! the allocation happens off the per-packet path and readers never block
//! the worker.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hdrhistogram::Histogram;
pub use weir_model::status::{
    CtPrefetchStatus, FrameStatus, KernelDrops, L7Status, LatencySummary, StageLatency, Totals,
    WorkerStatus, WorkerTime, BREAKDOWN_STAGES,
};

use crate::DropReason;

/// How often a worker publishes its latency histogram.
pub const PUBLISH_EVERY: Duration = Duration::from_millis(250);

/// Highest latency the histogram tracks (bigger values are clamped), in ns.
const LATENCY_MAX_NS: u64 = 10_000_000_000;

/// A counter with one writer.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`. Only the owning worker may call this (single writer).
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.store(self.0.load(Relaxed).wrapping_add(n), Relaxed);
    }

    #[inline]
    pub fn set(&self, v: u64) {
        self.0.store(v, Relaxed);
    }

    #[inline]
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// A new latency histogram (ns, 3 significant digits, fixed bounds so that
/// recording never allocates).
pub fn new_latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MAX_NS, 3).expect("static histogram bounds are valid")
}

/// Records `count` frames that each spent `ns` in the dataplane.
#[inline]
pub fn record_latency(h: &mut Histogram<u64>, ns: u64, count: u64) {
    // In bounds by construction (clamped), so this cannot fail or resize.
    let _ = h.record_n(ns.clamp(1, LATENCY_MAX_NS), count);
}

/// Counters of one worker.
#[derive(Debug)]
pub struct WorkerStats {
    pub id: usize,
    pub core: Option<usize>,
    /// Snapshot generation the worker runs.
    pub generation: Counter,
    pub rx_packets: Counter,
    pub tx_packets: Counter,
    pub rx_bytes: Counter,
    pub tx_bytes: Counter,
    /// Indexed by [`DropReason::index`].
    pub drops: [Counter; DropReason::COUNT],
    pub icmp_errors_sent: Counter,
    /// Service flows sent with a remapped source port (a clash).
    pub nat_port_remaps: Counter,
    /// Batches that moved at least one frame.
    pub batches: Counter,
    /// Times the worker went to sleep in `poll` (adaptive / wakeup modes).
    pub sleeps: Counter,
    /// Sockets the worker serves.
    pub sockets: Counter,
    /// Frames of the worker's UMEM on its free list (sampled per publish).
    pub free_frames: Counter,
    /// Where the UMEM's frames are (sampled per publish; see [`FrameStatus`]).
    pub frames_total: Counter,
    pub frames_fill: Counter,
    pub frames_tx: Counter,
    pub frames_held: Counter,
    pub frames_unaccounted: Counter,
    pub fill_floor: Counter,
    pub fill_hot: Counter,
    pub frames_reserve: Counter,
    /// Sockets whose fill ring holds more than the floor (demand-driven).
    pub sockets_hot: Counter,
    /// Kernel drops on the worker's sockets, removed ones included (sampled
    /// per publish; see [`KernelDrops`]).
    pub kernel_rx_ring_full: Counter,
    pub kernel_fill_ring_empty: Counter,
    pub kernel_rx_dropped: Counter,
    /// Inline L7 (sampled per publish): flows under HTTP rules open on the
    /// worker and the most allowed, head buffers and held frames in use.
    pub l7_flows: Counter,
    pub l7_flows_max: Counter,
    pub l7_head_buffers: Counter,
    pub l7_held_frames: Counter,
    pub l7_h2_streams_refused: Counter,
    pub kernel_rx_invalid: Counter,
    pub kernel_tx_invalid: Counter,
    /// Where the worker's time went (see [`WorkerTime`]); the worker sums
    /// per round in locals and stores these per publish.
    pub busy_ns: Counter,
    pub busy_rounds: Counter,
    pub idle_ns: Counter,
    pub empty_rounds: Counter,
    pub sleep_ns: Counter,
    pub cpu_ns: Counter,
    pub rx_visits: Counter,
    pub full_batches: Counter,
    /// Coalescing sleeps (`--coalesce-us`) and their wall time.
    pub coalesce_sleeps: Counter,
    pub coalesce_ns: Counter,
    /// The conntrack prefetch ([`weir_model::status::CtPrefetchStatus`]).
    pub ct_prefetch_on: Counter,
    pub ct_prefetch_flows: Counter,
    pub ct_prefetch_window: Counter,
    pub ct_prefetch_switches: Counter,
    latency: ArcSwap<Histogram<u64>>,
    /// The latency breakdown's stage histograms (`None` unless on).
    breakdown: arc_swap::ArcSwapOption<[Histogram<u64>; 3]>,
}

impl WorkerStats {
    pub fn new(id: usize, core: Option<usize>) -> Arc<Self> {
        Arc::new(WorkerStats {
            id,
            core,
            generation: Counter::default(),
            rx_packets: Counter::default(),
            tx_packets: Counter::default(),
            rx_bytes: Counter::default(),
            tx_bytes: Counter::default(),
            drops: std::array::from_fn(|_| Counter::default()),
            icmp_errors_sent: Counter::default(),
            nat_port_remaps: Counter::default(),
            batches: Counter::default(),
            sleeps: Counter::default(),
            sockets: Counter::default(),
            free_frames: Counter::default(),
            l7_flows: Counter::default(),
            l7_flows_max: Counter::default(),
            l7_head_buffers: Counter::default(),
            l7_held_frames: Counter::default(),
            l7_h2_streams_refused: Counter::default(),
            frames_total: Counter::default(),
            frames_fill: Counter::default(),
            frames_tx: Counter::default(),
            frames_held: Counter::default(),
            frames_unaccounted: Counter::default(),
            fill_floor: Counter::default(),
            fill_hot: Counter::default(),
            frames_reserve: Counter::default(),
            sockets_hot: Counter::default(),
            kernel_rx_ring_full: Counter::default(),
            kernel_fill_ring_empty: Counter::default(),
            kernel_rx_dropped: Counter::default(),
            kernel_rx_invalid: Counter::default(),
            kernel_tx_invalid: Counter::default(),
            busy_ns: Counter::default(),
            busy_rounds: Counter::default(),
            idle_ns: Counter::default(),
            empty_rounds: Counter::default(),
            sleep_ns: Counter::default(),
            cpu_ns: Counter::default(),
            rx_visits: Counter::default(),
            full_batches: Counter::default(),
            coalesce_sleeps: Counter::default(),
            coalesce_ns: Counter::default(),
            ct_prefetch_on: Counter::default(),
            ct_prefetch_flows: Counter::default(),
            ct_prefetch_window: Counter::default(),
            ct_prefetch_switches: Counter::default(),
            latency: ArcSwap::from_pointee(new_latency_histogram()),
            breakdown: arc_swap::ArcSwapOption::empty(),
        })
    }

    #[inline]
    pub fn count_drop(&self, reason: DropReason, n: u64) {
        self.drops[reason.index()].add(n);
    }

    /// Publishes a copy of the worker's histogram (allocates; call at most
    /// every [`PUBLISH_EVERY`]).
    pub fn publish_latency(&self, h: &Histogram<u64>) {
        self.latency.store(Arc::new(h.clone()));
    }

    /// Publishes a copy of the breakdown's stage histograms (allocates;
    /// every [`PUBLISH_EVERY`], only when the breakdown is on).
    pub fn publish_breakdown(&self, stages: &[Histogram<u64>; 3]) {
        self.breakdown.store(Some(Arc::new(stages.clone())));
    }

    /// The breakdown as status reports it (empty when off).
    fn breakdown_status(&self) -> Vec<StageLatency> {
        let b = self.breakdown.load();
        let Some(stages) = b.as_deref() else {
            return Vec::new();
        };
        BREAKDOWN_STAGES
            .iter()
            .zip(stages.iter())
            .map(|(name, h)| StageLatency {
                stage: name.to_string(),
                ns: latency_summary(h),
                buckets: latency_buckets(h),
                sum_ns: (h.mean() * h.len() as f64) as u64,
            })
            .collect()
    }

    /// A consistent-enough view for status output.
    pub fn snapshot(&self) -> WorkerStatus {
        let h = self.latency.load();
        WorkerStatus {
            id: self.id,
            core: self.core,
            generation: self.generation.get(),
            rx_packets: self.rx_packets.get(),
            tx_packets: self.tx_packets.get(),
            rx_bytes: self.rx_bytes.get(),
            tx_bytes: self.tx_bytes.get(),
            drops: drops_map(|r| self.drops[r.index()].get()),
            icmp_errors_sent: self.icmp_errors_sent.get(),
            nat_port_remaps: self.nat_port_remaps.get(),
            batches: self.batches.get(),
            sleeps: self.sleeps.get(),
            sockets: self.sockets.get(),
            free_frames: self.free_frames.get(),
            frames: FrameStatus {
                total: self.frames_total.get(),
                free: self.free_frames.get(),
                fill: self.frames_fill.get(),
                tx: self.frames_tx.get(),
                held: self.frames_held.get(),
                unaccounted: self.frames_unaccounted.get(),
                fill_floor: self.fill_floor.get(),
                fill_hot: self.fill_hot.get(),
                reserve: self.frames_reserve.get(),
                sockets_hot: self.sockets_hot.get(),
            },
            kernel: KernelDrops {
                rx_ring_full: self.kernel_rx_ring_full.get(),
                fill_ring_empty: self.kernel_fill_ring_empty.get(),
                rx_dropped: self.kernel_rx_dropped.get(),
                rx_invalid: self.kernel_rx_invalid.get(),
                tx_invalid: self.kernel_tx_invalid.get(),
            },
            l7: L7Status {
                flows: self.l7_flows.get(),
                flows_max: self.l7_flows_max.get(),
                head_buffers: self.l7_head_buffers.get(),
                held_frames: self.l7_held_frames.get(),
                h2_streams_refused: self.l7_h2_streams_refused.get(),
            },
            latency_ns: latency_summary(&h),
            ct_prefetch: CtPrefetchStatus {
                on: self.ct_prefetch_on.get() != 0,
                flows: self.ct_prefetch_flows.get(),
                window: self.ct_prefetch_window.get(),
                switches: self.ct_prefetch_switches.get(),
            },
            latency_buckets: latency_buckets(&h),
            latency_sum_ns: (h.mean() * h.len() as f64) as u64,
            time: WorkerTime {
                busy_ns: self.busy_ns.get(),
                busy_rounds: self.busy_rounds.get(),
                idle_ns: self.idle_ns.get(),
                empty_rounds: self.empty_rounds.get(),
                sleep_ns: self.sleep_ns.get(),
                cpu_ns: self.cpu_ns.get(),
                rx_visits: self.rx_visits.get(),
                full_batches: self.full_batches.get(),
                coalesce_sleeps: self.coalesce_sleeps.get(),
                coalesce_ns: self.coalesce_ns.get(),
            },
            breakdown: self.breakdown_status(),
        }
    }
}

/// Percentiles of a latency histogram.
pub fn latency_summary(h: &Histogram<u64>) -> LatencySummary {
    if h.is_empty() {
        return LatencySummary::default();
    }
    LatencySummary {
        p50: h.value_at_quantile(0.50),
        p90: h.value_at_quantile(0.90),
        p99: h.value_at_quantile(0.99),
        p999: h.value_at_quantile(0.999),
        max: h.max(),
        count: h.len(),
    }
}

/// Frames per bucket of [`weir_model::status::LATENCY_BUCKETS_NS`] (not
/// cumulative), then the frames above the last bound.
pub fn latency_buckets(h: &Histogram<u64>) -> Vec<u64> {
    if h.is_empty() {
        return Vec::new();
    }
    let mut out = Vec::with_capacity(weir_model::status::LATENCY_BUCKETS_NS.len() + 1);
    let mut below = 0;
    for &le in &weir_model::status::LATENCY_BUCKETS_NS {
        let upto = h.count_between(0, le);
        out.push(upto - below);
        below = upto;
    }
    out.push(h.len() - below);
    out
}

fn drops_map(get: impl Fn(DropReason) -> u64) -> BTreeMap<String, u64> {
    DropReason::ALL
        .iter()
        .filter_map(|&r| {
            let n = get(r);
            (n != 0).then_some((r.slug().to_string(), n))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_sum_and_drop_map_skips_zero() {
        let s = WorkerStats::new(0, Some(1));
        s.rx_packets.add(3);
        s.rx_packets.add(4);
        s.count_drop(DropReason::NoRoute, 2);
        let mut h = new_latency_histogram();
        record_latency(&mut h, 1_000, 10);
        record_latency(&mut h, u64::MAX, 1);
        s.publish_latency(&h);
        let st = s.snapshot();
        assert_eq!(st.rx_packets, 7);
        assert_eq!(st.drops.len(), 1);
        assert_eq!(st.drops["no-route"], 2);
        assert_eq!(st.latency_ns.count, 11);
        assert!(st.latency_ns.p50 >= 999 && st.latency_ns.p50 <= 1001);
        // 1 µs lands in the first bucket (≤ 1 µs), the clamped one above all.
        assert_eq!(st.latency_buckets.iter().sum::<u64>(), 11);
        assert_eq!(st.latency_buckets[0], 10);
        assert_eq!(*st.latency_buckets.last().unwrap(), 1);
        let t = Totals::of(&[st.clone(), st]);
        assert_eq!(t.rx_packets, 14);
        assert_eq!(t.dropped, 4);
        assert_eq!(t.kernel_dropped, 0);
    }

    #[test]
    fn time_accounting_reaches_the_status() {
        let s = WorkerStats::new(0, Some(1));
        s.busy_ns.set(30);
        s.idle_ns.set(50);
        s.sleep_ns.set(20);
        s.rx_visits.set(4);
        s.full_batches.set(1);
        let t = s.snapshot().time;
        assert_eq!((t.busy_ns, t.idle_ns, t.sleep_ns), (30, 50, 20));
        assert_eq!((t.rx_visits, t.full_batches), (4, 1));
    }

    #[test]
    fn kernel_drops_sum_over_workers() {
        let a = WorkerStats::new(0, None);
        a.kernel_fill_ring_empty.set(3);
        a.kernel_rx_dropped.set(3);
        let b = WorkerStats::new(1, None);
        b.kernel_rx_ring_full.set(2);
        b.kernel_tx_invalid.set(1);
        let t = Totals::of(&[a.snapshot(), b.snapshot()]);
        assert_eq!(t.kernel.fill_ring_empty, 3);
        assert_eq!(t.kernel.rx_ring_full, 2);
        // fill_ring_empty is inside rx_dropped: counted once.
        assert_eq!(t.kernel_dropped, 3 + 2 + 1);
        assert_eq!(t.dropped, 0);
    }
}
