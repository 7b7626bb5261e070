//! WeirPolicy `dns:` and `toFQDNs`: parsing, one-line errors, compiling
//! into `PolicySpec::dns` / `Decision::dns` and the per-endpoint FQDN rules,
//! and judging with a learned table.
mod common;

use common::*;
use weir_dataplane::fqdn::FqdnTable;
use weir_dataplane::policy::{Action, CompiledPolicy, FqdnRuleSpec, RuleId};
use weir_policy::{compile, parse_str};

/// prod/api may ask prod/db (standing in for a DNS server) on UDP 53 for
/// `allowed.example` and its subdomains, and connect on TCP 80 to what
/// `allowed.example` resolves to. Nothing else.
const CLIENT: &str = "apiVersion: weir.dev/v1alpha1
kind: WeirPolicy
metadata: {name: client, namespace: prod}
spec:
  podSelector: {matchLabels: {app: api}}
  egress:
  - action: Allow
    to: [{podSelector: {matchLabels: {app: db}}}]
    ports: [{protocol: UDP, port: 53}]
    dns: [{pattern: '*.allowed.example'}, {name: Allowed.Example}]
  - action: Allow
    toFQDNs: [{matchName: allowed.example}]
    ports: [{protocol: TCP, port: 80}]
";

#[test]
fn dns_and_to_fqdns_parse_into_the_rule() {
    let p = parse_str(CLIENT, "t.yaml").unwrap();
    assert_eq!(
        p[0].egress[0].dns,
        Some(vec!["*.allowed.example".into(), "allowed.example".into()])
    );
    assert_eq!(
        p[0].egress[1].to_fqdns,
        Some(vec!["allowed.example".into()])
    );
    assert!(p[0].egress[1].peers.is_empty());
}

#[test]
fn compiles_to_dns_sets_and_fqdn_rules() {
    let w = world(CLIENT);
    let j = w.judge("prod/api", "prod/db", UDP, 53);
    assert!(j.allowed);
    assert_eq!(j.egress.dns, Some(0));
    assert!(w
        .egress("prod/api", "prod/db", UDP, 53)
        .contains("DNS rules"));
    // Statically, nothing else: TCP 80 anywhere is an implicit deny.
    let j = w.judge("prod/api", "prod/web", TCP, 80);
    assert!(!j.allowed);
    assert_eq!(j.egress.rule, RuleId::IMPLICIT_DENY);
    let mut input = cluster();
    input.policies = parse_str(CLIENT, "t.yaml").unwrap();
    let spec = compile(&input, 1, "n1").unwrap();
    assert_eq!(
        spec.dns,
        vec![vec![
            "*.allowed.example".to_string(),
            "allowed.example".into()
        ]]
    );
    assert_eq!(spec.fqdn_selectors, vec!["allowed.example".to_string()]);
    assert_eq!(spec.fqdn_egress.len(), 1);
    let (_, rules) = &spec.fqdn_egress[0];
    assert_eq!(
        rules[..],
        [FqdnRuleSpec {
            selector: 0,
            rule: RuleId(1),
            proto: 6,
            first: 80,
            last: 80
        }]
    );
    let back: weir_dataplane::policy::PolicySpec =
        serde_json::from_str(&serde_json::to_string(&spec).unwrap()).unwrap();
    assert_eq!(back, spec);
    CompiledPolicy::build(back).unwrap();
}

#[test]
fn learned_addresses_admit_new_flows_until_expiry() {
    let w = world(CLIENT);
    let t = FqdnTable::default();
    let (src, web) = (w.peer("prod/api"), w.peer("prod/web"));
    let ext = w.peer("93.184.216.34");
    let judge = |dst, port, now| w.policy.judge_learned(src, None, dst, TCP, port, (&t, now));
    assert!(!judge(ext, 80, 0).allowed);
    t.learn("allowed.example", ext.addr, 60, 0);
    t.learn("www.allowed.example", web.addr, 60, 0);
    let j = judge(ext, 80, 1);
    assert!(j.allowed);
    assert_eq!(j.egress.action, Action::Allow);
    assert_eq!(w.policy.rule(j.egress.rule).unwrap().index, 1);
    assert!(!judge(ext, 443, 1).allowed);
    // Learned under a name the selector does not match.
    assert!(!judge(web, 80, 1).allowed);
    assert!(!judge(ext, 80, 60_000_000_001).allowed);
}

