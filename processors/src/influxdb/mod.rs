//! `influxdb_sink`: write records as points through the InfluxDB v2 write API.
//!
//! **Why our own line protocol over `reqwest` rather than the `influxdb2` crate.** The crate
//! (0.5) brings its own reqwest 0.11 stack (a second HTTP client and TLS build in the tree), its
//! write call hides the HTTP status and the `Retry-After` header we must honour, it has no gzip
//! request bodies, and its `DataPoint` builder owns one allocation per tag and field. What we
//! need from it is small: the line-protocol encoder (about a hundred lines in [`line`], written
//! from the reference and checked by property tests against an independent reader and by
//! read-back from VictoriaMetrics) and one `POST /api/v2/write`. Doing both here keeps one HTTP
//! client for the workspace (shared with `object_store`), lets the sink classify responses
//! exactly (2xx ack; 429/5xx/408 retry; 401/403/404 stop the flow; other 4xx to `failure`),
//! and costs no extra build.

pub(crate) mod line;
#[cfg(test)]
mod tests;

use std::time::Duration;

use async_trait::async_trait;
use bytesize::ByteSize;
use flow_core::processor::{
    BuildContext, BuildError, ConfigError, Describe, Kind, Output, Processor, ProcessorConfig,
    ProcessorError, Sink, SinkContext,
};
use flow_core::record::{Attributes, FieldValue as Indexed, FieldsRef, Record, Scalar, Value};
use schemars::JsonSchema;
use serde::Deserialize;
use tokio::time::Instant;

use flow_core::retry::{FIRST as FIRST_BACKOFF, Retry};

use crate::template::{Placeholders, Template, lookup, now_ms, scalar_text, time_ms};
use crate::window::TimeUnit;
use line::{FieldValue, LineError, PointWriter};

/// Write records to InfluxDB (v2 write API, line protocol) as points, in batches.
///
/// Each record (a JSON object) is one point: the measurement is a template over its fields,
/// `tags` names the fields written as tags, and `fields` the ones written as fields (by default
/// every numeric top-level field that is not a tag or the timestamp). The timestamp is the
/// `timestamp` field, else the record's event time, else the time it is written, sent at
/// `precision`. Points are sent in batches (by count, bytes and time), gzip-compressed, up to
/// `max_in_flight` requests at once. A batch is acknowledged once the server answered 2xx. When the server is unavailable (429,
/// 5xx, 408, connection errors, timeouts) the batch is sent again with capped exponential
/// backoff, honouring `Retry-After`; the input waits meanwhile (back-pressure) and nothing is
/// acknowledged. A refusal retrying cannot fix (401 or 403: the token; 404: the org or bucket)
/// stops the flow with the server's message. Any other 4xx (a 400 for a field type conflict, a
/// 413) is the records' fault: the batch's records go to `failure` with the server's message.
/// A record that cannot be made a point (no fields, a line break in a tag, a measurement field
/// missing) goes to `failure` on its own. Records not written are never acknowledged, so their
/// source reads them again. Works with InfluxDB 2 and 3 and with servers that accept its write
/// API (VictoriaMetrics, QuestDB).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InfluxDbSinkConfig {
    /// The server, like `http://127.0.0.1:8086`; points are posted to `<url>/api/v2/write`.
    pub url: String,
    /// The organisation (name or id).
    pub org: String,
    /// The bucket.
    pub bucket: String,
    /// The API token (use `${VAR}` to take it from the environment), sent as
    /// `Authorization: Token ...`. Empty or absent: no authorization header. Never logged.
    #[serde(default)]
    #[schemars(extend("writeOnly" = true))]
    pub token: Option<String>,
    /// The measurement, a template: `{name}` is the record's field `name` (`{a.b}` a nested
    /// one), or its attribute `name` when there is no such field.
    pub measurement: String,
    /// Fields written as tags (dotted paths reach nested fields; the tag key is the name as
    /// written here). A record without one of them gets no such tag.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Fields written as fields: numbers (integers as `42i`), booleans and strings. Absent:
    /// every numeric top-level field except the tags and the timestamp field. A record with no
    /// field to write goes to `failure`.
    #[serde(default)]
    pub fields: Option<Vec<String>>,
    /// The field holding the point's time (epoch time in `timestamp_unit`, or RFC 3339). Absent:
    /// the record's event time, or the time it is written when it has none.
    #[serde(default)]
    pub timestamp: Option<String>,
    /// Unit of a numeric `timestamp` field: `ms` or `s`.
    #[serde(default)]
    pub timestamp_unit: TimeUnit,
    /// The precision of the timestamps sent: `s`, `ms`, `us` or `ns`.
    #[serde(default)]
    pub precision: Precision,
    /// A batch is sent once it holds this many points.
    #[serde(default = "default_batch_records")]
    pub batch_max_records: usize,
    /// ...or this many bytes of line protocol (before compression), like `1MiB`.
    #[serde(default = "default_batch_bytes")]
    #[schemars(with = "String")]
    pub batch_max_bytes: ByteSize,
    /// ...or once its first point waited this long.
    #[serde(default = "default_batch_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub batch_timeout: Duration,
    /// Compress request bodies with gzip.
    #[serde(default = "default_true")]
    pub gzip: bool,
    /// How long one request may take.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub timeout: Duration,
    /// The longest wait between two attempts (the wait doubles from 100ms up to this; a
    /// `Retry-After` answer is honoured as given).
    #[serde(default = "default_retry_max", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub retry_max: Duration,
    /// Give up after this many failed attempts at a batch (429, 5xx, connection errors): the flow
    /// stops with the error, and the batch's records, never acknowledged, are read again by the
    /// next run. Absent: retry until it succeeds (nothing is lost while the server is down; the
    /// flow waits, and a stop asked meanwhile gives up the same way).
    #[serde(default)]
    pub max_retries: Option<u32>,
    /// Requests posted at once: the next batches are encoded and sent while earlier ones wait
    /// for their answer. Points are idempotent by series and time, so batches may land in any
    /// order; each is acknowledged when its own answer comes. 1 sends one batch at a time.
    #[serde(default = "default_in_flight")]
    pub max_in_flight: usize,
}

