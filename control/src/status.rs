//! `weir status`: per-node, per-worker counters, rates, drops by reason and
//! time-in-dataplane percentiles, from each node's dataplane.

use crate::get::table;
use std::fmt::Write;
use weir_model::ipc::ClusterStatus;
use weir_model::status::{DataplaneStatus, KernelDrops};

fn us(ns: u64) -> String {
    format!("{:.1}", ns as f64 / 1000.0)
}

/// Renders the daemon's status reply as text.
pub fn render(v: &ClusterStatus) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "cluster {}  generation {}", v.cluster, v.generation);
    if let Some(c) = &v.pod_rx_cpus {
        let _ = write!(out, "pod RX steering (RPS, --pod-rx-cpus): {c}");
        if let Some(d) = v.pod_rx_backlog_dropped {
            let _ = write!(
                out,
                "  (backlog drops on those CPUs since boot, node-wide: {d})"
            );
        }
        out.push('\n');
    }
    for n in &v.nodes {
        let name = &n.node;
        if n.kernel {
            let _ = writeln!(
                out,
                "\nnode {name}: kernel dataplane (weir.dev/dataplane: kernel) — no weir here; the kernel forwards and its vxlan device talks to the weir nodes"
            );
            continue;
        }
        let (true, Some(s)) = (n.running, &n.status) else {
            let _ = writeln!(
                out,
                "\nnode {name}: dataplane NOT RUNNING ({}) — its pod interfaces drop all traffic (fail closed)",
                n.error.as_deref().unwrap_or("")
            );
            if let Some(h) = &n.host_egress {
                out.push_str(&crate::host_egress::render(h));
            }
            continue;
        };
        let dp = s.dataplane.clone().unwrap_or_default();
        let poll = s.dataplane.as_ref().map_or("?", |d| d.poll.as_str());
        let _ = writeln!(
            out,
            "\nnode {name}: generation {}  poll {poll}  rx {:.0} pps  tx {:.0} pps",
            s.generation, s.rx_pps, s.tx_pps,
        );
        out.push_str(&times_line(s, &dp, now_unix_ns()));
        if dp.totals.nat_port_remaps > 0 {
            let _ = writeln!(
                out,
                "Service NAT: {} new flow(s) left with a remapped source port (the client's port was in use toward another ClusterIP on the same backend)",
                dp.totals.nat_port_remaps
            );
        }
        if let Some(h) = &n.host_egress {
            out.push_str(&crate::host_egress::render(h));
        }
        let rows: Vec<Vec<String>> = dp
            .workers
            .iter()
            .map(|w| {
                let drops: u64 = w.drops.values().sum();
                let l = &w.latency_ns;
                vec![
                    w.id.to_string(),
                    w.core.map_or("-".into(), |c| c.to_string()),
                    w.generation.to_string(),
                    w.rx_packets.to_string(),
                    w.tx_packets.to_string(),
                    drops.to_string(),
                    us(l.p50),
                    us(l.p99),
                    us(l.p999),
                    us(l.max),
                ]
            })
            .collect();
        out.push_str(&table(
            &[
                "WORKER",
                "CORE",
                "GEN",
                "RX",
                "TX",
                "DROPS",
                "P50(us)",
                "P99(us)",
                "P99.9(us)",
                "MAX(us)",
            ],
            &rows,
        ));
        // `weir up --latency-breakdown`: where each batch's time went.
        let stages: Vec<Vec<String>> = dp
            .workers
            .iter()
            .flat_map(|w| {
                w.breakdown.iter().map(move |st| {
                    let l = &st.ns;
                    vec![
                        w.id.to_string(),
                        st.stage.clone(),
                        l.count.to_string(),
                        us(l.p50),
                        us(l.p99),
                        us(l.p999),
                        us(l.max),
                    ]
                })
            })
            .collect();
        if !stages.is_empty() {
            let _ = writeln!(out, "latency breakdown per batch (--latency-breakdown):");
            out.push_str(&table(
                &[
                    "WORKER",
                    "STAGE",
                    "BATCHES",
                    "P50(us)",
                    "P99(us)",
                    "P99.9(us)",
                    "MAX(us)",
                ],
                &stages,
            ));
        }
        let l7 = |f: fn(&weir_model::status::L7Status) -> u64| -> u64 {
            dp.workers.iter().map(|w| f(&w.l7)).sum()
        };
        if l7(|l| l.flows_max) > 0 {
            let _ = writeln!(
                out,
                "l7: {} of {} connections under HTTP rules inspected, {} head buffers, {} held frames",
                l7(|l| l.flows),
                l7(|l| l.flows_max),
                l7(|l| l.head_buffers),
                l7(|l| l.held_frames),
            );
        }
        for p in &dp.wireguard {
            let age = match p.handshake_age_ms {
                Some(ms) => format!("handshake {}s ago", ms / 1000),
                None => "no handshake yet".to_string(),
            };
            let _ = writeln!(
                out,
                "wireguard peer {} ({}): {}, {age}, tx {} B, rx {} B",
                p.node, p.address, p.state, p.tx_bytes, p.rx_bytes
            );
        }
        out.push_str(&drops_line(&dp));
        out.push_str(&frames_line(&dp));
        out.push_str(&ports_mode(&dp));
        out.push_str(&ct_prefetch_line(&dp));
        let hk = &dp.config.housekeeping_cores;
        if !hk.is_empty() {
            let _ = writeln!(
                out,
                "other threads (control loop, checkpoint, status) on cores {}, off the workers'",
                crate::pod_rx::describe(hk)
            );
        }
        // The conntrack checkpoint (docs/reliability.md).
        let ct = &dp.conntrack;
        if ct.checkpoints + ct.checkpoint_errors + ct.restored + ct.restored_nat > 0 {
            let _ = writeln!(
                out,
                "checkpoint: restored {} conntrack + {} NAT entries at start; {} written ({} entries, {} B last), {} failed",
                ct.restored,
                ct.restored_nat,
                ct.checkpoints,
                ct.checkpoint_entries,
                ct.checkpoint_bytes,
                ct.checkpoint_errors,
            );
        }
        // The fragment table, once fragments were seen.
        let f = &dp.conntrack.fragments;
        if f.datagrams > 0 {
            let _ = writeln!(
                out,
                "fragments: {} datagrams, {} later fragments followed, {} evicted, {}/{} entries",
                f.datagrams, f.followed, f.evictions, f.entries, f.size,
            );
        }
    }
    if let Some(u) = &v.uplink {
        let _ = writeln!(out, "\n{u}");
    }
    if !v.services.is_empty() {
        let _ = writeln!(out, "\nservices in force: {}", v.services.len());
        for s in &v.services {
            let ips: Vec<String> = s.cluster_ips.iter().map(|i| i.to_string()).collect();
            let ips = if ips.is_empty() {
                "headless".to_string()
            } else {
                ips.join(",")
            };
            let _ = writeln!(
                out,
                "  {}  {ips}  {}/{} endpoints ready",
                s.service, s.ready, s.endpoints
            );
        }
    }
    out
}

