//! `weir-perf encap-ab`: two weir binaries, A and B, on the two-node
//! topology of `paper`'s inter-node scenario (app2 on n1 → app1 on n2,
//! `weir up --encap vxlan|geneve`, no policy), rounds interleaved and the
//! order within a round alternating: inter-node 64-byte UDP pps, TCP bulk
//! (iperf3) and TCP RR p50/p99, per round B ÷ A. Made to measure one change
//! of the overlay's per-frame path against the binary before it (issue 22,
//! part 4: encapsulation without the memmove). `--path intra` measures
//! the same between app3 and app2 on n1 instead (one node, no overlay).
//! Beside the bulk figure each sample records what the fill rings did
//! during the bulk transfer alone (the kernel's `fill_ring_empty`, the
//! retransmits; [`FillCounters`]). Every sample proves the traffic crossed
//! weir (its workers' rx counters moved), else it is an error, not a
//! number.
#![forbid(unsafe_code)]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::report::Host;
use crate::rounds::cell;
use crate::stop;
use crate::weir::{Counters, FillCounters, WeirCluster};
use crate::wireguard::{self, Getter, WgOptions, WgReport, WgSample};

/// The run's parameters: `wg`'s windows, cores and mode, the two binaries
/// and the encapsulation.
#[derive(Debug, Clone)]
pub struct AbOptions {
    pub wg: WgOptions,
    pub a: PathBuf,
    pub b: PathBuf,
    /// `vxlan` or `geneve` (`weir up --encap`).
    pub encap: String,
    /// Between the nodes (app2 on n1 → app1 on n2), or on one node (app3
    /// → app2, both on n1).
    pub path: AbPath,
}

/// Which two pods `encap-ab` measures between.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbPath {
    Inter,
    Intra,
}

impl std::str::FromStr for AbPath {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "inter" => Ok(AbPath::Inter),
            "intra" => Ok(AbPath::Intra),
            _ => Err(format!("{s}: expected inter or intra")),
        }
    }
}

impl AbPath {
    /// (source, destination) pod names.
    fn pods(self) -> (&'static str, &'static str) {
        match self {
            AbPath::Inter => ("app2", "app1"),
            AbPath::Intra => ("app3", "app2"),
        }
    }

    fn describe(self) -> &'static str {
        match self {
            AbPath::Inter => "two nodes, app2 (n1) → app1 (n2)",
            AbPath::Intra => "one node, app3 → app2 (both on n1; the overlay idle)",
        }
    }
}

