//! `http_poll` against a test server this suite starts on 127.0.0.1 (pages, ETags, errors, slow
//! answers), and `http_server` with a real HTTP client.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::Uri;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use flow_core::ack::AckStatus;
use flow_core::processor::{ProcessorConfig, Source, SourceContext};
use flow_core::record::{JsonView, Record, finish_all};
use flow_core::runtime::CancellationToken;
use flow_core::runtime::edge::{EdgeReceiver, WhenFull, edge};
use flow_core::runtime::emit::Emitter;
use flow_core::runtime::metrics::NodeMetrics;
use serde_json::json;

use super::server::HttpServer;
use super::*;
use crate::testing::{self, NAME};

/// Wait (real time, generous deadline) until `cond` holds.
async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn content(r: &Record) -> String {
    let mut r = r.clone();
    String::from_utf8_lossy(r.content()).into_owned()
}

fn ids(records: &mut [Record]) -> Vec<i64> {
    records
        .iter_mut()
        .map(|r| {
            r.value()
                .ok()
                .and_then(|v| v.as_object().and_then(|o| o.get("id")).cloned())
                .and_then(|v| v.as_integer())
                .unwrap_or(-1)
        })
        .collect()
}

fn status(metrics: &NodeMetrics, key: &str) -> u64 {
    metrics.snapshot().status[key].as_u64().unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// A REST API for the poller.

#[derive(Default)]
struct Api {
    items: Mutex<Vec<serde_json::Value>>,
    /// Every request.
    hits: AtomicU64,
    /// `200` answers.
    ok: AtomicU64,
    /// `304` answers.
    not_modified: AtomicU64,
    /// Answer this many next requests with `500`.
    fail_next: AtomicU64,
    /// Answer this many next requests only after 2 s.
    slow_next: AtomicU64,
    /// With `fail_next`: the `Retry-After` (seconds) of the `500`s, when not 0.
    retry_after: AtomicU64,
    /// Requests to `/pages` that carried an `Authorization` header.
    authorized: AtomicU64,
}

fn take_one(a: &AtomicU64) -> bool {
    a.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

/// The items as a JSON array; with `etag`, an `ETag` and `304`s for `If-None-Match`.
async fn items(api: &Api, headers: &HeaderMap, etag: bool) -> Response {
    api.hits.fetch_add(1, Ordering::SeqCst);
    if take_one(&api.fail_next) {
        let mut r = (StatusCode::INTERNAL_SERVER_ERROR, "boom").into_response();
        let after = api.retry_after.load(Ordering::SeqCst);
        if after > 0 {
            r.headers_mut().insert(
                header::RETRY_AFTER,
                after.to_string().parse().expect("value"),
            );
        }
        return r;
    }
    if take_one(&api.slow_next) {
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let body = serde_json::to_string(&*api.items.lock().expect("lock")).expect("json");
    if !etag {
        api.ok.fetch_add(1, Ordering::SeqCst);
        return body.into_response();
    }
    let tag = format!("\"{:x}\"", hash64(body.as_bytes()));
    if headers
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == tag.as_bytes())
    {
        api.not_modified.fetch_add(1, Ordering::SeqCst);
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, tag)]).into_response();
    }
    api.ok.fetch_add(1, Ordering::SeqCst);
    ([(header::ETAG, tag)], body).into_response()
}

/// A query parameter of a request.
fn param(uri: &Uri, name: &str) -> Option<String> {
    uri.query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then(|| v.to_owned())
    })
}

/// Three pages of two items, linked by `Link: <...>; rel="next"` (relative, then absolute).
async fn pages(State(api): State<Arc<Api>>, headers: HeaderMap, uri: Uri) -> Response {
    api.hits.fetch_add(1, Ordering::SeqCst);
    if headers.contains_key(header::AUTHORIZATION) {
        api.authorized.fetch_add(1, Ordering::SeqCst);
    }
    let page: u64 = param(&uri, "page")
        .and_then(|p| p.parse().ok())
        .unwrap_or(1);
    let body = json!([{ "id": page * 10 + 1 }, { "id": page * 10 + 2 }]).to_string();
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1")
        .to_owned();
    let link = match page {
        // `?elsewhere=HOST:PORT`: page 2 is on another server.
        1 if param(&uri, "elsewhere").is_some() => format!(
            "<http://{}/pages?page=2>; rel=\"next\"",
            param(&uri, "elsewhere").unwrap_or_default()
        ),
        1 => "</pages?page=2>; rel=\"next\", </pages?page=3>; rel=\"last\"".to_owned(),
        2 => format!(
            "<http://{host}/pages?page=1>; rel=\"prev\", <http://{host}/pages?page=3>; rel=\"next\""
        ),
        _ => "</pages?page=1>; rel=\"first\"".to_owned(),
    };
    ([(header::LINK, link)], body).into_response()
}

/// Three pages behind a cursor: `{"data": [...], "next": "c2" | null}`.
async fn cursor(State(api): State<Arc<Api>>, uri: Uri) -> Response {
    api.hits.fetch_add(1, Ordering::SeqCst);
    let (page, next) = match param(&uri, "cursor").as_deref() {
        None => (1, json!("c2")),
        Some("c2") => (2, json!("c3")),
        Some("c3") => (3, serde_json::Value::Null),
        Some(_) => return (StatusCode::BAD_REQUEST, "bad cursor").into_response(),
    };
    json!({ "data": [{ "id": page * 10 + 1 }, { "id": page * 10 + 2 }], "next": next })
        .to_string()
        .into_response()
}

