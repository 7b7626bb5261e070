//! What `weir status` reports: the dataplane's status (config, workers,
//! totals, ports, conntrack), as the dataplane produces it and control
//! reads it. Every struct reads with defaults for missing fields, so a
//! reader and a writer of different versions still agree on the rest.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// How a worker waits for traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PollMode {
    /// Spin on the rings forever (lowest latency; owns a whole core).
    Busy,
    /// Sleep in `poll` on the sockets whenever a round finds nothing.
    Wakeup,
    /// Spin while frames flow; after a few empty rounds and `--idle-spin-us`
    /// (20 µs) without traffic, sleep in `poll` until a socket has frames;
    /// while spinning idle, yield the core each empty round (`--idle-yield`).
    #[default]
    Adaptive,
}

impl PollMode {
    /// As `--poll` and the JSON spell it: `busy`, `wakeup`, `adaptive`.
    pub fn as_str(self) -> &'static str {
        match self {
            PollMode::Busy => "busy",
            PollMode::Wakeup => "wakeup",
            PollMode::Adaptive => "adaptive",
        }
    }
}

/// When a worker runs the pass's stage 0, the conntrack prefetch
/// (`--ct-prefetch`; docs/conntrack.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CtPrefetch {
    /// By the flows the worker sees: on from about 4096 distinct flows in
    /// its last 16 384 packets, off again below 2048 (its flow census).
    #[default]
    Auto,
    /// On every batch (a node known to carry many flows).
    On,
    /// Never.
    Off,
}

impl CtPrefetch {
    /// As `--ct-prefetch` and the JSON spell it: `auto`, `on`, `off`.
    pub fn as_str(self) -> &'static str {
        match self {
            CtPrefetch::Auto => "auto",
            CtPrefetch::On => "on",
            CtPrefetch::Off => "off",
        }
    }
}

/// What `weir status` shows of the dataplane.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct DataplaneStatus {
    /// CLOCK_MONOTONIC at sampling, for rates between two samples.
    pub monotonic_ns: u64,
    pub uptime_ns: u64,
    /// Generation of the published snapshot (workers report theirs).
    pub generation: u64,
    pub poll: PollMode,
    pub config: ConfigStatus,
    pub workers: Vec<WorkerStatus>,
    pub totals: Totals,
    pub ports: Vec<PortStatus>,
    pub conntrack: ConntrackStatus,
    /// WireGuard peers (`--encrypt wireguard`, docs/encryption.md); empty
    /// when encryption is off.
    pub wireguard: Vec<WireguardPeerStatus>,
}

/// One WireGuard peer node as `weir status` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct WireguardPeerStatus {
    pub node: String,
    /// Its underlay address.
    pub address: String,
    /// `up` (a session), or `no-session` (no handshake completed yet).
    pub state: String,
    /// Milliseconds since the last completed handshake.
    pub handshake_age_ms: Option<u64>,
    /// Plaintext bytes sent to and received from it.
    pub tx_bytes: u64,
    pub rx_bytes: u64,
}

/// The node's conntrack table and the flow log, summed over workers.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ConntrackStatus {
    /// Entries the table can hold.
    pub size: usize,
    pub bytes_per_entry: usize,
    /// Bytes of the table the kernel backs with 2 MiB pages now (the
    /// table is advised `MADV_HUGEPAGE`; 0: on 4 KiB pages, because THP is
    /// off or refused, or the table is under 2 MiB and on the heap).
    pub huge_page_bytes: u64,
    /// Live entries now.
    pub entries: usize,
    /// Live entries per endpoint of the snapshot (an entry between two
    /// local endpoints counts for both).
    pub endpoints: Vec<EndpointEntries>,
    /// Conntrack and fragment entries evicted because their endpoint left
    /// the node's snapshot (a pod deleted).
    pub flushed: u64,
    pub inserts: u64,
    /// Inserts that replaced a closing or unreplied entry.
    pub evictions: u64,
    /// New flows refused: their bucket held only established flows.
    pub table_full: u64,
    pub invalid: u64,
    /// Flows cut because a new policy denied them.
    pub revoked: u64,
    /// Flows judged again after a policy change.
    pub rejudged: u64,
    /// TCP flows admitted mid-stream (no SYN seen).
    pub pickups: u64,
    /// The fragment table (later fragments follow their first).
    pub fragments: FragmentStatus,
    pub flow_events: u64,
    /// Flow events lost to full queues.
    pub flow_events_lost: u64,
    /// Conntrack entries loaded from the checkpoint at start (a dataplane
    /// restarted after a crash or kill; docs/reliability.md).
    pub restored: u64,
    /// Service NAT entries loaded from the checkpoint at start.
    pub restored_nat: u64,
    /// Checkpoints written since start (every 250 ms).
    pub checkpoints: u64,
    /// Checkpoints that could not be written.
    pub checkpoint_errors: u64,
    /// Conntrack + NAT entries in the last checkpoint, and its bytes.
    pub checkpoint_entries: u64,
    pub checkpoint_bytes: u64,
}

