//! Taps: copies of the records leaving a port, for whoever watches (`GET /api/v1/tap`,
//! `flow tap`).
//!
//! A tap costs nothing while closed: the emitter checks one atomic per batch. Open, it copies
//! each batch without its acknowledgement tokens ([`Record::untracked_copy`]), so a tap never
//! holds up a source's commits, and offers the copy to a bounded channel without waiting: a
//! watcher that reads too slowly loses copies, and is told how many at its next batch. The
//! flow is never slowed beyond the copy.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use parking_lot::Mutex;
use tokio::sync::mpsc;

use crate::record::Record;

/// How many records a watcher may be behind before it loses copies (a batch is never split:
/// one larger than this still goes to a watcher that is not behind at all).
pub const TAP_RECORDS: usize = 4096;

/// How many batches a watcher may be behind, however small they are (a source sending one
/// record per batch): the channel's bound.
const TAP_BATCHES: usize = 1024;

/// One port's tap.
#[derive(Debug, Default)]
pub struct TapPoint {
    open: AtomicUsize,
    watchers: Mutex<Vec<Watcher>>,
    next_id: AtomicU64,
    /// The port's node has ended: nothing more will leave it.
    closed: AtomicBool,
}

#[derive(Debug)]
struct Watcher {
    id: u64,
    tx: mpsc::Sender<Vec<Record>>,
    lost: Arc<AtomicU64>,
    /// Records sent and not yet taken by the watcher.
    queued: Arc<AtomicUsize>,
}

impl TapPoint {
    /// Whether anyone watches (one relaxed load: the emitter asks it for every batch).
    #[inline]
    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Relaxed) != 0
    }

    /// Offer copies of `batch` to every watcher that has room; count them lost for the others.
    pub fn offer(&self, batch: &[Record]) {
        let watchers = self.watchers.lock();
        for w in watchers.iter() {
            let queued = w.queued.load(Ordering::Relaxed);
            let behind = queued > 0 && queued + batch.len() > TAP_RECORDS;
            match w.tx.try_reserve() {
                Ok(permit) if !behind => {
                    w.queued.fetch_add(batch.len(), Ordering::Relaxed);
                    permit.send(batch.iter().map(Record::untracked_copy).collect());
                }
                Ok(_) | Err(mpsc::error::TrySendError::Full(())) => {
                    w.lost.fetch_add(batch.len() as u64, Ordering::Relaxed);
                }
                Err(mpsc::error::TrySendError::Closed(())) => {}
            }
        }
    }

    /// The port's node has ended: end every tap (after what they hold).
    pub fn close(&self) {
        let mut watchers = self.watchers.lock();
        self.closed.store(true, Ordering::Release);
        watchers.clear();
    }

    /// Start watching.
    pub fn watch(self: &Arc<Self>) -> Tap {
        let (tx, rx) = mpsc::channel(TAP_BATCHES);
        let lost = Arc::new(AtomicU64::new(0));
        let queued = Arc::new(AtomicUsize::new(0));
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        {
            let mut watchers = self.watchers.lock();
            // Once closed, the sender goes at once: the tap ends empty.
            if !self.closed.load(Ordering::Acquire) {
                watchers.push(Watcher {
                    id,
                    tx,
                    lost: lost.clone(),
                    queued: queued.clone(),
                });
            }
        }
        self.open.fetch_add(1, Ordering::Relaxed);
        Tap {
            rx,
            lost,
            queued,
            point: self.clone(),
            id,
        }
    }
}

/// An open tap: copies of the records leaving one port. Dropping it closes it.
#[derive(Debug)]
pub struct Tap {
    rx: mpsc::Receiver<Vec<Record>>,
    lost: Arc<AtomicU64>,
    queued: Arc<AtomicUsize>,
    point: Arc<TapPoint>,
    id: u64,
}

/// What a tap delivers.
#[derive(Debug)]
pub struct Tapped {
    /// Copies lost since the last delivery, because the watcher read too slowly.
    pub lost: u64,
    /// The copies (no acknowledgement tokens).
    pub records: Vec<Record>,
}

impl Tap {
    /// The next batch of copies; `None` once the port's node has ended.
    pub async fn next(&mut self) -> Option<Tapped> {
        let records = self.rx.recv().await?;
        self.queued.fetch_sub(records.len(), Ordering::Relaxed);
        Some(Tapped {
            lost: self.lost.swap(0, Ordering::Relaxed),
            records,
        })
    }

