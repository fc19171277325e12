//! End-to-end acknowledgement.
//!
//! A source hands out one [`AckToken`] per batch it emits; every record of that batch carries a
//! clone of it in its [`Acks`] (an `Arc` increment, so fan-out copies are cheap). When the last
//! holder of the token is gone, the token resolves and the source receives the batch's
//! sequence number with the worst [`AckStatus`] any of its records reached. Only then may the
//! source commit (advance a file offset, send a PUBACK, commit a Kafka offset), and only if
//! the batch is [`Finished::committable`] and every batch before it was too.
//!
//! **Finishing is explicit.** Every legitimate end of a record's journey releases its `Acks`:
//! a sink wrote it ([`crate::record::Record::finish`]), a transform dropped it on purpose
//! ([`crate::processor::Output::drop_record`]), it failed and was reported (the runtime marks
//! it `Failed`, then releases it), it left on a port without edges, a `drop_newest` edge shed
//! it, or a window moved its tokens into the aggregate it emitted or released them once a
//! checkpoint holds the record. `Acks` dropped any other way (a task that panicked or returned
//! an error while holding records, in its state or in hand; a transform that lost a record; a
//! queue whose consumer is gone) mark their batches `Abandoned`: the source commits neither
//! them nor anything after them, so they are read again after a restart.
//!
//! A process crash resolves nothing, so whatever was not committed is read again on restart:
//! at-least-once delivery.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use tokio::sync::mpsc;

/// How a record's journey ended. Ordered: a batch reports the worst status of its records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum AckStatus {
    /// Written by a sink, or dropped on purpose (filtered out, or on a port with no edge).
    Delivered = 0,
    /// Could not be processed and was reported (sent to a `failure` port with no edge, counted
    /// and logged). The source may commit it: it will not get better by replaying.
    Failed = 1,
    /// Never reached the end of the flow: its holder stopped without finishing it (a processor
    /// that panicked or failed with it in hand or in its state, its queued input, a sink that
    /// gave up writing it at a stop, a transform that lost it). The source must not commit it,
    /// nor anything after it, so that it is read again after a restart.
    Abandoned = 2,
}

impl AckStatus {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => AckStatus::Delivered,
            1 => AckStatus::Failed,
            _ => AckStatus::Abandoned,
        }
    }
}

/// A finished batch, as the source sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Finished {
    /// The sequence number the source gave the batch.
    pub seq: u64,
    /// The worst status any record of the batch reached.
    pub status: AckStatus,
}

impl Finished {
    /// Whether the source may commit the batch: not when a record of it was abandoned.
    pub fn committable(&self) -> bool {
        self.status != AckStatus::Abandoned
    }
}

struct Inner {
    seq: u64,
    status: AtomicU8,
    tx: mpsc::UnboundedSender<Finished>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let status = AckStatus::from_u8(self.status.load(Ordering::Acquire));
        // The source may already be gone (forced shutdown); then nobody needs to know.
        let _ = self.tx.send(Finished {
            seq: self.seq,
            status,
        });
    }
}

/// One batch's acknowledgement token. Clone it into every record of the batch.
#[derive(Clone)]
pub struct AckToken(Arc<Inner>);

impl AckToken {
    /// Raise the batch's status to at least `status`.
    pub fn mark(&self, status: AckStatus) {
        self.0.status.fetch_max(status as u8, Ordering::AcqRel);
    }

    /// Whether both are the same batch's token.
    pub fn ptr_eq(&self, other: &AckToken) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl std::fmt::Debug for AckToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AckToken(seq={})", self.0.seq)
    }
}