async fn start_api(api: Arc<Api>) -> SocketAddr {
    let app = Router::new()
        .route(
            "/items",
            get(
                |State(api): State<Arc<Api>>, headers: HeaderMap| async move {
                    items(&api, &headers, true).await
                },
            ),
        )
        .route(
            "/plain",
            get(
                |State(api): State<Arc<Api>>, headers: HeaderMap| async move {
                    items(&api, &headers, false).await
                },
            ),
        )
        .route("/pages", get(pages))
        .route("/cursor", get(cursor))
        .route(
            "/missing",
            get(|State(api): State<Arc<Api>>| async move {
                api.hits.fetch_add(1, Ordering::SeqCst);
                (StatusCode::NOT_FOUND, "no such thing")
            }),
        )
        .with_state(api);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

fn api_with(ids: &[i64]) -> Arc<Api> {
    let api = Arc::new(Api::default());
    *api.items.lock().expect("lock") = ids.iter().map(|i| json!({ "id": i })).collect();
    api
}

/// A running poller: its records go to an unbounded edge.
struct Poller {
    task: tokio::task::JoinHandle<Result<(), flow_core::processor::ProcessorError>>,
    out: EdgeReceiver,
    failures: EdgeReceiver,
    metrics: Arc<NodeMetrics>,
    shutdown: CancellationToken,
}

impl Poller {
    fn start(cfg: serde_json::Value) -> Poller {
        let cfg: HttpPollConfig = testing::config(cfg);
        let src = testing::source(&cfg);
        let mut h = testing::source_ctx(1);
        let task = tokio::spawn(src.run(h.ctx));
        let out = h.ports.pop().expect("out");
        let failures = h.ports.pop().expect("failure");
        Poller {
            task,
            out,
            failures,
            metrics: h.metrics,
            shutdown: h.shutdown,
        }
    }

    /// Records emitted so far (failures included).
    fn received(&self) -> u64 {
        self.metrics.snapshot().received
    }

    /// Stop, and every record it emitted, and every failure.
    async fn stop(mut self) -> (Vec<Record>, Vec<Record>, Arc<NodeMetrics>) {
        self.shutdown.cancel();
        self.task
            .await
            .expect("joined")
            .expect("the poller ends cleanly");
        let out = testing::records(&mut self.out).await;
        let failed = testing::records(&mut self.failures).await;
        (out, failed, self.metrics)
    }
}

#[tokio::test]
async fn the_same_page_twice_yields_nothing_new() {
    let api = api_with(&[1, 2]);
    let addr = start_api(api.clone()).await;
    let p = Poller::start(json!({
        "url": format!("http://{addr}/items"),
        "interval": "20ms",
        "records": "array",
    }));
    wait_for("two 304s", || api.not_modified.load(Ordering::SeqCst) >= 2).await;
    // The page changes: its new version is emitted once, then 304s again.
    api.items.lock().expect("lock").push(json!({ "id": 3 }));
    wait_for("the changed page", || api.ok.load(Ordering::SeqCst) >= 2).await;
    let seen = api.not_modified.load(Ordering::SeqCst);
    wait_for("304s for the new version", || {
        api.not_modified.load(Ordering::SeqCst) >= seen + 2
    })
    .await;
    let (mut out, failed, metrics) = p.stop().await;
    assert_eq!(api.ok.load(Ordering::SeqCst), 2, "only two full answers");
    assert_eq!(ids(&mut out), [1, 2, 1, 2, 3]);
    assert!(failed.is_empty());
    assert_eq!(out[0].attributes()["http.status"], "200");
    assert_eq!(
        out[0].attributes()["http.url"],
        format!("http://{addr}/items")
    );
    assert!(status(&metrics, "not_modified") >= 3);
    assert_eq!(metrics.snapshot().received, 5);
}

#[tokio::test]
async fn a_dedupe_key_emits_each_id_once_without_validators() {
    let api = api_with(&[1, 2]);
    let addr = start_api(api.clone()).await;
    let p = Poller::start(json!({
        "url": format!("http://{addr}/plain"),
        "interval": "20ms",
        "records": "array",
        "dedupe": { "key": ".id", "max_keys": 100 },
    }));
    wait_for("the same body twice", || api.ok.load(Ordering::SeqCst) >= 2).await;
    *api.items.lock().expect("lock") = vec![json!({ "id": 2 }), json!({ "id": 3 })];
    let seen = api.ok.load(Ordering::SeqCst);
    wait_for("the new body twice", || {
        api.ok.load(Ordering::SeqCst) >= seen + 2
    })
    .await;
    // The poller's own count: a response still in flight when it stops is never handled.
    wait_for("the poller to have skipped both repeated bodies", || {
        status(&p.metrics, "unchanged") >= 2 && status(&p.metrics, "duplicates") >= 1
    })
    .await;
    let (mut out, failed, metrics) = p.stop().await;
    assert_eq!(ids(&mut out), [1, 2, 3]);
    assert!(failed.is_empty());
    assert!(
        status(&metrics, "unchanged") >= 2,
        "identical bodies skipped"
    );
    assert_eq!(status(&metrics, "duplicates"), 1, "id 2 came twice");
    assert_eq!(status(&metrics, "keys"), 3);
}

#[tokio::test]
async fn link_pagination_follows_three_pages() {
    let api = Arc::new(Api::default());
    let addr = start_api(api.clone()).await;
    let p = Poller::start(json!({
        "url": format!("http://{addr}/pages"),
        "interval": "1h",
        "records": "array",
        "pagination": "link",
    }));
    wait_for("three pages", || p.received() >= 6).await;
    let (mut out, _, metrics) = p.stop().await;
    assert_eq!(ids(&mut out), [11, 12, 21, 22, 31, 32]);
    let urls: Vec<&str> = out
        .iter()
        .map(|r| r.attributes()["http.url"].as_str())
        .collect();
    assert!(urls[0].ends_with("/pages"), "{urls:?}");
    assert!(urls[2].ends_with("/pages?page=2"), "{urls:?}");
    assert!(urls[5].ends_with("/pages?page=3"), "{urls:?}");
    assert_eq!(api.hits.load(Ordering::SeqCst), 3, "one poll, three pages");
    assert_eq!(status(&metrics, "polls"), 1);
}

#[tokio::test]
async fn a_next_page_on_another_origin_is_not_fetched() {
    let api = Arc::new(Api::default());
    let addr = start_api(api.clone()).await;
    // Another port of the same host is another origin.
    let other = Arc::new(Api::default());
    let other_addr = start_api(other.clone()).await;
    let p = Poller::start(json!({
        "url": format!("http://{addr}/pages?elsewhere={other_addr}"),
        "headers": { "Authorization": "Bearer s3cret" },
        "interval": "1h",
        "records": "array",
        "pagination": "link",
    }));
    wait_for("page 1 and the poll's end", || {
        p.received() >= 2
            && status(&p.metrics, "polls") >= 1
            && status(&p.metrics, "offsite_pages") >= 1
    })
    .await;
    let (mut out, failed, metrics) = p.stop().await;
    assert_eq!(ids(&mut out), [11, 12], "page 1's records only");
    assert!(failed.is_empty());
    assert_eq!(api.hits.load(Ordering::SeqCst), 1);
    assert_eq!(
        api.authorized.load(Ordering::SeqCst),
        1,
        "the headers go to `url`"
    );
    assert_eq!(
        other.hits.load(Ordering::SeqCst),
        0,
        "nothing sent elsewhere"
    );
    assert_eq!(other.authorized.load(Ordering::SeqCst), 0);
    assert_eq!(status(&metrics, "offsite_pages"), 1);
    assert_eq!(status(&metrics, "polls"), 1);
}

#[tokio::test]
async fn cursor_pagination_follows_three_pages() {
    let api = Arc::new(Api::default());
    let addr = start_api(api.clone()).await;
    let p = Poller::start(json!({
        "url": format!("http://{addr}/cursor?limit=2"),
        "interval": "1h",
        "records": "array",
        "pointer": "/data",
        "pagination": { "cursor": { "value": ".next", "param": "cursor" } },
    }));
    wait_for("three pages", || p.received() >= 6).await;
    let (mut out, failed, _) = p.stop().await;
    assert!(
        failed.is_empty(),
        "{:?}",
        failed.iter().map(content).collect::<Vec<_>>()
    );
    assert_eq!(ids(&mut out), [11, 12, 21, 22, 31, 32]);
    assert!(out[5].attributes()["http.url"].ends_with("/cursor?limit=2&cursor=c3"));
}

#[tokio::test]
async fn a_server_error_is_retried_until_the_endpoint_recovers() {
    let api = api_with(&[1, 2]);
    api.fail_next.store(2, Ordering::SeqCst);
    let addr = start_api(api.clone()).await;
    let p = Poller::start(json!({
        "url": format!("http://{addr}/items"),
        "interval": "1h",
        "records": "array",
        "max_backoff": "50ms",
    }));
    wait_for("the records", || p.received() >= 2).await;
    let (mut out, _, metrics) = p.stop().await;
    assert_eq!(
        api.hits.load(Ordering::SeqCst),
        3,
        "two 500s, then the page"
    );
    assert_eq!(ids(&mut out), [1, 2]);
    assert_eq!(status(&metrics, "retries"), 2);
}

#[tokio::test]
async fn retry_after_is_capped_at_max_backoff() {
    let api = api_with(&[1, 2]);
    api.fail_next.store(1, Ordering::SeqCst);
    // A day: honoured as is, the records would not come before the deadline.
    api.retry_after.store(86_400, Ordering::SeqCst);
    let addr = start_api(api.clone()).await;
    let p = Poller::start(json!({
        "url": format!("http://{addr}/items"),
        "interval": "1h",
        "records": "array",
        "max_backoff": "100ms",
    }));
    wait_for("the records", || p.received() >= 2).await;
    let (mut out, _, metrics) = p.stop().await;
    assert_eq!(ids(&mut out), [1, 2]);
    assert_eq!(api.hits.load(Ordering::SeqCst), 2, "one 500, then the page");
    assert_eq!(status(&metrics, "retries"), 1);
}

#[tokio::test]
async fn a_slow_answer_times_out_and_is_retried() {
    let api = api_with(&[1, 2]);
    api.slow_next.store(1, Ordering::SeqCst);
    let addr = start_api(api.clone()).await;
    let p = Poller::start(json!({
        "url": format!("http://{addr}/items"),
        "interval": "1h",
        "timeout": "200ms",
        "records": "array",
        "max_backoff": "50ms",
    }));
    wait_for("the records", || p.received() >= 2).await;
    let (mut out, _, metrics) = p.stop().await;
    assert_eq!(ids(&mut out), [1, 2], "emitted once");
    assert!(status(&metrics, "retries") >= 1);
}

#[tokio::test]
async fn a_client_error_is_not_hammered() {
    let api = Arc::new(Api::default());
    let addr = start_api(api.clone()).await;
    let p = Poller::start(json!({
        "url": format!("http://{addr}/missing"),
        "interval": "10ms",
        "max_backoff": "200ms",
    }));
    wait_for("a second attempt", || api.hits.load(Ordering::SeqCst) >= 2).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (out, _, metrics) = p.stop().await;
    assert!(out.is_empty());
    // At a 10ms interval, a second of polling is ~100 requests; with the doubling wait it is
    // at most a dozen.
    let hits = api.hits.load(Ordering::SeqCst);
    assert!(hits <= 15, "{hits} requests in about a second");
    // Every answer counted, but one request may have been in flight when the poller stopped.
    let client_errors = status(&metrics, "client_errors");
    assert!(
        client_errors >= 1 && client_errors <= hits && hits - client_errors <= 1,
        "{client_errors} client errors for {hits} requests"
    );
}

#[tokio::test]
async fn a_body_that_is_not_what_was_configured_goes_to_failure() {
    let api = Arc::new(Api::default());
    let addr = start_api(api.clone()).await;
    // `/cursor` answers an object, not an array.
    let p = Poller::start(json!({
        "url": format!("http://{addr}/cursor"),
        "interval": "1h",
        "records": "array",
    }));
    wait_for("the failure", || p.received() >= 1).await;
    let (out, mut failed) = {
        let (o, f, _) = p.stop().await;
        (o, f)
    };
    assert!(out.is_empty());
    assert_eq!(failed.len(), 1);
    assert!(failed[0].attributes()["error.message"].contains("no JSON array"));
    assert_eq!(failed[0].attributes()["http.status"], "200");
    assert!(failed[0].value().is_ok());
}

/// A static file served as Python's `http.server` (`/python`) and nginx (`/nginx`) serve one:
/// `Last-Modified` is the file's modification time and `Date` the server's clock, both in whole
/// seconds (a clock the test sets here). `If-Modified-Since` is answered `304` when the file is
/// not newer; `/nginx` also sends an `ETag` made of the modification time and the size, and
/// answers `304` to a matching `If-None-Match`.
#[derive(Default)]
struct StaticFile {
    clock: AtomicU64,
    mtime: AtomicU64,
    body: Mutex<String>,
    not_modified: AtomicU64,
}

impl StaticFile {
    /// Rewrite the file now (by the server's clock).
    fn write(&self, body: &str) {
        *self.body.lock().expect("lock") = body.to_owned();
        self.mtime
            .store(self.clock.load(Ordering::SeqCst), Ordering::SeqCst);
    }
}

async fn static_file(State(f): State<Arc<StaticFile>>, headers: HeaderMap, uri: Uri) -> Response {
    let at = |secs: u64| std::time::UNIX_EPOCH + Duration::from_secs(secs);
    let secs = |v: &axum::http::HeaderValue| {
        let t = httpdate::parse_http_date(v.to_str().ok()?).ok()?;
        t.duration_since(std::time::UNIX_EPOCH)
            .ok()
            .map(|d| d.as_secs())
    };
    let mtime = f.mtime.load(Ordering::SeqCst);
    let body = f.body.lock().expect("lock").clone();
    let tag = format!("\"{mtime:x}-{:x}\"", body.len());
    let nginx = uri.path() == "/nginx";
    let fresh = match headers.get(header::IF_NONE_MATCH) {
        Some(inm) if nginx => inm.as_bytes() == tag.as_bytes(),
        _ => headers
            .get(header::IF_MODIFIED_SINCE)
            .and_then(secs)
            .is_some_and(|since| mtime <= since),
    };
    let mut r = if fresh {
        f.not_modified.fetch_add(1, Ordering::SeqCst);
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        body.into_response()
    };
    let h = r.headers_mut();
    let date = httpdate::fmt_http_date(at(f.clock.load(Ordering::SeqCst)));
    h.insert(header::DATE, date.parse().expect("date"));
    let modified = httpdate::fmt_http_date(at(mtime));
    h.insert(header::LAST_MODIFIED, modified.parse().expect("date"));
    if nginx {
        h.insert(header::ETAG, tag.parse().expect("etag"));
    }
    r
}

/// The contents of the next batch a poller emits (within 20 s).
async fn next_batch(out: &mut EdgeReceiver) -> Vec<String> {
    let batch = tokio::time::timeout(Duration::from_secs(20), out.recv())
        .await
        .expect("a batch within 20 s")
        .expect("the poller runs");
    batch.iter().map(content).collect()
}

#[tokio::test]
async fn a_change_within_the_second_of_the_last_answer_is_not_missed() {
    for path in ["/python", "/nginx"] {
        let file = Arc::new(StaticFile::default());
        file.clock.store(1_700_000_000, Ordering::SeqCst);
        file.write(r#"{"v":1}"#);
        let app = Router::new()
            .route("/python", get(static_file))
            .route("/nginx", get(static_file))
            .with_state(file.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        let mut p = Poller::start(json!({
            "url": format!("http://{addr}{path}"),
            "interval": "20ms",
        }));
        assert_eq!(next_batch(&mut p.out).await, [r#"{"v":1}"#], "{path}");
        // Rewritten within the second of that answer: same Last-Modified (and, for nginx,
        // the same ETag, the size being the same).
        file.write(r#"{"v":2}"#);
        assert_eq!(next_batch(&mut p.out).await, [r#"{"v":2}"#], "{path}");
        // Two seconds later the validators are trusted again: polls are answered 304.
        file.clock.fetch_add(2, Ordering::SeqCst);
        wait_for("304s", || file.not_modified.load(Ordering::SeqCst) >= 2).await;
        file.write(r#"{"v":3}"#);
        assert_eq!(next_batch(&mut p.out).await, [r#"{"v":3}"#], "{path}");
        let (out, failed, metrics) = p.stop().await;
        assert!(out.is_empty() && failed.is_empty(), "each version once");
        assert!(status(&metrics, "not_modified") >= 2);
    }
}

/// Kills the child process when dropped.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn every_version_of_a_file_python_serves_is_emitted() {
    // A real `python3 -m http.server`: it sends Last-Modified and answers If-Modified-Since.
    let python = std::process::Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !python {
        assert!(
            std::env::var_os("CI").is_none(),
            "python3 is missing but CI is set"
        );
        eprintln!("skipped: no python3");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |v: u32| {
        let tmp = dir.path().join("tmp");
        std::fs::write(&tmp, format!(r#"{{"v":{v}}}"#)).expect("written");
        std::fs::rename(&tmp, dir.path().join("data.json")).expect("renamed");
    };
    write(0);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let _server = Child(
        std::process::Command::new("python3")
            .args([
                "-m",
                "http.server",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .arg("--directory")
            .arg(dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("python3 starts"),
    );
    let url = format!("http://127.0.0.1:{port}/data.json");
    let c = client();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while c.get(&url).send().await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "python3 never served"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut p = Poller::start(json!({ "url": url, "interval": "20ms" }));
    // Each version is written as soon as the previous one is emitted: mostly within the same
    // second as the answer that carried it.
    for v in 0..8 {
        if v > 0 {
            write(v);
        }
        assert_eq!(next_batch(&mut p.out).await, [format!(r#"{{"v":{v}}}"#)]);
    }
    let (out, failed, _) = p.stop().await;
    assert!(out.is_empty() && failed.is_empty(), "each version once");
}

#[tokio::test]
async fn records_over_max_record_size_go_to_failure_with_their_start() {
    let api = api_with(&[1, 22222, 3]);
    let addr = start_api(api.clone()).await;
    // `[{"id":1},{"id":22222},{"id":3}]`: the middle element is 12 bytes, the body 32.
    let p = Poller::start(json!({
        "url": format!("http://{addr}/plain"),
        "interval": "1h",
        "records": "array",
        "max_record_size": "10B",
    }));
    wait_for("three records", || p.received() >= 3).await;
    let (mut out, failed, _) = p.stop().await;
    assert_eq!(ids(&mut out), [1, 3]);
    assert_eq!(failed.len(), 1);
    assert_eq!(
        failed[0].attributes()["error.message"],
        "element 2 is 12 bytes, over max_record_size (10 B); only its first 1024 bytes are kept"
    );
    assert_eq!(content(&failed[0]), r#"{"id":22222}"#);
    let p = Poller::start(json!({
        "url": format!("http://{addr}/plain"),
        "interval": "1h",
        "max_record_size": "10B",
    }));
    wait_for("the body", || p.received() >= 1).await;
    let (out, failed, _) = p.stop().await;
    assert!(out.is_empty());
    assert!(
        failed[0].attributes()["error.message"].starts_with("the body is 32 bytes, over"),
        "{}",
        failed[0].attributes()["error.message"]
    );
}

#[test]
fn link_headers_are_parsed() {
    let mut h = HeaderMap::new();
    h.append(
        header::LINK,
        "<https://a.example/x?page=1>; rel=\"prev\", <https://a.example/x?page=3>; rel=\"next last\""
            .parse()
            .expect("header"),
    );
    assert_eq!(
        poll::link_next(&h).as_deref(),
        Some("https://a.example/x?page=3")
    );
    let mut h = HeaderMap::new();
    h.append(
        header::LINK,
        "</x?page=1>; rel=first".parse().expect("header"),
    );
    assert_eq!(poll::link_next(&h), None);
}

#[test]
fn poll_configs_are_validated() {
    let bad: HttpPollConfig = testing::config(json!({
        "url": "ftp://example.com",
        "interval": "0s",
        "pointer": "items",
        "headers": { "Authorization": "Bearer sec\nret" },
        "dedupe": { "key": ".id +" },
        "pagination": { "cursor": { "value": ".next", "param": "" } },
    }));
    let errors = bad.validate();
    let paths: Vec<String> = errors.iter().map(|e| e.path.join(".")).collect();
    for p in [
        "url",
        "interval",
        "pointer",
        "headers.Authorization",
        "dedupe.key",
        "pagination.cursor.param",
    ] {
        assert!(paths.iter().any(|x| x == p), "{p} not in {paths:?}");
    }
    assert!(
        errors.iter().all(|e| !e.message.contains("sec")),
        "a header value is never shown"
    );
    // Durations that would overflow a deadline (or make no sense) are refused.
    let long: HttpPollConfig = testing::config(json!({
        "url": "http://127.0.0.1:1/x",
        "interval": "2days",
        "timeout": "2h",
        "max_backoff": "1000000years",
    }));
    let errors = long.validate();
    let paths: Vec<String> = errors.iter().map(|e| e.path.join(".")).collect();
    assert_eq!(paths, ["interval", "timeout", "max_backoff"]);
    assert!(
        errors[0].message.contains("at most 1 day"),
        "{}",
        errors[0].message
    );
    let fine: HttpPollConfig = testing::config(json!({
        "url": "http://127.0.0.1:1/x",
        "interval": "1day",
        "timeout": "1h",
        "max_backoff": "1day",
    }));
    assert!(fine.validate().is_empty());
}

#[test]
fn bounded_set_forgets_the_oldest() {
    let mut s = BoundedSet::new(2);
    assert!(s.insert(1));
    assert!(s.insert(2));
    assert!(!s.insert(1));
    assert!(s.insert(3));
    assert_eq!(s.len(), 2);
    assert!(s.insert(1), "1 was forgotten");
}

// ---------------------------------------------------------------------------------------------
// The ingest server.

fn client() -> reqwest::Client {
    crate::http_client::install_crypto_provider();
    reqwest::Client::builder().build().expect("client")
}

/// A running ingest source whose `out` edge holds `max_records`.
struct Ingest {
    url: String,
    base: String,
    task: tokio::task::JoinHandle<Result<(), flow_core::processor::ProcessorError>>,
    out: EdgeReceiver,
    metrics: Arc<NodeMetrics>,
    shutdown: CancellationToken,
}

impl Ingest {
    fn start(mut cfg: serde_json::Value, max_records: usize) -> Ingest {
        cfg["listen"] = json!("127.0.0.1:0");
        let cfg: HttpServerConfig = testing::config(cfg);
        let server = HttpServer::bind(&cfg, NAME, JsonView::Lazy).expect("binds");
        let addr = server.local_addr();
        let metrics = Arc::new(NodeMetrics::default());
        let (f_tx, _, _) = edge(usize::MAX, usize::MAX, WhenFull::Block);
        let (tx, rx, _) = edge(max_records, usize::MAX, WhenFull::Block);
        let shutdown = CancellationToken::new();
        let ctx = SourceContext {
            name: NAME.into(),
            out: Emitter::new(
                NAME.into(),
                vec![("failure".into(), vec![f_tx]), ("out".into(), vec![tx])],
                metrics.clone(),
            ),
            shutdown: shutdown.clone(),
            metrics: metrics.clone(),
        };
        let task = tokio::spawn(Box::new(server).run(ctx));
        Ingest {
            url: format!("http://{addr}{}", cfg.path),
            base: format!("http://{addr}"),
            task,
            out: rx,
            metrics,
            shutdown,
        }
    }

    async fn stop(mut self) -> (Vec<Record>, Arc<NodeMetrics>) {
        self.shutdown.cancel();
        self.task
            .await
            .expect("joined")
            .expect("the server ends cleanly");
        (testing::records(&mut self.out).await, self.metrics)
    }
}

async fn post(c: &reqwest::Client, url: &str, body: &str) -> (u16, String) {
    let r = c
        .post(url)
        .body(body.to_owned())
        .send()
        .await
        .expect("sent");
    let status = r.status().as_u16();
    (status, r.text().await.expect("body"))
}

#[tokio::test]
async fn ingest_takes_an_object_an_array_and_json_lines() {
    let ing = Ingest::start(json!({ "path": "/in" }), usize::MAX);
    let c = client();
    assert_eq!(
        post(&c, &ing.url, r#"{"a":1}"#).await,
        (202, r#"{"accepted":1}"#.to_owned())
    );
    assert_eq!(post(&c, &ing.url, r#"[{"a":2}, {"a": 3}]"#).await.0, 202);
    assert_eq!(
        post(&c, &ing.url, "{\"a\":4}\r\n\n{\"a\":5}\n").await,
        (202, r#"{"accepted":2}"#.to_owned())
    );
    assert_eq!(post(&c, &ing.url, "{\n  \"a\": 6\n}\n").await.0, 202);
    let health = c
        .get(format!("{}/health", ing.base))
        .send()
        .await
        .expect("health");
    assert_eq!(health.status().as_u16(), 200);
    let get = c.get(&ing.url).send().await.expect("get");
    assert_eq!(get.status().as_u16(), 405, "only POST ingests");
    let (out, metrics) = ing.stop().await;
    let got: Vec<String> = out.iter().map(content).collect();
    assert_eq!(
        got,
        [
            r#"{"a":1}"#,
            r#"{"a":2}"#,
            r#"{"a": 3}"#,
            r#"{"a":4}"#,
            r#"{"a":5}"#,
            "{\n  \"a\": 6\n}\n"
        ]
    );
    assert_eq!(metrics.snapshot().received, 6);
    assert_eq!(status(&metrics, "accepted_requests"), 4);
}

#[tokio::test]
async fn malformed_and_oversized_bodies_are_rejected_and_nothing_is_ingested() {
    let ing = Ingest::start(json!({ "max_body": "1KiB" }), usize::MAX);
    let c = client();
    let (code, msg) = post(&c, &ing.url, "{\"a\":1}\n{\"a\":2}\n{\"a\":\n").await;
    assert_eq!(code, 400);
    assert!(msg.contains("line 3"), "{msg}");
    assert_eq!(post(&c, &ing.url, r#"[{"a":1}, {"a":2}"#).await.0, 400);
    assert_eq!(post(&c, &ing.url, r#"{"a":1} trailing"#).await.0, 400);
    assert_eq!(post(&c, &ing.url, "  \n").await.0, 400);
    let big = format!("[{}]", vec![r#"{"a":1}"#; 200].join(","));
    assert_eq!(post(&c, &ing.url, &big).await.0, 413);
    // Without a Content-Length: the limit holds while reading.
    let (code, _) = raw_chunked(&ing.base, "/ingest", &big).await;
    assert_eq!(code, 413);
    assert_eq!(post(&c, &ing.url, r#"{"ok":true}"#).await.0, 202);
    let (out, metrics) = ing.stop().await;
    let got: Vec<String> = out.iter().map(content).collect();
    assert_eq!(got, [r#"{"ok":true}"#], "only the valid body got in");
    assert_eq!(status(&metrics, "rejected_malformed"), 4);
    assert_eq!(status(&metrics, "rejected_too_large"), 2);
}

/// POST with `Transfer-Encoding: chunked` over a plain socket; the status code.
async fn raw_chunked(base: &str, path: &str, body: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let host = base.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(host).await.expect("connect");
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    for chunk in body.as_bytes().chunks(100) {
        req.push_str(&format!(
            "{:x}\r\n{}\r\n",
            chunk.len(),
            String::from_utf8_lossy(chunk)
        ));
    }
    req.push_str("0\r\n\r\n");
    // The server may answer (and close) before it has read everything.
    let _ = s.write_all(req.as_bytes()).await;
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp).await;
    let text = String::from_utf8_lossy(&resp).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, text)
}

#[tokio::test]
async fn a_missing_or_wrong_token_is_refused() {
    let ing = Ingest::start(json!({ "token": "s3cret" }), usize::MAX);
    let c = client();
    let r = c.post(&ing.url).body("{}").send().await.expect("sent");
    assert_eq!(r.status().as_u16(), 401);
    assert_eq!(
        r.headers().get("www-authenticate").map(|v| v.as_bytes()),
        Some(&b"Bearer"[..])
    );
    for auth in ["Bearer wrong", "Basic s3cret", "Bearer s3cre", "s3cret"] {
        let r = c
            .post(&ing.url)
            .header("authorization", auth)
            .body("{}")
            .send()
            .await
            .expect("sent");
        assert_eq!(r.status().as_u16(), 401, "{auth}");
    }
    let r = c
        .post(&ing.url)
        .bearer_auth("s3cret")
        .body(r#"{"n":1}"#)
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status().as_u16(), 202);
    let health = c
        .get(format!("{}/health", ing.base))
        .send()
        .await
        .expect("health");
    assert_eq!(health.status().as_u16(), 200, "health needs no token");
    let (out, metrics) = ing.stop().await;
    assert_eq!(out.iter().map(content).collect::<Vec<_>>(), [r#"{"n":1}"#]);
    assert_eq!(status(&metrics, "unauthorized"), 5);
}

#[tokio::test]
async fn a_slow_sink_makes_ingest_answer_429_and_every_accepted_record_arrives() {
    // The flow holds 10 records, the server queues 20 more; nobody reads yet.
    let mut ing = Ingest::start(json!({ "max_queued": 20, "retry_after": "2s" }), 10);
    let c = client();
    let body = |i: usize| {
        (0..5)
            .map(|j| format!("{{\"n\":{}}}\n", i * 5 + j))
            .collect::<String>()
    };
    let mut accepted = Vec::new();
    let mut refused = 0;
    for i in 0..30 {
        let r = c.post(&ing.url).body(body(i)).send().await.expect("sent");
        match r.status().as_u16() {
            202 => accepted.push(i),
            429 => {
                refused += 1;
                assert_eq!(
                    r.headers().get("retry-after").map(|v| v.as_bytes()),
                    Some(&b"2"[..])
                );
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!(refused > 0, "the full flow refused requests");
    assert!(!accepted.is_empty());
    assert!(
        accepted.len() <= 6,
        "at most 10 + 20 records taken: {accepted:?}"
    );
    // The sink catches up: what was accepted arrives, and new requests are taken again.
    let mut out = std::mem::replace(&mut ing.out, edge(1, 1, WhenFull::Block).1);
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        while let Some(b) = out.recv().await {
            got.extend(b.iter().map(content));
        }
        got
    });
    let mut i = 30;
    loop {
        let r = c.post(&ing.url).body(body(i)).send().await.expect("sent");
        if r.status().as_u16() == 202 {
            accepted.push(i);
            break;
        }
        assert!(i < 10_000, "never accepted again");
        i += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (_, metrics) = ing.stop().await;
    let got = reader.await.expect("reader");
    let want: Vec<String> = accepted
        .iter()
        .flat_map(|i| (0..5).map(move |j| format!("{{\"n\":{}}}", i * 5 + j)))
        .collect();
    assert_eq!(got, want, "every accepted record, in order, once");
    assert_eq!(
        status(&metrics, "rejected_full") as usize,
        refused + (i - 30)
    );
}

#[tokio::test]
async fn ack_delivered_answers_once_the_flow_has_finished_the_records() {
    let mut ing = Ingest::start(json!({ "ack": "delivered" }), usize::MAX);
    let c = client();
    let url = ing.url.clone();
    let c2 = c.clone();
    let pending = tokio::spawn(async move { post(&c2, &url, "{\"a\":1}\n{\"a\":2}\n").await });
    let batch = ing.out.recv().await.expect("a batch");
    assert_eq!(batch.len(), 2);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        !pending.is_finished(),
        "answered before the records were finished"
    );
    finish_all(batch);
    assert_eq!(
        pending.await.expect("joined"),
        (200, r#"{"accepted":2,"status":"delivered"}"#.to_owned())
    );
    // A record reported as failed: the answer says so.
    let url = ing.url.clone();
    let pending = tokio::spawn(async move { post(&c, &url, r#"{"a":3}"#).await });
    let batch = ing.out.recv().await.expect("a batch");
    batch[0].mark(AckStatus::Failed);
    finish_all(batch);
    assert_eq!(
        pending.await.expect("joined"),
        (200, r#"{"accepted":1,"status":"failed"}"#.to_owned())
    );
    ing.stop().await;
}

#[tokio::test]
async fn ack_delivered_answers_503_when_the_flow_stops() {
    let mut ing = Ingest::start(
        json!({ "ack": "delivered", "ack_timeout": "1h", "retry_after": "3s" }),
        usize::MAX,
    );
    let c = client();
    let url = ing.url.clone();
    let pending = tokio::spawn(async move {
        let r = c.post(&url).body(r#"{"a":1}"#).send().await.expect("sent");
        let after = r
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap_or_default().to_owned());
        (r.status().as_u16(), after, r.text().await.expect("body"))
    });
    // The records are in the flow but never finished.
    let batch = ing.out.recv().await.expect("a batch");
    ing.shutdown.cancel();
    let (code, after, body) = tokio::time::timeout(Duration::from_secs(20), pending)
        .await
        .expect("answered long before ack_timeout")
        .expect("joined");
    assert_eq!(code, 503, "{body}");
    assert_eq!(after.as_deref(), Some("3"));
    assert!(body.contains("stopping"), "{body}");
    drop(batch);
    let (_, metrics) = ing.stop().await;
    assert_eq!(status(&metrics, "ack_timeouts"), 1);
}

#[tokio::test]
async fn a_stopped_server_refuses_new_requests() {
    let ing = Ingest::start(json!({}), usize::MAX);
    let c = client();
    assert_eq!(post(&c, &ing.url, "{}").await.0, 202);
    let url = ing.url.clone();
    let (out, _) = ing.stop().await;
    assert_eq!(out.len(), 1);
    assert!(
        c.post(&url).body("{}").send().await.is_err(),
        "not listening"
    );
}

/// A connection to the ingest server that has sent `sent`.
async fn sent(base: &str, sent: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::TcpStream::connect(base.trim_start_matches("http://"))
        .await
        .expect("connect");
    s.write_all(sent.as_bytes()).await.expect("sent");
    s
}

/// Everything the server sends until it closes the connection (or resets it).
async fn until_closed(s: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut got)).await;
    assert!(read.is_ok(), "the server did not close the connection");
    String::from_utf8_lossy(&got).to_ascii_lowercase()
}

const STALLED: &str = "POST /ingest HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                       Content-Length: 100\r\n\r\n{\"a\":";

#[tokio::test]
async fn stalled_clients_get_503_and_do_not_hold_a_graceful_stop() {
    // No timeout would end these clients: only the stop may.
    let ing = Ingest::start(
        json!({ "header_timeout": "1h", "body_timeout": "1h", "retry_after": "2s" }),
        usize::MAX,
    );
    // Headers and part of a body, then nothing.
    let mut stalled = sent(&ing.base, STALLED).await;
    // Part of the headers.
    let mut half = sent(&ing.base, "POST /ingest HTTP/1.1\r\nHost: x\r\n").await;
    // Connected, nothing sent.
    let mut idle = Vec::new();
    for _ in 0..50 {
        idle.push(sent(&ing.base, "").await);
    }
    let metrics = ing.metrics.clone();
    wait_for("the stalled request to reach the server", || {
        metrics.snapshot().status.get("requests") == Some(&json!(1))
    })
    .await;
    let stop = tokio::spawn(ing.stop());
    let answer = until_closed(&mut stalled).await;
    assert!(answer.starts_with("http/1.1 503"), "{answer}");
    assert!(answer.contains("connection: close"), "{answer}");
    assert!(answer.contains("retry-after: 2"), "{answer}");
    assert!(answer.contains("stopping"), "{answer}");
    until_closed(&mut half).await;
    for c in &mut idle {
        until_closed(c).await;
    }
    let (out, _) = tokio::time::timeout(Duration::from_secs(20), stop)
        .await
        .expect("slow clients do not hold the stop")
        .expect("joined");
    assert!(out.is_empty(), "nothing of the stalled body got in");
}

#[tokio::test]
async fn slow_and_idle_clients_are_cut_off() {
    let ing = Ingest::start(
        json!({ "header_timeout": "200ms", "body_timeout": "200ms" }),
        usize::MAX,
    );
    // Connected, nothing sent: closed after header_timeout.
    let mut idle = sent(&ing.base, "").await;
    assert_eq!(until_closed(&mut idle).await, "");
    // Headers never finished: closed.
    let mut half = sent(&ing.base, "POST /ingest HTTP/1.1\r\nHost: x\r\n").await;
    until_closed(&mut half).await;
    // The body never finished: 408, and closed.
    let mut stalled = sent(&ing.base, STALLED).await;
    let answer = until_closed(&mut stalled).await;
    assert!(answer.starts_with("http/1.1 408"), "{answer}");
    assert!(
        answer.contains("the body did not arrive within 200ms"),
        "{answer}"
    );
    // A kept-alive connection idle after its answer: closed too.
    let mut kept = sent(
        &ing.base,
        "POST /ingest HTTP/1.1\r\nHost: x\r\nContent-Length: 7\r\n\r\n{\"a\":1}",
    )
    .await;
    let answer = until_closed(&mut kept).await;
    assert!(answer.starts_with("http/1.1 202"), "{answer}");
    let (out, metrics) = ing.stop().await;
    assert_eq!(out.iter().map(content).collect::<Vec<_>>(), [r#"{"a":1}"#]);
    assert_eq!(status(&metrics, "body_timeouts"), 1);
}

#[tokio::test]
async fn connections_beyond_max_connections_wait_their_turn() {
    let ing = Ingest::start(
        json!({ "max_connections": 2, "header_timeout": "1h" }),
        usize::MAX,
    );
    let first = sent(&ing.base, "").await;
    let _second = sent(&ing.base, "").await;
    let mut third = sent(
        &ing.base,
        "POST /ingest HTTP/1.1\r\nHost: x\r\nContent-Length: 7\r\nConnection: close\r\n\r\n{\"a\":1}",
    )
    .await;
    let mut buf = [0u8; 64];
    let early = tokio::time::timeout(
        Duration::from_millis(300),
        tokio::io::AsyncReadExt::read(&mut third, &mut buf),
    )
    .await;
    assert!(early.is_err(), "served while two connections were open");
    drop(first);
    let answer = until_closed(&mut third).await;
    assert!(answer.starts_with("http/1.1 202"), "{answer}");
    let (out, _) = ing.stop().await;
    assert_eq!(out.len(), 1);
}

#[tokio::test]
async fn content_types_and_records_that_are_not_objects_are_refused() {
    let ing = Ingest::start(json!({ "max_record_size": "64B" }), usize::MAX);
    let c = client();
    let send = |ct: &'static str, body: &'static str| {
        let (c, url) = (c.clone(), ing.url.clone());
        async move {
            let r = c
                .post(url)
                .header("content-type", ct)
                .body(body)
                .send()
                .await
                .expect("sent");
            (r.status().as_u16(), r.text().await.expect("body"))
        }
    };
    let (code, msg) = send("application/x-www-form-urlencoded", r#"{"a":1}"#).await;
    assert_eq!(code, 415);
    assert!(
        msg.contains("application/json") && msg.contains("application/x-ndjson"),
        "says what is accepted: {msg}"
    );
    let (code, msg) = send("application/json", "42").await;
    assert_eq!(code, 400);
    assert!(
        msg.contains("the body: a record must be a JSON object, not a number"),
        "{msg}"
    );
    let (code, msg) = send("application/json", r#"[1, "a"]"#).await;
    assert_eq!(code, 400);
    assert!(
        msg.contains("element 1: a record must be a JSON object"),
        "{msg}"
    );
    let (code, msg) = send("application/x-ndjson", "{\"a\":1}\n[1]\n").await;
    assert_eq!(code, 400);
    assert!(
        msg.contains("line 2: a record must be a JSON object, not an array"),
        "{msg}"
    );
    let (code, msg) = send(
        "application/x-ndjson",
        "{\"a\":1}\n{\"a\":\"0123456789012345678901234567890123456789012345678901234567890\"}\n",
    )
    .await;
    assert_eq!(code, 413);
    assert!(
        msg.contains("line 2 is 69 bytes, over max_record_size (64 B)"),
        "{msg}"
    );
    // Blank lines, whitespace only or not, are skipped.
    assert_eq!(
        send(
            "application/x-ndjson",
            "{\"a\":1}\n   \n\t\r\n\n{\"a\":2}\n"
        )
        .await,
        (202, r#"{"accepted":2}"#.to_owned())
    );
    assert_eq!(
        send("application/json; charset=utf-8", r#"[{"a":3}]"#)
            .await
            .0,
        202
    );
    let (out, metrics) = ing.stop().await;
    assert_eq!(
        out.iter().map(content).collect::<Vec<_>>(),
        [r#"{"a":1}"#, r#"{"a":2}"#, r#"{"a":3}"#]
    );
    assert_eq!(status(&metrics, "rejected_type"), 1);
    assert_eq!(status(&metrics, "rejected_malformed"), 3);
    assert_eq!(status(&metrics, "rejected_too_large"), 1);
}

#[test]
fn server_configs_are_validated() {
    let bad: HttpServerConfig = testing::config(json!({
        "listen": "localhost",
        "path": "/{x}",
        "health_path": "health",
        "token": "",
        "max_queued": 0,
        "ack_timeout": "2h",
    }));
    let paths: Vec<String> = bad.validate().iter().map(|e| e.path.join(".")).collect();
    assert_eq!(
        paths,
        [
            "listen",
            "path",
            "health_path",
            "token",
            "max_queued",
            "ack_timeout"
        ]
    );
    let same: HttpServerConfig =
        testing::config(json!({ "listen": "127.0.0.1:1", "path": "/health" }));
    assert_eq!(same.validate().len(), 1);
}

fn rules(kind: BodyType) -> BodyRules {
    BodyRules {
        kind,
        max_record: 64,
        max_record_size: bytesize::ByteSize::b(64),
        view: JsonView::Lazy,
    }
}

fn parse(kind: BodyType, s: &str) -> Result<usize, Refused> {
    rules(kind)
        .parse(&Bytes::copy_from_slice(s.as_bytes()))
        .map(|r| r.len())
}

#[test]
fn bodies_parse_all_or_nothing() {
    let ok = |s: &str| parse(BodyType::Either, s).map_err(|e| e.message().to_owned());
    assert_eq!(ok(r#"{"a":1}"#), Ok(1));
    assert_eq!(ok(r#"[{"a":1}, {"b":2}]"#), Ok(2));
    assert_eq!(ok("{\"a\":1}\n\n{\"a\":2}"), Ok(2));
    assert_eq!(
        ok("{\"a\":1}\n \t\n\r\n{\"a\":2}\n  "),
        Ok(2),
        "blank lines are skipped"
    );
    assert_eq!(ok("[]"), Ok(0));
    assert!(ok("{\"a\":1}\nnope\n").is_err_and(|e| e.starts_with("line 2: ")));
    assert_eq!(ok(""), Err("the body is empty".into()));
    assert_eq!(ok(" \n\t"), Err("the body is empty".into()));
    assert!(ok("[1,").is_err());
}

#[test]
fn every_record_must_be_an_object() {
    let err = |kind, s: &str| match parse(kind, s) {
        Err(Refused::Malformed(m)) => m,
        other => panic!("{s}: {other:?}"),
    };
    assert_eq!(
        err(BodyType::Either, "42"),
        "line 1: a record must be a JSON object, not a number"
    );
    assert_eq!(
        err(BodyType::Json, "42"),
        "the body: a record must be a JSON object, not a number"
    );
    assert_eq!(
        err(BodyType::Either, r#"[{"a":1}, 1, "a"]"#),
        "element 2: a record must be a JSON object, not a number"
    );
    assert_eq!(
        err(BodyType::Json, r#"[[1], {"a":1}]"#),
        "element 1: a record must be a JSON object, not an array"
    );
    assert_eq!(
        err(BodyType::Lines, "{\"a\":1}\n\n\"s\"\n"),
        "line 3: a record must be a JSON object, not a string"
    );
    assert_eq!(
        err(BodyType::Either, "{\"a\":1}\nnull"),
        "line 2: a record must be a JSON object, not null"
    );
    assert_eq!(
        err(BodyType::Either, "{\"a\":1}\n true"),
        "line 2: a record must be a JSON object, not a boolean"
    );
}

#[test]
fn the_content_type_says_how_a_body_is_read() {
    let of = |ct: &str| BodyType::of(Some(ct.as_bytes()));
    assert_eq!(BodyType::of(None), Ok(BodyType::Either));
    assert_eq!(of("application/json"), Ok(BodyType::Json));
    assert_eq!(of("Application/JSON; charset=UTF-8"), Ok(BodyType::Json));
    assert_eq!(of("application/vnd.acme.reading+json"), Ok(BodyType::Json));
    for lines in [
        "application/x-ndjson",
        "application/ndjson",
        "application/jsonl",
        "application/x-jsonlines",
    ] {
        assert_eq!(of(lines), Ok(BodyType::Lines), "{lines}");
    }
    assert_eq!(of("text/plain; charset=utf-8"), Ok(BodyType::Either));
    let refused = of("application/x-www-form-urlencoded").expect_err("refused");
    assert!(
        refused.starts_with("`Content-Type: application/x-www-form-urlencoded` is not accepted: send application/json"),
        "{refused}"
    );
    assert!(refused.contains("application/x-ndjson"), "{refused}");
    assert!(of("application/json; charset=latin1").is_err());
    assert!(of("not a type").is_err());

    // JSON is one document; JSON lines are lines, even when the first one spans the body.
    assert_eq!(parse(BodyType::Lines, "{\"a\":1}\n{\"a\":2}\n"), Ok(2));
    assert!(parse(BodyType::Lines, "{\n\"a\": 1}").is_err());
    match parse(BodyType::Json, "{\"a\":1}\n{\"a\":2}\n") {
        Err(Refused::Malformed(m)) => assert!(m.contains("application/x-ndjson"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(parse(BodyType::Json, "{\n  \"a\": 1\n}\n"), Ok(1));
}

#[test]
fn a_record_over_max_record_size_refuses_the_body_naming_it() {
    let big = format!(r#"{{"a":"{}"}}"#, "x".repeat(100));
    let too_large = |kind, body: &str| match parse(kind, body) {
        Err(Refused::TooLarge(m)) => m,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        too_large(BodyType::Either, &format!("{{\"a\":1}}\n{big}\n")),
        "line 2 is 108 bytes, over max_record_size (64 B)"
    );
    assert_eq!(
        too_large(BodyType::Json, &format!("[{{\"a\":1}}, {big}]")),
        "element 2 is 108 bytes, over max_record_size (64 B)"
    );
    assert_eq!(
        too_large(BodyType::Json, &big),
        "the body is 108 bytes, over max_record_size (64 B)"
    );
}

#[test]
fn pagination_forms_parse_from_yaml() {
    let def = crate::builtin();
    let def = def.get("http_poll").expect("registered");
    for pagination in [
        "link",
        "{ next_url: .links.next }",
        "{ cursor: { value: .meta.cursor, param: after } }",
    ] {
        let yaml = format!("url: http://127.0.0.1:1/x\npagination: {pagination}\n");
        let node = marked_yaml::parse_yaml(0, &yaml).expect("yaml");
        let cfg = (def.parse)(&node).unwrap_or_else(|e| panic!("{pagination}: {e}"));
        assert!(cfg.validate().is_empty(), "{pagination}");
    }
    let node = marked_yaml::parse_yaml(0, "url: http://x/\npagination: nope\n").expect("yaml");
    assert!((def.parse)(&node).is_err());
}

#[tokio::test]
async fn under_back_pressure_ticks_are_skipped_not_queued() {
    let api = api_with(&[1, 2]);
    let addr = start_api(api.clone()).await;
    let cfg: HttpPollConfig = testing::config(json!({
        "url": format!("http://{addr}/plain"),
        "interval": "10ms",
        "records": "array",
        "skip_unchanged": false,
    }));
    let src = testing::source(&cfg);
    // The flow holds one page; nobody reads yet.
    let metrics = Arc::new(NodeMetrics::default());
    let (f_tx, _f_rx, _) = edge(usize::MAX, usize::MAX, WhenFull::Block);
    let (tx, mut rx, _) = edge(2, usize::MAX, WhenFull::Block);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(src.run(SourceContext {
        name: NAME.into(),
        out: Emitter::new(
            NAME.into(),
            vec![("failure".into(), vec![f_tx]), ("out".into(), vec![tx])],
            metrics.clone(),
        ),
        shutdown: shutdown.clone(),
        metrics: metrics.clone(),
    }));
    wait_for("a second poll", || api.hits.load(Ordering::SeqCst) >= 2).await;
    // ~30 ticks pass while the second page waits for room: no request is made meanwhile.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(api.hits.load(Ordering::SeqCst), 2, "no poll while blocked");
    let mut got = 0;
    while got < 6 {
        got += rx.recv().await.expect("a page").len();
    }
    shutdown.cancel();
    // Read what is still coming (a blocked send finishes) until the source is gone.
    while rx.recv().await.is_some() {}
    task.await.expect("joined").expect("clean");
    assert!(status(&metrics, "skipped_ticks") >= 1);
    // The missed ticks were not made up for in a burst.
    assert!(api.hits.load(Ordering::SeqCst) <= 6);
}
