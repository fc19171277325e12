//! Running one test: the flow itself, through the runtime, with its sources and sinks swapped
//! for test doubles, on a paused tokio runtime whose clock only the test moves.
//!
//! - Every source becomes an *injector*: a [`Source`] that emits the records the test gives
//!   it, each block as one batch with its own acknowledgement token, and waits for every token
//!   before it ends, as a real source does. A node the test injects at that is a transform
//!   gets an injector of its own, connected to its input.
//! - Every sink becomes a *capture*: a [`Sink`] that keeps what reaches it and finishes each
//!   record. A `node.port` the test checks gets a capture connected to it (one more edge on
//!   the port; the rest of the graph is as written).
//! - Transforms are built from the flow's config and run for real: VRL, windows (with their
//!   state files, under the test's directory), plugins.
//!
//! The driver runs the test's steps in order. After records go in, it lets the flow *settle*
//! (every edge empty and every injector done emitting) without moving the clock; `advance`
//! sleeps on the paused clock, so tokio fires every timer that falls due on the way (idle
//! timeouts, processing-time windows, checkpoints) in order, each with everything it causes
//! before the next. At the end the injectors close, the flow drains as at the end of a
//! bounded input (windows emit what is open), and the outputs are checked.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::sync::mpsc;

use super::check::{Captured, canonical, check};
use super::file::{ContentKind, Expectation, InputRecord, Step, TestCase};
use crate::ack::{AckStatus, AckTracker, Acks};
use crate::clock::Clock;
use crate::processor::{
    BuildContext, BuildError, Kind, Output, PortId, Processor, ProcessorConfig, ProcessorError,
    Sink, SinkContext, Source, SourceContext,
};
use crate::record::{JsonView, Record, Value};
use crate::runtime::edge::EdgeStats;
use crate::runtime::{self, CancellationToken};
use crate::spec::{EdgeSettings, EdgeSpec, FlowSpec, NodeSpec, Pos};

/// How one test ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Every expectation held.
    Passed,
    /// What did not hold, one readable block each.
    Failed(Vec<String>),
}

/// What an injector did, for the driver.
#[derive(Debug, Default)]
struct Progress {
    /// Blocks handed to it.
    handed: AtomicU64,
    /// Blocks it has emitted.
    emitted: AtomicU64,
    /// It has stopped taking blocks.
    ended: AtomicBool,
    /// Batches that finished abandoned (a processor lost or dropped records unfinished).
    abandoned: AtomicU64,
}

type Feed = mpsc::UnboundedSender<Vec<InputRecord>>;
type Store = Arc<Mutex<Vec<Captured>>>;

/// Stands in for a source, or feeds a transform.
#[derive(Debug)]
struct InjectorConfig {
    outputs: Vec<String>,
    /// Standing in for a source: JSON lines that do not parse go to `failure`, as a source
    /// sends them. Feeding a transform: they go in as they are, for it to fail.
    as_source: bool,
    feed: Mutex<Option<mpsc::UnboundedReceiver<Vec<InputRecord>>>>,
    progress: Arc<Progress>,
}

impl ProcessorConfig for InjectorConfig {
    fn outputs(&self) -> Vec<String> {
        self.outputs.clone()
    }

    fn build(&self, _ctx: &BuildContext) -> Result<Processor, BuildError> {
        let feed = self
            .feed
            .lock()
            .take()
            .ok_or_else(|| BuildError("a test input was built twice".into()))?;
        Ok(Processor::Source(Box::new(Injector {
            as_source: self.as_source,
            feed,
            progress: self.progress.clone(),
        })))
    }
}

struct Injector {
    as_source: bool,
    feed: mpsc::UnboundedReceiver<Vec<InputRecord>>,
    progress: Arc<Progress>,
}

