//! `weir dataplane`: one node's dataplane process. It enters the node's
//! network namespace, starts the AF_XDP workers on the node's pod
//! interfaces, follows the agent's snapshot file, and answers status queries
//! on `nodes/<node>/dataplane.sock`.
//!
//! It runs apart from the agent and the supervisor so that either can
//! restart without stopping forwarding, and so that stopping it shows weir
//! failing closed: the XDP programs stay attached, their sockets are gone,
//! and pod traffic is dropped.

use crate::flows::FlowBuffer;
use crate::ipc::{self, Reply, Request};
use crate::state::StateDir;
use anyhow::Context;
use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use weir_dataplane::flows::FlowEvent;
use weir_dataplane::runtime::{Dataplane, DataplaneConfig, PollMode};
use weir_dataplane::{Snapshot, SnapshotSpec};
use weir_model::ipc::{Empty, FlowsReply, NodePing, NodeStatus};

pub struct Options {
    pub cluster: String,
    pub node: String,
    pub cores: Vec<usize>,
    pub poll: PollMode,
    /// Flows under HTTP rules per worker (`--l7-max-flows`).
    pub l7_max_flows: usize,
    /// Conntrack entries (`--conntrack-size`).
    pub conntrack_size: usize,
    /// WireGuard between nodes (`--encrypt wireguard`, docs/encryption.md).
    pub wireguard: bool,
    /// The per-batch latency breakdown (`--latency-breakdown`).
    pub latency_breakdown: bool,
    /// Zero-copy sockets where the driver offers them (`--zero-copy`).
    pub zero_copy: bool,
    /// Socket busy polling (`--busy-poll`).
    pub busy_poll: bool,
    /// Adaptive polling's spin after the last frame (`--idle-spin-us`).
    pub idle_spin_us: u64,
    /// Adaptive polling yields on empty rounds (`--idle-yield`).
    pub idle_yield: bool,
    /// Adaptive polling's sleep under thin load (`--coalesce-us`).
    pub coalesce_us: u32,
    /// When workers run the conntrack prefetch (`--ct-prefetch`).
    pub ct_prefetch: weir_model::status::CtPrefetch,
}

/// Checks `--coalesce-us`: at most
/// [`weir_dataplane::coalesce::MAX_COALESCE_US`].
pub fn check_coalesce_us(us: u64) -> anyhow::Result<u32> {
    let max = weir_dataplane::coalesce::MAX_COALESCE_US;
    anyhow::ensure!(
        us <= u64::from(max),
        "--coalesce-us: {us} is above {max} (a longer sleep lets a burst overrun the fill ring)"
    );
    Ok(us as u32)
}

/// Checks `--idle-spin-us`: at most
/// [`weir_dataplane::runtime::MAX_IDLE_SPIN_US`].
pub fn check_idle_spin_us(us: u64) -> anyhow::Result<u64> {
    let max = weir_dataplane::runtime::MAX_IDLE_SPIN_US;
    anyhow::ensure!(us <= max, "--idle-spin-us: {us} is above {max}");
    Ok(us)
}

/// Whether the node's ports need multi-buffer sockets: the cluster's pod
/// MTU, a pod of this node or the underlay is above what one UMEM frame
/// holds.
fn multi_buffer_needed(cluster: &weir_topo::Cluster, node: &str) -> bool {
    let frame = DataplaneConfig::default().frame_size;
    let pods = cluster
        .pods
        .iter()
        .filter(|p| p.node == node)
        .map(|p| p.mtu);
    let mtu = pods
        .chain([cluster.pod_mtu, cluster.underlay_mtu])
        .max()
        .unwrap_or(0);
    let on = weir_dataplane::worker::multibuf::needed(mtu, frame);
    if on {
        log::info!("nodes/{node}: MTU {mtu}: AF_XDP multi-buffer sockets (XDP_USE_SG)");
    }
    on
}

/// Checks `--conntrack-size`: 16 (one bucket) up to 2^24 entries.
pub fn check_conntrack_size(n: usize) -> anyhow::Result<usize> {
    anyhow::ensure!(
        (16..=1 << 24).contains(&n),
        "--conntrack-size: {n} is not in 16..={}",
        1 << 24
    );
    Ok(n)
}

