//! `weir agent --node` on a node of a cluster weir did not build: a REAL
//! kube-apiserver (scripts/k8s-control-plane.sh), and a test "kubelet" that
//! does what a kubelet and its runtime do for networking and nothing more:
//! registers the Node (spec.podCIDRs), creates each pod's netns, calls
//! weir-cni as containerd does (CNI_ARGS with IgnoreUnknown and K8S_POD_*),
//! starts the pod's servers and writes the pod's status from the CNI result.
//! Needs root and Go.

use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use weir_tests::k8s::{repo, ControlPlane};
use weir_tests::kubelet::*;
use weir_tests::{unique_name, weir_bin};

const NETPOL_B: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
metadata: {name: b-udp-from-a, namespace: kn}\n\
spec:\n  podSelector: {matchLabels: {app: b}}\n  policyTypes: [Ingress]\n\
\x20 ingress:\n  - from: [{podSelector: {matchLabels: {app: a}}}]\n    ports: [{protocol: UDP, port: 53}]\n";

/// The API server accepts it; weir refuses it: an HTTP path regex that does
/// not compile.
const BAD_WEIR: &str = "apiVersion: weir.dev/v1alpha1\nkind: WeirPolicy\n\
metadata: {name: bad-regex, namespace: kn}\n\
spec:\n  podSelector: {matchLabels: {app: b}}\n  ingress:\n  - action: Allow\n\
\x20   ports: [{protocol: TCP, port: 80}]\n    http: [{path: {regex: \"(\"}}]\n";

