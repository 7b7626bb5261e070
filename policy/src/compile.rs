//! Policies + pods + namespaces → [`PolicySpec`] (Cilium mapstate style:
//! every decision resolved here, the datapath only looks up).
//!
//! Precedence, for one endpoint, one direction, one peer, one (protocol,
//! port) — the same order as docs/policy.md, applied by [`Resolver::eval`]:
//! 1. Admin tier (ClusterNetworkPolicy tier Admin, AdminNetworkPolicy,
//!    WeirClusterPolicy) in (priority, kind, name) order, rules in written
//!    order: the first matching Allow/Accept or Deny decides; Pass skips the
//!    rest of the tier; Log marks and goes on.
//! 2. Namespace tier (NetworkPolicy, WeirPolicy selecting the endpoint):
//!    any matching Deny beats any Allow; else any matching Allow decides;
//!    else, if a namespace policy isolates the endpoint in this direction,
//!    implicit deny (this beats Baseline).
//! 3. Baseline tier (ClusterNetworkPolicy tier Baseline, then the
//!    BaselineAdminNetworkPolicy) like the Admin tier; Pass ends the tier.
//! 4. Default allow.
//!
//! Audit: a Deny (or isolation) coming only from `audit: true` policies is
//! remembered and evaluation goes on; an enforced Deny later still wins, an
//! Allow later becomes `Deny + audit` (would drop, passes).
//!
//! How the table stays small: peers are grouped into classes (identity,
//! CIDR region, named ports); endpoints with the same identity and named
//! ports share tables; identical cells are stored once.

use crate::model::*;
use crate::{PodInfo, PolicyError, PolicyInput};
use ipnet::IpNet;
use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use weir_model::manifest::NAMESPACE_NAME_LABEL;
use weir_model::policy::{
    CellSpec, Decision, EndpointTables, FailsafePort, FailsafePorts, FqdnRuleSpec, HostTables,
    Identity, PolicySpec, RuleId, RuleInfo, IDENTITY_FIRST_POD, IDENTITY_HOST, IDENTITY_WORLD,
};
use weir_model::ContainerPort;

use crate::selector::Labels;

struct Class {
    identity: Identity,
    /// Namespace and labels, for pods.
    pod: Option<(String, Labels, Labels)>,
    region: Option<IpNet>,
    profile: usize,
}

/// (admin, namespace, baseline rule ids, isolated, isolated enforced, port profile)
type MemoKey = (Vec<u32>, Vec<u32>, Vec<u32>, bool, bool, usize);

struct CRule {
    action: RuleAction,
    audit: bool,
    ports: Option<Vec<PortMatch>>,
    /// Index of the rule's own HTTP rule set in `PolicySpec::http`.
    l7: Option<u32>,
    /// Index of the rule's own DNS rule set in `PolicySpec::dns`.
    dns: Option<u32>,
    /// `toFQDNs` selectors: the rule matches no class statically.
    fqdn: Option<Vec<String>>,
}

/// DNS rule sets of the spec being built: each rule's own, then unions
/// (several DNS allows of the namespace tier match), memoised.
#[derive(Default)]
struct DnsSets {
    sets: Vec<Vec<String>>,
    unions: HashMap<Vec<u32>, u32>,
}

impl DnsSets {
    fn union(&mut self, parts: Vec<u32>) -> u32 {
        if let [one] = parts[..] {
            return one;
        }
        if let Some(&u) = self.unions.get(&parts) {
            return u;
        }
        let mut names: Vec<String> = Vec::new();
        for &p in &parts {
            for n in &self.sets[p as usize] {
                if !names.contains(n) {
                    names.push(n.clone());
                }
            }
        }
        self.sets.push(names);
        let id = self.sets.len() as u32 - 1;
        self.unions.insert(parts, id);
        id
    }
}

/// HTTP rule sets of the spec being built: each rule's own, then unions
/// made when several L7 allows of the namespace tier match (memoised).
#[derive(Default)]
struct HttpSets {
    sets: Vec<weir_model::l7::HttpRuleSetSpec>,
    unions: HashMap<Vec<u32>, u32>,
}

