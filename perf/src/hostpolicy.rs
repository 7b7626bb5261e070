//! `weir-perf host-policy`: what host endpoint policy costs a server of the
//! node for clients outside it (issue 16; docs/policy.md, "Host endpoint
//! policy").
//!
//! Without a host policy on a node, the underlay's XDP program leaves
//! frames to the node's own addresses to the kernel. While a host policy
//! selects the node, every TCP segment to a server port of the node (a port
//! outside the kernel's ephemeral range) crosses AF_XDP and the worker,
//! which judges it and hands it to the kernel through the host port. This
//! measures that: TCP request/response (p50, p99, round trips per second)
//! and TCP bulk (iperf3, one stream) from the world host to servers on n1's
//! underlay address, on one `weir up` cluster, alternately without a host
//! policy (`none`) and with one selecting n1 (`host-policy`: allow the two
//! server ports, deny the rest) — both in every round, ratios per round,
//! median [min–max] over the rounds.
//!
//! Each sample proves its path by n1's `ul0` XDP redirect counter: with
//! the policy it moved by at least the round trips measured (every client
//! segment went to the worker); without it, by fewer than a tenth of them
//! (the kernel's path). A sample that fails its proof is an error, not a
//! number. The replies leave through n1's kernel in both (the dataplane
//! sees one direction only).
#![forbid(unsafe_code)]

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::report::Host;
use crate::rounds::{cell, stats};
use crate::rr::{self, RrParams, RrResult};
use crate::stop;
use crate::tools::{self, BulkResult};
use crate::weir::WeirCluster;

/// The RR server's port on n1 (iperf3 uses its default, 5201).
const RR_PORT: u16 = 9001;
const BULK_PORT: u16 = 5201;

/// The configurations, in the order of a round.
pub const CONFIGS: [&str; 2] = ["none", "host-policy"];

/// Two nodes (the world host sits on their underlay); n1 is the one the
/// host policy selects. One pod, so the cluster has a workload.
const MANIFEST: &str = "\
apiVersion: v1
kind: Node
metadata: {name: n1, labels: {kubernetes.io/hostname: n1, role: perf-host}}
spec: {podCIDRs: [10.246.0.0/24]}
---
apiVersion: v1
kind: Node
metadata: {name: n2, labels: {kubernetes.io/hostname: n2}}
spec: {podCIDRs: [10.246.1.0/24]}
---
apiVersion: v1
kind: Namespace
metadata: {name: hp}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: hp, labels: {pod: a}}
spec:
  nodeName: n1
  containers:
  - name: c
    ports:
    - {containerPort: 80, protocol: TCP}
";

/// Allow the two servers' ports from anyone, deny the rest (the failsafe
/// ports stay open whatever it says).
fn policy() -> String {
    format!(
        "\
apiVersion: weir.dev/v1alpha1
kind: WeirClusterPolicy
metadata: {{name: perf-host-fw}}
spec:
  priority: 10
  subject:
    nodeSelector: {{matchLabels: {{role: perf-host}}}}
  ingress:
  - name: servers
    action: Allow
    ports: [{{protocol: TCP, port: {RR_PORT}}}, {{protocol: TCP, port: {BULK_PORT}}}]
  - {{name: rest, action: Deny}}
"
    )
}

#[derive(Clone, Debug)]
pub struct HpOptions {
    pub out: PathBuf,
    /// weir's polling mode.
    pub mode: String,
    pub reps: usize,
    pub load_core: usize,
    pub worker_core: usize,
    pub weir: PathBuf,
    pub rr_count: u64,
    pub bulk_secs: u64,
}

impl HpOptions {
    /// `seconds` of bulk per sample, and 2500 round trips per second of it.
    pub fn new(weir: PathBuf, seconds: u64) -> HpOptions {
        HpOptions {
            out: PathBuf::from("target/perf"),
            mode: "adaptive".into(),
            reps: 3,
            load_core: 0,
            worker_core: 1,
            weir,
            rr_count: 2500 * seconds.max(1),
            bulk_secs: seconds.max(1),
        }
    }
}

/// One configuration in one round.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct HpSample {
    pub config: String,
    pub rep: usize,
    pub rr: Option<RrResult>,
    pub bulk: Option<BulkResult>,
    /// n1's `ul0` XDP redirects during the RR measurement.
    pub rr_redirected: u64,
    /// ... and during the bulk one.
    pub bulk_redirected: u64,
    pub proof: String,
    pub errors: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct HpReport {
    pub host_start: Option<Host>,
    pub weir_poll: String,
    pub reps: usize,
    pub load_core: usize,
    pub worker_core: usize,
    pub rr_count: u64,
    pub bulk_secs: u64,
    pub samples: Vec<HpSample>,
    pub errors: Vec<String>,
}

