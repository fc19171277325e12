//! `kafka_source`: consume topics as a member of a consumer group; commit an offset only once
//! every record before it is finished.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use bytesize::ByteSize;
use indexmap::IndexMap;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use flow_core::ack::{AckTracker, Acks, Finished, InOrderCommit};
use flow_core::processor::{
    BuildContext, BuildError, ConfigError, Describe, Kind, Output, PortId, Processor,
    ProcessorConfig, ProcessorError, Source, SourceContext,
};
use flow_core::record::{JsonView, Record};
use flow_core::runtime::metrics::{LagUnit, NodeMetrics};

use super::{Brokers, FlowContext, KafkaProcessorError, client_config, validate_common};

/// Consume Kafka topics as a member of a consumer group, one record per message.
///
/// Offsets are committed only for records finished end to end (written by every sink,
/// filtered out, or sent to `failure`), and never past a record that is not: per partition, in
/// order. Run several `flow run` processes with the same `group` and Kafka spreads the
/// partitions over them; when one stops or dies, its partitions move to the others, which go
/// on from its last committed offsets (records it had not finished are read again: at least
/// once, bounded duplicates). Before partitions are taken away in a rebalance, what is finished
/// is committed. When more than `max_inflight` records are in the flow, the source pauses its
/// partitions (the consumer stays in the group) and resumes once the flow has drained to half.
/// Records carry attributes `kafka.topic`, `kafka.partition`, `kafka.offset`, `kafka.key`,
/// `kafka.timestamp` (ms) and one attribute per message header. A value that is not JSON (with
/// `format: json`), or larger than `max_record_size` (only its first 1 KiB is kept), goes to
/// `failure`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KafkaSourceConfig {
    /// Bootstrap brokers: `host:port,host:port` or a list.
    pub brokers: Brokers,
    /// The consumer group (`group.id`). Processes with the same group share the partitions.
    pub group: String,
    /// Topics to consume; a name starting with `^` is a regular expression (`^sensors-.*`).
    pub topics: Vec<String>,
    /// Where a group without a committed offset starts: `earliest` or `latest`.
    #[serde(default)]
    pub start: StartFrom,
    /// How a message value becomes a record: `json` (checked; not JSON goes to `failure`) or
    /// `raw` (the bytes as they are).
    #[serde(default)]
    pub format: crate::mqtt::source::PayloadFormat,
    /// At most this many records per batch.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Pause consuming when this many records are in the flow, unfinished.
    #[serde(default = "default_max_inflight")]
    pub max_inflight: usize,
    /// How often finished offsets are committed (also at every rebalance and at shutdown).
    #[serde(default = "default_commit_interval", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub commit_interval: Duration,
    /// Any librdkafka setting, passed as it is (`session.timeout.ms`, `security.protocol`,
    /// `sasl.password: ${KAFKA_PASSWORD}`, ...). See librdkafka's CONFIGURATION.md.
    #[serde(default)]
    #[schemars(extend("writeOnly" = true))]
    pub properties: IndexMap<String, String>,
    /// The largest message value taken as a record, like `1MiB`; a larger one goes to
    /// `failure` with its first 1 KiB (and its offset is committed like any other).
    #[serde(default = "crate::record_size::default_max_record_size")]
    #[schemars(with = "String")]
    pub max_record_size: ByteSize,
}

/// Where a new consumer group starts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StartFrom {
    /// The oldest message still in the topic.
    #[default]
    Earliest,
    /// Only messages produced from now on.
    Latest,
}

fn default_batch_size() -> usize {
    500
}
fn default_max_inflight() -> usize {
    10_000
}
fn default_commit_interval() -> Duration {
    Duration::from_secs(1)
}

impl Describe for KafkaSourceConfig {
    const TYPE: &'static str = "kafka_source";
    const KIND: Kind = Kind::Source;
}

impl KafkaSourceConfig {
    fn client_config(&self, node: &str) -> rdkafka::ClientConfig {
        let defaults = [
            ("client.id", format!("flow-{node}")),
            (
                "auto.offset.reset",
                match self.start {
                    StartFrom::Earliest => "earliest",
                    StartFrom::Latest => "latest",
                }
                .to_owned(),
            ),
            // The prefetch queue, per partition; librdkafka's default (64 MiB) is a lot of
            // memory for a flow that pauses anyway.
            ("queued.max.messages.kbytes", "16384".to_owned()),
            // Statistics every 5 s: the consumer lag per partition, published as the
            // source's lag.
            ("statistics.interval.ms", "5000".to_owned()),
        ];
        let owned = [
            ("group.id", self.group.clone()),
            ("enable.auto.commit", "false".to_owned()),
            ("enable.auto.offset.store", "false".to_owned()),
        ];
        client_config(&self.brokers.joined(), &defaults, &self.properties, &owned)
    }
}

