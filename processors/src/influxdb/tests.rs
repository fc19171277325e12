//! `influxdb_sink` against a real VictoriaMetrics (its InfluxDB v2 write API;
//! `FLOW_TEST_INFLUX_URL`, started by `scripts/test.sh`), read back with its export API: the
//! points stored must equal what was sent (names, tags, values, timestamps). Refusals and
//! server trouble are played by a small local HTTP server. Without VictoriaMetrics the
//! read-back tests skip and say so, except with `CI` set, where they fail.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use flow_core::ack::{AckStatus, AckTracker, Acks};
use flow_core::record::Record;
use serde_json::json;

use flow_core::processor::ProcessorError;

use super::InfluxDbSinkConfig;
use crate::http_test::{Answer, FlakyServer, closed_addr};
use crate::testing::{config, rec, sink, sink_ctx, sink_ctx_stoppable};

fn server() -> Option<String> {
    match std::env::var("FLOW_TEST_INFLUX_URL") {
        Ok(u) => Some(u),
        Err(_) if std::env::var_os("CI").is_some() => {
            panic!("FLOW_TEST_INFLUX_URL is not set but CI is: VictoriaMetrics did not start")
        }
        Err(_) => {
            eprintln!(
                "skipped: FLOW_TEST_INFLUX_URL is not set (scripts/test.sh starts VictoriaMetrics)"
            );
            None
        }
    }
}

/// A measurement name no other test or run uses.
fn unique(name: &str) -> String {
    let id = crate::template::uuid_v4().replace('-', "");
    format!("flowtest_{name}_{}", &id[..12])
}

fn cfg(url: &str, measurement: &str, extra: serde_json::Value) -> InfluxDbSinkConfig {
    let mut c = json!({
        "url": url, "org": "flow", "bucket": "telemetry", "token": "secret-token",
        "measurement": measurement, "tags": ["device", "site"],
        "batch_max_records": 100, "retry_max": "200ms",
    });
    for (k, v) in extra.as_object().into_iter().flatten() {
        c[k] = v.clone();
    }
    config(c)
}

/// Run the sink over `batches`; returns the failure port's records and the sent count.
async fn run(cfg: &InfluxDbSinkConfig, batches: Vec<Vec<Record>>) -> (Vec<Record>, u64) {
    let (ctx, tx, mut failures, metrics) = sink_ctx();
    let feeder = tokio::spawn(async move {
        for b in batches {
            tx.send(b).await.expect("queued");
        }
    });
    sink(cfg).run(ctx).await.expect("runs");
    feeder.await.expect("fed");
    let failed = crate::testing::records(&mut failures).await;
    (failed, metrics.snapshot().sent)
}

/// Device names with every character line protocol escapes, and unicode.
const DEVICES: [&str; 5] = [
    "car-1",
    "car 2, \"north\"",
    "a=b\\c",
    "émile 😀",
    "trailing\\",
];

/// A point sent: (device, ts, count, avg).
type Sent = (String, i64, i64, f64);

/// Points as records, one ack token per batch of 100, and what they hold.
fn points(n: usize, tracker: &mut AckTracker) -> (Vec<Vec<Record>>, Vec<Sent>) {
    let start = 1_732_300_000_000i64;
    let mut want = Vec::new();
    let batches = (0..n)
        .collect::<Vec<_>>()
        .chunks(100)
        .enumerate()
        .map(|(b, chunk)| {
            let token = tracker.token(b as u64);
            chunk
                .iter()
                .map(|&i| {
                    let device = DEVICES[i % DEVICES.len()];
                    let ts = start + i as i64 * 1000;
                    let avg = 60.0 + (i as f64) / 8.0;
                    let v = json!({"device": device, "site": "s,1 =x", "window_start": ts,
                        "count": i as i64, "avg_temperature": avg, "status": "ok"});
                    want.push((device.to_owned(), ts, i as i64, avg));
                    rec(&v.to_string()).with_acks(Acks::one(token.clone()))
                })
                .collect()
        })
        .collect();
    (batches, want)
}

/// Every exported series of `measurement`: (metric name, labels) -> (timestamp -> value).
type Series = BTreeMap<(String, BTreeMap<String, String>), BTreeMap<i64, f64>>;