/// One endpoint's live conntrack entries.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct EndpointEntries {
    /// The endpoint's name in the snapshot (`namespace/pod`).
    pub name: String,
    pub entries: usize,
}

/// The node's fragment table, counters summed over workers.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct FragmentStatus {
    /// Datagrams the table can remember.
    pub size: usize,
    pub bytes_per_entry: usize,
    /// How long an entry lives from its first fragment.
    pub timeout_ns: u64,
    /// Live entries now.
    pub entries: usize,
    /// First fragments recorded.
    pub datagrams: u64,
    /// Later fragments that followed their first through.
    pub followed: u64,
    /// Live entries evicted to make room (oldest first).
    pub evictions: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ConfigStatus {
    pub cores: Vec<usize>,
    pub queues: u32,
    pub frame_size: u32,
    /// Frames of the largest worker UMEM.
    pub frames_per_worker: u32,
    /// Locked UMEM memory of all workers.
    pub umem_bytes: u64,
    pub max_pods: u32,
    pub fill_floor: u32,
    pub batch: usize,
    pub ring_size: u32,
    pub xdp_mode: String,
    pub zero_copy: bool,
    /// Socket busy polling (`--busy-poll`).
    pub busy_poll: bool,
    /// Adaptive polling: how long a worker spins after its last frame
    /// before it sleeps in `poll` (`--idle-spin-us`), µs...
    pub idle_spin_us: u64,
    /// ...yielding its core (`sched_yield`) on every empty round while it
    /// spins (`--idle-yield`).
    pub idle_yield: bool,
    /// Adaptive polling: longest sleep after a round that took fewer than
    /// half a batch (`--coalesce-us`), µs; 0: off.
    pub coalesce_us: u32,
    /// When the workers run the conntrack prefetch (`--ct-prefetch`).
    pub ct_prefetch: CtPrefetch,
    /// The CPUs the dataplane's other threads (control loop, checkpoint,
    /// status) are kept on, off the workers' cores; empty: not confined (a
    /// worker on every CPU the process may use).
    pub housekeeping_cores: Vec<usize>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct PortStatus {
    pub name: String,
    /// The underlay (tunnel frames only), not a pod port.
    pub underlay: bool,
    /// Queues with a socket.
    pub queues: u32,
    /// Whether its sockets run zero-copy (false: copy mode).
    pub zero_copy: bool,
    /// The mode in use as text: "zero-copy", "copy", or "copy (zero-copy
    /// refused: <errno>)" when `--zero-copy` asked for it and the driver
    /// refused (veth always does).
    pub mode: String,
    /// Copy mode: the most frames one TX kick (`sendto`) sends on this
    /// port's sockets: 256 (at most the TX ring) where the kernel takes
    /// `XDP_MAX_TX_SKB_BUDGET` (Linux 6.17), else its default 32. `None` in
    /// zero-copy.
    pub tx_budget: Option<u32>,
    /// The XDP program's counters on this port.
    pub xdp: Option<XdpCounters>,
    /// Why the counters could not be read, if they could not.
    pub error: Option<String>,
}

/// A worker's conntrack prefetch (stage 0) now, and what its flow census
/// last counted (`--ct-prefetch auto` decides by it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CtPrefetchStatus {
    /// Stage 0 runs on every batch now.
    pub on: bool,
    /// Distinct flows among the packets of the census's last window
    /// (an estimate: linear counting over a bitmap of flow hashes).
    pub flows: u64,
    /// The packets that window counted (0 before the first window closed).
    pub window: u64,
    /// Times stage 0 was turned on or off by the census.
    pub switches: u64,
}

