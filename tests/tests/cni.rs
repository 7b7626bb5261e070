//! weir-cni, the CNI plugin (spec 1.1), driven the way a runtime drives it:
//! the real `cnitool` (github.com/containernetworking/cni v1.3.1) against a
//! running local cluster, with the reference plugins bridge + host-local
//! (containernetworking/plugins v1.10.0) on the same inputs as an
//! independent peer. The tools are built by scripts/cni-build.sh (Go).
//! Needs root.

use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Instant;
use weir_tests::{pod_manifest, TestCluster};

/// Builds (first time only) and returns the directory with cnitool,
/// bridge and host-local.
fn cni_tools() -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/cni-build.sh");
    let out = Command::new(script).output().expect("run cni-build.sh");
    assert!(
        out.status.success(),
        "cni-build.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .expect("cni-build.sh prints its bin dir")
        .to_string();
    PathBuf::from(dir)
}

fn weir_cni_bin() -> PathBuf {
    let bin = weir_tests::weir_bin().with_file_name("weir-cni");
    assert!(
        bin.exists(),
        "{} not built: run `cargo build -p weir-cni` first",
        bin.display()
    );
    bin
}

/// A named netns made with `ip netns add`, deleted on drop.
struct Netns(String);

impl Netns {
    fn new(name: &str) -> Netns {
        let st = Command::new("ip")
            .args(["netns", "add", name])
            .status()
            .expect("ip netns add");
        assert!(st.success(), "ip netns add {name}");
        Netns(name.to_string())
    }
    fn path(&self) -> String {
        format!("/var/run/netns/{}", self.0)
    }
    fn exec(&self, argv: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.0])
            .args(argv)
            .output()
            .expect("ip netns exec")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// A cluster with one node (10.244.0.0/24 and fd00:10:244::/64 unless
/// `cidr4` says otherwise) and one topo pod `srv`, plus a CNI config dir.
struct Fixture {
    c: TestCluster,
    tools: PathBuf,
    /// CNI_PATH: weir-cni, bridge, host-local.
    plugins: PathBuf,
    /// NETCONFPATH holding weir's conflist (from `weir cni-config`).
    netconf: PathBuf,
    /// The node's dataplane ports before any ADD (the topo pod, `ul0`).
    base_ports: usize,
}

impl Fixture {
    fn new(tag: &str, cidr4: &str) -> Fixture {
        let manifests = format!(
            "apiVersion: v1\nkind: Node\nmetadata: {{name: node-1}}\nspec: {{podCIDRs: [{cidr4}, \"fd00:10:244::/64\"]}}\n{}",
            pod_manifest("default", "srv")
        );
        let c = TestCluster::up(tag, &manifests);
        let tools = cni_tools();
        let plugins = c.dir.join("bin");
        std::fs::create_dir_all(&plugins).expect("bin dir");
        std::os::unix::fs::symlink(weir_cni_bin(), plugins.join("weir-cni")).expect("symlink");
        for p in ["bridge", "host-local"] {
            std::os::unix::fs::symlink(tools.join(p), plugins.join(p)).expect("symlink");
        }
        let netconf = c.dir.join("net.d");
        std::fs::create_dir_all(&netconf).expect("net.d");
        let conf = c.weir(&["cni-config", "--node", "node-1"]);
        assert!(
            conf.status.success(),
            "cni-config: {}",
            String::from_utf8_lossy(&conf.stderr)
        );
        let v: Value = serde_json::from_slice(&conf.stdout).expect("conflist is JSON");
        assert_eq!(v["plugins"][0]["type"], "weir-cni");
        assert_eq!(v["cniVersions"], json!(["0.4.0", "1.0.0", "1.1.0"]));
        std::fs::write(netconf.join("10-weir.conflist"), &conf.stdout).expect("write");
        let mut f = Fixture {
            c,
            tools,
            plugins,
            netconf,
            base_ports: 0,
        };
        f.base_ports = f.node_ports();
        f
    }

    fn net(&self) -> String {
        format!("weir-{}", self.c.name)
    }

    /// `cnitool <cmd> <net> <netns>` with containerd's CNI_ARGS shape.
    fn cnitool(&self, cmd: &str, net: &str, netconf: &Path, netns: &str, pod: &str) -> Output {
        Command::new(self.tools.join("cnitool"))
            .args([cmd, net, netns])
            .env("NETCONFPATH", netconf)
            .env("CNI_PATH", &self.plugins)
            .env(
                "CNI_ARGS",
                format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod};K8S_POD_UID=uid-{pod}"),
            )
            .output()
            .expect("cnitool")
    }

    /// weir-cni run directly: `env` on top of CNI_PATH, `conf` on stdin.
    fn plugin(&self, env: &[(&str, &str)], conf: &Value) -> (bool, Value) {
        let mut cmd = Command::new(weir_cni_bin());
        cmd.env_clear()
            .env("CNI_PATH", &self.plugins)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(d) = std::env::var_os("WEIR_STATE_DIR") {
            cmd.env("WEIR_STATE_DIR", d);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("weir-cni");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(conf.to_string().as_bytes())
            .expect("write stdin");
        let out = child.wait_with_output().expect("wait");
        let text = String::from_utf8_lossy(&out.stdout);
        let v = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("weir-cni output {text:?}: {e}"))
        };
        (out.status.success(), v)
    }

    /// weir's plugin config as a runtime hands it over.
    fn conf(&self, version: &str) -> Value {
        json!({"cniVersion": version, "name": self.net(), "type": "weir-cni",
               "cluster": self.c.name, "node": "node-1"})
    }

    fn node_netns(&self) -> String {
        format!("weir-{}-node-1", self.c.name)
    }

    /// The node's `wc*` links (weir-cni host sides) but those of the
    /// cluster's own pods (`srv`: the supervisor attaches it through
    /// weir-cni too).
    fn cni_links(&self) -> Vec<String> {
        let own: Vec<String> = self
            .c
            .topology()
            .pods
            .iter()
            .filter(|p| {
                p.cni
                    .as_ref()
                    .is_some_and(|c| c.container_id.starts_with("weir-topo."))
            })
            .map(|p| p.host_ifname.clone())
            .collect();
        assert!(!own.is_empty(), "srv was not attached through weir-cni");
        let out = Command::new("ip")
            .args(["netns", "exec", &self.node_netns(), "ip", "-o", "link"])
            .output()
            .expect("ip link");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_string())
            .filter(|n| n.starts_with("wc") && !own.contains(n))
            .collect()
    }

    fn state_dir(&self) -> PathBuf {
        std::env::var_os("WEIR_STATE_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/run/weir"))
            .join(&self.c.name)
    }

    /// Reserved IPAM slots of node-1 but those of the cluster's own pods.
    fn ipam_slots(&self) -> usize {
        let p = self.state_dir().join("nodes/node-1/ipam.json");
        match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice::<Value>(&b).expect("ipam.json")["slots"]
                .as_object()
                .map_or(0, |m| {
                    m.values()
                        .filter(|r| {
                            !r["container_id"]
                                .as_str()
                                .is_some_and(|c| c.starts_with("weir-topo."))
                        })
                        .count()
                }),
            Err(_) => 0,
        }
    }

    /// Live conntrack entries of endpoint `ns/pod` on node-1, and the
    /// node's count of entries flushed because their endpoint left.
    fn ct_entries(&self, endpoint: &str) -> (u64, u64) {
        let st = self.c.status();
        let ct = &weir_tests::node_status(&st, "node-1")["conntrack"];
        let n = ct["endpoints"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["name"] == endpoint)
            .map_or(0, |e| e["entries"].as_u64().unwrap_or(0));
        (n, ct["flushed"].as_u64().expect("conntrack.flushed"))
    }

    fn node_ports(&self) -> usize {
        weir_tests::node_status(&self.c.status(), "node-1")["ports"]
            .as_array()
            .map_or(0, |a| a.len())
    }

    /// Nothing weir-cni made is left: no link, no reservation, no pod
    /// record, no dataplane port, no temporary file.
    fn assert_clean(&self) {
        assert_eq!(self.cni_links(), Vec::<String>::new(), "veths left behind");
        assert_eq!(self.ipam_slots(), 0, "addresses still reserved");
        let pods: Vec<_> = self
            .c
            .topology()
            .pods
            .iter()
            .map(|p| p.name.clone())
            .collect();
        assert_eq!(pods, vec!["srv".to_string()], "pod records left behind");
        let tmp: Vec<_> = std::fs::read_dir(self.state_dir().join("nodes/node-1"))
            .expect("node dir")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(tmp.is_empty(), "temporary files left: {tmp:?}");
    }
}

