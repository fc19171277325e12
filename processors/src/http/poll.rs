//! `http_poll`: poll a REST endpoint on an interval and emit what is new or changed.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use bytesize::ByteSize;
use flow_core::expr::{Expr, ExprKind};
use flow_core::processor::{
    BuildContext, BuildError, ConfigError, Describe, Kind, Output, PortId, Processor,
    ProcessorConfig, ProcessorError, Source, SourceContext,
};
use flow_core::record::{Attributes, JsonView, Record, Value, encode_json};
use flow_core::runtime::CancellationToken;
use flow_core::runtime::emit::Emitter;
use flow_core::runtime::metrics::NodeMetrics;
use indexmap::IndexMap;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{StatusCode, Url};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::{BoundedSet, check_pointer, hash64, json_pointer, redact, without_credentials};

/// Poll an HTTP endpoint on an interval and emit what is new or changed.
///
/// Each poll sends the request (with `headers`, which may take secrets from `${VAR}`) and turns
/// the response into records: the whole body, each element of a JSON array (at `pointer`), or
/// each JSON line. Only what is new or changed is emitted: the last response's `ETag` and
/// `Last-Modified` go back as `If-None-Match` / `If-Modified-Since` (a `304` or an identical
/// body yields nothing), and with `dedupe` each record's key is remembered (the most recent
/// `max_keys`) so a record whose key was already emitted is skipped. HTTP dates count whole
/// seconds, so a `Last-Modified` less than two seconds older than the response's `Date` (or a
/// response without `Date`) cannot tell that answer from a change later in the same second
/// (RFC 9110, 8.8.2.2; one second more because file systems stamp files from a clock a few
/// milliseconds behind the one that dates responses); then no validator is sent next time
/// (servers derive `ETag`s from the same time) and the body is compared instead, so no change
/// is missed. A record larger than
/// `max_record_size` goes to `failure` with its first 1 KiB. With `pagination`, every
/// page is fetched, one batch per page, as long as it is on the origin of `url` (same scheme,
/// host and port): a next page elsewhere is not fetched (the configured headers, which may
/// hold secrets, go only to that origin), and the poll ends there with a warning. Server
/// errors (5xx, 429) and timeouts are retried with capped exponential backoff (honouring
/// `Retry-After` up to `max_backoff`); any other 4xx is not retried before
/// the next poll, and the wait between polls doubles while it lasts. One log line per burst of
/// failures, and one when the endpoint recovers. Under back-pressure the poller waits and the
/// ticks it missed are skipped, never queued up. Records carry attributes `http.status` and
/// `http.url` (credentials removed). A body that cannot be read as configured goes to
/// `failure`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpPollConfig {
    /// The URL to poll, `http://` or `https://` (`${VAR}` placeholders are filled from the
    /// environment). Put secrets in `headers`, not in the URL.
    pub url: String,
    /// The request method: `get`, `post` or `put`.
    #[serde(default)]
    pub method: Method,
    /// Request headers, like `Authorization: Bearer ${API_TOKEN}`. Their values are never
    /// logged.
    #[serde(default)]
    #[schemars(extend("writeOnly" = true))]
    pub headers: IndexMap<String, String>,
    /// A request body (for `post` and `put`).
    #[serde(default)]
    pub body: Option<String>,
    /// Time between the starts of two polls, like `30s` (at most 1 day).
    #[serde(default = "default_interval", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub interval: Duration,
    /// The longest a request may take, response body included; then it is retried (at most 1
    /// hour).
    #[serde(default = "default_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub timeout: Duration,
    /// How a response becomes records: `body` (the whole body is one JSON record), `array`
    /// (each element of the JSON array at `pointer`) or `ndjson` (each JSON line).
    #[serde(default)]
    pub records: Split,
    /// With `records: array`: a JSON pointer to the array inside the body, like `/data/items`;
    /// empty for a body that is the array itself.
    #[serde(default)]
    pub pointer: String,
    /// Send the last response's validators (`If-None-Match`, `If-Modified-Since`) and emit
    /// nothing for a `304 Not Modified` or a body identical to the last one from that URL.
    #[serde(default = "default_true")]
    pub skip_unchanged: bool,
    /// Emit a record only if its key was not emitted before: `{ key: .id }`, where `key` is a
    /// VRL expression (a record whose key is `null` is always emitted) and `max_keys` (default
    /// 100000) bounds how many keys are remembered, the oldest forgotten first. Keys are kept
    /// for the run, not across restarts.
    #[serde(default)]
    pub dedupe: Option<DedupeConfig>,
    /// How to find the next page: `link` (the `Link` header's `rel="next"`),
    /// `{ next_url: EXPR }` or `{ cursor: { value: EXPR, param: NAME } }`. Absent: one page.
    /// Only pages on the origin of `url` (scheme, host and port) are followed.
    #[serde(default)]
    pub pagination: Option<Pagination>,
    /// At most this many pages per poll.
    #[serde(default = "default_max_pages")]
    pub max_pages: usize,
    /// The longest wait between retries of a failing request (the wait doubles from 500ms up to
    /// this, at most 1 day); also the longest wait between polls while the endpoint answers
    /// with a client error (4xx), and the longest `Retry-After` honoured (a server asking for
    /// longer is retried after this).
    #[serde(default = "default_max_backoff", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub max_backoff: Duration,
    /// The largest response body read, like `16MiB`; a larger one is an error (not retried
    /// before the next poll).
    #[serde(default = "default_max_body")]
    #[schemars(with = "String")]
    pub max_body: ByteSize,
    /// The largest record, like `1MiB`: the whole body (`records: body`), an element of the
    /// array or a line. A larger one goes to `failure` with its first 1 KiB.
    #[serde(default = "crate::record_size::default_max_record_size")]
    #[schemars(with = "String")]
    pub max_record_size: ByteSize,
}

