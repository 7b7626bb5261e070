//! Compiled network policy: the plain-data tables the agent's compiler
//! (`weir-policy`) writes, their lookup form, and THE evaluation function,
//! [`CompiledPolicy::judge`], used by the workers for every new flow and by
//! `weir policy explain` (the same code, so an explanation cannot disagree
//! with the datapath).
//!
//! Shape (Cilium's mapstate, resolved ahead of time):
//! - every address maps to a *peer class*: pod addresses exactly (a hash
//!   map), any other address by longest prefix over the CIDRs that policies
//!   mention (one hash map per prefix length, so at most 33/129 probes
//!   whatever the rule count), else the "world" class. A class carries an
//!   [`Identity`] (derived from labels; pods with the same labels share it)
//!   plus what else policies can see of the peer (its CIDR region, its named
//!   ports), so a class is judged the same everywhere.
//! - every local endpoint has, per direction, a table (or none: no policy
//!   selects it, default allow) giving for each class a *cell*: the verdict
//!   for each (protocol, port), with precedence (Admin → namespace →
//!   Baseline → default) already resolved by the compiler. A cell holds an
//!   exact map of ports (small ranges are expanded) and a short sorted list
//!   of large ranges.
//!
//! A new flow costs: two class lookups, two table indexings, two port
//! lookups. Nothing depends on the number of rules. [`CompiledPolicy::judge`]
//! does not allocate.
#![forbid(unsafe_code)]

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::IpAddr;

/// Numeric identity of a set of labels (pod labels + namespace labels +
/// namespace name). Reserved values below [`IDENTITY_FIRST_POD`].
pub type Identity = u32;
/// No identity known (never the result of a lookup; reserved).
pub const IDENTITY_UNKNOWN: Identity = 0;
/// Any address outside the cluster's pods and nodes.
pub const IDENTITY_WORLD: Identity = 1;
/// A node (host) address. Traffic between a pod and a node is always allowed
/// (Kubernetes NetworkPolicy: the node can always reach its pods; kubelet
/// probes depend on it).
pub const IDENTITY_HOST: Identity = 2;
/// First identity handed to a label set.
pub const IDENTITY_FIRST_POD: Identity = 256;

/// Names learned from DNS answers, by address (the dataplane's FQDN
/// table): what [`CompiledPolicy::judge_learned`] consults for `toFQDNs`
/// rules.
pub trait LearnedNames {
    /// Whether any name learned for `addr`, unexpired at `now_ns`,
    /// satisfies `pred`. Must not allocate.
    fn any_name(&self, addr: IpAddr, now_ns: u64, pred: impl FnMut(&str) -> bool) -> bool;
}

impl<T: LearnedNames + ?Sized> LearnedNames for std::sync::Arc<T> {
    fn any_name(&self, addr: IpAddr, now_ns: u64, pred: impl FnMut(&str) -> bool) -> bool {
        (**self).any_name(addr, now_ns, pred)
    }
}

/// Index of a rule in [`PolicySpec::rules`], or one of the reserved values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RuleId(pub u32);

impl RuleId {
    /// No policy decided: Kubernetes' default, allow.
    pub const DEFAULT_ALLOW: RuleId = RuleId(u32::MAX);
    /// The endpoint is isolated in this direction by a NetworkPolicy or
    /// WeirPolicy and nothing allowed the traffic.
    pub const IMPLICIT_DENY: RuleId = RuleId(u32::MAX - 1);
    /// This side is not on this node (or not a pod): not judged here.
    pub const NOT_APPLICABLE: RuleId = RuleId(u32::MAX - 2);
    /// The peer is a node: always allowed.
    pub const HOST: RuleId = RuleId(u32::MAX - 3);
    /// The node's own traffic on a failsafe port ([`FailsafePorts`]): no
    /// host policy can close it.
    pub const FAILSAFE: RuleId = RuleId(u32::MAX - 4);

    /// Whether this is one of the reserved values (not a rule index).
    pub fn is_reserved(self) -> bool {
        self.0 >= u32::MAX - 4
    }
}

/// Final action of one direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Action {
    Allow,
    Deny,
}

/// The verdict of one direction (egress of the source or ingress of the
/// destination) and what decided it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Decision {
    pub action: Action,
    /// The deciding rule, or a reserved [`RuleId`].
    pub rule: RuleId,
    /// `action` is Deny but the deciding rule (or isolation) comes from an
    /// audit policy, and nothing enforced denies: the flow would be dropped
    /// if the policy were enforced; it passes.
    pub audit: bool,
    /// A `Log` rule matched on the way to the decision.
    pub log: bool,
    /// An allow whose deciding rule carries HTTP rules: index into
    /// [`PolicySpec::http`]. Every request of the admitted TCP connection
    /// must then match that set, else it is denied inline (docs/l7.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub l7: Option<u32>,
    /// An egress allow whose deciding rule carries DNS rules: index into
    /// [`PolicySpec::dns`]. Every DNS query on the admitted flow must match
    /// that set, else weir answers REFUSED (docs/l7.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<u32>,
}

impl Decision {
    pub const DEFAULT_ALLOW: Decision = Decision::allow(RuleId::DEFAULT_ALLOW);
    pub const NOT_APPLICABLE: Decision = Decision::allow(RuleId::NOT_APPLICABLE);
    pub const HOST: Decision = Decision::allow(RuleId::HOST);
    pub const FAILSAFE: Decision = Decision::allow(RuleId::FAILSAFE);

    pub const fn allow(rule: RuleId) -> Decision {
        Decision {
            action: Action::Allow,
            rule,
            audit: false,
            log: false,
            l7: None,
            dns: None,
        }
    }

    pub const fn deny(rule: RuleId) -> Decision {
        Decision {
            action: Action::Deny,
            rule,
            audit: false,
            log: false,
            l7: None,
            dns: None,
        }
    }

    /// Whether traffic passes this direction (allowed, or denied in audit mode).
    pub fn passes(&self) -> bool {
        self.action == Action::Allow || self.audit
    }
}

