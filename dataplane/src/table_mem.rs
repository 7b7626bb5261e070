//! Memory for the node's large fixed tables (conntrack, Service NAT): an
//! array allocated once at start, on transparent huge pages where the
//! kernel gives them, every page touched before the first packet.
//!
//! Why: at 1M flows the conntrack table is ~140 MB, far beyond what the
//! TLB maps with 4 KiB pages (~35 000 pages), so each lookup paid a page
//! walk (under a VM's nested paging, up to two dimensions of it) besides
//! its cache misses (docs/performance.md). With 2 MiB pages the same table
//! is ~70 TLB entries.
//!
//! How: an anonymous private `mmap` of the table rounded up to 2 MiB plus
//! one more 2 MiB (then the unaligned head and tail are unmapped), so the
//! table starts on a 2 MiB boundary; `madvise(MADV_HUGEPAGE)` on it (THP
//! is `madvise` on most distributions' kernels: only advised ranges get
//! huge pages); then every element is written (its initial value), which
//! faults every page in now, at start, not under the first flood; pages
//! that faulted in small (no free 2 MiB block then) are collapsed with
//! `MADV_COLLAPSE`. Chosen
//! over `std::alloc` with a 2 MiB alignment because glibc serves that from
//! its heap or its own mapping depending on thresholds the process tunes
//! ([`crate::heap`]), may touch the pages before the advice can be given,
//! and keeps freed memory; a mapping of our own is advised before its
//! first touch and goes back to the kernel at `munmap`. No well-kept crate
//! gives an aligned, advised, typed array (`memmap2` maps bytes, without
//! the alignment), hence this module.
//!
//! Fallback: where the advice is refused (a kernel without THP) or THP is
//! `never`, or the kernel has no free huge page at fault time, the same
//! mapping works on 4 KiB pages; [`TableMem::huge_bytes`] tells which it
//! got. Tables under 2 MiB (tests, small nodes) stay on the ordinary heap:
//! a huge page would cost more than the table.
#![allow(unsafe_code)]

use std::fmt;
use std::io::{BufRead, BufReader};
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

/// Bytes of a transparent huge page on x86_64 and arm64 (4 KiB base pages).
pub const HUGE_PAGE: usize = 2 << 20;

/// `MADV_COLLAPSE` (Linux 6.1, include/uapi/asm-generic/mman-common.h; not
/// in the `libc` crate for this target yet).
const MADV_COLLAPSE: libc::c_int = 25;

/// The guard page after a mapped table.
const GUARD: usize = 4096;

/// Where a table's memory is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pages {
    /// The process heap (a table under [`HUGE_PAGE`], or small pages asked
    /// for a table under it).
    Heap,
    /// A mapping of its own on 4 KiB pages: huge pages not asked for, or
    /// the advice refused (`advice_refused`: the kernel has no THP).
    Small { advice_refused: bool },
    /// A 2 MiB-aligned mapping advised `MADV_HUGEPAGE` (whether the kernel
    /// did give huge pages: [`TableMem::huge_bytes`]).
    Advised,
}

/// A fixed-length array of `T` (see the module's comment).
pub struct TableMem<T> {
    ptr: NonNull<T>,
    len: usize,
    /// The mapping (start, bytes), or `None` for a heap (or empty) table.
    map: Option<(NonNull<libc::c_void>, usize)>,
    pages: Pages,
}

// SAFETY: a `TableMem<T>` owns its `T`s exactly as a `Box<[T]>` does (the
// raw pointer is unique and lives as long as the value), so it may move to
// or be shared with another thread whenever `T` may.
unsafe impl<T: Send> Send for TableMem<T> {}
// SAFETY: as above; `&TableMem<T>` only hands out `&[T]`.
unsafe impl<T: Sync> Sync for TableMem<T> {}

fn round_up(n: usize, to: usize) -> usize {
    n.div_ceil(to) * to
}

