//! `weir policy check`: the offline reachability matrix and findings about
//! the policies, computed with the compiler and [`CompiledPolicy::judge`],
//! the code the workers run. No traffic is sent.
//!
//! The matrix is every pod pair × every declared (port, protocol) × address
//! family, each block in the shape of `weir probe -o json` (`port`,
//! `protocol`, `family`, `from`, `to`, `connected`). Findings are listed in
//! docs/policy.md ("Checking policies offline").

use crate::compile::{compile_for, namespace_labels, protocol_number, resolve_named};
use crate::model::{Peer as RulePeer, PortMatch, RuleAction};
use crate::{PodInfo, Policy, PolicyError, PolicyInput};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use weir_model::policy::{CompiledPolicy, Decision, Direction, Peer, RuleInfo, Tier};
use weir_model::Protocol;

/// An address family of the matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Ipv4,
    Ipv6,
}

/// One block of the matrix: `weir probe -o json`'s shape without `probes`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MatrixBlock {
    pub port: u16,
    pub protocol: Protocol,
    pub family: Family,
    /// `namespace/pod`, sorted.
    pub from: Vec<String>,
    pub to: Vec<String>,
    /// `connected[i][j]`: from[i] may open a flow to to[j]. A pod to itself
    /// always connects (loopback, never judged); a pair without an address
    /// of the family does not.
    pub connected: Vec<Vec<bool>>,
}

/// How bad a finding is (`--fail-on`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Error,
}

impl std::str::FromStr for Severity {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "info" => Ok(Severity::Info),
            "warning" => Ok(Severity::Warning),
            "error" => Ok(Severity::Error),
            _ => Err(format!("{s:?} is not info, warning or error")),
        }
    }
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
        }
    }
}

/// One finding.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub severity: Severity,
    /// `shadowed`, `redundant`, `overridden-by-admin`, `selects-no-pod`,
    /// `peer-selects-nothing`, `named-port-unresolved`, `egress-blocks-dns`,
    /// `ipblock-overlaps-pods`, `matches-nothing`.
    pub kind: &'static str,
    /// The policy object (`networkpolicies/x/allow-80`).
    pub policy: String,
    /// The rule (`ingress[0]`, `ingress[0].from[1]`), if the finding is about one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    pub message: String,
}

/// What `weir policy check` reports.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub matrix: Vec<MatrixBlock>,
    pub findings: Vec<Finding>,
    /// Set when the matrix was computed per namespace pair (more than
    /// [`MAX_PODS`] pods): says so, and which findings were skipped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl Report {
    /// The worst severity found, if any.
    pub fn worst(&self) -> Option<Severity> {
        self.findings.iter().map(|f| f.severity).max()
    }
}

/// Every (port, protocol) the input declares: container ports of the pods
/// and the single ports and range starts the rules name, sorted.
pub fn declared_ports(input: &PolicyInput) -> Vec<(u16, Protocol)> {
    let mut out = BTreeSet::new();
    for p in &input.pods {
        for c in &p.ports {
            out.insert((c.port, c.protocol));
        }
    }
    for pol in &input.policies {
        for r in pol.ingress.iter().chain(&pol.egress) {
            for m in r.ports.iter().flatten() {
                if let PortMatch::Range {
                    protocol, start, ..
                } = m
                {
                    if *start != 0 {
                        out.insert((*start, *protocol));
                    }
                }
            }
        }
    }
    out.into_iter().collect()
}

/// Above this many pods `check` computes the matrix per namespace pair
/// ([`check_per_namespace_pair`]): one block per (source namespace,
/// destination namespace, port, family), judged one at a time, instead of
/// one n² grid of judged cells whose memory grows with the whole cluster.
pub const MAX_PODS: usize = 2000;

