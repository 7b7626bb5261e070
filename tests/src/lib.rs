//! Helpers for weir's integration tests: run the real `weir` binary on a
//! local cluster of its own (a unique name per test, so tests run in
//! parallel), and always take it down again, even when the test fails.
#![forbid(unsafe_code)]

pub mod k8s;
pub mod kubelet;
pub mod netpol_cases;

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
            // Clusters of parallel tests would all want weir's default
            // metrics address: none serves it unless a test passes
            // --metrics-addr (tests/tests/metrics.rs).
            .env("WEIR_METRICS_ADDR", "off")
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
    /// Fail closed: stops `node`'s dataplane and asserts that TCP 80
    /// from `from` to `to` (`ns/pod`) no longer connects (one quick try).
    pub fn assert_fail_closed(&self, node: &str, from: &str, to: &str) {
        let out = self.weir(&["dataplane", "stop", "--node", node]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let quick = ["--timeout-ms", "300", "--attempts", "1"];
        let mut args = vec!["--from", from, "--to", to];
        args.extend_from_slice(&quick);
        let m = self.probe(80, "TCP", &args);
        assert!(
            none_connected(&m),
            "traffic passed with the dataplane stopped: {m}"
        );
    }

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

    /// Waits (up to `timeout`) until every running weir node has applied
    /// the cluster's current generation: what was published (policies.json,
    /// the snapshots) is what the workers judge with. Panics on timeout.
    pub fn wait_applied(&self, timeout: std::time::Duration) {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let v = self.status();
            let want = v["generation"].as_u64().unwrap_or(u64::MAX);
            let lagging: Vec<String> = v["nodes"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|n| {
                    n["running"].as_bool() == Some(true) && n["kernel"].as_bool() != Some(true)
                })
                .filter(|n| n["status"]["generation"].as_u64().unwrap_or(0) < want)
                .map(|n| format!("{} at {}", n["node"], n["status"]["generation"]))
                .collect();
            if lagging.is_empty() {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "generation {want} not applied: {lagging:?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
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

// ---------------------------------------------------------------------------
// Upstream NetworkPolicy e2e layout (namespaces x, y, z; pods a, b, c) and
// truth tables in the form of upstream's `Reachability`.
// ---------------------------------------------------------------------------

/// The nine pods of upstream's netpol e2e suite, in probe order.
pub const XYZ_PODS: [&str; 9] = [
    "x/a", "x/b", "x/c", "y/a", "y/b", "y/c", "z/a", "z/b", "z/c",
];

/// A Namespace manifest with `ns: NAME` plus extra labels (`k: v` pairs).
pub fn xyz_namespace(ns: &str, extra: &[(&str, &str)]) -> String {
    let mut labels = format!("ns: {ns}");
    for (k, v) in extra {
        labels.push_str(&format!(", {k}: {v}"));
    }
    format!(
        "---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}, labels: {{{labels}}}}}\n"
    )
}

/// A Pod manifest of the netpol layout (named ports `serve-80-tcp` ...) with
/// `pod: NAME` plus extra labels. Re-applying it with other labels relabels the pod.
pub fn xyz_pod(ns: &str, pod: &str, extra: &[(&str, &str)]) -> String {
    let mut labels = format!("pod: {pod}");
    for (k, v) in extra {
        labels.push_str(&format!(", {k}: {v}"));
    }
    format!(
        "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {pod}, namespace: {ns}, labels: {{{labels}}}}}\n\
         spec:\n  nodeName: node-1\n  containers:\n  - name: cont-80-81\n    ports:\n\
         \x20   - {{name: serve-80-tcp, containerPort: 80, protocol: TCP}}\n\
         \x20   - {{name: serve-80-udp, containerPort: 80, protocol: UDP}}\n\
         \x20   - {{name: serve-81-tcp, containerPort: 81, protocol: TCP}}\n\
         \x20   - {{name: serve-81-udp, containerPort: 81, protocol: UDP}}\n"
    )
}

/// The whole netpol cluster: one node, namespaces x, y, z, pods a, b, c in each.
pub fn xyz_cluster() -> String {
    let mut s = String::from(
        "apiVersion: v1\nkind: Node\nmetadata: {name: node-1, labels: {kubernetes.io/hostname: node-1}}\n\
         spec: {podCIDRs: [10.244.0.0/24, \"fd00:10:244::/64\"]}\n",
    );
    for ns in ["x", "y", "z"] {
        s.push_str(&xyz_namespace(ns, &[]));
    }
    for ns in ["x", "y", "z"] {
        for pod in ["a", "b", "c"] {
            s.push_str(&xyz_pod(ns, pod, &[]));
        }
    }
    s
}

/// A NetworkPolicy manifest; `spec` is YAML flow text, e.g. `{podSelector: {}}`.
pub fn netpol(ns: &str, name: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {spec}\n"
    )
}

/// A pattern of upstream's `Peer`: namespace and/or pod, `None` = any.
#[derive(Clone, Copy, Debug, Default)]
pub struct Peer<'a> {
    pub ns: Option<&'a str>,
    pub pod: Option<&'a str>,
}

impl<'a> Peer<'a> {
    pub const ANY: Peer<'static> = Peer {
        ns: None,
        pod: None,
    };
    pub fn ns(ns: &'a str) -> Self {
        Peer {
            ns: Some(ns),
            pod: None,
        }
    }
    pub fn pod(ns: &'a str, pod: &'a str) -> Self {
        Peer {
            ns: Some(ns),
            pod: Some(pod),
        }
    }
    fn matches(&self, full: &str) -> bool {
        let (ns, pod) = full.split_once('/').unwrap_or((full, ""));
        self.ns.is_none_or(|n| n == ns) && self.pod.is_none_or(|p| p == pod)
    }
}

