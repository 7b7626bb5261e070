//! `weir-perf encap-ab`: two weir binaries, A and B, on the two-node
//! topology of `paper`'s inter-node scenario (app2 on n1 → app1 on n2,
//! `weir up --encap vxlan|geneve`, no policy), rounds interleaved and the
//! order within a round alternating: inter-node 64-byte UDP pps, TCP bulk
//! (iperf3) and TCP RR p50/p99, per round B ÷ A. Made to measure one change
//! of the overlay's per-frame path against the binary before it (issue 22,
//! part 4: encapsulation without the memmove). Every sample proves the
//! traffic crossed weir (its workers' rx counters moved), else it is an
//! error, not a number.
#![forbid(unsafe_code)]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::report::Host;
use crate::rounds::cell;
use crate::stop;
use crate::weir::{Counters, WeirCluster};
use crate::wireguard::{self, WgOptions, WgReport, WgSample};

/// The run's parameters: `wg`'s windows, cores and mode, the two binaries
/// and the encapsulation.
#[derive(Debug, Clone)]
pub struct AbOptions {
    pub wg: WgOptions,
    pub a: PathBuf,
    pub b: PathBuf,
    /// `vxlan` or `geneve` (`weir up --encap`).
    pub encap: String,
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
    let (src, dst) = (g("app2")?, g("app1")?);
    let dst_ip = dst.ipv4.context("app1 has no IPv4")?;
    let c0 = Counters::from_status(&w.status()?);
    let mut s = WgSample::default();
    wireguard::measure(&o.wg, &src.netns, &dst.netns, dst_ip, &mut s);
    let c = Counters::from_status(&w.status()?).since(&c0);
    s.proof = format!(
        "weir workers rx {} tx {} packets, drops {}",
        c.rx_packets, c.tx_packets, c.drops
    );
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
        "Two nodes, app2 (n1) → app1 (n2), `weir up --encap {}`, no policy; A = `{}`, B = `{}`; workers in `{}` mode on core {}, generators on core {}. {} round(s), interleaved (order alternating); cells median [min–max]; B ÷ A per round. UDP window {:.1} s, {} RR round trips, bulk {} s.\n",
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
    for (label, g, d) in wireguard::METRICS {
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
