//! Host endpoint policy (WeirClusterPolicy `subject.nodeSelector`): the
//! node's own flows judged by the compiled host tables, failsafe ports
//! open whatever the policy says, explain naming the deciding host rule,
//! bad input as one line.
mod common;

use common::{cluster, labels};
use std::net::IpAddr;
use weir_dataplane::policy::{
    Action, CompiledPolicy, Decision, FailsafePort, FailsafePorts, Peer, RuleId,
};
use weir_policy::explain::{explain_host, FlowEnd};
use weir_policy::{compile_with_host, parse_str, HostEndpoint, PolicyInput};
use weir_topo::Protocol;

const TCP: u8 = 6;
const UDP: u8 = 17;

/// Allow a health port (10256) from anywhere and 8080 from prod pods, deny the rest
/// inbound; deny the node's flows to dev pods.
const HOST_FW: &str = "\
apiVersion: weir.dev/v1alpha1
kind: WeirClusterPolicy
metadata: {name: host-fw}
spec:
  priority: 10
  subject:
    nodeSelector: {matchLabels: {role: worker}}
  ingress:
  - {action: Allow, ports: [{protocol: TCP, port: 10256}]}
  - action: Allow
    from: [{namespaceSelector: {matchLabels: {env: prod}}}]
    ports: [{protocol: TCP, port: 8080}]
  - {action: Deny}
  egress:
  - action: Deny
    to: [{namespaceSelector: {matchLabels: {env: dev}}}]
";

const NODE: &str = "10.0.0.1";
const NODE_UL: &str = "172.30.0.1";

fn host(role: &str) -> HostEndpoint {
    HostEndpoint {
        labels: labels(&[("role", role), ("kubernetes.io/hostname", "n1")]),
        addrs: vec![NODE.parse().unwrap(), NODE_UL.parse().unwrap()],
        failsafe: FailsafePorts::default(),
    }
}

fn input(yaml: &str) -> PolicyInput {
    let mut i = cluster();
    i.policies = parse_str(yaml, "host.yaml").unwrap();
    i
}

fn compiled(i: &PolicyInput, h: &HostEndpoint) -> CompiledPolicy {
    CompiledPolicy::build(compile_with_host(i, 1, "n1", Some(h)).unwrap()).unwrap()
}

/// Endpoint index of a pod on n1 (order: namespace, name).
fn pod(i: &PolicyInput, ns: &str, name: &str) -> Peer {
    let eps = weir_policy::node_endpoints(i, "n1");
    let k = eps
        .iter()
        .position(|p| p.namespace == ns && p.name == name)
        .unwrap();
    Peer {
        endpoint: Some(k as u32),
        addr: IpAddr::V4(eps[k].ipv4.unwrap()),
    }
}

fn addr(a: &str) -> Peer {
    Peer {
        endpoint: None,
        addr: a.parse().unwrap(),
    }
}

#[test]
fn host_policy_judges_flows_to_and_from_the_node() {
    let i = input(HOST_FW);
    let p = compiled(&i, &host("worker"));
    let web = pod(&i, "prod", "web");
    let dev = pod(&i, "dev", "web");
    let x = pod(&i, "default", "x");
    // Pod → node: the health port allowed from anyone, on both node addresses.
    for n in [NODE, NODE_UL] {
        let j = p.judge(x, addr(n), TCP, 10256);
        assert!(j.allowed, "{n}: {j:?}");
        assert_eq!(
            p.rule(j.ingress.rule).unwrap().to_string(),
            "weirclusterpolicies/host-fw ingress[0]"
        );
    }
    // 8080 only from prod.
    assert!(p.judge(web, addr(NODE), TCP, 8080).allowed);
    let j = p.judge(x, addr(NODE), TCP, 8080);
    assert!(!j.allowed);
    assert_eq!(
        p.rule(j.ingress.rule).unwrap().to_string(),
        "weirclusterpolicies/host-fw ingress[2]"
    );
    // The rest denied, UDP too; the world (another node, an outside address)
    // as well: ingress rules match every peer class.
    assert!(!p.judge(x, addr(NODE), UDP, 9999).allowed);
    assert!(!p.judge(addr("10.0.1.1"), addr(NODE), TCP, 8080).allowed);
    assert!(p.judge(addr("192.0.2.9"), addr(NODE), TCP, 10256).allowed);
    // Failsafe: SSH and the API server stay open under the Deny.
    for port in [22, 6443, 2379, 2380] {
        let j = p.judge(x, addr(NODE), TCP, port);
        assert!(j.allowed, "{port}: {j:?}");
        assert_eq!(j.ingress, Decision::FAILSAFE);
    }
    // Node → pod: the node's egress rule denies dev pods, the pod's side
    // (no policy) does not judge the host identity.
    let j = p.judge(addr(NODE), dev, TCP, 80);
    assert!(!j.allowed);
    assert_eq!(
        p.rule(j.egress.rule).unwrap().to_string(),
        "weirclusterpolicies/host-fw egress[0]"
    );
    assert!(p.judge(addr(NODE), web, TCP, 80).allowed);
    // Outbound failsafe: DNS to a dev pod passes.
    let j = p.judge(addr(NODE), dev, UDP, 53);
    assert!(j.allowed);
    assert_eq!(j.egress, Decision::FAILSAFE);
    // Pods' flows between themselves are untouched by host policy.
    assert!(p.judge(x, dev, TCP, 8080).allowed);
}