/// The acknowledgement tokens a record holds: none (not tracked), one (the usual case), two
/// (a window of two records from two batches, the usual window when keys are many: kept
/// inline, no list allocated), or more (an aggregate holds the tokens of every batch that contributed to it; duplicates are
/// merged, so a window over a million records from 100 batches holds 100 tokens).
///
/// Finishing is explicit: whoever ends a record's journey calls [`Acks::release`] (through
/// [`crate::record::Record::finish`], [`crate::processor::Output::drop_record`], a sink's
/// write, the runtime's failure path). `Acks` dropped without being released (a task that
/// panicked or returned an error with records in hand, a transform that lost a record) mark
/// their batches [`AckStatus::Abandoned`], so the source never commits them.
#[derive(Clone, Default)]
pub struct Acks(Set);

#[derive(Clone, Default)]
enum Set {
    #[default]
    None,
    One(AckToken),
    Two([AckToken; 2]),
    Many(Vec<AckToken>),
}

impl Drop for Acks {
    fn drop(&mut self) {
        // Not released: whatever held these records stopped without finishing them.
        self.mark(AckStatus::Abandoned);
    }
}

impl std::fmt::Debug for Acks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.tokens()).finish()
    }
}

impl From<AckToken> for Acks {
    fn from(token: AckToken) -> Self {
        Acks::one(token)
    }
}

impl Acks {
    /// No token: the record is not tracked (made by a processor out of nothing, or a test's).
    pub const fn none() -> Self {
        Acks(Set::None)
    }

    /// One batch's token.
    pub fn one(token: AckToken) -> Self {
        Acks(Set::One(token))
    }

    /// Done with these batches: their status stays what was marked (`Delivered` unless
    /// something marked worse). Call it exactly when a record's journey legitimately ends.
    pub fn release(mut self) {
        // The tokens drop here (their batches resolve once no other holder is left); `self`
        // is left empty, so its own drop marks nothing.
        drop(std::mem::take(&mut self.0));
    }

    /// Mark with `status`, then release.
    pub fn finish(self, status: AckStatus) {
        self.mark(status);
        self.release();
    }

    /// Raise the status of every batch this record belongs to.
    pub fn mark(&self, status: AckStatus) {
        match &self.0 {
            Set::None => {}
            Set::One(t) => t.mark(status),
            Set::Two(ts) => ts.iter().for_each(|t| t.mark(status)),
            Set::Many(ts) => ts.iter().for_each(|t| t.mark(status)),
        }
    }

    /// Take over `other`'s tokens (used when records are joined into one).
    pub fn merge(&mut self, mut other: Acks) {
        // Into none (a window's new output record): the tokens move as they are, deduplicated
        // already, with their list.
        if let Set::None = self.0 {
            self.0 = std::mem::take(&mut other.0);
            return;
        }
        // One token is the common case (a record joining a window): no list is made for it.
        match std::mem::take(&mut other.0) {
            Set::None => {}
            Set::One(t) => self.push(t, usize::MAX),
            Set::Two(ts) => {
                for token in ts {
                    self.push(token, usize::MAX);
                }
            }
            Set::Many(ts) => {
                for token in ts {
                    self.push(token, usize::MAX);
                }
            }
        }
    }

    /// Add `token` unless one of the last `window` tokens is the same batch's (a rare
    /// duplicate only costs a reference; checking the last few keeps long lists cheap).
    fn push(&mut self, token: AckToken, window: usize) {
        // Moved, not cloned: a token's count is shared with the threads of every other
        // record of its batch, so each needless count up and down is a cache line passed
        // between cores.
        self.0 = match std::mem::take(&mut self.0) {
            Set::None => Set::One(token),
            Set::One(existing) if existing.ptr_eq(&token) => Set::One(existing),
            Set::One(existing) => Set::Two([existing, token]),
            Set::Two(ts) if ts.iter().any(|t| t.ptr_eq(&token)) => Set::Two(ts),
            Set::Two([a, b]) => {
                // Room for a few more: a window's slot gathers records of several batches.
                let mut ts = Vec::with_capacity(8);
                ts.extend([a, b, token]);
                Set::Many(ts)
            }
            Set::Many(mut ts) => {
                // Consecutive records mostly come from the same batch: check the last first.
                if !ts.iter().rev().take(window).any(|t| t.ptr_eq(&token)) {
                    ts.push(token);
                }
                Set::Many(ts)
            }
        };
    }

