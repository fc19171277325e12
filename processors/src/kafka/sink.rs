//! `kafka_sink`: produce records to Kafka; a record is acknowledged on its delivery report.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use indexmap::IndexMap;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message as _, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use flow_core::ack::Acks;
use flow_core::expr::{Expr, ExprKind};
use flow_core::processor::{
    BuildContext, BuildError, ConfigError, Describe, Kind, Output, Processor, ProcessorConfig,
    ProcessorError, Sink, SinkContext,
};
use flow_core::provenance::Runs;
use flow_core::record::{Record, Value, encode_json};

use flow_core::retry::Retry;

use super::{Brokers, FlowContext, KafkaProcessorError, client_config, validate_common};
use crate::template::{Placeholders, Template};

/// Produce each record to a Kafka topic; a record is acknowledged once Kafka confirmed it.
///
/// The message value is the record's content (a record nobody modified keeps its exact bytes);
/// the key comes from an expression, headers from attributes. By default the producer is
/// idempotent with `acks=all`: the leader and its in-sync replicas have the message before it
/// counts as delivered, and retries never duplicate or reorder it. Transient errors (a broker
/// restarting, a leader moving) are retried by the client until `delivery_timeout`; a record
/// still not delivered then is the brokers' trouble, not its own: it is produced again after a
/// capped backoff (possibly after records produced later), never acknowledged meanwhile. A
/// record's own fault (too large, invalid, an unknown topic) sends it to `failure` with the
/// broker's error as `error.message`; a refusal retrying cannot fix (authorization,
/// authentication) stops the flow. At most `max_inflight` records wait for their delivery
/// report; then the sink stops taking input (back-pressure). Asked to stop while nothing is
/// delivered any more (the brokers are down), the sink gives up after 5 s: what is in flight
/// stays unacknowledged, and its source reads it again on the next run.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KafkaSinkConfig {
    /// Bootstrap brokers: `host:port,host:port` or a list.
    pub brokers: Brokers,
    /// The topic, a template: `{name}` is the record's field `name` (`{a.b}` a nested one), or
    /// its attribute `name` when there is no such field (`{kafka.topic}` keeps a consumed
    /// record's topic).
    pub topic: String,
    /// The message key, a VRL expression (`.device`); strings are used as they are, other
    /// values as JSON. Absent, or `null`: no key (the partitioner spreads the records).
    #[serde(default)]
    pub key: Option<String>,
    /// Attributes sent as message headers: a list of names, or `["*"]` for all of them.
    #[serde(default)]
    pub headers: Vec<String>,
    /// Compression of message batches.
    #[serde(default)]
    pub compression: Compression,
    /// How long the producer waits to fill a batch (`linger.ms`).
    #[serde(default = "default_linger", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub linger: Duration,
    /// At most this many messages per batch sent to a partition (`batch.num.messages`).
    #[serde(default = "default_batch_messages")]
    pub batch_messages: u32,
    /// At most this many bytes per batch sent to a partition (`batch.size`).
    #[serde(default = "default_batch_bytes")]
    pub batch_bytes: u32,
    /// How many replicas must have a message before it counts as delivered: `all`, `1` or
    /// `0` (`0` acknowledges records that may be lost).
    #[serde(default)]
    pub acks: AcksMode,
    /// Idempotent producer: retries never duplicate or reorder messages (needs `acks: all`).
    #[serde(default = "yes")]
    pub idempotent: bool,
    /// How long the client tries to deliver a message (`message.timeout.ms`); then the sink
    /// waits a backoff and produces it again.
    #[serde(default = "default_delivery_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub delivery_timeout: Duration,
    /// At most this many records waiting for their delivery report.
    #[serde(default = "default_max_inflight")]
    pub max_inflight: usize,
    /// Create the topic at start when it does not exist (for brokers that do not create topics
    /// on first use). Only for a topic without `{placeholders}`.
    #[serde(default)]
    pub create_topic: Option<CreateTopic>,
    /// Any librdkafka setting, passed as it is (`security.protocol`, `sasl.mechanism`,
    /// `sasl.username`, `sasl.password: ${KAFKA_PASSWORD}`, `ssl.ca.location`, ...). See
    /// librdkafka's CONFIGURATION.md.
    #[serde(default)]
    #[schemars(extend("writeOnly" = true))]
    pub properties: IndexMap<String, String>,
}

