//! The supervisor of one local cluster (`weir daemon`, started by `weir up`).
//!
//! It runs the pods' servers (each bound inside its pod's namespace), the
//! agent (compiles cluster state into snapshots on every change), and one
//! dataplane process per node; it answers the CLI on `daemon.sock`. It is a
//! control-plane process: nothing here is on the packet path.

use crate::ipc::{self, Reply, Request};
use crate::state::StateDir;
use anyhow::Context;
use serde_json::json;
use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::os::unix::net::UnixListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use weir_topo::serve::PodServers;
use weir_topo::{BuildOptions, Cluster};

pub struct Options {
    pub cluster: String,
    /// Extra arguments passed to every `weir dataplane` (cores, poll mode).
    pub dataplane_args: Vec<String>,
}

struct Daemon {
    state: StateDir,
    cluster: Cluster,
    opts: Options,
    servers: BTreeMap<(String, String), PodServers>,
    dataplanes: BTreeMap<String, Child>,
    generation: u64,
}

pub fn run(opts: Options) -> anyhow::Result<()> {
    let state = StateDir::new(&opts.cluster);
    let cluster = Cluster::load(&state.cluster_file()).with_context(|| {
        format!(
            "cluster {}: no state at {}",
            opts.cluster,
            state.root.display()
        )
    })?;
    let mut d = Daemon {
        state,
        cluster,
        opts,
        servers: BTreeMap::new(),
        dataplanes: BTreeMap::new(),
        generation: 0,
    };
    let sock = d.state.daemon_sock();
    let _ = std::fs::remove_file(&sock);
    let listener = UnixListener::bind(&sock).with_context(|| format!("bind {}", sock.display()))?;

    for pod in d.cluster.pods.clone() {
        d.start_servers(&pod)?;
    }
    d.generation = crate::agent::publish(&d.state, &d.cluster)?;
    for node in d
        .cluster
        .nodes
        .iter()
        .map(|n| n.name.clone())
        .collect::<Vec<_>>()
    {
        d.start_dataplane(&node)?;
    }
    log::info!(
        "cluster {} supervised, generation {}",
        d.opts.cluster,
        d.generation
    );

    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let req = ipc::read_request::<Request>(&conn);
        let (reply, stop) = match req {
            Ok(Request::Shutdown) => (Reply::ok(json!({})), true),
            Ok(r) => (d.handle(r), false),
            Err(e) => (Reply::err(format!("bad request: {e}")), false),
        };
        if stop {
            d.shutdown();
            let _ = ipc::write_reply(&conn, &reply);
            let _ = std::fs::remove_file(&sock);
            return Ok(());
        }
        let _ = ipc::write_reply(&conn, &reply);
    }
    Ok(())
}

impl Daemon {
    fn handle(&mut self, req: Request) -> Reply {
        let r = match req {
            Request::Ping => Ok(self.readiness()),
            Request::Status => Ok(self.status()),
            Request::ApplyPods { manifests, source } => self.apply_pods(&manifests, &source),
            Request::DeletePods { pods } => self.delete_pods(&pods),
            Request::StopDataplane { node } => self.stop_dataplane(&node).map(|_| json!({})),
            Request::StartDataplane { node } => self.start_dataplane(&node).map(|_| json!({})),
            Request::Shutdown => Ok(json!({})),
        };
        match r {
            Ok(v) => Reply::ok(v),
            Err(e) => Reply::err(format!("{e:#}")),
        }
    }

    fn start_servers(&mut self, pod: &weir_topo::RealizedPod) -> anyhow::Result<()> {
        let s = PodServers::start(pod)
            .with_context(|| format!("pods/{}/{}: servers", pod.namespace, pod.name))?;
        self.servers
            .insert((pod.namespace.clone(), pod.name.clone()), s);
        Ok(())
    }

