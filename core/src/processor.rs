//! The processor contract: one trait family, three shapes.
//!
//! Every processor has a config struct (serde + JSON Schema, `deny_unknown_fields`, a doc comment
//! on every field: the docs and the designer's forms are generated from them) that implements
//! [`ProcessorConfig`]. A config goes through three phases:
//!
//! 1. **parse**: YAML into the struct (serde);
//! 2. **validate**: [`ProcessorConfig::validate`], pure, no I/O (`flow validate` stops here, so it
//!    is fast and safe to run anywhere);
//! 3. **build**: [`ProcessorConfig::build`] makes the running [`Processor`]; this may open files
//!    and connect.
//!
//! The running shapes:
//! - [`Transform`]: the simple, default case. `process` gets one record and pushes zero or more
//!   records to named ports. The runtime drives it batch by batch.
//! - [`Source`]: a task that makes records and emits them in batches, each carrying an
//!   acknowledgement token (see [`crate::ack`]).
//! - [`Sink`]: a task that consumes batches and writes them somewhere.
//!
//! **Acknowledgement** (see [`crate::ack`]): finishing a record is explicit. Every legitimate
//! end of a record releases its acknowledgement tokens: a sink wrote it ([`Record::finish`]),
//! a transform dropped it on purpose ([`Output::drop_record`]), it went to [`Output::fail`]
//! (the `failure` port, with `error.*` attributes; with no edge there the runtime counts and
//! logs it, and it is acknowledged `Failed`), it went to a port without edges, a window
//! emitted the aggregate that includes it. A record that is simply dropped (a panic, an error
//! return, a bug that loses it) is *abandoned*: its source commits neither it nor anything
//! after it, so it is read again after a restart. Nothing is ever lost silently, and nothing
//! panics on input.
//!
//! **Errors**: a record's own problem (it cannot be parsed, encoded, routed; the destination
//! rejects its content) sends that record to `failure` and the processor goes on. A problem
//! of the processor or its destination is a [`ProcessorError`], whose [`RetryHint`] says
//! whether waiting can fix it (a server down, a full disk: sinks retry with
//! [`crate::retry::Retry`]) or not (refused credentials, a path that is not a file: the flow
//! stops with the error). Either way, records not written are never committed.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use crate::ack::AckStatus;
use crate::record::Record;
use crate::runtime::edge::Batch;
use crate::runtime::emit::{DownstreamGone, Emitter, Input};
use crate::runtime::metrics::NodeMetrics;

/// The port every processor has, for records it could not process.
pub const FAILURE: &str = "failure";

/// A processor's output port, by index. [`PortId::FAILURE`] is always 0; the ports a config
/// declares in [`ProcessorConfig::outputs`] follow from 1, the first being the default port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PortId(pub usize);

impl PortId {
    /// The `failure` port.
    pub const FAILURE: PortId = PortId(0);
    /// The first declared port: where `a -> b` connects when no port is named.
    pub const DEFAULT: PortId = PortId(1);
}

/// What shape a processor has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Makes records; has no inputs.
    Source,
    /// Records in, records out.
    Transform,
    /// Records in, written somewhere; only a `failure` output.
    Sink,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Source => "source",
            Kind::Transform => "transform",
            Kind::Sink => "sink",
        })
    }
}

/// A problem `validate` found in a config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// Keys leading to the offending value inside the processor's config (`["routes", "hot"]`).
    pub path: Vec<String>,
    /// Byte offset inside that value's text the problem points at (expression errors).
    pub offset: Option<usize>,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub help: Option<String>,
}

impl ConfigError {
    /// An error about the value at `path`.
    pub fn new(path: &[&str], message: impl Into<String>) -> Self {
        Self {
            path: path.iter().map(|s| s.to_string()).collect(),
            offset: None,
            message: message.into(),
            help: None,
        }
    }

    /// Errors from compiling the expression at `path`.
    pub fn from_expr(path: &[&str], err: &crate::expr::CompileError) -> Vec<Self> {
        err.0
            .iter()
            .map(|d| Self {
                path: path.iter().map(|s| s.to_string()).collect(),
                offset: d.span.map(|s| s.0),
                message: format!("invalid expression: {}", d.message),
                // Every explanation, one per line.
                help: (!d.notes.is_empty()).then(|| d.notes.join("\n")),
            })
            .collect()
    }
}

/// Building a processor failed (a file that cannot be opened, an expression that does not
/// compile).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BuildError(pub String);

