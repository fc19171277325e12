//! A batch sent to several edges at once (a fan-out), shared instead of copied.
//!
//! Copying every record for every extra edge cost the sensors flow a sixth of its CPU time: a
//! filter on the second branch got a copy of each record (three reference counts up, on the
//! producer's core) only to drop 98 % of them (three down, on its own core, on counts the
//! other branch's core was touching too). Now, when one of the consumers routes records by a
//! look (a filter or a route, see [`crate::processor::Transform::routes`]), each edge gets a
//! [`SharedView`] of one [`SharedBatch`]: that consumer looks at the records where they are
//! and copies the few it passes on; one that needs them ([`SharedView::into_batch`]) takes the
//! records themselves when it is the last to look (no copy at all), else copies them as the
//! fork did. When every consumer takes every record (sinks), the producer still makes the
//! copies, where the records are in cache: made by the consumers, on the other core, they cost
//! 8 % more CPU in a fan-out to four file sinks.
//!
//! Acknowledgement is unchanged: a copy holds its record's tokens as before; the records in
//! the shared batch are released when the last view is done with them, and a view dropped
//! unconsumed (its consumer failed, its queue was abandoned) marks them abandoned, as a
//! dropped copy did.

use std::sync::Arc;

use crate::ack::AckStatus;
use crate::provenance::Runs;
use crate::record::{Record, RecordId, finish_all};
use crate::runtime::edge::Batch;

/// The records of a fan-out, held until every edge's consumer is done with them.
pub struct SharedBatch {
    records: Vec<Record>,
    /// The records' [`Record::size`] summed once for every edge's byte count.
    size: usize,
}

impl Drop for SharedBatch {
    fn drop(&mut self) {
        // Every view was consumed or marked the records abandoned: their journey through
        // here ends (a copy taken by a consumer holds its own tokens).
        finish_all(std::mem::take(&mut self.records));
    }
}

impl SharedBatch {
    /// Share `records` between one view per entry of `bases`: a base numbers that view's
    /// copies from it (a fresh block per view, as provenance's FORK numbers them); `None`
    /// keeps the records' ids.
    /// A record not parsed yet gets the cell its copies share (see [`Record::fork`]).
    pub fn views(mut records: Vec<Record>, bases: Vec<Option<u64>>) -> Vec<SharedView> {
        let mut size = 0;
        for r in &mut records {
            r.prepare_fork();
            size += r.size();
        }
        let batch = Arc::new(SharedBatch { records, size });
        bases
            .into_iter()
            .map(|base| SharedView {
                batch: Some(batch.clone()),
                base,
            })
            .collect()
    }
}

/// One edge's part of a [`SharedBatch`]: the records, seen with this edge's ids.
pub struct SharedView {
    /// `None` once consumed.
    batch: Option<Arc<SharedBatch>>,
    /// The id of this edge's copy of the first record, the others following; `None`: the
    /// copies keep the records' ids.
    base: Option<u64>,
}

impl std::fmt::Debug for SharedView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedView")
            .field("records", &self.len())
            .field("base", &self.base)
            .finish()
    }
}

impl Drop for SharedView {
    fn drop(&mut self) {
        // Dropped without being consumed (the consumer failed, or its queue was dropped): as
        // a copy dropped unreleased, it holds up the records' batches for good.
        if let Some(b) = &self.batch {
            for r in &b.records {
                r.acks().mark(AckStatus::Abandoned);
            }
        }
    }
}

impl SharedView {
    fn shared(&self) -> &SharedBatch {
        // Only consuming methods (taking `self`) empty it, so it is always there to look at.
        self.batch
            .as_deref()
            .expect("a view is not looked at once consumed")
    }

    /// The records (with the producer's ids: this edge's are [`SharedView::id`]).
    pub fn records(&self) -> &[Record] {
        &self.shared().records
    }

    /// How many records.
    pub fn len(&self) -> usize {
        self.records().len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.records().is_empty()
    }

    /// The records' size in bytes, for the edge's byte count.
    pub fn size(&self) -> usize {
        self.shared().size
    }

    /// The id of this edge's copy of the `i`th record.
    pub fn id(&self, i: usize) -> RecordId {
        match self.base {
            Some(base) => RecordId(base.wrapping_add(i as u64)),
            None => self.records()[i].id(),
        }
    }

    /// This edge's ids, as runs.
    pub fn ids(&self) -> Runs {
        match self.base {
            Some(base) => Runs::run(base, u32::try_from(self.len()).unwrap_or(u32::MAX)),
            None => Runs::of(self.records()),
        }
    }

    /// This edge's copy of the `i`th record (shares its content, index and parse).
    pub fn copy(&self, i: usize) -> Record {
        let mut r = self.records()[i].clone();
        if self.base.is_some() {
            r.set_id(self.id(i));
        }
        r
    }

    /// Whether no other edge looks at these records any more: taking them
    /// ([`SharedView::into_batch`]) copies nothing.
    pub fn is_only(&self) -> bool {
        self.batch
            .as_ref()
            .is_some_and(|b| Arc::strong_count(b) == 1)
    }