/// The whole check: the matrix over `ports` (all declared ports when empty)
/// and the findings. Above [`MAX_PODS`] pods the matrix comes per
/// namespace pair and the findings that need the whole grid (egress DNS,
/// Admin overrides, undeciding rules) are skipped; [`Report::note`] says so.
pub fn check(input: &PolicyInput, ports: &[(u16, Protocol)]) -> Result<Report, PolicyError> {
    let ports = if ports.is_empty() {
        declared_ports(input)
    } else {
        ports.to_vec()
    };
    let mut findings = Vec::new();
    subjects_and_peers(input, &mut findings);
    named_ports(input, &mut findings);
    ipblocks(input, &mut findings);
    let (matrix, note) = if input.pods.len() > MAX_PODS {
        let mut matrix = Vec::new();
        let pairs = check_per_namespace_pair(input, &ports, |b| matrix.push(b))?;
        let note = format!(
            "{} pods (more than {MAX_PODS}): the matrix is computed per namespace pair ({pairs} pairs, {} blocks); the egress-DNS, Admin-override and undeciding-rule findings need the whole grid and were skipped",
            input.pods.len(),
            matrix.len()
        );
        (matrix, Some(note))
    } else {
        let grid = Grid::new(input, &ports)?;
        egress_dns(input, &grid, &mut findings)?;
        overridden_by_admin(input, &grid, &mut findings)?;
        undeciding_rules(input, &grid, &mut findings)?;
        (grid.blocks(), None)
    };
    findings.sort_by(|a, b| {
        (b.severity, &a.policy, &a.rule, a.kind).cmp(&(a.severity, &b.policy, &b.rule, b.kind))
    });
    Ok(Report {
        matrix,
        findings,
        note,
    })
}

/// The matrix one namespace pair at a time: for every (source namespace,
/// destination namespace) pair, every port and family, one block whose
/// `from` are the source namespace's pods and `to` the destination's,
/// judged by the workers' judge and handed to `emit` before the next is
/// built. Memory is one compiled policy plus one block, whatever the
/// cluster's size. Returns the number of namespace pairs.
pub fn check_per_namespace_pair(
    input: &PolicyInput,
    ports: &[(u16, Protocol)],
    mut emit: impl FnMut(MatrixBlock),
) -> Result<usize, PolicyError> {
    let pods = sorted_pods(input);
    let compiled = CompiledPolicy::build(compile_for(input, 0, &pods)?)?;
    let families: Vec<Family> = [Family::Ipv4, Family::Ipv6]
        .into_iter()
        .filter(|f| pods.iter().any(|p| addr(p, *f).is_some()))
        .collect();
    // Namespaces as index ranges of the sorted pods.
    let mut spans: Vec<(usize, usize)> = Vec::new();
    for (i, p) in pods.iter().enumerate() {
        match spans.last_mut() {
            Some(s) if pods[s.0].namespace == p.namespace => s.1 = i + 1,
            _ => spans.push((i, i + 1)),
        }
    }
    let name = |p: &PodInfo| format!("{}/{}", p.namespace, p.name);
    for &(a0, a1) in &spans {
        let from: Vec<String> = pods[a0..a1].iter().map(|p| name(p)).collect();
        for &(b0, b1) in &spans {
            let to: Vec<String> = pods[b0..b1].iter().map(|p| name(p)).collect();
            for &(port, proto) in ports {
                for &fam in &families {
                    let connected = (a0..a1)
                        .map(|i| {
                            (b0..b1)
                                .map(|j| match (addr(pods[i], fam), addr(pods[j], fam)) {
                                    (Some(_), Some(_)) if i == j => true,
                                    (Some(sa), Some(da)) => {
                                        compiled
                                            .judge(
                                                Peer {
                                                    endpoint: Some(i as u32),
                                                    addr: sa,
                                                },
                                                Peer {
                                                    endpoint: Some(j as u32),
                                                    addr: da,
                                                },
                                                protocol_number(proto),
                                                port,
                                            )
                                            .allowed
                                    }
                                    _ => false,
                                })
                                .collect()
                        })
                        .collect();
                    emit(MatrixBlock {
                        port,
                        protocol: proto,
                        family: fam,
                        from: from.clone(),
                        to: to.clone(),
                        connected,
                    });
                }
            }
        }
    }
    Ok(spans.len() * spans.len())
}

/// One judged pair: (egress, ingress, allowed).
type Cell = Option<(Decision, Decision, bool)>;

