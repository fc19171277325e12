//! The index of a segment: what each block of its frames holds, so that a query reads only
//! the blocks that can answer it.
//!
//! ```text
//! <dir>/00000001.idx                 beside 00000001.prov
//! index = IDX_MAGIC, frame*          IDX_MAGIC = b"FLOWIDX1"; frames as in a segment
//! frame payload = a Block (postcard)
//! ```
//!
//! A block is a run of whole frames of the segment (about [`BLOCK_BYTES`]), in order, the
//! first starting right after the segment's header. Its entry says where it is, which events
//! it holds (their ordinals in the segment), the record ids they name (a few ranges), their
//! time range, and counts per kind and per node (so `stats` reads no event, and `search`
//! skips blocks without the node or kind it asks for).
//!
//! The writer appends an entry each time a block is complete and when the segment closes.
//! A segment whose index is missing, torn or covers only part of it (a run killed with
//! `kill -9`, a segment still being written, a store from before indexes) is scanned from
//! where its index ends; opening the store for a new run writes the missing entries.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::store::{Format, StoreError, frame_of, io, next_frame};
use super::{Event, EventKind};

/// An index file's first bytes.
pub const IDX_MAGIC: &[u8; 8] = b"FLOWIDX1";
/// A block is closed once its frames hold this many bytes.
pub const BLOCK_BYTES: u64 = 64 << 10;
/// A block keeps at most this many id ranges (the closest are merged beyond).
const ID_RANGES: usize = 16;

/// What one block of a segment holds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Block {
    /// Where its first frame starts in the segment.
    pub offset: u64,
    /// The bytes of its frames.
    pub len: u64,
    /// The ordinal (in the segment) of its first event.
    pub first_event: u64,
    /// How many events.
    pub events: u64,
    /// Every record id its events name lies in one of these ranges (inclusive, sorted).
    pub ids: Vec<(u64, u64)>,
    /// Its events' earliest and latest times (epoch ms).
    pub time: (i64, i64),
    /// Events per kind, by the kind's index.
    pub kinds: Vec<u64>,
    /// Events per node (index in the segment's header), sorted by node.
    pub nodes: Vec<(u32, u64)>,
    /// Records CREATEd.
    pub created: u64,
}

impl Block {
    /// Whether an event of the block may name `id`.
    pub fn may_hold(&self, id: u64) -> bool {
        let i = self.ids.partition_point(|&(_, end)| end < id);
        self.ids.get(i).is_some_and(|&(start, _)| start <= id)
    }

    /// Whether some event of the block may fall in `since..=until` (epoch ms).
    pub fn overlaps(&self, since: Option<i64>, until: Option<i64>) -> bool {
        self.events > 0
            && since.is_none_or(|s| self.time.1 >= s)
            && until.is_none_or(|u| self.time.0 <= u)
    }

    /// Whether the block holds events of `kind`.
    pub fn has_kind(&self, kind: EventKind) -> bool {
        self.kinds.get(kind as usize).is_some_and(|&n| n > 0)
    }

    /// Whether the block holds events at `node`.
    pub fn has_node(&self, node: u32) -> bool {
        self.nodes.binary_search_by_key(&node, |&(n, _)| n).is_ok()
    }

    /// The end of its frames in the segment.
    pub fn end(&self) -> u64 {
        self.offset + self.len
    }
}

/// A block being filled: its entry, and its ids as ranges not yet merged down.
#[derive(Debug, Default)]
pub struct Builder {
    block: Block,
    ranges: Vec<(u64, u64)>,
}

impl Builder {
    /// A block starting at `offset` with event ordinal `first_event`.
    pub fn new(offset: u64, first_event: u64) -> Self {
        Self {
            block: Block {
                offset,
                first_event,
                time: (i64::MAX, i64::MIN),
                ..Block::default()
            },
            ranges: Vec::new(),
        }
    }

