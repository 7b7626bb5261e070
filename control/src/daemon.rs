//! The supervisor of one local cluster (`weir daemon`, started by `weir up`).
//!
//! It runs the pods' servers (a process per pod, bound inside its pod's
//! namespace: [`crate::pod_server`]), the
//! agent (compiles cluster state into snapshots on every change), and one
//! dataplane process per node; it answers the CLI on `daemon.sock`. It is a
//! control-plane process: nothing here is on the packet path.

use crate::ipc::{self, Reply, Request};
use crate::manifests::{self, StoredPolicy};
use crate::pod_server::{self, ServerProc, ServerSpec};
use crate::source::Manifests;
use crate::state::StateDir;
use anyhow::Context;
use serde_json::json;
use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::os::unix::net::UnixListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use weir_model::ipc::{
    Change, ChangeReply, ClusterStatus, DeleteReply, Empty, NodePing, NodeReadiness, NodeStatus,
    NodeStatusEntry, Readiness,
};
use weir_topo::fields::FieldValidation;
use weir_topo::manifest::NAMESPACE_NAME_LABEL;
use weir_topo::{BuildOptions, Cluster};

/// The refusal of a request that arrived while a CNI plugin ran: the
/// caller tries again.
pub const BUSY: &str = "the supervisor is attaching a pod; retry";

pub struct Options {
    pub cluster: String,
    /// Extra arguments passed to every `weir dataplane` (cores, poll mode).
    pub dataplane_args: Vec<String>,
    /// `--metrics-addr`: where /metrics and /flows are served (`off`: nowhere).
    pub metrics_addr: String,
}

struct Daemon {
    state: StateDir,
    cluster: Cluster,
    opts: Options,
    /// The pods' server processes ([`crate::pod_server`]).
    servers: BTreeMap<(String, String), ServerProc>,
    /// The world host's server (`weir_topo::world`), when the cluster has one.
    world_server: Option<ServerProc>,
    dataplanes: BTreeMap<String, DataplaneProc>,
    generation: u64,
    /// Policies in force, as written (saved to policies.json).
    policies: Vec<StoredPolicy>,
    /// daemon.sock, for serving weir-cni while this process runs it.
    listener: Option<UnixListener>,
    /// Specs of the pods being attached through weir-cni right now (their
    /// labels and ports: what an agent knows from the API server).
    templates: BTreeMap<(String, String), weir_topo::PodSpec>,
    /// Pods of `weir up` still to attach, and why attaching one failed.
    attaching: bool,
    attach_failed: Vec<String>,
    /// A Shutdown arrived while a plugin ran: stop once it is done.
    shutdown_requested: bool,
    /// What the metrics endpoint reads (generation, publish latency).
    metrics: Arc<crate::metrics::Shared>,
}

