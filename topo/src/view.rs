//! A realized topology as the policy compiler and the agent see it
//! ([`weir_model::cluster::ClusterView`]).

use std::net::IpAddr;

use weir_model::cluster::{ClusterView, NamespaceInfo, PodInfo};
use weir_model::service::ServiceInfo;

use crate::Cluster;

impl ClusterView for Cluster {
    fn namespaces(&self) -> Vec<NamespaceInfo> {
        self.namespaces
            .iter()
            .map(|n| NamespaceInfo {
                name: n.name.clone(),
                labels: n.labels.clone(),
            })
            .collect()
    }

    fn pods(&self) -> Vec<PodInfo> {
        self.pods
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
            .collect()
    }

    fn node_addresses(&self) -> Vec<IpAddr> {
        self.nodes
            .iter()
            .flat_map(|n| [n.ipv4.map(IpAddr::V4), n.ipv6.map(IpAddr::V6)])
            .flatten()
            .collect()
    }

    fn services(&self) -> Vec<ServiceInfo> {
        self.services.clone()
    }
}
