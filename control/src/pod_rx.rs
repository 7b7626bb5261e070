//! `--pod-rx-cpus auto|off|LIST`: where a pod's receive path runs when
//! weir's worker transmits to it (RPS on the pod's `eth0`; see
//! `weir_topo::rps` and docs/performance.md, "Pod RX steering").
#![forbid(unsafe_code)]

use std::str::FromStr;

/// The flag as given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PodRxCpus {
    /// Every CPU that runs no weir worker (RPS off when none is left).
    Auto,
    /// RPS off: the pod's stack runs inside the worker's TX kick.
    Off,
    /// These CPUs.
    List(Vec<usize>),
}

/// The default, decided by the measurements in docs/performance.md ("Pod
/// RX steering"): RR p50 0.92× `off`'s on a quiet machine and 0.65–0.81×
/// under other tenants' load (p99 from milliseconds to tens of µs there),
/// the worker's TX kick about half, pps no lower.
pub const DEFAULT: &str = "auto";

/// Whether this kernel has RPS with a per-netns default mask
/// (`net.core.rps_default_mask`, which weir sets in each pod's netns).
pub fn kernel_has_rps() -> bool {
    std::path::Path::new("/proc/sys/net/core/rps_default_mask").exists()
}

impl FromStr for PodRxCpus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "auto" => Ok(PodRxCpus::Auto),
            "off" | "" => Ok(PodRxCpus::Off),
            list => crate::node_dataplane::parse_cores(list)
                .map(PodRxCpus::List)
                .map_err(|e| {
                    format!(
                        "--pod-rx-cpus: {}: want auto, off or a CPU list (0,2-3)",
                        e.to_string().trim_start_matches("--cores: ")
                    )
                }),
        }
    }
}

impl PodRxCpus {
    /// The CPUs to steer to on a machine of `ncpus` CPUs whose workers run
    /// on `worker_cores` (sorted, deduplicated; empty: RPS off).
    pub fn resolve(&self, worker_cores: &[usize], ncpus: usize) -> Vec<usize> {
        let mut v: Vec<usize> = match self {
            PodRxCpus::Off => Vec::new(),
            PodRxCpus::Auto if !kernel_has_rps() => Vec::new(),
            PodRxCpus::Auto => (0..ncpus).filter(|c| !worker_cores.contains(c)).collect(),
            PodRxCpus::List(l) => l.clone(),
        };
        v.sort_unstable();
        v.dedup();
        v
    }
}

/// How `weir status` names a resolved set: `off` or the CPU list.
pub fn describe(cpus: &[usize]) -> String {
    if cpus.is_empty() {
        "off".to_string()
    } else {
        cpus.iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_resolve() {
        assert_eq!("auto".parse::<PodRxCpus>(), Ok(PodRxCpus::Auto));
        assert_eq!("off".parse::<PodRxCpus>(), Ok(PodRxCpus::Off));
        assert_eq!("0".parse::<PodRxCpus>(), Ok(PodRxCpus::List(vec![0])));
        let e = "x".parse::<PodRxCpus>().unwrap_err();
        assert!(e.starts_with("--pod-rx-cpus: "), "{e}");
        assert!(e.contains("auto, off"), "{e}");
        assert!("4096".parse::<PodRxCpus>().is_err());
        if !kernel_has_rps() {
            return;
        }
        assert_eq!(PodRxCpus::Auto.resolve(&[1], 2), vec![0]);
        assert_eq!(PodRxCpus::Auto.resolve(&[0, 1], 2), Vec::<usize>::new());
        assert_eq!(PodRxCpus::Auto.resolve(&[3], 4), vec![0, 1, 2]);
        assert_eq!(PodRxCpus::Off.resolve(&[1], 2), Vec::<usize>::new());
        assert_eq!(PodRxCpus::List(vec![1, 0, 1]).resolve(&[1], 2), vec![0, 1]);
        assert_eq!(describe(&[]), "off");
        assert_eq!(describe(&[0, 2]), "0,2");
    }
}