/// Checks `--l7-max-flows`.
pub fn check_l7_max_flows(n: usize) -> anyhow::Result<usize> {
    anyhow::ensure!(
        (1..=weir_dataplane::runtime::L7_MAX_FLOWS_LIMIT).contains(&n),
        "--l7-max-flows: {n} is not in 1..={}",
        weir_dataplane::runtime::L7_MAX_FLOWS_LIMIT
    );
    Ok(n)
}

/// Parses `--cores` like `1`, `0,1` or `0-3`.
pub fn parse_cores(s: &str) -> anyhow::Result<Vec<usize>> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if let Some((a, b)) = part.split_once('-') {
            let a: usize = a
                .parse()
                .with_context(|| format!("--cores: bad core {a:?}"))?;
            let b: usize = b
                .parse()
                .with_context(|| format!("--cores: bad core {b:?}"))?;
            anyhow::ensure!(a <= b, "--cores: empty range {part}");
            out.extend(a..=b);
        } else {
            out.push(
                part.parse()
                    .with_context(|| format!("--cores: bad core {part:?}"))?,
            );
        }
    }
    anyhow::ensure!(!out.is_empty(), "--cores: no cores given");
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    if let Some(c) = out.iter().find(|&&c| c >= n) {
        anyhow::bail!("--cores: core {c} does not exist (this machine has {n})");
    }
    Ok(out)
}

/// The default worker core: the last one, leaving core 0 to the kernel and load.
pub fn default_cores() -> Vec<usize> {
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    vec![n - 1]
}

struct Shared {
    dp: Mutex<Option<Dataplane>>,
    /// The snapshot the workers run, to name endpoints and rules in flows.
    snap: Mutex<Snapshot>,
    /// Pod names by address (all nodes), to name remote peers in flows.
    names: Mutex<crate::flows::Names>,
    flows: Mutex<FlowBuffer>,
    applied: Mutex<u64>,
    rates: Mutex<Rates>,
    stop: AtomicBool,
    /// The node's name (conntrack dump records).
    node: String,
    /// When the node last applied a snapshot (Unix ns) and how long after
    /// the agent wrote it (ns).
    apply_times: Mutex<(u64, u64)>,
}

/// Now (Unix ns), and how long after `written` (the snapshot file's
/// mtime) that is.
fn apply_times(written: Option<SystemTime>) -> (u64, u64) {
    let now = SystemTime::now();
    let unix = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let latency = written
        .and_then(|w| now.duration_since(w).ok())
        .map_or(0, |d| d.as_nanos() as u64);
    (unix, latency)
}

#[derive(Default, Clone)]
struct Rates {
    last: Option<(Instant, u64, u64)>,
    rx_pps: f64,
    tx_pps: f64,
}

