//! `weir-cni`: run by a container runtime with `CNI_*` variables and the
//! network configuration on stdin (see the library's doc). Success prints
//! the result (ADD) or nothing; failure prints the spec's error JSON on
//! stdout and exits 1.
#![forbid(unsafe_code)]

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;
use weir_cni::{code, CniError, Command, CURRENT_VERSION};

/// ADD waits for the dataplane to run the pod's snapshot (bounded by the
/// agent), so its answer can take a few seconds.
const AGENT_TIMEOUT: Duration = Duration::from_secs(60);

fn main() {
    let mut version = CURRENT_VERSION.to_string();
    match run(&mut version) {
        Ok(Some(out)) => {
            let mut o = std::io::stdout().lock();
            let _ = serde_json::to_writer(&mut o, &out);
            let _ = o.write_all(b"\n");
        }
        Ok(None) => {}
        Err(e) => {
            let mut o = std::io::stdout().lock();
            let _ = serde_json::to_writer(&mut o, &e.to_json(&version));
            let _ = o.write_all(b"\n");
            let _ = o.flush();
            std::process::exit(1);
        }
    }
}

fn run(version: &mut String) -> Result<Option<Value>, CniError> {
    // Stdin first, whatever else is wrong: the runtime writes all of it.
    let mut stdin = Vec::new();
    let read = std::io::stdin().read_to_end(&mut stdin);
    let cmd = Command::parse(std::env::var("CNI_COMMAND").ok().as_deref())?;
    read.map_err(|e| CniError {
        code: code::IO_FAILURE,
        msg: "reading the network configuration from stdin failed".into(),
        details: e.to_string(),
    })?;
    if cmd == Command::Version {
        return Ok(Some(weir_cni::version_info()));
    }
    let state_dir = std::env::var("WEIR_STATE_DIR").unwrap_or_else(|_| "/run/weir".into());
    let conf = weir_cni::parse_config(&stdin, cmd, &state_dir).map_err(|(e, v)| {
        if let Some(v) = v.filter(|v| weir_cni::SUPPORTED_VERSIONS.contains(&v.as_str())) {
            *version = v;
        }
        e
    })?;
    *version = conf.cni_version.clone();
    let env = weir_cni::parse_env(cmd, |k| std::env::var(k).ok())?;
    if cmd == Command::Status {
        return status(&conf).map(|()| None);
    }
    let data = call_agent(&conf, &weir_cni::agent_request(cmd, &conf, &env))
        .map_err(|e| CniError::new(code::TRY_AGAIN, e))?;
    if let Some(c) = data.get("code").and_then(Value::as_u64) {
        return Err(CniError {
            code: c as u32,
            msg: data["msg"].as_str().unwrap_or_default().to_string(),
            details: data["details"].as_str().unwrap_or_default().to_string(),
        });
    }
    let result = data.get("result").cloned().unwrap_or(json!({}));
    match cmd {
        Command::Add => {
            let merged = weir_cni::merge_prev(conf.prev_result.as_ref(), &result);
            Ok(Some(weir_cni::to_version(&merged, &conf.cni_version)))
        }
        Command::Check => {
            weir_cni::check_prev(conf.prev_result.as_ref(), &result, &env.ifname)?;
            Ok(None)
        }
        _ => Ok(None),
    }
}

/// STATUS: ready when the agent answers and runs the node's dataplane.
fn status(conf: &weir_cni::NetConf) -> Result<(), CniError> {
    let ping = call_agent(conf, &json!({"op": "ping"})).map_err(|e| CniError {
        code: code::NOT_AVAILABLE,
        msg: "plugin not available: the node's agent does not answer".into(),
        details: e,
    })?;
    let node = &ping["nodes"][&conf.node];
    if node.is_null() {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            format!(
                "node {:?} is not a weir node of cluster {}",
                conf.node, conf.cluster
            ),
        ));
    }
    if node["running"] != json!(true) {
        return Err(CniError::new(
            code::NOT_AVAILABLE,
            format!(
                "plugin not available: node {}'s dataplane is not running",
                conf.node
            ),
        ));
    }
    Ok(())
}

/// One request line to the agent, one reply line back; the reply's `data`.
fn call_agent(conf: &weir_cni::NetConf, req: &Value) -> Result<Value, String> {
    let sock = &conf.socket;
    let mut s = UnixStream::connect(sock)
        .map_err(|e| format!("the node's agent is not reachable at {sock}: {e}"))?;
    s.set_read_timeout(Some(AGENT_TIMEOUT))
        .map_err(|e| format!("{sock}: {e}"))?;
    let mut line = serde_json::to_string(req).expect("requests serialize");
    line.push('\n');
    s.write_all(line.as_bytes())
        .map_err(|e| format!("{sock}: write: {e}"))?;
    let mut reply = String::new();
    BufReader::new(&s)
        .read_line(&mut reply)
        .map_err(|e| format!("{sock}: read: {e}"))?;
    let v: Value = serde_json::from_str(&reply).map_err(|e| format!("{sock}: bad reply: {e}"))?;
    if v["ok"] != json!(true) {
        return Err(format!(
            "{sock}: {}",
            v["error"].as_str().unwrap_or("request refused")
        ));
    }
    Ok(v["data"].clone())
}