/// Percentiles of time spent in the dataplane per frame (from the batch's RX
/// to the end of its TX kick), in nanoseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LatencySummary {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub count: u64,
}

/// What one worker reports.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct WorkerStatus {
    pub id: usize,
    pub core: Option<usize>,
    pub generation: u64,
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    /// Nonzero drop counters by slug.
    pub drops: BTreeMap<String, u64>,
    pub icmp_errors_sent: u64,
    /// New Service flows sent with a remapped source port: the client used
    /// the same port toward two ClusterIPs sharing a backend
    /// (docs/services.md).
    #[serde(default)]
    pub nat_port_remaps: u64,
    pub batches: u64,
    pub sleeps: u64,
    pub sockets: u64,
    /// The same as `frames.free` (kept for readers of the older field).
    pub free_frames: u64,
    /// Where the worker's UMEM frames are.
    pub frames: FrameStatus,
    /// What the kernel dropped on the worker's sockets (removed sockets
    /// included) before the worker saw it.
    pub kernel: KernelDrops,
    /// Inline L7 in use (sampled per publish).
    pub l7: L7Status,
    pub latency_ns: LatencySummary,
    /// The conntrack prefetch (stage 0) and the flow census that decides it.
    pub ct_prefetch: CtPrefetchStatus,
    /// The same histogram in Prometheus buckets: frames per bucket of
    /// [`LATENCY_BUCKETS_NS`] (not cumulative), then the frames above the
    /// last bound; empty before the first publish.
    pub latency_buckets: Vec<u64>,
    /// Sum of the recorded latencies (ns), for a histogram's `_sum`.
    pub latency_sum_ns: u64,
    /// Where the worker's time went (sampled per publish, every 250 ms).
    pub time: WorkerTime,
    /// The latency breakdown per batch (`weir up --latency-breakdown`):
    /// one entry per [`BREAKDOWN_STAGES`], empty when off.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub breakdown: Vec<StageLatency>,
}

/// The most frames one copy-mode AF_XDP TX kick sends by default (and
/// always before Linux 6.17's `XDP_MAX_TX_SKB_BUDGET`): `TX_BATCH_SIZE`
/// in net/xdp/xsk.c. [`PortStatus::tx_budget`].
pub const KERNEL_TX_BUDGET: u32 = 32;

/// The stages of `weir up --latency-breakdown`, per batch (one socket's
/// RX batch, or one round's kicks), in nanoseconds:
///
/// - `rx_wait`: from the worker's previous look at the rings (its previous
///   round's RX, or its wake-up from `poll`) to this batch's RX — an upper
///   bound of how long the batch's first frame waited on the RX ring (AF_XDP
///   in copy mode gives no per-frame arrival time);
/// - `pass`: the pass over the batch (parse, policy, conntrack, rewrite,
///   collecting TX descriptors) and producing them to the TX rings;
/// - `tx_kick`: the round's TX kicks (`sendto` on each socket with frames:
///   in copy mode the kernel transmits in it, the peer's RX softirq
///   included).
pub const BREAKDOWN_STAGES: [&str; 3] = ["rx_wait", "pass", "tx_kick"];

/// One stage of the latency breakdown.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct StageLatency {
    /// One of [`BREAKDOWN_STAGES`].
    pub stage: String,
    /// Percentiles over batches (ns).
    pub ns: LatencySummary,
    /// Batches per bucket of [`LATENCY_BUCKETS_NS`] (not cumulative), then
    /// those above the last bound.
    pub buckets: Vec<u64>,
    pub sum_ns: u64,
}

