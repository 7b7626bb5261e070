//! Bad input: one line naming object, field and why; nothing applied.
use weir_policy::parse_str;

fn np(spec: &str) -> String {
    format!("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: deny-all, namespace: x}}\nspec:\n{spec}")
}

#[test]
fn errors_are_one_line_with_object_field_and_reason() {
    let cases: Vec<(String, &str)> = vec![
        (
            np("  ingress:\n  - ports:\n    - {port: 1}\n    - {port: 80, endPort: 79}\n"),
            "networkpolicies/x/deny-all: spec.ingress[0].ports[1].endPort: 79 is less than port 80",
        ),
        (
            np("  ingress:\n  - ports: [{port: 70000}]\n"),
            "networkpolicies/x/deny-all: spec.ingress[0].ports[0].port: 70000 is not a port (1-65535)",
        ),
        (
            np("  ingress:\n  - ports: [{port: http, endPort: 90}]\n"),
            "networkpolicies/x/deny-all: spec.ingress[0].ports[0].endPort: may not be set when port is a name",
        ),
        (
            np("  ingress:\n  - ports: [{protocol: ICMP}]\n"),
            "networkpolicies/x/deny-all: spec.ingress[0].ports[0].protocol: unknown protocol \"ICMP\"; expected TCP, UDP or SCTP",
        ),
        (
            np("  podSelector:\n    matchExpressions: [{key: a, operator: Equals, values: [b]}]\n"),
            "networkpolicies/x/deny-all: spec.podSelector.matchExpressions[0].operator: unknown operator \"Equals\"; expected In, NotIn, Exists or DoesNotExist",
        ),
        (
            np("  podSelector:\n    matchExpressions: [{key: a, operator: In}]\n"),
            "networkpolicies/x/deny-all: spec.podSelector.matchExpressions[0].values: must be non-empty for operator In",
        ),
        (
            np("  egress:\n  - to: [{ipBlock: {cidr: 10.0.0.0/33}}]\n"),
            "networkpolicies/x/deny-all: spec.egress[0].to[0].ipBlock.cidr: \"10.0.0.0/33\" is not a CIDR",
        ),
        (
            np("  egress:\n  - to: [{ipBlock: {cidr: 10.0.0.0/8, except: [11.0.0.0/16]}}]\n"),
            "networkpolicies/x/deny-all: spec.egress[0].to[0].ipBlock.except[0]: 11.0.0.0/16 is not strictly inside 10.0.0.0/8",
        ),
        (
            np("  ingress:\n  - from: [{}]\n"),
            "networkpolicies/x/deny-all: spec.ingress[0].from[0]: must set podSelector, namespaceSelector or ipBlock",
        ),
        (
            np("  policyTypes: [Sideways]\n"),
            "networkpolicies/x/deny-all: spec.policyTypes[0]: unknown policy type \"Sideways\"; expected Ingress or Egress",
        ),
        (
            np("  ingress: 5\n"),
            "networkpolicies/x/deny-all: spec.ingress: invalid type: integer `5`, expected a sequence",
        ),
        (
            "apiVersion: weir.dev/v1alpha1\nkind: WeirPolicy\nmetadata: {name: w, namespace: x}\nspec:\n  ingress: [{action: Drop}]\n".into(),
            "weirpolicies/x/w: spec.ingress[0].action: unknown action \"Drop\"; expected Allow, Deny, Pass or Log",
        ),
        (
            "apiVersion: weir.dev/v1alpha1\nkind: WeirPolicy\nmetadata: {name: w, namespace: x}\nspec:\n  ingress: [{from: []}]\n".into(),
            "weirpolicies/x/w: spec.ingress[0].action: required",
        ),
        (
            "apiVersion: weir.dev/v1alpha1\nkind: WeirPolicy\nmetadata: {name: w, namespace: x}\nspec:\n  ingress: [{action: Pass}]\n".into(),
            "weirpolicies/x/w: spec.ingress[0].action: Pass is only meaningful in a WeirClusterPolicy (Admin tier)",
        ),
        (
            "apiVersion: weir.dev/v1alpha1\nkind: WeirPolicy\nmetadata: {name: w, namespace: x}\nspec:\n  ingress: [{action: Deny, ports: [{port: 80}], http: [{method: GET}]}]\n".into(),
            "weirpolicies/x/w: spec.ingress[0].http: HTTP rules are only allowed on an Allow rule",
        ),
        (
            "apiVersion: weir.dev/v1alpha1\nkind: WeirPolicy\nmetadata: {name: w, namespace: x}\nspec:\n  egress: [{action: Allow, http: [{method: GET}]}]\n".into(),
            "weirpolicies/x/w: spec.egress[0].http: HTTP rules are only supported on ingress rules",
        ),
        (
            "apiVersion: weir.dev/v1alpha1\nkind: WeirPolicy\nmetadata: {name: w, namespace: x}\nspec:\n  ingress: [{action: Allow, http: [{method: GET, path: {regex: \"/a(\"}}]}]\n".into(),
            "weirpolicies/x/w: spec.ingress[0].http[0].path: invalid path regex: regex parse error:",
        ),
        (
            "apiVersion: weir.dev/v1alpha1\nkind: WeirPolicy\nmetadata: {name: w, namespace: x}\nspec:\n  ingress: [{action: Allow, http: [{method: GET, verb: POST}]}]\n".into(),
            "weirpolicies/x/w: spec.ingress[0].http[0].verb: unknown field; expected one of method, path, host, headers",
        ),
        (
            "apiVersion: weir.dev/v1alpha1\nkind: WeirPolicy\nmetadata: {name: w, namespace: x}\nspec:\n  ingress: [{action: Allow, http: [{path: {prefix: /a, exact: /b}}]}]\n".into(),
            "weirpolicies/x/w: spec.ingress[0].http[0].path: exactly one of exact, prefix, regex",
        ),
        (
            "apiVersion: weir.dev/v1alpha1\nkind: WeirPolicy\nmetadata: {name: w, namespace: x}\nspec:\n  ingress: [{action: Allow, http: [{method: \"G T\"}]}]\n".into(),
            "weirpolicies/x/w: spec.ingress[0].http[0].method: method \"G T\" is not an HTTP token",
        ),
        (
            "apiVersion: weir.dev/v1alpha1\nkind: WeirPolicy\nmetadata: {name: w, namespace: x}\nspec:\n  ingress: [{action: Allow, http: []}]\n".into(),
            "weirpolicies/x/w: spec.ingress[0].http: an empty list would deny every request; list at least one rule or drop `http`",
        ),
        (
            "apiVersion: weir.dev/v1alpha1\nkind: WeirClusterPolicy\nmetadata: {name: c}\nspec:\n  priority: 1\n  ingress: [{action: Allow, http: [{method: GET}]}]\n".into(),
            "weirclusterpolicies/c: spec.ingress[0].http: HTTP rules are only supported in a WeirPolicy (namespace tier), not yet in a WeirClusterPolicy",
        ),
        (
            "apiVersion: weir.dev/v1alpha1\nkind: WeirClusterPolicy\nmetadata: {name: c}\nspec:\n  subject: {}\n".into(),
            "weirclusterpolicies/c: spec.priority: required",
        ),
        (
            "apiVersion: policy.networking.k8s.io/v1alpha1\nkind: AdminNetworkPolicy\nmetadata: {name: a}\nspec:\n  priority: 1001\n  subject: {namespaces: {}}\n".into(),
            "adminnetworkpolicies/a: spec.priority: 1001 is not in 0-1000",
        ),
        (
            "apiVersion: policy.networking.k8s.io/v1alpha1\nkind: AdminNetworkPolicy\nmetadata: {name: a}\nspec:\n  priority: 1\n  subject: {namespaces: {}, pods: {podSelector: {}}}\n".into(),
            "adminnetworkpolicies/a: spec.subject: exactly one of namespaces or pods must be set",
        ),
        (
            "apiVersion: policy.networking.k8s.io/v1alpha1\nkind: AdminNetworkPolicy\nmetadata: {name: a}\nspec:\n  priority: 1\n  subject: {namespaces: {}}\n  egress: [{action: Allow, to: [{namespaces: {}}], ports: [{portRange: {start: 90, end: 80}}]}]\n".into(),
            "adminnetworkpolicies/a: spec.egress[0].ports[0].portRange.end: 80 is not greater than start 90",
        ),
        (
            "apiVersion: policy.networking.k8s.io/v1alpha1\nkind: BaselineAdminNetworkPolicy\nmetadata: {name: default}\nspec:\n  subject: {namespaces: {}}\n  ingress: [{action: Pass, from: [{namespaces: {}}]}]\n".into(),
            "baselineadminnetworkpolicies/default: spec.ingress[0].action: unknown action \"Pass\"; expected Allow or Deny",
        ),
        (
            "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {name: c}\nspec:\n  tier: Middle\n  priority: 1\n  subject: {namespaces: {}}\n".into(),
            "clusternetworkpolicies/c: spec.tier: unknown tier \"Middle\"; expected Admin or Baseline",
        ),
        (
            "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {name: c}\nspec:\n  tier: Admin\n  priority: 1\n  subject: {namespaces: {}}\n  ingress: [{action: Allow, from: [{namespaces: {}}]}]\n".into(),
            "clusternetworkpolicies/c: spec.ingress[0].action: unknown action \"Allow\"; expected Accept, Deny or Pass",
        ),
        (
            "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {name: c}\nspec:\n  tier: Admin\n  priority: 1\n  subject: {namespaces: {}}\n  ingress: [{action: Deny, from: [{networks: [10.0.0.0/8]}]}]\n".into(),
            "clusternetworkpolicies/c: spec.ingress[0].from[0].networks: unknown field; expected namespaces or pods",
        ),
        (
            "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {name: c}\nspec:\n  tier: Admin\n  priority: 1\n  subject: {namespaces: {}}\n  egress: [{action: Deny, to: [{networks: [10.0.0.0/8]}], protocols: [{tcp: {destinationPort: {number: 0}}}]}]\n".into(),
            "clusternetworkpolicies/c: spec.egress[0].protocols[0].tcp.destinationPort.number: 0 is not a port (1-65535)",
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n".into(),
            "test.yaml: document 1: unsupported kind \"Pod\" (apiVersion \"v1\"); expected a policy kind",
        ),
    ];
    for (yaml, want) in cases {
        let err = parse_str(&yaml, "test.yaml").unwrap_err().to_string();
        if want.ends_with(':') {
            // The tail comes from a library (regex) and may change.
            assert!(err.starts_with(want), "for:\n{yaml}\ngot: {err}");
        } else {
            assert_eq!(err, want, "for:\n{yaml}");
        }
        assert!(!err.contains('\n'));
    }
}

#[test]
fn a_bad_document_rejects_the_whole_text() {
    let text = format!(
        "{}\n---\n{}",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: ok, namespace: x}\nspec: {}",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: bad, namespace: x}\nspec: {ingress: [{ports: [{port: 0}]}]}"
    );
    assert!(parse_str(&text, "t").is_err());
}

#[test]
fn duplicate_objects_are_rejected_at_compile() {
    let one = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a, namespace: x}\nspec: {}\n";
    let input = weir_policy::PolicyInput {
        policies: parse_str(&format!("{one}---\n{one}"), "t").unwrap(),
        ..Default::default()
    };
    let err = weir_policy::compile(&input, 1, "n1")
        .unwrap_err()
        .to_string();
    assert_eq!(err, "networkpolicies/x/a: defined more than once");
}
