//! The running `wasm` processor: a task that feeds batches to a plugin instance on a thread of
//! its own, and emits what the plugin answered.
//!
//! **Why a thread.** A guest call is CPU work that may run up to its deadline (a second by
//! default). Run on a tokio worker it would hold that worker, and a two-core machine has two:
//! every other node would stall behind it. wasmtime's async mode with epoch yields would give
//! the worker back between slices, but the guest's CPU time would still be taken from the
//! runtime's few workers. A dedicated thread per processor leaves the scheduling to the OS,
//! keeps the tokio workers for I/O, and needs neither fibers nor async host calls. The task
//! keeps two batches in flight (one in the plugin, one queued), so receiving and emitting
//! overlap with the guest's work; answers are emitted in order.
//!
//! **Acknowledgement.** Every output is made from the input it answers: a pass-through output
//! is the input record itself (a copy of it when there are several), new content becomes a
//! child record with the input as parent; the input's acknowledgement tokens move to its
//! outputs, so a source commits an input only once everything the plugin made of it is
//! finished. An input with no outputs is dropped on purpose; an input the plugin failed, or
//! whose whole call failed, goes to `failure` with the reason in `error.message`.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use flow_core::clock::Clock;
use flow_core::processor::{Output, PortId, ProcessorError, TaskContext, TaskTransform};
use flow_core::record::Record;
use flow_core::runtime::metrics::NodeMetrics;
use tokio::sync::{mpsc, oneshot};

use crate::bindings::{Input, Outcome, Output as PluginOutput};
use crate::module::{Module, sha256};
use crate::sandbox::{CallError, Grants, Instance, Limits};

/// Batches in flight between the task and the plugin thread.
const IN_FLIGHT: usize = 2;
/// Bytes counted per output besides its content and attributes (for `max_output_bytes`).
const OUTPUT_OVERHEAD: usize = 32;
/// Call failures are logged at most this often.
const LOG_EVERY: Duration = Duration::from_secs(5);

/// The built processor.
pub struct WasmProcessor {
    clock: Clock,
    worker: Worker,
}

impl WasmProcessor {
    pub(crate) fn new(
        module: Arc<Module>,
        instance: Instance,
        limits: Limits,
        grants: Grants,
        config: String,
        max_batch: usize,
        watch: Duration,
    ) -> Self {
        let path = module.path.clone();
        let stamp = stamp(&path);
        Self {
            clock: Clock::system(),
            worker: Worker {
                name: Arc::from(""),
                ports: module.info.outputs.clone(),
                module,
                instance: Some(instance),
                limits,
                grants,
                config,
                max_batch: max_batch.max(1),
                watch: Watch {
                    path,
                    every: watch,
                    last_check: Instant::now(),
                    stamp,
                    refused: None,
                },
                failures: Burst::default(),
                metrics: None,
            },
        }
    }
}

impl WasmProcessor {
    /// Read processing time from `clock` (the flow's; the system clock otherwise).
    pub(crate) fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }
}

struct Job {
    batch: Vec<Record>,
    /// The flow's processing time when the batch was handed over (a granted wall clock).
    now_ms: i64,
    reply: oneshot::Sender<Output>,
}

#[async_trait]
impl TaskTransform for WasmProcessor {
    async fn run(self: Box<Self>, mut ctx: TaskContext) -> Result<(), ProcessorError> {
        let WasmProcessor { clock, mut worker } = *self;
        worker.name = ctx.name.clone();
        worker.metrics = Some(ctx.metrics.clone());
        worker.publish();
        let ports = ctx.out.port_count();
        let (tx, rx) = mpsc::channel::<Job>(1);
        std::thread::Builder::new()
            .name(format!("wasm:{}", ctx.name))
            .spawn(move || worker.run(rx, ports))
            .map_err(|e| ProcessorError::other(format!("cannot start the plugin thread: {e}")))?;
        let stopped = || ProcessorError::other("the plugin thread stopped");
        let mut pending: VecDeque<oneshot::Receiver<Output>> = VecDeque::new();
        let mut input_done = false;
        loop {
            tokio::select! {
                biased;
                out = front(&mut pending), if !pending.is_empty() => {
                    pending.pop_front();
                    let mut out = out.ok_or_else(stopped)?;
                    ctx.metrics.add_dropped(out.take_dropped());
                    ctx.out.flush(&mut out).await?;
                }
                batch = ctx.input.next(), if !input_done && pending.len() < IN_FLIGHT => {
                    match batch {
                        Some(batch) => {
                            // `Input::next` counted it as received.
                            let (reply, answer) = oneshot::channel();
                            tx.send(Job { batch, now_ms: clock.now_ms(), reply }).await.map_err(|_| stopped())?;
                            pending.push_back(answer);
                        }
                        None => input_done = true,
                    }
                }
                else => break,
            }
        }
        Ok(())
    }
}

/// The answer at the front of the queue (`None` if the thread dropped it).
async fn front(pending: &mut VecDeque<oneshot::Receiver<Output>>) -> Option<Output> {
    match pending.front_mut() {
        Some(rx) => rx.await.ok(),
        None => std::future::pending().await,
    }
}

