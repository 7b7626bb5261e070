//! The test "kubelet" of the node-agent tests (tests/tests/kube_node*.rs):
//! what a kubelet and its container runtime do for networking on a node of
//! a cluster weir did not build, and nothing more. It registers Nodes,
//! makes each pod's network namespace, calls weir-cni as containerd does
//! (CNI_ARGS with IgnoreUnknown and K8S_POD_*, the conflist the agent
//! installed), starts the pod's servers and writes the pod's status (IP and
//! Ready condition) from the CNI result. Every node runs the real `weir
//! agent --kubeconfig --node` against a [`ControlPlane`].

use crate::k8s::ControlPlane;
use crate::{unique_name, weir_bin};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Network namespaces made with `ip netns add`; `Drop` deletes them.
pub struct Netns(pub Vec<String>);

impl Netns {
    pub fn add(&mut self, name: &str) -> PathBuf {
        let ok = Command::new("ip")
            .args(["netns", "add", name])
            .status()
            .expect("ip netns add")
            .success();
        assert!(ok, "ip netns add {name}");
        self.0.push(name.to_string());
        PathBuf::from("/run/netns").join(name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for n in self.0.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

/// One node: its netns, state directory, agent; `Drop` stops the agent and
/// the dataplane (which outlives the agent on purpose) and removes the state.
pub struct NodeUnderTest {
    pub name: String,
    pub netns: String,
    pub state: PathBuf,
    pub kubeconfig: PathBuf,
    pub agent: Option<Child>,
}

impl NodeUnderTest {
    pub fn start_agent(&mut self) {
        self.start_agent_with(&[]);
    }

    /// The agent with extra flags (e.g. `--encap geneve`).
    pub fn start_agent_with(&mut self, extra: &[&str]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.state.join("agent.log"))
            .expect("log");
        let child = Command::new(weir_bin())
            .env("WEIR_METRICS_ADDR", "off")
            .arg("agent")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(["--node", &self.name, "--netns", &self.netns, "--state-dir"])
            .arg(&self.state)
            .args(extra)
            .env("RUST_LOG", "info")
            .stderr(log)
            .spawn()
            .expect("weir agent");
        self.agent = Some(child);
    }

    pub fn kill_agent(&mut self) {
        if let Some(mut c) = self.agent.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.state.join("agent.log")).unwrap_or_default()
    }

    /// `weir status -o json` on the node agent's state.
    pub fn status(&self) -> Value {
        let out = Command::new(weir_bin())
            .args(["--cluster", "kube", "status", "-o", "json"])
            .env("WEIR_STATE_DIR", &self.state)
            .output()
            .expect("weir status");
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }

    pub fn workers_sum(&self, f: impl Fn(&Value) -> u64) -> u64 {
        self.status()["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|n| {
                n["status"]["dataplane"]["workers"]
                    .as_array()
                    .into_iter()
                    .flatten()
            })
            .map(f)
            .sum()
    }

    pub fn rx_packets(&self) -> u64 {
        self.workers_sum(|w| w["rx_packets"].as_u64().unwrap_or(0))
    }

    pub fn drops(&self, reason: &str) -> u64 {
        self.workers_sum(|w| w["drops"][reason].as_u64().unwrap_or(0))
    }

    /// weir-cni as containerd calls it; (exit status, stdout JSON).
    pub fn cni(&self, command: &str, pod: &Pod, uid: &str) -> (bool, Value) {
        let args = format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={uid}",
            pod.namespace,
            pod.name,
            pod.container_id()
        );
        self.cni_args(command, pod, &args)
    }

    /// weir-cni with the given CNI_ARGS.
    pub fn cni_args(&self, command: &str, pod: &Pod, args: &str) -> (bool, Value) {
        // The conflist the agent installs, as libcni hands its plugin to
        // the binary: the plugin's keys plus the list's cniVersion and name.
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
        assert_eq!(conf["type"], "weir-cni");
        assert_eq!(conf["node"].as_str(), Some(self.name.as_str()));
        let bin = weir_bin().with_file_name("weir-cni");
        let mut c = Command::new(bin)
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", pod.container_id())
            .env("CNI_NETNS", &pod.netns_path)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", "/opt/cni/bin")
            .env("CNI_ARGS", args)
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
        let v = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        (out.status.success(), v)
    }
}

