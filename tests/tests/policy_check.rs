//! `weir policy check` against real traffic: on the upstream netpol layout
//! (namespaces x, y, z; pods a, b, c) with policies of all three tiers, the
//! offline matrix — from the manifest files alone and from the running
//! cluster — equals what `weir probe` measures through weir, cell by cell,
//! for TCP/80 and UDP/81 over IPv4 and IPv6. Needs root.

use serde_json::Value;
use weir_tests::{netpol, xyz_cluster, TestCluster};

const POLICIES: &str = "---
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: admin-deny-y-to-x}
spec:
  tier: Admin
  priority: 10
  subject: {namespaces: {matchLabels: {ns: x}}}
  ingress: [{name: deny-y, action: Deny, from: [{namespaces: {matchLabels: {ns: y}}}]}]
---
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: baseline-deny-to-z}
spec:
  tier: Baseline
  priority: 10
  subject: {namespaces: {matchLabels: {ns: z}}}
  ingress: [{action: Deny, from: [{namespaces: {matchLabels: {ns: x}}}]}]
";

fn policies() -> String {
    format!(
        "{POLICIES}{}{}",
        // x: ingress only from pods b (any namespace) and on TCP/80 only
        netpol(
            "x",
            "allow-b",
            "{podSelector: {}, policyTypes: [Ingress], ingress: [{from: [{namespaceSelector: {}, podSelector: {matchLabels: {pod: b}}}], ports: [{port: serve-80-tcp}]}]}"
        ),
        // z/a: no egress except to namespace y
        netpol(
            "z",
            "a-to-y",
            "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Egress], egress: [{to: [{namespaceSelector: {matchLabels: {ns: y}}}]}]}"
        )
    )
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|x| x.as_str().map(str::to_string))
        .collect()
}

fn block<'a>(report: &'a Value, port: u16, protocol: &str, family: &str) -> &'a Value {
    report["matrix"]
        .as_array()
        .expect("matrix")
        .iter()
        .find(|b| b["port"] == port && b["protocol"] == protocol && b["family"] == family)
        .unwrap_or_else(|| panic!("no block {protocol}/{port} {family} in {report}"))
}

/// Every non-self cell of `probe` (a `weir probe -o json` matrix) equals
/// the same cell of `check`; self cells of `check` are connected. Returns
/// the differences and how many cells were blocked.
fn compare(what: &str, check: &Value, probe: &Value) -> (Vec<String>, usize) {
    let (cf, ct) = (strings(&check["from"]), strings(&check["to"]));
    let (pf, pt) = (strings(&probe["from"]), strings(&probe["to"]));
    assert_eq!(cf.len(), 9, "{check}");
    assert_eq!(pf.len(), 9, "{probe}");
    let mut diff = Vec::new();
    let mut blocked = 0;
    for (i, f) in pf.iter().enumerate() {
        for (j, t) in pt.iter().enumerate() {
            let ci = cf.iter().position(|x| x == f).expect("same pods");
            let cj = ct.iter().position(|x| x == t).expect("same pods");
            let c = check["connected"][ci][cj].as_bool().expect("bool");
            if f == t {
                assert!(c, "{what}: {f} to itself must connect");
                continue;
            }
            let p = probe["connected"][i][j].as_bool().expect("bool");
            blocked += usize::from(!p);
            if c != p {
                diff.push(format!("{what}: {f} -> {t}: check {c}, probe {p}"));
            }
        }
    }
    (diff, blocked)
}

