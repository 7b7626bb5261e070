//! API objects → the inputs weir compiles: the one conversion from what a
//! Kubernetes API server holds (Nodes, Namespaces, Pods, as k8s-openapi
//! types) to what `weir up` reads from manifest files (topo's
//! [`NodeSpec`], [`NamespaceSpec`], [`PodSpec`] plus each pod's addresses).
//! Pure: no client, no I/O, so every rule is a unit test.
//!
//! Rules:
//! - Node: `spec.podCIDRs` (or the older `spec.podCIDR`); the underlay
//!   address is the annotation [`UNDERLAY_ANNOTATION`] when set, else the
//!   first IPv4 `status.addresses[type=InternalIP]`; the dataplane is the
//!   annotation `weir.dev/dataplane` (default weir). A Node without
//!   podCIDRs is kept (it may get them later): a CNI ADD on it fails naming
//!   it.
//! - Namespace: its labels (the API server sets
//!   `kubernetes.io/metadata.name`; added when absent).
//! - Pod: namespace, name, labels, `spec.nodeName`, the containers' ports,
//!   `status.podIPs` (or `podIP`). Not an identity: `hostNetwork` pods (their
//!   address is the node's) and pods in a terminal phase (`Succeeded`,
//!   `Failed`: their addresses are free for others).
//! - An object that cannot be converted (a podCIDR or IP that does not
//!   parse, a container port out of range) is skipped with a one-line
//!   reason naming the object and the field; the rest is converted.

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use weir_model::service::{
    EndpointPort, ServiceEndpoint, ServiceInfo, ServicePort, ServiceType, TargetPort, TrafficPolicy,
};
use weir_topo::manifest::{DATAPLANE_ANNOTATION, NAMESPACE_NAME_LABEL};
use weir_topo::{ContainerPort, NamespaceSpec, NodeDataplane, NodeSpec, PodSpec, Protocol};

/// Node annotation naming the node's underlay (tunnel) IPv4 address when it
/// is not the first InternalIP.
pub const UNDERLAY_ANNOTATION: &str = "weir.dev/underlay-ip";

/// A pod as weir sees it: the manifest form and its addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInput {
    pub spec: PodSpec,
    pub uid: String,
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
}

/// Everything the compiler needs from the API server's cluster state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterInputs {
    pub nodes: Vec<NodeSpec>,
    pub namespaces: Vec<NamespaceSpec>,
    pub pods: Vec<PodInput>,
    /// Objects left out, one line each (object, field, why).
    pub skipped: Vec<String>,
}

impl ClusterInputs {
    pub fn node(&self, name: &str) -> Option<&NodeSpec> {
        self.nodes.iter().find(|n| n.name == name)
    }
    pub fn pod(&self, namespace: &str, name: &str) -> Option<&PodInput> {
        self.pods
            .iter()
            .find(|p| p.spec.namespace == namespace && p.spec.name == name)
    }
}

/// The conversion: every Node, Namespace and Pod the API server holds.
/// Output order is by name (namespace/name for pods), whatever the input's.
pub fn cluster_inputs<'a>(
    nodes: impl IntoIterator<Item = &'a Node>,
    namespaces: impl IntoIterator<Item = &'a Namespace>,
    pods: impl IntoIterator<Item = &'a Pod>,
) -> ClusterInputs {
    let mut out = ClusterInputs::default();
    for n in nodes {
        match node_spec(n) {
            Ok(s) => out.nodes.push(s),
            Err(e) => out.skipped.push(e),
        }
    }
    out.namespaces = namespaces.into_iter().filter_map(namespace_spec).collect();
    for p in pods {
        match pod_input(p) {
            Ok(Some(s)) => out.pods.push(s),
            Ok(None) => {}
            Err(e) => out.skipped.push(e),
        }
    }
    out.nodes.sort_by(|a, b| a.name.cmp(&b.name));
    out.namespaces.sort_by(|a, b| a.name.cmp(&b.name));
    out.pods
        .sort_by(|a, b| (&a.spec.namespace, &a.spec.name).cmp(&(&b.spec.namespace, &b.spec.name)));
    out
}

fn labels(m: &Option<BTreeMap<String, String>>) -> BTreeMap<String, String> {
    m.clone().unwrap_or_default()
}

/// A Node; `Err` is the one-line reason it is skipped.
pub fn node_spec(n: &Node) -> Result<NodeSpec, String> {
    let name = n.metadata.name.clone().unwrap_or_default();
    let object = format!("nodes/{name}");
    let spec = n.spec.clone().unwrap_or_default();
    let cidrs: Vec<String> = match (spec.pod_cidrs, spec.pod_cidr) {
        (Some(v), _) if !v.is_empty() => v,
        (_, Some(c)) => vec![c],
        _ => Vec::new(),
    };
    let mut pod_cidrs = Vec::new();
    for c in &cidrs {
        let net: IpNet = c
            .parse()
            .map_err(|e| format!("{object}: spec.podCIDRs: {c:?}: {e}"))?;
        pod_cidrs.push(net);
    }
    let ann = n.metadata.annotations.clone().unwrap_or_default();
    let dataplane = match ann.get(DATAPLANE_ANNOTATION).map(String::as_str) {
        None | Some("weir") => NodeDataplane::Weir,
        Some("kernel") => NodeDataplane::Kernel,
        Some(other) => {
            return Err(format!(
                "{object}: metadata.annotations[{DATAPLANE_ANNOTATION}]: {other:?} is not weir or kernel"
            ))
        }
    };
    let internal_ip = match ann.get(UNDERLAY_ANNOTATION) {
        Some(s) => Some(s.parse::<Ipv4Addr>().map_err(|e| {
            format!("{object}: metadata.annotations[{UNDERLAY_ANNOTATION}]: {s:?}: {e}")
        })?),
        None => n
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .into_iter()
            .flatten()
            .filter(|a| a.type_ == "InternalIP")
            .find_map(|a| a.address.parse::<Ipv4Addr>().ok()),
    };
    Ok(NodeSpec {
        name,
        labels: labels(&n.metadata.labels),
        pod_cidrs,
        dataplane,
        internal_ip,
    })
}