async fn export(url: &str, measurement: &str) -> Series {
    let client = crate::http_client::client(Duration::from_secs(10)).expect("client");
    let _ = client
        .get(format!("{url}/internal/force_flush"))
        .send()
        .await;
    let mut q = reqwest::Url::parse(&format!("{url}/api/v1/export")).expect("url");
    q.query_pairs_mut()
        .append_pair("match[]", &format!("{{__name__=~\"{measurement}_.*\"}}"));
    let text = client
        .get(q)
        .send()
        .await
        .expect("export")
        .text()
        .await
        .expect("body");
    let mut out = Series::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line).expect("json line");
        let mut labels: BTreeMap<String, String> = v["metric"]
            .as_object()
            .expect("metric")
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
            .collect();
        let name = labels.remove("__name__").expect("name");
        let values = v["values"].as_array().expect("values");
        let ts = v["timestamps"].as_array().expect("timestamps");
        let e = out.entry((name, labels)).or_default();
        for (t, x) in ts.iter().zip(values) {
            e.insert(t.as_i64().expect("ts"), x.as_f64().expect("value"));
        }
    }
    out
}

/// What VictoriaMetrics should hold for `want`.
fn expected(measurement: &str, want: &[Sent]) -> Series {
    let mut s = Series::new();
    for (device, ts, count, avg) in want {
        let labels: BTreeMap<String, String> = [
            ("device".to_owned(), device.clone()),
            ("site".to_owned(), "s,1 =x".to_owned()),
        ]
        .into();
        s.entry((format!("{measurement}_count"), labels.clone()))
            .or_default()
            .insert(*ts, *count as f64);
        s.entry((format!("{measurement}_avg_temperature"), labels))
            .or_default()
            .insert(*ts, *avg);
    }
    s
}

