//! The operator's HTTP endpoint (`weir up --metrics-addr`, default
//! 127.0.0.1:9962 in the host's network namespace): Prometheus metrics on
//! `/metrics` (OpenMetrics text, prometheus-client) and the flow stream on
//! `/flows` (newline-delimited JSON, docs/observability.md).
//!
//! A control-plane thread: every scrape asks each node's dataplane for its
//! status over its socket, as `weir status` does, so nothing here touches
//! the workers. A flow-stream client gets its own poller and a bounded
//! queue: a client that stops reading loses records (counted in
//! `weir_flow_stream_dropped_total`), never slows anyone else.

use crate::flows::FlowFilter;
use crate::ipc::{self, Request};
use crate::state::StateDir;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, TrySendError};
use std::sync::Arc;
use std::time::Duration;
use weir_model::ipc::{FlowRecord, FlowsReply, NodeStatus, NodeStatusEntry};
use weir_model::status::{DataplaneStatus, LATENCY_BUCKETS_NS};

/// The default `--metrics-addr`.
pub const DEFAULT_ADDR: &str = "127.0.0.1:9962";

/// Lines a flow-stream client may have queued before new ones are dropped.
pub const STREAM_QUEUE: usize = 4096;

/// How often a flow-stream client's poller asks the dataplanes.
const STREAM_POLL: Duration = Duration::from_millis(100);

/// Binds `--metrics-addr` (`off`: none), with one clear line on failure.
pub fn bind(addr: &str) -> anyhow::Result<Option<TcpListener>> {
    if addr == "off" {
        return Ok(None);
    }
    match TcpListener::bind(addr) {
        Ok(l) => Ok(Some(l)),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => anyhow::bail!(
            "--metrics-addr {addr}: address in use (another weir cluster? pick another address, or `off`)"
        ),
        Err(e) => anyhow::bail!("--metrics-addr {addr}: {e}"),
    }
}

/// What the daemon shares with the endpoint.
pub struct Shared {
    pub cluster: String,
    pub state: StateDir,
    /// `(node, weir dataplane?)` for every node of the cluster.
    pub nodes: Vec<(String, bool)>,
    /// The generation the agent last published.
    pub generation: AtomicU64,
    /// Seconds to compile and publish one snapshot.
    pub publish_seconds: Histogram,
    pub stream_dropped: Counter,
    pub stream_clients: Gauge,
}

impl Shared {
    pub fn new(cluster: &str, state: StateDir, nodes: Vec<(String, bool)>) -> Arc<Shared> {
        Arc::new(Shared {
            cluster: cluster.to_string(),
            state,
            nodes,
            generation: AtomicU64::new(0),
            publish_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
            stream_dropped: Counter::default(),
            stream_clients: Gauge::default(),
        })
    }

    /// Every node's status, as the daemon's `status` reply carries it.
    pub fn collect(&self) -> Vec<NodeStatusEntry> {
        let mut entries: Vec<NodeStatusEntry> = self
            .nodes
            .iter()
            .map(|(node, weir)| {
                if !weir {
                    return NodeStatusEntry {
                        node: node.clone(),
                        kernel: true,
                        ..Default::default()
                    };
                }
                match ipc::request::<NodeStatus>(
                    &self.state.dataplane_sock(node),
                    &Request::Status,
                    Duration::from_secs(2),
                ) {
                    Ok(v) => NodeStatusEntry {
                        node: node.clone(),
                        running: true,
                        status: Some(v),
                        ..Default::default()
                    },
                    Err(e) => NodeStatusEntry {
                        node: node.clone(),
                        error: Some(e.to_string()),
                        ..Default::default()
                    },
                }
            })
            .collect();
        // The nodes' own outbound traffic (nftables counters) where weir
        // applied a table: the netns from the cluster's state.
        let applied = |n: &str| {
            self.state
                .node_dir(n)
                .join(crate::host_egress::APPLIED_FILE)
                .exists()
        };
        if entries.iter().any(|e| applied(&e.node)) {
            if let Ok(c) = weir_topo::Cluster::load(&self.state.cluster_file()) {
                for e in &mut entries {
                    if let Some(n) = c.node(&e.node) {
                        e.host_egress = crate::host_egress::status(&self.state, &e.node, &n.netns);
                    }
                }
            }
        }
        entries
    }