/// The verdict for a new flow: both directions must pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Judgement {
    pub allowed: bool,
    pub egress: Decision,
    pub ingress: Decision,
}

/// One side of a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer {
    /// Index in `SnapshotSpec::endpoints`, if the peer is a pod on this node.
    pub endpoint: Option<u32>,
    pub addr: IpAddr,
}

/// Precedence tier of a rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Tier {
    /// ClusterNetworkPolicy tier Admin, AdminNetworkPolicy, WeirClusterPolicy.
    Admin,
    /// NetworkPolicy and WeirPolicy.
    Namespace,
    /// ClusterNetworkPolicy tier Baseline, BaselineAdminNetworkPolicy.
    Baseline,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

/// What flows, status and explain say about a rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleInfo {
    pub tier: Tier,
    /// Resource (plural, lower case): `networkpolicies`, `weirpolicies`, ...
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
    pub direction: Direction,
    /// Position in the policy's `ingress`/`egress` list.
    pub index: usize,
    /// As written: `Allow`, `Accept`, `Deny`, `Pass`, `Log`.
    pub action: String,
    pub priority: Option<i32>,
}

impl fmt::Display for RuleInfo {
    /// `networkpolicies/prod/allow-80 ingress[0]`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/", self.kind)?;
        if let Some(ns) = &self.namespace {
            write!(f, "{ns}/")?;
        }
        write!(
            f,
            "{} {}[{}]",
            self.name,
            self.direction.as_str(),
            self.index
        )
    }
}

/// Per-endpoint tables: index into [`PolicySpec::tables`] per direction;
/// `None` = no policy selects the endpoint in that direction (default allow).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointTables {
    pub ingress: Option<u32>,
    pub egress: Option<u32>,
}

/// The resolved verdicts towards one peer class: per protocol a list of
/// segments `(first port, decision)`, sorted, the first starting at 0, each
/// lasting until the next; `other` for protocols without ports (ICMP, ...).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CellSpec {
    pub other: Decision,
    pub tcp: Vec<(u16, Decision)>,
    pub udp: Vec<(u16, Decision)>,
    pub sctp: Vec<(u16, Decision)>,
}

impl CellSpec {
    /// The same decision for everything.
    pub fn uniform(d: Decision) -> CellSpec {
        CellSpec {
            other: d,
            tcp: vec![(0, d)],
            udp: vec![(0, d)],
            sctp: vec![(0, d)],
        }
    }
}

/// Plain-data compiled policy: what the agent writes into the snapshot.
/// The default (empty) spec allows everything (no policy loaded).
#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq, Eq)]
pub struct PolicySpec {
    pub generation: u64,
    /// Rule metadata; a [`RuleId`] indexes this list.
    pub rules: Vec<RuleInfo>,
    /// Class id → identity.
    pub classes: Vec<Identity>,
    /// Exact addresses (every pod of the cluster, every node) → class.
    pub addresses: Vec<(IpAddr, u32)>,
    /// CIDR regions (network address, prefix length) → class; longest wins.
    pub prefixes: Vec<(IpAddr, u8, u32)>,
    /// Class of any other address.
    pub world_class: u32,
    /// Resolved cells, shared between tables.
    pub cells: Vec<CellSpec>,
    /// Tables: class id → cell index (one entry per class).
    pub tables: Vec<Vec<u32>>,
    /// Per endpoint (same order as `SnapshotSpec::endpoints`); empty = none
    /// of this node's endpoints has policy.
    pub endpoints: Vec<EndpointTables>,
    /// HTTP rule sets (WeirPolicy `http:`), indexed by [`Decision::l7`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http: Vec<crate::l7::HttpRuleSetSpec>,
    /// DNS rule sets (WeirPolicy egress `dns:`): name patterns
    /// (`example.com`, `*.example.com`), indexed by [`Decision::dns`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<Vec<String>>,
    /// FQDN selectors (WeirPolicy egress `toFQDNs`), as name patterns, by id.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fqdn_selectors: Vec<String>,
    /// Endpoints with `toFQDNs` egress rules: (endpoint index, its rules).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fqdn_egress: Vec<(u32, Vec<FqdnRuleSpec>)>,
    /// The node itself as an endpoint (host endpoint policy: a
    /// WeirClusterPolicy with `subject.nodeSelector` selects this node).
    /// Absent: the node's traffic is judged only by its pods' side.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<HostTables>,
}

/// The node as a policy endpoint: its own addresses (the host port's
/// `.1`/`::1` and its underlay address) and its tables. Flows from one of
/// `addrs` meet `tables.egress`, flows to one of them `tables.ingress`
/// (failsafe ports are already resolved into the cells).
#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq, Eq)]
pub struct HostTables {
    pub addrs: Vec<IpAddr>,
    pub tables: EndpointTables,
}

/// One failsafe port range: `protocol` ports `first..=last`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FailsafePort {
    /// IP protocol number (6 TCP, 17 UDP, 132 SCTP).
    pub proto: u8,
    pub first: u16,
    pub last: u16,
}

/// Ports of the node's own traffic that no host policy can close, as
/// Calico's failsafe ports: `inbound` (to the node, from anywhere) and
/// `outbound` (from the node, to anywhere). See docs/policy.md, "Host
/// endpoint policy".
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailsafePorts {
    pub inbound: Vec<FailsafePort>,
    pub outbound: Vec<FailsafePort>,
}

/// `weir up` / `weir agent` default of `--failsafe-inbound`: SSH, the API
/// server, etcd, the kubelet, DHCP client.
pub const DEFAULT_FAILSAFE_INBOUND: &str = "tcp:22,tcp:6443,tcp:2379-2380,tcp:10250,udp:68";
/// Default of `--failsafe-outbound`: DNS, the API server, etcd, DHCP.
pub const DEFAULT_FAILSAFE_OUTBOUND: &str = "udp:53,tcp:53,tcp:6443,tcp:2379-2380,udp:67";

