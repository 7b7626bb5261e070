//! Services as every source of cluster state gives them to the compiler:
//! manifests (`weir up` / `weir apply`, endpoints derived from the pods the
//! selector picks) and the API server (Services + EndpointSlices through
//! the node agent). Plain data; what the pass reads (the Maglev tables, the
//! frontends) is compiled from these into the snapshot.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::cluster::Labels;
use crate::manifest::Protocol;

/// How a Service is exposed (`spec.type`; ExternalName is not load
/// balanced and is refused by the sources with one line).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServiceType {
    #[default]
    ClusterIP,
    NodePort,
    /// A NodePort Service (node ports unless
    /// `allocateLoadBalancerNodePorts: false`) whose load balancer's
    /// addresses ([`ServiceInfo::external_ips`]) weir also serves, as
    /// kube-proxy does (docs/services.md, LoadBalancer and externalIPs).
    LoadBalancer,
}

impl ServiceType {
    /// NodePort and LoadBalancer Services have node ports.
    pub fn has_node_ports(self) -> bool {
        matches!(self, ServiceType::NodePort | ServiceType::LoadBalancer)
    }
}

/// First port of the NodePort range (Kubernetes' default
/// `--service-node-port-range`): manifests' nodePorts are checked against
/// it and allocated from it; the XDP program's underlay branch hands TCP/UDP
/// to these ports on the node's address to the dataplane.
pub const NODE_PORT_FIRST: u16 = 30000;
/// Last port of the NodePort range.
pub const NODE_PORT_LAST: u16 = 32767;

/// `spec.externalTrafficPolicy` / `spec.internalTrafficPolicy`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum TrafficPolicy {
    /// Any ready endpoint in the cluster.
    #[default]
    Cluster,
    /// Endpoints on the node the traffic entered only.
    Local,
}

/// `targetPort`: a number, or the name of a container port resolved per
/// backend pod (two backends may listen on different numbers).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TargetPort {
    Number(u16),
    Name(String),
}

/// One entry of `spec.ports`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicePort {
    /// Required by Kubernetes when there are several ports.
    pub name: Option<String>,
    pub protocol: Protocol,
    pub port: u16,
    pub target: TargetPort,
    /// The allocated node port (NodePort Services).
    pub node_port: Option<u16>,
}

/// A port of an endpoint, as an EndpointSlice lists it: the Service port's
/// name it serves and the resolved number on the backend.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointPort {
    pub name: Option<String>,
    pub protocol: Protocol,
    pub port: u16,
}

/// One backend (an EndpointSlice endpoint, or a pod the selector picked).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceEndpoint {
    /// The pod's addresses (one per family it has).
    pub addresses: Vec<IpAddr>,
    /// `namespace/name` of the pod, when known (`targetRef`).
    pub pod: Option<String>,
    /// The node the endpoint runs on (`nodeName`).
    pub node: Option<String>,
    /// `conditions.ready`: new flows may go here.
    pub ready: bool,
    /// `conditions.serving`: may take flows while terminating.
    pub serving: bool,
    /// `conditions.terminating`: no new flows; established ones drain.
    pub terminating: bool,
    /// The resolved ports (for every Service port).
    pub ports: Vec<EndpointPort>,
}

/// A Service and its endpoints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceInfo {
    pub namespace: String,
    pub name: String,
    pub kind: ServiceType,
    /// `spec.clusterIPs` (one per family). Empty: headless, not load
    /// balanced by weir.
    pub cluster_ips: Vec<IpAddr>,
    pub ports: Vec<ServicePort>,
    /// `spec.selector` (None: endpoints are managed by someone else).
    pub selector: Option<Labels>,
    /// `sessionAffinity: ClientIP`: its timeout in seconds.
    pub affinity_timeout_s: Option<u32>,
    pub external_traffic: TrafficPolicy,
    pub internal_traffic: TrafficPolicy,
    pub endpoints: Vec<ServiceEndpoint>,
    /// Addresses outside the Service range that also reach the Service's
    /// ports: `spec.externalIPs` and the load balancer's
    /// `status.loadBalancer.ingress[].ip` (manifests: `spec.loadBalancerIP`,
    /// weir's local cluster having no load-balancer controller). Served
    /// to pods and the node like the ClusterIP (never from the world yet:
    /// docs/services.md).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub external_ips: Vec<IpAddr>,
}

impl ServiceInfo {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}
