//! NetworkPolicy semantics and the precedence between tiers, judged with the
//! compiled tables.
mod common;
use common::*;

const DENY_ALL_INGRESS_PROD: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: prod}
spec:
  podSelector: {}
"#;

#[test]
fn no_policy_allows_everything() {
    let w = world("");
    assert!(w.allowed("prod/web", "prod/db", TCP, 5432));
    assert!(w.allowed("8.8.8.8", "prod/db", UDP, 1));
    assert_eq!(
        w.ingress("8.8.8.8", "prod/db", TCP, 1),
        "allow by default allow (no policy decided)"
    );
}

#[test]
fn policy_types_default_ingress_only_and_absent_list_isolates() {
    let w = world(DENY_ALL_INGRESS_PROD);
    assert!(!w.allowed("dev/web", "prod/db", TCP, 5432));
    assert!(!w.allowed("prod/web", "prod/db", TCP, 5432));
    assert_eq!(
        w.ingress("prod/web", "prod/db", TCP, 5432),
        "deny by implicit deny (isolated by a namespace policy)"
    );
    // egress not isolated (no egress rules, no policyTypes)
    assert!(w.allowed("prod/web", "dev/web", TCP, 9090));
    // other namespaces untouched
    assert!(w.allowed("prod/web", "default/x", TCP, 1));
}

#[test]
fn empty_ingress_list_with_policy_types_isolates_and_empty_rule_allows_all() {
    let w = world(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: prod}
spec:
  podSelector: {matchLabels: {app: db}}
  policyTypes: [Ingress, Egress]
  ingress: []
  egress: [{}]
"#,
    );
    assert!(!w.allowed("prod/web", "prod/db", TCP, 5432));
    assert!(
        w.allowed("prod/db", "8.8.8.8", UDP, 53),
        "egress: [{{}}] allows all"
    );
    assert!(
        w.allowed("prod/web", "prod/api", TCP, 1),
        "podSelector limits the subject"
    );
    let w = world(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: prod}
spec:
  podSelector: {}
  ingress: [{}]
"#,
    );
    assert!(w.allowed("8.8.8.8", "prod/db", TCP, 5432));
}

#[test]
fn egress_type_defaults_on_when_egress_rules_exist() {
    let w = world(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: prod}
spec:
  podSelector: {matchLabels: {app: web}}
  egress:
  - to: [{podSelector: {matchLabels: {app: db}}}]
"#,
    );
    assert!(w.allowed("prod/web", "prod/db", TCP, 5432));
    assert!(!w.allowed("prod/web", "prod/api", TCP, 80));
    assert!(
        !w.allowed("prod/api", "prod/web", TCP, 8080),
        "Ingress is isolated too"
    );
    assert!(w.allowed("prod/api", "prod/db", TCP, 5432));
}

#[test]
fn pod_and_namespace_selector_in_one_peer_is_and_separate_peers_or() {
    let and = world(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: prod}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {env: dev}}
      podSelector: {matchLabels: {app: web}}
"#,
    );
    assert!(and.allowed("dev/web", "prod/db", TCP, 5432));
    assert!(!and.allowed("prod/web", "prod/db", TCP, 5432));
    let or = world(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: prod}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {env: dev}}
    - podSelector: {matchLabels: {app: web}}
"#,
    );
    assert!(or.allowed("dev/web", "prod/db", TCP, 5432));
    assert!(or.allowed("prod/web", "prod/db", TCP, 5432));
    assert!(!or.allowed("prod/api", "prod/db", TCP, 5432));
    assert!(!or.allowed("default/x", "prod/db", TCP, 5432));
}

#[test]
fn pod_selector_alone_means_own_namespace_and_metadata_name_label() {
    let w = world(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: prod}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from:
    - podSelector: {matchLabels: {app: web}}
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: default}}
"#,
    );
    assert!(w.allowed("prod/web", "prod/db", TCP, 5432));
    assert!(
        !w.allowed("dev/web", "prod/db", TCP, 5432),
        "same labels, other namespace"
    );
    assert!(
        w.allowed("default/x", "prod/db", TCP, 5432),
        "automatic metadata.name label"
    );
}