/// The request method.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// GET.
    #[default]
    Get,
    /// POST (with `body`).
    Post,
    /// PUT (with `body`).
    Put,
}

/// How a response becomes records.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    /// The whole body is one JSON record.
    #[default]
    Body,
    /// Each element of the JSON array at `pointer` is a record.
    Array,
    /// Each non-empty line is a JSON record.
    Ndjson,
}

/// Emit a record only if its key was not emitted before.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DedupeConfig {
    /// A VRL expression giving the record's key, like `.id` (or `{"id": .id, "v": .version}`
    /// to emit a record again when its version changes). A record without a key (`null`) is
    /// always emitted.
    pub key: String,
    /// How many keys are remembered (the oldest is forgotten first): bounds memory.
    #[serde(default = "default_max_keys")]
    pub max_keys: usize,
}

/// How to find the next page.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Pagination {
    /// Follow the URL of the `Link` response header with `rel="next"`.
    Link,
    /// A VRL expression over the response body (JSON) giving the next page's URL, absolute or
    /// relative to the page's; `null` or `""` on the last page.
    NextUrl(String),
    /// A VRL expression over the response body giving a cursor; the next page is `url` with the
    /// query parameter `param` set to it. `null` or `""` on the last page.
    Cursor(CursorConfig),
}

/// Cursor pagination.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CursorConfig {
    /// A VRL expression over the response body giving the next cursor, like `.meta.next`.
    pub value: String,
    /// The query parameter the cursor goes in.
    pub param: String,
}

fn default_true() -> bool {
    true
}
fn default_interval() -> Duration {
    Duration::from_secs(10)
}
fn default_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_max_pages() -> usize {
    100
}
fn default_max_backoff() -> Duration {
    Duration::from_secs(60)
}
fn default_max_body() -> ByteSize {
    ByteSize::mib(16)
}
fn default_max_keys() -> usize {
    100_000
}

/// The first wait before a retry; doubles up to `max_backoff`.
const BACKOFF_START: Duration = Duration::from_millis(500);

/// The longest `interval` and `max_backoff` (deadlines are computed by adding them to now).
const MAX_WAIT: Duration = Duration::from_secs(24 * 60 * 60);
/// The longest `timeout`.
const MAX_TIMEOUT: Duration = Duration::from_secs(60 * 60);

impl Describe for HttpPollConfig {
    const TYPE: &'static str = "http_poll";
    const KIND: Kind = Kind::Source;
}

