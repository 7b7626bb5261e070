//! The strongest check: on random small clusters and policies, the compiled
//! tables judged by the dataplane's `judge` agree, decision for decision
//! (action, deciding rule, audit, log), with a slow direct interpreter of
//! the rules written here from docs/policy.md.
mod common;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use weir_dataplane::policy::{
    Action, CompiledPolicy, Decision, Direction, Peer as DPeer, RuleId, Tier,
};
use weir_policy::model::*;
use weir_policy::selector::{Labels, Operator, Requirement, Selector};
use weir_policy::{compile, node_endpoints, NamespaceInfo, PodInfo, PolicyInput};
use weir_topo::{ContainerPort, Protocol};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, pct: usize) -> bool {
        self.below(100) < pct
    }
    fn pick<T: Clone>(&mut self, v: &[T]) -> T {
        v[self.below(v.len())].clone()
    }
}

fn sel(r: &mut Rng) -> Selector {
    let mut s = Selector::default();
    match r.below(6) {
        0 | 1 => {}
        2 => {
            s.match_labels
                .insert("app".into(), r.pick(&["web", "db", "api"]).into());
        }
        3 => s.match_expressions.push(Requirement {
            key: "app".into(),
            op: r.pick(&[Operator::In, Operator::NotIn]),
            values: vec![r.pick(&["web", "db"]).into()],
        }),
        4 => s.match_expressions.push(Requirement {
            key: r.pick(&["tier", "env"]).into(),
            op: r.pick(&[Operator::Exists, Operator::DoesNotExist]),
            values: vec![],
        }),
        _ => {
            s.match_labels
                .insert("env".into(), r.pick(&["a", "b"]).into());
        }
    }
    s
}

fn net(s: &str) -> ipnet::IpNet {
    s.parse().unwrap()
}

fn peer(r: &mut Rng, ns_tier: bool, own_ns: &str) -> Peer {
    match r.below(if ns_tier { 5 } else { 4 }) {
        0 => Peer::Pods {
            namespaces: Namespaces::Selector(sel(r)),
            pods: sel(r),
        },
        1 => Peer::Pods {
            namespaces: Namespaces::Selector(Selector::everything()),
            pods: sel(r),
        },
        2 => Peer::Cidr {
            cidr: net(r.pick(&["10.0.0.0/28", "192.168.0.0/16", "0.0.0.0/0", "10.0.0.4/30"])),
            except: if r.chance(50) {
                vec![net(r.pick(&["10.0.0.4/31", "10.0.0.0/29"]))]
            } else {
                vec![]
            },
        },
        3 if ns_tier => Peer::Pods {
            namespaces: Namespaces::Same(own_ns.into()),
            pods: sel(r),
        },
        _ => {
            if ns_tier {
                Peer::Any
            } else {
                Peer::Pods {
                    namespaces: Namespaces::Selector(sel(r)),
                    pods: Selector::everything(),
                }
            }
        }
    }
}

fn ports(r: &mut Rng) -> Option<Vec<PortMatch>> {
    if r.chance(30) {
        return None;
    }
    let mut v = Vec::new();
    for _ in 0..1 + r.below(2) {
        v.push(match r.below(6) {
            0 => PortMatch::Range {
                protocol: Protocol::Tcp,
                start: 80,
                end: 80,
            },
            1 => PortMatch::Range {
                protocol: Protocol::Tcp,
                start: 8000,
                end: 9000,
            },
            2 => PortMatch::Named {
                protocol: r.pick(&[None, Some(Protocol::Tcp)]),
                name: "http".into(),
            },
            3 => PortMatch::all(Protocol::Udp),
            4 => PortMatch::Range {
                protocol: Protocol::Udp,
                start: 53,
                end: 53,
            },
            _ => PortMatch::Named {
                protocol: Some(Protocol::Udp),
                name: "dns".into(),
            },
        });
    }
    Some(v)
}

