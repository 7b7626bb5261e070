//! WeirPolicy `tls:` (TLS server-name rules): parsing into the rule's L7
//! set (`HttpRuleSetSpec::tls`), compiling into `Decision::l7`, and the
//! places it is refused.
mod common;

use common::*;
use weir_policy::parse_str;

const TLS: &str = "apiVersion: weir.dev/v1alpha1
kind: WeirPolicy
metadata: {name: web-tls, namespace: prod}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - action: Allow
    from: [{podSelector: {matchLabels: {app: api}}}]
    ports: [{protocol: TCP, port: 8443}]
    tls:
    - sni: api.example.com
    - sni: '*.svc.example'
";

#[test]
fn tls_parses_and_compiles_to_an_l7_allow_with_server_names() {
    let p = parse_str(TLS, "t.yaml").unwrap();
    let h = p[0].ingress[0].http.as_ref().unwrap();
    assert!(h.rules.is_empty());
    let names: Vec<&str> = h.tls.iter().map(|t| t.sni.as_str()).collect();
    assert_eq!(names, ["api.example.com", "*.svc.example"]);
    let w = world(TLS);
    let j = w.judge("prod/api", "prod/web", TCP, 8443);
    assert!(j.allowed);
    let set = w.policy.http_set(j.ingress.l7.expect("l7 set")).unwrap();
    let tls = set.tls().expect("a TLS set");
    assert_eq!(tls.judge("api.example.com"), Some(0));
    assert_eq!(tls.judge("a.svc.example"), Some(1));
    assert_eq!(tls.judge("other.example.com"), None);
    assert!(w.policy.rule_has_l7(j.ingress.rule));
    assert!(!w.allowed("prod/db", "prod/web", TCP, 8443));
}

#[test]
fn tls_is_refused_where_it_cannot_apply() {
    let bad = |rule: &str, dir: &str| {
        let doc = format!(
            "apiVersion: weir.dev/v1alpha1
kind: WeirPolicy
metadata: {{name: w, namespace: prod}}
spec:
  {dir}:
  - action: Allow
{rule}"
        );
        parse_str(&doc, "t.yaml").unwrap_err().to_string()
    };
    let e = bad("    tls: [{sni: a.example}]\n", "egress");
    assert!(
        e.contains("spec.egress[0].tls") && e.contains("ingress"),
        "{e}"
    );
    let e = bad(
        "    tls: [{sni: a.example}]\n    http: [{method: GET}]\n",
        "ingress",
    );
    assert!(e.contains("cannot be combined with `http`"), "{e}");
    let e = bad("    tls: [{sni: 'bad name'}]\n", "ingress");
    assert!(e.contains("spec.ingress[0].tls[0].sni"), "{e}");
    let e = bad("    tls: []\n", "ingress");
    assert!(e.contains("empty list"), "{e}");
    let e = bad("    tls: [{name: a.example}]\n", "ingress");
    assert!(e.contains("tls"), "{e}");
}

#[test]
fn explain_judges_a_server_name_like_the_worker() {
    use weir_policy::explain::explain_tls;
    let mut input = cluster();
    input.policies = parse_str(TLS, "t.yaml").unwrap();
    let e = |sni: &str| {
        explain_tls(
            &input,
            ("prod", "api"),
            ("prod", "web"),
            weir_model::Protocol::Tcp,
            8443,
            sni,
        )
        .unwrap()
        .tls
        .unwrap()
    };
    let ok = e("a.svc.example");
    assert!(ok.allowed, "{}", ok.text);
    assert!(ok.text.contains("ALLOWED by tls[1]"), "{}", ok.text);
    let no = e("evil.example.com");
    assert!(!no.allowed);
    assert!(no.text.contains("tls-sni-denied"), "{}", no.text);
    let none = e("");
    assert!(none.text.contains("tls-no-sni"), "{}", none.text);
    let bad = e("bad name");
    assert!(bad.text.contains("tls-malformed"), "{}", bad.text);
}
