//! Runtime tests with small in-file processors: back-pressure, fan-out acks, failures.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use parking_lot::Mutex;
use serde::Deserialize;

use super::*;
use crate::ack::{AckStatus, AckTracker, Acks, InOrderCommit};
use crate::processor::{
    BuildContext, BuildError, Describe, Output, PortId, ProcessorConfig, ProcessorDef, Registry,
    Sink, Source, TaskTransform,
};
use crate::record::{Record, finish_all};

/// Shared observations of a test run.
#[derive(Default)]
struct Probe {
    produced: AtomicU64,
    written: AtomicU64,
    /// The largest `produced - 2 * written` ever seen by the sink (the test flow keeps every
    /// other record).
    max_in_flight: AtomicU64,
    finished: Mutex<Vec<(u64, AckStatus)>>,
    /// How many records the source committed (in order, stopping at an abandoned batch).
    committed: AtomicU64,
    /// What the source was told at build: whether a consumer reads fields.
    consumers_read_values: Mutex<Option<bool>>,
    /// Records the `split` transform was handed to own (not routed by a look).
    split_processed: AtomicU64,
    /// Records the `split` transform saw, either way.
    split_seen: AtomicU64,
}

static PROBE: Mutex<Option<Arc<Probe>>> = Mutex::new(None);

fn probe() -> Arc<Probe> {
    PROBE.lock().clone().unwrap_or_default()
}

/// Test source: `count` records in batches of `batch`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct CountConfig {
    count: u64,
    batch: u64,
}

struct CountSource {
    count: u64,
    batch: u64,
    probe: Arc<Probe>,
}

#[async_trait]
impl Source for CountSource {
    async fn run(self: Box<Self>, mut ctx: SourceContext) -> Result<(), ProcessorError> {
        let mut tracker = AckTracker::named(ctx.name.clone());
        let mut commit = InOrderCommit::new();
        let mut ends = std::collections::BTreeMap::new();
        let mut n = 0;
        let mut seq = 0;
        let mut result = Ok(());
        while n < self.count && !ctx.shutdown.is_cancelled() {
            let token = tracker.token(seq);
            let size = self.batch.min(self.count - n);
            let batch: Vec<Record> = (n..n + size)
                .map(|i| {
                    Record::from_bytes(format!("{{\"n\":{i}}}")).with_acks(Acks::one(token.clone()))
                })
                .collect();
            drop(token);
            n += size;
            ends.insert(seq, n);
            seq += 1;
            ctx.metrics.add_received(size);
            self.probe.produced.store(n, Ordering::SeqCst);
            if let Err(e) = ctx.out.send(PortId::DEFAULT, batch).await {
                result = Err(e.into());
                break;
            }
        }
        drop(ctx.out);
        // Commit as a real source does: in order, never past an abandoned batch.
        while let Some(f) = tracker.next().await {
            self.probe.finished.lock().push((f.seq, f.status));
            if f.committable()
                && let Some(end) = ends.get(&f.seq)
                && let Some(c) = commit.finish(f.seq, *end)
            {
                self.probe.committed.store(c, Ordering::SeqCst);
            }
        }
        result
    }
}

impl ProcessorConfig for CountConfig {
    fn outputs(&self) -> Vec<String> {
        vec!["out".into()]
    }
    fn replays_in_order(&self) -> bool {
        true
    }
    fn build(&self, ctx: &BuildContext) -> Result<Processor, BuildError> {
        let probe = probe();
        *probe.consumers_read_values.lock() = Some(ctx.consumers_read_values);
        Ok(Processor::Source(Box::new(CountSource {
            count: self.count,
            batch: self.batch,
            probe,
        })))
    }
}

impl Describe for CountConfig {
    const TYPE: &'static str = "count";
    const KIND: Kind = Kind::Source;
}

/// Test sink: yields to the scheduler `slowness` times per record, so it is slow without
/// depending on wall time.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct SlowConfig {
    slowness: u32,
    /// Take no input before the `split` transform has seen this many records.
    #[serde(default)]
    after_split: u64,
}

struct SlowSink {
    slowness: u32,
    after_split: u64,
    probe: Arc<Probe>,
}

