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
        out.push_str(&drops_line(dp));
        out.push_str(&frames_line(dp));
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

/// The kernel's AF_XDP counters, as `weir status` names them, with their
/// JSON field: frames the kernel dropped at weir's sockets are weir's drops.
const KERNEL_DROPS: [(&str, &str); 4] = [
    ("fill_ring_empty", "fill-ring-empty"),
    ("rx_ring_full", "rx-ring-full"),
    ("rx_dropped", "rx-dropped"),
    ("tx_invalid", "tx-invalid"),
];

/// `drops: REASON=N ...` (weir's reasons) then `kernel: ...` (the AF_XDP
/// sockets' counters), summed over workers; `drops: none` only when both
/// are empty.
fn drops_line(dp: &Value) -> String {
    let mut reasons: std::collections::BTreeMap<String, u64> = Default::default();
    let mut kernel = [0u64; KERNEL_DROPS.len()];
    for w in dp["workers"].as_array().into_iter().flatten() {
        for (k, c) in w["drops"].as_object().into_iter().flatten() {
            *reasons.entry(k.clone()).or_default() += c.as_u64().unwrap_or(0);
        }
        for (i, (field, _)) in KERNEL_DROPS.iter().enumerate() {
            kernel[i] += w["kernel"][field].as_u64().unwrap_or(0);
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
fn frames_line(dp: &Value) -> String {
    let mut sum = std::collections::BTreeMap::<&str, u64>::new();
    let mut floor = None;
    for w in dp["workers"].as_array().into_iter().flatten() {
        let f = &w["frames"];
        for k in [
            "total",
            "free",
            "fill",
            "tx",
            "held",
            "unaccounted",
            "sockets_hot",
        ] {
            *sum.entry(k).or_default() += f[k].as_u64().unwrap_or(0);
        }
        floor = floor.or(f["fill_floor"].as_u64());
    }
    if sum["total"] == 0 {
        return String::new();
    }
    let mut s = format!(
        "frames: {} free, {} on fill rings ({} per socket, {} sockets above), {} on tx, {} held, of {}",
        sum["free"],
        sum["fill"],
        floor.map_or("-".into(), |f| f.to_string()),
        sum["sockets_hot"],
        sum["tx"],
        sum["held"],
        sum["total"]
    );
    if sum["unaccounted"] > 0 {
        let _ = write!(s, ", {} UNACCOUNTED (leaked)", sum["unaccounted"]);
    }
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn status(drops: Value, kernel: Value) -> Value {
        json!({"cluster": "c", "generation": 1, "nodes": [{"node": "n1", "running": true,
            "status": {"generation": 1, "rx_pps": 0.0, "tx_pps": 0.0, "dataplane": {"poll": "adaptive",
            "workers": [{"id": 0, "core": 1, "generation": 1, "rx_packets": 5, "tx_packets": 5,
                "drops": drops, "kernel": kernel, "latency_ns": {},
                "frames": {"total": 100, "free": 60, "fill": 40, "tx": 0, "held": 0,
                    "unaccounted": 0, "fill_floor": 20, "sockets_hot": 0}}]}}}]})
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
