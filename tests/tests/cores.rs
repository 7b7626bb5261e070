//! `weir cores`: the advice follows the placement. A UDP flood from pod b
//! to pod a, its sender pinned to core 1 (taskset), on two clusters: the
//! worker on core 0 (the load elsewhere: no move), then on core 1 (the load
//! and the worker share the core: move the worker to core 0). The flood
//! crosses weir: the worker's RX rate in the same report is the proof.

use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use weir_tests::*;

/// The tests of this file one at a time: `weir cores` reads the whole
/// machine's cores, and another cluster of this file started alongside
/// (the test runner's second thread) would load the core the advice looks
/// at.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> MutexGuard<'static, ()> {
    // A test that failed holding it poisoned it: the next still runs.
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// Sends UDP datagrams to `dst` port 81 for `secs` seconds, as fast as one
/// core allows.
const FLOOD: &str = r#"
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
d = (sys.argv[1], 81)
m = b"x" * 64
end = time.time() + float(sys.argv[2])
while time.time() < end:
    for _ in range(256):
        try:
            s.sendto(m, d)
        except OSError:
            pass
"#;

/// The flood process; killed on drop (also when an assertion fails).
struct Flood(Child);

impl Drop for Flood {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn flood(c: &TestCluster, ns: &str, from: &str, to: &str, core: usize, secs: u32) -> Flood {
    let topo = c.topology();
    let src = topo.pod(ns, from).expect("source pod");
    let dst = topo
        .pod(ns, to)
        .expect("destination pod")
        .ipv4
        .expect("ipv4");
    Flood(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &src.netns,
                "taskset",
                "-c",
                &core.to_string(),
            ])
            .args(["python3", "-c", FLOOD, &dst.to_string(), &secs.to_string()])
            .stdout(Stdio::null())
            .spawn()
            .expect("ip netns exec taskset python3"),
    )
}

/// `weir cores -o json` over a 3 s window while the flood runs.
fn cores_under_flood(worker_core: usize, pod_rx_cpus: &str) -> serde_json::Value {
    let ns = unique_name("co");
    let c = TestCluster::up_with(
        "co",
        &simple_cluster(&ns, &["a", "b"]),
        &[
            "--cores",
            &worker_core.to_string(),
            "--poll",
            "adaptive",
            "--pod-rx-cpus",
            pod_rx_cpus,
        ],
    );
    assert!(all_connected(&c.probe(80, "TCP", &[])));
    let _flood = flood(&c, &ns, "b", "a", 1, 30);
    // Let the flood reach its pace before measuring.
    std::thread::sleep(std::time::Duration::from_secs(2));
    // A loaded machine can time a status request out: try again.
    let mut tries = 0;
    let r = loop {
        let out = c.weir(&["cores", "--window", "3000", "-o", "json"]);
        if out.status.success() {
            break serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("json");
        }
        tries += 1;
        assert!(
            tries < 3,
            "weir cores: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    eprintln!(
        "worker on core {worker_core}:\n{}",
        serde_json::to_string_pretty(&r).unwrap_or_default()
    );
    let w = &r["workers"][0];
    assert_eq!(w["core"], worker_core, "{r}");
    // The flood crossed weir: the worker received it.
    assert!(
        w["rx_pps"].as_f64().unwrap_or(0.0) > 1000.0,
        "the worker did not see the flood: {w}"
    );
    assert!(w["busy_pct"].as_f64().unwrap_or(0.0) > 0.0, "{w}");
    r
}

/// The idle-core report is the host's own, and the `idle` advice comes
/// exactly when the host halts idle vCPUs without polling and a worker
/// that is not busy-polling sleeps (the rule's threshold, `SLEEPING_PCT`).
fn check_idle(r: &serde_json::Value) {
    // weir_control::cores::SLEEPING_PCT (this crate does not link weir).
    const SLEEPING_PCT: f64 = 10.0;
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .ok()
            .map(|s| s.trim().to_string())
    };
    let driver = read("/sys/devices/system/cpu/cpuidle/current_driver");
    let poll_ns: Option<u64> =
        read("/sys/module/haltpoll/parameters/guest_halt_poll_ns").and_then(|s| s.parse().ok());
    assert_eq!(
        r["idle"]["cpuidle_driver"].as_str(),
        driver.as_deref(),
        "{r}"
    );
    assert_eq!(r["idle"]["guest_halt_poll_ns"].as_u64(), poll_ns, "{r}");
    let halts = driver.as_deref() == Some("haltpoll") && poll_ns == Some(0);
    let sleeps = r["workers"]
        .as_array()
        .expect("workers")
        .iter()
        .any(|w| w["poll"] != "busy" && w["sleep_pct"].as_f64().unwrap_or(0.0) >= SLEEPING_PCT);
    let advised = r["advice"]
        .as_array()
        .expect("advice")
        .iter()
        .any(|a| a["kind"] == "idle");
    assert_eq!(
        advised,
        halts && sleeps,
        "halts {halts}, sleeps {sleeps}: {r}"
    );
}