fn default_in_flight() -> usize {
    4
}

/// The precision of the timestamps sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// Seconds.
    S,
    /// Milliseconds.
    #[default]
    Ms,
    /// Microseconds.
    Us,
    /// Nanoseconds.
    Ns,
}

impl Precision {
    fn as_str(self) -> &'static str {
        match self {
            Precision::S => "s",
            Precision::Ms => "ms",
            Precision::Us => "us",
            Precision::Ns => "ns",
        }
    }

    /// Epoch milliseconds in this precision.
    fn convert(self, ms: i64) -> Option<i64> {
        match self {
            Precision::S => Some(ms.div_euclid(1000)),
            Precision::Ms => Some(ms),
            Precision::Us => ms.checked_mul(1000),
            Precision::Ns => ms.checked_mul(1_000_000),
        }
    }
}

fn default_batch_records() -> usize {
    5000
}
fn default_batch_bytes() -> ByteSize {
    ByteSize::mib(1)
}
fn default_batch_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_true() -> bool {
    true
}
fn default_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_retry_max() -> Duration {
    Duration::from_secs(30)
}

impl Describe for InfluxDbSinkConfig {
    const TYPE: &'static str = "influxdb_sink";
    const KIND: Kind = Kind::Sink;
}

impl InfluxDbSinkConfig {
    fn write_url(&self) -> Result<reqwest::Url, String> {
        let mut url = reqwest::Url::parse(&self.url)
            .map_err(|e| format!("`{}` is not a URL: {e}", self.url))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("`{}`: the scheme must be http or https", self.url));
        }
        let path = format!("{}/api/v2/write", url.path().trim_end_matches('/'));
        url.set_path(&path);
        url.query_pairs_mut()
            .append_pair("org", &self.org)
            .append_pair("bucket", &self.bucket)
            .append_pair("precision", self.precision.as_str());
        Ok(url)
    }
}

impl InfluxDbSinkConfig {
    /// Whether a point can be written from the top-level fields a source indexed: `fields` is
    /// named (absent, every numeric field is written, which takes the whole object), and the
    /// tags, fields, timestamp and measurement placeholders are all top-level names.
    fn reads_indexed_fields(&self) -> bool {
        let top = |name: &str| !name.contains('.');
        self.fields
            .as_ref()
            .is_some_and(|f| f.iter().all(|n| top(n)))
            && self.tags.iter().all(|n| top(n))
            && self.timestamp.as_deref().is_none_or(top)
            && Template::parse(&self.measurement, Placeholders::Fields)
                .is_ok_and(|t| t.field_names().all(top))
    }
}

impl ProcessorConfig for InfluxDbSinkConfig {
    fn outputs(&self) -> Vec<String> {
        Vec::new()
    }

    /// With `fields` named and every name it reads a top-level field (no dotted path): the
    /// source then indexes those fields in each record's content, and points are written from
    /// that index, without building each record's structured view.
    fn reads_only_top_level_fields(&self) -> bool {
        self.reads_indexed_fields()
    }

