//! The runtime: a validated flow becomes one tokio task per node, connected by bounded edges.
//!
//! - Sinks are started first and sources last, so nothing is produced before it can go
//!   somewhere.
//! - A full edge blocks its producer, so a slow sink throttles its branch back to the source.
//! - Shutdown (the token passed to [`start`] is cancelled): sources stop reading and emit what
//!   they hold; every transform ends when all its inputs are closed and drained; sinks flush and
//!   end; sources wait for their acknowledgements and commit. [`RunningFlow::wait`] returns once
//!   every task has ended.
//! - A processor that fails (returns an error or panics) stops the flow the same graceful way
//!   and makes the run an error. Whatever it held (its input queue, its state, the records in
//!   hand) is abandoned, so no source commits it: it is read again on the next run.
//! - Every node's state (starting, running, finished, failed with its error) is set here as it
//!   changes, and its records are counted here ([`emit`]), the same way for every kind of node:
//!   watchers ([`Reporter`], the control API) read them live.

pub mod edge;
pub mod emit;
pub mod metrics;
pub mod tap;

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt as _;
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;
pub use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::processor::{
    BuildContext, BuildError, Kind, Output, Processor, ProcessorError, SinkContext, SourceContext,
    TaskContext, Transform,
};
use crate::provenance::Recorder;
use crate::provenance::store::{Header, NodeInfo};
use crate::spec::FlowSpec;
use edge::{EdgeInfo, EdgeSnapshot, EdgeStats};
use emit::{Emitter, Input};
use metrics::{NodeMetrics, NodeSnapshot, NodeState};
use tap::Taps;

/// Starting a flow failed.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A processor could not be built.
    #[error("processor `{name}`: {source}")]
    Build {
        /// The processor.
        name: String,
        /// Why.
        source: BuildError,
    },
    /// The spec declares a shape its config did not build.
    #[error("processor `{0}` built as the wrong kind of processor")]
    WrongKind(String),
}

/// Live handles on a node's counters.
#[derive(Clone)]
pub struct NodeHandle {
    /// Name in the flow.
    pub name: String,
    /// Processor type.
    pub type_name: String,
    /// Shape.
    pub kind: Kind,
    /// Output ports, `failure` first.
    pub ports: Vec<String>,
    /// Counters and state.
    pub metrics: Arc<NodeMetrics>,
}

/// Live handles on an edge's counters.
#[derive(Clone)]
pub struct EdgeHandle {
    /// Which edge it is.
    pub info: EdgeInfo,
    /// Counters.
    pub stats: Arc<EdgeStats>,
}

/// A started flow.
pub struct RunningFlow {
    nodes: Vec<NodeHandle>,
    edges: Vec<EdgeHandle>,
    taps: Taps,
    tasks: JoinSet<(usize, Result<(), ProcessorError>)>,
    shutdown: CancellationToken,
    started: Instant,
}

/// What a finished run reports.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunReport {
    /// Wall time.
    pub elapsed_secs: f64,
    /// Per-node counters.
    pub nodes: Vec<NodeReport>,
    /// Per-edge counters.
    pub edges: Vec<EdgeReport>,
    /// Processors that failed, with why.
    pub errors: Vec<String>,
}

/// One node in a [`RunReport`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeReport {
    /// Name in the flow.
    pub name: String,
    /// Processor type.
    #[serde(rename = "type")]
    pub type_name: String,
    /// Counters.
    #[serde(flatten)]
    pub counters: NodeSnapshot,
}

/// One edge in a [`RunReport`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EdgeReport {
    /// Which edge it is.
    #[serde(flatten)]
    pub info: EdgeInfo,
    /// Counters.
    #[serde(flatten)]
    pub counters: EdgeSnapshot,
}

/// Build every processor of `spec` and start the flow. Cancel `shutdown` to stop it gracefully.
pub fn start(spec: &FlowSpec, shutdown: CancellationToken) -> Result<RunningFlow, StartError> {
    start_with_clock(spec, shutdown, Clock::system())
}

/// [`start`], with processing time told by `clock` (`flow test` gives a virtual one).
pub fn start_with_clock(
    spec: &FlowSpec,
    shutdown: CancellationToken,
    clock: Clock,
) -> Result<RunningFlow, StartError> {
    start_with(spec, shutdown, clock, None)
}

