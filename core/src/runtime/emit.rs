//! The runtime's side of a node's ports: fan a batch out to every edge of a port, and merge the
//! edges coming in.

use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use crate::ack::AckStatus;
use crate::processor::{Output, PortId};
use crate::runtime::edge::{Batch, EdgeReceiver, EdgeSender};
use crate::runtime::metrics::NodeMetrics;

/// Every downstream edge of a port is gone: the flow is failing.
#[derive(Debug, thiserror::Error)]
#[error("downstream of `{node}.{port}` stopped")]
pub struct DownstreamGone {
    /// The node.
    pub node: Arc<str>,
    /// The port.
    pub port: String,
}

struct Port {
    name: String,
    edges: Vec<EdgeSender>,
}

/// Logs failures that have nowhere to go, at most once per burst.
struct FailureLog {
    last: Option<Instant>,
    suppressed: u64,
}

const BURST: Duration = Duration::from_secs(5);

impl FailureLog {
    fn report(&mut self, node: &str, batch: &Batch) {
        let now = Instant::now();
        let due = self.last.is_none_or(|t| now.duration_since(t) >= BURST);
        if !due {
            self.suppressed += batch.len() as u64;
            return;
        }
        let message = batch
            .first()
            .and_then(|r| r.attributes.get("error.message"))
            .map(String::as_str)
            .unwrap_or("unknown error");
        tracing::warn!(
            node,
            failed = batch.len() as u64 + self.suppressed,
            error = message,
            "records failed and the `failure` port has no edge; they are counted and dropped"
        );
        self.last = Some(now);
        self.suppressed = 0;
    }
}

/// Sends a node's output batches along its edges.
pub struct Emitter {
    node: Arc<str>,
    ports: Vec<Port>,
    metrics: Arc<NodeMetrics>,
    failure_log: FailureLog,
}

impl Emitter {
    /// An emitter for `node` with these ports (index = [`PortId`]).
    pub fn new(
        node: Arc<str>,
        ports: Vec<(String, Vec<EdgeSender>)>,
        metrics: Arc<NodeMetrics>,
    ) -> Self {
        Self {
            node,
            ports: ports
                .into_iter()
                .map(|(name, edges)| Port { name, edges })
                .collect(),
            metrics,
            failure_log: FailureLog {
                last: None,
                suppressed: 0,
            },
        }
    }

    /// The number of ports.
    pub fn port_count(&self) -> usize {
        self.ports.len()
    }

    /// Whether `port` has at least one edge.
    pub fn is_connected(&self, port: PortId) -> bool {
        self.ports.get(port.0).is_some_and(|p| !p.edges.is_empty())
    }

    /// Send a batch on a port: a copy to every edge (records share their parsed view, so a copy
    /// is cheap). Waits while an edge is full. A port without edges drops the batch on purpose,
    /// except `failure`, whose records are counted and logged.
    pub async fn send(&mut self, port: PortId, batch: Batch) -> Result<(), DownstreamGone> {
        if batch.is_empty() {
            return Ok(());
        }
        let n = batch.len() as u64;
        let Some(p) = self.ports.get(port.0) else {
            return Ok(());
        };
        if p.edges.is_empty() {
            if port == PortId::FAILURE {
                self.metrics.add_failed(n);
                self.failure_log.report(&self.node, &batch);
                for r in &batch {
                    r.mark(AckStatus::Failed);
                }
            } else {
                self.metrics.add_dropped(n);
            }
            return Ok(());
        }
        let (last, rest) = p.edges.split_last().ok_or_else(|| DownstreamGone {
            node: self.node.clone(),
            port: p.name.clone(),
        })?;
        let mut delivered = false;
        for e in rest {
            delivered |= e.send(batch.clone()).await.is_ok();
        }
        delivered |= last.send(batch).await.is_ok();
        if !delivered {
            return Err(DownstreamGone {
                node: self.node.clone(),
                port: p.name.clone(),
            });
        }
        if port == PortId::FAILURE {
            self.metrics.add_failed(n);
        } else {
            self.metrics.add_sent(n);
        }
        Ok(())
    }

    /// Forward everything a transform pushed, port by port.
    pub async fn flush(&mut self, out: &mut Output) -> Result<(), DownstreamGone> {
        let batches: Vec<(PortId, Batch)> = out.drain().collect();
        for (port, batch) in batches {
            self.send(port, batch).await?;
        }
        Ok(())
    }
}

/// A node's incoming edges, merged.
pub struct Input {
    edges: Vec<EdgeReceiver>,
    next: usize,
}

impl Input {
    /// Merge these edges.
    pub fn new(edges: Vec<EdgeReceiver>) -> Self {
        Self { edges, next: 0 }
    }

    /// The next batch from any edge, taking turns; `None` once every edge is closed and drained.
    pub async fn next(&mut self) -> Option<Batch> {
        std::future::poll_fn(|cx| {
            let mut i = 0;
            while i < self.edges.len() {
                let idx = (self.next + i) % self.edges.len();
                match self.edges[idx].poll_recv(cx) {
                    Poll::Ready(Some(b)) => {
                        self.next = (idx + 1) % self.edges.len();
                        return Poll::Ready(Some(b));
                    }
                    Poll::Ready(None) => {
                        self.edges.remove(idx);
                        if self.edges.is_empty() {
                            return Poll::Ready(None);
                        }
                        self.next %= self.edges.len();
                        i = 0;
                    }
                    Poll::Pending => i += 1,
                }
            }
            if self.edges.is_empty() {
                Poll::Ready(None)
            } else {
                Poll::Pending
            }
        })
        .await
    }
}