    fn validate(&self) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        if let Err(e) = self.write_url() {
            errors.push(ConfigError::new(&["url"], e));
        }
        if self.org.is_empty() {
            errors.push(ConfigError::new(&["org"], "the organisation is empty"));
        }
        if self.bucket.is_empty() {
            errors.push(ConfigError::new(&["bucket"], "the bucket is empty"));
        }
        if let Err(e) = Template::parse(&self.measurement, Placeholders::Fields) {
            errors.push(ConfigError::new(&["measurement"], e));
        } else if self.measurement.is_empty() {
            errors.push(ConfigError::new(
                &["measurement"],
                "the measurement is empty",
            ));
        }
        for (i, t) in self.tags.iter().enumerate() {
            if t.is_empty() {
                errors.push(ConfigError::new(
                    &["tags", &i.to_string()],
                    "empty tag name",
                ));
            }
        }
        for (i, f) in self.fields.iter().flatten().enumerate() {
            if f.is_empty() {
                errors.push(ConfigError::new(
                    &["fields", &i.to_string()],
                    "empty field name",
                ));
            } else if self.tags.contains(f) {
                errors.push(ConfigError::new(
                    &["fields", &i.to_string()],
                    format!("`{f}` is also a tag"),
                ));
            }
        }
        if self.fields.as_ref().is_some_and(Vec::is_empty) {
            errors.push(ConfigError::new(
                &["fields"],
                "no fields: a point needs at least one",
            ));
        }
        if self.batch_max_records == 0 {
            errors.push(ConfigError::new(
                &["batch_max_records"],
                "must be at least 1",
            ));
        }
        if self.max_in_flight == 0 {
            errors.push(ConfigError::new(&["max_in_flight"], "must be at least 1"));
        }
        if self.batch_max_bytes.as_u64() == 0 {
            errors.push(ConfigError::new(
                &["batch_max_bytes"],
                "must be at least 1B",
            ));
        }
        errors
    }

    fn build(&self, _: &BuildContext) -> Result<Processor, BuildError> {
        let url = self.write_url().map_err(BuildError)?;
        let measurement =
            Template::parse(&self.measurement, Placeholders::Fields).map_err(BuildError)?;
        let client = crate::http_client::client(self.timeout)
            .map_err(|e| BuildError(format!("cannot make the HTTP client: {e}")))?;
        Ok(Processor::Sink(Box::new(InfluxDbSink::new(
            self.clone(),
            url,
            measurement,
            client,
        ))))
    }
}

struct InfluxDbSink {
    cfg: InfluxDbSinkConfig,
    url: reqwest::Url,
    measurement: Template,
    /// The measurement, when the template has no placeholder.
    constant_measurement: Option<String>,
    /// `tags`, sorted by name: the order they are written in.
    sorted_tags: Vec<String>,
    /// Whether records whose fields the source indexed are written from that index (see
    /// [`InfluxDbSinkConfig::reads_indexed_fields`]).
    indexed: bool,
    client: reqwest::Client,
}

/// Why a point was not written from the indexed fields.
enum NotWritten {
    /// The record cannot be a point (it goes to `failure` with this message).
    Error(String),
    /// A name reads a nested object or array: the record's structured view says what to make
    /// of it.
    Nested,
}

impl From<LineError> for NotWritten {
    fn from(e: LineError) -> Self {
        NotWritten::Error(e.to_string())
    }
}

impl From<String> for NotWritten {
    fn from(e: String) -> Self {
        NotWritten::Error(e)
    }
}

/// What became of an attempt to send a batch that the server answered.
enum Attempt {
    /// 2xx.
    Written,
    /// The server refused the batch's content (a 4xx but 401, 403, 404, 408, 429).
    Refused(String),
}

/// How much of an error body goes into the message.
const MAX_MESSAGE: usize = 1024;

impl InfluxDbSink {
    fn new(
        cfg: InfluxDbSinkConfig,
        url: reqwest::Url,
        measurement: Template,
        client: reqwest::Client,
    ) -> Self {
        let mut sorted_tags = cfg.tags.clone();
        // Stable: tags named twice are written twice, as given.
        sorted_tags.sort();
        Self {
            constant_measurement: measurement.constant(),
            indexed: cfg.reads_indexed_fields(),
            sorted_tags,
            cfg,
            url,
            measurement,
            client,
        }
    }

    /// Append `r` as one line to `out`; on error `out` is left as it was.
    fn encode(&self, r: &mut Record, out: &mut String) -> Result<(), String> {
        if self.indexed
            && let Some(fields) = r.fields()
        {
            match self.encode_indexed(fields, r.attributes(), r.event_time(), out) {
                Ok(()) => return Ok(()),
                Err(NotWritten::Error(e)) => return Err(e),
                Err(NotWritten::Nested) => {}
            }
        }
        self.encode_view(r, out)
    }

