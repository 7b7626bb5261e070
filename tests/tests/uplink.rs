//! Pod → world through the node's uplink with SNAT (docs/egress.md): real
//! connections with OpenBSD `nc` from pod netns to the cluster's world host
//! (`weir-<cluster>-world`, its server answers `world`), and listeners of
//! this test in the world netns that report each connection's source, so
//! the test sees what the world sees. Needs root, `nc` and python3.
//!
//! One two-node cluster (`--non-masquerade 198.51.100.2/32`): a and c on
//! n1, b on n2. Checked: TCP and UDP answers; the source the world sees is
//! the node's underlay address and a port of weir's SNAT range; the XDP
//! program of `ul0` redirected the replies and the dataplane counted them;
//! 60 parallel connections from three pods on two nodes all answered and
//! no (address, port) seen twice; a non-masqueraded destination sees the
//! pod's address; an egress NetworkPolicy with an ipBlock denies the world
//! address (`policy-denied` moves) while one allowing it passes; with n1's
//! dataplane stopped, n1's pods no longer reach the world.

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;
use weir_tests::{netpol, node_manifest, pod_on, TestCluster};

const WORLD: &str = "198.51.100.1";
const DIRECT: &str = "198.51.100.2";

fn manifests() -> String {
    let mut s = node_manifest(0, false) + &node_manifest(1, false);
    s.push_str("---\napiVersion: v1\nkind: Namespace\nmetadata: {name: up}\n");
    for (p, n) in [("a", "n1"), ("b", "n2"), ("c", "n1")] {
        s.push_str(&pod_on("up", p, n));
    }
    s
}

/// `count` connections from `pod` to `ip:port`, `parallel` at a time; the
/// first answer line of each (empty for a failure).
fn connect(
    c: &TestCluster,
    pod: &str,
    ip: &str,
    port: u16,
    udp: bool,
    count: usize,
    parallel: bool,
) -> Vec<String> {
    let proto = if udp { "-u" } else { "" };
    let input = if udp { "echo x" } else { "true" };
    let amp = if parallel { "&" } else { ";" };
    let script = format!(
        "for i in $(seq 1 {count}); do (a=$({input} | timeout 5 nc -4 {proto} -w 2 {ip} {port} 2>/dev/null | head -n1); echo \"${{a:--}}\") {amp} done; wait"
    );
    let out = c.pod_exec("up", pod, &["bash", "-c", &script]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            if l == "-" {
                String::new()
            } else {
                l.to_string()
            }
        })
        .collect()
}

/// A listener of this test in the world netns (python3): for each TCP
/// connection or UDP datagram on `port` it prints `<source ip> <source
/// port>` and answers `seen`. Killed (its own pid) on drop.
struct Witness {
    child: Child,
    out: BufReader<ChildStdout>,
}

impl Witness {
    fn start(c: &TestCluster, bind: &str, port: u16, udp: bool) -> Witness {
        let netns = c.topology().world.expect("world host").netns;
        Self::start_in(&netns, bind, port, udp)
    }

    fn start_in(netns: &str, bind: &str, port: u16, udp: bool) -> Witness {
        let code = if udp {
            format!(
                "import socket,sys\n\
                 s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
                 s.bind(('{bind}', {port}))\n\
                 print('ready', flush=True)\n\
                 while True:\n\
                 \x20d,a=s.recvfrom(2048); print(a[0], a[1], flush=True); s.sendto(b'seen\\n', a)\n"
            )
        } else {
            format!(
                "import socket,sys\n\
                 s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
                 s.bind(('{bind}', {port})); s.listen(128)\n\
                 print('ready', flush=True)\n\
                 while True:\n\
                 \x20k,a=s.accept(); print(a[0], a[1], flush=True); k.sendall(b'seen\\n'); k.close()\n"
            )
        };
        let mut child = Command::new("ip")
            .args(["netns", "exec", netns, "python3", "-u", "-c", &code])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start witness");
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        out.read_line(&mut line).expect("witness ready");
        assert_eq!(line.trim(), "ready");
        Witness { child, out }
    }

    /// The next `n` sources seen.
    fn take(&mut self, n: usize) -> Vec<(Ipv4Addr, u16)> {
        (0..n)
            .map(|_| {
                let mut line = String::new();
                self.out.read_line(&mut line).expect("witness line");
                let mut it = line.split_whitespace();
                let ip = it.next().and_then(|s| s.parse().ok()).expect("ip");
                let port = it.next().and_then(|s| s.parse().ok()).expect("port");
                (ip, port)
            })
            .collect()
    }
}

