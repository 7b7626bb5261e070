//! `weir-perf services`: ClusterIP Services on the fast path (issue 12,
//! part 5). One node, pods a → b, a Service `perf/svc` (ClusterIP
//! [`CLUSTER_IP`], UDP 9000, TCP 9001 and 9002, all to pod b), measured in
//! the same run, in interleaved rounds:
//!
//! - 64-byte UDP pps and TCP request/response latency to the ClusterIP and
//!   to pod b's address directly, through weir and through the kernel with
//!   nftables rules written the way kube-proxy's nftables mode writes them
//!   ([`kube_proxy_nft`]);
//! - new TCP connections/s to the ClusterIP (and to the pod IP, the same
//!   round's reference) with N Services in force (10, 1k, 10k): weir's
//!   snapshot, kube-proxy's verdict map, and iptables-mode-style linear
//!   chains (written in nftables, the measured Service last);
//! - IPVS: detected, reported as not available when the kernel has no
//!   `ip_vs` (this harness does not emulate it).
#![forbid(unsafe_code)]

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use weir_topo::{Cluster, RealizedPod};

use crate::connrate::{self, ConnResult};
use crate::kernel::KernelPath;
use crate::peers::Nft;
use crate::report::Host;
use crate::rr::{self, RrParams, RrResult};
use crate::udp::{self, UdpParams, UdpResult, PAYLOAD_64B_FRAME};
use crate::weir::{Counters, WeirCluster};
use crate::{pin, stop};

/// The measured Service's ClusterIP (given in the manifest; the lowest of
/// weir's range, which is also what weir's allocator would pick).
pub const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 1);
/// UDP port of the pps receiver (Service port = targetPort).
pub const UDP_PORT: u16 = 9000;
/// TCP port of the request/response server.
pub const RR_PORT: u16 = 9001;
/// TCP port of the new-connections listener.
pub const CONN_PORT: u16 = 9002;
/// The pod-IP reference runs on the Service's ports + this: ports no
/// Service covers, so no NAT state left by a ClusterIP run (kernel
/// conntrack, weir's NAT table) can meet a pod-IP flow that reuses a
/// client port. On weir it would: a direct a:X → b:P flow started while
/// the reverse entry of an earlier a:X → ClusterIP → b:P flow lives gets
/// its replies rewritten to the ClusterIP, and the connection fails
/// (checked by hand; see docs/performance.md).
pub const POD_IP_PORT_OFFSET: u16 = 10;
/// Pod network of the topology (kube-proxy's `--cluster-cidr`).
pub const POD_CIDR: &str = "10.252.0.0/24";

/// Node n1, namespace perf, pods a and b (`app: b`), Service svc → b.
pub const MANIFESTS: &str = r#"apiVersion: v1
kind: Node
metadata:
  name: n1
spec:
  podCIDRs: ["10.252.0.0/24"]
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
  labels: {app: b}
spec:
  nodeName: n1
  containers:
  - name: sink
    ports:
    - {containerPort: 80, protocol: TCP}
---
apiVersion: v1
kind: Service
metadata:
  name: svc
  namespace: perf
spec:
  clusterIP: 10.96.0.1
  selector: {app: b}
  ports:
  - {name: udp, protocol: UDP, port: 9000, targetPort: 9000}
  - {name: rr, protocol: TCP, port: 9001, targetPort: 9001}
  - {name: conn, protocol: TCP, port: 9002, targetPort: 9002}
"#;

/// ClusterIP of filler Service `i` (1-based; the measured one is 10.96.0.1).
pub fn filler_ip(i: usize) -> Ipv4Addr {
    let n = u32::from(CLUSTER_IP) + i as u32;
    Ipv4Addr::from(n)
}

/// `n` filler Services `perf/s1..s<n>`, each TCP 80 → pod b's 80 (one
/// endpoint each, as the measured one has), with fixed ClusterIPs.
pub fn fillers_manifest(n: usize) -> String {
    let mut s = String::new();
    for i in 1..=n {
        let _ = write!(
            s,
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: s{i}, namespace: perf}}\nspec:\n  clusterIP: {}\n  selector: {{app: b}}\n  ports: [{{port: 80, targetPort: 80}}]\n",
            filler_ip(i)
        );
    }
    s
}

/// How the kernel's services chain finds a Service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// kube-proxy nftables mode: one verdict map `ip daddr . meta l4proto .
    /// th dport vmap @service-ips`.
    Map,
    /// iptables mode's shape: one rule per Service port in a linear chain
    /// (written in nftables; the measured Service last, the worst case).
    Linear,
}

