//! `weir-perf paper`: the paper's Fig. 5 scenarios on one node.
//! Pods `app1` (`id: app1`), `app2` (`id: app2`, the load source) and
//! `app3` (`id: app3`, must be refused under policy). In the same run:
//!
//! - `kernel`: veth + routing (ip_forward, a /32 route per pod);
//! - `kernel+nft`: the same plus an nftables forward chain equivalent to the
//!   L3/L4 policy (established first, then app2 → app1 tcp/udp, drop);
//! - `kernel+haproxy-L7`: nftables `redirect` of app2 → app1 TCP 80 to
//!   haproxy in the node namespace, `mode http`, only `GET /public…`;
//! - `ovs-afxdp+ct`: Open vSwitch userspace datapath, AF_XDP ports on the
//!   node-side veths, OpenFlow13 conntrack flows equivalent to the policy;
//! - `weir-<mode>`: no policy; `weir-<mode>+L3L4`: a NetworkPolicy applied
//!   with `weir apply -f`; `weir-<mode>+L7`: a WeirPolicy with `http:`
//!   rules on TCP 80 (GET /public only; weir answers 403 otherwise), checked
//!   before it is measured.
//!
//! Issue #5's table: wrk through weir with no policy, L3/L4 and L7,
//! interleaved and repeated (the policy swapped between rounds on the same
//! cluster), next to kernel+nft and kernel+haproxy.
//!
//! Inter-node (Fig. 5 b/d): a second topology, app1 on n2 and app2/app3 on
//! n1, as a pure kernel overlay (both nodes `weir.dev/dataplane: kernel`,
//! the kernel's vxlan device) and through weir with `--encap vxlan` and
//! `--encap geneve`; app2 → app3 is intra-node, app2 → app1 inter-node.
//!
//! Workloads: 64-byte UDP pps (+ cores consumed, /proc/stat), TCP bulk
//! (iperf3), TCP RR (HDR histogram), HTTP keep-alive (wrk against the
//! harness's own server in app1), new TCP connections/s and pps as the rule
//! count grows (nftables and weir), an AF_PACKET blaster into weir's XDP
//! program with no socket bound (the XDP_DROP reference), and weir's
//! `conntrack_bench` example for 1k → 1M flows.
#![forbid(unsafe_code)]

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use weir_topo::{Cluster, RealizedPod};

use crate::connrate::{self, ConnResult};
use crate::cpu::{CpuSnap, CpuUse};
use crate::http::{self, HttpServer};
use crate::kernel::KernelPath;
use crate::peers::{self, Haproxy, Nft, Ovs};
use crate::report::Host;
use crate::rounds::{self, stats};
use crate::rr::{self, RrParams, RrResult};
use crate::tools::{self, AbResult, BulkResult, HttpResult};
use crate::udp::{self, UdpParams, UdpResult, PAYLOAD_64B_FRAME};
use crate::weir::WeirCluster;
use crate::{pin, stop};

