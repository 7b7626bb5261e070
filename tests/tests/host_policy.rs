//! Host endpoint policy (issue 16, part 2) on a `weir up` cluster: a
//! WeirClusterPolicy with `subject.nodeSelector` judges the node's own
//! traffic through its host port (docs/policy.md, "Host endpoint policy").
//! Real clients (OpenBSD nc, curl) in the pods' and the node's netns, real
//! servers in the node's netns. Each allowed exchange proves it crossed
//! weir (the host port's XDP counter moved); each denied one is counted as
//! `policy-denied` and named in `weir flows` and `weir explain`. Also: the
//! failsafe port stays open under a deny-all rule. From outside the node
//! (the world host and node n2, on the underlay) connections to n1's
//! underlay address are judged too: the underlay's XDP program hands their
//! openings to the dataplane (`ul0`'s redirect counter moves), which
//! delivers the allowed ones to n1's kernel through the host port. Needs
//! root, curl, nc and ethtool.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use weir_tests::{node_manifest, pod_on, TestCluster};

const NS: &str = "hp";

/// Allow 9100 from anyone and 9102 from pod a only, deny everything else
/// to nodes labelled role=worker; deny those nodes' flows to pod b.
const HOST_FW: &str = "\
apiVersion: weir.dev/v1alpha1
kind: WeirClusterPolicy
metadata: {name: host-fw}
spec:
  priority: 10
  subject:
    nodeSelector: {matchLabels: {role: worker}}
  ingress:
  - name: health
    action: Allow
    ports: [{protocol: TCP, port: 9100}]
  - action: Allow
    from: [{podSelector: {matchLabels: {pod: a}}}]
    ports: [{protocol: TCP, port: 9102}]
  - {name: rest, action: Deny}
  egress:
  - action: Deny
    to: [{podSelector: {matchLabels: {pod: b}}}]
";

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// n1 labelled role=worker with pods a and b; n2 (no pods) to connect
/// from another node.
fn cluster() -> TestCluster {
    let n1 = node_manifest(0, false).replace(
        "labels: {kubernetes.io/hostname: n1}",
        "labels: {kubernetes.io/hostname: n1, role: worker}",
    );
    assert!(n1.contains("role: worker"), "{n1}");
    let mut m = n1;
    m.push_str(&node_manifest(1, false));
    m.push_str(&format!(
        "---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: {NS}}}\n"
    ));
    for p in ["a", "b"] {
        m.push_str(&pod_on(NS, p, "n1"));
    }
    TestCluster::up("hostpol", &m)
}

fn node_exec(c: &TestCluster, argv: &[&str]) -> Output {
    let netns = c.topology().node("n1").expect("node").netns.clone();
    Command::new("ip")
        .args(["netns", "exec", &netns])
        .args(argv)
        .output()
        .expect("ip netns exec")
}

