//! Field validation of every manifest kind weir reads, derived from the
//! wire shapes themselves (`field_tree`), so that a field or struct added
//! later is covered without touching this file (or fails it until the
//! samples below show it):
//! - every struct of every kind refuses a field it does not declare;
//! - the places that take any value are exactly the listed holes;
//! - every field weir reads appears in a sample below (except the listed
//!   ones a kind refuses with its own message), so the samples parse with
//!   every field spelt right;
//! - at every mapping of every sample, every known field misspelt is
//!   refused under strict with `<object>: <path>: unknown field; expected
//!   ...`, and dropped under warn (listed once, same result as without it);
//! - every field Kubernetes defines and weir does not read is accepted
//!   with any value.

use serde_yaml::{Mapping, Value};
use std::collections::BTreeSet;
use weir_topo::fields::{EntryKind, FieldValidation, Shape};
use weir_topo::manifest::{ClusterSpec, Document};

const NODE: &str = "
apiVersion: v1
kind: Node
metadata:
  name: n1
  namespace: ''
  labels: {a: b}
  annotations: {weir.dev/dataplane: weir}
spec: {podCIDR: 10.244.0.0/24, podCIDRs: [10.244.0.0/24]}
status: {addresses: [{type: InternalIP, address: 192.168.1.10}]}
";

const NAMESPACE: &str = "
apiVersion: v1
kind: Namespace
metadata: {name: q, namespace: '', labels: {a: b}, annotations: {c: d}}
";

const POD: &str = "
apiVersion: v1
kind: Pod
metadata: {name: p, namespace: q, labels: {app: a}, annotations: {c: d}}
spec:
  nodeName: n1
  containers:
  - ports: [{name: http, containerPort: 80, protocol: TCP}]
";

const NETWORK_POLICY: &str = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: s, namespace: q, labels: {a: b}, annotations: {c: d}}
spec:
  podSelector:
    matchLabels: {app: a}
    matchExpressions: [{key: k, operator: In, values: [v]}]
  policyTypes: [Ingress, Egress]
  ingress:
  - from:
    - podSelector: {matchLabels: {app: b}}
      namespaceSelector: {matchLabels: {team: x}}
    - ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}
    ports: [{protocol: TCP, port: 80, endPort: 90}]
  egress:
  - to: [{podSelector: {}}]
    ports: [{port: 53, protocol: UDP}]
";

const WEIR_POLICY: &str = "
apiVersion: weir.dev/v1alpha1
kind: WeirPolicy
metadata: {name: w, namespace: q, labels: {a: b}, annotations: {c: d}}
spec:
  podSelector: {matchLabels: {app: a}, matchExpressions: [{key: k, operator: Exists}, {key: j, operator: NotIn, values: [v]}]}
  audit: false
  ingress:
  - name: web
    action: Allow
    from:
    - podSelector: {matchLabels: {app: b}}
      namespaceSelector: {matchLabels: {team: x}}
    - ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}
    ports: [{port: 80, protocol: TCP, endPort: 81}]
    http:
    - method: GET
      path: {prefix: /api}
      host: example.com
      headers: [{name: X-A, value: b}]
    - path: {exact: /a}
    - path: {regex: /b.*}
    grpc: [{service: pkg.Svc, method: Get}, {service: health.v1.Health}]
  - action: Allow
    ports: [{port: 443}]
    tls: [{sni: example.com}, {sni: '*.example.org'}]
  egress:
  - action: Allow
    ports: [{port: 53, protocol: UDP}]
    dns: [{name: example.com}, {pattern: '*.example.com'}]
  - action: Allow
    ports: [{port: 443}]
    toFQDNs: [{matchName: example.com}, {matchPattern: '*.example.org'}]
  - action: Deny
    to: [{podSelector: {}}]
";