/// A Namespace (`None` for one without a name, which the API server never
/// sends).
pub fn namespace_spec(n: &Namespace) -> Option<NamespaceSpec> {
    let name = n.metadata.name.clone()?;
    let mut l = labels(&n.metadata.labels);
    l.entry(NAMESPACE_NAME_LABEL.to_string())
        .or_insert_with(|| name.clone());
    Some(NamespaceSpec { name, labels: l })
}

/// A Pod; `Ok(None)` when it is not a pod identity (host network, terminal
/// phase), `Err` the one-line reason it is skipped.
pub fn pod_input(p: &Pod) -> Result<Option<PodInput>, String> {
    let namespace = p
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let name = p.metadata.name.clone().unwrap_or_default();
    let object = format!("pods/{namespace}/{name}");
    let spec = p.spec.clone().unwrap_or_default();
    if spec.host_network == Some(true) {
        return Ok(None);
    }
    let status = p.status.clone().unwrap_or_default();
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return Ok(None);
    }
    let mut ports = Vec::new();
    for (ci, c) in spec.containers.iter().enumerate() {
        for (pi, cp) in c.ports.iter().flatten().enumerate() {
            let field = format!("spec.containers[{ci}].ports[{pi}]");
            let port = u16::try_from(cp.container_port)
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| {
                    format!(
                        "{object}: {field}.containerPort: {} is not a port (1-65535)",
                        cp.container_port
                    )
                })?;
            let protocol = match cp.protocol.as_deref() {
                None | Some("TCP") => Protocol::Tcp,
                Some("UDP") => Protocol::Udp,
                Some("SCTP") => Protocol::Sctp,
                Some(other) => {
                    return Err(format!(
                        "{object}: {field}.protocol: {other:?} is not TCP, UDP or SCTP"
                    ))
                }
            };
            ports.push(ContainerPort {
                name: cp.name.clone(),
                port,
                protocol,
            });
        }
    }
    let mut ips: Vec<String> = status
        .pod_ips
        .unwrap_or_default()
        .into_iter()
        .map(|i| i.ip)
        .collect();
    if ips.is_empty() {
        ips.extend(status.pod_ip);
    }
    let (mut ipv4, mut ipv6) = (None, None);
    for s in &ips {
        match s.parse::<IpAddr>() {
            Ok(IpAddr::V4(a)) if ipv4.is_none() => ipv4 = Some(a),
            Ok(IpAddr::V6(a)) if ipv6.is_none() => ipv6 = Some(a),
            Ok(_) => {}
            Err(e) => return Err(format!("{object}: status.podIPs: {s:?}: {e}")),
        }
    }
    Ok(Some(PodInput {
        spec: PodSpec {
            namespace,
            name,
            labels: labels(&p.metadata.labels),
            node: spec.node_name.unwrap_or_default(),
            ports,
        },
        uid: p.metadata.uid.clone().unwrap_or_default(),
        ipv4,
        ipv6,
    }))
}

// ---------------------------------------------------------------------------
// Services and EndpointSlices → ServiceInfo.
//
// Rules:
// - Service: `spec.type` ClusterIP, NodePort or LoadBalancer (ExternalName
//   is skipped with a Problem); `spec.externalIPs` and, for LoadBalancer,
//   `status.loadBalancer.ingress[].ip` (not `ipMode: Proxy`); `spec.clusterIPs` (or
//   `clusterIP`; `None`: headless, kept with no cluster IPs); every
//   `spec.ports[]` (protocol default TCP, `targetPort` a number — 0 or absent
//   means `port` — or a name, `nodePort` for NodePort); `sessionAffinity:
//   ClientIP` with `sessionAffinityConfig.clientIP.timeoutSeconds` (default
//   10800); `externalTrafficPolicy` / `internalTrafficPolicy` (Local or
//   Cluster, default Cluster); `spec.selector`.
// - Endpoints: every EndpointSlice labelled `kubernetes.io/service-name`
//   with the Service's name in its namespace, addressType IPv4 or IPv6
//   (FQDN slices are not load balanced and are left out, as kube-proxy
//   does); conditions ready/serving (absent: true), terminating (absent:
//   false); `nodeName`; `targetRef` (a Pod: `namespace/name`); the slice's
//   ports by name. The same pod in an IPv4 and an IPv6 slice is one
//   endpoint with both addresses.
// - Problems (each names the object and the field): a field that does not
//   parse; a named targetPort no endpoint has a port for (the slice
//   controller found no container port of that name on any selected pod);
//   a malformed slice (an address that is not of its addressType, a port
//   out of range or without a number, a protocol that is not TCP, UDP or
//   SCTP, an endpoint without addresses); a slice of a Service that does
//   not exist (unless the Service owns it: the garbage collector deletes it
//   right after its Service). A Problem about a Service (or one of its slices) leaves the
//   last good ServiceInfo of that Service in force ([`ServicesInForce`]);
//   a Service of a type weir does not load balance is left out.

/// The label an EndpointSlice names its Service with.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// `sessionAffinityConfig.clientIP.timeoutSeconds` when absent.
pub const DEFAULT_AFFINITY_TIMEOUT_S: u32 = 10800;

/// An object weir could not take as it is, and why.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Problem {
    /// `Service` or `EndpointSlice`.
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    /// One line: `services/NS/NAME: field: why`.
    pub message: String,
    /// The Service (`namespace/name`) whose last good state stays in force
    /// because of this; `None`: nothing is kept (the object is left out).
    pub keeps: Option<String>,
}

impl Problem {
    fn service(namespace: &str, name: &str, message: String, keep: bool) -> Problem {
        Problem {
            kind: "Service",
            namespace: namespace.to_string(),
            name: name.to_string(),
            message,
            keeps: keep.then(|| format!("{namespace}/{name}")),
        }
    }
}

fn protocol_of(p: Option<&str>, object: &str, field: &str) -> Result<Protocol, String> {
    match p {
        Some("TCP") => Ok(Protocol::Tcp),
        Some("UDP") => Ok(Protocol::Udp),
        Some("SCTP") => Ok(Protocol::Sctp),
        Some(other) => Err(format!(
            "{object}: {field}.protocol: {other:?} is not TCP, UDP or SCTP"
        )),
        None => Err(format!("{object}: {field}.protocol: missing")),
    }
}

