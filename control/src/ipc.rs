//! Line-delimited JSON over Unix sockets: one request line, one reply line.
//! Used between the CLI, the supervisor daemon and the node dataplanes.

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;
use weir_topo::fields::FieldValidation;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Request {
    /// Liveness and readiness.
    Ping,
    /// Dataplane status (node dataplane) or all nodes' status (daemon).
    Status,
    /// Daemon: create or change pods, namespaces and policies (manifest text).
    Apply {
        manifests: String,
        source: String,
        /// What to do with unknown fields (default strict).
        #[serde(default)]
        field_validation: FieldValidation,
    },
    /// Daemon: delete pods and policies (manifest text).
    Delete {
        manifests: String,
        source: String,
        #[serde(default)]
        field_validation: FieldValidation,
    },
    /// Daemon: replace every policy in force by the policies of `manifests`
    /// (the complete set from a policy source such as the Kubernetes
    /// agent), all or nothing, always strict.
    SyncPolicies { manifests: String, source: String },
    /// Dataplane: flow-log events after sequence number `since`.
    Flows { since: u64 },
    /// Daemon: stop one node's dataplane (its interfaces then fail closed).
    StopDataplane { node: String },
    /// Daemon: start one node's dataplane again.
    StartDataplane { node: String },
    /// Daemon: one weir-cni operation (ADD, DEL, CHECK, GC) for a node.
    Cni(crate::cni_server::CniCall),
    /// Stop (daemon: everything it runs).
    Shutdown,
    /// Dataplane: one page of the live conntrack entries, from bucket
    /// `from`, about `max` entries (read-only; the workers go on).
    Conntrack { from: u64, max: u32 },
}

/// The reply envelope and the typed payloads are plain data: [`weir_model::ipc`].
pub use weir_model::ipc::Reply;

#[derive(Debug, thiserror::Error)]
pub enum IpcError {
    /// cannot reach {0}: {1}
    #[error("cannot reach {0}: {1}")]
    Connect(String, std::io::Error),
    /// {0}: {1}
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    /// {0}: bad reply: {1}
    #[error("{0}: bad reply: {1}")]
    Decode(String, serde_json::Error),
    /// {0}
    #[error("{0}")]
    Remote(String),
}

/// Sends one request and waits up to `timeout` for the reply, read as `T`
/// (one of [`weir_model::ipc`]'s payloads).
pub fn request<T: DeserializeOwned>(
    sock: &Path,
    req: &Request,
    timeout: Duration,
) -> Result<T, IpcError> {
    let name = sock.display().to_string();
    let v = call(sock, req, timeout)?;
    serde_json::from_value(v).map_err(|e| IpcError::Decode(name, e))
}

/// Sends one request and waits up to `timeout` for the reply's payload, untyped.
pub fn call(sock: &Path, req: &Request, timeout: Duration) -> Result<serde_json::Value, IpcError> {
    let name = sock.display().to_string();
    let mut s = UnixStream::connect(sock).map_err(|e| IpcError::Connect(name.clone(), e))?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| IpcError::Io(name.clone(), e))?;
    let mut line = serde_json::to_string(req).expect("requests serialize");
    line.push('\n');
    s.write_all(line.as_bytes())
        .map_err(|e| IpcError::Io(name.clone(), e))?;
    let mut reply = String::new();
    BufReader::new(&s)
        .read_line(&mut reply)
        .map_err(|e| IpcError::Io(name.clone(), e))?;
    let reply: Reply = serde_json::from_str(&reply).map_err(|e| IpcError::Decode(name, e))?;
    if reply.ok {
        Ok(reply.data)
    } else {
        Err(IpcError::Remote(reply.error.unwrap_or_default()))
    }
}

/// Reads one request line from a connected stream.
pub fn read_request<T: DeserializeOwned>(s: &UnixStream) -> std::io::Result<T> {
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    serde_json::from_str(&line).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Writes one reply line.
pub fn write_reply(mut s: &UnixStream, reply: &Reply) -> std::io::Result<()> {
    let mut line = serde_json::to_string(reply).expect("replies serialize");
    line.push('\n');
    s.write_all(line.as_bytes())
}
