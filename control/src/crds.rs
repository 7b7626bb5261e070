//! weir's own CustomResourceDefinitions (WeirPolicy, WeirClusterPolicy,
//! weir.dev/v1alpha1), generated from the Rust types below with kube's
//! `CustomResource` derive. The OpenAPI schema is structural and closed
//! (no `x-kubernetes-preserve-unknown-fields` under spec): the API server
//! itself refuses an unknown field (kubectl's strict field validation), a
//! wrong type, an action or protocol that is not in its enum, a port out of
//! 1..65535, an invalid port name or CIDR.
//!
//! These types describe the wire shape only. weir still reads every policy
//! with its own strict parser (`weir_policy::parse`), which checks what a
//! schema cannot (a regex that compiles, where a rule part is allowed, ...).
//! `weir crds` prints the YAML; `deploy/crds/` is its output (a test fails
//! when they differ).

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};

/// Labels of a selector: free keys, string values.
pub type Labels = BTreeMap<String, String>;

/// A Kubernetes label selector (`matchLabels` and `matchExpressions`, ANDed).
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LabelSelector {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_labels: Option<Labels>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_expressions: Option<Vec<LabelSelectorRequirement>>,
}

/// One requirement of `matchExpressions`.
#[derive(Deserialize, Serialize, Clone, Debug, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LabelSelectorRequirement {
    pub key: String,
    pub operator: SelectorOperator,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<Vec<String>>,
}

/// A `matchExpressions` operator.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, JsonSchema)]
pub enum SelectorOperator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

/// A peer of a rule, as in NetworkPolicy: `podSelector` and/or
/// `namespaceSelector` (ANDed), or `ipBlock` alone.
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Peer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_block: Option<IpBlock>,
}

/// Addresses in `cidr` and in no `except`.
#[derive(Deserialize, Serialize, Clone, Debug, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IpBlock {
    /// An IPv4 or IPv6 network in CIDR notation, e.g. `10.0.0.0/8` or
    /// `fd00::/64` (host bits are cleared).
    #[schemars(schema_with = "cidr_schema")]
    pub cidr: String,
    /// Networks (CIDR notation) inside `cidr` that are not matched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "cidr_list_schema")]
    pub except: Option<Vec<String>>,
}

/// A NetworkPolicy port: protocol, a number (with an optional `endPort`)
/// or a container port's name.
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Port {
    /// Default TCP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "int_or_port_name_schema")]
    pub port: Option<serde_json::Value>,
    /// Last port of the range (inclusive), with a numbered `port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "port_number_schema")]
    pub end_port: Option<i32>,
}

/// A transport protocol of a port.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, JsonSchema)]
#[allow(clippy::upper_case_acronyms)]
pub enum Protocol {
    TCP,
    UDP,
    SCTP,
}

/// What a rule of a WeirPolicy does.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, JsonSchema)]
pub enum Action {
    Allow,
    Deny,
    Log,
}

/// What a rule of a WeirClusterPolicy does (`Pass` skips the rest of the
/// Admin tier).
#[derive(Deserialize, Serialize, Clone, Copy, Debug, JsonSchema)]
pub enum ClusterAction {
    Allow,
    Deny,
    Pass,
    Log,
}

/// The tier of a WeirClusterPolicy (docs/policy.md, "Precedence").
#[derive(Deserialize, Serialize, Clone, Copy, Debug, JsonSchema)]
pub enum ClusterTier {
    Admin,
    Baseline,
}

/// An HTTP request a rule admits (every given part must match).
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpRule {
    /// Exact, case-sensitive (GET, POST, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<HttpPath>,
    /// A host name, or `*.example.com` (exactly one more label).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<Vec<HttpHeader>>,
}

/// Exactly one of `exact`, `prefix`, `regex` (anchored).
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(extend("minProperties" = 1, "maxProperties" = 1))]
pub struct HttpPath {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

/// A header the request must carry (with this value, when given).
#[derive(Deserialize, Serialize, Clone, Debug, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpHeader {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// A DNS name a query may ask for: exactly one of `name` (exact,
/// case-insensitive) or `pattern` (`*.example.com`: one more label).
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(extend("minProperties" = 1, "maxProperties" = 1))]
pub struct DnsName {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
}