impl Default for FailsafePorts {
    fn default() -> Self {
        FailsafePorts {
            inbound: FailsafePort::parse_list(DEFAULT_FAILSAFE_INBOUND).unwrap_or_default(),
            outbound: FailsafePort::parse_list(DEFAULT_FAILSAFE_OUTBOUND).unwrap_or_default(),
        }
    }
}

impl FailsafePort {
    /// `tcp:22`, `udp:53`, `sctp:9`, `tcp:2379-2380`; an error names the
    /// bad item.
    pub fn parse(item: &str) -> Result<FailsafePort, String> {
        let bad = |why: &str| {
            format!("{item:?}: {why} (expected PROTO:PORT or PROTO:FIRST-LAST, PROTO one of tcp, udp, sctp)")
        };
        let (proto, ports) = item.trim().split_once(':').ok_or_else(|| bad("no ':'"))?;
        let proto = match proto.to_ascii_lowercase().as_str() {
            "tcp" => PROTO_TCP,
            "udp" => PROTO_UDP,
            "sctp" => PROTO_SCTP,
            _ => return Err(bad("unknown protocol")),
        };
        let port = |t: &str| t.trim().parse::<u16>().ok().filter(|&p| p != 0);
        let (first, last) = match ports.split_once('-') {
            Some((a, b)) => (port(a), port(b)),
            None => (port(ports), port(ports)),
        };
        match (first, last) {
            (Some(first), Some(last)) if first <= last => Ok(FailsafePort { proto, first, last }),
            _ => Err(bad("bad port or range (1-65535, first <= last)")),
        }
    }

    /// A comma-separated list (empty or `none`: no failsafe ports).
    pub fn parse_list(s: &str) -> Result<Vec<FailsafePort>, String> {
        let s = s.trim();
        if s.is_empty() || s.eq_ignore_ascii_case("none") {
            return Ok(Vec::new());
        }
        s.split(',').map(FailsafePort::parse).collect()
    }

    /// Whether `proto`/`port` falls in this range.
    pub fn contains(&self, proto: u8, port: u16) -> bool {
        self.proto == proto && self.first <= port && port <= self.last
    }
}

/// One `toFQDNs` egress allow of an endpoint: traffic to an address learned
/// for a name matching `selector` (an index into
/// [`PolicySpec::fqdn_selectors`]), with protocol `proto` (0: any protocol,
/// any port) and a destination port in `first..=last`, is allowed by `rule`
/// (a namespace-tier allow: it overrides only an implicit deny or a
/// Baseline-tier decision, as any namespace allow would).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FqdnRuleSpec {
    pub selector: u32,
    pub rule: RuleId,
    pub proto: u8,
    pub first: u16,
    pub last: u16,
}

/// A compiled policy spec that is inconsistent; rejected whole.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    /// policy: {0}
    #[error("policy: {0}")]
    Invalid(String),
}

fn invalid(msg: String) -> PolicyError {
    PolicyError::Invalid(msg)
}

/// FxHash-style hasher for small integer keys (not DoS-resistant; keys are
/// addresses and ports the compiler chose, the lookups are bounded).
#[derive(Default, Clone, Copy)]
pub struct IntHasher(u64);

impl Hasher for IntHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(b as u64);
        }
    }
    fn write_u8(&mut self, i: u8) {
        self.write_u64(i as u64)
    }
    fn write_u16(&mut self, i: u16) {
        self.write_u64(i as u64)
    }
    fn write_u32(&mut self, i: u32) {
        self.write_u64(i as u64)
    }
    fn write_u64(&mut self, i: u64) {
        self.0 = (self.0.rotate_left(5) ^ i).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn write_u128(&mut self, i: u128) {
        self.write_u64(i as u64);
        self.write_u64((i >> 64) as u64);
    }
    fn write_usize(&mut self, i: usize) {
        self.write_u64(i as u64)
    }
}

type IntMap<K, V> = HashMap<K, V, BuildHasherDefault<IntHasher>>;

/// Segments no longer than this are expanded into exact port entries.
const EXPAND_MAX: u32 = 64;

#[derive(Debug, Clone, Default)]
struct PortTable {
    exact: IntMap<u16, Decision>,
    /// Long segments `(first, last, decision)`, sorted.
    ranges: Box<[(u16, u16, Decision)]>,
}

impl PortTable {
    fn build(segs: &[(u16, Decision)], what: &str) -> Result<PortTable, PolicyError> {
        if segs.first().map(|s| s.0) != Some(0) {
            return Err(invalid(format!("{what}: segments must start at port 0")));
        }
        let mut exact = IntMap::default();
        let mut ranges = Vec::new();
        for (i, &(start, d)) in segs.iter().enumerate() {
            let end: u32 = match segs.get(i + 1) {
                Some(&(next, _)) if next > start => next as u32 - 1,
                Some(_) => return Err(invalid(format!("{what}: segments not increasing"))),
                None => 65535,
            };
            if end - (start as u32) < EXPAND_MAX {
                for p in start as u32..=end {
                    exact.insert(p as u16, d);
                }
            } else {
                ranges.push((start, end as u16, d));
            }
        }
        Ok(PortTable {
            exact,
            ranges: ranges.into_boxed_slice(),
        })
    }

    #[inline]
    fn lookup(&self, port: u16) -> Decision {
        if let Some(d) = self.exact.get(&port) {
            return *d;
        }
        let i = self.ranges.partition_point(|r| r.0 <= port);
        // Every port not in `exact` lies in a long segment, which starts at
        // or before it; the fallback is unreachable for a built table.
        match i.checked_sub(1).and_then(|i| self.ranges.get(i)) {
            Some(&(_, last, d)) if port <= last => d,
            _ => Decision::deny(RuleId::IMPLICIT_DENY),
        }
    }
}

#[derive(Debug, Clone)]
struct Cell {
    other: Decision,
    /// TCP, UDP, SCTP.
    protos: [PortTable; 3],
}

