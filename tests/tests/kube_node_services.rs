//! A ClusterIP Service on a cluster weir did not build: two nodes (an agent
//! each, `weir agent --kubeconfig --node`) on an underlay of the test's own,
//! a REAL kube-apiserver and kube-controller-manager whose endpointslice
//! controller writes the EndpointSlices of pods the test kubelet attached
//! through weir-cni (status Running + Ready from the CNI result). curl from
//! a pod to the ClusterIP reaches both backends (each answers its name),
//! over TCP and UDP; a backend deleted leaves the traffic to the other;
//! none left is a counted `service-no-endpoints` drop. Nothing on the path
//! owns the ClusterIP: only weir's service stage answers it. Needs root, Go.

use std::net::{Ipv4Addr, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use weir_tests::k8s::ControlPlane;
use weir_tests::kubelet::*;
use weir_tests::unique_name;

/// A backend pod: `role: backend`, serving its name on 8080 TCP and UDP.
fn backend_yaml(name: &str, node: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: ks, labels: {{role: backend}}}}\n\
spec:\n  nodeName: {node}\n  containers:\n  - name: c\n    image: registry.invalid/none\n\
\x20   ports: [{{containerPort: 8080}}, {{containerPort: 8080, protocol: UDP}}]\n"
    )
}

const SERVICE: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: names, namespace: ks}\n\
spec:\n  type: ClusterIP\n  selector: {role: backend}\n  ports:\n\
\x20 - {name: http, protocol: TCP, port: 80, targetPort: 8080}\n\
\x20 - {name: dns, protocol: UDP, port: 53, targetPort: 8080}\n";

const LB_SERVICE: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: lb, namespace: ks}\n\
spec:\n  type: LoadBalancer\n  selector: {role: backend}\n  ports:\n\
\x20 - {name: http, protocol: TCP, port: 80, targetPort: 8080}\n";

/// `curl http://ip/` from the pod's netns: the body, or `None`.
fn curl(pod_netns: &str, ip: Ipv4Addr) -> Option<String> {
    let out = Command::new("ip")
        .args(["netns", "exec", pod_netns, "curl", "-sS", "--max-time", "2"])
        .arg(format!("http://{ip}/"))
        .output()
        .expect("curl");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).to_string())
}

/// One datagram to `ip`:53 from a fresh socket (a new flow): the answer.
fn udp_name(from: &Path, ip: Ipv4Addr) -> Option<String> {
    weir_topo::netns::run_in_path(from, || {
        let s = UdpSocket::bind("0.0.0.0:0").ok()?;
        s.set_read_timeout(Some(Duration::from_millis(700))).ok()?;
        s.send_to(b"who", (ip, 53)).ok()?;
        let mut buf = [0u8; 64];
        let (n, from) = s.recv_from(&mut buf).ok()?;
        // The reply comes from the ClusterIP (reverse NAT), not the pod.
        assert_eq!(from.ip(), ip, "reply not from the ClusterIP");
        Some(String::from_utf8_lossy(&buf[..n]).to_string())
    })
    .ok()
    .flatten()
}

/// Ready endpoints of ks/names in the node agent's status.
fn ready(node: &NodeUnderTest) -> Option<u64> {
    node.status()["services"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["service"] == "ks/names")
        .and_then(|s| s["ready"].as_u64())
}

