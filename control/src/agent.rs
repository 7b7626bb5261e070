//! The agent: compiles the cluster's desired state into one snapshot per
//! node and hands it to that node's dataplane (an atomically replaced file
//! the dataplane watches, so a restart of either side loses nothing: the
//! dataplane keeps forwarding on the last snapshot it loaded). Its inputs
//! come through [`ClusterSource`].

use crate::source::ClusterSource;
use crate::state::{write_atomic, StateDir};
use anyhow::Context;
use std::net::IpAddr;
use weir_dataplane::snapshot::{
    Encap, HostPort, ServiceBackend, ServiceFrontend, TunnelPeer, TunnelSpec, Underlay, UplinkSpec,
};
use weir_dataplane::{Endpoint, Port, Snapshot, SnapshotSpec};
use weir_policy::PolicyInput;
use weir_topo::Cluster;

/// Builds the snapshot for `node` at `generation`.
pub fn compile_node(
    cluster: &Cluster,
    input: &PolicyInput,
    node: &str,
    generation: u64,
) -> anyhow::Result<SnapshotSpec> {
    let n = cluster
        .node(node)
        .ok_or_else(|| anyhow::anyhow!("nodes/{node}: not in the cluster"))?;
    let mut pods: Vec<_> = cluster.pods.iter().filter(|p| p.node == node).collect();
    pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let mut ports = Vec::with_capacity(pods.len());
    let mut endpoints = Vec::with_capacity(pods.len());
    for (i, p) in pods.iter().enumerate() {
        let port = u16::try_from(i).map_err(|_| anyhow::anyhow!("nodes/{node}: too many pods"))?;
        ports.push(Port {
            name: p.host_ifname.clone(),
            mac: p.host_mac,
            mtu: u16::try_from(p.mtu).unwrap_or(u16::MAX),
        });
        endpoints.push(Endpoint {
            name: format!("{}/{}", p.namespace, p.name),
            port,
            mac: p.pod_mac,
            ipv4: p.ipv4,
            ipv6: p.ipv6,
        });
    }
    let host = host_port(cluster, n, &mut ports)?;
    // `weir.dev/host-ingress: policy`: this node's own addresses are no
    // host identity in its tables, so policies judge them as addresses.
    let judged;
    let input = if host_ingress_judged(n)? {
        let own = [n.ipv4.map(IpAddr::V4), n.ipv6.map(IpAddr::V6)];
        let mut i = input.clone();
        i.hosts.retain(|a| !own.contains(&Some(*a)));
        judged = i;
        &judged
    } else {
        input
    };
    let spec = SnapshotSpec {
        generation,
        node: node.to_string(),
        node_ipv4: n.ipv4,
        node_ipv6: n.ipv6,
        ports,
        endpoints,
        policy: weir_policy::compile_with_host(
            input,
            generation,
            node,
            host_endpoint(cluster, n).as_ref(),
        )?,
        tunnel: tunnel(cluster, n),
        services: services(cluster),
        host,
        uplink: uplink(cluster, n),
    };
    // Validate here so a bad snapshot never reaches a dataplane.
    Snapshot::build(spec.clone()).map_err(|e| anyhow::anyhow!("nodes/{node}: {e}"))?;
    Ok(spec)
}

/// The node as a host endpoint (host endpoint policy, docs/policy.md):
/// its Node labels, its own addresses behind the host port (`.1`, `::1`,
/// the underlay address) and the cluster's failsafe ports. `None` without
/// a host port (the node's traffic does not cross the dataplane).
pub fn host_endpoint(
    cluster: &Cluster,
    n: &weir_topo::RealizedNode,
) -> Option<weir_policy::HostEndpoint> {
    if !n.host_port || n.dataplane != weir_topo::NodeDataplane::Weir {
        return None;
    }
    let mut addrs: Vec<IpAddr> = Vec::new();
    addrs.extend(n.ipv4.map(IpAddr::V4));
    addrs.extend(n.ipv6.map(IpAddr::V6));
    if let Some(ul) = &n.underlay {
        addrs.push(IpAddr::V4(ul.ipv4));
        addrs.extend(ul.ipv6.map(IpAddr::V6));
    }
    Some(weir_policy::HostEndpoint {
        labels: n.labels.clone(),
        addrs,
        failsafe: cluster.host_failsafe.clone(),
    })
}

/// The Node label choosing how this node's own addresses meet its pods'
/// policies: `allow` (the default: the host identity, always allowed) or
/// `policy` (judged as addresses: ipBlock rules). See docs/policy.md.
pub const HOST_INGRESS_LABEL: &str = "weir.dev/host-ingress";

