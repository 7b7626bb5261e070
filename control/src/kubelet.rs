//! weir as the local nodes' kubelet, for networking only (`weir up
//! --api-server` runs it as `weir kubelet`, a child process beside the
//! supervisor).
//!
//! - Registers the local cluster's Node objects: labels, the
//!   `weir.dev/dataplane` annotation, `spec.podCIDRs`, and a status with the
//!   `Ready` condition and the node's addresses.
//! - Watches Namespaces and Pods (kube-rs watchers) and reconciles the local
//!   cluster with them through the supervisor's own apply path
//!   (`Request::Apply` / `Request::Delete` on `daemon.sock`), exactly as
//!   `weir apply` / `weir delete` do: a Pod whose `spec.nodeName` is a local
//!   node is realised (netns, veth, servers on its containerPorts); a Pod
//!   without `spec.nodeName` is bound to the local weir node with the fewest
//!   pods (the `binding` subresource, as a scheduler does); label changes
//!   are applied; a Pod being deleted is torn down, then deleted for good
//!   (grace period 0, as a kubelet finishes a deletion); a realised pod the
//!   API server no longer has is removed. Namespaces (with their labels) are
//!   applied the same way.
//! - Writes each realised pod's status once the dataplanes run the
//!   generation that includes it: phase `Running`, `podIP`/`podIPs`,
//!   `hostIP`, conditions `PodScheduled`, `Initialized`, `ContainersReady`,
//!   `Ready`.
//! - Runs the policy agent ([`crate::kube_agent`]) in the same process, so
//!   policies come from the API server too.
//!
//! Reconciling is level-triggered: after every burst of watch events (and
//! every [`RESYNC`]) the whole desired state is compared with the local
//! cluster, so a missed event or a failed step is repaired on the next pass.

use crate::ipc::{self, Request};
use crate::state::StateDir;
use anyhow::Context;
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Client, Resource};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;
use weir_topo::manifest::NAMESPACE_NAME_LABEL;
use weir_topo::{Cluster, NodeDataplane};

/// A reconcile runs once the watches have been quiet this long.
const QUIET: Duration = Duration::from_millis(50);
/// ... and at least this often (repairs steps that failed).
const RESYNC: Duration = Duration::from_secs(5);
/// The field manager of what weir writes to the API server.
const MANAGER: &str = "weir-kubelet";
/// How often the nodes' Leases (kube-node-lease) and Ready conditions are
/// renewed, as a kubelet's `nodeLeaseRenewInterval`/`nodeStatusUpdateFrequency`.
const HEARTBEAT: Duration = Duration::from_secs(10);
/// A Lease's `leaseDurationSeconds` (a kubelet's default).
const LEASE_SECONDS: i32 = 40;
/// Set by `weir up --api-server` on the `weir kubelet` it starts: that
/// process is only a supervisor, which runs the real one as its child and
/// starts it again when it exits.
pub const SUPERVISE_ENV: &str = "WEIR_KUBELET_SUPERVISE";

pub struct Options {
    pub kubeconfig: PathBuf,
    pub cluster: String,
}