impl Injector {
    fn record(&self, input: InputRecord, acks: Acks, out: &mut Output) {
        let InputRecord {
            content,
            kind,
            attributes,
            event_time,
        } = input;
        let (mut record, error) = match kind {
            ContentKind::Text => (Record::from_text(content), None),
            ContentKind::Json | ContentKind::JsonLine => {
                match Record::json(content, JsonView::Eager) {
                    Ok(r) => (r, None),
                    Err((r, e)) => (r, Some(e)),
                }
            }
        };
        record.set_event_time(event_time);
        let record = record.with_attributes(attributes).with_acks(acks);
        match error {
            Some(e) if self.as_source => out.fail(record, &e),
            _ => out.push(PortId::DEFAULT, record),
        }
    }
}

#[async_trait]
impl Source for Injector {
    async fn run(mut self: Box<Self>, ctx: SourceContext) -> Result<(), ProcessorError> {
        // (The doubles keep no counters: nothing reads them.)
        let SourceContext {
            name,
            out: mut emitter,
            shutdown,
            ..
        } = ctx;
        let mut tracker = AckTracker::named(name.clone());
        let mut out = Output::new(name, emitter.port_count());
        let mut seq = 0;
        let result = loop {
            let block = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break Ok(()),
                block = self.feed.recv() => block,
            };
            let Some(block) = block else { break Ok(()) };
            let token = tracker.token(seq);
            seq += 1;
            for input in block {
                self.record(input, Acks::one(token.clone()), &mut out);
            }
            drop(token);
            if let Err(e) = emitter.flush(&mut out).await {
                break Err(ProcessorError::from(e));
            }
            self.progress.emitted.fetch_add(1, Ordering::AcqRel);
        };
        self.progress.ended.store(true, Ordering::Release);
        // As a source does: let the flow drain, then wait for every batch to finish.
        drop(emitter);
        while let Some(f) = tracker.next().await {
            if f.status == AckStatus::Abandoned {
                self.progress.abandoned.fetch_add(1, Ordering::AcqRel);
            }
        }
        result
    }
}

/// Stands in for a sink, or listens on a port.
#[derive(Debug)]
struct CaptureConfig {
    store: Store,
}

impl ProcessorConfig for CaptureConfig {
    fn outputs(&self) -> Vec<String> {
        Vec::new()
    }

    fn build(&self, _ctx: &BuildContext) -> Result<Processor, BuildError> {
        Ok(Processor::Sink(Box::new(Capture {
            store: self.store.clone(),
        })))
    }
}

struct Capture {
    store: Store,
}

#[async_trait]
impl Sink for Capture {
    async fn run(self: Box<Self>, mut ctx: SinkContext) -> Result<(), ProcessorError> {
        while let Some(batch) = ctx.input.next().await {
            let mut kept = Vec::with_capacity(batch.len());
            for mut r in batch {
                let value = match r.value() {
                    Ok(v) => v.clone(),
                    // Not JSON (a malformed line on its way to `failure`): its text.
                    Err(_) => Value::Bytes(r.content().clone()),
                };
                let json =
                    serde_json::to_value(&value).map_or(serde_json::Value::Null, |j| canonical(&j));
                kept.push(Captured {
                    value,
                    json,
                    attributes: r.attributes().clone(),
                });
                r.finish();
            }
            self.store.lock().extend(kept);
        }
        Ok(())
    }
}

/// The flow with its doubles in place.
struct Rigged {
    feeds: HashMap<String, (Feed, Arc<Progress>)>,
    progress: Vec<(String, Arc<Progress>)>,
    captures: HashMap<(usize, Option<usize>), Store>,
}

fn injector(outputs: Vec<String>, as_source: bool) -> (InjectorConfig, Feed, Arc<Progress>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let progress = Arc::new(Progress::default());
    let config = InjectorConfig {
        outputs,
        as_source,
        feed: Mutex::new(Some(rx)),
        progress: progress.clone(),
    };
    (config, tx, progress)
}

