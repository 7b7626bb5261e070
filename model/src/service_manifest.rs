//! `kind: Service` (v1) manifests: parsed and checked into a
//! [`ServiceSpec`] (the Service as written), then resolved against the
//! cluster into a [`ServiceInfo`] (ClusterIPs allocated, endpoints derived
//! from the pods the selector picks).
//!
//! What is read: `metadata.name/namespace`, `spec.type` (`ClusterIP`, the
//! default, `NodePort` or `LoadBalancer`; `ExternalName` is refused),
//! `spec.externalIPs`, `spec.loadBalancerIP` (the load balancer's address:
//! weir's local cluster has no load-balancer controller, so the address
//! the Service asks for is the one it gets; without one the Service has
//! node ports only, as a pending LoadBalancer), `spec.allocateLoadBalancerNodePorts`,
//! `spec.clusterIP(s)` (`None`: headless), `spec.ipFamilies`,
//! `spec.ipFamilyPolicy`, `spec.selector`, `spec.ports[*]`
//! (`name`, `protocol`, `port`, `targetPort`, `nodePort`),
//! `spec.sessionAffinity` and `spec.sessionAffinityConfig.clientIP.timeoutSeconds`
//! (default 10800, 1-86400), `spec.externalTrafficPolicy`,
//! `spec.internalTrafficPolicy`. Every other field Kubernetes defines is
//! accepted and not read; any other field is refused.
//!
//! ClusterIPs ([`allocate_cluster_ips`]): one per family the Service asks
//! for, from [`SERVICE_RANGE_V4`] (10.96.0.0/16) and [`SERVICE_RANGE_V6`]
//! (fd00:96::/112); a given address must be inside its family's range and
//! free. Families: `SingleStack` (the default) takes `ipFamilies[0]`, else
//! the cluster's first family (IPv4 when it has it); `PreferDualStack`
//! takes every family the cluster has (in `ipFamilies` order);
//! `RequireDualStack` needs a dual-stack cluster. Dynamic allocation takes
//! the lowest free address after the network address (deterministic, so
//! tests and docs can name it).
//!
//! Endpoints ([`derive_endpoints`]): every pod of the Service's namespace
//! whose labels match the selector is an endpoint (ready: the pod exists);
//! a numeric `targetPort` is used as is, a named one is looked up in the
//! pod's container ports (same protocol) and a pod without that name is
//! not an endpoint of that port. A name no selected pod has is a warning
//! (Kubernetes semantics), not an error.
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};

use crate::fields::{self, FieldValidation};
use crate::manifest::{
    ContainerPort, Document, ManifestError, ObjectMeta, Protocol, DEFAULT_NAMESPACE,
};
use crate::names;
use crate::service::{
    EndpointPort, ServiceEndpoint, ServiceInfo, ServicePort, ServiceType, TargetPort,
    TrafficPolicy, NODE_PORT_FIRST, NODE_PORT_LAST,
};

/// The IPv4 Service range (kube-apiserver's usual `--service-cluster-ip-range`).
pub const SERVICE_RANGE_V4: &str = "10.96.0.0/16";
/// The IPv6 Service range (/112: the largest Kubernetes allows).
pub const SERVICE_RANGE_V6: &str = "fd00:96::/112";
/// `sessionAffinityConfig.clientIP.timeoutSeconds` when not given.
pub const DEFAULT_AFFINITY_TIMEOUT_S: u32 = 10800;

/// `spec.ipFamilyPolicy`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum IpFamilyPolicy {
    #[default]
    SingleStack,
    PreferDualStack,
    RequireDualStack,
}

/// An IP family (`spec.ipFamilies`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum IpFamily {
    IPv4,
    IPv6,
}

impl IpFamily {
    fn of(ip: &IpAddr) -> IpFamily {
        match ip {
            IpAddr::V4(_) => IpFamily::IPv4,
            IpAddr::V6(_) => IpFamily::IPv6,
        }
    }
}

/// A Service as written (cluster IPs only when given; no endpoints yet).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSpec {
    /// Everything but allocated ClusterIPs and endpoints.
    pub info: ServiceInfo,
    /// `spec.clusterIP: None`.
    pub headless: bool,
    pub ip_families: Vec<IpFamily>,
    pub ip_family_policy: IpFamilyPolicy,
    /// `spec.allocateLoadBalancerNodePorts` (LoadBalancer; default true):
    /// false leaves ports without a given `nodePort` without one.
    #[serde(default = "yes")]
    pub allocate_lb_node_ports: bool,
}

fn yes() -> bool {
    true
}

impl ServiceSpec {
    /// `services/<namespace>/<name>`, the prefix of this Service's errors.
    pub fn object(&self) -> String {
        format!("services/{}/{}", self.info.namespace, self.info.name)
    }
}