/// Poll the export until it holds `want` (new series take about a second to show).
async fn assert_read_back(url: &str, measurement: &str, want: &Series) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let got = export(url, measurement).await;
        if &got == want {
            return;
        }
        if Instant::now() > deadline {
            let missing: Vec<_> = want.keys().filter(|k| !got.contains_key(*k)).collect();
            let extra: Vec<_> = got.keys().filter(|k| !want.contains_key(*k)).collect();
            panic!(
                "read back differs: {} series, want {}; missing {missing:?}; extra {extra:?}",
                got.len(),
                want.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn all_acked(tracker: &mut AckTracker, batches: u64, status: AckStatus) {
    for _ in 0..batches {
        let f = tokio::time::timeout(Duration::from_secs(10), tracker.next())
            .await
            .expect("acked in time")
            .expect("a batch");
        assert_eq!(f.status, status, "batch {}", f.seq);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn points_read_back_from_victoria_metrics_equal_what_was_sent() {
    let Some(url) = server() else { return };
    let m = unique("readback");
    let c = cfg(&url, &m, json!({"timestamp": "window_start"}));
    let mut tracker = AckTracker::new();
    let (batches, want) = points(1000, &mut tracker);
    let (failed, sent) = run(&c, batches).await;
    assert!(failed.is_empty(), "{:?}", failed[0].attributes());
    assert_eq!(sent, 1000);
    all_acked(&mut tracker, 10, AckStatus::Delivered).await;
    assert_read_back(&url, &m, &expected(&m, &want)).await;
}

/// Without gzip and with the event time as timestamp, in seconds precision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_bodies_event_time_and_second_precision() {
    let Some(url) = server() else { return };
    let m = unique("plain");
    let c = cfg(
        &url,
        &m,
        json!({"gzip": false, "precision": "s",
        "fields": ["count", "avg_temperature"]}),
    );
    let mut tracker = AckTracker::new();
    let (mut batches, want) = points(250, &mut tracker);
    for r in batches.iter_mut().flatten() {
        let ts = r
            .value()
            .expect("json")
            .as_object()
            .and_then(|o| o.get("window_start"))
            .and_then(|v| v.as_integer());
        r.set_event_time(ts.map(|t| t + 999)); // dropped by the second precision
    }
    let (failed, sent) = run(&c, batches).await;
    assert!(failed.is_empty());
    assert_eq!(sent, 250);
    assert_read_back(&url, &m, &expected(&m, &want)).await;
}

/// The server answers 500, 503 with `Retry-After` and 429 at first, then recovers: every
/// point arrives, none goes to `failure`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_error_then_recovery_loses_nothing() {
    let Some(url) = server() else { return };
    let upstream = url
        .trim_start_matches("http://")
        .parse()
        .expect("host:port");
    let flaky = FlakyServer::start_with(
        Some(upstream),
        |i, _| i < 5,
        Answer::new(503, r#"{"code":"unavailable","message":"busy"}"#).header("Retry-After", "1"),
    )
    .await;
    let m = unique("flaky");
    let c = cfg(&flaky.url(), &m, json!({"timestamp": "window_start"}));
    let mut tracker = AckTracker::new();
    let (batches, want) = points(500, &mut tracker);
    let (failed, sent) = run(&c, batches).await;
    assert!(failed.is_empty());
    assert_eq!(sent, 500);
    assert_eq!(flaky.failed.load(Ordering::SeqCst), 5);
    all_acked(&mut tracker, 5, AckStatus::Delivered).await;
    assert_read_back(&url, &m, &expected(&m, &want)).await;
}

/// Batches are posted up to `max_in_flight` at once, each acknowledged by its own answer:
/// through a server that holds every request a second, 4 were out at once (1 with
/// `max_in_flight: 1`), and every point arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_are_posted_up_to_max_in_flight_at_once() {
    let Some(url) = server() else { return };
    let upstream = url
        .trim_start_matches("http://")
        .parse()
        .expect("host:port");
    for at_once in [4, 1] {
        let slow = FlakyServer::slow(upstream, Duration::from_secs(1)).await;
        let m = unique("in_flight");
        let c = cfg(
            &slow.url(),
            &m,
            json!({"timestamp": "window_start", "max_in_flight": at_once}),
        );
        let mut tracker = AckTracker::new();
        let (batches, want) = points(600, &mut tracker);
        let (failed, sent) = run(&c, batches).await;
        assert!(failed.is_empty());
        assert_eq!(sent, 600);
        assert_eq!(slow.requests.load(Ordering::SeqCst), 6);
        assert_eq!(slow.most_at_once.load(Ordering::SeqCst), at_once);
        all_acked(&mut tracker, 6, AckStatus::Delivered).await;
        assert_read_back(&url, &m, &expected(&m, &want)).await;
    }
}

/// A 400 sends the batch's records to `failure` with the server's message; the sink goes on.
#[tokio::test]
async fn a_400_sends_the_batch_to_failure_with_the_message() {
    let refusing = FlakyServer::start(
        None,
        usize::MAX,
        Answer::new(
            400,
            r#"{"code":"invalid","message":"partial write: field type conflict"}"#,
        ),
    )
    .await;
    let c = cfg(&refusing.url(), "engine", json!({}));
    let mut tracker = AckTracker::new();
    let (batches, _) = points(250, &mut tracker);
    let (failed, sent) = run(&c, batches).await;
    assert_eq!(sent, 0);
    assert_eq!(failed.len(), 250);
    let msg = failed[0]
        .attributes()
        .get("error.message")
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        msg,
        "InfluxDB answered 400 Bad Request: partial write: field type conflict"
    );
    // One request per batch of 100: none retried.
    assert_eq!(refusing.requests.load(Ordering::SeqCst), 3);
    drop(failed);
    all_acked(&mut tracker, 3, AckStatus::Failed).await;
}

/// Run the sink over `batches` in the background, with the token that asks it to stop.
fn spawn(
    cfg: &InfluxDbSinkConfig,
    batches: Vec<Vec<Record>>,
) -> (
    tokio::task::JoinHandle<Result<(), ProcessorError>>,
    flow_core::runtime::CancellationToken,
    flow_core::runtime::edge::EdgeReceiver,
) {
    let (ctx, tx, failures, _, stop) = sink_ctx_stoppable();
    let task = tokio::spawn(sink(cfg).run(ctx));
    tokio::spawn(async move {
        for b in batches {
            tx.send(b).await.expect("queued");
        }
    });
    (task, stop, failures)
}

/// With `max_retries`, a server that keeps failing stops the flow after that many retries;
/// the batch is not acknowledged (neither written nor failed), so its source keeps it.
#[tokio::test]
async fn gives_up_after_max_retries_without_acknowledging() {
    let down = FlakyServer::start(None, usize::MAX, Answer::new(500, "boom")).await;
    let c = cfg(
        &down.url(),
        "engine",
        json!({"max_retries": 2, "retry_max": "10ms"}),
    );
    let mut tracker = AckTracker::new();
    let (batches, _) = points(10, &mut tracker);
    let (task, _stop, mut failures) = spawn(&c, batches);
    let e = task.await.expect("joined").expect_err("gives up");
    assert_eq!(
        e.to_string(),
        "writing to InfluxDB failed 3 times, giving up: InfluxDB answered 500 Internal Server \
         Error: boom"
    );
    assert_eq!(down.requests.load(Ordering::SeqCst), 3);
    assert!(crate::testing::records(&mut failures).await.is_empty());
    all_acked(&mut tracker, 1, AckStatus::Abandoned).await;
}

/// A refused token is not the records' fault and waiting does not fix it: the flow stops with
/// the server's message, nothing goes to `failure`, nothing is acknowledged.
#[tokio::test]
async fn refused_credentials_stop_the_flow() {
    for status in [401, 403, 404] {
        let refusing = FlakyServer::start(
            None,
            usize::MAX,
            Answer::new(status, r#"{"code":"unauthorized","message":"no"}"#),
        )
        .await;
        let c = cfg(&refusing.url(), "engine", json!({}));
        let mut tracker = AckTracker::new();
        let (batches, _) = points(150, &mut tracker);
        let (task, _stop, mut failures) = spawn(&c, batches);
        let e = task.await.expect("joined").expect_err("stops");
        assert!(
            e.to_string()
                .starts_with(&format!("InfluxDB answered {status}")),
            "{e}"
        );
        // Both batches may be out at once (`max_in_flight`); neither is sent again.
        let requests = refusing.requests.load(Ordering::SeqCst);
        assert!((1..=2).contains(&requests), "{requests} requests: retried");
        assert!(crate::testing::records(&mut failures).await.is_empty());
        all_acked(&mut tracker, 2, AckStatus::Abandoned).await;
    }
}

/// The server is down (connection refused): nothing is acknowledged while it is; asked to
/// stop, the sink gives up at once and acknowledges nothing.
#[tokio::test]
async fn a_server_that_is_down_acknowledges_nothing_and_a_stop_gives_up() {
    let c = cfg(
        &format!("http://{}", closed_addr()),
        "engine",
        json!({"retry_max": "50ms"}),
    );
    let mut tracker = AckTracker::new();
    let (batches, _) = points(150, &mut tracker);
    let (task, stop, mut failures) = spawn(&c, batches);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(tracker.try_next().is_none(), "acknowledged while down");
    assert!(!task.is_finished());
    stop.cancel();
    let e = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("a bounded stop")
        .expect("joined")
        .expect_err("gave up");
    assert!(matches!(e, ProcessorError::Stopped(_)), "{e}");
    assert!(crate::testing::records(&mut failures).await.is_empty());
    all_acked(&mut tracker, 2, AckStatus::Abandoned).await;
}

/// The server is down, then comes back where it was: every point arrives, each batch is
/// acknowledged only after it was written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_down_then_back_loses_nothing() {
    let Some(url) = server() else { return };
    let upstream = url
        .trim_start_matches("http://")
        .parse()
        .expect("host:port");
    let at = closed_addr();
    let m = unique("downup");
    let c = cfg(
        &format!("http://{at}"),
        &m,
        json!({"timestamp": "window_start", "retry_max": "100ms"}),
    );
    let mut tracker = AckTracker::new();
    let (batches, want) = points(300, &mut tracker);
    let (task, _stop, mut failures) = spawn(&c, batches);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(tracker.try_next().is_none(), "acknowledged while down");
    let _back = FlakyServer::start_on(
        &at.to_string(),
        Some(upstream),
        |_, _| false,
        Answer::new(500, ""),
    )
    .await;
    all_acked(&mut tracker, 3, AckStatus::Delivered).await;
    task.await.expect("joined").expect("runs");
    assert!(crate::testing::records(&mut failures).await.is_empty());
    assert_read_back(&url, &m, &expected(&m, &want)).await;
}

/// The request carries the token, gzip and the write parameters.
#[tokio::test]
async fn requests_carry_token_gzip_and_parameters() {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let s2 = seen.clone();
    let server = FlakyServer::start_with(
        None,
        move |_, head| {
            s2.lock().expect("lock").push(head.to_owned());
            true
        },
        Answer::new(204, ""),
    )
    .await;
    let c = cfg(&server.url(), "engine", json!({}));
    let mut tracker = AckTracker::new();
    let (batches, _) = points(10, &mut tracker);
    let (failed, sent) = run(&c, batches).await;
    assert!(failed.is_empty());
    assert_eq!(sent, 10);
    let heads = seen.lock().expect("lock").clone();
    assert_eq!(heads.len(), 1);
    let head = heads[0].to_ascii_lowercase();
    assert!(
        head.starts_with("post /api/v2/write?org=flow&bucket=telemetry&precision=ms "),
        "{head}"
    );
    assert!(head.contains("authorization: token secret-token"), "{head}");
    assert!(head.contains("content-encoding: gzip"), "{head}");
}

/// `Retry-After` as delay-seconds or an HTTP date (one in the past is no wait; the shared
/// retry never waits less than its backoff).
#[test]
fn retry_after_is_read_as_seconds_or_a_date() {
    assert_eq!(
        super::parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
        Some(Duration::ZERO)
    );
    assert_eq!(super::parse_retry_after("3"), Some(Duration::from_secs(3)));
}