/// [`start_with_clock`], recording provenance with `provenance` when given (see
/// [`crate::provenance`]; the recorder's store must describe `spec`'s nodes and ports in
/// order, as [`provenance_header`] does).
pub fn start_with(
    spec: &FlowSpec,
    shutdown: CancellationToken,
    clock: Clock,
    provenance: Option<&Recorder>,
) -> Result<RunningFlow, StartError> {
    // Build everything first: a flow that cannot start starts nothing.
    let mut built = Vec::with_capacity(spec.nodes.len());
    // One pass over the edges, not one per node: a flow of 10,000 processors starts at once.
    let mut read_downstream = vec![false; spec.nodes.len()];
    for e in &spec.edges {
        if spec.nodes[e.to].config.reads_values() {
            read_downstream[e.from] = true;
        }
    }
    for (i, n) in spec.nodes.iter().enumerate() {
        let consumers_read_values = read_downstream[i];
        let p = n
            .config
            .build(&BuildContext {
                name: n.name.clone(),
                consumers_read_values,
                clock: clock.clone(),
            })
            .map_err(|source| StartError::Build {
                name: n.name.clone(),
                source,
            })?;
        let ok = matches!(
            (&p, n.kind),
            (Processor::Source(_), Kind::Source)
                | (
                    Processor::Transform(_) | Processor::Task(_),
                    Kind::Transform
                )
                | (Processor::Sink(_), Kind::Sink)
        );
        if !ok {
            return Err(StartError::WrongKind(n.name.clone()));
        }
        built.push(Some(p));
    }

    let mut outputs: Vec<Vec<(String, Vec<edge::EdgeSender>)>> = spec
        .nodes
        .iter()
        .map(|n| n.outputs.iter().map(|o| (o.clone(), Vec::new())).collect())
        .collect();
    let mut inputs: Vec<Vec<edge::EdgeReceiver>> = spec.nodes.iter().map(|_| Vec::new()).collect();
    let mut edges = Vec::new();
    for e in &spec.edges {
        let max_bytes = usize::try_from(e.settings.max_bytes.as_u64()).unwrap_or(usize::MAX);
        let (tx, rx, stats) = edge::edge(e.settings.max_records, max_bytes, e.settings.when_full);
        outputs[e.from][e.port].1.push(tx);
        inputs[e.to].push(rx);
        edges.push(EdgeHandle {
            info: EdgeInfo::of(spec, edges.len()),
            stats,
        });
    }

    let nodes: Vec<NodeHandle> = spec
        .nodes
        .iter()
        .map(|n| NodeHandle {
            name: n.name.clone(),
            type_name: n.type_name.clone(),
            kind: n.kind,
            ports: n.outputs.clone(),
            metrics: Arc::new(NodeMetrics::with_ports(&n.outputs)),
        })
        .collect();

    let mut tasks = JoinSet::new();
    let mut taps = Taps::default();
    // Downstream first: every node starts after the nodes it feeds, so sinks start first and
    // sources last (a validated flow is acyclic; file order is the fallback).
    let graph = spec.graph();
    let order: Vec<usize> = match petgraph::algo::toposort(&graph, None) {
        Ok(sorted) => sorted.into_iter().rev().map(|n| graph[n]).collect(),
        Err(_) => (0..spec.nodes.len()).rev().collect(),
    };
    // Per node and port, the node each edge goes to (provenance's FORK children).
    let mut targets: Vec<Vec<Vec<u32>>> = spec
        .nodes
        .iter()
        .map(|n| vec![Vec::new(); n.outputs.len()])
        .collect();
    for e in &spec.edges {
        targets[e.from][e.port].push(u32::try_from(e.to).unwrap_or(u32::MAX));
    }
    // What provenance keeps of content, and never keeps.
    let prov_config = spec.provenance.clone().unwrap_or_default();
    let secrets = Arc::new(prov_config.secrets());
    let max_content = prov_config.max_content_bytes();
    let ordered = ordered_origins(spec);
    let mut outputs: Vec<_> = outputs.into_iter().map(Some).collect();
    let mut inputs: Vec<_> = inputs.into_iter().map(Some).collect();
    for i in order {
        let n = &spec.nodes[i];
        let name: Arc<str> = n.name.as_str().into();
        let metrics = nodes[i].metrics.clone();
        let mut emitter = Emitter::new(
            name.clone(),
            outputs[i].take().unwrap_or_default(),
            metrics.clone(),
        )
        .with_reported(&n.config.reported_outputs());
        taps.push(n.name.clone(), emitter.taps());
        let mut input = Input::new(inputs[i].take().unwrap_or_default(), metrics.clone())
            .with_ordered_origins(ordered[i]);
        if let Some(p) = provenance {
            let keep = prov_config.content.contains(&n.name).then_some(max_content);
            let rec = p
                .node(i, n.kind == Kind::Source)
                .with_policy(secrets.clone(), keep);
            input = input.with_provenance(rec.clone());
            emitter = emitter.with_provenance(rec, std::mem::take(&mut targets[i]));
        }
        let task: futures::future::BoxFuture<'static, Result<(), ProcessorError>> =
            match built[i].take() {
                Some(Processor::Source(s)) => {
                    let ctx = SourceContext {
                        name: name.clone(),
                        out: emitter,
                        shutdown: shutdown.clone(),
                        metrics: metrics.clone(),
                    };
                    drop(input);
                    s.run(ctx)
                }
                Some(Processor::Transform(t)) => {
                    Box::pin(run_transform(name.clone(), t, input, emitter))
                }
                Some(Processor::Task(t)) => {
                    let ctx = TaskContext {
                        name: name.clone(),
                        input,
                        out: emitter,
                        shutdown: shutdown.clone(),
                        metrics: metrics.clone(),
                    };
                    t.run(ctx)
                }
                Some(Processor::Sink(s)) => {
                    let ctx = SinkContext {
                        name: name.clone(),
                        input,
                        failures: emitter,
                        metrics: metrics.clone(),
                        shutdown: shutdown.clone(),
                    };
                    s.run(ctx)
                }
                None => continue,
            };
        let shutdown = shutdown.clone();
        tasks.spawn(async move { (i, supervise(&name, task, &metrics, &shutdown).await) });
    }
    Ok(RunningFlow {
        nodes,
        edges,
        taps,
        tasks,
        shutdown,
        started: Instant::now(),
    })
}