enum Msg {
    Pod(Box<Event<Pod>>),
    Namespace(Box<Event<Namespace>>),
    WatchError(&'static str, String),
}

/// One watched kind's objects, keyed `namespace/name` (or `name`).
struct Store<K> {
    synced: bool,
    objects: BTreeMap<String, K>,
    relist: Option<BTreeMap<String, K>>,
}

impl<K: kube::Resource + PartialEq> Store<K>
where
    K::DynamicType: Default,
{
    fn new() -> Self {
        Store {
            synced: false,
            objects: BTreeMap::new(),
            relist: None,
        }
    }

    fn key(o: &K) -> String {
        let m = o.meta();
        match &m.namespace {
            Some(ns) => format!("{ns}/{}", m.name.as_deref().unwrap_or("")),
            None => m.name.clone().unwrap_or_default(),
        }
    }

    fn apply(&mut self, ev: Event<K>) {
        match ev {
            Event::Init => self.relist = Some(BTreeMap::new()),
            Event::InitApply(o) => {
                self.relist
                    .get_or_insert_with(BTreeMap::new)
                    .insert(Self::key(&o), o);
            }
            Event::InitDone => {
                let objects = self.relist.take().unwrap_or_default();
                if self.synced {
                    crate::kube_agent::log_relist(
                        &K::kind(&K::DynamicType::default()),
                        &self.objects,
                        &objects,
                    );
                }
                self.objects = objects;
                self.synced = true;
            }
            Event::Apply(o) => {
                self.objects.insert(Self::key(&o), o);
            }
            Event::Delete(o) => {
                self.objects.remove(&Self::key(&o));
            }
        }
    }
}

pub fn run(opts: Options) -> anyhow::Result<()> {
    if std::env::var_os(SUPERVISE_ENV).is_some() {
        return supervise();
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("tokio runtime")?;
    rt.block_on(run_async(opts))
}

/// Runs `weir kubelet` (this very command line, without [`SUPERVISE_ENV`])
/// as a child, and starts it again when it exits: after 1 s, doubling up to
/// 30 s while it keeps exiting within 30 s of its start. The child shares
/// this process's log and process group; `weir down` stops both.
fn supervise() -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("weir's own path")?;
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let mut delay = Duration::from_secs(1);
    loop {
        let started = std::time::Instant::now();
        let mut child = std::process::Command::new(&exe)
            .args(&args)
            .env_remove(SUPERVISE_ENV)
            .spawn()
            .context("start weir kubelet")?;
        let pid = child.id();
        let status = child.wait().context("wait for weir kubelet")?;
        if started.elapsed() > Duration::from_secs(30) {
            delay = Duration::from_secs(1);
        }
        log::warn!("weir kubelet (pid {pid}) exited ({status}); starting it again in {delay:?}");
        std::thread::sleep(delay);
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

async fn run_async(opts: Options) -> anyhow::Result<()> {
    let state = StateDir::new(&opts.cluster);
    anyhow::ensure!(
        state.daemon_sock().exists(),
        "cluster {}: not running (weir up first)",
        opts.cluster
    );
    let client = crate::kube_agent::client(&opts.kubeconfig).await?;
    client
        .apiserver_version()
        .await
        .map_err(|e| anyhow::anyhow!("{}: {e}", opts.kubeconfig.display()))?;
    let cluster = load(&state)?;
    let registered = register_nodes(&client, &cluster).await?;
    tokio::spawn(heartbeat(client.clone(), cluster.clone(), registered));

    // The policy agent, in this process.
    let agent = tokio::spawn(crate::kube_agent::run_async(crate::kube_agent::Options {
        kubeconfig: opts.kubeconfig.clone(),
        cluster: opts.cluster.clone(),
    }));

    let (tx, mut rx) = tokio::sync::mpsc::channel::<Msg>(1024);
    {
        let tx = tx.clone();
        let api: Api<Pod> = Api::all(client.clone());
        tokio::spawn(async move {
            let mut s = watcher::watcher(api, watcher::Config::default())
                .default_backoff()
                .boxed();
            while let Some(ev) = s.next().await {
                let m = match ev {
                    Ok(ev) => Msg::Pod(Box::new(ev)),
                    Err(e) => Msg::WatchError("Pod", e.to_string()),
                };
                if tx.send(m).await.is_err() {
                    return;
                }
            }
        });
    }
    {
        let tx = tx.clone();
        let api: Api<Namespace> = Api::all(client.clone());
        tokio::spawn(async move {
            let mut s = watcher::watcher(api, watcher::Config::default())
                .default_backoff()
                .boxed();
            while let Some(ev) = s.next().await {
                let m = match ev {
                    Ok(ev) => Msg::Namespace(Box::new(ev)),
                    Err(e) => Msg::WatchError("Namespace", e.to_string()),
                };
                if tx.send(m).await.is_err() {
                    return;
                }
            }
        });
    }
    drop(tx);

    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "weir-kubelet".into(),
            instance: std::env::var("HOSTNAME").ok(),
        },
    );
    let mut k = Kubelet {
        state,
        client,
        recorder,
        pods: Store::new(),
        namespaces: Store::new(),
        errors: BTreeMap::new(),
    };
    let mut dirty = true;
    let mut last_error = String::new();
    loop {
        if agent.is_finished() {
            match agent.await {
                Ok(Ok(())) => anyhow::bail!("the policy agent stopped"),
                Ok(Err(e)) => return Err(e.context("the policy agent")),
                Err(e) => anyhow::bail!("the policy agent: {e}"),
            }
        }
        let timeout = if dirty { QUIET } else { RESYNC };
        match tokio::time::timeout(timeout, rx.recv()).await {
            Ok(Some(Msg::Pod(ev))) => {
                k.pods.apply(*ev);
                dirty = true;
                continue;
            }
            Ok(Some(Msg::Namespace(ev))) => {
                k.namespaces.apply(*ev);
                dirty = true;
                continue;
            }
            Ok(Some(Msg::WatchError(kind, e))) => {
                if e != last_error {
                    log::warn!("{kind}: watch: {e} (retrying)");
                    last_error = e;
                }
                continue;
            }
            Ok(None) => anyhow::bail!("every watcher ended"),
            Err(_) => {}
        }
        if !(k.pods.synced && k.namespaces.synced) {
            continue;
        }
        dirty = false;
        if let Err(e) = k.reconcile().await {
            k.report("reconcile", &format!("{e:#}"));
        }
    }
}

fn load(state: &StateDir) -> anyhow::Result<Cluster> {
    Cluster::load(&state.cluster_file())
        .map_err(|e| anyhow::anyhow!("{}: {e}", state.cluster_file().display()))
}

/// What a registered Node keeps between heartbeats: its uid (the owner of
/// its Lease) and when its `Ready` condition last changed.
struct Registered {
    uid: String,
    ready_since: String,
}

/// Creates or updates the Node objects of the local cluster (server-side
/// apply), then their status (`Ready`, the addresses) and their Leases.
async fn register_nodes(
    client: &Client,
    cluster: &Cluster,
) -> anyhow::Result<BTreeMap<String, Registered>> {
    let api: Api<Node> = Api::all(client.clone());
    let pp = PatchParams::apply(MANAGER).force();
    let mut registered = BTreeMap::new();
    for n in &cluster.nodes {
        // A Node already Ready (weir kubelet restarted) stays Ready since then.
        let ready_since = api
            .get_opt(&n.name)
            .await
            .ok()
            .flatten()
            .and_then(|node| node.status)
            .and_then(|s| s.conditions)
            .into_iter()
            .flatten()
            .find(|c| c.type_ == "Ready" && c.status == "True")
            .and_then(|c| c.last_transition_time)
            .map(|t| t.0.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
            .unwrap_or_else(now);
        let cidrs: Vec<String> = n.pod_cidrs.iter().map(|c| c.to_string()).collect();
        let mut annotations = BTreeMap::new();
        if n.dataplane == NodeDataplane::Kernel {
            annotations.insert("weir.dev/dataplane", "kernel");
        }
        let node = json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": n.name, "labels": n.labels, "annotations": annotations},
            "spec": {"podCIDR": cidrs.first(), "podCIDRs": cidrs},
        });
        let applied = api
            .patch(&n.name, &pp, &Patch::Apply(&node))
            .await
            .with_context(|| format!("nodes/{}: register", n.name))?;
        let r = Registered {
            uid: applied.metadata.uid.unwrap_or_default(),
            ready_since,
        };
        beat(client, n, &r).await?;
        registered.insert(n.name.clone(), r);
    }
    Ok(registered)
}

