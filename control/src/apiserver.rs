//! The real Kubernetes control plane of a local cluster started with
//! `weir up --api-server`: etcd, kube-apiserver (RBAC, client certificates)
//! and kube-controller-manager on loopback, built from Go modules by
//! `scripts/k8s-build.sh` and started by `scripts/k8s-control-plane.sh`.
//!
//! Everything lives under the cluster's state dir (`<state>/k8s/`:
//! certificates, etcd data, logs, pid files, `admin.kubeconfig`), so `weir
//! down` stops the processes and removing the state dir removes the rest.

use crate::state::StateDir;
use anyhow::Context;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The Kubernetes version the project builds (scripts/k8s-build.sh).
pub const K8S_VERSION: &str = "v1.37.2";
/// The binaries a control plane needs.
pub const BINARIES: [&str; 4] = [
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kubectl",
];
/// The image given to containers of `weir up` manifests that name none
/// (the API server requires one; weir runs no image).
pub const NO_IMAGE: &str = "weir.dev/no-image";
/// The control plane's processes, in the order they are stopped.
const PROCESSES: [&str; 3] = ["kube-controller-manager", "kube-apiserver", "etcd"];

/// The control plane's directory inside a cluster's state dir.
pub fn dir(state: &StateDir) -> PathBuf {
    state.root.join("k8s")
}

/// The admin kubeconfig (O=system:masters) of the cluster's API server.
pub fn kubeconfig(state: &StateDir) -> PathBuf {
    dir(state).join("admin.kubeconfig")
}

/// The pid file of the cluster's `weir kubelet`.
pub fn kubelet_pid(state: &StateDir) -> PathBuf {
    state.root.join("kubelet.pid")
}

/// The log of the cluster's `weir kubelet` (and its policy agent).
pub fn kubelet_log(state: &StateDir) -> PathBuf {
    state.root.join("kubelet.log")
}

/// Where the binaries are: `$WEIR_K8S_BIN`, or
/// `~/.cache/weir/k8s-v1.37.2/bin` (what scripts/k8s-build.sh fills).
pub fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("WEIR_K8S_BIN") {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"));
    home.join(".cache/weir")
        .join(format!("k8s-{K8S_VERSION}"))
        .join("bin")
}

/// The binaries' directory, or one line naming the script that builds them.
pub fn check_binaries() -> anyhow::Result<PathBuf> {
    let bin = bin_dir();
    let missing: Vec<&str> = BINARIES
        .iter()
        .copied()
        .filter(|b| !bin.join(b).is_file())
        .collect();
    anyhow::ensure!(
        missing.is_empty(),
        "--api-server: {} not built in {} (run scripts/k8s-build.sh, or set WEIR_K8S_BIN)",
        missing.join(", "),
        bin.display()
    );
    Ok(bin)
}

/// The kubectl binary of the control plane.
pub fn kubectl_bin() -> PathBuf {
    bin_dir().join("kubectl")
}

/// `scripts/k8s-control-plane.sh`, found next to the weir binary's
/// checkout (`target/<profile>/weir` → `scripts/`) or under
/// `$WEIR_SCRIPTS`.
pub fn script() -> anyhow::Result<PathBuf> {
    const NAME: &str = "k8s-control-plane.sh";
    if let Some(d) = std::env::var_os("WEIR_SCRIPTS") {
        return Ok(PathBuf::from(d).join(NAME));
    }
    let exe = std::env::current_exe()?;
    for dir in exe.ancestors().skip(1) {
        let s = dir.join("scripts").join(NAME);
        if s.is_file() {
            return Ok(s);
        }
    }
    anyhow::bail!(
        "--api-server: scripts/{NAME} not found above {} (set WEIR_SCRIPTS to the repository's scripts/)",
        exe.display()
    )
}

/// Starts the control plane under `<state>/k8s/` and returns the admin
/// kubeconfig once the API server is ready and the policy CRDs are installed.
pub fn start(state: &StateDir) -> anyhow::Result<PathBuf> {
    let bin = check_binaries()?;
    let script = script()?;
    let dir = dir(state);
    std::fs::create_dir_all(&dir)?;
    let out = Command::new(&script)
        .arg("start")
        .arg(&dir)
        .env("WEIR_K8S_BIN", &bin)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run {}", script.display()))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let err: Vec<&str> = err
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        anyhow::bail!(
            "control plane did not start: {} (logs in {})",
            err.join(" | "),
            dir.join("logs").display()
        );
    }
    let kc = kubeconfig(state);
    anyhow::ensure!(kc.is_file(), "control plane: no {}", kc.display());
    Ok(kc)
}