#[test]
fn kubelet_pods_through_weir_cni_are_policed_by_kubectl_policies() {
    let cp = ControlPlane::start("kn");
    let tag = unique_name("kn");
    let node_name = format!("node-{tag}");
    let mut netns = Netns(Vec::new());
    let node_ns = format!("wkn-{tag}");
    netns.add(&node_ns);
    let state = std::env::temp_dir().join(format!("weir-kn-{tag}"));
    std::fs::create_dir_all(&state).expect("state dir");
    let mut node = NodeUnderTest {
        name: node_name.clone(),
        netns: node_ns.clone(),
        state,
        kubeconfig: cp.kubeconfig.clone(),
        agent: None,
    };

    // The kubelet registers its Node.
    cp.kubectl_ok(
        &["apply", "-f", "-"],
        Some(&format!(
            "apiVersion: v1\nkind: Node\nmetadata: {{name: {node_name}}}\n\
spec: {{podCIDR: 10.213.7.0/24, podCIDRs: [10.213.7.0/24]}}\n"
        )),
    );
    node.start_agent();
    cp.kubectl_ok(&["create", "namespace", "kn"], None);
    // Pods need the namespace's default ServiceAccount (the controller-manager's).
    wait_until(&node, "default ServiceAccount", || {
        cp.kubectl(&["get", "serviceaccount", "-n", "kn", "default"], None)
            .status
            .success()
    });

    let mut pods = Vec::new();
    for name in ["a", "b"] {
        cp.kubectl_ok(
            &["apply", "-f", "-"],
            Some(&pod_yaml("kn", name, &node_name)),
        );
        let uid = cp.kubectl_ok(
            &[
                "get",
                "pod",
                "-n",
                "kn",
                name,
                "-o",
                "jsonpath={.metadata.uid}",
            ],
            None,
        );
        let mut p = Pod {
            namespace: "kn".into(),
            name: name.into(),
            netns_path: netns.add(&format!("wkn-{tag}-{name}")),
            ip: None,
        };
        // The agent may still be listing: a runtime retries error 11.
        let mut res = (false, Value::Null);
        for _ in 0..100 {
            res = node.cni("ADD", &p, &uid);
            if res.0 || res.1["code"] != 11 {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        assert!(res.0, "ADD {name}: {}\n{}", res.1, node.log());
        let addr = res.1["ips"][0]["address"]
            .as_str()
            .expect("an IPv4 address");
        let ip: Ipv4Addr = addr.split('/').next().unwrap().parse().expect("IPv4");
        assert!(
            addr.starts_with("10.213.7."),
            "{addr} is not from the Node's podCIDRs"
        );
        p.ip = Some(ip);
        // The agent's default --pod-rx-cpus auto: RPS on the pod's eth0
        // to every CPU without the worker (the last one).
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let want: Vec<usize> = (0..cpus - 1).collect();
        let masks = weir_topo::rps::pod_rx_masks(std::path::Path::new(&p.netns_path), "eth0")
            .expect("rps_cpus of the pod's eth0");
        for m in &masks {
            assert_eq!(
                weir_topo::rps::parse_cpu_mask(m),
                Some(want.clone()),
                "{masks:?}"
            );
        }
        start_servers(&p.netns_path);
        write_status(&cp, &p);
        pods.push(p);
    }
    let (a, b) = (&pods[0], &pods[1]);
    let b_ip = b.ip.unwrap();

    // No policy: open, and the packets crossed weir.
    let rx0 = node.rx_packets();
    wait_until(&node, "a→b TCP with no policy", || {
        tcp_ok(&a.netns_path, b_ip)
    });
    assert!(udp_ok(&a.netns_path, b_ip), "a→b UDP with no policy");
    assert!(node.rx_packets() > rx0, "the dataplane saw no packets");

    // A pod attached before its Pod object reached the agent gets nothing
    // (fail closed) until its identity is known.
    let late = Pod {
        namespace: "kn".into(),
        name: "late".into(),
        netns_path: netns.add(&format!("wkn-{tag}-late")),
        ip: None,
    };
    let (ok, res) = node.cni("ADD", &late, "");
    assert!(ok, "ADD late: {res}");
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        !tcp_ok(&late.netns_path, b_ip),
        "a pod without its Pod object reached b"
    );
    cp.kubectl_ok(
        &["apply", "-f", "-"],
        Some(&pod_yaml("kn", "late", &node_name)),
    );
    wait_until(&node, "late pod's identity known", || {
        tcp_ok(&late.netns_path, b_ip)
    });

    // kubectl apply of a NetworkPolicy: b admits UDP 53 from a only.
    let denied0 = node.drops("policy-denied");
    cp.kubectl_ok(&["apply", "-f", "-"], Some(NETPOL_B));
    wait_until(&node, "TCP a→b denied", || !tcp_ok(&a.netns_path, b_ip));
    assert!(udp_ok(&a.netns_path, b_ip), "UDP a→b allowed by the policy");
    assert!(!udp_ok(&late.netns_path, b_ip), "UDP late→b not allowed");
    assert!(node.drops("policy-denied") > denied0, "no denial counted");

    // The node itself (its netns stands for the host) reaches its pods
    // through the agent's host port (weir-host0 → weir-host1 → the
    // dataplane), also b under its NetworkPolicy (node addresses are
    // allowed by default, as kubelet probes need).
    let node_path = PathBuf::from("/run/netns").join(&node_ns);
    let host_rx = host_port_redirected(&node);
    assert!(tcp_ok(&node_path, b_ip), "node → b over the host port");
    assert!(udp_ok(&node_path, b_ip), "node → b UDP over the host port");
    assert!(
        host_port_redirected(&node) > host_rx,
        "the node's traffic did not cross weir-host1"
    );

    // The agent stops: forwarding and enforcement go on; CNI ADD is error 11.
    node.kill_agent();
    assert!(udp_ok(&a.netns_path, b_ip), "UDP a→b without the agent");
    assert!(!tcp_ok(&a.netns_path, b_ip), "TCP a→b without the agent");
    let c = Pod {
        namespace: "kn".into(),
        name: "c".into(),
        netns_path: netns.add(&format!("wkn-{tag}-c")),
        ip: None,
    };
    let (ok, res) = node.cni("ADD", &c, "");
    assert!(!ok && res["code"] == 11, "ADD without the agent: {res}");

    // Restarted: resyncs. A policy the API server accepts but weir refuses
    // (a regex that does not compile): the previous tables stay in force for
    // everything, even the deletion that follows, until it is gone.
    node.start_agent();
    cp.kubectl_ok(&["apply", "-f", "-"], Some(BAD_WEIR));
    cp.kubectl_ok(
        &["delete", "networkpolicy", "-n", "kn", "b-udp-from-a"],
        None,
    );
    wait_until(&node, "the refusal logged", || {
        node.log().contains("weirpolicies/kn/bad-regex")
    });
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        !tcp_ok(&a.netns_path, b_ip),
        "a refused set changed enforcement"
    );
    let events = cp.kubectl_ok(&["get", "events", "-n", "kn", "-o", "json"], None);
    assert!(
        events.contains("PolicyRefused"),
        "no Warning Event: {events}"
    );
    cp.kubectl_ok(&["delete", "weirpolicy", "-n", "kn", "bad-regex"], None);
    wait_until(&node, "TCP a→b after the policy is deleted", || {
        tcp_ok(&a.netns_path, b_ip)
    });

    for p in pods.iter().chain([&late]) {
        let (ok, res) = node.cni("DEL", p, "");
        assert!(ok, "DEL {}: {res}", p.name);
    }
    drop(node);
    drop(netns);
}