#[async_trait]
impl Sink for SlowSink {
    async fn run(self: Box<Self>, mut ctx: SinkContext) -> Result<(), ProcessorError> {
        while self.probe.split_seen.load(Ordering::SeqCst) < self.after_split {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        while let Some(batch) = ctx.input.next().await {
            for _ in 0..self.slowness * batch.len() as u32 {
                tokio::task::yield_now().await;
            }
            let n = batch.len() as u64;
            finish_all(batch);
            let written = self.probe.written.fetch_add(n, Ordering::SeqCst) + n;
            let produced = self.probe.produced.load(Ordering::SeqCst);
            self.probe
                .max_in_flight
                .fetch_max(produced.saturating_sub(2 * written), Ordering::SeqCst);
            ctx.metrics.add_sent(n);
        }
        Ok(())
    }
}

impl ProcessorConfig for SlowConfig {
    fn outputs(&self) -> Vec<String> {
        Vec::new()
    }
    fn reads_values(&self) -> bool {
        false
    }
    fn build(&self, _: &BuildContext) -> Result<Processor, BuildError> {
        Ok(Processor::Sink(Box::new(SlowSink {
            slowness: self.slowness,
            after_split: self.after_split,
            probe: probe(),
        })))
    }
}

impl Describe for SlowConfig {
    const TYPE: &'static str = "slow";
    const KIND: Kind = Kind::Sink;
}

/// Test transform: passes even `n`; odd `n` are dropped on purpose, failed, lost (a bug: never
/// pushed nor dropped) or sent to `late`, as `odd` says.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct EvenConfig {
    #[serde(default)]
    odd: Odd,
    /// Answer `route` for the even records (the odd ones go through `process`).
    #[serde(default)]
    routes: bool,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
enum Odd {
    #[default]
    Drop,
    Fail,
    Lose,
    Late,
}

struct Even {
    odd: Odd,
    routes: bool,
}

impl Transform for Even {
    fn routes(&self) -> bool {
        self.routes
    }

    fn route(&mut self, record: &Record) -> Option<PortId> {
        let content = record.raw_content()?;
        let v: serde_json::Value = serde_json::from_slice(content).ok()?;
        let n = v.get("n")?.as_i64()?;
        (self.routes && n % 2 == 0).then_some(PortId::DEFAULT)
    }

    fn process(&mut self, mut record: Record, out: &mut Output) {
        let n = record
            .value()
            .ok()
            .and_then(|v| {
                v.as_object()
                    .and_then(|o| o.get("n"))
                    .and_then(|n| n.as_integer())
            })
            .unwrap_or(-1);
        if n % 2 == 0 {
            return out.push(PortId::DEFAULT, record);
        }
        match self.odd {
            Odd::Drop => out.drop_record(record),
            Odd::Fail => out.fail(record, &"odd"),
            Odd::Lose => drop(record),
            Odd::Late => out.push(PortId(2), record),
        }
    }
}

impl ProcessorConfig for EvenConfig {
    fn outputs(&self) -> Vec<String> {
        vec!["out".into(), "late".into()]
    }
    fn reported_outputs(&self) -> Vec<String> {
        vec!["late".into()]
    }
    fn build(&self, _: &BuildContext) -> Result<Processor, BuildError> {
        Ok(Processor::Transform(Box::new(Even {
            odd: self.odd,
            routes: self.routes,
        })))
    }
}

impl Describe for EvenConfig {
    const TYPE: &'static str = "even";
    const KIND: Kind = Kind::Transform;
}

/// Test task transform: passes records with `n < pass_below`, keeps the others in its state
/// (their acks held, as a window does), and fails when it meets `fail_at`: by panicking or by
/// returning an error, as `panic` says. At the end of its input it releases what it held.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct HoldConfig {
    pass_below: i64,
    fail_at: i64,
    #[serde(default)]
    panic: bool,
}

struct Hold {
    pass_below: i64,
    fail_at: i64,
    panic: bool,
}

#[async_trait]
impl TaskTransform for Hold {
    async fn run(self: Box<Self>, mut ctx: TaskContext) -> Result<(), ProcessorError> {
        let mut held: Vec<Acks> = Vec::new();
        let mut out = Output::new(ctx.name.clone(), ctx.out.port_count());
        while let Some(batch) = ctx.input.next().await {
            for mut r in batch {
                let n = r
                    .value()
                    .ok()
                    .and_then(|v| v.as_object()?.get("n")?.as_integer())
                    .unwrap_or(-1);
                if n == self.fail_at {
                    if self.panic {
                        panic!("test transform panics at n = {n}");
                    }
                    return Err(ProcessorError::other(format!(
                        "test transform fails at {n}"
                    )));
                }
                if n < self.pass_below {
                    out.push(PortId::DEFAULT, r);
                } else {
                    held.push(r.take_acks());
                }
            }
            ctx.out.flush(&mut out).await?;
        }
        held.into_iter().for_each(Acks::release);
        Ok(())
    }
}

impl ProcessorConfig for HoldConfig {
    fn outputs(&self) -> Vec<String> {
        vec!["out".into()]
    }
    fn build(&self, _: &BuildContext) -> Result<Processor, BuildError> {
        Ok(Processor::Task(Box::new(Hold {
            pass_below: self.pass_below,
            fail_at: self.fail_at,
            panic: self.panic,
        })))
    }
}

impl Describe for HoldConfig {
    const TYPE: &'static str = "hold";
    const KIND: Kind = Kind::Transform;
}

/// Test filter: even `n` to `out`, odd to `rest`, decided by a look at the record
/// ([`Transform::route`]), so a fan-out's shared records are copied only when even.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct SplitConfig {}

struct Split {
    probe: Arc<Probe>,
}

