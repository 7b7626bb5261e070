//! The dataplane object: owns the workers, the XDP attachments and the
//! published snapshot.
//!
//! Layout: worker `w` (of `W`) serves every queue `q` with `q % W == w` on
//! every port. Each worker has one UMEM; the control thread (the caller of
//! [`Dataplane::start`] / [`Dataplane::apply`]) creates the worker's sockets
//! on that UMEM, one per (port, queue) it serves, registers each fd in the
//! port's XSKMAP and hands the socket to the worker over a channel the worker
//! drains between rounds (see `worker`). Sockets are created in the calling
//! thread's network namespace, and workers are spawned from it too, so both
//! must be called from a thread in the node's namespace.
//!
//! Snapshots are published with one `ArcSwap`; workers pick the new one up at
//! their next round. Replaced snapshots are kept here until no worker holds
//! them, so that the last reference (and the free) happens on the control
//! thread, not on a worker.
//!
//! The underlay (`snap.spec.tunnel.underlay`) is served like a pod port,
//! with the program in underlay mode (only the tunnel's UDP frames to the
//! node come to weir) and as many sockets as the interface has rx queues;
//! frames for remote pods leave through the worker's socket on it.
//!
//! Fail closed: `stop` (or drop) deletes the sockets but leaves the XDP
//! programs attached; with no socket in the XSKMAP the program drops the
//! pods' traffic instead of handing it to the kernel. A port that vanishes
//! from the snapshot loses its sockets and its `Redirector` handle, but the
//! program stays attached until the interface itself is deleted.
//!
//! Deployment needs CAP_NET_ADMIN, CAP_BPF, CAP_NET_RAW and CAP_IPC_LOCK (or
//! a high enough `RLIMIT_MEMLOCK`; `start` raises it to unlimited when it can).
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use crossbeam::channel::{self, Sender};
pub use weir_model::status::{
    ConfigStatus, ConntrackStatus, DataplaneStatus, EndpointEntries, FragmentStatus, PollMode,
    PortStatus,
};
use weir_xdp::{AttachOptions, Redirector, XdpMode};

use crate::anchor::{AnchorLink, ANCHOR_IFNAME};
use crate::budget::{self, FrameBudget};
use crate::conntrack::{self, Conntrack, CtStats};
use crate::flows::{self, FlowEvent, FlowLog};
use crate::pass::WorkerState;
use crate::stats::{Totals, WorkerStats, WorkerStatus};
use crate::worker::{Control, Worker, WorkerConfig};
use crate::xsk::{self, WorkerUmem, XskError};
use crate::Snapshot;

/// Adaptive polling: empty rounds before a worker may sleep (each one has
/// looked at every socket; the time below is what bounds the spin).
pub const ADAPTIVE_IDLE_ROUNDS: u32 = 2;
/// Adaptive polling: time without traffic before a worker sleeps
/// (`--idle-spin-us`; docs/performance.md, "Adaptive idle handback").
/// Until issue 22 part 2 it was 50 µs and 256 empty rounds, without yields.
pub const ADAPTIVE_IDLE_AFTER: Duration = Duration::from_micros(20);
/// Adaptive polling's default `--coalesce-us` (0: off; see
/// docs/performance.md, "Coalescing under thin load").
pub const DEFAULT_COALESCE_US: u32 = 50;
/// Longest accepted `--idle-spin-us`.
pub const MAX_IDLE_SPIN_US: u64 = 10_000;
/// Longest single sleep; bounds how late a worker sees a stop or new socket.
pub const MAX_SLEEP_MS: i32 = 10;

/// How long the control thread waits for a worker to take a new socket
/// (and fill its fill ring) before registering it anyway.
const ADD_ACK_TIMEOUT: Duration = Duration::from_secs(2);

/// How to run the dataplane.
#[derive(Debug, Clone)]
pub struct DataplaneConfig {
    /// One worker per entry, pinned to that core.
    pub cores: Vec<usize>,
    /// Queues per interface (veths are created with this many).
    pub queues: u32,
    pub poll: PollMode,
    /// UMEM frame size: 2048 or 4096.
    pub frame_size: u32,
    /// Frames of each worker's UMEM; `None` (the default) sizes it from
    /// `max_pods` (see [`crate::budget`]).
    pub frames_per_worker: Option<u32>,
    /// Pods the node is planned for: each worker's UMEM gets a fill floor
    /// for every socket of this many pods (or of the pods present at start,
    /// if more).
    pub max_pods: u32,
    /// Frames every socket keeps on its fill ring, idle or not.
    pub fill_floor: u32,
    /// Descriptors taken from each RX ring per round (32–64 is typical).
    pub batch: usize,
    pub xdp_mode: XdpMode,
    /// Try zero-copy sockets first and fall back to copy mode (veth has no
    /// zero-copy).
    pub zero_copy: bool,
    /// Socket busy polling (`--busy-poll`): `SO_PREFER_BUSY_POLL`,
    /// `SO_BUSY_POLL` and `SO_BUSY_POLL_BUDGET` on every socket, and the
    /// workers drive each socket's NAPI poll every round
    /// ([`crate::xsk::XskSocket::set_busy_poll`]). Off by default.
    pub busy_poll: bool,
    /// AF_XDP multi-buffer (`XDP_USE_SG`): packets larger than a UMEM
    /// frame cross the workers as chains ([`crate::worker::multibuf`]);
    /// needed when a port's MTU is above ~3.8 KiB
    /// ([`crate::worker::multibuf::needed`]). Off: such packets are dropped
    /// by the kernel (`rx_dropped`), as before.
    pub multi_buffer: bool,
    /// Entries of every RX, TX, fill and completion ring (power of two).
    pub ring_size: u32,
    /// Entries of the node's conntrack table, shared by all workers and
    /// allocated at start (rounded up to a power-of-two number of 16-entry
    /// buckets; see docs/conntrack.md).
    pub conntrack_size: usize,
    /// Flow-log events each worker can queue before it counts them lost.
    pub flow_log_capacity: usize,
    /// Connections under HTTP rules each worker inspects at once (a new one
    /// beyond it is refused: `l7-no-slot`); sizes the rest of the inline-L7
    /// state ([`crate::pass::L7Capacity::for_flows`], docs/l7.md).
    pub l7_max_flows: usize,
    /// WireGuard between nodes (docs/encryption.md): every worker seals
    /// and opens the tunnel's traffic with these peers. `None`: plain.
    pub wireguard: Option<Arc<crate::wireguard::WgTable>>,
    /// Record the per-batch latency breakdown (RX wait, pass, TX kick) in
    /// every worker (`weir up --latency-breakdown`; off by default).
    pub latency_breakdown: bool,
    /// Keep conntrack and Service NAT in a checkpoint file
    /// ([`crate::checkpoint`]): loaded at start, written by
    /// [`Dataplane::write_checkpoint`]. `None`: not kept.
    pub checkpoint: Option<CheckpointConfig>,
    /// Adaptive polling: spin this long after the last frame, then sleep
    /// in `poll` ([`ADAPTIVE_IDLE_AFTER`] by default).
    pub idle_spin: Duration,
    /// Adaptive polling: `sched_yield` on every empty round while spinning,
    /// so another thread runnable on the core (a co-located node's worker,
    /// an application) runs first. On by default.
    pub idle_yield: bool,
    /// Adaptive polling: longest sleep after a round that took fewer than
    /// half a batch (`--coalesce-us`, [`crate::coalesce`]), µs; 0: off.
    pub coalesce_us: u32,
    /// When the workers run the conntrack prefetch (`--ct-prefetch`;
    /// [`crate::pass::FlowCensus`]).
    pub ct_prefetch: weir_model::status::CtPrefetch,
    /// Keep the thread that calls [`Dataplane::start`], and every thread it
    /// starts afterwards, off the workers' cores ([`crate::housekeeping`];
    /// the node process sets it; off by default so a test's or a bench's
    /// thread keeps its mask).
    pub housekeeping: bool,
}

