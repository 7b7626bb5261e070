//! `weir agent` against a REAL kube-apiserver (built from Go modules and
//! started by scripts/k8s-control-plane.sh): policies applied and deleted
//! with the real kubectl are enforced by the dataplane; a policy the API
//! server accepts but weir refuses leaves the previous tables in force for
//! everything; a bad kubeconfig is one line and exit 1. Needs root and Go.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};
use weir_tests::k8s::ControlPlane;
use weir_tests::{simple_cluster, weir_bin, TestCluster};

/// `weir agent` as a child; `Drop` kills it.
struct Agent(Child);

impl Agent {
    fn start(c: &TestCluster, kubeconfig: &Path) -> Agent {
        let log = std::fs::File::create(c.dir.join("agent.log")).expect("log");
        Agent(
            Command::new(weir_bin())
                .args(["--cluster", &c.name, "agent", "--kubeconfig"])
                .arg(kubeconfig)
                .env("RUST_LOG", "info")
                .stderr(log)
                .spawn()
                .expect("weir agent"),
        )
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn connected(c: &TestCluster) -> bool {
    let m: Value = c.probe(80, "TCP", &["--from", "kq/a", "--to", "kq/b"]);
    m["probes"][0]["connected"] == true
}

/// Waits (bounded) until a→b reachability is `want`; the bound only keeps a
/// broken agent from hanging the suite, nothing is timed.
fn wait_connected(c: &TestCluster, want: bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if connected(c) == want {
            return;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let log = std::fs::read_to_string(c.dir.join("agent.log")).unwrap_or_default();
    panic!("{what}: a→b connected should be {want}; agent log:\n{log}");
}

fn policies_in_force(c: &TestCluster) -> Vec<String> {
    let state = std::env::var_os("WEIR_STATE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/weir"));
    let text = std::fs::read_to_string(state.join(&c.name).join("policies.json"))
        .unwrap_or_else(|_| "[]".into());
    let v: Value = serde_json::from_str(&text).expect("policies.json");
    v.as_array()
        .into_iter()
        .flatten()
        .map(|p| p["object"].as_str().unwrap_or_default().to_string())
        .collect()
}

const DENY_B: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
metadata: {name: deny-b, namespace: kq}\n\
spec:\n  podSelector: {matchLabels: {pod: b}}\n  policyTypes: [Ingress]\n";

/// The API server accepts it (weir's CRD leaves spec to weir's parser); weir
/// refuses it: an HTTP path regex that does not compile.
const BAD_WEIR: &str = "apiVersion: weir.dev/v1alpha1\nkind: WeirPolicy\n\
metadata: {name: bad-regex, namespace: kq}\n\
spec:\n  podSelector: {matchLabels: {pod: b}}\n  ingress:\n  - action: Allow\n\
\x20   ports: [{protocol: TCP, port: 80}]\n    http: [{path: {regex: \"(\"}}]\n";

#[test]
fn kubectl_policies_are_enforced_and_a_refused_set_changes_nothing() {
    let cp = ControlPlane::start("ka");
    let c = TestCluster::up("ka", &simple_cluster("kq", &["a", "b"]));
    cp.kubectl_ok(&["create", "namespace", "kq"], None);
    let _agent = Agent::start(&c, &cp.kubeconfig);

    // No policy in the API server: open.
    wait_connected(&c, true, "no policies");
    let denied_before = c.drops("policy-denied");

    // kubectl apply → enforced by the dataplane (drops counted by weir).
    cp.kubectl_ok(&["apply", "-f", "-"], Some(DENY_B));
    wait_connected(&c, false, "after kubectl apply of deny-b");
    assert!(
        c.drops("policy-denied") > denied_before,
        "the dataplane did not count the denial"
    );
    assert_eq!(policies_in_force(&c), vec!["networkpolicies/kq/deny-b"]);

    // A policy weir refuses: accepted by the API server, and the previous
    // tables stay in force for everything — even the deletion of deny-b
    // that follows is not applied while the set cannot compile.
    cp.kubectl_ok(&["apply", "-f", "-"], Some(BAD_WEIR));
    cp.kubectl_ok(&["delete", "networkpolicy", "-n", "kq", "deny-b"], None);
    std::thread::sleep(Duration::from_secs(2));
    assert!(!connected(&c), "a refused policy set changed enforcement");
    assert_eq!(policies_in_force(&c), vec!["networkpolicies/kq/deny-b"]);
    let log = std::fs::read_to_string(c.dir.join("agent.log")).unwrap_or_default();
    assert!(
        log.contains("weirpolicies/kq/bad-regex"),
        "the refusal does not name the object: {log}"
    );

    // The user sees why where they look: Accepted=False on the object and a
    // Warning Event naming the field.
    let cond = cp.kubectl(
        &["get", "weirpolicy", "-n", "kq", "bad-regex", "-o",
          "jsonpath={.status.conditions[?(@.type==\"Accepted\")].status} {.status.conditions[0].message}"],
        None,
    );
    let cond = String::from_utf8_lossy(&cond.stdout).to_string();
    assert!(
        cond.starts_with("False ") && cond.contains("regex"),
        "condition: {cond}"
    );
    let events = cp.kubectl(
        &[
            "get",
            "events",
            "-n",
            "kq",
            "--field-selector",
            "reason=PolicyRefused",
            "-o",
            "name",
        ],
        None,
    );
    assert!(
        !String::from_utf8_lossy(&events.stdout).trim().is_empty(),
        "no PolicyRefused event: {}",
        String::from_utf8_lossy(&events.stderr)
    );

    // Fixing it (deleting the bad object) lets the pending change through.
    cp.kubectl_ok(&["delete", "weirpolicy", "-n", "kq", "bad-regex"], None);
    wait_connected(&c, true, "after the bad policy and deny-b are gone");
    assert!(policies_in_force(&c).is_empty());
}

#[test]
fn agent_with_bad_kubeconfig_is_one_line_and_exit_1() {
    let c = TestCluster::up("kb", &simple_cluster("kq", &["a"]));
    let f = c.file("bad.kubeconfig", "this: [is not a kubeconfig");
    let out = Command::new(weir_bin())
        .args(["--cluster", &c.name, "agent", "--kubeconfig", &f])
        .output()
        .expect("weir agent");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("bad.kubeconfig"), "{err}");

    // A kubeconfig pointing nowhere (a closed loopback port).
    let f = c.file(
        "nowhere.kubeconfig",
        "apiVersion: v1\nkind: Config\nclusters:\n- name: x\n  cluster: {server: 'https://127.0.0.1:1', insecure-skip-tls-verify: true}\n\
users:\n- name: u\n  user: {token: t}\ncontexts:\n- name: x\n  context: {cluster: x, user: u}\ncurrent-context: x\n",
    );
    let out = Command::new(weir_bin())
        .args(["--cluster", &c.name, "agent", "--kubeconfig", &f])
        .output()
        .expect("weir agent");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("nowhere.kubeconfig"), "{err}");
}
