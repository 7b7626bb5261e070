//! `weir policy explain`: why a flow is allowed or denied. Compiles the
//! input with both pods as local endpoints and asks the dataplane's own
//! [`CompiledPolicy::judge`], so the answer is the datapath's answer.

use crate::compile::{compile_for, protocol_number};
use crate::{PodInfo, PolicyError, PolicyInput};
use serde::Serialize;
use std::net::{IpAddr, SocketAddr};
use weir_model::l7::{Feed, HttpInspector, HttpRuleSetSpec, HttpRuleSpec, L7Verdict, Limits};
use weir_model::l7::{L7Reason, PathMatchSpec};
use weir_model::policy::{Action, CompiledPolicy, Decision, Peer, RuleInfo};
use weir_model::Protocol;

/// One direction of the verdict.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SideExplanation {
    pub decision: Decision,
    /// `allow`, `deny` or `audit` (denied, passes).
    pub verdict: &'static str,
    /// The deciding rule, if a rule decided.
    pub rule: Option<RuleInfo>,
    /// One line: `deny by networkpolicies/prod/x ingress[0] (Allow)`.
    pub text: String,
    /// The verdict this side would get without the deciding rule's policy,
    /// when it differs (the precedence made visible: an Admin-tier deny
    /// over a NetworkPolicy allow names both rules).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overrides: Option<Overridden>,
}

/// What the deciding rule overrode on one side ([`SideExplanation::overrides`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Overridden {
    /// `allow`, `deny` or `audit`: the verdict without the deciding policy.
    pub verdict: &'static str,
    /// The rule that would decide then, if a rule would.
    pub rule: Option<RuleInfo>,
    /// One line, as [`SideExplanation::text`].
    pub text: String,
}

/// The verdict on a flow and what decided it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Explanation {
    pub allowed: bool,
    pub from: String,
    pub to: String,
    pub protocol: String,
    pub port: u16,
    pub egress: SideExplanation,
    pub ingress: SideExplanation,
    /// Present when the ingress decision carries HTTP rules
    /// ([`Decision::l7`]), or when a request was given to judge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpExplanation>,
    /// Present when a DNS query name was given to judge (`--dns`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<DnsExplanation>,
    /// Present when a TLS server name was given to judge (`--sni`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsExplanation>,
    /// The source and destination are the same pod: the traffic goes to
    /// the pod's own address, which its kernel delivers on its loopback.
    /// It never reaches weir, so no policy judges it (it always connects).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub same_pod: bool,
}

/// What both sides say when a pod talks to itself.
const SAME_POD: &str =
    "not judged: traffic to the pod's own address never leaves the pod (its kernel delivers it on loopback), so no policy applies";

/// The verdict on one DNS query on the flow (egress DNS rules of the source).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DnsExplanation {
    pub name: String,
    /// The flow's DNS rule set, if its egress decision carries one.
    pub set: Option<u32>,
    /// Whether the query reaches the server (`false`: weir answers REFUSED).
    pub allowed: bool,
    pub text: String,
}

/// [`explain`], then judges a DNS query for `name` on the flow the way the
/// worker does: the query is built as a real DNS message, parsed by
/// [`weir_model::l7::dns::parse_query`] and matched by the flow's
/// compiled [`weir_model::l7::dns::DnsRuleSet::allows`].
pub fn explain_dns(
    input: &PolicyInput,
    from: (&str, &str),
    to: (&str, &str),
    protocol: Protocol,
    port: u16,
    name: &str,
) -> Result<Explanation, PolicyError> {
    let mut e = explain_flow(input, from, to, protocol, port, None)?;
    let src = find(input, from)?;
    let dst = find(input, to)?;
    let spec = compile_for(input, 0, &[src, dst])?;
    let compiled = CompiledPolicy::build(spec)?;
    let set = e.egress.decision.dns;
    let query = dns_query(name)
        .ok_or_else(|| PolicyError::Input(format!("--dns: {name:?} is not a valid DNS name")))?;
    let (allowed, text) = match (e.allowed, set.and_then(|i| compiled.dns_set(i))) {
        _ if e.same_pod => (true, SAME_POD.to_string()),
        (false, _) => (false, "not judged: the flow itself is denied".to_string()),
        (true, None) => (
            true,
            "no DNS rules on this flow: every query passes".to_string(),
        ),
        (true, Some(rules)) => match weir_model::l7::dns::parse_query(&query) {
            Ok(q) if rules.allows(&q.qname) => (
                true,
                format!("query {name}: ALLOWED by DNS rule set {}", set.unwrap_or(0)),
            ),
            Ok(_) => (
                false,
                format!("query {name}: DENIED: no DNS rule matches; weir answers REFUSED"),
            ),
            Err(err) => (false, format!("query {name}: DENIED: malformed ({err:?})")),
        },
    };
    e.dns = Some(DnsExplanation {
        name: name.to_string(),
        set,
        allowed,
        text,
    });
    Ok(e)
}

