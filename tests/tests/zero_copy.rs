//! `weir up --zero-copy --busy-poll` on veths: the kernel refuses zero-copy
//! on every veth, the sockets fall back to copy mode, `weir status` (text,
//! JSON) and /metrics say so per port with the refusal's errno, and traffic
//! still crosses the dataplane (its RX counter moves with a probe) with the
//! busy-poll socket options set.

use std::process::Command;
use weir_tests::*;

/// The mode a veth port must show: veth has no AF_XDP zero-copy.
const REFUSED: &str = "copy (zero-copy refused: EOPNOTSUPP)";

/// A port no one listens on now (the kernel's pick).
fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").to_string()
}

#[test]
fn zero_copy_falls_back_to_copy_on_veth_and_status_says_why() {
    let addr = free_addr();
    let ns = unique_name("zc");
    let c = TestCluster::up_with(
        "zc",
        &simple_cluster(&ns, &["a", "b"]),
        &["--zero-copy", "--busy-poll", "--metrics-addr", &addr],
    );

    // Traffic crosses weir in the fallback mode, with busy polling on.
    let rx0 = c.counter("rx_packets");
    assert!(all_connected(&c.probe(80, "TCP", &[])));
    assert!(all_connected(&c.probe(81, "UDP", &[])));
    let rx1 = c.counter("rx_packets");
    assert!(
        rx1 > rx0,
        "the dataplane received nothing during the probes ({rx0} → {rx1})"
    );

    // JSON: asked for zero-copy and busy polling; every port in copy mode,
    // with the errno of the refused zero-copy bind.
    let st = c.status();
    let dp = node_status(&st, "node-1");
    assert_eq!(dp["config"]["zero_copy"], true, "{dp}");
    assert_eq!(dp["config"]["busy_poll"], true, "{dp}");
    // The two pods' ports, the host port and the underlay.
    let ports = dp["ports"].as_array().expect("ports");
    assert!(ports.len() >= 2, "{dp}");
    // The UMEM's first socket met the refusal; the others share its UMEM,
    // whose mode the kernel gives them, and say whose refusal that was.
    let first = ports
        .iter()
        .find(|p| p["mode"] == REFUSED)
        .unwrap_or_else(|| panic!("no port shows `{REFUSED}`: {dp}"));
    let inherited = format!(
        "copy (zero-copy refused: EOPNOTSUPP on {}, the shared UMEM's first socket)",
        first["name"].as_str().expect("name")
    );
    for p in ports {
        assert_eq!(p["zero_copy"], false, "{p}");
        assert!(p["mode"] == REFUSED || p["mode"] == *inherited, "{p}");
    }

    // Text: one line per mode, naming its ports.
    let out = c.weir(&["status"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for p in ports {
        let name = p["name"].as_str().expect("name");
        let mode = p["mode"].as_str().expect("mode");
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("sockets {mode}:")))
            .unwrap_or_else(|| panic!("no `sockets {mode}:` line in:\n{text}"));
        assert!(line.split_whitespace().any(|w| w == name), "{line}");
    }
    assert!(text.contains("busy poll: SO_PREFER_BUSY_POLL"), "{text}");

    // Prometheus: 0 (copy) for each port, the reason in the mode label.
    let out = Command::new("curl")
        .args(["-sSf", &format!("http://{addr}/metrics")])
        .output()
        .expect("run curl");
    assert!(out.status.success());
    let page = String::from_utf8_lossy(&out.stdout);
    for p in ports {
        let name = p["name"].as_str().expect("name");
        let mode = p["mode"].as_str().expect("mode");
        let want =
            format!("weir_port_zero_copy{{node=\"node-1\",port=\"{name}\",mode=\"{mode}\"}} 0");
        assert!(page.lines().any(|l| l == want), "no `{want}` in:\n{page}");
    }
}

#[test]
fn without_the_flag_ports_run_copy_mode_and_no_reason_is_shown() {
    let ns = unique_name("zn");
    let c = TestCluster::up_with("zn", &simple_cluster(&ns, &["a"]), &[]);
    let st = c.status();
    let dp = node_status(&st, "node-1");
    assert_eq!(dp["config"]["zero_copy"], false, "{dp}");
    assert_eq!(dp["config"]["busy_poll"], false, "{dp}");
    let ports = dp["ports"].as_array().expect("ports");
    assert!(!ports.is_empty(), "{dp}");
    // Copy mode: one TX kick sends up to 256 frames (a round's most per
    // socket, `weir_dataplane::xsk::TX_PER_ROUND`, at most the TX ring)
    // where the kernel takes XDP_MAX_TX_SKB_BUDGET (Linux 6.17), else 32.
    let ring = dp["config"]["ring_size"].as_u64().expect("ring_size");
    let (major, minor) = kernel_version();
    let want = if (major, minor) >= (6, 17) {
        ring.min(256)
    } else {
        32
    };
    for p in ports {
        assert_eq!(p["mode"], "copy", "{p}");
        assert_eq!(p["tx_budget"].as_u64(), Some(want), "{p}");
    }
    let text = String::from_utf8_lossy(&c.weir(&["status"]).stdout).to_string();
    assert!(
        text.contains(&format!("copy-mode TX: up to {want} frames per kick")),
        "{text}"
    );
}

/// The running kernel's (major, minor) version.
fn kernel_version() -> (u32, u32) {
    let r = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
    let mut it = r
        .trim()
        .split(['.', '-'])
        .map(|x| x.parse::<u32>().unwrap_or(0));
    (it.next().unwrap_or(0), it.next().unwrap_or(0))
}
