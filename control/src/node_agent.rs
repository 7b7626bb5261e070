//! `weir agent --kubeconfig PATH --node NAME`: the agent a node of a
//! Kubernetes cluster runs. It watches the API server (reflectors for
//! Nodes, Namespaces, Pods, Services, EndpointSlices and the policy kinds),
//! serves weir-cni on the node (`<state>/kube/daemon.sock`), runs the node's
//! dataplane, and compiles the API server's state into the node's snapshot
//! exactly as `weir up` compiles manifest files
//! ([`crate::kube_inputs::cluster_inputs`] → topo's [`Cluster`] →
//! [`crate::agent::publish`]).
//!
//! Independent lifecycles: the dataplane is a process of its own (its own
//! process group), loading snapshots from files; stopping the agent or
//! losing the API server stops changes, never forwarding or enforcement. A
//! restarted agent finds the running dataplane and the CNI attachments
//! (`attachments.json`) and publishes nothing until every store has
//! listed again (`InitDone`), so a resync never publishes a partial view.
//!
//! Fail closed: a pod a runtime attached is in the snapshot (has a port and
//! an endpoint) only once its Pod object is known, so it gets no traffic
//! until its identity is.

use crate::cni_server::{self, CniCall, CniHost};
use crate::ipc::{self, Reply, Request};
use crate::kube_agent::{self, KindState, KINDS, MAX_DELAY, QUIET};
use crate::kube_inputs::{self, ClusterInputs, Problem};
use crate::manifests;
use crate::state::StateDir;
use anyhow::Context;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use weir_model::service::ServiceInfo;
use weir_policy::Policy;
use weir_topo::{Cluster, RealizedNode, RealizedPod, UnderlayInfo};

/// The local cluster name of a node agent's state (`<state-dir>/kube/`).
pub const CLUSTER: &str = "kube";

pub struct Options {
    /// `None`: the pod's ServiceAccount (in-cluster configuration).
    pub kubeconfig: Option<PathBuf>,
    pub node: String,
    /// The node's network namespace (`/run/netns/NAME` or `NAME`); `None`:
    /// the agent's own, named `weir-node` for the dataplane.
    pub netns: Option<String>,
    /// Parent of the state (`$WEIR_STATE_DIR`, default `/run/weir`).
    pub state_dir: Option<PathBuf>,
    /// Start the node's dataplane (else another container runs `weir
    /// dataplane` on the same state directory).
    pub spawn_dataplane: bool,
    /// Extra arguments of `weir dataplane` (cores, poll mode).
    pub dataplane_args: Vec<String>,
    /// Also write the conflist here (the runtime's `/etc/cni/net.d`).
    pub cni_conf_dir: Option<PathBuf>,
    /// `--metrics-addr`: where /metrics and /flows are served (`off`: nowhere).
    pub metrics_addr: String,
    /// `--encap`: the overlay's encapsulation (VXLAN-GBP or Geneve with
    /// weir's identity option); the same on every node agent.
    pub encap: weir_topo::Encap,
    /// `--failsafe-inbound/--failsafe-outbound`: the node's ports no host
    /// policy can close (docs/policy.md, "Host endpoint policy").
    pub host_failsafe: weir_model::policy::FailsafePorts,
    /// `--uplink`: the node's way to the world (docs/egress.md).
    pub uplink: UplinkChoice,
    /// `--non-masquerade`: destinations pods reach with their own address.
    pub non_masquerade: Vec<ipnet::IpNet>,
    /// `--service-cidr`: the cluster's Service ranges (empty: weir's own).
    pub service_cidrs: Vec<ipnet::IpNet>,
    /// `--encrypt wireguard`: the node's key, its Node annotation, the
    /// peers from the others' (control/src/node_wireguard.rs).
    pub wireguard: bool,
    /// `--pod-rx-cpus`, resolved: the RPS CPUs of pods attached from now
    /// on (empty: RPS off; control/src/pod_rx.rs).
    pub pod_rx_cpus: Vec<usize>,
}

/// `--uplink auto|none|IFACE`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum UplinkChoice {
    /// The interface of the node's IPv4 default route (none: no uplink).
    #[default]
    Auto,
    /// No uplink: pod → world and node ports stay `no-route`.
    None,
    /// The IPv4 default route through this interface (an error until one exists).
    Iface(String),
}

impl std::str::FromStr for UplinkChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(UplinkChoice::Auto),
            "none" => Ok(UplinkChoice::None),
            "" => Err("--uplink: empty (auto, none or an interface name)".into()),
            i if i.len() > 15 || i.contains(['/', ' ']) => {
                Err(format!("--uplink {i:?}: not an interface name"))
            }
            i => Ok(UplinkChoice::Iface(i.to_string())),
        }
    }
}

/// Checks `--non-masquerade`: IPv4 and IPv6 CIDRs are both accepted (an
/// IPv6 one applies once the node has an IPv6 uplink); a host route of
/// the unspecified address (`0.0.0.0/0` is fine, `::/128` is not a
/// destination) is refused.
pub fn check_non_masquerade(cidrs: &[ipnet::IpNet]) -> anyhow::Result<()> {
    if let Some(c) = cidrs
        .iter()
        .find(|c| c.addr().is_unspecified() && c.prefix_len() == c.max_prefix_len())
    {
        anyhow::bail!("--non-masquerade {c}: the unspecified address is no destination");
    }
    Ok(())
}

/// The node's uplink as the kernel of its netns has it: the interface and
/// gateway of the IPv4 default route, and the gateway's MAC (the
/// destination MAC of every frame weir sends to the world).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uplink {
    pub ifname: String,
    pub gateway: Ipv4Addr,
    pub mac: [u8; 6],
    /// The IPv6 default route through the same interface, or why there is
    /// none (pod → IPv6 world and IPv6 node ports are then `no-route`).
    pub ipv6: Result<Uplink6, String>,
}

/// The IPv6 half of the uplink: the IPv6 default route's gateway (often
/// link-local) and its MAC from the neighbour table, and the node's global
/// IPv6 address on the uplink interface (the SNAT66 address).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uplink6 {
    pub gateway: Ipv6Addr,
    pub mac: [u8; 6],
    pub address: Ipv6Addr,
}

/// The reflector stores: what the API server holds, as last listed and
/// watched.
#[derive(Clone)]
pub struct Stores {
    pub nodes: Store<Node>,
    pub namespaces: Store<Namespace>,
    pub pods: Store<Pod>,
    pub services: Store<Service>,
    pub endpoint_slices: Store<EndpointSlice>,
}

impl Stores {
    /// The compiler's inputs from what the stores hold now.
    pub fn inputs(&self) -> ClusterInputs {
        let (n, ns, p) = (
            self.nodes.state(),
            self.namespaces.state(),
            self.pods.state(),
        );
        kube_inputs::cluster_inputs(
            n.iter().map(|o| o.as_ref()),
            ns.iter().map(|o| o.as_ref()),
            p.iter().map(|o| o.as_ref()),
        )
    }

    /// The Services and EndpointSlices the stores hold now.
    pub fn services(&self) -> (Vec<Service>, Vec<EndpointSlice>) {
        (
            self.services
                .state()
                .iter()
                .map(|o| (**o).clone())
                .collect(),
            self.endpoint_slices
                .state()
                .iter()
                .map(|o| (**o).clone())
                .collect(),
        )
    }
}

/// The store names, in [`Msg::Store`] order.
const STORES: [&str; 5] = ["nodes", "namespaces", "pods", "services", "endpointslices"];
/// Stores the snapshot is compiled from: all of them (a Service published
/// before its list is complete would drop its traffic for a moment).
const COMPILED_STORES: usize = 5;

enum Msg {
    Policy(kube_agent::Msg),
    /// A store changed (`true`: its list is complete, `InitDone`).
    Store(usize, bool),
    StoreError(usize, String),
    /// The WireGuard key file changed (`weir wireguard rotate`).
    WireguardKey,
}

/// What the agent holds; the CNI thread and the watch loop share it.
struct NodeState {
    state: StateDir,
    node: String,
    /// This node and the pods a runtime attached (`attachments.json`).
    attached: Cluster,
    inputs: ClusterInputs,
    /// The Services in force (the API server's, a bad one's last good state).
    services: Vec<ServiceInfo>,
    /// Every compiled store and policy kind has listed once.
    synced: bool,
    /// The policies in force (the last set that compiled).
    policies: Vec<Policy>,
    policy_text: String,
    generation: u64,
    /// What the last publish compiled (cluster, policies), to skip a no-op.
    last: Option<(Cluster, String)>,
    /// The next hop's MAC toward each other node's underlay address (the
    /// outer destination of tunnel frames), as the node netns resolved it.
    peer_macs: BTreeMap<Ipv4Addr, [u8; 6]>,
    /// What the metrics endpoint reads (generation, publish latency).
    metrics: Option<Arc<crate::metrics::Shared>>,
    /// The uplink in use: the default route's, when it leaves through the
    /// underlay interface (the SNAT address is the underlay address).
    uplink: Option<Uplink>,
    /// Why there is none (logged once per distinct reason).
    uplink_note: String,
}

