//! `s3_sink` against the local filesystem and a real S3-compatible server (s3s-fs, started by
//! `scripts/test.sh`: `FLOW_TEST_S3_ENDPOINT`, `FLOW_TEST_S3_BUCKET`,
//! `FLOW_TEST_S3_ACCESS_KEY`, `FLOW_TEST_S3_SECRET_KEY`). Objects are listed and downloaded
//! back and must decompress to exactly the records sent. Without the server the S3 tests skip
//! and say so, except with `CI` set, where they fail.

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::Arc;

use flow_core::ack::{AckStatus, AckTracker, Acks};
use flow_core::processor::{ProcessorConfig, ProcessorError};
use flow_core::record::Record;
use futures::TryStreamExt;
use object_store::{ObjectStore, ObjectStoreExt};
use serde_json::json;

use super::{Compression, S3SinkConfig};
use crate::http_test::{Answer, FlakyServer, closed_addr};
use crate::testing::{config, rec, sink, sink_ctx, sink_ctx_stoppable};

/// Decompress a whole object.
pub(super) fn decompress(c: Compression, data: &[u8]) -> String {
    let mut out = String::new();
    match c {
        Compression::None => out = String::from_utf8(data.to_vec()).expect("utf-8"),
        Compression::Gzip => {
            flate2::read::MultiGzDecoder::new(data)
                .read_to_string(&mut out)
                .expect("complete gzip");
        }
        Compression::Zstd => {
            zstd::stream::read::Decoder::new(data)
                .expect("zstd")
                .read_to_string(&mut out)
                .expect("complete zstd");
        }
    }
    out
}

struct Server {
    endpoint: String,
    bucket: String,
    access_key: String,
    secret_key: String,
}

fn server() -> Option<Server> {
    match std::env::var("FLOW_TEST_S3_ENDPOINT") {
        Ok(endpoint) => {
            let var = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} is not set"));
            Some(Server {
                endpoint,
                bucket: var("FLOW_TEST_S3_BUCKET"),
                access_key: var("FLOW_TEST_S3_ACCESS_KEY"),
                secret_key: var("FLOW_TEST_S3_SECRET_KEY"),
            })
        }
        Err(_) if std::env::var_os("CI").is_some() => {
            panic!("FLOW_TEST_S3_ENDPOINT is not set but CI is: the S3 server did not start")
        }
        Err(_) => {
            eprintln!("skipped: FLOW_TEST_S3_ENDPOINT is not set (scripts/test.sh starts s3s-fs)");
            None
        }
    }
}

/// A key prefix no other test or run uses.
fn unique(name: &str) -> String {
    format!("flowtest/{name}-{}", crate::template::uuid_v4())
}

impl Server {
    fn config(&self, endpoint: &str, prefix: &str, extra: serde_json::Value) -> S3SinkConfig {
        let mut c = json!({
            "url": format!("s3://{}/{prefix}", self.bucket),
            "endpoint": endpoint,
            "access_key_id": self.access_key,
            "secret_access_key": self.secret_key,
            "max_retries": 5,
            "retry_max": "200ms",
        });
        for (k, v) in extra.as_object().into_iter().flatten() {
            c[k] = v.clone();
        }
        config(c)
    }

    fn store(&self) -> Arc<dyn ObjectStore> {
        crate::http_client::install_crypto_provider();
        Arc::new(
            object_store::aws::AmazonS3Builder::new()
                .with_endpoint(&self.endpoint)
                .with_allow_http(true)
                .with_bucket_name(&self.bucket)
                .with_region("us-east-1")
                .with_access_key_id(&self.access_key)
                .with_secret_access_key(&self.secret_key)
                .build()
                .expect("client"),
        )
    }
}

/// Every object under `prefix`: key (below the prefix) -> decompressed content.
async fn objects(
    store: &dyn ObjectStore,
    prefix: &str,
    c: Compression,
) -> BTreeMap<String, String> {
    let p = object_store::path::Path::from(prefix);
    let metas: Vec<_> = store.list(Some(&p)).try_collect().await.expect("listed");
    let mut out = BTreeMap::new();
    for m in metas {
        let data = store
            .get(&m.location)
            .await
            .expect("get")
            .bytes()
            .await
            .expect("body");
        let key = m
            .location
            .as_ref()
            .trim_start_matches(prefix)
            .trim_start_matches('/');
        out.insert(key.to_owned(), decompress(c, &data));
    }
    out
}

