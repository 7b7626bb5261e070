//! HTTP/2 per-stream refusal (docs/l7.md, "A denied stream is refused"):
//! one h2c connection carries allowed and denied streams at once; weir
//! rewrites the denied stream's one-byte `:method` into a `:status` of the
//! same length, the server resets that stream (RST_STREAM PROTOCOL_ERROR)
//! and answers the others on the same connection. Real servers — nghttpd
//! (nghttp2) and haproxy in h2 mode — and a real client (`nghttp`, one
//! connection for all its URIs). The denied request is sent first, so the
//! HPACK entries its block adds (`:authority`, `user-agent`, `x-tag`) are
//! indexed by the later allowed requests: their 200s show the server's
//! table stayed the client's. Proof the refusal was weir's: without policy
//! the same command gets three 200s; with it, the workers'
//! `l7.h2_streams_refused` counter moves. Needs root, nghttp2-client,
//! nghttp2-server and haproxy (scripts/setup.sh).

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use weir_tests::TestCluster;

const CLUSTER: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: n1}
spec: {podCIDRs: [10.254.0.0/24]}
---
apiVersion: v1
kind: Namespace
metadata: {name: demo}
---
apiVersion: v1
kind: Pod
metadata: {name: app1, namespace: demo, labels: {id: app1}}
spec: {containers: [{name: c}]}
---
apiVersion: v1
kind: Pod
metadata: {name: app2, namespace: demo, labels: {id: app2}}
spec: {containers: [{name: c}]}
"#;

const POLICY: &str = r#"
apiVersion: weir.dev/v1alpha1
kind: WeirPolicy
metadata: {name: app1-h2, namespace: demo}
spec:
  podSelector: {matchLabels: {id: app1}}
  ingress:
  - action: Allow
    from: [{podSelector: {matchLabels: {id: app2}}}]
    ports: [{protocol: TCP, port: 8090}, {protocol: TCP, port: 8091}]
    http:
    - method: GET
      path: {prefix: /public}
"#;

/// A server process in a pod's netns, killed (by its pid) on drop.
struct Server(Child);

