//! `window_aggregate`: event-time windows per key, with watermarks, a `late` port and state that
//! survives a restart.

pub mod aggregate;
mod chunks;
pub mod engine;
mod index;
mod open;
mod store;

use std::time::Duration;

use async_trait::async_trait;
use flow_core::clock::Clock;
use flow_core::expr::{EvalError, Expr, ExprKind};
use flow_core::processor::{
    BuildContext, BuildError, ConfigError, Describe, Kind, Output, Processor, ProcessorConfig,
    ProcessorError, TaskContext, TaskTransform,
};
use flow_core::record::{Record, Scalar, Value};
use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::Deserialize;
use smallvec::SmallVec;
use tokio::time::Instant;

use aggregate::{AggError, AggSpec};
use engine::{Engine, Key, Settings};

/// Aggregate records over windows of event time per key: tumbling, hopping or session windows.
///
/// The watermark is the highest event time seen minus `allowed_lateness` (one per processor). A
/// window fires when the watermark passes its end, emitting one record per key on `out`:
/// `{<key_field>, window_start, window_end, <aggregates>}`, whose parents are the records it
/// aggregates. Windows are emitted in order of end; windows that end together, in the order they
/// opened (their key's first record in them). A record whose windows have all fired goes to `late`
/// with `window.start`, `window.end` and `window.watermark` attributes; it is never dropped
/// silently. When the input ends every open window is emitted. With `state`, open windows are
/// checkpointed to a local store and resume after a restart (or a crash); records a source replays
/// that the checkpoint already holds are recognised by their origin and skipped. Sources commit a
/// record only once a checkpoint covers it, so a crash never produces a partial window; windows
/// emitted after the last checkpoint may be emitted again (identical, and with the same origin:
/// outputs are numbered in order of emission when `state` and `event_time` are set, `idle_timeout`
/// is not and the window has one path back to its source, so an exactly-once sink such as
/// `file_sink` or `s3_sink` writes them once; see docs/reliability.md). A late or refused record
/// not yet delivered at a checkpoint is sent again when a restart replays it. Without `state`, a
/// crash may emit windows again from the replayed part of the input only (partial). A checkpoint
/// refused by a full disk is tried again (backoff up to 60s) while the window waits.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WindowAggregateConfig {
    /// The key (a VRL expression, like `.device`); records are aggregated per key. Absent: one
    /// global key.
    #[serde(default)]
    pub key: Option<String>,
    /// The output field that holds the key.
    #[serde(default = "default_key_field")]
    pub key_field: String,
    /// The event time (a VRL expression) as epoch milliseconds or seconds (see
    /// `event_time_unit`), an RFC 3339 string, or a timestamp. Absent: processing time (the
    /// clock when the record arrives).
    #[serde(default)]
    pub event_time: Option<String>,
    /// Unit of numeric event times: `ms` or `s`.
    #[serde(default)]
    pub event_time_unit: TimeUnit,
    /// The windows: `{ tumbling: 10s }`, `{ hopping: { size: 10s, slide: 5s } }` or
    /// `{ session: { gap: 30s } }`.
    pub window: WindowConfig,
    /// How far behind the highest event time seen a record may be and still count.
    #[serde(default, with = "humantime_serde")]
    #[schemars(with = "Option<String>")]
    pub allowed_lateness: Option<Duration>,
    /// When no record arrives for this long (processing time), event time is moved forward by
    /// as much, so windows of a quiet unbounded source still fire.
    #[serde(default, with = "humantime_serde")]
    #[schemars(with = "Option<String>")]
    pub idle_timeout: Option<Duration>,
    /// A record whose event time is more than this ahead of the wall clock goes to `failure`
    /// (`error.message` says by how much) instead of moving the watermark: one event from a
    /// device with a broken clock (dated in 2100) would otherwise make every record after it
    /// late. Like Kafka's `log.message.timestamp.after.max.ms`, whose default is also one hour.
    /// `null` turns the check off (data from the future on purpose); it does not apply to
    /// processing time.
    #[serde(default = "default_max_future", with = "humantime_serde")]
    #[schemars(with = "Option<String>")]
    pub max_future: Option<Duration>,
    /// Output fields and their aggregates, in order: `count()`, `sum(.x)`, `min(.x)`,
    /// `max(.x)`, `avg(.x)`, `first(.x)`, `last(.x)`, `count_distinct(.x)`, `p50(.x)`,
    /// `p90(.x)`, `p95(.x)`, `p99(.x)` (percentiles from a t-digest). Arguments are VRL.
    #[serde(default)]
    pub aggregates: IndexMap<String, String>,
    /// The output field that holds the window's start (epoch ms).
    #[serde(default = "default_start_field")]
    pub window_start_field: String,
    /// The output field that holds the window's end (epoch ms, exclusive).
    #[serde(default = "default_end_field")]
    pub window_end_field: String,
    /// At most this many (key, window) pairs open at once.
    #[serde(default = "default_limit")]
    pub max_open_windows: usize,
    /// At most this many distinct keys with open windows.
    #[serde(default = "default_limit")]
    pub max_keys: usize,
    /// What happens at a limit: `fail` (the record goes to `failure`) or `evict_oldest` (the
    /// window closing first is emitted early, with attribute `window.evicted`).
    #[serde(default)]
    pub on_limit: LimitPolicy,
    /// An output record lists at most this many parent ids; beyond, attribute `window.inputs`
    /// says how many records it aggregates. With provenance on, every input is kept as a
    /// parent (8 bytes each while its window is open) so that the JOIN names them all.
    #[serde(default = "default_max_parents")]
    pub max_parents: usize,
    /// A file (a redb database) where open windows are checkpointed. Absent: state lives in
    /// memory, and a graceful stop emits open windows early.
    #[serde(default)]
    pub state: Option<String>,
    /// How often open windows are checkpointed (also at a graceful stop). A checkpoint lets
    /// the sources commit the records it holds.
    #[serde(default = "default_checkpoint_interval", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub checkpoint_interval: Duration,
}

