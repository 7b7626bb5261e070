//! The tables workers read: immutable, built by the control side, swapped in
//! whole between batches (see `runtime`). Nothing here is written per packet.
#![forbid(unsafe_code)]

use crate::policy::{CompiledPolicy, PolicyError, PolicySpec};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr};

/// Index of a managed interface in [`SnapshotSpec::ports`].
pub type PortId = u16;

/// A managed interface on this node: the node-side end of a pod's veth.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Port {
    /// Interface name in the node's network namespace.
    pub name: String,
    /// MAC of the node-side end; the source MAC of frames weir sends to the pod,
    /// and the MAC the pod's gateway (169.254.1.1 / fe80::1) resolves to.
    pub mac: [u8; 6],
    /// MTU of the pod's link (IP packet size); bigger packets are not forwarded.
    #[serde(default = "default_mtu")]
    pub mtu: u16,
}

fn default_mtu() -> u16 {
    1500
}

/// A pod on this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// `namespace/name`, for status, flows and explain.
    pub name: String,
    /// The port (interface) the pod sits behind.
    pub port: PortId,
    /// The pod's own MAC (its eth0): destination MAC of frames weir sends to it.
    pub mac: [u8; 6],
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
}

/// Plain-data form of a snapshot: what the agent writes and the dataplane reads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotSpec {
    /// Increases with every change; workers report the generation they run.
    pub generation: u64,
    pub node: String,
    /// Node address used as the source of ICMP errors weir generates (IPv4).
    pub node_ipv4: Option<Ipv4Addr>,
    /// Node address used as the source of ICMPv6 errors weir generates.
    pub node_ipv6: Option<Ipv6Addr>,
    pub ports: Vec<Port>,
    pub endpoints: Vec<Endpoint>,
    /// Compiled network policy (see [`crate::policy`]); empty = allow all.
    #[serde(default)]
    pub policy: PolicySpec,
}

/// Errors in a snapshot spec; a bad spec is rejected whole, the previous one stays.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SnapshotError {
    /// endpoint {0}: port index {1} is not in the port list
    #[error("endpoint {0}: port index {1} is not in the port list")]
    UnknownPort(String, PortId),
    /// endpoint {0}: address {1} is already used by endpoint {2}
    #[error("endpoint {0}: address {1} is already used by endpoint {2}")]
    DuplicateAddress(String, String, String),
    /// too many ports ({0}); at most 65535
    #[error("too many ports ({0}); at most 65535")]
    TooManyPorts(usize),
    /// the compiled policy is inconsistent
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// policy has tables for {0} endpoints but the snapshot has {1}
    #[error("policy has tables for {0} endpoints but the snapshot has {1}")]
    PolicyEndpoints(usize, usize),
}

/// The lookup form workers use.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub spec: SnapshotSpec,
    by_v4: HashMap<Ipv4Addr, u32>,
    by_v6: HashMap<Ipv6Addr, u32>,
    /// Endpoint index behind each port, if any (a port holds one pod).
    by_port: Vec<Option<u32>>,
    policy: CompiledPolicy,
}

impl Snapshot {
    /// Validates `spec` and builds the lookup tables.
    pub fn build(spec: SnapshotSpec) -> Result<Self, SnapshotError> {
        if spec.ports.len() > PortId::MAX as usize {
            return Err(SnapshotError::TooManyPorts(spec.ports.len()));
        }
        let mut by_v4 = HashMap::new();
        let mut by_v6 = HashMap::new();
        let mut by_port = vec![None; spec.ports.len()];
        for (i, ep) in spec.endpoints.iter().enumerate() {
            let idx = i as u32;
            if ep.port as usize >= spec.ports.len() {
                return Err(SnapshotError::UnknownPort(ep.name.clone(), ep.port));
            }
            by_port[ep.port as usize] = Some(idx);
            if let Some(a) = ep.ipv4 {
                if let Some(prev) = by_v4.insert(a, idx) {
                    return Err(SnapshotError::DuplicateAddress(
                        ep.name.clone(),
                        a.to_string(),
                        spec.endpoints[prev as usize].name.clone(),
                    ));
                }
            }
            if let Some(a) = ep.ipv6 {
                if let Some(prev) = by_v6.insert(a, idx) {
                    return Err(SnapshotError::DuplicateAddress(
                        ep.name.clone(),
                        a.to_string(),
                        spec.endpoints[prev as usize].name.clone(),
                    ));
                }
            }
        }
        let pol = &spec.policy;
        if !pol.endpoints.is_empty() && pol.endpoints.len() != spec.endpoints.len() {
            return Err(SnapshotError::PolicyEndpoints(
                pol.endpoints.len(),
                spec.endpoints.len(),
            ));
        }
        let policy = CompiledPolicy::build(pol.clone())?;
        Ok(Snapshot {
            spec,
            by_v4,
            by_v6,
            by_port,
            policy,
        })
    }

    pub fn generation(&self) -> u64 {
        self.spec.generation
    }

    /// The compiled policy workers judge new flows with.
    pub fn policy(&self) -> &CompiledPolicy {
        &self.policy
    }

    pub fn endpoint(&self, idx: u32) -> &Endpoint {
        &self.spec.endpoints[idx as usize]
    }

    pub fn port(&self, id: PortId) -> Option<&Port> {
        self.spec.ports.get(id as usize)
    }

    pub fn endpoint_by_v4(&self, a: Ipv4Addr) -> Option<(u32, &Endpoint)> {
        self.by_v4.get(&a).map(|&i| (i, self.endpoint(i)))
    }

    pub fn endpoint_by_v6(&self, a: Ipv6Addr) -> Option<(u32, &Endpoint)> {
        self.by_v6.get(&a).map(|&i| (i, self.endpoint(i)))
    }

    /// The endpoint behind a port (the pod that sends on it).
    pub fn endpoint_on_port(&self, port: PortId) -> Option<(u32, &Endpoint)> {
        self.by_port
            .get(port as usize)
            .copied()
            .flatten()
            .map(|i| (i, self.endpoint(i)))
    }
}