/// The judged cells: per (port, protocol, family), per ordered pod pair,
/// the [`weir_model::policy::Judgement`] of the workers' judge.
struct Grid<'a> {
    pods: Vec<&'a PodInfo>,
    ports: Vec<(u16, Protocol)>,
    /// `cells[k][i * n + j]`: block k (ports × families), None when the pair
    /// has no address of the family or is the same pod.
    cells: Vec<(u16, Protocol, Family, Vec<Cell>)>,
}

fn sorted_pods(input: &PolicyInput) -> Vec<&PodInfo> {
    let mut pods: Vec<&PodInfo> = input.pods.iter().collect();
    pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    pods
}

fn addr(p: &PodInfo, f: Family) -> Option<IpAddr> {
    match f {
        Family::Ipv4 => p.ipv4.map(IpAddr::V4),
        Family::Ipv6 => p.ipv6.map(IpAddr::V6),
    }
}

impl<'a> Grid<'a> {
    fn new(input: &'a PolicyInput, ports: &[(u16, Protocol)]) -> Result<Grid<'a>, PolicyError> {
        let pods = sorted_pods(input);
        let compiled = CompiledPolicy::build(compile_for(input, 0, &pods)?)?;
        let families: Vec<Family> = [Family::Ipv4, Family::Ipv6]
            .into_iter()
            .filter(|f| pods.iter().any(|p| addr(p, *f).is_some()))
            .collect();
        let n = pods.len();
        let mut cells = Vec::new();
        for &(port, proto) in ports {
            for &fam in &families {
                let mut v = Vec::with_capacity(n * n);
                for (i, s) in pods.iter().enumerate() {
                    for (j, d) in pods.iter().enumerate() {
                        let cell = match (addr(s, fam), addr(d, fam)) {
                            (Some(sa), Some(da)) if i != j => {
                                let jd = compiled.judge(
                                    Peer {
                                        endpoint: Some(i as u32),
                                        addr: sa,
                                    },
                                    Peer {
                                        endpoint: Some(j as u32),
                                        addr: da,
                                    },
                                    protocol_number(proto),
                                    port,
                                );
                                Some((jd.egress, jd.ingress, jd.allowed))
                            }
                            _ => None,
                        };
                        v.push(cell);
                    }
                }
                cells.push((port, proto, fam, v));
            }
        }
        Ok(Grid {
            pods,
            ports: ports.to_vec(),
            cells,
        })
    }

    fn names(&self) -> Vec<String> {
        self.pods
            .iter()
            .map(|p| format!("{}/{}", p.namespace, p.name))
            .collect()
    }

    fn blocks(&self) -> Vec<MatrixBlock> {
        let n = self.pods.len();
        let names = self.names();
        self.cells
            .iter()
            .map(|(port, proto, fam, v)| MatrixBlock {
                port: *port,
                protocol: *proto,
                family: *fam,
                from: names.clone(),
                to: names.clone(),
                connected: (0..n)
                    .map(|i| {
                        (0..n)
                            .map(|j| {
                                i == j && addr(self.pods[i], *fam).is_some()
                                    || v[i * n + j].is_some_and(|c| c.2)
                            })
                            .collect()
                    })
                    .collect(),
            })
            .collect()
    }
}

/// `ingress[2]` and the rule's identity in [`RuleInfo`] terms.
fn rule_path(dir: Direction, index: usize) -> String {
    format!("{}[{index}]", dir.as_str())
}

fn info_object(r: &RuleInfo) -> String {
    match &r.namespace {
        Some(ns) => format!("{}/{}/{}", r.kind, ns, r.name),
        None => format!("{}/{}", r.kind, r.name),
    }
}

fn subjects(input: &PolicyInput, p: &Policy) -> Vec<usize> {
    let ns = namespace_labels(input);
    let empty = Default::default();
    input
        .pods
        .iter()
        .enumerate()
        .filter(|(_, pod)| {
            p.subject.selects(
                &pod.namespace,
                ns.get(&pod.namespace).unwrap_or(&empty),
                &pod.labels,
            )
        })
        .map(|(i, _)| i)
        .collect()
}

fn peer_pods(input: &PolicyInput, peer: &RulePeer) -> Vec<usize> {
    let ns = namespace_labels(input);
    let empty = Default::default();
    input
        .pods
        .iter()
        .enumerate()
        .filter(|(_, pod)| match peer {
            RulePeer::Any => true,
            RulePeer::Cidr { .. } => false,
            RulePeer::Pods { namespaces, pods } => {
                let ns_ok = match namespaces {
                    crate::model::Namespaces::Same(n) => *n == pod.namespace,
                    crate::model::Namespaces::Selector(s) => {
                        s.matches(ns.get(&pod.namespace).unwrap_or(&empty))
                    }
                };
                ns_ok && pods.matches(&pod.labels)
            }
        })
        .map(|(i, _)| i)
        .collect()
}

fn subjects_and_peers(input: &PolicyInput, out: &mut Vec<Finding>) {
    for p in &input.policies {
        // A host endpoint policy selects nodes, never pods (check does not
        // see nodes: it judges pods' flows only).
        let host_policy = matches!(p.subject, crate::model::Subject::Nodes { .. });
        if !host_policy && subjects(input, p).is_empty() {
            out.push(Finding {
                severity: Severity::Warning,
                kind: "selects-no-pod",
                policy: p.object(),
                rule: None,
                message: "the policy's subject selects no pod: it has no effect".into(),
            });
        }
        for dir in [Direction::Ingress, Direction::Egress] {
            for (i, r) in p.rules(dir).iter().enumerate() {
                if r.to_fqdns.is_some() {
                    continue;
                }
                for (k, peer) in r.peers.iter().enumerate() {
                    if matches!(peer, RulePeer::Pods { .. }) && peer_pods(input, peer).is_empty() {
                        let side = if dir == Direction::Ingress {
                            "from"
                        } else {
                            "to"
                        };
                        out.push(Finding {
                            severity: Severity::Warning,
                            kind: "peer-selects-nothing",
                            policy: p.object(),
                            rule: Some(format!("{}.{side}[{k}]", rule_path(dir, i))),
                            message:
                                "this peer selects no pod (no namespace or no pod has the labels)"
                                    .into(),
                        });
                    }
                }
            }
        }
    }
}

fn named_ports(input: &PolicyInput, out: &mut Vec<Finding>) {
    for p in &input.policies {
        for dir in [Direction::Ingress, Direction::Egress] {
            // The destination pods: the subjects for ingress, the peers for egress.
            for (i, r) in p.rules(dir).iter().enumerate() {
                let dests: Vec<usize> = match dir {
                    Direction::Ingress => subjects(input, p),
                    Direction::Egress => {
                        let mut v: Vec<usize> =
                            r.peers.iter().flat_map(|x| peer_pods(input, x)).collect();
                        v.sort_unstable();
                        v.dedup();
                        v
                    }
                };
                for m in r.ports.iter().flatten() {
                    let PortMatch::Named { protocol, name } = m else {
                        continue;
                    };
                    let found = dests.iter().any(|&d| {
                        resolve_named(&input.pods[d].ports, name, *protocol)
                            .next()
                            .is_some()
                    });
                    if !found {
                        out.push(Finding {
                            severity: Severity::Error,
                            kind: "named-port-unresolved",
                            policy: p.object(),
                            rule: Some(rule_path(dir, i)),
                            message: format!(
                                "named port {name:?}{} is a container port of no destination pod: the port match matches nothing",
                                protocol.map(|p| format!(" ({p})")).unwrap_or_default()
                            ),
                        });
                    }
                }
            }
        }
    }
}

fn ipblocks(input: &PolicyInput, out: &mut Vec<Finding>) {
    for p in &input.policies {
        for dir in [Direction::Ingress, Direction::Egress] {
            for (i, r) in p.rules(dir).iter().enumerate() {
                for peer in &r.peers {
                    let RulePeer::Cidr { cidr, .. } = peer else {
                        continue;
                    };
                    let inside: Vec<String> = input
                        .pods
                        .iter()
                        .filter(|pod| {
                            [pod.ipv4.map(IpAddr::V4), pod.ipv6.map(IpAddr::V6)]
                                .into_iter()
                                .flatten()
                                .any(|a| peer.cidr_contains(a))
                        })
                        .map(|pod| format!("{}/{}", pod.namespace, pod.name))
                        .collect();
                    if !inside.is_empty() {
                        out.push(Finding {
                            severity: Severity::Warning,
                            kind: "ipblock-overlaps-pods",
                            policy: p.object(),
                            rule: Some(rule_path(dir, i)),
                            message: format!(
                                "ipBlock {cidr} contains pod addresses ({} pod(s): {}); pod addresses change when pods restart, select pods by labels",
                                inside.len(),
                                inside.iter().take(5).cloned().collect::<Vec<_>>().join(", ")
                            ),
                        });
                    }
                }
            }
        }
    }
}

/// The cluster DNS service address kubeadm and kind use, when no pod is
/// labelled `k8s-app: kube-dns`.
const DEFAULT_DNS: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 96, 0, 10));

