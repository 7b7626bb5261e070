//! What waking an idle core costs on this machine, printed beside every
//! latency figure. On a VM whose idle vCPUs halt (a VM exit), a thread on
//! another core blocked in `read` is woken by an IPI the host delivers by
//! scheduling the vCPU again: on the project's Firecracker machines that
//! was ~28 µs a wake-up (a cross-core pipe round trip 56 µs p50, against
//! 2.5 µs on one core), with the guest's halt polling off on the kernel
//! command line (`haltpoll.guest_halt_poll_ns=0`); with it on, 3.7 µs.
//! A request/response through weir crosses cores (load core → worker core
//! → load core, each way) and pays it; the kernel path's does not (the
//! whole round trip runs on the load core). So an RR ratio against the
//! kernel means little without this figure (docs/performance.md, "Waking
//! an idle core").
//!
//! `--halt-poll-ns N` (all subcommands) sets the guest's halt polling
//! (`/sys/module/haltpoll/parameters/guest_halt_poll_ns`) for the run and
//! puts the old value back when the run ends (also on an error or ^C; not
//! on SIGKILL: then write the old value back by hand).
#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use weir_model::status::{IdleCores, GUEST_HALT_POLL as HALT_POLL};

/// Round trips per probe (a tenth more as warm-up).
const ROUND_TRIPS: usize = 2000;

/// One probe: 1-byte ping-pong over a Unix socket pair, the peer thread
/// blocked in `read` between messages.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Wake {
    /// Both threads on `cores.0`, µs per round trip, p50.
    pub same_core_p50_us: f64,
    /// The peer on `cores.1`: two cross-core wake-ups per round trip.
    pub cross_core_p50_us: f64,
    pub cross_core_p99_us: f64,
    pub cores: (usize, usize),
    /// `guest_halt_poll_ns` during the probe (None: no haltpoll module).
    pub halt_poll_ns: Option<u64>,
    /// `cpuidle`'s driver (`haltpoll`, `intel_idle`, `none`, ...).
    pub cpuidle_driver: Option<String>,
}

/// Probes `a` (the caller's core during the probe) against `b`; None if
/// either core cannot be pinned or the socket pair fails.
pub fn probe(a: usize, b: usize) -> Option<Wake> {
    let same = ping_pong(a, a)?;
    let cross = ping_pong(a, b)?;
    let idle = IdleCores::read();
    Some(Wake {
        same_core_p50_us: pct(&same, 50),
        cross_core_p50_us: pct(&cross, 50),
        cross_core_p99_us: pct(&cross, 99),
        cores: (a, b),
        halt_poll_ns: idle.guest_halt_poll_ns,
        cpuidle_driver: idle.cpuidle_driver,
    })
}

/// The probe between a run's load core and worker core, if both exist
/// and differ (one core: nothing crosses cores).
pub fn probe_placement(load_core: usize, worker_core: usize) -> Option<Wake> {
    let n = crate::pin::cores();
    (load_core != worker_core && load_core < n && worker_core < n)
        .then(|| probe(load_core, worker_core))
        .flatten()
}

/// Sorted round-trip times, µs, of a ping-pong from core `a` to a peer
/// pinned to core `b` (run in a scoped thread pinned to `a`, so the
/// caller's own affinity is left alone).
fn ping_pong(a: usize, b: usize) -> Option<Vec<f64>> {
    let (mut near, mut far) = UnixStream::pair().ok()?;
    std::thread::scope(|s| {
        let peer = s.spawn(move || -> Option<()> {
            crate::pin::pin(b).ok()?;
            let mut c = [0u8; 1];
            for _ in 0..ROUND_TRIPS + ROUND_TRIPS / 10 {
                far.read_exact(&mut c).ok()?;
                far.write_all(&c).ok()?;
            }
            Some(())
        });
        let me = s.spawn(move || -> Option<Vec<f64>> {
            crate::pin::pin(a).ok()?;
            let mut c = [1u8; 1];
            let mut rtt = Vec::with_capacity(ROUND_TRIPS);
            for i in 0..ROUND_TRIPS + ROUND_TRIPS / 10 {
                let t = Instant::now();
                near.write_all(&c).ok()?;
                near.read_exact(&mut c).ok()?;
                if i >= ROUND_TRIPS / 10 {
                    rtt.push(t.elapsed().as_secs_f64() * 1e6);
                }
            }
            rtt.sort_by(f64::total_cmp);
            Some(rtt)
        });
        let rtt = me.join().ok().flatten();
        // A failed side drops its end: the other's read or write fails.
        let ok = peer.join().ok().flatten();
        rtt.filter(|_| ok.is_some())
    })
}

