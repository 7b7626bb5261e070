//! Host policy on the node's OWN outbound traffic (docs/policy.md, "The
//! node's own outbound traffic"): the node's egress host table, as the
//! policy compiler resolved it (the very cells `CompiledPolicy::judge` and
//! `weir explain` use), rendered as an nftables table `inet weir_host` in
//! the node's network namespace, hooked at `output` only. The node's own
//! connections to the world and other nodes leave through its kernel, never
//! through AF_XDP, so the kernel has to judge them (as Calico's host
//! endpoints do with iptables).
//!
//! Why render the compiled cells and not the rules one by one: the cells
//! already hold the precedence (Admin → Baseline tiers, priority, `Pass`,
//! failsafe ports first, default allow), so nftables gives the verdict
//! `judge` gives for every (address, protocol, port) without re-implementing
//! the tiers in nftables; the rules' names ride along as counter comments.
//!
//! Why the `nft` binary and not a crate: the crates that talk netlink to
//! nf_tables (`rustables`, `nftnl`) need libnftnl/libmnl at build time and
//! expose rule expressions one by one; `nft -f` takes a whole table in one
//! atomic transaction, which is what this needs (setup.sh installs
//! nftables). The counters come back with `nft -j list table`.

use anyhow::Context;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::io::Write as _;
use std::process::{Command, Stdio};
use weir_model::policy::{
    Action, CellSpec, Decision, FailsafePort, PolicySpec, RuleId, PROTO_SCTP, PROTO_TCP, PROTO_UDP,
};

/// The table's family and name: `inet weir_host`.
pub const TABLE: &str = "inet weir_host";

/// The file (in the node's state directory) holding the ruleset last
/// applied, so an unchanged compile does not touch nftables.
pub const APPLIED_FILE: &str = "host-egress.nft";

/// One direction's decision as a verdict chain: `(rule, allow, audit)`.
type VerdictKey = (u32, bool, bool);

