//! HTTP rule sets: the plain-data spec the compiler writes
//! ([`HttpRuleSetSpec`], serde) and its compiled form ([`HttpRuleSet`]),
//! mirroring `PolicySpec`/`CompiledPolicy` in `policy.rs`.
//!
//! Semantics (Cilium's `rules.http`): a rule set belongs to one port rule
//! (peer, protocol, port) whose L3/L4 part admitted the flow; a request is
//! allowed when the first rule that matches it exists, denied otherwise
//! (an empty rule set denies every request). Within a rule every given part
//! must match; a part left out matches anything:
//! - `method`: exact, case-sensitive (`GET`).
//! - `path`: on the path without the query, as sent (not percent-decoded;
//!   the parser refuses dot segments and encoded `/`): `exact`, `prefix`, or
//!   `regex` (whole-path match: the pattern is anchored at both ends).
//! - `host`: case-insensitive on the host without port; `*.example.com`
//!   matches exactly one more label (`a.example.com`, not `example.com`,
//!   not `a.b.example.com`).
//! - `headers`: each named field (case-insensitive) must be present, with
//!   the given value exactly when a value is given.
//!
//! Regular expressions are compiled once here; `is_match` on the worker
//! does not allocate.
#![forbid(unsafe_code)]

use regex::Regex;
use serde::{Deserialize, Serialize};

use super::http::RequestHead;

/// How a rule matches the path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PathMatchSpec {
    Exact(String),
    Prefix(String),
    /// A regular expression (Rust `regex` syntax) the whole path must match.
    Regex(String),
}

/// One header condition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeaderMatchSpec {
    pub name: String,
    /// Exact value required; absent: the field must only be present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// One HTTP allow rule (plain data).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpRuleSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatchSpec>,
    /// `name` or `*.suffix`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatchSpec>,
}

/// The HTTP rules of one port rule, in order (first match allows).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpRuleSetSpec {
    pub rules: Vec<HttpRuleSpec>,
    /// TLS server-name rules (WeirPolicy `tls:`). Not empty: the flow is
    /// judged on its ClientHello instead (`rules` are then not used; a
    /// TLS connection carries no readable HTTP), see `super::tls`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tls: Vec<super::tls::TlsRuleSpec>,
}

/// Why a spec cannot be compiled.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CompileError {
    /// rule {0}: method {1:?} is not an HTTP token
    #[error("rule {0}: method {1:?} is not an HTTP token")]
    Method(usize, String),
    /// rule {0}: invalid path regex: {1}
    #[error("rule {0}: invalid path regex: {1}")]
    Regex(usize, String),
    /// rule {0}: path {1:?} must start with '/'
    #[error("rule {0}: path {1:?} must start with '/'")]
    Path(usize, String),
    /// rule {0}: host pattern {1:?} is not a name or '*.' followed by a name
    #[error("rule {0}: host pattern {1:?} is not a name or '*.' followed by a name")]
    Host(usize, String),
    /// rule {0}: header name {1:?} is not an HTTP token
    #[error("rule {0}: header name {1:?} is not an HTTP token")]
    Header(usize, String),
    /// tls rule {0}: sni {1:?} is not a name, '*.' followed by a name, or '*'
    #[error("tls rule {0}: sni {1:?} is not a name, '*.' followed by a name, or '*'")]
    Sni(usize, String),
}

#[derive(Debug, Clone)]
enum PathMatch {
    Exact(String),
    Prefix(String),
    Regex(Regex),
}

#[derive(Debug, Clone)]
enum HostMatch {
    /// Lowercase name.
    Exact(String),
    /// Lowercase suffix including its leading dot (`.example.com`).
    OneLabel(String),
}

#[derive(Debug, Clone)]
struct HeaderMatch {
    name: String,
    value: Option<Vec<u8>>,
}

#[derive(Debug, Clone)]
struct HttpRule {
    method: Option<String>,
    path: Option<PathMatch>,
    host: Option<HostMatch>,
    headers: Vec<HeaderMatch>,
}

/// A compiled rule set; [`HttpRuleSet::judge`] is what the judge closure
/// of the inspector calls.
#[derive(Debug, Clone)]
pub struct HttpRuleSet {
    rules: Vec<HttpRule>,
    tls: super::tls::TlsRuleSet,
}

fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(super::http::is_tchar)
}

