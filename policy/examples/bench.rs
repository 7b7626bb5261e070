//! Compile time and per-new-flow judge time for 10, 1k and 10k rules over
//! ~100 pods. Prints numbers; asserts nothing about time.
//!
//! `cargo run --release -p weir-policy --example bench`
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;
use weir_dataplane::policy::{CompiledPolicy, Peer as DPeer, Tier};
use weir_policy::model::*;
use weir_policy::selector::{Labels, Selector};
use weir_policy::{compile, node_endpoints, NamespaceInfo, PodInfo, PolicyInput};
use weir_topo::{ContainerPort, Protocol};

fn labels(kv: &[(&str, String)]) -> Labels {
    kv.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
}

fn input(rules: usize) -> PolicyInput {
    let namespaces: Vec<NamespaceInfo> = (0..10)
        .map(|i| NamespaceInfo {
            name: format!("ns{i}"),
            labels: labels(&[("team", format!("t{}", i % 3))]),
        })
        .collect();
    let pods: Vec<PodInfo> = (0..100)
        .map(|i| PodInfo {
            namespace: format!("ns{}", i % 10),
            name: format!("pod{i}"),
            node: if i < 50 { "n1".into() } else { "n2".into() },
            labels: labels(&[("app", format!("app{}", i % 20))]),
            ipv4: Some(Ipv4Addr::new(10, 0, (i / 200) as u8, (i % 200) as u8 + 2)),
            ipv6: None,
            ports: vec![ContainerPort {
                name: Some("http".into()),
                port: 8080,
                protocol: Protocol::Tcp,
            }],
        })
        .collect();
    let app = |i: usize| Selector {
        match_labels: labels(&[("app", format!("app{}", i % 20))]),
        ..Default::default()
    };
    let mut policies = Vec::new();
    let mut left = rules;
    let mut i = 0usize;
    while left > 0 {
        let n = left.min(10);
        left -= n;
        let ns = format!("ns{}", i % 10);
        let rule = |j: usize| -> Rule {
            let k = i * 10 + j;
            Rule {
                action: if i % 4 == 3 && j == 0 {
                    RuleAction::Deny
                } else {
                    RuleAction::Allow
                },
                action_text: "Allow".into(),
                peers: if k.is_multiple_of(7) {
                    vec![Peer::Cidr {
                        cidr: format!("172.{}.{}.0/24", k / 256 % 256, k % 256)
                            .parse()
                            .unwrap(),
                        except: vec![],
                    }]
                } else {
                    vec![Peer::Pods {
                        namespaces: Namespaces::Selector(Selector::everything()),
                        pods: app(k * 7),
                    }]
                },
                ports: Some(vec![
                    PortMatch::Range {
                        protocol: Protocol::Tcp,
                        start: 1000 + (k % 5000) as u16,
                        end: 1000 + (k % 5000) as u16,
                    },
                    if k.is_multiple_of(3) {
                        PortMatch::Range {
                            protocol: Protocol::Tcp,
                            start: 20000,
                            end: 30000,
                        }
                    } else {
                        PortMatch::Named {
                            protocol: None,
                            name: "http".into(),
                        }
                    },
                ]),
                name: None,
                http: None,
                dns: None,
                to_fqdns: None,
            }
        };
        let kind = match i % 4 {
            0 | 1 => Kind::NetworkPolicy,
            2 => Kind::AdminNetworkPolicy,
            _ => Kind::WeirPolicy,
        };
        let ns_tier = matches!(kind, Kind::NetworkPolicy | Kind::WeirPolicy);
        policies.push(Policy {
            kind,
            namespace: ns_tier.then(|| ns.clone()),
            name: format!("p{i}"),
            tier: if ns_tier {
                Tier::Namespace
            } else {
                Tier::Admin
            },
            priority: if ns_tier { 0 } else { (i % 1000) as i32 },
            subject: if ns_tier {
                Subject::Namespace {
                    namespace: ns.clone(),
                    pods: app(i),
                }
            } else {
                Subject::Cluster {
                    namespaces: Selector::everything(),
                    pods: app(i),
                }
            },
            ingress: (0..n).map(rule).collect(),
            egress: vec![],
            isolates: [ns_tier, false],
            audit: false,
        });
        i += 1;
    }
    PolicyInput {
        namespaces,
        pods,
        hosts: vec![],
        policies,
    }
}

fn main() {
    println!(
        "{:>6} {:>12} {:>8} {:>8} {:>8} {:>14} {:>8}",
        "rules", "compile", "classes", "tables", "cells", "judge/flow", "allowed"
    );
    for rules in [10, 1_000, 10_000] {
        let input = input(rules);
        let t = Instant::now();
        let spec = compile(&input, 1, "n1").unwrap();
        let compile_time = t.elapsed();
        let (nc, nt, ncell) = (spec.classes.len(), spec.tables.len(), spec.cells.len());
        let policy = CompiledPolicy::build(spec).unwrap();
        let eps = node_endpoints(&input, "n1");
        // Flows: pseudo-random (src pod or world, dst local pod, port).
        let mut flows = Vec::new();
        let mut x = 0x1234_5678_9abc_def1u64;
        for _ in 0..100_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let src = &input.pods[(x % 100) as usize];
            let di = ((x >> 8) % eps.len() as u64) as u32;
            let src_addr = if (x >> 20).is_multiple_of(5) {
                IpAddr::V4(Ipv4Addr::new(
                    172,
                    ((x >> 24) % 40) as u8,
                    ((x >> 32) % 256) as u8,
                    9,
                ))
            } else {
                IpAddr::V4(src.ipv4.unwrap())
            };
            let port =
                [8080u16, 1000 + ((x >> 40) % 5000) as u16, 25000, 443][((x >> 50) % 4) as usize];
            flows.push((
                DPeer {
                    endpoint: None,
                    addr: src_addr,
                },
                DPeer {
                    endpoint: Some(di),
                    addr: IpAddr::V4(eps[di as usize].ipv4.unwrap()),
                },
                port,
            ));
        }
        let mut allowed = 0usize;
        let rounds = 10;
        let t = Instant::now();
        for _ in 0..rounds {
            for &(s, d, port) in &flows {
                allowed +=
                    black_box(policy.judge(black_box(s), black_box(d), 6, port)).allowed as usize;
            }
        }
        let per = t.elapsed().as_nanos() as f64 / (rounds * flows.len()) as f64;
        println!(
            "{rules:>6} {:>10.1}ms {nc:>8} {nt:>8} {ncell:>8} {per:>11.1} ns {:>7.1}%",
            compile_time.as_secs_f64() * 1e3,
            100.0 * allowed as f64 / (rounds * flows.len()) as f64
        );
    }
}