/// Run one node's task, keeping its state as it changes: running, then finished or failed.
/// A failure (an error or a panic) stops the flow at once: the sources stop, the rest drains.
/// Per node, whether a restart replays its input in the same order: every node on the way up
/// (itself included) has at most one incoming edge, so there is one path back to one source
/// and no two branches can interleave differently from run to run, and that source replays
/// in order ([`crate::processor::ProcessorConfig::replays_in_order`]). See
/// [`crate::committed`].
fn ordered_origins(spec: &FlowSpec) -> Vec<bool> {
    let mut upstream: Vec<Vec<usize>> = vec![Vec::new(); spec.nodes.len()];
    for e in &spec.edges {
        upstream[e.to].push(e.from);
    }
    let in_order: Vec<bool> = spec
        .nodes
        .iter()
        .map(|n| n.config.replays_in_order())
        .collect();
    fn visit(
        i: usize,
        up: &[Vec<usize>],
        sources: &[bool],
        memo: &mut [Option<bool>],
        depth: usize,
    ) -> bool {
        if let Some(v) = memo[i] {
            return v;
        }
        // A validated flow is acyclic; the depth bound keeps a cycle from looping anyway.
        let v = depth <= up.len()
            && match up[i][..] {
                [] => sources[i],
                [u] => visit(u, up, sources, memo, depth + 1),
                _ => false,
            };
        memo[i] = Some(v);
        v
    }
    let mut memo = vec![None; spec.nodes.len()];
    (0..spec.nodes.len())
        .map(|i| visit(i, &upstream, &in_order, &mut memo, 0))
        .collect()
}

async fn supervise(
    name: &str,
    task: futures::future::BoxFuture<'static, Result<(), ProcessorError>>,
    metrics: &NodeMetrics,
    shutdown: &CancellationToken,
) -> Result<(), ProcessorError> {
    metrics.set_state(NodeState::Running, None);
    let result = match AssertUnwindSafe(task).catch_unwind().await {
        Ok(r) => r,
        Err(panic) => {
            let why = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown cause".into());
            Err(ProcessorError::Other(format!("panicked: {why}")))
        }
    };
    match &result {
        Ok(()) => metrics.set_state(NodeState::Finished, None),
        Err(e) => {
            metrics.set_state(NodeState::Failed, Some(e.to_string()));
            // The error itself goes into the report (printed at the end); say now that the
            // flow stops, and why, for whoever watches the log or the API's events.
            tracing::error!(node = name, error = %e, "processor failed: stopping the flow");
            shutdown.cancel();
        }
    }
    result
}

async fn run_transform(
    name: Arc<str>,
    mut t: Box<dyn Transform>,
    mut input: Input,
    mut emitter: Emitter,
) -> Result<(), ProcessorError> {
    let mut out = Output::new(name, emitter.port_count());
    let mut inputs: Vec<u64> = Vec::new();
    while let Some(batch) = input.next().await {
        let tracked = emitter.provenance().is_some();
        if tracked {
            inputs.clear();
            inputs.extend(batch.iter().map(|r| r.id().0));
        }
        for r in batch {
            t.process(r, &mut out);
        }
        if let Some(rec) = emitter.provenance()
            && let Some(e) = abandoned(rec, &inputs, &out)
        {
            rec.record(e).await;
        }
        emitter.flush(&mut out).await?;
    }
    t.finish(&mut out);
    emitter.flush(&mut out).await?;
    Ok(())
}