/// nftables rules in kube-proxy's nftables-mode shape
/// (pkg/proxy/nftables/proxier.go): table `ip weirsvc` with the
/// `nat-prerouting` / `nat-output` hooks jumping to `services`, a
/// `service-ips` verdict map (or, for [`Lookup::Linear`], a linear chain),
/// one `service-…` chain per Service port (masquerade mark for sources
/// outside the cluster CIDR, then `numgen random mod N vmap` over endpoint
/// chains), one `endpoint-…` chain per endpoint (hairpin mark, `dnat to`),
/// the `filter-forward` check of `no-endpoint-services` for new
/// connections, and `masquerading` in postrouting.
///
/// `svc_ports`: the measured Service's (proto, port); `backend`: pod b;
/// `fillers`: filler Services (TCP 80 → backend:80) as in
/// [`fillers_manifest`].
pub fn kube_proxy_nft(
    lookup: Lookup,
    backend: Ipv4Addr,
    svc_ports: &[(&str, u16)],
    fillers: usize,
) -> String {
    // (chain id, clusterIP, proto, port, backend port)
    let mut ports: Vec<(String, Ipv4Addr, &str, u16)> = Vec::new();
    for i in 1..=fillers {
        ports.push((format!("perf/s{i}/tcp/p80"), filler_ip(i), "tcp", 80));
    }
    for (proto, port) in svc_ports {
        ports.push((
            format!("perf/svc/{proto}/p{port}"),
            CLUSTER_IP,
            proto,
            *port,
        ));
    }
    let mut s = String::from("table ip weirsvc {\n");
    s += " map service-ips {\n  type ipv4_addr . inet_proto . inet_service : verdict\n }\n";
    s +=
        " map no-endpoint-services {\n  type ipv4_addr . inet_proto . inet_service : verdict\n }\n";
    s += " chain mark-for-masquerade {\n  meta mark set meta mark | 0x4000\n }\n";
    s += " chain masquerading {\n  meta mark & 0x4000 == 0 return\n  meta mark set meta mark ^ 0x4000\n  masquerade fully-random\n }\n";
    s += " chain nat-prerouting {\n  type nat hook prerouting priority dstnat; policy accept;\n  jump services\n }\n";
    s += " chain nat-output {\n  type nat hook output priority -100; policy accept;\n  jump services\n }\n";
    s += " chain nat-postrouting {\n  type nat hook postrouting priority srcnat; policy accept;\n  jump masquerading\n }\n";
    s += " chain service-endpoints-check {\n  ip daddr . meta l4proto . th dport vmap @no-endpoint-services\n }\n";
    s += " chain filter-forward {\n  type filter hook forward priority -110; policy accept;\n  ct state new jump service-endpoints-check\n }\n";
    s += " chain services {\n";
    match lookup {
        Lookup::Map => s += "  ip daddr . meta l4proto . th dport vmap @service-ips\n",
        Lookup::Linear => {
            for (id, ip, proto, port) in &ports {
                let _ = writeln!(
                    s,
                    "  ip daddr {ip} meta l4proto {proto} th dport {port} goto service-{id}"
                );
            }
        }
    }
    s += " }\n";
    for (id, ip, proto, port) in &ports {
        let ep = format!("endpoint-{id}__{backend}/{port}");
        let _ = write!(
            s,
            " chain service-{id} {{\n  ip daddr {ip} {proto} dport {port} ip saddr != {POD_CIDR} jump mark-for-masquerade\n  numgen random mod 1 vmap {{ 0 : goto {ep} }}\n }}\n chain {ep} {{\n  ip saddr {backend} jump mark-for-masquerade\n  meta l4proto {proto} dnat to {backend}:{port}\n }}\n"
        );
    }
    s += "}\n";
    if lookup == Lookup::Map {
        // Elements in chunks: one `nft -f` line per element is slow to parse.
        for chunk in ports.chunks(512) {
            s += "add element ip weirsvc service-ips {\n";
            for (id, ip, proto, port) in chunk {
                let _ = writeln!(s, "  {ip} . {proto} . {port} : goto service-{id},");
            }
            s += "}\n";
        }
    }
    s
}

