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
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
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
}