fn egress_dns(input: &PolicyInput, g: &Grid, out: &mut Vec<Finding>) -> Result<(), PolicyError> {
    let compiled = CompiledPolicy::build(compile_for(input, 0, &g.pods)?)?;
    let dns_pods: Vec<usize> = g
        .pods
        .iter()
        .enumerate()
        .filter(|(_, p)| p.labels.get("k8s-app").map(String::as_str) == Some("kube-dns"))
        .map(|(i, _)| i)
        .collect();
    for (i, pod) in g.pods.iter().enumerate() {
        if dns_pods.contains(&i) {
            continue;
        }
        let Some(sa) = pod.ipv4.map(IpAddr::V4).or(pod.ipv6.map(IpAddr::V6)) else {
            continue;
        };
        let targets: Vec<(Option<u32>, IpAddr, String)> = if dns_pods.is_empty() {
            vec![(None, DEFAULT_DNS, DEFAULT_DNS.to_string())]
        } else {
            dns_pods
                .iter()
                .filter_map(|&d| {
                    let p = g.pods[d];
                    let a = if sa.is_ipv4() {
                        p.ipv4.map(IpAddr::V4)
                    } else {
                        p.ipv6.map(IpAddr::V6)
                    }?;
                    Some((Some(d as u32), a, format!("{}/{}", p.namespace, p.name)))
                })
                .collect()
        };
        let blocked: Vec<(String, Decision)> = targets
            .into_iter()
            .filter_map(|(ep, da, name)| {
                let j = compiled.judge(
                    Peer {
                        endpoint: Some(i as u32),
                        addr: sa,
                    },
                    Peer {
                        endpoint: ep,
                        addr: da,
                    },
                    17,
                    53,
                );
                (!j.egress.passes()).then_some((name, j.egress))
            })
            .collect();
        if let Some((target, d)) = blocked.first() {
            let (policy, rule) = match compiled.rule(d.rule) {
                Some(r) => (info_object(r), Some(rule_path(r.direction, r.index))),
                // Implicit deny: name the policy that isolates the pod's egress.
                None => (
                    input
                        .policies
                        .iter()
                        .filter(|p| p.isolates(Direction::Egress))
                        .find(|p| {
                            subjects(input, p)
                                .iter()
                                .any(|&k| std::ptr::eq(&input.pods[k], *pod))
                        })
                        .map_or_else(
                            || format!("pods/{}/{}", pod.namespace, pod.name),
                            |p| p.object(),
                        ),
                    None,
                ),
            };
            out.push(Finding {
                severity: Severity::Warning,
                kind: "egress-blocks-dns",
                policy,
                rule,
                message: format!(
                    "egress of pods/{}/{} to DNS ({target} UDP/53) is denied ({}): name lookups fail",
                    pod.namespace,
                    pod.name,
                    compiled.describe(d)
                ),
            });
        }
    }
    Ok(())
}