/// `weir.dev/host-ingress` of `n`: true for `policy`.
fn host_ingress_judged(n: &weir_topo::RealizedNode) -> anyhow::Result<bool> {
    match n.labels.get(HOST_INGRESS_LABEL).map(String::as_str) {
        None | Some("allow") => Ok(false),
        Some("policy") => Ok(true),
        Some(other) => anyhow::bail!(
            "nodes/{}: metadata.labels[{HOST_INGRESS_LABEL}]: {other:?} is not one of allow, policy",
            n.name
        ),
    }
}

/// The node's host port (a port after the pod ports) when topo made one,
/// with the node's addresses (its `.1`/`::1` and its underlay addresses).
fn host_port(
    cluster: &Cluster,
    n: &weir_topo::RealizedNode,
    ports: &mut Vec<Port>,
) -> anyhow::Result<Option<HostPort>> {
    if !n.host_port || n.dataplane != weir_topo::NodeDataplane::Weir {
        return Ok(None);
    }
    let port = u16::try_from(ports.len())
        .map_err(|_| anyhow::anyhow!("nodes/{}: too many pods", n.name))?;
    ports.push(Port {
        name: weir_topo::host::HOST_PORT_IFNAME.to_string(),
        mac: weir_topo::host::HOST_PORT_MAC,
        mtu: u16::try_from(host_port_mtu(cluster)).unwrap_or(u16::MAX),
    });
    let mut addrs: Vec<IpAddr> = Vec::new();
    addrs.extend(n.ipv4.map(IpAddr::V4));
    addrs.extend(n.ipv6.map(IpAddr::V6));
    if let Some(ul) = &n.underlay {
        addrs.push(IpAddr::V4(ul.ipv4));
        addrs.extend(ul.ipv6.map(IpAddr::V6));
    }
    Ok(Some(HostPort {
        port,
        node_mac: weir_topo::host::HOST_MAC,
        addrs,
    }))
}

/// The MTU of a node's host veth: the pods' (a node agent's cluster has
/// `pod_mtu` 0: its pods get the default, see `weir_topo::attach`).
pub fn host_port_mtu(cluster: &Cluster) -> u32 {
    if cluster.pod_mtu == 0 {
        weir_topo::BuildOptions::default().pod_mtu()
    } else {
        cluster.pod_mtu
    }
}

/// Every Service port of every ClusterIP as a frontend, with the
/// endpoints of the ClusterIP's family that serve that port (by the
/// Service port's name, as EndpointSlices resolve it). A terminating
/// endpoint stays as an inactive backend, so the flows it has drain.
/// Then every external address (`spec.externalIPs`, a load balancer's)
/// of a Service with a ClusterIP of its family, on the same ports with
/// the same backends: pods and the node reaching it are load balanced as
/// kube-proxy short-circuits them, over all the cluster's endpoints (no
/// node port, internalTrafficPolicy is the ClusterIP's). An address and
/// port two Services claim goes to the first by `namespace/name` (the
/// manifest path refuses the second).
pub fn services(cluster: &Cluster) -> Vec<ServiceFrontend> {
    let mut out = Vec::new();
    let mut sorted: Vec<_> = cluster.services.iter().collect();
    sorted.sort_by_key(|s| (&s.namespace, &s.name));
    for svc in &cluster.services {
        for ip in &svc.cluster_ips {
            for sp in &svc.ports {
                out.push(frontend(svc, sp, *ip, false));
            }
        }
    }
    let mut claimed = std::collections::HashSet::new();
    for svc in sorted {
        for ip in &svc.external_ips {
            if !svc.cluster_ips.iter().any(|c| c.is_ipv4() == ip.is_ipv4()) {
                continue;
            }
            for sp in &svc.ports {
                if claimed.insert((*ip, sp.protocol, sp.port)) {
                    out.push(frontend(svc, sp, *ip, true));
                }
            }
        }
    }
    out
}