/// An FQDN egress peer: exactly one of `matchName` or `matchPattern`.
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schemars(extend("minProperties" = 1, "maxProperties" = 1))]
pub struct Fqdn {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_pattern: Option<String>,
}

/// An ingress rule of a WeirPolicy.
#[derive(Deserialize, Serialize, Clone, Debug, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IngressRule {
    /// For humans (reported as the deciding rule).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub action: Action,
    /// Absent or empty: any peer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Vec<Peer>>,
    /// Absent or empty: every protocol and port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<Port>>,
    /// L7: every HTTP request on an admitted connection must match one
    /// entry, else 403 (Allow rules of enforced policies only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<Vec<HttpRule>>,
    /// L7: every TLS connection admitted by the rule must name one of these
    /// servers in its ClientHello (SNI), else both ends get a RST (no ECH,
    /// no missing name; not with `http` in one rule).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<Vec<TlsRule>>,
    /// L7: gRPC calls (`POST /service/method` over HTTP/2) the rule admits,
    /// in the same set as `http` (a denied call gets PERMISSION_DENIED).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc: Option<Vec<GrpcRule>>,
}

/// A gRPC service (and method) a rule admits.
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GrpcRule {
    /// The fully qualified service, e.g. `pkg.Svc`.
    pub service: String,
    /// One method of it; absent: every method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
}

/// A TLS server name a rule admits.
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsRule {
    /// `name`, `*.suffix` (exactly one more label) or `*`; case-insensitive.
    pub sni: String,
}

/// An egress rule of a WeirPolicy.
#[derive(Deserialize, Serialize, Clone, Debug, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EgressRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub action: Action,
    /// Absent or empty: any peer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Vec<Peer>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<Port>>,
    /// Every DNS query on an admitted flow must ask for one of these names,
    /// else REFUSED (Allow rules only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<Vec<DnsName>>,
    /// Peers learned from allowed DNS answers; replaces `to`.
    #[serde(default, rename = "toFQDNs", skip_serializing_if = "Option::is_none")]
    pub to_fqdns: Option<Vec<Fqdn>>,
}

/// An ingress rule of a WeirClusterPolicy.
#[derive(Deserialize, Serialize, Clone, Debug, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClusterIngressRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub action: ClusterAction,
    /// Absent or empty: any peer; `podSelector` alone: pods of any
    /// namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Vec<Peer>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<Port>>,
}

/// An egress rule of a WeirClusterPolicy.
#[derive(Deserialize, Serialize, Clone, Debug, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClusterEgressRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub action: ClusterAction,
    /// Absent or empty: any peer; `podSelector` alone: pods of any
    /// namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Vec<Peer>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<Port>>,
}

/// The pods a WeirClusterPolicy applies to (both selectors optional, ANDed).
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Subject {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    /// Host endpoint policy: the nodes (by Node labels) whose own traffic
    /// the policy judges, instead of pods (not with the selectors above).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<LabelSelector>,
}

/// A WeirPolicy: namespace tier, ordered Allow/Deny/Log rules with L7
/// (HTTP, DNS) and FQDN parts. See docs/policy.md.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, JsonSchema)]
#[kube(
    group = "weir.dev",
    version = "v1alpha1",
    kind = "WeirPolicy",
    plural = "weirpolicies",
    namespaced,
    status = "PolicyStatus",
    doc = "WeirPolicy: weir's namespace-tier policy (see docs/policy.md)."
)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WeirPolicySpec {
    /// The pods of the namespace the policy applies to; absent or `{}`:
    /// all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    /// Denies are reported (would drop), not enforced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<Vec<IngressRule>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<Vec<EgressRule>>,
}

/// A WeirClusterPolicy: Admin tier, ordered by `priority`. See
/// docs/policy.md.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, JsonSchema)]
#[kube(
    group = "weir.dev",
    version = "v1alpha1",
    kind = "WeirClusterPolicy",
    plural = "weirclusterpolicies",
    status = "PolicyStatus",
    doc = "WeirClusterPolicy: weir's Admin-tier policy (see docs/policy.md)."
)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WeirClusterPolicySpec {
    /// 0-1000, lower first.
    #[schemars(range(min = 0, max = 1000))]
    pub priority: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Subject>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<bool>,
    /// `Admin` (the default: before the namespace tier) or `Baseline`
    /// (after it, before the default allow).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<ClusterTier>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<Vec<ClusterIngressRule>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<Vec<ClusterEgressRule>>,
}