fn port_of(n: i32, object: &str, field: &str) -> Result<u16, String> {
    u16::try_from(n)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{object}: {field}: {n} is not a port (1-65535)"))
}

/// A Service without its endpoints; `Err`: the one-line Problem and
/// whether the Service's last good state stays (`false`: a type weir does
/// not load balance, left out).
fn service_spec(s: &Service) -> Result<ServiceInfo, (String, bool)> {
    let namespace = s
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let name = s.metadata.name.clone().unwrap_or_default();
    let object = format!("services/{namespace}/{name}");
    let spec = s.spec.clone().unwrap_or_default();
    let kind = match spec.type_.as_deref() {
        None | Some("ClusterIP") => ServiceType::ClusterIP,
        Some("NodePort") => ServiceType::NodePort,
        Some("LoadBalancer") => ServiceType::LoadBalancer,
        Some(other) => {
            return Err((
                format!("{object}: spec.type: {other} is not load balanced by weir (ClusterIP, NodePort and LoadBalancer are); left out"),
                false,
            ))
        }
    };
    let ips: Vec<String> = match (spec.cluster_ips, spec.cluster_ip) {
        (Some(v), _) if !v.is_empty() => v,
        (_, Some(ip)) => vec![ip],
        _ => Vec::new(),
    };
    let mut cluster_ips = Vec::new();
    for ip in &ips {
        if ip == "None" || ip.is_empty() {
            continue;
        }
        cluster_ips.push(
            ip.parse::<IpAddr>()
                .map_err(|e| (format!("{object}: spec.clusterIPs: {ip:?}: {e}"), true))?,
        );
    }
    let mut ports = Vec::new();
    for (i, p) in spec.ports.iter().flatten().enumerate() {
        let field = format!("spec.ports[{i}]");
        let port = port_of(p.port, &object, &format!("{field}.port")).map_err(|e| (e, true))?;
        let protocol = protocol_of(
            Some(p.protocol.as_deref().unwrap_or("TCP")),
            &object,
            &field,
        )
        .map_err(|e| (e, true))?;
        let target = match &p.target_port {
            None | Some(IntOrString::Int(0)) => TargetPort::Number(port),
            Some(IntOrString::Int(n)) => TargetPort::Number(
                port_of(*n, &object, &format!("{field}.targetPort")).map_err(|e| (e, true))?,
            ),
            Some(IntOrString::String(s)) => match s.parse::<i32>() {
                Ok(n) => TargetPort::Number(
                    port_of(n, &object, &format!("{field}.targetPort")).map_err(|e| (e, true))?,
                ),
                Err(_) => TargetPort::Name(s.clone()),
            },
        };
        let node_port = match (kind.has_node_ports(), p.node_port) {
            (true, Some(n)) => {
                Some(port_of(n, &object, &format!("{field}.nodePort")).map_err(|e| (e, true))?)
            }
            _ => None,
        };
        ports.push(ServicePort {
            name: p.name.clone().filter(|n| !n.is_empty()),
            protocol,
            port,
            target,
            node_port,
        });
    }
    let affinity_timeout_s = match spec.session_affinity.as_deref() {
        Some("ClientIP") => {
            let t = spec
                .session_affinity_config
                .and_then(|c| c.client_ip)
                .and_then(|c| c.timeout_seconds);
            Some(match t {
                None => DEFAULT_AFFINITY_TIMEOUT_S,
                Some(t) if t > 0 => t as u32,
                Some(t) => {
                    return Err((
                        format!("{object}: spec.sessionAffinityConfig.clientIP.timeoutSeconds: {t} is not positive"),
                        true,
                    ))
                }
            })
        }
        None | Some("None") => None,
        Some(other) => {
            return Err((
                format!("{object}: spec.sessionAffinity: {other:?} is not None or ClientIP"),
                true,
            ))
        }
    };
    let traffic = |v: Option<&str>, field: &str| match v {
        None | Some("Cluster") => Ok(TrafficPolicy::Cluster),
        Some("Local") => Ok(TrafficPolicy::Local),
        Some(other) => Err((
            format!("{object}: spec.{field}: {other:?} is not Cluster or Local"),
            true,
        )),
    };
    // `spec.externalIPs`, then the load balancer's addresses as its
    // controller wrote them (`ipMode: Proxy`: the load balancer proxies,
    // traffic arrives from it to the node ports, as kube-proxy leaves it).
    let mut external_ips = Vec::new();
    let lb_ips = s
        .status
        .iter()
        .filter_map(|st| st.load_balancer.as_ref())
        .flat_map(|lb| lb.ingress.iter().flatten())
        .filter(|i| i.ip_mode.as_deref() != Some("Proxy"))
        .filter_map(|i| i.ip.clone())
        .filter(|_| kind == ServiceType::LoadBalancer)
        .map(|a| (a, "status.loadBalancer.ingress"));
    let ext = spec
        .external_ips
        .iter()
        .flatten()
        .cloned()
        .map(|a| (a, "spec.externalIPs"));
    for (a, field) in ext.chain(lb_ips) {
        let ip = weir_model::service_manifest::external_ip(&a)
            .map_err(|e| (format!("{object}: {field}: {e}"), true))?;
        if !external_ips.contains(&ip) {
            external_ips.push(ip);
        }
    }
    Ok(ServiceInfo {
        external_ips,
        external_traffic: traffic(
            spec.external_traffic_policy.as_deref(),
            "externalTrafficPolicy",
        )?,
        internal_traffic: traffic(
            spec.internal_traffic_policy.as_deref(),
            "internalTrafficPolicy",
        )?,
        namespace,
        name,
        kind,
        cluster_ips,
        ports,
        selector: spec.selector.filter(|s| !s.is_empty()),
        affinity_timeout_s,
        endpoints: Vec::new(),
    })
}