/// The nftables text of the node's egress host table (the `table inet
/// weir_host { ... }` block), or `None` when no host policy with egress
/// rules selects the node (`spec.host` has no egress table: default allow,
/// no table). `failsafe_out`: `--failsafe-outbound`, accepted before any
/// rule (also resolved into the cells; first here, cheap and readable).
/// `host_ifname`: the node's end of its host port (traffic to its pods,
/// judged by the worker).
pub fn ruleset(
    spec: &PolicySpec,
    failsafe_out: &[FailsafePort],
    host_ifname: &str,
) -> anyhow::Result<Option<String>> {
    let Some(host) = &spec.host else {
        return Ok(None);
    };
    let Some(t) = host.tables.egress else {
        return Ok(None);
    };
    let row = spec
        .tables
        .get(t as usize)
        .with_context(|| format!("host egress: table {t} out of range"))?;
    anyhow::ensure!(
        row.len() == spec.classes.len(),
        "host egress: table {t} has {} classes, the policy {}",
        row.len(),
        spec.classes.len()
    );
    let cell_of = |class: u32| -> anyhow::Result<u32> {
        row.get(class as usize)
            .copied()
            .with_context(|| format!("host egress: class {class} out of range"))
    };
    // Verdict chains (one per distinct decision) and cell chains (one per
    // cell the node's table uses), in first-use order.
    let mut verdicts: BTreeMap<VerdictKey, (usize, Decision)> = BTreeMap::new();
    let mut verdict = |d: Decision| -> usize {
        let key = (d.rule.0, d.action == Action::Allow, d.audit);
        let n = verdicts.len();
        verdicts.entry(key).or_insert((n, d)).0
    };
    let mut cells_used: BTreeMap<u32, String> = BTreeMap::new();
    let mut cell_chain =
        |cell: u32, verdict: &mut dyn FnMut(Decision) -> usize| -> anyhow::Result<()> {
            if cells_used.contains_key(&cell) {
                return Ok(());
            }
            let c = spec
                .cells
                .get(cell as usize)
                .with_context(|| format!("host egress: cell {cell} out of range"))?;
            cells_used.insert(cell, cell_body(c, verdict)?);
            Ok(())
        };

    // Destinations: exact addresses first, then prefixes longest first, then
    // the world class: `class_of`'s order.
    let mut exact: [BTreeMap<u32, Vec<String>>; 2] = Default::default();
    for (a, class) in &spec.addresses {
        let cell = cell_of(*class)?;
        cell_chain(cell, &mut verdict)?;
        exact[usize::from(a.is_ipv6())]
            .entry(cell)
            .or_default()
            .push(a.to_string());
    }
    // (family, prefix length) → cell → prefixes.
    let mut prefixes: BTreeMap<(usize, std::cmp::Reverse<u8>), BTreeMap<u32, Vec<String>>> =
        BTreeMap::new();
    for (a, len, class) in &spec.prefixes {
        let max = if a.is_ipv4() { 32 } else { 128 };
        anyhow::ensure!(*len <= max, "host egress: prefix {a}/{len} out of range");
        let cell = cell_of(*class)?;
        cell_chain(cell, &mut verdict)?;
        prefixes
            .entry((usize::from(a.is_ipv6()), std::cmp::Reverse(*len)))
            .or_default()
            .entry(cell)
            .or_default()
            .push(format!("{a}/{len}"));
    }
    let world = cell_of(spec.world_class)?;
    cell_chain(world, &mut verdict)?;

    let mut out = String::new();
    writeln!(out, "table {TABLE} {{")?;
    let mut vs: Vec<_> = verdicts.values().collect();
    vs.sort_by_key(|(i, _)| *i);
    for (i, d) in vs {
        let what = if d.passes() { "accept" } else { "drop" };
        writeln!(
            out,
            "  chain v{i} {{\n    counter {what} comment \"{}\"\n  }}",
            comment(spec, d)
        )?;
    }
    for (cell, body) in &cells_used {
        writeln!(out, "  chain c{cell} {{\n{body}  }}")?;
    }
    writeln!(out, "  chain out {{")?;
    writeln!(
        out,
        "    type filter hook output priority filter; policy accept;"
    )?;
    writeln!(out, "    ct state established,related accept")?;
    writeln!(out, "    oifname \"lo\" accept")?;
    writeln!(out, "    oifname \"{host_ifname}\" accept")?;
    // IPv6 neighbour discovery and MLD: the kernel's own link traffic (as
    // ARP, which an inet table never sees).
    writeln!(
        out,
        "    icmpv6 type {{ nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert, mld-listener-report, mld2-listener-report }} accept"
    )?;
    for f in failsafe_out {
        let proto = match f.proto {
            PROTO_TCP => "tcp",
            PROTO_UDP => "udp",
            PROTO_SCTP => "sctp",
            _ => continue,
        };
        let ports = if f.first == f.last {
            f.first.to_string()
        } else {
            format!("{}-{}", f.first, f.last)
        };
        writeln!(
            out,
            "    meta l4proto {proto} th dport {ports} counter accept comment \"failsafe port\""
        )?;
    }
    for (fam, by_cell) in exact.iter().enumerate() {
        vmap(&mut out, fam, by_cell)?;
    }
    for ((fam, _), by_cell) in &prefixes {
        vmap(&mut out, *fam, by_cell)?;
    }
    writeln!(out, "    goto c{world}")?;
    writeln!(out, "  }}")?;
    writeln!(out, "}}")?;
    Ok(Some(out))
}

/// `ip daddr vmap { A : goto cN, ... }` for one family's addresses.
fn vmap(out: &mut String, fam: usize, by_cell: &BTreeMap<u32, Vec<String>>) -> std::fmt::Result {
    if by_cell.is_empty() {
        return Ok(());
    }
    let key = if fam == 0 { "ip daddr" } else { "ip6 daddr" };
    let elems: Vec<String> = by_cell
        .iter()
        .flat_map(|(cell, addrs)| addrs.iter().map(move |a| format!("{a} : goto c{cell}")))
        .collect();
    writeln!(out, "    {key} vmap {{ {} }}", elems.join(", "))
}

