//! weir-policy: the policy compiler.
//!
//! Reads Kubernetes NetworkPolicy (networking.k8s.io/v1),
//! ClusterNetworkPolicy (policy.networking.k8s.io/v1alpha2),
//! AdminNetworkPolicy and BaselineAdminNetworkPolicy
//! (policy.networking.k8s.io/v1alpha1) and weir's own WeirPolicy and
//! WeirClusterPolicy (weir.dev/v1alpha1) ([`parse`]), and compiles them with
//! the cluster's pods and namespaces into the plain-data tables of
//! [`weir_model::policy`] ([`compile()`]). [`explain()`] judges a flow with
//! `CompiledPolicy::judge`, the function the dataplane's workers run
//! (both in `weir-model`, the only weir crate this one depends on).
//!
//! Modules: [`model`] (validated policy objects), [`selector`] (label
//! selectors), [`parse`], [`compile`], [`explain`]. Precedence and the
//! WeirPolicy schema: docs/policy.md.
#![forbid(unsafe_code)]

pub mod check;
pub mod compile;
pub mod explain;
pub mod model;
pub mod parse;
pub mod selector;
pub mod suggest;

pub use compile::{
    compile, compile_for, compile_for_host, compile_with_host, node_endpoints, HostEndpoint,
};
pub use explain::{explain, Explanation, SideExplanation};
pub use model::{Kind, Policy};
pub use parse::{is_policy_kind, parse_document, parse_str};

use std::net::IpAddr;
use weir_model::cluster::ClusterView;
use weir_model::manifest::ManifestError;

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
    /// The compiled tables were rejected by their own checks (a compiler
    /// bug); the source says why.
    #[error("compiled policy rejected")]
    Compiled(#[from] weir_model::policy::PolicyError),
}

pub use weir_model::cluster::{NamespaceInfo, PodInfo};

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
    /// The input for a cluster (a realized topology today: see
    /// [`ClusterView`]). Endpoint order on a node is (namespace, name), as
    /// the agent orders `SnapshotSpec::endpoints`.
    pub fn from_cluster(cluster: &impl ClusterView, policies: Vec<Policy>) -> PolicyInput {
        PolicyInput {
            namespaces: cluster.namespaces(),
            pods: cluster.pods(),
            hosts: cluster.node_addresses(),
            policies,
        }
    }
}