/// The endpoints of one slice (`Ok(None)`: an FQDN slice, not load
/// balanced).
fn slice_endpoints(
    s: &EndpointSlice,
    object: &str,
) -> Result<Option<Vec<ServiceEndpoint>>, String> {
    let v6 = match s.address_type.as_str() {
        "IPv4" => false,
        "IPv6" => true,
        "FQDN" => return Ok(None),
        other => {
            return Err(format!(
                "{object}: addressType: {other:?} is not IPv4, IPv6 or FQDN"
            ))
        }
    };
    let mut ports = Vec::new();
    for (i, p) in s.ports.iter().flatten().enumerate() {
        let field = format!("ports[{i}]");
        let n = p
            .port
            .ok_or_else(|| format!("{object}: {field}.port: missing"))?;
        ports.push(EndpointPort {
            name: p.name.clone().filter(|n| !n.is_empty()),
            protocol: protocol_of(p.protocol.as_deref(), object, &field)?,
            port: port_of(n, object, &format!("{field}.port"))?,
        });
    }
    let mut out = Vec::new();
    for (i, e) in s.endpoints.iter().flatten().enumerate() {
        let field = format!("endpoints[{i}].addresses");
        if e.addresses.is_empty() {
            return Err(format!("{object}: {field}: empty"));
        }
        let mut addresses = Vec::new();
        for a in &e.addresses {
            let ip = a
                .parse::<IpAddr>()
                .ok()
                .filter(|ip| ip.is_ipv6() == v6)
                .ok_or_else(|| {
                    format!(
                        "{object}: {field}: {a:?} is not an {} address",
                        s.address_type
                    )
                })?;
            addresses.push(ip);
        }
        let c = e.conditions.clone().unwrap_or_default();
        let pod = e
            .target_ref
            .as_ref()
            .filter(|r| r.kind.as_deref() == Some("Pod"))
            .and_then(|r| {
                Some(format!(
                    "{}/{}",
                    r.namespace.as_deref().unwrap_or_else(|| {
                        s.metadata.namespace.as_deref().unwrap_or("default")
                    }),
                    r.name.as_deref()?
                ))
            });
        out.push(ServiceEndpoint {
            addresses,
            pod,
            node: e.node_name.clone(),
            ready: c.ready.unwrap_or(true),
            serving: c.serving.unwrap_or(true),
            terminating: c.terminating.unwrap_or(false),
            ports: ports.clone(),
        });
    }
    Ok(Some(out))
}

/// The conversion: every Service of a type weir load balances, with the
/// endpoints of its slices (sorted by namespace/name; endpoints by pod and
/// address), and the Problems. A Service with a Problem is not in the
/// output (see [`ServicesInForce`] for what stays in force instead).
pub fn services_from_api(
    services: &[Service],
    slices: &[EndpointSlice],
) -> (Vec<ServiceInfo>, Vec<Problem>) {
    let mut problems = Vec::new();
    let mut out: BTreeMap<String, ServiceInfo> = BTreeMap::new();
    let mut bad: BTreeSet<String> = BTreeSet::new();
    let mut known: BTreeSet<String> = BTreeSet::new();
    for s in services {
        let ns = s.metadata.namespace.as_deref().unwrap_or("default");
        let name = s.metadata.name.as_deref().unwrap_or_default();
        known.insert(format!("{ns}/{name}"));
        match service_spec(s) {
            Ok(info) => {
                out.insert(info.key(), info);
            }
            Err((message, keep)) => problems.push(Problem::service(ns, name, message, keep)),
        }
    }
    for s in slices {
        let Some(svc) = s
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
        else {
            continue; // not a Service's slice
        };
        let ns = s
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let name = s.metadata.name.clone().unwrap_or_default();
        let object = format!("endpointslices/{ns}/{name}");
        let key = format!("{ns}/{svc}");
        let problem = |message: String, keeps: Option<String>| Problem {
            kind: "EndpointSlice",
            namespace: ns.clone(),
            name: name.clone(),
            message,
            keeps,
        };
        if !known.contains(&key) {
            // A slice the Service owns is the garbage collector's to delete
            // once its Service is gone: not a Problem, just not used.
            let owned = s
                .metadata
                .owner_references
                .iter()
                .flatten()
                .any(|o| o.kind == "Service" && o.api_version == "v1");
            if owned || s.metadata.deletion_timestamp.is_some() {
                continue;
            }
            problems.push(problem(
                format!(
                    "{object}: metadata.labels[{SERVICE_NAME_LABEL}]: no Service {key}; ignored"
                ),
                None,
            ));
            continue;
        }
        match slice_endpoints(s, &object) {
            Ok(Some(eps)) => {
                if let Some(info) = out.get_mut(&key) {
                    info.endpoints.extend(eps);
                }
            }
            Ok(None) => {}
            Err(e) => {
                bad.insert(key.clone());
                problems.push(problem(e, Some(key)));
            }
        }
    }
    for key in &bad {
        out.remove(key);
    }
    let mut services = Vec::new();
    for (key, mut info) in out {
        info.endpoints = merge_families(std::mem::take(&mut info.endpoints));
        // A named targetPort resolved on no endpoint: the slice controller
        // found no container port of that name on any selected pod.
        let mut unresolved = None;
        if !info.endpoints.is_empty() {
            for (i, p) in info.ports.iter().enumerate() {
                let TargetPort::Name(t) = &p.target else {
                    continue;
                };
                let served = info.endpoints.iter().any(|e| {
                    e.ports
                        .iter()
                        .any(|q| q.name == p.name && q.protocol == p.protocol)
                });
                if !served {
                    unresolved = Some(format!(
                        "services/{key}: spec.ports[{i}].targetPort: {t:?}: no endpoint has a port of that name (no selected pod has a container port {t:?})"
                    ));
                    break;
                }
            }
        }
        match unresolved {
            Some(message) => {
                problems.push(Problem::service(&info.namespace, &info.name, message, true))
            }
            None => services.push(info),
        }
    }
    problems.sort();
    (services, problems)
}

/// One endpoint per pod: the same pod in an IPv4 and an IPv6 slice (same
/// ports) is one endpoint with both addresses. Sorted by pod, then address.
fn merge_families(eps: Vec<ServiceEndpoint>) -> Vec<ServiceEndpoint> {
    let mut out: Vec<ServiceEndpoint> = Vec::new();
    for e in eps {
        let same = out.iter_mut().find(|o| {
            e.pod.is_some()
                && o.pod == e.pod
                && o.ports == e.ports
                && o.addresses
                    .iter()
                    .all(|a| e.addresses.iter().all(|b| a.is_ipv6() != b.is_ipv6()))
        });
        match same {
            Some(o) => {
                o.addresses.extend(e.addresses);
                o.addresses.sort();
                o.ready &= e.ready;
                o.serving &= e.serving;
                o.terminating |= e.terminating;
            }
            None => out.push(e),
        }
    }
    out.sort_by(|a, b| (&a.pod, &a.addresses).cmp(&(&b.pod, &b.addresses)));
    out
}

