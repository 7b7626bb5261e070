//! weir-cni: weir's CNI plugin, spec 1.1
//! (<https://github.com/containernetworking/cni/blob/spec-v1.1.0/SPEC.md>).
//!
//! The plugin is thin: it checks the runtime's environment and config,
//! negotiates the version, and hands ADD, DEL, CHECK and GC to the node's
//! agent (the cluster's supervisor, `daemon.sock`), which wires the pod,
//! allocates its addresses and publishes its snapshot. STATUS asks the
//! agent whether the node's dataplane runs.
//!
//! Spec-exact code of our own rather than a crate: `cni-plugin` (0.2)
//! predates spec 1.1 (no STATUS, no GC), and a framework such as `rscni` /
//! `rscni-plugin` puts its own dispatch and error mapping between the spec
//! and weir. What weir needs — each case's error code, 0.4.0 results with
//! `version` on every IP, prevResult merged in a chain, GC's
//! `cni.dev/valid-attachments` — is a few hundred lines of serde_json over
//! a documented format, with no runtime and no dependency beyond serde.
//!
//! Everything that does not touch the socket is a pure function here, so
//! it is tested without root (see the tests at the bottom).
#![forbid(unsafe_code)]

use serde_json::{json, Map, Value};

/// The versions this plugin speaks, oldest first.
pub const SUPPORTED_VERSIONS: [&str; 3] = ["0.4.0", "1.0.0", "1.1.0"];
/// The newest of them.
pub const CURRENT_VERSION: &str = "1.1.0";

/// The spec's error codes.
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENV: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN: u32 = 11;
    pub const NOT_AVAILABLE: u32 = 50;
}

/// A CNI error, printed as the spec's error JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    /// `{"cniVersion", "code", "msg", "details"?}`.
    pub fn to_json(&self, version: &str) -> Value {
        let mut v = json!({"cniVersion": version, "code": self.code, "msg": self.msg});
        if !self.details.is_empty() {
            v["details"] = json!(self.details);
        }
        v
    }
}

/// The commands of the spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Status,
    Gc,
    Version,
}

impl Command {
    pub fn parse(s: Option<&str>) -> Result<Command, CniError> {
        match s {
            Some("ADD") => Ok(Command::Add),
            Some("DEL") => Ok(Command::Del),
            Some("CHECK") => Ok(Command::Check),
            Some("STATUS") => Ok(Command::Status),
            Some("GC") => Ok(Command::Gc),
            Some("VERSION") => Ok(Command::Version),
            Some(other) => Err(CniError::new(
                code::INVALID_ENV,
                format!("CNI_COMMAND {other:?} is not one of ADD, DEL, CHECK, STATUS, GC, VERSION"),
            )),
            None => Err(CniError::new(code::INVALID_ENV, "CNI_COMMAND is not set")),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Status => "STATUS",
            Command::Gc => "GC",
            Command::Version => "VERSION",
        }
    }
}

/// `x.y.z` as numbers (`None` when it is not that).
fn semver(v: &str) -> Option<(u32, u32, u32)> {
    let mut it = v.split('.').map(|p| p.parse::<u32>().ok());
    let r = (it.next()??, it.next()??, it.next()??);
    it.next().is_none().then_some(r)
}

/// The VERSION answer.
pub fn version_info() -> Value {
    json!({"cniVersion": CURRENT_VERSION, "supportedVersions": SUPPORTED_VERSIONS})
}

/// weir-cni's network configuration (one plugin of a conflist, as the
/// runtime hands it over: `name` and `cniVersion` injected).
#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    /// The cluster's name (`weir --cluster`).
    pub cluster: String,
    /// The node this runtime runs on (the plugin runs in its netns).
    pub node: String,
    /// The agent's socket (default `$WEIR_STATE_DIR|/run/weir` `/<cluster>/daemon.sock`).
    pub socket: String,
    pub prev_result: Option<Value>,
    /// GC: `cni.dev/valid-attachments` (containerID, ifname).
    pub valid_attachments: Vec<(String, String)>,
}

