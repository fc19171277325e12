//! `s3_sink`: write records into objects on S3 (or an S3-compatible server) or the local
//! filesystem, through `object_store`.

mod commit;
mod encode;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytesize::ByteSize;
use flow_core::ack::{AckStatus, AckTracker, Acks};
use flow_core::processor::{
    BuildContext, BuildError, ConfigError, Describe, Kind, Output, Processor, ProcessorConfig,
    ProcessorError, RetryHint, Sink, SinkContext, io_retry_hint,
};
use flow_core::provenance::Runs;
use flow_core::record::{Origin, Record};
use flow_core::retry::Retry;
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path as ObjectPath;
use object_store::{MultipartId, ObjectStore, ObjectStoreExt, PutPayload};
use schemars::JsonSchema;
use serde::Deserialize;
use tokio::time::Instant;

use crate::template::{Placeholders, Template, UUID_MARK, lookup, now_ms, time_ms, uuid_v4};
use crate::window::TimeUnit;
use commit::{Committed, Ledger, Positions};
use encode::{Body, Row};

/// Write records into objects on S3 (or an S3-compatible server) or the local filesystem, as
/// JSON lines or CSV, optionally gzip- or zstd-compressed, under keys made from each record.
///
/// `url` is `s3://bucket/prefix` or `file:///dir`. The object key is a template below that
/// prefix: `{name}` is a record field (or attribute), `{yyyy}` `{MM}` `{dd}` `{HH}` `{mm}`
/// `{ss}` are parts of the record's event time (UTC) and `{uuid}` is unique per object, e.g.
/// `{device}/dt={yyyy}-{MM}-{dd}/hour={HH}/part-{uuid}.jsonl.gz`. Records whose keys differ
/// only by `{uuid}` (one partition) go to the same open object; several objects are open at
/// once, one per partition. An object is closed and uploaded once it holds `max_records`
/// records or `max_bytes` bytes, is `max_age` old or got nothing for `max_idle`, when more
/// than `max_open_objects` are open (the least recently written one), and when the input
/// ends (shutdown included). Objects bigger than `part_size` are sent as multipart uploads
/// while they are written.
///
/// A record is acknowledged only once its object's upload completed, so a crash before that
/// replays it. Exactly-once across crashes where a restart replays the same stream (a `file`
/// source with a `checkpoint`, and a `window_aggregate` with `state` and `event_time` below
/// one, on one path to the sink): a commit record, `_flow/NODE.commit` below the prefix, says
/// which records are in completed objects; a restart deletes an object whose completion it
/// did not record and skips the replayed records it holds. Elsewhere, at-least-once. See
/// docs/reliability.md, "Exactly-once sinks". An object is never visible half-written: a single upload is
/// atomic, a multipart upload becomes visible only once completed (on the local filesystem, a
/// staging file `name#1` is renamed once complete), and one left open when the flow stops on
/// an error is aborted. Requests are retried with capped exponential backoff (5xx, 429,
/// timeouts; `max_retries`, `retry_max`, `retry_timeout`); when a request still fails, the
/// upload is not given up: the finished bytes and the records' acknowledgements are kept, the
/// sink stops taking input (back-pressure) and the failed request is tried again after 1s,
/// doubling up to 60s, until it succeeds, logging a warning once per burst of failures (and
/// every minute while it lasts). A full disk (`file://`) is retried the same way. A refusal
/// retrying cannot fix (wrong credentials, access denied, a missing bucket, a directory that
/// cannot be written) stops the flow with the error. When the input ends, every open object
/// is completed the same way; a stop asked while an upload keeps failing gives it up. Records
/// not uploaded are never acknowledged, so their source reads them again on the next run. A
/// record whose key cannot be made goes to `failure`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct S3SinkConfig {
    /// Where objects go: `s3://bucket/prefix` (the prefix may be empty) or `file:///dir`.
    pub url: String,
    /// The S3 endpoint, for S3-compatible servers (`http://127.0.0.1:9000`). Empty or absent:
    /// AWS (or `AWS_ENDPOINT`).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// The region. Absent: `AWS_REGION` / `AWS_DEFAULT_REGION`, else `us-east-1`.
    #[serde(default)]
    pub region: Option<String>,
    /// The access key id (use `${VAR}`). Empty or absent: `AWS_ACCESS_KEY_ID` and the other
    /// standard AWS sources.
    #[serde(default)]
    pub access_key_id: Option<String>,
    /// The secret access key (use `${VAR}`). Empty or absent: `AWS_SECRET_ACCESS_KEY`. Never
    /// logged.
    #[serde(default)]
    #[schemars(extend("writeOnly" = true))]
    pub secret_access_key: Option<String>,
    /// A session token for temporary credentials. Empty or absent: `AWS_SESSION_TOKEN`.
    #[serde(default)]
    pub session_token: Option<String>,
    /// Path-style requests (`endpoint/bucket/key`), which most S3-compatible servers need.
    /// Absent: on when `endpoint` is set, off (virtual-hosted style) for AWS.
    #[serde(default)]
    pub path_style: Option<bool>,
    /// The object key below the URL's prefix, a template (see above). Must contain `{uuid}`.
    /// Absent: `dt={yyyy}-{MM}-{dd}/hour={HH}/part-{uuid}` with the format's extension
    /// (`.jsonl`, `.csv`) and the compression's (`.gz`, `.zst`).
    #[serde(default)]
    pub key: Option<String>,
    /// The field holding the record's event time (epoch time in `event_time_unit`, or RFC
    /// 3339), for the time parts of the key. Absent: the record's event time, or the time it
    /// arrives when it has none.
    #[serde(default)]
    pub event_time: Option<String>,
    /// Unit of a numeric `event_time` field: `ms` or `s`.
    #[serde(default)]
    pub event_time_unit: TimeUnit,
    /// The object format: `json` (JSON lines: each record's content, then a newline) or `csv`.
    #[serde(default)]
    pub format: Format,
    /// For `csv`: the fields written, in order, one column each (dotted paths reach nested
    /// fields; a missing field is an empty cell, an object or array is its JSON).
    #[serde(default)]
    pub columns: Option<Vec<String>>,
    /// For `csv`: start each object with a header row of the column names.
    #[serde(default = "default_true")]
    pub csv_header: bool,
    /// Compression of the objects: `none`, `gzip` or `zstd`.
    #[serde(default)]
    pub compression: Compression,
    /// Close an object once it holds this many records.
    #[serde(default = "default_max_records")]
    pub max_records: u64,
    /// Close an object once it is this big, like `128MiB` (compressed; while an object is
    /// under 1 MiB uncompressed, that size counts).
    #[serde(default = "default_max_bytes")]
    #[schemars(with = "String")]
    pub max_bytes: ByteSize,
    /// Close an object this long after it was opened.
    #[serde(default = "default_max_age", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub max_age: Duration,
    /// Close an object that got no record for this long.
    #[serde(default = "default_max_idle", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub max_idle: Duration,
    /// At most this many objects open at once; opening one more closes the least recently
    /// written.
    #[serde(default = "default_max_open")]
    pub max_open_objects: usize,
    /// Objects bigger than this are uploaded in parts of this size (multipart upload) while
    /// they are written; smaller ones in one request. At least `5MiB` (S3's minimum part).
    #[serde(default = "default_part_size")]
    #[schemars(with = "String")]
    pub part_size: ByteSize,
    /// How many times a failed request is tried again at once (5xx, 429, timeouts, connection
    /// errors), before the upload waits (1s, doubling up to 60s) and tries it again, for
    /// ever.
    #[serde(default = "default_max_retries")]
    pub max_retries: usize,
    /// The longest wait between two attempts (the wait doubles from 100ms up to this).
    #[serde(default = "default_retry_max", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub retry_max: Duration,
    /// Stop the immediate retries of a request this long after its first attempt (the upload
    /// then waits and tries again, for ever).
    #[serde(default = "default_retry_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub retry_timeout: Duration,
}