    /// Add a frame of `len` bytes holding `events`.
    pub fn add_frame(&mut self, len: u64, events: &[Event]) {
        let b = &mut self.block;
        b.len += len;
        b.events += events.len() as u64;
        for e in events {
            b.time = (b.time.0.min(e.time), b.time.1.max(e.time));
            let k = e.kind as usize;
            if b.kinds.len() <= k {
                b.kinds.resize(k + 1, 0);
            }
            b.kinds[k] += 1;
            match b.nodes.binary_search_by_key(&e.node, |&(n, _)| n) {
                Ok(i) => b.nodes[i].1 += 1,
                Err(i) => b.nodes.insert(i, (e.node, 1)),
            }
            if e.kind == EventKind::Create {
                b.created += e.records.len() as u64;
            }
            for (start, len) in e.id_runs() {
                if len == 0 {
                    continue;
                }
                match start.checked_add(u64::from(len) - 1) {
                    Some(end) => self.ranges.push((start, end)),
                    // Ids that wrap around: say the block may hold any.
                    None => self.ranges.push((0, u64::MAX)),
                }
            }
        }
        if self.ranges.len() > 4096 {
            merge(&mut self.ranges, ID_RANGES);
        }
    }

    /// Whether it holds no frame.
    pub fn is_empty(&self) -> bool {
        self.block.len == 0
    }

    /// Its size so far.
    pub fn len(&self) -> u64 {
        self.block.len
    }

    /// The entry.
    pub fn finish(mut self) -> Block {
        merge(&mut self.ranges, ID_RANGES);
        self.block.ids = self.ranges;
        if self.block.events == 0 {
            self.block.time = (0, 0);
        }
        self.block
    }
}

/// How many ranges [`merge`] sorts as they are; more are first gathered into this many
/// buckets of ids.
const BUCKETS: usize = 1024;

/// Sort and merge `ranges` (inclusive) until at most `max` are left, closing the smallest
/// gaps first. More than [`BUCKETS`] ranges (thousands: a window's JOIN names its parents one
/// by one) are first gathered by where they start into that many equal slices of the ids
/// they span, each slice's ranges into one: a cover of the same ids found without sorting
/// them all (sorting was most of the writer's time), which only forgets gaps narrower than
/// a slice, never among the `max - 1` kept when `max` is much smaller than [`BUCKETS`].
fn merge(ranges: &mut Vec<(u64, u64)>, max: usize) {
    if ranges.len() > BUCKETS
        && let (Some(lo), Some(hi)) = (
            ranges.iter().map(|r| r.0).min(),
            ranges.iter().map(|r| r.1).max(),
        )
    {
        let width = (hi - lo) / BUCKETS as u64 + 1;
        let mut slices = vec![(u64::MAX, 0u64); BUCKETS];
        for &(s, e) in ranges.iter() {
            // `s - lo < BUCKETS * width`, so the index is below `BUCKETS`.
            let i = usize::try_from((s - lo) / width).unwrap_or(BUCKETS - 1);
            if let Some(slice) = slices.get_mut(i) {
                *slice = (slice.0.min(s), slice.1.max(e));
            }
        }
        ranges.clear();
        ranges.extend(slices.into_iter().filter(|&(s, _)| s != u64::MAX));
    }
    ranges.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for &(s, e) in ranges.iter() {
        match merged.last_mut() {
            Some(last) if s <= last.1.saturating_add(1) => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    while merged.len() > max {
        // Merge across the smallest gaps: keep the `max - 1` largest as cuts.
        let mut gaps: Vec<(u64, usize)> = merged
            .windows(2)
            .enumerate()
            .map(|(i, w)| (w[1].0 - w[0].1, i))
            .collect();
        gaps.sort_unstable_by(|a, b| b.cmp(a));
        let mut cuts: Vec<usize> = gaps[..max - 1].iter().map(|&(_, i)| i).collect();
        cuts.sort_unstable();
        let mut out = Vec::with_capacity(max);
        let mut start = 0;
        for c in cuts.into_iter().chain([merged.len() - 1]) {
            out.push((merged[start].0, merged[c].1));
            start = c + 1;
        }
        merged = out;
    }
    *ranges = merged;
}

/// The index file of segment `segment` (`…/00000001.prov` → `…/00000001.idx`).
pub fn path_of(segment: &Path) -> PathBuf {
    segment.with_extension("idx")
}

/// Create the index file of a new segment.
pub fn create(segment: &Path) -> Result<File, StoreError> {
    let path = path_of(segment);
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)
        .map_err(io(&path))?;
    f.write_all(IDX_MAGIC).map_err(io(&path))?;
    Ok(f)
}

/// Append `block`'s entry to an index file.
pub fn append(file: &mut File, path: &Path, block: &Block) -> Result<(), StoreError> {
    let mut buf = Vec::new();
    frame_of(&mut buf, block)?;
    file.write_all(&buf).map_err(io(path))
}

/// The entries of the index of `segment` that hold together: in order, contiguous from
/// `start` (the end of the segment's header) and within `len` (the segment's valid length).
/// Also whether the file held anything else (a torn tail, entries past the segment's end).
pub fn read(segment: &Path, start: u64, len: u64) -> Result<(Vec<Block>, bool), StoreError> {
    let path = path_of(segment);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), false)),
        Err(e) => return Err(io(&path)(e)),
    };
    if !bytes.starts_with(IDX_MAGIC) {
        return Ok((Vec::new(), true));
    }
    let mut at = IDX_MAGIC.len();
    let mut blocks: Vec<Block> = Vec::new();
    let mut next = start;
    let mut first_event = 0;
    while let Some(p) = next_frame(&bytes, &mut at) {
        let Ok(b) = postcard::from_bytes::<Block>(p) else {
            return Ok((blocks, true));
        };
        if b.offset != next || b.end() > len || b.first_event != first_event {
            return Ok((blocks, true));
        }
        next = b.end();
        first_event += b.events;
        blocks.push(b);
    }
    Ok((blocks, at < bytes.len()))
}