    /// [`InfluxDbSink::encode`] from the top-level fields the source indexed.
    fn encode_indexed(
        &self,
        fields: FieldsRef<'_>,
        attributes: &Attributes,
        event_time: Option<i64>,
        out: &mut String,
    ) -> Result<(), NotWritten> {
        let rendered;
        let measurement = match &self.constant_measurement {
            Some(m) => m.as_str(),
            None => {
                rendered = self
                    .measurement
                    .render_indexed(fields, attributes, 0)
                    .ok_or(NotWritten::Nested)??;
                rendered.as_str()
            }
        };
        let get = |name: &str| match fields.get(name) {
            Indexed::Missing | Indexed::Value(Value::Null) => Ok(None),
            Indexed::Value(v) => Ok(Some(v)),
            Indexed::Nested => Err(NotWritten::Nested),
        };
        let mut p = PointWriter::new(out, measurement)?;
        // Numbers and plain strings are read borrowed from the content (no `Value` made:
        // nearly every tag and field); anything else as the view has it.
        for name in &self.sorted_tags {
            if let Scalar::Str(b) = fields.get_scalar(name)
                && let Ok(text) = std::str::from_utf8(b)
            {
                p.tag(name, text)?;
            } else if let Some(v) = get(name)? {
                write_tag(&mut p, name, &v)?;
            }
        }
        for name in self.cfg.fields.iter().flatten() {
            match fields.get_scalar(name) {
                Scalar::Int(i) => p.field(name, &FieldValue::Integer(i))?,
                Scalar::Float(x) => p.field(name, &FieldValue::Float(x))?,
                Scalar::Str(b) if let Ok(text) = std::str::from_utf8(b) => {
                    p.string_field(name, text)?;
                }
                _ => {
                    if let Some(v) = get(name)? {
                        write_field(&mut p, name, &v)?;
                    }
                }
            }
        }
        let ms = match &self.cfg.timestamp {
            Some(name) => {
                let v = match fields.get(name) {
                    Indexed::Missing => return Err(no_timestamp(name).into()),
                    Indexed::Value(v) => v,
                    Indexed::Nested => return Err(NotWritten::Nested),
                };
                time_ms(&v, self.cfg.timestamp_unit)?
            }
            None => event_time.unwrap_or_else(now_ms),
        };
        p.finish(Some(self.precision(ms)?))?;
        Ok(())
    }

    /// [`InfluxDbSink::encode`] from the record's structured view (parsed if need be).
    fn encode_view(&self, r: &mut Record, out: &mut String) -> Result<(), String> {
        let rendered;
        let measurement = match &self.constant_measurement {
            Some(m) => m.as_str(),
            None => {
                rendered = self.measurement.render(r, 0, Ok)?;
                rendered.as_str()
            }
        };
        let event_time = r.event_time();
        let value = r.value().map_err(|e| e.to_string())?;
        let Value::Object(obj) = value else {
            return Err(format!(
                "the record is a {}, not an object",
                value.kind_str()
            ));
        };
        let get = |name: &str| match lookup(value, name) {
            None | Some(Value::Null) => None,
            Some(v) => Some(v),
        };
        let mut p = PointWriter::new(out, measurement).map_err(|e| e.to_string())?;
        for name in &self.sorted_tags {
            if let Some(v) = get(name) {
                write_tag(&mut p, name, v)?;
            }
        }
        match &self.cfg.fields {
            Some(names) => {
                for name in names {
                    if let Some(v) = get(name) {
                        write_field(&mut p, name, v)?;
                    }
                }
            }
            None => {
                let ts_field = self.cfg.timestamp.as_deref();
                for (k, v) in obj {
                    let k: &str = k.as_ref();
                    if Some(k) == ts_field || self.cfg.tags.iter().any(|t| t == k) {
                        continue;
                    }
                    if matches!(v, Value::Integer(_) | Value::Float(_)) {
                        write_field(&mut p, k, v)?;
                    }
                }
            }
        }
        let ms = match &self.cfg.timestamp {
            Some(name) => {
                let v = lookup(value, name).ok_or_else(|| no_timestamp(name))?;
                time_ms(v, self.cfg.timestamp_unit)?
            }
            None => event_time.unwrap_or_else(now_ms),
        };
        p.finish(Some(self.precision(ms)?))
            .map_err(|e| e.to_string())
    }

    /// Epoch milliseconds at the configured precision.
    fn precision(&self, ms: i64) -> Result<i64, String> {
        self.cfg
            .precision
            .convert(ms)
            .ok_or_else(|| format!("time {ms} ms does not fit the precision"))
    }

