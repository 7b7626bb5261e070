//! Receive packet steering on pods' interfaces (`--pod-rx-cpus`).
//!
//! When weir's worker transmits to a pod in AF_XDP copy mode, its TX kick
//! (`sendto`) runs `veth_xmit` → `netif_rx` on the pod's veth, and without
//! RPS the pod's whole receive path (softirq, IP, TCP, the socket wake-up)
//! runs there, on the worker's core, inside the kick. With an RPS mask on
//! the pod side's RX queues, `netif_rx` only enqueues the frame to the
//! backlog of a CPU of the mask (chosen by flow hash) and sends it an IPI:
//! the pod's stack and the wake-up run on that CPU, the worker's kick
//! returns sooner (docs/performance.md, "Pod RX steering").
//!
//! The mask is the pod netns's `net.core.rps_default_mask` (per network
//! namespace on this kernel), written before the pod's veth is made: every
//! RX queue of a device registered in that netns starts with it, so the
//! pod's `eth0` gets it on all its queues at creation (and so would any
//! later device there). Not sysfs: a runtime's container may already have
//! that netns's sysfs mounted read-only (OCI's default), and a new sysfs
//! mount of the same netns shares that read-only superblock (EROFS, seen
//! with containerd). Reading the masks back ([`pod_rx_masks`], for tests
//! and checks) does use sysfs: a thread enters the netns, unshares its
//! mount namespace and mounts its own sysfs there, as `ip netns exec` does.
#![forbid(unsafe_code)]

use std::path::Path;

use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};

use crate::{netns, TopoError};

/// The `rps_cpus` text for `cpus` (32-bit hex groups, most significant
/// first, separated by commas, as the kernel prints it); `0` for none.
pub fn cpu_mask(cpus: &[usize]) -> String {
    let top = cpus.iter().copied().max().map_or(0, |m| m / 32);
    let mut groups = vec![0u32; top + 1];
    for &c in cpus {
        groups[c / 32] |= 1 << (c % 32);
    }
    groups
        .iter()
        .rev()
        .enumerate()
        .map(|(i, g)| {
            if i == 0 {
                format!("{g:x}")
            } else {
                format!("{g:08x}")
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The CPUs of an `rps_cpus` text (see [`cpu_mask`]).
pub fn parse_cpu_mask(mask: &str) -> Option<Vec<usize>> {
    let mut cpus = Vec::new();
    for (i, g) in mask.trim().split(',').rev().enumerate() {
        let v = u32::from_str_radix(g, 16).ok()?;
        cpus.extend((0..32).filter(|b| v & (1 << b) != 0).map(|b| i * 32 + b));
    }
    cpus.sort_unstable();
    Some(cpus)
}

fn sys_err(netns: &str, op: &'static str, e: nix::errno::Errno) -> TopoError {
    TopoError::Netns {
        netns: netns.to_string(),
        op,
        error: std::io::Error::from_raw_os_error(e as i32),
    }
}

/// On the calling (fresh, in-netns) thread: a private mount namespace with
/// this netns's sysfs on /sys.
fn own_sysfs(label: &str) -> Result<(), TopoError> {
    unshare(CloneFlags::CLONE_NEWNS).map_err(|e| sys_err(label, "unshare mount ns", e))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    )
    .map_err(|e| sys_err(label, "mount --make-rslave /", e))?;
    mount(
        Some("sysfs"),
        "/sys",
        Some("sysfs"),
        MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|e| sys_err(label, "mount sysfs", e))
}

fn rx_queue_files(ifname: &str) -> std::io::Result<Vec<std::path::PathBuf>> {
    let mut v: Vec<_> = std::fs::read_dir(format!("/sys/class/net/{ifname}/queues"))?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("rx-"))
        .map(|e| e.path().join("rps_cpus"))
        .collect();
    v.sort();
    Ok(v)
}

fn read_masks(label: &str, ifname: &str) -> Result<Vec<String>, TopoError> {
    own_sysfs(label)?;
    let io = |path: String| {
        let netns = label.to_string();
        move |error| TopoError::Sysctl { netns, path, error }
    };
    let files = rx_queue_files(ifname).map_err(io(format!("/sys/class/net/{ifname}/queues")))?;
    files
        .iter()
        .map(|f| {
            std::fs::read_to_string(f)
                .map(|s| s.trim().to_string())
                .map_err(io(f.display().to_string()))
        })
        .collect()
}

/// `net.core.rps_default_mask` (per netns).
const DEFAULT_MASK: &str = "/proc/sys/net/core/rps_default_mask";

fn write_default_mask(label: &str, mask: &str) -> Result<(), TopoError> {
    std::fs::write(DEFAULT_MASK, mask).map_err(|error| TopoError::Sysctl {
        netns: label.to_string(),
        path: DEFAULT_MASK.to_string(),
        error,
    })
}

/// Sets the default RPS mask of the named netns to `cpus` (empty: RPS
/// off): every device made there afterwards (the pod's veth) takes it on
/// all its RX queues.
pub fn set_pod_rx_cpus(netns_name: &str, cpus: &[usize]) -> Result<(), TopoError> {
    let mask = cpu_mask(cpus);
    netns::run_in(netns_name, || write_default_mask(netns_name, &mask))?
}

/// [`set_pod_rx_cpus`] for a netns bound at `path` (a runtime's, CNI).
pub fn set_pod_rx_cpus_path(path: &Path, cpus: &[usize]) -> Result<(), TopoError> {
    let mask = cpu_mask(cpus);
    let label = path.display().to_string();
    netns::run_in_path(path, || write_default_mask(&label, &mask))?
}

/// The `rps_cpus` of every RX queue of `ifname` in the netns at `path`
/// (`rx-0` first), as the kernel prints them.
pub fn pod_rx_masks(path: &Path, ifname: &str) -> Result<Vec<String>, TopoError> {
    let label = path.display().to_string();
    netns::run_in_path(path, || read_masks(&label, ifname))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_round_trip() {
        assert_eq!(cpu_mask(&[]), "0");
        assert_eq!(cpu_mask(&[0]), "1");
        assert_eq!(cpu_mask(&[0, 2, 3]), "d");
        assert_eq!(cpu_mask(&[1, 33]), "2,00000002");
        for m in ["0", "1", "d", "2,00000002", "ffffffff"] {
            assert_eq!(cpu_mask(&parse_cpu_mask(m).unwrap()), m);
        }
        assert_eq!(parse_cpu_mask("00000003").unwrap(), vec![0, 1]);
        assert!(parse_cpu_mask("xyz").is_none());
    }
}
