//! Where the agent's inputs come from. The agent ([`crate::agent`])
//! compiles whatever a [`ClusterSource`] gives — the realized cluster
//! (nodes with their underlay, namespaces, pods with their interfaces) and
//! the policies in force — into one snapshot per node.
//!
//! One implementation today, [`Manifests`]: the topology `weir up` built
//! from manifests (weir-topo) plus the policy texts `weir apply` stored.
//! This is the room for the others: a Kubernetes watcher (policies and
//! namespaces from an API server) and the CNI plugin's attachments are
//! sources too. Changes are pushed: whoever owns a source calls
//! [`crate::agent::publish`] after changing it (the daemon does after each
//! apply, delete, policy sync and CNI call), so a watcher publishes from
//! its event loop the same way.

use crate::manifests::{self, StoredPolicy};
use weir_policy::Policy;
use weir_topo::Cluster;

/// The agent's inputs.
pub trait ClusterSource {
    /// The realized cluster: nodes, namespaces, pods.
    fn cluster(&self) -> &Cluster;
    /// Every policy in force, parsed and validated.
    fn policies(&self) -> anyhow::Result<Vec<Policy>>;
}

/// The cluster and policies the manifests declared (`weir up`, `apply`).
pub struct Manifests<'a> {
    pub cluster: &'a Cluster,
    pub policies: &'a [StoredPolicy],
}

impl ClusterSource for Manifests<'_> {
    fn cluster(&self) -> &Cluster {
        self.cluster
    }

    fn policies(&self) -> anyhow::Result<Vec<Policy>> {
        manifests::parse_all(self.policies)
    }
}

/// A cluster and policies already parsed: what the Kubernetes node agent
/// holds after converting its reflector stores (`kube_inputs`).
pub struct Parsed<'a> {
    pub cluster: &'a Cluster,
    pub policies: &'a [Policy],
}

impl ClusterSource for Parsed<'_> {
    fn cluster(&self) -> &Cluster {
        self.cluster
    }

    fn policies(&self) -> anyhow::Result<Vec<Policy>> {
        Ok(self.policies.to_vec())
    }
}
