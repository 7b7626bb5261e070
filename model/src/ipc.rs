//! The messages between the CLI, the supervisor daemon and the node
//! dataplanes (line-delimited JSON over Unix sockets, one request line,
//! one reply line): the reply envelope and the typed payload of every
//! reply. The sockets themselves are control's (`weir_control::ipc`).
//!
//! Every payload serializes to the JSON the wire has always carried, so
//! `-o json` outputs and older readers see the same fields.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::status::DataplaneStatus;

/// One reply line: `ok`, else `error`; `data` is the request's payload.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default)]
    pub data: serde_json::Value,
}

impl Reply {
    pub fn ok(data: serde_json::Value) -> Self {
        Reply {
            ok: true,
            error: None,
            data,
        }
    }

    /// A reply carrying a typed payload.
    pub fn with<T: Serialize>(data: &T) -> Self {
        match serde_json::to_value(data) {
            Ok(v) => Reply::ok(v),
            Err(e) => Reply::err(format!("reply does not serialize: {e}")),
        }
    }

    pub fn err(msg: impl Into<String>) -> Self {
        Reply {
            ok: false,
            error: Some(msg.into()),
            data: serde_json::Value::Null,
        }
    }
}

/// An empty payload (`{}`): shutdown, stop and start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}

/// A node dataplane's answer to `ping`: the policy generation it runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodePing {
    pub generation: u64,
}

/// A node dataplane's answer to `status`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeStatus {
    /// The generation the node last applied.
    pub generation: u64,
    pub rx_pps: f64,
    pub tx_pps: f64,
    /// `None` while the dataplane is not up yet.
    pub dataplane: Option<DataplaneStatus>,
    /// When the node's dataplane last applied a snapshot (Unix ns; 0:
    /// unknown).
    #[serde(default)]
    pub applied_unix_ns: u64,
    /// How long after the agent wrote that snapshot it was applied (ns:
    /// publish → applied on this node).
    #[serde(default)]
    pub apply_latency_ns: u64,
}

/// One flow-log record as `weir flows` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowRecord {
    /// Position in the node's flow log (from 1).
    #[serde(default)]
    pub seq: u64,
    pub node: String,
    pub time_unix_ns: u64,
    /// `new`, `drop`, `revoked` or `related`.
    pub kind: String,
    /// `allowed`, `denied` or `audit`.
    pub verdict: String,
    #[serde(default)]
    pub audit: bool,
    /// The drop reason's slug, for drops.
    #[serde(default)]
    pub reason: Option<String>,
    pub protocol: String,
    /// `namespace/pod`, or the address when it is no pod.
    pub src: String,
    pub src_addr: IpAddr,
    pub sport: u16,
    pub dst: String,
    pub dst_addr: IpAddr,
    pub dport: u16,
    pub egress_rule: String,
    pub ingress_rule: String,
    #[serde(default)]
    pub generation: u64,
    #[serde(default)]
    pub pickup: bool,
    /// The HTTP request an L7 deny refused, or (kind `l7`) an allowed
    /// request or the status of the response to it.
    #[serde(default)]
    pub l7: Option<L7Record>,
    /// A DNS query (refused, or allowed: kind `l7`) or the answer to one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<DnsRecord>,
}

/// The HTTP request an L7 deny refused (`reason`), or an allowed one
/// (`reason` empty) with its host and, on the response's record, `status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct L7Record {
    pub reason: String,
    pub method: String,
    pub path: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub host: String,
    /// HTTP status of the response (on the response's record).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
}

/// A DNS query's name, and on the answer's record its rcode.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DnsRecord {
    pub name: String,
    /// The answer's RCODE (0 NOERROR, 3 NXDOMAIN, 5 REFUSED, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rcode: Option<u8>,
}

/// One live conntrack entry of a node (`conntrack` request), in the
/// flow's original direction.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ConntrackRecord {
    pub node: String,
    pub protocol: String,
    /// `namespace/pod`, or the address when it is no pod.
    pub src: String,
    pub src_addr: Option<IpAddr>,
    pub sport: u16,
    pub dst: String,
    pub dst_addr: Option<IpAddr>,
    pub dport: u16,
    /// `established`, `syn-sent`, `replied`, ... (the table's state).
    pub state: String,
    pub egress_rule: String,
    pub ingress_rule: String,
    /// Policy generation (low 32 bits) the flow was admitted under.
    pub generation: u32,
    pub expires_in_ms: u64,
    pub pickup: bool,
}

