//! The supervisor of one local cluster (`weir daemon`, started by `weir up`).
//!
//! It runs the pods' servers (each bound inside its pod's namespace), the
//! agent (compiles cluster state into snapshots on every change), and one
//! dataplane process per node; it answers the CLI on `daemon.sock`. It is a
//! control-plane process: nothing here is on the packet path.

use crate::ipc::{self, Reply, Request};
use crate::manifests::{self, StoredPolicy};
use crate::source::Manifests;
use crate::state::StateDir;
use anyhow::Context;
use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::os::unix::net::UnixListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use weir_model::ipc::{
    Change, ChangeReply, ClusterStatus, DeleteReply, Empty, NodePing, NodeReadiness, NodeStatus,
    NodeStatusEntry, Readiness,
};
use weir_topo::fields::FieldValidation;
use weir_topo::manifest::NAMESPACE_NAME_LABEL;
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
    /// Policies in force, as written (saved to policies.json).
    policies: Vec<StoredPolicy>,
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
    let policies = manifests::load_policies(&state.policies_file())?;
    let mut d = Daemon {
        state,
        cluster,
        opts,
        servers: BTreeMap::new(),
        dataplanes: BTreeMap::new(),
        generation: 0,
        policies,
    };
    let sock = d.state.daemon_sock();
    let _ = std::fs::remove_file(&sock);
    let listener = UnixListener::bind(&sock).with_context(|| format!("bind {}", sock.display()))?;

    // Pods a runtime attached (weir-cni) run their own servers.
    for pod in d.cluster.pods.clone().iter().filter(|p| p.cni.is_none()) {
        d.start_servers(pod)?;
    }
    d.generation = crate::agent::publish(
        &d.state,
        &Manifests {
            cluster: &d.cluster,
            policies: &d.policies,
        },
    )?;
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
            Ok(Request::Shutdown) => (Reply::with(&Empty {}), true),
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

/// A typed reply payload as the wire's JSON.
fn to_value<T: serde::Serialize>(v: T) -> anyhow::Result<serde_json::Value> {
    serde_json::to_value(v).context("reply does not serialize")
}