impl Cell {
    #[inline]
    fn lookup(&self, proto: u8, port: u16) -> Decision {
        let t = match proto {
            PROTO_TCP => &self.protos[0],
            PROTO_UDP => &self.protos[1],
            PROTO_SCTP => &self.protos[2],
            _ => return self.other,
        };
        t.lookup(port)
    }
}

pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_SCTP: u8 = 132;

/// The lookup form of a [`PolicySpec`], built once per snapshot.
#[derive(Debug, Clone, Default)]
pub struct CompiledPolicy {
    generation: u64,
    rules: Vec<RuleInfo>,
    classes: Vec<Identity>,
    by_addr: IntMap<IpAddr, u32>,
    /// (prefix length, network → class), longest first.
    v4: Vec<(u8, IntMap<u32, u32>)>,
    v6: Vec<(u8, IntMap<u128, u32>)>,
    world_class: u32,
    cells: Vec<Cell>,
    tables: Vec<Box<[u32]>>,
    endpoints: Vec<EndpointTables>,
    /// Identity → a class carrying it (for identities read off a tunnel
    /// header): the class of a pod address if one has it, else the first.
    by_identity: IntMap<Identity, u32>,
    /// Compiled HTTP rule sets ([`PolicySpec::http`]).
    http: Vec<crate::l7::HttpRuleSet>,
    /// Per rule id: the rule decides only with an L7 set (a conntrack
    /// entry admitted by it needs an inspector).
    l7_rules: Vec<bool>,
    /// Compiled DNS rule sets ([`PolicySpec::dns`]).
    dns: Vec<crate::l7::dns::DnsRuleSet>,
    /// Per rule id: the rule decides only with a DNS set.
    dns_rules: Vec<bool>,
    /// FQDN selectors ([`PolicySpec::fqdn_selectors`]).
    fqdn_selectors: Vec<crate::l7::dns::NamePattern>,
    /// Per endpoint: its `toFQDNs` egress rules (empty: none).
    fqdn: Vec<Box<[FqdnRuleSpec]>>,
    /// The node's own addresses when host policy selects it (few: a
    /// linear scan), and its tables.
    host_addrs: Box<[IpAddr]>,
    host: EndpointTables,
}

fn mask4(a: u32, len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        a & (u32::MAX << (32 - len as u32))
    }
}

fn mask6(a: u128, len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        a & (u128::MAX << (128 - len as u32))
    }
}

/// Which rules decide with an L7 rule set (HTTP: [`Decision::l7`], DNS:
/// [`Decision::dns`], read by `set`), checking that every set index is in
/// range (`sets` of them), only rules' allows carry one, and a rule that
/// decides with a set does so everywhere: the datapath finds the set of
/// an established flow from its rule. `kind` names the sets in errors.
fn rules_with_sets<'a, I: Iterator<Item = &'a Decision>>(
    decisions: impl Fn() -> I,
    kind: &str,
    sets: usize,
    set: fn(&Decision) -> Option<u32>,
    rules: usize,
) -> Result<Vec<bool>, PolicyError> {
    let mut with = vec![false; rules];
    for d in decisions() {
        if let Some(l) = set(d) {
            if l as usize >= sets {
                return Err(invalid(format!("{kind} rule set {l} out of range")));
            }
            if d.action != Action::Allow || d.rule.is_reserved() {
                return Err(invalid(format!(
                    "{kind} rule set {l} on a decision that is not a rule's allow"
                )));
            }
            if let Some(f) = with.get_mut(d.rule.0 as usize) {
                *f = true;
            }
        }
    }
    for d in decisions() {
        if set(d).is_none() && !d.rule.is_reserved() && with.get(d.rule.0 as usize) == Some(&true) {
            return Err(invalid(format!(
                "rule {} decides both with and without {kind} rules",
                d.rule.0
            )));
        }
    }
    Ok(with)
}

