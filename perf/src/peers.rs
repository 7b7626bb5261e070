//! The kernel-side peers: nftables rules equivalent to the L3/L4 policy
//! (linear chains, as iptables-mode Calico/kube-router build them), haproxy
//! as the L7 detour (nftables `redirect` in the node namespace), and Open
//! vSwitch's userspace datapath with AF_XDP ports and conntrack flows. Each
//! is undone when its guard drops.
#![forbid(unsafe_code)]

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::tools::{in_netns, ChildGuard};

/// Runs `ip netns exec NETNS PROG ARGS` (or PROG directly when netns is
/// None), with `stdin` fed from `input`; an error with stderr on failure.
pub fn sh(
    netns: Option<&str>,
    prog: &str,
    args: &[&str],
    input: Option<&str>,
) -> anyhow::Result<String> {
    use std::io::Write;
    let mut c = match netns {
        Some(n) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", n, prog]);
            c
        }
        None => Command::new(prog),
    };
    c.args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().with_context(|| format!("run {prog}"))?;
    if let Some(i) = input {
        if let Some(mut s) = child.stdin.take() {
            s.write_all(i.as_bytes())?;
        }
    }
    let out = child.wait_with_output()?;
    anyhow::ensure!(
        out.status.success(),
        "{prog} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

/// The nftables ruleset of the L3/L4 policy in the node namespace: a
/// forward chain (policy drop) with `established,related` first, then
/// `extra` non-matching rules (`ip saddr 10.251.x.y ip daddr APP1 accept`),
/// then the allowing rule `ip saddr APP2 ip daddr APP1 tcp/udp accept`.
/// Optionally the L7 detour: TCP 80 from app2 to app1 redirected to
/// `redirect_port` on the node (haproxy).
pub fn nft_ruleset(
    app2: Ipv4Addr,
    app1: Ipv4Addr,
    extra: usize,
    redirect: Option<(Ipv4Addr, u16)>,
) -> String {
    nft_ruleset_port(app2, app1, extra, redirect, 80)
}

/// [`nft_ruleset`] with the redirected TCP port `dport` (80 there).
pub fn nft_ruleset_port(
    app2: Ipv4Addr,
    app1: Ipv4Addr,
    extra: usize,
    redirect: Option<(Ipv4Addr, u16)>,
    dport: u16,
) -> String {
    let mut s = String::from("table ip weirperf {\n chain filt {\n  type filter hook forward priority 0; policy drop;\n  ct state established,related accept\n");
    for i in 0..extra {
        s += &format!(
            "  ip saddr 10.251.{}.{} ip daddr {app1} accept\n",
            (i >> 8) & 0xff,
            i & 0xff
        );
    }
    s += &format!("  ip saddr {app2} ip daddr {app1} meta l4proto {{ tcp, udp }} accept\n }}\n");
    // `redirect` needs an address on the incoming interface, and the
    // node-side veths have none (Calico wiring): DNAT to the node's own
    // address instead; haproxy finds the original destination the same way
    // (SO_ORIGINAL_DST from conntrack).
    if let Some((node, p)) = redirect {
        s += &format!(
            " chain l7redir {{\n  type nat hook prerouting priority dstnat; policy accept;\n  ip saddr {app2} ip daddr {app1} tcp dport {dport} dnat to {node}:{p}\n }}\n"
        );
    }
    s += "}\n";
    s
}

/// The `weirperf` nftables table of a node namespace; deleted when dropped.
pub struct Nft {
    netns: String,
}

impl Nft {
    /// Replaces the table with `ruleset` (`nft -f -`).
    pub fn load(netns: &str, ruleset: &str) -> anyhow::Result<Nft> {
        let g = Nft {
            netns: netns.to_string(),
        };
        let _ = sh(
            Some(netns),
            "nft",
            &["delete", "table", "ip", "weirperf"],
            None,
        );
        sh(Some(netns), "nft", &["-f", "-"], Some(ruleset))?;
        Ok(g)
    }
}

impl Drop for Nft {
    fn drop(&mut self) {
        let _ = sh(
            Some(&self.netns),
            "nft",
            &["delete", "table", "ip", "weirperf"],
            None,
        );
    }
}

/// haproxy's configuration: `mode http`, only `GET /public...` passes,
/// to the original destination (SO_ORIGINAL_DST).
pub fn haproxy_cfg(port: u16) -> String {
    format!(
        "global\n  maxconn 4096\n  nbthread 1\n\
defaults\n  mode http\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n  option http-keep-alive\n\
frontend l7\n  bind :{port}\n  acl get method GET\n  acl pub path_beg /public\n  http-request deny deny_status 403 unless get pub\n  default_backend orig\n\
backend orig\n  server orig 0.0.0.0:0\n"
    )
}

/// haproxy's HTTP/2 configuration (`weir-perf grpc`): h2c with prior
/// knowledge on both sides (`proto h2`), only `POST /pkg.Svc/Get` passes
/// (what the `grpc: [{service: pkg.Svc, method: Get}]` rule allows), the
/// others get a 403; to the original destination (SO_ORIGINAL_DST).
pub fn haproxy_h2_cfg(port: u16) -> String {
    format!(
        "global\n  maxconn 4096\n  nbthread 1\n\
defaults\n  mode http\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n  option http-keep-alive\n\
frontend l7\n  bind :{port} proto h2\n  acl post method POST\n  acl get path /pkg.Svc/Get\n  http-request deny deny_status 403 unless post get\n  default_backend orig\n\
backend orig\n  server orig 0.0.0.0:0 proto h2\n"
    )
}

/// haproxy running in a node namespace, pinned; killed when dropped.
pub struct Haproxy {
    _child: ChildGuard,
    _dir: DirGuard,
}

impl Haproxy {
    pub fn start(netns: &str, dir: &Path, port: u16, core: usize) -> anyhow::Result<Haproxy> {
        Self::start_cfg(netns, dir, port, core, &haproxy_cfg(port))
    }

    /// [`start`](Self::start) with the configuration `config` (listening on `port`).
    pub fn start_cfg(
        netns: &str,
        dir: &Path,
        port: u16,
        core: usize,
        config: &str,
    ) -> anyhow::Result<Haproxy> {
        std::fs::create_dir_all(dir)?;
        let d = DirGuard(dir.to_path_buf());
        let cfg = dir.join("haproxy.cfg");
        std::fs::write(&cfg, config)?;
        let cfg_s = cfg.to_string_lossy().to_string();
        sh(None, "haproxy", &["-c", "-q", "-f", &cfg_s], None).context("haproxy -c")?;
        let child = ChildGuard::spawn(
            "haproxy",
            in_netns(netns, core, "haproxy", &["-db", "-f", &cfg_s])
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )?;
        // Listening?
        let end = Instant::now() + Duration::from_secs(5);
        loop {
            let ss = sh(Some(netns), "ss", &["-ltn"], None).unwrap_or_default();
            if ss.contains(&format!(":{port} ")) {
                break;
            }
            anyhow::ensure!(Instant::now() < end, "haproxy did not listen on :{port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Haproxy {
            _child: child,
            _dir: d,
        })
    }
}

/// Removes a directory tree when dropped.
pub struct DirGuard(pub PathBuf);

impl Drop for DirGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One pod as OVS sees it.
pub struct OvsPort {
    pub ifname: String,
    pub ofport: u32,
    pub ipv4: Ipv4Addr,
    pub mac: [u8; 6],
}

/// The OpenFlow13 flows: pods keep a static neighbour entry for their
/// gateway (nobody answers ARP: AF_XDP takes every frame off the node-side
/// veths), IP goes through conntrack; new flows only app2 → app1 (committed),
/// established/related in both directions; routed by destination address
/// (destination MAC rewritten); everything else dropped.
pub fn ovs_flows(ports: &[OvsPort], allow: (Ipv4Addr, Ipv4Addr)) -> String {
    let mut f = String::new();
    f += "table=0,priority=10,ip,actions=ct(table=1)\n";
    f += "table=0,priority=0,actions=drop\n";
    for p in ports {
        let mac = mac_str(&p.mac);
        f += &format!(
            "table=1,priority=20,ct_state=+trk+est,ip,nw_dst={},actions=mod_dl_dst:{mac},output:{}\n",
            p.ipv4, p.ofport
        );
        f += &format!(
            "table=1,priority=20,ct_state=+trk+rel,ip,nw_dst={},actions=mod_dl_dst:{mac},output:{}\n",
            p.ipv4, p.ofport
        );
        if p.ipv4 == allow.1 {
            f += &format!(
                "table=1,priority=10,ct_state=+trk+new,ip,nw_src={},nw_dst={},actions=ct(commit),mod_dl_dst:{mac},output:{}\n",
                allow.0, allow.1, p.ofport
            );
        }
    }
    f += "table=1,priority=0,actions=drop\n";
    f
}

/// OVS ports for `pods` (ofport 1, 2, … in that order), each pod told
/// the gateway's MAC ([`OVS_GW_MAC`]) by a permanent neighbour entry:
/// nobody answers ARP once AF_XDP takes the node-side veths.
pub fn ovs_ports(pods: &[&weir_topo::RealizedPod]) -> anyhow::Result<Vec<OvsPort>> {
    let mut ports = Vec::new();
    for (i, pod) in pods.iter().enumerate() {
        crate::kernel::ip(&[
            "-n",
            &pod.netns,
            "neigh",
            "replace",
            "169.254.1.1",
            "lladdr",
            OVS_GW_MAC,
            "dev",
            "eth0",
            "nud",
            "permanent",
        ])?;
        ports.push(OvsPort {
            ifname: pod.host_ifname.clone(),
            ofport: i as u32 + 1,
            ipv4: pod
                .ipv4
                .with_context(|| format!("pod {} has no IPv4", pod.name))?,
            mac: pod.pod_mac,
        });
    }
    Ok(ports)
}

pub fn mac_str(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The gateway MAC the pods are told about when OVS forwards.
pub const OVS_GW_MAC: &str = "02:00:00:0f:0f:01";

/// ovsdb-server and ovs-vswitchd of the harness's own (run dir `dir`),
/// vswitchd inside the node namespace; bridge `wpbr` (netdev datapath) with
/// the node-side veths as AF_XDP ports. Stopped and removed when dropped.
pub struct Ovs {
    dir: PathBuf,
    netns: String,
    // Dropped in order: vswitchd, then the database server.
    vswitchd: Option<ChildGuard>,
    dbserver: Option<ChildGuard>,
}

impl Ovs {
    pub fn start(
        netns: &str,
        dir: &Path,
        ports: &[OvsPort],
        allow: (Ipv4Addr, Ipv4Addr),
        pmd_core: usize,
    ) -> anyhow::Result<Ovs> {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir)?;
        let mut o = Ovs {
            dir: dir.to_path_buf(),
            netns: netns.to_string(),
            vswitchd: None,
            dbserver: None,
        };
        let d = dir.to_string_lossy().to_string();
        let db = format!("{d}/conf.db");
        let sock = format!("unix:{d}/db.sock");
        let schema = ["/usr/share/openvswitch/vswitch.ovsschema"]
            .into_iter()
            .find(|p| Path::new(p).is_file())
            .context(
                "vswitch.ovsschema not found (is openvswitch-switch installed? scripts/setup.sh)",
            )?;
        o.env(&mut Command::new("ovsdb-tool"))
            .args(["create", &db, schema])
            .output()
            .context("ovsdb-tool create")?;
        let mut c = Command::new("ovsdb-server");
        o.env(&mut c).args([
            &db,
            &format!("--remote=p{}", &sock),
            &format!("--pidfile={d}/ovsdb-server.pid"),
            &format!("--log-file={d}/ovsdb-server.log"),
            &format!("--unixctl={d}/ovsdb-server.ctl"),
        ]);
        c.stdout(Stdio::null()).stderr(Stdio::null());
        o.dbserver = Some(ChildGuard::spawn("ovsdb-server", &mut c)?);
        wait_file(&format!("{d}/db.sock"))?;
        o.vsctl(&["--no-wait", "init"])?;
        o.vsctl(&[
            "--no-wait",
            "set",
            "Open_vSwitch",
            ".",
            &format!("other_config:pmd-cpu-mask=0x{:x}", 1u64 << pmd_core),
        ])?;
        let mut c = Command::new("ip");
        c.args(["netns", "exec", netns, "ovs-vswitchd", &sock]);
        o.env(&mut c).args([
            &format!("--pidfile={d}/ovs-vswitchd.pid"),
            &format!("--log-file={d}/ovs-vswitchd.log"),
            &format!("--unixctl={d}/ovs-vswitchd.ctl"),
        ]);
        c.stdout(Stdio::null()).stderr(Stdio::null());
        o.vswitchd = Some(ChildGuard::spawn("ovs-vswitchd", &mut c)?);
        o.vsctl(&[
            "--timeout=20",
            "add-br",
            "wpbr",
            "--",
            "set",
            "bridge",
            "wpbr",
            "datapath_type=netdev",
            "protocols=OpenFlow13",
        ])?;
        for p in ports {
            o.vsctl(&[
                "--timeout=20",
                "add-port",
                "wpbr",
                &p.ifname,
                "--",
                "set",
                "interface",
                &p.ifname,
                "type=afxdp",
                "options:xdp-mode=native",
                "options:n_rxq=2",
                &format!("ofport_request={}", p.ofport),
            ])?;
        }
        let flows = dir.join("flows.txt");
        std::fs::write(&flows, ovs_flows(ports, allow))?;
        let mut c = Command::new("ovs-ofctl");
        o.env(&mut c).args([
            "-O",
            "OpenFlow13",
            "replace-flows",
            &format!("unix:{d}/wpbr.mgmt"),
            &flows.to_string_lossy(),
        ]);
        let out = c.output().context("ovs-ofctl")?;
        anyhow::ensure!(
            out.status.success(),
            "ovs-ofctl replace-flows: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(o)
    }

    fn env<'a>(&self, c: &'a mut Command) -> &'a mut Command {
        for v in ["OVS_RUNDIR", "OVS_DBDIR", "OVS_LOGDIR", "OVS_SYSCONFDIR"] {
            c.env(v, &self.dir);
        }
        c
    }

    pub fn vsctl(&self, args: &[&str]) -> anyhow::Result<String> {
        let db = format!("--db=unix:{}/db.sock", self.dir.display());
        self.ctl("ovs-vsctl", &db, args)
    }

    /// `ovs-appctl ARGS...` to this vswitchd.
    pub fn appctl(&self, args: &[&str]) -> anyhow::Result<String> {
        let target = format!("{}/ovs-vswitchd.ctl", self.dir.display());
        self.ctl("ovs-appctl", &format!("--target={target}"), args)
    }

    /// `tool first ARGS...` in this instance's environment: its output, or
    /// an error with its stderr.
    fn ctl(&self, tool: &str, first: &str, args: &[&str]) -> anyhow::Result<String> {
        let mut c = Command::new(tool);
        self.env(&mut c).arg(first).args(args);
        let out = c.output().with_context(|| tool.to_string())?;
        anyhow::ensure!(
            out.status.success(),
            "{tool} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&out.stdout).to_string())
    }

    /// `ovs-appctl dpif-netdev/pmd-stats-show` (for the record).
    pub fn pmd_stats(&self) -> String {
        self.appctl(&["dpif-netdev/pmd-stats-show"])
            .unwrap_or_default()
    }
}

impl Drop for Ovs {
    fn drop(&mut self) {
        if self.vswitchd.is_some() {
            let _ = self.vsctl(&["--timeout=10", "--if-exists", "del-br", "wpbr"]);
        }
        self.vswitchd.take();
        self.dbserver.take();
        // The AF_XDP programs go with the ports; the veths go with the
        // cluster. Make sure no XDP program outlives OVS on them anyway.
        let _ = &self.netns;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn wait_file(p: &str) -> anyhow::Result<()> {
    let end = Instant::now() + Duration::from_secs(5);
    while !Path::new(p).exists() {
        anyhow::ensure!(Instant::now() < end, "{p} did not appear");
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ruleset_shape() {
        let a2 = Ipv4Addr::new(10, 0, 0, 2);
        let a1 = Ipv4Addr::new(10, 0, 0, 3);
        let r = nft_ruleset(a2, a1, 300, Some((Ipv4Addr::new(10, 0, 0, 1), 15080)));
        assert_eq!(r.matches(" accept\n").count(), 1 + 300 + 1);
        assert!(r.contains("ip saddr 10.251.1.43 ip daddr 10.0.0.3 accept"));
        assert!(r.contains("dnat to 10.0.0.1:15080"));
        let f = ovs_flows(
            &[
                OvsPort {
                    ifname: "x".into(),
                    ofport: 1,
                    ipv4: a1,
                    mac: [2, 0, 0, 0, 0, 1],
                },
                OvsPort {
                    ifname: "y".into(),
                    ofport: 2,
                    ipv4: a2,
                    mac: [2, 0, 0, 0, 0, 2],
                },
            ],
            (a2, a1),
        );
        assert_eq!(f.matches("ct(commit)").count(), 1);
        assert!(f.contains("nw_src=10.0.0.2,nw_dst=10.0.0.3,actions=ct(commit),mod_dl_dst:02:00:00:00:00:01,output:1"));
    }
}
