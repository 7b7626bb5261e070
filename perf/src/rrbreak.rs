//! `weir-perf rr`: TCP request/response latency, kernel path against weir
//! in each polling mode, in interleaved rounds; with `--breakdown`, weir
//! also runs with `weir up --latency-breakdown` and its per-batch stage
//! percentiles (RX wait, pass, TX kick; see
//! `weir_model::status::BREAKDOWN_STAGES`) are printed beside the RR
//! numbers, so a tail can be attributed. Every weir cluster is fresh, so
//! its histograms hold that round's round trips (warm-up included) only.
//!
//! Topology: the paper's one-node manifests (`paper::MANIFESTS`), app2 →
//! app1 TCP 9001; placement as everywhere (load on `load_core`, weir's
//! worker on `worker_core`).
#![forbid(unsafe_code)]

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use weir_model::status::LatencySummary;

use crate::kernel::KernelPath;
use crate::report::Host;
use crate::rounds::{cell, stats};
use crate::rr::{self, PeerRx, RrParams, RrResult};
use crate::weir::WeirCluster;
use crate::{paper, pin, stop};

#[derive(Clone, Debug)]
pub struct RrOptions {
    pub out: PathBuf,
    pub modes: Vec<String>,
    pub reps: usize,
    pub count: u64,
    pub load_core: usize,
    pub worker_core: usize,
    /// None: the kernel path only.
    pub weir: Option<PathBuf>,
    /// Also run weir with `--latency-breakdown` (its own configuration,
    /// `weir-<mode>+breakdown`, so the breakdown's own cost shows too).
    pub breakdown: bool,
    /// Also run weir with `--busy-poll` (`weir-<mode>+busypoll`: the
    /// SO_PREFER_BUSY_POLL socket options; docs/performance.md).
    pub busy_poll: bool,
    /// More `weir up` arguments for every weir configuration.
    pub weir_args: Vec<String>,
    /// Also run weir with `weir up --pod-rx-cpus <this>` (RPS on the pods'
    /// eth0) as its own configuration, `weir-<mode>+rps` (and
    /// `weir-<mode>+rps+breakdown` with `breakdown`); every other weir
    /// configuration runs with `--pod-rx-cpus off`, so old and new are
    /// interleaved rounds of one run.
    pub pod_rx_cpus: Option<String>,
}