#[test]
fn a_node_without_pod_cidrs_fails_add_naming_it() {
    let cp = ControlPlane::start("kc");
    let tag = unique_name("kc");
    let node_name = format!("bare-{tag}");
    let mut netns = Netns(Vec::new());
    let node_ns = format!("wkc-{tag}");
    netns.add(&node_ns);
    let state = std::env::temp_dir().join(format!("weir-kc-{tag}"));
    std::fs::create_dir_all(&state).expect("state dir");
    let mut node = NodeUnderTest {
        name: node_name.clone(),
        netns: node_ns,
        state,
        kubeconfig: cp.kubeconfig.clone(),
        agent: None,
    };
    cp.kubectl_ok(
        &["apply", "-f", "-"],
        Some(&format!(
            "apiVersion: v1\nkind: Node\nmetadata: {{name: {node_name}}}\n"
        )),
    );
    // An API server without weir's WeirPolicy CRD nor ClusterNetworkPolicy's:
    // each is named once, the agent runs with the rest.
    cp.kubectl_ok(
        &[
            "delete",
            "crd",
            "weirpolicies.weir.dev",
            "clusternetworkpolicies.policy.networking.k8s.io",
        ],
        None,
    );
    let started = Instant::now();
    node.start_agent();
    wait_until(&node, "synced without two CRDs", || {
        node.status()["synced"] == true
    });
    let p = Pod {
        namespace: "default".into(),
        name: "p".into(),
        netns_path: netns.add(&format!("wkc-{tag}-p")),
        ip: None,
    };
    // A runtime that is not Kubernetes' (no K8S_POD_*): a clear error,
    // nothing made.
    let (ok, res) = node.cni_args("ADD", &p, "IgnoreUnknown=1");
    assert!(!ok && res["code"] == 4, "{res}");
    assert!(
        res["msg"]
            .as_str()
            .unwrap_or_default()
            .contains("K8S_POD_NAME"),
        "{res}"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let res = loop {
        let (ok, res) = node.cni("ADD", &p, "");
        assert!(!ok, "ADD on a node without podCIDRs succeeded: {res}");
        if res["msg"].as_str().unwrap_or_default().contains("podCIDRs") || Instant::now() > deadline
        {
            break res;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(res["code"], 11, "{res}");
    let msg = res["msg"].as_str().unwrap_or_default();
    assert!(
        msg.contains(&format!("nodes/{node_name}")) && msg.contains("spec.podCIDRs"),
        "{res}"
    );
    assert!(
        res["cniVersion"].is_string(),
        "not the spec's error JSON: {res}"
    );
    // The dataplane killed: the agent starts it again.
    let pid_file = node
        .state
        .join(format!("kube/nodes/{node_name}/dataplane.pid"));
    wait_until(&node, "the dataplane runs", || {
        node.status()["nodes"][0]["running"] == true
    });
    let pid = std::fs::read_to_string(&pid_file).expect("dataplane.pid");
    assert!(Command::new("kill")
        .arg("-9")
        .arg(pid.trim())
        .status()
        .unwrap()
        .success());
    wait_until(&node, "the dataplane started again", || {
        std::fs::read_to_string(&pid_file).is_ok_and(|p| p != pid)
            && node.status()["nodes"][0]["running"] == true
    });
    assert!(
        node.log().contains("the dataplane exited"),
        "{}",
        node.log()
    );
    // Past the agent's rediscovery period: still named once.
    std::thread::sleep(Duration::from_secs(12).saturating_sub(started.elapsed()));
    let log = node.log();
    for kind in ["WeirPolicy", "ClusterNetworkPolicy"] {
        let n = log
            .lines()
            .filter(|l| l.contains(&format!(" {kind}: not served by the API server")))
            .count();
        assert_eq!(n, 1, "{kind} named {n} times:\n{log}");
    }
    drop(node);
    drop(netns);
}

/// Frames weir-host1's XDP program handed to the dataplane.
fn host_port_redirected(node: &NodeUnderTest) -> u64 {
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
        .filter(|p| p["name"] == "weir-host1")
        .map(|p| p["xdp"]["redirected"].as_u64().unwrap_or(0))
        .sum()
}

/// A kubeconfig for the API server of `admin` with a bearer token.
fn token_kubeconfig(admin: &Path, token: &str, out: &Path) {
    let text = std::fs::read_to_string(admin).expect("admin kubeconfig");
    let field = |k: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(k))
            .unwrap_or_else(|| panic!("{k} in the admin kubeconfig"))
            .trim()
            .to_string()
    };
    let kc = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {}\n    certificate-authority-data: {}\n\
users:\n- name: weir-agent\n  user:\n    token: {token}\ncontexts:\n- name: c\n  context: {{cluster: c, user: weir-agent}}\ncurrent-context: c\n",
        field("server:"),
        field("certificate-authority-data:")
    );
    std::fs::write(out, kc).expect("write kubeconfig");
}