/// What `--sni` found: the flow's TLS set and the verdict on a ClientHello
/// naming `name`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TlsExplanation {
    pub sni: String,
    /// The flow's L7 set, if its ingress decision carries one.
    pub set: Option<u32>,
    /// Whether the connection goes on (`false`: weir resets it).
    pub allowed: bool,
    pub text: String,
}

/// [`explain`], then judges a TLS connection whose ClientHello names
/// `sni` the way the worker does: a ClientHello is built, reassembled and
/// parsed by [`weir_model::l7::tls`] and the name matched by the flow's
/// compiled TLS rules.
pub fn explain_tls(
    input: &PolicyInput,
    from: (&str, &str),
    to: (&str, &str),
    protocol: Protocol,
    port: u16,
    sni: &str,
) -> Result<Explanation, PolicyError> {
    use weir_model::l7::tls;
    let mut e = explain_flow(input, from, to, protocol, port, None)?;
    let src = find(input, from)?;
    let dst = find(input, to)?;
    let spec = compile_for(input, 0, &[src, dst])?;
    let compiled = CompiledPolicy::build(spec)?;
    let set = e.ingress.decision.l7;
    let mut hello = client_hello(sni);
    let judged = tls::hello_extent(&hello).and_then(|end| {
        let n = tls::defragment(&mut hello, end.unwrap_or(0));
        let h = tls::parse_client_hello(&hello[..n])?;
        tls::precheck(&h).map(str::to_string)
    });
    let rules = set.and_then(|i| compiled.http_set(i));
    let (allowed, text) = match (e.allowed, rules) {
        _ if e.same_pod => (true, SAME_POD.to_string()),
        (false, _) => (false, "not judged: the flow itself is denied".to_string()),
        (true, None) => (true, "no L7 rules on this flow: every connection passes".to_string()),
        (true, Some(r)) => match (r.tls(), judged) {
            (None, _) => (
                false,
                "the flow is under HTTP rules: a TLS connection is not HTTP/1 and is denied"
                    .to_string(),
            ),
            (Some(_), Err(reason)) => (
                false,
                format!("server name {sni:?}: DENIED ({}); weir resets the connection", reason.as_str()),
            ),
            (Some(t), Ok(name)) => match t.judge(&name) {
                Some(i) => (
                    true,
                    format!("server name {name}: ALLOWED by tls[{i}] of set {}", set.unwrap_or(0)),
                ),
                None => (
                    false,
                    format!("server name {name}: DENIED (tls-sni-denied): no TLS rule matches; weir resets the connection"),
                ),
            },
        },
    };
    e.tls = Some(TlsExplanation {
        sni: sni.to_string(),
        set,
        allowed,
        text,
    });
    Ok(e)
}

/// A minimal ClientHello record naming `sni` (no `server_name` if empty).
fn client_hello(sni: &str) -> Vec<u8> {
    let mut ext = Vec::new();
    if !sni.is_empty() {
        let n = sni.len();
        ext.extend_from_slice(&[0, 0]);
        ext.extend_from_slice(&((n + 5) as u16).to_be_bytes());
        ext.extend_from_slice(&((n + 3) as u16).to_be_bytes());
        ext.push(0);
        ext.extend_from_slice(&(n as u16).to_be_bytes());
        ext.extend_from_slice(sni.as_bytes());
    }
    let mut b = vec![3, 3];
    b.extend_from_slice(&[0; 32]);
    b.extend_from_slice(&[0, 0, 2, 0x13, 0x01, 1, 0]);
    b.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    b.extend_from_slice(&ext);
    let mut m = vec![1];
    m.extend_from_slice(&(b.len() as u32).to_be_bytes()[1..]);
    m.extend_from_slice(&b);
    let mut r = vec![22, 3, 1];
    r.extend_from_slice(&(m.len() as u16).to_be_bytes());
    r.extend_from_slice(&m);
    r
}

