//! The flow log as the user sees it: the node dataplane turns the workers'
//! `FlowEvent`s into JSON records (pod names, rule texts, wall-clock time)
//! and keeps the latest ones; `weir flows` reads and prints them.

use std::collections::VecDeque;
use std::net::IpAddr;
use weir_dataplane::flows::{FlowEvent, FlowKind};
use weir_dataplane::policy::RuleId;
use weir_dataplane::Snapshot;
use weir_model::ipc::{DnsRecord, FlowRecord, L7Record};

/// Records kept per node for `weir flows`.
pub const KEEP: usize = 20_000;

/// The node dataplane's record buffer: the last [`KEEP`] records. It is
/// most of what the dataplane process allocates after start: its resident
/// memory grows while the buffer fills (~1 KiB a record with its strings,
/// ~20 MiB at [`KEEP`]; scripts/soak.sh) and stays there after.
pub struct FlowBuffer {
    next_seq: u64,
    records: VecDeque<FlowRecord>,
}

impl Default for FlowBuffer {
    fn default() -> Self {
        FlowBuffer {
            next_seq: 0,
            // Reserved now (not touched until used): grown by doubling, the
            // ring would end at 32 768 slots for its 20 000 records, and
            // each doubling copies every record at once.
            records: VecDeque::with_capacity(KEEP),
        }
    }
}

impl FlowBuffer {
    /// Records kept now (at most [`KEEP`]).
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether no record was kept yet.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

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
        RuleId::FAILSAFE => "failsafe port".into(),
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
            FlowKind::L7 => "l7",
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
        // An allowed DNS query is no HTTP request: `dns` only (a refused one
        // keeps its `l7` note too, as before).
        l7: ev.l7.filter(|n| !(n.dns && ev.allowed)).map(|n| L7Record {
            reason: if ev.allowed {
                String::new()
            } else {
                n.reason.as_str().to_string()
            },
            method: n.method().to_string(),
            path: n.path().to_string(),
            host: n.host().to_string(),
            status: (n.status != 0).then_some(n.status),
        }),
        dns: ev.l7.filter(|n| n.dns).map(|n| DnsRecord {
            name: n.dns_name().to_string(),
            rcode: n.rcode,
        }),
    }
}

/// Most entries one `conntrack` request returns.
pub const CONNTRACK_PAGE_MAX: u32 = 4096;

/// One page of the node's live conntrack entries (`conntrack` request):
/// from bucket `from`, about `max` entries (at most
/// [`CONNTRACK_PAGE_MAX`]), named as flow records are.
pub fn conntrack_page(
    dp: &weir_dataplane::runtime::Dataplane,
    snap: &Snapshot,
    names: &Names,
    node: &str,
    (from, max): (u64, u32),
) -> weir_model::ipc::ConntrackReply {
    let mut out = Vec::new();
    let max = max.clamp(1, CONNTRACK_PAGE_MAX) as usize;
    let next = dp.conntrack_page(usize::try_from(from).unwrap_or(usize::MAX), max, &mut out);
    let ep = |a: IpAddr| {
        match a {
            IpAddr::V4(a) => snap.endpoint_by_v4(a),
            IpAddr::V6(a) => snap.endpoint_by_v6(a),
        }
        .map(|(i, _)| i)
    };
    let entries = out
        .iter()
        .map(|e| weir_model::ipc::ConntrackRecord {
            node: node.to_string(),
            protocol: proto_name(e.key.proto),
            src: peer(snap, names, ep(e.key.src), e.key.src),
            src_addr: Some(e.key.src),
            sport: e.key.sport,
            dst: peer(snap, names, ep(e.key.dst), e.key.dst),
            dst_addr: Some(e.key.dst),
            dport: e.key.dport,
            // The table's own (kebab-case) names.
            state: serde_json::to_value(e.state)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            egress_rule: rule_text(snap, e.adm.egress_rule),
            ingress_rule: rule_text(snap, e.adm.ingress_rule),
            generation: e.adm.generation,
            expires_in_ms: e.expires_in_ns / 1_000_000,
            pickup: e.pickup,
        })
        .collect();
    weir_model::ipc::ConntrackReply {
        entries,
        next: next.map(|n| n as u64),
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
    match (&r.l7, &r.dns) {
        (_, Some(d)) => {
            s.push_str(&format!("  dns: {}", d.name));
            if let Some(rc) = d.rcode {
                s.push_str(&format!(" rcode={rc}"));
            }
        }
        (Some(l7), None) => {
            s.push_str(&format!("  http: {} {}", l7.method, l7.path));
            if !l7.host.is_empty() {
                s.push_str(&format!(" host={}", l7.host));
            }
            if let Some(st) = l7.status {
                s.push_str(&format!(" status={st}"));
            }
            if !l7.reason.is_empty() {
                s.push_str(&format!(" ({})", l7.reason));
            }
        }
        (None, None) => {}
    }
    if r.audit {
        s.push_str("  [AUDIT: would drop]");
    }
    s
}

/// The filters of `weir flows` and of the `/flows` stream (the same names:
/// `--from`/`from=`, `--to`, `--verdict`, `--reason`, `--port`, `--policy`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowFilter {
    /// `NS/POD` (that pod) or `NS/` (any pod of NS); also an address.
    pub from: Option<String>,
    pub to: Option<String>,
    /// `allowed`, `denied` or `audit`.
    pub verdict: Option<String>,
    /// A drop reason's slug (`policy-denied`, `l7-denied`, ...).
    pub reason: Option<String>,
    /// Destination port.
    pub port: Option<u16>,
    /// A policy name (or any text) the deciding egress or ingress rule names.
    pub policy: Option<String>,
    /// Stream only: one allowed flow in `sample` (drops always); 1 = all.
    pub sample: u64,
    /// Stream only: first the last `recent` matching records each node
    /// holds, then the new ones (0: only new ones).
    pub recent: usize,
}

