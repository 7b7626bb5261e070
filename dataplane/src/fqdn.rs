//! The node's learned FQDN table: addresses that allowed DNS answers
//! returned, per name, until the answer's TTL runs out. Written by the pass
//! when it sees a response on a flow under DNS rules (docs/l7.md), read by
//! [`crate::policy::CompiledPolicy::judge_learned`] for a NEW flow of an
//! endpoint that has `toFQDNs` egress rules, when its tables would deny it.
//!
//! Shared by all workers behind one `RwLock`: writers are DNS responses
//! only, readers are new flows of FQDN-restricted endpoints only whose
//! static decision is a deny; no other traffic touches the lock. Reading
//! does not allocate; learning allocates the name once per (address, name).
//! Bounded: at most `capacity` (address, name) entries (expired entries are
//! swept when full; still full → not learned, the flow stays denied) and
//! [`NAMES_PER_ADDR`] names per address.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::RwLock;

/// Shortest TTL a learned address keeps (seconds): a TTL of 0 or 1 would
/// expire before the client's connection.
pub const TTL_MIN_S: u32 = 5;
/// Longest (seconds).
pub const TTL_MAX_S: u32 = 86_400;
/// Most names remembered for one address.
pub const NAMES_PER_ADDR: usize = 16;
/// Default capacity in (address, name) entries.
pub const DEFAULT_CAPACITY: usize = 65_536;

#[derive(Debug)]
struct Learned {
    /// Lowercase, dotted, no final dot.
    name: Box<str>,
    expires_ns: u64,
}

#[derive(Debug, Default)]
struct Inner {
    by_addr: HashMap<IpAddr, Vec<Learned>>,
    entries: usize,
}

/// See the module doc.
#[derive(Debug)]
pub struct FqdnTable {
    inner: RwLock<Inner>,
    capacity: usize,
}

impl Default for FqdnTable {
    fn default() -> Self {
        Self::new(DEFAULT_CAPACITY)
    }
}

impl FqdnTable {
    pub fn new(capacity: usize) -> Self {
        FqdnTable {
            inner: RwLock::new(Inner::default()),
            capacity: capacity.max(1),
        }
    }

    /// Records that `name` (dotted) resolved to `addr` for `ttl_s` seconds
    /// (clamped to [`TTL_MIN_S`]..=[`TTL_MAX_S`]) from `now_ns`. A known
    /// (address, name) keeps the later expiry. Returns whether it is stored.
    pub fn learn(&self, name: &str, addr: IpAddr, ttl_s: u32, now_ns: u64) -> bool {
        let ttl = u64::from(ttl_s.clamp(TTL_MIN_S, TTL_MAX_S));
        let expires_ns = now_ns.saturating_add(ttl * 1_000_000_000);
        let name = name.strip_suffix('.').unwrap_or(name);
        let mut g = self.inner.write().unwrap_or_else(|e| e.into_inner());
        if let Some(v) = g.by_addr.get_mut(&addr) {
            if let Some(l) = v.iter_mut().find(|l| l.name.eq_ignore_ascii_case(name)) {
                l.expires_ns = l.expires_ns.max(expires_ns);
                return true;
            }
        }
        if g.entries >= self.capacity {
            Self::sweep_locked(&mut g, now_ns);
            if g.entries >= self.capacity {
                return false;
            }
        }
        let v = g.by_addr.entry(addr).or_default();
        if v.len() >= NAMES_PER_ADDR {
            // Replace the entry expiring first.
            if let Some(l) = v.iter_mut().min_by_key(|l| l.expires_ns) {
                *l = Learned {
                    name: name.to_ascii_lowercase().into(),
                    expires_ns,
                };
            }
            return true;
        }
        v.push(Learned {
            name: name.to_ascii_lowercase().into(),
            expires_ns,
        });
        g.entries += 1;
        true
    }

    /// Whether some name learned for `addr`, unexpired at `now_ns`,
    /// satisfies `pred`. Read lock; does not allocate.
    pub fn any_name(&self, addr: IpAddr, now_ns: u64, mut pred: impl FnMut(&str) -> bool) -> bool {
        let g = self.inner.read().unwrap_or_else(|e| e.into_inner());
        g.by_addr
            .get(&addr)
            .is_some_and(|v| v.iter().any(|l| l.expires_ns > now_ns && pred(&l.name)))
    }

    /// Drops expired entries.
    pub fn sweep(&self, now_ns: u64) {
        let mut g = self.inner.write().unwrap_or_else(|e| e.into_inner());
        Self::sweep_locked(&mut g, now_ns);
    }

    fn sweep_locked(g: &mut Inner, now_ns: u64) {
        let mut entries = 0;
        g.by_addr.retain(|_, v| {
            v.retain(|l| l.expires_ns > now_ns);
            entries += v.len();
            !v.is_empty()
        });
        g.entries = entries;
    }

    /// (address, name, expiry ns) of every entry, sorted (status, tests).
    pub fn entries(&self) -> Vec<(IpAddr, String, u64)> {
        let g = self.inner.read().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<(IpAddr, String, u64)> = g
            .by_addr
            .iter()
            .flat_map(|(a, v)| v.iter().map(|l| (*a, l.name.to_string(), l.expires_ns)))
            .collect();
        out.sort();
        out
    }

    /// Number of (address, name) entries, expired ones included until swept.
    pub fn len(&self) -> usize {
        self.inner.read().unwrap_or_else(|e| e.into_inner()).entries
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl crate::policy::LearnedNames for FqdnTable {
    fn any_name(&self, addr: IpAddr, now_ns: u64, pred: impl FnMut(&str) -> bool) -> bool {
        FqdnTable::any_name(self, addr, now_ns, pred)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn learn_match_expire_clamp_and_bound() {
        let t = FqdnTable::new(2);
        let a: IpAddr = "10.0.0.7".parse().unwrap();
        assert!(t.learn("WWW.Example.com.", a, 1, 0)); // clamped to 5 s
        assert!(t.any_name(a, 4 * S, |n| n == "www.example.com"));
        assert!(!t.any_name(a, 5 * S, |_| true));
        assert!(t.learn("www.example.com", a, 100, 10 * S));
        assert!(t.learn("b.example.com", a, 100, 10 * S));
        // Full with live entries: refused; after expiry the sweep makes room.
        let b: IpAddr = "10.0.0.8".parse().unwrap();
        assert!(!t.learn("c.example.com", b, 100, 20 * S));
        assert!(t.learn("c.example.com", b, 100, 200 * S));
        assert_eq!(t.len(), 1);
        assert!(t.learn("x", a, u32::MAX, 0));
        assert_eq!(t.entries()[0].2, u64::from(TTL_MAX_S) * S);
    }
}
