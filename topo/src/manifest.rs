//! Kubernetes manifests (Node, Namespace, Pod) read into a [`ClusterSpec`].
//! The manifest model itself is plain data and lives in
//! [`weir_model::manifest`] (re-exported here, so `weir_topo::manifest::*`
//! paths keep working); this module adds what reads files.

use std::path::PathBuf;

pub use weir_model::manifest::*;

/// Reads, merges and finishes (defaults + validation) manifest files.
pub fn load_files(paths: &[PathBuf]) -> Result<ClusterSpec, ManifestError> {
    let mut spec = ClusterSpec::default();
    for path in paths {
        let text = std::fs::read_to_string(path).map_err(|error| ManifestError::Read {
            path: path.clone(),
            error,
        })?;
        spec.merge(parse_objects(&text, &path.display().to_string())?)?;
    }
    spec.finish()
}