impl From<crate::expr::CompileError> for BuildError {
    fn from(e: crate::expr::CompileError) -> Self {
        BuildError(e.to_string())
    }
}

/// Whether trying the same thing again, later, may succeed (Arroyo's `RetryHint`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryHint {
    /// The destination is unavailable for now (a server down or overloaded, a timeout, a
    /// full disk): try again with capped exponential backoff.
    WithBackoff,
    /// Waiting cannot fix it (refused credentials, a path that is not a writable file, an
    /// I/O error after which the data may be gone): stop the flow with the error.
    NoRetry,
}

/// A running processor failed (or one attempt of it did: see [`ProcessorError::retry_hint`]).
/// Returned from a task, it stops the flow and makes the run an error; the records the
/// processor held are abandoned, so their sources do not commit them.
#[derive(Debug, thiserror::Error)]
pub enum ProcessorError {
    /// An I/O error; whether it is worth retrying depends on its kind ([`io_retry_hint`]).
    #[error("{context}: {source}")]
    Io {
        /// What the processor was doing.
        context: String,
        /// The error.
        source: std::io::Error,
    },
    /// The destination (or source) is unavailable for now; worth retrying with backoff.
    #[error("{message}")]
    Unavailable {
        /// What failed.
        message: String,
        /// How long the other side asked to wait (`Retry-After`), if it did.
        retry_after: Option<Duration>,
    },
    /// The flow was asked to stop while the processor was still retrying: it gave up, and left
    /// what it had not written unacknowledged (read again on the next run).
    #[error("{0}")]
    Stopped(String),
    /// Anything else; not retried.
    #[error("{0}")]
    Other(String),
}

impl ProcessorError {
    /// An error from anything displayable, not retried.
    pub fn other(e: impl fmt::Display) -> Self {
        ProcessorError::Other(e.to_string())
    }

    /// The destination is unavailable for now: retry with backoff.
    pub fn unavailable(e: impl fmt::Display) -> Self {
        ProcessorError::Unavailable {
            message: e.to_string(),
            retry_after: None,
        }
    }

    /// An I/O error while doing `context`.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        ProcessorError::Io {
            context: context.into(),
            source,
        }
    }

    /// Whether retrying may help.
    pub fn retry_hint(&self) -> RetryHint {
        match self {
            ProcessorError::Io { source, .. } => io_retry_hint(source),
            ProcessorError::Unavailable { .. } => RetryHint::WithBackoff,
            ProcessorError::Stopped(_) | ProcessorError::Other(_) => RetryHint::NoRetry,
        }
    }

    /// How long the other side asked to wait before the next attempt.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ProcessorError::Unavailable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

impl From<DownstreamGone> for ProcessorError {
    fn from(e: DownstreamGone) -> Self {
        ProcessorError::other(e)
    }
}

/// Whether an I/O error is worth retrying. Running out of space or quota, a busy resource, a
/// timeout, an interrupted call or a lost connection: yes, the condition can pass. Anything
/// else is not: permission denied, a read-only file system, a path that is a directory, an
/// argument the destination does not take (`EINVAL`, as when writing to most of `/proc`), a
/// closed pipe (the reader is gone) and the generic `EIO`: after a failed write or `fsync`
/// the kernel may have dropped the data, so a retry that "succeeds" could hide a loss
/// (PostgreSQL's fsyncgate); the flow stops instead, and the records are read again by the
/// next run.
pub fn io_retry_hint(e: &std::io::Error) -> RetryHint {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::StorageFull
        | K::QuotaExceeded
        | K::ResourceBusy
        | K::WouldBlock
        | K::Interrupted
        | K::TimedOut
        | K::ConnectionRefused
        | K::ConnectionReset
        | K::ConnectionAborted
        | K::NotConnected
        | K::HostUnreachable
        | K::NetworkUnreachable
        | K::NetworkDown
        | K::OutOfMemory => RetryHint::WithBackoff,
        _ => RetryHint::NoRetry,
    }
}

/// What `build` gets besides the config.
#[derive(Clone, Debug)]
pub struct BuildContext {
    /// The processor's name in the flow.
    pub name: String,
    /// Whether a processor this one feeds reads the records' fields
    /// ([`ProcessorConfig::reads_values`]). Sources of JSON then build the structured view as
    /// they read (one pass); otherwise they only check the content and leave the view to be
    /// built on first use.
    pub consumers_read_values: bool,
    /// Whether those that read fields read only top-level fields of objects
    /// ([`ProcessorConfig::reads_only_top_level_fields`]): sources of JSON then index them
    /// instead of building the view ([`crate::record::JsonView::Fields`]).
    pub consumers_read_only_fields: bool,
    /// The flow's processing time (see [`crate::clock`]): read it here, never `SystemTime`,
    /// so that `flow test` can drive it.
    pub clock: crate::clock::Clock,
}