/// The object format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// JSON lines: each record's content (its exact bytes when not modified) and a newline.
    #[default]
    Json,
    /// CSV (RFC 4180) of the `columns`.
    Csv,
}

/// The compression of the objects.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    /// None.
    None,
    /// gzip (fast level).
    #[default]
    Gzip,
    /// zstd (level 3).
    Zstd,
}

fn default_true() -> bool {
    true
}
fn default_max_records() -> u64 {
    1_000_000
}
fn default_max_bytes() -> ByteSize {
    ByteSize::mib(128)
}
fn default_max_age() -> Duration {
    Duration::from_secs(300)
}
fn default_max_idle() -> Duration {
    Duration::from_secs(60)
}
fn default_max_open() -> usize {
    1000
}
fn default_part_size() -> ByteSize {
    ByteSize::mib(8)
}
fn default_max_retries() -> usize {
    10
}
fn default_retry_max() -> Duration {
    Duration::from_secs(15)
}
fn default_retry_timeout() -> Duration {
    Duration::from_secs(180)
}

const MIN_PART: u64 = 5 * 1024 * 1024;

impl Describe for S3SinkConfig {
    const TYPE: &'static str = "s3_sink";
    const KIND: Kind = Kind::Sink;
}

/// Where objects go, parsed from `url`.
#[derive(Debug, PartialEq)]
enum Target {
    S3 { bucket: String, prefix: String },
    File { dir: String },
}

fn nonempty(v: &Option<String>) -> Option<&str> {
    v.as_deref().filter(|s| !s.is_empty())
}