/// A standard query (RD, one question, type A, class IN) for `name`.
fn dns_query(name: &str) -> Option<Vec<u8>> {
    let name = name.strip_suffix('.').unwrap_or(name);
    let mut m = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return None;
        }
        m.push(label.len() as u8);
        m.extend_from_slice(label.as_bytes());
    }
    m.extend_from_slice(&[0, 0, 1, 0, 1]);
    Some(m)
}

impl std::fmt::Display for Explanation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{} -> {} {}/{}: {}",
            self.from,
            self.to,
            self.protocol,
            self.port,
            match (self.same_pod, self.allowed) {
                (true, _) => "ALLOWED (the same pod: the traffic never leaves it)",
                (false, true) => "ALLOWED",
                (false, false) => "DENIED",
            }
        )?;
        writeln!(f, "  egress of {}: {}", self.from, self.egress.text)?;
        if let Some(o) = &self.egress.overrides {
            writeln!(f, "    overriding: {}", o.text)?;
        }
        write!(f, "  ingress of {}: {}", self.to, self.ingress.text)?;
        if let Some(o) = &self.ingress.overrides {
            write!(f, "\n    overriding: {}", o.text)?;
        }
        if let Some(h) = &self.http {
            write!(f, "\n{h}")?;
        }
        if let Some(d) = &self.dns {
            write!(f, "\n  DNS: {}", d.text)?;
        }
        if let Some(t) = &self.tls {
            write!(f, "\n  TLS: {}", t.text)?;
        }
        Ok(())
    }
}

fn side(p: &CompiledPolicy, d: Decision) -> SideExplanation {
    SideExplanation {
        decision: d,
        verdict: match (d.action, d.audit) {
            (Action::Allow, _) => "allow",
            (Action::Deny, true) => "audit",
            (Action::Deny, false) => "deny",
        },
        rule: p.rule(d.rule).cloned(),
        text: p.describe(&d),
        overrides: None,
    }
}

/// The object (`kind/ns/name`) of a rule's policy, as [`crate::model::Policy::object`].
fn rule_object(r: &RuleInfo) -> String {
    match &r.namespace {
        Some(ns) => format!("{}/{}/{}", r.kind, ns, r.name),
        None => format!("{}/{}", r.kind, r.name),
    }
}

/// Fills `side.overrides`: judges the flow again without the deciding
/// rule's policy and keeps that verdict when it differs. `judge` runs the
/// same compile-and-judge as the explanation, on a reduced input.
fn find_override(
    input: &PolicyInput,
    side_now: &mut SideExplanation,
    judge: impl Fn(&PolicyInput) -> Result<(CompiledPolicy, Decision), PolicyError>,
) -> Result<(), PolicyError> {
    let Some(rule) = &side_now.rule else {
        return Ok(());
    };
    let object = rule_object(rule);
    let reduced = PolicyInput {
        policies: input
            .policies
            .iter()
            .filter(|p| p.object() != object)
            .cloned()
            .collect(),
        ..input.clone()
    };
    if reduced.policies.len() == input.policies.len() {
        return Ok(());
    }
    let (compiled, d) = judge(&reduced)?;
    let other = side(&compiled, d);
    if other.verdict != side_now.verdict {
        side_now.overrides = Some(Overridden {
            verdict: other.verdict,
            rule: other.rule,
            text: other.text,
        });
    }
    Ok(())
}

fn find<'a>(input: &'a PolicyInput, (ns, name): (&str, &str)) -> Result<&'a PodInfo, PolicyError> {
    input
        .pods
        .iter()
        .find(|p| p.namespace == ns && p.name == name)
        .ok_or_else(|| PolicyError::Input(format!("pods/{ns}/{name}: no such pod")))
}

/// Explains `from` → `to` (`(namespace, pod)`) on `protocol`/`port`.
/// Uses the pods' IPv4 addresses when both have one, else IPv6. When the
/// ingress decision carries HTTP rules, [`Explanation::http`] lists them.
pub fn explain(
    input: &PolicyInput,
    from: (&str, &str),
    to: (&str, &str),
    protocol: Protocol,
    port: u16,
) -> Result<Explanation, PolicyError> {
    explain_flow(input, from, to, protocol, port, None)
}