impl NodeState {
    fn attachments_file(&self) -> PathBuf {
        self.state.root.join("attachments.json")
    }

    /// The cluster the compiler sees: every Node, Namespace and Pod of the
    /// API server, this node's pods being the attached ones whose Pod
    /// object is known (their labels and ports from it).
    fn compiled(&self) -> Cluster {
        let mut c = Cluster {
            nodes: Vec::new(),
            namespaces: self.inputs.namespaces.clone(),
            pods: Vec::new(),
            services: self.services.clone(),
            // The uplink gateway takes the world host's place
            // (`agent::uplink`): its address and MAC are what count.
            world: self.uplink.as_ref().map(|u| weir_topo::world::WorldInfo {
                netns: String::new(),
                ipv4: u.gateway,
                prefix_len: 32,
                ipv6: u.ipv6.as_ref().ok().map(|v| v.gateway),
                mac: u.mac,
                mac_v6: u.ipv6.as_ref().ok().map(|v| v.mac),
                addrs: Vec::new(),
                port: 0,
            }),
            ..self.attached.clone()
        };
        let tunnel = self.attached.nodes[0].underlay.is_some();
        for n in &self.inputs.nodes {
            if n.name == self.node {
                continue;
            }
            let (ipv4, ipv6) = first_hosts(&n.pod_cidrs);
            // A peer of the overlay once this node has its underlay and the
            // next hop toward the peer's is resolved; until then its pods
            // are identities without a route (no-route: fail closed).
            let underlay = n
                .internal_ip
                .filter(|_| tunnel)
                .and_then(|ip| Some((ip, *self.peer_macs.get(&ip)?)))
                .map(|(ip, mac)| UnderlayInfo {
                    ifname: String::new(),
                    peer_ifname: String::new(),
                    mac,
                    ipv4: ip,
                    prefix_len: 32,
                    ipv6: None,
                });
            c.nodes.push(RealizedNode {
                name: n.name.clone(),
                netns: String::new(),
                labels: n.labels.clone(),
                pod_cidrs: n.pod_cidrs.clone(),
                ipv4,
                ipv6,
                dataplane: n.dataplane,
                vtep_mac: underlay
                    .as_ref()
                    .map_or([0; 6], |u| weir_topo::overlay::vtep_mac(u.ipv4)),
                underlay,
                // A peer: its host port is its own agent's business.
                host_port: false,
            });
        }
        c.nodes.extend(self.attached.nodes.iter().cloned());
        // The node's global IPv6 address on the uplink: its SNAT66 address
        // (`agent::uplink` pairs it with the world's IPv6 gateway).
        let v6 = self.uplink.as_ref().and_then(|u| u.ipv6.as_ref().ok());
        if let Some(ul) = c
            .nodes
            .iter_mut()
            .find(|n| n.name == self.node)
            .and_then(|n| n.underlay.as_mut())
        {
            ul.ipv6 = v6.map(|v| v.address);
        }
        c.nodes.sort_by(|a, b| a.name.cmp(&b.name));
        for p in &self.attached.pods {
            let Some(api) = self.inputs.pod(&p.namespace, &p.name) else {
                continue;
            };
            let uid = p.labels.get("weir.dev/pod-uid");
            if uid.is_some_and(|u| !api.uid.is_empty() && *u != api.uid) {
                continue; // an older pod of the same name
            }
            let mut p = p.clone();
            p.labels = api.spec.labels.clone();
            p.ports = api.spec.ports.clone();
            c.pods.push(p);
        }
        // Every other Pod of the API server, with or without addresses: the
        // identities are numbered over the (namespace, labels) of all pods,
        // so every node agent that sees the same API objects numbers them
        // alike, and the identity one node puts on the wire means the same
        // pod group to the node that judges it. This node's pods that are
        // not attached here are identities only (no node, no address).
        for p in &self.inputs.pods {
            let local = p.spec.node == self.node;
            if local
                && c.pods
                    .iter()
                    .any(|q| q.namespace == p.spec.namespace && q.name == p.spec.name)
            {
                continue;
            }
            c.pods.push(RealizedPod {
                namespace: p.spec.namespace.clone(),
                name: p.spec.name.clone(),
                node: if local {
                    String::new()
                } else {
                    p.spec.node.clone()
                },
                labels: p.spec.labels.clone(),
                ports: p.spec.ports.clone(),
                netns: String::new(),
                host_ifname: String::new(),
                host_mac: [0; 6],
                pod_mac: [0; 6],
                ipv4: if local { None } else { p.ipv4 },
                ipv6: if local { None } else { p.ipv6 },
                mtu: 0,
                cni: None,
            });
        }
        c
    }

    /// Takes this node's Node object into the attachments' node.
    fn update_own_node(&mut self) {
        let Some(n) = self.inputs.node(&self.node).cloned() else {
            return;
        };
        let (ipv4, ipv6) = first_hosts(&n.pod_cidrs);
        let mtu = crate::agent::host_port_mtu(&self.attached);
        let queues = self.attached.queues;
        let ranges = self.attached.service_ranges();
        let me = &mut self.attached.nodes[0];
        if me.pod_cidrs != n.pod_cidrs || me.labels != n.labels {
            let cidrs_changed = me.pod_cidrs != n.pod_cidrs;
            me.pod_cidrs = n.pod_cidrs.clone();
            me.labels = n.labels.clone();
            me.ipv4 = ipv4;
            me.ipv6 = ipv6;
            me.dataplane = n.dataplane;
            if let Err(e) = prepare_node_netns(me) {
                log::warn!("nodes/{}: {e:#}", self.node);
            }
            // The host port (docs/datapath.md): the node reaches its pods,
            // and they reach it, through the dataplane; made again when
            // the pod CIDRs change (its routes are theirs).
            if cidrs_changed || !me.host_port {
                me.host_port = match make_host_port(me, mtu, queues, &ranges) {
                    Ok(()) => true,
                    Err(e) => {
                        log::warn!("nodes/{}: no host port: {e:#}", self.node);
                        false
                    }
                };
            }
        }
        // The underlay: the interface of the node netns holding the Node's
        // underlay address (annotation weir.dev/underlay-ip, else its
        // InternalIP). A Node that names none (yet, or for a moment: a
        // kubelet registering it again writes its addresses after the
        // object) keeps the one in use.
        if n.internal_ip.is_some() && me.underlay.as_ref().map(|u| u.ipv4) != n.internal_ip {
            me.underlay = None;
            me.vtep_mac = [0; 6];
            if let Some(ip) = n.internal_ip {
                match find_underlay(&me.netns, ip) {
                    Ok((ul, mtu)) => {
                        log::info!(
                            "nodes/{}: underlay {} ({ip}/{}, MTU {mtu})",
                            self.node,
                            ul.ifname,
                            ul.prefix_len
                        );
                        me.vtep_mac = weir_topo::overlay::vtep_mac(ip);
                        me.underlay = Some(ul);
                        self.attached.underlay_mtu = mtu;
                    }
                    Err(e) => log::warn!("nodes/{}: no overlay: {e:#}", self.node),
                }
            }
        }
    }

    /// Takes the kernel's uplink (or why there is none) into the state: it
    /// is used only when it leaves through the underlay interface, whose
    /// address is the SNAT address. Logs each distinct outcome once.
    fn set_uplink(&mut self, read: Result<Option<Uplink>, String>) {
        let underlay = self.attached.nodes[0].underlay.as_ref();
        let (uplink, note) = match (read, underlay) {
            (Err(e), _) => (None, format!("no uplink: {e}")),
            (Ok(None), _) => (None, "no uplink (no IPv4 default route, or --uplink none): pod → world and node ports are no-route".to_string()),
            (Ok(Some(_)), None) => (None, "no uplink: the Node names no underlay address (weir.dev/underlay-ip or an InternalIP), which is the SNAT address".to_string()),
            (Ok(Some(u)), Some(ul)) if u.ifname != ul.ifname => (None, format!(
                "no uplink: the default route leaves through {}, the underlay ({}) is on {}: weir's uplink must be the underlay interface",
                u.ifname, ul.ipv4, ul.ifname
            )),
            (Ok(Some(u)), Some(ul)) => {
                let v6 = match &u.ipv6 {
                    Ok(v) => format!(
                        "IPv6 via {} ({}), SNAT66 to {}",
                        v.gateway,
                        fmt_mac(&v.mac),
                        v.address
                    ),
                    Err(e) => format!("no IPv6 uplink: {e}"),
                };
                let note = format!(
                    "uplink {} via {} ({}), SNAT to {}; {v6}",
                    u.ifname,
                    u.gateway,
                    fmt_mac(&u.mac),
                    ul.ipv4
                );
                (Some(u), note)
            }
        };
        if note != self.uplink_note {
            if uplink.is_some() {
                log::info!("nodes/{}: {note}", self.node);
            } else {
                log::warn!("nodes/{}: {note}", self.node);
            }
            self.uplink_note = note;
        }
        self.uplink = uplink;
    }

