//! The node dataplane's threads other than its workers (the control loop
//! that applies snapshots, drains the flow logs and writes the conntrack
//! checkpoint; the status server) stay off the workers' cores
//! (`dataplane/src/housekeeping.rs`): read from the kernel
//! (`/proc/<pid>/task/*/status`, `Cpus_allowed`) of the running
//! dataplane process, and from `weir status`. With a worker on every CPU,
//! nothing is confined.
//!
//! Needs root and at least two CPUs.

use weir_tests::{simple_cluster, TestCluster};

/// The CPUs a `/proc/<pid>/status` text allows (`Cpus_allowed`, the same
/// hex mask format as `rps_cpus`).
fn allowed(status: &str) -> Vec<usize> {
    let mask = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed:"))
        .expect("Cpus_allowed");
    weir_topo::rps::parse_cpu_mask(mask).expect("a CPU mask")
}

/// (thread name, allowed CPUs) of every thread of node-1's dataplane.
fn threads(c: &TestCluster) -> Vec<(String, Vec<usize>)> {
    let state = std::env::var_os("WEIR_STATE_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "/run/weir".into());
    let p = state.join(&c.name).join("nodes/node-1/dataplane.pid");
    let pid: u32 = std::fs::read_to_string(&p)
        .expect("dataplane.pid")
        .trim()
        .parse()
        .expect("pid");
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).expect("dataplane running") {
        let t = t.unwrap().path();
        let comm = std::fs::read_to_string(t.join("comm")).unwrap_or_default();
        let st = std::fs::read_to_string(t.join("status")).unwrap_or_default();
        if st.is_empty() {
            continue; // the thread ended meanwhile
        }
        out.push((comm.trim().to_string(), allowed(&st)));
    }
    out
}

fn mine() -> Vec<usize> {
    allowed(&std::fs::read_to_string("/proc/self/status").unwrap())
}

#[test]
fn other_threads_stay_off_the_workers_core() {
    let cpus = mine();
    if cpus.len() < 2 {
        eprintln!("skipped: needs two CPUs");
        return;
    }
    let worker = *cpus.last().unwrap();
    let rest: Vec<usize> = cpus.iter().copied().filter(|&c| c != worker).collect();
    let core = worker.to_string();
    let c = TestCluster::up_with(
        "hk",
        &simple_cluster("hk", &["a", "b"]),
        &["--cores", &core],
    );
    let ts = threads(&c);
    let workers: Vec<_> = ts
        .iter()
        .filter(|(n, _)| n.starts_with("weir-worker"))
        .collect();
    assert_eq!(workers.len(), 1, "{ts:?}");
    assert_eq!(workers[0].1, vec![worker], "{ts:?}");
    let others: Vec<_> = ts
        .iter()
        .filter(|(n, _)| !n.starts_with("weir-worker"))
        .collect();
    // The main thread (control loop, checkpoint) and the status server.
    assert!(others.len() >= 2, "{ts:?}");
    for (name, set) in &others {
        assert_eq!(
            set, &rest,
            "{name} may run on the worker's core {worker}: {ts:?}"
        );
    }
    let st = c.status();
    let cfg = &weir_tests::node_status(&st, "node-1")["config"];
    let hk: Vec<usize> = serde_json::from_value(cfg["housekeeping_cores"].clone()).unwrap();
    assert_eq!(hk, rest, "{cfg}");
    let text = c.weir(&["status"]);
    let text = String::from_utf8_lossy(&text.stdout);
    let list = rest
        .iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(",");
    assert!(
        text.contains(&format!(
            "other threads (control loop, checkpoint, status) on cores {list}, off the workers'"
        )),
        "{text}"
    );
}

#[test]
fn a_worker_on_every_cpu_confines_nothing() {
    let cpus = mine();
    // One worker per CPU the test may use.
    let list = cpus
        .iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let c = TestCluster::up_with(
        "hkall",
        &simple_cluster("hkall", &["a", "b"]),
        &["--cores", &list],
    );
    let ts = threads(&c);
    for (name, set) in ts.iter().filter(|(n, _)| !n.starts_with("weir-worker")) {
        assert_eq!(set, &cpus, "{name}: {ts:?}");
    }
    let st = c.status();
    let cfg = &weir_tests::node_status(&st, "node-1")["config"];
    assert_eq!(cfg["housekeeping_cores"], serde_json::json!([]), "{cfg}");
    let text = c.weir(&["status"]);
    assert!(!String::from_utf8_lossy(&text.stdout).contains("other threads"));
}
