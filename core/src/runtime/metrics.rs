//! Counters every node keeps the same way, all kept by the runtime but for what only a
//! processor knows:
//!
//! - **by the runtime** ([`crate::runtime::emit`]): records in (`received`, when a transform,
//!   task transform or sink takes a batch from its input), records out per port (`sent`, when
//!   at least one edge queued them), failed (records on `failure`), dropped on a port without
//!   an edge, the time a node spends on each batch, and the node's [`NodeState`];
//! - **by processors**: a source's records read (`received`), a sink's records written
//!   (`sent`), records a transform drops on purpose (through [`crate::processor::Output`]),
//!   acknowledgements ([`crate::ack::AckCounters`], through the source's tracker), how far
//!   behind its input a source is ([`NodeMetrics::set_lag`], [`NodeMetrics::set_progress`]),
//!   whether it is connected ([`NodeMetrics::set_connected`]), and free-form figures
//!   ([`NodeMetrics::set_status`]).
//!
//! Everything is an atomic or a short lock, cheap enough to touch once per batch.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::ack::{AckCounters, AckSnapshot};

/// Where a node is in its life.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    /// Built, its task not started yet.
    #[default]
    Starting,
    /// Its task runs.
    Running,
    /// Its task ended well (its input ended, or the flow stopped).
    Finished,
    /// Its task returned an error or panicked (the error is beside the state).
    Failed,
}

impl NodeState {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => NodeState::Starting,
            1 => NodeState::Running,
            2 => NodeState::Finished,
            _ => NodeState::Failed,
        }
    }

    /// Its name, as serialized (`starting`, `running`, `finished`, `failed`).
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Starting => "starting",
            NodeState::Running => "running",
            NodeState::Finished => "finished",
            NodeState::Failed => "failed",
        }
    }
}

/// The unit of a source's lag.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LagUnit {
    /// Records (a Kafka partition: high watermark minus the consumer's position).
    Records,
    /// Messages a broker holds for the source, or the source holds unacknowledged (MQTT).
    Messages,
    /// Bytes left to read (a file).
    Bytes,
}

impl LagUnit {
    /// The unit's name, as in metric names (`flow_source_lag_bytes`).
    pub fn as_str(self) -> &'static str {
        match self {
            LagUnit::Records => "records",
            LagUnit::Messages => "messages",
            LagUnit::Bytes => "bytes",
        }
    }
}

/// How far behind its input a source is, in one unit, for one partition (or the whole input).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lag {
    /// What is counted.
    pub unit: LagUnit,
    /// The partition (`topic/3`), or none for the whole input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<String>,
    /// How much is left.
    pub value: u64,
}

/// How much of a bounded input a source has read (a file: bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// Read so far.
    pub done: u64,
    /// The whole input.
    pub total: u64,
}

/// Upper bounds, in seconds, of the batch time histogram's buckets (Prometheus' `le`).
pub const BATCH_SECONDS_BUCKETS: [f64; 14] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// The time a node spends on each batch it takes in, as a histogram.
#[derive(Debug, Default)]
struct BatchTimes {
    /// Per bucket (not cumulative), the last one being `+Inf`.
    buckets: [AtomicU64; BATCH_SECONDS_BUCKETS.len() + 1],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

/// A snapshot of the batch time histogram.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BatchHistogram {
    /// Batches measured.
    pub count: u64,
    /// Their total time, in seconds.
    pub sum_seconds: f64,
    /// Cumulative counts per upper bound of [`BATCH_SECONDS_BUCKETS`] (`+Inf` is `count`).
    pub buckets: Vec<u64>,
}

/// Records that left on one output port.
#[derive(Debug)]
struct PortCounter {
    name: String,
    out: AtomicU64,
}

/// Live counters of one node.
#[derive(Debug, Default)]
pub struct NodeMetrics {
    received: AtomicU64,
    sent: AtomicU64,
    dropped: AtomicU64,
    failed: AtomicU64,
    ports: Box<[PortCounter]>,
    state: AtomicU8,
    error: Mutex<Option<String>>,
    /// 0: does not say; 1: connected; 2: not connected.
    connected: AtomicU8,
    batches: BatchTimes,
    acks: Arc<AckCounters>,
    progress_done: AtomicU64,
    /// 0: unknown.
    progress_total: AtomicU64,
    lag: Mutex<BTreeMap<(LagUnit, Option<String>), u64>>,
    status: Mutex<BTreeMap<String, serde_json::Value>>,
}