#[test]
fn deploy_manifests_apply_and_their_service_account_runs_the_agent() {
    let cp = ControlPlane::start("kd");
    let deploy = repo().join("deploy");
    cp.kubectl_ok(
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            deploy.join("crds").to_str().unwrap(),
            "-f",
            deploy.join("weir.yaml").to_str().unwrap(),
        ],
        None,
    );
    for obj in [
        "serviceaccount/weir-agent",
        "configmap/weir-agent",
        "daemonset/weir-agent",
    ] {
        cp.kubectl_ok(&["get", "-n", "weir-system", obj], None);
    }
    cp.kubectl_ok(
        &[
            "get",
            "clusterrole/weir-agent",
            "clusterrolebinding/weir-agent",
        ],
        None,
    );

    // Every verb the agent calls is granted to its ServiceAccount, and
    // nothing around it: checked by the API server's authorizer.
    let sa = "system:serviceaccount:weir-system:weir-agent";
    let can_i = |verb: &str, resource: &str| {
        let (resource, sub) = resource.split_once('/').unwrap_or((resource, ""));
        let mut args = vec!["auth", "can-i", verb, resource, "-A", "--as", sa];
        let subresource = format!("--subresource={sub}");
        if !sub.is_empty() {
            args.push(&subresource);
        }
        let out = cp.kubectl(&args, None);
        String::from_utf8_lossy(&out.stdout).trim() == "yes"
    };
    let policy_kinds = [
        "networkpolicies.networking.k8s.io",
        "clusternetworkpolicies.policy.networking.k8s.io",
        "adminnetworkpolicies.policy.networking.k8s.io",
        "baselineadminnetworkpolicies.policy.networking.k8s.io",
        "weirpolicies.weir.dev",
        "weirclusterpolicies.weir.dev",
    ];
    let mut granted: Vec<(&str, String)> = Vec::new();
    for r in ["nodes", "namespaces", "pods", "services"] {
        granted.extend([("list", r.to_string()), ("watch", r.to_string())]);
    }
    for v in ["list", "watch"] {
        granted.push((v, "endpointslices.discovery.k8s.io".into()));
    }
    for k in policy_kinds {
        for v in ["get", "list", "watch"] {
            granted.push((v, k.to_string()));
        }
    }
    for k in &policy_kinds[1..] {
        granted.push(("patch", format!("{k}/status")));
    }
    for v in ["create", "patch"] {
        granted.push((v, "events.events.k8s.io".into()));
    }
    // `--encrypt wireguard`: the JSON merge patch of its Node's annotation.
    granted.push(("patch", "nodes".into()));
    let denied = [
        ("update", "nodes"),
        ("delete", "nodes"),
        ("create", "nodes"),
        ("patch", "nodes/status"),
        ("get", "secrets"),
        ("list", "secrets"),
        ("create", "pods"),
        ("delete", "pods"),
        ("patch", "pods"),
        ("patch", "networkpolicies.networking.k8s.io"),
        ("update", "weirpolicies.weir.dev"),
        ("delete", "weirpolicies.weir.dev"),
        ("create", "serviceaccounts/token"),
    ];
    let missing: Vec<String> = granted
        .iter()
        .filter(|(v, r)| !can_i(v, r))
        .map(|(v, r)| format!("{v} {r}"))
        .collect();
    assert!(missing.is_empty(), "not granted to {sa}: {missing:?}");
    let extra: Vec<String> = denied
        .iter()
        .filter(|(v, r)| can_i(v, r))
        .map(|(v, r)| format!("{v} {r}"))
        .collect();
    assert!(
        extra.is_empty(),
        "granted to {sa} beyond the agent's needs: {extra:?}"
    );

    let tag = unique_name("kd");
    let node_name = format!("sa-{tag}");
    let mut netns = Netns(Vec::new());
    let node_ns = format!("wkd-{tag}");
    netns.add(&node_ns);
    let state = std::env::temp_dir().join(format!("weir-kd-{tag}"));
    std::fs::create_dir_all(&state).expect("state dir");
    let token = cp.kubectl_ok(
        &["create", "token", "weir-agent", "-n", "weir-system"],
        None,
    );
    let kc = state.join("sa.kubeconfig");
    token_kubeconfig(&cp.kubeconfig, token.trim(), &kc);
    cp.kubectl_ok(
        &["apply", "-f", "-"],
        Some(&format!(
            "apiVersion: v1\nkind: Node\nmetadata: {{name: {node_name}}}\n\
spec: {{podCIDR: 10.213.9.0/24, podCIDRs: [10.213.9.0/24]}}\n"
        )),
    );
    let mut node = NodeUnderTest {
        name: node_name.clone(),
        netns: node_ns,
        state,
        kubeconfig: kc,
        agent: None,
    };
    // As the DaemonSet runs it with `encrypt: wireguard`: the agent
    // publishes its public key on its Node with the ServiceAccount's rights.
    node.start_agent_with(&["--encrypt", "wireguard"]);
    wait_until(
        &node,
        "the agent synced with the ServiceAccount's token",
        || node.status()["synced"] == true && node.status()["nodes"][0]["running"] == true,
    );
    wait_until(&node, "the WireGuard key on the Node", || {
        !cp.kubectl_ok(
            &[
                "get",
                "node",
                &node_name,
                "-o",
                "jsonpath={.metadata.annotations.weir\\.dev/wireguard-public-key}",
            ],
            None,
        )
        .trim()
        .is_empty()
    });
    assert!(!node.log().contains("forbidden"), "{}", node.log());

    // Without `list` on the core kinds: the agent names verb and resource.
    node.kill_agent();
    cp.kubectl_ok(
        &[
            "patch",
            "clusterrole",
            "weir-agent",
            "--type=json",
            "-p",
            r#"[{"op": "replace", "path": "/rules/0/verbs", "value": ["watch"]}]"#,
        ],
        None,
    );
    node.start_agent();
    wait_until(&node, "the agent names the missing verb", || {
        node.log().lines().any(|l| {
            l.contains("RBAC: forbidden: cannot list resource \"pods\"")
                || l.contains("RBAC: forbidden: cannot list resource \"nodes\"")
        })
    });
    // Not synced: nothing is published from a partial view.
    assert_eq!(node.status()["synced"], false, "{}", node.status());
    drop(node);
    drop(netns);
}

/// b admits TCP 80 from a only.
const NETPOL_B_TCP_FROM_A: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
metadata: {name: b-tcp-from-a, namespace: kn}\n\
spec:\n  podSelector: {matchLabels: {app: b}}\n  policyTypes: [Ingress]\n\
\x20 ingress:\n  - from: [{podSelector: {matchLabels: {app: a}}}]\n    ports: [{protocol: TCP, port: 80}]\n";