/// For every cell an Admin-tier rule decided, what the namespace tier alone
/// would decide: where a NetworkPolicy/WeirPolicy rule would decide the
/// other way, the Admin rule overrides it (both named, cells counted).
fn overridden_by_admin(
    input: &PolicyInput,
    g: &Grid,
    out: &mut Vec<Finding>,
) -> Result<(), PolicyError> {
    if !input.policies.iter().any(|p| p.tier == Tier::Admin) {
        return Ok(());
    }
    let full = CompiledPolicy::build(compile_for(input, 0, &g.pods)?)?;
    let mut without = input.clone();
    without.policies.retain(|p| p.tier != Tier::Admin);
    let wo_grid = Grid::new(&without, &g.ports)?;
    let wo = CompiledPolicy::build(compile_for(&without, 0, &wo_grid.pods)?)?;
    // (admin rule, namespace rule) -> cells
    let mut pairs: BTreeMap<(String, String, String, String), usize> = BTreeMap::new();
    for (k, (_, _, _, cells)) in g.cells.iter().enumerate() {
        for (c, cell) in cells.iter().enumerate() {
            let (Some(a), Some(b)) = (cell, &wo_grid.cells[k].3[c]) else {
                continue;
            };
            for (da, db) in [(a.0, b.0), (a.1, b.1)] {
                let (Some(ra), Some(rb)) = (full.rule(da.rule), wo.rule(db.rule)) else {
                    continue;
                };
                if ra.tier == Tier::Admin && rb.tier == Tier::Namespace && da.action != db.action {
                    *pairs
                        .entry((
                            info_object(ra),
                            rule_path(ra.direction, ra.index),
                            info_object(rb),
                            rule_path(rb.direction, rb.index),
                        ))
                        .or_default() += 1;
                }
            }
        }
    }
    for ((ap, ar, np, nr), n) in pairs {
        out.push(Finding {
            severity: Severity::Warning,
            kind: "overridden-by-admin",
            policy: np.clone(),
            rule: Some(nr.clone()),
            message: format!(
                "{np} {nr} is overridden by the Admin-tier rule {ap} {ar} on {n} pair/port(s): the Admin tier decides first"
            ),
        });
    }
    Ok(())
}