impl S3SinkConfig {
    fn target(&self) -> Result<Target, String> {
        if let Some(rest) = self.url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(format!("`{}`: no bucket", self.url));
            }
            let prefix = prefix.trim_matches('/').to_owned();
            if !prefix.is_empty() {
                ObjectPath::parse(&prefix).map_err(|e| format!("`{}`: {e}", self.url))?;
            }
            Ok(Target::S3 {
                bucket: bucket.to_owned(),
                prefix,
            })
        } else if let Some(dir) = self.url.strip_prefix("file://") {
            if !dir.starts_with('/') {
                return Err(format!(
                    "`{}`: a file URL needs an absolute path (file:///dir)",
                    self.url
                ));
            }
            Ok(Target::File {
                dir: dir.to_owned(),
            })
        } else {
            Err(format!(
                "`{}`: must be s3://bucket/prefix or file:///dir",
                self.url
            ))
        }
    }

    fn key_template(&self) -> String {
        self.key.clone().unwrap_or_else(|| {
            let ext = match self.format {
                Format::Json => ".jsonl",
                Format::Csv => ".csv",
            };
            let comp = match self.compression {
                Compression::None => "",
                Compression::Gzip => ".gz",
                Compression::Zstd => ".zst",
            };
            format!("dt={{yyyy}}-{{MM}}-{{dd}}/hour={{HH}}/part-{{uuid}}{ext}{comp}")
        })
    }

    fn store(&self, target: &Target) -> Result<(Arc<dyn ObjectStore>, Multipart), String> {
        match target {
            Target::File { dir } => {
                std::fs::create_dir_all(dir).map_err(|e| format!("cannot create `{dir}`: {e}"))?;
                let fs = object_store::local::LocalFileSystem::new_with_prefix(dir)
                    .map_err(|e| e.to_string())?;
                Ok((Arc::new(fs), Multipart::File(PathBuf::from(dir))))
            }
            Target::S3 { bucket, .. } => {
                crate::http_client::install_crypto_provider();
                let mut b = object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket);
                let endpoint = nonempty(&self.endpoint);
                if let Some(e) = endpoint {
                    b = b.with_endpoint(e).with_allow_http(e.starts_with("http://"));
                }
                let region = nonempty(&self.region).map(str::to_owned).or_else(|| {
                    let env = |k| std::env::var(k).ok().filter(|v: &String| !v.is_empty());
                    env("AWS_REGION").or_else(|| env("AWS_DEFAULT_REGION"))
                });
                b = b.with_region(region.unwrap_or_else(|| "us-east-1".into()));
                if let Some(k) = nonempty(&self.access_key_id) {
                    b = b.with_access_key_id(k);
                }
                if let Some(k) = nonempty(&self.secret_access_key) {
                    b = b.with_secret_access_key(k);
                }
                if let Some(t) = nonempty(&self.session_token) {
                    b = b.with_token(t);
                }
                let path_style = self.path_style.unwrap_or(endpoint.is_some());
                b = b.with_virtual_hosted_style_request(!path_style);
                b = b.with_retry(object_store::RetryConfig {
                    backoff: object_store::BackoffConfig {
                        init_backoff: Duration::from_millis(100),
                        max_backoff: self.retry_max.max(Duration::from_millis(100)),
                        base: 2.0,
                    },
                    max_retries: self.max_retries,
                    retry_timeout: self.retry_timeout,
                });
                // The error names settings, never their values (no secrets in it).
                let s3 = Arc::new(b.build().map_err(|e| e.to_string())?);
                Ok((s3.clone(), Multipart::Store(s3)))
            }
        }
    }
}

impl ProcessorConfig for S3SinkConfig {
    fn reads_values(&self) -> bool {
        self.format == Format::Csv
            || self.event_time.is_some()
            || Template::parse(&self.key_template(), Placeholders::FieldsTimeUuid)
                .is_ok_and(|t| t.has_fields())
    }

    fn outputs(&self) -> Vec<String> {
        Vec::new()
    }

    fn validate(&self) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        if let Err(e) = self.target() {
            errors.push(ConfigError::new(&["url"], e));
        }
        match Template::parse(&self.key_template(), Placeholders::FieldsTimeUuid) {
            Ok(t) if !t.has_uuid() => errors.push(ConfigError {
                help: Some("for example `{device}/{yyyy}-{MM}-{dd}/part-{uuid}.jsonl`".into()),
                ..ConfigError::new(
                    &["key"],
                    "the key needs `{uuid}`: objects rolled for one partition need different names",
                )
            }),
            Ok(t) => {
                let sample = t.sample().replace(UUID_MARK, "u");
                if let Err(e) = ObjectPath::parse(&sample) {
                    errors.push(ConfigError::new(&["key"], format!("not a valid key: {e}")));
                }
            }
            Err(e) => errors.push(ConfigError::new(&["key"], e)),
        }
        match (self.format, &self.columns) {
            (Format::Csv, None) => errors.push(ConfigError::new(
                &["columns"],
                "the csv format needs `columns`",
            )),
            (Format::Csv, Some(c)) if c.is_empty() || c.iter().any(String::is_empty) => {
                errors.push(ConfigError::new(&["columns"], "empty column list or name"));
            }
            (Format::Json, Some(_)) => errors.push(ConfigError::new(
                &["columns"],
                "`columns` is for the csv format",
            )),
            _ => {}
        }
        if self.max_records == 0 {
            errors.push(ConfigError::new(&["max_records"], "must be at least 1"));
        }
        if self.max_open_objects == 0 {
            errors.push(ConfigError::new(
                &["max_open_objects"],
                "must be at least 1",
            ));
        }
        if self.part_size.as_u64() < MIN_PART {
            errors.push(ConfigError::new(
                &["part_size"],
                "must be at least 5MiB (S3's smallest part)",
            ));
        }
        if self.max_age.is_zero() || self.max_idle.is_zero() {
            let which = if self.max_age.is_zero() {
                "max_age"
            } else {
                "max_idle"
            };
            errors.push(ConfigError::new(&[which], "must be more than 0s"));
        }
        errors
    }

    fn build(&self, _: &BuildContext) -> Result<Processor, BuildError> {
        let target = self.target().map_err(BuildError)?;
        let key = Template::parse(&self.key_template(), Placeholders::FieldsTimeUuid)
            .map_err(BuildError)?;
        let (store, multipart) = self.store(&target).map_err(BuildError)?;
        let (prefix, root) = match &target {
            Target::S3 { prefix, bucket } => (prefix.clone(), format!("s3://{bucket}")),
            Target::File { dir } => (
                String::new(),
                format!("file://{}", dir.trim_end_matches('/')),
            ),
        };
        Ok(Processor::Sink(Box::new(S3Sink {
            cfg: self.clone(),
            store,
            multipart,
            prefix,
            root,
            key,
            retry: std::sync::OnceLock::new(),
            journal: std::sync::OnceLock::new(),
            serial: std::sync::atomic::AtomicU64::new(0),
        })))
    }
}

