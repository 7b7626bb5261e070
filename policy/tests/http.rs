//! WeirPolicy `http:` (L7 rules): parsing, compiling into `PolicySpec::http`
//! and `Decision::l7`, union semantics in the namespace tier.
mod common;

use common::*;
use weir_dataplane::l7::{HttpRuleSetSpec, HttpRuleSpec, PathMatchSpec};
use weir_dataplane::policy::{Action, CompiledPolicy};
use weir_policy::{compile, parse_str};

/// The founding paper's scenario, on the test cluster: to prod/web on TCP
/// 8080, only prod/api, only `GET /public...`.
const PAPER: &str = "apiVersion: weir.dev/v1alpha1
kind: WeirPolicy
metadata: {name: web-l7, namespace: prod}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - action: Allow
    from: [{podSelector: {matchLabels: {app: api}}}]
    ports: [{protocol: TCP, port: 8080}]
    http:
    - method: GET
      path: {prefix: /public}
";

#[test]
fn http_parses_into_the_rule() {
    let p = parse_str(
        "apiVersion: weir.dev/v1alpha1
kind: WeirPolicy
metadata: {name: w, namespace: prod}
spec:
  ingress:
  - action: Allow
    http:
    - method: GET
      path: {prefix: /public}
      host: '*.example.com'
      headers: [{name: X-Token, value: abc}, {name: X-Trace}]
    - path: {regex: '/v[0-9]+/items'}
    - path: {exact: /healthz}
",
        "t.yaml",
    )
    .unwrap();
    let h = p[0].ingress[0].http.as_ref().unwrap();
    assert_eq!(h.rules.len(), 3);
    assert_eq!(h.rules[0].method.as_deref(), Some("GET"));
    assert_eq!(
        h.rules[0].path,
        Some(PathMatchSpec::Prefix("/public".into()))
    );
    assert_eq!(h.rules[0].host.as_deref(), Some("*.example.com"));
    assert_eq!(h.rules[0].headers.len(), 2);
    assert_eq!(h.rules[0].headers[1].value, None);
    assert_eq!(
        h.rules[1].path,
        Some(PathMatchSpec::Regex("/v[0-9]+/items".into()))
    );
    assert_eq!(
        h.rules[2].path,
        Some(PathMatchSpec::Exact("/healthz".into()))
    );
}

#[test]
fn the_paper_scenario_compiles_to_an_l7_allow() {
    let w = world(PAPER);
    let j = w.judge("prod/api", "prod/web", TCP, 8080);
    assert!(j.allowed);
    let set = j.ingress.l7.expect("l7 set on the allow");
    let h = w.policy.http_set(set).unwrap();
    assert_eq!(h.len(), 1);
    assert!(w.policy.rule_has_l7(j.ingress.rule));
    assert!(w
        .ingress("prod/api", "prod/web", TCP, 8080)
        .contains("HTTP rules"));
    // Other sources and ports: isolated, denied at L3/L4.
    assert!(!w.allowed("prod/db", "prod/web", TCP, 8080));
    assert!(!w.allowed("prod/api", "prod/web", TCP, 8081));
    // Egress of prod/api is not restricted, and other pods have no L7.
    assert_eq!(w.judge("prod/api", "prod/db", TCP, 5432).ingress.l7, None);
    assert_eq!(j.egress.l7, None);
    // The spec carries the set as plain data.
    let mut input = cluster();
    input.policies = parse_str(PAPER, "t.yaml").unwrap();
    let spec = compile(&input, 1, "n1").unwrap();
    assert_eq!(
        spec.http,
        vec![HttpRuleSetSpec {
            rules: vec![HttpRuleSpec {
                method: Some("GET".into()),
                path: Some(PathMatchSpec::Prefix("/public".into())),
                ..HttpRuleSpec::default()
            }],
            tls: vec![],
        }]
    );
    // Round trip through JSON (the snapshot's wire form).
    let back: weir_dataplane::policy::PolicySpec =
        serde_json::from_str(&serde_json::to_string(&spec).unwrap()).unwrap();
    assert_eq!(back, spec);
    CompiledPolicy::build(back).unwrap();
}

#[test]
fn a_plain_allow_that_also_matches_lifts_the_l7_restriction() {
    // NetworkPolicy union semantics: another namespace-tier allow without
    // HTTP rules admits the flow unrestricted.
    let w = world(&format!(
        "{PAPER}---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: all-from-api, namespace: prod}}
spec:
  podSelector: {{matchLabels: {{app: web}}}}
  ingress: [{{from: [{{podSelector: {{matchLabels: {{app: api}}}}}}]}}]
"
    ));
    let j = w.judge("prod/api", "prod/web", TCP, 8080);
    assert!(j.allowed);
    assert_eq!(j.ingress.l7, None);
    assert!(!w.policy.rule_has_l7(j.ingress.rule));
    assert!(w
        .ingress("prod/api", "prod/web", TCP, 8080)
        .contains("networkpolicies/prod/all-from-api"));
}

#[test]
fn two_l7_allows_that_match_take_the_union_of_their_rules() {
    let w = world(&format!(
        "{PAPER}---
apiVersion: weir.dev/v1alpha1
kind: WeirPolicy
metadata: {{name: web-l7-b, namespace: prod}}
spec:
  podSelector: {{matchLabels: {{app: web}}}}
  ingress:
  - action: Allow
    from: [{{podSelector: {{matchLabels: {{app: api}}}}}}]
    http: [{{method: POST, path: {{exact: /submit}}}}]
"
    ));
    let j = w.judge("prod/api", "prod/web", TCP, 8080);
    let set = j.ingress.l7.unwrap();
    assert_eq!(w.policy.http_set(set).unwrap().len(), 2);
    // Port 9000: only the second policy's rule matches (no ports: any).
    let j = w.judge("prod/api", "prod/web", TCP, 9000);
    assert_eq!(w.policy.http_set(j.ingress.l7.unwrap()).unwrap().len(), 1);
}

#[test]
fn a_deny_still_beats_an_l7_allow() {
    let w = world(&format!(
        "{PAPER}---
apiVersion: weir.dev/v1alpha1
kind: WeirPolicy
metadata: {{name: no-api, namespace: prod}}
spec:
  podSelector: {{matchLabels: {{app: web}}}}
  ingress: [{{action: Deny, from: [{{podSelector: {{matchLabels: {{app: api}}}}}}]}}]
"
    ));
    let j = w.judge("prod/api", "prod/web", TCP, 8080);
    assert!(!j.allowed);
    assert_eq!(j.ingress.action, Action::Deny);
    assert_eq!(j.ingress.l7, None);
}