/// The rules of one cell's chain: per protocol with ports, its segments as
/// a verdict map; every other protocol (ICMP, ...) the cell's `other`.
fn cell_body(c: &CellSpec, verdict: &mut dyn FnMut(Decision) -> usize) -> anyhow::Result<String> {
    let mut body = String::new();
    for (name, segs) in [("tcp", &c.tcp), ("udp", &c.udp), ("sctp", &c.sctp)] {
        anyhow::ensure!(
            segs.first().is_some_and(|s| s.0 == 0) && segs.windows(2).all(|w| w[0].0 < w[1].0),
            "host egress: a cell's {name} segments do not start at 0 in order"
        );
        if let [(_, d)] = segs.as_slice() {
            writeln!(body, "    meta l4proto {name} goto v{}", verdict(*d))?;
            continue;
        }
        let elems: Vec<String> = segs
            .iter()
            .enumerate()
            .map(|(i, (first, d))| {
                let last = segs.get(i + 1).map_or(u16::MAX, |n| n.0 - 1);
                let ports = if *first == last {
                    first.to_string()
                } else {
                    format!("{first}-{last}")
                };
                format!("{ports} : goto v{}", verdict(*d))
            })
            .collect();
        writeln!(
            body,
            "    meta l4proto {name} th dport vmap {{ {} }}",
            elems.join(", ")
        )?;
    }
    writeln!(body, "    goto v{}", verdict(c.other))?;
    Ok(body)
}

/// What a verdict chain's counter is: the deciding rule as `weir flows`
/// names it (at most 120 bytes, no quotes: nftables' comment limit).
fn comment(spec: &PolicySpec, d: &Decision) -> String {
    let rule = match d.rule {
        RuleId::DEFAULT_ALLOW => "default allow".to_string(),
        RuleId::FAILSAFE => "failsafe port".to_string(),
        RuleId::IMPLICIT_DENY => "isolated (no rule allowed it)".to_string(),
        RuleId::HOST => "node traffic".to_string(),
        RuleId::NOT_APPLICABLE => "not applicable".to_string(),
        r => match spec.rules.get(r.0 as usize) {
            Some(info) => format!("{info} ({})", info.action),
            None => format!("rule {}", r.0),
        },
    };
    let mut s = if d.audit && d.action == Action::Deny {
        format!("{rule} audit: would deny")
    } else {
        rule
    };
    s.retain(|c| c != '"' && c != '\\' && !c.is_control());
    if s.len() > 120 {
        let mut cut = 120;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

/// `/run/netns/NAME` for a name, the path itself for a path.
fn netns_path(netns: &str) -> String {
    if netns.contains('/') {
        netns.to_string()
    } else {
        format!("/run/netns/{netns}")
    }
}

/// Runs `nft ARGS` in `netns` with `stdin` as its input.
fn nft(netns: &str, args: &[&str], stdin: Option<&str>) -> anyhow::Result<std::process::Output> {
    let mut child = Command::new("nsenter")
        .arg(format!("--net={}", netns_path(netns)))
        .arg("nft")
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("nsenter nft (is nftables installed?)")?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())?;
    }
    Ok(child.wait_with_output()?)
}

/// Replaces the node's table with `table` (`None`: removes it), in one
/// nftables transaction: a failure leaves the previous table in force.
pub fn apply(netns: &str, table: Option<&str>) -> anyhow::Result<()> {
    // Declaring the table first makes the delete valid when none exists.
    let mut text = format!("table {TABLE}\ndelete table {TABLE}\n");
    if let Some(t) = table {
        text.push_str(t);
    }
    let out = nft(netns, &["-f", "/dev/stdin"], Some(&text))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        anyhow::bail!(
            "nft -f: {}",
            err.lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("failed")
        );
    }
    Ok(())
}