fn extra_node(name: String, kind: Kind, config: Box<dyn ProcessorConfig>) -> NodeSpec {
    let mut outputs = vec![crate::processor::FAILURE.to_owned()];
    outputs.extend(config.outputs());
    NodeSpec {
        type_name: match kind {
            Kind::Source => "test input".into(),
            _ => "test capture".into(),
        },
        name,
        kind,
        config,
        settings: serde_json::Value::Null,
        outputs,
        pos: Pos::default(),
    }
}

fn rig(flow: &mut FlowSpec, steps: &[Step], outputs: &[Expectation]) -> Rigged {
    let mut rigged = Rigged {
        feeds: HashMap::new(),
        progress: Vec::new(),
        captures: HashMap::new(),
    };
    for (i, n) in flow.nodes.iter_mut().enumerate() {
        match n.kind {
            Kind::Source => {
                let declared = n.outputs.iter().skip(1).cloned().collect();
                let (config, feed, progress) = injector(declared, true);
                n.config = Box::new(config);
                rigged.progress.push((n.name.clone(), progress.clone()));
                rigged.feeds.insert(n.name.clone(), (feed, progress));
            }
            Kind::Sink => {
                let store = Store::default();
                n.config = Box::new(CaptureConfig {
                    store: store.clone(),
                });
                rigged.captures.insert((i, None), store);
            }
            Kind::Transform => {}
        }
    }
    let expectations = steps
        .iter()
        .flat_map(|s| match s {
            Step::Expect(list) => list.as_slice(),
            _ => &[],
        })
        .chain(outputs);
    for e in expectations {
        let key = (e.node, e.port);
        if rigged.captures.contains_key(&key) {
            continue;
        }
        let store = Store::default();
        let to = flow.nodes.len();
        flow.nodes.push(extra_node(
            format!("test capture of {}", e.at),
            Kind::Sink,
            Box::new(CaptureConfig {
                store: store.clone(),
            }),
        ));
        flow.edges.push(EdgeSpec {
            from: e.node,
            port: e.port.unwrap_or(1),
            to,
            settings: EdgeSettings::default(),
            pos: Pos::default(),
        });
        rigged.captures.insert(key, store);
    }
    for s in steps {
        let Step::Inject(inject) = s else { continue };
        if rigged.feeds.contains_key(&inject.node) {
            continue;
        }
        let Some(target) = flow.nodes.iter().position(|n| n.name == inject.node) else {
            continue;
        };
        let (config, feed, progress) = injector(vec!["out".into()], false);
        let from = flow.nodes.len();
        flow.nodes.push(extra_node(
            format!("test input of {}", inject.node),
            Kind::Source,
            Box::new(config),
        ));
        flow.edges.push(EdgeSpec {
            from,
            port: 1,
            to: target,
            settings: EdgeSettings::default(),
            pos: Pos::default(),
        });
        rigged
            .progress
            .push((inject.node.clone(), progress.clone()));
        rigged.feeds.insert(inject.node.clone(), (feed, progress));
    }
    rigged
}

/// Run a test on its own thread and paused runtime; give up after `timeout` of real time.
pub(crate) fn run(case: TestCase, timeout: Duration) -> Outcome {
    let (tx, rx) = std::sync::mpsc::channel();
    let name = case.name.clone();
    let spawned = std::thread::Builder::new()
        .name("flow-test".into())
        .spawn(move || {
            let outcome = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .start_paused(true)
                .build()
            {
                Ok(rt) => rt.block_on(drive(case)),
                Err(e) => Outcome::Failed(vec![format!("cannot start a runtime: {e}")]),
            };
            let _ = tx.send(outcome);
        });
    if let Err(e) = spawned {
        return Outcome::Failed(vec![format!("cannot start the test's thread: {e}")]);
    }
    match rx.recv_timeout(timeout) {
        Ok(outcome) => outcome,
        Err(_) => Outcome::Failed(vec![format!(
            "test `{name}` did not finish within {} of real time: a processor may be waiting \
             for something the test does not give it",
            humantime::format_duration(timeout)
        )]),
    }
}