impl Drop for NodeUnderTest {
    fn drop(&mut self) {
        self.kill_agent();
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

pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub netns_path: PathBuf,
    pub ip: Option<Ipv4Addr>,
}

impl Pod {
    /// The sandbox's container id, unique per pod as a runtime's is (pods
    /// of one name in two namespaces are two sandboxes).
    pub fn container_id(&self) -> String {
        format!("ctr-{}-{}", self.namespace, self.name)
    }
}

pub fn pod_yaml(ns: &str, name: &str, node: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{app: {name}}}}}\n\
spec:\n  nodeName: {node}\n  containers:\n  - name: c\n    image: registry.invalid/none\n\
\x20   ports: [{{containerPort: 80}}, {{containerPort: 53, protocol: UDP}}]\n"
    )
}

/// The kubelet's part after CNI ADD: the pod's status from the result, with
/// the Ready condition a kubelet sets once the containers run (the
/// endpointslice controller marks an endpoint ready from it).
pub fn write_status(cp: &ControlPlane, p: &Pod) {
    let ip = p.ip.expect("an address").to_string();
    let patch = json!({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
        "conditions": [{"type": "Ready", "status": "True"}, {"type": "ContainersReady", "status": "True"}]}});
    cp.kubectl_ok(
        &[
            "patch",
            "pod",
            "-n",
            &p.namespace,
            &p.name,
            "--subresource=status",
            "--type=merge",
            "-p",
            &patch.to_string(),
        ],
        None,
    );
}

/// TCP echo on :80 and UDP echo on :53 inside `netns`.
pub fn start_servers(netns: &Path) {
    start_echo(netns, &[80], &[53]);
}