fn json_of(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

/// The shape both weir and the reference plugins give: cniVersion as
/// asked; every IP an address/prefix with a gateway, on an interface that
/// lives in the sandbox with the asked name; 0.4.0 IPs carry `version`.
fn assert_result_shape(who: &str, r: &Value, version: &str, netns: &str) {
    assert_eq!(r["cniVersion"], version, "{who}: {r}");
    let ifaces = r["interfaces"]
        .as_array()
        .unwrap_or_else(|| panic!("{who}: no interfaces: {r}"));
    let ips = r["ips"]
        .as_array()
        .unwrap_or_else(|| panic!("{who}: no ips: {r}"));
    assert!(!ips.is_empty(), "{who}: no ips: {r}");
    for ip in ips {
        let addr = ip["address"].as_str().unwrap_or_default();
        assert!(addr.contains('/'), "{who}: address without prefix: {ip}");
        assert!(ip["gateway"].is_string(), "{who}: no gateway: {ip}");
        let i = ip["interface"]
            .as_u64()
            .unwrap_or_else(|| panic!("{who}: no interface index: {ip}"));
        let iface = &ifaces[i as usize];
        assert_eq!(iface["name"], "eth0", "{who}: {r}");
        assert_eq!(iface["sandbox"], netns, "{who}: {r}");
        assert!(
            iface["mac"].as_str().is_some_and(|m| m.len() == 17),
            "{who}: {iface}"
        );
        if version == "0.4.0" {
            assert!(ip["version"] == "4" || ip["version"] == "6", "{who}: {ip}");
        } else {
            assert!(ip.get("version").is_none(), "{who}: {ip}");
        }
    }
}

#[test]
fn cnitool_add_check_del_status_gc_against_reference_plugins() {
    let f = Fixture::new("cni", "10.244.0.0/24");
    let srv = f.c.topology().pod("default", "srv").expect("srv").clone();
    let srv4 = srv.ipv4.expect("srv v4").to_string();
    let pod = Netns::new(&format!("{}-p1", f.c.name));

    // ADD through cnitool.
    let r = json_of(&f.cnitool("add", &f.net(), &f.netconf, &pod.path(), "p1"));
    assert_result_shape("weir-cni", &r, "1.1.0", &pod.path());
    let my4 = r["ips"][0]["address"].as_str().expect("v4").to_string();
    assert!(my4.starts_with("10.244.0.") && my4.ends_with("/32"), "{r}");
    let ip_a = pod.exec(&["ip", "-o", "addr", "show", "eth0"]);
    assert!(
        String::from_utf8_lossy(&ip_a.stdout).contains(&my4),
        "eth0 in the runtime's netns lacks {my4}"
    );
    // TX checksum offload off on the pod side.
    let k = pod.exec(&["ethtool", "-k", "eth0"]);
    assert!(
        String::from_utf8_lossy(&k.stdout).contains("tx-checksumming: off"),
        "{}",
        String::from_utf8_lossy(&k.stdout)
    );
    // The node's dataplane took the new port.
    assert_eq!(
        f.node_ports(),
        f.base_ports + 1,
        "dataplane ports after ADD"
    );

    // Traffic from the CNI pod to the topo pod crosses weir.
    let rx0 = f.c.counter("rx_packets");
    let ping = pod.exec(&["ping", "-c", "3", "-W", "2", &srv4]);
    assert!(
        ping.status.success(),
        "ping {srv4}: {}",
        String::from_utf8_lossy(&ping.stdout)
    );
    let rx1 = f.c.counter("rx_packets");
    assert!(
        rx1 >= rx0 + 6,
        "weir's rx_packets moved {rx0} -> {rx1}, not by 6 (3 echo + 3 reply)"
    );
    // TCP too (the topo pod serves TCP 80): full checksums pass.
    let tcp = pod.exec(&["bash", "-c", &format!("exec 3<>/dev/tcp/{srv4}/80")]);
    assert!(tcp.status.success(), "TCP connect to {srv4}:80 failed");

    // CHECK and STATUS.
    let chk = f.cnitool("check", &f.net(), &f.netconf, &pod.path(), "p1");
    assert!(
        chk.status.success(),
        "check: {}",
        String::from_utf8_lossy(&chk.stdout)
    );
    let st = f.cnitool("status", &f.net(), &f.netconf, &pod.path(), "p1");
    assert!(
        st.status.success(),
        "status: {}",
        String::from_utf8_lossy(&st.stdout)
    );

    // CHECK notices a broken attachment: the address removed by hand.
    let _ = pod.exec(&["ip", "addr", "del", &my4, "dev", "eth0"]);
    let chk = f.cnitool("check", &f.net(), &f.netconf, &pod.path(), "p1");
    assert!(!chk.status.success(), "check passed with the address gone");

    // The pod's flows are in the node's conntrack table (ICMP echo and the
    // TCP connection, each counted for both its endpoints; srv talks to
    // nobody else).
    let (mine, flushed0) = f.ct_entries("default/p1");
    let (srv_ct, _) = f.ct_entries("default/srv");
    assert!(mine >= 2, "conntrack entries of p1 before DEL: {mine}");
    assert!(srv_ct >= 2, "conntrack entries of srv before DEL: {srv_ct}");

    // DEL, twice (idempotent), then nothing is left.
    let del = f.cnitool("del", &f.net(), &f.netconf, &pod.path(), "p1");
    assert!(
        del.status.success(),
        "del: {}",
        String::from_utf8_lossy(&del.stdout)
    );
    // DEL flushed the pod's flows before it answered: none is left for
    // srv, and the node counted exactly those as flushed.
    let (srv_ct, flushed1) = f.ct_entries("default/srv");
    assert_eq!(srv_ct, 0, "conntrack entries of the deleted pod left");
    assert!(
        flushed1 - flushed0 >= mine,
        "flushed {flushed0} -> {flushed1} after DEL, p1 had {mine}"
    );
    let del = f.cnitool("del", &f.net(), &f.netconf, &pod.path(), "p1");
    assert!(
        del.status.success(),
        "second del: {}",
        String::from_utf8_lossy(&del.stdout)
    );
    f.assert_clean();
    assert_eq!(f.node_ports(), f.base_ports, "dataplane ports after DEL");

    // DEL without any ADD, and after the netns is gone.
    let r = json_of(&f.cnitool("add", &f.net(), &f.netconf, &pod.path(), "p1"));
    assert_result_shape("weir-cni", &r, "1.1.0", &pod.path());
    let path = pod.path();
    drop(pod);
    let del = f.cnitool("del", &f.net(), &f.netconf, &path, "p1");
    assert!(
        del.status.success(),
        "del after netns gone: {}",
        String::from_utf8_lossy(&del.stdout)
    );
    f.assert_clean();
    let never = f.cnitool(
        "del",
        &f.net(),
        &f.netconf,
        "/var/run/netns/never-added",
        "zz",
    );
    assert!(never.status.success(), "del without add");

    // GC: cnitool sends no valid attachments, so everything goes.
    let p2 = Netns::new(&format!("{}-p2", f.c.name));
    json_of(&f.cnitool("add", &f.net(), &f.netconf, &p2.path(), "p2"));
    assert_eq!(f.ipam_slots(), 1);
    let gc = f.cnitool("gc", &f.net(), &f.netconf, &p2.path(), "p2");
    assert!(
        gc.status.success(),
        "gc: {}",
        String::from_utf8_lossy(&gc.stdout)
    );
    f.assert_clean();

    // The reference plugins on the same inputs, in a host netns of their
    // own (the bridge must not touch this machine's network).
    let refhost = Netns::new(&format!("{}-rh", f.c.name));
    let refpod = Netns::new(&format!("{}-rp", f.c.name));
    let refconf = f.c.dir.join("ref.d");
    std::fs::create_dir_all(&refconf).expect("ref.d");
    for version in ["0.4.0", "1.1.0"] {
        let conflist = json!({
            "cniVersion": version, "name": "ref",
            "plugins": [{"type": "bridge", "bridge": "cnibr0", "isGateway": true,
                "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.99.0.0/24"}]],
                         "dataDir": f.c.dir.join("hl").to_string_lossy()}}]});
        std::fs::write(refconf.join("10-ref.conflist"), conflist.to_string()).expect("write");
        let mut wconf: Value = serde_json::from_slice(
            &std::fs::read(f.netconf.join("10-weir.conflist")).expect("read"),
        )
        .expect("json");
        // Pin the version: without cniVersions, libcni uses cniVersion.
        wconf.as_object_mut().expect("object").remove("cniVersions");
        wconf["cniVersion"] = json!(version);
        std::fs::write(f.netconf.join("10-weir.conflist"), wconf.to_string()).expect("write");

        let tool = f.tools.join("cnitool");
        let reference = Command::new("ip")
            .args(["netns", "exec", &refhost.0])
            .arg(&tool)
            .args(["add", "ref", &refpod.path()])
            .env("NETCONFPATH", &refconf)
            .env("CNI_PATH", &f.plugins)
            .env(
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=rp;K8S_POD_UID=uid-rp",
            )
            .output()
            .expect("cnitool ref");
        let rr = json_of(&reference);
        assert_result_shape("bridge+host-local", &rr, version, &refpod.path());

        let p3 = Netns::new(&format!("{}-p3", f.c.name));
        let wr = json_of(&f.cnitool("add", &f.net(), &f.netconf, &p3.path(), "p3"));
        assert_result_shape("weir-cni", &wr, version, &p3.path());
        let keys = |v: &Value| {
            let mut k: Vec<String> = v.as_object().expect("object").keys().cloned().collect();
            k.retain(|k| k != "dns");
            k.sort();
            k
        };
        let (wk, rk) = (keys(&wr), keys(&rr));
        assert!(
            rk.iter().all(|k| wk.contains(k)),
            "weir's result lacks keys the reference gives: weir {wr} ref {rr}"
        );

        let del = f.cnitool("del", &f.net(), &f.netconf, &p3.path(), "p3");
        assert!(del.status.success());
        let rdel = Command::new("ip")
            .args(["netns", "exec", &refhost.0])
            .arg(&tool)
            .args(["del", "ref", &refpod.path()])
            .env("NETCONFPATH", &refconf)
            .env("CNI_PATH", &f.plugins)
            .env(
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=rp;K8S_POD_UID=uid-rp",
            )
            .output()
            .expect("cnitool ref del");
        assert!(
            rdel.status.success(),
            "ref del: {}",
            String::from_utf8_lossy(&rdel.stdout)
        );
        f.assert_clean();
    }
}