struct S3Sink {
    cfg: S3SinkConfig,
    store: Arc<dyn ObjectStore>,
    multipart: Multipart,
    prefix: String,
    /// What an object's path is below, in the destinations provenance records
    /// (`s3://bucket`, `file:///dir`).
    root: String,
    key: Template,
    /// Made from the sink's context on first use; shared by the uploads running at once.
    retry: std::sync::OnceLock<Retry>,
    /// The commit record, where a restart replays the input in order (exactly-once): made
    /// when the first record with a position (an origin) arrives.
    journal: std::sync::OnceLock<Journal>,
    /// Numbers the objects opened.
    serial: std::sync::atomic::AtomicU64,
}

/// The sink's commit record (see [`commit`]): where it is stored and what it is made from.
struct Journal {
    path: ObjectPath,
    ledger: std::sync::Mutex<Ledger>,
    /// Held while a commit is stored, so commits are stored in the order they are made.
    writing: tokio::sync::Mutex<()>,
}

impl Journal {
    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        // The ledger is only changed by short, non-panicking calls: a poisoned lock still
        // holds a consistent ledger.
        self.ledger
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// How multipart uploads are made: through the store's low-level API (S3), where a failed
/// part can be sent again under the same number, or into a staging file (local filesystem)
/// written at known offsets and renamed once complete.
enum Multipart {
    Store(Arc<dyn MultipartStore>),
    File(PathBuf),
}

/// A multipart upload in progress.
enum Upload {
    Store {
        id: MultipartId,
        parts: Vec<PartId>,
    },
    File {
        staging: PathBuf,
        target: PathBuf,
        written: u64,
    },
}

/// An object being written.
struct OpenObject {
    /// Numbers the object for the commit record.
    serial: u64,
    /// The positions of its records, for the commit record.
    positions: Positions,
    path: ObjectPath,
    body: Body,
    /// Started once the object outgrew one part.
    upload: Option<Upload>,
    /// Bytes already handed to parts.
    uploaded: u64,
    records: u64,
    /// The acknowledgement tokens of every record in the object, released once it is complete.
    acks: Acks,
    /// With provenance on, the records' ids, for the SEND recorded once it is complete.
    ids: Vec<u64>,
    opened: Instant,
    last_write: Instant,
}

impl OpenObject {
    fn size(&mut self) -> u64 {
        self.uploaded + self.body.pending_len() as u64
    }
}

/// A failed request of an upload: the message, and whether retrying cannot fix it (refused
/// credentials, a missing bucket, a directory that cannot be written).
struct UploadError {
    message: String,
    fatal: bool,
}

impl From<object_store::Error> for UploadError {
    fn from(e: object_store::Error) -> Self {
        use object_store::Error as E;
        let message = e.to_string();
        let refused = matches!(
            e,
            E::PermissionDenied { .. } | E::Unauthenticated { .. } | E::NotFound { .. }
        ) || [
            "AccessDenied",
            "SignatureDoesNotMatch",
            "InvalidAccessKeyId",
            "NoSuchBucket",
        ]
        .iter()
        .any(|c| message.contains(c));
        // The local filesystem's errors carry the I/O error: a full disk may pass, a
        // permission or `EIO` will not. (Over HTTP, I/O errors are the network's: retried.)
        let mut io_fatal = false;
        if matches!(
            &e,
            E::Generic {
                store: "LocalFileSystem",
                ..
            }
        ) {
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                if let Some(io) = s.downcast_ref::<std::io::Error>() {
                    io_fatal = io_retry_hint(io) == RetryHint::NoRetry;
                    break;
                }
                source = s.source();
            }
        }
        Self {
            message,
            fatal: refused || io_fatal,
        }
    }
}

impl From<std::io::Error> for UploadError {
    fn from(e: std::io::Error) -> Self {
        Self {
            fatal: io_retry_hint(&e) == RetryHint::NoRetry,
            message: e.to_string(),
        }
    }
}

/// The first wait before an upload is tried again after a failed request (object_store's own
/// retries included); it doubles up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);
/// Objects uploaded at once when many close together (idle ones, the end of the input).
const CONCURRENT_UPLOADS: usize = 8;

/// A field value used in a key: one path segment, nothing that could change the key's shape.
fn key_segment(v: String) -> Result<String, String> {
    if v.is_empty()
        || v == "."
        || v == ".."
        || v.contains(['/', '{', '}'])
        || v.chars().any(char::is_control)
    {
        return Err(format!("`{v}` cannot be part of an object key"));
    }
    Ok(v)
}

/// Write `data` at `offset` of `file` (created if missing), cutting off whatever a failed
/// earlier attempt left after `offset`, so a part can be written again.
fn write_at(file: &std::path::Path, offset: u64, data: &PutPayload) -> std::io::Result<()> {
    use std::io::{Seek, SeekFrom, Write};
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(file)?;
    f.set_len(offset)?;
    f.seek(SeekFrom::Start(offset))?;
    for chunk in data.iter() {
        f.write_all(chunk)?;
    }
    f.sync_data()
}