/// `weir --cluster NAME VERB -f FILE` (apply, delete).
fn weir(w: &WeirCluster, verb: &str, file: &Path) -> anyhow::Result<()> {
    let out = Command::new(&w.bin)
        .args(["--cluster", &w.name, verb, "-f"])
        .arg(file)
        .stdin(Stdio::null())
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "weir {verb}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// Waits until every running node's dataplane runs the cluster's
/// generation (the policy change is in force).
fn wait_applied(w: &WeirCluster) -> anyhow::Result<()> {
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let v = w.status()?;
        let want = v["generation"].as_u64().unwrap_or(u64::MAX);
        let behind = v["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|n| n["running"].as_bool() == Some(true))
            .any(|n| n["status"]["generation"].as_u64().unwrap_or(0) < want);
        if !behind {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < end, "generation {want} not applied");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// n1's `ul0` XDP redirect counter.
fn ul0_redirected(w: &WeirCluster) -> anyhow::Result<u64> {
    let v = w.status()?;
    Ok(v["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|n| n["node"] == "n1")
        .flat_map(|n| {
            n["status"]["dataplane"]["ports"]
                .as_array()
                .into_iter()
                .flatten()
        })
        .filter(|p| p["name"] == "ul0")
        .map(|p| p["xdp"]["redirected"].as_u64().unwrap_or(0))
        .sum())
}

pub fn run(o: &HpOptions) -> anyhow::Result<HpReport> {
    std::fs::create_dir_all(&o.out)?;
    let mut rep = HpReport {
        host_start: Some(Host::now()),
        weir_poll: o.mode.clone(),
        reps: o.reps,
        load_core: o.load_core,
        worker_core: o.worker_core,
        rr_count: o.rr_count,
        bulk_secs: o.bulk_secs,
        ..Default::default()
    };
    let manifest = o.out.join("host-policy-cluster.yaml");
    std::fs::write(&manifest, MANIFEST)?;
    let policy_file = o.out.join("host-policy.yaml");
    std::fs::write(&policy_file, policy())?;
    let name = format!("hpp{}", std::process::id() % 100_000);
    // No metrics listener: other clusters on the machine may hold the port.
    let w = WeirCluster::up_with(
        &o.weir,
        &name,
        &manifest,
        &o.worker_core.to_string(),
        &o.mode,
        &["--metrics-addr", "off"],
    )?;
    let n1 = w.cluster.node("n1").context("node n1 missing")?;
    let node_ns = n1.netns.clone();
    let ul = n1.underlay.as_ref().context("n1 has no underlay")?.ipv4;
    let world = w
        .cluster
        .world
        .as_ref()
        .context("the cluster has no world host")?
        .netns
        .clone();
    for round in 0..o.reps.max(1) {
        for cfg in CONFIGS {
            stop::check()?;
            eprintln!(
                "weir-perf host-policy: round {}/{}: {cfg}",
                round + 1,
                o.reps
            );
            let with_policy = cfg == "host-policy";
            let r = (|| -> anyhow::Result<HpSample> {
                if with_policy {
                    weir(&w, "apply", &policy_file)?;
                    wait_applied(&w)?;
                }
                let s = sample(o, &w, &world, &node_ns, ul, with_policy);
                if with_policy {
                    weir(&w, "delete", &policy_file)?;
                    wait_applied(&w)?;
                }
                s
            })();
            match r {
                Ok(mut s) => {
                    s.config = cfg.into();
                    s.rep = round;
                    rep.samples.push(s);
                }
                Err(e) => rep
                    .errors
                    .push(format!("{cfg}, round {}: {e:#}", round + 1)),
            }
        }
    }
    drop(w);
    std::fs::write(
        o.out.join("host-policy.json"),
        serde_json::to_vec_pretty(&rep)?,
    )?;
    std::fs::write(o.out.join("host-policy.md"), rep.markdown())?;
    Ok(rep)
}

/// RR then bulk from the world host to n1's underlay address, each with
/// the redirects it caused.
fn sample(
    o: &HpOptions,
    w: &WeirCluster,
    world: &str,
    node_ns: &str,
    ul: Ipv4Addr,
    with_policy: bool,
) -> anyhow::Result<HpSample> {
    let mut s = HpSample::default();
    let rp = RrParams {
        count: o.rr_count,
        warmup: (o.rr_count / 10).max(1),
        load_core: o.load_core,
        timeout: Duration::from_secs(5),
    };
    let r0 = ul0_redirected(w)?;
    match rr::run(world, node_ns, SocketAddr::from((ul, RR_PORT)), &rp) {
        Ok(r) => s.rr = Some(r),
        Err(e) => s.errors.push(format!("rr: {e:#}")),
    }
    let r1 = ul0_redirected(w)?;
    stop::check()?;
    match tools::iperf3(world, node_ns, ul, o.bulk_secs, o.load_core) {
        Ok(r) => s.bulk = Some(r),
        Err(e) => s.errors.push(format!("iperf3: {e:#}")),
    }
    let r2 = ul0_redirected(w)?;
    s.rr_redirected = r1.saturating_sub(r0);
    s.bulk_redirected = r2.saturating_sub(r1);
    // Warm-up and measured round trips: one request segment each at least.
    let trips = rp.count + rp.warmup;
    s.proof = format!(
        "n1 ul0 XDP redirects: {} during {trips} round trips, {} during bulk",
        s.rr_redirected, s.bulk_redirected
    );
    if with_policy && s.rr_redirected < trips {
        s.errors.push(format!(
            "with the host policy only {} of {trips} request segments reached the worker",
            s.rr_redirected
        ));
    }
    if with_policy && s.bulk.is_some() && s.bulk_redirected == 0 {
        s.errors
            .push("with the host policy the bulk segments did not reach the worker".into());
    }
    if !with_policy && s.rr_redirected >= trips / 10 {
        s.errors.push(format!(
            "without a host policy {} segments reached the worker (want the kernel's path)",
            s.rr_redirected
        ));
    }
    Ok(s)
}

type Getter = fn(&HpSample) -> Option<f64>;

fn p50(s: &HpSample) -> Option<f64> {
    s.rr.as_ref().map(|r| r.p50_us)
}
fn p99(s: &HpSample) -> Option<f64> {
    s.rr.as_ref().map(|r| r.p99_us)
}
fn rate(s: &HpSample) -> Option<f64> {
    s.rr.as_ref().map(|r| r.rate_per_s)
}
fn gbps(s: &HpSample) -> Option<f64> {
    s.bulk.as_ref().map(|b| b.gbit_per_s)
}

const METRICS: [(&str, Getter, usize); 4] = [
    ("TCP RR p50 µs", p50, 1),
    ("TCP RR p99 µs", p99, 1),
    ("TCP RR round trips/s", rate, 0),
    ("TCP bulk Gbit/s", gbps, 2),
];

impl HpReport {
    fn val(&self, cfg: &str, rep: usize, g: Getter) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| s.config == cfg && s.rep == rep && s.errors.is_empty())
            .and_then(g)
    }

    /// A metric of one configuration over the rounds.
    pub fn agg(&self, cfg: &str, g_name: &str) -> Option<(f64, f64, f64)> {
        let (_, g, _) = METRICS.iter().find(|(n, _, _)| *n == g_name)?;
        stats((0..self.reps).filter_map(|r| self.val(cfg, r, *g)))
    }

    /// host-policy ÷ none of a metric, per round.
    pub fn ratio(&self, g_name: &str) -> Option<(f64, f64, f64)> {
        let (_, g, _) = METRICS.iter().find(|(n, _, _)| *n == g_name)?;
        stats(
            (0..self.reps)
                .filter_map(|r| Some(self.val("host-policy", r, *g)? / self.val("none", r, *g)?)),
        )
    }

    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "# weir-perf host-policy\n");
        let _ = writeln!(
            s,
            "From the world host to servers on n1's underlay address (TCP RR on {RR_PORT}, iperf3 on {BULK_PORT}), one `weir up` cluster, worker in `{}` mode on core {}, clients and servers on core {}: without a host policy (`none`: the kernel's path) and with a WeirClusterPolicy selecting n1 (`host-policy`: every segment to the servers crosses AF_XDP and the worker). {} round(s), both in each; cells median [min–max]; ratios per round. A sample whose `ul0` redirect count does not match its path is an error, not a number. {} RR round trips, bulk {} s. The world host's MTU is the underlay's (1500), n1's host port's the pods' (1450): under host policy the first full-size segment is answered with Fragmentation Needed (path MTU discovery).\n",
            self.weir_poll, self.worker_core, self.load_core, self.reps, self.rr_count, self.bulk_secs
        );
        let _ = writeln!(s, "| metric | none | host-policy | host-policy ÷ none |");
        let _ = writeln!(s, "|---|---|---|---|");
        for (name, _, d) in METRICS {
            let _ = writeln!(
                s,
                "| {name} | {} | {} | {} |",
                cell(self.agg("none", name), d),
                cell(self.agg("host-policy", name), d),
                cell(self.ratio(name), 3)
            );
        }
        let _ = writeln!(s, "\n## Proof per sample\n");
        for x in &self.samples {
            let _ = writeln!(
                s,
                "- round {} {}: {}{}",
                x.rep + 1,
                x.config,
                x.proof,
                if x.errors.is_empty() {
                    String::new()
                } else {
                    format!(" — errors: {}", x.errors.join("; "))
                }
            );
        }
        for e in &self.errors {
            let _ = writeln!(s, "- error: {e}");
        }
        s
    }
}
