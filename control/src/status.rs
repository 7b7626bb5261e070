//! `weir status`: per-node, per-worker counters, rates, drops by reason and
//! time-in-dataplane percentiles, from each node's dataplane.

use crate::get::table;
use serde_json::Value;
use std::fmt::Write;

fn u(v: &Value) -> String {
    v.as_u64().map_or("-".into(), |n| n.to_string())
}

fn us(v: &Value) -> String {
    v.as_u64()
        .map_or("-".into(), |ns| format!("{:.1}", ns as f64 / 1000.0))
}

/// Renders the daemon's status reply as text.
pub fn render(v: &Value) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "cluster {}  generation {}",
        v["cluster"].as_str().unwrap_or("?"),
        u(&v["generation"])
    );
    for n in v["nodes"].as_array().into_iter().flatten() {
        let name = n["node"].as_str().unwrap_or("?");
        if n["kernel"] == true {
            let _ = writeln!(
                out,
                "\nnode {name}: kernel dataplane (weir.dev/dataplane: kernel) — no weir here; the kernel forwards and its vxlan device talks to the weir nodes"
            );
            continue;
        }
        if !n["running"].as_bool().unwrap_or(false) {
            let _ = writeln!(
                out,
                "\nnode {name}: dataplane NOT RUNNING ({}) — its pod interfaces drop all traffic (fail closed)",
                n["error"].as_str().unwrap_or("")
            );
            continue;
        }
        let s = &n["status"];
        let dp = &s["dataplane"];
        let _ = writeln!(
            out,
            "\nnode {name}: generation {}  poll {}  rx {:.0} pps  tx {:.0} pps",
            u(&s["generation"]),
            dp["poll"].as_str().unwrap_or("?"),
            s["rx_pps"].as_f64().unwrap_or(0.0),
            s["tx_pps"].as_f64().unwrap_or(0.0),
        );
        let rows: Vec<Vec<String>> = dp["workers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|w| {
                let drops: u64 = w["drops"]
                    .as_object()
                    .map(|m| m.values().filter_map(Value::as_u64).sum())
                    .unwrap_or(0);
                let l = &w["latency_ns"];
                vec![
                    u(&w["id"]),
                    u(&w["core"]),
                    u(&w["generation"]),
                    u(&w["rx_packets"]),
                    u(&w["tx_packets"]),
                    drops.to_string(),
                    us(&l["p50"]),
                    us(&l["p99"]),
                    us(&l["p999"]),
                    us(&l["max"]),
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
        // Drops by reason, summed over workers.
        let mut reasons: std::collections::BTreeMap<String, u64> = Default::default();
        for w in dp["workers"].as_array().into_iter().flatten() {
            for (k, c) in w["drops"].as_object().into_iter().flatten() {
                *reasons.entry(k.clone()).or_default() += c.as_u64().unwrap_or(0);
            }
        }
        reasons.retain(|_, c| *c > 0);
        let workers = dp["workers"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        let l7 = |k: &str| -> u64 { workers.iter().filter_map(|w| w["l7"][k].as_u64()).sum() };
        if l7("flows_max") > 0 {
            let _ = writeln!(
                out,
                "l7: {} of {} connections under HTTP rules inspected, {} head buffers, {} held frames",
                l7("flows"),
                l7("flows_max"),
                l7("head_buffers"),
                l7("held_frames"),
            );
        }
        if reasons.is_empty() {
            out.push_str("drops: none\n");
        } else {
            let list: Vec<String> = reasons.iter().map(|(k, c)| format!("{k}={c}")).collect();
            let _ = writeln!(out, "drops: {}", list.join(" "));
        }
        // The fragment table, once fragments were seen.
        let f = &dp["conntrack"]["fragments"];
        if f["datagrams"].as_u64().unwrap_or(0) > 0 {
            let _ = writeln!(
                out,
                "fragments: {} datagrams, {} later fragments followed, {} evicted, {}/{} entries",
                u(&f["datagrams"]),
                u(&f["followed"]),
                u(&f["evictions"]),
                u(&f["entries"]),
                u(&f["size"]),
            );
        }
    }
    out
}
