//! Asking the CPU for memory a few records ahead of where a loop reads it.
//!
//! A record's content and its index ([`crate::record::Fields`]) are written by the source on
//! one core and read by the next processor on the other: every first read of them misses
//! the cache, and the reads of one record depend on each other (the record, then the index,
//! then the content the index points into), so the core waits for each miss in turn. Asking
//! for the next records' lines while the current one is handled overlaps those waits
//! (measured in docs/performance.md, step 22).

/// Ask for the cache line holding `p`: a hint that never reads the memory, faults or changes
/// what a later load returns, whatever the address. Emitted on x86_64 only (elsewhere a
/// no-op).
#[inline(always)]
#[allow(unsafe_code, reason = "a prefetch hint; see the SAFETY comment")]
pub fn line<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the intrinsic is `unsafe` because it takes a raw pointer (and for its `sse`
    // target feature, in the x86_64 baseline); `prefetcht0` never accesses the memory and
    // cannot fault, for any address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// The lines holding the `bytes` bytes from `p` on (64-byte lines; none for no bytes).
#[inline(always)]
pub fn lines<T>(p: *const T, bytes: usize) {
    if bytes == 0 {
        return;
    }
    let start = p.cast::<u8>();
    let skew = start.addr() % 64;
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
        first(&batch);
        Self {
            records: batch.into_iter(),
        }
    }
}

/// Ask for the first [`AHEAD`] of `records`, before a loop over them starts (then [`ahead`]).
#[inline]
pub fn first(records: &[crate::record::Record]) {
    for r in records.iter().take(AHEAD) {
        r.prefetch();
    }
}

/// Ask for the record [`AHEAD`] places after the `i`th of `records`, if there is one (a loop
/// over a borrowed batch; [`Prefetched`] for an owned one).
#[inline]
pub fn ahead(records: &[crate::record::Record], i: usize) {
    if let Some(r) = records.get(i + AHEAD) {
        r.prefetch();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Indexer, JsonView, Record, RecordId};

    /// A hint never touches the memory: any address is harmless (a load here would fault).
    #[test]
    fn hints_on_any_address_are_harmless() {
        line(std::ptr::null::<u8>());
        lines(std::ptr::dangling::<u64>(), 4096);
        lines(std::ptr::without_provenance::<u8>(usize::MAX), 256);
    }

    /// The records come out all and in order, with or without their indexes.
    #[test]
    fn prefetched_records_come_in_order() {
        let mut ix = Indexer::for_bytes(1000);
        let mut batch: Vec<Record> = (1..=10u64)
            .map(|i| {
                let content = bytes::Bytes::from(format!("{{\"n\":{i}}}"));
                if i % 3 == 0 {
                    Record::from_bytes_numbered(RecordId(i), content)
                } else {
                    ix.json(RecordId(i), content, JsonView::Fields)
                        .unwrap_or_else(|(_, e)| panic!("{e}"))
                }
            })
            .collect();
        ix.attach(&mut batch);
        for (i, r) in batch.iter().enumerate() {
            ahead(&batch, i);
            assert_eq!(r.fields().is_some(), r.id().0 % 3 != 0);
        }
        let ids: Vec<u64> = Prefetched::new(batch).map(|r| r.id().0).collect();
        assert_eq!(ids, (1..=10).collect::<Vec<_>>());
    }
}