/// Sensor-like records over three devices and three hours, each with its own ack token batch.
fn readings(n: usize, tracker: &mut AckTracker) -> Vec<Vec<Record>> {
    let start = 1_732_300_000_000i64; // 2024-11-22T18:26:40Z
    (0..n)
        .collect::<Vec<_>>()
        .chunks(100)
        .enumerate()
        .map(|(b, chunk)| {
            let token = tracker.token(b as u64);
            chunk
                .iter()
                .map(|&i| {
                    let ts = start + i as i64 * 5_000;
                    let mut r = rec(&format!(
                        r#"{{"device":"car-{}","ts":{ts},"n":{i},"s":"é \"q\""}}"#,
                        i % 3
                    ));
                    r.set_event_time(Some(ts));
                    r.with_acks(Acks::one(token.clone()))
                })
                .collect()
        })
        .collect()
}

/// The partition a reading belongs to, as the key template below renders it.
fn partition(line: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(line).expect("json");
    let ts = v["ts"].as_i64().expect("ts");
    let d = chrono::DateTime::from_timestamp_millis(ts).expect("time");
    format!(
        "{}/dt={}/hour={}",
        v["device"].as_str().expect("device"),
        d.format("%Y-%m-%d"),
        d.format("%H")
    )
}

const KEY: &str = "{device}/dt={yyyy}-{MM}-{dd}/hour={HH}/part-{uuid}.jsonl.gz";

/// Run the sink over `batches`; returns the failure port's records.
async fn run(cfg: &S3SinkConfig, batches: Vec<Vec<Record>>) -> (Vec<Record>, u64, u64) {
    let (ctx, tx, mut failures, metrics) = sink_ctx();
    let feeder = tokio::spawn(async move {
        for b in batches {
            tx.send(b).await.expect("queued");
        }
    });
    sink(cfg).run(ctx).await.expect("runs");
    feeder.await.expect("fed");
    let failed = crate::testing::records(&mut failures).await;
    let m = metrics.snapshot();
    (failed, m.sent, m.failed)
}

/// Every ack of the tracker finished, with this status.
async fn all_acked(tracker: &mut AckTracker, batches: u64, status: AckStatus) {
    for _ in 0..batches {
        let f = tokio::time::timeout(std::time::Duration::from_secs(10), tracker.next())
            .await
            .expect("acked in time")
            .expect("a batch");
        assert_eq!(f.status, status, "batch {}", f.seq);
    }
}

/// Check that `objs` hold exactly `sent` (in order within a partition), each object under its
/// partition's key.
fn assert_exact(objs: &BTreeMap<String, String>, sent: &[String], suffix: &str) {
    let mut by_partition: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for (key, text) in objs {
        let (dir, file) = key.rsplit_once('/').expect("partitioned key");
        assert!(
            file.starts_with("part-")
                && file.ends_with(suffix)
                && file.len() == 5 + 36 + suffix.len(),
            "{key}"
        );
        assert!(text.ends_with('\n'), "{key}: incomplete last line");
        for line in text.lines() {
            assert_eq!(partition(line), dir, "{key}: {line}");
            by_partition.entry(dir.to_owned()).or_default().push(line);
        }
    }
    let mut want: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for l in sent {
        want.entry(partition(l)).or_default().push(l);
    }
    assert_eq!(by_partition, want);
}

fn contents(batches: &[Vec<Record>]) -> Vec<String> {
    batches
        .iter()
        .flatten()
        .map(|r| String::from_utf8_lossy(r.raw_content().expect("raw")).into_owned())
        .collect()
}

#[tokio::test]
async fn file_objects_hold_exactly_the_records_under_partitioned_keys() {
    let dir = tempfile::tempdir().expect("tmp");
    let cfg: S3SinkConfig = config(json!({
        "url": format!("file://{}", dir.path().display()),
        "key": KEY,
    }));
    let mut tracker = AckTracker::new();
    let batches = readings(3000, &mut tracker);
    let sent = contents(&batches);
    let (failed, n, _) = run(&cfg, batches).await;
    assert!(failed.is_empty());
    assert_eq!(n, 3000);
    all_acked(&mut tracker, 30, AckStatus::Delivered).await;
    let store = object_store::local::LocalFileSystem::new_with_prefix(dir.path()).expect("fs");
    let objs = objects(&store, "", Compression::Gzip).await;
    // 3 devices x 5 hours (3000 x 5 s from 18:26:40 reaches 22:36), one object each.
    assert_eq!(objs.len(), 15, "{:?}", objs.keys());
    assert_exact(&objs, &sent, ".jsonl.gz");
}