impl CompiledPolicy {
    /// Validates `spec` (every index in range, segments well formed, rule
    /// ids known) and builds the lookup form.
    pub fn build(spec: PolicySpec) -> Result<Self, PolicyError> {
        let nclasses = spec.classes.len();
        let class_ok = |c: u32, what: &str| -> Result<(), PolicyError> {
            if (c as usize) < nclasses {
                Ok(())
            } else {
                Err(invalid(format!(
                    "{what}: class {c} out of range ({nclasses} classes)"
                )))
            }
        };
        let rule_ok = |d: &Decision, what: &str| -> Result<(), PolicyError> {
            if d.rule.is_reserved() || (d.rule.0 as usize) < spec.rules.len() {
                Ok(())
            } else {
                Err(invalid(format!("{what}: rule {} out of range", d.rule.0)))
            }
        };
        let mut by_addr = IntMap::default();
        for &(a, c) in &spec.addresses {
            class_ok(c, &format!("address {a}"))?;
            if by_addr.insert(a, c).is_some() {
                return Err(invalid(format!("address {a} listed twice")));
            }
        }
        let mut v4: Vec<(u8, IntMap<u32, u32>)> = Vec::new();
        let mut v6: Vec<(u8, IntMap<u128, u32>)> = Vec::new();
        for &(a, len, c) in &spec.prefixes {
            class_ok(c, &format!("prefix {a}/{len}"))?;
            match a {
                IpAddr::V4(a) if len <= 32 => {
                    let i = match v4.iter().position(|e| e.0 == len) {
                        Some(i) => i,
                        None => {
                            v4.push((len, IntMap::default()));
                            v4.len() - 1
                        }
                    };
                    v4[i].1.insert(mask4(a.into(), len), c);
                }
                IpAddr::V6(a) if len <= 128 => {
                    let i = match v6.iter().position(|e| e.0 == len) {
                        Some(i) => i,
                        None => {
                            v6.push((len, IntMap::default()));
                            v6.len() - 1
                        }
                    };
                    v6[i].1.insert(mask6(a.into(), len), c);
                }
                _ => return Err(invalid(format!("prefix {a}/{len}: bad length"))),
            }
        }
        v4.sort_by_key(|e| std::cmp::Reverse(e.0));
        v6.sort_by_key(|e| std::cmp::Reverse(e.0));
        if !spec.tables.is_empty() || !spec.endpoints.is_empty() {
            class_ok(spec.world_class, "world_class")?;
        }
        let mut http = Vec::with_capacity(spec.http.len());
        for (i, h) in spec.http.iter().enumerate() {
            http.push(
                crate::l7::HttpRuleSet::compile(h)
                    .map_err(|e| invalid(format!("http rule set {i}: {e}")))?,
            );
        }
        // A rule that decides with an L7 set must do so everywhere: the
        // datapath finds the set of an established flow from its rule.
        // A rule that decides with an L7 set must do so everywhere: the
        // datapath finds the set of an established flow from its rule.
        let all_decisions = || {
            spec.cells.iter().flat_map(|c| {
                std::iter::once(&c.other)
                    .chain(c.tcp.iter().map(|s| &s.1))
                    .chain(c.udp.iter().map(|s| &s.1))
                    .chain(c.sctp.iter().map(|s| &s.1))
            })
        };
        let l7_rules = rules_with_sets(
            all_decisions,
            "http",
            http.len(),
            |d| d.l7,
            spec.rules.len(),
        )?;
        let mut dns = Vec::with_capacity(spec.dns.len());
        for (i, d) in spec.dns.iter().enumerate() {
            dns.push(
                crate::l7::dns::DnsRuleSet::compile(d)
                    .map_err(|p| invalid(format!("dns rule set {i}: bad pattern {p:?}")))?,
            );
        }
        let dns_rules =
            rules_with_sets(all_decisions, "dns", dns.len(), |d| d.dns, spec.rules.len())?;
        let mut fqdn_selectors = Vec::with_capacity(spec.fqdn_selectors.len());
        for (i, p) in spec.fqdn_selectors.iter().enumerate() {
            fqdn_selectors.push(
                crate::l7::dns::NamePattern::parse(p)
                    .ok_or_else(|| invalid(format!("fqdn selector {i}: bad pattern {p:?}")))?,
            );
        }
        let mut fqdn: Vec<Box<[FqdnRuleSpec]>> = vec![Box::default(); spec.endpoints.len()];
        for (ep, list) in &spec.fqdn_egress {
            let Some(slot) = fqdn.get_mut(*ep as usize) else {
                return Err(invalid(format!("fqdn rules: endpoint {ep} out of range")));
            };
            for r in list {
                if r.selector as usize >= fqdn_selectors.len()
                    || r.rule.is_reserved()
                    || r.rule.0 as usize >= spec.rules.len()
                    || r.first > r.last
                {
                    return Err(invalid(format!(
                        "fqdn rules of endpoint {ep}: bad rule {r:?}"
                    )));
                }
            }
            *slot = list.clone().into_boxed_slice();
        }
        let mut cells = Vec::with_capacity(spec.cells.len());
        for (i, c) in spec.cells.iter().enumerate() {
            let what = format!("cell {i}");
            rule_ok(&c.other, &what)?;
            for segs in [&c.tcp, &c.udp, &c.sctp] {
                for (_, d) in segs {
                    rule_ok(d, &what)?;
                }
            }
            cells.push(Cell {
                other: c.other,
                protos: [
                    PortTable::build(&c.tcp, &what)?,
                    PortTable::build(&c.udp, &what)?,
                    PortTable::build(&c.sctp, &what)?,
                ],
            });
        }
        let mut tables = Vec::with_capacity(spec.tables.len());
        for (i, t) in spec.tables.iter().enumerate() {
            if t.len() != nclasses {
                return Err(invalid(format!(
                    "table {i}: {} entries for {nclasses} classes",
                    t.len()
                )));
            }
            if let Some(&c) = t.iter().find(|&&c| c as usize >= cells.len()) {
                return Err(invalid(format!("table {i}: cell {c} out of range")));
            }
            tables.push(t.clone().into_boxed_slice());
        }
        for (i, e) in spec.endpoints.iter().enumerate() {
            for t in [e.ingress, e.egress].into_iter().flatten() {
                if t as usize >= tables.len() {
                    return Err(invalid(format!("endpoint {i}: table {t} out of range")));
                }
            }
        }
        let (host_addrs, host) = match &spec.host {
            Some(h) => {
                for t in [h.tables.ingress, h.tables.egress].into_iter().flatten() {
                    if t as usize >= tables.len() {
                        return Err(invalid(format!("host: table {t} out of range")));
                    }
                }
                (h.addrs.clone().into_boxed_slice(), h.tables)
            }
            None => (Box::default(), EndpointTables::default()),
        };
        let mut by_identity: IntMap<Identity, u32> = IntMap::default();
        for &(_, c) in &spec.addresses {
            by_identity.entry(spec.classes[c as usize]).or_insert(c);
        }
        for (c, &id) in spec.classes.iter().enumerate() {
            by_identity.entry(id).or_insert(c as u32);
        }
        Ok(CompiledPolicy {
            by_identity,
            generation: spec.generation,
            rules: spec.rules,
            classes: spec.classes,
            by_addr,
            v4,
            v6,
            world_class: spec.world_class,
            cells,
            tables,
            endpoints: spec.endpoints,
            http,
            l7_rules,
            dns,
            dns_rules,
            fqdn_selectors,
            fqdn,
            host_addrs,
            host,
        })
    }

    /// The compiled DNS rule set `i` ([`Decision::dns`]).
    #[inline]
    pub fn dns_set(&self, i: u32) -> Option<&crate::l7::dns::DnsRuleSet> {
        self.dns.get(i as usize)
    }

    /// Whether any decision carries DNS rules.
    #[inline]
    pub fn has_dns(&self) -> bool {
        !self.dns.is_empty()
    }

    /// Whether flows admitted by `rule` (an egress rule) are under DNS rules.
    #[inline]
    pub fn rule_has_dns(&self, rule: RuleId) -> bool {
        self.dns_rules.get(rule.0 as usize) == Some(&true)
    }

