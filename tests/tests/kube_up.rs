//! `weir up --api-server` against the REAL control plane weir starts
//! (etcd, kube-apiserver, kube-controller-manager built from Go modules by
//! scripts/k8s-build.sh): pods created with the real kubectl get an address,
//! run and talk through weir (counters), a label changed with kubectl flips
//! a NetworkPolicy verdict, a pod without a node is bound, a deleted pod
//! disappears from the machine, and `weir down` leaves nothing behind.
//! Needs root and the built control-plane binaries.

use serde_json::Value;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};
use weir_tests::{pod_manifest, unique_name, weir_bin, TestCluster};

fn state_root(c: &TestCluster) -> PathBuf {
    std::env::var_os("WEIR_STATE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/weir"))
        .join(&c.name)
}

fn kubectl(c: &TestCluster, args: &[&str]) -> Output {
    let mut argv = vec!["kubectl"];
    argv.extend_from_slice(args);
    c.weir(&argv)
}

fn kubectl_ok(c: &TestCluster, args: &[&str]) -> String {
    let out = kubectl(c, args);
    assert!(
        out.status.success(),
        "weir kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn kubelet_log(c: &TestCluster) -> String {
    std::fs::read_to_string(state_root(c).join("kubelet.log")).unwrap_or_default()
}

/// `kubectl apply -f` of a manifest text (written to the test's directory).
fn kubectl_apply(c: &TestCluster, file: &str, text: &str) {
    let f = c.file(file, text);
    kubectl_ok(c, &["apply", "-f", &f]);
}

/// Waits until the pod's phase is Running (kubectl wait; the bound only
/// keeps a broken kubelet from hanging the suite).
fn wait_running(c: &TestCluster, ns: &str, pod: &str) {
    let out = kubectl(
        c,
        &[
            "wait",
            "-n",
            ns,
            &format!("pod/{pod}"),
            "--for=jsonpath={.status.phase}=Running",
            "--timeout=90s",
        ],
    );
    assert!(
        out.status.success(),
        "pods/{ns}/{pod} not Running: {}\nkubelet log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        kubelet_log(c)
    );
}

fn pod_json(c: &TestCluster, ns: &str, pod: &str) -> Value {
    let text = kubectl_ok(c, &["get", "pod", "-n", ns, pod, "-o", "json"]);
    serde_json::from_str(&text).expect("pod JSON")
}

fn connected(c: &TestCluster, from: &str, to: &str) -> bool {
    let m = c.probe(80, "TCP", &["--from", from, "--to", to]);
    m["probes"][0]["connected"] == true
}

/// Waits (bounded) until `from → to` on TCP 80 is `want`.
fn wait_connected(c: &TestCluster, from: &str, to: &str, want: bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if connected(c, from, to) == want {
            return;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    panic!(
        "{what}: {from} → {to} connected should be {want}; kubelet log:\n{}",
        kubelet_log(c)
    );
}

/// A pod as a user writes it for Kubernetes (an image; no node unless given).
fn kube_pod(ns: &str, name: &str, node: Option<&str>) -> String {
    let node = node.map_or(String::new(), |n| format!("  nodeName: {n}\n"));
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{pod: {name}}}}}\n\
         spec:\n{node}  containers:\n  - name: web\n    image: registry.example/web:1\n    ports:\n\
         \x20   - {{containerPort: 80, protocol: TCP}}\n"
    )
}

/// Processes whose command line mentions the cluster's state dir or name.
fn processes_of(c: &TestCluster) -> Vec<String> {
    let root = state_root(c).display().to_string();
    let flag = format!("--cluster {} ", c.name);
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        if !e
            .file_name()
            .to_string_lossy()
            .bytes()
            .all(|b| b.is_ascii_digit())
        {
            continue;
        }
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(&root) || cmd.contains(&flag) {
            found.push(cmd);
        }
    }
    found
}

const ONLY_FRIENDS_TO_B: &str = r#"apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: only-friends, namespace: kq}
spec:
  podSelector: {matchLabels: {pod: b}}
  policyTypes: [Ingress]
  ingress:
  - from: [{podSelector: {matchLabels: {role: friend}}}]
    ports: [{protocol: TCP, port: 80}]
