//! Plain Kubernetes manifests (Node, Namespace, Pod; all `apiVersion: v1`)
//! read into a [`ClusterSpec`].
//!
//! Files hold one or more YAML documents (`---`-separated) or JSON (one
//! object, a stream of objects, or a `kind: List`). Every document must be of a
//! kind this module knows; anything else is an error naming the kind. Callers
//! that also read other kinds (NetworkPolicy, ...) split the text themselves
//! with [`split_documents`], route what [`is_topology_kind`] accepts to
//! [`ClusterSpec::add_document`] and handle the rest.
//!
//! Every field Kubernetes defines for these kinds is accepted, and any other
//! field is refused (`<object>: <path>: unknown field; expected ...`), as the
//! API server's strict field validation does; [`crate::fields`] has the
//! `warn`/`ignore` modes. A key given twice in one mapping is refused too.
//! Only the fields weir needs are read: `metadata.name/namespace/labels`,
//! Node `spec.podCIDR(s)`, `status.addresses` (the first IPv4 `InternalIP`:
//! the node's underlay address) and the annotation `weir.dev/dataplane`
//! (`weir`, the default, or `kernel`: a node wired like flannel's vxlan
//! backend with no weir on it), Pod `spec.nodeName` and
//! `spec.containers[*].ports[*]`.
//!
//! Defaults and checks ([`ClusterSpec::finish`], done by [`parse_str`] and
//! `weir_topo::manifest::load_files`):
//! - no Node at all: one node `node-1` with podCIDRs `10.244.0.0/24` and
//!   `fd00:10:244::/64`;
//! - a Node without podCIDRs gets the first free pair
//!   `10.244.<i>.0/24` + `fd00:10:244:<i>::/64`;
//! - nodes get `kubernetes.io/hostname=<name>` and namespaces
//!   `kubernetes.io/metadata.name=<name>` (as kubelet and the API server do);
//! - a Pod without `metadata.namespace` is in `default`; without
//!   `spec.nodeName` it runs on the first node;
//! - **namespaces**: only `default` is created implicitly; a pod in any other
//!   namespace needs a Namespace object (a typo then fails loudly instead of
//!   silently making a namespace no policy selects);
//! - names are DNS-1123 (namespaces: labels; nodes and pods: subdomains),
//!   labels follow the Kubernetes key/value rules, no object is defined twice,
//!   pods run on declared nodes, podCIDRs parse, are canonical, at most one per
//!   family, and do not overlap between nodes (or 169.254.0.0/16), ports are
//!   1-65535 and unique per protocol in a pod, port names are IANA_SVC_NAMEs
//!   and unique in a pod, and no node has more pods than its CIDRs hold (`.0`,
//!   `.1` — the node — and the broadcast address are not handed out);
//! - a node's `InternalIP` is an IPv4 unicast address (not loopback,
//!   link-local, multicast, broadcast or unspecified; IPv6 `InternalIP`s are
//!   ignored: the underlay is IPv4), not inside any podCIDR and not that of
//!   another node; `weir.dev/dataplane` is `weir` or `kernel`. (That all
//!   underlay addresses share one subnet is checked by `Cluster::build`,
//!   which knows the prefix length.)
//!
//! Errors are one line: `<object>: <field>: <problem>`, where object is
//! `nodes/<name>`, `namespaces/<name>` or `pods/<namespace>/<name>`.
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use ipnet::IpNet;
use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Serialize};

use crate::fields::{self, FieldValidation};
use crate::names;

/// The implicit namespace.
pub const DEFAULT_NAMESPACE: &str = "default";
/// The node made when a manifest set has none.
pub const DEFAULT_NODE: &str = "node-1";
/// The label every namespace carries (set by the API server).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";
/// The label every node carries (set by kubelet).
pub const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";
/// The Node annotation choosing who forwards the node's pod traffic.
pub const DATAPLANE_ANNOTATION: &str = "weir.dev/dataplane";

/// Who forwards a node's pod traffic (annotation `weir.dev/dataplane`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum NodeDataplane {
    /// weir's userspace dataplane (the default): the node kernel never
    /// forwards pod traffic.
    #[default]
    Weir,
    /// No weir: the node kernel routes, and reaches other nodes' pods
    /// through a kernel VXLAN device, the way flannel's vxlan backend does
    /// (an interop peer for weir's overlay).
    Kernel,
}

impl NodeDataplane {
    /// The annotation value: `weir` or `kernel`.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeDataplane::Weir => "weir",
            NodeDataplane::Kernel => "kernel",
        }
    }
}

impl fmt::Display for NodeDataplane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One problem with the manifests, as one line.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// A file could not be read.
    #[error("{path}: cannot read: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    /// The text is not YAML/JSON, or a document lacks `kind`/`apiVersion`.
    #[error("{file}: {msg}")]
    Syntax { file: String, msg: String },
    /// A document of a kind this crate does not build.
    #[error("{file}: document {index}: unsupported kind {kind:?} (apiVersion {api_version:?}); expected Node, Namespace, Pod or Service of apiVersion v1")]
    UnknownKind {
        file: String,
        index: usize,
        kind: String,
        api_version: String,
    },
    /// A field of an object is wrong.
    #[error("{object}: {field}: {msg}")]
    Invalid {
        object: String,
        field: String,
        msg: String,
    },
    /// Two objects of the same kind and name.
    #[error("{object}: defined more than once")]
    Duplicate { object: String },
}