/// A TCP stream a→b that writes and reads its echo until told to stop;
/// returns the bytes echoed, or the first error.
fn long_transfer(
    from: &Path,
    to: Ipv4Addr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    moved: std::sync::Arc<std::sync::atomic::AtomicU64>,
) -> std::thread::JoinHandle<Result<u64, String>> {
    let s = weir_topo::netns::run_in_path(from, || TcpStream::connect((to, 80)))
        .expect("netns")
        .expect("connect for the long transfer");
    std::thread::spawn(move || {
        let mut s = s;
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        let chunk = [0x5au8; 16384];
        let mut back = [0u8; 16384];
        let mut total = 0u64;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            s.write_all(&chunk)
                .map_err(|e| format!("write after {total} bytes: {e}"))?;
            s.read_exact(&mut back)
                .map_err(|e| format!("read after {total} bytes: {e}"))?;
            if back != chunk {
                return Err(format!("corrupt echo after {total} bytes"));
            }
            total += chunk.len() as u64;
            moved.store(total, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(total)
    })
}

#[test]
fn enforcement_outlives_agent_restarts_and_api_server_outages() {
    let s = setup("kl", 11, &["a", "b", "c"]);
    let (a, b, c) = (&s.pods[0], &s.pods[1], &s.pods[2]);
    let b_ip = b.ip.unwrap();
    let node = &s.node;
    s.cp.kubectl_ok(&["apply", "-f", "-"], Some(NETPOL_B_TCP_FROM_A));
    wait_until(node, "c→b denied", || !tcp_ok(&c.netns_path, b_ip));
    assert!(tcp_ok(&a.netns_path, b_ip), "a→b allowed by the policy");

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let moved = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let transfer = long_transfer(&a.netns_path, b_ip, stop.clone(), moved.clone());
    let progressed = |since: u64| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if moved.load(std::sync::atomic::Ordering::Relaxed) > since + (1 << 20) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    };
    assert!(progressed(0), "the transfer does not move");
    let rx0 = node.rx_packets();

    // The agent killed and restarted during the transfer: it resyncs (a new
    // generation published from a complete relist) without dropping it.
    let mut node_mut = s.node;
    node_mut.kill_agent();
    let before = moved.load(std::sync::atomic::Ordering::Relaxed);
    assert!(progressed(before), "the transfer stopped with the agent");
    let published = |n: &NodeUnderTest| n.log().matches("published generation").count();
    let count0 = published(&node_mut);
    node_mut.start_agent();
    wait_until(&node_mut, "the restarted agent republished", || {
        published(&node_mut) > count0
    });
    let before = moved.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        progressed(before),
        "the transfer stopped after the agent's resync"
    );
    assert!(!tcp_ok(&c.netns_path, b_ip), "c→b allowed after the resync");

    // The API server stopped: verdicts unchanged, the transfer goes on.
    let text = std::fs::read_to_string(&s.cp.kubeconfig).expect("kubeconfig");
    let port = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("server: https://127.0.0.1:"))
        .expect("server port")
        .trim()
        .to_string();
    let script = repo().join("scripts/k8s-control-plane.sh");
    assert!(Command::new(&script)
        .arg("stop")
        .arg(&s.cp.dir)
        .status()
        .unwrap()
        .success());
    let before = moved.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        progressed(before),
        "the transfer stopped with the API server"
    );
    assert!(
        !tcp_ok(&c.netns_path, b_ip),
        "c→b allowed without the API server"
    );
    assert!(
        tcp_ok(&a.netns_path, b_ip),
        "a→b denied without the API server"
    );

    // It returns (same port, same data): changes resume.
    let out = Command::new(&script)
        .arg("start")
        .arg(&s.cp.dir)
        .arg(&port)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "restart: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    s.cp.kubectl_ok(
        &["delete", "networkpolicy", "-n", "kn", "b-tcp-from-a"],
        None,
    );
    wait_until(
        &node_mut,
        "c→b allowed once the policy is deleted",
        || tcp_ok(&c.netns_path, b_ip),
    );

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let total = transfer
        .join()
        .expect("transfer thread")
        .expect("the transfer broke");
    assert!(total > 3 << 20, "only {total} bytes moved");
    assert!(
        node_mut.rx_packets() > rx0,
        "the transfer did not cross weir"
    );
    drop(node_mut);
    drop(s.netns);
}