#[test]
fn bad_inputs_give_the_spec_error_json_and_leave_nothing() {
    // A /29: 8 addresses, minus network, node and broadcast: 5 pods; the
    // topo pod holds one, so four ADDs fit.
    let f = Fixture::new("cnibad", "10.251.0.0/29");
    let pod = Netns::new(&format!("{}-p", f.c.name));
    let path = pod.path();
    let add_env = |cid: &'static str| -> Vec<(&'static str, String)> {
        vec![
            ("CNI_COMMAND", "ADD".into()),
            ("CNI_CONTAINERID", cid.into()),
            ("CNI_IFNAME", "eth0".into()),
            ("CNI_NETNS", path.clone()),
        ]
    };
    let run = |env: &[(&'static str, String)], conf: &Value| {
        let e: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        f.plugin(&e, conf)
    };
    let expect = |what: &str, (ok, v): (bool, Value), code: u64| {
        assert!(!ok, "{what}: succeeded: {v}");
        assert_eq!(v["code"], code, "{what}: {v}");
        assert!(
            v["msg"].as_str().is_some_and(|m| !m.is_empty()),
            "{what}: no msg: {v}"
        );
        assert!(v["cniVersion"].is_string(), "{what}: no cniVersion: {v}");
    };

    // Config missing fields: 7; unknown cniVersion: 1; not JSON: 6.
    let mut c = f.conf("1.1.0");
    c.as_object_mut().expect("obj").remove("node");
    expect("no node", run(&add_env("a1"), &c), 7);
    let mut c = f.conf("1.1.0");
    c.as_object_mut().expect("obj").remove("type");
    expect("no type", run(&add_env("a1"), &c), 7);
    expect("cniVersion 2.0.0", run(&add_env("a1"), &f.conf("2.0.0")), 1);
    expect(
        "STATUS at 1.0.0",
        run(&[("CNI_COMMAND", "STATUS".into())], &f.conf("1.0.0")),
        1,
    );
    let (ok, v) = run(&add_env("a1"), &json!("not an object"));
    expect("not an object", (ok, v), 6);
    // Environment: 4.
    expect("no CNI_COMMAND", run(&[], &f.conf("1.1.0")), 4);
    expect(
        "CNI_COMMAND=FOO",
        run(&[("CNI_COMMAND", "FOO".into())], &f.conf("1.1.0")),
        4,
    );
    let mut e = add_env("a1");
    e.retain(|(k, _)| *k != "CNI_IFNAME");
    expect("no CNI_IFNAME", run(&e, &f.conf("1.1.0")), 4);
    let mut e = add_env("a1");
    e[1].1 = "bad id!".into();
    expect("bad container id", run(&e, &f.conf("1.1.0")), 4);
    let mut e = add_env("a1");
    e[3].1 = "/var/run/netns/does-not-exist".into();
    expect("missing netns", run(&e, &f.conf("1.1.0")), 4);
    // Unknown node: invalid config.
    let mut c = f.conf("1.1.0");
    c["node"] = json!("node-9");
    expect("unknown node", run(&add_env("a1"), &c), 7);
    f.assert_clean();

    // The agent not running: STATUS 50, ADD and DEL 11 (retry helps).
    let mut c = f.conf("1.1.0");
    c["socket"] = json!(f.c.dir.join("no-agent.sock").to_string_lossy());
    expect(
        "STATUS, no agent",
        run(&[("CNI_COMMAND", "STATUS".into())], &c),
        50,
    );
    expect("ADD, no agent", run(&add_env("a1"), &c), 11);
    let mut e = add_env("a1");
    e[0].1 = "DEL".into();
    expect("DEL, no agent", run(&e, &c), 11);
    // The node's dataplane stopped: STATUS 50; started again: ready.
    let out = f.c.weir(&["dataplane", "stop", "--node", "node-1"]);
    assert!(out.status.success());
    expect(
        "STATUS, dataplane stopped",
        run(&[("CNI_COMMAND", "STATUS".into())], &f.conf("1.1.0")),
        50,
    );
    let out = f.c.weir(&["dataplane", "start", "--node", "node-1"]);
    assert!(out.status.success());
    let ready = (0..200).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(50));
        run(&[("CNI_COMMAND", "STATUS".into())], &f.conf("1.1.0")).0
    });
    assert!(ready, "STATUS never ready after the dataplane started");
    f.assert_clean();

    // The pool exhausted: 11, and nothing half-made.
    let netns: Vec<Netns> = (0..5)
        .map(|i| Netns::new(&format!("{}-x{i}", f.c.name)))
        .collect();
    let ids = ["c0", "c1", "c2", "c3", "c4"];
    for (i, ns) in netns.iter().enumerate() {
        let env = [
            ("CNI_COMMAND", "ADD".to_string()),
            ("CNI_CONTAINERID", ids[i].to_string()),
            ("CNI_IFNAME", "eth0".to_string()),
            ("CNI_NETNS", ns.path()),
        ];
        let r = run(&env, &f.conf("1.1.0"));
        if i < 4 {
            assert!(r.0, "ADD {i}: {}", r.1);
        } else {
            expect("pool exhausted", r, 11);
        }
    }
    assert_eq!(
        f.cni_links().len(),
        4,
        "only the four ADDs that fit left links"
    );
    assert_eq!(f.ipam_slots(), 4);
    // GC with the first two still valid returns the other two.
    let mut c = f.conf("1.1.0");
    c["cni.dev/valid-attachments"] = json!([
        {"containerID": "c0", "ifname": "eth0"}, {"containerID": "c1", "ifname": "eth0"}]);
    let (ok, v) = run(&[("CNI_COMMAND", "GC".into())], &c);
    assert!(ok, "GC: {v}");
    assert_eq!(f.cni_links().len(), 2);
    assert_eq!(f.ipam_slots(), 2);
    for id in ["c0", "c1"] {
        let env = [
            ("CNI_COMMAND", "DEL".to_string()),
            ("CNI_CONTAINERID", id.to_string()),
            ("CNI_IFNAME", "eth0".to_string()),
        ];
        assert!(run(&env, &f.conf("1.1.0")).0, "DEL {id} without CNI_NETNS");
    }
    f.assert_clean();
}