/// Service port `sp` of `svc` at address `ip` (`external`: one of its
/// external addresses).
fn frontend(
    svc: &weir_model::service::ServiceInfo,
    sp: &weir_model::service::ServicePort,
    ip: std::net::IpAddr,
    external: bool,
) -> ServiceFrontend {
    let proto = match sp.protocol {
        weir_model::Protocol::Tcp => 6,
        weir_model::Protocol::Udp => 17,
        weir_model::Protocol::Sctp => 132,
    };
    let mut backends = Vec::new();
    for ep in &svc.endpoints {
        let Some(addr) = ep.addresses.iter().find(|a| a.is_ipv4() == ip.is_ipv4()) else {
            continue;
        };
        let Some(port) = ep
            .ports
            .iter()
            .find(|p| p.name == sp.name && p.protocol == sp.protocol)
        else {
            continue;
        };
        backends.push(ServiceBackend {
            pod: ep.pod.clone().unwrap_or_else(|| addr.to_string()),
            ip: *addr,
            port: port.port,
            active: ep.ready && !ep.terminating,
        });
    }
    backends.sort_by(|a, b| (&a.pod, a.ip).cmp(&(&b.pod, b.ip)));
    ServiceFrontend {
        service: svc.key(),
        port_name: sp.name.clone(),
        ip,
        proto,
        port: sp.port,
        backends,
        affinity_timeout_s: svc.affinity_timeout_s,
        node_port: sp
            .node_port
            .filter(|_| !external && svc.kind.has_node_ports()),
        external_local: svc.external_traffic == weir_model::service::TrafficPolicy::Local,
        internal_local: !external
            && svc.internal_traffic == weir_model::service::TrafficPolicy::Local,
        external,
    }
}

/// The overlay as `n` sees it: its underlay and VTEP, and every other node
/// as a peer (weir nodes carry identities on the wire, kernel nodes don't).
fn tunnel(cluster: &Cluster, n: &weir_topo::RealizedNode) -> Option<TunnelSpec> {
    let ul = n.underlay.as_ref()?;
    let peers = cluster
        .nodes
        .iter()
        .filter(|m| m.name != n.name)
        .filter_map(|m| {
            let mul = m.underlay.as_ref()?;
            Some(TunnelPeer {
                node: m.name.clone(),
                ipv4: mul.ipv4,
                mac: mul.mac,
                vtep_mac: m.vtep_mac,
                pod_cidrs: m
                    .pod_cidrs
                    .iter()
                    .map(|c| (c.network(), c.prefix_len()))
                    .collect(),
                identity_aware: m.dataplane == weir_topo::NodeDataplane::Weir,
            })
        })
        .collect();
    Some(TunnelSpec {
        encap: match cluster.encap {
            weir_topo::Encap::Vxlan => Encap::Vxlan,
            weir_topo::Encap::Geneve => Encap::Geneve,
        },
        vni: cluster.vni,
        udp_port: cluster.encap.udp_port(),
        underlay: Underlay {
            name: ul.ifname.clone(),
            mac: ul.mac,
            ipv4: ul.ipv4,
            mtu: u16::try_from(cluster.underlay_mtu).unwrap_or(1500),
        },
        vtep_mac: n.vtep_mac,
        peers,
    })
}

/// The node's way out to the world (docs/egress.md): in a local cluster
/// the world host is every node's gateway (its underlay address and MAC,
/// known since the topology was built). Cluster ranges (every podCIDR, the
/// Service ranges, the underlay subnet) never leave through it.
fn uplink(cluster: &Cluster, n: &weir_topo::RealizedNode) -> Option<UplinkSpec> {
    let w = cluster.world.as_ref()?;
    let ul = n.underlay.as_ref()?;
    let mut cidrs: Vec<ipnet::IpNet> = cluster
        .nodes
        .iter()
        .flat_map(|m| m.pod_cidrs.iter().copied())
        .collect();
    cidrs.extend(cluster.service_ranges());
    cidrs.extend(
        ipnet::Ipv4Net::new(ul.ipv4, ul.prefix_len)
            .ok()
            .map(|n| ipnet::IpNet::V4(n.trunc())),
    );
    // The local cluster's IPv6 underlay range (a node agent's uplink
    // address on a real network is outside it: that network is the world's).
    let underlay6 = ipnet::Ipv6Net::new(
        weir_topo::overlay::UNDERLAY_V6_NET,
        weir_topo::overlay::UNDERLAY_V6_PREFIX_LEN,
    )
    .ok();
    cidrs.extend(
        underlay6
            .filter(|n| ul.ipv6.is_some_and(|a| n.contains(&a)))
            .map(ipnet::IpNet::V6),
    );
    let pairs = |v: &[ipnet::IpNet]| v.iter().map(|c| (c.network(), c.prefix_len())).collect();
    Some(UplinkSpec {
        gateway_ipv4: w.ipv4,
        gateway_mac: w.mac,
        cluster_cidrs: pairs(&cidrs),
        non_masquerade: pairs(&cluster.non_masquerade),
        pod_cidr_v4: n.pod_cidrs.iter().find_map(|c| match c {
            ipnet::IpNet::V4(c) => Some((c.network(), c.prefix_len())),
            ipnet::IpNet::V6(_) => None,
        }),
        // SNAT66 needs both ends on the IPv6 underlay.
        node_ipv6: ul.ipv6.filter(|_| w.ipv6.is_some()),
        gateway_ipv6: w.ipv6.filter(|_| ul.ipv6.is_some()),
        // The IPv6 gateway's own MAC when it is another router (a node
        // agent's IPv6 default route); `None`: `gateway_mac`.
        gateway_mac_v6: w.mac_v6.filter(|_| ul.ipv6.is_some()),
        pod_cidr_v6: n.pod_cidrs.iter().find_map(|c| match c {
            ipnet::IpNet::V6(c) => Some((c.network(), c.prefix_len())),
            ipnet::IpNet::V4(_) => None,
        }),
    })
}

