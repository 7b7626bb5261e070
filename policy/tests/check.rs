//! `weir policy check`: the offline matrix agrees with `explain` (the
//! workers' judge) on every cell, and each kind of finding is raised on a
//! crafted input and not on its corrected form.
mod common;

use common::*;
use weir_policy::check::{check, declared_ports, Finding, Severity};
use weir_topo::Protocol;

fn with(yaml: &str) -> weir_policy::PolicyInput {
    let mut i = cluster();
    i.policies = weir_policy::parse_str(yaml, "t.yaml").unwrap();
    i
}

fn kinds(f: &[Finding], kind: &str) -> Vec<Finding> {
    f.iter().filter(|x| x.kind == kind).cloned().collect()
}

const WEB_FROM_API: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: prod}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Ingress]
  ingress: [{from: [{podSelector: {matchLabels: {app: api}}}], ports: [{port: http}]}]
";

#[test]
fn matrix_equals_explain_on_every_cell() {
    let i = with(WEB_FROM_API);
    let ports = declared_ports(&i);
    assert!(ports.contains(&(8080, Protocol::Tcp)), "{ports:?}");
    let r = check(&i, &[]).unwrap();
    assert_eq!(
        r.matrix.len(),
        ports.len(),
        "one ipv4 block per declared port"
    );
    let mut denied = 0;
    for b in &r.matrix {
        for (fi, f) in b.from.iter().enumerate() {
            for (ti, t) in b.to.iter().enumerate() {
                let (fns, fname) = f.split_once('/').unwrap();
                let (tns, tname) = t.split_once('/').unwrap();
                let e = weir_policy::explain(&i, (fns, fname), (tns, tname), b.protocol, b.port)
                    .unwrap();
                assert_eq!(b.connected[fi][ti], e.allowed, "{f} -> {t} {}: {e}", b.port);
                denied += usize::from(!e.allowed);
            }
        }
    }
    // prod/web on 8080 only from prod/api: the other 4 pods are denied; on
    // other ports everything to web is denied (5 sources).
    assert!(denied >= 4, "{denied}");
    let b = r.matrix.iter().find(|b| b.port == 8080).unwrap();
    let idx = |n: &str| b.from.iter().position(|x| x == n).unwrap();
    assert!(b.connected[idx("prod/api")][idx("prod/web")]);
    assert!(!b.connected[idx("prod/db")][idx("prod/web")]);
    assert!(b.connected[idx("prod/db")][idx("prod/api")]);
}

#[test]
fn no_policy_connects_everything_and_has_no_findings() {
    let r = check(&cluster(), &[(80, Protocol::Tcp)]).unwrap();
    assert_eq!(r.matrix.len(), 1);
    assert!(r.matrix[0].connected.iter().flatten().all(|c| *c));
    assert!(r.findings.is_empty(), "{:?}", r.findings);
    assert_eq!(r.worst(), None);
}

#[test]
fn unresolved_named_port_and_peer_selecting_nothing() {
    let bad = WEB_FROM_API
        .replace("port: http", "port: htp")
        .replace("app: api", "app: apii");
    let r = check(&with(&bad), &[]).unwrap();
    let n = kinds(&r.findings, "named-port-unresolved");
    assert_eq!(n.len(), 1, "{:?}", r.findings);
    assert_eq!(n[0].policy, "networkpolicies/prod/web");
    assert_eq!(n[0].rule.as_deref(), Some("ingress[0]"));
    assert_eq!(n[0].severity, Severity::Error);
    let p = kinds(&r.findings, "peer-selects-nothing");
    assert_eq!(p.len(), 1, "{:?}", r.findings);
    assert_eq!(p[0].rule.as_deref(), Some("ingress[0].from[0]"));

    let good = check(&with(WEB_FROM_API), &[]).unwrap();
    assert!(kinds(&good.findings, "named-port-unresolved").is_empty());
    assert!(kinds(&good.findings, "peer-selects-nothing").is_empty());
    assert!(
        kinds(&good.findings, "matches-nothing").is_empty(),
        "{:?}",
        good.findings
    );
}

#[test]
fn policy_selecting_no_pod() {
    let r = check(&with(&WEB_FROM_API.replace("app: web", "app: wbe")), &[]).unwrap();
    let s = kinds(&r.findings, "selects-no-pod");
    assert_eq!(s.len(), 1, "{:?}", r.findings);
    assert_eq!(s[0].policy, "networkpolicies/prod/web");
    assert!(kinds(
        &check(&with(WEB_FROM_API), &[]).unwrap().findings,
        "selects-no-pod"
    )
    .is_empty());
}