/// Measurement (docs/kubernetes.md), not a check: `kubectl apply` of a
/// NetworkPolicy → the node's dataplane runs a snapshot with it, over 100
/// applies (each followed by a delete). Run with `--ignored --nocapture`.
#[test]
#[ignore]
fn measure_kubectl_apply_to_enforced() {
    let s = setup("km", 12, &["a", "b"]);
    let (a, b) = (&s.pods[0], &s.pods[1]);
    let b_ip = b.ip.unwrap();
    wait_until(&s.node, "a→b open", || tcp_ok(&a.netns_path, b_ip));
    let deny = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
metadata: {name: deny-b, namespace: kn}\n\
spec:\n  podSelector: {matchLabels: {app: b}}\n  policyTypes: [Ingress]\n";
    let mut samples = Vec::new();
    let mut after_return = Vec::new();
    for i in 0..100 {
        let g0 = dataplane_generation(&s.node);
        let t0 = Instant::now();
        s.cp.kubectl_ok(&["apply", "-f", "-"], Some(deny));
        let returned = t0.elapsed();
        while dataplane_generation(&s.node) <= g0 {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "apply {i} not enforced"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        samples.push(t0.elapsed());
        after_return.push(t0.elapsed().saturating_sub(returned));
        if i == 0 {
            assert!(!tcp_ok(&a.netns_path, b_ip), "the generation did not deny");
        }
        let g1 = dataplane_generation(&s.node);
        s.cp.kubectl_ok(&["delete", "networkpolicy", "-n", "kn", "deny-b"], None);
        while dataplane_generation(&s.node) <= g1 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let report = |what: &str, v: &mut Vec<Duration>| {
        v.sort();
        println!(
            "{what} over {} samples: p50 {:.0} ms, p99 {:.0} ms, min {:.0} ms, max {:.0} ms",
            v.len(),
            ms(v[v.len() / 2]),
            ms(v[v.len() * 99 / 100]),
            ms(v[0]),
            ms(v[v.len() - 1])
        );
    };
    report("kubectl apply (start) -> enforced", &mut samples);
    report("kubectl apply (returned) -> enforced", &mut after_return);

    // CNI ADD (start) -> the first TCP connection from the new pod crosses
    // weir (its Pod object exists beforehand, as when a kubelet calls ADD).
    let mut netns = Netns(Vec::new());
    let mut first = Vec::new();
    for i in 0..20 {
        let name = format!("m{i}");
        let yaml = pod_yaml("kn", &name, &s.node.name);
        s.cp.kubectl_ok(&["apply", "-f", "-"], Some(&yaml));
        let uid = s.cp.kubectl_ok(
            &[
                "get",
                "pod",
                "-n",
                "kn",
                &name,
                "-o",
                "jsonpath={.metadata.uid}",
            ],
            None,
        );
        // Let the Pod object reach the agent first, as it does before a
        // kubelet starts the sandbox.
        std::thread::sleep(Duration::from_millis(300));
        let p = Pod {
            namespace: "kn".into(),
            name: name.clone(),
            netns_path: netns.add(&format!("{}-{name}", s.node.netns)),
            ip: None,
        };
        let t0 = Instant::now();
        let (ok, res) = s.node.cni("ADD", &p, &uid);
        assert!(ok, "ADD {name}: {res}");
        while !tcp_ok(&p.netns_path, b_ip) {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "{name} never connected"
            );
        }
        first.push(t0.elapsed());
        let (ok, res) = s.node.cni("DEL", &p, &uid);
        assert!(ok, "DEL {name}: {res}");
    }
    report(
        "CNI ADD (start) -> first TCP connection crossed weir",
        &mut first,
    );
}

#[test]
fn node_agent_with_bad_kubeconfig_is_one_line_and_exit_1() {
    let dir = std::env::temp_dir().join(format!("weir-kb-{}", unique_name("kb")));
    std::fs::create_dir_all(&dir).expect("dir");
    let garbage = dir.join("garbage.kubeconfig");
    std::fs::write(&garbage, "clusters: [").expect("write");
    let nowhere = dir.join("nowhere.kubeconfig");
    std::fs::write(
        &nowhere,
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {server: \"https://127.0.0.1:1\", insecure-skip-tls-verify: true}\n\
users:\n- name: u\n  user: {token: x}\ncontexts:\n- name: c\n  context: {cluster: c, user: u}\ncurrent-context: c\n",
    )
    .expect("write");
    for kc in [&garbage, &nowhere, &dir.join("missing")] {
        let out = Command::new(weir_bin())
            .env("WEIR_METRICS_ADDR", "off")
            .arg("agent")
            .arg("--kubeconfig")
            .arg(kc)
            .args(["--node", "n1", "--state-dir"])
            .arg(dir.join("state"))
            .output()
            .expect("weir agent");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(err.contains(&kc.display().to_string()), "{err}");
        // Nothing was made on the node.
        assert!(
            !dir.join("state").exists(),
            "state made for a bad kubeconfig"
        );
    }
    // No kubeconfig outside a pod: one line, exit 1.
    let out = Command::new(weir_bin())
        .env("WEIR_METRICS_ADDR", "off")
        .args(["agent", "--node", "n1", "--state-dir"])
        .arg(dir.join("state"))
        .env_remove("KUBECONFIG")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .expect("weir agent");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("no --kubeconfig, and not in a pod"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// b admits TCP 80 and UDP 53 from pods labelled app=a of namespace kn.
const NETPOL_B_FROM_A: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
metadata: {name: b-from-a, namespace: kn}\n\
spec:\n  podSelector: {matchLabels: {app: b}}\n  policyTypes: [Ingress]\n\
\x20 ingress:\n  - from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: kn}}, podSelector: {matchLabels: {app: a}}}]\n\
\x20   ports: [{protocol: TCP, port: 80}, {protocol: UDP, port: 53}]\n";