impl BuildContext {
    /// A context for `name`, as if its consumers read fields, on the system clock (tests,
    /// tools).
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            consumers_read_values: true,
            consumers_read_only_fields: false,
            clock: crate::clock::Clock::system(),
        }
    }

    /// How a source should read JSON content.
    pub fn json_view(&self) -> crate::record::JsonView {
        if self.consumers_read_values && self.consumers_read_only_fields {
            crate::record::JsonView::Fields
        } else if self.consumers_read_values {
            crate::record::JsonView::Eager
        } else {
            crate::record::JsonView::Lazy
        }
    }
}

/// A processor's config: the typed, validated description of what it should do.
pub trait ProcessorConfig: fmt::Debug + Send + Sync + 'static {
    /// Output ports besides `failure`, the default port first. Sinks declare none.
    fn outputs(&self) -> Vec<String>;

    /// Ports among [`ProcessorConfig::outputs`] whose records must never be dropped silently
    /// (records that left the normal path, like a window's `late` records). With no edge,
    /// they are counted as failed and logged once per burst, as `failure`'s are. On every
    /// other port, no edge means dropped on purpose.
    fn reported_outputs(&self) -> Vec<String> {
        Vec::new()
    }

    /// For a source: after a restart it replays its uncommitted input as one stream in the
    /// same order, every record with the same [`crate::record::Origin`] as before (a file read
    /// from its committed line). Exactly-once sinks and numbered window outputs rely on it
    /// (see [`crate::committed`]); sources that interleave several streams (Kafka partitions)
    /// or whose input a broker redelivers in its own order say no.
    fn replays_in_order(&self) -> bool {
        false
    }

    /// Check what can be checked without I/O: expressions compile, values are in range.
    fn validate(&self) -> Vec<ConfigError> {
        Vec::new()
    }

    /// Make the running processor.
    fn build(&self, ctx: &BuildContext) -> Result<Processor, BuildError>;

    /// Whether this processor reads its input records' fields (their structured view), not
    /// only their content and attributes. Sinks that write the content as it is say no.
    fn reads_values(&self) -> bool {
        true
    }

    /// Whether the fields it reads are all top-level fields of objects, read through
    /// [`crate::record::Record::fields`] when the source indexed them (a filter with a native
    /// condition, a window keyed by `.device`). Only a hint for the sources: a record without
    /// indexed fields is read from its structured view as always.
    fn reads_only_top_level_fields(&self) -> bool {
        false
    }
}

/// The static description of a processor type, for the registry.
pub trait Describe: ProcessorConfig + DeserializeOwned + JsonSchema {
    /// The `type:` name in flow files.
    const TYPE: &'static str;
    /// The processor's shape.
    const KIND: Kind;
    /// Whether it runs user code (a WebAssembly plugin): the designer's palette lists such
    /// processors under "plugins".
    const PLUGIN: bool = false;
}

/// A built, runnable processor.
pub enum Processor {
    /// See [`Source`].
    Source(Box<dyn Source>),
    /// See [`Transform`].
    Transform(Box<dyn Transform>),
    /// See [`Sink`].
    Sink(Box<dyn Sink>),
    /// See [`TaskTransform`].
    Task(Box<dyn TaskTransform>),
}

/// Records in, records out, one at a time. The runtime hands a transform every record of a
/// batch, then forwards what it pushed, port by port, keeping the order.
pub trait Transform: Send {
    /// Handle one record: push it (or records derived from it, see [`Record::derive`]) to
    /// ports of `out`, or drop it on purpose with [`Output::drop_record`] (which counts and
    /// acknowledges it). A record that is neither pushed nor dropped that way is abandoned:
    /// its source will not commit it. Never panic on bad input: use [`Output::fail`].
    fn process(&mut self, record: Record, out: &mut Output);

    /// For a transform that sends each record on unchanged to one port (a filter): that
    /// port, from a look at the record. Records a fan-out shares between several edges are
    /// then copied only when the port sends them somewhere: one a filter drops costs no copy
    /// (see [`crate::runtime::shared`]). `None` (the default): the runtime calls
    /// [`Transform::process`] with the record, as for a record this look cannot decide.
    fn route(&mut self, _record: &Record) -> Option<PortId> {
        None
    }

