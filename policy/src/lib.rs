//! weir-policy: the policy compiler.
//!
//! Reads Kubernetes NetworkPolicy (networking.k8s.io/v1),
//! ClusterNetworkPolicy (policy.networking.k8s.io/v1alpha2),
//! AdminNetworkPolicy and BaselineAdminNetworkPolicy
//! (policy.networking.k8s.io/v1alpha1) and weir's own WeirPolicy and
//! WeirClusterPolicy (weir.dev/v1alpha1) ([`parse`]), and compiles them with
//! the cluster's pods and namespaces into the plain-data tables of
//! [`weir_dataplane::policy`] ([`compile()`]). [`explain()`] judges a flow with
//! the dataplane's own `CompiledPolicy::judge`.
//!
//! Modules: [`model`] (validated policy objects), [`selector`] (label
//! selectors), [`parse`], [`compile`], [`explain`]. Precedence and the
//! WeirPolicy schema: docs/policy.md.
#![forbid(unsafe_code)]

pub mod compile;
pub mod explain;
pub mod model;
pub mod parse;
pub mod selector;

pub use compile::{compile, compile_for, node_endpoints};
pub use explain::{explain, Explanation, SideExplanation};
pub use model::{Kind, Policy};
pub use parse::{is_policy_kind, parse_document, parse_str};

use selector::Labels;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use weir_topo::manifest::ManifestError;
use weir_topo::ContainerPort;

/// One problem with policies or their input, as one line.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// A field of a policy object is wrong: `<object>: <field>: <why>`.
    #[error("{object}: {field}: {msg}")]
    Invalid {
        object: String,
        field: String,
        msg: String,
    },
    /// A document that is no policy kind.
    #[error("{file}: document {index}: unsupported kind {kind:?} (apiVersion {api_version:?}); expected a policy kind")]
    UnknownKind {
        file: String,
        index: usize,
        kind: String,
        api_version: String,
    },
    /// Two policy objects with the same kind, namespace and name.
    #[error("{object}: defined more than once")]
    Duplicate { object: String },
    /// The text does not parse as YAML/JSON documents.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The cluster input is inconsistent (or names an unknown pod).
    #[error("{0}")]
    Input(String),
    /// The compiled tables were rejected by the dataplane (a compiler bug).
    #[error("compiled policy rejected: {0}")]
    Compiled(#[from] weir_dataplane::policy::PolicyError),
}

/// A namespace and its labels (`kubernetes.io/metadata.name` is added).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamespaceInfo {
    pub name: String,
    pub labels: Labels,
}

/// A pod anywhere in the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub node: String,
    pub labels: Labels,
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    /// Container ports (named ports resolve here).
    pub ports: Vec<ContainerPort>,
}

/// Everything the compiler reads.
#[derive(Clone, Debug, Default)]
pub struct PolicyInput {
    pub namespaces: Vec<NamespaceInfo>,
    pub pods: Vec<PodInfo>,
    /// Node addresses (identity host: always allowed to and from pods).
    pub hosts: Vec<IpAddr>,
    pub policies: Vec<Policy>,
}

impl PolicyInput {
    /// The input for a realized topology. Endpoint order on a node is
    /// (namespace, name), as the agent orders `SnapshotSpec::endpoints`.
    pub fn from_cluster(cluster: &weir_topo::Cluster, policies: Vec<Policy>) -> PolicyInput {
        PolicyInput {
            namespaces: cluster
                .namespaces
                .iter()
                .map(|n| NamespaceInfo {
                    name: n.name.clone(),
                    labels: n.labels.clone(),
                })
                .collect(),
            pods: cluster
                .pods
                .iter()
                .map(|p| PodInfo {
                    namespace: p.namespace.clone(),
                    name: p.name.clone(),
                    node: p.node.clone(),
                    labels: p.labels.clone(),
                    ipv4: p.ipv4,
                    ipv6: p.ipv6,
                    ports: p.ports.clone(),
                })
                .collect(),
            hosts: cluster
                .nodes
                .iter()
                .flat_map(|n| [n.ipv4.map(IpAddr::V4), n.ipv6.map(IpAddr::V6)])
                .flatten()
                .collect(),
            policies,
        }
    }
}