impl ProcessorConfig for KafkaSourceConfig {
    fn outputs(&self) -> Vec<String> {
        vec!["out".into()]
    }

    fn validate(&self) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        validate_common(&self.brokers.joined(), &self.properties, &mut errors);
        if self.group.trim().is_empty() {
            errors.push(ConfigError::new(&["group"], "the group is empty"));
        }
        if self.topics.is_empty() {
            errors.push(ConfigError::new(&["topics"], "give at least one topic"));
        }
        for (i, t) in self.topics.iter().enumerate() {
            if t.is_empty() {
                errors.push(ConfigError::new(&["topics", &i.to_string()], "empty topic"));
            }
        }
        if self.batch_size == 0 {
            errors.push(ConfigError::new(&["batch_size"], "must be at least 1"));
        }
        if self.max_inflight == 0 {
            errors.push(ConfigError::new(&["max_inflight"], "must be at least 1"));
        }
        if self.commit_interval.is_zero() {
            errors.push(ConfigError::new(
                &["commit_interval"],
                "must be more than 0s",
            ));
        }
        crate::record_size::validate(self.max_record_size, None, &mut errors);
        if errors.is_empty()
            && let Err(e) = self.client_config("check").create_native_config()
        {
            errors.push(ConfigError::new(&["properties"], e.to_string()));
        }
        errors
    }

    fn build(&self, ctx: &BuildContext) -> Result<Processor, BuildError> {
        Ok(Processor::Source(Box::new(KafkaSource {
            cfg: self.clone(),
            json_view: ctx.json_view(),
        })))
    }
}

struct KafkaSource {
    cfg: KafkaSourceConfig,
    json_view: JsonView,
}

type Tp = (String, i32);

/// What the consumer's rebalance callbacks and the source share.
#[derive(Default)]
struct Offsets {
    /// Partitions assigned now.
    assigned: HashSet<Tp>,
    /// Bumped at every assignment: batches read before it do not commit after it.
    epoch: u64,
    /// Per partition, the next offset to commit: everything before it is finished.
    done: HashMap<Tp, i64>,
    /// What was committed (so an unchanged partition is not committed again).
    committed: HashMap<Tp, i64>,
}

impl Offsets {
    /// Finished offsets not committed yet, of assigned partitions (only those in `only`, when
    /// given).
    fn to_commit(&self, only: Option<&TopicPartitionList>) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for (tp, next) in &self.done {
            let wanted = only.is_none_or(|l| l.find_partition(&tp.0, tp.1).is_some());
            if wanted
                && self.assigned.contains(tp)
                && self.committed.get(tp).is_none_or(|c| c < next)
                && tpl
                    .add_partition_offset(&tp.0, tp.1, Offset::Offset(*next))
                    .is_err()
            {
                tracing::debug!(topic = %tp.0, partition = tp.1, "offset not added");
            }
        }
        tpl
    }

    fn committed(&mut self, tpl: &TopicPartitionList) {
        for e in tpl.elements() {
            if let Offset::Offset(o) = e.offset() {
                self.committed
                    .insert((e.topic().to_owned(), e.partition()), o);
            }
        }
    }
}

/// The consumer's context: logs, errors, and rebalances (commit what is finished before
/// partitions go).
struct SourceContextKafka {
    flow: FlowContext,
    offsets: Arc<Mutex<Offsets>>,
    metrics: Arc<NodeMetrics>,
}