/// [`explain`], then judges one HTTP request on the flow with the worker's
/// own code: the request head is fed to a fresh [`HttpInspector`] (the
/// strict parser and stream machine the pass runs, with the worker's
/// [`Limits`]) whose judge closure calls the flow's compiled
/// [`weir_model::l7::HttpRuleSet::judge`], exactly as the pass does.
pub fn explain_http(
    input: &PolicyInput,
    from: (&str, &str),
    to: (&str, &str),
    protocol: Protocol,
    port: u16,
    request: &HttpRequest,
) -> Result<Explanation, PolicyError> {
    explain_flow(input, from, to, protocol, port, Some(request))
}

fn explain_flow(
    input: &PolicyInput,
    from: (&str, &str),
    to: (&str, &str),
    protocol: Protocol,
    port: u16,
    request: Option<&HttpRequest>,
) -> Result<Explanation, PolicyError> {
    let src = find(input, from)?;
    let dst = find(input, to)?;
    if from == to {
        let local = SideExplanation {
            decision: Decision::NOT_APPLICABLE,
            verdict: "allow",
            rule: None,
            text: SAME_POD.to_string(),
            overrides: None,
        };
        return Ok(Explanation {
            allowed: true,
            from: format!("{}/{}", from.0, from.1),
            to: format!("{}/{}", to.0, to.1),
            protocol: protocol.to_string(),
            port,
            egress: local.clone(),
            ingress: local,
            http: None,
            dns: None,
            tls: None,
            same_pod: true,
        });
    }
    let (sa, da): (IpAddr, IpAddr) = match (src.ipv4, dst.ipv4, src.ipv6, dst.ipv6) {
        (Some(a), Some(b), _, _) => (a.into(), b.into()),
        (_, _, Some(a), Some(b)) => (a.into(), b.into()),
        _ => {
            return Err(PolicyError::Input(format!(
                "pods/{}/{} and pods/{}/{} share no address family",
                from.0, from.1, to.0, to.1
            )))
        }
    };
    let spec = compile_for(input, 0, &[src, dst])?;
    let http_specs = spec.http.clone();
    let compiled = CompiledPolicy::build(spec)?;
    let j = compiled.judge(
        Peer {
            endpoint: Some(0),
            addr: sa,
        },
        Peer {
            endpoint: Some(1),
            addr: da,
        },
        protocol_number(protocol),
        port,
    );
    let http = http_side(
        &compiled,
        &http_specs,
        j.allowed,
        j.ingress,
        request.map(|r| (r, SocketAddr::new(da, port))),
    );
    let mut egress = side(&compiled, j.egress);
    let mut ingress = side(&compiled, j.ingress);
    let judge_again = |input: &PolicyInput, ingress_side: bool| {
        let spec = compile_for(input, 0, &[src, dst])?;
        let c = CompiledPolicy::build(spec)?;
        let j = c.judge(
            Peer {
                endpoint: Some(0),
                addr: sa,
            },
            Peer {
                endpoint: Some(1),
                addr: da,
            },
            protocol_number(protocol),
            port,
        );
        let d = if ingress_side { j.ingress } else { j.egress };
        Ok((c, d))
    };
    find_override(input, &mut egress, |i| judge_again(i, false))?;
    find_override(input, &mut ingress, |i| judge_again(i, true))?;
    Ok(Explanation {
        dns: None,
        tls: None,
        same_pod: false,
        allowed: j.allowed,
        from: format!("{}/{}", from.0, from.1),
        to: format!("{}/{}", to.0, to.1),
        protocol: protocol.to_string(),
        port,
        egress,
        ingress,
        http,
    })
}

/// An HTTP request to judge (`weir explain --http 'GET /path'`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct HttpRequest {
    /// The request line without the version (`GET /public/a?x=1`), or with
    /// it (`GET / HTTP/1.0`); without, `HTTP/1.1` is added.
    pub line: String,
    /// The `Host` field; `None`: the destination's `address:port` (what
    /// curl sends), unless `headers` has a `Host`.
    pub host: Option<String>,
    /// Further header lines, as sent (`Name: value`).
    pub headers: Vec<String>,
}