/// Runs the rounds; the report's configurations are `A` and `B`.
pub fn run(o: &AbOptions) -> anyhow::Result<WgReport> {
    let w = &o.wg;
    std::fs::create_dir_all(&w.out)?;
    let mut rep = WgReport {
        host_start: Some(Host::now()),
        short: w.short,
        weir_poll: w.mode.clone(),
        reps: w.reps,
        load_core: w.load_core,
        worker_core: w.worker_core,
        window_s: w.window.as_secs_f64(),
        rr_count: w.rr_count,
        bulk_secs: w.bulk_secs,
        ..Default::default()
    };
    let file = w.out.join("encap-ab-2n.yaml");
    std::fs::write(&file, wireguard::manifests())?;
    for round in 0..w.reps {
        let order = match round % 2 {
            0 => [("A", &o.a), ("B", &o.b)],
            _ => [("B", &o.b), ("A", &o.a)],
        };
        for (cfg, bin) in order {
            stop::check()?;
            eprintln!(
                "weir-perf encap-ab: round {}/{}: {cfg} ({})",
                round + 1,
                w.reps,
                bin.display()
            );
            match sample(o, bin, &file) {
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
    std::fs::write(
        w.out.join("encap-ab.json"),
        serde_json::to_vec_pretty(&rep)?,
    )?;
    std::fs::write(w.out.join("encap-ab.md"), markdown(o, &rep))?;
    Ok(rep)
}

fn sample(o: &AbOptions, bin: &Path, file: &Path) -> anyhow::Result<WgSample> {
    // One name for A and B (their samples follow one another, each
    // cluster removed before the next): the name shapes interface names
    // and addresses, and a per-binary name put a bias on one side (TCP RR
    // p50 higher in the B slot whichever binary ran there).
    let name = format!("eab{}", std::process::id() % 100_000);
    let w = WeirCluster::up_with(
        bin,
        &name,
        file,
        &o.wg.worker_core.to_string(),
        &o.wg.mode,
        &["--encap", &o.encap],
    )?;
    let g = |n: &str| {
        w.cluster
            .pod("paper", n)
            .with_context(|| format!("pod paper/{n} missing"))
    };
    let (src_name, dst_name) = o.path.pods();
    let (src, dst) = (g(src_name)?, g(dst_name)?);
    let dst_ip = dst
        .ipv4
        .with_context(|| format!("{dst_name} has no IPv4"))?;
    let c0 = Counters::from_status(&w.status()?);
    let mut s = WgSample::default();
    let (sn, dn) = (&src.netns, &dst.netns);
    wireguard::measure_rr(&o.wg, sn, dn, dst_ip, &mut s);
    stop::check()?;
    // The fill rings over the bulk transfer alone (the UDP flood after it
    // overruns the worker on purpose).
    let f0 = FillCounters::from_status(&w.status()?);
    wireguard::measure_bulk(&o.wg, sn, dn, dst_ip, &mut s);
    let fill = FillCounters::from_status(&w.status()?).since(&f0);
    stop::check()?;
    wireguard::measure_udp(&o.wg, sn, dn, dst_ip, &mut s);
    let c = Counters::from_status(&w.status()?).since(&c0);
    s.proof = format!(
        "weir workers rx {} tx {} packets, drops {}; during bulk (retransmits {}): {}",
        c.rx_packets,
        c.tx_packets,
        c.drops,
        s.bulk.as_ref().map_or(0, |b| b.retransmits),
        fill.line()
    );
    s.bulk_fill = Some(fill);
    if c.rx_packets == 0 {
        s.errors
            .push("weir's workers received nothing: the traffic did not cross weir".into());
    }
    drop(w);
    Ok(s)
}

/// The table: A, B, B ÷ A per round; then the proofs.
pub fn markdown(o: &AbOptions, r: &WgReport) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# weir-perf encap-ab\n");
    let _ = writeln!(
        s,
        "{}, `weir up --encap {}`, no policy; A = `{}`, B = `{}`; workers in `{}` mode on core {}, generators on core {}. {} round(s), interleaved (order alternating); cells median [min–max]; B ÷ A per round. UDP window {:.1} s, {} RR round trips, bulk {} s.\n",
        o.path.describe(),
        o.encap,
        o.a.display(),
        o.b.display(),
        r.weir_poll,
        r.worker_core,
        r.load_core,
        r.reps,
        r.window_s,
        r.rr_count,
        r.bulk_secs,
    );
    let _ = writeln!(s, "| metric | A | B | B ÷ A |");
    let _ = writeln!(s, "|---|---|---|---|");
    for (label, g, d) in wireguard::METRICS.into_iter().chain(FILL_METRICS) {
        let _ = writeln!(
            s,
            "| {label} | {} | {} | {} |",
            cell(r.agg("A", g), d),
            cell(r.agg("B", g), d),
            cell(r.ratio("B", "A", g), 2),
        );
    }
    let _ = writeln!(s, "\nProof per sample:\n");
    r.proof_and_errors(&mut s);
    s
}

fn retransmits(s: &WgSample) -> Option<f64> {
    s.bulk.as_ref().map(|b| b.retransmits as f64)
}
fn fill_ring_empty(s: &WgSample) -> Option<f64> {
    s.bulk_fill.as_ref().map(|f| f.fill_ring_empty as f64)
}
fn rx_ring_full(s: &WgSample) -> Option<f64> {
    s.bulk_fill.as_ref().map(|f| f.rx_ring_full as f64)
}

/// The bulk transfer's losses: (label, getter, decimals).
const FILL_METRICS: [(&str, Getter, usize); 3] = [
    ("TCP bulk retransmits", retransmits, 0),
    ("kernel fill_ring_empty during bulk", fill_ring_empty, 0),
    ("kernel rx_ring_full during bulk", rx_ring_full, 0),
];