impl Split {
    fn port_of(record: &Record) -> PortId {
        let n = record
            .raw_content()
            .and_then(|c| serde_json::from_slice::<serde_json::Value>(c).ok())
            .and_then(|v| v.get("n").and_then(serde_json::Value::as_i64))
            .unwrap_or(-1);
        if n % 2 == 0 { PortId(1) } else { PortId(2) }
    }
}

impl Transform for Split {
    fn routes(&self) -> bool {
        true
    }
    fn route(&mut self, record: &Record) -> Option<PortId> {
        self.probe.split_seen.fetch_add(1, Ordering::SeqCst);
        Some(Self::port_of(record))
    }
    fn process(&mut self, record: Record, out: &mut Output) {
        self.probe.split_seen.fetch_add(1, Ordering::SeqCst);
        self.probe.split_processed.fetch_add(1, Ordering::SeqCst);
        out.push(Self::port_of(&record), record);
    }
}

impl ProcessorConfig for SplitConfig {
    fn outputs(&self) -> Vec<String> {
        vec!["out".into(), "rest".into()]
    }
    fn build(&self, _: &BuildContext) -> Result<Processor, BuildError> {
        Ok(Processor::Transform(Box::new(Split { probe: probe() })))
    }
}

impl Describe for SplitConfig {
    const TYPE: &'static str = "split";
    const KIND: Kind = Kind::Transform;
}

fn registry() -> Registry {
    Registry::new(vec![
        ProcessorDef::of::<CountConfig>(),
        ProcessorDef::of::<SlowConfig>(),
        ProcessorDef::of::<EvenConfig>(),
        ProcessorDef::of::<HoldConfig>(),
        ProcessorDef::of::<SplitConfig>(),
    ])
}

fn start_flow(yaml: &str) -> (RunningFlow, Arc<Probe>) {
    let p = Arc::new(Probe::default());
    *PROBE.lock() = Some(p.clone());
    let loaded = crate::spec::load(yaml, &|_| None, &registry());
    let flow = loaded
        .flow
        .unwrap_or_else(|| panic!("invalid test flow: {:?}", loaded.diagnostics));
    (start(&flow, CancellationToken::new()).expect("starts"), p)
}

async fn run_flow(yaml: &str) -> (RunReport, Arc<Probe>) {
    let (running, p) = start_flow(yaml);
    (running.wait().await, p)
}

fn node<'a>(report: &'a RunReport, name: &str) -> &'a NodeSnapshot {
    &report
        .nodes
        .iter()
        .find(|n| n.name == name)
        .unwrap_or_else(|| panic!("no node {name}"))
        .counters
}

// One test at a time touches PROBE.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_sink_throttles_the_source_and_queues_stay_bounded() {
    let _g = SERIAL.lock().await;
    let (report, probe) = run_flow(
        r#"
processors:
  src: { type: count, count: 20000, batch: 50 }
  mid: { type: even }
  slow: { type: slow, slowness: 2 }
connections:
  - { from: src, to: mid, max_records: 200 }
  - { from: mid, to: slow, max_records: 100 }
"#,
    )
    .await;
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    // Every even record reached the sink; the odd ones were dropped on purpose.
    assert_eq!(probe.written.load(Ordering::SeqCst), 10_000);
    for e in &report.edges {
        assert!(
            e.counters.high_water_records <= e.info.max_records as u64,
            "{} went over its threshold: {:?}",
            e.info.label(),
            e.counters
        );
    }
    // The source was held back: in source records, at most the first queue (200), the batch
    // `mid` holds (50), the second queue and the sink's batch (100 + 50 kept records, each
    // standing for two source records) and the batch the source is making (50) were ever ahead
    // of the sink. Without back-pressure it would run 20,000 ahead. Counts, not time.
    let bound = 200 + 50 + 2 * (100 + 50) + 50;
    let max = probe.max_in_flight.load(Ordering::SeqCst);
    assert!(
        max <= bound as u64,
        "source ran {max} records ahead of the sink"
    );
    // And every batch was acknowledged.
    let finished = probe.finished.lock();
    assert_eq!(finished.len(), 400);
    assert!(finished.iter().all(|(_, s)| *s == AckStatus::Delivered));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_acks_only_after_every_branch_and_failures_are_reported() {
    let _g = SERIAL.lock().await;
    let (report, probe) = run_flow(
        r#"
processors:
  src: { type: count, count: 100, batch: 10 }
  strict: { type: even, odd: fail }
  a: { type: slow, slowness: 0 }
  b: { type: slow, slowness: 3 }
connections:
  - src -> strict
  - src -> b
  - strict -> a
"#,
    )
    .await;
    // 50 even records to `a`, 100 to `b`.
    assert_eq!(probe.written.load(Ordering::SeqCst), 150);
    // `strict` reads fields, so the source was told to build them as it reads.
    assert_eq!(*probe.consumers_read_values.lock(), Some(true));
    let strict = report
        .nodes
        .iter()
        .find(|n| n.name == "strict")
        .expect("node");
    assert_eq!(strict.counters.failed, 50, "odd records counted as failed");
    let finished = probe.finished.lock();
    assert_eq!(finished.len(), 10);
    // Every batch had odd records that failed with no failure edge.
    assert!(finished.iter().all(|(_, s)| *s == AckStatus::Failed));
}

