//! A re-encoding of upstream Kubernetes' NetworkPolicy e2e suite
//! (kubernetes/kubernetes test/e2e/network/netpol/network_policy.go) against
//! weir: namespaces x, y, z with pods a, b, c serving TCP and UDP on 80 and
//! 81 (named ports `serve-80-tcp` ...), the policies each upstream case
//! creates, and its truth table (upstream's `Reachability`) over all nine
//! pods, compared EXACTLY with weir's real probe matrix (self-pairs are
//! loopback and ignored, as upstream does). For every case `weir explain`
//! must agree with the probe on every pair. Cases share one cluster per
//! test function: create policies, probe, delete them, reset labels.
//! Needs root.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use weir_tests::{netpol, xyz_cluster, xyz_namespace, xyz_pod, Peer, Reachability, TestCluster};

/// How a suite changes the cluster: `weir apply`/`weir delete`, or the real
/// kubectl against the API server of `weir up --api-server` (namespaces,
/// pods, label changes and policies all go through the API server; weir
/// takes them from there).
#[derive(Clone, Copy, PartialEq)]
enum Via {
    Weir,
    Kubectl,
}

/// A label change to undo at the end of a case.
enum Restore {
    Namespace(String),
    Pod(String, String),
}

struct Suite {
    c: TestCluster,
    via: Via,
    /// Kubectl: each policy carries a `weir.test/rev` label, bumped on every
    /// apply, so the test knows when weir enforces what it applied.
    rev: u32,
    /// Kubectl: policy object → the rev weir must be enforcing.
    revs: BTreeMap<String, u32>,
    case: String,
    cases: Vec<String>,
    failures: Vec<String>,
    /// (ns/name, manifest) of the policies the current case created.
    policies: Vec<(String, String)>,
    /// Label changes the current case made, undone at its end.
    restore: Vec<Restore>,
    t0: Instant,
    case_t0: Instant,
}

impl Suite {
    fn new(tag: &str) -> Suite {
        Suite::with(TestCluster::up(tag, &xyz_cluster()), Via::Weir)
    }

    /// The same layout on a real API server: the pods of `xyz_cluster` are
    /// created there by `weir up --api-server`, and realised by weir.
    fn via_kubectl(tag: &str) -> Suite {
        let c = TestCluster::up_with(tag, &xyz_cluster(), &["--api-server"]);
        Suite::with(c, Via::Kubectl)
    }

    fn with(c: TestCluster, via: Via) -> Suite {
        Suite {
            c,
            via,
            rev: 0,
            revs: BTreeMap::new(),
            case: String::new(),
            cases: Vec::new(),
            failures: Vec::new(),
            policies: Vec::new(),
            restore: Vec::new(),
            t0: Instant::now(),
            case_t0: Instant::now(),
        }
    }

    fn case(&mut self, name: &str) {
        self.end_case();
        self.case = name.to_string();
        self.cases.push(name.to_string());
        self.case_t0 = Instant::now();
    }

    /// CreatePolicy / UpdatePolicy (same name: replaces).
    fn create(&mut self, ns: &str, name: &str, spec: &str) {
        let mut text = netpol(ns, name, spec);
        let key = format!("{ns}/{name}");
        match self.via {
            Via::Weir => self.c.apply("policy.yaml", &text),
            Via::Kubectl => {
                self.rev += 1;
                text = text.replace(
                    &format!("namespace: {ns}}}"),
                    &format!(
                        "namespace: {ns}, labels: {{weir.test/rev: \"{}\"}}}}",
                        self.rev
                    ),
                );
                self.kubectl(&["apply", "-f", &self.c.file("policy.json", &as_json(&text))]);
                self.revs.insert(format!("networkpolicies/{key}"), self.rev);
                self.wait_policies();
            }
        }
        self.policies.retain(|(k, _)| *k != key);
        self.policies.push((key, text));
    }

    fn delete_all_policies(&mut self) {
        for (_, text) in std::mem::take(&mut self.policies).into_iter().rev() {
            match self.via {
                Via::Weir => self.c.delete("policy.yaml", &text),
                Via::Kubectl => {
                    self.kubectl(&["delete", "-f", &self.c.file("policy.json", &as_json(&text))]);
                }
            }
        }
        if self.via == Via::Kubectl {
            self.revs.clear();
            self.wait_policies();
        }
    }

    fn label_namespace(&mut self, ns: &str, extra: &[(&str, &str)]) {
        self.set_namespace_labels(ns, extra);
        self.restore.push(Restore::Namespace(ns.to_string()));
    }

    fn label_pod(&mut self, ns: &str, pod: &str, extra: &[(&str, &str)]) {
        self.set_pod_labels(ns, pod, extra);
        self.restore
            .push(Restore::Pod(ns.to_string(), pod.to_string()));
    }

