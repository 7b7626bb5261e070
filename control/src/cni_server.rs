//! The node agent's side of weir-cni: ADD, DEL, CHECK and GC arrive on the
//! cluster's `daemon.sock` as [`CniCall`]s (one JSON line, like every other
//! request) and are done here, inside the supervisor, so that attaching a
//! pod and publishing its snapshot are one serialized step.
//!
//! Order of an ADD (each step undone if a later one fails):
//! 1. reserve an address slot in the node's IPAM store
//!    (`nodes/<node>/ipam.json`, written atomically and fsynced before any
//!    link exists: a slot is never handed out twice, even when the daemon is
//!    killed halfway; GC or a DEL of the same key returns a leaked one);
//! 2. wire the veth into the runtime's netns ([`weir_topo::Cluster::attach_pod`]);
//! 3. save the cluster and publish every node's snapshot;
//! 4. wait (bounded) until the node's dataplane runs that generation.
//!
//! Until step 4 the pod is fail closed: the node's kernel does not forward
//! (no routes, `ip_forward=0`) and the host veth has no weir port yet.
//!
//! Replies carry a CNI error code (the spec's numbers) the plugin passes on.

use crate::state::StateDir;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::Write;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use weir_topo::attach::{cni_host_ifname, host_link_exists, pod_interface};
use weir_topo::{Cluster, CniAttachment, PodSpec, GATEWAY_V4, GATEWAY_V6};

/// CNI error codes (spec 1.1, "Error").
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENV: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN: u32 = 11;
    pub const NOT_AVAILABLE: u32 = 50;
    /// weir's own (100+): wiring the interface failed.
    pub const WIRING: u32 = 100;
    /// weir's own: CHECK found the attachment not as ADD made it.
    pub const CHECK_FAILED: u32 = 101;
}

/// One CNI operation, as weir-cni sends it to the node's agent.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CniCall {
    /// `ADD`, `DEL`, `CHECK` or `GC` (STATUS is a plain ping).
    pub command: String,
    pub node: String,
    #[serde(default)]
    pub container_id: String,
    #[serde(default)]
    pub ifname: String,
    /// `CNI_NETNS` (empty when the runtime gave none, e.g. DEL after the
    /// netns is gone).
    #[serde(default)]
    pub netns: String,
    /// From `CNI_ARGS`: `K8S_POD_NAMESPACE`, `K8S_POD_NAME`, `K8S_POD_UID`.
    #[serde(default)]
    pub pod_namespace: String,
    #[serde(default)]
    pub pod_name: String,
    #[serde(default)]
    pub pod_uid: String,
    /// GC: the attachments the runtime still uses (`containerID`, `ifname`).
    #[serde(default)]
    pub valid_attachments: Vec<(String, String)>,
}

/// What the supervisor lends the CNI handler.
pub trait CniHost {
    fn state(&self) -> &StateDir;
    fn cluster(&mut self) -> &mut Cluster;
    /// Saves the cluster and publishes snapshots.
    fn commit(&mut self) -> anyhow::Result<()>;
    /// Waits (bounded) until `node`'s dataplane runs the latest generation.
    fn wait_applied(&mut self, node: &str);
    /// The spec of pod `namespace/name` when the host knows it (a pod the
    /// local cluster is creating: its labels and ports, as an agent knows a
    /// pod's from the API server); `None` for a pod only the runtime knows.
    fn pod_template(&self, _namespace: &str, _name: &str) -> Option<PodSpec> {
        None
    }
}

/// The container id the local cluster's own runtime (the supervisor,
/// creating the pods of `weir up` / `weir apply`) gives pod
/// `namespace/name` (namespaces have no `.`: ids cannot collide).
pub fn topo_container_id(namespace: &str, name: &str) -> String {
    format!("weir-topo.{namespace}.{name}")
}

/// FNV-1a, 64 bits (stable ids derived from names).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Whether `pod` was attached by the local cluster's own runtime (so
/// `weir delete` may remove it) rather than by an outside one.
pub fn is_topo_pod(pod: &weir_topo::RealizedPod) -> bool {
    pod.cni
        .as_ref()
        .is_some_and(|c| c.container_id == topo_container_id(&pod.namespace, &pod.name))
}