impl Drop for Witness {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn underlay_ip(c: &TestCluster, node: &str) -> Ipv4Addr {
    c.topology()
        .node(node)
        .and_then(|n| n.underlay.as_ref().map(|u| u.ipv4))
        .expect("node underlay")
}

fn pod_ip(c: &TestCluster, pod: &str) -> Ipv4Addr {
    c.topology()
        .pod("up", pod)
        .and_then(|p| p.ipv4)
        .expect("pod ipv4")
}

const SNAT: std::ops::RangeInclusive<u16> = 61000..=65535;

#[test]
fn pods_reach_the_world_through_snat() {
    let c = TestCluster::up_with(
        "upl",
        &manifests(),
        &["--non-masquerade", "198.51.100.2/32"],
    );
    c.wait_applied(Duration::from_secs(30));
    let topo = c.topology();
    let world = topo.world.clone().expect("the cluster has a world host");
    assert!(world.addrs.contains(&WORLD.parse::<IpAddr>().unwrap()));
    assert_eq!(world.ipv4, Ipv4Addr::new(172, 30, 0, 254));
    let (n1, n2) = (underlay_ip(&c, "n1"), underlay_ip(&c, "n2"));

    // The world server answers TCP and UDP; the replies went through the
    // XDP program of ul0 into weir and out to the pod.
    let redirected = c.port_xdp("n1", "ul0", "redirected");
    let tx = c.node_counter("n1", "tx_packets");
    assert_eq!(
        connect(&c, "a", WORLD, 8080, false, 3, false),
        vec!["world"; 3]
    );
    assert_eq!(
        connect(&c, "a", WORLD, 8080, true, 3, false),
        vec!["world"; 3]
    );
    assert_eq!(
        connect(&c, "b", WORLD, 8080, false, 2, false),
        vec!["world"; 2]
    );
    assert!(c.port_xdp("n1", "ul0", "redirected") >= redirected + 6);
    assert!(c.node_counter("n1", "tx_packets") > tx + 12);

    // What the world sees: the node's address and a SNAT port, TCP and UDP.
    {
        let mut w = Witness::start(&c, WORLD, 9000, false);
        assert_eq!(connect(&c, "a", WORLD, 9000, false, 1, false), vec!["seen"]);
        assert_eq!(connect(&c, "b", WORLD, 9000, false, 1, false), vec!["seen"]);
        let seen = w.take(2);
        assert_eq!(seen[0].0, n1, "{seen:?}");
        assert_eq!(seen[1].0, n2, "{seen:?}");
        assert!(seen.iter().all(|s| SNAT.contains(&s.1)), "{seen:?}");
        let mut u = Witness::start(&c, WORLD, 9001, true);
        assert_eq!(connect(&c, "c", WORLD, 9001, true, 1, false), vec!["seen"]);
        let seen = u.take(1);
        assert_eq!(seen[0].0, n1);
        assert!(SNAT.contains(&seen[0].1));
    }

    // Many parallel connections from three pods on two nodes: every one
    // answered, no (address, port) handed out twice.
    {
        let mut w = Witness::start(&c, WORLD, 9002, false);
        let mut answers = Vec::new();
        std::thread::scope(|s| {
            let hs: Vec<_> = ["a", "b", "c"]
                .into_iter()
                .map(|p| {
                    let c = &c;
                    s.spawn(move || connect(c, p, WORLD, 9002, false, 20, true))
                })
                .collect();
            for h in hs {
                answers.extend(h.join().unwrap());
            }
        });
        assert_eq!(answers, vec!["seen"; 60]);
        let seen = w.take(60);
        let distinct: std::collections::HashSet<_> = seen.iter().collect();
        assert_eq!(distinct.len(), 60, "a source seen twice: {seen:?}");
        assert_eq!(seen.iter().filter(|s| s.0 == n1).count(), 40);
        assert_eq!(seen.iter().filter(|s| s.0 == n2).count(), 20);
    }

    // A non-masqueraded destination sees the pod's own address, and its
    // replies (to the pod's address: the world routes the podCIDR to the
    // node) come back through ul0's XDP program into weir, TCP and UDP.
    {
        let mut u = Witness::start(&c, DIRECT, 9003, true);
        assert_eq!(connect(&c, "a", DIRECT, 9003, true, 1, false), vec!["seen"]);
        assert_eq!(u.take(1)[0].0, pod_ip(&c, "a"));
        let redirected = c.port_xdp("n1", "ul0", "redirected");
        assert_eq!(
            connect(&c, "a", DIRECT, 8080, false, 2, false),
            vec!["world"; 2]
        );
        assert_eq!(
            connect(&c, "c", DIRECT, 8080, true, 2, false),
            vec!["world"; 2]
        );
        assert!(c.port_xdp("n1", "ul0", "redirected") >= redirected + 4);
        // A masqueraded world address cannot open a flow to a pod's own
        // address: counted as no-route.
        let no_route = c.node_drops("n1", "no-route");
        let world_ns = c.topology().world.expect("world").netns;
        let a_ip = pod_ip(&c, "a").to_string();
        let out = Command::new("ip")
            .args(["netns", "exec", &world_ns, "bash", "-c"])
            .arg(format!(
                "echo x | timeout 5 nc -4 -u -w 1 -s {WORLD} {a_ip} 80 2>/dev/null | head -n1"
            ))
            .output()
            .expect("nc");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "");
        assert!(c.node_drops("n1", "no-route") > no_route);
    }

    // Egress NetworkPolicy before SNAT: a may reach everything but the
    // world address; c only the world address.
    let denied = c.drops("policy-denied");
    c.apply(
        "egress.yaml",
        &(netpol(
            "up",
            "a-not-world",
            &format!("{{podSelector: {{matchLabels: {{pod: a}}}}, policyTypes: [Egress], egress: [{{to: [{{ipBlock: {{cidr: 0.0.0.0/0, except: [{WORLD}/32]}}}}]}}]}}"),
        ) + &netpol(
            "up",
            "c-only-world",
            &format!("{{podSelector: {{matchLabels: {{pod: c}}}}, policyTypes: [Egress], egress: [{{to: [{{ipBlock: {{cidr: {WORLD}/32}}}}]}}]}}"),
        )),
    );
    c.wait_applied(Duration::from_secs(30));
    assert_eq!(connect(&c, "a", WORLD, 8080, false, 2, false), vec![""; 2]);
    assert!(c.drops("policy-denied") > denied);
    assert_eq!(
        connect(&c, "c", WORLD, 8080, false, 2, false),
        vec!["world"; 2]
    );
    assert_eq!(
        connect(&c, "b", WORLD, 8080, false, 1, false),
        vec!["world"]
    );