impl ClientContext for SourceContextKafka {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        self.flow.log(level, fac, message);
    }

    /// The consumer lag per assigned partition (the high watermark minus the consumer's
    /// position; librdkafka says -1 while it does not know), as the source's lag.
    fn stats(&self, statistics: rdkafka::Statistics) {
        self.metrics.clear_lag(LagUnit::Records);
        for (topic, t) in &statistics.topics {
            for (id, p) in &t.partitions {
                if *id >= 0
                    && let Ok(lag) = u64::try_from(p.consumer_lag)
                {
                    let partition = format!("{topic}/{id}");
                    self.metrics
                        .set_lag(LagUnit::Records, Some(&partition), lag);
                }
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.flow.error(error, reason);
    }
}

fn partitions(tpl: &TopicPartitionList) -> Vec<String> {
    tpl.elements()
        .iter()
        .map(|e| format!("{}[{}]", e.topic(), e.partition()))
        .collect()
}

/// As [`partitions`], each with its offset: `topic[p]@offset`.
fn partition_offsets(tpl: &TopicPartitionList) -> Vec<String> {
    partitions(tpl)
        .into_iter()
        .zip(tpl.elements())
        .map(|(p, e)| match e.offset() {
            Offset::Offset(o) => format!("{p}@{o}"),
            other => format!("{p}@{other:?}"),
        })
        .collect()
}

impl ConsumerContext for SourceContextKafka {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let mut o = self.offsets.lock().unwrap_or_else(PoisonError::into_inner);
        match rebalance {
            Rebalance::Revoke(tpl) => {
                let commit = o.to_commit(Some(tpl));
                if commit.count() > 0 {
                    match consumer.commit(&commit, CommitMode::Sync) {
                        Ok(()) => o.committed(&commit),
                        Err(e) => tracing::warn!(
                            node = %self.flow.node,
                            error = %e,
                            "could not commit before the partitions were revoked; \
                             their unfinished records will be read again"
                        ),
                    }
                }
                for e in tpl.elements() {
                    let tp = (e.topic().to_owned(), e.partition());
                    o.assigned.remove(&tp);
                    o.done.remove(&tp);
                    o.committed.remove(&tp);
                }
                tracing::info!(
                    node = %self.flow.node,
                    partitions = ?partitions(tpl),
                    "Kafka partitions revoked"
                );
            }
            Rebalance::Assign(tpl) => {
                o.epoch += 1;
                for e in tpl.elements() {
                    o.assigned.insert((e.topic().to_owned(), e.partition()));
                }
                tracing::info!(
                    node = %self.flow.node,
                    partitions = ?partitions(tpl),
                    "Kafka partitions assigned"
                );
            }
            Rebalance::Error(e) => {
                tracing::warn!(node = %self.flow.node, error = %e, "Kafka rebalance error");
            }
        }
    }
}

/// A batch in the flow: its sequence number, the assignment epoch it was read in, and per
/// partition the offset after its last record.
struct InFlight {
    seq: u64,
    epoch: u64,
    next: HashMap<Tp, i64>,
    records: usize,
    /// Finished downstream (it may still wait for earlier batches to be committed).
    finished: bool,
}

/// How long a blocked send waits before the source pauses its partitions (so that the consumer
/// keeps polling, and stays in the group, while the flow is full).
const PAUSE_AFTER: Duration = Duration::from_millis(500);

impl KafkaSource {
    /// The record for a message, or the record and why it goes to `failure`.
    #[allow(
        clippy::result_large_err,
        reason = "the record is handed back on the rare error path"
    )]
    fn record(&self, m: &BorrowedMessage<'_>) -> Result<Record, (Record, String)> {
        let value = m.payload().unwrap_or_default();
        if value.len() > crate::record_size::bytes(self.cfg.max_record_size) {
            let (r, e) = crate::record_size::oversized(
                value,
                value.len() as u64,
                self.cfg.max_record_size,
                "the value",
            );
            return Err((attributes(r, m), e));
        }
        let payload = bytes::Bytes::copy_from_slice(value);
        let r = match self.cfg.format {
            crate::mqtt::source::PayloadFormat::Json => match Record::json(payload, self.json_view)
            {
                Ok(r) => r,
                Err((r, e)) => return Err((attributes(r, m), format!("value: {e}"))),
            },
            crate::mqtt::source::PayloadFormat::Raw => Record::from_text(payload),
        };
        Ok(attributes(r, m))
    }
}

fn attributes(mut r: Record, m: &BorrowedMessage<'_>) -> Record {
    r.set_attribute("kafka.topic", m.topic());
    r.set_attribute("kafka.partition", m.partition().to_string());
    r.set_attribute("kafka.offset", m.offset().to_string());
    if let Some(k) = m.key() {
        r.set_attribute("kafka.key", String::from_utf8_lossy(k).into_owned());
    }
    if let Some(ts) = m.timestamp().to_millis() {
        r.set_attribute("kafka.timestamp", ts.to_string());
    }
    if let Some(h) = m.headers() {
        for h in h.iter() {
            if let Some(v) = h.value {
                r.set_attribute(h.key, String::from_utf8_lossy(v).into_owned());
            }
        }
    }
    r
}