/// One heartbeat of a node, as a kubelet's: its Lease in `kube-node-lease`
/// renewed, and its status written again with `lastHeartbeatTime` now (the
/// whole status weir owns: an apply leaving a field out would remove it).
async fn beat(client: &Client, n: &weir_topo::RealizedNode, r: &Registered) -> anyhow::Result<()> {
    let pp = PatchParams::apply(MANAGER).force();
    let mut addresses = vec![json!({"type": "Hostname", "address": n.name})];
    if let Some(u) = &n.underlay {
        addresses.insert(
            0,
            json!({"type": "InternalIP", "address": u.ipv4.to_string()}),
        );
    }
    let status = json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": n.name},
        "status": {
            "conditions": [{
                "type": "Ready", "status": "True", "reason": "WeirReady",
                "message": "weir forwards this node's pod traffic",
                "lastHeartbeatTime": now(), "lastTransitionTime": r.ready_since,
            }],
            "addresses": addresses,
        },
    });
    let nodes: Api<Node> = Api::all(client.clone());
    nodes
        .patch_status(&n.name, &pp, &Patch::Apply(&status))
        .await
        .with_context(|| format!("nodes/{}: status", n.name))?;
    let lease = json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": n.name,
            "namespace": "kube-node-lease",
            "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": n.name, "uid": r.uid}],
        },
        "spec": {
            "holderIdentity": n.name,
            "leaseDurationSeconds": LEASE_SECONDS,
            "renewTime": k8s_openapi::jiff::Timestamp::now()
                .strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
                .to_string(),
        },
    });
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    leases
        .patch(&n.name, &pp, &Patch::Apply(&lease))
        .await
        .with_context(|| format!("leases/kube-node-lease/{}: renew", n.name))?;
    Ok(())
}