    /// Post a body once: written, refused for its content, or an error saying whether to retry.
    async fn attempt(&self, body: &bytes::Bytes) -> Result<Attempt, ProcessorError> {
        let mut req = self
            .client
            .post(self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "text/plain; charset=utf-8")
            .body(body.clone());
        if self.cfg.gzip {
            req = req.header(reqwest::header::CONTENT_ENCODING, "gzip");
        }
        if let Some(token) = self.cfg.token.as_deref().filter(|t| !t.is_empty()) {
            req = req.header(reqwest::header::AUTHORIZATION, format!("Token {token}"));
        }
        let resp = match req.send().await {
            Ok(r) => r,
            // Connection refused, reset, timeout: the server may come back.
            // Without the URL: its query could hold credentials.
            Err(e) => return Err(ProcessorError::unavailable(error_chain(&e.without_url()))),
        };
        let status = resp.status();
        if status.is_success() {
            return Ok(Attempt::Written);
        }
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let text = resp.text().await.unwrap_or_default();
        let message = format!("InfluxDB answered {status}: {}", server_message(&text));
        match status.as_u16() {
            408 | 429 | 500..=599 => Err(ProcessorError::Unavailable {
                message,
                retry_after,
            }),
            401 | 403 => Err(ProcessorError::other(format!(
                "{message} (check the token and its permissions)"
            ))),
            404 => Err(ProcessorError::other(format!(
                "{message} (check the url, org and bucket)"
            ))),
            _ => Ok(Attempt::Refused(message)),
        }
    }

    /// Start posting the pending batch (compressed now), retried until it is written or
    /// refused; an error when the server refuses for good, `max_retries` runs out or the flow
    /// stops while retrying. Its records travel with the request: dropped unanswered (the
    /// flow stopped), they are not acknowledged.
    fn post<'a>(
        &'a self,
        retry: &'a Retry,
        pending: &mut Vec<Record>,
        body: &mut String,
    ) -> Result<Option<Posting<'a>>, ProcessorError> {
        if pending.is_empty() {
            return Ok(None);
        }
        let payload = if self.cfg.gzip {
            gzip(body.as_bytes()).map_err(ProcessorError::other)?
        } else {
            bytes::Bytes::from(std::mem::replace(
                body,
                String::with_capacity(body.capacity()),
            ))
        };
        body.clear();
        // The next batch's room at once: growing it by doubling took fresh pages (zeroed by the
        // kernel) at every step, a third of the sink's time in a profile.
        let room = pending.len().min(self.cfg.batch_max_records);
        let records = std::mem::replace(pending, Vec::with_capacity(room));
        Ok(Some(Box::pin(async move {
            let answer = retry
                .run("writing to InfluxDB", |_| self.attempt(&payload))
                .await?;
            Ok((records, answer))
        })))
    }

    /// Send the pending batch, first waiting for the oldest request if `max_in_flight` are
    /// out.
    async fn send<'a>(
        &'a self,
        ctx: &mut SinkContext,
        retry: &'a Retry,
        in_flight: &mut InFlight<'a>,
        pending: &mut Vec<Record>,
        body: &mut String,
    ) -> Result<(), ProcessorError> {
        use futures::StreamExt;
        let Some(posting) = self.post(retry, pending, body)? else {
            return Ok(());
        };
        if in_flight.len() >= self.cfg.max_in_flight.max(1)
            && let Some(done) = in_flight.next().await
        {
            self.answered(ctx, done?).await?;
        }
        in_flight.push_back(posting);
        Ok(())
    }

    /// A batch's answer: written (acknowledged), or refused (its records to `failure`).
    async fn answered(
        &self,
        ctx: &mut SinkContext,
        (records, answer): (Vec<Record>, Attempt),
    ) -> Result<(), ProcessorError> {
        let n = records.len() as u64;
        match answer {
            Attempt::Written => {
                ctx.input
                    .finish_sent(records, Some(self.url.to_string()))
                    .await;
                ctx.metrics.add_sent(n);
                Ok(())
            }
            Attempt::Refused(msg) => fail_all(ctx, records, &msg).await,
        }
    }
}

/// A batch being posted: its records and the server's answer.
type Posting<'a> = futures::future::BoxFuture<'a, Result<(Vec<Record>, Attempt), ProcessorError>>;

/// The batches posted and not yet answered, in the order sent.
type InFlight<'a> = futures::stream::FuturesOrdered<Posting<'a>>;

fn no_timestamp(name: &str) -> String {
    format!("the record has no timestamp field `{name}`")
}

/// Write tag `name` with the scalar `v` (strings as they are, numbers and booleans as JSON
/// writes them).
fn write_tag(p: &mut PointWriter<'_>, name: &str, v: &Value) -> Result<(), String> {
    let text = match v.to_str_lossy() {
        Some(s) => s,
        None => std::borrow::Cow::Owned(
            scalar_text(v)
                .ok_or_else(|| format!("tag `{name}` is a {}, not a scalar", v.kind_str()))?,
        ),
    };
    p.tag(name, &text).map_err(|e| e.to_string())
}

