//! The operator's endpoint (`weir up --metrics-addr`): Prometheus metrics
//! parsed by the Python prometheus_client's own OpenMetrics parser, counters
//! that move with traffic and with a denied probe, the address-in-use error,
//! and the /flows stream read with curl while a probe runs.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;
use weir_tests::*;

/// A port no one listens on now (the kernel's pick).
fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").to_string()
}

/// The parser the Prometheus Python client ships, fed curl's output: every
/// sample as `name{k="v",...} value`, sorted label keys (panics if any line
/// does not parse).
const PARSE: &str = r#"
import sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
text = sys.stdin.read()
for fam in text_string_to_metric_families(text):
    for s in fam.samples:
        labels = ",".join('%s="%s"' % (k, s.labels[k]) for k in sorted(s.labels))
        print("%s{%s} %r" % (s.name, labels, s.value))
"#;

/// Scrapes `/metrics` with curl and parses it with prometheus_client.
fn scrape(addr: &str) -> BTreeMap<String, f64> {
    let out = Command::new("curl")
        .args(["-sSf", &format!("http://{addr}/metrics")])
        .output()
        .expect("run curl");
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut py = Command::new("python3")
        .args(["-c", PARSE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 (scripts/setup.sh installs prometheus_client)");
    use std::io::Write;
    py.stdin
        .take()
        .expect("stdin")
        .write_all(&out.stdout)
        .expect("feed python3");
    let parsed = py.wait_with_output().expect("python3");
    assert!(
        parsed.status.success(),
        "the OpenMetrics parser refused weir's page: {}\n{}",
        String::from_utf8_lossy(&parsed.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&parsed.stdout)
        .lines()
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').expect("sample line");
            (k.to_string(), v.parse::<f64>().expect("value"))
        })
        .collect()
}

/// Sum of the samples named `name` whose labels contain every `k="v"` of `with`.
fn sum(m: &BTreeMap<String, f64>, name: &str, with: &[&str]) -> f64 {
    m.iter()
        .filter(|(k, _)| {
            k.split_once('{')
                .is_some_and(|(n, labels)| n == name && with.iter().all(|w| labels.contains(w)))
        })
        .map(|(_, v)| v)
        .sum()
}

#[test]
fn metrics_parse_and_move_with_traffic_and_denials_and_flows_stream() {
    let addr = free_addr();
    let ns = unique_name("mx");
    let c = TestCluster::up_with(
        "mx",
        &simple_cluster(&ns, &["a", "b"]),
        &["--metrics-addr", &addr],
    );

    // A second cluster on the same address: one line, exit 1, nothing built.
    let other = unique_name("mx");
    let y = c.file("other.yaml", &simple_cluster(&unique_name("my"), &["a"]));
    let out = Command::new(weir_bin())
        .args(["--cluster", &other, "up", "-f", &y, "--metrics-addr", &addr])
        .output()
        .expect("weir");
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("address in use"), "{err}");

    // A bad filter: 400 and the reason, no stream.
    let out = Command::new("curl")
        .args([
            "-s",
            "-w",
            " %{http_code}",
            &format!("http://{addr}/flows?verdict=maybe"),
        ])
        .output()
        .expect("curl");
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(body.ends_with(" 400") && body.contains("verdict"), "{body}");

    let m0 = scrape(&addr);
    for name in [
        "weir_worker_rx_packets_total",
        "weir_drops_total",
        "weir_conntrack_entries",
        "weir_snapshot_generation",
        "weir_xsk_rx_ring_full_total",
        "weir_xsk_fill_ring_empty_total",
        "weir_xsk_rx_dropped_total",
        "weir_l7_denials_total",
        "weir_l7_h2_streams_refused_total",
        "weir_dataplane_latency_seconds_count",
        "weir_snapshot_publish_seconds_count",
        "weir_worker_busy_seconds_total",
        "weir_worker_idle_seconds_total",
        "weir_worker_sleep_seconds_total",
        "weir_worker_cpu_seconds_total",
        "weir_worker_rx_full_batches_total",
        "weir_worker_coalesce_sleeps_total",
        "weir_worker_ct_prefetch",
        "weir_worker_ct_prefetch_census_flows",
        "weir_worker_nat_port_remaps_total",
    ] {
        assert!(
            m0.keys().any(|k| k.starts_with(&format!("{name}{{"))),
            "{name} missing: {m0:?}"
        );
    }
    assert_eq!(sum(&m0, "weir_dataplane_up", &["node=\"node-1\""]), 1.0);
    // Every series the Grafana dashboard queries exists.
    let dash = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/weir.json"),
    )
    .expect("deploy/grafana/weir.json");
    for name in dash
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("weir_"))
    {
        assert!(
            m0.keys().any(|k| k.starts_with(&format!("{name}{{"))),
            "the dashboard queries {name}, which /metrics does not have"
        );
    }

    // The flow stream, read with curl while the probes run: drops only.
    let mut curl = Command::new("curl")
        .args([
            "-sSN",
            &format!("http://{addr}/flows?verdict=denied&to={ns}/a"),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("curl");
    let stdout = curl.stdout.take().expect("stdout");
    let (tx, lines) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines() {
            let Ok(l) = l else { break };
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    // The stream starts after what the nodes hold: wait until it answers
    // (a client counted in the metric) before any traffic.
    let mut waited = 0;
    while sum(&scrape(&addr), "weir_flow_stream_clients", &[]) < 1.0 {
        waited += 1;
        assert!(waited < 100, "the /flows client never registered");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Let the stream's poller take its starting point.
    std::thread::sleep(Duration::from_millis(500));

    // Allowed traffic moves the worker counters.
    assert!(all_connected(&c.probe(80, "TCP", &[])));
    let m1 = scrape(&addr);
    let rx = |m: &BTreeMap<String, f64>| sum(m, "weir_worker_rx_packets_total", &[]);
    assert!(
        rx(&m1) > rx(&m0),
        "rx did not move: {} -> {}",
        rx(&m0),
        rx(&m1)
    );
    assert!(
        sum(&m1, "weir_conntrack_inserts_total", &[])
            > sum(&m0, "weir_conntrack_inserts_total", &[])
    );
    // The workers publish their latency histogram every 250 ms: wait for
    // the next publish (the frames are counted, whenever it comes).
    let lat = |m: &BTreeMap<String, f64>| sum(m, "weir_dataplane_latency_seconds_count", &[]);
    let mut tries = 0;
    while lat(&scrape(&addr)) <= lat(&m0) {
        tries += 1;
        assert!(
            tries < 200,
            "the latency histogram never counted the probe's frames"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let m1 = scrape(&addr);
    assert_eq!(
        lat(&m1),
        sum(
            &m1,
            "weir_dataplane_latency_seconds_bucket",
            &["le=\"+Inf\""]
        ),
        "_count is the +Inf bucket"
    );

    // A policy isolating a for ingress: the denied probe moves
    // weir_drops_total{reason="policy-denied"} and shows on the stream.
    c.apply(
        "deny.yaml",
        &netpol(&ns, "deny-a", "{podSelector: {matchLabels: {pod: a}}}"),
    );
    let denied = |m: &BTreeMap<String, f64>| {
        sum(
            m,
            "weir_drops_total",
            &["reason=\"policy-denied\"", "node=\"node-1\""],
        )
    };
    let before = denied(&scrape(&addr));
    assert!(none_connected(&c.probe(
        80,
        "TCP",
        &["--from", &format!("{ns}/b"), "--to", &format!("{ns}/a")]
    )));
    let m2 = scrape(&addr);
    assert!(denied(&m2) > before, "policy-denied did not move");
    assert!(
        sum(&m2, "weir_snapshot_published_generation", &[]) >= 2.0,
        "the apply published no new generation"
    );

    // The stream carries the drop, with both workloads and the deciding rule.
    let line = lines
        .recv_timeout(Duration::from_secs(30))
        .expect("no flow on the stream");
    let v: serde_json::Value = serde_json::from_str(&line).expect("NDJSON line");
    assert_eq!(v["verdict"], "denied", "{v}");
    assert_eq!(v["destination"]["namespace"], ns.as_str(), "{v}");
    assert_eq!(v["destination"]["pod"], "a", "{v}");
    assert_eq!(v["source"]["pod"], "b", "{v}");
    assert_eq!(v["destination"]["labels"]["pod"], "a", "{v}");
    assert_eq!(
        v["destination"]["namespace_labels"]["kubernetes.io/metadata.name"],
        ns.as_str(),
        "{v}"
    );
    assert_eq!(v["dport"], 80, "{v}");
    assert!(!v["policy"].as_str().unwrap_or("").is_empty(), "{v}");
    let _ = curl.kill();
    let _ = curl.wait();

    // The CLI's filters agree: the drop is there, an allowed filter hides it.
    let out = c.weir_json(&[
        "flows",
        "--verdict",
        "denied",
        "--to",
        &format!("{ns}/a"),
        "--port",
        "80",
        "-o",
        "json",
    ]);
    let recs = out.as_array().expect("array");
    assert!(!recs.is_empty());
    assert!(recs.iter().all(|r| r["verdict"] == "denied"));
    let out = c.weir(&["flows", "--verdict", "maybe"]);
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim().lines().count(),
        1
    );
}

/// `-o yaml` is `-o json` in YAML: both read back (PyYAML) to the same value.
#[test]
fn yaml_output_is_the_json_output() {
    let ns = unique_name("my");
    let c = TestCluster::up("my", &simple_cluster(&ns, &["a", "b"]));
    for args in [
        &["get", "pods", "-A"][..],
        &["get", "nodes"],
        &["get", "namespaces"],
    ] {
        let json = c.weir_json(&[args, &["-o", "json"]].concat());
        let out = c.weir(&[args, &["-o", "yaml"]].concat());
        assert!(out.status.success(), "{args:?}");
        let mut py = Command::new("python3")
            .args([
                "-c",
                "import sys, json, yaml; print(json.dumps(yaml.safe_load(sys.stdin)))",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 with PyYAML (scripts/setup.sh)");
        use std::io::Write;
        py.stdin
            .take()
            .expect("stdin")
            .write_all(&out.stdout)
            .expect("feed");
        let back = py.wait_with_output().expect("python3");
        assert!(back.status.success(), "{args:?}: YAML did not parse");
        let yaml: serde_json::Value = serde_json::from_slice(&back.stdout).expect("json");
        assert_eq!(yaml, json, "{args:?}");
    }
    let (a, b) = (format!("{ns}/a"), format!("{ns}/b"));
    let args = [
        "explain",
        "--from",
        &a,
        "--to",
        &b,
        "--port",
        "80",
        "--protocol",
        "TCP",
    ];
    let out = c.weir(&[&args[..], &["-o", "yaml"]].concat());
    assert!(out.status.success(), "explain -o yaml");
    let out = c.weir(&["status", "-o", "yaml"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("cluster: "));
}

#[test]
fn completion_prints_a_script_for_each_shell() {
    let out = Command::new(weir_bin())
        .args(["completion", "bash"])
        .output()
        .expect("weir");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("complete -F"));
    for sh in ["zsh", "fish"] {
        let out = Command::new(weir_bin())
            .args(["completion", sh])
            .output()
            .expect("weir");
        assert!(out.status.success() && !out.stdout.is_empty(), "{sh}");
    }
}

/// A scrape in which the node's dataplane answered (on a loaded machine a
/// status request can time out, and its series are then missing).
fn scrape_live(addr: &str) -> BTreeMap<String, f64> {
    for _ in 0..20 {
        let m = scrape(addr);
        if sum(&m, "weir_dataplane_up", &[]) >= 1.0 {
            return m;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("the dataplane did not answer a scrape in 20 tries");
}

/// A `/flows` client that stops reading: a Python client with a 4 KiB
/// receive buffer sends the request and never reads. Denied UDP floods the
/// stream with drop records; the records it cannot take are dropped for it
/// alone and counted (`weir_flow_stream_dropped_total`), while the workers
/// keep forwarding (a probe connects, the RX counter moves) and the CLI's
/// flow log keeps answering.
#[test]
fn a_stalled_flow_client_loses_records_not_traffic() {
    let addr = free_addr();
    let ns = unique_name("ms");
    let c = TestCluster::up_with(
        "ms",
        &simple_cluster(&ns, &["a", "b", "c"]),
        &["--metrics-addr", &addr],
    );
    c.apply(
        "deny.yaml",
        &netpol(&ns, "deny-a", "{podSelector: {matchLabels: {pod: a}}}"),
    );
    c.wait_applied(Duration::from_secs(30));

    let (host, port) = addr.rsplit_once(':').expect("addr");
    let stalled = Command::new("python3")
        .args([
            "-c",
            r#"
import socket, sys, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
s.connect((sys.argv[1], int(sys.argv[2])))
s.sendall(b"GET /flows?verdict=denied HTTP/1.1\r\nHost: x\r\n\r\n")
print("sent", flush=True)
time.sleep(600)
"#,
            host,
            port,
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut stalled = Kill(stalled);
    let mut first = String::new();
    BufReader::new(stalled.0.stdout.as_mut().expect("stdout"))
        .read_line(&mut first)
        .expect("python3 output");
    assert_eq!(first.trim(), "sent");
    let mut waited = 0;
    while sum(&scrape_live(&addr), "weir_flow_stream_clients", &[]) < 1.0 {
        waited += 1;
        assert!(waited < 100, "the stalled client never registered");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));

    let dropped = |m: &BTreeMap<String, f64>| sum(m, "weir_flow_stream_dropped_total", &[]);
    let rx = |m: &BTreeMap<String, f64>| sum(m, "weir_worker_rx_packets_total", &[]);
    let m0 = scrape_live(&addr);
    // Denied datagrams b -> a, each one a drop record, until the stream
    // has dropped some for the stalled client.
    let topo = c.topology();
    let a_ip = topo
        .pod(&ns, "a")
        .expect("a")
        .ipv4
        .expect("ipv4")
        .to_string();
    let b_netns = topo.pod(&ns, "b").expect("b").netns.clone();
    let flood = Command::new("ip")
        .args(["netns", "exec", &b_netns, "python3", "-c"])
        .arg(
            r#"
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
end = time.time() + 60
while time.time() < end:
    for _ in range(64):
        try:
            s.sendto(b"x" * 32, (sys.argv[1], 81))
        except OSError:
            pass
    time.sleep(0.001)
"#,
        )
        .arg(&a_ip)
        .stdout(Stdio::null())
        .spawn()
        .expect("flood");
    let _flood = Kill(flood);
    // The machine may be slow to start the sender: a deadline, not a pace.
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let m1 = loop {
        let m = scrape_live(&addr);
        if dropped(&m) > 0.0 {
            break m;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no record was dropped for the stalled client: denied {} -> {}",
            sum(&m0, "weir_drops_total", &["reason=\"policy-denied\""]),
            sum(&m, "weir_drops_total", &["reason=\"policy-denied\""])
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    assert!(
        rx(&m1) > rx(&m0),
        "the workers received nothing: rx {} -> {}, stream dropped {} -> {}, denied {} -> {}",
        rx(&m0),
        rx(&m1),
        dropped(&m0),
        dropped(&m1),
        sum(&m0, "weir_drops_total", &["reason=\"policy-denied\""]),
        sum(&m1, "weir_drops_total", &["reason=\"policy-denied\""])
    );
    // The workers are not held up: an allowed probe connects now, and the
    // counters keep moving while the client is still stalled.
    assert!(all_connected(&c.probe(
        80,
        "TCP",
        &["--from", &format!("{ns}/c"), "--to", &format!("{ns}/b")]
    )));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let m2 = loop {
        let m = scrape_live(&addr);
        if rx(&m) > rx(&m1) {
            break m;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the workers stopped receiving"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(dropped(&m2) >= dropped(&m1));
    assert_eq!(sum(&m2, "weir_flow_stream_clients", &[]), 1.0);
    // The flow log itself lost nothing to the stalled client: `weir flows`
    // still shows the denied datagrams.
    let recs = c.weir_json(&["flows", "--verdict", "denied", "-o", "json"]);
    assert!(!recs.as_array().expect("array").is_empty());

    // The client goes away: the stream ends and the gauge comes back to 0.
    drop(stalled);
    let mut waited = 0;
    while sum(&scrape_live(&addr), "weir_flow_stream_clients", &[]) > 0.0 {
        waited += 1;
        assert!(waited < 100, "the stream outlived its client");
        std::thread::sleep(Duration::from_millis(100));
    }
}
