//! Parsing and validation: good manifests, and one line per bad one.

use weir_topo::manifest::{self, parse_str, split_documents, ClusterSpec, Protocol};

const GOOD: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: n1, labels: {zone: a}}
spec: {podCIDRs: [10.1.0.0/24, "fd00:1::/64"]}
---
apiVersion: v1
kind: Node
metadata: {name: n2}
---
apiVersion: v1
kind: Namespace
metadata: {name: web, labels: {team: x}}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: web, labels: {app: a}}
spec:
  nodeName: n2
  containers:
  - name: c
    image: whatever
    ports:
    - {containerPort: 80, name: http}
    - {containerPort: 53, protocol: UDP}
  - name: d
    ports: [{containerPort: 53}]
---
apiVersion: v1
kind: Pod
metadata: {name: b}
spec: {containers: [{name: c}]}
---
"#;

#[test]
fn good_yaml() {
    let spec = parse_str(GOOD, "good.yaml").unwrap();
    assert_eq!(spec.nodes.len(), 2);
    assert_eq!(spec.nodes[0].pod_cidrs.len(), 2);
    assert_eq!(spec.nodes[0].labels["kubernetes.io/hostname"], "n1");
    // n2 had no podCIDRs: first free pair
    let n2: Vec<String> = spec.nodes[1]
        .pod_cidrs
        .iter()
        .map(|c| c.to_string())
        .collect();
    assert_eq!(n2, ["10.244.0.0/24", "fd00:10:244::/64"]);
    let names: Vec<&str> = spec.namespaces.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["default", "web"]);
    assert_eq!(
        spec.namespaces[1].labels["kubernetes.io/metadata.name"],
        "web"
    );
    assert_eq!(spec.namespaces[1].labels["team"], "x");
    let a = &spec.pods[0];
    assert_eq!((a.namespace.as_str(), a.node.as_str()), ("web", "n2"));
    assert_eq!(a.ports.len(), 3);
    assert_eq!(a.ports[0].name.as_deref(), Some("http"));
    assert_eq!(a.ports[0].protocol, Protocol::Tcp);
    assert_eq!((a.ports[1].port, a.ports[1].protocol), (53, Protocol::Udp));
    let b = &spec.pods[1];
    assert_eq!((b.namespace.as_str(), b.node.as_str()), ("default", "n1"));
}

#[test]
fn default_node_and_json() {
    let json = r#"{"apiVersion":"v1","kind":"List","items":[
        {"apiVersion":"v1","kind":"Pod","metadata":{"name":"p"},
         "spec":{"containers":[{"name":"c","ports":[{"containerPort":8080,"protocol":"SCTP"}]}]}}]}"#;
    let spec = parse_str(json, "x.json").unwrap();
    assert_eq!(spec.nodes.len(), 1);
    assert_eq!(spec.nodes[0].name, "node-1");
    let cidrs: Vec<String> = spec.nodes[0]
        .pod_cidrs
        .iter()
        .map(|c| c.to_string())
        .collect();
    assert_eq!(cidrs, ["10.244.0.0/24", "fd00:10:244::/64"]);
    assert_eq!(spec.pods[0].node, "node-1");
    assert_eq!(spec.pods[0].ports[0].protocol, Protocol::Sctp);
}

#[test]
fn split_routes_other_kinds() {
    let text = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: np}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n";
    let docs = split_documents(text, "m.yaml").unwrap();
    assert_eq!(docs.len(), 2);
    assert_eq!(docs[0].kind, "NetworkPolicy");
    assert!(!manifest::is_topology_kind(
        &docs[0].api_version,
        &docs[0].kind
    ));
    let mut spec = ClusterSpec::default();
    for d in docs
        .iter()
        .filter(|d| manifest::is_topology_kind(&d.api_version, &d.kind))
    {
        spec.add_document(d).unwrap();
    }
    assert_eq!(spec.namespaces.len(), 1);
}

fn pod(extra_spec: &str) -> String {
    format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: a, namespace: x}}\nspec:\n{extra_spec}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: x}}\n")
}