/// The loop's state besides the consumer.
struct State {
    tracker: AckTracker,
    commit: InOrderCommit<u64>,
    batches: VecDeque<InFlight>,
    /// Records of the batches in `batches`: read, and neither committed nor given up on.
    in_flow: usize,
    /// The first batch abandoned downstream: neither it nor any batch after it is committed in
    /// this run (the next run reads them again).
    abandoned_from: Option<u64>,
    offsets: Arc<Mutex<Offsets>>,
}

impl State {
    /// A batch finished: move the offsets of every batch up to the committed one into `done`.
    /// A finished batch that can never be committed (abandoned, or after an abandoned one)
    /// leaves `batches` and the count of records in the flow at once: kept until a commit
    /// that never comes, they paused the source for good after `max_inflight` records.
    fn finished(&mut self, f: Finished) {
        if let Ok(i) = self.batches.binary_search_by_key(&f.seq, |b| b.seq)
            && let Some(b) = self.batches.get_mut(i)
        {
            b.finished = true;
        }
        if !f.committable() {
            self.abandoned_from = Some(self.abandoned_from.map_or(f.seq, |a| a.min(f.seq)));
        }
        if let Some(from) = self.abandoned_from
            && f.seq >= from
        {
            // Its offsets, and all after them, stay uncommitted.
            let mut given_up = 0;
            self.batches.retain(|b| {
                let keep = b.seq < from || !b.finished;
                if !keep {
                    given_up += b.records;
                }
                keep
            });
            self.in_flow -= given_up;
            return;
        }
        let Some(upto) = self.commit.finish(f.seq, f.seq) else {
            return;
        };
        let mut o = self.offsets.lock().unwrap_or_else(PoisonError::into_inner);
        while self.batches.front().is_some_and(|b| b.seq <= upto) {
            let Some(b) = self.batches.pop_front() else {
                break;
            };
            self.in_flow -= b.records;
            if b.epoch != o.epoch {
                // Read before the last rebalance: its partitions may be someone else's now.
                continue;
            }
            for (tp, next) in b.next {
                if o.assigned.contains(&tp) {
                    let e = o.done.entry(tp).or_insert(next);
                    *e = (*e).max(next);
                }
            }
        }
    }

    fn to_commit(&self) -> TopicPartitionList {
        self.offsets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .to_commit(None)
    }

    fn committed(&self, tpl: &TopicPartitionList) {
        self.offsets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .committed(tpl);
    }

    fn epoch(&self) -> u64 {
        self.offsets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .epoch
    }
}

/// Pause or resume every assigned partition.
fn set_paused(consumer: &StreamConsumer<SourceContextKafka>, pause: bool) {
    let Ok(assignment) = consumer.assignment() else {
        return;
    };
    let r = if pause {
        consumer.pause(&assignment)
    } else {
        consumer.resume(&assignment)
    };
    if let Err(e) = r {
        tracing::debug!(error = %e, pause, "pause/resume");
    }
}

