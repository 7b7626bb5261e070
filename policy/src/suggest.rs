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

/// One observed flow: `(namespace, pod)` to `(namespace, pod)` on a port,
/// seen `count` times (flow-log `new` records: one per admitted
/// connection), with the HTTP request heads seen on it, if any.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Observed {
    pub from: (String, String),
    pub to: (String, String),
    pub protocol: Protocol,
    pub port: u16,
    pub count: u64,
    /// `(method, path)` of HTTP requests seen on the flow.
    pub http: Vec<(String, String)>,
}

impl Observed {
    /// A flow seen once, without HTTP detail.
    pub fn new(from: (&str, &str), to: (&str, &str), protocol: Protocol, port: u16) -> Self {
        Observed {
            from: (from.0.into(), from.1.into()),
            to: (to.0.into(), to.1.into()),
            protocol,
            port,
            count: 1,
            http: Vec::new(),
        }
    }
}

/// What to suggest for.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Only workloads of these namespaces (all when empty).
    pub namespaces: Vec<String>,
    /// Ingress TCP rules on which HTTP requests were seen become WeirPolicy
    /// `http` rules (methods and path prefixes seen).
    pub l7: bool,
}

/// One rule of the suggestion, for the table form.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct SuggestedRule {
    /// The policy's `namespace/name`.
    pub policy: String,
    pub direction: &'static str,
    /// The peer workload: `namespace/{labels}`.
    pub peer: String,
    /// `PROTOCOL/port` or `PROTOCOL/name(port)` for named ports.
    pub ports: Vec<String>,
    /// Observed flows this rule admits.
    pub flows: u64,
    /// `METHOD path-match` entries (with `--l7`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub http: Vec<String>,
}

/// The suggested policies and how they check.
#[derive(Clone, Debug, Serialize)]
pub struct Suggestion {
    /// NetworkPolicy (and with `--l7`, WeirPolicy) documents, `---`-separated YAML.
    pub yaml: String,
    pub policies: usize,
    pub rules: Vec<SuggestedRule>,
    /// Observed flows the suggestion (with the current policies) denies.
    pub missing: Vec<String>,
    /// Unobserved pod pair/ports it allows.
    pub extra: Vec<String>,
}

type Workload = (String, Labels);

/// A peer workload's rule: ports -> flows, and HTTP (method, path match).
#[derive(Default)]
struct Rule {
    ports: BTreeMap<(Protocol, u16), u64>,
    http: BTreeSet<(String, String, String)>,
}

/// The path match for a path seen: its first segment as a prefix
/// (`/api/v1/x` -> prefix `/api/`), or the path itself when it has one
/// segment (`/health` -> exact `/health`). The query is dropped.
fn path_match(path: &str) -> (String, String) {
    let path = path.split(['?', '#']).next().unwrap_or("/");
    let rest = path.strip_prefix('/').unwrap_or(path);
    match rest.split_once('/') {
        Some((first, _)) if !first.is_empty() => ("prefix".into(), format!("/{first}/")),
        _ => ("exact".into(), format!("/{rest}")),
    }
}

fn workload_text(w: &Workload) -> String {
    let l: Vec<String> = w.1.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{}/{{{}}}", w.0, l.join(","))
}

