//! `http_server`: accept records pushed over HTTP, with push flow control.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::{Bytes, BytesMut};
use bytesize::ByteSize;
use flow_core::ack::{AckCounters, AckStatus, AckTracker, Acks};
use flow_core::processor::{
    BuildContext, BuildError, ConfigError, Describe, Kind, PortId, Processor, ProcessorConfig,
    ProcessorError, Source, SourceContext,
};
use flow_core::record::{JsonView, Record};
use flow_core::runtime::CancellationToken;
use flow_core::runtime::metrics::NodeMetrics;
use futures::StreamExt;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinSet;

use super::{BodyRules, BodyType, Refused};

/// Accept records pushed over HTTP: devices and services POST JSON to the flow.
///
/// A POST to `path` carries a JSON object (one record), a JSON array (one record per element)
/// or JSON lines (one record per line). The answer is `202 Accepted` once the records are
/// queued, or with `ack: delivered`, `200 OK` once the flow has finished with every one of them
/// (written by the sinks, filtered out, or reported as failed: the body's `status` says which).
/// Every record must be a JSON object. The `Content-Type` says how the body is read:
/// `application/json` (or any `+json` type) is one document, an object or an array of objects;
/// `application/x-ndjson` (or `application/ndjson`, `application/jsonl`) is one object per
/// line; `text/plain` or no `Content-Type` is either, told apart by the content. Any other type
/// is answered `415` (with the accepted ones); blank lines are skipped.
/// Push flow control: at most `max_queued` records wait to enter the flow; when the flow is
/// full and they fill up, requests are answered `429 Too Many Requests` with `Retry-After`, and
/// nothing of them is taken. A body over `max_body`, or with a record over `max_record_size`,
/// is answered `413`; a malformed one (or a record that is not an object) `400` with the reason
/// and its line or element, and nothing of that body is ingested. With `token`, requests need
/// `Authorization: Bearer <token>` (`401` otherwise). A `GET` on `health_path` answers `200`
/// while the server runs (without authentication).
///
/// Slow or idle clients cannot hold the server: a request's headers must arrive within
/// `header_timeout` (which also closes connections idle that long), its body within
/// `body_timeout` (`408` otherwise), and at most `max_connections` are open at once. When the
/// flow stops, the server stops accepting, answers requests in flight and new ones on open
/// connections `503` with `Retry-After` and `Connection: close` (with `ack: delivered`, after
/// at most 1s more for their acknowledgement), and closes what is still open after 5s.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpServerConfig {
    /// The address and port to listen on, like `127.0.0.1:8080` (`0.0.0.0:8080` for every
    /// interface).
    pub listen: String,
    /// The path records are POSTed to.
    #[serde(default = "default_path")]
    pub path: String,
    /// The path of the health endpoint (`GET`, no authentication).
    #[serde(default = "default_health_path")]
    pub health_path: String,
    /// A bearer token requests must carry (`Authorization: Bearer <token>`); use `${VAR}` to
    /// take it from the environment. Never logged. Absent: no authentication.
    #[serde(default)]
    #[schemars(extend("writeOnly" = true))]
    pub token: Option<String>,
    /// The largest request body accepted, like `4MiB`; a larger one is answered `413`.
    #[serde(default = "default_max_body")]
    #[schemars(with = "String")]
    pub max_body: ByteSize,
    /// When a request is answered: `queued` (`202` once its records are queued) or `delivered`
    /// (`200` once the flow has finished with all of them).
    #[serde(default)]
    pub ack: AckMode,
    /// At most this many records wait to enter the flow; beyond that requests are answered
    /// `429`. A body with more records than this is accepted only when nothing waits.
    #[serde(default = "default_max_queued")]
    pub max_queued: usize,
    /// The `Retry-After` sent with `429` and `503` answers (whole seconds, at least 1).
    #[serde(default = "default_retry_after", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub retry_after: Duration,
    /// With `ack: delivered`, how long a request waits for its records to be finished before it
    /// is answered `504` (the records may still be delivered later); at most 1 hour. When the
    /// flow stops meanwhile, the request waits at most 1s more, then is answered `503` with
    /// `Retry-After`.
    #[serde(default = "default_ack_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub ack_timeout: Duration,
    /// The largest record, like `1MiB`: a line of JSON lines, an element of an array, or a
    /// whole single-object body. A body with a larger one is answered `413`, naming it.
    #[serde(default = "crate::record_size::default_max_record_size")]
    #[schemars(with = "String")]
    pub max_record_size: ByteSize,
    /// How long a client has to send a request's headers. It is also how long a connection may
    /// stay idle, new or kept alive between requests, before the server closes it.
    #[serde(default = "default_header_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub header_timeout: Duration,
    /// How long a client has to send a request's whole body once its headers are in; then the
    /// request is answered `408` and its connection closed.
    #[serde(default = "default_body_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub body_timeout: Duration,
    /// At most this many connections are open at once; further clients wait to be accepted
    /// until one closes.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
}

