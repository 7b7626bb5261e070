//! `weir-perf percore`: pps per consumed core, old build against new (issue
//! 22: the pps-per-core goals). The paper's UDP placement (64-byte
//! datagrams app2 → app1, generator and receiver on the load core, one
//! weir worker on the worker core), every `--variant` (a weir binary and
//! its `weir up` arguments) and the kernel path in every round, rounds
//! interleaved (the variants' order reversed in odd rounds). Per sample:
//! received pps, the cores consumed (`/proc/stat`, all cores), pps per
//! consumed core, the worker's CPU time and busy time per frame and its
//! coalescing sleeps (`weir status`), then TCP request/response p50/p99 on
//! the same cluster, then HTTP keep-alive (wrk, 8 connections, against the
//! harness's server in app1; `--http-secs 0` skips it) and TCP bulk (iperf3,
//! one stream; `--bulk-secs 0` skips it). A weir sample whose worker
//! received fewer frames than app1 read, or sent fewer than two per round
//! trip or request, or fewer than the bulk's segments, is an error, not a
//! number. Writes percore.{md,json}.
#![forbid(unsafe_code)]

use std::fmt::Write as _;
use std::net::{SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use weir_model::status::WorkerStatus;

use crate::cpu::{CpuSnap, CpuUse};
use crate::http::HttpServer;
use crate::kernel::KernelPath;
use crate::report::Host;
use crate::rounds::{cell, stats};
use crate::rr::{self, RrParams, RrResult};
use crate::scale::workers_of;
use crate::tools::{self, BulkResult, HttpResult};
use crate::udp::{self, UdpParams, UdpResult, PAYLOAD_64B_FRAME};
use crate::weir::WeirCluster;
use crate::{paper, pin, stop};

const UDP_PORT: u16 = 9000;
const RR_PORT: u16 = 9100;
const HTTP_PORT: u16 = 8080;
/// wrk's concurrent keep-alive connections (the paper's HTTP table's).
const HTTP_CONNECTIONS: u32 = 8;

/// One weir configuration: a label, a binary, `weir up` arguments.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Variant {
    pub label: String,
    pub bin: PathBuf,
    pub args: Vec<String>,
}

impl Variant {
    /// `LABEL=PATH[,ARG...]` (the arguments comma-separated, e.g.
    /// `new50=target/release/weir,--coalesce-us,50`).
    pub fn parse(s: &str) -> anyhow::Result<Variant> {
        let (label, rest) = s
            .split_once('=')
            .with_context(|| format!("--variant {s:?}: want LABEL=PATH[,ARG...]"))?;
        let mut it = rest.split(',');
        let bin = it.next().unwrap_or_default();
        anyhow::ensure!(
            !label.is_empty() && !bin.is_empty(),
            "--variant {s:?}: want LABEL=PATH[,ARG...]"
        );
        anyhow::ensure!(
            label != "kernel",
            "--variant {s:?}: the label kernel is the kernel path's"
        );
        Ok(Variant {
            label: label.to_string(),
            bin: PathBuf::from(bin),
            args: it.filter(|a| !a.is_empty()).map(str::to_string).collect(),
        })
    }
}

#[derive(Clone, Debug)]
pub struct PercoreOptions {
    pub out: PathBuf,
    pub reps: usize,
    pub window: Duration,
    pub warmup: Duration,
    pub batch: usize,
    pub load_core: usize,
    pub worker_core: usize,
    pub mode: String,
    pub rr_count: u64,
    /// Seconds of wrk per sample (0: no HTTP leg).
    pub http_secs: u64,
    /// Seconds of iperf3 per sample (0: no bulk leg).
    pub bulk_secs: u64,
    pub variants: Vec<Variant>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PercoreSample {
    /// `kernel` or a variant's label.
    pub config: String,
    pub rep: usize,
    pub udp: Option<UdpResult>,
    /// Over warm-up and window.
    pub cpu: Option<CpuUse>,
    /// The worker's counters moved over warm-up and window.
    pub rx_packets: u64,
    pub busy_ns: u64,
    pub cpu_ns: u64,
    pub coalesce_sleeps: u64,
    pub rr: Option<RrResult>,
    #[serde(default)]
    pub http: Option<HttpResult>,
    #[serde(default)]
    pub bulk: Option<BulkResult>,
    pub error: Option<String>,
}

impl PercoreSample {
    fn pps(&self) -> Option<f64> {
        self.udp.as_ref().map(|u| u.received_pps)
    }