/// Parses stdin into a [`NetConf`]; `state_dir` is the default socket's base.
/// The error carries the config's cniVersion when it had one.
pub fn parse_config(
    bytes: &[u8],
    cmd: Command,
    state_dir: &str,
) -> Result<NetConf, (CniError, Option<String>)> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| {
        (
            CniError {
                code: code::DECODE,
                msg: "network configuration on stdin is not JSON".into(),
                details: e.to_string(),
            },
            None,
        )
    })?;
    let Value::Object(m) = v else {
        return Err((
            CniError::new(
                code::DECODE,
                "network configuration on stdin is not a JSON object",
            ),
            None,
        ));
    };
    let version = m
        .get("cniVersion")
        .and_then(Value::as_str)
        .map(str::to_string);
    let fail = |e: CniError| (e, version.clone());
    let s = |key: &str| -> Result<String, (CniError, Option<String>)> {
        match m.get(key) {
            Some(Value::String(x)) if !x.is_empty() => Ok(x.clone()),
            Some(Value::String(_)) | None => Err(fail(CniError::new(
                code::INVALID_CONFIG,
                format!("network configuration: {key:?} is missing"),
            ))),
            Some(other) => Err(fail(CniError::new(
                code::INVALID_CONFIG,
                format!("network configuration: {key:?} must be a string, not {other}"),
            ))),
        }
    };
    let cni_version = s("cniVersion")?;
    if !SUPPORTED_VERSIONS.contains(&cni_version.as_str()) {
        return Err(fail(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!(
                "incompatible CNI versions: config is {cni_version:?}, plugin supports {SUPPORTED_VERSIONS:?}"
            ),
        )));
    }
    let at_least = |min: (u32, u32, u32)| semver(&cni_version).is_some_and(|v| v >= min);
    if matches!(cmd, Command::Status | Command::Gc) && !at_least((1, 1, 0)) {
        return Err(fail(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!(
                "config version {cni_version} does not allow {} (needs 1.1.0)",
                cmd.name()
            ),
        )));
    }
    let name = s("name")?;
    let ty = s("type")?;
    if ty != "weir-cni" {
        return Err(fail(CniError::new(
            code::INVALID_CONFIG,
            format!("network configuration: type is {ty:?}, this plugin is \"weir-cni\""),
        )));
    }
    let cluster = s("cluster")?;
    let node = s("node")?;
    let socket = match m.get("socket") {
        None => format!("{state_dir}/{cluster}/daemon.sock"),
        Some(_) => s("socket")?,
    };
    let prev_result = match m.get("prevResult") {
        None | Some(Value::Null) => None,
        Some(p @ Value::Object(_)) => Some(p.clone()),
        Some(other) => {
            return Err(fail(CniError::new(
                code::DECODE,
                format!("prevResult must be an object, not {other}"),
            )))
        }
    };
    let mut valid_attachments = Vec::new();
    if let Some(list) = m.get("cni.dev/valid-attachments") {
        let bad = || {
            fail(CniError::new(
                code::DECODE,
                "cni.dev/valid-attachments must be a list of {\"containerID\", \"ifname\"}",
            ))
        };
        for a in list.as_array().ok_or_else(bad)? {
            let cid = a
                .get("containerID")
                .and_then(Value::as_str)
                .ok_or_else(bad)?;
            let ifname = a.get("ifname").and_then(Value::as_str).ok_or_else(bad)?;
            valid_attachments.push((cid.to_string(), ifname.to_string()));
        }
    }
    Ok(NetConf {
        cni_version,
        name,
        cluster,
        node,
        socket,
        prev_result,
        valid_attachments,
    })
}

/// The runtime's per-call parameters (environment variables).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Env {
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    pub pod_namespace: String,
    pub pod_name: String,
    pub pod_uid: String,
}

/// A container id: alphanumeric first, then alphanumerics, `_`, `.`, `-`.
fn valid_container_id(s: &str) -> bool {
    let mut c = s.chars();
    c.next().is_some_and(|f| f.is_ascii_alphanumeric())
        && c.all(|x| x.is_ascii_alphanumeric() || matches!(x, '_' | '.' | '-'))
}

/// An interface name: 1-15 bytes, not `.`/`..`, no `/`, `:` or whitespace.
fn valid_ifname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s != "."
        && s != ".."
        && !s.chars().any(|c| c == '/' || c == ':' || c.is_whitespace())
}