/// Make a complete staging file the object (a no-op when an earlier attempt already did).
fn publish(staging: &std::path::Path, target: &std::path::Path) -> std::io::Result<()> {
    if !staging.exists() && target.exists() {
        return Ok(());
    }
    std::fs::File::open(staging)?.sync_all()?;
    std::fs::rename(staging, target)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, UploadError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(UploadError::from),
        Err(e) => Err(UploadError {
            message: e.to_string(),
            fatal: false,
        }),
    }
}

impl S3Sink {
    fn event_time(&self, r: &mut Record) -> Result<i64, String> {
        match &self.cfg.event_time {
            Some(name) => {
                let v = r.value().map_err(|e| e.to_string())?;
                let t = lookup(v, name)
                    .ok_or_else(|| format!("the record has no event time field `{name}`"))?;
                time_ms(t, self.cfg.event_time_unit)
            }
            None => Ok(r.event_time().unwrap_or_else(now_ms)),
        }
    }

    fn open(&self, partition: &str) -> Result<OpenObject, String> {
        let key = partition.replace(UUID_MARK, &uuid_v4());
        let full = if self.prefix.is_empty() {
            key
        } else {
            format!("{}/{key}", self.prefix)
        };
        let path = ObjectPath::parse(&full).map_err(|e| format!("bad object key `{full}`: {e}"))?;
        let mut body = Body::new(self.cfg.compression);
        if let (Format::Csv, Some(cols), true) =
            (self.cfg.format, &self.cfg.columns, self.cfg.csv_header)
        {
            let mut header = Vec::new();
            encode::csv_header(&mut header, cols);
            body.write(&header).map_err(|e| e.to_string())?;
        }
        let now = Instant::now();
        Ok(OpenObject {
            serial: self
                .serial
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            positions: Positions::default(),
            path,
            body,
            upload: None,
            uploaded: 0,
            records: 0,
            acks: Acks::none(),
            ids: Vec::new(),
            opened: now,
            last_write: now,
        })
    }

    /// Run `op` until it succeeds: after a failure (object_store's own retries included),
    /// wait (1s, doubling up to 60s) and try again, keeping the object's bytes and its
    /// records' ack tokens meanwhile, while the sink takes no input (back-pressure). An error
    /// retrying cannot fix, or a stop while retrying, is returned.
    async fn retry<T, F, Fut>(
        &self,
        ctx: &SinkContext,
        obj: &OpenObject,
        what: &str,
        op: F,
    ) -> Result<T, ProcessorError>
    where
        F: FnMut(u32) -> Fut,
        Fut: std::future::Future<Output = Result<T, UploadError>>,
    {
        let what = format!("{what} (`{}`, {} records)", obj.path, obj.records);
        self.retry_named(ctx, &what, op).await
    }

    /// [`S3Sink::retry`], for a request that is not an object's, described by `name`.
    async fn retry_named<T, F, Fut>(
        &self,
        ctx: &SinkContext,
        name: &str,
        mut op: F,
    ) -> Result<T, ProcessorError>
    where
        F: FnMut(u32) -> Fut,
        Fut: std::future::Future<Output = Result<T, UploadError>>,
    {
        let retry = self
            .retry
            .get_or_init(|| Retry::new(ctx).backoff(RETRY_FIRST, RETRY_MAX));
        retry
            .run(name, |attempt| {
                let attempt = op(attempt);
                async move {
                    attempt.await.map_err(|e| {
                        if e.fatal {
                            ProcessorError::other(format!(
                                "{name}: {} (refused: check the credentials, bucket, endpoint \
                                 or permissions)",
                                e.message
                            ))
                        } else {
                            ProcessorError::unavailable(e.message)
                        }
                    })
                }
            })
            .await
    }

    /// Start the object's multipart upload (retried until it starts).
    async fn start_upload(
        &self,
        ctx: &SinkContext,
        obj: &OpenObject,
    ) -> Result<Upload, ProcessorError> {
        match &self.multipart {
            Multipart::Store(mp) => {
                let id = self
                    .retry(ctx, obj, "starting a multipart upload", |_| async {
                        Ok(mp.create_multipart(&obj.path).await?)
                    })
                    .await?;
                Ok(Upload::Store {
                    id,
                    parts: Vec::new(),
                })
            }
            Multipart::File(dir) => {
                let target = dir.join(obj.path.as_ref());
                let mut staging = target.clone().into_os_string();
                staging.push("#1");
                Ok(Upload::File {
                    staging: staging.into(),
                    target,
                    written: 0,
                })
            }
        }
    }

    /// Upload one more part (retried until it is stored).
    async fn put_part(
        &self,
        ctx: &SinkContext,
        obj: &mut OpenObject,
        data: PutPayload,
    ) -> Result<(), ProcessorError> {
        let mut upload = match obj.upload.take() {
            Some(u) => u,
            None => self.start_upload(ctx, obj).await?,
        };
        let len = data.content_length() as u64;
        let stored = match &mut upload {
            Upload::Store { id, parts } => {
                let (mp, idx) = (self.multipart_store(), parts.len());
                let obj = &*obj;
                self.retry(ctx, obj, "uploading a part", |_| {
                    let data = data.clone();
                    let id = &*id;
                    async move { Ok(mp.put_part(&obj.path, id, idx, data).await?) }
                })
                .await
                .map(|part| parts.push(part))
            }
            Upload::File {
                staging, written, ..
            } => {
                let offset = *written;
                let wrote = self
                    .retry(ctx, obj, "writing a part", |_| {
                        let (file, data) = (staging.clone(), data.clone());
                        blocking(move || write_at(&file, offset, &data))
                    })
                    .await;
                if wrote.is_ok() {
                    *written += len;
                }
                wrote
            }
        };
        // Kept even on an error, so the upload is aborted with the object.
        obj.upload = Some(upload);
        stored?;
        obj.uploaded += len;
        Ok(())
    }