/// A segment's header length and the blocks of its frames from `from` on (event ordinals
/// from `first_event`), scanned; stops at the first torn or corrupt frame. Returns the
/// blocks and where the valid frames end.
pub fn scan(
    segment: &Path,
    format: Format,
    from: u64,
    first_event: u64,
) -> Result<(Vec<Block>, u64), StoreError> {
    let mut f = File::open(segment).map_err(io(segment))?;
    f.seek(SeekFrom::Start(from)).map_err(io(segment))?;
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes).map_err(io(segment))?;
    let mut at = 0;
    let mut blocks = Vec::new();
    let mut b = Builder::new(from, first_event);
    let mut ordinal = first_event;
    loop {
        let before = at;
        let Some(p) = next_frame(&bytes, &mut at) else {
            break;
        };
        let Ok(events) = format.events(p) else {
            at = before;
            break;
        };
        if b.len() >= BLOCK_BYTES {
            let done = std::mem::replace(&mut b, Builder::new(from + before as u64, ordinal));
            blocks.push(done.finish());
        }
        b.add_frame((at - before) as u64, &events);
        ordinal += events.len() as u64;
    }
    if !b.is_empty() {
        blocks.push(b.finish());
    }
    Ok((blocks, from + at as u64))
}

/// A segment's format and where its header frame ends, `None` if it has no whole header
/// (or is of a format this build does not read).
pub fn header_end(segment: &Path) -> Result<Option<(Format, u64)>, StoreError> {
    let mut f = File::open(segment).map_err(io(segment))?;
    let len = f.metadata().map_err(io(segment))?.len();
    let mut head = [0u8; 16];
    if f.read_exact(&mut head).is_err() {
        return Ok(None);
    }
    let Some(format) = Format::of(&head) else {
        return Ok(None);
    };
    let end = 16 + u64::from(u32::from_le_bytes([head[8], head[9], head[10], head[11]]));
    Ok((end <= len).then_some((format, end)))
}

/// A segment's whole index, as [`load`] found it.
#[derive(Debug)]
pub struct Loaded {
    /// Its blocks, in order: those of its index file that hold, then the rest, scanned.
    pub blocks: Vec<Block>,
    /// Its format.
    pub format: Format,
    /// Where its header ends (its first block starts).
    pub header_end: u64,
    /// Where its valid frames end (a torn tail follows, up to `len`).
    pub valid_end: u64,
    /// Its length on disk.
    pub len: u64,
    /// Whether its index file is missing, stale or torn, or covers only part of it.
    pub incomplete: bool,
}

/// The whole index of a segment: the entries of its index file that hold, then the blocks
/// of the rest of it, scanned. `None` if it has no whole header.
pub fn load(segment: &Path) -> Result<Option<Loaded>, StoreError> {
    let Some((format, start)) = header_end(segment)? else {
        return Ok(None);
    };
    let len = std::fs::metadata(segment).map_err(io(segment))?.len();
    let (mut blocks, stale) = read(segment, start, len)?;
    let covered = blocks.last().map_or(start, Block::end);
    let first_event = blocks.last().map_or(0, |b| b.first_event + b.events);
    let (tail, valid_end) = scan(segment, format, covered, first_event)?;
    let incomplete = stale || !tail.is_empty() || !path_of(segment).exists();
    blocks.extend(tail);
    Ok(Some(Loaded {
        blocks,
        format,
        header_end: start,
        valid_end,
        len,
        incomplete,
    }))
}