#[test]
fn match_expressions_operators() {
    let w = world(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: prod}
spec:
  podSelector:
    matchExpressions:
    - {key: app, operator: In, values: [db, api]}
  ingress:
  - from:
    - podSelector:
        matchExpressions:
        - {key: app, operator: NotIn, values: [api]}
        - {key: tier, operator: DoesNotExist}
      namespaceSelector:
        matchExpressions:
        - {key: env, operator: Exists}
"#,
    );
    assert!(w.allowed("prod/web", "prod/db", TCP, 1));
    assert!(w.allowed("dev/web", "prod/api", TCP, 1));
    assert!(
        !w.allowed("default/x", "prod/db", TCP, 1),
        "default has no env label"
    );
    assert!(
        !w.allowed("prod/api", "prod/db", TCP, 1),
        "NotIn api / tier exists"
    );
    assert!(
        w.allowed("default/x", "prod/web", TCP, 1),
        "web not selected"
    );
}

#[test]
fn ports_protocols_end_port_and_named_ports_on_destination() {
    let w = world(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: prod}
spec:
  podSelector: {}
  ingress:
  - ports:
    - {protocol: TCP, port: 80, endPort: 90}
    - {protocol: UDP, port: 53}
    - {protocol: SCTP}
    - {port: http}
"#,
    );
    for (proto, port, want) in [
        (TCP, 79, false),
        (TCP, 80, true),
        (TCP, 85, true),
        (TCP, 90, true),
        (TCP, 91, false),
        (UDP, 53, true),
        (UDP, 80, false),
        (TCP, 53, false),
        (132, 7, true),
        (ICMP, 0, false),
        (TCP, 8080, true), // prod/web's "http"
        (TCP, 9090, false),
    ] {
        assert_eq!(
            w.allowed("8.8.8.8", "prod/web", proto, port),
            want,
            "{proto}/{port}"
        );
    }
    // named port resolves on the destination: prod/db has no "http"
    assert!(!w.allowed("8.8.8.8", "prod/db", TCP, 8080));
    // egress named ports resolve on the destination pod too
    let w = world(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: default}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
  - ports: [{port: http}]
"#,
    );
    assert!(w.allowed("default/x", "prod/web", TCP, 8080));
    assert!(w.allowed("default/x", "dev/web", TCP, 9090));
    assert!(!w.allowed("default/x", "dev/web", TCP, 8080));
    assert!(
        !w.allowed("default/x", "8.8.8.8", TCP, 8080),
        "no named ports outside"
    );
}

#[test]
fn ip_block_with_except() {
    let w = world(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: prod}
spec:
  podSelector: {}
  ingress:
  - from:
    - ipBlock: {cidr: 192.168.0.0/16, except: [192.168.1.0/24]}
  egress:
  - to:
    - ipBlock: {cidr: 0.0.0.0/0, except: [10.0.0.0/8]}
"#,
    );
    assert!(w.allowed("192.168.2.1", "prod/db", TCP, 1));
    assert!(!w.allowed("192.168.1.1", "prod/db", TCP, 1));
    assert!(!w.allowed("172.16.0.1", "prod/db", TCP, 1));
    assert!(w.allowed("prod/db", "8.8.8.8", TCP, 443));
    assert!(
        !w.allowed("prod/db", "dev/web", TCP, 443),
        "10/8 excepted, pod IPs too"
    );
    assert!(!w.allowed("prod/db", "10.9.9.9", TCP, 443));
}

#[test]
fn allows_are_additive_across_policies() {
    let w = world(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a, namespace: prod}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: [{from: [{podSelector: {matchLabels: {app: web}}}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: b, namespace: prod}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: [{from: [{podSelector: {matchLabels: {app: api}}}], ports: [{port: 5432}]}]
"#,
    );
    assert!(w.allowed("prod/web", "prod/db", TCP, 1));
    assert!(w.allowed("prod/api", "prod/db", TCP, 5432));
    assert!(!w.allowed("prod/api", "prod/db", TCP, 1));
}

#[test]
fn node_traffic_is_always_allowed() {
    let w = world(DENY_ALL_INGRESS_PROD);
    assert!(w.allowed("10.0.1.1", "prod/db", TCP, 1));
    assert_eq!(
        w.ingress("10.0.1.1", "prod/db", TCP, 1),
        "allow by node traffic (always allowed)"
    );
}

// ---- precedence ----

const ANP_DENY_WEB_TO_DB: &str = r#"
apiVersion: policy.networking.k8s.io/v1alpha1
kind: AdminNetworkPolicy
metadata: {name: no-web}
spec:
  priority: 10
  subject: {namespaces: {matchLabels: {env: prod}}}
  ingress:
  - action: Deny
    from: [{namespaces: {}}]
    ports: [{portNumber: {protocol: TCP, port: 5432}}]
"#;

const NP_ALLOW_ALL_DB: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-all, namespace: prod}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: [{}]
"#;

