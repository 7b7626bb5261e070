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
//! The mask lives in sysfs (`/sys/class/net/<if>/queues/rx-<q>/rps_cpus`),
//! and sysfs shows the network namespace of whoever mounted it, not the
//! caller's: the writer runs on a fresh thread that enters the pod's netns,
//! unshares its mount namespace (a thread may: it only implies CLONE_FS)
//! and mounts a sysfs of its own there, as `ip netns exec` does.
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

fn write_masks(label: &str, ifname: &str, mask: &str) -> Result<(), TopoError> {
    own_sysfs(label)?;
    let files = rx_queue_files(ifname).map_err(|error| TopoError::Sysctl {
        netns: label.to_string(),
        path: format!("/sys/class/net/{ifname}/queues"),
        error,
    })?;
    for f in files {
        std::fs::write(&f, mask).map_err(|error| TopoError::Sysctl {
            netns: label.to_string(),
            path: f.display().to_string(),
            error,
        })?;
    }
    Ok(())
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

/// Sets `rps_cpus` of every RX queue of `ifname` in the named netns to
/// `cpus` (empty: RPS off, the kernel's default).
pub fn set_pod_rx_cpus(netns_name: &str, ifname: &str, cpus: &[usize]) -> Result<(), TopoError> {
    let mask = cpu_mask(cpus);
    netns::run_in(netns_name, || write_masks(netns_name, ifname, &mask))?
}

/// [`set_pod_rx_cpus`] for a netns bound at `path` (a runtime's, CNI).
pub fn set_pod_rx_cpus_path(path: &Path, ifname: &str, cpus: &[usize]) -> Result<(), TopoError> {
    let mask = cpu_mask(cpus);
    let label = path.display().to_string();
    netns::run_in_path(path, || write_masks(&label, ifname, &mask))?
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
