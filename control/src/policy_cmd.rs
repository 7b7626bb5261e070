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
        Output::Yaml => print!("{}", output.render(&report)?),
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
    if let Some(n) = &r.note {
        s.push_str(&format!("note: {n}\n"));
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

/// An established flow (from the nodes' conntrack tables) that a change cuts.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CutFlow {
    pub node: String,
    pub protocol: String,
    pub src: String,
    pub sport: u16,
    pub dst: String,
    pub dport: u16,
    /// The new verdict, as `weir explain` prints it.
    pub why: String,
    /// The conntrack entry's state (`established`, `replied`, ...).
    pub state: String,
}

/// What `weir policy diff` reports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DiffReport {
    pub changes: Vec<weir_policy::check::Change>,
    /// With the running cluster as the old side: admitted flows the new
    /// policies deny (weir revokes them when the change is applied).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cut: Option<Vec<CutFlow>>,
}

/// `weir policy diff`: `old` files (topology and policies) or the running
/// cluster against `new` files. With the cluster, the new policies are
/// the enforced ones with `new`'s objects added or replaced, as `weir
/// apply -f NEW` would leave them, and the topology is the cluster's; with
/// `old` files, `new` replaces the policies (and the topology, if it has
/// pods).
pub fn diff(
    old: Option<&[PathBuf]>,
    state: &StateDir,
    new: &[PathBuf],
    output: Output,
) -> anyhow::Result<()> {
    let old_input = match old {
        Some(files) => input(Source::Files(files))?,
        None => input(Source::Cluster(state))?,
    };
    let (text, source) = read_texts(new)?;
    let m = manifests::parse_text(&text, &source, FieldValidation::Strict)?;
    let mut new_input = if m.cluster.pods.is_empty() {
        old_input.clone()
    } else {
        planned_input(&m.cluster.clone().finish()?, Vec::new())
    };
    let added: Vec<weir_policy::Policy> = m.policies.into_iter().map(|(p, _)| p).collect();
    new_input.policies = match old {
        Some(_) => added,
        None => {
            let mut v: Vec<weir_policy::Policy> = old_input
                .policies
                .iter()
                .filter(|p| !added.iter().any(|a| a.object() == p.object()))
                .cloned()
                .collect();
            v.extend(added);
            v
        }
    };
    let mut ports = weir_policy::check::declared_ports(&old_input);
    ports.extend(weir_policy::check::declared_ports(&new_input));
    ports.sort();
    ports.dedup();
    let before = weir_policy::check::check(&old_input, &ports)?;
    let after = weir_policy::check::check(&new_input, &ports)?;
    let changes = weir_policy::check::diff(&before.matrix, &after.matrix);
    let cut = match old {
        Some(_) => None,
        None => Some(cut_flows(state, &new_input)?),
    };
    let r = DiffReport { changes, cut };
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&r)?),
        Output::Yaml => print!("{}", output.render(&r)?),
        _ => {
            if r.changes.is_empty() {
                println!("no pair/port changes verdict");
            }
            for c in &r.changes {
                println!(
                    "{:6} {} -> {} {}/{} ({})",
                    c.change,
                    c.from,
                    c.to,
                    c.protocol,
                    c.port,
                    match c.family {
                        weir_policy::check::Family::Ipv4 => "ipv4",
                        weir_policy::check::Family::Ipv6 => "ipv6",
                    }
                );
            }
            if let Some(cut) = &r.cut {
                println!("{} admitted flow(s) would be revoked", cut.len());
                for f in cut {
                    println!(
                        "  {} {}:{} -> {}:{} (node {}): {}",
                        f.protocol, f.src, f.sport, f.dst, f.dport, f.node, f.why
                    );
                }
            }
        }
    }
    Ok(())
}

/// The files' texts joined as one multi-document YAML text, and their
/// names joined with commas (the source errors name).
pub fn read_texts(files: &[PathBuf]) -> anyhow::Result<(String, String)> {
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
    Ok((text, source))
}

/// Most conntrack entries `diff` reads per node (pages of
/// [`crate::flows::CONNTRACK_PAGE_MAX`]).
const CONNTRACK_DUMP_MAX: usize = 1 << 20;

/// Every node's live conntrack entries, read page by page (the workers go
/// on forwarding meanwhile).
fn conntrack_dump(state: &StateDir) -> anyhow::Result<Vec<weir_model::ipc::ConntrackRecord>> {
    use weir_model::ipc::ConntrackReply;
    let c = Cluster::load(&state.cluster_file())
        .with_context(|| format!("cluster {}: not up", state.cluster))?;
    let mut out = Vec::new();
    for n in crate::agent::weir_nodes(&c) {
        let mut from = Some(0u64);
        let mut got = 0usize;
        while let Some(f) = from {
            let v: ConntrackReply = crate::ipc::request(
                &state.dataplane_sock(&n.name),
                &crate::ipc::Request::Conntrack {
                    from: f,
                    max: crate::flows::CONNTRACK_PAGE_MAX,
                },
                std::time::Duration::from_secs(5),
            )
            .with_context(|| format!("conntrack of node {}", n.name))?;
            got += v.entries.len();
            out.extend(v.entries);
            from = v.next;
            if got >= CONNTRACK_DUMP_MAX {
                anyhow::bail!(
                    "conntrack of node {}: more than {CONNTRACK_DUMP_MAX} entries, not read further",
                    n.name
                );
            }
        }
    }
    Ok(out)
}

