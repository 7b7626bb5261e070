//! `weir up --api-server` against the REAL control plane weir starts
//! (etcd, kube-apiserver, kube-controller-manager built from Go modules by
//! scripts/k8s-build.sh): pods created with the real kubectl get an address,
//! run and talk through weir (counters), a label changed with kubectl flips
//! a NetworkPolicy verdict, a pod without a node is bound, a deleted pod
//! disappears from the machine, and `weir down` leaves nothing behind.
//! Needs root and the built control-plane binaries.

use serde_json::Value;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};
use weir_tests::{pod_manifest, unique_name, weir_bin, TestCluster};

fn state_root(c: &TestCluster) -> PathBuf {
    std::env::var_os("WEIR_STATE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/weir"))
        .join(&c.name)
}

fn kubectl(c: &TestCluster, args: &[&str]) -> Output {
    let mut argv = vec!["kubectl"];
    argv.extend_from_slice(args);
    c.weir(&argv)
}

fn kubectl_ok(c: &TestCluster, args: &[&str]) -> String {
    let out = kubectl(c, args);
    assert!(
        out.status.success(),
        "weir kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn kubelet_log(c: &TestCluster) -> String {
    std::fs::read_to_string(state_root(c).join("kubelet.log")).unwrap_or_default()
}

/// `kubectl apply -f` of a manifest text (written to the test's directory).
fn kubectl_apply(c: &TestCluster, file: &str, text: &str) {
    let f = c.file(file, text);
    kubectl_ok(c, &["apply", "-f", &f]);
}

/// Waits until the pod's phase is Running (kubectl wait; the bound only
/// keeps a broken kubelet from hanging the suite).
fn wait_running(c: &TestCluster, ns: &str, pod: &str) {
    let out = kubectl(
        c,
        &[
            "wait",
            "-n",
            ns,
            &format!("pod/{pod}"),
            "--for=jsonpath={.status.phase}=Running",
            "--timeout=90s",
        ],
    );
    assert!(
        out.status.success(),
        "pods/{ns}/{pod} not Running: {}\nkubelet log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        kubelet_log(c)
    );
}

fn pod_json(c: &TestCluster, ns: &str, pod: &str) -> Value {
    let text = kubectl_ok(c, &["get", "pod", "-n", ns, pod, "-o", "json"]);
    serde_json::from_str(&text).expect("pod JSON")
}

fn connected(c: &TestCluster, from: &str, to: &str) -> bool {
    let m = c.probe(80, "TCP", &["--from", from, "--to", to]);
    m["probes"][0]["connected"] == true
}

/// Waits (bounded) until `from → to` on TCP 80 is `want`.
fn wait_connected(c: &TestCluster, from: &str, to: &str, want: bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if connected(c, from, to) == want {
            return;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    panic!(
        "{what}: {from} → {to} connected should be {want}; kubelet log:\n{}",
        kubelet_log(c)
    );
}

/// A pod as a user writes it for Kubernetes (an image; no node unless given).
fn kube_pod(ns: &str, name: &str, node: Option<&str>) -> String {
    let node = node.map_or(String::new(), |n| format!("  nodeName: {n}\n"));
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{pod: {name}}}}}\n\
         spec:\n{node}  containers:\n  - name: web\n    image: registry.example/web:1\n    ports:\n\
         \x20   - {{containerPort: 80, protocol: TCP}}\n"
    )
}

/// Processes whose command line mentions the cluster's state dir or name.
fn processes_of(c: &TestCluster) -> Vec<String> {
    let root = state_root(c).display().to_string();
    let flag = format!("--cluster {} ", c.name);
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        if !e
            .file_name()
            .to_string_lossy()
            .bytes()
            .all(|b| b.is_ascii_digit())
        {
            continue;
        }
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(&root) || cmd.contains(&flag) {
            found.push(cmd);
        }
    }
    found
}

const ONLY_FRIENDS_TO_B: &str = r#"apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: only-friends, namespace: kq}
spec:
  podSelector: {matchLabels: {pod: b}}
  policyTypes: [Ingress]
  ingress:
  - from: [{podSelector: {matchLabels: {role: friend}}}]
    ports: [{protocol: TCP, port: 80}]
"#;

