//! The uplink on the node agent path (`weir agent --kubeconfig --node` on a
//! node weir did not build; docs/egress.md, "The uplink on real nodes"):
//! a node netns joined to a "world" netns by a veth of the test's own
//! (192.168.79.1/24 ↔ .254, the node's IPv4 default route via .254, a
//! server on the world's 203.0.113.7), a REAL kube-apiserver and
//! kube-controller-manager, one agent. The agent learns the uplink from the
//! node's kernel (default route + the gateway's neighbour entry), and:
//!
//! - a pod reaches the world server, which sees the node's address and a
//!   port of weir's SNAT range as the source (TCP and UDP);
//! - a NodePort Service created with kubectl answers from the world netns
//!   at nodeIP:nodePort with its backend pod's name (TCP and UDP), and
//!   so it does to a pod of the node at the same address;
//! - the node itself (its netns: kubelet, node-local agents) reaches the
//!   Service's ClusterIP through the host port (`weir-host0` routes the
//!   Service range), answered by the backend;
//! - counters move (the uplink's XDP redirects, the host port's), and with
//!   the dataplane stopped all three fail (nothing else on the path owns
//!   the node port, the ClusterIP or the SNAT ports).
//!
//! Needs root, Go (the control plane), curl, ethtool.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use weir_tests::k8s::ControlPlane;
use weir_tests::kubelet::*;
use weir_tests::unique_name;

const NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 79, 1);
const GATEWAY: Ipv4Addr = Ipv4Addr::new(192, 168, 79, 254);
const WORLD: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 7);

fn ip(ns: &str, args: &[&str]) {
    let ok = Command::new("ip")
        .args(["-n", ns])
        .args(args)
        .status()
        .expect("ip")
        .success();
    assert!(ok, "ip -n {ns} {args:?}");
}

/// The node and the world: `ul0` (node, two queues) ↔ `wl0` (world).
fn node_and_world(netns: &mut Netns, node: &str, world: &str) {
    netns.add(node);
    netns.add(world);
    ip(
        node,
        &[
            "link",
            "add",
            "ul0",
            "numtxqueues",
            "2",
            "numrxqueues",
            "2",
            "type",
            "veth",
            "peer",
            "name",
            "wl0",
            "netns",
            world,
        ],
    );
    ip(node, &["addr", "add", "192.168.79.1/24", "dev", "ul0"]);
    ip(world, &["addr", "add", "192.168.79.254/24", "dev", "wl0"]);
    ip(world, &["addr", "add", "203.0.113.7/32", "dev", "lo"]);
    for (ns, dev) in [(node, "ul0"), (world, "wl0")] {
        ip(ns, &["link", "set", dev, "up"]);
        ip(ns, &["link", "set", "lo", "up"]);
    }
    ip(node, &["route", "add", "default", "via", "192.168.79.254"]);
    // The world sends complete checksums, as a host behind a real wire
    // does (a veth would hand partial ones on, which nobody completes in
    // AF_XDP copy mode: docs/datapath.md#checksums; topo's world host does
    // the same).
    let ok = Command::new("ip")
        .args(["netns", "exec", world, "ethtool", "-K", "wl0", "tx", "off"])
        .stdout(std::process::Stdio::null())
        .status()
        .expect("ethtool")
        .success();
    assert!(ok, "ethtool -K wl0 tx off");
}

/// The world's server on 203.0.113.7:8080: answers each TCP connection and
/// UDP datagram with the source it saw (`address:port`).
fn start_world_server(world: &Path) {
    start_server_on(world, SocketAddr::from((WORLD, 8080)));
}