    fn multipart_store(&self) -> &dyn MultipartStore {
        match &self.multipart {
            Multipart::Store(mp) => &**mp,
            Multipart::File(_) => unreachable!("a store upload needs a multipart store"),
        }
    }

    /// Upload what the encoder produced as one more part (starting the multipart upload).
    async fn upload_part(
        &self,
        ctx: &SinkContext,
        obj: &mut OpenObject,
    ) -> Result<(), ProcessorError> {
        let data = obj.body.output().map(std::mem::take).unwrap_or_default();
        if !data.is_empty() {
            self.put_part(ctx, obj, PutPayload::from(data)).await?;
        }
        Ok(())
    }

    /// Finish and upload an object (retried until it is complete), then acknowledge its
    /// records. On an error, a multipart upload is aborted and the records are abandoned.
    async fn close(&self, ctx: &SinkContext, mut obj: OpenObject) -> Result<(), ProcessorError> {
        let journal = self.journal.get().filter(|_| !obj.positions.is_empty());
        if let Some(j) = journal {
            // Two-phase: recorded as pending first, so a restart deletes the object if the
            // crash comes between its upload and the commit saying it is complete.
            j.ledger().begin(obj.path.as_ref());
            if let Err(e) = self.save(ctx, j).await {
                // Not uploaded: nothing to abort beyond a started multipart upload.
                self.abort(&mut obj).await;
                return Err(e);
            }
        }
        if let Err(e) = self.complete(ctx, &mut obj).await {
            self.abort(&mut obj).await;
            // `obj` goes with its acks unreleased: its records are not committed.
            return Err(e);
        }
        if let Some(j) = journal {
            j.ledger()
                .complete(obj.serial, obj.path.as_ref(), &obj.positions);
            // Before the acknowledgement: a record acknowledged is one the commit covers.
            self.save(ctx, j).await?;
        }
        tracing::debug!(node = &*ctx.name, object = %obj.path, records = obj.records, "object written");
        ctx.metrics.add_sent(obj.records);
        let ids = Runs::from_ids(std::mem::take(&mut obj.ids));
        let to = format!("{}/{}", self.root, obj.path);
        let acks = std::mem::take(&mut obj.acks);
        ctx.input.finish_sent_ids(ids, acks, Some(to), None).await;
        Ok(())
    }

    /// Upload what is left of an object and complete it.
    async fn complete(
        &self,
        ctx: &SinkContext,
        obj: &mut OpenObject,
    ) -> Result<(), ProcessorError> {
        let body = std::mem::replace(&mut obj.body, Body::new(Compression::None));
        let data = body
            .finish()
            .map_err(|e| ProcessorError::other(format!("`{}`: encoding failed: {e}", obj.path)))?;
        if obj.upload.is_none() {
            let payload = PutPayload::from(data);
            let obj = &*obj;
            return self
                .retry(ctx, obj, "uploading an object", |_| {
                    let payload = payload.clone();
                    async move {
                        self.store.put(&obj.path, payload).await?;
                        Ok(())
                    }
                })
                .await;
        }
        if !data.is_empty() {
            self.put_part(ctx, obj, PutPayload::from(data)).await?;
        }
        let Some(upload) = obj.upload.take() else {
            return Ok(());
        };
        let done = match &upload {
            Upload::Store { id, parts } => {
                let mp = self.multipart_store();
                let obj = &*obj;
                self.retry(ctx, obj, "completing a multipart upload", |attempt| {
                    let parts = parts.clone();
                    async move {
                        match mp.complete_multipart(&obj.path, id, parts).await {
                            Ok(_) => Ok(()),
                            // An earlier attempt may have completed it, only its answer was
                            // lost: then the upload is gone and the object is there.
                            Err(object_store::Error::NotFound { .. })
                                if attempt > 0 && self.store.head(&obj.path).await.is_ok() =>
                            {
                                Ok(())
                            }
                            Err(e) => Err(e.into()),
                        }
                    }
                })
                .await
            }
            Upload::File {
                staging, target, ..
            } => {
                self.retry(ctx, obj, "completing a file", |_| {
                    let (s, t) = (staging.clone(), target.clone());
                    blocking(move || publish(&s, &t))
                })
                .await
            }
        };
        if done.is_err() {
            // Kept, so the upload is aborted with the object.
            obj.upload = Some(upload);
        }
        done
    }

    /// Close several objects, a few uploads at a time.
    async fn close_all(
        &self,
        ctx: &SinkContext,
        objs: Vec<OpenObject>,
    ) -> Result<(), ProcessorError> {
        use futures::StreamExt;
        let mut uploads = futures::stream::iter(objs.into_iter().map(|o| self.close(ctx, o)))
            .buffer_unordered(CONCURRENT_UPLOADS);
        let mut result = Ok(());
        while let Some(r) = uploads.next().await {
            result = result.and(r);
        }
        result
    }

    /// Abort a multipart upload left open by an error (best effort), so it does not linger.
    async fn abort(&self, obj: &mut OpenObject) {
        match obj.upload.take() {
            Some(Upload::Store { id, .. }) => {
                if let Err(e) = self.multipart_store().abort_multipart(&obj.path, &id).await {
                    tracing::warn!(object = %obj.path, error = %e, "could not abort a multipart upload");
                }
            }
            Some(Upload::File { staging, .. }) => {
                let _ = std::fs::remove_file(staging);
            }
            None => {}
        }
    }