    /// Add copies of `other`'s tokens, checking only the last few held for duplicates (for
    /// long-lived collections that grow by many small merges, like a window's emitted
    /// batches).
    pub fn merge_recent(&mut self, other: &Acks) {
        const RECENT: usize = 16;
        for t in other.tokens() {
            // Looked for before it is cloned: a token held already (the common case, windows
            // that fire together share their batches) costs no count up and down.
            if !self.tokens().iter().rev().take(RECENT).any(|h| h.ptr_eq(t)) {
                // Looked for above: not again.
                self.push(t.clone(), 0);
            }
        }
    }

    /// The tokens held.
    pub fn tokens(&self) -> &[AckToken] {
        match &self.0 {
            Set::None => &[],
            Set::One(t) => std::slice::from_ref(t),
            Set::Two(ts) => ts,
            Set::Many(ts) => ts,
        }
    }

    /// How many batch tokens are held.
    pub fn len(&self) -> usize {
        self.tokens().len()
    }

    /// True when no token is held.
    pub fn is_empty(&self) -> bool {
        matches!(self.0, Set::None)
    }
}

/// A source's acknowledgements, counted by its [`AckTracker`] for the node's metrics: batches
/// handed out and not finished yet, and batches finished, by status.
#[derive(Debug, Default)]
pub struct AckCounters {
    pending: AtomicU64,
    delivered: AtomicU64,
    failed: AtomicU64,
    abandoned: AtomicU64,
}

/// A snapshot of [`AckCounters`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AckSnapshot {
    /// Batches handed out and not finished yet.
    pub pending: u64,
    /// Batches finished `Delivered` (committable).
    pub delivered: u64,
    /// Batches finished `Failed` (committable: replaying would not help).
    pub failed: u64,
    /// Batches finished `Abandoned` (not committed: read again on the next run).
    pub abandoned: u64,
}

impl AckCounters {
    /// Read every counter.
    pub fn snapshot(&self) -> AckSnapshot {
        AckSnapshot {
            pending: self.pending.load(Ordering::Relaxed),
            delivered: self.delivered.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            abandoned: self.abandoned.load(Ordering::Relaxed),
        }
    }
}

/// The source's side: makes tokens and receives finished batches.
pub struct AckTracker {
    tx: mpsc::UnboundedSender<Finished>,
    rx: mpsc::UnboundedReceiver<Finished>,
    outstanding: u64,
    /// The source's name, for the warning about abandoned batches (`None`: no warning).
    node: Option<Arc<str>>,
    abandoned: u64,
    counters: Option<Arc<AckCounters>>,
}

impl Default for AckTracker {
    fn default() -> Self {
        Self::new()
    }
}

