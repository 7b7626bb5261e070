//! weir's fast path.
//!
//! XDP on each managed pod interface redirects frames into AF_XDP sockets;
//! pinned workers take batches from those sockets and run every frame through
//! [`pass::process`], a plain function of (frame bytes, snapshot, worker
//! state) that returns a [`Verdict`]. The worker then transmits the frame on
//! the verdict's port (sharing one UMEM, so no copy) or drops it and counts
//! the [`DropReason`].
//!
//! Module map:
//! - [`drop_reason`]: every reason a frame can be dropped, defined once
//!   (in `weir-model`, re-exported).
//! - [`snapshot`]: the immutable tables the control side hands to workers.
//! - [`maglev`]: Maglev consistent hashing for Service backends.
//! - [`policy`]: compiled policy tables and the new-flow judge (in
//!   `weir-model`, re-exported: `weir policy explain` runs the same judge).
//! - [`l7`]: inline HTTP and DNS inspection (the engines are `weir-model`'s,
//!   [`l7::reply`] builds the frames a deny sends).
//! - [`fqdn`]: names learned from DNS answers, for `toFQDNs` rules.
//! - [`conntrack`]: the node's shared connection-tracking table.
//! - [`svc_nat`]: the node's Service NAT table (kept with conntrack).
//! - [`frag`]: the node's fragment table (later fragments follow their first).
//! - [`flow_key`]: the key of a flow (a leaf: conntrack, flows, encap and
//!   the pass all use it).
//! - [`flows`]: per-worker flow-log queues (new, dropped, revoked flows).
//! - [`wire`]: typed views over packet bytes (Ethernet, IPv4, IPv6, L4, ICMP).
//! - [`pass`]: the per-packet pass: `pass/mod.rs` runs the stages in order,
//!   one file per stage (parse, route, policy, icmp, l7, dns, rewrite, tunnel).
//! - [`encap`]: the overlay stages (VXLAN/Geneve encapsulation and decapsulation).
//! - [`checkpoint`]: conntrack and Service NAT kept across a dataplane restart.
//! - [`stats`]: per-worker counters and latency histograms.
//! - [`budget`]: how many UMEM frames a worker has and each socket's fill ring gets.
//! - [`xsk`]: UMEM, AF_XDP rings, the frame ledger and the [`xsk::HeldFrame`]
//!   token, [`prefetch`] (one prefetch instruction) and [`heap`] (glibc's
//!   `mallopt`/`malloc_trim`) and [`table_mem`] (the large tables' own
//!   2 MiB-aligned mappings, advised for huge pages): the only modules with
//!   `unsafe`; every other one forbids it.
//! - [`coalesce`]: the adaptive worker's sleep under thin load
//!   (`--coalesce-us`).
//! - [`worker`], [`runtime`]: pinned workers, and the dataplane object that
//!   owns them. Status types ([`runtime::DataplaneStatus`],
//!   [`stats::WorkerStatus`]) are `weir-model`'s, re-exported.
#![deny(unsafe_code)]

pub mod anchor;
pub mod budget;
pub mod checkpoint;
pub mod coalesce;
pub mod conntrack;
pub use weir_model::drop_reason;
pub mod encap;
pub mod flow_key;
pub mod flows;
pub mod fqdn;
pub mod frag;
pub mod heap;
pub mod housekeeping;
pub mod l7;
pub mod maglev;
pub mod pass;
pub mod prefetch;
pub use weir_model::policy;
pub mod runtime;
pub mod snapshot;
pub mod stats;
pub mod svc_nat;
pub mod table_mem;
pub mod wire;
pub mod wireguard;
pub mod worker;
pub mod xsk;

pub use drop_reason::DropReason;
pub use snapshot::{Endpoint, Port, PortId, Snapshot, SnapshotSpec};

/// What should happen to one frame. Stages return verdicts; they never act.
///
/// `Hold`, `Release` and `L7Deny` come from inline L7 inspection
/// (docs/l7.md): `slot` names the flow's inspector slot in the worker's
/// [`l7::InspectorPool`], and the worker keeps one queue of held frames per
/// slot. A caller that cannot hold frames must treat `Hold` as a drop (the
/// client retransmits), never as a transmit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Transmit the first `len` bytes of the (possibly rewritten) frame on `port`.
    Tx { port: PortId, len: usize },
    /// Drop the frame and count it under this reason.
    Drop(DropReason),
    /// Keep the frame (already rewritten: `len` bytes for `port`) in the
    /// hold queue of `slot`, until a `Release`, an `L7Deny`, or a flush.
    Hold { port: PortId, len: usize, slot: u32 },
    /// Transmit the frames held for `slot`, in arrival order, then this one
    /// (`len` bytes on `port`).
    Release { port: PortId, len: usize, slot: u32 },
    /// An HTTP request (or TLS hello, or a DNS query over TCP: `slot`
    /// `u32::MAX`, none held) was denied: drop the frames held for `slot`. The
    /// frame's buffer now holds the 403 (PSH|ACK|FIN) for the client:
    /// transmit its first `reply_len` bytes on `reply_port` (`reply_len` 0:
    /// none, drop the frame). Build the RST for the server with
    /// [`l7::reply::build_rst_frame`]`(.., &rst)` into a free frame and
    /// transmit it on `rst_port`.
    L7Deny {
        slot: u32,
        reply_port: PortId,
        reply_len: usize,
        rst_port: PortId,
        rst: l7::reply::DeniedFlow,
        /// What the denial counts under (`l7-denied` for HTTP,
        /// `tls-sni-denied` / `tls-malformed` for TLS server-name rules,
        /// whose reply to the client is a RST, not a 403).
        reason: DropReason,
    },
}
