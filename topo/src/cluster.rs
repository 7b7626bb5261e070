//! Building, changing and tearing down a cluster of namespaces (the scheme is
//! in the crate doc).
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::path::Path;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::manifest::{
    ClusterSpec, ContainerPort, ManifestError, NamespaceSpec, NodeDataplane, NodeSpec, PodSpec,
    DATAPLANE_ANNOTATION,
};
use crate::netlink::{Netlink, Veth};
use crate::overlay::{self, Encap, UnderlayInfo, UNDERLAY_IFNAME};
use crate::{ethtool, netns, TopoError};
use weir_model::service_manifest::{
    allocate_cluster_ips, allocate_node_ports, derive_endpoints, EndpointPod, IpFamily, ServiceSpec,
};

/// The node's address on `lo` that pods use as their gateway.
pub const GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// The node side's link-local address that pods use as their IPv6 gateway.
pub const GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
/// The pod side of every pod's veth.
pub const POD_IFNAME: &str = "eth0";
const CLUSTER_NAME_MAX: usize = 16;

const MIN_POD_MTU: u32 = 1280;
const MAX_MTU: u32 = 65535;
const MAX_VNI: u32 = (1 << 24) - 1;

fn default_underlay_mtu() -> u32 {
    1500
}
fn default_vni() -> u32 {
    1
}
fn default_underlay_prefix_len() -> u8 {
    24
}

/// How pods' links and the underlay are made.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct BuildOptions {
    /// RX and TX queue count of each veth (default 2; also the underlay veths).
    pub queues: u32,
    /// Pod MTU, both veth ends. 0 (the default) means
    /// `underlay_mtu - encap.overhead()` (1450 with VXLAN, 1442 with Geneve
    /// on a 1500 underlay), in single-node clusters too. An explicit value
    /// must be 1280 up to that.
    #[serde(default)]
    pub mtu: u32,
    /// MTU of the underlay veths `ul0` (default 1500).
    #[serde(default = "default_underlay_mtu")]
    pub underlay_mtu: u32,
    /// Encapsulation between nodes (cluster-wide; default VXLAN).
    #[serde(default)]
    pub encap: Encap,
    /// VXLAN/Geneve network identifier (default 1; 1-16777215).
    #[serde(default = "default_vni")]
    pub vni: u32,
    /// Prefix length of the underlay subnet (default 24; 8-30).
    #[serde(default = "default_underlay_prefix_len")]
    pub underlay_prefix_len: u8,
    /// Destinations pods reach without SNAT (ip-masq-agent's
    /// `nonMasqueradeCIDRs`; docs/egress.md). IPv4 only.
    #[serde(default)]
    pub non_masquerade: Vec<IpNet>,
    /// The nodes' failsafe ports (host endpoint policy; docs/policy.md).
    #[serde(default)]
    pub host_failsafe: weir_model::policy::FailsafePorts,
    /// RPS mask of every pod's `eth0` RX queues (`weir up --pod-rx-cpus`;
    /// [`crate::rps`]): the CPUs that run the pod's receive path when weir's
    /// worker transmits to it. Empty (the default): RPS off.
    #[serde(default)]
    pub pod_rx_cpus: Vec<usize>,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            queues: 2,
            mtu: 0,
            underlay_mtu: default_underlay_mtu(),
            encap: Encap::Vxlan,
            vni: default_vni(),
            underlay_prefix_len: default_underlay_prefix_len(),
            non_masquerade: Vec::new(),
            host_failsafe: Default::default(),
            pod_rx_cpus: Vec::new(),
        }
    }
}

/// The largest pod MTU an underlay MTU leaves room for.
fn max_pod_mtu(underlay_mtu: u32, encap: Encap) -> u32 {
    underlay_mtu.saturating_sub(encap.overhead())
}

/// An explicit pod MTU must fit the encapsulation.
fn check_pod_mtu(mtu: u32, underlay_mtu: u32, encap: Encap) -> Result<(), TopoError> {
    let max = max_pod_mtu(underlay_mtu, encap);
    if mtu < MIN_POD_MTU {
        return Err(TopoError::Options {
            field: "mtu",
            msg: format!("{mtu} is less than {MIN_POD_MTU}"),
        });
    }
    if mtu > max {
        return Err(TopoError::Options {
            field: "mtu",
            msg: format!(
                "{mtu} is more than underlay_mtu {underlay_mtu} minus {} bytes of {encap} overhead (at most {max})",
                encap.overhead()
            ),
        });
    }
    Ok(())
}

impl BuildOptions {
    /// The pod MTU these options give: `mtu`, or when 0
    /// `underlay_mtu - encap.overhead()`.
    pub fn pod_mtu(&self) -> u32 {
        if self.mtu == 0 {
            max_pod_mtu(self.underlay_mtu, self.encap)
        } else {
            self.mtu
        }
    }

