//! `weir-perf idle`: adaptive polling's idle handback (issue 22, part 2).
//! Two nodes whose dataplanes' workers share one core (the paper's
//! inter-node placement), run with several `--idle-spin-us` /
//! `--idle-yield` settings and against the kernel's vxlan overlay, rounds
//! interleaved: inter-node TCP RR (app2 on n1 → app1 on n2), intra-node RR
//! and 64-byte UDP pps (app2 → app3, both on n1), and the cores consumed
//! during the inter-node RR (a worker that hands its core back consumes
//! less while the ping-pong waits).
#![forbid(unsafe_code)]

use std::fmt::Write as _;
use std::net::{SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::cpu::{CpuSnap, CpuUse};
use crate::report::Host;
use crate::rounds::{cell, stats};
use crate::rr::{self, RrParams, RrResult};
use crate::udp::{self, UdpParams, UdpResult, PAYLOAD_64B_FRAME};
use crate::weir::WeirCluster;
use crate::{paper, pin, stop};

const UDP_PORT: u16 = 9000;
const RR_PORT: u16 = 9001;

/// One weir setting: `--idle-spin-us SPIN --idle-yield YIELD`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Variant {
    pub spin_us: u64,
    pub yield_core: bool,
}

impl Variant {
    /// `SPIN` (yield on) or `SPIN:noyield` / `SPIN:yield`.
    pub fn parse(s: &str) -> anyhow::Result<Variant> {
        let (n, y) = s.split_once(':').unwrap_or((s, "yield"));
        let yield_core = match y {
            "yield" => true,
            "noyield" => false,
            _ => anyhow::bail!("variant {s:?}: want SPIN, SPIN:yield or SPIN:noyield"),
        };
        Ok(Variant {
            spin_us: n
                .trim()
                .parse()
                .with_context(|| format!("variant {s:?}: spin µs"))?,
            yield_core,
        })
    }

    pub fn label(&self) -> String {
        format!(
            "weir-spin{}{}",
            self.spin_us,
            if self.yield_core { "+yield" } else { "" }
        )
    }
}

