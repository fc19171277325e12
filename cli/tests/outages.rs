//! Servers going away: each server a flow talks to (Mosquitto, tansu, s3s-fs, VictoriaMetrics)
//! is down when the flow starts, comes up, is stopped mid-stream and started again. Nothing is
//! lost, the flow resumes by itself, and each outage burst costs the flow's log one clear
//! warning, not one per retry.
//!
//! Every test starts servers of its own on free ports (stopping the suite's shared ones would
//! break the tests running beside it), from the binaries `scripts/services.sh` installs and
//! names (`FLOW_TEST_MOSQUITTO`, `FLOW_TEST_TANSU`, `FLOW_TEST_S3S_FS`,
//! `FLOW_TEST_VICTORIA_METRICS`). Like the other server tests they skip outside CI when the
//! suite's server is not there, and fail in CI.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::{
    Flow, Server, binary, counts, free_port, mosquitto, publish_numbers, read_kafka, server,
    unique, wait_for, write,
};
use futures::TryStreamExt;
use object_store::{ObjectStore, ObjectStoreExt};

/// The flow's warnings (one line each).
fn warnings(log: &str) -> Vec<&str> {
    log.lines().filter(|l| l.contains(" WARN ")).collect()
}

/// At most this many warnings per outage burst: the first failure's line (and a reminder a
/// minute later, which these short outages never reach), however many attempts fail.
const WARNINGS_PER_OUTAGE: usize = 2;

