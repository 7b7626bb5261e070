//! `weir-perf scale`: the worker scaling curve, 1 → 2 workers (issue 22,
//! part 4). The same multi-flow 64-byte UDP load (`--flows` generator
//! sockets, each its own source port) app2 → app1 through weir with one
//! worker (`--cores A`) and with two (`--cores A,B`), pod veths with two
//! queues each (`weir up --queues 2`, worker `w` serves queue `q` when
//! `q % W == w`), rounds interleaved. Beside each sample: the generator's
//! ceiling of the same round (kernel path, forwarding off), the cores
//! consumed (`/proc/stat`), each worker's received frames and busy time,
//! and the per-queue XDP counters of app2's host veth (`ethtool -S`:
//! `rx_queue_<q>_xdp_packets`), which show whether the veth spread the
//! flows over its queues at all.
//!
//! On a veth the RX queue is the sender's TX queue (`veth_xmit` uses the
//! skb's queue mapping), which the pod's stack picks per flow (XPS is not
//! set on veths, so `skb_tx_hash` of the flow): several source ports
//! spread over both queues, one flow stays on one.
#![forbid(unsafe_code)]

use std::fmt::Write as _;
use std::net::SocketAddrV4;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use weir_model::status::WorkerStatus;

use crate::cpu::{CpuSnap, CpuUse};
use crate::kernel::KernelPath;
use crate::report::Host;
use crate::rounds::{cell, stats};
use crate::udp::{self, UdpParams, UdpResult, PAYLOAD_64B_FRAME};
use crate::weir::WeirCluster;
use crate::{paper, pin, stop};

const UDP_PORT: u16 = 9000;

#[derive(Clone, Debug)]
pub struct ScaleOptions {
    pub out: PathBuf,
    pub reps: usize,
    /// Generator sockets (source ports).
    pub flows: usize,
    pub window: Duration,
    pub warmup: Duration,
    pub batch: usize,
    pub load_core: usize,
    /// The cores of the workers; the 1-worker configuration uses the first.
    pub worker_cores: Vec<usize>,
    pub mode: String,
    pub weir: PathBuf,
    pub weir_args: Vec<String>,
    /// Also one worker with `weir up --pod-rx-cpus <this>` (RPS on the
    /// pods' eth0): configuration `weir-1w+rps`; the others then run with
    /// `--pod-rx-cpus off`.
    pub pod_rx_cpus: Option<String>,
}

/// One worker's share of a sample.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct WorkerShare {
    pub id: usize,
    pub core: Option<usize>,
    pub rx_packets: u64,
    /// Wall time in rounds that moved frames.
    pub busy_ns: u64,
    /// CPU time of the worker's thread.
    pub cpu_ns: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ScaleSample {
    /// `ceiling`, `kernel`, `weir-1w`, `weir-2w`.
    pub config: String,
    pub rep: usize,
    pub workers: usize,
    pub udp: Option<UdpResult>,
    /// Over warm-up and window.
    pub cpu: Option<CpuUse>,
    /// Per worker, counters moved over warm-up and window.
    pub per_worker: Vec<WorkerShare>,
    /// `rx_queue_<q>_xdp_packets` of app2's host veth, moved over warm-up
    /// and window (weir only: the kernel path has no XDP program).
    pub queue_xdp_packets: Vec<u64>,
    pub error: Option<String>,
}

impl ScaleSample {
    fn pps(&self) -> Option<f64> {
        self.udp.as_ref().map(|u| u.received_pps)
    }

    fn pps_per_core(&self) -> Option<f64> {
        let c = self.cpu.as_ref()?.cores;
        (c > 0.0).then(|| self.pps().unwrap_or(0.0) / c)
    }

    /// Busy wall time per received frame, over the workers (ns).
    fn busy_ns_per_frame(&self) -> Option<f64> {
        let rx: u64 = self.per_worker.iter().map(|w| w.rx_packets).sum();
        let busy: u64 = self.per_worker.iter().map(|w| w.busy_ns).sum();
        (rx > 0).then(|| busy as f64 / rx as f64)
    }