fn pct(sorted: &[f64], p: usize) -> f64 {
    sorted
        .get((sorted.len() * p / 100).min(sorted.len().saturating_sub(1)))
        .copied()
        .unwrap_or(0.0)
}

/// One sentence for a report's header.
pub fn note(w: Option<&Wake>) -> String {
    let Some(w) = w else {
        return "Wake-up cost: not measured.".to_string();
    };
    let poll = match (w.halt_poll_ns, w.cpuidle_driver.as_deref()) {
        (Some(ns), d) => format!(
            "guest halt polling {ns} ns (cpuidle {})",
            d.unwrap_or("unknown")
        ),
        (None, Some(d)) => format!("no guest halt polling (cpuidle {d})"),
        (None, None) => "no guest halt polling".to_string(),
    };
    format!(
        "Wake-up cost (1-byte ping-pong, peer blocked in read): round trip {:.1} µs on one core, {:.1} µs p50 / {:.1} µs p99 between cores {} and {}; {poll}. A round trip through weir wakes the other core up to four times, the kernel path's none (docs/performance.md, \"Waking an idle core\").",
        w.same_core_p50_us, w.cross_core_p50_us, w.cross_core_p99_us, w.cores.0, w.cores.1
    )
}

/// `--halt-poll-ns`: the guest's halt polling set for the run, the old
/// value written back on drop.
#[derive(Debug)]
pub struct HaltPoll {
    old: u64,
}

impl HaltPoll {
    /// Sets `guest_halt_poll_ns` to `ns`; an error if this kernel has no
    /// haltpoll module or the write is refused (needs root).
    pub fn set(ns: u64) -> anyhow::Result<HaltPoll> {
        let old = IdleCores::read().guest_halt_poll_ns.ok_or_else(|| {
            anyhow::anyhow!(
                "--halt-poll-ns: {HALT_POLL} is missing (no cpuidle-haltpoll in this kernel: not a KVM guest, or the module is not loaded)"
            )
        })?;
        std::fs::write(HALT_POLL, ns.to_string())
            .map_err(|e| anyhow::anyhow!("--halt-poll-ns: writing {HALT_POLL}: {e}"))?;
        eprintln!("guest halt polling: {old} → {ns} ns for this run");
        Ok(HaltPoll { old })
    }
}

impl Drop for HaltPoll {
    fn drop(&mut self) {
        match std::fs::write(HALT_POLL, self.old.to_string()) {
            Ok(()) => eprintln!("guest halt polling: back to {} ns", self.old),
            Err(e) => eprintln!(
                "guest halt polling: could not write {} back to {HALT_POLL}: {e}",
                self.old
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_sorted_samples() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(pct(&v, 50), 51.0);
        assert_eq!(pct(&v, 99), 100.0);
        assert_eq!(pct(&[], 50), 0.0);
    }

    #[test]
    fn the_probe_measures_both_placements() {
        // Ping-pong works on any machine (one core: the cross probe runs
        // on core 0 too); no timing is asserted.
        let b = usize::from(crate::pin::cores() >= 2);
        let w = probe(0, b).expect("probe");
        assert!(w.same_core_p50_us > 0.0 && w.cross_core_p50_us > 0.0);
        assert!(w.cross_core_p99_us >= w.cross_core_p50_us);
        assert_eq!(w.cores, (0, b));
        let n = note(Some(&w));
        assert!(n.contains("between cores 0 and"), "{n}");
        assert_eq!(note(None), "Wake-up cost: not measured.");
    }
}
