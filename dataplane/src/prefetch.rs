//! Software prefetch: start loading a cache line without waiting for it, so
//! that a batch of packets can have all its table lines in flight at once
//! (the conntrack lookups at 1M flows, docs/performance.md). A hint only:
//! it changes no value and never faults.
#![allow(unsafe_code)]

/// Starts loading the cache line `offset` bytes into `r` into the cache,
/// asking for it in the state for writing (the conntrack lines are
/// written: the lock's word and the entry's state). The intrinsic becomes
/// PREFETCHW only when the build targets the `prfchw` feature (e.g.
/// `-C target-cpu=native` on a CPU with it); the default x86-64 build
/// emits PREFETCHT0 (a load into all cache levels; checked with objdump
/// of `conntrack_bench`). A no-op on architectures other than x86_64.
#[inline(always)]
pub fn prefetch_at<T>(r: &T, offset: usize) {
    let p = (r as *const T).cast::<u8>().wrapping_add(offset);
    #[cfg(target_arch = "x86_64")]
    {
        use core::arch::x86_64::{_mm_prefetch, _MM_HINT_ET0};
        // SAFETY: a prefetch (PREFETCHW or PREFETCHT0) is a hint: it
        // reads no value into the program, writes nothing and never
        // faults, whatever the address; `p` is computed without
        // dereferencing (callers keep it inside `r` anyway).
        unsafe { _mm_prefetch::<_MM_HINT_ET0>(p.cast::<i8>()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

#[cfg(test)]
mod tests {
    /// A prefetch leaves the data as it was (and does not crash on the
    /// last line of an object).
    #[test]
    fn prefetch_changes_nothing() {
        let v = [7u64; 64];
        super::prefetch_at(&v, 0);
        super::prefetch_at(&v, 64 * 7);
        assert!(v.iter().all(|&x| x == 7));
    }
}