    /// Share of the smaller of the first two entries of `v` (0.5 = even).
    fn min_share(v: &[u64]) -> Option<f64> {
        let t: u64 = v.iter().sum();
        (v.len() >= 2 && t > 0).then(|| *v.iter().min().unwrap_or(&0) as f64 / t as f64)
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ScaleReport {
    pub host_start: Option<Host>,
    pub host_end: Option<Host>,
    pub reps: usize,
    pub flows: usize,
    pub window_s: f64,
    pub load_core: usize,
    pub worker_cores: Vec<usize>,
    pub mode: String,
    pub weir_args: Vec<String>,
    pub samples: Vec<ScaleSample>,
}

/// `ethtool -S IFNAME` in `netns`: `rx_queue_<q>_xdp_packets` by queue.
pub fn queue_xdp_packets(netns: &str, ifname: &str) -> anyhow::Result<Vec<u64>> {
    let out = Command::new("ip")
        .args(["netns", "exec", netns, "ethtool", "-S", ifname])
        .stdin(Stdio::null())
        .output()
        .context("run ethtool -S")?;
    anyhow::ensure!(
        out.status.success(),
        "ethtool -S {ifname}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(parse_queue_xdp(&String::from_utf8_lossy(&out.stdout)))
}

/// The `rx_queue_<q>_xdp_packets: N` lines of `ethtool -S`, by queue.
pub fn parse_queue_xdp(text: &str) -> Vec<u64> {
    let mut v: Vec<(usize, u64)> = text
        .lines()
        .filter_map(|l| {
            let (k, n) = l.trim().split_once(':')?;
            let q = k.strip_prefix("rx_queue_")?.strip_suffix("_xdp_packets")?;
            Some((q.parse().ok()?, n.trim().parse().ok()?))
        })
        .collect();
    v.sort();
    v.into_iter().map(|(_, n)| n).collect()
}

/// The workers of a one-node cluster's `weir status -o json`.
pub(crate) fn workers_of(v: &serde_json::Value) -> Vec<WorkerStatus> {
    serde_json::from_value(v["nodes"][0]["status"]["dataplane"]["workers"].clone())
        .unwrap_or_default()
}

fn udp_p(o: &ScaleOptions) -> UdpParams {
    UdpParams {
        payload: PAYLOAD_64B_FRAME,
        batch: o.batch,
        warmup: o.warmup,
        window: o.window,
        load_core: o.load_core,
    }
}

fn flood(c: &weir_topo::Cluster, o: &ScaleOptions) -> anyhow::Result<(UdpResult, CpuUse)> {
    let src = c.pod("paper", "app2").context("pod paper/app2")?;
    let dst = c.pod("paper", "app1").context("pod paper/app1")?;
    let to = SocketAddrV4::new(dst.ipv4.context("app1 has no IPv4")?, UDP_PORT);
    let c0 = CpuSnap::now();
    let u = udp::run_flows_to(&src.netns, &dst.netns, to, to, &udp_p(o), o.flows)?;
    Ok((u, CpuSnap::now().since(&c0)))
}

fn weir_sample(
    o: &ScaleOptions,
    manifest: &std::path::Path,
    workers: usize,
    rps: bool,
    round: usize,
) -> ScaleSample {
    let config = format!("weir-{workers}w{}", if rps { "+rps" } else { "" });
    let mut s = ScaleSample {
        config: config.clone(),
        rep: round,
        workers,
        ..Default::default()
    };
    let r = (|| -> anyhow::Result<()> {
        let cores: Vec<String> = o.worker_cores[..workers]
            .iter()
            .map(|c| c.to_string())
            .collect();
        let mut extra: Vec<&str> = vec!["--queues", "2"];
        extra.extend(o.weir_args.iter().map(String::as_str));
        if let Some(cpus) = &o.pod_rx_cpus {
            extra.extend(["--pod-rx-cpus", if rps { cpus.as_str() } else { "off" }]);
        }
        let name = format!("psc{}{workers}", std::process::id());
        let w = WeirCluster::up_with(&o.weir, &name, manifest, &cores.join(","), &o.mode, &extra)?;
        let node = w.cluster.nodes[0].netns.clone();
        let app2 = w.cluster.pod("paper", "app2").context("pod app2")?;
        let host_if = app2.host_ifname.clone();
        // A first status: the workers publish every 250 ms.
        std::thread::sleep(Duration::from_millis(300));
        let w0 = workers_of(&w.status()?);
        let q0 = queue_xdp_packets(&node, &host_if)?;
        let (u, cpu) = flood(&w.cluster, o)?;
        std::thread::sleep(Duration::from_millis(600));
        let w1 = workers_of(&w.status()?);
        let q1 = queue_xdp_packets(&node, &host_if)?;
        s.per_worker = w1
            .iter()
            .map(|b| {
                let a = w0
                    .iter()
                    .find(|a| a.id == b.id)
                    .cloned()
                    .unwrap_or_default();
                WorkerShare {
                    id: b.id,
                    core: b.core,
                    rx_packets: b.rx_packets.saturating_sub(a.rx_packets),
                    busy_ns: b.time.busy_ns.saturating_sub(a.time.busy_ns),
                    cpu_ns: b.time.cpu_ns.saturating_sub(a.time.cpu_ns),
                }
            })
            .collect();
        s.queue_xdp_packets = q1
            .iter()
            .enumerate()
            .map(|(i, b)| b.saturating_sub(q0.get(i).copied().unwrap_or(0)))
            .collect();
        let crossed: u64 = s.per_worker.iter().map(|w| w.rx_packets).sum();
        // The proof the datagrams crossed weir: its workers received at
        // least what pod app1 read in the window.
        anyhow::ensure!(
            crossed >= u.received && crossed > 0,
            "weir's workers received {crossed} frames, app1 read {}: the load did not cross weir",
            u.received
        );
        anyhow::ensure!(
            s.per_worker.len() == workers,
            "weir status shows {} workers, want {workers}",
            s.per_worker.len()
        );
        s.udp = Some(u);
        s.cpu = Some(cpu);
        Ok(())
    })();
    if let Err(e) = r {
        s.error = Some(format!("{e:#}"));
    }
    eprintln!("round {}: {config} done", round + 1);
    s
}

pub fn run(o: &ScaleOptions) -> anyhow::Result<ScaleReport> {
    let ncores = pin::cores();
    anyhow::ensure!(
        o.worker_cores.len() >= 2,
        "--worker-cores needs two cores (the 1-worker configuration uses the first)"
    );
    anyhow::ensure!(
        o.load_core < ncores && o.worker_cores.iter().all(|c| *c < ncores),
        "cores out of range: load {}, workers {:?}; this machine has {ncores}",
        o.load_core,
        o.worker_cores
    );
    std::fs::create_dir_all(&o.out)?;
    let out = std::fs::canonicalize(&o.out)?;
    let manifest = out.join("scale.yaml");
    std::fs::write(&manifest, paper::MANIFESTS)?;
    let spec = weir_topo::manifest::parse_str(paper::MANIFESTS, "scale.yaml")
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut rep = ScaleReport {
        host_start: Some(Host::now()),
        reps: o.reps.max(1),
        flows: o.flows,
        window_s: o.window.as_secs_f64(),
        load_core: o.load_core,
        worker_cores: o.worker_cores[..2].to_vec(),
        mode: o.mode.clone(),
        weir_args: o.weir_args.clone(),
        ..Default::default()
    };
    for round in 0..rep.reps {
        stop::check()?;
        // The generator's ceiling (node drops at IP input), then the kernel path.
        let k = KernelPath::build(&format!("psc{}k", std::process::id()), &spec)?;
        for config in ["ceiling", "kernel"] {
            let mut s = ScaleSample {
                config: config.into(),
                rep: round,
                ..Default::default()
            };
            if config == "kernel" {
                k.enable_forwarding()?;
            }
            match flood(&k.cluster, o) {
                Ok((u, c)) => {
                    s.udp = Some(u);
                    s.cpu = Some(c);
                }
                Err(e) => s.error = Some(format!("{e:#}")),
            }
            eprintln!("round {}: {config} done", round + 1);
            rep.samples.push(s);
        }
        drop(k);
        // Interleaved: 1 then 2 workers in even rounds, 2 then 1 in odd ones.
        let mut order = vec![(1, false), (2, false)];
        if o.pod_rx_cpus.is_some() {
            order.insert(1, (1, true));
        }
        if round % 2 == 1 {
            order.reverse();
        }
        for (w, rps) in order {
            stop::check()?;
            rep.samples.push(weir_sample(o, &manifest, w, rps, round));
        }
    }
    rep.host_end = Some(Host::now());
    std::fs::write(out.join("scale.json"), serde_json::to_vec_pretty(&rep)?)?;
    std::fs::write(out.join("scale.md"), rep.markdown())?;
    Ok(rep)
}

impl ScaleReport {
    fn of<'a>(&'a self, c: &'a str) -> impl Iterator<Item = &'a ScaleSample> + 'a {
        self.samples.iter().filter(move |s| s.config == c)
    }

    fn same_round<'a>(&'a self, c: &'a str, rep: usize) -> Option<&'a ScaleSample> {
        self.of(c).find(|s| s.rep == rep && s.error.is_none())
    }

    /// Per round: `f(config) ÷ f(base)` of the same round.
    fn ratio(&self, c: &str, base: &str, f: fn(&ScaleSample) -> Option<f64>) -> String {
        cell(
            stats(self.of(c).filter_map(|x| {
                let b = f(self.same_round(base, x.rep)?)?;
                (b > 0.0).then_some(f(x)? / b)
            })),
            2,
        )
    }

    /// Per round: received pps ÷ the same round's ceiling (its offered pps).
    fn ratio_to_ceiling(&self, c: &str) -> String {
        cell(
            stats(self.of(c).filter_map(|x| {
                let b = self.same_round("ceiling", x.rep)?.udp.as_ref()?.offered_pps;
                (b > 0.0).then_some(x.pps()? / b)
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
            "# weir-perf scale\n\nHost: kernel {}, {} cores, load average {} at start, {} at end. 64-byte UDP app2 → app1, {} generator sockets (source ports) on core {}, {:.1} s windows, {} round(s) interleaved; weir `--poll {}` `--queues 2`, 1 worker on core {}, 2 workers on cores {},{}{}. Cells: median [min–max] over the rounds; ratios per round.\n",
            h.kernel,
            h.cpus,
            h.loadavg,
            he,
            self.flows,
            self.load_core,
            self.window_s,
            self.reps,
            self.mode,
            self.worker_cores.first().copied().unwrap_or(0),
            self.worker_cores.first().copied().unwrap_or(0),
            self.worker_cores.get(1).copied().unwrap_or(0),
            if self.weir_args.is_empty() {
                String::new()
            } else {
                format!(" (weir up {})", self.weir_args.join(" "))
            }
        );
        let _ = writeln!(
            s,
            "| config | rx pps | rx ÷ ceiling | offered pps | cores used | pps per core | ÷ weir-1w pps | ÷ weir-1w pps/core | worker busy ns/frame | smaller queue's share of XDP frames | smaller worker's share of frames |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|");
        for c in ["ceiling", "kernel", "weir-1w", "weir-1w+rps", "weir-2w"] {
            if self.of(c).next().is_none() {
                continue;
            }
            let m = |f: &dyn Fn(&ScaleSample) -> Option<f64>, d: usize| {
                cell(stats(self.of(c).filter_map(f)), d)
            };
            let weir = c.starts_with("weir");
            let _ = writeln!(
                s,
                "| {c} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                if c == "ceiling" {
                    "—".into()
                } else {
                    m(&|x| x.pps(), 0)
                },
                if c == "ceiling" {
                    "—".into()
                } else {
                    self.ratio_to_ceiling(c)
                },
                m(&|x| x.udp.as_ref().map(|u| u.offered_pps), 0),
                m(&|x| x.cpu.as_ref().map(|u| u.cores), 2),
                m(&|x| x.pps_per_core(), 0),
                if weir {
                    self.ratio(c, "weir-1w", |x| x.pps())
                } else {
                    "—".into()
                },
                if weir {
                    self.ratio(c, "weir-1w", |x| x.pps_per_core())
                } else {
                    "—".into()
                },
                if weir {
                    m(&|x| x.busy_ns_per_frame(), 0)
                } else {
                    "—".into()
                },
                if weir {
                    m(&|x| ScaleSample::min_share(&x.queue_xdp_packets), 2)
                } else {
                    "—".into()
                },
                if c == "weir-2w" {
                    m(
                        &|x| {
                            let v: Vec<u64> = x.per_worker.iter().map(|w| w.rx_packets).collect();
                            ScaleSample::min_share(&v)
                        },
                        2,
                    )
                } else {
                    "—".into()
                },
            );
        }
        let _ = writeln!(
            s,
            "\nceiling = the same generator against the kernel path with forwarding off (the node drops at IP input): the most it offers here. Shares: 0.50 = even over the two queues / workers, 0.00 = all on one. worker busy ns/frame = the workers' wall time in rounds that moved frames ÷ frames they received (warm-up and window)."
        );
        for x in &self.samples {
            if let Some(e) = &x.error {
                let _ = writeln!(s, "\n- {} round {}: {e}", x.config, x.rep + 1);
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ethtool_queue_counters() {
        let t = "NIC statistics:\n     peer_ifindex: 5\n     rx_queue_1_xdp_packets: 7\n     rx_queue_0_xdp_packets: 3\n     rx_queue_0_xdp_bytes: 180\n     tx_queue_0_xdp_xmit: 0\n";
        assert_eq!(parse_queue_xdp(t), vec![3, 7]);
        assert_eq!(ScaleSample::min_share(&[3, 7]), Some(0.3));
        assert_eq!(ScaleSample::min_share(&[0, 0]), None);
    }

    #[test]
    fn ratios_per_round() {
        let u = |pps: f64| UdpResult {
            payload_bytes: 18,
            frame_bytes_on_wire: 64,
            batch: 64,
            window_s: 1.0,
            sent: 0,
            received: 0,
            rcvbuf_errors: 0,
            send_errors: 0,
            offered_pps: pps,
            received_pps: pps,
            delivered_ratio: 1.0,
        };
        let mut rep = ScaleReport {
            reps: 2,
            ..Default::default()
        };
        for (r, one, two) in [(0, 100.0, 150.0), (1, 200.0, 200.0)] {
            for (c, pps) in [("ceiling", 400.0), ("weir-1w", one), ("weir-2w", two)] {
                let mut udp = u(pps);
                if c == "ceiling" {
                    // The node drops everything: only the offered rate counts.
                    udp.received_pps = 0.0;
                }
                rep.samples.push(ScaleSample {
                    config: c.into(),
                    rep: r,
                    udp: Some(udp),
                    cpu: Some(CpuUse {
                        per_core: vec![],
                        cores: 1.0,
                    }),
                    queue_xdp_packets: vec![1, 1],
                    ..Default::default()
                });
            }
        }
        let md = rep.markdown();
        assert!(
            md.contains("| weir-2w | 175 [150–200] | 0.44 [0.38–0.50] | 175 [150–200] | 1.00 | 175 [150–200] | 1.25 [1.00–1.50] | 1.25 [1.00–1.50] |"),
            "{md}"
        );
    }
}