#[async_trait]
impl Source for KafkaSource {
    async fn run(self: Box<Self>, ctx: SourceContext) -> Result<(), ProcessorError> {
        let SourceContext {
            name,
            mut out,
            shutdown,
            metrics,
        } = ctx;
        let offsets = Arc::new(Mutex::new(Offsets::default()));
        let context = SourceContextKafka {
            flow: FlowContext::new(&name, &self.cfg.brokers.joined()),
            offsets: offsets.clone(),
            metrics: metrics.clone(),
        };
        let consumer: StreamConsumer<SourceContextKafka> = self
            .cfg
            .client_config(&name)
            .create_with_context(context)
            .map_err(|e| ProcessorError::other(KafkaProcessorError::Config(e.to_string())))?;
        let topics: Vec<&str> = self.cfg.topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&topics)
            .map_err(|e| ProcessorError::other(KafkaProcessorError::Fatal(e.to_string())))?;
        tracing::info!(node = %name, topics = ?self.cfg.topics, group = %self.cfg.group, "subscribed");
        let mut st = State {
            tracker: AckTracker::named(name.clone()).counting(metrics.acks()),
            commit: InOrderCommit::new(),
            batches: VecDeque::new(),
            in_flow: 0,
            abandoned_from: None,
            offsets,
        };
        let batch_size = self.cfg.batch_size;
        let max_inflight = self.cfg.max_inflight;
        let mut paused = false;
        let mut seq = 0u64;
        let mut pending = Output::new(name.clone(), out.port_count());
        let mut next_offsets: HashMap<Tp, i64> = HashMap::new();
        let mut count = 0usize;
        let mut commit_tick = tokio::time::interval(self.cfg.commit_interval);
        commit_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut committed_total = 0u64;
        let result: Result<(), ProcessorError> = 'run: loop {
            // Pause while the flow holds too much; resume once it drained to half.
            if !paused && st.in_flow >= max_inflight {
                set_paused(&consumer, true);
                paused = true;
            } else if paused && st.in_flow <= max_inflight / 2 {
                set_paused(&consumer, false);
                paused = false;
            }
            // Messages taken while a send waited are emitted before waiting for more.
            if count == 0 {
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => break Ok(()),
                    Some(f) = st.tracker.next(), if st.tracker.outstanding() > 0 => {
                        st.finished(f);
                        while let Some(f) = st.tracker.try_next() {
                            st.finished(f);
                        }
                        continue;
                    }
                    _ = commit_tick.tick() => {
                        let tpl = st.to_commit();
                        if tpl.count() > 0 {
                            match consumer.commit(&tpl, CommitMode::Async) {
                                Ok(()) => {
                                    st.committed(&tpl);
                                    committed_total += 1;
                                    metrics.set_status("commits", serde_json::json!(committed_total));
                                }
                                Err(e) => tracing::warn!(node = %name, error = %e, "Kafka commit failed; retrying"),
                            }
                        }
                        continue;
                    }
                    m = consumer.recv() => {
                        match m {
                            Ok(m) => {
                                self.take(&m, &mut pending, &mut next_offsets);
                                count += 1;
                            }
                            Err(e) => {
                                // Consumer errors (a broker down, a partition EOF) are logged by
                                // the context; librdkafka goes on by itself.
                                tracing::debug!(node = %name, error = %e, "Kafka consumer");
                                continue;
                            }
                        }
                    }
                }
            }
            // Take what is already there, up to a batch, without waiting.
            while count < batch_size {
                match futures::FutureExt::now_or_never(consumer.recv()) {
                    Some(Ok(m)) => {
                        self.take(&m, &mut pending, &mut next_offsets);
                        count += 1;
                    }
                    _ => break,
                }
            }
            // Records came: the brokers answer. This ends an error burst (saying so), so the
            // next outage gets its own warning (without it, an outage that began within the
            // burst gap of the last error, say 30 s after a broker down at start, was silent).
            consumer.context().flow.reachable();
            // One token per batch, in every record of it.
            let token = st.tracker.token(seq);
            st.batches.push_back(InFlight {
                seq,
                epoch: st.epoch(),
                next: std::mem::take(&mut next_offsets),
                records: count,
                finished: false,
            });
            st.in_flow += count;
            seq += 1;
            metrics.add_received(count as u64);
            count = 0;
            let mut batch = Output::new(name.clone(), out.port_count());
            for (port, records) in pending.drain() {
                for r in records {
                    batch.push(port, r.with_acks(Acks::one(token.clone())));
                }
            }
            drop(token);
            // Waits while the flow is full (back-pressure). If that lasts, pause the
            // partitions and keep polling, so the consumer stays in the group; a message
            // already fetched goes into the next batch.
            let flush = out.flush(&mut batch);
            tokio::pin!(flush);
            let mut paused_here = false;
            loop {
                tokio::select! {
                    r = &mut flush => {
                        if let Err(e) = r {
                            break 'run Err(ProcessorError::other(e));
                        }
                        break;
                    }
                    _ = tokio::time::sleep(PAUSE_AFTER), if !paused_here && !paused => {
                        set_paused(&consumer, true);
                        paused_here = true;
                    }
                    m = consumer.recv(), if paused_here => {
                        if let Ok(m) = m {
                            self.take(&m, &mut pending, &mut next_offsets);
                            count += 1;
                        }
                    }
                    // No shutdown branch: a batch is always handed over whole (its records
                    // would count as finished if dropped here); at shutdown the flow drains,
                    // so the send completes.
                }
            }
            if paused_here {
                set_paused(&consumer, false);
            }
        };
        // Let the flow drain, then commit what it finished.
        drop(out);
        drop(pending);
        while st.tracker.outstanding() > 0 {
            match tokio::time::timeout(Duration::from_secs(30), st.tracker.next()).await {
                Ok(Some(f)) => st.finished(f),
                _ => break,
            }
        }
        let tpl = st.to_commit();
        if tpl.count() > 0 {
            match consumer.commit(&tpl, CommitMode::Sync) {
                Ok(()) => {
                    st.committed(&tpl);
                    tracing::info!(
                        node = %name,
                        offsets = ?partition_offsets(&tpl),
                        "committed what the flow finished, leaving the group"
                    );
                }
                Err(e) => tracing::warn!(node = %name, error = %e, "the last Kafka commit failed"),
            }
        }
        // Leave the group now (the others take the partitions at once).
        consumer.unsubscribe();
        result
    }
}