/// The Services in force: what [`services_from_api`] gives, where a Service
/// with a Problem keeps its last good state (none: left out until it is
/// good). A Service gone from the API server is gone from here.
#[derive(Debug, Clone, Default)]
pub struct ServicesInForce {
    last_good: BTreeMap<String, ServiceInfo>,
}

impl ServicesInForce {
    /// Starts from services known good before (a restarted agent's file).
    pub fn from_previous(services: Vec<ServiceInfo>) -> ServicesInForce {
        ServicesInForce {
            last_good: services.into_iter().map(|s| (s.key(), s)).collect(),
        }
    }

    /// Takes the API server's current objects; returns the Services in
    /// force (sorted by key) and the Problems.
    pub fn update(
        &mut self,
        services: &[Service],
        slices: &[EndpointSlice],
    ) -> (Vec<ServiceInfo>, Vec<Problem>) {
        let (good, problems) = services_from_api(services, slices);
        let kept: BTreeSet<&String> = problems.iter().filter_map(|p| p.keeps.as_ref()).collect();
        let mut next: BTreeMap<String, ServiceInfo> =
            good.into_iter().map(|s| (s.key(), s)).collect();
        for key in kept {
            if let Some(s) = self.last_good.get(key) {
                next.insert(key.clone(), s.clone());
            }
        }
        self.last_good = next;
        (self.last_good.values().cloned().collect(), problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(v: serde_json::Value) -> Node {
        serde_json::from_value(v).expect("a Node")
    }
    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).expect("a Pod")
    }
    fn ns(v: serde_json::Value) -> Namespace {
        serde_json::from_value(v).expect("a Namespace")
    }

    #[test]
    fn node_cidrs_underlay_and_dataplane() {
        let n = node(json!({
            "metadata": {"name": "n1", "labels": {"zone": "a"}},
            "spec": {"podCIDR": "10.1.0.0/24", "podCIDRs": ["10.1.0.0/24", "fd00:1::/64"]},
            "status": {"addresses": [
                {"type": "Hostname", "address": "n1"},
                {"type": "InternalIP", "address": "fd00::5"},
                {"type": "InternalIP", "address": "192.168.7.5"}]}
        }));
        let s = node_spec(&n).unwrap();
        assert_eq!(s.name, "n1");
        assert_eq!(s.labels["zone"], "a");
        assert_eq!(
            s.pod_cidrs,
            vec![
                "10.1.0.0/24".parse::<IpNet>().unwrap(),
                "fd00:1::/64".parse().unwrap()
            ]
        );
        assert_eq!(s.internal_ip, Some(Ipv4Addr::new(192, 168, 7, 5)));
        assert_eq!(s.dataplane, NodeDataplane::Weir);

        // The older single podCIDR; the annotation wins over InternalIP.
        let n = node(json!({
            "metadata": {"name": "n2", "annotations": {
                "weir.dev/underlay-ip": "10.99.0.2", "weir.dev/dataplane": "kernel"}},
            "spec": {"podCIDR": "10.2.0.0/24"},
            "status": {"addresses": [{"type": "InternalIP", "address": "192.168.7.6"}]}
        }));
        let s = node_spec(&n).unwrap();
        assert_eq!(s.pod_cidrs, vec!["10.2.0.0/24".parse::<IpNet>().unwrap()]);
        assert_eq!(s.internal_ip, Some(Ipv4Addr::new(10, 99, 0, 2)));
        assert_eq!(s.dataplane, NodeDataplane::Kernel);

        // No podCIDRs yet: kept, empty.
        let s = node_spec(&node(json!({"metadata": {"name": "n3"}}))).unwrap();
        assert!(s.pod_cidrs.is_empty());
        assert_eq!(s.internal_ip, None);
    }

    #[test]
    fn bad_nodes_are_skipped_naming_the_field() {
        let bad = [
            (
                json!({"metadata": {"name": "a"}, "spec": {"podCIDRs": ["10.1.0.0/33"]}}),
                "nodes/a: spec.podCIDRs: \"10.1.0.0/33\"",
            ),
            (
                json!({"metadata": {"name": "b", "annotations": {"weir.dev/underlay-ip": "x"}}}),
                "nodes/b: metadata.annotations[weir.dev/underlay-ip]: \"x\"",
            ),
            (
                json!({"metadata": {"name": "c", "annotations": {"weir.dev/dataplane": "ebpf"}}}),
                "nodes/c: metadata.annotations[weir.dev/dataplane]: \"ebpf\" is not weir or kernel",
            ),
        ];
        for (v, want) in bad {
            let e = node_spec(&node(v)).unwrap_err();
            assert!(e.starts_with(want), "{e}");
        }
    }

    #[test]
    fn namespace_gets_its_name_label() {
        let s = namespace_spec(&ns(
            json!({"metadata": {"name": "x", "labels": {"team": "a"}}}),
        ))
        .unwrap();
        assert_eq!(s.labels.len(), 2);
        assert_eq!(s.labels[NAMESPACE_NAME_LABEL], "x");
        assert_eq!(s.labels["team"], "a");
    }

