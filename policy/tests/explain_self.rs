//! `weir explain` from a pod to itself: the traffic goes to the pod's own
//! address, its kernel delivers it on loopback, weir never sees it, so no
//! policy judges it — the answer says so instead of a verdict of the
//! policies (which `weir probe` would contradict).
mod common;

use common::*;
use weir_topo::Protocol;

/// `prod/web` isolated for ingress and egress with no rule: every other
/// flow to or from it is denied.
const ISOLATE: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: isolate, namespace: prod}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Ingress, Egress]
";

fn input() -> weir_policy::PolicyInput {
    let mut i = cluster();
    i.policies = weir_policy::parse_str(ISOLATE, "t.yaml").unwrap();
    i
}

#[test]
fn a_pod_to_itself_is_not_judged_and_connects() {
    let i = input();
    let e =
        weir_policy::explain(&i, ("prod", "web"), ("prod", "web"), Protocol::Tcp, 8080).unwrap();
    assert!(e.allowed, "{e}");
    assert!(e.same_pod);
    for side in [&e.egress, &e.ingress] {
        assert!(side.text.contains("never leaves the pod"), "{}", side.text);
        assert!(side.rule.is_none());
    }
    let text = e.to_string();
    assert!(
        text.starts_with("prod/web -> prod/web TCP/8080: ALLOWED (the same pod"),
        "{text}"
    );
    assert!(!text.contains("DENIED"), "{text}");
    let json = serde_json::to_value(&e).unwrap();
    assert_eq!(json["same_pod"], true);
    assert_eq!(json["allowed"], true);

    // The same policy still denies the pod's traffic to and from others.
    let out =
        weir_policy::explain(&i, ("prod", "db"), ("prod", "web"), Protocol::Tcp, 8080).unwrap();
    assert!(!out.allowed, "{out}");
    assert!(!out.same_pod);
    assert!(serde_json::to_value(&out)
        .unwrap()
        .get("same_pod")
        .is_none());
    let out =
        weir_policy::explain(&i, ("prod", "web"), ("prod", "db"), Protocol::Tcp, 5432).unwrap();
    assert!(!out.allowed, "{out}");
}

#[test]
fn dns_to_itself_is_not_judged_either() {
    let e = weir_policy::explain::explain_dns(
        &input(),
        ("prod", "web"),
        ("prod", "web"),
        Protocol::Udp,
        53,
        "example.com",
    )
    .unwrap();
    assert!(e.allowed && e.same_pod);
    let d = e.dns.expect("dns part");
    assert!(d.allowed);
    assert!(d.text.contains("never leaves the pod"), "{}", d.text);
}