#[test]
fn admin_deny_beats_namespace_allow() {
    let w = world(&format!("{ANP_DENY_WEB_TO_DB}---{NP_ALLOW_ALL_DB}"));
    assert!(!w.allowed("prod/web", "prod/db", TCP, 5432));
    assert_eq!(
        w.ingress("prod/web", "prod/db", TCP, 5432),
        "deny by adminnetworkpolicies/no-web ingress[0] (Deny)"
    );
    assert!(w.allowed("prod/web", "prod/db", TCP, 5433));
    assert_eq!(
        w.ingress("prod/web", "prod/db", TCP, 5433),
        "allow by networkpolicies/prod/allow-all ingress[0] (Allow)"
    );
}

#[test]
fn admin_priority_order_and_pass_falls_through() {
    let w = world(
        r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: pass-web}
spec:
  tier: Admin
  priority: 5
  subject: {namespaces: {}}
  ingress:
  - action: Pass
    from: [{pods: {namespaceSelector: {}, podSelector: {matchLabels: {app: web}}}}]
---
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: deny-all}
spec:
  tier: Admin
  priority: 20
  subject: {namespaces: {}}
  ingress:
  - action: Deny
    from: [{namespaces: {}}]
---
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: baseline-deny-web}
spec:
  tier: Baseline
  priority: 1
  subject: {namespaces: {}}
  ingress:
  - action: Deny
    from: [{pods: {namespaceSelector: {matchLabels: {env: dev}}, podSelector: {}}}]
"#,
    );
    // web passes the Admin tier, no NP, baseline denies dev/web only
    assert!(w.allowed("prod/web", "prod/db", TCP, 1));
    assert_eq!(
        w.ingress("prod/web", "prod/db", TCP, 1),
        "allow by default allow (no policy decided)"
    );
    assert!(!w.allowed("dev/web", "prod/db", TCP, 1));
    assert_eq!(
        w.ingress("dev/web", "prod/db", TCP, 1),
        "deny by clusternetworkpolicies/baseline-deny-web ingress[0] (Deny)"
    );
    // non-web hits the priority-20 deny
    assert_eq!(
        w.ingress("prod/api", "prod/db", TCP, 1),
        "deny by clusternetworkpolicies/deny-all ingress[0] (Deny)"
    );
    // world is no pod: no peer matches → default
    assert!(w.allowed("8.8.8.8", "prod/db", TCP, 1));
}

#[test]
fn network_policy_allow_overrides_baseline_deny() {
    let w = world(&format!(
        "{NP_ALLOW_ALL_DB}---{}",
        r#"
apiVersion: policy.networking.k8s.io/v1alpha1
kind: BaselineAdminNetworkPolicy
metadata: {name: default}
spec:
  subject: {namespaces: {}}
  ingress:
  - action: Deny
    from: [{namespaces: {}}]
"#
    ));
    assert!(
        w.allowed("prod/web", "prod/db", TCP, 1),
        "NP allow beats Baseline deny"
    );
    assert!(
        !w.allowed("prod/web", "prod/api", TCP, 1),
        "not selected by the NP: Baseline deny"
    );
    assert_eq!(
        w.ingress("prod/web", "prod/api", TCP, 1),
        "deny by baselineadminnetworkpolicies/default ingress[0] (Deny)"
    );
}

