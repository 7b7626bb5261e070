//! The node reaches ClusterIPs (issue 12: kubelet and node-local clients
//! use Services) on `weir up`: the host port routes the Service ranges
//! (`weir-host0` → the dataplane), and the pass DNATs the node's flows as a
//! pod's, to a backend on this node or on another one (through the
//! tunnel), with the reply restored to come from the ClusterIP. Real
//! clients (curl, nc) in the node's netns; the host port's XDP counter
//! moves; with the dataplane stopped nothing answers (no interface owns a
//! ClusterIP). Needs root, curl and nc.

use std::process::{Command, Output};
use weir_tests::{two_node_cluster, TestCluster};

const NS: &str = "hs";

/// `to-a` selects a (on n1), `to-c` selects c (on n2); TCP and UDP 80, both
/// families.
fn manifests() -> String {
    let mut m = two_node_cluster(NS, &[("a", "n1"), ("c", "n2")], false);
    for (svc, pod) in [("to-a", "a"), ("to-c", "c")] {
        m.push_str(&format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {svc}, namespace: {NS}}}\n\
             spec:\n  ipFamilyPolicy: PreferDualStack\n  selector: {{pod: {pod}}}\n  ports:\n\
             \x20 - {{name: tcp, port: 80}}\n  - {{name: udp, port: 80, protocol: UDP}}\n"
        ));
    }
    m
}

fn node_exec(c: &TestCluster, node: &str, argv: &[&str]) -> Output {
    let netns = c.topology().node(node).expect("node").netns.clone();
    Command::new("ip")
        .args(["netns", "exec", &netns])
        .args(argv)
        .output()
        .expect("ip netns exec")
}

/// curl from the node to `addr:80` (the pod's server writes its name).
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

/// The ClusterIPs (IPv4, IPv6) of `svc`.
fn cluster_ips(c: &TestCluster, svc: &str) -> (String, String) {
    let v = c.weir_json(&["get", "services", "-n", NS, "-o", "json"]);
    let row = v
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["name"] == svc)
        .unwrap_or_else(|| panic!("no service {svc} in {v}"));
    let ips: Vec<String> = row["cluster_ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i.as_str().map(str::to_string))
        .collect();
    let v4 = ips.iter().find(|i| !i.contains(':')).cloned();
    let v6 = ips.iter().find(|i| i.contains(':')).cloned();
    (v4.expect("IPv4 ClusterIP"), v6.expect("IPv6 ClusterIP"))
}

#[test]
fn the_node_reaches_cluster_ips_on_this_and_other_nodes() {
    let c = TestCluster::up("hsvc", &manifests());
    let (a4, a6) = cluster_ips(&c, "to-a");
    let (c4, c6) = cluster_ips(&c, "to-c");
    let host1 = || c.port_xdp("n1", "weir-host1", "redirected");
    let ul_n2 = || c.port_xdp("n2", "ul0", "redirected");

    // A backend on this node: TCP and UDP, both families.
    let h = host1();
    assert_eq!(node_tcp(&c, "n1", &a4).as_deref(), Some("a"), "n1 → {a4}");
    assert_eq!(node_tcp(&c, "n1", &a6).as_deref(), Some("a"), "n1 → {a6}");
    assert_eq!(
        node_udp(&c, "n1", &a4).as_deref(),
        Some("a"),
        "n1 → {a4} UDP"
    );
    assert!(
        host1() > h,
        "weir-host1 redirected nothing: not through weir"
    );

    // A backend on n2: over the tunnel, the reply back through n1.
    let (h, u) = (host1(), ul_n2());
    assert_eq!(node_tcp(&c, "n1", &c4).as_deref(), Some("c"), "n1 → {c4}");
    assert_eq!(node_tcp(&c, "n1", &c6).as_deref(), Some("c"), "n1 → {c6}");
    assert_eq!(
        node_udp(&c, "n1", &c4).as_deref(),
        Some("c"),
        "n1 → {c4} UDP"
    );
    assert!(host1() > h, "weir-host1 redirected nothing");
    assert!(
        ul_n2() > u,
        "n2's underlay took no tunnel frame: c not reached by weir"
    );

    // n1's dataplane stopped: no ClusterIP answers the node any more.
    let out = c.weir(&["dataplane", "stop", "--node", "n1"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(node_tcp(&c, "n1", &a4), None, "n1 → {a4} stopped");
    assert_eq!(node_tcp(&c, "n1", &c4), None, "n1 → {c4} stopped");
    // n2's node still reaches both (its dataplane runs; a is on n1, whose
    // dataplane is stopped: only c answers).
    assert_eq!(node_tcp(&c, "n2", &c4).as_deref(), Some("c"), "n2 → {c4}");
}