/// Write a segment's whole index anew (through a temporary file, renamed over the old).
pub fn rewrite(segment: &Path, blocks: &[Block]) -> Result<(), StoreError> {
    let path = path_of(segment);
    let tmp = path.with_extension("idx.tmp");
    let mut f = File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(IDX_MAGIC).map_err(io(&tmp))?;
    for b in blocks {
        append(&mut f, &tmp, b)?;
    }
    drop(f);
    std::fs::rename(&tmp, &path).map_err(io(&path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge_across_the_smallest_gaps() {
        let mut r = vec![(10, 12), (1, 3), (4, 5), (100, 100), (20, 30), (50, 50)];
        merge(&mut r, 16);
        assert_eq!(r, [(1, 5), (10, 12), (20, 30), (50, 50), (100, 100)]);
        merge(&mut r, 3);
        assert_eq!(r, [(1, 30), (50, 50), (100, 100)]);
        merge(&mut r, 1);
        assert_eq!(r, [(1, 100)]);
        let b = Block {
            ids: vec![(1, 5), (10, 12)],
            ..Block::default()
        };
        assert!(b.may_hold(1) && b.may_hold(5) && b.may_hold(11));
        assert!(!b.may_hold(0) && !b.may_hold(6) && !b.may_hold(13));
    }

    proptest::proptest! {
        /// Merged ranges, however many there were, cover every id of the input, are at most
        /// `max`, sorted and apart; and the largest gaps are kept.
        #[test]
        fn merged_ranges_cover_every_id(
            input in proptest::collection::vec((0u64..1 << 40, 0u64..64), 1..6000),
            max in 1usize..20,
        ) {
            let ranges: Vec<(u64, u64)> = input.iter().map(|&(s, n)| (s, s + n)).collect();
            let mut merged = ranges.clone();
            merge(&mut merged, max);
            proptest::prop_assert!(merged.len() <= max);
            proptest::prop_assert!(merged.windows(2).all(|w| w[0].1 + 1 < w[1].0));
            for &(s, e) in &ranges {
                proptest::prop_assert!(
                    merged.iter().any(|&(ms, me)| ms <= s && e <= me),
                    "({}, {}) not covered by {:?}", s, e, merged
                );
            }
        }
    }

    /// Thousands of scattered single ids (a window's parents) in two clusters far apart (ids
    /// of two runs): the gap between the clusters is kept, and each cluster stays within
    /// its own ids.
    #[test]
    fn many_ranges_keep_the_gaps_that_matter() {
        let base = 7u64 << 32;
        let mut r: Vec<(u64, u64)> = (0..5000u64)
            .map(|i| (base + i * 3, base + i * 3))
            .chain((0..5000u64).map(|i| (9 * base + i * 3, 9 * base + i * 3)))
            .collect();
        merge(&mut r, 16);
        assert!(r.len() <= 16 && r.len() >= 2, "{r:?}");
        assert_eq!(r.first().map(|x| x.0), Some(base));
        assert_eq!(r.last().map(|x| x.1), Some(9 * base + 4999 * 3));
        assert!(
            !r.iter().any(|&(s, e)| s <= 2 * base && 8 * base <= e),
            "the clusters' gap is kept: {r:?}"
        );
    }

    #[test]
    fn a_block_holds_exactly_the_ids_of_its_events() {
        use crate::provenance::{Event, EventKind, Runs};
        let event = |records| Event::new(EventKind::Route, 0, records);
        let mut b = Builder::new(0, 0);
        b.add_frame(
            10,
            &[
                // The same batch at three nodes, then the next batch, a part of it, ids out
                // of order and one far away.
                event(Runs::run(100, 50)),
                event(Runs::run(100, 50)),
                event(Runs::run(110, 10)),
                event(Runs::run(150, 50)),
                event(Runs::from_ids([7, 5, 6, 300])),
                event(Runs::run(120, 1)),
            ],
        );
        let block = b.finish();
        assert_eq!(block.ids, [(5, 7), (100, 199), (300, 300)]);
        assert_eq!(block.events, 6);
        for id in [5, 6, 7, 100, 150, 199, 300] {
            assert!(block.may_hold(id), "{id}");
        }
        for id in [4, 8, 99, 200, 299, 301] {
            assert!(!block.may_hold(id), "{id}");
        }
    }
}
