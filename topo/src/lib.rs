//! weir-topo: real local "clusters" of network namespaces, built from plain
//! Kubernetes manifests (Node, Namespace, Pod). The machine's own network is
//! never touched: every node is a netns, every pod a netns with a veth to its
//! node.
//!
//! # Names
//! A cluster name is 1-16 lower-case letters and digits (a DNS label without
//! `-`, so the prefix `weir-<cluster>-` of one cluster never matches
//! another's). Named netns (visible to `ip netns`):
//! - node: `weir-<cluster>-<node>`
//! - pod: `weir-<cluster>-<namespace>-<pod>`
//! - the underlay: `weir-<cluster>-underlay`
//!
//! Two objects whose netns names would coincide (node `default-a` and pod
//! `default/a`, or namespace `a-b` pod `c` and namespace `a` pod `b-c`, or a
//! node named `underlay`) are rejected before anything is built.
//!
//! # Wiring (Calico style; everything derived deterministically)
//! - Addresses: per node, pods get addresses in manifest order from the
//!   node's podCIDRs starting at `.2` / `::2` (slot *n* is the same offset in
//!   both families); the node has `.1` / `::1`. A removed pod's slot is
//!   reused by the next [`Cluster::add_pod`] (lowest free slot first).
//! - Node netns: `lo` up with `169.254.1.1/32`, the node's IPv4 `/32` and
//!   IPv6 `/128`. IP forwarding stays 0 and there are no routes to pods: the
//!   kernel never forwards pod traffic, weir's userspace dataplane does; when
//!   it is down, pod traffic is dropped (fail closed). The node answers ARP
//!   for `169.254.1.1` itself (an address on `lo`, `arp_ignore=0`).
//!   (`kernel`-dataplane nodes differ: see *Kernel nodes* below.)
//! - Pod: a veth pair with [`BuildOptions::queues`] RX and TX queues. The
//!   node side is `wv` + 8 hex digits of FNV-1a-32(`<namespace>/<pod>`), in
//!   the node netns, with `fe80::1/64` (nodad); the pod side is `eth0`. MACs
//!   are locally administered and derived from the pod's address: pod
//!   `02:00:<IPv4 octets>` (IPv6-only pods: `02:` + the last 5 bytes of the
//!   IPv6 address), node side the same with `06`. Both ends up with MTU
//!   [`BuildOptions::mtu`].
//! - Inside the pod: `lo` up; `eth0` with the IPv4 `/32` and IPv6 `/128`
//!   (nodad), routes `169.254.1.1 dev eth0 scope link`,
//!   `default via 169.254.1.1 dev eth0`, `default via fe80::1 dev eth0`;
//!   `net.ipv6.conf.eth0.accept_dad=0`.
//! - **TX checksum offload is off on every pod's `eth0`** (`ethtool -K eth0
//!   tx off`, done with the `ETHTOOL_STXCSUM` ioctl). A veth hands out
//!   frames with partial checksums (CHECKSUM_PARTIAL) which the receiver's
//!   kernel would complete; in AF_XDP copy mode the frame goes through
//!   userspace and nobody completes them, so TCP would fail with
//!   `TcpInCsumErrors` at the receiver. weir's pod setup therefore makes the
//!   pod's kernel compute full checksums (this also turns TSO off).
//!
//!
//! # Underlay and overlay (every cluster, one node or many)
//! - The underlay netns `weir-<cluster>-underlay` holds a Linux bridge `br0`
//!   (up, STP off). Every node netns gets a veth: `ul0` on the node side,
//!   `ul-` + 8 hex digits of FNV-1a-32(`<node>`) on the bridge side
//!   (enslaved to `br0`), both with [`BuildOptions::underlay_mtu`] (default
//!   1500) and [`BuildOptions::queues`] queues. The kernel answers ARP on
//!   `ul0`, so nodes reach each other at L3 over the underlay.
//! - Node underlay address (on `ul0`, `/prefix`): the Node's first IPv4
//!   `status.addresses[type=InternalIP]`, else the lowest free host of the
//!   underlay subnet in node order — with no `InternalIP` at all, node *n*
//!   gets `172.30.0.<n+1>/24`. The subnet is the
//!   [`BuildOptions::underlay_prefix_len`] (default 24) network of the first
//!   given `InternalIP`, else `172.30.0.0/24`; every address must be a host
//!   of it (one L2 segment), unique, and the subnet must not overlap a
//!   podCIDR. Errors are one line.
//! - MACs from the underlay IPv4: `ul0` `0a:00:<octets>`, its bridge side
//!   `0a:01:<octets>`, and the node's **VTEP MAC**
//!   ([`RealizedNode::vtep_mac`]) `0e:00:<octets>`: the inner destination
//!   MAC other nodes put in tunnel frames for this node.
//! - Encapsulation ([`Encap`], cluster-wide, default VXLAN with
//!   [`Cluster::vni`] 1, UDP 4789): the default pod MTU is
//!   `underlay_mtu - overhead`, VXLAN 50 (14+20+8+8) → 1450, Geneve 58 (plus
//!   weir's 8-byte identity option) → 1442 — in single-node clusters too, so
//!   a pod's MTU does not depend on the cluster's size. An explicit
//!   [`BuildOptions::mtu`] must not exceed it.
//!
//! # Kernel nodes (`weir.dev/dataplane: kernel`; an interop peer, no weir)
//! Wired like flannel's vxlan backend: `ip_forward=1` and IPv6 forwarding;
//! a route per local pod address through its host veth (`/32`, `/128`,
//! scope link; kept by [`Cluster::add_pod`], removed with the veth); pods
//! and the `169.254.1.1` gateway as above. A kernel VXLAN device `vxlan0`:
//! VNI [`Cluster::vni`], dstport 4789, local = the node's underlay address,
//! dev `ul0`, nolearning, MAC = its VTEP MAC, MTU `underlay_mtu - 50`,
//! address = the network address of its IPv4 podCIDR as `/32` (e.g.
//! `10.244.1.0/32`). For every other node N (weir or kernel): an fdb entry
//! `N.vtep_mac dst N.underlay_ip self permanent`, a permanent neighbour
//! `<N gw> lladdr N.vtep_mac` and a route `N.podCIDR via <N gw> dev vxlan0
//! onlink`, where `<N gw>` is the network address of N's podCIDR — for
//! IPv4 and, the same way, IPv6 (`fd00:10:244:1::`). Other nodes' routes
//! never change when pods come and go (the podCIDR route covers them).
//! Kernel nodes need `encap: vxlan`.
//!
//! [`Cluster`] is the realized state; it is saved as JSON so other processes
//! ([`Cluster::load`]) can attach to it. [`teardown_by_name`] removes a
//! cluster even when that file is lost.
#![deny(unsafe_code)]

