//! weir speaks VXLAN with the Linux kernel's own VXLAN device: one weir node
//! and one `weir.dev/dataplane: kernel` node (wired like flannel's vxlan
//! backend, no weir on it), real traffic between a pod on each, both
//! directions, IPv4 and IPv6. Toward the kernel peer weir sends plain VXLAN
//! (no GBP), checked with tshark on the underlay bridge. Needs root and
//! tshark (scripts/setup.sh installs it).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use weir_tests::{all_connected, netpol, two_node_cluster, TestCluster};

#[test]
fn weir_and_kernel_vxlan_nodes_interoperate() {
    let c = TestCluster::up_with(
        "kio",
        &two_node_cluster("x", &[("a", "n1"), ("b", "n2")], true),
        &["--encap", "vxlan"],
    );
    let redirected0 = c.port_xdp("n1", "ul0", "redirected");
    let rx0 = c.node_counter("n1", "rx_packets");

    // Capture the tunnel to check what weir sends the kernel peer.
    let file = c.dir.join("kernel.pcap");
    let ns = c.underlay_netns();
    let mut cap = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns,
            "tcpdump",
            "-U",
            "--immediate-mode",
            "-n",
            "-i",
            "br0",
            "-w",
        ])
        .arg(&file)
        .arg("udp port 4789")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("tcpdump");
    let t0 = Instant::now();
    while !file.exists() && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(200));

    for (port, proto, family) in [
        (80, "TCP", "ipv4"),
        (81, "UDP", "ipv4"),
        (80, "TCP", "ipv6"),
        (81, "UDP", "ipv6"),
    ] {
        for (from, to) in [("x/a", "x/b"), ("x/b", "x/a")] {
            let m = c.probe(
                port,
                proto,
                &["--from", from, "--to", to, "--family", family],
            );
            assert!(
                all_connected(&m),
                "{proto} {port} {family} {from}→{to} (weir ↔ kernel VXLAN): {m}"
            );
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    let _ = cap.kill();
    let _ = cap.wait();

    // 8 probes, each ≥ 1 frame from the kernel node into n1's underlay.
    let moved = c.port_xdp("n1", "ul0", "redirected") - redirected0;
    assert!(moved >= 8, "n1 ul0 redirected only {moved} frames");
    let rx = c.node_counter("n1", "rx_packets") - rx0;
    assert!(rx >= 16, "n1 workers received only {rx} frames");
    assert_eq!(
        c.node_drops_total("n1"),
        0,
        "drops on n1: {}",
        weir_tests::node_status(&c.status(), "n1")["workers"]
    );

    // weir → kernel peer: plain VXLAN (I flag, no G flag), VNI 1; every frame
    // dissects cleanly.
    let n1 = c
        .topology()
        .node("n1")
        .and_then(|n| n.underlay.as_ref().map(|u| u.ipv4.to_string()))
        .expect("n1 underlay");
    let rows = tshark(
        &file,
        &[
            "-T",
            "fields",
            "-e",
            "ip.src",
            "-e",
            "vxlan.flag_g",
            "-e",
            "vxlan.vni",
            "-E",
            "occurrence=f",
        ],
    );
    let from_weir: Vec<&str> = rows
        .lines()
        .filter(|l| l.split('\t').next() == Some(n1.as_str()))
        .collect();
    assert!(
        from_weir.len() >= 8,
        "weir sent {} VXLAN frames",
        from_weir.len()
    );
    for r in &from_weir {
        let f: Vec<&str> = r.split('\t').collect();
        assert!(
            matches!(f.get(1), Some(&"0") | Some(&"False") | Some(&"false")),
            "GBP toward a kernel peer: {r}"
        );
        assert!(
            matches!(f.get(2), Some(&"1") | Some(&"0x000001")),
            "VNI: {r}"
        );
    }
    let bad = tshark(
        &file,
        &["-Y", "_ws.malformed || _ws.expert.severity >= error"],
    );
    assert!(bad.trim().is_empty(), "tshark finds errors:\n{bad}");

    // Policy on the weir node judges the kernel peer's pod by its address
    // (no identity on the wire): deny ingress to x/a from pod b.
    let p = netpol(
        "x",
        "a-not-from-b",
        "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{podSelector: {matchLabels: {pod: a}}}]}]}",
    );
    c.apply("p.yaml", &p);
    let m = c.probe(
        80,
        "TCP",
        &[
            "--from",
            "x/b",
            "--to",
            "x/a",
            "--timeout-ms",
            "300",
            "--attempts",
            "1",
        ],
    );
    assert!(weir_tests::none_connected(&m), "kernel pod b passed: {m}");
    let e = c.explain("x/b", "x/a", 80, "TCP");
    assert_eq!(e["allowed"], false, "{e}");
    let m = c.probe(80, "TCP", &["--from", "x/a", "--to", "x/b"]);
    assert!(all_connected(&m), "egress of a to the kernel pod: {m}");
}

fn tshark(file: &Path, args: &[&str]) -> String {
    let out = Command::new("tshark")
        .arg("-r")
        .arg(file)
        .args(args)
        .output()
        .expect("tshark (scripts/setup.sh installs it)");
    assert!(
        out.status.success(),
        "tshark {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
