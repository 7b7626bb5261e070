//! Results: absolute numbers per configuration, and ratios against the
//! kernel path of the same run (the headline on a shared machine), as JSON
//! and as a Markdown table.
#![forbid(unsafe_code)]

use std::fmt::Write;

use serde::{Deserialize, Serialize};

use crate::fastpath::Options;
use crate::rr::RrResult;
use crate::udp::UdpResult;
use crate::weir::Counters;

/// The machine, at one moment.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Host {
    pub kernel: String,
    pub cpus: usize,
    /// `/proc/loadavg`'s first three fields.
    pub loadavg: String,
    pub unix_time: u64,
    /// What waking an idle core costs here ([`crate::wake`]).
    #[serde(default)]
    pub wake: Option<crate::wake::Wake>,
}

impl Host {
    /// The machine now, with the wake-up probe between cores 0 and 1 (the
    /// standard placement).
    pub fn now() -> Host {
        Host::at(0, 1)
    }

    /// The machine now, with the wake-up probe between the run's load core
    /// and worker core (its placement, `--load-core` / `--worker-core`).
    pub fn at(load_core: usize, worker_core: usize) -> Host {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        Host {
            kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
            cpus: crate::pin::cores(),
            loadavg: read("/proc/loadavg")
                .split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" "),
            unix_time: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            wake: crate::wake::probe_placement(load_core, worker_core),
        }
    }
}

/// Where things ran.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Placement {
    /// Generator, receiver, RR client and RR server.
    pub load_core: usize,
    /// weir's worker (`weir up --cores`).
    pub worker_core: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Params {
    pub window_s: f64,
    pub warmup_s: f64,
    pub udp_batch: usize,
    pub udp_payload: usize,
    pub rr_count: u64,
    pub rr_warmup: u64,
}

/// This configuration divided by the kernel path of the same run: above 1
/// is better for pps, below 1 is better for latency.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Ratios {
    pub udp_pps: f64,
    pub rr_p50: f64,
    pub rr_p90: f64,
    pub rr_p99: f64,
    pub rr_p999: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ConfigResult {
    /// `kernel`, `weir-busy`, `weir-adaptive`, ...
    pub name: String,
    /// weir's polling mode (None for the kernel path).
    pub poll: Option<String>,
    /// None when the run failed (see `errors`).
    pub udp: Option<UdpResult>,
    pub rr: Option<RrResult>,
    /// weir's worker counters over the UDP run (warm-up included).
    pub weir_udp: Option<Counters>,
    /// weir's worker counters over the RR run (warm-up included).
    pub weir_rr: Option<Counters>,
    /// A new TCP connection a → b still completed after the UDP flood.
    pub forwards_after_udp: bool,
    pub errors: Vec<String>,
    pub vs_kernel: Ratios,
}

impl ConfigResult {
    pub fn new(
        name: &str,
        poll: Option<&str>,
        udp: anyhow::Result<UdpResult>,
        rr: anyhow::Result<RrResult>,
        weir_udp: Option<Counters>,
        weir_rr: Option<Counters>,
        forwards_after_udp: bool,
    ) -> ConfigResult {
        let mut errors = Vec::new();
        let udp = udp.map_err(|e| errors.push(format!("udp: {e:#}"))).ok();
        let rr = rr.map_err(|e| errors.push(format!("rr: {e:#}"))).ok();
        if !forwards_after_udp {
            errors.push("no TCP connection a → b completed after the UDP flood: the path stopped forwarding".into());
        }
        ConfigResult {
            name: name.to_string(),
            poll: poll.map(str::to_string),
            udp,
            rr,
            weir_udp,
            weir_rr,
            forwards_after_udp,
            errors,
            vs_kernel: Ratios::default(),
        }
    }

    /// What limited the pps number, judged from the counters.
    pub fn udp_limit(&self, ceiling: &UdpResult) -> &'static str {
        let Some(u) = &self.udp else {
            return "no number (the run failed)";
        };
        if u.rcvbuf_errors as f64 > 0.01 * u.sent as f64 {
            "receiver (pod b's socket buffer overflowed)"
        } else if u.delivered_ratio < 0.95 {
            "path (frames lost between pod a and pod b's socket)"
        } else if u.offered_pps < 0.9 * ceiling.offered_pps {
            "path via back-pressure on the sending core"
        } else {
            "generator (offered ≈ ceiling): a lower bound"
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    pub scenario: String,
    /// The clusters the run built (all removed at its end).
    pub clusters: Vec<String>,
    pub short: bool,
    pub host_start: Host,
    pub host_end: Host,
    pub placement: Placement,
    pub params: Params,
    /// The generator alone: the kernel-path cluster with `ip_forward=0`, so
    /// the node drops every datagram at IP input.
    pub generator_ceiling: UdpResult,
    pub configs: Vec<ConfigResult>,
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        0.0
    }
}

