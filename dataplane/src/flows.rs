//! The flow log: what the pass decided about flows (new, dropped by
//! policy or conntrack, revoked, related ICMP errors), as plain `Copy`
//! events in a bounded lock-free queue per worker. The worker pushes, the
//! control side drains (`Dataplane::drain_flows`). A full queue never
//! blocks the worker: the event is counted as lost.
#![forbid(unsafe_code)]

use crossbeam::queue::ArrayQueue;
use serde::Serialize;

use crate::flow_key::FlowKey;
use crate::policy::RuleId;
use crate::stats::Counter;
use crate::DropReason;

/// Events a worker's queue holds by default.
pub const DEFAULT_CAPACITY: usize = 4096;

/// What happened to a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FlowKind {
    /// A flow was admitted and its conntrack entry created.
    New,
    /// A packet was dropped (policy or conntrack); no entry was made.
    Drop,
    /// An established flow was judged again under a new policy and denied:
    /// its entry was removed and this packet dropped.
    Revoked,
    /// An ICMP error quoting a tracked flow (passed or dropped with it).
    Related,
}

/// One flow-log record. `key` is the packet's own tuple; the rules and
/// endpoints are those of the flow's original direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct FlowEvent {
    /// CLOCK_MONOTONIC, nanoseconds (the same clock as status'
    /// `monotonic_ns`).
    pub time_ns: u64,
    pub key: FlowKey,
    pub kind: FlowKind,
    /// Whether the packet passed.
    pub allowed: bool,
    pub reason: Option<DropReason>,
    pub egress_rule: RuleId,
    pub ingress_rule: RuleId,
    /// A would-drop (audit) decision let it pass.
    pub audit: bool,
    /// A TCP flow picked up mid-stream (no SYN seen).
    pub pickup: bool,
    /// Policy generation the verdict was made under.
    pub generation: u64,
    /// Endpoint indexes in the snapshot (local pods), if any.
    pub src_endpoint: Option<u32>,
    pub dst_endpoint: Option<u32>,
    /// An HTTP request denied inline (kind `Drop`, reason `l7-denied`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub l7: Option<L7Note>,
}

/// What a flow event says about a denied HTTP request: why, and (when a
/// complete head was judged) its method and the first bytes of its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct L7Note {
    pub reason: crate::l7::L7Reason,
    method: [u8; 16],
    method_len: u8,
    path: [u8; 48],
    path_len: u8,
}

impl L7Note {
    pub fn new(reason: crate::l7::L7Reason) -> Self {
        L7Note {
            reason,
            method: [0; 16],
            method_len: 0,
            path: [0; 48],
            path_len: 0,
        }
    }

    /// Records method and path (truncated to 16 and 48 bytes).
    pub fn with_request(mut self, method: &str, path: &str) -> Self {
        let m = method.len().min(self.method.len());
        self.method[..m].copy_from_slice(&method.as_bytes()[..m]);
        self.method_len = m as u8;
        let p = path.len().min(self.path.len());
        self.path[..p].copy_from_slice(&path.as_bytes()[..p]);
        self.path_len = p as u8;
        self
    }

    pub fn method(&self) -> &str {
        std::str::from_utf8(&self.method[..self.method_len as usize]).unwrap_or("")
    }

    /// The path as received (at most 48 bytes; the parser admits ASCII only).
    pub fn path(&self) -> &str {
        std::str::from_utf8(&self.path[..self.path_len as usize]).unwrap_or("")
    }
}

impl Serialize for L7Note {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("L7Note", 3)?;
        st.serialize_field("reason", self.reason.as_str())?;
        st.serialize_field("method", self.method())?;
        st.serialize_field("path", self.path())?;
        st.end()
    }
}

/// One worker's flow-log queue (single producer: the worker).
#[derive(Debug)]
pub struct FlowLog {
    queue: ArrayQueue<FlowEvent>,
    lost: Counter,
    pushed: Counter,
}

impl FlowLog {
    /// A queue of `capacity` events (at least 1), allocated now.
    pub fn new(capacity: usize) -> Self {
        FlowLog {
            queue: ArrayQueue::new(capacity.max(1)),
            lost: Counter::default(),
            pushed: Counter::default(),
        }
    }

    /// Queues an event, or counts it lost if the queue is full. Only the
    /// owning worker calls this (the counters have a single writer).
    #[inline]
    pub fn push(&self, ev: FlowEvent) {
        if self.queue.push(ev).is_err() {
            self.lost.add(1);
        } else {
            self.pushed.add(1);
        }
    }

    /// Moves every queued event to `out` (control side).
    pub fn drain(&self, out: &mut Vec<FlowEvent>) {
        out.reserve(self.queue.len());
        while let Some(e) = self.queue.pop() {
            out.push(e);
        }
    }

    /// Events dropped because the queue was full.
    pub fn lost(&self) -> u64 {
        self.lost.get()
    }

    /// Events queued since start.
    pub fn pushed(&self) -> u64 {
        self.pushed.get()
    }
}

impl Default for FlowLog {
    fn default() -> Self {
        FlowLog::new(DEFAULT_CAPACITY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ip_proto;

    fn ev(t: u64) -> FlowEvent {
        FlowEvent {
            time_ns: t,
            key: FlowKey {
                src: [10, 1, 0, 1].into(),
                dst: [10, 1, 0, 2].into(),
                proto: ip_proto::TCP,
                sport: 40000,
                dport: 80,
            },
            kind: FlowKind::Drop,
            allowed: false,
            reason: Some(DropReason::PolicyDenied),
            egress_rule: RuleId::DEFAULT_ALLOW,
            ingress_rule: RuleId::IMPLICIT_DENY,
            audit: false,
            pickup: false,
            generation: 3,
            l7: None,
            src_endpoint: Some(0),
            dst_endpoint: Some(1),
        }
    }

    #[test]
    fn full_queue_counts_lost_and_drain_empties() {
        let log = FlowLog::new(2);
        for t in 0..5 {
            log.push(ev(t));
        }
        assert_eq!((log.pushed(), log.lost()), (2, 3));
        let mut out = Vec::new();
        log.drain(&mut out);
        assert_eq!(out.iter().map(|e| e.time_ns).collect::<Vec<_>>(), [0, 1]);
        log.drain(&mut out);
        assert_eq!(out.len(), 2);
        let json = serde_json::to_string(&out[0]).unwrap();
        assert!(json.contains("\"kind\":\"drop\""), "{json}");
        assert!(json.contains("\"reason\":\"PolicyDenied\""), "{json}");
    }
}
