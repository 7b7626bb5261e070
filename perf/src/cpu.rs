//! CPU time from `/proc/stat`: user + nice + system + irq + softirq jiffies
//! per core, so a configuration's cost can be stated in cores consumed
//! (pps per consumed core), whoever spent it: the load, softirq, weir's
//! worker, OVS's PMD thread, haproxy.
#![forbid(unsafe_code)]

use std::time::Instant;

use serde::{Deserialize, Serialize};

/// Busy jiffies per core at one moment.
#[derive(Clone, Debug)]
pub struct CpuSnap {
    at: Instant,
    /// (core, busy jiffies)
    busy: Vec<(usize, u64)>,
}

/// Cores consumed over an interval.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CpuUse {
    /// Busy fraction of each core (0..1), by core number.
    pub per_core: Vec<f64>,
    /// Sum of `per_core`: how many cores the configuration consumed.
    pub cores: f64,
}

/// Parses the `cpuN` lines of `/proc/stat`.
pub fn parse(text: &str) -> Vec<(usize, u64)> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let name = f.next()?;
            let core: usize = name.strip_prefix("cpu")?.parse().ok()?;
            let v: Vec<u64> = f.filter_map(|x| x.parse().ok()).collect();
            // user nice system idle iowait irq softirq steal ...
            let busy = v.first()? + v.get(1)? + v.get(2)? + v.get(5)? + v.get(6)?;
            Some((core, busy))
        })
        .collect()
}

impl CpuSnap {
    pub fn now() -> CpuSnap {
        CpuSnap {
            at: Instant::now(),
            busy: parse(&std::fs::read_to_string("/proc/stat").unwrap_or_default()),
        }
    }

    /// What was consumed since `before`.
    pub fn since(&self, before: &CpuSnap) -> CpuUse {
        let secs = (self.at - before.at).as_secs_f64().max(1e-3);
        let hz = clk_tck() as f64;
        let per_core: Vec<f64> = self
            .busy
            .iter()
            .map(|(c, b)| {
                let b0 = before
                    .busy
                    .iter()
                    .find(|(c0, _)| c0 == c)
                    .map_or(*b, |x| x.1);
                ((b.saturating_sub(b0)) as f64 / hz / secs).min(1.0)
            })
            .collect();
        CpuUse {
            cores: per_core.iter().sum(),
            per_core,
        }
    }
}

/// USER_HZ: 100 on every Linux this runs on (`getconf CLK_TCK`).
fn clk_tck() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100)
}

#[cfg(test)]
mod tests {
    #[test]
    fn parse_stat() {
        let t = "cpu  10 0 10 100 0 0 0 0 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\ncpu1 10 0 0 0 0 0 1 0 0 0\nintr 5\n";
        assert_eq!(super::parse(t), vec![(0, 1 + 2 + 3 + 6 + 7), (1, 11)]);
    }
}