#[test]
fn kubectl_pods_run_talk_follow_labels_bind_and_go_away() {
    // One node, namespace kq and pod a from the file: the pod goes to the
    // API server and is realised from there.
    let file = "apiVersion: v1\nkind: Node\nmetadata: {name: node-1}\n\
        spec: {podCIDRs: [10.244.0.0/24, \"fd00:10:244::/64\"]}\n\
        ---\napiVersion: v1\nkind: Namespace\nmetadata: {name: kq, labels: {team: q}}\n"
        .to_string()
        + &pod_manifest("kq", "a");
    let c = TestCluster::up_with("ku", &file, &["--api-server"]);

    // `weir kubeconfig` names the admin kubeconfig; the Node is registered.
    let kc = c.weir(&["kubeconfig"]);
    let kc = String::from_utf8_lossy(&kc.stdout).trim().to_string();
    assert!(
        std::path::Path::new(&kc).is_file(),
        "weir kubeconfig: {kc:?}"
    );
    let node = kubectl_ok(
        &c,
        &[
            "get",
            "node",
            "node-1",
            "-o",
            "jsonpath={.spec.podCIDRs} {.status.conditions[?(@.type==\"Ready\")].status}",
        ],
    );
    assert_eq!(node, "[\"10.244.0.0/24\",\"fd00:10:244::/64\"] True");
    // The status is written once the dataplane runs the pod's generation
    // (control/src/kubelet.rs), which may be just after `weir up` returns
    // on a loaded machine: wait for it as `kubectl wait` would.
    let mut a = pod_json(&c, "kq", "a");
    let t0 = std::time::Instant::now();
    while a["status"]["phase"] != "Running" && t0.elapsed() < std::time::Duration::from_secs(20) {
        std::thread::sleep(std::time::Duration::from_millis(200));
        a = pod_json(&c, "kq", "a");
    }
    assert_eq!(a["status"]["phase"], "Running", "{a}");

    // The API server is the one source of truth: weir apply says where to go.
    let f = c.file("d.yaml", &pod_manifest("kq", "d"));
    let out = c.weir(&["apply", "-f", &f]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("weir kubectl apply -f FILE"), "{err}");

    // A pod created with kubectl on node-1: address, phase, conditions.
    kubectl_apply(&c, "b.yaml", &kube_pod("kq", "b", Some("node-1")));
    wait_running(&c, "kq", "b");
    let b = pod_json(&c, "kq", "b");
    let topo = c.topology();
    let rb = topo.pod("kq", "b").expect("pod b realised");
    assert_eq!(
        b["status"]["podIP"],
        rb.ipv4.expect("IPv4").to_string(),
        "{b}"
    );
    assert_eq!(b["status"]["podIPs"].as_array().map(Vec::len), Some(2));
    for t in ["PodScheduled", "Initialized", "ContainersReady", "Ready"] {
        let ok = b["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|x| x["type"] == t && x["status"] == "True");
        assert!(ok, "condition {t} not True: {b}");
    }
    assert_eq!(rb.ports.len(), 1, "containerPorts realised");

    // Traffic a → b crosses weir.
    let rx = c.counter("rx_packets");
    assert!(connected(&c, "kq/a", "kq/b"), "a → b without policy");
    assert!(c.counter("rx_packets") > rx, "weir did not forward a → b");

    // A NetworkPolicy through kubectl: only role=friend may reach b.
    let denied = c.drops("policy-denied");
    kubectl_apply(&c, "np.yaml", ONLY_FRIENDS_TO_B);
    wait_connected(&c, "kq/a", "kq/b", false, "policy applied, a not a friend");
    assert!(c.drops("policy-denied") > denied, "denial not counted");
    // kubectl label flips the verdict, both ways.
    kubectl_ok(&c, &["label", "pod", "-n", "kq", "a", "role=friend"]);
    wait_connected(&c, "kq/a", "kq/b", true, "a labelled role=friend");
    kubectl_ok(&c, &["label", "pod", "-n", "kq", "a", "role-"]);
    wait_connected(&c, "kq/a", "kq/b", false, "label role removed from a");

    // Namespace labels come from the API server too.
    kubectl_ok(&c, &["label", "namespace", "kq", "stage=test"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ns = c.topology();
        let kq = ns.namespaces.iter().find(|n| n.name == "kq").expect("kq");
        if kq.labels.get("stage").map(String::as_str) == Some("test") {
            assert_eq!(kq.labels.get("team").map(String::as_str), Some("q"));
            break;
        }
        assert!(Instant::now() < deadline, "namespace label not applied");
        std::thread::sleep(Duration::from_millis(200));
    }

    // A pod without a node is bound to one (the binding subresource).
    kubectl_apply(&c, "c.yaml", &kube_pod("kq", "c", None));
    wait_running(&c, "kq", "c");
    let pc = pod_json(&c, "kq", "c");
    assert_eq!(pc["spec"]["nodeName"], "node-1", "{pc}");
    assert!(c.topology().pod("kq", "c").is_some());

    // A pod the API server accepts (with a warning) but weir refuses (two
    // containers declare 80/TCP): it stays Pending, and the reason is a
    // Warning Event on it.
    kubectl_apply(
        &c,
        "dup.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: dup, namespace: kq}\nspec:\n  containers:\n\
         \x20 - {name: one, image: x, ports: [{containerPort: 80}]}\n\
         \x20 - {name: two, image: x, ports: [{containerPort: 80}]}\n",
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let event = loop {
        let e = kubectl_ok(
            &c,
            &[
                "get",
                "events",
                "-n",
                "kq",
                "--field-selector",
                "involvedObject.name=dup,reason=FailedCreatePodSandBox",
                "-o",
                "jsonpath={.items[*].message}",
            ],
        );
        if !e.is_empty() {
            break e;
        }
        assert!(Instant::now() < deadline, "no event for pods/kq/dup");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(event.contains("already declared"), "{event}");
    assert_eq!(pod_json(&c, "kq", "dup")["status"]["phase"], "Pending");
    assert!(c.topology().pod("kq", "dup").is_none());

    // kubectl delete: returns once the kubelet finished the deletion; the
    // pod's netns and veth are gone.
    let netns = rb.netns.clone();
    let veth = rb.host_ifname.clone();
    let node_netns = topo.node("node-1").expect("node").netns.clone();
    kubectl_ok(&c, &["delete", "pod", "-n", "kq", "b", "--timeout=90s"]);
    let gone = kubectl(&c, &["get", "pod", "-n", "kq", "b"]);
    assert!(!gone.status.success(), "pod b still in the API server");
    assert!(
        c.topology().pod("kq", "b").is_none(),
        "pod b still realised"
    );
    let list = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip");
    assert!(
        !String::from_utf8_lossy(&list.stdout).contains(&netns),
        "netns {netns} left"
    );
    let link = Command::new("ip")
        .args(["-n", &node_netns, "link", "show", &veth])
        .output()
        .expect("ip link");
    assert!(!link.status.success(), "veth {veth} left");

    // weir down: no process, no file.
    assert!(!processes_of(&c).is_empty(), "nothing found while up");
    let down = c.weir(&["down"]);
    assert!(down.status.success());
    assert_eq!(processes_of(&c), Vec::<String>::new());
    assert!(!state_root(&c).exists(), "state dir left");
    let kc_dir = std::path::Path::new(&kc).parent().expect("k8s dir");
    assert!(!kc_dir.exists(), "control plane data left");
}

#[test]
fn api_server_without_binaries_names_the_build_script() {
    let name = unique_name("kn");
    let dir = std::env::temp_dir().join(format!("weir-test-{name}"));
    std::fs::create_dir_all(&dir).expect("dir");
    let f = dir.join("c.yaml");
    std::fs::write(
        &f,
        "apiVersion: v1\nkind: Node\nmetadata: {name: node-1}\nspec: {podCIDRs: [10.244.0.0/24]}\n",
    )
    .expect("write");
    let out = Command::new(weir_bin())
        .env("WEIR_METRICS_ADDR", "off")
        .args(["--cluster", &name, "up", "--api-server", "-f"])
        .arg(&f)
        .env("WEIR_K8S_BIN", dir.join("no-such-bin"))
        .output()
        .expect("weir up");
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("scripts/k8s-build.sh"), "{err}");
    // Nothing was built.
    let state = std::env::var_os("WEIR_STATE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/weir"));
    assert!(!state.join(&name).exists());
}

/// The pids of the processes whose parent is `pid`.
fn children_of(pid: i32) -> Vec<i32> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        if rest.split_whitespace().nth(1) == Some(pid.to_string().as_str()) {
            if let Ok(p) = e.file_name().to_string_lossy().parse() {
                found.push(p);
            }
        }
    }
    found
}