impl HttpRequest {
    /// The request head bytes, as a client would send them: request line,
    /// `Host`, the headers, each ended by CRLF, then the empty line.
    pub fn head(&self, dst: SocketAddr) -> String {
        let line = self.line.trim();
        let mut s = String::from(line);
        let last = line.rsplit(' ').next().unwrap_or("");
        if line.split(' ').count() < 3 || !last.starts_with("HTTP/") {
            s.push_str(" HTTP/1.1");
        }
        s.push_str("\r\n");
        let has_host = self.headers.iter().any(|h| {
            h.split_once(':')
                .is_some_and(|(n, _)| n.trim().eq_ignore_ascii_case("host"))
        });
        match &self.host {
            Some(h) => s.push_str(&format!("Host: {h}\r\n")),
            None if has_host => {}
            None => s.push_str(&format!("Host: {dst}\r\n")),
        }
        for h in &self.headers {
            s.push_str(h);
            s.push_str("\r\n");
        }
        s.push_str("\r\n");
        s
    }
}

/// One entry of the flow's HTTP rule set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HttpEntry {
    /// Position in the set (first match allows).
    pub index: usize,
    pub spec: HttpRuleSpec,
    /// `method GET, path prefix /public`.
    pub text: String,
}

/// The verdict of the HTTP rules on one request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HttpRequestVerdict {
    /// The request head judged, as sent (CRLF line ends).
    pub head: String,
    /// Whether the request reaches the server.
    pub allowed: bool,
    /// `allow`, `deny` (weir answers 403 and closes), or `not-judged`
    /// (the connection itself is denied, or no HTTP rules apply: `allow`).
    pub verdict: &'static str,
    /// The allowing entry's index in the set.
    pub entry: Option<usize>,
    /// The inspector's deny reason (`l7-policy`: no entry matched; `http-*`:
    /// the head was refused by the strict parser).
    pub reason: Option<&'static str>,
    /// One line: `allow by http[0] (method GET, path prefix /public)`.
    pub text: String,
}

/// The HTTP side of a flow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HttpExplanation {
    /// [`Decision::l7`] of the ingress decision: `None` when the flow is not
    /// under HTTP rules (then every request on the connection passes).
    pub set: Option<u32>,
    /// The allowed entries (empty set: every request is denied).
    pub entries: Vec<HttpEntry>,
    /// The judged request, when one was given.
    pub request: Option<HttpRequestVerdict>,
}

impl std::fmt::Display for HttpExplanation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.set {
            Some(set) => {
                write!(
                    f,
                    "  HTTP rules (set {set}): every request on the connection is judged on its own; \
                     the first matching entry allows, anything else gets weir's 403 and the connection is closed"
                )?;
                if self.entries.is_empty() {
                    write!(f, "\n    (no entries: every request is denied)")?;
                }
                for e in &self.entries {
                    write!(f, "\n    http[{}]: {}", e.index, e.text)?;
                }
            }
            None => write!(f, "  HTTP rules: none on this flow")?,
        }
        if let Some(r) = &self.request {
            let line = r.head.split("\r\n").next().unwrap_or("");
            write!(f, "\n  request {line:?}: {}", r.text)?;
        }
        Ok(())
    }
}

/// `method GET, path prefix /public, host *.example.com, header X-Token: abc`.
pub fn describe_http_rule(r: &HttpRuleSpec) -> String {
    let mut parts = Vec::new();
    if let Some(m) = &r.method {
        parts.push(format!("method {m}"));
    }
    match &r.path {
        Some(PathMatchSpec::Exact(p)) => parts.push(format!("path exact {p}")),
        Some(PathMatchSpec::Prefix(p)) => parts.push(format!("path prefix {p}")),
        Some(PathMatchSpec::Regex(p)) => parts.push(format!("path regex {p}")),
        None => {}
    }
    if let Some(h) = &r.host {
        parts.push(format!("host {h}"));
    }
    for h in &r.headers {
        match &h.value {
            Some(v) => parts.push(format!("header {}: {v}", h.name)),
            None => parts.push(format!("header {} (present)", h.name)),
        }
    }
    if parts.is_empty() {
        "any request".into()
    } else {
        parts.join(", ")
    }
}

fn l7_reason_text(r: L7Reason) -> &'static str {
    match r {
        L7Reason::Policy => "no entry matched",
        L7Reason::HeadTooLong => "request head longer than the limit",
        L7Reason::HoldTimeout | L7Reason::TooManySegments | L7Reason::HoldOverflow => {
            "request head not completed in time"
        }
        _ => "the strict HTTP/1 parser refused the request head",
    }
}