impl HttpPollConfig {
    fn parse_url(&self) -> Result<Url, String> {
        let url = Url::parse(&self.url).map_err(|e| format!("not a URL: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!(
                "unsupported scheme `{}`: use http:// or https://",
                url.scheme()
            ));
        }
        Ok(url)
    }

    fn header_map(&self) -> Result<HeaderMap, ConfigError> {
        let mut map = HeaderMap::new();
        for (name, value) in &self.headers {
            let n = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| ConfigError::new(&["headers", name], "not a valid header name"))?;
            // The value may be a secret: the message never shows it.
            let mut v = HeaderValue::from_str(value).map_err(|_| {
                ConfigError::new(
                    &["headers", name],
                    "the value has characters a header cannot hold",
                )
            })?;
            v.set_sensitive(true);
            map.append(n, v);
        }
        Ok(map)
    }

    fn next(&self) -> Result<Option<Next>, (Vec<&'static str>, flow_core::expr::CompileError)> {
        Ok(match &self.pagination {
            None => None,
            Some(Pagination::Link) => Some(Next::Link),
            Some(Pagination::NextUrl(e)) => Some(Next::Url(
                Expr::compile(e, ExprKind::Value)
                    .map_err(|err| (vec!["pagination", "next_url"], err))?,
            )),
            Some(Pagination::Cursor(c)) => Some(Next::Cursor(
                Expr::compile(&c.value, ExprKind::Value)
                    .map_err(|err| (vec!["pagination", "cursor", "value"], err))?,
                c.param.clone(),
            )),
        })
    }
}

impl ProcessorConfig for HttpPollConfig {
    fn outputs(&self) -> Vec<String> {
        vec!["out".into()]
    }

