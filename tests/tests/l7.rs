//! L7 (HTTP) policy judged inline by weir's workers, with a real client
//! (curl) and a real server: the founding paper's scenario — to pods
//! id=app1 on TCP 8080, only id=app2, only GET with a path under /public.
//! Allowed requests reach the server unchanged; denied ones get weir's 403
//! and never reach it. Needs root and curl.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use weir_tests::TestCluster;

const CLUSTER: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: n1}
spec: {podCIDRs: [10.254.0.0/24, "fd00:254::/64"]}
---
apiVersion: v1
kind: Namespace
metadata: {name: demo}
---
apiVersion: v1
kind: Pod
metadata: {name: app1, namespace: demo, labels: {id: app1}}
spec: {containers: [{name: c, ports: [{containerPort: 80}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: app2, namespace: demo, labels: {id: app2}}
spec: {containers: [{name: c}]}
---
apiVersion: v1
kind: Pod
metadata: {name: app3, namespace: demo, labels: {id: app3}}
spec: {containers: [{name: c}]}
"#;

const POLICY: &str = r#"
apiVersion: weir.dev/v1alpha1
kind: WeirPolicy
metadata: {name: app1-l7, namespace: demo}
spec:
  podSelector: {matchLabels: {id: app1}}
  ingress:
  - action: Allow
    from: [{podSelector: {matchLabels: {id: app2}}}]
    ports: [{protocol: TCP, port: 8080}]
    http:
    - method: GET
      path: {prefix: /public}
"#;

/// A tiny HTTP/1.1 server in the pod's netns: answers every request with
/// 200 and `served <method> <path>`, keeps the connection open, and counts
/// the requests it saw (so a test can tell a denied request never reached it).
fn serve(netns: &str, addr: SocketAddr) -> Arc<AtomicU64> {
    let listener = weir_topo::netns::run_in(netns, move || TcpListener::bind(addr))
        .expect("enter pod netns")
        .expect("bind");
    let seen = Arc::new(AtomicU64::new(0));
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
                    // Skip the rest of the head (no bodies in these tests).
                    loop {
                        let mut h = String::new();
                        if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                            break;
                        }
                    }
                    counter.fetch_add(1, Ordering::Relaxed);
                    let mut parts = line.split_whitespace();
                    let body = format!(
                        "served {} {}\n",
                        parts.next().unwrap_or("?"),
                        parts.next().unwrap_or("?")
                    );
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\ncontent-type: text/plain\r\n\r\n{body}",
                        body.len()
                    );
                    if out.write_all(resp.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    seen
}

/// `curl` from a pod: (status codes joined by spaces, body).
fn curl(c: &TestCluster, pod: &str, args: &[&str]) -> (String, String) {
    let mut argv = vec!["curl", "-s", "-m", "3", "-w", "%{http_code} "];
    argv.extend_from_slice(args);
    let out = c.pod_exec("demo", pod, &argv);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let codes: Vec<&str> = text
        .split_whitespace()
        .filter(|w| w.len() == 3 && w.chars().all(|ch| ch.is_ascii_digit()))
        .collect();
    (codes.join(" "), text)
}

#[test]
fn paper_scenario_http_rules_inline() {
    let c = TestCluster::up("lsev", CLUSTER);
    let topo = c.topology();
    let app1 = topo.pod("demo", "app1").expect("app1").clone();
    let ip = app1.ipv4.expect("ipv4");
    let seen = serve(&app1.netns, SocketAddr::new(ip.into(), 8080));
    let url = |p: &str| format!("http://{ip}:8080{p}");

    // Without policy every request reaches the server.
    let (codes, body) = curl(&c, "app2", &[&url("/private")]);
    assert_eq!(codes, "200", "{body}");
    let before = seen.load(Ordering::Relaxed);

    let f = c.file("l7.yaml", POLICY);
    let out = c.weir(&["apply", "-f", &f]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Allowed: GET under /public reaches the server unchanged.
    let (codes, body) = curl(&c, "app2", &[&url("/public/a?x=1")]);
    assert_eq!(codes, "200", "{body}");
    assert!(body.contains("served GET /public/a?x=1"), "{body}");
    // Denied by method and by path: weir answers 403, the server sees nothing.
    let seen_allowed = seen.load(Ordering::Relaxed);
    let (codes, body) = curl(&c, "app2", &[&url("/private")]);
    assert_eq!(codes, "403", "{body}");
    assert!(body.contains("weir"), "403 body: {body}");
    let (codes, body) = curl(&c, "app2", &["-X", "POST", &url("/public/a")]);
    assert_eq!(codes, "403", "{body}");
    assert_eq!(
        seen.load(Ordering::Relaxed),
        seen_allowed,
        "a denied request reached the server"
    );
    assert_eq!(seen_allowed, before + 1);

    // Keep-alive: both requests on one connection, each judged.
    let (codes, body) = curl(&c, "app2", &[&url("/public/1"), &url("/private/2")]);
    assert_eq!(codes, "200 403", "{body}");

    // L3/L4 still decides first: app3 is not admitted at all.
    let (codes, _) = curl(&c, "app3", &[&url("/public/x")]);
    assert_eq!(codes, "000", "app3 got through");

    // The flow log names the denial and the request.
    let flows = c.weir_json(&["flows", "-o", "json"]);
    let denied: Vec<&serde_json::Value> = flows
        .as_array()
        .expect("records")
        .iter()
        .filter(|r| r["reason"] == "l7-denied")
        .collect();
    assert!(
        denied
            .iter()
            .any(|r| r["l7"]["path"] == "/private" && r["l7"]["method"] == "GET"),
        "no l7-denied record for GET /private: {flows}"
    );
    assert!(c.drops("l7-denied") >= 3);

    // Deleting the policy lifts the restriction.
    let out = c.weir(&["delete", "-f", &f]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (codes, body) = curl(&c, "app2", &[&url("/private")]);
    assert_eq!(codes, "200", "{body}");
}

const TWO_NODES: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: n1}
spec: {podCIDRs: [10.254.0.0/24]}
---
apiVersion: v1
kind: Node
metadata: {name: n2}
spec: {podCIDRs: [10.254.1.0/24]}
---
apiVersion: v1
kind: Namespace
metadata: {name: demo}
---
apiVersion: v1
kind: Pod
metadata: {name: app1, namespace: demo, labels: {id: app1}}
spec: {nodeName: n2, containers: [{name: c, ports: [{containerPort: 80}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: app2, namespace: demo, labels: {id: app2}}
spec: {nodeName: n1, containers: [{name: c}]}
"#;

/// The same rules with the client on another node: the server's node judges
/// each request (the identity arrives in the tunnel header) and its 403 goes
/// back to the client through the tunnel.
#[test]
fn http_rules_across_nodes() {
    for encap in ["vxlan", "geneve"] {
        let c = TestCluster::up_with("lx", TWO_NODES, &["--encap", encap]);
        let topo = c.topology();
        let app1 = topo.pod("demo", "app1").expect("app1").clone();
        let ip = app1.ipv4.expect("ipv4");
        let seen = serve(&app1.netns, SocketAddr::new(ip.into(), 8080));
        let f = c.file("l7.yaml", POLICY);
        let out = c.weir(&["apply", "-f", &f]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let url = |p: &str| format!("http://{ip}:8080{p}");
        let (codes, body) = curl(&c, "app2", &[&url("/public/a")]);
        assert_eq!(codes, "200", "{encap}: {body}");
        let before = seen.load(Ordering::Relaxed);
        let (codes, body) = curl(&c, "app2", &[&url("/private")]);
        assert_eq!(codes, "403", "{encap}: {body}");
        assert!(body.contains("weir"), "{encap}: 403 body: {body}");
        assert_eq!(
            seen.load(Ordering::Relaxed),
            before,
            "{encap}: denied request reached the server"
        );
    }
}