fn now_unix_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// A duration for people: `850ms`, `42s`, `3m20s`, `5h07m`, `2d03h`.
fn human(ns: u64) -> String {
    let s = ns / 1_000_000_000;
    match s {
        0 => format!("{}ms", ns / 1_000_000),
        1..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h{:02}m", s / 3600, s / 60 % 60),
        _ => format!("{}d{:02}h", s / 86_400, s / 3600 % 24),
    }
}

/// `up 3m20s  snapshot applied 12s ago, 48ms after it was published` —
/// the time fields of `-o json` (`dataplane.uptime_ns`, `applied_unix_ns`,
/// `apply_latency_ns`).
fn times_line(s: &weir_model::ipc::NodeStatus, dp: &DataplaneStatus, now: u64) -> String {
    let mut parts = vec![format!("up {}", human(dp.uptime_ns))];
    if s.applied_unix_ns > 0 {
        parts.push(format!(
            "snapshot applied {} ago, {} after it was published",
            human(now.saturating_sub(s.applied_unix_ns)),
            human(s.apply_latency_ns)
        ));
    }
    format!("{}\n", parts.join("  "))
}

/// The kernel's AF_XDP counters, as `weir status` names them: frames the
/// kernel dropped at weir's sockets are weir's drops.
/// One kernel counter of a worker.
type KernelField = fn(&KernelDrops) -> u64;

