//! Pods a container runtime attaches through weir-cni: the runtime made the
//! pod's network namespace (any path) and names the interface; weir makes
//! the veth into it, its addresses (chosen by the caller's IPAM), routes,
//! MACs and TX checksum offload off, wired like the pods topo makes itself
//! (see the crate doc), and records the pod in the [`Cluster`] so the agent
//! compiles it into its node's snapshot.
//!
//! The node side is `wc` + 8 hex digits of FNV-1a-32(`<container id>/<ifname>`),
//! so a DEL (or a GC) finds it from the CNI attachment's key alone, even
//! when a crash left it out of the cluster state.
#![forbid(unsafe_code)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cluster::{check_netns_name, fnv1a32, macs, sysctl, Cluster, RealizedPod};
use crate::manifest::{NamespaceSpec, NodeDataplane, PodSpec, NAMESPACE_NAME_LABEL};
use crate::netlink::{Netlink, Veth};
use crate::{ethtool, netns, TopoError, GATEWAY_V4, GATEWAY_V6};

/// The key of a CNI attachment and where its interface lives.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct CniAttachment {
    pub container_id: String,
    pub ifname: String,
    /// The runtime's netns path (`CNI_NETNS`).
    pub netns_path: PathBuf,
}

/// What an attached pod's interface looks like inside its netns (for CHECK).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodInterface {
    pub mac: [u8; 6],
    pub addrs: Vec<(IpAddr, u8)>,
}

/// The node-side veth name of the attachment `<container_id>/<ifname>`.
pub fn cni_host_ifname(container_id: &str, ifname: &str) -> String {
    format!(
        "wc{:08x}",
        fnv1a32(format!("{container_id}/{ifname}").as_bytes())
    )
}

/// The netns a pod record names: the basename for namespaces `ip netns`
/// knows (`/run/netns/x`, `/var/run/netns/x`), else the path itself.
fn netns_label(path: &Path) -> String {
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let named = dir == Path::new(netns::NETNS_RUN_DIR) || dir == Path::new("/var/run/netns");
    match (named, path.file_name().and_then(|f| f.to_str())) {
        (true, Some(name)) => name.to_string(),
        _ => path.display().to_string(),
    }
}

impl Cluster {
    /// The pod attached as `container_id`/`ifname`, if any.
    pub fn attached_pod(&self, container_id: &str, ifname: &str) -> Option<&RealizedPod> {
        self.pods.iter().find(|p| {
            p.cni
                .as_ref()
                .is_some_and(|c| c.container_id == container_id && c.ifname == ifname)
        })
    }

    /// Wires a pod into the runtime's netns `att.netns_path` with the
    /// addresses given (the caller's IPAM chose them from the node's
    /// podCIDRs) and records it. Its namespace is added to the cluster when
    /// new (it exists in the API server that asked for the pod). On failure
    /// nothing of it is left: neither links nor the record.
    pub fn attach_pod(
        &mut self,
        pod: &PodSpec,
        att: CniAttachment,
        ipv4: Option<Ipv4Addr>,
        ipv6: Option<Ipv6Addr>,
    ) -> Result<&RealizedPod, TopoError> {
        let object = format!("pods/{}/{}", pod.namespace, pod.name);
        let node = self
            .node(&pod.node)
            .ok_or_else(|| TopoError::Conflict {
                object: object.clone(),
                msg: format!("node {:?} is not in the cluster", pod.node),
            })?
            .clone();
        if node.dataplane != NodeDataplane::Weir {
            return Err(TopoError::Conflict {
                object,
                msg: format!("node {:?} has no weir dataplane", node.name),
            });
        }
        let added_ns =
            !self.namespaces.iter().any(|n| n.name == pod.namespace) && pod.namespace != "default";
        if added_ns {
            let mut labels = std::collections::BTreeMap::new();
            labels.insert(NAMESPACE_NAME_LABEL.to_string(), pod.namespace.clone());
            self.namespaces.push(NamespaceSpec {
                name: pod.namespace.clone(),
                labels,
            });
        }
        let undo_ns = |c: &mut Cluster| {
            if added_ns {
                c.namespaces.pop();
            }
        };
        let mut spec = self.spec();
        spec.pods.push(pod.clone());
        if let Err(e) = spec.validate() {
            undo_ns(self);
            return Err(e.into());
        }
        let (host_mac, pod_mac) = macs(ipv4, ipv6);
        let mtu = if self.pod_mtu == 0 {
            crate::BuildOptions::default().pod_mtu()
        } else {
            self.pod_mtu
        };
        let realized = RealizedPod {
            namespace: pod.namespace.clone(),
            name: pod.name.clone(),
            node: node.name.clone(),
            labels: pod.labels.clone(),
            ports: pod.ports.clone(),
            netns: netns_label(&att.netns_path),
            host_ifname: cni_host_ifname(&att.container_id, &att.ifname),
            host_mac,
            pod_mac,
            ipv4,
            ipv6,
            mtu,
            cni: Some(att),
        };
        self.pods.push(realized.clone());
        let checked = self.check_unique_names().and_then(|()| {
            check_netns_name(&realized.object(), &realized.netns)?;
            let taken = self.pods[..self.pods.len() - 1].iter().any(|p| {
                p.node == realized.node
                    && ((p.ipv4.is_some() && p.ipv4 == realized.ipv4)
                        || (p.ipv6.is_some() && p.ipv6 == realized.ipv6))
            });
            if taken {
                return Err(TopoError::Conflict {
                    object: realized.object(),
                    msg: "its address is another pod's".into(),
                });
            }
            Ok(())
        });
        if let Err(e) = checked {
            self.pods.pop();
            undo_ns(self);
            return Err(e);
        }
        if let Err(e) = realize_attached(&node.netns, &realized, self.queues, &self.pod_rx_cpus) {
            let _ = detach_links(&node.netns, &realized.host_ifname);
            self.pods.pop();
            undo_ns(self);
            return Err(e);
        }
        Ok(self.pods.last().expect("just pushed"))
    }