/// A snapshot of [`NodeMetrics`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeSnapshot {
    /// Where the node is in its life.
    #[serde(default)]
    pub state: NodeState,
    /// Why it failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Records in: read by a source, taken from its input by a transform or sink.
    pub received: u64,
    /// Records out: queued on at least one edge of a port other than `failure`, or written
    /// by a sink.
    pub sent: u64,
    /// Records dropped on purpose (filtered out, or sent to a port with no edge).
    pub dropped: u64,
    /// Records that failed (sent to `failure`, connected or not).
    pub failed: u64,
    /// Records out per port (`failure` included) that at least one edge queued.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ports: BTreeMap<String, u64>,
    /// Whether the node says it is connected to its server (sources and sinks that have one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connected: Option<bool>,
    /// Time spent per batch taken in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batches: Option<BatchHistogram>,
    /// A source's acknowledgements.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acks: Option<AckSnapshot>,
    /// How much of a bounded input a source has read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
    /// How far behind its input a source is.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lag: Vec<Lag>,
    /// Processor-specific figures (a source's committed offset, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub status: BTreeMap<String, serde_json::Value>,
}

impl NodeMetrics {
    /// Counters for a node with these output ports (index = [`crate::processor::PortId`]).
    pub fn with_ports(ports: &[String]) -> Self {
        Self {
            ports: ports
                .iter()
                .map(|name| PortCounter {
                    name: name.clone(),
                    out: AtomicU64::new(0),
                })
                .collect(),
            ..Self::default()
        }
    }