    /// Copies lost and not reported yet (taking them resets the count).
    pub fn take_lost(&self) -> u64 {
        self.lost.swap(0, Ordering::Relaxed)
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.point.watchers.lock().retain(|w| w.id != self.id);
        self.point.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Opening a tap failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TapError {
    /// No such node.
    #[error("no processor `{0}` in this flow")]
    UnknownNode(String),
    /// The node has no such port.
    #[error("`{node}` has no port `{port}`; its ports are: {ports}")]
    UnknownPort {
        /// The node.
        node: String,
        /// The port asked for.
        port: String,
        /// The ports it has.
        ports: String,
    },
    /// The node has no output port but `failure` and none was named.
    #[error("`{0}` has no output but `failure`: name it (`{0}.failure`)")]
    NoDefaultPort(String),
}

/// A node's ports (index = port id): each port's name and tap point.
pub(crate) type PortTaps = Vec<(String, Arc<TapPoint>)>;

/// Every port's tap point of a running flow.
#[derive(Clone, Debug, Default)]
pub struct Taps {
    /// Per node: its name and its ports' taps.
    nodes: Vec<(String, PortTaps)>,
}

impl Taps {
    pub(crate) fn push(&mut self, node: String, ports: PortTaps) {
        self.nodes.push((node, ports));
    }

    /// Watch the records leaving `node` on `port` (its default port when `None`).
    pub fn watch(&self, node: &str, port: Option<&str>) -> Result<Tap, TapError> {
        let (_, ports) = self
            .nodes
            .iter()
            .find(|(n, _)| n == node)
            .ok_or_else(|| TapError::UnknownNode(node.to_owned()))?;
        let point =
            match port {
                None => ports
                    .get(crate::processor::PortId::DEFAULT.0)
                    .ok_or_else(|| TapError::NoDefaultPort(node.to_owned()))?,
                Some(p) => ports.iter().find(|(name, _)| name == p).ok_or_else(|| {
                    TapError::UnknownPort {
                        node: node.to_owned(),
                        port: p.to_owned(),
                        ports: ports
                            .iter()
                            .map(|(n, _)| n.as_str())
                            .collect::<Vec<_>>()
                            .join(", "),
                    }
                })?,
            };
        Ok(point.1.watch())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ack::{AckTracker, Acks};

    #[tokio::test]
    async fn a_tap_copies_without_acks_and_a_slow_watcher_loses_copies_counted() {
        let point = Arc::new(TapPoint::default());
        assert!(!point.is_open());
        let mut tap = point.watch();
        assert!(point.is_open());
        let mut tracker = AckTracker::new();
        let token = tracker.token(0);
        let batch = vec![Record::from_bytes(&b"{\"a\":1}"[..]).with_acks(Acks::one(token))];
        // One record per batch (a slow source): the channel's bound holds TAP_BATCHES of them.
        for _ in 0..TAP_BATCHES + 3 {
            point.offer(&batch);
        }
        // The original finishes; the copies in the tap hold nothing up.
        crate::record::finish_all(batch);
        assert!(tracker.try_next().is_some(), "the batch resolved at once");
        let first = tap.next().await.expect("a copy");
        assert_eq!(first.lost, 3, "three batches found the channel full");
        assert_eq!(first.records.len(), 1);
        assert!(first.records[0].acks().is_empty());
        drop(tap);
        assert!(!point.is_open());
    }

    #[tokio::test]
    async fn a_watcher_is_bounded_by_records_and_a_big_batch_still_reaches_an_idle_one() {
        let point = Arc::new(TapPoint::default());
        let mut tap = point.watch();
        let big: Vec<Record> = (0..TAP_RECORDS + 10)
            .map(|i| Record::from_bytes(i.to_string().into_bytes()))
            .collect();
        point.offer(&big);
        point.offer(&big[..1]);
        // The record offered behind the big batch was lost (told with the next delivery).
        let first = tap.next().await.expect("the big batch");
        assert_eq!((first.lost, first.records.len()), (1, TAP_RECORDS + 10));
        // Read: room again.
        point.offer(&big[..2]);
        let next = tap.next().await.expect("the next batch");
        assert_eq!((next.lost, next.records.len()), (0, 2));
    }

    #[tokio::test]
    async fn a_tap_ends_when_its_port_closes() {
        let point = Arc::new(TapPoint::default());
        let mut tap = point.watch();
        point.offer(&[Record::from_bytes(&b"1"[..])]);
        point.close();
        assert_eq!(tap.next().await.map(|t| t.records.len()), Some(1));
        assert!(tap.next().await.is_none());
        assert!(
            point.watch().next().await.is_none(),
            "a late tap ends at once"
        );
    }
}