    /// Compiles and publishes the node's snapshot when something changed.
    /// A policy set that does not compile leaves the previous one in force
    /// (the cluster's changes still go through); `Err` only when nothing
    /// could be published.
    fn publish(&mut self, new_policies: Option<(&str, Vec<Policy>)>) -> anyhow::Result<()> {
        if !self.synced {
            return Ok(());
        }
        let cluster = self.compiled();
        if let Some((text, policies)) = new_policies {
            match crate::agent::check_for(
                &crate::source::Parsed {
                    cluster: &cluster,
                    policies: &policies,
                },
                Some(&self.node),
            ) {
                Ok(()) => {
                    // Kept for a restarted agent: a set it refuses must leave
                    // these in force, not none.
                    crate::state::write_atomic(&policies_file(&self.state), text.as_bytes())?;
                    self.policies = policies;
                    self.policy_text = text.to_string();
                }
                Err(e) => {
                    self.policy_text = text.to_string();
                    return Err(e);
                }
            }
        }
        let key = (cluster, self.policy_text.clone());
        if self.last.as_ref() == Some(&key) {
            return Ok(());
        }
        let t = std::time::Instant::now();
        self.generation = crate::agent::publish_for(
            &self.state,
            &crate::source::Parsed {
                cluster: &key.0,
                policies: &self.policies,
            },
            Some(&self.node),
        )?;
        if let Some(m) = &self.metrics {
            m.publish_seconds.observe(t.elapsed().as_secs_f64());
            m.generation
                .store(self.generation, std::sync::atomic::Ordering::Relaxed);
        }
        key.0.save(&self.state.cluster_file())?;
        if self.last.as_ref().map(|l| &l.0.services) != Some(&key.0.services) {
            let text = serde_json::to_vec_pretty(&key.0.services)?;
            crate::state::write_atomic(&services_file(&self.state), &text)?;
        }
        log::info!(
            "published generation {} ({} pods on this node, {} policies)",
            self.generation,
            key.0.pods.iter().filter(|p| p.node == self.node).count(),
            self.policies.len()
        );
        self.last = Some(key);
        Ok(())
    }

    fn readiness(&self) -> serde_json::Value {
        let generation = ipc::call(
            &self.state.dataplane_sock(&self.node),
            &Request::Ping,
            Duration::from_secs(1),
        )
        .ok()
        .and_then(|v| v["generation"].as_u64());
        let running = generation.is_some();
        let ready = running && generation == Some(self.generation) && self.synced;
        let mut nodes = serde_json::Map::new();
        nodes.insert(
            self.node.clone(),
            json!({"running": running, "generation": generation, "ready": ready}),
        );
        json!({"ready": ready, "synced": self.synced, "generation": self.generation,
               "nodes": nodes, "failed": []})
    }

    fn status(&self) -> serde_json::Value {
        let st = ipc::call(
            &self.state.dataplane_sock(&self.node),
            &Request::Status,
            Duration::from_secs(2),
        );
        let mut node = match st {
            Ok(v) => json!({"node": self.node, "running": true, "status": v}),
            Err(e) => json!({"node": self.node, "running": false, "error": e.to_string()}),
        };
        // The node's own outbound traffic under host policy (its nftables
        // table, docs/policy.md).
        let netns = self.attached.nodes.first().map_or("", |n| n.netns.as_str());
        if let Some(h) = crate::host_egress::status(&self.state, &self.node, netns) {
            node["host_egress"] = json!(h);
        }
        let services: Vec<_> = self
            .services
            .iter()
            .map(|s| weir_model::ipc::ServiceStatusEntry {
                service: s.key(),
                cluster_ips: s.cluster_ips.clone(),
                endpoints: s.endpoints.len(),
                ready: s.endpoints.iter().filter(|e| e.ready).count(),
            })
            .collect();
        json!({"cluster": CLUSTER, "generation": self.generation, "synced": self.synced,
        "nodes": [node], "services": services, "uplink": self.uplink_note,
        "pod_rx_cpus": crate::pod_rx::describe(&self.attached.pod_rx_cpus),
        "pod_rx_backlog_dropped": match self.attached.pod_rx_cpus.as_slice() {
            [] => None,
            cpus => crate::pod_rx::backlog_dropped(cpus),
        }})
    }
}