#[derive(Clone, Debug)]
pub struct IdleOptions {
    pub out: PathBuf,
    pub reps: usize,
    pub variants: Vec<Variant>,
    /// Round trips per RR run.
    pub count: u64,
    pub window: Duration,
    pub load_core: usize,
    pub worker_core: usize,
    pub weir: PathBuf,
    /// Skip the kernel vxlan reference.
    pub no_kernel: bool,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct IdleSample {
    pub config: String,
    pub rep: usize,
    pub inter_rr: Option<RrResult>,
    /// Cores consumed during the inter-node RR.
    pub inter_rr_cpu: Option<CpuUse>,
    pub intra_rr: Option<RrResult>,
    pub intra_udp: Option<UdpResult>,
    /// weir's workers' received frames over the sample (0 for the kernel).
    pub weir_rx: u64,
    /// Sleeps of weir's workers over the sample.
    pub weir_sleeps: u64,
    pub error: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct IdleReport {
    pub host_start: Option<Host>,
    pub host_end: Option<Host>,
    pub reps: usize,
    pub count: u64,
    pub window_s: f64,
    pub load_core: usize,
    pub worker_core: usize,
    pub samples: Vec<IdleSample>,
}

fn sleeps(v: &serde_json::Value) -> u64 {
    v["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|n| {
            n["status"]["dataplane"]["workers"]
                .as_array()
                .into_iter()
                .flatten()
        })
        .filter_map(|w| w["sleeps"].as_u64())
        .sum()
}

fn measure(c: &weir_topo::Cluster, o: &IdleOptions, s: &mut IdleSample) -> anyhow::Result<()> {
    let pod = |n: &str| c.pod("paper", n).with_context(|| format!("pod paper/{n}"));
    let (app1, app2, app3) = (pod("app1")?, pod("app2")?, pod("app3")?);
    let ip = |p: &weir_topo::RealizedPod| p.ipv4.context("pod without IPv4");
    let rp = RrParams {
        count: o.count,
        warmup: (o.count / 10).max(1),
        load_core: o.load_core,
        timeout: Duration::from_secs(5),
    };
    let c0 = CpuSnap::now();
    s.inter_rr = Some(rr::run(
        &app2.netns,
        &app1.netns,
        SocketAddr::from((ip(app1)?, RR_PORT)),
        &rp,
    )?);
    s.inter_rr_cpu = Some(CpuSnap::now().since(&c0));
    s.intra_rr = Some(rr::run(
        &app2.netns,
        &app3.netns,
        SocketAddr::from((ip(app3)?, RR_PORT)),
        &rp,
    )?);
    let up = UdpParams {
        payload: PAYLOAD_64B_FRAME,
        batch: 64,
        warmup: Duration::from_millis(300),
        window: o.window,
        load_core: o.load_core,
    };
    s.intra_udp = Some(udp::run(
        &app2.netns,
        &app3.netns,
        SocketAddrV4::new(ip(app3)?, UDP_PORT),
        &up,
    )?);
    Ok(())
}

fn sample(
    o: &IdleOptions,
    manifest: &std::path::Path,
    kernel: bool,
    v: Option<&Variant>,
    round: usize,
) -> IdleSample {
    let config = v.map_or("kernel-vxlan".to_string(), Variant::label);
    let mut s = IdleSample {
        config: config.clone(),
        rep: round,
        ..Default::default()
    };
    let r = (|| -> anyhow::Result<()> {
        let spin = v.map(|v| v.spin_us.to_string()).unwrap_or_default();
        let yld = v.map(|v| v.yield_core.to_string()).unwrap_or_default();
        let extra: Vec<&str> = if kernel {
            vec![]
        } else {
            vec!["--idle-spin-us", &spin, "--idle-yield", &yld]
        };
        let name = format!(
            "pil{}{}",
            std::process::id(),
            if kernel { "k" } else { "w" }
        );
        let w = WeirCluster::up_with(
            &o.weir,
            &name,
            manifest,
            &o.worker_core.to_string(),
            "adaptive",
            &extra,
        )?;
        let (c0, s0) = if kernel {
            Default::default()
        } else {
            let st = w.status()?;
            (crate::weir::Counters::from_status(&st), sleeps(&st))
        };
        measure(&w.cluster, o, &mut s)?;
        if !kernel {
            // The workers publish every 250 ms.
            std::thread::sleep(Duration::from_millis(600));
            let st = w.status()?;
            s.weir_rx = crate::weir::Counters::from_status(&st)
                .since(&c0)
                .rx_packets;
            s.weir_sleeps = sleeps(&st).saturating_sub(s0);
            let udp = s.intra_udp.as_ref().map_or(0, |u| u.received);
            anyhow::ensure!(
                s.weir_rx >= udp && s.weir_rx > 0,
                "weir's workers received {} frames, app3 read {udp}: the load did not cross weir",
                s.weir_rx
            );
        }
        Ok(())
    })();
    if let Err(e) = r {
        s.error = Some(format!("{e:#}"));
    }
    eprintln!("round {}: {config} done", round + 1);
    s
}

pub fn run(o: &IdleOptions) -> anyhow::Result<IdleReport> {
    let ncores = pin::cores();
    anyhow::ensure!(
        o.load_core < ncores && o.worker_core < ncores && o.load_core != o.worker_core,
        "need two distinct cores (load {}, worker {}); this machine has {ncores}",
        o.load_core,
        o.worker_core
    );
    anyhow::ensure!(!o.variants.is_empty(), "no --variants");
    std::fs::create_dir_all(&o.out)?;
    let out = std::fs::canonicalize(&o.out)?;
    let mk = out.join("idle-kernel.yaml");
    let mw = out.join("idle-weir.yaml");
    std::fs::write(&mk, paper::manifests_2n(true))?;
    std::fs::write(&mw, paper::manifests_2n(false))?;
    let mut rep = IdleReport {
        host_start: Some(Host::at(o.load_core, o.worker_core)),
        reps: o.reps.max(1),
        count: o.count,
        window_s: o.window.as_secs_f64(),
        load_core: o.load_core,
        worker_core: o.worker_core,
        ..Default::default()
    };
    for round in 0..rep.reps {
        stop::check()?;
        if !o.no_kernel {
            rep.samples.push(sample(o, &mk, true, None, round));
        }
        // Interleaved: the variants' order rotates by one each round.
        let n = o.variants.len();
        for i in 0..n {
            stop::check()?;
            let v = &o.variants[(i + round) % n];
            rep.samples.push(sample(o, &mw, false, Some(v), round));
        }
    }
    rep.host_end = Some(Host::at(o.load_core, o.worker_core));
    std::fs::write(out.join("idle.json"), serde_json::to_vec_pretty(&rep)?)?;
    std::fs::write(out.join("idle.md"), rep.markdown())?;
    Ok(rep)
}

type Pick = fn(&IdleSample) -> Option<f64>;

impl IdleReport {
    fn configs(&self) -> Vec<&str> {
        let mut v: Vec<&str> = Vec::new();
        for s in &self.samples {
            if !v.contains(&s.config.as_str()) {
                v.push(&s.config);
            }
        }
        v
    }