impl AckTracker {
    /// A tracker with nothing outstanding, that reports nothing itself (for trackers inside a
    /// processor, like a window's for the windows it emitted).
    pub fn new() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Self {
            tx,
            rx,
            outstanding: 0,
            node: None,
            abandoned: 0,
            counters: None,
        }
    }

    /// Also count into `counters` (a source's node metrics:
    /// [`crate::runtime::metrics::NodeMetrics::acks`]). Several trackers may share them.
    pub fn counting(mut self, counters: Arc<AckCounters>) -> Self {
        self.counters = Some(counters);
        self
    }

    /// A source's tracker: the first abandoned batch it sees is logged (once), naming `node`.
    pub fn named(node: impl Into<Arc<str>>) -> Self {
        Self {
            node: Some(node.into()),
            ..Self::new()
        }
    }

    /// A token for the batch with sequence number `seq`.
    pub fn token(&mut self, seq: u64) -> AckToken {
        self.outstanding += 1;
        if let Some(c) = &self.counters {
            c.pending.fetch_add(1, Ordering::Relaxed);
        }
        AckToken(Arc::new(Inner {
            seq,
            status: AtomicU8::new(AckStatus::Delivered as u8),
            tx: self.tx.clone(),
        }))
    }

    /// Batches handed out and not yet finished.
    pub fn outstanding(&self) -> u64 {
        self.outstanding
    }

    /// Batches that finished abandoned so far.
    pub fn abandoned(&self) -> u64 {
        self.abandoned
    }

    /// The next finished batch; `None` when nothing is outstanding.
    pub async fn next(&mut self) -> Option<Finished> {
        if self.outstanding == 0 {
            return None;
        }
        let f = self.rx.recv().await?;
        Some(self.seen(f))
    }

    /// A finished batch if one is ready now.
    pub fn try_next(&mut self) -> Option<Finished> {
        let f = self.rx.try_recv().ok()?;
        Some(self.seen(f))
    }

    fn seen(&mut self, f: Finished) -> Finished {
        self.outstanding -= 1;
        if let Some(c) = &self.counters {
            c.pending.fetch_sub(1, Ordering::Relaxed);
            match f.status {
                AckStatus::Delivered => &c.delivered,
                AckStatus::Failed => &c.failed,
                AckStatus::Abandoned => &c.abandoned,
            }
            .fetch_add(1, Ordering::Relaxed);
        }
        if f.status == AckStatus::Abandoned {
            self.abandoned += 1;
            if self.abandoned == 1
                && let Some(node) = &self.node
            {
                tracing::warn!(
                    node = &**node,
                    batch = f.seq,
                    "a batch was abandoned downstream (a processor stopped or lost records \
                     before finishing them): this source commits neither it nor anything \
                     after it, so they are read again on the next run"
                );
            }
        }
        f
    }
}

/// Commits in order: batches may finish out of order (two branches, two speeds), but a source
/// may only commit a position once everything before it finished too.
#[derive(Debug, Default)]
pub struct InOrderCommit<P> {
    next_seq: u64,
    done: std::collections::BTreeMap<u64, P>,
    committed: Option<P>,
}

impl<P: Clone> InOrderCommit<P> {
    /// Nothing committed; the first batch has sequence number 0.
    pub fn new() -> Self {
        Self {
            next_seq: 0,
            done: Default::default(),
            committed: None,
        }
    }

    /// Batch `seq`, which ends at `position`, has finished. Returns the new committed position
    /// if it advanced.
    pub fn finish(&mut self, seq: u64, position: P) -> Option<P> {
        self.done.insert(seq, position);
        let mut advanced = None;
        while let Some(p) = self.done.remove(&self.next_seq) {
            self.next_seq += 1;
            advanced = Some(p);
        }
        if let Some(p) = &advanced {
            self.committed = Some(p.clone());
        }
        advanced
    }