    fn validate(&self) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        if let Err(e) = self.parse_url() {
            errors.push(ConfigError::new(&["url"], e));
        }
        if let Err(e) = self.header_map() {
            errors.push(e);
        }
        for (field, value, max, most) in [
            ("interval", self.interval, MAX_WAIT, "1 day"),
            ("timeout", self.timeout, MAX_TIMEOUT, "1 hour"),
            ("max_backoff", self.max_backoff, MAX_WAIT, "1 day"),
        ] {
            if value.is_zero() {
                errors.push(ConfigError::new(&[field], "must be more than 0s"));
            } else if value > max {
                errors.push(ConfigError::new(
                    &[field],
                    format!(
                        "`{}` is too long: at most {most}",
                        humantime_serde::re::humantime::format_duration(value)
                    ),
                ));
            }
        }
        if self.max_pages == 0 {
            errors.push(ConfigError::new(&["max_pages"], "must be at least 1"));
        }
        if self.max_body.as_u64() == 0 {
            errors.push(ConfigError::new(&["max_body"], "must be more than 0 bytes"));
        }
        crate::record_size::validate(self.max_record_size, None, &mut errors);
        if let Err(e) = check_pointer(&self.pointer) {
            errors.push(ConfigError::new(&["pointer"], e));
        }
        if !self.pointer.is_empty() && self.records != Split::Array {
            errors.push(ConfigError::new(
                &["pointer"],
                "`pointer` is only used with `records: array`",
            ));
        }
        if self.body.is_some() && self.method == Method::Get {
            errors.push(ConfigError::new(
                &["body"],
                "a GET request has no body: use `method: post` or `put`",
            ));
        }
        if let Some(d) = &self.dedupe {
            if let Err(e) = Expr::compile(&d.key, ExprKind::Value) {
                errors.extend(ConfigError::from_expr(&["dedupe", "key"], &e));
            }
            if d.max_keys == 0 {
                errors.push(ConfigError::new(
                    &["dedupe", "max_keys"],
                    "must be at least 1",
                ));
            }
        }
        if let Err((path, e)) = self.next() {
            errors.extend(ConfigError::from_expr(&path, &e));
        }
        if let Some(Pagination::Cursor(c)) = &self.pagination
            && c.param.is_empty()
        {
            errors.push(ConfigError::new(
                &["pagination", "cursor", "param"],
                "give the query parameter the cursor goes in",
            ));
        }
        errors
    }

    fn build(&self, ctx: &BuildContext) -> Result<Processor, BuildError> {
        let url = self.parse_url().map_err(BuildError)?;
        let headers = self.header_map().map_err(|e| BuildError(e.message))?;
        let next = self
            .next()
            .map_err(|(_, e)| BuildError(format!("pagination: {e}")))?;
        let dedupe = self
            .dedupe
            .as_ref()
            .map(|d| Expr::compile(&d.key, ExprKind::Value))
            .transpose()
            .map_err(|e| BuildError(format!("dedupe key: {e}")))?;
        let client = crate::http_client::builder(self.timeout)
            .user_agent(concat!("flow/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| BuildError(format!("HTTP client: {e}")))?;
        Ok(Processor::Source(Box::new(HttpPoll {
            node: ctx.name.clone(),
            cfg: self.clone(),
            url,
            method: match self.method {
                Method::Get => reqwest::Method::GET,
                Method::Post => reqwest::Method::POST,
                Method::Put => reqwest::Method::PUT,
            },
            headers,
            client,
            // The dedupe key reads fields too.
            json_view: if self.dedupe.is_some() {
                JsonView::Eager
            } else {
                ctx.json_view()
            },
            dedupe,
            next,
        })))
    }
}

/// Compiled pagination.
enum Next {
    Link,
    Url(Expr),
    Cursor(Expr, String),
}

struct HttpPoll {
    node: String,
    cfg: HttpPollConfig,
    url: Url,
    method: reqwest::Method,
    headers: HeaderMap,
    client: reqwest::Client,
    dedupe: Option<Expr>,
    next: Option<Next>,
    json_view: JsonView,
}

/// What the last response from a URL said, for change detection and 304s.
#[derive(Clone, Debug, Default)]
struct Memo {
    /// The validators sent with the next request: none when the last answer was modified
    /// within its last second (see [`trustworthy_validators`]).
    etag: Option<HeaderValue>,
    last_modified: Option<HeaderValue>,
    body_hash: u64,
    next: Option<Url>,
}

/// Whether a response's validators can tell it from any later change. HTTP dates have
/// one-second resolution: a `Last-Modified` that is not at least a second older than the
/// response's `Date` is weak (RFC 9110, 8.8.2.2), because the resource may change again within
/// that second and keep the same `Last-Modified`. Two seconds are asked here: Linux stamps a
/// file's modification from a coarse clock up to a tick (a few ms) behind the one a server
/// dates its answer with, so a file rewritten just after an answer dated at the start of a
/// second can carry the second before, the `Last-Modified` already sent: a change missed (the
/// likely cause of the one version `every_version_of_a_file_python_serves_is_emitted` lost
/// once, under load); servers of static files (nginx, Apache) derive
/// their `ETag` from that same time and the size, so it is no better. Without a `Date` to compare
/// with, a `Last-Modified` is not trusted either. A response without `Last-Modified` (an `ETag`
/// alone, usually from the content) is trusted.
fn trustworthy_validators(headers: &HeaderMap) -> bool {
    let date = |name| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| httpdate::parse_http_date(v).ok())
    };
    if !headers.contains_key(reqwest::header::LAST_MODIFIED) {
        return true;
    }
    match (
        date(reqwest::header::LAST_MODIFIED),
        date(reqwest::header::DATE),
    ) {
        (Some(modified), Some(date)) => date
            .duration_since(modified)
            .is_ok_and(|d| d >= Duration::from_secs(2)),
        _ => false,
    }
}

