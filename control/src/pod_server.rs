//! The pods' test servers as processes of their own (issue 15: a killed
//! supervisor must not take the pods' servers with it).
//!
//! The supervisor starts one `weir --cluster C pod-server --id ID --spec
//! JSON` per pod (and one for the world host): a process in its own process
//! group, not a thread of the supervisor, that binds the pod's ports inside
//! its netns ([`weir_topo::serve::PodServers`]), writes its pid to
//! `servers/<namespace>_<name>.pid` (`servers/world.pid`), prints `ready`
//! on stdout and serves until it is signalled. A supervisor started again
//! adopts a live one named by its pid file instead of starting a second;
//! deleting the pod, the supervisor's shutdown and `weir down` (also when
//! the supervisor is dead: [`stop_all`]) stop it.

use crate::state::StateDir;
use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use weir_topo::manifest::ContainerPort;
use weir_topo::serve::PodServers;

/// What one server process binds and answers (its `--spec`).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ServerSpec {
    pub netns: String,
    /// Names it in errors: `x/a`, `the world host`.
    pub object: String,
    /// Its answer is `<name>\n`.
    pub name: String,
    pub ports: Vec<ContainerPort>,
    /// Addresses to bind (none: the unspecified address of each family).
    #[serde(default)]
    pub addrs: Vec<std::net::IpAddr>,
}