async fn drive(mut case: TestCase) -> Outcome {
    let rigged = rig(&mut case.flow, &case.steps, &case.outputs);
    let shutdown = CancellationToken::new();
    let clock = Clock::starting_at(case.clock_start);
    let running = match runtime::start_with_clock(&case.flow, shutdown, clock) {
        Ok(r) => r,
        Err(e) => return Outcome::Failed(vec![format!("the flow does not start: {e}")]),
    };
    let edges: Vec<Arc<EdgeStats>> = running.edges().iter().map(|e| e.stats.clone()).collect();
    let mut problems = Vec::new();
    let mut feeds = rigged.feeds;
    for (i, step) in case.steps.iter().enumerate() {
        match step {
            Step::Inject(inject) => {
                if let Some((feed, progress)) = feeds.get(&inject.node)
                    && feed.send(inject.records.clone()).is_ok()
                {
                    progress.handed.fetch_add(1, Ordering::AcqRel);
                }
                settle(&edges, &rigged.progress).await;
            }
            Step::Advance(d) => {
                tokio::time::sleep(*d).await;
                settle(&edges, &rigged.progress).await;
            }
            Step::Expect(list) => {
                for e in list {
                    let got = captured(&rigged.captures, e);
                    for p in check(e, &got) {
                        problems.push(format!("at step {} (`expect`): {p}", i + 1));
                    }
                }
            }
        }
    }
    // The end of the input: injectors close, the flow drains.
    feeds.clear();
    let report = running.wait().await;
    // The test's directory goes; failing to remove a temporary directory is not the test's
    // failure (the system cleans its temporary files).
    let _ = case.dir.close();
    for e in &case.outputs {
        let got = captured(&rigged.captures, e);
        problems.extend(check(e, &got));
    }
    for e in &report.errors {
        problems.push(format!("the flow failed: {e}"));
    }
    for (node, p) in &rigged.progress {
        let n = p.abandoned.load(Ordering::Acquire);
        if n > 0 {
            problems.push(format!(
                "{n} batch(es) injected at `{node}` were abandoned: a processor stopped or lost \
                 records without finishing them (a real source would not commit them)"
            ));
        }
    }
    if problems.is_empty() {
        return Outcome::Passed;
    }
    // Records sent to a `failure` port the test does not look at often explain a difference.
    for (i, (n, spec)) in report.nodes.iter().zip(&case.flow.nodes).enumerate() {
        let seen = rigged.captures.contains_key(&(i, Some(PortId::FAILURE.0)));
        if n.counters.failed > 0 && !seen && !spec.type_name.starts_with("test ") {
            problems.push(format!(
                "note: `{}` sent {} record(s) to its `failure` port (expect on `{}.failure` to \
                 see them)",
                n.name, n.counters.failed, n.name
            ));
        }
    }
    Outcome::Failed(problems)
}

fn captured(captures: &HashMap<(usize, Option<usize>), Store>, e: &Expectation) -> Vec<Captured> {
    captures
        .get(&(e.node, e.port))
        .map(|s| s.lock().clone())
        .unwrap_or_default()
}

/// Let everything the last step caused happen, without moving the clock: yield until every
/// edge is empty and every injector has emitted what it was handed, twice in a row. A task
/// waiting on a blocking operation (a window opening its state file) keeps its input edge
/// full, so it is waited for; one waiting on a timer is left for the next `advance`.
async fn settle(edges: &[Arc<EdgeStats>], injectors: &[(String, Arc<Progress>)]) {
    // A guard against a flow that never quiets (it would be a bug); real time, not the clock.
    let give_up = Instant::now() + Duration::from_secs(30);
    let mut quiet = 0;
    while quiet < 2 && Instant::now() < give_up {
        tokio::task::yield_now().await;
        let busy = edges.iter().any(|e| e.records.load(Ordering::Acquire) > 0)
            || injectors.iter().any(|(_, p)| {
                !p.ended.load(Ordering::Acquire)
                    && p.emitted.load(Ordering::Acquire) < p.handed.load(Ordering::Acquire)
            });
        quiet = if busy { 0 } else { quiet + 1 };
    }
}
