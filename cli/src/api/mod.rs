//! The control API of a running flow (`flow run --api`): `/health`, `/ready`, `/metrics`
//! (Prometheus) and the JSON API under `/api/v1/` (the flow's graph, live stats and their
//! stream, taps, recent events). See `docs/api.md`.
//!
//! Off unless asked for; `127.0.0.1` by default. Binding anything but a loopback address
//! requires a token; with a token, every endpoint but `/health` answers 401 without
//! `Authorization: Bearer TOKEN`. The bound address is printed on stderr as one line,
//! `flow: api listening on http://ADDR` (clients such as the designer parse it).

pub mod events;
mod metrics;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use flow_core::observe::{FlowInfo, Level, Readiness, Sampler, Stats, TapMessage, TappedRecord};
use flow_core::runtime::Reporter;
use flow_core::spec::FlowSpec;
use futures::Stream;
use parking_lot::Mutex;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use events::EventLog;

/// The port the API listens on when none is given.
pub const DEFAULT_PORT: u16 = 9420;

/// The line a client reads on stderr to learn the bound address (followed by the URL).
pub const LISTENING: &str = "flow: api listening on ";

/// Where and how to serve the API.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The address to bind.
    pub addr: SocketAddr,
    /// The bearer token, if any.
    pub token: Option<String>,
}

/// Parse `--api`'s value: `HOST:PORT`, `:PORT`, `PORT`, or `HOST` (the default port).
pub fn parse_addr(text: &str) -> anyhow::Result<SocketAddr> {
    let text = text.trim();
    if let Ok(a) = text.parse::<SocketAddr>() {
        return Ok(a);
    }
    if let Some(port) = text
        .strip_prefix(':')
        .or(Some(text))
        .and_then(|p| p.parse::<u16>().ok())
    {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    if let Ok(ip) = text.trim_matches(['[', ']']).parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, DEFAULT_PORT));
    }
    if text == "localhost" {
        return Ok(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            DEFAULT_PORT,
        ));
    }
    if let Some((host, port)) = text.rsplit_once(':')
        && host == "localhost"
        && let Ok(port) = port.parse::<u16>()
    {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    anyhow::bail!(
        "invalid API address `{text}`: expected HOST:PORT (an IP address), :PORT or PORT, \
         like 127.0.0.1:{DEFAULT_PORT}"
    )
}

impl Settings {
    /// The settings from the command line (which win) and the flow file's `api:` section.
    /// `None`: the API is off.
    pub fn resolve(
        cli_addr: Option<Option<&str>>,
        cli_token: Option<&str>,
        file: Option<&flow_core::spec::ApiConfig>,
    ) -> anyhow::Result<Option<Settings>> {
        let listen = match (cli_addr, file) {
            (None, None) => return Ok(None),
            (Some(Some(a)), _) => Some(a.to_owned()),
            (Some(None), f) | (None, f) => f.and_then(|f| f.listen.clone()),
        };
        let addr = match listen {
            Some(l) => parse_addr(&l)?,
            None => SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), DEFAULT_PORT),
        };
        let token = cli_token
            .map(str::to_owned)
            .or_else(|| file.and_then(|f| f.token.clone()))
            .filter(|t| !t.is_empty());
        if !addr.ip().is_loopback() && token.is_none() {
            anyhow::bail!(
                "the API would listen on {addr}, which is not a loopback address, without a \
                 token: anyone who can reach it could read the flow. Set a token \
                 (--api-token, FLOW_API_TOKEN or `api: {{ token: ... }}` in the flow file), \
                 or listen on 127.0.0.1"
            );
        }
        Ok(Some(Settings { addr, token }))
    }
}

/// What the handlers share.
struct AppState {
    flow_name: String,
    flow_json: String,
    reporter: Reporter,
    registry: prometheus_client::registry::Registry,
    events: Arc<EventLog>,
    token: Option<String>,
    /// The flow has ended: streams send their last message and end.
    done: CancellationToken,
    /// The last two background samples, for `/api/v1/stats` rates.
    samples: Mutex<VecDeque<(Instant, Stats)>>,
    /// The run's provenance store, when provenance is on.
    provenance: Option<PathBuf>,
}

/// The run's provenance store, when provenance is on: where it is (for
/// `/api/v1/provenance/...`) and what its writer's falling behind cost (for `/metrics`).
pub struct Provenance {
    /// The store's directory.
    pub dir: PathBuf,
    /// The writer's counters.
    pub backlog: Arc<flow_core::provenance::Backlog>,
}

/// A bound, not yet serving, API.
pub struct Bound {
    listener: tokio::net::TcpListener,
    settings: Settings,
}