/// Window shapes; exactly one is set.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WindowConfig {
    /// Fixed, non-overlapping windows of this size, aligned to the epoch.
    #[serde(default, with = "humantime_serde")]
    #[schemars(with = "Option<String>")]
    pub tumbling: Option<Duration>,
    /// Overlapping windows.
    #[serde(default)]
    pub hopping: Option<HoppingConfig>,
    /// Windows of activity per key, closed by a gap.
    #[serde(default)]
    pub session: Option<SessionConfig>,
}

/// Hopping windows: `size` long, one starting every `slide`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HoppingConfig {
    /// Window length.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub size: Duration,
    /// Distance between window starts (at most `size`).
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub slide: Duration,
}

/// Session windows: a key's session ends after `gap` without records.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionConfig {
    /// Inactivity that closes a session.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub gap: Duration,
}

/// Unit of numeric event times.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TimeUnit {
    /// Milliseconds since the epoch.
    #[default]
    Ms,
    /// Seconds since the epoch (fractions allowed).
    S,
}

/// What happens when a state limit is reached.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LimitPolicy {
    /// The record that needs a new window goes to `failure`.
    #[default]
    Fail,
    /// The window closing first is emitted early, flagged with `window.evicted`.
    EvictOldest,
}

/// A window shape in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowKind {
    Tumbling { size: i64 },
    Hopping { size: i64, slide: i64 },
    Session { gap: i64 },
}

