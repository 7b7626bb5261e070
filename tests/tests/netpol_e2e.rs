//! A re-encoding of upstream Kubernetes' NetworkPolicy e2e suite
//! (kubernetes/kubernetes test/e2e/network/netpol/network_policy.go) against
//! weir: namespaces x, y, z with pods a, b, c serving TCP and UDP on 80 and
//! 81 (named ports `serve-80-tcp` ...), the policies each upstream case
//! creates, and its truth table (upstream's `Reachability`) over all nine
//! pods, compared EXACTLY with weir's real probe matrix (self-pairs are
//! loopback and ignored, as upstream does). For every case `weir explain`
//! must agree with the probe on every pair. Cases share one cluster per
//! test function: create policies, probe, delete them, reset labels. The
//! case groups and their truth tables live in tests/src/netpol_cases.rs,
//! shared with the node-agent path (kube_node_netpol.rs).
//! Needs root.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use weir_tests::netpol_cases::{
    as_json, egress_and_ipblocks, ingress_selectors, labels, ports_and_protocols, rev_label,
    updates_and_labels, NetpolSuite,
};
use weir_tests::{netpol, xyz_cluster, xyz_namespace, xyz_pod, Reachability, TestCluster};

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
    /// Blocks of `weir policy check`'s offline matrix compared with the
    /// expected (and probed) reachability (issue 13: for every case).
    offline_compared: usize,
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
            offline_compared: 0,
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
        self.check_offline(port, protocol, "ipv4", want);
    }

    fn check_ipv6(&mut self, port: u16, protocol: &str, want: &Reachability) {
        if let Err(e) = self
            .c
            .check_reachability_family(&self.case, port, protocol, "ipv6", want)
        {
            eprintln!("FAIL {e}");
            self.failures.push(e);
        }
        self.check_offline(port, protocol, "ipv6", want);
    }

    /// `weir policy check`'s offline matrix of the running cluster (the
    /// compiler and judge the workers use, no traffic) agrees with the
    /// expected reachability the probe was held to: so, with the probe
    /// check above, offline = probed for every case. Ports the layout does
    /// not declare have no block in the matrix and are skipped.
    fn check_offline(&mut self, port: u16, protocol: &str, family: &str, want: &Reachability) {
        let report = self.c.weir_json(&["policy", "check", "-o", "json"]);
        let Some(block) = report["matrix"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|b| b["port"] == port && b["protocol"] == protocol && b["family"] == family)
        else {
            return;
        };
        self.offline_compared += 1;
        let names = |v: &serde_json::Value| -> Vec<String> {
            v.as_array()
                .into_iter()
                .flatten()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        };
        let (from, to) = (names(&block["from"]), names(&block["to"]));
        let mut diffs = Vec::new();
        for (i, f) in want.pods.iter().enumerate() {
            for (j, t) in want.pods.iter().enumerate() {
                if i == j {
                    continue;
                }
                let (Some(fi), Some(tj)) = (
                    from.iter().position(|x| x == f),
                    to.iter().position(|x| x == t),
                ) else {
                    diffs.push(format!("{f} -> {t}: not in the offline matrix"));
                    continue;
                };
                let offline = block["connected"][fi][tj] == true;
                if offline != want.expected[i][j] {
                    diffs.push(format!(
                        "{f} -> {t}: offline {offline}, expected {}",
                        want.expected[i][j]
                    ));
                }
            }
        }
        if !diffs.is_empty() {
            let e = format!(
                "{}: {protocol}/{port} ({family}): weir policy check disagrees:\n  {}",
                self.case,
                diffs.join("\n  ")
            );
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
        assert!(
            self.offline_compared > 0,
            "no check had a block in weir policy check's offline matrix"
        );
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

/// The cases' verbs on `weir up` (the inherent methods above).
impl NetpolSuite for Suite {
    fn case(&mut self, name: &str) {
        Suite::case(self, name)
    }
    fn create(&mut self, ns: &str, name: &str, spec: &str) {
        Suite::create(self, ns, name, spec)
    }
    fn delete_all_policies(&mut self) {
        Suite::delete_all_policies(self)
    }
    fn label_namespace(&mut self, ns: &str, extra: &[(&str, &str)]) {
        Suite::label_namespace(self, ns, extra)
    }
    fn label_pod(&mut self, ns: &str, pod: &str, extra: &[(&str, &str)]) {
        Suite::label_pod(self, ns, pod, extra)
    }
    fn check(&mut self, port: u16, protocol: &str, want: &Reachability) {
        Suite::check(self, port, protocol, want)
    }
    fn check_ipv6(&mut self, port: u16, protocol: &str, want: &Reachability) {
        Suite::check_ipv6(self, port, protocol, want)
    }
    fn try_check(
        &mut self,
        case: &str,
        port: u16,
        protocol: &str,
        want: &Reachability,
    ) -> Result<(), String> {
        self.c.check_reachability(case, port, protocol, want)
    }
    fn pod_ipv4(&self, ns: &str, pod: &str) -> String {
        let pods = self.c.weir_json(&["get", "pods", "-A", "-o", "json"]);
        pods.as_array()
            .into_iter()
            .flatten()
            .find(|p| p["namespace"] == ns && p["name"] == pod)
            .and_then(|p| p["ipv4"].as_str().map(str::to_string))
            .or_else(|| {
                self.c
                    .topology()
                    .pod(ns, pod)
                    .and_then(|p| p.ipv4)
                    .map(|a| a.to_string())
            })
            .unwrap_or_else(|| panic!("no IPv4 for {ns}/{pod}: {pods}"))
    }
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

#[test]
fn netpol_ingress_selectors() {
    let mut s = Suite::new("npi");
    ingress_selectors(&mut s);
    s.finish();
}

#[test]
fn netpol_ports_and_protocols() {
    let mut s = Suite::new("npp");
    ports_and_protocols(&mut s);
    s.finish();
}

#[test]
fn netpol_egress_and_ipblocks() {
    let mut s = Suite::new("npe");
    egress_and_ipblocks(&mut s);
    s.finish();
}

#[test]
fn netpol_updates_and_labels() {
    let mut s = Suite::new("npu");
    updates_and_labels(&mut s);
    s.finish();
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