/// Two nodes of one cluster, an agent each, on an underlay of the test's own
/// (a veth pair between the node namespaces): the agents build the VXLAN
/// overlay from the Nodes they see (underlay address from the annotation on
/// one, InternalIP on the other), pod traffic crosses both dataplanes with
/// the source identity carried, cross-node policy follows kubectl label
/// changes, and a Node deleted/added removes/adds the peer.
#[test]
fn two_nodes_overlay_enforces_cross_node_policy_by_identity() {
    let cp = ControlPlane::start("kn2");
    let tag = unique_name("kn2");
    let mut netns = Netns(Vec::new());
    let (ns_a, ns_b) = (format!("wa{tag}"), format!("wb{tag}"));
    netns.add(&ns_a);
    netns.add(&ns_b);
    let ip = |ns: &str, args: &[&str]| {
        let ok = Command::new("ip")
            .args(["-n", ns])
            .args(args)
            .status()
            .expect("ip")
            .success();
        assert!(ok, "ip -n {ns} {args:?}");
    };
    // The underlay: one veth pair, two queues each end (one socket per
    // queue, like the pod veths), deleted with the namespaces.
    ip(
        &ns_a,
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
            &ns_b,
            "numtxqueues",
            "2",
            "numrxqueues",
            "2",
        ],
    );
    ip(&ns_a, &["addr", "add", "192.168.77.1/24", "dev", "ul0"]);
    ip(&ns_b, &["addr", "add", "192.168.77.2/24", "dev", "ul0"]);
    for ns in [&ns_a, &ns_b] {
        ip(ns, &["link", "set", "ul0", "up"]);
        ip(ns, &["link", "set", "lo", "up"]);
    }
    let node = |name: &str, ns: &str| {
        let state = std::env::temp_dir().join(format!("weir-{tag}-{name}"));
        std::fs::create_dir_all(&state).expect("state dir");
        NodeUnderTest {
            name: format!("{name}-{tag}"),
            netns: ns.to_string(),
            state,
            kubeconfig: cp.kubeconfig.clone(),
            agent: None,
        }
    };
    let mut a = node("a", &ns_a);
    let mut b = node("b", &ns_b);
    // Node a: its underlay address by annotation.
    cp.kubectl_ok(
        &["apply", "-f", "-"],
        Some(&format!(
            "apiVersion: v1\nkind: Node\nmetadata: {{name: {}, annotations: {{weir.dev/underlay-ip: 192.168.77.1}}}}\n\
spec: {{podCIDR: 10.214.1.0/24, podCIDRs: [10.214.1.0/24]}}\n",
            a.name
        )),
    );
    let node_b_yaml = format!(
        "apiVersion: v1\nkind: Node\nmetadata: {{name: {}}}\n\
spec: {{podCIDR: 10.214.2.0/24, podCIDRs: [10.214.2.0/24]}}\n",
        b.name
    );
    // Node b: its underlay address as the status InternalIP, as a kubelet
    // reports it.
    let b_name = b.name.clone();
    let register_b = || {
        cp.kubectl_ok(&["apply", "-f", "-"], Some(&node_b_yaml));
        let patch = json!({"status": {"addresses": [
            {"type": "Hostname", "address": b_name},
            {"type": "InternalIP", "address": "192.168.77.2"}]}});
        cp.kubectl_ok(
            &[
                "patch",
                "node",
                &b_name,
                "--subresource=status",
                "--type=merge",
                "-p",
                &patch.to_string(),
            ],
            None,
        );
    };
    register_b();
    a.start_agent();
    b.start_agent();
    cp.kubectl_ok(&["create", "namespace", "kn"], None);
    wait_until(&a, "default ServiceAccount", || {
        cp.kubectl(&["get", "serviceaccount", "-n", "kn", "default"], None)
            .status
            .success()
    });
    let mut pods = Vec::new();
    for (name, n) in [("a", &a), ("b", &b)] {
        let p = attach(
            &cp,
            n,
            &mut netns,
            &format!("w{tag}-{name}"),
            "kn",
            name,
            &pod_yaml("kn", name, &n.name),
        );
        start_servers(&p.netns_path);
        write_status(&cp, &p);
        pods.push(p);
    }
    let (pa, pb) = (&pods[0], &pods[1]);
    let ip_b = pb.ip.unwrap();
    assert!(
        ip_b.octets()[2] == 2,
        "pod b's address {ip_b} is from node b's podCIDR"
    );
    wait_until(&a, "node a has node b as overlay peer", || {
        snapshot_peers(&a) == [b.name.clone()]
    });
    wait_until(&b, "node b has node a as overlay peer", || {
        snapshot_peers(&b) == [a.name.clone()]
    });

    // No policy: a reaches b across the nodes, through both dataplanes.
    let (ula, ulb) = (underlay_redirected(&a), underlay_redirected(&b));
    wait_until(&a, "a → b TCP and UDP across nodes", || {
        tcp_ok(&pa.netns_path, ip_b) && udp_ok(&pa.netns_path, ip_b)
    });
    assert!(
        underlay_redirected(&b) > ulb,
        "b's dataplane took no tunnel frame in"
    );
    assert!(
        underlay_redirected(&a) > ula,
        "a's dataplane took no reply in"
    );

    // b admits only app=a of kn: a's identity rides the tunnel.
    cp.kubectl_ok(&["apply", "-f", "-"], Some(NETPOL_B_FROM_A));
    let denied0 = b.drops("policy-denied");
    // a matches the policy (allowed before and after b's agent has it):
    // the label change must deny, the restore allow again.
    let label = |v: &str| {
        cp.kubectl_ok(
            &[
                "label",
                "pod",
                "-n",
                "kn",
                "a",
                &format!("app={v}"),
                "--overwrite",
            ],
            None,
        );
    };
    label("x");
    wait_until(
        &b,
        "a relabelled app=x: denied across nodes (TCP and UDP)",
        || !tcp_ok(&pa.netns_path, ip_b) && !udp_ok(&pa.netns_path, ip_b),
    );
    assert!(b.drops("policy-denied") > denied0, "b counted no denial");
    label("a");
    let (ula, ulb) = (underlay_redirected(&a), underlay_redirected(&b));
    wait_until(&b, "a labelled app=a again: allowed across nodes", || {
        tcp_ok(&pa.netns_path, ip_b) && udp_ok(&pa.netns_path, ip_b)
    });
    assert!(underlay_redirected(&b) > ulb && underlay_redirected(&a) > ula);

    // Node b deleted: a drops its peer, and a's traffic to b's podCIDR has
    // no route on a (counted there, never sent).
    cp.kubectl_ok(&["delete", "node", &b.name], None);
    wait_until(&a, "node b removed from a's peers", || {
        snapshot_peers(&a).is_empty()
    });
    let no_route0 = a.drops("no-route");
    assert!(
        !udp_ok(&pa.netns_path, ip_b),
        "a reached b with node b gone"
    );
    assert!(
        a.drops("no-route") > no_route0,
        "a counted no no-route drop"
    );
    // Registered again: the peer is back and so is the traffic.
    register_b();
    wait_until(&a, "node b back among a's peers", || {
        snapshot_peers(&a) == [b.name.clone()]
    });
    wait_until(&a, "a → b again", || {
        tcp_ok(&pa.netns_path, ip_b) && udp_ok(&pa.netns_path, ip_b)
    });
    drop(a);
    drop(b);
    drop(netns);
}