    /// Store the commit record as the ledger has it now (retried until it is stored).
    async fn save(&self, ctx: &SinkContext, j: &Journal) -> Result<(), ProcessorError> {
        let _order = j.writing.lock().await;
        let commit = j.ledger().commit();
        let bytes = serde_json::to_vec(&commit)
            .map_err(|e| ProcessorError::other(format!("encoding the commit record: {e}")))?;
        let payload = PutPayload::from(bytes);
        let what = format!("storing the commit record `{}`", j.path);
        self.retry_named(ctx, &what, |_| {
            let payload = payload.clone();
            async move {
                self.store.put(&j.path, payload).await?;
                Ok(())
            }
        })
        .await
    }

    /// Where a restart replays the input in order: load the commit record, delete the objects
    /// it left pending, and skip from now on what it covers. Called when the first record with
    /// a position arrives (records without one never need a commit record).
    async fn resume(&self, ctx: &mut SinkContext) -> Result<(), ProcessorError> {
        let node = crate::write::file_safe(&ctx.name);
        let key = format!("_flow/{node}.commit");
        let full = if self.prefix.is_empty() {
            key
        } else {
            format!("{}/{key}", self.prefix)
        };
        let path = ObjectPath::parse(&full)
            .map_err(|e| ProcessorError::other(format!("bad commit key `{full}`: {e}")))?;
        let what = format!("reading the commit record `{path}`");
        let found = self
            .retry_named(ctx, &what, |_| async {
                match self.store.get(&path).await {
                    Ok(got) => Ok(Some(got.bytes().await?)),
                    Err(object_store::Error::NotFound { .. }) => Ok(None),
                    Err(e) => Err(e.into()),
                }
            })
            .await?;
        let committed: Committed = match found {
            Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                ProcessorError::other(format!("the commit record `{path}` is damaged: {e}"))
            })?,
            None => Committed::default(),
        };
        for p in &committed.pending {
            let obj = ObjectPath::from(p.as_str());
            let what = format!("deleting `{obj}`, written after the last commit");
            self.retry_named(ctx, &what, |_| async {
                match self.store.delete(&obj).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                    Err(e) => Err(e.into()),
                }
            })
            .await?;
            if let Multipart::File(dir) = &self.multipart {
                let mut staging = dir.join(p).into_os_string();
                staging.push("#1");
                let _ = std::fs::remove_file(staging);
            }
        }
        if !committed.pending.is_empty() {
            tracing::info!(
                node = %ctx.name,
                objects = committed.pending.len(),
                "deleted objects written after the last commit"
            );
        }
        // Later batches are skipped by the input; the one at hand by the ledger.
        ctx.input.resume_after(committed.written.clone());
        let journal = Journal {
            path,
            ledger: std::sync::Mutex::new(Ledger::resume(&committed)),
            writing: tokio::sync::Mutex::new(()),
        };
        if !committed.pending.is_empty() {
            self.save(ctx, &journal).await?;
        }
        let _ = self.journal.set(journal);
        Ok(())
    }

    async fn run_open(
        &self,
        ctx: &mut SinkContext,
        open: &mut HashMap<String, OpenObject>,
    ) -> Result<(), ProcessorError> {
        let max_bytes = self.cfg.max_bytes.as_u64().max(1);
        let part_size = usize::try_from(self.cfg.part_size.as_u64()).unwrap_or(usize::MAX);
        let tick = (self.cfg.max_age.min(self.cfg.max_idle) / 4)
            .clamp(Duration::from_millis(50), Duration::from_secs(1));
        let mut timer = tokio::time::interval(tick);
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failures = Output::new(ctx.name.clone(), ctx.failures.port_count().max(1));
        let mut row = Row::default();
        let provenance = ctx.input.records_provenance();
        // Whether the commit record was looked for.
        let mut resumed = false;
        // Records sent to `failure` whose delivery there has not finished: each holds the
        // commit's `written` below its position (like an open object), so that a crash before
        // the `failure` path finished it replays it instead of skipping it.
        let mut failed = FailedRecords::default();
        loop {
            tokio::select! {
                Some(f) = failed.tracker.next(), if failed.tracker.outstanding() > 0 => {
                    // Committed with the next object (or at the end).
                    failed.finished(self.journal.get(), f.seq, f.status);
                }
                batch = ctx.input.next() => {
                    let Some(batch) = batch else { break };
                    if !resumed
                        && ctx.input.origins_ordered()
                        && batch.iter().any(|r| r.origin.is_some())
                    {
                        resumed = true;
                        self.resume(ctx).await?;
                    }
                    for mut r in batch {
                        if let (Some(j), Some(o)) = (self.journal.get(), r.origin) {
                            let mut ledger = j.ledger();
                            if ledger.covers(o) {
                                // In an object completed before the restart.
                                ledger.passed(o);
                                drop(ledger);
                                ctx.metrics.add_dropped(1);
                                r.finish();
                                continue;
                            }
                        }
                        let partition = match self
                            .event_time(&mut r)
                            .and_then(|t| self.key.render(&mut r, t, key_segment))
                        {
                            Ok(p) => p,
                            Err(msg) => {
                                failed.track(self, &mut r);
                                failures.fail(r, &msg);
                                continue;
                            }
                        };
                        row.clear();
                        if let Err(msg) = row.encode(&mut r, self.cfg.format, self.cfg.columns.as_deref()) {
                            failed.track(self, &mut r);
                                failures.fail(r, &msg);
                            continue;
                        }
                        if !open.contains_key(&partition) {
                            if open.len() >= self.cfg.max_open_objects {
                                let lru = open
                                    .iter()
                                    .min_by_key(|(_, o)| o.last_write)
                                    .map(|(k, _)| k.clone());
                                if let Some(obj) = lru.and_then(|k| open.remove(&k)) {
                                    self.close(ctx, obj).await?;
                                }
                            }
                            match self.open(&partition) {
                                Ok(o) => {
                                    open.insert(partition.clone(), o);
                                }
                                Err(msg) => {
                                    failed.track(self, &mut r);
                                failures.fail(r, &msg);
                                    continue;
                                }
                            }
                        }
                        let Some(obj) = open.get_mut(&partition) else { continue };
                        if let Err(e) = obj.body.write(row.bytes()) {
                            failed.track(self, &mut r);
                            failures.fail(r, &format!("encoding failed: {e}"));
                            continue;
                        }
                        obj.records += 1;
                        if let (Some(j), Some(o)) = (self.journal.get(), r.origin) {
                            j.ledger().wrote(obj.serial, o);
                            obj.positions.add(o);
                        }
                        obj.acks.merge(r.take_acks());
                        if provenance {
                            obj.ids.push(r.id().0);
                        }
                        obj.last_write = Instant::now();
                        drop(r);
                        if obj.body.output().is_some_and(|o| o.len() >= part_size) {
                            self.upload_part(ctx, obj).await?;
                        }
                        if (obj.records >= self.cfg.max_records || obj.size() >= max_bytes)
                            && let Some(obj) = open.remove(&partition)
                        {
                            self.close(ctx, obj).await?;
                        }
                    }
                    ctx.failures.flush(&mut failures).await?;
                    ctx.metrics.set_status("open_objects", serde_json::json!(open.len()));
                }
                _ = timer.tick() => {
                    let mut due: Vec<String> = open
                        .iter()
                        .filter(|(_, o)| {
                            o.opened.elapsed() >= self.cfg.max_age
                                || o.last_write.elapsed() >= self.cfg.max_idle
                        })
                        .map(|(k, _)| k.clone())
                        .collect();
                    due.sort();
                    let objs = due.iter().filter_map(|k| open.remove(k)).collect();
                    self.close_all(ctx, objs).await?;
                    ctx.metrics.set_status("open_objects", serde_json::json!(open.len()));
                }
            }
        }
        // Failures finished by now go into the last commit.
        let mut finished = false;
        while let Some(f) = failed.tracker.try_next() {
            finished |= failed.finished(self.journal.get(), f.seq, f.status);
        }
        if finished && let Some(j) = self.journal.get() {
            self.save(ctx, j).await?;
        }
        // The input ended (or the flow is stopping): complete every open object (retried
        // until it is).
        let mut rest: Vec<(String, OpenObject)> = open.drain().collect();
        rest.sort_by(|a, b| a.0.cmp(&b.0));
        self.close_all(ctx, rest.into_iter().map(|(_, o)| o).collect())
            .await?;
        ctx.metrics.set_status("open_objects", serde_json::json!(0));
        Ok(())
    }
}