    /// Whether [`Transform::route`] answers for most records (a filter whose condition the
    /// source's indexed fields answer). A fan-out shares its batch with a consumer that
    /// routes (it copies only what it sends on); to consumers that all take every record, the
    /// producer hands copies, cheaper made where the records are.
    fn routes(&self) -> bool {
        false
    }

    /// Called once after the last input, to emit anything held back.
    fn finish(&mut self, _out: &mut Output) {}
}

/// What a source gets to run.
pub struct SourceContext {
    /// The processor's name.
    pub name: Arc<str>,
    /// Where batches go.
    pub out: Emitter,
    /// Cancelled on shutdown: stop reading, emit what you have, wait for acks, commit, return.
    pub shutdown: CancellationToken,
    /// Counters shared with the runtime. A source counts the records it reads
    /// (`add_received`), makes its tracker count acknowledgements
    /// ([`crate::ack::AckTracker::counting`] with `metrics.acks()`), and publishes what it knows
    /// of its lag ([`NodeMetrics::set_lag`], [`NodeMetrics::set_progress`]) and connection
    /// ([`NodeMetrics::set_connected`]).
    pub metrics: Arc<NodeMetrics>,
}

/// A record producer.
///
/// Contract: make records, attach an acknowledgement token per batch
/// ([`crate::ack::AckTracker`]), send batches with `ctx.out` (which waits when the flow is
/// full: that is back-pressure, so never buffer around it). Commit a position only when the
/// tracker says every batch before it finished. On `ctx.shutdown`, stop reading, drop `ctx.out`
/// (so the flow can drain), wait for outstanding acks, commit and return `Ok`.
#[async_trait]
pub trait Source: Send {
    /// Run until the input ends or shutdown is requested.
    async fn run(self: Box<Self>, ctx: SourceContext) -> Result<(), ProcessorError>;
}

/// What a task-shaped transform gets to run.
pub struct TaskContext {
    /// The processor's name.
    pub name: Arc<str>,
    /// Incoming batches; `None` once every upstream has finished and drained.
    pub input: Input,
    /// Where batches go.
    pub out: Emitter,
    /// Cancelled when the flow is asked to stop. When the input ends with this cancelled, the
    /// flow is shutting down (keep state to resume); otherwise the input itself ended (flush).
    pub shutdown: CancellationToken,
    /// Counters shared with the runtime (which counts what `input` gives and `out` sends).
    pub metrics: Arc<NodeMetrics>,
}

/// A transform that needs more than one record at a time: timers (idle timeouts), state that is
/// checkpointed, records held back and emitted later (windows).
///
/// Contract: read batches from `ctx.input` until `None`, emit with `ctx.out` (which waits when
/// downstream is full). Records held in state keep their acknowledgement tokens (see
/// [`Record::take_acks`]) until the result that includes them is emitted (the tokens move into
/// it) or a checkpoint holds them (then they are released). Every record taken in ends
/// explicitly, as for [`Transform::process`]: if the task panics or returns an error, whatever
/// it holds is abandoned, and no source commits it. The runtime counts the records `input`
/// hands out and those `out` sends; the task counts records it drops on purpose
/// (`metrics.add_dropped`).
#[async_trait]
pub trait TaskTransform: Send {
    /// Run until the input is exhausted.
    async fn run(self: Box<Self>, ctx: TaskContext) -> Result<(), ProcessorError>;
}

/// What a sink gets to run.
pub struct SinkContext {
    /// The processor's name.
    pub name: Arc<str>,
    /// Batches to write; `None` once every upstream has finished and drained.
    pub input: Input,
    /// The sink's `failure` port, for records it could not write.
    pub failures: Emitter,
    /// Counters shared with the runtime (which counts the records `input` hands out).
    pub metrics: Arc<NodeMetrics>,
    /// Cancelled when the flow is asked to stop. The input still drains (write what comes), but
    /// a sink waiting for an unavailable destination gives up ([`crate::retry::Retry`] does):
    /// a stop stays bounded, and what was not written stays uncommitted.
    pub shutdown: CancellationToken,
}

