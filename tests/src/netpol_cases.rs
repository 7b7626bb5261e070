//! The upstream NetworkPolicy e2e cases (kubernetes/kubernetes
//! test/e2e/network/netpol/network_policy.go), re-encoded once for every
//! path weir runs them on: `weir up` (tests/tests/netpol_e2e.rs, also via
//! kubectl on `weir up --api-server`) and a node of a cluster weir did not
//! build (tests/tests/kube_node_netpol.rs). Namespaces x, y, z with pods a,
//! b, c serving TCP and UDP on 80 and 81; each case creates its policies and
//! compares upstream's truth table (`Reachability`) with real probes.
//! A path implements [`NetpolSuite`]; the case groups below are generic.

use crate::{Peer, Reachability};
use std::collections::BTreeMap;

/// What a path must do for the cases: the verbs of upstream's harness.
pub trait NetpolSuite {
    /// Starts a case (ending the previous one: its policies deleted, its
    /// label changes undone).
    fn case(&mut self, name: &str);
    /// CreatePolicy / UpdatePolicy (same name: replaces); returns once
    /// weir enforces it.
    fn create(&mut self, ns: &str, name: &str, spec: &str);
    /// Deletes the policies of the current case.
    fn delete_all_policies(&mut self);
    /// The namespace's labels become `ns: NAME` plus `extra` (undone at
    /// the end of the case).
    fn label_namespace(&mut self, ns: &str, extra: &[(&str, &str)]);
    /// The pod's labels become `pod: NAME` plus `extra` (undone at the end
    /// of the case).
    fn label_pod(&mut self, ns: &str, pod: &str, extra: &[(&str, &str)]);
    /// Probes the 9×9 matrix and records any difference from `want`.
    fn check(&mut self, port: u16, protocol: &str, want: &Reachability);
    /// The same over IPv6 (a path without IPv6 pods says so and skips).
    fn check_ipv6(&mut self, port: u16, protocol: &str, want: &Reachability);
    /// Probes and compares without recording: the harness self-check.
    fn try_check(
        &mut self,
        case: &str,
        port: u16,
        protocol: &str,
        want: &Reachability,
    ) -> Result<(), String>;
    /// The IPv4 address of pod `ns`/`pod`.
    fn pod_ipv4(&self, ns: &str, pod: &str) -> String;
}

/// Every pair connected.
pub fn all() -> Reachability {
    Reachability::all()
}

pub const X: &str = "x";
pub const Y: &str = "y";
pub const Z: &str = "z";

/// The manifests as JSON, read the way weir reads YAML (1.2). kubectl reads
/// YAML 1.1, where the plain scalar `y` of the upstream layout (`ns: y`) is
/// the boolean true, which a label refuses; `weir up --api-server` sends the
/// API server JSON the same way.
pub fn as_json(text: &str) -> String {
    let items: Vec<serde_json::Value> = weir_topo::manifest::split_documents(text, "case")
        .expect("case manifests parse")
        .iter()
        .map(|d| serde_json::to_value(&d.value).expect("JSON"))
        .collect();
    serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string()
}

/// The `weir.test/rev` label of a stored policy (YAML, one key a line).
pub fn rev_label(yaml: &str) -> Option<u32> {
    yaml.lines().find_map(|l| {
        let v = l.trim().strip_prefix("weir.test/rev:")?;
        v.trim()
            .trim_matches(|c| c == '\'' || c == '"')
            .parse()
            .ok()
    })
}