    fn start_dataplane(&mut self, node: &str) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.cluster.nodes.iter().any(|n| n.name == node),
            "nodes/{node}: not in the cluster"
        );
        if let Some(c) = self.dataplanes.get_mut(node) {
            if c.try_wait()?.is_none() {
                return Ok(());
            }
        }
        let log_path = self.state.dataplane_log(node);
        std::fs::create_dir_all(self.state.node_dir(node))?;
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)?;
        let exe = std::env::current_exe()?;
        let child = Command::new(exe)
            .arg("--cluster")
            .arg(&self.opts.cluster)
            .arg("dataplane")
            .arg("--node")
            .arg(node)
            .args(&self.opts.dataplane_args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("nodes/{node}: start dataplane"))?;
        self.dataplanes.insert(node.to_string(), child);
        Ok(())
    }

    fn stop_dataplane(&mut self, node: &str) -> anyhow::Result<()> {
        let Some(mut child) = self.dataplanes.remove(node) else {
            anyhow::bail!("nodes/{node}: no dataplane running");
        };
        let _ = ipc::call(
            &self.state.dataplane_sock(node),
            &Request::Shutdown,
            Duration::from_secs(2),
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Ready when every node's dataplane runs the latest generation.
    fn readiness(&mut self) -> serde_json::Value {
        let mut nodes = serde_json::Map::new();
        let mut ready = true;
        for n in &self.cluster.nodes {
            let running = self
                .dataplanes
                .get_mut(&n.name)
                .map(|c| matches!(c.try_wait(), Ok(None)))
                .unwrap_or(false);
            let generation = ipc::call(
                &self.state.dataplane_sock(&n.name),
                &Request::Ping,
                Duration::from_secs(1),
            )
            .ok()
            .and_then(|v| v["generation"].as_u64());
            let node_ready = running && generation == Some(self.generation);
            ready &= node_ready;
            nodes.insert(
                n.name.clone(),
                json!({"running": running, "generation": generation, "ready": node_ready}),
            );
        }
        json!({"ready": ready, "generation": self.generation, "nodes": nodes})
    }

    fn status(&mut self) -> serde_json::Value {
        let mut nodes = Vec::new();
        for n in &self.cluster.nodes {
            let st = ipc::call(
                &self.state.dataplane_sock(&n.name),
                &Request::Status,
                Duration::from_secs(2),
            );
            nodes.push(match st {
                Ok(v) => json!({"node": n.name, "running": true, "status": v}),
                Err(e) => json!({"node": n.name, "running": false, "error": e.to_string()}),
            });
        }
        json!({"cluster": self.opts.cluster, "generation": self.generation, "nodes": nodes})
    }

    fn apply_pods(&mut self, text: &str, source: &str) -> anyhow::Result<serde_json::Value> {
        let objs =
            weir_topo::manifest::parse_objects(text, source).map_err(|e| anyhow::anyhow!("{e}"))?;
        if let Some(n) = objs.nodes.first() {
            anyhow::bail!(
                "nodes/{}: nodes cannot be added to a running cluster (weir down, then up)",
                n.name
            );
        }
        if let Some(n) = objs.namespaces.first() {
            anyhow::bail!(
                "namespaces/{}: namespaces cannot be added to a running cluster yet",
                n.name
            );
        }
        // Validate the new pods against the whole cluster as it would be.
        let mut whole = spec_of(&self.cluster);
        let mut changed = Vec::new();
        let mut new = Vec::new();
        for pod in objs.pods {
            let key = format!("{}/{}", pod.namespace, pod.name);
            if self.cluster.pod(&pod.namespace, &pod.name).is_some() {
                // A pod's spec is immutable: like kubectl, applying it again changes nothing.
                changed.push(json!({"pod": key, "action": "unchanged"}));
            } else {
                new.push(pod.clone());
                whole.pods.push(pod);
            }
        }
        whole.apply_defaults();
        whole.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
        let opts = BuildOptions::default();
        for pod in &new {
            let pod = whole
                .pods
                .iter()
                .find(|p| p.namespace == pod.namespace && p.name == pod.name)
                .expect("new pod is in the merged spec");
            let realized = self
                .cluster
                .add_pod(pod, &opts)
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .clone();
            self.start_servers(&realized)?;
            changed.push(
                json!({"pod": format!("{}/{}", pod.namespace, pod.name), "action": "created"}),
            );
        }
        self.commit()?;
        Ok(json!({"changed": changed, "generation": self.generation}))
    }

    fn delete_pods(&mut self, pods: &[(String, String)]) -> anyhow::Result<serde_json::Value> {
        let mut deleted = Vec::new();
        for (ns, name) in pods {
            if self.cluster.pod(ns, name).is_none() {
                anyhow::bail!("pods/{ns}/{name}: not found");
            }
            self.servers.remove(&(ns.clone(), name.clone()));
            self.cluster
                .remove_pod(ns, name)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            deleted.push(format!("{ns}/{name}"));
        }
        self.commit()?;
        Ok(json!({"deleted": deleted, "generation": self.generation}))
    }

    /// Saves the cluster and publishes new snapshots.
    fn commit(&mut self) -> anyhow::Result<()> {
        self.cluster.save(&self.state.cluster_file())?;
        self.generation = crate::agent::publish(&self.state, &self.cluster)?;
        Ok(())
    }

    fn shutdown(&mut self) {
        for node in self.dataplanes.keys().cloned().collect::<Vec<_>>() {
            let _ = self.stop_dataplane(&node);
        }
        self.servers.clear();
    }
}

/// The cluster's current objects as a manifest spec (for validating changes).
fn spec_of(c: &Cluster) -> weir_topo::manifest::ClusterSpec {
    use weir_topo::manifest::{ClusterSpec, NodeSpec, PodSpec};
    ClusterSpec {
        nodes: c
            .nodes
            .iter()
            .map(|n| NodeSpec {
                name: n.name.clone(),
                labels: n.labels.clone(),
                pod_cidrs: n.pod_cidrs.clone(),
            })
            .collect(),
        namespaces: c.namespaces.clone(),
        pods: c
            .pods
            .iter()
            .map(|p| PodSpec {
                namespace: p.namespace.clone(),
                name: p.name.clone(),
                labels: p.labels.clone(),
                node: p.node.clone(),
                ports: p.ports.clone(),
            })
            .collect(),
    }
}