impl<T> TableMem<T> {
    /// `len` elements, each `init()`, on huge pages if `huge` and the
    /// table is at least [`HUGE_PAGE`] bytes (else as [`Pages`] says).
    /// Every page is written before this returns.
    pub fn new(len: usize, huge: bool, mut init: impl FnMut() -> T) -> Self {
        let bytes = len
            .checked_mul(std::mem::size_of::<T>())
            .expect("table size overflows usize");
        if bytes < HUGE_PAGE {
            return Self::heap(len, init);
        }
        // `T`'s alignment (a cache line for the tables here) divides any
        // page boundary.
        debug_assert!(std::mem::align_of::<T>() <= 4096);
        let page = if huge { HUGE_PAGE } else { 4096 };
        let table_len = round_up(bytes, page);
        // A guard page after the table: its own mapping flags keep the
        // kernel from merging the table's mapping with a neighbour (so
        // smaps tells the table's own huge pages), and a stray write past
        // the end faults instead of landing in other data.
        let map_len = table_len + GUARD + if huge { HUGE_PAGE } else { 0 };
        // SAFETY: a new anonymous private mapping at an address the kernel
        // picks: it aliases nothing the program holds.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            // As an allocation failure of `Box<[T]>` would.
            std::alloc::handle_alloc_error(
                std::alloc::Layout::from_size_align(bytes, std::mem::align_of::<T>())
                    .expect("table layout"),
            );
        }
        let mut start = base.cast::<u8>();
        let mut pages = Pages::Small {
            advice_refused: false,
        };
        if huge {
            let head = round_up(base as usize, HUGE_PAGE) - base as usize;
            let tail = map_len - head - table_len - GUARD;
            // SAFETY: `head` < 2 MiB and `head` + `table_len` + `GUARD` +
            // `tail` = `map_len`, so both unmapped ranges lie inside the
            // mapping just made (none of it used yet) and the table's range
            // and its guard stay mapped.
            unsafe {
                start = start.add(head);
                if head > 0 {
                    libc::munmap(base, head);
                }
                if tail > 0 {
                    libc::munmap(start.add(table_len + GUARD).cast(), tail);
                }
            }
            // SAFETY: advice on our own mapping, before any page is touched.
            let r = unsafe { libc::madvise(start.cast(), table_len, libc::MADV_HUGEPAGE) };
            pages = if r == 0 {
                Pages::Advised
            } else {
                Pages::Small {
                    advice_refused: true,
                }
            };
        }
        // SAFETY: the guard page is ours, past the table; nothing points
        // into it.
        unsafe { libc::mprotect(start.add(table_len).cast(), GUARD, libc::PROT_NONE) };
        let ptr = start.cast::<T>();
        for i in 0..len {
            // SAFETY: `ptr` is aligned (page-aligned) and the mapping holds
            // `len` `T`s (`table_len` ≥ `bytes`); each slot is written once
            // before any is read. A panic in `init` leaks the mapping (no
            // `TableMem` exists yet to drop it), never reads an unwritten slot.
            unsafe { ptr.add(i).write(init()) };
        }
        if pages == Pages::Advised {
            // Where the faults above got 4 KiB pages (no free 2 MiB block
            // then: a fragmented memory; seen here with most memory in page
            // cache), ask the kernel to collapse the range into huge pages
            // now, reclaiming and compacting as it must (Linux ≥ 6.1; an
            // error, e.g. EINVAL before 6.1 or EAGAIN, leaves the table as
            // it is, working). Ranges already on huge pages are skipped.
            // SAFETY: advice on our own mapping; a collapse copies the
            // contents into the huge page, values unchanged.
            unsafe { libc::madvise(start.cast(), table_len, MADV_COLLAPSE) };
        }
        TableMem {
            // SAFETY: mmap never returns null on success.
            ptr: unsafe { NonNull::new_unchecked(ptr) },
            len,
            // SAFETY: as above.
            map: Some((
                unsafe { NonNull::new_unchecked(start.cast()) },
                table_len + GUARD,
            )),
            pages,
        }
    }

    fn heap(len: usize, init: impl FnMut() -> T) -> Self {
        let b: Box<[T]> = std::iter::repeat_with(init).take(len).collect();
        let ptr = Box::into_raw(b).cast::<T>();
        TableMem {
            // SAFETY: `Box::into_raw` never returns null.
            ptr: unsafe { NonNull::new_unchecked(ptr) },
            len,
            map: None,
            pages: Pages::Heap,
        }
    }

    /// Where the table's memory is.
    pub fn pages(&self) -> Pages {
        self.pages
    }

    /// Bytes of the table's mapping that the kernel backs with huge pages
    /// now (`AnonHugePages` of its mapping in `/proc/self/smaps`; the
    /// mapping is the table and its guard page alone, the guard keeping the
    /// kernel from merging it with a neighbour). `Some(0)`: the table
    /// is on 4 KiB pages. `None`: a heap table, or smaps unreadable. Reads
    /// and parses smaps: for status and benchmarks, not per packet.
    pub fn huge_bytes(&self) -> Option<u64> {
        let (start, len) = self.map?;
        let start = start.as_ptr() as usize;
        let f = std::fs::File::open("/proc/self/smaps").ok()?;
        let mut inside = false;
        for line in BufReader::new(f).lines() {
            let line = line.ok()?;
            // A mapping's header: `start-end perms offset dev inode [path]`.
            let range = line.split(' ').next().unwrap_or_default();
            if let Some((a, b)) = range.split_once('-') {
                if let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
                {
                    inside = a <= start && start < b;
                    continue;
                }
            }
            if inside {
                if let Some(kb) = line.strip_prefix("AnonHugePages:") {
                    let kb: u64 = kb.trim().trim_end_matches("kB").trim().parse().ok()?;
                    return Some((kb * 1024).min(len as u64));
                }
            }
        }
        None
    }
}

