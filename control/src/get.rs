//! `weir get nodes|namespaces|pods`: what the local cluster holds, kubectl-like.

use std::fmt::Write;
use weir_topo::Cluster;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Table,
    Wide,
    Json,
    Yaml,
}

impl Output {
    /// `v` as `-o json` (pretty) or `-o yaml` prints it, newline-terminated;
    /// JSON for the table outputs (callers use it for json and yaml only).
    pub fn render<T: serde::Serialize>(self, v: &T) -> anyhow::Result<String> {
        Ok(match self {
            Output::Yaml => serde_yaml::to_string(v)?,
            _ => serde_json::to_string_pretty(v)? + "\n",
        })
    }
}

impl std::str::FromStr for Output {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "wide" => Ok(Output::Wide),
            "json" => Ok(Output::Json),
            "yaml" => Ok(Output::Yaml),
            "table" | "" => Ok(Output::Table),
            _ => Err(format!("-o: {s:?} is not one of json, yaml, wide")),
        }
    }
}

fn labels(l: &std::collections::BTreeMap<String, String>) -> String {
    if l.is_empty() {
        return "<none>".into();
    }
    l.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn opt<T: ToString>(o: &Option<T>) -> String {
    o.as_ref().map_or("<none>".into(), |v| v.to_string())
}

/// Renders rows as aligned columns.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut w: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let n = cells.len();
        for (i, c) in cells.into_iter().enumerate() {
            if i + 1 == n {
                let _ = write!(out, "{c}");
            } else {
                let _ = write!(out, "{c:w$}   ", w = w[i]);
            }
        }
        out.push('\n');
    };
    line(header.to_vec(), &mut out);
    for r in rows {
        line(r.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

pub fn nodes(c: &Cluster, name: Option<&str>, o: Output) -> anyhow::Result<String> {
    let items: Vec<_> = c
        .nodes
        .iter()
        .filter(|n| name.is_none_or(|x| x == n.name))
        .collect();
    if let Some(n) = name {
        anyhow::ensure!(!items.is_empty(), "nodes/{n}: not found");
    }
    if o == Output::Yaml {
        return o.render(&items);
    }
    if o == Output::Json {
        return Ok(serde_json::to_string_pretty(&items)?);
    }
    let mut header = vec!["NAME", "PODS", "POD-CIDRS", "INTERNAL-IP"];
    if o == Output::Wide {
        header.extend(["IPV6", "NETNS", "LABELS"]);
    }
    let rows = items
        .iter()
        .map(|n| {
            let mut r = vec![
                n.name.clone(),
                c.pods
                    .iter()
                    .filter(|p| p.node == n.name)
                    .count()
                    .to_string(),
                n.pod_cidrs
                    .iter()
                    .map(|c| c.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
                opt(&n.ipv4),
            ];
            if o == Output::Wide {
                r.extend([opt(&n.ipv6), n.netns.clone(), labels(&n.labels)]);
            }
            r
        })
        .collect::<Vec<_>>();
    Ok(table(&header, &rows))
}

pub fn namespaces(c: &Cluster, name: Option<&str>, o: Output) -> anyhow::Result<String> {
    let items: Vec<_> = c
        .namespaces
        .iter()
        .filter(|n| name.is_none_or(|x| x == n.name))
        .collect();
    if let Some(n) = name {
        anyhow::ensure!(!items.is_empty(), "namespaces/{n}: not found");
    }
    if o == Output::Yaml {
        return o.render(&items);
    }
    if o == Output::Json {
        return Ok(serde_json::to_string_pretty(&items)?);
    }
    let rows = items
        .iter()
        .map(|n| {
            vec![
                n.name.clone(),
                c.pods
                    .iter()
                    .filter(|p| p.namespace == n.name)
                    .count()
                    .to_string(),
                labels(&n.labels),
            ]
        })
        .collect::<Vec<_>>();
    Ok(table(&["NAME", "PODS", "LABELS"], &rows))
}

/// The namespaced objects of `all` in `ns` (all when `None`) named `name`
/// (all when `None`), sorted by (namespace, name); a name that matches
/// nothing is an error naming the `kind`.
fn select<'a, T>(
    all: &'a [T],
    ns: Option<&str>,
    name: Option<&str>,
    kind: &str,
    key: impl Fn(&T) -> (&str, &str),
) -> anyhow::Result<Vec<&'a T>> {
    let mut items: Vec<&T> = all
        .iter()
        .filter(|o| {
            let (n, m) = key(o);
            ns.is_none_or(|x| x == n) && name.is_none_or(|x| x == m)
        })
        .collect();
    items.sort_by(|a, b| key(a).cmp(&key(b)));
    if let Some(n) = name {
        anyhow::ensure!(
            !items.is_empty(),
            "{kind}/{}/{n}: not found",
            ns.unwrap_or("*")
        );
    }
    Ok(items)
}

pub fn pods(
    c: &Cluster,
    ns: Option<&str>,
    name: Option<&str>,
    o: Output,
) -> anyhow::Result<String> {
    let items = select(&c.pods, ns, name, "pods", |p| (&p.namespace, &p.name))?;
    if o == Output::Yaml {
        return o.render(&items);
    }
    if o == Output::Json {
        return Ok(serde_json::to_string_pretty(&items)?);
    }
    let mut header = vec!["NAMESPACE", "NAME", "NODE", "IP", "LABELS"];
    if o == Output::Wide {
        header.extend(["IPV6", "PORTS", "INTERFACE", "MAC"]);
    }
    let rows = items
        .iter()
        .map(|p| {
            let mut r = vec![
                p.namespace.clone(),
                p.name.clone(),
                p.node.clone(),
                opt(&p.ipv4),
                labels(&p.labels),
            ];
            if o == Output::Wide {
                let ports = p
                    .ports
                    .iter()
                    .map(|cp| format!("{}/{:?}", cp.port, cp.protocol))
                    .collect::<Vec<_>>()
                    .join(",");
                let m = p.pod_mac;
                r.extend([
                    opt(&p.ipv6),
                    if ports.is_empty() {
                        "<none>".into()
                    } else {
                        ports
                    },
                    p.host_ifname.clone(),
                    format!(
                        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
                        m[0], m[1], m[2], m[3], m[4], m[5]
                    ),
                ]);
            }
            r
        })
        .collect::<Vec<_>>();
    Ok(table(&header, &rows))
}

/// One row of `weir get services -o json`.
#[derive(Debug, serde::Serialize)]
pub struct ServiceRow {
    pub namespace: String,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub cluster_ips: Vec<std::net::IpAddr>,
    /// `spec.externalIPs` and the load balancer's addresses.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub external_ips: Vec<std::net::IpAddr>,
    /// `port[:targetPort]/PROTOCOL` (Kubernetes' `PORT(S)` column), with the
    /// Service port's name first when it has one (`http=80:http/TCP`).
    pub ports: Vec<String>,
    /// NodePort Services: each port's node port (`null` for none), in the
    /// order of `ports`; the table shows it after the port:
    /// `tcp=80/TCP(node:30080)`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub node_ports: Vec<Option<u16>>,
    /// Ready (and not terminating) endpoints.
    pub endpoints_ready: usize,
    pub endpoints_total: usize,
    /// `namespace/name` of the endpoint pods.
    pub endpoints: Vec<String>,
    pub session_affinity: Option<u32>,
}

/// `weir get services`: namespace, name, type, cluster IPs, ports and
/// endpoints ready/total.
pub fn services(
    c: &Cluster,
    ns: Option<&str>,
    name: Option<&str>,
    o: Output,
) -> anyhow::Result<String> {
    let items = select(&c.services, ns, name, "services", |s| {
        (&s.namespace, &s.name)
    })?;
    let rows: Vec<ServiceRow> = items
        .iter()
        .map(|s| ServiceRow {
            namespace: s.namespace.clone(),
            name: s.name.clone(),
            kind: format!("{:?}", s.kind),
            cluster_ips: s.cluster_ips.clone(),
            external_ips: s.external_ips.clone(),
            ports: s
                .ports
                .iter()
                .map(|p| {
                    let target = match &p.target {
                        weir_model::service::TargetPort::Number(n) if *n == p.port => String::new(),
                        weir_model::service::TargetPort::Number(n) => format!(":{n}"),
                        weir_model::service::TargetPort::Name(n) => format!(":{n}"),
                    };
                    let name = p.name.as_ref().map_or(String::new(), |n| format!("{n}="));
                    format!("{name}{}{target}/{}", p.port, p.protocol)
                })
                .collect(),
            node_ports: if s.kind.has_node_ports() {
                s.ports.iter().map(|p| p.node_port).collect()
            } else {
                Vec::new()
            },
            endpoints_ready: s
                .endpoints
                .iter()
                .filter(|e| e.ready && !e.terminating)
                .count(),
            endpoints_total: s.endpoints.len(),
            endpoints: s.endpoints.iter().filter_map(|e| e.pod.clone()).collect(),
            session_affinity: s.affinity_timeout_s,
        })
        .collect();
    if o == Output::Json {
        return Ok(serde_json::to_string_pretty(&rows)?);
    }
    let header = [
        "NAMESPACE",
        "NAME",
        "TYPE",
        "CLUSTER-IPS",
        "EXTERNAL-IPS",
        "PORT(S)",
        "ENDPOINTS",
    ];
    let list = |v: Vec<String>| {
        if v.is_empty() {
            "<none>".to_string()
        } else {
            v.join(",")
        }
    };
    let rows: Vec<Vec<String>> = rows
        .into_iter()
        .map(|r| {
            vec![
                r.namespace,
                r.name,
                r.kind,
                list(r.cluster_ips.iter().map(|i| i.to_string()).collect()),
                list(r.external_ips.iter().map(|i| i.to_string()).collect()),
                list(
                    r.ports
                        .iter()
                        .enumerate()
                        .map(|(i, p)| match r.node_ports.get(i).copied().flatten() {
                            Some(n) => format!("{p}(node:{n})"),
                            None => p.clone(),
                        })
                        .collect(),
                ),
                format!("{}/{}", r.endpoints_ready, r.endpoints_total),
            ]
        })
        .collect();
    Ok(table(&header, &rows))
}