pub const MANIFESTS: &str = r#"apiVersion: v1
kind: Node
metadata: {name: n1}
spec: {podCIDRs: ["10.251.0.0/24"]}
---
apiVersion: v1
kind: Namespace
metadata: {name: paper}
---
apiVersion: v1
kind: Pod
metadata: {name: app1, namespace: paper, labels: {id: app1}}
spec: {nodeName: n1, containers: [{name: c, ports: [{containerPort: 81, protocol: TCP}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: app2, namespace: paper, labels: {id: app2}}
spec: {nodeName: n1, containers: [{name: c, ports: [{containerPort: 81, protocol: TCP}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: app3, namespace: paper, labels: {id: app3}}
spec: {nodeName: n1, containers: [{name: c, ports: [{containerPort: 81, protocol: TCP}]}]}
"#;

/// Ports of the harness's tools in app1 (none declared by a pod).
const UDP_PORT: u16 = 9000;
const RR_PORT: u16 = 9001;
const CONN_PORT: u16 = 9002;
const HTTP_PORT: u16 = 80;
const HAPROXY_PORT: u16 = 15080;
/// iperf3's default port.
const IPERF_PORT: u16 = 5201;

/// The two-node topology of the inter-node scenarios: app1 on n2, app2 and
/// app3 on n1. `{ann}` is replaced by the nodes' annotations.
const MANIFESTS_2N: &str = r#"apiVersion: v1
kind: Node
metadata: {name: n1{ann}}
spec: {podCIDRs: ["10.253.0.0/24"]}
---
apiVersion: v1
kind: Node
metadata: {name: n2{ann}}
spec: {podCIDRs: ["10.253.1.0/24"]}
---
apiVersion: v1
kind: Namespace
metadata: {name: paper}
---
apiVersion: v1
kind: Pod
metadata: {name: app1, namespace: paper, labels: {id: app1}}
spec: {nodeName: n2, containers: [{name: c, ports: [{containerPort: 81, protocol: TCP}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: app2, namespace: paper, labels: {id: app2}}
spec: {nodeName: n1, containers: [{name: c, ports: [{containerPort: 81, protocol: TCP}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: app3, namespace: paper, labels: {id: app3}}
spec: {nodeName: n1, containers: [{name: c, ports: [{containerPort: 81, protocol: TCP}]}]}
"#;

/// The two-node manifests; `kernel`: both nodes annotated
/// `weir.dev/dataplane: kernel` (no weir dataplane at all).
pub fn manifests_2n(kernel: bool) -> String {
    MANIFESTS_2N.replace(
        "{ann}",
        if kernel {
            ", annotations: {weir.dev/dataplane: kernel}"
        } else {
            ""
        },
    )
}

/// The L7 policy (the paper's scenario): to id=app1, from
/// id=app2, TCP 80 with `http: GET /public…` (weir answers 403 to anything
/// else), plus plain L3/L4 allows from id=app2 for the harness's non-HTTP
/// tools (UDP 9000, TCP 9001/9002/5201) so RR/UDP/bulk run under the same
/// policy. app3 is refused everywhere (implicit deny).
pub fn l7_policy() -> String {
    let from = serde_json::json!([{"podSelector": {"matchLabels": {"id": "app2"}}}]);
    serde_json::json!({
        "apiVersion": "weir.dev/v1alpha1",
        "kind": "WeirPolicy",
        "metadata": {"name": "app1-l7", "namespace": "paper"},
        "spec": {
            "podSelector": {"matchLabels": {"id": "app1"}},
            "ingress": [
                {"action": "Allow", "from": from,
                 "ports": [{"protocol": "TCP", "port": HTTP_PORT}],
                 "http": [{"method": "GET", "path": {"prefix": "/public"}}]},
                {"action": "Allow", "from": from,
                 "ports": [{"protocol": "UDP", "port": UDP_PORT},
                           {"protocol": "TCP", "port": RR_PORT},
                           {"protocol": "TCP", "port": CONN_PORT},
                           {"protocol": "TCP", "port": IPERF_PORT}]}
            ]
        }
    })
    .to_string()
}

/// The L3/L4 policy, with `extra` non-matching ipBlock rules before the
/// allowing one (JSON: weir reads it as YAML's subset).
pub fn l3l4_policy(extra: usize) -> String {
    let mut rules: Vec<serde_json::Value> = (0..extra)
        .map(|i| {
            serde_json::json!({"from": [{"ipBlock": {"cidr": format!("10.252.{}.{}/32", (i >> 8) & 0xff, i & 0xff)}}],
                               "ports": [{"protocol": "TCP", "port": 1 + (i % 60000)}]})
        })
        .collect();
    rules.push(serde_json::json!({"from": [{"podSelector": {"matchLabels": {"id": "app2"}}}]}));
    serde_json::json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "app1-from-app2", "namespace": "paper"},
        "spec": {"podSelector": {"matchLabels": {"id": "app1"}}, "policyTypes": ["Ingress"], "ingress": rules}
    })
    .to_string()
}

#[derive(Clone, Debug)]
pub struct PaperOptions {
    pub short: bool,
    pub out: PathBuf,
    pub load_core: usize,
    pub worker_core: usize,
    pub weir: Option<PathBuf>,
    /// weir's polling mode of the configuration being measured (set from
    /// `modes` per weir configuration).
    pub mode: String,
    /// weir's polling modes, each measured in every round; the last one is
    /// the primary mode (the L7 wrk comparison, the rule sweep, XDP_DROP and
    /// the inter-node scenarios run in it).
    pub modes: Vec<String>,
    /// Rounds of every headline configuration, interleaved.
    pub reps: usize,
    pub window: Duration,
    pub warmup: Duration,
    pub rr_count: u64,
    pub bulk_secs: u64,
    pub http_secs: u64,
    pub rules: Vec<usize>,
    pub scale_window: Duration,
    pub ovs: bool,
    pub haproxy: bool,
    pub conntrack_bench: bool,
    /// Rounds of the rule-scaling sweep (interleaved: 10, 100, …, 10, 100, …).
    pub scale_reps: usize,
    /// Rounds of the L7 wrk comparison (none, L3/L4, L7 interleaved).
    pub issue5_reps: usize,
    /// Run the inter-node scenarios (three more clusters).
    pub inter_node: bool,
    /// `weir up --pod-rx-cpus` for every weir cluster of the run (None:
    /// weir's default, `auto`). OVS's and the kernel's pods get no RPS.
    pub pod_rx_cpus: Option<String>,
}

impl PaperOptions {
    /// The mode of the L7 wrk comparison, the rule sweep, XDP_DROP and
    /// inter-node: the last of `modes`.
    pub fn primary_mode(&self) -> &str {
        self.modes.last().map_or(self.mode.as_str(), |m| m.as_str())
    }

    pub fn new(short: bool) -> PaperOptions {
        PaperOptions {
            short,
            out: PathBuf::from("target/perf"),
            load_core: 0,
            worker_core: 1,
            weir: None,
            mode: "adaptive".into(),
            modes: vec!["busy".into(), "adaptive".into()],
            reps: 3,
            window: Duration::from_millis(if short { 500 } else { 4000 }),
            warmup: Duration::from_millis(if short { 200 } else { 1000 }),
            rr_count: if short { 500 } else { 20_000 },
            bulk_secs: if short { 1 } else { 5 },
            http_secs: if short { 1 } else { 5 },
            rules: if short {
                vec![10, 1000]
            } else {
                vec![10, 100, 1000, 10_000]
            },
            scale_window: Duration::from_millis(if short { 400 } else { 2000 }),
            ovs: true,
            haproxy: true,
            conntrack_bench: !short,
            scale_reps: if short { 1 } else { 3 },
            issue5_reps: if short { 1 } else { 3 },
            inter_node: !short,
            pod_rx_cpus: None,
        }
    }

    /// The `weir up` arguments every weir cluster of the run gets.
    fn up_args(&self) -> Vec<&str> {
        match &self.pod_rx_cpus {
            Some(c) => vec!["--pod-rx-cpus", c.as_str()],
            None => Vec::new(),
        }
    }
}

/// One configuration's numbers (None: not measured; see `errors`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Row {
    pub name: String,
    /// Headline round (0-based) this row was measured in.
    #[serde(default)]
    pub rep: usize,
    pub measures: String,
    pub udp: Option<UdpResult>,
    /// Cores consumed during the UDP run (warm-up + window), both cores.
    pub udp_cpu: Option<CpuUse>,
    pub rr: Option<RrResult>,
    pub bulk: Option<BulkResult>,
    pub http: Option<HttpResult>,
    pub http_cpu: Option<CpuUse>,
    /// app3 → app1 refused (policy configurations only).
    pub app3_blocked: Option<bool>,
    /// L7 checks: status of GET /public/x and GET /private from app2.
    pub l7_public: Option<u16>,
    pub l7_private: Option<u16>,
    /// New connections: ApacheBench without `-k`, wrk with `Connection: close`.
    #[serde(default)]
    pub ab: Option<AbResult>,
    #[serde(default)]
    pub http_close: Option<HttpResult>,
    pub errors: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ScalePoint {
    pub peer: String,
    pub rules: usize,
    /// Round (0-based) of the interleaved sweep.
    pub rep: usize,
    /// Both cores over the connection-rate window.
    pub conn_cpu: Option<CpuUse>,
    /// Seconds to install the rules (nft -f / weir apply, until in force).
    pub install_s: f64,
    pub conn: Option<ConnResult>,
    pub udp_pps: Option<f64>,
    pub errors: Vec<String>,
}

/// One wrk round of the L7 wrk comparison.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Issue5Sample {
    /// `none`, `L3L4` or `L7`.
    pub policy: String,
    pub rep: usize,
    pub http: Option<HttpResult>,
    /// New connections/s: ApacheBench without `-k`, wrk with `Connection: close`.
    #[serde(default)]
    pub ab: Option<AbResult>,
    #[serde(default)]
    pub http_close: Option<HttpResult>,
    pub error: Option<String>,
}

/// One path of the inter-node scenarios.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct InterRow {
    /// `kernel-vxlan`, `weir-<mode>-vxlan`, `weir-<mode>-geneve`.
    pub dataplane: String,
    /// `intra` (app2 → app3, both on n1) or `inter` (app2 → app1 on n2).
    pub path: String,
    #[serde(default)]
    pub rep: usize,
    pub row: Row,
}

/// The generator's ceiling in one round: the same UDP generator (same
/// pods, core, batch, window) against the kernel path with forwarding off,
/// so the node drops every datagram at IP input.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Ceiling {
    pub rep: usize,
    pub offered_pps: f64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct XdpDrop {
    #[serde(default)]
    pub rep: usize,
    pub sent: u64,
    pub window_s: f64,
    pub pps: f64,
    pub note: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PaperReport {
    pub host_start: Option<Host>,
    pub host_end: Option<Host>,
    pub short: bool,
    pub load_core: usize,
    pub worker_core: usize,
    /// The primary polling mode (see [`PaperOptions::modes`]).
    pub weir_poll: String,
    /// Every polling mode measured, in order.
    #[serde(default)]
    pub weir_modes: Vec<String>,
    /// Rounds of the headline configurations.
    #[serde(default)]
    pub reps: usize,
    /// The generator's ceiling, one per round.
    #[serde(default)]
    pub ceilings: Vec<Ceiling>,
    pub weir_worker_cores: Vec<u64>,
    pub window_s: f64,
    pub rows: Vec<Row>,
    pub scaling: Vec<ScalePoint>,
    pub issue5: Vec<Issue5Sample>,
    pub inter_node: Vec<InterRow>,
    /// The XDP_DROP reference, one per round.
    #[serde(default)]
    pub xdp_drop: Vec<XdpDrop>,
    pub conntrack_bench: Option<String>,
    pub clusters: Vec<String>,
    pub errors: Vec<String>,
    /// `--pod-rx-cpus` given to every weir cluster (None: weir's default).
    #[serde(default)]
    pub pod_rx_cpus: Option<String>,
}

struct Pods<'a> {
    app1: &'a RealizedPod,
    app2: &'a RealizedPod,
    app3: &'a RealizedPod,
}

fn pods(c: &Cluster) -> anyhow::Result<Pods<'_>> {
    let g = |n: &str| {
        c.pod("paper", n)
            .with_context(|| format!("pod paper/{n} missing"))
    };
    Ok(Pods {
        app1: g("app1")?,
        app2: g("app2")?,
        app3: g("app3")?,
    })
}

fn v4(p: &RealizedPod) -> anyhow::Result<Ipv4Addr> {
    p.ipv4
        .with_context(|| format!("pod {} has no IPv4", p.name))
}

/// Which workloads a configuration gets.
#[derive(Clone, Copy)]
struct Work {
    udp: bool,
    rr: bool,
    bulk: bool,
    http: bool,
    policy: bool,
}

const ALL: Work = Work {
    udp: true,
    rr: true,
    bulk: true,
    http: true,
    policy: false,
};

impl Row {
    /// The row, tagged with its round.
    fn round(mut self, rep: usize) -> Row {
        self.rep = rep;
        self
    }
}

fn err(e: anyhow::Error) -> String {
    format!("{e:#}")
}

impl PaperOptions {
    fn udp_p(&self) -> UdpParams {
        UdpParams {
            payload: PAYLOAD_64B_FRAME,
            batch: 64,
            warmup: self.warmup,
            window: self.window,
            load_core: self.load_core,
        }
    }
}

/// Runs the workloads of `w` from app2 to app1.
fn measure(o: &PaperOptions, name: &str, measures: &str, p: &Pods, w: Work) -> anyhow::Result<Row> {
    measure_to(o, name, measures, p.app2, p.app1, Some(p.app3), w)
}

/// Runs the workloads of `w` from `src` to `dst` (`w.policy`: `app3` must
/// be refused).
fn measure_to(
    o: &PaperOptions,
    name: &str,
    measures: &str,
    src: &RealizedPod,
    dstp: &RealizedPod,
    app3: Option<&RealizedPod>,
    w: Work,
) -> anyhow::Result<Row> {
    let mut row = Row {
        name: name.into(),
        measures: measures.into(),
        ..Default::default()
    };
    let dst = v4(dstp)?;
    let (src_ns, dst_ns) = (src.netns.as_str(), dstp.netns.as_str());
    if w.rr {
        stop::check()?;
        let rp = RrParams {
            count: o.rr_count,
            warmup: (o.rr_count / 10).max(1),
            load_core: o.load_core,
            timeout: Duration::from_secs(5),
        };
        match rr::run(src_ns, dst_ns, SocketAddr::from((dst, RR_PORT)), &rp) {
            Ok(r) => row.rr = Some(r),
            Err(e) => row.errors.push(format!("rr: {}", err(e))),
        }
    }
    if w.bulk {
        stop::check()?;
        match tools::iperf3(src_ns, dst_ns, dst, o.bulk_secs, o.load_core) {
            Ok(r) => row.bulk = Some(r),
            Err(e) => row.errors.push(format!("iperf3: {}", err(e))),
        }
    }
    if w.http {
        stop::check()?;
        let srv = HttpServer::start(dst_ns, SocketAddr::from((dst, HTTP_PORT)), o.load_core)?;
        let c0 = CpuSnap::now();
        match tools::wrk(
            src_ns,
            &format!("http://{dst}/public/x"),
            o.http_secs,
            8,
            o.load_core,
        ) {
            Ok(r) => {
                row.http_cpu = Some(CpuSnap::now().since(&c0));
                row.http = Some(r)
            }
            Err(e) => row.errors.push(format!("wrk: {}", err(e))),
        }
        drop(srv);
    }
    if w.udp {
        stop::check()?;
        let c0 = CpuSnap::now();
        match udp::run(src_ns, dst_ns, SocketAddrV4::new(dst, UDP_PORT), &o.udp_p()) {
            Ok(r) => {
                row.udp_cpu = Some(CpuSnap::now().since(&c0));
                row.udp = Some(r)
            }
            Err(e) => row.errors.push(format!("udp: {}", err(e))),
        }
    }
    if let (true, Some(a3)) = (w.policy, app3) {
        row.app3_blocked = Some(!rr::reachable(
            &a3.netns,
            dst_ns,
            SocketAddr::from((dst, RR_PORT)),
        ));
    }
    Ok(row)
}

/// One scaling point: new connections/s and UDP pps app2 → app1.
fn scale_point(
    o: &PaperOptions,
    p: &Pods,
    peer: &str,
    rules: usize,
    rep: usize,
    install_s: f64,
) -> ScalePoint {
    let mut sp = ScalePoint {
        peer: peer.into(),
        rules,
        rep,
        install_s,
        ..Default::default()
    };
    let Ok(dst) = v4(p.app1) else { return sp };
    let c0 = CpuSnap::now();
    let cr = connrate::run(
        &p.app2.netns,
        &p.app1.netns,
        SocketAddr::from((dst, CONN_PORT)),
        o.scale_window,
        o.load_core,
    );
    sp.conn_cpu = Some(CpuSnap::now().since(&c0));
    match cr {
        Ok(c) => sp.conn = Some(c),
        Err(e) => sp.errors.push(format!("connrate: {}", err(e))),
    }
    let mut up = o.udp_p();
    up.window = o.scale_window;
    up.warmup = Duration::from_millis(200);
    match udp::run(
        &p.app2.netns,
        &p.app1.netns,
        SocketAddrV4::new(dst, UDP_PORT),
        &up,
    ) {
        Ok(u) => sp.udp_pps = Some(u.received_pps),
        Err(e) => sp.errors.push(format!("udp: {}", err(e))),
    }
    sp
}

pub fn run(o: &PaperOptions) -> anyhow::Result<PaperReport> {
    let ncores = pin::cores();
    anyhow::ensure!(
        o.load_core < ncores && o.worker_core < ncores && o.load_core != o.worker_core,
        "need two distinct cores (load {}, worker {}); this machine has {ncores}",
        o.load_core,
        o.worker_core
    );
    anyhow::ensure!(!o.modes.is_empty(), "--modes: at least one polling mode");
    std::fs::create_dir_all(&o.out)?;
    // Absolute: ovsdb-server's punix: socket and pidfiles break on a
    // relative run directory (the full run of docs/performance.md lost
    // its OVS row to this).
    let mut o = o.clone();
    o.out = std::fs::canonicalize(&o.out)?;
    let o = &o;
    let manifest = o.out.join("paper.yaml");
    std::fs::write(&manifest, MANIFESTS)?;
    let spec = weir_topo::manifest::parse_str(MANIFESTS, "paper.yaml")
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let reps = o.reps.max(1);
    let mut rep = PaperReport {
        host_start: Some(Host::at(o.load_core, o.worker_core)),
        short: o.short,
        load_core: o.load_core,
        worker_core: o.worker_core,
        weir_poll: o.primary_mode().to_string(),
        weir_modes: o.modes.clone(),
        reps,
        window_s: o.window.as_secs_f64(),
        pod_rx_cpus: o.pod_rx_cpus.clone(),
        ..Default::default()
    };
    let nrules = (o.rules.len() * o.scale_reps.max(1)) as u64;
    let per_round = 8 + 4 * o.modes.len() as u64;
    let pb = ProgressBar::new(per_round * reps as u64 + 2 * nrules + 2);
    pb.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {wide_msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb.enable_steady_tick(Duration::from_millis(200));
    let step = |m: &str| {
        pb.inc(1);
        pb.set_message(m.to_string());
    };

    // Every headline configuration once per round, the rounds one after
    // the other (kernel, nft, haproxy, OVS, weir in each mode; then again):
    // a slow minute on the shared machine hits one round of every
    // configuration rather than every round of one.
    for round in 0..reps {
        let r = round + 1;
        kernel_round(o, &spec, round, &mut rep, &|m| {
            step(&format!("round {r}/{reps}: {m}"))
        })?;
        step(&format!("round {r}/{reps}: ovs-afxdp"));
        ovs_round(o, &spec, round, &mut rep)?;
        if let Some(bin) = o.weir.as_deref() {
            for mode in &o.modes {
                let om = PaperOptions {
                    mode: mode.clone(),
                    ..o.clone()
                };
                weir_round(&om, bin, &manifest, round, &mut rep, &|m| {
                    step(&format!("round {r}/{reps}: weir {mode}: {m}"))
                })?;
            }
        }
    }
    if o.weir.is_none() {
        rep.errors.push("weir not measured (--kernel-only)".into());
    }

    if let (true, Some(bin)) = (o.inter_node, o.weir.as_deref()) {
        let om = PaperOptions {
            mode: o.primary_mode().to_string(),
            ..o.clone()
        };
        for round in 0..reps {
            step(&format!("inter-node round {}/{reps}", round + 1));
            inter_node(&om, bin, round, &mut rep)?;
        }
    } else if o.inter_node {
        rep.errors
            .push("inter-node: weir not measured (--kernel-only)".into());
    } else {
        rep.errors
            .push("inter-node skipped (short mode default; --inter-node true runs it)".into());
    }

    step("conntrack_bench");
    if o.conntrack_bench {
        match conntrack_bench(o) {
            Ok(s) => rep.conntrack_bench = Some(s),
            Err(e) => rep.errors.push(format!("conntrack_bench: {}", err(e))),
        }
    }
    pb.finish_and_clear();
    rep.host_end = Some(Host::at(o.load_core, o.worker_core));
    write(o, &rep)?;
    Ok(rep)
}

/// The sub-rounds of a sweep with `total` rounds that run in headline
/// round `round` of `reps`: round, round + reps, … (every sweep round
/// runs once, spread over the headline rounds).
fn sub_rounds(round: usize, reps: usize, total: usize) -> impl Iterator<Item = usize> {
    (round..total.max(1)).step_by(reps.max(1))
}

/// One round of the kernel side: the generator's ceiling (forwarding still
/// off: the node drops every datagram at IP input), then kernel,
/// kernel+nft (and this round's share of the nftables rule sweep),
/// kernel+haproxy.
fn kernel_round(
    o: &PaperOptions,
    spec: &weir_topo::manifest::ClusterSpec,
    round: usize,
    rep: &mut PaperReport,
    step: &dyn Fn(&str),
) -> anyhow::Result<()> {
    let pid = std::process::id();
    step("kernel: build");
    let kname = format!("pp{pid}k");
    if round == 0 {
        rep.clusters.push(kname.clone());
    }
    let k = KernelPath::build(&kname, spec)?;
    let p = pods(&k.cluster)?;
    let node = k.cluster.nodes[0].netns.clone();
    step("generator ceiling (node drops, ip_forward=0)");
    stop::check()?;
    match udp::run(
        &p.app2.netns,
        &p.app1.netns,
        SocketAddrV4::new(v4(p.app1)?, UDP_PORT),
        &o.udp_p(),
    ) {
        Ok(u) => rep.ceilings.push(Ceiling {
            rep: round,
            offered_pps: u.offered_pps,
        }),
        Err(e) => rep.errors.push(format!(
            "generator ceiling, round {}: {}",
            round + 1,
            err(e)
        )),
    }
    k.enable_forwarding()?;
    step("kernel: no policy");
    rep.rows
        .push(measure(o, "kernel", "veth + routing, no policy", &p, ALL)?.round(round));
    step("kernel+nft: L3/L4 policy");
    {
        let _n = Nft::load(
            &node,
            &peers::nft_ruleset(v4(p.app2)?, v4(p.app1)?, 0, None),
        )?;
        let w = Work {
            policy: true,
            ..ALL
        };
        rep.rows.push(
            measure(
                o,
                "kernel+nft",
                "routing + nftables forward chain = the L3/L4 policy",
                &p,
                w,
            )?
            .round(round),
        );
        for sr in sub_rounds(round, o.reps, o.scale_reps) {
            for &n in &o.rules {
                step(&format!("kernel+nft: {n} rules (sweep round {})", sr + 1));
                let t = Instant::now();
                let r = Nft::load(
                    &node,
                    &peers::nft_ruleset(v4(p.app2)?, v4(p.app1)?, n, None),
                );
                let secs = t.elapsed().as_secs_f64();
                match r {
                    Ok(_g) => rep
                        .scaling
                        .push(scale_point(o, &p, "nftables", n, sr, secs)),
                    Err(e) => rep.scaling.push(ScalePoint {
                        peer: "nftables".into(),
                        rules: n,
                        rep: sr,
                        errors: vec![err(e)],
                        ..Default::default()
                    }),
                }
            }
        }
    }
    step("kernel+haproxy: L7 detour");
    if o.haproxy && tools::have("haproxy") {
        let mut row = Row {
            name: "kernel+haproxy-L7".into(),
            measures: "nftables redirect of app2→app1 TCP 80 to haproxy (mode http, GET /public only) in the node netns".into(),
            rep: round,
            ..Default::default()
        };
        let r = (|| -> anyhow::Result<()> {
            let node_ip = k.cluster.nodes[0].ipv4.context("node has no IPv4")?;
            let _n = Nft::load(
                &node,
                &peers::nft_ruleset(v4(p.app2)?, v4(p.app1)?, 0, Some((node_ip, HAPROXY_PORT))),
            )?;
            let _h = Haproxy::start(
                &node,
                &o.out.join(format!("haproxy-{pid}")),
                HAPROXY_PORT,
                o.worker_core,
            )?;
            let dst = v4(p.app1)?;
            let srv = HttpServer::start(
                &p.app1.netns,
                SocketAddr::from((dst, HTTP_PORT)),
                o.load_core,
            )?;
            let a = SocketAddr::from((dst, HTTP_PORT));
            row.l7_public = Some(http::status_of(&p.app2.netns, a, "GET", "/public/x"));
            row.l7_private = Some(http::status_of(&p.app2.netns, a, "GET", "/private"));
            row.app3_blocked = Some(http::status_of(&p.app3.netns, a, "GET", "/public/x") == 0);
            let c0 = CpuSnap::now();
            let h = tools::wrk(
                &p.app2.netns,
                &format!("http://{dst}/public/x"),
                o.http_secs,
                8,
                o.load_core,
            )?;
            row.http_cpu = Some(CpuSnap::now().since(&c0));
            row.http = Some(h);
            let url = format!("http://{dst}/public/x");
            row.ab = Some(tools::ab(&p.app2.netns, &url, o.http_secs, 8, o.load_core)?);
            row.http_close = Some(tools::wrk_close(
                &p.app2.netns,
                &url,
                o.http_secs,
                8,
                o.load_core,
            )?);
            drop(srv);
            Ok(())
        })();
        if let Err(e) = r {
            row.errors.push(err(e));
        }
        rep.rows.push(row);
    } else if round == 0 {
        rep.errors
            .push("haproxy skipped (--no-haproxy or not installed: scripts/setup.sh)".into());
    }
    Ok(())
}

/// One round of Open vSwitch: userspace datapath, AF_XDP ports,
/// conntrack flows = the L3/L4 policy.
fn ovs_round(
    o: &PaperOptions,
    spec: &weir_topo::manifest::ClusterSpec,
    round: usize,
    rep: &mut PaperReport,
) -> anyhow::Result<()> {
    if !(o.ovs && tools::have("ovs-vswitchd")) {
        if round == 0 {
            rep.errors
                .push("OVS skipped (--no-ovs or not installed: scripts/setup.sh)".into());
        }
        return Ok(());
    }
    stop::check()?;
    let pid = std::process::id();
    let oname = format!("pp{pid}o");
    if round == 0 {
        rep.clusters.push(oname.clone());
    }
    let r = (|| -> anyhow::Result<Row> {
        let k = KernelPath::build(&oname, spec)?;
        let p = pods(&k.cluster)?;
        let node = k.cluster.nodes[0].netns.clone();
        let ports = peers::ovs_ports(&[p.app1, p.app2, p.app3])?;
        let ovs = Ovs::start(
            &node,
            &o.out.join(format!("ovs-{pid}")),
            &ports,
            (v4(p.app2)?, v4(p.app1)?),
            o.worker_core,
        )?;
        let w = Work {
            policy: true,
            ..ALL
        };
        let row = measure(o, "ovs-afxdp+ct", "OVS 3.1 netdev datapath, AF_XDP ports, OpenFlow13 ct flows = the L3/L4 policy; PMD on the worker core", &p, w);
        let _ = std::fs::write(o.out.join("ovs-pmd-stats.txt"), ovs.pmd_stats());
        drop(ovs);
        drop(k);
        row
    })();
    match r {
        Ok(row) => rep.rows.push(row.round(round)),
        Err(e) => rep.rows.push(Row {
            name: "ovs-afxdp+ct".into(),
            rep: round,
            errors: vec![err(e)],
            ..Default::default()
        }),
    }
    Ok(())
}

/// One round of weir in `o.mode`: no policy, L3/L4, L7; in the primary
/// mode also this round's share of the L7 wrk comparison and of the rule
/// sweep, and the XDP_DROP reference (last: it stops the dataplane).
fn weir_round(
    o: &PaperOptions,
    bin: &Path,
    manifest: &Path,
    round: usize,
    rep: &mut PaperReport,
    step: &dyn Fn(&str),
) -> anyhow::Result<()> {
    stop::check()?;
    let primary = o.mode == o.primary_mode();
    let wname = format!("pp{}w{}", std::process::id(), &o.mode[..1]);
    if round == 0 {
        rep.clusters.push(wname.clone());
    }
    step("up");
    let w = WeirCluster::up_with(
        bin,
        &wname,
        manifest,
        &o.worker_core.to_string(),
        &o.mode,
        &o.up_args(),
    )?;
    let p = pods(&w.cluster)?;
    step("no policy");
    rep.rows
        .push(measure(o, &format!("weir-{}", o.mode), "weir, no policy", &p, ALL)?.round(round));
    if let Ok(c) = w.counters() {
        rep.weir_worker_cores = c.worker_cores;
    }
    step("L3/L4 policy");
    let pol = o.out.join("paper-policy.json");
    let pol7 = o.out.join("paper-l7-policy.json");
    std::fs::write(&pol, l3l4_policy(0))?;
    std::fs::write(&pol7, l7_policy())?;
    let mut cur = Pol::None;
    switch(&w, &mut cur, Pol::L3L4, &pol, &pol7)?;
    let wk = Work {
        policy: true,
        ..ALL
    };
    rep.rows.push(
        measure(
            o,
            &format!("weir-{}+L3L4", o.mode),
            "weir, NetworkPolicy id=app2 → id=app1 (weir apply -f)",
            &p,
            wk,
        )?
        .round(round),
    );
    step("L7 policy");
    rep.rows
        .push(weir_l7_row(o, &w, &p, &mut cur, &pol, &pol7)?.round(round));
    if !primary {
        return Ok(());
    }
    step("L7 wrk comparison (none, L3/L4, L7)");
    let dst = v4(p.app1)?;
    for sr in sub_rounds(round, o.reps, o.issue5_reps) {
        for (label, to) in [("none", Pol::None), ("L3L4", Pol::L3L4), ("L7", Pol::L7)] {
            stop::check()?;
            let mut smp = Issue5Sample {
                policy: label.into(),
                rep: sr,
                ..Default::default()
            };
            let r = (|| -> anyhow::Result<()> {
                switch(&w, &mut cur, to, &pol, &pol7)?;
                let _srv = HttpServer::start(
                    &p.app1.netns,
                    SocketAddr::from((dst, HTTP_PORT)),
                    o.load_core,
                )?;
                let url = format!("http://{dst}/public/x");
                let (ns, secs, core) = (&p.app2.netns, o.http_secs, o.load_core);
                smp.http = Some(tools::wrk(ns, &url, secs, 8, core)?);
                smp.ab = Some(tools::ab(ns, &url, secs, 8, core)?);
                smp.http_close = Some(tools::wrk_close(ns, &url, secs, 8, core)?);
                Ok(())
            })();
            if let Err(e) = r {
                smp.error = Some(err(e));
            }
            rep.issue5.push(smp);
        }
    }
    switch(&w, &mut cur, Pol::None, &pol, &pol7)?;
    for sr in sub_rounds(round, o.reps, o.scale_reps) {
        for &n in &o.rules {
            step(&format!("{n} rules (sweep round {})", sr + 1));
            std::fs::write(&pol, l3l4_policy(n))?;
            let t = Instant::now();
            match apply(&w, &pol) {
                Ok(()) => {
                    rep.scaling
                        .push(scale_point(o, &p, "weir", n, sr, t.elapsed().as_secs_f64()))
                }
                Err(e) => rep.scaling.push(ScalePoint {
                    peer: "weir".into(),
                    rules: n,
                    rep: sr,
                    errors: vec![err(e)],
                    ..Default::default()
                }),
            }
        }
    }
    step("XDP_DROP reference");
    match xdp_drop(o, &w, &p) {
        Ok(mut x) => {
            x.rep = round;
            rep.xdp_drop.push(x)
        }
        Err(e) => rep.errors.push(format!(
            "XDP_DROP reference, round {}: {}",
            round + 1,
            err(e)
        )),
    }
    drop(w);
    Ok(())
}

fn apply(w: &WeirCluster, file: &Path) -> anyhow::Result<()> {
    weir_cmd(w, "apply", file)
}

/// `weir apply|delete -f FILE`.
fn weir_cmd(w: &WeirCluster, verb: &str, file: &Path) -> anyhow::Result<()> {
    let out = Command::new(&w.bin)
        .args(["--cluster", &w.name, verb, "-f"])
        .arg(file)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run weir {verb}"))?;
    anyhow::ensure!(
        out.status.success(),
        "weir {verb} -f {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// Which policy is loaded on the weir cluster.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Pol {
    None,
    L3L4,
    L7,
}

/// Deletes the loaded policy and applies `to` (`l3l4`/`l7`: their files).
/// The two are never loaded together: a plain allow next to the L7 rule
/// would admit port 80 unrestricted (namespace-tier union).
fn switch(w: &WeirCluster, cur: &mut Pol, to: Pol, l3l4: &Path, l7: &Path) -> anyhow::Result<()> {
    if *cur == to {
        return Ok(());
    }
    let file = |p: Pol| if p == Pol::L3L4 { l3l4 } else { l7 };
    if *cur != Pol::None {
        weir_cmd(w, "delete", file(*cur))?;
        *cur = Pol::None;
    }
    if to != Pol::None {
        weir_cmd(w, "apply", file(to))?;
        *cur = to;
    }
    Ok(())
}

/// weir with the L7 WeirPolicy: checked first (GET /public/x → 200 from the
/// server, GET /private → 403 from weir — the server answers 404 to it —,
/// app3 refused on HTTP and RR), then every workload.
fn weir_l7_row(
    o: &PaperOptions,
    w: &WeirCluster,
    p: &Pods,
    cur: &mut Pol,
    l3l4: &Path,
    l7: &Path,
) -> anyhow::Result<Row> {
    let name = format!("weir-{}+L7", o.mode);
    switch(w, cur, Pol::L7, l3l4, l7)?;
    let dst = v4(p.app1)?;
    let a = SocketAddr::from((dst, HTTP_PORT));
    let (public, private, app3) = {
        let _srv = HttpServer::start(&p.app1.netns, a, o.load_core)?;
        (
            http::status_of(&p.app2.netns, a, "GET", "/public/x"),
            http::status_of(&p.app2.netns, a, "GET", "/private"),
            http::status_of(&p.app3.netns, a, "GET", "/public/x"),
        )
    };
    let checks_ok = public == 200 && private == 403 && app3 == 0;
    let mut row = if checks_ok {
        let wk = Work {
            policy: true,
            ..ALL
        };
        measure(
            o,
            &name,
            "weir, WeirPolicy id=app2 → id=app1: TCP 80 with http: GET prefix /public (403 from weir otherwise), UDP 9000 / TCP 9001, 9002, 5201 plain allows (weir apply -f)",
            p,
            wk,
        )?
    } else {
        Row {
            name,
            measures: "weir, WeirPolicy with http: rules (not measured: checks failed)".into(),
            ..Default::default()
        }
    };
    row.l7_public = Some(public);
    row.l7_private = Some(private);
    row.app3_blocked = Some(row.app3_blocked.unwrap_or(true) && app3 == 0);
    if !checks_ok {
        row.errors.push(format!(
            "L7 checks failed: GET /public/x → {public} (want 200), GET /private → {private} (want 403 from weir), app3 GET → {app3} (want refused = 0)"
        ));
    }
    Ok(row)
}

/// Inter-node scenarios: three clusters on the two-node topology, each
/// measured intra-node (app2 → app3) and inter-node (app2 → app1).
fn inter_node(
    o: &PaperOptions,
    bin: &Path,
    round: usize,
    rep: &mut PaperReport,
) -> anyhow::Result<()> {
    let pid = std::process::id();
    let wk = Work {
        udp: true,
        rr: true,
        bulk: false,
        http: true,
        policy: false,
    };
    let cfgs: [(&str, &str, bool, &[&str]); 3] = [
        ("kernel-vxlan", "i", true, &[]),
        ("vxlan", "v", false, &["--encap", "vxlan"]),
        ("geneve", "g", false, &["--encap", "geneve"]),
    ];
    for (label, suffix, kernel, extra) in cfgs {
        stop::check()?;
        let dp = if kernel {
            label.to_string()
        } else {
            format!("weir-{}-{label}", o.mode)
        };
        let name = format!("pp{pid}{suffix}");
        if round == 0 {
            rep.clusters.push(name.clone());
        }
        let file = o.out.join(format!("paper-2n-{label}.yaml"));
        std::fs::write(&file, manifests_2n(kernel))?;
        let r = (|| -> anyhow::Result<Vec<InterRow>> {
            let mut args = extra.to_vec();
            args.extend(o.up_args());
            let w = WeirCluster::up_with(
                bin,
                &name,
                &file,
                &o.worker_core.to_string(),
                &o.mode,
                &args,
            )?;
            let p = pods(&w.cluster)?;
            let mut v = Vec::new();
            for (path, dst) in [("intra", p.app3), ("inter", p.app1)] {
                let row = measure_to(o, &format!("{dp} {path}"), "", p.app2, dst, None, wk)?;
                v.push(InterRow {
                    dataplane: dp.clone(),
                    path: path.into(),
                    rep: round,
                    row: row.round(round),
                });
            }
            drop(w);
            Ok(v)
        })();
        match r {
            Ok(v) => rep.inter_node.extend(v),
            Err(e) => rep
                .errors
                .push(format!("inter-node {dp}, round {}: {}", round + 1, err(e))),
        }
    }
    Ok(())
}

/// 64-byte IPv4/UDP frame from `p.app2` to app1 (dst MAC: app2's gateway,
/// the node-side veth).
fn frame(p: &Pods) -> anyhow::Result<Vec<u8>> {
    udp_frame(p.app2, p.app1)
}

/// 64-byte IPv4/UDP frame from pod `src` (source port 40000) to pod `dst`'s
/// port 9000, UDP checksum 0 (none, valid over IPv4); the destination MAC is
/// `src`'s gateway, the node-side veth. Ports at bytes 34..36 and 36..38.
pub(crate) fn udp_frame(src: &RealizedPod, dst: &RealizedPod) -> anyhow::Result<Vec<u8>> {
    let (s, d) = (v4(src)?, v4(dst)?);
    let mut f = Vec::with_capacity(60);
    f.extend_from_slice(&src.host_mac);
    f.extend_from_slice(&src.pod_mac);
    f.extend_from_slice(&[0x08, 0x00]);
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&(46u16).to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&s.octets());
    ip[16..20].copy_from_slice(&d.octets());
    let mut sum: u32 = ip
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]) as u32)
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    ip[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&40000u16.to_be_bytes());
    f.extend_from_slice(&UDP_PORT.to_be_bytes());
    f.extend_from_slice(&26u16.to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(&[0x5a; PAYLOAD_64B_FRAME]);
    Ok(f)
}

/// `weir dataplane stop`: weir's XDP program stays on the node-side veth
/// with no socket bound and drops everything; an AF_PACKET blaster in app2
/// sends into it.
fn xdp_drop(o: &PaperOptions, w: &WeirCluster, p: &Pods) -> anyhow::Result<XdpDrop> {
    let st = Command::new(&w.bin)
        .args(["--cluster", &w.name, "dataplane", "stop", "--node", "n1"])
        .stdin(Stdio::null())
        .output()?;
    anyhow::ensure!(
        st.status.success(),
        "weir dataplane stop: {}",
        String::from_utf8_lossy(&st.stderr).trim()
    );
    let f = frame(p)?;
    let sent = AtomicU64::new(0);
    let done = AtomicBool::new(false);
    let window = o.window;
    let secs = std::thread::scope(|s| -> anyhow::Result<(u64, f64)> {
        let h = s.spawn(|| -> anyhow::Result<()> {
            weir_topo::netns::run_in(&p.app2.netns, || -> anyhow::Result<()> {
                pin::pin(o.load_core)?;
                // Not sysfs: it shows the namespace it was mounted in.
                let idx = crate::mmsg::ifindex("eth0");
                anyhow::ensure!(idx > 0, "eth0 ifindex");
                let mut b = crate::mmsg::PacketBlaster::new(idx, &f, 64)?;
                crate::mmsg::blast(&mut b, &done, &sent, |_| {}).context("AF_PACKET sendmmsg")?;
                Ok(())
            })?
        });
        let r = (|| -> anyhow::Result<(u64, f64)> {
            udp::sleep_checked(o.warmup)?;
            let (t0, s0) = (Instant::now(), sent.load(Ordering::Relaxed));
            udp::sleep_checked(window)?;
            let (t1, s1) = (Instant::now(), sent.load(Ordering::Relaxed));
            Ok((s1 - s0, (t1 - t0).as_secs_f64()))
        })();
        done.store(true, Ordering::Relaxed);
        h.join()
            .map_err(|_| anyhow::anyhow!("blaster panicked"))??;
        r
    })?;
    Ok(XdpDrop {
        rep: 0,
        sent: secs.0,
        window_s: secs.1,
        pps: secs.0 as f64 / secs.1,
        note: "AF_PACKET sendmmsg (PACKET_QDISC_BYPASS) from app2's eth0 into weir's XDP program on the node-side veth, no AF_XDP socket bound (weir dataplane stop): every frame dropped in XDP".into(),
    })
}

/// Runs weir-dataplane's `conntrack_bench` example (built if missing) and
/// returns its report verbatim.
fn conntrack_bench(o: &PaperOptions) -> anyhow::Result<String> {
    let ws = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let bin = ws.join("target/release/examples/conntrack_bench");
    if !bin.is_file() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let st = Command::new(cargo)
            .current_dir(&ws)
            .args([
                "build",
                "--release",
                "-p",
                "weir-dataplane",
                "--example",
                "conntrack_bench",
            ])
            .status()
            .context("cargo build conntrack_bench")?;
        anyhow::ensure!(st.success(), "cargo build --example conntrack_bench failed");
    }
    let out = Command::new("taskset")
        .args(["-c", &format!("{},{}", o.load_core, o.worker_core)])
        .arg(&bin)
        .arg("2")
        .stdin(Stdio::null())
        .output()
        .context("run conntrack_bench")?;
    anyhow::ensure!(
        out.status.success(),
        "conntrack_bench: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

fn f0(v: Option<f64>) -> String {
    v.map_or("—".into(), |v| format!("{v:.0}"))
}

fn f2(v: Option<f64>) -> String {
    v.map_or("—".into(), |v| format!("{v:.2}"))
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

impl Row {
    fn pps(&self) -> Option<f64> {
        self.udp.as_ref().map(|u| u.received_pps)
    }
    fn cores(&self) -> Option<f64> {
        self.udp_cpu.as_ref().map(|c| c.cores)
    }
    fn pps_per_core(&self) -> Option<f64> {
        ratio(self.pps(), self.cores())
    }
    fn gbps(&self) -> Option<f64> {
        self.bulk.as_ref().map(|b| b.gbit_per_s)
    }
    fn p50(&self) -> Option<f64> {
        self.rr.as_ref().map(|r| r.p50_us)
    }
    fn p99(&self) -> Option<f64> {
        self.rr.as_ref().map(|r| r.p99_us)
    }
    fn rps(&self) -> Option<f64> {
        self.http.as_ref().map(|h| h.requests_per_s)
    }
    fn hp50(&self) -> Option<f64> {
        self.http.as_ref().map(|h| h.p50_us)
    }
    fn hp99(&self) -> Option<f64> {
        self.http.as_ref().map(|h| h.p99_us)
    }
}

/// Metrics of the ratio table: (label, getter, higher is better).
type Getter = fn(&Row) -> Option<f64>;
const METRICS: [(&str, Getter, bool); 8] = [
    ("UDP pps", Row::pps, true),
    ("pps/core", Row::pps_per_core, true),
    ("TCP Gb/s", Row::gbps, true),
    ("RR p50", Row::p50, false),
    ("RR p99", Row::p99, false),
    ("HTTP req/s", Row::rps, true),
    ("HTTP p50", Row::hp50, false),
    ("HTTP p99", Row::hp99, false),
];

/// "min / median / max" (or just the value when they are all equal).
fn mmm(x: Option<(f64, f64, f64)>) -> String {
    match x {
        None => "—".into(),
        Some((a, m, b)) if a == b => format!("{m:.0}"),
        Some((a, m, b)) => format!("{a:.0} / **{m:.0}** / {b:.0}"),
    }
}

impl PaperReport {
    /// Issue #5's closing table: wrk through weir with no policy, L3/L4 and
    /// L7 (medians of the interleaved rounds), and through the kernel with
    /// nftables and haproxy (their rows).
    fn issue5_md(&self, s: &mut String) {
        if self.issue5.is_empty() {
            return;
        }
        let m = &self.weir_poll;
        let reps = self.issue5.iter().map(|x| x.rep + 1).max().unwrap_or(0);
        let _ = writeln!(
            s,
            "\n## Issue #5: HTTP keep-alive through weir with no policy, L3/L4, L7\n\nwrk, 1 thread, 8 connections, GET /public/x, same weir cluster, the policy swapped between rounds (none → L3/L4 → L7, {reps} round(s), interleaved); weir cells: median [min–max] over the rounds. Kernel rows: median [min–max] of their headline rounds, same run (their own cluster).\n"
        );
        let _ = writeln!(
            s,
            "| path | policy | req/s | p50 µs | p99 µs | req/s ÷ weir L3/L4 | p50 ÷ weir L3/L4 | p99 ÷ weir L3/L4 | non-2xx/socket errors |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|");
        let get = |pol: &str, f: fn(&HttpResult) -> f64| {
            stats(
                self.issue5
                    .iter()
                    .filter(|x| x.policy == pol)
                    .filter_map(|x| x.http.as_ref().map(f)),
            )
        };
        let rps = |h: &HttpResult| h.requests_per_s;
        let p50 = |h: &HttpResult| h.p50_us;
        let p99 = |h: &HttpResult| h.p99_us;
        let errs = |h: &HttpResult| h.errors as f64;
        let base = (
            get("L3L4", rps).map(|x| x.1),
            get("L3L4", p50).map(|x| x.1),
            get("L3L4", p99).map(|x| x.1),
        );
        let cell = |x| rounds::cell(x, 0);
        for (pol, label) in [
            ("none", "(a) none"),
            ("L3L4", "(b) L3/L4"),
            ("L7", "(c) L7 http rules"),
        ] {
            let (r, a, b) = (get(pol, rps), get(pol, p50), get(pol, p99));
            let e = get(pol, errs).map(|x| x.2);
            let _ = writeln!(
                s,
                "| weir-{m} | {label} | {} | {} | {} | {} | {} | {} | {} |",
                cell(r),
                cell(a),
                cell(b),
                f2(ratio(r.map(|x| x.1), base.0)),
                f2(ratio(a.map(|x| x.1), base.1)),
                f2(ratio(b.map(|x| x.1), base.2)),
                f0(e)
            );
        }
        for (name, label) in [
            ("kernel+nft", "(b) nftables"),
            ("kernel+haproxy-L7", "(c) haproxy L7"),
        ] {
            let (r, a, b) = (
                self.agg(name, Row::rps),
                self.agg(name, Row::hp50),
                self.agg(name, Row::hp99),
            );
            let e = self.agg(name, |r| r.http.as_ref().map(|h| h.errors as f64));
            let _ = writeln!(
                s,
                "| kernel | {label} | {} | {} | {} | {} | {} | {} | {} |",
                cell(r),
                cell(a),
                cell(b),
                f2(ratio(rounds::med(r), base.0)),
                f2(ratio(rounds::med(a), base.1)),
                f2(ratio(rounds::med(b), base.2)),
                f0(e.map(|x| x.2))
            );
        }
        let (l7, l34) = (get("L7", rps).map(|x| x.1), base.0);
        if let (Some(a), Some(b)) = (l7, l34) {
            let _ = writeln!(
                s,
                "\nweir L7 ÷ weir L3/L4 (medians): req/s {:.2}, p50 {}, p99 {} (goal: req/s ≥ 0.90, latencies ≤ 1.10).",
                a / b,
                f2(ratio(get("L7", p50).map(|x| x.1), base.1)),
                f2(ratio(get("L7", p99).map(|x| x.1), base.2))
            );
        }
        for x in &self.issue5 {
            if let Some(e) = &x.error {
                let _ = writeln!(s, "\n- {} round {}: {e}", x.policy, x.rep + 1);
            }
        }
        self.new_conns_md(s);
    }

    /// New connections/s under HTTP rules: ApacheBench without `-k` and wrk
    /// with `Connection: close` (every request a new connection), through
    /// weir with no policy, L3/L4 and L7, and through kernel + haproxy.
    fn new_conns_md(&self, s: &mut String) {
        let ab = |pol: &str| {
            stats(
                self.issue5
                    .iter()
                    .filter(|x| x.policy == pol)
                    .filter_map(|x| x.ab.as_ref().map(|a| a.requests_per_s)),
            )
        };
        let wc = |pol: &str| {
            stats(
                self.issue5
                    .iter()
                    .filter(|x| x.policy == pol)
                    .filter_map(|x| x.http_close.as_ref().map(|h| h.requests_per_s)),
            )
        };
        if ab("L3L4").is_none() && wc("L3L4").is_none() {
            return;
        }
        let m = &self.weir_poll;
        let _ = writeln!(
            s,
            "\n## New connections/s under HTTP rules\n\nEvery request on a new connection, the server closing first: ApacheBench without `-k` (HTTP/1.0, 8 concurrent) and wrk with `Connection: close` (1 thread, 8 connections), GET /public/x, in the same interleaved rounds as the table above; weir cells: median [min–max].\n"
        );
        let _ = writeln!(
            s,
            "| path | policy | ab conn/s | ab ÷ weir L3/L4 | ab failed/non-2xx | wrk-close conn/s | wrk-close ÷ weir L3/L4 |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|");
        let cell = |x| rounds::cell(x, 0);
        let (b_ab, b_wc) = (ab("L3L4").map(|x| x.1), wc("L3L4").map(|x| x.1));
        for (pol, label) in [
            ("none", "(a) none"),
            ("L3L4", "(b) L3/L4"),
            ("L7", "(c) L7 http rules"),
        ] {
            let bad: u64 = self
                .issue5
                .iter()
                .filter(|x| x.policy == pol)
                .filter_map(|x| x.ab.as_ref().map(|a| a.failed + a.non_2xx))
                .sum();
            let _ = writeln!(
                s,
                "| weir-{m} | {label} | {} | {} | {bad} | {} | {} |",
                cell(ab(pol)),
                f2(ratio(ab(pol).map(|x| x.1), b_ab)),
                cell(wc(pol)),
                f2(ratio(wc(pol).map(|x| x.1), b_wc)),
            );
        }
        if self.row("kernel+haproxy-L7").is_some() {
            let n = "kernel+haproxy-L7";
            let a = self.agg(n, |r| r.ab.as_ref().map(|a| a.requests_per_s));
            let w = self.agg(n, |r| r.http_close.as_ref().map(|h| h.requests_per_s));
            let bad: u64 = self
                .rows_of(n)
                .filter_map(|r| r.ab.as_ref().map(|a| a.failed + a.non_2xx))
                .sum();
            let _ = writeln!(
                s,
                "| kernel | (c) haproxy L7 | {} | {} | {bad} | {} | {} |",
                cell(a),
                f2(ratio(rounds::med(a), b_ab)),
                cell(w),
                f2(ratio(rounds::med(w), b_wc)),
            );
        }
        let _ = writeln!(
            s,
            "\nweir L7 ÷ weir L3/L4, new connections/s (medians): ab {}, wrk-close {} (goal ≥ 0.90).",
            f2(ratio(ab("L7").map(|x| x.1), b_ab)),
            f2(ratio(wc("L7").map(|x| x.1), b_wc)),
        );
    }

    /// Inter-node vs intra-node, per dataplane: median [min–max] over the
    /// rounds; ratios per round (same round's intra, same round's kernel).
    fn inter_md(&self, s: &mut String) {
        if self.inter_node.is_empty() {
            return;
        }
        let reps = self.inter_node.iter().map(|x| x.rep + 1).max().unwrap_or(0);
        let _ = writeln!(
            s,
            "\n## Inter-node vs intra-node (Fig. 5 b/d)\n\nTwo nodes: app2 and app3 on n1, app1 on n2. intra = app2 → app3, inter = app2 → app1 across the underlay bridge. `kernel-vxlan`: both nodes annotated `weir.dev/dataplane: kernel` (kernel routing + the kernel's vxlan0, no weir); `weir-*`: `weir up --encap vxlan|geneve`, both nodes' workers on the worker core. No policy. {reps} round(s); cells median [min–max]; the generator ceiling is the one-node ceiling above (same generator, same core).\n"
        );
        let _ = writeln!(s, "| dataplane | path | UDP 64B rx pps | rx ÷ ceiling | offered pps | RR p50 µs | RR p99 µs | HTTP req/s | HTTP p50 µs | HTTP p99 µs |");
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|");
        let mut keys: Vec<(&str, &str)> = Vec::new();
        for x in &self.inter_node {
            if !keys.contains(&(x.dataplane.as_str(), x.path.as_str())) {
                keys.push((x.dataplane.as_str(), x.path.as_str()));
            }
        }
        let of = |dp: &str, path: &str| -> Vec<&InterRow> {
            self.inter_node
                .iter()
                .filter(|x| x.dataplane == dp && x.path == path)
                .collect()
        };
        for &(dp, path) in &keys {
            let v = of(dp, path);
            let g = |f: Getter| stats(v.iter().filter_map(|x| f(&x.row)));
            let vs_ceiling = stats(
                v.iter()
                    .filter_map(|x| ratio(x.row.pps(), self.ceiling(x.rep))),
            );
            let offered = stats(
                v.iter()
                    .filter_map(|x| x.row.udp.as_ref().map(|u| u.offered_pps)),
            );
            let _ = writeln!(
                s,
                "| {dp} | {path} | {} | {} | {} | {} | {} | {} | {} | {} |",
                rounds::cell(g(Row::pps), 0),
                rounds::cell(vs_ceiling, 2),
                rounds::cell(offered, 0),
                rounds::cell(g(Row::p50), 0),
                rounds::cell(g(Row::p99), 0),
                rounds::cell(g(Row::rps), 0),
                rounds::cell(g(Row::hp50), 0),
                rounds::cell(g(Row::hp99), 0),
            );
        }
        let _ = writeln!(
            s,
            "\nRatios, per round (median [min–max]; above 1 better for pps and req/s, below 1 better for latencies):\n"
        );
        let _ = writeln!(
            s,
            "| dataplane | ratio | UDP pps | RR p50 | RR p99 | HTTP req/s | HTTP p50 | HTTP p99 |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|");
        let mut dps: Vec<&str> = keys.iter().map(|k| k.0).collect();
        dps.dedup();
        let line = |s: &mut String, what: &str, a: &[&InterRow], b: &[&InterRow]| {
            let _ = write!(s, "| {what} |");
            for g in [
                Row::pps as Getter,
                Row::p50,
                Row::p99,
                Row::rps,
                Row::hp50,
                Row::hp99,
            ] {
                let v = stats(a.iter().filter_map(|x| {
                    let y = b.iter().find(|y| y.rep == x.rep)?;
                    ratio(g(&x.row), g(&y.row))
                }));
                let _ = write!(s, " {} |", rounds::cell(v, 2));
            }
            let _ = writeln!(s);
        };
        for dp in &dps {
            line(
                s,
                &format!("{dp} | inter ÷ intra"),
                &of(dp, "inter"),
                &of(dp, "intra"),
            );
        }
        for dp in dps.iter().filter(|d| d.starts_with("weir")) {
            line(
                s,
                &format!("{dp} | inter ÷ kernel-vxlan inter"),
                &of(dp, "inter"),
                &of("kernel-vxlan", "inter"),
            );
        }
    }

    fn row(&self, name: &str) -> Option<&Row> {
        self.rows.iter().find(|r| r.name == name)
    }

    /// Every round's row of configuration `name`.
    fn rows_of<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Row> + 'a {
        self.rows.iter().filter(move |r| r.name == name)
    }

    /// (min, median, max) of a metric over the rounds of `name`.
    fn agg(&self, name: &str, g: Getter) -> Option<(f64, f64, f64)> {
        stats(self.rows_of(name).filter_map(g))
    }

    /// (min, median, max) over the rounds of `a`'s metric ÷ the same
    /// round's `b` (a ratio per round, then its spread).
    fn pair(&self, a: &str, b: &str, g: Getter) -> Option<(f64, f64, f64)> {
        stats(self.rows_of(a).filter_map(|x| {
            let y = self.rows_of(b).find(|y| y.rep == x.rep)?;
            ratio(g(x), g(y))
        }))
    }

    /// The generator's ceiling in round `rep`.
    fn ceiling(&self, rep: usize) -> Option<f64> {
        self.ceilings
            .iter()
            .find(|c| c.rep == rep)
            .map(|c| c.offered_pps)
    }

    /// Configuration names in order of first measurement.
    fn names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = Vec::new();
        for r in &self.rows {
            if !v.contains(&r.name.as_str()) {
                v.push(&r.name);
            }
        }
        v
    }

    /// The polling modes measured (old reports: the one `weir_poll`).
    fn modes(&self) -> Vec<String> {
        if self.weir_modes.is_empty() {
            vec![self.weir_poll.clone()]
        } else {
            self.weir_modes.clone()
        }
    }

    /// (weir configuration, peer) pairs of the ratio table.
    fn pairs(&self) -> Vec<(String, String)> {
        let mut v = Vec::new();
        for m in self.modes() {
            v.push((format!("weir-{m}"), "kernel".to_string()));
            for peer in ["kernel+nft", "ovs-afxdp+ct", "kernel"] {
                v.push((format!("weir-{m}+L3L4"), peer.to_string()));
            }
            v.push((format!("weir-{m}+L3L4"), format!("weir-{m}")));
            v.push((format!("weir-{m}+L7"), "kernel+haproxy-L7".into()));
            v.push((format!("weir-{m}+L7"), format!("weir-{m}+L3L4")));
        }
        let modes = self.modes();
        for a in &modes {
            for b in &modes {
                if a < b {
                    v.push((format!("weir-{a}"), format!("weir-{b}")));
                }
            }
        }
        v
    }

    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let h = self.host_start.clone().unwrap_or_else(Host::now);
        let he = self
            .host_end
            .as_ref()
            .map_or("—".to_string(), |h| h.loadavg.clone());
        let _ = writeln!(
            s,
            "# weir-perf paper ({} mode)\n",
            if self.short { "short" } else { "full" }
        );
        let _ = writeln!(
            s,
            "Host: kernel {}, {} cores, load average {} at start, {} at end. Placement: load (generators, receivers, servers, clients, wrk, iperf3) on core {}; weir's worker / OVS's PMD / haproxy on core {} (weir reports its worker on core(s) {:?}). weir polling modes: **{}** (primary: {}); pod RX steering: {}. UDP window {:.1} s. {} round(s) of every configuration, interleaved (round 1 of all, then round 2, …); cells are median [min–max] over the rounds.\n",
            h.kernel, h.cpus, h.loadavg, he, self.load_core, self.worker_core, self.weir_worker_cores, self.modes().join(", "), self.weir_poll,
            self.pod_rx_cpus.as_deref().map_or("weir's default (`--pod-rx-cpus auto`)".to_string(), |c| format!("`--pod-rx-cpus {c}`")),
            self.window_s, self.reps.max(1)
        );
        let _ = writeln!(s, "{}\n", crate::wake::note(h.wake.as_ref()));
        let cs = stats(self.ceilings.iter().map(|c| c.offered_pps));
        let _ = writeln!(
            s,
            "Generator ceiling (the same UDP generator, pods and core against the kernel path with forwarding off: the node drops every datagram at IP input): {} pps. A pps figure near it is a lower bound (the generator's limit), not the path's.\n",
            rounds::cell(cs, 0)
        );
        let _ = writeln!(s, "## Ratios: weir ÷ peer, same run\n\nOne ratio per round (each configuration against the same round's peer), median [min–max]. Above 1 is better for pps, Gb/s, req/s; below 1 is better for latencies.\n");
        let _ = write!(s, "| weir config | peer |");
        for m in METRICS {
            let _ = write!(s, " {} |", m.0);
        }
        let _ = writeln!(s, "\n|---|---|{}", "---|".repeat(METRICS.len()));
        for (w, p) in self.pairs() {
            if self.row(&w).is_none() || self.row(&p).is_none() {
                continue;
            }
            let _ = write!(s, "| {w} | {p} |");
            for m in METRICS {
                let _ = write!(s, " {} |", rounds::cell(self.pair(&w, &p, m.1), 2));
            }
            let _ = writeln!(s);
        }
        let _ = writeln!(s, "\n## Absolute numbers\n");
        let _ = writeln!(s, "| configuration | UDP 64B rx pps | rx ÷ ceiling | offered pps | cores used | pps/core | TCP bulk Gb/s | RR p50 µs | RR p99 µs | HTTP req/s | HTTP p50 µs | HTTP p99 µs | app3→app1 refused |");
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|---|---|");
        for n in self.names() {
            let c0 = |g: Getter| rounds::cell(self.agg(n, g), 0);
            let vs_ceiling = stats(
                self.rows_of(n)
                    .filter_map(|r| ratio(r.pps(), self.ceiling(r.rep))),
            );
            let refused: Vec<bool> = self.rows_of(n).filter_map(|r| r.app3_blocked).collect();
            let _ = writeln!(
                s,
                "| {n} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                c0(Row::pps),
                rounds::cell(vs_ceiling, 2),
                c0(|r| r.udp.as_ref().map(|u| u.offered_pps)),
                rounds::cell(self.agg(n, Row::cores), 2),
                c0(Row::pps_per_core),
                rounds::cell(self.agg(n, Row::gbps), 2),
                c0(Row::p50),
                c0(Row::p99),
                c0(Row::rps),
                c0(Row::hp50),
                c0(Row::hp99),
                if refused.is_empty() {
                    "—".to_string()
                } else if refused.iter().all(|b| *b) {
                    "yes".to_string()
                } else {
                    "**NO**".to_string()
                }
            );
        }
        let _ = writeln!(s, "\nWhat each configuration is:\n");
        for n in self.names() {
            let Some(r0) = self.row(n) else { continue };
            let _ = writeln!(s, "- `{n}`: {}", r0.measures);
            for r in self.rows_of(n) {
                if r.l7_public.is_some() {
                    let _ = writeln!(
                        s,
                        "  - round {}: L7 check from app2: GET /public/x → {}, GET /private → {}",
                        r.rep + 1,
                        r.l7_public.unwrap_or(0),
                        r.l7_private.unwrap_or(0)
                    );
                }
                for e in &r.errors {
                    let _ = writeln!(s, "  - round {}: error: {e}", r.rep + 1);
                }
            }
        }
        let _ = writeln!(
            s,
            "\n## Cost as policy rules grow (N non-matching rules before the allowing one)\n"
        );
        let reps = self.scaling.iter().map(|p| p.rep + 1).max().unwrap_or(0);
        let _ = writeln!(
            s,
            "{reps} round(s), interleaved (every rule count once per round); connects/s as min / median / max over the rounds; pps and install time: medians.\n"
        );
        let _ = writeln!(s, "| rules | nft connects/s | weir connects/s | weir ÷ nft (medians) | nft pps | weir pps | nft install s | weir apply s |");
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|");
        let mut ns: Vec<usize> = self.scaling.iter().map(|p| p.rules).collect();
        ns.sort();
        ns.dedup();
        for n in ns {
            let pts = |peer: &str| -> Vec<&ScalePoint> {
                self.scaling
                    .iter()
                    .filter(|p| p.peer == peer && p.rules == n)
                    .collect()
            };
            let (a, b) = (pts("nftables"), pts("weir"));
            let c = |v: &[&ScalePoint]| {
                stats(v.iter().filter_map(|p| p.conn.as_ref().map(|c| c.per_s)))
            };
            let u = |v: &[&ScalePoint]| stats(v.iter().filter_map(|p| p.udp_pps)).map(|x| x.1);
            let i = |v: &[&ScalePoint]| stats(v.iter().map(|p| p.install_s)).map(|x| x.1);
            let (ca, cb) = (c(&a), c(&b));
            let _ = writeln!(
                s,
                "| {n} | {} | {} | {} | {} | {} | {} | {} |",
                mmm(ca),
                mmm(cb),
                f2(ratio(cb.map(|x| x.1), ca.map(|x| x.1))),
                f0(u(&a)),
                f0(u(&b)),
                f2(i(&a)),
                f2(i(&b))
            );
        }
        if reps > 1 {
            let _ = writeln!(
                s,
                "\nEvery connects/s sample, in run order (round: value):\n"
            );
            for peer in ["nftables", "weir"] {
                let v: Vec<String> = self
                    .scaling
                    .iter()
                    .filter(|p| p.peer == peer)
                    .map(|p| {
                        format!(
                            "{}r{}: {}",
                            p.rules,
                            p.rep + 1,
                            f0(p.conn.as_ref().map(|c| c.per_s))
                        )
                    })
                    .collect();
                let _ = writeln!(s, "- {peer}: {}", v.join(", "));
            }
        }
        for p in &self.scaling {
            for e in &p.errors {
                let _ = writeln!(s, "\n- {} at {} rules: {e}", p.peer, p.rules);
            }
        }
        self.issue5_md(&mut s);
        self.inter_md(&mut s);
        if let Some(x) = self.xdp_drop.first() {
            let xs = stats(self.xdp_drop.iter().map(|x| x.pps));
            let w = format!("weir-{}", self.weir_poll);
            let vs = stats(self.rows_of(&w).filter_map(|r| {
                let d = self.xdp_drop.iter().find(|d| d.rep == r.rep)?;
                ratio(r.pps(), Some(d.pps))
            }));
            let _ = writeln!(
                s,
                "\n## XDP_DROP reference\n\n{} pps over {} round(s) ({}). {w} rx pps ÷ the same round's XDP_DROP rate: {}.",
                rounds::cell(xs, 0),
                self.xdp_drop.len(),
                x.note,
                rounds::cell(vs, 2)
            );
        }
        if let Some(c) = &self.conntrack_bench {
            let _ = writeln!(s, "\n## Conntrack 1k → 1M flows (`conntrack_bench`, weir's table in-process)\n\n```\n{}```", c);
        }
        if !self.errors.is_empty() {
            let _ = writeln!(s, "\n## Not measured\n");
            for e in &self.errors {
                let _ = writeln!(s, "- {e}");
            }
        }
        s
    }

    fn plots(&self, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
        // Medians over the rounds.
        let names = self.names();
        let cats: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let col = |f: Getter| {
            names
                .iter()
                .map(|n| rounds::med(self.agg(n, f)).unwrap_or(f64::NAN))
                .collect::<Vec<_>>()
        };
        let mut out = Vec::new();
        let mut push = |name: &str| {
            let p = dir.join(name);
            out.push(p.clone());
            p
        };
        crate::plot::bars(
            &push("paper-udp-pps.svg"),
            "64-byte UDP, received pps",
            "pps",
            &cats,
            &[("pps", col(Row::pps))],
        )?;
        crate::plot::bars(
            &push("paper-pps-per-core.svg"),
            "64-byte UDP, pps per consumed core",
            "pps / core",
            &cats,
            &[("pps/core", col(Row::pps_per_core))],
        )?;
        crate::plot::bars(
            &push("paper-tcp-bulk.svg"),
            "TCP bulk (iperf3)",
            "Gb/s",
            &cats,
            &[("Gb/s", col(Row::gbps))],
        )?;
        crate::plot::bars(
            &push("paper-rr-latency.svg"),
            "TCP request/response latency",
            "µs",
            &cats,
            &[("p50", col(Row::p50)), ("p99", col(Row::p99))],
        )?;
        crate::plot::bars(
            &push("paper-http-rps.svg"),
            "HTTP keep-alive (wrk), requests/s",
            "req/s",
            &cats,
            &[("req/s", col(Row::rps))],
        )?;
        crate::plot::bars(
            &push("paper-http-latency.svg"),
            "HTTP keep-alive latency",
            "µs",
            &cats,
            &[("p50", col(Row::hp50)), ("p99", col(Row::hp99))],
        )?;
        let line = |peer: &str, f: fn(&ScalePoint) -> Option<f64>| {
            self.scaling
                .iter()
                .filter(|p| p.peer == peer)
                .map(|p| (p.rules as f64, f(p).unwrap_or(f64::NAN)))
                .collect::<Vec<_>>()
        };
        let conn = |p: &ScalePoint| p.conn.as_ref().map(|c| c.per_s);
        let pps = |p: &ScalePoint| p.udp_pps;
        crate::plot::lines(
            &push("paper-rules-connects.svg"),
            "New TCP connections/s vs rules",
            "rules",
            "connects/s",
            &[
                ("nftables", line("nftables", conn)),
                ("weir", line("weir", conn)),
            ],
        )?;
        crate::plot::lines(
            &push("paper-rules-pps.svg"),
            "64-byte UDP pps vs rules",
            "rules",
            "pps",
            &[
                ("nftables", line("nftables", pps)),
                ("weir", line("weir", pps)),
            ],
        )?;
        Ok(out)
    }
}

fn write(o: &PaperOptions, rep: &PaperReport) -> anyhow::Result<()> {
    std::fs::write(o.out.join("paper.json"), serde_json::to_vec_pretty(rep)?)?;
    std::fs::write(o.out.join("paper.md"), rep.markdown())?;
    if let Err(e) = rep.plots(&o.out) {
        eprintln!("weir-perf: plots: {e:#}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_and_policy_parse() {
        let spec = weir_topo::manifest::parse_str(MANIFESTS, "paper.yaml").unwrap();
        assert_eq!(spec.pods.len(), 3);
        let v: serde_json::Value = serde_json::from_str(&l3l4_policy(3)).unwrap();
        assert_eq!(v["spec"]["ingress"].as_array().unwrap().len(), 4);
    }

    #[test]
    fn l7_policy_and_two_nodes() {
        let v: serde_json::Value = serde_json::from_str(&l7_policy()).unwrap();
        assert_eq!(v["kind"], "WeirPolicy");
        assert_eq!(
            v["spec"]["ingress"][0]["http"][0]["path"]["prefix"],
            "/public"
        );
        assert!(v["spec"]["ingress"][1].get("http").is_none());
        for k in [false, true] {
            let spec = weir_topo::manifest::parse_str(&manifests_2n(k), "2n.yaml").unwrap();
            assert_eq!(spec.pods.len(), 3);
        }
        assert!(manifests_2n(true).contains("weir.dev/dataplane: kernel"));
    }

    #[test]
    fn markdown_l7_ratios_and_issue5() {
        let h = |rps: f64| HttpResult {
            requests_per_s: rps,
            p50_us: 100.0,
            p99_us: 200.0,
            ..Default::default()
        };
        let row = |n: &str, rps: f64| Row {
            name: n.into(),
            http: Some(h(rps)),
            ..Default::default()
        };
        let rep = PaperReport {
            weir_poll: "adaptive".into(),
            rows: vec![
                row("kernel+haproxy-L7", 100.0),
                row("weir-adaptive+L3L4", 200.0),
                row("weir-adaptive+L7", 180.0),
            ],
            issue5: ["none", "L3L4", "L7"]
                .iter()
                .zip([210.0, 200.0, 180.0])
                .map(|(p, r)| Issue5Sample {
                    policy: p.to_string(),
                    http: Some(h(r)),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let md = rep.markdown();
        assert!(!md.contains("n/a"), "{md}");
        assert!(
            md.contains("| weir-adaptive+L7 | kernel+haproxy-L7 | — | — | — | — | — | 1.80 |"),
            "{md}"
        );
        assert!(
            md.contains("| weir-adaptive+L7 | weir-adaptive+L3L4 |"),
            "{md}"
        );
        assert!(md.contains("req/s 0.90"), "{md}");
        assert_eq!(stats([3.0, 1.0, 2.0].into_iter()), Some((1.0, 2.0, 3.0)));
    }

    /// Three rounds of two modes: cells are median [min–max] over the
    /// rounds, ratios are taken per round against the same round's peer,
    /// and rx ÷ ceiling uses the same round's ceiling.
    #[test]
    fn markdown_rounds_ranges_and_ceiling() {
        let udp = |pps: f64| UdpResult {
            payload_bytes: 18,
            frame_bytes_on_wire: 64,
            batch: 64,
            window_s: 1.0,
            sent: pps as u64,
            received: pps as u64,
            rcvbuf_errors: 0,
            send_errors: 0,
            offered_pps: pps,
            received_pps: pps,
            delivered_ratio: 1.0,
        };
        let row = |n: &str, rep: usize, pps: f64| Row {
            name: n.into(),
            rep,
            udp: Some(udp(pps)),
            ..Default::default()
        };
        let mut rows = Vec::new();
        for (rep, k) in [(0, 100.0), (1, 200.0), (2, 400.0)] {
            rows.push(row("kernel", rep, k));
            // weir is 2× the kernel in every round: the ratio has no spread
            // even though the absolute numbers spread 4×.
            rows.push(row("weir-busy", rep, 2.0 * k));
            rows.push(row("weir-adaptive", rep, 1.5 * k));
        }
        let rep = PaperReport {
            weir_poll: "adaptive".into(),
            weir_modes: vec!["busy".into(), "adaptive".into()],
            reps: 3,
            ceilings: (0..3)
                .map(|r| Ceiling {
                    rep: r,
                    offered_pps: 800.0,
                })
                .collect(),
            xdp_drop: vec![XdpDrop {
                rep: 1,
                pps: 1000.0,
                ..Default::default()
            }],
            rows,
            ..Default::default()
        };
        let md = rep.markdown();
        assert!(md.contains("| weir-busy | kernel | 2.00 |"), "{md}");
        assert!(md.contains("| weir-adaptive | kernel | 1.50 |"), "{md}");
        assert!(md.contains("| weir-adaptive | weir-busy | 0.75 |"), "{md}");
        assert!(
            md.contains("| kernel | 200 [100–400] | 0.25 [0.12–0.50] |"),
            "{md}"
        );
        assert!(
            md.contains("| weir-busy | 400 [200–800] | 0.50 [0.25–1.00] |"),
            "{md}"
        );
        assert!(md.contains("ceiling") && md.contains(": 800 pps"), "{md}");
        // Only round 2 has an XDP_DROP sample: weir-adaptive 300 ÷ 1000.
        assert!(md.contains("XDP_DROP rate: 0.30"), "{md}");
        assert!(!md.contains("weir-busy+L3L4"), "{md}");
    }
}
