//! The flow log as the user sees it: the node dataplane turns the workers'
//! `FlowEvent`s into JSON records (pod names, rule texts, wall-clock time)
//! and keeps the latest ones; `weir flows` reads and prints them.

use std::collections::VecDeque;
use std::net::IpAddr;
use weir_dataplane::flows::{FlowEvent, FlowKind};
use weir_dataplane::policy::RuleId;
use weir_dataplane::Snapshot;
use weir_model::ipc::{FlowRecord, L7Record};

/// Records kept per node for `weir flows`.
pub const KEEP: usize = 20_000;

/// The node dataplane's record buffer.
#[derive(Default)]
pub struct FlowBuffer {
    next_seq: u64,
    records: VecDeque<FlowRecord>,
}

impl FlowBuffer {
    pub fn push(&mut self, mut record: FlowRecord) {
        self.next_seq += 1;
        record.seq = self.next_seq;
        if self.records.len() == KEEP {
            self.records.pop_front();
        }
        self.records.push_back(record);
    }

    /// Records with a sequence number above `since`, and the last number.
    pub fn since(&self, since: u64) -> (Vec<FlowRecord>, u64) {
        let out = self
            .records
            .iter()
            .filter(|r| r.seq > since)
            .cloned()
            .collect();
        (out, self.next_seq)
    }
}

fn proto_name(p: u8) -> String {
    match p {
        1 => "ICMP".into(),
        6 => "TCP".into(),
        17 => "UDP".into(),
        58 => "ICMPv6".into(),
        132 => "SCTP".into(),
        n => n.to_string(),
    }
}

fn rule_text(snap: &Snapshot, id: RuleId) -> String {
    match id {
        RuleId::DEFAULT_ALLOW => "default allow".into(),
        RuleId::IMPLICIT_DENY => "implicit deny (isolated)".into(),
        RuleId::NOT_APPLICABLE => "-".into(),
        RuleId::HOST => "node traffic".into(),
        id => match snap.policy().rule(id) {
            Some(r) => format!("{r} ({})", r.action),
            None => format!("rule {}", id.0),
        },
    }
}

/// Pod names by address, for every pod of the cluster (remote ones too).
pub type Names = std::collections::HashMap<IpAddr, String>;

/// The names of every pod of `cluster` by its addresses.
pub fn names(cluster: &weir_topo::Cluster) -> Names {
    let mut out = Names::new();
    for p in &cluster.pods {
        let name = format!("{}/{}", p.namespace, p.name);
        if let Some(a) = p.ipv4 {
            out.insert(a.into(), name.clone());
        }
        if let Some(a) = p.ipv6 {
            out.insert(a.into(), name);
        }
    }
    out
}

fn peer(snap: &Snapshot, names: &Names, ep: Option<u32>, addr: IpAddr) -> String {
    match ep.and_then(|i| snap.spec.endpoints.get(i as usize)) {
        Some(e) => e.name.clone(),
        None => names
            .get(&addr)
            .cloned()
            .unwrap_or_else(|| addr.to_string()),
    }
}

/// One event as a JSON record; `wall_offset_ns` converts monotonic to Unix time.
pub fn render(
    ev: &FlowEvent,
    snap: &Snapshot,
    names: &Names,
    node: &str,
    wall_offset_ns: i128,
) -> FlowRecord {
    let verdict = if ev.audit {
        "audit"
    } else if ev.allowed {
        "allowed"
    } else {
        "denied"
    };
    // Rules and endpoints are those of the flow's original direction.
    let (src_ep, dst_ep) = (ev.src_endpoint, ev.dst_endpoint);
    FlowRecord {
        seq: 0,
        node: node.to_string(),
        time_unix_ns: (ev.time_ns as i128 + wall_offset_ns).max(0) as u64,
        kind: match ev.kind {
            FlowKind::New => "new",
            FlowKind::Drop => "drop",
            FlowKind::Revoked => "revoked",
            FlowKind::Related => "related",
        }
        .to_string(),
        verdict: verdict.to_string(),
        audit: ev.audit,
        reason: ev.reason.map(|r| r.slug().to_string()),
        protocol: proto_name(ev.key.proto),
        src: peer(snap, names, src_ep, ev.key.src),
        src_addr: ev.key.src,
        sport: ev.key.sport,
        dst: peer(snap, names, dst_ep, ev.key.dst),
        dst_addr: ev.key.dst,
        dport: ev.key.dport,
        egress_rule: rule_text(snap, ev.egress_rule),
        ingress_rule: rule_text(snap, ev.ingress_rule),
        generation: ev.generation,
        pickup: ev.pickup,
        l7: ev.l7.map(|n| L7Record {
            reason: n.reason.as_str().to_string(),
            method: n.method().to_string(),
            path: n.path().to_string(),
        }),
    }
}

/// One line per record for the terminal.
pub fn line(r: &FlowRecord) -> String {
    let ns = r.time_unix_ns;
    let day = (ns / 1_000_000) % 86_400_000;
    let (h, m, sec, ms) = (
        day / 3_600_000,
        day / 60_000 % 60,
        day / 1000 % 60,
        day % 1000,
    );
    let mut s = format!(
        "{h:02}:{m:02}:{sec:02}.{ms:03} {:<7} {:<7} {:<8} {:<6} {}:{} -> {}:{}",
        r.node,
        r.kind,
        r.verdict.to_uppercase(),
        r.protocol,
        r.src,
        r.sport,
        r.dst,
        r.dport,
    );
    if let Some(reason) = &r.reason {
        s.push_str(&format!("  reason={reason}"));
    }
    s.push_str(&format!(
        "  egress: {}  ingress: {}",
        r.egress_rule, r.ingress_rule
    ));
    if let Some(l7) = &r.l7 {
        s.push_str(&format!(
            "  http: {} {} ({})",
            l7.method, l7.path, l7.reason
        ));
    }
    if r.audit {
        s.push_str("  [AUDIT: would drop]");
    }
    s
}