    fn of<'a>(&'a self, c: &'a str) -> impl Iterator<Item = &'a IdleSample> + 'a {
        self.samples.iter().filter(move |s| s.config == c)
    }

    /// Per round: `f(c) ÷ f(base)` of the same round.
    fn ratio(&self, c: &str, base: &str, f: Pick) -> String {
        cell(
            stats(self.of(c).filter_map(|x| {
                let b = f(self
                    .of(base)
                    .find(|y| y.rep == x.rep && y.error.is_none())?)?;
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
            "# weir-perf idle\n\nHost: kernel {}, {} cores, load average {} at start, {} at end. Two nodes (app2, app3 on n1; app1 on n2), both nodes' weir workers on core {} (`--poll adaptive`), load on core {}; kernel-vxlan: both nodes `weir.dev/dataplane: kernel`. TCP RR {} round trips, UDP 64 B {:.1} s windows, {} round(s) interleaved. Cells: median [min–max]; ratios per round.\n",
            h.kernel,
            h.cpus,
            h.loadavg,
            he,
            self.worker_core,
            self.load_core,
            self.count,
            self.window_s,
            self.reps
        );
        let _ = writeln!(s, "{}\n", crate::wake::note(h.wake.as_ref()));
        let _ = writeln!(
            s,
            "| config | inter RR p50 µs | inter RR p99 µs | inter p50 ÷ kernel-vxlan | cores used in inter RR | intra RR p50 µs | intra UDP rx pps | intra pps ÷ first variant | worker sleeps |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|");
        let first = self
            .configs()
            .into_iter()
            .find(|c| c.starts_with("weir"))
            .unwrap_or("—")
            .to_string();
        for c in self.configs() {
            let m = |f: Pick, d: usize| cell(stats(self.of(c).filter_map(f)), d);
            let weir = c.starts_with("weir");
            let _ = writeln!(
                s,
                "| {c} | {} | {} | {} | {} | {} | {} | {} | {} |",
                m(|x| x.inter_rr.as_ref().map(|r| r.p50_us), 1),
                m(|x| x.inter_rr.as_ref().map(|r| r.p99_us), 1),
                self.ratio(c, "kernel-vxlan", |x| x.inter_rr.as_ref().map(|r| r.p50_us)),
                m(|x| x.inter_rr_cpu.as_ref().map(|u| u.cores), 2),
                m(|x| x.intra_rr.as_ref().map(|r| r.p50_us), 1),
                m(|x| x.intra_udp.as_ref().map(|u| u.received_pps), 0),
                if weir {
                    self.ratio(c, &first, |x| x.intra_udp.as_ref().map(|u| u.received_pps))
                } else {
                    "—".into()
                },
                if weir {
                    m(|x| x.error.is_none().then_some(x.weir_sleeps as f64), 0)
                } else {
                    "—".into()
                },
            );
        }
        let _ = writeln!(
            s,
            "\nweir-spinN = `--idle-spin-us N --idle-yield false` (N = 50: the spin before issue 22 part 2, which also waited 256 empty rounds); +yield = `--idle-yield true` (sched_yield on every empty round while spinning). cores used = busy fraction of both cores over the inter-node RR (load and workers)."
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
    fn variants_parse() {
        assert_eq!(
            Variant::parse("50:noyield").unwrap(),
            Variant {
                spin_us: 50,
                yield_core: false
            }
        );
        let v = Variant::parse("10").unwrap();
        assert!(v.yield_core);
        assert_eq!(v.label(), "weir-spin10+yield");
        assert!(Variant::parse("x").is_err());
        assert!(Variant::parse("5:maybe").is_err());
    }
}