/// `k: v` pairs as a label map.
pub fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// An upstream case group (see the module doc).
pub fn ingress_selectors(s: &mut impl NetpolSuite) {
    s.case("should support a 'default-deny-ingress' policy");
    s.create(
        X,
        "deny-ingress",
        "{podSelector: {}, policyTypes: [Ingress]}",
    );
    let mut r = all();
    r.expect_peer(Peer::ANY, Peer::ns(X), false);
    s.check(80, "TCP", &r);
    // weir addition: the same table over IPv6
    s.check_ipv6(80, "TCP", &r);

    s.case("should support a 'default-deny-all' policy");
    s.create(
        X,
        "deny-all",
        "{podSelector: {}, policyTypes: [Ingress, Egress]}",
    );
    let mut r = all();
    r.expect_peer(Peer::ANY, Peer::ns(X), false)
        .expect_peer(Peer::ns(X), Peer::ANY, false);
    s.check(80, "TCP", &r);

    s.case("should enforce policy to allow traffic from pods within server namespace based on PodSelector");
    s.create(
        X,
        "x-a-allows-x-b",
        "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress], ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]}",
    );
    let mut r = all();
    r.expect_all_ingress("x/a", false)
        .expect("x/b", "x/a", true);
    s.check(80, "TCP", &r);

    s.case("should enforce policy to allow ingress traffic for a target");
    s.create(X, "deny-all", "{podSelector: {}, policyTypes: [Ingress]}");
    s.create(
        X,
        "allow-all-to-a",
        "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress], ingress: [{from: [{podSelector: {}, namespaceSelector: {}}]}]}",
    );
    let mut r = all();
    r.expect_all_ingress("x/a", true)
        .expect_all_ingress("x/b", false)
        .expect_all_ingress("x/c", false);
    s.check(80, "TCP", &r);

    s.case("should enforce policy to allow ingress traffic from pods in all namespaces");
    s.create(
        X,
        "allow-from-another-ns",
        "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress], ingress: [{from: [{namespaceSelector: {matchLabels: {}}}]}]}",
    );
    s.check(80, "TCP", &all());

    s.case("should enforce policy to allow traffic only from a different namespace, based on NamespaceSelector");
    s.create(
        X,
        "allow-client-a-via-ns-selector",
        "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress], ingress: [{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}}]}]}",
    );
    let mut r = all();
    r.expect_peer(Peer::ns(X), Peer::pod(X, "a"), false)
        .expect_peer(Peer::ns(Z), Peer::pod(X, "a"), false);
    s.check(80, "TCP", &r);

    s.case("should enforce policy based on PodSelector with MatchExpressions");
    s.create(
        X,
        "x-a-allows-x-b",
        "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress], ingress: [{from: [{podSelector: {matchExpressions: [{key: pod, operator: In, values: [b]}]}}]}]}",
    );
    let mut r = all();
    r.expect_all_ingress("x/a", false)
        .expect("x/b", "x/a", true);
    s.check(80, "TCP", &r);

    s.case("should enforce policy based on NamespaceSelector with MatchExpressions");
    s.create(
        X,
        "allow-ns-y-match-selector",
        "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress], ingress: [{from: [{namespaceSelector: {matchExpressions: [{key: kubernetes.io/metadata.name, operator: In, values: [y]}]}}]}]}",
    );
    let mut r = all();
    r.expect_peer(Peer::ns(X), Peer::pod(X, "a"), false)
        .expect_peer(Peer::ns(Z), Peer::pod(X, "a"), false);
    s.check(80, "TCP", &r);

    s.case("should enforce policy based on PodSelector or NamespaceSelector");
    s.create(
        X,
        "allow-ns-y-match-selector",
        "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress], ingress: [{from: [{namespaceSelector: {matchExpressions: [{key: kubernetes.io/metadata.name, operator: NotIn, values: [x]}]}}, {podSelector: {matchLabels: {pod: b}}}]}]}",
    );
    let mut r = all();
    r.expect("x/c", "x/a", false);
    s.check(80, "TCP", &r);

    s.case("should enforce policy based on PodSelector and NamespaceSelector");
    s.create(
        X,
        "allow-ns-y-podselector-and-nsselector",
        "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress], ingress: [{from: [{namespaceSelector: {matchExpressions: [{key: kubernetes.io/metadata.name, operator: NotIn, values: [x]}]}, podSelector: {matchLabels: {pod: b}}}]}]}",
    );
    let mut r = all();
    r.expect_all_ingress("x/a", false)
        .expect("y/b", "x/a", true)
        .expect("z/b", "x/a", true);
    s.check(80, "TCP", &r);

    s.case("should enforce policy based on Multiple PodSelectors and NamespaceSelectors");
    s.create(
        X,
        "allow-ns-y-z-pod-b-c",
        "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress], ingress: [{from: [{namespaceSelector: {matchExpressions: [{key: kubernetes.io/metadata.name, operator: NotIn, values: [x]}]}, podSelector: {matchExpressions: [{key: pod, operator: In, values: [b, c]}]}}]}]}",
    );
    let mut r = all();
    r.expect_peer(Peer::ns(X), Peer::pod(X, "a"), false)
        .expect("y/a", "x/a", false)
        .expect("z/a", "x/a", false);
    s.check(80, "TCP", &r);

    s.case("should enforce policy based on any PodSelectors");
    s.create(
        X,
        "allow-ns-x-pod-b-c",
        "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress], ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}, {podSelector: {matchLabels: {pod: c}}}]}]}",
    );
    let mut r = all();
    r.expect_all_ingress("x/a", false)
        .expect("x/b", "x/a", true)
        .expect("x/c", "x/a", true);
    s.check(80, "TCP", &r);

    s.case("should enforce policy to allow traffic only from a pod in a different namespace based on PodSelector and NamespaceSelector");
    s.create(
        X,
        "allow-ns-y-pod-a-via-namespace-pod-selector",
        "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress], ingress: [{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}, podSelector: {matchLabels: {pod: a}}}]}]}",
    );
    let mut r = all();
    r.expect_all_ingress("x/a", false)
        .expect("y/a", "x/a", true);
    s.check(80, "TCP", &r);

    s.case("should deny ingress from pods on other namespaces");
    s.create(
        X,
        "deny-empty-policy",
        "{podSelector: {}, policyTypes: [Ingress], ingress: [{from: [{podSelector: {matchLabels: {}}}]}]}",
    );
    let mut r = all();
    r.expect_peer(Peer::ns(Y), Peer::ns(X), false)
        .expect_peer(Peer::ns(Z), Peer::ns(X), false);
    s.check(80, "TCP", &r);

    s.case("should enforce policy to allow traffic based on NamespaceSelector with MatchLabels using default ns label");
    s.create(
        X,
        "allow-client-a-via-ns-selector-for-immutable-ns-label",
        "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress], ingress: [{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}}]}]}",
    );
    let mut r = all();
    r.expect_peer(Peer::ns(X), Peer::pod(X, "a"), false)
        .expect_peer(Peer::ns(Z), Peer::pod(X, "a"), false);
    s.check(80, "TCP", &r);
}