// ---- wire shapes ----

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct RawService {
    api_version: Option<String>,
    kind: Option<String>,
    metadata: ObjectMeta,
    spec: RawServiceSpec,
    // Defined by Kubernetes, not read by weir:
    status: Option<IgnoredAny>,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
struct RawServiceSpec {
    ports: Vec<RawServicePort>,
    selector: Option<BTreeMap<String, String>>,
    #[serde(rename = "clusterIP")]
    cluster_ip: Option<String>,
    #[serde(rename = "clusterIPs")]
    cluster_ips: Option<Vec<String>>,
    #[serde(rename = "type")]
    kind: Option<String>,
    session_affinity: Option<String>,
    session_affinity_config: Option<RawAffinityConfig>,
    ip_families: Option<Vec<String>>,
    ip_family_policy: Option<String>,
    external_traffic_policy: Option<String>,
    internal_traffic_policy: Option<String>,
    #[serde(rename = "externalIPs")]
    external_ips: Option<Vec<String>>,
    #[serde(rename = "loadBalancerIP")]
    load_balancer_ip: Option<String>,
    allocate_load_balancer_node_ports: Option<bool>,
    // Defined by Kubernetes, not read by weir:
    load_balancer_source_ranges: Option<IgnoredAny>,
    load_balancer_class: Option<IgnoredAny>,
    external_name: Option<IgnoredAny>,
    health_check_node_port: Option<IgnoredAny>,
    publish_not_ready_addresses: Option<IgnoredAny>,
    traffic_distribution: Option<IgnoredAny>,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
struct RawAffinityConfig {
    #[serde(rename = "clientIP")]
    client_ip: Option<RawClientIpConfig>,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
struct RawClientIpConfig {
    timeout_seconds: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
struct RawServicePort {
    name: Option<String>,
    protocol: Option<String>,
    port: Option<i64>,
    /// int-or-string, checked by hand.
    target_port: Option<serde_yaml::Value>,
    node_port: Option<i64>,
    // Defined by Kubernetes, not read by weir:
    app_protocol: Option<IgnoredAny>,
}

/// The field tree of `Service`, for the strictness tests.
pub(crate) fn field_tree() -> fields::Shape {
    fields::field_tree::<RawService>()
}

fn invalid(object: &str, field: impl Into<String>, msg: impl Into<String>) -> ManifestError {
    ManifestError::Invalid {
        object: object.to_string(),
        field: field.into(),
        msg: msg.into(),
    }
}

/// Parses and checks one `kind: Service` document (fields on their own;
/// ClusterIPs against the ranges and the cluster come with [`allocate_cluster_ips`]).
pub(crate) fn parse_service(
    doc: &Document,
    mode: FieldValidation,
    ignored: &mut Vec<String>,
) -> Result<ServiceSpec, ManifestError> {
    let fallback = format!("{}: document {} (Service)", doc.file, doc.index);
    let raw: RawService = match fields::decode::<RawService>(&doc.value, mode) {
        Ok((t, d)) => {
            ignored.extend(d.ignored.into_iter().map(|p| format!("{fallback}: {p}")));
            t
        }
        Err(e) => return Err(invalid(&fallback, e.path, e.msg)),
    };
    let name = raw
        .metadata
        .name
        .clone()
        .ok_or_else(|| invalid(&fallback, "metadata.name", "required"))?;
    let namespace = raw
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string());
    let object = format!("services/{namespace}/{name}");
    names::dns1123_label(&namespace).map_err(|e| invalid(&object, "metadata.namespace", e))?;
    // Service names are DNS-1035 labels; DNS-1123 labels are close enough
    // except for a leading digit, refused here too.
    names::dns1123_label(&name).map_err(|e| invalid(&object, "metadata.name", e))?;
    if name.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(invalid(
            &object,
            "metadata.name",
            "must start with a letter (DNS-1035 label)",
        ));
    }
    let spec = raw.spec;
    let kind = match spec.kind.as_deref() {
        None | Some("ClusterIP") => ServiceType::ClusterIP,
        Some("NodePort") => ServiceType::NodePort,
        Some("LoadBalancer") => ServiceType::LoadBalancer,
        Some(other @ "ExternalName") => {
            return Err(invalid(
                &object,
                "spec.type",
                format!("{other} is not implemented by weir"),
            ))
        }
        Some(other) => {
            return Err(invalid(
                &object,
                "spec.type",
                format!("{other:?} is not one of ClusterIP, NodePort, LoadBalancer"),
            ))
        }
    };
    if let Some(sel) = &spec.selector {
        for (k, v) in sel {
            names::label_key(k).map_err(|e| invalid(&object, "spec.selector", e))?;
            names::label_value(v)
                .map_err(|e| invalid(&object, format!("spec.selector[{k}]"), e))?;
        }
    }
    // clusterIP / clusterIPs.
    let mut given: Vec<String> = spec.cluster_ips.clone().unwrap_or_default();
    if let Some(one) = &spec.cluster_ip {
        match given.first() {
            None => given.push(one.clone()),
            Some(first) if first == one => {}
            Some(first) => {
                return Err(invalid(
                    &object,
                    "spec.clusterIPs[0]",
                    format!("{first} must equal spec.clusterIP {one}"),
                ))
            }
        }
    }
    let headless = given.first().is_some_and(|s| s == "None");
    let mut cluster_ips = Vec::new();
    if headless {
        if given.len() > 1 {
            return Err(invalid(
                &object,
                "spec.clusterIPs",
                "None (headless) must be the only entry",
            ));
        }
    } else {
        for (i, s) in given.iter().enumerate() {
            let ip: IpAddr = s.parse().map_err(|_| {
                invalid(
                    &object,
                    format!("spec.clusterIPs[{i}]"),
                    format!("{s:?} is not an IP address"),
                )
            })?;
            if cluster_ips
                .iter()
                .any(|c: &IpAddr| IpFamily::of(c) == IpFamily::of(&ip))
            {
                return Err(invalid(
                    &object,
                    format!("spec.clusterIPs[{i}]"),
                    "at most one address per family",
                ));
            }
            cluster_ips.push(ip);
        }
    }
    let mut ip_families = Vec::new();
    for (i, f) in spec.ip_families.iter().flatten().enumerate() {
        let fam = match f.as_str() {
            "IPv4" => IpFamily::IPv4,
            "IPv6" => IpFamily::IPv6,
            other => {
                return Err(invalid(
                    &object,
                    format!("spec.ipFamilies[{i}]"),
                    format!("{other:?} is not one of IPv4, IPv6"),
                ))
            }
        };
        if ip_families.contains(&fam) {
            return Err(invalid(
                &object,
                format!("spec.ipFamilies[{i}]"),
                "given twice",
            ));
        }
        ip_families.push(fam);
    }
    let ip_family_policy = match spec.ip_family_policy.as_deref() {
        None | Some("SingleStack") => IpFamilyPolicy::SingleStack,
        Some("PreferDualStack") => IpFamilyPolicy::PreferDualStack,
        Some("RequireDualStack") => IpFamilyPolicy::RequireDualStack,
        Some(other) => {
            return Err(invalid(
                &object,
                "spec.ipFamilyPolicy",
                format!("{other:?} is not one of SingleStack, PreferDualStack, RequireDualStack"),
            ))
        }
    };
    if ip_family_policy == IpFamilyPolicy::SingleStack
        && (ip_families.len() > 1 || cluster_ips.len() > 1)
    {
        return Err(invalid(
            &object,
            "spec.ipFamilyPolicy",
            "SingleStack allows one family (use PreferDualStack or RequireDualStack)",
        ));
    }
    for (i, ip) in cluster_ips.iter().enumerate() {
        if let Some(f) = ip_families.get(i) {
            if *f != IpFamily::of(ip) {
                return Err(invalid(
                    &object,
                    format!("spec.clusterIPs[{i}]"),
                    format!("{ip} is not of family {f:?} (spec.ipFamilies[{i}])"),
                ));
            }
        }
    }
    // Ports.
    if spec.ports.is_empty() && !headless {
        return Err(invalid(&object, "spec.ports", "required"));
    }
    let mut ports = Vec::new();
    let mut seen: HashSet<(u16, Protocol)> = HashSet::new();
    let mut names_seen: HashSet<&str> = HashSet::new();
    for (i, p) in spec.ports.iter().enumerate() {
        let path = format!("spec.ports[{i}]");
        let protocol = match p.protocol.as_deref() {
            None | Some("TCP") => Protocol::Tcp,
            Some("UDP") => Protocol::Udp,
            Some("SCTP") => Protocol::Sctp,
            Some(other) => {
                return Err(invalid(
                    &object,
                    format!("{path}.protocol"),
                    format!("{other:?} is not one of TCP, UDP, SCTP"),
                ))
            }
        };
        let port = match p.port {
            None => return Err(invalid(&object, format!("{path}.port"), "required")),
            Some(n) if !(1..=65535).contains(&n) => {
                return Err(invalid(
                    &object,
                    format!("{path}.port"),
                    format!("{n} is out of range 1-65535"),
                ))
            }
            Some(n) => n as u16,
        };
        if !seen.insert((port, protocol)) {
            return Err(invalid(
                &object,
                format!("{path}.port"),
                format!("{port}/{protocol} is declared twice"),
            ));
        }
        match &p.name {
            Some(n) => {
                names::dns1123_label(n).map_err(|e| invalid(&object, format!("{path}.name"), e))?;
                if !names_seen.insert(n.as_str()) {
                    return Err(invalid(
                        &object,
                        format!("{path}.name"),
                        format!("{n:?} is used twice"),
                    ));
                }
            }
            None if spec.ports.len() > 1 => {
                return Err(invalid(
                    &object,
                    format!("{path}.name"),
                    "required when the Service has several ports",
                ))
            }
            None => {}
        }
        let target = match &p.target_port {
            None => TargetPort::Number(port),
            Some(v) => {
                if let Some(n) = v.as_i64() {
                    if !(1..=65535).contains(&n) {
                        return Err(invalid(
                            &object,
                            format!("{path}.targetPort"),
                            format!("{n} is out of range 1-65535"),
                        ));
                    }
                    TargetPort::Number(n as u16)
                } else if let Some(s) = v.as_str() {
                    names::iana_svc_name(s)
                        .map_err(|e| invalid(&object, format!("{path}.targetPort"), e))?;
                    TargetPort::Name(s.to_string())
                } else {
                    return Err(invalid(
                        &object,
                        format!("{path}.targetPort"),
                        "must be a port number or a port name",
                    ));
                }
            }
        };
        let node_port = match p.node_port {
            None => None,
            Some(_) if !kind.has_node_ports() => {
                return Err(invalid(
                    &object,
                    format!("{path}.nodePort"),
                    "only a NodePort or LoadBalancer Service has node ports",
                ))
            }
            Some(n) if !(i64::from(NODE_PORT_FIRST)..=i64::from(NODE_PORT_LAST)).contains(&n) => {
                return Err(invalid(
                    &object,
                    format!("{path}.nodePort"),
                    format!("{n} is not in the valid range {NODE_PORT_FIRST}-{NODE_PORT_LAST}"),
                ))
            }
            Some(n) => Some(n as u16),
        };
        ports.push(ServicePort {
            name: p.name.clone(),
            protocol,
            port,
            target,
            node_port,
        });
    }
    let affinity_timeout_s = match spec.session_affinity.as_deref() {
        None | Some("None") => {
            if spec.session_affinity_config.is_some() {
                return Err(invalid(
                    &object,
                    "spec.sessionAffinityConfig",
                    "only with sessionAffinity: ClientIP",
                ));
            }
            None
        }
        Some("ClientIP") => {
            let t = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds);
            match t {
                None => Some(DEFAULT_AFFINITY_TIMEOUT_S),
                Some(n) if (1..=86400).contains(&n) => Some(n as u32),
                Some(n) => {
                    return Err(invalid(
                        &object,
                        "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                        format!("{n} is out of range 1-86400"),
                    ))
                }
            }
        }
        Some(other) => {
            return Err(invalid(
                &object,
                "spec.sessionAffinity",
                format!("{other:?} is not one of None, ClientIP"),
            ))
        }
    };
    let traffic = |field: &str, v: &Option<String>| match v.as_deref() {
        None | Some("Cluster") => Ok(TrafficPolicy::Cluster),
        Some("Local") => Ok(TrafficPolicy::Local),
        Some(other) => Err(invalid(
            &object,
            field,
            format!("{other:?} is not one of Cluster, Local"),
        )),
    };
    let external_traffic = traffic("spec.externalTrafficPolicy", &spec.external_traffic_policy)?;
    let internal_traffic = traffic("spec.internalTrafficPolicy", &spec.internal_traffic_policy)?;
    let mut external_ips = Vec::new();
    for (i, a) in spec.external_ips.iter().flatten().enumerate() {
        external_ips.push(
            external_ip(a).map_err(|e| invalid(&object, format!("spec.externalIPs[{i}]"), e))?,
        );
    }
    if let Some(a) = &spec.load_balancer_ip {
        if kind != ServiceType::LoadBalancer {
            return Err(invalid(
                &object,
                "spec.loadBalancerIP",
                "only a LoadBalancer Service has one",
            ));
        }
        let ip = external_ip(a).map_err(|e| invalid(&object, "spec.loadBalancerIP", e))?;
        if !external_ips.contains(&ip) {
            external_ips.push(ip);
        }
    }
    if kind == ServiceType::LoadBalancer && headless {
        return Err(invalid(
            &object,
            "spec.clusterIP",
            "a LoadBalancer Service cannot be headless",
        ));
    }
    let allocate_lb_node_ports = match spec.allocate_load_balancer_node_ports {
        Some(_) if kind != ServiceType::LoadBalancer => {
            return Err(invalid(
                &object,
                "spec.allocateLoadBalancerNodePorts",
                "only for a LoadBalancer Service",
            ))
        }
        v => v.unwrap_or(true),
    };
    Ok(ServiceSpec {
        info: ServiceInfo {
            namespace,
            name,
            kind,
            cluster_ips,
            ports,
            selector: spec.selector,
            affinity_timeout_s,
            external_traffic,
            internal_traffic,
            endpoints: Vec::new(),
            external_ips,
        },
        headless,
        ip_families,
        ip_family_policy,
        allocate_lb_node_ports,
    })
}

/// An address of `spec.externalIPs` / `spec.loadBalancerIP`: a unicast
/// address outside the Service ranges (loopback, link-local, multicast and
/// the unspecified address are refused, as kube-apiserver refuses them).
pub fn external_ip(s: &str) -> Result<IpAddr, String> {
    let ip: IpAddr = s
        .parse()
        .map_err(|e| format!("{s:?} is not an IP address: {e}"))?;
    let bad = match ip {
        IpAddr::V4(a) => {
            a.is_unspecified() || a.is_loopback() || a.is_link_local() || a.is_multicast()
        }
        IpAddr::V6(a) => {
            a.is_unspecified()
                || a.is_loopback()
                || a.is_multicast()
                || (a.segments()[0] & 0xffc0) == 0xfe80
        }
    };
    if bad {
        return Err(format!(
            "{ip} is not usable (loopback, link-local, multicast or unspecified)"
        ));
    }
    if range(IpFamily::IPv4).contains(&ip) || range(IpFamily::IPv6).contains(&ip) {
        return Err(format!("{ip} is inside the Service range"));
    }
    Ok(ip)
}

fn range(family: IpFamily) -> IpNet {
    match family {
        IpFamily::IPv4 => SERVICE_RANGE_V4.parse().expect("literal CIDR"),
        IpFamily::IPv6 => SERVICE_RANGE_V6.parse().expect("literal CIDR"),
    }
}

/// The node ports of a NodePort Service's ports, as kube-apiserver assigns
/// them: a given nodePort must not be used by another Service (`taken`);
/// a missing one keeps the port's previous node port (`previous`, the same
/// Service before this update, matched by protocol and port) or gets the
/// lowest free one of the range. One Service may use a node port for TCP
/// and UDP alike, never twice for one protocol. Other types: unchanged.
pub fn allocate_node_ports(
    spec: &ServiceSpec,
    previous: Option<&ServiceInfo>,
    taken: &HashSet<u16>,
) -> Result<Vec<ServicePort>, ManifestError> {
    let object = spec.object();
    let mut ports = spec.info.ports.clone();
    if !spec.info.kind.has_node_ports() {
        return Ok(ports);
    }
    for i in 0..ports.len() {
        let path = format!("spec.ports[{i}].nodePort");
        if let Some(n) = ports[i].node_port {
            if taken.contains(&n) {
                return Err(invalid(&object, path, format!("{n} is already allocated")));
            }
            let twice = ports[..i]
                .iter()
                .any(|o| o.node_port == Some(n) && o.protocol == ports[i].protocol);
            if twice {
                return Err(invalid(
                    &object,
                    path,
                    format!("{n} is used twice for {:?}", ports[i].protocol),
                ));
            }
        }
    }
    for i in 0..ports.len() {
        if ports[i].node_port.is_some() || !spec.allocate_lb_node_ports {
            continue;
        }
        let (proto, port) = (ports[i].protocol, ports[i].port);
        let mine: HashSet<u16> = ports.iter().filter_map(|p| p.node_port).collect();
        let same_proto = |n: u16| {
            ports
                .iter()
                .any(|p| p.protocol == proto && p.node_port == Some(n))
        };
        let kept = previous
            .into_iter()
            .flat_map(|p| &p.ports)
            .find(|p| p.protocol == proto && p.port == port)
            .and_then(|p| p.node_port)
            .filter(|&n| !taken.contains(&n) && !same_proto(n));
        let n = match kept {
            Some(n) => n,
            None => (NODE_PORT_FIRST..=NODE_PORT_LAST)
                .find(|n| !taken.contains(n) && !mine.contains(n))
                .ok_or_else(|| {
                    invalid(
                        &object,
                        format!("spec.ports[{i}].nodePort"),
                        format!("the node port range {NODE_PORT_FIRST}-{NODE_PORT_LAST} is full"),
                    )
                })?,
        };
        ports[i].node_port = Some(n);
    }
    Ok(ports)
}

/// The ClusterIPs of `spec` in a cluster with `families` (in the cluster's
/// order) where `taken` are in use by other Services: the given ones
/// checked, the missing ones allocated (see the module doc).
pub fn allocate_cluster_ips(
    spec: &ServiceSpec,
    cluster_families: &[IpFamily],
    taken: &HashSet<IpAddr>,
) -> Result<Vec<IpAddr>, ManifestError> {
    let object = spec.object();
    if spec.headless {
        return Ok(Vec::new());
    }
    // Which families, in order.
    let mut wanted: Vec<IpFamily> = spec.ip_families.clone();
    for ip in &spec.info.cluster_ips {
        let f = IpFamily::of(ip);
        if !wanted.contains(&f) {
            wanted.push(f);
        }
    }
    match spec.ip_family_policy {
        IpFamilyPolicy::SingleStack => {
            if wanted.is_empty() {
                wanted.extend(cluster_families.first());
            }
        }
        IpFamilyPolicy::PreferDualStack | IpFamilyPolicy::RequireDualStack => {
            for f in cluster_families {
                if !wanted.contains(f) {
                    wanted.push(*f);
                }
            }
        }
    }
    if spec.ip_family_policy == IpFamilyPolicy::RequireDualStack && cluster_families.len() < 2 {
        return Err(invalid(
            &object,
            "spec.ipFamilyPolicy",
            "RequireDualStack, but the cluster is single-stack",
        ));
    }
    let mut out = Vec::new();
    for f in wanted {
        if !cluster_families.contains(&f) {
            return Err(invalid(
                &object,
                "spec.ipFamilies",
                format!("the cluster has no {f:?} pod network"),
            ));
        }
        let net = range(f);
        if let Some(ip) = spec
            .info
            .cluster_ips
            .iter()
            .find(|ip| IpFamily::of(ip) == f)
        {
            let edge = *ip == net.network() || *ip == net.broadcast();
            if !net.contains(ip) || edge {
                return Err(invalid(
                    &object,
                    "spec.clusterIPs",
                    format!("{ip} is outside the service range {net}"),
                ));
            }
            if taken.contains(ip) {
                return Err(invalid(
                    &object,
                    "spec.clusterIPs",
                    format!("{ip} is already allocated"),
                ));
            }
            out.push(*ip);
            continue;
        }
        let ip = first_free(net, |ip| taken.contains(ip) || out.contains(ip)).ok_or_else(|| {
            invalid(
                &object,
                "spec.clusterIPs",
                format!("the service range {net} is full"),
            )
        })?;
        out.push(ip);
    }
    Ok(out)
}

fn first_free(net: IpNet, used: impl Fn(&IpAddr) -> bool) -> Option<IpAddr> {
    match net {
        IpNet::V4(n) => {
            let base = u32::from(n.network());
            let size = 1u64 << (32 - n.prefix_len());
            (1..size.saturating_sub(1))
                .map(|i| IpAddr::V4(Ipv4Addr::from(base + i as u32)))
                .find(|ip| !used(ip))
        }
        IpNet::V6(n) => {
            let base = u128::from(n.network());
            let size = 1u128 << (128 - n.prefix_len()).min(127);
            (1..size.saturating_sub(1))
                .map(|i| IpAddr::V6(Ipv6Addr::from(base + i)))
                .find(|ip| !used(ip))
        }
    }
}

/// A pod as the endpoint derivation sees it.
#[derive(Clone, Copy, Debug)]
pub struct EndpointPod<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub node: &'a str,
    pub labels: &'a BTreeMap<String, String>,
    pub ports: &'a [ContainerPort],
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
}

