//! The runtime's side of a node's ports: fan a batch out to every edge of a port, and merge the
//! edges coming in.

use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use crate::ack::AckStatus;
use crate::processor::{Output, PortId};
use crate::record::finish_all;
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
    /// Records sent here with no edge are counted as failed and logged, not dropped quietly
    /// (`failure`, and the ports a processor declares in `reported_outputs`).
    reported: bool,
    /// The last time such records were logged, and how many came since.
    log: Option<(Instant, u64)>,
}

const BURST: Duration = Duration::from_secs(5);

impl Port {
    /// Log records that reached this port with no edge, at most once per burst.
    fn report(&mut self, node: &str, batch: &Batch) {
        let now = Instant::now();
        let n = batch.len() as u64;
        if let Some((last, suppressed)) = &mut self.log
            && now.duration_since(*last) < BURST
        {
            *suppressed += n;
            return;
        }
        let count = n + self.log.map_or(0, |(_, s)| s);
        self.log = Some((now, 0));
        let first = batch.first();
        if self.name == crate::processor::FAILURE {
            let message = first
                .and_then(|r| r.attributes.get("error.message"))
                .map(String::as_str)
                .unwrap_or("unknown error");
            tracing::warn!(
                node,
                failed = count,
                error = message,
                "records failed and the `failure` port has no edge; they are counted and dropped"
            );
        } else {
            let attributes = first
                .map(|r| format!("{:?}", r.attributes))
                .unwrap_or_default();
            tracing::warn!(
                node,
                port = %self.name,
                records = count,
                first_attributes = %attributes,
                "records went to port `{}`, which has no edge; they are counted as failed and \
                 dropped (connect `{node}.{}` to keep them)",
                self.name,
                self.name
            );
        }
    }
}

/// Sends a node's output batches along its edges.
pub struct Emitter {
    node: Arc<str>,
    ports: Vec<Port>,
    metrics: Arc<NodeMetrics>,
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
                .enumerate()
                .map(|(i, (name, edges))| Port {
                    name,
                    edges,
                    reported: i == PortId::FAILURE.0,
                    log: None,
                })
                .collect(),
            metrics,
        }
    }

    /// Also count and log records sent to these ports (by name) when they have no edge, as
    /// for `failure` (see [`crate::processor::ProcessorConfig::reported_outputs`]).
    pub fn with_reported(mut self, names: &[String]) -> Self {
        for p in &mut self.ports {
            p.reported |= names.contains(&p.name);
        }
        self
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
    /// is cheap). Waits while an edge is full. A port without edges drops the batch on purpose
    /// (acknowledged, counted as dropped), except `failure` and the processor's other
    /// reported ports, whose records are counted as failed, logged once per burst and
    /// acknowledged `Failed`. A batch for an edge whose consumer is gone is abandoned.
    pub async fn send(&mut self, port: PortId, batch: Batch) -> Result<(), DownstreamGone> {
        if batch.is_empty() {
            return Ok(());
        }
        let n = batch.len() as u64;
        let Some(p) = self.ports.get_mut(port.0) else {
            // No such port: a processor bug. Dropping the batch abandons it.
            return Ok(());
        };
        if p.edges.is_empty() {
            if p.reported {
                self.metrics.add_failed(n);
                p.report(&self.node, &batch);
                for mut r in batch {
                    r.take_acks().finish(AckStatus::Failed);
                }
            } else {
                self.metrics.add_dropped(n);
                finish_all(batch);
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