/// When a request is answered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AckMode {
    /// `202 Accepted` once the records are queued for the flow.
    #[default]
    Queued,
    /// `200 OK` once the flow has finished with every record (end-to-end acknowledgement).
    Delivered,
}

fn default_path() -> String {
    "/ingest".into()
}
fn default_health_path() -> String {
    "/health".into()
}
fn default_max_body() -> ByteSize {
    ByteSize::mib(4)
}
fn default_max_queued() -> usize {
    10_000
}
fn default_retry_after() -> Duration {
    Duration::from_secs(1)
}
fn default_ack_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_header_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_body_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_max_connections() -> usize {
    512
}

/// The longest `ack_timeout`, `header_timeout` and `body_timeout` (deadlines are computed by
/// adding them to now).
const MAX_ACK_TIMEOUT: Duration = Duration::from_secs(60 * 60);

/// How long a stopping server waits for its connections to close before it closes them.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

impl Describe for HttpServerConfig {
    const TYPE: &'static str = "http_server";
    const KIND: Kind = Kind::Source;
}

/// Check a route path: axum gives `{` and `*` a meaning, and a bad path must not panic later.
fn check_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!("`{path}` must start with `/`"));
    }
    if path.contains(['{', '}', '*', '?', '#']) || path.contains("//") {
        return Err(format!(
            "`{path}` may not contain `{{`, `}}`, `*`, `?`, `#` or `//`"
        ));
    }
    Ok(())
}

impl ProcessorConfig for HttpServerConfig {
    fn outputs(&self) -> Vec<String> {
        vec!["out".into()]
    }

    fn validate(&self) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        if self.listen.parse::<SocketAddr>().is_err() {
            errors.push(ConfigError::new(
                &["listen"],
                format!(
                    "`{}` is not an address and port like 127.0.0.1:8080",
                    self.listen
                ),
            ));
        }
        if let Err(e) = check_path(&self.path) {
            errors.push(ConfigError::new(&["path"], e));
        }
        if let Err(e) = check_path(&self.health_path) {
            errors.push(ConfigError::new(&["health_path"], e));
        }
        if self.path == self.health_path {
            errors.push(ConfigError::new(
                &["health_path"],
                "must differ from `path`",
            ));
        }
        if self.token.as_deref() == Some("") {
            errors.push(ConfigError::new(
                &["token"],
                "the token is empty (is its variable set?)",
            ));
        }
        if self.max_body.as_u64() == 0 {
            errors.push(ConfigError::new(&["max_body"], "must be more than 0 bytes"));
        }
        if self.max_queued == 0 || u32::try_from(self.max_queued).is_err() {
            errors.push(ConfigError::new(
                &["max_queued"],
                "must be between 1 and 4294967295",
            ));
        }
        for (field, value) in [
            ("ack_timeout", self.ack_timeout),
            ("header_timeout", self.header_timeout),
            ("body_timeout", self.body_timeout),
        ] {
            if value.is_zero() {
                errors.push(ConfigError::new(&[field], "must be more than 0s"));
            } else if value > MAX_ACK_TIMEOUT {
                errors.push(ConfigError::new(&[field], "is too long: at most 1 hour"));
            }
        }
        if self.max_connections == 0 || self.max_connections > Semaphore::MAX_PERMITS {
            errors.push(ConfigError::new(&["max_connections"], "must be at least 1"));
        }
        crate::record_size::validate(self.max_record_size, None, &mut errors);
        errors
    }

    fn build(&self, ctx: &BuildContext) -> Result<Processor, BuildError> {
        Ok(Processor::Source(Box::new(HttpServer::bind(
            self,
            &ctx.name,
            ctx.json_view(),
        )?)))
    }
}

