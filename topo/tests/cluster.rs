//! Real namespaces (needs root): wiring, servers, teardown, rollback,
//! remove/add. Every test uses its own cluster name and a teardown guard.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use weir_topo::manifest::parse_str;
use weir_topo::serve::PodServers;
use weir_topo::{
    netns, pod_exec, teardown_by_name, BuildOptions, Cluster, TeardownGuard, TopoError,
};

static N: AtomicUsize = AtomicUsize::new(0);

fn unique() -> (String, TeardownGuard) {
    let name = format!(
        "tt{}{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    );
    let guard = TeardownGuard::new(&name);
    (name, guard)
}

const THREE_PODS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: web}
---
apiVersion: v1
kind: Pod
metadata: {name: a, labels: {app: a}}
spec:
  containers:
  - name: c
    ports: [{containerPort: 8080}, {containerPort: 5353, protocol: UDP}, {containerPort: 9, protocol: SCTP}]
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: web}
spec: {containers: [{name: c, ports: [{containerPort: 80}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: c}
"#;

fn sh(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run command");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn in_ns(netns: &str, argv: &[&str]) -> String {
    sh(Command::new("ip").args(["netns", "exec", netns]).args(argv))
}

#[test]
fn build_wires_as_specified() {
    let (name, _guard) = unique();
    let spec = parse_str(THREE_PODS, "three.yaml").unwrap();
    let opts = BuildOptions {
        queues: 3,
        mtu: 1400,
        ..Default::default()
    };
    let cluster = Cluster::build(&name, &spec, &opts).unwrap();

    let node = &cluster.nodes[0];
    assert_eq!(node.netns, format!("weir-{name}-node-1"));
    assert_eq!(node.ipv4, Some("10.244.0.1".parse().unwrap()));
    assert_eq!(node.ipv6, Some("fd00:10:244::1".parse().unwrap()));
    let listed = sh(Command::new("ip").args(["netns", "list"]));
    assert!(listed.contains(&node.netns), "{listed}");

    let lo = in_ns(&node.netns, &["ip", "addr", "show", "dev", "lo"]);
    for want in [
        "169.254.1.1/32",
        "10.244.0.1/32",
        "fd00:10:244::1/128",
        "UP",
    ] {
        assert!(lo.contains(want), "node lo lacks {want}:\n{lo}");
    }
    assert_eq!(
        in_ns(&node.netns, &["sysctl", "-n", "net.ipv4.ip_forward"]).trim(),
        "0"
    );
    assert_eq!(
        in_ns(
            &node.netns,
            &["sysctl", "-n", "net.ipv6.conf.all.forwarding"]
        )
        .trim(),
        "0"
    );
    // No route to a pod but the pod CIDR through the host port (weir's
    // dataplane behind it: docs/datapath.md, "The host port").
    let routes = in_ns(&node.netns, &["ip", "route", "show"]);
    // (The Service range's route through the host port names the node's
    // `.1` as its source: not a route to pods.)
    let pod_routes: Vec<&str> = routes
        .lines()
        .filter(|l| l.starts_with("10.244.0."))
        .collect();
    assert_eq!(
        pod_routes,
        ["10.244.0.0/24 via 169.254.1.2 dev weir-host0 src 10.244.0.1 onlink "],
        "node routes:\n{routes}"
    );
    // The Service range goes to the dataplane too (the node reaches ClusterIPs).
    assert!(
        routes.contains("10.96.0.0/16 via 169.254.1.2 dev weir-host0"),
        "node routes:\n{routes}"
    );
    let routes6 = in_ns(&node.netns, &["ip", "-6", "route", "show"]);
    assert!(
        routes6.contains("fd00:10:244::/64 via fe80::2 dev weir-host0 src fd00:10:244::1"),
        "node routes:\n{routes6}"
    );

    let a = cluster.pod("default", "a").unwrap();
    let b = cluster.pod("web", "b").unwrap();
    let c = cluster.pod("default", "c").unwrap();
    assert_eq!(a.netns, format!("weir-{name}-default-a"));
    assert_eq!(b.netns, format!("weir-{name}-web-b"));
    assert_eq!(a.ipv4, Some("10.244.0.2".parse().unwrap()));
    assert_eq!(b.ipv4, Some("10.244.0.3".parse().unwrap()));
    assert_eq!(c.ipv6, Some("fd00:10:244::4".parse().unwrap()));
    assert_eq!(a.pod_mac, [0x02, 0, 10, 244, 0, 2]);
    assert_eq!(a.host_mac, [0x06, 0, 10, 244, 0, 2]);
    assert!(a.host_ifname.starts_with("wv") && a.host_ifname.len() == 10);

    for pod in [a, b, c] {
        let host = in_ns(
            &node.netns,
            &["ip", "-d", "addr", "show", "dev", &pod.host_ifname],
        );
        for want in [
            "mtu 1400",
            "fe80::1/64",
            "numtxqueues 3",
            "numrxqueues 3",
            "06:00:0a:f4:00:0",
        ] {
            assert!(
                host.contains(want),
                "{} lacks {want}:\n{host}",
                pod.host_ifname
            );
        }
        assert!(
            host.contains("state UP") || host.contains("LOWER_UP"),
            "{host}"
        );
        let eth0 = in_ns(&pod.netns, &["ip", "-d", "addr", "show", "dev", "eth0"]);
        let v4 = format!("{}/32", pod.ipv4.unwrap());
        let v6 = format!("{}/128", pod.ipv6.unwrap());
        for want in [
            v4.as_str(),
            v6.as_str(),
            "mtu 1400",
            "numtxqueues 3",
            "numrxqueues 3",
            "02:00:0a:f4:00:0",
            "LOWER_UP",
        ] {
            assert!(
                eth0.contains(want),
                "{} eth0 lacks {want}:\n{eth0}",
                pod.name
            );
        }
        assert!(!eth0.contains("tentative"), "{eth0}");
        let r4 = in_ns(&pod.netns, &["ip", "-4", "route", "show"]);
        assert!(r4.contains("default via 169.254.1.1 dev eth0"), "{r4}");
        assert!(r4.contains("169.254.1.1 dev eth0 scope link"), "{r4}");
        let r6 = in_ns(&pod.netns, &["ip", "-6", "route", "show"]);
        assert!(r6.contains("default via fe80::1 dev eth0"), "{r6}");
        assert_eq!(
            in_ns(
                &pod.netns,
                &["sysctl", "-n", "net.ipv6.conf.eth0.accept_dad"]
            )
            .trim(),
            "0"
        );
        let k = sh(&mut pod_exec(pod, &["ethtool", "-k", "eth0"]));
        assert!(k.contains("tx-checksumming: off"), "{k}");
        let lo = in_ns(&pod.netns, &["ip", "link", "show", "lo"]);
        assert!(lo.contains("UP"), "{lo}");
    }

    // The state round-trips through JSON.
    let path = std::env::temp_dir().join(format!("{name}.json"));
    cluster.save(&path).unwrap();
    assert_eq!(Cluster::load(&path).unwrap(), cluster);
    std::fs::remove_file(&path).unwrap();

    cluster.teardown().unwrap();
    assert!(netns::list_with_prefix(&format!("weir-{name}-")).is_empty());
}

#[test]
fn servers_answer_in_own_netns() {
    let (name, _guard) = unique();
    let spec = parse_str(THREE_PODS, "three.yaml").unwrap();
    let cluster = Cluster::build(&name, &spec, &BuildOptions::default()).unwrap();
    let a = cluster.pod("default", "a").unwrap().clone();
    let servers = PodServers::start(&a).unwrap();

    let addrs = [IpAddr::V4(a.ipv4.unwrap()), IpAddr::V6(a.ipv6.unwrap())];
    let got = netns::run_in(&a.netns, || {
        let mut answers = Vec::new();
        for ip in addrs {
            // TCP, reading only.
            let mut s =
                TcpStream::connect_timeout(&SocketAddr::new(ip, 8080), Duration::from_secs(5))
                    .unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut buf = String::new();
            s.read_to_string(&mut buf).unwrap();
            answers.push(buf);
            // TCP, client sends first.
            let mut s =
                TcpStream::connect_timeout(&SocketAddr::new(ip, 8080), Duration::from_secs(5))
                    .unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
            let mut buf = String::new();
            s.read_to_string(&mut buf).unwrap();
            answers.push(buf);
            // UDP.
            let bind: SocketAddr = if ip.is_ipv4() {
                "0.0.0.0:0".parse().unwrap()
            } else {
                "[::]:0".parse().unwrap()
            };
            let u = UdpSocket::bind(bind).unwrap();
            u.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            u.send_to(b"hi", SocketAddr::new(ip, 5353)).unwrap();
            let mut buf = [0u8; 64];
            let (n, _) = u.recv_from(&mut buf).unwrap();
            answers.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        answers
    })
    .unwrap();
    assert_eq!(got, vec!["a\n"; 6]);

    // Stopping closes the ports promptly.
    drop(servers);
    let refused = netns::run_in(&a.netns, || {
        TcpStream::connect_timeout(&SocketAddr::new(addrs[0], 8080), Duration::from_secs(2))
            .is_err()
    })
    .unwrap();
    assert!(refused);
    cluster.teardown().unwrap();
}

#[test]
fn failed_build_leaves_nothing() {
    let (name, _guard) = unique();
    let prefix = format!("weir-{name}-");
    let spec = parse_str(THREE_PODS, "three.yaml").unwrap();

    // Midway: node and first two pods built, then the third fails.
    weir_topo::testing::fail_build_at_pod(Some(2));
    let err = Cluster::build(&name, &spec, &BuildOptions::default()).unwrap_err();
    weir_topo::testing::fail_build_at_pod(None);
    assert!(err.to_string().starts_with("pods/default/c: "), "{err}");
    assert!(
        netns::list_with_prefix(&prefix).is_empty(),
        "{:?}",
        netns::list_with_prefix(&prefix)
    );

    // A duplicate pod injected into the spec: nothing is built at all.
    let mut dup = spec.clone();
    dup.pods.push(dup.pods[1].clone());
    let err = Cluster::build(&name, &dup, &BuildOptions::default()).unwrap_err();
    assert_eq!(err.to_string(), "pods/web/b: defined more than once");
    assert!(netns::list_with_prefix(&prefix).is_empty());

    // A netns in the way: refused up front, and the foreign one is kept.
    let squatter = format!("{prefix}web-b");
    netns::create(&squatter).unwrap();
    let err = Cluster::build(&name, &spec, &BuildOptions::default()).unwrap_err();
    assert!(matches!(err, TopoError::NetnsExists { .. }), "{err}");
    assert_eq!(netns::list_with_prefix(&prefix), vec![squatter.clone()]);
    teardown_by_name(&name).unwrap();
    assert!(!netns::exists(&squatter));
}

#[test]
fn remove_and_add_pod() {
    let (name, _guard) = unique();
    let spec = parse_str(THREE_PODS, "three.yaml").unwrap();
    let opts = BuildOptions::default();
    let mut cluster = Cluster::build(&name, &spec, &opts).unwrap();
    let node_ns = cluster.nodes[0].netns.clone();
    let b = cluster.pod("web", "b").unwrap().clone();

    cluster.remove_pod("web", "b").unwrap();
    assert!(cluster.pod("web", "b").is_none());
    assert!(!netns::exists(&b.netns));
    let links = in_ns(&node_ns, &["ip", "link", "show"]);
    assert!(!links.contains(&b.host_ifname), "{links}");
    assert!(matches!(
        cluster.remove_pod("web", "b"),
        Err(TopoError::UnknownPod { .. })
    ));

    // Same pod again at once: same names, the freed address.
    let spec_b = spec.pods.iter().find(|p| p.name == "b").unwrap();
    let again = cluster.add_pod(spec_b, &opts).unwrap().clone();
    assert_eq!(again, b);
    let eth0 = in_ns(&again.netns, &["ip", "addr", "show", "dev", "eth0"]);
    assert!(eth0.contains("10.244.0.3/32"), "{eth0}");

    // A new pod takes the next free slot; bad ones are refused with no trace.
    let mut d = spec_b.clone();
    d.name = "d".into();
    d.namespace = "default".into();
    let d = cluster.add_pod(&d, &opts).unwrap().clone();
    assert_eq!(d.ipv4, Some("10.244.0.5".parse().unwrap()));
    let err = cluster.add_pod(spec_b, &opts).unwrap_err();
    assert_eq!(err.to_string(), "pods/web/b: defined more than once");
    let mut e = spec_b.clone();
    e.namespace = "nope".into();
    assert!(cluster
        .add_pod(&e, &opts)
        .unwrap_err()
        .to_string()
        .contains("namespace \"nope\" is not declared"));
    assert_eq!(cluster.pods.len(), 4);
    // node, underlay, world, 4 pods
    assert_eq!(netns::list_with_prefix(&format!("weir-{name}-")).len(), 7);

    // teardown_by_name works without the state.
    teardown_by_name(&name).unwrap();
    assert!(netns::list_with_prefix(&format!("weir-{name}-")).is_empty());
}

#[test]
fn cluster_names_and_options() {
    let spec = parse_str("", "empty").unwrap();
    for bad in ["", "a-b", "Abc", "abcdefghijklmnopq"] {
        let err = Cluster::build(bad, &spec, &BuildOptions::default()).unwrap_err();
        assert!(matches!(err, TopoError::ClusterName { .. }), "{bad}: {err}");
    }
    let err = Cluster::build(
        "x",
        &spec,
        &BuildOptions {
            queues: 0,
            ..Default::default()
        },
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "build options: queues: 0 is out of range 1-64"
    );
}

#[test]
fn netns_name_collisions_are_refused() {
    let (name, _guard) = unique();
    let text = "apiVersion: v1\nkind: Node\nmetadata: {name: default-a}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: a}\n";
    let spec = parse_str(text, "c.yaml").unwrap();
    let err = Cluster::build(&name, &spec, &BuildOptions::default()).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("pods/default/a: netns name weir-{name}-default-a is also that of nodes/default-a; rename one")
    );
    assert!(netns::list_with_prefix(&format!("weir-{name}-")).is_empty());
}