const KERNEL_DROPS: [(KernelField, &str); 4] = [
    (|k| k.fill_ring_empty, "fill-ring-empty"),
    (|k| k.rx_ring_full, "rx-ring-full"),
    (|k| k.rx_dropped, "rx-dropped"),
    (|k| k.tx_invalid, "tx-invalid"),
];

/// `drops: REASON=N ...` (weir's reasons) then `kernel: ...` (the AF_XDP
/// sockets' counters), summed over workers; `drops: none` only when both
/// are empty.
fn drops_line(dp: &DataplaneStatus) -> String {
    let mut reasons: std::collections::BTreeMap<&str, u64> = Default::default();
    let mut kernel = [0u64; KERNEL_DROPS.len()];
    for w in &dp.workers {
        for (k, c) in &w.drops {
            *reasons.entry(k).or_default() += c;
        }
        for (i, (field, _)) in KERNEL_DROPS.iter().enumerate() {
            kernel[i] += field(&w.kernel);
        }
    }
    reasons.retain(|_, c| *c > 0);
    let mut parts: Vec<String> = reasons.iter().map(|(k, c)| format!("{k}={c}")).collect();
    let kparts: Vec<String> = KERNEL_DROPS
        .iter()
        .zip(kernel)
        .filter(|(_, c)| *c > 0)
        .map(|((_, slug), c)| format!("{slug}={c}"))
        .collect();
    if !kparts.is_empty() {
        parts.push(format!("kernel: {}", kparts.join(" ")));
    }
    if parts.is_empty() {
        "drops: none\n".to_string()
    } else {
        format!("drops: {}\n", parts.join(" "))
    }
}

/// `frames: free F  fill-rings L  tx T  held H  of N (floor X/socket)`,
/// summed over workers; an `unaccounted` count (a leak) only when nonzero.
fn frames_line(dp: &DataplaneStatus) -> String {
    let mut sum = weir_model::status::FrameStatus::default();
    let mut floor = None;
    for w in &dp.workers {
        let f = &w.frames;
        sum.total += f.total;
        sum.free += f.free;
        sum.fill += f.fill;
        sum.tx += f.tx;
        sum.held += f.held;
        sum.unaccounted += f.unaccounted;
        sum.sockets_hot += f.sockets_hot;
        floor = floor.or(Some(f.fill_floor));
    }
    if sum.total == 0 {
        return String::new();
    }
    let mut s = format!(
        "frames: {} free, {} on fill rings ({} per socket, {} sockets above), {} on tx, {} held, of {}",
        sum.free,
        sum.fill,
        floor.map_or("-".into(), |f| f.to_string()),
        sum.sockets_hot,
        sum.tx,
        sum.held,
        sum.total
    );
    if sum.unaccounted > 0 {
        let _ = write!(s, ", {} UNACCOUNTED (leaked)", sum.unaccounted);
    }
    s.push('\n');
    s
}

/// The conntrack prefetch (stage 0) of each worker and the flow census
/// that decides it under `--ct-prefetch auto` (docs/conntrack.md).
fn ct_prefetch_line(dp: &DataplaneStatus) -> String {
    let mode = dp.config.ct_prefetch;
    let mut out = format!("conntrack prefetch (--ct-prefetch {}):", mode.as_str());
    for w in &dp.workers {
        let c = &w.ct_prefetch;
        let _ = write!(out, " w{} {}", w.id, if c.on { "on" } else { "off" });
        if c.window > 0 {
            let _ = write!(
                out,
                " (≈{} flows in its last {} packets{})",
                c.flows,
                c.window,
                match c.switches {
                    0 => String::new(),
                    1 => ", switched once".to_string(),
                    n => format!(", switched {n} times"),
                }
            );
        }
    }
    out.push('\n');
    out
}