fn moves(r: &serde_json::Value) -> Vec<&serde_json::Value> {
    r["advice"]
        .as_array()
        .expect("advice")
        .iter()
        .filter(|a| a["kind"] == "move")
        .collect()
}

#[test]
fn the_advice_follows_the_placement() {
    let _one = one_at_a_time();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus < 2 {
        eprintln!("skipped: needs 2 cores, have {cpus}");
        return;
    }
    // The worker on core 0, the load on core 1: no move.
    let apart = cores_under_flood(0, "auto");
    assert!(moves(&apart).is_empty(), "{}", apart["advice"]);
    check_idle(&apart);

    // Both on core 1: move the worker to core 0. Pod RX steering off: with
    // it (`auto`) the pods' receive softirqs go to core 0, the only core
    // without a worker, and on a slow machine they keep it ~70 % busy, so
    // no move is advised (rightly: core 0 is not free).
    let shared = cores_under_flood(1, "off");
    check_idle(&shared);
    let m = moves(&shared);
    assert_eq!(m.len(), 1, "{}", shared["advice"]);
    assert_eq!(m[0]["core"], 1);
    assert_eq!(m[0]["to"], 0);
    assert_eq!(m[0]["flag"], "--cores 0");
    assert!(
        m[0]["text"].as_str().unwrap_or("").contains("share core 1"),
        "{}",
        m[0]
    );
    // The core table agrees: core 1 took the flood's softirqs.
    let core = |r: &serde_json::Value, c: u64| {
        r["cores"]
            .as_array()
            .expect("cores")
            .iter()
            .find(|x| x["core"] == c)
            .cloned()
            .expect("core")
    };
    assert_eq!(core(&shared, 1)["workers"][0], "node-1/0");
}

/// The kernel's side of the placement: an RPS mask set on one of the node's
/// pod veths (in the node's namespace) is reported by `weir cores` for that
/// veth, which has no IRQs (a virtual device: said so); a mask that puts
/// the veth's receive work on the worker's core is advice (`rps`). With the
/// mask cleared, the advice goes away.
#[test]
fn rps_masks_and_irqs_are_reported() {
    let _one = one_at_a_time();
    let ns = unique_name("cr");
    let c = TestCluster::up_with(
        "cr",
        &simple_cluster(&ns, &["a", "b"]),
        &["--cores", "1", "--poll", "adaptive"],
    );
    let st = c.weir_json(&["status", "-o", "json"]);
    let node = st["nodes"][0]["node"].as_str().expect("node").to_string();
    let port = st["nodes"][0]["status"]["dataplane"]["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .find(|p| p["underlay"] != true)
        .and_then(|p| p["name"].as_str())
        .expect("a pod port")
        .to_string();
    let netns = c.topology().node(&node).expect("node").netns.clone();
    let set_rps = |mask: &str| {
        let out = Command::new("ip")
            .args(["netns", "exec", &netns, "sh", "-c"])
            .arg(format!(
                "echo {mask} > /sys/class/net/{port}/queues/rx-0/rps_cpus"
            ))
            .output()
            .expect("ip netns exec");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let cores = || {
        let out = c.weir(&["cores", "--window", "300", "-o", "json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("json")
    };
    // Core 1 (mask 2): the worker's core.
    set_rps("2");
    let r = cores();
    let iface = r["interfaces"]
        .as_array()
        .expect("interfaces")
        .iter()
        .find(|i| i["name"] == port.as_str())
        .unwrap_or_else(|| panic!("{port} not reported: {r}"))
        .clone();
    assert_eq!(iface["virtual_device"], true, "{iface}");
    assert_eq!(iface["irqs"].as_array().map(Vec::len), Some(0), "{iface}");
    assert_eq!(iface["rps"][0]["queue"], "rx-0", "{iface}");
    assert_eq!(iface["rps"][0]["cpus"], serde_json::json!([1]), "{iface}");
    let rps_advice = |r: &serde_json::Value| {
        r["advice"]
            .as_array()
            .expect("advice")
            .iter()
            .filter(|a| a["kind"] == "rps" && a["text"].as_str().unwrap_or("").contains(&port))
            .count()
    };
    assert_eq!(rps_advice(&r), 1, "{r}");
    let text = c.weir(&["cores", "--window", "300"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.lines().any(|l| l.contains(&port)
            && l.contains("none (virtual device)")
            && l.contains("rx-0: 1")),
        "{text}"
    );
    // RPS off: reported as such, no advice.
    set_rps("0");
    let r = cores();
    assert_eq!(rps_advice(&r), 0, "{r}");
    let iface = r["interfaces"]
        .as_array()
        .expect("interfaces")
        .iter()
        .find(|i| i["name"] == port.as_str())
        .expect("port")
        .clone();
    assert_eq!(iface["rps"][0]["cpus"], serde_json::json!([]), "{iface}");
}
