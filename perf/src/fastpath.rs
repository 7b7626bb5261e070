//! `weir-perf fastpath`: the fast path's headline numbers. One node, pods a → b;
//! 64-byte UDP pps and TCP request/response latency, through the kernel's
//! own forwarding (the peer every kernel CNI starts from) and through weir in
//! each polling mode, all in the same run so that ratios mean something on a
//! shared, noisy machine.
#![forbid(unsafe_code)]

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use weir_topo::{Cluster, RealizedPod};

use crate::kernel::KernelPath;
use crate::report::{ConfigResult, Host, Params, Placement, Report};
use crate::rr::{self, RrParams};
use crate::udp::{self, UdpParams, PAYLOAD_64B_FRAME};
use crate::weir::{self, WeirCluster};
use crate::{pin, stop};

/// The topology: one node, namespace `perf`, pods `a` and `b`. The pods
/// declare TCP 80 (weir's per-pod echo server); the harness's own tools use
/// [`UDP_PORT`] and [`TCP_PORT`], which no pod declares.
pub const MANIFESTS: &str = r#"apiVersion: v1
kind: Node
metadata:
  name: n1
spec:
  podCIDRs: ["10.250.0.0/24", "fd00:250::/64"]
---
apiVersion: v1
kind: Namespace
metadata:
  name: perf
---
apiVersion: v1
kind: Pod
metadata:
  name: a
  namespace: perf
spec:
  nodeName: n1
  containers:
  - name: load
    ports:
    - {containerPort: 80, protocol: TCP}
---
apiVersion: v1
kind: Pod
metadata:
  name: b
  namespace: perf
spec:
  nodeName: n1
  containers:
  - name: sink
    ports:
    - {containerPort: 80, protocol: TCP}
"#;

/// UDP port of the pps receiver in pod b.
pub const UDP_PORT: u16 = 9000;
/// TCP port of the request/response server in pod b.
pub const TCP_PORT: u16 = 9001;

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    pub short: bool,
    pub out: PathBuf,
    /// weir polling modes to measure, in order.
    pub modes: Vec<String>,
    pub load_core: usize,
    pub worker_core: usize,
    /// The weir binary (None: only the kernel path is measured).
    pub weir: Option<PathBuf>,
    pub window: Duration,
    pub warmup: Duration,
    pub udp_batch: usize,
    pub rr_count: u64,
    pub rr_warmup: u64,
}

impl Options {
    /// Full mode: 5 s windows, 20k round trips; short: 1 s, 2k.
    pub fn new(short: bool) -> Options {
        Options {
            short,
            out: PathBuf::from("target/perf"),
            modes: vec!["busy".into(), "adaptive".into()],
            load_core: 0,
            worker_core: 1,
            weir: None,
            window: Duration::from_secs(if short { 1 } else { 5 }),
            warmup: Duration::from_millis(if short { 300 } else { 1000 }),
            udp_batch: 64,
            rr_count: if short { 2_000 } else { 20_000 },
            rr_warmup: if short { 200 } else { 1_000 },
        }
    }
}

