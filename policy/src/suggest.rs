//! `weir policy suggest`: least-privilege NetworkPolicies from observed
//! flows. Pods of a namespace with identical labels are one workload; each
//! workload gets one NetworkPolicy isolating it both ways, whose rules
//! admit exactly the observed (peer workload, port, protocol) triples —
//! ingress from each observed source workload, egress to each observed
//! destination workload. The result is checked by construction with
//! [`crate::check`]: every observed flow must be allowed and every other
//! pair/port of the matrix (over the observed ports) denied; cells where
//! that fails are listed in [`Suggestion::extra`] / [`Suggestion::missing`].

use crate::check::{check, Family};
use crate::selector::Labels;
use crate::{PolicyError, PolicyInput};
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use weir_model::policy::Direction;
use weir_model::Protocol;

/// One observed flow: `(namespace, pod)` to `(namespace, pod)` on a port.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Observed {
    pub from: (String, String),
    pub to: (String, String),
    pub protocol: Protocol,
    pub port: u16,
}

/// The suggested policies and how they check.
#[derive(Clone, Debug, Serialize)]
pub struct Suggestion {
    /// NetworkPolicy documents, `---`-separated YAML.
    pub yaml: String,
    pub policies: usize,
    /// Observed flows the suggestion (with the current policies) denies.
    pub missing: Vec<String>,
    /// Unobserved pod pair/ports it allows.
    pub extra: Vec<String>,
}

type Workload = (String, Labels);

/// Suggests policies for the workloads of `namespaces` (all when empty).
pub fn suggest(
    input: &PolicyInput,
    observed: &[Observed],
    namespaces: &[String],
) -> Result<Suggestion, PolicyError> {
    let in_scope = |ns: &str| namespaces.is_empty() || namespaces.iter().any(|n| n == ns);
    let mut pods: Vec<_> = input.pods.iter().collect();
    pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let workload_of = |ns: &str, pod: &str| -> Option<Workload> {
        pods.iter()
            .find(|p| p.namespace == ns && p.name == pod)
            .map(|p| (p.namespace.clone(), p.labels.clone()))
    };
    // Workload -> its first pod's name (the policy name).
    let mut workloads: BTreeMap<Workload, String> = BTreeMap::new();
    for p in &pods {
        if in_scope(&p.namespace) {
            workloads
                .entry((p.namespace.clone(), p.labels.clone()))
                .or_insert_with(|| p.name.clone());
        }
    }
    // Per (workload, direction): peer workload -> ports.
    type Rules = BTreeMap<Workload, BTreeSet<(Protocol, u16)>>;
    let mut rules: BTreeMap<(Workload, Direction), Rules> = BTreeMap::new();
    for o in observed {
        if o.from == o.to {
            continue;
        }
        let (Some(src), Some(dst)) = (
            workload_of(&o.from.0, &o.from.1),
            workload_of(&o.to.0, &o.to.1),
        ) else {
            continue;
        };
        rules
            .entry((dst.clone(), Direction::Ingress))
            .or_default()
            .entry(src.clone())
            .or_default()
            .insert((o.protocol, o.port));
        rules
            .entry((src, Direction::Egress))
            .or_default()
            .entry(dst)
            .or_default()
            .insert((o.protocol, o.port));
    }
    let peer = |w: &Workload| {
        json!({
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": w.0}},
            "podSelector": {"matchLabels": w.1},
        })
    };
    let ports = |s: &BTreeSet<(Protocol, u16)>| {
        s.iter()
            .map(|(p, n)| json!({"protocol": p.as_str(), "port": n}))
            .collect::<Vec<Value>>()
    };
    let mut docs = Vec::new();
    let mut policies = Vec::new();
    for (w, first) in &workloads {
        let mut dirs = Vec::new();
        for (dir, key) in [(Direction::Ingress, "from"), (Direction::Egress, "to")] {
            let list: Vec<Value> = rules
                .get(&(w.clone(), dir))
                .map(|r| {
                    r.iter()
                        .map(|(pw, ps)| json!({key: [peer(pw)], "ports": ports(ps)}))
                        .collect()
                })
                .unwrap_or_default();
            dirs.push(list);
        }
        let doc = json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": format!("suggested-{first}"), "namespace": w.0},
            "spec": {
                "podSelector": {"matchLabels": w.1},
                "policyTypes": ["Ingress", "Egress"],
                "ingress": dirs[0],
                "egress": dirs[1],
            }
        });
        let text = serde_yaml::to_string(&doc)
            .map_err(|e| PolicyError::Input(format!("suggestion: {e}")))?;
        policies.extend(crate::parse_str(&text, "suggestion")?);
        docs.push(text);
    }
    // Check by construction.
    let mut with = input.clone();
    with.policies.extend(policies);
    let obs_ports: BTreeSet<(u16, Protocol)> =
        observed.iter().map(|o| (o.port, o.protocol)).collect();
    let obs_cells: BTreeSet<(String, String, u16, Protocol)> = observed
        .iter()
        .map(|o| {
            (
                format!("{}/{}", o.from.0, o.from.1),
                format!("{}/{}", o.to.0, o.to.1),
                o.port,
                o.protocol,
            )
        })
        .collect();
    let r = check(&with, &obs_ports.iter().copied().collect::<Vec<_>>())?;
    let (mut missing, mut extra) = (Vec::new(), Vec::new());
    for b in r.matrix.iter().filter(|b| b.family == Family::Ipv4) {
        for (i, f) in b.from.iter().enumerate() {
            for (j, t) in b.to.iter().enumerate() {
                if i == j {
                    continue;
                }
                let key = (f.clone(), t.clone(), b.port, b.protocol);
                let scoped = [f, t]
                    .iter()
                    .any(|x| in_scope(x.split_once('/').map_or("", |s| s.0)));
                let text = format!("{f} -> {t} {}/{}", b.protocol, b.port);
                match (obs_cells.contains(&key), b.connected[i][j]) {
                    (true, false) => missing.push(text),
                    (false, true) if scoped => extra.push(text),
                    _ => {}
                }
            }
        }
    }
    Ok(Suggestion {
        policies: docs.len(),
        yaml: docs.join("---\n"),
        missing,
        extra,
    })
}
