//! `weir agent --kubeconfig PATH`: the policy source that watches a real
//! Kubernetes API server (kube-rs watchers) and hands the complete set of
//! policy objects to the cluster's supervisor, which validates, compiles and
//! publishes them exactly as it does manifest files (one parser, one
//! compiler, whatever the source).
//!
//! Semantics:
//! - Kinds: NetworkPolicy (networking.k8s.io/v1), ClusterNetworkPolicy
//!   (policy.networking.k8s.io/v1alpha2), AdminNetworkPolicy and
//!   BaselineAdminNetworkPolicy (v1alpha1), WeirPolicy and WeirClusterPolicy
//!   (weir.dev/v1alpha1). A kind the API server does not serve (its CRD is not
//!   installed) is logged once and looked up again every few seconds, so
//!   installing the CRD later is picked up.
//! - Nothing is published until every served kind's initial list is
//!   complete (`InitDone`); a relist replaces the kind's whole set, so an
//!   object missing from it is deleted; an expired resourceVersion (410)
//!   makes the watcher relist (kube-runtime), with the previous tables in
//!   force meanwhile.
//! - Bursts of events coalesce: the agent publishes once the stream has
//!   been quiet for [`QUIET`] (or [`MAX_DELAY`] after the first change).
//! - A set the supervisor refuses (a policy weir cannot compile) is logged
//!   with the supervisor's one-line error, and the previous tables stay in
//!   force for everything: never fail open.
//! - The agent is a control-plane process: stopping it or losing the API
//!   server stops changes, never forwarding or enforcement (the dataplanes
//!   keep their last snapshot).

use crate::ipc::{self, Request};
use crate::state::StateDir;
use anyhow::Context;
use futures::StreamExt;
use kube::api::{Api, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::discovery::ApiResource;
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::Client;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// A change is published once no other change came for this long.
pub const QUIET: Duration = Duration::from_millis(50);
/// ... or this long after the first unpublished change, whichever is first.
pub const MAX_DELAY: Duration = Duration::from_millis(500);
/// How often kinds that the API server does not serve are looked up again.
pub(crate) const REDISCOVER: Duration = Duration::from_secs(5);

/// The policy kinds the agent watches: (group, version, kind).
pub const KINDS: &[(&str, &str, &str)] = &[
    ("networking.k8s.io", "v1", "NetworkPolicy"),
    (
        "policy.networking.k8s.io",
        "v1alpha2",
        "ClusterNetworkPolicy",
    ),
    ("policy.networking.k8s.io", "v1alpha1", "AdminNetworkPolicy"),
    (
        "policy.networking.k8s.io",
        "v1alpha1",
        "BaselineAdminNetworkPolicy",
    ),
    ("weir.dev", "v1alpha1", "WeirPolicy"),
    ("weir.dev", "v1alpha1", "WeirClusterPolicy"),
];

pub struct Options {
    pub kubeconfig: std::path::PathBuf,
    pub cluster: String,
}

/// Builds a client from a kubeconfig file; every failure is one line.
pub async fn client(path: &Path) -> anyhow::Result<Client> {
    let kc = Kubeconfig::read_from(path)
        .map_err(|e| anyhow::anyhow!("{}: not a kubeconfig: {}", path.display(), one_line(&e)))?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|e| anyhow::anyhow!("{}: {}", path.display(), one_line(&e)))?;
    Client::try_from(cfg).map_err(|e| anyhow::anyhow!("{}: {}", path.display(), one_line(&e)))
}

/// A library error (with its sources) as one line: the CLI's contract.
pub(crate) fn one_line(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = c.source();
    }
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// One watched kind's objects, keyed `namespace/name` (or `name`).
#[derive(Default)]
pub(crate) struct KindState {
    pub(crate) served: bool,
    pub(crate) resource: Option<ApiResource>,
    pub(crate) synced: bool,
    pub(crate) objects: BTreeMap<String, serde_json::Value>,
    /// Objects of a relist in progress (between `Init` and `InitDone`).
    pub(crate) relist: Option<BTreeMap<String, serde_json::Value>>,
}

pub(crate) enum Msg {
    Event(usize, Box<Event<DynamicObject>>),
    WatchError(usize, String),
    Served(usize, ApiResource),
}

pub fn run(opts: Options) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("tokio runtime")?;
    rt.block_on(run_async(opts))
}

