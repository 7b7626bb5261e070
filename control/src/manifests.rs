//! Reading manifest files: topology kinds (Node, Namespace, Pod) go to
//! weir-topo, policy kinds (NetworkPolicy, ClusterNetworkPolicy,
//! AdminNetworkPolicy, BaselineAdminNetworkPolicy, WeirPolicy,
//! WeirClusterPolicy) to weir-policy; any other kind is an error naming the
//! file, the document and the kind. Unknown fields and duplicate keys are
//! refused under the default field validation (`strict`); under `warn` and
//! `ignore` unknown fields are dropped and listed in [`Manifests::ignored`],
//! and what is stored is the policy without them.

use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use weir_policy::Policy;
use weir_topo::fields::FieldValidation;
use weir_topo::manifest::{self, ClusterSpec};

/// A policy as the user wrote it (one document) and its object name; kept
/// so the supervisor can save and reload what it enforces.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredPolicy {
    /// `networkpolicies/<ns>/<name>`, `clusternetworkpolicies/<name>`, ...
    pub object: String,
    pub yaml: String,
}

impl StoredPolicy {
    pub fn parse(&self) -> anyhow::Result<Policy> {
        let mut v = weir_policy::parse_str(&self.yaml, &self.object)?;
        anyhow::ensure!(
            v.len() == 1,
            "{}: expected one policy document",
            self.object
        );
        Ok(v.remove(0))
    }
}

/// What a set of manifest files holds.
#[derive(Debug, Default)]
pub struct Manifests {
    /// Topology objects as written (no defaults applied, not validated
    /// against each other).
    pub cluster: ClusterSpec,
    pub policies: Vec<(Policy, StoredPolicy)>,
    /// Fields dropped under `warn`/`ignore`, one `<object>: <field path>`
    /// each (always empty under `strict`).
    pub ignored: Vec<String>,
}

pub fn parse_text(text: &str, source: &str, mode: FieldValidation) -> anyhow::Result<Manifests> {
    let mut out = Manifests::default();
    let docs = manifest::split_documents_with(text, source, mode, &mut out.ignored)?;
    for doc in docs {
        if manifest::is_topology_kind(&doc.api_version, &doc.kind) {
            out.cluster
                .add_document_with(&doc, mode, &mut out.ignored)?;
        } else if weir_policy::is_policy_kind(&doc.api_version, &doc.kind) {
            let parsed = weir_policy::parse::parse_document_with(&doc, mode)?;
            out.ignored.extend(parsed.ignored);
            let policy = parsed.policy;
            let object = policy.object();
            if out.policies.iter().any(|(p, _)| p.object() == object) {
                anyhow::bail!("{object}: defined more than once");
            }
            let yaml = serde_yaml::to_string(&parsed.value).context("re-encode policy")?;
            out.policies.push((policy, StoredPolicy { object, yaml }));
        } else {
            anyhow::bail!(
                "{}: document {}: unsupported kind {:?} (apiVersion {:?})",
                doc.file,
                doc.index,
                doc.kind,
                doc.api_version
            );
        }
    }
    Ok(out)
}

pub fn read_files(files: &[PathBuf], mode: FieldValidation) -> anyhow::Result<Manifests> {
    let mut out = Manifests::default();
    for f in files {
        let text = std::fs::read_to_string(f).with_context(|| f.display().to_string())?;
        let m = parse_text(&text, &f.display().to_string(), mode)?;
        out.ignored.extend(m.ignored);
        out.cluster.merge(m.cluster)?;
        for (p, s) in m.policies {
            if out.policies.iter().any(|(q, _)| q.object() == s.object) {
                anyhow::bail!("{}: defined more than once", s.object);
            }
            out.policies.push((p, s));
        }
    }
    Ok(out)
}

/// Reads the supervisor's saved policies (none if the file is missing).
pub fn load_policies(path: &std::path::Path) -> anyhow::Result<Vec<StoredPolicy>> {
    match std::fs::read(path) {
        Ok(b) => Ok(serde_json::from_slice(&b).with_context(|| path.display().to_string())?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(anyhow::Error::new(e).context(path.display().to_string())),
    }
}

pub fn parse_all(stored: &[StoredPolicy]) -> anyhow::Result<Vec<Policy>> {
    stored.iter().map(StoredPolicy::parse).collect()
}