fn policy(r: &mut Rng, i: usize) -> Policy {
    let kind = r.pick(&[
        Kind::NetworkPolicy,
        Kind::NetworkPolicy,
        Kind::WeirPolicy,
        Kind::AdminNetworkPolicy,
        Kind::ClusterNetworkPolicy,
        Kind::WeirClusterPolicy,
        Kind::BaselineAdminNetworkPolicy,
    ]);
    let ns = r.pick(&["a", "b"]).to_string();
    let (tier, namespace) = match kind {
        Kind::NetworkPolicy | Kind::WeirPolicy => (Tier::Namespace, Some(ns.clone())),
        Kind::BaselineAdminNetworkPolicy => (Tier::Baseline, None),
        Kind::ClusterNetworkPolicy if r.chance(50) => (Tier::Baseline, None),
        _ => (Tier::Admin, None),
    };
    let ns_tier = tier == Tier::Namespace;
    let subject = if ns_tier {
        Subject::Namespace {
            namespace: ns.clone(),
            pods: sel(r),
        }
    } else {
        Subject::Cluster {
            namespaces: sel(r),
            pods: sel(r),
        }
    };
    let audit = matches!(kind, Kind::WeirPolicy | Kind::WeirClusterPolicy) && r.chance(30);
    let rules = |r: &mut Rng| -> Vec<Rule> {
        (0..r.below(4))
            .map(|_| {
                let action = match kind {
                    Kind::NetworkPolicy => RuleAction::Allow,
                    Kind::WeirPolicy => {
                        r.pick(&[RuleAction::Allow, RuleAction::Deny, RuleAction::Log])
                    }
                    Kind::BaselineAdminNetworkPolicy => {
                        r.pick(&[RuleAction::Allow, RuleAction::Deny])
                    }
                    Kind::WeirClusterPolicy => r.pick(&[
                        RuleAction::Allow,
                        RuleAction::Deny,
                        RuleAction::Pass,
                        RuleAction::Log,
                    ]),
                    _ => r.pick(&[RuleAction::Allow, RuleAction::Deny, RuleAction::Pass]),
                };
                Rule {
                    action,
                    action_text: format!("{action:?}"),
                    peers: (0..1 + r.below(2)).map(|_| peer(r, ns_tier, &ns)).collect(),
                    ports: ports(r),
                    name: None,
                    http: None,
                    dns: None,
                    to_fqdns: None,
                }
            })
            .collect()
    };
    let ingress = rules(r);
    let egress = rules(r);
    let isolates = match kind {
        Kind::NetworkPolicy => [r.chance(70), r.chance(40)],
        Kind::WeirPolicy => [
            ingress.iter().any(|x| x.action == RuleAction::Allow),
            egress.iter().any(|x| x.action == RuleAction::Allow),
        ],
        _ => [false, false],
    };
    Policy {
        kind,
        namespace,
        name: if kind == Kind::BaselineAdminNetworkPolicy {
            "default".into()
        } else {
            format!("p{i}")
        },
        tier,
        priority: match kind {
            Kind::BaselineAdminNetworkPolicy => 1001,
            _ if ns_tier => 0,
            _ => r.below(4) as i32,
        },
        subject,
        ingress,
        egress,
        isolates,
        audit,
    }
}