    // Without n1's dataplane, n1's pods do not reach the world (n2's do).
    let out = c.weir(&["dataplane", "stop", "--node", "n1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(connect(&c, "c", WORLD, 8080, false, 1, false), vec![""]);
    assert_eq!(
        connect(&c, "b", WORLD, 8080, false, 1, false),
        vec!["world"]
    );
}

/// Non-masqueraded IPv6 destinations (docs/egress.md): with `weir up
/// --non-masquerade 2001:db8:5::2/128` (an address the test adds to the
/// world host), a listener there sees the pod's own IPv6 address (TCP and
/// UDP), and its answer, routed by the world to the node's IPv6 pod CIDR
/// via the node's IPv6 underlay address, reaches the pod (ul0's XDP
/// `redirected` moves); the masqueraded `2001:db8:5::1` still sees the
/// node's address; with the dataplane stopped nothing is answered.
#[test]
fn ipv6_non_masqueraded_destinations_see_the_pod() {
    const DIRECT6: &str = "2001:db8:5::2";
    let mut m = node_manifest(0, false);
    m.push_str("---\napiVersion: v1\nkind: Namespace\nmetadata: {name: up}\n");
    m.push_str(&pod_on("up", "a", "n1"));
    let c = TestCluster::up_with("upnm6", &m, &["--non-masquerade", "2001:db8:5::2/128"]);
    c.wait_applied(Duration::from_secs(30));
    let a6: IpAddr = c
        .topology()
        .pod("up", "a")
        .and_then(|p| p.ipv6)
        .expect("pod ipv6")
        .into();
    let n1: IpAddr = "fd00:172:30::1".parse().unwrap();
    let netns = c.topology().world.expect("world host").netns;
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &netns,
            "ip",
            "addr",
            "add",
            "2001:db8:5::2/128",
            "dev",
            "lo",
        ])
        .output()
        .expect("ip addr add");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A listener on `ip`:`port` that prints its peers and answers `seen`.
    let listen = |ip: &str, port: u16, udp: bool| {
        let code = if udp {
            format!(
                "import socket\n\
                 s=socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)\n\
                 s.bind(('{ip}', {port}))\n\
                 print('ready', flush=True)\n\
                 while True:\n\
                 \x20d,a=s.recvfrom(2048); print(a[0], a[1], flush=True); s.sendto(b'seen\\n', a)\n"
            )
        } else {
            format!(
                "import socket\n\
                 s=socket.socket(socket.AF_INET6); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
                 s.bind(('{ip}', {port})); s.listen(16)\n\
                 print('ready', flush=True)\n\
                 while True:\n\
                 \x20k,a=s.accept(); print(a[0], a[1], flush=True); k.sendall(b'seen\\n'); k.close()\n"
            )
        };
        let mut child = Command::new("ip")
            .args(["netns", "exec", &netns, "python3", "-u", "-c", &code])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start listener");
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        out.read_line(&mut line).expect("listener ready");
        assert_eq!(line.trim(), "ready");
        Witness { child, out }
    };
    let nc6 = |ip: &str, port: u16, udp: bool| {
        let (input, proto) = if udp { ("echo x", "-u") } else { ("true", "") };
        let script =
            format!("{input} | timeout 5 nc -6 {proto} -w 2 {ip} {port} 2>/dev/null | head -n1");
        let out = c.pod_exec("up", "a", &["bash", "-c", &script]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    // The first exchange after `weir up` may be lost while the underlay's
    // IPv6 neighbours resolve (see `pods_reach_the_ipv6_world`).
    let first = (0..3)
        .map(|_| nc6(WORLD6, 8080, false))
        .find(|a| a == "world")
        .unwrap_or_default();
    assert_eq!(first, "world");
    for udp in [false, true] {
        let mut w = listen(DIRECT6, 9008, udp);
        let redirected = c.port_xdp("n1", "ul0", "redirected");
        assert_eq!(nc6(DIRECT6, 9008, udp), "seen", "udp={udp}");
        assert_eq!(w.take_any(1)[0].0, a6, "udp={udp}");
        assert!(
            c.port_xdp("n1", "ul0", "redirected") > redirected,
            "udp={udp}"
        );
        drop(w);
        // The masqueraded address still sees the node.
        let mut w = listen(WORLD6, 9009, udp);
        assert_eq!(nc6(WORLD6, 9009, udp), "seen", "udp={udp}");
        assert_eq!(w.take_any(1)[0].0, n1, "udp={udp}");
        drop(w);
    }
    let out = c.weir(&["dataplane", "stop", "--node", "n1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _w = listen(DIRECT6, 9008, false);
    assert_eq!(nc6(DIRECT6, 9008, false), "");
}

const NODE_PORTS: &str = r#"
---
apiVersion: v1
kind: Namespace
metadata: {name: up}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: up, labels: {app: web}}
spec: {nodeName: n1, containers: [{name: c, ports: [{containerPort: 80}, {containerPort: 80, protocol: UDP}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: up, labels: {app: web, only: b}}
spec: {nodeName: n2, containers: [{name: c, ports: [{containerPort: 80}, {containerPort: 80, protocol: UDP}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: c, namespace: up, labels: {app: web}}
spec: {nodeName: n1, containers: [{name: c, ports: [{containerPort: 80}, {containerPort: 80, protocol: UDP}]}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: up}
spec: {type: NodePort, selector: {app: web}, ports: [{name: tcp, port: 80, nodePort: 30080}, {name: udp, port: 80, protocol: UDP, nodePort: 30080}]}
---
apiVersion: v1
kind: Service
metadata: {name: loc, namespace: up}
spec: {type: NodePort, externalTrafficPolicy: Local, selector: {only: b}, ports: [{port: 80, nodePort: 30081}]}
---
apiVersion: v1
kind: Service
metadata: {name: wit-local, namespace: up}
spec: {type: NodePort, externalTrafficPolicy: Local, selector: {only: b}, ports: [{port: 9100, nodePort: 30082}]}
---
apiVersion: v1
kind: Service
metadata: {name: wit-cluster, namespace: up}
spec: {type: NodePort, selector: {only: b}, ports: [{port: 9100, nodePort: 30083}]}
---
apiVersion: v1
kind: Service
metadata: {name: inl, namespace: up}
spec: {internalTrafficPolicy: Local, selector: {app: web}, ports: [{port: 80}]}
"#;

/// `count` TCP connections from the world host to `ip:port`; the first
/// answer line of each (empty for a failure).
fn from_world(c: &TestCluster, ip: Ipv4Addr, port: u16, count: usize) -> Vec<String> {
    from_world_proto(c, ip, port, count, false)
}

fn from_world_proto(
    c: &TestCluster,
    ip: Ipv4Addr,
    port: u16,
    count: usize,
    udp: bool,
) -> Vec<String> {
    let netns = c.topology().world.expect("world host").netns;
    let (input, proto) = if udp { ("echo x", "-u") } else { ("true", "") };
    let script = format!(
        "for i in $(seq 1 {count}); do a=$({input} | timeout 5 nc -4 {proto} -w 2 {ip} {port} 2>/dev/null | head -n1); echo \"${{a:--}}\"; done"
    );
    let out = Command::new("ip")
        .args(["netns", "exec", &netns, "bash", "-c", &script])
        .output()
        .expect("ip netns exec");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            if l == "-" {
                String::new()
            } else {
                l.to_string()
            }
        })
        .collect()
}

/// NodePort (externalTrafficPolicy Cluster and Local) from the world
/// host, and internalTrafficPolicy Local for a ClusterIP.
#[test]
fn node_ports_from_the_world() {
    let nodes = node_manifest(0, false) + &node_manifest(1, false);
    let c = TestCluster::up("upn", &(nodes + NODE_PORTS));
    c.wait_applied(Duration::from_secs(30));
    let (n1, n2) = (underlay_ip(&c, "n1"), underlay_ip(&c, "n2"));

    // externalTrafficPolicy Cluster: every node answers on the node port,
    // spread over the backends of both nodes.
    let redirected = c.port_xdp("n1", "ul0", "redirected");
    for node in [n1, n2] {
        let answers = from_world(&c, node, 30080, 30);
        assert!(
            answers
                .iter()
                .all(|a| ["a", "b", "c"].contains(&a.as_str())),
            "{node}: {answers:?}"
        );
        for pod in ["a", "b", "c"] {
            assert!(
                answers.iter().any(|a| a == pod),
                "{node}: {pod} never answered: {answers:?}"
            );
        }
    }
    assert!(c.port_xdp("n1", "ul0", "redirected") >= redirected + 30);
    // UDP on the same node port number.
    for node in [n1, n2] {
        let answers = from_world_proto(&c, node, 30080, 30, true);
        assert!(
            answers
                .iter()
                .all(|a| ["a", "b", "c"].contains(&a.as_str())),
            "{node}: {answers:?}"
        );
        assert!(
            answers.iter().any(|a| a == "b") && answers.iter().any(|a| a != "b"),
            "{node}: {answers:?}"
        );
    }

    // Local: only the node with a backend answers; the other drops, counted.
    assert_eq!(from_world(&c, n2, 30081, 3), vec!["b"; 3]);
    let before = c.node_drops("n1", "nodeport-no-local-endpoint");
    assert_eq!(from_world(&c, n1, 30081, 2), vec![""; 2]);
    assert!(c.node_drops("n1", "nodeport-no-local-endpoint") > before);

    // The source the backend sees: the client with Local; n1's pod-CIDR
    // gateway address with Cluster through n1 (the backend is on n2).
    let b_netns = c.topology().pod("up", "b").expect("pod b").netns.clone();
    let mut w = Witness::start_in(&b_netns, "0.0.0.0", 9100, false);
    let world_ip = c.topology().world.expect("world").ipv4;
    assert_eq!(from_world(&c, n2, 30082, 1), vec!["seen"]);
    assert_eq!(w.take(1)[0].0, world_ip);
    assert_eq!(from_world(&c, n1, 30083, 1), vec!["seen"]);
    let seen = w.take(1)[0];
    assert_eq!(seen.0, Ipv4Addr::new(10, 244, 0, 1), "{seen:?}");
    assert!(SNAT.contains(&seen.1), "{seen:?}");

    // internalTrafficPolicy Local: pods reach their own node's backends only.
    let inl = c
        .topology()
        .services
        .iter()
        .find(|s| s.name == "inl")
        .and_then(|s| s.cluster_ips.first().copied())
        .expect("inl ClusterIP")
        .to_string();
    let from_a = connect(&c, "a", &inl, 80, false, 20, false);
    assert!(from_a.iter().all(|x| x == "a" || x == "c"), "{from_a:?}");
    assert!(
        from_a.iter().any(|x| x == "a") && from_a.iter().any(|x| x == "c"),
        "{from_a:?}"
    );
    assert_eq!(connect(&c, "b", &inl, 80, false, 5, false), vec!["b"; 5]);

    // A pod reaching a node port at *another* node's address (a on n1 →
    // n2:30080) is load balanced on its own node, over every backend
    // (before, the pass dropped it as no-route: pods do not reach the
    // underlay).
    let n2s = n2.to_string();
    let via_n2 = connect(&c, "a", &n2s, 30080, false, 20, false);
    assert!(
        via_n2.iter().all(|x| ["a", "b", "c"].contains(&x.as_str())),
        "{via_n2:?}"
    );
    assert!(
        via_n2.iter().any(|x| x != "b") && via_n2.iter().any(|x| x == "b"),
        "{via_n2:?}"
    );

    // A NodePort Service applied without nodePort gets the lowest free
    // one (30000), shown by `weir get services` and served; one that asks
    // for a taken node port, or one outside the range, is refused.
    let auto = "apiVersion: v1\nkind: Service\nmetadata: {name: auto, namespace: up}\n\
        spec: {type: NodePort, selector: {only: b}, ports: [{port: 80}]}\n";
    let out = c.weir(&["apply", "-f", &c.file("auto.yaml", auto)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = c.weir_json(&["get", "services", "-n", "up", "auto", "-o", "json"]);
    assert_eq!(got[0]["node_ports"], serde_json::json!([30000]), "{got}");
    assert_eq!(from_world(&c, n2, 30000, 3), vec!["b"; 3]);
    let taken = auto
        .replace("name: auto", "name: auto2")
        .replace("port: 80}", "port: 80, nodePort: 30080}");
    let out = c.weir(&["apply", "-f", &c.file("auto2.yaml", &taken)]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("services/up/auto2: spec.ports[0].nodePort: 30080 is already allocated"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let outside = auto
        .replace("name: auto", "name: auto3")
        .replace("port: 80}", "port: 80, nodePort: 8080}");
    let out = c.weir(&["apply", "-f", &c.file("auto3.yaml", &outside)]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("8080 is not in the valid range 30000-32767"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Without n1's dataplane, its node port is gone (n2's stays).
    let out = c.weir(&["dataplane", "stop", "--node", "n1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(from_world(&c, n1, 30080, 1), vec![""]);
    assert_eq!(from_world(&c, n2, 30081, 1), vec!["b"]);
}

/// A listener of this test in the world netns (python3, raw ICMP socket):
/// prints `<source> <identifier>` for each echo request the world host
/// receives (its kernel still answers them).
fn echo_witness(c: &TestCluster) -> Witness {
    let netns = c.topology().world.expect("world host").netns;
    let code = "import socket\n\
                s=socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)\n\
                print('ready', flush=True)\n\
                while True:\n\
                \x20d,a=s.recvfrom(2048); h=(d[0]&15)*4\n\
                \x20if d[h]==8: print(a[0], int.from_bytes(d[h+4:h+6],'big'), flush=True)\n";
    let mut child = Command::new("ip")
        .args(["netns", "exec", &netns, "python3", "-u", "-c", code])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start echo witness");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("witness ready");
    assert_eq!(line.trim(), "ready");
    Witness { child, out }
}

/// ICMP through the uplink (docs/egress.md): `ping` from a pod to the
/// world host is answered, the world sees the node's address and an
/// identifier of the SNAT range; a UDP datagram to a closed port of the
/// world draws a port unreachable that reaches the pod translated (its
/// socket reports "connection refused"); a 3000-byte UDP datagram reaches
/// the world whole, from the node's address (its fragments followed the
/// first one's SNAT). They went through ul0's XDP program and weir's pass
/// (counters), and stop with the dataplane.
#[test]
fn pods_ping_the_world_and_get_its_errors() {
    let mut m = node_manifest(0, false);
    m.push_str("---\napiVersion: v1\nkind: Namespace\nmetadata: {name: up}\n");
    m.push_str(&pod_on("up", "a", "n1"));
    let c = TestCluster::up_with("uplicmp", &m, &[]);
    c.wait_applied(Duration::from_secs(30));
    let n1 = underlay_ip(&c, "n1");

    let ping = |count: u32| {
        let out = c.pod_exec(
            "up",
            "a",
            &[
                "ping",
                "-n",
                "-c",
                &count.to_string(),
                "-i",
                "0.2",
                "-W",
                "2",
                WORLD,
            ],
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let mut w = echo_witness(&c);
    let redirected = c.port_xdp("n1", "ul0", "redirected");
    let out = ping(3);
    assert!(out.contains("3 received"), "{out}");
    let seen = w.take(3);
    assert!(seen.iter().all(|s| s.0 == n1), "{seen:?}");
    assert!(seen.iter().all(|s| SNAT.contains(&s.1)), "{seen:?}");
    assert!(c.port_xdp("n1", "ul0", "redirected") >= redirected + 3);

    // A closed UDP port of the world: its port unreachable reaches the
    // pod's socket.
    let refused = |c: &TestCluster| {
        let code = format!(
            "import socket\n\
             s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3)\n\
             s.connect(('{WORLD}', 9999))\n\
             try:\n\
             \x20s.send(b'x'); s.recv(100); print('answer')\n\
             except ConnectionRefusedError: print('refused')\n\
             except socket.timeout: print('timeout')\n"
        );
        let out = c.pod_exec("up", "a", &["python3", "-c", &code]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let redirected = c.port_xdp("n1", "ul0", "redirected");
    assert_eq!(refused(&c), "refused");
    assert!(c.port_xdp("n1", "ul0", "redirected") > redirected);

    // A 3000-byte UDP datagram (fragmented at the pod's MTU) reaches the
    // world server whole, from the node's address.
    let world_ns = c.topology().world.expect("world").netns;
    let code = format!(
        "import socket\n\
         s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         s.bind(('{WORLD}', 9005))\n\
         print('ready', flush=True)\n\
         while True:\n\
         \x20d,a=s.recvfrom(65535); print(a[0], len(d), flush=True); s.sendto(str(len(d)).encode(), a)\n"
    );
    let mut child = Command::new("ip")
        .args(["netns", "exec", &world_ns, "python3", "-u", "-c", &code])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start big witness");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("witness ready");
    let mut big = Witness { child, out };
    let code = format!(
        "import socket\n\
         s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3)\n\
         s.connect(('{WORLD}', 9005)); s.send(b'x'*3000); print(s.recv(100).decode())\n"
    );
    let out = c.pod_exec("up", "a", &["python3", "-c", &code]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "3000");
    let seen = big.take(1);
    assert_eq!(seen[0], (n1, 3000));

    // Without the dataplane neither gets through.
    let out = c.weir(&["dataplane", "stop", "--node", "n1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(ping(1).contains("0 received"));
    assert_eq!(refused(&c), "timeout");
}

const WORLD6: &str = "2001:db8:5::1";

/// A listener of this test in the world netns on `[WORLD6]:port` (TCP,
/// UDP, or raw ICMPv6 echo requests with `proto` "icmp6"): prints each
/// peer's `<address> <port or identifier>`.
fn witness6(c: &TestCluster, port: u16, proto: &str) -> Witness {
    let netns = c.topology().world.expect("world host").netns;
    let code = match proto {
        "udp" => format!(
            "import socket\n\
             s=socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)\n\
             s.bind(('{WORLD6}', {port}))\n\
             print('ready', flush=True)\n\
             while True:\n\
             \x20d,a=s.recvfrom(2048); print(a[0], a[1], flush=True); s.sendto(b'seen\\n', a)\n"
        ),
        "tcp" => format!(
            "import socket\n\
             s=socket.socket(socket.AF_INET6); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
             s.bind(('{WORLD6}', {port})); s.listen(16)\n\
             print('ready', flush=True)\n\
             while True:\n\
             \x20k,a=s.accept(); print(a[0], a[1], flush=True); k.sendall(b'seen\\n'); k.close()\n"
        ),
        _ => "import socket\n\
              s=socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)\n\
              print('ready', flush=True)\n\
              while True:\n\
              \x20d,a=s.recvfrom(2048)\n\
              \x20if d[0]==128: print(a[0], int.from_bytes(d[4:6],'big'), flush=True)\n"
            .to_string(),
    };
    let mut child = Command::new("ip")
        .args(["netns", "exec", &netns, "python3", "-u", "-c", &code])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start witness6");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("witness6 ready");
    assert_eq!(line.trim(), "ready");
    Witness { child, out }
}

impl Witness {
    /// The next `n` sources seen (any family).
    fn take_any(&mut self, n: usize) -> Vec<(IpAddr, u16)> {
        (0..n)
            .map(|_| {
                let mut line = String::new();
                self.out.read_line(&mut line).expect("witness line");
                let mut it = line.split_whitespace();
                let ip = it.next().and_then(|s| s.parse().ok()).expect("ip");
                let port = it.next().and_then(|s| s.parse().ok()).expect("port");
                (ip, port)
            })
            .collect()
    }
}

/// IPv6 to the world (docs/egress.md, SNAT66): `nc -6` (TCP and UDP) and
/// `ping -6` from a pod to the world host's `2001:db8:5::1` are answered;
/// listeners of this test in the world netns see the node's IPv6 underlay
/// address (`fd00:172:30::1`) and a port / identifier of weir's SNAT
/// range; ul0's XDP program redirected the replies to the dataplane; with
/// the dataplane stopped nothing is answered.
#[test]
fn pods_reach_the_ipv6_world() {
    let mut m = node_manifest(0, false);
    m.push_str("---\napiVersion: v1\nkind: Namespace\nmetadata: {name: up}\n");
    m.push_str(&pod_on("up", "a", "n1"));
    let c = TestCluster::up_with("uplv6", &m, &[]);
    c.wait_applied(Duration::from_secs(30));
    let n1: IpAddr = c
        .topology()
        .node("n1")
        .and_then(|n| n.underlay.as_ref().and_then(|u| u.ipv6))
        .expect("n1's IPv6 underlay address")
        .into();
    assert_eq!(n1, "fd00:172:30::1".parse::<IpAddr>().unwrap());

    let nc6 = |c: &TestCluster, port: u16, udp: bool| {
        let proto = if udp { "-u" } else { "" };
        let input = if udp { "echo x" } else { "true" };
        let script = format!(
            "{input} | timeout 5 nc -6 {proto} -w 2 {WORLD6} {port} 2>/dev/null | head -n1"
        );
        let out = c.pod_exec("up", "a", &["bash", "-c", &script]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let ping6 = |c: &TestCluster, count: u32| {
        let n = count.to_string();
        let argv = ["ping", "-6", "-n", "-c", &n, "-i", "0.2", "-W", "2", WORLD6];
        let out = c.pod_exec("up", "a", &argv);
        String::from_utf8_lossy(&out.stdout).to_string()
    };

    // The world's own server answers, over TCP and UDP. The first exchange
    // after `weir up` may be lost while the underlay's IPv6 neighbours are
    // still being resolved (once in a CI run under load: an empty answer);
    // up to three tries, then every later exchange must succeed first time.
    let redirected = c.port_xdp("n1", "ul0", "redirected");
    let first = (0..3)
        .map(|_| nc6(&c, 8080, false))
        .find(|a| a == "world")
        .unwrap_or_default();
    assert_eq!(first, "world");
    assert_eq!(nc6(&c, 8080, true), "world");
    // SYN-ACK, data, FIN (TCP) and the UDP answer came through ul0's XDP.
    assert!(c.port_xdp("n1", "ul0", "redirected") >= redirected + 3);

    // What the world sees: the node's IPv6 underlay address, a SNAT port.
    for udp in [false, true] {
        let port = if udp { 9007 } else { 9006 };
        let mut w = witness6(&c, port, if udp { "udp" } else { "tcp" });
        assert_eq!(nc6(&c, port, udp), "seen", "udp={udp}");
        let seen = w.take_any(1);
        assert_eq!(seen[0].0, n1, "udp={udp}: {seen:?}");
        assert!(SNAT.contains(&seen[0].1), "udp={udp}: {seen:?}");
    }

    // ping -6: answered, from the node's address and a SNAT identifier.
    let mut w = witness6(&c, 0, "icmp6");
    let redirected = c.port_xdp("n1", "ul0", "redirected");
    let out = ping6(&c, 3);
    assert!(out.contains("3 received"), "{out}");
    let seen = w.take_any(3);
    assert!(seen.iter().all(|s| s.0 == n1), "{seen:?}");
    assert!(seen.iter().all(|s| SNAT.contains(&s.1)), "{seen:?}");
    assert!(c.port_xdp("n1", "ul0", "redirected") >= redirected + 3);
    drop(w);

    // Without the dataplane nothing gets through.
    let out = c.weir(&["dataplane", "stop", "--node", "n1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(nc6(&c, 8080, false), "");
    assert_eq!(nc6(&c, 8080, true), "");
    assert!(ping6(&c, 1).contains("0 received"));
}

/// NodePort on the nodes' IPv6 underlay addresses (docs/services.md):
/// dual-stack NodePort Services answer `nc -6` from the world netns at
/// `[fd00:172:30::N]:nodePort` with the backend pod's name —
/// externalTrafficPolicy Cluster through n1 to b on n2 (SNATed into the
/// tunnel) and to a on n1, Local only on the node with the backend (the
/// other counts `nodeport-no-local-endpoint`); the IPv4 node port with the
/// same number still answers; ul0's XDP program redirected the frames; a
/// pod on n1 reaches the node ports at n1's own IPv6 address (TCP to b,
/// UDP to itself); with n1's dataplane stopped n1's node port is silent,
/// from the world and from the pod.
#[test]
fn node_ports_on_ipv6_from_the_world() {
    let mut m = node_manifest(0, false) + &node_manifest(1, false);
    m.push_str("---\napiVersion: v1\nkind: Namespace\nmetadata: {name: up}\n");
    m.push_str(&pod_on("up", "a", "n1"));
    m.push_str(&pod_on("up", "b", "n2"));
    m.push_str(
        "---\napiVersion: v1\nkind: Service\nmetadata: {name: all6, namespace: up}\n\
         spec: {type: NodePort, ipFamilyPolicy: PreferDualStack, ipFamilies: [IPv6, IPv4], selector: {pod: b}, ports: [{port: 80, nodePort: 30090}]}\n\
         ---\napiVersion: v1\nkind: Service\nmetadata: {name: loc6, namespace: up}\n\
         spec: {type: NodePort, externalTrafficPolicy: Local, ipFamilyPolicy: PreferDualStack, ipFamilies: [IPv6, IPv4], selector: {pod: b}, ports: [{port: 80, nodePort: 30091}]}\n\
         ---\napiVersion: v1\nkind: Service\nmetadata: {name: a6, namespace: up}\n\
         spec: {type: NodePort, ipFamilyPolicy: SingleStack, ipFamilies: [IPv6], selector: {pod: a}, ports: [{port: 80, protocol: UDP, nodePort: 30092}]}\n",
    );
    let c = TestCluster::up_with("upn6", &m, &[]);
    c.wait_applied(Duration::from_secs(30));
    let ul6 = |node: &str| -> String {
        c.topology()
            .node(node)
            .and_then(|n| n.underlay.as_ref().and_then(|u| u.ipv6))
            .expect("IPv6 underlay address")
            .to_string()
    };
    let (n1, n2) = (ul6("n1"), ul6("n2"));
    let netns = c.topology().world.expect("world host").netns;
    let from_world6 = |ip: &str, port: u16, udp: bool| {
        let (input, proto) = if udp { ("echo x", "-u") } else { ("true", "") };
        let script =
            format!("{input} | timeout 5 nc -6 {proto} -w 2 {ip} {port} 2>/dev/null | head -n1");
        let out = Command::new("ip")
            .args(["netns", "exec", &netns, "bash", "-c", &script])
            .output()
            .expect("ip netns exec");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };

    let redirected = c.port_xdp("n1", "ul0", "redirected");
    // Cluster: through n1 to b on n2, and through n2 to b.
    assert_eq!(from_world6(&n1, 30090, false), "b");
    assert_eq!(from_world6(&n2, 30090, false), "b");
    // The IPv4 node port of the same dual-stack Service.
    let n1_v4 = underlay_ip(&c, "n1").to_string();
    let v4 = Command::new("ip")
        .args([
            "netns",
            "exec",
            &netns,
            "bash",
            "-c",
            &format!("timeout 5 nc -4 -w 2 {n1_v4} 30090 </dev/null 2>/dev/null | head -n1"),
        ])
        .output()
        .expect("nc -4");
    assert_eq!(String::from_utf8_lossy(&v4.stdout).trim(), "b");
    // UDP to a local backend.
    assert_eq!(from_world6(&n1, 30092, true), "a");
    assert!(c.port_xdp("n1", "ul0", "redirected") >= redirected + 4);
    // Local: only n2 (b's node) answers.
    assert_eq!(from_world6(&n2, 30091, false), "b");
    let before = c.node_drops("n1", "nodeport-no-local-endpoint");
    assert_eq!(from_world6(&n1, 30091, false), "");
    assert!(c.node_drops("n1", "nodeport-no-local-endpoint") > before);
    // A pod reaches the node port at its own node's IPv6 address ("hairpin
    // to node IP"): TCP to b on n2, UDP to itself.
    let from_pod6 = |port: u16, udp: bool| {
        let (input, proto) = if udp { ("echo x", "-u") } else { ("true", "") };
        let script =
            format!("{input} | timeout 5 nc -6 {proto} -w 2 {n1} {port} 2>/dev/null | head -n1");
        let out = c.pod_exec("up", "a", &["bash", "-c", &script]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(from_pod6(30090, false), "b");
    assert_eq!(from_pod6(30092, true), "a");

    // Without n1's dataplane, n1's node port is silent (n2's still answers).
    let out = c.weir(&["dataplane", "stop", "--node", "n1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(from_world6(&n1, 30092, true), "");
    assert_eq!(from_world6(&n1, 30090, false), "");
    assert_eq!(from_world6(&n2, 30090, false), "b");
    assert_eq!(from_pod6(30090, false), "");
}

/// ICMPv6 errors from the world about SNAT66 flows reach the pod
/// translated (docs/egress.md, "IPv6"): ul0's XDP program hands them to
/// the dataplane, which rewrites them for the pod. The world netns is made
/// a router for `2001:db8:6::/64` (forwarding on, a veth link of MTU 1280
/// of its own): UDP to a closed port of the world host is refused at the
/// pod's socket (port unreachable); 1300 bytes to `2001:db8:6::1` draw the
/// world's Packet Too Big, the pod's socket fails with EMSGSIZE and learns
/// the path MTU 1280; a datagram sent with hop limit 2 draws its Time
/// Exceeded (EHOSTUNREACH on a socket with IPV6_RECVERR); ul0's XDP
/// `redirected` moves. A 3000-byte UDP datagram (in fragments) reaches a
/// world listener whole from the node's IPv6 address. With the dataplane
/// stopped nothing comes back.
#[test]
fn pods_get_icmpv6_errors_from_the_world() {
    let mut m = node_manifest(0, false);
    m.push_str("---\napiVersion: v1\nkind: Namespace\nmetadata: {name: up}\n");
    m.push_str(&pod_on("up", "a", "n1"));
    let c = TestCluster::up_with("upl6err", &m, &[]);
    c.wait_applied(Duration::from_secs(30));
    let world_ns = c.topology().world.expect("world host").netns;
    let in_world = |args: &[&str]| {
        let out = Command::new("ip")
            .args(["netns", "exec", &world_ns])
            .args(args)
            .output()
            .expect("ip netns exec");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    // The world routes 2001:db8:6::/64 over a link of MTU 1280 (a veth
    // pair of its own, which dies with the world netns).
    in_world(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
    in_world(&[
        "ip", "link", "add", "ptb0", "mtu", "1280", "type", "veth", "peer", "name", "ptb1", "mtu",
        "1280",
    ]);
    in_world(&["ip", "link", "set", "ptb1", "up"]);
    in_world(&["ip", "link", "set", "ptb0", "up"]);
    in_world(&["ip", "-6", "route", "add", "2001:db8:6::/64", "dev", "ptb0"]);

    // One datagram from the pod: what its socket reports.
    // `what`: "refused" (closed port), "ptb" (too big), "hops" (hop limit 2).
    let probe = |c: &TestCluster, what: &str| {
        let (dst, size, opts) = match what {
            "refused" => (WORLD6, 10, ""),
            "ptb" => ("2001:db8:6::1", 1300, ""),
            // IPV6_UNICAST_HOPS = 16, IPV6_RECVERR = 25.
            _ => (
                "2001:db8:6::1",
                10,
                "s.setsockopt(socket.IPPROTO_IPV6, 16, 2); s.setsockopt(socket.IPPROTO_IPV6, 25, 1)\n",
            ),
        };
        let code = format!(
            "import socket, errno\n\
             s=socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); s.settimeout(3)\n\
             {opts}\
             s.connect(('{dst}', 9999))\n\
             try:\n\
             \x20s.send(b'x'*{size}); s.recv(100); print('answer')\n\
             except socket.timeout: print('timeout')\n\
             except OSError as e: print(errno.errorcode.get(e.errno, e.errno), s.getsockopt(socket.IPPROTO_IPV6, 24))\n"
        );
        let out = c.pod_exec("up", "a", &["python3", "-c", &code]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    // The first exchange after `weir up` may be lost while the underlay's
    // IPv6 neighbours resolve (see `pods_reach_the_ipv6_world`).
    let redirected = c.port_xdp("n1", "ul0", "redirected");
    let first = (0..3)
        .map(|_| probe(&c, "refused"))
        .find(|a| a.starts_with("ECONNREFUSED"))
        .unwrap_or_default();
    assert!(first.starts_with("ECONNREFUSED"), "{first}");
    assert!(c.port_xdp("n1", "ul0", "redirected") > redirected);
    let redirected = c.port_xdp("n1", "ul0", "redirected");
    assert_eq!(probe(&c, "ptb"), "EMSGSIZE 1280");
    assert!(c.port_xdp("n1", "ul0", "redirected") > redirected);
    let redirected = c.port_xdp("n1", "ul0", "redirected");
    assert!(probe(&c, "hops").starts_with("EHOSTUNREACH"));
    assert!(c.port_xdp("n1", "ul0", "redirected") > redirected);

    // A 3000-byte UDP datagram (fragmented by the pod's kernel) reaches a
    // world listener whole, from the node's IPv6 address (SNAT66 of its
    // fragments); the listener's short answer comes back.
    let code = format!(
        "import socket\n\
         s=socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)\n\
         s.bind(('{WORLD6}', 9005))\n\
         print('ready', flush=True)\n\
         while True:\n\
         \x20d,a=s.recvfrom(65535); print(a[0], len(d), flush=True); s.sendto(str(len(d)).encode(), a)\n"
    );
    let mut child = Command::new("ip")
        .args(["netns", "exec", &world_ns, "python3", "-u", "-c", &code])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start big witness");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("witness ready");
    let mut big = Witness { child, out };
    let code = format!(
        "import socket\n\
         s=socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); s.settimeout(3)\n\
         s.connect(('{WORLD6}', 9005)); s.send(b'x'*3000); print(s.recv(100).decode())\n"
    );
    let out = c.pod_exec("up", "a", &["python3", "-c", &code]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "3000");
    let n1: IpAddr = "fd00:172:30::1".parse().unwrap();
    assert_eq!(big.take_any(1), vec![(n1, 3000)]);
    drop(big);

    // Without the dataplane nothing comes back.
    let out = c.weir(&["dataplane", "stop", "--node", "n1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(probe(&c, "refused"), "timeout");
}

/// LoadBalancer Services from the world (docs/services.md, LoadBalancer
/// and external IPs): `loadBalancerIP`s 198.18.0.10 (Cluster, backends a,
/// c on n1 and b on n2) and 198.18.0.11 (Local, b only), no node ports.
const LOAD_BALANCERS: &str = r#"
---
apiVersion: v1
kind: Service
metadata: {name: lb, namespace: up}
spec: {type: LoadBalancer, loadBalancerIP: 198.18.0.10, allocateLoadBalancerNodePorts: false, selector: {app: web}, ports: [{name: tcp, port: 80}, {name: udp, port: 80, protocol: UDP}]}
---
apiVersion: v1
kind: Service
metadata: {name: lb-local, namespace: up}
spec: {type: LoadBalancer, loadBalancerIP: 198.18.0.11, allocateLoadBalancerNodePorts: false, externalTrafficPolicy: Local, selector: {only: b}, ports: [{port: 80}]}
"#;

/// In the world netns: `ip route replace <addr>/32 via <via>` (as a
/// MetalLB/BGP load balancer steers its address to a node).
fn world_route(c: &TestCluster, addr: &str, via: Ipv4Addr) {
    let netns = c.topology().world.expect("world host").netns;
    let out = Command::new("ip")
        .args(["netns", "exec", &netns, "ip", "route", "replace"])
        .args([&format!("{addr}/32"), "via", &via.to_string()])
        .output()
        .expect("ip route");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The world reaches a LoadBalancer Service's address routed to n1: TCP
/// and UDP answered by the backends on n1 and on n2 (n1's XDP counter
/// moved); with externalTrafficPolicy Local through the node without a
/// backend: counted drop, through n2: answered; a port the Service does
/// not have: counted `no-route`; with n1's dataplane stopped: no answer.
#[test]
fn load_balancer_ips_from_the_world() {
    let nodes = node_manifest(0, false) + &node_manifest(1, false);
    let c = TestCluster::up("uplb", &(nodes + NODE_PORTS + LOAD_BALANCERS));
    c.wait_applied(Duration::from_secs(30));
    let (n1, n2) = (underlay_ip(&c, "n1"), underlay_ip(&c, "n2"));
    let lb: Ipv4Addr = "198.18.0.10".parse().unwrap();
    let lb_local: Ipv4Addr = "198.18.0.11".parse().unwrap();
    world_route(&c, "198.18.0.10", n1);

    let redirected = c.port_xdp("n1", "ul0", "redirected");
    for udp in [false, true] {
        let answers = from_world_proto(&c, lb, 80, 30, udp);
        assert!(
            answers
                .iter()
                .all(|a| ["a", "b", "c"].contains(&a.as_str())),
            "udp={udp}: {answers:?}"
        );
        assert!(
            answers.iter().any(|a| a == "b") && answers.iter().any(|a| a != "b"),
            "udp={udp}: {answers:?}"
        );
    }
    assert!(c.port_xdp("n1", "ul0", "redirected") >= redirected + 60);

    // A port the Service does not have at that address: counted no-route.
    let before = c.node_drops("n1", "no-route");
    assert_eq!(from_world(&c, lb, 81, 1), vec![""]);
    assert!(c.node_drops("n1", "no-route") > before);

    // externalTrafficPolicy Local: n1 has no backend (counted drop), n2
    // has b.
    world_route(&c, "198.18.0.11", n1);
    let before = c.node_drops("n1", "nodeport-no-local-endpoint");
    assert_eq!(from_world(&c, lb_local, 80, 2), vec![""; 2]);
    assert!(c.node_drops("n1", "nodeport-no-local-endpoint") > before);
    world_route(&c, "198.18.0.11", n2);
    assert_eq!(from_world(&c, lb_local, 80, 3), vec!["b"; 3]);

    // Without n1's dataplane the address routed to n1 no longer answers.
    let out = c.weir(&["dataplane", "stop", "--node", "n1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(from_world(&c, lb, 80, 2), vec![""; 2]);
}
