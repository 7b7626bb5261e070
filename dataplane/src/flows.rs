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
    /// An allowed L7 exchange on an inspected flow: an HTTP request head
    /// (method, path, host), the status line of the response to it, an
    /// allowed DNS query name, or the rcode of the answer to it. Sampled:
    /// see [`FlowLog::push_sampled`].
    L7,
}

/// Allowed L7 records a worker queues per second at most (the rest are
/// counted lost): a busy keep-alive flow cannot flood the log.
pub const L7_RECORDS_PER_SEC: u64 = 256;

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

/// What a flow event says about an HTTP request or a DNS query: for a
/// denied one why, and (when a complete head was judged) its method and the
/// first bytes of its path; for an allowed one (kind [`FlowKind::L7`]) its
/// method, path and host, or the status of the response to it; for DNS the
/// name (as `path`, method `DNS`) and the answer's rcode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct L7Note {
    pub reason: crate::l7::L7Reason,
    method: [u8; 16],
    method_len: u8,
    path: [u8; 48],
    path_len: u8,
    host: [u8; 32],
    host_len: u8,
    /// HTTP status of the response (0: a request record).
    pub status: u16,
    /// DNS rcode of the answer (`None`: a query record, or HTTP).
    pub rcode: Option<u8>,
    /// A DNS query (name in `path`), not an HTTP request.
    pub dns: bool,
}

impl L7Note {
    pub fn new(reason: crate::l7::L7Reason) -> Self {
        L7Note {
            reason,
            method: [0; 16],
            method_len: 0,
            path: [0; 48],
            path_len: 0,
            host: [0; 32],
            host_len: 0,
            status: 0,
            rcode: None,
            dns: false,
        }
    }

    /// An allowed HTTP request head (method, path and host truncated to
    /// 16, 48 and 32 bytes).
    pub fn http_request(method: &str, path: &str, host: Option<&str>) -> Self {
        let mut n = L7Note::new(crate::l7::L7Reason::Policy).with_request(method, path);
        let h = host.unwrap_or("");
        let hl = h.len().min(n.host.len());
        n.host[..hl].copy_from_slice(&h.as_bytes()[..hl]);
        n.host_len = hl as u8;
        n
    }

    /// A DNS query for `name` (truncated to 48 bytes).
    pub fn dns_query(reason: crate::l7::L7Reason, name: &str) -> Self {
        L7Note {
            dns: true,
            ..L7Note::new(reason).with_request("DNS", name)
        }
    }

    /// The host the request named (at most 32 bytes).
    pub fn host(&self) -> &str {
        std::str::from_utf8(&self.host[..self.host_len as usize]).unwrap_or("")
    }

    /// The DNS name of a DNS note, else "".
    pub fn dns_name(&self) -> &str {
        if self.dns {
            self.path()
        } else {
            ""
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
        let mut st = s.serialize_struct("L7Note", 7)?;
        st.serialize_field("reason", self.reason.as_str())?;
        st.serialize_field("method", self.method())?;
        st.serialize_field("path", self.path())?;
        st.serialize_field("host", self.host())?;
        st.serialize_field("status", &self.status)?;
        st.serialize_field("rcode", &self.rcode)?;
        st.serialize_field("dns", &self.dns)?;
        st.end()
    }
}

/// One worker's flow-log queue (single producer: the worker).
#[derive(Debug)]
pub struct FlowLog {
    queue: ArrayQueue<FlowEvent>,
    lost: Counter,
    pushed: Counter,
    /// [`Self::push_sampled`]'s window (whole seconds of `time_ns`) and the
    /// events admitted in it (single writer: the worker).
    sample_window: Counter,
    sample_used: Counter,
}

impl FlowLog {
    /// A queue of `capacity` events (at least 1), allocated now.
    pub fn new(capacity: usize) -> Self {
        FlowLog {
            queue: ArrayQueue::new(capacity.max(1)),
            lost: Counter::default(),
            pushed: Counter::default(),
            sample_window: Counter::default(),
            sample_used: Counter::default(),
        }
    }

    /// Queues an allowed L7 event, sampled: at most [`L7_RECORDS_PER_SEC`]
    /// per second of `ev.time_ns`, and only while the queue is less than half
    /// full (the other half stays for drops and new flows). The rest are
    /// counted lost. Only the owning worker calls this.
    #[inline]
    pub fn push_sampled(&self, ev: FlowEvent) {
        let window = ev.time_ns / 1_000_000_000;
        if self.sample_window.get() != window {
            self.sample_window.set(window);
            self.sample_used.set(0);
        }
        if self.sample_used.get() >= L7_RECORDS_PER_SEC
            || self.queue.len() * 2 >= self.queue.capacity()
        {
            self.lost.add(1);
            return;
        }
        self.sample_used.add(1);
        self.push(ev);
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

    #[test]
    fn sampled_pushes_keep_half_the_queue_and_a_rate() {
        let log = FlowLog::new(8);
        for t in 0..10 {
            log.push_sampled(ev(t));
        }
        // Half of the queue at most.
        assert_eq!((log.pushed(), log.lost()), (4, 6));
        let mut out = Vec::new();
        log.drain(&mut out);
        let big = FlowLog::new(4 * L7_RECORDS_PER_SEC as usize);
        for t in 0..2 * L7_RECORDS_PER_SEC {
            big.push_sampled(ev(t));
        }
        assert_eq!(big.pushed(), L7_RECORDS_PER_SEC);
        // A new second: a new budget.
        big.drain(&mut out);
        big.push_sampled(ev(1_000_000_000));
        assert_eq!(big.pushed(), L7_RECORDS_PER_SEC + 1);
    }

    #[test]
    fn l7_notes_carry_host_status_and_dns() {
        let mut n = L7Note::http_request("GET", "/api/v1", Some("api.example"));
        n.status = 200;
        assert_eq!(
            (n.method(), n.path(), n.host()),
            ("GET", "/api/v1", "api.example")
        );
        let json = serde_json::to_string(&n).unwrap();
        assert!(json.contains("\"status\":200"), "{json}");
        let d = L7Note::dns_query(crate::l7::L7Reason::DnsRefused, "example.com");
        assert_eq!((d.dns_name(), n.dns_name()), ("example.com", ""));
    }
}