/// Suggests policies for the workloads of `opts.namespaces` (all when empty).
pub fn suggest(
    input: &PolicyInput,
    observed: &[Observed],
    opts: &Options,
) -> Result<Suggestion, PolicyError> {
    let namespaces = &opts.namespaces;
    let in_scope = |ns: &str| namespaces.is_empty() || namespaces.iter().any(|n| n == ns);
    let mut pods: Vec<_> = input.pods.iter().collect();
    pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let by_name: BTreeMap<(&str, &str), usize> = pods
        .iter()
        .enumerate()
        .map(|(i, p)| ((p.namespace.as_str(), p.name.as_str()), i))
        .collect();
    let workload_of = |ns: &str, pod: &str| -> Option<Workload> {
        by_name
            .get(&(ns, pod))
            .map(|&i| (pods[i].namespace.clone(), pods[i].labels.clone()))
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
    // The port's name when every pod of the workload names it the same.
    let port_name = |w: &Workload, proto: Protocol, port: u16| -> Option<String> {
        let mut name: Option<&str> = None;
        for p in pods
            .iter()
            .filter(|p| p.namespace == w.0 && p.labels == w.1)
        {
            let n = p
                .ports
                .iter()
                .find(|c| c.port == port && c.protocol == proto)
                .and_then(|c| c.name.as_deref())?;
            if name.is_some_and(|m| m != n) {
                return None;
            }
            name = Some(n);
        }
        name.map(str::to_string)
    };
    // Per (workload, direction): peer workload -> rule.
    let mut rules: BTreeMap<(Workload, Direction), BTreeMap<Workload, Rule>> = BTreeMap::new();
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
        let ing = rules
            .entry((dst.clone(), Direction::Ingress))
            .or_default()
            .entry(src.clone())
            .or_default();
        *ing.ports.entry((o.protocol, o.port)).or_default() += o.count;
        if opts.l7 && o.protocol == Protocol::Tcp {
            for (m, p) in &o.http {
                let (kind, value) = path_match(p);
                ing.http.insert((m.clone(), kind, value));
            }
        }
        *rules
            .entry((src, Direction::Egress))
            .or_default()
            .entry(dst)
            .or_default()
            .ports
            .entry((o.protocol, o.port))
            .or_default() += o.count;
    }
    let peer = |w: &Workload| {
        json!({
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": w.0}},
            "podSelector": {"matchLabels": w.1},
        })
    };
    // Ports of a rule toward `dst` (named when dst's pods name them).
    let ports = |dst: &Workload, r: &Rule| -> (Vec<Value>, Vec<String>) {
        r.ports
            .keys()
            .map(|(p, n)| match port_name(dst, *p, *n) {
                Some(name) => (
                    json!({"protocol": p.as_str(), "port": name}),
                    format!("{}/{name}({n})", p.as_str()),
                ),
                None => (
                    json!({"protocol": p.as_str(), "port": n}),
                    format!("{}/{n}", p.as_str()),
                ),
            })
            .unzip()
    };
    let mut docs = Vec::new();
    let mut policies = Vec::new();
    let mut table = Vec::new();
    for (w, first) in &workloads {
        let name = format!("suggested-{first}");
        let mut np_dirs = Vec::new();
        let mut l7_rules = Vec::new();
        for (dir, key, dname) in [
            (Direction::Ingress, "from", "ingress"),
            (Direction::Egress, "to", "egress"),
        ] {
            let mut list = Vec::new();
            for (pw, r) in rules.get(&(w.clone(), dir)).into_iter().flatten() {
                let dst = if dir == Direction::Ingress { w } else { pw };
                let (pv, pt) = ports(dst, r);
                let http: Vec<String> = r
                    .http
                    .iter()
                    .map(|(m, k, v)| format!("{m} {k} {v}"))
                    .collect();
                table.push(SuggestedRule {
                    policy: format!("{}/{name}", w.0),
                    direction: dname,
                    peer: workload_text(pw),
                    ports: pt,
                    flows: r.ports.values().sum(),
                    http,
                });
                // A rule with HTTP seen goes to the WeirPolicy: in the
                // NetworkPolicy it would admit the connection unrestricted
                // (an allow without `http` lifts the L7 check).
                let all_tcp = r.ports.keys().all(|(p, _)| *p == Protocol::Tcp);
                if !r.http.is_empty() && all_tcp {
                    let http: Vec<Value> = r
                        .http
                        .iter()
                        .map(|(m, k, v)| json!({"method": m, "path": {k.as_str(): v}}))
                        .collect();
                    l7_rules.push(
                        json!({"action": "Allow", "from": [peer(pw)], "ports": pv, "http": http}),
                    );
                } else {
                    list.push(json!({key: [peer(pw)], "ports": pv}));
                }
            }
            np_dirs.push(list);
        }
        let doc = json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": w.0},
            "spec": {
                "podSelector": {"matchLabels": w.1},
                "policyTypes": ["Ingress", "Egress"],
                "ingress": np_dirs[0],
                "egress": np_dirs[1],
            }
        });
        let mut texts = vec![doc];
        if !l7_rules.is_empty() {
            texts.push(json!({
                "apiVersion": "weir.dev/v1alpha1",
                "kind": "WeirPolicy",
                "metadata": {"name": format!("{name}-http"), "namespace": w.0},
                "spec": {"podSelector": {"matchLabels": w.1}, "ingress": l7_rules},
            }));
        }
        for doc in texts {
            let text = serde_yaml::to_string(&doc)
                .map_err(|e| PolicyError::Input(format!("suggestion: {e}")))?;
            policies.extend(crate::parse_str(&text, "suggestion")?);
            docs.push(text);
        }
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
                if f == t {
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
        rules: table,
        yaml: docs.join("---\n"),
        missing,
        extra,
    })
}