pub mod attach;
pub use weir_model::fields;
pub mod manifest;
pub mod netns;
pub mod overlay;
pub mod rps;
pub mod serve;
pub mod world;

mod cluster;
// The ETHTOOL_STXCSUM ioctl; its one block says why it holds.
#[allow(unsafe_code)]
mod ethtool;
pub mod host;
mod netlink;
mod view;

use std::process::Command;

pub use attach::CniAttachment;
#[doc(hidden)]
pub use cluster::testing;
pub use cluster::{
    check_cluster_name, netns_prefix, pod_netns, teardown_by_name, BuildOptions, Cluster,
    RealizedNode, RealizedPod, TeardownGuard, GATEWAY_V4, GATEWAY_V6, POD_IFNAME,
};
pub use ethtool::tx_checksum_enabled;
pub use manifest::{
    ClusterSpec, ContainerPort, ManifestError, NamespaceSpec, NodeDataplane, NodeSpec, PodSpec,
    Protocol,
};
pub use overlay::{Encap, UnderlayInfo};

/// Everything that can go wrong building or changing a topology; one line each.
#[derive(Debug, thiserror::Error)]
pub enum TopoError {
    /// The manifests (or a spec built in code) are invalid.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// A cluster name that is not 1-16 of `[a-z0-9]`.
    #[error("cluster name {name:?}: {reason}")]
    ClusterName { name: String, reason: &'static str },
    /// A build option out of range.
    #[error("build options: {field}: {msg}")]
    Options { field: &'static str, msg: String },
    /// A namespace operation (create, mount, setns, ...) failed.
    #[error("netns {netns}: {op}: {error}")]
    Netns {
        netns: String,
        op: &'static str,
        error: std::io::Error,
    },
    /// The netns to create is already there (cluster name in use?).
    #[error(
        "netns {netns}: already exists (cluster name in use, or left over: tear it down first)"
    )]
    NetnsExists { netns: String },
    /// A netns this cluster expects is gone.
    #[error("netns {netns}: does not exist")]
    NetnsMissing { netns: String },
    /// An rtnetlink request failed.
    #[error("netns {netns}: {object}: {op}: {error}")]
    Netlink {
        netns: String,
        object: String,
        op: String,
        error: Box<rtnetlink::Error>,
    },
    /// Writing a sysctl failed.
    #[error("netns {netns}: sysctl {path}: {error}")]
    Sysctl {
        netns: String,
        path: String,
        error: std::io::Error,
    },
    /// The ethtool ioctl failed.
    #[error("netns {netns}: {ifname}: ethtool tx off: {error}")]
    Ethtool {
        netns: String,
        ifname: String,
        error: std::io::Error,
    },
    /// Two objects would get the same netns, interface name or address, or a
    /// pod does not fit its node.
    #[error("{object}: {msg}")]
    Conflict { object: String, msg: String },
    /// `remove_pod` of a pod the cluster does not have.
    #[error("pods/{namespace}/{name}: not in cluster {cluster}")]
    UnknownPod {
        cluster: String,
        namespace: String,
        name: String,
    },
    /// A server socket for a pod could not be set up.
    #[error("pods/{pod}: serve {port}/{protocol}: {error}")]
    Serve {
        pod: String,
        port: u16,
        protocol: Protocol,
        error: std::io::Error,
    },
}

/// `ip netns exec <pod netns> <argv...>`: a command to run inside the pod's
/// network namespace (for tests and probes).
pub fn pod_exec(pod: &RealizedPod, argv: &[&str]) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &pod.netns]).args(argv);
    cmd
}
