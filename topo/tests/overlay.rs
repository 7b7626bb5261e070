//! Multi-node clusters (needs root): the underlay, deterministic addresses
//! and MACs, the encapsulation's MTU budget, kernel-dataplane nodes wired
//! like flannel's vxlan backend, and real pod-to-pod traffic across two
//! kernel nodes. Every test uses its own cluster name and a teardown guard.

use std::io::Read;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use weir_topo::manifest::parse_str;
use weir_topo::serve::PodServers;
use weir_topo::{
    netns, teardown_by_name, BuildOptions, Cluster, Encap, NodeDataplane, TeardownGuard,
};

static N: AtomicUsize = AtomicUsize::new(0);

fn unique() -> (String, TeardownGuard) {
    let name = format!(
        "to{}{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    );
    let guard = TeardownGuard::new(&name);
    (name, guard)
}

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().expect("run command");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn in_ns(netns: &str, argv: &[&str]) -> String {
    let (ok, text) = run(Command::new("ip").args(["netns", "exec", netns]).args(argv));
    assert!(ok, "{netns}: {argv:?}: {text}");
    text
}

fn ping(netns: &str, dst: &str) -> (bool, String) {
    run(Command::new("ip").args([
        "netns", "exec", netns, "ping", "-c", "2", "-i", "0.2", "-W", "2", dst,
    ]))
}

/// Two weir nodes (a: no InternalIP; b: allocated) and one kernel node.
const THREE_NODES: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: a}
spec: {podCIDRs: [10.244.0.0/24, "fd00:10:244::/64"]}
---
apiVersion: v1
kind: Node
metadata: {name: b, annotations: {weir.dev/dataplane: weir}}
spec: {podCIDRs: [10.244.1.0/24, "fd00:10:244:1::/64"]}
---
apiVersion: v1
kind: Node
metadata: {name: k, annotations: {weir.dev/dataplane: kernel}}
spec: {podCIDRs: [10.244.2.0/24, "fd00:10:244:2::/64"]}
---
apiVersion: v1
kind: Pod
metadata: {name: pa}
spec: {nodeName: a}
---
apiVersion: v1
kind: Pod
metadata: {name: pk}
spec: {nodeName: k}
"#;

