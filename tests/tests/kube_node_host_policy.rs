//! Host endpoint policy (docs/policy.md, "Host endpoint policy") on a node
//! of a cluster weir did not build: one node agent (`weir agent
//! --kubeconfig --node`) against a REAL kube-apiserver, a world netns on
//! the node's underlay, a pod attached through weir-cni. A
//! WeirClusterPolicy applied with kubectl selects the node by a label the
//! test puts on the Node: TCP 9100 allowed, 9102 allowed from the client
//! pod (podSelector), everything else denied. Real servers in the node's
//! netns on 9100, 9101, 9102 and 22 (a failsafe port).
//! From the world (on the underlay) and from the pod (through the host
//! port): 9100 answers and crossed weir (the dataplane's counters moved),
//! 9101 is refused and counted `policy-denied`, 22 stays open; 9102
//! answers the pod and refuses the world. Before the policy, 9101 answers
//! from both (so the refusal is the policy's). Then the Baseline tier (`tier: Baseline`): the Admin policy passes 9101
//! on, a Baseline policy allows it from the world's address only: the
//! world is answered, the pod refused and counted. The policies deleted,
//! 9101 answers again. The node's own outbound traffic: an egress host
//! rule denying TCP 9201 to the world becomes the agent's nftables table
//! in the node's netns (the node's connection refused and counted in the
//! agent's status, 9200 answers; the table gone with the policy). Needs
//! root, Go, ethtool, nft.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use weir_tests::k8s::ControlPlane;
use weir_tests::kubelet::*;
use weir_tests::unique_name;

const HOST_FW: &str = "\
apiVersion: weir.dev/v1alpha1
kind: WeirClusterPolicy
metadata: {name: host-fw}
spec:
  priority: 10
  subject:
    nodeSelector: {matchLabels: {role: hp-worker}}
  ingress:
  - name: metrics
    action: Allow
    ports: [{protocol: TCP, port: 9100}]
  - name: from-client
    action: Allow
    from: [{podSelector: {matchLabels: {app: client}}}]
    ports: [{protocol: TCP, port: 9102}]
  - {name: rest, action: Deny}
";

/// The Baseline tier: the Admin policy passes 9101 on (HOST_FW with a
/// Pass rule before its Deny), the Baseline one allows it from the world's
/// address only.
const BASE_FW: &str = "\
apiVersion: weir.dev/v1alpha1
kind: WeirClusterPolicy
metadata: {name: base-fw}
spec:
  priority: 1
  tier: Baseline
  subject:
    nodeSelector: {matchLabels: {role: hp-worker}}
  ingress:
  - action: Allow
    from: [{ipBlock: {cidr: 192.168.77.2/32}}]
    ports: [{protocol: TCP, port: 9101}]
  - {name: rest, action: Deny}
";

/// The node's own outbound traffic (its nftables table, docs/policy.md):
/// TCP 9201 to the world's address denied, the rest allowed by default.
const HOST_OUT: &str = "\
apiVersion: weir.dev/v1alpha1
kind: WeirClusterPolicy
metadata: {name: host-out}
spec:
  priority: 20
  subject:
    nodeSelector: {matchLabels: {role: hp-worker}}
  egress:
  - name: no-9201
    action: Deny
    to: [{ipBlock: {cidr: 192.168.77.2/32}}]
    ports: [{protocol: TCP, port: 9201}]
";

/// `nodes[0].host_egress.denied_packets` of the agent's status.
fn host_egress_denied(node: &NodeUnderTest) -> u64 {
    node.status()["nodes"][0]["host_egress"]["denied_packets"]
        .as_u64()
        .unwrap_or(0)
}

/// Whether the node's netns has weir's table.
fn has_table(ns: &str) -> bool {
    std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "nft",
            "list",
            "table",
            "inet",
            "weir_host",
        ])
        .output()
        .is_ok_and(|o| o.status.success())
}

const NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 1);
const NODE_POD_GW: Ipv4Addr = Ipv4Addr::new(10, 216, 1, 1);
const WORLD_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 2);