const ADMIN_DENY_API: &str = "---
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: no-api}
spec:
  tier: Admin
  priority: 5
  subject: {namespaces: {matchLabels: {env: prod}}}
  ingress: [{name: deny-api, action: Deny, from: [{pods: {namespaceSelector: {}, podSelector: {matchLabels: {app: api}}}}]}]
";

#[test]
fn network_policy_rule_overridden_by_admin_names_both_and_is_shadowed() {
    let r = check(&with(&format!("{WEB_FROM_API}{ADMIN_DENY_API}")), &[]).unwrap();
    let o = kinds(&r.findings, "overridden-by-admin");
    assert_eq!(o.len(), 1, "{:?}", r.findings);
    assert_eq!(o[0].policy, "networkpolicies/prod/web");
    assert_eq!(o[0].rule.as_deref(), Some("ingress[0]"));
    assert!(
        o[0].message
            .contains("clusternetworkpolicies/no-api ingress[0]"),
        "{}",
        o[0].message
    );
    let s = kinds(&r.findings, "shadowed");
    assert_eq!(s.len(), 1, "{:?}", r.findings);
    assert_eq!(s[0].policy, "networkpolicies/prod/web");
    assert!(s[0].message.contains("Admin tier"), "{}", s[0].message);
    // The matrix says so too: api no longer reaches web.
    let b = r.matrix.iter().find(|b| b.port == 8080).unwrap();
    let idx = |n: &str| b.from.iter().position(|x| x == n).unwrap();
    assert!(!b.connected[idx("prod/api")][idx("prod/web")]);
}

/// `weir explain` names both rules of the precedence story: the Admin
/// deny that decides and the NetworkPolicy allow it overrides.
#[test]
fn explain_names_the_rule_an_admin_deny_overrides() {
    let i = with(&format!("{WEB_FROM_API}{ADMIN_DENY_API}"));
    let e =
        weir_policy::explain(&i, ("prod", "api"), ("prod", "web"), Protocol::Tcp, 8080).unwrap();
    assert!(!e.allowed, "{e}");
    let o = e.ingress.overrides.as_ref().expect("an overridden rule");
    assert_eq!(o.verdict, "allow");
    assert_eq!(
        o.rule.as_ref().map(|r| r.to_string()).as_deref(),
        Some("networkpolicies/prod/web ingress[0]")
    );
    let text = e.to_string();
    assert!(
        text.contains("clusternetworkpolicies/no-api ingress[0]"),
        "{text}"
    );
    assert!(
        text.contains("overriding: allow by networkpolicies/prod/web ingress[0]"),
        "{text}"
    );
    // Nothing overridden where the verdict would not change.
    assert!(e.egress.overrides.is_none(), "{e}");
    let plain = with(WEB_FROM_API);
    let e = weir_policy::explain(
        &plain,
        ("prod", "api"),
        ("prod", "web"),
        Protocol::Tcp,
        8080,
    )
    .unwrap();
    // Without that allow the pod is not isolated: still allowed, so the
    // allow overrides nothing.
    assert!(e.allowed && e.ingress.overrides.is_none(), "{e}");
}

#[test]
fn a_rule_covered_by_a_broader_earlier_rule_is_redundant() {
    let yaml = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: prod}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Ingress]
  ingress:
  - from: [{namespaceSelector: {}}]
  - from: [{podSelector: {matchLabels: {app: api}}}]
    ports: [{port: 8080}]
";
    let r = check(&with(yaml), &[]).unwrap();
    let red = kinds(&r.findings, "redundant");
    assert_eq!(red.len(), 1, "{:?}", r.findings);
    assert_eq!(red[0].rule.as_deref(), Some("ingress[1]"));
    assert_eq!(red[0].severity, Severity::Info);
    assert!(
        red[0]
            .message
            .contains("networkpolicies/prod/web ingress[0]"),
        "{}",
        red[0].message
    );
}

#[test]
fn egress_isolation_without_dns() {
    let iso = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: out, namespace: prod}
spec:
  podSelector: {matchLabels: {app: db}}
  policyTypes: [Egress]
  egress: [{to: [{podSelector: {}}]}]