/// Every [`HEARTBEAT`], every local node's heartbeat ([`beat`]); a failure
/// is logged once per distinct error and tried again at the next beat.
async fn heartbeat(client: Client, cluster: Cluster, registered: BTreeMap<String, Registered>) {
    let mut last_error = String::new();
    loop {
        tokio::time::sleep(HEARTBEAT).await;
        for n in &cluster.nodes {
            let Some(r) = registered.get(&n.name) else {
                continue;
            };
            match beat(&client, n, r).await {
                Ok(()) => last_error.clear(),
                Err(e) => {
                    let e = format!("{e:#}");
                    if e != last_error {
                        log::warn!("heartbeat: {e} (retrying in {HEARTBEAT:?})");
                        last_error = e;
                    }
                }
            }
        }
    }
}

fn now() -> String {
    // RFC 3339 in seconds, as the API server stores times.
    let t = k8s_openapi::jiff::Timestamp::now();
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

struct Kubelet {
    state: StateDir,
    client: Client,
    recorder: Recorder,
    pods: Store<Pod>,
    namespaces: Store<Namespace>,
    /// The last error reported per object, so a failing step is logged once.
    errors: BTreeMap<String, String>,
}

/// What the supervisor must hold for a Pod: the manifest it understands
/// (name, namespace, labels, node, containers' ports).
fn pod_manifest(p: &Pod, node: &str) -> Value {
    let containers: Vec<Value> = p
        .spec
        .as_ref()
        .map(|s| s.containers.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|c| {
            let ports: Vec<Value> = c
                .ports
                .iter()
                .flatten()
                .map(|p| {
                    let mut v = json!({"containerPort": p.container_port});
                    if let Some(n) = &p.name {
                        v["name"] = n.clone().into();
                    }
                    if let Some(pr) = &p.protocol {
                        v["protocol"] = pr.clone().into();
                    }
                    v
                })
                .collect();
            json!({"name": c.name, "ports": ports})
        })
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": p.metadata.name,
            "namespace": p.metadata.namespace,
            "labels": p.metadata.labels.clone().unwrap_or_default(),
        },
        "spec": {"nodeName": node, "containers": containers},
    })
}

async fn daemon(state: &StateDir, req: Request) -> anyhow::Result<Value> {
    let sock = state.daemon_sock();
    Ok(
        tokio::task::spawn_blocking(move || ipc::call(&sock, &req, Duration::from_secs(120)))
            .await??,
    )
}

impl Kubelet {
    /// Logs a failed step once per object and distinct error.
    fn report(&mut self, object: &str, err: &str) {
        self.report_new(object, err);
    }