impl<T> Deref for TableMem<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: `ptr` points to `len` initialised `T`s owned by `self`
        // (written in `new`, or a `Box<[T]>`'s), alive until drop.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl<T> DerefMut for TableMem<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as in `deref`, and `&mut self` makes the borrow unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl<T> Drop for TableMem<T> {
    fn drop(&mut self) {
        match self.map {
            None => {
                // SAFETY: a heap table's pointer and length are those of the
                // `Box<[T]>` taken apart in `heap`, given back once.
                drop(unsafe {
                    Box::from_raw(std::ptr::slice_from_raw_parts_mut(
                        self.ptr.as_ptr(),
                        self.len,
                    ))
                });
            }
            Some((start, len)) => {
                // SAFETY: the `len` elements are initialised and owned by
                // `self`, dropped once here; then the mapping made in `new`
                // (exactly `start`, `len`) is unmapped, nothing pointing
                // into it outliving `self`.
                unsafe {
                    std::ptr::drop_in_place(std::ptr::slice_from_raw_parts_mut(
                        self.ptr.as_ptr(),
                        self.len,
                    ));
                    let r = libc::munmap(start.as_ptr(), len);
                    debug_assert_eq!(r, 0, "munmap of a table");
                }
            }
        }
    }
}

impl<T> fmt::Debug for TableMem<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TableMem")
            .field("len", &self.len)
            .field("pages", &self.pages)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A cache line, as the conntrack table's lines.
    #[derive(Clone, Copy, PartialEq, Eq, Debug)]
    #[repr(C, align(64))]
    struct Line([u64; 8]);

    const LINES_4M: usize = (4 << 20) / 64;

    /// Each path gives a working table of the initial values (zero), 2 MiB
    /// aligned when advised, writable to its last element.
    fn works(t: &mut TableMem<Line>, len: usize) {
        assert_eq!(t.len(), len);
        assert!(t.iter().all(|l| *l == Line([0; 8])));
        for (i, l) in t.iter_mut().enumerate() {
            l.0[i % 8] = i as u64;
        }
        assert!(t.iter().enumerate().all(|(i, l)| l.0[i % 8] == i as u64));
        let addr = t.as_ptr() as usize;
        assert_eq!(addr % 64, 0);
        if t.pages() == Pages::Advised {
            assert_eq!(addr % HUGE_PAGE, 0);
        }
    }

    #[test]
    fn huge_path_gives_a_zeroed_aligned_table() {
        let mut t = TableMem::new(LINES_4M + 3, true, || Line([0; 8]));
        // THP compiled out of the kernel refuses the advice: the table
        // still works on small pages.
        assert!(matches!(
            t.pages(),
            Pages::Advised
                | Pages::Small {
                    advice_refused: true
                }
        ));
        works(&mut t, LINES_4M + 3);
        // smaps knows the mapping (0 if the kernel gave no huge page).
        let huge = t.huge_bytes().expect("the table's mapping in smaps");
        assert!(huge <= (6 << 20) as u64);
    }

    #[test]
    fn small_pages_fallback_gives_a_zeroed_table() {
        let mut t = TableMem::new(LINES_4M, false, || Line([0; 8]));
        assert_eq!(
            t.pages(),
            Pages::Small {
                advice_refused: false
            }
        );
        works(&mut t, LINES_4M);
        // Not advised: no huge page in it (THP `madvise` or `never`; a
        // kernel set to `always` may give some).
        assert!(t.huge_bytes().is_some());
    }

    #[test]
    fn small_tables_stay_on_the_heap() {
        let mut t = TableMem::new(100, true, || Line([0; 8]));
        assert_eq!(t.pages(), Pages::Heap);
        assert_eq!(t.huge_bytes(), None);
        works(&mut t, 100);
        let mut empty = TableMem::new(0, true, || Line([0; 8]));
        works(&mut empty, 0);
    }

    /// Dropping a table drops each element once, on every path (the
    /// mapping itself is unmapped; `munmap`'s result is checked in debug).
    #[test]
    fn drop_drops_every_element_once() {
        static DROPS: AtomicUsize = AtomicUsize::new(0);
        struct Counted(#[allow(dead_code)] [u8; 64]);
        impl Drop for Counted {
            fn drop(&mut self) {
                DROPS.fetch_add(1, Ordering::Relaxed);
            }
        }
        let mut want = 0;
        for (len, huge) in [(10, true), (LINES_4M, true), (LINES_4M, false)] {
            let t = TableMem::new(len, huge, || Counted([0; 64]));
            drop(t);
            want += len;
            assert_eq!(DROPS.load(Ordering::Relaxed), want);
        }
    }
}