fn cluster(r: &mut Rng) -> PolicyInput {
    let mut pods = Vec::new();
    for i in 0..2 + r.below(5) {
        let mut labels = Labels::new();
        labels.insert("app".into(), r.pick(&["web", "db", "api"]).into());
        if r.chance(40) {
            labels.insert("tier".into(), "x".into());
        }
        let mut ports = Vec::new();
        if r.chance(60) {
            ports.push(ContainerPort {
                name: Some("http".into()),
                port: r.pick(&[80, 8080, 9500]),
                protocol: Protocol::Tcp,
            });
        }
        if r.chance(40) {
            ports.push(ContainerPort {
                name: Some("dns".into()),
                port: 53,
                protocol: Protocol::Udp,
            });
        }
        pods.push(PodInfo {
            namespace: r.pick(&["a", "b"]).into(),
            name: format!("p{i}"),
            node: r.pick(&["n1", "n1", "n2"]).into(),
            labels,
            ipv4: Some(Ipv4Addr::new(10, 0, 0, 2 + i as u8)),
            ipv6: None,
            ports,
        });
    }
    let ns_labels = |r: &mut Rng| -> Labels {
        let mut l = BTreeMap::new();
        if r.chance(70) {
            l.insert("env".to_string(), r.pick(&["a", "b"]).to_string());
        }
        l
    };
    let namespaces = vec![
        NamespaceInfo {
            name: "a".into(),
            labels: ns_labels(r),
        },
        NamespaceInfo {
            name: "b".into(),
            labels: ns_labels(r),
        },
    ];
    let n = r.below(6);
    let mut policies: Vec<Policy> = (0..n).map(|i| policy(r, i)).collect();
    // At most one BANP (it is a singleton named default).
    let mut seen = false;
    policies.retain(|p| {
        if p.kind == Kind::BaselineAdminNetworkPolicy {
            let keep = !seen;
            seen = true;
            keep
        } else {
            true
        }
    });
    PolicyInput {
        namespaces,
        pods,
        hosts: vec!["10.0.1.1".parse().unwrap()],
        policies,
    }
}

// ---- the reference interpreter ----

struct Who<'a> {
    pod: Option<&'a PodInfo>,
    addr: IpAddr,
}

fn ns_labels(input: &PolicyInput, ns: &str) -> Labels {
    let mut l = input
        .namespaces
        .iter()
        .find(|n| n.name == ns)
        .map(|n| n.labels.clone())
        .unwrap_or_default();
    l.insert("kubernetes.io/metadata.name".into(), ns.into());
    l
}

fn peer_matches(input: &PolicyInput, p: &Peer, who: &Who) -> bool {
    match p {
        Peer::Any => true,
        Peer::Pods { namespaces, pods } => match who.pod {
            None => false,
            Some(pod) => {
                let ns_ok = match namespaces {
                    Namespaces::Same(n) => *n == pod.namespace,
                    Namespaces::Selector(s) => s.matches(&ns_labels(input, &pod.namespace)),
                };
                ns_ok && pods.matches(&pod.labels)
            }
        },
        Peer::Cidr { .. } => p.cidr_contains(who.addr),
    }
}

fn port_matches(rule: &Rule, dest: Option<&PodInfo>, proto: u8, port: u16) -> bool {
    let Some(list) = &rule.ports else { return true };
    let proto = match proto {
        6 => Protocol::Tcp,
        17 => Protocol::Udp,
        132 => Protocol::Sctp,
        _ => return false,
    };
    list.iter().any(|m| match m {
        PortMatch::Range {
            protocol,
            start,
            end,
        } => *protocol == proto && *start <= port && port <= *end,
        PortMatch::Named { protocol, name } => dest.is_some_and(|d| {
            d.ports.iter().any(|c| {
                c.name.as_deref() == Some(name.as_str())
                    && protocol.is_none_or(|p| p == c.protocol)
                    && c.protocol == proto
                    && c.port == port
            })
        }),
    })
}

/// (action, deciding rule as (object, direction, index) or a reserved id, audit, log)
type RefDecision = (
    Action,
    Result<(String, Direction, usize), RuleId>,
    bool,
    bool,
);