/// The running source: a bound listener, served once the flow starts.
pub(crate) struct HttpServer {
    node: String,
    cfg: HttpServerConfig,
    listener: std::net::TcpListener,
    json_view: JsonView,
}

impl HttpServer {
    /// Check the config and bind the listener (so a port in use fails the start of the flow).
    pub(crate) fn bind(
        cfg: &HttpServerConfig,
        node: &str,
        json_view: JsonView,
    ) -> Result<Self, BuildError> {
        if let Some(e) = cfg.validate().first() {
            return Err(BuildError(format!("{}: {}", e.path.join("."), e.message)));
        }
        let addr: SocketAddr = cfg
            .listen
            .parse()
            .map_err(|_| BuildError(format!("`{}` is not an address", cfg.listen)))?;
        let listener = std::net::TcpListener::bind(addr)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(|e| BuildError(format!("cannot listen on {addr}: {e}")))?;
        Ok(Self {
            node: node.to_owned(),
            cfg: cfg.clone(),
            listener,
            json_view,
        })
    }

    /// The address actually bound (for a `:0` port).
    #[cfg(test)]
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }
}

/// Request counters, published as the node's status.
#[derive(Default)]
struct Stats {
    requests: AtomicU64,
    accepted: AtomicU64,
    rejected_full: AtomicU64,
    rejected_malformed: AtomicU64,
    rejected_too_large: AtomicU64,
    rejected_type: AtomicU64,
    unauthorized: AtomicU64,
    ack_timeouts: AtomicU64,
    body_timeouts: AtomicU64,
}

impl Stats {
    fn publish(&self, metrics: &NodeMetrics) {
        let get = |a: &AtomicU64| serde_json::json!(a.load(Ordering::Relaxed));
        metrics.set_status("requests", get(&self.requests));
        metrics.set_status("accepted_requests", get(&self.accepted));
        metrics.set_status("rejected_full", get(&self.rejected_full));
        metrics.set_status("rejected_malformed", get(&self.rejected_malformed));
        metrics.set_status("rejected_too_large", get(&self.rejected_too_large));
        metrics.set_status("rejected_type", get(&self.rejected_type));
        metrics.set_status("body_timeouts", get(&self.body_timeouts));
        metrics.set_status("unauthorized", get(&self.unauthorized));
        metrics.set_status("ack_timeouts", get(&self.ack_timeouts));
    }
}

fn bump(a: &AtomicU64) {
    a.fetch_add(1, Ordering::Relaxed);
}

/// A request's records, waiting to enter the flow; the permit is their place in the queue.
struct Queued {
    records: Vec<Record>,
    _permit: OwnedSemaphorePermit,
}

/// What the handlers share.
struct Shared {
    tx: mpsc::UnboundedSender<Queued>,
    queue: Arc<Semaphore>,
    max_queued: usize,
    token: Option<String>,
    max_body: usize,
    ack: AckMode,
    retry_after: HeaderValue,
    ack_timeout: Duration,
    body_timeout: Duration,
    stopping: CancellationToken,
    stats: Arc<Stats>,
    /// The source's acknowledgement counters (one tracker per request counts into them).
    acks: Arc<AckCounters>,
    /// How bodies become records (the kind is set per request).
    rules: BodyRules,
}

fn json(status: StatusCode, body: serde_json::Value) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body.to_string(),
    )
        .into_response()
}

fn error(status: StatusCode, message: &str) -> Response {
    json(status, serde_json::json!({ "error": message }))
}

/// An answer after which the connection is closed (the rest of the body is not read).
fn closing(mut r: Response) -> Response {
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

impl Shared {
    fn busy(&self, status: StatusCode, message: &str) -> Response {
        let mut r = error(status, message);
        r.headers_mut()
            .insert(header::RETRY_AFTER, self.retry_after.clone());
        r
    }

    /// `503`: the flow is stopping; the connection is closed.
    fn stopping(&self, message: &str) -> Response {
        closing(self.busy(StatusCode::SERVICE_UNAVAILABLE, message))
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, rest) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
            });
        given.is_some_and(|g| same(g.as_bytes(), token.as_bytes()))
    }
}