/// Whether a control plane was started for this cluster.
pub fn running(state: &StateDir) -> bool {
    kubeconfig(state).is_file()
}

/// Stops the control plane's processes (from their pid files; only
/// processes whose command line is still that binary's). The data stays
/// until the state dir is removed. The grace is short: kube-apiserver
/// drains its watches for up to a minute after SIGTERM, and everything it
/// could save is removed with the state dir anyway.
pub fn stop(state: &StateDir) {
    let dir = dir(state);
    let mut pids = Vec::new();
    for p in PROCESSES {
        let f = dir.join(format!("{p}.pid"));
        if let Some(pid) = read_pid(&f) {
            if cmdline(pid).is_some_and(|c| c.contains(p)) {
                pids.push(pid);
            }
        }
        let _ = std::fs::remove_file(&f);
    }
    terminate_all(&pids, Duration::from_secs(1));
}

/// The process id in a pid file.
pub fn read_pid(f: &Path) -> Option<i32> {
    std::fs::read_to_string(f).ok()?.trim().parse().ok()
}

/// A process's command line (arguments joined by spaces), if it runs.
pub fn cmdline(pid: i32) -> Option<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .ok()
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
}

/// SIGTERM, then SIGKILL after `grace`.
pub fn terminate(pid: i32, grace: Duration) {
    terminate_all(&[pid], grace)
}

/// SIGTERM to every process, then SIGKILL to those still running after
/// `grace`; returns once all are gone (bounded).
pub fn terminate_all(pids: &[i32], grace: Duration) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let signal_all = |sig: Signal| {
        for &p in pids {
            if alive(p) {
                let _ = kill(Pid::from_raw(p), sig);
            }
        }
    };
    let wait_all = |limit: Duration| {
        let deadline = Instant::now() + limit;
        while pids.iter().any(|&p| alive(p)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    signal_all(Signal::SIGTERM);
    wait_all(grace);
    signal_all(Signal::SIGKILL);
    wait_all(Duration::from_secs(2));
}

/// The processes whose parent is `pid` (from `/proc/*/stat`).
pub fn children(pid: i32) -> Vec<i32> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: comm may hold spaces and parentheses.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let ppid = rest
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<i32>().ok());
        if ppid == Some(pid) {
            if let Ok(p) = e.file_name().to_string_lossy().parse() {
                found.push(p);
            }
        }
    }
    found
}

/// Whether a process runs (a zombie, dead but not reaped by its parent,
/// does not).
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // "pid (comm) S ...": the state follows the last ')'.
        Ok(s) => s
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => false,
    }
}

/// Runs the control plane's kubectl against the cluster's API server.
pub fn kubectl(state: &StateDir) -> anyhow::Result<Command> {
    anyhow::ensure!(
        running(state),
        "cluster {}: no API server (start it with `weir up --api-server -f FILE`)",
        state.cluster
    );
    let bin = kubectl_bin();
    anyhow::ensure!(
        bin.is_file(),
        "{}: not built (run scripts/k8s-build.sh)",
        bin.display()
    );
    let mut c = Command::new(bin);
    c.arg("--kubeconfig").arg(kubeconfig(state));
    Ok(c)
}

/// `kubectl apply -f -` of `objects` (a JSON `List`); one
/// line of kubectl's error on failure.
pub fn apply(state: &StateDir, objects: &[serde_json::Value]) -> anyhow::Result<()> {
    use std::io::Write;
    if objects.is_empty() {
        return Ok(());
    }
    let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": objects});
    let mut child = kubectl(state)?
        .args(["apply", "--field-manager", "weir", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("kubectl")?;
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(serde_json::to_string(&list)?.as_bytes())?;
    let out = child.wait_with_output()?;
    anyhow::ensure!(
        out.status.success(),
        "kubectl apply: {}",
        String::from_utf8_lossy(&out.stderr)
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    );
    Ok(())
}

/// Waits (bounded) until the `default` ServiceAccount of `namespace` exists:
/// the API server refuses pods in a namespace before the controller
/// manager created it.
pub fn wait_default_service_account(state: &StateDir, namespace: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ok = kubectl(state)?
            .args([
                "get",
                "serviceaccount",
                "default",
                "-n",
                namespace,
                "-o",
                "name",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "namespaces/{namespace}: no default ServiceAccount after 60 s (is kube-controller-manager running? see {})",
            dir(state).join("logs").display()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