#[test]
fn a_node_the_selector_does_not_match_has_no_host_tables() {
    let i = input(HOST_FW);
    let spec = compile_with_host(&i, 1, "n1", Some(&host("control-plane"))).unwrap();
    assert!(spec.host.is_none());
    let p = CompiledPolicy::build(spec).unwrap();
    assert!(!p.has_host_endpoint());
    assert!(
        p.judge(pod(&i, "default", "x"), addr(NODE), TCP, 8080)
            .allowed
    );
}

#[test]
fn failsafe_ports_are_configurable_and_none_closes_everything() {
    let i = input(HOST_FW);
    let mut h = host("worker");
    h.failsafe = FailsafePorts {
        inbound: FailsafePort::parse_list("tcp:2200-2201").unwrap(),
        outbound: FailsafePort::parse_list("none").unwrap(),
    };
    let p = compiled(&i, &h);
    let x = pod(&i, "default", "x");
    assert!(!p.judge(x, addr(NODE), TCP, 22).allowed);
    assert!(p.judge(x, addr(NODE), TCP, 2201).allowed);
    assert!(!p.judge(x, addr(NODE), TCP, 2202).allowed);
    let dev = pod(&i, "dev", "web");
    assert!(!p.judge(addr(NODE), dev, UDP, 53).allowed);
    for (bad, want) in [
        ("tcp:0", "bad port"),
        ("icmp:1", "unknown protocol"),
        ("tcp:90-80", "first <= last"),
        ("22", "no ':'"),
    ] {
        let e = FailsafePort::parse_list(bad).unwrap_err();
        assert!(e.contains(want) && !e.contains('\n'), "{bad}: {e}");
    }
}

#[test]
fn explain_names_the_deciding_host_rule() {
    let i = input(HOST_FW);
    let h = host("worker");
    let e = explain_host(
        &i,
        &h,
        FlowEnd::Pod("default", "x"),
        FlowEnd::Node("n1"),
        Protocol::Tcp,
        8080,
    )
    .unwrap();
    assert!(!e.allowed);
    assert_eq!(e.ingress.decision.action, Action::Deny);
    let text = e.to_string();
    assert!(
        text.contains("ingress of node/n1: deny by weirclusterpolicies/host-fw ingress[2] (Deny)"),
        "{text}"
    );
    let e = explain_host(
        &i,
        &h,
        FlowEnd::Pod("default", "x"),
        FlowEnd::Node("n1"),
        Protocol::Tcp,
        22,
    )
    .unwrap();
    assert!(e.allowed);
    assert!(e.to_string().contains("failsafe port"), "{e}");
    let e = explain_host(
        &i,
        &h,
        FlowEnd::Node("n1"),
        FlowEnd::Pod("dev", "web"),
        Protocol::Tcp,
        80,
    )
    .unwrap();
    assert_eq!(e.egress.decision.rule, RuleId(3));
    assert!(
        e.to_string()
            .contains("egress of node/n1: deny by weirclusterpolicies/host-fw egress[0]"),
        "{e}"
    );
}

#[test]
fn bad_host_policies_are_one_line() {
    let bad_selector = HOST_FW.replace(
        "nodeSelector: {matchLabels: {role: worker}}",
        "nodeSelector: {matchExpressions: [{key: role, operator: Equals, values: [w]}]}",
    );
    let e = parse_str(&bad_selector, "host.yaml")
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "weirclusterpolicies/host-fw: spec.subject.nodeSelector.matchExpressions[0].operator: unknown operator \"Equals\"; expected In, NotIn, Exists or DoesNotExist"
    );
    let mixed = HOST_FW.replace(
        "nodeSelector: {matchLabels: {role: worker}}",
        "nodeSelector: {}\n    podSelector: {}",
    );
    let e = parse_str(&mixed, "host.yaml").unwrap_err().to_string();
    assert!(
        e.starts_with(
            "weirclusterpolicies/host-fw: spec.subject.nodeSelector: may not be combined"
        ),
        "{e}"
    );
    assert!(!e.contains('\n'));
}

