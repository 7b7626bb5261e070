//! Where a local cluster keeps its state: `$WEIR_STATE_DIR/<cluster>/`
//! (default `/run/weir/<cluster>/`).
//!
//! ```text
//! cluster.json                 realized topology (weir_topo::Cluster)
//! policies.json                the policies in force, as written
//! pods-pending.json            pods `weir up` left for the supervisor to attach
//! nodes/<node>/ipam.json       the node's IPAM store (weir-cni addresses)
//! daemon.sock, daemon.log      the supervisor (pod servers, agent, dataplanes)
//! nodes/<node>/snapshot.json   the agent's latest snapshot for that node
//! nodes/<node>/dataplane.sock  the node's dataplane: status queries
//! nodes/<node>/dataplane.log
//! servers/<ns>_<pod>.pid       a pod's server process (`weir pod-server`); world.pid
//! servers.log                  the pod server processes' log
//! ```

use std::path::{Path, PathBuf};

/// Default cluster name when neither `--cluster` nor `WEIR_CLUSTER` is set.
pub const DEFAULT_CLUSTER: &str = "weir";

#[derive(Debug, Clone)]
pub struct StateDir {
    pub cluster: String,
    pub root: PathBuf,
}

impl StateDir {
    pub fn new(cluster: &str) -> Self {
        let base = std::env::var_os("WEIR_STATE_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/run/weir"));
        StateDir {
            cluster: cluster.to_string(),
            root: base.join(cluster),
        }
    }

    pub fn cluster_file(&self) -> PathBuf {
        self.root.join("cluster.json")
    }
    /// The policies in force (`manifests::StoredPolicy` list, JSON).
    /// Pods of weir nodes `weir up` hands to the supervisor, which attaches
    /// them through weir-cni (then removes the file).
    pub fn pending_pods_file(&self) -> PathBuf {
        self.root.join("pods-pending.json")
    }

    pub fn policies_file(&self) -> PathBuf {
        self.root.join("policies.json")
    }
    pub fn daemon_sock(&self) -> PathBuf {
        self.root.join("daemon.sock")
    }
    pub fn daemon_log(&self) -> PathBuf {
        self.root.join("daemon.log")
    }
    pub fn node_dir(&self, node: &str) -> PathBuf {
        self.root.join("nodes").join(node)
    }
    pub fn snapshot_file(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("snapshot.json")
    }
    pub fn dataplane_sock(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("dataplane.sock")
    }
    /// The node dataplane's process id (so `weir down` can stop an orphan
    /// whose supervisor died).
    pub fn dataplane_pid(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("dataplane.pid")
    }
    pub fn dataplane_log(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("dataplane.log")
    }
    pub fn exists(&self) -> bool {
        self.cluster_file().exists()
    }
}

/// Writes `bytes` to `path` atomically (write to a temporary file, rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}