/// Expected connectivity between pods (upstream's `Reachability`).
#[derive(Clone, Debug)]
pub struct Reachability {
    pub pods: Vec<String>,
    pub expected: Vec<Vec<bool>>,
}

impl Reachability {
    /// Every pair `default` (upstream: `NewReachability(pods, default)`).
    pub fn new(pods: &[&str], default: bool) -> Self {
        Reachability {
            pods: pods.iter().map(|s| s.to_string()).collect(),
            expected: vec![vec![default; pods.len()]; pods.len()],
        }
    }
    /// The nine pods, all connected.
    pub fn all() -> Self {
        Reachability::new(&XYZ_PODS, true)
    }
    fn index(&self, pod: &str) -> usize {
        self.pods
            .iter()
            .position(|p| p == pod)
            .unwrap_or_else(|| panic!("{pod} is not in the model"))
    }
    pub fn expect(&mut self, from: &str, to: &str, v: bool) -> &mut Self {
        let (i, j) = (self.index(from), self.index(to));
        self.expected[i][j] = v;
        self
    }
    pub fn expect_peer(&mut self, from: Peer, to: Peer, v: bool) -> &mut Self {
        for i in 0..self.pods.len() {
            for j in 0..self.pods.len() {
                if from.matches(&self.pods[i]) && to.matches(&self.pods[j]) {
                    self.expected[i][j] = v;
                }
            }
        }
        self
    }
    pub fn expect_all_ingress(&mut self, pod: &str, v: bool) -> &mut Self {
        let j = self.index(pod);
        for row in &mut self.expected {
            row[j] = v;
        }
        self
    }
    pub fn expect_all_egress(&mut self, pod: &str, v: bool) -> &mut Self {
        let i = self.index(pod);
        for c in &mut self.expected[i] {
            *c = v;
        }
        self
    }
}

/// A truth table in upstream's form: `.` connected, `X` blocked, `-` ignored (self).
pub fn render_table(pods: &[String], m: &[Vec<bool>], ignore_self: bool) -> String {
    let mut s = String::from("    ");
    for p in pods {
        s.push_str(&format!(" {p:>4}"));
    }
    s.push('\n');
    for (i, p) in pods.iter().enumerate() {
        s.push_str(&format!("{p:<4}"));
        for (j, v) in m[i].iter().enumerate() {
            let c = if ignore_self && i == j {
                "-"
            } else if *v {
                "."
            } else {
                "X"
            };
            s.push_str(&format!(" {c:>4}"));
        }
        s.push('\n');
    }
    s
}

impl TestCluster {
    /// `weir apply -f` on manifest text; the output (caller checks).
    pub fn apply_text(&self, file: &str, text: &str) -> Output {
        let f = self.file(file, text);
        self.weir(&["apply", "-f", &f])
    }