pub fn run(opts: Options) -> anyhow::Result<()> {
    // Large transient blocks (a `weir flows` reply) go back to the kernel
    // when freed, whichever thread freed them (docs/reliability.md, soak).
    weir_dataplane::heap::fixed_thresholds();
    let state = StateDir::new(&opts.cluster);
    let cluster = weir_topo::Cluster::load(&state.cluster_file())
        .with_context(|| format!("cluster {}: not up (no state)", opts.cluster))?;
    let node = cluster
        .node(&opts.node)
        .with_context(|| format!("nodes/{}: not in cluster {}", opts.node, opts.cluster))?;
    enter_netns(&node.netns)?;

    let spec = wait_for_snapshot(&state, &opts.node)?;
    let tunnel_addr = spec.tunnel.as_ref().map(|t| (t.underlay.ipv4, t.udp_port));
    let mut applied = spec.generation;
    let mut mtime = snapshot_mtime(&state, &opts.node);
    let snap =
        Snapshot::build(spec).map_err(|e| anyhow::anyhow!("nodes/{}: snapshot: {e}", opts.node))?;
    let render_snap = snap.clone();
    let cfg = DataplaneConfig {
        cores: opts.cores.clone(),
        poll: opts.poll,
        // The pod veths were built with this many queues: a socket on each.
        queues: cluster.queues,
        l7_max_flows: opts.l7_max_flows,
        conntrack_size: opts.conntrack_size,
        wireguard: match opts.wireguard {
            true => Some(wireguard_table(&state, &cluster, &opts.node)?),
            false => None,
        },
        latency_breakdown: opts.latency_breakdown,
        zero_copy: opts.zero_copy,
        busy_poll: opts.busy_poll,
        idle_spin: std::time::Duration::from_micros(opts.idle_spin_us),
        idle_yield: opts.idle_yield,
        coalesce_us: opts.coalesce_us,
        ct_prefetch: opts.ct_prefetch,
        // The control loop (snapshots, flow logs), the checkpoint and the
        // status server stay off the workers' cores.
        housekeeping: true,
        // Multi-buffer sockets when a port's MTU needs frames above one
        // UMEM frame (pod MTU above ~3.8 KiB, docs/performance.md).
        multi_buffer: multi_buffer_needed(&cluster, &opts.node),
        // Connections kept across a dataplane kill (docs/reliability.md).
        checkpoint: Some(weir_dataplane::runtime::CheckpointConfig {
            path: state.node_dir(&opts.node).join("conntrack.ckpt"),
            node: opts.node.clone(),
        }),
        ..DataplaneConfig::default()
    };
    let mut wg_timers = match (&cfg.wireguard, tunnel_addr) {
        (Some(t), Some(addr)) => Some(WgTimers::new(
            Arc::clone(t),
            addr,
            Some(WgFollow::new(&state, &cluster, &opts.node)),
        )?),
        _ => None,
    };
    let dp = Dataplane::start(cfg, snap).map_err(|e| anyhow::anyhow!("dataplane: {e}"))?;
    log::info!(
        "dataplane for node {} running generation {applied}",
        opts.node
    );

    let shared = Arc::new(Shared {
        dp: Mutex::new(Some(dp)),
        snap: Mutex::new(render_snap),
        names: Mutex::new(crate::flows::names(&cluster)),
        flows: Mutex::new(FlowBuffer::default()),
        applied: Mutex::new(applied),
        rates: Mutex::new(Rates::default()),
        stop: AtomicBool::new(false),
        node: opts.node.clone(),
        apply_times: Mutex::new(apply_times(mtime)),
    });
    let term = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGTERM, term.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGINT, term.clone())?;

    crate::state::write_atomic(
        &state.dataplane_pid(&opts.node),
        std::process::id().to_string().as_bytes(),
    )?;
    let sock = state.dataplane_sock(&opts.node);
    let _ = std::fs::remove_file(&sock);
    let listener = UnixListener::bind(&sock).with_context(|| format!("bind {}", sock.display()))?;
    {
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("dp-status".into())
            .spawn(move || serve(listener, shared))?;
    }

    let mut last_rate = Instant::now();
    let mut events = Vec::new();
    while !shared.stop.load(Ordering::Relaxed) && !term.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
        // Follow the agent's snapshot file.
        let m = snapshot_mtime(&state, &opts.node);
        if m != mtime {
            mtime = m;
            match crate::agent::read_snapshot(&state, &opts.node) {
                Ok(spec) if spec.generation != applied => {
                    let g = spec.generation;
                    match Snapshot::build(spec) {
                        Ok(snap) => {
                            let render = snap.clone();
                            let mut guard = shared.dp.lock().expect("dataplane lock");
                            if let Some(dp) = guard.as_mut() {
                                // Drain what the old generation logged first,
                                // so its rule ids name its rules.
                                render_flows(dp, &shared, &opts.node, &mut events);
                                match dp.apply(snap) {
                                    Ok(()) => {
                                        *shared.snap.lock().expect("lock") = render;
                                        if let Ok(c) =
                                            weir_topo::Cluster::load(&state.cluster_file())
                                        {
                                            *shared.names.lock().expect("lock") =
                                                crate::flows::names(&c);
                                        }
                                        applied = g;
                                        *shared.applied.lock().expect("lock") = g;
                                        *shared.apply_times.lock().expect("lock") =
                                            apply_times(mtime);
                                        log::info!("applied generation {g}");
                                    }
                                    Err(e) => log::error!("generation {g} not applied: {e}"),
                                }
                            }
                        }
                        Err(e) => log::error!("generation {g} rejected: {e}"),
                    }
                }
                Ok(_) => {}
                Err(e) => log::warn!("snapshot unreadable, keeping generation {applied}: {e}"),
            }
        }
        drain_flows(&shared, &opts.node, &mut events);
        if let Some(t) = wg_timers.as_mut() {
            t.run();
        }
        if last_rate.elapsed() >= Duration::from_millis(500) {
            last_rate = Instant::now();
            sample_rates(&shared);
        }
    }
    log::info!("stopping dataplane for node {}", opts.node);
    if let Some(dp) = shared.dp.lock().expect("lock").take() {
        dp.stop();
    }
    let _ = std::fs::remove_file(&sock);
    Ok(())
}