/// The outage dance around a running flow: the server is down at the start until the flow
/// warns; it comes up until `progress` (what reached it so far) passes `stop_at`;
/// with `mid_stream` it goes down until the flow warns again and comes up again; then until
/// `progress` reaches `total` (or the flow ends). Then the warnings are checked: one burst
/// per outage, a few lines each. Returns the flow's log.
fn outages(
    flow: &mut Flow,
    server: &mut Server,
    (stop_at, total): (u64, u64),
    mid_stream: bool,
    progress: impl Fn(&Flow) -> u64,
) -> String {
    wait_for(60, "the warning of the server down at start", || {
        !warnings(&flow.log()).is_empty()
    });
    let first = warnings(&flow.log()).len();
    server.start();
    let deadline = Instant::now() + Duration::from_secs(120);
    while progress(flow) < stop_at {
        assert!(
            Instant::now() < deadline,
            "{} of {stop_at} records 120 s after the start:\n{}",
            progress(flow),
            flow.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let at_stop = progress(flow);
    let bursts = if mid_stream { 2 } else { 1 };
    if mid_stream {
        stop_mid_stream(flow, server, first, total, at_stop);
    }
    let deadline = Instant::now() + Duration::from_secs(240);
    // Until everything is there, or the flow has ended (the test then reads what is there).
    while progress(flow) < total && flow.child.try_wait().ok().flatten().is_none() {
        assert!(
            Instant::now() < deadline,
            "{} of {total} records after the restart:\n{}",
            progress(flow),
            flow.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let log = flow.log();
    let w = warnings(&log);
    eprintln!(
        "{} warnings for {bursts} outages (at {at_stop} of {total} records):\n{}",
        w.len(),
        w.join("\n")
    );
    assert!(
        w.len() <= bursts * WARNINGS_PER_OUTAGE,
        "not one line per outage burst: {} warnings\n{log}",
        w.len()
    );
    log
}

/// Stop the server (SIGTERM), wait for the flow's warning, start it again.
fn stop_mid_stream(flow: &Flow, server: &mut Server, first: usize, total: u64, at_stop: u64) {
    server.stop();
    assert!(at_stop < total, "the stop was not mid-stream: {at_stop}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while warnings(&flow.log()).len() <= first {
        assert!(
            Instant::now() < deadline,
            "no warning of the server stopped mid-stream in 60 s:\n{}",
            flow.log()
                .lines()
                .filter(|l| !l.contains("TRACE") && !l.contains("generate"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    server.start();
}

/// `generate` (`{"n": i}`, i = 0..COUNT at RATE/s, default 300) into the sink `SINK` (YAML, indented).
fn generate_into(dir: &Path, sink: &str) -> PathBuf {
    write(
        dir,
        "flow.yaml",
        &format!(
            r#"
name: outage
processors:
  numbers:
    type: generate
    preset: sequence
    count: ${{COUNT}}
    rate: ${{RATE:-300}}
    batch_size: 10
{sink}
connections:
  - numbers -> out
"#
        ),
    )
}

const COUNT: u64 = 3_000;

/// An s3s-fs of the test's own over `dir` (a bucket is a directory under it).
fn s3s_fs(dir: &Path, port: u16, buckets: &[&str]) -> Server {
    for b in buckets {
        std::fs::create_dir_all(dir.join(b)).expect("bucket");
    }
    let (bin, dir) = (binary("FLOW_TEST_S3S_FS", "s3s-fs"), dir.to_owned());
    Server::new(port, move || {
        let mut c = Command::new(&bin);
        c.args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", "outage", "--secret-key", "outagesecret"])
            .arg(&dir);
        c
    })
}

/// Every JSON line under `bucket` of the s3s-fs on `port`, `n` -> how many times.
fn s3_counts(port: u16, bucket: &str) -> HashMap<u64, u32> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let store = object_store::aws::AmazonS3Builder::new()
        .with_endpoint(format!("http://127.0.0.1:{port}"))
        .with_allow_http(true)
        .with_bucket_name(bucket)
        .with_region("us-east-1")
        .with_access_key_id("outage")
        .with_secret_access_key("outagesecret")
        .build()
        .expect("client");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut got = HashMap::new();
    rt.block_on(async {
        let Ok(metas) = store.list(None).try_collect::<Vec<_>>().await else {
            return;
        };
        for m in metas {
            let Ok(r) = store.get(&m.location).await else {
                continue;
            };
            let Ok(data) = r.bytes().await else { continue };
            for l in String::from_utf8_lossy(&data).lines() {
                let v: serde_json::Value = serde_json::from_str(l).expect("json");
                *got.entry(v["n"].as_u64().expect("n")).or_insert(0) += 1;
            }
        }
    });
    got
}

/// The flow's sink `s3_sink`: s3s-fs down at start, stopped and restarted mid-stream.
#[test]
fn s3_down_at_start_and_restarted_mid_stream_loses_nothing() {
    let Some(_) = server("FLOW_TEST_S3_ENDPOINT", "s3s-fs") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    let port = free_port();
    let mut s3 = s3s_fs(&d.join("data"), port, &["out"]);
    let file = generate_into(
        d,
        r#"
  out:
    type: s3_sink
    url: s3://out/
    endpoint: ${S3_ENDPOINT}
    key: "part-{uuid}.jsonl"
    format: json
    compression: none
    max_records: 100
    max_idle: 1s
    retry_max: 1s"#,
    );
    let (endpoint, count) = (format!("http://127.0.0.1:{port}"), COUNT.to_string());
    let mut flow = Flow::start(
        &file,
        d,
        "flow",
        &[
            ("COUNT", count.as_str()),
            ("S3_ENDPOINT", endpoint.as_str()),
            ("AWS_ACCESS_KEY_ID", "outage"),
            ("AWS_SECRET_ACCESS_KEY", "outagesecret"),
        ],
    );
    let progress = |_: &Flow| s3_counts(port, "out").len() as u64;
    outages(&mut flow, &mut s3, (COUNT / 3, COUNT), true, progress);
    assert!(flow.wait(60), "the flow ends by itself");
    let got = s3_counts(port, "out");
    assert!((0..COUNT).all(|n| got.contains_key(&n)), "records lost");
}

/// The `chaos_n`-like samples of `name` in the VictoriaMetrics on `port`: `n` -> samples.
fn vm_counts(port: u16, name: &str) -> HashMap<u64, u32> {
    let url = format!("http://127.0.0.1:{port}");
    let _ = Command::new("curl")
        .args(["-sf", &format!("{url}/internal/force_flush")])
        .output();
    let mut got = HashMap::new();
    let Ok(out) = Command::new("curl")
        .args([
            "-sf",
            &format!("{url}/api/v1/export"),
            "--data-urlencode",
            &format!("match[]={{__name__=\"{name}\"}}"),
        ])
        .output()
    else {
        return got;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        for x in v["values"].as_array().into_iter().flatten() {
            if let Some(x) = x.as_f64() {
                *got.entry(x as u64).or_insert(0) += 1;
            }
        }
    }
    got
}

/// The flow's sink `influxdb_sink`: VictoriaMetrics down at start, stopped and restarted
/// mid-stream (its data directory stays).
#[test]
fn influx_down_at_start_and_restarted_mid_stream_loses_nothing() {
    let Some(_) = server("FLOW_TEST_INFLUX_URL", "VictoriaMetrics") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    let port = free_port();
    let (bin, data) = (
        binary("FLOW_TEST_VICTORIA_METRICS", "victoria-metrics"),
        d.join("vm"),
    );
    let mut vm = Server::new(port, move || {
        let mut c = Command::new(&bin);
        c.arg(format!("-httpListenAddr=127.0.0.1:{port}"))
            .arg(format!("-storageDataPath={}", data.display()))
            .args(["-retentionPeriod=100y", "-search.latencyOffset=0s"]);
        c
    });
    let file = generate_into(
        d,
        r#"
  at:
    type: remap
    source: .ts = 1700000000000 + int!(.n)
  out:
    type: influxdb_sink
    url: ${INFLUX_URL}
    org: flow
    bucket: outage
    measurement: outage
    fields: [n]
    timestamp: ts
    timestamp_unit: ms
    precision: ms
    batch_timeout: 200ms
    retry_max: 1s"#,
    )
    .to_owned();
    // generate -> at -> out.
    let text = std::fs::read_to_string(&file).expect("flow");
    std::fs::write(
        &file,
        text.replace("  - numbers -> out", "  - numbers -> at\n  - at -> out"),
    )
    .expect("flow");
    let (url, count) = (format!("http://127.0.0.1:{port}"), COUNT.to_string());
    let mut flow = Flow::start(
        &file,
        d,
        "flow",
        &[("COUNT", count.as_str()), ("INFLUX_URL", url.as_str())],
    );
    let progress = |_: &Flow| vm_counts(port, "outage_n").len() as u64;
    outages(&mut flow, &mut vm, (COUNT / 3, COUNT), true, progress);
    assert!(flow.wait(60), "the flow ends by itself");
    let got = vm_counts(port, "outage_n");
    assert!((0..COUNT).all(|n| got.contains_key(&n)), "records lost");
}

/// The flow's sink `kafka_sink`: tansu down at start; nothing lost, one warning.
#[test]
fn kafka_down_at_start_loses_nothing() {
    kafka_outages(false);
}

/// The flow's sink `kafka_sink`: tansu down at start, stopped (SIGTERM) and restarted
/// mid-stream.
///
/// Ignored while the broker is tansu 0.6: stopped while the flow produces, it loses a batch it
/// had given offsets to (seen on 2026-12-03: records 1564..=1573 but 1568 and 1569 missing, at
/// offsets 782..=789 of partition 1, which have no batch in tansu's storage although later
/// offsets do; the flow logged no failed delivery). Run it on a broker that keeps what it
/// acknowledged (`cargo nextest run --run-ignored all -E 'test(kafka_down_at_start_and)'`).
#[test]
#[ignore = "tansu 0.6 stopped mid-produce loses a batch it gave offsets to"]
fn kafka_down_at_start_and_restarted_mid_stream_loses_nothing() {
    kafka_outages(true);
}

/// tansu keeps its topics in an s3s-fs of the test's own (its in-memory storage would forget
/// them at a restart).
fn kafka_outages(mid_stream: bool) {
    let Some(_) = server("FLOW_TEST_KAFKA_BROKERS", "the Kafka broker (tansu)") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    let (_storage, mut tansu, brokers) = tansu_on_s3(d);
    let topic = unique("outage");
    let file = generate_into(
        d,
        r#"
  out:
    type: kafka_sink
    brokers: ${KAFKA_BROKERS}
    topic: ${TOPIC}
    key: .n
    create_topic: { partitions: 2 }"#,
    );
    let count = COUNT.to_string();
    let mut flow = Flow::start(
        &file,
        d,
        "flow",
        &[
            ("COUNT", count.as_str()),
            // Slower with a stop: the reader lags the flow by a second or more, and the stop
            // must come while the flow still has records to deliver.
            ("RATE", if mid_stream { "100" } else { "300" }),
            ("KAFKA_BROKERS", brokers.as_str()),
            ("TOPIC", topic.as_str()),
        ],
    );
    // What the flow has written so far, read all along by a consumer of the test's (which
    // reconnects by itself across the outage).
    let seen = Arc::new(Mutex::new(HashMap::<u64, u32>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (seen, stop, brokers, topic) =
            (seen.clone(), stop.clone(), brokers.clone(), topic.clone());
        std::thread::spawn(move || {
            use rdkafka::Message;
            use rdkafka::consumer::{BaseConsumer, Consumer};
            let consumer: BaseConsumer = rdkafka::ClientConfig::new()
                .set("bootstrap.servers", &brokers)
                .set("group.id", unique("outage-reader"))
                .set("auto.offset.reset", "earliest")
                .set("enable.auto.commit", "false")
                .set("topic.metadata.refresh.interval.ms", "1000")
                .create()
                .expect("consumer");
            consumer.subscribe(&[&topic]).expect("subscribed");
            while !stop.load(Ordering::SeqCst) {
                if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
                    let v: serde_json::Value =
                        serde_json::from_slice(m.payload().unwrap_or_default()).expect("JSON");
                    *seen
                        .lock()
                        .expect("lock")
                        .entry(v["n"].as_u64().expect("n"))
                        .or_insert(0) += 1;
                }
            }
        })
    };
    let progress = |_: &Flow| seen.lock().expect("lock").len() as u64;
    let log = outages(
        &mut flow,
        &mut tansu,
        (COUNT / 3, COUNT),
        mid_stream,
        progress,
    );
    assert!(flow.wait(60), "the flow ends by itself");
    stop.store(true, Ordering::SeqCst);
    reader.join().expect("reader");
    // Read again from the start: what the broker holds after its restart.
    let got = read_kafka(&brokers, &topic, 120, |g| {
        (0..COUNT).all(|n| g.contains_key(&n))
    });
    let lost: Vec<u64> = (0..COUNT).filter(|n| !got.contains_key(n)).collect();
    let failures: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("ERROR") || l.contains("fail") && !l.contains("Connect to"))
        .collect();
    assert!(
        lost.is_empty(),
        "records lost: {lost:?}; the flow's failures:\n{}",
        failures.join("\n")
    );
}

/// A tansu of the test's own, not started, that keeps its topics in an s3s-fs of the test's
/// own (started) over `dir` (its in-memory storage would forget them at a restart): the
/// storage, the broker and its address.
fn tansu_on_s3(d: &Path) -> (Server, Server, String) {
    let s3_port = free_port();
    let mut storage = s3s_fs(&d.join("data"), s3_port, &["tansu"]);
    storage.start();
    let port = free_port();
    let bin = binary("FLOW_TEST_TANSU", "tansu");
    let tansu = Server::new(port, move || {
        let url = format!("tcp://127.0.0.1:{port}");
        let mut c = Command::new(&bin);
        c.args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
        ])
        .args(["--storage-engine", "s3://tansu/"])
        .env("AWS_ENDPOINT", format!("http://127.0.0.1:{s3_port}"))
        .env("AWS_ACCESS_KEY_ID", "outage")
        .env("AWS_SECRET_ACCESS_KEY", "outagesecret")
        .env("AWS_ALLOW_HTTP", "true")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_REGION", "us-east-1");
        c
    });
    (storage, tansu, format!("127.0.0.1:{port}"))
}

/// The flow's source `kafka_source`: tansu down at start, stopped and restarted mid-stream
/// while the flow reads a topic written before; the flow resumes from its group's commits. The
/// regression test of the silent second outage (`kafka_source` did not end its error burst).
///
/// It was ignored: beside the other server tests the flow, started while tansu was down,
/// sometimes never got a partition once tansu came up. The likely cause: under load the
/// consumer joined before the restarted tansu listed the topic again, and librdkafka looks at
/// a subscribed topic's metadata again only every 5 minutes by default; the flow now asks every
/// second (`topic.metadata.refresh.interval.ms`).
#[test]
fn kafka_source_down_at_start_and_restarted_mid_stream_loses_nothing() {
    let Some(_) = server("FLOW_TEST_KAFKA_BROKERS", "the Kafka broker (tansu)") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    let (_storage, mut tansu, brokers) = tansu_on_s3(d);
    let (topic, group) = (unique("outage-src"), unique("outage-src"));
    let total = 1_500u64;
    tansu.start();
    let producer_dir = d.join("producer");
    std::fs::create_dir_all(&producer_dir).expect("dir");
    let producer = generate_into(
        &producer_dir,
        r#"
  out:
    type: kafka_sink
    brokers: ${KAFKA_BROKERS}
    topic: ${TOPIC}
    key: .n
    create_topic: { partitions: 2 }
    # Not idempotent: tansu 0.6 keeps producer ids and sequences in one object of its S3 store,
    # updated by read-modify-write, and over s3s-fs concurrent updates lose each other (a
    # topic created beside a producer id vanished; then only `UnknownProducerId`).
    idempotent: false
    # A record per batch: tansu 0.6 answers a fetch from an offset inside a batch with nothing
    # (its S3 store) or the next batch (its memory store), where Kafka returns the batch holding
    # it, so a consumer resuming mid-batch, after a pause or tansu's restart, would stall or
    # skip records (bench/kafka-pause.sh). Its S3 store reads an object per batch, hence few
    # records.
    properties: { batch.num.messages: "1" }"#,
    );
    let count = total.to_string();
    let mut p = Flow::start(
        &producer,
        &producer_dir,
        "producer",
        &[
            ("COUNT", count.as_str()),
            ("RATE", "1000000"),
            ("KAFKA_BROKERS", brokers.as_str()),
            ("TOPIC", topic.as_str()),
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    while p.child.try_wait().ok().flatten().is_none() {
        assert!(
            Instant::now() < deadline,
            "the producer did not finish in 120 s:\n{}",
            p.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // It has exited: its log is whole.
    let log = p.log();
    assert!(p.wait(1), "the producer failed:\n{log}");
    tansu.stop();
    let file = write(
        d,
        "flow.yaml",
        r#"
name: outage-kafka-source
processors:
  src:
    type: kafka_source
    brokers: ${KAFKA_BROKERS}
    group: ${GROUP}
    topics: ["${TOPIC}"]
    batch_size: 100
    commit_interval: 200ms
    # The topic's metadata again every second, not every 5 minutes (librdkafka's default):
    # a consumer that joined while tansu, restarted, did not list the topic yet would
    # otherwise wait that long for its partitions.
    properties: { topic.metadata.refresh.interval.ms: "1000" }
  out:
    type: file_sink
    path: ${OUT_DIR}/out.jsonl
    sync: true
connections:
  - src -> out
"#,
    );
    let out_dir = d.display().to_string();
    let mut flow = Flow::start(
        &file,
        d,
        "flow",
        &[
            ("KAFKA_BROKERS", brokers.as_str()),
            ("TOPIC", topic.as_str()),
            ("GROUP", group.as_str()),
            ("OUT_DIR", out_dir.as_str()),
        ],
    );
    let out = d.join("out.jsonl");
    let progress = |_: &Flow| counts(&out).len() as u64;
    outages(&mut flow, &mut tansu, (500, total), true, progress);
    assert!(flow.stop(), "the flow stops cleanly");
    let got = counts(&out);
    assert!((0..total).all(|n| got.contains_key(&n)), "records lost");
}

/// The flow's source `mqtt_source`: Mosquitto down at start, stopped and restarted mid-stream
/// (with persistence, so the session and its queued messages survive the restart).
#[test]
fn mqtt_down_at_start_and_restarted_mid_stream_loses_nothing() {
    let Some(_) = server("FLOW_TEST_MQTT_URL", "Mosquitto") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    let port = free_port();
    let mut broker = mosquitto(d, port, "allow_anonymous true\npersistence true");
    let file = write(
        d,
        "flow.yaml",
        r#"
name: outage-mqtt
processors:
  src:
    type: mqtt_source
    url: ${MQTT_URL}
    topics: ["outage/n"]
    client_id: outage
    reconnect_max: 1s
  out:
    type: file_sink
    path: ${OUT_DIR}/out.jsonl
    sync: true
connections:
  - src -> out
"#,
    );
    let (url, out_dir) = (format!("mqtt://127.0.0.1:{port}"), d.display().to_string());
    let env = [("MQTT_URL", url.as_str()), ("OUT_DIR", out_dir.as_str())];
    // The session first, then the messages queued for it, kept by the broker through its stop.
    broker.start();
    let first = Flow::start(&file, d, "first", &env);
    wait_for(30, "the subscription", || {
        first.log().contains("subscribed")
    });
    assert!(first.stop(), "the first run stops cleanly");
    let total = 10_000u64;
    publish_numbers(&url, "outage/n", 0..total, &[]);
    broker.stop();
    let out = d.join("out.jsonl");
    let mut flow = Flow::start(&file, d, "flow", &env);
    let progress = |_: &Flow| counts(&out).len() as u64;
    outages(&mut flow, &mut broker, (500, total), true, progress);
    assert!(flow.stop(), "the flow stops cleanly");
    let got = counts(&out);
    assert!((0..total).all(|n| got.contains_key(&n)), "records lost");
}