#[tokio::test]
async fn sources_learn_whether_their_consumers_read_fields() {
    let _g = SERIAL.lock().await;
    let (_, probe) = run_flow(
        r#"
processors:
  src: { type: count, count: 10, batch: 10 }
  a: { type: slow, slowness: 0 }
  b: { type: slow, slowness: 0 }
connections:
  - src -> a
  - src -> b
"#,
    )
    .await;
    assert_eq!(probe.written.load(Ordering::SeqCst), 20);
    assert_eq!(*probe.consumers_read_values.lock(), Some(false));
}

/// `count` records in batches of 10 through `hold`, which passes those below 50 and fails
/// (by a panic or an error) at record 75, to a sink.
fn failing_hold(count: u64, panic: bool) -> String {
    format!(
        r#"
processors:
  src: {{ type: count, count: {count}, batch: 10 }}
  hold: {{ type: hold, pass_below: 50, fail_at: 75, panic: {panic} }}
  sink: {{ type: slow, slowness: 0 }}
connections:
  - src -> hold
  - hold -> sink
"#
    )
}

/// A task that panics, or returns an error, while it holds records (in its state, and in
/// hand) never lets its source commit them: everything it held is abandoned, and the source's
/// committed position stops before the first of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_task_never_lets_its_source_commit_what_it_held() {
    let _g = SERIAL.lock().await;
    for panic in [true, false] {
        let (report, probe) = run_flow(&failing_hold(200, panic)).await;
        assert_eq!(report.errors.len(), 1, "{:?}", report.errors);
        assert_eq!(probe.written.load(Ordering::SeqCst), 50);
        // Batches 0-4 were written; 5 and 6 were in the task's state, 7 in its hands.
        assert_eq!(
            probe.committed.load(Ordering::SeqCst),
            50,
            "panic: {panic}, finished: {:?}",
            probe.finished.lock()
        );
        let finished = probe.finished.lock();
        for (seq, status) in finished.iter() {
            let expected = if *seq < 5 {
                AckStatus::Delivered
            } else {
                AckStatus::Abandoned
            };
            assert_eq!(*status, expected, "batch {seq} (panic: {panic})");
        }
        assert!(finished.len() >= 8, "{finished:?}");
    }
}

/// A transform that loses a record (neither pushes nor drops it: a bug) abandons its batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_a_transform_loses_is_abandoned() {
    let _g = SERIAL.lock().await;
    let (report, probe) = run_flow(
        r#"
processors:
  src: { type: count, count: 40, batch: 10 }
  buggy: { type: even, odd: lose }
  sink: { type: slow, slowness: 0 }
connections:
  - src -> buggy
  - buggy -> sink
"#,
    )
    .await;
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(probe.written.load(Ordering::SeqCst), 20);
    assert_eq!(probe.committed.load(Ordering::SeqCst), 0);
    let finished = probe.finished.lock();
    assert_eq!(finished.len(), 4);
    assert!(finished.iter().all(|(_, s)| *s == AckStatus::Abandoned));
}

/// Records a processor sends to a reported port (like a window's `late`) with no edge are
/// counted as failed and acknowledged `Failed`, never dropped quietly; on other unconnected
/// ports they are dropped on purpose and acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unconnected_reported_port_counts_its_records_as_failed() {
    let _g = SERIAL.lock().await;
    let (report, probe) = run_flow(
        r#"
processors:
  src: { type: count, count: 40, batch: 10 }
  late: { type: even, odd: late }
  quiet: { type: even }
  sink: { type: slow, slowness: 0 }
connections:
  - src -> late
  - late -> quiet
  - quiet -> sink
"#,
    )
    .await;
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let node = |name: &str| {
        report
            .nodes
            .iter()
            .find(|n| n.name == name)
            .map(|n| n.counters.clone())
            .expect("node")
    };
    assert_eq!((node("late").failed, node("late").dropped), (20, 0));
    assert_eq!((node("quiet").failed, node("quiet").dropped), (0, 0));
    assert_eq!(probe.written.load(Ordering::SeqCst), 20);
    assert_eq!(probe.committed.load(Ordering::SeqCst), 40);
    let finished = probe.finished.lock();
    assert_eq!(finished.len(), 4);
    assert!(finished.iter().all(|(_, s)| *s == AckStatus::Failed));
}