/// An Admin-tier ClusterNetworkPolicy (network-policy-api v0.3.0,
/// `policy.networking.k8s.io/v1alpha2`): b denies app=a of any namespace.
const CNP_ADMIN_DENY_A_TO_B: &str = "apiVersion: policy.networking.k8s.io/v1alpha2\n\
kind: ClusterNetworkPolicy\nmetadata: {name: admin-deny-a-to-b}\nspec:\n  tier: Admin\n  priority: 10\n\
\x20 subject: {pods: {namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: kn}}, podSelector: {matchLabels: {app: b}}}}\n\
\x20 ingress:\n  - {name: deny-a, action: Deny, from: [{pods: {namespaceSelector: {}, podSelector: {matchLabels: {app: a}}}}]}\n";

/// A ClusterNetworkPolicy applied with kubectl on this path: its Admin
/// Deny overrides the NetworkPolicy that allows a→b; deleted, the
/// NetworkPolicy's allow is back. The Admin rule is weir's to enforce (a
/// counted policy-denied drop), for TCP and UDP alike.
#[test]
fn cluster_network_policy_admin_deny_overrides_a_network_policy_allow() {
    let s = setup("kt", 13, &["a", "b", "c"]);
    let (a, b, c) = (&s.pods[0], &s.pods[1], &s.pods[2]);
    let (a_ip, b_ip) = (a.ip.unwrap(), b.ip.unwrap());
    let node = &s.node;
    s.cp.kubectl_ok(&["apply", "-f", "-"], Some(NETPOL_B_FROM_A));
    wait_until(node, "c→b denied by the NetworkPolicy", || {
        !tcp_ok(&c.netns_path, b_ip)
    });
    assert!(
        tcp_ok(&a.netns_path, b_ip),
        "a→b TCP allowed by the NetworkPolicy"
    );
    assert!(
        udp_ok(&a.netns_path, b_ip),
        "a→b UDP allowed by the NetworkPolicy"
    );

    let denied0 = node.drops("policy-denied");
    s.cp.kubectl_ok(&["apply", "-f", "-"], Some(CNP_ADMIN_DENY_A_TO_B));
    wait_until(node, "a→b denied by the Admin tier (TCP and UDP)", || {
        !tcp_ok(&a.netns_path, b_ip) && !udp_ok(&a.netns_path, b_ip)
    });
    assert!(node.drops("policy-denied") > denied0, "no denial counted");
    // Nothing else changed: c→b still denied, b→a still open.
    assert!(!tcp_ok(&c.netns_path, b_ip), "c→b allowed");
    assert!(
        tcp_ok(&b.netns_path, a_ip),
        "b→a denied by a rule about b's ingress"
    );

    s.cp.kubectl_ok(
        &["delete", "clusternetworkpolicy", "admin-deny-a-to-b"],
        None,
    );
    wait_until(node, "a→b allowed again by the NetworkPolicy", || {
        tcp_ok(&a.netns_path, b_ip) && udp_ok(&a.netns_path, b_ip)
    });
    assert!(!tcp_ok(&c.netns_path, b_ip), "c→b allowed after the delete");
    drop(s);
}