/// [`start_world_server`] on `at`.
fn start_server_on(world: &Path, at: SocketAddr) {
    // An IPv6 address just added may not be bindable at once: a few tries.
    let bind = || {
        for _ in 0..30 {
            if let (Ok(t), Ok(u)) = (TcpListener::bind(at), UdpSocket::bind(at)) {
                return (t, u);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("bind {at}")
    };
    let (tcp, udp) = weir_topo::netns::run_in_path(world, bind).expect("enter the world netns");
    std::thread::spawn(move || {
        for s in tcp.incoming() {
            let Ok(mut s) = s else { continue };
            if let Ok(peer) = s.peer_addr() {
                let _ = writeln!(s, "{peer}");
            }
        }
    });
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((_, from)) = udp.recv_from(&mut buf) {
            let _ = udp.send_to(from.to_string().as_bytes(), from);
        }
    });
}

/// What the world saw as the source of a TCP connection from `from`.
fn tcp_seen(from: &Path, to: SocketAddr) -> Option<SocketAddr> {
    weir_topo::netns::run_in_path(from, || {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        out.trim().parse().ok()
    })
    .ok()
    .flatten()
}

/// One datagram from `from` to `to` (a fresh socket): the answer.
fn udp_answer(from: &Path, to: SocketAddr) -> Option<String> {
    weir_topo::netns::run_in_path(from, || {
        let s = UdpSocket::bind(if to.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" }).ok()?;
        s.set_read_timeout(Some(Duration::from_millis(700))).ok()?;
        let mut buf = [0u8; 512];
        for _ in 0..3 {
            s.send_to(b"who", to).ok()?;
            if let Ok((n, _)) = s.recv_from(&mut buf) {
                return Some(String::from_utf8_lossy(&buf[..n]).to_string());
            }
        }
        None
    })
    .ok()
    .flatten()
}

/// `curl http://addr/` from netns `ns`: the body, or `None`.
fn curl(ns: &str, addr: SocketAddr) -> Option<String> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "curl", "-sS", "--max-time", "2"])
        .arg(format!("http://{addr}/"))
        .output()
        .expect("curl");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).to_string())
}

const SERVICE: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: ku}\n\
spec:\n  type: NodePort\n  selector: {role: backend}\n  ports:\n\
\x20 - {name: http, protocol: TCP, port: 80, targetPort: 8080}\n\
\x20 - {name: dns, protocol: UDP, port: 53, targetPort: 8080}\n";

fn backend_yaml(node: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: s1, namespace: ku, labels: {{role: backend}}}}\n\
spec:\n  nodeName: {node}\n  containers:\n  - name: c\n    image: registry.invalid/none\n\
\x20   ports: [{{containerPort: 8080}}, {{containerPort: 8080, protocol: UDP}}]\n"
    )
}

/// The XDP program's redirects on the port named `name`.
fn port_redirected(node: &NodeUnderTest, f: impl Fn(&serde_json::Value) -> bool) -> u64 {
    node.status()["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|n| {
            n["status"]["dataplane"]["ports"]
                .as_array()
                .into_iter()
                .flatten()
        })
        .filter(|p| f(p))
        .map(|p| p["xdp"]["redirected"].as_u64().unwrap_or(0))
        .sum()
}

fn snapshot(node: &NodeUnderTest) -> serde_json::Value {
    let path: PathBuf = node
        .state
        .join(format!("kube/nodes/{}/snapshot.json", node.name));
    std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(serde_json::Value::Null)
}

fn in_snat_range(a: SocketAddr) -> bool {
    (61000..=65535).contains(&a.port())
}

