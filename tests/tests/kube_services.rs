//! Services from a REAL kube-apiserver through `weir agent --node`: the
//! real endpointslice controller (kube-controller-manager, started by
//! scripts/k8s-control-plane.sh) writes the slices of a Service whose
//! selector matches pods that got their addresses from weir-cni; the agent
//! turns Services + EndpointSlices into the Services in force
//! (`services-in-force.json`). Bad input (a targetPort name no pod has, an
//! EndpointSlice of a Service that does not exist) is a warning and an
//! Event, and the last good state stays. Needs root and Go.
//!
//! The "kubelet" here does a kubelet's networking part only, as in
//! kube_node.rs: creates each pod's netns, calls weir-cni as containerd does
//! and writes the pod's status (Running, podIPs, Ready) from the result.

use serde_json::{json, Value};
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use weir_tests::k8s::ControlPlane;
use weir_tests::kubelet::Netns;
use weir_tests::{unique_name, weir_bin};

/// The node: its netns, state directory, agent; `Drop` stops the agent and
/// its dataplane and removes the state.
struct Node {
    name: String,
    netns: String,
    state: PathBuf,
    agent: Option<Child>,
}

impl Node {
    fn start_agent(&mut self, kubeconfig: &std::path::Path) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.state.join("agent.log"))
            .expect("log");
        let child = Command::new(weir_bin())
            .arg("agent")
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(["--node", &self.name, "--netns", &self.netns, "--state-dir"])
            .arg(&self.state)
            .env("RUST_LOG", "info")
            .stderr(log)
            .spawn()
            .expect("weir agent");
        self.agent = Some(child);
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.state.join("agent.log")).unwrap_or_default()
    }

    /// The agent's `services-in-force.json`.
    fn services(&self) -> Value {
        std::fs::read(self.state.join("kube/services-in-force.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null)
    }

    fn service(&self, ns: &str, name: &str) -> Value {
        self.services()
            .as_array()
            .into_iter()
            .flatten()
            .find(|s| s["namespace"] == ns && s["name"] == name)
            .cloned()
            .unwrap_or(Value::Null)
    }

    /// weir-cni ADD as containerd calls it; the pod's IPv4 address.
    fn cni_add(
        &self,
        ns: &str,
        name: &str,
        uid: &str,
        netns: &std::path::Path,
    ) -> Option<Ipv4Addr> {
        let path = self.state.join("kube/10-weir.conflist");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !path.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let list: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("the agent's conflist"))
                .expect("conflist JSON");
        let mut conf = list["plugins"][0].clone();
        conf["cniVersion"] = list["cniVersion"].clone();
        conf["name"] = list["name"].clone();
        for _ in 0..100 {
            let mut c = Command::new(weir_bin().with_file_name("weir-cni"))
                .env("CNI_COMMAND", "ADD")
                .env("CNI_CONTAINERID", format!("ctr-{name}"))
                .env("CNI_NETNS", netns)
                .env("CNI_IFNAME", "eth0")
                .env("CNI_PATH", "/opt/cni/bin")
                .env(
                    "CNI_ARGS",
                    format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={ns};K8S_POD_NAME={name};K8S_POD_INFRA_CONTAINER_ID=ctr-{name};K8S_POD_UID={uid}"),
                )
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("weir-cni");
            c.stdin
                .take()
                .expect("stdin")
                .write_all(conf.to_string().as_bytes())
                .expect("conf");
            let out = c.wait_with_output().expect("weir-cni output");
            let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
            if out.status.success() {
                let a = v["ips"][0]["address"].as_str()?;
                return a.split('/').next()?.parse().ok();
            }
            if v["code"] != 11 {
                panic!("ADD {ns}/{name}: {v}\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        None
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut c) = self.agent.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let pid = std::fs::read_to_string(
            self.state
                .join(format!("kube/nodes/{}/dataplane.pid", self.name)),
        );
        if let Ok(pid) = pid {
            let _ = Command::new("kill").arg(pid.trim()).status();
            std::thread::sleep(Duration::from_millis(500));
        }
        let _ = std::fs::remove_dir_all(&self.state);
    }
}

/// Waits (bounded) until `f` is true; the bound only keeps a broken agent
/// or controller from hanging the suite, nothing is timed.
fn wait_until(node: &Node, cp: &ControlPlane, what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(90);
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let cm = std::fs::read_to_string(cp.dir.join("logs/kube-controller-manager.log"))
        .unwrap_or_default();
    let tail: Vec<_> = cm.lines().rev().take(20).collect();
    panic!(
        "{what}: not reached; agent log:\n{}\ncontroller-manager log (last lines, newest first):\n{}",
        node.log(),
        tail.join("\n")
    );
}

/// A pod with a named container port `web` (TCP 80) and UDP 53.
fn pod_yaml(name: &str, node: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: ks, labels: {{app: {name}, tier: backend}}}}\n\
spec:\n  nodeName: {node}\n  containers:\n  - name: c\n    image: registry.invalid/none\n\
\x20   ports: [{{name: web, containerPort: 80}}, {{containerPort: 53, protocol: UDP}}]\n"
    )
}