impl Report {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        opts: &Options,
        host_start: Host,
        host_end: Host,
        placement: Placement,
        params: Params,
        generator_ceiling: UdpResult,
        mut configs: Vec<ConfigResult>,
    ) -> Report {
        if let Some(k) = configs.iter().find(|c| c.poll.is_none()).cloned() {
            for c in &mut configs {
                let pps = |c: &ConfigResult| c.udp.as_ref().map_or(0.0, |u| u.received_pps);
                let q = |c: &ConfigResult, f: fn(&RrResult) -> f64| c.rr.as_ref().map_or(0.0, f);
                c.vs_kernel = Ratios {
                    udp_pps: ratio(pps(c), pps(&k)),
                    rr_p50: ratio(q(c, |r| r.p50_us), q(&k, |r| r.p50_us)),
                    rr_p90: ratio(q(c, |r| r.p90_us), q(&k, |r| r.p90_us)),
                    rr_p99: ratio(q(c, |r| r.p99_us), q(&k, |r| r.p99_us)),
                    rr_p999: ratio(q(c, |r| r.p999_us), q(&k, |r| r.p999_us)),
                };
            }
        }
        Report {
            scenario: "fastpath".into(),
            clusters: Vec::new(),
            short: opts.short,
            host_start,
            host_end,
            placement,
            params,
            generator_ceiling,
            configs,
        }
    }

    /// The Markdown table and the notes that go with it.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let p = &self.params;
        let _ = writeln!(
            s,
            "## weir-perf fastpath ({}): pod a → pod b, one node\n",
            if self.short { "short" } else { "full" }
        );
        let _ = writeln!(
            s,
            "Host: kernel {}, {} CPUs, loadavg {} at start, {} at end.  ",
            self.host_start.kernel,
            self.host_start.cpus,
            self.host_start.loadavg,
            self.host_end.loadavg
        );
        let cores: Vec<String> = self
            .configs
            .iter()
            .filter_map(|c| {
                c.weir_udp
                    .as_ref()
                    .map(|w| format!("{}: {:?}", c.name, w.worker_cores))
            })
            .collect();
        let _ = writeln!(
            s,
            "Placement: generator, receiver, RR client and server pinned to core {}; weir's worker pinned to core {} \
             (`weir up --cores {}`; cores reported by `weir status`: {}). The kernel path forwards in softirq, \
             on the sending core.  ",
            self.placement.load_core,
            self.placement.worker_core,
            self.placement.worker_core,
            if cores.is_empty() { "-".to_string() } else { cores.join(", ") }
        );
        let _ = writeln!(
            s,
            "UDP: {}-byte payload ({}-byte frames on the wire), `sendmmsg` batches of {}, {:.1} s window after {:.1} s warm-up. \
             RR: 1-byte TCP ping-pong on one connection, {} round trips after {} warm-up.\n",
            p.udp_payload,
            self.generator_ceiling.frame_bytes_on_wire,
            p.udp_batch,
            p.window_s,
            p.warmup_s,
            p.rr_count,
            p.rr_warmup
        );
        s.push_str(
            "| configuration | offered Mpps | received Mpps | received/offered | pps × kernel | RR p50 µs | p90 µs | p99 µs | p99.9 µs | p50 × kernel | p99 × kernel | weir rx / tx / drops (UDP run) | forwards after flood |\n",
        );
        s.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|\n");
        for c in &self.configs {
            let w = c.weir_udp.as_ref().map_or("-".to_string(), |w| {
                format!("{} / {} / {}", w.rx_packets, w.tx_packets, w.drops)
            });
            let udp = c
                .udp
                .as_ref()
                .map_or("failed | failed | - | -".to_string(), |u| {
                    format!(
                        "{:.3} | {:.3} | {:.2} | {:.2}",
                        u.offered_pps / 1e6,
                        u.received_pps / 1e6,
                        u.delivered_ratio,
                        c.vs_kernel.udp_pps
                    )
                });
            let rr =
                c.rr.as_ref()
                    .map_or("failed | - | - | - | - | -".to_string(), |r| {
                        format!(
                            "{:.1} | {:.1} | {:.1} | {:.1} | {:.2} | {:.2}",
                            r.p50_us,
                            r.p90_us,
                            r.p99_us,
                            r.p999_us,
                            c.vs_kernel.rr_p50,
                            c.vs_kernel.rr_p99
                        )
                    });
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} |",
                c.name,
                udp,
                rr,
                w,
                if c.forwards_after_udp {
                    "yes"
                } else {
                    "**no**"
                }
            );
        }
        let g = &self.generator_ceiling;
        let _ = writeln!(
            s,
            "\nGenerator ceiling: {:.3} Mpps offered when the node drops everything at IP input (kernel-path cluster, \
             `ip_forward=0`). On veth the sender's own core also runs the receive side of the hop (the veth \
             peer's softirq, and XDP for weir), so a path that costs more shows as a lower offered rate.\n",
            g.offered_pps / 1e6
        );
        s.push_str("What limited each pps number:\n\n");
        for c in &self.configs {
            if let Some(u) = &c.udp {
                let _ = writeln!(
                    s,
                    "- {}: {} (sent {}, received {}, pod b rcvbuf errors {}, send errors {})",
                    c.name,
                    c.udp_limit(g),
                    u.sent,
                    u.received,
                    u.rcvbuf_errors,
                    u.send_errors
                );
            }
            for e in &c.errors {
                let _ = writeln!(s, "- {}: **error**: {}", c.name, e);
            }
        }
        for c in &self.configs {
            if let Some(r) = &c.weir_rr {
                let _ = writeln!(
                    s,
                    "- {} RR run: weir rx {} / tx {} / drops {} (≥ 2 × {} round trips expected)",
                    c.name,
                    r.rx_packets,
                    r.tx_packets,
                    r.drops,
                    p.rr_count + p.rr_warmup
                );
            }
        }
        s
    }
}