/// Where a worker's time goes, accounted per round (never per packet) and
/// published every 250 ms. `busy_ns + idle_ns + sleep_ns` is the wall time
/// since the worker started; `cpu_ns` is the time its thread was on a CPU
/// (the rest of the wall time it slept or waited for its core).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct WorkerTime {
    /// Rounds that moved frames (received or still transmitting), and the
    /// wall time they took.
    pub busy_ns: u64,
    pub busy_rounds: u64,
    /// Rounds that found nothing and spun on (empty polls).
    pub idle_ns: u64,
    pub empty_rounds: u64,
    /// Time asleep in `poll` (wakeup/adaptive), until the next round.
    pub sleep_ns: u64,
    /// CPU time of the worker's thread (CLOCK_THREAD_CPUTIME_ID).
    pub cpu_ns: u64,
    /// RX visits to a socket that found frames...
    pub rx_visits: u64,
    /// ...and those that took a whole batch (the socket's RX ring held at
    /// least `config.batch` frames: the worker is behind).
    pub full_batches: u64,
    /// Sleeps after a round that took fewer than half a batch
    /// (`--coalesce-us`), and their wall time (part of `sleep_ns`).
    pub coalesce_sleeps: u64,
    pub coalesce_ns: u64,
}

/// Upper bounds (ns) of the time-in-dataplane buckets that `weir up
/// --metrics-addr` exports (`weir_dataplane_latency_seconds`).
pub const LATENCY_BUCKETS_NS: [u64; 14] = [
    1_000,
    2_000,
    5_000,
    10_000,
    20_000,
    50_000,
    100_000,
    200_000,
    500_000,
    1_000_000,
    2_000_000,
    5_000_000,
    10_000_000,
    100_000_000,
];

/// A worker's inline-L7 state in use (docs/l7.md, "Capacity").
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct L7Status {
    /// Connections under HTTP rules with an inspector, and the most allowed
    /// (`--l7-max-flows`; beyond it new ones drop as `l7-no-slot`).
    pub flows: u64,
    pub flows_max: u64,
    /// Head buffers held by connections with a request head open.
    pub head_buffers: u64,
    /// UMEM frames held until a request head is judged.
    pub held_frames: u64,
    /// HTTP/2 streams refused in place (their `:method` rewritten, the
    /// connection went on; docs/l7.md), since the worker started.
    #[serde(default)]
    pub h2_streams_refused: u64,
}

/// The frame accounting of one worker's UMEM (sampled every
/// [`PUBLISH_EVERY`]): `free + fill + tx + held + unaccounted = total`.
/// `unaccounted` counts frames the ledger shows lent to the kernel that no
/// live socket's counts explain: nonzero means a leak.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct FrameStatus {
    pub total: u64,
    /// On the worker's free list.
    pub free: u64,
    /// On the sockets' fill rings (lent to the kernel for RX).
    pub fill: u64,
    /// On TX rings or completion rings (sent, not yet reaped).
    pub tx: u64,
    /// Held by the worker: L7 holds, or mid-batch.
    pub held: u64,
    pub unaccounted: u64,
    /// Frames every socket keeps on its fill ring.
    pub fill_floor: u64,
    /// Most frames one busy socket's fill ring is topped up to.
    pub fill_hot: u64,
    /// Free frames that top-ups above the floor leave alone.
    pub reserve: u64,
    /// Sockets topped up above the floor now.
    pub sockets_hot: u64,
}

/// Kernel-side drops on a worker's AF_XDP sockets (`XDP_STATISTICS`),
/// cumulative: a removed socket's last counts stay in the sum.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct KernelDrops {
    /// Frames dropped because the socket's RX ring was full (the worker was behind).
    pub rx_ring_full: u64,
    /// Frames that found the socket's fill ring empty (dropped; also
    /// counted in `rx_dropped`).
    pub fill_ring_empty: u64,
    /// Frames the kernel dropped at the socket: no fill frame, or too big
    /// for a frame.
    pub rx_dropped: u64,
    pub rx_invalid: u64,
    /// TX descriptors the kernel refused (not sent).
    pub tx_invalid: u64,
}

impl KernelDrops {
    /// Frames lost in the kernel: `rx_dropped` (fill ring empty included)
    /// + `rx_ring_full` + `tx_invalid`.
    pub fn lost(&self) -> u64 {
        self.rx_dropped + self.rx_ring_full + self.tx_invalid
    }

    pub fn add(&mut self, o: &KernelDrops) {
        self.rx_ring_full += o.rx_ring_full;
        self.fill_ring_empty += o.fill_ring_empty;
        self.rx_dropped += o.rx_dropped;
        self.rx_invalid += o.rx_invalid;
        self.tx_invalid += o.tx_invalid;
    }
}