/// A node dataplane's answer to `conntrack`: one page of live entries, and
/// where the next page starts (`None`: this was the last).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ConntrackReply {
    pub entries: Vec<ConntrackRecord>,
    pub next: Option<u64>,
}

/// A node dataplane's answer to `flows`: records after `since`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct FlowsReply {
    pub records: Vec<FlowRecord>,
    /// The node's last sequence number (the next `since`).
    pub last: u64,
}

/// The daemon's answer to `ping`: whether every weir node runs the
/// current generation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Readiness {
    pub ready: bool,
    pub generation: u64,
    pub nodes: BTreeMap<String, NodeReadiness>,
    /// One line per dataplane that exited.
    pub failed: Vec<String>,
}

/// One node in [`Readiness`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeReadiness {
    pub running: bool,
    /// How the dataplane exited, if it did.
    pub exited: Option<String>,
    /// The generation it runs, if it answered.
    pub generation: Option<u64>,
    pub ready: bool,
}

/// The daemon's answer to `status`: every node's.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ClusterStatus {
    pub cluster: String,
    pub generation: u64,
    /// A Kubernetes node agent: whether every watched kind has listed
    /// (nothing is published before); absent for `weir up`'s daemon.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub synced: Option<bool>,
    pub nodes: Vec<NodeStatusEntry>,
    /// A Kubernetes node agent: the Services in force (from the API
    /// server; a Service weir refused keeps its last good state).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<ServiceStatusEntry>,
    /// A Kubernetes node agent: its uplink to the world as learnt from the
    /// node's kernel (`ul0 via 192.168.79.254 (0a:..), SNAT to ...`), or
    /// why it has none (docs/egress.md).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uplink: Option<String>,
    /// The CPUs pods' receive path is steered to (RPS on their `eth0`,
    /// `--pod-rx-cpus`): `off` or a CPU list; absent from older daemons.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_rx_cpus: Option<String>,
    /// With pod RX steering on: frames the kernel dropped because one of
    /// those CPUs' input backlogs was full, since boot, node-wide
    /// (`/proc/net/softnet_stat`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_rx_backlog_dropped: Option<u64>,
}

/// One Service in force in [`ClusterStatus`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ServiceStatusEntry {
    /// `namespace/name`.
    pub service: String,
    #[serde(rename = "clusterIPs")]
    pub cluster_ips: Vec<IpAddr>,
    pub endpoints: usize,
    /// Endpoints with `conditions.ready`.
    pub ready: usize,
}

/// One node in [`ClusterStatus`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeStatusEntry {
    pub node: String,
    pub running: bool,
    /// A kernel-dataplane node (no weir on it).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub kernel: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<NodeStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Host policy on the node's own outbound traffic: the counters of
    /// its nftables table `inet weir_host` (absent: no table).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_egress: Option<HostEgressStatus>,
}

/// The node's own outbound traffic under host policy (its nftables table
/// `inet weir_host`, docs/policy.md): packets of new flows by verdict.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct HostEgressStatus {
    pub denied_packets: u64,
    pub allowed_packets: u64,
    /// Per counter: the deciding rule as `weir flows` names it.
    pub rules: Vec<HostEgressRule>,
}

/// One counter of [`HostEgressStatus`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct HostEgressRule {
    pub rule: String,
    /// `accept` or `drop`.
    pub verdict: String,
    pub packets: u64,
}

/// What happened to one object (`apply`, `sync-policies`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Change {
    /// `pods/<ns>/<name>`, `namespaces/<name>`, `<resource>/<ns>/<name>`.
    pub object: String,
    /// `created`, `configured`, `labels updated`, `unchanged`, `deleted`.
    pub action: String,
}

impl Change {
    pub fn new(object: impl Into<String>, action: impl Into<String>) -> Change {
        Change {
            object: object.into(),
            action: action.into(),
        }
    }
}

/// The daemon's answer to `apply` (with `ignored`) and `sync-policies`
/// (without).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ChangeReply {
    pub changed: Vec<Change>,
    pub generation: u64,
    /// Fields dropped under `--field-validation=warn|ignore`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ignored: Option<Vec<String>>,
    /// Accepted but worth a line (a Service's named targetPort no selected
    /// pod declares).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// The daemon's answer to `delete`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DeleteReply {
    /// The objects deleted.
    pub deleted: Vec<String>,
    pub generation: u64,
    pub ignored: Vec<String>,
}
