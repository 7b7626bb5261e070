//! weir's CRDs (control/src/crds.rs): deploy/crds is exactly `weir crds`'
//! output, the schema is closed (structural, no preserved unknown fields),
//! and every field the API server accepts is one weir's own strict parser
//! knows — the fields the parser knows but a kind's schema leaves out are
//! exactly the ones weir refuses there with a message of its own.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value;
use weir_control::crds;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
}

#[test]
fn deploy_crds_are_the_generated_ones() {
    for (file, crd) in crds::crds() {
        let path = repo().join("deploy/crds").join(file);
        let on_disk =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(
            on_disk == crds::crd_yaml(&crd).expect("yaml"),
            "{} differs from the generated CRD; regenerate with \
             `cargo run -p weir --bin weir -- crds --dir deploy/crds`",
            path.display()
        );
    }
    // Nothing else of weir.dev in deploy/crds.
    let mut files: Vec<String> = std::fs::read_dir(repo().join("deploy/crds"))
        .expect("deploy/crds")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|f| f.starts_with("weir.dev_"))
        .collect();
    files.sort();
    let generated: Vec<&str> = crds::crds().iter().map(|(f, _)| *f).collect();
    assert_eq!(files, generated);
}

/// Paths of every property under `schema` (`spec.ingress[].from`), as
/// `weir_model::fields::Shape::entries` spells them.
fn schema_paths(schema: &Value, path: &str, out: &mut BTreeSet<String>) {
    assert!(
        schema.get("x-kubernetes-preserve-unknown-fields").is_none(),
        "{path}: preserves unknown fields"
    );
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (name, sub) in props {
            let p = if path.is_empty() {
                name.clone()
            } else {
                format!("{path}.{name}")
            };
            out.insert(p.clone());
            schema_paths(sub, &p, out);
        }
    }
    if let Some(items) = schema.get("items") {
        schema_paths(items, &format!("{path}[]"), out);
    }
    if schema.get("type") == Some(&Value::from("object")) && schema.get("properties").is_none() {
        // A free-keyed map (labels): string values only.
        assert_eq!(
            schema["additionalProperties"]["type"], "string",
            "{path}: an object without properties must be a string map"
        );
    }
}

fn version_schema(kind: &str) -> Value {
    let (_, crd) = crds::crds()
        .into_iter()
        .find(|(_, c)| c.spec.names.kind == kind)
        .expect("kind");
    let v = serde_json::to_value(&crd.spec.versions[0]).expect("json");
    v["schema"]["openAPIV3Schema"].clone()
}

fn check_against_parser(kind: &str, left_out: &[&str]) {
    let schema = version_schema(kind);
    let mut in_schema = BTreeSet::new();
    schema_paths(&schema["properties"]["spec"], "spec", &mut in_schema);
    let parser: BTreeSet<String> = weir_policy::parse::field_tree(kind)
        .expect("a policy kind")
        .entries("")
        .into_iter()
        .map(|e| e.path)
        .filter(|p| p.starts_with("spec."))
        .collect();
    let unknown: Vec<_> = in_schema.difference(&parser).collect();
    assert!(
        unknown.is_empty(),
        "{kind}: the API server accepts fields weir's parser refuses: {unknown:?}"
    );
    // Parser fields the schema leaves out, topmost only.
    let missing: BTreeSet<&str> = parser
        .difference(&in_schema)
        .filter(|p| {
            let parent = p.rsplit_once('.').map(|(a, _)| a.trim_end_matches("[]"));
            parent.is_none_or(|a| a == "spec" || in_schema.contains(a))
        })
        .map(String::as_str)
        .collect();
    assert_eq!(
        missing,
        left_out.iter().copied().collect::<BTreeSet<_>>(),
        "{kind}: parser fields the schema leaves out"
    );
}

#[test]
fn weir_policy_schema_is_the_parsers_fields_for_a_namespace_policy() {
    check_against_parser(
        "WeirPolicy",
        &[
            // Refused by the parser with "use ..." messages; unknown here.
            "spec.policyTypes",
            "spec.priority",
            "spec.subject",
            "spec.tier",
            // Direction-specific rule parts.
            "spec.ingress[].to",
            "spec.ingress[].dns",
            "spec.ingress[].toFQDNs",
            "spec.egress[].from",
            "spec.egress[].http",
            "spec.egress[].tls",
            "spec.egress[].grpc",
        ],
    );
}

#[test]
fn weir_cluster_policy_schema_is_the_parsers_fields_for_a_cluster_policy() {
    check_against_parser(
        "WeirClusterPolicy",
        &[
            "spec.podSelector",
            "spec.policyTypes",
            "spec.ingress[].to",
            "spec.egress[].from",
            // L7 and FQDN parts: WeirPolicy only (not yet in the Admin tier).
            "spec.ingress[].http",
            "spec.ingress[].tls",
            "spec.ingress[].grpc",
            "spec.ingress[].dns",
            "spec.ingress[].toFQDNs",
            "spec.egress[].http",
            "spec.egress[].tls",
            "spec.egress[].grpc",
            "spec.egress[].dns",
            "spec.egress[].toFQDNs",
        ],
    );
}

#[test]
fn required_fields_and_enums() {
    let cp = version_schema("WeirClusterPolicy");
    assert_eq!(
        cp["properties"]["spec"]["properties"]["tier"]["enum"],
        serde_json::json!(["Admin", "Baseline"])
    );
    let np = version_schema("WeirPolicy");
    let rule = &np["properties"]["spec"]["properties"]["ingress"]["items"];
    assert_eq!(rule["required"], serde_json::json!(["action"]));
    assert_eq!(
        rule["properties"]["action"]["enum"],
        serde_json::json!(["Allow", "Deny", "Log"])
    );
    let port = &rule["properties"]["ports"]["items"]["properties"];
    assert_eq!(
        port["protocol"]["enum"],
        serde_json::json!(["TCP", "UDP", "SCTP"])
    );
    assert_eq!(port["port"]["x-kubernetes-int-or-string"], true);
    assert_eq!(port["port"]["minimum"], 1.0);
    assert_eq!(port["port"]["maximum"], 65535.0);
    let cp = version_schema("WeirClusterPolicy");
    assert_eq!(
        cp["properties"]["spec"]["required"],
        serde_json::json!(["priority"])
    );
    let prio = &cp["properties"]["spec"]["properties"]["priority"];
    assert_eq!(
        (prio["minimum"].as_f64(), prio["maximum"].as_f64()),
        (Some(0.0), Some(1000.0))
    );
    assert_eq!(
        cp["properties"]["spec"]["properties"]["ingress"]["items"]["properties"]["action"]["enum"],
        serde_json::json!(["Allow", "Deny", "Pass", "Log"])
    );
}