/// Compare without stopping at the first difference (no timing hint about the token).
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Read a body up to `max` bytes; `None` if it is larger.
async fn read_body(body: Body, max: usize) -> Result<Option<Bytes>, String> {
    let mut stream = body.into_data_stream();
    let mut buf = BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| format!("reading the body: {e}"))?;
        if buf.len() + chunk.len() > max {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(Some(buf.freeze()))
}

async fn ingest(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Body) -> Response {
    bump(&s.stats.requests);
    if s.stopping.is_cancelled() {
        return s.stopping("the flow is stopping");
    }
    if !s.authorized(&headers) {
        bump(&s.stats.unauthorized);
        let mut r = error(StatusCode::UNAUTHORIZED, "a valid bearer token is required");
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return r;
    }
    let too_large = || {
        bump(&s.stats.rejected_too_large);
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("the body is larger than {} bytes", s.max_body),
        )
    };
    let kind = match BodyType::of(headers.get(header::CONTENT_TYPE).map(HeaderValue::as_bytes)) {
        Ok(k) => k,
        Err(e) => {
            bump(&s.stats.rejected_type);
            return closing(error(StatusCode::UNSUPPORTED_MEDIA_TYPE, &e));
        }
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > s.max_body as u64) {
        return closing(too_large());
    }
    if s.queue.available_permits() == 0 {
        bump(&s.stats.rejected_full);
        return s.busy(
            StatusCode::TOO_MANY_REQUESTS,
            "the flow is full; retry later",
        );
    }
    // A client that stalls mid-body holds neither the server nor a stop.
    let read = tokio::select! {
        biased;
        () = s.stopping.cancelled() => return s.stopping("the flow is stopping"),
        r = tokio::time::timeout(s.body_timeout, read_body(body, s.max_body)) => r,
    };
    let body = match read {
        Ok(Ok(Some(b))) => b,
        Ok(Ok(None)) => return closing(too_large()),
        Ok(Err(e)) => {
            bump(&s.stats.rejected_malformed);
            return closing(error(StatusCode::BAD_REQUEST, &e));
        }
        Err(_) => {
            bump(&s.stats.body_timeouts);
            return closing(error(
                StatusCode::REQUEST_TIMEOUT,
                &format!(
                    "the body did not arrive within {}",
                    humantime_serde::re::humantime::format_duration(s.body_timeout)
                ),
            ));
        }
    };
    let rules = BodyRules { kind, ..s.rules };
    let mut records = match rules.parse(&body) {
        Ok(r) => r,
        Err(Refused::TooLarge(e)) => {
            bump(&s.stats.rejected_too_large);
            return error(StatusCode::PAYLOAD_TOO_LARGE, &e);
        }
        Err(Refused::Malformed(e)) => {
            bump(&s.stats.rejected_malformed);
            return error(StatusCode::BAD_REQUEST, &e);
        }
    };
    let n = records.len();
    let places = u32::try_from(n.min(s.max_queued)).unwrap_or(u32::MAX);
    let Ok(permit) = s.queue.clone().try_acquire_many_owned(places) else {
        bump(&s.stats.rejected_full);
        return s.busy(
            StatusCode::TOO_MANY_REQUESTS,
            "the flow is full; retry later",
        );
    };
    let mut tracker = None;
    if s.ack == AckMode::Delivered {
        let mut t = AckTracker::new().counting(s.acks.clone());
        let token = t.token(0);
        for r in &mut records {
            r.merge_acks(Acks::one(token.clone()));
        }
        tracker = Some(t);
    }
    if s.tx
        .send(Queued {
            records,
            _permit: permit,
        })
        .is_err()
    {
        return s.stopping("the flow is stopping");
    }
    bump(&s.stats.accepted);
    let Some(mut tracker) = tracker else {
        return json(StatusCode::ACCEPTED, serde_json::json!({ "accepted": n }));
    };
    let deadline = tokio::time::Instant::now() + s.ack_timeout;
    let acked = tokio::select! {
        a = tokio::time::timeout_at(deadline, tracker.next()) => a,
        () = s.stopping.cancelled() => {
            // The flow is stopping: a short grace for records already on their way, then the
            // client is told to come back (rather than held until `ack_timeout`).
            let grace = deadline.min(tokio::time::Instant::now() + STOPPING_GRACE);
            match tokio::time::timeout_at(grace, tracker.next()).await {
                Err(_) => {
                    bump(&s.stats.ack_timeouts);
                    return s.stopping(
                        "the flow is stopping; the records were accepted but not yet \
                         delivered, they may still be",
                    );
                }
                a => a,
            }
        }
    };
    match acked {
        Ok(Some(f)) => {
            let status = match f.status {
                AckStatus::Delivered => "delivered",
                AckStatus::Failed => "failed",
                AckStatus::Abandoned => {
                    return error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "the flow stopped before the records were delivered; send them again",
                    );
                }
            };
            json(
                StatusCode::OK,
                serde_json::json!({ "accepted": n, "status": status }),
            )
        }
        Ok(None) => error(StatusCode::INTERNAL_SERVER_ERROR, "acknowledgement lost"),
        Err(_) => {
            bump(&s.stats.ack_timeouts);
            error(
                StatusCode::GATEWAY_TIMEOUT,
                "the records were accepted but not yet delivered; they may still be",
            )
        }
    }
}