fn reference(
    input: &PolicyInput,
    me: &PodInfo,
    dir: Direction,
    other: &Who,
    proto: u8,
    port: u16,
) -> RefDecision {
    let mut pols: Vec<&Policy> = input.policies.iter().collect();
    pols.sort_by_key(|p| {
        (
            p.tier,
            p.priority,
            p.kind.rank(),
            p.namespace.clone().unwrap_or_default(),
            p.name.clone(),
        )
    });
    let mine = ns_labels(input, &me.namespace);
    let selected: Vec<&Policy> = pols
        .into_iter()
        .filter(|p| p.subject.selects(&me.namespace, &mine, &me.labels))
        .collect();
    // No rule and no isolation in this direction: no table, default allow.
    if selected
        .iter()
        .all(|p| p.rules(dir).is_empty() && !(p.tier == Tier::Namespace && p.isolates(dir)))
    {
        return (Action::Allow, Err(RuleId::DEFAULT_ALLOW), false, false);
    }
    // Nodes are always allowed.
    if input.hosts.contains(&other.addr) {
        return (Action::Allow, Err(RuleId::HOST), false, false);
    }
    let dest = match dir {
        Direction::Ingress => Some(me),
        Direction::Egress => other.pod,
    };
    let hits = |tier: Tier| -> Vec<(&Policy, usize, &Rule)> {
        let mut v = Vec::new();
        for p in selected.iter().filter(|p| p.tier == tier) {
            for (i, r) in p.rules(dir).iter().enumerate() {
                if r.peers.iter().any(|x| peer_matches(input, x, other))
                    && port_matches(r, dest, proto, port)
                {
                    v.push((*p, i, r));
                }
            }
        }
        v
    };
    let id = |p: &Policy, i: usize| Ok((p.object(), dir, i));
    let mut log = false;
    let mut audit: Option<Result<(String, Direction, usize), RuleId>> = None;
    let allow = |rule, audit: Option<_>, log| match audit {
        Some(a) => (Action::Deny, a, true, log),
        None => (Action::Allow, rule, false, log),
    };
    for (p, i, r) in hits(Tier::Admin) {
        match r.action {
            RuleAction::Log => log = true,
            RuleAction::Pass => break,
            RuleAction::Allow => return allow(id(p, i), audit, log),
            RuleAction::Deny if p.audit => {
                audit.get_or_insert(id(p, i));
            }
            RuleAction::Deny => return (Action::Deny, id(p, i), false, log),
        }
    }
    let ns = hits(Tier::Namespace);
    if ns.iter().any(|(_, _, r)| r.action == RuleAction::Log) {
        log = true;
    }
    if let Some((p, i, _)) = ns
        .iter()
        .find(|(p, _, r)| r.action == RuleAction::Deny && !p.audit)
    {
        return (Action::Deny, id(p, *i), false, log);
    }
    if let Some((p, i, _)) = ns
        .iter()
        .find(|(p, _, r)| r.action == RuleAction::Deny && p.audit)
    {
        audit.get_or_insert(id(p, *i));
    }
    if let Some((p, i, _)) = ns.iter().find(|(_, _, r)| r.action == RuleAction::Allow) {
        return allow(id(p, *i), audit, log);
    }
    let isolating: Vec<&&Policy> = selected
        .iter()
        .filter(|p| p.tier == Tier::Namespace && p.isolates(dir))
        .collect();
    if isolating.iter().any(|p| !p.audit) {
        return (Action::Deny, Err(RuleId::IMPLICIT_DENY), false, log);
    }
    if !isolating.is_empty() {
        audit.get_or_insert(Err(RuleId::IMPLICIT_DENY));
    }
    for (p, i, r) in hits(Tier::Baseline) {
        match r.action {
            RuleAction::Log => log = true,
            RuleAction::Pass => break,
            RuleAction::Allow => return allow(id(p, i), audit, log),
            RuleAction::Deny => return (Action::Deny, id(p, i), false, log),
        }
    }
    allow(Err(RuleId::DEFAULT_ALLOW), audit, log)
}

fn convert(c: &CompiledPolicy, d: Decision) -> RefDecision {
    let rule = match c.rule(d.rule) {
        Some(info) => {
            let object = match &info.namespace {
                Some(ns) => format!("{}/{}/{}", info.kind, ns, info.name),
                None => format!("{}/{}", info.kind, info.name),
            };
            Ok((object, info.direction, info.index))
        }
        None => Err(d.rule),
    };
    (d.action, rule, d.audit, d.log)
}