/// Where the checkpoint lives and whose it is.
#[derive(Debug, Clone)]
pub struct CheckpointConfig {
    /// The file (tmpfs: the node's state directory under /run).
    pub path: std::path::PathBuf,
    /// The node's name, written in the checkpoint and checked on load.
    pub node: String,
}

/// The checkpoint's side of a running dataplane.
#[derive(Default)]
struct CheckpointRt {
    restored: crate::checkpoint::Restored,
    /// The writer thread's counters (default: none written).
    stats: Arc<crate::checkpoint::WriterStats>,
    /// Ends the writer thread (after its last write).
    stop: Arc<AtomicBool>,
    join: Option<JoinHandle<()>>,
}

/// Largest accepted `l7_max_flows` (about 0.4 GiB of L7 state per worker).
pub const L7_MAX_FLOWS_LIMIT: usize = 1 << 21;

impl Default for DataplaneConfig {
    fn default() -> Self {
        let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get());
        DataplaneConfig {
            // The last core: core 0 keeps the system's housekeeping.
            cores: vec![ncpu - 1],
            queues: ncpu as u32,
            poll: PollMode::Adaptive,
            frame_size: 4096,
            frames_per_worker: None,
            max_pods: crate::budget::DEFAULT_MAX_PODS,
            fill_floor: crate::budget::DEFAULT_FILL_FLOOR,
            batch: 64,
            xdp_mode: XdpMode::Native,
            zero_copy: false,
            busy_poll: false,
            multi_buffer: false,
            ring_size: 1024,
            conntrack_size: conntrack::DEFAULT_SIZE,
            flow_log_capacity: flows::DEFAULT_CAPACITY,
            l7_max_flows: crate::pass::DEFAULT_L7_MAX_FLOWS,
            wireguard: None,
            latency_breakdown: false,
            checkpoint: None,
            idle_spin: ADAPTIVE_IDLE_AFTER,
            idle_yield: true,
            coalesce_us: DEFAULT_COALESCE_US,
            ct_prefetch: weir_model::status::CtPrefetch::Auto,
            housekeeping: false,
        }
    }
}

/// Errors of the dataplane's control side.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// invalid dataplane configuration: {0}
    #[error("invalid dataplane configuration: {0}")]
    Config(String),
    /// AF_XDP setup failed
    #[error(transparent)]
    Xsk(#[from] XskError),
    /// attaching XDP to {port} failed: {source}
    #[error("XDP on {port}: {source}")]
    Xdp {
        port: String,
        #[source]
        source: weir_xdp::XdpError,
    },
    /// spawning worker {worker} failed: {source}
    #[error("spawning worker {worker} failed: {source}")]
    Spawn {
        worker: usize,
        #[source]
        source: std::io::Error,
    },
    /// worker {0} has exited
    #[error("worker {0} has exited")]
    WorkerGone(usize),
    /// the UMEM anchor interface: {0}
    #[error("the UMEM anchor interface: {0}")]
    Anchor(String),
    /// starting the checkpoint writer failed: {0}
    #[error("starting the checkpoint writer failed: {0}")]
    Checkpoint(#[source] std::io::Error),
}

struct WorkerHandle {
    id: usize,
    umem: WorkerUmem,
    /// The UMEM's first socket, on the anchor veth ([`crate::anchor`]).
    _anchor: Option<crate::xsk::XskSocket>,
    ctl: Sender<Control>,
    join: Option<JoinHandle<()>>,
    stats: Arc<WorkerStats>,
}

struct PortRt {
    redirector: Redirector,
    zero_copy: bool,
    /// "zero-copy", "copy", or "copy (zero-copy refused: <errno>)".
    mode: String,
    /// Queues (XSKMAP entries, sockets) set up on the interface.
    queues: u32,
    /// Copy mode: the smallest TX budget of its sockets.
    tx_budget: Option<u32>,
    /// Underlay mode with this UDP port; `None` for a pod port.
    underlay: Option<u16>,
}

/// An interface the dataplane serves: a pod port, or the underlay (in
/// underlay mode with the tunnel's UDP port).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Want {
    name: String,
    underlay: Option<u16>,
}