    /// The namespace's labels become `ns: NAME` plus `extra`.
    fn set_namespace_labels(&mut self, ns: &str, extra: &[(&str, &str)]) {
        let text = xyz_namespace(ns, extra);
        match self.via {
            Via::Weir => self.c.apply("ns.yaml", &text),
            Via::Kubectl => {
                self.kubectl(&["apply", "-f", &self.c.file("ns.json", &as_json(&text))]);
                let mut want = labels(&[("ns", ns), ("kubernetes.io/metadata.name", ns)]);
                want.extend(labels(extra));
                self.wait_until(&format!("namespaces/{ns} labels {want:?}"), |c| {
                    c.namespaces
                        .iter()
                        .any(|n| n.name == ns && n.labels == want)
                });
            }
        }
    }

    /// The pod's labels become `pod: NAME` plus `extra`.
    fn set_pod_labels(&mut self, ns: &str, pod: &str, extra: &[(&str, &str)]) {
        let text = xyz_pod(ns, pod, extra);
        match self.via {
            Via::Weir => self.c.apply("pod.yaml", &text),
            Via::Kubectl => {
                // The same pod as `weir up --api-server` created (the image
                // it filled in): only the labels differ.
                let text = text.replace(
                    "- name: cont-80-81\n",
                    "- name: cont-80-81\n    image: weir.dev/no-image\n",
                );
                self.kubectl(&["apply", "-f", &self.c.file("pod.json", &as_json(&text))]);
                let mut want = labels(&[("pod", pod)]);
                want.extend(labels(extra));
                self.wait_until(&format!("pods/{ns}/{pod} labels {want:?}"), |c| {
                    c.pod(ns, pod).is_some_and(|p| p.labels == want)
                });
            }
        }
    }