    /// Whether a name (dotted) matches any FQDN selector of this policy:
    /// only such names are worth learning from DNS answers.
    pub fn fqdn_wanted(&self, name: &str) -> bool {
        self.fqdn_selectors.iter().any(|p| p.matches_dotted(name))
    }

    /// Whether any endpoint has `toFQDNs` rules.
    #[inline]
    pub fn has_fqdn(&self) -> bool {
        !self.fqdn_selectors.is_empty()
    }

    /// [`judge_with_src_identity`](Self::judge_with_src_identity), then, if
    /// the source's egress is denied by isolation (implicit deny) or by the
    /// Baseline tier, its `toFQDNs` rules (namespace-tier allows) are
    /// consulted: an address `learned` (unexpired at `now_ns`) for a name
    /// matching a rule's selector, on the rule's protocol and ports, allows
    /// by that rule. Admin-tier and explicit namespace-tier denies stand.
    /// Allocation-free; takes the table's read lock only in that case.
    pub fn judge_learned<L: LearnedNames + ?Sized>(
        &self,
        src: Peer,
        src_identity: Option<Identity>,
        dst: Peer,
        proto: u8,
        dport: u16,
        (learned, now_ns): (&L, u64),
    ) -> Judgement {
        let mut j = self.judge_with_src_identity(src, src_identity, dst, proto, dport);
        let Some(ep) = src.endpoint else {
            return j;
        };
        let Some(rules) = self.fqdn.get(ep as usize).filter(|r| !r.is_empty()) else {
            return j;
        };
        let e = j.egress;
        let overridable = e.action == Action::Deny
            && (e.rule == RuleId::IMPLICIT_DENY
                || self.rule(e.rule).is_some_and(|r| r.tier == Tier::Baseline));
        if !overridable {
            return j;
        }
        let hit = rules.iter().find(|r| {
            (r.proto == 0 || (r.proto == proto && r.first <= dport && dport <= r.last))
                && self
                    .fqdn_selectors
                    .get(r.selector as usize)
                    .is_some_and(|p| learned.any_name(dst.addr, now_ns, |n| p.matches_dotted(n)))
        });
        if let Some(r) = hit {
            j.egress = Decision {
                log: e.log,
                ..Decision::allow(r.rule)
            };
            j.allowed = j.egress.passes() && j.ingress.passes();
        }
        j
    }

    /// Whether `rule` is one of endpoint `ep`'s `toFQDNs` egress rules (a
    /// flow it admitted gets the server-name cross-check, docs/l7.md
    /// "FQDN egress and the server name"). A scan of the endpoint's few
    /// FQDN rules; false when it has none.
    pub fn is_fqdn_rule(&self, ep: u32, rule: RuleId) -> bool {
        self.fqdn
            .get(ep as usize)
            .is_some_and(|rs| rs.iter().any(|r| r.rule == rule))
    }

    /// The server-name cross-check of FQDN egress (Cilium issue 31803): may
    /// a connection of endpoint `ep` to `addr` (`proto`/`dport`) name
    /// `name` (dotted, any case) in its TLS ClientHello? Yes iff one of the
    /// endpoint's `toFQDNs` rules covering `proto`/`dport` has a selector
    /// matching `name`, and `name` itself was `learned` (unexpired at
    /// `now_ns`) for `addr`: another name served on the same address (a
    /// CDN, a shared load balancer) does not pass, nor does an allowed
    /// name that never resolved to this address. Allocation-free.
    #[allow(clippy::too_many_arguments)]
    pub fn fqdn_name_allowed<L: LearnedNames + ?Sized>(
        &self,
        ep: u32,
        addr: IpAddr,
        proto: u8,
        dport: u16,
        name: &str,
        (learned, now_ns): (&L, u64),
    ) -> bool {
        let name = name.strip_suffix('.').unwrap_or(name);
        let Some(rules) = self.fqdn.get(ep as usize) else {
            return false;
        };
        let selected = rules.iter().any(|r| {
            (r.proto == 0 || (r.proto == proto && r.first <= dport && dport <= r.last))
                && self
                    .fqdn_selectors
                    .get(r.selector as usize)
                    .is_some_and(|p| p.matches_dotted(name))
        });
        selected && learned.any_name(addr, now_ns, |n| n.eq_ignore_ascii_case(name))
    }

    /// The compiled HTTP rule set `i` ([`Decision::l7`]).
    #[inline]
    pub fn http_set(&self, i: u32) -> Option<&crate::l7::HttpRuleSet> {
        self.http.get(i as usize)
    }

    /// Whether any decision carries HTTP rules.
    #[inline]
    pub fn has_l7(&self) -> bool {
        !self.http.is_empty()
    }