/// The plugin's side: owns the instance, runs on its own thread.
struct Worker {
    name: Arc<str>,
    module: Arc<Module>,
    ports: Vec<String>,
    instance: Option<Instance>,
    limits: Limits,
    grants: Grants,
    config: String,
    max_batch: usize,
    watch: Watch,
    failures: Burst,
    metrics: Option<Arc<NodeMetrics>>,
}

struct Watch {
    path: PathBuf,
    every: Duration,
    last_check: Instant,
    stamp: Option<(u64, SystemTime)>,
    refused: Option<String>,
}

/// Counts failures between log lines.
#[derive(Default)]
struct Burst {
    last: Option<Instant>,
    suppressed: u64,
}

impl Worker {
    /// Say which plugin version runs (the node's `status.plugin`).
    fn publish(&self) {
        if let Some(m) = &self.metrics {
            let info = &self.module.info;
            m.set_status(
                "plugin",
                serde_json::json!({
                    "name": info.name,
                    "version": info.version,
                    "sha256": self.module.hash,
                }),
            );
        }
    }

    fn run(mut self, mut rx: mpsc::Receiver<Job>, ports: usize) {
        while let Some(job) = rx.blocking_recv() {
            self.reload_if_changed();
            self.grants.time.set(job.now_ms);
            let mut out = Output::new(self.name.clone(), ports);
            self.handle(job.batch, &mut out);
            // The task may be gone (the flow is failing); the records then drop with `out`.
            let _ = job.reply.send(out);
        }
    }

    fn handle(&mut self, mut batch: Vec<Record>, out: &mut Output) {
        while !batch.is_empty() {
            let rest = if batch.len() > self.max_batch {
                batch.split_off(self.max_batch)
            } else {
                Vec::new()
            };
            self.call(batch, out);
            batch = rest;
        }
    }

    /// The live instance, made (and given its config) when there is none.
    fn instance(&mut self) -> Result<&mut Instance, CallError> {
        if self.instance.is_none() {
            let mut fresh =
                Instance::new(&self.module, &self.limits, &self.grants, self.name.clone())?;
            match fresh.init(&self.config)? {
                Ok(()) => {}
                Err(msg) => {
                    return Err(CallError::Instantiate(format!(
                        "the plugin refused its config: {msg}"
                    )));
                }
            }
            self.instance = Some(fresh);
        }
        self.instance
            .as_mut()
            .ok_or_else(|| CallError::Instantiate("no instance".into()))
    }

    fn call(&mut self, mut records: Vec<Record>, out: &mut Output) {
        let inputs: Vec<Input> = records.iter_mut().map(to_input).collect();
        let answer = self
            .instance()
            .and_then(|i| i.process(&inputs))
            .and_then(|outcomes| {
                let size = answer_size(&outcomes);
                if size > self.limits.max_output_bytes {
                    Err(CallError::OutputTooLarge {
                        size,
                        cap: self.limits.max_output_bytes,
                    })
                } else {
                    Ok(outcomes)
                }
            });
        drop(inputs);
        match answer {
            Ok(outcomes) => {
                for (record, outcome) in records.into_iter().zip(outcomes) {
                    self.apply(record, outcome, out);
                }
            }
            Err(e) => {
                // The instance may be in any state: start over with a fresh one.
                self.instance = None;
                self.log_failure(&e, records.len());
                let reason = e.to_string();
                for r in records {
                    out.fail(r, &reason);
                }
            }
        }
    }

    fn log_failure(&mut self, e: &CallError, records: usize) {
        let now = Instant::now();
        let b = &mut self.failures;
        if b.last.is_some_and(|t| now.duration_since(t) < LOG_EVERY) {
            b.suppressed += 1;
            return;
        }
        tracing::warn!(
            processor = &*self.name,
            records,
            earlier_failures = b.suppressed,
            error = %e,
            "plugin call failed: its batch goes to `failure`, the instance is rebuilt"
        );
        b.last = Some(now);
        b.suppressed = 0;
    }

    /// Route what the plugin made of one input.
    fn apply(&self, mut record: Record, outcome: Outcome, out: &mut Output) {
        let outputs = match outcome {
            Err(message) => return out.fail(record, &message),
            Ok(outputs) if outputs.is_empty() => return out.drop_record(record),
            Ok(outputs) => outputs,
        };
        let mut ports = Vec::with_capacity(outputs.len());
        for o in &outputs {
            match self.ports.iter().position(|p| *p == o.port) {
                Some(i) => ports.push(PortId(i + 1)),
                None => {
                    let msg = format!(
                        "plugin answered an output for port `{}`, which it does not declare (its ports: {})",
                        o.port,
                        self.ports.join(", ")
                    );
                    return out.fail(record, &msg);
                }
            }
        }
        // The input's tokens move to its outputs: it is finished when they all are, and the
        // input itself, holding none, finishes nothing when it drops.
        let acks = record.take_acks();
        let mut outputs: Vec<(PluginOutput, PortId)> = outputs.into_iter().zip(ports).collect();
        let last = outputs.pop();
        for (o, port) in outputs {
            let base = match o.content {
                // A fan-out copy: it shares the parse with the record (and its other copies).
                None => record.fork(),
                Some(content) => child_of(&record, content),
            };
            out.push(
                port,
                decorate(base.with_acks(acks.clone()), o.attributes, o.event_time),
            );
        }
        if let Some((o, port)) = last {
            // The last output takes the tokens, and a pass-through the record itself.
            let base = match o.content {
                None => record,
                Some(content) => child_of(&record, content),
            };
            out.push(
                port,
                decorate(base.with_acks(acks), o.attributes, o.event_time),
            );
        }
    }
}