async fn health(State(s): State<Arc<Shared>>) -> Response {
    let queued = s.max_queued - s.queue.available_permits().min(s.max_queued);
    if s.stopping.is_cancelled() {
        return json(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({ "status": "stopping", "queued": queued }),
        );
    }
    json(
        StatusCode::OK,
        serde_json::json!({ "status": "ok", "queued": queued, "max_queued": s.max_queued }),
    )
}

/// With `ack: delivered`, how long a request still waits for its acknowledgement once the flow
/// is stopping, before it is answered `503`.
const STOPPING_GRACE: Duration = Duration::from_secs(1);

/// How often the request counters are published while idle.
const PUBLISH_EVERY: Duration = Duration::from_secs(1);

#[async_trait]
impl Source for HttpServer {
    async fn run(self: Box<Self>, ctx: SourceContext) -> Result<(), ProcessorError> {
        let SourceContext {
            name: _,
            mut out,
            shutdown,
            metrics,
        } = ctx;
        let cfg = &self.cfg;
        let listener = tokio::net::TcpListener::from_std(self.listener).map_err(|source| {
            ProcessorError::Io {
                context: format!("listening on {}", cfg.listen),
                source,
            }
        })?;
        let addr = listener
            .local_addr()
            .map_or_else(|_| cfg.listen.clone(), |a| a.to_string());
        let (tx, mut rx) = mpsc::unbounded_channel::<Queued>();
        let stats = Arc::new(Stats::default());
        let retry_secs = cfg.retry_after.as_secs_f64().ceil().max(1.0) as u64;
        let shared = Arc::new(Shared {
            tx,
            queue: Arc::new(Semaphore::new(cfg.max_queued)),
            max_queued: cfg.max_queued,
            token: cfg.token.clone(),
            max_body: usize::try_from(cfg.max_body.as_u64()).unwrap_or(usize::MAX),
            ack: cfg.ack,
            retry_after: HeaderValue::from(retry_secs),
            ack_timeout: cfg.ack_timeout,
            body_timeout: cfg.body_timeout,
            stopping: shutdown.clone(),
            stats: stats.clone(),
            acks: metrics.acks(),
            rules: BodyRules {
                kind: BodyType::Either,
                max_record: crate::record_size::bytes(cfg.max_record_size),
                max_record_size: cfg.max_record_size,
                view: self.json_view,
            },
        });
        let app = Router::new()
            .route(&cfg.path, post(ingest))
            .route(&cfg.health_path, get(health))
            .with_state(shared);
        let serving = serve(
            listener,
            app,
            Limits {
                header_timeout: cfg.header_timeout,
                max_connections: cfg.max_connections,
            },
            shutdown.clone(),
            self.node.clone(),
        );
        let mut server = tokio::spawn(serving);
        tracing::info!(node = %self.node, %addr, path = %cfg.path, "listening");
        let mut publish = tokio::time::interval(PUBLISH_EVERY);
        let mut result = Ok(());
        // Forward queued requests into the flow until the server has stopped (on shutdown it
        // finishes the requests in flight first), then what is left in the queue.
        loop {
            tokio::select! {
                q = rx.recv() => {
                    let Some(q) = q else { break };
                    if let Err(e) = forward(&mut out, q, &metrics).await {
                        result = Err(e);
                        break;
                    }
                    stats.publish(&metrics);
                }
                joined = &mut server => {
                    if let Err(e) = joined {
                        result = Err(ProcessorError::Other(format!("the HTTP server stopped: {e}")));
                    }
                    break;
                }
                _ = publish.tick() => stats.publish(&metrics),
            }
        }
        if result.is_err() {
            server.abort();
        } else if !server.is_finished() {
            // The channel closed before the server task ended: let it finish.
            let _ = (&mut server).await;
        }
        rx.close();
        while let Some(q) = rx.recv().await {
            if result.is_ok()
                && let Err(e) = forward(&mut out, q, &metrics).await
            {
                result = Err(e);
            }
        }
        stats.publish(&metrics);
        tracing::info!(node = %self.node, %addr, "stopped listening");
        result
    }
}

