//! The dataplane's other threads (the node process's control loop, which
//! applies snapshots, drains flow logs and writes the conntrack checkpoint,
//! and its status server) kept off the workers' cores.
//!
//! Only the workers are pinned; every other thread used to float over all
//! CPUs, the workers' cores included. With 1M flows the checkpoint writer
//! alone took ~15 % of a worker's core, preempting the worker in the middle
//! of its rounds (docs/performance.md, "The whole path at many flows"). DPDK
//! and VPP keep their main thread on a core without workers for the same
//! reason. The threads are confined to the CPUs the process may use minus
//! the workers' cores; when that leaves none (a worker on every CPU) nothing
//! changes.
#![forbid(unsafe_code)]

use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
use nix::unistd::Pid;

/// Confines the calling thread, and every thread it starts afterwards
/// (threads inherit their creator's mask), to the CPUs it may use minus
/// `workers`. Returns those CPUs, or an empty list when no CPU is left (the
/// mask unchanged). The workers pin themselves to their own core.
pub fn keep_off(workers: &[usize]) -> nix::Result<Vec<usize>> {
    let mut rest = cpus(&sched_getaffinity(Pid::from_raw(0))?);
    rest.retain(|c| !workers.contains(c));
    if rest.is_empty() {
        return Ok(rest);
    }
    let mut set = CpuSet::new();
    for &c in &rest {
        set.set(c)?;
    }
    sched_setaffinity(Pid::from_raw(0), &set)?;
    Ok(rest)
}

/// The CPUs of `set`, ascending.
fn cpus(set: &CpuSet) -> Vec<usize> {
    (0..CpuSet::count())
        .filter(|&c| set.is_set(c).unwrap_or(false))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mine() -> Vec<usize> {
        cpus(&sched_getaffinity(Pid::from_raw(0)).unwrap())
    }

    #[test]
    fn the_thread_leaves_the_workers_cores_and_its_children_too() {
        // In a thread of its own: the mask is per thread.
        std::thread::spawn(|| {
            let all = mine();
            if all.len() < 2 {
                eprintln!("skipped: one CPU");
                return;
            }
            let rest = keep_off(&all[..1]).unwrap();
            assert_eq!(rest, all[1..]);
            assert_eq!(mine(), all[1..]);
            let child = std::thread::spawn(mine).join().unwrap();
            assert_eq!(child, all[1..]);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_worker_on_every_cpu_leaves_the_mask_alone() {
        std::thread::spawn(|| {
            let all = mine();
            assert_eq!(keep_off(&all).unwrap(), Vec::<usize>::new());
            assert_eq!(mine(), all);
        })
        .join()
        .unwrap();
    }
}