    /// [`report`](Self::report), and whether the error is new.
    fn report_new(&mut self, object: &str, err: &str) -> bool {
        if self.errors.get(object).map(String::as_str) == Some(err) {
            return false;
        }
        if err.starts_with(object) {
            log::error!("{err}");
        } else {
            log::error!("{object}: {err}");
        }
        self.errors.insert(object.to_string(), err.to_string());
        true
    }

    /// A pod weir cannot realise: a Warning Event on it (what `kubectl
    /// describe pod` shows), with the reason a kubelet gives when the
    /// network of a pod sandbox cannot be set up.
    async fn pod_event(&self, p: &Pod, message: &str) {
        let reference = p.object_ref(&());
        let ev = KubeEvent {
            type_: EventType::Warning,
            reason: "FailedCreatePodSandBox".into(),
            note: Some(format!("weir: {message}").chars().take(1000).collect()),
            action: "SetUpNetwork".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &reference).await {
            log::warn!("cannot record an Event: {e}");
        }
    }

    fn ok(&mut self, object: &str) {
        self.errors.remove(object);
    }

    async fn apply(&self, objects: Vec<Value>, source: &str) -> anyhow::Result<()> {
        let text: String = objects.iter().map(|o| format!("{o}\n")).collect();
        daemon(
            &self.state,
            Request::Apply {
                manifests: text,
                source: source.to_string(),
                field_validation: weir_topo::fields::FieldValidation::Strict,
            },
        )
        .await?;
        Ok(())
    }