/// Every kind of node is counted by the runtime, once: what a transform, a task transform and
/// a sink take in, what leaves each port, and each node's final state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runtime_counts_every_kind_of_node_once() {
    let _g = SERIAL.lock().await;
    let (report, probe) = run_flow(
        r#"
processors:
  src: { type: count, count: 100, batch: 10 }
  even: { type: even }
  hold: { type: hold, pass_below: 1000, fail_at: -5 }
  sink: { type: slow, slowness: 0 }
connections:
  - src -> even
  - even -> hold
  - hold -> sink
"#,
    )
    .await;
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(probe.written.load(Ordering::SeqCst), 50);
    let (src, even, hold, sink) = (
        node(&report, "src"),
        node(&report, "even"),
        node(&report, "hold"),
        node(&report, "sink"),
    );
    assert_eq!((src.received, src.sent), (100, 100));
    assert_eq!((even.received, even.sent, even.dropped), (100, 50, 50));
    assert_eq!(even.ports.get("out"), Some(&50));
    assert_eq!(even.ports.get("failure"), Some(&0));
    assert_eq!((hold.received, hold.sent), (50, 50));
    assert_eq!(sink.received, 50);
    for n in [src, even, hold, sink] {
        assert_eq!(n.state, NodeState::Finished, "{n:?}");
    }
    // Every node that takes input timed its batches.
    assert_eq!(sink.batches.as_ref().map(|b| b.count), Some(10));
    assert!(src.batches.is_none());
    // Each edge carried what its producer sent on that port, and nothing is left queued.
    let edges: Vec<(&str, &str, u64, u64)> = report
        .edges
        .iter()
        .map(|e| {
            let (i, c) = (&e.info, &e.counters);
            (i.from.as_str(), i.to.as_str(), c.sent, c.records)
        })
        .collect();
    assert_eq!(
        edges,
        [
            ("src", "even", 100, 0),
            ("even", "hold", 50, 0),
            ("hold", "sink", 50, 0)
        ]
    );
}

/// Sink that never reads its input (the edge before it fills up and sheds).
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct StuckConfig {}

struct Stuck;

#[async_trait]
impl Sink for Stuck {
    async fn run(self: Box<Self>, ctx: SinkContext) -> Result<(), ProcessorError> {
        ctx.shutdown.cancelled().await;
        drop(ctx);
        Ok(())
    }
}

impl ProcessorConfig for StuckConfig {
    fn outputs(&self) -> Vec<String> {
        Vec::new()
    }
    fn build(&self, _: &BuildContext) -> Result<Processor, BuildError> {
        Ok(Processor::Sink(Box::new(Stuck)))
    }
}

impl Describe for StuckConfig {
    const TYPE: &'static str = "stuck";
    const KIND: Kind = Kind::Sink;
}

/// Records a `drop_newest` edge sheds are the edge's dropped, not the producer's sent: the
/// producer's port counts only what an edge queued.
#[tokio::test]
async fn records_an_edge_sheds_are_not_counted_as_sent() {
    let _g = SERIAL.lock().await;
    let p = Arc::new(Probe::default());
    *PROBE.lock() = Some(p.clone());
    let reg = Registry::new(vec![
        ProcessorDef::of::<CountConfig>(),
        ProcessorDef::of::<StuckConfig>(),
        ProcessorDef::of::<SlowConfig>(),
    ]);
    let loaded = crate::spec::load(
        r#"
processors:
  src: { type: count, count: 100, batch: 10 }
  stuck: { type: stuck }
connections:
  - { from: src, to: stuck, max_records: 30, when_full: drop_newest }
"#,
        &|_| None,
        &reg,
    );
    let flow = loaded.flow.expect("valid");
    let shutdown = CancellationToken::new();
    let running = start(&flow, shutdown.clone()).expect("starts");
    let reporter = running.reporter();
    let done = tokio::spawn(running.wait());
    // The edge never blocks the source: it offers all 100 records (then waits for the acks
    // of the queued ones, which the stuck sink never finishes until it is stopped).
    loop {
        let e = reporter.edges()[0].stats.snapshot();
        if e.sent + e.dropped == 100 {
            break;
        }
        tokio::task::yield_now().await;
    }
    let report = reporter.report(Vec::new());
    shutdown.cancel();
    done.await.expect("joined");
    let src = node(&report, "src");
    let edge = &report.edges[0].counters;
    assert_eq!((edge.sent, edge.dropped), (30, 70));
    assert_eq!((src.received, src.sent), (100, 30));
    assert_eq!(src.ports.get("out"), Some(&30));
    assert_eq!(edge.records, 30, "still queued");
}

/// A node's failure is known as it happens, not only by `wait`: its state says failed with the
/// error, and the flow is asked to stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_is_known_as_it_happens() {
    let _g = SERIAL.lock().await;
    let (running, _) = start_flow(
        r#"
processors:
  src: { type: count, count: 100000000, batch: 10 }
  hold: { type: hold, pass_below: 1000, fail_at: 75 }
  sink: { type: slow, slowness: 0 }
connections:
  - src -> hold
  - hold -> sink
"#,
    );
    let hold = running.nodes()[1].metrics.clone();
    let deadline = Instant::now() + Duration::from_secs(30);
    while hold.state() != NodeState::Failed {
        assert!(Instant::now() < deadline, "the failure was never seen");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(
        hold.snapshot().error.as_deref(),
        Some("test transform fails at 75")
    );
    // Nobody called `wait`, yet the source was told to stop, so the flow ends.
    let report = running.wait().await;
    assert!(
        report.errors.iter().any(|e| e.contains("`hold` failed")),
        "{:?}",
        report.errors
    );
}