impl HttpSets {
    fn union(&mut self, parts: Vec<u32>) -> u32 {
        if let [one] = parts[..] {
            return one;
        }
        if let Some(&u) = self.unions.get(&parts) {
            return u;
        }
        let mut rules = Vec::new();
        let mut tls = Vec::new();
        for &p in &parts {
            rules.extend(self.sets[p as usize].rules.iter().cloned());
            tls.extend(self.sets[p as usize].tls.iter().cloned());
        }
        self.sets
            .push(weir_model::l7::HttpRuleSetSpec { rules, tls });
        let id = self.sets.len() as u32 - 1;
        self.unions.insert(parts, id);
        id
    }
}

/// Namespace labels including `kubernetes.io/metadata.name`.
pub(crate) fn namespace_labels(input: &PolicyInput) -> HashMap<String, Labels> {
    let mut out: HashMap<String, Labels> = HashMap::new();
    for ns in &input.namespaces {
        let mut l = ns.labels.clone();
        l.insert(NAMESPACE_NAME_LABEL.into(), ns.name.clone());
        out.insert(ns.name.clone(), l);
    }
    for p in &input.pods {
        out.entry(p.namespace.clone()).or_insert_with(|| {
            Labels::from([(NAMESPACE_NAME_LABEL.to_string(), p.namespace.clone())])
        });
    }
    out
}

/// Pods on `node`, in endpoint order: (namespace, name).
pub fn node_endpoints<'a>(input: &'a PolicyInput, node: &str) -> Vec<&'a PodInfo> {
    let mut v: Vec<&PodInfo> = input.pods.iter().filter(|p| p.node == node).collect();
    v.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    v
}

/// Policies in precedence order (tier, priority, kind, namespace, name).
pub fn sorted_policies(policies: &[Policy]) -> Vec<&Policy> {
    let mut v: Vec<&Policy> = policies.iter().collect();
    v.sort_by(|a, b| a.order_key().cmp(&b.order_key()));
    v
}

/// Named port `name` (protocol `proto` or any) on a pod with these ports.
pub fn resolve_named<'a>(
    ports: &'a [ContainerPort],
    name: &'a str,
    proto: Option<Protocol>,
) -> impl Iterator<Item = &'a ContainerPort> + 'a {
    ports
        .iter()
        .filter(move |c| c.name.as_deref() == Some(name) && proto.is_none_or(|p| p == c.protocol))
}

fn proto_number(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => 6,
        Protocol::Udp => 17,
        Protocol::Sctp => 132,
    }
}

/// Compiles for the pods on `node` (endpoint order: (namespace, name)).
pub fn compile(
    input: &PolicyInput,
    generation: u64,
    node: &str,
) -> Result<PolicySpec, PolicyError> {
    let eps = node_endpoints(input, node);
    compile_for(input, generation, &eps)
}

/// The node a snapshot is compiled for, as a host endpoint: its labels
/// (what `subject.nodeSelector` matches), its own addresses behind the
/// host port, and its failsafe ports. See docs/policy.md, "Host endpoint
/// policy".
#[derive(Clone, Debug, Default)]
pub struct HostEndpoint {
    pub labels: Labels,
    pub addrs: Vec<IpAddr>,
    pub failsafe: FailsafePorts,
}

/// [`compile`], with `host` as the node's own endpoint: host endpoint
/// policies (WeirClusterPolicy `subject.nodeSelector`) that select its
/// labels judge the node's flows (`PolicySpec::host`).
pub fn compile_with_host(
    input: &PolicyInput,
    generation: u64,
    node: &str,
    host: Option<&HostEndpoint>,
) -> Result<PolicySpec, PolicyError> {
    let eps = node_endpoints(input, node);
    compile_for_host(input, generation, &eps, host)
}

/// Compiles with `endpoints` (in this order) as the local endpoints.
pub fn compile_for(
    input: &PolicyInput,
    generation: u64,
    endpoints: &[&PodInfo],
) -> Result<PolicySpec, PolicyError> {
    compile_for_host(input, generation, endpoints, None)
}

