//! Edges: bounded queues of record batches between two nodes.
//!
//! A queue is bounded in records and in bytes (NiFi's back-pressure thresholds). A producer that
//! would push the queue past either bound waits (`when_full: block`) until the consumer has taken
//! enough, so a slow sink slows its branch all the way back to the source, and memory stays
//! bounded whatever the input rate. A batch larger than a bound is still admitted into an empty
//! queue, so the flow never deadlocks on one big batch.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::task::AtomicWaker;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::task::{Context, Poll};
use tokio::sync::Notify;

use crate::record::Record;
use crate::runtime::shared::Payload;
use crate::spec::FlowSpec;

/// Which connection an edge is, with its thresholds: the one description the runtime's handles,
/// run reports, `GET /api/v1/flow` and `GET /api/v1/stats` share (flattened into the latter).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgeInfo {
    /// Its index among the flow's connections (file order).
    pub id: usize,
    /// The producing node.
    pub from: String,
    /// The producing node's port.
    pub port: String,
    /// The consuming node.
    pub to: String,
    /// Back-pressure threshold in records.
    pub max_records: usize,
    /// Back-pressure threshold in bytes.
    pub max_bytes: u64,
    /// What the queue does when full.
    pub when_full: WhenFull,
}

impl EdgeInfo {
    /// The `id`th connection of `flow`.
    pub fn of(flow: &FlowSpec, id: usize) -> Self {
        let e = &flow.edges[id];
        EdgeInfo {
            id,
            from: flow.nodes[e.from].name.clone(),
            port: flow.nodes[e.from].outputs[e.port].clone(),
            to: flow.nodes[e.to].name.clone(),
            max_records: e.settings.max_records,
            max_bytes: e.settings.max_bytes.as_u64(),
            when_full: e.settings.when_full,
        }
    }

    /// `from.port -> to`, for messages and tables.
    pub fn label(&self) -> String {
        format!("{}.{} -> {}", self.from, self.port, self.to)
    }
}

/// What a full queue does with a new batch.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// Wait until there is room: back-pressure reaches the source. Nothing is lost.
    #[default]
    Block,
    /// Drop the new batch (counted in the edge's `dropped`); the producer never waits. Its
    /// records count as finished, so the source commits past them.
    DropNewest,
}

/// A batch of records.
pub type Batch = Vec<Record>;

/// Live numbers of one edge, readable while the flow runs.
#[derive(Debug, Default)]
pub struct EdgeStats {
    /// Records queued now.
    pub records: AtomicU64,
    /// Bytes queued now.
    pub bytes: AtomicU64,
    /// Highest number of records ever queued.
    pub high_water_records: AtomicU64,
    /// Highest number of bytes ever queued.
    pub high_water_bytes: AtomicU64,
    /// Records the producer queued (those taken by the consumer: `sent - records`).
    pub sent: AtomicU64,
    /// Records dropped because the queue was full (`when_full: drop_newest`).
    pub dropped: AtomicU64,
}

/// A snapshot of [`EdgeStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgeSnapshot {
    /// Records queued now.
    pub records: u64,
    /// Bytes queued now.
    pub bytes: u64,
    /// Highest number of records ever queued.
    pub high_water_records: u64,
    /// Highest number of bytes ever queued.
    pub high_water_bytes: u64,
    /// Records the producer queued.
    pub sent: u64,
    /// Records dropped because the queue was full.
    pub dropped: u64,
}

impl EdgeStats {
    /// Read every counter.
    pub fn snapshot(&self) -> EdgeSnapshot {
        EdgeSnapshot {
            records: self.records.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            high_water_records: self.high_water_records.load(Ordering::Relaxed),
            high_water_bytes: self.high_water_bytes.load(Ordering::Relaxed),
            sent: self.sent.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
        }
    }
}

struct State {
    queue: VecDeque<(Payload, usize)>,
    records: usize,
    bytes: usize,
    senders_closed: bool,
    receiver_closed: bool,
    /// The ids of the records still queued when the consumer went (abandoned), as runs:
    /// taken by [`EdgeWatch::take_abandoned`] to record their DROP.
    abandoned: Vec<(u64, u32)>,
}

struct Shared {
    state: Mutex<State>,
    not_empty: AtomicWaker,
    not_full: Notify,
    max_records: usize,
    max_bytes: usize,
    when_full: WhenFull,
    stats: Arc<EdgeStats>,
}

/// The producing end of an edge.
pub struct EdgeSender {
    shared: Arc<Shared>,
    /// Whether the consumer routes records by a look ([`crate::processor::Transform::routes`]):
    /// a fan-out including this edge shares its batch instead of copying it.
    routes: bool,
}

/// The consuming end of an edge.
pub struct EdgeReceiver {
    shared: Arc<Shared>,
}

/// The consumer is gone; the batch could not be delivered.
#[derive(Debug)]
pub struct Closed(pub Batch);