/// Every interface `snap` asks for: its pod ports, then its underlay.
fn wanted(snap: &Snapshot) -> Vec<Want> {
    let mut w: Vec<Want> = snap
        .spec
        .ports
        .iter()
        .map(|p| Want {
            name: p.name.clone(),
            underlay: None,
        })
        .collect();
    if let Some(t) = &snap.spec.tunnel {
        w.push(Want {
            name: t.underlay.name.clone(),
            underlay: Some(t.udp_port),
        });
    }
    w
}

/// `SO_BUSY_POLL` of every socket under `--busy-poll`: how long one
/// busy-poll pass may spin on an empty device queue (µs).
pub const BUSY_POLL_USECS: u32 = 20;

/// A port's socket mode as status shows it: "zero-copy", "copy", or
/// "copy (zero-copy refused: <why>)" when zero-copy was asked for.
pub fn port_mode(zero_copy: bool, refused: Option<&str>) -> String {
    match (zero_copy, refused) {
        (true, _) => "zero-copy".into(),
        (false, Some(why)) => format!("copy (zero-copy refused: {why})"),
        (false, None) => "copy".into(),
    }
}

/// The rx queue count of `ifname` from sysfs, if it can be read. sysfs
/// shows the namespace it was mounted in: when the dataplane runs in a node
/// namespace with the host's /sys, the read fails (or finds no such
/// interface) and the configured count is used.
fn sysfs_rx_queues(ifname: &str) -> Option<u32> {
    let dir = std::fs::read_dir(format!("/sys/class/net/{ifname}/queues")).ok()?;
    let n = dir
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("rx-"))
        .count() as u32;
    (n > 0).then_some(n)
}

/// The part of a status that walks the tables: the live conntrack entries,
/// in all and per endpoint of the snapshot the status was taken under, and
/// the live fragment entries. Holds only the tables and that snapshot
/// (see [`Dataplane::status_parts`]).
pub struct TableCensus {
    conntrack: Arc<Conntrack>,
    snapshot: Arc<Snapshot>,
}

impl TableCensus {
    /// Counts the live entries into `st` (every bucket's lock in turn, one
    /// at a time: the workers go on forwarding).
    pub fn fill(&self, st: &mut DataplaneStatus) {
        let eps = &self.snapshot.spec.endpoints;
        // Each address with the index of its endpoint.
        let (owner, addrs): (Vec<usize>, Vec<std::net::IpAddr>) = eps
            .iter()
            .enumerate()
            .flat_map(|(i, e)| {
                [e.ipv4.map(Into::into), e.ipv6.map(Into::into)]
                    .into_iter()
                    .flatten()
                    .map(move |a: std::net::IpAddr| (i, a))
            })
            .unzip();
        let mut per = Vec::new();
        let ct = &mut st.conntrack;
        ct.entries = self.conntrack.count_addrs(&addrs, monotonic_ns(), &mut per);
        ct.endpoints = eps
            .iter()
            .map(|e| EndpointEntries {
                name: e.name.clone(),
                entries: 0,
            })
            .collect();
        for (i, n) in owner.into_iter().zip(per) {
            ct.endpoints[i].entries += n;
        }
        ct.fragments.entries = self.conntrack.frags().count(monotonic_ns());
    }
}

/// The running dataplane. Dropping it stops the workers like [`stop`](Self::stop).
pub struct Dataplane {
    cfg: DataplaneConfig,
    started: Instant,
    published: Arc<ArcSwap<Snapshot>>,
    retired: Vec<Arc<Snapshot>>,
    stop: Arc<AtomicBool>,
    workers: Vec<WorkerHandle>,
    /// The CPUs the other threads were confined to (empty: not confined).
    housekeeping: Vec<usize>,
    ports: BTreeMap<String, PortRt>,
    conntrack: Arc<Conntrack>,
    flow_logs: Vec<Arc<FlowLog>>,
    ct_stats: Vec<Arc<CtStats>>,
    /// The node's learned FQDN table, shared by the workers.
    fqdn: Arc<crate::fqdn::FqdnTable>,
    /// Each worker's frame budget.
    budgets: Vec<FrameBudget>,
    /// Live conntrack and fragment entries removed because their endpoint
    /// left the node.
    flushed: u64,
    /// The veth the workers' UMEMs are anchored on (copy mode; deleted last).
    anchor: Option<AnchorLink>,
    /// The published snapshot has a host port: the pod ports' XDP programs
    /// send node-address frames to the sockets (`AttachOptions::host_port`).
    host_port: bool,
    /// This node's IPv4 pod CIDR when the uplink has non-masqueraded
    /// destinations: the underlay's XDP program hands frames to it to the
    /// sockets (docs/egress.md).
    routed_v4: Option<(u32, u32)>,
    /// The same for the IPv6 pod CIDR (non-masqueraded IPv6 destinations).
    routed_v6: Option<(u128, u128)>,
    /// Host endpoint policy selects the node and it has a host port: the
    /// underlay's XDP program hands flow openings to the node's addresses
    /// to the sockets (`Redirector::set_host_firewall`).
    host_fw: bool,
    /// The conntrack checkpoint (when `cfg.checkpoint` is set).
    ckpt: CheckpointRt,
    /// The Services' external IPv4 addresses: the underlay's XDP program
    /// hands TCP/UDP to them to the sockets (docs/services.md,
    /// LoadBalancer and external IPs).
    external_v4: Vec<Ipv4Addr>,
}

/// Whether the underlay must hand flows to the node's own addresses to the
/// dataplane under `snap`: host policy selects the node, and the node has a
/// host port to give the allowed ones to its kernel.
fn host_fw(snap: &Snapshot) -> bool {
    snap.host().is_some() && snap.policy().has_host_endpoint()
}

/// The pod CIDR (network, mask) the underlay must hand to the dataplane
/// under `snap` ([`crate::snapshot::UplinkTables::routed_v4`]).
fn routed_v4(snap: &Snapshot) -> Option<(u32, u32)> {
    snap.uplink().and_then(|u| u.routed_v4)
}