    /// The whole `/metrics` page.
    pub fn render(&self) -> String {
        let mut reg = Registry::default();
        reg.register(
            "weir_snapshot_publish_seconds",
            "Time to compile and publish one policy snapshot (control plane)",
            self.publish_seconds.clone(),
        );
        reg.register(
            "weir_flow_stream_dropped",
            "Flow records a /flows client did not read in time (dropped for it alone)",
            self.stream_dropped.clone(),
        );
        reg.register(
            "weir_flow_stream_clients",
            "Clients reading /flows now",
            self.stream_clients.clone(),
        );
        let published = Gauge::<i64>::default();
        published.set(self.generation.load(Ordering::Relaxed) as i64);
        reg.register(
            "weir_snapshot_published_generation",
            "Generation of the snapshot the agent last published",
            published,
        );
        reg.register_collector(Box::new(Scrape {
            cluster: self.cluster.clone(),
            nodes: self.collect(),
        }));
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &reg);
        out
    }
}

/// One scrape's node statuses, encoded as metric families.
#[derive(Debug)]
struct Scrape {
    cluster: String,
    nodes: Vec<NodeStatusEntry>,
}

type Labels = Vec<(&'static str, String)>;

/// One worker's latency histogram: labels, sum (s), count, per-bucket counts.
type HistSample = (Labels, f64, u64, Vec<(f64, u64)>);

/// Prometheus histogram buckets (upper bound in s, count in that bucket —
/// not cumulative) and the total count, from a status's bucket counts over
/// [`LATENCY_BUCKETS_NS`] (zeros when the worker has not published yet).
fn prom_buckets(counts: &[u64]) -> (Vec<(f64, u64)>, u64) {
    let n_buckets = LATENCY_BUCKETS_NS.len() + 1;
    let counts: Vec<u64> = if counts.len() == n_buckets {
        counts.to_vec()
    } else {
        vec![0; n_buckets]
    };
    let count = counts.iter().sum();
    let buckets = LATENCY_BUCKETS_NS
        .iter()
        .map(|&le| le as f64 / 1e9)
        .chain([f64::INFINITY])
        .zip(counts.iter().copied())
        .collect::<Vec<_>>();
    (buckets, count)
}

/// One metric family: name (without `_total`), help, type, samples.
struct Family {
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    samples: Vec<(Labels, u64)>,
}

impl Family {
    fn encode(&self, enc: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if self.samples.is_empty() {
            return Ok(());
        }
        let mut m = enc.encode_descriptor(self.name, self.help, None, self.kind)?;
        for (labels, v) in &self.samples {
            let mut e = m.encode_family(labels)?;
            match self.kind {
                MetricType::Counter => {
                    e.encode_counter::<prometheus_client::encoding::NoLabelSet, u64, u64>(v, None)?
                }
                _ => e.encode_gauge(v)?,
            }
        }
        Ok(())
    }
}

/// A counter family of seconds (float values).
struct Seconds {
    name: &'static str,
    help: &'static str,
    samples: Vec<(Labels, f64)>,
}

impl Seconds {
    fn new(name: &'static str, help: &'static str) -> Seconds {
        Seconds {
            name,
            help,
            samples: Vec::new(),
        }
    }

    fn push_ns(&mut self, labels: Labels, ns: u64) {
        self.samples.push((labels, ns as f64 / 1e9));
    }

    fn encode(&self, enc: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if self.samples.is_empty() {
            return Ok(());
        }
        let mut m = enc.encode_descriptor(
            self.name,
            self.help,
            Some(&prometheus_client::registry::Unit::Seconds),
            MetricType::Counter,
        )?;
        for (labels, v) in &self.samples {
            m.encode_family(labels)?
                .encode_counter::<prometheus_client::encoding::NoLabelSet, f64, u64>(v, None)?;
        }
        Ok(())
    }
}

fn counter(name: &'static str, help: &'static str) -> Family {
    Family {
        name,
        help,
        kind: MetricType::Counter,
        samples: Vec::new(),
    }
}

fn gauge(name: &'static str, help: &'static str) -> Family {
    Family {
        kind: MetricType::Gauge,
        ..counter(name, help)
    }
}

/// Drop reasons that are an L7 decision (an HTTP or DNS rule refused).
fn is_l7_denial(reason: &str) -> bool {
    reason == "l7-denied" || reason == "dns-refused"
}

impl prometheus_client::collector::Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut up = gauge(
            "weir_dataplane_up",
            "1 when the node's dataplane answers, 0 when it does not (its pods fail closed)",
        );
        let mut generation = gauge(
            "weir_snapshot_generation",
            "Generation of the snapshot the node's dataplane applied",
        );
        let mut worker_gen = gauge(
            "weir_worker_snapshot_generation",
            "Generation of the snapshot each worker runs",
        );
        let mut rx = counter("weir_worker_rx_packets", "Frames a worker received");
        let mut tx = counter("weir_worker_tx_packets", "Frames a worker sent");
        let mut rxb = counter("weir_worker_rx_bytes", "Bytes a worker received");
        let mut txb = counter("weir_worker_tx_bytes", "Bytes a worker sent");
        let mut batches = counter("weir_worker_batches", "RX batches a worker handled");
        let mut sleeps = counter(
            "weir_worker_sleeps",
            "Times a worker slept in poll (wakeup/adaptive)",
        );
        let mut busy_s = Seconds::new(
            "weir_worker_busy",
            "Wall time a worker spent in rounds that moved frames",
        );
        let mut idle_s = Seconds::new(
            "weir_worker_idle",
            "Wall time a worker spent in empty rounds, spinning (empty polls)",
        );
        let mut sleep_s = Seconds::new(
            "weir_worker_sleep",
            "Wall time a worker spent asleep in poll",
        );
        let mut cpu_s = Seconds::new(
            "weir_worker_cpu",
            "CPU time of a worker's thread (the rest of its wall time it slept or waited for its core)",
        );
        let mut rx_visits = counter(
            "weir_worker_rx_batches",
            "RX ring reads that found frames (one socket, one round)",
        );
        let mut full_batches = counter(
            "weir_worker_rx_full_batches",
            "RX visits that took a whole batch (the RX ring held at least a batch: the worker is behind)",
        );
        let mut coalesce_sleeps = counter(
            "weir_worker_coalesce_sleeps",
            "Sleeps after a round of less than half a batch (--coalesce-us; their time is in weir_worker_sleep_seconds)",
        );
        let mut ct_prefetch = gauge(
            "weir_worker_ct_prefetch",
            "1 while the worker runs the conntrack prefetch (stage 0; --ct-prefetch, docs/conntrack.md)",
        );
        let mut ct_prefetch_flows = gauge(
            "weir_worker_ct_prefetch_census_flows",
            "Distinct flows the worker's flow census counted in its last window (an estimate; --ct-prefetch auto decides by it)",
        );
        let mut nat_remaps = counter(
            "weir_worker_nat_port_remaps",
            "New Service flows sent with a remapped source port: the client used the same port toward two ClusterIPs sharing a backend (docs/services.md)",
        );
        let mut drops = counter(
            "weir_drops",
            "Frames weir dropped, by drop reason (docs/drop-reasons)",
        );
        let mut ring_full = counter(
            "weir_xsk_rx_ring_full",
            "Frames the kernel dropped: the AF_XDP socket's RX ring was full",
        );
        let mut fill_empty = counter(
            "weir_xsk_fill_ring_empty",
            "Frames that found the AF_XDP socket's fill ring empty (also in rx_dropped)",
        );
        let mut rx_dropped = counter(
            "weir_xsk_rx_dropped",
            "Frames the kernel dropped at the AF_XDP socket",
        );
        let mut tx_invalid = counter("weir_xsk_tx_invalid", "TX descriptors the kernel refused");
        let mut ct_entries = gauge("weir_conntrack_entries", "Live conntrack entries");
        let mut ct_size = gauge(
            "weir_conntrack_size",
            "Entries the conntrack table can hold",
        );
        let mut ct_inserts = counter("weir_conntrack_inserts", "Conntrack entries created");
        let mut ct_evictions = counter(
            "weir_conntrack_evictions",
            "Inserts that replaced a closing or unreplied entry",
        );
        let mut ct_full = counter(
            "weir_conntrack_table_full",
            "New flows refused: their bucket held only established flows",
        );
        let mut ct_revoked = counter(
            "weir_conntrack_revoked",
            "Flows cut because a new policy denied them",
        );
        let mut ct_restored = gauge(
            "weir_conntrack_restored_entries",
            "Conntrack entries loaded from the checkpoint when the dataplane started",
        );
        let mut ckpt_errors = counter(
            "weir_conntrack_checkpoint_errors",
            "Conntrack checkpoints that could not be written",
        );
        let mut flow_lost = counter(
            "weir_flow_events_lost",
            "Flow events the workers lost to full queues",
        );
        let mut l7_flows = gauge(
            "weir_l7_flows",
            "Connections under HTTP rules with an inspector now",
        );
        let mut l7_held = gauge(
            "weir_l7_held_frames",
            "UMEM frames held until a request head is judged",
        );
        let mut l7_heads = gauge(
            "weir_l7_head_buffers",
            "Head buffers held by connections with a request head open",
        );
        let mut l7_denials = counter(
            "weir_l7_denials",
            "Requests an L7 (HTTP or DNS) rule refused",
        );
        let mut l7_h2_refused = counter(
            "weir_l7_h2_streams_refused",
            "HTTP/2 streams refused in place (the connection went on)",
        );
        let mut frames_free = gauge(
            "weir_worker_umem_free_frames",
            "UMEM frames on the free list",
        );
        let mut port_zc = gauge(
            "weir_port_zero_copy",
            "1 when the port's AF_XDP sockets run zero-copy, 0 in copy mode; label mode says why (weir up --zero-copy)",
        );
        let mut host_egress = counter(
            "weir_host_egress_packets",
            "Packets of the node's own new outbound flows its nftables table inet weir_host judged, by verdict (host policy, docs/policy.md)",
        );
        let mut hist: Vec<HistSample> = Vec::new();
        // `weir up --latency-breakdown` only.
        let mut stage_hist: Vec<HistSample> = Vec::new();

        for n in &self.nodes {
            let node = || ("node", n.node.clone());
            if n.kernel {
                continue;
            }
            if let Some(h) = &n.host_egress {
                for (verdict, v) in [("denied", h.denied_packets), ("allowed", h.allowed_packets)] {
                    host_egress
                        .samples
                        .push((vec![node(), ("verdict", verdict.to_string())], v));
                }
            }
            let st = n.status.as_ref();
            up.samples.push((vec![node()], u64::from(st.is_some())));
            let Some(st) = st else { continue };
            generation.samples.push((vec![node()], st.generation));
            let dp: &DataplaneStatus = match &st.dataplane {
                Some(d) => d,
                None => continue,
            };
            let mut by_reason: std::collections::BTreeMap<&str, u64> = Default::default();
            for w in &dp.workers {
                let wl = || {
                    vec![
                        node(),
                        ("worker", w.id.to_string()),
                        ("core", w.core.map_or("none".into(), |c| c.to_string())),
                    ]
                };
                worker_gen.samples.push((wl(), w.generation));
                rx.samples.push((wl(), w.rx_packets));
                tx.samples.push((wl(), w.tx_packets));
                rxb.samples.push((wl(), w.rx_bytes));
                txb.samples.push((wl(), w.tx_bytes));
                batches.samples.push((wl(), w.batches));
                sleeps.samples.push((wl(), w.sleeps));
                busy_s.push_ns(wl(), w.time.busy_ns);
                idle_s.push_ns(wl(), w.time.idle_ns);
                sleep_s.push_ns(wl(), w.time.sleep_ns);
                cpu_s.push_ns(wl(), w.time.cpu_ns);
                rx_visits.samples.push((wl(), w.time.rx_visits));
                full_batches.samples.push((wl(), w.time.full_batches));
                coalesce_sleeps.samples.push((wl(), w.time.coalesce_sleeps));
                ct_prefetch
                    .samples
                    .push((wl(), u64::from(w.ct_prefetch.on)));
                ct_prefetch_flows.samples.push((wl(), w.ct_prefetch.flows));
                nat_remaps.samples.push((wl(), w.nat_port_remaps));
                ring_full.samples.push((wl(), w.kernel.rx_ring_full));
                fill_empty.samples.push((wl(), w.kernel.fill_ring_empty));
                rx_dropped.samples.push((wl(), w.kernel.rx_dropped));
                tx_invalid.samples.push((wl(), w.kernel.tx_invalid));
                frames_free.samples.push((wl(), w.frames.free));
                for (r, v) in &w.drops {
                    *by_reason.entry(r).or_insert(0) += v;
                }
                let (buckets, count) = prom_buckets(&w.latency_buckets);
                hist.push((wl(), w.latency_sum_ns as f64 / 1e9, count, buckets));
                for st in &w.breakdown {
                    let (buckets, count) = prom_buckets(&st.buckets);
                    let mut l = wl();
                    l.push(("stage", st.stage.clone()));
                    stage_hist.push((l, st.sum_ns as f64 / 1e9, count, buckets));
                }
            }
            // Every reason weir knows, zero or not: a rate() needs the series
            // to exist before the first drop.
            for r in weir_model::DropReason::ALL {
                let slug = r.slug();
                let v = by_reason.get(slug).copied().unwrap_or(0);
                drops
                    .samples
                    .push((vec![node(), ("reason", slug.to_string())], v));
                if is_l7_denial(slug) {
                    l7_denials
                        .samples
                        .push((vec![node(), ("reason", slug.to_string())], v));
                }
            }
            for p in &dp.ports {
                let labels = vec![node(), ("port", p.name.clone()), ("mode", p.mode.clone())];
                port_zc.samples.push((labels, u64::from(p.zero_copy)));
            }
            let ct = &dp.conntrack;
            ct_entries.samples.push((vec![node()], ct.entries as u64));
            ct_size.samples.push((vec![node()], ct.size as u64));
            ct_inserts.samples.push((vec![node()], ct.inserts));
            ct_evictions.samples.push((vec![node()], ct.evictions));
            ct_full.samples.push((vec![node()], ct.table_full));
            ct_revoked.samples.push((vec![node()], ct.revoked));
            ct_restored.samples.push((vec![node()], ct.restored));
            ckpt_errors
                .samples
                .push((vec![node()], ct.checkpoint_errors));
            flow_lost.samples.push((vec![node()], ct.flow_events_lost));
            let l7 = |f: fn(&weir_model::status::L7Status) -> u64| -> u64 {
                dp.workers.iter().map(|w| f(&w.l7)).sum()
            };
            l7_flows.samples.push((vec![node()], l7(|l| l.flows)));
            l7_held.samples.push((vec![node()], l7(|l| l.held_frames)));
            l7_heads
                .samples
                .push((vec![node()], l7(|l| l.head_buffers)));
            l7_h2_refused
                .samples
                .push((vec![node()], l7(|l| l.h2_streams_refused)));
        }
        {
            let mut info = enc.encode_descriptor(
                "weir_cluster",
                "The cluster this endpoint reports on",
                None,
                MetricType::Info,
            )?;
            let labels: Labels = vec![("cluster", self.cluster.clone())];
            info.encode_info(&labels)?;
        }
        for f in [
            &up,
            &generation,
            &worker_gen,
            &rx,
            &tx,
            &rxb,
            &txb,
            &batches,
            &sleeps,
            &rx_visits,
            &full_batches,
            &coalesce_sleeps,
            &ct_prefetch,
            &ct_prefetch_flows,
            &nat_remaps,
            &drops,
            &ring_full,
            &fill_empty,
            &rx_dropped,
            &tx_invalid,
            &frames_free,
            &ct_entries,
            &ct_size,
            &ct_inserts,
            &ct_evictions,
            &ct_full,
            &ct_revoked,
            &ct_restored,
            &ckpt_errors,
            &flow_lost,
            &l7_flows,
            &l7_held,
            &l7_heads,
            &l7_denials,
            &l7_h2_refused,
            &port_zc,
            &host_egress,
        ] {
            f.encode(&mut enc)?;
        }
        for f in [&busy_s, &idle_s, &sleep_s, &cpu_s] {
            f.encode(&mut enc)?;
        }
        if !hist.is_empty() {
            let mut m = enc.encode_descriptor(
                "weir_dataplane_latency_seconds",
                "Time a frame spends in the dataplane (batch RX to the end of its TX kick)",
                None,
                MetricType::Histogram,
            )?;
            for (labels, sum, count, buckets) in &hist {
                m.encode_family(labels)?
                    .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                        *sum, *count, buckets, None,
                    )?;
            }
        }
        if !stage_hist.is_empty() {
            let mut m = enc.encode_descriptor(
                "weir_dataplane_stage_seconds",
                "Latency breakdown per batch (weir up --latency-breakdown): stage rx_wait (since the worker's previous look at its rings), pass, tx_kick",
                None,
                MetricType::Histogram,
            )?;
            for (labels, sum, count, buckets) in &stage_hist {
                m.encode_family(labels)?
                    .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                        *sum, *count, buckets, None,
                    )?;
            }
        }
        Ok(())
    }
}