/// A record consumer.
///
/// Contract: write each batch, then finish its records ([`Record::finish`], which
/// acknowledges them) and count them with `metrics.add_sent`. Flush everything before
/// returning, once `input` is exhausted. What goes wrong is one of two things:
/// - **the record's fault**: it cannot be encoded, it is too large for the destination, the
///   destination rejected its content (a 400 for that record, a message too large). It goes to
///   `failures` with the error (acknowledged `Failed`: replaying would not help) and the sink
///   goes on.
/// - **the sink's**: the destination is unavailable or broken. Transient conditions
///   ([`RetryHint::WithBackoff`]: I/O errors such as a full disk, connection refused,
///   timeouts, 429/5xx) are retried with capped exponential backoff, logged once per burst,
///   while the sink takes no more input (back-pressure). Conditions retrying cannot fix
///   ([`RetryHint::NoRetry`]: permission denied, not a file, `EIO`, refused credentials) are
///   returned as the error: the flow stops and the run fails. Asked to stop while retrying,
///   the sink gives up with [`ProcessorError::Stopped`].
///
/// Either way, records not written are never acknowledged as written: a sink never finishes
/// them, so their sources do not commit them and read them again on the next run.
#[async_trait]
pub trait Sink: Send {
    /// Run until the input is exhausted.
    async fn run(self: Box<Self>, ctx: SinkContext) -> Result<(), ProcessorError>;
}

/// Per-batch output buffer of a transform: records pushed to each port, in order.
pub struct Output {
    ports: Vec<Batch>,
    processor: Arc<str>,
    dropped: u64,
    /// The ids of the records dropped on purpose (provenance's DROP).
    dropped_ids: Vec<crate::record::RecordId>,
    /// The id last pushed, and whether a record was pushed twice in a row (copies of one
    /// record on several ports, as a route that matches several routes: provenance forks
    /// them).
    last_pushed: Option<crate::record::RecordId>,
    copies: bool,
    /// Per port, the ids of shared records routed to it that it sends nowhere (no edge): no
    /// copy was made; the emitter counts and records them as the port's drop (see
    /// [`Output::shed`]).
    shed: Vec<Vec<crate::record::RecordId>>,
}

impl Output {
    /// A buffer for a processor with `ports` outputs (failure included).
    pub fn new(processor: Arc<str>, ports: usize) -> Self {
        Self {
            ports: (0..ports).map(|_| Vec::new()).collect(),
            processor,
            dropped: 0,
            dropped_ids: Vec::new(),
            last_pushed: None,
            copies: false,
            shed: (0..ports).map(|_| Vec::new()).collect(),
        }
    }

    /// A shared record (`id`, as this node knows it) routed to `port`, which sends it
    /// nowhere: dropped as a record pushed there would be, without making its copy. The
    /// runtime's, for [`Transform::route`].
    pub fn shed(&mut self, port: PortId, id: crate::record::RecordId) {
        if let Some(ids) = self.shed.get_mut(port.0) {
            ids.push(id);
        }
    }

    /// The ids shed on `port` (see [`Output::shed`]) since the last call.
    pub fn take_shed(&mut self, port: PortId) -> Vec<crate::record::RecordId> {
        self.shed
            .get_mut(port.0)
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// The ids shed on `port` so far (not taken yet).
    pub fn shed_ids(&self, port: PortId) -> &[crate::record::RecordId] {
        self.shed.get(port.0).map_or(&[], Vec::as_slice)
    }

    /// Push a record to a port.
    pub fn push(&mut self, port: PortId, record: Record) {
        let id = record.id();
        self.copies |= self.last_pushed == Some(id);
        self.last_pushed = Some(id);
        if let Some(b) = self.ports.get_mut(port.0) {
            b.push(record);
        } else {
            // A processor pushed to a port it did not declare: a bug, reported as a failure
            // rather than a lost record.
            let msg = format!("internal error: no output port #{}", port.0);
            self.fail(record, &msg);
        }
    }

    /// Send a record to `failure`, with `error.message` and `error.processor` attributes.
    pub fn fail(&mut self, mut record: Record, error: &dyn fmt::Display) {
        record.set_attribute("error.message", error.to_string());
        record.set_attribute("error.processor", self.processor.to_string());
        record.mark(AckStatus::Failed);
        self.ports[PortId::FAILURE.0].push(record);
    }

    /// Drop a record on purpose (counted in the node's `dropped`; this acknowledges it).
    pub fn drop_record(&mut self, record: Record) {
        self.dropped += 1;
        self.dropped_ids.push(record.id());
        record.finish();
    }

    /// How many records were dropped on purpose since the last call (resets the count).
    /// Their ids are forgotten: take them first ([`Output::take_dropped_ids`]).
    pub fn take_dropped(&mut self) -> u64 {
        self.dropped_ids.clear();
        std::mem::take(&mut self.dropped)
    }

    /// The ids of the records dropped on purpose so far (not taken yet).
    pub fn dropped_ids(&self) -> &[crate::record::RecordId] {
        &self.dropped_ids
    }

    /// The number of ports.
    pub fn port_count(&self) -> usize {
        self.ports.len()
    }

    /// The ids of the records dropped on purpose since the last call.
    pub fn take_dropped_ids(&mut self) -> Vec<crate::record::RecordId> {
        std::mem::take(&mut self.dropped_ids)
    }

    /// Whether a record was pushed to several ports since the last call (see
    /// [`crate::provenance::fork_copies`]), and the buffers per port, to renumber them.
    pub fn copies(&mut self) -> Option<&mut [Batch]> {
        self.last_pushed = None;
        std::mem::take(&mut self.copies).then_some(self.ports.as_mut_slice())
    }

    /// Take what was pushed to each port, leaving the buffer empty.
    pub fn drain(&mut self) -> impl Iterator<Item = (PortId, Batch)> + '_ {
        self.ports
            .iter_mut()
            .enumerate()
            .filter(|(_, b)| !b.is_empty())
            // The next batch is likely about as large: room for it and a quarter more, so
            // that one a little larger is not regrown (a copy of every record) at its end.
            .map(|(i, b)| {
                let room = b.len() + b.len() / 4;
                (PortId(i), std::mem::replace(b, Vec::with_capacity(room)))
            })
    }