/// Moves the workers' flow events into the record buffer.
fn drain_flows(shared: &Shared, node: &str, scratch: &mut Vec<FlowEvent>) {
    if let Some(dp) = shared.dp.lock().expect("lock").as_ref() {
        render_flows(dp, shared, node, scratch);
    }
}

/// `drain_flows` for a caller that already holds the dataplane.
fn render_flows(dp: &Dataplane, shared: &Shared, node: &str, scratch: &mut Vec<FlowEvent>) {
    scratch.clear();
    dp.drain_flows(scratch);
    if scratch.is_empty() {
        return;
    }
    let offset = wall_offset_ns();
    let snap = shared.snap.lock().expect("lock");
    let names = shared.names.lock().expect("lock");
    let mut buf = shared.flows.lock().expect("lock");
    for ev in scratch.iter() {
        buf.push(crate::flows::render(ev, &snap, &names, node, offset));
    }
}

/// Unix time minus CLOCK_MONOTONIC, in nanoseconds.
fn wall_offset_ns() -> i128 {
    let wall = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128);
    let mono = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map_or(0, |t| {
        t.tv_sec() as i128 * 1_000_000_000 + t.tv_nsec() as i128
    });
    wall - mono
}

/// The node's rx/tx rates from the workers' totals (not a whole status:
/// that walks the conntrack table, tens of ms at 1M entries, and ran here
/// every 500 ms under the dataplane lock).
fn sample_rates(shared: &Shared) {
    let (rx, tx) = match shared.dp.lock().expect("lock").as_ref() {
        Some(dp) => {
            let t = dp.totals();
            (t.rx_packets, t.tx_packets)
        }
        None => return,
    };
    let now = Instant::now();
    let mut r = shared.rates.lock().expect("lock");
    if let Some((t0, rx0, tx0)) = r.last {
        let dt = now.duration_since(t0).as_secs_f64().max(1e-3);
        r.rx_pps = rx.saturating_sub(rx0) as f64 / dt;
        r.tx_pps = tx.saturating_sub(tx0) as f64 / dt;
    }
    r.last = Some((now, rx, tx));
}

fn serve(listener: UnixListener, shared: Arc<Shared>) {
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let request = ipc::read_request::<Request>(&conn);
        // The flow log and conntrack pages: tens of MB while a full
        // 20 000-record buffer is copied and encoded.
        let big = matches!(
            request,
            Ok(Request::Flows { .. } | Request::Conntrack { .. })
        );
        let reply = match request {
            Ok(Request::Ping) => Reply::with(&NodePing {
                generation: *shared.applied.lock().expect("lock"),
            }),
            Ok(Request::Status) => {
                // The table walk after the lock is let go (snapshot
                // updates and the flow-log drain do not wait for it).
                let parts = shared
                    .dp
                    .lock()
                    .expect("lock")
                    .as_ref()
                    .map(|dp| dp.status_parts());
                let status = parts.map(|(mut st, census)| {
                    census.fill(&mut st);
                    st
                });
                let r = shared.rates.lock().expect("lock").clone();
                let (applied_unix_ns, apply_latency_ns) = *shared.apply_times.lock().expect("lock");
                Reply::with(&NodeStatus {
                    generation: *shared.applied.lock().expect("lock"),
                    rx_pps: r.rx_pps,
                    tx_pps: r.tx_pps,
                    dataplane: status,
                    applied_unix_ns,
                    apply_latency_ns,
                })
            }
            Ok(Request::Flows { since }) => {
                // What the workers queued up to now, not only up to the main
                // loop's last 50 ms tick: a client that just saw a denial
                // finds its record (both drains hold the dataplane's lock,
                // so records keep their order).
                drain_flows(&shared, &shared.node, &mut Vec::new());
                let (records, last) = shared.flows.lock().expect("lock").since(since);
                Reply::with(&FlowsReply { records, last })
            }
            Ok(Request::Conntrack { from, max }) => {
                match shared.dp.lock().expect("lock").as_ref() {
                    Some(dp) => {
                        let snap = shared.snap.lock().expect("lock");
                        let names = shared.names.lock().expect("lock");
                        Reply::with(&crate::flows::conntrack_page(
                            dp,
                            &snap,
                            &names,
                            &shared.node,
                            (from, max),
                        ))
                    }
                    None => Reply::err("dataplane not running".to_string()),
                }
            }
            Ok(Request::Shutdown) => {
                shared.stop.store(true, Ordering::Relaxed);
                Reply::with(&Empty {})
            }
            Ok(other) => Reply::err(format!("dataplane does not handle {other:?}")),
            Err(e) => Reply::err(format!("bad request: {e}")),
        };
        let _ = ipc::write_reply(&conn, &reply);
        drop(reply);
        if big {
            // glibc kept these tens of MB in this thread's arena for good:
            // one `weir flows` on a full buffer left RSS ~80 MiB higher.
            weir_dataplane::heap::release_free_memory();
        }
    }
}