fn default_key_field() -> String {
    "key".into()
}
fn default_start_field() -> String {
    "window_start".into()
}
fn default_end_field() -> String {
    "window_end".into()
}
fn default_limit() -> usize {
    100_000
}
fn default_max_parents() -> usize {
    64
}
fn default_checkpoint_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_max_future() -> Option<Duration> {
    Some(Duration::from_secs(3600))
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The longest duration any time setting may have. Event times are dates chrono can represent
/// (about ±262,000 years), so with every duration below this, no sum of a time and a duration
/// comes near the 64-bit limit; longer ones are surely a typo.
const MAX_DURATION: Duration = Duration::from_secs(10_000 * 31_557_600);

/// `d` in milliseconds, unless it is longer than [`MAX_DURATION`].
fn not_too_long(d: Duration, path: &[&str]) -> Result<i64, ConfigError> {
    if d > MAX_DURATION {
        let mut e = ConfigError::new(path, "must be at most 10000 years");
        e.help = Some(format!(
            "`{}` is longer than any event time range",
            humantime_serde::re::humantime::format_duration(d)
        ));
        return Err(e);
    }
    Ok(ms(d))
}

impl WindowAggregateConfig {
    fn kind(&self) -> Result<WindowKind, ConfigError> {
        let w = &self.window;
        let set = [
            w.tumbling.is_some(),
            w.hopping.is_some(),
            w.session.is_some(),
        ];
        if set.iter().filter(|s| **s).count() != 1 {
            return Err(ConfigError::new(
                &["window"],
                "set exactly one of `tumbling`, `hopping`, `session`",
            ));
        }
        let positive = |d: Duration, path: &[&str]| {
            if ms(d) == 0 {
                return Err(ConfigError::new(path, "must be at least 1ms"));
            }
            not_too_long(d, path)
        };
        if let Some(t) = w.tumbling {
            return Ok(WindowKind::Tumbling {
                size: positive(t, &["window", "tumbling"])?,
            });
        }
        if let Some(h) = &w.hopping {
            let size = positive(h.size, &["window", "hopping", "size"])?;
            let slide = positive(h.slide, &["window", "hopping", "slide"])?;
            if slide > size {
                return Err(ConfigError::new(
                    &["window", "hopping", "slide"],
                    "the slide must not be longer than the window",
                ));
            }
            if size / slide > engine::MAX_HOPS {
                let mut e = ConfigError::new(
                    &["window", "hopping", "slide"],
                    format!(
                        "each record would belong to {} windows (`size / slide`); at most {} \
                         are allowed",
                        size / slide,
                        engine::MAX_HOPS
                    ),
                );
                e.help = Some("use a longer slide or a shorter window".into());
                return Err(e);
            }
            return Ok(WindowKind::Hopping { size, slide });
        }
        let gap = w.session.as_ref().map_or(Duration::ZERO, |s| s.gap);
        Ok(WindowKind::Session {
            gap: positive(gap, &["window", "session", "gap"])?,
        })
    }

    fn compile(&self) -> Result<Compiled, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let kind = self.kind().map_err(|e| errors.push(e)).ok();
        let mut expr = |src: &Option<String>, path: &str| match src {
            None => None,
            Some(s) => match Expr::compile(s, ExprKind::Value) {
                Ok(e) => Some(e),
                Err(e) => {
                    errors.extend(ConfigError::from_expr(&[path], &e));
                    None
                }
            },
        };
        let key = expr(&self.key, "key");
        let event_time = expr(&self.event_time, "event_time");
        let mut aggregates = Vec::new();
        let reserved = [
            &self.key_field,
            &self.window_start_field,
            &self.window_end_field,
        ];
        for (name, text) in &self.aggregates {
            if reserved.contains(&name) {
                errors.push(ConfigError::new(
                    &["aggregates", name],
                    format!("`{name}` is already an output field (key, start or end)"),
                ));
            }
            match AggSpec::parse(text) {
                Ok(a) => aggregates.push((name.clone(), a)),
                Err(AggError::Expr(e, offset)) => {
                    let mut errs = ConfigError::from_expr(&["aggregates", name], &e);
                    for err in &mut errs {
                        err.offset = err.offset.map(|o| o + offset);
                    }
                    errors.extend(errs);
                }
                Err(AggError::Unknown(n, help)) => {
                    let mut e = ConfigError::new(
                        &["aggregates", name],
                        format!("unknown aggregate function `{n}`"),
                    );
                    e.help = help.or_else(|| Some("count, sum, min, max, avg, first, last, count_distinct, p50, p90, p95, p99".into()));
                    errors.push(e);
                }
                Err(e) => errors.push(ConfigError::new(&["aggregates", name], e.to_string())),
            }
        }
        for (key, limit) in [
            ("max_open_windows", self.max_open_windows),
            ("max_keys", self.max_keys),
        ] {
            if limit == 0 {
                errors.push(ConfigError::new(&[key], "must be at least 1"));
            }
        }
        if self.checkpoint_interval.is_zero() {
            errors.push(ConfigError::new(
                &["checkpoint_interval"],
                "must be longer than 0",
            ));
        }
        for (d, key) in [
            (self.allowed_lateness, "allowed_lateness"),
            (self.idle_timeout, "idle_timeout"),
            (self.max_future, "max_future"),
            (Some(self.checkpoint_interval), "checkpoint_interval"),
        ] {
            if let Some(Err(e)) = d.map(|d| not_too_long(d, &[key])) {
                errors.push(e);
            }
        }
        match (kind, errors.is_empty()) {
            (Some(kind), true) => Ok(Compiled {
                key,
                event_time,
                settings: Settings {
                    kind,
                    lateness: self.allowed_lateness.map_or(0, ms),
                    aggregates,
                    key_field: self.key_field.clone(),
                    start_field: self.window_start_field.clone(),
                    end_field: self.window_end_field.clone(),
                    max_open_windows: self.max_open_windows,
                    max_keys: self.max_keys,
                    on_limit: self.on_limit,
                    max_parents: self.max_parents,
                    all_parents: false,
                    origin: None,
                },
            }),
            _ => Err(errors),
        }
    }
}

