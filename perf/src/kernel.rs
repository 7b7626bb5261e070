//! The kernel path peer: the same cluster built by weir-topo without weir,
//! then the node namespace turned into a plain router, the way every kernel
//! CNI starts (Calico style): `ip_forward=1`, IPv6 forwarding, and a route to
//! each pod address through its host-side veth.
#![forbid(unsafe_code)]

use std::process::Command;

use anyhow::Context;
use weir_topo::manifest::ClusterSpec;
use weir_topo::{BuildOptions, Cluster, TeardownGuard};

/// A cluster with kernel forwarding; removed when dropped.
pub struct KernelPath {
    pub cluster: Cluster,
    _guard: TeardownGuard,
}

impl KernelPath {
    /// Builds the cluster `name`; forwarding stays off (the node drops pod
    /// traffic at IP input) until [`enable_forwarding`](Self::enable_forwarding).
    pub fn build(name: &str, spec: &ClusterSpec) -> anyhow::Result<KernelPath> {
        // Guard first: a build that fails halfway is still removed.
        let guard = TeardownGuard::new(name);
        let cluster = Cluster::build(name, spec, &BuildOptions::default())
            .map_err(|e| anyhow::anyhow!("build kernel-path cluster {name}: {e}"))?;
        Ok(KernelPath {
            cluster,
            _guard: guard,
        })
    }

    /// Turns every node into a router for its pods.
    pub fn enable_forwarding(&self) -> anyhow::Result<()> {
        for node in &self.cluster.nodes {
            ip(&[
                "netns",
                "exec",
                &node.netns,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ])?;
            ip(&[
                "netns",
                "exec",
                &node.netns,
                "sysctl",
                "-qw",
                "net.ipv6.conf.all.forwarding=1",
            ])?;
            for pod in self.cluster.pods.iter().filter(|p| p.node == node.name) {
                if let Some(v4) = pod.ipv4 {
                    ip(&[
                        "-n",
                        &node.netns,
                        "route",
                        "replace",
                        &format!("{v4}/32"),
                        "dev",
                        &pod.host_ifname,
                    ])?;
                }
                if let Some(v6) = pod.ipv6 {
                    ip(&[
                        "-n",
                        &node.netns,
                        "-6",
                        "route",
                        "replace",
                        &format!("{v6}/128"),
                        "dev",
                        &pod.host_ifname,
                    ])?;
                }
            }
        }
        Ok(())
    }
}

impl Drop for KernelPath {
    fn drop(&mut self) {
        if let Err(e) = self.cluster.teardown() {
            eprintln!("weir-perf: teardown of {}: {e}", self.cluster.name);
        }
    }
}

/// Runs `ip ARGS...`; an error with its stderr if it fails.
pub fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip").args(args).output().context("run ip")?;
    anyhow::ensure!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}