/// An upstream case group (see the module doc).
pub fn ports_and_protocols(s: &mut impl NetpolSuite) {
    s.case("should enforce policy based on Ports");
    s.create(
        X,
        "allow-client-a-via-ns-selector",
        "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress], ingress: [{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}}], ports: [{port: 81, protocol: TCP}]}]}",
    );
    let mut r = all();
    r.expect_peer(Peer::ns(X), Peer::pod(X, "a"), false)
        .expect_peer(Peer::ns(Y), Peer::pod(X, "a"), true)
        .expect_peer(Peer::ns(Z), Peer::pod(X, "a"), false);
    s.check(81, "TCP", &r);

    s.case("should enforce multiple, stacked policies with overlapping podSelectors");
    let port_policy = |p: u16| {
        format!("{{podSelector: {{matchLabels: {{pod: a}}}}, policyTypes: [Ingress], ingress: [{{from: [{{namespaceSelector: {{matchLabels: {{kubernetes.io/metadata.name: y}}}}}}], ports: [{{port: {p}, protocol: TCP}}]}}]}}")
    };
    s.create(X, "allow-client-a-via-ns-selector", &port_policy(81));
    let mut allow = all();
    allow
        .expect_peer(Peer::ns(X), Peer::pod(X, "a"), false)
        .expect_peer(Peer::ns(Y), Peer::pod(X, "a"), true)
        .expect_peer(Peer::ns(Z), Peer::pod(X, "a"), false);
    s.check(81, "TCP", &allow);
    let mut deny = all();
    deny.expect_all_ingress("x/a", false);
    s.check(80, "TCP", &deny);
    s.create(X, "allow-client-a-via-ns-selector-80", &port_policy(80));
    s.check(80, "TCP", &allow);

    s.case("should support allow-all policy");
    s.create(
        X,
        "allow-all",
        "{podSelector: {matchLabels: {}}, policyTypes: [Ingress], ingress: [{}]}",
    );
    s.check(80, "TCP", &all());
    s.check(81, "TCP", &all());

    s.case("should allow ingress access on one named port");
    s.create(
        X,
        "allow-all",
        "{podSelector: {matchLabels: {}}, policyTypes: [Ingress], ingress: [{ports: [{port: serve-81-tcp}]}]}",
    );
    s.check(81, "TCP", &all());
    let mut r = all();
    r.expect_peer(Peer::ANY, Peer::ns(X), false);
    s.check(80, "TCP", &r);

    s.case("should allow ingress access from namespace on one named port");
    s.create(
        X,
        "allow-client-a-via-ns-selector-80",
        "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress], ingress: [{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}}], ports: [{port: serve-80-tcp, protocol: TCP}]}]}",
    );
    let mut r = all();
    r.expect_peer(Peer::ns(X), Peer::pod(X, "a"), false)
        .expect_peer(Peer::ns(Z), Peer::pod(X, "a"), false);
    s.check(80, "TCP", &r);
    let mut r = all();
    r.expect_all_ingress("x/a", false);
    s.check(81, "TCP", &r);

    s.case("should allow egress access on one named port");
    s.create(
        X,
        "allow-egress",
        "{podSelector: {matchLabels: {}}, policyTypes: [Egress], egress: [{ports: [{port: serve-80-tcp}]}]}",
    );
    s.check(80, "TCP", &all());
    let mut r = all();
    r.expect_peer(Peer::ns(X), Peer::ANY, false);
    s.check(81, "TCP", &r);

    s.case("should enforce ingress policy allowing any port traffic to a server on a specific protocol");
    s.create(
        X,
        "allow-ingress-by-proto",
        "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress], ingress: [{ports: [{protocol: TCP}]}]}",
    );
    s.check(80, "TCP", &all());
    let mut r = all();
    r.expect_peer(Peer::ANY, Peer::pod(X, "a"), false);
    s.check(80, "UDP", &r);

    s.case(
        "should enforce multiple ingress policies with ingress allow-all policy taking precedence",
    );
    s.create(
        X,
        "allow-ingress-port-80",
        "{podSelector: {matchLabels: {}}, policyTypes: [Ingress], ingress: [{ports: [{port: 80}]}]}",
    );
    let mut r = all();
    r.expect_peer(Peer::ANY, Peer::ns(X), false);
    s.check(81, "TCP", &r);
    s.create(
        X,
        "allow-ingress",
        "{podSelector: {matchLabels: {}}, policyTypes: [Ingress], ingress: [{}]}",
    );
    s.check(81, "TCP", &all());

    s.case("should not mistakenly treat 'protocol: SCTP' as 'protocol: TCP', even if the plugin doesn't support SCTP");
    s.create(
        X,
        "deny-ingress",
        "{podSelector: {}, policyTypes: [Ingress]}",
    );
    s.create(
        X,
        "allow-only-sctp-ingress-on-port-81",
        "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress], ingress: [{ports: [{port: 81, protocol: SCTP}]}]}",
    );
    let mut r = all();
    r.expect_peer(Peer::ANY, Peer::ns(X), false);
    s.check(81, "TCP", &r);

    s.case("should properly isolate pods that are selected by a policy allowing SCTP, even if the plugin doesn't support SCTP");
    s.create(
        X,
        "allow-only-sctp-ingress-on-port-80",
        "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress], ingress: [{ports: [{port: 80, protocol: SCTP}]}]}",
    );
    let mut r = all();
    r.expect_all_ingress("x/a", false);
    s.check(81, "TCP", &r);

    s.case("should not allow access by TCP when a policy specifies only UDP");
    s.create(
        X,
        "allow-only-udp-ingress-on-port-81",
        "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress], ingress: [{ports: [{port: 81, protocol: UDP}]}]}",
    );
    let mut r = all();
    r.expect_all_ingress("x/a", false);
    s.check(81, "TCP", &r);
    // weir addition: the UDP the policy names does pass.
    s.check(81, "UDP", &all());

    s.case("endPort: should enforce policy based on a port range (weir addition, after 'based on Ports')");
    s.create(
        X,
        "allow-y-80-81",
        "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress], ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}], ports: [{port: 80, endPort: 81, protocol: TCP}]}]}",
    );
    let mut r = all();
    r.expect_peer(Peer::ns(X), Peer::pod(X, "a"), false)
        .expect_peer(Peer::ns(Z), Peer::pod(X, "a"), false);
    s.check(80, "TCP", &r);
    s.check(81, "TCP", &r);
    s.create(
        X,
        "allow-y-80-81",
        "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress], ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}], ports: [{port: 81, endPort: 90, protocol: TCP}]}]}",
    );
    s.check(81, "TCP", &r);
    let mut r = all();
    r.expect_all_ingress("x/a", false);
    s.check(80, "TCP", &r);

    s.case("UDP: should support a 'default-deny-ingress' policy");
    s.create(X, "deny-all", "{podSelector: {}, policyTypes: [Ingress]}");
    let mut r = all();
    r.expect_peer(Peer::ANY, Peer::ns(X), false);
    s.check(80, "UDP", &r);

    s.case("UDP: should enforce policy based on Ports");
    s.create(
        X,
        "allow-ingress-on-port-81-ns-x",
        "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress], ingress: [{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}}], ports: [{port: 81, protocol: UDP}]}]}",
    );
    let mut r = all();
    r.expect_peer(Peer::ns(X), Peer::pod(X, "a"), false)
        .expect_peer(Peer::ns(Z), Peer::pod(X, "a"), false);
    s.check(81, "UDP", &r);

    s.case("UDP: should enforce policy to allow traffic only from a pod in a different namespace based on PodSelector and NamespaceSelector");
    s.create(
        X,
        "allow-ns-y-pod-a-via-namespace-pod-selector",
        "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress], ingress: [{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}, podSelector: {matchLabels: {pod: a}}}]}]}",
    );
    let mut r = all();
    r.expect_all_ingress("x/a", false)
        .expect("y/a", "x/a", true);
    s.check(80, "UDP", &r);
    // weir addition: the same table over IPv6
    s.check_ipv6(80, "UDP", &r);
}