/// Batch compression.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    /// No compression.
    None,
    /// gzip: small, slow.
    Gzip,
    /// Snappy.
    Snappy,
    /// LZ4: fast, a good default for JSON.
    #[default]
    Lz4,
}

impl Compression {
    fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
        }
    }
}

/// Replica acknowledgements.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum AcksMode {
    /// The leader and all in-sync replicas.
    #[default]
    #[serde(rename = "all")]
    All,
    /// The leader only.
    #[serde(rename = "1")]
    Leader,
    /// None: fire and forget.
    #[serde(rename = "0")]
    None,
}

/// A topic to create when it is missing.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTopic {
    /// Number of partitions.
    #[serde(default = "default_partitions")]
    pub partitions: i32,
    /// Replication factor.
    #[serde(default = "one")]
    pub replication: i32,
}

fn yes() -> bool {
    true
}
fn one() -> i32 {
    1
}
fn default_partitions() -> i32 {
    4
}
fn default_linger() -> Duration {
    Duration::from_millis(5)
}
fn default_batch_messages() -> u32 {
    10_000
}
fn default_batch_bytes() -> u32 {
    1_000_000
}
fn default_delivery_timeout() -> Duration {
    Duration::from_secs(300)
}
fn default_max_inflight() -> usize {
    100_000
}

impl Describe for KafkaSinkConfig {
    const TYPE: &'static str = "kafka_sink";
    const KIND: Kind = Kind::Sink;
}

impl ProcessorConfig for KafkaSinkConfig {
    fn reads_values(&self) -> bool {
        self.key.is_some()
            || Template::parse(&self.topic, Placeholders::Fields).is_ok_and(|t| t.has_fields())
    }

    fn outputs(&self) -> Vec<String> {
        Vec::new()
    }

    fn validate(&self) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        validate_common(&self.brokers.joined(), &self.properties, &mut errors);
        match Template::parse(&self.topic, Placeholders::Fields) {
            Ok(t) => {
                if self.create_topic.is_some() && t.sample() != self.topic {
                    errors.push(ConfigError::new(
                        &["create_topic"],
                        "only a topic without {placeholders} can be created at start",
                    ));
                }
                if let Err(e) = check_topic_name(&t.sample()) {
                    errors.push(ConfigError::new(&["topic"], e));
                }
            }
            Err(e) => errors.push(ConfigError::new(&["topic"], e)),
        }
        if let Some(k) = &self.key
            && let Err(e) = Expr::compile(k, ExprKind::Value)
        {
            errors.extend(ConfigError::from_expr(&["key"], &e));
        }
        if self.idempotent && self.acks != AcksMode::All {
            errors.push(ConfigError::new(
                &["acks"],
                "an idempotent producer needs `acks: all` (or set `idempotent: false`)",
            ));
        }
        if self.max_inflight == 0 {
            errors.push(ConfigError::new(&["max_inflight"], "must be at least 1"));
        }
        if let Some(c) = &self.create_topic {
            if c.partitions < 1 {
                errors.push(ConfigError::new(
                    &["create_topic", "partitions"],
                    "must be at least 1",
                ));
            }
            if c.replication < 1 {
                errors.push(ConfigError::new(
                    &["create_topic", "replication"],
                    "must be at least 1",
                ));
            }
        }
        if errors.is_empty()
            && let Err(e) = self.client_config("check").create_native_config()
        {
            errors.push(ConfigError::new(&["properties"], e.to_string()));
        }
        errors
    }

    fn build(&self, _: &BuildContext) -> Result<Processor, BuildError> {
        let topic = Template::parse(&self.topic, Placeholders::Fields).map_err(BuildError)?;
        let key = self
            .key
            .as_deref()
            .map(|k| Expr::compile(k, ExprKind::Value))
            .transpose()?;
        Ok(Processor::Sink(Box::new(KafkaSink {
            cfg: self.clone(),
            fixed_topic: topic.constant(),
            topic,
            key,
        })))
    }
}