/// TCP from the node to `addr:80` (the pod's server writes its name).
fn node_tcp(c: &TestCluster, addr: &str) -> Option<String> {
    let url = format!("http://{addr}:80/");
    let out = node_exec(c, &["curl", "-sS", "--http0.9", "--max-time", "3", &url]);
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// TCP servers in the node's netns that write a greeting to each client
/// (one `nc -lk` per port); killed on drop.
struct NodeServers(Vec<Child>);

impl NodeServers {
    fn start(c: &TestCluster, ports: &[u16]) -> NodeServers {
        let netns = c.topology().node("n1").expect("node").netns.clone();
        let mut servers = NodeServers(Vec::new());
        for &port in ports {
            let script = format!(
                "while true; do echo node-{port} | nc -4 -l -q0 -p {port} >/dev/null 2>&1 || exit 1; done"
            );
            let child = Command::new("ip")
                .args(["netns", "exec", &netns, "sh", "-c", &script])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .expect("nc -l");
            servers.0.push(child);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for &port in ports {
            let filter = format!("sport = :{port}");
            loop {
                let out = node_exec(c, &["ss", "-ltnH", &filter]);
                if !String::from_utf8_lossy(&out.stdout).trim().is_empty() {
                    break;
                }
                assert!(Instant::now() < deadline, "nc -l {port} not listening");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        servers
    }
}

impl Drop for NodeServers {
    fn drop(&mut self) {
        for child in &mut self.0 {
            // The shell loop and its nc: the process group this test made.
            let _ = Command::new("kill")
                .args(["-TERM", "--", &format!("-{}", child.id())])
                .output();
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// From a pod, the greeting of the node's server at `addr:port` ("" when
/// the connection fails).
fn pod_reads(c: &TestCluster, pod: &str, addr: &str, port: u16) -> String {
    let port = port.to_string();
    let out = c.pod_exec(NS, pod, &["timeout", "5", "nc", "-w", "2", addr, &port]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// [`pod_reads`] of a port that should answer: a second try if the
/// server's loop was between two `nc -l` (a refused connect, no drop).
fn pod_reads_open(c: &TestCluster, pod: &str, addr: &str, port: u16) -> String {
    let got = pod_reads(c, pod, addr, port);
    if !got.is_empty() {
        return got;
    }
    std::thread::sleep(Duration::from_millis(200));
    pod_reads(c, pod, addr, port)
}

fn host_redirected(c: &TestCluster) -> u64 {
    c.port_xdp("n1", "weir-host1", "redirected")
}

/// `weir flows` records that match `pred`.
fn flows_matching(c: &TestCluster, pred: impl Fn(&serde_json::Value) -> bool) -> usize {
    let flows = c.weir_json(&["flows", "-o", "json"]);
    flows
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| pred(r))
        .count()
}

#[test]
fn host_policy_judges_the_nodes_own_traffic_with_failsafe_ports_open() {
    let c = cluster();
    let topo = c.topology();
    let a4 = topo
        .pod(NS, "a")
        .and_then(|p| p.ipv4)
        .expect("a")
        .to_string();
    let b4 = topo
        .pod(NS, "b")
        .and_then(|p| p.ipv4)
        .expect("b")
        .to_string();
    let ul = topo
        .node("n1")
        .and_then(|n| n.underlay.as_ref())
        .expect("underlay")
        .ipv4
        .to_string();
    let node = "10.244.0.1";
    let _servers = NodeServers::start(&c, &[22, 9100, 9101, 9102]);

    // 0. No host policy: every port answers (the node is the host identity).
    assert_eq!(pod_reads_open(&c, "b", node, 9101), "node-9101", "before");
    assert_eq!(node_tcp(&c, &b4).as_deref(), Some("b"), "n1 → b before");

    // 1. The host policy.
    c.apply("host-fw.yaml", HOST_FW);
    c.wait_applied(Duration::from_secs(20));

    // 2. Pod → node: the allowed port connects, through the host port, on
    //    the node's .1 and its underlay address.
    for addr in [node, &*ul] {
        let before = host_redirected(&c);
        assert_eq!(
            pod_reads_open(&c, "b", addr, 9100),
            "node-9100",
            "b → {addr}:9100"
        );
        assert!(
            host_redirected(&c) > before,
            "b → {addr}:9100 not through weir-host1"
        );
    }
    // 9102 from a only.
    assert_eq!(pod_reads_open(&c, "a", node, 9102), "node-9102", "a → 9102");
    // 3. A denied port: refused and counted, named in flows.
    let denied0 = c.node_drops("n1", "policy-denied");
    assert_eq!(pod_reads(&c, "b", node, 9102), "", "b → 9102");
    assert_eq!(pod_reads(&c, "b", node, 9101), "", "b → 9101");
    assert_eq!(pod_reads(&c, "a", &ul, 9101), "", "a → underlay:9101");
    assert!(
        c.node_drops("n1", "policy-denied") > denied0,
        "no policy-denied drop counted"
    );
    let named = flows_matching(&c, |r| {
        r["reason"] == "policy-denied"
            && r["dport"] == 9101
            && r["ingress_rule"]
                .as_str()
                .is_some_and(|s| s.contains("weirclusterpolicies/host-fw ingress[2]"))
    });
    assert!(
        named >= 1,
        "no flow record naming the host rule: {}",
        c.weir_json(&["flows", "-o", "json"])
    );
    // 4. The failsafe port (TCP 22) stays open under the Deny.
    let before = host_redirected(&c);
    assert_eq!(pod_reads_open(&c, "b", node, 22), "node-22", "failsafe 22");
    assert!(
        host_redirected(&c) > before,
        "failsafe not through weir-host1"
    );
    // 5. Node → pod: the node's egress rule denies b, not a.
    assert_eq!(node_tcp(&c, &a4).as_deref(), Some("a"), "n1 → a");
    let denied1 = c.node_drops("n1", "policy-denied");
    assert_eq!(node_tcp(&c, &b4), None, "n1 → b");
    assert!(
        c.node_drops("n1", "policy-denied") > denied1,
        "n1 → b not counted"
    );

    // 6. explain names the deciding host rule, both directions.
    let out = c.weir(&[
        "explain", "--from", "hp/b", "--to", "node/n1", "--port", "9101",
    ]);
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("DENIED"), "{said}");
    assert!(
        said.contains("ingress of node/n1: deny by weirclusterpolicies/host-fw ingress[2] (Deny)"),
        "{said}"
    );
    let said = text(&c.weir(&[
        "explain", "--from", "hp/b", "--to", "node/n1", "--port", "22",
    ]));
    assert!(
        said.contains("ALLOWED") && said.contains("failsafe port"),
        "{said}"
    );
    let said = text(&c.weir(&[
        "explain", "--from", "node/n1", "--to", "hp/b", "--port", "80",
    ]));
    assert!(
        said.contains("egress of node/n1: deny by weirclusterpolicies/host-fw egress[0]"),
        "{said}"
    );

    // 7. From outside the node, to its underlay address: the world host
    //    and n2 (its kernel's TCP, through the underlay bridge). n2's `ul0`
    //    sends complete checksums, as a NIC behind a real wire does (a veth
    //    would leave them to a receiver that never computes them).
    let world = topo.world.clone().expect("world host").netns;
    let n2 = topo.node("n2").expect("n2").netns.clone();
    let out = Command::new("ip")
        .args(["netns", "exec", &n2, "ethtool", "-K", "ul0", "tx", "off"])
        .output()
        .expect("ethtool");
    assert!(out.status.success(), "ethtool: {}", text(&out));
    // The world host connects from its own address 198.51.100.1; n1 has
    // no route to the world of its own: the test adds one (gone with the
    // netns).
    let w_ul = topo.world.as_ref().expect("world").ipv4.to_string();
    let out = node_exec(
        &c,
        &[
            "ip",
            "route",
            "add",
            "198.51.100.1/32",
            "via",
            &w_ul,
            "dev",
            "ul0",
        ],
    );
    assert!(out.status.success(), "route to the world: {}", text(&out));
    let outside_reads = |netns: &str, src: &str, port: u16| -> String {
        let port = port.to_string();
        let out = Command::new("ip")
            .args([
                "netns", "exec", netns, "timeout", "5", "nc", "-w", "2", "-s", src, &ul, &port,
            ])
            .output()
            .expect("nc from outside");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let outside_reads_open = |netns: &str, src: &str, port: u16| -> String {
        let got = outside_reads(netns, src, port);
        if !got.is_empty() {
            return got;
        }
        std::thread::sleep(Duration::from_millis(200));
        outside_reads(netns, src, port)
    };
    let n2_ul = topo
        .node("n2")
        .and_then(|n| n.underlay.as_ref())
        .expect("n2 underlay")
        .ipv4
        .to_string();
    for (who, netns, src) in [
        ("world", &world, "198.51.100.1"),
        ("n2", &n2, n2_ul.as_str()),
    ] {
        // The allowed port answers, through weir (ul0's XDP hands the SYN
        // to the worker, which sends it to the kernel on the host port).
        let ul0 = c.port_xdp("n1", "ul0", "redirected");
        assert_eq!(
            outside_reads_open(netns, src, 9100),
            "node-9100",
            "{who} → 9100"
        );
        assert!(
            c.port_xdp("n1", "ul0", "redirected") > ul0,
            "{who} → 9100 not through ul0's XDP"
        );
        // The denied port does not, counted and named.
        let denied = c.node_drops("n1", "policy-denied");
        assert_eq!(outside_reads(netns, src, 9101), "", "{who} → 9101");
        assert!(
            c.node_drops("n1", "policy-denied") > denied,
            "{who} → 9101 not counted"
        );
        // The failsafe port stays open.
        assert_eq!(outside_reads_open(netns, src, 22), "node-22", "{who} → 22");
    }
    let allowed = flows_matching(&c, |r| {
        r["verdict"] == "allowed"
            && r["dport"] == 9100
            && r["src"] == "198.51.100.1"
            && r["ingress_rule"]
                .as_str()
                .is_some_and(|s| s.contains("weirclusterpolicies/host-fw ingress[0]"))
    });
    assert!(allowed >= 1, "no flow record of the world's allowed flow");
    let named = flows_matching(&c, |r| {
        r["reason"] == "policy-denied"
            && r["dport"] == 9101
            && r["src"]
                .as_str()
                .is_some_and(|s| s.contains("198.51.100.1"))
            && r["ingress_rule"]
                .as_str()
                .is_some_and(|s| s.contains("weirclusterpolicies/host-fw ingress[2]"))
    });
    assert!(
        named >= 1,
        "no flow record of the world's denial naming the host rule: {}",
        c.weir_json(&["flows", "-o", "json"])
    );
    // n1's own connections to the world still work under the deny-all
    // (their replies are the kernel's, never judged as new flows).
    let out = node_exec(
        &c,
        &["timeout", "5", "nc", "-w", "2", "198.51.100.1", "8080"],
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "world",
        "n1 → world: {}",
        text(&out)
    );

    // 8. Dataplane stopped: the allowed port is no longer reachable from
    //    pods (the frames crossed weir).
    let out = c.weir(&["dataplane", "stop", "--node", "n1"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(pod_reads(&c, "b", node, 9100), "", "stopped");
}

/// A one-connection TCP server in n1's netns (`nc -l`) whose received
/// lines arrive on a channel; killed on drop.
struct LineServer {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl LineServer {
    /// `family`: "-4" or "-6".
    fn start(c: &TestCluster, family: &str, port: u16) -> LineServer {
        use std::io::BufRead;
        let netns = c.topology().node("n1").expect("node").netns.clone();
        let mut child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &netns,
                "nc",
                family,
                "-l",
                "-p",
                &port.to_string(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("nc -l");
        let out = child.stdout.take().expect("stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(5);
        let filter = format!("sport = :{port}");
        loop {
            let out = node_exec(c, &["ss", "-ltnH", &filter]);
            if !String::from_utf8_lossy(&out.stdout).trim().is_empty() {
                break;
            }
            assert!(Instant::now() < deadline, "nc -l {port} not listening");
            std::thread::sleep(Duration::from_millis(50));
        }
        LineServer { child, lines }
    }

    /// The next line received within `wait`, if any.
    fn line(&self, wait: Duration) -> Option<String> {
        self.lines.recv_timeout(wait).ok()
    }
}

impl Drop for LineServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP client (`nc`) in the world host's netns, connected to
/// `addr:port`, whose stdin the test writes lines to; killed on drop.
struct LineClient(Child);

impl LineClient {
    fn connect(netns: &str, src: &str, addr: &str, port: u16) -> LineClient {
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                netns,
                "nc",
                "-s",
                src,
                addr,
                &port.to_string(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("nc");
        LineClient(child)
    }

    fn send(&mut self, line: &str) {
        use std::io::Write;
        let stdin = self.0.stdin.as_mut().expect("stdin");
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|()| stdin.flush())
            .expect("write to nc");
    }
}

impl Drop for LineClient {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Issue 16's open end: connections from outside the node (the world
/// host, on the underlay) that are ESTABLISHED follow host policy, not only
/// their SYN. Two connections open before any host policy (the kernel's
/// alone, no conntrack entry in weir); the policy then allows 9100 and
/// denies 9101: 9100's connection keeps carrying data through weir (ul0's
/// redirect counter moves), 9101's stops, counted `policy-denied` (its
/// segments are judged like an opening, as a SYN-cookie ACK would be). The
/// policy then changes to deny 9100 too: the established 9100 connection
/// stops, counted and logged as revoked.
#[test]
fn host_policy_cuts_established_flows_from_outside() {
    let c = cluster();
    let topo = c.topology();
    let ul = topo
        .node("n1")
        .and_then(|n| n.underlay.as_ref())
        .expect("underlay")
        .ipv4
        .to_string();
    let world = topo.world.clone().expect("world host");
    // n1 has no route to the world host's own address: the test adds one
    // (gone with the netns).
    let w_ul = world.ipv4.to_string();
    let out = node_exec(
        &c,
        &[
            "ip",
            "route",
            "add",
            "198.51.100.1/32",
            "via",
            &w_ul,
            "dev",
            "ul0",
        ],
    );
    assert!(out.status.success(), "route to the world: {}", text(&out));
    let s9100 = LineServer::start(&c, "-4", 9100);
    let s9101 = LineServer::start(&c, "-4", 9101);
    let mut c9100 = LineClient::connect(&world.netns, "198.51.100.1", &ul, 9100);
    let mut c9101 = LineClient::connect(&world.netns, "198.51.100.1", &ul, 9101);
    let wait = Duration::from_secs(5);
    // 0. No host policy: both carry data (the kernel's alone).
    c9100.send("a1");
    c9101.send("b1");
    assert_eq!(s9100.line(wait).as_deref(), Some("a1"), "9100 before");
    assert_eq!(s9101.line(wait).as_deref(), Some("b1"), "9101 before");

    // 1. The host policy: 9100 allowed, 9101 denied.
    c.apply("host-fw.yaml", HOST_FW);
    c.wait_applied(Duration::from_secs(20));
    let ul0 = c.port_xdp("n1", "ul0", "redirected");
    c9100.send("a2");
    assert_eq!(s9100.line(wait).as_deref(), Some("a2"), "9100 allowed");
    assert!(
        c.port_xdp("n1", "ul0", "redirected") > ul0,
        "9100's data not through ul0's XDP"
    );
    let denied = c.node_drops("n1", "policy-denied");
    c9101.send("b2");
    assert_eq!(s9101.line(Duration::from_secs(3)), None, "9101 denied");
    assert!(
        c.node_drops("n1", "policy-denied") > denied,
        "9101's data not counted"
    );

    // 2. The policy changes: 9100 is denied too. The established
    //    connection stops, counted and logged as revoked.
    let closed = HOST_FW.replace("port: 9100}", "port: 9109}");
    assert_ne!(closed, HOST_FW);
    c.apply("host-fw.yaml", &closed);
    c.wait_applied(Duration::from_secs(20));
    let denied = c.node_drops("n1", "policy-denied");
    c9100.send("a3");
    assert_eq!(s9100.line(Duration::from_secs(3)), None, "9100 cut");
    assert!(
        c.node_drops("n1", "policy-denied") > denied,
        "9100's data after the change not counted"
    );
    let revoked = flows_matching(&c, |r| {
        r["reason"] == "policy-denied"
            && r["dport"] == 9100
            && r["src"]
                .as_str()
                .is_some_and(|s| s.contains("198.51.100.1"))
    });
    assert!(
        revoked >= 1,
        "no flow record of the cut connection: {}",
        c.weir_json(&["flows", "-o", "json"])
    );

    // 3. Allowed again: the same connection carries data again (its
    //    retransmission of a3, then a4).
    c.apply("host-fw.yaml", HOST_FW);
    c.wait_applied(Duration::from_secs(20));
    c9100.send("a4");
    let mut got = Vec::new();
    while let Some(l) = s9100.line(Duration::from_secs(10)) {
        got.push(l);
        if got.last().map(String::as_str) == Some("a4") {
            break;
        }
    }
    assert_eq!(got, ["a3", "a4"], "9100 revived");

    // 4. IPv6 from the world host to n1's IPv6 underlay address (the XDP
    //    program's `host_in6`): the policy now allows 9105, not 9106; then
    //    a change cuts the established 9105 connection.
    let ul6 = topo
        .node("n1")
        .and_then(|n| n.underlay.as_ref())
        .and_then(|u| u.ipv6)
        .expect("n1's IPv6 underlay address")
        .to_string();
    let w6 = world.ipv6.expect("the world's IPv6 address").to_string();
    let v6_open = HOST_FW.replace("port: 9100}", "port: 9105}");
    c.apply("host-fw.yaml", &v6_open);
    c.wait_applied(Duration::from_secs(20));
    let s9105 = LineServer::start(&c, "-6", 9105);
    let s9106 = LineServer::start(&c, "-6", 9106);
    let ul0 = c.port_xdp("n1", "ul0", "redirected");
    let mut c9105 = LineClient::connect(&world.netns, &w6, &ul6, 9105);
    // The first exchange may wait for the underlay's IPv6 neighbours.
    c9105.send("v1");
    assert_eq!(s9105.line(wait).as_deref(), Some("v1"), "9105 over IPv6");
    assert!(
        c.port_xdp("n1", "ul0", "redirected") > ul0,
        "9105 over IPv6 not through ul0's XDP"
    );
    let denied = c.node_drops("n1", "policy-denied");
    let mut c9106 = LineClient::connect(&world.netns, &w6, &ul6, 9106);
    c9106.send("w1");
    assert_eq!(s9106.line(Duration::from_secs(3)), None, "9106 over IPv6");
    assert!(
        c.node_drops("n1", "policy-denied") > denied,
        "9106 over IPv6 not counted"
    );
    c.apply("host-fw.yaml", HOST_FW);
    c.wait_applied(Duration::from_secs(20));
    let denied = c.node_drops("n1", "policy-denied");
    c9105.send("v2");
    assert_eq!(s9105.line(Duration::from_secs(3)), None, "9105 cut");
    assert!(
        c.node_drops("n1", "policy-denied") > denied,
        "9105's data after the change not counted"
    );
}