/// An upstream case group (see the module doc).
pub fn egress_and_ipblocks(s: &mut impl NetpolSuite) {
    s.case("should deny egress from pods based on PodSelector");
    s.create(
        X,
        "deny-egress-pod-a",
        "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Egress]}",
    );
    let mut r = all();
    r.expect_all_egress("x/a", false);
    s.check(80, "TCP", &r);

    s.case("should deny egress from all pods in a namespace");
    s.create(
        X,
        "deny-egress-ns-x",
        "{podSelector: {}, policyTypes: [Egress]}",
    );
    let mut r = all();
    r.expect_peer(Peer::ns(X), Peer::ANY, false);
    s.check(80, "TCP", &r);

    s.case("should work with Ingress, Egress specified together");
    s.create(
        X,
        "allow-client-a-via-pod-selector",
        "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Egress, Ingress], ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}], egress: [{ports: [{port: 80}]}]}",
    );
    let mut r80 = all();
    r80.expect_all_ingress("x/a", false)
        .expect("x/b", "x/a", true);
    s.check(80, "TCP", &r80);
    let mut r81 = all();
    r81.expect_all_ingress("x/a", false)
        .expect_all_egress("x/a", false)
        .expect("x/b", "x/a", true);
    s.check(81, "TCP", &r81);

    s.case("should support denying of egress traffic on the client side (even if the server explicitly allows this traffic)");
    s.create(
        X,
        "allow-to-ns-y-pod-a",
        "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Egress], egress: [{to: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}, podSelector: {matchLabels: {pod: a}}}]}]}",
    );
    let from_xa = "{podSelector: {matchLabels: {pod: PODNAME}}, policyTypes: [Ingress], ingress: [{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: x}}, podSelector: {matchLabels: {pod: a}}}]}]}";
    s.create(
        Y,
        "allow-from-xa-on-ya-match-selector",
        &from_xa.replace("PODNAME", "a"),
    );
    s.create(
        Y,
        "allow-from-xa-on-yb-match-selector",
        &from_xa.replace("PODNAME", "b"),
    );
    let mut r = all();
    r.expect_peer(Peer::pod(X, "a"), Peer::ANY, false)
        .expect_peer(Peer::ANY, Peer::pod(Y, "a"), false)
        .expect_peer(Peer::pod(X, "a"), Peer::pod(Y, "a"), true)
        .expect_peer(Peer::ANY, Peer::pod(Y, "b"), false);
    s.check(80, "TCP", &r);

    s.case("should enforce egress policy allowing traffic to a server in a different namespace based on PodSelector and NamespaceSelector");
    s.create(
        X,
        "allow-to-ns-y-pod-a",
        "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Egress], egress: [{to: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}, podSelector: {matchLabels: {pod: a}}}]}]}",
    );
    let mut r = all();
    r.expect_all_egress("x/a", false).expect("x/a", "y/a", true);
    s.check(80, "TCP", &r);

    s.case(
        "should enforce multiple egress policies with egress allow-all policy taking precedence",
    );
    s.create(
        X,
        "allow-egress-port-80",
        "{podSelector: {matchLabels: {}}, policyTypes: [Egress], egress: [{ports: [{port: 80}]}]}",
    );
    let mut r = all();
    r.expect_peer(Peer::ns(X), Peer::ANY, false);
    s.check(81, "TCP", &r);
    s.create(
        X,
        "allow-egress",
        "{podSelector: {matchLabels: {}}, policyTypes: [Egress], egress: [{}]}",
    );
    s.check(81, "TCP", &all());

    s.case("should enforce policies to check ingress and egress policies can be controlled independently based on PodSelector");
    s.create(
        X,
        "allow-egress-for-target",
        "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Egress], egress: [{}]}",
    );
    s.check(80, "TCP", &all());
    s.create(
        X,
        "deny-ingress-via-label-selector",
        "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress]}",
    );
    let mut r = all();
    r.expect_all_ingress("x/a", false);
    s.check(80, "TCP", &r);

    s.case("should enforce policy based on NamespaceSelector with MatchExpressions using default ns label");
    s.create(
        X,
        "allow-ns-y-match-selector-for-immutable-ns-label",
        "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Egress], egress: [{to: [{namespaceSelector: {matchExpressions: [{key: kubernetes.io/metadata.name, operator: NotIn, values: [y]}]}}]}]}",
    );
    let mut r = all();
    r.expect_peer(Peer::pod(X, "a"), Peer::ns(Y), false);
    s.check(80, "TCP", &r);

    // ipBlocks: the pod addresses weir gave the pods.
    let ip = |ns: &str, pod: &str| s.pod_ipv4(ns, pod);
    let yb = ip("y", "b");
    let xb = ip("x", "b");
    // upstream's makeLargeCIDRForIP: the /4 containing the address
    let first = xb
        .split('.')
        .next()
        .and_then(|o| o.parse::<u8>().ok())
        .expect("octet");
    let large = format!("{}.0.0.0/4", first & 0xf0);

    s.case("should allow egress access to server in CIDR block");
    s.create(
        X,
        "allow-client-a-via-cidr-egress-rule",
        &format!("{{podSelector: {{matchLabels: {{pod: a}}}}, policyTypes: [Egress], egress: [{{to: [{{ipBlock: {{cidr: {yb}/32}}}}]}}]}}"),
    );
    let mut r = all();
    r.expect_all_egress("x/a", false).expect("x/a", "y/b", true);
    s.check(80, "TCP", &r);

    s.case("should enforce except clause while egress access to server in CIDR block");
    s.create(
        X,
        "allow-client-a-via-cidr-egress-rule",
        &format!("{{podSelector: {{matchLabels: {{pod: a}}}}, policyTypes: [Egress], egress: [{{to: [{{ipBlock: {{cidr: {large}, except: [{xb}/32]}}}}]}}]}}"),
    );
    let mut r = all();
    r.expect("x/a", "x/b", false);
    s.check(80, "TCP", &r);

    s.case("should ensure an IP overlapping both IPBlock.CIDR and IPBlock.Except is allowed");
    s.create(
        X,
        "allow-client-a-via-cidr-egress-rule",
        &format!("{{podSelector: {{matchLabels: {{pod: a}}}}, policyTypes: [Egress], egress: [{{to: [{{ipBlock: {{cidr: {large}, except: [{xb}/32]}}}}]}}]}}"),
    );
    let mut r = all();
    r.expect("x/a", "x/b", false);
    s.check(80, "TCP", &r);
    // UpdatePolicy: the same policy now allows only x/b
    s.create(
        X,
        "allow-client-a-via-cidr-egress-rule",
        &format!("{{podSelector: {{matchLabels: {{pod: a}}}}, policyTypes: [Egress], egress: [{{to: [{{ipBlock: {{cidr: {xb}/32}}}}]}}]}}"),
    );
    let mut r = all();
    r.expect_all_egress("x/a", false).expect("x/a", "x/b", true);
    s.check(80, "TCP", &r);
}