const WEIR_CLUSTER_POLICY: &str = "
apiVersion: weir.dev/v1alpha1
kind: WeirClusterPolicy
metadata: {name: c, namespace: '', labels: {a: b}, annotations: {c: d}}
spec:
  priority: 5
  audit: true
  tier: Admin
  subject: {namespaceSelector: {matchLabels: {a: b}}, podSelector: {matchLabels: {c: d}, matchExpressions: [{key: k, operator: In, values: [v]}]}}
  ingress:
  - action: Deny
    name: r
    from: [{namespaceSelector: {}, podSelector: {}}, {ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}}]
    ports: [{port: 22, endPort: 23, protocol: TCP}]
  - action: Log
  egress: [{action: Pass, to: [{ipBlock: {cidr: 0.0.0.0/0}}]}]
";

/// Host endpoint policy: the subject is nodes.
const WEIR_HOST_POLICY: &str = "
apiVersion: weir.dev/v1alpha1
kind: WeirClusterPolicy
metadata: {name: h}
spec:
  priority: 5
  tier: Baseline
  subject: {nodeSelector: {matchLabels: {role: worker}, matchExpressions: [{key: k, operator: Exists}]}}
  ingress: [{action: Allow, ports: [{port: 10256}]}, {action: Deny}]
";

const ANP: &[&str] = &["
apiVersion: policy.networking.k8s.io/v1alpha1
kind: AdminNetworkPolicy
metadata: {name: a, namespace: '', labels: {a: b}, annotations: {c: d}}
spec:
  priority: 10
  subject: {pods: {namespaceSelector: {matchLabels: {a: b}, matchExpressions: [{key: k, operator: In, values: [v]}]}, podSelector: {matchLabels: {c: d}}}}
  ingress:
  - name: i
    action: Allow
    from: [{namespaces: {matchLabels: {x: y}}}, {pods: {namespaceSelector: {}, podSelector: {}}}]
    ports:
    - portNumber: {protocol: TCP, port: 80}
    - namedPort: http
    - portRange: {protocol: UDP, start: 1000, end: 2000}
  egress:
  - name: e
    action: Deny
    to: [{networks: [10.0.0.0/8]}, {namespaces: {}}, {pods: {namespaceSelector: {}, podSelector: {}}}]
    ports: [{portNumber: {port: 443}}]
status: {conditions: []}
", "
apiVersion: policy.networking.k8s.io/v1alpha1
kind: AdminNetworkPolicy
metadata: {name: b}
spec:
  priority: 11
  subject: {namespaces: {matchLabels: {a: b}}}
"];

const BANP: &[&str] = &["
apiVersion: policy.networking.k8s.io/v1alpha1
kind: BaselineAdminNetworkPolicy
metadata: {name: default, namespace: '', labels: {a: b}, annotations: {c: d}}
spec:
  subject: {pods: {namespaceSelector: {matchLabels: {a: b}, matchExpressions: [{key: k, operator: In, values: [v]}]}, podSelector: {matchLabels: {c: d}}}}
  ingress:
  - name: i
    action: Allow
    from: [{namespaces: {matchLabels: {x: y}}}, {pods: {namespaceSelector: {}, podSelector: {}}}]
    ports:
    - portNumber: {protocol: TCP, port: 80}
    - namedPort: http
    - portRange: {protocol: UDP, start: 1000, end: 2000}
  egress:
  - name: e
    action: Deny
    to: [{networks: [10.0.0.0/8]}, {namespaces: {}}, {pods: {namespaceSelector: {}, podSelector: {}}}]
    ports: [{portNumber: {port: 443}}]
status: {conditions: []}
", "
apiVersion: policy.networking.k8s.io/v1alpha1
kind: BaselineAdminNetworkPolicy
metadata: {name: default}
spec:
  subject: {namespaces: {}}
"];

const CNP: &[&str] = &["
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: c, namespace: '', labels: {a: b}, annotations: {c: d}}
spec:
  tier: Admin
  priority: 10
  subject: {namespaces: {matchLabels: {a: b}, matchExpressions: [{key: k, operator: In, values: [v]}]}}
  ingress:
  - name: i
    action: Accept
    from: [{namespaces: {}}, {pods: {namespaceSelector: {}, podSelector: {}}}]
    protocols:
    - tcp: {destinationPort: {number: 80}}
    - udp: {destinationPort: {range: {start: 1000, end: 2000}}}
    - sctp: {}
    - destinationNamedPort: http
  egress:
  - name: e
    action: Deny
    to: [{networks: [10.0.0.0/8]}, {namespaces: {}}, {pods: {namespaceSelector: {}, podSelector: {}}}]
    protocols: [{tcp: {destinationPort: {number: 443}}}]
status: {}
", "
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: d}
spec:
  tier: Baseline
  priority: 3
  subject: {pods: {namespaceSelector: {}, podSelector: {matchLabels: {a: b}}}}
"];

/// (kind, samples, refused, holes).
type KindCase = (
    &'static str,
    Vec<&'static str>,
    Vec<&'static str>,
    Vec<&'static str>,
);

/// Every kind: its samples, the field paths (and everything under them)
/// that the kind knows but refuses with a message of its own, and the
/// holes (fields taking any value: free-key maps, int-or-string, refused
/// peers) of its wire shape.
fn kinds() -> Vec<KindCase> {
    const META: [&str; 2] = ["metadata.labels", "metadata.annotations"];
    let sel = |p: &str| format!("{p}.matchLabels");
    let mut np_holes: Vec<String> = META.iter().map(|s| s.to_string()).collect();
    for p in [
        "spec.podSelector",
        "spec.ingress[].from[].podSelector",
        "spec.ingress[].from[].namespaceSelector",
        "spec.egress[].to[].podSelector",
        "spec.egress[].to[].namespaceSelector",
    ] {
        np_holes.push(sel(p));
    }
    np_holes.extend([
        "spec.ingress[].ports[].port".into(),
        "spec.egress[].ports[].port".into(),
    ]);
    let np_holes: Vec<&'static str> = np_holes.into_iter().map(leak).collect();

    let mut weir_holes: Vec<String> = META.iter().map(|s| s.to_string()).collect();
    for d in ["ingress", "egress"] {
        for p in ["from", "to"] {
            weir_holes.push(sel(&format!("spec.{d}[].{p}[].podSelector")));
            weir_holes.push(sel(&format!("spec.{d}[].{p}[].namespaceSelector")));
        }
        weir_holes.push(format!("spec.{d}[].ports[].port"));
    }
    weir_holes.extend([
        sel("spec.podSelector"),
        sel("spec.subject.namespaceSelector"),
        sel("spec.subject.podSelector"),
        sel("spec.subject.nodeSelector"),
    ]);
    let weir_holes: Vec<&'static str> = weir_holes.into_iter().map(leak).collect();

    let cluster_holes = |egress_peer: bool| -> Vec<&'static str> {
        let mut h: Vec<String> = META.iter().map(|s| s.to_string()).collect();
        h.push(sel("spec.subject.namespaces"));
        h.push(sel("spec.subject.pods.namespaceSelector"));
        h.push(sel("spec.subject.pods.podSelector"));
        for (d, p) in [("ingress", "from"), ("egress", "to")] {
            h.push(sel(&format!("spec.{d}[].{p}[].namespaces")));
            h.push(sel(&format!("spec.{d}[].{p}[].pods.namespaceSelector")));
            h.push(sel(&format!("spec.{d}[].{p}[].pods.podSelector")));
        }
        if egress_peer {
            h.push("spec.egress[].to[].nodes".into());
            h.push("spec.egress[].to[].domainNames".into());
        }
        h.into_iter().map(leak).collect()
    };

    let weir_ns_refused = vec![
        "spec.priority",
        "spec.tier",
        "spec.subject",
        "spec.policyTypes",
        "spec.ingress[].to",
        "spec.ingress[].dns",
        "spec.ingress[].toFQDNs",
        "spec.egress[].from",
        "spec.egress[].http",
        "spec.egress[].tls",
        "spec.egress[].grpc",
    ];
    let weir_cluster_refused = vec![
        "spec.podSelector",
        "spec.policyTypes",
        "spec.ingress[].to",
        "spec.ingress[].dns",
        "spec.ingress[].toFQDNs",
        "spec.ingress[].http",
        "spec.ingress[].tls",
        "spec.ingress[].grpc",
        "spec.egress[].from",
        "spec.egress[].http",
        "spec.egress[].tls",
        "spec.egress[].grpc",
        "spec.egress[].dns",
        "spec.egress[].toFQDNs",
    ];
    let refused_peers = vec!["spec.egress[].to[].nodes", "spec.egress[].to[].domainNames"];
    let topo_holes = |extra: &[&'static str]| -> Vec<&'static str> {
        let mut h = META.to_vec();
        h.extend_from_slice(extra);
        h
    };
    vec![
        ("Node", vec![NODE], vec![], topo_holes(&[])),
        ("Namespace", vec![NAMESPACE], vec![], topo_holes(&[])),
        ("Pod", vec![POD], vec![], topo_holes(&[])),
        ("NetworkPolicy", vec![NETWORK_POLICY], vec![], np_holes),
        (
            "WeirPolicy",
            vec![WEIR_POLICY],
            weir_ns_refused,
            weir_holes.clone(),
        ),
        (
            "WeirClusterPolicy",
            vec![WEIR_CLUSTER_POLICY, WEIR_HOST_POLICY],
            weir_cluster_refused,
            weir_holes,
        ),
        (
            "AdminNetworkPolicy",
            ANP.to_vec(),
            refused_peers.clone(),
            cluster_holes(true),
        ),
        (
            "BaselineAdminNetworkPolicy",
            BANP.to_vec(),
            refused_peers.clone(),
            cluster_holes(true),
        ),
        (
            "ClusterNetworkPolicy",
            CNP.to_vec(),
            refused_peers,
            cluster_holes(true),
        ),
    ]
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

fn tree(kind: &str) -> Shape {
    weir_topo::manifest::field_tree(kind)
        .or_else(|| weir_policy::parse::field_tree(kind))
        .unwrap_or_else(|| panic!("no field tree for {kind}"))
}

/// Parses one document of any kind: Ok(debug of the result, ignored).
fn parse(value: &Value, mode: FieldValidation) -> Result<(String, Vec<String>), String> {
    let s = |k: &str| {
        value
            .get(k)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let doc = Document {
        file: "t.yaml".into(),
        index: 1,
        api_version: s("apiVersion"),
        kind: s("kind"),
        value: value.clone(),
    };
    if weir_topo::manifest::is_topology_kind(&doc.api_version, &doc.kind) {
        let mut spec = ClusterSpec::default();
        let mut ignored = Vec::new();
        spec.add_document_with(&doc, mode, &mut ignored)
            .map_err(|e| e.to_string())?;
        Ok((format!("{spec:?}"), ignored))
    } else {
        let p = weir_policy::parse::parse_document_with(&doc, mode).map_err(|e| e.to_string())?;
        // What is stored must read back clean under strict, the same.
        let again = weir_policy::parse::parse_document_with(
            &Document {
                value: p.value.clone(),
                ..doc
            },
            FieldValidation::Strict,
        )
        .map_err(|e| format!("stored value does not read back: {e}"))?;
        assert_eq!(again.policy, p.policy);
        Ok((format!("{:?}", p.policy), p.ignored))
    }
}

fn object_of(kind: &str, v: &Value) -> String {
    let name = v["metadata"]["name"].as_str().unwrap_or("");
    let ns = v["metadata"]["namespace"].as_str().unwrap_or("default");
    match kind {
        "Node" => format!("nodes/{name}"),
        "Namespace" => format!("namespaces/{name}"),
        "Pod" => format!("pods/{ns}/{name}"),
        "NetworkPolicy" => format!("networkpolicies/{ns}/{name}"),
        "WeirPolicy" => format!("weirpolicies/{ns}/{name}"),
        "WeirClusterPolicy" => format!("weirclusterpolicies/{name}"),
        "AdminNetworkPolicy" => format!("adminnetworkpolicies/{name}"),
        "BaselineAdminNetworkPolicy" => format!("baselineadminnetworkpolicies/{name}"),
        _ => format!("clusternetworkpolicies/{name}"),
    }
}

/// Every mapping of `v` that is a struct of the field tree, with its
/// concrete path (`spec.ingress[0]`) and its path in the tree
/// (`spec.ingress[]`); free-key maps and ignored values are not descended
/// into.
fn mappings(
    v: &Value,
    at: &str,
    norm: &str,
    structs: &BTreeSet<String>,
    out: &mut Vec<(String, String)>,
) {
    let join = |a: &str, k: &str| {
        if a.is_empty() {
            k.to_string()
        } else {
            format!("{a}.{k}")
        }
    };
    match v {
        Value::Mapping(m) => {
            if !structs.contains(norm) {
                return;
            }
            out.push((at.to_string(), norm.to_string()));
            for (k, child) in m {
                let k = k.as_str().expect("string keys");
                mappings(child, &join(at, k), &join(norm, k), structs, out);
            }
        }
        Value::Sequence(s) => {
            for (i, child) in s.iter().enumerate() {
                mappings(
                    child,
                    &format!("{at}[{i}]"),
                    &format!("{norm}[]"),
                    structs,
                    out,
                );
            }
        }
        _ => {}
    }
}

/// Mutable access to the mapping at a concrete path.
fn mapping_at<'a>(v: &'a mut Value, path: &str) -> &'a mut Mapping {
    let mut at = v;
    if !path.is_empty() {
        for part in path.split('.') {
            let (key, idx) = match part.split_once('[') {
                Some((k, rest)) => (
                    k,
                    rest.split('[')
                        .map(|i| i.trim_end_matches(']').parse::<usize>().unwrap())
                        .collect::<Vec<_>>(),
                ),
                None => (part, vec![]),
            };
            at = at
                .get_mut(key)
                .unwrap_or_else(|| panic!("no {key} in {path}"));
            for i in idx {
                at = at.get_mut(i).unwrap();
            }
        }
    }
    at.as_mapping_mut().expect("a mapping")
}

/// A struct's field names: the identity of its type for coverage.
fn type_key(t: &Shape, norm: &str) -> String {
    struct_fields(t, norm)
        .iter()
        .map(|(n, _)| *n)
        .collect::<Vec<_>>()
        .join(",")
}

fn struct_paths(t: &Shape) -> BTreeSet<String> {
    t.structs().into_iter().map(|(p, _)| p).collect()
}

fn struct_fields(shape: &Shape, norm: &str) -> Vec<(&'static str, EntryKind)> {
    let mut at = shape;
    if !norm.is_empty() {
        for part in norm.split('.') {
            let (key, seqs) = match part.find('[') {
                Some(i) => (&part[..i], part[i..].matches("[]").count()),
                None => (part, 0),
            };
            let Shape::Struct { fields, .. } = at else {
                panic!("{norm}: not a struct");
            };
            at = &fields
                .iter()
                .find(|(n, _)| *n == key)
                .unwrap_or_else(|| panic!("{norm}: {key} unknown"))
                .1;
            for _ in 0..seqs {
                let Shape::Seq(inner) = at else {
                    panic!("{norm}: not a list")
                };
                at = inner;
            }
        }
    }
    let Shape::Struct { fields, .. } = at else {
        panic!("{norm}: not a struct");
    };
    fields
        .iter()
        .map(|(n, s)| {
            let k = match s {
                Shape::Struct { .. } => EntryKind::Struct,
                Shape::Seq(_) => EntryKind::Seq,
                Shape::Map => EntryKind::Map,
                Shape::Scalar => EntryKind::Scalar,
                Shape::Any => EntryKind::Any,
                Shape::Ignored => EntryKind::Ignored,
            };
            (*n, k)
        })
        .collect()
}

#[test]
fn every_struct_of_every_kind_refuses_unknown_fields() {
    for (kind, ..) in kinds() {
        let t = tree(kind);
        let structs = t.structs();
        assert!(structs.len() > 1, "{kind}: {structs:?}");
        for (path, denies) in structs {
            assert!(
                denies,
                "{kind}: the struct at {path:?} accepts unknown fields"
            );
        }
    }
}

#[test]
fn holes_are_exactly_the_listed_ones() {
    for (kind, _, _, holes) in kinds() {
        let mut found: Vec<String> = tree(kind)
            .entries("")
            .into_iter()
            .filter(|e| matches!(e.kind, EntryKind::Any | EntryKind::Map))
            .map(|e| e.path)
            .collect();
        found.sort();
        let mut want: Vec<String> = holes.iter().map(|s| s.to_string()).collect();
        want.sort();
        assert_eq!(found, want, "{kind}: fields that take any value");
    }
}

#[test]
fn samples_parse_and_show_every_field_weir_reads() {
    for (kind, samples, refused, _) in kinds() {
        let t = tree(kind);
        let mut seen = BTreeSet::new();
        // A struct shown at one place counts for the same struct elsewhere
        // (a selector, a peer): same field list, same type.
        let mut seen_in_shape = BTreeSet::new();
        for text in &samples {
            let v: Value = serde_yaml::from_str(text).unwrap();
            assert_eq!(v["kind"].as_str(), Some(kind));
            parse(&v, FieldValidation::Strict).unwrap_or_else(|e| panic!("{kind} sample: {e}"));
            let mut maps = Vec::new();
            mappings(&v, "", "", &struct_paths(&t), &mut maps);
            for (at, norm) in maps {
                let shape = type_key(&t, &norm);
                for k in mapping_at(&mut v.clone(), &at).keys() {
                    let k = k.as_str().unwrap();
                    seen.insert(if norm.is_empty() {
                        k.to_string()
                    } else {
                        format!("{norm}.{k}")
                    });
                    seen_in_shape.insert((shape.clone(), k.to_string()));
                }
            }
        }
        for e in t.entries("") {
            if e.kind == EntryKind::Ignored {
                continue;
            }
            let is_refused = refused.iter().any(|r| {
                e.path == *r
                    || e.path.starts_with(&format!("{r}."))
                    || e.path.starts_with(&format!("{r}["))
            });
            if is_refused {
                continue;
            }
            let (parent, name) = match e.path.rsplit_once('.') {
                Some((p, n)) => (p, n),
                None => ("", e.path.as_str()),
            };
            let shown = seen.contains(&e.path)
                || seen_in_shape.contains(&(type_key(&t, parent), name.to_string()));
            assert!(shown, "{kind}: no sample shows {}; add it", e.path);
        }
    }
}

#[test]
fn a_misspelt_field_anywhere_is_refused_under_strict_and_dropped_under_warn() {
    let mut checked = 0;
    for (kind, samples, ..) in kinds() {
        let t = tree(kind);
        for text in &samples {
            let v: Value = serde_yaml::from_str(text).unwrap();
            let object = object_of(kind, &v);
            let (clean, _) = parse(&v, FieldValidation::Strict).unwrap();
            let mut maps = Vec::new();
            mappings(&v, "", "", &struct_paths(&t), &mut maps);
            for (at, norm) in maps {
                for (field, _) in struct_fields(&t, &norm) {
                    let typo = format!("{field}x");
                    let mut bad = v.clone();
                    mapping_at(&mut bad, &at)
                        .insert(Value::String(typo.clone()), Value::Bool(true));
                    let path = if at.is_empty() {
                        typo.clone()
                    } else {
                        format!("{at}.{typo}")
                    };
                    let err = parse(&bad, FieldValidation::Strict).expect_err(&path);
                    let want = format!("{object}: {path}: unknown field; expected ");
                    assert!(
                        err.starts_with(&want),
                        "{kind}: got {err:?}, want {want:?}..."
                    );
                    assert!(!err.contains('\n'), "{err}");
                    let (warned, ignored) = parse(&bad, FieldValidation::Warn)
                        .unwrap_or_else(|e| panic!("{kind} {path} under warn: {e}"));
                    assert_eq!(ignored, vec![format!("{object}: {path}")]);
                    assert_eq!(
                        warned, clean,
                        "{kind}: {path} changed the result under warn"
                    );
                    let (ign, _) = parse(&bad, FieldValidation::Ignore).unwrap();
                    assert_eq!(ign, clean);
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 300, "only {checked} misspellings checked");
}

#[test]
fn fields_kubernetes_defines_and_weir_ignores_are_accepted() {
    let mut checked = 0;
    for (kind, samples, ..) in kinds() {
        let t = tree(kind);
        let v: Value = serde_yaml::from_str(samples[0]).unwrap();
        let (clean, _) = parse(&v, FieldValidation::Strict).unwrap();
        let mut maps = Vec::new();
        mappings(&v, "", "", &struct_paths(&t), &mut maps);
        for (at, norm) in maps {
            for (field, k) in struct_fields(&t, &norm) {
                if k != EntryKind::Ignored {
                    continue;
                }
                let mut with = v.clone();
                let any: Value = serde_yaml::from_str("{a: [1, {b: c}]}").unwrap();
                mapping_at(&mut with, &at).insert(Value::String(field.to_string()), any);
                let (got, ignored) = parse(&with, FieldValidation::Strict)
                    .unwrap_or_else(|e| panic!("{kind}: {at}.{field} refused: {e}"));
                assert_eq!(got, clean, "{kind}: {at}.{field}");
                assert!(ignored.is_empty());
                checked += 1;
            }
        }
    }
    assert!(checked > 80, "only {checked} ignored fields checked");
}

/// The issue's own examples and one misspelling at each level, as users
/// see them: one line naming the object and the field path.
#[test]
fn typos_users_make_are_refused_with_the_path() {
    let np = |spec: &str| {
        format!("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p3, namespace: q}}\nspec:\n{spec}")
    };
    let wp = |spec: &str| {
        format!("apiVersion: weir.dev/v1alpha1\nkind: WeirPolicy\nmetadata: {{name: p, namespace: q}}\nspec:\n{spec}")
    };
    let cases: Vec<(String, &str)> = vec![
        (np("  podSelector: {matchLabel: {app: a}}\n"),
         "networkpolicies/q/p3: spec.podSelector.matchLabel: unknown field; expected matchLabels or matchExpressions"),
        (np("  ingres: []\n"),
         "networkpolicies/q/p3: spec.ingres: unknown field; expected one of podSelector, policyTypes, ingress, egress"),
        (wp("  ingress:\n  - action: Allow\n    ports: [{port: 80}]\n    htpp: [{method: GET}]\n"),
         "weirpolicies/q/p: spec.ingress[0].htpp: unknown field; expected one of from, to, ports, action, name, http, dns, tls, toFQDNs"),
        ("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p3, namespace: q}\nspek: {}\n".into(),
         "networkpolicies/q/p3: spek: unknown field; expected one of apiVersion, kind, metadata, spec"),
        ("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p3, namespace: q, lables: {a: b}}\n".into(),
         "networkpolicies/q/p3: metadata.lables: unknown field; expected one of name, namespace, labels, annotations,"),
        (np("  ingress:\n  - from: [{podSelektor: {}}]\n"),
         "networkpolicies/q/p3: spec.ingress[0].from[0].podSelektor: unknown field; expected one of podSelector, namespaceSelector, ipBlock"),
        (np("  ingress:\n  - to: [{podSelector: {}}]\n"),
         "networkpolicies/q/p3: spec.ingress[0].to: unknown field; expected from or ports"),
        (np("  podSelector: {matchExpressions: [{key: a, operator: In, value: [b]}]}\n"),
         "networkpolicies/q/p3: spec.podSelector.matchExpressions[0].value: unknown field; expected one of key, operator, values"),
        (np("  egress:\n  - ports: [{prot: UDP, port: 53}]\n"),
         "networkpolicies/q/p3: spec.egress[0].ports[0].prot: unknown field; expected one of protocol, port, endPort"),
        (np("  egress:\n  - action: Deny\n"),
         "networkpolicies/q/p3: spec.egress[0].action: unknown field; expected to or ports"),
        (wp("  ingress:\n  - action: Allow\n    http: [{method: GET, path: {prefx: /a}}]\n"),
         "weirpolicies/q/p: spec.ingress[0].http[0].path.prefx: unknown field; expected one of exact, prefix, regex"),
        (wp("  egress:\n  - action: Allow\n    dns: [{nam: example.com}]\n"),
         "weirpolicies/q/p: spec.egress[0].dns[0].nam: unknown field; expected name or pattern"),
        (wp("  egress:\n  - action: Allow\n    toFQDNs: [{name: example.com}]\n"),
         "weirpolicies/q/p: spec.egress[0].toFQDNs[0].name: unknown field; expected matchName or matchPattern"),
        (wp("  ingress:\n  - action: Allow\n    to: [{podSelector: {}}]\n"),
         "weirpolicies/q/p: spec.ingress[0].to: not a field of an ingress rule; use from"),
        ("apiVersion: policy.networking.k8s.io/v1alpha1\nkind: AdminNetworkPolicy\nmetadata: {name: a}\nspec:\n  priority: 1\n  subject: {namespaces: {}}\n  ingress: [{action: Deny, from: [{namespaces: {}}], protocols: [{tcp: {}}]}]\n".into(),
         "adminnetworkpolicies/a: spec.ingress[0].protocols: unknown field; expected one of name, action, from, ports"),
        ("apiVersion: policy.networking.k8s.io/v1alpha1\nkind: BaselineAdminNetworkPolicy\nmetadata: {name: default}\nspec:\n  priority: 1\n  subject: {namespaces: {}}\n".into(),
         "baselineadminnetworkpolicies/default: spec.priority: unknown field; expected one of subject, ingress, egress"),
        ("apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {name: c}\nspec:\n  tier: Admin\n  priority: 1\n  subject: {namespaces: {}}\n  ingress: [{action: Deny, from: [{namespaces: {}}], ports: [{portNumber: {port: 1}}]}]\n".into(),
         "clusternetworkpolicies/c: spec.ingress[0].ports: unknown field; expected one of name, action, from, protocols"),
        ("apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec:\n  containers:\n  - image: nginx\n    ports: [{containerPort: 80, protocoll: UDP}]\n".into(),
         "pods/default/a: spec.containers[0].ports[0].protocoll: unknown field; expected one of name, containerPort, protocol, hostPort, hostIP"),
        ("apiVersion: v1\nkind: Node\nmetadata: {name: n}\nspec: {podCidr: 10.0.0.0/24}\n".into(),
         "nodes/n: spec.podCidr: unknown field; expected one of podCIDR, podCIDRs, providerID, unschedulable, taints, configSource, externalID"),
    ];
    for (text, want) in cases {
        let err = if text.starts_with("apiVersion: v1\n") {
            weir_topo::manifest::parse_str(&text, "t.yaml")
                .map(|_| ())
                .map_err(|e| e.to_string())
        } else {
            weir_policy::parse_str(&text, "t.yaml")
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
        .expect_err(&text);
        assert!(
            err.starts_with(want),
            "for:\n{text}\n got: {err}\nwant: {want}"
        );
        assert!(!err.contains('\n'), "{err}");
    }
}

#[test]
fn duplicate_keys_are_refused_in_yaml_and_json() {
    let yaml = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: q}\nspec:\n  podSelector: {matchLabels: {app: a}}\n  podSelector: {}\n";
    let err = weir_policy::parse_str(yaml, "d.yaml")
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("d.yaml: ") && err.contains("duplicate entry with key \"podSelector\""),
        "{err}"
    );
    let json = r#"{"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "p", "namespace": "q"},
        "spec": {"podSelector": {"matchLabels": {"app": "a", "app": "b"}}}}"#;
    let err = weir_policy::parse_str(json, "d.json")
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("d.json: ") && err.contains("duplicate entry with key \"app\""),
        "{err}"
    );
    // A List's items and the topology kinds go the same way.
    let json = r#"{"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "a", "name": "b"}}]}"#;
    let err = weir_topo::manifest::parse_str(json, "l.json")
        .unwrap_err()
        .to_string();
    assert!(err.contains("duplicate entry with key \"name\""), "{err}");
    let list = "apiVersion: v1\nkind: List\nitem: []\n";
    let err = weir_topo::manifest::parse_str(list, "l.yaml")
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "l.yaml: document 1 (List): item: unknown field; expected apiVersion, kind, metadata or items"
    );
}