    /// `weir apply -f` on manifest text; panics with weir's stderr on failure.
    pub fn apply(&self, file: &str, text: &str) {
        let out = self.apply_text(file, text);
        assert!(
            out.status.success(),
            "weir apply {file} failed: {}\n{text}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `weir delete -f` on manifest text; panics with weir's stderr on failure.
    pub fn delete(&self, file: &str, text: &str) {
        let f = self.file(file, text);
        let out = self.weir(&["delete", "-f", &f]);
        assert!(
            out.status.success(),
            "weir delete {file} failed: {}\n{text}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `weir explain -o json` for one pair.
    pub fn explain(&self, from: &str, to: &str, port: u16, protocol: &str) -> Value {
        let port = port.to_string();
        self.weir_json(&[
            "explain",
            "--from",
            from,
            "--to",
            to,
            "--port",
            &port,
            "--protocol",
            protocol,
            "-o",
            "json",
        ])
    }

    /// Probes every pair of `want.pods` (short timeouts) and compares with the
    /// expectation, self-pairs ignored (loopback); then asks `weir explain`
    /// for every non-self pair and compares with the probe. `Err` describes
    /// every difference with both tables.
    pub fn check_reachability(
        &self,
        case: &str,
        port: u16,
        protocol: &str,
        want: &Reachability,
    ) -> Result<(), String> {
        self.check_reachability_family(case, port, protocol, "ipv4", want)
    }

    /// [`TestCluster::check_reachability`] over the given address family
    /// (`ipv4` or `ipv6`).
    pub fn check_reachability_family(
        &self,
        case: &str,
        port: u16,
        protocol: &str,
        family: &str,
        want: &Reachability,
    ) -> Result<(), String> {
        let m = self.probe(
            port,
            protocol,
            &["--timeout-ms", "300", "--attempts", "2", "--family", family],
        );
        let protocol_label = format!("{protocol} ({family})");
        let from: Vec<String> = m["from"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect();
        let to: Vec<String> = m["to"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect();
        let n = want.pods.len();
        let mut got = vec![vec![false; n]; n];
        for (i, p) in want.pods.iter().enumerate() {
            let fi = from
                .iter()
                .position(|f| f == p)
                .ok_or(format!("{case}: {p} not probed from: {m}"))?;
            for (j, q) in want.pods.iter().enumerate() {
                let tj = to
                    .iter()
                    .position(|t| t == q)
                    .ok_or(format!("{case}: {q} not probed to: {m}"))?;
                got[i][j] = m["connected"][fi][tj] == true;
            }
        }
        let mut errs = Vec::new();
        let mut diffs = Vec::new();
        for (i, j) in (0..n).flat_map(|i| (0..n).map(move |j| (i, j))) {
            {
                if i != j && got[i][j] != want.expected[i][j] {
                    let detail = m["probes"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .find(|p| {
                            p["from"] == want.pods[i].as_str() && p["to"] == want.pods[j].as_str()
                        })
                        .map(|p| p["detail"].to_string())
                        .unwrap_or_default();
                    diffs.push(format!(
                        "{} -> {}: expected {}, got {} ({detail})",
                        want.pods[i],
                        want.pods[j],
                        if want.expected[i][j] {
                            "connected"
                        } else {
                            "blocked"
                        },
                        if got[i][j] { "connected" } else { "blocked" },
                    ));
                }
            }
        }
        if !diffs.is_empty() {
            errs.push(format!(
                "{case}: {protocol_label}/{port}: probe differs from expectation in {} cell(s):\n  {}\nexpected:\n{}got:\n{}",
                diffs.len(),
                diffs.join("\n  "),
                render_table(&want.pods, &want.expected, true),
                render_table(&want.pods, &got, true),
            ));
        }
        // explain, several pairs at a time
        let pairs: Vec<(usize, usize)> = (0..n)
            .flat_map(|i| (0..n).map(move |j| (i, j)))
            .filter(|(i, j)| i != j)
            .collect();
        let mut explained = vec![vec![false; n]; n];
        let mut explain_diffs = Vec::new();
        for chunk in pairs.chunks(12) {
            let results: Vec<(usize, usize, Value)> = std::thread::scope(|s| {
                let hs: Vec<_> = chunk
                    .iter()
                    .map(|&(i, j)| {
                        let (f, t) = (&want.pods[i], &want.pods[j]);
                        s.spawn(move || (i, j, self.explain(f, t, port, protocol)))
                    })
                    .collect();
                hs.into_iter()
                    .map(|h| h.join().expect("explain thread"))
                    .collect()
            });
            for (i, j, e) in results {
                let allowed = e["allowed"] == true;
                explained[i][j] = allowed;
                if allowed != got[i][j] {
                    explain_diffs.push(format!(
                        "{} -> {}: explain allowed={allowed}, probe connected={}; egress: {}, ingress: {}",
                        want.pods[i], want.pods[j], got[i][j], e["egress"]["text"], e["ingress"]["text"]
                    ));
                }
            }
        }
        if !explain_diffs.is_empty() {
            errs.push(format!(
                "{case}: {protocol_label}/{port}: weir explain disagrees with the probe in {} cell(s):\n  {}\nexplain:\n{}probe:\n{}",
                explain_diffs.len(),
                explain_diffs.join("\n  "),
                render_table(&want.pods, &explained, true),
                render_table(&want.pods, &got, true),
            ));
        }
        // `weir policy check` (offline, the whole matrix at once) must agree too.
        let spec = format!("{port}/{protocol}");
        let report = self.weir_json(&["policy", "check", "--port", &spec, "-o", "json"]);
        let block = report["matrix"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|b| b["family"] == family)
            .cloned()
            .unwrap_or(Value::Null);
        let names = |v: &Value| -> Vec<String> {
            v.as_array()
                .into_iter()
                .flatten()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        };
        let (cf, ct) = (names(&block["from"]), names(&block["to"]));
        let mut checked = vec![vec![false; n]; n];
        let mut check_diffs = Vec::new();
        for (i, j) in (0..n).flat_map(|i| (0..n).map(move |j| (i, j))) {
            let (Some(fi), Some(tj)) = (
                cf.iter().position(|x| *x == want.pods[i]),
                ct.iter().position(|x| *x == want.pods[j]),
            ) else {
                check_diffs.push(format!(
                    "{} -> {}: not in the check's matrix",
                    want.pods[i], want.pods[j]
                ));
                continue;
            };
            checked[i][j] = block["connected"][fi][tj] == true;
            if i != j && checked[i][j] != got[i][j] {
                check_diffs.push(format!(
                    "{} -> {}: check connected={}, probe connected={}",
                    want.pods[i], want.pods[j], checked[i][j], got[i][j]
                ));
            }
        }
        if !check_diffs.is_empty() {
            errs.push(format!(
                "{case}: {protocol_label}/{port}: weir policy check disagrees with the probe in {} cell(s):\n  {}\ncheck:\n{}probe:\n{}",
                check_diffs.len(),
                check_diffs.join("\n  "),
                render_table(&want.pods, &checked, true),
                render_table(&want.pods, &got, true),
            ));
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs.join("\n"))
        }
    }
}

// ---------------------------------------------------------------------------
// Multi-node clusters (the overlay): nodes n1, n2, ... joined by the
// underlay, pods placed on a node of choice.
// ---------------------------------------------------------------------------

/// A Node manifest: `n<i+1>` with podCIDRs `10.244.<i>.0/24` and
/// `fd00:10:244:<i>::/64`; `kernel` adds `weir.dev/dataplane: kernel` (wired
/// by the kernel's own VXLAN device, no weir on it). Its underlay address is
/// `172.30.0.<i+1>`.
pub fn node_manifest(i: u8, kernel: bool) -> String {
    let ann = if kernel {
        ", annotations: {weir.dev/dataplane: kernel}"
    } else {
        ""
    };
    let v6 = if i == 0 {
        "fd00:10:244::/64".to_string()
    } else {
        format!("fd00:10:244:{i}::/64")
    };
    format!(
        "---\napiVersion: v1\nkind: Node\nmetadata: {{name: n{}, labels: {{kubernetes.io/hostname: n{}}}{ann}}}\n\
         spec: {{podCIDRs: [10.244.{i}.0/24, \"{v6}\"]}}\n",
        i + 1,
        i + 1
    )
}

/// [`pod_manifest`] on a given node.
pub fn pod_on(ns: &str, name: &str, node: &str) -> String {
    pod_manifest(ns, name).replace("nodeName: node-1", &format!("nodeName: {node}"))
}

/// Nodes n1 and n2 (n2 a kernel node when `kernel_n2`), namespace `ns`, and
/// the given `(pod, node)` pairs, each serving TCP and UDP on 80 and 81.
pub fn two_node_cluster(ns: &str, pods: &[(&str, &str)], kernel_n2: bool) -> String {
    let mut s = node_manifest(0, false) + &node_manifest(1, kernel_n2);
    s.push_str(&format!(
        "---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n"
    ));
    for (p, node) in pods {
        s.push_str(&pod_on(ns, p, node));
    }
    s
}

/// [`xyz_pod`] on a given node.
pub fn xyz_pod_on(ns: &str, pod: &str, node: &str, extra: &[(&str, &str)]) -> String {
    xyz_pod(ns, pod, extra).replace("nodeName: node-1", &format!("nodeName: {node}"))
}

/// The netpol cluster spread over nodes n1 and n2: `place(pod)` names the
/// node of pods `a`, `b`, `c` (the same in every namespace).
pub fn xyz_cluster_two_nodes(place: impl Fn(&str) -> &'static str) -> String {
    let mut s = node_manifest(0, false) + &node_manifest(1, false);
    for ns in ["x", "y", "z"] {
        s.push_str(&xyz_namespace(ns, &[]));
    }
    for ns in ["x", "y", "z"] {
        for pod in ["a", "b", "c"] {
            s.push_str(&xyz_pod_on(ns, pod, place(pod), &[]));
        }
    }
    s
}

impl TestCluster {
    /// `weir up -f` with extra arguments (e.g. `--encap geneve`).
    pub fn up_with(tag: &str, manifests: &str, args: &[&str]) -> TestCluster {
        let name = unique_name(tag);
        let dir = std::env::temp_dir().join(format!("weir-test-{name}"));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("cluster.yaml");
        std::fs::write(&file, manifests).expect("write manifests");
        let c = TestCluster { name, dir };
        let mut argv = vec!["up", "-f", file.to_str().expect("utf-8 path")];
        argv.extend_from_slice(args);
        let out = c.weir(&argv);
        assert!(
            out.status.success(),
            "weir up {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        c
    }

    /// `weir status -o json`.
    pub fn status(&self) -> Value {
        self.weir_json(&["status", "-o", "json"])
    }

    /// A per-worker counter summed over one node's workers.
    pub fn node_counter(&self, node: &str, field: &str) -> u64 {
        node_workers_sum(&self.status(), node, |w| w[field].as_u64().unwrap_or(0))
    }

    /// Drops with the given reason on one node.
    pub fn node_drops(&self, node: &str, reason: &str) -> u64 {
        node_workers_sum(&self.status(), node, |w| {
            w["drops"][reason].as_u64().unwrap_or(0)
        })
    }

    /// All drops (every reason) on one node.
    pub fn node_drops_total(&self, node: &str) -> u64 {
        node_workers_sum(&self.status(), node, |w| {
            w["drops"]
                .as_object()
                .map_or(0, |m| m.values().filter_map(Value::as_u64).sum())
        })
    }

    /// An XDP counter (`redirected`, `passed`, `dropped_no_socket`) of one
    /// port of one node (the underlay port is `ul0`).
    pub fn port_xdp(&self, node: &str, port: &str, field: &str) -> u64 {
        node_status(&self.status(), node)["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["name"] == port)
            .map(|p| p["xdp"][field].as_u64().unwrap_or(0))
            .sum()
    }

    /// The underlay netns, `weir-<cluster>-underlay`.
    pub fn underlay_netns(&self) -> String {
        format!("weir-{}-underlay", self.name)
    }
}

/// `nodes[node].status.dataplane` of a status document (`Null` if absent).
pub fn node_status<'a>(v: &'a Value, node: &str) -> &'a Value {
    v["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|n| n["node"] == node)
        .map_or(&Value::Null, |n| &n["status"]["dataplane"])
}

fn node_workers_sum(v: &Value, node: &str, f: impl Fn(&Value) -> u64) -> u64 {
    node_status(v, node)["workers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(f)
        .sum()
}