/// An upstream case group (see the module doc).
pub fn updates_and_labels(s: &mut impl NetpolSuite) {
    s.case("should enforce updated policy");
    s.create(
        X,
        "allow-all-mutate-to-deny-all",
        "{podSelector: {matchLabels: {}}, policyTypes: [Ingress], ingress: [{}]}",
    );
    s.check(81, "TCP", &all());
    s.create(
        X,
        "allow-all-mutate-to-deny-all",
        "{podSelector: {matchLabels: {}}, policyTypes: [Ingress], ingress: []}",
    );
    let mut r = all();
    r.expect_peer(Peer::ANY, Peer::ns(X), false);
    s.check(81, "TCP", &r);

    s.case("should allow ingress access from updated namespace");
    s.create(
        X,
        "allow-client-a-via-ns-selector",
        "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress], ingress: [{from: [{namespaceSelector: {matchLabels: {ns2: updated}}}]}]}",
    );
    let mut r = all();
    r.expect_all_ingress("x/a", false);
    s.check(80, "TCP", &r);
    s.label_namespace(Y, &[("ns2", "updated")]);
    let mut r = all();
    r.expect_all_ingress("x/a", false)
        .expect_peer(Peer::ns(Y), Peer::ANY, true);
    s.check(80, "TCP", &r);

    s.case("should allow ingress access from updated pod");
    s.create(
        X,
        "allow-client-a-via-pod-selector",
        "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress], ingress: [{from: [{podSelector: {matchLabels: {pod: b, pod2: updated}}}]}]}",
    );
    let mut r = all();
    r.expect_all_ingress("x/a", false);
    s.check(80, "TCP", &r);
    s.label_pod(X, "b", &[("pod2", "updated")]);
    r.expect("x/b", "x/a", true);
    s.check(80, "TCP", &r);

    s.case("should deny ingress access to updated pod");
    s.create(
        X,
        "deny-ingress-via-label-selector",
        "{podSelector: {matchLabels: {target: isolated}}, policyTypes: [Ingress]}",
    );
    s.check(80, "TCP", &all());
    s.label_pod(X, "a", &[("target", "isolated")]);
    let mut r = all();
    r.expect_all_ingress("x/a", false);
    s.check(80, "TCP", &r);

    s.case("should stop enforcing policies after they are deleted");
    s.create(
        X,
        "deny-all",
        "{podSelector: {}, policyTypes: [Ingress, Egress]}",
    );
    let mut r = all();
    r.expect_peer(Peer::ns(X), Peer::ANY, false)
        .expect_peer(Peer::ANY, Peer::ns(X), false);
    s.check(80, "TCP", &r);
    s.delete_all_policies();
    s.check(80, "TCP", &all());

    s.case("harness self-check: a wrong expectation is reported (weir addition)");
    s.create(
        X,
        "deny-ingress",
        "{podSelector: {}, policyTypes: [Ingress]}",
    );
    let err = s
        .try_check("self-check", 80, "TCP", &all())
        .expect_err("a default-deny namespace matched an all-connected table");
    assert!(
        err.contains("x/a") && err.contains("expected connected, got blocked"),
        "{err}"
    );

    s.case("labels restored: the previous cases' label changes are undone (weir addition)");
    // After the resets, a selector on the updated labels selects nothing again.
    s.create(
        X,
        "allow-updated",
        "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress], ingress: [{from: [{namespaceSelector: {matchLabels: {ns2: updated}}}, {podSelector: {matchLabels: {pod2: updated}}}]}]}",
    );
    s.create(
        X,
        "isolate-target",
        "{podSelector: {matchLabels: {target: isolated}}, policyTypes: [Ingress]}",
    );
    let mut r = all();
    r.expect_all_ingress("x/a", false);
    s.check(80, "TCP", &r);
}