/// A CNI error: code, message, details.
#[derive(Debug, Clone)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

fn err(code: u32, msg: impl Into<String>) -> CniError {
    CniError {
        code,
        msg: msg.into(),
        details: String::new(),
    }
}

fn err_d(code: u32, msg: impl Into<String>, details: impl std::fmt::Display) -> CniError {
    CniError {
        code,
        msg: msg.into(),
        details: details.to_string(),
    }
}

/// Handles one call; the reply data is `{"result": ...}` or
/// `{"code": n, "msg": ..., "details": ...}`.
pub fn handle(host: &mut dyn CniHost, call: &CniCall) -> Value {
    let r = match call.command.as_str() {
        "ADD" => add(host, call),
        "DEL" => del(host, call).map(|()| json!({})),
        "CHECK" => check(host, call),
        "GC" => gc(host, call),
        other => Err(err(
            code::INVALID_ENV,
            format!("CNI_COMMAND {other:?} is not ADD, DEL, CHECK or GC"),
        )),
    };
    match r {
        Ok(result) => json!({"result": result}),
        Err(e) => json!({"code": e.code, "msg": e.msg, "details": e.details}),
    }
}

// ---- IPAM store ----

/// One address slot held by a CNI attachment.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Reservation {
    pub container_id: String,
    pub ifname: String,
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
}

/// The node's IPAM store: slot (offset in the podCIDRs) → holder.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Ipam {
    pub slots: BTreeMap<u64, Reservation>,
}

pub fn ipam_file(state: &StateDir, node: &str) -> PathBuf {
    state.node_dir(node).join("ipam.json")
}

impl Ipam {
    pub fn load(path: &Path) -> Result<Ipam, CniError> {
        match std::fs::read(path) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| err_d(code::IO_FAILURE, "IPAM store unreadable", e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Ipam::default()),
            Err(e) => Err(err_d(code::IO_FAILURE, "IPAM store unreadable", e)),
        }
    }

    /// Writes a temporary file, fsyncs it, renames it over the store and
    /// fsyncs the directory: after a crash the store is the old or the new
    /// version, never a torn one.
    pub fn save(&self, path: &Path) -> Result<(), CniError> {
        let io = |e: std::io::Error| err_d(code::IO_FAILURE, "IPAM store not written", e);
        let dir = path.parent().expect("store is in a directory");
        std::fs::create_dir_all(dir).map_err(io)?;
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(&serde_json::to_vec_pretty(self).expect("serializes"))
            .map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
        Ok(())
    }

    fn find(&self, cid: &str, ifname: &str) -> Option<u64> {
        self.slots
            .iter()
            .find(|(_, r)| r.container_id == cid && r.ifname == ifname)
            .map(|(s, _)| *s)
    }
}

/// The addresses of `slot` in the node's podCIDRs.
fn slot_addrs(node: &weir_topo::RealizedNode, slot: u64) -> (Option<Ipv4Addr>, Option<Ipv6Addr>) {
    let v4 = node
        .pod_cidr_v4()
        .map(|n| Ipv4Addr::from(u32::from(n.network()).wrapping_add(slot as u32)));
    let v6 = node
        .pod_cidr_v6()
        .map(|n| Ipv6Addr::from(u128::from(n.network()).wrapping_add(u128::from(slot))));
    (v4, v6)
}

fn slot_of(
    node: &weir_topo::RealizedNode,
    v4: Option<Ipv4Addr>,
    v6: Option<Ipv6Addr>,
) -> Option<u64> {
    if let (Some(n), Some(a)) = (node.pod_cidr_v4(), v4) {
        return Some(u64::from(u32::from(a).wrapping_sub(u32::from(n.network()))));
    }
    if let (Some(n), Some(a)) = (node.pod_cidr_v6(), v6) {
        return u64::try_from(u128::from(a).wrapping_sub(u128::from(n.network()))).ok();
    }
    None
}