#[test]
fn an_explicit_deny_beats_a_learned_fqdn_allow() {
    let w = world(&format!(
        "{CLIENT}---
apiVersion: weir.dev/v1alpha1
kind: WeirPolicy
metadata: {{name: no-ext, namespace: prod}}
spec:
  egress:
  - action: Deny
    to: [{{ipBlock: {{cidr: 93.184.216.0/24}}}}]
"
    ));
    let t = FqdnTable::default();
    let ext = w.peer("93.184.216.34");
    t.learn("allowed.example", ext.addr, 60, 0);
    let j = w
        .policy
        .judge_learned(w.peer("prod/api"), None, ext, TCP, 80, (&t, 1));
    assert!(!j.allowed);
}

fn err(yaml_rule: &str) -> String {
    let doc = format!(
        "apiVersion: weir.dev/v1alpha1
kind: WeirPolicy
metadata: {{name: p, namespace: prod}}
spec:
{yaml_rule}"
    );
    match parse_str(&doc, "t.yaml") {
        Ok(_) => panic!("accepted: {yaml_rule}"),
        Err(e) => {
            let s = e.to_string();
            assert_eq!(s.lines().count(), 1, "{s}");
            s
        }
    }
}

#[test]
fn errors_are_one_line_and_name_the_field() {
    let e = err("  egress: [{action: Allow, dns: [{pattern: 'a*.x'}]}]\n");
    assert!(
        e.contains("spec.egress[0].dns[0].pattern") && e.contains("a*.x"),
        "{e}"
    );
    let e = err("  egress: [{action: Allow, dns: [{pattern: '**'}]}]\n");
    assert!(e.contains("spec.egress[0].dns[0].pattern"), "{e}");
    let e = err("  egress: [{action: Allow, dns: [{name: '*.x'}]}]\n");
    assert!(
        e.contains("spec.egress[0].dns[0].name") && e.contains("pattern"),
        "{e}"
    );
    let e = err("  egress: [{action: Allow, dns: []}]\n");
    assert!(
        e.contains("spec.egress[0].dns:") && e.contains("empty"),
        "{e}"
    );
    let e = err("  egress: [{action: Deny, dns: [{name: x.y}]}]\n");
    assert!(
        e.contains("spec.egress[0].dns") && e.contains("Allow"),
        "{e}"
    );
    let e = err("  ingress: [{action: Allow, dns: [{name: x.y}]}]\n");
    assert!(
        e.contains("spec.ingress[0].dns") && e.contains("egress"),
        "{e}"
    );
    let e = err("  egress: [{action: Allow, dns: [{name: x.y, pattern: '*.y'}]}]\n");
    assert!(
        e.contains("spec.egress[0].dns[0]") && e.contains("exactly one"),
        "{e}"
    );
    let e = err("  egress: [{action: Allow, toFQDNs: [{matchPattern: 'a.*.x'}]}]\n");
    assert!(e.contains("spec.egress[0].toFQDNs[0].matchPattern"), "{e}");
    let e = err("  egress: [{action: Allow, toFQDNs: []}]\n");
    assert!(
        e.contains("spec.egress[0].toFQDNs") && e.contains("empty"),
        "{e}"
    );
    let e =
        err("  egress: [{action: Allow, to: [{podSelector: {}}], toFQDNs: [{matchName: a.b}]}]\n");
    assert!(
        e.contains("spec.egress[0].toFQDNs") && e.contains("`to`"),
        "{e}"
    );
    let e =
        err("  egress: [{action: Allow, toFQDNs: [{matchName: a.b}], ports: [{port: http}]}]\n");
    assert!(
        e.contains("spec.egress[0].ports[0]") && e.contains("named"),
        "{e}"
    );
    let e = err("  egress: [{action: Allow, toFQDNs: [{name: a.b}]}]\n");
    assert!(e.contains("spec.egress[0].toFQDNs[0]"), "{e}");
}
