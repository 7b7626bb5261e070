//! `weir policy check` on a synthetic 5,000-pod cluster: the matrix is
//! computed per namespace pair in bounded memory (peak RSS checked) and
//! agrees with `explain` on sampled cells. Its own test binary so the
//! process's peak RSS is this test's.
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use weir_policy::check::{check_per_namespace_pair, MAX_PODS};
use weir_policy::{NamespaceInfo, PodInfo, PolicyInput};
use weir_topo::Protocol;

const NAMESPACES: u32 = 50;
const PODS_PER_NS: u32 = 100;

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn input() -> PolicyInput {
    let mut namespaces = Vec::new();
    let mut pods = Vec::new();
    for n in 0..NAMESPACES {
        let ns = format!("ns{n:02}");
        namespaces.push(NamespaceInfo {
            name: ns.clone(),
            labels: BTreeMap::from([("team".to_string(), format!("t{}", n % 5))]),
        });
        for k in 0..PODS_PER_NS {
            let role = ["web", "api", "db", "cache"][(k % 4) as usize];
            pods.push(PodInfo {
                namespace: ns.clone(),
                name: format!("{role}-{k}"),
                node: "n1".into(),
                labels: BTreeMap::from([("app".to_string(), role.to_string())]),
                ipv4: Some(Ipv4Addr::from(0x0a00_0000 + n * 256 + k + 1)),
                ipv6: None,
                ports: vec![],
            });
        }
    }
    // Every namespace: db accepts only api of its team's namespaces on 5432.
    let mut yaml = String::new();
    for n in 0..NAMESPACES {
        yaml.push_str(&format!(
            "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: db, namespace: ns{n:02}}}\n\
             spec:\n  podSelector: {{matchLabels: {{app: db}}}}\n  policyTypes: [Ingress]\n  ingress:\n  \
             - from: [{{namespaceSelector: {{matchLabels: {{team: t{}}}}}, podSelector: {{matchLabels: {{app: api}}}}}}]\n    \
             ports: [{{port: 5432}}]\n",
            n % 5
        ));
    }
    PolicyInput {
        namespaces,
        pods,
        hosts: vec![],
        policies: weir_policy::parse_str(&yaml, "scale.yaml").unwrap(),
    }
}

#[test]
fn five_thousand_pods_per_namespace_pair_in_bounded_memory() {
    let input = input();
    assert!(input.pods.len() > MAX_PODS);
    let before = peak_rss_kib();
    let t = std::time::Instant::now();
    let (mut blocks, mut cells, mut connected) = (0usize, 0u64, 0u64);
    let mut samples = Vec::new();
    let pairs = check_per_namespace_pair(&input, &[(5432, Protocol::Tcp)], |b| {
        blocks += 1;
        for (i, row) in b.connected.iter().enumerate() {
            cells += row.len() as u64;
            connected += row.iter().filter(|c| **c).count() as u64;
            // Sample: the first db of the destination from api-1 and web-0.
            if i == 1 || i == 0 {
                samples.push((b.from[i].clone(), b.to[2].clone(), row[2]));
            }
        }
    })
    .unwrap();
    let elapsed = t.elapsed();
    let grown = peak_rss_kib().saturating_sub(before);
    eprintln!(
        "5000 pods: {pairs} namespace pairs, {blocks} blocks, {cells} cells ({connected} connected) in {elapsed:?}, peak RSS grew {grown} KiB"
    );
    assert_eq!(pairs, (NAMESPACES * NAMESPACES) as usize);
    assert_eq!(blocks, pairs);
    assert_eq!(cells, 5000 * 5000);
    // A full n² grid of judged cells would be 25M cells x ~40 bytes = ~1 GB;
    // per pair, memory is one block (100 x 100).
    assert!(grown < 256 * 1024, "peak RSS grew {grown} KiB");
    // Connected: every pair except into db, plus api -> db of the same team
    // and each db to itself (loopback).
    let dbs = u64::from(NAMESPACES * PODS_PER_NS / 4);
    let apis_per_team = u64::from(NAMESPACES / 5 * PODS_PER_NS / 4);
    assert_eq!(
        connected,
        5000 * 5000 - dbs * 5000 + dbs * (apis_per_team + 1)
    );
    // Sampled cells agree with explain.
    for (f, t, c) in samples.iter().step_by(97) {
        let (fns, fp) = f.split_once('/').unwrap();
        let (tns, tp) = t.split_once('/').unwrap();
        let e = weir_policy::explain(&input, (fns, fp), (tns, tp), Protocol::Tcp, 5432).unwrap();
        assert_eq!(e.allowed, *c, "{f} -> {t}");
    }
}