/// Two ports: `http` to the named container port `web` (or `target`),
/// `dns` to 53/UDP by number.
fn service_yaml(target: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: ks}}\n\
spec:\n  selector: {{tier: backend}}\n  ports:\n\
\x20 - {{name: http, port: 8080, targetPort: {target}}}\n\
\x20 - {{name: dns, port: 53, protocol: UDP, targetPort: 53}}\n"
    )
}

/// An endpoint as compared here: (pod, address, ports by name).
type Ep = (String, String, Vec<(String, u64)>);

/// The ready endpoints of a Service in force.
fn ready_endpoints(svc: &Value) -> Vec<Ep> {
    let mut v: Vec<_> = svc["endpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["ready"] == true)
        .map(|e| {
            let mut ports: Vec<_> = e["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| {
                    (
                        p["name"].as_str().unwrap_or_default().to_string(),
                        p["port"].as_u64().unwrap_or(0),
                    )
                })
                .collect();
            ports.sort();
            (
                e["pod"].as_str().unwrap_or_default().to_string(),
                e["addresses"][0].as_str().unwrap_or_default().to_string(),
                ports,
            )
        })
        .collect();
    v.sort();
    v
}

/// The Events (core/v1 view, as `kubectl get events` shows them) of a
/// reason in namespace ks.
fn events(cp: &ControlPlane, reason: &str) -> Vec<Value> {
    let out = cp.kubectl(
        &[
            "get",
            "events",
            "-n",
            "ks",
            "--field-selector",
            &format!("reason={reason}"),
            "-o",
            "json",
        ],
        None,
    );
    serde_json::from_slice::<Value>(&out.stdout).unwrap_or(Value::Null)["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[test]
fn services_and_endpointslices_from_the_api_server() {
    let cp = ControlPlane::start("ksvc");
    let tag = unique_name("ks");
    let mut netns = Netns(Vec::new());
    let node_ns = format!("w{tag}");
    netns.add(&node_ns);
    let state = std::env::temp_dir().join(format!("weir-{tag}"));
    std::fs::create_dir_all(&state).expect("state dir");
    let mut node = Node {
        name: format!("node-{tag}"),
        netns: node_ns,
        state,
        agent: None,
    };
    cp.kubectl_ok(
        &["apply", "-f", "-"],
        Some(&format!(
            "apiVersion: v1\nkind: Node\nmetadata: {{name: {}}}\n\
spec: {{podCIDR: 10.215.7.0/24, podCIDRs: [10.215.7.0/24]}}\n",
            node.name
        )),
    );
    node.start_agent(&cp.kubeconfig);
    cp.kubectl_ok(&["create", "namespace", "ks"], None);
    wait_until(&node, &cp, "default ServiceAccount", || {
        cp.kubectl(&["get", "serviceaccount", "-n", "ks", "default"], None)
            .status
            .success()
    });

    // Two pods: weir-cni gives them their addresses; the status a kubelet
    // writes (Running, podIPs, Ready) makes them ready endpoints.
    let mut ips = Vec::new();
    for name in ["sa", "sb"] {
        cp.kubectl_ok(&["apply", "-f", "-"], Some(&pod_yaml(name, &node.name)));
        let uid = cp.kubectl_ok(
            &[
                "get",
                "pod",
                "-n",
                "ks",
                name,
                "-o",
                "jsonpath={.metadata.uid}",
            ],
            None,
        );
        let path = netns.add(&format!("w{tag}-{name}"));
        let ip = node
            .cni_add("ks", name, &uid, &path)
            .expect("an address from weir-cni")
            .to_string();
        let patch = json!({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
            "conditions": [{"type": "Ready", "status": "True"},
                           {"type": "ContainersReady", "status": "True"}]}});
        cp.kubectl_ok(
            &[
                "patch",
                "pod",
                "-n",
                "ks",
                name,
                "--subresource=status",
                "--type=merge",
                "-p",
                &patch.to_string(),
            ],
            None,
        );
        ips.push(ip);
    }

    // The Service: its ClusterIP and the endpoints the real endpointslice
    // controller wrote (the named targetPort resolved to 80 on each pod).
    cp.kubectl_ok(&["apply", "-f", "-"], Some(&service_yaml("web")));
    let cluster_ip = cp.kubectl_ok(
        &[
            "get",
            "service",
            "-n",
            "ks",
            "web",
            "-o",
            "jsonpath={.spec.clusterIP}",
        ],
        None,
    );
    let want = |names: &[(&str, &String)]| -> Vec<Ep> {
        names
            .iter()
            .map(|(n, ip)| {
                (
                    format!("ks/{n}"),
                    ip.to_string(),
                    vec![("dns".to_string(), 53), ("http".to_string(), 80)],
                )
            })
            .collect()
    };
    let both = want(&[("sa", &ips[0]), ("sb", &ips[1])]);
    wait_until(&node, &cp, "both endpoints in force", || {
        let s = node.service("ks", "web");
        s["cluster_ips"] == json!([cluster_ip]) && ready_endpoints(&s) == both
    });
    let s = node.service("ks", "web");
    assert_eq!(s["kind"], "ClusterIP");
    assert_eq!(
        s["ports"],
        json!([
            {"name": "http", "protocol": "TCP", "port": 8080, "target": {"Name": "web"}, "node_port": null},
            {"name": "dns", "protocol": "UDP", "port": 53, "target": {"Number": 53}, "node_port": null}
        ])
    );
    // The node's status names it too.
    let st = Command::new(weir_bin())
        .args(["--cluster", "kube", "status", "-o", "json"])
        .env("WEIR_STATE_DIR", &node.state)
        .output()
        .expect("weir status");
    let st: Value = serde_json::from_slice(&st.stdout).unwrap_or(Value::Null);
    assert!(
        st["services"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| s["service"] == "ks/web" && s["ready"] == 2),
        "weir status: {st}"
    );

    // A pod deleted: its endpoint goes.
    cp.kubectl_ok(
        &[
            "delete",
            "pod",
            "-n",
            "ks",
            "sb",
            "--grace-period=0",
            "--force",
        ],
        None,
    );
    let only_a = want(&[("sa", &ips[0])]);
    wait_until(&node, &cp, "sb's endpoint gone", || {
        let s = node.service("ks", "web");
        ready_endpoints(&s) == only_a && s["endpoints"].as_array().map(Vec::len) == Some(1)
    });
    let good = node.service("ks", "web");

    // A targetPort name no pod has: the controller resolves it on no pod;
    // a warning and one Event, and the last good state stays: the same
    // ClusterIP, backends and resolved ports (the Service object in force
    // may be the one the agent saw before the controller rewrote the
    // slices: its endpoints still resolved the port then).
    let same_as_good = |s: &Value| {
        s["cluster_ips"] == good["cluster_ips"] && ready_endpoints(s) == ready_endpoints(&good)
    };
    cp.kubectl_ok(&["apply", "-f", "-"], Some(&service_yaml("nope")));
    wait_until(&node, &cp, "an Event on the Service", || {
        !events(&cp, "WeirInvalidService").is_empty()
    });
    assert!(
        node.log()
            .contains("services/ks/web: spec.ports[0].targetPort: \"nope\": no endpoint has a port of that name"),
        "{}",
        node.log()
    );
    let ev = &events(&cp, "WeirInvalidService")[0];
    assert_eq!(ev["type"], "Warning");
    assert_eq!(ev["involvedObject"]["kind"], "Service");
    assert_eq!(ev["involvedObject"]["name"], "web");
    assert!(
        ev["message"]
            .as_str()
            .unwrap_or_default()
            .contains("targetPort: \"nope\""),
        "{ev}"
    );
    assert!(
        same_as_good(&node.service("ks", "web")),
        "{}",
        node.service("ks", "web")
    );

    // Not one per resync: a change elsewhere recompiles, no new Event.
    let published = |log: &str| log.matches("published generation").count();
    let before = published(&node.log());
    cp.kubectl_ok(&["label", "pod", "-n", "ks", "sa", "extra=1"], None);
    wait_until(&node, &cp, "a recompile after the label change", || {
        published(&node.log()) > before
    });
    let evs = events(&cp, "WeirInvalidService");
    assert_eq!(evs.len(), 1, "{evs:?}");
    assert!(evs[0]["count"].as_u64().unwrap_or(1) <= 1, "{evs:?}");
    assert_eq!(
        node.log().matches("targetPort: \"nope\"").count(),
        1,
        "{}",
        node.log()
    );
    assert!(
        same_as_good(&node.service("ks", "web")),
        "{}",
        node.service("ks", "web")
    );

    // A restarted agent, the Service still bad: it starts from
    // services-in-force.json, so the last good state stays across it.
    if let Some(mut c) = node.agent.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
    let starts = |log: &str| log.matches("initial lists complete").count();
    let (starts_before, published_before) = (starts(&node.log()), published(&node.log()));
    node.start_agent(&cp.kubeconfig);
    wait_until(&node, &cp, "the restarted agent published", || {
        let log = node.log();
        starts(&log) > starts_before && published(&log) > published_before
    });
    assert!(
        same_as_good(&node.service("ks", "web")),
        "{}",
        node.service("ks", "web")
    );

    // Good again: the change goes through.
    cp.kubectl_ok(&["apply", "-f", "-"], Some(&service_yaml("web")));
    wait_until(&node, &cp, "the Service good again", || {
        ready_endpoints(&node.service("ks", "web")) == only_a
            && node.service("ks", "web")["ports"][0]["target"] == json!({"Name": "web"})
    });

    // An EndpointSlice made by hand for a Service that does not exist.
    cp.kubectl_ok(
        &["apply", "-f", "-"],
        Some(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
metadata: {name: ghost-1, namespace: ks, labels: {kubernetes.io/service-name: ghost}}\n\
addressType: IPv4\nports: [{name: http, port: 80, protocol: TCP}]\n\
endpoints: [{addresses: [10.215.7.200]}]\n",
        ),
    );
    wait_until(&node, &cp, "an Event on the orphan slice", || {
        !events(&cp, "WeirInvalidEndpointSlice").is_empty()
    });
    let ev = &events(&cp, "WeirInvalidEndpointSlice")[0];
    assert_eq!(ev["involvedObject"]["kind"], "EndpointSlice");
    assert_eq!(ev["involvedObject"]["name"], "ghost-1");
    assert!(
        ev["message"]
            .as_str()
            .unwrap_or_default()
            .contains("no Service ks/ghost"),
        "{ev}"
    );
    assert!(node.service("ks", "ghost").is_null());
    assert_eq!(ready_endpoints(&node.service("ks", "web")), only_a);
}