#[test]
fn compiled_judge_agrees_with_the_reference_interpreter() {
    let mut flows_checked = 0usize;
    let (mut denies, mut audits, mut logs, mut by_rule) = (0usize, 0usize, 0usize, 0usize);
    for seed in 1..=400u64 {
        let mut r = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let input = cluster(&mut r);
        let spec = compile(&input, seed, "n1").unwrap();
        let compiled = CompiledPolicy::build(spec).unwrap();
        let eps = node_endpoints(&input, "n1");
        let mut peers: Vec<(Option<u32>, Option<&PodInfo>, IpAddr)> = input
            .pods
            .iter()
            .map(|p| {
                let ep = eps
                    .iter()
                    .position(|e| e.namespace == p.namespace && e.name == p.name)
                    .map(|i| i as u32);
                (ep, Some(p), IpAddr::V4(p.ipv4.unwrap()))
            })
            .collect();
        for a in [
            "8.8.8.8",
            "192.168.3.4",
            "10.0.0.15",
            "10.0.1.1",
            "10.0.0.200",
        ] {
            peers.push((None, None, a.parse().unwrap()));
        }
        for s in &peers {
            for d in &peers {
                if s.0.is_none() && d.0.is_none() {
                    continue;
                }
                for (proto, port) in [
                    (6, 80),
                    (6, 8080),
                    (6, 8500),
                    (6, 9500),
                    (6, 443),
                    (17, 53),
                    (17, 80),
                    (1, 0),
                    (132, 80),
                ] {
                    let j = compiled.judge(
                        DPeer {
                            endpoint: s.0,
                            addr: s.2,
                        },
                        DPeer {
                            endpoint: d.0,
                            addr: d.2,
                        },
                        proto,
                        port,
                    );
                    let want_e = match (s.0, s.1) {
                        (Some(_), Some(pod)) => reference(
                            &input,
                            pod,
                            Direction::Egress,
                            &Who {
                                pod: d.1,
                                addr: d.2,
                            },
                            proto,
                            port,
                        ),
                        _ => (Action::Allow, Err(RuleId::NOT_APPLICABLE), false, false),
                    };
                    let want_i = match (d.0, d.1) {
                        (Some(_), Some(pod)) => reference(
                            &input,
                            pod,
                            Direction::Ingress,
                            &Who {
                                pod: s.1,
                                addr: s.2,
                            },
                            proto,
                            port,
                        ),
                        _ => (Action::Allow, Err(RuleId::NOT_APPLICABLE), false, false),
                    };
                    let ctx = || {
                        format!(
                            "seed {seed}: {:?} -> {:?} {proto}/{port}\npolicies: {:#?}",
                            s.2, d.2, input.policies
                        )
                    };
                    assert_eq!(convert(&compiled, j.egress), want_e, "egress {}", ctx());
                    assert_eq!(convert(&compiled, j.ingress), want_i, "ingress {}", ctx());
                    let passes = |d: &RefDecision| d.0 == Action::Allow || d.2;
                    assert_eq!(j.allowed, passes(&want_e) && passes(&want_i), "{}", ctx());
                    flows_checked += 1;
                    for d in [j.egress, j.ingress] {
                        denies += (d.action == Action::Deny) as usize;
                        audits += d.audit as usize;
                        logs += d.log as usize;
                        by_rule += !d.rule.is_reserved() as usize;
                    }
                }
            }
        }
    }
    eprintln!(
        "flows {flows_checked}, denies {denies}, audits {audits}, logs {logs}, by a rule {by_rule}"
    );
    assert!(flows_checked > 10_000 && denies > 1000 && audits > 50 && logs > 50 && by_rule > 1000);
}