#[test]
fn policy_check_does_not_call_a_host_policy_ineffective() {
    let i = input(HOST_FW);
    let report = weir_policy::check::check(&i, &[]).unwrap();
    let text = format!("{report:?}");
    assert!(!text.contains("selects-no-pod"), "{text}");
}

/// An Admin host policy that allows the health port, denies 9200 and
/// passes 9100 on; a Baseline one (`tier: Baseline`) that allows 9100 and
/// 9200 from prod pods and denies the rest.
const HOST_TIERS: &str = "\
apiVersion: weir.dev/v1alpha1
kind: WeirClusterPolicy
metadata: {name: admin-fw}
spec:
  priority: 10
  subject:
    nodeSelector: {matchLabels: {role: worker}}
  ingress:
  - {action: Allow, ports: [{protocol: TCP, port: 10256}]}
  - {action: Deny, ports: [{protocol: TCP, port: 9200}]}
  - {action: Pass, ports: [{protocol: TCP, port: 9100}]}
---
apiVersion: weir.dev/v1alpha1
kind: WeirClusterPolicy
metadata: {name: base-fw}
spec:
  priority: 1
  tier: Baseline
  subject:
    nodeSelector: {matchLabels: {role: worker}}
  ingress:
  - action: Allow
    from: [{namespaceSelector: {matchLabels: {env: prod}}}]
    ports: [{protocol: TCP, port: 9100}, {protocol: TCP, port: 9200}]
  - {action: Deny}
---
apiVersion: weir.dev/v1alpha1
kind: WeirClusterPolicy
metadata: {name: base-pods}
spec:
  priority: 1
  tier: Baseline
  subject:
    namespaceSelector: {matchLabels: {env: dev}}
  ingress:
  - {action: Deny, ports: [{protocol: TCP, port: 80}]}
";

#[test]
fn baseline_host_policy_comes_after_the_admin_tier() {
    let i = input(HOST_TIERS);
    let p = compiled(&i, &host("worker"));
    let web = pod(&i, "prod", "web");
    let dev = pod(&i, "dev", "web");
    let x = pod(&i, "default", "x");
    let rule = |j: &weir_dataplane::policy::Judgement| p.rule(j.ingress.rule).unwrap().to_string();
    // Admin first: the health port from anyone.
    let j = p.judge(x, addr(NODE), TCP, 10256);
    assert!(j.allowed, "{j:?}");
    assert_eq!(rule(&j), "weirclusterpolicies/admin-fw ingress[0]");
    // Admin Pass hands 9100 to the Baseline tier: prod allowed, the rest
    // denied there.
    let j = p.judge(web, addr(NODE), TCP, 9100);
    assert!(j.allowed, "{j:?}");
    assert_eq!(rule(&j), "weirclusterpolicies/base-fw ingress[0]");
    let j = p.judge(x, addr(NODE_UL), TCP, 9100);
    assert!(!j.allowed, "{j:?}");
    assert_eq!(rule(&j), "weirclusterpolicies/base-fw ingress[1]");
    // An Admin Deny beats a Baseline Allow.
    let j = p.judge(web, addr(NODE), TCP, 9200);
    assert!(!j.allowed, "{j:?}");
    assert_eq!(rule(&j), "weirclusterpolicies/admin-fw ingress[1]");
    // No Admin rule: the Baseline decides (the world's address too).
    assert!(!p.judge(addr("192.0.2.9"), addr(NODE_UL), TCP, 8080).allowed);
    // Failsafe before every tier.
    let j = p.judge(x, addr(NODE), TCP, 22);
    assert!(j.allowed);
    assert_eq!(j.ingress, Decision::FAILSAFE);
    // A Baseline WeirClusterPolicy on pods: after the namespace tier (no
    // NetworkPolicy here), it denies.
    let j = p.judge(x, dev, TCP, 80);
    assert!(!j.allowed, "{j:?}");
    assert_eq!(rule(&j), "weirclusterpolicies/base-pods ingress[0]");
    assert!(p.judge(x, web, TCP, 80).allowed);
}

#[test]
fn a_bad_tier_is_one_line() {
    let bad = HOST_FW.replace("priority: 10\n", "priority: 10\n  tier: Basic\n");
    let e = parse_str(&bad, "host.yaml").unwrap_err().to_string();
    assert_eq!(
        e,
        "weirclusterpolicies/host-fw: spec.tier: unknown tier \"Basic\"; expected Admin or Baseline"
    );
    let ns =
        "apiVersion: weir.dev/v1alpha1\nkind: WeirPolicy\nmetadata: {name: w, namespace: dev}\n\
spec:\n  tier: Baseline\n  podSelector: {}\n";
    let e = parse_str(ns, "ns.yaml").unwrap_err().to_string();
    assert!(e.contains("spec.tier: not a WeirPolicy field"), "{e}");
}