/// Moves this thread (and the threads it starts later: the workers) into
/// the node's namespace; `netns::run_in` would switch only a helper thread.
fn enter_netns(name: &str) -> anyhow::Result<()> {
    let f = weir_topo::netns::open(name)?;
    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("setns(netns {name})"))?;
    Ok(())
}

fn snapshot_mtime(state: &StateDir, node: &str) -> Option<SystemTime> {
    std::fs::metadata(state.snapshot_file(node))
        .and_then(|m| m.modified())
        .ok()
}

fn wait_for_snapshot(state: &StateDir, node: &str) -> anyhow::Result<SnapshotSpec> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match crate::agent::read_snapshot(state, node) {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// The node's WireGuard peers (local cluster, docs/encryption.md): the
/// node's private key in `<state>/wireguard/<node>/wireguard.key` (made,
/// mode 0600, on first start), its public key published in the cluster
/// state as `<state>/wireguard/<node>.pub`, and every other weir node's
/// published key (waited for up to 30 s: the nodes start together). A node
/// without one is left out with a warning: its traffic is dropped
/// (`wireguard-no-peer`), never sent in clear.
fn wireguard_table(
    state: &StateDir,
    cluster: &weir_topo::Cluster,
    me: &str,
) -> anyhow::Result<Arc<weir_dataplane::wireguard::WgTable>> {
    use weir_dataplane::wireguard;
    let dir = state.root.join("wireguard");
    let key = wireguard::load_or_create_private_key(&dir.join(me))?;
    // A node agent's node: the peers the agent took from the Nodes'
    // annotations (followed live by `WgTimers`).
    let peers_path = crate::node_wireguard::peers_file(state);
    // A dataplane started before its agent wrote the peers
    // (`--external-dataplane`): wait for them as for the local cluster's
    // keys below.
    let t0 = Instant::now();
    while cluster.name == crate::node_agent::CLUSTER
        && !peers_path.exists()
        && t0.elapsed() < Duration::from_secs(30)
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    if peers_path.exists() {
        let peers = crate::node_wireguard::read_peers(&peers_path)
            .with_context(|| format!("wireguard: {}", peers_path.display()))?;
        let table = wireguard::WgTable::new(&key, peer_keys(&peers));
        log::info!(
            "wireguard: node {me} public key {}, {} peers (from the Nodes' annotations)",
            wireguard::encode_key(&table.public_key()),
            table.status().len()
        );
        return Ok(Arc::new(table));
    }
    crate::state::write_atomic(
        &dir.join(format!("{me}.pub")),
        wireguard::encode_key(&wireguard::public_key(&key)).as_bytes(),
    )?;
    let peers: Vec<(&str, std::net::Ipv4Addr)> = local_peers(cluster, me).collect();
    let read = |n: &str| std::fs::read_to_string(dir.join(format!("{n}.pub"))).ok();
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(30) && peers.iter().any(|(n, _)| read(n).is_none()) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let keys: Vec<_> = peers.iter().map(|(n, a)| (*n, *a, read(n))).collect();
    let table = wireguard::WgTable::new(
        &key,
        keys.iter().map(|(n, a, k)| wireguard::PeerKey {
            node: n,
            ipv4: *a,
            public_key: k.as_deref(),
        }),
    );
    log::info!(
        "wireguard: node {me} public key {}, {} peers",
        wireguard::encode_key(&table.public_key()),
        table.status().len()
    );
    Ok(Arc::new(table))
}

fn peer_keys(
    peers: &[crate::node_wireguard::Peer],
) -> impl Iterator<Item = weir_dataplane::wireguard::PeerKey<'_>> {
    peers.iter().map(|p| weir_dataplane::wireguard::PeerKey {
        node: &p.node,
        ipv4: p.ipv4,
        public_key: p.public_key.as_deref(),
    })
}