/// What became of a batch given to [`EdgeSender::send`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sent {
    /// It is in the queue.
    Queued,
    /// The queue was full and sheds (`when_full: drop_newest`): counted in the edge's
    /// `dropped`, and finished.
    Dropped,
}

/// Make an edge with the given thresholds.
pub fn edge(
    max_records: usize,
    max_bytes: usize,
    when_full: WhenFull,
) -> (EdgeSender, EdgeReceiver, Arc<EdgeStats>) {
    let stats = Arc::new(EdgeStats::default());
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            queue: VecDeque::new(),
            records: 0,
            bytes: 0,
            senders_closed: false,
            receiver_closed: false,
            abandoned: Vec::new(),
        }),
        not_empty: AtomicWaker::new(),
        not_full: Notify::new(),
        max_records: max_records.max(1),
        max_bytes: max_bytes.max(1),
        when_full,
        stats: stats.clone(),
    });
    (
        EdgeSender {
            shared: shared.clone(),
            routes: false,
        },
        EdgeReceiver { shared },
        stats,
    )
}

impl EdgeSender {
    /// Say that the consumer routes records by a look (see [`EdgeSender::routes`]).
    pub fn with_routing_consumer(mut self, routes: bool) -> Self {
        self.routes = routes;
        self
    }

    /// Whether the consumer routes records by a look: it needs no copy of a record it sends
    /// nowhere.
    pub fn routes(&self) -> bool {
        self.routes
    }

    /// Queue a batch, waiting for room when the queue is full and the policy is `block`.
    pub async fn send(&self, batch: Batch) -> Result<Sent, Closed> {
        self.send_payload(Payload::Owned(batch)).await
    }

    /// Queue a batch of its own or a view of a shared one (see [`EdgeSender::send`]). A
    /// payload the consumer is gone for comes back as records to own.
    pub async fn send_payload(&self, batch: Payload) -> Result<Sent, Closed> {
        if batch.is_empty() {
            return Ok(Sent::Queued);
        }
        let n = batch.len();
        let size = batch.size();
        let s = &self.shared;
        loop {
            let notified = s.not_full.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut st = s.state.lock();
                if st.receiver_closed {
                    drop(st);
                    return Err(Closed(match batch {
                        Payload::Owned(b) => b,
                        // Dropped here, the view marks its records abandoned, as the copies
                        // given back would when dropped: no copy made for that.
                        Payload::Shared(_) => Batch::new(),
                    }));
                }
                let fits = st.queue.is_empty()
                    || (st.records + n <= s.max_records && st.bytes + size <= s.max_bytes);
                if fits {
                    st.records += n;
                    st.bytes += size;
                    st.queue.push_back((batch, size));
                    s.stats.records.store(st.records as u64, Ordering::Relaxed);
                    s.stats.bytes.store(st.bytes as u64, Ordering::Relaxed);
                    s.stats.sent.fetch_add(n as u64, Ordering::Relaxed);
                    s.stats
                        .high_water_records
                        .fetch_max(st.records as u64, Ordering::Relaxed);
                    s.stats
                        .high_water_bytes
                        .fetch_max(st.bytes as u64, Ordering::Relaxed);
                    drop(st);
                    s.not_empty.wake();
                    return Ok(Sent::Queued);
                }
                if s.when_full == WhenFull::DropNewest {
                    s.stats.dropped.fetch_add(n as u64, Ordering::Relaxed);
                    drop(st);
                    // Shed on purpose: finished, so the source commits past them.
                    batch.shed();
                    return Ok(Sent::Dropped);
                }
            }
            notified.await;
        }
    }
}

impl Drop for EdgeSender {
    fn drop(&mut self) {
        self.shared.state.lock().senders_closed = true;
        self.shared.not_empty.wake();
    }
}

impl EdgeReceiver {
    /// A handle that outlives this end, to learn what was still queued when it went (see
    /// [`EdgeWatch::take_abandoned`]).
    pub fn watch(&self) -> EdgeWatch {
        EdgeWatch {
            shared: self.shared.clone(),
        }
    }

    /// The next batch; `None` once the producer is gone and the queue is drained.
    pub async fn recv(&mut self) -> Option<Batch> {
        std::future::poll_fn(|cx| self.poll_recv(cx))
            .await
            .map(Payload::into_batch)
    }

    /// Poll for the next batch (see [`EdgeReceiver::recv`]), as it travelled: a view of a
    /// shared batch stays one.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Payload>> {
        let s = &self.shared;
        s.not_empty.register(cx.waker());
        let mut st = s.state.lock();
        if let Some((batch, size)) = st.queue.pop_front() {
            st.records -= batch.len();
            st.bytes -= size;
            s.stats.records.store(st.records as u64, Ordering::Relaxed);
            s.stats.bytes.store(st.bytes as u64, Ordering::Relaxed);
            drop(st);
            s.not_full.notify_one();
            return Poll::Ready(Some(batch));
        }
        if st.senders_closed {
            return Poll::Ready(None);
        }
        Poll::Pending
    }
}