/// The AF_XDP socket mode of each port: one line per mode with its ports
/// (a node of 200 pods in copy mode is one line), and the busy-poll option.
fn ports_mode(dp: &DataplaneStatus) -> String {
    let mut by_mode: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
    for p in &dp.ports {
        let mode = if p.mode.is_empty() { "copy" } else { &p.mode };
        by_mode.entry(mode).or_default().push(&p.name);
    }
    let mut out = String::new();
    for (mode, ports) in by_mode {
        let _ = writeln!(out, "sockets {mode}: {}", ports.join(" "));
    }
    if let Some(b) = dp.ports.iter().filter_map(|p| p.tx_budget).min() {
        let how = if b > weir_model::status::KERNEL_TX_BUDGET {
            "XDP_MAX_TX_SKB_BUDGET"
        } else {
            "the kernel's default: no XDP_MAX_TX_SKB_BUDGET before Linux 6.17"
        };
        let _ = writeln!(out, "copy-mode TX: up to {b} frames per kick ({how})");
    }
    if dp.config.busy_poll {
        let _ = writeln!(
            out,
            "busy poll: SO_PREFER_BUSY_POLL, SO_BUSY_POLL, SO_BUSY_POLL_BUDGET set (--busy-poll)"
        );
    }
    if dp.poll == weir_model::status::PollMode::Adaptive && dp.config.idle_spin_us > 0 {
        let _ = writeln!(
            out,
            "adaptive: spins {} µs after the last frame{}, then sleeps in poll",
            dp.config.idle_spin_us,
            if dp.config.idle_yield {
                ", yielding the core each empty round"
            } else {
                ""
            }
        );
    }
    if dp.poll == weir_model::status::PollMode::Adaptive && dp.config.coalesce_us > 0 {
        let _ = writeln!(
            out,
            "adaptive: after a round of less than half a batch, sleeps up to {} µs to gather the next (--coalesce-us)",
            dp.config.coalesce_us
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    /// The daemon's reply, as JSON, read the way the CLI reads it.
    fn status(drops: Value, kernel: Value) -> ClusterStatus {
        let v = json!({"cluster": "c", "generation": 1, "nodes": [{"node": "n1", "running": true,
            "status": {"generation": 1, "rx_pps": 0.0, "tx_pps": 0.0, "dataplane": {"poll": "adaptive",
            "workers": [{"id": 0, "core": 1, "generation": 1, "rx_packets": 5, "tx_packets": 5,
                "drops": drops, "kernel": kernel, "latency_ns": {},
                "frames": {"total": 100, "free": 60, "fill": 40, "tx": 0, "held": 0,
                    "unaccounted": 0, "fill_floor": 20, "sockets_hot": 0}}]}}}]});
        serde_json::from_value(v).expect("a status reply")
    }

    #[test]
    fn adaptive_idle_spin_shown() {
        let mut st = status(json!({}), json!({}));
        let text = render(&st);
        // An old daemon's reply (no idle_spin_us) prints no spin line.
        assert!(!text.contains("adaptive: spins"), "{text}");
        let dp = dp_of(&mut st);
        dp.config.idle_spin_us = 20;
        dp.config.idle_yield = true;
        let text = render(&st);
        assert!(
            text.contains("adaptive: spins 20 µs after the last frame, yielding the core each empty round, then sleeps in poll"),
            "{text}"
        );
        assert!(!text.contains("--coalesce-us"), "{text}");
        let dp = dp_of(&mut st);
        dp.config.coalesce_us = 40;
        let text = render(&st);
        assert!(
            text.contains("adaptive: after a round of less than half a batch, sleeps up to 40 µs to gather the next (--coalesce-us)"),
            "{text}"
        );
    }

    /// The first node's dataplane status, to edit.
    fn dp_of(st: &mut ClusterStatus) -> &mut weir_model::status::DataplaneStatus {
        st.nodes[0]
            .status
            .as_mut()
            .unwrap()
            .dataplane
            .as_mut()
            .unwrap()
    }

    #[test]
    fn service_nat_remaps_shown_once_there_are_some() {
        let mut st = status(json!({}), json!({}));
        assert!(!render(&st).contains("Service NAT"));
        dp_of(&mut st).totals.nat_port_remaps = 3;
        let text = render(&st);
        assert!(
            text.contains("Service NAT: 3 new flow(s) left with a remapped source port"),
            "{text}"
        );
    }

    #[test]
    fn kernel_drops_are_drops() {
        let k =
            json!({"fill_ring_empty": 221, "rx_dropped": 221, "rx_ring_full": 0, "tx_invalid": 0});
        let text = render(&status(json!({}), k));
        assert!(!text.contains("drops: none"), "{text}");
        assert!(
            text.contains("drops: kernel: fill-ring-empty=221 rx-dropped=221\n"),
            "{text}"
        );
        let k = json!({"rx_ring_full": 3, "tx_invalid": 1});
        let text = render(&status(json!({"no-route": 2}), k));
        assert!(
            text.contains("drops: no-route=2 kernel: rx-ring-full=3 tx-invalid=1\n"),
            "{text}"
        );
    }

    /// `--latency-breakdown`: a table of the stages, only when present.
    #[test]
    fn breakdown_is_shown_when_on() {
        let text = render(&status(json!({}), json!({})));
        assert!(!text.contains("latency breakdown"), "{text}");
        let mut v = status(json!({}), json!({}));
        let n = v.nodes[0].status.as_mut().unwrap();
        let w = &mut n.dataplane.as_mut().unwrap().workers[0];
        w.breakdown = serde_json::from_value(json!([
            {"stage": "rx_wait", "ns": {"p50": 1500, "p99": 42000, "p999": 50000, "max": 60000, "count": 7}},
            {"stage": "tx_kick", "ns": {"p50": 9000, "p99": 12000, "count": 7}}
        ]))
        .unwrap();
        let text = render(&v);
        assert!(text.contains("latency breakdown per batch"), "{text}");
        let line = text.lines().find(|l| l.contains("rx_wait")).unwrap();
        assert!(line.contains("1.5") && line.contains("42.0"), "{text}");
        assert!(text
            .lines()
            .any(|l| l.contains("tx_kick") && l.contains("9.0")));
    }

    #[test]
    fn time_fields_are_shown() {
        let mut v = status(json!({}), json!({}));
        let now = 1_000_000 * 1_000_000_000u64;
        let n = v.nodes[0].status.as_mut().unwrap();
        n.applied_unix_ns = now - 12 * 1_000_000_000;
        n.apply_latency_ns = 48_000_000;
        let dp = n.dataplane.as_mut().unwrap();
        dp.uptime_ns = 200 * 1_000_000_000;
        let n = v.nodes[0].status.clone().unwrap();
        let line = times_line(&n, n.dataplane.as_ref().unwrap(), now);
        assert_eq!(
            line,
            "up 3m20s  snapshot applied 12s ago, 48ms after it was published\n"
        );
        assert!(render(&v).contains("\nup "), "{}", render(&v));
        assert_eq!(
            human(2 * 86_400 * 1_000_000_000 + 3 * 3_600_000_000_000),
            "2d03h"
        );
        assert_eq!(human(5 * 3_600_000_000_000 + 7 * 60_000_000_000), "5h07m");
    }

    #[test]
    fn no_drops_anywhere_is_none() {
        let k = json!({"fill_ring_empty": 0, "rx_dropped": 0, "rx_ring_full": 0, "tx_invalid": 0});
        let text = render(&status(json!({}), k));
        assert!(text.contains("drops: none\n"), "{text}");
        assert!(
            text.contains("frames: 60 free, 40 on fill rings (20 per socket, 0 sockets above), 0 on tx, 0 held, of 100\n"),
            "{text}"
        );
        assert!(!text.contains("UNACCOUNTED"));
    }
}