impl Dataplane {
    /// The node's learned FQDN table (addresses of allowed DNS answers).
    pub fn fqdn(&self) -> &Arc<crate::fqdn::FqdnTable> {
        &self.fqdn
    }

    /// Raises `RLIMIT_MEMLOCK`, builds one UMEM per worker, starts the pinned
    /// workers, attaches XDP to every port of `snap` and gives the workers
    /// their sockets. Call from a thread in the node's network namespace.
    pub fn start(cfg: DataplaneConfig, snap: Snapshot) -> Result<Dataplane, DataplaneError> {
        validate(&cfg)?;
        // First: the table below is touched page by page from this thread.
        let housekeeping = match cfg.housekeeping {
            true => crate::housekeeping::keep_off(&cfg.cores).unwrap_or_else(|e| {
                log::warn!("keeping the dataplane's other threads off the workers' cores: {e}");
                Vec::new()
            }),
            false => Vec::new(),
        };
        if !housekeeping.is_empty() {
            log::info!("other threads on cores {housekeeping:?}, off the workers'");
        }
        xsk::raise_memlock()?;
        let snap = Arc::new(snap);
        let published = Arc::new(ArcSwap::new(Arc::clone(&snap)));
        let stop = Arc::new(AtomicBool::new(false));
        let mut dp = Dataplane {
            cfg: cfg.clone(),
            started: Instant::now(),
            published,
            retired: Vec::new(),
            stop,
            workers: Vec::new(),
            housekeeping,
            ports: BTreeMap::new(),
            conntrack: Arc::new(Conntrack::new(
                cfg.conntrack_size,
                conntrack::Timeouts::default(),
            )),
            flow_logs: Vec::new(),
            ct_stats: Vec::new(),
            fqdn: Arc::default(),
            budgets: Vec::new(),
            flushed: 0,
            anchor: None,
            host_port: snap.host().is_some(),
            routed_v4: routed_v4(&snap),
            routed_v6: snap.uplink().and_then(|u| u.routed_v6),
            host_fw: host_fw(&snap),
            ckpt: CheckpointRt::default(),
            external_v4: snap.services().external_v4(),
        };
        // Before any worker runs: the restored entries are there for the
        // first packet.
        dp.restore_checkpoint();
        let budgets = budgets(&cfg, &snap);
        dp.budgets = budgets.clone();
        // Each worker's UMEM gets its first socket on a queue of the anchor
        // veth, before any port (see crate::anchor for why).
        if !cfg.zero_copy {
            dp.anchor =
                Some(AnchorLink::create(cfg.cores.len() as u32).map_err(DataplaneError::Anchor)?);
        }
        for (id, &core) in cfg.cores.iter().enumerate() {
            let budget = budgets[id];
            let wcfg = WorkerConfig {
                batch: cfg.batch,
                poll: cfg.poll,
                idle_rounds: ADAPTIVE_IDLE_ROUNDS,
                idle_after: cfg.idle_spin,
                idle_yield: cfg.idle_yield,
                sleep_ms: MAX_SLEEP_MS,
                budget,
                breakdown: cfg.latency_breakdown,
                busy_poll: cfg.busy_poll,
                coalesce_us: cfg.coalesce_us,
                ct_prefetch: cfg.ct_prefetch,
            };
            let (umem, frames) = WorkerUmem::new(cfg.frame_size, budget.frames, cfg.ring_size)?;
            let umem = umem.with_multi_buffer(cfg.multi_buffer);
            let anchor = match dp.anchor {
                Some(_) => Some(umem.open_socket(ANCHOR_IFNAME, id as u32, false)?),
                None => None,
            };
            log::info!(
                "worker {id}: UMEM of {} frames ({} MiB) for {} sockets, fill floor {}, hot {}",
                budget.frames,
                budget.bytes(cfg.frame_size) >> 20,
                budget.planned_sockets,
                budget.floor,
                budget.hot
            );
            let (tx, rx) = channel::unbounded();
            let stats = WorkerStats::new(id, Some(core));
            let worker = Worker::new(
                id,
                wcfg,
                umem.clone(),
                frames,
                rx,
                Arc::clone(&dp.published),
                Arc::clone(&dp.stop),
                Arc::clone(&stats),
            );
            let flow_log = Arc::new(FlowLog::new(cfg.flow_log_capacity));
            let ct_stats = Arc::new(CtStats::default());
            let mut state = WorkerState::with_shared(
                Arc::clone(&dp.conntrack),
                Arc::clone(&flow_log),
                Arc::clone(&ct_stats),
            )
            .with_fqdn(Arc::clone(&dp.fqdn))
            .with_l7_slots(cfg.l7_max_flows)
            .with_snat_slice(id, cfg.cores.len());
            if let Some(wg) = &cfg.wireguard {
                // Sealed and opened per batch, one lock per peer.
                state = state.with_wireguard(Arc::clone(wg)).batch_wireguard();
            }
            let worker = worker.with_state(state);
            dp.flow_logs.push(flow_log);
            dp.ct_stats.push(ct_stats);
            let join = std::thread::Builder::new()
                .name(format!("weir-worker-{id}"))
                .spawn(move || {
                    if !core_affinity::set_for_current(core_affinity::CoreId { id: core }) {
                        log::warn!("worker {id}: pinning to core {core} failed");
                    }
                    worker.run();
                })
                .map_err(|source| DataplaneError::Spawn { worker: id, source })?;
            dp.workers.push(WorkerHandle {
                id,
                umem,
                _anchor: anchor,
                ctl: tx,
                join: Some(join),
                stats,
            });
        }
        let (v4, v6) = local_addrs(&snap);
        for w in wanted(&snap) {
            dp.add_port(&w, &v4, &v6)?;
        }
        // Last: a start that failed writes no checkpoint over the file.
        dp.start_checkpoint()?;
        Ok(dp)
    }