    async fn delete_local(&self, ns: &str, name: &str, node: &str) -> anyhow::Result<()> {
        let doc = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns}, "spec": {"nodeName": node}});
        daemon(
            &self.state,
            Request::Delete {
                manifests: doc.to_string(),
                source: "kube-apiserver".into(),
                field_validation: weir_topo::fields::FieldValidation::Strict,
            },
        )
        .await?;
        Ok(())
    }

    /// Waits (bounded) until every node's dataplane runs the supervisor's
    /// latest generation: then a pod is Ready for real.
    async fn wait_ready(&self) {
        for _ in 0..500 {
            if let Ok(v) = daemon(&self.state, Request::Ping).await {
                if v["ready"].as_bool() == Some(true) {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn reconcile(&mut self) -> anyhow::Result<()> {
        let local = load(&self.state)?;
        let weir_nodes: Vec<String> = crate::agent::weir_nodes(&local)
            .map(|n| n.name.clone())
            .collect();
        let local_nodes: BTreeSet<&str> = local.nodes.iter().map(|n| n.name.as_str()).collect();

        // Namespaces and their labels.
        let mut ns_docs = Vec::new();
        for ns in self.namespaces.objects.values() {
            let name = ns.metadata.name.clone().unwrap_or_default();
            let mut labels = ns.metadata.labels.clone().unwrap_or_default();
            labels.insert(NAMESPACE_NAME_LABEL.to_string(), name.clone());
            let same = local
                .namespaces
                .iter()
                .any(|n| n.name == name && n.labels == labels);
            if !same {
                ns_docs.push(json!({"apiVersion": "v1", "kind": "Namespace",
                    "metadata": {"name": name, "labels": labels}}));
            }
        }
        if !ns_docs.is_empty() {
            match self.apply(ns_docs, "kube-apiserver namespaces").await {
                Ok(()) => self.ok("namespaces"),
                Err(e) => self.report("namespaces", &format!("{e:#}")),
            }
        }

        // Pods: bind, realise, relabel, tear down.
        let mut per_node: BTreeMap<String, usize> =
            weir_nodes.iter().map(|n| (n.clone(), 0)).collect();
        for p in &local.pods {
            if let Some(c) = per_node.get_mut(&p.node) {
                *c += 1;
            }
        }
        let pods: Vec<Pod> = self.pods.objects.values().cloned().collect();
        let mut wanted: BTreeSet<(String, String)> = BTreeSet::new();
        let mut status_due = Vec::new();
        for p in &pods {
            let ns = p.metadata.namespace.clone().unwrap_or_default();
            let name = p.metadata.name.clone().unwrap_or_default();
            let object = format!("pods/{ns}/{name}");
            let node = p
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .unwrap_or_default();
            let realized = local.pod(&ns, &name);
            if p.metadata.deletion_timestamp.is_some() {
                if node.is_empty() || local_nodes.contains(node.as_str()) {
                    let r = self.finish_deletion(p, &ns, &name, &node, realized.is_some());
                    match r.await {
                        Ok(()) => self.ok(&object),
                        Err(e) => self.report(&object, &format!("{e:#}")),
                    }
                }
                continue;
            }
            if node.is_empty() {
                let Some(target) = per_node
                    .iter()
                    .min_by_key(|(_, c)| **c)
                    .map(|(n, _)| n.clone())
                else {
                    self.report(&object, "no local weir node to bind it to");
                    continue;
                };
                match self.bind(&ns, &name, &target).await {
                    Ok(()) => {
                        *per_node.entry(target.clone()).or_default() += 1;
                        log::info!("{object}: bound to nodes/{target}");
                        self.ok(&object);
                    }
                    Err(e) => self.report(&object, &format!("bind: {e:#}")),
                }
                continue;
            }
            if !local_nodes.contains(node.as_str()) {
                continue;
            }
            wanted.insert((ns.clone(), name.clone()));
            let labels = p.metadata.labels.clone().unwrap_or_default();
            match realized {
                Some(r) if r.labels == labels => {}
                // Attached by an outside runtime (not weir's own pods, which
                // also go through weir-cni): not ours to relabel.
                Some(r) if r.cni.is_some() && !crate::cni_server::is_topo_pod(r) => continue,
                _ => {
                    let created = realized.is_none();
                    match self.apply(vec![pod_manifest(p, &node)], &object).await {
                        Ok(()) => {
                            log::info!(
                                "{object}: {}",
                                if created { "created" } else { "labels updated" }
                            );
                            self.ok(&object);
                        }
                        Err(e) => {
                            let e = format!("{e:#}");
                            if self.report_new(&object, &e) {
                                self.pod_event(p, &e).await;
                            }
                            continue;
                        }
                    }
                }
            }
            status_due.push(p.clone());
        }

        // Realised pods the API server does not have (deleted while we were
        // not watching): remove them.
        for r in &local.pods {
            let outside = r.cni.is_some() && !crate::cni_server::is_topo_pod(r);
            if outside || wanted.contains(&(r.namespace.clone(), r.name.clone())) {
                continue;
            }
            let object = r.object();
            let still_there = pods.iter().any(|p| {
                p.metadata.namespace.as_deref() == Some(&r.namespace)
                    && p.metadata.name.as_deref() == Some(&r.name)
            });
            if still_there {
                continue; // being deleted: handled above
            }
            match self.delete_local(&r.namespace, &r.name, &r.node).await {
                Ok(()) => {
                    log::info!("{object}: removed (not in the API server)");
                    self.ok(&object);
                }
                Err(e) => self.report(&object, &format!("{e:#}")),
            }
        }

        // Namespaces the API server no longer has (deleted with kubectl: its
        // namespace controller deleted their pods and policies first).
        let local = load(&self.state)?;
        for n in &local.namespaces {
            if self.namespaces.objects.contains_key(&n.name) {
                continue;
            }
            let object = format!("namespaces/{}", n.name);
            let doc =
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n.name}});
            let r = daemon(
                &self.state,
                Request::Delete {
                    manifests: doc.to_string(),
                    source: "kube-apiserver".into(),
                    field_validation: weir_topo::fields::FieldValidation::Strict,
                },
            )
            .await;
            match r {
                Ok(_) => {
                    log::info!("{object}: removed (not in the API server)");
                    self.ok(&object);
                }
                Err(e) => self.report(&object, &format!("{e:#}")),
            }
        }

        // Status of realised pods.
        let mut local = load(&self.state)?;
        status_due.retain(|p| !status_current(p, &local));
        if !status_due.is_empty() {
            self.wait_ready().await;
            local = load(&self.state)?;
        }
        for p in &status_due {
            let ns = p.metadata.namespace.clone().unwrap_or_default();
            let name = p.metadata.name.clone().unwrap_or_default();
            let object = format!("pods/{ns}/{name}");
            let Some(r) = local.pod(&ns, &name) else {
                continue;
            };
            match self.write_status(p, r, &local).await {
                Ok(()) => self.ok(&format!("{object} status")),
                Err(e) => self.report(&format!("{object} status"), &format!("{e:#}")),
            }
        }
        Ok(())
    }

    async fn bind(&self, ns: &str, name: &str, node: &str) -> anyhow::Result<()> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let binding = json!({
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": name, "namespace": ns},
            "target": {"apiVersion": "v1", "kind": "Node", "name": node},
        });
        let _: Value = api
            .create_subresource("binding", name, &PostParams::default(), &binding)
            .await?;
        Ok(())
    }

    /// A pod being deleted: tear it down here, then delete it for good
    /// (grace period 0, only this very object: its uid).
    async fn finish_deletion(
        &self,
        p: &Pod,
        ns: &str,
        name: &str,
        node: &str,
        realized: bool,
    ) -> anyhow::Result<()> {
        if realized {
            self.delete_local(ns, name, node).await?;
            log::info!("pods/{ns}/{name}: removed");
        }
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: p.metadata.uid.clone(),
                resource_version: None,
            }),
            ..Default::default()
        };
        match api.delete(name, &dp).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn write_status(
        &self,
        p: &Pod,
        r: &weir_topo::RealizedPod,
        local: &Cluster,
    ) -> anyhow::Result<()> {
        let ns = r.namespace.as_str();
        let name = r.name.as_str();
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let ips: Vec<String> = r
            .ipv4
            .map(|a| a.to_string())
            .into_iter()
            .chain(r.ipv6.map(|a| a.to_string()))
            .collect();
        let host_ip = local
            .node(&r.node)
            .and_then(|n| n.underlay.as_ref())
            .map(|u| u.ipv4.to_string());
        let now = now();
        let start = p
            .status
            .as_ref()
            .and_then(|s| s.start_time.as_ref())
            .map(|t| t.0.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
            .unwrap_or_else(|| now.clone());
        let conditions: Vec<Value> = [
            "PodReadyToStartContainers",
            "Initialized",
            "ContainersReady",
            "Ready",
            "PodScheduled",
        ]
        .iter()
        .map(|t| json!({"type": t, "status": "True", "lastTransitionTime": now}))
        .collect();
        let containers: Vec<Value> = p
            .spec
            .as_ref()
            .map(|s| s.containers.as_slice())
            .unwrap_or_default()
            .iter()
            .map(|c| {
                json!({
                    "name": c.name,
                    "image": c.image.clone().unwrap_or_default(),
                    "imageID": "",
                    "ready": true,
                    "started": true,
                    "restartCount": 0,
                    "state": {"running": {"startedAt": start}},
                })
            })
            .collect();
        let mut status = json!({
            "phase": "Running",
            "podIP": ips.first(),
            "podIPs": ips.iter().map(|ip| json!({"ip": ip})).collect::<Vec<_>>(),
            "startTime": start,
            "conditions": conditions,
            "containerStatuses": containers,
        });
        if let Some(h) = host_ip {
            status["hostIP"] = h.clone().into();
            status["hostIPs"] = json!([{"ip": h}]);
        }
        let patch = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns}, "status": status});
        api.patch_status(
            name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
        log::info!("pods/{ns}/{name}: Running, {}", ips.join(", "));
        Ok(())
    }
}

/// Whether the pod's status in the API server already says what weir would
/// write: Running, Ready, with the realised pod's first address.
fn status_current(p: &Pod, local: &Cluster) -> bool {
    let Some(s) = &p.status else { return false };
    let (Some(ns), Some(name)) = (&p.metadata.namespace, &p.metadata.name) else {
        return false;
    };
    let Some(r) = local.pod(ns, name) else {
        return false;
    };
    let ip = r
        .ipv4
        .map(|a| a.to_string())
        .or_else(|| r.ipv6.map(|a| a.to_string()));
    let ready = s
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    s.phase.as_deref() == Some("Running") && s.pod_ip == ip && ready
}