/// A node's WireGuard inputs, followed live: the node's own key file
/// (`weir wireguard rotate`) and its peers' keys — on a node agent's node
/// the peers file the agent writes from the Nodes' annotations (a node that
/// appears, changes key or leaves), on a local cluster (`weir up`) the
/// other nodes' published `<state>/wireguard/<node>.pub`. Checked with the
/// timers (every 250 ms); a change is applied to the table in place — the
/// workers keep running — and a handshake is sent at once to each new or
/// changed peer (all of them after our key rotated).
struct WgFollow {
    key_dir: std::path::PathBuf,
    key_mtime: Option<SystemTime>,
    peers: WgPeerSource,
    /// The mtime of each file the peers are read from.
    peers_mtime: Vec<Option<SystemTime>>,
}

/// Where a node's WireGuard peers come from.
enum WgPeerSource {
    /// A node agent's node: the agent's peers file.
    File(std::path::PathBuf),
    /// A local cluster: the other weir nodes (name, underlay address) and
    /// the directory of their published keys; our own new public key is
    /// published there after a rotation.
    Local {
        dir: std::path::PathBuf,
        me: String,
        nodes: Vec<(String, std::net::Ipv4Addr)>,
    },
}

fn mtime(p: &std::path::Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

impl WgPeerSource {
    fn files(&self) -> Vec<std::path::PathBuf> {
        match self {
            WgPeerSource::File(p) => vec![p.clone()],
            WgPeerSource::Local { dir, nodes, .. } => nodes
                .iter()
                .map(|(n, _)| dir.join(format!("{n}.pub")))
                .collect(),
        }
    }

    fn mtimes(&self) -> Vec<Option<SystemTime>> {
        self.files().iter().map(|p| mtime(p)).collect()
    }
}

impl WgFollow {
    fn new(state: &StateDir, cluster: &weir_topo::Cluster, me: &str) -> Self {
        let peers_path = crate::node_wireguard::peers_file(state);
        let key_dir = state.root.join("wireguard").join(me);
        let peers = match peers_path.exists() {
            true => WgPeerSource::File(peers_path),
            false => WgPeerSource::Local {
                dir: state.root.join("wireguard"),
                me: me.to_string(),
                nodes: local_peers(cluster, me)
                    .map(|(n, a)| (n.to_string(), a))
                    .collect(),
            },
        };
        WgFollow {
            key_mtime: mtime(&key_dir.join(weir_dataplane::wireguard::KEY_FILE_NAME)),
            peers_mtime: peers.mtimes(),
            key_dir,
            peers,
        }
    }

    /// The peers to greet now (changed ones).
    fn poll(&mut self, table: &weir_dataplane::wireguard::WgTable) -> Vec<std::net::Ipv4Addr> {
        use weir_dataplane::wireguard;
        let mut greet = Vec::new();
        let m = mtime(&self.key_dir.join(wireguard::KEY_FILE_NAME));
        if m != self.key_mtime {
            self.key_mtime = m;
            match wireguard::load_or_create_private_key(&self.key_dir) {
                Ok(k) if wireguard::public_key(&k) != table.public_key() => {
                    greet = table.set_private(&k);
                    let public = wireguard::encode_key(&wireguard::public_key(&k));
                    log::info!("wireguard: key rotated, public key {public}");
                    // A local cluster's peers learn it from our published
                    // key (a node agent publishes it on the Node itself).
                    if let WgPeerSource::Local { dir, me, .. } = &self.peers {
                        let pub_file = dir.join(format!("{me}.pub"));
                        if let Err(e) = crate::state::write_atomic(&pub_file, public.as_bytes()) {
                            log::warn!("wireguard: {}: {e:#}", pub_file.display());
                        }
                    }
                }
                Ok(_) => {}
                Err(e) => log::warn!("wireguard: {e}; keeping the key in use"),
            }
        }
        let m = self.peers.mtimes();
        if m != self.peers_mtime {
            self.peers_mtime = m;
            let changed = match &self.peers {
                WgPeerSource::File(path) => match crate::node_wireguard::read_peers(path) {
                    Ok(peers) => Ok(table.update(peer_keys(&peers))),
                    Err(e) => Err(format!("{}: {e:#}", path.display())),
                },
                WgPeerSource::Local { dir, nodes, .. } => {
                    let keys: Vec<Option<String>> = nodes
                        .iter()
                        .map(|(n, _)| std::fs::read_to_string(dir.join(format!("{n}.pub"))).ok())
                        .collect();
                    Ok(table.update(nodes.iter().zip(&keys).map(|((n, a), k)| {
                        weir_dataplane::wireguard::PeerKey {
                            node: n,
                            ipv4: *a,
                            public_key: k.as_deref().map(str::trim),
                        }
                    })))
                }
            };
            match changed {
                Ok(changed) => {
                    for a in changed {
                        if !greet.contains(&a) {
                            greet.push(a);
                        }
                    }
                    log::info!("wireguard: {} peers", table.status().len());
                }
                Err(e) => log::warn!("wireguard: {e}; keeping the peers in use"),
            }
        }
        greet
    }
}

/// A local cluster's other weir nodes with an underlay address.
fn local_peers<'a>(
    cluster: &'a weir_topo::Cluster,
    me: &'a str,
) -> impl Iterator<Item = (&'a str, std::net::Ipv4Addr)> + 'a {
    cluster
        .nodes
        .iter()
        .filter(move |n| n.name != me)
        .filter_map(|n| Some((n.name.as_str(), n.underlay.as_ref()?.ipv4)))
}

/// WireGuard's timers (rekey, handshake retries, keepalives, session
/// expiry, the handshake rate limiter's reset), run from this control loop
/// about every 250 ms — boringtun rounds its timers to that. What they
/// want sent (handshake initiations, keepalives) leaves through a kernel
/// UDP socket on the node's underlay address, to the peer's tunnel port,
/// where its XDP program hands it to its dataplane: no worker is
/// interrupted for them. Data-driven messages (the first handshake,
/// responses) are sent by the workers themselves.
struct WgTimers {
    table: Arc<weir_dataplane::wireguard::WgTable>,
    sock: std::net::UdpSocket,
    port: u16,
    last: Instant,
    buf: Vec<u8>,
    follow: Option<WgFollow>,
}

impl WgTimers {
    fn new(
        table: Arc<weir_dataplane::wireguard::WgTable>,
        (addr, port): (std::net::Ipv4Addr, u16),
        follow: Option<WgFollow>,
    ) -> anyhow::Result<Self> {
        let sock = std::net::UdpSocket::bind((addr, 0))
            .with_context(|| format!("wireguard: UDP socket on {addr}"))?;
        Ok(WgTimers {
            table,
            sock,
            port,
            last: Instant::now(),
            // Timer messages, and the packets held for a handshake
            // (`WgTable::tick` sends them once the session is up).
            buf: vec![
                0;
                weir_dataplane::wireguard::PENDING_MAX
                    + weir_dataplane::wireguard::DATA_OVERHEAD
            ],
            follow,
        })
    }

    fn run(&mut self) {
        if self.last.elapsed() < Duration::from_millis(250) {
            return;
        }
        self.last = Instant::now();
        let (sock, port) = (&self.sock, self.port);
        if let Some(f) = self.follow.as_mut() {
            let greet = f.poll(&self.table);
            self.table.initiate(&greet, &mut self.buf, |peer, msg| {
                if let Err(e) = sock.send_to(msg, (peer, port)) {
                    log::debug!("wireguard: handshake to {peer}: {e}");
                }
            });
        }
        self.table.tick(&mut self.buf, |peer, msg| {
            if let Err(e) = sock.send_to(msg, (peer, port)) {
                log::debug!("wireguard: timer message to {peer}: {e}");
            }
        });
    }
}