fn invalid(object: &str, field: impl Into<String>, msg: impl Into<String>) -> ManifestError {
    ManifestError::Invalid {
        object: object.to_string(),
        field: field.into(),
        msg: msg.into(),
    }
}

/// L4 protocol of a container port.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// The Kubernetes spelling: `TCP`, `UDP`, `SCTP`.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A declared `containerPort` (of any container of the pod).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ContainerPort {
    pub name: Option<String>,
    pub port: u16,
    pub protocol: Protocol,
}

/// A Node object.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeSpec {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// `spec.podCIDRs` (or `spec.podCIDR`): at most one IPv4 and one IPv6.
    pub pod_cidrs: Vec<IpNet>,
    /// Annotation `weir.dev/dataplane` (default `weir`).
    #[serde(default)]
    pub dataplane: NodeDataplane,
    /// The first IPv4 `status.addresses[type=InternalIP]`: the node's
    /// underlay address. `None`: one is allocated (see `Cluster::build`).
    #[serde(default)]
    pub internal_ip: Option<Ipv4Addr>,
}

/// A Namespace object.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct NamespaceSpec {
    pub name: String,
    /// Always includes `kubernetes.io/metadata.name=<name>` once finished.
    pub labels: BTreeMap<String, String>,
}

/// A Pod object.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct PodSpec {
    /// `metadata.namespace`, `default` when absent.
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// `spec.nodeName`; empty until [`ClusterSpec::finish`] picks the first node.
    pub node: String,
    /// Ports of all containers, in order.
    pub ports: Vec<ContainerPort>,
}

impl PodSpec {
    /// `pods/<namespace>/<name>`, the prefix of this pod's errors.
    pub fn object(&self) -> String {
        format!("pods/{}/{}", self.namespace, self.name)
    }
}

/// Everything the manifests declare, in manifest order.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterSpec {
    pub nodes: Vec<NodeSpec>,
    pub namespaces: Vec<NamespaceSpec>,
    pub pods: Vec<PodSpec>,
    /// `kind: Service` objects as written (see [`crate::service_manifest`]).
    #[serde(default)]
    pub services: Vec<crate::service_manifest::ServiceSpec>,
}

/// One document of a manifest file, before it is interpreted.
#[derive(Clone, Debug)]
pub struct Document {
    /// The file (or other source) name, for errors.
    pub file: String,
    /// 1-based position in the file (items of a `List` count separately).
    pub index: usize,
    pub api_version: String,
    pub kind: String,
    pub value: serde_yaml::Value,
}

/// Whether this crate builds objects of that kind ([`ClusterSpec::add_document`]).
pub fn is_topology_kind(api_version: &str, kind: &str) -> bool {
    api_version == "v1" && matches!(kind, "Node" | "Namespace" | "Pod" | "Service")
}

/// Splits YAML (multi-document) or JSON text into documents, flattening
/// `kind: List`. Empty documents are skipped. Errors on text that does not
/// parse, on a key given twice in one mapping (YAML or JSON), on documents
/// without `kind` or `apiVersion`, and on a `List` with a field other than
/// `apiVersion`, `kind`, `metadata`, `items`.
pub fn split_documents(text: &str, file: &str) -> Result<Vec<Document>, ManifestError> {
    split_documents_with(text, file, FieldValidation::Strict, &mut Vec::new())
}

/// [`split_documents`] under a field-validation mode (for unknown fields of
/// a `List`; ignored ones are pushed to `ignored`).
pub fn split_documents_with(
    text: &str,
    file: &str,
    mode: FieldValidation,
    ignored: &mut Vec<String>,
) -> Result<Vec<Document>, ManifestError> {
    let syntax = |msg: String| ManifestError::Syntax {
        file: file.to_string(),
        msg,
    };
    let mut values = Vec::new();
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        // Straight into serde_yaml's Value, whose mappings refuse a key
        // given twice (serde_json's would keep the last one silently).
        for v in serde_json::Deserializer::from_str(text).into_iter::<serde_yaml::Value>() {
            values.push(v.map_err(|e| syntax(e.to_string()))?);
        }
    } else {
        for de in serde_yaml::Deserializer::from_str(text) {
            let v = serde_yaml::Value::deserialize(de).map_err(|e| syntax(e.to_string()))?;
            values.push(v);
        }
    }
    let mut docs = Vec::new();
    let mut index = 0;
    let mut queue: Vec<serde_yaml::Value> = values;
    queue.reverse();
    while let Some(value) = queue.pop() {
        if value.is_null() {
            continue;
        }
        index += 1;
        let str_field = |name: &str| value.get(name).and_then(|v| v.as_str()).map(str::to_string);
        if value.as_sequence().is_some() {
            // A JSON array of objects.
            let items = value.as_sequence().cloned().unwrap_or_default();
            index -= 1;
            queue.extend(items.into_iter().rev());
            continue;
        }
        if !value.is_mapping() {
            return Err(syntax(format!("document {index}: not an object")));
        }
        let kind =
            str_field("kind").ok_or_else(|| syntax(format!("document {index}: kind: required")))?;
        let api_version = str_field("apiVersion")
            .ok_or_else(|| syntax(format!("document {index}: apiVersion: required")))?;
        if kind == "List" || kind.ends_with("List") && value.get("items").is_some() {
            if let Some(m) = value.as_mapping() {
                for k in m.keys() {
                    let known = matches!(
                        k.as_str(),
                        Some("apiVersion" | "kind" | "metadata" | "items")
                    );
                    if known {
                        continue;
                    }
                    let key = k.as_str().map_or_else(|| format!("{k:?}"), str::to_string);
                    if mode == FieldValidation::Strict {
                        return Err(syntax(format!(
                            "document {index} ({kind}): {key}: unknown field; expected apiVersion, kind, metadata or items"
                        )));
                    }
                    ignored.push(format!("{file}: document {index} ({kind}): {key}"));
                }
            }
            let items = value
                .get("items")
                .and_then(|v| v.as_sequence())
                .cloned()
                .unwrap_or_default();
            index -= 1;
            queue.extend(items.into_iter().rev());
            continue;
        }
        docs.push(Document {
            file: file.to_string(),
            index,
            api_version,
            kind,
            value,
        });
    }
    Ok(docs)
}