/// Reads and checks the variables `cmd` needs (`get` looks one up).
pub fn parse_env(cmd: Command, get: impl Fn(&str) -> Option<String>) -> Result<Env, CniError> {
    let needs_key = matches!(cmd, Command::Add | Command::Del | Command::Check);
    let needs_netns = matches!(cmd, Command::Add | Command::Check);
    let mut env = Env::default();
    let mut missing = Vec::new();
    let mut invalid = Vec::new();
    if needs_key {
        match get("CNI_CONTAINERID").filter(|s| !s.is_empty()) {
            None => missing.push("CNI_CONTAINERID"),
            Some(c) if !valid_container_id(&c) => invalid.push(format!("CNI_CONTAINERID={c:?}")),
            Some(c) => env.container_id = c,
        }
        match get("CNI_IFNAME").filter(|s| !s.is_empty()) {
            None => missing.push("CNI_IFNAME"),
            Some(i) if !valid_ifname(&i) => invalid.push(format!("CNI_IFNAME={i:?}")),
            Some(i) => env.ifname = i,
        }
    }
    match get("CNI_NETNS").filter(|s| !s.is_empty()) {
        None if needs_netns => missing.push("CNI_NETNS"),
        None => {}
        Some(n) => env.netns = n,
    }
    if let Some(args) = get("CNI_ARGS").filter(|s| !s.is_empty()) {
        for pair in args.split(';').filter(|p| !p.is_empty()) {
            let Some((k, v)) = pair.split_once('=') else {
                invalid.push(format!("CNI_ARGS ({pair:?} is not KEY=VALUE)"));
                continue;
            };
            match k {
                "K8S_POD_NAMESPACE" => env.pod_namespace = v.to_string(),
                "K8S_POD_NAME" => env.pod_name = v.to_string(),
                "K8S_POD_UID" => env.pod_uid = v.to_string(),
                // Others (IgnoreUnknown, K8S_POD_INFRA_CONTAINER_ID, ...)
                // are not weir's business.
                _ => {}
            }
        }
    }
    if missing.is_empty() && invalid.is_empty() {
        return Ok(env);
    }
    let mut parts = Vec::new();
    if !missing.is_empty() {
        parts.push(format!("missing {}", missing.join(", ")));
    }
    if !invalid.is_empty() {
        parts.push(format!("invalid {}", invalid.join(", ")));
    }
    Err(CniError::new(
        code::INVALID_ENV,
        format!("{} {}: {}", cmd.name(), "environment", parts.join("; ")),
    ))
}

/// The request line for the agent (`Request::Cni` of `weir_control::ipc`).
pub fn agent_request(cmd: Command, conf: &NetConf, env: &Env) -> Value {
    json!({
        "op": "cni",
        "command": cmd.name(),
        "node": conf.node,
        "container_id": env.container_id,
        "ifname": env.ifname,
        "netns": env.netns,
        "pod_namespace": env.pod_namespace,
        "pod_name": env.pod_name,
        "pod_uid": env.pod_uid,
        "valid_attachments": conf.valid_attachments,
    })
}

/// A result of any supported version in the 1.x form (no `version` on IPs).
pub fn to_v1(result: &Value) -> Value {
    let mut r = result.clone();
    if let Some(ips) = r.get_mut("ips").and_then(Value::as_array_mut) {
        for ip in ips {
            if let Some(o) = ip.as_object_mut() {
                o.remove("version");
            }
        }
    }
    if let Some(o) = r.as_object_mut() {
        o.remove("cniVersion");
    }
    r
}

/// A 1.x-form result as `version` wants it (0.4.0: `"version": "4"|"6"` on
/// each IP), with `cniVersion` set.
pub fn to_version(result: &Value, version: &str) -> Value {
    let mut r = to_v1(result);
    if version == "0.4.0" {
        if let Some(ips) = r.get_mut("ips").and_then(Value::as_array_mut) {
            for ip in ips {
                let v6 = ip
                    .get("address")
                    .and_then(Value::as_str)
                    .is_some_and(|a| a.contains(':'));
                ip["version"] = json!(if v6 { "6" } else { "4" });
            }
        }
    }
    let mut out = Map::new();
    out.insert("cniVersion".into(), json!(version));
    if let Value::Object(m) = r {
        out.extend(m);
    }
    Value::Object(out)
}