/// Ready endpoints in the EndpointSlices the controller-manager wrote.
fn slice_ready(cp: &ControlPlane) -> usize {
    let out = cp.kubectl_ok(
        &[
            "get",
            "endpointslices",
            "-n",
            "ks",
            "-l",
            "kubernetes.io/service-name=names",
            "-o",
            "json",
        ],
        None,
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    v["items"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["endpoints"].as_array().into_iter().flatten())
        .filter(|e| e["conditions"]["ready"] == true)
        .count()
}

#[test]
fn cluster_ip_service_reaches_backends_on_two_nodes() {
    let cp = ControlPlane::start("ksv");
    let tag = unique_name("ksv");
    let mut netns = Netns(Vec::new());
    let (ns_a, ns_b) = (format!("wa{tag}"), format!("wb{tag}"));
    underlay_pair(&mut netns, &ns_a, &ns_b);
    let mut a = node_under_test(&cp, &format!("a-{tag}"), &ns_a, &tag);
    let mut b = node_under_test(&cp, &format!("b-{tag}"), &ns_b, &tag);
    register_node(&cp, &a.name, "10.215.1.0/24", Some("192.168.77.1"));
    register_node(&cp, &b.name, "10.215.2.0/24", Some("192.168.77.2"));
    a.start_agent();
    b.start_agent();
    create_namespace(&cp, &a, "ks");

    let client_yaml = pod_yaml("ks", "client", &a.name);
    let client = attach(
        &cp,
        &a,
        &mut netns,
        &format!("w{tag}-client"),
        "ks",
        "client",
        &client_yaml,
    );
    write_status(&cp, &client);
    let mut backends = Vec::new();
    for (name, n) in [("s1", &a), ("s2", &b)] {
        let p = attach(
            &cp,
            n,
            &mut netns,
            &format!("w{tag}-{name}"),
            "ks",
            name,
            &backend_yaml(name, &n.name),
        );
        start_name_servers(&p.netns_path, name, 8080);
        write_status(&cp, &p);
        backends.push(p);
    }
    cp.kubectl_ok(&["apply", "-f", "-"], Some(SERVICE));
    let cip: Ipv4Addr = cp
        .kubectl_ok(
            &[
                "get",
                "service",
                "-n",
                "ks",
                "names",
                "-o",
                "jsonpath={.spec.clusterIP}",
            ],
            None,
        )
        .trim()
        .parse()
        .expect("a ClusterIP");
    // The controller-manager's endpointslice controller marks both ready
    // (the kubelet's Ready condition); the agents compile them.
    wait_until(&a, "two ready endpoints in the EndpointSlices", || {
        slice_ready(&cp) == 2
    });
    wait_until(&a, "node a's agent has two ready endpoints", || {
        ready(&a) == Some(2)
    });
    wait_until(&b, "node b's agent has two ready endpoints", || {
        ready(&b) == Some(2)
    });

    // curl to the ClusterIP: both backends answer, one on each node.
    let client_ns = format!("w{tag}-client");
    let (rx_a, rx_b, ul_b) = (a.rx_packets(), b.rx_packets(), underlay_redirected(&b));
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..60 {
        if let Some(body) = curl(&client_ns, cip) {
            assert!(body == "s1" || body == "s2", "unexpected answer {body:?}");
            seen.insert(body);
        }
        if seen.len() == 2 {
            break;
        }
    }
    assert_eq!(seen.len(), 2, "curl reached only {seen:?}\n{}", a.log());
    assert!(a.rx_packets() > rx_a, "node a's dataplane saw no packets");
    assert!(b.rx_packets() > rx_b, "node b's dataplane saw no packets");
    assert!(
        underlay_redirected(&b) > ul_b,
        "no tunnel frame reached node b: s2 was not reached over the overlay"
    );

    // UDP: a fresh flow each time, both backends answer.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..60 {
        if let Some(name) = udp_name(&client.netns_path, cip) {
            assert!(name == "s1" || name == "s2", "unexpected answer {name:?}");
            seen.insert(name);
        }
        if seen.len() == 2 {
            break;
        }
    }
    assert_eq!(seen.len(), 2, "UDP reached only {seen:?}");

    // A LoadBalancer Service: once a load-balancer controller (here: the
    // test, through the status subresource) writes its address, pods reach
    // the backends at that address through weir, as kube-proxy
    // short-circuits it. Nothing else owns 192.0.2.90 on this path.
    cp.kubectl_ok(&["apply", "-f", "-"], Some(LB_SERVICE));
    let lb: Ipv4Addr = "192.0.2.90".parse().unwrap();
    assert_eq!(
        curl(&client_ns, lb),
        None,
        "the address answered before the status named it"
    );
    cp.kubectl_ok(
        &[
            "patch",
            "service",
            "-n",
            "ks",
            "lb",
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"loadBalancer":{"ingress":[{"ip":"192.0.2.90"}]}}}"#,
        ],
        None,
    );
    let rx_a = a.rx_packets();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..80 {
        if let Some(body) = curl(&client_ns, lb) {
            assert!(body == "s1" || body == "s2", "unexpected answer {body:?}");
            seen.insert(body);
        }
        if seen.len() == 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        seen.len(),
        2,
        "the load balancer's address reached only {seen:?}\n{}",
        a.log()
    );
    assert!(a.rx_packets() > rx_a, "node a's dataplane saw no packets");

    // s2 goes (the kubelet tears its sandbox down, the object is deleted):
    // the endpointslice controller drops it, every request lands on s1.
    let s2 = &backends[1];
    cp.kubectl_ok(
        &[
            "delete",
            "pod",
            "-n",
            "ks",
            "s2",
            "--grace-period=0",
            "--force",
        ],
        None,
    );
    let (ok, res) = b.cni("DEL", s2, "");
    assert!(ok, "DEL s2: {res}");
    wait_until(&a, "one ready endpoint left", || {
        slice_ready(&cp) == 1 && ready(&a) == Some(1)
    });
    for i in 0..20 {
        assert_eq!(
            curl(&client_ns, cip).as_deref(),
            Some("s1"),
            "request {i} after s2 went"
        );
        assert_eq!(
            udp_name(&client.netns_path, cip).as_deref(),
            Some("s1"),
            "datagram {i} after s2 went"
        );
    }

    // s1 goes too: the Service has no endpoint, weir counts the refusal.
    cp.kubectl_ok(
        &[
            "delete",
            "pod",
            "-n",
            "ks",
            "s1",
            "--grace-period=0",
            "--force",
        ],
        None,
    );
    let (ok, res) = a.cni("DEL", &backends[0], "");
    assert!(ok, "DEL s1: {res}");
    wait_until(&a, "no endpoint left", || ready(&a) == Some(0));
    let refused = a.drops("service-no-endpoints");
    assert_eq!(curl(&client_ns, cip), None, "curl answered with no backend");
    assert!(
        a.drops("service-no-endpoints") > refused,
        "service-no-endpoints did not move"
    );
    drop(a);
    drop(b);
    drop(netns);
}