/// Parses one text (named `source` in errors) and finishes it: the same as
/// `weir_topo::manifest::load_files` with one file.
pub fn parse_str(text: &str, source: &str) -> Result<ClusterSpec, ManifestError> {
    parse_objects(text, source)?.finish()
}

/// Parses one text into objects without defaults or cross-object checks
/// (for merging several sources before [`ClusterSpec::finish`]).
pub fn parse_objects(text: &str, source: &str) -> Result<ClusterSpec, ManifestError> {
    parse_objects_with(text, source, FieldValidation::Strict, &mut Vec::new())
}

/// [`parse_objects`] under a field-validation mode; dropped fields are
/// pushed to `ignored` as `<object>: <path>`.
pub fn parse_objects_with(
    text: &str,
    source: &str,
    mode: FieldValidation,
    ignored: &mut Vec<String>,
) -> Result<ClusterSpec, ManifestError> {
    let mut spec = ClusterSpec::default();
    for doc in split_documents_with(text, source, mode, ignored)? {
        spec.add_document_with(&doc, mode, ignored)?;
    }
    Ok(spec)
}

// ---- wire shapes ----
//
// The Kubernetes schema of each kind: every field the API defines is
// declared (those weir does not read as `IgnoredAny`, accepted and not
// looked at), and every struct refuses any other field. See
// [`crate::fields`] for `--field-validation`.

/// `metadata` of any object (Kubernetes `ObjectMeta`).
#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ObjectMeta {
    pub name: Option<String>,
    pub namespace: Option<String>,
    pub labels: Option<BTreeMap<String, String>>,
    pub annotations: Option<BTreeMap<String, String>>,
    // Defined by Kubernetes, not read by weir:
    generate_name: Option<IgnoredAny>,
    self_link: Option<IgnoredAny>,
    uid: Option<IgnoredAny>,
    resource_version: Option<IgnoredAny>,
    generation: Option<IgnoredAny>,
    creation_timestamp: Option<IgnoredAny>,
    deletion_timestamp: Option<IgnoredAny>,
    deletion_grace_period_seconds: Option<IgnoredAny>,
    owner_references: Option<IgnoredAny>,
    finalizers: Option<IgnoredAny>,
    managed_fields: Option<IgnoredAny>,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