/// Rules that decide no cell of the matrix: shadowed (something else decides
/// differently where the rule alone would), redundant (something else
/// decides the same way), or matching nothing.
fn undeciding_rules(
    input: &PolicyInput,
    g: &Grid,
    out: &mut Vec<Finding>,
) -> Result<(), PolicyError> {
    let full = CompiledPolicy::build(compile_for(input, 0, &g.pods)?)?;
    let mut deciding = BTreeSet::new();
    for (_, _, _, cells) in &g.cells {
        for (e, i, _) in cells.iter().flatten() {
            deciding.insert(e.rule);
            deciding.insert(i.rule);
        }
    }
    let mut id = 0u32;
    while let Some(info) = full.rule(weir_model::policy::RuleId(id)) {
        let this = weir_model::policy::RuleId(id);
        id += 1;
        if deciding.contains(&this) {
            continue;
        }
        let Some(pol) = input.policies.iter().find(|p| {
            p.kind.resource() == info.kind && p.namespace == info.namespace && p.name == info.name
        }) else {
            continue;
        };
        let Some(rule) = pol.rules(info.direction).get(info.index) else {
            continue;
        };
        if matches!(rule.action, RuleAction::Log | RuleAction::Pass)
            || rule.to_fqdns.is_some()
            || rule
                .peers
                .iter()
                .any(|p| matches!(p, RulePeer::Cidr { .. }))
        {
            // Log never decides; Pass hands over; FQDN and ipBlock rules may
            // decide traffic leaving the cluster, which the matrix does not hold.
            continue;
        }
        // The rule alone: its policy with only this rule.
        let mut alone_pol = pol.clone();
        alone_pol.ingress.clear();
        alone_pol.egress.clear();
        match info.direction {
            Direction::Ingress => alone_pol.ingress.push(rule.clone()),
            Direction::Egress => alone_pol.egress.push(rule.clone()),
        }
        let mut alone = input.clone();
        alone.policies = vec![alone_pol];
        let ag = Grid::new(&alone, &g.ports)?;
        let ac = CompiledPolicy::build(compile_for(&alone, 0, &ag.pods)?)?;
        let mut other: Option<(RuleInfo, bool)> = None;
        let mut matched = false;
        'cells: for (k, (_, _, _, cells)) in ag.cells.iter().enumerate() {
            for (c, cell) in cells.iter().enumerate() {
                let Some(a) = cell else { continue };
                let d = if info.direction == Direction::Ingress {
                    a.1
                } else {
                    a.0
                };
                if ac.rule(d.rule).is_none() {
                    continue;
                }
                matched = true;
                let Some(f) = g.cells[k].3[c] else { continue };
                let fd = if info.direction == Direction::Ingress {
                    f.1
                } else {
                    f.0
                };
                if let Some(r) = full.rule(fd.rule) {
                    let same = fd.action == d.action;
                    if other.as_ref().is_none_or(|(_, s)| *s && !same) {
                        other = Some((r.clone(), same));
                    }
                    if !same {
                        break 'cells;
                    }
                }
            }
        }
        let path = rule_path(info.direction, info.index);
        let f = match (matched, other) {
            (false, _) => Finding {
                severity: Severity::Warning,
                kind: "matches-nothing",
                policy: pol.object(),
                rule: Some(path),
                message: "the rule matches no pod pair on any declared port: it never decides"
                    .into(),
            },
            (true, Some((r, false))) => Finding {
                severity: Severity::Warning,
                kind: "shadowed",
                policy: pol.object(),
                rule: Some(path),
                message: format!(
                    "never decides: {} {} ({} tier, {}) decides first, the other way",
                    info_object(&r),
                    rule_path(r.direction, r.index),
                    tier_name(r.tier),
                    r.action
                ),
            },
            (true, Some((r, true))) => Finding {
                severity: Severity::Info,
                kind: "redundant",
                policy: pol.object(),
                rule: Some(path),
                message: format!(
                    "never decides: {} {} ({}) already decides the same way wherever it matches",
                    info_object(&r),
                    rule_path(r.direction, r.index),
                    r.action
                ),
            },
            (true, None) => continue,
        };
        out.push(f);
    }
    Ok(())
}

