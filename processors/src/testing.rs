//! Helpers that keep processor tests short: run a transform over records, wire a source or a
//! sink to real edges.

use std::sync::Arc;

use flow_core::processor::{
    BuildContext, Output, PortId, Processor, ProcessorConfig, Sink, SinkContext, Source,
    SourceContext, Transform,
};
use flow_core::record::Record;
use flow_core::runtime::CancellationToken;
use flow_core::runtime::edge::{Batch, EdgeReceiver, EdgeSender, WhenFull, edge};
use flow_core::runtime::emit::{Emitter, Input};
use flow_core::runtime::metrics::NodeMetrics;

pub const NAME: &str = "under_test";

/// Build a config into its running processor.
fn build(cfg: &dyn ProcessorConfig) -> Processor {
    let errors = cfg.validate();
    assert!(errors.is_empty(), "invalid config: {errors:?}");
    let ctx = BuildContext::new(NAME);
    match cfg.build(&ctx) {
        Ok(p) => p,
        Err(e) => panic!("build failed: {e}"),
    }
}

pub fn transform(cfg: &dyn ProcessorConfig) -> Box<dyn Transform> {
    match build(cfg) {
        Processor::Transform(t) => t,
        _ => panic!("not a transform"),
    }
}

pub fn source(cfg: &dyn ProcessorConfig) -> Box<dyn Source> {
    match build(cfg) {
        Processor::Source(s) => s,
        _ => panic!("not a source"),
    }
}

pub fn sink(cfg: &dyn ProcessorConfig) -> Box<dyn Sink> {
    match build(cfg) {
        Processor::Sink(s) => s,
        _ => panic!("not a sink"),
    }
}

/// Parse a config from JSON (same serde path as YAML).
pub fn config<C: serde::de::DeserializeOwned>(json: serde_json::Value) -> C {
    serde_json::from_value(json).expect("config parses")
}

/// A record over raw content.
pub fn rec(content: &str) -> Record {
    Record::from_bytes(content.as_bytes().to_vec())
}

/// Run a transform over `records` with `outputs` declared ports (failure excluded).
pub fn run_transform(t: &mut dyn Transform, records: Vec<Record>, outputs: usize) -> Output {
    let mut out = Output::new(NAME.into(), outputs + 1);
    for r in records {
        t.process(r, &mut out);
    }
    t.finish(&mut out);
    out
}

/// The contents pushed to `port`, as strings.
pub fn contents(out: &Output, port: PortId) -> Vec<String> {
    out.port(port)
        .iter()
        .map(|r| {
            let mut r = r.clone();
            // A look, not an end of the record: the copy's acks are released.
            r.take_acks().release();
            String::from_utf8_lossy(r.content()).into_owned()
        })
        .collect()
}

/// A source context with `outputs` declared ports, each wired to one unbounded edge.
pub struct SourceHarness {
    pub ctx: SourceContext,
    /// One receiver per port, failure first.
    pub ports: Vec<EdgeReceiver>,
    pub metrics: Arc<NodeMetrics>,
    pub shutdown: CancellationToken,
}

pub fn source_ctx(outputs: usize) -> SourceHarness {
    let metrics = Arc::new(NodeMetrics::default());
    let mut ports = Vec::new();
    let mut receivers = Vec::new();
    for i in 0..=outputs {
        let (tx, rx, _) = edge(usize::MAX, usize::MAX, WhenFull::Block);
        ports.push((format!("port{i}"), vec![tx]));
        receivers.push(rx);
    }
    let shutdown = CancellationToken::new();
    let ctx = SourceContext {
        name: NAME.into(),
        out: Emitter::new(NAME.into(), ports, metrics.clone()),
        shutdown: shutdown.clone(),
        metrics: metrics.clone(),
    };
    SourceHarness {
        ctx,
        ports: receivers,
        metrics,
        shutdown,
    }
}

/// Every batch left on an edge whose producer is gone.
pub async fn drain(rx: &mut EdgeReceiver) -> Vec<Batch> {
    let mut batches = Vec::new();
    while let Some(b) = rx.recv().await {
        batches.push(b);
    }
    batches
}

/// Every record left on an edge whose producer is gone, finished as a sink would (so the source
/// that made them can finish while the test still looks at them).
pub async fn records(rx: &mut EdgeReceiver) -> Vec<Record> {
    let mut records: Vec<Record> = drain(rx).await.into_iter().flatten().collect();
    for r in &mut records {
        r.take_acks().release();
    }
    records
}

/// A sink context fed by the returned sender; its failure port goes to the returned receiver.
pub fn sink_ctx() -> (SinkContext, EdgeSender, EdgeReceiver, Arc<NodeMetrics>) {
    let (ctx, tx, failures, metrics, _) = sink_ctx_stoppable();
    (ctx, tx, failures, metrics)
}

/// [`sink_ctx`], and the token that asks the sink to stop.
pub fn sink_ctx_stoppable() -> (
    SinkContext,
    EdgeSender,
    EdgeReceiver,
    Arc<NodeMetrics>,
    CancellationToken,
) {
    let metrics = Arc::new(NodeMetrics::default());
    let (in_tx, in_rx, _) = edge(usize::MAX, usize::MAX, WhenFull::Block);
    let (f_tx, f_rx, _) = edge(usize::MAX, usize::MAX, WhenFull::Block);
    let shutdown = CancellationToken::new();
    let ctx = SinkContext {
        name: NAME.into(),
        // One edge from the test: records come in the order they are sent.
        input: Input::new(vec![in_rx], metrics.clone()).with_ordered_origins(true),
        failures: Emitter::new(
            NAME.into(),
            vec![("failure".into(), vec![f_tx])],
            metrics.clone(),
        ),
        metrics: metrics.clone(),
        shutdown: shutdown.clone(),
    };
    (ctx, in_tx, f_rx, metrics, shutdown)
}