    /// The committed position, if any batch was committed.
    pub fn committed(&self) -> Option<&P> {
        self.committed.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_batch_resolves_when_its_last_holder_released_it() {
        let mut tracker = AckTracker::new();
        let token = tracker.token(7);
        let a = Acks::one(token.clone());
        let b = Acks::one(token);
        a.release();
        assert!(
            tracker.try_next().is_none(),
            "one record still holds the batch"
        );
        b.finish(AckStatus::Failed);
        let f = tracker.next().await.expect("finished");
        assert_eq!(f.seq, 7);
        assert_eq!(f.status, AckStatus::Failed);
        assert!(f.committable());
        assert_eq!(tracker.outstanding(), 0);
        assert!(tracker.next().await.is_none());
    }

    /// Finishing is explicit: a holder that goes away without releasing (a panic, an error
    /// return, a lost record) abandons its batches, whatever the other holders did.
    #[tokio::test]
    async fn acks_dropped_without_release_abandon_their_batches() {
        let mut tracker = AckTracker::named("src");
        let t0 = tracker.token(0);
        let t1 = tracker.token(1);
        let delivered = Acks::one(t0.clone());
        let mut joined = Acks::one(t0);
        joined.merge(Acks::one(t1.clone()));
        let lost = Acks::one(t1);
        delivered.release();
        joined.release();
        drop(lost);
        let mut seen = [
            tracker.next().await.expect("one"),
            tracker.next().await.expect("two"),
        ];
        seen.sort_by_key(|f| f.seq);
        assert_eq!(seen[0].status, AckStatus::Delivered);
        assert_eq!(seen[1].status, AckStatus::Abandoned);
        assert!(!seen[1].committable());
        assert_eq!(tracker.abandoned(), 1);
        // An empty holder has nothing to abandon.
        drop(Acks::none());
        drop(Acks::default());
    }

    #[test]
    fn merge_keeps_one_token_per_batch() {
        let mut tracker = AckTracker::new();
        let t1 = tracker.token(1);
        let t2 = tracker.token(2);
        let mut acks = Acks::none();
        for t in [&t1, &t1, &t2, &t1, &t2] {
            acks.merge(Acks::one(t.clone()));
        }
        assert_eq!(acks.len(), 2);
        let mut recent = Acks::none();
        recent.merge_recent(&acks);
        recent.merge_recent(&acks);
        assert_eq!(recent.len(), 2);
        recent.release();
        acks.release();
    }

    /// Through every size a set takes (one, two inline, a list): duplicates merge at each, a
    /// mark reaches every batch, and each batch resolves once.
    #[tokio::test]
    async fn sets_of_one_two_and_more_hold_each_batch_once() {
        let mut tracker = AckTracker::new();
        let t: Vec<AckToken> = (0..4).map(|seq| tracker.token(seq)).collect();
        let mut acks = Acks::none();
        let seqs = |acks: &Acks| -> Vec<u64> {
            let mut s: Vec<u64> = acks.tokens().iter().map(|t| t.0.seq).collect();
            s.sort_unstable();
            s
        };
        acks.merge(Acks::one(t[1].clone()));
        acks.merge(Acks::one(t[1].clone()));
        assert_eq!(seqs(&acks), [1]);
        acks.merge(Acks::one(t[0].clone()));
        acks.merge(Acks::one(t[1].clone()));
        acks.merge(Acks::one(t[0].clone()));
        assert_eq!(seqs(&acks), [0, 1], "two batches, held inline");
        // A set of two merged into another set of two.
        let mut other = Acks::one(t[2].clone());
        other.merge(Acks::one(t[0].clone()));
        acks.merge(other);
        assert_eq!(seqs(&acks), [0, 1, 2]);
        acks.merge(Acks::one(t[3].clone()));
        acks.merge(Acks::one(t[2].clone()));
        assert_eq!(seqs(&acks), [0, 1, 2, 3]);
        let mut two = Acks::one(t[3].clone());
        two.merge(Acks::one(t[2].clone()));
        drop(t);
        acks.finish(AckStatus::Failed);
        // Batches 2 and 3 are still held by `two`, which is dropped without release.
        drop(two);
        let mut seen = Vec::new();
        for _ in 0..4 {
            let f = tracker.next().await.expect("a batch");
            seen.push((f.seq, f.status));
        }
        seen.sort_unstable_by_key(|(seq, _)| *seq);
        assert_eq!(
            seen,
            [
                (0, AckStatus::Failed),
                (1, AckStatus::Failed),
                (2, AckStatus::Abandoned),
                (3, AckStatus::Abandoned)
            ]
        );
        assert_eq!(tracker.outstanding(), 0);
    }

    #[test]
    fn in_order_commit_waits_for_gaps() {
        let mut c = InOrderCommit::new();
        assert_eq!(c.finish(1, 20), None);
        assert_eq!(c.finish(2, 30), None);
        assert_eq!(c.finish(0, 10), Some(30));
        assert_eq!(c.committed(), Some(&30));
        assert_eq!(c.finish(3, 40), Some(40));
    }
}