impl Server {
    /// Starts `argv` in `netns` and waits until something listens on `port`.
    fn start(netns: &str, argv: &[&str], port: u16) -> Server {
        let child = Command::new("ip")
            .args(["netns", "exec", netns])
            .args(argv)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn server");
        let s = Server(child);
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let ss = Command::new("ip")
                .args(["netns", "exec", netns, "ss", "-ltn"])
                .output()
                .expect("ss");
            if String::from_utf8_lossy(&ss.stdout).contains(&format!(":{port} ")) {
                return s;
            }
            assert!(Instant::now() < end, "{argv:?} did not listen on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What one stream of an `nghttp -v` run ended with.
#[derive(Debug, Default, Clone, PartialEq)]
struct StreamEnd {
    path: String,
    /// Length of the HEADERS frame the client sent.
    sent_len: usize,
    status: Option<String>,
    rst: Option<String>,
}

/// `nghttp -nv` from app2 with all `paths` on one connection; per stream
/// (in the order sent): its path, `:status` and RST_STREAM error; and
/// whether the client received a GOAWAY (the connection ended).
fn nghttp(c: &TestCluster, base: &str, paths: &[&str]) -> (Vec<StreamEnd>, bool, String) {
    let urls: Vec<String> = paths.iter().map(|p| format!("{base}{p}")).collect();
    let mut argv = vec!["nghttp", "-nv", "-t", "5", "-H", "x-tag: weir-test"];
    argv.extend(urls.iter().map(String::as_str));
    let out = c.pod_exec("demo", "app2", &argv);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut by_id: HashMap<u32, StreamEnd> = HashMap::new();
    let mut order = Vec::new();
    let mut sending: Option<u32> = None;
    let mut rst_of: Option<u32> = None;
    let id_of = |l: &str| -> Option<u32> {
        let i = l.find("stream_id=")? + "stream_id=".len();
        let d: String = l[i..].chars().take_while(char::is_ascii_digit).collect();
        d.parse().ok()
    };
    let mut goaway = false;
    for l in text.lines() {
        if l.contains("send HEADERS frame") {
            sending = id_of(l);
            if let Some(id) = sending {
                order.push(id);
                by_id.entry(id).or_default().sent_len = l
                    .split("length=")
                    .nth(1)
                    .and_then(|r| r.split(',').next())
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
            }
            continue;
        }
        if let (Some(id), Some(p)) = (sending, l.trim().strip_prefix(":path: ")) {
            if let Some(e) = by_id.get_mut(&id) {
                e.path = p.to_string();
            }
            continue;
        }
        if l.contains("] send ") || l.contains("] recv ") {
            sending = None;
        }
        if l.contains("recv GOAWAY frame") {
            goaway = true;
        }
        if l.contains("recv RST_STREAM frame") {
            rst_of = id_of(l);
            continue;
        }
        if let Some(id) = rst_of.take() {
            if let Some(code) = l.trim().strip_prefix("(error_code=") {
                let code = code.split('(').next().unwrap_or_default();
                by_id.entry(id).or_default().rst = Some(code.to_string());
            }
        }
        if let Some(rest) = l.split("] recv (stream_id=").nth(1) {
            let id: u32 = rest
                .chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
                .parse()
                .unwrap_or(0);
            if let Some(s) = rest.split(") :status: ").nth(1) {
                by_id.entry(id).or_default().status = Some(s.trim().to_string());
            }
        }
    }
    let ends = order
        .iter()
        .filter_map(|id| by_id.get(id).cloned())
        .collect();
    (ends, goaway, text)
}

/// The workers' count of HTTP/2 streams refused in place.
fn refused(c: &TestCluster) -> u64 {
    let v = c.weir_json(&["status", "-o", "json"]);
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
        .map(|w| w["l7"]["h2_streams_refused"].as_u64().unwrap_or(0))
        .sum()
}

/// Waits (the workers publish their counters periodically) until the
/// refused count exceeds `before`; returns it.
fn refused_after(c: &TestCluster, before: u64) -> u64 {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let n = refused(c);
        if n > before || Instant::now() > end {
            return n;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn end<'a>(ends: &'a [StreamEnd], path: &str) -> &'a StreamEnd {
    ends.iter()
        .find(|e| e.path == path)
        .unwrap_or_else(|| panic!("no stream for {path}: {ends:?}"))
}

#[test]
fn one_denied_stream_is_reset_and_the_others_go_on() {
    let c = TestCluster::up("lh2s", CLUSTER);
    let topo = c.topology();
    let app1 = topo.pod("demo", "app1").expect("app1").clone();
    let ip = app1.ipv4.expect("ipv4").to_string();
    // nghttpd's document root: every path exists (so without weir each
    // request is a 200).
    let root = c.dir.join("docroot");
    std::fs::create_dir_all(root.join("public")).unwrap();
    for p in ["private", "public/ok", "public/ok2"] {
        std::fs::write(root.join(p), "hello\n").unwrap();
    }
    let _ng = Server::start(
        &app1.netns,
        &["nghttpd", "--no-tls", "-d", root.to_str().unwrap(), "8090"],
        8090,
    );
    let cfg = c.file(
        "haproxy.cfg",
        &format!(
            "defaults\n  mode http\n  timeout client 10s\n  timeout server 10s\n  \
             timeout connect 2s\nfrontend fe\n  bind {ip}:8091 proto h2\n  \
             http-request return status 200 content-type text/plain string ok\n"
        ),
    );
    let _hap = Server::start(&app1.netns, &["haproxy", "-db", "-f", &cfg], 8091);
    let paths = ["/private", "/public/ok", "/public/ok2"];
    let servers = [
        ("nghttpd", format!("http://{ip}:8090")),
        ("haproxy", format!("http://{ip}:8091")),
    ];

    // Without policy: all three streams are served (the servers would
    // serve /private: a reset below is weir's doing).
    for (name, base) in &servers {
        let (ends, _, text) = nghttp(&c, base, &paths);
        assert_eq!(ends.len(), 3, "{name}: {text}");
        for e in &ends {
            assert_eq!(e.status.as_deref(), Some("200"), "{name} {e:?}: {text}");
        }
    }

    let f = c.file("h2.yaml", POLICY);
    let out = c.weir(&["apply", "-f", &f]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (name, base) in &servers {
        let before = refused(&c);
        let (ends, goaway, text) = nghttp(&c, base, &paths);
        assert_eq!(
            ends.len(),
            3,
            "{name}: one connection, three streams: {text}"
        );
        // Sent first: its block added the table entries (`:authority`,
        // `user-agent`, `x-tag`) that the later blocks index (they are
        // shorter for it); their 200s show the server decoded them as the
        // client meant.
        assert_eq!(ends[0].path, "/private", "{name}: {text}");
        assert!(
            ends[1].sent_len < ends[0].sent_len && ends[2].sent_len < ends[0].sent_len,
            "{name}: later blocks re-use the table: {ends:?}"
        );
        let denied = end(&ends, "/private");
        assert_eq!(
            (denied.status.as_deref(), denied.rst.as_deref()),
            (None, Some("PROTOCOL_ERROR")),
            "{name}: the denied stream is reset by the server: {text}"
        );
        for p in ["/public/ok", "/public/ok2"] {
            let e = end(&ends, p);
            assert_eq!(
                (e.status.as_deref(), e.rst.as_deref()),
                (Some("200"), None),
                "{name}: {p} served on the same connection: {text}"
            );
        }
        assert!(!goaway, "{name}: the connection was not closed: {text}");
        assert!(
            refused_after(&c, before) > before,
            "{name}: weir counted no refused stream"
        );
    }

    // The refusal is in the flow log as an l7-denied request.
    let flows = c.weir_json(&["flows", "-o", "json"]);
    assert!(
        flows.as_array().expect("records").iter().any(|r| {
            r["reason"] == "l7-denied"
                && r["l7"]["path"] == "/private"
                && r["l7"]["method"] == "GET"
        }),
        "no l7-denied record for /private: {flows}"
    );
}