/// Most records `recent=` may ask for (a node's buffer holds 20 000).
pub const MAX_RECENT: usize = 10_000;

impl Default for FlowFilter {
    fn default() -> Self {
        FlowFilter {
            from: None,
            to: None,
            verdict: None,
            reason: None,
            port: None,
            policy: None,
            sample: 1,
            recent: 0,
        }
    }
}

/// Why a filter was refused (one line).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FilterError {
    /// verdict: not allowed, denied or audit
    #[error("verdict={0:?}: not allowed, denied or audit")]
    Verdict(String),
    /// port: not a port number
    #[error("port={0:?}: not a port number (1-65535)")]
    Port(String),
    /// sample: not a positive number
    #[error("sample={0:?}: not a positive number (1 = every allowed flow)")]
    Sample(String),
    /// recent: not a number up to MAX_RECENT
    #[error("recent={0:?}: not a number from 0 to {MAX_RECENT}")]
    Recent(String),
    /// from/to: not NS/POD or NS/
    #[error("{0}={1:?}: not NS/POD, NS/ or an address")]
    Peer(&'static str, String),
    /// a filter name weir does not know
    #[error("{0:?}: unknown filter (from, to, verdict, reason, port, policy, sample, recent)")]
    Unknown(String),
}

fn peer_matches(want: &str, name: &str, addr: &IpAddr) -> bool {
    match want.strip_suffix('/') {
        Some(ns) => name.split_once('/').is_some_and(|(n, _)| n == ns),
        None => want == name || want.parse::<IpAddr>().is_ok_and(|a| a == *addr),
    }
}

fn check_peer(key: &'static str, v: &str) -> Result<String, FilterError> {
    let ok = v.parse::<IpAddr>().is_ok()
        || v.split_once('/')
            .is_some_and(|(ns, pod)| !ns.is_empty() && !pod.contains('/'));
    if ok {
        Ok(v.to_string())
    } else {
        Err(FilterError::Peer(key, v.to_string()))
    }
}

impl FlowFilter {
    /// Checks and builds a filter from the CLI's flags.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        from: Option<&str>,
        to: Option<&str>,
        verdict: Option<&str>,
        reason: Option<&str>,
        port: Option<u16>,
        policy: Option<&str>,
    ) -> Result<FlowFilter, FilterError> {
        let mut f = FlowFilter::default();
        for (k, v) in [
            ("from", from),
            ("to", to),
            ("verdict", verdict),
            ("reason", reason),
            ("policy", policy),
        ] {
            if let Some(v) = v {
                f.set(k, v)?;
            }
        }
        f.port = port;
        Ok(f)
    }

    fn set(&mut self, key: &str, v: &str) -> Result<(), FilterError> {
        match key {
            "from" => self.from = Some(check_peer("from", v)?),
            "to" => self.to = Some(check_peer("to", v)?),
            "verdict" => match v {
                "allowed" | "denied" | "audit" => self.verdict = Some(v.to_string()),
                _ => return Err(FilterError::Verdict(v.to_string())),
            },
            "reason" => self.reason = Some(v.to_string()),
            "policy" => self.policy = Some(v.to_string()),
            "port" => match v.parse::<u16>() {
                Ok(p) if p > 0 => self.port = Some(p),
                _ => return Err(FilterError::Port(v.to_string())),
            },
            "sample" => match v.parse::<u64>() {
                Ok(n) if n > 0 => self.sample = n,
                _ => return Err(FilterError::Sample(v.to_string())),
            },
            "recent" => match v.parse::<usize>() {
                Ok(n) if n <= MAX_RECENT => self.recent = n,
                _ => return Err(FilterError::Recent(v.to_string())),
            },
            other => return Err(FilterError::Unknown(other.to_string())),
        }
        Ok(())
    }

    /// From a URL query (`from=ns%2Fpod&verdict=denied`).
    pub fn from_query(q: &str) -> Result<FlowFilter, FilterError> {
        let mut f = FlowFilter::default();
        for kv in q.split('&').filter(|s| !s.is_empty()) {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            f.set(&percent_decode(k), &percent_decode(v))?;
        }
        Ok(f)
    }

    pub fn matches(&self, r: &FlowRecord) -> bool {
        self.from
            .as_deref()
            .is_none_or(|w| peer_matches(w, &r.src, &r.src_addr))
            && self
                .to
                .as_deref()
                .is_none_or(|w| peer_matches(w, &r.dst, &r.dst_addr))
            && self.verdict.as_deref().is_none_or(|v| v == r.verdict)
            && self
                .reason
                .as_deref()
                .is_none_or(|v| r.reason.as_deref() == Some(v))
            && self.port.is_none_or(|p| p == r.dport)
            && self
                .policy
                .as_deref()
                .is_none_or(|p| r.egress_rule.contains(p) || r.ingress_rule.contains(p))
    }
}