struct RawNode {
    api_version: Option<String>,
    kind: Option<String>,
    metadata: ObjectMeta,
    spec: RawNodeSpec,
    status: RawNodeStatus,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
struct RawNodeStatus {
    addresses: Vec<RawNodeAddress>,
    // Defined by Kubernetes, not read by weir:
    capacity: Option<IgnoredAny>,
    allocatable: Option<IgnoredAny>,
    phase: Option<IgnoredAny>,
    conditions: Option<IgnoredAny>,
    daemon_endpoints: Option<IgnoredAny>,
    node_info: Option<IgnoredAny>,
    images: Option<IgnoredAny>,
    volumes_in_use: Option<IgnoredAny>,
    volumes_attached: Option<IgnoredAny>,
    config: Option<IgnoredAny>,
    runtime_handlers: Option<IgnoredAny>,
    features: Option<IgnoredAny>,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct RawNodeAddress {
    #[serde(rename = "type")]
    kind: Option<String>,
    address: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
struct RawNodeSpec {
    #[serde(rename = "podCIDR")]
    pod_cidr: Option<String>,
    #[serde(rename = "podCIDRs")]
    pod_cidrs: Option<Vec<String>>,
    // Defined by Kubernetes, not read by weir:
    #[serde(rename = "providerID")]
    provider_id: Option<IgnoredAny>,
    unschedulable: Option<IgnoredAny>,
    taints: Option<IgnoredAny>,
    config_source: Option<IgnoredAny>,
    #[serde(rename = "externalID")]
    external_id: Option<IgnoredAny>,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
struct RawNamespace {
    api_version: Option<String>,
    kind: Option<String>,
    metadata: ObjectMeta,
    // Defined by Kubernetes (finalizers; phase, conditions), not read by weir:
    spec: Option<IgnoredAny>,
    status: Option<IgnoredAny>,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
struct RawPod {
    api_version: Option<String>,
    kind: Option<String>,
    metadata: ObjectMeta,
    spec: RawPodSpec,
    // Defined by Kubernetes, not read by weir:
    status: Option<IgnoredAny>,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
struct RawPodSpec {
    node_name: Option<String>,
    containers: Vec<RawContainer>,
    // Defined by Kubernetes, not read by weir:
    active_deadline_seconds: Option<IgnoredAny>,
    affinity: Option<IgnoredAny>,
    automount_service_account_token: Option<IgnoredAny>,
    dns_config: Option<IgnoredAny>,
    dns_policy: Option<IgnoredAny>,
    enable_service_links: Option<IgnoredAny>,
    ephemeral_containers: Option<IgnoredAny>,
    host_aliases: Option<IgnoredAny>,
    #[serde(rename = "hostIPC")]
    host_ipc: Option<IgnoredAny>,
    host_network: Option<IgnoredAny>,
    #[serde(rename = "hostPID")]
    host_pid: Option<IgnoredAny>,
    host_users: Option<IgnoredAny>,
    hostname: Option<IgnoredAny>,
    image_pull_secrets: Option<IgnoredAny>,
    init_containers: Option<IgnoredAny>,
    node_selector: Option<IgnoredAny>,
    os: Option<IgnoredAny>,
    overhead: Option<IgnoredAny>,
    preemption_policy: Option<IgnoredAny>,
    priority: Option<IgnoredAny>,
    priority_class_name: Option<IgnoredAny>,
    readiness_gates: Option<IgnoredAny>,
    resource_claims: Option<IgnoredAny>,
    resources: Option<IgnoredAny>,
    restart_policy: Option<IgnoredAny>,
    runtime_class_name: Option<IgnoredAny>,
    scheduler_name: Option<IgnoredAny>,
    scheduling_gates: Option<IgnoredAny>,
    security_context: Option<IgnoredAny>,
    service_account: Option<IgnoredAny>,
    service_account_name: Option<IgnoredAny>,
    #[serde(rename = "setHostnameAsFQDN")]
    set_hostname_as_fqdn: Option<IgnoredAny>,
    share_process_namespace: Option<IgnoredAny>,
    subdomain: Option<IgnoredAny>,
    termination_grace_period_seconds: Option<IgnoredAny>,
    tolerations: Option<IgnoredAny>,
    topology_spread_constraints: Option<IgnoredAny>,
    volumes: Option<IgnoredAny>,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
struct RawContainer {
    ports: Vec<RawPort>,
    // Defined by Kubernetes, not read by weir:
    name: Option<IgnoredAny>,
    image: Option<IgnoredAny>,
    command: Option<IgnoredAny>,
    args: Option<IgnoredAny>,
    working_dir: Option<IgnoredAny>,
    env_from: Option<IgnoredAny>,
    env: Option<IgnoredAny>,
    resources: Option<IgnoredAny>,
    resize_policy: Option<IgnoredAny>,
    restart_policy: Option<IgnoredAny>,
    volume_mounts: Option<IgnoredAny>,
    volume_devices: Option<IgnoredAny>,
    liveness_probe: Option<IgnoredAny>,
    readiness_probe: Option<IgnoredAny>,
    startup_probe: Option<IgnoredAny>,
    lifecycle: Option<IgnoredAny>,
    termination_message_path: Option<IgnoredAny>,
    termination_message_policy: Option<IgnoredAny>,
    image_pull_policy: Option<IgnoredAny>,
    security_context: Option<IgnoredAny>,
    stdin: Option<IgnoredAny>,
    stdin_once: Option<IgnoredAny>,
    tty: Option<IgnoredAny>,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
struct RawPort {
    name: Option<String>,
    container_port: Option<i64>,
    protocol: Option<String>,
    // Defined by Kubernetes, not read by weir:
    host_port: Option<IgnoredAny>,
    #[serde(rename = "hostIP")]
    host_ip: Option<IgnoredAny>,
}

/// The field tree of a topology kind (`Node`, `Namespace`, `Pod`), for the
/// strictness tests; `None` for any other kind.
#[doc(hidden)]
pub fn field_tree(kind: &str) -> Option<fields::Shape> {
    match kind {
        "Node" => Some(fields::field_tree::<RawNode>()),
        "Namespace" => Some(fields::field_tree::<RawNamespace>()),
        "Pod" => Some(fields::field_tree::<RawPod>()),
        "Service" => Some(crate::service_manifest::field_tree()),
        _ => None,
    }
}

fn decode<T: DeserializeOwned>(
    doc: &Document,
    mode: FieldValidation,
    ignored: &mut Vec<String>,
) -> Result<T, ManifestError> {
    let object = object_of(doc);
    match fields::decode::<T>(&doc.value, mode) {
        Ok((t, d)) => {
            ignored.extend(d.ignored.into_iter().map(|p| format!("{object}: {p}")));
            Ok(t)
        }
        Err(e) => Err(ManifestError::Invalid {
            object,
            field: e.path,
            msg: e.msg,
        }),
    }
}

/// A best-effort object name for errors raised before the object is decoded.
fn object_of(doc: &Document) -> String {
    let meta = doc.value.get("metadata");
    let name = meta.and_then(|m| m.get("name")).and_then(|v| v.as_str());
    let ns = meta
        .and_then(|m| m.get("namespace"))
        .and_then(|v| v.as_str())
        .unwrap_or(DEFAULT_NAMESPACE);
    match (doc.kind.as_str(), name) {
        ("Pod", Some(n)) => format!("pods/{ns}/{n}"),
        ("Node", Some(n)) => format!("nodes/{n}"),
        ("Namespace", Some(n)) => format!("namespaces/{n}"),
        (kind, _) => format!("{}: document {} ({kind})", doc.file, doc.index),
    }
}

fn check_labels(object: &str, labels: &BTreeMap<String, String>) -> Result<(), ManifestError> {
    for (k, v) in labels {
        names::label_key(k).map_err(|e| invalid(object, "metadata.labels", e))?;
        names::label_value(v).map_err(|e| invalid(object, format!("metadata.labels[{k}]"), e))?;
    }
    Ok(())
}

fn required_name(doc: &Document, meta: &ObjectMeta) -> Result<String, ManifestError> {
    match &meta.name {
        Some(n) => Ok(n.clone()),
        None => Err(invalid(&object_of(doc), "metadata.name", "required")),
    }
}

/// An underlay address must be IPv4 unicast a node can own.
fn check_underlay_ip(object: &str, field: &str, ip: Ipv4Addr) -> Result<(), ManifestError> {
    if ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_multicast()
        || ip.is_broadcast()
    {
        return Err(invalid(
            object,
            field,
            format!("{ip} is not a unicast address a node can use on the underlay"),
        ));
    }
    Ok(())
}

fn parse_cidr(object: &str, field: &str, s: &str) -> Result<IpNet, ManifestError> {
    let net: IpNet = s
        .parse()
        .map_err(|_| invalid(object, field, format!("{s:?} is not a CIDR")))?;
    if net.trunc() != net {
        return Err(invalid(
            object,
            field,
            format!("{s} has host bits set (did you mean {}?)", net.trunc()),
        ));
    }
    Ok(net)
}

impl ClusterSpec {
    /// Adds one Node, Namespace or Pod document; any other kind is an error.
    /// Per-object fields are checked here, with their exact manifest paths;
    /// unknown fields are refused.
    pub fn add_document(&mut self, doc: &Document) -> Result<(), ManifestError> {
        self.add_document_with(doc, FieldValidation::Strict, &mut Vec::new())
    }

    /// [`add_document`](Self::add_document) under a field-validation mode:
    /// under `warn`/`ignore` the unknown fields are dropped and pushed to
    /// `ignored` as `<object>: <path>`.
    pub fn add_document_with(
        &mut self,
        doc: &Document,
        mode: FieldValidation,
        ignored: &mut Vec<String>,
    ) -> Result<(), ManifestError> {
        if !is_topology_kind(&doc.api_version, &doc.kind) {
            return Err(ManifestError::UnknownKind {
                file: doc.file.clone(),
                index: doc.index,
                kind: doc.kind.clone(),
                api_version: doc.api_version.clone(),
            });
        }
        match doc.kind.as_str() {
            "Node" => {
                let raw: RawNode = decode(doc, mode, ignored)?;
                let name = required_name(doc, &raw.metadata)?;
                let object = format!("nodes/{name}");
                let mut pod_cidrs = Vec::new();
                if let Some(list) = &raw.spec.pod_cidrs {
                    for (i, s) in list.iter().enumerate() {
                        pod_cidrs.push(parse_cidr(&object, &format!("spec.podCIDRs[{i}]"), s)?);
                    }
                }
                if let Some(s) = &raw.spec.pod_cidr {
                    let one = parse_cidr(&object, "spec.podCIDR", s)?;
                    match pod_cidrs.first() {
                        None => pod_cidrs.push(one),
                        Some(first) if *first == one => {}
                        Some(first) => {
                            return Err(invalid(
                                &object,
                                "spec.podCIDR",
                                format!("{one} differs from spec.podCIDRs[0] {first}"),
                            ))
                        }
                    }
                }
                let dataplane = match raw
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(DATAPLANE_ANNOTATION))
                    .map(String::as_str)
                {
                    None | Some("weir") => NodeDataplane::Weir,
                    Some("kernel") => NodeDataplane::Kernel,
                    Some(other) => {
                        return Err(invalid(
                            &object,
                            format!("metadata.annotations[{DATAPLANE_ANNOTATION}]"),
                            format!("{other:?} is not one of weir, kernel"),
                        ))
                    }
                };
                let mut internal_ip = None;
                for (i, a) in raw.status.addresses.iter().enumerate() {
                    if a.kind.as_deref() != Some("InternalIP") {
                        continue;
                    }
                    let field = format!("status.addresses[{i}].address");
                    let text = a.address.as_deref().unwrap_or("");
                    let ip: IpAddr = text.parse().map_err(|_| {
                        invalid(&object, &field, format!("{text:?} is not an IP address"))
                    })?;
                    if let (IpAddr::V4(v4), None) = (ip, internal_ip) {
                        check_underlay_ip(&object, &field, v4)?;
                        internal_ip = Some(v4);
                    }
                }
                let node = NodeSpec {
                    name,
                    labels: raw.metadata.labels.unwrap_or_default(),
                    pod_cidrs,
                    dataplane,
                    internal_ip,
                };
                node.check()?;
                self.nodes.push(node);
            }
            "Namespace" => {
                let raw: RawNamespace = decode(doc, mode, ignored)?;
                let ns = NamespaceSpec {
                    name: required_name(doc, &raw.metadata)?,
                    labels: raw.metadata.labels.unwrap_or_default(),
                };
                ns.check()?;
                self.namespaces.push(ns);
            }
            "Pod" => {
                let raw: RawPod = decode(doc, mode, ignored)?;
                let name = required_name(doc, &raw.metadata)?;
                let namespace = raw
                    .metadata
                    .namespace
                    .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string());
                let object = format!("pods/{namespace}/{name}");
                let mut ports = Vec::new();
                let mut paths = Vec::new();
                for (ci, c) in raw.spec.containers.iter().enumerate() {
                    for (pi, p) in c.ports.iter().enumerate() {
                        let path = format!("spec.containers[{ci}].ports[{pi}]");
                        let port = match p.container_port {
                            None => {
                                return Err(invalid(
                                    &object,
                                    format!("{path}.containerPort"),
                                    "required",
                                ))
                            }
                            Some(n) if !(1..=65535).contains(&n) => {
                                return Err(invalid(
                                    &object,
                                    format!("{path}.containerPort"),
                                    format!("{n} is out of range 1-65535"),
                                ))
                            }
                            Some(n) => n as u16,
                        };
                        let protocol = match p.protocol.as_deref() {
                            None | Some("TCP") => Protocol::Tcp,
                            Some("UDP") => Protocol::Udp,
                            Some("SCTP") => Protocol::Sctp,
                            Some(other) => {
                                return Err(invalid(
                                    &object,
                                    format!("{path}.protocol"),
                                    format!("{other:?} is not one of TCP, UDP, SCTP"),
                                ))
                            }
                        };
                        ports.push(ContainerPort {
                            name: p.name.clone(),
                            port,
                            protocol,
                        });
                        paths.push(path);
                    }
                }
                let pod = PodSpec {
                    namespace,
                    name,
                    labels: raw.metadata.labels.unwrap_or_default(),
                    node: raw.spec.node_name.unwrap_or_default(),
                    ports,
                };
                pod.check_with_paths(&paths)?;
                self.pods.push(pod);
            }
            "Service" => {
                let svc = crate::service_manifest::parse_service(doc, mode, ignored)?;
                self.services.push(svc);
            }
            _ => unreachable!("is_topology_kind admitted {}", doc.kind),
        }
        Ok(())
    }

    /// Appends another spec's objects (duplicates are reported by
    /// [`validate`](Self::validate)).
    pub fn merge(&mut self, other: ClusterSpec) -> Result<(), ManifestError> {
        self.nodes.extend(other.nodes);
        self.namespaces.extend(other.namespaces);
        self.pods.extend(other.pods);
        self.services.extend(other.services);
        Ok(())
    }

    /// Adds node `node-1` (10.244.0.0/24, fd00:10:244::/64) when there is no node.
    pub fn default_node_if_missing(&mut self) {
        if self.nodes.is_empty() {
            self.nodes.push(NodeSpec {
                name: DEFAULT_NODE.to_string(),
                labels: BTreeMap::new(),
                pod_cidrs: vec![
                    "10.244.0.0/24".parse().expect("literal CIDR"),
                    "fd00:10:244::/64".parse().expect("literal CIDR"),
                ],
                dataplane: NodeDataplane::Weir,
                internal_ip: None,
            });
        }
    }

    /// Applies every default of the module doc (default node, podCIDRs of
    /// nodes without, implicit `default` namespace, well-known labels, pod
    /// node) and validates.
    pub fn finish(mut self) -> Result<ClusterSpec, ManifestError> {
        self.apply_defaults();
        self.validate()?;
        Ok(self)
    }

    /// The defaulting half of [`finish`](Self::finish); idempotent.
    pub fn apply_defaults(&mut self) {
        self.default_node_if_missing();
        let taken: Vec<IpNet> = self
            .nodes
            .iter()
            .flat_map(|n| n.pod_cidrs.clone())
            .collect();
        let mut next = 0u16;
        let mut assigned: Vec<IpNet> = Vec::new();
        for node in self.nodes.iter_mut().filter(|n| n.pod_cidrs.is_empty()) {
            while next < 256 {
                let i = next;
                next += 1;
                let v4: IpNet = format!("10.244.{i}.0/24").parse().expect("generated CIDR");
                let v6: IpNet = format!("fd00:10:244:{i:x}::/64")
                    .parse()
                    .expect("generated CIDR");
                let clash = |c: &IpNet| taken.iter().chain(assigned.iter()).any(|t| overlaps(t, c));
                if !clash(&v4) && !clash(&v6) {
                    node.pod_cidrs = vec![v4, v6];
                    assigned.extend([v4, v6]);
                    break;
                }
            }
        }
        for node in &mut self.nodes {
            node.labels
                .entry(HOSTNAME_LABEL.to_string())
                .or_insert_with(|| node.name.clone());
        }
        if !self.namespaces.iter().any(|n| n.name == DEFAULT_NAMESPACE) {
            self.namespaces.insert(
                0,
                NamespaceSpec {
                    name: DEFAULT_NAMESPACE.to_string(),
                    labels: BTreeMap::new(),
                },
            );
        }
        for ns in &mut self.namespaces {
            ns.labels
                .entry(NAMESPACE_NAME_LABEL.to_string())
                .or_insert_with(|| ns.name.clone());
        }
        if let Some(first) = self.nodes.first().map(|n| n.name.clone()) {
            for pod in self.pods.iter_mut().filter(|p| p.node.is_empty()) {
                pod.node = first.clone();
            }
        }
    }

    /// Checks everything listed in the module doc; the first problem wins.
    pub fn validate(&self) -> Result<(), ManifestError> {
        if self.nodes.is_empty() {
            return Err(invalid(
                "nodes",
                "items",
                "no node (call default_node_if_missing)",
            ));
        }
        let mut seen = HashSet::new();
        for node in &self.nodes {
            node.check()?;
            if !seen.insert(&node.name) {
                return Err(ManifestError::Duplicate {
                    object: format!("nodes/{}", node.name),
                });
            }
            if node.pod_cidrs.is_empty() {
                return Err(invalid(
                    &format!("nodes/{}", node.name),
                    "spec.podCIDRs",
                    "required",
                ));
            }
        }
        for (i, a) in self.nodes.iter().enumerate() {
            for b in &self.nodes[..i] {
                for ca in &a.pod_cidrs {
                    if let Some(cb) = b.pod_cidrs.iter().find(|cb| overlaps(ca, cb)) {
                        return Err(invalid(
                            &format!("nodes/{}", a.name),
                            "spec.podCIDRs",
                            format!("{ca} overlaps {cb} of nodes/{}", b.name),
                        ));
                    }
                }
            }
        }
        let mut internal_ips: HashMap<Ipv4Addr, &str> = HashMap::new();
        for node in &self.nodes {
            let Some(ip) = node.internal_ip else { continue };
            if let Some(other) = internal_ips.insert(ip, &node.name) {
                return Err(invalid(
                    &node.object(),
                    "status.addresses",
                    format!("InternalIP {ip} is also that of nodes/{other}"),
                ));
            }
            for n in &self.nodes {
                if let Some(c) = n.pod_cidrs.iter().find(|c| c.contains(&IpAddr::V4(ip))) {
                    return Err(invalid(
                        &node.object(),
                        "status.addresses",
                        format!("InternalIP {ip} is inside podCIDR {c} of nodes/{}", n.name),
                    ));
                }
            }
        }
        let mut namespaces = HashSet::new();
        for ns in &self.namespaces {
            ns.check()?;
            if !namespaces.insert(ns.name.as_str()) {
                return Err(ManifestError::Duplicate {
                    object: format!("namespaces/{}", ns.name),
                });
            }
        }
        let nodes: HashMap<&str, &NodeSpec> =
            self.nodes.iter().map(|n| (n.name.as_str(), n)).collect();
        let mut pods = HashSet::new();
        let mut per_node: HashMap<&str, u128> = HashMap::new();
        for pod in &self.pods {
            pod.check()?;
            let object = pod.object();
            if !pods.insert((pod.namespace.as_str(), pod.name.as_str())) {
                return Err(ManifestError::Duplicate { object });
            }
            if !namespaces.contains(pod.namespace.as_str()) {
                return Err(invalid(
                    &object,
                    "metadata.namespace",
                    format!(
                        "namespace {:?} is not declared (add a Namespace object; only \"default\" is implicit)",
                        pod.namespace
                    ),
                ));
            }
            let Some(node) = nodes.get(pod.node.as_str()) else {
                return Err(invalid(
                    &object,
                    "spec.nodeName",
                    format!("node {:?} is not declared", pod.node),
                ));
            };
            let count = per_node.entry(node.name.as_str()).or_default();
            *count += 1;
            let capacity = node.pod_capacity();
            if *count > capacity {
                return Err(invalid(
                    &object,
                    "spec.nodeName",
                    format!(
                        "node {:?} is full: its podCIDRs {} hold {capacity} pods",
                        node.name,
                        node.pod_cidrs
                            .iter()
                            .map(|c| c.to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
        }
        let mut services = HashSet::new();
        for svc in &self.services {
            let object = svc.object();
            if !services.insert((svc.info.namespace.as_str(), svc.info.name.as_str())) {
                return Err(ManifestError::Duplicate { object });
            }
            if !namespaces.contains(svc.info.namespace.as_str()) {
                return Err(invalid(
                    &object,
                    "metadata.namespace",
                    format!("namespace {:?} is not declared", svc.info.namespace),
                ));
            }
        }
        Ok(())
    }
}

/// Whether two networks share an address (different families never do).
pub fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    match (a, b) {
        (IpNet::V4(_), IpNet::V4(_)) | (IpNet::V6(_), IpNet::V6(_)) => {
            a.contains(&b.network()) || b.contains(&a.network())
        }
        _ => false,
    }
}

impl NodeSpec {
    /// `nodes/<name>`.
    pub fn object(&self) -> String {
        format!("nodes/{}", self.name)
    }

    fn check(&self) -> Result<(), ManifestError> {
        let object = self.object();
        names::dns1123_subdomain(&self.name).map_err(|e| invalid(&object, "metadata.name", e))?;
        check_labels(&object, &self.labels)?;
        if let Some(ip) = self.internal_ip {
            check_underlay_ip(&object, "status.addresses", ip)?;
        }
        let (mut v4, mut v6) = (0, 0);
        for c in &self.pod_cidrs {
            match c {
                IpNet::V4(_) => v4 += 1,
                IpNet::V6(_) => v6 += 1,
            }
            if c.trunc() != *c {
                return Err(invalid(
                    &object,
                    "spec.podCIDRs",
                    format!("{c} has host bits set"),
                ));
            }
            let link_local: IpNet = "169.254.0.0/16".parse().expect("literal CIDR");
            let v6_special: [IpNet; 3] = [
                "fe80::/10".parse().expect("literal CIDR"),
                "ff00::/8".parse().expect("literal CIDR"),
                "::/127".parse().expect("literal CIDR"),
            ];
            if overlaps(c, &link_local) || v6_special.iter().any(|s| overlaps(c, s)) {
                return Err(invalid(
                    &object,
                    "spec.podCIDRs",
                    format!("{c} overlaps link-local, multicast or unspecified addresses"),
                ));
            }
        }
        if v4 > 1 || v6 > 1 {
            return Err(invalid(
                &object,
                "spec.podCIDRs",
                "at most one IPv4 and one IPv6 CIDR are allowed",
            ));
        }
        Ok(())
    }

    /// How many pods the podCIDRs hold: the smaller of the families present
    /// (IPv4 hands out `.2` up to the address before broadcast, IPv6 `::2`
    /// up to the address before the last).
    pub fn pod_capacity(&self) -> u128 {
        self.pod_cidrs
            .iter()
            .map(|c| match c {
                IpNet::V4(n) => (1u128 << (32 - n.prefix_len())).saturating_sub(3),
                IpNet::V6(n) => {
                    let bits = 128 - n.prefix_len() as u32;
                    if bits >= 127 {
                        u128::MAX
                    } else {
                        (1u128 << bits).saturating_sub(3)
                    }
                }
            })
            .min()
            .unwrap_or(0)
    }
}

impl NamespaceSpec {
    fn check(&self) -> Result<(), ManifestError> {
        let object = format!("namespaces/{}", self.name);
        names::dns1123_label(&self.name).map_err(|e| invalid(&object, "metadata.name", e))?;
        check_labels(&object, &self.labels)
    }
}

impl PodSpec {
    /// Per-pod checks with flat paths (`spec.ports[i]`) for specs built in code.
    pub(crate) fn check(&self) -> Result<(), ManifestError> {
        let paths: Vec<String> = (0..self.ports.len())
            .map(|i| format!("spec.ports[{i}]"))
            .collect();
        self.check_with_paths(&paths)
    }

    fn check_with_paths(&self, paths: &[String]) -> Result<(), ManifestError> {
        let object = self.object();
        names::dns1123_label(&self.namespace)
            .map_err(|e| invalid(&object, "metadata.namespace", e))?;
        names::dns1123_subdomain(&self.name).map_err(|e| invalid(&object, "metadata.name", e))?;
        check_labels(&object, &self.labels)?;
        if !self.node.is_empty() {
            names::dns1123_subdomain(&self.node)
                .map_err(|e| invalid(&object, "spec.nodeName", e))?;
        }
        let mut seen: BTreeMap<(u16, Protocol), &str> = BTreeMap::new();
        let mut names_seen: BTreeMap<&str, &str> = BTreeMap::new();
        for (p, path) in self.ports.iter().zip(paths) {
            if p.port == 0 {
                return Err(invalid(
                    &object,
                    format!("{path}.containerPort"),
                    "0 is out of range 1-65535",
                ));
            }
            if let Some(first) = seen.insert((p.port, p.protocol), path) {
                return Err(invalid(
                    &object,
                    format!("{path}.containerPort"),
                    format!("{}/{} is already declared at {first}", p.port, p.protocol),
                ));
            }
            if let Some(name) = &p.name {
                names::iana_svc_name(name)
                    .map_err(|e| invalid(&object, format!("{path}.name"), e))?;
                if let Some(first) = names_seen.insert(name, path) {
                    return Err(invalid(
                        &object,
                        format!("{path}.name"),
                        format!("{name:?} is already used at {first}"),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The protocols/ports in a deterministic order, for display.
pub fn port_summary(ports: &[ContainerPort]) -> String {
    let set: BTreeSet<String> = ports
        .iter()
        .map(|p| format!("{}/{}", p.port, p.protocol))
        .collect();
    set.into_iter().collect::<Vec<_>>().join(",")
}
