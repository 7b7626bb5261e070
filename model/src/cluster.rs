//! The cluster as the policy compiler and the agents see it: namespaces,
//! pods and node addresses, whatever produced them. Today a realized
//! topology (`weir_topo::Cluster`) implements [`ClusterView`]; a
//! Kubernetes watcher or the CNI plugin's endpoint table can implement it
//! the same way. Services and their endpoints are in [`crate::service`].

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

pub use crate::manifest::{ContainerPort, Protocol};

/// Labels of an object (`metadata.labels`).
pub type Labels = BTreeMap<String, String>;

/// A namespace and its labels (`kubernetes.io/metadata.name` is added).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceInfo {
    pub name: String,
    pub labels: Labels,
}

/// A pod anywhere in the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
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

/// What a source of cluster state tells: its namespaces, its pods and the
/// addresses of its nodes. Endpoint order on a node is (namespace, name),
/// so implementations may return pods in any order.
pub trait ClusterView {
    fn namespaces(&self) -> Vec<NamespaceInfo>;
    fn pods(&self) -> Vec<PodInfo>;
    /// Every node address (the policy identity `host`).
    fn node_addresses(&self) -> Vec<IpAddr>;
    /// Services and their endpoints ([`crate::service`]).
    fn services(&self) -> Vec<crate::service::ServiceInfo> {
        Vec::new()
    }
}