/// The established flows of every node's conntrack table (pod to pod,
/// TCP/UDP/SCTP; TCP flows closing or closed, and revoked tombstones, are
/// not listed) that `input` denies: those applying it revokes.
fn cut_flows(state: &StateDir, input: &PolicyInput) -> anyhow::Result<Vec<CutFlow>> {
    let mut out = Vec::new();
    for r in conntrack_dump(state)? {
        if matches!(
            r.state.as_str(),
            "fin-wait" | "last-ack" | "time-wait" | "close" | "denied"
        ) {
            continue;
        }
        let (Some(from), Some(to)) = (r.src.split_once('/'), r.dst.split_once('/')) else {
            continue;
        };
        let proto = match r.protocol.to_ascii_uppercase().as_str() {
            "TCP" => weir_model::Protocol::Tcp,
            "UDP" => weir_model::Protocol::Udp,
            "SCTP" => weir_model::Protocol::Sctp,
            _ => continue,
        };
        let Ok(e) = weir_policy::explain(input, from, to, proto, r.dport) else {
            continue;
        };
        if !e.allowed {
            out.push(CutFlow {
                node: r.node.clone(),
                protocol: r.protocol.clone(),
                src: r.src.clone(),
                sport: r.sport,
                dst: r.dst.clone(),
                dport: r.dport,
                why: format!("egress: {}; ingress: {}", e.egress.text, e.ingress.text),
                state: r.state.clone(),
            });
        }
    }
    out.sort_by(|a, b| {
        (&a.node, &a.src, &a.dst, a.dport, a.sport)
            .cmp(&(&b.node, &b.src, &b.dst, b.dport, b.sport))
    });
    Ok(out)
}

/// `new` records of every node's flow log (admitted, pod to pod), and
/// the HTTP notes of L7 records.
fn admitted_flows(state: &StateDir) -> anyhow::Result<Vec<weir_model::ipc::FlowRecord>> {
    use weir_model::ipc::FlowsReply;
    let c = Cluster::load(&state.cluster_file())
        .with_context(|| format!("cluster {}: not up", state.cluster))?;
    let mut out = Vec::new();
    for n in crate::agent::weir_nodes(&c) {
        let v: FlowsReply = crate::ipc::request(
            &state.dataplane_sock(&n.name),
            &crate::ipc::Request::Flows { since: 0 },
            std::time::Duration::from_secs(5),
        )
        .with_context(|| format!("flows of node {}", n.name))?;
        out.extend(
            v.records
                .into_iter()
                .filter(|r| (r.kind == "new" && r.verdict != "denied") || r.l7.is_some()),
        );
    }
    Ok(out)
}

/// `weir policy suggest -o`: the rules table, the YAML, or JSON (YAML,
/// rules and the check).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SuggestOutput {
    Table,
    Yaml,
    Json,
}

impl std::str::FromStr for SuggestOutput {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "table" | "" => Ok(SuggestOutput::Table),
            "yaml" => Ok(SuggestOutput::Yaml),
            "json" => Ok(SuggestOutput::Json),
            _ => Err(format!("-o: {s:?} is not table, yaml or json")),
        }
    }
}

/// Parses `--since`: a number with a unit, `ms`, `s`, `m`, `h` or `d`
/// (`90s`, `15m`, `2h`).
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let bad = || format!("--since: {s:?} is not a duration (NUMBER with ms, s, m, h or d: 15m)");
    let i = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let n: u64 = s[..i].parse().map_err(|_| bad())?;
    let ms = match &s[i..] {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(bad()),
    };
    n.checked_mul(ms)
        .map(std::time::Duration::from_millis)
        .ok_or_else(bad)
}

/// What `weir policy suggest` takes.
pub struct SuggestArgs<'a> {
    pub namespaces: &'a [String],
    /// Only flows whose record is at most this old.
    pub since: Option<std::time::Duration>,
    pub l7: bool,
    pub output: SuggestOutput,
}

fn protocol_of(s: &str) -> Option<weir_model::Protocol> {
    match s.to_ascii_uppercase().as_str() {
        "TCP" => Some(weir_model::Protocol::Tcp),
        "UDP" => Some(weir_model::Protocol::Udp),
        "SCTP" => Some(weir_model::Protocol::Sctp),
        _ => None,
    }
}