pub fn run(opts: Options) -> anyhow::Result<()> {
    // First: an address in use is one line and exit 1, before anything starts.
    let metrics_listener = crate::metrics::bind(&opts.metrics_addr)?;
    let state = StateDir::new(&opts.cluster);
    let cluster = Cluster::load(&state.cluster_file()).with_context(|| {
        format!(
            "cluster {}: no state at {}",
            opts.cluster,
            state.root.display()
        )
    })?;
    let policies = manifests::load_policies(&state.policies_file())?;
    let metrics = crate::metrics::Shared::new(
        &opts.cluster,
        state.clone(),
        cluster
            .nodes
            .iter()
            .map(|n| {
                (
                    n.name.clone(),
                    n.dataplane == weir_topo::NodeDataplane::Weir,
                )
            })
            .collect(),
    );
    if let Some(l) = metrics_listener {
        log::info!("metrics and flows on http://{}/", opts.metrics_addr);
        crate::metrics::serve(l, metrics.clone());
    }
    let mut d = Daemon {
        state,
        cluster,
        opts,
        servers: BTreeMap::new(),
        world_server: None,
        dataplanes: BTreeMap::new(),
        generation: 0,
        policies,
        listener: None,
        templates: BTreeMap::new(),
        attaching: false,
        attach_failed: Vec::new(),
        shutdown_requested: false,
        metrics,
    };
    let sock = d.state.daemon_sock();
    let _ = std::fs::remove_file(&sock);
    let listener = UnixListener::bind(&sock).with_context(|| format!("bind {}", sock.display()))?;
    d.listener = Some(listener.try_clone()?);

    // The cluster's own pods (topo-wired, or attached by this supervisor
    // through weir-cni) get their servers here; an outside runtime's pods
    // run their own. Each is a process of its own: a supervisor started
    // again adopts those still running, and stops those of pods now gone.
    let served: Vec<_> = d
        .cluster
        .pods
        .iter()
        .filter(|p| p.cni.is_none() || crate::cni_server::is_topo_pod(p))
        .cloned()
        .collect();
    let mut keep: Vec<String> = served
        .iter()
        .map(|p| pod_server::pod_id(&p.namespace, &p.name))
        .collect();
    keep.push("world".to_string());
    pod_server::stop_all(&d.state, &keep);
    for pod in &served {
        d.start_servers(pod)?;
    }
    if let Some(w) = d.cluster.world.clone() {
        let spec = ServerSpec {
            netns: w.netns.clone(),
            object: "the world host".to_string(),
            name: "world".to_string(),
            ports: w.ports(),
            addrs: w.addrs.clone(),
        };
        let s = ServerProc::start_or_adopt(&d.state, "world", &spec)
            .context("the world host: server")?;
        d.world_server = Some(s);
    }
    d.publish()?;
    // The pods `weir up` left to us go through weir-cni, as a runtime's
    // would, before the dataplanes start (each starts with every port of
    // its node, and its UMEM is sized for them).
    let pending = d.state.pending_pods_file();
    if let Ok(bytes) = std::fs::read(&pending) {
        let pods: Vec<weir_topo::PodSpec> = serde_json::from_slice(&bytes)
            .with_context(|| format!("{}: unreadable", pending.display()))?;
        d.attaching = true;
        for pod in &pods {
            if d.shutdown_requested {
                break;
            }
            if let Err(e) = d.attach_topo_pod(pod) {
                log::error!("{e:#}");
                d.attach_failed.push(format!("{e:#}"));
                break;
            }
        }
        d.attaching = false;
        let _ = std::fs::remove_file(&pending);
    }
    if d.shutdown_requested {
        d.shutdown();
        let _ = std::fs::remove_file(&sock);
        return Ok(());
    }
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
            Ok(r) => {
                let reply = d.handle(r);
                (reply, d.shutdown_requested)
            }
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

/// A node's dataplane process: a child of this supervisor, or one a
/// previous supervisor started and this one adopted (its parent is now
/// init, so it is watched through /proc and stopped by signal).
enum DataplaneProc {
    Child(Child),
    Adopted(u32),
}

impl DataplaneProc {
    /// `Some` once it exited (an adopted one's status is not known: 0).
    fn try_wait(&mut self) -> std::io::Result<Option<std::process::ExitStatus>> {
        use std::os::unix::process::ExitStatusExt;
        match self {
            DataplaneProc::Child(c) => c.try_wait(),
            DataplaneProc::Adopted(pid) => {
                Ok((!pid_alive(*pid)).then(|| std::process::ExitStatus::from_raw(0)))
            }
        }
    }

    fn pid(&self) -> u32 {
        match self {
            DataplaneProc::Child(c) => c.id(),
            DataplaneProc::Adopted(pid) => *pid,
        }
    }

    fn kill(&mut self) -> std::io::Result<()> {
        match self {
            DataplaneProc::Child(c) => c.kill(),
            DataplaneProc::Adopted(pid) => {
                let pid = nix::unistd::Pid::from_raw(*pid as i32);
                nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL)
                    .map_err(std::io::Error::from)
            }
        }
    }

    fn wait(&mut self) -> std::io::Result<()> {
        match self {
            DataplaneProc::Child(c) => c.wait().map(drop),
            DataplaneProc::Adopted(pid) => {
                let deadline = Instant::now() + Duration::from_secs(5);
                while pid_alive(*pid) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Ok(())
            }
        }
    }
}

/// Alive and not a zombie.
fn pid_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .is_some_and(|rest| !rest.trim_start().starts_with('Z'))
    })
}

