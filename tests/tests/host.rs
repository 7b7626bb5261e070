//! Host ↔ pod through the dataplane (issue 12, part 2): every weir node of a
//! local cluster has a host port (`weir-host0` in the node's netns with
//! routes to its pod CIDRs, `weir-host1` attached to the dataplane), so the
//! node reaches its pods and pods reach the node, both judged by policy.
//! Real clients (curl, nc) from the node's and the pods' namespaces; each
//! check proves the frames crossed weir (the host port's XDP counter moved)
//! and fails with the dataplane stopped. Needs root, curl and nc.

use std::io::Write;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use weir_tests::{netpol, node_manifest, pod_on, TestCluster};

const NS: &str = "h";

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// n1 (default: the node's addresses are the host identity) with pods a and
/// b; n2 labelled `weir.dev/host-ingress: policy` with pod c.
fn cluster() -> TestCluster {
    let n2 = node_manifest(1, false).replace(
        "labels: {kubernetes.io/hostname: n2}",
        "labels: {kubernetes.io/hostname: n2, weir.dev/host-ingress: policy}",
    );
    assert!(n2.contains("host-ingress"), "{n2}");
    let mut m = node_manifest(0, false) + &n2;
    m.push_str(&format!(
        "---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: {NS}}}\n"
    ));
    for (p, n) in [("a", "n1"), ("b", "n1"), ("c", "n2")] {
        m.push_str(&pod_on(NS, p, n));
    }
    TestCluster::up("host", &m)
}

/// Runs `argv` in node `node`'s netns.
fn node_exec(c: &TestCluster, node: &str, argv: &[&str]) -> Output {
    let netns = c.topology().node(node).expect("node").netns.clone();
    Command::new("ip")
        .args(["netns", "exec", &netns])
        .args(argv)
        .output()
        .expect("ip netns exec")
}

