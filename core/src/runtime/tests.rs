//! Runtime tests with small in-file processors: back-pressure, fan-out acks, failures.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use parking_lot::Mutex;
use serde::Deserialize;

use super::*;
use crate::ack::{AckStatus, AckTracker, Acks};
use crate::processor::{
    BuildContext, BuildError, Describe, Output, PortId, ProcessorConfig, ProcessorDef, Registry,
    Sink, Source,
};
use crate::record::Record;

/// Shared observations of a test run.
#[derive(Default)]
struct Probe {
    produced: AtomicU64,
    written: AtomicU64,
    /// The largest `produced - 2 * written` ever seen by the sink (the test flow keeps every
    /// other record).
    max_in_flight: AtomicU64,
    finished: Mutex<Vec<(u64, AckStatus)>>,
    /// What the source was told at build: whether a consumer reads fields.
    consumers_read_values: Mutex<Option<bool>>,
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
        let mut tracker = AckTracker::new();
        let mut n = 0;
        let mut seq = 0;
        while n < self.count && !ctx.shutdown.is_cancelled() {
            let token = tracker.token(seq);
            seq += 1;
            let size = self.batch.min(self.count - n);
            let batch: Vec<Record> = (n..n + size)
                .map(|i| {
                    Record::from_bytes(format!("{{\"n\":{i}}}")).with_acks(Acks::One(token.clone()))
                })
                .collect();
            drop(token);
            n += size;
            ctx.metrics.add_received(size);
            self.probe.produced.store(n, Ordering::SeqCst);
            ctx.out
                .send(PortId::DEFAULT, batch)
                .await
                .map_err(|e| ProcessorError::Other(e.to_string()))?;
        }
        drop(ctx.out);
        while let Some(f) = tracker.next().await {
            self.probe.finished.lock().push((f.seq, f.status));
        }
        Ok(())
    }
}

impl ProcessorConfig for CountConfig {
    fn outputs(&self) -> Vec<String> {
        vec!["out".into()]
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
}

struct SlowSink {
    slowness: u32,
    probe: Arc<Probe>,
}

#[async_trait]
impl Sink for SlowSink {
    async fn run(self: Box<Self>, mut ctx: SinkContext) -> Result<(), ProcessorError> {
        while let Some(batch) = ctx.input.next().await {
            for _ in 0..self.slowness * batch.len() as u32 {
                tokio::task::yield_now().await;
            }
            let n = batch.len() as u64;
            ctx.metrics.add_received(n);
            drop(batch);
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
            probe: probe(),
        })))
    }
}

impl Describe for SlowConfig {
    const TYPE: &'static str = "slow";
    const KIND: Kind = Kind::Sink;
}

/// Test transform: passes even `n`, fails odd `n` when `fail_odd`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct EvenConfig {
    #[serde(default)]
    fail_odd: bool,
}

struct Even {
    fail_odd: bool,
}

impl Transform for Even {
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
            out.push(PortId::DEFAULT, record);
        } else if self.fail_odd {
            out.fail(record, &"odd");
        }
    }
}

impl ProcessorConfig for EvenConfig {
    fn outputs(&self) -> Vec<String> {
        vec!["out".into()]
    }
    fn build(&self, _: &BuildContext) -> Result<Processor, BuildError> {
        Ok(Processor::Transform(Box::new(Even {
            fail_odd: self.fail_odd,
        })))
    }
}

impl Describe for EvenConfig {
    const TYPE: &'static str = "even";
    const KIND: Kind = Kind::Transform;
}

fn registry() -> Registry {
    Registry::new(vec![
        ProcessorDef::of::<CountConfig>(),
        ProcessorDef::of::<SlowConfig>(),
        ProcessorDef::of::<EvenConfig>(),
    ])
}

async fn run_flow(yaml: &str) -> (RunReport, Arc<Probe>) {
    let p = Arc::new(Probe::default());
    *PROBE.lock() = Some(p.clone());
    let loaded = crate::spec::load(yaml, &|_| None, &registry());
    let flow = loaded
        .flow
        .unwrap_or_else(|| panic!("invalid test flow: {:?}", loaded.diagnostics));
    let running = start(&flow, CancellationToken::new()).expect("starts");
    (running.wait().await, p)
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
            e.counters.high_water_records <= e.max_records as u64,
            "{} went over its threshold: {:?}",
            e.edge,
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
  strict: { type: even, fail_odd: true }
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