    /// Undoes [`attach_pod`](Self::attach_pod) for `container_id`/`ifname`:
    /// removes the node-side veth (its peer in the runtime's netns goes with
    /// it, whether or not that netns still exists) and the record. Nothing
    /// attached is fine (returns `None`): the veth is removed by its name
    /// all the same, in case a crash left it unrecorded.
    pub fn detach_pod(
        &mut self,
        node: &str,
        container_id: &str,
        ifname: &str,
    ) -> Result<Option<RealizedPod>, TopoError> {
        let host = cni_host_ifname(container_id, ifname);
        if let Some(n) = self.node(node) {
            if netns::exists(&n.netns) {
                detach_links(&n.netns, &host)?;
            }
        }
        let Some(i) = self.pods.iter().position(|p| {
            p.cni
                .as_ref()
                .is_some_and(|c| c.container_id == container_id && c.ifname == ifname)
        }) else {
            return Ok(None);
        };
        Ok(Some(self.pods.remove(i)))
    }
}

/// Whether the node-side veth of an attachment exists on `node_netns`.
pub fn host_link_exists(node_netns: &str, host_ifname: &str) -> Result<bool, TopoError> {
    netns::run_in(node_netns, || -> Result<bool, TopoError> {
        let nl = Netlink::open(node_netns)?;
        Ok(nl.link_index(host_ifname)?.is_some())
    })?
}

/// The interface `ifname` inside the netns at `path` (MAC and addresses),
/// or `None` when it has none of that name.
pub fn pod_interface(path: &Path, ifname: &str) -> Result<Option<PodInterface>, TopoError> {
    let label = path.display().to_string();
    netns::run_in_path(path, || -> Result<Option<PodInterface>, TopoError> {
        let nl = Netlink::open(&label)?;
        let Some((index, mac)) = nl.link_mac(ifname)? else {
            return Ok(None);
        };
        let mut m = [0u8; 6];
        if mac.len() == 6 {
            m.copy_from_slice(&mac);
        }
        Ok(Some(PodInterface {
            mac: m,
            addrs: nl.addrs_of(ifname, index)?,
        }))
    })?
}

fn detach_links(node_netns: &str, host_ifname: &str) -> Result<(), TopoError> {
    netns::run_in(node_netns, || {
        let nl = Netlink::open(node_netns)?;
        nl.link_del(host_ifname)
    })?
}

fn realize_attached(
    node_netns: &str,
    pod: &RealizedPod,
    queues: u32,
    rx_cpus: &[usize],
) -> Result<(), TopoError> {
    let att = pod.cni.as_ref().expect("attached pods have a CNI key");
    let path = &att.netns_path;
    let label = path.display().to_string();
    let pod_ns = std::fs::File::open(path).map_err(|error| {
        if error.kind() == std::io::ErrorKind::NotFound {
            TopoError::NetnsMissing {
                netns: label.clone(),
            }
        } else {
            TopoError::Netns {
                netns: label.clone(),
                op: "open",
                error,
            }
        }
    })?;
    // Before the veth exists: its RX queues take the netns's default mask.
    if !rx_cpus.is_empty() {
        crate::rps::set_pod_rx_cpus_path(path, rx_cpus)?;
    }
    netns::run_in(node_netns, || -> Result<(), TopoError> {
        let nl = Netlink::open(node_netns)?;
        nl.add_veth(&Veth {
            host: &pod.host_ifname,
            host_mac: pod.host_mac,
            peer: &att.ifname,
            peer_mac: pod.pod_mac,
            peer_netns_fd: pod_ns.as_raw_fd(),
            mtu: pod.mtu,
            queues,
        })?;
        let dad = format!("/proc/sys/net/ipv6/conf/{}/accept_dad", pod.host_ifname);
        if Path::new(&dad).exists() {
            sysctl(node_netns, &dad, "0")?;
        }
        let index = nl.link_up(&pod.host_ifname)?;
        if Path::new("/proc/sys/net/ipv6").exists() {
            nl.addr_add(&pod.host_ifname, index, IpAddr::V6(GATEWAY_V6), 64, true)?;
        }
        Ok(())
    })??;
    drop(pod_ns);
    let ifname = att.ifname.as_str();
    netns::run_in_path(path, || -> Result<(), TopoError> {
        let dad = format!("/proc/sys/net/ipv6/conf/{ifname}/accept_dad");
        if Path::new(&dad).exists() {
            sysctl(&label, &dad, "0")?;
        }
        ethtool::tx_checksum_off(ifname).map_err(|error| TopoError::Ethtool {
            netns: label.clone(),
            ifname: ifname.to_string(),
            error,
        })?;
        let nl = Netlink::open(&label)?;
        nl.link_up("lo")?;
        let dev = nl.link_up(ifname)?;
        if let Some(v4) = pod.ipv4 {
            nl.addr_add(ifname, dev, IpAddr::V4(v4), 32, false)?;
            nl.route_v4(ifname, dev, GATEWAY_V4, 32, None)?;
            nl.route_v4(ifname, dev, Ipv4Addr::UNSPECIFIED, 0, Some(GATEWAY_V4))?;
        }
        if let Some(v6) = pod.ipv6 {
            nl.addr_add(ifname, dev, IpAddr::V6(v6), 128, true)?;
            nl.route_v6(ifname, dev, Ipv6Addr::UNSPECIFIED, 0, GATEWAY_V6)?;
        }
        Ok(())
    })?
}