/// `weir policy suggest`: NetworkPolicies admitting exactly the flows the
/// running cluster's dataplanes admitted (their flow logs: one `new`
/// record per admitted connection, counted), for the workloads of
/// `namespaces` (all when empty). Prints the table, YAML or JSON, and on
/// stderr how it checks; exit status 1 when the check fails.
pub fn suggest(state: &StateDir, args: &SuggestArgs) -> anyhow::Result<i32> {
    use std::collections::BTreeMap;
    use weir_policy::suggest::Observed;
    let input = input(Source::Cluster(state))?;
    let cutoff = args.since.map(|d| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        now.saturating_sub(d).as_nanos() as u64
    });
    type Key = (String, String, weir_model::Protocol, u16);
    let mut flows: BTreeMap<Key, Observed> = BTreeMap::new();
    let mut http: Vec<(Key, (String, String))> = Vec::new();
    let mut l7_denied = 0usize;
    for r in admitted_flows(state)? {
        if cutoff.is_some_and(|c| r.time_unix_ns < c) {
            continue;
        }
        let (Some(f), Some(t), Some(protocol)) = (
            r.src.split_once('/'),
            r.dst.split_once('/'),
            protocol_of(&r.protocol),
        ) else {
            continue;
        };
        let key = (r.src.clone(), r.dst.clone(), protocol, r.dport);
        if let Some(l7) = &r.l7 {
            // Denied requests are counted; allowed request heads (kind `l7`,
            // the request's own record: not the response's, which carries
            // the status) shape the `--l7` rules.
            if r.verdict == "denied" {
                l7_denied += 1;
            } else if !l7.method.is_empty() && l7.status.is_none() && r.dns.is_none() {
                http.push((key, (l7.method.clone(), l7.path.clone())));
            }
            continue;
        }
        flows
            .entry(key)
            .or_insert_with(|| Observed {
                count: 0,
                ..Observed::new(f, t, protocol, r.dport)
            })
            .count += 1;
    }
    for (k, h) in http {
        if let Some(o) = flows.get_mut(&k) {
            if !o.http.contains(&h) {
                o.http.push(h);
            }
        }
    }
    let observed: Vec<Observed> = flows.into_values().collect();
    let opts = weir_policy::suggest::Options {
        namespaces: args.namespaces.to_vec(),
        l7: args.l7,
    };
    let s = weir_policy::suggest::suggest(&input, &observed, &opts)?;
    match args.output {
        SuggestOutput::Json => println!("{}", serde_json::to_string_pretty(&s)?),
        SuggestOutput::Yaml => print!("{}", s.yaml),
        SuggestOutput::Table => print!("{}", render_suggestion(&s)),
    }
    eprintln!(
        "{} polic(ies) from {} observed flow(s) ({} connection(s)); checked with the current policies: {} observed flow(s) denied, {} unobserved pair/port(s) allowed",
        s.policies,
        observed.len(),
        observed.iter().map(|o| o.count).sum::<u64>(),
        s.missing.len(),
        s.extra.len()
    );
    if args.l7 && observed.iter().all(|o| o.http.is_empty()) {
        eprintln!(
            "--l7: no allowed HTTP request heads in the flow logs (only flows already under WeirPolicy http rules are inspected and recorded; {l7_denied} denied request(s) here); the suggestion is L4 only"
        );
    }
    for m in &s.missing {
        eprintln!("  denied though observed: {m}");
    }
    for e in &s.extra {
        eprintln!("  allowed though not observed: {e}");
    }
    Ok(if s.missing.is_empty() && s.extra.is_empty() {
        0
    } else {
        1
    })
}

/// The table form of a suggestion: one line per rule.
pub fn render_suggestion(s: &weir_policy::suggest::Suggestion) -> String {
    let rows: Vec<[String; 5]> = s
        .rules
        .iter()
        .map(|r| {
            let mut ports = r.ports.join(",");
            if !r.http.is_empty() {
                ports.push_str(&format!(" http[{}]", r.http.join("; ")));
            }
            [
                r.policy.clone(),
                r.direction.to_string(),
                r.peer.clone(),
                ports,
                r.flows.to_string(),
            ]
        })
        .collect();
    let head = ["POLICY", "DIRECTION", "PEER", "PORTS", "FLOWS"];
    let mut w = head.map(str::len);
    for r in &rows {
        for (k, c) in r.iter().enumerate() {
            w[k] = w[k].max(c.len());
        }
    }
    let mut out = String::new();
    for r in std::iter::once(head.map(String::from)).chain(rows) {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(k, c)| format!("{c:w$}", w = w[k]))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn since_durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
        for bad in ["", "15", "m", "1.5h", "-1s", "3w", "99999999999999999999s"] {
            let e = parse_duration(bad).unwrap_err();
            assert!(e.starts_with("--since: ") && e.lines().count() == 1, "{e}");
        }
    }

    #[test]
    fn suggest_outputs() {
        assert_eq!("yaml".parse(), Ok(SuggestOutput::Yaml));
        assert_eq!("".parse(), Ok(SuggestOutput::Table));
        assert!("wide".parse::<SuggestOutput>().is_err());
    }
}
