//! WeirPolicy `grpc:` rules: parsed into HTTP rules (`POST
//! /package.Service/Method`), alongside `http:` rules, with clear errors.
use weir_dataplane::l7::{HttpRuleSet, PathMatchSpec};
use weir_policy::parse_str;

fn policy(rules: &str) -> String {
    format!(
        "apiVersion: weir.dev/v1alpha1
kind: WeirPolicy
metadata: {{name: g, namespace: prod}}
spec:
  ingress:
  - action: Allow
    ports: [{{protocol: TCP, port: 50051}}]
{rules}"
    )
}

#[test]
fn grpc_rules_become_post_paths() {
    let p = parse_str(
        &policy(
            "    grpc:
    - {service: pkg.Svc, method: Get}
    - {service: health.v1.Health}
    http:
    - {method: GET, path: {prefix: /public}}
",
        ),
        "t.yaml",
    )
    .unwrap();
    let h = p[0].ingress[0].http.as_ref().unwrap();
    assert_eq!(h.rules.len(), 3);
    assert_eq!(h.rules[0].method.as_deref(), Some("POST"));
    assert_eq!(
        h.rules[0].path,
        Some(PathMatchSpec::Exact("/pkg.Svc/Get".into()))
    );
    assert_eq!(
        h.rules[1].path,
        Some(PathMatchSpec::Prefix("/health.v1.Health/".into()))
    );
    assert_eq!(h.rules[2].method.as_deref(), Some("GET"));
    HttpRuleSet::compile(h).unwrap();
}

#[test]
fn bad_grpc_rules_are_clear_errors() {
    for (rules, want) in [
        ("    grpc: [{method: Get}]\n", "grpc[0].service: required"),
        (
            "    grpc: [{service: 'pkg/Svc'}]\n",
            "is not a gRPC service name",
        ),
        (
            "    grpc: [{service: pkg.Svc, method: 'Get/x'}]\n",
            "is not a gRPC method name",
        ),
        ("    grpc: [{service: pkg.Svc, verb: Get}]\n", "verb"),
        ("    grpc: []\n", "an empty list would deny every request"),
    ] {
        let e = parse_str(&policy(rules), "t.yaml").unwrap_err().to_string();
        assert!(e.contains(want), "{rules}: {e}");
    }
}