#[test]
fn network_policy_isolation_beats_baseline_allow() {
    let w = world(&format!(
        "{DENY_ALL_INGRESS_PROD}---{}",
        r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: base-allow}
spec:
  tier: Baseline
  priority: 0
  subject: {namespaces: {}}
  ingress:
  - action: Accept
    from: [{namespaces: {}}]
"#
    ));
    assert!(!w.allowed("prod/web", "prod/db", TCP, 1));
    assert_eq!(
        w.ingress("prod/web", "prod/db", TCP, 1),
        "deny by implicit deny (isolated by a namespace policy)"
    );
    assert!(w.allowed("prod/web", "dev/web", TCP, 1));
    assert_eq!(
        w.ingress("prod/web", "dev/web", TCP, 1),
        "allow by clusternetworkpolicies/base-allow ingress[0] (Accept)"
    );
}

#[test]
fn explicit_weir_deny_beats_network_policy_allow() {
    let w = world(&format!(
        "{NP_ALLOW_ALL_DB}---{}",
        r#"
apiVersion: weir.dev/v1alpha1
kind: WeirPolicy
metadata: {name: no-dev, namespace: prod}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - action: Deny
    from: [{namespaceSelector: {matchLabels: {env: dev}}}]
"#
    ));
    assert!(w.allowed("prod/web", "prod/db", TCP, 1));
    assert!(!w.allowed("dev/web", "prod/db", TCP, 1));
    assert_eq!(
        w.ingress("dev/web", "prod/db", TCP, 1),
        "deny by weirpolicies/prod/no-dev ingress[0] (Deny)"
    );
}

#[test]
fn weir_deny_only_policy_does_not_isolate_and_allow_does() {
    let w = world(
        r#"
apiVersion: weir.dev/v1alpha1
kind: WeirPolicy
metadata: {name: d, namespace: prod}
spec:
  podSelector: {}
  ingress:
  - {action: Deny, from: [{podSelector: {matchLabels: {app: api}}}]}
  - {action: Log, from: [{podSelector: {matchLabels: {app: web}}}]}
  egress:
  - {action: Allow, to: [{ipBlock: {cidr: 10.0.0.0/24}}], ports: [{port: 53, protocol: UDP}]}
"#,
    );
    assert!(!w.allowed("prod/api", "prod/db", TCP, 1));
    let j = w.judge("prod/web", "prod/db", TCP, 1);
    assert!(
        j.ingress.passes() && j.ingress.log,
        "Log marks and goes on: {j:?}"
    );
    assert!(
        !j.allowed,
        "prod/web's own egress is isolated by the same policy"
    );
    assert!(
        w.allowed("default/x", "prod/db", TCP, 1),
        "deny-only: not isolated"
    );
    assert!(w.allowed("prod/db", "default/x", UDP, 53));
    assert!(
        !w.allowed("prod/db", "default/x", UDP, 54),
        "an Allow rule isolates egress"
    );
}

#[test]
fn weir_cluster_policy_sits_in_the_admin_tier_by_priority() {
    let w = world(&format!(
        "{ANP_DENY_WEB_TO_DB}---{}",
        r#"
apiVersion: weir.dev/v1alpha1
kind: WeirClusterPolicy
metadata: {name: allow-web-db}
spec:
  priority: 5
  subject: {podSelector: {matchLabels: {app: db}}}
  ingress:
  - action: Allow
    from: [{podSelector: {matchLabels: {app: web}}}]
"#
    ));
    // priority 5 Allow (any namespace's web) beats the ANP's priority 10 Deny
    assert!(w.allowed("prod/web", "prod/db", TCP, 5432));
    assert!(w.allowed("dev/web", "prod/db", TCP, 5432));
    assert!(!w.allowed("prod/api", "prod/db", TCP, 5432));
}

#[test]
fn same_priority_ties_break_by_kind_then_name() {
    let w = world(
        r#"
apiVersion: policy.networking.k8s.io/v1alpha1
kind: AdminNetworkPolicy
metadata: {name: a-deny}
spec:
  priority: 7
  subject: {namespaces: {}}
  ingress: [{action: Deny, from: [{namespaces: {}}]}]
---
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: z-allow}
spec:
  tier: Admin
  priority: 7
  subject: {namespaces: {}}
  ingress: [{action: Accept, from: [{namespaces: {}}]}]
---
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: y-deny}
spec:
  tier: Admin
  priority: 7
  subject: {namespaces: {}}
  ingress: [{action: Deny, from: [{namespaces: {}}]}]