/// Sums over all workers.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Totals {
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub drops: BTreeMap<String, u64>,
    /// Frames weir dropped (every reason).
    pub dropped: u64,
    /// The kernel's AF_XDP drops, summed over workers.
    pub kernel: KernelDrops,
    /// Frames the kernel lost ([`KernelDrops::lost`]).
    pub kernel_dropped: u64,
    pub icmp_errors_sent: u64,
    pub nat_port_remaps: u64,
}

impl Totals {
    pub fn of(workers: &[WorkerStatus]) -> Self {
        let mut t = Totals::default();
        for w in workers {
            t.rx_packets += w.rx_packets;
            t.tx_packets += w.tx_packets;
            t.rx_bytes += w.rx_bytes;
            t.tx_bytes += w.tx_bytes;
            t.icmp_errors_sent += w.icmp_errors_sent;
            t.nat_port_remaps += w.nat_port_remaps;
            t.kernel.add(&w.kernel);
            for (k, v) in &w.drops {
                *t.drops.entry(k.clone()).or_insert(0) += v;
                t.dropped += v;
            }
        }
        t.kernel_dropped = t.kernel.lost();
        t
    }
}

/// The program's counters, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct XdpCounters {
    /// Frames handed to an AF_XDP socket.
    pub redirected: u64,
    /// Frames passed to the kernel (ARP, NDP, ff02::/16, local addresses).
    pub passed: u64,
    /// Frames dropped because no socket is bound at their rx queue.
    pub dropped_no_socket: u64,
    /// Frames too short for their headers or with an invalid IPv4 version/IHL
    /// (still redirected: the dataplane drops them under a precise reason).
    pub malformed: u64,
}

/// How this host's idle cores wait for work: a sleeping worker (adaptive
/// or wakeup polling) and the pods' receive path are woken from there
/// (`weir cores`; weir-perf's wake-up probe).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct IdleCores {
    /// `/sys/devices/system/cpu/cpuidle/current_driver` (`haltpoll` in a
    /// KVM guest with cpuidle-haltpoll, `intel_idle`, `acpi_idle`, ...).
    pub cpuidle_driver: Option<String>,
    /// cpuidle-haltpoll's `guest_halt_poll_ns`: how long an idle vCPU
    /// polls before it halts (a VM exit; waking it then is the host's
    /// IPI and scheduling).
    pub guest_halt_poll_ns: Option<u64>,
}

/// Where [`IdleCores`] reads the halt-polling knob.
pub const GUEST_HALT_POLL: &str = "/sys/module/haltpoll/parameters/guest_halt_poll_ns";

impl IdleCores {
    /// Read from sysfs now (a field is None where the host lacks it).
    pub fn read() -> IdleCores {
        let read = |p: &str| {
            std::fs::read_to_string(p)
                .ok()
                .map(|s| s.trim().to_string())
        };
        IdleCores {
            cpuidle_driver: read("/sys/devices/system/cpu/cpuidle/current_driver"),
            guest_halt_poll_ns: read(GUEST_HALT_POLL).and_then(|s| s.parse().ok()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poll_mode_names_are_its_json() {
        for p in [PollMode::Busy, PollMode::Wakeup, PollMode::Adaptive] {
            assert_eq!(
                serde_json::to_value(p).unwrap(),
                serde_json::Value::from(p.as_str())
            );
        }
    }

    #[test]
    fn status_round_trips_and_reads_partial_json() {
        let mut w = WorkerStatus {
            id: 1,
            core: Some(3),
            ..Default::default()
        };
        w.drops.insert("no-route".into(), 2);
        let st = DataplaneStatus {
            generation: 7,
            totals: Totals::of(&[w.clone(), w.clone()]),
            workers: vec![w],
            ..Default::default()
        };
        let v = serde_json::to_value(&st).unwrap();
        assert_eq!(v["totals"]["drops"]["no-route"], 4);
        let back: DataplaneStatus = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(serde_json::to_value(&back).unwrap(), v);
        // A reader of a newer or older writer: missing fields default.
        let partial: DataplaneStatus =
            serde_json::from_str(r#"{"generation": 3, "workers": [{"id": 2}]}"#).unwrap();
        assert_eq!((partial.generation, partial.workers[0].id), (3, 2));
    }
}