fn http_side(
    compiled: &CompiledPolicy,
    specs: &[HttpRuleSetSpec],
    allowed: bool,
    ingress: Decision,
    request: Option<(&HttpRequest, SocketAddr)>,
) -> Option<HttpExplanation> {
    let set = ingress.l7;
    if set.is_none() && request.is_none() {
        return None;
    }
    let entries: Vec<HttpEntry> = set
        .and_then(|s| specs.get(s as usize))
        .map(|s| {
            s.rules
                .iter()
                .enumerate()
                .map(|(index, r)| HttpEntry {
                    index,
                    spec: r.clone(),
                    text: describe_http_rule(r),
                })
                .collect()
        })
        .unwrap_or_default();
    let request = request.map(|(req, dst)| {
        let head = req.head(dst);
        let not_judged = |text: &str| HttpRequestVerdict {
            head: head.clone(),
            allowed,
            verdict: if allowed { "allow" } else { "not-judged" },
            entry: None,
            reason: None,
            text: text.into(),
        };
        if !allowed {
            return not_judged("not judged: the connection is denied at L3/L4");
        }
        let Some(rules) = set.and_then(|s| compiled.http_set(s)) else {
            return not_judged("allow: no HTTP rules on this flow, every request passes");
        };
        // What the pass does (dataplane/src/pass.rs, stage l7): a fresh
        // inspector started at ISN+1, the segment fed, and the judge
        // closure asking the flow's rule set.
        let mut insp = HttpInspector::new(Limits::default());
        insp.start(1);
        let mut entry = None;
        let feed = insp.feed(1, head.as_bytes(), 0, |h| match rules.judge(h) {
            Some(i) => {
                entry.get_or_insert(i);
                L7Verdict::Allow
            }
            None => L7Verdict::Deny,
        });
        let e = |i: usize| entries.get(i).map_or(String::new(), |e| e.text.clone());
        match feed {
            Feed::Release | Feed::Forward => HttpRequestVerdict {
                head: head.clone(),
                allowed: true,
                verdict: "allow",
                entry,
                reason: None,
                text: match entry {
                    Some(i) => format!("ALLOWED by http[{i}] ({})", e(i)),
                    None => "ALLOWED".into(),
                },
            },
            Feed::Deny(r) => HttpRequestVerdict {
                head: head.clone(),
                allowed: false,
                verdict: "deny",
                entry: None,
                reason: Some(r.as_str()),
                text: format!(
                    "DENIED: weir answers 403 and closes the connection ({}: {})",
                    r.as_str(),
                    l7_reason_text(r)
                ),
            },
            Feed::Hold | Feed::Drop | Feed::Busy => HttpRequestVerdict {
                head: head.clone(),
                allowed: false,
                verdict: "deny",
                entry: None,
                reason: Some(L7Reason::HoldTimeout.as_str()),
                text:
                    "DENIED: the request head never completes (held, then 403 after the hold limit)"
                        .into(),
            },
        }
    });
    Some(HttpExplanation {
        set,
        entries,
        request,
    })
}

/// One side of a flow for [`explain_host`]: a pod, or the node itself.
#[derive(Clone, Copy, Debug)]
pub enum FlowEnd<'a> {
    /// `(namespace, pod)`.
    Pod(&'a str, &'a str),
    /// The node (its name, for the text) as a host endpoint.
    Node(&'a str),
    /// Any address (the world, another node): only as the destination of
    /// the node's own outbound traffic (its nftables table, docs/policy.md).
    Addr(IpAddr),
}