    /// What was pushed to `port` so far (tests).
    pub fn port(&self, port: PortId) -> &[Record] {
        self.ports.get(port.0).map_or(&[], Vec::as_slice)
    }
}

/// One entry of the registry: everything the CLI, the schema and the designer need to know
/// about a processor type.
pub struct ProcessorDef {
    /// The `type:` name.
    pub type_name: &'static str,
    /// Its shape.
    pub kind: Kind,
    /// Whether it runs user code ([`Describe::PLUGIN`]).
    pub plugin: bool,
    /// Its JSON Schema (from the config struct).
    pub schema: fn(&mut schemars::SchemaGenerator) -> schemars::Schema,
    /// Parse a config from YAML.
    pub parse:
        fn(&marked_yaml::Node) -> Result<Box<dyn ProcessorConfig>, marked_yaml::FromNodeError>,
}

impl ProcessorDef {
    /// The definition of config type `C`.
    pub fn of<C: Describe>() -> Self {
        fn parse<C: Describe>(
            node: &marked_yaml::Node,
        ) -> Result<Box<dyn ProcessorConfig>, marked_yaml::FromNodeError> {
            let c: C = marked_yaml::from_node(node)?;
            Ok(Box::new(c))
        }
        Self {
            type_name: C::TYPE,
            kind: C::KIND,
            plugin: C::PLUGIN,
            schema: |g| C::json_schema(g),
            parse: parse::<C>,
        }
    }

    /// The config struct's doc comment, from its schema.
    pub fn description(&self) -> String {
        let mut g = schemars::SchemaGenerator::default();
        let schema = (self.schema)(&mut g);
        schema
            .get("description")
            .and_then(|d| d.as_str())
            .unwrap_or_default()
            .to_owned()
    }

    /// The first sentence of the description: the one-line doc.
    pub fn summary(&self) -> String {
        let d = self.description();
        let first = d
            .split("\n\n")
            .next()
            .unwrap_or_default()
            .replace('\n', " ");
        first.trim().to_owned()
    }

    /// The names of the config's top-level keys (for "did you mean").
    pub fn keys(&self) -> Vec<String> {
        let mut g = schemars::SchemaGenerator::default();
        let schema = (self.schema)(&mut g);
        schema
            .get("properties")
            .and_then(|p| p.as_object())
            .map(|p| p.keys().cloned().collect())
            .unwrap_or_default()
    }
}

/// Every processor type the engine knows, in one list.
pub struct Registry {
    defs: Vec<ProcessorDef>,
}

impl Registry {
    /// A registry of the given definitions.
    pub fn new(defs: Vec<ProcessorDef>) -> Self {
        let mut defs = defs;
        defs.sort_by_key(|d| d.type_name);
        Self { defs }
    }

    /// The definition of `type_name`.
    pub fn get(&self, type_name: &str) -> Option<&ProcessorDef> {
        self.defs.iter().find(|d| d.type_name == type_name)
    }

    /// All definitions, sorted by name.
    pub fn all(&self) -> &[ProcessorDef] {
        &self.defs
    }
}