    #[test]
    fn pod_identity_ports_and_addresses() {
        let p = pod(json!({
            "metadata": {"name": "web", "namespace": "x", "uid": "u-1", "labels": {"app": "web"}},
            "spec": {"nodeName": "n1", "containers": [
                {"name": "a", "image": "i", "ports": [
                    {"containerPort": 80, "name": "http"},
                    {"containerPort": 53, "protocol": "UDP"}]},
                {"name": "b", "image": "i", "ports": [{"containerPort": 9090, "protocol": "SCTP"}]}]},
            "status": {"phase": "Running", "podIP": "10.1.0.9",
                       "podIPs": [{"ip": "10.1.0.9"}, {"ip": "fd00:1::9"}]}
        }));
        let s = pod_input(&p).unwrap().unwrap();
        assert_eq!(s.spec.namespace, "x");
        assert_eq!(s.spec.name, "web");
        assert_eq!(s.spec.node, "n1");
        assert_eq!(s.spec.labels["app"], "web");
        assert_eq!(s.uid, "u-1");
        assert_eq!(s.ipv4, Some(Ipv4Addr::new(10, 1, 0, 9)));
        assert_eq!(s.ipv6, Some("fd00:1::9".parse().unwrap()));
        let ports: Vec<_> = s
            .spec
            .ports
            .iter()
            .map(|p| (p.name.as_deref(), p.port, p.protocol))
            .collect();
        assert_eq!(
            ports,
            vec![
                (Some("http"), 80, Protocol::Tcp),
                (None, 53, Protocol::Udp),
                (None, 9090, Protocol::Sctp)
            ]
        );
    }

    #[test]
    fn pods_that_are_not_identities_and_bad_pods() {
        // Pending, unscheduled, no address yet: an identity without addresses.
        let s = pod_input(&pod(
            json!({"metadata": {"name": "p"}, "spec": {"containers": []}}),
        ))
        .unwrap()
        .unwrap();
        assert_eq!(s.spec.namespace, "default");
        assert_eq!((s.ipv4, s.ipv6), (None, None));
        assert_eq!(s.spec.node, "");
        // Only podIP (older servers).
        let s = pod_input(&pod(
            json!({"metadata": {"name": "p"}, "spec": {"containers": []},
            "status": {"podIP": "10.0.0.3"}}),
        ))
        .unwrap()
        .unwrap();
        assert_eq!(s.ipv4, Some(Ipv4Addr::new(10, 0, 0, 3)));
        for v in [
            json!({"metadata": {"name": "h"}, "spec": {"hostNetwork": true, "containers": []},
                "status": {"podIP": "192.168.7.5"}}),
            json!({"metadata": {"name": "d"}, "spec": {"containers": []},
                "status": {"phase": "Succeeded", "podIP": "10.0.0.4"}}),
            json!({"metadata": {"name": "f"}, "spec": {"containers": []},
                "status": {"phase": "Failed"}}),
        ] {
            assert_eq!(pod_input(&pod(v)).unwrap(), None);
        }
        let e = pod_input(&pod(json!({"metadata": {"name": "b", "namespace": "x"},
            "spec": {"containers": [{"name": "c", "ports": [{"containerPort": 70000}]}]}})))
        .unwrap_err();
        assert_eq!(
            e,
            "pods/x/b: spec.containers[0].ports[0].containerPort: 70000 is not a port (1-65535)"
        );
        let e = pod_input(&pod(json!({"metadata": {"name": "b", "namespace": "x"},
            "spec": {"containers": []}, "status": {"podIPs": [{"ip": "nope"}]}})))
        .unwrap_err();
        assert!(e.starts_with("pods/x/b: status.podIPs: \"nope\""), "{e}");
    }

    #[test]
    fn whole_conversion_is_sorted_and_keeps_going_past_bad_objects() {
        let nodes = [
            node(json!({"metadata": {"name": "n2"}, "spec": {"podCIDRs": ["10.2.0.0/24"]}})),
            node(json!({"metadata": {"name": "bad"}, "spec": {"podCIDRs": ["nope"]}})),
            node(json!({"metadata": {"name": "n1"}, "spec": {"podCIDRs": ["10.1.0.0/24"]}})),
        ];
        let nss = [
            ns(json!({"metadata": {"name": "z"}})),
            ns(json!({"metadata": {"name": "a"}})),
        ];
        let pods = [
            pod(json!({"metadata": {"name": "b", "namespace": "a"}, "spec": {"containers": []}})),
            pod(json!({"metadata": {"name": "a", "namespace": "z"}, "spec": {"containers": []}})),
            pod(json!({"metadata": {"name": "a", "namespace": "a"}, "spec": {"containers": []}})),
        ];
        let c = cluster_inputs(&nodes, &nss, &pods);
        let names: Vec<_> = c.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["n1", "n2"]);
        assert_eq!(c.skipped.len(), 1);
        assert!(c.skipped[0].starts_with("nodes/bad: spec.podCIDRs"));
        let names: Vec<_> = c.namespaces.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["a", "z"]);
        let names: Vec<_> = c
            .pods
            .iter()
            .map(|p| format!("{}/{}", p.spec.namespace, p.spec.name))
            .collect();
        assert_eq!(names, ["a/a", "a/b", "z/a"]);
        assert!(c.pod("z", "a").is_some());
        assert!(c.node("n2").is_some());
    }

    // --- Services and EndpointSlices, from YAML as the API server holds them.

    fn svc(y: &str) -> Service {
        serde_yaml::from_str(y).expect("a Service")
    }
    fn slice(y: &str) -> EndpointSlice {
        serde_yaml::from_str(y).expect("an EndpointSlice")
    }

    const WEB: &str = r#"
metadata: {name: web, namespace: x}
spec:
  type: NodePort
  clusterIP: 10.96.0.10
  clusterIPs: [10.96.0.10, "fd00:96::10"]
  selector: {app: web}
  sessionAffinity: ClientIP
  externalTrafficPolicy: Local
  internalTrafficPolicy: Cluster
  ports:
  - {name: http, port: 80, targetPort: web, nodePort: 30080}
  - {name: dns, port: 53, protocol: UDP, targetPort: 5353, nodePort: 30053}
"#;
    const WEB_V4: &str = r#"