/// `(Lease renewTime, Node Ready status, Ready lastHeartbeatTime, Ready
/// lastTransitionTime, taints)` of node-1.
fn heartbeat_of(c: &TestCluster) -> (String, String, String, String, String) {
    let lease = kubectl_ok(
        c,
        &[
            "get",
            "lease",
            "-n",
            "kube-node-lease",
            "node-1",
            "-o",
            "jsonpath={.spec.renewTime} {.spec.holderIdentity} {.spec.leaseDurationSeconds}",
        ],
    );
    let mut l = lease.split(' ');
    let renew = l.next().unwrap_or_default().to_string();
    assert_eq!(
        (l.next(), l.next()),
        (Some("node-1"), Some("40")),
        "lease: {lease}"
    );
    let node = kubectl_ok(
        c,
        &[
            "get",
            "node",
            "node-1",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status} {.status.conditions[?(@.type==\"Ready\")].lastHeartbeatTime} {.status.conditions[?(@.type==\"Ready\")].lastTransitionTime} {.spec.taints}",
        ],
    );
    let mut n = node.splitn(4, ' ');
    let mut next = || n.next().unwrap_or_default().to_string();
    (renew, next(), next(), next(), next())
}

#[test]
fn kubelet_heartbeats_is_restarted_and_finalizes_deleted_namespaces() {
    let file = "apiVersion: v1\nkind: Node\nmetadata: {name: node-1}\n\
        spec: {podCIDRs: [10.244.0.0/24]}\n\
        ---\napiVersion: v1\nkind: Namespace\nmetadata: {name: kh}\n"
        .to_string()
        + &pod_manifest("kh", "a");
    let c = TestCluster::up_with("kh", &file, &["--api-server"]);

    // 1. Heartbeats: the Lease in kube-node-lease is renewed and the Ready
    //    condition's heartbeat moves (every 10 s, as a kubelet's), while
    //    its transition time stays; the node lifecycle controller (running
    //    in kube-controller-manager) has no reason to taint the node.
    // The API server's TaintNodesByCondition admission taints a new Node
    // `node.kubernetes.io/not-ready:NoSchedule`; the node lifecycle
    // controller removes it once it sees the node Ready.
    let (renew0, ready0, beat0, since0, taints0) = heartbeat_of(&c);
    assert_eq!(ready0, "True");
    eprintln!("taints at start: {taints0:?}");
    let deadline = Instant::now() + Duration::from_secs(40);
    let (renew1, ready1, beat1, since1, taints1) = loop {
        let h = heartbeat_of(&c);
        if h.0 > renew0 && h.2 > beat0 && h.4.is_empty() {
            break h;
        }
        assert!(
            Instant::now() < deadline,
            "no heartbeat: lease {renew0} → {}, Ready heartbeat {beat0} → {}, taints {}\n{}",
            h.0,
            h.2,
            h.4,
            kubelet_log(&c)
        );
        std::thread::sleep(Duration::from_secs(1));
    };
    eprintln!("lease {renew0} → {renew1}; Ready heartbeat {beat0} → {beat1}");
    assert_eq!((ready1.as_str(), taints1.as_str()), ("True", ""));
    assert_eq!(since1, since0, "Ready lastTransitionTime moved");

    // 2. The kubelet killed: the process weir up started (its supervisor)
    //    starts it again, and kubectl changes are realised again.
    let pid: i32 = std::fs::read_to_string(state_root(&c).join("kubelet.pid"))
        .expect("kubelet.pid")
        .trim()
        .parse()
        .expect("pid");
    let kids = children_of(pid);
    assert_eq!(kids.len(), 1, "supervisor {pid} runs {kids:?}");
    let killed = kids[0];
    assert!(Command::new("kill")
        .args(["-KILL", &killed.to_string()])
        .status()
        .expect("kill")
        .success());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let k = children_of(pid);
        if k.len() == 1 && k[0] != killed {
            break;
        }
        assert!(Instant::now() < deadline, "kubelet not restarted: {k:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        kubelet_log(&c).contains(&format!("weir kubelet (pid {killed}) exited")),
        "{}",
        kubelet_log(&c)
    );
    kubectl_ok(&c, &["create", "namespace", "gone"]);
    kubectl_apply(&c, "g.yaml", &kube_pod("gone", "g", Some("node-1")));
    kubectl_apply(
        &c,
        "np.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: gone}\n\
         spec: {podSelector: {}, policyTypes: [Ingress]}\n",
    );
    wait_running(&c, "gone", "g");
    // (Generous: the kubelet was just restarted and relists everything
    // while another test shares the two cores.)
    let deadline = Instant::now() + Duration::from_secs(90);
    while !std::fs::read_to_string(state_root(&c).join("policies.json"))
        .unwrap_or_default()
        .contains("networkpolicies/gone/deny")
    {
        assert!(
            Instant::now() < deadline,
            "policy not enforced\n{}",
            kubelet_log(&c)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // policies.json is written before the snapshots are published and the
    // dataplane applies them: wait for the workers to run it.
    c.wait_applied(Duration::from_secs(30));
    let rx = c.counter("rx_packets");
    assert!(!connected(&c, "kh/a", "gone/g"), "kh/a reached gone/g");
    assert!(c.counter("rx_packets") > rx, "the probe did not cross weir");
    let netns = c
        .topology()
        .pod("gone", "g")
        .expect("g realised")
        .netns
        .clone();

    // 3. The namespace deleted with kubectl: its controller deletes the
    //    pod (gracefully) and the policy; the kubelet tears the pod down
    //    (weir-cni DEL, netns gone) and deletes the Pod object; the
    //    namespace finalizes (kubectl delete waits for that), and the local
    //    cluster no longer has it.
    kubectl_ok(&c, &["delete", "namespace", "gone", "--timeout=120s"]);
    let out = kubectl(&c, &["get", "namespace", "gone"]);
    assert!(!out.status.success(), "namespace gone still there");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let topo = c.topology();
        if topo.pod("gone", "g").is_none() && !topo.namespaces.iter().any(|n| n.name == "gone") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "namespace gone still realised\n{}",
            kubelet_log(&c)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let list = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip");
    assert!(
        !String::from_utf8_lossy(&list.stdout).contains(&netns),
        "netns {netns} left"
    );
    // The rest is untouched: kh/a still realised and the node still Ready.
    assert!(c.topology().pod("kh", "a").is_some());
    assert_eq!(heartbeat_of(&c).1, "True");
}

/// Kills (SIGKILL) the cluster's kube-apiserver and starts it again with the same
/// command line (etcd and everything else keep running): its watch cache
/// starts afresh at etcd's current revision. Returns once `/readyz` answers.
fn restart_apiserver(c: &TestCluster) {
    use std::os::unix::process::CommandExt;
    let dir = state_root(c).join("k8s");
    let pid_file = dir.join("kube-apiserver.pid");
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .expect("kube-apiserver.pid")
        .trim()
        .parse()
        .expect("pid");
    let argv: Vec<String> = std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
        .expect("cmdline")
        .split('\0')
        .filter(|a| !a.is_empty())
        .map(str::to_string)
        .collect();
    assert!(argv[0].ends_with("kube-apiserver"), "{argv:?}");
    signal(pid, "-KILL");
    // Gone, or a zombie (dead, not reaped by whoever adopted it).
    let running = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rsplit_once(')').map(|(_, r)| r.trim_start().to_string()))
            .is_some_and(|r| !r.starts_with('Z'))
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while running() {
        assert!(
            Instant::now() < deadline,
            "kube-apiserver {pid} did not stop"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.join("logs/kube-apiserver.log"))
        .expect("log");
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .process_group(0)
        .spawn()
        .expect("start kube-apiserver");
    std::fs::write(&pid_file, child.id().to_string()).expect("pid file");
    std::thread::spawn(move || child.wait());
    let deadline = Instant::now() + Duration::from_secs(90);
    while !kubectl(c, &["get", "--raw", "/readyz"]).status.success() {
        assert!(Instant::now() < deadline, "kube-apiserver not ready again");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Compacts the cluster's etcd at its current revision (etcd's v3 JSON
/// gateway, with curl); returns the revision.
fn compact_etcd(c: &TestCluster) -> u64 {
    let pid = std::fs::read_to_string(state_root(c).join("k8s/kube-apiserver.pid")).expect("pid");
    let argv = std::fs::read_to_string(format!("/proc/{}/cmdline", pid.trim())).expect("cmdline");
    let mut args = argv.split('\0');
    let etcd = args
        .find(|a| *a == "--etcd-servers")
        .and_then(|_| args.next())
        .expect("--etcd-servers")
        .to_string();
    let post = |path: &str, body: &str| -> Value {
        let out = Command::new("curl")
            .args(["-sS", "-X", "POST", &format!("{etcd}{path}"), "-d", body])
            .output()
            .expect("curl");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("etcd JSON")
    };
    let r = post("/v3/kv/range", r#"{"key": "AA=="}"#);
    let rev: u64 = r["header"]["revision"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("revision");
    post(
        "/v3/kv/compaction",
        &format!(r#"{{"revision": "{rev}", "physical": true}}"#),
    );
    rev
}

fn signal(pid: i32, sig: &str) {
    assert!(Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("kill")
        .success());
}

/// The objects in the supervisor's policies.json.
fn enforced_policies(c: &TestCluster) -> Vec<String> {
    let text = std::fs::read_to_string(state_root(c).join("policies.json")).unwrap_or_default();
    let v: Value = serde_json::from_str(&text).unwrap_or_default();
    let mut o: Vec<String> = v
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["object"].as_str().map(str::to_string))
        .collect();
    o.sort();
    o
}

#[test]
fn an_expired_watch_relists_without_dropping_a_connection() {
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};

    let file = "apiVersion: v1\nkind: Node\nmetadata: {name: node-1}\n\
        spec: {podCIDRs: [10.244.0.0/24]}\n\
        ---\napiVersion: v1\nkind: Namespace\nmetadata: {name: kr}\n"
        .to_string()
        + &pod_manifest("kr", "a")
        + &pod_manifest("kr", "b")
        + &pod_manifest("kr", "c");
    let c = TestCluster::up_with("kr", &file, &["--api-server"]);
    let np = |name: &str, from: &str| {
        format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: kr}}\n\
             spec: {{podSelector: {{matchLabels: {{pod: b}}}}, policyTypes: [Ingress], ingress: [{{from: [{{podSelector: {{matchLabels: {{pod: {from}}}}}}}]}}]}}\n"
        )
    };
    kubectl_apply(&c, "allow-a.yaml", &np("allow-a", "a"));
    // Seen by the agent now, deleted while its watch is down below.
    kubectl_apply(&c, "seen.yaml", &np("seen-then-deleted", "nobody"));
    let wait_policies = |want: &[String], what: &str| {
        let deadline = Instant::now() + Duration::from_secs(90);
        while enforced_policies(&c) != want {
            assert!(
                Instant::now() < deadline,
                "{what}: enforced {:?}, want {want:?}\n{}",
                enforced_policies(&c),
                kubelet_log(&c)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        c.wait_applied(Duration::from_secs(30));
    };
    wait_policies(
        &[
            "networkpolicies/kr/allow-a".to_string(),
            "networkpolicies/kr/seen-then-deleted".to_string(),
        ],
        "allow-a",
    );
    // A burst (20 NetworkPolicies in one kubectl apply) coalesces: far
    // fewer publishes than objects.
    let published = |log: &str| {
        log.matches("policies from the API server, generation")
            .count()
    };
    let before = published(&kubelet_log(&c));
    let burst: Vec<Value> = (0..20)
        .map(|i| {
            let text = np(&format!("burst-{i}"), "nobody");
            let docs = weir_topo::manifest::split_documents(&text, "np")
                .expect("parses")
                .iter()
                .map(|d| serde_json::to_value(&d.value).expect("JSON"))
                .collect::<Vec<Value>>();
            let mut v = docs.into_iter().next().expect("one document");
            v["metadata"]["labels"] = serde_json::json!({"burst": "yes"});
            v
        })
        .collect();
    let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": burst});
    kubectl_ok(
        &c,
        &["apply", "-f", &c.file("burst.json", &list.to_string())],
    );
    let mut want: Vec<String> = (0..20)
        .map(|i| format!("networkpolicies/kr/burst-{i}"))
        .chain([
            "networkpolicies/kr/allow-a".to_string(),
            "networkpolicies/kr/seen-then-deleted".to_string(),
        ])
        .collect();
    want.sort();
    wait_policies(&want, "burst");
    // The agent logs a publish once the supervisor answered (after
    // policies.json is written).
    let deadline = Instant::now() + Duration::from_secs(30);
    while !kubelet_log(&c).contains("published 22 policies") {
        assert!(Instant::now() < deadline, "no publish of 22 logged");
        std::thread::sleep(Duration::from_millis(50));
    }
    let burst_publishes = published(&kubelet_log(&c)) - before;
    eprintln!("20 NetworkPolicies in one kubectl apply: {burst_publishes} publish(es)");
    assert!(
        (1..20).contains(&burst_publishes),
        "{burst_publishes} publishes for a burst of 20 (before: {before})\n{}",
        kubelet_log(&c)
    );
    kubectl_ok(
        &c,
        &["delete", "networkpolicy", "-n", "kr", "-l", "burst=yes"],
    );
    wait_policies(
        &[
            "networkpolicies/kr/allow-a".to_string(),
            "networkpolicies/kr/seen-then-deleted".to_string(),
        ],
        "burst deleted",
    );

    // A TCP connection a → b:5555 carrying a byte every 50 ms.
    let topo = c.topology();
    let (pa, pb) = (
        topo.pod("kr", "a").expect("a").clone(),
        topo.pod("kr", "b").expect("b").clone(),
    );
    let addr = SocketAddr::new(pb.ipv4.expect("ipv4").into(), 5555);
    let listener = weir_topo::netns::run_in(&pb.netns, move || TcpListener::bind(addr))
        .expect("netns")
        .expect("bind");
    let stop = Arc::new(AtomicBool::new(false));
    let received: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let write_errors = Arc::new(AtomicU64::new(0));
    {
        let (stop, received) = (stop.clone(), received.clone());
        std::thread::spawn(move || {
            let Ok((mut s, _)) = listener.accept() else {
                return;
            };
            s.set_read_timeout(Some(Duration::from_millis(100)))
                .expect("timeout");
            let mut buf = [0u8; 64];
            while !stop.load(Ordering::Relaxed) {
                if let Ok(n) = s.read(&mut buf) {
                    if n == 0 {
                        return;
                    }
                    let now = Instant::now();
                    received
                        .lock()
                        .expect("lock")
                        .extend(std::iter::repeat_n(now, n));
                }
            }
        });
    }
    let mut client = weir_topo::netns::run_in(&pa.netns, move || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(2))
    })
    .expect("netns")
    .expect("connect a → b:5555");
    {
        let (stop, errors) = (stop.clone(), write_errors.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if client.write_all(b"x").is_err() {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
    }
    let count_after = |t: Instant| {
        received
            .lock()
            .expect("lock")
            .iter()
            .filter(|x| **x > t)
            .count()
    };
    let t = Instant::now();
    std::thread::sleep(Duration::from_millis(500));
    assert!(count_after(t) >= 5, "the connection carries nothing");

    // The kubelet (and its policy agent) frozen: its watches see nothing
    // while the API server changes, and its resourceVersions get old.
    let sup: i32 = std::fs::read_to_string(state_root(&c).join("kubelet.pid"))
        .expect("kubelet.pid")
        .trim()
        .parse()
        .expect("pid");
    let kubelet = children_of(sup)[0];
    let log_before = kubelet_log(&c).len();
    signal(kubelet, "-STOP");
    // The API server restarted: its watch cache starts at etcd's current
    // revision, so every resourceVersion the kubelet holds is too old. The
    // changes are made on the new one: only a relist can bring them.
    restart_apiserver(&c);
    for i in 0..20 {
        kubectl_apply(
            &c,
            &format!("np-{i}.yaml"),
            &np(&format!("np-{i}"), "nobody"),
        );
    }
    for i in 0..10 {
        kubectl_ok(
            &c,
            &["delete", "networkpolicy", "-n", "kr", &format!("np-{i}")],
        );
    }
    kubectl_ok(&c, &["label", "pod", "-n", "kr", "b", "moved=yes"]);
    kubectl_ok(
        &c,
        &[
            "delete",
            "pod",
            "-n",
            "kr",
            "c",
            "--grace-period=0",
            "--force",
        ],
    );
    kubectl_ok(
        &c,
        &["delete", "networkpolicy", "-n", "kr", "seen-then-deleted"],
    );
    // And etcd compacted up to now, so no resourceVersion the kubelet holds
    // can be served from etcd's history either.
    let rev = compact_etcd(&c);
    eprintln!("etcd compacted at revision {rev}");
    signal(kubelet, "-CONT");
    let t_cont = Instant::now();

    // The state converges to the API server's ...
    let mut want: Vec<String> = (10..20)
        .map(|i| format!("networkpolicies/kr/np-{i}"))
        .chain(["networkpolicies/kr/allow-a".to_string()])
        .collect();
    want.sort();
    wait_policies(&want, "after the relist");
    let deadline = Instant::now() + Duration::from_secs(60);
    while c
        .topology()
        .pod("kr", "b")
        .is_none_or(|p| p.labels.get("moved").map(String::as_str) != Some("yes"))
    {
        assert!(Instant::now() < deadline, "label of b not taken");
        std::thread::sleep(Duration::from_millis(100));
    }
    // ... through 410 Expired and a relist, which the kubelet logs: the
    // Pods' watch cache starts with the new API server, before the
    // changes, so the kubelet's Pod watch gets 410 for sure, and the label
    // and the deletion arrive by the relist only (an object missing from it
    // is deleted: pod c is torn down).
    let deadline = Instant::now() + Duration::from_secs(60);
    let log = loop {
        let log = kubelet_log(&c)[log_before..].to_string();
        if log.contains("Pod: relisted (") && c.topology().pod("kr", "c").is_none() {
            break log;
        }
        assert!(Instant::now() < deadline, "no Pod relist:\n{log}");
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!("{log}");
    assert!(
        log.contains(
            "Pod: watch: error returned by apiserver during watch: too old resource version"
        ),
        "no 410 for the Pod watch:\n{log}"
    );
    assert!(
        log.contains("Pod: relisted (2 objects: 0 added, 1 removed, 1 changed"),
        "{log}"
    );
    // NetworkPolicies converged above (relist or resumed watch: the new
    // API server builds that kind's watch cache lazily, see docs).

    // The open connection never stopped: no write failed, bytes keep
    // arriving after the relist; a new connection a → b works.
    let t = Instant::now();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        count_after(t) >= 5,
        "the connection stopped after the relist"
    );
    assert!(count_after(t_cont) >= 5);
    assert_eq!(write_errors.load(Ordering::Relaxed), 0, "writes failed");
    let rx = c.counter("rx_packets");
    assert!(connected(&c, "kr/a", "kr/b"), "a → b after the relist");
    assert!(c.counter("rx_packets") > rx);
    stop.store(true, Ordering::Relaxed);
}

/// `weir demo --mode api-server`: the built-in demo on a real API server
/// says which mode it runs in, applies its policies through the API server
/// (their effects seen), and takes everything down again.
#[test]
fn demo_runs_on_the_api_server_and_says_so() {
    let name = unique_name("kd");
    let out = Command::new(weir_bin())
        .args(["--cluster", &name, "demo", "--mode", "api-server"])
        .output()
        .expect("weir demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "weir demo: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("== mode: on a real Kubernetes API server"),
        "{stdout}"
    );
    assert!(stdout.contains("$ weir kubectl apply -f"), "{stdout}");
    // The policies applied through the API server reached the dataplanes.
    for evidence in [
        "=> HTTP 403",
        "status: REFUSED",
        "revoked DENIED",
        "kernel + haproxy L7 detour",
    ] {
        assert!(stdout.contains(evidence), "no {evidence:?}: {stdout}");
    }
    let state = std::env::var_os("WEIR_STATE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/weir"));
    assert!(!state.join(&name).exists(), "demo left its state");
}