#[test]
fn underlay_and_kernel_node_wiring() {
    let (name, _guard) = unique();
    let spec = parse_str(THREE_NODES, "three.yaml").unwrap();
    let mut cluster = Cluster::build(&name, &spec, &BuildOptions::default()).unwrap();

    assert_eq!(cluster.encap, Encap::Vxlan);
    assert_eq!(cluster.vni, 1);
    assert_eq!(cluster.pod_mtu, 1450);
    assert_eq!(cluster.underlay_mtu, 1500);
    let ul_ns = format!("weir-{name}-underlay");
    assert_eq!(cluster.underlay_netns.as_deref(), Some(ul_ns.as_str()));

    // Deterministic addresses and MACs, in node order.
    let dataplanes: Vec<_> = cluster.nodes.iter().map(|n| n.dataplane).collect();
    assert_eq!(
        dataplanes,
        [
            NodeDataplane::Weir,
            NodeDataplane::Weir,
            NodeDataplane::Kernel
        ]
    );
    for (i, node) in cluster.nodes.iter().enumerate() {
        let ul = node.underlay.as_ref().unwrap();
        let last = i as u8 + 1;
        assert_eq!(ul.ifname, "ul0");
        assert_eq!(ul.ipv4, std::net::Ipv4Addr::new(172, 30, 0, last));
        assert_eq!(ul.prefix_len, 24);
        assert_eq!(ul.mac, [0x0a, 0, 172, 30, 0, last]);
        assert_eq!(node.vtep_mac, [0x0e, 0, 172, 30, 0, last]);
        assert!(ul.peer_ifname.starts_with("ul-") && ul.peer_ifname.len() == 11);
        let link = in_ns(&node.netns, &["ip", "-d", "addr", "show", "dev", "ul0"]);
        let addr = format!("172.30.0.{last}/24");
        let mac = format!("0a:00:ac:1e:00:{last:02x}");
        for want in [addr.as_str(), mac.as_str(), "mtu 1500", "LOWER_UP"] {
            assert!(
                link.contains(want),
                "{}: ul0 lacks {want}:\n{link}",
                node.name
            );
        }
        let port = in_ns(
            &ul_ns,
            &["ip", "-d", "link", "show", "dev", &ul.peer_ifname],
        );
        assert!(port.contains("master br0"), "{port}");
        assert!(port.contains("mtu 1500"), "{port}");
    }
    let br = in_ns(&ul_ns, &["ip", "-d", "link", "show", "dev", "br0"]);
    assert!(br.contains("state UP") || br.contains("LOWER_UP"), "{br}");
    // The underlay is a switch: no bridge netfilter in its netns (where the
    // kernel has br_netfilter), the host's own switch left as it was.
    let host = std::fs::read_to_string("/proc/sys/net/bridge/bridge-nf-call-iptables").ok();
    if host.is_some() {
        for key in ["iptables", "ip6tables", "arptables"] {
            let k = format!("net.bridge.bridge-nf-call-{key}");
            assert_eq!(in_ns(&ul_ns, &["sysctl", "-n", &k]).trim(), "0", "{k}");
        }
        let after = std::fs::read_to_string("/proc/sys/net/bridge/bridge-nf-call-iptables").ok();
        assert_eq!(after, host, "the host's bridge-nf-call-iptables changed");
    }

    // Nodes reach each other over the underlay (ARP by the kernel on ul0).
    for (from, to) in [(0, 1), (1, 2), (2, 0)] {
        let dst = cluster.nodes[to]
            .underlay
            .as_ref()
            .unwrap()
            .ipv4
            .to_string();
        let (ok, out) = ping(&cluster.nodes[from].netns, &dst);
        assert!(ok, "{} -> {dst}: {out}", cluster.nodes[from].name);
    }

    // Weir nodes: no forwarding, no vxlan0, no pod routes.
    let a = &cluster.nodes[0];
    assert_eq!(
        in_ns(&a.netns, &["sysctl", "-n", "net.ipv4.ip_forward"]).trim(),
        "0"
    );
    let links = in_ns(&a.netns, &["ip", "link", "show"]);
    assert!(!links.contains("vxlan0"), "{links}");
    // weir nodes have a host port, kernel nodes none.
    assert!(
        links.contains("weir-host0") && links.contains("weir-host1"),
        "{links}"
    );
    assert!(a.host_port && !cluster.nodes[2].host_port);
    let k_links = in_ns(&cluster.nodes[2].netns, &["ip", "link", "show"]);
    assert!(!k_links.contains("weir-host"), "{k_links}");

    // The kernel node: forwarding, vxlan0 as specified, fdb/neigh/routes.
    let k = cluster.nodes[2].clone();
    assert_eq!(
        in_ns(&k.netns, &["sysctl", "-n", "net.ipv4.ip_forward"]).trim(),
        "1"
    );
    assert_eq!(
        in_ns(&k.netns, &["sysctl", "-n", "net.ipv6.conf.all.forwarding"]).trim(),
        "1"
    );
    let vx = in_ns(&k.netns, &["ip", "-d", "addr", "show", "dev", "vxlan0"]);
    for want in [
        "vxlan id 1 ",
        "local 172.30.0.3",
        "dev ul0",
        "dstport 4789",
        "nolearning",
        "mtu 1450",
        "0e:00:ac:1e:00:03",
        "10.244.2.0/32",
    ] {
        assert!(vx.contains(want), "vxlan0 lacks {want:?}:\n{vx}");
    }
    let fdb = in_ns(&k.netns, &["bridge", "fdb", "show", "dev", "vxlan0"]);
    for want in [
        "0e:00:ac:1e:00:01 dst 172.30.0.1 self permanent",
        "0e:00:ac:1e:00:02 dst 172.30.0.2 self permanent",
    ] {
        assert!(fdb.contains(want), "fdb lacks {want:?}:\n{fdb}");
    }
    let neigh = in_ns(&k.netns, &["ip", "neigh", "show", "dev", "vxlan0"]);
    for want in [
        "10.244.0.0 lladdr 0e:00:ac:1e:00:01 PERMANENT",
        "10.244.1.0 lladdr 0e:00:ac:1e:00:02 PERMANENT",
        "fd00:10:244:: lladdr 0e:00:ac:1e:00:01 PERMANENT",
        "fd00:10:244:1:: lladdr 0e:00:ac:1e:00:02 PERMANENT",
    ] {
        assert!(neigh.contains(want), "neigh lacks {want:?}:\n{neigh}");
    }
    let r4 = in_ns(&k.netns, &["ip", "-4", "route", "show"]);
    let pk = cluster.pod("default", "pk").unwrap().clone();
    let pk_route = format!("10.244.2.2 dev {} ", pk.host_ifname);
    for want in [
        "10.244.0.0/24 via 10.244.0.0 dev vxlan0 onlink",
        "10.244.1.0/24 via 10.244.1.0 dev vxlan0 onlink",
        pk_route.as_str(),
    ] {
        assert!(r4.contains(want), "routes lack {want:?}:\n{r4}");
    }
    let r6 = in_ns(&k.netns, &["ip", "-6", "route", "show"]);
    let pk_route6 = format!("fd00:10:244:2::2 dev {} ", pk.host_ifname);
    for want in [
        "fd00:10:244::/64 via fd00:10:244:: dev vxlan0",
        "fd00:10:244:1::/64 via fd00:10:244:1:: dev vxlan0",
        pk_route6.as_str(),
    ] {
        assert!(r6.contains(want), "v6 routes lack {want:?}:\n{r6}");
    }
    // The kernel node routes to its own pod.
    let (ok, out) = ping(&k.netns, "10.244.2.2");
    assert!(ok, "{out}");

    // Pods: MTU from the encapsulation.
    for p in &cluster.pods {
        assert_eq!(p.mtu, 1450);
        let eth0 = in_ns(&p.netns, &["ip", "link", "show", "dev", "eth0"]);
        assert!(eth0.contains("mtu 1450"), "{eth0}");
    }

    // add_pod/remove_pod on the kernel node keep its routes right; the other
    // nodes' routes do not change.
    let before: Vec<String> = cluster
        .nodes
        .iter()
        .map(|n| in_ns(&n.netns, &["ip", "route", "show"]))
        .collect();
    let mut extra = spec.pods[1].clone();
    extra.name = "pk2".into();
    let pk2 = cluster
        .add_pod(&extra, &BuildOptions::default())
        .unwrap()
        .clone();
    assert_eq!(pk2.ipv4, Some("10.244.2.3".parse().unwrap()));
    assert_eq!(pk2.mtu, 1450);
    let r4 = in_ns(&k.netns, &["ip", "-4", "route", "show"]);
    assert!(
        r4.contains(&format!("10.244.2.3 dev {} ", pk2.host_ifname)),
        "{r4}"
    );
    let r6 = in_ns(&k.netns, &["ip", "-6", "route", "show"]);
    assert!(
        r6.contains(&format!("fd00:10:244:2::3 dev {} ", pk2.host_ifname)),
        "{r6}"
    );
    let (ok, out) = ping(&k.netns, "10.244.2.3");
    assert!(ok, "{out}");
    cluster.remove_pod("default", "pk2").unwrap();
    let r4 = in_ns(&k.netns, &["ip", "-4", "route", "show"]);
    assert!(!r4.contains("10.244.2.3"), "{r4}");
    for (n, b) in cluster.nodes.iter().zip(&before) {
        assert_eq!(&in_ns(&n.netns, &["ip", "route", "show"]), b, "{}", n.name);
    }

    // The state round-trips through JSON.
    let path = std::env::temp_dir().join(format!("{name}.json"));
    cluster.save(&path).unwrap();
    assert_eq!(Cluster::load(&path).unwrap(), cluster);
    std::fs::remove_file(&path).unwrap();

    // Teardown removes everything, the underlay included.
    cluster.teardown().unwrap();
    assert!(netns::list_with_prefix(&format!("weir-{name}-")).is_empty());
    assert!(!netns::exists(&ul_ns));
}

