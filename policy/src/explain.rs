//! `weir policy explain`: why a flow is allowed or denied. Compiles the
//! input with both pods as local endpoints and asks the dataplane's own
//! [`CompiledPolicy::judge`], so the answer is the datapath's answer.

use crate::compile::{compile_for, protocol_number};
use crate::{PodInfo, PolicyError, PolicyInput};
use serde::Serialize;
use std::net::IpAddr;
use weir_dataplane::policy::{Action, CompiledPolicy, Decision, Peer, RuleInfo};
use weir_topo::Protocol;

/// One direction of the verdict.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SideExplanation {
    pub decision: Decision,
    /// `allow`, `deny` or `audit` (denied, passes).
    pub verdict: &'static str,
    /// The deciding rule, if a rule decided.
    pub rule: Option<RuleInfo>,
    /// One line: `deny by networkpolicies/prod/x ingress[0] (Allow)`.
    pub text: String,
}

/// The verdict on a flow and what decided it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Explanation {
    pub allowed: bool,
    pub from: String,
    pub to: String,
    pub protocol: String,
    pub port: u16,
    pub egress: SideExplanation,
    pub ingress: SideExplanation,
}

impl std::fmt::Display for Explanation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{} -> {} {}/{}: {}",
            self.from,
            self.to,
            self.protocol,
            self.port,
            if self.allowed { "ALLOWED" } else { "DENIED" }
        )?;
        writeln!(f, "  egress of {}: {}", self.from, self.egress.text)?;
        write!(f, "  ingress of {}: {}", self.to, self.ingress.text)
    }
}

fn side(p: &CompiledPolicy, d: Decision) -> SideExplanation {
    SideExplanation {
        decision: d,
        verdict: match (d.action, d.audit) {
            (Action::Allow, _) => "allow",
            (Action::Deny, true) => "audit",
            (Action::Deny, false) => "deny",
        },
        rule: p.rule(d.rule).cloned(),
        text: p.describe(&d),
    }
}

fn find<'a>(input: &'a PolicyInput, (ns, name): (&str, &str)) -> Result<&'a PodInfo, PolicyError> {
    input
        .pods
        .iter()
        .find(|p| p.namespace == ns && p.name == name)
        .ok_or_else(|| PolicyError::Input(format!("pods/{ns}/{name}: no such pod")))
}

/// Explains `from` → `to` (`(namespace, pod)`) on `protocol`/`port`.
/// Uses the pods' IPv4 addresses when both have one, else IPv6.
pub fn explain(
    input: &PolicyInput,
    from: (&str, &str),
    to: (&str, &str),
    protocol: Protocol,
    port: u16,
) -> Result<Explanation, PolicyError> {
    let src = find(input, from)?;
    let dst = find(input, to)?;
    let (sa, da): (IpAddr, IpAddr) = match (src.ipv4, dst.ipv4, src.ipv6, dst.ipv6) {
        (Some(a), Some(b), _, _) => (a.into(), b.into()),
        (_, _, Some(a), Some(b)) => (a.into(), b.into()),
        _ => {
            return Err(PolicyError::Input(format!(
                "pods/{}/{} and pods/{}/{} share no address family",
                from.0, from.1, to.0, to.1
            )))
        }
    };
    let spec = compile_for(input, 0, &[src, dst])?;
    let compiled = CompiledPolicy::build(spec)?;
    let j = compiled.judge(
        Peer {
            endpoint: Some(0),
            addr: sa,
        },
        Peer {
            endpoint: Some(1),
            addr: da,
        },
        protocol_number(protocol),
        port,
    );
    Ok(Explanation {
        allowed: j.allowed,
        from: format!("{}/{}", from.0, from.1),
        to: format!("{}/{}", to.0, to.1),
        protocol: protocol.to_string(),
        port,
        egress: side(&compiled, j.egress),
        ingress: side(&compiled, j.ingress),
    })
}