impl CniHost for NodeState {
    fn state(&self) -> &StateDir {
        &self.state
    }
    fn cluster(&mut self) -> &mut Cluster {
        &mut self.attached
    }
    fn commit(&mut self) -> anyhow::Result<()> {
        self.attached.save(&self.attachments_file())?;
        self.publish(None)
    }
    fn wait_applied(&mut self, node: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let g = ipc::call(
                &self.state.dataplane_sock(node),
                &Request::Ping,
                Duration::from_secs(1),
            )
            .ok()
            .and_then(|v| v["generation"].as_u64());
            match g {
                Some(g) if g >= self.generation => return,
                None => return, // no dataplane: nothing to wait for
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

/// The policy set in force (the API server's objects as the last accepted
/// publish saw them), for a restarted agent.
fn policies_file(state: &StateDir) -> PathBuf {
    state.root.join("policies-in-force.json")
}

/// The Services in force (`services-in-force.json`, beside the policies):
/// what the last publish compiled, a bad Service's last good state
/// included; a restarted agent starts from it.
fn services_file(state: &StateDir) -> PathBuf {
    state.root.join("services-in-force.json")
}

/// The Services a previous run had in force (none on a first start).
fn services_in_force(state: &StateDir) -> Vec<ServiceInfo> {
    let path = services_file(state);
    let Ok(text) = std::fs::read(&path) else {
        return Vec::new();
    };
    serde_json::from_slice(&text).unwrap_or_else(|e| {
        log::warn!("{}: {e}; starting without", path.display());
        Vec::new()
    })
}

/// A Warning Event on the object of a Service Problem (reason
/// `WeirInvalidService` or `WeirInvalidEndpointSlice`). Failures to report
/// are logged only.
async fn report_service_problem(
    recorder: &Recorder,
    p: &Problem,
    services: &[Service],
    slices: &[EndpointSlice],
) {
    let same = |m: &kube::api::ObjectMeta| {
        m.namespace.as_deref() == Some(p.namespace.as_str())
            && m.name.as_deref() == Some(p.name.as_str())
    };
    let (api_version, meta) = match p.kind {
        "Service" => ("v1", services.iter().map(|s| &s.metadata).find(|m| same(m))),
        _ => (
            "discovery.k8s.io/v1",
            slices.iter().map(|s| &s.metadata).find(|m| same(m)),
        ),
    };
    let reference = k8s_openapi::api::core::v1::ObjectReference {
        api_version: Some(api_version.into()),
        kind: Some(p.kind.into()),
        name: Some(p.name.clone()),
        namespace: Some(p.namespace.clone()),
        uid: meta.and_then(|m| m.uid.clone()),
        resource_version: meta.and_then(|m| m.resource_version.clone()),
        ..Default::default()
    };
    let note = match &p.keeps {
        Some(k) => format!(
            "{}; the last good state of services/{k} stays in force",
            p.message
        ),
        None => p.message.clone(),
    };
    let ev = kube::runtime::events::Event {
        type_: kube::runtime::events::EventType::Warning,
        reason: format!("WeirInvalid{}", p.kind),
        note: Some(note.chars().take(1000).collect()),
        action: "Compile".into(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&ev, &reference).await {
        log::warn!("{}: cannot record an Event: {e}", p.message);
    }
}

/// What a restarted agent enforces until the API server's set compiles:
/// the last set that did. None on a first start.
fn policies_in_force(state: &StateDir) -> (String, Vec<Policy>) {
    let Ok(text) = std::fs::read_to_string(policies_file(state)) else {
        return (String::new(), Vec::new());
    };
    let parsed = manifests::parse_text(
        &text,
        "policies in force",
        weir_topo::fields::FieldValidation::Strict,
    )
    .and_then(|m| {
        let stored: Vec<_> = m.policies.iter().map(|(_, s)| s.clone()).collect();
        manifests::parse_all(&stored)
    });
    match parsed {
        Ok(p) => {
            log::info!("{} policies in force from the previous run", p.len());
            (text, p)
        }
        Err(e) => {
            log::warn!(
                "{}: {e:#}; starting without",
                policies_file(state).display()
            );
            (String::new(), Vec::new())
        }
    }
}

fn first_hosts(cidrs: &[ipnet::IpNet]) -> (Option<Ipv4Addr>, Option<Ipv6Addr>) {
    let v4 = cidrs.iter().find_map(|c| match c {
        ipnet::IpNet::V4(n) => Some(Ipv4Addr::from(u32::from(n.network()).wrapping_add(1))),
        _ => None,
    });
    let v6 = cidrs.iter().find_map(|c| match c {
        ipnet::IpNet::V6(n) => Some(Ipv6Addr::from(u128::from(n.network()).wrapping_add(1))),
        _ => None,
    });
    (v4, v6)
}

/// The node netns's `lo` carries the pods' gateway (169.254.1.1) and the
/// node's first podCIDR hosts, as on a node `weir up` builds.
fn prepare_node_netns(n: &RealizedNode) -> anyhow::Result<()> {
    let mut addrs = vec![format!("{}/32", weir_topo::GATEWAY_V4)];
    addrs.extend(n.ipv4.map(|a| format!("{a}/32")));
    addrs.extend(n.ipv6.map(|a| format!("{a}/128")));
    let ip = |args: &[&str]| -> anyhow::Result<()> {
        let out = Command::new("ip")
            .arg("-n")
            .arg(&n.netns)
            .args(args)
            .output()
            .context("run ip (iproute2)")?;
        anyhow::ensure!(
            out.status.success(),
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(())
    };
    ip(&["link", "set", "lo", "up"])?;
    for a in &addrs {
        ip(&["addr", "replace", a, "dev", "lo"])?;
    }
    Ok(())
}

/// (Re)makes the host veth of this node (`weir_topo::host`) in its netns:
/// a leftover of an earlier run is deleted first.
/// Its routes: the node's podCIDRs and the Service ranges (the node's
/// clients reach ClusterIPs through the dataplane).
fn make_host_port(
    n: &RealizedNode,
    mtu: u32,
    queues: u32,
    service_ranges: &[ipnet::IpNet],
) -> anyhow::Result<()> {
    if n.pod_cidrs.is_empty() {
        anyhow::bail!("the Node has no podCIDRs yet");
    }
    let _ = Command::new("ip")
        .args(["-n", &n.netns, "link", "del", weir_topo::host::HOST_IFNAME])
        .output();
    weir_topo::host::realize(n, mtu, queues).map_err(|e| anyhow::anyhow!("{e}"))?;
    weir_topo::host::route_services(n, service_ranges).map_err(|e| anyhow::anyhow!("{e}"))
}

fn fmt_mac(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The IPv4 default route of `netns` (through `choice`'s interface, if
/// one is named) with the lowest metric, and its gateway's MAC from the
/// neighbour table (probed once when absent). `Ok(None)`: no uplink wanted
/// (`none`), or `auto` and no default route.
fn read_uplink(netns: &str, choice: &UplinkChoice) -> Result<Option<Uplink>, String> {
    let mut args = vec!["-4", "route", "show", "default"];
    match choice {
        UplinkChoice::None => return Ok(None),
        UplinkChoice::Auto => {}
        UplinkChoice::Iface(i) => args.extend(["dev", i.as_str()]),
    }
    let routes = ip_json(netns, &args).map_err(|e| format!("{e:#}"))?;
    let best = routes
        .as_array()
        .into_iter()
        .flatten()
        .min_by_key(|r| r["metric"].as_u64().unwrap_or(0));
    let Some(r) = best else {
        return match choice {
            UplinkChoice::Iface(i) => Err(format!(
                "--uplink {i}: no IPv4 default route through it in netns {netns}"
            )),
            _ => Ok(None),
        };
    };
    let ifname = match (r["dev"].as_str(), choice) {
        (Some(d), _) => d.to_string(),
        (None, UplinkChoice::Iface(i)) => i.clone(),
        (None, _) => return Err("the IPv4 default route names no interface".into()),
    };
    let gateway: Ipv4Addr = r["gateway"]
        .as_str()
        .and_then(|g| g.parse().ok())
        .ok_or_else(|| {
            format!("the IPv4 default route through {ifname} has no gateway (no next hop's MAC to send to)")
        })?;
    let mac = resolve_peer_mac(netns, gateway)
        .ok_or_else(|| format!("the gateway {gateway} on {ifname} does not answer ARP"))?;
    let ipv6 = read_uplink6(netns, &ifname);
    Ok(Some(Uplink {
        ifname,
        gateway,
        mac,
        ipv6,
    }))
}

/// The IPv6 default route of `netns` through `ifname` (the IPv4 uplink's
/// interface: one uplink) with the lowest metric, its gateway's MAC from
/// the neighbour table (probed once when absent), and the first global,
/// usable (not tentative, deprecated or DAD-failed) IPv6 address on
/// `ifname`. `Err`: why there is no IPv6 uplink.
fn read_uplink6(netns: &str, ifname: &str) -> Result<Uplink6, String> {
    let routes = ip_json(netns, &["-6", "route", "show", "default", "dev", ifname])
        .map_err(|e| format!("{e:#}"))?;
    let r = routes
        .as_array()
        .into_iter()
        .flatten()
        .min_by_key(|r| r["metric"].as_u64().unwrap_or(0))
        .ok_or_else(|| format!("no IPv6 default route through {ifname}"))?;
    let gateway: Ipv6Addr = r["gateway"]
        .as_str()
        .and_then(|g| g.parse().ok())
        .ok_or_else(|| format!("the IPv6 default route through {ifname} has no gateway"))?;
    let addrs = ip_json(
        netns,
        &["-6", "addr", "show", "dev", ifname, "scope", "global"],
    )
    .map_err(|e| format!("{e:#}"))?;
    let address = addrs
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|l| l["addr_info"].as_array().into_iter().flatten())
        .filter(|a| a["family"] == "inet6")
        .filter(|a| {
            !["tentative", "deprecated", "dadfailed"]
                .iter()
                .any(|f| a[*f].as_bool() == Some(true))
        })
        .find_map(|a| a["local"].as_str()?.parse::<Ipv6Addr>().ok())
        .ok_or_else(|| format!("no usable global IPv6 address on {ifname} (the SNAT66 address)"))?;
    let mac = resolve_mac6(netns, ifname, gateway).ok_or_else(|| {
        format!("the IPv6 gateway {gateway} on {ifname} does not answer neighbour solicitation")
    })?;
    Ok(Uplink6 {
        gateway,
        mac,
        address,
    })
}

/// The MAC of IPv6 neighbour `to` on `dev` (see [`neighbour_mac`]).
fn resolve_mac6(netns: &str, dev: &str, to: Ipv6Addr) -> Option<[u8; 6]> {
    neighbour_mac(netns, dev, &to.to_string(), true)
}

/// The MAC of neighbour `hop` on `dev` from the neighbour table (`v6`: the
/// IPv6 one), after one ping to make the kernel solicit it when the entry
/// is absent or unresolved (IPv6 pings through `dev`: the hop is often
/// link-local).
fn neighbour_mac(netns: &str, dev: &str, hop: &str, v6: bool) -> Option<[u8; 6]> {
    let family: &[&str] = if v6 { &["-6"] } else { &[] };
    let lookup = || -> Option<[u8; 6]> {
        let args: Vec<&str> = family
            .iter()
            .copied()
            .chain(["neigh", "show", "to", hop, "dev", dev])
            .collect();
        let n = ip_json(netns, &args).ok()?;
        let e = n.get(0)?;
        let bad = e["state"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| s == "FAILED" || s == "INCOMPLETE");
        e["lladdr"].as_str().filter(|_| !bad).and_then(parse_mac)
    };
    if let Some(m) = lookup() {
        return Some(m);
    }
    let via: &[&str] = if v6 { &["-6", "-I", dev] } else { &[] };
    let _ = Command::new("ip")
        .args(["netns", "exec", netns, "ping"])
        .args(via)
        .args(["-c", "1", "-W", "1", hop])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    lookup()
}

/// `ip -n NETNS -j ARGS` as JSON.
fn ip_json(netns: &str, args: &[&str]) -> anyhow::Result<serde_json::Value> {
    let out = Command::new("ip")
        .args(["-n", netns, "-j"])
        .args(args)
        .output()
        .context("run ip (iproute2)")?;
    anyhow::ensure!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null))
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut m = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut m {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(m)
}

/// The interface of `netns` that holds `ip`: the node's end of the
/// underlay (name, MAC, prefix) and its MTU.
fn find_underlay(netns: &str, ip: Ipv4Addr) -> anyhow::Result<(UnderlayInfo, u32)> {
    let links = ip_json(netns, &["addr", "show"])?;
    for l in links.as_array().into_iter().flatten() {
        let has = l["addr_info"].as_array().into_iter().flatten().find(|a| {
            a["family"] == "inet" && a["local"].as_str() == Some(ip.to_string().as_str())
        });
        let Some(a) = has else { continue };
        let ifname = l["ifname"].as_str().unwrap_or_default().to_string();
        anyhow::ensure!(
            ifname != "lo",
            "{ip} is on lo, not on an interface to the other nodes"
        );
        let mac = l["address"]
            .as_str()
            .and_then(parse_mac)
            .with_context(|| format!("{ifname}: no Ethernet address"))?;
        let mtu = l["mtu"].as_u64().unwrap_or(1500) as u32;
        let prefix_len = a["prefixlen"].as_u64().unwrap_or(32) as u8;
        return Ok((
            UnderlayInfo {
                ifname,
                peer_ifname: String::new(),
                mac,
                ipv4: ip,
                prefix_len,
                ipv6: None,
            },
            mtu,
        ));
    }
    anyhow::bail!("no interface of netns {netns} has the underlay address {ip} (the Node's {} annotation or InternalIP)", kube_inputs::UNDERLAY_ANNOTATION)
}

/// The MAC of the next hop toward a peer's underlay address (the peer
/// itself on one L2 segment, else its gateway), from the node netns's
/// routes and neighbours; an unknown neighbour is probed once (one ping:
/// the kernel resolves it) and read again. `None`: not resolved (yet).
fn resolve_peer_mac(netns: &str, peer: Ipv4Addr) -> Option<[u8; 6]> {
    let p = peer.to_string();
    let route = ip_json(netns, &["route", "get", &p]).ok()?;
    let r = route.get(0)?;
    let dev = r["dev"].as_str()?;
    let hop = r["gateway"].as_str().unwrap_or(&p);
    neighbour_mac(netns, dev, hop, false)
}

/// `/run/netns/NAME` or `NAME` → `NAME`; `None` names the agent's own netns
/// `weir-node` (`ip netns attach`).
fn netns_name(netns: Option<&str>) -> anyhow::Result<String> {
    let Some(s) = netns else {
        let name = "weir-node";
        if !weir_topo::netns::exists(name) {
            let out = Command::new("ip")
                .args(["netns", "attach", name])
                .arg(std::process::id().to_string())
                .output()
                .context("run ip netns attach")?;
            anyhow::ensure!(
                out.status.success(),
                "ip netns attach {name}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        return Ok(name.to_string());
    };
    let p = Path::new(s);
    let name = match p.parent() {
        Some(d) if d == Path::new("/run/netns") || d == Path::new("/var/run/netns") => {
            p.file_name().and_then(|f| f.to_str()).unwrap_or_default()
        }
        Some(d) if d.as_os_str().is_empty() => s,
        _ => anyhow::bail!("--netns {s}: a name or a path under /run/netns (ip netns add)"),
    };
    anyhow::ensure!(
        weir_topo::netns::exists(name),
        "--netns {s}: no such network namespace"
    );
    Ok(name.to_string())
}

pub fn run(opts: Options) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("tokio runtime")?;
    rt.block_on(run_async(opts))
}

fn reflect<K>(api: Api<K>, i: usize, tx: tokio::sync::mpsc::Sender<Msg>) -> Store<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(
        writer,
        watcher::watcher(api, watcher::Config::default()).default_backoff(),
    );
    tokio::spawn(async move {
        let mut s = stream.boxed();
        while let Some(ev) = s.next().await {
            let msg = match ev {
                // The store swaps in a relist at InitDone, not before.
                Ok(Event::Init | Event::InitApply(_)) => continue,
                Ok(Event::InitDone) => Msg::Store(i, true),
                Ok(_) => Msg::Store(i, false),
                Err(e) => Msg::StoreError(i, kube_agent::one_line(&e)),
            };
            if tx.send(msg).await.is_err() {
                return;
            }
        }
    });
    reader
}

async fn run_async(opts: Options) -> anyhow::Result<()> {
    // First: an address in use is one line and exit 1, before anything starts.
    let metrics_listener = crate::metrics::bind(&opts.metrics_addr)?;
    if let Some(d) = &opts.state_dir {
        std::env::set_var("WEIR_STATE_DIR", d);
    }
    let state = StateDir::new(CLUSTER);
    let metrics = metrics_listener.map(|l| {
        let m =
            crate::metrics::Shared::new(CLUSTER, state.clone(), vec![(opts.node.clone(), true)]);
        log::info!("metrics and flows on http://{}/", opts.metrics_addr);
        crate::metrics::serve(l, m.clone());
        m
    });
    // The kubeconfig first: a bad one is one line and changes nothing.
    let source = match &opts.kubeconfig {
        Some(p) => p.display().to_string(),
        None => "in-cluster ServiceAccount".to_string(),
    };
    let client = match &opts.kubeconfig {
        Some(p) => kube_agent::client(p).await?,
        None => {
            let cfg = kube::Config::incluster().map_err(|e| {
                anyhow::anyhow!(
                    "no --kubeconfig, and not in a pod: {}",
                    kube_agent::one_line(&e)
                )
            })?;
            kube::Client::try_from(cfg)
                .map_err(|e| anyhow::anyhow!("{source}: {}", kube_agent::one_line(&e)))?
        }
    };
    client
        .apiserver_version()
        .await
        .map_err(|e| anyhow::anyhow!("{source}: {}", kube_agent::one_line(&e)))?;
    std::fs::create_dir_all(state.node_dir(&opts.node))
        .with_context(|| format!("state directory {}", state.root.display()))?;
    let netns = netns_name(opts.netns.as_deref())?;
    let mut wg = match opts.wireguard {
        true => Some(crate::node_wireguard::NodeWg::new(&state, &opts.node)?),
        false => None,
    };

    // The attachments survive an agent restart; a new start begins empty.
    let att_file = state.root.join("attachments.json");
    let mut attached = match Cluster::load(&att_file) {
        Ok(mut c) if c.nodes.first().is_some_and(|n| n.name == opts.node) => {
            log::info!("{} attached pods from a previous run", c.pods.len());
            c.nodes[0].netns = netns.clone();
            c
        }
        _ => Cluster {
            name: CLUSTER.into(),
            nodes: vec![RealizedNode {
                name: opts.node.clone(),
                netns: netns.clone(),
                labels: BTreeMap::new(),
                pod_cidrs: Vec::new(),
                ipv4: None,
                ipv6: None,
                dataplane: weir_topo::NodeDataplane::Weir,
                underlay: None,
                vtep_mac: [0; 6],
                host_port: false,
            }],
            namespaces: Vec::new(),
            pods: Vec::new(),
            encap: weir_topo::Encap::Vxlan,
            vni: 1,
            underlay_netns: None,
            underlay_mtu: 1500,
            pod_mtu: 0,
            queues: 2,
            services: Vec::new(),
            world: None,
            non_masquerade: Vec::new(),
            service_cidrs: Vec::new(),
            host_failsafe: Default::default(),
            pod_rx_cpus: Vec::new(),
        },
    };
    // The flag decides (a restart may change it; pods attached before keep
    // the MTU they got).
    attached.encap = opts.encap;
    // So do these (the uplink's CIDR lists, the host port's Service routes).
    attached.non_masquerade = opts.non_masquerade.clone();
    if attached.service_cidrs != opts.service_cidrs {
        attached.service_cidrs = opts.service_cidrs.clone();
        // The host port is made again, with routes to the new ranges, at the
        // first compile (as when the Node's podCIDRs change).
        attached.nodes[0].pod_cidrs.clear();
    }
    attached.host_failsafe = opts.host_failsafe.clone();
    attached.pod_rx_cpus = opts.pod_rx_cpus.clone();
    let (policy_text, policies) = policies_in_force(&state);
    let mut services_state = kube_inputs::ServicesInForce::from_previous(services_in_force(&state));
    let mut problems_reported: BTreeSet<Problem> = BTreeSet::new();
    let generation = crate::agent::read_snapshot(&state, &opts.node)
        .map(|s| s.generation)
        .unwrap_or(0);
    let shared = Arc::new(Mutex::new(NodeState {
        state: state.clone(),
        node: opts.node.clone(),
        attached,
        inputs: ClusterInputs::default(),
        services: Vec::new(),
        synced: false,
        policies,
        policy_text,
        generation,
        last: None,
        peer_macs: BTreeMap::new(),
        metrics,
        uplink: None,
        uplink_note: String::new(),
    }));
    write_conflist(&state, &opts.node, opts.cni_conf_dir.as_deref())?;

    // weir-cni's endpoint; answered from its own thread.
    let sock = state.daemon_sock();
    let _ = std::fs::remove_file(&sock);
    let listener = UnixListener::bind(&sock).with_context(|| format!("bind {}", sock.display()))?;
    {
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("cni".into())
            .spawn(move || serve(listener, shared))?;
    }

    let (tx, mut rx) = tokio::sync::mpsc::channel::<Msg>(1024);
    let stores = Stores {
        nodes: reflect(Api::<Node>::all(client.clone()), 0, tx.clone()),
        namespaces: reflect(Api::<Namespace>::all(client.clone()), 1, tx.clone()),
        pods: reflect(Api::<Pod>::all(client.clone()), 2, tx.clone()),
        services: reflect(Api::<Service>::all(client.clone()), 3, tx.clone()),
        endpoint_slices: reflect(Api::<EndpointSlice>::all(client.clone()), 4, tx.clone()),
    };
    kube_agent::spawn_policy_watchers(
        &client,
        tx.clone(),
        |i, e| Msg::Policy(kube_agent::Msg::Event(i, e)),
        |i, e| Msg::Policy(kube_agent::Msg::WatchError(i, e)),
        |i, a| Msg::Policy(kube_agent::Msg::Served(i, a)),
    );
    if let Some(wg) = &wg {
        crate::node_wireguard::watch_key(wg.key_file(), tx.clone(), || Msg::WireguardKey);
    }
    drop(tx);

    let mut dataplane: Option<std::process::Child> = None;
    let mut published_once = false;
    let mut kinds: Vec<KindState> = KINDS.iter().map(|_| KindState::default()).collect();
    let mut discovered = [false; KINDS.len()];
    let first_discovery = tokio::time::Instant::now() + Duration::from_secs(2);
    let mut store_synced = [false; STORES.len()];
    let mut store_errors: [String; STORES.len()] = Default::default();
    let mut policy_errors = vec![String::new(); KINDS.len()];
    let mut skipped_logged: BTreeSet<String> = BTreeSet::new();
    let mut dirty_since: Option<tokio::time::Instant> = None;
    let mut last_refusal: Option<String> = None;
    let mut peer_macs: BTreeMap<Ipv4Addr, [u8; 6]> = BTreeMap::new();
    let mut peers_pending = false;
    let mut unresolved_logged: BTreeSet<Ipv4Addr> = BTreeSet::new();
    let mut uplink_read: Result<Option<Uplink>, String> = Ok(None);
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "weir-agent".into(),
            instance: Some(opts.node.clone()),
        },
    );
    log::info!(
        "node {} (netns {netns}): watching {}; CNI socket {}",
        opts.node,
        source,
        sock.display()
    );
    loop {
        let timeout = match dirty_since {
            Some(t) => QUIET.min(MAX_DELAY.saturating_sub(t.elapsed())),
            None => SUPERVISE,
        };
        let msg = match tokio::time::timeout(timeout, rx.recv()).await {
            Ok(Some(m)) => Some(m),
            Ok(None) => anyhow::bail!("every watcher ended"),
            Err(_) => None,
        };
        if msg.is_none() && dirty_since.is_none() {
            // Idle: a peer's next hop not resolved yet? Try again.
            if peers_pending {
                dirty_since = Some(tokio::time::Instant::now());
                continue;
            }
            // Idle: the WireGuard key rotated (`weir wireguard rotate`)?
            if let Some(wg) = wg.as_mut().filter(|_| published_once) {
                wg.sync(&client, &recorder, &stores.nodes.state()).await;
            }
            // Idle: the dataplane still runs?
            if opts.spawn_dataplane && published_once {
                supervise_dataplane(&state, &opts, &mut dataplane);
            }
            // Idle: the default route or its gateway's MAC changed?
            if published_once {
                let now = tokio::task::block_in_place(|| read_uplink(&netns, &opts.uplink));
                if now != uplink_read {
                    dirty_since = Some(tokio::time::Instant::now());
                }
            }
            continue;
        }
        if let Some(msg) = msg {
            match msg {
                Msg::Store(i, done) => {
                    store_errors[i].clear();
                    store_synced[i] |= done;
                }
                Msg::StoreError(i, e) => {
                    if store_errors[i] != e {
                        log::warn!("{}: watch: {} (retrying)", STORES[i], rbac_hint(&e));
                        store_errors[i] = e;
                    }
                }
                Msg::Policy(kube_agent::Msg::Served(i, ar)) => {
                    kinds[i].served = true;
                    kinds[i].resource = Some(ar);
                    discovered[i] = true;
                }
                Msg::Policy(kube_agent::Msg::WatchError(i, e)) => {
                    if policy_errors[i] != e {
                        log::warn!("{}: watch: {} (retrying)", KINDS[i].2, rbac_hint(&e));
                        policy_errors[i] = e;
                    }
                }
                Msg::Policy(kube_agent::Msg::Event(i, ev)) => {
                    policy_errors[i].clear();
                    kube_agent::apply_event(&mut kinds[i], KINDS[i], *ev);
                }
                // The next compile publishes the new key (`NodeWg::sync`).
                Msg::WireguardKey => {}
            }
            if dirty_since.is_none() {
                dirty_since = Some(tokio::time::Instant::now());
            }
            continue;
        }
        // Quiet: compile once everything the snapshot depends on has listed.
        let waiting_discovery =
            tokio::time::Instant::now() < first_discovery && discovered.iter().any(|d| !d);
        if waiting_discovery
            || store_synced[..COMPILED_STORES].iter().any(|s| !s)
            || kinds.iter().any(|k| k.served && !k.synced)
        {
            dirty_since = Some(tokio::time::Instant::now());
            continue;
        }
        dirty_since = None;
        let inputs = stores.inputs();
        for s in &inputs.skipped {
            if skipped_logged.insert(s.clone()) {
                log::warn!("{s}; skipped");
            }
        }
        // The overlay's peers: the next hop toward every other node's
        // underlay address (outside the lock: a probe takes up to a second).
        let own_ul = inputs.node(&opts.node).and_then(|n| n.internal_ip);
        peers_pending = false;
        for n in &inputs.nodes {
            let Some(ip) = n
                .internal_ip
                .filter(|ip| n.name != opts.node && Some(*ip) != own_ul)
            else {
                continue;
            };
            if own_ul.is_none() || peer_macs.contains_key(&ip) {
                continue;
            }
            match tokio::task::block_in_place(|| resolve_peer_mac(&netns, ip)) {
                Some(m) => {
                    log::info!("nodes/{}: overlay peer {ip}", n.name);
                    peer_macs.insert(ip, m);
                }
                None => {
                    if unresolved_logged.insert(ip) {
                        log::warn!(
                            "nodes/{}: underlay {ip} does not answer from netns {netns}; its pods get no traffic until it does",
                            n.name
                        );
                    }
                    peers_pending = true;
                }
            }
        }
        // The uplink, as the kernel has it now (outside the lock: a probe
        // of the gateway takes up to a second).
        uplink_read = tokio::task::block_in_place(|| read_uplink(&netns, &opts.uplink));
        // The Services: each Problem a warning and an Event once (not one
        // per resync: again only after it went away and came back).
        let (api_services, api_slices) = stores.services();
        let (services, problems) = services_state.update(&api_services, &api_slices);
        let current: BTreeSet<Problem> = problems.into_iter().collect();
        for p in current.difference(&problems_reported) {
            match &p.keeps {
                Some(k) => log::warn!(
                    "{}; the last good state of services/{k} stays in force",
                    p.message
                ),
                None => log::warn!("{}", p.message),
            }
            report_service_problem(&recorder, p, &api_services, &api_slices).await;
        }
        problems_reported = current;
        let text = kube_agent::manifest_text(&kinds);
        let result = {
            let mut st = shared.lock().expect("lock");
            st.peer_macs = peer_macs.clone();
            st.inputs = inputs;
            st.services = services;
            if !st.synced {
                log::info!("initial lists complete");
            }
            st.synced = true;
            st.update_own_node();
            st.set_uplink(uplink_read.clone());
            let parsed = if text != st.policy_text {
                Some(
                    manifests::parse_text(
                        &text,
                        "kube-apiserver",
                        weir_topo::fields::FieldValidation::Strict,
                    )
                    .and_then(|m| {
                        let stored: Vec<_> = m.policies.iter().map(|(_, s)| s.clone()).collect();
                        manifests::parse_all(&stored)
                    }),
                )
            } else {
                None
            };
            match parsed {
                Some(Err(e)) => {
                    st.policy_text = text.clone();
                    let r = st.publish(None);
                    Err((format!("{e:#}"), r))
                }
                Some(Ok(p)) => match st.publish(Some((&text, p))) {
                    Ok(()) => Ok(()),
                    Err(e) => {
                        let r = st.publish(None);
                        Err((format!("{e:#}"), r))
                    }
                },
                None => st.publish(None).map_err(|e| (String::new(), Err(e))),
            }
        };
        match result {
            Ok(()) => last_refusal = None,
            Err((refusal, other)) => {
                if !refusal.is_empty() && last_refusal.as_deref() != Some(refusal.as_str()) {
                    log::error!("refused, previous policies stay in force: {refusal}");
                    kube_agent::report_refusal(&client, &recorder, &kinds, &refusal).await;
                    last_refusal = Some(refusal);
                }
                if let Err(e) = other {
                    log::error!("not published, the previous snapshot stays in force: {e:#}");
                }
            }
        }
        // WireGuard: our key on our Node, the peers from the others'
        // (before the dataplane starts: it reads them).
        if let Some(wg) = wg.as_mut() {
            wg.sync(&client, &recorder, &stores.nodes.state()).await;
        }
        published_once = true;
        if opts.spawn_dataplane {
            supervise_dataplane(&state, &opts, &mut dataplane);
        }
    }
}

/// Makes the error of a forbidden list or watch say which verb on which
/// resource the agent's identity lacks (the API server's message names
/// both; this keeps it to one line and leads with it).
fn rbac_hint(e: &str) -> String {
    if let Some(i) = e.find("cannot ") {
        let rest = &e[i..];
        let end = rest.find(" at the cluster scope").unwrap_or(rest.len());
        return format!("RBAC: forbidden: {} ({e})", &rest[..end]);
    }
    e.to_string()
}

/// How often an idle agent checks that the dataplane it runs still does.
const SUPERVISE: Duration = Duration::from_secs(2);

/// Whether the node's dataplane process runs: the one this agent started
/// (reaped when it exited), else the one named by its pid file (a restarted
/// agent keeps the dataplane that forwards now; a dead or reused pid has
/// no `weir ... dataplane` command line).
fn dataplane_alive(state: &StateDir, node: &str, child: &mut Option<std::process::Child>) -> bool {
    if let Some(c) = child {
        if matches!(c.try_wait(), Ok(None)) {
            return true;
        }
        *child = None;
        return false;
    }
    let Ok(pid) = std::fs::read_to_string(state.dataplane_pid(node)) else {
        return false;
    };
    std::fs::read(format!("/proc/{}/cmdline", pid.trim()))
        .is_ok_and(|c| c.split(|b| *b == 0).any(|a| a == b"dataplane"))
}

/// Starts the node's dataplane when none runs (first publish, or it exited).
fn supervise_dataplane(state: &StateDir, opts: &Options, child: &mut Option<std::process::Child>) {
    let had = child.is_some();
    if dataplane_alive(state, &opts.node, child) {
        return;
    }
    if had {
        log::warn!(
            "nodes/{}: the dataplane exited (see {}); starting it again",
            opts.node,
            state.dataplane_log(&opts.node).display()
        );
    }
    match start_dataplane(state, opts) {
        Ok(c) => *child = Some(c),
        Err(e) => log::error!("nodes/{}: dataplane: {e:#}", opts.node),
    }
}

/// Starts `weir dataplane` for the node in a process group of its own: a
/// signal to the agent is not one to the dataplane, which outlives it.
fn start_dataplane(state: &StateDir, opts: &Options) -> anyhow::Result<std::process::Child> {
    let log_path = state.dataplane_log(&opts.node);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)?;
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(exe);
    cmd.args(["--cluster", CLUSTER, "dataplane", "--node", &opts.node])
        .args(&opts.dataplane_args)
        .env(
            "WEIR_STATE_DIR",
            state.root.parent().unwrap_or(Path::new("/")),
        )
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0);
    let child = cmd.spawn().context("start weir dataplane")?;
    log::info!(
        "nodes/{}: dataplane started (pid {}, log {})",
        opts.node,
        child.id(),
        log_path.display()
    );
    Ok(child)
}

/// The conflist a runtime uses on this node (`<state>/kube/10-weir.conflist`).
fn write_conflist(state: &StateDir, node: &str, dir: Option<&Path>) -> anyhow::Result<()> {
    let conf = json!({
        "cniVersion": "1.0.0",
        "cniVersions": ["0.4.0", "1.0.0", "1.1.0"],
        "name": "weir",
        "plugins": [{
            "type": "weir-cni",
            "cluster": CLUSTER,
            "node": node,
            "socket": state.daemon_sock().display().to_string(),
        }],
    });
    let text = serde_json::to_string_pretty(&conf)?;
    crate::state::write_atomic(&state.root.join("10-weir.conflist"), text.as_bytes())?;
    if let Some(d) = dir {
        let path = d.join("10-weir.conflist");
        crate::state::write_atomic(&path, text.as_bytes())
            .with_context(|| format!("{}", path.display()))?;
    }
    Ok(())
}

/// weir-cni's requests (and ping/status), one at a time.
fn serve(listener: UnixListener, shared: Arc<Mutex<NodeState>>) {
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let reply = match ipc::read_request::<Request>(&conn) {
            Ok(Request::Ping) => Reply::ok(shared.lock().expect("lock").readiness()),
            Ok(Request::Status) => Reply::ok(shared.lock().expect("lock").status()),
            Ok(Request::Cni(call)) => {
                let mut st = shared.lock().expect("lock");
                Reply::ok(match cni_precheck(&st, &call) {
                    Some(e) => e,
                    None => cni_server::handle(&mut *st, &call),
                })
            }
            Ok(other) => Reply::err(format!(
                "the node agent does not handle {other:?} (policies come from the API server)"
            )),
            Err(e) => Reply::err(format!("bad request: {e}")),
        };
        let _ = ipc::write_reply(&conn, &reply);
    }
}