/// Bind the API's address (before the flow starts, so that a taken port fails the run at
/// once) and print the line clients read.
pub async fn bind(settings: Settings) -> anyhow::Result<Bound> {
    let listener = tokio::net::TcpListener::bind(settings.addr)
        .await
        .with_context(|| format!("cannot listen on {} for the API", settings.addr))?;
    let addr = listener.local_addr().context("the API's bound address")?;
    eprintln!("{LISTENING}http://{addr}");
    Ok(Bound { listener, settings })
}

/// A serving API.
pub struct Serving {
    done: CancellationToken,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Bound {
    /// Serve the API for this running flow.
    pub fn serve(
        self,
        flow: &FlowSpec,
        registry: &flow_core::processor::Registry,
        reporter: Reporter,
        events: Arc<EventLog>,
        started: SystemTime,
        provenance: Option<Provenance>,
    ) -> Serving {
        let schema_of = |type_name: &str| {
            registry.get(type_name).map(|d| {
                let mut g = schemars::SchemaGenerator::default();
                let mut schema = (d.schema)(&mut g).to_value();
                if let (Some(obj), Ok(defs)) = (
                    schema.as_object_mut(),
                    serde_json::to_value(g.take_definitions(true)),
                ) {
                    obj.insert("$defs".into(), defs);
                }
                schema
            })
        };
        let info = FlowInfo::new(flow, &schema_of);
        let flow_name = if flow.name.is_empty() {
            "flow".to_owned()
        } else {
            flow.name.clone()
        };
        let done = CancellationToken::new();
        let stop = CancellationToken::new();
        let state = Arc::new(AppState {
            flow_json: serde_json::to_string(&info).unwrap_or_default(),
            registry: metrics::registry(
                &flow_name,
                reporter.clone(),
                started,
                provenance.as_ref().map(|p| p.backlog.clone()),
            ),
            flow_name,
            reporter,
            events,
            token: self.settings.token.clone(),
            done: done.clone(),
            samples: Mutex::new(VecDeque::new()),
            provenance: provenance.map(|p| p.dir),
        });
        let app = Router::new()
            .route("/ready", get(ready))
            .route("/metrics", get(prometheus))
            .route("/api/v1/flow", get(flow_info))
            .route("/api/v1/stats", get(stats))
            .route("/api/v1/stats/stream", get(stats_stream))
            .route("/api/v1/tap", get(tap))
            .route("/api/v1/events", get(events_handler))
            .route("/api/v1/provenance/lineage/{id}", get(provenance_lineage))
            .route("/api/v1/provenance/search", get(provenance_search))
            .route("/api/v1/provenance/stats", get(provenance_stats))
            .route("/api/v1/provenance/replay/{id}", post(provenance_replay))
            .layer(middleware::from_fn_with_state(state.clone(), auth))
            // `/health` answers without the token.
            .route("/health", get(health))
            .fallback(not_found)
            .with_state(state.clone());
        tokio::spawn(sample_every_second(state.clone(), stop.clone()));
        let stopping = stop.clone();
        let task = tokio::spawn(async move {
            let serve = axum::serve(self.listener, app)
                .with_graceful_shutdown(async move { stopping.cancelled().await });
            if let Err(e) = serve.await {
                tracing::warn!(error = %e, "the API server stopped");
            }
        });
        Serving { done, stop, task }
    }
}

impl Serving {
    /// The flow has ended: let streams send their last snapshot and end, then stop serving
    /// (waiting at most `grace` for clients to take what they were sent).
    pub async fn finish(self, grace: Duration) {
        self.done.cancel();
        // Streams see `done` and end; give them a moment, then stop accepting.
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.stop.cancel();
        let mut task = self.task;
        if tokio::time::timeout(grace, &mut task).await.is_err() {
            task.abort();
        }
    }
}

async fn sample_every_second(state: Arc<AppState>, stop: CancellationToken) {
    let sampler = Sampler::new(state.flow_name.clone(), state.reporter.clone());
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        let mut samples = state.samples.lock();
        let prev = samples.back().map(|(t, s)| (*t, s));
        let s = sampler.sample_since(prev);
        samples.push_back((Instant::now(), s));
        if samples.len() > 2 {
            samples.pop_front();
        }
    }
}

/// Compare in constant time (the token is a secret).
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn auth(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    if let Some(token) = &state.token {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        if !given.is_some_and(|g| same(g.as_bytes(), token.as_bytes())) {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                json_body(&serde_json::json!({
                    "error": "this API needs a token: Authorization: Bearer TOKEN"
                })),
            )
                .into_response();
        }
    }
    next.run(request).await
}