/// ADD in a chain: the previous plugins' result with weir's appended
/// (interfaces after theirs, so weir's IP entries point at shifted indexes;
/// their IPs, routes and DNS kept).
pub fn merge_prev(prev: Option<&Value>, ours: &Value) -> Value {
    let Some(prev) = prev else {
        return to_v1(ours);
    };
    let prev = to_v1(prev);
    let ours = to_v1(ours);
    let list = |v: &Value, k: &str| {
        v.get(k)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let mut interfaces = list(&prev, "interfaces");
    let shift = interfaces.len() as u64;
    interfaces.extend(list(&ours, "interfaces"));
    let mut ips = list(&prev, "ips");
    for mut ip in list(&ours, "ips") {
        if let Some(i) = ip.get("interface").and_then(Value::as_u64) {
            ip["interface"] = json!(i + shift);
        }
        ips.push(ip);
    }
    let mut routes = list(&prev, "routes");
    routes.extend(list(&ours, "routes"));
    let dns = prev
        .get("dns")
        .filter(|d| d.as_object().is_some_and(|o| !o.is_empty()))
        .cloned()
        .unwrap_or_else(|| ours.get("dns").cloned().unwrap_or(json!({})));
    json!({"interfaces": interfaces, "ips": ips, "routes": routes, "dns": dns})
}

/// CHECK in a chain: every address prevResult gives weir's interface must
/// be one the agent reports.
pub fn check_prev(prev: Option<&Value>, actual: &Value, ifname: &str) -> Result<(), CniError> {
    let Some(prev) = prev else { return Ok(()) };
    let prev = to_v1(prev);
    let ifaces = prev
        .get("interfaces")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let Some(idx) = ifaces.iter().position(|i| {
        i.get("name").and_then(Value::as_str) == Some(ifname) && i.get("sandbox").is_some()
    }) else {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            format!("prevResult has no interface {ifname} in a sandbox"),
        ));
    };
    let have: Vec<&str> = actual
        .get("ips")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|i| i.get("address").and_then(Value::as_str))
                .collect()
        })
        .unwrap_or_default();
    for ip in prev
        .get("ips")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if ip.get("interface").and_then(Value::as_u64) != Some(idx as u64) {
            continue;
        }
        let a = ip
            .get("address")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if !have.contains(&a) {
            return Err(CniError::new(
                101,
                format!("{ifname}: prevResult address {a} is not what weir attached ({have:?})"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(v: &str) -> Vec<u8> {
        json!({"cniVersion": v, "name": "n", "type": "weir-cni", "cluster": "c", "node": "n1"})
            .to_string()
            .into_bytes()
    }

    #[test]
    fn versions_are_negotiated() {
        for v in SUPPORTED_VERSIONS {
            let c = parse_config(&conf(v), Command::Add, "/run/weir").expect("supported");
            assert_eq!(c.cni_version, v);
            assert_eq!(c.socket, "/run/weir/c/daemon.sock");
        }
        for v in ["0.3.1", "1.2.0", "x"] {
            let (e, _) = parse_config(&conf(v), Command::Add, "/r").expect_err(v);
            assert_eq!(e.code, code::INCOMPATIBLE_VERSION, "{v}");
        }
        let (e, _) = parse_config(&conf("1.0.0"), Command::Gc, "/r").expect_err("GC 1.0.0");
        assert_eq!(e.code, code::INCOMPATIBLE_VERSION);
        assert!(parse_config(&conf("1.1.0"), Command::Status, "/r").is_ok());
    }

    #[test]
    fn config_errors_have_their_codes() {
        let (e, _) = parse_config(b"{", Command::Add, "/r").expect_err("not json");
        assert_eq!(e.code, code::DECODE);
        let no_node = br#"{"cniVersion":"1.1.0","name":"n","type":"weir-cni","cluster":"c"}"#;
        let (e, v) = parse_config(no_node, Command::Add, "/r").expect_err("no node");
        assert_eq!(
            (e.code, v.as_deref()),
            (code::INVALID_CONFIG, Some("1.1.0"))
        );
        assert!(e.msg.contains("node"), "{}", e.msg);
        let other =
            br#"{"cniVersion":"1.1.0","name":"n","type":"bridge","cluster":"c","node":"x"}"#;
        assert_eq!(
            parse_config(other, Command::Add, "/r")
                .expect_err("type")
                .0
                .code,
            code::INVALID_CONFIG
        );
    }

    #[test]
    fn environment_is_checked_per_command() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let e = parse_env(Command::Add, env(&[("CNI_CONTAINERID", "abc")])).expect_err("add");
        assert_eq!(e.code, code::INVALID_ENV);
        assert!(
            e.msg.contains("CNI_IFNAME") && e.msg.contains("CNI_NETNS"),
            "{}",
            e.msg
        );
        // DEL needs no netns.
        let ok = parse_env(
            Command::Del,
            env(&[("CNI_CONTAINERID", "abc"), ("CNI_IFNAME", "eth0")]),
        )
        .expect("del");
        assert_eq!(ok.netns, "");
        let bad = [
            ("CNI_CONTAINERID", "-abc"),
            ("CNI_CONTAINERID", "a b"),
            ("CNI_IFNAME", "0123456789abcdef"),
            ("CNI_IFNAME", "a/b"),
            ("CNI_IFNAME", ".."),
        ];
        for (k, v) in bad {
            let get = |n: &str| match n {
                "CNI_CONTAINERID" if k == n => Some(v.to_string()),
                "CNI_IFNAME" if k == n => Some(v.to_string()),
                "CNI_CONTAINERID" => Some("abc".into()),
                "CNI_IFNAME" => Some("eth0".into()),
                _ => None,
            };
            assert_eq!(
                parse_env(Command::Del, get).expect_err(v).code,
                code::INVALID_ENV
            );
        }
        let args = parse_env(
            Command::Status,
            env(&[(
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p;K8S_POD_UID=u",
            )]),
        )
        .expect("args");
        assert_eq!(
            (args.pod_namespace.as_str(), args.pod_name.as_str()),
            ("ns", "p")
        );
        assert!(parse_env(Command::Status, env(&[("CNI_ARGS", "novalue")])).is_err());
    }

    fn ours() -> Value {
        json!({"interfaces": [{"name": "wc1", "mac": "06:00:00:00:00:01"},
                              {"name": "eth0", "mac": "02:00:00:00:00:01", "sandbox": "/ns"}],
               "ips": [{"address": "10.0.0.2/32", "gateway": "169.254.1.1", "interface": 1},
                       {"address": "fd00::2/128", "gateway": "fe80::1", "interface": 1}],
               "routes": [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}], "dns": {}})
    }

    #[test]
    fn results_per_version() {
        let r = to_version(&ours(), "0.4.0");
        assert_eq!(r["cniVersion"], "0.4.0");
        assert_eq!(r["ips"][0]["version"], "4");
        assert_eq!(r["ips"][1]["version"], "6");
        let r = to_version(&r, "1.1.0");
        assert_eq!(r["cniVersion"], "1.1.0");
        assert!(r["ips"][0].get("version").is_none());
    }

    #[test]
    fn prev_result_is_kept_in_a_chain() {
        let prev = json!({"cniVersion": "0.4.0",
            "interfaces": [{"name": "lo0"}],
            "ips": [{"version": "4", "address": "192.0.2.1/24", "interface": 0}],
            "routes": [{"dst": "192.0.2.0/24"}], "dns": {"nameservers": ["192.0.2.53"]}});
        let m = merge_prev(Some(&prev), &ours());
        assert_eq!(m["interfaces"].as_array().map(Vec::len), Some(3));
        assert_eq!(m["ips"][0]["address"], "192.0.2.1/24");
        assert_eq!(
            m["ips"][1]["interface"], 2,
            "weir's IPs point at its shifted interface"
        );
        assert!(m["ips"][0].get("version").is_none());
        assert_eq!(m["routes"].as_array().map(Vec::len), Some(2));
        assert_eq!(m["dns"]["nameservers"][0], "192.0.2.53");
        // CHECK: prevResult saying another address for eth0 fails.
        let ok = to_version(&ours(), "1.1.0");
        assert!(check_prev(Some(&ok), &ours(), "eth0").is_ok());
        let mut wrong = ok.clone();
        wrong["ips"][0]["address"] = json!("10.0.0.9/32");
        assert!(check_prev(Some(&wrong), &ours(), "eth0").is_err());
        assert!(check_prev(Some(&ok), &ours(), "eth1").is_err());
    }

    #[test]
    fn errors_print_as_the_spec_says() {
        let e = CniError::new(code::TRY_AGAIN, "later");
        assert_eq!(
            e.to_json("1.0.0"),
            json!({"cniVersion": "1.0.0", "code": 11, "msg": "later"})
        );
        assert_eq!(
            version_info(),
            json!({"cniVersion": "1.1.0", "supportedVersions": ["0.4.0", "1.0.0", "1.1.0"]})
        );
    }
}