    fn check(&self) -> Result<(), TopoError> {
        if !(1..=64).contains(&self.queues) {
            return Err(TopoError::Options {
                field: "queues",
                msg: format!("{} is out of range 1-64", self.queues),
            });
        }
        let min_underlay = MIN_POD_MTU + self.encap.overhead();
        if !(min_underlay..=MAX_MTU).contains(&self.underlay_mtu) {
            return Err(TopoError::Options {
                field: "underlay_mtu",
                msg: format!(
                    "{} is out of range {min_underlay}-{MAX_MTU} (pods need {MIN_POD_MTU} plus {} bytes of {} overhead)",
                    self.underlay_mtu,
                    self.encap.overhead(),
                    self.encap
                ),
            });
        }
        if self.mtu != 0 {
            check_pod_mtu(self.mtu, self.underlay_mtu, self.encap)?;
        }
        if !(1..=MAX_VNI).contains(&self.vni) {
            return Err(TopoError::Options {
                field: "vni",
                msg: format!("{} is out of range 1-{MAX_VNI}", self.vni),
            });
        }
        if !(8..=30).contains(&self.underlay_prefix_len) {
            return Err(TopoError::Options {
                field: "underlay_prefix_len",
                msg: format!("{} is out of range 8-30", self.underlay_prefix_len),
            });
        }
        Ok(())
    }
}

/// A node as built.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct RealizedNode {
    pub name: String,
    pub netns: String,
    pub labels: BTreeMap<String, String>,
    pub pod_cidrs: Vec<IpNet>,
    /// First host of the IPv4 podCIDR, on the node's `lo`.
    pub ipv4: Option<Ipv4Addr>,
    /// First host of the IPv6 podCIDR, on the node's `lo`.
    pub ipv6: Option<Ipv6Addr>,
    /// Who forwards this node's pod traffic (annotation `weir.dev/dataplane`).
    #[serde(default)]
    pub dataplane: NodeDataplane,
    /// The node's `ul0` (`None` only in states saved before the underlay).
    #[serde(default)]
    pub underlay: Option<UnderlayInfo>,
    /// `0e:00:<underlay ipv4 octets>`: the inner destination MAC of tunnel
    /// frames to this node (all zero without an underlay).
    #[serde(default)]
    pub vtep_mac: [u8; 6],
    /// The node has a host port (`weir-host0`/`weir-host1`, see
    /// [`crate::host`]): weir nodes of the local cluster do.
    #[serde(default)]
    pub host_port: bool,
}

impl RealizedNode {
    /// The node's IPv4 podCIDR.
    pub fn pod_cidr_v4(&self) -> Option<ipnet::Ipv4Net> {
        overlay::gateway_v4(self).map(|(n, _)| n)
    }

    /// The node's IPv6 podCIDR.
    pub fn pod_cidr_v6(&self) -> Option<ipnet::Ipv6Net> {
        overlay::gateway_v6(self).map(|(n, _)| n)
    }

    /// The node as a manifest object (the underlay address as its
    /// `InternalIP`).
    pub fn spec(&self) -> NodeSpec {
        node_spec(self)
    }
}

/// A pod as built.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct RealizedPod {
    pub namespace: String,
    pub name: String,
    pub node: String,
    pub labels: BTreeMap<String, String>,
    pub ports: Vec<ContainerPort>,
    pub netns: String,
    /// Node-side veth name, in the node's netns.
    pub host_ifname: String,
    pub host_mac: [u8; 6],
    pub pod_mac: [u8; 6],
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    pub mtu: u32,
    /// Set when a container runtime attached the pod through weir-cni: its
    /// netns belongs to the runtime (never deleted by weir).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cni: Option<crate::attach::CniAttachment>,
}

impl RealizedPod {
    /// `pods/<namespace>/<name>`.
    pub fn object(&self) -> String {
        format!("pods/{}/{}", self.namespace, self.name)
    }
}

/// The realized state of a cluster; saved as JSON so other processes can load it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Cluster {
    pub name: String,
    pub nodes: Vec<RealizedNode>,
    pub namespaces: Vec<NamespaceSpec>,
    pub pods: Vec<RealizedPod>,
    /// Encapsulation between nodes.
    #[serde(default)]
    pub encap: Encap,
    /// The tunnel's network identifier (default 1).
    #[serde(default = "default_vni")]
    pub vni: u32,
    /// `weir-<cluster>-underlay` (`None` only in states saved before it).
    #[serde(default)]
    pub underlay_netns: Option<String>,
    /// MTU of the underlay (`ul0`).
    #[serde(default = "default_underlay_mtu")]
    pub underlay_mtu: u32,
    /// The pod MTU the cluster was built with (0 in older states: unknown).
    #[serde(default)]
    pub pod_mtu: u32,
    /// RX/TX queues of every pod veth (the dataplane binds a socket on each).
    #[serde(default = "default_queues")]
    pub queues: u32,
    /// Services and their endpoints (manifests or the API server).
    #[serde(default)]
    pub services: Vec<weir_model::service::ServiceInfo>,
    /// The world host on the underlay (`None` in states saved before it):
    /// every node's uplink gateway (docs/egress.md).
    #[serde(default)]
    pub world: Option<crate::world::WorldInfo>,
    /// Destinations pods reach without SNAT (`weir up --non-masquerade`).
    #[serde(default)]
    pub non_masquerade: Vec<IpNet>,
    /// Ports of the nodes' own traffic no host policy can close (`weir up
    /// --failsafe-inbound/--failsafe-outbound`; docs/policy.md).
    #[serde(default)]
    pub host_failsafe: weir_model::policy::FailsafePorts,
    /// The Service ranges (ClusterIPs), when not weir's own
    /// (`weir agent --service-cidr`: the API server's
    /// `--service-cluster-ip-range`); empty: see [`Cluster::service_ranges`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_cidrs: Vec<IpNet>,
    /// RPS mask of pods' interfaces, set on every pod wired from now on
    /// ([`BuildOptions::pod_rx_cpus`]; empty: RPS off).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pod_rx_cpus: Vec<usize>,
}

