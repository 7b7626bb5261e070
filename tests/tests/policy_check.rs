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
    // A connection that has ended (FIN both ways) is no longer established:
    // diff reads conntrack, not the flow log, and does not list it.
    let ended = hold(&c, &listener, "x/c", "x/b", 5555);
    drop(ended);

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
        if seen >= 3 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(seen, 3, "the three connections are not in weir's flow log");

    let new_file = c.file("new.yaml", &new);
    // The ended connection's FINs cross weir asynchronously: ask until its
    // entry is closing (with the flow log as source it stayed listed).
    let mut d = serde_json::Value::Null;
    let mut predicted: Vec<(String, String, u64)> = Vec::new();
    for _ in 0..50 {
        d = c.weir_json(&["policy", "diff", "-f", &new_file, "-o", "json"]);
        predicted = d["cut"]
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
        if predicted.len() == 1 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        d["cut"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["state"] == "established"),
        "{d}"
    );
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

const L7_CLUSTER: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: n1}
spec: {podCIDRs: [10.253.0.0/24]}
---
apiVersion: v1
kind: Namespace
metadata: {name: web}
---
apiVersion: v1
kind: Pod
metadata: {name: api, namespace: web, labels: {app: api}}
spec: {containers: [{name: c, ports: [{containerPort: 80}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: front, namespace: web, labels: {app: front}}
spec: {containers: [{name: c}]}
"#;

/// What the operator runs first to see the requests: a WeirPolicy that
/// admits any GET from front to api:8088 (the workers inspect, and record,
/// only flows under HTTP rules).
const L7_OBSERVE: &str = r#"
apiVersion: weir.dev/v1alpha1
kind: WeirPolicy
metadata: {name: api-observe, namespace: web}
spec:
  podSelector: {matchLabels: {app: api}}
  ingress:
  - action: Allow
    from: [{podSelector: {matchLabels: {app: front}}}]
    ports: [{protocol: TCP, port: 8088}]
    http:
    - method: GET
      path: {prefix: /}
"#;

/// An HTTP/1.1 server in `netns`: 404 for paths under /missing, else 200;
/// counts the requests it saw.
fn http_server(
    netns: &str,
    addr: std::net::SocketAddr,
) -> std::sync::Arc<std::sync::atomic::AtomicU64> {
    use std::io::{BufRead, BufReader, Write};
    let listener = weir_topo::netns::run_in(netns, move || std::net::TcpListener::bind(addr))
        .expect("enter pod netns")
        .expect("bind");
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = seen.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let counter = counter.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().expect("clone"));
                let mut out = conn;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    loop {
                        let mut h = String::new();
                        if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                            break;
                        }
                    }
                    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let path = line.split_whitespace().nth(1).unwrap_or("");
                    let status = if path.starts_with("/missing") {
                        "404 Not Found"
                    } else {
                        "200 OK"
                    };
                    let resp = format!("HTTP/1.1 {status}\r\ncontent-length: 3\r\n\r\nok\n");
                    if out.write_all(resp.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    seen
}

/// `weir policy suggest --l7` on a live cluster, from real curl traffic:
/// the allowed request heads and their response status are flow records
/// (`weir flows -o json`: `l7.method/path/host/status`); the suggestion
/// turns them into WeirPolicy http rules; applied (and the broad policy
/// deleted), the observed paths still pass and others get weir's 403
/// without reaching the server.
#[test]
fn suggest_l7_from_live_requests_narrows_http_rules() {
    use std::sync::atomic::Ordering;
    let c = TestCluster::up("psl7", L7_CLUSTER);
    let topo = c.topology();
    let api = topo.pod("web", "api").expect("api").clone();
    let ip = api.ipv4.expect("ipv4");
    let seen = http_server(&api.netns, std::net::SocketAddr::new(ip.into(), 8088));
    let url = |p: &str| format!("http://{ip}:8088{p}");
    let curl = |args: &[&str]| -> String {
        let mut argv = vec![
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-m",
            "3",
            "-w",
            "%{http_code} ",
        ];
        argv.extend_from_slice(args);
        let out = c.pod_exec("web", "front", &argv);
        // The status codes (`-o` covers the first URL only: bodies of later
        // ones are in the output too).
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter(|w| w.len() == 3 && w.chars().all(|ch| ch.is_ascii_digit()))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let observe = c.file("observe.yaml", L7_OBSERVE);
    let o = c.weir(&["apply", "-f", &observe]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // The observed traffic (one connection each, and two on one keep-alive).
    assert_eq!(curl(&[&url("/api/items/1")]), "200");
    assert_eq!(curl(&[&url("/api/items/2"), &url("/health")]), "200 200");
    assert_eq!(curl(&[&url("/missing")]), "404");

    // The flow log: request records and response records with the status.
    let mut flows = serde_json::Value::Null;
    for _ in 0..50 {
        flows = c.weir_json(&["flows", "-o", "json"]);
        let n = flows.as_array().map_or(0, |a| {
            a.iter().filter(|r| r["l7"]["status"].is_u64()).count()
        });
        if n >= 4 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let l7: Vec<&serde_json::Value> = flows
        .as_array()
        .expect("records")
        .iter()
        .filter(|r| r["kind"] == "l7")
        .collect();
    let has = |path: &str, status: Option<u64>| {
        l7.iter().any(|r| {
            r["verdict"] == "allowed"
                && r["l7"]["method"] == "GET"
                && r["l7"]["path"] == path
                && r["l7"]["status"].as_u64() == status
                && (status.is_some() || r["l7"]["host"] == ip.to_string())
        })
    };
    for (path, status) in [
        ("/api/items/1", None),
        ("/api/items/1", Some(200)),
        ("/health", Some(200)),
        ("/missing", None),
        ("/missing", Some(404)),
    ] {
        assert!(
            has(path, status),
            "no l7 record GET {path} {status:?}: {l7:#?}"
        );
    }
    // `weir flows` prints them.
    let text = c.weir(&["flows"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.lines().any(|l| l.contains(" l7 ")
            && l.contains("http: GET /missing")
            && l.ends_with("status=404")),
        "{text}"
    );

    let o = c.weir(&["policy", "suggest", "--l7", "-n", "web", "-o", "yaml"]);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    let yaml = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(!err.contains("no allowed HTTP request heads"), "{err}");
    assert!(
        yaml.contains("kind: WeirPolicy")
            && yaml.contains("prefix: /api/")
            && yaml.contains("exact: /health"),
        "{err}\n{yaml}"
    );
    let sugg = c.file("suggested.yaml", &yaml);
    let o = c.weir(&["apply", "-f", &sugg]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = c.weir(&["delete", "-f", &observe]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    c.wait_applied(std::time::Duration::from_secs(5));

    let denied_before = c.drops("l7-denied");
    assert_eq!(curl(&[&url("/api/items/3")]), "200");
    assert_eq!(curl(&[&url("/health")]), "200");
    let served = seen.load(Ordering::Relaxed);
    assert_eq!(curl(&[&url("/admin")]), "403");
    assert_eq!(curl(&[&url("/healthz")]), "403");
    assert_eq!(curl(&["-X", "POST", &url("/api/items/3")]), "403");
    assert_eq!(
        seen.load(Ordering::Relaxed),
        served,
        "a denied request reached the server"
    );
    assert!(
        c.drops("l7-denied") >= denied_before + 3,
        "weir denied nothing"
    );
    // `weir status` shows the node's time fields (uptime, last apply).
    let st = c.weir(&["status"]);
    let st = String::from_utf8_lossy(&st.stdout);
    assert!(
        st.lines().any(|l| l.starts_with("up ")
            && l.contains("snapshot applied")
            && l.contains("after it was published")),
        "{st}"
    );
}

/// The same inputs through Policy Assistant (kubernetes-sigs/network-policy-api,
/// ex-cyclonus) and `weir policy check`: docs/examples/policy-assistant
/// (pods a, b, c in namespaces x and y; one NetworkPolicy). The two truth
/// tables for TCP/80 must agree cell by cell (Policy Assistant does not
/// probe a pod to itself: the diagonal is left out). Ignored by default:
/// it needs the binary from scripts/policy-assistant-build.sh (its module
/// is not on the Go module proxy). Run: `WEIR_PA_BIN=... cargo test -p
/// weir-tests --test policy_check -- --ignored policy_assistant`.
#[test]
#[ignore = "needs Policy Assistant: scripts/policy-assistant-build.sh"]
fn policy_assistant_agrees_on_the_same_inputs() {
    let dir = weir_tests::k8s::repo().join("docs/examples/policy-assistant");
    let pa = std::env::var("WEIR_PA_BIN").unwrap_or_else(|_| {
        let out = std::process::Command::new(
            weir_tests::k8s::repo().join("scripts/policy-assistant-build.sh"),
        )
        .output()
        .expect("scripts/policy-assistant-build.sh");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    });
    let tmp = std::env::temp_dir().join(weir_tests::unique_name("pa"));
    std::fs::create_dir_all(&tmp).unwrap();
    std::fs::copy(dir.join("np.yaml"), tmp.join("np.yaml")).unwrap();
    let out = std::process::Command::new(&pa)
        .args(["analyze", "--mode", "probe", "--policy-path"])
        .arg(&tmp)
        .arg("--probe-path")
        .arg(dir.join("probe.json"))
        .output()
        .expect("policy-assistant");
    let _ = std::fs::remove_dir_all(&tmp);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{text}");
    // The "Combined:" table: rows `| x/a | # | . | X | ...`.
    let combined = text.split("Combined:").nth(1).expect("Combined table");
    let mut pa_cells = std::collections::BTreeMap::new();
    let mut cols: Vec<String> = Vec::new();
    for l in combined.lines().filter(|l| l.starts_with('|')) {
        let f: Vec<String> = l
            .trim_matches('|')
            .split('|')
            .map(|s| s.trim().to_lowercase())
            .collect();
        if f[0].is_empty() {
            cols = f[1..].to_vec();
            continue;
        }
        for (j, v) in f[1..].iter().enumerate() {
            if v != "#" {
                pa_cells.insert((f[0].clone(), cols[j].clone()), v == ".");
            }
        }
    }
    assert_eq!(pa_cells.len(), 30, "{text}");
    let weir = std::process::Command::new(weir_tests::weir_bin())
        .args(["policy", "check", "-o", "json", "-f"])
        .arg(dir.join("cluster.yaml"))
        .arg("-f")
        .arg(dir.join("np.yaml"))
        .output()
        .expect("weir policy check");
    let v: Value = serde_json::from_slice(&weir.stdout).expect("json");
    let m = block(&v, 80, "TCP", "ipv4");
    let (from, to) = (strings(&m["from"]), strings(&m["to"]));
    let mut differ = Vec::new();
    for (i, f) in from.iter().enumerate() {
        for (j, t) in to.iter().enumerate() {
            if let Some(&p) = pa_cells.get(&(f.clone(), t.clone())) {
                if m["connected"][i][j].as_bool() != Some(p) {
                    differ.push(format!(
                        "{f} -> {t}: weir {} policy-assistant {p}",
                        m["connected"][i][j]
                    ));
                }
            }
        }
    }
    assert!(differ.is_empty(), "{differ:?}\n{text}");
}