/// Topic names Kafka accepts: 1 to 249 of `[a-zA-Z0-9._-]`.
fn check_topic_name(t: &str) -> Result<(), String> {
    if t.is_empty() || t.len() > 249 {
        return Err(format!("`{t}`: a topic name has 1 to 249 characters"));
    }
    if !t
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(format!(
            "`{t}`: a topic name has only letters, digits, `.`, `_` and `-`"
        ));
    }
    Ok(())
}

impl KafkaSinkConfig {
    fn client_config(&self, node: &str) -> rdkafka::ClientConfig {
        let defaults = [
            ("client.id", format!("flow-{node}")),
            ("compression.type", self.compression.name().to_owned()),
            ("linger.ms", self.linger.as_millis().to_string()),
            ("batch.num.messages", self.batch_messages.to_string()),
            ("batch.size", self.batch_bytes.to_string()),
            (
                "acks",
                match self.acks {
                    AcksMode::All => "all",
                    AcksMode::Leader => "1",
                    AcksMode::None => "0",
                }
                .to_owned(),
            ),
            ("enable.idempotence", self.idempotent.to_string()),
            (
                "message.timeout.ms",
                self.delivery_timeout.as_millis().to_string(),
            ),
            // Connect to every broker as soon as it is known. With lazy connections, the
            // idempotent producer may find no broker up when it first asks for its producer id,
            // and retries only every 500 ms: up to a second before the first message is sent.
            ("enable.sparse.connections", "false".to_owned()),
            // Room for the in-flight window (librdkafka's default is 100,000 messages).
            (
                "queue.buffering.max.messages",
                self.max_inflight.max(1).to_string(),
            ),
        ];
        client_config(&self.brokers.joined(), &defaults, &self.properties, &[])
    }
}

struct KafkaSink {
    cfg: KafkaSinkConfig,
    /// The topic when it has no placeholders (rendered once, not per record).
    fixed_topic: Option<String>,
    topic: Template,
    key: Option<Expr>,
}

/// The producer's context: librdkafka's logs, and the delivery reports, handled on the
/// producer's polling thread. Each message carries its record (boxed) as its opaque: a
/// delivered record is dropped right there, which acknowledges it; a failed one is handed to
/// the sink's task for `failure`. So there is no future, channel or task per message.
struct Reports {
    flow: FlowContext,
    /// Messages handed to the producer whose report was not handled yet.
    inflight: AtomicUsize,
    /// Delivered since the sink's task last looked (for its metrics).
    sent: AtomicU64,
    /// Failed deliveries, for the sink's task.
    failed: Mutex<Vec<(Record, KafkaError)>>,
    /// With provenance on, delivered records are not finished in the callback but handed to
    /// the sink's task with where they landed, which records their SEND and then finishes
    /// them (a SEND is never missing for a record whose offset was committed upstream).
    delivered: Option<Mutex<Vec<Delivered>>>,
    /// Wakes the sink's task after reports.
    wake: tokio::sync::Notify,
}

impl ClientContext for Reports {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        self.flow.log(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.flow.error(error, reason);
    }
}

impl ProducerContext for Reports {
    type DeliveryOpaque = Box<Record>;

    fn delivery(&self, result: &DeliveryResult<'_>, record: Box<Record>) {
        match result {
            Ok(m) => {
                match &self.delivered {
                    Some(d) => d
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(Delivered {
                            record,
                            topic: m.topic().to_owned(),
                            partition: m.partition(),
                            offset: m.offset(),
                        }),
                    None => record.finish(),
                }
                self.sent.fetch_add(1, Ordering::Relaxed);
            }
            // Purged, never sent: the producer was dropped with it queued (the sink stopped
            // early). Not delivered, so its source must not commit it.
            Err((e, _))
                if matches!(
                    e.rdkafka_error_code(),
                    Some(RDKafkaErrorCode::PurgeQueue | RDKafkaErrorCode::PurgeInflight)
                ) =>
            {
                drop(record);
            }
            Err((e, _)) => self
                .failed
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push((*record, e.clone())),
        }
        self.inflight.fetch_sub(1, Ordering::AcqRel);
        self.wake.notify_one();
    }
}