/// IPVS on this kernel: `Ok(note)` when usable, `Err(why not)` otherwise.
/// Loads `ip_vs` if it exists (that is what using IPVS takes); nothing is
/// emulated when it does not.
pub fn ipvs_available() -> Result<String, String> {
    let probe = Command::new("modprobe")
        .arg("ip_vs")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output();
    let modprobe = match &probe {
        Ok(o) if o.status.success() => "modprobe ip_vs: ok".to_string(),
        Ok(o) => format!(
            "modprobe ip_vs: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => format!("modprobe: {e}"),
    };
    if Path::new("/proc/net/ip_vs").exists() {
        Ok(format!(
            "ip_vs present ({modprobe}); not measured by this harness"
        ))
    } else {
        Err(format!("not available: no /proc/net/ip_vs ({modprobe})"))
    }
}

#[derive(Clone, Debug)]
pub struct SvcOptions {
    pub short: bool,
    pub out: PathBuf,
    /// weir's polling mode.
    pub mode: String,
    pub load_core: usize,
    pub worker_core: usize,
    /// The weir binary (None: only the kernel peers).
    pub weir: Option<PathBuf>,
    pub window: Duration,
    pub warmup: Duration,
    pub rr_count: u64,
    pub rr_warmup: u64,
    /// Rounds (pps/RR and each connection-rate point), interleaved.
    pub reps: usize,
    /// Service counts of the connection-rate sweep (the measured one included).
    pub services: Vec<usize>,
    pub conn_window: Duration,
    /// Also the linear-chain (iptables-mode shape) peer.
    pub linear: bool,
}

impl SvcOptions {
    pub fn new(short: bool) -> SvcOptions {
        SvcOptions {
            short,
            out: PathBuf::from("target/perf"),
            mode: "adaptive".into(),
            load_core: 0,
            worker_core: 1,
            weir: None,
            window: Duration::from_millis(if short { 500 } else { 3000 }),
            warmup: Duration::from_millis(if short { 200 } else { 1000 }),
            rr_count: if short { 500 } else { 10_000 },
            rr_warmup: if short { 50 } else { 1_000 },
            reps: if short { 1 } else { 3 },
            services: if short {
                vec![10, 100]
            } else {
                vec![10, 1_000, 10_000]
            },
            conn_window: Duration::from_millis(if short { 300 } else { 2000 }),
            linear: true,
        }
    }
}

/// One pps + RR measurement of one path.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PathSample {
    /// `kernel+kube-proxy-nft` or `weir-<mode>`.
    pub peer: String,
    /// `pod-ip` or `cluster-ip`.
    pub target: String,
    pub round: usize,
    pub udp: Option<UdpResult>,
    pub rr: Option<RrResult>,
    /// weir's worker counters over the RR run and over the UDP run.
    pub weir_rr: Option<Counters>,
    pub weir_udp: Option<Counters>,
    pub errors: Vec<String>,
}

/// New connections/s with `services` Services in force.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ConnSample {
    /// `weir-<mode>`, `nft-kube-proxy` (verdict map) or `nft-linear`.
    pub peer: String,
    pub services: usize,
    pub round: usize,
    /// Seconds from `weir apply` / `nft -f` until the last Service answered.
    pub install_s: f64,
    pub cluster_ip: Option<ConnResult>,
    pub pod_ip: Option<ConnResult>,
    /// weir's counters over both runs.
    pub weir: Option<Counters>,
    pub errors: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SvcReport {
    pub host_start: Option<Host>,
    pub host_end: Option<Host>,
    pub short: bool,
    pub load_core: usize,
    pub worker_core: usize,
    pub weir_poll: String,
    pub window_s: f64,
    pub rr_count: u64,
    pub conn_window_s: f64,
    pub reps: usize,
    /// "ok: …" or "not available: …".
    pub ipvs: String,
    pub paths: Vec<PathSample>,
    pub conns: Vec<ConnSample>,
    pub clusters: Vec<String>,
    pub errors: Vec<String>,
}

struct Pods<'a> {
    a: &'a RealizedPod,
    b: &'a RealizedPod,
}

fn pods(c: &Cluster) -> anyhow::Result<Pods<'_>> {
    Ok(Pods {
        a: c.pod("perf", "a").context("pod perf/a missing")?,
        b: c.pod("perf", "b").context("pod perf/b missing")?,
    })
}

fn b_ip(p: &Pods) -> anyhow::Result<Ipv4Addr> {
    p.b.ipv4.context("pod perf/b has no IPv4 address")
}

fn err(e: anyhow::Error) -> String {
    format!("{e:#}")
}