/// TCP from the node to `addr:80` (the pod's server writes its name).
fn node_tcp(c: &TestCluster, node: &str, addr: &str) -> Option<String> {
    let url = if addr.contains(':') {
        format!("http://[{addr}]:80/")
    } else {
        format!("http://{addr}:80/")
    };
    let out = node_exec(
        c,
        node,
        &["curl", "-sS", "-g", "--http0.9", "--max-time", "3", &url],
    );
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A UDP exchange from the node with `addr:80` (the pod answers its name).
fn node_udp(c: &TestCluster, node: &str, addr: &str) -> Option<String> {
    let script = format!("echo ping | nc -u -w2 {addr} 80");
    let out = node_exec(c, node, &["timeout", "5", "sh", "-c", &script]);
    let got = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (!got.is_empty()).then_some(got)
}

/// `nc -z` from a pod to `addr:port`: connected?
fn pod_connects(c: &TestCluster, pod: &str, addr: &str, port: u16) -> bool {
    let port = port.to_string();
    c.pod_exec(NS, pod, &["nc", "-z", "-w", "2", addr, &port])
        .status
        .success()
}

/// A TCP server in a node's netns that writes `greeting` to its one client
/// (openbsd nc); killed on drop.
struct NodeServer(Child);

impl NodeServer {
    fn start(c: &TestCluster, node: &str, v6: bool, port: u16, greeting: &str) -> NodeServer {
        let netns = c.topology().node(node).expect("node").netns.clone();
        let port_s = port.to_string();
        let fam = if v6 { "-6" } else { "-4" };
        let mut child = Command::new("ip")
            .args(["netns", "exec", &netns, "nc", fam, "-l", "-q0", "-p"])
            .arg(&port_s)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nc -l");
        let mut stdin = child.stdin.take().expect("stdin");
        writeln!(stdin, "{greeting}").expect("write greeting");
        drop(stdin);
        let server = NodeServer(child);
        let deadline = Instant::now() + Duration::from_secs(5);
        let filter = format!("sport = :{port}");
        loop {
            let out = node_exec(c, node, &["ss", "-ltnH", &filter]);
            if !String::from_utf8_lossy(&out.stdout).trim().is_empty() {
                return server;
            }
            assert!(Instant::now() < deadline, "nc -l {port} not listening");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for NodeServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// From a pod, read the greeting of a node server at `addr:port`.
fn pod_reads(c: &TestCluster, pod: &str, addr: &str, port: u16) -> String {
    let port = port.to_string();
    let out = c.pod_exec(NS, pod, &["timeout", "5", "nc", "-w", "3", addr, &port]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn host_redirected(c: &TestCluster, node: &str) -> u64 {
    c.port_xdp(node, "weir-host1", "redirected")
}

#[test]
fn node_and_pods_reach_each_other_through_the_dataplane_under_policy() {
    let c = cluster();
    let topo = c.topology();
    let pod = |p: &str| topo.pod(NS, p).expect("pod").clone();
    let (a, c_pod) = (pod("a"), pod("c"));
    let a4 = a.ipv4.expect("a v4").to_string();
    let a6 = a.ipv6.expect("a v6").to_string();
    let c4 = c_pod.ipv4.expect("c v4").to_string();
    let c6 = c_pod.ipv6.expect("c v6").to_string();

    // 1. Node → pod: TCP and UDP, IPv4 and IPv6, through weir-host1.
    let h0 = host_redirected(&c, "n1");
    let rx0 = c.node_counter("n1", "rx_packets");
    for addr in [&a4, &a6] {
        assert_eq!(node_tcp(&c, "n1", addr).as_deref(), Some("a"), "TCP {addr}");
        assert_eq!(node_udp(&c, "n1", addr).as_deref(), Some("a"), "UDP {addr}");
    }
    let h1 = host_redirected(&c, "n1");
    // Each exchange: at least 3 TCP segments or 1 datagram from the node.
    assert!(h1 - h0 >= 2 * 3 + 2, "weir-host1 redirected +{}", h1 - h0);
    // Worker counters are published every 250 ms; both directions count.
    std::thread::sleep(Duration::from_millis(600));
    let rx1 = c.node_counter("n1", "rx_packets");
    assert!(rx1 - rx0 >= h1 - h0, "workers rx +{}", rx1 - rx0);

    // 2. Pod → node: a server in the node's netns, on its .1, ::1 and
    //    underlay address, reached from pod a through the dataplane.
    let ul = topo
        .node("n1")
        .and_then(|n| n.underlay.as_ref())
        .expect("underlay")
        .ipv4
        .to_string();
    for (i, (addr, v6)) in [
        ("10.244.0.1", false),
        ("fd00:10:244::1", true),
        (&*ul, false),
    ]
    .into_iter()
    .enumerate()
    {
        let port = 9100 + i as u16;
        let before = host_redirected(&c, "n1");
        let _srv = NodeServer::start(&c, "n1", v6, port, "node-n1");
        assert_eq!(pod_reads(&c, "a", addr, port), "node-n1", "a → {addr}");
        // The node's half of the connection came back through the host port.
        assert!(
            host_redirected(&c, "n1") > before,
            "a → {addr}: no host frames"
        );
    }

    // 3. Default-deny ingress in the namespace: the node (host identity)
    //    still reaches a; pod b does not; n2 (host-ingress: policy) is
    //    denied to c like any address.
    let deny = netpol(
        NS,
        "deny-ingress",
        "{podSelector: {}, policyTypes: [Ingress]}",
    );
    c.apply("deny.yaml", &deny);
    c.wait_applied(Duration::from_secs(20));
    let denied0 = c.node_drops("n2", "policy-denied");
    assert_eq!(node_tcp(&c, "n1", &a4).as_deref(), Some("a"), "n1 → a v4");
    assert_eq!(node_udp(&c, "n1", &a6).as_deref(), Some("a"), "n1 → a v6");
    assert!(!pod_connects(&c, "b", &a4, 80), "b → a under default deny");
    assert_eq!(
        node_tcp(&c, "n2", &c4),
        None,
        "n2 → c v4 under default deny"
    );
    assert_eq!(
        node_udp(&c, "n2", &c6),
        None,
        "n2 → c v6 under default deny"
    );
    assert!(c.node_drops("n2", "policy-denied") > denied0, "n2 drops");

    // 4. An ipBlock naming n2's address admits it (and only it).
    let allow = netpol(
        NS,
        "allow-n2",
        "{podSelector: {matchLabels: {pod: c}}, policyTypes: [Ingress], ingress: [{from: \
         [{ipBlock: {cidr: 10.244.1.1/32}}, {ipBlock: {cidr: \"fd00:10:244:1::1/128\"}}]}]}",
    );
    c.apply("allow.yaml", &allow);
    c.wait_applied(Duration::from_secs(20));
    assert_eq!(node_tcp(&c, "n2", &c4).as_deref(), Some("c"), "n2 → c v4");
    assert_eq!(node_udp(&c, "n2", &c6).as_deref(), Some("c"), "n2 → c v6");
    assert!(!pod_connects(&c, "b", &a4, 80), "b → a still denied");

    // 5. Dataplane stopped: the node no longer reaches its pods, nor they it.
    let out = c.weir(&["dataplane", "stop", "--node", "n1"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        node_tcp(&c, "n1", &a4),
        None,
        "n1 → a with the dataplane stopped"
    );
    assert_eq!(
        node_udp(&c, "n1", &a6),
        None,
        "n1 → a v6 with the dataplane stopped"
    );
    let _srv = NodeServer::start(&c, "n1", false, 9200, "node-n1");
    assert_eq!(pod_reads(&c, "a", "10.244.0.1", 9200), "", "a → n1 stopped");
    // n2 is unaffected.
    assert_eq!(node_tcp(&c, "n2", &c4).as_deref(), Some("c"), "n2 → c");
}