struct Compiled {
    key: Option<Expr>,
    event_time: Option<Expr>,
    settings: Settings,
}

impl ProcessorConfig for WindowAggregateConfig {
    fn outputs(&self) -> Vec<String> {
        vec!["out".into(), "late".into()]
    }

    fn reported_outputs(&self) -> Vec<String> {
        vec!["late".into()]
    }

    fn validate(&self) -> Vec<ConfigError> {
        self.compile().err().unwrap_or_default()
    }

    fn reads_only_top_level_fields(&self) -> bool {
        let Ok(c) = self.compile() else { return false };
        let top = |e: &Option<Expr>| e.as_ref().is_none_or(Expr::reads_only_top_level_fields);
        top(&c.key) && top(&c.event_time) && c.settings.aggregates.iter().all(|(_, a)| top(&a.arg))
    }

    fn build(&self, ctx: &BuildContext) -> Result<Processor, BuildError> {
        let c = self.compile().map_err(|errs| {
            BuildError(
                errs.iter()
                    .map(|e| e.message.clone())
                    .collect::<Vec<_>>()
                    .join("; "),
            )
        })?;
        let args = c
            .settings
            .aggregates
            .iter()
            .map(|(_, a)| a.arg.clone())
            .collect();
        Ok(Processor::Task(Box::new(Window {
            cfg: self.clone(),
            key: c.key,
            event_time: c.event_time,
            args,
            settings: Some(c.settings),
            clock: ctx.clock.clone(),
        })))
    }
}

impl Describe for WindowAggregateConfig {
    const TYPE: &'static str = "window_aggregate";
    const KIND: Kind = Kind::Transform;
}

struct Window {
    cfg: WindowAggregateConfig,
    key: Option<Expr>,
    event_time: Option<Expr>,
    /// Each aggregate's argument (`None` for `count()`).
    args: Vec<Option<Expr>>,
    /// Moved into the engine when the task starts.
    settings: Option<Settings>,
    /// Processing time (the flow's clock: `flow test` drives it).
    clock: Clock,
}

/// Why an event time could not be read.
#[derive(Debug, thiserror::Error)]
enum TimeError {
    #[error("event time: {0}")]
    Eval(flow_core::expr::EvalError),
    #[error("event {0}")]
    Value(String),
    #[error(
        "event time {ts} is {ahead} ahead of the wall clock, more than `max_future` ({max}); it \
         would move the watermark that far and make the records after it late"
    )]
    Future { ts: i64, ahead: String, max: String },
}

fn to_ms(v: &Value, unit: TimeUnit) -> Result<i64, TimeError> {
    crate::template::time_ms(v, unit).map_err(TimeError::Value)
}

