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

/// Frames the kernel dropped because the input backlog of one of `cpus`
/// was full (`net.core.netdev_max_backlog`), summed, since boot: the 2nd
/// column of `/proc/net/softnet_stat`. With RPS every pod's receive path
/// queues there (the worker's TX kick only enqueues), so a flood to one pod
/// could fill a backlog for the others without any weir counter seeing it;
/// this is where it shows. Node-wide (whatever else queues on those CPUs),
/// 32-bit (wraps). `None`: the file cannot be read.
pub fn backlog_dropped(cpus: &[usize]) -> Option<u64> {
    softnet_dropped(
        &std::fs::read_to_string("/proc/net/softnet_stat").ok()?,
        cpus,
    )
}

/// [`backlog_dropped`] of the text of `/proc/net/softnet_stat`: one line
/// per CPU, hexadecimal columns; the 13th is the CPU's number (kernels
/// since 5.10; before, the line's index).
fn softnet_dropped(text: &str, cpus: &[usize]) -> Option<u64> {
    let mut sum = 0u64;
    for (i, line) in text.lines().enumerate() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let dropped = u32::from_str_radix(cols.get(1)?, 16).ok()?;
        let cpu = match cols.get(12) {
            Some(c) => usize::from_str_radix(c, 16).ok()?,
            None => i,
        };
        if cpus.contains(&cpu) {
            sum += u64::from(dropped);
        }
    }
    Some(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines as this machine's kernel (6.18) prints them, CPU 1 with 0x11
    /// backlog drops; and a pre-5.10 line without the CPU column.
    #[test]
    fn backlog_drops_from_softnet_stat() {
        let text = "2c207b37 00000000 0000002f 00000000 00000000 00000000 00000000 00000000 00000000 02c22ab3 00000000 00000000 00000000 00000000 00000000\n\
                    24fbb3a7 00000011 00000017 00000000 00000000 00000000 00000000 00000000 00000000 0000d39e 00000000 00000000 00000001 00000000 00000000\n";
        assert_eq!(softnet_dropped(text, &[0]), Some(0));
        assert_eq!(softnet_dropped(text, &[1]), Some(17));
        assert_eq!(softnet_dropped(text, &[0, 1]), Some(17));
        assert_eq!(softnet_dropped(text, &[]), Some(0));
        let old = "00000001 00000002 00000000\n00000001 00000003 00000000\n";
        assert_eq!(softnet_dropped(old, &[1]), Some(3));
        assert_eq!(softnet_dropped("zz yy", &[0]), None);
        assert!(backlog_dropped(&[0]).is_some(), "this machine's file");
    }

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