impl Daemon {
    fn handle(&mut self, req: Request) -> Reply {
        let r = match req {
            Request::Ping => to_value(self.readiness()),
            Request::Status => to_value(self.status()),
            Request::Apply {
                manifests,
                source,
                field_validation,
            } => self
                .apply(&manifests, &source, field_validation)
                .and_then(to_value),
            Request::Delete {
                manifests,
                source,
                field_validation,
            } => self
                .delete(&manifests, &source, field_validation)
                .and_then(to_value),
            Request::SyncPolicies { manifests, source } => {
                self.sync_policies(&manifests, &source).and_then(to_value)
            }
            Request::StopDataplane { node } => {
                self.stop_dataplane(&node).and_then(|_| to_value(Empty {}))
            }
            Request::StartDataplane { node } => {
                self.start_dataplane(&node).and_then(|_| to_value(Empty {}))
            }
            Request::Flows { .. } => {
                Err(anyhow::anyhow!("flows are served by each node's dataplane"))
            }
            Request::Cni(call) => Ok(crate::cni_server::handle(self, &call)),
            Request::Shutdown => to_value(Empty {}),
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
            self.cluster.node(node).is_some(),
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
    fn readiness(&mut self) -> Readiness {
        let mut nodes = BTreeMap::new();
        let mut ready = true;
        let mut failed = Vec::new();
        for n in crate::agent::weir_nodes(&self.cluster) {
            // A dataplane that exited (not one stopped on purpose) failed:
            // say so at once instead of letting the caller time out.
            let exited = match self.dataplanes.get_mut(&n.name).map(|c| c.try_wait()) {
                Some(Ok(Some(status))) => Some(status.to_string()),
                _ => None,
            };
            let running = self.dataplanes.contains_key(&n.name) && exited.is_none();
            if let Some(status) = &exited {
                failed.push(format!(
                    "nodes/{}: dataplane exited ({status}); see {}",
                    n.name,
                    self.state.dataplane_log(&n.name).display()
                ));
            }
            let generation = ipc::request::<NodePing>(
                &self.state.dataplane_sock(&n.name),
                &Request::Ping,
                Duration::from_secs(1),
            )
            .ok()
            .map(|p| p.generation);
            let node_ready = running && generation == Some(self.generation);
            ready &= node_ready;
            nodes.insert(
                n.name.clone(),
                NodeReadiness {
                    running,
                    exited,
                    generation,
                    ready: node_ready,
                },
            );
        }
        Readiness {
            ready,
            generation: self.generation,
            nodes,
            failed,
        }
    }

    fn status(&mut self) -> ClusterStatus {
        let mut nodes = Vec::new();
        for n in &self.cluster.nodes {
            if n.dataplane != weir_topo::NodeDataplane::Weir {
                nodes.push(NodeStatusEntry {
                    node: n.name.clone(),
                    kernel: true,
                    error: Some("kernel dataplane (no weir on this node)".into()),
                    ..Default::default()
                });
                continue;
            }
            let st = ipc::request::<NodeStatus>(
                &self.state.dataplane_sock(&n.name),
                &Request::Status,
                Duration::from_secs(2),
            );
            nodes.push(match st {
                Ok(v) => NodeStatusEntry {
                    node: n.name.clone(),
                    running: true,
                    status: Some(v),
                    ..Default::default()
                },
                Err(e) => NodeStatusEntry {
                    node: n.name.clone(),
                    error: Some(e.to_string()),
                    ..Default::default()
                },
            });
        }
        ClusterStatus {
            cluster: self.opts.cluster.clone(),
            generation: self.generation,
            nodes,
        }
    }

    /// Applies Pods (new, or label changes), Namespaces (new, or label
    /// changes) and policies (new or replaced), all or nothing: everything
    /// is validated and compiled against the cluster as it would be before
    /// anything changes.
    fn apply(
        &mut self,
        text: &str,
        source: &str,
        mode: FieldValidation,
    ) -> anyhow::Result<ChangeReply> {
        let m = manifests::parse_text(text, source, mode)?;
        if let Some(n) = m.cluster.nodes.first() {
            anyhow::bail!(
                "nodes/{}: nodes cannot be added to a running cluster (weir down, then up)",
                n.name
            );
        }
        let mut next = self.cluster.clone();
        let mut changed = Vec::new();
        for ns in &m.cluster.namespaces {
            let mut labels = ns.labels.clone();
            labels.insert(NAMESPACE_NAME_LABEL.to_string(), ns.name.clone());
            match next.namespaces.iter_mut().find(|n| n.name == ns.name) {
                Some(cur) if cur.labels == labels => {
                    changed.push(Change::new(format!("namespaces/{}", ns.name), "unchanged"))
                }
                Some(cur) => {
                    cur.labels = labels;
                    changed.push(Change::new(
                        format!("namespaces/{}", ns.name),
                        "labels updated",
                    ));
                }
                None => {
                    next.namespaces.push(weir_topo::manifest::NamespaceSpec {
                        name: ns.name.clone(),
                        labels,
                    });
                    changed.push(Change::new(format!("namespaces/{}", ns.name), "created"));
                }
            }
        }
        let mut new_pods = Vec::new();
        for pod in &m.cluster.pods {
            let object = format!("pods/{}/{}", pod.namespace, pod.name);
            match next
                .pods
                .iter_mut()
                .find(|p| p.namespace == pod.namespace && p.name == pod.name)
            {
                Some(cur) => {
                    // Like Kubernetes: a pod's spec is immutable, its labels are not.
                    if cur.ports != pod.ports || (!pod.node.is_empty() && cur.node != pod.node) {
                        anyhow::bail!("{object}: spec: a pod's spec cannot change (only metadata.labels); delete and re-create it");
                    }
                    if cur.labels == pod.labels {
                        changed.push(Change::new(object, "unchanged"));
                    } else {
                        cur.labels = pod.labels.clone();
                        changed.push(Change::new(object, "labels updated"));
                    }
                }
                None => new_pods.push(pod.clone()),
            }
        }
        // Validate the new pods against the whole cluster as it would be.
        let mut whole = next.spec();
        whole.pods.extend(new_pods.iter().cloned());
        whole.apply_defaults();
        whole.validate()?;
        let mut policies = self.policies.clone();
        for (_, stored) in &m.policies {
            match policies.iter_mut().find(|p| p.object == stored.object) {
                Some(cur) if cur == stored => {
                    changed.push(Change::new(stored.object.clone(), "unchanged"))
                }
                Some(cur) => {
                    *cur = stored.clone();
                    changed.push(Change::new(stored.object.clone(), "configured"));
                }
                None => {
                    policies.push(stored.clone());
                    changed.push(Change::new(stored.object.clone(), "created"));
                }
            }
        }
        crate::agent::check(&Manifests {
            cluster: &next,
            policies: &policies,
        })?;

        // Everything checked: make it so.
        self.cluster = next;
        self.policies = policies;
        let opts = BuildOptions::default();
        for pod in &new_pods {
            let pod = whole
                .pods
                .iter()
                .find(|p| p.namespace == pod.namespace && p.name == pod.name)
                .expect("new pod is in the merged spec");
            let realized = self.cluster.add_pod(pod, &opts)?.clone();
            self.start_servers(&realized)?;
            changed.push(Change::new(
                format!("pods/{}/{}", pod.namespace, pod.name),
                "created",
            ));
        }
        self.commit()?;
        Ok(ChangeReply {
            changed,
            generation: self.generation,
            ignored: Some(m.ignored),
        })
    }

    /// Replaces the whole policy set by the policies of `text` (a policy
    /// source's complete view), all or nothing: a set that does not parse or
    /// compile changes nothing, so the previous tables stay in force.
    fn sync_policies(&mut self, text: &str, source: &str) -> anyhow::Result<ChangeReply> {
        let m = manifests::parse_text(text, source, FieldValidation::Strict)?;
        if let Some(n) = m.cluster.namespaces.first() {
            anyhow::bail!(
                "namespaces/{}: a policy source carries policies only",
                n.name
            );
        }
        if let Some(p) = m.cluster.pods.first() {
            anyhow::bail!(
                "pods/{}/{}: a policy source carries policies only",
                p.namespace,
                p.name
            );
        }
        let policies: Vec<StoredPolicy> = m.policies.iter().map(|(_, s)| s.clone()).collect();
        let mut changed = Vec::new();
        for s in &policies {
            let action = match self.policies.iter().find(|p| p.object == s.object) {
                Some(cur) if cur == s => "unchanged",
                Some(_) => "configured",
                None => "created",
            };
            changed.push(Change::new(s.object.clone(), action));
        }
        for p in &self.policies {
            if !policies.iter().any(|s| s.object == p.object) {
                changed.push(Change::new(p.object.clone(), "deleted"));
            }
        }
        crate::agent::check(&Manifests {
            cluster: &self.cluster,
            policies: &policies,
        })?;
        self.policies = policies;
        self.commit()?;
        Ok(ChangeReply {
            changed,
            generation: self.generation,
            ignored: None,
        })
    }

    /// Deletes Pods and policies (all or nothing).
    fn delete(
        &mut self,
        text: &str,
        source: &str,
        mode: FieldValidation,
    ) -> anyhow::Result<DeleteReply> {
        let m = manifests::parse_text(text, source, mode)?;
        if let Some(n) = m.cluster.nodes.first() {
            anyhow::bail!(
                "nodes/{}: nodes cannot be deleted from a running cluster (weir down)",
                n.name
            );
        }
        if let Some(n) = m.cluster.namespaces.first() {
            anyhow::bail!(
                "namespaces/{}: namespaces cannot be deleted from a running cluster yet",
                n.name
            );
        }
        for p in &m.cluster.pods {
            if self.cluster.pod(&p.namespace, &p.name).is_none() {
                anyhow::bail!("pods/{}/{}: not found", p.namespace, p.name);
            }
        }
        for (_, s) in &m.policies {
            if !self.policies.iter().any(|p| p.object == s.object) {
                anyhow::bail!("{}: not found", s.object);
            }
        }
        let mut deleted = Vec::new();
        for p in &m.cluster.pods {
            if self
                .cluster
                .pod(&p.namespace, &p.name)
                .is_some_and(|r| r.cni.is_some())
            {
                anyhow::bail!(
                    "pods/{}/{}: attached by a container runtime (weir-cni): its DEL removes it",
                    p.namespace,
                    p.name
                );
            }
            self.servers.remove(&(p.namespace.clone(), p.name.clone()));
            self.cluster.remove_pod(&p.namespace, &p.name)?;
            deleted.push(format!("pods/{}/{}", p.namespace, p.name));
        }
        for (_, s) in &m.policies {
            self.policies.retain(|p| p.object != s.object);
            deleted.push(s.object.clone());
        }
        self.commit()?;
        Ok(DeleteReply {
            deleted,
            generation: self.generation,
            ignored: m.ignored,
        })
    }

    /// Saves the cluster and publishes new snapshots.
    fn commit(&mut self) -> anyhow::Result<()> {
        self.cluster.save(&self.state.cluster_file())?;
        crate::state::write_atomic(
            &self.state.policies_file(),
            &serde_json::to_vec_pretty(&self.policies)?,
        )?;
        self.generation = crate::agent::publish(
            &self.state,
            &Manifests {
                cluster: &self.cluster,
                policies: &self.policies,
            },
        )?;
        Ok(())
    }

    fn shutdown(&mut self) {
        for node in self.dataplanes.keys().cloned().collect::<Vec<_>>() {
            let _ = self.stop_dataplane(&node);
        }
        self.servers.clear();
    }
}

impl crate::cni_server::CniHost for Daemon {
    fn state(&self) -> &StateDir {
        &self.state
    }
    fn cluster(&mut self) -> &mut Cluster {
        &mut self.cluster
    }
    fn commit(&mut self) -> anyhow::Result<()> {
        Daemon::commit(self)
    }
    fn wait_applied(&mut self, node: &str) {
        let running = matches!(
            self.dataplanes.get_mut(node).map(|c| c.try_wait()),
            Some(Ok(None))
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while running && Instant::now() < deadline {
            let g = ipc::request::<NodePing>(
                &self.state.dataplane_sock(node),
                &Request::Ping,
                Duration::from_secs(1),
            )
            .ok()
            .map(|p| p.generation);
            if g >= Some(self.generation) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