impl Window {
    /// `ts`, unless it is more than `max_future` ahead of the wall clock.
    fn not_too_far_ahead(&self, ts: i64, now: i64) -> Result<i64, TimeError> {
        let Some(max) = self.cfg.max_future else {
            return Ok(ts);
        };
        if ts <= now.saturating_add(ms(max)) {
            return Ok(ts);
        }
        // `ts - now` fits in 64 bits as an unsigned difference of two `i64`.
        let ahead = ts.abs_diff(now);
        Err(TimeError::Future {
            ts,
            ahead: humantime_serde::re::humantime::format_duration(Duration::from_secs(
                ahead / 1000,
            ))
            .to_string(),
            max: humantime_serde::re::humantime::format_duration(max).to_string(),
        })
    }

    /// Read a record's time, key and arguments, and hand it to the engine.
    fn handle(
        &self,
        r: Record,
        engine: &mut Engine,
        out: &mut Output,
        time: &BatchTime,
        args: &mut Vec<Value>,
    ) {
        let mut r = match self.add_indexed(r, engine, out, time, args) {
            Ok(()) => return,
            Err(r) => r,
        };
        let (value, attributes) = match r.view() {
            Ok(v) => v,
            Err(e) => return out.fail(r, &e),
        };
        let ts = self.time_of(
            self.event_time.as_ref().map(|e| e.eval(value, attributes)),
            time,
        );
        let key = match &self.key {
            Some(e) => e.eval(value, attributes),
            None => Ok(Value::Null),
        };
        args.clear();
        let mut failed = None;
        for a in &self.args {
            match a {
                Some(e) => match e.eval(value, attributes) {
                    Ok(v) => args.push(v),
                    Err(err) => {
                        failed = Some(err.to_string());
                        break;
                    }
                },
                None => args.push(Value::Null),
            }
        }
        match (ts, key, failed) {
            (Ok(ts), Ok(key), None) => engine.add(r, ts, key, args, out),
            (Err(e), _, _) => out.fail(r, &e),
            (_, Err(e), _) => out.fail(r, &format!("key: {e}")),
            (_, _, Some(e)) => out.fail(r, &format!("aggregate argument: {e}")),
        }
    }

    /// The event time in milliseconds from the value of `event_time` (`None` without one:
    /// the clock's time).
    fn time_of(
        &self,
        value: Option<Result<Value, EvalError>>,
        time: &BatchTime,
    ) -> Result<i64, TimeError> {
        match value {
            Some(v) => v
                .map_err(TimeError::Eval)
                .and_then(|v| to_ms(&v, self.cfg.event_time_unit))
                .and_then(|ts| self.not_too_far_ahead(ts, time.now)),
            // Processing time: each record's own reading.
            None => Ok(time.clock.now_ms()),
        }
    }

    /// Read a record's time, key and arguments from the fields the source indexed (see
    /// [`flow_core::record::JsonView::Fields`]) and hand it to the engine; the record back
    /// when they do not answer for every one of them (read it from the structured view).
    ///
    /// One function from the index to the engine: the time and key returned in a tuple (an
    /// `Option` of a `Value` and a 64-byte key) were copied through the stack, and read back
    /// at other widths than they were written, stalling on every record.
    #[allow(
        clippy::result_large_err,
        reason = "the record is handed back on the rare path (the structured view)"
    )]
    fn add_indexed(
        &self,
        r: Record,
        engine: &mut Engine,
        out: &mut Output,
        time: &BatchTime,
        args: &mut Vec<Value>,
    ) -> Result<(), Record> {
        let Some(f) = r.fields() else {
            return Err(r);
        };
        // The time is converted once the key and arguments answered too (else the view does
        // it all again).
        let ts = match &self.event_time {
            Some(e) => match e.scalar_fields(f) {
                Scalar::Int(i) => Some(Value::Integer(i)),
                _ => match e.eval_fields(f) {
                    Some(v) => Some(v),
                    None => return Err(r),
                },
            },
            None => None,
        };
        // A string key is copied out of the content (a few bytes on the stack): the record
        // moves into the engine, and a `Value` of it would be a shared count of the source's
        // read buffer, up here and down again when the record is dropped, on another core.
        // A longer key than the stack copy holds is read as a `Value` (no allocation).
        let key = match &self.key {
            Some(e) => match e.scalar_fields(f) {
                Scalar::Str(b) if b.len() <= KEY_ON_STACK => KeyRead::Text(SmallVec::from_slice(b)),
                _ => match e.eval_fields(f) {
                    Some(v) => KeyRead::Value(v),
                    None => return Err(r),
                },
            },
            None => KeyRead::Value(Value::Null),
        };
        // The arguments written in place (a record's are numbers: nothing to free).
        args.resize(self.args.len(), Value::Null);
        for (a, v) in self.args.iter().zip(args.iter_mut()) {
            match a {
                Some(e) => {
                    if !e.eval_fields_into(f, v) {
                        return Err(r);
                    }
                }
                None => *v = Value::Null,
            }
        }
        let ts = match ts {
            Some(v) => to_ms(&v, self.cfg.event_time_unit)
                .and_then(|ts| self.not_too_far_ahead(ts, time.now)),
            // Processing time: each record's own reading.
            None => Ok(time.clock.now_ms()),
        };
        match (ts, key) {
            (Ok(ts), KeyRead::Text(text)) => engine.add(r, ts, Key::Text(&text), args, out),
            (Ok(ts), KeyRead::Value(v)) => engine.add(r, ts, v, args, out),
            (Err(e), _) => out.fail(r, &e),
        }
        Ok(())
    }
}

