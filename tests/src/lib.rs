//! Helpers for weir's integration tests: run the real `weir` binary on a
//! local cluster of its own (a unique name per test, so tests run in
//! parallel), and always take it down again, even when the test fails.
#![forbid(unsafe_code)]

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

/// The `weir` binary built next to this test executable.
pub fn weir_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("WEIR_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>/weir
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = dir.join("weir");
    assert!(
        bin.exists(),
        "{} not built: run `cargo build -p weir` first (scripts/test.sh does)",
        bin.display()
    );
    bin
}

/// A unique, short cluster name for one test.
pub fn unique_name(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("{tag}{}{n}", std::process::id() % 100_000)
}

/// A running local cluster; `Drop` runs `weir down`.
pub struct TestCluster {
    pub name: String,
    pub dir: PathBuf,
}

impl TestCluster {
    /// `weir up -f` on the given manifest text; panics with weir's stderr if it fails.
    pub fn up(tag: &str, manifests: &str) -> TestCluster {
        let name = unique_name(tag);
        let dir = std::env::temp_dir().join(format!("weir-test-{name}"));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("cluster.yaml");
        std::fs::write(&file, manifests).expect("write manifests");
        let c = TestCluster { name, dir };
        let out = c.weir(&["up", "-f", file.to_str().expect("utf-8 path")]);
        assert!(
            out.status.success(),
            "weir up failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        c
    }

    /// Runs `weir --cluster NAME args...`.
    pub fn weir(&self, args: &[&str]) -> Output {
        Command::new(weir_bin())
            .arg("--cluster")
            .arg(&self.name)
            .args(args)
            .output()
            .expect("run weir")
    }

    /// Runs weir and parses its JSON stdout; panics on failure.
    pub fn weir_json(&self, args: &[&str]) -> Value {
        let out = self.weir(args);
        assert!(
            out.status.success(),
            "weir {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "weir {args:?}: bad JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// Writes a manifest file in this test's directory and returns its path.
    pub fn file(&self, name: &str, text: &str) -> String {
        let p = self.dir.join(name);
        std::fs::write(&p, text).expect("write file");
        p.to_string_lossy().into_owned()
    }

    /// The realized cluster (addresses, netns names).
    pub fn topology(&self) -> weir_topo::Cluster {
        let state = std::env::var_os("WEIR_STATE_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/run/weir"));
        weir_topo::Cluster::load(&state.join(&self.name).join("cluster.json"))
            .expect("cluster state")
    }

    /// Probe matrix as JSON.
    pub fn probe(&self, port: u16, protocol: &str, extra: &[&str]) -> Value {
        let port = port.to_string();
        let mut args = vec![
            "probe",
            "--port",
            &port,
            "--protocol",
            protocol,
            "-o",
            "json",
        ];
        args.extend_from_slice(extra);
        self.weir_json(&args)
    }

    /// Sum of a per-worker counter over every node and worker (`weir status -o json`).
    pub fn counter(&self, field: &str) -> u64 {
        let v = self.weir_json(&["status", "-o", "json"]);
        sum_workers(&v, |w| w[field].as_u64().unwrap_or(0))
    }

    /// Count of drops with the given reason slug, over all nodes and workers.
    pub fn drops(&self, reason: &str) -> u64 {
        let v = self.weir_json(&["status", "-o", "json"]);
        sum_workers(&v, |w| w["drops"][reason].as_u64().unwrap_or(0))
    }

    /// Runs a command inside a pod's network namespace.
    pub fn pod_exec(&self, ns: &str, pod: &str, argv: &[&str]) -> Output {
        let topo = self.topology();
        let p = topo
            .pod(ns, pod)
            .unwrap_or_else(|| panic!("pod {ns}/{pod} not found"));
        Command::new("ip")
            .args(["netns", "exec", &p.netns])
            .args(argv)
            .output()
            .expect("ip netns exec")
    }
}

fn sum_workers(v: &Value, f: impl Fn(&Value) -> u64) -> u64 {
    v["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|n| {
            n["status"]["dataplane"]["workers"]
                .as_array()
                .into_iter()
                .flatten()
        })
        .map(f)
        .sum()
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        let out = self.weir(&["down"]);
        if !out.status.success() {
            eprintln!("weir down failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Manifests for one node and `pods` pods in namespace `ns`, each serving
/// TCP and UDP on 80 and 81.
pub fn simple_cluster(ns: &str, pods: &[&str]) -> String {
    let mut s = String::from(
        "apiVersion: v1\nkind: Node\nmetadata: {name: node-1}\nspec: {podCIDRs: [10.244.0.0/24, \"fd00:10:244::/64\"]}\n",
    );
    s.push_str(&format!(
        "---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n"
    ));
    for p in pods {
        s.push_str(&pod_manifest(ns, p));
    }
    s
}

pub fn pod_manifest(ns: &str, name: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{pod: {name}}}}}\n\
         spec:\n  nodeName: node-1\n  containers:\n  - name: c\n    ports:\n\
         \x20   - {{containerPort: 80, protocol: TCP}}\n    - {{containerPort: 80, protocol: UDP}}\n\
         \x20   - {{containerPort: 81, protocol: TCP}}\n    - {{containerPort: 81, protocol: UDP}}\n"
    )
}

/// Every probe in a matrix connected?
pub fn all_connected(m: &Value) -> bool {
    m["probes"]
        .as_array()
        .is_some_and(|p| !p.is_empty() && p.iter().all(|x| x["connected"] == true))
}

/// No probe in a matrix connected?
pub fn none_connected(m: &Value) -> bool {
    m["probes"]
        .as_array()
        .is_some_and(|p| !p.is_empty() && p.iter().all(|x| x["connected"] == false))
}