/// A response worth reading.
struct Fetched {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

/// How a request went.
enum Attempt {
    /// A 2xx or a 304.
    Ok(Fetched),
    /// A 5xx, a 429, a timeout or a connection error: retried with backoff (or after the
    /// server's `Retry-After`).
    Retry {
        error: String,
        after: Option<Duration>,
    },
    /// Any other 4xx, or a body over the limit: not retried before the next poll.
    Client(String),
}

/// How a poll ended.
enum Cycle {
    Done,
    ClientError,
    Stopped,
}

/// State kept from poll to poll.
struct State {
    memos: HashMap<Url, Memo>,
    memo_order: VecDeque<Url>,
    max_memos: usize,
    seen: Option<BoundedSet>,
    /// Consecutive failed attempts (one log line per burst).
    failures: u64,
    /// The last poll stopped at a next page on another origin (one log line per burst).
    offsite: bool,
    backoff: Duration,
    client_backoff: Duration,
    counters: Counters,
}

#[derive(Default, Serialize)]
struct Counters {
    polls: u64,
    requests: u64,
    not_modified: u64,
    unchanged: u64,
    duplicates: u64,
    retries: u64,
    client_errors: u64,
    skipped_ticks: u64,
    /// Next pages not fetched because they are on another origin.
    offsite_pages: u64,
}

impl State {
    fn remember(&mut self, url: &Url, memo: Memo) {
        if self.memos.insert(url.clone(), memo).is_none() {
            self.memo_order.push_back(url.clone());
            while self.memo_order.len() > self.max_memos {
                if let Some(old) = self.memo_order.pop_front() {
                    self.memos.remove(&old);
                }
            }
        }
    }

    fn publish(&self, metrics: &NodeMetrics) {
        if let Ok(serde_json::Value::Object(m)) = serde_json::to_value(&self.counters) {
            for (k, v) in m {
                metrics.set_status(&k, v);
            }
        }
        if let Some(seen) = &self.seen {
            metrics.set_status("keys", serde_json::json!(seen.len()));
        }
    }
}

/// The `Retry-After` header, in seconds (the HTTP-date form is ignored: the backoff applies).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    v.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// The `rel="next"` URL of `Link` headers (RFC 8288).
pub(crate) fn link_next(headers: &HeaderMap) -> Option<String> {
    for value in headers.get_all(reqwest::header::LINK) {
        let Ok(mut rest) = value.to_str() else {
            continue;
        };
        while let Some(start) = rest.find('<') {
            let after = &rest[start + 1..];
            let end = after.find('>')?;
            let target = &after[..end];
            let tail = &after[end + 1..];
            let params_end = tail.find('<').unwrap_or(tail.len());
            let is_next = tail[..params_end].split([';', ',']).any(|p| {
                let p = p.trim();
                let Some((k, v)) = p.split_once('=') else {
                    return false;
                };
                k.trim().eq_ignore_ascii_case("rel")
                    && v.trim()
                        .trim_matches('"')
                        .split_whitespace()
                        .any(|r| r.eq_ignore_ascii_case("next"))
            });
            if is_next {
                return Some(target.to_owned());
            }
            rest = &tail[params_end..];
        }
    }
    None
}

/// A cursor or URL value as text; `None` for null or empty.
fn text(v: &Value) -> Option<String> {
    if let Some(s) = v.to_str_lossy() {
        return (!s.is_empty()).then(|| s.into_owned());
    }
    let s = match v {
        Value::Null => return None,
        Value::Integer(i) => i.to_string(),
        Value::Float(f) => f.to_string(),
        Value::Boolean(b) => b.to_string(),
        other => String::from_utf8_lossy(&encode_json(other)).into_owned(),
    };
    (!s.is_empty()).then_some(s)
}

impl HttpPoll {
    async fn fetch(&self, url: &Url, memo: Option<&Memo>) -> Attempt {
        let mut req = self
            .client
            .request(self.method.clone(), url.clone())
            .headers(self.headers.clone());
        if self.cfg.skip_unchanged
            && let Some(m) = memo
        {
            if let Some(etag) = &m.etag {
                req = req.header(reqwest::header::IF_NONE_MATCH, etag.clone());
            }
            if let Some(lm) = &m.last_modified {
                req = req.header(reqwest::header::IF_MODIFIED_SINCE, lm.clone());
            }
        }
        if let Some(body) = &self.cfg.body {
            req = req.body(body.clone());
        }
        let mut resp = match req.send().await {
            Ok(r) => r,
            Err(e) if e.is_builder() => return Attempt::Client(e.without_url().to_string()),
            Err(e) => {
                return Attempt::Retry {
                    error: error_chain(&e.without_url()),
                    after: None,
                };
            }
        };
        let status = resp.status();
        if status == StatusCode::NOT_MODIFIED {
            return Attempt::Ok(Fetched {
                status,
                headers: resp.headers().clone(),
                body: Bytes::new(),
            });
        }
        if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
            return Attempt::Retry {
                error: format!("HTTP {status}"),
                after: retry_after(resp.headers()),
            };
        }
        if !status.is_success() {
            return Attempt::Client(format!("HTTP {status}"));
        }
        let max = usize::try_from(self.cfg.max_body.as_u64()).unwrap_or(usize::MAX);
        let mut body = BytesMut::new();
        loop {
            match resp.chunk().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > max {
                        return Attempt::Client(format!(
                            "the response body is larger than max_body ({})",
                            self.cfg.max_body
                        ));
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => {
                    return Attempt::Retry {
                        error: error_chain(&e.without_url()),
                        after: None,
                    };
                }
            }
        }
        Attempt::Ok(Fetched {
            status,
            headers: resp.headers().clone(),
            body: body.freeze(),
        })
    }