fn json_body(v: &impl serde::Serialize) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        serde_json::to_string(v).unwrap_or_default(),
    )
        .into_response()
}

fn error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    (
        status,
        json_body(&serde_json::json!({ "error": message.to_string() })),
    )
        .into_response()
}

async fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "no such endpoint; see /api/v1/flow, /api/v1/stats, /api/v1/stats/stream, \
         /api/v1/tap, /api/v1/events, /api/v1/provenance/lineage/ID, \
         /api/v1/provenance/search, /api/v1/provenance/stats, \
         POST /api/v1/provenance/replay/ID, /metrics, /health, /ready",
    )
}

async fn health() -> Response {
    json_body(&serde_json::json!({ "status": "ok" }))
}

async fn ready(State(state): State<Arc<AppState>>) -> Response {
    let r = Readiness::of(&state.reporter);
    let status = if r.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, json_body(&r)).into_response()
}

async fn prometheus(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/openmetrics-text"));
    match metrics::encode(&state.registry, openmetrics) {
        Ok(text) => {
            let content_type = if openmetrics {
                "application/openmetrics-text; version=1.0.0; charset=utf-8"
            } else {
                prometheus_client::encoding::prometheus_text::CONTENT_TYPE
            };
            ([(header::CONTENT_TYPE, content_type)], text).into_response()
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

async fn flow_info(State(state): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        state.flow_json.clone(),
    )
        .into_response()
}

async fn stats(State(state): State<Arc<AppState>>) -> Response {
    let sampler = Sampler::new(state.flow_name.clone(), state.reporter.clone());
    let samples = state.samples.lock();
    // Rates over about a second: the newest background sample at least half a second old.
    let base = samples
        .iter()
        .rev()
        .find(|(t, _)| t.elapsed() >= Duration::from_millis(500))
        .or(samples.front())
        .map(|(t, s)| (*t, s));
    let s = sampler.sample_since(base);
    drop(samples);
    json_body(&s)
}

#[derive(Deserialize)]
struct StreamQuery {
    /// `1s`, `500ms`, ...
    interval: Option<String>,
}

/// The stream's interval (`1s` by default), kept within 100 ms and an hour; the error is
/// the message for a 400.
fn parse_interval(text: Option<&str>) -> Result<Duration, String> {
    let d = match text {
        None => Duration::from_secs(1),
        Some(t) => humantime::parse_duration(t)
            .map_err(|e| format!("invalid interval `{t}`: {e} (like `1s` or `500ms`)"))?,
    };
    Ok(d.clamp(Duration::from_millis(100), Duration::from_secs(3600)))
}

async fn stats_stream(
    State(state): State<Arc<AppState>>,
    Query(q): Query<StreamQuery>,
) -> Response {
    let interval = match parse_interval(q.interval.as_deref()) {
        Ok(i) => i,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let stream = futures::stream::unfold(
        (
            Sampler::new(state.flow_name.clone(), state.reporter.clone()),
            tokio::time::interval(interval),
            state.done.clone(),
            false,
        ),
        |(mut sampler, mut tick, done, ended)| async move {
            if ended {
                return None;
            }
            let last = tokio::select! {
                _ = tick.tick() => false,
                () = done.cancelled() => true,
            };
            let s = sampler.sample();
            let event = SseEvent::default()
                .event("stats")
                .data(serde_json::to_string(&s).unwrap_or_default());
            Some((Ok::<_, Infallible>(event), (sampler, tick, done, last)))
        },
    );
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

#[derive(Deserialize)]
struct TapQuery {
    node: String,
    port: Option<String>,
    limit: Option<u64>,
    format: Option<String>,
}

async fn tap(
    State(state): State<Arc<AppState>>,
    Query(q): Query<TapQuery>,
    headers: HeaderMap,
) -> Response {
    // `node=a.port` works too.
    let (node, port) = match (q.node.split_once('.'), q.port) {
        (_, Some(p)) => (q.node.clone(), Some(p)),
        (Some((n, p)), None) => (n.to_owned(), Some(p.to_owned())),
        (None, None) => (q.node.clone(), None),
    };
    let mut tap = match state.reporter.taps().watch(&node, port.as_deref()) {
        Ok(t) => t,
        Err(e) => return error(StatusCode::NOT_FOUND, e),
    };
    let port = port.unwrap_or_else(|| {
        state
            .reporter
            .nodes()
            .iter()
            .find(|n| n.name == node)
            .and_then(|n| n.ports.get(1).cloned())
            .unwrap_or_default()
    });
    let sse = match q.format.as_deref() {
        Some("sse") => true,
        Some("ndjson") => false,
        None => headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.contains("text/event-stream")),
        Some(other) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("invalid format `{other}`: `ndjson` or `sse`"),
            );
        }
    };
    let limit = q.limit.unwrap_or(u64::MAX);
    // Copies become messages here, off the flow's path. The tap ends once its node has
    // ended and what it holds is sent.
    let messages = async_stream(move |tx| async move {
        let mut sent = 0u64;
        while sent < limit {
            let Some(t) = tap.next().await else {
                // The node ended: say what was lost after the last delivery, too.
                let lost = tap.take_lost();
                if lost > 0 {
                    let _ = tx.send(TapMessage::Lost { lost }).await;
                }
                break;
            };
            if t.lost > 0 && tx.send(TapMessage::Lost { lost: t.lost }).await.is_err() {
                return;
            }
            for r in t.records {
                if sent >= limit {
                    break;
                }
                let m = TapMessage::Record(TappedRecord::new(&node, &port, r));
                if tx.send(m).await.is_err() {
                    return;
                }
                sent += 1;
            }
        }
    });
    if sse {
        let events = futures::StreamExt::map(messages, |m| {
            let kind = match &m {
                TapMessage::Record(_) => "record",
                TapMessage::Lost { .. } => "lost",
            };
            Ok::<_, Infallible>(
                SseEvent::default()
                    .event(kind)
                    .data(serde_json::to_string(&m).unwrap_or_default()),
            )
        });
        Sse::new(events)
            .keep_alive(KeepAlive::default())
            .into_response()
    } else {
        let lines = futures::StreamExt::map(messages, |m| {
            let mut line = serde_json::to_vec(&m).unwrap_or_default();
            line.push(b'\n');
            Ok::<_, Infallible>(bytes::Bytes::from(line))
        });
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/x-ndjson"),
            )],
            axum::body::Body::from_stream(lines),
        )
            .into_response()
    }
}