    fn cores(&self) -> Option<f64> {
        self.cpu.as_ref().map(|c| c.cores)
    }

    fn pps_per_core(&self) -> Option<f64> {
        let c = self.cores()?;
        (c > 0.0).then(|| self.pps().unwrap_or(0.0) / c)
    }

    fn busy_ns_per_frame(&self) -> Option<f64> {
        (self.rx_packets > 0).then(|| self.busy_ns as f64 / self.rx_packets as f64)
    }

    /// The worker thread's CPU time per received frame (ns).
    fn cpu_ns_per_frame(&self) -> Option<f64> {
        (self.rx_packets > 0).then(|| self.cpu_ns as f64 / self.rx_packets as f64)
    }

    /// The worker thread's share of a core over warm-up and window.
    fn worker_cores(&self) -> Option<f64> {
        let u = self.udp.as_ref()?;
        let wall = (u.window_s * 1e9) as u64;
        (self.rx_packets > 0 && wall > 0).then(|| self.cpu_ns as f64 / wall as f64)
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PercoreReport {
    pub host_start: Option<Host>,
    pub host_end: Option<Host>,
    pub reps: usize,
    pub window_s: f64,
    pub load_core: usize,
    pub worker_core: usize,
    pub mode: String,
    pub variants: Vec<Variant>,
    pub samples: Vec<PercoreSample>,
}

fn udp_p(o: &PercoreOptions) -> UdpParams {
    UdpParams {
        payload: PAYLOAD_64B_FRAME,
        batch: o.batch,
        warmup: o.warmup,
        window: o.window,
        load_core: o.load_core,
    }
}

fn rr_p(o: &PercoreOptions) -> RrParams {
    RrParams {
        count: o.rr_count,
        warmup: (o.rr_count / 10).max(1),
        load_core: o.load_core,
        timeout: Duration::from_secs(2),
    }
}

/// app2's and app1's netns and app1's IPv4 address.
fn pods(c: &weir_topo::Cluster) -> anyhow::Result<(String, String, std::net::Ipv4Addr)> {
    let src = c.pod("paper", "app2").context("pod paper/app2")?;
    let dst = c.pod("paper", "app1").context("pod paper/app1")?;
    let ip = dst.ipv4.context("app1 has no IPv4")?;
    Ok((src.netns.clone(), dst.netns.clone(), ip))
}

/// UDP app2 → app1, the cores consumed meanwhile recorded in `s`.
fn udp_leg(
    c: &weir_topo::Cluster,
    o: &PercoreOptions,
    s: &mut PercoreSample,
) -> anyhow::Result<UdpResult> {
    let (src, dst, ip) = pods(c)?;
    let c0 = CpuSnap::now();
    let u = udp::run(&src, &dst, SocketAddrV4::new(ip, UDP_PORT), &udp_p(o))?;
    s.cpu = Some(CpuSnap::now().since(&c0));
    Ok(u)
}

/// RR app2 → app1.
fn rr_leg(c: &weir_topo::Cluster, o: &PercoreOptions) -> anyhow::Result<RrResult> {
    let (src, dst, ip) = pods(c)?;
    rr::run(&src, &dst, SocketAddr::from((ip, RR_PORT)), &rr_p(o))
}

/// wrk app2 → app1 (`None` with `--http-secs 0`).
fn http_leg(c: &weir_topo::Cluster, o: &PercoreOptions) -> anyhow::Result<Option<HttpResult>> {
    if o.http_secs == 0 {
        return Ok(None);
    }
    let (src, dst, ip) = pods(c)?;
    let _srv = HttpServer::start(&dst, SocketAddr::from((ip, HTTP_PORT)), o.load_core)?;
    let url = format!("http://{ip}:{HTTP_PORT}/public/x");
    let h = tools::wrk(&src, &url, o.http_secs, HTTP_CONNECTIONS, o.load_core)?;
    anyhow::ensure!(
        h.requests > 0 && h.errors == 0,
        "wrk: {} requests, {} errors",
        h.requests,
        h.errors
    );
    Ok(Some(h))
}

/// iperf3 app2 → app1 (`None` with `--bulk-secs 0`).
fn bulk_leg(c: &weir_topo::Cluster, o: &PercoreOptions) -> anyhow::Result<Option<BulkResult>> {
    if o.bulk_secs == 0 {
        return Ok(None);
    }
    let (src, dst, ip) = pods(c)?;
    tools::iperf3(&src, &dst, ip, o.bulk_secs, o.load_core).map(Some)
}

/// UDP app2 → app1 (pps, cores), then RR, HTTP and bulk app2 → app1.
fn measure(
    c: &weir_topo::Cluster,
    o: &PercoreOptions,
    s: &mut PercoreSample,
) -> anyhow::Result<()> {
    s.udp = Some(udp_leg(c, o, s)?);
    s.rr = Some(rr_leg(c, o)?);
    s.http = http_leg(c, o)?;
    s.bulk = bulk_leg(c, o)?;
    Ok(())
}

fn kernel_sample(o: &PercoreOptions, spec: &weir_topo::ClusterSpec, rep: usize) -> PercoreSample {
    let mut s = PercoreSample {
        config: "kernel".into(),
        rep,
        ..Default::default()
    };
    let r = (|| -> anyhow::Result<()> {
        let k = KernelPath::build(&format!("ppc{}k", std::process::id()), spec)?;
        k.enable_forwarding()?;
        measure(&k.cluster, o, &mut s)
    })();
    if let Err(e) = r {
        s.error = Some(format!("{e:#}"));
    }
    s
}

fn weir_sample(
    o: &PercoreOptions,
    manifest: &std::path::Path,
    v: &Variant,
    rep: usize,
) -> PercoreSample {
    let mut s = PercoreSample {
        config: v.label.clone(),
        rep,
        ..Default::default()
    };
    let r = (|| -> anyhow::Result<()> {
        let extra: Vec<&str> = v.args.iter().map(String::as_str).collect();
        let name = format!("ppc{}w", std::process::id());
        let w = WeirCluster::up_with(
            &v.bin,
            &name,
            manifest,
            &o.worker_core.to_string(),
            &o.mode,
            &extra,
        )?;
        // A first status: the workers publish every 250 ms.
        std::thread::sleep(Duration::from_millis(300));
        let w0 = workers_of(&w.status()?);
        let u = udp_leg(&w.cluster, o, &mut s)?;
        std::thread::sleep(Duration::from_millis(300));
        let w1 = workers_of(&w.status()?);
        let sum =
            |ws: &[WorkerStatus], f: fn(&WorkerStatus) -> u64| -> u64 { ws.iter().map(f).sum() };
        let d = |f: fn(&WorkerStatus) -> u64| sum(&w1, f).saturating_sub(sum(&w0, f));
        s.rx_packets = d(|w| w.rx_packets);
        s.busy_ns = d(|w| w.time.busy_ns);
        s.cpu_ns = d(|w| w.time.cpu_ns);
        s.coalesce_sleeps = d(|w| w.time.coalesce_sleeps);
        // The proof the datagrams crossed weir.
        anyhow::ensure!(
            s.rx_packets >= u.received && s.rx_packets > 0,
            "weir's worker received {} frames, app1 read {}: the load did not cross weir",
            s.rx_packets,
            u.received
        );
        s.udp = Some(u);
        let tx0 = sum(&workers_of(&w.status()?), |w| w.tx_packets);
        let r = rr_leg(&w.cluster, o)?;
        let tx = sum(&workers_of(&w.status()?), |w| w.tx_packets).saturating_sub(tx0);
        anyhow::ensure!(
            tx >= 2 * r.count,
            "weir's worker sent {tx} frames for {} round trips: the RR did not cross weir",
            r.count
        );
        s.rr = Some(r);
        let tx0 = sum(&workers_of(&w.status()?), |w| w.tx_packets);
        s.http = http_leg(&w.cluster, o)?;
        let tx = sum(&workers_of(&w.status()?), |w| w.tx_packets).saturating_sub(tx0);
        if let Some(h) = &s.http {
            anyhow::ensure!(
                tx >= 2 * h.requests,
                "weir's worker sent {tx} frames for {} HTTP requests: wrk did not cross weir",
                h.requests
            );
        }
        let rx0 = sum(&workers_of(&w.status()?), |w| w.rx_packets);
        s.bulk = bulk_leg(&w.cluster, o)?;
        let rx = sum(&workers_of(&w.status()?), |w| w.rx_packets).saturating_sub(rx0);
        if let Some(b) = &s.bulk {
            // At least one 64 KiB GSO segment's worth of MTU frames per
            // 64 KiB moved (the worker sees wire-size frames).
            let bytes = b.gbit_per_s * 1e9 / 8.0 * b.seconds;
            anyhow::ensure!(
                rx as f64 >= bytes / 9000.0 && rx > 0,
                "weir's worker received {rx} frames for {bytes:.0} bytes of bulk: iperf3 did not cross weir"
            );
        }
        Ok(())
    })();
    if let Err(e) = r {
        s.error = Some(format!("{e:#}"));
    }
    s
}

pub fn run(o: &PercoreOptions) -> anyhow::Result<PercoreReport> {
    let ncores = pin::cores();
    anyhow::ensure!(
        o.load_core < ncores && o.worker_core < ncores,
        "cores out of range: load {}, worker {}; this machine has {ncores}",
        o.load_core,
        o.worker_core
    );
    anyhow::ensure!(!o.variants.is_empty(), "no --variant to measure");
    std::fs::create_dir_all(&o.out)?;
    let out = std::fs::canonicalize(&o.out)?;
    let manifest = out.join("percore.yaml");
    std::fs::write(&manifest, paper::MANIFESTS)?;
    let spec = weir_topo::manifest::parse_str(paper::MANIFESTS, "percore.yaml")
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut rep = PercoreReport {
        host_start: Some(Host::at(o.load_core, o.worker_core)),
        reps: o.reps.max(1),
        window_s: o.window.as_secs_f64(),
        load_core: o.load_core,
        worker_core: o.worker_core,
        mode: o.mode.clone(),
        variants: o.variants.clone(),
        ..Default::default()
    };
    for round in 0..rep.reps {
        stop::check()?;
        rep.samples.push(kernel_sample(o, &spec, round));
        eprintln!("round {}: kernel done", round + 1);
        let mut order: Vec<&Variant> = o.variants.iter().collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for v in order {
            stop::check()?;
            rep.samples.push(weir_sample(o, &manifest, v, round));
            eprintln!("round {}: {} done", round + 1, v.label);
        }
    }
    rep.host_end = Some(Host::at(o.load_core, o.worker_core));
    std::fs::write(out.join("percore.json"), serde_json::to_vec_pretty(&rep)?)?;
    std::fs::write(out.join("percore.md"), rep.markdown())?;
    Ok(rep)
}

impl PercoreReport {
    fn of<'a>(&'a self, c: &'a str) -> impl Iterator<Item = &'a PercoreSample> + 'a {
        self.samples
            .iter()
            .filter(move |s| s.config == c && s.error.is_none())
    }

    fn col(&self, c: &str, f: impl Fn(&PercoreSample) -> Option<f64>, d: usize) -> String {
        cell(stats(self.of(c).filter_map(f)), d)
    }

    /// Per round: `f(c) ÷ f(base)` of the same round.
    fn ratio(&self, c: &str, base: &str, f: fn(&PercoreSample) -> Option<f64>) -> String {
        cell(
            stats(self.of(c).filter_map(|x| {
                let b = f(self.of(base).find(|s| s.rep == x.rep)?)?;
                (b > 0.0).then_some(f(x)? / b)
            })),
            2,
        )
    }

    /// [`Self::ratio`] for a weir row, a dash for the kernel's.
    fn wratio(&self, c: &str, base: &str, f: fn(&PercoreSample) -> Option<f64>) -> String {
        match c {
            "kernel" => "—".to_string(),
            _ => self.ratio(c, base, f),
        }
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
            "# weir-perf percore\n\nHost: kernel {}, {} cores, load average {} at start, {} at end. 64-byte UDP app2 → app1 (one flow), generator and receiver on core {}, weir `--poll {}` with its worker on core {}; {:.1} s windows; TCP RR on the same cluster; {} round(s) interleaved. Cells: median [min–max] over the rounds; ratios per round.\n",
            h.kernel, h.cpus, h.loadavg, he, self.load_core, self.mode, self.worker_core, self.window_s, self.reps
        );
        let _ = writeln!(s, "{}\n", crate::wake::note(h.wake.as_ref()));
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
        let _ = writeln!(
            s,
            "\n| config | rx pps | offered pps | cores used | pps per core | ÷ kernel pps/core | ÷ {first} pps | ÷ {first} pps/core | worker cores | worker CPU ns/frame | worker busy ns/frame | coalescing sleeps/s | RR p50 µs | RR p99 µs | ÷ {first} RR p50 | ÷ {first} RR p99 |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
        );
        let mut configs = vec!["kernel".to_string()];
        configs.extend(self.variants.iter().map(|v| v.label.clone()));
        for c in &configs {
            let weir = c != "kernel";
            let dash = || "—".to_string();
            let _ = writeln!(
                s,
                "| {c} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                self.col(c, |x| x.pps(), 0),
                self.col(c, |x| x.udp.as_ref().map(|u| u.offered_pps), 0),
                self.col(c, |x| x.cores(), 2),
                self.col(c, |x| x.pps_per_core(), 0),
                self.wratio(c, "kernel", |x| x.pps_per_core()),
                self.wratio(c, first, |x| x.pps()),
                self.wratio(c, first, |x| x.pps_per_core()),
                if weir { self.col(c, |x| x.worker_cores(), 2) } else { dash() },
                if weir { self.col(c, |x| x.cpu_ns_per_frame(), 0) } else { dash() },
                if weir { self.col(c, |x| x.busy_ns_per_frame(), 0) } else { dash() },
                if weir {
                    self.col(
                        c,
                        |x| x.udp.as_ref().map(|u| x.coalesce_sleeps as f64 / u.window_s),
                        0,
                    )
                } else {
                    dash()
                },
                self.col(c, |x| x.rr.as_ref().map(|r| r.p50_us), 1),
                self.col(c, |x| x.rr.as_ref().map(|r| r.p99_us), 1),
                self.wratio(c, first, |x| x.rr.as_ref().map(|r| r.p50_us)),
                self.wratio(c, first, |x| x.rr.as_ref().map(|r| r.p99_us)),
            );
        }
        if self.samples.iter().any(|x| x.http.is_some()) {
            let _ = writeln!(
                s,
                "\nHTTP keep-alive: wrk, 1 thread, {HTTP_CONNECTIONS} connections, GET /public/x app2 → app1 (the harness's server), no policy.\n\n| config | req/s | p50 µs | p99 µs | ÷ kernel req/s | ÷ {first} req/s | ÷ {first} p50 | ÷ {first} p99 |\n|---|---|---|---|---|---|---|---|"
            );
            for c in &configs {
                let _ = writeln!(
                    s,
                    "| {c} | {} | {} | {} | {} | {} | {} | {} |",
                    self.col(c, |x| x.http.as_ref().map(|h| h.requests_per_s), 0),
                    self.col(c, |x| x.http.as_ref().map(|h| h.p50_us), 1),
                    self.col(c, |x| x.http.as_ref().map(|h| h.p99_us), 1),
                    self.wratio(c, "kernel", |x| x.http.as_ref().map(|h| h.requests_per_s)),
                    self.wratio(c, first, |x| x.http.as_ref().map(|h| h.requests_per_s)),
                    self.wratio(c, first, |x| x.http.as_ref().map(|h| h.p50_us)),
                    self.wratio(c, first, |x| x.http.as_ref().map(|h| h.p99_us)),
                );
            }
        }
        if self.samples.iter().any(|x| x.bulk.is_some()) {
            let _ = writeln!(
                s,
                "\nTCP bulk: iperf3, one stream app2 → app1, no policy.\n\n| config | Gb/s | retransmits | ÷ kernel Gb/s | ÷ {first} Gb/s |\n|---|---|---|---|---|"
            );
            for c in &configs {
                let gb = |x: &PercoreSample| x.bulk.as_ref().map(|b| b.gbit_per_s);
                let _ = writeln!(
                    s,
                    "| {c} | {} | {} | {} | {} |",
                    self.col(c, gb, 2),
                    self.col(c, |x| x.bulk.as_ref().map(|b| b.retransmits as f64), 0),
                    self.wratio(c, "kernel", gb),
                    self.wratio(c, first, gb),
                );
            }
        }
        let errs: Vec<&PercoreSample> = self.samples.iter().filter(|x| x.error.is_some()).collect();
        if !errs.is_empty() {
            let _ = writeln!(s, "\nErrors:");
            for e in errs {
                let _ = writeln!(
                    s,
                    "- round {} {}: {}",
                    e.rep + 1,
                    e.config,
                    e.error.as_deref().unwrap_or("")
                );
            }
        }
        let _ = writeln!(
            s,
            "\nworker cores: the worker thread's CPU time over the UDP run (warm-up and window) ÷ the window; worker busy ns/frame: wall time in rounds that moved frames ÷ frames (the TX kick, with the receiving pod's stack when RPS is off, is inside it)."
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variants_parse_and_bad_ones_are_refused() {
        let v = Variant::parse("new50=target/release/weir,--coalesce-us,50").unwrap();
        assert_eq!(v.label, "new50");
        assert_eq!(v.bin, PathBuf::from("target/release/weir"));
        assert_eq!(v.args, ["--coalesce-us", "50"]);
        let v = Variant::parse("old=/tmp/weir-old").unwrap();
        assert!(v.args.is_empty());
        for bad in ["noequals", "=bin", "x=", "kernel=/bin/weir"] {
            assert!(Variant::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn table_has_ratios_per_round() {
        let mk = |config: &str, rep: usize, pps: f64, cores: f64, p50: f64| PercoreSample {
            config: config.into(),
            rep,
            udp: Some(UdpResult {
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
            }),
            cpu: Some(CpuUse {
                per_core: vec![],
                cores,
            }),
            rx_packets: pps as u64,
            busy_ns: 1000 * pps as u64,
            cpu_ns: 500_000_000,
            coalesce_sleeps: 10,
            rr: Some(RrResult {
                count: 10,
                p50_us: p50,
                p90_us: p50,
                p99_us: 2.0 * p50,
                p999_us: 2.0 * p50,
                max_us: 2.0 * p50,
                mean_us: p50,
                rate_per_s: 1.0,
            }),
            http: Some(HttpResult {
                requests_per_s: 10.0 * pps,
                p50_us: p50,
                p99_us: 3.0 * p50,
                requests: 100,
                errors: 0,
                connections: HTTP_CONNECTIONS,
            }),
            bulk: Some(BulkResult {
                gbit_per_s: pps / 100.0,
                retransmits: 7,
                seconds: 1.0,
            }),
            error: None,
        };
        let rep = PercoreReport {
            reps: 1,
            window_s: 1.0,
            variants: vec![
                Variant::parse("old=a").unwrap(),
                Variant::parse("new=b,--coalesce-us,50").unwrap(),
            ],
            samples: vec![
                mk("kernel", 0, 200.0, 1.0, 10.0),
                mk("old", 0, 200.0, 2.0, 20.0),
                mk("new", 0, 300.0, 1.5, 30.0),
            ],
            ..Default::default()
        };
        let md = rep.markdown();
        assert!(
            md.contains("| new | 300 | 300 | 1.50 | 200 | 1.00 | 1.50 | 2.00 | 0.50 | 1666667 | 1000 | 10 | 30.0 | 60.0 | 1.50 | 1.50 |"),
            "{md}"
        );
        assert!(
            md.contains("| kernel | 200 | 200 | 1.00 | 200 | — |"),
            "{md}"
        );
        assert!(
            md.contains("| new | 3000 | 30.0 | 90.0 | 1.50 | 1.50 | 1.50 | 1.50 |"),
            "{md}"
        );
        assert!(md.contains("| new | 3.00 | 7 | 1.50 | 1.50 |"), "{md}");
    }
}