fn is_host_name(s: &str) -> bool {
    !s.is_empty()
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

impl HttpRuleSet {
    /// Validates and compiles a spec.
    pub fn compile(spec: &HttpRuleSetSpec) -> Result<Self, CompileError> {
        let mut rules = Vec::with_capacity(spec.rules.len());
        for (i, r) in spec.rules.iter().enumerate() {
            if let Some(m) = &r.method {
                if !is_token(m) {
                    return Err(CompileError::Method(i, m.clone()));
                }
            }
            let path = match &r.path {
                None => None,
                Some(PathMatchSpec::Exact(p)) | Some(PathMatchSpec::Prefix(p))
                    if !p.starts_with('/') =>
                {
                    return Err(CompileError::Path(i, p.clone()))
                }
                Some(PathMatchSpec::Exact(p)) => Some(PathMatch::Exact(p.clone())),
                Some(PathMatchSpec::Prefix(p)) => Some(PathMatch::Prefix(p.clone())),
                Some(PathMatchSpec::Regex(re)) => Some(PathMatch::Regex(
                    Regex::new(&format!("^(?:{re})$"))
                        .map_err(|e| CompileError::Regex(i, e.to_string()))?,
                )),
            };
            let host = match &r.host {
                None => None,
                Some(h) => {
                    let lower = h.to_ascii_lowercase();
                    let lower = lower.strip_suffix('.').unwrap_or(&lower).to_string();
                    if let Some(suffix) = lower.strip_prefix("*.") {
                        if !is_host_name(suffix) {
                            return Err(CompileError::Host(i, h.clone()));
                        }
                        Some(HostMatch::OneLabel(format!(".{suffix}")))
                    } else if is_host_name(&lower) {
                        Some(HostMatch::Exact(lower))
                    } else {
                        return Err(CompileError::Host(i, h.clone()));
                    }
                }
            };
            let mut headers = Vec::with_capacity(r.headers.len());
            for h in &r.headers {
                if !is_token(&h.name) {
                    return Err(CompileError::Header(i, h.name.clone()));
                }
                headers.push(HeaderMatch {
                    name: h.name.clone(),
                    value: h.value.as_ref().map(|v| v.trim().as_bytes().to_vec()),
                });
            }
            rules.push(HttpRule {
                method: r.method.clone(),
                path,
                host,
                headers,
            });
        }
        let tls = super::tls::TlsRuleSet::compile(&spec.tls).map_err(|i| {
            CompileError::Sni(
                i,
                spec.tls.get(i).map(|t| t.sni.clone()).unwrap_or_default(),
            )
        })?;
        Ok(HttpRuleSet { rules, tls })
    }

    /// The TLS server-name rules, when the set has any: the flow is then
    /// judged on its ClientHello, not as HTTP.
    pub fn tls(&self) -> Option<&super::tls::TlsRuleSet> {
        (!self.tls.is_empty()).then_some(&self.tls)
    }

    /// Index of the first rule that matches the request (allow), or `None`
    /// (deny). Does not allocate.
    pub fn judge(&self, head: &RequestHead<'_>) -> Option<usize> {
        self.rules.iter().position(|r| r.matches(head))
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

impl HttpRule {
    fn matches(&self, h: &RequestHead<'_>) -> bool {
        if let Some(m) = &self.method {
            if m != h.method() {
                return false;
            }
        }
        if let Some(p) = &self.path {
            let path = h.path();
            let ok = match p {
                PathMatch::Exact(e) => path == e,
                PathMatch::Prefix(e) => path.starts_with(e.as_str()),
                PathMatch::Regex(re) => re.is_match(path),
            };
            if !ok {
                return false;
            }
        }
        if let Some(hm) = &self.host {
            let Some(host) = h.host() else {
                return false;
            };
            let host = host.strip_suffix('.').unwrap_or(host);
            let ok = match hm {
                HostMatch::Exact(e) => host.eq_ignore_ascii_case(e),
                HostMatch::OneLabel(suffix) => {
                    host.len() > suffix.len()
                        && host.is_char_boundary(host.len() - suffix.len())
                        && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
                        && !host[..host.len() - suffix.len()].contains('.')
                }
            };
            if !ok {
                return false;
            }
        }
        self.headers.iter().all(|hm| {
            h.headers().any(|(n, v)| {
                n.eq_ignore_ascii_case(&hm.name) && hm.value.as_deref().is_none_or(|want| v == want)
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::l7::http::parse_head;

    fn set(json: &str) -> HttpRuleSet {
        HttpRuleSet::compile(&serde_json::from_str(json).unwrap()).unwrap()
    }
    fn judge(s: &HttpRuleSet, head: &str) -> Option<usize> {
        s.judge(&parse_head(head.as_bytes()).unwrap())
    }

    #[test]
    fn paper_scenario_get_public_only() {
        let s = set(r#"{"rules":[{"method":"GET","path":{"prefix":"/public"}}]}"#);
        assert_eq!(
            judge(&s, "GET /public HTTP/1.1\r\nHost: app1\r\n\r\n"),
            Some(0)
        );
        assert_eq!(
            judge(&s, "GET /public/x?y HTTP/1.1\r\nHost: app1\r\n\r\n"),
            Some(0)
        );
        assert_eq!(
            judge(&s, "GET /private HTTP/1.1\r\nHost: app1\r\n\r\n"),
            None
        );
        assert_eq!(
            judge(&s, "POST /public HTTP/1.1\r\nHost: app1\r\n\r\n"),
            None
        );
        assert_eq!(
            judge(&s, "get /public HTTP/1.1\r\nHost: app1\r\n\r\n"),
            None
        );
    }

    #[test]
    fn empty_set_denies() {
        let s = set(r#"{"rules":[]}"#);
        assert_eq!(judge(&s, "GET / HTTP/1.1\r\nHost: a\r\n\r\n"), None);
        let any = set(r#"{"rules":[{}]}"#);
        assert_eq!(judge(&any, "GET / HTTP/1.1\r\nHost: a\r\n\r\n"), Some(0));
    }

    #[test]
    fn regex_is_anchored() {
        let s = set(r#"{"rules":[{"path":{"regex":"/api/v[0-9]+/items"}}]}"#);
        assert_eq!(
            judge(&s, "GET /api/v2/items HTTP/1.1\r\nHost: a\r\n\r\n"),
            Some(0)
        );
        assert_eq!(
            judge(&s, "GET /api/v2/items/x HTTP/1.1\r\nHost: a\r\n\r\n"),
            None
        );
        assert_eq!(
            judge(&s, "GET /x/api/v2/items HTTP/1.1\r\nHost: a\r\n\r\n"),
            None
        );
        assert!(HttpRuleSet::compile(&HttpRuleSetSpec {
            rules: vec![HttpRuleSpec {
                path: Some(PathMatchSpec::Regex("(".into())),
                ..Default::default()
            }],
            tls: vec![],
        })
        .is_err());
    }

    #[test]
    fn exact_path() {
        let s = set(r#"{"rules":[{"path":{"exact":"/health"}}]}"#);
        assert_eq!(
            judge(&s, "GET /health HTTP/1.1\r\nHost: a\r\n\r\n"),
            Some(0)
        );
        assert_eq!(judge(&s, "GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n"), None);
    }

    #[test]
    fn host_exact_and_wildcard() {
        let s = set(r#"{"rules":[{"host":"api.example.com"},{"host":"*.example.org"}]}"#);
        let h = |host: &str| judge(&s, &format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n"));
        assert_eq!(h("API.example.com"), Some(0));
        assert_eq!(h("api.example.com:8080"), Some(0));
        assert_eq!(h("x.api.example.com"), None);
        assert_eq!(h("a.example.org"), Some(1));
        assert_eq!(h("A.Example.Org."), Some(1));
        assert_eq!(h("example.org"), None);
        assert_eq!(h("a.b.example.org"), None);
        assert_eq!(h("aexample.org"), None);
        assert_eq!(judge(&s, "GET / HTTP/1.0\r\n\r\n"), None);
    }

    #[test]
    fn headers_present_and_equal() {
        let s = set(
            r#"{"rules":[{"headers":[{"name":"X-Token","value":"s3cret"},{"name":"x-trace"}]}]}"#,
        );
        assert_eq!(
            judge(
                &s,
                "GET / HTTP/1.1\r\nHost: a\r\nx-token:  s3cret \r\nX-Trace: 1\r\n\r\n"
            ),
            Some(0)
        );
        assert_eq!(
            judge(
                &s,
                "GET / HTTP/1.1\r\nHost: a\r\nX-Token: nope\r\nX-Trace: 1\r\n\r\n"
            ),
            None
        );
        assert_eq!(
            judge(&s, "GET / HTTP/1.1\r\nHost: a\r\nX-Token: s3cret\r\n\r\n"),
            None
        );
    }

    #[test]
    fn first_match_wins_and_spec_round_trips() {
        let spec: HttpRuleSetSpec = serde_json::from_str(
            r#"{"rules":[{"method":"GET","path":{"prefix":"/a"}},{"method":"POST","host":"*.x.io","headers":[{"name":"k"}]}]}"#,
        )
        .unwrap();
        let back: HttpRuleSetSpec =
            serde_json::from_str(&serde_json::to_string(&spec).unwrap()).unwrap();
        assert_eq!(spec, back);
        let s = HttpRuleSet::compile(&spec).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(
            judge(&s, "POST /a HTTP/1.1\r\nHost: q.x.io\r\nk: v\r\n\r\n"),
            Some(1)
        );
    }

    #[test]
    fn invalid_specs_refused() {
        for bad in [
            r#"{"rules":[{"method":"G T"}]}"#,
            r#"{"rules":[{"path":{"prefix":"public"}}]}"#,
            r#"{"rules":[{"host":"*.*.x"}]}"#,
            r#"{"rules":[{"host":"a..b"}]}"#,
            r#"{"rules":[{"headers":[{"name":"bad name"}]}]}"#,
        ] {
            let spec: HttpRuleSetSpec = serde_json::from_str(bad).unwrap();
            assert!(HttpRuleSet::compile(&spec).is_err(), "{bad}");
        }
    }
}