/// [`compile_for`] with the node's own endpoint (see [`compile_with_host`]).
pub fn compile_for_host(
    input: &PolicyInput,
    generation: u64,
    endpoints: &[&PodInfo],
    host: Option<&HostEndpoint>,
) -> Result<PolicySpec, PolicyError> {
    // Objects are unique.
    let mut seen = BTreeSet::new();
    for p in &input.policies {
        if !seen.insert(p.object()) {
            return Err(PolicyError::Duplicate { object: p.object() });
        }
    }
    let ns_labels = namespace_labels(input);
    let policies = sorted_policies(&input.policies);

    // Rules, in precedence order of their policies.
    let mut rules: Vec<RuleInfo> = Vec::new();
    let mut crules: Vec<CRule> = Vec::new();
    let mut peers: Vec<&[Peer]> = Vec::new();
    let http = std::cell::RefCell::new(HttpSets::default());
    let dns = std::cell::RefCell::new(DnsSets::default());
    // Per policy and direction: rule ids.
    let mut policy_rules: Vec<[Vec<u32>; 2]> = Vec::new();
    for p in &policies {
        let mut ids: [Vec<u32>; 2] = [vec![], vec![]];
        for dir in [Direction::Ingress, Direction::Egress] {
            for (i, r) in p.rules(dir).iter().enumerate() {
                ids[dir as usize].push(rules.len() as u32);
                rules.push(RuleInfo {
                    tier: p.tier,
                    kind: p.kind.resource().to_string(),
                    namespace: p.namespace.clone(),
                    name: p.name.clone(),
                    direction: dir,
                    index: i,
                    action: r.action_text.clone(),
                    priority: (p.tier != Tier::Namespace
                        && p.kind != Kind::BaselineAdminNetworkPolicy)
                        .then_some(p.priority),
                });
                let l7 = r.http.as_ref().map(|h| {
                    let mut hs = http.borrow_mut();
                    hs.sets.push(h.clone());
                    hs.sets.len() as u32 - 1
                });
                let dns_set = r.dns.as_ref().map(|d| {
                    let mut ds = dns.borrow_mut();
                    ds.sets.push(d.clone());
                    ds.sets.len() as u32 - 1
                });
                crules.push(CRule {
                    action: r.action,
                    audit: p.audit,
                    ports: r.ports.clone(),
                    l7,
                    dns: dns_set,
                    fqdn: r.to_fqdns.clone(),
                });
                peers.push(&r.peers);
            }
        }
        policy_rules.push(ids);
    }

    // Identities: one per (namespace, pod labels), numbered in sorted order.
    let mut id_keys: BTreeSet<(&str, &Labels)> = BTreeSet::new();
    for p in &input.pods {
        id_keys.insert((&p.namespace, &p.labels));
    }
    let identities: HashMap<(&str, &Labels), Identity> = id_keys
        .into_iter()
        .enumerate()
        .map(|(i, k)| (k, IDENTITY_FIRST_POD + i as Identity))
        .collect();

    // CIDR regions: every cidr and except of every peer.
    let mut prefixes: BTreeSet<IpNet> = BTreeSet::new();
    for ps in &peers {
        for peer in ps.iter() {
            if let Peer::Cidr { cidr, except } = peer {
                prefixes.insert(*cidr);
                prefixes.extend(except.iter().copied());
            }
        }
    }
    let region_of = |a: IpAddr| -> Option<IpNet> {
        prefixes
            .iter()
            .filter(|n| n.contains(&a))
            .max_by_key(|n| n.prefix_len())
            .copied()
    };

    // Port profiles (named ports matter only through these).
    let mut profiles: Vec<&[ContainerPort]> = vec![&[]];

    let pkey = |ports: &'_ [ContainerPort]| -> Vec<(Option<String>, u16, Protocol)> {
        ports
            .iter()
            .map(|c| (c.name.clone(), c.port, c.protocol))
            .collect()
    };

    let mut profile_index: HashMap<Vec<(Option<String>, u16, Protocol)>, usize> = HashMap::new();
    profile_index.insert(vec![], 0);
    for p in &input.pods {
        let k = pkey(&p.ports);
        if let std::collections::hash_map::Entry::Vacant(e) = profile_index.entry(k) {
            e.insert(profiles.len());
            profiles.push(&p.ports);
        }
    }

    // Classes.
    let mut classes: Vec<Class> = Vec::new();
    let mut class_index: HashMap<(Identity, Option<IpNet>, usize), u32> = HashMap::new();
    let mut add_class = |classes: &mut Vec<Class>, c: Class| -> u32 {
        *class_index
            .entry((c.identity, c.region, c.profile))
            .or_insert_with(|| {
                classes.push(c);
                classes.len() as u32 - 1
            })
    };
    let world_class = add_class(
        &mut classes,
        Class {
            identity: IDENTITY_WORLD,
            pod: None,
            region: None,
            profile: 0,
        },
    );
    let mut spec_prefixes = Vec::new();
    for n in &prefixes {
        let c = add_class(
            &mut classes,
            Class {
                identity: IDENTITY_WORLD,
                pod: None,
                region: Some(*n),
                profile: 0,
            },
        );
        spec_prefixes.push((n.network(), n.prefix_len(), c));
    }
    let mut addresses: Vec<(IpAddr, u32)> = Vec::new();
    let mut addr_seen: HashMap<IpAddr, String> = HashMap::new();
    for p in &input.pods {
        let identity = identities[&(p.namespace.as_str(), &p.labels)];
        let profile = profile_index[&pkey(&p.ports)];
        let nsl = ns_labels[&p.namespace].clone();
        for a in [p.ipv4.map(IpAddr::V4), p.ipv6.map(IpAddr::V6)]
            .into_iter()
            .flatten()
        {
            if let Some(prev) = addr_seen.insert(a, format!("pods/{}/{}", p.namespace, p.name)) {
                return Err(PolicyError::Input(format!(
                    "pods/{}/{}: address {a} is already used by {prev}",
                    p.namespace, p.name
                )));
            }
            let c = add_class(
                &mut classes,
                Class {
                    identity,
                    pod: Some((p.namespace.clone(), nsl.clone(), p.labels.clone())),
                    region: region_of(a),
                    profile,
                },
            );
            addresses.push((a, c));
        }
    }
    for &a in &input.hosts {
        if addr_seen.insert(a, "a node".into()).is_some() {
            continue;
        }
        let c = add_class(
            &mut classes,
            Class {
                identity: IDENTITY_HOST,
                pod: None,
                region: region_of(a),
                profile: 0,
            },
        );
        addresses.push((a, c));
    }
    let nclasses = classes.len();

    // Which classes each rule's peers match, as sorted class lists. Built
    // from indexes instead of testing every (rule, class) pair: a CIDR peer
    // looks up the regions inside it, a pod peer tests only pod classes. So
    // 10k ipBlock rules compile in time linear in what they match, not in
    // rules × classes (which took seconds at 10k distinct CIDRs).
    let all_classes: Vec<u32> = (0..nclasses as u32).collect();
    let pod_classes: Vec<u32> = classes
        .iter()
        .enumerate()
        .filter(|(_, c)| c.pod.is_some())
        .map(|(k, _)| k as u32)
        .collect();
    let mut by_region: HashMap<IpNet, Vec<u32>> = HashMap::new();
    for (k, c) in classes.iter().enumerate() {
        if let Some(r) = c.region {
            by_region.entry(r).or_default().push(k as u32);
        }
    }
    // Regions by (family, first address), for "regions inside this CIDR".
    let mut region_span: Vec<(bool, u128, u128, IpNet)> = by_region
        .keys()
        .map(|n| {
            let (v6, first, last) = span(n);
            (v6, first, last, *n)
        })
        .collect();
    region_span.sort_unstable_by_key(|x| (x.0, x.1, x.2));
    let rule_classes: Vec<Vec<u32>> = peers
        .iter()
        .enumerate()
        .map(|(ri, ps)| {
            let mut out: Vec<u32> = Vec::new();
            if crules[ri].fqdn.is_some() {
                // toFQDNs peers are learned addresses, judged at run time.
                return out;
            }
            for peer in ps.iter() {
                match peer {
                    Peer::Any => {
                        out.clone_from(&all_classes);
                        break;
                    }
                    Peer::Pods { .. } => out.extend(
                        pod_classes
                            .iter()
                            .copied()
                            .filter(|&k| peer_matches(peer, &classes[k as usize])),
                    ),
                    Peer::Cidr { cidr, except } => {
                        let (v6, first, last) = span(cidr);
                        let lo = region_span.partition_point(|x| (x.0, x.1) < (v6, first));
                        for x in &region_span[lo..] {
                            if x.0 != v6 || x.1 > last {
                                break;
                            }
                            if x.2 <= last && !except.iter().any(|e| e.contains(&x.3)) {
                                out.extend_from_slice(&by_region[&x.3]);
                            }
                        }
                    }
                }
            }
            out.sort_unstable();
            out.dedup();
            out
        })
        .collect();

    // Tables.
    let mut cells: Vec<CellSpec> = Vec::new();
    let mut cell_index: HashMap<CellSpec, u32> = HashMap::new();
    let mut memo: HashMap<MemoKey, u32> = HashMap::new();
    let mut tables: Vec<Vec<u32>> = Vec::new();
    let mut table_index: HashMap<Vec<u32>, u32> = HashMap::new();
    let mut by_key: HashMap<(Identity, usize), EndpointTables> = HashMap::new();
    let mut eps_out = Vec::with_capacity(endpoints.len());
    for pod in endpoints {
        let identity = identities[&(pod.namespace.as_str(), &pod.labels)];
        let own_profile = profile_index[&pkey(&pod.ports)];
        if let Some(t) = by_key.get(&(identity, own_profile)) {
            eps_out.push(*t);
            continue;
        }
        let nsl = &ns_labels[&pod.namespace];
        let mut et = EndpointTables::default();
        for dir in [Direction::Ingress, Direction::Egress] {
            let mut admin = Vec::new();
            let mut ns = Vec::new();
            let mut baseline = Vec::new();
            let mut iso_any = false;
            let mut iso_enforced = false;
            let mut selected = false;
            for (pi, p) in policies.iter().enumerate() {
                if !p.subject.selects(&pod.namespace, nsl, &pod.labels) {
                    continue;
                }
                selected = true;
                let ids = &policy_rules[pi][dir as usize];
                match p.tier {
                    Tier::Admin => admin.extend(ids),
                    Tier::Namespace => {
                        ns.extend(ids);
                        if p.isolates(dir) {
                            iso_any = true;
                            iso_enforced |= !p.audit;
                        }
                    }
                    Tier::Baseline => baseline.extend(ids),
                }
            }
            if !selected || (admin.is_empty() && ns.is_empty() && baseline.is_empty() && !iso_any) {
                continue;
            }
            // Per class, the rules of each tier whose peers match it, in
            // precedence order (sparse: only the classes each rule matches).
            let mut lists: [Vec<Vec<u32>>; 3] = std::array::from_fn(|_| vec![Vec::new(); nclasses]);
            for (t, ids) in [&admin, &ns, &baseline].into_iter().enumerate() {
                for &r in ids.iter() {
                    for &k in &rule_classes[r as usize] {
                        lists[t][k as usize].push(r);
                    }
                }
            }
            let mut row = Vec::with_capacity(nclasses);
            for (k, class) in classes.iter().enumerate() {
                let a = std::mem::take(&mut lists[0][k]);
                let n = std::mem::take(&mut lists[1][k]);
                let b = std::mem::take(&mut lists[2][k]);
                // Named ports are those of the destination pod.
                let profile = match dir {
                    Direction::Ingress => own_profile,
                    Direction::Egress => class.profile,
                };
                let key = (a, n, b, iso_any, iso_enforced, profile);
                let cell = match memo.get(&key) {
                    Some(&c) => c,
                    None => {
                        let r = Resolver {
                            rules: &crules,
                            admin: &key.0,
                            ns: &key.1,
                            baseline: &key.2,
                            isolated: iso_any,
                            isolated_enforced: iso_enforced,
                            ports: profiles[profile],
                            http: &http,
                            dns: &dns,
                            failsafe: &[],
                        };
                        let spec = r.cell();
                        let id = *cell_index.entry(spec.clone()).or_insert_with(|| {
                            cells.push(spec);
                            cells.len() as u32 - 1
                        });
                        memo.insert(key, id);
                        id
                    }
                };
                row.push(cell);
            }
            let t = *table_index.entry(row.clone()).or_insert_with(|| {
                tables.push(row);
                tables.len() as u32 - 1
            });
            match dir {
                Direction::Ingress => et.ingress = Some(t),
                Direction::Egress => et.egress = Some(t),
            }
        }
        by_key.insert((identity, own_profile), et);
        eps_out.push(et);
    }
    // toFQDNs egress rules per endpoint (namespace tier, WeirPolicy only).
    let mut fqdn_selectors: Vec<String> = Vec::new();
    let mut fqdn_egress: Vec<(u32, Vec<FqdnRuleSpec>)> = Vec::new();
    for (i, pod) in endpoints.iter().enumerate() {
        let nsl = &ns_labels[&pod.namespace];
        let mut list = Vec::new();
        for (pi, p) in policies.iter().enumerate() {
            if p.tier != Tier::Namespace || !p.subject.selects(&pod.namespace, nsl, &pod.labels) {
                continue;
            }
            for &r in &policy_rules[pi][Direction::Egress as usize] {
                let cr = &crules[r as usize];
                let Some(names) = &cr.fqdn else { continue };
                for n in names {
                    let sel = match fqdn_selectors.iter().position(|s| s == n) {
                        Some(k) => k,
                        None => {
                            fqdn_selectors.push(n.clone());
                            fqdn_selectors.len() - 1
                        }
                    } as u32;
                    let spec = |proto: u8, first: u16, last: u16| FqdnRuleSpec {
                        selector: sel,
                        rule: RuleId(r),
                        proto,
                        first,
                        last,
                    };
                    match &cr.ports {
                        None => list.push(spec(0, 0, 65535)),
                        Some(ms) => {
                            for m in ms {
                                if let PortMatch::Range {
                                    protocol,
                                    start,
                                    end,
                                } = m
                                {
                                    list.push(spec(proto_number(*protocol), *start, *end));
                                }
                            }
                        }
                    }
                }
            }
        }
        if !list.is_empty() {
            fqdn_egress.push((i as u32, list));
        }
    }
    // The node itself (host endpoint policy): Admin and Baseline tiers of
    // the policies whose subject selects it, failsafe ports first.
    let mut host_spec = None;
    if let Some(h) = host {
        let mut et = EndpointTables::default();
        for dir in [Direction::Ingress, Direction::Egress] {
            let mut admin = Vec::new();
            let mut baseline = Vec::new();
            for (pi, p) in policies.iter().enumerate() {
                if !p.subject.selects_node(&h.labels) {
                    continue;
                }
                let ids = &policy_rules[pi][dir as usize];
                match p.tier {
                    Tier::Admin => admin.extend(ids),
                    // Host policies are cluster-scoped: never this tier.
                    Tier::Namespace => {}
                    Tier::Baseline => baseline.extend(ids),
                }
            }
            if admin.is_empty() && baseline.is_empty() {
                continue;
            }
            let failsafe = match dir {
                Direction::Ingress => &h.failsafe.inbound,
                Direction::Egress => &h.failsafe.outbound,
            };
            let mut row = Vec::with_capacity(nclasses);
            for k in 0..nclasses as u32 {
                let matching = |ids: &[u32]| -> Vec<u32> {
                    ids.iter()
                        .copied()
                        .filter(|&r| rule_classes[r as usize].binary_search(&k).is_ok())
                        .collect()
                };
                let (a, b) = (matching(&admin), matching(&baseline));
                // Named ports: the node has none; an egress peer pod's.
                let profile = match dir {
                    Direction::Ingress => 0,
                    Direction::Egress => classes[k as usize].profile,
                };
                let r = Resolver {
                    rules: &crules,
                    admin: &a,
                    ns: &[],
                    baseline: &b,
                    isolated: false,
                    isolated_enforced: false,
                    ports: profiles[profile],
                    http: &http,
                    dns: &dns,
                    failsafe,
                };
                let spec = r.cell();
                let id = *cell_index.entry(spec.clone()).or_insert_with(|| {
                    cells.push(spec);
                    cells.len() as u32 - 1
                });
                row.push(id);
            }
            let t = *table_index.entry(row.clone()).or_insert_with(|| {
                tables.push(row);
                tables.len() as u32 - 1
            });
            match dir {
                Direction::Ingress => et.ingress = Some(t),
                Direction::Egress => et.egress = Some(t),
            }
        }
        if et.ingress.is_some() || et.egress.is_some() {
            host_spec = Some(HostTables {
                addrs: h.addrs.clone(),
                tables: et,
            });
        }
    }
    Ok(PolicySpec {
        host: host_spec,
        generation,
        rules,
        classes: classes.iter().map(|c| c.identity).collect(),
        addresses,
        prefixes: spec_prefixes,
        world_class,
        cells,
        tables,
        endpoints: eps_out,
        http: http.into_inner().sets,
        dns: dns.into_inner().sets,
        fqdn_selectors,
        fqdn_egress,
    })
}

