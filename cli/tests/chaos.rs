//! Chaos: `kill -9` of `flow run` at random moments, restarted each time, while data keeps
//! arriving, for four pipelines against the real servers `scripts/test.sh` starts:
//!
//! - MQTT (Mosquitto, QoS 1, a publisher sending numbered messages) -> filter -> Kafka (tansu);
//! - file -> `window_aggregate` with `state` -> `s3_sink` (s3s-fs), windows checked against an
//!   oracle computed here;
//! - `http_server` with `ack: delivered` -> Kafka (the client retries until its POST is
//!   acknowledged);
//! - Kafka -> remap -> `influxdb_sink` (VictoriaMetrics).
//!
//! After the kills a last run (never killed) catches up; then every input record must be in the
//! output (zero lost), and the repeats are counted and printed (at-least-once allows them). Each
//! test prints a row `| scenario | kills | records | lost | duplicates |`.
//!
//! `CHAOS_KILLS` sets the kills per scenario (default 2, so the suite stays fast; the table in
//! `docs/reliability.md` is from 20), `CHAOS_SEED` the seed of the random kill moments (printed
//! by every test, to reproduce a run):
//!
//! ```text
//! . scripts/services.sh; start_tansu; start_mosquitto; start_victoria_metrics; start_s3
//! CHAOS_KILLS=20 cargo test -p flow-cli --test integration chaos:: -- --nocapture --test-threads 1
//! ```

use crate::common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::common::{Flow, ranges, read_kafka, server, unique, wait_for, write};
use futures::TryStreamExt;
use object_store::{ObjectStore, ObjectStoreExt};