/// A delivered record and where it landed.
struct Delivered {
    record: Box<Record>,
    topic: String,
    partition: i32,
    offset: i64,
}

/// Record the SEND of every delivered record (one event per run of records that landed in
/// one partition, with their offsets), then finish them.
async fn record_sends(ctx: &SinkContext, reports: &Reports) {
    let Some(d) = &reports.delivered else { return };
    let mut done = std::mem::take(&mut *d.lock().unwrap_or_else(PoisonError::into_inner));
    if done.is_empty() {
        return;
    }
    // Reports come in order within a partition: a stable sort keeps it.
    done.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
    let mut done = done.into_iter().peekable();
    while let Some(first) = done.next() {
        let to = format!("{}/{}", first.topic, first.partition);
        let (topic, partition) = (first.topic.clone(), first.partition);
        let (mut ids, mut offsets) = (Vec::new(), Vec::new());
        let mut acks = Acks::none();
        let mut next = Some(first);
        while let Some(mut d) = next {
            ids.push(d.record.id().0);
            offsets.push(u64::try_from(d.offset).unwrap_or(0));
            acks.merge(d.record.take_acks());
            next = done.next_if(|d| d.topic == topic && d.partition == partition);
        }
        let (ids, offsets) = (Runs::from_ids(ids), Some(Runs::from_ids(offsets)));
        ctx.input
            .finish_sent_ids(ids, acks, Some(to), offsets)
            .await;
    }
}

/// A record on its way: what to send, and the record itself (dropped, so acknowledged, once
/// delivered; boxed once, as it rides on the message).
struct Prepared {
    record: Box<Record>,
    /// `None`: the sink's fixed topic.
    topic: Option<String>,
    key: Option<Vec<u8>>,
    headers: Option<OwnedHeaders>,
}

impl KafkaSink {
    /// Topic, key and headers for a record, or why it cannot be sent.
    #[allow(
        clippy::result_large_err,
        reason = "the record is handed back on the rare error path"
    )]
    fn prepare(&self, mut record: Record) -> Result<Prepared, (Record, String)> {
        let topic = match &self.fixed_topic {
            Some(_) => None,
            None => match self
                .topic
                .render(&mut record, 0, |v| check_topic_name(&v).map(|()| v))
            {
                Ok(t) => Some(t),
                Err(e) => return Err((record, format!("topic {e}"))),
            },
        };
        let key = match &self.key {
            None => None,
            Some(expr) => {
                if let Err(e) = record.value() {
                    let msg = format!("key: {e}");
                    return Err((record, msg));
                }
                let Some(value) = record.parsed_value() else {
                    return Err((record, "key: content was not parsed".into()));
                };
                match expr.eval(value, record.attributes()) {
                    Ok(Value::Null) => None,
                    Ok(v) => Some(
                        crate::template::scalar_text(&v)
                            .unwrap_or_else(|| {
                                String::from_utf8_lossy(&encode_json(&v)).into_owned()
                            })
                            .into_bytes(),
                    ),
                    Err(e) => return Err((record, format!("key: {e}"))),
                }
            }
        };
        let headers = if self.cfg.headers.is_empty() {
            None
        } else {
            let all = self.cfg.headers.iter().any(|h| h == "*");
            let mut h = OwnedHeaders::new();
            for (name, value) in record.attributes() {
                if all || self.cfg.headers.iter().any(|n| n == name) {
                    h = h.insert(Header {
                        key: name,
                        value: Some(value.as_bytes()),
                    });
                }
            }
            Some(h)
        };
        Ok(Prepared {
            record: Box::new(record),
            topic,
            key,
            headers,
        })
    }
}

/// How long to wait before offering a message again when the producer's queue is full.
const QUEUE_FULL_WAIT: Duration = Duration::from_millis(5);

/// At a stop, records in flight are given up once no delivery report came for this long.
const STOP_GRACE: Duration = Duration::from_secs(5);