/// `%XX` and `+` of a URL query; bad escapes stay as they are.
pub(crate) fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (hex(b[i + 1]), hex(b[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A flow record with the fields a Hubble or Antrea user looks for
/// (namespace and pod of each side, the deciding policy), as the `/flows`
/// stream writes it.
#[derive(Debug, serde::Serialize)]
pub struct Enriched<'a> {
    #[serde(flatten)]
    pub record: &'a FlowRecord,
    pub source: Workload,
    pub destination: Workload,
    /// The rule that decided: the ingress rule of a flow the destination
    /// refused, else the egress rule.
    pub policy: String,
}

/// One side of a flow.
#[derive(Debug, Default, serde::Serialize)]
pub struct Workload {
    /// Empty when the side is no pod.
    pub namespace: String,
    pub pod: String,
    pub ip: String,
    /// The pod's labels, as the cluster state holds them now.
    pub labels: std::collections::BTreeMap<String, String>,
    /// Its namespace's labels, likewise.
    pub namespace_labels: std::collections::BTreeMap<String, String>,
}

/// Pod labels by `namespace/pod`, and namespace labels by `namespace` (a
/// key without `/`).
pub type PodLabels = std::collections::HashMap<String, std::collections::BTreeMap<String, String>>;

/// The labels of every pod and namespace of `cluster`.
pub fn pod_labels(cluster: &weir_topo::Cluster) -> PodLabels {
    cluster
        .pods
        .iter()
        .map(|p| (format!("{}/{}", p.namespace, p.name), p.labels.clone()))
        .chain(
            cluster
                .namespaces
                .iter()
                .map(|n| (n.name.clone(), n.labels.clone())),
        )
        .collect()
}

impl<'a> Enriched<'a> {
    pub fn of(r: &'a FlowRecord, labels: &PodLabels) -> Enriched<'a> {
        let side = |name: &str, addr: &IpAddr| {
            let (namespace, pod) = name
                .split_once('/')
                .map(|(n, p)| (n.to_string(), p.to_string()))
                .unwrap_or_default();
            Workload {
                pod,
                ip: addr.to_string(),
                labels: labels.get(name).cloned().unwrap_or_default(),
                namespace_labels: labels.get(&namespace).cloned().unwrap_or_default(),
                namespace,
            }
        };
        let deciding = if r.verdict != "allowed"
            && r.ingress_rule != "-"
            && (r.ingress_rule.contains("deny") || r.ingress_rule.contains("isolated"))
        {
            &r.ingress_rule
        } else if r.verdict != "allowed" {
            &r.egress_rule
        } else if r.ingress_rule != "-" {
            &r.ingress_rule
        } else {
            &r.egress_rule
        };
        Enriched {
            record: r,
            source: side(&r.src, &r.src_addr),
            destination: side(&r.dst, &r.dst_addr),
            policy: deciding.clone(),
        }
    }
}

#[cfg(test)]
mod filter_tests {
    use super::*;

    fn rec(src: &str, dst: &str, verdict: &str, reason: Option<&str>) -> FlowRecord {
        FlowRecord {
            seq: 1,
            node: "n1".into(),
            time_unix_ns: 0,
            kind: "new".into(),
            verdict: verdict.into(),
            audit: false,
            reason: reason.map(str::to_string),
            protocol: "TCP".into(),
            src: src.into(),
            src_addr: "10.0.0.1".parse().unwrap(),
            sport: 40000,
            dst: dst.into(),
            dst_addr: "10.0.0.2".parse().unwrap(),
            dport: 80,
            egress_rule: "default allow".into(),
            ingress_rule: "netpol x/deny-all ingress (deny)".into(),
            generation: 1,
            pickup: false,
            l7: None,
            dns: None,
        }
    }

    #[test]
    fn filters_by_peer_verdict_reason_port_policy() {
        let r = rec("x/a", "y/b", "denied", Some("policy-denied"));
        let f = FlowFilter::from_query("from=x%2F&to=y/b&verdict=denied&port=80&policy=deny-all")
            .unwrap();
        assert!(f.matches(&r));
        for q in [
            "from=y/",
            "to=y/c",
            "verdict=allowed",
            "reason=no-route",
            "port=81",
            "policy=other",
            "from=10.0.0.9",
        ] {
            assert!(!FlowFilter::from_query(q).unwrap().matches(&r), "{q}");
        }
        assert!(FlowFilter::from_query("from=10.0.0.1").unwrap().matches(&r));
    }

    #[test]
    fn bad_filters_are_one_clear_error() {
        assert_eq!(
            FlowFilter::from_query("verdict=maybe"),
            Err(FilterError::Verdict("maybe".into()))
        );
        assert!(FlowFilter::from_query("port=0").is_err());
        assert!(FlowFilter::from_query("sample=0").is_err());
        assert_eq!(FlowFilter::from_query("recent=50").unwrap().recent, 50);
        assert_eq!(FlowFilter::from_query("").unwrap().recent, 0);
        for bad in ["recent=x", "recent=-1", "recent=10001"] {
            assert!(
                matches!(FlowFilter::from_query(bad), Err(FilterError::Recent(_))),
                "{bad}"
            );
        }
        assert!(FlowFilter::from_query("from=pod").is_err());
        assert!(FlowFilter::from_query("colour=red").is_err());
        assert!(FlowFilter::from_query("%zz=1").is_err());
    }

    #[test]
    fn enriched_names_both_sides_and_the_deciding_rule() {
        let r = rec("x/a", "y/b", "denied", Some("policy-denied"));
        let mut labels = PodLabels::new();
        labels.insert(
            "y/b".into(),
            [("app".to_string(), "web".to_string())].into(),
        );
        labels.insert("y".into(), [("team".to_string(), "a".to_string())].into());
        let v = serde_json::to_value(Enriched::of(&r, &labels)).unwrap();
        assert_eq!(v["destination"]["labels"]["app"], "web");
        assert_eq!(v["destination"]["namespace_labels"]["team"], "a");
        assert_eq!(v["source"]["labels"], serde_json::json!({}));
        assert_eq!(v["source"]["namespace"], "x");
        assert_eq!(v["destination"]["pod"], "b");
        assert_eq!(v["policy"], "netpol x/deny-all ingress (deny)");
        assert_eq!(v["verdict"], "denied");
        assert_eq!(v["dport"], 80);
    }
}

#[cfg(test)]
mod buffer_tests {
    use super::*;

    fn record(n: u16) -> FlowRecord {
        FlowRecord {
            seq: 0,
            node: "node-1".into(),
            time_unix_ns: 0,
            kind: "new".into(),
            verdict: "allowed".into(),
            audit: false,
            reason: None,
            protocol: "TCP".into(),
            src: "x/a".into(),
            src_addr: [10, 0, 0, 1].into(),
            sport: n,
            dst: "x/b".into(),
            dst_addr: [10, 0, 0, 2].into(),
            dport: 80,
            egress_rule: "default allow".into(),
            ingress_rule: "default allow".into(),
            generation: 1,
            pickup: false,
            l7: None,
            dns: None,
        }
    }

    /// The buffer keeps the last KEEP records in the slots it reserved at
    /// start: its size is bounded, and it never grows by doubling.
    #[test]
    fn keeps_the_last_records_in_its_first_allocation() {
        let mut b = FlowBuffer::default();
        let cap = b.records.capacity();
        assert!((KEEP..KEEP + KEEP / 4).contains(&cap), "{cap}");
        for n in 0..(KEEP + 100) {
            b.push(record(n as u16));
        }
        assert_eq!(b.len(), KEEP);
        assert_eq!(b.records.capacity(), cap);
        let (tail, last) = b.since((KEEP + 98) as u64);
        assert_eq!(last, (KEEP + 100) as u64);
        assert_eq!(
            tail.iter().map(|r| r.seq).collect::<Vec<_>>(),
            [(KEEP + 99) as u64, (KEEP + 100) as u64]
        );
    }
}