#[test]
fn node_agent_uplink_snat_node_port_and_host_to_cluster_ip() {
    let cp = ControlPlane::start("kup");
    let tag = unique_name("kup");
    let mut netns = Netns(Vec::new());
    let (node_ns, world_ns) = (format!("wn{tag}"), format!("ww{tag}"));
    node_and_world(&mut netns, &node_ns, &world_ns);
    let world_path = PathBuf::from("/run/netns").join(&world_ns);
    let node_path = PathBuf::from("/run/netns").join(&node_ns);
    start_world_server(&world_path);

    let mut node = node_under_test(&cp, &format!("n-{tag}"), &node_ns, &tag);
    register_node(&cp, &node.name, "10.216.1.0/24", Some("192.168.79.1"));
    node.start_agent_with(&["--non-masquerade", "192.0.2.0/24"]);
    create_namespace(&cp, &node, "ku");

    // The uplink as the agent learnt it from the kernel, in the snapshot.
    wait_until(&node, "an uplink in the snapshot", || {
        snapshot(&node)["uplink"].is_object()
    });
    let snap = snapshot(&node);
    let up = &snap["uplink"];
    assert_eq!(up["gateway_ipv4"], GATEWAY.to_string(), "{up}");
    assert!(
        up["non_masquerade"].to_string().contains("192.0.2.0"),
        "--non-masquerade not compiled: {up}"
    );
    assert!(
        up["cluster_cidrs"].to_string().contains("10.216.1.0"),
        "{up}"
    );
    assert_eq!(snap["tunnel"]["underlay"]["name"], "ul0");
    let st = node.status();
    let note = st["uplink"].as_str().unwrap_or_default().to_string();
    assert!(
        note.starts_with("uplink ul0 via 192.168.79.254 (")
            && note.contains(
                "SNAT to 192.168.79.1; no IPv6 uplink: no IPv6 default route through ul0"
            ),
        "{st}"
    );

    let client = attach(
        &cp,
        &node,
        &mut netns,
        &format!("w{tag}-client"),
        "ku",
        "client",
        &pod_yaml("ku", "client", &node.name),
    );
    write_status(&cp, &client);
    let s1 = attach(
        &cp,
        &node,
        &mut netns,
        &format!("w{tag}-s1"),
        "ku",
        "s1",
        &backend_yaml(&node.name),
    );
    start_name_servers(&s1.netns_path, "s1", 8080);
    write_status(&cp, &s1);

    // 1. Pod → world: the world sees the node's address and a SNAT port.
    let world_tcp = SocketAddr::from((WORLD, 8080));
    let (ul0, rx) = (underlay_redirected(&node), node.rx_packets());
    let mut seen = None;
    for _ in 0..20 {
        seen = tcp_seen(&client.netns_path, world_tcp);
        if seen.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let seen = seen.unwrap_or_else(|| {
        panic!(
            "pod → world (TCP) failed\n{}\n{}",
            node.status(),
            node.log()
        )
    });
    assert_eq!(seen.ip(), NODE_IP, "the world saw {seen}, not the node");
    assert!(
        in_snat_range(seen),
        "source port {seen} not in the SNAT range"
    );
    let u = udp_answer(&client.netns_path, world_tcp).expect("pod → world (UDP)");
    let u: SocketAddr = u.trim().parse().expect("an address");
    assert_eq!(u.ip(), NODE_IP, "UDP: the world saw {u}");
    assert!(
        in_snat_range(u),
        "UDP source port {u} not in the SNAT range"
    );
    assert!(
        underlay_redirected(&node) > ul0,
        "ul0's XDP program redirected no reply to the dataplane"
    );
    assert!(node.rx_packets() > rx, "the dataplane saw no packet");

    // 2. NodePort from the world, answered by the backend pod.
    cp.kubectl_ok(&["apply", "-f", "-"], Some(SERVICE));
    let get = |path: &str| {
        cp.kubectl_ok(
            &[
                "get",
                "service",
                "-n",
                "ku",
                "web",
                "-o",
                &format!("jsonpath={path}"),
            ],
            None,
        )
    };
    let cip: Ipv4Addr = get("{.spec.clusterIP}").trim().parse().expect("ClusterIP");
    let np_tcp: u16 = get("{.spec.ports[0].nodePort}")
        .trim()
        .parse()
        .expect("nodePort");
    let np_udp: u16 = get("{.spec.ports[1].nodePort}")
        .trim()
        .parse()
        .expect("nodePort");
    wait_until(&node, "the Service's ready endpoint compiled", || {
        node.status()["services"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| s["service"] == "ku/web" && s["ready"] == 1)
    });
    let np = SocketAddr::from((NODE_IP, np_tcp));
    let ul0 = underlay_redirected(&node);
    let mut body = None;
    for _ in 0..20 {
        body = curl(&world_ns, np);
        if body.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(
        body.as_deref(),
        Some("s1"),
        "world → {np} (NodePort TCP)\n{}",
        node.log()
    );
    assert_eq!(
        udp_answer(&world_path, SocketAddr::from((NODE_IP, np_udp))).as_deref(),
        Some("s1"),
        "world → {NODE_IP}:{np_udp} (NodePort UDP)"
    );
    assert!(
        underlay_redirected(&node) > ul0,
        "ul0's XDP program redirected no node-port frame"
    );

    // The client pod reaches the node port at its own node's address
    // (kube-proxy's "hairpin to node IP"): the Service's backend answers.
    assert_eq!(
        curl(&format!("w{tag}-client"), np).as_deref(),
        Some("s1"),
        "pod → its node's {np} (NodePort)"
    );

    // 3. The node itself → the ClusterIP, through weir-host0/1.
    let host1 = |p: &serde_json::Value| p["name"] == "weir-host1";
    let h = port_redirected(&node, host1);
    assert_eq!(
        curl(&node_ns, SocketAddr::from((cip, 80))).as_deref(),
        Some("s1"),
        "node → ClusterIP {cip}:80 (TCP)\n{}",
        node.log()
    );
    assert_eq!(
        udp_answer(&node_path, SocketAddr::from((cip, 53))).as_deref(),
        Some("s1"),
        "node → ClusterIP {cip}:53 (UDP)"
    );
    assert!(
        port_redirected(&node, host1) > h,
        "weir-host1's XDP program redirected nothing: the node's request did not cross weir"
    );

    // 4. The dataplane stopped (the agent first, or it would start it
    //    again): nothing answers any more.
    node.kill_agent();
    let pid = std::fs::read_to_string(
        node.state
            .join(format!("kube/nodes/{}/dataplane.pid", node.name)),
    )
    .expect("dataplane.pid");
    assert!(Command::new("kill")
        .arg(pid.trim())
        .status()
        .expect("kill")
        .success());
    let pid_path = format!("/proc/{}", pid.trim());
    for _ in 0..50 {
        if !Path::new(&pid_path).exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!Path::new(&pid_path).exists(), "the dataplane did not stop");
    assert_eq!(
        tcp_seen(&client.netns_path, world_tcp),
        None,
        "pod → world without the dataplane"
    );
    assert_eq!(curl(&world_ns, np), None, "node port without the dataplane");
    assert_eq!(
        curl(&node_ns, SocketAddr::from((cip, 80))),
        None,
        "node → ClusterIP without the dataplane"
    );
    drop(node);
    drop(netns);
}

/// Bad flags are one line and exit 1, before anything starts:
/// `--non-masquerade` with the unspecified address as a host route,
/// `--uplink` that is no interface name. (IPv6 CIDRs are accepted:
/// `node_agent_ipv6_uplink`.)
#[test]
fn node_agent_uplink_flags() {
    let out = Command::new(weir_tests::weir_bin())
        .args([
            "agent",
            "--kubeconfig",
            "/nonexistent",
            "--node",
            "x",
            "--non-masquerade",
            "::/128",
        ])
        .output()
        .expect("weir agent");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--non-masquerade ::/128: the unspecified address is no destination"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    let out = Command::new(weir_tests::weir_bin())
        .args(["agent", "--node", "x", "--uplink", "a/b"])
        .output()
        .expect("weir agent");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not an interface name"), "{err}");
}

const NODE6: &str = "2001:db8:79::1";
const WORLD6: &str = "2001:db8:113::7";
/// A world address reached without SNAT66 (`--non-masquerade`).
const DIRECT6: &str = "2001:db8:2::9";

/// The pod's global IPv6 address (the CNI result's second address).
fn pod_ipv6(netns: &str) -> std::net::Ipv6Addr {
    let out = Command::new("ip")
        .args(["-n", netns, "-j", "-6", "addr", "show", "scope", "global"])
        .output()
        .expect("ip addr");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ip -j");
    v.as_array()
        .into_iter()
        .flatten()
        .flat_map(|l| l["addr_info"].as_array().into_iter().flatten())
        .find_map(|a| a["local"].as_str()?.parse().ok())
        .unwrap_or_else(|| panic!("no global IPv6 address in {netns}: {v}"))
}

/// The IPv6 uplink of a node agent: a dual-stack node (IPv4 and IPv6
/// podCIDRs) whose uplink `ul0` also carries 2001:db8:79::1/64, the world
/// at fe80::fe / 2001:db8:79::fe with servers on 2001:db8:113::7 and
/// 2001:db8:2::9 (both on its `lo`).
///
/// 1. No IPv6 default route yet: the status says so, and a pod's packet
///    to the IPv6 world is a counted `no-route`.
/// 2. `ip -6 route add default via fe80::fe dev ul0` (a link-local gateway,
///    as routers announce): the agent follows (status, snapshot: SNAT66 on
///    the node's global address, the gateway's MAC), the pod reaches the
///    world server, which sees 2001:db8:79::1 and a SNAT port (TCP and UDP);
///    ul0's XDP program redirected the replies.
/// 3. `--non-masquerade 2001:db8:2::/64`: that server sees the pod's own
///    IPv6 address.
/// 4. A dual-stack NodePort Service (kubectl, `RequireDualStack`) answers
///    from the world at [2001:db8:79::1]:nodePort with its backend pod's
///    name (TCP and UDP).
/// 5. With the dataplane stopped, pod → IPv6 world and the IPv6 node port
///    fail.
#[test]
fn node_agent_ipv6_uplink() {
    let cp = ControlPlane::start("kup6");
    let tag = unique_name("kup6");
    let mut netns = Netns(Vec::new());
    let (node_ns, world_ns) = (format!("wn{tag}"), format!("ww{tag}"));
    node_and_world(&mut netns, &node_ns, &world_ns);
    ip(
        &node_ns,
        &["addr", "add", "2001:db8:79::1/64", "dev", "ul0", "nodad"],
    );
    for a in ["2001:db8:79::fe/64", "fe80::fe/64"] {
        ip(&world_ns, &["addr", "add", a, "dev", "wl0", "nodad"]);
    }
    for a in [WORLD6, DIRECT6] {
        ip(
            &world_ns,
            &["addr", "add", &format!("{a}/128"), "dev", "lo", "nodad"],
        );
    }
    let world_path = PathBuf::from("/run/netns").join(&world_ns);
    start_server_on(&world_path, format!("[{WORLD6}]:8080").parse().unwrap());
    start_server_on(&world_path, format!("[{DIRECT6}]:8080").parse().unwrap());

    let mut node = node_under_test(&cp, &format!("n-{tag}"), &node_ns, &tag);
    cp.kubectl_ok(
        &["apply", "-f", "-"],
        Some(&format!(
            "apiVersion: v1\nkind: Node\nmetadata: {{name: {}, annotations: {{weir.dev/underlay-ip: {NODE_IP}}}}}\n\
spec: {{podCIDR: 10.216.2.0/24, podCIDRs: [10.216.2.0/24, 'fd00:10:216:2::/64']}}\n",
            node.name
        )),
    );
    node.start_agent_with(&["--non-masquerade", "2001:db8:2::/64"]);
    create_namespace(&cp, &node, "ku");
    // The world routes the pod range to the node (the non-masqueraded
    // flow's replies), as a real network's router would.
    ip(
        &world_ns,
        &["-6", "route", "add", "fd00:10:216:2::/64", "via", NODE6],
    );

    // 1. No IPv6 default route: said, and the IPv6 world is no-route.
    wait_until(&node, "an uplink in the snapshot", || {
        snapshot(&node)["uplink"].is_object()
    });
    let note = node.status()["uplink"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        note.ends_with("; no IPv6 uplink: no IPv6 default route through ul0"),
        "{note}"
    );
    assert!(snapshot(&node)["uplink"]["node_ipv6"].is_null());
    let client = attach(
        &cp,
        &node,
        &mut netns,
        &format!("w{tag}-client"),
        "ku",
        "client",
        &pod_yaml("ku", "client", &node.name),
    );
    write_status(&cp, &client);
    let pod6 = pod_ipv6(&format!("w{tag}-client"));
    let world_tcp: SocketAddr = format!("[{WORLD6}]:8080").parse().unwrap();
    let no_route = node.drops("no-route");
    assert_eq!(
        tcp_seen(&client.netns_path, world_tcp),
        None,
        "IPv6 world reached without an IPv6 uplink"
    );
    assert!(
        node.drops("no-route") > no_route,
        "pod → IPv6 world without an IPv6 uplink: no counted no-route"
    );

    // 2. The IPv6 default route: the agent follows, SNAT66 on the node's
    //    global address.
    ip(
        &node_ns,
        &[
            "-6", "route", "add", "default", "via", "fe80::fe", "dev", "ul0",
        ],
    );
    wait_until(&node, "the IPv6 uplink in the snapshot", || {
        snapshot(&node)["uplink"]["node_ipv6"] == NODE6
    });
    let snap = snapshot(&node);
    assert_eq!(snap["uplink"]["gateway_ipv6"], "fe80::fe", "{snap}");
    assert!(snap["uplink"]["gateway_mac_v6"].is_array(), "{snap}");
    let note = node.status()["uplink"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        note.contains("; IPv6 via fe80::fe (") && note.ends_with(&format!("SNAT66 to {NODE6}")),
        "{note}"
    );
    let (ul0, rx) = (underlay_redirected(&node), node.rx_packets());
    let mut seen = None;
    for _ in 0..20 {
        seen = tcp_seen(&client.netns_path, world_tcp);
        if seen.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let seen = seen.unwrap_or_else(|| {
        panic!(
            "pod → IPv6 world (TCP) failed\n{}\n{}",
            node.status(),
            node.log()
        )
    });
    assert_eq!(
        seen.ip().to_string(),
        NODE6,
        "the world saw {seen}, not the node"
    );
    assert!(
        in_snat_range(seen),
        "source port {seen} not in the SNAT range"
    );
    let u = udp_answer(&client.netns_path, world_tcp).expect("pod → IPv6 world (UDP)");
    let u: SocketAddr = u.trim().parse().expect("an address");
    assert_eq!(u.ip().to_string(), NODE6, "UDP: the world saw {u}");
    assert!(
        in_snat_range(u),
        "UDP source port {u} not in the SNAT range"
    );
    assert!(
        underlay_redirected(&node) > ul0,
        "ul0's XDP program redirected no IPv6 reply to the dataplane"
    );
    assert!(node.rx_packets() > rx, "the dataplane saw no packet");

    // 3. A non-masqueraded IPv6 destination sees the pod's address.
    let direct: SocketAddr = format!("[{DIRECT6}]:8080").parse().unwrap();
    let seen = tcp_seen(&client.netns_path, direct)
        .unwrap_or_else(|| panic!("pod → {direct} (not masqueraded) failed\n{}", node.log()));
    assert_eq!(
        seen.ip(),
        std::net::IpAddr::V6(pod6),
        "not the pod's address"
    );

    // 4. A dual-stack NodePort Service: the world reaches it at the
    //    node's IPv6 address, answered by the backend pod (TCP and UDP).
    let s1 = attach(
        &cp,
        &node,
        &mut netns,
        &format!("w{tag}-s1"),
        "ku",
        "s1",
        &backend_yaml(&node.name),
    );
    start_name_servers(&s1.netns_path, "s1", 8080);
    let s1_6 = pod_ipv6(&format!("w{tag}-s1"));
    start_name_servers_on(&s1.netns_path, "s1", SocketAddr::from((s1_6, 8080)));
    // The kubelet's status with both addresses (the IPv6 EndpointSlice is
    // made from the second).
    let (v4, v6) = (s1.ip.expect("an address").to_string(), s1_6.to_string());
    let patch = serde_json::json!({"status": {"phase": "Running", "podIP": v4,
        "podIPs": [{"ip": v4}, {"ip": v6}],
        "conditions": [{"type": "Ready", "status": "True"}, {"type": "ContainersReady", "status": "True"}]}});
    cp.kubectl_ok(
        &[
            "patch",
            "pod",
            "-n",
            "ku",
            "s1",
            "--subresource=status",
            "--type=merge",
            "-p",
            &patch.to_string(),
        ],
        None,
    );
    cp.kubectl_ok(
        &["apply", "-f", "-"],
        Some(&SERVICE.replace(
            "  type: NodePort\n",
            "  type: NodePort\n  ipFamilyPolicy: RequireDualStack\n",
        )),
    );
    let get = |path: &str| {
        cp.kubectl_ok(
            &[
                "get",
                "service",
                "-n",
                "ku",
                "web",
                "-o",
                &format!("jsonpath={path}"),
            ],
            None,
        )
    };
    let np_tcp: u16 = get("{.spec.ports[0].nodePort}")
        .trim()
        .parse()
        .expect("nodePort");
    let np_udp: u16 = get("{.spec.ports[1].nodePort}")
        .trim()
        .parse()
        .expect("nodePort");
    wait_until(&node, "the Service's ready endpoints compiled", || {
        node.status()["services"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| s["service"] == "ku/web" && s["ready"].as_u64() >= Some(1))
    });
    let np6: SocketAddr = format!("[{NODE6}]:{np_tcp}").parse().unwrap();
    let ul0 = underlay_redirected(&node);
    let mut body = None;
    for _ in 0..20 {
        body = curl(&world_ns, np6);
        if body.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(
        body.as_deref(),
        Some("s1"),
        "world → {np6} (IPv6 NodePort TCP)\n{}\n{}",
        snapshot(&node)["services"],
        node.log()
    );
    let np6_udp: SocketAddr = format!("[{NODE6}]:{np_udp}").parse().unwrap();
    assert_eq!(
        udp_answer(&world_path, np6_udp).as_deref(),
        Some("s1"),
        "world → {np6_udp} (IPv6 NodePort UDP)"
    );
    assert!(
        underlay_redirected(&node) > ul0,
        "ul0's XDP program redirected no IPv6 node-port frame"
    );

    // 5. The dataplane stopped (the agent first): no way out any more.
    node.kill_agent();
    let pid = std::fs::read_to_string(
        node.state
            .join(format!("kube/nodes/{}/dataplane.pid", node.name)),
    )
    .expect("dataplane.pid");
    assert!(Command::new("kill")
        .arg(pid.trim())
        .status()
        .expect("kill")
        .success());
    let pid_path = format!("/proc/{}", pid.trim());
    for _ in 0..50 {
        if !Path::new(&pid_path).exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!Path::new(&pid_path).exists(), "the dataplane did not stop");
    assert_eq!(
        tcp_seen(&client.netns_path, world_tcp),
        None,
        "pod → IPv6 world without the dataplane"
    );
    assert_eq!(
        curl(&world_ns, np6),
        None,
        "IPv6 node port without the dataplane"
    );
    drop(node);
    drop(netns);
}
