//! `weir up --pod-rx-cpus`: RPS on every pod's eth0, read back from the
//! pod's own sysfs (`ip netns exec` mounts it), shown by `weir status`; the
//! pods are attached through weir-cni (as `weir up` always does), so this is
//! the CNI path's setting too. Traffic still crosses weir with it (the
//! workers' counters move) and stops with the dataplane stopped.

use std::process::Command;
use weir_tests::*;

/// The CPUs of each RX queue's `rps_cpus` of eth0 in `netns`.
fn rps_of(netns: &str) -> Vec<Vec<usize>> {
    let out = Command::new("ip")
        .args(["netns", "exec", netns, "sh", "-c"])
        .arg("for f in /sys/class/net/eth0/queues/rx-*/rps_cpus; do cat $f; done")
        .output()
        .expect("ip netns exec");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let v: Vec<Vec<usize>> = text
        .lines()
        .map(|l| weir_topo::rps::parse_cpu_mask(l).unwrap_or_else(|| panic!("mask {l:?}")))
        .collect();
    assert!(!v.is_empty(), "no RX queue in {netns}: {text:?}");
    v
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
fn pod_rx_cpus_are_set_shown_and_traffic_crosses_weir() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let worker = cpus - 1;
    // The default, auto: every CPU without a worker (none on a 1-CPU
    // machine: RPS off).
    let want: Vec<usize> = (0..cpus).filter(|&c| c != worker).collect();
    let ns = unique_name("prx");
    let c = TestCluster::up_with(
        "prx",
        &simple_cluster(&ns, &["a", "b"]),
        &["--cores", &worker.to_string(), "--poll", "wakeup"],
    );
    let topo = c.topology();
    assert_eq!(topo.pod_rx_cpus, want);
    for p in ["a", "b"] {
        let pod = topo.pod(&ns, p).expect("pod");
        for q in rps_of(&pod.netns) {
            assert_eq!(q, want, "pods/{ns}/{p}");
        }
    }
    let st = c.status();
    let shown = if want.is_empty() {
        "off".to_string()
    } else {
        want.iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    assert_eq!(st["pod_rx_cpus"], shown.as_str(), "{st}");
    // The backlogs RPS queues to: their drops are shown (a number; none
    // when steering is off).
    assert_eq!(
        st["pod_rx_backlog_dropped"].is_u64(),
        !want.is_empty(),
        "{st}"
    );
    let text = c.weir(&["status"]);
    assert!(
        String::from_utf8_lossy(&text.stdout)
            .contains(&format!("pod RX steering (RPS, --pod-rx-cpus): {shown}")),
        "{}",
        String::from_utf8_lossy(&text.stdout)
    );

    // Traffic crosses weir with the steering on: the workers moved frames.
    let tx0 = c.node_counter("node-1", "tx_packets");
    let m = probe_ab(&c, &ns, "2000");
    assert!(all_connected(&m), "a → b with RPS on the pods: {m}");
    let tx = c.node_counter("node-1", "tx_packets") - tx0;
    assert!(tx >= 2, "the workers transmitted only {tx} frames");

    // And only through weir: with the dataplane stopped nothing passes.
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
fn pod_rx_cpus_list_off_and_bad_values() {
    // An explicit list, and a pod added later (weir apply) gets it too.
    let ns = unique_name("prl");
    let c = TestCluster::up_with(
        "prl",
        &simple_cluster(&ns, &["a"]),
        &["--poll", "wakeup", "--pod-rx-cpus", "0"],
    );
    let f = c.file("b.yaml", &pod_manifest(&ns, "b"));
    let out = c.weir(&["apply", "-f", &f]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let topo = c.topology();
    for p in ["a", "b"] {
        let pod = topo.pod(&ns, p).expect("pod");
        for q in rps_of(&pod.netns) {
            assert_eq!(q, vec![0], "pods/{ns}/{p}");
        }
    }
    drop(c);

    // off: the kernel's default, RPS off.
    let ns = unique_name("pro");
    let c = TestCluster::up_with(
        "pro",
        &simple_cluster(&ns, &["a"]),
        &["--poll", "wakeup", "--pod-rx-cpus", "off"],
    );
    let pod = c.topology().pod(&ns, "a").expect("pod").clone();
    for q in rps_of(&pod.netns) {
        assert!(q.is_empty(), "RPS on with --pod-rx-cpus off: {q:?}");
    }
    assert_eq!(c.status()["pod_rx_cpus"], "off");
    assert!(c.status()["pod_rx_backlog_dropped"].is_null());
    drop(c);

    // A CPU the machine lacks, or a word it does not know: one clear line, nothing up.
    for bad in ["4095", "some"] {
        let ns = unique_name("prb");
        let name = unique_name("prb");
        let dir = std::env::temp_dir().join(format!("weir-test-{name}"));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("c.yaml");
        std::fs::write(&file, simple_cluster(&ns, &["a"])).expect("write");
        let out = Command::new(weir_bin())
            .env("WEIR_METRICS_ADDR", "off")
            .args(["--cluster", &name, "up", "-f"])
            .arg(&file)
            .args(["--pod-rx-cpus", bad])
            .output()
            .expect("weir up");
        let _ = std::fs::remove_dir_all(&dir);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "weir up --pod-rx-cpus {bad} succeeded"
        );
        assert!(err.contains("--pod-rx-cpus"), "{err}");
        assert!(
            !weir_topo::netns::exists(&format!("weir-{name}-node-1")),
            "a node netns was left for a refused flag"
        );
    }
}
