//! End-to-end acknowledgement.
//!
//! A source hands out one [`AckToken`] per batch it emits; every record of that batch carries a
//! clone of it (an `Arc` increment, so fan-out copies are cheap). When the last record holding the
//! token is gone (a sink wrote it, a filter dropped it on purpose, a failure was reported, a
//! window emitted the aggregate that includes it), the token resolves and the source receives the
//! batch's sequence number with the worst [`AckStatus`] any of its records reached. Only then may
//! the source commit (advance a file offset, send a PUBACK, commit a Kafka offset).
//!
//! A process crash resolves nothing, so whatever was not committed is read again on restart:
//! at-least-once delivery.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use tokio::sync::mpsc;

/// How a record's journey ended. Ordered: a batch reports the worst status of its records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum AckStatus {
    /// Written by a sink, or dropped on purpose (filtered out).
    Delivered = 0,
    /// Could not be processed and was reported (sent to a `failure` port with no edge, counted
    /// and logged). The source may commit it: it will not get better by replaying.
    Failed = 1,
    /// Never reached the end of the flow: dropped unprocessed because the part of the flow
    /// that should have taken it stopped (a failed processor's queued input). The source must
    /// not commit it, nor anything after it, so that it is read again after a restart.
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

/// The acknowledgement tokens a record holds: none (not tracked), one (the usual case), or
/// several (an aggregate holds the tokens of every batch that contributed to it; duplicates are
/// merged, so a window over a million records from 100 batches holds 100 tokens).
#[derive(Clone, Debug, Default)]
pub enum Acks {
    /// Not tracked (for example records made by a processor out of nothing).
    #[default]
    None,
    /// One batch.
    One(AckToken),
    /// Several batches, without duplicates.
    Many(Vec<AckToken>),
}

impl Acks {
    /// Raise the status of every batch this record belongs to.
    pub fn mark(&self, status: AckStatus) {
        match self {
            Acks::None => {}
            Acks::One(t) => t.mark(status),
            Acks::Many(ts) => ts.iter().for_each(|t| t.mark(status)),
        }
    }

    /// Take over `other`'s tokens (used when records are joined into one).
    pub fn merge(&mut self, other: Acks) {
        let incoming: Vec<AckToken> = match other {
            Acks::None => return,
            Acks::One(t) => vec![t],
            Acks::Many(ts) => ts,
        };
        for token in incoming {
            match self {
                Acks::None => *self = Acks::One(token),
                Acks::One(existing) => {
                    if !existing.ptr_eq(&token) {
                        let first = existing.clone();
                        *self = Acks::Many(vec![first, token]);
                    }
                }
                Acks::Many(ts) => {
                    // Consecutive records mostly come from the same batch: check the last first.
                    if !ts.iter().rev().any(|t| t.ptr_eq(&token)) {
                        ts.push(token);
                    }
                }
            }
        }
    }

    /// The tokens held.
    pub fn tokens(&self) -> &[AckToken] {
        match self {
            Acks::None => &[],
            Acks::One(t) => std::slice::from_ref(t),
            Acks::Many(ts) => ts,
        }
    }

    /// How many batch tokens are held.
    pub fn len(&self) -> usize {
        match self {
            Acks::None => 0,
            Acks::One(_) => 1,
            Acks::Many(ts) => ts.len(),
        }
    }

    /// True when no token is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The source's side: makes tokens and receives finished batches.
pub struct AckTracker {
    tx: mpsc::UnboundedSender<Finished>,
    rx: mpsc::UnboundedReceiver<Finished>,
    outstanding: u64,
}

impl Default for AckTracker {
    fn default() -> Self {
        Self::new()
    }
}

impl AckTracker {
    /// A tracker with nothing outstanding.
    pub fn new() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Self {
            tx,
            rx,
            outstanding: 0,
        }
    }

    /// A token for the batch with sequence number `seq`.
    pub fn token(&mut self, seq: u64) -> AckToken {
        self.outstanding += 1;
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

    /// The next finished batch; `None` when nothing is outstanding.
    pub async fn next(&mut self) -> Option<Finished> {
        if self.outstanding == 0 {
            return None;
        }
        let f = self.rx.recv().await?;
        self.outstanding -= 1;
        Some(f)
    }

    /// A finished batch if one is ready now.
    pub fn try_next(&mut self) -> Option<Finished> {
        let f = self.rx.try_recv().ok()?;
        self.outstanding -= 1;
        Some(f)
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
    async fn a_batch_resolves_when_its_last_record_is_gone() {
        let mut tracker = AckTracker::new();
        let token = tracker.token(7);
        let a = Acks::One(token.clone());
        let b = Acks::One(token);
        drop(a);
        assert!(
            tracker.try_next().is_none(),
            "one record still holds the batch"
        );
        b.mark(AckStatus::Failed);
        drop(b);
        let f = tracker.next().await.expect("finished");
        assert_eq!(f.seq, 7);
        assert_eq!(f.status, AckStatus::Failed);
        assert_eq!(tracker.outstanding(), 0);
        assert!(tracker.next().await.is_none());
    }

    #[test]
    fn merge_keeps_one_token_per_batch() {
        let mut tracker = AckTracker::new();
        let t1 = tracker.token(1);
        let t2 = tracker.token(2);
        let mut acks = Acks::None;
        for t in [&t1, &t1, &t2, &t1, &t2] {
            acks.merge(Acks::One(t.clone()));
        }
        assert_eq!(acks.len(), 2);
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
