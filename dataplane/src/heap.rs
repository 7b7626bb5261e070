//! The process heap: giving freed memory back to the kernel.
//!
//! glibc keeps what a thread frees in that thread's arena (only the top of
//! a heap is trimmed). The node dataplane's server thread answers `weir
//! flows` by copying and encoding up to 20 000 flow records at once (tens
//! of MB); without a trim the process kept all of it for good (the soak's
//! RSS, docs/reliability.md). `malloc_trim` and `mallopt` are not in `std`,
//! and no well-kept crate wraps them, hence these two calls.
#![allow(unsafe_code)]

/// Fixes glibc's thresholds for the process (call once, at start): blocks
/// of 256 KiB and more are mapped on their own and unmapped when freed, and
/// a heap whose free top exceeds 1 MiB is shrunk. glibc's defaults adapt
/// upwards (to 32 MiB) after the first large block is freed, after which a
/// thread arena's freed top stays resident, which [`release_free_memory`]
/// does not reach (it trims only the main heap's top).
pub fn fixed_thresholds() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt takes two integers and only changes the allocator's
    // tuning, under its own lock; any thread may call it at any time.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 10);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 20);
    }
}

/// Returns the free pages of every malloc arena to the kernel (glibc's
/// `malloc_trim(0)`; a no-op elsewhere). For after a large, rare
/// allocation, never on a per-packet path.
pub fn release_free_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim takes no pointer and touches no memory the
    // program owns: it only releases free chunks of the allocator's own
    // arenas, under the allocator's locks; any thread may call it.
    unsafe {
        libc::malloc_trim(0);
    }
}
