//! Shared test helpers: a small cluster, policies from YAML, judging flows
//! with the compiled tables (the dataplane's judge).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use weir_dataplane::policy::{CompiledPolicy, Judgement, Peer};
use weir_policy::{compile, node_endpoints, parse_str, NamespaceInfo, PodInfo, PolicyInput};
use weir_topo::{ContainerPort, Protocol};

pub fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub fn pod(
    ns: &str,
    name: &str,
    l: &[(&str, &str)],
    ip: u8,
    ports: &[(&str, u16, Protocol)],
) -> PodInfo {
    PodInfo {
        namespace: ns.into(),
        name: name.into(),
        node: "n1".into(),
        labels: labels(l),
        ipv4: Some(Ipv4Addr::new(10, 0, 0, ip)),
        ipv6: None,
        ports: ports
            .iter()
            .map(|(n, p, proto)| ContainerPort {
                name: (!n.is_empty()).then(|| n.to_string()),
                port: *p,
                protocol: *proto,
            })
            .collect(),
    }
}

/// Namespaces prod (env=prod), dev (env=dev), default; pods:
/// prod/web (app=web, 10.0.0.2, http=8080/TCP), prod/db (app=db, .3,
/// pg=5432), prod/api (app=api, .4), dev/web (app=web, .5, http=9090),
/// default/x (app=x, .6).
pub fn cluster() -> PolicyInput {
    PolicyInput {
        namespaces: vec![
            NamespaceInfo {
                name: "prod".into(),
                labels: labels(&[("env", "prod")]),
            },
            NamespaceInfo {
                name: "dev".into(),
                labels: labels(&[("env", "dev")]),
            },
            NamespaceInfo {
                name: "default".into(),
                labels: labels(&[]),
            },
        ],
        pods: vec![
            pod(
                "prod",
                "web",
                &[("app", "web")],
                2,
                &[("http", 8080, Protocol::Tcp)],
            ),
            pod(
                "prod",
                "db",
                &[("app", "db")],
                3,
                &[("pg", 5432, Protocol::Tcp)],
            ),
            pod("prod", "api", &[("app", "api"), ("tier", "be")], 4, &[]),
            pod(
                "dev",
                "web",
                &[("app", "web")],
                5,
                &[("http", 9090, Protocol::Tcp)],
            ),
            pod("default", "x", &[("app", "x")], 6, &[]),
        ],
        hosts: vec!["10.0.1.1".parse().unwrap()],
        policies: vec![],
    }
}

pub struct World {
    pub input: PolicyInput,
    pub policy: CompiledPolicy,
}

pub fn world(yaml: &str) -> World {
    let mut input = cluster();
    input.policies = if yaml.trim().is_empty() {
        vec![]
    } else {
        parse_str(yaml, "test.yaml").unwrap()
    };
    world_of(input)
}

pub fn world_of(input: PolicyInput) -> World {
    let spec = compile(&input, 1, "n1").unwrap();
    let policy = CompiledPolicy::build(spec).unwrap();
    World { input, policy }
}

impl World {
    /// `ns/pod` (a local endpoint) or an address.
    pub fn peer(&self, who: &str) -> Peer {
        if let Ok(addr) = who.parse::<IpAddr>() {
            return Peer {
                endpoint: None,
                addr,
            };
        }
        let (ns, name) = who.split_once('/').unwrap();
        let eps = node_endpoints(&self.input, "n1");
        let i = eps
            .iter()
            .position(|p| p.namespace == ns && p.name == name)
            .unwrap();
        Peer {
            endpoint: Some(i as u32),
            addr: IpAddr::V4(eps[i].ipv4.unwrap()),
        }
    }

    pub fn judge(&self, from: &str, to: &str, proto: u8, port: u16) -> Judgement {
        self.policy
            .judge(self.peer(from), self.peer(to), proto, port)
    }

    pub fn allowed(&self, from: &str, to: &str, proto: u8, port: u16) -> bool {
        self.judge(from, to, proto, port).allowed
    }

    /// `allow`/`deny`/`audit` + deciding rule text of the ingress side.
    pub fn ingress(&self, from: &str, to: &str, proto: u8, port: u16) -> String {
        let j = self.judge(from, to, proto, port);
        self.policy.describe(&j.ingress)
    }

    pub fn egress(&self, from: &str, to: &str, proto: u8, port: u16) -> String {
        let j = self.judge(from, to, proto, port);
        self.policy.describe(&j.egress)
    }
}

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const ICMP: u8 = 1;
