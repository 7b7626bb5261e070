//! `weir explain --http`: HTTP requests judged by the workers' own
//! inspector and rule set on a flow under WeirPolicy `http:` rules.
mod common;

use common::*;
use weir_policy::explain::{explain_http, HttpRequest};
use weir_topo::Protocol;

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
    - method: POST
      path: {exact: /submit}
      headers: [{name: X-Token, value: abc}]
";

fn input() -> weir_policy::PolicyInput {
    let mut i = cluster();
    i.policies = weir_policy::parse_str(PAPER, "t.yaml").unwrap();
    i
}

fn req(line: &str, headers: &[&str]) -> HttpRequest {
    HttpRequest {
        line: line.into(),
        host: None,
        headers: headers.iter().map(|h| h.to_string()).collect(),
    }
}

fn judge(line: &str, headers: &[&str]) -> weir_policy::Explanation {
    explain_http(
        &input(),
        ("prod", "api"),
        ("prod", "web"),
        Protocol::Tcp,
        8080,
        &req(line, headers),
    )
    .unwrap()
}

#[test]
fn plain_explain_lists_the_entries() {
    let e = weir_policy::explain(
        &input(),
        ("prod", "api"),
        ("prod", "web"),
        Protocol::Tcp,
        8080,
    )
    .unwrap();
    assert!(e.allowed);
    let h = e.http.as_ref().expect("http side");
    assert_eq!(h.entries.len(), 2);
    assert_eq!(h.entries[0].text, "method GET, path prefix /public");
    assert_eq!(
        h.entries[1].text,
        "method POST, path exact /submit, header X-Token: abc"
    );
    assert!(h.request.is_none());
    let text = e.to_string();
    assert!(text.contains("judged on its own"), "{text}");
    assert!(
        text.contains("http[0]: method GET, path prefix /public"),
        "{text}"
    );
    // Not under HTTP rules: no http part at all.
    let e = weir_policy::explain(
        &input(),
        ("prod", "api"),
        ("prod", "db"),
        Protocol::Tcp,
        5432,
    )
    .unwrap();
    assert!(e.http.is_none());
}

#[test]
fn allowed_request_names_the_entry() {
    let e = judge("GET /public/a?x=1", &[]);
    let r = e.http.unwrap().request.unwrap();
    assert!(r.allowed);
    assert_eq!(r.entry, Some(0));
    assert_eq!(r.verdict, "allow");
    assert_eq!(
        r.head,
        "GET /public/a?x=1 HTTP/1.1\r\nHost: 10.0.0.2:8080\r\n\r\n"
    );
    let e = judge("POST /submit", &["X-Token: abc", "Content-Length: 3"]);
    let r = e.http.unwrap().request.unwrap();
    assert_eq!((r.allowed, r.entry), (true, Some(1)), "{}", r.text);
    let e = judge("GET /public HTTP/1.0", &[]);
    assert!(e.http.unwrap().request.unwrap().allowed);
}

#[test]
fn denied_requests_say_why() {
    for (line, headers, reason) in [
        ("GET /private", &[][..], "l7-policy"),
        ("POST /public/a", &[], "l7-policy"),
        ("POST /submit", &["X-Token: nope"], "l7-policy"),
        ("GET /public/../private", &[], "http-path-not-normal"),
        ("GET /public/%2e%2e/private", &[], "http-path-not-normal"),
        (
            "GET /public",
            &["Content-Length: 1", "Transfer-Encoding: chunked"],
            "http-cl-and-te",
        ),
        (
            "GET /public",
            &["Content-Length: 1", "Content-Length: 1"],
            "http-duplicate-content-length",
        ),
        ("GET /public", &["X-A : b"], "http-space-before-colon"),
        ("GET /public", &["Upgrade: websocket"], "http-unsupported"),
    ] {
        let e = judge(line, headers);
        assert!(e.allowed, "L3/L4 admits the connection");
        let r = e.http.unwrap().request.unwrap();
        assert!(!r.allowed, "{line} {headers:?}");
        assert_eq!(r.reason, Some(reason), "{line} {headers:?}: {}", r.text);
        assert!(r.text.contains("403"), "{}", r.text);
    }
    let long = format!("X-Pad: {}", "a".repeat(9000));
    let r = judge("GET /public", &[&long])
        .http
        .unwrap()
        .request
        .unwrap();
    assert_eq!(r.reason, Some("http-head-too-long"));
}

#[test]
fn request_on_other_flows() {
    // Denied at L3/L4: the request is not judged.
    let e = explain_http(
        &input(),
        ("prod", "db"),
        ("prod", "web"),
        Protocol::Tcp,
        8080,
        &req("GET /public", &[]),
    )
    .unwrap();
    assert!(!e.allowed);
    let r = e.http.unwrap().request.unwrap();
    assert_eq!((r.allowed, r.verdict), (false, "not-judged"));
    // No HTTP rules on the flow: every request passes.
    let e = explain_http(
        &input(),
        ("prod", "web"),
        ("prod", "db"),
        Protocol::Tcp,
        5432,
        &req("DELETE /anything", &[]),
    )
    .unwrap();
    let h = e.http.unwrap();
    assert_eq!(h.set, None);
    assert!(h.request.unwrap().allowed);
}

#[test]
fn json_form() {
    let e = judge("GET /private", &[]);
    let v = serde_json::to_value(&e).unwrap();
    assert_eq!(v["allowed"], true);
    assert_eq!(v["http"]["entries"][0]["index"], 0);
    assert_eq!(v["http"]["entries"][0]["spec"]["method"], "GET");
    assert_eq!(v["http"]["request"]["verdict"], "deny");
    assert_eq!(v["http"]["request"]["reason"], "l7-policy");
    assert_eq!(v["http"]["request"]["allowed"], false);
}