/// (IPv6?, first address, last address) of a prefix, as integers.
fn span(n: &IpNet) -> (bool, u128, u128) {
    match n {
        IpNet::V4(n) => (
            false,
            u32::from(n.network()) as u128,
            u32::from(n.broadcast()) as u128,
        ),
        IpNet::V6(n) => (true, u128::from(n.network()), u128::from(n.broadcast())),
    }
}

fn peer_matches(peer: &Peer, c: &Class) -> bool {
    match peer {
        Peer::Any => true,
        Peer::Pods { namespaces, pods } => match &c.pod {
            None => false,
            Some((ns, nsl, labels)) => {
                let ns_ok = match namespaces {
                    Namespaces::Same(n) => n == ns,
                    Namespaces::Selector(s) => s.matches(nsl),
                };
                ns_ok && pods.matches(labels)
            }
        },
        Peer::Cidr { cidr, except } => match c.region {
            Some(r) => cidr.contains(&r) && !except.iter().any(|e| e.contains(&r)),
            None => false,
        },
    }
}

/// Evaluates the precedence for one (endpoint, direction, peer class).
struct Resolver<'a> {
    rules: &'a [CRule],
    admin: &'a [u32],
    ns: &'a [u32],
    baseline: &'a [u32],
    isolated: bool,
    isolated_enforced: bool,
    /// Container ports of the destination pod (named ports).
    ports: &'a [ContainerPort],
    http: &'a std::cell::RefCell<HttpSets>,
    dns: &'a std::cell::RefCell<DnsSets>,
    /// The node's failsafe ports in this direction (host tables only):
    /// allowed before any tier.
    failsafe: &'a [FailsafePort],
}