/// Kills per scenario: `CHAOS_KILLS`, default 2.
fn kills() -> usize {
    std::env::var("CHAOS_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2)
}

/// The scenario's directory (flow files, logs, state); kept when `CHAOS_KEEP` is set.
fn workdir() -> tempfile::TempDir {
    let mut b = tempfile::Builder::new();
    b.prefix("chaos-");
    if std::env::var_os("CHAOS_KEEP").is_some() {
        b.disable_cleanup(true);
    }
    let dir = b.tempdir().expect("tmp");
    eprintln!("chaos: working in {}", dir.path().display());
    dir
}

/// SplitMix64: small, seeded, reproducible.
struct Rng(u64);

impl Rng {
    /// The seed from `CHAOS_SEED` (else the clock), printed with the scenario's name.
    fn new(scenario: &str) -> Rng {
        let seed = std::env::var("CHAOS_SEED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            });
        eprintln!("chaos {scenario}: seed {seed} (CHAOS_SEED={seed} reproduces the kill moments)");
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A moment to kill at, in `[from, to)` ms after the start (startup included).
    fn moment(&mut self, (from, to): (u64, u64)) -> Duration {
        Duration::from_millis(from + self.next() % (to - from))
    }
}

/// The scenario's table row, printed.
fn row(scenario: &str, kills: usize, records: usize, lost: usize, duplicates: u64) {
    eprintln!("| {scenario} | {kills} | {records} | {lost} | {duplicates} |");
}

/// Start the flow, kill it at a random moment (in `range`, ms), `kills` times (calling `between` before each
/// start); a run that ended by itself before its moment is not counted as a kill. A run for
/// which `between` returns true is left to end by itself (a finite input read to its end, then
/// more input for the next run: the end of input is a stop the state must survive too).
/// Returns the kills done.
fn kill_loop(
    file: &Path,
    dir: &Path,
    env: &[(&str, &str)],
    kills: usize,
    rng: &mut Rng,
    range: (u64, u64),
    mut between: impl FnMut(usize) -> bool,
) -> usize {
    let mut done = 0;
    let mut run = 0;
    // Runs left to end by themselves (not kills, nor a sign that kills come too late).
    let mut planned = 0;
    while done < kills {
        let to_end = between(run);
        let mut flow = Flow::start(file, dir, &format!("run-{run}"), env);
        run += 1;
        if to_end {
            let log = dir.join(format!("run-{}.log", run - 1));
            assert!(
                flow.wait(300),
                "run {run}, left to end by itself, failed or did not end:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            eprintln!("run {run} ended by itself, as planned");
            planned += 1;
            continue;
        }
        let moment = rng.moment(range);
        let started = Instant::now();
        let mut ended = false;
        while started.elapsed() < moment {
            if let Some(status) = flow.child.try_wait().ok().flatten() {
                assert!(
                    status.success(),
                    "run {run} failed: {status}\n{}",
                    flow.log()
                );
                eprintln!(
                    "run {run} ended by itself after {:?}, before its kill at {moment:?}",
                    started.elapsed()
                );
                ended = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        if !ended {
            done += 1;
        }
        flow.kill_9();
        assert!(
            run - planned < kills * 5 + 10,
            "the flow keeps ending by itself"
        );
    }
    done
}

/// Lost (wanted, not there) and duplicates (copies beyond the first) of `got`.
fn tally(want: impl Iterator<Item = u64>, got: &HashMap<u64, u32>) -> (usize, u64) {
    let lost: Vec<u64> = want.filter(|n| !got.contains_key(n)).collect();
    if !lost.is_empty() {
        eprintln!("lost: {}", ranges(&lost));
    }
    let lost = lost.len();
    let dups = got.values().map(|k| u64::from(k - 1)).sum();
    (lost, dups)
}

/// MQTT (QoS 1, a publisher sending numbered messages all along) -> filter -> Kafka.
#[test]
fn mqtt_to_kafka_survives_kill_9() {
    let Some(mqtt) = server("FLOW_TEST_MQTT_URL", "Mosquitto") else {
        return;
    };
    let Some(brokers) = server("FLOW_TEST_KAFKA_BROKERS", "the Kafka broker (tansu)") else {
        return;
    };
    let mut rng = Rng::new("mqtt -> filter -> kafka");
    let dir = workdir();
    let d = dir.path();
    let (mqtt_topic, topic, client) = (
        unique("chaos/mqtt"),
        unique("chaos-mqtt"),
        unique("chaos-mqtt"),
    );
    let file = write(
        d,
        "flow.yaml",
        r#"
name: chaos-mqtt-kafka
processors:
  src:
    type: mqtt_source
    url: ${MQTT_URL}
    topics: ["${MQTT_TOPIC}"]
    client_id: ${CLIENT_ID}
    qos: 1
    reconnect_max: 1s
  keep:
    type: filter
    condition: .drop != true
  kafka:
    type: kafka_sink
    brokers: ${KAFKA_BROKERS}
    topic: ${TOPIC}
    key: .n
    create_topic: { partitions: 4 }
connections:
  - src -> keep
  - keep.matched -> kafka
"#,
    );
    let env = [
        ("MQTT_URL", mqtt.as_str()),
        ("MQTT_TOPIC", mqtt_topic.as_str()),
        ("CLIENT_ID", client.as_str()),
        ("KAFKA_BROKERS", brokers.as_str()),
        ("TOPIC", topic.as_str()),
    ];
    // The persistent session exists before the first message.
    let first = Flow::start(&file, d, "first", &env);
    wait_for(60, "the subscription", || {
        first.log().contains("subscribed")
    });
    first.kill_9();
    // The publisher: numbered QoS 1 messages, 50 every 50 ms, every tenth marked to drop.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let publisher = {
        let (stop, sent) = (stop.clone(), sent.clone());
        let url = format!("{mqtt}/{mqtt_topic}");
        std::thread::spawn(move || {
            let mut child = Command::new("mosquitto_pub")
                .args(["-L", &url, "-q", "1", "-l"])
                .stdin(Stdio::piped())
                .spawn()
                .expect("mosquitto_pub runs");
            let mut stdin = child.stdin.take().expect("stdin");
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let mut text = String::new();
                for _ in 0..50 {
                    text.push_str(&format!("{{\"n\":{n},\"drop\":{}}}\n", n % 10 == 7));
                    n += 1;
                }
                stdin.write_all(text.as_bytes()).expect("published");
                sent.store(n, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(50));
            }
            drop(stdin);
            assert!(child.wait().expect("waited").success(), "mosquitto_pub");
            n
        })
    };
    let done = kill_loop(&file, d, &env, kills(), &mut rng, (300, 2_500), |_| false);
    stop.store(true, Ordering::SeqCst);
    let n = publisher.join().expect("publisher");
    let last = Flow::start(&file, d, "last", &env);
    // Up before it is stopped (a SIGTERM while it starts ends it by the signal's default).
    wait_for(60, "the last run's subscription", || {
        last.log().contains("subscribed")
    });
    let want = || (0..n).filter(|i| i % 10 != 7);
    let got = read_kafka(&brokers, &topic, 240, |g| {
        want().all(|i| g.contains_key(&i))
    });
    last.stop_cleanly();
    let (lost, dups) = tally(want(), &got);
    let dropped = got.keys().filter(|i| *i % 10 == 7).count();
    row("MQTT -> filter -> Kafka", done, want().count(), lost, dups);
    assert_eq!(dropped, 0, "filtered records reached Kafka");
    assert_eq!(lost, 0, "records lost");
}

/// One HTTP/1.1 POST of JSON lines; the status code, if answered.
fn post(addr: &str, body: &str) -> Option<u16> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(60))).ok()?;
    let head = format!(
        "POST /ingest HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-ndjson\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).ok()?;
    s.write_all(body.as_bytes()).ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    resp.split_whitespace().nth(1)?.parse().ok()
}

/// `http_server` with `ack: delivered` -> Kafka; the client posts batches of numbered records
/// and retries each until it is answered `200`.
#[test]
fn http_delivered_to_kafka_survives_kill_9() {
    let Some(brokers) = server("FLOW_TEST_KAFKA_BROKERS", "the Kafka broker (tansu)") else {
        return;
    };
    let mut rng = Rng::new("http_server -> kafka");
    let dir = workdir();
    let d = dir.path();
    let topic = unique("chaos-http");
    let addr = format!("127.0.0.1:{}", common::free_port());
    let file = write(
        d,
        "flow.yaml",
        r#"
name: chaos-http-kafka
processors:
  ingest:
    type: http_server
    listen: ${LISTEN}
    path: /ingest
    ack: delivered
  kafka:
    type: kafka_sink
    brokers: ${KAFKA_BROKERS}
    topic: ${TOPIC}
    key: .n
    create_topic: { partitions: 4 }
connections:
  - ingest -> kafka
"#,
    );
    let env = [
        ("LISTEN", addr.as_str()),
        ("KAFKA_BROKERS", brokers.as_str()),
        ("TOPIC", topic.as_str()),
    ];
    let stop = Arc::new(AtomicBool::new(false));
    let client = {
        let (stop, addr) = (stop.clone(), addr.clone());
        std::thread::spawn(move || {
            let mut n = 0u64;
            let mut attempts = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let mut body = String::new();
                for i in n..n + 20 {
                    body.push_str(&format!("{{\"n\":{i}}}\n"));
                }
                // Until acknowledged: refused, reset, 429, 503 and 504 are all tried again.
                loop {
                    attempts += 1;
                    if post(&addr, &body) == Some(200) {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                n += 20;
            }
            (n, attempts)
        })
    };
    let done = kill_loop(&file, d, &env, kills(), &mut rng, (300, 2_500), |_| false);
    // The last run: the client finishes the batch it is on once this one acknowledges it.
    let last = Flow::start(&file, d, "last", &env);
    stop.store(true, Ordering::SeqCst);
    let (n, attempts) = client.join().expect("client");
    eprintln!("{n} records acknowledged in {attempts} POSTs");
    let got = read_kafka(&brokers, &topic, 240, |g| {
        (0..n).all(|i| g.contains_key(&i))
    });
    last.stop_cleanly();
    let (lost, dups) = tally(0..n, &got);
    row(
        "http_server (ack: delivered) -> Kafka",
        done,
        n as usize,
        lost,
        dups,
    );
    assert_eq!(lost, 0, "acknowledged records lost");
}

/// Kafka (a producer running all along) -> remap -> `influxdb_sink` (VictoriaMetrics): each
/// record `n` is a point of `chaos_n` at time `BASE + n` ms.
#[test]
fn kafka_to_influx_survives_kill_9() {
    let Some(brokers) = server("FLOW_TEST_KAFKA_BROKERS", "the Kafka broker (tansu)") else {
        return;
    };
    let Some(influx) = server("FLOW_TEST_INFLUX_URL", "VictoriaMetrics") else {
        return;
    };
    let mut rng = Rng::new("kafka -> remap -> influxdb");
    let dir = workdir();
    let d = dir.path();
    let (topic, group) = (unique("chaos-influx"), unique("chaos-influx"));
    let run = unique("chaos").replace('-', "_");
    let k = kills() as u64;
    let n = 400 * (2 * k + 4);
    let producer_file = write(
        d,
        "producer.yaml",
        r#"
name: chaos-producer
processors:
  numbers:
    type: generate
    preset: sequence
    count: ${COUNT}
    rate: 400
    batch_size: 20
  kafka:
    type: kafka_sink
    brokers: ${KAFKA_BROKERS}
    topic: ${TOPIC}
    key: .n
    create_topic: { partitions: 4 }
connections:
  - numbers -> kafka
"#,
    );
    let file = write(
        d,
        "flow.yaml",
        r#"
name: chaos-kafka-influx
processors:
  src:
    type: kafka_source
    brokers: ${KAFKA_BROKERS}
    group: ${GROUP}
    topics: ["${TOPIC}"]
    batch_size: 100
    commit_interval: 200ms
    properties:
      session.timeout.ms: "6000"
      heartbeat.interval.ms: "500"
      max.poll.interval.ms: "7000"
  at:
    type: remap
    source: .ts = 1700000000000 + int!(.n)
  influx:
    type: influxdb_sink
    url: ${INFLUX_URL}
    org: flow
    bucket: chaos
    measurement: chaos
    fields: [n]
    timestamp: ts
    timestamp_unit: ms
    precision: ms
    batch_timeout: 200ms
connections:
  - src -> at
  - at -> influx
"#,
    );
    let count = n.to_string();
    let producer = Flow::start(
        &producer_file,
        d,
        "producer",
        &[
            ("KAFKA_BROKERS", brokers.as_str()),
            ("TOPIC", topic.as_str()),
            ("COUNT", count.as_str()),
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while !producer.log().contains("created the Kafka topic") {
        assert!(
            Instant::now() < deadline,
            "no topic after 60 s:\n{}",
            producer.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // VictoriaMetrics adds `extra_label` to every point: this run's points are told apart.
    let write_url = format!("{influx}/?extra_label=chaos_run={run}");
    let env = [
        ("KAFKA_BROKERS", brokers.as_str()),
        ("TOPIC", topic.as_str()),
        ("GROUP", group.as_str()),
        ("INFLUX_URL", write_url.as_str()),
    ];
    // tansu 0.6 gives a member that joins while a killed one's session is still open no
    // partitions, and never rebalances once that session expires (cli/tests/kafka.rs,
    // `a_group_member_killed_with_kill_9_loses_nothing`): each restart waits out the session
    // (6 s) so that it joins an empty group.
    let session = Duration::from_secs(8);
    let done = kill_loop(&file, d, &env, kills(), &mut rng, (300, 2_500), |run| {
        if run > 0 {
            std::thread::sleep(session);
        }
        false
    });
    std::thread::sleep(session);
    assert!(producer.wait(600), "the producer finished");
    let last = Flow::start(&file, d, "last", &env);
    // Up before it is stopped (a SIGTERM while it starts ends it by the signal's default).
    wait_for(60, "the last run's subscription", || {
        last.log().contains("subscribed")
    });
    let deadline = Instant::now() + Duration::from_secs(240);
    while Instant::now() < deadline && (export_points(&influx, &run).len() as u64) < n {
        std::thread::sleep(Duration::from_millis(500));
    }
    last.stop_cleanly();
    let got = export_points(&influx, &run);
    let (lost, dups) = tally(0..n, &got);
    row(
        "Kafka -> remap -> influxdb_sink",
        done,
        n as usize,
        lost,
        dups,
    );
    assert_eq!(lost, 0, "records lost");
}

/// The `chaos_n` samples of run `run` in VictoriaMetrics: `n` -> how many samples.
fn export_points(url: &str, run: &str) -> HashMap<u64, u32> {
    let _ = Command::new("curl")
        .args(["-sf", &format!("{url}/internal/force_flush")])
        .output();
    let text = Command::new("curl")
        .args([
            "-sf",
            &format!("{url}/api/v1/export"),
            "--data-urlencode",
            &format!("match[]={{__name__=\"chaos_n\",chaos_run=\"{run}\"}}"),
        ])
        .output()
        .expect("curl");
    let mut got = HashMap::new();
    for line in String::from_utf8_lossy(&text.stdout).lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("json");
        for x in v["values"].as_array().expect("values") {
            *got.entry(x.as_f64().expect("value") as u64).or_insert(0) += 1;
        }
    }
    got
}

/// A window as written: (device, start, end, count, sum).
type Window = (String, i64, i64, i64, i64);

/// Event time of the first event (ms), a whole second.
const BASE: i64 = 1_700_000_000_000;

/// The events of chunk `c`: 4 devices, one event every 10 ms each over 50 s of event time
/// (50 whole 1 s windows), value `(t / 10 + device) % 97`.
fn chunk(c: i64, out: &mut String, oracle: &mut BTreeMap<(String, i64), (i64, i64)>) {
    for t in (c * 50_000..(c + 1) * 50_000).step_by(10) {
        for dev in 0..4 {
            let v = (t / 10 + dev) % 97;
            let ts = BASE + t;
            out.push_str(&format!(
                "{{\"device\":\"d{dev}\",\"ts\":{ts},\"v\":{v}}}\n"
            ));
            let w = oracle
                .entry((format!("d{dev}"), ts - ts.rem_euclid(1_000)))
                .or_insert((0, 0));
            w.0 += 1;
            w.1 += v;
        }
    }
}

/// file -> `window_aggregate` with `state` -> `s3_sink`: the input grows by whole windows
/// between runs; the distinct windows in S3 must equal the oracle's.
#[test]
fn file_windows_to_s3_survive_kill_9() {
    let Some(endpoint) = server("FLOW_TEST_S3_ENDPOINT", "s3s-fs") else {
        return;
    };
    let var = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} is not set"));
    let (bucket, key, secret) = (
        var("FLOW_TEST_S3_BUCKET"),
        var("FLOW_TEST_S3_ACCESS_KEY"),
        var("FLOW_TEST_S3_SECRET_KEY"),
    );
    let mut rng = Rng::new("file -> window_aggregate -> s3");
    let dir = workdir();
    let d = dir.path();
    let prefix = unique("chaos-windows");
    let url = format!("s3://{bucket}/{prefix}");
    let input = d.join("events.jsonl");
    std::fs::write(&input, "").expect("input");
    let file = write(
        d,
        "flow.yaml",
        r#"
name: chaos-windows-s3
processors:
  events:
    type: file
    path: ${DIR}/events.jsonl
    checkpoint: ${DIR}/events.checkpoint
    batch_size: 200
  per_device:
    type: window_aggregate
    key: .device
    key_field: device
    event_time: .ts
    event_time_unit: ms
    window: { tumbling: 1s }
    state: ${DIR}/windows.redb
    checkpoint_interval: 200ms
    aggregates:
      count: count()
      sum: sum(.v)
  archive:
    type: s3_sink
    url: ${S3_URL}
    endpoint: ${S3_ENDPOINT}
    key: "{device}/part-{uuid}.jsonl"
    format: json
    compression: none
    max_records: 20
    max_idle: 1s
    max_age: 2s
connections:
  - events -> per_device
  - per_device -> archive
"#,
    );
    let dir_s = d.display().to_string();
    let env = [
        ("DIR", dir_s.as_str()),
        ("S3_URL", url.as_str()),
        ("S3_ENDPOINT", endpoint.as_str()),
        ("AWS_ACCESS_KEY_ID", key.as_str()),
        ("AWS_SECRET_ACCESS_KEY", secret.as_str()),
    ];
    let mut oracle = BTreeMap::new();
    let mut events = 0usize;
    let mut chunks = 0i64;
    let mut append = |oracle: &mut BTreeMap<_, _>| {
        let mut text = String::new();
        chunk(chunks, &mut text, oracle);
        chunks += 1;
        events += text.lines().count();
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&input)
            .expect("input");
        f.write_all(text.as_bytes()).expect("appended");
    };
    // Data arrives between runs, in whole windows: a run that reaches the end of the file
    // (and so emits every open window) never cuts one.
    // Every third run (the second, the fifth...) reads to the end of its input and ends by
    // itself.
    let done = kill_loop(&file, d, &env, kills(), &mut rng, (50, 600), |run| {
        append(&mut oracle);
        append(&mut oracle);
        run % 3 == 1
    });
    append(&mut oracle);
    let last = Flow::start(&file, d, "last", &env);
    assert!(last.wait(300), "the last run ends at the end of the input");
    let want: BTreeSet<Window> = oracle
        .iter()
        .map(|((dev, start), (count, sum))| (dev.clone(), *start, start + 1_000, *count, *sum))
        .collect();
    let written = s3_windows(&endpoint, &bucket, &key, &secret, &prefix);
    let got: BTreeSet<Window> = written.iter().cloned().collect();
    let lost = want.difference(&got).count();
    let wrong: Vec<_> = got.difference(&want).take(5).collect();
    let dups = (written.len() - got.len()) as u64;
    eprintln!("{events} events in {chunks} chunks");
    row(
        "file -> window_aggregate (state) -> s3_sink",
        done,
        want.len(),
        lost,
        dups,
    );
    assert!(
        wrong.is_empty(),
        "windows the oracle does not have: {wrong:?}"
    );
    assert_eq!(lost, 0, "windows lost");
    // `file` with a checkpoint -> `window_aggregate` with `state` -> `s3_sink`: exactly-once.
    assert_eq!(dups, 0, "windows written twice");
}

/// Every window written under `prefix`, as many times as it was written.
fn s3_windows(endpoint: &str, bucket: &str, key: &str, secret: &str, prefix: &str) -> Vec<Window> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let store = object_store::aws::AmazonS3Builder::new()
        .with_endpoint(endpoint)
        .with_allow_http(true)
        .with_bucket_name(bucket)
        .with_region("us-east-1")
        .with_access_key_id(key)
        .with_secret_access_key(secret)
        .build()
        .expect("client");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let p = object_store::path::Path::from(prefix);
        let metas: Vec<_> = store.list(Some(&p)).try_collect().await.expect("listed");
        let mut out = Vec::new();
        for m in metas {
            // `s3_sink`'s commit record, not data.
            if m.location.as_ref().contains("/_flow/") {
                continue;
            }
            let data = store
                .get(&m.location)
                .await
                .expect("get")
                .bytes()
                .await
                .expect("body");
            let text = String::from_utf8(data.to_vec()).expect("utf-8");
            assert!(text.ends_with('\n'), "{}: partial", m.location);
            for l in text.lines() {
                let v: serde_json::Value = serde_json::from_str(l).expect("json");
                let int = |k: &str| {
                    let x = v[k].as_f64().unwrap_or_else(|| panic!("{k} in {l}"));
                    assert_eq!(x.fract(), 0.0, "{k} in {l}");
                    x as i64
                };
                out.push((
                    v["device"].as_str().expect("device").to_owned(),
                    int("window_start"),
                    int("window_end"),
                    int("count"),
                    int("sum"),
                ));
            }
        }
        out
    })
}