impl Cluster {
    /// The ranges ClusterIPs come from: `service_cidrs`, else weir's own
    /// (`10.96.0.0/16`, `fd00:96::/112`, as its manifests allocate them).
    pub fn service_ranges(&self) -> Vec<IpNet> {
        if !self.service_cidrs.is_empty() {
            return self.service_cidrs.clone();
        }
        [
            weir_model::service_manifest::SERVICE_RANGE_V4,
            weir_model::service_manifest::SERVICE_RANGE_V6,
        ]
        .iter()
        .filter_map(|r| r.parse().ok())
        .collect()
    }
}

fn default_queues() -> u32 {
    BuildOptions::default().queues
}

/// Checks a cluster name: 1-16 of `[a-z0-9]`.
pub fn check_cluster_name(name: &str) -> Result<(), TopoError> {
    let err = |reason| {
        Err(TopoError::ClusterName {
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() || name.len() > CLUSTER_NAME_MAX {
        return err("must be 1-16 characters");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
    {
        return err("must be lower-case letters and digits only");
    }
    Ok(())
}

/// `weir-<cluster>-`: every netns of the cluster starts with it.
pub fn netns_prefix(cluster: &str) -> String {
    format!("weir-{cluster}-")
}

fn node_netns(cluster: &str, node: &str) -> String {
    format!("weir-{cluster}-{node}")
}

/// The netns of pod `namespace/pod` of a local cluster.
pub fn pod_netns(cluster: &str, namespace: &str, pod: &str) -> String {
    format!("weir-{cluster}-{namespace}-{pod}")
}

/// `aa:bb:cc:dd:ee:ff`.
pub(crate) fn fmt_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// FNV-1a, 32 bits: stable across builds and processes.
pub(crate) fn fnv1a32(bytes: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in bytes {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// `wv` + 8 hex digits of FNV-1a-32(`<namespace>/<pod>`).
pub(crate) fn host_ifname(namespace: &str, pod: &str) -> String {
    format!("wv{:08x}", fnv1a32(format!("{namespace}/{pod}").as_bytes()))
}

pub(crate) fn macs(ipv4: Option<Ipv4Addr>, ipv6: Option<Ipv6Addr>) -> ([u8; 6], [u8; 6]) {
    let tail: [u8; 5] = match (ipv4, ipv6) {
        (Some(v4), _) => {
            let o = v4.octets();
            [0, o[0], o[1], o[2], o[3]]
        }
        (None, Some(v6)) => {
            let o = v6.octets();
            [o[11], o[12], o[13], o[14], o[15]]
        }
        (None, None) => [0; 5],
    };
    let mk = |first: u8| [first, tail[0], tail[1], tail[2], tail[3], tail[4]];
    (mk(0x06), mk(0x02))
}

fn host_v4(cidr: &IpNet, slot: u128) -> Option<Ipv4Addr> {
    match cidr {
        IpNet::V4(n) => Some(Ipv4Addr::from(
            u32::from(n.network()).wrapping_add(slot as u32),
        )),
        IpNet::V6(_) => None,
    }
}

fn host_v6(cidr: &IpNet, slot: u128) -> Option<Ipv6Addr> {
    match cidr {
        IpNet::V6(n) => Some(Ipv6Addr::from(u128::from(n.network()).wrapping_add(slot))),
        IpNet::V4(_) => None,
    }
}

fn node_addrs(cidrs: &[IpNet]) -> (Option<Ipv4Addr>, Option<Ipv6Addr>) {
    (
        cidrs.iter().find_map(|c| host_v4(c, 1)),
        cidrs.iter().find_map(|c| host_v6(c, 1)),
    )
}

/// The slot (offset in the podCIDRs) a realized pod uses.
fn slot_of(node: &RealizedNode, pod: &RealizedPod) -> Option<u128> {
    for c in &node.pod_cidrs {
        match (c, pod.ipv4, pod.ipv6) {
            (IpNet::V4(n), Some(a), _) => {
                return Some(u128::from(u32::from(a) - u32::from(n.network())))
            }
            (IpNet::V6(n), _, Some(a)) => return Some(u128::from(a) - u128::from(n.network())),
            _ => {}
        }
    }
    None
}

fn node_spec(node: &RealizedNode) -> NodeSpec {
    NodeSpec {
        name: node.name.clone(),
        labels: node.labels.clone(),
        pod_cidrs: node.pod_cidrs.clone(),
        dataplane: node.dataplane,
        internal_ip: node.underlay.as_ref().map(|u| u.ipv4),
    }
}

fn pod_spec(p: &RealizedPod) -> PodSpec {
    PodSpec {
        namespace: p.namespace.clone(),
        name: p.name.clone(),
        labels: p.labels.clone(),
        node: p.node.clone(),
        ports: p.ports.clone(),
    }
}

/// Builds a pod's realized description for `slot` on `node` (pure).
fn plan_pod(
    cluster: &str,
    node: &RealizedNode,
    pod: &PodSpec,
    slot: u128,
    mtu: u32,
) -> RealizedPod {
    let ipv4 = node.pod_cidrs.iter().find_map(|c| host_v4(c, slot));
    let ipv6 = node.pod_cidrs.iter().find_map(|c| host_v6(c, slot));
    let (host_mac, pod_mac) = macs(ipv4, ipv6);
    RealizedPod {
        namespace: pod.namespace.clone(),
        name: pod.name.clone(),
        node: node.name.clone(),
        labels: pod.labels.clone(),
        ports: pod.ports.clone(),
        netns: pod_netns(cluster, &pod.namespace, &pod.name),
        host_ifname: host_ifname(&pod.namespace, &pod.name),
        host_mac,
        pod_mac,
        ipv4,
        ipv6,
        mtu,
        cni: None,
    }
}

pub(crate) fn check_netns_name(object: &str, netns: &str) -> Result<(), TopoError> {
    if netns.len() > 255 {
        return Err(TopoError::Conflict {
            object: object.to_string(),
            msg: format!("netns name {netns:?} is longer than 255 characters"),
        });
    }
    Ok(())
}

/// Removes, in reverse order, the netns made so far unless disarmed.
struct Undo {
    netns: Vec<String>,
}

impl Drop for Undo {
    fn drop(&mut self) {
        for ns in self.netns.iter().rev() {
            if let Err(e) = netns::delete(ns) {
                log::warn!("rollback: {e}");
            }
        }
    }
}

pub(crate) fn sysctl(netns: &str, path: &str, value: &str) -> Result<(), TopoError> {
    std::fs::write(path, value).map_err(|error| TopoError::Sysctl {
        netns: netns.to_string(),
        path: path.to_string(),
        error,
    })
}

fn realize_node(cluster: &Cluster, node: &RealizedNode, queues: u32) -> Result<(), TopoError> {
    netns::create(&node.netns)?;
    let forwarding = match node.dataplane {
        NodeDataplane::Weir => "0",
        NodeDataplane::Kernel => "1",
    };
    netns::run_in(&node.netns, || -> Result<(), TopoError> {
        sysctl(&node.netns, "/proc/sys/net/ipv4/ip_forward", forwarding)?;
        if Path::new("/proc/sys/net/ipv6/conf/all/forwarding").exists() {
            sysctl(
                &node.netns,
                "/proc/sys/net/ipv6/conf/all/forwarding",
                forwarding,
            )?;
        }
        let nl = Netlink::open(&node.netns)?;
        let lo = nl.link_up("lo")?;
        nl.addr_add("lo", lo, IpAddr::V4(GATEWAY_V4), 32, false)?;
        if let Some(v4) = node.ipv4 {
            nl.addr_add("lo", lo, IpAddr::V4(v4), 32, false)?;
        }
        if let Some(v6) = node.ipv6 {
            nl.addr_add("lo", lo, IpAddr::V6(v6), 128, true)?;
        }
        Ok(())
    })??;
    if let Some(ul_ns) = &cluster.underlay_netns {
        overlay::realize_node_underlay(ul_ns, node, cluster.underlay_mtu, queues)?;
    }
    if node.host_port {
        crate::host::realize(node, cluster.pod_mtu, queues)?;
        crate::host::route_services(node, &cluster.service_ranges())?;
    }
    Ok(())
}

/// On a `kernel` node, routes to the pod's addresses through its host veth
/// (`/32`, `/128`), so the node kernel forwards to it.
fn kernel_pod_routes(node: &RealizedNode, pod: &RealizedPod) -> Result<(), TopoError> {
    if node.dataplane != NodeDataplane::Kernel {
        return Ok(());
    }
    netns::run_in(&node.netns, || -> Result<(), TopoError> {
        let nl = Netlink::open(&node.netns)?;
        let index = nl.link_up(&pod.host_ifname)?;
        if let Some(v4) = pod.ipv4 {
            nl.route_dev(&pod.host_ifname, index, IpAddr::V4(v4), 32)?;
        }
        if let Some(v6) = pod.ipv6 {
            nl.route_dev(&pod.host_ifname, index, IpAddr::V6(v6), 128)?;
        }
        Ok(())
    })?
}

fn realize_pod(
    node: &RealizedNode,
    pod: &RealizedPod,
    queues: u32,
    rx_cpus: &[usize],
) -> Result<(), TopoError> {
    netns::create(&pod.netns)?;
    // Before the veth exists: its RX queues take the netns's default mask.
    // Only weir's worker transmits in a TX kick; a kernel node's pods keep
    // the kernel's default.
    if !rx_cpus.is_empty() && node.dataplane == NodeDataplane::Weir {
        crate::rps::set_pod_rx_cpus(&pod.netns, rx_cpus)?;
    }
    let pod_ns = netns::open(&pod.netns)?;
    netns::run_in(&node.netns, || -> Result<(), TopoError> {
        let nl = Netlink::open(&node.netns)?;
        nl.add_veth(&Veth {
            host: &pod.host_ifname,
            host_mac: pod.host_mac,
            peer: POD_IFNAME,
            peer_mac: pod.pod_mac,
            peer_netns_fd: pod_ns.as_raw_fd(),
            mtu: pod.mtu,
            queues,
        })?;
        let dad = format!("/proc/sys/net/ipv6/conf/{}/accept_dad", pod.host_ifname);
        if Path::new(&dad).exists() {
            sysctl(&node.netns, &dad, "0")?;
        }
        let index = nl.link_up(&pod.host_ifname)?;
        if Path::new("/proc/sys/net/ipv6").exists() {
            nl.addr_add(&pod.host_ifname, index, IpAddr::V6(GATEWAY_V6), 64, true)?;
        }
        Ok(())
    })??;
    drop(pod_ns);
    netns::run_in(&pod.netns, || -> Result<(), TopoError> {
        let dad = format!("/proc/sys/net/ipv6/conf/{POD_IFNAME}/accept_dad");
        if Path::new(&dad).exists() {
            sysctl(&pod.netns, &dad, "0")?;
        }
        ethtool::tx_checksum_off(POD_IFNAME).map_err(|error| TopoError::Ethtool {
            netns: pod.netns.clone(),
            ifname: POD_IFNAME.to_string(),
            error,
        })?;
        let nl = Netlink::open(&pod.netns)?;
        nl.link_up("lo")?;
        let eth0 = nl.link_up(POD_IFNAME)?;
        if let Some(v4) = pod.ipv4 {
            nl.addr_add(POD_IFNAME, eth0, IpAddr::V4(v4), 32, false)?;
            nl.route_v4(POD_IFNAME, eth0, GATEWAY_V4, 32, None)?;
            nl.route_v4(POD_IFNAME, eth0, Ipv4Addr::UNSPECIFIED, 0, Some(GATEWAY_V4))?;
        }
        if let Some(v6) = pod.ipv6 {
            nl.addr_add(POD_IFNAME, eth0, IpAddr::V6(v6), 128, true)?;
            nl.route_v6(POD_IFNAME, eth0, Ipv6Addr::UNSPECIFIED, 0, GATEWAY_V6)?;
        }
        Ok(())
    })?
}

impl Cluster {
    /// Builds the cluster: all-or-nothing (on any failure, every netns it made
    /// is removed again). The spec gets its defaults applied and is
    /// validated first; nothing is built for an invalid spec.
    pub fn build(
        name: &str,
        spec: &ClusterSpec,
        opts: &BuildOptions,
    ) -> Result<Cluster, TopoError> {
        check_cluster_name(name)?;
        opts.check()?;
        let mut spec = spec.clone();
        spec.apply_defaults();
        spec.validate()?;
        if opts.encap != Encap::Vxlan {
            if let Some(n) = spec
                .nodes
                .iter()
                .find(|n| n.dataplane == NodeDataplane::Kernel)
            {
                return Err(ManifestError::Invalid {
                    object: n.object(),
                    field: format!("metadata.annotations[{DATAPLANE_ANNOTATION}]"),
                    msg: format!(
                        "kernel nodes speak VXLAN only, but the cluster's encap is {}",
                        opts.encap
                    ),
                }
                .into());
            }
        }
        let (subnet, underlay_ips) = overlay::plan_underlay(&spec.nodes, opts.underlay_prefix_len)?;
        let underlay_v6 = overlay::underlay_v6_usable(&spec.nodes);
        let pod_mtu = opts.pod_mtu();

        let mut cluster = Cluster {
            name: name.to_string(),
            nodes: spec
                .nodes
                .iter()
                .zip(&underlay_ips)
                .map(|(n, ul_ip)| {
                    let (ipv4, ipv6) = node_addrs(&n.pod_cidrs);
                    RealizedNode {
                        name: n.name.clone(),
                        netns: node_netns(name, &n.name),
                        labels: n.labels.clone(),
                        pod_cidrs: n.pod_cidrs.clone(),
                        ipv4,
                        ipv6,
                        dataplane: n.dataplane,
                        underlay: Some(UnderlayInfo {
                            ifname: UNDERLAY_IFNAME.to_string(),
                            peer_ifname: overlay::underlay_peer_ifname(&n.name),
                            mac: overlay::underlay_mac(*ul_ip),
                            ipv4: *ul_ip,
                            prefix_len: subnet.prefix_len(),
                            ipv6: underlay_v6
                                .then(|| overlay::underlay_ipv6(*ul_ip, subnet.prefix_len())),
                        }),
                        vtep_mac: overlay::vtep_mac(*ul_ip),
                        host_port: n.dataplane == NodeDataplane::Weir,
                    }
                })
                .collect(),
            namespaces: spec.namespaces.clone(),
            pods: Vec::new(),
            encap: opts.encap,
            vni: opts.vni,
            underlay_netns: Some(overlay::underlay_netns(name)),
            underlay_mtu: opts.underlay_mtu,
            pod_mtu,
            queues: opts.queues,
            services: Vec::new(),
            world: Some(crate::world::plan(
                name,
                subnet,
                &underlay_ips,
                underlay_v6,
            )?),
            non_masquerade: opts.non_masquerade.clone(),
            service_cidrs: Vec::new(),
            host_failsafe: opts.host_failsafe.clone(),
            pod_rx_cpus: opts.pod_rx_cpus.clone(),
        };
        for svc in &spec.services {
            cluster.upsert_service(svc)?;
        }
        let mut next_slot: HashMap<&str, u128> = HashMap::new();
        for pod in &spec.pods {
            let slot = next_slot.entry(pod.node.as_str()).or_insert(2);
            let node = cluster
                .node(&pod.node)
                .expect("validated: pod on a declared node");
            let realized = plan_pod(name, node, pod, *slot, pod_mtu);
            *slot += 1;
            cluster.pods.push(realized);
        }
        cluster.check_unique_names()?;
        for ns in cluster.all_netns() {
            if netns::exists(&ns) {
                return Err(TopoError::NetnsExists { netns: ns });
            }
        }

        let mut undo = Undo { netns: Vec::new() };
        if let Some(ul_ns) = &cluster.underlay_netns {
            undo.netns.push(ul_ns.clone());
            overlay::realize_underlay(ul_ns).map_err(|e| keep_if_preexisting(e, &mut undo))?;
        }
        for node in &cluster.nodes {
            undo.netns.push(node.netns.clone());
            realize_node(&cluster, node, opts.queues)
                .map_err(|e| keep_if_preexisting(e, &mut undo))?;
        }
        if let Some(w) = &cluster.world {
            undo.netns.push(w.netns.clone());
            crate::world::realize(&cluster, w).map_err(|e| keep_if_preexisting(e, &mut undo))?;
        }
        for node in &cluster.nodes {
            if node.dataplane == NodeDataplane::Kernel {
                let others: Vec<&RealizedNode> = cluster
                    .nodes
                    .iter()
                    .filter(|n| n.name != node.name)
                    .collect();
                overlay::realize_kernel_tunnel(node, &others, cluster.vni, cluster.underlay_mtu)?;
            }
        }
        for (i, pod) in cluster.pods.iter().enumerate() {
            let node = cluster.node(&pod.node).expect("planned on a known node");
            if testing::should_fail(i) {
                return Err(TopoError::Conflict {
                    object: pod.object(),
                    msg: "failure injected by weir_topo::testing".into(),
                });
            }
            undo.netns.push(pod.netns.clone());
            realize_pod(node, pod, opts.queues, &opts.pod_rx_cpus)
                .map_err(|e| keep_if_preexisting(e, &mut undo))?;
            kernel_pod_routes(node, pod)?;
        }
        undo.netns.clear();
        Ok(cluster)
    }

    /// Adds and wires one pod (its namespace and node must exist in the
    /// cluster; an empty `node` means the first node). On failure nothing of
    /// it is left. Its MTU is `opts.mtu` when set (checked against the
    /// cluster's underlay MTU and encapsulation), else the cluster's pod MTU;
    /// the cluster's own encapsulation and underlay win over those in `opts`.
    /// On a `kernel` node it also gets its `/32` and `/128` routes.
    pub fn add_pod(
        &mut self,
        pod: &PodSpec,
        opts: &BuildOptions,
    ) -> Result<&RealizedPod, TopoError> {
        let mut opts = opts.clone();
        opts.encap = self.encap;
        opts.underlay_mtu = self.underlay_mtu;
        // Every pod of a cluster has the same queue count: the dataplane
        // binds that many sockets per port.
        opts.queues = self.queues;
        opts.check()?;
        let mtu = match (opts.mtu, self.pod_mtu) {
            (0, 0) => opts.pod_mtu(),
            (0, cluster) => cluster,
            (explicit, _) => explicit,
        };
        let mut pod = pod.clone();
        if pod.node.is_empty() {
            pod.node = self
                .nodes
                .first()
                .map(|n| n.name.clone())
                .unwrap_or_default();
        }
        // Reuse the manifest checks on a spec made of this cluster and the pod.
        let mut spec = self.spec();
        spec.pods.push(pod.clone());
        spec.validate()?;

        let node = self
            .node(&pod.node)
            .expect("validated: pod on a declared node");
        let used: HashSet<u128> = self
            .pods
            .iter()
            .filter(|p| p.node == node.name)
            .filter_map(|p| slot_of(node, p))
            .collect();
        let capacity = node_spec(node).pod_capacity();
        let slot = (2u128..)
            .take_while(|s| *s < capacity.saturating_add(2))
            .find(|s| !used.contains(s))
            .ok_or_else(|| TopoError::Conflict {
                object: pod.object(),
                msg: format!("node {:?} has no free address", node.name),
            })?;
        let realized = plan_pod(&self.name, node, &pod, slot, mtu);
        let node = node.clone();
        self.pods.push(realized);
        let checked = self.check_unique_names().and_then(|()| {
            let last = self.pods.last().expect("just pushed");
            if netns::exists(&last.netns) {
                return Err(TopoError::NetnsExists {
                    netns: last.netns.clone(),
                });
            }
            Ok(())
        });
        if let Err(e) = checked {
            self.pods.pop();
            return Err(e);
        }
        let last = self.pods.last().expect("just pushed").clone();
        if let Err(e) = realize_pod(&node, &last, opts.queues, &self.pod_rx_cpus)
            .and_then(|()| kernel_pod_routes(&node, &last))
        {
            let _ = remove_links(&node, &last);
            if let Err(e2) = netns::delete(&last.netns) {
                log::warn!("rollback: {e2}");
            }
            self.pods.pop();
            return Err(e);
        }
        Ok(self.pods.last().expect("just pushed"))
    }

    /// Removes a pod: its node-side veth (synchronously, so the same pod can
    /// be added again at once; on a `kernel` node its routes go with it) and
    /// its netns.
    pub fn remove_pod(&mut self, namespace: &str, name: &str) -> Result<(), TopoError> {
        let Some(i) = self
            .pods
            .iter()
            .position(|p| p.namespace == namespace && p.name == name)
        else {
            return Err(TopoError::UnknownPod {
                cluster: self.name.clone(),
                namespace: namespace.to_string(),
                name: name.to_string(),
            });
        };
        let pod = self.pods[i].clone();
        if let Some(node) = self.node(&pod.node) {
            if netns::exists(&node.netns) {
                remove_links(node, &pod)?;
            }
        }
        if pod.cni.is_none() {
            netns::delete(&pod.netns)?;
        }
        self.pods.remove(i);
        Ok(())
    }

    /// Removes every netns of the cluster (its own list, then anything else
    /// with its prefix). Keeps going after an error and returns the first.
    pub fn teardown(&self) -> Result<(), TopoError> {
        let mut first = None;
        for ns in self.all_netns().iter().rev() {
            if let Err(e) = netns::delete(ns) {
                first.get_or_insert(e);
            }
        }
        if let Err(e) = teardown_by_name(&self.name) {
            first.get_or_insert(e);
        }
        first.map_or(Ok(()), Err)
    }

    /// Writes the state as JSON (atomically: a temporary file, then rename).
    pub fn save(&self, path: &Path) -> io::Result<()> {
        let json = serde_json::to_vec_pretty(self).map_err(io::Error::other)?;
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, json)?;
        std::fs::rename(&tmp, path)
    }

    /// Reads a state written by [`save`](Self::save).
    pub fn load(path: &Path) -> io::Result<Cluster> {
        let text = std::fs::read(path)?;
        serde_json::from_slice(&text).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    /// The cluster's objects as manifests (nodes with their underlay
    /// address as `InternalIP`), e.g. to validate changes.
    pub fn spec(&self) -> ClusterSpec {
        ClusterSpec {
            nodes: self.nodes.iter().map(node_spec).collect(),
            namespaces: self.namespaces.clone(),
            pods: self.pods.iter().map(pod_spec).collect(),
            services: Vec::new(),
        }
    }

    /// The IP families of the cluster's pod networks, IPv4 first.
    pub fn families(&self) -> Vec<IpFamily> {
        let v4 = self.nodes.iter().any(|n| n.ipv4.is_some());
        let v6 = self.nodes.iter().any(|n| n.ipv6.is_some());
        [(v4, IpFamily::IPv4), (v6, IpFamily::IPv6)]
            .into_iter()
            .filter_map(|(has, f)| has.then_some(f))
            .collect()
    }

    /// Adds or replaces a Service (ClusterIPs allocated, or checked when
    /// given; a Service keeps its ClusterIPs when re-applied, as Kubernetes
    /// makes them immutable). Endpoints are left to
    /// [`refresh_endpoints`](Self::refresh_endpoints). Returns `created`,
    /// `configured` or `unchanged`.
    pub fn upsert_service(&mut self, spec: &ServiceSpec) -> Result<&'static str, ManifestError> {
        let object = spec.object();
        let pos = self
            .services
            .iter()
            .position(|s| s.namespace == spec.info.namespace && s.name == spec.info.name);
        let mut spec = spec.clone();
        if let Some(i) = pos {
            let cur = &self.services[i].cluster_ips;
            if spec.info.cluster_ips.is_empty() {
                spec.info.cluster_ips = cur.clone();
            } else if spec.info.cluster_ips.iter().any(|ip| !cur.contains(ip)) {
                return Err(ManifestError::Invalid {
                    object,
                    field: "spec.clusterIPs".into(),
                    msg: "field is immutable (delete and re-create the Service)".into(),
                });
            }
        }
        let taken: HashSet<IpAddr> = self
            .services
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != pos)
            .flat_map(|(_, s)| s.cluster_ips.iter().copied())
            .collect();
        let mut info = spec.info.clone();
        info.cluster_ips = allocate_cluster_ips(&spec, &self.families(), &taken)?;
        let node_ports_taken: HashSet<u16> = self
            .services
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != pos)
            .flat_map(|(_, s)| s.ports.iter().filter_map(|p| p.node_port))
            .collect();
        info.ports = allocate_node_ports(&spec, pos.map(|i| &self.services[i]), &node_ports_taken)?;
        // Another Service already serving an external address on one of
        // this Service's ports would make the frontend ambiguous.
        for (i, other) in self.services.iter().enumerate() {
            if Some(i) == pos {
                continue;
            }
            for ip in info
                .external_ips
                .iter()
                .filter(|ip| other.external_ips.contains(ip))
            {
                for p in &info.ports {
                    if other
                        .ports
                        .iter()
                        .any(|o| o.port == p.port && o.protocol == p.protocol)
                    {
                        return Err(ManifestError::Invalid {
                            object: spec.object(),
                            field: "spec.externalIPs".into(),
                            msg: format!(
                                "{ip} port {}/{} is already served by services/{}/{}",
                                p.port, p.protocol, other.namespace, other.name
                            ),
                        });
                    }
                }
            }
        }
        match pos {
            None => {
                self.services.push(info);
                Ok("created")
            }
            Some(i) => {
                info.endpoints = self.services[i].endpoints.clone();
                if self.services[i] == info {
                    Ok("unchanged")
                } else {
                    self.services[i] = info;
                    Ok("configured")
                }
            }
        }
    }

    /// Recomputes the endpoints of every Service with a selector from the
    /// pods as they are now; returns the warnings (named targetPorts no
    /// selected pod declares).
    pub fn refresh_endpoints(&mut self) -> Vec<String> {
        let pods = &self.pods;
        let mut warnings = Vec::new();
        for svc in &mut self.services {
            warnings.extend(derive_endpoints(
                svc,
                pods.iter().map(|p| EndpointPod {
                    namespace: &p.namespace,
                    name: &p.name,
                    node: &p.node,
                    labels: &p.labels,
                    ports: &p.ports,
                    ipv4: p.ipv4,
                    ipv6: p.ipv6,
                }),
            ));
        }
        warnings
    }

    /// The pod `namespace/name`.
    pub fn pod(&self, namespace: &str, name: &str) -> Option<&RealizedPod> {
        self.pods
            .iter()
            .find(|p| p.namespace == namespace && p.name == name)
    }

    /// The node `name`.
    pub fn node(&self, name: &str) -> Option<&RealizedNode> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// Every netns of the cluster: the underlay first, then nodes, then pods
    /// (not those of pods a container runtime attached: theirs).
    pub fn all_netns(&self) -> Vec<String> {
        self.underlay_netns
            .iter()
            .cloned()
            .chain(self.world.iter().map(|w| w.netns.clone()))
            .chain(self.nodes.iter().map(|n| n.netns.clone()))
            .chain(
                self.pods
                    .iter()
                    .filter(|p| p.cni.is_none())
                    .map(|p| p.netns.clone()),
            )
            .collect()
    }

    /// No two objects share a netns, and no two pods of a node a veth name.
    pub(crate) fn check_unique_names(&self) -> Result<(), TopoError> {
        let mut by_netns: HashMap<&str, String> = HashMap::new();
        let objects = self
            .underlay_netns
            .iter()
            .map(|ns| (ns.as_str(), "the underlay".to_string()))
            .chain(
                self.world
                    .iter()
                    .map(|w| (w.netns.as_str(), "the world host".to_string())),
            )
            .chain(
                self.nodes
                    .iter()
                    .map(|n| (n.netns.as_str(), format!("nodes/{}", n.name))),
            )
            .chain(self.pods.iter().map(|p| (p.netns.as_str(), p.object())));
        for (ns, object) in objects {
            check_netns_name(&object, ns)?;
            if let Some(other) = by_netns.insert(ns, object.clone()) {
                return Err(TopoError::Conflict {
                    object,
                    msg: format!("netns name {ns} is also that of {other}; rename one"),
                });
            }
        }
        let mut ul_names: HashMap<&str, &str> = HashMap::new();
        for n in &self.nodes {
            let Some(ul) = &n.underlay else { continue };
            if let Some(other) = ul_names.insert(&ul.peer_ifname, &n.name) {
                return Err(TopoError::Conflict {
                    object: format!("nodes/{}", n.name),
                    msg: format!(
                        "underlay veth name {} (a hash) collides with that of nodes/{other}; rename one",
                        ul.peer_ifname
                    ),
                });
            }
        }
        let mut ifnames: HashMap<(&str, &str), String> = HashMap::new();
        for p in &self.pods {
            if let Some(other) =
                ifnames.insert((p.node.as_str(), p.host_ifname.as_str()), p.object())
            {
                return Err(TopoError::Conflict {
                    object: p.object(),
                    msg: format!("veth name {} (a hash) collides with that of {other} on node {}; rename one", p.host_ifname, p.node),
                });
            }
        }
        Ok(())
    }
}

/// A netns that existed before (EEXIST) is not ours: do not roll it back.
fn keep_if_preexisting(e: TopoError, undo: &mut Undo) -> TopoError {
    if let TopoError::NetnsExists { netns } = &e {
        if undo.netns.last() == Some(netns) {
            undo.netns.pop();
        }
    }
    e
}

fn remove_links(node: &RealizedNode, pod: &RealizedPod) -> Result<(), TopoError> {
    netns::run_in(&node.netns, || {
        let nl = Netlink::open(&node.netns)?;
        nl.link_del(&pod.host_ifname)
    })?
}

/// Removes every netns named `weir-<cluster>-*`, even without a state file.
/// Keeps going after an error and returns the first.
pub fn teardown_by_name(cluster: &str) -> Result<(), TopoError> {
    check_cluster_name(cluster)?;
    let mut first = None;
    for ns in netns::list_with_prefix(&netns_prefix(cluster)) {
        if let Err(e) = netns::delete(&ns) {
            first.get_or_insert(e);
        }
    }
    first.map_or(Ok(()), Err)
}

/// Calls [`teardown_by_name`] when dropped (for tests and short-lived tools:
/// a cluster is removed even when the code that built it panics).
#[derive(Debug)]
pub struct TeardownGuard {
    cluster: String,
}

impl TeardownGuard {
    /// Guards the cluster `cluster` (which need not exist yet).
    pub fn new(cluster: &str) -> TeardownGuard {
        TeardownGuard {
            cluster: cluster.to_string(),
        }
    }
}

impl Drop for TeardownGuard {
    fn drop(&mut self) {
        if let Err(e) = teardown_by_name(&self.cluster) {
            log::warn!("teardown of cluster {}: {e}", self.cluster);
        }
    }
}

/// Fault injection for tests of the all-or-nothing build.
#[doc(hidden)]
pub mod testing {
    use std::cell::Cell;

    thread_local! {
        static FAIL_AT_POD: Cell<Option<usize>> = const { Cell::new(None) };
    }

    /// Makes `Cluster::build` on this thread fail just before wiring the
    /// pod at index `n` (after the nodes and the pods before it are built).
    pub fn fail_build_at_pod(n: Option<usize>) {
        FAIL_AT_POD.with(|c| c.set(n));
    }

    pub(crate) fn should_fail(i: usize) -> bool {
        FAIL_AT_POD.with(|c| c.get() == Some(i))
    }
}