#[async_trait]
impl Sink for KafkaSink {
    async fn run(self: Box<Self>, mut ctx: SinkContext) -> Result<(), ProcessorError> {
        let context = FlowContext::new(&ctx.name, &self.cfg.brokers.joined());
        let producer: ThreadedProducer<Reports> = self
            .cfg
            .client_config(&ctx.name)
            .create_with_context(Reports {
                flow: context.clone(),
                inflight: AtomicUsize::new(0),
                sent: AtomicU64::new(0),
                failed: Mutex::new(Vec::new()),
                delivered: ctx
                    .input
                    .records_provenance()
                    .then(|| Mutex::new(Vec::new())),
                wake: tokio::sync::Notify::new(),
            })
            .map_err(|e| ProcessorError::other(KafkaProcessorError::Config(e.to_string())))?;
        if let Some(c) = &self.cfg.create_topic {
            super::ensure_topic(
                &self.cfg.brokers.joined(),
                &self.cfg.properties,
                &self.cfg.topic,
                c.partitions,
                c.replication,
            )
            .await
            .map_err(ProcessorError::other)?;
        }
        let result = self.produce(&mut ctx, &producer, &context).await;
        let delivered = result.is_ok();
        let _ = tokio::task::spawn_blocking(move || {
            // Done: everything was delivered or failed, nothing is left in the producer's
            // queue. Stopped on an error: dropping the producer purges what it still holds,
            // whose records are then abandoned (never acknowledged).
            if delivered {
                let _ = producer.flush(Duration::from_secs(10));
            }
            // Dropping the producer waits for its polling thread, which wakes every 100 ms:
            // not worth holding up the end of the flow for.
            let _ = std::thread::Builder::new()
                .name("kafka producer drop".into())
                .spawn(move || drop(producer));
        })
        .await;
        result
    }
}