    /// Reconciles ports with `snap` (XDP and sockets for new ports; sockets
    /// and redirector handles of vanished ports removed), then publishes it.
    /// If a new port cannot be set up, the ports added by this call are
    /// removed again and the previous snapshot stays.
    pub fn apply(&mut self, snap: Snapshot) -> Result<(), DataplaneError> {
        self.check_workers()?;
        let (v4, v6) = local_addrs(&snap);
        let want = wanted(&snap);
        // An interface whose mode changed (pod port ↔ underlay, another
        // tunnel port) is set up again from scratch.
        let changed: Vec<String> = want
            .iter()
            .filter(|w| matches!(self.ports.get(&w.name), Some(p) if p.underlay != w.underlay))
            .map(|w| w.name.clone())
            .collect();
        for name in changed {
            self.remove_port(&name);
        }
        let mut added: Vec<String> = Vec::new();
        for w in &want {
            if self.ports.contains_key(&w.name) {
                continue;
            }
            if let Err(e) = self.add_port(w, &v4, &v6) {
                for name in added {
                    self.remove_port(&name);
                }
                return Err(e);
            }
            added.push(w.name.clone());
        }
        let host_port = snap.host().is_some();
        if host_port != self.host_port {
            for (name, p) in &mut self.ports {
                if let Err(e) = p.redirector.set_host_port(host_port) {
                    log::warn!("{name}: switching the host port redirect failed: {e}");
                }
            }
            self.host_port = host_port;
        }
        let routed = routed_v4(&snap);
        if routed != self.routed_v4 {
            for (name, p) in &mut self.ports {
                if let Err(e) = p.redirector.set_routed_v4(routed) {
                    log::warn!("{name}: switching the pod-CIDR redirect failed: {e}");
                }
            }
            self.routed_v4 = routed;
        }
        let routed6 = snap.uplink().and_then(|u| u.routed_v6);
        if routed6 != self.routed_v6 {
            for (name, p) in &mut self.ports {
                if let Err(e) = p.redirector.set_routed_v6(routed6) {
                    log::warn!("{name}: switching the IPv6 pod-CIDR redirect failed: {e}");
                }
            }
            self.routed_v6 = routed6;
        }
        let fw = host_fw(&snap);
        if fw != self.host_fw {
            for (name, p) in &mut self.ports {
                if let Err(e) = p.redirector.set_host_firewall(fw) {
                    log::warn!("{name}: switching the host policy redirect failed: {e}");
                }
            }
            self.host_fw = fw;
        }
        let external = snap.services().external_v4();
        if external != self.external_v4 {
            for (name, p) in &mut self.ports {
                if p.underlay.is_some() {
                    if let Err(e) = p.redirector.set_external_addrs(&external) {
                        log::warn!("{name}: updating external addresses failed: {e}");
                    }
                }
            }
            self.external_v4 = external;
        }
        let old = self.published.load_full();
        if local_addrs(&old) != (v4.clone(), v6.clone()) {
            for (name, p) in &mut self.ports {
                if let Err(e) = p.redirector.set_local_addrs(&v4, &v6) {
                    log::warn!("{name}: updating local addresses failed: {e}");
                }
            }
        }
        let vanished: Vec<String> = self
            .ports
            .keys()
            .filter(|n| !want.iter().any(|w| &w.name == *n))
            .cloned()
            .collect();
        let gone = gone_addrs(&old, &snap);
        let generation = snap.generation();
        // Publish first: workers stop transmitting to vanished ports once
        // they run the new snapshot; then their sockets go.
        self.published.store(Arc::new(snap));
        self.retired.push(old);
        for name in vanished {
            self.remove_port(&name);
        }
        if !gone.is_empty() {
            self.flush_gone(&gone, generation);
        }
        self.free_retired();
        Ok(())
    }

    /// Evicts the conntrack and fragment entries of addresses whose
    /// endpoint left the node, once every worker runs the snapshot without
    /// it (a worker still on the old one could otherwise insert a flow for
    /// it after the flush). L7 slots of the evicted flows are freed by the
    /// workers' upkeep, which frees any slot whose flow is gone.
    fn flush_gone(&mut self, gone: &[std::net::IpAddr], generation: u64) {
        // A worker sleeps at most MAX_SLEEP_MS between rounds.
        let deadline = Instant::now() + Duration::from_millis(20 * MAX_SLEEP_MS as u64);
        while Instant::now() < deadline
            && self
                .workers
                .iter()
                .any(|w| w.stats.generation.get() != generation)
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        let now = monotonic_ns();
        let ct = self.conntrack.flush_addrs(gone, now);
        let frags = self.conntrack.frags().flush_addrs(gone, now);
        self.flushed += (ct + frags) as u64;
        log::info!(
            "flushed {ct} conntrack and {frags} fragment entries of {} departed address(es)",
            gone.len()
        );
    }

    /// Loads the checkpoint named by the configuration into the (empty)
    /// tables: one log line for what it restored, or one warning for why
    /// it was refused (then the tables start empty).
    fn restore_checkpoint(&mut self) {
        let Some(c) = &self.cfg.checkpoint else {
            return;
        };
        let now = monotonic_ns();
        // Nothing shares the table yet (no worker runs): the load gives it
        // the writer's hash seeds.
        let Some(ct) = Arc::get_mut(&mut self.conntrack) else {
            log::warn!(
                "checkpoint {} ignored: the table is in use",
                c.path.display()
            );
            return;
        };
        match crate::checkpoint::load(&c.path, &c.node, ct, now) {
            Ok(None) => {}
            Ok(Some(r)) => {
                log::info!(
                    "checkpoint {}: restored {} conntrack and {} NAT entries (written {} ms ago under generation {}; skipped {} expired, {} without room, {} bad)",
                    c.path.display(),
                    r.conntrack,
                    r.nat,
                    r.age_ns / 1_000_000,
                    r.generation,
                    r.expired,
                    r.no_room,
                    r.bad
                );
                self.ckpt.restored = r;
            }
            Err(e) => log::warn!("checkpoint {} ignored: {e}", c.path.display()),
        }
    }