/// Serves the endpoint on `listener` from a thread of its own (one more
/// per connection).
pub fn serve(listener: TcpListener, shared: Arc<Shared>) {
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let shared = shared.clone();
                let _ = std::thread::Builder::new()
                    .name("metrics-conn".into())
                    .spawn(move || {
                        if let Err(e) = handle(conn, &shared) {
                            log::debug!("metrics endpoint: {e:#}");
                        }
                    });
            }
        })
        .expect("spawn the metrics thread");
}

fn respond(mut conn: &TcpStream, status: &str, ctype: &str, body: &str) -> std::io::Result<()> {
    write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn handle(conn: TcpStream, shared: &Shared) -> anyhow::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    // The rest of the head (bounded), then nothing else is read.
    let mut head = 0;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h == "\r\n" || h == "\n" {
            break;
        }
        head += h.len();
        if head > 16 * 1024 {
            return Ok(respond(
                &conn,
                "431 Request Header Fields Too Large",
                "text/plain",
                "request head too large\n",
            )?);
        }
    }
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return Ok(respond(
            &conn,
            "400 Bad Request",
            "text/plain",
            "bad request line\n",
        )?);
    };
    if method != "GET" {
        return Ok(respond(
            &conn,
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n",
        )?);
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    match path {
        "/metrics" => Ok(respond(
            &conn,
            "200 OK",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            &shared.render(),
        )?),
        "/flows" => match FlowFilter::from_query(query) {
            Ok(f) => stream_flows(conn, shared, f),
            Err(e) => Ok(respond(
                &conn,
                "400 Bad Request",
                "text/plain",
                &format!("{e}\n"),
            )?),
        },
        "/" | "/index.html" => Ok(respond(
            &conn,
            "200 OK",
            "text/html; charset=utf-8",
            crate::web::INDEX_HTML,
        )?),
        "/api/matrix" => {
            let (status, body) = crate::web::matrix(&shared.state, query);
            Ok(respond(&conn, status, "application/json", &body)?)
        }
        "/api/explain" => {
            let (status, body) = crate::web::explain(&shared.state, query);
            Ok(respond(&conn, status, "application/json", &body)?)
        }
        _ => Ok(respond(
            &conn,
            "404 Not Found",
            "text/plain",
            "not found\n",
        )?),
    }
}