/// Percentile of sorted microseconds.
fn pct(sorted: &[u128], p: f64) -> u128 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// The workers' free UMEM frames on node-1 (idle: no traffic flows), once
/// the frames of removed ports have come back (the dataplane reclaims them
/// after the socket is gone): until it equals `want`, or until 15 reads in
/// a row agree (bounded: 150 reads, 100 ms apart).
fn settled_free_frames(f: &Fixture, want: Option<u64>) -> u64 {
    let mut last = f.c.node_counter("node-1", "free_frames");
    let mut same = 0;
    for _ in 0..150 {
        std::thread::sleep(std::time::Duration::from_millis(100));
        let now = f.c.node_counter("node-1", "free_frames");
        if Some(now) == want {
            return now;
        }
        same = if now == last { same + 1 } else { 0 };
        if want.is_none() && same >= 15 {
            return now;
        }
        last = now;
    }
    last
}

/// `ip -o <args>` in netns `ns`, one line per object, `\` continuation
/// and per-line counters (the `link` statistics) as printed.
fn ip_lines(ns: &str, args: &[&str]) -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "ip", "-o"])
        .args(args)
        .output()
        .expect("ip");
    assert!(out.status.success(), "ip {args:?} in {ns}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// Interfaces of the node's netns with an XDP program attached.
fn xdp_links(ns: &str) -> Vec<String> {
    ip_lines(ns, &["-d", "link", "show"])
        .into_iter()
        .filter(|l| l.contains(" xdp") || l.contains("prog/xdp"))
        .filter_map(|l| l.split(": ").nth(1).map(str::to_string))
        .collect()
}

/// Names of the files in node-1's state directory.
fn node_files(f: &Fixture) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(f.state_dir().join("nodes/node-1"))
        .expect("node dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn add_del_cycles_leave_nothing_behind() {
    // 200 cycles by default (about a minute and a half); 1000 with
    // WEIR_LONG=1; WEIR_CNI_CYCLES=N for any other count.
    let long = std::env::var("WEIR_LONG").is_ok_and(|v| v == "1");
    let cycles: usize = std::env::var("WEIR_CNI_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if long { 1000 } else { 200 });
    let f = Fixture::new("cnicyc", "10.244.0.0/24");
    let srv4 =
        f.c.topology()
            .pod("default", "srv")
            .expect("srv")
            .ipv4
            .expect("v4")
            .to_string();
    let pod = Netns::new(&format!("{}-cy", f.c.name));
    let path = pod.path();
    // The dataplane keeps one port's worth of frames aside after its first
    // port removal (a one-time step, not per cycle): take the ledger after
    // one warm-up cycle, once it has settled.
    let warm = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "warmup"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_NETNS", path.as_str()),
    ];
    assert!(f.plugin(&warm, &f.conf("1.1.0")).0, "warm-up ADD");
    let mut warm_del = warm;
    warm_del[0].1 = "DEL";
    assert!(f.plugin(&warm_del, &f.conf("1.1.0")).0, "warm-up DEL");
    let frames0 = settled_free_frames(&f, None);
    // What the node looks like with no CNI pod: its links, addresses,
    // routes, neighbours, XDP attachments and state files.
    let node_ns = f.node_netns();
    let snapshot_node = || {
        let mut links: Vec<String> = ip_lines(&node_ns, &["link", "show"])
            .into_iter()
            .filter_map(|l| l.split(": ").nth(1).map(str::to_string))
            .collect();
        links.sort();
        (
            links,
            ip_lines(&node_ns, &["addr", "show"]),
            ip_lines(&node_ns, &["route", "show", "table", "all"]),
            xdp_links(&node_ns),
            node_files(&f),
        )
    };
    let base = snapshot_node();
    assert!(!base.3.is_empty(), "the topo pod's port has XDP attached");
    let (_, flushed0) = f.ct_entries("default/srv");
    let mut pinged = 0;
    let (mut add_us, mut del_us) = (Vec::new(), Vec::new());
    for i in 0..cycles {
        let cid = format!("cycle{i}");
        let add = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", cid.as_str()),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", path.as_str()),
            ("CNI_ARGS", "K8S_POD_NAMESPACE=default;K8S_POD_NAME=cy"),
        ];
        let t = Instant::now();
        let (ok, v) = f.plugin(&add, &f.conf("1.1.0"));
        add_us.push(t.elapsed().as_micros());
        assert!(ok, "ADD {i}: {v}");
        // Every tenth pod talks to srv: conntrack entries that its DEL
        // must flush.
        if i % 10 == 0 {
            let ping = pod.exec(&["ping", "-c", "1", "-W", "2", &srv4]);
            assert!(ping.status.success(), "cycle {i}: ping {srv4}");
            pinged += 1;
        }
        let del = [
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", cid.as_str()),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", path.as_str()),
        ];
        let t = Instant::now();
        let (ok, v) = f.plugin(&del, &f.conf("1.1.0"));
        del_us.push(t.elapsed().as_micros());
        assert!(ok, "DEL {i}: {v}");
    }
    f.assert_clean();
    assert_eq!(
        f.node_ports(),
        f.base_ports,
        "dataplane ports after {cycles} cycles"
    );
    // Every UMEM frame a port took for its fill ring is back in the
    // workers' ledger.
    assert_eq!(
        settled_free_frames(&f, Some(frames0)),
        frames0,
        "UMEM frames not returned after {cycles} cycles"
    );
    let a = pod.exec(&["ip", "-o", "link"]);
    assert!(
        !String::from_utf8_lossy(&a.stdout).contains("eth0"),
        "eth0 left in the runtime's netns"
    );
    // The node is as it was: no veth, address, route or XDP attachment,
    // no file in its state directory, more or less.
    let end = snapshot_node();
    assert_eq!(end.0, base.0, "node links after {cycles} cycles");
    assert_eq!(end.1, base.1, "node addresses after {cycles} cycles");
    assert_eq!(end.2, base.2, "node routes after {cycles} cycles");
    assert_eq!(end.3, base.3, "XDP attachments after {cycles} cycles");
    assert_eq!(end.4, base.4, "node state files after {cycles} cycles");
    // No conntrack entry of any deleted pod: srv's flows were all with
    // them, and each DEL flushed its pod's.
    let (srv_ct, flushed1) = f.ct_entries("default/srv");
    assert_eq!(srv_ct, 0, "conntrack entries of deleted pods left");
    assert!(
        flushed1 - flushed0 >= pinged,
        "{pinged} pods pinged, {} entries flushed",
        flushed1 - flushed0
    );
    // The traffic path still works for the topo pod (nothing broke).
    add_us.sort_unstable();
    del_us.sort_unstable();

    // The reference plugins, same cycles, for the latency table (a report,
    // not an assertion).
    let refhost = Netns::new(&format!("{}-rh", f.c.name));
    let conf = json!({"cniVersion": "1.1.0", "name": "ref", "type": "bridge", "bridge": "cnibr0",
        "isGateway": true, "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.99.0.0/24"}]],
        "dataDir": f.c.dir.join("hl").to_string_lossy()}});
    let (mut radd, mut rdel) = (Vec::new(), Vec::new());
    for i in 0..cycles {
        let cid = format!("ref{i}");
        for (cmd, acc) in [("ADD", &mut radd), ("DEL", &mut rdel)] {
            let mut child = Command::new("ip")
                .args(["netns", "exec", &refhost.0])
                .arg(f.plugins.join("bridge"))
                .env("CNI_COMMAND", cmd)
                .env("CNI_CONTAINERID", &cid)
                .env("CNI_IFNAME", "eth0")
                .env("CNI_NETNS", &path)
                .env("CNI_PATH", &f.plugins)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("bridge");
            let t = Instant::now();
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(conf.to_string().as_bytes())
                .expect("stdin");
            let out = child.wait_with_output().expect("bridge");
            acc.push(t.elapsed().as_micros());
            assert!(
                out.status.success(),
                "bridge {cmd} {i}: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
    }
    radd.sort_unstable();
    rdel.sort_unstable();
    eprintln!(
        "CNI latency over {cycles} cycles (µs, p50/p99): weir-cni ADD {}/{} DEL {}/{}; bridge+host-local ADD {}/{} DEL {}/{}",
        pct(&add_us, 0.5),
        pct(&add_us, 0.99),
        pct(&del_us, 0.5),
        pct(&del_us, 0.99),
        pct(&radd, 0.5),
        pct(&radd, 0.99),
        pct(&rdel, 0.5),
        pct(&rdel, 0.99)
    );
}

#[test]
fn cni_pod_fails_closed_is_policed_and_crash_reservations_are_not_reused() {
    let f = Fixture::new("cnipol", "10.244.0.0/24");
    let srv4 =
        f.c.topology()
            .pod("default", "srv")
            .and_then(|p| p.ipv4)
            .expect("srv v4")
            .to_string();
    let p1 = Netns::new(&format!("{}-p1", f.c.name));

    // ADD while the node's dataplane is stopped: the pod exists but its
    // traffic goes nowhere (no weir port, no kernel route): fail closed.
    let out = f.c.weir(&["dataplane", "stop", "--node", "node-1"]);
    assert!(out.status.success());
    let r = json_of(&f.cnitool("add", &f.net(), &f.netconf, &p1.path(), "p1"));
    assert_result_shape("weir-cni", &r, "1.1.0", &p1.path());
    let ping = p1.exec(&["ping", "-c", "2", "-W", "1", &srv4]);
    assert!(
        !ping.status.success(),
        "the pod reached {srv4} with no dataplane running"
    );
    let out = f.c.weir(&["dataplane", "start", "--node", "node-1"]);
    assert!(out.status.success());
    let ready = (0..200).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(50));
        f.cnitool("status", &f.net(), &f.netconf, &p1.path(), "p1")
            .status
            .success()
    });
    assert!(ready, "dataplane never ready again");
    let rx0 = f.c.counter("rx_packets");
    let ping = p1.exec(&["ping", "-c", "2", "-W", "2", &srv4]);
    assert!(
        ping.status.success(),
        "no traffic once the dataplane runs the pod"
    );
    assert!(
        f.c.counter("rx_packets") >= rx0 + 4,
        "ping did not cross weir"
    );

    // Policy applies to the CNI pod: an egress deny selecting it by the
    // pod-uid label weir gives it.
    f.c.apply(
        "deny.yaml",
        &weir_tests::netpol(
            "default",
            "deny-p1",
            "{podSelector: {matchLabels: {weir.dev/pod-uid: uid-p1}}, policyTypes: [Egress]}",
        ),
    );
    let d0 = f.c.node_drops_total("node-1");
    let ping = p1.exec(&["ping", "-c", "2", "-W", "1", &srv4]);
    assert!(
        !ping.status.success(),
        "egress deny did not stop the CNI pod"
    );
    assert!(
        f.c.node_drops_total("node-1") > d0,
        "no drop counted for the denied pod"
    );

    // A reservation a crash left (agent killed between reserving and
    // wiring) is never handed out again; GC returns it.
    let ipam = f.state_dir().join("nodes/node-1/ipam.json");
    let mut store: Value =
        serde_json::from_slice(&std::fs::read(&ipam).expect("ipam")).expect("json");
    store["slots"]["4"] = json!({"container_id": "crashed", "ifname": "eth0",
                                 "ipv4": "10.244.0.4", "ipv6": "fd00:10:244::4"});
    std::fs::write(&ipam, store.to_string()).expect("write ipam");
    let p2 = Netns::new(&format!("{}-p2", f.c.name));
    let r2 = json_of(&f.cnitool("add", &f.net(), &f.netconf, &p2.path(), "p2"));
    assert_eq!(
        r2["ips"][0]["address"], "10.244.0.5/32",
        "reserved slot reused: {r2}"
    );
    let keep: Vec<Value> =
        f.c.topology()
            .pods
            .iter()
            .filter_map(|p| p.cni.as_ref())
            .filter(|c| !c.container_id.starts_with("weir-topo."))
            .map(|c| json!({"containerID": c.container_id, "ifname": c.ifname}))
            .collect();
    assert_eq!(keep.len(), 2);
    let mut c = f.conf("1.1.0");
    c["cni.dev/valid-attachments"] = json!(keep);
    let (ok, v) = f.plugin(&[("CNI_COMMAND", "GC")], &c);
    assert!(ok, "GC: {v}");
    assert_eq!(
        f.ipam_slots(),
        2,
        "GC did not return the crashed reservation"
    );
    assert_eq!(f.cni_links().len(), 2, "GC removed a valid attachment");
    for (ns, pod) in [(&p1, "p1"), (&p2, "p2")] {
        let del = f.cnitool("del", &f.net(), &f.netconf, &ns.path(), pod);
        assert!(del.status.success());
    }
    f.assert_clean();
}

