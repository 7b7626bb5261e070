//! WireGuard on a node agent (`weir agent --node N --encrypt wireguard`,
//! docs/encryption.md): the node's key pair, its public key published on
//! its Node as the annotation `weir.dev/wireguard-public-key` (as Calico's
//! `projectcalico.org/WireguardPublicKey`), and the peers taken from the
//! other Nodes' annotations into `<state>/wireguard/peers.json`, which the
//! node's dataplane follows live (`node_dataplane::WgTimers`).
//!
//! The private key is `<state>/wireguard/<node>/wireguard.key` (mode 0600,
//! made on first start, kept across restarts). `weir wireguard rotate`
//! replaces it; the agent notices (the file is checked every 250 ms),
//! publishes the new public key, and the dataplane switches to it.

use crate::state::StateDir;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use weir_dataplane::wireguard;

/// The file the dataplane reads its peers from (node agent path).
pub const PEERS_FILE: &str = "peers.json";

/// One peer node as the agent saw it on the API server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    pub node: String,
    pub ipv4: Ipv4Addr,
    /// The Node's annotation, as written (checked by the dataplane).
    pub public_key: Option<String>,
}

/// The directory of the node's WireGuard state.
pub fn dir(state: &StateDir) -> PathBuf {
    state.root.join("wireguard")
}

/// The peers file of a state directory.
pub fn peers_file(state: &StateDir) -> PathBuf {
    dir(state).join(PEERS_FILE)
}

/// Reads a peers file.
pub fn read_peers(path: &Path) -> anyhow::Result<Vec<Peer>> {
    let text = std::fs::read(path)?;
    Ok(serde_json::from_slice(&text)?)
}

/// `weir wireguard rotate --node N`: a new private key for the node (the
/// agent publishes its public key, the dataplane switches to it).
pub fn rotate(state: &StateDir, node: &str) -> anyhow::Result<String> {
    let key = wireguard::rotate_private_key(&dir(state).join(node))?;
    Ok(wireguard::encode_key(&wireguard::public_key(&key)))
}

/// The agent's WireGuard state.
pub struct NodeWg {
    node: String,
    key_dir: PathBuf,
    peers_path: PathBuf,
    /// Our public key (text form), as last loaded.
    public: String,
    /// What the last patch of our Node wrote (none yet: `None`).
    published: Option<String>,
    /// The peers last written.
    peers: Option<Vec<Peer>>,
    /// The last problem reported per node (one warning and one Event per
    /// problem).
    reported: BTreeMap<String, String>,
}

impl NodeWg {
    /// Loads (or makes, mode 0600) the node's key pair.
    pub fn new(state: &StateDir, node: &str) -> anyhow::Result<Self> {
        let key_dir = dir(state).join(node);
        let key = wireguard::load_or_create_private_key(&key_dir)?;
        let public = wireguard::encode_key(&wireguard::public_key(&key));
        log::info!("wireguard: node {node} public key {public}");
        Ok(NodeWg {
            node: node.to_string(),
            key_dir,
            peers_path: peers_file(state),
            public,
            published: None,
            peers: None,
            reported: BTreeMap::new(),
        })
    }

    /// The private key file.
    pub fn key_file(&self) -> PathBuf {
        self.key_dir.join(wireguard::KEY_FILE_NAME)
    }