";
    let r = check(&with(iso), &[]).unwrap();
    let d = kinds(&r.findings, "egress-blocks-dns");
    assert_eq!(d.len(), 1, "{:?}", r.findings);
    assert!(d[0].message.contains("pods/prod/db"), "{}", d[0].message);
    assert_eq!(d[0].policy, "networkpolicies/prod/out");
    let fixed = format!("{iso}  \n");
    let fixed = fixed.replace(
        "egress: [{to: [{podSelector: {}}]}]",
        "egress: [{to: [{podSelector: {}}]}, {ports: [{port: 53, protocol: UDP}]}]",
    );
    let r = check(&with(&fixed), &[]).unwrap();
    assert!(
        kinds(&r.findings, "egress-blocks-dns").is_empty(),
        "{:?}",
        r.findings
    );
}

#[test]
fn ipblock_over_pod_addresses() {
    let yaml = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: prod}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Ingress]
  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/29, except: [10.0.0.4/32]}}]}]
";
    let r = check(&with(yaml), &[]).unwrap();
    let o = kinds(&r.findings, "ipblock-overlaps-pods");
    assert_eq!(o.len(), 1, "{:?}", r.findings);
    // .2 .3 .5 .6 are pods inside; .4 (prod/api) is excepted.
    assert!(o[0].message.contains("4 pod(s)"), "{}", o[0].message);
    assert!(!o[0].message.contains("prod/api"), "{}", o[0].message);
    let outside = yaml.replace("10.0.0.0/29, except: [10.0.0.4/32]", "192.168.0.0/16");
    let r = check(&with(&outside), &[]).unwrap();
    assert!(kinds(&r.findings, "ipblock-overlaps-pods").is_empty());
}

#[test]
fn diff_lists_exactly_the_flipped_cells() {
    let ports = [(8080, Protocol::Tcp)];
    let old = check(&cluster(), &ports).unwrap();
    let new = check(&with(WEB_FROM_API), &ports).unwrap();
    let d = weir_policy::check::diff(&old.matrix, &new.matrix);
    // Every pod but prod/api and prod/web itself loses prod/web on 8080.
    let mut closed: Vec<&str> = d
        .iter()
        .inspect(|c| {
            assert_eq!(c.change, "closed");
            assert_eq!(c.to, "prod/web");
        })
        .map(|c| c.from.as_str())
        .collect();
    closed.sort();
    assert_eq!(closed, ["default/x", "dev/web", "prod/db"], "{d:?}");
    // The other way round, the same cells open.
    let back = weir_policy::check::diff(&new.matrix, &old.matrix);
    assert_eq!(back.len(), 3);
    assert!(back.iter().all(|c| c.change == "opened"));
    assert!(weir_policy::check::diff(&old.matrix, &old.matrix).is_empty());
}

#[test]
fn suggestion_admits_exactly_the_observed_flows() {
    use weir_policy::suggest::{suggest, Observed, Options};
    let o = Observed::new;
    let observed = [
        o(("prod", "api"), ("prod", "web"), Protocol::Tcp, 8080),
        o(("prod", "web"), ("prod", "db"), Protocol::Tcp, 5432),
        o(("default", "x"), ("prod", "api"), Protocol::Udp, 9000),
    ];
    let input = cluster();
    let s = suggest(&input, &observed, &Options::default()).unwrap();
    assert_eq!(s.policies, 5, "{}", s.yaml);
    // prod/web names 8080 `http`: the rule uses the name.
    assert!(s.yaml.contains("port: http"), "{}", s.yaml);
    assert!(
        s.rules.iter().any(|r| r.policy == "prod/suggested-web"
            && r.direction == "ingress"
            && r.ports == ["TCP/http(8080)"]
            && r.flows == 1),
        "{:?}",
        s.rules
    );
    assert!(s.missing.is_empty(), "{:?}", s.missing);
    assert!(s.extra.is_empty(), "{:?}", s.extra);
    // Independently: apply the YAML and judge with explain.
    let mut with = input.clone();
    with.policies = weir_policy::parse_str(&s.yaml, "s.yaml").unwrap();
    let allowed = |f: (&str, &str), t: (&str, &str), p, n| {
        weir_policy::explain(&with, f, t, p, n).unwrap().allowed
    };
    assert!(allowed(
        ("prod", "api"),
        ("prod", "web"),
        Protocol::Tcp,
        8080
    ));
    assert!(allowed(
        ("prod", "web"),
        ("prod", "db"),
        Protocol::Tcp,
        5432
    ));
    assert!(allowed(
        ("default", "x"),
        ("prod", "api"),
        Protocol::Udp,
        9000
    ));
    assert!(!allowed(
        ("prod", "web"),
        ("prod", "api"),
        Protocol::Tcp,
        8080
    ));
    assert!(!allowed(
        ("prod", "api"),
        ("prod", "web"),
        Protocol::Tcp,
        8081
    ));
    assert!(!allowed(
        ("dev", "web"),
        ("prod", "web"),
        Protocol::Tcp,
        8080
    ));
    assert!(!allowed(
        ("prod", "api"),
        ("prod", "db"),
        Protocol::Tcp,
        5432
    ));

    // Scoped to prod: only prod's three workloads get policies.
    let opts = Options {
        namespaces: vec!["prod".to_string()],
        ..Options::default()
    };
    let s = suggest(&input, &observed, &opts).unwrap();
    assert_eq!(s.policies, 3, "{}", s.yaml);
    assert!(s.missing.is_empty() && s.extra.is_empty(), "{s:?}");
}