impl KafkaSource {
    fn take(
        &self,
        m: &BorrowedMessage<'_>,
        pending: &mut Output,
        next_offsets: &mut HashMap<Tp, i64>,
    ) {
        let tp = (m.topic().to_owned(), m.partition());
        let next = m.offset() + 1;
        let e = next_offsets.entry(tp).or_insert(next);
        *e = (*e).max(next);
        match self.record(m) {
            Ok(r) => pending.push(PortId::DEFAULT, r),
            Err((r, msg)) => pending.fail(r, &msg),
        }
    }
}

#[cfg(test)]
mod bookkeeping {
    //! What the source commits when batches (and so partitions) finish out of order: per
    //! partition, never an offset past a record that is not finished. No broker: the
    //! consumer's part (`commit`) only sends what `to_commit` gives.

    use flow_core::ack::{AckStatus, AckToken};

    use super::*;

    fn tp(p: i32) -> Tp {
        ("t".to_owned(), p)
    }

    fn state() -> State {
        let mut o = Offsets {
            epoch: 1,
            ..Offsets::default()
        };
        o.assigned.extend([tp(0), tp(1)]);
        State {
            tracker: AckTracker::new(),
            commit: InOrderCommit::new(),
            batches: VecDeque::new(),
            in_flow: 0,
            abandoned_from: None,
            offsets: Arc::new(Mutex::new(o)),
        }
    }

    /// A batch read in the current epoch ending at `next` (per partition, the offset after its
    /// last record), and its token: the batch finishes when the token is dropped.
    fn read(st: &mut State, seq: u64, next: &[(i32, i64)], records: usize) -> AckToken {
        st.batches.push_back(InFlight {
            seq,
            epoch: st.epoch(),
            next: next.iter().map(|(p, o)| (tp(*p), *o)).collect(),
            records,
            finished: false,
        });
        st.in_flow += records;
        st.tracker.token(seq)
    }

    /// Hand what finished to the source, as its loop does.
    fn settle(st: &mut State) {
        while let Some(f) = st.tracker.try_next() {
            st.finished(f);
        }
    }