"#;

#[test]
fn kubectl_pods_run_talk_follow_labels_bind_and_go_away() {
    // One node, namespace kq and pod a from the file: the pod goes to the
    // API server and is realised from there.
    let file = "apiVersion: v1\nkind: Node\nmetadata: {name: node-1}\n\
        spec: {podCIDRs: [10.244.0.0/24, \"fd00:10:244::/64\"]}\n\
        ---\napiVersion: v1\nkind: Namespace\nmetadata: {name: kq, labels: {team: q}}\n"
        .to_string()
        + &pod_manifest("kq", "a");
    let c = TestCluster::up_with("ku", &file, &["--api-server"]);

    // `weir kubeconfig` names the admin kubeconfig; the Node is registered.
    let kc = c.weir(&["kubeconfig"]);
    let kc = String::from_utf8_lossy(&kc.stdout).trim().to_string();
    assert!(
        std::path::Path::new(&kc).is_file(),
        "weir kubeconfig: {kc:?}"
    );
    let node = kubectl_ok(
        &c,
        &[
            "get",
            "node",
            "node-1",
            "-o",
            "jsonpath={.spec.podCIDRs} {.status.conditions[?(@.type==\"Ready\")].status}",
        ],
    );
    assert_eq!(node, "[\"10.244.0.0/24\",\"fd00:10:244::/64\"] True");
    let a = pod_json(&c, "kq", "a");
    assert_eq!(a["status"]["phase"], "Running", "{a}");

    // The API server is the one source of truth: weir apply says where to go.
    let f = c.file("d.yaml", &pod_manifest("kq", "d"));
    let out = c.weir(&["apply", "-f", &f]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("weir kubectl apply -f FILE"), "{err}");

    // A pod created with kubectl on node-1: address, phase, conditions.
    kubectl_apply(&c, "b.yaml", &kube_pod("kq", "b", Some("node-1")));
    wait_running(&c, "kq", "b");
    let b = pod_json(&c, "kq", "b");
    let topo = c.topology();
    let rb = topo.pod("kq", "b").expect("pod b realised");
    assert_eq!(
        b["status"]["podIP"],
        rb.ipv4.expect("IPv4").to_string(),
        "{b}"
    );
    assert_eq!(b["status"]["podIPs"].as_array().map(Vec::len), Some(2));
    for t in ["PodScheduled", "Initialized", "ContainersReady", "Ready"] {
        let ok = b["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|x| x["type"] == t && x["status"] == "True");
        assert!(ok, "condition {t} not True: {b}");
    }
    assert_eq!(rb.ports.len(), 1, "containerPorts realised");

    // Traffic a → b crosses weir.
    let rx = c.counter("rx_packets");
    assert!(connected(&c, "kq/a", "kq/b"), "a → b without policy");
    assert!(c.counter("rx_packets") > rx, "weir did not forward a → b");

    // A NetworkPolicy through kubectl: only role=friend may reach b.
    let denied = c.drops("policy-denied");
    kubectl_apply(&c, "np.yaml", ONLY_FRIENDS_TO_B);
    wait_connected(&c, "kq/a", "kq/b", false, "policy applied, a not a friend");
    assert!(c.drops("policy-denied") > denied, "denial not counted");
    // kubectl label flips the verdict, both ways.
    kubectl_ok(&c, &["label", "pod", "-n", "kq", "a", "role=friend"]);
    wait_connected(&c, "kq/a", "kq/b", true, "a labelled role=friend");
    kubectl_ok(&c, &["label", "pod", "-n", "kq", "a", "role-"]);
    wait_connected(&c, "kq/a", "kq/b", false, "label role removed from a");

    // Namespace labels come from the API server too.
    kubectl_ok(&c, &["label", "namespace", "kq", "stage=test"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ns = c.topology();
        let kq = ns.namespaces.iter().find(|n| n.name == "kq").expect("kq");
        if kq.labels.get("stage").map(String::as_str) == Some("test") {
            assert_eq!(kq.labels.get("team").map(String::as_str), Some("q"));
            break;
        }
        assert!(Instant::now() < deadline, "namespace label not applied");
        std::thread::sleep(Duration::from_millis(200));
    }

    // A pod without a node is bound to one (the binding subresource).
    kubectl_apply(&c, "c.yaml", &kube_pod("kq", "c", None));
    wait_running(&c, "kq", "c");
    let pc = pod_json(&c, "kq", "c");
    assert_eq!(pc["spec"]["nodeName"], "node-1", "{pc}");
    assert!(c.topology().pod("kq", "c").is_some());

    // A pod the API server accepts (with a warning) but weir refuses (two
    // containers declare 80/TCP): it stays Pending, and the reason is a
    // Warning Event on it.
    kubectl_apply(
        &c,
        "dup.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: dup, namespace: kq}\nspec:\n  containers:\n\
         \x20 - {name: one, image: x, ports: [{containerPort: 80}]}\n\
         \x20 - {name: two, image: x, ports: [{containerPort: 80}]}\n",
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let event = loop {
        let e = kubectl_ok(
            &c,
            &[
                "get",
                "events",
                "-n",
                "kq",
                "--field-selector",
                "involvedObject.name=dup,reason=FailedCreatePodSandBox",
                "-o",
                "jsonpath={.items[*].message}",
            ],
        );
        if !e.is_empty() {
            break e;
        }
        assert!(Instant::now() < deadline, "no event for pods/kq/dup");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(event.contains("already declared"), "{event}");
    assert_eq!(pod_json(&c, "kq", "dup")["status"]["phase"], "Pending");
    assert!(c.topology().pod("kq", "dup").is_none());

    // kubectl delete: returns once the kubelet finished the deletion; the
    // pod's netns and veth are gone.
    let netns = rb.netns.clone();
    let veth = rb.host_ifname.clone();
    let node_netns = topo.node("node-1").expect("node").netns.clone();
    kubectl_ok(&c, &["delete", "pod", "-n", "kq", "b", "--timeout=90s"]);
    let gone = kubectl(&c, &["get", "pod", "-n", "kq", "b"]);
    assert!(!gone.status.success(), "pod b still in the API server");
    assert!(
        c.topology().pod("kq", "b").is_none(),
        "pod b still realised"
    );
    let list = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip");
    assert!(
        !String::from_utf8_lossy(&list.stdout).contains(&netns),
        "netns {netns} left"
    );
    let link = Command::new("ip")
        .args(["-n", &node_netns, "link", "show", &veth])
        .output()
        .expect("ip link");
    assert!(!link.status.success(), "veth {veth} left");

    // weir down: no process, no file.
    assert!(!processes_of(&c).is_empty(), "nothing found while up");
    let down = c.weir(&["down"]);
    assert!(down.status.success());
    assert_eq!(processes_of(&c), Vec::<String>::new());
    assert!(!state_root(&c).exists(), "state dir left");
    let kc_dir = std::path::Path::new(&kc).parent().expect("k8s dir");
    assert!(!kc_dir.exists(), "control plane data left");
}

#[test]
fn api_server_without_binaries_names_the_build_script() {
    let name = unique_name("kn");
    let dir = std::env::temp_dir().join(format!("weir-test-{name}"));
    std::fs::create_dir_all(&dir).expect("dir");
    let f = dir.join("c.yaml");
    std::fs::write(
        &f,
        "apiVersion: v1\nkind: Node\nmetadata: {name: node-1}\nspec: {podCIDRs: [10.244.0.0/24]}\n",
    )
    .expect("write");
    let out = Command::new(weir_bin())
        .env("WEIR_METRICS_ADDR", "off")
        .args(["--cluster", &name, "up", "--api-server", "-f"])
        .arg(&f)
        .env("WEIR_K8S_BIN", dir.join("no-such-bin"))
        .output()
        .expect("weir up");
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("scripts/k8s-build.sh"), "{err}");
    // Nothing was built.
    let state = std::env::var_os("WEIR_STATE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/weir"));
    assert!(!state.join(&name).exists());
}
