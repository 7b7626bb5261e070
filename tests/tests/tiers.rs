//! Policy tiers on real traffic (docs/policy.md, "Precedence"): the Admin
//! tier (ClusterNetworkPolicy tier Admin, AdminNetworkPolicy,
//! WeirClusterPolicy) over the Namespace tier (NetworkPolicy, WeirPolicy)
//! over the Baseline tier (ClusterNetworkPolicy tier Baseline,
//! BaselineAdminNetworkPolicy), audit records in `weir flows`, revocation of
//! an open connection when its allow is deleted, and bad policies rejected
//! with the previous state kept. Every truth table is over the nine pods of
//! the upstream layout, and `weir explain` must agree with every probe.
//! Needs root.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use weir_tests::{netpol, xyz_cluster, xyz_namespace, xyz_pod, Peer, Reachability, TestCluster};

fn all() -> Reachability {
    Reachability::all()
}

/// How a tier suite changes the cluster: `weir apply`/`weir delete`, or the
/// real kubectl against the API server of `weir up --api-server` (policies,
/// pod and namespace label changes all go through the API server; weir takes
/// them from there).
#[derive(Clone, Copy, PartialEq)]
enum Via {
    Weir,
    Kubectl,
}

struct Tiers {
    c: TestCluster,
    via: Via,
    /// Kubectl: each policy carries a `weir.test/rev` label, bumped on every
    /// apply, so the test knows when weir enforces what it applied.
    rev: u32,
    /// Kubectl: policy object (`clusternetworkpolicies/NAME`,
    /// `networkpolicies/NS/NAME`, ...) → the rev weir must be enforcing.
    revs: BTreeMap<String, u32>,
}

impl Tiers {
    fn new(tag: &str, via: Via) -> Tiers {
        let c = match via {
            Via::Weir => TestCluster::up(tag, &xyz_cluster()),
            Via::Kubectl => TestCluster::up_with(tag, &xyz_cluster(), &["--api-server"]),
        };
        Tiers {
            c,
            via,
            rev: 0,
            revs: BTreeMap::new(),
        }
    }