    /// What a commit now would send, partition -> offset, and mark it committed.
    fn commit(st: &State) -> Vec<(i32, i64)> {
        let tpl = st.to_commit();
        st.committed(&tpl);
        let mut v: Vec<(i32, i64)> = tpl
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(o) => Some((e.partition(), o)),
                _ => None,
            })
            .collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn partitions_finishing_out_of_order_commit_nothing_past_an_unfinished_record() {
        let mut st = state();
        // Batch 0: t/0 offsets 0..=9; batch 1: t/1 0..=4; batch 2: t/0 10..=19 and t/1 5..=7.
        let b0 = read(&mut st, 0, &[(0, 10)], 10);
        let b1 = read(&mut st, 1, &[(1, 5)], 5);
        let b2 = read(&mut st, 2, &[(0, 20), (1, 8)], 13);
        // The later batches finish first (another branch, another speed): t/0's first records
        // are not finished, so nothing of t/0 may be committed, and batch 1 waits its turn.
        drop(b2);
        drop(b1);
        settle(&mut st);
        assert_eq!(commit(&st), vec![], "nothing before batch 0 finished");
        assert_eq!(st.in_flow, 28, "their records still count as in the flow");
        // Batch 0 finishes: everything up to batch 2 is finished, per partition.
        drop(b0);
        settle(&mut st);
        assert_eq!(commit(&st), vec![(0, 20), (1, 8)]);
        assert_eq!(st.in_flow, 0);
        assert_eq!(
            commit(&st),
            vec![],
            "an unchanged partition is not committed again"
        );

        // t/1 runs ahead of t/0: its batch 4 finishes while batch 3 (t/0) is in the flow.
        let b3 = read(&mut st, 3, &[(0, 25)], 5);
        let b4 = read(&mut st, 4, &[(1, 30)], 22);
        drop(b4);
        settle(&mut st);
        assert_eq!(commit(&st), vec![], "t/1 waits for the batch before it");
        drop(b3);
        settle(&mut st);
        assert_eq!(commit(&st), vec![(0, 25), (1, 30)]);
    }

    #[test]
    fn an_abandoned_batch_holds_back_every_partition_after_it() {
        let mut st = state();
        let b0 = read(&mut st, 0, &[(0, 10)], 10);
        let b1 = read(&mut st, 1, &[(1, 5)], 5);
        let b2 = read(&mut st, 2, &[(0, 12)], 2);
        b0.mark(AckStatus::Abandoned);
        drop(b0);
        drop(b2);
        drop(b1);
        settle(&mut st);
        assert_eq!(
            commit(&st),
            vec![],
            "nothing after an abandoned batch is committed, on any partition"
        );
    }

    /// A batch abandoned downstream is never committed, nor is any batch after it, but once
    /// finished their records leave the count of records in the flow. They stayed counted
    /// (only a commit took a batch out), so after `max_inflight` more records the source
    /// paused for good.
    #[test]
    fn an_abandoned_batch_and_those_after_it_leave_the_count_once_finished() {
        let mut st = state();
        let b0 = read(&mut st, 0, &[(0, 10)], 10);
        let b1 = read(&mut st, 1, &[(1, 5)], 5);
        let b2 = read(&mut st, 2, &[(0, 12)], 2);
        let b3 = read(&mut st, 3, &[(1, 9)], 4);
        // Batch 2 finishes first: it waits for batches 0 and 1 to be committed.
        drop(b2);
        settle(&mut st);
        assert_eq!(st.in_flow, 21, "finished, not committed: still counted");
        // Batch 1 is abandoned: it and batch 2 can never be committed in this run.
        b1.mark(AckStatus::Abandoned);
        drop(b1);
        settle(&mut st);
        assert_eq!(
            st.in_flow, 14,
            "batches 1 and 2 left the count; 0 and 3 are in the flow"
        );
        // Batch 0, before the abandoned one, still commits.
        drop(b0);
        settle(&mut st);
        assert_eq!(commit(&st), vec![(0, 10)]);
        assert_eq!(st.in_flow, 4);
        drop(b3);
        settle(&mut st);
        assert_eq!(commit(&st), vec![], "nothing after the abandoned batch");
        assert_eq!(st.in_flow, 0);
        // The source goes on: batch after batch finishes and leaves the count (a source
        // with `max_inflight: 100` would have paused at the 25th), none is committed, and
        // the bookkeeping does not grow.
        for seq in 4..1_004 {
            let b = read(&mut st, seq, &[(0, 12 + seq as i64)], 4);
            drop(b);
            settle(&mut st);
            assert_eq!(st.in_flow, 0, "batch {seq} finished");
        }
        assert_eq!(commit(&st), vec![]);
        assert!(st.batches.is_empty(), "{} batches kept", st.batches.len());
    }

    #[test]
    fn a_batch_read_before_a_rebalance_commits_nothing_after_it() {
        let mut st = state();
        let b0 = read(&mut st, 0, &[(0, 10), (1, 4)], 14);
        // A rebalance: t/1 is revoked (its finished offsets were committed then), t/0 stays.
        {
            let mut o = st.offsets.lock().unwrap_or_else(PoisonError::into_inner);
            o.assigned.remove(&tp(1));
            o.epoch += 1;
        }
        let b1 = read(&mut st, 1, &[(0, 15)], 5);
        drop(b0);
        drop(b1);
        settle(&mut st);
        // Batch 0 (old epoch) is skipped; batch 1 commits t/0 up to its end, and batch 0 was
        // finished before it, so no record of t/0 before 15 is unfinished. t/1 is not ours.
        assert_eq!(commit(&st), vec![(0, 15)]);
    }
}
