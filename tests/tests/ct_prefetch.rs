//! The worker's stage 0 (conntrack prefetch, its hash and parse handed to
//! the pass: `dataplane/src/pass/prefetch.rs`) runs on conntrack tables of
//! at least the default size (`Conntrack::prefetch_pays`,
//! `PREFETCH_FROM`), so every other test runs it; only a smaller table
//! judges without it. Here one node with a table below the threshold
//! (`weir up --conntrack-size 131072`), real TCP, UDP and ICMP over IPv4
//! and IPv6 between pods through it: the traffic crosses the workers
//! (counters moved, flows inserted in that table) and fails closed without
//! the dataplane. Needs root.

use weir_tests::{all_connected, simple_cluster, TestCluster};

/// Half of `weir_dataplane::conntrack::PREFETCH_FROM` (the default table,
/// 262 144 entries): the worker runs no stage 0 on it (the unit test
/// `prefetch_only_on_large_tables`).
const TABLE: u64 = 1 << 17;

fn ct(status: &serde_json::Value, field: &str) -> u64 {
    weir_tests::node_status(status, "node-1")["conntrack"][field]
        .as_u64()
        .unwrap_or(0)
}

#[test]
fn traffic_through_a_table_without_stage_0_crosses_and_fails_closed() {
    let size = TABLE.to_string();
    let c = TestCluster::up_with(
        "ctp",
        &simple_cluster("x", &["a", "b"]),
        &["--conntrack-size", &size],
    );
    let s0 = c.status();
    assert_eq!(
        ct(&s0, "size"),
        TABLE,
        "--conntrack-size reached the dataplane"
    );
    let topo = c.topology();
    let b = topo.pod("x", "b").expect("pod b");
    let b4 = b.ipv4.expect("b has IPv4").to_string();
    let b6 = b.ipv6.expect("b has IPv6").to_string();
    let rx0 = c.counter("rx_packets");
    let tx0 = c.counter("tx_packets");
    let inserts0 = ct(&s0, "inserts");

    for (port, proto, extra) in [
        (80, "TCP", &[][..]),
        (81, "UDP", &[][..]),
        (80, "TCP", &["--family", "ipv6"][..]),
        (81, "UDP", &["--family", "ipv6"][..]),
    ] {
        let m = c.probe(port, proto, extra);
        assert!(all_connected(&m), "{proto} {port} {extra:?}: {m}");
    }
    for to in [&b4, &b6] {
        let out = c.pod_exec("x", "a", &["ping", "-c", "3", "-i", "0.2", "-W", "2", to]);
        assert!(
            out.status.success(),
            "ping a→{to}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }

    // 2 pod pairs × 4 probe kinds × ≥ 2 frames, plus 6 echo frames each
    // way per family.
    let rx = c.counter("rx_packets") - rx0;
    let tx = c.counter("tx_packets") - tx0;
    assert!(rx >= 2 * 4 * 2 + 12, "workers received only {rx} frames");
    assert!(tx >= 2 * 4 * 2 + 12, "workers transmitted only {tx} frames");
    let inserts = ct(&c.status(), "inserts") - inserts0;
    assert!(inserts >= 2 * 4 + 2, "only {inserts} flows tracked");

    c.assert_fail_closed("node-1", "x/a", "x/b");
}