/// What a node agent refuses before cni_server sees an ADD: an agent that
/// has not listed the API server yet, a node without its Node object or
/// without podCIDRs (error 11: the runtime retries, and succeeds once they
/// are there).
fn cni_precheck(st: &NodeState, call: &CniCall) -> Option<serde_json::Value> {
    if call.command != "ADD" || call.node != st.node {
        return None;
    }
    if call.pod_namespace.is_empty() || call.pod_name.is_empty() {
        return Some(json!({"code": cni_server::code::INVALID_ENV,
            "msg": "CNI_ARGS has no K8S_POD_NAMESPACE and K8S_POD_NAME: a node agent attaches Kubernetes pods only (their identity is their Pod object)",
            "details": ""}));
    }
    let e =
        |msg: String| Some(json!({"code": cni_server::code::TRY_AGAIN, "msg": msg, "details": ""}));
    if !st.synced {
        return e(format!(
            "node {}: the agent has not listed the API server yet; try again",
            st.node
        ));
    }
    match st.inputs.node(&st.node) {
        None => e(format!(
            "nodes/{}: no such Node in the API server; register the node first",
            st.node
        )),
        Some(n) if n.pod_cidrs.is_empty() => e(format!(
            "nodes/{}: spec.podCIDRs is empty: no addresses for pods until the Node has podCIDRs",
            st.node
        )),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rbac_hint_leads_with_verb_and_resource() {
        let e = "failed to perform initial object list: ApiError: pods is forbidden: User \"system:serviceaccount:weir-system:weir-agent\" cannot list resource \"pods\" in API group \"\" at the cluster scope: Forbidden";
        let h = rbac_hint(e);
        assert!(
            h.starts_with("RBAC: forbidden: cannot list resource \"pods\" in API group \"\" ("),
            "{h}"
        );
        assert_eq!(rbac_hint("connection refused"), "connection refused");
    }

    #[test]
    fn first_hosts_of_pod_cidrs() {
        let c: Vec<ipnet::IpNet> = vec![
            "10.1.2.0/24".parse().unwrap(),
            "fd00:1::/64".parse().unwrap(),
        ];
        assert_eq!(
            first_hosts(&c),
            (
                Some(Ipv4Addr::new(10, 1, 2, 1)),
                Some("fd00:1::1".parse().unwrap())
            )
        );
        assert_eq!(first_hosts(&[]), (None, None));
    }

    /// The cluster a node agent compiles: remote Nodes are overlay peers
    /// once their next hop is resolved; every API pod is an identity (this
    /// node's unattached ones without node or address, so they are neither
    /// endpoints nor peers by address).
    #[test]
    fn compiled_cluster_peers_and_identity_only_pods() {
        let node = |name: &str, cidr: &str, ul: &str| -> k8s_openapi::api::core::v1::Node {
            serde_json::from_value(json!({"metadata": {"name": name,
                "annotations": {"weir.dev/underlay-ip": ul}},
                "spec": {"podCIDRs": [cidr]}}))
            .unwrap()
        };
        let pod = |name: &str, node: &str, ip: Option<&str>| -> Pod {
            let mut v = json!({"metadata": {"name": name, "namespace": "x", "uid": format!("u-{name}"),
                "labels": {"app": name}}, "spec": {"nodeName": node, "containers": []}});
            if let Some(ip) = ip {
                v["status"] = json!({"podIP": ip});
            }
            serde_json::from_value(v).unwrap()
        };
        let nodes = [
            node("n1", "10.1.0.0/24", "192.168.9.1"),
            node("n2", "10.2.0.0/24", "192.168.9.2"),
        ];
        let pods = [
            pod("att", "n1", Some("10.1.0.5")),
            pod("unatt", "n1", Some("10.1.0.6")),
            pod("rem", "n2", Some("10.2.0.5")),
            pod("pending", "n2", None),
        ];
        let inputs = kube_inputs::cluster_inputs(&nodes, &[], &pods);
        let me = RealizedNode {
            name: "n1".into(),
            netns: "ns1".into(),
            labels: BTreeMap::new(),
            pod_cidrs: vec!["10.1.0.0/24".parse().unwrap()],
            ipv4: None,
            ipv6: None,
            dataplane: weir_topo::NodeDataplane::Weir,
            underlay: Some(UnderlayInfo {
                ifname: "ul0".into(),
                peer_ifname: String::new(),
                mac: [2, 0, 0, 0, 0, 1],
                ipv4: Ipv4Addr::new(192, 168, 9, 1),
                prefix_len: 24,
                ipv6: None,
            }),
            vtep_mac: weir_topo::overlay::vtep_mac(Ipv4Addr::new(192, 168, 9, 1)),
            host_port: false,
        };
        let att = RealizedPod {
            namespace: "x".into(),
            name: "att".into(),
            node: "n1".into(),
            labels: BTreeMap::from([("weir.dev/pod-uid".to_string(), "u-att".to_string())]),
            ports: Vec::new(),
            netns: "/run/netns/p".into(),
            host_ifname: "wc1".into(),
            host_mac: [2, 0, 0, 0, 1, 1],
            pod_mac: [2, 0, 0, 0, 1, 2],
            ipv4: Some(Ipv4Addr::new(10, 1, 0, 5)),
            ipv6: None,
            mtu: 1450,
            cni: None,
        };
        let mut st = NodeState {
            state: StateDir::new(CLUSTER),
            node: "n1".into(),
            attached: Cluster {
                name: CLUSTER.into(),
                nodes: vec![me],
                namespaces: Vec::new(),
                pods: vec![att],
                encap: weir_topo::Encap::Vxlan,
                vni: 1,
                underlay_netns: None,
                underlay_mtu: 1500,
                pod_mtu: 0,
                queues: 2,
                services: Vec::new(),
                world: None,
                non_masquerade: Vec::new(),
                service_cidrs: Vec::new(),
                host_failsafe: Default::default(),
                pod_rx_cpus: Vec::new(),
            },
            inputs,
            services: Vec::new(),
            synced: true,
            policies: Vec::new(),
            policy_text: String::new(),
            generation: 0,
            last: None,
            peer_macs: BTreeMap::new(),
            metrics: None,
            uplink: None,
            uplink_note: String::new(),
        };
        // Next hop not resolved: n2 is no peer yet.
        let c = st.compiled();
        assert!(c.node("n2").unwrap().underlay.is_none());
        st.peer_macs
            .insert(Ipv4Addr::new(192, 168, 9, 2), [2, 0, 0, 0, 0, 2]);
        let c = st.compiled();
        let n2 = c.node("n2").unwrap();
        let ul = n2.underlay.as_ref().expect("n2 is a peer");
        assert_eq!(
            (ul.ipv4, ul.mac),
            (Ipv4Addr::new(192, 168, 9, 2), [2, 0, 0, 0, 0, 2])
        );
        assert_eq!(n2.vtep_mac, [0x0e, 0, 192, 168, 9, 2]);
        let pods: Vec<_> = c
            .pods
            .iter()
            .map(|p| (p.name.as_str(), p.node.as_str(), p.ipv4))
            .collect();
        assert_eq!(
            pods,
            vec![
                ("att", "n1", Some(Ipv4Addr::new(10, 1, 0, 5))),
                ("pending", "n2", None),
                ("rem", "n2", Some(Ipv4Addr::new(10, 2, 0, 5))),
                ("unatt", "", None),
            ]
        );
        // The Services in force go into the compiled cluster as they are.
        assert!(c.services.is_empty());
        let (svcs, problems) = kube_inputs::services_from_api(
            &[
                serde_json::from_value(json!({"metadata": {"name": "s", "namespace": "x"},
                "spec": {"clusterIP": "10.96.0.7", "ports": [{"port": 80}]}}))
                .unwrap(),
            ],
            &[],
        );
        assert!(problems.is_empty());
        st.services = svcs.clone();
        assert_eq!(st.compiled().services, svcs);

        // Only n1 is compiled, with n2 as its one peer.
        let snap = crate::agent::compile_node(
            &c,
            &weir_policy::PolicyInput::from_cluster(&c, Vec::new()),
            "n1",
            1,
        )
        .unwrap();
        let t = snap.tunnel.expect("a tunnel");
        assert_eq!(t.underlay.name, "ul0");
        assert_eq!(t.peers.len(), 1);
        assert_eq!(t.peers[0].node, "n2");
        assert!(t.peers[0].identity_aware);
        assert!(snap.uplink.is_none(), "no uplink learnt yet");

        // The kernel's uplink through the underlay interface: compiled as
        // the gateway (its MAC is the next hop), with the Service ranges
        // and every podCIDR as cluster ranges.
        let gw = Uplink {
            ifname: "ul0".into(),
            gateway: Ipv4Addr::new(192, 168, 9, 254),
            mac: [2, 0, 0, 0, 0, 0xfe],
            ipv6: Err("no IPv6 default route through ul0".into()),
        };
        st.set_uplink(Ok(Some(gw.clone())));
        assert!(st.uplink_note.starts_with("uplink ul0 via 192.168.9.254"));
        assert!(
            st.uplink_note
                .ends_with("; no IPv6 uplink: no IPv6 default route through ul0"),
            "{}",
            st.uplink_note
        );
        let c = st.compiled();
        let input = weir_policy::PolicyInput::from_cluster(&c, Vec::new());
        let u = crate::agent::compile_node(&c, &input, "n1", 2)
            .unwrap()
            .uplink
            .expect("an uplink");
        assert_eq!(
            (u.gateway_ipv4, u.gateway_mac),
            (gw.gateway, [2, 0, 0, 0, 0, 0xfe])
        );
        for cidr in ["10.1.0.0", "10.2.0.0", "10.96.0.0", "192.168.9.0"] {
            let a: std::net::IpAddr = cidr.parse().unwrap();
            assert!(u.cluster_cidrs.iter().any(|(n, _)| *n == a), "{cidr}");
        }
        assert_eq!(
            (u.node_ipv6, u.gateway_ipv6),
            (None, None),
            "no IPv6 uplink"
        );
        // With an IPv6 default route (a link-local gateway of another MAC):
        // SNAT66 on the node's global address, frames to the v6 gateway's MAC.
        let v6 = Uplink6 {
            gateway: "fe80::1".parse().unwrap(),
            mac: [2, 0, 0, 0, 0, 0x66],
            address: "2001:db8:9::1".parse().unwrap(),
        };
        st.set_uplink(Ok(Some(Uplink {
            ipv6: Ok(v6.clone()),
            ..gw.clone()
        })));
        assert!(
            st.uplink_note
                .ends_with("; IPv6 via fe80::1 (02:00:00:00:00:66), SNAT66 to 2001:db8:9::1"),
            "{}",
            st.uplink_note
        );
        let c = st.compiled();
        let u = crate::agent::compile_node(&c, &input, "n1", 2)
            .unwrap()
            .uplink
            .expect("an uplink");
        assert_eq!(
            (u.node_ipv6, u.gateway_ipv6, u.gateway_mac_v6),
            (Some(v6.address), Some(v6.gateway), Some(v6.mac))
        );
        assert_eq!(u.gateway_mac, [2, 0, 0, 0, 0, 0xfe]);
        // The ULA range of `weir up`'s underlay is no cluster range here.
        let ula = std::net::IpAddr::V6(weir_topo::overlay::UNDERLAY_V6_NET);
        assert!(
            !u.cluster_cidrs.iter().any(|(n, _)| *n == ula),
            "{:?}",
            u.cluster_cidrs
        );
        // Through another interface than the underlay: not used, and said.
        st.set_uplink(Ok(Some(Uplink {
            ifname: "eth9".into(),
            ..gw
        })));
        assert!(st.uplink.is_none());
        assert!(
            st.uplink_note.contains("must be the underlay interface"),
            "{}",
            st.uplink_note
        );
        let c = st.compiled();
        assert!(crate::agent::compile_node(&c, &input, "n1", 3)
            .unwrap()
            .uplink
            .is_none());
    }

    #[test]
    fn uplink_choices() {
        assert_eq!("auto".parse(), Ok(UplinkChoice::Auto));
        assert_eq!("none".parse(), Ok(UplinkChoice::None));
        assert_eq!("eth0".parse(), Ok(UplinkChoice::Iface("eth0".into())));
        for bad in ["", "a/b", "sixteen-chars-xx"] {
            assert!(bad.parse::<UplinkChoice>().is_err(), "{bad}");
        }
        assert!(check_non_masquerade(&["10.0.0.0/8".parse().unwrap()]).is_ok());
        assert!(check_non_masquerade(&["fd00::/8".parse().unwrap()]).is_ok());
        for bad in ["::/128", "0.0.0.0/32"] {
            assert!(check_non_masquerade(&[bad.parse().unwrap()])
                .unwrap_err()
                .to_string()
                .contains("the unspecified address is no destination"));
        }
    }

    #[test]
    fn macs_from_iproute2() {
        assert_eq!(
            parse_mac("0a:00:c0:A8:09:02"),
            Some([10, 0, 192, 168, 9, 2])
        );
        for bad in [
            "",
            "0a:00:c0:a8:09",
            "0a:00:c0:a8:09:02:03",
            "zz:00:00:00:00:00",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
    }

    #[test]
    fn netns_names_and_paths() {
        assert!(netns_name(Some("/tmp/x"))
            .unwrap_err()
            .to_string()
            .contains("under /run/netns"));
        assert!(netns_name(Some("/run/netns/surely-not-there-weir"))
            .unwrap_err()
            .to_string()
            .contains("no such network namespace"));
    }
}