/// Write field `name` with the value `v` (strings without copying them).
fn write_field(p: &mut PointWriter<'_>, name: &str, v: &Value) -> Result<(), String> {
    match v.to_str_lossy() {
        Some(s) => p.string_field(name, &s),
        None => p.field(name, &field_value(name, v)?),
    }
    .map_err(|e| e.to_string())
}

fn field_value(name: &str, v: &Value) -> Result<FieldValue, String> {
    Ok(match v {
        Value::Integer(i) => FieldValue::Integer(*i),
        Value::Float(f) => FieldValue::Float(f.into_inner()),
        Value::Boolean(b) => FieldValue::Boolean(*b),
        Value::Bytes(_) | Value::String(_) => {
            FieldValue::String(v.to_str_lossy().unwrap_or_default().into_owned())
        }
        other => {
            return Err(format!(
                "field `{name}` is a {}, not a number, boolean or string",
                other.kind_str()
            ));
        }
    })
}

/// Encode a record over `content` as a sink with measurement `{m}` and tags `t` and `u` does
/// (for the fuzz targets).
#[cfg(feature = "fuzzing")]
pub(crate) fn encode_for_fuzzing(content: &[u8]) -> Result<String, String> {
    static SINK: std::sync::OnceLock<InfluxDbSink> = std::sync::OnceLock::new();
    let sink = SINK.get_or_init(|| {
        let cfg: InfluxDbSinkConfig = serde_json::from_value(serde_json::json!({
            "url": "http://localhost:8086/", "org": "o", "bucket": "b",
            "measurement": "{m}", "tags": ["t", "u"],
        }))
        .expect("a valid config");
        InfluxDbSink::new(
            cfg.clone(),
            cfg.write_url().expect("a valid url"),
            Template::parse(&cfg.measurement, Placeholders::Fields).expect("a valid template"),
            crate::http_client::client(Duration::from_secs(5)).expect("a client"),
        )
    });
    let mut r = Record::from_bytes(bytes::Bytes::copy_from_slice(content));
    r.set_event_time(Some(1_732_300_000_123));
    let mut out = String::new();
    sink.encode(&mut r, &mut out).map(|()| out)
}

fn gzip(data: &[u8]) -> std::io::Result<bytes::Bytes> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(
        // Line protocol compresses to about a third at the fast level: one allocation.
        Vec::with_capacity(data.len() / 3 + 64),
        flate2::Compression::fast(),
    );
    enc.write_all(data)?;
    enc.finish().map(bytes::Bytes::from)
}

/// `Retry-After`: delay-seconds or an HTTP date.
fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    let ms = at.timestamp_millis() - now_ms();
    Some(Duration::from_millis(u64::try_from(ms).unwrap_or(0)))
}

/// The `message` of InfluxDB's JSON error body, or the body itself, shortened.
fn server_message(body: &str) -> String {
    let msg = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_owned))
        .unwrap_or_else(|| body.trim().to_owned());
    if msg.is_empty() {
        return "(no message)".into();
    }
    let mut end = msg.len().min(MAX_MESSAGE);
    while !msg.is_char_boundary(end) {
        end -= 1;
    }
    msg[..end].to_owned()
}

/// An error with its causes (reqwest's own text is often just "error sending request").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

async fn fail_all(
    ctx: &mut SinkContext,
    records: Vec<Record>,
    msg: &str,
) -> Result<(), ProcessorError> {
    let mut out = Output::new(ctx.name.clone(), ctx.failures.port_count().max(1));
    for r in records {
        out.fail(r, &msg);
    }
    Ok(ctx.failures.flush(&mut out).await?)
}