/// Fills `svc.endpoints` from the pods its selector picks (a Service
/// without selector keeps its endpoints). Returns the warnings: one per
/// Service port whose named targetPort no selected pod declares.
pub fn derive_endpoints<'a>(
    svc: &mut ServiceInfo,
    pods: impl IntoIterator<Item = EndpointPod<'a>>,
) -> Vec<String> {
    let Some(selector) = svc.selector.clone() else {
        return Vec::new();
    };
    let mut endpoints = Vec::new();
    let mut resolved = vec![false; svc.ports.len()];
    for pod in pods {
        if pod.namespace != svc.namespace
            || selector.is_empty()
            || !selector.iter().all(|(k, v)| pod.labels.get(k) == Some(v))
        {
            continue;
        }
        let mut ports = Vec::new();
        for (i, sp) in svc.ports.iter().enumerate() {
            let number = match &sp.target {
                TargetPort::Number(n) => Some(*n),
                TargetPort::Name(name) => pod
                    .ports
                    .iter()
                    .find(|c| c.protocol == sp.protocol && c.name.as_deref() == Some(name))
                    .map(|c| c.port),
            };
            if let Some(port) = number {
                resolved[i] = true;
                ports.push(EndpointPort {
                    name: sp.name.clone(),
                    protocol: sp.protocol,
                    port,
                });
            }
        }
        let addresses: Vec<IpAddr> = pod
            .ipv4
            .map(IpAddr::V4)
            .into_iter()
            .chain(pod.ipv6.map(IpAddr::V6))
            .collect();
        if ports.is_empty() || addresses.is_empty() {
            continue;
        }
        endpoints.push(ServiceEndpoint {
            addresses,
            pod: Some(format!("{}/{}", pod.namespace, pod.name)),
            node: Some(pod.node.to_string()),
            ready: true,
            serving: true,
            terminating: false,
            ports,
        });
    }
    endpoints.sort_by(|a, b| a.pod.cmp(&b.pod));
    svc.endpoints = endpoints;
    let mut warnings = Vec::new();
    for (sp, ok) in svc.ports.iter().zip(resolved) {
        if let (TargetPort::Name(n), false) = (&sp.target, ok) {
            warnings.push(format!(
                "services/{}/{}: port {}/{}: targetPort {n:?}: no selected pod declares this port name; no endpoints for it",
                svc.namespace, svc.name, sp.port, sp.protocol
            ));
        }
    }
    warnings
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::split_documents;

    fn parse(text: &str) -> Result<ServiceSpec, ManifestError> {
        let docs = split_documents(text, "t.yaml")?;
        parse_service(&docs[0], FieldValidation::Strict, &mut Vec::new())
    }

    const WEB: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  selector: {app: web}\n  ports:\n  - {name: http, port: 80, targetPort: http}\n  - {name: dns, port: 53, protocol: UDP, targetPort: 5353}\n";

    #[test]
    fn parses_and_allocates() {
        let s = parse(WEB).unwrap();
        assert_eq!(s.info.ports.len(), 2);
        assert_eq!(s.info.ports[0].target, TargetPort::Name("http".into()));
        let fams = [IpFamily::IPv4, IpFamily::IPv6];
        let ips = allocate_cluster_ips(&s, &fams, &HashSet::new()).unwrap();
        assert_eq!(ips, vec!["10.96.0.1".parse::<IpAddr>().unwrap()]);
        let mut dual = s.clone();
        dual.ip_family_policy = IpFamilyPolicy::PreferDualStack;
        let taken: HashSet<IpAddr> = ips.into_iter().collect();
        let ips = allocate_cluster_ips(&dual, &fams, &taken).unwrap();
        assert_eq!(
            ips,
            vec![
                "10.96.0.2".parse::<IpAddr>().unwrap(),
                "fd00:96::1".parse().unwrap()
            ]
        );
    }

    const LB: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: lb}\nspec:\n  type: LoadBalancer\n  loadBalancerIP: 192.0.2.80\n  externalIPs: [198.51.100.7, 2001:db8::7]\n  selector: {app: web}\n  ports:\n  - {name: tcp, port: 80}\n";

    #[test]
    fn load_balancers_get_node_ports_and_external_addresses() {
        let s = parse(LB).unwrap();
        assert_eq!(s.info.kind, ServiceType::LoadBalancer);
        let ips: Vec<IpAddr> = ["198.51.100.7", "2001:db8::7", "192.0.2.80"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        assert_eq!(s.info.external_ips, ips);
        let got = allocate_node_ports(&s, None, &HashSet::new()).unwrap();
        assert_eq!(got[0].node_port, Some(30000));
        let no = parse(&LB.replace(
            "  type: LoadBalancer\n",
            "  type: LoadBalancer\n  allocateLoadBalancerNodePorts: false\n",
        ))
        .unwrap();
        assert_eq!(
            allocate_node_ports(&no, None, &HashSet::new()).unwrap()[0].node_port,
            None
        );
        // A ClusterIP Service may have external addresses too.
        let c =
            parse(&LB.replace("  type: LoadBalancer\n  loadBalancerIP: 192.0.2.80\n", "")).unwrap();
        assert_eq!(c.info.kind, ServiceType::ClusterIP);
        assert_eq!(c.info.external_ips.len(), 2);
        // Refused, each with its field.
        for (from, to, field) in [
            ("192.0.2.80", "127.0.0.1", "spec.loadBalancerIP"),
            ("198.51.100.7", "10.96.0.9", "spec.externalIPs[0]"),
            ("198.51.100.7", "224.0.0.1", "spec.externalIPs[0]"),
            ("2001:db8::7", "fe80::1", "spec.externalIPs[1]"),
            ("2001:db8::7", "nope", "spec.externalIPs[1]"),
            (
                "type: LoadBalancer",
                "type: ClusterIP",
                "spec.loadBalancerIP",
            ),
            (
                "  selector:",
                "  clusterIP: None\n  selector:",
                "spec.clusterIP",
            ),
        ] {
            match parse(&LB.replace(from, to)) {
                Err(ManifestError::Invalid { field: f, .. }) => assert_eq!(f, field, "{to}"),
                other => panic!("{to}: {other:?}"),
            }
        }
    }

    const NP: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: np}\nspec:\n  type: NodePort\n  selector: {app: web}\n  ports:\n  - {name: tcp, port: 80}\n  - {name: udp, port: 80, protocol: UDP}\n";

    #[test]
    fn node_ports_are_allocated_checked_and_kept() {
        let s = parse(NP).unwrap();
        let ports = |p: &[ServicePort]| p.iter().map(|p| p.node_port).collect::<Vec<_>>();
        // The lowest free ones, one per port.
        let got = allocate_node_ports(&s, None, &HashSet::new()).unwrap();
        assert_eq!(ports(&got), vec![Some(30000), Some(30001)]);
        let taken: HashSet<u16> = [30000, 30002].into();
        let got = allocate_node_ports(&s, None, &taken).unwrap();
        assert_eq!(ports(&got), vec![Some(30001), Some(30003)]);
        // An update keeps what the Service had.
        let mut prev = s.info.clone();
        prev.ports[0].node_port = Some(31000);
        prev.ports[1].node_port = Some(31000);
        let got = allocate_node_ports(&s, Some(&prev), &HashSet::new()).unwrap();
        assert_eq!(ports(&got), vec![Some(31000), Some(31000)]);
        // Given: TCP and UDP may share one; another Service's is refused,
        // as is one protocol twice.
        let given = parse(
            &NP.replace("port: 80}", "port: 80, nodePort: 30080}")
                .replace("protocol: UDP}", "protocol: UDP, nodePort: 30080}"),
        )
        .unwrap();
        let got = allocate_node_ports(&given, None, &HashSet::new()).unwrap();
        assert_eq!(ports(&got), vec![Some(30080), Some(30080)]);
        let e = allocate_node_ports(&given, None, &[30080].into()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "services/default/np: spec.ports[0].nodePort: 30080 is already allocated"
        );
        let twice = parse(
            &NP.replace("port: 80}", "port: 80, nodePort: 30080}")
                .replace("port: 80, protocol: UDP}", "port: 81, nodePort: 30080}"),
        )
        .unwrap();
        let e = allocate_node_ports(&twice, None, &HashSet::new()).unwrap_err();
        assert!(e.to_string().contains("30080 is used twice for Tcp"), "{e}");
        // Out of the range: refused when parsed.
        let e = parse(&NP.replace("port: 80}", "port: 80, nodePort: 8080}")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "services/default/np: spec.ports[0].nodePort: 8080 is not in the valid range 30000-32767"
        );
        // A full range.
        let all: HashSet<u16> = (NODE_PORT_FIRST..=NODE_PORT_LAST).collect();
        let e = allocate_node_ports(&s, None, &all).unwrap_err();
        assert!(e.to_string().contains("range 30000-32767 is full"), "{e}");
        // A ClusterIP Service has none.
        let c = parse(WEB).unwrap();
        let got = allocate_node_ports(&c, None, &HashSet::new()).unwrap();
        assert!(got.iter().all(|p| p.node_port.is_none()));
    }

    #[test]
    fn bad_input_is_one_line() {
        let cases = [
            (
                WEB.replace("port: 53,", "port: 80,").replace("UDP", "TCP"),
                "declared twice",
            ),
            (WEB.replace("UDP", "ICMP"), "is not one of TCP, UDP, SCTP"),
            (WEB.replace("port: 53,", "port: 0,"), "out of range"),
            (
                WEB.replace("spec:\n", "spec:\n  clusterIP: 10.0.0.1\n"),
                "outside",
            ),
            (WEB.replace("selector:", "selectr:"), "unknown field"),
        ];
        for (text, want) in cases {
            let err = parse(&text).and_then(|s| {
                allocate_cluster_ips(&s, &[IpFamily::IPv4], &HashSet::new()).map(|_| s)
            });
            let msg = err.expect_err(&text).to_string();
            assert!(msg.contains(want), "{msg} lacks {want}");
            assert!(
                msg.starts_with("services/default/web") || msg.contains("Service"),
                "{msg}"
            );
            assert!(!msg.contains('\n'));
        }
    }

    #[test]
    fn families_and_given_addresses() {
        let v4 = [IpFamily::IPv4];
        let dual = [IpFamily::IPv4, IpFamily::IPv6];
        let with = |extra: &str| parse(&WEB.replace("spec:\n", &format!("spec:\n{extra}")));
        // RequireDualStack on a single-stack cluster.
        let s = with("  ipFamilyPolicy: RequireDualStack\n").unwrap();
        let e = allocate_cluster_ips(&s, &v4, &HashSet::new()).unwrap_err();
        assert!(e.to_string().contains("single-stack"), "{e}");
        // IPv6 first when asked.
        let s = with("  ipFamilyPolicy: PreferDualStack\n  ipFamilies: [IPv6, IPv4]\n").unwrap();
        let ips = allocate_cluster_ips(&s, &dual, &HashSet::new()).unwrap();
        assert!(ips[0].is_ipv6() && ips[1].is_ipv4(), "{ips:?}");
        // SingleStack with two families is refused.
        let e = with("  ipFamilies: [IPv4, IPv6]\n").unwrap_err();
        assert!(e.to_string().contains("SingleStack"), "{e}");
        // A given address: inside the range and free.
        let s = with("  clusterIP: 10.96.1.1\n").unwrap();
        assert_eq!(
            allocate_cluster_ips(&s, &v4, &HashSet::new()).unwrap(),
            vec!["10.96.1.1".parse::<IpAddr>().unwrap()]
        );
        let taken: HashSet<IpAddr> = ["10.96.1.1".parse().unwrap()].into();
        let e = allocate_cluster_ips(&s, &v4, &taken).unwrap_err();
        assert!(e.to_string().contains("already allocated"), "{e}");
        // Headless: no address.
        let s = with("  clusterIP: None\n").unwrap();
        assert!(allocate_cluster_ips(&s, &v4, &HashSet::new())
            .unwrap()
            .is_empty());
        // Affinity default and bounds.
        let s = with("  sessionAffinity: ClientIP\n").unwrap();
        assert_eq!(s.info.affinity_timeout_s, Some(DEFAULT_AFFINITY_TIMEOUT_S));
        let e = with("  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 0}}\n")
            .unwrap_err();
        assert!(e.to_string().contains("1-86400"), "{e}");
        // Several ports need names.
        let e = parse(&WEB.replace("name: http, ", "")).unwrap_err();
        assert!(
            e.to_string()
                .contains("required when the Service has several ports"),
            "{e}"
        );
    }

    #[test]
    fn endpoints_resolve_named_ports_per_pod() {
        let mut s = parse(WEB).unwrap().info;
        let labels: BTreeMap<String, String> = [("app".to_string(), "web".to_string())].into();
        let other: BTreeMap<String, String> = [("app".to_string(), "db".to_string())].into();
        let p1 = vec![ContainerPort {
            name: Some("http".into()),
            port: 8080,
            protocol: Protocol::Tcp,
        }];
        let p2 = vec![ContainerPort {
            name: Some("http".into()),
            port: 9090,
            protocol: Protocol::Tcp,
        }];
        let pod = |name, labels, ports, ip: u8| EndpointPod {
            namespace: "default",
            name,
            node: "node-1",
            labels,
            ports,
            ipv4: Some(Ipv4Addr::new(10, 244, 0, ip)),
            ipv6: None,
        };
        let w = derive_endpoints(
            &mut s,
            [
                pod("a", &labels, &p1, 2),
                pod("b", &labels, &p2, 3),
                pod("c", &labels, &[], 4),
                pod("d", &other, &p1, 5),
            ],
        );
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(s.endpoints.len(), 3);
        assert_eq!(s.endpoints[0].ports[0].port, 8080);
        assert_eq!(s.endpoints[1].ports[0].port, 9090);
        // Pod c lacks the name: only the numeric UDP port.
        assert_eq!(s.endpoints[2].ports.len(), 1);
        assert_eq!(s.endpoints[2].ports[0].port, 5353);
        let w = derive_endpoints(&mut s, [pod("c", &labels, &[], 4)]);
        assert_eq!(w.len(), 1, "{w:?}");
    }
}