/// Whether the client closed its end (a peek finds EOF or an error).
fn client_gone(conn: &TcpStream) -> bool {
    use nix::sys::socket::{recv, MsgFlags};
    use std::os::fd::AsRawFd;
    let mut b = [0u8; 1];
    match recv(
        conn.as_raw_fd(),
        &mut b,
        MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT,
    ) {
        Ok(0) => true,
        Ok(_) => false,
        Err(nix::errno::Errno::EAGAIN) => false,
        Err(_) => true,
    }
}

/// Streams new flow records matching `filter` until the client goes away.
fn stream_flows(mut conn: TcpStream, shared: &Shared, filter: FlowFilter) -> anyhow::Result<()> {
    write!(
        conn,
        "HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nX-Content-Type-Options: nosniff\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n"
    )?;
    conn.flush()?;
    let (tx, rx) = sync_channel::<String>(STREAM_QUEUE);
    // The writer: the only part a slow client blocks.
    let writer = {
        let mut conn = conn.try_clone()?;
        std::thread::Builder::new()
            .name("flows-writer".into())
            .spawn(move || {
                for line in rx {
                    if conn.write_all(line.as_bytes()).is_err() {
                        break;
                    }
                }
                let _ = conn.shutdown(std::net::Shutdown::Both);
            })?
    };
    shared.stream_clients.inc();
    let weir_nodes: Vec<&String> = shared
        .nodes
        .iter()
        .filter(|(_, w)| *w)
        .map(|(n, _)| n)
        .collect();
    // Start after what the nodes hold now: only new flows are streamed.
    let mut since: Vec<Option<u64>> = vec![None; weir_nodes.len()];
    let mut allowed_seen: u64 = 0;
    let mut labels = crate::flows::PodLabels::new();
    'outer: loop {
        for (i, node) in weir_nodes.iter().enumerate() {
            let Ok(reply) = ipc::request::<FlowsReply>(
                &shared.state.dataplane_sock(node),
                &Request::Flows {
                    // First ask: everything held when recent flows are
                    // wanted, else only where the node's sequence is now.
                    since: since[i].unwrap_or(if filter.recent > 0 { 0 } else { u64::MAX }),
                },
                Duration::from_secs(2),
            ) else {
                continue;
            };
            // A restarted dataplane starts its sequence again.
            if since[i].is_some_and(|s| reply.last < s) {
                since[i] = Some(0);
                continue;
            }
            let first = since[i].is_none();
            since[i] = Some(reply.last);
            let records: Vec<&FlowRecord> =
                reply.records.iter().filter(|r| filter.matches(r)).collect();
            // The first answer: only the last `recent` of what it held.
            let skip = match first {
                true => records.len().saturating_sub(filter.recent),
                false => 0,
            };
            if records.len() == skip {
                continue;
            }
            // Labels as the state holds them now (pods come and go).
            if let Ok(c) = weir_topo::Cluster::load(&shared.state.cluster_file()) {
                labels = crate::flows::pod_labels(&c);
            }
            for r in records.into_iter().skip(skip) {
                if r.verdict == "allowed" {
                    allowed_seen += 1;
                    if !(allowed_seen - 1).is_multiple_of(filter.sample) {
                        continue;
                    }
                }
                let mut line = match serde_json::to_string(&crate::flows::Enriched::of(r, &labels))
                {
                    Ok(l) => l,
                    Err(_) => continue,
                };
                line.push('\n');
                match tx.try_send(line) {
                    Ok(()) => {}
                    Err(TrySendError::Full(_)) => {
                        shared.stream_dropped.inc();
                    }
                    Err(TrySendError::Disconnected(_)) => break 'outer,
                }
            }
        }
        if writer.is_finished() || client_gone(&conn) {
            break;
        }
        std::thread::sleep(STREAM_POLL);
    }
    shared.stream_clients.dec();
    drop(tx);
    let _ = writer.join();
    Ok(())
}