    /// The next page's URL.
    fn next_url(
        &self,
        page: &Url,
        f: &Fetched,
        parsed: &mut Parsed,
        attrs: &Attributes,
    ) -> Option<Url> {
        match self.next.as_ref()? {
            Next::Link => link_next(&f.headers).and_then(|u| page.join(&u).ok()),
            Next::Url(e) => {
                let v = e.eval(parsed.get(&f.body)?, attrs).ok()?;
                page.join(&text(&v)?).ok()
            }
            Next::Cursor(e, param) => {
                let v = e.eval(parsed.get(&f.body)?, attrs).ok()?;
                let cursor = text(&v)?;
                let mut u = self.url.clone();
                let kept: Vec<(String, String)> = u
                    .query_pairs()
                    .filter(|(k, _)| k != param)
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .collect();
                u.query_pairs_mut()
                    .clear()
                    .extend_pairs(kept)
                    .append_pair(param, &cursor);
                Some(u)
            }
        }
    }

    /// Turn a response into records on `pending`; returns the next page.
    fn handle(&self, page: &Url, f: Fetched, st: &mut State, pending: &mut Output) -> Option<Url> {
        let memo = st.memos.get(page).cloned();
        if f.status == StatusCode::NOT_MODIFIED {
            st.counters.not_modified += 1;
            return memo.and_then(|m| m.next);
        }
        let mut attrs = Attributes::new();
        attrs.insert("http.status".into(), f.status.as_u16().to_string());
        attrs.insert("http.url".into(), without_credentials(page));
        let mut parsed = Parsed::default();
        let next = self.next_url(page, &f, &mut parsed, &attrs);
        let body_hash = hash64(&f.body);
        // With the body in hand, only the body says whether it changed (an unchanged `ETag`
        // may come from a change within the same second).
        let unchanged =
            self.cfg.skip_unchanged && memo.as_ref().is_some_and(|m| m.body_hash == body_hash);
        let trusted = trustworthy_validators(&f.headers);
        let validator = |name| trusted.then(|| f.headers.get(name).cloned()).flatten();
        st.remember(
            page,
            Memo {
                etag: validator(reqwest::header::ETAG),
                last_modified: validator(reqwest::header::LAST_MODIFIED),
                body_hash,
                next: next.clone(),
            },
        );
        if unchanged {
            st.counters.unchanged += 1;
            return next;
        }
        // Each record, with why it goes to `failure` if it does.
        let mut records: Vec<(Record, Option<String>)> = Vec::new();
        let max = self.cfg.max_record_size;
        let oversized = |content: &[u8], what: &str| {
            let (r, e) = crate::record_size::oversized(content, content.len() as u64, max, what);
            (r, Some(e))
        };
        let max_record = crate::record_size::bytes(max);
        match self.cfg.records {
            Split::Body if f.body.len() > max_record => {
                records.push(oversized(&f.body, "the body"))
            }
            Split::Body => records.push(match Record::json(f.body.clone(), self.json_view) {
                Ok(r) => (r, None),
                Err((r, e)) => (r, Some(e.to_string())),
            }),
            Split::Ndjson => {
                for (n, (line, _)) in crate::lines::split_lines(&f.body).enumerate() {
                    if crate::lines::is_blank(&line) {
                        continue;
                    }
                    if line.len() > max_record {
                        records.push(oversized(&line, &format!("line {}", n + 1)));
                        continue;
                    }
                    records.push(match Record::json(line, self.json_view) {
                        Ok(r) => (r, None),
                        Err((r, e)) => (r, Some(format!("line {}: {e}", n + 1))),
                    });
                }
            }
            Split::Array => match parsed.take(&f.body) {
                Err(e) => records.push((Record::from_bytes(f.body.clone()), Some(e))),
                Ok(v) => match json_pointer(&v, &self.cfg.pointer) {
                    Some(Value::Array(items)) => {
                        records.extend(items.iter().enumerate().map(|(i, item)| {
                            // Encoded once here: the size is known and the content is ready.
                            let content = encode_json(item);
                            if content.len() > max_record {
                                oversized(&content, &format!("element {}", i + 1))
                            } else {
                                (Record::from_parts(content.into(), item.clone()), None)
                            }
                        }));
                    }
                    _ => records.push((
                        Record::from_bytes(f.body.clone()),
                        Some(format!(
                            "no JSON array at `{}` in the body",
                            self.cfg.pointer
                        )),
                    )),
                },
            },
        }
        for (r, error) in records {
            let mut r = r.with_attributes(attrs.clone());
            if let Some(e) = error {
                pending.fail(r, &e);
                continue;
            }
            if let (Some(key), Some(seen)) = (&self.dedupe, st.seen.as_mut()) {
                let k = match r.value() {
                    Ok(v) => key.eval(v, &attrs).map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                match k {
                    Ok(Value::Null) => {}
                    Ok(k) => {
                        if !seen.insert(hash64(&encode_json(&k))) {
                            st.counters.duplicates += 1;
                            continue;
                        }
                    }
                    Err(e) => {
                        pending.fail(r, &format!("dedupe key: {e}"));
                        continue;
                    }
                }
            }
            pending.push(PortId::DEFAULT, r);
        }
        next
    }

    /// One poll: every page, each emitted as one batch.
    async fn poll(
        &self,
        st: &mut State,
        out: &mut Emitter,
        pending: &mut Output,
        metrics: &NodeMetrics,
        shutdown: &CancellationToken,
    ) -> Result<Cycle, ProcessorError> {
        st.counters.polls += 1;
        let mut url = self.url.clone();
        let mut visited: HashSet<Url> = HashSet::new();
        for _ in 0..self.cfg.max_pages {
            visited.insert(url.clone());
            let fetched = loop {
                st.counters.requests += 1;
                let memo = st.memos.get(&url).cloned();
                let attempt = tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => return Ok(Cycle::Stopped),
                    a = self.fetch(&url, memo.as_ref()) => a,
                };
                match attempt {
                    Attempt::Ok(f) => {
                        if st.failures > 0 {
                            tracing::info!(
                                node = %self.node,
                                url = %redact(url.as_str()),
                                failed_attempts = st.failures,
                                "the endpoint answers again"
                            );
                        }
                        st.failures = 0;
                        st.backoff = BACKOFF_START.min(self.cfg.max_backoff);
                        st.client_backoff = self.cfg.interval;
                        break f;
                    }
                    Attempt::Retry { error, after } => {
                        st.failures += 1;
                        st.counters.retries += 1;
                        if st.failures == 1 {
                            // One line per burst of failures; the next one on recovery.
                            tracing::warn!(
                                node = %self.node,
                                url = %redact(url.as_str()),
                                %error,
                                max_backoff = ?self.cfg.max_backoff,
                                "request failed; retrying with backoff"
                            );
                        }
                        // The server's `Retry-After` when it asks for longer than the backoff,
                        // up to `max_backoff`.
                        let wait = after
                            .map_or(st.backoff, |a| a.min(self.cfg.max_backoff).max(st.backoff));
                        st.backoff = (st.backoff * 2).min(self.cfg.max_backoff);
                        st.publish(metrics);
                        tokio::select! {
                            biased;
                            _ = shutdown.cancelled() => return Ok(Cycle::Stopped),
                            _ = tokio::time::sleep(wait) => {}
                        }
                    }
                    Attempt::Client(error) => {
                        st.failures += 1;
                        st.counters.client_errors += 1;
                        if st.failures == 1 {
                            tracing::warn!(
                                node = %self.node,
                                url = %redact(url.as_str()),
                                %error,
                                "request refused; not retried before the next poll"
                            );
                        }
                        return Ok(Cycle::ClientError);
                    }
                }
            };
            let next = self.handle(&url, fetched, st, pending);
            let made = pending.port(PortId::DEFAULT).len() + pending.port(PortId::FAILURE).len();
            metrics.add_received(made as u64);
            // Waits while the flow is full: back-pressure.
            out.flush(pending).await.map_err(ProcessorError::other)?;
            match next {
                Some(n) if n.origin() != self.url.origin() => {
                    // The configured headers may hold secrets: they go to `url`'s origin only.
                    st.counters.offsite_pages += 1;
                    if !st.offsite {
                        tracing::warn!(
                            node = %self.node,
                            url = %redact(url.as_str()),
                            next = %n.origin().ascii_serialization(),
                            "the next page is on another origin (scheme, host or port); not \
                             following it"
                        );
                    }
                    st.offsite = true;
                    return Ok(Cycle::Done);
                }
                Some(n) if !visited.contains(&n) => url = n,
                _ => break,
            }
        }
        st.offsite = false;
        Ok(Cycle::Done)
    }
}