    /// This edge's records to own: the shared ones themselves when no other edge still looks
    /// at them (no copy), else copies.
    pub fn into_batch(mut self) -> Batch {
        let Some(shared) = self.batch.take() else {
            return Batch::new();
        };
        let mut records = match Arc::try_unwrap(shared) {
            Ok(mut only) => std::mem::take(&mut only.records),
            Err(shared) => {
                let copies = shared.records.clone();
                drop(shared);
                copies
            }
        };
        if let Some(base) = self.base {
            renumber(&mut records, base);
        }
        records
    }

    /// Done looking: this edge's journey of these records ended well (the copies taken hold
    /// their own tokens).
    pub fn finish(mut self) {
        drop(self.batch.take());
    }
}

/// Number `records` from `base` on (one edge's copies in a FORK).
pub fn renumber(records: &mut [Record], base: u64) {
    for (i, r) in records.iter_mut().enumerate() {
        r.set_id(RecordId(base.wrapping_add(i as u64)));
    }
}

/// What travels on an edge: a batch of its own, or its view of a batch shared by several.
#[derive(Debug)]
pub enum Payload {
    /// Records this edge alone carries.
    Owned(Batch),
    /// A fan-out's records, shared with other edges.
    Shared(SharedView),
}

impl From<Batch> for Payload {
    fn from(batch: Batch) -> Self {
        Payload::Owned(batch)
    }
}

impl Payload {
    /// How many records.
    pub fn len(&self) -> usize {
        match self {
            Payload::Owned(b) => b.len(),
            Payload::Shared(v) => v.len(),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The records' size in bytes.
    pub fn size(&self) -> usize {
        match self {
            Payload::Owned(b) => b.iter().map(Record::size).sum(),
            Payload::Shared(v) => v.size(),
        }
    }

    /// The ids as this edge's consumer sees them.
    pub fn ids(&self) -> Runs {
        match self {
            Payload::Owned(b) => Runs::of(b),
            Payload::Shared(v) => v.ids(),
        }
    }

    /// The records to own (see [`SharedView::into_batch`]).
    pub fn into_batch(self) -> Batch {
        match self {
            Payload::Owned(b) => b,
            Payload::Shared(v) => v.into_batch(),
        }
    }

    /// Shed on purpose: finished, so the source commits past them.
    pub fn shed(self) {
        match self {
            Payload::Owned(b) => finish_all(b),
            Payload::Shared(v) => v.finish(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ack::{AckTracker, Acks};

    fn tracked(tracker: &mut AckTracker, n: usize) -> Vec<Record> {
        let token = tracker.token(0);
        (0..n)
            .map(|i| {
                Record::from_bytes(format!(r#"{{"i":{i}}}"#)).with_acks(Acks::one(token.clone()))
            })
            .collect()
    }

    #[test]
    fn the_last_view_takes_the_records_and_the_batch_finishes_with_the_last_copy() {
        let mut tracker = AckTracker::new();
        let records = tracked(&mut tracker, 3);
        let ids: Vec<RecordId> = records.iter().map(Record::id).collect();
        let mut views = SharedBatch::views(records, vec![None, None]).into_iter();
        let (first, second) = (views.next().expect("one"), views.next().expect("two"));
        // The first looks and passes one copy on.
        let kept = first.copy(1);
        assert!(!second.is_only());
        first.finish();
        assert!(second.is_only());
        assert_eq!(kept.id(), ids[1]);
        // The second is the last to look: it owns the records themselves.
        let owned = second.into_batch();
        assert_eq!(owned.iter().map(Record::id).collect::<Vec<_>>(), ids);
        finish_all(owned);
        assert!(
            tracker.try_next().is_none(),
            "the copy still holds the batch"
        );
        kept.finish();
        let f = tracker.try_next().expect("finished");
        assert_eq!(f.status, AckStatus::Delivered);
    }

    #[test]
    fn views_number_their_copies_from_their_base() {
        let mut tracker = AckTracker::new();
        let mut views =
            SharedBatch::views(tracked(&mut tracker, 2), vec![Some(100), Some(200)]).into_iter();
        let (first, second) = (views.next().expect("one"), views.next().expect("two"));
        assert_eq!(first.id(1), RecordId(101));
        let copy = first.copy(1);
        assert_eq!(copy.id(), RecordId(101));
        copy.finish();
        assert_eq!(first.ids().iter().collect::<Vec<_>>(), vec![100, 101]);
        // Not the last: copies, numbered as this edge's.
        let copies = second.into_batch();
        assert_eq!(
            copies.iter().map(|r| r.id().0).collect::<Vec<_>>(),
            vec![200, 201]
        );
        finish_all(copies);
        first.finish();
        assert_eq!(
            tracker.try_next().expect("finished").status,
            AckStatus::Delivered
        );
    }

    #[test]
    fn a_view_dropped_unconsumed_abandons_the_records() {
        let mut tracker = AckTracker::new();
        let mut views = SharedBatch::views(tracked(&mut tracker, 2), vec![None, None]).into_iter();
        let (first, second) = (views.next().expect("one"), views.next().expect("two"));
        drop(first);
        finish_all(second.into_batch());
        assert_eq!(
            tracker.try_next().expect("finished").status,
            AckStatus::Abandoned
        );
    }
}