impl Drop for EdgeReceiver {
    fn drop(&mut self) {
        let mut st = self.shared.state.lock();
        st.receiver_closed = true;
        // Whatever is still queued is dropped unprocessed, so abandoned: its sources do not
        // commit it. Its ids are kept for the consumer's provenance (a DROP).
        let abandoned: Vec<(Payload, usize)> = st.queue.drain(..).collect();
        for (batch, _) in &abandoned {
            st.abandoned.extend_from_slice(&batch.ids().0);
        }
        drop(st);
        drop(abandoned);
        self.shared.not_full.notify_one();
    }
}

/// What an edge's consumer left queued when it went: see [`EdgeReceiver::watch`].
pub struct EdgeWatch {
    shared: Arc<Shared>,
}

impl EdgeWatch {
    /// The ids (as runs) of the records that were still queued when the consumer's end
    /// was dropped, taken once: empty while it lives, and after an input that ended
    /// normally (closed and drained).
    pub fn take_abandoned(&self) -> Vec<(u64, u32)> {
        std::mem::take(&mut self.shared.state.lock().abandoned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records still queued when the consumer goes (it failed) are abandoned: their source
    /// learns it must not commit them.
    #[tokio::test]
    async fn records_left_in_a_dropped_queue_are_abandoned() {
        use crate::ack::{AckStatus, AckTracker, Acks};
        let mut tracker = AckTracker::new();
        let (tx, rx, _) = edge(100, usize::MAX, WhenFull::Block);
        let delivered = tracker.token(0);
        let queued = tracker.token(1);
        let b0: Batch = vec![Record::from_bytes(&b"{}"[..]).with_acks(Acks::one(delivered))];
        let b1: Batch = vec![Record::from_bytes(&b"{}"[..]).with_acks(Acks::one(queued))];
        tx.send(b0).await.expect("room");
        tx.send(b1).await.expect("room");
        let mut rx = rx;
        crate::record::finish_all(rx.recv().await.expect("first batch"));
        drop(rx);
        let mut seen = [
            tracker.next().await.expect("one"),
            tracker.next().await.expect("two"),
        ];
        seen.sort_by_key(|f| f.seq);
        assert_eq!(seen[0].status, AckStatus::Delivered);
        assert!(seen[0].committable());
        assert_eq!(seen[1].status, AckStatus::Abandoned);
        assert!(!seen[1].committable());
    }

    fn batch(n: usize) -> Batch {
        (0..n).map(|_| Record::from_bytes(&b"{}"[..])).collect()
    }

    #[tokio::test]
    async fn a_full_queue_blocks_the_producer_until_the_consumer_takes() {
        let (tx, mut rx, stats) = edge(10, usize::MAX, WhenFull::Block);
        tx.send(batch(6)).await.expect("room");
        tx.send(batch(4)).await.expect("room");
        let blocked = tokio::spawn(async move {
            tx.send(batch(5)).await.expect("room later");
        });
        tokio::task::yield_now().await;
        assert!(!blocked.is_finished());
        assert_eq!(rx.recv().await.map(|b| b.len()), Some(6));
        blocked.await.expect("joined");
        assert_eq!(rx.recv().await.map(|b| b.len()), Some(4));
        assert_eq!(rx.recv().await.map(|b| b.len()), Some(5));
        assert_eq!(rx.recv().await.map(|b| b.len()), None);
        let s = stats.snapshot();
        assert_eq!(s.high_water_records, 10);
        assert_eq!(s.sent, 15);
    }

    #[tokio::test]
    async fn an_oversized_batch_enters_an_empty_queue() {
        let (tx, mut rx, _) = edge(2, usize::MAX, WhenFull::Block);
        tx.send(batch(5)).await.expect("admitted");
        drop(tx);
        assert_eq!(rx.recv().await.map(|b| b.len()), Some(5));
    }

    #[tokio::test]
    async fn drop_newest_never_waits_counts_and_finishes_what_it_sheds() {
        use crate::ack::{AckStatus, AckTracker, Acks};
        let mut tracker = AckTracker::new();
        let (tx, _rx, stats) = edge(3, usize::MAX, WhenFull::DropNewest);
        tx.send(batch(3)).await.expect("room");
        let shed = tracker.token(0);
        let b: Batch = (0..2)
            .map(|_| Record::from_bytes(&b"{}"[..]).with_acks(Acks::one(shed.clone())))
            .collect();
        drop(shed);
        assert_eq!(tx.send(b).await.expect("not blocked"), Sent::Dropped);
        assert_eq!(stats.snapshot().dropped, 2);
        assert_eq!(stats.snapshot().sent, 3, "what was shed was not sent");
        let f = tracker.try_next().expect("finished at once");
        assert_eq!(f.status, AckStatus::Delivered);
    }

    #[tokio::test]
    async fn sending_to_a_closed_edge_returns_the_batch() {
        let (tx, rx, _) = edge(3, usize::MAX, WhenFull::Block);
        drop(rx);
        assert_eq!(tx.send(batch(1)).await.map_err(|c| c.0.len()), Err(1));
    }
}