/// The response body parsed as JSON, at most once.
#[derive(Default)]
struct Parsed(Option<Result<Value, String>>);

impl Parsed {
    fn parse(&mut self, body: &Bytes) -> &Result<Value, String> {
        self.0.get_or_insert_with(|| {
            serde_json::from_slice::<Value>(body)
                .map_err(|e| format!("content is not valid JSON: {e}"))
        })
    }

    fn get(&mut self, body: &Bytes) -> Option<&Value> {
        self.parse(body).as_ref().ok()
    }

    fn take(&mut self, body: &Bytes) -> Result<Value, String> {
        self.parse(body);
        self.0.take().unwrap_or_else(|| Err("no body".into()))
    }
}

/// An error and its causes, on one line (reqwest's top-level message says little).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(c) = source {
        s.push_str(": ");
        s.push_str(&c.to_string());
        source = c.source();
    }
    s
}

/// The next tick at or after now, skipping the ones missed (never queued up).
fn after_missed(next: Instant, interval: Duration, skipped: &mut u64) -> Instant {
    let now = Instant::now();
    if next > now {
        return next;
    }
    let behind = (now - next).as_nanos();
    let step = interval.as_nanos().max(1);
    let missed = behind / step + 1;
    *skipped += u64::try_from(missed).unwrap_or(u64::MAX);
    let ahead = u64::try_from(missed * step).unwrap_or(u64::MAX);
    next + Duration::from_nanos(ahead)
}