/// A stream fed by a task through a small channel (the task stops when the stream is
/// dropped: the client went away).
fn async_stream<T, F, Fut>(f: F) -> impl Stream<Item = T> + Send + 'static
where
    T: Send + 'static,
    F: FnOnce(tokio::sync::mpsc::Sender<T>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let task = tokio::spawn(f(tx));
    let guard = AbortOnDrop(task);
    futures::stream::unfold((rx, guard), |(mut rx, guard)| async move {
        let item = rx.recv().await?;
        Some((item, (rx, guard)))
    })
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[derive(Deserialize)]
struct EventsQuery {
    node: Option<String>,
    since: Option<u64>,
    level: Option<String>,
}

async fn events_handler(
    State(state): State<Arc<AppState>>,
    Query(q): Query<EventsQuery>,
) -> Response {
    let level = match q.level.as_deref() {
        None | Some("warn") => Level::Warn,
        Some("error") => Level::Error,
        Some(other) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("invalid level `{other}`: `warn` or `error`"),
            );
        }
    };
    json_body(&state.events.recent(q.node.as_deref(), q.since, level))
}

/// Why a provenance query failed: the status and the message of the error response.
type QueryError = (StatusCode, String);

fn internal(e: impl std::fmt::Display) -> QueryError {
    (StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

/// A query of the run's provenance store, off the async workers (it reads files): the
/// answer as JSON, or the error response.
async fn provenance_query<T: serde::Serialize + Send + 'static>(
    state: &AppState,
    query: impl FnOnce(flow_core::provenance::query::Events) -> Result<T, QueryError> + Send + 'static,
) -> Response {
    let Some(dir) = state.provenance.clone() else {
        return error(
            StatusCode::NOT_FOUND,
            "this run records no provenance (--no-provenance or provenance.enabled: false)",
        );
    };
    let answer = tokio::task::spawn_blocking(move || {
        query(flow_core::provenance::query::Events::read(&dir).map_err(internal)?)
    })
    .await;
    match answer {
        Ok(Ok(v)) => json_body(&v),
        Ok(Err((status, message))) => error(status, message),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

async fn provenance_lineage(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Response {
    let id = match crate::provenance::parse_id(&id) {
        Ok(id) => id,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    provenance_query(&state, move |events| match events.lineage(id) {
        Ok(Some(tree)) => Ok(tree),
        Ok(None) => Err((StatusCode::NOT_FOUND, format!("no event names record {id}"))),
        Err(e) => Err(internal(e)),
    })
    .await
}

async fn provenance_search(
    State(state): State<Arc<AppState>>,
    Query(q): Query<crate::provenance::SearchText>,
) -> Response {
    let search = match crate::provenance::search(q, flow_core::provenance::now_ms()) {
        Ok(s) => s,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("{e:#}")),
    };
    provenance_query(&state, move |events| {
        events.search(&search).map_err(internal)
    })
    .await
}

/// What `POST /api/v1/provenance/replay/{id}` answers.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Replayed {
    /// The record whose kept content was re-injected (the one asked for, or the first of
    /// its descendants whose content was kept).
    pub original: String,
    /// The node it was re-injected at: where the original entered (a source: into the
    /// nodes its records go to).
    pub node: String,
    /// The new records, one per node they went to; their lineage goes through the
    /// original's REPLAY event.
    pub records: Vec<String>,
}

/// Re-inject the content kept of record `id` (and its attributes) at the node that kept
/// it, as a new record linked to it by a REPLAY event. 404: no such record; 409: no content
/// of it was kept; 422: what was kept is not whole (cut at `max_content_bytes`, withheld).
async fn provenance_replay(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    use flow_core::provenance::replay::{self, ReplayError};
    let id = match crate::provenance::parse_id(&id) {
        Ok(id) => id,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let Some(dir) = state.provenance.clone() else {
        return error(
            StatusCode::NOT_FOUND,
            "this run records no provenance (--no-provenance or provenance.enabled: false)",
        );
    };
    let found = tokio::task::spawn_blocking(move || {
        let found = replay::find(&dir, id, None)?;
        let first = found.into_iter().next().ok_or(ReplayError::NotKept(id))?;
        replay::line(&first)?;
        Ok::<_, ReplayError>(first)
    })
    .await;
    let r = match found {
        Ok(Ok(r)) => r,
        Ok(Err(e @ ReplayError::Unknown(_))) => return error(StatusCode::NOT_FOUND, e),
        Ok(Err(e @ ReplayError::NotKept(_))) => return error(StatusCode::CONFLICT, e),
        Ok(Err(e @ ReplayError::Partial { .. })) => {
            return error(StatusCode::UNPROCESSABLE_ENTITY, e);
        }
        Ok(Err(e)) => return error(StatusCode::INTERNAL_SERVER_ERROR, e),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e),
    };
    let original = u64::from_str_radix(&r.kept.id, 16).map_or(id, flow_core::record::RecordId);
    let mut record =
        flow_core::record::Record::from_bytes(r.kept.content.clone().unwrap_or_default());
    record.set_attributes(r.kept.attributes.clone());
    match state
        .reporter
        .injector()
        .inject(&r.node, original, record)
        .await
    {
        Ok(ids) => json_body(&Replayed {
            original: original.to_string(),
            node: r.node,
            records: ids.iter().map(ToString::to_string).collect(),
        }),
        Err(e) => error(StatusCode::CONFLICT, e),
    }
}

async fn provenance_stats(State(state): State<Arc<AppState>>) -> Response {
    provenance_query(&state, |events| Ok(events.stats())).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        let lo = |p| SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), p);
        assert_eq!(parse_addr("127.0.0.1:0").ok(), Some(lo(0)));
        assert_eq!(parse_addr(":8080").ok(), Some(lo(8080)));
        assert_eq!(parse_addr("8080").ok(), Some(lo(8080)));
        assert_eq!(parse_addr("localhost:81").ok(), Some(lo(81)));
        assert_eq!(parse_addr("127.0.0.1").ok(), Some(lo(DEFAULT_PORT)));
        assert_eq!(
            parse_addr("[::1]:9").ok(),
            Some(SocketAddr::new(
                IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
                9
            ))
        );
        assert!(parse_addr("example.com:80").is_err());
    }

    #[test]
    fn a_public_address_needs_a_token() {
        let err = Settings::resolve(Some(Some("0.0.0.0:0")), None, None)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("without a token"), "{err}");
        let ok = Settings::resolve(Some(Some("0.0.0.0:0")), Some("t"), None)
            .ok()
            .flatten();
        assert_eq!(ok.and_then(|s| s.token), Some("t".to_owned()));
        // Off unless asked for; the file's section turns it on.
        assert!(matches!(Settings::resolve(None, Some("t"), None), Ok(None)));
        let file = flow_core::spec::ApiConfig {
            listen: Some(":0".into()),
            token: None,
        };
        let s = Settings::resolve(None, None, Some(&file)).ok().flatten();
        assert_eq!(s.map(|s| s.addr.port()), Some(0));
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(same(b"secret", b"secret"));
        assert!(!same(b"secret", b"secreT"));
        assert!(!same(b"secret", b"secre"));
    }
}