/// Records `s3_sink` sent to its `failure` port with a position, until their delivery there
/// finishes (a delivery token of the sink's own rides with each).
#[derive(Default)]
struct FailedRecords {
    tracker: AckTracker,
    /// By token sequence number (an object serial: the record stands in the ledger as a
    /// one-record object until it is finished).
    at: HashMap<u64, Origin>,
}

impl FailedRecords {
    /// `r` goes to `failure`: with exactly-once on and a position, it holds the commit back
    /// until its delivery there finishes.
    fn track(&mut self, sink: &S3Sink, r: &mut Record) {
        let (Some(j), Some(o)) = (sink.journal.get(), r.origin) else {
            return;
        };
        let serial = sink
            .serial
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        j.ledger().wrote(serial, o);
        r.merge_acks(Acks::one(self.tracker.token(serial)));
        self.at.insert(serial, o);
    }

    /// The `failure` path finished the record of token `seq`. Delivered (or failed there in
    /// turn), it is done: a replay skips it. Abandoned, it keeps holding the commit back, so a
    /// restart sends it to `failure` again. Whether the ledger changed.
    fn finished(&mut self, journal: Option<&Journal>, seq: u64, status: AckStatus) -> bool {
        let (Some(o), Some(j)) = (self.at.remove(&seq), journal) else {
            return false;
        };
        if status == AckStatus::Abandoned {
            return false;
        }
        j.ledger().failed_done(seq, o);
        true
    }
}

#[async_trait]
impl Sink for S3Sink {
    async fn run(self: Box<Self>, mut ctx: SinkContext) -> Result<(), ProcessorError> {
        let mut open: HashMap<String, OpenObject> = HashMap::new();
        let result = self.run_open(&mut ctx, &mut open).await;
        if result.is_err() {
            // Stopping on an error: leave no multipart upload behind. The objects' acks are
            // dropped unreleased, which abandons their records: the source must not commit
            // past them, so they are read again after a restart.
            for (_, mut obj) in open.drain() {
                self.abort(&mut obj).await;
            }
        }
        result
    }
}