/// Reserves the lowest free slot (not a pod's, not reserved) for the key.
fn reserve(
    host: &mut dyn CniHost,
    node_name: &str,
    call: &CniCall,
) -> Result<(u64, Option<Ipv4Addr>, Option<Ipv6Addr>), CniError> {
    let path = ipam_file(host.state(), node_name);
    let mut ipam = Ipam::load(&path)?;
    let cluster = host.cluster();
    let node = cluster.node(node_name).expect("checked").clone();
    if let Some(s) = ipam.find(&call.container_id, &call.ifname) {
        let r = &ipam.slots[&s];
        return Ok((s, r.ipv4, r.ipv6));
    }
    let used: std::collections::HashSet<u64> = cluster
        .pods
        .iter()
        .filter(|p| p.node == node.name)
        .filter_map(|p| slot_of(&node, p.ipv4, p.ipv6))
        .chain(ipam.slots.keys().copied())
        .collect();
    let capacity = u64::try_from(node.spec().pod_capacity()).unwrap_or(u64::MAX);
    let slot = (2u64..capacity.saturating_add(2))
        .find(|s| !used.contains(s))
        .ok_or_else(|| {
            err(
                code::TRY_AGAIN,
                format!(
                    "node {node_name}: address pool exhausted ({capacity} pod addresses in use); retry after a pod is deleted"
                ),
            )
        })?;
    let (ipv4, ipv6) = slot_addrs(&node, slot);
    ipam.slots.insert(
        slot,
        Reservation {
            container_id: call.container_id.clone(),
            ifname: call.ifname.clone(),
            ipv4,
            ipv6,
        },
    );
    ipam.save(&path)?;
    Ok((slot, ipv4, ipv6))
}

fn release(state: &StateDir, node: &str, cid: &str, ifname: &str) -> Result<(), CniError> {
    let path = ipam_file(state, node);
    let mut ipam = Ipam::load(&path)?;
    if let Some(s) = ipam.find(cid, ifname) {
        ipam.slots.remove(&s);
        ipam.save(&path)?;
    }
    Ok(())
}

// ---- commands ----

fn check_node(host: &mut dyn CniHost, node: &str) -> Result<(), CniError> {
    let cluster = host.cluster();
    match cluster.node(node) {
        None => Err(err(
            code::INVALID_CONFIG,
            format!(
                "node {node:?} is not in cluster {} (see `weir cni-config --node NODE`)",
                cluster.name
            ),
        )),
        Some(n) if n.dataplane != weir_topo::NodeDataplane::Weir => Err(err(
            code::INVALID_CONFIG,
            format!("node {node:?} has no weir dataplane (kernel node)"),
        )),
        Some(_) => Ok(()),
    }
}

/// A pod name from the container id when the runtime gave no K8S_POD_NAME.
fn pod_name(call: &CniCall) -> String {
    if !call.pod_name.is_empty() {
        return call.pod_name.clone();
    }
    let id: String = call
        .container_id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .take(20)
        .collect();
    format!("cni-{id}")
}

/// The CNI result (spec 1.x form) of an attached pod.
pub fn result_of(pod: &weir_topo::RealizedPod) -> Value {
    let att = pod.cni.as_ref().expect("attached");
    let mac = |m: &[u8; 6]| {
        m.iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    };
    let mut ips = Vec::new();
    let mut routes = Vec::new();
    if let Some(v4) = pod.ipv4 {
        ips.push(json!({"address": format!("{v4}/32"), "gateway": GATEWAY_V4.to_string(), "interface": 1}));
        routes.push(json!({"dst": "0.0.0.0/0", "gw": GATEWAY_V4.to_string()}));
    }
    if let Some(v6) = pod.ipv6 {
        ips.push(json!({"address": format!("{v6}/128"), "gateway": GATEWAY_V6.to_string(), "interface": 1}));
        routes.push(json!({"dst": "::/0", "gw": GATEWAY_V6.to_string()}));
    }
    json!({
        "interfaces": [
            {"name": pod.host_ifname, "mac": mac(&pod.host_mac)},
            {"name": att.ifname, "mac": mac(&pod.pod_mac), "sandbox": att.netns_path.display().to_string()},
        ],
        "ips": ips,
        "routes": routes,
        "dns": {},
    })
}