/// One stage of one worker, as `weir status -o json` reports it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Stage {
    pub stage: String,
    pub ns: LatencySummary,
    pub sum_ns: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RrSample {
    pub config: String,
    pub rep: usize,
    pub rr: Option<RrResult>,
    /// weir's time-in-dataplane per frame (batch RX to the end of its kick).
    pub dataplane_ns: Option<LatencySummary>,
    pub stages: Vec<Stage>,
    /// With `--breakdown`: the round trip split at the receivers' RX
    /// stamps (every configuration, the kernel path's too).
    #[serde(default)]
    pub peer_rx: Option<PeerRx>,
    pub error: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RrReport {
    pub host_start: Option<Host>,
    pub host_end: Option<Host>,
    pub count: u64,
    pub reps: usize,
    pub load_core: usize,
    pub worker_core: usize,
    pub weir_args: Vec<String>,
    pub samples: Vec<RrSample>,
}

const RR_PORT: u16 = 9001;

fn rr_once(c: &weir_topo::Cluster, o: &RrOptions) -> anyhow::Result<(RrResult, Option<PeerRx>)> {
    let src = c.pod("paper", "app2").context("pod paper/app2")?;
    let dst = c.pod("paper", "app1").context("pod paper/app1")?;
    let ip = dst.ipv4.context("app1 has no IPv4")?;
    let p = RrParams {
        count: o.count,
        warmup: (o.count / 10).max(1),
        load_core: o.load_core,
        timeout: Duration::from_secs(5),
    };
    let to = SocketAddr::from((ip, RR_PORT));
    if o.breakdown {
        let (r, split) = rr::run_stamped(&src.netns, &dst.netns, to, &p)?;
        Ok((r, Some(split)))
    } else {
        Ok((rr::run(&src.netns, &dst.netns, to, &p)?, None))
    }
}

/// The first worker's time-in-dataplane and breakdown stages.
fn worker_latency(w: &WeirCluster) -> anyhow::Result<(Option<LatencySummary>, Vec<Stage>)> {
    let v = w.status()?;
    let wk = &v["nodes"][0]["status"]["dataplane"]["workers"][0];
    let lat = serde_json::from_value(wk["latency_ns"].clone()).ok();
    let stages = serde_json::from_value(wk["breakdown"].clone()).unwrap_or_default();
    Ok((lat, stages))
}

/// One weir round: the RR (and its split), the worker's time-in-dataplane
/// and breakdown stages.
type WeirRr = (
    (RrResult, Option<PeerRx>),
    Option<LatencySummary>,
    Vec<Stage>,
);

fn weir_once(
    o: &RrOptions,
    bin: &Path,
    manifest: &Path,
    mode: &str,
    breakdown: bool,
    busy_poll: bool,
    rps: bool,
) -> anyhow::Result<WeirRr> {
    let name = format!("prr{}{}", std::process::id(), &mode[..1]);
    let mut extra: Vec<&str> = o.weir_args.iter().map(String::as_str).collect();
    if let Some(cpus) = &o.pod_rx_cpus {
        extra.push("--pod-rx-cpus");
        extra.push(if rps { cpus.as_str() } else { "off" });
    }
    if breakdown {
        extra.push("--latency-breakdown");
    }
    if busy_poll {
        extra.push("--busy-poll");
    }
    let w = WeirCluster::up_with(
        bin,
        &name,
        manifest,
        &o.worker_core.to_string(),
        mode,
        &extra,
    )?;
    let r = rr_once(&w.cluster, o)?;
    // The worker publishes every 250 ms.
    std::thread::sleep(Duration::from_millis(600));
    let (lat, stages) = worker_latency(&w)?;
    anyhow::ensure!(
        !breakdown || stages.len() == 3,
        "weir up --latency-breakdown: status shows {} stages, want 3",
        stages.len()
    );
    Ok((r, lat, stages))
}

pub fn run(o: &RrOptions) -> anyhow::Result<RrReport> {
    let ncores = pin::cores();
    anyhow::ensure!(
        o.load_core < ncores && o.worker_core < ncores && o.load_core != o.worker_core,
        "need two distinct cores (load {}, worker {}); this machine has {ncores}",
        o.load_core,
        o.worker_core
    );
    std::fs::create_dir_all(&o.out)?;
    let out = std::fs::canonicalize(&o.out)?;
    let manifest = out.join("rr.yaml");
    std::fs::write(&manifest, paper::MANIFESTS)?;
    let spec = weir_topo::manifest::parse_str(paper::MANIFESTS, "rr.yaml")
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut rep = RrReport {
        host_start: Some(Host::at(o.load_core, o.worker_core)),
        count: o.count,
        reps: o.reps.max(1),
        load_core: o.load_core,
        worker_core: o.worker_core,
        weir_args: o.weir_args.clone(),
        ..Default::default()
    };
    for round in 0..o.reps.max(1) {
        stop::check()?;
        let mut s = RrSample {
            config: "kernel".into(),
            rep: round,
            ..Default::default()
        };
        let r = (|| {
            let k = KernelPath::build(&format!("prr{}k", std::process::id()), &spec)?;
            k.enable_forwarding()?;
            rr_once(&k.cluster, o)
        })();
        match r {
            Ok((r, split)) => {
                s.rr = Some(r);
                s.peer_rx = split;
            }
            Err(e) => s.error = Some(format!("{e:#}")),
        }
        eprintln!("round {}: kernel done", round + 1);
        rep.samples.push(s);
        let Some(bin) = o.weir.as_deref() else {
            continue;
        };
        for mode in &o.modes {
            for (suffix, bd, bp, rps) in [
                ("", false, false, false),
                ("+breakdown", true, false, false),
                ("+busypoll", false, true, false),
                ("+rps", false, false, true),
                ("+rps+breakdown", true, false, true),
            ] {
                if (bd && !o.breakdown) || (bp && !o.busy_poll) || (rps && o.pod_rx_cpus.is_none())
                {
                    continue;
                }
                stop::check()?;
                let config = format!("weir-{mode}{suffix}");
                let mut s = RrSample {
                    config: config.clone(),
                    rep: round,
                    ..Default::default()
                };
                match weir_once(o, bin, &manifest, mode, bd, bp, rps) {
                    Ok(((r, split), lat, st)) => {
                        s.rr = Some(r);
                        s.peer_rx = split;
                        s.dataplane_ns = lat;
                        s.stages = st;
                    }
                    Err(e) => s.error = Some(format!("{e:#}")),
                }
                eprintln!("round {}: {config} done", round + 1);
                rep.samples.push(s);
            }
        }
    }
    rep.host_end = Some(Host::at(o.load_core, o.worker_core));
    std::fs::write(out.join("rr.json"), serde_json::to_vec_pretty(&rep)?)?;
    std::fs::write(out.join("rr.md"), rep.markdown())?;
    Ok(rep)
}

type Pick = fn(&LatencySummary) -> u64;

impl RrReport {
    fn configs(&self) -> Vec<&str> {
        let mut v: Vec<&str> = Vec::new();
        for s in &self.samples {
            if !v.contains(&s.config.as_str()) {
                v.push(&s.config);
            }
        }
        v
    }

    fn of<'a>(&'a self, c: &'a str) -> impl Iterator<Item = &'a RrSample> + 'a {
        self.samples.iter().filter(move |s| s.config == c)
    }

    /// µs, median [min–max] over the rounds, of a stage's percentile.
    fn stage_cell(&self, c: &str, stage: &str, f: Pick) -> String {
        cell(
            stats(self.of(c).filter_map(|s| {
                s.stages
                    .iter()
                    .find(|x| x.stage == stage)
                    .map(|x| f(&x.ns) as f64 / 1e3)
            })),
            1,
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
            "# weir-perf rr\n\nHost: kernel {}, {} cores, load average {} at start, {} at end. One TCP connection app2 → app1, 1-byte ping-pong, {} round trips per round (after {} of warm-up), {} round(s) interleaved; load on core {}, weir's worker on core {}{}. Cells: median [min–max] over the rounds, µs.\n",
            h.kernel,
            h.cpus,
            h.loadavg,
            he,
            self.count,
            (self.count / 10).max(1),
            self.reps,
            self.load_core,
            self.worker_core,
            if self.weir_args.is_empty() {
                String::new()
            } else {
                format!(" (weir up {})", self.weir_args.join(" "))
            }
        );
        let _ = writeln!(s, "{}\n", crate::wake::note(h.wake.as_ref()));
        let _ = writeln!(
            s,
            "| config | RR p50 | RR p99 | RR p99.9 | p99 ÷ kernel | weir per frame p50 / p99 | rx_wait p50 / p99 | pass p50 / p99 | tx_kick p50 / p99 | batches | to peer RX p50 / p99 | peer RX → app p50 / p99 | RR mean = 2 × (to RX + RX → app) |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|---|---|");
        let kernel_p99 = |rep: usize| {
            self.of("kernel")
                .find(|k| k.rep == rep)
                .and_then(|k| k.rr.as_ref().map(|r| r.p99_us))
        };
        for c in self.configs() {
            let rr = |f: fn(&RrResult) -> f64| {
                cell(stats(self.of(c).filter_map(|x| x.rr.as_ref().map(f))), 1)
            };
            let vs = stats(self.of(c).filter_map(|x| {
                let k = kernel_p99(x.rep)?;
                x.rr.as_ref().map(|r| r.p99_us / k)
            }));
            let dp = |f: Pick| {
                cell(
                    stats(
                        self.of(c)
                            .filter_map(|x| x.dataplane_ns.as_ref().map(|l| f(l) as f64 / 1e3)),
                    ),
                    1,
                )
            };
            let pair = |stage: &str| {
                if self.of(c).all(|x| x.stages.is_empty()) {
                    "—".to_string()
                } else {
                    format!(
                        "{} / {}",
                        self.stage_cell(c, stage, |l| l.p50),
                        self.stage_cell(c, stage, |l| l.p99)
                    )
                }
            };
            let batches = stats(self.of(c).filter_map(|x| {
                x.stages
                    .iter()
                    .find(|st| st.stage == "pass")
                    .map(|st| st.ns.count as f64)
            }));
            let leg = |f: fn(&PeerRx) -> &rr::Leg| {
                if self.of(c).all(|x| x.peer_rx.is_none()) {
                    "—".to_string()
                } else {
                    let q = |g: fn(&rr::Leg) -> f64| {
                        cell(
                            stats(
                                self.of(c)
                                    .filter_map(|x| x.peer_rx.as_ref().map(|p| g(f(p)))),
                            ),
                            1,
                        )
                    };
                    format!("{} / {}", q(|l| l.p50_us), q(|l| l.p99_us))
                }
            };
            let means = if self.of(c).all(|x| x.peer_rx.is_none()) {
                "—".to_string()
            } else {
                let q = |g: fn(&PeerRx) -> f64| {
                    cell(
                        stats(self.of(c).filter_map(|x| x.peer_rx.as_ref().map(g))),
                        1,
                    )
                };
                format!(
                    "{} = 2 × ({} + {})",
                    cell(
                        stats(self.of(c).filter_map(|x| x.rr.as_ref().map(|r| r.mean_us))),
                        1
                    ),
                    q(|p| p.to_peer_rx.mean_us),
                    q(|p| p.rx_to_app.mean_us)
                )
            };
            let _ = writeln!(
                s,
                "| {c} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                rr(|r| r.p50_us),
                rr(|r| r.p99_us),
                rr(|r| r.p999_us),
                cell(vs, 2),
                if c == "kernel" {
                    "—".to_string()
                } else {
                    format!("{} / {}", dp(|l| l.p50), dp(|l| l.p99))
                },
                pair("rx_wait"),
                pair("pass"),
                pair("tx_kick"),
                cell(batches, 0),
                leg(|p| &p.to_peer_rx),
                leg(|p| &p.rx_to_app),
                means,
            );
        }
        let _ = writeln!(
            s,
            "\nStages are per batch (one RR round trip crosses the worker twice, one frame per batch): rx_wait = from the worker's previous look at its rings (previous round, or wake-up from poll) to this batch's RX, an upper bound of the frame's wait; pass = the pass over the batch and producing its TX descriptors; tx_kick = the round's sendto kicks (copy mode: the kernel transmits in it, the peer veth's RX included). The rest of a round trip is the kernel's: the client's and server's stacks and the veth hops into weir's XDP program. With --breakdown every configuration's ping-pong reads with recvmsg and SO_TIMESTAMPNS: to peer RX = from the sender's write (request) or the server's read return (reply, its write included) to the software RX stamp the kernel put on the frame where it entered the receiving pod's stack (netif_rx on the pod veth); peer RX → app = from that stamp to the receiver's recvmsg returning (the pod's softirq, TCP, the wake-up). Both legs twice per round trip, one CLOCK_REALTIME throughout, so the mean round trip is 2 × (to RX + RX → app) up to rounding (the client's histogram uses the monotonic clock)."
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
    fn markdown_stages_beside_rr() {
        let rr = |p99: f64| RrResult {
            count: 10,
            p50_us: 10.0,
            p90_us: 12.0,
            p99_us: p99,
            p999_us: 30.0,
            max_us: 40.0,
            mean_us: 11.0,
            rate_per_s: 1000.0,
        };
        let stage = |n: &str, p50: u64, p99: u64| Stage {
            stage: n.into(),
            ns: LatencySummary {
                p50,
                p99,
                count: 22,
                ..Default::default()
            },
            sum_ns: 0,
        };
        let mut rep = RrReport {
            count: 10,
            reps: 2,
            ..Default::default()
        };
        for r in 0..2 {
            rep.samples.push(RrSample {
                config: "kernel".into(),
                rep: r,
                rr: Some(rr(20.0)),
                ..Default::default()
            });
            rep.samples.push(RrSample {
                config: "weir-busy+breakdown".into(),
                rep: r,
                rr: Some(rr(20.0 + 10.0 * r as f64)),
                stages: vec![
                    stage("rx_wait", 1000, 5000 + 1000 * r as u64),
                    stage("pass", 2000, 3000),
                    stage("tx_kick", 4000, 9000),
                ],
                ..Default::default()
            });
        }
        let md = rep.markdown();
        assert!(
            md.contains(
                "| weir-busy+breakdown | 10.0 | 25.0 [20.0–30.0] | 30.0 | 1.25 [1.00–1.50] |"
            ),
            "{md}"
        );
        assert!(
            md.contains("| 1.0 / 5.5 [5.0–6.0] | 2.0 / 3.0 | 4.0 / 9.0 | 22 |"),
            "{md}"
        );
        assert!(
            md.contains("| kernel | 10.0 | 20.0 | 30.0 | 1.00 | — | — | — | — |"),
            "{md}"
        );
    }
}