#[test]
fn l7_suggestion_is_a_weirpolicy_of_the_methods_and_prefixes_seen() {
    use weir_policy::explain::{explain_http, HttpRequest};
    use weir_policy::suggest::{suggest, Observed, Options};
    let mut web = Observed::new(("prod", "api"), ("prod", "web"), Protocol::Tcp, 8080);
    web.count = 3;
    web.http = vec![
        ("GET".into(), "/users/42?x=1".into()),
        ("GET".into(), "/users/7".into()),
        ("POST".into(), "/login".into()),
    ];
    let db = Observed::new(("prod", "web"), ("prod", "db"), Protocol::Tcp, 5432);
    let input = cluster();
    let opts = Options {
        l7: true,
        ..Options::default()
    };
    let s = suggest(&input, &[web, db], &opts).unwrap();
    assert!(s.missing.is_empty() && s.extra.is_empty(), "{s:?}");
    assert!(s.yaml.contains("kind: WeirPolicy"), "{}", s.yaml);
    let r = s
        .rules
        .iter()
        .find(|r| r.policy == "prod/suggested-web" && r.direction == "ingress")
        .unwrap();
    assert_eq!(r.flows, 3);
    assert_eq!(r.http, ["GET prefix /users/", "POST exact /login"]);
    let mut with = input.clone();
    with.policies = weir_policy::parse_str(&s.yaml, "s.yaml").unwrap();
    let ok = |m: &str, p: &str| {
        let req = HttpRequest {
            line: format!("{m} {p}"),
            host: None,
            headers: vec![],
        };
        let e = explain_http(
            &with,
            ("prod", "api"),
            ("prod", "web"),
            Protocol::Tcp,
            8080,
            &req,
        )
        .unwrap();
        e.allowed && e.http.and_then(|h| h.request).is_some_and(|r| r.allowed)
    };
    assert!(ok("GET", "/users/99"));
    assert!(ok("POST", "/login"));
    assert!(!ok("DELETE", "/users/99"));
    assert!(!ok("GET", "/admin/x"));
}

#[test]
fn more_than_2000_pods_is_computed_per_namespace_pair_and_says_so() {
    let mut i = cluster();
    let base = i.pods[0].clone();
    for k in 0..2001u32 {
        let mut p = base.clone();
        p.name = format!("p{k}");
        p.ipv4 = Some(std::net::Ipv4Addr::from(0x0a01_0000 + k));
        i.pods.push(p);
    }
    i.policies = weir_policy::parse_str(WEB_FROM_API, "t.yaml").unwrap();
    let r = check(&i, &[(8080, Protocol::Tcp)]).unwrap();
    let note = r.note.as_deref().expect("note");
    assert!(
        note.contains("2006 pods") && note.contains("per namespace pair (9 pairs, 9 blocks)"),
        "{note}"
    );
    // Still the judge's answer: prod/api reaches the web pods, dev/web not.
    let prod = r
        .matrix
        .iter()
        .find(|b| b.from[0].starts_with("prod/") && b.to[0].starts_with("prod/"))
        .unwrap();
    let at = |v: &[String], s: &str| v.iter().position(|x| x == s).unwrap();
    assert!(prod.connected[at(&prod.from, "prod/api")][at(&prod.to, "prod/p7")]);
    assert!(!prod.connected[at(&prod.from, "prod/db")][at(&prod.to, "prod/p7")]);
}
