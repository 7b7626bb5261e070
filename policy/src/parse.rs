//! Policy manifests into [`Policy`] values: routes documents by kind,
//! decodes them into each kind's schema (every field the API defines; any
//! other field is refused under the default `strict` field validation, as
//! the API server does, or dropped under `warn`/`ignore`), validates, and
//! reports the first problem as one line:
//! `<resource>/<ns>/<name>: <field path>: <why>`.

use crate::model::*;
use crate::selector::{Labels, Operator, Requirement, Selector};
use crate::PolicyError;
use ipnet::IpNet;
use serde::de::{DeserializeOwned, IgnoredAny};
use serde::Deserialize;
use serde_yaml::Value;
use std::cell::RefCell;
use weir_model::fields::{self, Decoded, FieldValidation};
use weir_model::manifest::{split_documents, Document, ObjectMeta};

pub const NETWORKING_V1: &str = "networking.k8s.io/v1";
pub const NETPOL_V1ALPHA1: &str = "policy.networking.k8s.io/v1alpha1";
pub const NETPOL_V1ALPHA2: &str = "policy.networking.k8s.io/v1alpha2";
pub const WEIR_V1ALPHA1: &str = "weir.dev/v1alpha1";

/// Whether [`parse_document`] reads documents of that kind.
pub fn is_policy_kind(api_version: &str, kind: &str) -> bool {
    matches!(
        (api_version, kind),
        (NETWORKING_V1, "NetworkPolicy")
            | (NETPOL_V1ALPHA2, "ClusterNetworkPolicy")
            | (NETPOL_V1ALPHA1, "AdminNetworkPolicy")
            | (NETPOL_V1ALPHA1, "BaselineAdminNetworkPolicy")
            | (WEIR_V1ALPHA1, "WeirPolicy")
            | (WEIR_V1ALPHA1, "WeirClusterPolicy")
    )
}

/// Parses every document of `text`; each must be a policy kind.
pub fn parse_str(text: &str, source: &str) -> Result<Vec<Policy>, PolicyError> {
    let mut out = Vec::new();
    for doc in split_documents(text, source)? {
        out.push(parse_document(&doc)?);
    }
    Ok(out)
}

/// Parses one document of a policy kind; unknown fields are refused.
pub fn parse_document(doc: &Document) -> Result<Policy, PolicyError> {
    parse_document_with(doc, FieldValidation::Strict).map(|p| p.policy)
}

/// A policy parsed under a field-validation mode.
#[derive(Debug)]
pub struct Parsed {
    pub policy: Policy,
    /// The document without the fields that were dropped (`warn`/`ignore`):
    /// what to store, so that reading it back is clean under `strict`.
    pub value: Value,
    /// The dropped fields, one `<object>: <field path>` each.
    pub ignored: Vec<String>,
}

/// Parses one document of a policy kind under `mode`: an unknown field is
/// an error under `strict`, dropped (and listed in [`Parsed::ignored`])
/// under `warn` and `ignore`.
pub fn parse_document_with(doc: &Document, mode: FieldValidation) -> Result<Parsed, PolicyError> {
    if !is_policy_kind(&doc.api_version, &doc.kind) {
        return Err(PolicyError::UnknownKind {
            file: doc.file.clone(),
            index: doc.index,
            kind: doc.kind.clone(),
            api_version: doc.api_version.clone(),
        });
    }
    let meta = doc.value.get("metadata");
    let name = meta
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let namespaced = matches!(doc.kind.as_str(), "NetworkPolicy" | "WeirPolicy");
    let namespace = namespaced.then(|| {
        meta.and_then(|m| m.get("namespace"))
            .and_then(Value::as_str)
            .unwrap_or(weir_model::manifest::DEFAULT_NAMESPACE)
            .to_string()
    });
    let kind = match doc.kind.as_str() {
        "NetworkPolicy" => Kind::NetworkPolicy,
        "ClusterNetworkPolicy" => Kind::ClusterNetworkPolicy,
        "AdminNetworkPolicy" => Kind::AdminNetworkPolicy,
        "BaselineAdminNetworkPolicy" => Kind::BaselineAdminNetworkPolicy,
        "WeirPolicy" => Kind::WeirPolicy,
        _ => Kind::WeirClusterPolicy,
    };
    let mut cx = Cx {
        object: match &namespace {
            Some(ns) => format!("{}/{}/{}", kind.resource(), ns, name),
            None => format!("{}/{}", kind.resource(), name),
        },
        mode,
        decoded: RefCell::new(None),
    };
    if name.is_empty() {
        cx.object = format!("{}: document {}", doc.file, doc.index);
        return Err(cx.err("metadata.name", "required"));
    }
    let base = Policy {
        kind,
        namespace: namespace.clone(),
        name,
        tier: Tier::Namespace,
        priority: 0,
        subject: Subject::Cluster {
            namespaces: Selector::everything(),
            pods: Selector::everything(),
        },
        ingress: vec![],
        egress: vec![],
        isolates: [false, false],
        audit: false,
    };
    let policy = match kind {
        Kind::NetworkPolicy => network_policy(&cx, doc, base),
        Kind::WeirPolicy | Kind::WeirClusterPolicy => weir_policy(&cx, doc, base),
        Kind::ClusterNetworkPolicy => cluster_network_policy(&cx, doc, base),
        Kind::AdminNetworkPolicy | Kind::BaselineAdminNetworkPolicy => admin_policy(&cx, doc, base),
    }?;
    let decoded = cx.decoded.into_inner().unwrap_or_default();
    Ok(Parsed {
        policy,
        value: decoded.value,
        ignored: decoded
            .ignored
            .into_iter()
            .map(|f| format!("{}: {f}", cx.object))
            .collect(),
    })
}

struct Cx {
    object: String,
    mode: FieldValidation,
    /// What [`Cx::decode`] dropped, and the object without it.
    decoded: RefCell<Option<Decoded>>,
}

impl Cx {
    fn err(&self, field: impl Into<String>, msg: impl Into<String>) -> PolicyError {
        PolicyError::Invalid {
            object: self.object.clone(),
            field: field.into(),
            msg: msg.into(),
        }
    }

    /// Decodes the whole document into its wire shape under the mode.
    fn decode<T: DeserializeOwned>(&self, doc: &Document) -> Result<T, PolicyError> {
        let (t, decoded) =
            fields::decode::<T>(&doc.value, self.mode).map_err(|e| self.err(e.path, e.msg))?;
        *self.decoded.borrow_mut() = Some(decoded);
        Ok(t)
    }
}