    /// Applies manifests (policies, Pods, Namespaces); with kubectl, returns
    /// once weir enforces exactly the policies applied and has the labels.
    fn apply(&mut self, file: &str, text: &str) {
        if self.via == Via::Weir {
            self.c.apply(file, text);
            return;
        }
        let mut items = Vec::new();
        let mut pods = Vec::new();
        let mut namespaces = Vec::new();
        for mut d in documents(text) {
            let kind = d["kind"].as_str().unwrap_or_default().to_string();
            let name = d["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let ns = d["metadata"]["namespace"].as_str().map(str::to_string);
            let mut labels = label_map(&d["metadata"]["labels"]);
            match kind.as_str() {
                "Pod" => {
                    // The same pod as `weir up --api-server` created (the
                    // image it filled in): only the labels differ.
                    for c in d["spec"]["containers"].as_array_mut().into_iter().flatten() {
                        if c.get("image").is_none() {
                            c["image"] = "weir.dev/no-image".into();
                        }
                    }
                    pods.push((ns.unwrap_or_default(), name, labels));
                }
                "Namespace" => {
                    labels.insert("kubernetes.io/metadata.name".into(), name.clone());
                    namespaces.push((name, labels));
                }
                _ => {
                    self.rev += 1;
                    d["metadata"]["labels"]["weir.test/rev"] = self.rev.to_string().into();
                    self.revs
                        .insert(policy_key(&kind, ns.as_deref(), &name), self.rev);
                }
            }
            items.push(d);
        }
        self.kubectl("apply", file, items);
        let want = self.revs.clone();
        let state = state_dir(&self.c);
        self.wait_until(
            &format!("policies {want:?}, pods {pods:?}, namespaces {namespaces:?}"),
            |topo| {
                policies_are(&state, &want)
                    && pods
                        .iter()
                        .all(|(ns, p, l)| topo.pod(ns, p).is_some_and(|p| p.labels == *l))
                    && namespaces.iter().all(|(n, l)| {
                        topo.namespaces
                            .iter()
                            .any(|x| x.name == *n && x.labels == *l)
                    })
            },
        );
    }

    /// Deletes the policies of `text`; with kubectl, returns once weir no
    /// longer enforces them.
    fn delete(&mut self, file: &str, text: &str) {
        if self.via == Via::Weir {
            self.c.delete(file, text);
            return;
        }
        let items = documents(text);
        for d in &items {
            let kind = d["kind"].as_str().unwrap_or_default();
            let name = d["metadata"]["name"].as_str().unwrap_or_default();
            self.revs
                .remove(&policy_key(kind, d["metadata"]["namespace"].as_str(), name));
        }
        self.kubectl("delete", file, items);
        let want = self.revs.clone();
        let state = state_dir(&self.c);
        self.wait_until(&format!("policies {want:?}"), |_| {
            policies_are(&state, &want)
        });
    }

    fn kubectl(&self, verb: &str, file: &str, items: Vec<serde_json::Value>) {
        let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items});
        let path = self.c.file(&format!("{file}.json"), &list.to_string());
        let out = self.c.weir(&["kubectl", verb, "-f", &path]);
        assert!(
            out.status.success(),
            "weir kubectl {verb} -f {path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Waits (bounded: only so a broken kubelet cannot hang the suite) until
    /// `done` holds and every dataplane runs the supervisor's latest generation.
    fn wait_until(&self, what: &str, done: impl Fn(&weir_topo::Cluster) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if done(&self.c.topology()) && supervisor_ready(&self.c) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "weir did not take {what} from the API server; kubelet log:\n{}",
                std::fs::read_to_string(state_dir(&self.c).join("kubelet.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The manifests as JSON values, read the way weir reads YAML (1.2): kubectl
/// reads YAML 1.1, where `ns: y` would be a boolean.
fn documents(text: &str) -> Vec<serde_json::Value> {
    weir_topo::manifest::split_documents(text, "case")
        .expect("case manifests parse")
        .iter()
        .map(|d| serde_json::to_value(&d.value).expect("JSON"))
        .collect()
}

fn label_map(v: &serde_json::Value) -> BTreeMap<String, String> {
    v.as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| {
            (
                k.clone(),
                v.as_str().map_or_else(|| v.to_string(), str::to_string),
            )
        })
        .collect()
}

/// weir's name of a policy object: `networkpolicies/NS/NAME`,
/// `clusternetworkpolicies/NAME`, ... (every policy kind ends in `Policy`).
fn policy_key(kind: &str, ns: Option<&str>, name: &str) -> String {
    let resource = format!(
        "{}ies",
        kind.to_lowercase().strip_suffix('y').unwrap_or(kind)
    );
    match ns {
        Some(ns) => format!("{resource}/{ns}/{name}"),
        None => format!("{resource}/{name}"),
    }
}

/// The supervisor enforces exactly `want` (object → `weir.test/rev`).
fn policies_are(state: &std::path::Path, want: &BTreeMap<String, u32>) -> bool {
    let text = std::fs::read_to_string(state.join("policies.json")).unwrap_or_else(|_| "[]".into());
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    let have: Vec<(String, Option<u32>)> = v
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            (
                p["object"].as_str().unwrap_or_default().to_string(),
                rev_label(p["yaml"].as_str().unwrap_or_default()),
            )
        })
        .collect();
    have.len() == want.len()
        && want
            .iter()
            .all(|(o, rev)| have.iter().any(|(ho, r)| ho == o && *r == Some(*rev)))
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

fn state_dir(c: &TestCluster) -> std::path::PathBuf {
    std::env::var_os("WEIR_STATE_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from("/run/weir"))
        .join(&c.name)
}

/// The supervisor's own readiness (its `ping` on daemon.sock): every
/// dataplane runs its latest generation.
fn supervisor_ready(c: &TestCluster) -> bool {
    use std::io::BufRead;
    let Ok(mut s) = std::os::unix::net::UnixStream::connect(state_dir(c).join("daemon.sock"))
    else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    if s.write_all(b"{\"op\":\"ping\"}\n").is_err() {
        return false;
    }
    let mut line = String::new();
    if std::io::BufReader::new(&s).read_line(&mut line).is_err() {
        return false;
    }
    serde_json::from_str::<serde_json::Value>(&line).is_ok_and(|v| v["data"]["ready"] == true)
}

/// Applies `text`, checks each (port, protocol, table), deletes `text`.
fn case(
    t: &mut Tiers,
    failures: &mut Vec<String>,
    name: &str,
    text: &str,
    checks: &[(u16, &str, &Reachability)],
) {
    let t0 = Instant::now();
    t.apply("policies.yaml", text);
    for (port, proto, want) in checks {
        if let Err(e) = t.c.check_reachability(name, *port, proto, want) {
            eprintln!("FAIL {e}");
            failures.push(e);
        }
    }
    t.delete("policies.yaml", text);
    eprintln!("case {name:?}: {} ms", t0.elapsed().as_millis());
}

fn cnp(name: &str, tier: &str, priority: u32, subject: &str, rules: &str) -> String {
    format!(
        "---\napiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {{name: {name}}}\n\
         spec:\n  tier: {tier}\n  priority: {priority}\n  subject: {subject}\n{rules}"
    )
}

const NP_ALLOW_ALL_X: &str = "{podSelector: {}, policyTypes: [Ingress], ingress: [{}]}";

#[test]
fn admin_and_baseline_tiers_around_network_policies() {
    tier_cases(&mut Tiers::new("tier", Via::Weir));
}

/// The same cases and truth tables, with every namespace, pod, label change
/// and policy going through the real kubectl and API server
/// (`weir up --api-server`).
#[test]
fn admin_and_baseline_tiers_via_kubectl() {
    tier_cases(&mut Tiers::new("tierk", Via::Kubectl));
}

fn tier_cases(t: &mut Tiers) {
    let mut failures = Vec::new();

    // 1. Admin Deny beats a NetworkPolicy that allows everything.
    let mut r = all();
    r.expect_peer(Peer::ns("y"), Peer::ns("x"), false);
    case(
        t,
        &mut failures,
        "ClusterNetworkPolicy Admin Deny over a NetworkPolicy allow",
        &format!(
            "{}{}",
            netpol("x", "allow-all", NP_ALLOW_ALL_X),
            cnp(
                "admin-deny-y-to-x",
                "Admin",
                10,
                "{namespaces: {matchLabels: {ns: x}}}",
                "  ingress:\n  - {name: deny-y, action: Deny, from: [{namespaces: {matchLabels: {ns: y}}}]}\n"
            )
        ),
        &[(80, "TCP", &r), (81, "UDP", &r)],
    );

    // 2. Admin Pass skips the rest of the Admin tier; the NetworkPolicy decides.
    let mut r = all();
    r.expect_peer(Peer::ns("x"), Peer::ns("x"), false)
        .expect_peer(Peer::ns("z"), Peer::ns("x"), false);
    case(
        t,
        &mut failures,
        "ClusterNetworkPolicy Admin Pass falls through to the NetworkPolicy",
        &format!(
            "{}{}{}",
            cnp(
                "pass-y",
                "Admin",
                5,
                "{namespaces: {matchLabels: {ns: x}}}",
                "  ingress:\n  - {action: Pass, from: [{namespaces: {matchLabels: {ns: y}}}]}\n"
            ),
            cnp(
                "deny-all-to-x",
                "Admin",
                20,
                "{namespaces: {matchLabels: {ns: x}}}",
                "  ingress:\n  - {action: Deny, from: [{namespaces: {}}]}\n"
            ),
            netpol(
                "x",
                "allow-from-y",
                "{podSelector: {}, policyTypes: [Ingress], ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}]}]}"
            )
        ),
        &[(80, "TCP", &r)],
    );

    // 3. Baseline Deny: overridden where a NetworkPolicy allows, in force on
    //    pods no NetworkPolicy selects; NP isolation is an implicit deny.
    let mut r = all();
    r.expect_all_ingress("x/b", false)
        .expect_all_ingress("x/c", false)
        .expect_peer(Peer::ns("x"), Peer::pod("x", "a"), false)
        .expect_peer(Peer::ns("z"), Peer::pod("x", "a"), false);
    case(
        t,
        &mut failures,
        "ClusterNetworkPolicy Baseline Deny overridden by a NetworkPolicy allow; applies where no NetworkPolicy selects",
        &format!(
            "{}{}",
            cnp(
                "baseline-deny-x",
                "Baseline",
                1,
                "{namespaces: {matchLabels: {ns: x}}}",
                "  ingress:\n  - {action: Deny, from: [{namespaces: {}}]}\n"
            ),
            netpol(
                "x",
                "a-from-y",
                "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress], ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}]}]}"
            )
        ),
        &[(80, "TCP", &r)],
    );

    // 4. Baseline deny alone (egress, by pods), no NetworkPolicy at all.
    let mut r = all();
    // the Deny is written first: it also covers z/c
    r.expect_peer(
        Peer::ns("z"),
        Peer {
            ns: None,
            pod: Some("c"),
        },
        false,
    );
    case(
        t,
        &mut failures,
        "ClusterNetworkPolicy Baseline egress Deny with no NetworkPolicy",
        &cnp(
            "baseline-z-not-to-c",
            "Baseline",
            3,
            "{namespaces: {matchLabels: {ns: z}}}",
            "  egress:\n  - {action: Deny, to: [{pods: {namespaceSelector: {}, podSelector: {matchLabels: {pod: c}}}}]}\n  - {action: Accept, to: [{pods: {namespaceSelector: {matchLabels: {ns: z}}, podSelector: {}}}]}\n",
        ),
        &[(80, "TCP", &r)],
    );

    // 5. AdminNetworkPolicy v1alpha1: Deny on one port beats the NP allow.
    let mut r80 = all();
    r80.expect_peer(Peer::ns("y"), Peer::ns("x"), false);
    case(
        t,
        &mut failures,
        "AdminNetworkPolicy Deny (portNumber) over a NetworkPolicy allow",
        &format!(
            "{}---\napiVersion: policy.networking.k8s.io/v1alpha1\nkind: AdminNetworkPolicy\nmetadata: {{name: anp-deny-y-80}}\n\
             spec:\n  priority: 10\n  subject: {{namespaces: {{matchLabels: {{ns: x}}}}}}\n  ingress:\n\
             \x20 - {{name: y80, action: Deny, from: [{{namespaces: {{matchLabels: {{ns: y}}}}}}], ports: [{{portNumber: {{protocol: TCP, port: 80}}}}]}}\n",
            netpol("x", "allow-all", NP_ALLOW_ALL_X)
        ),
        &[(80, "TCP", &r80), (81, "TCP", &all())],
    );

    // 6. BaselineAdminNetworkPolicy: denies where no NP selects; NP allow wins.
    let mut r = all();
    r.expect_all_ingress("x/b", false)
        .expect_all_ingress("x/c", false);
    case(
        t,
        &mut failures,
        "BaselineAdminNetworkPolicy Deny overridden by a NetworkPolicy allow",
        &format!(
            "{}---\napiVersion: policy.networking.k8s.io/v1alpha1\nkind: BaselineAdminNetworkPolicy\nmetadata: {{name: default}}\n\
             spec:\n  subject: {{namespaces: {{matchLabels: {{ns: x}}}}}}\n  ingress:\n  - {{action: Deny, from: [{{namespaces: {{}}}}]}}\n",
            netpol(
                "x",
                "allow-a",
                "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress], ingress: [{}]}"
            )
        ),
        &[(80, "TCP", &r)],
    );

    // 7. ANP Pass → no NP → BANP Deny; ANP Allow beats the BANP.
    let mut r = all();
    r.expect_peer(Peer::ns("x"), Peer::ns("x"), false)
        .expect_peer(Peer::ns("y"), Peer::ns("x"), false);
    case(
        t,
        &mut failures,
        "AdminNetworkPolicy Pass falls to BaselineAdminNetworkPolicy Deny; ANP Allow beats it",
        "---\napiVersion: policy.networking.k8s.io/v1alpha1\nkind: AdminNetworkPolicy\nmetadata: {name: anp}\n\
         spec:\n  priority: 3\n  subject: {namespaces: {matchLabels: {ns: x}}}\n  ingress:\n\
         \x20 - {action: Pass, from: [{namespaces: {matchLabels: {ns: y}}}]}\n\
         \x20 - {action: Allow, from: [{namespaces: {matchLabels: {ns: z}}}]}\n\
         ---\napiVersion: policy.networking.k8s.io/v1alpha1\nkind: BaselineAdminNetworkPolicy\nmetadata: {name: default}\n\
         spec:\n  subject: {namespaces: {matchLabels: {ns: x}}}\n  ingress:\n  - {action: Deny, from: [{namespaces: {}}]}\n",
        &[(80, "TCP", &r), (80, "UDP", &r)],
    );

    // 8. WeirPolicy Deny beats a NetworkPolicy Allow in the same tier.
    let mut r = all();
    r.expect_peer(Peer::ns("y"), Peer::ns("x"), false);
    case(
        t,
        &mut failures,
        "WeirPolicy Deny beats a NetworkPolicy Allow",
        &format!(
            "{}---\napiVersion: weir.dev/v1alpha1\nkind: WeirPolicy\nmetadata: {{name: no-y, namespace: x}}\n\
             spec:\n  podSelector: {{}}\n  ingress:\n  - {{name: no-y, action: Deny, from: [{{namespaceSelector: {{matchLabels: {{ns: y}}}}}}]}}\n",
            netpol("x", "allow-all", NP_ALLOW_ALL_X)
        ),
        &[(80, "TCP", &r)],
    );

    // 9. WeirClusterPolicy (Admin tier): Deny from pod b anywhere beats NP allow.
    let mut r = all();
    r.expect_peer(
        Peer {
            ns: None,
            pod: Some("b"),
        },
        Peer::ns("x"),
        false,
    );
    case(
        t,
        &mut failures,
        "WeirClusterPolicy Deny (podSelector alone: any namespace) over a NetworkPolicy allow",
        &format!(
            "{}---\napiVersion: weir.dev/v1alpha1\nkind: WeirClusterPolicy\nmetadata: {{name: no-b}}\n\
             spec:\n  priority: 50\n  subject: {{namespaceSelector: {{matchLabels: {{ns: x}}}}}}\n  ingress:\n\
             \x20 - {{action: Deny, from: [{{podSelector: {{matchLabels: {{pod: b}}}}}}]}}\n",
            netpol("x", "allow-all", NP_ALLOW_ALL_X)
        ),
        &[(80, "TCP", &r)],
    );

    // 10. Label changes move pods and namespaces in and out of Admin-tier
    //     selectors while the policies stay.
    let t0 = Instant::now();
    let text = format!(
        "{}{}",
        cnp(
            "quarantine",
            "Admin",
            1,
            "{pods: {namespaceSelector: {}, podSelector: {matchLabels: {quarantine: \"true\"}}}}",
            "  ingress:\n  - {action: Deny, from: [{namespaces: {}}]}\n"
        ),
        cnp(
            "no-from-untrusted",
            "Admin",
            2,
            "{namespaces: {matchLabels: {ns: x}}}",
            "  ingress:\n  - {action: Deny, from: [{namespaces: {matchLabels: {trust: \"no\"}}}]}\n"
        )
    );
    t.apply("labels.yaml", &text);
    let name = "Admin tier follows pod and namespace label changes";
    if let Err(e) = t.c.check_reachability(name, 80, "TCP", &all()) {
        failures.push(e);
    }
    t.apply(
        "relabel.yaml",
        &format!(
            "{}{}",
            xyz_pod("y", "b", &[("quarantine", "\"true\"")]),
            xyz_namespace("z", &[("trust", "\"no\"")])
        ),
    );
    let mut r = all();
    r.expect_all_ingress("y/b", false)
        .expect_peer(Peer::ns("z"), Peer::ns("x"), false);
    if let Err(e) = t.c.check_reachability(name, 80, "TCP", &r) {
        failures.push(e);
    }
    t.apply(
        "relabel.yaml",
        &format!("{}{}", xyz_pod("y", "b", &[]), xyz_namespace("z", &[])),
    );
    if let Err(e) = t.c.check_reachability(name, 80, "TCP", &all()) {
        failures.push(e);
    }
    t.delete("labels.yaml", &text);
    eprintln!("case {name:?}: {} ms", t0.elapsed().as_millis());

    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// `weir flows -o json` as a list of records.
fn flows(c: &TestCluster) -> Vec<serde_json::Value> {
    let v = c.weir_json(&["flows", "-o", "json"]);
    match v {
        serde_json::Value::Array(a) => a,
        other => panic!("weir flows -o json is not a list: {other}"),
    }
}

#[test]
fn weir_policy_audit_passes_and_is_logged() {
    let c = TestCluster::up("audit", &xyz_cluster());
    let text = "---\napiVersion: weir.dev/v1alpha1\nkind: WeirPolicy\nmetadata: {name: audit-y, namespace: x}\n\
                spec:\n  podSelector: {matchLabels: {pod: a}}\n  audit: true\n  ingress:\n\
                \x20 - {name: would-deny-y, action: Deny, from: [{namespaceSelector: {matchLabels: {ns: y}}}]}\n";
    c.apply("audit.yaml", text);
    // Traffic passes (and explain says allowed) ...
    c.check_reachability("WeirPolicy audit", 80, "TCP", &all())
        .unwrap_or_else(|e| panic!("{e}"));
    let e = c.explain("y/b", "x/a", 80, "TCP");
    assert_eq!(e["allowed"], true, "{e}");
    assert_eq!(e["ingress"]["decision"]["audit"], true, "{e}");
    // ... and the flow log has an audit record for y → x/a naming the rule.
    let deadline = Instant::now() + Duration::from_secs(3);
    let found = loop {
        let recs = flows(&c);
        let hit = recs.into_iter().find(|r| {
            r["audit"] == true
                && r["src"].as_str().is_some_and(|s| s.starts_with("y/"))
                && r["dst"] == "x/a"
                && r["dport"] == 80
        });
        if hit.is_some() || Instant::now() > deadline {
            break hit;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let rec = found.unwrap_or_else(|| {
        panic!(
            "no audit record for y/* -> x/a:80 in weir flows: {:?}",
            flows(&c)
        )
    });
    assert_eq!(rec["verdict"], "audit", "{rec}");
    assert!(
        rec["ingress_rule"]
            .as_str()
            .is_some_and(|s| s.contains("audit-y")),
        "audit record does not name the audit policy: {rec}"
    );
    // A flow the audit rule does not match is an ordinary allowed one.
    let recs = flows(&c);
    assert!(
        !recs
            .iter()
            .any(|r| r["audit"] == true && r["src"].as_str().is_some_and(|s| s.starts_with("z/"))),
        "z → x/a marked audit: {recs:?}"
    );
}

/// A TCP connection from `from` to `to`:`port` carrying one byte every 50 ms;
/// returns the receive timestamps and a stop flag.
struct Stream {
    stop: Arc<AtomicBool>,
    received: Arc<Mutex<Vec<Instant>>>,
}

fn open_stream(c: &TestCluster, from: &str, to: &str, port: u16) -> Stream {
    let topo = c.topology();
    let (fns, fpod) = from.split_once('/').expect("NS/POD");
    let (tns, tpod) = to.split_once('/').expect("NS/POD");
    let src = topo.pod(fns, fpod).expect("from pod").clone();
    let dst = topo.pod(tns, tpod).expect("to pod").clone();
    let addr = SocketAddr::new(dst.ipv4.expect("ipv4").into(), port);
    let listener = weir_topo::netns::run_in(&dst.netns, move || TcpListener::bind(addr))
        .expect("enter server netns")
        .expect("bind server");
    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(Mutex::new(Vec::new()));
    let (stop2, rec2) = (stop.clone(), received.clone());
    std::thread::spawn(move || {
        let Ok((mut s, _)) = listener.accept() else {
            return;
        };
        drop(listener);
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        let mut buf = [0u8; 64];
        while !stop2.load(Ordering::Relaxed) {
            match s.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    let now = Instant::now();
                    rec2.lock()
                        .expect("lock")
                        .extend(std::iter::repeat_n(now, n));
                }
                Err(_) => continue,
            }
        }
    });
    let mut client = weir_topo::netns::run_in(&src.netns, move || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(2))
    })
    .expect("enter client netns")
    .unwrap_or_else(|e| panic!("connect {from} -> {to}:{port}: {e}"));
    client
        .set_write_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let stop3 = stop.clone();
    std::thread::spawn(move || {
        while !stop3.load(Ordering::Relaxed) {
            let _ = client.write_all(b"x");
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    Stream { stop, received }
}

impl Stream {
    fn count_after(&self, t: Instant) -> usize {
        self.received
            .lock()
            .expect("lock")
            .iter()
            .filter(|x| **x > t)
            .count()
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn connects(c: &TestCluster, from: &str, to: &str, port: u16) -> bool {
    let topo = c.topology();
    let (fns, fpod) = from.split_once('/').expect("NS/POD");
    let (tns, tpod) = to.split_once('/').expect("NS/POD");
    let src = topo.pod(fns, fpod).expect("from pod").clone();
    let dst = topo.pod(tns, tpod).expect("to pod").clone();
    let addr = SocketAddr::new(dst.ipv4.expect("ipv4").into(), port);
    let listener = weir_topo::netns::run_in(&dst.netns, move || TcpListener::bind(addr))
        .expect("enter server netns")
        .expect("bind server");
    listener.set_nonblocking(true).expect("nonblocking");
    let ok = weir_topo::netns::run_in(&src.netns, move || {
        TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
    })
    .expect("enter client netns");
    drop(listener);
    ok
}

#[test]
fn deleting_an_allow_revokes_open_connections_within_a_second() {
    let c = TestCluster::up("revoke", &xyz_cluster());
    c.apply(
        "deny.yaml",
        &netpol(
            "x",
            "default-deny",
            "{podSelector: {}, policyTypes: [Ingress]}",
        ),
    );
    let allow = netpol(
        "x",
        "allow-5555",
        "{podSelector: {matchLabels: {pod: b}}, policyTypes: [Ingress], ingress: [{from: [{podSelector: {matchLabels: {pod: a}}}], ports: [{port: 5555}]}]}",
    );
    c.apply("allow.yaml", &allow);

    let s = open_stream(&c, "x/a", "x/b", 5555);
    let t = Instant::now();
    std::thread::sleep(Duration::from_millis(500));
    let flowing = s.count_after(t);
    assert!(
        flowing >= 5,
        "only {flowing} bytes in 500 ms before the delete"
    );
    assert!(
        !connects(&c, "x/a", "x/b", 5556),
        "5556 passed before any allow"
    );

    let t_delete = Instant::now();
    c.delete("allow.yaml", &allow);
    let delete_ms = t_delete.elapsed().as_millis();
    std::thread::sleep(Duration::from_millis(1600));
    let last = s.received.lock().expect("lock").last().copied();
    eprintln!(
        "delete took {delete_ms} ms; last byte {:?} ms after the delete began",
        last.map(|l| l.saturating_duration_since(t_delete).as_millis())
    );
    let late = s.count_after(t_delete + Duration::from_secs(1));
    assert_eq!(
        late, 0,
        "{late} bytes of the open connection arrived more than 1 s after the delete began (delete took {delete_ms} ms)"
    );
    assert!(
        !connects(&c, "x/a", "x/b", 5555),
        "a new connection on the revoked port passed"
    );
    drop(s);

    // A newly allowed connection starts passing.
    let allow2 = netpol(
        "x",
        "allow-5556",
        "{podSelector: {matchLabels: {pod: b}}, policyTypes: [Ingress], ingress: [{from: [{podSelector: {matchLabels: {pod: a}}}], ports: [{port: 5556}]}]}",
    );
    c.apply("allow2.yaml", &allow2);
    let s2 = open_stream(&c, "x/a", "x/b", 5556);
    let t = Instant::now();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        s2.count_after(t) >= 5,
        "the newly allowed connection does not carry data"
    );
    // Others stay denied by the default deny.
    assert!(!connects(&c, "x/c", "x/b", 5556), "x/c reached x/b:5556");
}

#[test]
fn invalid_policies_are_rejected_whole_and_the_previous_state_stays() {
    let c = TestCluster::up("badpol", &xyz_cluster());
    c.apply(
        "deny.yaml",
        &netpol(
            "x",
            "default-deny",
            "{podSelector: {}, policyTypes: [Ingress]}",
        ),
    );
    let mut before = all();
    before.expect_peer(Peer::ANY, Peer::ns("x"), false);

    let bad: [(&str, &str, &[&str]); 5] = [
        (
            "unknown selector operator",
            "{podSelector: {matchExpressions: [{key: pod, operator: Equals, values: [a]}]}, ingress: [{}]}",
            &["operator"],
        ),
        (
            "port out of range",
            "{podSelector: {}, ingress: [{ports: [{port: 70000}]}]}",
            &["port"],
        ),
        (
            "endPort below port",
            "{podSelector: {}, ingress: [{ports: [{port: 81, endPort: 80}]}]}",
            &["endPort"],
        ),
        (
            "CIDR that does not parse",
            "{podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.244.0.0/33}}]}]}",
            &["cidr"],
        ),
        (
            "except CIDR that does not parse",
            "{podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/x]}}]}]}",
            &["except"],
        ),
    ];
    let mut problems = Vec::new();
    for (what, spec, fields) in bad {
        // A valid allow-all in the same file must not slip through either.
        let text = format!(
            "{}{}",
            netpol("x", "good-allow-all", NP_ALLOW_ALL_X),
            netpol("x", "bad", spec)
        );
        let out = c.apply_text("bad.yaml", &text);
        let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
        eprintln!("{what}: {err}");
        if out.status.code() != Some(1) {
            problems.push(format!(
                "{what}: exit {:?}, stderr {err:?}",
                out.status.code()
            ));
            continue;
        }
        if err.lines().count() != 1 {
            problems.push(format!("{what}: error is not one line: {err:?}"));
        }
        if !err.contains("networkpolicies/x/bad") || !fields.iter().all(|f| err.contains(f)) {
            problems.push(format!(
                "{what}: error does not name the object and {fields:?}: {err:?}"
            ));
        }
    }
    // A label change with an invalid label value is rejected the same way.
    let out = c.apply_text(
        "badlabel.yaml",
        &xyz_namespace("x", &[("team", "\"not a valid value!\"")]),
    );
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    eprintln!("invalid namespace label: {err}");
    if out.status.code() != Some(1) || err.lines().count() != 1 || !err.contains("labels") {
        problems.push(format!(
            "invalid namespace label value: exit {:?}, stderr {err:?}",
            out.status.code()
        ));
    }
    if let Err(e) = c.check_reachability("after rejected policies", 80, "TCP", &before) {
        problems.push(e);
    }
    let pols = c.explain("y/a", "x/a", 80, "TCP");
    assert_eq!(pols["allowed"], false, "{pols}");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