/// TCP and UDP echo servers on the given ports inside `netns` (sockets made
/// there belong to it; served from threads of this process).
pub fn start_echo(netns: &Path, tcp_ports: &[u16], udp_ports: &[u16]) {
    for &port in tcp_ports {
        let tcp = weir_topo::netns::run_in_path(netns, || {
            TcpListener::bind(("0.0.0.0", port)).expect("bind tcp")
        })
        .expect("enter pod netns");
        std::thread::spawn(move || {
            for s in tcp.incoming() {
                let Ok(mut s) = s else { continue };
                std::thread::spawn(move || {
                    let mut buf = [0u8; 65536];
                    while let Ok(n) = s.read(&mut buf) {
                        if n == 0 || s.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
    }
    for &port in udp_ports {
        let udp = weir_topo::netns::run_in_path(netns, || {
            UdpSocket::bind(("0.0.0.0", port)).expect("bind udp")
        })
        .expect("enter pod netns");
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while let Ok((n, from)) = udp.recv_from(&mut buf) {
                let _ = udp.send_to(&buf[..n], from);
            }
        });
    }
}

/// Servers that answer with the pod's name: HTTP/1.0 on TCP `port` (for
/// curl) and a datagram with the name on UDP `port`.
pub fn start_name_servers(netns: &Path, name: &str, port: u16) {
    start_name_servers_on(netns, name, SocketAddr::from(([0, 0, 0, 0], port)));
}

/// [`start_name_servers`] on `at` (an IPv6 address of the pod, say).
pub fn start_name_servers_on(netns: &Path, name: &str, at: SocketAddr) {
    let (tcp, udp) = weir_topo::netns::run_in_path(netns, || {
        (
            TcpListener::bind(at).expect("bind tcp"),
            UdpSocket::bind(at).expect("bind udp"),
        )
    })
    .expect("enter pod netns");
    let body = name.to_string();
    std::thread::spawn(move || {
        for s in tcp.incoming() {
            let Ok(mut s) = s else { continue };
            let body = body.clone();
            std::thread::spawn(move || {
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                // Read the request head, then answer and close.
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = write!(
                    s,
                    "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
    let name = name.to_string();
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((_, from)) = udp.recv_from(&mut buf) {
            let _ = udp.send_to(name.as_bytes(), from);
        }
    });
}

/// A TCP echo round trip to `to`:80 from the netns at `from`.
pub fn tcp_ok(from: &Path, to: Ipv4Addr) -> bool {
    tcp_port_ok(from, to, 80, Duration::from_millis(700))
}

/// A TCP echo round trip to `to`:`port` from the netns at `from`.
pub fn tcp_port_ok(from: &Path, to: Ipv4Addr, port: u16, timeout: Duration) -> bool {
    weir_topo::netns::run_in_path(from, || {
        let addr = SocketAddr::from((to, port));
        let Ok(mut s) = TcpStream::connect_timeout(&addr, timeout) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(timeout));
        let mut buf = [0u8; 5];
        s.write_all(b"hello").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"hello"
    })
    .unwrap_or(false)
}

/// A UDP echo round trip to `to`:53 (three attempts) from `from`.
pub fn udp_ok(from: &Path, to: Ipv4Addr) -> bool {
    udp_port_ok(from, to, 53, 3, Duration::from_millis(500))
}

/// A UDP echo round trip to `to`:`port` from `from`, `attempts` tries.
pub fn udp_port_ok(from: &Path, to: Ipv4Addr, port: u16, attempts: u32, timeout: Duration) -> bool {
    weir_topo::netns::run_in_path(from, || {
        let Ok(s) = UdpSocket::bind("0.0.0.0:0") else {
            return false;
        };
        let _ = s.set_read_timeout(Some(timeout));
        let mut buf = [0u8; 16];
        (0..attempts).any(|_| {
            s.send_to(b"ping", (to, port)).is_ok()
                && matches!(s.recv_from(&mut buf), Ok((4, _)))
                && &buf[..4] == b"ping"
        })
    })
    .unwrap_or(false)
}

/// The kubelet's whole job for one pod: the Pod object (`yaml`) created
/// with kubectl, its netns, CNI ADD (retried on error 11 as a runtime
/// does), its status written. Servers are the caller's.
pub fn attach(
    cp: &ControlPlane,
    node: &NodeUnderTest,
    netns: &mut Netns,
    netns_name: &str,
    ns: &str,
    name: &str,
    yaml: &str,
) -> Pod {
    cp.kubectl_ok(&["apply", "-f", "-"], Some(yaml));
    let uid = cp.kubectl_ok(
        &[
            "get",
            "pod",
            "-n",
            ns,
            name,
            "-o",
            "jsonpath={.metadata.uid}",
        ],
        None,
    );
    let mut p = Pod {
        namespace: ns.into(),
        name: name.to_string(),
        netns_path: netns.add(netns_name),
        ip: None,
    };
    let mut res = (false, Value::Null);
    for _ in 0..100 {
        res = node.cni("ADD", &p, &uid);
        if res.0 || res.1["code"] != 11 {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(res.0, "ADD {ns}/{name}: {}\n{}", res.1, node.log());
    let addr = res.1["ips"][0]["address"].as_str().expect("an address");
    p.ip = Some(addr.split('/').next().unwrap().parse().expect("IPv4"));
    p
}

/// Registers a Node with one podCIDR; `underlay` (if any) as its
/// `weir.dev/underlay-ip` annotation.
pub fn register_node(cp: &ControlPlane, name: &str, cidr: &str, underlay: Option<&str>) {
    let ann = underlay
        .map(|u| format!(", annotations: {{weir.dev/underlay-ip: {u}}}"))
        .unwrap_or_default();
    cp.kubectl_ok(
        &["apply", "-f", "-"],
        Some(&format!(
            "apiVersion: v1\nkind: Node\nmetadata: {{name: {name}{ann}}}\n\
spec: {{podCIDR: {cidr}, podCIDRs: [{cidr}]}}\n"
        )),
    );
}

/// Two node namespaces joined by an underlay of the test's own: one veth
/// pair `ul0` (two queues each end), 192.168.77.1 and .2/24.
pub fn underlay_pair(netns: &mut Netns, ns_a: &str, ns_b: &str) {
    netns.add(ns_a);
    netns.add(ns_b);
    let ip = |ns: &str, args: &[&str]| {
        let ok = Command::new("ip")
            .args(["-n", ns])
            .args(args)
            .status()
            .expect("ip")
            .success();
        assert!(ok, "ip -n {ns} {args:?}");
    };
    ip(
        ns_a,
        &[
            "link",
            "add",
            "ul0",
            "numtxqueues",
            "2",
            "numrxqueues",
            "2",
            "type",
            "veth",
            "peer",
            "name",
            "ul0",
            "netns",
            ns_b,
            "numtxqueues",
            "2",
            "numrxqueues",
            "2",
        ],
    );
    ip(ns_a, &["addr", "add", "192.168.77.1/24", "dev", "ul0"]);
    ip(ns_b, &["addr", "add", "192.168.77.2/24", "dev", "ul0"]);
    for ns in [ns_a, ns_b] {
        ip(ns, &["link", "set", "ul0", "up"]);
        ip(ns, &["link", "set", "lo", "up"]);
    }
}

/// A node of the test's: its agent not started yet.
pub fn node_under_test(cp: &ControlPlane, name: &str, netns: &str, tag: &str) -> NodeUnderTest {
    let state = std::env::temp_dir().join(format!("weir-{tag}-{name}"));
    std::fs::create_dir_all(&state).expect("state dir");
    NodeUnderTest {
        name: name.to_string(),
        netns: netns.to_string(),
        state,
        kubeconfig: cp.kubeconfig.clone(),
        agent: None,
    }
}

/// Creates namespace `ns` and waits for its default ServiceAccount (the
/// controller-manager's), which pods need.
pub fn create_namespace(cp: &ControlPlane, node: &NodeUnderTest, ns: &str) {
    cp.kubectl_ok(&["create", "namespace", ns], None);
    wait_until(node, "default ServiceAccount", || {
        cp.kubectl(&["get", "serviceaccount", "-n", ns, "default"], None)
            .status
            .success()
    });
}

/// Waits (bounded) until `f` is true; the bound only keeps a broken agent
/// from hanging the suite, nothing is timed.
pub fn wait_until(node: &NodeUnderTest, what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("{what}: not reached; agent log:\n{}", node.log());
}

/// A control plane, a node with its agent, and pods attached through
/// weir-cni with their status written (the test kubelet's whole job).
pub struct Setup {
    pub pods: Vec<Pod>,
    pub node: NodeUnderTest,
    pub netns: Netns,
    pub cp: ControlPlane,
}

pub fn setup(tag_prefix: &str, cidr_octet: u8, names: &[&str]) -> Setup {
    let cp = ControlPlane::start(tag_prefix);
    let tag = unique_name(tag_prefix);
    let node_name = format!("node-{tag}");
    let mut netns = Netns(Vec::new());
    let node_ns = format!("w{tag}");
    netns.add(&node_ns);
    let state = std::env::temp_dir().join(format!("weir-{tag}"));
    std::fs::create_dir_all(&state).expect("state dir");
    let mut node = NodeUnderTest {
        name: node_name.clone(),
        netns: node_ns,
        state,
        kubeconfig: cp.kubeconfig.clone(),
        agent: None,
    };
    register_node(&cp, &node_name, &format!("10.213.{cidr_octet}.0/24"), None);
    node.start_agent();
    create_namespace(&cp, &node, "kn");
    let mut pods = Vec::new();
    for name in names {
        let p = attach(
            &cp,
            &node,
            &mut netns,
            &format!("w{tag}-{name}"),
            "kn",
            name,
            &pod_yaml("kn", name, &node_name),
        );
        start_servers(&p.netns_path);
        write_status(&cp, &p);
        pods.push(p);
    }
    Setup {
        pods,
        node,
        netns,
        cp,
    }
}

/// Writes `{"op":"ping"}` to the node's dataplane: the generation it runs.
pub fn dataplane_generation(node: &NodeUnderTest) -> u64 {
    let sock = node
        .state
        .join(format!("kube/nodes/{}/dataplane.sock", node.name));
    let Ok(mut s) = std::os::unix::net::UnixStream::connect(sock) else {
        return 0;
    };
    let _ = s.write_all(b"{\"op\":\"ping\"}\n");
    let mut line = String::new();
    let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(&s), &mut line);
    serde_json::from_str::<Value>(&line).unwrap_or(Value::Null)["data"]["generation"]
        .as_u64()
        .unwrap_or(0)
}

/// Tunnel frames the node's dataplane took in from its underlay (the XDP
/// program's redirects on the underlay port).
pub fn underlay_redirected(node: &NodeUnderTest) -> u64 {
    node.status()["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|n| {
            n["status"]["dataplane"]["ports"]
                .as_array()
                .into_iter()
                .flatten()
        })
        .filter(|p| p["underlay"] == true)
        .map(|p| p["xdp"]["redirected"].as_u64().unwrap_or(0))
        .sum()
}

/// The overlay peers (node names) of the node's published snapshot.
pub fn snapshot_peers(node: &NodeUnderTest) -> Vec<String> {
    let path = node
        .state
        .join(format!("kube/nodes/{}/snapshot.json", node.name));
    let v: Value = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null);
    v["tunnel"]["peers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["node"].as_str().map(str::to_string))
        .collect()
}