/// The pid of a live `weir --cluster CLUSTER dataplane --node NODE`
/// process named by the node's pid file, that answers on its socket.
fn running_dataplane(state: &StateDir, cluster: &str, node: &str) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(state.dataplane_pid(node))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let has = |pair: [&str; 2]| {
        args.windows(2)
            .any(|w| w[0] == pair[0].as_bytes() && w[1] == pair[1].as_bytes())
    };
    let ours = has(["--cluster", cluster])
        && has(["--node", node])
        && args.iter().any(|a| *a == b"dataplane");
    if !ours || !pid_alive(pid) {
        return None;
    }
    ipc::request::<NodePing>(
        &state.dataplane_sock(node),
        &Request::Ping,
        Duration::from_secs(1),
    )
    .ok()?;
    Some(pid)
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
            Request::Conntrack { .. } => Err(anyhow::anyhow!(
                "conntrack is served by each node's dataplane"
            )),
            Request::Cni(call) => Ok(crate::cni_server::handle(self, &call)),
            Request::Shutdown => to_value(Empty {}),
        };
        match r {
            Ok(v) => Reply::ok(v),
            Err(e) => Reply::err(format!("{e:#}")),
        }
    }

    fn start_servers(&mut self, pod: &weir_topo::RealizedPod) -> anyhow::Result<()> {
        let spec = ServerSpec {
            netns: pod.netns.clone(),
            object: format!("{}/{}", pod.namespace, pod.name),
            name: pod.name.clone(),
            ports: pod.ports.clone(),
            addrs: Vec::new(),
        };
        let id = pod_server::pod_id(&pod.namespace, &pod.name);
        let s = ServerProc::start_or_adopt(&self.state, &id, &spec)
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
            // Killed (`kill -9`) but not exited yet: its main thread is a
            // zombie while the workers still tear down (UMEM, sockets);
            // wait until it is gone, then start a new one. (Without this,
            // a start right after a kill said "running" and the process
            // then exited.)
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.try_wait()?.is_none() && !pid_alive(c.pid()) {
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "nodes/{node}: the killed dataplane (pid {}) does not exit",
                    c.pid()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            if c.try_wait()?.is_none() {
                return Ok(());
            }
        }
        // A supervisor started again (the last one was killed): the node's
        // dataplane it started may still run, forwarding. Adopt it instead of
        // starting a second one.
        if let Some(pid) = running_dataplane(&self.state, &self.opts.cluster, node) {
            log::info!("nodes/{node}: adopted the running dataplane (pid {pid})");
            self.dataplanes
                .insert(node.to_string(), DataplaneProc::Adopted(pid));
            return Ok(());
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
        self.dataplanes
            .insert(node.to_string(), DataplaneProc::Child(child));
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
        failed.extend(self.attach_failed.iter().cloned());
        let ready = ready && !self.attaching && self.attach_failed.is_empty();
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
        for (e, n) in nodes.iter_mut().zip(&self.cluster.nodes) {
            e.host_egress = crate::host_egress::status(&self.state, &n.name, &n.netns);
        }
        ClusterStatus {
            cluster: self.opts.cluster.clone(),
            generation: self.generation,
            synced: None,
            nodes,
            services: Vec::new(),
            uplink: None,
            pod_rx_cpus: Some(crate::pod_rx::describe(&self.cluster.pod_rx_cpus)),
            pod_rx_backlog_dropped: match self.cluster.pod_rx_cpus.as_slice() {
                [] => None,
                cpus => crate::pod_rx::backlog_dropped(cpus),
            },
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
        for svc in &m.cluster.services {
            let object = svc.object();
            if !next.namespaces.iter().any(|n| n.name == svc.info.namespace) {
                anyhow::bail!(
                    "{object}: metadata.namespace: namespace {:?} is not declared",
                    svc.info.namespace
                );
            }
            if m.cluster
                .services
                .iter()
                .filter(|s| s.object() == object)
                .count()
                > 1
            {
                anyhow::bail!("{object}: defined more than once");
            }
            let action = next.upsert_service(svc)?;
            changed.push(Change::new(object, action));
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
            let weir_node = self
                .cluster
                .node(&pod.node)
                .is_some_and(|n| n.dataplane == weir_topo::NodeDataplane::Weir);
            if weir_node {
                self.attach_topo_pod(pod)?;
            } else {
                // A kernel node has no weir: topo wires the pod itself.
                let realized = self.cluster.add_pod(pod, &opts)?.clone();
                self.start_servers(&realized)?;
            }
            changed.push(Change::new(
                format!("pods/{}/{}", pod.namespace, pod.name),
                "created",
            ));
        }
        let warnings = self.commit()?;
        // Only the warnings of the Services this apply touched.
        let warnings = warnings
            .into_iter()
            .filter(|w| {
                m.cluster
                    .services
                    .iter()
                    .any(|s| w.starts_with(&s.object()))
            })
            .collect();
        Ok(ChangeReply {
            changed,
            generation: self.generation,
            ignored: Some(m.ignored),
            warnings,
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
            warnings: Vec::new(),
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
        // A namespace goes once nothing lives in it (the API server's
        // namespace controller deletes its pods and policies first).
        for n in &m.cluster.namespaces {
            anyhow::ensure!(
                self.cluster.namespaces.iter().any(|x| x.name == n.name),
                "namespaces/{}: not found",
                n.name
            );
            let left: Vec<String> = self
                .cluster
                .pods
                .iter()
                .filter(|p| p.namespace == n.name)
                .map(|p| p.object())
                .chain(
                    self.policies
                        .iter()
                        .filter(|p| p.object.split('/').nth(1) == Some(n.name.as_str()))
                        .filter(|p| p.object.split('/').count() == 3)
                        .map(|p| p.object.clone()),
                )
                .collect();
            anyhow::ensure!(
                left.is_empty(),
                "namespaces/{}: still holds {}: delete them first",
                n.name,
                left.join(", ")
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
        for s in &m.cluster.services {
            if !self
                .cluster
                .services
                .iter()
                .any(|c| c.namespace == s.info.namespace && c.name == s.info.name)
            {
                anyhow::bail!("{}: not found", s.object());
            }
        }
        let mut deleted = Vec::new();
        for p in &m.cluster.pods {
            let pod = self.cluster.pod(&p.namespace, &p.name).cloned();
            if pod
                .as_ref()
                .is_some_and(|r| r.cni.is_some() && !crate::cni_server::is_topo_pod(r))
            {
                anyhow::bail!(
                    "pods/{}/{}: attached by a container runtime (weir-cni): its DEL removes it",
                    p.namespace,
                    p.name
                );
            }
        }
        for p in &m.cluster.pods {
            let pod = self.cluster.pod(&p.namespace, &p.name).cloned();
            self.servers.remove(&(p.namespace.clone(), p.name.clone()));
            if pod.as_ref().is_some_and(crate::cni_server::is_topo_pod) {
                self.detach_topo_pod(&p.namespace, &p.name)?;
            } else {
                self.cluster.remove_pod(&p.namespace, &p.name)?;
            }
            deleted.push(format!("pods/{}/{}", p.namespace, p.name));
        }
        for (_, s) in &m.policies {
            self.policies.retain(|p| p.object != s.object);
            deleted.push(s.object.clone());
        }
        for s in &m.cluster.services {
            self.cluster
                .services
                .retain(|c| !(c.namespace == s.info.namespace && c.name == s.info.name));
            deleted.push(s.object());
        }
        for n in &m.cluster.namespaces {
            self.cluster.namespaces.retain(|x| x.name != n.name);
            deleted.push(format!("namespaces/{}", n.name));
        }
        self.commit()?;
        Ok(DeleteReply {
            deleted,
            generation: self.generation,
            ignored: m.ignored,
        })
    }

    /// Recomputes Service endpoints from the pods, saves the cluster and
    /// publishes new snapshots; returns the endpoint warnings.
    fn commit(&mut self) -> anyhow::Result<Vec<String>> {
        let warnings = self.cluster.refresh_endpoints();
        self.cluster.save(&self.state.cluster_file())?;
        crate::state::write_atomic(
            &self.state.policies_file(),
            &serde_json::to_vec_pretty(&self.policies)?,
        )?;
        self.publish()?;
        Ok(warnings)
    }

    /// Compiles and publishes the snapshots (timed for the metrics).
    fn publish(&mut self) -> anyhow::Result<()> {
        let t = Instant::now();
        self.generation = crate::agent::publish(
            &self.state,
            &Manifests {
                cluster: &self.cluster,
                policies: &self.policies,
            },
        )?;
        self.metrics
            .publish_seconds
            .observe(t.elapsed().as_secs_f64());
        self.metrics
            .generation
            .store(self.generation, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    // ---- the local cluster's own container runtime ----

    /// Creates pod `spec`'s netns and attaches it through weir-cni, exactly
    /// as a runtime does (see [`Self::run_plugin`]); then starts its
    /// servers. On failure the netns is removed again (weir-cni undid its
    /// own steps).
    fn attach_topo_pod(&mut self, spec: &weir_topo::PodSpec) -> anyhow::Result<()> {
        let object = format!("pods/{}/{}", spec.namespace, spec.name);
        let netns = weir_topo::pod_netns(&self.opts.cluster, &spec.namespace, &spec.name);
        anyhow::ensure!(
            !weir_topo::netns::exists(&netns),
            "{object}: netns {netns} exists already"
        );
        weir_topo::netns::create(&netns).map_err(|e| anyhow::anyhow!("{object}: {e}"))?;
        let key = (spec.namespace.clone(), spec.name.clone());
        self.templates.insert(key.clone(), spec.clone());
        let r = self.run_plugin("ADD", spec, &netns);
        self.templates.remove(&key);
        let attached = r.and_then(|_| {
            self.cluster
                .pod(&spec.namespace, &spec.name)
                .filter(|p| crate::cni_server::is_topo_pod(p))
                .cloned()
                .ok_or_else(|| anyhow::anyhow!("weir-cni answered ADD but recorded no pod"))
        });
        let pod = match attached {
            Ok(p) => p,
            Err(e) => {
                let _ = weir_topo::netns::delete(&netns);
                return Err(e.context(object));
            }
        };
        self.start_servers(&pod)
    }

    /// Detaches a pod [`attach_topo_pod`](Self::attach_topo_pod) made
    /// (weir-cni DEL), then removes its netns.
    fn detach_topo_pod(&mut self, namespace: &str, name: &str) -> anyhow::Result<()> {
        let object = format!("pods/{namespace}/{name}");
        let pod = self
            .cluster
            .pod(namespace, name)
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("{object}: not found"))?;
        let spec = weir_topo::PodSpec {
            namespace: pod.namespace.clone(),
            name: pod.name.clone(),
            labels: pod.labels.clone(),
            node: pod.node.clone(),
            ports: pod.ports.clone(),
        };
        self.run_plugin("DEL", &spec, &pod.netns)
            .map_err(|e| e.context(object.clone()))?;
        weir_topo::netns::delete(&pod.netns).map_err(|e| anyhow::anyhow!("{object}: {e}"))
    }

    /// Runs the `weir-cni` next to this binary as a container runtime does:
    /// CNI_COMMAND, CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME (`eth0`),
    /// CNI_ARGS (K8S_POD_NAMESPACE, K8S_POD_NAME, K8S_POD_UID), CNI_PATH,
    /// and the node's plugin config (as `weir cni-config` gives it) on
    /// stdin. The plugin calls back into daemon.sock, which this thread
    /// owns: while it runs, this loop accepts on the socket and serves CNI
    /// calls, Ping and Status (other requests are told to retry), so the
    /// call cannot deadlock. Returns the plugin's result.
    fn run_plugin(
        &mut self,
        command: &str,
        pod: &weir_topo::PodSpec,
        netns: &str,
    ) -> anyhow::Result<serde_json::Value> {
        use std::io::{Read, Write};
        let exe = std::env::current_exe()?.with_file_name("weir-cni");
        anyhow::ensure!(
            exe.exists(),
            "{} not found: the local cluster attaches its pods through it (cargo build -p weir-cni)",
            exe.display()
        );
        let conf = json!({
            "cniVersion": "1.1.0",
            "name": format!("weir-{}", self.opts.cluster),
            "type": "weir-cni",
            "cluster": self.opts.cluster,
            "node": pod.node,
            "socket": self.state.daemon_sock().display().to_string(),
        });
        let uid = format!(
            "{:016x}",
            crate::cni_server::fnv1a64(
                format!("{}/{}/{}", self.opts.cluster, pod.namespace, pod.name).as_bytes()
            )
        );
        let mut cmd = Command::new(&exe);
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("CNI_COMMAND", command)
            .env(
                "CNI_CONTAINERID",
                crate::cni_server::topo_container_id(&pod.namespace, &pod.name),
            )
            .env(
                "CNI_NETNS",
                std::path::Path::new(weir_topo::netns::NETNS_RUN_DIR).join(netns),
            )
            .env("CNI_IFNAME", weir_topo::POD_IFNAME)
            .env(
                "CNI_ARGS",
                format!(
                    "K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_UID={uid}",
                    pod.namespace, pod.name
                ),
            )
            .env(
                "CNI_PATH",
                exe.parent().unwrap_or(std::path::Path::new("/")),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(d) = std::env::var_os("WEIR_STATE_DIR") {
            cmd.env("WEIR_STATE_DIR", d);
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("run {}", exe.display()))?;
        // The config is a few hundred bytes: it fits the pipe.
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(conf.to_string().as_bytes())?;
        }
        let mut stdout = child.stdout.take().expect("piped");
        let reader = std::thread::spawn(move || {
            let mut out = String::new();
            let _ = stdout.read_to_string(&mut out);
            out
        });
        let listener = self.listener.as_ref().map(|l| l.try_clone()).transpose()?;
        if let Some(l) = &listener {
            l.set_nonblocking(true)?;
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            match child.try_wait() {
                Ok(Some(st)) => break Ok(st),
                Ok(None) => {}
                Err(e) => break Err(anyhow::Error::from(e)),
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break Err(anyhow::anyhow!("weir-cni {command}: no answer in 60 s"));
            }
            match listener.as_ref().map(|l| l.accept()) {
                Some(Ok((conn, _))) => self.serve_nested(conn),
                _ => std::thread::sleep(Duration::from_millis(2)),
            }
        };
        // Always back to blocking: the main loop blocks in accept.
        if let Some(l) = &listener {
            l.set_nonblocking(false)?;
        }
        let status = status?;
        let out = reader.join().unwrap_or_default();
        let v: serde_json::Value = if out.trim().is_empty() {
            json!({})
        } else {
            serde_json::from_str(&out)
                .with_context(|| format!("weir-cni {command}: output {out:?}"))?
        };
        if !status.success() {
            anyhow::bail!(
                "weir-cni {command} failed (code {}): {}{}",
                v["code"],
                v["msg"].as_str().unwrap_or("?"),
                v["details"]
                    .as_str()
                    .filter(|d| !d.is_empty())
                    .map(|d| format!(": {d}"))
                    .unwrap_or_default()
            );
        }
        Ok(v)
    }

    /// One request that arrived while a plugin ran (anything but CNI,
    /// ping, status and shutdown is refused with [`BUSY`]).
    fn serve_nested(&mut self, conn: std::os::unix::net::UnixStream) {
        let _ = conn.set_nonblocking(false);
        let reply = match ipc::read_request::<Request>(&conn) {
            Ok(r @ (Request::Cni(_) | Request::Ping | Request::Status)) => self.handle(r),
            Ok(Request::Shutdown) => {
                self.shutdown_requested = true;
                Reply::with(&Empty {})
            }
            Ok(_) => Reply::err(BUSY.to_string()),
            Err(e) => Reply::err(format!("bad request: {e}")),
        };
        let _ = ipc::write_reply(&conn, &reply);
    }

    fn shutdown(&mut self) {
        for node in self.dataplanes.keys().cloned().collect::<Vec<_>>() {
            let _ = self.stop_dataplane(&node);
        }
        self.servers.clear();
        self.world_server = None;
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
        Daemon::commit(self).map(drop)
    }
    fn pod_template(&self, namespace: &str, name: &str) -> Option<weir_topo::PodSpec> {
        self.templates
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
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