impl Resolver<'_> {
    fn matches(&self, rid: u32, proto: Option<Protocol>, port: u16) -> bool {
        let Some(list) = &self.rules[rid as usize].ports else {
            return true;
        };
        let Some(proto) = proto else {
            return false;
        };
        list.iter().any(|m| match m {
            PortMatch::Range {
                protocol,
                start,
                end,
            } => *protocol == proto && *start <= port && port <= *end,
            PortMatch::Named { protocol, name } => resolve_named(self.ports, name, *protocol)
                .any(|c| c.protocol == proto && c.port == port),
        })
    }

    /// The decision for `proto` (None: a protocol without ports) and `port`.
    fn eval(&self, proto: Option<Protocol>, port: u16) -> Decision {
        if let Some(p) = proto {
            if self
                .failsafe
                .iter()
                .any(|f| f.contains(proto_number(p), port))
            {
                return Decision::FAILSAFE;
            }
        }
        let mut log = false;
        let mut audit: Option<RuleId> = None;
        let finish_allow = |rule: RuleId, audit: Option<RuleId>, log: bool| match audit {
            Some(a) => Decision {
                audit: true,
                log,
                ..Decision::deny(a)
            },
            None => Decision {
                log,
                ..Decision::allow(rule)
            },
        };
        // 1. Admin tier.
        'admin: for &r in self.admin {
            if !self.matches(r, proto, port) {
                continue;
            }
            let cr = &self.rules[r as usize];
            match cr.action {
                RuleAction::Log => log = true,
                RuleAction::Pass => break 'admin,
                RuleAction::Allow => return finish_allow(RuleId(r), audit, log),
                RuleAction::Deny if cr.audit => {
                    audit.get_or_insert(RuleId(r));
                }
                RuleAction::Deny => {
                    return Decision {
                        log,
                        ..Decision::deny(RuleId(r))
                    }
                }
            }
        }
        // 2. Namespace tier: Deny beats Allow; isolation denies the rest.
        let mut allow = None;
        // Matching L7 allows (rule, own set) while no plain allow matched.
        let mut l7_allows: Vec<(RuleId, u32)> = Vec::new();
        // Matching DNS allows (rule, own set), likewise.
        let mut dns_allows: Vec<(RuleId, u32)> = Vec::new();
        let mut plain_allow = None;
        let mut deny = None;
        let mut audit_deny = None;
        for &r in self.ns {
            if !self.matches(r, proto, port) {
                continue;
            }
            let cr = &self.rules[r as usize];
            match cr.action {
                RuleAction::Log => log = true,
                RuleAction::Deny if cr.audit => {
                    audit_deny.get_or_insert(RuleId(r));
                }
                RuleAction::Deny => {
                    deny.get_or_insert(RuleId(r));
                }
                RuleAction::Allow => {
                    allow.get_or_insert(RuleId(r));
                    match (cr.l7, cr.dns) {
                        (Some(set), _) => l7_allows.push((RuleId(r), set)),
                        (None, Some(set)) => dns_allows.push((RuleId(r), set)),
                        (None, None) => {
                            plain_allow.get_or_insert(RuleId(r));
                        }
                    }
                }
                RuleAction::Pass => {}
            }
        }
        if let Some(d) = deny {
            return Decision {
                log,
                ..Decision::deny(d)
            };
        }
        if let Some(a) = audit_deny {
            audit.get_or_insert(a);
        }
        if let Some(a) = allow {
            // Union semantics of the namespace tier: a matching allow
            // without HTTP rules admits the flow unrestricted; else the
            // request must match one of the matching allows' HTTP rules
            // (the union of their sets; the first such rule decides).
            let d = finish_allow(plain_allow.unwrap_or(a), audit, log);
            if plain_allow.is_some() || audit.is_some() {
                return d;
            }
            if l7_allows.is_empty() {
                // Same union semantics for DNS rules (egress).
                if dns_allows.is_empty() {
                    return d;
                }
                let parts: Vec<u32> = dns_allows.iter().map(|&(_, s)| s).collect();
                let set = self.dns.borrow_mut().union(parts);
                return Decision {
                    dns: Some(set),
                    ..finish_allow(dns_allows[0].0, None, log)
                };
            }
            let parts: Vec<u32> = l7_allows.iter().map(|&(_, s)| s).collect();
            let set = self.http.borrow_mut().union(parts);
            return Decision {
                l7: Some(set),
                ..finish_allow(l7_allows[0].0, None, log)
            };
        }
        if self.isolated {
            if self.isolated_enforced {
                return Decision {
                    log,
                    ..Decision::deny(RuleId::IMPLICIT_DENY)
                };
            }
            audit.get_or_insert(RuleId::IMPLICIT_DENY);
        }
        // 3. Baseline tier.
        for &r in self.baseline {
            if !self.matches(r, proto, port) {
                continue;
            }
            match self.rules[r as usize].action {
                RuleAction::Log => log = true,
                RuleAction::Pass => break,
                RuleAction::Allow => return finish_allow(RuleId(r), audit, log),
                RuleAction::Deny => {
                    return Decision {
                        log,
                        ..Decision::deny(RuleId(r))
                    }
                }
            }
        }
        // 4. Default allow.
        finish_allow(RuleId::DEFAULT_ALLOW, audit, log)
    }

    /// Segment boundaries of one protocol's port space.
    fn segments(&self, proto: Protocol) -> Vec<(u16, Decision)> {
        let mut bounds: BTreeSet<u32> = BTreeSet::from([0]);
        for &r in self.admin.iter().chain(self.ns).chain(self.baseline) {
            for m in self.rules[r as usize].ports.iter().flatten() {
                match m {
                    PortMatch::Range {
                        protocol,
                        start,
                        end,
                    } if *protocol == proto => {
                        bounds.insert(*start as u32);
                        bounds.insert(*end as u32 + 1);
                    }
                    PortMatch::Named { protocol, name } => {
                        for c in resolve_named(self.ports, name, *protocol) {
                            if c.protocol == proto {
                                bounds.insert(c.port as u32);
                                bounds.insert(c.port as u32 + 1);
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        for f in self.failsafe {
            if f.proto == proto_number(proto) {
                bounds.insert(f.first as u32);
                bounds.insert(f.last as u32 + 1);
            }
        }
        let mut out: Vec<(u16, Decision)> = Vec::new();
        for b in bounds.into_iter().filter(|&b| b <= 65535) {
            let d = self.eval(Some(proto), b as u16);
            if out.last().map(|l| l.1) != Some(d) {
                out.push((b as u16, d));
            }
        }
        out
    }

    fn cell(&self) -> CellSpec {
        CellSpec {
            other: self.eval(None, 0),
            tcp: self.segments(Protocol::Tcp),
            udp: self.segments(Protocol::Udp),
            sctp: self.segments(Protocol::Sctp),
        }
    }
}

/// The protocol number of a Kubernetes protocol.
pub fn protocol_number(p: Protocol) -> u8 {
    proto_number(p)
}