/// The agent's loop, for a caller that has its own tokio runtime (`weir
/// up --api-server` runs it beside the kubelet in one process).
pub async fn run_async(opts: Options) -> anyhow::Result<()> {
    let state = StateDir::new(&opts.cluster);
    anyhow::ensure!(
        state.daemon_sock().exists(),
        "cluster {}: not running (weir up first)",
        opts.cluster
    );
    let client = client(&opts.kubeconfig).await?;
    // Fail fast, in one line, when the API server cannot be reached or
    // refuses us, instead of a watcher retrying forever.
    client
        .apiserver_version()
        .await
        .map_err(|e| anyhow::anyhow!("{}: {}", opts.kubeconfig.display(), one_line(&e)))?;

    let (tx, mut rx) = tokio::sync::mpsc::channel::<Msg>(1024);
    spawn_policy_watchers(
        &client,
        tx.clone(),
        Msg::Event,
        Msg::WatchError,
        Msg::Served,
    );
    drop(tx);

    let mut kinds: Vec<KindState> = KINDS.iter().map(|_| KindState::default()).collect();
    // Kinds that are not served yet do not hold back the first publish once
    // discovery has had its first answer for each.
    let mut discovered = vec![false; KINDS.len()];
    let first_discovery = tokio::time::Instant::now() + Duration::from_secs(2);
    let mut dirty_since: Option<tokio::time::Instant> = None;
    let mut last_published: Option<String> = None;
    let mut last_error: Option<String> = None;
    // A refused set is sent again after this (doubling to 30 s): a refusal
    // may depend on more than the set (a namespace the local cluster does
    // not have yet, a busy supervisor), so waiting for the set to change
    // could leave the previous policies in force for good.
    let mut retry_after: Option<tokio::time::Instant> = None;
    let mut backoff = Duration::from_secs(1);
    let mut errors_logged = vec![String::new(); KINDS.len()];
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "weir-agent".into(),
            instance: std::env::var("HOSTNAME").ok(),
        },
    );
    loop {
        let timeout = match (dirty_since, retry_after) {
            (Some(t), _) => QUIET.min(MAX_DELAY.saturating_sub(t.elapsed())),
            (None, Some(r)) => r.saturating_duration_since(tokio::time::Instant::now()),
            (None, None) => Duration::from_secs(3600),
        };
        let msg = match tokio::time::timeout(timeout, rx.recv()).await {
            Ok(Some(m)) => Some(m),
            Ok(None) => anyhow::bail!("every watcher ended"),
            Err(_) => None,
        };
        if let Some(msg) = msg {
            match msg {
                Msg::Served(i, ar) => {
                    kinds[i].served = true;
                    kinds[i].resource = Some(ar);
                    discovered[i] = true;
                }
                Msg::WatchError(i, e) => {
                    // The watcher retries with backoff; say it once per
                    // distinct error so a long outage is not a log flood.
                    if errors_logged[i] != e {
                        log::warn!("{}: watch: {e} (retrying)", KINDS[i].2);
                        errors_logged[i] = e;
                    }
                }
                Msg::Event(i, ev) => {
                    errors_logged[i].clear();
                    apply_event(&mut kinds[i], KINDS[i], *ev);
                }
            }
            if dirty_since.is_none() {
                dirty_since = Some(tokio::time::Instant::now());
            }
            continue;
        }
        // Quiet: publish if every served kind is synced.
        let waiting_discovery =
            tokio::time::Instant::now() < first_discovery && discovered.iter().any(|d| !d);
        if waiting_discovery || kinds.iter().any(|k| k.served && !k.synced) {
            dirty_since = Some(tokio::time::Instant::now());
            continue;
        }
        dirty_since = None;
        if retry_after.is_some_and(|r| tokio::time::Instant::now() < r) {
            continue;
        }
        retry_after = None;
        let text = manifest_text(&kinds);
        if last_published.as_deref() == Some(text.as_str()) {
            continue;
        }
        let sock = state.daemon_sock();
        let req = Request::SyncPolicies {
            manifests: text.clone(),
            source: format!("kube-apiserver ({})", opts.kubeconfig.display()),
        };
        match tokio::task::spawn_blocking(move || ipc::call(&sock, &req, Duration::from_secs(120)))
            .await?
        {
            Ok(v) => {
                let generation = v.get("generation").and_then(|g| g.as_u64()).unwrap_or(0);
                log::info!(
                    "published {} policies from the API server, generation {generation}",
                    kinds.iter().map(|k| k.objects.len()).sum::<usize>()
                );
                last_published = Some(text);
                last_error = None;
                backoff = Duration::from_secs(1);
            }
            Err(e) if e.to_string().contains(crate::daemon::BUSY) => {
                // The supervisor was attaching a pod: not a refusal of the
                // policies; send the set again shortly.
                log::info!("the supervisor is busy attaching a pod; policies sent again shortly");
                last_published = None;
                retry_after = Some(tokio::time::Instant::now() + Duration::from_millis(200));
            }
            Err(e) => {
                let e = e.to_string();
                if last_error.as_deref() != Some(e.as_str()) {
                    log::error!("refused, previous policies stay in force: {e}");
                    report_refusal(&client, &recorder, &kinds, &e).await;
                    last_error = Some(e);
                }
                // Sent again after the backoff (logged and reported once
                // per distinct error).
                last_published = None;
                retry_after = Some(tokio::time::Instant::now() + backoff);
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// Starts one watcher per policy kind of [`KINDS`] (discovery retried while
/// a kind is not served, logged once); each sends what it sees as a
/// message of the caller's type.
pub(crate) fn spawn_policy_watchers<M: Send + 'static>(
    client: &Client,
    tx: tokio::sync::mpsc::Sender<M>,
    event: impl Fn(usize, Box<Event<DynamicObject>>) -> M + Clone + Send + 'static,
    watch_error: impl Fn(usize, String) -> M + Clone + Send + 'static,
    served: impl Fn(usize, ApiResource) -> M + Clone + Send + 'static,
) {
    for (i, (group, version, kind)) in KINDS.iter().enumerate() {
        let gvk = GroupVersionKind::gvk(group, version, kind);
        let (client, tx) = (client.clone(), tx.clone());
        let (event, watch_error, served) = (event.clone(), watch_error.clone(), served.clone());
        tokio::spawn(async move {
            let mut logged = false;
            let ar = loop {
                match kube::discovery::pinned_kind(&client, &gvk).await {
                    Ok((ar, _)) => break ar,
                    Err(e) => {
                        if !logged {
                            log::warn!(
                                "{}/{} {}: not served by the API server ({e}); skipped until it is",
                                gvk.group,
                                gvk.version,
                                gvk.kind
                            );
                            logged = true;
                        }
                        tokio::time::sleep(REDISCOVER).await;
                    }
                }
            };
            if tx.send(served(i, ar.clone())).await.is_err() {
                return;
            }
            let api: Api<DynamicObject> = Api::all_with(client, &ar);
            let mut events = watcher::watcher(api, watcher::Config::default())
                .default_backoff()
                .boxed();
            while let Some(ev) = events.next().await {
                let msg = match ev {
                    Ok(ev) => event(i, Box::new(ev)),
                    Err(e) => watch_error(i, e.to_string()),
                };
                if tx.send(msg).await.is_err() {
                    return;
                }
            }
        });
    }
}

fn key(o: &DynamicObject) -> String {
    match &o.metadata.namespace {
        Some(ns) => format!("{ns}/{}", o.metadata.name.as_deref().unwrap_or("")),
        None => o.metadata.name.clone().unwrap_or_default(),
    }
}

pub(crate) fn apply_event(k: &mut KindState, gvk: (&str, &str, &str), ev: Event<DynamicObject>) {
    match ev {
        Event::Init => k.relist = Some(BTreeMap::new()),
        Event::InitApply(o) => {
            let key = key(&o);
            k.relist
                .get_or_insert_with(BTreeMap::new)
                .insert(key, clean(&o, gvk));
        }
        Event::InitDone => {
            // Objects missing from the relist are gone.
            let objects = k.relist.take().unwrap_or_default();
            if k.synced {
                log_relist(gvk.2, &k.objects, &objects);
            }
            k.objects = objects;
            k.synced = true;
        }
        Event::Apply(o) => {
            k.objects.insert(key(&o), clean(&o, gvk));
        }
        Event::Delete(o) => {
            k.objects.remove(&key(&o));
        }
    }
}

/// A relist after the first one (the watch ended and could not resume, e.g.
/// 410 Expired: its resourceVersion is older than the API server keeps):
/// one line, with what changed meanwhile.
pub(crate) fn log_relist<V: PartialEq>(
    kind: &str,
    before: &BTreeMap<String, V>,
    after: &BTreeMap<String, V>,
) {
    let added = after.keys().filter(|k| !before.contains_key(*k)).count();
    let removed = before.keys().filter(|k| !after.contains_key(*k)).count();
    let changed = after
        .iter()
        .filter(|(k, v)| before.get(*k).is_some_and(|b| b != *v))
        .count();
    log::info!(
        "{kind}: relisted ({} objects: {added} added, {removed} removed, {changed} changed while the watch was down)",
        after.len()
    );
}

/// The object as a user would have written it: apiVersion, kind, the
/// user-meaningful metadata (name, namespace, labels) and spec. What the
/// API server and clients add (uid, resourceVersion, managedFields,
/// kubectl's last-applied annotation, status) is not policy input.
fn clean(o: &DynamicObject, gvk: (&str, &str, &str)) -> serde_json::Value {
    let mut meta = serde_json::Map::new();
    if let Some(n) = &o.metadata.name {
        meta.insert("name".into(), n.clone().into());
    }
    if let Some(ns) = &o.metadata.namespace {
        meta.insert("namespace".into(), ns.clone().into());
    }
    if let Some(l) = &o.metadata.labels {
        meta.insert("labels".into(), serde_json::to_value(l).unwrap_or_default());
    }
    let mut v = serde_json::Map::new();
    // List items may omit apiVersion and kind: the watched kind says them.
    let (group, version, kind) = gvk;
    let api_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    v.insert("apiVersion".into(), api_version.into());
    v.insert("kind".into(), kind.into());
    v.insert("metadata".into(), meta.into());
    if let Some(spec) = o.data.get("spec") {
        v.insert("spec".into(), spec.clone());
    }
    v.into()
}

/// Every synced object, as one JSON stream (one object per line, in a
/// stable order so an unchanged set is recognised and not republished).
pub(crate) fn manifest_text(kinds: &[KindState]) -> String {
    let mut out = String::new();
    for k in kinds {
        for o in k.objects.values() {
            out.push_str(&o.to_string());
            out.push('\n');
        }
    }
    out
}

/// Tells the user where they look (kubectl describe / get -o yaml) that
/// weir refused an object: a Warning Event on it and, for kinds with a
/// status subresource, an `Accepted=False` condition with the reason. The
/// object is the one the supervisor's error names first
/// (`weirpolicies/NS/NAME: spec...: ...`). Failures to report are logged
/// only: reporting never changes what is enforced.
pub(crate) async fn report_refusal(
    client: &Client,
    recorder: &Recorder,
    kinds: &[KindState],
    err: &str,
) {
    let Some((object, _)) = err.split_once(": ") else {
        return;
    };
    let mut parts = object.split('/');
    let (Some(plural), Some(a)) = (parts.next(), parts.next()) else {
        return;
    };
    let (ns, name) = match parts.next() {
        Some(n) => (Some(a), n),
        None => (None, a),
    };
    let Some(ar) = kinds
        .iter()
        .filter_map(|k| k.resource.as_ref())
        .find(|r| r.plural == plural)
    else {
        return;
    };
    let api: Api<DynamicObject> = match ns {
        Some(ns) => Api::namespaced_with(client.clone(), ns, ar),
        None => Api::all_with(client.clone(), ar),
    };
    let obj = match api.get(name).await {
        Ok(o) => o,
        Err(e) => {
            log::warn!("{object}: cannot read it to report the refusal: {e}");
            return;
        }
    };
    let message: String = err.chars().take(1000).collect();
    let reference = k8s_openapi::api::core::v1::ObjectReference {
        api_version: Some(ar.api_version.clone()),
        kind: Some(ar.kind.clone()),
        name: obj.metadata.name.clone(),
        namespace: obj.metadata.namespace.clone(),
        uid: obj.metadata.uid.clone(),
        resource_version: obj.metadata.resource_version.clone(),
        ..Default::default()
    };
    let ev = KubeEvent {
        type_: EventType::Warning,
        reason: "PolicyRefused".into(),
        note: Some(message.clone()),
        action: "Compile".into(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&ev, &reference).await {
        log::warn!("{object}: cannot record an Event: {e}");
    }
    // NetworkPolicy has no status; the CRDs (weir's, ClusterNetworkPolicy,
    // AdminNetworkPolicy, BaselineAdminNetworkPolicy) do.
    if ar.kind == "NetworkPolicy" {
        return;
    }
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let status = serde_json::json!({"status": {"conditions": [{
        "type": "Accepted",
        "status": "False",
        "reason": "Invalid",
        "message": message,
        "lastTransitionTime": now,
        "observedGeneration": obj.metadata.generation.unwrap_or(0),
    }]}});
    if let Err(e) = api
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
    {
        log::warn!("{object}: cannot set its Accepted condition: {e}");
    }
}