/// What bounds the server's connections.
struct Limits {
    header_timeout: Duration,
    max_connections: usize,
}

/// Serve `app` on `listener` until `stopping`, then close every connection within
/// [`STOP_TIMEOUT`].
///
/// hyper reads each connection with a header read timeout (which also closes idle and
/// kept-alive connections); the handler bounds the body. At most `max_connections` are open:
/// beyond that the listener is not polled, so clients wait in the OS's accept queue. On stop the
/// listener closes, each connection gets hyper's graceful shutdown (an idle one closes now, a
/// busy one after its answer, which the handler makes `503` at once) and whatever is still open
/// after [`STOP_TIMEOUT`] (a client that does not read its answer) is dropped.
async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: Limits,
    stopping: CancellationToken,
    node: String,
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut conns = JoinSet::new();
    let mut failing = false;
    loop {
        let slot = tokio::select! {
            biased;
            () = stopping.cancelled() => break,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
        };
        let accepted = tokio::select! {
            biased;
            () = stopping.cancelled() => break,
            a = listener.accept() => a,
        };
        while conns.try_join_next().is_some() {}
        let stream = match accepted {
            Ok((stream, _)) => {
                failing = false;
                stream
            }
            // The client gave up before it was accepted: not the server's problem.
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                // Out of file descriptors, mostly: wait for connections to close.
                if !failing {
                    tracing::warn!(node = %node, error = %e, "cannot accept connections; retrying");
                }
                failing = true;
                tokio::select! {
                    () = stopping.cancelled() => break,
                    () = tokio::time::sleep(ACCEPT_RETRY) => continue,
                }
            }
        };
        let _ = stream.set_nodelay(true);
        let conn = http.serve_connection(
            hyper_util::rt::TokioIo::new(stream),
            hyper_util::service::TowerToHyperService::new(app.clone()),
        );
        let stopping = stopping.clone();
        conns.spawn(async move {
            let _slot = slot;
            let mut conn = std::pin::pin!(conn);
            let ended = tokio::select! {
                r = conn.as_mut() => r,
                () = stopping.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            // A client that went away or timed out: nothing to do about it.
            if let Err(e) = ended {
                tracing::debug!(error = %e, "connection ended");
            }
        });
    }
    drop(listener);
    let open = async { while conns.join_next().await.is_some() {} };
    if tokio::time::timeout(STOP_TIMEOUT, open).await.is_err() {
        tracing::warn!(
            node = %node,
            connections = conns.len(),
            "closing connections still open 5s after the stop"
        );
        conns.shutdown().await;
    }
}

/// How long to wait before accepting again after an error (such as too many open files).
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// An accept error about one connection (the listener is fine).
fn is_connection_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}

async fn forward(
    out: &mut flow_core::runtime::emit::Emitter,
    q: Queued,
    metrics: &NodeMetrics,
) -> Result<(), ProcessorError> {
    metrics.add_received(q.records.len() as u64);
    // Waits while the flow is full: back-pressure, which fills the queue, which answers 429.
    out.send(PortId::DEFAULT, q.records)
        .await
        .map_err(|e| ProcessorError::Other(e.to_string()))
}