    /// Reloads the key (rotated by `weir wireguard rotate`?), publishes the
    /// public key on our Node when it differs from the annotation, and
    /// writes the peers the dataplane follows. A Node with a missing or
    /// malformed key: one warning and one Warning Event naming it; the
    /// dataplane drops its traffic (`wireguard-no-peer`).
    pub async fn sync(
        &mut self,
        client: &kube::Client,
        recorder: &Recorder,
        nodes: &[std::sync::Arc<Node>],
    ) {
        match wireguard::load_or_create_private_key(&self.key_dir) {
            Ok(k) => {
                let public = wireguard::encode_key(&wireguard::public_key(&k));
                if public != self.public {
                    log::info!(
                        "wireguard: node {} key rotated: public key {public}",
                        self.node
                    );
                    self.public = public;
                }
            }
            Err(e) => log::warn!("wireguard: {e}; keeping the key in use"),
        }
        let annotation = |n: &Node| {
            n.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(wireguard::ANNOTATION).cloned())
        };
        let own = nodes
            .iter()
            .map(|n| n.as_ref())
            .find(|n| n.metadata.name.as_deref() == Some(self.node.as_str()));
        let on_node = own.and_then(annotation);
        if own.is_some()
            && (on_node.as_deref() != Some(self.public.as_str())
                || self.published.as_deref() != Some(self.public.as_str()))
        {
            let patch = serde_json::json!({
                "metadata": {"annotations": {wireguard::ANNOTATION: self.public}}
            });
            match Api::<Node>::all(client.clone())
                .patch(&self.node, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    log::info!(
                        "wireguard: nodes/{}: annotation {} published",
                        self.node,
                        wireguard::ANNOTATION
                    );
                    self.published = Some(self.public.clone());
                }
                Err(e) => log::warn!(
                    "wireguard: nodes/{}: cannot publish the public key: {}",
                    self.node,
                    crate::kube_agent::one_line(&e)
                ),
            }
        }
        let mut peers = Vec::new();
        for n in nodes.iter().map(|n| n.as_ref()) {
            let Ok(spec) = crate::kube_inputs::node_spec(n) else {
                continue;
            };
            let Some(ipv4) = spec.internal_ip.filter(|_| spec.name != self.node) else {
                continue;
            };
            let key = annotation(n);
            let problem = match key.as_deref().map(wireguard::decode_key) {
                Some(Ok(_)) => None,
                Some(Err(e)) => Some(format!("annotation {}: {e}", wireguard::ANNOTATION)),
                None => Some(format!("no annotation {}", wireguard::ANNOTATION)),
            };
            match problem {
                Some(p) if self.reported.get(&spec.name) != Some(&p) => {
                    let msg = format!(
                        "wireguard: nodes/{}: {p}: its pods' traffic is dropped (wireguard-no-peer), never sent in clear",
                        spec.name
                    );
                    log::warn!("{msg}");
                    report(recorder, n, &msg).await;
                    self.reported.insert(spec.name.clone(), p);
                }
                Some(_) => {}
                None => {
                    self.reported.remove(&spec.name);
                }
            }
            peers.push(Peer {
                node: spec.name,
                ipv4,
                public_key: key,
            });
        }
        peers.sort_by(|a, b| a.node.cmp(&b.node));
        if self.peers.as_ref() != Some(&peers) || !self.peers_path.exists() {
            let text = serde_json::to_vec_pretty(&peers).unwrap_or_default();
            match crate::state::write_atomic(&self.peers_path, &text) {
                Ok(()) => self.peers = Some(peers),
                Err(e) => log::warn!("wireguard: {}: {e}", self.peers_path.display()),
            }
        }
    }
}

/// Sends `msg()` on `tx` whenever `key_file` changes (checked every
/// 250 ms): a rotated key is published at the next compile rather than at
/// the agent's next idle pass.
pub fn watch_key<M: Send + 'static>(
    key_file: PathBuf,
    tx: tokio::sync::mpsc::Sender<M>,
    msg: impl Fn() -> M + Send + 'static,
) {
    tokio::spawn(async move {
        let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        let mut last = mtime(&key_file);
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            let now = mtime(&key_file);
            if now != last {
                last = now;
                if tx.send(msg()).await.is_err() {
                    return;
                }
            }
        }
    });
}

/// A Warning Event `WeirWireguardKey` on a Node; failures are logged only.
async fn report(recorder: &Recorder, n: &Node, msg: &str) {
    let reference = k8s_openapi::api::core::v1::ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Node".into()),
        name: n.metadata.name.clone(),
        uid: n.metadata.uid.clone(),
        resource_version: n.metadata.resource_version.clone(),
        ..Default::default()
    };
    let ev = Event {
        type_: EventType::Warning,
        reason: "WeirWireguardKey".into(),
        note: Some(msg.chars().take(1000).collect()),
        action: "Encrypt".into(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&ev, &reference).await {
        log::warn!("{msg}: cannot record an Event: {e}");
    }
}