/// The id of a pod's server (`<namespace>/<name>`); the world's is `world`.
pub fn pod_id(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// `servers/<namespace>_<name>.pid` (a namespace, a DNS label, has no `_`,
/// so the name is unambiguous), `servers/world.pid`.
pub fn pid_file(state: &StateDir, id: &str) -> PathBuf {
    state
        .root
        .join("servers")
        .join(format!("{}.pid", id.replace('/', "_")))
}

/// `weir pod-server`: binds, records its pid, says `ready`, serves until
/// killed (SIGTERM or SIGKILL: the kernel closes the ports).
pub fn run(state: &StateDir, id: &str, spec: &str) -> anyhow::Result<()> {
    let spec: ServerSpec = serde_json::from_str(spec).context("--spec: not a server spec")?;
    let _servers = PodServers::start_in(
        &spec.netns,
        &spec.object,
        &spec.name,
        &spec.ports,
        &spec.addrs,
    )?;
    crate::state::write_atomic(
        &pid_file(state, id),
        format!("{}\n", std::process::id()).as_bytes(),
    )
    .context("pid file")?;
    println!("ready");
    loop {
        std::thread::park();
    }
}

/// A running server process: a child of this supervisor, or one a previous
/// supervisor started and this one adopted. Dropping it stops it.
#[derive(Debug)]
pub struct ServerProc {
    id: String,
    pid_file: PathBuf,
    proc: Proc,
}

#[derive(Debug)]
enum Proc {
    Child(Child),
    Adopted(u32),
}

impl ServerProc {
    /// Adopts the live server of `id` named by its pid file (started with
    /// the same spec), or starts one and waits until its ports are bound.
    pub fn start_or_adopt(state: &StateDir, id: &str, spec: &ServerSpec) -> anyhow::Result<Self> {
        let pid_file = pid_file(state, id);
        let spec_json = serde_json::to_string(spec)?;
        if let Some(pid) = running(&pid_file, &state.cluster, id, &spec_json) {
            log::info!("servers of {id}: adopted the running process (pid {pid})");
            return Ok(ServerProc {
                id: id.to_string(),
                pid_file,
                proc: Proc::Adopted(pid),
            });
        }
        // A stale pid file (a dead process, or one with another spec: stop it).
        stop_pid_file(&pid_file, &state.cluster);
        let log_path = state.root.join("servers.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("{}", log_path.display()))?;
        use std::os::unix::process::CommandExt;
        let mut child = Command::new(std::env::current_exe()?)
            .arg("--cluster")
            .arg(&state.cluster)
            .arg("pod-server")
            .arg("--id")
            .arg(id)
            .arg("--spec")
            .arg(&spec_json)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            // Its own process group: a signal to the supervisor's group
            // (a terminal's ^C to `weir daemon`) does not reach it.
            .process_group(0)
            .spawn()
            .with_context(|| format!("servers of {id}: start"))?;
        let mut line = String::new();
        let out = child.stdout.take().expect("piped stdout");
        let _ = std::io::BufReader::new(out).read_line(&mut line);
        if line.trim() != "ready" {
            let _ = child.kill();
            let status = child.wait()?;
            anyhow::bail!(
                "servers of {id}: the server process exited ({status}) before binding; see {}",
                log_path.display()
            );
        }
        Ok(ServerProc {
            id: id.to_string(),
            pid_file,
            proc: Proc::Child(child),
        })
    }

    pub fn pid(&self) -> u32 {
        match &self.proc {
            Proc::Child(c) => c.id(),
            Proc::Adopted(p) => *p,
        }
    }

    /// Stops it; its ports are closed when this returns.
    pub fn stop(&mut self) {
        let pid = self.pid();
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        match &mut self.proc {
            Proc::Child(c) => {
                let _ = c.wait();
            }
            Proc::Adopted(pid) => wait_gone(*pid, Duration::from_secs(5)),
        }
        let _ = std::fs::remove_file(&self.pid_file);
        log::debug!("servers of {}: stopped (pid {pid})", self.id);
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Alive and not a zombie.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .is_some_and(|rest| !rest.trim_start().starts_with('Z'))
    })
}

fn wait_gone(pid: u32, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The command line of `pid`, split at NULs.
fn cmdline(pid: u32) -> Option<Vec<String>> {
    let c = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        c.split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect(),
    )
}

fn read_pid(pid_file: &std::path::Path) -> Option<u32> {
    std::fs::read_to_string(pid_file).ok()?.trim().parse().ok()
}

/// Whether `args` are `weir --cluster CLUSTER pod-server --id ID ...` (any id when `None`).
fn is_server(args: &[String], cluster: &str, id: Option<&str>) -> bool {
    let has = |k: &str, v: &str| args.windows(2).any(|w| w[0] == k && w[1] == v);
    has("--cluster", cluster)
        && args.iter().any(|a| a == "pod-server")
        && id.is_none_or(|id| has("--id", id))
}

/// The pid of the live server of `id` with exactly `spec`, from its pid file.
fn running(pid_file: &std::path::Path, cluster: &str, id: &str, spec: &str) -> Option<u32> {
    let pid = read_pid(pid_file)?;
    let args = cmdline(pid)?;
    (is_server(&args, cluster, Some(id))
        && alive(pid)
        && args.windows(2).any(|w| w[0] == "--spec" && w[1] == spec))
    .then_some(pid)
}

/// Kills the server process a pid file names (if it is one of `cluster`'s)
/// and removes the file.
fn stop_pid_file(pid_file: &std::path::Path, cluster: &str) {
    if let Some(pid) = read_pid(pid_file) {
        if cmdline(pid).is_some_and(|a| is_server(&a, cluster, None)) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            wait_gone(pid, Duration::from_secs(5));
        }
    }
    let _ = std::fs::remove_file(pid_file);
}

/// Stops every server process of the cluster that has a pid file except
/// those in `keep` (ids): `weir down` after a supervisor died, and a new
/// supervisor's sweep of servers of pods that are gone.
pub fn stop_all(state: &StateDir, keep: &[String]) {
    let keep: Vec<PathBuf> = keep.iter().map(|id| pid_file(state, id)).collect();
    let Ok(dir) = std::fs::read_dir(state.root.join("servers")) else {
        return;
    };
    for e in dir.flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "pid") && !keep.contains(&p) {
            stop_pid_file(&p, &state.cluster);
        }
    }
}
