//! `weir up --coalesce-us`: the adaptive worker's sleep under thin load.
//! The value reaches the dataplane and `weir status` shows it; under a thin
//! UDP stream through weir the worker takes coalescing sleeps (its counters
//! move, and the datagrams crossed weir: its TX counter moved by at least
//! what was sent); connections still work; a TCP connection with the
//! dataplane stopped does not (the traffic was weir's); bad values are
//! refused with one clear line and no cluster.

use std::process::Command;
use weir_tests::*;

/// Sends `n` 64-byte UDP datagrams to `dst`:9000 in bursts of 8 with a
/// 0.5 ms pause: a stream thinner than any worker, so rounds stay under
/// half a batch.
const THIN: &str = r#"
import socket, sys, time
dst, n = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sent = 0
while sent < n:
    for _ in range(8):
        s.sendto(b"x" * 18, (dst, 9000))
    sent += 8
    time.sleep(0.0005)
print(sent)
"#;

const DATAGRAMS: u64 = 2000;

fn worker_time(c: &TestCluster, field: &str) -> u64 {
    let st = c.status();
    node_status(&st, "node-1")["workers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|w| w["time"][field].as_u64().unwrap_or(0))
        .sum()
}

fn probe_ab(c: &TestCluster, ns: &str, timeout_ms: &str) -> serde_json::Value {
    let (from, to) = (format!("{ns}/a"), format!("{ns}/b"));
    c.probe(
        80,
        "TCP",
        &[
            "--from",
            &from,
            "--to",
            &to,
            "--timeout-ms",
            timeout_ms,
            "--attempts",
            "1",
        ],
    )
}

#[test]
fn coalesce_us_is_shown_sleeps_under_thin_load_and_traffic_crosses_weir() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let worker = (cpus - 1).to_string();
    let ns = unique_name("coa");
    let c = TestCluster::up_with(
        "coa",
        &simple_cluster(&ns, &["a", "b"]),
        &[
            "--cores",
            &worker,
            "--poll",
            "adaptive",
            "--coalesce-us",
            "40",
        ],
    );
    let st = c.status();
    assert_eq!(
        node_status(&st, "node-1")["config"]["coalesce_us"],
        40,
        "{st}"
    );
    let text = c.weir(&["status"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("sleeps up to 40 µs to gather the next (--coalesce-us)"),
        "{text}"
    );

    let topo = c.topology();
    let (a, b) = (
        topo.pod(&ns, "a").expect("pod a").clone(),
        topo.pod(&ns, "b").expect("pod b").clone(),
    );
    let b4 = b.ipv4.expect("v4").to_string();
    // Published every 250 ms: wait for one after the start.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let (sleeps0, ns0) = (
        worker_time(&c, "coalesce_sleeps"),
        worker_time(&c, "coalesce_ns"),
    );
    let tx0 = c.node_counter("node-1", "tx_packets");
    let out = Command::new("ip")
        .args(["netns", "exec", &a.netns, "python3", "-c", THIN, &b4])
        .arg(DATAGRAMS.to_string())
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::thread::sleep(std::time::Duration::from_millis(600));
    let sleeps = worker_time(&c, "coalesce_sleeps") - sleeps0;
    let slept_ns = worker_time(&c, "coalesce_ns") - ns0;
    let tx = c.node_counter("node-1", "tx_packets") - tx0;
    eprintln!("{DATAGRAMS} datagrams: worker sent {tx}, {sleeps} coalescing sleeps, {slept_ns} ns");
    // Every datagram crossed weir (b answers none: no listener, its ICMP
    // errors cross too).
    assert!(tx >= DATAGRAMS, "the worker transmitted only {tx} frames");
    assert!(
        sleeps > 0 && slept_ns > 0,
        "no coalescing sleep under a thin stream ({sleeps}, {slept_ns} ns)"
    );

    let m = probe_ab(&c, &ns, "2000");
    assert!(all_connected(&m), "a → b with coalescing on: {m}");
    let out = c.weir(&["dataplane", "stop", "--node", "node-1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m = probe_ab(&c, &ns, "300");
    assert!(
        none_connected(&m),
        "traffic passed with the dataplane stopped: {m}"
    );
}

#[test]
fn coalesce_us_bad_values_are_refused() {
    for bad in ["1001", "-3", "some"] {
        let ns = unique_name("cob");
        let name = unique_name("cob");
        let dir = std::env::temp_dir().join(format!("weir-test-{name}"));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("c.yaml");
        std::fs::write(&file, simple_cluster(&ns, &["a"])).expect("write");
        let out = Command::new(weir_bin())
            .env("WEIR_METRICS_ADDR", "off")
            .args(["--cluster", &name, "up", "-f"])
            .arg(&file)
            .arg(format!("--coalesce-us={bad}"))
            .output()
            .expect("weir up");
        let _ = std::fs::remove_dir_all(&dir);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "weir up --coalesce-us {bad} succeeded"
        );
        assert!(err.contains("--coalesce-us"), "{err}");
        assert!(
            !weir_topo::netns::exists(&format!("weir-{name}-node-1")),
            "a node netns was left for a refused flag"
        );
    }
}
