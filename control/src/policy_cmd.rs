//! `weir policy check`: the offline reachability matrix and findings
//! ([`weir_policy::check`]) for manifest files or a running cluster's
//! topology and enforced policies. No traffic is sent.

use crate::get::Output;
use crate::manifests;
use crate::state::StateDir;
use anyhow::Context;
use ipnet::IpNet;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use weir_policy::check::{Report, Severity};
use weir_policy::{NamespaceInfo, PodInfo, PolicyInput};
use weir_topo::fields::FieldValidation;
use weir_topo::Cluster;

/// What `weir policy check` reads.
pub enum Source<'a> {
    /// Manifest files (Node, Namespace, Pod and policy kinds), offline.
    Files(&'a [PathBuf]),
    /// The running cluster: its topology and the policies it enforces.
    Cluster(&'a StateDir),
}

/// The compiler's input for `source`.
pub fn input(source: Source) -> anyhow::Result<PolicyInput> {
    match source {
        Source::Files(files) => {
            let mut text = String::new();
            for f in files {
                let t = std::fs::read_to_string(f).with_context(|| f.display().to_string())?;
                text.push_str("\n---\n");
                text.push_str(&t);
            }
            let source = files
                .iter()
                .map(|f| f.display().to_string())
                .collect::<Vec<_>>()
                .join(",");
            let m = manifests::parse_text(&text, &source, FieldValidation::Strict)?;
            let spec = m.cluster.finish()?;
            Ok(planned_input(
                &spec,
                m.policies.into_iter().map(|(p, _)| p).collect(),
            ))
        }
        Source::Cluster(state) => {
            let c = Cluster::load(&state.cluster_file())
                .with_context(|| format!("cluster {}: not up", state.cluster))?;
            let policies =
                manifests::parse_all(&manifests::load_policies(&state.policies_file())?)?;
            Ok(PolicyInput::from_cluster(&c, policies))
        }
    }
}

/// Addresses as `weir up` plans them (weir_topo's `Cluster::build`): a
/// node is `.1` of its podCIDRs, its pods `.2`, `.3`, ... in manifest order.
fn planned_input(
    spec: &weir_topo::manifest::ClusterSpec,
    policies: Vec<weir_policy::Policy>,
) -> PolicyInput {
    let v4 = |cidrs: &[IpNet], slot: u32| {
        cidrs.iter().find_map(|c| match c {
            IpNet::V4(n) => Some(Ipv4Addr::from(u32::from(n.network()).wrapping_add(slot))),
            IpNet::V6(_) => None,
        })
    };
    let v6 = |cidrs: &[IpNet], slot: u32| {
        cidrs.iter().find_map(|c| match c {
            IpNet::V6(n) => Some(Ipv6Addr::from(
                u128::from(n.network()).wrapping_add(u128::from(slot)),
            )),
            IpNet::V4(_) => None,
        })
    };
    let cidrs: HashMap<&str, &[IpNet]> = spec
        .nodes
        .iter()
        .map(|n| (n.name.as_str(), n.pod_cidrs.as_slice()))
        .collect();
    let mut slot: HashMap<&str, u32> = HashMap::new();
    let pods = spec
        .pods
        .iter()
        .map(|p| {
            let s = slot.entry(p.node.as_str()).or_insert(2);
            let c = cidrs.get(p.node.as_str()).copied().unwrap_or(&[]);
            let info = PodInfo {
                namespace: p.namespace.clone(),
                name: p.name.clone(),
                node: p.node.clone(),
                labels: p.labels.clone(),
                ipv4: v4(c, *s),
                ipv6: v6(c, *s),
                ports: p.ports.clone(),
            };
            *s += 1;
            info
        })
        .collect();
    PolicyInput {
        namespaces: spec
            .namespaces
            .iter()
            .map(|n| NamespaceInfo {
                name: n.name.clone(),
                labels: n.labels.clone(),
            })
            .collect(),
        pods,
        hosts: spec
            .nodes
            .iter()
            .flat_map(|n| {
                [
                    v4(&n.pod_cidrs, 1).map(IpAddr::V4),
                    v6(&n.pod_cidrs, 1).map(IpAddr::V6),
                ]
            })
            .flatten()
            .collect(),
        policies,
    }
}

/// Parses `--port` values: `80`, `80/TCP`, `53/udp`.
pub fn parse_port(s: &str) -> Result<(u16, weir_model::Protocol), String> {
    let (n, p) = s.split_once('/').unwrap_or((s, "TCP"));
    let port: u16 = n
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("--port: {s:?} is not PORT[/PROTOCOL] (1-65535)"))?;
    let proto = match p.to_ascii_uppercase().as_str() {
        "TCP" => weir_model::Protocol::Tcp,
        "UDP" => weir_model::Protocol::Udp,
        "SCTP" => weir_model::Protocol::Sctp,
        _ => return Err(format!("--port: {p:?} is not TCP, UDP or SCTP")),
    };
    Ok((port, proto))
}

/// Runs the check and prints it; returns the process exit status (1 when a
/// finding is at least `fail_on`).
pub fn check(
    source: Source,
    ports: &[(u16, weir_model::Protocol)],
    output: Output,
    fail_on: Option<Severity>,
) -> anyhow::Result<i32> {
    let input = input(source)?;
    let report = weir_policy::check::check(&input, ports)?;
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        _ => print!("{}", render(&report)),
    }
    let fail = matches!((fail_on, report.worst()), (Some(f), Some(w)) if w >= f);
    Ok(if fail { 1 } else { 0 })
}

/// The table form: one matrix per block ("." connected, "X" not), then the findings.
pub fn render(r: &Report) -> String {
    let mut s = String::new();
    for b in &r.matrix {
        s.push_str(&format!(
            "{}/{} ({})  . = connected, X = blocked\n",
            b.protocol,
            b.port,
            match b.family {
                weir_policy::check::Family::Ipv4 => "ipv4",
                weir_policy::check::Family::Ipv6 => "ipv6",
            }
        ));
        let w = b.from.iter().map(String::len).max().unwrap_or(0);
        s.push_str(&format!("{:w$}", ""));
        for t in &b.to {
            s.push_str(&format!(" {t}"));
        }
        s.push('\n');
        for (i, f) in b.from.iter().enumerate() {
            s.push_str(&format!("{f:w$}"));
            for (j, t) in b.to.iter().enumerate() {
                let c = if b.connected[i][j] { "." } else { "X" };
                s.push_str(&format!(" {c:>tw$}", tw = t.len()));
            }
            s.push('\n');
        }
        s.push('\n');
    }
    if r.findings.is_empty() {
        s.push_str("no findings\n");
    }
    for f in &r.findings {
        s.push_str(&format!(
            "{:7} {:22} {}{}: {}\n",
            f.severity.as_str(),
            f.kind,
            f.policy,
            f.rule.as_ref().map(|r| format!(" {r}")).unwrap_or_default(),
            f.message
        ));
    }
    s
}