/// A tap sees exactly the records leaving its port, as copies that hold no acknowledgement:
/// the source commits the same as without it.
#[tokio::test]
async fn a_tap_sees_exactly_its_ports_records_and_holds_no_ack() {
    let _g = SERIAL.lock().await;
    let (running, probe) = start_flow(
        r#"
processors:
  src: { type: count, count: 40, batch: 10 }
  even: { type: even }
  sink: { type: slow, slowness: 0 }
connections:
  - src -> even
  - even -> sink
"#,
    );
    // The tasks have not run yet (this runtime has one thread and we have not yielded).
    let mut tap = running.taps().watch("even", None).expect("a port");
    assert_eq!(
        running.taps().watch("even", Some("nope")).map(|_| ()),
        Err(tap::TapError::UnknownPort {
            node: "even".into(),
            port: "nope".into(),
            ports: "failure, out, late".into()
        })
    );
    // Read the tap while the flow runs (its channel holds only so many batches).
    let reader = tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some(t) = tap.next().await {
            assert_eq!(t.lost, 0);
            for mut r in t.records {
                assert!(r.acks().is_empty());
                seen.push(String::from_utf8_lossy(r.content()).into_owned());
            }
        }
        seen
    });
    let report = running.wait().await;
    let seen = reader.await.expect("joined");
    let want: Vec<String> = (0..40)
        .step_by(2)
        .map(|n| format!("{{\"n\":{n}}}"))
        .collect();
    assert_eq!(seen, want);
    assert!(report.errors.is_empty());
    assert_eq!(probe.committed.load(Ordering::SeqCst), 40);
}

/// Provenance of a run of `yaml`, read from the recorder's channel (`capacity` events: a
/// small one keeps the writer behind, and a slow reader keeps it full).
async fn run_recorded(yaml: &str, capacity: usize) -> Vec<crate::provenance::Event> {
    let p = Arc::new(Probe::default());
    *PROBE.lock() = Some(p);
    let loaded = crate::spec::load(yaml, &|_| None, &registry());
    let flow = loaded
        .flow
        .unwrap_or_else(|| panic!("invalid test flow: {:?}", loaded.diagnostics));
    let (tx, mut rx) = tokio::sync::mpsc::channel(capacity);
    let recorder = crate::provenance::Recorder::new(tx);
    let running = start_with(
        &flow,
        CancellationToken::new(),
        crate::clock::Clock::system(),
        Some(&recorder),
    )
    .expect("starts");
    drop(recorder);
    let reader = tokio::spawn(async move {
        let mut events = Vec::new();
        while let Some(e) = rx.recv().await {
            match e {
                crate::provenance::Entry::Event(e) => events.push(e),
                crate::provenance::Entry::Release(acks) => {
                    acks.into_iter().for_each(crate::ack::Acks::release);
                }
                crate::provenance::Entry::Failed(_) => {}
            }
            // A slow writer: the channel stays full.
            tokio::task::yield_now().await;
        }
        events
    });
    let report = running.wait().await;
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    reader.await.expect("reader")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_a_transform_loses_are_dropped_as_abandoned_and_receive_comes_first() {
    abandoned_records_are_dropped("{ type: even, odd: lose }").await;
}

/// The same when the transform routes the records it keeps (`route`, passed on by the
/// runtime) and loses the others in `process`: only these are looked for in its output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_a_routing_transform_loses_are_dropped_as_abandoned() {
    abandoned_records_are_dropped("{ type: even, odd: lose, routes: true }").await;
}