/// Runs the scenario, writes `fastpath.json` and `fastpath.md` into
/// `opts.out`, and returns the report.
pub fn run(opts: &Options) -> anyhow::Result<Report> {
    let ncores = pin::cores();
    anyhow::ensure!(
        opts.load_core < ncores && opts.worker_core < ncores && opts.load_core != opts.worker_core,
        "need two distinct cores for load ({}) and worker ({}); this machine has {ncores}",
        opts.load_core,
        opts.worker_core
    );
    std::fs::create_dir_all(&opts.out).with_context(|| format!("create {}", opts.out.display()))?;
    let manifest = opts.out.join("fastpath.yaml");
    std::fs::write(&manifest, MANIFESTS)
        .with_context(|| format!("write {}", manifest.display()))?;
    let spec = weir_topo::manifest::parse_str(MANIFESTS, "fastpath.yaml")
        .map_err(|e| anyhow::anyhow!("{e}"))?;

    let host_start = Host::now();
    let pid = std::process::id();
    let udp_p = UdpParams {
        payload: PAYLOAD_64B_FRAME,
        batch: opts.udp_batch,
        warmup: opts.warmup,
        window: opts.window,
        load_core: opts.load_core,
    };
    let rr_p = RrParams {
        count: opts.rr_count,
        warmup: opts.rr_warmup,
        load_core: opts.load_core,
        timeout: Duration::from_secs(5),
    };

    let modes: &[String] = if opts.weir.is_some() {
        &opts.modes
    } else {
        &[]
    };
    let steps = 4 + 3 * modes.len() as u64;
    let pb = ProgressBar::new(steps);
    pb.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {pos}/{len} {wide_msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb.enable_steady_tick(Duration::from_millis(200));
    let step = |msg: String| {
        pb.set_message(msg);
    };

    let mut configs = Vec::new();

    // (ii) The kernel path. First with forwarding off: the node drops at IP
    // input, which measures what the generator can offer at all.
    step("kernel path: build".into());
    let kname = format!("pf{pid}k");
    let k = KernelPath::build(&kname, &spec)?;
    pb.inc(1);
    stop::check()?;
    let (a, b) = pods(&k.cluster)?;
    step("generator ceiling (node drops, ip_forward=0)".into());
    let ceiling = udp::run(&a.netns, &b.netns, udp_dst(b)?, &udp_p)?;
    pb.inc(1);
    k.enable_forwarding()?;
    // Request/response first, the flood second: a path that breaks under
    // the flood still yields its latency numbers.
    step("kernel path: TCP request/response".into());
    let krr = rr::run(&a.netns, &b.netns, tcp_dst(b)?, &rr_p);
    pb.inc(1);
    stop::check()?;
    step("kernel path: UDP 64B pps".into());
    let kudp = udp::run(&a.netns, &b.netns, udp_dst(b)?, &udp_p);
    pb.inc(1);
    stop::check()?;
    let healthy = rr::reachable(&a.netns, &b.netns, tcp_dst(b)?);
    configs.push(ConfigResult::new(
        "kernel", None, kudp, krr, None, None, healthy,
    ));
    drop(k);

    // (i) Through weir, once per polling mode.
    for mode in modes {
        stop::check()?;
        let bin = opts.weir.as_deref().unwrap_or(Path::new("weir"));
        step(format!(
            "weir {mode}: up (worker on core {})",
            opts.worker_core
        ));
        let w = WeirCluster::up(
            bin,
            &format!("pf{pid}w"),
            &manifest,
            &opts.worker_core.to_string(),
            mode,
        )?;
        pb.inc(1);
        let (a, b) = pods(&w.cluster)?;
        let c0 = w.counters()?;
        step(format!("weir {mode}: TCP request/response"));
        let wrr = rr::run(&a.netns, &b.netns, tcp_dst(b)?, &rr_p);
        pb.inc(1);
        stop::check()?;
        let c1 = w.counters()?;
        step(format!("weir {mode}: UDP 64B pps"));
        let wudp = udp::run(&a.netns, &b.netns, udp_dst(b)?, &udp_p);
        pb.inc(1);
        stop::check()?;
        let c2 = w.counters()?;
        let healthy = rr::reachable(&a.netns, &b.netns, tcp_dst(b)?);
        configs.push(ConfigResult::new(
            &format!("weir-{mode}"),
            Some(mode),
            wudp,
            wrr,
            Some(c2.since(&c1)),
            Some(c1.since(&c0)),
            healthy,
        ));
        drop(w);
    }
    pb.finish_and_clear();

    let mut report = Report::new(
        opts,
        host_start,
        Host::now(),
        Placement {
            load_core: opts.load_core,
            worker_core: opts.worker_core,
        },
        Params {
            window_s: opts.window.as_secs_f64(),
            warmup_s: opts.warmup.as_secs_f64(),
            udp_batch: opts.udp_batch,
            udp_payload: PAYLOAD_64B_FRAME,
            rr_count: opts.rr_count,
            rr_warmup: opts.rr_warmup,
        },
        ceiling,
        configs,
    );
    report.clusters.push(kname);
    if !modes.is_empty() {
        report.clusters.push(format!("pf{pid}w"));
    }
    let json = opts.out.join("fastpath.json");
    std::fs::write(&json, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("write {}", json.display()))?;
    let md = opts.out.join("fastpath.md");
    std::fs::write(&md, report.markdown()).with_context(|| format!("write {}", md.display()))?;
    Ok(report)
}

/// Pods `perf/a` and `perf/b` of a built cluster.
fn pods(c: &Cluster) -> anyhow::Result<(&RealizedPod, &RealizedPod)> {
    let a = c.pod("perf", "a").context("pod perf/a missing")?;
    let b = c.pod("perf", "b").context("pod perf/b missing")?;
    Ok((a, b))
}

fn v4(p: &RealizedPod) -> anyhow::Result<Ipv4Addr> {
    p.ipv4
        .with_context(|| format!("pod {}/{} has no IPv4 address", p.namespace, p.name))
}

fn udp_dst(b: &RealizedPod) -> anyhow::Result<SocketAddrV4> {
    Ok(SocketAddrV4::new(v4(b)?, UDP_PORT))
}

fn tcp_dst(b: &RealizedPod) -> anyhow::Result<SocketAddr> {
    Ok(SocketAddr::V4(SocketAddrV4::new(v4(b)?, TCP_PORT)))
}

/// The weir binary for `explicit` (see [`weir::find_weir`]).
pub fn weir_binary(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    weir::find_weir(explicit)
}

#[cfg(test)]
mod tests {
    #[test]
    fn manifests_parse() {
        let spec = weir_topo::manifest::parse_str(super::MANIFESTS, "fastpath.yaml").unwrap();
        assert_eq!(spec.pods.len(), 2);
        assert_eq!(spec.nodes.len(), 1);
    }
}