// ---- wire shapes ----
//
// Each kind's schema as its API defines it: every struct refuses a field it
// does not declare (see `weir_model::fields` for `--field-validation`).

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
struct RawSelector {
    match_labels: Option<Labels>,
    match_expressions: Option<Vec<RawRequirement>>,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct RawRequirement {
    key: Option<String>,
    operator: Option<String>,
    values: Option<Vec<String>>,
}

// NetworkPolicy (networking.k8s.io/v1) and the selector/peer/port shapes
// weir's own kinds share with it.

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
struct RawNpDoc {
    api_version: Option<String>,
    kind: Option<String>,
    metadata: ObjectMeta,
    spec: RawNpSpec,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
struct RawNpSpec {
    pod_selector: Option<RawSelector>,
    policy_types: Option<Vec<String>>,
    ingress: Option<Vec<RawNpIngressRule>>,
    egress: Option<Vec<RawNpEgressRule>>,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct RawNpIngressRule {
    from: Option<Vec<RawNpPeer>>,
    ports: Option<Vec<RawNpPort>>,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct RawNpEgressRule {
    to: Option<Vec<RawNpPeer>>,
    ports: Option<Vec<RawNpPort>>,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
struct RawNpPeer {
    pod_selector: Option<RawSelector>,
    namespace_selector: Option<RawSelector>,
    ip_block: Option<RawIpBlock>,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct RawIpBlock {
    cidr: Option<String>,
    except: Option<Vec<String>>,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
struct RawNpPort {
    protocol: Option<String>,
    /// A number or a port name (`IntOrString`), checked by [`np_ports`].
    port: Option<Value>,
    end_port: Option<i64>,
}

// WeirPolicy and WeirClusterPolicy (weir.dev/v1alpha1): one spec and one
// rule shape for both kinds and directions; what is not allowed where
// (`priority` in a WeirPolicy, `http` on egress, `to` on ingress, ...) is
// refused with its own message by [`weir_policy`].

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
struct RawWeirDoc {
    api_version: Option<String>,
    kind: Option<String>,
    metadata: ObjectMeta,
    spec: RawWeirSpec,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
struct RawWeirSpec {
    pod_selector: Option<RawSelector>,
    policy_types: Option<Vec<String>>,
    ingress: Option<Vec<RawWeirRule>>,
    egress: Option<Vec<RawWeirRule>>,
    priority: Option<i64>,
    audit: Option<bool>,
    subject: Option<RawWeirSubject>,
    tier: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct RawWeirRule {
    from: Option<Vec<RawNpPeer>>,
    to: Option<Vec<RawNpPeer>>,
    ports: Option<Vec<RawNpPort>>,
    action: Option<String>,
    name: Option<String>,
    http: Option<Vec<RawHttpRule>>,
    dns: Option<Vec<RawDnsName>>,
    tls: Option<Vec<RawTlsRule>>,
    #[serde(rename = "toFQDNs")]
    to_fqdns: Option<Vec<RawFqdn>>,
    grpc: Option<Vec<RawGrpcRule>>,
}

/// `grpc: [{service: "pkg.Svc", method: "Get"}]`: a gRPC call is
/// `POST /pkg.Svc/Method` (over HTTP/2); method left out = every method
/// of the service. Compiled into HTTP rules.
#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct RawGrpcRule {
    service: Option<String>,
    method: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
struct RawWeirSubject {
    namespace_selector: Option<RawSelector>,
    pod_selector: Option<RawSelector>,
    /// Host endpoint policy: the nodes (by Node labels) it applies to.
    node_selector: Option<RawSelector>,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct RawDnsName {
    name: Option<String>,
    pattern: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
struct RawFqdn {
    match_name: Option<String>,
    match_pattern: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttpRule {
    method: Option<String>,
    path: Option<RawHttpPath>,
    host: Option<String>,
    #[serde(default)]
    headers: Vec<RawHttpHeader>,
}

/// One `tls:` entry of a WeirPolicy rule: an allowed server name.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTlsRule {
    sni: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttpPath {
    exact: Option<String>,
    prefix: Option<String>,
    regex: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttpHeader {
    name: String,
    value: Option<String>,
}

// AdminNetworkPolicy and BaselineAdminNetworkPolicy
// (policy.networking.k8s.io/v1alpha1), ClusterNetworkPolicy (v1alpha2).

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
struct RawClusterDoc<S> {
    api_version: Option<String>,
    kind: Option<String>,
    metadata: ObjectMeta,
    spec: Option<S>,
    /// Written by controllers (conditions); not read by weir.
    status: Option<IgnoredAny>,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct RawAnpSpec {
    priority: Option<i64>,
    subject: Option<RawClusterSubject>,
    ingress: Option<Vec<RawAnpIngressRule>>,
    egress: Option<Vec<RawAnpEgressRule>>,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct RawBanpSpec {
    subject: Option<RawClusterSubject>,
    ingress: Option<Vec<RawAnpIngressRule>>,
    egress: Option<Vec<RawAnpEgressRule>>,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct RawCnpSpec {
    tier: Option<String>,
    priority: Option<i64>,
    subject: Option<RawClusterSubject>,
    ingress: Option<Vec<RawCnpIngressRule>>,
    egress: Option<Vec<RawCnpEgressRule>>,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct RawClusterSubject {
    namespaces: Option<RawSelector>,
    pods: Option<RawNamespacedPod>,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
struct RawNamespacedPod {
    namespace_selector: Option<RawSelector>,
    pod_selector: Option<RawSelector>,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct RawIngressPeer {
    namespaces: Option<RawSelector>,
    pods: Option<RawNamespacedPod>,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct RawEgressPeer {
    namespaces: Option<RawSelector>,
    pods: Option<RawNamespacedPod>,
    networks: Option<Vec<String>>,
    /// Not supported: refused when present, whatever it holds.
    nodes: Option<Value>,
    /// Not supported: refused when present, whatever it holds.
    #[serde(rename = "domainNames")]
    domain_names: Option<Value>,
}

impl From<RawIngressPeer> for RawEgressPeer {
    fn from(p: RawIngressPeer) -> Self {
        RawEgressPeer {
            namespaces: p.namespaces,
            pods: p.pods,
            ..Default::default()
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct RawAnpIngressRule {
    name: Option<String>,
    action: Option<String>,
    from: Option<Vec<RawIngressPeer>>,
    ports: Option<Vec<RawAnpPort>>,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct RawAnpEgressRule {
    name: Option<String>,
    action: Option<String>,
    to: Option<Vec<RawEgressPeer>>,
    ports: Option<Vec<RawAnpPort>>,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct RawCnpIngressRule {
    name: Option<String>,
    action: Option<String>,
    from: Option<Vec<RawIngressPeer>>,
    protocols: Option<Vec<RawCnpProtocol>>,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct RawCnpEgressRule {
    name: Option<String>,
    action: Option<String>,
    to: Option<Vec<RawEgressPeer>>,
    protocols: Option<Vec<RawCnpProtocol>>,
}

/// A rule of any cluster kind, either direction, once decoded.
struct ClusterRule {
    name: Option<String>,
    action: Option<String>,
    peers: Option<Vec<RawEgressPeer>>,
    ports: Option<Vec<RawAnpPort>>,
    protocols: Option<Vec<RawCnpProtocol>>,
}

fn ingress_peers(p: Option<Vec<RawIngressPeer>>) -> Option<Vec<RawEgressPeer>> {
    p.map(|v| v.into_iter().map(RawEgressPeer::from).collect())
}

impl From<RawAnpIngressRule> for ClusterRule {
    fn from(r: RawAnpIngressRule) -> Self {
        ClusterRule {
            name: r.name,
            action: r.action,
            peers: ingress_peers(r.from),
            ports: r.ports,
            protocols: None,
        }
    }
}

impl From<RawAnpEgressRule> for ClusterRule {
    fn from(r: RawAnpEgressRule) -> Self {
        ClusterRule {
            name: r.name,
            action: r.action,
            peers: r.to,
            ports: r.ports,
            protocols: None,
        }
    }
}

impl From<RawCnpIngressRule> for ClusterRule {
    fn from(r: RawCnpIngressRule) -> Self {
        ClusterRule {
            name: r.name,
            action: r.action,
            peers: ingress_peers(r.from),
            ports: None,
            protocols: r.protocols,
        }
    }
}

impl From<RawCnpEgressRule> for ClusterRule {
    fn from(r: RawCnpEgressRule) -> Self {
        ClusterRule {
            name: r.name,
            action: r.action,
            peers: r.to,
            ports: None,
            protocols: r.protocols,
        }
    }
}

fn cluster_rules<I: Into<ClusterRule>>(v: Option<Vec<I>>) -> Vec<ClusterRule> {
    v.into_iter().flatten().map(Into::into).collect()
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct RawAnpPortNumber {
    protocol: Option<String>,
    port: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct RawAnpPortRange {
    protocol: Option<String>,
    start: Option<i64>,
    end: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
struct RawAnpPort {
    port_number: Option<RawAnpPortNumber>,
    named_port: Option<String>,
    port_range: Option<RawAnpPortRange>,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct RawCnpRange {
    start: Option<i64>,
    end: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct RawCnpPort {
    number: Option<i64>,
    range: Option<RawCnpRange>,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
struct RawCnpProtoPort {
    destination_port: Option<RawCnpPort>,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
struct RawCnpProtocol {
    tcp: Option<RawCnpProtoPort>,
    udp: Option<RawCnpProtoPort>,
    sctp: Option<RawCnpProtoPort>,
    destination_named_port: Option<String>,
}

/// The field tree of a policy kind's wire shape (for the strictness
/// tests); `None` for a kind that is not a policy kind.
#[doc(hidden)]
pub fn field_tree(kind: &str) -> Option<weir_model::fields::Shape> {
    use weir_model::fields::field_tree;
    Some(match kind {
        "NetworkPolicy" => field_tree::<RawNpDoc>(),
        "WeirPolicy" | "WeirClusterPolicy" => field_tree::<RawWeirDoc>(),
        "AdminNetworkPolicy" => field_tree::<RawClusterDoc<RawAnpSpec>>(),
        "BaselineAdminNetworkPolicy" => field_tree::<RawClusterDoc<RawBanpSpec>>(),
        "ClusterNetworkPolicy" => field_tree::<RawClusterDoc<RawCnpSpec>>(),
        _ => return None,
    })
}

// ---- pieces ----

fn selector(cx: &Cx, field: &str, raw: &Option<RawSelector>) -> Result<Selector, PolicyError> {
    let Some(raw) = raw else {
        return Ok(Selector::everything());
    };
    let mut sel = Selector {
        match_labels: raw.match_labels.clone().unwrap_or_default(),
        match_expressions: vec![],
    };
    for (i, r) in raw.match_expressions.iter().flatten().enumerate() {
        let f = format!("{field}.matchExpressions[{i}]");
        let key = match &r.key {
            Some(k) if !k.is_empty() => k.clone(),
            _ => return Err(cx.err(format!("{f}.key"), "required")),
        };
        let op = match r.operator.as_deref() {
            Some("In") => Operator::In,
            Some("NotIn") => Operator::NotIn,
            Some("Exists") => Operator::Exists,
            Some("DoesNotExist") => Operator::DoesNotExist,
            Some(other) => {
                return Err(cx.err(
                    format!("{f}.operator"),
                    format!(
                        "unknown operator {other:?}; expected In, NotIn, Exists or DoesNotExist"
                    ),
                ))
            }
            None => return Err(cx.err(format!("{f}.operator"), "required")),
        };
        let values = r.values.clone().unwrap_or_default();
        match op {
            Operator::In | Operator::NotIn if values.is_empty() => {
                return Err(cx.err(
                    format!("{f}.values"),
                    format!("must be non-empty for operator {op:?}"),
                ))
            }
            Operator::Exists | Operator::DoesNotExist if !values.is_empty() => {
                return Err(cx.err(
                    format!("{f}.values"),
                    format!("must be empty for operator {op:?}"),
                ))
            }
            _ => {}
        }
        sel.match_expressions.push(Requirement { key, op, values });
    }
    Ok(sel)
}

fn cidr(cx: &Cx, field: &str, text: &str) -> Result<IpNet, PolicyError> {
    let net: IpNet = text
        .parse()
        .map_err(|_| cx.err(field, format!("{text:?} is not a CIDR")))?;
    Ok(net.trunc())
}

fn protocol(cx: &Cx, field: &str, p: Option<&str>) -> Result<Protocol, PolicyError> {
    match p {
        None | Some("TCP") => Ok(Protocol::Tcp),
        Some("UDP") => Ok(Protocol::Udp),
        Some("SCTP") => Ok(Protocol::Sctp),
        Some(other) => Err(cx.err(
            field,
            format!("unknown protocol {other:?}; expected TCP, UDP or SCTP"),
        )),
    }
}

fn port_number(cx: &Cx, field: &str, n: i64) -> Result<u16, PolicyError> {
    if (1..=65535).contains(&n) {
        Ok(n as u16)
    } else {
        Err(cx.err(field, format!("{n} is not a port (1-65535)")))
    }
}

/// IANA_SVC_NAME: 1-15 of [a-z0-9-], at least one letter, no leading,
/// trailing or double hyphen.
fn port_name(cx: &Cx, field: &str, name: &str) -> Result<String, PolicyError> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && name.bytes().any(|b| b.is_ascii_lowercase())
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--");
    if ok {
        Ok(name.to_string())
    } else {
        Err(cx.err(
            field,
            format!("{name:?} is not a valid port name (IANA_SVC_NAME)"),
        ))
    }
}

fn np_ports(
    cx: &Cx,
    field: &str,
    raw: &Option<Vec<RawNpPort>>,
) -> Result<Option<Vec<PortMatch>>, PolicyError> {
    let Some(raw) = raw.as_ref().filter(|r| !r.is_empty()) else {
        return Ok(None);
    };
    let mut out = Vec::new();
    for (i, p) in raw.iter().enumerate() {
        let f = format!("{field}[{i}]");
        let proto = protocol(cx, &format!("{f}.protocol"), p.protocol.as_deref())?;
        match &p.port {
            None | Some(Value::Null) => {
                if p.end_port.is_some() {
                    return Err(cx.err(format!("{f}.endPort"), "requires port"));
                }
                out.push(PortMatch::all(proto));
            }
            Some(Value::Number(n)) => {
                let n = n.as_i64().unwrap_or(-1);
                let start = port_number(cx, &format!("{f}.port"), n)?;
                let end = match p.end_port {
                    None => start,
                    Some(e) => {
                        let e = port_number(cx, &format!("{f}.endPort"), e)?;
                        if e < start {
                            return Err(cx.err(
                                format!("{f}.endPort"),
                                format!("{e} is less than port {start}"),
                            ));
                        }
                        e
                    }
                };
                out.push(PortMatch::Range {
                    protocol: proto,
                    start,
                    end,
                });
            }
            Some(Value::String(s)) => {
                let name = port_name(cx, &format!("{f}.port"), s)?;
                if p.end_port.is_some() {
                    return Err(
                        cx.err(format!("{f}.endPort"), "may not be set when port is a name")
                    );
                }
                out.push(PortMatch::Named {
                    protocol: Some(proto),
                    name,
                });
            }
            Some(_) => return Err(cx.err(format!("{f}.port"), "must be a number or a name")),
        }
    }
    Ok(Some(out))
}

fn np_peers(
    cx: &Cx,
    field: &str,
    raw: &Option<Vec<RawNpPeer>>,
    own_namespace: Option<&str>,
) -> Result<Vec<Peer>, PolicyError> {
    let Some(raw) = raw.as_ref().filter(|r| !r.is_empty()) else {
        return Ok(vec![Peer::Any]);
    };
    let mut out = Vec::new();
    for (i, p) in raw.iter().enumerate() {
        let f = format!("{field}[{i}]");
        if let Some(b) = &p.ip_block {
            if p.pod_selector.is_some() || p.namespace_selector.is_some() {
                return Err(cx.err(
                    f,
                    "ipBlock may not be combined with podSelector or namespaceSelector",
                ));
            }
            let c = match &b.cidr {
                Some(c) => cidr(cx, &format!("{f}.ipBlock.cidr"), c)?,
                None => return Err(cx.err(format!("{f}.ipBlock.cidr"), "required")),
            };
            let mut except = Vec::new();
            for (j, e) in b.except.iter().flatten().enumerate() {
                let ef = format!("{f}.ipBlock.except[{j}]");
                let e = cidr(cx, &ef, e)?;
                if !c.contains(&e) || e == c {
                    return Err(cx.err(ef, format!("{e} is not strictly inside {c}")));
                }
                except.push(e);
            }
            out.push(Peer::Cidr { cidr: c, except });
            continue;
        }
        if p.pod_selector.is_none() && p.namespace_selector.is_none() {
            return Err(cx.err(f, "must set podSelector, namespaceSelector or ipBlock"));
        }
        let pods = selector(cx, &format!("{f}.podSelector"), &p.pod_selector)?;
        let namespaces = match (&p.namespace_selector, own_namespace) {
            (Some(_), _) | (None, None) => Namespaces::Selector(selector(
                cx,
                &format!("{f}.namespaceSelector"),
                &p.namespace_selector,
            )?),
            (None, Some(ns)) => Namespaces::Same(ns.to_string()),
        };
        out.push(Peer::Pods { namespaces, pods });
    }
    Ok(out)
}

/// A NetworkPolicy rule of either direction: its peers and ports.
type NpRule<'a> = (&'a Option<Vec<RawNpPeer>>, &'a Option<Vec<RawNpPort>>);

fn network_policy(cx: &Cx, doc: &Document, mut p: Policy) -> Result<Policy, PolicyError> {
    let raw: RawNpDoc = cx.decode(doc)?;
    let spec = raw.spec;
    let ns = p.namespace.clone().unwrap_or_default();
    let ingress: Vec<NpRule> = spec
        .ingress
        .iter()
        .flatten()
        .map(|r| (&r.from, &r.ports))
        .collect();
    let egress: Vec<NpRule> = spec
        .egress
        .iter()
        .flatten()
        .map(|r| (&r.to, &r.ports))
        .collect();
    p.subject = Subject::Namespace {
        namespace: ns.clone(),
        pods: selector(cx, "spec.podSelector", &spec.pod_selector)?,
    };
    for (dir, rules, peers_field) in [
        (Direction::Ingress, &ingress, "from"),
        (Direction::Egress, &egress, "to"),
    ] {
        let mut out = Vec::new();
        for (i, (peers, ports)) in rules.iter().enumerate() {
            let f = format!("spec.{}[{i}]", dir.as_str());
            out.push(Rule {
                action: RuleAction::Allow,
                action_text: "Allow".into(),
                peers: np_peers(cx, &format!("{f}.{peers_field}"), peers, Some(&ns))?,
                ports: np_ports(cx, &format!("{f}.ports"), ports)?,
                name: None,
                http: None,
                dns: None,
                to_fqdns: None,
            });
        }
        match dir {
            Direction::Ingress => p.ingress = out,
            Direction::Egress => p.egress = out,
        }
    }
    p.isolates = match &spec.policy_types {
        Some(types) if !types.is_empty() => {
            let mut iso = [false, false];
            for (i, t) in types.iter().enumerate() {
                match t.as_str() {
                    "Ingress" => iso[0] = true,
                    "Egress" => iso[1] = true,
                    other => {
                        return Err(cx.err(
                            format!("spec.policyTypes[{i}]"),
                            format!("unknown policy type {other:?}; expected Ingress or Egress"),
                        ))
                    }
                }
            }
            iso
        }
        // Upstream defaulting: Ingress always, Egress iff egress rules exist.
        _ => [true, !p.egress.is_empty()],
    };
    Ok(p)
}

fn weir_policy(cx: &Cx, doc: &Document, mut p: Policy) -> Result<Policy, PolicyError> {
    let raw: RawWeirDoc = cx.decode(doc)?;
    let spec = raw.spec;
    let cluster = p.kind == Kind::WeirClusterPolicy;
    p.audit = spec.audit.unwrap_or(false);
    if cluster {
        // Admin (the default) or Baseline: after the namespace tier, as
        // ClusterNetworkPolicy's Baseline tier (docs/policy.md).
        p.tier = match spec.tier.as_deref() {
            None | Some("Admin") => Tier::Admin,
            Some("Baseline") => Tier::Baseline,
            Some(other) => {
                return Err(cx.err(
                    "spec.tier",
                    format!("unknown tier {other:?}; expected Admin or Baseline"),
                ))
            }
        };
        p.priority = match spec.priority {
            Some(n) if (0..=1000).contains(&n) => n as i32,
            Some(n) => return Err(cx.err("spec.priority", format!("{n} is not in 0-1000"))),
            None => return Err(cx.err("spec.priority", "required")),
        };
        if spec.pod_selector.is_some() {
            return Err(cx.err(
                "spec.podSelector",
                "not a WeirClusterPolicy field; use spec.subject.podSelector",
            ));
        }
        let s = spec.subject.unwrap_or_default();
        p.subject = match &s.node_selector {
            Some(_) if s.namespace_selector.is_some() || s.pod_selector.is_some() => {
                return Err(cx.err(
                    "spec.subject.nodeSelector",
                    "may not be combined with namespaceSelector or podSelector (a policy applies to nodes or to pods)",
                ))
            }
            Some(_) => Subject::Nodes {
                nodes: selector(cx, "spec.subject.nodeSelector", &s.node_selector)?,
            },
            None => Subject::Cluster {
                namespaces: selector(cx, "spec.subject.namespaceSelector", &s.namespace_selector)?,
                pods: selector(cx, "spec.subject.podSelector", &s.pod_selector)?,
            },
        };
    } else {
        if spec.priority.is_some() {
            return Err(cx.err(
                "spec.priority",
                "not a WeirPolicy field (namespace policies have no priority)",
            ));
        }
        if spec.subject.is_some() {
            return Err(cx.err(
                "spec.subject",
                "not a WeirPolicy field; use spec.podSelector",
            ));
        }
        if spec.tier.is_some() {
            return Err(cx.err(
                "spec.tier",
                "not a WeirPolicy field (namespace policies are the namespace tier)",
            ));
        }
        p.subject = Subject::Namespace {
            namespace: p.namespace.clone().unwrap_or_default(),
            pods: selector(cx, "spec.podSelector", &spec.pod_selector)?,
        };
    }
    if spec.policy_types.is_some() {
        return Err(cx.err(
            "spec.policyTypes",
            "not a weir.dev field (a WeirPolicy isolates a direction iff it has an Allow rule there)",
        ));
    }
    let own_ns = if cluster { None } else { p.namespace.clone() };
    for (dir, rules, peers_field) in [
        (Direction::Ingress, &spec.ingress, "from"),
        (Direction::Egress, &spec.egress, "to"),
    ] {
        let mut out = Vec::new();
        for (i, r) in rules.iter().flatten().enumerate() {
            let f = format!("spec.{}[{i}]", dir.as_str());
            let (wrong, right) = match dir {
                Direction::Ingress => (r.to.is_some().then_some("to"), "from"),
                Direction::Egress => (r.from.is_some().then_some("from"), "to"),
            };
            if let Some(wrong) = wrong {
                return Err(cx.err(
                    format!("{f}.{wrong}"),
                    format!("not a field of an {} rule; use {right}", dir.as_str()),
                ));
            }
            let action = match r.action.as_deref() {
                Some("Allow") => RuleAction::Allow,
                Some("Deny") => RuleAction::Deny,
                Some("Log") => RuleAction::Log,
                Some("Pass") if cluster => RuleAction::Pass,
                Some("Pass") => {
                    return Err(cx.err(
                        format!("{f}.action"),
                        "Pass is only meaningful in a WeirClusterPolicy (Admin tier)",
                    ))
                }
                Some(other) => {
                    return Err(cx.err(
                        format!("{f}.action"),
                        format!("unknown action {other:?}; expected Allow, Deny, Pass or Log"),
                    ))
                }
                None => return Err(cx.err(format!("{f}.action"), "required")),
            };
            let mut http = match (&r.http, &r.grpc) {
                (None, None) => None,
                (v, g) => {
                    let mut all: Vec<RawHttpRule> = Vec::new();
                    let at = if v.is_some() { "http" } else { "grpc" };
                    for (i, gr) in g.iter().flatten().enumerate() {
                        all.push(grpc_rule(cx, &format!("{f}.grpc[{i}]"), gr)?);
                    }
                    if let Some(v) = v {
                        all.extend(v.iter().map(RawHttpRule::clone_raw));
                    }
                    Some(http_rules(
                        cx,
                        &format!("{f}.{at}"),
                        &all,
                        cluster,
                        dir,
                        action,
                        p.audit,
                    )?)
                }
            };
            if let Some(v) = &r.tls {
                if http.is_some() {
                    return Err(cx.err(
                        format!("{f}.tls"),
                        "cannot be combined with `http` or `grpc` in one rule (TLS hides the HTTP requests); use two rules on different ports",
                    ));
                }
                let g = Guard {
                    cluster,
                    dir,
                    action,
                    audit: p.audit,
                };
                http = Some(tls_rules(cx, &format!("{f}.tls"), v, g)?);
            }
            let peers = if dir == Direction::Ingress {
                &r.from
            } else {
                &r.to
            };
            let ports = np_ports(cx, &format!("{f}.ports"), &r.ports)?;
            let dns = match &r.dns {
                None => None,
                Some(v) => {
                    let g = Guard {
                        cluster,
                        dir,
                        action,
                        audit: p.audit,
                    };
                    let names: Vec<_> = v.iter().map(|d| (&d.name, &d.pattern)).collect();
                    Some(dns_names(cx, &format!("{f}.dns"), &names, g, "DNS rules")?)
                }
            };
            let to_fqdns = match &r.to_fqdns {
                None => None,
                Some(v) => {
                    let tf = format!("{f}.toFQDNs");
                    if r.to.is_some() {
                        return Err(cx.err(
                            &tf,
                            "cannot be combined with `to` in one rule; use two rules",
                        ));
                    }
                    if dns.is_some() {
                        return Err(cx.err(
                            &tf,
                            "cannot be combined with `dns` in one rule; use two rules",
                        ));
                    }
                    if let Some(i) = ports
                        .iter()
                        .flatten()
                        .position(|m| matches!(m, PortMatch::Named { .. }))
                    {
                        return Err(cx.err(
                            format!("{f}.ports[{i}]"),
                            "named ports cannot be used with toFQDNs (the peer is no pod); use a number",
                        ));
                    }
                    let g = Guard {
                        cluster,
                        dir,
                        action,
                        audit: false,
                    };
                    let names: Vec<_> = v
                        .iter()
                        .map(|d| (&d.match_name, &d.match_pattern))
                        .collect();
                    Some(dns_names(cx, &tf, &names, g, "toFQDNs")?)
                }
            };
            out.push(Rule {
                action,
                action_text: r.action.clone().unwrap_or_default(),
                peers: if to_fqdns.is_some() {
                    Vec::new()
                } else {
                    np_peers(cx, &format!("{f}.{peers_field}"), peers, own_ns.as_deref())?
                },
                ports,
                name: r.name.clone(),
                http,
                dns,
                to_fqdns,
            });
        }
        match dir {
            Direction::Ingress => p.ingress = out,
            Direction::Egress => p.egress = out,
        }
    }
    if !cluster {
        p.isolates = [
            p.ingress.iter().any(|r| r.action == RuleAction::Allow),
            p.egress.iter().any(|r| r.action == RuleAction::Allow),
        ];
    }
    Ok(p)
}

/// Where a weir-only rule part is allowed: WeirPolicy, egress, Allow,
/// enforced.
#[derive(Clone, Copy)]
struct Guard {
    cluster: bool,
    dir: Direction,
    action: RuleAction,
    audit: bool,
}

/// `dns: [{name} | {pattern}]` or `toFQDNs: [{matchName} | {matchPattern}]`
/// of a WeirPolicy egress Allow rule → name patterns. `*` is exactly one
/// label (`*.example.com` matches `www.example.com`, not `example.com` nor
/// `a.b.example.com`); `*` alone matches every name.
fn dns_names(
    cx: &Cx,
    f: &str,
    raw: &[(&Option<String>, &Option<String>)],
    g: Guard,
    what: &str,
) -> Result<Vec<String>, PolicyError> {
    use weir_model::l7::dns::NamePattern;
    if g.cluster {
        return Err(cx.err(
            f,
            format!("{what} are only supported in a WeirPolicy (namespace tier), not yet in a WeirClusterPolicy"),
        ));
    }
    if g.dir != Direction::Egress {
        return Err(cx.err(f, format!("{what} are only supported on egress rules")));
    }
    if g.action != RuleAction::Allow {
        return Err(cx.err(f, format!("{what} are only allowed on an Allow rule")));
    }
    if g.audit {
        return Err(cx.err(f, format!("{what} are not supported in an audit policy")));
    }
    let fqdn = what == "toFQDNs";
    let (name_key, pattern_key) = if fqdn {
        ("matchName", "matchPattern")
    } else {
        ("name", "pattern")
    };
    if raw.is_empty() {
        return Err(cx.err(
            f,
            format!(
                "an empty list would match no name; list at least one {name_key} or {pattern_key}"
            ),
        ));
    }
    let mut out = Vec::with_capacity(raw.len());
    for (i, (n, p)) in raw.iter().enumerate() {
        let (key, text, wild) = match ((*n).clone(), (*p).clone()) {
            (Some(n), None) => (name_key, n, false),
            (None, Some(p)) => (pattern_key, p, true),
            _ => {
                return Err(cx.err(
                    format!("{f}[{i}]"),
                    format!("exactly one of {name_key}, {pattern_key}"),
                ))
            }
        };
        let at = format!("{f}[{i}].{key}");
        if !wild && text.contains('*') {
            return Err(cx.err(
                at,
                format!("{text:?}: `*` is only allowed in {pattern_key}"),
            ));
        }
        if NamePattern::parse(&text).is_none() || text.is_empty() {
            let why = if wild {
                "is not a name pattern (letters, digits, `-`, `_` in dot-separated labels; `*` only as a whole first label: `*.example.com`, or `*` alone)"
            } else {
                "is not a DNS name (letters, digits, `-`, `_` in dot-separated labels)"
            };
            return Err(cx.err(at, format!("{text:?} {why}")));
        }
        out.push(text.strip_suffix('.').unwrap_or(&text).to_ascii_lowercase());
    }
    Ok(out)
}

/// One `grpc:` entry as the HTTP rule it means: `POST` on the exact path
/// `/service/method`, or on the prefix `/service/` without a method.
fn grpc_rule(cx: &Cx, f: &str, g: &RawGrpcRule) -> Result<RawHttpRule, PolicyError> {
    let ident = |s: &str| {
        !s.is_empty()
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            && !s.as_bytes()[0].is_ascii_digit()
    };
    let Some(service) = g.service.as_deref() else {
        return Err(cx.err(format!("{f}.service"), "required (`package.Service`)"));
    };
    if !service.split('.').all(ident) {
        return Err(cx.err(
            format!("{f}.service"),
            format!("{service:?} is not a gRPC service name (`package.Service`)"),
        ));
    }
    let path = match g.method.as_deref() {
        Some(m) if !ident(m) => {
            return Err(cx.err(
                format!("{f}.method"),
                format!("{m:?} is not a gRPC method name"),
            ))
        }
        Some(m) => RawHttpPath {
            exact: Some(format!("/{service}/{m}")),
            prefix: None,
            regex: None,
        },
        None => RawHttpPath {
            exact: None,
            prefix: Some(format!("/{service}/")),
            regex: None,
        },
    };
    Ok(RawHttpRule {
        method: Some("POST".into()),
        path: Some(path),
        host: None,
        headers: Vec::new(),
    })
}

impl RawHttpRule {
    fn clone_raw(&self) -> RawHttpRule {
        RawHttpRule {
            method: self.method.clone(),
            path: self.path.as_ref().map(|p| RawHttpPath {
                exact: p.exact.clone(),
                prefix: p.prefix.clone(),
                regex: p.regex.clone(),
            }),
            host: self.host.clone(),
            headers: self
                .headers
                .iter()
                .map(|h| RawHttpHeader {
                    name: h.name.clone(),
                    value: h.value.clone(),
                })
                .collect(),
        }
    }
}

/// `http:` of a WeirPolicy rule: a list of `{method, path: {exact | prefix
/// | regex}, host, headers: [{name, value?}]}`; allowed on ingress `Allow`
/// rules of enforced WeirPolicies only. Validated by compiling it here
/// (methods, regexes, host patterns, header names).
fn http_rules(
    cx: &Cx,
    f: &str,
    raw: &[RawHttpRule],
    cluster: bool,
    dir: Direction,
    action: RuleAction,
    audit: bool,
) -> Result<weir_model::l7::HttpRuleSetSpec, PolicyError> {
    use weir_model::l7::matcher::HeaderMatchSpec;
    use weir_model::l7::{HttpRuleSet, HttpRuleSetSpec, HttpRuleSpec, PathMatchSpec};
    if cluster {
        return Err(cx.err(
            f,
            "HTTP rules are only supported in a WeirPolicy (namespace tier), not yet in a WeirClusterPolicy",
        ));
    }
    if dir != Direction::Ingress {
        return Err(cx.err(f, "HTTP rules are only supported on ingress rules"));
    }
    if action != RuleAction::Allow {
        return Err(cx.err(f, "HTTP rules are only allowed on an Allow rule"));
    }
    if audit {
        return Err(cx.err(f, "HTTP rules are not supported in an audit policy"));
    }
    if raw.is_empty() {
        return Err(cx.err(
            f,
            "an empty list would deny every request; list at least one rule or drop `http`",
        ));
    }
    let mut rules = Vec::with_capacity(raw.len());
    for (i, r) in raw.iter().enumerate() {
        let path = match &r.path {
            None => None,
            Some(RawHttpPath {
                exact: Some(p),
                prefix: None,
                regex: None,
            }) => Some(PathMatchSpec::Exact(p.clone())),
            Some(RawHttpPath {
                exact: None,
                prefix: Some(p),
                regex: None,
            }) => Some(PathMatchSpec::Prefix(p.clone())),
            Some(RawHttpPath {
                exact: None,
                prefix: None,
                regex: Some(p),
            }) => Some(PathMatchSpec::Regex(p.clone())),
            Some(_) => {
                return Err(cx.err(
                    format!("{f}[{i}].path"),
                    "exactly one of exact, prefix, regex",
                ))
            }
        };
        rules.push(HttpRuleSpec {
            method: r.method.clone(),
            path,
            host: r.host.clone(),
            headers: r
                .headers
                .iter()
                .map(|h| HeaderMatchSpec {
                    name: h.name.clone(),
                    value: h.value.clone(),
                })
                .collect(),
        });
    }
    let spec = HttpRuleSetSpec { rules, tls: vec![] };
    if let Err(e) = HttpRuleSet::compile(&spec) {
        let (i, part) = match &e {
            weir_model::l7::matcher::CompileError::Method(i, _) => (*i, "method"),
            weir_model::l7::matcher::CompileError::Regex(i, _)
            | weir_model::l7::matcher::CompileError::Path(i, _) => (*i, "path"),
            weir_model::l7::matcher::CompileError::Host(i, _) => (*i, "host"),
            weir_model::l7::matcher::CompileError::Header(i, _) => (*i, "headers"),
            weir_model::l7::matcher::CompileError::Sni(i, _) => (*i, "sni"),
        };
        let msg = e.to_string();
        let msg = msg.split_once(": ").map_or(msg.as_str(), |(_, m)| m);
        let msg = msg.lines().next().unwrap_or_default().to_string();
        return Err(cx.err(format!("{f}[{i}].{part}"), msg));
    }
    Ok(spec)
}

/// `tls: [{sni: name | "*.suffix" | "*"}]` of a WeirPolicy rule: the
/// connection is judged on its ClientHello's server name (docs/l7.md, "TLS
/// server names"); same places as `http:` (ingress `Allow` rules of
/// enforced WeirPolicies). Kept in the rule's L7 set (`HttpRuleSetSpec::tls`).
fn tls_rules(
    cx: &Cx,
    f: &str,
    raw: &[RawTlsRule],
    g: Guard,
) -> Result<weir_model::l7::HttpRuleSetSpec, PolicyError> {
    use weir_model::l7::tls::{TlsRuleSet, TlsRuleSpec};
    if g.cluster {
        return Err(cx.err(
            f,
            "TLS rules are only supported in a WeirPolicy (namespace tier), not yet in a WeirClusterPolicy",
        ));
    }
    if g.dir != Direction::Ingress {
        return Err(cx.err(f, "TLS rules are only supported on ingress rules"));
    }
    if g.action != RuleAction::Allow {
        return Err(cx.err(f, "TLS rules are only allowed on an Allow rule"));
    }
    if g.audit {
        return Err(cx.err(f, "TLS rules are not supported in an audit policy"));
    }
    if raw.is_empty() {
        return Err(cx.err(
            f,
            "an empty list would deny every connection; list at least one sni or drop `tls`",
        ));
    }
    let tls: Vec<TlsRuleSpec> = raw
        .iter()
        .map(|r| TlsRuleSpec { sni: r.sni.clone() })
        .collect();
    if let Err(i) = TlsRuleSet::compile(&tls) {
        return Err(cx.err(
            format!("{f}[{i}].sni"),
            "not a name, '*.' followed by a name, or '*'",
        ));
    }
    Ok(weir_model::l7::HttpRuleSetSpec { rules: vec![], tls })
}

fn cluster_subject(cx: &Cx, raw: &Option<RawClusterSubject>) -> Result<Subject, PolicyError> {
    let Some(s) = raw else {
        return Err(cx.err("spec.subject", "required"));
    };
    match (&s.namespaces, &s.pods) {
        (Some(_), None) => Ok(Subject::Cluster {
            namespaces: selector(cx, "spec.subject.namespaces", &s.namespaces)?,
            pods: Selector::everything(),
        }),
        (None, Some(p)) => Ok(Subject::Cluster {
            namespaces: selector(
                cx,
                "spec.subject.pods.namespaceSelector",
                &p.namespace_selector,
            )?,
            pods: selector(cx, "spec.subject.pods.podSelector", &p.pod_selector)?,
        }),
        _ => Err(cx.err(
            "spec.subject",
            "exactly one of namespaces or pods must be set",
        )),
    }
}

fn cluster_peers(
    cx: &Cx,
    field: &str,
    raw: &Option<Vec<RawEgressPeer>>,
    egress: bool,
) -> Result<Vec<Peer>, PolicyError> {
    let raw = match raw {
        Some(r) if !r.is_empty() => r,
        _ => return Err(cx.err(field, "required (at least one peer)")),
    };
    let mut out = Vec::new();
    for (i, p) in raw.iter().enumerate() {
        let f = format!("{field}[{i}]");
        let set = [
            p.namespaces.is_some(),
            p.pods.is_some(),
            p.networks.is_some(),
            p.nodes.is_some(),
            p.domain_names.is_some(),
        ];
        if set.iter().filter(|b| **b).count() != 1 {
            return Err(cx.err(f, "exactly one of namespaces, pods or networks must be set"));
        }
        if let Some(n) = &p.namespaces {
            out.push(Peer::Pods {
                namespaces: Namespaces::Selector(selector(
                    cx,
                    &format!("{f}.namespaces"),
                    &Some(n.clone_sel()),
                )?),
                pods: Selector::everything(),
            });
        } else if let Some(pp) = &p.pods {
            out.push(Peer::Pods {
                namespaces: Namespaces::Selector(selector(
                    cx,
                    &format!("{f}.pods.namespaceSelector"),
                    &pp.namespace_selector,
                )?),
                pods: selector(cx, &format!("{f}.pods.podSelector"), &pp.pod_selector)?,
            });
        } else if let Some(nets) = &p.networks {
            if !egress {
                return Err(cx.err(format!("{f}.networks"), "only allowed in egress rules"));
            }
            if nets.is_empty() {
                return Err(cx.err(format!("{f}.networks"), "must not be empty"));
            }
            for (j, n) in nets.iter().enumerate() {
                out.push(Peer::Cidr {
                    cidr: cidr(cx, &format!("{f}.networks[{j}]"), n)?,
                    except: vec![],
                });
            }
        } else if p.nodes.is_some() {
            return Err(cx.err(format!("{f}.nodes"), "node peers are not supported yet"));
        } else {
            return Err(cx.err(
                format!("{f}.domainNames"),
                "domain name peers are not supported",
            ));
        }
    }
    Ok(out)
}

impl RawSelector {
    fn clone_sel(&self) -> RawSelector {
        RawSelector {
            match_labels: self.match_labels.clone(),
            match_expressions: self.match_expressions.as_ref().map(|v| {
                v.iter()
                    .map(|r| RawRequirement {
                        key: r.key.clone(),
                        operator: r.operator.clone(),
                        values: r.values.clone(),
                    })
                    .collect()
            }),
        }
    }
}

fn range(
    cx: &Cx,
    f: &str,
    (start, end): (Option<i64>, Option<i64>),
    proto: Protocol,
) -> Result<PortMatch, PolicyError> {
    let start = port_number(cx, &format!("{f}.start"), start.unwrap_or(0))?;
    let end = port_number(cx, &format!("{f}.end"), end.unwrap_or(0))?;
    if end <= start {
        return Err(cx.err(
            format!("{f}.end"),
            format!("{end} is not greater than start {start}"),
        ));
    }
    Ok(PortMatch::Range {
        protocol: proto,
        start,
        end,
    })
}

fn admin_policy(cx: &Cx, doc: &Document, mut p: Policy) -> Result<Policy, PolicyError> {
    let banp = p.kind == Kind::BaselineAdminNetworkPolicy;
    let spec = if banp {
        let raw: RawClusterDoc<RawBanpSpec> = cx.decode(doc)?;
        raw.spec.map(|s| RawAnpSpec {
            priority: None,
            subject: s.subject,
            ingress: s.ingress,
            egress: s.egress,
        })
    } else {
        let raw: RawClusterDoc<RawAnpSpec> = cx.decode(doc)?;
        raw.spec
    };
    let Some(spec) = spec else {
        return Err(cx.err("spec", "required"));
    };
    if banp {
        p.tier = Tier::Baseline;
        p.priority = 1001;
        if p.name != "default" {
            return Err(cx.err(
                "metadata.name",
                "a BaselineAdminNetworkPolicy must be named \"default\"",
            ));
        }
    } else {
        p.tier = Tier::Admin;
        p.priority = match spec.priority {
            Some(n) if (0..=1000).contains(&n) => n as i32,
            Some(n) => return Err(cx.err("spec.priority", format!("{n} is not in 0-1000"))),
            None => return Err(cx.err("spec.priority", "required")),
        };
    }
    p.subject = cluster_subject(cx, &spec.subject)?;
    let actions: &[(&str, RuleAction)] = if banp {
        &[("Allow", RuleAction::Allow), ("Deny", RuleAction::Deny)]
    } else {
        &[
            ("Allow", RuleAction::Allow),
            ("Deny", RuleAction::Deny),
            ("Pass", RuleAction::Pass),
        ]
    };
    let expected = if banp {
        "Allow or Deny"
    } else {
        "Allow, Deny or Pass"
    };
    let rules = [cluster_rules(spec.ingress), cluster_rules(spec.egress)];
    cluster_policy_rules(cx, &mut p, rules, actions, expected, anp_ports)?;
    Ok(p)
}

fn cluster_network_policy(cx: &Cx, doc: &Document, mut p: Policy) -> Result<Policy, PolicyError> {
    let raw: RawClusterDoc<RawCnpSpec> = cx.decode(doc)?;
    let Some(spec) = raw.spec else {
        return Err(cx.err("spec", "required"));
    };
    p.tier = match spec.tier.as_deref() {
        Some("Admin") => Tier::Admin,
        Some("Baseline") => Tier::Baseline,
        Some(other) => {
            return Err(cx.err(
                "spec.tier",
                format!("unknown tier {other:?}; expected Admin or Baseline"),
            ))
        }
        None => return Err(cx.err("spec.tier", "required")),
    };
    p.priority = match spec.priority {
        Some(n) if (0..=1000).contains(&n) => n as i32,
        Some(n) => return Err(cx.err("spec.priority", format!("{n} is not in 0-1000"))),
        None => return Err(cx.err("spec.priority", "required")),
    };
    p.subject = cluster_subject(cx, &spec.subject)?;
    let actions = [
        ("Accept", RuleAction::Allow),
        ("Deny", RuleAction::Deny),
        ("Pass", RuleAction::Pass),
    ];
    let rules = [cluster_rules(spec.ingress), cluster_rules(spec.egress)];
    cluster_policy_rules(
        cx,
        &mut p,
        rules,
        &actions,
        "Accept, Deny or Pass",
        cnp_ports,
    )?;
    Ok(p)
}

/// Reads the port list of a cluster-scoped rule at a field.
type PortsOf = fn(&Cx, &str, &ClusterRule) -> Result<Option<Vec<PortMatch>>, PolicyError>;

/// The `ingress` and `egress` rules of a cluster-scoped policy
/// (AdminNetworkPolicy, BaselineAdminNetworkPolicy, ClusterNetworkPolicy):
/// one skeleton. `actions` are the kind's action spellings (any other is
/// `unknown action ...; expected <expected>`), `ports` reads the kind's
/// port list of a rule at field `f`.
fn cluster_policy_rules(
    cx: &Cx,
    p: &mut Policy,
    [ingress, egress]: [Vec<ClusterRule>; 2],
    actions: &[(&str, RuleAction)],
    expected: &str,
    ports: PortsOf,
) -> Result<(), PolicyError> {
    for (dir, rules) in [(Direction::Ingress, ingress), (Direction::Egress, egress)] {
        let mut out = Vec::new();
        for (i, r) in rules.iter().enumerate() {
            let f = format!("spec.{}[{i}]", dir.as_str());
            let action = match r.action.as_deref() {
                Some(a) => match actions.iter().find(|(name, _)| *name == a) {
                    Some((_, action)) => *action,
                    None => {
                        return Err(cx.err(
                            format!("{f}.action"),
                            format!("unknown action {a:?}; expected {expected}"),
                        ))
                    }
                },
                None => return Err(cx.err(format!("{f}.action"), "required")),
            };
            let pf = if dir == Direction::Ingress {
                "from"
            } else {
                "to"
            };
            let peers =
                cluster_peers(cx, &format!("{f}.{pf}"), &r.peers, dir == Direction::Egress)?;
            let ports = ports(cx, &f, r)?;
            out.push(Rule {
                action,
                action_text: r.action.clone().unwrap_or_default(),
                peers,
                ports,
                name: r.name.clone(),
                http: None,
                dns: None,
                to_fqdns: None,
            });
        }
        match dir {
            Direction::Ingress => p.ingress = out,
            Direction::Egress => p.egress = out,
        }
    }
    Ok(())
}

/// The `ports` of an (Baseline)AdminNetworkPolicy rule at field `f`.
fn anp_ports(cx: &Cx, f: &str, r: &ClusterRule) -> Result<Option<Vec<PortMatch>>, PolicyError> {
    Ok(match &r.ports {
        None => None,
        Some(list) => {
            let mut out = Vec::new();
            for (j, pp) in list.iter().enumerate() {
                let pf = format!("{f}.ports[{j}]");
                let n = [
                    pp.port_number.is_some(),
                    pp.named_port.is_some(),
                    pp.port_range.is_some(),
                ];
                if n.iter().filter(|b| **b).count() != 1 {
                    return Err(cx.err(
                        pf,
                        "exactly one of portNumber, namedPort or portRange must be set",
                    ));
                }
                if let Some(num) = &pp.port_number {
                    let proto = protocol(
                        cx,
                        &format!("{pf}.portNumber.protocol"),
                        num.protocol.as_deref(),
                    )?;
                    let port = match num.port {
                        Some(n) => port_number(cx, &format!("{pf}.portNumber.port"), n)?,
                        None => return Err(cx.err(format!("{pf}.portNumber.port"), "required")),
                    };
                    out.push(PortMatch::Range {
                        protocol: proto,
                        start: port,
                        end: port,
                    });
                } else if let Some(name) = &pp.named_port {
                    out.push(PortMatch::Named {
                        protocol: None,
                        name: port_name(cx, &format!("{pf}.namedPort"), name)?,
                    });
                } else if let Some(r) = &pp.port_range {
                    let proto = protocol(
                        cx,
                        &format!("{pf}.portRange.protocol"),
                        r.protocol.as_deref(),
                    )?;
                    out.push(range(
                        cx,
                        &format!("{pf}.portRange"),
                        (r.start, r.end),
                        proto,
                    )?);
                }
            }
            Some(out)
        }
    })
}

/// The `protocols` of a ClusterNetworkPolicy rule at field `f`.
fn cnp_ports(cx: &Cx, f: &str, r: &ClusterRule) -> Result<Option<Vec<PortMatch>>, PolicyError> {
    Ok(match &r.protocols {
        None => None,
        Some(list) => {
            let mut out = Vec::new();
            for (j, pp) in list.iter().enumerate() {
                let pf = format!("{f}.protocols[{j}]");
                let set = [
                    pp.tcp.is_some(),
                    pp.udp.is_some(),
                    pp.sctp.is_some(),
                    pp.destination_named_port.is_some(),
                ];
                if set.iter().filter(|b| **b).count() != 1 {
                    return Err(cx.err(
                        pf,
                        "exactly one of tcp, udp, sctp or destinationNamedPort must be set",
                    ));
                }
                if let Some(name) = &pp.destination_named_port {
                    out.push(PortMatch::Named {
                        protocol: None,
                        name: port_name(cx, &format!("{pf}.destinationNamedPort"), name)?,
                    });
                    continue;
                }
                let (proto, pr, key) = if let Some(t) = &pp.tcp {
                    (Protocol::Tcp, t, "tcp")
                } else if let Some(u) = &pp.udp {
                    (Protocol::Udp, u, "udp")
                } else {
                    (
                        Protocol::Sctp,
                        pp.sctp.as_ref().expect("one is set"),
                        "sctp",
                    )
                };
                let pf = format!("{pf}.{key}.destinationPort");
                match &pr.destination_port {
                    None => out.push(PortMatch::all(proto)),
                    Some(d) => match (d.number, &d.range) {
                        (Some(n), None) => {
                            let n = port_number(cx, &format!("{pf}.number"), n)?;
                            out.push(PortMatch::Range {
                                protocol: proto,
                                start: n,
                                end: n,
                            });
                        }
                        (None, Some(r)) => {
                            out.push(range(cx, &format!("{pf}.range"), (r.start, r.end), proto)?)
                        }
                        _ => return Err(cx.err(pf, "exactly one of number or range must be set")),
                    },
                }
            }
            Some(out)
        }
    })
}