async fn abandoned_records_are_dropped(buggy: &str) {
    use crate::provenance::EventKind;
    let _g = SERIAL.lock().await;
    let events = run_recorded(
        &format!(
            r#"
processors:
  src: {{ type: count, count: 400, batch: 10 }}
  buggy: {buggy}
  sink: {{ type: slow, slowness: 0 }}
connections:
  - src -> buggy
  - buggy -> sink
"#
        ),
        1,
    )
    .await;
    let buggy = 1;
    let of = |kind: EventKind| -> Vec<&crate::provenance::Event> {
        events
            .iter()
            .filter(|e| e.node == buggy && e.kind == kind)
            .collect()
    };
    // Every odd record (half of each batch) is DROPped as abandoned, none other.
    let created: Vec<u64> = events
        .iter()
        .filter(|e| e.kind == EventKind::Create)
        .flat_map(|e| e.records.iter())
        .collect();
    assert_eq!(created.len(), 400);
    let dropped: Vec<u64> = of(EventKind::Drop)
        .iter()
        .inspect(|e| {
            assert_eq!(
                e.detail.as_deref(),
                Some("abandoned: the processor let it go without passing it on")
            );
        })
        .flat_map(|e| e.records.iter())
        .collect();
    let routed: Vec<u64> = of(EventKind::Route)
        .iter()
        .flat_map(|e| e.records.iter())
        .collect();
    assert_eq!(dropped.len(), 200);
    assert_eq!(routed.len(), 200);
    let mut all = [dropped.clone(), routed.clone()].concat();
    all.sort_unstable();
    let mut want = created.clone();
    want.sort_unstable();
    assert_eq!(all, want, "each record once: routed or abandoned");
    // Per node, a batch's RECEIVE is stored before what the node did with it, though the
    // writer was always full.
    for (k, e) in events.iter().enumerate() {
        if e.node != buggy || !matches!(e.kind, EventKind::Route | EventKind::Drop) {
            continue;
        }
        for id in e.records.iter() {
            assert!(
                events[..k].iter().any(|r| r.node == buggy
                    && r.kind == EventKind::Receive
                    && r.records.position(id).is_some()),
                "{} of {id:x} before its RECEIVE",
                e.kind
            );
        }
    }
}

/// A task that fails abandons what it held (its state, the batch in its hands) and what was
/// still queued for it; its source's later sends go nowhere. Through a real store: every
/// record a source made ends exactly once, passed on by the task (ROUTE) or DROPped as
/// abandoned, each with why: no lineage stops at a RECEIVE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_task_drops_what_it_held_and_what_was_queued_for_it() {
    use crate::provenance::EventKind;
    use crate::provenance::store::{Writer, read_segment, segments};
    let _g = SERIAL.lock().await;
    let count = 400;
    for panic in [true, false] {
        let yaml = failing_hold(count, panic);
        *PROBE.lock() = Some(Arc::new(Probe::default()));
        let loaded = crate::spec::load(&yaml, &|_| None, &registry());
        let flow = loaded.flow.expect("valid");
        let dir = tempfile::tempdir().expect("tempdir");
        let settings = crate::provenance::config::Settings {
            dir: dir.path().to_owned(),
            max_age: std::time::Duration::from_secs(3600),
            max_size: 1 << 30,
        };
        let writer = Writer::open(&settings, provenance_header(&flow)).expect("store");
        let running = start_with(
            &flow,
            CancellationToken::new(),
            crate::clock::Clock::system(),
            Some(writer.recorder()),
        )
        .expect("starts");
        let report = running.wait().await;
        assert!(
            report.errors.iter().any(|e| e.contains("`hold` failed")),
            "{:?}",
            report.errors
        );
        tokio::task::spawn_blocking(move || writer.close())
            .await
            .expect("joined")
            .expect("closed");
        let events: Vec<crate::provenance::Event> = segments(dir.path())
            .expect("segments")
            .iter()
            .filter_map(|(n, path)| read_segment(*n, path).expect("reads"))
            .flat_map(|s| s.frames.into_iter().flatten())
            .collect();
        let (src, hold) = (0, 1);
        // Ids in the order the source made them: the `n`th is record `n`.
        let created: Vec<u64> = events
            .iter()
            .filter(|e| e.kind == EventKind::Create)
            .flat_map(|e| e.records.iter())
            .collect();
        assert!(created.len() >= 80, "{} made", created.len());
        let ids = |node: u32, kind: EventKind, detail: &str| -> Vec<u64> {
            let mut v: Vec<u64> = events
                .iter()
                .filter(|e| {
                    e.node == node
                        && e.kind == kind
                        && e.detail.as_deref().unwrap_or("").contains(detail)
                })
                .flat_map(|e| e.records.iter())
                .collect();
            v.sort_unstable();
            v
        };
        let sorted = |s: &[u64]| {
            let mut v = s.to_vec();
            v.sort_unstable();
            v
        };
        let routed = ids(hold, EventKind::Route, "");
        let held = ids(
            hold,
            EventKind::Drop,
            "abandoned: `hold` failed while it held it",
        );
        let queued = ids(hold, EventKind::Drop, "still queued for this node");
        let unsent = ids(src, EventKind::Drop, "abandoned: node #1 has ended");
        assert_eq!(routed, sorted(&created[..50]), "panic: {panic}");
        // Batches 5 and 6 in its state, 7 in its hands (it failed at record 75).
        assert_eq!(held, sorted(&created[50..80]), "panic: {panic}");
        // Every record once: passed on, held, queued, or sent after the task had gone.
        let mut all = [routed, held, queued.clone(), unsent.clone()].concat();
        all.sort_unstable();
        assert_eq!(all, sorted(&created), "panic: {panic}");
        assert_eq!(
            queued,
            sorted(&created[80..created.len() - unsent.len()]),
            "panic: {panic}"
        );
        // Each DROP comes after the RECEIVE or ROUTE it ends (the writer's settling is last).
        let at = |node: u32, kind: EventKind| {
            events
                .iter()
                .position(|e| e.node == node && e.kind == kind)
                .expect("there")
        };
        assert!(at(hold, EventKind::Drop) > at(hold, EventKind::Receive));
    }
}