    fn kubectl(&self, args: &[&str]) {
        let mut argv = vec!["kubectl"];
        argv.extend_from_slice(args);
        let out = self.c.weir(&argv);
        assert!(
            out.status.success(),
            "weir kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Kubectl: waits until the supervisor enforces exactly the policies
    /// (and revisions) applied, on every dataplane.
    fn wait_policies(&self) {
        let want = self.revs.clone();
        let state = state_dir(&self.c);
        self.wait_until(&format!("policies {want:?}"), move |_| {
            let text = std::fs::read_to_string(state.join("policies.json"))
                .unwrap_or_else(|_| "[]".into());
            let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            let have: Vec<(String, String)> = v
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| {
                    (
                        p["object"].as_str().unwrap_or_default().to_string(),
                        p["yaml"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect();
            have.len() == want.len()
                && want.iter().all(|(o, rev)| {
                    have.iter()
                        .any(|(ho, y)| ho == o && rev_label(y) == Some(*rev))
                })
        });
    }

    /// Waits (bounded: only so a broken kubelet cannot hang the suite)
    /// until `done` holds for the realised cluster and every dataplane runs
    /// the supervisor's latest generation.
    fn wait_until(&self, what: &str, done: impl Fn(&weir_topo::Cluster) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if done(&self.c.topology()) && supervisor_ready(&self.c) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{}: weir did not take {what} from the API server; kubelet log:\n{}",
                self.case,
                std::fs::read_to_string(state_dir(&self.c).join("kubelet.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn check(&mut self, port: u16, protocol: &str, want: &Reachability) {
        if let Err(e) = self.c.check_reachability(&self.case, port, protocol, want) {
            eprintln!("FAIL {e}");
            self.failures.push(e);
        }
    }

    fn check_ipv6(&mut self, port: u16, protocol: &str, want: &Reachability) {
        if let Err(e) = self
            .c
            .check_reachability_family(&self.case, port, protocol, "ipv6", want)
        {
            eprintln!("FAIL {e}");
            self.failures.push(e);
        }
    }

    fn end_case(&mut self) {
        if self.case.is_empty() {
            return;
        }
        self.delete_all_policies();
        for r in std::mem::take(&mut self.restore).into_iter().rev() {
            match r {
                Restore::Namespace(ns) => self.set_namespace_labels(&ns, &[]),
                Restore::Pod(ns, pod) => self.set_pod_labels(&ns, &pod, &[]),
            }
        }
        eprintln!(
            "case {:?}: {} ms",
            self.case,
            self.case_t0.elapsed().as_millis()
        );
        self.case.clear();
    }

    fn finish(mut self) {
        self.end_case();
        eprintln!(
            "{} cases in {:.1} s",
            self.cases.len(),
            self.t0.elapsed().as_secs_f64()
        );
        assert!(
            self.failures.is_empty(),
            "{} of {} checks failed:\n{}",
            self.failures.len(),
            self.cases.len(),
            self.failures.join("\n\n")
        );
    }
}

/// The manifests as JSON, read the way weir reads YAML (1.2). kubectl reads
/// YAML 1.1, where the plain scalar `y` of the upstream layout (`ns: y`) is
/// the boolean true, which a label refuses; `weir up --api-server` sends the
/// API server JSON the same way.
fn as_json(text: &str) -> String {
    let items: Vec<serde_json::Value> = weir_topo::manifest::split_documents(text, "case")
        .expect("case manifests parse")
        .iter()
        .map(|d| serde_json::to_value(&d.value).expect("JSON"))
        .collect();
    serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string()
}

/// The `weir.test/rev` label of a stored policy (YAML, one key a line).
fn rev_label(yaml: &str) -> Option<u32> {
    yaml.lines().find_map(|l| {
        let v = l.trim().strip_prefix("weir.test/rev:")?;
        v.trim()
            .trim_matches(|c| c == '\'' || c == '"')
            .parse()
            .ok()
    })
}

fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn state_dir(c: &TestCluster) -> std::path::PathBuf {
    std::env::var_os("WEIR_STATE_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from("/run/weir"))
        .join(&c.name)
}

/// The supervisor's own readiness (its `ping` on daemon.sock): every
/// dataplane runs its latest generation.
fn supervisor_ready(c: &TestCluster) -> bool {
    use std::io::{BufRead, BufReader, Write};
    let Ok(mut s) = std::os::unix::net::UnixStream::connect(state_dir(c).join("daemon.sock"))
    else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    if s.write_all(b"{\"op\":\"ping\"}\n").is_err() {
        return false;
    }
    let mut line = String::new();
    if BufReader::new(&s).read_line(&mut line).is_err() {
        return false;
    }
    serde_json::from_str::<serde_json::Value>(&line).is_ok_and(|v| v["data"]["ready"] == true)
}

fn all() -> Reachability {
    Reachability::all()
}

const X: &str = "x";
const Y: &str = "y";
const Z: &str = "z";

#[test]
fn netpol_ingress_selectors() {
    let mut s = Suite::new("npi");
    ingress_selectors(&mut s);
    s.finish();
}

fn ingress_selectors(s: &mut Suite) {
    s.case("should support a 'default-deny-ingress' policy");
    s.create(
        X,
        "deny-ingress",
        "{podSelector: {}, policyTypes: [Ingress]}",
    );
    let mut r = all();
    r.expect_peer(Peer::ANY, Peer::ns(X), false);
    s.check(80, "TCP", &r);
    // weir addition: the same table over IPv6
    s.check_ipv6(80, "TCP", &r);

    s.case("should support a 'default-deny-all' policy");
    s.create(
        X,
        "deny-all",
        "{podSelector: {}, policyTypes: [Ingress, Egress]}",
    );
    let mut r = all();
    r.expect_peer(Peer::ANY, Peer::ns(X), false)
        .expect_peer(Peer::ns(X), Peer::ANY, false);
    s.check(80, "TCP", &r);

    s.case("should enforce policy to allow traffic from pods within server namespace based on PodSelector");
    s.create(
        X,
        "x-a-allows-x-b",
        "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress], ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]}",
    );
    let mut r = all();
    r.expect_all_ingress("x/a", false)
        .expect("x/b", "x/a", true);
    s.check(80, "TCP", &r);

    s.case("should enforce policy to allow ingress traffic for a target");
    s.create(X, "deny-all", "{podSelector: {}, policyTypes: [Ingress]}");
    s.create(
        X,
        "allow-all-to-a",
        "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress], ingress: [{from: [{podSelector: {}, namespaceSelector: {}}]}]}",
    );
    let mut r = all();
    r.expect_all_ingress("x/a", true)
        .expect_all_ingress("x/b", false)
        .expect_all_ingress("x/c", false);
    s.check(80, "TCP", &r);

    s.case("should enforce policy to allow ingress traffic from pods in all namespaces");
    s.create(
        X,
        "allow-from-another-ns",
        "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress], ingress: [{from: [{namespaceSelector: {matchLabels: {}}}]}]}",
    );
    s.check(80, "TCP", &all());

    s.case("should enforce policy to allow traffic only from a different namespace, based on NamespaceSelector");
    s.create(
        X,
        "allow-client-a-via-ns-selector",
        "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress], ingress: [{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}}]}]}",
    );
    let mut r = all();
    r.expect_peer(Peer::ns(X), Peer::pod(X, "a"), false)
        .expect_peer(Peer::ns(Z), Peer::pod(X, "a"), false);
    s.check(80, "TCP", &r);

    s.case("should enforce policy based on PodSelector with MatchExpressions");
    s.create(
        X,
        "x-a-allows-x-b",
        "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress], ingress: [{from: [{podSelector: {matchExpressions: [{key: pod, operator: In, values: [b]}]}}]}]}",
    );
    let mut r = all();
    r.expect_all_ingress("x/a", false)
        .expect("x/b", "x/a", true);
    s.check(80, "TCP", &r);

    s.case("should enforce policy based on NamespaceSelector with MatchExpressions");
    s.create(
        X,
        "allow-ns-y-match-selector",
        "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress], ingress: [{from: [{namespaceSelector: {matchExpressions: [{key: kubernetes.io/metadata.name, operator: In, values: [y]}]}}]}]}",
    );
    let mut r = all();
    r.expect_peer(Peer::ns(X), Peer::pod(X, "a"), false)
        .expect_peer(Peer::ns(Z), Peer::pod(X, "a"), false);
    s.check(80, "TCP", &r);

    s.case("should enforce policy based on PodSelector or NamespaceSelector");
    s.create(
        X,
        "allow-ns-y-match-selector",
        "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress], ingress: [{from: [{namespaceSelector: {matchExpressions: [{key: kubernetes.io/metadata.name, operator: NotIn, values: [x]}]}}, {podSelector: {matchLabels: {pod: b}}}]}]}",
    );
    let mut r = all();
    r.expect("x/c", "x/a", false);
    s.check(80, "TCP", &r);

    s.case("should enforce policy based on PodSelector and NamespaceSelector");
    s.create(
        X,
        "allow-ns-y-podselector-and-nsselector",
        "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress], ingress: [{from: [{namespaceSelector: {matchExpressions: [{key: kubernetes.io/metadata.name, operator: NotIn, values: [x]}]}, podSelector: {matchLabels: {pod: b}}}]}]}",
    );
    let mut r = all();
    r.expect_all_ingress("x/a", false)
        .expect("y/b", "x/a", true)
        .expect("z/b", "x/a", true);
    s.check(80, "TCP", &r);

    s.case("should enforce policy based on Multiple PodSelectors and NamespaceSelectors");
    s.create(
        X,
        "allow-ns-y-z-pod-b-c",
        "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress], ingress: [{from: [{namespaceSelector: {matchExpressions: [{key: kubernetes.io/metadata.name, operator: NotIn, values: [x]}]}, podSelector: {matchExpressions: [{key: pod, operator: In, values: [b, c]}]}}]}]}",
    );
    let mut r = all();
    r.expect_peer(Peer::ns(X), Peer::pod(X, "a"), false)
        .expect("y/a", "x/a", false)
        .expect("z/a", "x/a", false);
    s.check(80, "TCP", &r);

    s.case("should enforce policy based on any PodSelectors");
    s.create(
        X,
        "allow-ns-x-pod-b-c",
        "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress], ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}, {podSelector: {matchLabels: {pod: c}}}]}]}",
    );
    let mut r = all();
    r.expect_all_ingress("x/a", false)
        .expect("x/b", "x/a", true)
        .expect("x/c", "x/a", true);
    s.check(80, "TCP", &r);

    s.case("should enforce policy to allow traffic only from a pod in a different namespace based on PodSelector and NamespaceSelector");
    s.create(
        X,
        "allow-ns-y-pod-a-via-namespace-pod-selector",
        "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress], ingress: [{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}, podSelector: {matchLabels: {pod: a}}}]}]}",
    );
    let mut r = all();
    r.expect_all_ingress("x/a", false)
        .expect("y/a", "x/a", true);
    s.check(80, "TCP", &r);

    s.case("should deny ingress from pods on other namespaces");
    s.create(
        X,
        "deny-empty-policy",
        "{podSelector: {}, policyTypes: [Ingress], ingress: [{from: [{podSelector: {matchLabels: {}}}]}]}",
    );
    let mut r = all();
    r.expect_peer(Peer::ns(Y), Peer::ns(X), false)
        .expect_peer(Peer::ns(Z), Peer::ns(X), false);
    s.check(80, "TCP", &r);

    s.case("should enforce policy to allow traffic based on NamespaceSelector with MatchLabels using default ns label");
    s.create(
        X,
        "allow-client-a-via-ns-selector-for-immutable-ns-label",
        "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress], ingress: [{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}}]}]}",
    );
    let mut r = all();
    r.expect_peer(Peer::ns(X), Peer::pod(X, "a"), false)
        .expect_peer(Peer::ns(Z), Peer::pod(X, "a"), false);
    s.check(80, "TCP", &r);
}

#[test]
fn netpol_ports_and_protocols() {
    let mut s = Suite::new("npp");
    ports_and_protocols(&mut s);
    s.finish();
}

fn ports_and_protocols(s: &mut Suite) {
    s.case("should enforce policy based on Ports");
    s.create(
        X,
        "allow-client-a-via-ns-selector",
        "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress], ingress: [{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}}], ports: [{port: 81, protocol: TCP}]}]}",
    );
    let mut r = all();
    r.expect_peer(Peer::ns(X), Peer::pod(X, "a"), false)
        .expect_peer(Peer::ns(Y), Peer::pod(X, "a"), true)
        .expect_peer(Peer::ns(Z), Peer::pod(X, "a"), false);
    s.check(81, "TCP", &r);

    s.case("should enforce multiple, stacked policies with overlapping podSelectors");
    let port_policy = |p: u16| {
        format!("{{podSelector: {{matchLabels: {{pod: a}}}}, policyTypes: [Ingress], ingress: [{{from: [{{namespaceSelector: {{matchLabels: {{kubernetes.io/metadata.name: y}}}}}}], ports: [{{port: {p}, protocol: TCP}}]}}]}}")
    };
    s.create(X, "allow-client-a-via-ns-selector", &port_policy(81));
    let mut allow = all();
    allow
        .expect_peer(Peer::ns(X), Peer::pod(X, "a"), false)
        .expect_peer(Peer::ns(Y), Peer::pod(X, "a"), true)
        .expect_peer(Peer::ns(Z), Peer::pod(X, "a"), false);
    s.check(81, "TCP", &allow);
    let mut deny = all();
    deny.expect_all_ingress("x/a", false);
    s.check(80, "TCP", &deny);
    s.create(X, "allow-client-a-via-ns-selector-80", &port_policy(80));
    s.check(80, "TCP", &allow);

    s.case("should support allow-all policy");
    s.create(
        X,
        "allow-all",
        "{podSelector: {matchLabels: {}}, policyTypes: [Ingress], ingress: [{}]}",
    );
    s.check(80, "TCP", &all());
    s.check(81, "TCP", &all());

    s.case("should allow ingress access on one named port");
    s.create(
        X,
        "allow-all",
        "{podSelector: {matchLabels: {}}, policyTypes: [Ingress], ingress: [{ports: [{port: serve-81-tcp}]}]}",
    );
    s.check(81, "TCP", &all());
    let mut r = all();
    r.expect_peer(Peer::ANY, Peer::ns(X), false);
    s.check(80, "TCP", &r);

    s.case("should allow ingress access from namespace on one named port");
    s.create(
        X,
        "allow-client-a-via-ns-selector-80",
        "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress], ingress: [{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}}], ports: [{port: serve-80-tcp, protocol: TCP}]}]}",
    );
    let mut r = all();
    r.expect_peer(Peer::ns(X), Peer::pod(X, "a"), false)
        .expect_peer(Peer::ns(Z), Peer::pod(X, "a"), false);
    s.check(80, "TCP", &r);
    let mut r = all();
    r.expect_all_ingress("x/a", false);
    s.check(81, "TCP", &r);

    s.case("should allow egress access on one named port");
    s.create(
        X,
        "allow-egress",
        "{podSelector: {matchLabels: {}}, policyTypes: [Egress], egress: [{ports: [{port: serve-80-tcp}]}]}",
    );
    s.check(80, "TCP", &all());
    let mut r = all();
    r.expect_peer(Peer::ns(X), Peer::ANY, false);
    s.check(81, "TCP", &r);

    s.case("should enforce ingress policy allowing any port traffic to a server on a specific protocol");
    s.create(
        X,
        "allow-ingress-by-proto",
        "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress], ingress: [{ports: [{protocol: TCP}]}]}",
    );
    s.check(80, "TCP", &all());
    let mut r = all();
    r.expect_peer(Peer::ANY, Peer::pod(X, "a"), false);
    s.check(80, "UDP", &r);

    s.case(
        "should enforce multiple ingress policies with ingress allow-all policy taking precedence",
    );
    s.create(
        X,
        "allow-ingress-port-80",
        "{podSelector: {matchLabels: {}}, policyTypes: [Ingress], ingress: [{ports: [{port: 80}]}]}",
    );
    let mut r = all();
    r.expect_peer(Peer::ANY, Peer::ns(X), false);
    s.check(81, "TCP", &r);
    s.create(
        X,
        "allow-ingress",
        "{podSelector: {matchLabels: {}}, policyTypes: [Ingress], ingress: [{}]}",
    );
    s.check(81, "TCP", &all());

    s.case("should not mistakenly treat 'protocol: SCTP' as 'protocol: TCP', even if the plugin doesn't support SCTP");
    s.create(
        X,
        "deny-ingress",
        "{podSelector: {}, policyTypes: [Ingress]}",
    );
    s.create(
        X,
        "allow-only-sctp-ingress-on-port-81",
        "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress], ingress: [{ports: [{port: 81, protocol: SCTP}]}]}",
    );
    let mut r = all();
    r.expect_peer(Peer::ANY, Peer::ns(X), false);
    s.check(81, "TCP", &r);

    s.case("should properly isolate pods that are selected by a policy allowing SCTP, even if the plugin doesn't support SCTP");
    s.create(
        X,
        "allow-only-sctp-ingress-on-port-80",
        "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress], ingress: [{ports: [{port: 80, protocol: SCTP}]}]}",
    );
    let mut r = all();
    r.expect_all_ingress("x/a", false);
    s.check(81, "TCP", &r);

    s.case("should not allow access by TCP when a policy specifies only UDP");
    s.create(
        X,
        "allow-only-udp-ingress-on-port-81",
        "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress], ingress: [{ports: [{port: 81, protocol: UDP}]}]}",
    );
    let mut r = all();
    r.expect_all_ingress("x/a", false);
    s.check(81, "TCP", &r);
    // weir addition: the UDP the policy names does pass.
    s.check(81, "UDP", &all());

    s.case("endPort: should enforce policy based on a port range (weir addition, after 'based on Ports')");
    s.create(
        X,
        "allow-y-80-81",
        "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress], ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}], ports: [{port: 80, endPort: 81, protocol: TCP}]}]}",
    );
    let mut r = all();
    r.expect_peer(Peer::ns(X), Peer::pod(X, "a"), false)
        .expect_peer(Peer::ns(Z), Peer::pod(X, "a"), false);
    s.check(80, "TCP", &r);
    s.check(81, "TCP", &r);
    s.create(
        X,
        "allow-y-80-81",
        "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress], ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}], ports: [{port: 81, endPort: 90, protocol: TCP}]}]}",
    );
    s.check(81, "TCP", &r);
    let mut r = all();
    r.expect_all_ingress("x/a", false);
    s.check(80, "TCP", &r);

    s.case("UDP: should support a 'default-deny-ingress' policy");
    s.create(X, "deny-all", "{podSelector: {}, policyTypes: [Ingress]}");
    let mut r = all();
    r.expect_peer(Peer::ANY, Peer::ns(X), false);
    s.check(80, "UDP", &r);

    s.case("UDP: should enforce policy based on Ports");
    s.create(
        X,
        "allow-ingress-on-port-81-ns-x",
        "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress], ingress: [{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}}], ports: [{port: 81, protocol: UDP}]}]}",
    );
    let mut r = all();
    r.expect_peer(Peer::ns(X), Peer::pod(X, "a"), false)
        .expect_peer(Peer::ns(Z), Peer::pod(X, "a"), false);
    s.check(81, "UDP", &r);

    s.case("UDP: should enforce policy to allow traffic only from a pod in a different namespace based on PodSelector and NamespaceSelector");
    s.create(
        X,
        "allow-ns-y-pod-a-via-namespace-pod-selector",
        "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress], ingress: [{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}, podSelector: {matchLabels: {pod: a}}}]}]}",
    );
    let mut r = all();
    r.expect_all_ingress("x/a", false)
        .expect("y/a", "x/a", true);
    s.check(80, "UDP", &r);
    // weir addition: the same table over IPv6
    s.check_ipv6(80, "UDP", &r);
}

#[test]
fn netpol_egress_and_ipblocks() {
    let mut s = Suite::new("npe");
    egress_and_ipblocks(&mut s);
    s.finish();
}

fn egress_and_ipblocks(s: &mut Suite) {
    s.case("should deny egress from pods based on PodSelector");
    s.create(
        X,
        "deny-egress-pod-a",
        "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Egress]}",
    );
    let mut r = all();
    r.expect_all_egress("x/a", false);
    s.check(80, "TCP", &r);

    s.case("should deny egress from all pods in a namespace");
    s.create(
        X,
        "deny-egress-ns-x",
        "{podSelector: {}, policyTypes: [Egress]}",
    );
    let mut r = all();
    r.expect_peer(Peer::ns(X), Peer::ANY, false);
    s.check(80, "TCP", &r);

    s.case("should work with Ingress, Egress specified together");
    s.create(
        X,
        "allow-client-a-via-pod-selector",
        "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Egress, Ingress], ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}], egress: [{ports: [{port: 80}]}]}",
    );
    let mut r80 = all();
    r80.expect_all_ingress("x/a", false)
        .expect("x/b", "x/a", true);
    s.check(80, "TCP", &r80);
    let mut r81 = all();
    r81.expect_all_ingress("x/a", false)
        .expect_all_egress("x/a", false)
        .expect("x/b", "x/a", true);
    s.check(81, "TCP", &r81);

    s.case("should support denying of egress traffic on the client side (even if the server explicitly allows this traffic)");
    s.create(
        X,
        "allow-to-ns-y-pod-a",
        "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Egress], egress: [{to: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}, podSelector: {matchLabels: {pod: a}}}]}]}",
    );
    let from_xa = "{podSelector: {matchLabels: {pod: PODNAME}}, policyTypes: [Ingress], ingress: [{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: x}}, podSelector: {matchLabels: {pod: a}}}]}]}";
    s.create(
        Y,
        "allow-from-xa-on-ya-match-selector",
        &from_xa.replace("PODNAME", "a"),
    );
    s.create(
        Y,
        "allow-from-xa-on-yb-match-selector",
        &from_xa.replace("PODNAME", "b"),
    );
    let mut r = all();
    r.expect_peer(Peer::pod(X, "a"), Peer::ANY, false)
        .expect_peer(Peer::ANY, Peer::pod(Y, "a"), false)
        .expect_peer(Peer::pod(X, "a"), Peer::pod(Y, "a"), true)
        .expect_peer(Peer::ANY, Peer::pod(Y, "b"), false);
    s.check(80, "TCP", &r);

    s.case("should enforce egress policy allowing traffic to a server in a different namespace based on PodSelector and NamespaceSelector");
    s.create(
        X,
        "allow-to-ns-y-pod-a",
        "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Egress], egress: [{to: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}, podSelector: {matchLabels: {pod: a}}}]}]}",
    );
    let mut r = all();
    r.expect_all_egress("x/a", false).expect("x/a", "y/a", true);
    s.check(80, "TCP", &r);

    s.case(
        "should enforce multiple egress policies with egress allow-all policy taking precedence",
    );
    s.create(
        X,
        "allow-egress-port-80",
        "{podSelector: {matchLabels: {}}, policyTypes: [Egress], egress: [{ports: [{port: 80}]}]}",
    );
    let mut r = all();
    r.expect_peer(Peer::ns(X), Peer::ANY, false);
    s.check(81, "TCP", &r);
    s.create(
        X,
        "allow-egress",
        "{podSelector: {matchLabels: {}}, policyTypes: [Egress], egress: [{}]}",
    );
    s.check(81, "TCP", &all());

    s.case("should enforce policies to check ingress and egress policies can be controlled independently based on PodSelector");
    s.create(
        X,
        "allow-egress-for-target",
        "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Egress], egress: [{}]}",
    );
    s.check(80, "TCP", &all());
    s.create(
        X,
        "deny-ingress-via-label-selector",
        "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress]}",
    );
    let mut r = all();
    r.expect_all_ingress("x/a", false);
    s.check(80, "TCP", &r);

    s.case("should enforce policy based on NamespaceSelector with MatchExpressions using default ns label");
    s.create(
        X,
        "allow-ns-y-match-selector-for-immutable-ns-label",
        "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Egress], egress: [{to: [{namespaceSelector: {matchExpressions: [{key: kubernetes.io/metadata.name, operator: NotIn, values: [y]}]}}]}]}",
    );
    let mut r = all();
    r.expect_peer(Peer::pod(X, "a"), Peer::ns(Y), false);
    s.check(80, "TCP", &r);

    // ipBlocks: the pod addresses weir gave the pods.
    let pods = s.c.weir_json(&["get", "pods", "-A", "-o", "json"]);
    let ip = |ns: &str, pod: &str| -> String {
        pods.as_array()
            .into_iter()
            .flatten()
            .find(|p| p["namespace"] == ns && p["name"] == pod)
            .and_then(|p| p["ipv4"].as_str().map(str::to_string))
            .or_else(|| {
                s.c.topology()
                    .pod(ns, pod)
                    .and_then(|p| p.ipv4)
                    .map(|a| a.to_string())
            })
            .unwrap_or_else(|| panic!("no IPv4 for {ns}/{pod}: {pods}"))
    };
    let yb = ip("y", "b");
    let xb = ip("x", "b");
    // upstream's makeLargeCIDRForIP: the /4 containing the address
    let first = xb
        .split('.')
        .next()
        .and_then(|o| o.parse::<u8>().ok())
        .expect("octet");
    let large = format!("{}.0.0.0/4", first & 0xf0);

    s.case("should allow egress access to server in CIDR block");
    s.create(
        X,
        "allow-client-a-via-cidr-egress-rule",
        &format!("{{podSelector: {{matchLabels: {{pod: a}}}}, policyTypes: [Egress], egress: [{{to: [{{ipBlock: {{cidr: {yb}/32}}}}]}}]}}"),
    );
    let mut r = all();
    r.expect_all_egress("x/a", false).expect("x/a", "y/b", true);
    s.check(80, "TCP", &r);

    s.case("should enforce except clause while egress access to server in CIDR block");
    s.create(
        X,
        "allow-client-a-via-cidr-egress-rule",
        &format!("{{podSelector: {{matchLabels: {{pod: a}}}}, policyTypes: [Egress], egress: [{{to: [{{ipBlock: {{cidr: {large}, except: [{xb}/32]}}}}]}}]}}"),
    );
    let mut r = all();
    r.expect("x/a", "x/b", false);
    s.check(80, "TCP", &r);

    s.case("should ensure an IP overlapping both IPBlock.CIDR and IPBlock.Except is allowed");
    s.create(
        X,
        "allow-client-a-via-cidr-egress-rule",
        &format!("{{podSelector: {{matchLabels: {{pod: a}}}}, policyTypes: [Egress], egress: [{{to: [{{ipBlock: {{cidr: {large}, except: [{xb}/32]}}}}]}}]}}"),
    );
    let mut r = all();
    r.expect("x/a", "x/b", false);
    s.check(80, "TCP", &r);
    // UpdatePolicy: the same policy now allows only x/b
    s.create(
        X,
        "allow-client-a-via-cidr-egress-rule",
        &format!("{{podSelector: {{matchLabels: {{pod: a}}}}, policyTypes: [Egress], egress: [{{to: [{{ipBlock: {{cidr: {xb}/32}}}}]}}]}}"),
    );
    let mut r = all();
    r.expect_all_egress("x/a", false).expect("x/a", "x/b", true);
    s.check(80, "TCP", &r);
}

#[test]
fn netpol_updates_and_labels() {
    let mut s = Suite::new("npu");
    updates_and_labels(&mut s);
    s.finish();
}

fn updates_and_labels(s: &mut Suite) {
    s.case("should enforce updated policy");
    s.create(
        X,
        "allow-all-mutate-to-deny-all",
        "{podSelector: {matchLabels: {}}, policyTypes: [Ingress], ingress: [{}]}",
    );
    s.check(81, "TCP", &all());
    s.create(
        X,
        "allow-all-mutate-to-deny-all",
        "{podSelector: {matchLabels: {}}, policyTypes: [Ingress], ingress: []}",
    );
    let mut r = all();
    r.expect_peer(Peer::ANY, Peer::ns(X), false);
    s.check(81, "TCP", &r);

    s.case("should allow ingress access from updated namespace");
    s.create(
        X,
        "allow-client-a-via-ns-selector",
        "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress], ingress: [{from: [{namespaceSelector: {matchLabels: {ns2: updated}}}]}]}",
    );
    let mut r = all();
    r.expect_all_ingress("x/a", false);
    s.check(80, "TCP", &r);
    s.label_namespace(Y, &[("ns2", "updated")]);
    let mut r = all();
    r.expect_all_ingress("x/a", false)
        .expect_peer(Peer::ns(Y), Peer::ANY, true);
    s.check(80, "TCP", &r);

    s.case("should allow ingress access from updated pod");
    s.create(
        X,
        "allow-client-a-via-pod-selector",
        "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress], ingress: [{from: [{podSelector: {matchLabels: {pod: b, pod2: updated}}}]}]}",
    );
    let mut r = all();
    r.expect_all_ingress("x/a", false);
    s.check(80, "TCP", &r);
    s.label_pod(X, "b", &[("pod2", "updated")]);
    r.expect("x/b", "x/a", true);
    s.check(80, "TCP", &r);

    s.case("should deny ingress access to updated pod");
    s.create(
        X,
        "deny-ingress-via-label-selector",
        "{podSelector: {matchLabels: {target: isolated}}, policyTypes: [Ingress]}",
    );
    s.check(80, "TCP", &all());
    s.label_pod(X, "a", &[("target", "isolated")]);
    let mut r = all();
    r.expect_all_ingress("x/a", false);
    s.check(80, "TCP", &r);

    s.case("should stop enforcing policies after they are deleted");
    s.create(
        X,
        "deny-all",
        "{podSelector: {}, policyTypes: [Ingress, Egress]}",
    );
    let mut r = all();
    r.expect_peer(Peer::ns(X), Peer::ANY, false)
        .expect_peer(Peer::ANY, Peer::ns(X), false);
    s.check(80, "TCP", &r);
    s.delete_all_policies();
    s.check(80, "TCP", &all());

    s.case("harness self-check: a wrong expectation is reported (weir addition)");
    s.create(
        X,
        "deny-ingress",
        "{podSelector: {}, policyTypes: [Ingress]}",
    );
    let err =
        s.c.check_reachability("self-check", 80, "TCP", &all())
            .expect_err("a default-deny namespace matched an all-connected table");
    assert!(
        err.contains("x/a") && err.contains("expected connected, got blocked"),
        "{err}"
    );

    s.case("labels restored: the previous cases' label changes are undone (weir addition)");
    // After the resets, a selector on the updated labels selects nothing again.
    s.create(
        X,
        "allow-updated",
        "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress], ingress: [{from: [{namespaceSelector: {matchLabels: {ns2: updated}}}, {podSelector: {matchLabels: {pod2: updated}}}]}]}",
    );
    s.create(
        X,
        "isolate-target",
        "{podSelector: {matchLabels: {target: isolated}}, policyTypes: [Ingress]}",
    );
    let mut r = all();
    r.expect_all_ingress("x/a", false);
    s.check(80, "TCP", &r);
}

/// The same four case tables a second time, with every namespace, pod,
/// label change and policy going through the real kubectl and API server
/// (`weir up --api-server`): weir must produce the same truth tables.
#[test]
fn netpol_e2e_via_kubectl() {
    let mut s = Suite::via_kubectl("npk");
    ingress_selectors(&mut s);
    ports_and_protocols(&mut s);
    egress_and_ipblocks(&mut s);
    updates_and_labels(&mut s);
    s.finish();
}
