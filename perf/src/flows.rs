//! `weir-perf flows`: the whole path at many flows (issue 22, part 3). The
//! conntrack bench (`conntrack_bench`) measures the pass alone at 1k → 1M
//! flows; this measures what a node sees: 64-byte UDP app2 → app1 through
//! one weir worker, every frame a different flow of a cycle of `N` (source
//! port, destination port) pairs, for each `--flows` N, with each
//! `--variant` (a weir build and its `weir up` arguments, e.g.
//! `--ct-prefetch off`), rounds interleaved (the variants' order reversed
//! in odd rounds).
//!
//! The generator is an AF_PACKET blaster on app2's eth0 (one `sendmmsg` of
//! 64 frames, each rewritten with the next flow's ports first): a socket per
//! flow would not reach 1M flows, and one socket has one source port. Flow
//! `i` has source port `1024 + i % 64512` and destination port
//! `9000 + i / 64512`. app1 binds nothing: its kernel counts every datagram
//! (`Udp: InDatagrams + NoPorts + InErrors` of its netns) and answers a few
//! with a rate-limited ICMP port unreachable. Per N, on one cluster (N
//! ascending, each cycle contains the smaller ones): a warm-up that sends
//! every flow at least twice (their conntrack entries exist), then the
//! window. Per sample: delivered and offered pps, the worker's frames, busy
//! and CPU time per frame, whether stage 0 (the conntrack prefetch) ran at
//! the end and the census's estimate, and the live conntrack entries (the
//! proof that N flows crossed weir). The figure the conntrack goal asks
//! for, on the whole path: the worker's frames per busy second at N ÷ at the
//! smallest N, same variant, same round. Writes flows.{md,json}.
#![forbid(unsafe_code)]

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use weir_model::status::WorkerStatus;

use weir_topo::manifest::ClusterSpec;
use weir_topo::Cluster;

use crate::cpu::CpuSnap;
use crate::kernel::KernelPath;
use crate::peers::{self, Nft, Ovs};
use crate::percore::Variant;
use crate::report::Host;
use crate::rounds::{cell, stats};
use crate::scale::workers_of;
use crate::weir::WeirCluster;
use crate::{paper, pin, stop, tools, udp};

/// Source ports a destination port carries (1024..65536).
const PORTS_PER_DPORT: usize = 64512;
/// First destination port (the harness's UDP port).
const FIRST_DPORT: usize = 9000;
/// Most flows: destination ports up to 9000 + 64.
pub const MAX_FLOWS: usize = 64 * PORTS_PER_DPORT;
/// Frames per `sendmmsg`.
const BATCH: usize = 64;
/// Longest warm-up for the largest N (a slow generator still gives up).
const MAX_WARMUP: Duration = Duration::from_secs(60);

#[derive(Clone, Debug)]
pub struct FlowsOptions {
    pub out: PathBuf,
    pub reps: usize,
    /// Flow counts, measured in ascending order on each cluster.
    pub flows: Vec<usize>,
    pub window: Duration,
    /// Least warm-up per N (it also lasts until every flow was sent twice).
    pub warmup: Duration,
    pub load_core: usize,
    pub worker_core: usize,
    pub mode: String,
    /// `weir up --conntrack-size` (the table must hold the largest N).
    pub conntrack_size: usize,
    pub variants: Vec<Variant>,
    /// The kernel path with the nftables L3/L4 policy (its conntrack) as a
    /// peer, each round.
    pub kernel: bool,
    /// Open vSwitch's AF_XDP datapath with conntrack flows as a peer, each
    /// round (skipped, with a note, when it is not installed).
    pub ovs: bool,
}

/// The peers' configuration names.
pub const KERNEL: &str = "kernel+nft";
pub const OVS: &str = "ovs+ct";