    /// Count records in (sources; the runtime counts everyone else's).
    pub fn add_received(&self, n: u64) {
        self.received.fetch_add(n, Ordering::Relaxed);
    }
    /// Count records written (sinks; the runtime counts what the others send).
    pub fn add_sent(&self, n: u64) {
        self.sent.fetch_add(n, Ordering::Relaxed);
    }
    /// Count records dropped on purpose.
    pub fn add_dropped(&self, n: u64) {
        self.dropped.fetch_add(n, Ordering::Relaxed);
    }
    /// Count records that failed.
    pub fn add_failed(&self, n: u64) {
        self.failed.fetch_add(n, Ordering::Relaxed);
    }
    /// Count records that left on `port` (the runtime does).
    pub(crate) fn add_port_out(&self, port: usize, n: u64) {
        if let Some(p) = self.ports.get(port) {
            p.out.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Record the time spent on one batch (the runtime does).
    pub(crate) fn observe_batch(&self, took: Duration) {
        let secs = took.as_secs_f64();
        let i = BATCH_SECONDS_BUCKETS
            .iter()
            .position(|le| secs <= *le)
            .unwrap_or(BATCH_SECONDS_BUCKETS.len());
        let b = &self.batches;
        b.buckets[i].fetch_add(1, Ordering::Relaxed);
        b.count.fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        b.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Set the node's state (the runtime does, as it happens).
    pub(crate) fn set_state(&self, state: NodeState, error: Option<String>) {
        if error.is_some() {
            *self.error.lock() = error;
        }
        self.state.store(state as u8, Ordering::Release);
    }

    /// Where the node is in its life.
    pub fn state(&self) -> NodeState {
        NodeState::from_u8(self.state.load(Ordering::Acquire))
    }

    /// Say whether the node is connected to its server (for `/ready`).
    pub fn set_connected(&self, connected: bool) {
        self.connected
            .store(if connected { 1 } else { 2 }, Ordering::Relaxed);
    }

    /// The acknowledgement counters a source's tracker counts into
    /// ([`crate::ack::AckTracker::counting`]).
    pub fn acks(&self) -> Arc<AckCounters> {
        self.acks.clone()
    }

    /// How much of a bounded input was read, of how much (a file: bytes). Bytes left count
    /// as the source's lag.
    pub fn set_progress(&self, done: u64, total: u64) {
        self.progress_done.store(done, Ordering::Relaxed);
        self.progress_total.store(total, Ordering::Relaxed);
    }

    /// How far behind its input the source is, for one partition or (`None`) the whole input.
    pub fn set_lag(&self, unit: LagUnit, partition: Option<&str>, value: u64) {
        self.lag
            .lock()
            .insert((unit, partition.map(str::to_owned)), value);
    }

    /// Forget the lag of partitions the source no longer reads (a rebalance).
    pub fn clear_lag(&self, unit: LagUnit) {
        self.lag.lock().retain(|(u, _), _| *u != unit);
    }

    /// Publish a processor-specific figure.
    pub fn set_status(&self, key: &str, value: serde_json::Value) {
        self.status.lock().insert(key.to_owned(), value);
    }

    /// Read every counter.
    pub fn snapshot(&self) -> NodeSnapshot {
        let b = &self.batches;
        let count = b.count.load(Ordering::Relaxed);
        let batches = (count > 0).then(|| {
            let mut acc = 0;
            let buckets = b.buckets[..BATCH_SECONDS_BUCKETS.len()]
                .iter()
                .map(|c| {
                    acc += c.load(Ordering::Relaxed);
                    acc
                })
                .collect();
            BatchHistogram {
                count,
                sum_seconds: b.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
                buckets,
            }
        });
        let total = self.progress_total.load(Ordering::Relaxed);
        let progress = (total > 0).then(|| Progress {
            done: self.progress_done.load(Ordering::Relaxed).min(total),
            total,
        });
        let mut lag: Vec<Lag> = self
            .lag
            .lock()
            .iter()
            .map(|((unit, partition), value)| Lag {
                unit: *unit,
                partition: partition.clone(),
                value: *value,
            })
            .collect();
        if let Some(p) = progress {
            lag.push(Lag {
                unit: LagUnit::Bytes,
                partition: None,
                value: p.total - p.done,
            });
        }
        let acks = self.acks.snapshot();
        NodeSnapshot {
            state: self.state(),
            error: self.error.lock().clone(),
            received: self.received.load(Ordering::Relaxed),
            sent: self.sent.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            ports: self
                .ports
                .iter()
                .map(|p| (p.name.clone(), p.out.load(Ordering::Relaxed)))
                .collect(),
            connected: match self.connected.load(Ordering::Relaxed) {
                1 => Some(true),
                2 => Some(false),
                _ => None,
            },
            batches,
            acks: (acks != AckSnapshot::default()).then_some(acks),
            progress,
            lag,
            status: self.status.lock().clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_batch_histogram_is_cumulative_and_sums_seconds() {
        let m = NodeMetrics::default();
        m.observe_batch(Duration::from_micros(50));
        m.observe_batch(Duration::from_millis(3));
        m.observe_batch(Duration::from_secs(10));
        let h = m.snapshot().batches.expect("measured");
        assert_eq!(h.count, 3);
        assert!(
            (h.sum_seconds - 10.003_05).abs() < 1e-9,
            "{}",
            h.sum_seconds
        );
        // le=0.0001 holds one; le=0.005 two; the largest bound still two (10 s is +Inf).
        assert_eq!(h.buckets[0], 1);
        assert_eq!(h.buckets[5], 2);
        assert_eq!(h.buckets.last(), Some(&2));
    }

    #[test]
    fn progress_makes_the_bytes_left_a_lag() {
        let m = NodeMetrics::default();
        m.set_progress(30, 100);
        m.set_lag(LagUnit::Records, Some("t/0"), 7);
        let s = m.snapshot();
        assert_eq!(
            s.progress,
            Some(Progress {
                done: 30,
                total: 100
            })
        );
        assert_eq!(
            s.lag,
            vec![
                Lag {
                    unit: LagUnit::Records,
                    partition: Some("t/0".into()),
                    value: 7
                },
                Lag {
                    unit: LagUnit::Bytes,
                    partition: None,
                    value: 70
                }
            ]
        );
    }
}