    /// Starts the checkpoint writer's thread (see
    /// [`crate::checkpoint::Writer`]; nothing when no checkpoint is
    /// configured). After [`restore_checkpoint`](Self::restore_checkpoint).
    fn start_checkpoint(&mut self) -> Result<(), DataplaneError> {
        let Some(c) = &self.cfg.checkpoint else {
            return Ok(());
        };
        let w = crate::checkpoint::Writer::new(
            Arc::clone(&self.conntrack),
            Arc::clone(&self.published),
            c.path.clone(),
            c.node.clone(),
            crate::checkpoint::boot_id(),
        );
        self.ckpt.stats = w.stats();
        self.ckpt.join = Some(
            w.spawn(Arc::clone(&self.ckpt.stop))
                .map_err(DataplaneError::Checkpoint)?,
        );
        Ok(())
    }

    /// Counters, latency and configuration, for `weir status`. Sample twice
    /// and divide by the `monotonic_ns` difference for rates. Walks the
    /// conntrack and fragment tables (every bucket): a caller holding a lock
    /// others wait on takes [`status_parts`](Self::status_parts) instead.
    pub fn status(&self) -> DataplaneStatus {
        let (mut st, census) = self.status_parts();
        census.fill(&mut st);
        st
    }

    /// The workers' packet totals alone: no table walk, no XDP map read
    /// (the node's rates, sampled every 500 ms).
    pub fn totals(&self) -> Totals {
        let workers: Vec<WorkerStatus> = self.workers.iter().map(|w| w.stats.snapshot()).collect();
        Totals::of(&workers)
    }

    /// [`status`](Self::status) without the table walk: the live-entry
    /// counts (`conntrack.entries`, `.endpoints`, `.fragments.entries`) are
    /// 0 until [`TableCensus::fill`] is called, which needs nothing of the
    /// dataplane but its tables and so can run after the caller let go of
    /// its lock on it. At 1M entries the walk takes tens of milliseconds;
    /// under the node's dataplane lock it held up snapshot updates and the
    /// flow-log drain for as long.
    pub fn status_parts(&self) -> (DataplaneStatus, TableCensus) {
        let workers: Vec<WorkerStatus> = self.workers.iter().map(|w| w.stats.snapshot()).collect();
        let totals = Totals::of(&workers);
        let ports = self
            .ports
            .iter()
            .map(|(name, p)| {
                let (xdp, error) = match p.redirector.counters() {
                    Ok(c) => (Some(c), None),
                    Err(e) => (None, Some(e.to_string())),
                };
                PortStatus {
                    name: name.clone(),
                    underlay: p.underlay.is_some(),
                    queues: p.queues,
                    zero_copy: p.zero_copy,
                    mode: p.mode.clone(),
                    tx_budget: p.tx_budget,
                    xdp,
                    error,
                }
            })
            .collect();
        let census = TableCensus {
            conntrack: Arc::clone(&self.conntrack),
            snapshot: self.published.load_full(),
        };
        let st = DataplaneStatus {
            monotonic_ns: monotonic_ns(),
            uptime_ns: self.started.elapsed().as_nanos() as u64,
            generation: census.snapshot.generation(),
            poll: self.cfg.poll,
            config: ConfigStatus {
                cores: self.cfg.cores.clone(),
                queues: self.cfg.queues,
                frame_size: self.cfg.frame_size,
                frames_per_worker: self.budgets.iter().map(|b| b.frames).max().unwrap_or(0),
                umem_bytes: self
                    .budgets
                    .iter()
                    .map(|b| b.bytes(self.cfg.frame_size))
                    .sum(),
                max_pods: self.cfg.max_pods,
                fill_floor: self.cfg.fill_floor,
                batch: self.cfg.batch,
                ring_size: self.cfg.ring_size,
                xdp_mode: format!("{:?}", self.cfg.xdp_mode).to_lowercase(),
                zero_copy: self.cfg.zero_copy,
                busy_poll: self.cfg.busy_poll,
                idle_spin_us: self.cfg.idle_spin.as_micros() as u64,
                idle_yield: self.cfg.idle_yield,
                coalesce_us: self.cfg.coalesce_us,
                ct_prefetch: self.cfg.ct_prefetch,
                housekeeping_cores: self.housekeeping.clone(),
            },
            workers,
            totals,
            ports,
            conntrack: self.conntrack_status(),
            wireguard: self
                .cfg
                .wireguard
                .as_ref()
                .map(|t| t.peer_status())
                .unwrap_or_default(),
        };
        (st, census)
    }

    /// Moves every queued flow event of every worker to `out` (grouped by
    /// worker, each worker's in order).
    pub fn drain_flows(&self, out: &mut Vec<FlowEvent>) {
        for log in &self.flow_logs {
            log.drain(out);
        }
    }

    /// One page of the live conntrack entries, read-only (see
    /// [`Conntrack::entries`]): from bucket `start`, about `max` entries;
    /// returns where the next page starts (`None`: done). The workers keep
    /// forwarding while it reads (one bucket lock at a time).
    pub fn conntrack_page(
        &self,
        start: usize,
        max: usize,
        out: &mut Vec<crate::conntrack::EntryView>,
    ) -> Option<usize> {
        self.conntrack.entries(start, max, monotonic_ns(), out)
    }

    /// Live conntrack entries (visits every bucket; for status, not hot).
    pub fn conntrack_entries(&self) -> usize {
        self.conntrack.count(monotonic_ns())
    }

