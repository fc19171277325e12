//! Counters every node keeps the same way: received, sent, dropped, failed.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use serde::Serialize;

/// Live counters of one node.
#[derive(Debug, Default)]
pub struct NodeMetrics {
    received: AtomicU64,
    sent: AtomicU64,
    dropped: AtomicU64,
    failed: AtomicU64,
    status: Mutex<BTreeMap<String, serde_json::Value>>,
}

/// A snapshot of [`NodeMetrics`].
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct NodeSnapshot {
    /// Records in: read by a source, received by a transform or sink.
    pub received: u64,
    /// Records out: emitted on a connected port, or written by a sink.
    pub sent: u64,
    /// Records dropped on purpose (filtered out, or on a port with no edge).
    pub dropped: u64,
    /// Records that failed and were counted and logged (no `failure` edge).
    pub failed: u64,
    /// Processor-specific figures (a source's committed offset, ...).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub status: BTreeMap<String, serde_json::Value>,
}

impl NodeMetrics {
    /// Count records in.
    pub fn add_received(&self, n: u64) {
        self.received.fetch_add(n, Ordering::Relaxed);
    }
    /// Count records out (or written, for sinks).
    pub fn add_sent(&self, n: u64) {
        self.sent.fetch_add(n, Ordering::Relaxed);
    }
    /// Count records dropped on purpose.
    pub fn add_dropped(&self, n: u64) {
        self.dropped.fetch_add(n, Ordering::Relaxed);
    }
    /// Count records that failed with nowhere to go.
    pub fn add_failed(&self, n: u64) {
        self.failed.fetch_add(n, Ordering::Relaxed);
    }
    /// Publish a processor-specific figure.
    pub fn set_status(&self, key: &str, value: serde_json::Value) {
        self.status.lock().insert(key.to_owned(), value);
    }
    /// Read every counter.
    pub fn snapshot(&self) -> NodeSnapshot {
        NodeSnapshot {
            received: self.received.load(Ordering::Relaxed),
            sent: self.sent.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            status: self.status.lock().clone(),
        }
    }
}