#[async_trait]
impl Source for HttpPoll {
    async fn run(self: Box<Self>, ctx: SourceContext) -> Result<(), ProcessorError> {
        let SourceContext {
            name,
            mut out,
            shutdown,
            metrics,
        } = ctx;
        let mut pending = Output::new(name, out.port_count());
        let mut st = State {
            memos: HashMap::new(),
            memo_order: VecDeque::new(),
            max_memos: self.cfg.max_pages.saturating_mul(2).max(16),
            seen: self
                .cfg
                .dedupe
                .as_ref()
                .map(|d| BoundedSet::new(d.max_keys)),
            failures: 0,
            offsite: false,
            backoff: BACKOFF_START.min(self.cfg.max_backoff),
            client_backoff: self.cfg.interval,
            counters: Counters::default(),
        };
        let mut tick = Instant::now();
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep_until(tick) => {}
            }
            let started = Instant::now();
            let cycle = self
                .poll(&mut st, &mut out, &mut pending, &metrics, &shutdown)
                .await?;
            tick = match cycle {
                Cycle::Stopped => break,
                Cycle::Done => after_missed(
                    started + self.cfg.interval,
                    self.cfg.interval,
                    &mut st.counters.skipped_ticks,
                ),
                Cycle::ClientError => {
                    let wait = st.client_backoff;
                    st.client_backoff = (wait * 2).min(self.cfg.max_backoff.max(self.cfg.interval));
                    started + wait
                }
            };
            st.publish(&metrics);
        }
        st.publish(&metrics);
        Ok(())
    }
}