/// The ports of flow `i` (of at most [`MAX_FLOWS`]).
pub fn flow_ports(i: usize) -> (u16, u16) {
    (
        (1024 + i % PORTS_PER_DPORT) as u16,
        (FIRST_DPORT + i / PORTS_PER_DPORT) as u16,
    )
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct FlowsSample {
    pub config: String,
    pub rep: usize,
    pub flows: usize,
    pub window_s: f64,
    pub warmup_s: f64,
    /// Frames the blaster handed to app2's eth0 in the window.
    pub sent: u64,
    /// Datagrams app1's kernel took in the window.
    pub delivered: u64,
    /// The worker's counters moved over the window (± one 250 ms publish).
    pub rx_packets: u64,
    pub busy_ns: u64,
    pub cpu_ns: u64,
    /// Stage 0 ran at the end of the window; the census's estimate then.
    pub stage0_on: bool,
    pub census_flows: u64,
    /// Live conntrack entries at the end of the window (weir's table, the
    /// node netns's `nf_conntrack_count`, OVS's `ct-get-nconns`).
    pub conntrack_entries: u64,
    /// Cores busy over the window, all of them (the blaster, softirq, the
    /// worker or PMD), from `/proc/stat`.
    pub cores: f64,
    pub error: Option<String>,
}

impl FlowsSample {
    fn delivered_pps(&self) -> Option<f64> {
        (self.window_s > 0.0).then(|| self.delivered as f64 / self.window_s)
    }

    fn offered_pps(&self) -> Option<f64> {
        (self.window_s > 0.0).then(|| self.sent as f64 / self.window_s)
    }

    /// Frames sent that app1 did not get (fill ring empty, RX ring full).
    fn lost_pct(&self) -> Option<f64> {
        (self.sent > 0).then(|| 100.0 * (1.0 - self.delivered as f64 / self.sent as f64))
    }

    fn busy_ns_per_frame(&self) -> Option<f64> {
        (self.rx_packets > 0).then(|| self.busy_ns as f64 / self.rx_packets as f64)
    }

    fn cpu_ns_per_frame(&self) -> Option<f64> {
        (self.rx_packets > 0).then(|| self.cpu_ns as f64 / self.rx_packets as f64)
    }

    /// Delivered pps per consumed core.
    fn pps_per_core(&self) -> Option<f64> {
        self.delivered_pps()
            .filter(|_| self.cores > 0.0)
            .map(|p| p / self.cores)
    }

    /// The worker's frames per second of busy time (millions).
    fn busy_mpps(&self) -> Option<f64> {
        self.busy_ns_per_frame()
            .filter(|&n| n > 0.0)
            .map(|n| 1e3 / n)
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct FlowsReport {
    pub host_start: Option<Host>,
    pub host_end: Option<Host>,
    pub reps: usize,
    pub window_s: f64,
    pub load_core: usize,
    pub worker_core: usize,
    pub mode: String,
    pub conntrack_size: usize,
    pub flows: Vec<usize>,
    pub variants: Vec<Variant>,
    /// The peers measured besides the variants ([`KERNEL`], [`OVS`]).
    #[serde(default)]
    pub peers: Vec<String>,
    pub samples: Vec<FlowsSample>,
    /// What could not be measured at all (a peer not installed).
    #[serde(default)]
    pub notes: Vec<String>,
}

/// What carries the flows in a sample: a weir cluster, or a peer on a
/// cluster built without weir.
enum Dut<'a> {
    Weir(&'a WeirCluster),
    /// The kernel path; its node's netns.
    Kernel(&'a str),
    Ovs(&'a Ovs),
}

/// `Udp: InDatagrams + NoPorts + InErrors` of `netns`: every datagram its
/// kernel took, with or without a socket.
fn udp_in(netns: &str) -> anyhow::Result<u64> {
    let text = weir_topo::netns::run_in(netns, || {
        std::fs::read_to_string("/proc/thread-self/net/snmp")
    })?
    .context("read /proc/net/snmp")?;
    ["InDatagrams", "NoPorts", "InErrors"]
        .iter()
        .map(|f| udp::snmp_field(&text, "Udp:", f).with_context(|| format!("Udp: {f} missing")))
        .sum()
}

/// One cluster: every N of `o.flows`, ascending.
fn weir_samples(
    o: &FlowsOptions,
    manifest: &std::path::Path,
    v: &Variant,
    rep: usize,
) -> Vec<FlowsSample> {
    let mut flows = o.flows.clone();
    flows.sort_unstable();
    let blank = |n: usize| FlowsSample {
        config: v.label.clone(),
        rep,
        flows: n,
        ..Default::default()
    };
    let size = o.conntrack_size.to_string();
    let mut extra: Vec<&str> = vec!["--conntrack-size", &size];
    extra.extend(v.args.iter().map(String::as_str));
    let name = format!("pfl{}w", std::process::id());
    let w = match WeirCluster::up_with(
        &v.bin,
        &name,
        manifest,
        &o.worker_core.to_string(),
        &o.mode,
        &extra,
    ) {
        Ok(w) => w,
        Err(e) => {
            return flows
                .iter()
                .map(|&n| FlowsSample {
                    error: Some(format!("{e:#}")),
                    ..blank(n)
                })
                .collect()
        }
    };
    every_n(o, &w.cluster, &Dut::Weir(&w), blank(0), &flows)
}

/// Every N of `flows` (ascending) on one cluster: a sample each.
fn every_n(
    o: &FlowsOptions,
    c: &Cluster,
    dut: &Dut,
    blank: FlowsSample,
    flows: &[usize],
) -> Vec<FlowsSample> {
    flows
        .iter()
        .map(|&n| {
            let mut s = FlowsSample {
                flows: n,
                ..blank.clone()
            };
            if let Err(e) = measure(o, c, dut, &mut s) {
                s.error = Some(format!("{e:#}"));
            }
            s
        })
        .collect()
}

/// A peer's samples at every N, on a cluster built without weir; an error
/// in every sample when it cannot be set up.
fn peer_samples(o: &FlowsOptions, spec: &ClusterSpec, peer: &str, rep: usize) -> Vec<FlowsSample> {
    let blank = FlowsSample {
        config: peer.to_string(),
        rep,
        ..Default::default()
    };
    let r = (|| -> anyhow::Result<Vec<FlowsSample>> {
        let pid = std::process::id();
        let k = KernelPath::build(&format!("pfl{pid}{}", &peer[..1]), spec)?;
        let node = k.cluster.nodes[0].netns.clone();
        let app1 = k.cluster.pod("paper", "app1").context("pod paper/app1")?;
        let app2 = k.cluster.pod("paper", "app2").context("pod paper/app2")?;
        let (a1, a2) = (
            app1.ipv4.context("app1 has no IPv4")?,
            app2.ipv4.context("app2 has no IPv4")?,
        );
        if peer == KERNEL {
            k.enable_forwarding()?;
            let _nft = Nft::load(&node, &peers::nft_ruleset(a2, a1, 0, None))?;
            let _max = ConntrackMax::at_least(o.conntrack_size)?;
            return Ok(every_n(
                o,
                &k.cluster,
                &Dut::Kernel(&node),
                blank.clone(),
                &o.flows,
            ));
        }
        let app3 = k.cluster.pod("paper", "app3").context("pod paper/app3")?;
        let ports = peers::ovs_ports(&[app1, app2, app3])?;
        let ovs = Ovs::start(
            &node,
            &o.out.join(format!("ovs-{pid}")),
            &ports,
            (a2, a1),
            o.worker_core,
        )?;
        // The same table size as weir's (OVS's default is 3M).
        ovs.appctl(&["dpctl/ct-set-maxconns", &o.conntrack_size.to_string()])?;
        Ok(every_n(
            o,
            &k.cluster,
            &Dut::Ovs(&ovs),
            blank.clone(),
            &o.flows,
        ))
    })();
    r.unwrap_or_else(|e| {
        o.flows
            .iter()
            .map(|&n| FlowsSample {
                flows: n,
                error: Some(format!("{e:#}")),
                ..blank.clone()
            })
            .collect()
    })
}

/// `net.netfilter.nf_conntrack_max` and `nf_conntrack_buckets` (global:
/// the initial namespace's) raised to at least a size for the kernel
/// peer's run, so that its table holds the flows as weir's does; the old
/// values restored when dropped.
struct ConntrackMax {
    old: Vec<(&'static str, String)>,
}

const NF_MAX: &str = "/proc/sys/net/netfilter/nf_conntrack_max";
const NF_BUCKETS: &str = "/proc/sys/net/netfilter/nf_conntrack_buckets";

impl ConntrackMax {
    fn at_least(size: usize) -> anyhow::Result<ConntrackMax> {
        let mut g = ConntrackMax { old: Vec::new() };
        for p in [NF_MAX, NF_BUCKETS] {
            let old = std::fs::read_to_string(p)
                .with_context(|| format!("read {p} (nf_conntrack not loaded?)"))?;
            let v: usize = old
                .trim()
                .parse()
                .with_context(|| format!("{p}: {old:?}"))?;
            if v < size {
                std::fs::write(p, size.to_string()).with_context(|| format!("write {p}"))?;
                g.old.push((p, old.trim().to_string()));
            }
        }
        Ok(g)
    }
}

impl Drop for ConntrackMax {
    fn drop(&mut self) {
        for (p, v) in self.old.drain(..).rev() {
            if let Err(e) = std::fs::write(p, &v) {
                eprintln!("weir-perf: restoring {p} to {v}: {e}");
            }
        }
    }
}

/// Live entries in the table of the configuration under test.
fn entries(dut: &Dut) -> anyhow::Result<u64> {
    match dut {
        Dut::Weir(w) => Ok(
            w.status()?["nodes"][0]["status"]["dataplane"]["conntrack"]["entries"]
                .as_u64()
                .unwrap_or(0),
        ),
        Dut::Kernel(netns) => {
            let t = weir_topo::netns::run_in(netns, || {
                std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_count")
            })?
            .context("read nf_conntrack_count")?;
            t.trim().parse().context("nf_conntrack_count")
        }
        Dut::Ovs(ovs) => {
            let t = ovs.appctl(&["dpctl/ct-get-nconns"])?;
            t.trim()
                .parse()
                .with_context(|| format!("ct-get-nconns: {t:?}"))
        }
    }
}

fn measure(o: &FlowsOptions, c: &Cluster, dut: &Dut, s: &mut FlowsSample) -> anyhow::Result<()> {
    stop::check()?;
    let src = c.pod("paper", "app2").context("pod paper/app2")?;
    let dst = c.pod("paper", "app1").context("pod paper/app1")?;
    let frame = paper::udp_frame(src, dst)?;
    let n = s.flows.max(1);
    let sent = AtomicU64::new(0);
    let done = AtomicBool::new(false);
    std::thread::scope(|sc| -> anyhow::Result<()> {
        let blaster = sc.spawn(|| -> anyhow::Result<()> {
            weir_topo::netns::run_in(&src.netns, || -> anyhow::Result<()> {
                pin::pin(o.load_core)?;
                // Not sysfs: it shows the namespace it was mounted in.
                let idx = crate::mmsg::ifindex("eth0");
                anyhow::ensure!(idx > 0, "eth0 ifindex");
                let mut b = crate::mmsg::PacketBlaster::new(idx, &frame, BATCH)?;
                let mut next = 0usize;
                crate::mmsg::blast(&mut b, &done, &sent, |b| {
                    for m in 0..b.batch() {
                        let (sp, dp) = flow_ports(next);
                        let f = b.frame_mut(m);
                        f[34..36].copy_from_slice(&sp.to_be_bytes());
                        f[36..38].copy_from_slice(&dp.to_be_bytes());
                        next = if next + 1 == n { 0 } else { next + 1 };
                    }
                })
                .context("AF_PACKET sendmmsg")?;
                Ok(())
            })?
        });
        let r = (|| -> anyhow::Result<()> {
            // Warm-up: every flow sent twice, and at least `o.warmup`.
            let t0 = Instant::now();
            while t0.elapsed() < o.warmup || sent.load(Ordering::Relaxed) < 2 * n as u64 {
                anyhow::ensure!(
                    t0.elapsed() < MAX_WARMUP,
                    "warm-up: {} frames sent in {:?} for {n} flows",
                    sent.load(Ordering::Relaxed),
                    MAX_WARMUP
                );
                udp::sleep_checked(Duration::from_millis(50))?;
            }
            s.warmup_s = t0.elapsed().as_secs_f64();
            let w0 = match dut {
                Dut::Weir(w) => workers_of(&w.status()?),
                _ => Vec::new(),
            };
            let (d0, s0, c0, t1) = (
                udp_in(&dst.netns)?,
                sent.load(Ordering::Relaxed),
                CpuSnap::now(),
                Instant::now(),
            );
            udp::sleep_checked(o.window)?;
            let (d1, s1, c1, t2) = (
                udp_in(&dst.netns)?,
                sent.load(Ordering::Relaxed),
                CpuSnap::now(),
                Instant::now(),
            );
            s.window_s = (t2 - t1).as_secs_f64();
            s.sent = s1 - s0;
            s.delivered = d1.saturating_sub(d0);
            s.cores = c1.since(&c0).cores;
            s.conntrack_entries = entries(dut)?;
            let Dut::Weir(w) = dut else {
                return Ok(());
            };
            // The workers publish every 250 ms.
            std::thread::sleep(Duration::from_millis(300));
            let w1 = workers_of(&w.status()?);
            let sum = |ws: &[WorkerStatus], f: fn(&WorkerStatus) -> u64| -> u64 {
                ws.iter().map(f).sum()
            };
            let d = |f: fn(&WorkerStatus) -> u64| sum(&w1, f).saturating_sub(sum(&w0, f));
            s.rx_packets = d(|w| w.rx_packets);
            s.busy_ns = d(|w| w.time.busy_ns);
            s.cpu_ns = d(|w| w.time.cpu_ns);
            s.stage0_on = w1.iter().any(|w| w.ct_prefetch.on);
            s.census_flows = w1.iter().map(|w| w.ct_prefetch.flows).sum();
            Ok(())
        })();
        done.store(true, Ordering::Relaxed);
        blaster
            .join()
            .map_err(|_| anyhow::anyhow!("blaster panicked"))??;
        r
    })?;
    // The proof the flows crossed weir: the worker took at least what app1
    // got (over a slightly longer span), and the table holds the flows (a
    // few may have come round only once: frames lost before the worker).
    // A peer's table holds them likewise.
    if let Dut::Weir(_) = dut {
        anyhow::ensure!(
            s.rx_packets > 0 && s.rx_packets as f64 >= s.delivered as f64 * 0.95,
            "weir's worker received {} frames, app1 took {}: the load did not cross weir",
            s.rx_packets,
            s.delivered
        );
    }
    anyhow::ensure!(s.delivered > 0, "app1 took nothing");
    let want = n.min(o.conntrack_size) as f64 * 0.9;
    anyhow::ensure!(
        s.conntrack_entries as f64 >= want,
        "{} conntrack entries for {n} flows in {}: the flows did not cross its table",
        s.conntrack_entries,
        s.config
    );
    Ok(())
}

pub fn run(o: &FlowsOptions) -> anyhow::Result<FlowsReport> {
    let ncores = pin::cores();
    anyhow::ensure!(
        o.load_core < ncores && o.worker_core < ncores,
        "cores out of range: load {}, worker {}; this machine has {ncores}",
        o.load_core,
        o.worker_core
    );
    anyhow::ensure!(!o.variants.is_empty(), "no --variant to measure");
    anyhow::ensure!(!o.flows.is_empty(), "no --flows to measure");
    if let Some(&bad) = o.flows.iter().find(|&&n| n == 0 || n > MAX_FLOWS) {
        anyhow::bail!("--flows {bad}: from 1 to {MAX_FLOWS}");
    }
    std::fs::create_dir_all(&o.out)?;
    let out = std::fs::canonicalize(&o.out)?;
    let manifest = out.join("flows.yaml");
    std::fs::write(&manifest, paper::MANIFESTS)?;
    let spec = weir_topo::manifest::parse_str(paper::MANIFESTS, "flows.yaml")
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut flows = o.flows.clone();
    flows.sort_unstable();
    flows.dedup();
    let mut rep = FlowsReport {
        host_start: Some(Host::at(o.load_core, o.worker_core)),
        reps: o.reps.max(1),
        window_s: o.window.as_secs_f64(),
        load_core: o.load_core,
        worker_core: o.worker_core,
        mode: o.mode.clone(),
        conntrack_size: o.conntrack_size,
        flows: flows.clone(),
        variants: o.variants.clone(),
        ..Default::default()
    };
    if o.kernel {
        rep.peers.push(KERNEL.into());
    }
    if o.ovs && tools::have("ovs-vswitchd") {
        rep.peers.push(OVS.into());
    } else if o.ovs {
        rep.notes
            .push("OVS skipped: not installed (scripts/setup.sh installs it)".into());
    }
    let o = FlowsOptions {
        flows,
        out: out.clone(),
        ..o.clone()
    };
    for round in 0..rep.reps {
        let mut order: Vec<&Variant> = o.variants.iter().collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for v in order {
            stop::check()?;
            rep.samples.extend(weir_samples(&o, &manifest, v, round));
            eprintln!("round {}: {} done", round + 1, v.label);
        }
        for peer in rep.peers.clone() {
            stop::check()?;
            rep.samples.extend(peer_samples(&o, &spec, &peer, round));
            eprintln!("round {}: {peer} done", round + 1);
        }
    }
    rep.host_end = Some(Host::at(o.load_core, o.worker_core));
    std::fs::write(out.join("flows.json"), serde_json::to_vec_pretty(&rep)?)?;
    std::fs::write(out.join("flows.md"), rep.markdown())?;
    Ok(rep)
}

impl FlowsReport {
    fn of<'a>(&'a self, c: &'a str, n: usize) -> impl Iterator<Item = &'a FlowsSample> + 'a {
        self.samples
            .iter()
            .filter(move |s| s.config == c && s.flows == n && s.error.is_none())
    }

    fn col(&self, c: &str, n: usize, f: impl Fn(&FlowsSample) -> Option<f64>, d: usize) -> String {
        cell(stats(self.of(c, n).filter_map(f)), d)
    }

    /// Per round: `f` of (`c`, `n`) ÷ `f` of (`bc`, `bn`) in the same round.
    fn ratio(
        &self,
        (c, n): (&str, usize),
        (bc, bn): (&str, usize),
        f: fn(&FlowsSample) -> Option<f64>,
    ) -> String {
        cell(
            stats(self.of(c, n).filter_map(|x| {
                let b = f(self.of(bc, bn).find(|s| s.rep == x.rep)?)?;
                (b > 0.0).then_some(f(x)? / b)
            })),
            2,
        )
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
            "# weir-perf flows\n\nHost: kernel {}, {} cores, load average {} at start, {} at end. 64-byte UDP app2 → app1 through one weir worker (core {}, `--poll {}`, `--conntrack-size {}`), and through the peers (the kernel path with the nftables L3/L4 policy: its conntrack, softirq on the blaster's core; Open vSwitch's AF_XDP datapath with conntrack flows, PMD on the worker's core), every frame the next flow of a cycle of N (an AF_PACKET blaster on app2's eth0, core {}); app1's kernel counts the datagrams (no socket). {:.1} s windows after a warm-up that sends every flow twice; {} round(s) interleaved. Cells: median [min–max] over the rounds; ratios per round.\n",
            h.kernel,
            h.cpus,
            h.loadavg,
            he,
            self.worker_core,
            self.mode,
            self.conntrack_size,
            self.load_core,
            self.window_s,
            self.reps
        );
        let _ = writeln!(s, "Variants:");
        for v in &self.variants {
            let _ = writeln!(
                s,
                "- `{}`: {} {}",
                v.label,
                v.bin.display(),
                v.args.join(" ")
            );
        }
        let first = self.variants.first().map_or("", |v| v.label.as_str());
        let n0 = self.flows.first().copied().unwrap_or(1);
        let configs: Vec<&str> = self
            .variants
            .iter()
            .map(|v| v.label.as_str())
            .chain(self.peers.iter().map(String::as_str))
            .collect();
        let _ = write!(
            s,
            "\n## The whole path, every configuration\n\n| config | flows | delivered pps | offered pps | lost % | cores used | pps per core | ÷ same at {n0} flows |"
        );
        for p in &self.peers {
            let _ = write!(s, " ÷ {p} pps/core | ÷ {p} pps |");
        }
        let _ = writeln!(
            s,
            " conntrack entries |\n|---|---|---|---|---|---|---|---|{}---|",
            "---|---|".repeat(self.peers.len())
        );
        for &c in &configs {
            for &n in &self.flows {
                let _ = write!(
                    s,
                    "| {c} | {n} | {} | {} | {} | {} | {} | {} |",
                    self.col(c, n, |x| x.delivered_pps(), 0),
                    self.col(c, n, |x| x.offered_pps(), 0),
                    self.col(c, n, |x| x.lost_pct(), 1),
                    self.col(c, n, |x| Some(x.cores), 2),
                    self.col(c, n, |x| x.pps_per_core(), 0),
                    self.ratio((c, n), (c, n0), |x| x.pps_per_core()),
                );
                for p in &self.peers {
                    let _ = write!(
                        s,
                        " {} | {} |",
                        self.ratio((c, n), (p, n), |x| x.pps_per_core()),
                        self.ratio((c, n), (p, n), |x| x.delivered_pps()),
                    );
                }
                let _ = writeln!(
                    s,
                    " {} |",
                    self.col(c, n, |x| Some(x.conntrack_entries as f64), 0)
                );
            }
        }
        let _ = writeln!(
            s,
            "\ncores used: every core's busy time over the window (`/proc/stat`: the blaster, softirq — where the kernel path forwards and tracks —, weir's worker or OVS's PMD thread); pps per core: delivered pps ÷ cores used. conntrack entries: weir's table, the kernel peer's `nf_conntrack_count` in its node netns (`nf_conntrack_max` and `nf_conntrack_buckets` raised to `--conntrack-size` for its run when lower, restored after), OVS's `dpctl/ct-get-nconns` (`ct-set-maxconns` `--conntrack-size`)."
        );
        let _ = writeln!(
            s,
            "\n## weir's worker\n\n| config | flows | worker busy ns/frame | worker CPU ns/frame | worker Mpps per busy s | ÷ same at {n0} flows | ÷ {first} worker Mpps | ÷ {first} delivered pps | stage 0 on (rounds) | census flows |\n|---|---|---|---|---|---|---|---|---|---|"
        );
        for v in &self.variants {
            let c = v.label.as_str();
            for &n in &self.flows {
                let on = self.of(c, n).filter(|x| x.stage0_on).count();
                let all = self.of(c, n).count();
                let _ = writeln!(
                    s,
                    "| {c} | {n} | {} | {} | {} | {} | {} | {} | {on}/{all} | {} |",
                    self.col(c, n, |x| x.busy_ns_per_frame(), 0),
                    self.col(c, n, |x| x.cpu_ns_per_frame(), 0),
                    self.col(c, n, |x| x.busy_mpps(), 2),
                    self.ratio((c, n), (c, n0), |x| x.busy_mpps()),
                    self.ratio((c, n), (first, n), |x| x.busy_mpps()),
                    self.ratio((c, n), (first, n), |x| x.delivered_pps()),
                    self.col(c, n, |x| Some(x.census_flows as f64), 0),
                );
            }
        }
        let _ = writeln!(
            s,
            "\nworker busy ns/frame: wall time in rounds that moved frames ÷ frames (the pass, the TX kick and, with RPS off, the receiving pod's stack); worker Mpps per busy s: its inverse. \"÷ same at {n0} flows\": the conntrack goal on the whole path (the rate at N ÷ at the fewest flows, same build, same round)."
        );
        for n in &self.notes {
            let _ = writeln!(s, "\n- {n}");
        }
        for x in self.samples.iter().filter(|x| x.error.is_some()) {
            let _ = writeln!(
                s,
                "\n- error, {} at {} flows, round {}: {}",
                x.config,
                x.flows,
                x.rep + 1,
                x.error.as_deref().unwrap_or("")
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flows_are_distinct_port_pairs() {
        assert_eq!(flow_ports(0), (1024, 9000));
        assert_eq!(flow_ports(PORTS_PER_DPORT - 1), (65535, 9000));
        assert_eq!(flow_ports(PORTS_PER_DPORT), (1024, 9001));
        assert_eq!(flow_ports(MAX_FLOWS - 1), (65535, 9063));
        let mut seen = std::collections::HashSet::new();
        for i in (0..MAX_FLOWS).step_by(997) {
            assert!(seen.insert(flow_ports(i)), "{i}");
        }
    }

    #[test]
    fn table_has_the_goal_ratio_per_round() {
        let v = |l: &str| Variant {
            label: l.into(),
            bin: "/x/weir".into(),
            args: vec![],
        };
        let sample = |c: &str, rep: usize, flows: usize, busy: u64| FlowsSample {
            config: c.into(),
            rep,
            flows,
            window_s: 1.0,
            sent: 1000,
            delivered: 900,
            rx_packets: 1000,
            busy_ns: busy * 1000,
            conntrack_entries: flows as u64,
            cores: 1.5,
            ..Default::default()
        };
        // The kernel peer: half the pps on one core.
        let kernel = |rep: usize, flows: usize| FlowsSample {
            config: KERNEL.into(),
            rep,
            flows,
            window_s: 1.0,
            sent: 1000,
            delivered: 450,
            conntrack_entries: flows as u64,
            cores: 1.0,
            ..Default::default()
        };
        let rep = FlowsReport {
            reps: 2,
            window_s: 1.0,
            flows: vec![1, 1000],
            variants: vec![v("auto"), v("off")],
            peers: vec![KERNEL.into()],
            samples: vec![
                kernel(0, 1),
                kernel(0, 1000),
                kernel(1, 1),
                FlowsSample {
                    delivered: 300,
                    ..kernel(1, 1000)
                },
                sample("auto", 0, 1, 500),
                sample("auto", 0, 1000, 1000),
                sample("auto", 1, 1, 400),
                sample("auto", 1, 1000, 1000),
                sample("off", 0, 1, 500),
                sample("off", 0, 1000, 2000),
                FlowsSample {
                    error: Some("boom".into()),
                    ..sample("off", 1, 1, 1)
                },
            ],
            ..Default::default()
        };
        let md = rep.markdown();
        // The whole path: auto at 1000 flows, 600 pps per core; ÷ the
        // kernel's 450 and 300 per core (rounds 0 and 1): 1.33 and 2.00;
        // its pps: 2.00 and 3.00.
        assert!(
            md.contains("| auto | 1000 | 900 | 1000 | 10.0 | 1.50 | 600 | 1.00 | 1.67 [1.33–2.00] | 2.50 [2.00–3.00] | 1000 |"),
            "{md}"
        );
        // The kernel's own row: its 1000-flow rate ÷ its 1-flow rate.
        assert!(
            md.contains("| kernel+nft | 1000 | 375 [300–450] | 1000 | 62.5 [55.0–70.0] | 1.00 | 375 [300–450] | 0.83 [0.67–1.00] | 1.00 | 1.00 | 1000 |"),
            "{md}"
        );
        // weir's worker: auto at 1000 flows, 1 Mpps per busy s, ÷ at 1 flow
        // 0.50 and 0.40.
        assert!(
            md.contains(
                "| auto | 1000 | 1000 | 0 | 1.00 | 0.45 [0.40–0.50] | 1.00 | 1.00 | 0/2 | 0 |"
            ),
            "{md}"
        );
        // off ÷ auto at 1000 flows: 0.50 (round 0 only).
        assert!(
            md.contains("| off | 1000 | 2000 | 0 | 0.50 | 0.25 | 0.50 | 1.00 |"),
            "{md}"
        );
        // No worker row for a peer.
        assert_eq!(md.matches("| kernel+nft |").count(), 2, "{md}");
        assert!(md.contains("error, off at 1 flows, round 2: boom"), "{md}");
    }
}
