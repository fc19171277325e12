//! Asking the CPU for memory a few records ahead of where a loop reads it.
//!
//! A record's content and its index ([`crate::record::Fields`]) are written by the source on
//! one core and read by the next processor on the other: every first read of them misses
//! the cache, and the reads of one record depend on each other (the record, then the index,
//! then the content the index points into), so the core waits for each miss in turn. Asking
//! for the next records' lines while the current one is handled overlaps those waits
//! (measured in docs/performance.md, step 22).

/// Ask for the cache line holding `p`: a hint that never reads the memory, faults or changes
/// what a later load returns, whatever the address. A no-op where there is no such
/// instruction.
#[inline(always)]
#[allow(unsafe_code, reason = "a prefetch hint; see the SAFETY comment")]
pub fn line<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `prefetcht0` only hints: it dereferences nothing and cannot fault, for any
    // address. The call is `unsafe` only for its `sse` target feature, which every x86_64
    // CPU has (it is in the x86_64 baseline the compiler targets).
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// The lines holding the `bytes` bytes from `p` on (64-byte lines).
#[inline(always)]
pub fn lines<T>(p: *const T, bytes: usize) {
    let start = p.cast::<u8>();
    let skew = start as usize % 64;
    let mut at = 0;
    while at < bytes + skew {
        line(start.wrapping_sub(skew).wrapping_add(at));
        at += 64;
    }
}

/// How many records ahead of the one handled [`Prefetched`] asks for.
pub const AHEAD: usize = 4;

/// A batch's records in order, asking for the content and index of the record [`AHEAD`]
/// places on as each is taken (see [`crate::record::Record::prefetch`]).
pub struct Prefetched {
    records: std::vec::IntoIter<crate::record::Record>,
}

impl Prefetched {
    /// The records of `batch`, the first [`AHEAD`] asked for at once.
    pub fn new(batch: Vec<crate::record::Record>) -> Self {
        for r in batch.iter().take(AHEAD) {
            r.prefetch();
        }
        Self {
            records: batch.into_iter(),
        }
    }
}

impl Iterator for Prefetched {
    type Item = crate::record::Record;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if let Some(r) = self.records.as_slice().get(AHEAD) {
            r.prefetch();
        }
        self.records.next()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.records.size_hint()
    }
}
