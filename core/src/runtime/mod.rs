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
pub mod shared;
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
use shared::Payload;
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
    injector: Injector,
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
    let mut only_fields_downstream = vec![true; spec.nodes.len()];
    for e in &spec.edges {
        let to = &spec.nodes[e.to].config;
        if to.reads_values() {
            read_downstream[e.from] = true;
            only_fields_downstream[e.from] &= to.reads_only_top_level_fields();
        }
    }
    for (i, n) in spec.nodes.iter().enumerate() {
        let consumers_read_values = read_downstream[i];
        let consumers_read_only_fields = only_fields_downstream[i];
        let p = n
            .config
            .build(&BuildContext {
                name: n.name.clone(),
                consumers_read_values,
                consumers_read_only_fields,
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
        let routes = matches!(&built[e.to], Some(Processor::Transform(t)) if t.routes());
        outputs[e.from][e.port]
            .1
            .push(tx.with_routing_consumer(routes));
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
    // Where a replay re-injects records: a node's input; a source's first connected port
    // (not `failure`), into the inputs of the nodes it goes to.
    let mut points: Vec<InjectPoint> = spec
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let port = (n.kind == Kind::Source)
                .then(|| {
                    (0..n.outputs.len()).find(|&p| {
                        p != crate::processor::PortId::FAILURE.0
                            && spec.edges.iter().any(|e| e.from == i && e.port == p)
                    })
                })
                .flatten();
            InjectPoint {
                name: n.name.clone(),
                tx: None,
                rec: None,
                port,
                downstream: port.map_or_else(Vec::new, |p| {
                    spec.edges
                        .iter()
                        .filter(|e| e.from == i && e.port == p)
                        .map(|e| e.to)
                        .collect()
                }),
            }
        })
        .collect();
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
        let receivers = inputs[i].take().unwrap_or_default();
        let mut watch: Option<Abandon> = None;
        let mut input = Input::new(receivers, metrics.clone()).with_ordered_origins(ordered[i]);
        if let Some(p) = provenance {
            let keep = prov_config.content.contains(&n.name).then_some(max_content);
            let rec = p
                .node(i, n.kind == Kind::Source)
                .with_policy(secrets.clone(), keep);
            watch = Some(Abandon {
                rec: rec.clone(),
                edges: input.watch(),
            });
            input = input.with_provenance(rec.clone());
            if n.kind != Kind::Source {
                let (tx, rx) = tokio::sync::mpsc::channel(INJECTED_BATCHES);
                input = input.with_injection(rx);
                points[i].tx = Some(tx);
            }
            points[i].rec = Some(rec.clone());
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
        tasks.spawn(async move {
            let result = supervise(&name, task, &metrics, &shutdown).await;
            if let Some(watch) = watch {
                watch.record(result.is_err()).await;
            }
            (i, result)
        });
    }
    let injector = Injector(Arc::new(parking_lot::Mutex::new(
        provenance.is_some().then_some(points),
    )));
    Ok(RunningFlow {
        nodes,
        edges,
        taps,
        injector,
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

/// With provenance, what a node's end leaves behind: the records still queued on its
/// incoming edges (abandoned as the edges' consumer end went), and, when it failed, what it
/// held (see [`crate::provenance::Entry::Failed`]).
struct Abandon {
    rec: crate::provenance::NodeRecorder,
    edges: Vec<edge::EdgeWatch>,
}

impl Abandon {
    /// Record the DROP of the records still queued for the node (its task has ended, so its
    /// input is gone), and tell the writer if it `failed`.
    async fn record(self, failed: bool) {
        let queued: Vec<(u64, u32)> = self
            .edges
            .iter()
            .flat_map(edge::EdgeWatch::take_abandoned)
            .collect();
        if !queued.is_empty() {
            let e = self
                .rec
                .event(
                    crate::provenance::EventKind::Drop,
                    crate::provenance::Runs(queued),
                )
                .detail("abandoned: still queued for this node when it ended");
            self.rec.record(e).await;
        }
        if failed {
            self.rec.failed().await;
        } else {
            self.rec.flush().await;
        }
    }
}

async fn run_transform(
    name: Arc<str>,
    mut t: Box<dyn Transform>,
    mut input: Input,
    mut emitter: Emitter,
) -> Result<(), ProcessorError> {
    let mut out = Output::new(name, emitter.port_count());
    // The ids of the records handed to `process` (with provenance): what a transform could
    // lose. A record `route` sent to a port is passed on by the runtime itself.
    let mut inputs: Vec<u64> = Vec::new();
    let routes = t.routes();
    while let Some(payload) = input.next_payload().await {
        let tracked = emitter.provenance().is_some();
        inputs.clear();
        // The last edge to get to a fan-out's records owns them: nothing to copy.
        let payload = match payload {
            Payload::Shared(view) if view.is_only() => Payload::Owned(view.into_batch()),
            p => p,
        };
        match payload {
            Payload::Owned(batch) => {
                for r in crate::prefetch::Prefetched::new(batch) {
                    if routes && let Some(port) = t.route(&r) {
                        out.push(port, r);
                        continue;
                    }
                    if tracked {
                        inputs.push(r.id().0);
                    }
                    t.process(r, &mut out);
                }
            }
            // A fan-out's records, shared with other edges: a record the transform routes
            // nowhere is never copied.
            Payload::Shared(view) => {
                let records = view.records();
                crate::prefetch::first(records);
                for (i, r) in records.iter().enumerate() {
                    crate::prefetch::ahead(records, i);
                    match t.route(r) {
                        Some(port) if emitter.sheds(port) => out.shed(port, view.id(i)),
                        Some(port) => out.push(port, view.copy(i)),
                        None => {
                            if tracked {
                                inputs.push(view.id(i).0);
                            }
                            t.process(view.copy(i), &mut out);
                        }
                    }
                }
                view.finish();
            }
        }
        if let Some(rec) = emitter.provenance()
            && !inputs.is_empty()
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
    // Every id that came out: dropped on purpose, pushed on (itself, and the records it was
    // made from), in that order. Plain loops: this runs for every record of every plain
    // transform, and the nested iterator adapters cost about three times as much.
    fn each_seen(out: &Output, mut f: impl FnMut(u64)) {
        for id in out.dropped_ids() {
            f(id.0);
        }
        for p in 0..out.port_count() {
            for id in out.shed_ids(PortId(p)) {
                f(id.0);
            }
            for r in out.port(PortId(p)) {
                f(r.id().0);
                for id in r.parents() {
                    f(id.0);
                }
            }
        }
    }
    let gone: Vec<u64> = if inputs.is_sorted() {
        // Ids are made in order and most transforms keep it: walk the inputs along with what
        // came out, searching only where the order breaks. No sort, no copy of the outputs.
        let mut kept = vec![false; inputs.len()];
        let mut next = 0;
        each_seen(out, |id| {
            let at = if inputs.get(next) == Some(&id) {
                Some(next)
            } else {
                inputs.binary_search(&id).ok()
            };
            if let Some(i) = at {
                kept[i] = true;
                next = i + 1;
            }
        });
        inputs
            .iter()
            .zip(kept)
            .filter_map(|(id, kept)| (!kept).then_some(*id))
            .collect()
    } else {
        let mut seen: Vec<u64> = Vec::new();
        each_seen(out, |id| seen.push(id));
        seen.sort_unstable();
        inputs
            .iter()
            .copied()
            .filter(|id| seen.binary_search(id).is_err())
            .collect()
    };
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
        // Every node has ended: nothing is re-injected any more, and the recorders the
        // injector holds must go for the provenance store to close.
        self.injector.close();
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
            injector: self.injector.clone(),
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
    injector: Injector,
    started: Instant,
}

impl Reporter {
    /// Where a replay re-injects records into the flow.
    pub fn injector(&self) -> &Injector {
        &self.injector
    }

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

/// How many re-injected batches wait for a node before a replay waits for it.
const INJECTED_BATCHES: usize = 16;

/// Where a replay re-injects records into a running flow (`POST
/// /api/v1/provenance/replay/{id}`): per node, a queue into its input (taken before its
/// edges, never keeping it open) and its provenance recorder. Only with provenance on.
#[derive(Clone, Default)]
pub struct Injector(Arc<parking_lot::Mutex<Option<Vec<InjectPoint>>>>);

struct InjectPoint {
    name: String,
    /// A transform's or sink's input.
    tx: Option<tokio::sync::mpsc::Sender<edge::Batch>>,
    rec: Option<crate::provenance::NodeRecorder>,
    /// A source: the port its records leave by, and the nodes it goes to.
    port: Option<usize>,
    downstream: Vec<usize>,
}

/// Why a record could not be re-injected.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    /// The flow records no provenance, or has ended.
    #[error("the flow is not running with provenance (it has ended, or runs without it)")]
    NotRunning,
    /// No such node (the store is of another version of the flow).
    #[error("the flow has no processor `{0}` to re-inject into")]
    UnknownNode(String),
    /// A source whose records go nowhere, or a node that stopped taking input.
    #[error("processor `{0}` takes no more input: nothing to re-inject into")]
    Closed(String),
}

impl Injector {
    /// Forget every node: the flow has ended.
    pub fn close(&self) {
        self.0.lock().take();
    }

    /// Re-inject `record` (made of the kept content of record `original`) where `node`
    /// took `original` in: into a transform's or sink's input, or, for a source, into the
    /// inputs of the nodes its records go to (a copy each, each with a new id). Records a
    /// REPLAY event at `node` linking `original` to the new records (lineage follows it
    /// like a FORK) before they are taken in. Returns the new records' ids.
    pub async fn inject(
        &self,
        node: &str,
        original: crate::record::RecordId,
        record: crate::record::Record,
    ) -> Result<Vec<crate::record::RecordId>, InjectError> {
        use crate::provenance::{Children, EventKind, Runs};
        let (rec, port, sends) = {
            let points = self.0.lock();
            let points = points.as_ref().ok_or(InjectError::NotRunning)?;
            let at = points
                .iter()
                .position(|p| p.name == node)
                .ok_or_else(|| InjectError::UnknownNode(node.to_owned()))?;
            let p = &points[at];
            let sends: Vec<(usize, tokio::sync::mpsc::Sender<edge::Batch>)> = match &p.tx {
                Some(tx) => vec![(at, tx.clone())],
                None => p
                    .downstream
                    .iter()
                    .filter_map(|&to| points.get(to)?.tx.clone().map(|tx| (to, tx)))
                    .collect(),
            };
            if sends.is_empty() {
                return Err(InjectError::Closed(node.to_owned()));
            }
            (p.rec.clone(), p.port.unwrap_or(0), sends)
        };
        let mut copies = Vec::with_capacity(sends.len());
        for (k, (to, tx)) in sends.into_iter().enumerate() {
            let mut r = record.clone();
            // Made as it was kept: not a change at the node it enters.
            r.take_modified();
            if k > 0 {
                r.set_id(crate::record::RecordId::next());
            }
            copies.push((to, tx, r));
        }
        if let Some(rec) = &rec {
            let mut e = rec
                .event(EventKind::Replay, Runs::run(original.0, 1))
                .at(port);
            e.children = copies
                .iter()
                .map(|(to, _, r)| Children {
                    port: u32::try_from(port).unwrap_or(u32::MAX),
                    to: u32::try_from(*to).ok(),
                    ids: Runs::run(r.id().0, 1),
                })
                .collect();
            rec.record(e).await;
        }
        let mut ids = Vec::with_capacity(copies.len());
        for (_, tx, r) in copies {
            let id = r.id();
            tx.send(vec![r])
                .await
                .map_err(|_| InjectError::Closed(node.to_owned()))?;
            ids.push(id);
        }
        Ok(ids)
    }
}
