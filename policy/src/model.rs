//! Parsed, validated policy objects: every supported kind in one shape.
//!
//! A [`Policy`] has a tier, a precedence key inside its tier, a subject
//! (the pods it applies to), ordered ingress and egress rules, and for the
//! namespace tier whether it isolates its subjects per direction.

use crate::selector::{Labels, Selector};
use ipnet::IpNet;
use serde::Serialize;
use std::net::IpAddr;
pub use weir_model::policy::{Direction, Tier};
pub use weir_model::Protocol;

/// The kind of a policy object (the resource it came from).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Kind {
    ClusterNetworkPolicy,
    AdminNetworkPolicy,
    WeirClusterPolicy,
    NetworkPolicy,
    WeirPolicy,
    BaselineAdminNetworkPolicy,
}

impl Kind {
    /// Plural lower-case resource name, used in object names.
    pub fn resource(self) -> &'static str {
        match self {
            Kind::ClusterNetworkPolicy => "clusternetworkpolicies",
            Kind::AdminNetworkPolicy => "adminnetworkpolicies",
            Kind::WeirClusterPolicy => "weirclusterpolicies",
            Kind::NetworkPolicy => "networkpolicies",
            Kind::WeirPolicy => "weirpolicies",
            Kind::BaselineAdminNetworkPolicy => "baselineadminnetworkpolicies",
        }
    }

    /// Order of kinds with the same tier and priority (then by name).
    pub fn rank(self) -> u8 {
        self as u8
    }
}

/// What a matching rule does (the spelling as written is kept in
/// [`Rule::action_text`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum RuleAction {
    /// Allow (NetworkPolicy rules, Allow, Accept).
    Allow,
    Deny,
    /// Skip the rest of this tier.
    Pass,
    /// Mark the flow as logged, keep evaluating.
    Log,
}

/// Which namespaces a pod peer may be in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum Namespaces {
    /// The policy's own namespace (NetworkPolicy peer with only podSelector).
    Same(String),
    Selector(Selector),
}

/// One peer of a rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum Peer {
    /// Anything (NetworkPolicy rule with no `from`/`to`).
    Any,
    /// Pods whose namespace matches and whose labels match (AND).
    Pods {
        namespaces: Namespaces,
        pods: Selector,
    },
    /// Addresses in `cidr` but in none of `except`.
    Cidr { cidr: IpNet, except: Vec<IpNet> },
}

/// One port match.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum PortMatch {
    /// `protocol` ports `start..=end` (a whole protocol is 1..=65535... or
    /// 0..=65535: see [`PortMatch::all`]).
    Range {
        protocol: Protocol,
        start: u16,
        end: u16,
    },
    /// A named container port of the destination pod; `protocol` None = any.
    Named {
        protocol: Option<Protocol>,
        name: String,
    },
}

impl PortMatch {
    /// Every port of a protocol.
    pub fn all(protocol: Protocol) -> PortMatch {
        PortMatch::Range {
            protocol,
            start: 0,
            end: 65535,
        }
    }
}

/// One ingress or egress rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Rule {
    pub action: RuleAction,
    /// As written (`Accept`, `Allow`, ...), for explain.
    pub action_text: String,
    /// OR of peers.
    pub peers: Vec<Peer>,
    /// OR of port matches; `None` = every protocol and port.
    pub ports: Option<Vec<PortMatch>>,
    pub name: Option<String>,
    /// WeirPolicy ingress Allow only: every HTTP request on a connection
    /// this rule admits must match one of these (else 403 + close).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http: Option<weir_model::l7::HttpRuleSetSpec>,
    /// WeirPolicy egress Allow only: every DNS query on a flow this rule
    /// admits must ask for a name matching one of these patterns
    /// (`example.com`, `*.example.com`), else weir answers REFUSED.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns: Option<Vec<String>>,
    /// WeirPolicy egress Allow only (`toFQDNs`): the peers are the
    /// addresses allowed DNS answers returned for names matching one of
    /// these patterns (`peers` is empty and matches nothing statically).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to_fqdns: Option<Vec<String>>,
}

/// The pods a policy applies to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum Subject {
    /// Pods of one namespace (NetworkPolicy, WeirPolicy).
    Namespace { namespace: String, pods: Selector },
    /// Pods of matching namespaces (cluster-scoped kinds).
    Cluster {
        namespaces: Selector,
        pods: Selector,
    },
    /// Nodes by their labels (WeirClusterPolicy `subject.nodeSelector`:
    /// host endpoint policy, docs/policy.md). Selects no pod.
    Nodes { nodes: Selector },
}

impl Subject {
    pub fn selects(&self, namespace: &str, ns_labels: &Labels, pod_labels: &Labels) -> bool {
        match self {
            Subject::Namespace {
                namespace: ns,
                pods,
            } => ns == namespace && pods.matches(pod_labels),
            Subject::Cluster { namespaces, pods } => {
                namespaces.matches(ns_labels) && pods.matches(pod_labels)
            }
            Subject::Nodes { .. } => false,
        }
    }

    /// Whether this is a host endpoint policy's subject selecting a node
    /// with these labels.
    pub fn selects_node(&self, node_labels: &Labels) -> bool {
        match self {
            Subject::Nodes { nodes } => nodes.matches(node_labels),
            _ => false,
        }
    }
}

/// A parsed, validated policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Policy {
    pub kind: Kind,
    pub namespace: Option<String>,
    pub name: String,
    pub tier: Tier,
    /// Lower first; 0 for the namespace tier, 1001 for the
    /// BaselineAdminNetworkPolicy (after every Baseline ClusterNetworkPolicy).
    pub priority: i32,
    pub subject: Subject,
    pub ingress: Vec<Rule>,
    pub egress: Vec<Rule>,
    /// Namespace tier: whether the subjects are isolated (default deny) per
    /// direction: `[ingress, egress]`.
    pub isolates: [bool; 2],
    /// WeirPolicy/WeirClusterPolicy `spec.audit`: its denies are reported,
    /// not enforced.
    pub audit: bool,
}

impl Policy {
    /// `networkpolicies/<ns>/<name>` or `clusternetworkpolicies/<name>`.
    pub fn object(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{}/{}/{}", self.kind.resource(), ns, self.name),
            None => format!("{}/{}", self.kind.resource(), self.name),
        }
    }

    pub fn rules(&self, dir: Direction) -> &[Rule] {
        match dir {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }

    pub fn isolates(&self, dir: Direction) -> bool {
        self.isolates[dir as usize]
    }

    /// Precedence key: tier, priority, kind, namespace, name.
    pub fn order_key(&self) -> (Tier, i32, u8, &str, &str) {
        (
            self.tier,
            self.priority,
            self.kind.rank(),
            self.namespace.as_deref().unwrap_or(""),
            &self.name,
        )
    }
}

impl Peer {
    /// Whether an address falls in a CIDR peer (pods peers: never).
    pub fn cidr_contains(&self, addr: IpAddr) -> bool {
        match self {
            Peer::Cidr { cidr, except } => {
                cidr.contains(&addr) && !except.iter().any(|e| e.contains(&addr))
            }
            _ => false,
        }
    }
}