/// Two kernel nodes with given InternalIPs and one pod each.
const TWO_KERNEL: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: k1, annotations: {weir.dev/dataplane: kernel}}
spec: {podCIDRs: [10.245.0.0/24, "fd00:10:245::/64"]}
status:
  addresses:
  - {type: Hostname, address: k1}
  - {type: InternalIP, address: "fd00:99::1"}
  - {type: InternalIP, address: 192.168.77.10}
---
apiVersion: v1
kind: Node
metadata: {name: k2, annotations: {weir.dev/dataplane: kernel}}
spec: {podCIDRs: [10.245.1.0/24, "fd00:10:245:1::/64"]}
status:
  addresses: [{type: InternalIP, address: 192.168.77.20}]
---
apiVersion: v1
kind: Pod
metadata: {name: p1}
spec: {nodeName: k1, containers: [{name: c, ports: [{containerPort: 8080}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: p2}
spec: {nodeName: k2, containers: [{name: c, ports: [{containerPort: 8080}]}]}
"#;

fn tcp_answer(from_netns: &str, ip: IpAddr, port: u16) -> String {
    netns::run_in(from_netns, || {
        let mut s = TcpStream::connect_timeout(&SocketAddr::new(ip, port), Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connect {ip}:{port}: {e}"));
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = String::new();
        s.read_to_string(&mut buf).unwrap();
        buf
    })
    .unwrap()
}

#[test]
fn kernel_nodes_carry_pod_traffic_over_vxlan() {
    let (name, _guard) = unique();
    let spec = parse_str(TWO_KERNEL, "kernel.yaml").unwrap();
    let cluster = Cluster::build(&name, &spec, &BuildOptions::default()).unwrap();
    let k1 = cluster.node("k1").unwrap();
    let k2 = cluster.node("k2").unwrap();
    assert_eq!(
        k1.underlay.as_ref().unwrap().ipv4,
        std::net::Ipv4Addr::new(192, 168, 77, 10)
    );
    assert_eq!(k2.vtep_mac, [0x0e, 0, 192, 168, 77, 20]);
    let p1 = cluster.pod("default", "p1").unwrap().clone();
    let p2 = cluster.pod("default", "p2").unwrap().clone();

    // ICMP both families, both ways.
    for (from, to) in [(&p1, &p2), (&p2, &p1)] {
        for dst in [to.ipv4.unwrap().to_string(), to.ipv6.unwrap().to_string()] {
            let (ok, out) = ping(&from.netns, &dst);
            assert!(ok, "{} -> {dst}: {out}", from.name);
        }
    }
    // A full-size packet fits the pod MTU (1450 - 28 bytes of headers).
    let (ok, out) = run(Command::new("ip").args([
        "netns",
        "exec",
        &p1.netns,
        "ping",
        "-c",
        "1",
        "-W",
        "2",
        "-M",
        "do",
        "-s",
        "1422",
        &p2.ipv4.unwrap().to_string(),
    ]));
    assert!(ok, "{out}");

    // TCP through the pod servers, both families.
    let _s1 = PodServers::start(&p1).unwrap();
    let _s2 = PodServers::start(&p2).unwrap();
    for ip in [IpAddr::V4(p2.ipv4.unwrap()), IpAddr::V6(p2.ipv6.unwrap())] {
        assert_eq!(tcp_answer(&p1.netns, ip, 8080), "p2\n");
    }
    assert_eq!(
        tcp_answer(&p2.netns, IpAddr::V4(p1.ipv4.unwrap()), 8080),
        "p1\n"
    );

    // The traffic really crossed the tunnel.
    for (node, dir) in [(k1, "rx"), (k1, "tx"), (k2, "rx"), (k2, "tx")] {
        let path = format!("/sys/class/net/vxlan0/statistics/{dir}_packets");
        let n: u64 = in_ns(&node.netns, &["cat", &path]).trim().parse().unwrap();
        assert!(n >= 10, "{} vxlan0 {dir}_packets {n}", node.name);
    }

    drop((_s1, _s2));
    teardown_by_name(&name).unwrap();
    assert!(netns::list_with_prefix(&format!("weir-{name}-")).is_empty());
}

#[test]
fn pod_mtu_follows_the_encapsulation() {
    let (name, _guard) = unique();
    let text = "apiVersion: v1\nkind: Node\nmetadata: {name: a}\n---\napiVersion: v1\nkind: Node\nmetadata: {name: b}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: x}\nspec: {nodeName: b}\n";
    let spec = parse_str(text, "two.yaml").unwrap();
    let geneve = BuildOptions {
        encap: Encap::Geneve,
        ..Default::default()
    };
    assert_eq!(BuildOptions::default().pod_mtu(), 1450);
    assert_eq!(geneve.pod_mtu(), 1442);
    let cluster = Cluster::build(&name, &spec, &geneve).unwrap();
    assert_eq!(cluster.encap, Encap::Geneve);
    assert_eq!(cluster.pod_mtu, 1442);
    let x = cluster.pod("default", "x").unwrap();
    assert_eq!(x.mtu, 1442);
    let eth0 = in_ns(&x.netns, &["ip", "link", "show", "dev", "eth0"]);
    assert!(eth0.contains("mtu 1442"), "{eth0}");
    cluster.teardown().unwrap();

    // Explicit MTUs: too large for the encapsulation is one line, nothing built.
    for (opts, want) in [
        (
            BuildOptions {
                mtu: 1500,
                ..Default::default()
            },
            "build options: mtu: 1500 is more than underlay_mtu 1500 minus 50 bytes of vxlan overhead (at most 1450)",
        ),
        (
            BuildOptions {
                mtu: 1450,
                encap: Encap::Geneve,
                ..Default::default()
            },
            "build options: mtu: 1450 is more than underlay_mtu 1500 minus 58 bytes of geneve overhead (at most 1442)",
        ),
        (
            BuildOptions {
                underlay_mtu: 1300,
                ..Default::default()
            },
            "build options: underlay_mtu: 1300 is out of range 1330-65535 (pods need 1280 plus 50 bytes of vxlan overhead)",
        ),
    ] {
        let err = Cluster::build(&name, &spec, &opts).unwrap_err().to_string();
        assert_eq!(err, want);
        assert!(!err.contains('\n'));
    }
    assert!(netns::list_with_prefix(&format!("weir-{name}-")).is_empty());

    // A jumbo underlay and an explicit MTU that fits it.
    let jumbo = BuildOptions {
        underlay_mtu: 9000,
        mtu: 8950,
        ..Default::default()
    };
    let cluster = Cluster::build(&name, &spec, &jumbo).unwrap();
    assert_eq!(cluster.pod("default", "x").unwrap().mtu, 8950);
    let ul0 = in_ns(
        &cluster.nodes[0].netns,
        &["ip", "link", "show", "dev", "ul0"],
    );
    assert!(ul0.contains("mtu 9000"), "{ul0}");
    cluster.teardown().unwrap();
}

fn build_err(text: &str, opts: &BuildOptions) -> String {
    let (name, _guard) = unique();
    let err = match parse_str(text, "bad.yaml") {
        Err(e) => e.to_string(),
        Ok(spec) => Cluster::build(&name, &spec, opts).unwrap_err().to_string(),
    };
    assert!(!err.contains('\n'), "{err}");
    assert!(netns::list_with_prefix(&format!("weir-{name}-")).is_empty());
    err
}

fn node(name: &str, extra: &str) -> String {
    format!("apiVersion: v1\nkind: Node\nmetadata: {{name: {name}{extra}\n---\n")
}

#[test]
fn overlay_validation_errors_are_one_line() {
    let d = BuildOptions::default();
    let ip =
        |a: &str| format!("}}\nstatus: {{addresses: [{{type: InternalIP, address: \"{a}\"}}]}}");
    let ann = |v: &str| format!(", annotations: {{weir.dev/dataplane: {v}}}}}");

    let dup = node("a", &ip("10.9.0.1")) + &node("b", &ip("10.9.0.1"));
    assert_eq!(
        build_err(&dup, &d),
        "nodes/b: status.addresses: InternalIP 10.9.0.1 is also that of nodes/a"
    );
    assert_eq!(
        build_err(&node("a", &ip("10.9.0")), &d),
        "nodes/a: status.addresses[0].address: \"10.9.0\" is not an IP address"
    );
    assert_eq!(
        build_err(&node("a", &ip("127.0.0.1")), &d),
        "nodes/a: status.addresses[0].address: 127.0.0.1 is not a unicast address a node can use on the underlay"
    );
    assert_eq!(
        build_err(&node("a", &ann("bpf")), &d),
        "nodes/a: metadata.annotations[weir.dev/dataplane]: \"bpf\" is not one of weir, kernel"
    );
    let split = node("a", &ip("10.9.0.1")) + &node("b", &ip("10.9.1.1"));
    assert_eq!(
        build_err(&split, &d),
        "nodes/b: status.addresses: InternalIP 10.9.1.1 is not a host address of the underlay subnet 10.9.0.0/24 (from nodes/a); all nodes share one L2 underlay: use one /24, or another underlay_prefix_len"
    );
    // The same addresses are fine in one /16.
    let (name, _guard) = unique();
    let wide = BuildOptions {
        underlay_prefix_len: 16,
        ..Default::default()
    };
    let spec = parse_str(&(split.clone() + &node("c", "}")), "ok.yaml").unwrap();
    let cluster = Cluster::build(&name, &spec, &wide).unwrap();
    let ips: Vec<String> = cluster
        .nodes
        .iter()
        .map(|n| {
            let u = n.underlay.as_ref().unwrap();
            format!("{}/{}", u.ipv4, u.prefix_len)
        })
        .collect();
    assert_eq!(ips, ["10.9.0.1/16", "10.9.1.1/16", "10.9.0.2/16"]);
    cluster.teardown().unwrap();

    assert_eq!(
        build_err(&node("a", &ip("10.244.0.7")), &d),
        "nodes/a: status.addresses: InternalIP 10.244.0.7 is inside podCIDR 10.244.0.0/24 of nodes/a"
    );
    let geneve = BuildOptions {
        encap: Encap::Geneve,
        ..Default::default()
    };
    assert_eq!(
        build_err(&(node("a", "}") + &node("k", &ann("kernel"))), &geneve),
        "nodes/k: metadata.annotations[weir.dev/dataplane]: kernel nodes speak VXLAN only, but the cluster's encap is geneve"
    );
    let err = build_err(&node("underlay", "}"), &d);
    assert!(
        err.starts_with("nodes/underlay: netns name weir-")
            && err.ends_with("-underlay is also that of the underlay; rename one"),
        "{err}"
    );
}

#[test]
fn states_saved_before_the_underlay_still_load() {
    let old = r#"{"name":"x","nodes":[{"name":"n","netns":"weir-x-n","labels":{},
        "pod_cidrs":["10.244.0.0/24"],"ipv4":"10.244.0.1","ipv6":null}],
        "namespaces":[],"pods":[]}"#;
    let c: Cluster = serde_json::from_str(old).unwrap();
    assert_eq!(c.encap, Encap::Vxlan);
    assert_eq!(c.vni, 1);
    assert_eq!(c.underlay_netns, None);
    assert_eq!(c.underlay_mtu, 1500);
    assert_eq!(c.pod_mtu, 0);
    assert_eq!(c.nodes[0].dataplane, NodeDataplane::Weir);
    assert_eq!(c.nodes[0].underlay, None);
    assert_eq!(c.all_netns(), ["weir-x-n"]);
    let o: BuildOptions = serde_json::from_str(r#"{"queues":2,"mtu":1500}"#).unwrap();
    assert_eq!(
        o,
        BuildOptions {
            mtu: 1500,
            ..Default::default()
        }
    );
}