#[test]
fn parallel_adds_get_distinct_addresses() {
    // A runtime starts many sandboxes at once: every ADD must get an
    // address of its own (the agent serializes them over its IPAM store).
    let f = Fixture::new("cnipar", "10.244.0.0/24");
    let n = 8;
    let netns: Vec<Netns> = (0..n)
        .map(|i| Netns::new(&format!("{}-q{i}", f.c.name)))
        .collect();
    let results: Vec<(bool, Value)> = std::thread::scope(|s| {
        let handles: Vec<_> = netns
            .iter()
            .enumerate()
            .map(|(i, ns)| {
                let f = &f;
                s.spawn(move || {
                    let cid = format!("par{i}");
                    let path = ns.path();
                    let env = [
                        ("CNI_COMMAND", "ADD"),
                        ("CNI_CONTAINERID", cid.as_str()),
                        ("CNI_IFNAME", "eth0"),
                        ("CNI_NETNS", path.as_str()),
                    ];
                    f.plugin(&env, &f.conf("1.1.0"))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    let mut addrs: Vec<String> = results
        .iter()
        .map(|(ok, v)| {
            assert!(ok, "parallel ADD: {v}");
            v["ips"][0]["address"]
                .as_str()
                .expect("address")
                .to_string()
        })
        .collect();
    addrs.sort();
    addrs.dedup();
    assert_eq!(addrs.len(), n, "an address was handed out twice: {addrs:?}");
    assert_eq!(f.ipam_slots(), n);
    assert_eq!(f.cni_links().len(), n);
    for i in 0..n {
        let cid = format!("par{i}");
        let env = [
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", cid.as_str()),
            ("CNI_IFNAME", "eth0"),
        ];
        assert!(f.plugin(&env, &f.conf("1.1.0")).0, "DEL {cid}");
    }
    f.assert_clean();
}

/// A containerd of the test's own (state and socket in `dir`), killed on drop.
struct Containerd {
    child: std::process::Child,
    sock: PathBuf,
}

impl Containerd {
    fn start(dir: &Path) -> Containerd {
        let sock = dir.join("containerd.sock");
        let conf = dir.join("containerd.toml");
        std::fs::write(
            &conf,
            format!(
                // No CRI (it would make /etc/cni/net.d), no /opt/containerd.
                "version = 2\nroot = \"{}\"\nstate = \"{}\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\", \"io.containerd.internal.v1.opt\"]\n\
                 [grpc]\n  address = \"{}\"\n",
                dir.join("ctd-root").display(),
                dir.join("ctd-state").display(),
                sock.display()
            ),
        )
        .expect("containerd config");
        let log = std::fs::File::create(dir.join("containerd.log")).expect("log");
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&conf)
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("containerd (scripts/setup.sh installs it)");
        let c = Containerd { child, sock };
        let up = (0..100).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(100));
            c.ctr(&["version"]).status.success()
        });
        assert!(up, "containerd did not come up");
        c
    }

    fn ctr(&self, args: &[&str]) -> Output {
        Command::new("ctr")
            .arg("-a")
            .arg(&self.sock)
            .args(args)
            .output()
            .expect("ctr")
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A docker-archive image `weir/cnitest:1` made here: /bin/sleep and the
/// libraries it links, nothing else.
fn build_image(dir: &Path) -> PathBuf {
    let rootfs = dir.join("rootfs");
    let img = dir.join("img");
    std::fs::create_dir_all(rootfs.join("bin")).expect("rootfs");
    std::fs::create_dir_all(&img).expect("img");
    std::fs::copy("/bin/sleep", rootfs.join("bin/sleep")).expect("copy sleep");
    let ldd = Command::new("ldd").arg("/bin/sleep").output().expect("ldd");
    for lib in String::from_utf8_lossy(&ldd.stdout)
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
    {
        let to = rootfs.join(lib.trim_start_matches('/'));
        std::fs::create_dir_all(to.parent().expect("parent")).expect("lib dir");
        std::fs::copy(lib, &to).expect("copy lib");
    }
    let layer = img.join("layer.tar");
    let st = Command::new("tar")
        .arg("cf")
        .arg(&layer)
        .arg("-C")
        .arg(&rootfs)
        .arg(".")
        .status()
        .expect("tar");
    assert!(st.success());
    let sum = Command::new("sha256sum")
        .arg(&layer)
        .output()
        .expect("sha256sum");
    let sha = String::from_utf8_lossy(&sum.stdout)
        .split_whitespace()
        .next()
        .expect("sha")
        .to_string();
    let config = json!({"architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/sleep", "3600"]},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{sha}")]}});
    std::fs::write(img.join("config.json"), config.to_string()).expect("config");
    std::fs::write(
        img.join("manifest.json"),
        json!([{"Config": "config.json", "RepoTags": ["weir/cnitest:1"], "Layers": ["layer.tar"]}])
            .to_string(),
    )
    .expect("manifest");
    let tar = dir.join("image.tar");
    let st = Command::new("tar")
        .arg("cf")
        .arg(&tar)
        .arg("-C")
        .arg(&img)
        .args(["manifest.json", "config.json", "layer.tar"])
        .status()
        .expect("tar");
    assert!(st.success());
    tar
}

#[test]
fn ctr_run_with_cni_attaches_through_weir_cni() {
    // containerd's own client as the runtime: `ctr run --cni` reads
    // /etc/cni/net.d and /opt/cni/bin, which it sees here (in a private
    // mount namespace) as weir's conflist and plugin; the machine's own
    // /etc and /opt are not touched.
    let f = Fixture::new("cnictr", "10.244.0.0/24");
    let srv4 =
        f.c.topology()
            .pod("default", "srv")
            .and_then(|p| p.ipv4)
            .expect("srv v4")
            .to_string();
    let dir = f.c.dir.join("ctr");
    std::fs::create_dir_all(&dir).expect("dir");
    let ctd = Containerd::start(&dir);
    let image = build_image(&dir);
    let imp = ctd.ctr(&["images", "import", image.to_str().expect("utf-8")]);
    assert!(
        imp.status.success(),
        "import: {}",
        String::from_utf8_lossy(&imp.stderr)
    );
    let etc = dir.join("etc");
    let st = Command::new("cp")
        .arg("-a")
        .arg("/etc")
        .arg(&etc)
        .status()
        .expect("cp /etc");
    assert!(st.success());
    std::fs::create_dir_all(etc.join("cni/net.d")).expect("net.d");
    std::fs::copy(
        f.netconf.join("10-weir.conflist"),
        etc.join("cni/net.d/10-weir.conflist"),
    )
    .expect("conflist");
    let script = format!(
        "set -e; mount --bind {etc} /etc; mount -t tmpfs none /opt; mkdir -p /opt/cni/bin; \
         mount --bind {bin} /opt/cni/bin; \
         exec ctr -a {sock} run --rm --cni docker.io/weir/cnitest:1 {id} /bin/sleep 8",
        etc = etc.display(),
        bin = f.plugins.display(),
        sock = ctd.sock.display(),
        id = f.c.name,
    );
    let mut run = Command::new("unshare")
        .args(["-m", "--propagation", "private", "bash", "-c", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("unshare ctr run");
    // The container is attached once weir records it.
    let attached = (0..100).find_map(|_| {
        std::thread::sleep(std::time::Duration::from_millis(100));
        f.c.topology()
            .pods
            .iter()
            .find(|p| {
                p.cni
                    .as_ref()
                    .is_some_and(|c| !c.container_id.starts_with("weir-topo."))
            })
            .cloned()
    });
    let Some(pod) = attached else {
        let _ = run.kill();
        let out = run.wait_with_output().expect("ctr");
        panic!(
            "ctr run --cni never attached: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let att = pod.cni.as_ref().expect("cni");
    assert!(
        att.netns_path.starts_with("/proc"),
        "containerd's netns: {att:?}"
    );
    assert_eq!(att.ifname, "eth0");
    // weir up's default --pod-rx-cpus auto reached the runtime's netns too
    // (the last core runs the worker; its sysfs is mounted read-only by
    // the runtime, the mask is set before the veth exists).
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let want: Vec<usize> = (0..cpus - 1).collect();
    let masks = weir_topo::rps::pod_rx_masks(&att.netns_path, "eth0").expect("rps_cpus");
    for m in &masks {
        assert_eq!(
            weir_topo::rps::parse_cpu_mask(m),
            Some(want.clone()),
            "{masks:?}"
        );
    }
    let rx0 = f.c.counter("rx_packets");
    let ping = Command::new("nsenter")
        .arg(format!("--net={}", att.netns_path.display()))
        .args(["ping", "-c", "2", "-W", "2", &srv4])
        .output()
        .expect("nsenter ping");
    assert!(
        ping.status.success(),
        "container -> {srv4}: {}",
        String::from_utf8_lossy(&ping.stdout)
    );
    assert!(
        f.c.counter("rx_packets") >= rx0 + 4,
        "ping did not cross weir"
    );
    // When the container exits, ctr's DEL removes everything.
    let out = run.wait_with_output().expect("ctr run");
    assert!(
        out.status.success(),
        "ctr run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    f.assert_clean();
}

/// The IPAM store's holder of `ipv4` on node-1, if any.
fn ipam_holder(f: &Fixture, ipv4: &str) -> Option<String> {
    let p = f.state_dir().join("nodes/node-1/ipam.json");
    let v: Value = serde_json::from_slice(&std::fs::read(p).ok()?).ok()?;
    v["slots"]
        .as_object()?
        .values()
        .find(|r| r["ipv4"] == ipv4)
        .and_then(|r| r["container_id"].as_str().map(str::to_string))
}

#[test]
fn local_cluster_pods_are_attached_through_weir_cni() {
    let f = Fixture::new("cnitopo", "10.244.0.0/24");
    let netns_of = |pod: &str| format!("weir-{}-default-{pod}", f.c.name);

    // `weir up`'s pod: attached by the supervisor through weir-cni, with
    // the runtime's key, its netns and eth0, and the first IPAM slot.
    let srv = f.c.topology().pod("default", "srv").expect("srv").clone();
    let att = srv.cni.clone().expect("srv attached through weir-cni");
    assert_eq!(att.container_id, "weir-topo.default.srv");
    assert_eq!(att.ifname, "eth0");
    assert_eq!(
        att.netns_path,
        PathBuf::from(format!("/run/netns/{}", netns_of("srv")))
    );
    assert_eq!(
        srv.ipv4.map(|a| a.to_string()).as_deref(),
        Some("10.244.0.2")
    );
    assert_eq!(
        ipam_holder(&f, "10.244.0.2").as_deref(),
        Some("weir-topo.default.srv")
    );
    assert!(srv.host_ifname.starts_with("wc"), "{}", srv.host_ifname);

    // `weir apply` of a new pod goes the same way; its labels and ports
    // come from the manifest (its servers answer with its name).
    f.c.apply("two.yaml", &pod_manifest("default", "two"));
    let two = f.c.topology().pod("default", "two").expect("two").clone();
    assert_eq!(
        two.cni.as_ref().map(|c| c.container_id.as_str()),
        Some("weir-topo.default.two")
    );
    assert_eq!(two.labels.get("pod").map(String::as_str), Some("two"));
    assert_eq!(
        two.ipv4.map(|a| a.to_string()).as_deref(),
        Some("10.244.0.3")
    );
    let rx0 = f.c.counter("rx_packets");
    let tcp = f.c.pod_exec(
        "default",
        "srv",
        &["bash", "-c", "exec 3<>/dev/tcp/10.244.0.3/80; head -n1 <&3"],
    );
    assert_eq!(
        String::from_utf8_lossy(&tcp.stdout).trim(),
        "two",
        "srv -> two:80: {}",
        String::from_utf8_lossy(&tcp.stderr)
    );
    assert!(
        f.c.counter("rx_packets") > rx0,
        "the connection did not cross weir"
    );

    // One allocator: an outside runtime's ADD gets the next free address.
    let p1 = Netns::new(&format!("{}-p1", f.c.name));
    let r = json_of(&f.cnitool("add", &f.net(), &f.netconf, &p1.path(), "p1"));
    assert_eq!(r["ips"][0]["address"], "10.244.0.4/32", "{r}");
    // `weir delete` leaves an outside runtime's pod alone ...
    let out = f.c.weir(&[
        "delete",
        "-f",
        &f.c.file("p1.yaml", &pod_manifest("default", "p1")),
    ]);
    assert!(!out.status.success(), "weir delete removed a runtime's pod");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("container runtime"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // ... and that runtime's GC leaves the cluster's own pods alone.
    let gc = f.cnitool("gc", &f.net(), &f.netconf, &p1.path(), "p1");
    assert!(
        gc.status.success(),
        "gc: {}",
        String::from_utf8_lossy(&gc.stdout)
    );
    assert_eq!(f.cni_links(), Vec::<String>::new(), "GC left p1's veth");
    assert_eq!(f.ipam_slots(), 0, "GC left p1's address");
    let pods: Vec<String> = f.c.topology().pods.iter().map(|p| p.name.clone()).collect();
    assert_eq!(pods, vec!["srv".to_string(), "two".to_string()]);

    // `weir delete` runs DEL: link, reservation, record and netns go.
    let host_two = two.host_ifname.clone();
    f.c.delete("two.yaml", &pod_manifest("default", "two"));
    assert!(f.c.topology().pod("default", "two").is_none());
    assert_eq!(
        ipam_holder(&f, "10.244.0.3"),
        None,
        "two's address still held"
    );
    assert!(
        !ip_lines(&f.node_netns(), &["link", "show"])
            .iter()
            .any(|l| l.contains(&host_two)),
        "two's node-side veth {host_two} left"
    );
    assert!(
        !Path::new(&format!("/run/netns/{}", netns_of("two"))).exists(),
        "two's netns left"
    );
    assert_eq!(f.node_ports(), f.base_ports, "dataplane ports after delete");
    f.assert_clean();
}