/// The nodes weir serves (kernel-dataplane nodes have no weir on them).
pub fn weir_nodes(cluster: &Cluster) -> impl Iterator<Item = &weir_topo::RealizedNode> {
    cluster
        .nodes
        .iter()
        .filter(|n| n.dataplane == weir_topo::NodeDataplane::Weir)
}

/// Compiles and publishes snapshots for every node of `source`; returns
/// the generation.
pub fn publish(state: &StateDir, source: &impl ClusterSource) -> anyhow::Result<u64> {
    publish_for(state, source, None)
}

/// [`publish`] for one node only (`Some(node)`): a node agent compiles its
/// own node; the other nodes of its cluster are peers it does not serve.
pub fn publish_for(
    state: &StateDir,
    source: &impl ClusterSource,
    only: Option<&str>,
) -> anyhow::Result<u64> {
    let cluster = source.cluster();
    let generation = next_generation(state, cluster);
    let input = PolicyInput::from_cluster(cluster, source.policies()?);
    // Compile every node before publishing any: all or nothing.
    let mut specs = Vec::new();
    for n in weir_nodes(cluster).filter(|n| only.is_none_or(|o| o == n.name)) {
        specs.push((
            n.name.clone(),
            compile_node(cluster, &input, &n.name, generation)?,
        ));
    }
    // The node's own outbound traffic under host policy: its nftables
    // table, rendered before anything is published (all or nothing).
    let mut host_tables = Vec::new();
    for (node, spec) in &specs {
        let text = crate::host_egress::ruleset(
            &spec.policy,
            &cluster.host_failsafe.outbound,
            weir_topo::host::HOST_IFNAME,
        )
        .with_context(|| format!("nodes/{node}"))?;
        let netns = cluster.node(node).map(|n| n.netns.clone());
        host_tables.push((node.clone(), netns, text));
    }
    for (node, spec) in specs {
        write_atomic(&state.snapshot_file(&node), &serde_json::to_vec(&spec)?)?;
    }
    // Applied after the snapshots: a failure (nft missing, the netns gone)
    // leaves the node's previous table in force and is one error line.
    let mut failed = Vec::new();
    for (node, netns, text) in host_tables {
        let Some(netns) = netns.filter(|n| !n.is_empty()) else {
            continue;
        };
        if let Err(e) = crate::host_egress::sync(state, &node, &netns, text.as_deref()) {
            log::error!("{e:#}");
            failed.push(format!("{e:#}"));
        }
    }
    anyhow::ensure!(failed.is_empty(), "{}", failed.join("; "));
    Ok(generation)
}

/// Checks that the policies of `source` compile for its cluster (every
/// node), publishing nothing.
pub fn check(source: &impl ClusterSource) -> anyhow::Result<()> {
    check_for(source, None)
}

/// [`check`] for one node only (`Some(node)`).
pub fn check_for(source: &impl ClusterSource, only: Option<&str>) -> anyhow::Result<()> {
    let cluster = source.cluster();
    let input = PolicyInput::from_cluster(cluster, source.policies()?);
    for n in weir_nodes(cluster).filter(|n| only.is_none_or(|o| o == n.name)) {
        compile_node(cluster, &input, &n.name, 0)?;
    }
    Ok(())
}

/// One more than the highest generation published to any node so far.
fn next_generation(state: &StateDir, cluster: &Cluster) -> u64 {
    weir_nodes(cluster)
        .filter_map(|n| read_snapshot(state, &n.name).ok())
        .map(|s| s.generation)
        .max()
        .unwrap_or(0)
        + 1
}

pub fn read_snapshot(state: &StateDir, node: &str) -> anyhow::Result<SnapshotSpec> {
    let path = state.snapshot_file(node);
    let bytes = std::fs::read(&path).with_context(|| path.display().to_string())?;
    Ok(serde_json::from_slice(&bytes)?)
}