metadata: {name: web-abc, namespace: x, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports:
- {name: http, port: 8080, protocol: TCP}
- {name: dns, port: 5353, protocol: UDP}
endpoints:
- addresses: [10.1.0.5]
  conditions: {ready: true, serving: true, terminating: false}
  nodeName: n1
  targetRef: {kind: Pod, namespace: x, name: web-1}
- addresses: [10.1.0.6]
  conditions: {ready: false, serving: true, terminating: true}
  nodeName: n2
  targetRef: {kind: Pod, namespace: x, name: web-2}
"#;
    const WEB_V6: &str = r#"
metadata: {name: web-def, namespace: x, labels: {kubernetes.io/service-name: web}}
addressType: IPv6
ports:
- {name: http, port: 8080, protocol: TCP}
- {name: dns, port: 5353, protocol: UDP}
endpoints:
- addresses: ["fd00:1::5"]
  conditions: {ready: true}
  nodeName: n1
  targetRef: {kind: Pod, namespace: x, name: web-1}
"#;

    #[test]
    fn service_with_slices_of_both_families() {
        let (s, p) = services_from_api(&[svc(WEB)], &[slice(WEB_V4), slice(WEB_V6)]);
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(s.len(), 1);
        let s = &s[0];
        assert_eq!(s.key(), "x/web");
        assert_eq!(s.kind, ServiceType::NodePort);
        assert_eq!(
            s.cluster_ips,
            vec![
                "10.96.0.10".parse::<IpAddr>().unwrap(),
                "fd00:96::10".parse().unwrap()
            ]
        );
        assert_eq!(
            s.ports,
            vec![
                ServicePort {
                    name: Some("http".into()),
                    protocol: Protocol::Tcp,
                    port: 80,
                    target: TargetPort::Name("web".into()),
                    node_port: Some(30080),
                },
                ServicePort {
                    name: Some("dns".into()),
                    protocol: Protocol::Udp,
                    port: 53,
                    target: TargetPort::Number(5353),
                    node_port: Some(30053),
                },
            ]
        );
        assert_eq!(s.affinity_timeout_s, Some(DEFAULT_AFFINITY_TIMEOUT_S));
        assert_eq!(s.external_traffic, TrafficPolicy::Local);
        assert_eq!(s.internal_traffic, TrafficPolicy::Cluster);
        assert_eq!(s.selector.as_ref().unwrap()["app"], "web");
        assert_eq!(s.endpoints.len(), 2);
        let e1 = &s.endpoints[0];
        assert_eq!(e1.pod.as_deref(), Some("x/web-1"));
        assert_eq!(
            e1.addresses,
            vec![
                "10.1.0.5".parse::<IpAddr>().unwrap(),
                "fd00:1::5".parse().unwrap()
            ]
        );
        assert_eq!(e1.node.as_deref(), Some("n1"));
        assert!(e1.ready && e1.serving && !e1.terminating);
        assert_eq!(
            e1.ports,
            vec![
                EndpointPort {
                    name: Some("http".into()),
                    protocol: Protocol::Tcp,
                    port: 8080
                },
                EndpointPort {
                    name: Some("dns".into()),
                    protocol: Protocol::Udp,
                    port: 5353
                },
            ]
        );
        let e2 = &s.endpoints[1];
        assert_eq!(e2.pod.as_deref(), Some("x/web-2"));
        assert!(!e2.ready && e2.serving && e2.terminating);
    }

    #[test]
    fn defaults_headless_and_types_left_out() {
        let (s, p) = services_from_api(
            &[
                svc("metadata: {name: a, namespace: x}\nspec:\n  clusterIP: 10.96.0.1\n  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}\n  ports: [{port: 80}]"),
                svc("metadata: {name: h, namespace: x}\nspec:\n  clusterIP: None\n  selector: {app: h}\n  ports: [{port: 80, targetPort: 8080}]"),
                svc("metadata: {name: ext, namespace: x}\nspec: {type: ExternalName, externalName: example.com}"),
            ],
            &[],
        );
        let keys: Vec<_> = s.iter().map(|s| s.key()).collect();
        assert_eq!(keys, ["x/a", "x/h"]);
        assert_eq!(s[0].kind, ServiceType::ClusterIP);
        assert_eq!(s[0].affinity_timeout_s, Some(60));
        assert_eq!(s[0].ports[0].target, TargetPort::Number(80));
        assert_eq!(s[0].ports[0].protocol, Protocol::Tcp);
        assert_eq!(s[0].selector, None);
        assert!(s[1].cluster_ips.is_empty());
        assert_eq!(s[1].affinity_timeout_s, None);
        assert_eq!(p.len(), 1);
        assert!(p.iter().all(|p| p.kind == "Service" && p.keeps.is_none()));
        assert!(
            p[0].message
                .starts_with("services/x/ext: spec.type: ExternalName"),
            "{p:?}"
        );
    }

    #[test]
    fn load_balancers_and_external_ips() {
        let (mut s, p) = services_from_api(
            &[
                svc("metadata: {name: lb, namespace: x}\nspec: {type: LoadBalancer, clusterIP: 10.96.0.2, externalIPs: [192.0.2.7], ports: [{port: 80, nodePort: 30080}]}\nstatus: {loadBalancer: {ingress: [{ip: 198.51.100.9}, {ip: 198.51.100.10, ipMode: Proxy}, {hostname: lb.example.com}, {ip: 192.0.2.7}]}}"),
                svc("metadata: {name: pending, namespace: x}\nspec: {type: LoadBalancer, clusterIP: 10.96.0.3, ports: [{port: 80, nodePort: 30081}]}\nstatus: {loadBalancer: {}}"),
                svc("metadata: {name: cip, namespace: x}\nspec: {clusterIP: 10.96.0.4, externalIPs: [203.0.113.1], ports: [{port: 80}]}\nstatus: {loadBalancer: {ingress: [{ip: 198.51.100.11}]}}"),
            ],
            &[],
        );
        assert!(p.is_empty(), "{p:?}");
        let keys: Vec<_> = s.iter().map(|s| s.key()).collect();
        assert_eq!(keys, ["x/cip", "x/lb", "x/pending"]);
        s.rotate_left(1);
        assert_eq!(s[0].kind, ServiceType::LoadBalancer);
        assert_eq!(s[0].ports[0].node_port, Some(30080));
        let ips = |v: &[&str]| {
            v.iter()
                .map(|a| a.parse().unwrap())
                .collect::<Vec<IpAddr>>()
        };
        // Proxy-mode and hostname-only ingress points are not served; an
        // address listed twice once.
        assert_eq!(s[0].external_ips, ips(&["192.0.2.7", "198.51.100.9"]));
        assert_eq!(s[1].ports[0].node_port, Some(30081));
        assert!(s[1].external_ips.is_empty());
        // A ClusterIP Service's stale load-balancer status is not read.
        assert_eq!(s[2].external_ips, ips(&["203.0.113.1"]));

        // A loopback external address is a Problem (the last good state stays).
        let (_, p) = services_from_api(
            &[svc("metadata: {name: bad, namespace: x}\nspec: {clusterIP: 10.96.0.5, externalIPs: [127.0.0.1], ports: [{port: 80}]}")],
            &[],
        );
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].message
                .starts_with("services/x/bad: spec.externalIPs: 127.0.0.1 is not usable"),
            "{p:?}"
        );
        assert!(p[0].keeps.is_some());
    }

    #[test]
    fn bad_input_is_a_problem_and_the_last_good_stays() {
        let mut f = ServicesInForce::default();
        let (good, p) = f.update(&[svc(WEB)], &[slice(WEB_V4)]);
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(good.len(), 1);
        let before = good[0].clone();

        // An unknown targetPort name: the slice controller resolves it on
        // no pod, so the slice has no port of the Service port's name.
        let renamed = WEB.replace("targetPort: web", "targetPort: nope");
        let no_http = WEB_V4.replace("- {name: http, port: 8080, protocol: TCP}\n", "");
        let (now, p) = f.update(&[svc(&renamed)], &[slice(&no_http)]);
        assert_eq!(now, vec![before.clone()]);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].kind, "Service");
        assert_eq!(p[0].keeps.as_deref(), Some("x/web"));
        assert!(
            p[0].message.starts_with("services/x/web: spec.ports[0].targetPort: \"nope\": no endpoint has a port of that name"),
            "{}",
            p[0].message
        );

        // Malformed slices: each one a Problem on the slice, the Service's
        // last good state stays.
        let bad_slices = [
            (
                WEB_V4.replace("[10.1.0.5]", "[\"fd00::5\"]"),
                "endpoints[0].addresses: \"fd00::5\" is not an IPv4 address",
            ),
            (
                WEB_V4.replace("[10.1.0.5]", "[nope]"),
                "endpoints[0].addresses: \"nope\" is not an IPv4 address",
            ),
            (
                WEB_V4.replace("[10.1.0.5]", "[]"),
                "endpoints[0].addresses: empty",
            ),
            (
                WEB_V4.replace("port: 8080", "port: 70000"),
                "ports[0].port: 70000 is not a port (1-65535)",
            ),
            (
                WEB_V4.replace("port: 8080, protocol: TCP", "port: 8080"),
                "ports[0].protocol: missing",
            ),
            (
                WEB_V4.replace("protocol: UDP", "protocol: ICMP"),
                "ports[1].protocol: \"ICMP\" is not TCP, UDP or SCTP",
            ),
            (
                WEB_V4.replace(
                    "{name: http, port: 8080, protocol: TCP}",
                    "{name: http, protocol: TCP}",
                ),
                "ports[0].port: missing",
            ),
        ];
        for (y, want) in &bad_slices {
            let (now, p) = f.update(&[svc(WEB)], &[slice(y)]);
            assert_eq!(now, vec![before.clone()], "{want}");
            assert_eq!(p.len(), 1, "{p:?}");
            assert_eq!(
                (p[0].kind, p[0].name.as_str()),
                ("EndpointSlice", "web-abc")
            );
            assert_eq!(p[0].message, format!("endpointslices/x/web-abc: {want}"));
            assert_eq!(p[0].keeps.as_deref(), Some("x/web"));
        }

        // A slice of a Service that does not exist: a Problem, ignored.
        let orphan = WEB_V4.replace("service-name: web}", "service-name: gone}");
        let (now, p) = f.update(&[svc(WEB)], &[slice(WEB_V4), slice(&orphan)]);
        assert_eq!(now, vec![before.clone()]);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].keeps, None);
        assert_eq!(
            p[0].message,
            "endpointslices/x/web-abc: metadata.labels[kubernetes.io/service-name]: no Service x/gone; ignored"
        );
        // ... unless its deleted Service owns it (garbage collected next).
        let owned = orphan.replace(
            "metadata: {",
            "metadata: {ownerReferences: [{apiVersion: v1, kind: Service, name: gone, uid: u1}], ",
        );
        let (_, p) = f.update(&[svc(WEB)], &[slice(WEB_V4), slice(&owned)]);
        assert!(p.is_empty(), "{p:?}");

        // Good again: the change goes through; the Service deleted: gone.
        let (now, p) = f.update(&[svc(WEB)], &[]);
        assert!(p.is_empty());
        assert!(now[0].endpoints.is_empty());
        let (now, _) = f.update(&[], &[]);
        assert!(now.is_empty());

        // A Service bad from the start has no last good: left out.
        let (now, p) = f.update(&[svc(&renamed)], &[slice(&no_http)]);
        assert!(now.is_empty());
        assert_eq!(p.len(), 1);
        // Bad Service fields.
        for (y, want) in [
            (
                "spec: {clusterIP: 10.96.0.300, ports: [{port: 80}]}",
                "spec.clusterIPs: \"10.96.0.300\"",
            ),
            (
                "spec: {clusterIP: 10.96.0.3, ports: [{port: 80, protocol: ICMP}]}",
                "spec.ports[0].protocol: \"ICMP\"",
            ),
            (
                "spec: {clusterIP: 10.96.0.3, ports: [{port: 80, targetPort: 0x}]}",
                "",
            ),
            (
                "spec: {clusterIP: 10.96.0.3, ports: [{port: 80, targetPort: 99999}]}",
                "spec.ports[0].targetPort: 99999 is not a port",
            ),
            (
                "spec: {clusterIP: 10.96.0.3, externalTrafficPolicy: Nearest, ports: [{port: 80}]}",
                "spec.externalTrafficPolicy: \"Nearest\"",
            ),
        ] {
            let (_, p) = services_from_api(
                &[svc(&format!("metadata: {{name: b, namespace: x}}\n{y}"))],
                &[],
            );
            if want.is_empty() {
                assert!(p.is_empty(), "{p:?}"); // a name: resolved per pod
                continue;
            }
            assert_eq!(p.len(), 1, "{y}");
            assert!(
                p[0].message.starts_with(&format!("services/x/b: {want}")),
                "{}",
                p[0].message
            );
            assert_eq!(p[0].keeps.as_deref(), Some("x/b"));
        }
    }
}