    /// The conntrack counters; the live-entry counts are
    /// [`TableCensus::fill`]'s.
    fn conntrack_status(&self) -> ConntrackStatus {
        let sum = |f: fn(&CtStats) -> u64| self.ct_stats.iter().map(|s| f(s)).sum();
        ConntrackStatus {
            size: self.conntrack.capacity(),
            bytes_per_entry: Conntrack::bytes_per_entry(),
            huge_page_bytes: self.conntrack.huge_page_bytes().unwrap_or(0),
            entries: 0,
            endpoints: Vec::new(),
            flushed: self.flushed,
            inserts: sum(|s| s.inserts.get()),
            evictions: sum(|s| s.evictions.get()),
            table_full: sum(|s| s.table_full.get()),
            invalid: sum(|s| s.invalid.get()),
            revoked: sum(|s| s.revoked.get()),
            rejudged: sum(|s| s.rejudged.get()),
            pickups: sum(|s| s.pickups.get()),
            fragments: FragmentStatus {
                size: self.conntrack.frags().capacity(),
                bytes_per_entry: crate::frag::FragTable::bytes_per_entry(),
                timeout_ns: self.conntrack.frags().timeout(),
                entries: 0,
                datagrams: sum(|s| s.frag_datagrams.get()),
                followed: sum(|s| s.frag_followed.get()),
                evictions: sum(|s| s.frag_evictions.get()),
            },
            flow_events: self.flow_logs.iter().map(|l| l.pushed()).sum(),
            flow_events_lost: self.flow_logs.iter().map(|l| l.lost()).sum(),
            restored: self.ckpt.restored.conntrack,
            restored_nat: self.ckpt.restored.nat,
            checkpoints: self.ckpt.stats.written(),
            checkpoint_errors: self.ckpt.stats.errors(),
            checkpoint_entries: self.ckpt.stats.entries(),
            checkpoint_bytes: self.ckpt.stats.bytes(),
        }
    }

    /// Stops and joins the workers (their sockets are deleted); XDP stays
    /// attached so that the pods' traffic is dropped, not routed around weir.
    pub fn stop(self) {
        drop(self);
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Relaxed);
        for w in &mut self.workers {
            if let Some(j) = w.join.take() {
                if j.join().is_err() {
                    log::error!("worker {} panicked", w.id);
                }
            }
        }
        // The workers are gone: the checkpoint's last write holds every
        // entry (a graceful stop loses none).
        self.ckpt.stop.store(true, Relaxed);
        if let Some(j) = self.ckpt.join.take() {
            j.thread().unpark();
            if j.join().is_err() {
                log::error!("the checkpoint writer panicked");
            }
        }
        // Redirector handles go; the programs stay attached (fail closed).
        self.ports.clear();
    }

    fn check_workers(&self) -> Result<(), DataplaneError> {
        for w in &self.workers {
            if w.join.as_ref().is_none_or(|j| j.is_finished()) {
                return Err(DataplaneError::WorkerGone(w.id));
            }
        }
        Ok(())
    }

    fn add_port(
        &mut self,
        want: &Want,
        v4: &[Ipv4Addr],
        v6: &[Ipv6Addr],
    ) -> Result<(), DataplaneError> {
        let name = want.name.as_str();
        // Pod veths are created with cfg.queues queues; the underlay is made
        // by someone else: use its real count when it can be read.
        let queues = match want.underlay {
            Some(_) => match sysfs_rx_queues(name) {
                Some(n) if n != self.cfg.queues => {
                    log::info!("{name}: {n} rx queues (configured {})", self.cfg.queues);
                    n
                }
                _ => self.cfg.queues,
            },
            None => self.cfg.queues,
        };
        let opts = AttachOptions {
            underlay_udp_port: want.underlay,
            mode: self.cfg.xdp_mode,
            queues,
            local_v4: v4.to_vec(),
            local_v6: v6.to_vec(),
            host_port: self.host_port,
        };
        let xdp_err = |source| DataplaneError::Xdp {
            port: name.to_string(),
            source,
        };
        let mut redirector = Redirector::attach(name, &opts).map_err(xdp_err)?;
        if want.underlay.is_some() && self.routed_v4.is_some() {
            redirector.set_routed_v4(self.routed_v4).map_err(xdp_err)?;
        }
        if want.underlay.is_some() && self.routed_v6.is_some() {
            redirector.set_routed_v6(self.routed_v6).map_err(xdp_err)?;
        }
        if want.underlay.is_some() && self.host_fw {
            redirector.set_host_firewall(true).map_err(xdp_err)?;
        }
        if want.underlay.is_some() && !self.external_v4.is_empty() {
            redirector
                .set_external_addrs(&self.external_v4)
                .map_err(xdp_err)?;
        }
        let nw = self.workers.len() as u32;
        let mut zero_copy = self.cfg.zero_copy;
        let mut socks = Vec::new();
        let mut refused: Option<String> = None;
        let mut tx_budget: Option<u32> = None;
        for q in 0..queues {
            let w = &self.workers[(q % nw) as usize];
            // A socket that fails drops the ones made before it: none is
            // registered yet.
            let sock = w.umem.open_socket(name, q, self.cfg.zero_copy)?;
            zero_copy &= sock.zero_copy();
            if let Some(b) = sock.tx_budget() {
                tx_budget = Some(tx_budget.map_or(b, |t| t.min(b)));
            }
            if refused.is_none() {
                refused = sock.zero_copy_refused().map(str::to_string);
            }
            if self.cfg.busy_poll {
                if let Err(e) = sock.set_busy_poll(BUSY_POLL_USECS, self.cfg.batch as u32) {
                    log::warn!("{name} queue {q}: busy polling not set: {e}");
                }
            }
            socks.push((q, sock));
        }
        // The workers fill each socket's fill ring to its floor before the
        // socket goes into the XSKMAP: the first frames to arrive find room
        // (registered first, a burst could meet an empty fill ring and be
        // dropped by the kernel).
        let mut acks = Vec::new();
        let mut fds = Vec::new();
        for (q, sock) in socks {
            let w = &self.workers[(q % nw) as usize];
            let (ack, filled) = channel::bounded(1);
            fds.push((q, sock.fd()));
            // A worker that exited drops the socket; check_workers reports it.
            if w.ctl.send(Control::Add(Box::new(sock), ack)).is_ok() {
                acks.push(filled);
            }
        }
        for filled in acks {
            // A worker sleeps at most MAX_SLEEP_MS between control drains.
            if filled.recv_timeout(ADD_ACK_TIMEOUT).is_err() {
                log::warn!("{name}: a worker did not take its socket in time");
            }
        }
        for (i, &(q, fd)) in fds.iter().enumerate() {
            if let Err(e) = redirector.set_socket(q, fd) {
                for (q, _) in &fds[..i] {
                    let _ = redirector.clear_socket(*q);
                }
                for w in &self.workers {
                    let _ = w.ctl.send(Control::Remove(name.to_string()));
                }
                return Err(xdp_err(e));
            }
        }
        log::info!(
            "{} {name}: {queues} queue(s), {} mode",
            if want.underlay.is_some() {
                "underlay"
            } else {
                "port"
            },
            if zero_copy { "zero-copy" } else { "copy" }
        );
        let mode = port_mode(zero_copy, refused.as_deref());
        self.ports.insert(
            name.to_string(),
            PortRt {
                redirector,
                zero_copy,
                mode,
                queues,
                tx_budget,
                underlay: want.underlay,
            },
        );
        Ok(())
    }

    fn remove_port(&mut self, name: &str) {
        if let Some(mut p) = self.ports.remove(name) {
            for q in 0..p.queues {
                // Fails when the interface is already gone; nothing to clear then.
                let _ = p.redirector.clear_socket(q);
            }
        }
        for w in &self.workers {
            let _ = w.ctl.send(Control::Remove(name.to_string()));
        }
    }

    /// Drops replaced snapshots no worker holds any more.
    fn free_retired(&mut self) {
        self.retired.retain(|s| Arc::strong_count(s) > 1);
    }
}