/// A new record made of `content`, derived from `input` (its parent): the same attributes,
/// event time and origin. JSON content is checked as JSON; anything else is text.
fn child_of(input: &Record, content: Vec<u8>) -> Record {
    let mut child = match Record::parse_json(Bytes::from(content)) {
        Ok(r) => r,
        Err((r, _)) => Record::from_text(r.raw_content().cloned().unwrap_or_default()),
    };
    child.set_parents(vec![input.id()]);
    child.set_event_time(input.event_time());
    child.origin = input.origin;
    child.with_attributes(input.attributes().clone())
}

/// Set what the plugin said about an output: attributes and event time.
fn decorate(mut r: Record, attributes: Vec<(String, String)>, event_time: Option<i64>) -> Record {
    for (k, v) in attributes {
        r.set_attribute(k, v);
    }
    if let Some(t) = event_time {
        r.set_event_time(Some(t));
    }
    r
}

fn to_input(r: &mut Record) -> Input {
    Input {
        content: r.content().to_vec(),
        attributes: r
            .attributes()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        event_time: r.event_time(),
    }
}

/// What an answer weighs, for `max_output_bytes`.
fn answer_size(outcomes: &[Outcome]) -> usize {
    outcomes
        .iter()
        .map(|o| match o {
            Err(m) => m.len() + OUTPUT_OVERHEAD,
            Ok(outputs) => outputs
                .iter()
                .map(|o| {
                    OUTPUT_OVERHEAD
                        + o.port.len()
                        + o.content.as_ref().map_or(0, Vec::len)
                        + o.attributes
                            .iter()
                            .map(|(k, v)| k.len() + v.len())
                            .sum::<usize>()
                })
                .sum(),
        })
        .sum()
}

/// A file's size and modification time, to notice a new version cheaply.
fn stamp(path: &std::path::Path) -> Option<(u64, SystemTime)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.len(), m.modified().ok()?))
}

impl Worker {
    /// Hot reload: when the module file changed, load the new version and use it from the
    /// next call on; a version that fails to load, changes the ports or refuses the config is
    /// logged and refused, and the running one goes on.
    fn reload_if_changed(&mut self) {
        let w = &mut self.watch;
        if w.every.is_zero() || w.last_check.elapsed() < w.every {
            return;
        }
        w.last_check = Instant::now();
        let now = stamp(&w.path);
        if now.is_none() || now == w.stamp {
            return;
        }
        w.stamp = now;
        let Ok(bytes) = std::fs::read(&w.path) else {
            return;
        };
        let hash = sha256(&bytes);
        if hash == self.module.hash || w.refused.as_deref() == Some(hash.as_str()) {
            return;
        }
        match self.try_version(&bytes) {
            Ok((module, instance)) => {
                tracing::info!(
                    processor = &*self.name,
                    plugin = %module.info.name,
                    version = %module.info.version,
                    sha256 = %module.hash,
                    "plugin reloaded: new batches use the new version"
                );
                self.module = module;
                self.instance = Some(instance);
                self.watch.refused = None;
                self.publish();
            }
            Err(why) => {
                tracing::error!(
                    processor = &*self.name,
                    module = %self.watch.path.display(),
                    sha256 = %hash,
                    error = %why,
                    "new plugin version refused; the running version goes on"
                );
                self.watch.refused = Some(hash);
            }
        }
    }

    fn try_version(&self, bytes: &[u8]) -> Result<(Arc<Module>, Instance), String> {
        let module =
            Module::from_bytes(&self.watch.path, bytes, &self.limits).map_err(|e| e.to_string())?;
        if module.info.outputs != self.ports {
            return Err(format!(
                "its ports ({}) differ from the running version's ({}): restart the flow to change ports",
                module.info.outputs.join(", "),
                self.ports.join(", ")
            ));
        }
        let config: serde_json::Value =
            serde_json::from_str(&self.config).map_err(|e| e.to_string())?;
        if let Some((path, msg)) = module.check_config(&config).into_iter().next() {
            return Err(format!("config.{}: {msg}", path.join(".")));
        }
        let mut instance = Instance::new(&module, &self.limits, &self.grants, self.name.clone())
            .map_err(|e| e.to_string())?;
        match instance.init(&self.config) {
            Ok(Ok(())) => Ok((module, instance)),
            Ok(Err(msg)) => Err(format!("it refused the config: {msg}")),
            Err(e) => Err(e.to_string()),
        }
    }
}