fn add(host: &mut dyn CniHost, call: &CniCall) -> Result<Value, CniError> {
    check_node(host, &call.node)?;
    if let Some(p) = host
        .cluster()
        .attached_pod(&call.container_id, &call.ifname)
    {
        // The same ADD again (a runtime retrying): the same result.
        return Ok(result_of(p));
    }
    let netns = Path::new(&call.netns);
    if call.netns.is_empty() || !netns.exists() {
        return Err(err(
            code::INVALID_ENV,
            format!("CNI_NETNS {:?}: no such network namespace", call.netns),
        ));
    }
    let namespace = if call.pod_namespace.is_empty() {
        "default".to_string()
    } else {
        call.pod_namespace.clone()
    };
    let name = pod_name(call);
    if let Some(p) = host.cluster().pod(&namespace, &name) {
        let holder = p
            .cni
            .as_ref()
            .map_or("weir itself (a topo pod)".to_string(), |c| {
                format!("container {} ({})", c.container_id, c.ifname)
            });
        return Err(err(
            code::TRY_AGAIN,
            format!("pods/{namespace}/{name} is attached already, by {holder}: DEL that first"),
        ));
    }
    // A crash between wiring and recording may have left this key's node
    // side behind (its name is derived from the key): clear it first.
    host.cluster()
        .detach_pod(&call.node, &call.container_id, &call.ifname)
        .map_err(|e| err_d(code::TRY_AGAIN, "clearing a half-made attachment failed", e))?;
    let template = host.pod_template(&namespace, &name);
    if let Some(t) = &template {
        if t.node != call.node {
            return Err(err(
                code::INVALID_CONFIG,
                format!(
                    "pods/{namespace}/{name} is planned on node {}, not {}",
                    t.node, call.node
                ),
            ));
        }
    }
    let (_, ipv4, ipv6) = reserve(host, &call.node, call)?;
    // A pod the host knows keeps its own labels and ports; one only the
    // runtime knows is labelled with its uid.
    let spec = template.unwrap_or_else(|| {
        let mut labels = BTreeMap::new();
        if !call.pod_uid.is_empty() {
            labels.insert("weir.dev/pod-uid".to_string(), call.pod_uid.clone());
        }
        PodSpec {
            namespace: namespace.clone(),
            name: name.clone(),
            labels,
            node: call.node.clone(),
            ports: Vec::new(),
        }
    });
    let att = CniAttachment {
        container_id: call.container_id.clone(),
        ifname: call.ifname.clone(),
        netns_path: netns.to_path_buf(),
    };
    let attached = host.cluster().attach_pod(&spec, att, ipv4, ipv6).cloned();
    let pod = match attached {
        Ok(p) => p,
        Err(e) => {
            let _ = release(host.state(), &call.node, &call.container_id, &call.ifname);
            let c = match e {
                weir_topo::TopoError::Manifest(_) => code::INVALID_CONFIG,
                weir_topo::TopoError::NetnsMissing { .. } => code::INVALID_ENV,
                _ => code::WIRING,
            };
            return Err(err_d(
                c,
                format!("pods/{namespace}/{name}: attach failed"),
                e,
            ));
        }
    };
    if let Err(e) = host.commit() {
        let _ = host
            .cluster()
            .detach_pod(&call.node, &call.container_id, &call.ifname);
        let _ = release(host.state(), &call.node, &call.container_id, &call.ifname);
        let _ = host.commit();
        return Err(err_d(
            code::TRY_AGAIN,
            format!("{}: publish failed", pod.object()),
            format!("{e:#}"),
        ));
    }
    host.wait_applied(&call.node);
    Ok(result_of(&pod))
}

fn del(host: &mut dyn CniHost, call: &CniCall) -> Result<(), CniError> {
    if host.cluster().node(&call.node).is_none() {
        // Nothing of ours can exist on a node we do not have.
        return Ok(());
    }
    let removed = host
        .cluster()
        .detach_pod(&call.node, &call.container_id, &call.ifname)
        .map_err(|e| err_d(code::TRY_AGAIN, "detach failed", e))?;
    if removed.is_some() {
        host.commit()
            .map_err(|e| err_d(code::TRY_AGAIN, "publish failed", format!("{e:#}")))?;
        // The workers let go of the port before DEL answers.
        host.wait_applied(&call.node);
    }
    // Released last: the address stays held until no snapshot names it.
    release(host.state(), &call.node, &call.container_id, &call.ifname)
}