impl Drop for Dataplane {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn validate(cfg: &DataplaneConfig) -> Result<(), DataplaneError> {
    let bad = |m: String| Err(DataplaneError::Config(m));
    if cfg.cores.is_empty() {
        return bad("no cores given: need one per worker".into());
    }
    if cfg.queues == 0 {
        return bad("queues must be at least 1".into());
    }
    if cfg.cores.len() > cfg.queues as usize {
        return bad(format!(
            "{} workers but only {} queues per interface: a worker would serve nothing",
            cfg.cores.len(),
            cfg.queues
        ));
    }
    if cfg.conntrack_size == 0 || cfg.flow_log_capacity == 0 {
        return bad("conntrack_size and flow_log_capacity must be at least 1".into());
    }
    if !(1..=L7_MAX_FLOWS_LIMIT).contains(&cfg.l7_max_flows) {
        return bad(format!(
            "l7_max_flows {} out of range 1..={L7_MAX_FLOWS_LIMIT}",
            cfg.l7_max_flows
        ));
    }
    if !(1..=1024).contains(&cfg.batch) {
        return bad(format!("batch {} out of range 1..=1024", cfg.batch));
    }
    if !cfg.ring_size.is_power_of_two() || cfg.ring_size < 64 {
        return bad(format!(
            "ring_size {} must be a power of two >= 64",
            cfg.ring_size
        ));
    }
    if cfg.frames_per_worker == Some(0) || cfg.fill_floor == 0 {
        return bad("frames_per_worker and fill_floor must be at least 1".into());
    }
    if cfg.frame_size != 2048 && cfg.frame_size != 4096 {
        return bad(format!(
            "frame_size {} must be 2048 or 4096",
            cfg.frame_size
        ));
    }
    let ids: Vec<usize> = core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.id)
        .collect();
    for c in &cfg.cores {
        if !ids.is_empty() && !ids.contains(c) {
            return bad(format!("core {c} is not available (have {ids:?})"));
        }
    }
    Ok(())
}

/// Each worker's frame budget: the configured UMEM size, or one planned
/// for the sockets of `max_pods` pods (or the ports of `snap`, if more)
/// plus the underlay's, on the queues the worker serves.
fn budgets(cfg: &DataplaneConfig, snap: &Snapshot) -> Vec<FrameBudget> {
    let workers = cfg.cores.len() as u32;
    let ports =
        cfg.max_pods.max(snap.spec.ports.len() as u32) + u32::from(snap.spec.tunnel.is_some());
    (0..workers)
        .map(|w| match cfg.frames_per_worker {
            Some(frames) => FrameBudget::fixed(frames, cfg.fill_floor, cfg.ring_size),
            None => FrameBudget::plan(
                budget::sockets_of_worker(w, workers, ports, cfg.queues),
                cfg.fill_floor,
                cfg.ring_size,
            ),
        })
        .collect()
}

/// Addresses of `old`'s endpoints that no endpoint of `new` has: their
/// pod left the node.
fn gone_addrs(old: &Snapshot, new: &Snapshot) -> Vec<std::net::IpAddr> {
    let addrs = |s: &Snapshot| -> Vec<std::net::IpAddr> {
        s.spec
            .endpoints
            .iter()
            .flat_map(|e| [e.ipv4.map(Into::into), e.ipv6.map(Into::into)])
            .flatten()
            .collect()
    };
    let keep = addrs(new);
    addrs(old)
        .into_iter()
        .filter(|a| !keep.contains(a))
        .collect()
}

/// Addresses the XDP program hands to the kernel: the node's own (its
/// underlay address included; in underlay mode the tunnel's frames to it
/// are the ones taken), and the pods' IPv6 gateway fe80::1 (weir-xdp adds
/// the IPv4 gateway itself).
fn local_addrs(snap: &Snapshot) -> (Vec<Ipv4Addr>, Vec<Ipv6Addr>) {
    let mut v4 = Vec::new();
    v4.extend(snap.spec.node_ipv4);
    if let Some(t) = &snap.spec.tunnel {
        if !v4.contains(&t.underlay.ipv4) {
            v4.push(t.underlay.ipv4);
        }
    }
    let mut v6 = vec![Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1)];
    v6.extend(snap.spec.node_ipv6);
    // The IPv6 underlay address (SNAT66): the kernel answers its NDP, and
    // the underlay's XDP program takes the SNAT replies to it.
    if let Some(a) = snap.uplink().and_then(|u| u.node_ipv6) {
        if !v6.contains(&a) {
            v6.push(a);
        }
    }
    (v4, v6)
}

/// CLOCK_MONOTONIC in nanoseconds (vDSO, no syscall): the clock of
/// conntrack deadlines and flow events.
pub(crate) fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}