"#,
    );
    // ClusterNetworkPolicy before AdminNetworkPolicy; by name: y-deny first
    assert_eq!(
        w.ingress("prod/web", "prod/db", TCP, 1),
        "deny by clusternetworkpolicies/y-deny ingress[0] (Deny)"
    );
}

#[test]
fn audit_reports_would_drop_and_passes_but_enforced_deny_still_wins() {
    let audit = r#"
apiVersion: weir.dev/v1alpha1
kind: WeirClusterPolicy
metadata: {name: audit-db}
spec:
  priority: 1
  audit: true
  subject: {podSelector: {matchLabels: {app: db}}}
  ingress:
  - {action: Deny, from: [{namespaceSelector: {}}]}
"#;
    let w = world(audit);
    let j = w.judge("prod/web", "prod/db", TCP, 1);
    assert!(j.allowed);
    assert!(j.ingress.audit);
    assert_eq!(
        w.ingress("prod/web", "prod/db", TCP, 1),
        "deny by weirclusterpolicies/audit-db ingress[0] (Deny) [audit: would drop, passes]"
    );
    let w = world(&format!("{audit}---{DENY_ALL_INGRESS_PROD}"));
    let j = w.judge("prod/web", "prod/db", TCP, 1);
    assert!(!j.allowed, "enforced isolation below still drops");
    assert!(!j.ingress.audit);
    // audit-only isolation: would drop, passes
    let w = world(
        r#"
apiVersion: weir.dev/v1alpha1
kind: WeirPolicy
metadata: {name: only-web, namespace: prod}
spec:
  podSelector: {matchLabels: {app: db}}
  audit: true
  ingress: [{action: Allow, from: [{podSelector: {matchLabels: {app: web}}}]}]
"#,
    );
    assert!(w.allowed("prod/api", "prod/db", TCP, 1));
    assert_eq!(
        w.ingress("prod/api", "prod/db", TCP, 1),
        "deny by implicit deny (isolated by a namespace policy) [audit: would drop, passes]"
    );
    assert_eq!(
        w.ingress("prod/web", "prod/db", TCP, 1),
        "allow by weirpolicies/prod/only-web ingress[0] (Allow)"
    );
}

#[test]
fn both_sides_must_allow() {
    let w = world(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: no-egress, namespace: dev}
spec:
  podSelector: {}
  policyTypes: [Egress]
"#,
    );
    let j = w.judge("dev/web", "prod/db", TCP, 1);
    assert!(!j.allowed);
    assert_eq!(j.ingress.action, weir_dataplane::policy::Action::Allow);
    assert_eq!(j.egress.rule, weir_dataplane::policy::RuleId::IMPLICIT_DENY);
}

#[test]
fn explain_names_the_deciding_rules() {
    let mut input = cluster();
    input.policies =
        weir_policy::parse_str(&format!("{ANP_DENY_WEB_TO_DB}---{NP_ALLOW_ALL_DB}"), "t").unwrap();
    let e = weir_policy::explain(
        &input,
        ("prod", "web"),
        ("prod", "db"),
        weir_topo::Protocol::Tcp,
        5432,
    )
    .unwrap();
    assert!(!e.allowed);
    assert_eq!(
        e.to_string(),
        "prod/web -> prod/db TCP/5432: DENIED\n  egress of prod/web: allow by default allow (no policy decided)\n  ingress of prod/db: deny by adminnetworkpolicies/no-web ingress[0] (Deny)\n    overriding: allow by networkpolicies/prod/allow-all ingress[0] (Allow)"
    );
    let json = serde_json::to_value(&e).unwrap();
    assert_eq!(json["ingress"]["rule"]["name"], "no-web");
    assert_eq!(json["ingress"]["verdict"], "deny");
    let e = weir_policy::explain(
        &input,
        ("prod", "web"),
        ("prod", "nope"),
        weir_topo::Protocol::Tcp,
        1,
    );
    assert_eq!(e.unwrap_err().to_string(), "pods/prod/nope: no such pod");
}