/// The DROP of the records of a batch (`inputs`, their ids) that a plain transform neither
/// pushed on (as themselves or as the parents of records it made), nor dropped on purpose:
/// it let them go (abandoned, so their sources do not commit them). A plain transform holds
/// nothing between batches, so what is not in `out` after the batch is gone.
fn abandoned(
    rec: &crate::provenance::NodeRecorder,
    inputs: &[u64],
    out: &Output,
) -> Option<crate::provenance::Event> {
    use crate::processor::PortId;
    let mut seen: Vec<u64> = out.dropped_ids().iter().map(|id| id.0).collect();
    for p in 0..out.port_count() {
        for r in out.port(PortId(p)) {
            seen.push(r.id().0);
            seen.extend(r.parents().iter().map(|id| id.0));
        }
    }
    seen.sort_unstable();
    let gone: Vec<u64> = inputs
        .iter()
        .copied()
        .filter(|id| seen.binary_search(id).is_err())
        .collect();
    (!gone.is_empty()).then(|| {
        rec.event(
            crate::provenance::EventKind::Drop,
            crate::provenance::Runs::from_ids(gone),
        )
        .detail("abandoned: the processor let it go without passing it on")
    })
}

/// The provenance store header for a run of `spec`: its nodes and their ports, in order.
pub fn provenance_header(spec: &FlowSpec) -> Header {
    Header {
        flow: spec.name.clone(),
        nodes: spec
            .nodes
            .iter()
            .map(|n| NodeInfo {
                name: n.name.clone(),
                ports: n.outputs.clone(),
            })
            .collect(),
        started: crate::provenance::now_ms(),
    }
}

impl RunningFlow {
    /// The nodes' live counters.
    pub fn nodes(&self) -> &[NodeHandle] {
        &self.nodes
    }

    /// The edges' live counters.
    pub fn edges(&self) -> &[EdgeHandle] {
        &self.edges
    }

    /// Wait until every task has ended and report.
    pub async fn wait(mut self) -> RunReport {
        let mut errors = Vec::new();
        while let Some(joined) = self.tasks.join_next().await {
            match joined {
                Ok((_, Ok(()))) => {}
                Ok((i, Err(e))) => {
                    errors.push(format!("processor `{}` failed: {e}", self.nodes[i].name));
                }
                Err(e) => {
                    // Panics are caught in the task; this is a cancelled task (a runtime
                    // shutting down).
                    errors.push(format!("a processor task ended abnormally: {e}"));
                    self.shutdown.cancel();
                }
            }
        }
        self.report(errors)
    }

    fn report(&self, errors: Vec<String>) -> RunReport {
        self.reporter().report(errors)
    }

    /// What reports on this flow's live counters from elsewhere, also once [`Self::wait`]
    /// has taken the flow (a forced exit writes its report with it).
    pub fn reporter(&self) -> Reporter {
        Reporter {
            nodes: self.nodes.clone(),
            edges: self.edges.clone(),
            taps: self.taps.clone(),
            started: self.started,
        }
    }

    /// Every port's tap.
    pub fn taps(&self) -> &Taps {
        &self.taps
    }

    /// How long the flow has been running.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

/// Reports on a flow's live counters (see [`RunningFlow::reporter`]).
#[derive(Clone)]
pub struct Reporter {
    nodes: Vec<NodeHandle>,
    edges: Vec<EdgeHandle>,
    taps: Taps,
    started: Instant,
}

impl Reporter {
    /// The nodes' live counters.
    pub fn nodes(&self) -> &[NodeHandle] {
        &self.nodes
    }

    /// The edges' live counters.
    pub fn edges(&self) -> &[EdgeHandle] {
        &self.edges
    }

    /// Every port's tap.
    pub fn taps(&self) -> &Taps {
        &self.taps
    }

    /// How long the flow has been running.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// The counters as they are now, with these errors.
    pub fn report(&self, errors: Vec<String>) -> RunReport {
        RunReport {
            elapsed_secs: self.started.elapsed().as_secs_f64(),
            nodes: self
                .nodes
                .iter()
                .map(|n| NodeReport {
                    name: n.name.clone(),
                    type_name: n.type_name.clone(),
                    counters: n.metrics.snapshot(),
                })
                .collect(),
            edges: self
                .edges
                .iter()
                .map(|e| EdgeReport {
                    info: e.info.clone(),
                    counters: e.stats.snapshot(),
                })
                .collect(),
            errors,
        }
    }
}

#[cfg(test)]
mod tests;