/// [`explain`] for a flow between a pod and its node (host endpoint
/// policy, docs/policy.md): compiles `host` as the node's own endpoint
/// and the pod as the local endpoint, and judges with the workers'
/// lookup. The node's address is its first of the pod's family.
pub fn explain_host(
    input: &PolicyInput,
    host: &crate::HostEndpoint,
    from: FlowEnd<'_>,
    to: FlowEnd<'_>,
    protocol: Protocol,
    port: u16,
) -> Result<Explanation, PolicyError> {
    if let (FlowEnd::Node(_), FlowEnd::Addr(addr)) = (from, to) {
        return explain_host_out(host, from, to, addr, input, protocol, port);
    }
    let (pod_end, node, node_is_src) = match (from, to) {
        (FlowEnd::Pod(ns, n), FlowEnd::Node(node)) => ((ns, n), node, false),
        (FlowEnd::Node(node), FlowEnd::Pod(ns, n)) => ((ns, n), node, true),
        _ => {
            return Err(PolicyError::Input(
                "explain with a node: the other side must be a pod".into(),
            ))
        }
    };
    let pod = find(input, pod_end)?;
    let pod_addr: Option<IpAddr> = pod.ipv4.map(IpAddr::V4).or(pod.ipv6.map(IpAddr::V6));
    let node_addr = pod_addr.and_then(|a| {
        host.addrs
            .iter()
            .copied()
            .find(|h| h.is_ipv4() == a.is_ipv4())
    });
    let (Some(pa), Some(na)) = (pod_addr, node_addr) else {
        return Err(PolicyError::Input(format!(
            "pods/{}/{} and nodes/{node} share no address family",
            pod_end.0, pod_end.1
        )));
    };
    let spec = crate::compile::compile_for_host(input, 0, &[pod], Some(host))?;
    let compiled = CompiledPolicy::build(spec)?;
    let pod_peer = Peer {
        endpoint: Some(0),
        addr: pa,
    };
    let node_peer = Peer {
        endpoint: None,
        addr: na,
    };
    let (s, d) = if node_is_src {
        (node_peer, pod_peer)
    } else {
        (pod_peer, node_peer)
    };
    let j = compiled.judge(s, d, protocol_number(protocol), port);
    Ok(plain_explanation(&compiled, j, from, to, protocol, port))
}

/// The explanation of a flow with a node at one end (no L7 part): both
/// sides' deciding rules as `CompiledPolicy::judge` found them.
fn plain_explanation(
    compiled: &CompiledPolicy,
    j: weir_model::policy::Judgement,
    from: FlowEnd<'_>,
    to: FlowEnd<'_>,
    protocol: Protocol,
    port: u16,
) -> Explanation {
    Explanation {
        allowed: j.allowed,
        from: end_name(from),
        to: end_name(to),
        protocol: protocol.to_string(),
        port,
        egress: side(compiled, j.egress),
        ingress: side(compiled, j.ingress),
        http: None,
        dns: None,
        tls: None,
        same_pod: false,
    }
}

fn end_name(e: FlowEnd<'_>) -> String {
    match e {
        FlowEnd::Pod(ns, n) => format!("{ns}/{n}"),
        FlowEnd::Node(n) => format!("node/{n}"),
        FlowEnd::Addr(a) => a.to_string(),
    }
}

/// [`explain_host`] for the node's own outbound traffic to an address
/// outside its pods (the world, another node): the node's egress host
/// table, the one its nftables table `inet weir_host` renders. The node's
/// address is its first of the destination's family.
fn explain_host_out(
    host: &crate::HostEndpoint,
    from: FlowEnd<'_>,
    to: FlowEnd<'_>,
    addr: IpAddr,
    input: &PolicyInput,
    protocol: Protocol,
    port: u16,
) -> Result<Explanation, PolicyError> {
    let Some(na) = host
        .addrs
        .iter()
        .copied()
        .find(|h| h.is_ipv4() == addr.is_ipv4())
    else {
        return Err(PolicyError::Input(format!(
            "{} has no address of {addr}'s family",
            end_name(from)
        )));
    };
    // A pod's address: its own side is judged too (the worker's flow).
    if let Some(p) = input
        .pods
        .iter()
        .find(|p| p.ipv4.map(IpAddr::V4) == Some(addr) || p.ipv6.map(IpAddr::V6) == Some(addr))
    {
        return Err(PolicyError::Input(format!(
            "{addr} is pods/{}/{}: use --to {}/{}",
            p.namespace, p.name, p.namespace, p.name
        )));
    }
    let spec = crate::compile::compile_for_host(input, 0, &[], Some(host))?;
    let compiled = CompiledPolicy::build(spec)?;
    let j = compiled.judge(
        Peer {
            endpoint: None,
            addr: na,
        },
        Peer {
            endpoint: None,
            addr,
        },
        protocol_number(protocol),
        port,
    );
    Ok(plain_explanation(&compiled, j, from, to, protocol, port))
}