    /// Whether flows admitted by `rule` are under HTTP rules (then the
    /// admitting decision had `l7: Some(..)`).
    #[inline]
    pub fn rule_has_l7(&self, rule: RuleId) -> bool {
        self.l7_rules.get(rule.0 as usize) == Some(&true)
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Number of endpoints the spec has tables for (0: no policy loaded).
    pub fn endpoint_count(&self) -> usize {
        self.endpoints.len()
    }

    /// The peer class of an address: exact pod/node address, else longest
    /// CIDR region, else world.
    #[inline]
    fn class_of(&self, addr: IpAddr) -> Option<u32> {
        if self.classes.is_empty() {
            return None;
        }
        if let Some(&c) = self.by_addr.get(&addr) {
            return Some(c);
        }
        match addr {
            IpAddr::V4(a) => {
                let a = u32::from(a);
                for (len, m) in &self.v4 {
                    if let Some(&c) = m.get(&mask4(a, *len)) {
                        return Some(c);
                    }
                }
            }
            IpAddr::V6(a) => {
                let a = u128::from(a);
                for (len, m) in &self.v6 {
                    if let Some(&c) = m.get(&mask6(a, *len)) {
                        return Some(c);
                    }
                }
            }
        }
        Some(self.world_class)
    }

    /// The identity of an address; world if it is no pod or node.
    pub fn identity_of(&self, addr: IpAddr) -> Identity {
        match self.class_of(addr) {
            Some(c) => self.classes[c as usize],
            None => IDENTITY_WORLD,
        }
    }

    /// The identity of an address, or `None` when no policy is loaded (the
    /// identity a tunnel carries for a local source).
    pub fn identity_if_known(&self, addr: IpAddr) -> Option<Identity> {
        self.class_of(addr).map(|c| self.classes[c as usize])
    }

    /// The peer class for a source known by a carried identity: the class of
    /// its address when that has the same identity (it then also knows the
    /// address's CIDR region), else a class of that identity, else world
    /// (an identity this policy does not know gets no pod's privileges).
    #[inline]
    fn class_of_identity(&self, addr: IpAddr, id: Identity) -> Option<u32> {
        let by_addr = self.class_of(addr)?;
        if self.classes[by_addr as usize] == id {
            return Some(by_addr);
        }
        Some(
            self.by_identity
                .get(&id)
                .copied()
                .unwrap_or(self.world_class),
        )
    }

    /// One direction of a local endpoint towards a peer address.
    #[inline]
    fn decide(&self, ep: u32, dir: Direction, peer: IpAddr, proto: u8, port: u16) -> Decision {
        self.decide_class(ep, dir, || self.class_of(peer), proto, port)
    }

    #[inline]
    fn decide_class(
        &self,
        ep: u32,
        dir: Direction,
        class: impl FnOnce() -> Option<u32>,
        proto: u8,
        port: u16,
    ) -> Decision {
        let Some(tables) = self.endpoints.get(ep as usize) else {
            return Decision::DEFAULT_ALLOW;
        };
        let t = match dir {
            Direction::Ingress => tables.ingress,
            Direction::Egress => tables.egress,
        };
        let Some(t) = t else {
            return Decision::DEFAULT_ALLOW;
        };
        let Some(class) = class() else {
            return Decision::DEFAULT_ALLOW;
        };
        if self.classes[class as usize] == IDENTITY_HOST {
            return Decision::HOST;
        }
        let cell = self.tables[t as usize][class as usize];
        self.cells[cell as usize].lookup(proto, port)
    }

    /// Whether `addr` is this node's own address under host policy.
    #[inline]
    pub fn is_host_endpoint(&self, addr: IpAddr) -> bool {
        self.host_addrs.contains(&addr)
    }

    /// Whether host policy selects this node (it has host tables).
    pub fn has_host_endpoint(&self) -> bool {
        !self.host_addrs.is_empty()
    }

    /// One direction of the node itself (host endpoint policy) towards a
    /// peer class. Unlike a pod's, the node's tables judge other nodes'
    /// addresses too (no host-identity shortcut).
    #[inline]
    fn decide_host(
        &self,
        dir: Direction,
        class: impl FnOnce() -> Option<u32>,
        proto: u8,
        port: u16,
    ) -> Decision {
        let t = match dir {
            Direction::Ingress => self.host.ingress,
            Direction::Egress => self.host.egress,
        };
        let (Some(t), Some(class)) = (t, class()) else {
            return Decision::DEFAULT_ALLOW;
        };
        let cell = self.tables[t as usize][class as usize];
        self.cells[cell as usize].lookup(proto, port)
    }

    /// Judges a NEW flow: egress of `src` (if it is a local endpoint),
    /// ingress of `dst` (if local). Both must pass. Allocation-free.
    pub fn judge(&self, src: Peer, dst: Peer, proto: u8, dport: u16) -> Judgement {
        self.judge_by(src, dst, proto, dport, || self.class_of(src.addr))
    }

    /// [`judge`](Self::judge) for a source whose identity arrived with the
    /// packet (VXLAN-GBP group, Geneve identity option): the destination's
    /// ingress is decided for that identity instead of the class of the
    /// source address. `None` (or [`IDENTITY_UNKNOWN`]): by address, as
    /// `judge`. Egress of a local source is by address as always.
    pub fn judge_with_src_identity(
        &self,
        src: Peer,
        src_identity: Option<Identity>,
        dst: Peer,
        proto: u8,
        dport: u16,
    ) -> Judgement {
        match src_identity {
            Some(id) if id != IDENTITY_UNKNOWN => self.judge_by(src, dst, proto, dport, || {
                self.class_of_identity(src.addr, id)
            }),
            _ => self.judge(src, dst, proto, dport),
        }
    }

    /// Both sides of a new flow; `src_class` gives the source's peer class
    /// for the destination's ingress.
    #[inline]
    fn judge_by(
        &self,
        src: Peer,
        dst: Peer,
        proto: u8,
        dport: u16,
        src_class: impl FnOnce() -> Option<u32>,
    ) -> Judgement {
        let egress = match src.endpoint {
            Some(ep) => self.decide(ep, Direction::Egress, dst.addr, proto, dport),
            None if self.is_host_endpoint(src.addr) => {
                self.decide_host(Direction::Egress, || self.class_of(dst.addr), proto, dport)
            }
            None => Decision::NOT_APPLICABLE,
        };
        let ingress = match dst.endpoint {
            Some(ep) => self.decide_class(ep, Direction::Ingress, src_class, proto, dport),
            None if self.is_host_endpoint(dst.addr) => {
                self.decide_host(Direction::Ingress, src_class, proto, dport)
            }
            None => Decision::NOT_APPLICABLE,
        };
        Judgement {
            allowed: egress.passes() && ingress.passes(),
            egress,
            ingress,
        }
    }

    /// Metadata of a rule (`None` for reserved ids).
    pub fn rule(&self, id: RuleId) -> Option<&RuleInfo> {
        if id.is_reserved() {
            return None;
        }
        self.rules.get(id.0 as usize)
    }

    /// Human text for a decision: the rule, or what the reserved id means.
    pub fn describe(&self, d: &Decision) -> String {
        let what = match d.rule {
            RuleId::DEFAULT_ALLOW => "default allow (no policy decided)".to_string(),
            RuleId::IMPLICIT_DENY => "implicit deny (isolated by a namespace policy)".to_string(),
            RuleId::NOT_APPLICABLE => "not judged on this node".to_string(),
            RuleId::HOST => "node traffic (always allowed)".to_string(),
            RuleId::FAILSAFE => "failsafe port (no host policy can close it)".to_string(),
            id => match self.rule(id) {
                Some(r) => format!("{r} ({})", r.action),
                None => format!("rule {}", id.0),
            },
        };
        let mut s = format!(
            "{} by {what}",
            match d.action {
                Action::Allow => "allow",
                Action::Deny => "deny",
            }
        );
        if d.audit {
            s.push_str(" [audit: would drop, passes]");
        }
        if d.log {
            s.push_str(" [logged]");
        }
        if let Some(n) = d.dns {
            s.push_str(&format!(" [DNS rules: set {n}; other queries get REFUSED]"));
        }
        if let Some(tls) = d.l7.and_then(|l| self.http_set(l)?.tls()) {
            s.push_str(&format!(
                " [TLS rules: set {}, {} server name(s); other connections get RST]",
                d.l7.unwrap_or_default(),
                tls.len()
            ));
        } else if let Some(l) = d.l7 {
            let n = self.http_set(l).map_or(0, |h| h.len());
            s.push_str(&format!(
                " [HTTP rules: set {l}, {n} rule(s); other requests get 403]"
            ));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn peer(ep: Option<u32>, a: [u8; 4]) -> Peer {
        Peer {
            endpoint: ep,
            addr: IpAddr::V4(Ipv4Addr::from(a)),
        }
    }

    #[test]
    fn empty_spec_allows_everything() {
        let p = CompiledPolicy::build(PolicySpec::default()).unwrap();
        let j = p.judge(
            peer(Some(0), [10, 0, 0, 2]),
            peer(Some(1), [10, 0, 0, 3]),
            6,
            80,
        );
        assert!(j.allowed);
        assert_eq!(j.egress, Decision::DEFAULT_ALLOW);
        assert_eq!(p.identity_of("1.2.3.4".parse().unwrap()), IDENTITY_WORLD);
    }

    fn spec() -> PolicySpec {
        // class 0: world, class 1: 10.0.0.2 (identity 256), class 2: 192.168.0.0/16
        let deny = Decision::deny(RuleId(0));
        let allow = Decision::allow(RuleId(1));
        PolicySpec {
            generation: 7,
            rules: vec![
                RuleInfo {
                    tier: Tier::Namespace,
                    kind: "weirpolicies".into(),
                    namespace: Some("a".into()),
                    name: "p".into(),
                    direction: Direction::Ingress,
                    index: 0,
                    action: "Deny".into(),
                    priority: None,
                },
                RuleInfo {
                    tier: Tier::Namespace,
                    kind: "networkpolicies".into(),
                    namespace: Some("a".into()),
                    name: "q".into(),
                    direction: Direction::Ingress,
                    index: 0,
                    action: "Allow".into(),
                    priority: None,
                },
            ],
            classes: vec![IDENTITY_WORLD, 256, IDENTITY_WORLD],
            addresses: vec![("10.0.0.2".parse().unwrap(), 1)],
            prefixes: vec![("192.168.0.0".parse().unwrap(), 16, 2)],
            world_class: 0,
            cells: vec![
                CellSpec::uniform(Decision::deny(RuleId::IMPLICIT_DENY)),
                CellSpec {
                    other: deny,
                    tcp: vec![
                        (0, deny),
                        (80, allow),
                        (81, deny),
                        (1000, allow),
                        (2001, deny),
                    ],
                    udp: vec![(0, deny)],
                    sctp: vec![(0, deny)],
                },
                CellSpec::uniform(allow),
            ],
            tables: vec![vec![0, 1, 2]],
            endpoints: vec![EndpointTables {
                ingress: Some(0),
                egress: None,
            }],
            http: vec![],
            ..Default::default()
        }
    }

    #[test]
    fn lookups_by_address_prefix_and_port() {
        let p = CompiledPolicy::build(spec()).unwrap();
        assert_eq!(p.generation(), 7);
        assert_eq!(p.identity_of("10.0.0.2".parse().unwrap()), 256);
        let me = peer(Some(0), [10, 0, 0, 9]);
        let j = |src: [u8; 4], proto, port| p.judge(peer(None, src), me, proto, port);
        assert!(j([10, 0, 0, 2], 6, 80).allowed);
        assert!(!j([10, 0, 0, 2], 6, 79).allowed);
        assert!(!j([10, 0, 0, 2], 6, 81).allowed);
        assert!(j([10, 0, 0, 2], 6, 1000).allowed);
        assert!(j([10, 0, 0, 2], 6, 2000).allowed);
        assert!(!j([10, 0, 0, 2], 6, 2001).allowed);
        assert!(!j([10, 0, 0, 2], 6, 65535).allowed);
        assert!(!j([10, 0, 0, 2], 1, 0).allowed);
        assert!(j([192, 168, 3, 4], 17, 53).allowed);
        let d = j([8, 8, 8, 8], 6, 80);
        assert!(!d.allowed);
        assert_eq!(d.ingress.rule, RuleId::IMPLICIT_DENY);
        assert_eq!(d.egress, Decision::NOT_APPLICABLE);
        assert_eq!(
            p.rule(RuleId(1)).unwrap().to_string(),
            "networkpolicies/a/q ingress[0]"
        );
    }

    #[test]
    fn bad_specs_are_rejected() {
        let mut s = spec();
        s.tables[0].pop();
        assert!(CompiledPolicy::build(s).is_err());
        let mut s = spec();
        s.cells[1].tcp[0].0 = 1;
        assert!(CompiledPolicy::build(s).is_err());
        let mut s = spec();
        s.cells[1].tcp[0].1.rule = RuleId(9);
        assert!(CompiledPolicy::build(s).is_err());
        let mut s = spec();
        s.endpoints[0].egress = Some(3);
        assert!(CompiledPolicy::build(s).is_err());
    }
}