fn check(host: &mut dyn CniHost, call: &CniCall) -> Result<Value, CniError> {
    check_node(host, &call.node)?;
    let Some(pod) = host
        .cluster()
        .attached_pod(&call.container_id, &call.ifname)
        .cloned()
    else {
        return Err(err(
            code::UNKNOWN_CONTAINER,
            format!(
                "container {} ({}) is not attached on node {}",
                call.container_id, call.ifname, call.node
            ),
        ));
    };
    let node_ns = host
        .cluster()
        .node(&call.node)
        .expect("checked")
        .netns
        .clone();
    let host_if = cni_host_ifname(&call.container_id, &call.ifname);
    match host_link_exists(&node_ns, &host_if) {
        Ok(true) => {}
        Ok(false) => {
            return Err(err(
                code::CHECK_FAILED,
                format!("node side {host_if} is gone"),
            ))
        }
        Err(e) => return Err(err_d(code::CHECK_FAILED, "node side unreadable", e)),
    }
    let path = pod.cni.as_ref().expect("attached").netns_path.clone();
    let iface = pod_interface(&path, &call.ifname)
        .map_err(|e| err_d(code::CHECK_FAILED, format!("netns {}", path.display()), e))?
        .ok_or_else(|| {
            err(
                code::CHECK_FAILED,
                format!("{} has no interface {}", path.display(), call.ifname),
            )
        })?;
    if iface.mac != pod.pod_mac {
        return Err(err(
            code::CHECK_FAILED,
            format!("{}: MAC changed", call.ifname),
        ));
    }
    for want in pod
        .ipv4
        .map(std::net::IpAddr::V4)
        .into_iter()
        .chain(pod.ipv6.map(std::net::IpAddr::V6))
    {
        if !iface.addrs.iter().any(|(a, _)| *a == want) {
            return Err(err(
                code::CHECK_FAILED,
                format!("{}: address {want} is missing", call.ifname),
            ));
        }
    }
    Ok(result_of(&pod))
}

fn gc(host: &mut dyn CniHost, call: &CniCall) -> Result<Value, CniError> {
    check_node(host, &call.node)?;
    let valid = |cid: &str, ifname: &str| {
        call.valid_attachments
            .iter()
            .any(|(c, i)| c == cid && i == ifname)
    };
    // The local cluster's own pods belong to its supervisor (their
    // runtime), not to the runtime asking: `weir delete` removes them.
    let stale: Vec<(String, String)> = host
        .cluster()
        .pods
        .iter()
        .filter(|p| p.node == call.node && !is_topo_pod(p))
        .filter_map(|p| p.cni.as_ref())
        .filter(|c| !valid(&c.container_id, &c.ifname))
        .map(|c| (c.container_id.clone(), c.ifname.clone()))
        .collect();
    let ipam = Ipam::load(&ipam_file(host.state(), &call.node))?;
    let recorded = |host: &mut dyn CniHost, r: &Reservation| {
        host.cluster()
            .attached_pod(&r.container_id, &r.ifname)
            .is_some_and(is_topo_pod)
    };
    let leaked: Vec<(String, String)> = ipam
        .slots
        .values()
        .filter(|r| !valid(&r.container_id, &r.ifname) && !recorded(host, r))
        .map(|r| (r.container_id.clone(), r.ifname.clone()))
        .filter(|k| !stale.contains(k))
        .collect();
    let mut removed = Vec::new();
    for (cid, ifname) in stale.iter().chain(&leaked) {
        let c = CniCall {
            command: "DEL".into(),
            node: call.node.clone(),
            container_id: cid.clone(),
            ifname: ifname.clone(),
            ..call.clone()
        };
        del(host, &c)?;
        removed.push(json!({"containerID": cid, "ifname": ifname}));
    }
    Ok(json!({"removed": removed}))
}