/// Waits until a TCP connection from `netns` to `dst` is answered (accepted
/// or refused: either way the Service rule is in force); a timeout or an
/// unreachable is not an answer. Returns the seconds waited.
fn wait_answered(netns: &str, dst: SocketAddr, limit: Duration) -> anyhow::Result<f64> {
    let t = Instant::now();
    loop {
        stop::check()?;
        let r = weir_topo::netns::run_in(netns, || {
            TcpStream::connect_timeout(&dst, Duration::from_millis(300))
        })?;
        match r {
            Ok(_) => return Ok(t.elapsed().as_secs_f64()),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                return Ok(t.elapsed().as_secs_f64())
            }
            Err(e) => {
                anyhow::ensure!(
                    t.elapsed() < limit,
                    "{dst} not answered from {netns} within {limit:?}: {e}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// One measured path: the cluster, its pods, and weir (None: kernel).
struct Path1<'a> {
    peer: String,
    pods: Pods<'a>,
    weir: Option<&'a WeirCluster>,
}

impl SvcOptions {
    fn udp_p(&self) -> UdpParams {
        UdpParams {
            payload: PAYLOAD_64B_FRAME,
            batch: 64,
            warmup: self.warmup,
            window: self.window,
            load_core: self.load_core,
        }
    }
    fn rr_p(&self) -> RrParams {
        RrParams {
            count: self.rr_count,
            warmup: self.rr_warmup,
            load_core: self.load_core,
            timeout: Duration::from_secs(5),
        }
    }
}

fn counters(w: Option<&WeirCluster>) -> Option<Counters> {
    w.and_then(|w| w.counters().ok())
}

fn since(a: &Option<Counters>, b: &Option<Counters>) -> Option<Counters> {
    match (a, b) {
        (Some(a), Some(b)) => Some(b.since(a)),
        _ => None,
    }
}

/// RR then UDP (RR first: a path that breaks under the flood still gets
/// its latency measured) from a to `target`.
fn measure_path(o: &SvcOptions, p: &Path1, cluster_ip: bool, round: usize) -> PathSample {
    let mut s = PathSample {
        peer: p.peer.clone(),
        target: if cluster_ip { "cluster-ip" } else { "pod-ip" }.into(),
        round,
        ..Default::default()
    };
    let b = match b_ip(&p.pods) {
        Ok(b) => b,
        Err(e) => {
            s.errors.push(err(e));
            return s;
        }
    };
    let (to, off) = if cluster_ip {
        (CLUSTER_IP, 0)
    } else {
        (b, POD_IP_PORT_OFFSET)
    };
    let c0 = counters(p.weir);
    match rr::run_to(
        &p.pods.a.netns,
        &p.pods.b.netns,
        SocketAddr::V4(SocketAddrV4::new(b, RR_PORT + off)),
        SocketAddr::V4(SocketAddrV4::new(to, RR_PORT + off)),
        &o.rr_p(),
    ) {
        Ok(r) => s.rr = Some(r),
        Err(e) => s.errors.push(format!("rr: {}", err(e))),
    }
    let c1 = counters(p.weir);
    match udp::run_to(
        &p.pods.a.netns,
        &p.pods.b.netns,
        SocketAddrV4::new(b, UDP_PORT + off),
        SocketAddrV4::new(to, UDP_PORT + off),
        &o.udp_p(),
    ) {
        Ok(r) => s.udp = Some(r),
        Err(e) => s.errors.push(format!("udp: {}", err(e))),
    }
    let c2 = counters(p.weir);
    s.weir_rr = since(&c0, &c1);
    s.weir_udp = since(&c1, &c2);
    s
}

/// Connection rate to the ClusterIP and to the pod IP (order alternating
/// by round).
fn measure_conn(
    o: &SvcOptions,
    p: &Path1,
    peer: &str,
    services: usize,
    round: usize,
    install_s: f64,
) -> ConnSample {
    let mut s = ConnSample {
        peer: peer.into(),
        services,
        round,
        install_s,
        ..Default::default()
    };
    let b = match b_ip(&p.pods) {
        Ok(b) => b,
        Err(e) => {
            s.errors.push(err(e));
            return s;
        }
    };
    let c0 = counters(p.weir);
    let order = if round.is_multiple_of(2) {
        [true, false]
    } else {
        [false, true]
    };
    for cip in order {
        let (to, port) = if cip {
            (CLUSTER_IP, CONN_PORT)
        } else {
            (b, CONN_PORT + POD_IP_PORT_OFFSET)
        };
        let r = connrate::run_to(
            &p.pods.a.netns,
            &p.pods.b.netns,
            SocketAddr::V4(SocketAddrV4::new(b, port)),
            SocketAddr::V4(SocketAddrV4::new(to, port)),
            o.conn_window,
            o.load_core,
            true,
        );
        match (r, cip) {
            (Ok(r), true) => s.cluster_ip = Some(r),
            (Ok(r), false) => s.pod_ip = Some(r),
            (Err(e), _) => s.errors.push(format!("connrate to {to}: {}", err(e))),
        }
    }
    s.weir = since(&c0, &counters(p.weir));
    s
}

/// `weir apply -f FILE`.
fn weir_apply(w: &WeirCluster, file: &Path) -> anyhow::Result<()> {
    let out = Command::new(&w.bin)
        .args(["--cluster", &w.name, "apply", "-f"])
        .arg(file)
        .stdin(Stdio::null())
        .output()
        .context("run weir apply")?;
    anyhow::ensure!(
        out.status.success(),
        "weir apply -f {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// Address the install waits on: the last filler Service (or the measured one).
fn last_service(n: usize) -> SocketAddr {
    if n <= 1 {
        SocketAddr::V4(SocketAddrV4::new(CLUSTER_IP, RR_PORT))
    } else {
        SocketAddr::V4(SocketAddrV4::new(filler_ip(n - 1), 80))
    }
}

const SVC_PORTS: [(&str, u16); 3] = [("udp", UDP_PORT), ("tcp", RR_PORT), ("tcp", CONN_PORT)];

/// Runs the scenario; writes `services.{md,json}` and the manifests into
/// `o.out`.
pub fn run(o: &SvcOptions) -> anyhow::Result<SvcReport> {
    let ncores = pin::cores();
    anyhow::ensure!(
        o.load_core < ncores && o.worker_core < ncores && o.load_core != o.worker_core,
        "need two distinct cores for load ({}) and worker ({}); this machine has {ncores}",
        o.load_core,
        o.worker_core
    );
    anyhow::ensure!(
        crate::tools::have("nft"),
        "nft not found (scripts/setup.sh installs nftables)"
    );
    std::fs::create_dir_all(&o.out).with_context(|| format!("create {}", o.out.display()))?;
    let manifest = o.out.join("services.yaml");
    std::fs::write(&manifest, MANIFESTS)
        .with_context(|| format!("write {}", manifest.display()))?;
    let spec = weir_topo::manifest::parse_str(MANIFESTS, "services.yaml")
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut counts = o.services.clone();
    counts.sort_unstable();
    counts.dedup();
    anyhow::ensure!(
        counts.iter().all(|n| (1..=60_000).contains(n)),
        "--services: counts between 1 and 60000"
    );

    let pid = std::process::id();
    let mut rep = SvcReport {
        host_start: Some(Host::now()),
        short: o.short,
        load_core: o.load_core,
        worker_core: o.worker_core,
        weir_poll: o.mode.clone(),
        window_s: o.window.as_secs_f64(),
        rr_count: o.rr_count,
        conn_window_s: o.conn_window.as_secs_f64(),
        reps: o.reps.max(1),
        ipvs: match ipvs_available() {
            Ok(s) => format!("ok: {s}"),
            Err(s) => s,
        },
        ..Default::default()
    };

    // Both clusters at once, so that every round measures every path.
    let kname = format!("ps{pid}k");
    eprintln!("services: building the kernel-path cluster {kname}");
    let k = KernelPath::build(&kname, &spec)?;
    rep.clusters.push(kname.clone());
    k.enable_forwarding()?;
    let kp = Path1 {
        peer: "kernel+kube-proxy-nft".into(),
        pods: pods(&k.cluster)?,
        weir: None,
    };
    let knode = k
        .cluster
        .nodes
        .first()
        .map(|n| n.netns.clone())
        .context("kernel cluster has no node")?;
    let b = b_ip(&kp.pods)?;
    let w = match &o.weir {
        Some(bin) => {
            let wname = format!("ps{pid}w");
            eprintln!(
                "services: weir up {wname} (worker on core {})",
                o.worker_core
            );
            rep.clusters.push(wname.clone());
            Some(WeirCluster::up(
                bin,
                &wname,
                &manifest,
                &o.worker_core.to_string(),
                &o.mode,
            )?)
        }
        None => None,
    };
    let wp = match &w {
        Some(w) => Some(Path1 {
            peer: format!("weir-{}", o.mode),
            pods: pods(&w.cluster)?,
            weir: Some(w),
        }),
        None => None,
    };
    if let Some(wp) = &wp {
        wait_answered(&wp.pods.a.netns, last_service(1), Duration::from_secs(30))
            .context("weir: the Service is not in force")?;
    }

    // pps and RR: the kube-proxy table with the measured Service only.
    {
        let _t = Nft::load(&knode, &kube_proxy_nft(Lookup::Map, b, &SVC_PORTS, 0))?;
        wait_answered(&kp.pods.a.netns, last_service(1), Duration::from_secs(10))
            .context("kernel: the kube-proxy rules are not in force")?;
        for round in 0..rep.reps {
            // Alternate the order so drift does not favour one target.
            let order = if round.is_multiple_of(2) {
                [false, true]
            } else {
                [true, false]
            };
            for path in std::iter::once(&kp).chain(wp.iter()) {
                for cip in order {
                    stop::check()?;
                    eprintln!(
                        "services: round {round}: {} to the {}",
                        path.peer,
                        if cip { "ClusterIP" } else { "pod IP" }
                    );
                    rep.paths.push(measure_path(o, path, cip, round));
                }
            }
        }
    }

    // New connections/s with N Services.
    let fillers = o.out.join("services-fillers.yaml");
    for &n in &counts {
        stop::check()?;
        let mut weir_install = None;
        if let (Some(w), Some(wp)) = (&w, &wp) {
            eprintln!("services: weir apply with {n} Services");
            let t = Instant::now();
            let r = std::fs::write(&fillers, fillers_manifest(n - 1))
                .context("write fillers")
                .and_then(|_| weir_apply(w, &fillers))
                .and_then(|_| {
                    wait_answered(&wp.pods.a.netns, last_service(n), Duration::from_secs(120))
                });
            match r {
                Ok(_) => weir_install = Some(t.elapsed().as_secs_f64()),
                Err(e) => rep
                    .errors
                    .push(format!("weir with {n} Services: {}", err(e))),
            }
        }
        let mut lookups = vec![Lookup::Map];
        if o.linear {
            lookups.push(Lookup::Linear);
        }
        for lookup in lookups {
            let peer = match lookup {
                Lookup::Map => "nft-kube-proxy",
                Lookup::Linear => "nft-linear",
            };
            eprintln!("services: {peer} with {n} Services");
            let t = Instant::now();
            let table = match Nft::load(&knode, &kube_proxy_nft(lookup, b, &SVC_PORTS, n - 1))
                .and_then(|t| {
                    wait_answered(&kp.pods.a.netns, last_service(n), Duration::from_secs(30))
                        .map(|_| t)
                }) {
                Ok(t) => t,
                Err(e) => {
                    rep.errors
                        .push(format!("{peer} with {n} Services: {}", err(e)));
                    continue;
                }
            };
            let kinstall = t.elapsed().as_secs_f64();
            for round in 0..rep.reps {
                stop::check()?;
                rep.conns
                    .push(measure_conn(o, &kp, peer, n, round, kinstall));
                // weir's rounds interleaved with the verdict-map peer's.
                if lookup == Lookup::Map {
                    if let (Some(wp), Some(ws)) = (&wp, weir_install) {
                        rep.conns.push(measure_conn(o, wp, &wp.peer, n, round, ws));
                    }
                }
            }
            drop(table);
        }
    }
    drop(wp);
    drop(w);
    drop(kp);
    drop(k);
    rep.host_end = Some(Host::now());
    let json = o.out.join("services.json");
    std::fs::write(&json, serde_json::to_vec_pretty(&rep)?)
        .with_context(|| format!("write {}", json.display()))?;
    let md = o.out.join("services.md");
    std::fs::write(&md, rep.markdown()).with_context(|| format!("write {}", md.display()))?;
    Ok(rep)
}

/// (min, median, max); None when empty.
fn stats(v: impl Iterator<Item = f64>) -> Option<(f64, f64, f64)> {
    let mut v: Vec<f64> = v.filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    let med = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Some((v[0], med, v[n - 1]))
}

/// "median [min–max]" with `d` decimals.
fn mmm(x: Option<(f64, f64, f64)>, d: usize) -> String {
    match x {
        None => "—".into(),
        Some((a, m, b)) if a == b => format!("{m:.d$}"),
        Some((a, m, b)) => format!("{m:.d$} [{a:.d$}–{b:.d$}]"),
    }
}

fn med(x: Option<(f64, f64, f64)>) -> Option<f64> {
    x.map(|t| t.1)
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "—".into(),
    }
}

impl SvcReport {
    fn path_stat(
        &self,
        peer: &str,
        target: &str,
        f: fn(&PathSample) -> Option<f64>,
    ) -> Option<(f64, f64, f64)> {
        stats(
            self.paths
                .iter()
                .filter(|p| p.peer == peer && p.target == target)
                .filter_map(f),
        )
    }

    fn conn_stat(&self, peer: &str, n: usize, cip: bool) -> Option<(f64, f64, f64)> {
        stats(
            self.conns
                .iter()
                .filter(|c| c.peer == peer && c.services == n)
                .filter_map(|c| if cip { &c.cluster_ip } else { &c.pod_ip }.as_ref())
                .map(|r| r.per_s),
        )
    }

    /// Per-round ratios on one path (min, median, max): ClusterIP ÷ pod
    /// IP of `f` (`inverse`: pod IP ÷ ClusterIP, for latencies), each
    /// round's two samples paired (rounds are interleaved, so a round's
    /// pair saw the same machine load).
    fn path_ratio(
        &self,
        peer: &str,
        f: fn(&PathSample) -> Option<f64>,
        inverse: bool,
    ) -> Option<(f64, f64, f64)> {
        let of = |round: usize, t: &str| {
            self.paths
                .iter()
                .find(|p| p.peer == peer && p.target == t && p.round == round)
                .and_then(f)
        };
        stats(
            self.paths
                .iter()
                .filter(|p| p.peer == peer && p.target == "cluster-ip")
                .filter_map(
                    |p| match (of(p.round, "cluster-ip"), of(p.round, "pod-ip")) {
                        (Some(c), Some(d)) if !inverse && d > 0.0 => Some(c / d),
                        (Some(c), Some(d)) if inverse && c > 0.0 => Some(d / c),
                        _ => None,
                    },
                ),
        )
    }

    /// Per-round ClusterIP ÷ pod-IP connect ratios (min, median, max).
    fn conn_ratio(&self, peer: &str, n: usize) -> Option<(f64, f64, f64)> {
        stats(
            self.conns
                .iter()
                .filter(|c| c.peer == peer && c.services == n)
                .filter_map(|c| match (&c.cluster_ip, &c.pod_ip) {
                    (Some(a), Some(b)) if b.per_s > 0.0 => Some(a.per_s / b.per_s),
                    _ => None,
                }),
        )
    }

    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# weir-perf services{}\n",
            if self.short { " (short)" } else { "" }
        );
        if let (Some(a), Some(b)) = (&self.host_start, &self.host_end) {
            let _ = writeln!(
                s,
                "Host: kernel {}, {} cores; load average {} at start, {} at end. Load on core {}, weir's worker (poll {}) on core {}. {} round(s), interleaved; cells are median [min–max] over rounds.\n",
                a.kernel, a.cpus, a.loadavg, b.loadavg, self.load_core, self.weir_poll, self.worker_core, self.reps
            );
        }
        let _ = writeln!(
            s,
            "## ClusterIP vs pod IP: UDP 64B pps ({:.1} s windows), TCP RR ({} round trips)\n",
            self.window_s, self.rr_count
        );
        let _ = writeln!(
            s,
            "| path | target | received pps | offered pps | RR p50 µs | RR p99 µs |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|");
        let mut peers: Vec<&str> = Vec::new();
        for p in &self.paths {
            if !peers.contains(&p.peer.as_str()) {
                peers.push(&p.peer);
            }
        }
        let rx = |p: &PathSample| p.udp.as_ref().map(|u| u.received_pps);
        let tx = |p: &PathSample| p.udp.as_ref().map(|u| u.offered_pps);
        let p50 = |p: &PathSample| p.rr.as_ref().map(|r| r.p50_us);
        let p99 = |p: &PathSample| p.rr.as_ref().map(|r| r.p99_us);
        for peer in &peers {
            for t in ["pod-ip", "cluster-ip"] {
                let _ = writeln!(
                    s,
                    "| {peer} | {t} | {} | {} | {} | {} |",
                    mmm(self.path_stat(peer, t, rx), 0),
                    mmm(self.path_stat(peer, t, tx), 0),
                    mmm(self.path_stat(peer, t, p50), 1),
                    mmm(self.path_stat(peer, t, p99), 1),
                );
            }
        }
        let _ = writeln!(
            s,
            "\nRatios of medians, ClusterIP against pod IP on the same path (≥ 1 means the ClusterIP is as fast; for latency: pod-IP p ÷ ClusterIP p):\n"
        );
        let _ = writeln!(
            s,
            "| path | pps ClusterIP ÷ pod IP | RR p50 pod ÷ ClusterIP | RR p99 pod ÷ ClusterIP | pps, per round | RR p50, per round |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|");
        for peer in &peers {
            let _ = writeln!(
                s,
                "| {peer} | {} | {} | {} | {} | {} |",
                ratio(
                    med(self.path_stat(peer, "cluster-ip", rx)),
                    med(self.path_stat(peer, "pod-ip", rx))
                ),
                ratio(
                    med(self.path_stat(peer, "pod-ip", p50)),
                    med(self.path_stat(peer, "cluster-ip", p50))
                ),
                ratio(
                    med(self.path_stat(peer, "pod-ip", p99)),
                    med(self.path_stat(peer, "cluster-ip", p99))
                ),
                mmm(self.path_ratio(peer, rx, false), 2),
                mmm(self.path_ratio(peer, p50, true), 2),
            );
        }
        if peers.len() > 1 {
            let (k, w) = (peers[0], peers[1]);
            let _ = writeln!(
                s,
                "\n{w} ÷ {k}, ClusterIP: pps {}, RR p50 (kernel ÷ weir) {}.",
                ratio(
                    med(self.path_stat(w, "cluster-ip", rx)),
                    med(self.path_stat(k, "cluster-ip", rx))
                ),
                ratio(
                    med(self.path_stat(k, "cluster-ip", p50)),
                    med(self.path_stat(w, "cluster-ip", p50))
                ),
            );
        }
        let _ = writeln!(s, "\nIPVS: {}.\n", self.ipvs);

        let _ = writeln!(
            s,
            "## New TCP connections/s to the ClusterIP with N Services ({:.1} s windows)\n",
            self.conn_window_s
        );
        let mut cpeers: Vec<&str> = Vec::new();
        let mut counts: Vec<usize> = Vec::new();
        for c in &self.conns {
            if !cpeers.contains(&c.peer.as_str()) {
                cpeers.push(&c.peer);
            }
            if !counts.contains(&c.services) {
                counts.push(c.services);
            }
        }
        counts.sort_unstable();
        let _ = writeln!(s, "| peer | Services | ClusterIP connects/s | pod IP connects/s | ClusterIP ÷ pod IP (per round) | ClusterIP ÷ at {} Services | install s |", counts.first().copied().unwrap_or(0));
        let _ = writeln!(s, "|---|---|---|---|---|---|---|");
        for peer in &cpeers {
            let base = counts
                .first()
                .and_then(|&n0| med(self.conn_stat(peer, n0, true)));
            for &n in &counts {
                let install = stats(
                    self.conns
                        .iter()
                        .filter(|c| c.peer == *peer && c.services == n)
                        .map(|c| c.install_s),
                );
                let _ = writeln!(
                    s,
                    "| {peer} | {n} | {} | {} | {} | {} | {} |",
                    mmm(self.conn_stat(peer, n, true), 0),
                    mmm(self.conn_stat(peer, n, false), 0),
                    mmm(self.conn_ratio(peer, n), 2),
                    ratio(med(self.conn_stat(peer, n, true)), base),
                    mmm(install, 2),
                );
            }
        }
        let mut errs: Vec<String> = self.errors.clone();
        for p in &self.paths {
            for e in &p.errors {
                errs.push(format!("{} {} round {}: {e}", p.peer, p.target, p.round));
            }
        }
        for c in &self.conns {
            for e in &c.errors {
                errs.push(format!(
                    "{} N={} round {}: {e}",
                    c.peer, c.services, c.round
                ));
            }
        }
        if !errs.is_empty() {
            let _ = writeln!(s, "\nErrors:\n");
            for e in errs {
                let _ = writeln!(s, "- {e}");
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_parse() {
        let spec = weir_topo::manifest::parse_str(MANIFESTS, "services.yaml").unwrap();
        assert_eq!(spec.pods.len(), 2);
    }

    #[test]
    fn fillers_and_addresses() {
        assert_eq!(filler_ip(1), Ipv4Addr::new(10, 96, 0, 2));
        assert_eq!(filler_ip(9_999), Ipv4Addr::new(10, 96, 39, 16));
        let m = fillers_manifest(3);
        assert_eq!(m.matches("kind: Service").count(), 3);
        assert!(m.contains("clusterIP: 10.96.0.4"));
        assert_eq!(last_service(10), "10.96.0.10:80".parse().unwrap());
    }

    #[test]
    fn kube_proxy_shape() {
        let b = Ipv4Addr::new(10, 252, 0, 3);
        let m = kube_proxy_nft(Lookup::Map, b, &SVC_PORTS, 2);
        assert!(m.contains("vmap @service-ips"));
        assert!(m.contains("10.96.0.1 . tcp . 9001 : goto service-perf/svc/tcp/p9001"));
        assert!(m.contains("numgen random mod 1 vmap"));
        assert!(m.contains("meta l4proto udp dnat to 10.252.0.3:9000"));
        assert_eq!(m.matches("chain endpoint-").count(), 5);
        let l = kube_proxy_nft(Lookup::Linear, b, &SVC_PORTS, 2);
        assert!(!l.contains("add element"));
        // The measured Service comes after every filler in the linear chain.
        let last_filler = l
            .find("ip daddr 10.96.0.3 meta l4proto tcp th dport 80 goto")
            .unwrap();
        let measured = l
            .find("ip daddr 10.96.0.1 meta l4proto tcp th dport 9001 goto")
            .unwrap();
        assert!(measured > last_filler);
    }

    #[test]
    fn markdown_ratios() {
        let mut r = SvcReport {
            reps: 1,
            ipvs: "not available: test".into(),
            ..Default::default()
        };
        for (t, c) in [("pod-ip", 100u64), ("cluster-ip", 50)] {
            r.conns.push(ConnSample {
                peer: "x".into(),
                services: 10,
                cluster_ip: Some(ConnResult {
                    connects: c,
                    failures: 0,
                    window_s: 1.0,
                    per_s: c as f64,
                }),
                pod_ip: Some(ConnResult {
                    connects: 100,
                    failures: 0,
                    window_s: 1.0,
                    per_s: 100.0,
                }),
                ..Default::default()
            });
            let _ = t;
        }
        let md = r.markdown();
        assert!(
            md.contains("| x | 10 | 75 [50–100] | 100 | 0.75 [0.50–1.00] | 1.00 | 0.00 |"),
            "{md}"
        );
        assert!(md.contains("IPVS: not available: test."));
    }
}