/// A node has ordered origins (exactly-once sinks may skip replays by position) only with one
/// path back to a source that replays in order: not below a fan-in, even of two branches of
/// one source. (`even` as a source, with no input, does not replay in order.)
#[test]
fn origins_are_ordered_only_along_single_paths() {
    let loaded = crate::spec::load(
        r#"
name: paths
processors:
  src: { type: count, count: 1, batch: 1 }
  mid: { type: even }
  a: { type: slow, slowness: 0 }
  b: { type: slow, slowness: 0 }
  both: { type: slow, slowness: 0 }
  other: { type: even }
  c: { type: slow, slowness: 0 }
connections:
  - other -> c
  - src -> mid
  - mid -> a
  - mid -> both
  - src -> both
  - src -> b
"#,
        &|_| None,
        &registry(),
    );
    let flow = loaded
        .flow
        .unwrap_or_else(|| panic!("invalid test flow: {:?}", loaded.diagnostics));
    let ordered = super::ordered_origins(&flow);
    let of = |name: &str| {
        let i = flow
            .nodes
            .iter()
            .position(|n| n.name == name)
            .expect("node");
        ordered[i]
    };
    assert!(of("src") && of("mid") && of("a") && of("b"));
    assert!(!of("both"), "two paths from src");
    assert!(!of("c"), "its source does not replay in order");
}

/// A fan-out to a transform that routes (a filter) shares its records instead of copying
/// them: the filter's records routed nowhere are counted and recorded as dropped exactly as
/// a pushed copy was, the others reach their sink, every branch sees every record, and each
/// batch is acknowledged once both branches are done with it.
const SHARED_FAN_OUT: &str = r#"
processors:
  src: { type: count, count: 400, batch: 10 }
  split: { type: split }
  a: { type: slow, slowness: 0 }
  b: { type: slow, slowness: 0, after_split: 400 }
connections:
  - src -> split
  - src -> b
  - split.out -> a
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fan_out_to_a_filter_copies_only_what_it_passes_and_counts_the_rest_dropped() {
    let _g = SERIAL.lock().await;
    let (report, probe) = run_flow(SHARED_FAN_OUT).await;
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    // 200 even records to `a`, all 400 to `b`.
    assert_eq!(probe.written.load(Ordering::SeqCst), 600);
    let split = node(&report, "split");
    assert_eq!(split.received, 400);
    assert_eq!(split.sent, 200);
    assert_eq!(split.dropped, 200);
    let finished = probe.finished.lock();
    assert_eq!(finished.len(), 40);
    assert!(finished.iter().all(|(_, s)| *s == AckStatus::Delivered));
    assert_eq!(probe.committed.load(Ordering::SeqCst), 400);
    // Every record was routed by a look at the shared batch, none handed over as a copy: `b`
    // takes nothing before `split` has seen all 400, so every batch was still shared (a
    // batch `b` had taken already would be `split`'s alone, to own). Before the shared
    // batch, all 400 were copies handed to `process`.
    assert_eq!(probe.split_processed.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_fan_out_keeps_each_copys_lineage() {
    use crate::provenance::EventKind;
    let _g = SERIAL.lock().await;
    let events = run_recorded(SHARED_FAN_OUT, 4).await;
    let (src, split) = (0, 1);
    // The copies the source's FORKs gave `split`, in order.
    let copies: Vec<u64> = events
        .iter()
        .filter(|e| e.node == src && e.kind == EventKind::Fork)
        .flat_map(|e| e.children.iter().filter(|c| c.to == Some(split)))
        .flat_map(|c| c.ids.iter())
        .collect();
    assert_eq!(copies.len(), 400);
    let at_split = |kind: EventKind| -> Vec<u64> {
        let mut ids: Vec<u64> = events
            .iter()
            .filter(|e| e.node == split && e.kind == kind)
            .inspect(|e| {
                if kind == EventKind::Drop {
                    assert_eq!(e.detail.as_deref(), Some("port `rest` has no edge"));
                    assert_eq!(e.port, Some(2));
                }
            })
            .flat_map(|e| e.records.iter())
            .collect();
        ids.sort_unstable();
        ids
    };
    let mut want = copies.clone();
    want.sort_unstable();
    assert_eq!(
        at_split(EventKind::Receive),
        want,
        "split received its copies"
    );
    // The source numbered 0..400 in order: even positions are even `n`.
    let mut even: Vec<u64> = copies.iter().step_by(2).copied().collect();
    let mut odd: Vec<u64> = copies.iter().skip(1).step_by(2).copied().collect();
    even.sort_unstable();
    odd.sort_unstable();
    assert_eq!(at_split(EventKind::Route), even);
    assert_eq!(at_split(EventKind::Drop), odd);
}