fn tier_name(t: Tier) -> &'static str {
    match t {
        Tier::Admin => "Admin",
        Tier::Namespace => "Namespace",
        Tier::Baseline => "Baseline",
    }
}

/// One cell whose verdict a policy change flips (`weir policy diff`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Change {
    pub port: u16,
    pub protocol: Protocol,
    pub family: Family,
    pub from: String,
    pub to: String,
    /// `opened` (denied before, allowed after) or `closed`.
    pub change: &'static str,
}

/// The cells of `new` whose verdict differs from the same cell of `old`
/// (same port, protocol, family, source and destination). Cells in only
/// one of them (a pod or port added or removed) are not compared.
pub fn diff(old: &[MatrixBlock], new: &[MatrixBlock]) -> Vec<Change> {
    let mut out = Vec::new();
    for nb in new {
        // The old block of the same port and family holding the new
        // block's first pair (the whole matrix, or the same namespace pair).
        let holds = |o: &&MatrixBlock| match (nb.from.first(), nb.to.first()) {
            (Some(f), Some(t)) => o.from.contains(f) && o.to.contains(t),
            _ => true,
        };
        let Some(ob) = old
            .iter()
            .filter(|o| (o.port, o.protocol, o.family) == (nb.port, nb.protocol, nb.family))
            .find(holds)
        else {
            continue;
        };
        for (i, f) in nb.from.iter().enumerate() {
            let Some(oi) = ob.from.iter().position(|x| x == f) else {
                continue;
            };
            for (j, t) in nb.to.iter().enumerate() {
                let Some(oj) = ob.to.iter().position(|x| x == t) else {
                    continue;
                };
                let (before, after) = (ob.connected[oi][oj], nb.connected[i][j]);
                if before != after {
                    out.push(Change {
                        port: nb.port,
                        protocol: nb.protocol,
                        family: nb.family,
                        from: f.clone(),
                        to: t.clone(),
                        change: if after { "opened" } else { "closed" },
                    });
                }
            }
        }
    }
    out
}