impl KafkaSink {
    /// Hand the input to the producer and handle its delivery reports, until the input ends
    /// and every record was delivered or failed.
    async fn produce(
        &self,
        ctx: &mut SinkContext,
        producer: &ThreadedProducer<Reports>,
        context: &FlowContext,
    ) -> Result<(), ProcessorError> {
        let reports = producer.context().clone();
        let max_inflight = self.cfg.max_inflight;
        let topic_ensured = self.cfg.create_topic.is_some();
        let mut failures = Output::new(ctx.name.clone(), ctx.failures.port_count().max(1));
        let mut input_done = false;
        // Records of the current batch not yet handed to the producer.
        let mut todo: std::collections::VecDeque<Prepared> = std::collections::VecDeque::new();
        let retry = Retry::new(ctx);
        let what = "delivering to Kafka".to_owned();
        let mut attempts = retry.attempts(&what);
        let mut progress = tokio::time::Instant::now();
        loop {
            // The reports handled since the last turn.
            record_sends(ctx, &reports).await;
            let sent = reports.sent.swap(0, Ordering::Relaxed);
            if sent > 0 {
                context.reachable();
                ctx.metrics.add_sent(sent);
                progress = tokio::time::Instant::now();
                if attempts.failures() > 0 {
                    std::mem::replace(&mut attempts, retry.attempts(&what)).succeeded();
                }
            }
            let failed_reports = std::mem::take(
                &mut *reports
                    .failed
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner),
            );
            let mut failed = false;
            let mut resend = Vec::new();
            let mut broker_error = None;
            for (record, e) in failed_reports {
                match fault(&e, topic_ensured) {
                    Fault::Record => {
                        failures.fail(record, &e);
                        failed = true;
                    }
                    Fault::Fatal => {
                        return Err(ProcessorError::other(format!("Kafka refused: {e}")));
                    }
                    Fault::Broker => {
                        resend.push(record);
                        broker_error = Some(e);
                    }
                }
            }
            // (Failed reports are no progress: `STOP_GRACE` counts from the last delivery.)
            if let Some(e) = broker_error {
                // Not delivered in `delivery_timeout`: the brokers' trouble, not the records'.
                // Wait (the sink takes no input meanwhile), then produce them again, first.
                attempts
                    .failed(ProcessorError::unavailable(format!(
                        "{} records not delivered: {e}",
                        resend.len()
                    )))
                    .await?;
                for record in resend.into_iter().rev() {
                    match self.prepare(record) {
                        Ok(p) => todo.push_front(p),
                        Err((r, msg)) => {
                            failures.fail(r, &msg);
                            failed = true;
                        }
                    }
                }
            }
            if input_done && todo.is_empty() && reports.inflight.load(Ordering::Acquire) == 0 {
                if failed {
                    ctx.failures.flush(&mut failures).await?;
                }
                // Reports handled after the turn's first look.
                record_sends(ctx, &reports).await;
                return Ok(());
            }
            // Hand records over while the window has room and the producer's queue takes them.
            let mut queue_full = false;
            while reports.inflight.load(Ordering::Acquire) < max_inflight
                && let Some(p) = todo.pop_front()
            {
                let Prepared {
                    mut record,
                    topic,
                    key,
                    headers,
                } = p;
                let payload = record.content().clone();
                let to = topic
                    .as_deref()
                    .or(self.fixed_topic.as_deref())
                    .unwrap_or_default();
                let mut br = BaseRecord::<[u8], [u8], Box<Record>>::with_opaque_to(to, record)
                    .payload(&payload[..]);
                if let Some(k) = &key {
                    br = br.key(&k[..]);
                }
                if let Some(h) = &headers {
                    br = br.headers(h.clone());
                }
                // Counted before the send: its report may come at once.
                reports.inflight.fetch_add(1, Ordering::AcqRel);
                if let Err((e, br)) = producer.send(br) {
                    reports.inflight.fetch_sub(1, Ordering::AcqRel);
                    let record = br.delivery_opaque;
                    match fault(&e, topic_ensured) {
                        Fault::Record => {
                            failures.fail(*record, &e);
                            failed = true;
                        }
                        Fault::Fatal => {
                            return Err(ProcessorError::other(format!("Kafka refused: {e}")));
                        }
                        Fault::Broker => {
                            todo.push_front(Prepared {
                                record,
                                topic,
                                key,
                                headers,
                            });
                            queue_full = true;
                            break;
                        }
                    }
                }
            }
            if failed {
                ctx.failures.flush(&mut failures).await?;
            }
            let inflight = reports.inflight.load(Ordering::Acquire);
            // Read after `inflight`: a report that came since is in one or the other.
            let delivered = reports
                .delivered
                .as_ref()
                .is_some_and(|d| !d.lock().unwrap_or_else(PoisonError::into_inner).is_empty());
            // Failed reports too: one may have come after the check above (inflight already
            // down to 0); its permit wakes the sink, which then handles it at the top.
            let failed_reports = !reports
                .failed
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .is_empty();
            let stopping = ctx.shutdown.is_cancelled() && (inflight > 0 || !todo.is_empty());
            tokio::select! {
                // Input first: reports need no prompt handling (a delivered record was
                // acknowledged in the callback); they wake the sink when the window is full,
                // the producer's queue is, or the input is idle.
                biased;
                batch = ctx.input.next(), if !input_done && todo.is_empty() && inflight < max_inflight => {
                    let Some(batch) = batch else {
                        input_done = true;
                        continue;
                    };
                    progress = tokio::time::Instant::now();
                    let mut failed = false;
                    for record in batch {
                        match self.prepare(record) {
                            Ok(p) => todo.push_back(p),
                            Err((r, msg)) => {
                                failures.fail(r, &msg);
                                failed = true;
                            }
                        }
                    }
                    if failed {
                        ctx.failures.flush(&mut failures).await?;
                    }
                }
                // A report came (a permit stored since the last turn counts too: no report is
                // missed between the counters above and here).
                () = reports.wake.notified(), if inflight > 0 || delivered || failed_reports => {}
                _ = tokio::time::sleep(QUEUE_FULL_WAIT), if queue_full && inflight == 0 => {}
                // Asked to stop while nothing is delivered any more (the brokers are down):
                // give up within bounds; what is in flight stays unacknowledged.
                () = tokio::time::sleep_until(progress + STOP_GRACE), if stopping => {
                    return Err(ProcessorError::Stopped(format!(
                        "asked to stop while {} records waited for Kafka and none was delivered \
                         for {STOP_GRACE:?}: they stay unacknowledged and are read again on the \
                         next run",
                        inflight + todo.len()
                    )));
                }
                // Re-check `stopping` once the stop is asked.
                () = ctx.shutdown.cancelled(), if !stopping && (inflight > 0 || !todo.is_empty()) => {}
            }
        }
    }
}