#[tokio::test]
async fn rolls_by_count_and_writes_csv_and_zstd() {
    let dir = tempfile::tempdir().expect("tmp");
    let cfg: S3SinkConfig = config(json!({
        "url": format!("file://{}/sub", dir.path().display()),
        "key": "{device}/part-{uuid}.csv.zst",
        "format": "csv",
        "columns": ["n", "device", "s"],
        "compression": "zstd",
        "max_records": 100,
    }));
    let mut tracker = AckTracker::new();
    let batches = readings(1000, &mut tracker);
    let (failed, n, _) = run(&cfg, batches).await;
    assert!(failed.is_empty());
    assert_eq!(n, 1000);
    let store =
        object_store::local::LocalFileSystem::new_with_prefix(dir.path().join("sub")).expect("fs");
    let objs = objects(&store, "", Compression::Zstd).await;
    // 334, 333 and 333 records per device: 4 objects each, by 100.
    assert_eq!(objs.len(), 12);
    let mut ns = Vec::new();
    for (key, text) in &objs {
        let mut lines = text.split("\r\n").filter(|l| !l.is_empty());
        assert_eq!(lines.next(), Some("n,device,s"), "{key}");
        let rows: Vec<&str> = lines.collect();
        assert!(rows.len() <= 100, "{key}");
        for row in rows {
            let (n, rest) = row.split_once(',').expect("row");
            let n: usize = n.parse().expect("n");
            assert_eq!(rest, format!("car-{},\"é \"\"q\"\"\"", n % 3));
            assert!(key.starts_with(&format!("car-{}/", n % 3)));
            ns.push(n);
        }
    }
    ns.sort_unstable();
    assert_eq!(ns, (0..1000).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_record_without_a_key_goes_to_failure_and_idle_objects_close() {
    let dir = tempfile::tempdir().expect("tmp");
    let cfg: S3SinkConfig = config(json!({
        "url": format!("file://{}", dir.path().display()),
        "key": "{device}/part-{uuid}.jsonl",
        "compression": "none",
        "max_idle": "100ms",
    }));
    let (ctx, tx, mut failures, metrics) = sink_ctx();
    let task = tokio::spawn(sink(&cfg).run(ctx));
    tx.send(vec![
        rec(r#"{"device":"a","x":1}"#),
        rec(r#"{"x":2}"#),
        rec(r#"{"device":"a/b"}"#),
    ])
    .await
    .expect("queued");
    // The open object closes after 100ms of quiet, before the input ends.
    let path = dir.path().join("a");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while metrics.snapshot().sent < 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the idle object was not closed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let files: Vec<_> = std::fs::read_dir(&path).expect("dir").collect();
    assert_eq!(files.len(), 1);
    drop(tx);
    task.await.expect("joined").expect("runs");
    let failed = crate::testing::records(&mut failures).await;
    assert_eq!(failed.len(), 2);
    let msg = |i: usize| {
        failed[i]
            .attributes()
            .get("error.message")
            .cloned()
            .unwrap_or_default()
    };
    assert!(
        msg(0).contains("no field or attribute `device`"),
        "{}",
        msg(0)
    );
    assert!(
        msg(1).contains("cannot be part of an object key"),
        "{}",
        msg(1)
    );
}

/// Every file under `dir`, recursively.
fn files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// A multipart object on the local filesystem is written into a staging file, part by part,
/// and renamed once complete: one whole object, no staging file left.
#[tokio::test]
async fn file_large_objects_are_staged_then_published_whole() {
    let dir = tempfile::tempdir().expect("tmp");
    let cfg: S3SinkConfig = config(json!({
        "url": format!("file://{}", dir.path().display()),
        "key": "all/part-{uuid}.jsonl",
        "compression": "none",
        "part_size": "5MiB",
    }));
    let pad = "z".repeat(900);
    let batches: Vec<Vec<Record>> = (0..14_000)
        .collect::<Vec<usize>>()
        .chunks(500)
        .map(|c| {
            c.iter()
                .map(|i| rec(&format!(r#"{{"n":{i},"pad":"{pad}"}}"#)))
                .collect()
        })
        .collect();
    let sent: String = contents(&batches)
        .iter()
        .map(|l| format!("{l}\n"))
        .collect();
    let (failed, n, _) = run(&cfg, batches).await;
    assert!(failed.is_empty());
    assert_eq!(n, 14_000);
    let all = files(dir.path());
    assert_eq!(all.len(), 1, "{all:?}");
    assert!(!all[0].to_string_lossy().contains('#'), "{all:?}");
    assert_eq!(std::fs::read_to_string(&all[0]).expect("read"), sent);
}

#[test]
fn validation() {
    let c: S3SinkConfig = config(json!({"url": "http://x", "key": "a/{device}.jsonl",
        "format": "csv", "part_size": "1MiB", "max_records": 0}));
    let paths: Vec<String> = c.validate().iter().map(|e| e.path.join(".")).collect();
    assert_eq!(paths, ["url", "key", "columns", "max_records", "part_size"]);
    let c: S3SinkConfig = config(json!({"url": "s3://b/p/q"}));
    assert!(c.validate().is_empty(), "{:?}", c.validate());
    assert_eq!(
        c.key_template(),
        "dt={yyyy}-{MM}-{dd}/hour={HH}/part-{uuid}.jsonl.gz"
    );
    assert_eq!(
        c.target(),
        Ok(super::Target::S3 {
            bucket: "b".into(),
            prefix: "p/q".into()
        })
    );
    let c: S3SinkConfig = config(json!({"url": "file://rel/dir"}));
    assert_eq!(c.validate()[0].path, ["url"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_objects_read_back_exactly_under_partitioned_keys() {
    let Some(s) = server() else { return };
    let prefix = unique("readback");
    let cfg = s.config(&s.endpoint, &prefix, json!({"key": KEY}));
    let mut tracker = AckTracker::new();
    let batches = readings(3000, &mut tracker);
    let sent = contents(&batches);
    let (failed, n, _) = run(&cfg, batches).await;
    assert!(failed.is_empty());
    assert_eq!(n, 3000);
    all_acked(&mut tracker, 30, AckStatus::Delivered).await;
    let objs = objects(&*s.store(), &prefix, Compression::Gzip).await;
    assert_eq!(objs.len(), 15, "{:?}", objs.keys());
    assert_exact(&objs, &sent, ".jsonl.gz");
}

/// Records big enough for a multipart upload (over 5 MiB uncompressed, in 5 MiB parts).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_large_objects_use_multipart_and_read_back_whole() {
    let Some(s) = server() else { return };
    let prefix = unique("multipart");
    let cfg = s.config(
        &s.endpoint,
        &prefix,
        json!({"key": "all/part-{uuid}.jsonl", "compression": "none", "part_size": "5MiB"}),
    );
    let pad = "x".repeat(900);
    let batches: Vec<Vec<Record>> = (0..14_000)
        .collect::<Vec<usize>>()
        .chunks(500)
        .map(|c| {
            c.iter()
                .map(|i| rec(&format!(r#"{{"n":{i},"pad":"{pad}"}}"#)))
                .collect()
        })
        .collect();
    let sent: String = contents(&batches)
        .iter()
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(sent.len() > 12 * 1024 * 1024);
    let (failed, n, _) = run(&cfg, batches).await;
    assert!(failed.is_empty());
    assert_eq!(n, 14_000);
    let objs = objects(&*s.store(), &prefix, Compression::None).await;
    assert_eq!(objs.len(), 1);
    assert_eq!(
        objs.values().next().map(String::as_str),
        Some(sent.as_str())
    );
}

/// The server answers 500 to the first requests, then recovers: nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_500_then_recovery_loses_nothing() {
    let Some(s) = server() else { return };
    let upstream = s
        .endpoint
        .trim_start_matches("http://")
        .parse()
        .expect("host:port");
    let flaky = FlakyServer::start(
        Some(upstream),
        4,
        Answer::new(500, "<Error><Code>InternalError</Code></Error>"),
    )
    .await;
    let prefix = unique("flaky");
    let cfg = s.config(&flaky.url(), &prefix, json!({"key": KEY}));
    let mut tracker = AckTracker::new();
    let batches = readings(600, &mut tracker);
    let sent = contents(&batches);
    let (failed, n, f) = run(&cfg, batches).await;
    assert!(failed.is_empty());
    assert_eq!((n, f), (600, 0));
    all_acked(&mut tracker, 6, AckStatus::Delivered).await;
    assert_eq!(flaky.failed.load(std::sync::atomic::Ordering::SeqCst), 4);
    let objs = objects(&*s.store(), &prefix, Compression::Gzip).await;
    assert_exact(&objs, &sent, ".jsonl.gz");
}

/// The data directory of the s3s-fs server behind `endpoint` (its last argument, read from
/// /proc), to look at the uploads it keeps in progress (`.upload-<id>.json`). `None` when it
/// cannot be found (another server, no /proc).
fn s3s_data_dir(endpoint: &str) -> Option<std::path::PathBuf> {
    let port = endpoint.rsplit(':').next()?.trim_end_matches('/');
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(cmd) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmd
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let is_server = args.first().is_some_and(|a| a.ends_with("s3s-fs"))
            && args.windows(2).any(|w| w[0] == "--port" && w[1] == port);
        if is_server {
            return args.last().map(std::path::PathBuf::from);
        }
    }
    None
}

/// A part of a multipart upload fails twice (the server is overloaded): it is sent again (same
/// upload, same part number) until accepted, the upload completes, nothing is lost or
/// reported failed, and no upload is left in progress on the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_a_failed_part_is_sent_again_and_the_upload_completes() {
    let Some(s) = server() else { return };
    let upstream = s
        .endpoint
        .trim_start_matches("http://")
        .parse()
        .expect("host:port");
    let upload_ids = Arc::new(std::sync::Mutex::new(std::collections::BTreeSet::new()));
    let refused = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (ids, n2) = (upload_ids.clone(), refused.clone());
    let flaky = FlakyServer::start_with(
        Some(upstream),
        move |_, head| {
            let line = head.lines().next().unwrap_or_default();
            if let Some(id) = line
                .split(['?', '&', ' '])
                .find_map(|p| p.strip_prefix("uploadId="))
            {
                ids.lock().expect("ids").insert(id.to_owned());
            }
            line.starts_with("PUT ")
                && line.contains("partNumber=2")
                && n2.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < 2
        },
        Answer::new(503, "<Error><Code>SlowDown</Code></Error>"),
    )
    .await;
    let prefix = unique("refused-part");
    let cfg = s.config(
        &flaky.url(),
        &prefix,
        json!({"key": "all/part-{uuid}.jsonl", "compression": "none", "part_size": "5MiB"}),
    );
    let pad = "y".repeat(900);
    let mut tracker = AckTracker::new();
    let token = tracker.token(0);
    let records: Vec<Record> = (0..14_000)
        .map(|i| rec(&format!(r#"{{"n":{i},"pad":"{pad}"}}"#)).with_acks(Acks::one(token.clone())))
        .collect();
    drop(token);
    let sent: String = records
        .iter()
        .map(|r| {
            format!(
                "{}\n",
                String::from_utf8_lossy(r.raw_content().expect("raw"))
            )
        })
        .collect();
    let (failed, n, f) = run(&cfg, vec![records]).await;
    assert!(failed.is_empty());
    assert_eq!((n, f), (14_000, 0));
    all_acked(&mut tracker, 1, AckStatus::Delivered).await;
    assert_eq!(flaky.failed.load(std::sync::atomic::Ordering::SeqCst), 2);
    let objs = objects(&*s.store(), &prefix, Compression::None).await;
    assert_eq!(objs.len(), 1, "{:?}", objs.keys());
    assert_eq!(
        objs.values().next().map(String::as_str),
        Some(sent.as_str())
    );
    // One upload, completed: the refused part was sent again within it.
    let ids = upload_ids.lock().expect("ids").clone();
    assert_eq!(ids.len(), 1, "{ids:?}");
    match s3s_data_dir(&s.endpoint) {
        Some(dir) => {
            for id in &ids {
                let info = dir.join(format!(".upload-{id}.json"));
                assert!(!info.exists(), "upload {id} left in progress: {info:?}");
            }
        }
        None => eprintln!("s3s-fs data dir not found: uploads in progress not checked"),
    }
}

/// The server fails more requests than object_store's own retries cover (1 retry here):
/// the sink waits and tries again until it succeeds; nothing is lost or reported failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_outage_longer_than_the_request_retries_loses_nothing() {
    let Some(s) = server() else { return };
    let upstream = s
        .endpoint
        .trim_start_matches("http://")
        .parse()
        .expect("host:port");
    let flaky = FlakyServer::start(
        Some(upstream),
        6,
        Answer::new(503, "<Error><Code>SlowDown</Code></Error>"),
    )
    .await;
    let prefix = unique("outage");
    let cfg = s.config(
        &flaky.url(),
        &prefix,
        json!({"key": KEY, "max_retries": 1, "retry_max": "50ms"}),
    );
    let mut tracker = AckTracker::new();
    let batches = readings(300, &mut tracker);
    let sent = contents(&batches);
    let (failed, n, f) = run(&cfg, batches).await;
    assert!(failed.is_empty());
    assert_eq!((n, f), (300, 0));
    all_acked(&mut tracker, 3, AckStatus::Delivered).await;
    assert_eq!(flaky.failed.load(std::sync::atomic::Ordering::SeqCst), 6);
    let objs = objects(&*s.store(), &prefix, Compression::Gzip).await;
    assert_exact(&objs, &sent, ".jsonl.gz");
}

/// Run the sink over `batches` in the background; its result, the stop token and the failure
/// port.
fn spawn(
    cfg: &S3SinkConfig,
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

/// A wrong secret is refused (SignatureDoesNotMatch): retrying cannot fix it, so the flow
/// stops with the error; nothing goes to `failure` and nothing is acknowledged, so the source
/// does not commit past records never written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_wrong_credentials_stop_the_flow_and_acknowledge_nothing() {
    let Some(s) = server() else { return };
    let prefix = unique("badkey");
    let mut cfg = s.config(&s.endpoint, &prefix, json!({"key": KEY}));
    cfg.secret_access_key = Some("wrong".into());
    let mut tracker = AckTracker::new();
    let (task, _stop, mut failures) = spawn(&cfg, readings(200, &mut tracker));
    let e = tokio::time::timeout(std::time::Duration::from_secs(30), task)
        .await
        .expect("in time")
        .expect("joined")
        .expect_err("stops");
    assert!(e.to_string().contains("SignatureDoesNotMatch"), "{e}");
    assert!(crate::testing::records(&mut failures).await.is_empty());
    all_acked(&mut tracker, 2, AckStatus::Abandoned).await;
}

/// The server is down (connection refused): nothing is acknowledged while it is; asked to
/// stop, the sink gives up within bounds and acknowledges nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_a_server_that_is_down_acknowledges_nothing_and_a_stop_gives_up() {
    let Some(s) = server() else { return };
    let at = closed_addr();
    let cfg = s.config(
        &format!("http://{at}"),
        &unique("down"),
        json!({"key": KEY, "max_retries": 0, "max_idle": "100ms"}),
    );
    let mut tracker = AckTracker::new();
    let (task, stop, mut failures) = spawn(&cfg, readings(200, &mut tracker));
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert!(tracker.try_next().is_none(), "acknowledged while down");
    assert!(!task.is_finished());
    stop.cancel();
    let e = tokio::time::timeout(std::time::Duration::from_secs(10), task)
        .await
        .expect("a bounded stop")
        .expect("joined")
        .expect_err("gave up");
    assert!(matches!(e, ProcessorError::Stopped(_)), "{e}");
    assert!(crate::testing::records(&mut failures).await.is_empty());
    all_acked(&mut tracker, 2, AckStatus::Abandoned).await;
}

/// The server is down, then comes back where it was: every record is uploaded and read back,
/// each batch acknowledged only after its objects were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_a_server_down_then_back_loses_nothing() {
    let Some(s) = server() else { return };
    let upstream = s
        .endpoint
        .trim_start_matches("http://")
        .parse()
        .expect("host:port");
    let at = closed_addr();
    let prefix = unique("downup");
    let cfg = s.config(
        &format!("http://{at}"),
        &prefix,
        json!({"key": KEY, "max_retries": 0, "max_idle": "100ms"}),
    );
    let mut tracker = AckTracker::new();
    let batches = readings(300, &mut tracker);
    let sent = contents(&batches);
    let (task, _stop, mut failures) = spawn(&cfg, batches);
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert!(tracker.try_next().is_none(), "acknowledged while down");
    let _back = FlakyServer::start_on(
        &at.to_string(),
        Some(upstream),
        |_, _| false,
        Answer::new(500, ""),
    )
    .await;
    let deadline = std::time::Duration::from_secs(30);
    for _ in 0..3 {
        let f = tokio::time::timeout(deadline, tracker.next())
            .await
            .expect("acked in time")
            .expect("a batch");
        assert_eq!(f.status, AckStatus::Delivered);
    }
    assert!(crate::testing::records(&mut failures).await.is_empty());
    task.await.expect("joined").expect("runs");
    let objs = objects(&*s.store(), &prefix, Compression::Gzip).await;
    assert_exact(&objs, &sent, ".jsonl.gz");
}

/// On the local filesystem, an object that cannot be created (a file where its directory
/// should be: `ENOTDIR`) stops the flow; nothing is acknowledged.
#[tokio::test]
async fn file_an_object_that_cannot_be_created_stops_the_flow() {
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(dir.path().join("car-0"), "in the way").expect("blocker");
    let cfg: S3SinkConfig = config(json!({
        "url": format!("file://{}", dir.path().display()),
        "key": KEY,
    }));
    let mut tracker = AckTracker::new();
    let (task, _stop, mut failures) = spawn(&cfg, readings(200, &mut tracker));
    let e = tokio::time::timeout(std::time::Duration::from_secs(10), task)
        .await
        .expect("in time")
        .expect("joined")
        .expect_err("stops");
    assert!(e.to_string().contains("car-0"), "{e}");
    assert!(crate::testing::records(&mut failures).await.is_empty());
    all_acked(&mut tracker, 2, AckStatus::Abandoned).await;
}

/// Records at positions `range` of one source (a replayed `file`, a `window_aggregate` with
/// `state`), spread over three partitions in turn.
fn positioned(range: std::ops::Range<u64>) -> Vec<Record> {
    range
        .map(|n| {
            let p = ["a", "b", "c"][(n % 3) as usize];
            let mut r = rec(&format!(r#"{{"p":"{p}","n":{n}}}"#));
            r.origin = Some(flow_core::record::Origin { source: 1, seq: n });
            r
        })
        .collect()
}

/// Every record's `n` in the data objects (not the commit record), as often as it is there.
async fn numbers(store: &dyn ObjectStore, prefix: &str) -> Vec<u64> {
    let objs = objects(store, prefix, Compression::None).await;
    let mut out: Vec<u64> = objs
        .iter()
        .filter(|(k, _)| !k.starts_with("_flow/"))
        .flat_map(|(_, text)| text.lines().map(str::to_owned).collect::<Vec<_>>())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(&l).expect("json");
            v["n"].as_u64().expect("n")
        })
        .collect();
    out.sort_unstable();
    out
}

/// Run the sink over `records` (in batches of 5) and abort it, as a `kill -9` would, once
/// `sent` records are in completed objects. What went to `failure` stays there unfinished
/// until then.
async fn run_then_kill(cfg: &S3SinkConfig, records: Vec<Record>, sent: u64) {
    let (ctx, tx, _failures, metrics) = sink_ctx();
    let run = tokio::spawn(sink(cfg).run(ctx));
    for chunk in records.chunks(5) {
        tx.send(chunk.to_vec()).await.expect("queued");
    }
    while metrics.snapshot().sent < sent {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    run.abort();
    let _ = run.await;
}

/// A `kill -9` with objects completed and others open, then a restart that replays the input
/// from its start (the worst case: the source committed nothing): every record is in exactly
/// one object. Before the commit record, the replay wrote 0..18 a second time.
async fn killed_then_replayed_writes_each_record_once(
    cfg: &S3SinkConfig,
    store: &dyn ObjectStore,
    prefix: &str,
) {
    // Run 1: 20 records; with 3 records an object, each partition completes two objects
    // (0..18) and a, b keep 18 and 19 open. Killed once those 18 are acknowledged.
    run_then_kill(cfg, positioned(0..20), 18).await;
    assert_eq!(numbers(store, prefix).await, (0..18).collect::<Vec<_>>());
    // Run 2: everything replayed, then more, then the end of the input.
    let (ctx, tx, _failures, metrics) = sink_ctx();
    let run = tokio::spawn(sink(cfg).run(ctx));
    for chunk in positioned(0..26).chunks(4) {
        tx.send(chunk.to_vec()).await.expect("queued");
    }
    drop(tx);
    run.await.expect("joined").expect("runs");
    let m = metrics.snapshot();
    assert_eq!(
        (m.sent, m.dropped),
        (8, 18),
        "18 skipped as written, 8 written"
    );
    assert_eq!(numbers(store, prefix).await, (0..26).collect::<Vec<_>>());
}

fn exactly_once_extra() -> serde_json::Value {
    json!({
        "key": "{p}/part-{uuid}.jsonl",
        "compression": "none",
        "max_records": 3,
        "max_idle": "1h",
        "max_age": "1h",
    })
}

/// The exactly-once config over a `file://` folder.
fn file_exactly_once(dir: &std::path::Path) -> S3SinkConfig {
    let mut c = exactly_once_extra();
    c["url"] = json!(format!("file://{}", dir.display()));
    config(c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_a_kill_then_a_replay_writes_each_record_once() {
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = file_exactly_once(dir.path());
    let store = object_store::local::LocalFileSystem::new_with_prefix(dir.path()).expect("fs");
    killed_then_replayed_writes_each_record_once(&cfg, &store, "").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_a_kill_then_a_replay_writes_each_record_once() {
    let Some(s) = server() else { return };
    let prefix = unique("exactly-once");
    let cfg = s.config(&s.endpoint, &prefix, exactly_once_extra());
    killed_then_replayed_writes_each_record_once(&cfg, &*s.store(), &prefix).await;
}

/// An object completed by an upload whose commit the crash prevented is still `pending` in the
/// commit record: the restart deletes it, and its records (never acknowledged) are written
/// again, once.
#[tokio::test]
async fn file_a_pending_object_is_deleted_on_restart() {
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = file_exactly_once(dir.path());
    std::fs::create_dir_all(dir.path().join("_flow")).expect("dir");
    std::fs::create_dir_all(dir.path().join("a")).expect("dir");
    // 0..3 are in a completed object the commit covers (`written`), 4 (partition b) in one
    // the commit lists as done; `a/part-x.jsonl` (3, 6, 9) was uploaded, then the crash.
    std::fs::write(dir.path().join("a/part-0.jsonl"), "{\"p\":\"a\",\"n\":0}\n").expect("seed");
    std::fs::write(
        dir.path().join("a/part-x.jsonl"),
        "{\"p\":\"a\",\"n\":3}\n{\"p\":\"a\",\"n\":6}\n{\"p\":\"a\",\"n\":9}\n",
    )
    .expect("seed");
    std::fs::write(
        dir.path().join("b-4.jsonl"),
        "{\"p\":\"b\",\"n\":1}\n{\"p\":\"b\",\"n\":2}\n{\"p\":\"b\",\"n\":4}\n",
    )
    .expect("seed");
    std::fs::write(
        dir.path().join("_flow/under_test.commit"),
        r#"{"written":{"1":2},"done":{"1":[[4,4]]},"pending":["a/part-x.jsonl"]}"#,
    )
    .expect("seed");
    let (ctx, tx, _failures, metrics) = sink_ctx();
    tx.send(positioned(0..12)).await.expect("queued");
    drop(tx);
    sink(&cfg).run(ctx).await.expect("runs");
    assert!(!dir.path().join("a/part-x.jsonl").exists(), "deleted");
    let m = metrics.snapshot();
    assert_eq!((m.sent, m.dropped), (8, 4), "0..=2 and 4 skipped");
    let store = object_store::local::LocalFileSystem::new_with_prefix(dir.path()).expect("fs");
    assert_eq!(numbers(&store, "").await, (0..12).collect::<Vec<_>>());
}

/// `positioned`, but the record at 4 has no partition: its key cannot be made.
fn positioned_with_keyless_4(range: std::ops::Range<u64>) -> Vec<Record> {
    positioned(range)
        .into_iter()
        .map(|r| match r.origin {
            Some(o) if o.seq == 4 => {
                let mut keyless = rec(r#"{"n":4}"#);
                keyless.origin = Some(o);
                keyless
            }
            _ => r,
        })
        .collect()
}

/// The next batch on the failure port, its records finished (delivered) by the test.
async fn next_failed(failures: &mut flow_core::runtime::edge::EdgeReceiver) -> Vec<String> {
    let batch = tokio::time::timeout(std::time::Duration::from_secs(10), failures.recv())
        .await
        .expect("a failure in time")
        .expect("a batch");
    batch
        .into_iter()
        .map(|mut r| {
            r.take_acks().release();
            String::from_utf8_lossy(r.raw_content().expect("raw")).into_owned()
        })
        .collect()
}

/// A record sent to `failure` (its key cannot be made) holds the commit back until the
/// `failure` path has finished it. Killed before that, a replay sends it to `failure` again;
/// before, the commit passed its position once later objects completed, and the replay skipped
/// it: lost. Finished, a replay skips it like the records written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_a_failed_record_unfinished_at_a_kill_goes_to_failure_again() {
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = file_exactly_once(dir.path());
    let store = object_store::local::LocalFileSystem::new_with_prefix(dir.path()).expect("fs");
    // Run 1: 0..20; 4 fails and stays on the failure edge, unfinished. Every partition
    // completes two objects (18 records), `a` keeps 18 open. Killed then.
    run_then_kill(&cfg, positioned_with_keyless_4(0..20), 18).await;
    let mut written: Vec<u64> = (0..20).filter(|&n| n != 4 && n != 18).collect();
    written.sort_unstable();
    assert_eq!(numbers(&store, "").await, written);
    // Run 2: the input replayed from its start: 4 goes to `failure` again, and is finished
    // there this time; 18, 19 and more are written.
    let (ctx, tx, mut failures, metrics) = sink_ctx();
    let run = tokio::spawn(sink(&cfg).run(ctx));
    for chunk in positioned_with_keyless_4(0..26).chunks(4) {
        tx.send(chunk.to_vec()).await.expect("queued");
    }
    assert_eq!(next_failed(&mut failures).await, vec![r#"{"n":4}"#]);
    drop(tx);
    run.await.expect("joined").expect("runs");
    let m = metrics.snapshot();
    assert_eq!(
        (m.sent, m.dropped),
        (7, 18),
        "18 skipped as written, 7 written"
    );
    let all: Vec<u64> = (0..26).filter(|&n| n != 4).collect();
    assert_eq!(numbers(&store, "").await, all);
    // Run 3: everything again: all of it skipped, nothing goes to `failure`.
    let (ctx, tx, mut failures, metrics) = sink_ctx();
    tx.send(positioned_with_keyless_4(0..26))
        .await
        .expect("queued");
    drop(tx);
    sink(&cfg).run(ctx).await.expect("runs");
    assert!(crate::testing::records(&mut failures).await.is_empty());
    assert_eq!(metrics.snapshot().sent, 0);
    assert_eq!(numbers(&store, "").await, all);
}