#[test]
fn bad_manifests() {
    let ports = |p: &str| {
        pod(&format!(
            "  containers:\n  - name: c\n    ports: [{{containerPort: 80}}, {p}]"
        ))
    };
    let cases: Vec<(String, &str)> = vec![
        (ports("{containerPort: 70000}"), "pods/x/a: spec.containers[0].ports[1].containerPort: 70000 is out of range 1-65535"),
        (ports("{containerPort: 0}"), "pods/x/a: spec.containers[0].ports[1].containerPort: 0 is out of range 1-65535"),
        (ports("{containerPort: 80}"), "pods/x/a: spec.containers[0].ports[1].containerPort: 80/TCP is already declared at spec.containers[0].ports[0]"),
        (ports("{containerPort: 81, protocol: tcp}"), "pods/x/a: spec.containers[0].ports[1].protocol: \"tcp\" is not one of TCP, UDP, SCTP"),
        (ports("{containerPort: 81, name: averyveryverylongname}"), "pods/x/a: spec.containers[0].ports[1].name: \"averyveryverylongname\" is longer than 15 characters"),
        (ports("{containerPort: 81, name: \"8080\"}"), "pods/x/a: spec.containers[0].ports[1].name: \"8080\" must contain at least one letter"),
        (ports("{name: x}"), "pods/x/a: spec.containers[0].ports[1].containerPort: required"),
        (ports("{containerPort: \"81\"}"), "pods/x/a: spec.containers[0].ports[1].containerPort: invalid type: string \"81\", expected i64"),
        (pod("  nodeName: nowhere"), "pods/x/a: spec.nodeName: node \"nowhere\" is not declared"),
        ("apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: y}\n".into(),
         "pods/y/a: metadata.namespace: namespace \"y\" is not declared (add a Namespace object; only \"default\" is implicit)"),
        ("apiVersion: v1\nkind: Pod\nmetadata: {name: A_b}\n".into(),
         "pods/default/A_b: metadata.name: \"A_b\" is not a DNS-1123 subdomain (lower-case letters, digits, '-' and '.', each part starting and ending with a letter or digit)"),
        ("apiVersion: v1\nkind: Pod\nmetadata: {name: a, labels: {\"-bad\": x}}\n".into(),
         "pods/default/a: metadata.labels: key \"-bad\": name part must be letters, digits, '-', '_' or '.', starting and ending with a letter or digit"),
        ("apiVersion: v1\nkind: Pod\nmetadata: {name: a, labels: {app: \"x y\"}}\n".into(),
         "pods/default/a: metadata.labels[app]: value \"x y\" must be letters, digits, '-', '_' or '.', starting and ending with a letter or digit"),
        ("apiVersion: v1\nkind: Pod\nmetadata: {name: a}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: a}\n".into(),
         "pods/default/a: defined more than once"),
        ("apiVersion: v1\nkind: Pod\nmetadata: {labels: {a: b}}\n".into(), "m.yaml: document 1 (Pod): metadata.name: required"),
        ("apiVersion: v1\nkind: Namespace\nmetadata: {name: a.b}\n".into(),
         "namespaces/a.b: metadata.name: \"a.b\" is not a DNS-1123 label (lower-case letters, digits and '-', starting and ending with a letter or digit)"),
        ("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n".into(),
         "m.yaml: document 1: unsupported kind \"Deployment\" (apiVersion \"apps/v1\"); expected Node, Namespace, Pod or Service of apiVersion v1"),
        ("kind: Pod\nmetadata: {name: a}\n".into(), "m.yaml: document 1: apiVersion: required"),
        ("apiVersion: v1\nkind: Node\nmetadata: {name: n}\nspec: {podCIDR: 10.0.0.0/33}\n".into(),
         "nodes/n: spec.podCIDR: \"10.0.0.0/33\" is not a CIDR"),
        ("apiVersion: v1\nkind: Node\nmetadata: {name: n}\nspec: {podCIDR: 10.0.0.5/24}\n".into(),
         "nodes/n: spec.podCIDR: 10.0.0.5/24 has host bits set (did you mean 10.0.0.0/24?)"),
        ("apiVersion: v1\nkind: Node\nmetadata: {name: n}\nspec: {podCIDRs: [10.0.0.0/24, 10.1.0.0/24]}\n".into(),
         "nodes/n: spec.podCIDRs: at most one IPv4 and one IPv6 CIDR are allowed"),
        ("apiVersion: v1\nkind: Node\nmetadata: {name: n}\nspec: {podCIDR: 10.0.0.0/16}\n---\napiVersion: v1\nkind: Node\nmetadata: {name: m}\nspec: {podCIDR: 10.0.3.0/24}\n".into(),
         "nodes/m: spec.podCIDRs: 10.0.3.0/24 overlaps 10.0.0.0/16 of nodes/n"),
        ("apiVersion: v1\nkind: Node\nmetadata: {name: n}\nspec: {podCIDR: 10.0.0.0/30}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: a}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: b}\n".into(),
         "pods/default/b: spec.nodeName: node \"n\" is full: its podCIDRs 10.0.0.0/30 hold 1 pods"),
        ("apiVersion: v1\nkind: Node\nmetadata: {name: n}\n---\napiVersion: v1\nkind: Node\nmetadata: {name: n}\n".into(), "nodes/n: defined more than once"),
        ("a: [\n".into(), "m.yaml: did not find expected node content at line 2 column 1, while parsing a flow node"),
    ];
    for (text, want) in cases {
        let got = parse_str(&text, "m.yaml")
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert_eq!(got, want, "for manifest:\n{text}");
        assert!(!got.contains('\n'));
    }
}

#[test]
fn load_files_merges() {
    let dir = std::env::temp_dir().join(format!("weir-topo-manifest-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let a = dir.join("a.yaml");
    let b = dir.join("b.json");
    std::fs::write(
        &a,
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: web}\n",
    )
    .unwrap();
    std::fs::write(
        &b,
        r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p","namespace":"web"}}"#,
    )
    .unwrap();
    let spec = manifest::load_files(&[a.clone(), b.clone()]).unwrap();
    assert_eq!(spec.pods[0].namespace, "web");
    let err = manifest::load_files(&[b, dir.join("missing.yaml")])
        .unwrap_err()
        .to_string();
    assert!(err.contains("missing.yaml: cannot read:"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
