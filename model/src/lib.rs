//! weir-model: the plain data that crosses crate and process boundaries,
//! and nothing that does I/O.
//!
//! Who uses it: the policy compiler (`weir-policy`) writes [`policy`]
//! tables from [`cluster`] inputs; the dataplane (`weir-dataplane`)
//! evaluates the same tables per flow, counts [`drop_reason`]s and inspects
//! L7 with [`l7`]; control and topo read [`manifest`]s.
//!
//! Module map:
//! - [`cluster`]: namespaces, pods, node addresses ([`cluster::ClusterView`]).
//! - [`manifest`]: Kubernetes Node/Namespace/Pod manifests parsed and
//!   checked into a [`manifest::ClusterSpec`]; [`fields`]: field validation
//!   (`--field-validation`); [`names`]: Kubernetes name rules.
//! - [`policy`]: compiled policy ([`policy::PolicySpec`], its lookup form
//!   [`policy::CompiledPolicy`]) and THE new-flow judge, shared by the
//!   workers and `weir policy explain` so they cannot disagree.
//! - [`l7`]: HTTP and DNS rule sets and the pure parsers and stream
//!   inspector that apply them (the packets they answer with are built by
//!   the dataplane).
//! - [`service`]: Services and their endpoints, from any source.
//! - [`drop_reason`]: every reason a frame is dropped, defined once.
//! - [`status`]: what the dataplane reports (`weir status`).
//! - [`ipc`]: the reply envelope and typed payloads between the CLI, the
//!   daemon and the node dataplanes (flow records, readiness, status).
//!
//! Dependency direction: control → policy → model, dataplane → model,
//! topo → model. Nothing here depends on another weir crate.
#![forbid(unsafe_code)]

pub mod cluster;
pub mod drop_reason;
pub mod fields;
pub mod ipc;
pub mod l7;
pub mod manifest;
pub mod names;
pub mod policy;
pub mod service;
pub mod service_manifest;
pub mod status;

pub use drop_reason::DropReason;
pub use manifest::{ContainerPort, Protocol};