fn tcp(from: &Path, to: Ipv4Addr, port: u16) -> bool {
    tcp_port_ok(from, to, port, Duration::from_millis(700))
}

/// Every drop counter of the node's workers, for failure messages.
fn drops(node: &NodeUnderTest) -> String {
    let s = node.status();
    let w = s["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|n| n["status"]["dataplane"]["workers"].to_string())
        .collect::<Vec<_>>();
    w.join("\n")
}

#[test]
fn host_policy_applies_on_a_node_agent() {
    let cp = ControlPlane::start("khp");
    let tag = unique_name("khp");
    let mut netns = Netns(Vec::new());
    let (ns_node, ns_world) = (format!("wn{tag}"), format!("ww{tag}"));
    underlay_pair(&mut netns, &ns_node, &ns_world);
    let node_path = PathBuf::from("/run/netns").join(&ns_node);
    let world = PathBuf::from("/run/netns").join(&ns_world);
    // The world's veth end sends TCP with a partial checksum (tx offload);
    // a real NIC's frames carry a whole one. The dataplane hands the
    // bytes to the node's kernel as they came, which would drop them.
    let out = std::process::Command::new("ip")
        .args([
            "netns", "exec", &ns_world, "ethtool", "-K", "ul0", "tx", "off",
        ])
        .output()
        .expect("ethtool");
    assert!(out.status.success(), "ethtool -K ul0 tx off failed");
    let mut node = node_under_test(&cp, &format!("n-{tag}"), &ns_node, &tag);
    register_node(&cp, &node.name, "10.216.1.0/24", Some("192.168.77.1"));
    cp.kubectl_ok(&["label", "node", &node.name, "role=hp-worker"], None);
    node.start_agent();
    create_namespace(&cp, &node, "hp");
    let client = attach(
        &cp,
        &node,
        &mut netns,
        &format!("w{tag}-client"),
        "hp",
        "client",
        &pod_yaml("hp", "client", &node.name),
    );
    write_status(&cp, &client);
    // The node's own servers (its netns is the node's host).
    start_echo(&node_path, &[9100, 9101, 9102, 22], &[]);

    // No policy yet: every port answers, from the pod and from the world.
    wait_until(&node, "the pod reaches the node's 9101", || {
        tcp(&client.netns_path, NODE_POD_GW, 9101)
    });
    for port in [9100, 9101, 9102, 22] {
        assert!(tcp(&world, NODE_IP, port), "world → node:{port} before");
        assert!(
            tcp(&client.netns_path, NODE_POD_GW, port),
            "pod → node:{port} before"
        );
    }

    cp.kubectl_ok(&["apply", "-f", "-"], Some(HOST_FW));
    wait_until(&node, "the world's 9101 is refused", || {
        !tcp(&world, NODE_IP, 9101)
    });

    // From the world, on the underlay: judged by the dataplane.
    let (denied, ul) = (node.drops("policy-denied"), underlay_redirected(&node));
    assert!(!tcp(&world, NODE_IP, 9101), "world → node:9101 answered");
    assert!(
        node.drops("policy-denied") > denied,
        "world → node:9101 refused but policy-denied did not move\n{}",
        node.log()
    );
    let ul_denied = underlay_redirected(&node);
    assert!(
        ul_denied > ul,
        "the refused SYN did not cross the underlay's XDP"
    );
    assert!(
        tcp(&world, NODE_IP, 9100),
        "world → node:9100 refused; drops {}\n{}",
        drops(&node),
        node.log()
    );
    assert!(
        underlay_redirected(&node) > ul_denied,
        "world → node:9100 answered without crossing weir"
    );
    assert!(
        tcp(&world, NODE_IP, 22),
        "world → node:22 (failsafe) refused"
    );
    // 9102 is the client pod's only: the world is refused.
    let denied = node.drops("policy-denied");
    assert!(!tcp(&world, NODE_IP, 9102), "world → node:9102 answered");
    assert!(
        node.drops("policy-denied") > denied,
        "world → node:9102 not counted"
    );

    // From the pod, through the host port.
    let denied = node.drops("policy-denied");
    assert!(
        !tcp(&client.netns_path, NODE_POD_GW, 9101),
        "pod → node:9101 answered"
    );
    assert!(
        node.drops("policy-denied") > denied,
        "pod → node:9101 refused but policy-denied did not move"
    );
    let rx = node.rx_packets();
    assert!(
        tcp(&client.netns_path, NODE_POD_GW, 9100),
        "pod → node:9100 refused"
    );
    assert!(node.rx_packets() > rx, "pod → node:9100 did not cross weir");
    assert!(
        tcp(&client.netns_path, NODE_POD_GW, 22),
        "pod → node:22 (failsafe) refused"
    );
    // The podSelector peer: the pod's labels, read from the API server.
    assert!(
        tcp(&client.netns_path, NODE_POD_GW, 9102),
        "pod → node:9102 (its own rule) refused"
    );

    // The Baseline tier: Admin passes 9101 on, the Baseline policy
    // allows it from the world only.
    cp.kubectl_ok(&["apply", "-f", "-"], Some(BASE_FW));
    let pass = HOST_FW.replace(
        "  - {name: rest, action: Deny}",
        "  - {name: to-baseline, action: Pass, ports: [{protocol: TCP, port: 9101}]}\n  - {name: rest, action: Deny}",
    );
    assert!(pass.contains("to-baseline"));
    cp.kubectl_ok(&["apply", "-f", "-"], Some(&pass));
    wait_until(&node, "the world's 9101 answers (Baseline allow)", || {
        tcp(&world, NODE_IP, 9101)
    });
    let denied = node.drops("policy-denied");
    assert!(
        !tcp(&client.netns_path, NODE_POD_GW, 9101),
        "pod → node:9101 answered under the Baseline deny"
    );
    assert!(
        node.drops("policy-denied") > denied,
        "pod → node:9101 (Baseline deny) not counted"
    );
    assert!(
        tcp(&world, NODE_IP, 9100),
        "world → node:9100 (Admin allow)"
    );

    // The node's own outbound traffic (the agent's nftables table in the
    // node's netns): 9201 on the world refused and counted, 9200 answers.
    start_echo(&world, &[9200, 9201], &[]);
    assert!(tcp(&node_path, WORLD_IP, 9201), "node → world:9201 before");
    assert!(
        !has_table(&ns_node),
        "a weir_host table before any egress rule"
    );
    cp.kubectl_ok(&["apply", "-f", "-"], Some(HOST_OUT));
    wait_until(&node, "the node's 9201 to the world is refused", || {
        !tcp(&node_path, WORLD_IP, 9201)
    });
    assert!(
        has_table(&ns_node),
        "no weir_host table in the node's netns"
    );
    let denied = host_egress_denied(&node);
    assert!(
        !tcp(&node_path, WORLD_IP, 9201),
        "node → world:9201 answered"
    );
    assert!(
        host_egress_denied(&node) > denied,
        "node → world:9201 refused but not counted: {}",
        node.status()
    );
    assert!(tcp(&node_path, WORLD_IP, 9200), "node → world:9200 refused");
    cp.kubectl_ok(&["delete", "weirclusterpolicy", "host-out"], None);
    wait_until(&node, "the node's 9201 to the world answers again", || {
        tcp(&node_path, WORLD_IP, 9201)
    });
    assert!(
        !has_table(&ns_node),
        "the weir_host table left after its policy"
    );

    // The policies deleted: 9101 answers again from both.
    cp.kubectl_ok(&["delete", "weirclusterpolicy", "host-fw", "base-fw"], None);
    // (the world's 9101 answered under the Baseline already: wait on the
    // pod's).
    wait_until(&node, "the pod's 9101 answers again", || {
        tcp(&client.netns_path, NODE_POD_GW, 9101)
    });
    assert!(
        tcp(&world, NODE_IP, 9101),
        "world → node:9101 after the policies went"
    );
    assert!(
        tcp(&world, NODE_IP, 9102),
        "world → node:9102 after the policies went"
    );
    drop(node);
    drop(netns);
}