/// The longest string key copied onto the stack (see [`Window::add_indexed`]).
const KEY_ON_STACK: usize = 64;

/// A key read from indexed fields: a string's text, or another value.
enum KeyRead {
    Text(SmallVec<[u8; KEY_ON_STACK]>),
    Value(Value),
}

/// The clock, and its time when the batch came in: `max_future` compares event times with
/// that (one clock read per batch, not one per record); processing time reads the clock.
struct BatchTime<'a> {
    clock: &'a Clock,
    now: i64,
}

impl<'a> BatchTime<'a> {
    fn new(clock: &'a Clock) -> Self {
        Self {
            clock,
            now: clock.now_ms(),
        }
    }
}

fn publish(engine: &Engine, ctx: &TaskContext) {
    let c = engine.counters;
    let m = &ctx.metrics;
    m.set_status("open_windows", engine.open().into());
    m.set_status("late", c.late.into());
    m.set_status("evicted", c.evicted.into());
    m.set_status("replayed_skipped", c.replayed.into());
    if let Some(wm) = engine.watermark() {
        m.set_status("watermark", wm.into());
    }
}

#[async_trait]
impl TaskTransform for Window {
    async fn run(mut self: Box<Self>, mut ctx: TaskContext) -> Result<(), ProcessorError> {
        let mut settings = self
            .settings
            .take()
            .ok_or_else(|| ProcessorError::other("window started twice"))?;
        // Provenance's JOIN names every input of a window's output.
        settings.all_parents = ctx.out.provenance().is_some();
        // Outputs are numbered (an origin exactly-once sinks skip on replay) only when a
        // restart emits the same windows in the same order: see `Settings::origin`.
        if self.cfg.state.is_some()
            && self.event_time.is_some()
            && self.cfg.idle_timeout.is_none()
            && ctx.input.origins_ordered()
        {
            settings.origin = Some(flow_core::record::Origin::source_id(&ctx.name));
        }
        let mut engine = Engine::new(settings);
        let this = self;
        // A checkpoint that fails on a full disk is tried again (1 s, doubling up to 60 s,
        // a warning per burst) while the window takes no input: back-pressure.
        let retry = flow_core::retry::Retry::for_node(ctx.name.clone(), ctx.shutdown.clone())
            .backoff(Duration::from_secs(1), Duration::from_secs(60));
        let store = match &this.cfg.state {
            Some(path) => {
                let s = store::Store::open(path, &ctx.name).await?;
                if let Some(bytes) = s.load().await? {
                    engine.restore(&bytes).map_err(|e| {
                        ProcessorError::other(format!("window state in {path} is unreadable: {e}"))
                    })?;
                    tracing::info!(node = %ctx.name, open = engine.open(), "resumed open windows from the checkpoint");
                }
                engine.track_for_checkpoints();
                Some(s)
            }
            None => None,
        };
        let mut out = Output::new(ctx.name.clone(), ctx.out.port_count());
        let clock = this.clock.clone();
        let processing_time = this.event_time.is_none();
        let idle = this.cfg.idle_timeout;
        // Durations from the config may be too long to add to an instant: such a deadline is
        // simply never reached.
        let after = |t: Instant, d: Duration| t.checked_add(d);
        let mut last_input = Instant::now();
        let mut next_checkpoint = after(Instant::now(), this.cfg.checkpoint_interval);
        let mut args = Vec::new();
        let far = Duration::from_secs(86_400 * 365);
        loop {
            let mut deadline = Instant::now() + far;
            let mut sooner = |t: Option<Instant>| {
                if let Some(t) = t {
                    deadline = deadline.min(t);
                }
            };
            if let (Some(idle), true) = (idle, engine.open() > 0) {
                sooner(after(last_input, idle));
            }
            if processing_time && let Some(end) = engine.next_end() {
                sooner(clock.instant_of(end.saturating_add(engine.lateness())));
            }
            if store.is_some() {
                sooner(next_checkpoint);
            }
            tokio::select! {
                biased;
                batch = ctx.input.next() => {
                    let Some(batch) = batch else { break };
                    let time = BatchTime::new(&clock);
                    for r in flow_core::prefetch::Prefetched::new(batch) {
                        this.handle(r, &mut engine, &mut out, &time, &mut args);
                        // A record that closed more windows than a chunk: the rest go out
                        // chunk by chunk, each sent on (back-pressure) before the next.
                        while engine.closing() {
                            ctx.out.flush(&mut out).await?;
                            engine.fire_some(&mut out, engine::FIRE_CHUNK);
                        }
                    }
                    last_input = Instant::now();
                }
                _ = tokio::time::sleep_until(deadline) => {}
            }
            let now = Instant::now();
            if processing_time {
                engine.advance_to(clock.now_ms(), &mut out);
            }
            if let Some(idle) = idle
                && engine.open() > 0
                && after(last_input, idle).is_some_and(|t| now >= t)
            {
                let to = engine
                    .max_ts()
                    .map_or(clock.now_ms(), |t| t.saturating_add(ms(idle)));
                engine.advance_to(to, &mut out);
                last_input = now;
            }
            ctx.out.flush(&mut out).await?;
            engine.delivered();
            if let Some(s) = &store
                && next_checkpoint.is_some_and(|t| now >= t)
            {
                checkpoint(&mut engine, s, &retry).await?;
                next_checkpoint = after(now, this.cfg.checkpoint_interval);
            }
            publish(&engine, &ctx);
        }
        match &store {
            // Stopping: keep the open windows for the next run.
            Some(s) if ctx.shutdown.is_cancelled() => checkpoint(&mut engine, s, &retry).await?,
            _ => {
                while engine.flush_some(&mut out, engine::FIRE_CHUNK) {
                    ctx.out.flush(&mut out).await?;
                }
                // Saved, not cleared: the state keeps how many windows were emitted (and which
                // are not yet delivered), so a next run on grown input numbers its windows
                // after these, and a sink that records positions does not take them for
                // windows it already wrote (and skip them: a loss).
                if let Some(s) = &store {
                    checkpoint(&mut engine, s, &retry).await?;
                }
                engine.release_acks();
            }
        }
        publish(&engine, &ctx);
        ctx.out.flush(&mut out).await?;
        Ok(())
    }
}

/// Store the state (retried while the disk is full), then release the acknowledgements it
/// covers.
async fn checkpoint(
    engine: &mut Engine,
    store: &store::Store,
    retry: &flow_core::retry::Retry,
) -> Result<(), ProcessorError> {
    let bytes = engine
        .snapshot()
        .map_err(|e| ProcessorError::other(format!("cannot encode window state: {e}")))?;
    retry
        .run("storing the window state", |_| store.save(bytes.clone()))
        .await?;
    engine.release_acks();
    Ok(())
}

#[cfg(test)]
mod tests;
