//! The `weir` command's library: the local cluster's state directory, the
//! agent that compiles cluster state into dataplane snapshots, the
//! supervisor daemon, the per-node dataplane process, and the read-side
//! commands (get, status, probe).
#![forbid(unsafe_code)]

pub mod agent;
pub mod apiserver;
pub mod cni_server;
pub mod cores;
pub mod crds;
pub mod daemon;
pub mod demo;
pub mod flows;
pub mod get;
pub mod host_egress;
pub mod ipc;
pub mod kube_agent;
pub mod kube_inputs;
pub mod kubelet;
pub mod manifests;
pub mod metrics;
pub mod node_agent;
pub mod node_dataplane;
pub mod node_wireguard;
pub mod pod_rx;
pub mod pod_server;
pub mod policy_cmd;
pub mod probe;
pub mod source;
pub mod state;
pub mod status;
pub mod web;