/// Whose fault a production error is.
enum Fault {
    /// The record's: it goes to `failure` (too large, invalid, an unknown topic).
    Record,
    /// The brokers': unavailable for now, so the record is produced again later.
    Broker,
    /// Retrying cannot fix it (authorization, authentication, a fatal producer error).
    Fatal,
}

/// Whose fault `e` is.
///
/// A sink that made its topic sure to exist at start (`create_topic`, `topic_ensured`) takes an
/// unknown topic or partition for the broker's trouble: its metadata lags the creation (seen
/// with tansu on object storage, where the first records then went to `failure`), and the
/// record is produced again later.
fn fault(e: &KafkaError, topic_ensured: bool) -> Fault {
    use RDKafkaErrorCode as C;
    match e.rdkafka_error_code() {
        Some(C::UnknownTopic | C::UnknownTopicOrPartition | C::UnknownPartition)
            if topic_ensured =>
        {
            Fault::Broker
        }
        Some(
            C::MessageSizeTooLarge
            | C::InvalidMessageSize
            | C::InvalidMessage
            | C::InvalidRecord
            | C::MessageBatchTooLarge
            | C::InvalidTimestamp
            | C::InvalidTopic
            | C::UnknownTopic
            | C::UnknownTopicOrPartition
            | C::UnknownPartition
            | C::PolicyViolation
            | C::UnsupportedForMessageFormat
            | C::InvalidArgument,
        ) => Fault::Record,
        Some(
            C::TopicAuthorizationFailed
            | C::ClusterAuthorizationFailed
            | C::SaslAuthenticationFailed
            | C::Authentication
            | C::Fatal
            | C::ProducerFenced
            | C::InvalidProducerEpoch
            | C::InvalidRequiredAcks,
        ) => Fault::Fatal,
        _ => Fault::Broker,
    }
}

#[cfg(test)]
mod unit {
    use super::*;
    use crate::testing::config;
    use serde_json::json;

    #[test]
    fn validation_points_at_the_options() {
        let c: KafkaSinkConfig = config(json!({
            "brokers": "", "topic": "bad topic", "key": ".a ==", "acks": "1",
            "properties": {"group.id": "x"}
        }));
        let paths: Vec<String> = c.validate().into_iter().map(|e| e.path.join(".")).collect();
        assert_eq!(
            paths,
            ["brokers", "properties.group.id", "topic", "key", "acks"]
        );
        let c: KafkaSinkConfig =
            config(json!({"brokers": ["127.0.0.1:9092"], "topic": "t-{device}"}));
        assert!(c.validate().is_empty(), "{:?}", c.validate());
        let c: KafkaSinkConfig = config(json!({
            "brokers": "h:1", "topic": "t", "properties": {"no.such.setting": "1"}
        }));
        let e = c.validate();
        assert_eq!(e[0].path, ["properties"]);
        assert!(e[0].message.contains("no.such.setting"), "{e:?}");
    }
}

#[cfg(test)]
mod fault_tests {
    use super::*;

    /// Found by `cli/tests/outages.rs`: right after `create_topic`, tansu on object storage
    /// answered a record with "unknown topic or partition", and the record went to `failure`.
    #[test]
    fn an_unknown_topic_is_the_brokers_trouble_once_the_sink_made_its_topic() {
        let unknown = KafkaError::MessageProduction(RDKafkaErrorCode::UnknownTopicOrPartition);
        assert!(matches!(fault(&unknown, false), Fault::Record));
        assert!(matches!(fault(&unknown, true), Fault::Broker));
        let big = KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge);
        assert!(matches!(fault(&big, true), Fault::Record));
    }
}