#[async_trait]
impl Sink for InfluxDbSink {
    async fn run(self: Box<Self>, mut ctx: SinkContext) -> Result<(), ProcessorError> {
        use futures::StreamExt;
        let max_records = self.cfg.batch_max_records.max(1);
        let max_bytes = usize::try_from(self.cfg.batch_max_bytes.as_u64()).unwrap_or(usize::MAX);
        let mut pending: Vec<Record> = Vec::new();
        let mut body = String::new();
        let mut line = String::new();
        let mut deadline: Option<Instant> = None;
        let mut failures = Output::new(ctx.name.clone(), ctx.failures.port_count().max(1));
        let retry = Retry::new(&ctx)
            .backoff(FIRST_BACKOFF, self.cfg.retry_max)
            .max_attempts(self.cfg.max_retries.map(|m| m.saturating_add(1)));
        let mut in_flight = InFlight::new();
        loop {
            tokio::select! {
                batch = ctx.input.next() => {
                    let Some(batch) = batch else { break };
                    for mut r in batch {
                        line.clear();
                        if let Err(msg) = self.encode(&mut r, &mut line) {
                            failures.fail(r, &msg);
                            continue;
                        }
                        if !pending.is_empty() && body.len() + line.len() > max_bytes {
                            self.send(&mut ctx, &retry, &mut in_flight, &mut pending, &mut body)
                                .await?;
                            deadline = None;
                        }
                        body.push_str(&line);
                        pending.push(r);
                        if pending.len() >= max_records || body.len() >= max_bytes {
                            self.send(&mut ctx, &retry, &mut in_flight, &mut pending, &mut body)
                                .await?;
                            deadline = None;
                        }
                    }
                    ctx.failures.flush(&mut failures).await?;
                    if !pending.is_empty() && deadline.is_none() {
                        deadline = Some(Instant::now() + self.cfg.batch_timeout);
                    }
                }
                Some(done) = in_flight.next(), if !in_flight.is_empty() => {
                    self.answered(&mut ctx, done?).await?;
                }
                () = async {
                    match deadline {
                        Some(d) => tokio::time::sleep_until(d).await,
                        None => std::future::pending().await,
                    }
                } => {
                    self.send(&mut ctx, &retry, &mut in_flight, &mut pending, &mut body).await?;
                    deadline = None;
                }
            }
        }
        self.send(&mut ctx, &retry, &mut in_flight, &mut pending, &mut body)
            .await?;
        while let Some(done) = in_flight.next().await {
            self.answered(&mut ctx, done?).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod unit {
    use super::*;
    use crate::testing::{config, rec};
    use serde_json::json;

    fn sink(cfg: serde_json::Value) -> InfluxDbSink {
        let c: InfluxDbSinkConfig = config(cfg);
        assert!(c.validate().is_empty(), "{:?}", c.validate());
        InfluxDbSink::new(
            c.clone(),
            c.write_url().expect("url"),
            Template::parse(&c.measurement, Placeholders::Fields).expect("ok"),
            crate::http_client::client(Duration::from_secs(5)).expect("client"),
        )
    }

    fn encode(s: &InfluxDbSink, r: &str) -> Result<String, String> {
        let mut out = String::new();
        let mut r = rec(r);
        r.set_event_time(Some(1_732_300_000_123));
        s.encode(&mut r, &mut out).map(|()| out)
    }

    #[test]
    fn maps_tags_fields_and_time() {
        let base = json!({"url": "http://h:8086/", "org": "o", "bucket": "b",
            "measurement": "engine", "tags": ["device"]});
        let s = sink(base.clone());
        assert_eq!(
            s.url.as_str(),
            "http://h:8086/api/v2/write?org=o&bucket=b&precision=ms"
        );
        let line = encode(
            &s,
            r#"{"device":"car 1","count":3,"avg":71.5,"status":"ok","ok":true}"#,
        );
        assert_eq!(
            line.as_deref(),
            Ok("engine,device=car\\ 1 avg=71.5,count=3i 1732300000123\n")
        );
        let mut c = base.clone();
        c["fields"] = json!(["status", "ok", "avg"]);
        c["timestamp"] = json!("window_start");
        c["precision"] = json!("s");
        c["measurement"] = json!("{kind}_m");
        let s = sink(c);
        let line = encode(
            &s,
            r#"{"kind":"x","device":"d","window_start":1732300010000,"status":"ok","ok":true,"avg":1}"#,
        );
        assert_eq!(
            line.as_deref(),
            Ok("x_m,device=d status=\"ok\",ok=true,avg=1i 1732300010\n")
        );
        let err = encode(&s, r#"{"kind":"x","status":"ok"}"#).expect_err("no time");
        assert!(err.contains("no timestamp field"), "{err}");
        let err = encode(&s, r#"{"window_start":1}"#).expect_err("no measurement");
        assert!(err.contains("`{kind}`"), "{err}");
        let s = sink(base);
        let err = encode(&s, r#"{"device":"d","status":"ok"}"#).expect_err("no fields");
        assert!(err.contains("no field"), "{err}");
        assert!(encode(&s, "[1]").is_err());
        assert!(encode(&s, "not json").is_err());
    }

    /// A record whose fields the source indexed gives the very line (or error) its structured
    /// view gives: strings (plain ones read borrowed), escapes, unicode, numbers as tags and
    /// fields, nulls, a templated measurement from a field or an attribute; a nested value
    /// read falls back to the view.
    #[test]
    fn indexed_fields_write_what_the_view_writes() {
        use flow_core::record::JsonView;
        let c = json!({"url": "http://h:8086/", "org": "o", "bucket": "b",
            "measurement": "{kind}_m", "tags": ["site", "device"],
            "fields": ["temp", "n", "ok", "note"], "timestamp": "ts"});
        let cfg: InfluxDbSinkConfig = config(c.clone());
        assert!(cfg.reads_only_top_level_fields());
        let s = sink(c.clone());
        assert!(s.indexed);
        let records = [
            r#"{"kind":"k","device":"car 1, \"n\"","site":"é=😀\\","ts":1732300000123,"temp":71.5,"n":3,"ok":true,"note":"a \"b\" \\"}"#,
            r#"{"kind":"k","device":42,"site":null,"ts":"2024-11-22T18:26:40Z","temp":-0.0,"n":null}"#,
            r#"{"kind":"k","device":"d\u00e9","ts":1,"temp":1e300}"#,
            r#"{"kind":"k","device":"plain","site":"a b,c=d","ts":2,"temp":3,"n":-4.25,"note":"é \t"}"#,
            r#"{"kind":"k","device":"p","ts":2,"temp":-1538135742495362.2,"ok":false,"note":"text"}"#,
            r#"{"device":"d","ts":1,"temp":1}"#,
            r#"{"kind":"k","device":{"a":1},"ts":1,"temp":1}"#,
            r#"{"kind":"k","device":"d","ts":[1],"temp":1}"#,
            r#"{"kind":"k","device":"d","ts":1,"temp":{"x":1}}"#,
            r#"{"kind":"k","device":"d","ts":1}"#,
            r#"{"kind":"k","device":"d","temp":1}"#,
            r#"{"kind":"k","device":"a\nb","ts":1,"temp":1}"#,
            r#"{"kind":{"x":1},"ts":1,"temp":1}"#,
        ];
        for content in records {
            let mut indexed = Record::json(
                bytes::Bytes::copy_from_slice(content.as_bytes()),
                JsonView::Fields,
            )
            .unwrap_or_else(|(_, e)| panic!("{content}: {e}"));
            indexed.set_event_time(Some(1_732_300_000_123));
            indexed.set_attribute("kind", "from_attribute");
            assert!(indexed.fields().is_some(), "{content}");
            let mut viewed = rec(content);
            viewed.set_event_time(Some(1_732_300_000_123));
            viewed.set_attribute("kind", "from_attribute");
            let mut a = String::from("kept\n");
            let mut b = String::from("kept\n");
            let ra = s.encode(&mut indexed, &mut a);
            let rb = s.encode(&mut viewed, &mut b);
            assert_eq!(ra, rb, "{content}");
            assert_eq!(a, b, "{content}");
        }
        // The first line, spelled out.
        let mut r = Record::json(
            bytes::Bytes::from_static(
                br#"{"kind":"k","device":"car 1","site":"s","ts":5,"temp":1.5,"n":2}"#,
            ),
            JsonView::Fields,
        )
        .expect("json");
        let mut out = String::new();
        s.encode(&mut r, &mut out).expect("written");
        assert_eq!(out, "k_m,device=car\\ 1,site=s temp=1.5,n=2i 5\n");
        // What needs the whole object, or a nested path, does not ask for an index.
        for (k, v) in [
            ("fields", json!(null)),
            ("tags", json!(["a.b"])),
            ("timestamp", json!("t.s")),
            ("measurement", json!("{a.b}")),
        ] {
            let mut c = c.clone();
            c[k] = v;
            let cfg: InfluxDbSinkConfig = config(c);
            assert!(!cfg.reads_only_top_level_fields(), "{k}");
        }
    }

    #[test]
    fn validation() {
        let c: InfluxDbSinkConfig = config(json!({"url": "ftp://x", "org": "", "bucket": "",
            "measurement": "{", "fields": [], "batch_max_records": 0}));
        let paths: Vec<String> = c.validate().iter().map(|e| e.path.join(".")).collect();
        assert_eq!(
            paths,
            [
                "url",
                "org",
                "bucket",
                "measurement",
                "fields",
                "batch_max_records"
            ]
        );
    }

    #[test]
    fn retry_after_and_messages() {
        assert_eq!(parse_retry_after("3"), Some(Duration::from_secs(3)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
        assert_eq!(
            server_message(r#"{"code":"invalid","message":"field type conflict"}"#),
            "field type conflict"
        );
        assert_eq!(server_message("  plain  "), "plain");
        assert_eq!(server_message(""), "(no message)");
        assert_eq!(Precision::Ns.convert(2), Some(2_000_000));
        assert_eq!(Precision::S.convert(-1), Some(-1));
        assert_eq!(Precision::Ns.convert(i64::MAX), None);
    }
}
