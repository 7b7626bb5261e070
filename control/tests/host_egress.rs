//! The node's nftables table for its own outbound traffic
//! (`weir_control::host_egress::ruleset`) gives the verdict of the
//! workers' `CompiledPolicy::judge` (and so of `weir explain`) for every
//! destination class, protocol and port boundary: the rendered text is
//! replayed by a small evaluator of exactly the statements the renderer
//! writes (first match, `goto`, verdict maps over addresses, prefixes and
//! port ranges), on a policy with both tiers, `Pass`, `except`, `endPort`,
//! pod peers, failsafe ports and the default. The real kernel runs the
//! same text in tests/tests/host_egress.rs.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use weir_control::host_egress::{parse_counters, ruleset};
use weir_model::policy::{
    CompiledPolicy, FailsafePort, FailsafePorts, Peer, PROTO_SCTP, PROTO_TCP, PROTO_UDP,
};
use weir_policy::{
    compile_with_host, parse_str, HostEndpoint, NamespaceInfo, PodInfo, PolicyInput,
};

const POLICIES: &str = "\
apiVersion: weir.dev/v1alpha1
kind: WeirClusterPolicy
metadata: {name: admin-out}
spec:
  priority: 10
  subject: {nodeSelector: {matchLabels: {role: worker}}}
  egress:
  - {name: lab, action: Pass, to: [{ipBlock: {cidr: 203.0.113.0/24}}]}
  - action: Allow
    to: [{ipBlock: {cidr: 198.51.100.0/24, except: [198.51.100.128/25]}}]
    ports: [{protocol: TCP, port: 80, endPort: 90}, {protocol: UDP, port: 123}]
  - action: Allow
    to: [{namespaceSelector: {matchLabels: {env: prod}}}]
    ports: [{protocol: TCP, port: 5432}]
  - {action: Deny, to: [{ipBlock: {cidr: 198.51.100.0/24}}]}
  - {action: Deny, to: [{ipBlock: {cidr: \"2001:db8::/32\"}}], ports: [{protocol: TCP, port: 22}]}
---
apiVersion: weir.dev/v1alpha1
kind: WeirClusterPolicy
metadata: {name: base-out}
spec:
  priority: 1
  tier: Baseline
  subject: {nodeSelector: {matchLabels: {role: worker}}}
  egress:
  - {action: Allow, to: [{ipBlock: {cidr: 203.0.113.0/25}}], ports: [{protocol: TCP, port: 443}]}
  - {action: Allow, to: [{ipBlock: {cidr: 172.30.0.0/16}}], ports: [{protocol: SCTP, port: 9}]}
  - {action: Deny}
";

fn input() -> PolicyInput {
    let pod = |ns: &str, name: &str, ip: u8| PodInfo {
        namespace: ns.into(),
        name: name.into(),
        node: "n2".into(),
        labels: BTreeMap::new(),
        ipv4: Some(Ipv4Addr::new(10, 0, 1, ip)),
        ipv6: None,
        ports: Vec::new(),
    };
    let ns = |name: &str, env: &str| NamespaceInfo {
        name: name.into(),
        labels: [("env".to_string(), env.to_string())].into(),
    };
    PolicyInput {
        namespaces: vec![ns("prod", "prod"), ns("dev", "dev")],
        pods: vec![pod("prod", "db", 3), pod("dev", "db", 4)],
        hosts: vec!["10.0.0.1".parse().unwrap(), "172.30.0.2".parse().unwrap()],
        policies: parse_str(POLICIES, "host-out.yaml").unwrap(),
    }
}

fn host() -> HostEndpoint {
    HostEndpoint {
        labels: [("role".to_string(), "worker".to_string())].into(),
        addrs: vec![
            "10.0.0.1".parse().unwrap(),
            "172.30.0.1".parse().unwrap(),
            "fd00::1".parse().unwrap(),
        ],
        failsafe: FailsafePorts {
            inbound: Vec::new(),
            outbound: FailsafePort::parse_list("udp:53,tcp:6443,tcp:2379-2380").unwrap(),
        },
    }
}

/// The rendered table, chain name → its statements.
fn chains(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut cur = None;
    for line in text.lines().map(str::trim) {
        if let Some(name) = line
            .strip_prefix("chain ")
            .and_then(|l| l.strip_suffix(" {"))
        {
            cur = Some(name.to_string());
            out.insert(name.to_string(), Vec::new());
        } else if line == "}" {
            cur = None;
        } else if let Some(c) = &cur {
            out.get_mut(c).unwrap().push(line.to_string());
        }
    }
    out
}

fn proto_name(p: u8) -> &'static str {
    match p {
        PROTO_TCP => "tcp",
        PROTO_UDP => "udp",
        PROTO_SCTP => "sctp",
        _ => "icmp",
    }
}

fn in_range(spec: &str, port: u16) -> bool {
    match spec.split_once('-') {
        Some((a, b)) => a.parse::<u16>().unwrap() <= port && port <= b.parse().unwrap(),
        None => spec.parse::<u16>().unwrap() == port,
    }
}

fn addr_matches(elem: &str, a: IpAddr) -> bool {
    match elem.split_once('/') {
        None => elem.parse::<IpAddr>().unwrap() == a,
        Some((net, len)) => {
            let len: u32 = len.parse().unwrap();
            match (net.parse::<IpAddr>().unwrap(), a) {
                (IpAddr::V4(n), IpAddr::V4(a)) => {
                    let m = u32::MAX.checked_shl(32 - len).unwrap_or(0);
                    u32::from(n) & m == u32::from(a) & m
                }
                (IpAddr::V6(n), IpAddr::V6(a)) => {
                    let m = u128::MAX.checked_shl(128 - len).unwrap_or(0);
                    u128::from(n) & m == u128::from(a) & m
                }
                _ => false,
            }
        }
    }
}

/// `{ K : goto X, ... }` → (K, X).
fn vmap_elems(line: &str) -> Vec<(String, String)> {
    let body = &line[line.find('{').unwrap() + 1..line.rfind('}').unwrap()];
    body.split(',')
        .map(|e| {
            let (k, v) = e.split_once(" : goto ").unwrap();
            (k.trim().to_string(), v.trim().to_string())
        })
        .collect()
}

/// The table's verdict for a new flow of the node: (accept?, counter
/// comment). Only what the renderer writes is understood; anything else
/// fails the test.
fn evaluate(ch: &BTreeMap<String, Vec<String>>, a: IpAddr, proto: u8, port: u16) -> (bool, String) {
    let mut chain = "out".to_string();
    'chains: loop {
        for st in &ch[&chain] {
            let st = st.as_str();
            if st.starts_with("type filter hook output")
                || st.starts_with("ct state")
                || st.starts_with("oifname")
                || st.starts_with("icmpv6 type")
            {
                continue; // Not a new flow of the node on its underlay.
            }
            if let Some(rest) = st.strip_prefix("counter ") {
                let accept = rest.starts_with("accept");
                let comment = rest.split('"').nth(1).unwrap_or("").to_string();
                return (accept, comment);
            }
            if let Some(rest) = st.strip_prefix("meta l4proto ") {
                let (p, rest) = rest.split_once(' ').unwrap();
                if p != proto_name(proto) {
                    continue;
                }
                if let Some(target) = rest.strip_prefix("goto ") {
                    chain = target.to_string();
                    continue 'chains;
                }
                if rest.starts_with("th dport vmap") {
                    for (k, target) in vmap_elems(rest) {
                        if in_range(&k, port) {
                            chain = target;
                            continue 'chains;
                        }
                    }
                    panic!("{chain}: port {port} in no element: {st}");
                }
                let rest = rest.strip_prefix("th dport ").expect(st);
                let (ports, verdict) = rest.split_once(' ').unwrap();
                assert!(verdict.starts_with("counter accept comment"), "{st}");
                if in_range(ports, port) {
                    return (true, "failsafe port".into());
                }
                continue;
            }
            if let Some(rest) = st
                .strip_prefix("ip daddr vmap ")
                .filter(|_| a.is_ipv4())
                .or(st.strip_prefix("ip6 daddr vmap ").filter(|_| a.is_ipv6()))
            {
                if let Some((_, target)) = vmap_elems(rest)
                    .into_iter()
                    .find(|(k, _)| addr_matches(k, a))
                {
                    chain = target;
                    continue 'chains;
                }
                continue;
            }
            if st.starts_with("ip daddr vmap") || st.starts_with("ip6 daddr vmap") {
                continue;
            }
            if let Some(target) = st.strip_prefix("goto ") {
                chain = target.to_string();
                continue 'chains;
            }
            panic!("statement the evaluator does not know: {st}");
        }
        panic!("chain {chain} ended without a verdict");
    }
}

#[test]
fn the_nft_table_gives_judges_verdict_everywhere() {
    let i = input();
    let h = host();
    let spec = compile_with_host(&i, 1, "n1", Some(&h)).unwrap();
    let text = ruleset(&spec, &h.failsafe.outbound, "weir-host0")
        .unwrap()
        .expect("a table");
    let ch = chains(&text);
    let compiled = CompiledPolicy::build(spec.clone()).unwrap();

    // The order the brief of the chain promises.
    let out = &ch["out"];
    assert!(out[0].starts_with("type filter hook output priority filter; policy accept"));
    assert_eq!(out[1], "ct state established,related accept");
    assert_eq!(out[2], "oifname \"lo\" accept");
    assert_eq!(out[3], "oifname \"weir-host0\" accept");
    assert!(out[5].contains("udp th dport 53 counter accept"), "{text}");

    let addrs = [
        "198.51.100.1",   // allowed ports only
        "198.51.100.127", // the edge of the except
        "198.51.100.128", // except: the Deny
        "203.0.113.5",    // Pass → Baseline allow 443
        "203.0.113.200",  // Pass → Baseline deny
        "10.0.1.3",       // prod pod: 5432
        "10.0.1.4",       // dev pod: Baseline deny
        "172.30.0.2",     // another node: Baseline SCTP 9
        "8.8.8.8",        // the world
        "2001:db8::1",    // IPv6 deny 22
        "2001:db9::1",    // IPv6 world
    ];
    let mut ports: BTreeSet<u16> = [0, 1, 9, 22, 53, 79, 80, 85, 90, 91, 123, 443]
        .into_iter()
        .chain([2378, 2379, 2380, 2381, 5432, 6443, 65534, 65535])
        .collect();
    // Every boundary of every cell.
    for c in &spec.cells {
        for segs in [&c.tcp, &c.udp, &c.sctp] {
            for (first, _) in segs.iter() {
                ports.insert(*first);
                ports.insert(first.saturating_sub(1));
            }
        }
    }
    let node = Peer {
        endpoint: None,
        addr: "10.0.0.1".parse().unwrap(),
    };
    let node6 = Peer {
        endpoint: None,
        addr: "fd00::1".parse().unwrap(),
    };
    let mut checked = 0;
    let mut denied = 0;
    for a in addrs {
        let a: IpAddr = a.parse().unwrap();
        let src = if a.is_ipv4() { node } else { node6 };
        for proto in [PROTO_TCP, PROTO_UDP, PROTO_SCTP, 1] {
            for &port in &ports {
                let port = if proto == 1 { 0 } else { port };
                let j = compiled.judge(
                    src,
                    Peer {
                        endpoint: None,
                        addr: a,
                    },
                    proto,
                    port,
                );
                let (accept, comment) = evaluate(&ch, a, proto, port);
                assert_eq!(
                    accept,
                    j.egress.passes(),
                    "{a} {} {port}: nft says {comment:?}, judge {:?}\n{text}",
                    proto_name(proto),
                    j.egress
                );
                let named = compiled.rule(j.egress.rule).map(|r| r.to_string());
                if let Some(r) = named {
                    assert!(comment.starts_with(&r), "{a} {port}: {comment} vs {r}");
                }
                checked += 1;
                denied += usize::from(!accept);
            }
        }
    }
    assert!(
        checked > 500 && denied > 100 && denied < checked,
        "{checked} {denied}"
    );
}

/// No host policy with egress rules: no table (default allow).
#[test]
fn no_egress_host_rules_no_table() {
    let mut i = input();
    i.policies = parse_str(
        "apiVersion: weir.dev/v1alpha1\nkind: WeirClusterPolicy\nmetadata: {name: in-only}\nspec:\n  priority: 1\n  subject: {nodeSelector: {matchLabels: {role: worker}}}\n  ingress:\n  - {action: Deny}\n",
        "in.yaml",
    )
    .unwrap();
    let spec = compile_with_host(&i, 1, "n1", Some(&host())).unwrap();
    assert_eq!(ruleset(&spec, &[], "weir-host0").unwrap(), None);
}

/// `nft -j list table` output as nftables 1.0.6 prints it.
#[test]
fn counters_from_nft_json() {
    let v: serde_json::Value = serde_json::from_str(
        r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
        {"table": {"family": "inet", "name": "weir_host", "handle": 3}},
        {"rule": {"family": "inet", "table": "weir_host", "chain": "v0", "handle": 5,
          "comment": "weirclusterpolicies/x egress[1] (Deny)",
          "expr": [{"counter": {"packets": 7, "bytes": 420}}, {"drop": null}]}},
        {"rule": {"family": "inet", "table": "weir_host", "chain": "v1", "handle": 6,
          "comment": "failsafe port",
          "expr": [{"counter": {"packets": 2, "bytes": 120}}, {"accept": null}]}},
        {"rule": {"family": "inet", "table": "weir_host", "chain": "c0", "handle": 8,
          "expr": [{"goto": {"target": "v0"}}]}}]}"#,
    )
    .unwrap();
    let st = parse_counters(&v);
    assert_eq!((st.denied_packets, st.allowed_packets), (7, 2));
    assert_eq!(st.rules.len(), 2);
    assert_eq!(st.rules[0].rule, "weirclusterpolicies/x egress[1] (Deny)");
    assert_eq!(st.rules[0].verdict, "drop");
}