/// Applies `table` for `node` unless it is what was applied last (the
/// node's [`APPLIED_FILE`]); `None` removes a table weir applied.
pub fn sync(
    state: &crate::state::StateDir,
    node: &str,
    netns: &str,
    table: Option<&str>,
) -> anyhow::Result<()> {
    let file = state.node_dir(node).join(APPLIED_FILE);
    let last = std::fs::read_to_string(&file).ok();
    // Unchanged, and still there (a netns made again, or someone's `nft
    // flush ruleset`, would have lost it): nothing to do.
    if last.as_deref() == table && (table.is_none() || present(netns)) {
        return Ok(());
    }
    apply(netns, table).with_context(|| format!("nodes/{node}: host egress"))?;
    match table {
        Some(t) => {
            std::fs::create_dir_all(state.node_dir(node))?;
            crate::state::write_atomic(&file, t.as_bytes())?;
        }
        None => {
            let _ = std::fs::remove_file(&file);
        }
    }
    Ok(())
}

/// Whether the node's netns has the table.
fn present(netns: &str) -> bool {
    nft(netns, &["list", "table", "inet", "weir_host"], None).is_ok_and(|o| o.status.success())
}

/// The counters of the node's table: per verdict chain, what its comment
/// names and how many packets it saw. `None`: no table.
pub fn counters(netns: &str) -> anyhow::Result<Option<weir_model::ipc::HostEgressStatus>> {
    let out = nft(netns, &["-j", "list", "table", "inet", "weir_host"], None)?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("No such file or directory") {
            return Ok(None);
        }
        anyhow::bail!("nft list: {}", err.trim());
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("nft -j: bad JSON")?;
    Ok(Some(parse_counters(&v)))
}

/// [`counters`] from `nft -j list table` output.
pub fn parse_counters(v: &serde_json::Value) -> weir_model::ipc::HostEgressStatus {
    let mut st = weir_model::ipc::HostEgressStatus::default();
    let items = v["nftables"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    for rule in items.iter().filter_map(|i| i.get("rule")) {
        let expr = rule["expr"].as_array().map(Vec::as_slice).unwrap_or(&[]);
        let Some(packets) = expr
            .iter()
            .find_map(|e| e.get("counter").and_then(|c| c["packets"].as_u64()))
        else {
            continue;
        };
        let drop = expr.iter().any(|e| e.get("drop").is_some());
        let accept = expr.iter().any(|e| e.get("accept").is_some());
        if !drop && !accept {
            continue;
        }
        if drop {
            st.denied_packets += packets;
        } else {
            st.allowed_packets += packets;
        }
        let name = rule["comment"].as_str().unwrap_or("").to_string();
        st.rules.push(weir_model::ipc::HostEgressRule {
            rule: name,
            verdict: if drop { "drop" } else { "accept" }.to_string(),
            packets,
        });
    }
    st
}

/// The node's table counters for `weir status` when weir applied one (its
/// [`APPLIED_FILE`] exists); an unreadable table is logged, not fatal.
pub fn status(
    state: &crate::state::StateDir,
    node: &str,
    netns: &str,
) -> Option<weir_model::ipc::HostEgressStatus> {
    if netns.is_empty() || !state.node_dir(node).join(APPLIED_FILE).exists() {
        return None;
    }
    match counters(netns) {
        Ok(st) => st,
        Err(e) => {
            log::warn!("nodes/{node}: host egress counters: {e:#}");
            None
        }
    }
}

/// `weir status`'s line for the node's table: totals, then each counter
/// that moved.
pub fn render(st: &weir_model::ipc::HostEgressStatus) -> String {
    let mut out = format!(
        "host egress (nftables {TABLE}): denied {} packets, allowed {}\n",
        st.denied_packets, st.allowed_packets
    );
    for r in st.rules.iter().filter(|r| r.packets > 0) {
        out.push_str(&format!("  {} {}: {}\n", r.verdict, r.rule, r.packets));
    }
    out
}