#[test]
fn offline_matrix_equals_probe() {
    let manifests = xyz_cluster();
    let c = TestCluster::up("pchk", &manifests);
    let text = policies();
    c.apply("policies.yaml", &text);
    let topo_file = c.file("topology.yaml", &manifests);
    let pol_file = c.file("policies.yaml", &text);

    let offline = c.weir_json(&["policy", "check", "-f", &topo_file, &pol_file, "-o", "json"]);
    let live = c.weir_json(&["policy", "check", "-o", "json"]);
    assert_eq!(
        offline["matrix"], live["matrix"],
        "files and cluster give one matrix"
    );
    // The declared ports of the layout: 80 and 81 over TCP and UDP, two families.
    assert_eq!(
        offline["matrix"].as_array().map(Vec::len),
        Some(8),
        "{offline}"
    );

    let mut failures = Vec::new();
    let mut blocked = 0;
    let denied_before = c.drops("policy-denied");
    let rx_before = c.counter("rx_packets");
    for (port, proto) in [(80u16, "TCP"), (81, "UDP")] {
        for family in ["ipv4", "ipv6"] {
            let probe = c.probe(
                port,
                proto,
                &["--timeout-ms", "300", "--attempts", "2", "--family", family],
            );
            let what = format!("{proto}/{port} {family}");
            let (d, b) = compare(&what, block(&offline, port, proto, family), &probe);
            failures.extend(d);
            blocked += b;
        }
    }
    // The probes crossed weir, and its policy dropped some of them.
    assert!(
        c.counter("rx_packets") > rx_before,
        "no packet went through weir"
    );
    assert!(
        c.drops("policy-denied") > denied_before,
        "weir denied nothing"
    );
    // Neither all-open nor all-closed: the comparison has both kinds of cells.
    assert!(blocked > 0 && blocked < 4 * 72, "blocked {blocked}");
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // The Admin deny over x's NetworkPolicy is reported with both rules named.
    let findings = offline["findings"].as_array().expect("findings");
    assert!(
        findings.iter().any(|f| f["kind"] == "overridden-by-admin"
            && f["policy"] == "networkpolicies/x/allow-b"
            && f["message"]
                .as_str()
                .is_some_and(|m| m.contains("clusternetworkpolicies/admin-deny-y-to-x"))),
        "{findings:?}"
    );
    // And z/a's egress isolation blocks DNS.
    assert!(
        findings
            .iter()
            .any(|f| f["kind"] == "egress-blocks-dns" && f["policy"] == "networkpolicies/z/a-to-y"),
        "{findings:?}"
    );
    // --fail-on: warnings are there, so `--fail-on warning` exits 1, and
    // nothing here is an error.
    let out = c.weir(&[
        "policy",
        "check",
        "-f",
        &topo_file,
        &pol_file,
        "--fail-on",
        "warning",
    ]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = c.weir(&[
        "policy",
        "check",
        "-f",
        &topo_file,
        &pol_file,
        "--fail-on",
        "error",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn unparseable_manifest_is_one_line() {
    let dir = std::env::temp_dir().join(weir_tests::unique_name("pchk-bad"));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("bad.yaml");
    std::fs::write(&f, "apiVersion: v1\nkind: Pod\nmetadata: {name: [\n").unwrap();
    let out = std::process::Command::new(weir_tests::weir_bin())
        .args(["policy", "check", "-f", f.to_str().unwrap()])
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("bad.yaml"), "{err}");
}

/// A TCP connection `from` → `to`:`port` held open (server side accepted),
/// with a listener the test binds in the destination pod.
struct Held {
    client: std::net::TcpStream,
    _server: std::net::TcpStream,
}

fn hold(
    c: &TestCluster,
    listener: &std::net::TcpListener,
    from: &str,
    to: &str,
    port: u16,
) -> Held {
    let topo = c.topology();
    let (fns, fpod) = from.split_once('/').unwrap();
    let (tns, tpod) = to.split_once('/').unwrap();
    let src = topo.pod(fns, fpod).unwrap().clone();
    let dst = topo.pod(tns, tpod).unwrap();
    let addr = std::net::SocketAddr::new(dst.ipv4.unwrap().into(), port);
    let client = weir_topo::netns::run_in(&src.netns, move || {
        std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(2))
    })
    .unwrap()
    .unwrap_or_else(|e| panic!("connect {from} -> {to}:{port}: {e}"));
    let (server, _) = listener.accept().unwrap();
    Held {
        client,
        _server: server,
    }
}

#[test]
fn diff_predicts_exactly_the_revoked_flows() {
    use std::io::Write;
    let c = TestCluster::up("pdiff", &xyz_cluster());
    let np = |froms: &str| {
        netpol(
            "x",
            "b-5555",
            &format!("{{podSelector: {{matchLabels: {{pod: b}}}}, policyTypes: [Ingress], ingress: [{{from: [{froms}], ports: [{{port: 5555}}]}}]}}"),
        )
    };
    let old = np("{podSelector: {matchLabels: {pod: a}}}, {podSelector: {matchLabels: {pod: c}}}");
    let new = np("{podSelector: {matchLabels: {pod: a}}}");
    c.apply("old.yaml", &old);

    let topo = c.topology();
    let b = topo.pod("x", "b").unwrap().clone();
    let addr = std::net::SocketAddr::new(b.ipv4.unwrap().into(), 5555);
    let listener = weir_topo::netns::run_in(&b.netns, move || std::net::TcpListener::bind(addr))
        .unwrap()
        .unwrap();
    let mut keep = hold(&c, &listener, "x/a", "x/b", 5555);
    let mut cut = hold(&c, &listener, "x/c", "x/b", 5555);

    // Both connections crossed weir: wait for their `new` flow records
    // (the dataplanes hand the flow log over asynchronously).
    let mut seen = 0;
    for _ in 0..50 {
        let flows = c.weir_json(&["flows", "-o", "json"]);
        seen = flows
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["kind"] == "new" && r["dst"] == "x/b" && r["dport"] == 5555)
            .count();
        if seen >= 2 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(seen, 2, "the two connections are not in weir's flow log");
    let new_file = c.file("new.yaml", &new);
    let d = c.weir_json(&["policy", "diff", "-f", &new_file, "-o", "json"]);
    let predicted: Vec<(String, String, u64)> = d["cut"]
        .as_array()
        .expect("cut")
        .iter()
        .map(|f| {
            (
                f["src"].as_str().unwrap().to_string(),
                f["dst"].as_str().unwrap().to_string(),
                f["dport"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        predicted,
        [("x/c".to_string(), "x/b".to_string(), 5555)],
        "{d}"
    );
    let changes = d["changes"].as_array().expect("changes");
    assert!(
        changes.iter().any(|ch| ch["from"] == "x/c"
            && ch["to"] == "x/b"
            && ch["port"] == 5555
            && ch["change"] == "closed"),
        "{d}"
    );
    assert!(
        !changes
            .iter()
            .any(|ch| ch["from"] == "x/a" && ch["to"] == "x/b"),
        "{d}"
    );

    c.apply("new.yaml", &new);
    // Traffic on both: weir revokes the one the new policy denies (a
    // `revoked` record in its flow log).
    let mut revoked = Vec::new();
    for _ in 0..40 {
        let _ = keep.client.write_all(b"x");
        let _ = cut.client.write_all(b"x");
        std::thread::sleep(std::time::Duration::from_millis(100));
        let flows = c.weir_json(&["flows", "-o", "json"]);
        revoked = flows
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["kind"] == "revoked")
            .map(|r| {
                (
                    r["src"].as_str().unwrap_or("").to_string(),
                    r["dst"].as_str().unwrap_or("").to_string(),
                    r["dport"].as_u64().unwrap_or(0),
                )
            })
            .collect::<Vec<_>>();
        if !revoked.is_empty() {
            break;
        }
    }
    revoked.sort();
    revoked.dedup();
    assert_eq!(
        revoked, predicted,
        "revoked flows differ from the prediction"
    );
}

#[test]
fn suggestion_keeps_observed_traffic_and_blocks_the_rest() {
    let c = TestCluster::up("psug", &xyz_cluster());
    // The observed traffic: x/a -> y/b TCP/80, y/b -> z/c UDP/81.
    let m = c.probe(80, "TCP", &["--from", "x/a", "--to", "y/b"]);
    assert!(weir_tests::all_connected(&m), "{m}");
    let m = c.probe(81, "UDP", &["--from", "y/b", "--to", "z/c"]);
    assert!(weir_tests::all_connected(&m), "{m}");
    let mut out = None;
    for _ in 0..50 {
        let o = c.weir(&["policy", "suggest", "-o", "yaml"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        if err.contains("from 2 observed flow(s)") {
            out = Some(o);
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let out = out.expect("the two flows never showed in the flow logs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("9 polic(ies)") && err.contains("0 observed flow(s) denied, 0 unobserved"),
        "{err}"
    );
    let yaml = String::from_utf8_lossy(&out.stdout).to_string();
    c.apply("suggested.yaml", &yaml);

    let denied_before = c.drops("policy-denied");
    for (port, proto, allowed) in [(80u16, "TCP", ("x/a", "y/b")), (81, "UDP", ("y/b", "z/c"))] {
        let m = c.probe(port, proto, &["--timeout-ms", "300", "--attempts", "2"]);
        let (from, to) = (strings(&m["from"]), strings(&m["to"]));
        for (i, f) in from.iter().enumerate() {
            for (j, t) in to.iter().enumerate() {
                if f == t {
                    continue;
                }
                let want = (f.as_str(), t.as_str()) == allowed;
                assert_eq!(
                    m["connected"][i][j].as_bool(),
                    Some(want),
                    "{proto}/{port} {f} -> {t} after applying:\n{yaml}"
                );
            }
        }
    }
    assert!(
        c.drops("policy-denied") > denied_before,
        "weir denied nothing"
    );
}

/// A generated multi-tier app: namespace `shop` with frontend, api and db,
/// namespace `infra` with a DNS server pod. Containers name their ports
/// (http 8080/TCP on api, pg 5432/TCP on db, dns 53/UDP on the DNS pod).
fn multi_tier() -> String {
    let node = "apiVersion: v1\nkind: Node\nmetadata: {name: node-1, labels: {kubernetes.io/hostname: node-1}}\n\
                spec: {podCIDRs: [10.244.0.0/24]}\n";
    let ns = |n: &str| {
        format!("---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: {n}, labels: {{tier-ns: {n}}}}}\n")
    };
    let pod = |ns: &str, name: &str, port: Option<(&str, u16, &str)>| {
        let ports = port
            .map(|(n, p, proto)| {
                format!("    ports:\n    - {{name: {n}, containerPort: {p}, protocol: {proto}}}\n")
            })
            .unwrap_or_default();
        format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{app: {name}}}}}\n\
             spec:\n  nodeName: node-1\n  containers:\n  - name: main\n{ports}"
        )
    };
    [
        node.to_string(),
        ns("shop"),
        ns("infra"),
        pod("shop", "frontend", None),
        pod("shop", "api", Some(("http", 8080, "TCP"))),
        pod("shop", "db", Some(("pg", 5432, "TCP"))),
        pod("infra", "dns", Some(("dns", 53, "UDP"))),
    ]
    .concat()
}

#[test]
fn suggestion_for_a_multi_tier_app_keeps_its_traffic_and_blocks_the_rest() {
    let c = TestCluster::up("ptier", &multi_tier());
    // The app's traffic: frontend -> api, api -> db, both -> DNS.
    let traffic: [(&str, &str, u16, &str); 4] = [
        ("shop/frontend", "shop/api", 8080, "TCP"),
        ("shop/api", "shop/db", 5432, "TCP"),
        ("shop/frontend", "infra/dns", 53, "UDP"),
        ("shop/api", "infra/dns", 53, "UDP"),
    ];
    let rx_before = c.counter("rx_packets");
    for (from, to, port, proto) in traffic {
        let m = c.probe(port, proto, &["--from", from, "--to", to]);
        assert!(weir_tests::all_connected(&m), "{from} -> {to}: {m}");
    }
    let mut out = None;
    for _ in 0..50 {
        let o = c.weir(&["policy", "suggest", "-o", "yaml"]);
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        if err.contains("from 4 observed flow(s)") {
            out = Some(o);
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let out = out.expect("the four flows never showed in the flow logs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("4 polic(ies)") && err.contains("0 observed flow(s) denied, 0 unobserved"),
        "{err}"
    );
    let yaml = String::from_utf8_lossy(&out.stdout).to_string();
    for named in ["port: http", "port: pg", "port: dns"] {
        assert!(yaml.contains(named), "no {named:?} in:\n{yaml}");
    }
    // Within the last hour: the same four flows.
    let o = c.weir(&["policy", "suggest", "--since", "1h", "-o", "yaml"]);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(err.contains("from 4 observed flow(s)"), "{err}");
    // The table form counts the flows per rule.
    let table = c.weir(&["policy", "suggest"]);
    let table = String::from_utf8_lossy(&table.stdout).to_string();
    assert!(
        table.starts_with("POLICY") && table.contains("TCP/http(8080)"),
        "{table}"
    );
    c.apply("suggested.yaml", &yaml);

    let denied_before = c.drops("policy-denied");
    for (port, proto) in [(8080u16, "TCP"), (5432, "TCP"), (53, "UDP")] {
        let m = c.probe(port, proto, &["--timeout-ms", "300", "--attempts", "2"]);
        let (from, to) = (strings(&m["from"]), strings(&m["to"]));
        for (i, f) in from.iter().enumerate() {
            for (j, t) in to.iter().enumerate() {
                if f == t {
                    continue;
                }
                let want = traffic.iter().any(|(a, b, p, pr)| {
                    (*a, *b, *p, *pr) == (f.as_str(), t.as_str(), port, proto)
                });
                assert_eq!(
                    m["connected"][i][j].as_bool(),
                    Some(want),
                    "{proto}/{port} {f} -> {t} after applying:\n{yaml}"
                );
            }
        }
    }
    assert!(
        c.drops("policy-denied") > denied_before,
        "weir denied nothing"
    );
    assert!(
        c.counter("rx_packets") > rx_before,
        "no packet crossed weir"
    );
}