/// What weir says about a policy: the `Accepted` condition (False with
/// the reason when weir refused it).
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conditions: Option<Vec<Condition>>,
}

/// A status condition (the fields of metav1.Condition).
#[derive(Deserialize, Serialize, Clone, Debug, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: ConditionStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "date_time_schema")]
    pub last_transition_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// `True`, `False` or `Unknown`.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, JsonSchema)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

// ---- schemas of the fields serde types cannot say ----

fn cidr_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "format": "cidr",
        "description": "An IPv4 or IPv6 network in CIDR notation, e.g. 10.0.0.0/8 or fd00::/64 (host bits are cleared).",
    })
}

fn cidr_list_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "description": "Networks (CIDR notation) inside cidr that are not matched.",
        "items": {"type": "string", "format": "cidr"},
    })
}

fn port_number_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "integer",
        "format": "int32",
        "minimum": 1,
        "maximum": 65535,
        "description": "Last port of the range (inclusive, 1-65535), with a numbered port.",
    })
}

/// IANA_SVC_NAME without look-around: hyphen-separated runs of
/// `[a-z0-9]`, one of them holding a letter, 15 characters at most.
pub const PORT_NAME_PATTERN: &str = "^([a-z0-9]+-)*[a-z0-9]*[a-z][a-z0-9]*(-[a-z0-9]+)*$";

fn int_or_port_name_schema(_: &mut SchemaGenerator) -> Schema {
    // Value validations apply by the value's type: minimum/maximum to a
    // number, pattern/maxLength to a name.
    json_schema!({
        "x-kubernetes-int-or-string": true,
        "minimum": 1,
        "maximum": 65535,
        "pattern": PORT_NAME_PATTERN,
        "maxLength": 15,
        "description": "A port number (1-65535) or the name of a container port (IANA_SVC_NAME); absent: every port of the protocol.",
    })
}

fn date_time_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"type": "string", "format": "date-time"})
}

/// The CRDs, in `deploy/crds/` order (file name, object).
pub fn crds() -> Vec<(
    &'static str,
    k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
)> {
    use kube::CustomResourceExt;
    vec![
        (
            "weir.dev_weirclusterpolicies.yaml",
            without_null_enum_values(WeirClusterPolicy::crd()),
        ),
        (
            "weir.dev_weirpolicies.yaml",
            without_null_enum_values(WeirPolicy::crd()),
        ),
    ]
}

/// An optional enum field's schema lists `null` among its values (schemars'
/// `Option`); `nullable: true` already admits it, and the API server would
/// name it among the "supported values" of its message.
fn without_null_enum_values(
    crd: k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
) -> k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition {
    fn walk(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(m) => {
                if let Some(serde_json::Value::Array(e)) = m.get_mut("enum") {
                    e.retain(|x| !x.is_null());
                }
                m.values_mut().for_each(walk);
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(walk),
            _ => {}
        }
    }
    let mut v = serde_json::to_value(&crd).expect("a CRD serializes");
    walk(&mut v);
    serde_json::from_value(v).expect("the same CRD without null enum values")
}

/// The header of each generated file.
pub const HEADER: &str = "# Generated by `weir crds` from control/src/crds.rs; do not edit.\n\
# Regenerate: cargo run -p weir --bin weir -- crds --dir deploy/crds\n";

/// One CRD as its file's text.
pub fn crd_yaml(
    crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
) -> anyhow::Result<String> {
    Ok(format!("{HEADER}{}", serde_yaml::to_string(crd)?))
}

/// What `weir crds` prints: every CRD, as one multi-document YAML stream.
pub fn all_yaml() -> anyhow::Result<String> {
    let mut out = String::new();
    for (_, crd) in crds() {
        out.push_str("---\n");
        out.push_str(&crd_yaml(&crd)?);
    }
    Ok(out)
}

/// `weir crds [--dir DIR]`.
pub fn print_or_write(dir: Option<&std::path::Path>) -> anyhow::Result<()> {
    match dir {
        None => print!("{}", all_yaml()?),
        Some(dir) => {
            for (file, crd) in crds() {
                let path = dir.join(file);
                std::fs::write(&path, crd_yaml(&crd)?)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            }
        }
    }
    Ok(())
}
