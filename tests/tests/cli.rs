//! The CLI's contract on bad input: one line naming the object and field,
//! a non-zero exit, and nothing half-built left behind. Needs root.

use std::process::Command;
use weir_tests::{unique_name, weir_bin};

fn netns_with(prefix: &str) -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(prefix))
        .map(str::to_string)
        .collect()
}

fn up_bad(yaml: &str) -> (String, String) {
    let name = unique_name("bad");
    let dir = std::env::temp_dir().join(format!("weir-test-{name}"));
    std::fs::create_dir_all(&dir).expect("dir");
    let f = dir.join("bad.yaml");
    std::fs::write(&f, yaml).expect("write");
    let out = Command::new(weir_bin())
        .env("WEIR_METRICS_ADDR", "off")
        .args(["--cluster", &name, "up", "-f"])
        .arg(&f)
        .output()
        .expect("weir");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!out.status.success(), "weir up accepted a bad manifest");
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_eq!(err.lines().count(), 1, "error is not one line: {err}");
    assert!(
        netns_with(&format!("weir-{name}-")).is_empty(),
        "namespaces left behind after a rejected manifest"
    );
    (name, err)
}

const NODE: &str =
    "apiVersion: v1\nkind: Node\nmetadata: {name: n1}\nspec: {podCIDRs: [10.250.0.0/24]}\n---\n";

#[test]
fn port_out_of_range_names_object_and_field() {
    let (_, err) = up_bad(&format!(
        "{NODE}apiVersion: v1\nkind: Pod\nmetadata: {{name: p, namespace: default}}\nspec:\n  containers:\n  - name: c\n    ports:\n    - containerPort: 70000\n"
    ));
    assert!(err.contains("p") && err.contains("containerPort"), "{err}");
}

#[test]
fn bad_cidr_is_rejected() {
    let (_, err) = up_bad(
        "apiVersion: v1\nkind: Node\nmetadata: {name: n1}\nspec: {podCIDRs: [10.250.0.0/99]}\n",
    );
    assert!(
        err.contains("n1") && err.to_lowercase().contains("cidr"),
        "{err}"
    );
}

#[test]
fn pod_on_unknown_node_is_rejected() {
    let (_, err) = up_bad(&format!(
        "{NODE}apiVersion: v1\nkind: Pod\nmetadata: {{name: p}}\nspec:\n  nodeName: nowhere\n  containers: [{{name: c}}]\n"
    ));
    assert!(err.contains("nowhere"), "{err}");
}

#[test]
fn unparsable_yaml_is_rejected() {
    let (_, err) = up_bad("kind: Pod\nmetadata: [unclosed\n");
    assert!(!err.is_empty());
}

#[test]
fn bad_flags_are_one_line_errors() {
    for args in [
        vec!["--cluster", "Bad_Name", "get", "pods"],
        vec!["--cluster", "nosuchcluster", "status"],
        vec!["--cluster", "nosuchcluster", "get", "pods"],
    ] {
        let out = Command::new(weir_bin()).args(&args).output().expect("weir");
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
    }
}

/// A misspelt field on a running cluster: `weir apply` exits non-zero with
/// one line naming the object and the field path, and nothing of the file
/// is applied (neither the policy nor the pod beside it); the same file
/// under `--field-validation=warn` applies without the field and says so.
#[test]
fn apply_refuses_a_misspelt_field_and_changes_nothing() {
    use weir_tests::{all_connected, none_connected, pod_manifest, simple_cluster, TestCluster};
    let c = TestCluster::up("strict", &simple_cluster("q", &["a", "b"]));
    let pods_before = c.weir_json(&["get", "pods", "-n", "q", "-o", "json"]);
    let before = c.counter("rx_packets");
    assert!(all_connected(&c.probe(
        80,
        "TCP",
        &["--from", "q/b", "--to", "q/a"]
    )));
    assert!(
        c.counter("rx_packets") > before,
        "the probe did not cross weir"
    );
    // `matchLabel` (missing s) would select every pod of q if ignored.
    let typo = format!(
        "{}---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p3, namespace: q}}\n\
         spec:\n  podSelector: {{matchLabel: {{pod: a}}}}\n  policyTypes: [Ingress]\n",
        pod_manifest("q", "c")
    );
    let out = c.apply_text("typo.yaml", &typo);
    assert!(
        !out.status.success(),
        "weir apply accepted a misspelt field"
    );
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_eq!(
        err,
        "weir: networkpolicies/q/p3: spec.podSelector.matchLabel: unknown field; expected matchLabels or matchExpressions"
    );
    assert_eq!(
        c.weir_json(&["get", "pods", "-n", "q", "-o", "json"]),
        pods_before,
        "a pod of the refused file was applied"
    );
    let e = c.explain("q/b", "q/a", 80, "TCP");
    assert_eq!(e["allowed"], true, "{e}");
    let before = c.counter("rx_packets");
    assert!(all_connected(&c.probe(
        80,
        "TCP",
        &["--from", "q/b", "--to", "q/a"]
    )));
    assert!(
        c.counter("rx_packets") > before,
        "the probe did not cross weir"
    );

    // Under warn: applied without the field (an empty podSelector: every pod
    // of q isolated for ingress), one warning line naming it.
    let out = c.weir(&[
        "apply",
        "-f",
        &c.file("typo.yaml", &typo),
        "--field-validation=warn",
    ]);
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert!(out.status.success(), "{err}");
    assert_eq!(
        err,
        "weir: warning: networkpolicies/q/p3: spec.podSelector.matchLabel: unknown field ignored"
    );
    let e = c.explain("q/b", "q/a", 80, "TCP");
    assert_eq!(e["allowed"], false, "{e}");
    let drops = c.drops("policy-denied");
    assert!(none_connected(&c.probe(
        80,
        "TCP",
        &["--from", "q/b", "--to", "q/a"]
    )));
    assert!(
        c.drops("policy-denied") > drops,
        "the denial was not weir's"
    );
}
