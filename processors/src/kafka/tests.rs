//! `kafka_sink` and `kafka_source` against a Kafka cluster: the real broker when
//! `FLOW_TEST_KAFKA_BROKERS` is set (`scripts/test.sh` starts one), otherwise librdkafka's
//! in-process mock cluster (and the test says so), except with `CI` set, where a missing broker
//! is a failure. Results are read back with a plain rdkafka client.

use std::time::{Duration, Instant};

use flow_core::record::finish_all;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{DefaultProducerContext, FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::json;

use flow_core::record::Record;

use super::{KafkaSinkConfig, KafkaSourceConfig};
use crate::testing::{config, rec, sink, sink_ctx, source, source_ctx};

/// A cluster for one test: the real broker, or a mock one kept alive by the returned guard.
struct Cluster {
    brokers: String,
    _mock: Option<MockCluster<'static, DefaultProducerContext>>,
}

fn cluster() -> Cluster {
    if let Ok(b) = std::env::var("FLOW_TEST_KAFKA_BROKERS") {
        return Cluster {
            brokers: b,
            _mock: None,
        };
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "FLOW_TEST_KAFKA_BROKERS is not set but CI is: the Kafka broker (tansu) did not start"
    );
    eprintln!(
        "skipped: FLOW_TEST_KAFKA_BROKERS is not set (scripts/test.sh starts tansu); \
         on librdkafka's mock cluster instead"
    );
    let mock = MockCluster::new(1).expect("mock cluster");
    Cluster {
        brokers: mock.bootstrap_servers(),
        _mock: Some(mock),
    }
}

fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("flowtest-{name}-{}-{nanos}", std::process::id())
}

async fn create_topic(c: &Cluster, topic: &str, partitions: i32) {
    if let Some(mock) = &c._mock {
        mock.create_topic(topic, partitions, 1).expect("mock topic");
        return;
    }
    let brokers = &c.brokers;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("admin");
    let r = admin
        .create_topics(
            [&NewTopic::new(
                topic,
                partitions,
                TopicReplication::Fixed(1),
            )],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect("create topics");
    for t in r {
        t.expect("topic created");
    }
}

async fn produce(brokers: &str, topic: &str, values: &[String]) {
    let p: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("producer");
    for (i, v) in values.iter().enumerate() {
        let key = format!("k{i}");
        p.send(
            FutureRecord::to(topic).payload(v).key(&key).partition(0),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("delivered");
    }
}

/// A message read back: key, value, headers.
type Read = (String, String, Vec<(String, String)>);

/// Everything in `topic` from the start.
fn read_all(brokers: &str, topic: &str, n: usize) -> Vec<Read> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    c.subscribe(&[topic]).expect("subscribed");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut out = Vec::new();
    while out.len() < n && Instant::now() < deadline {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
            let text =
                |b: Option<&[u8]>| String::from_utf8_lossy(b.unwrap_or_default()).into_owned();
            let headers = m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| (h.key.to_owned(), text(h.value)))
                        .collect()
                })
                .unwrap_or_default();
            out.push((text(m.key()), text(m.payload()), headers));
        }
    }
    out
}

/// The group's committed offset of `topic` partition 0 (`None`: nothing committed).
fn committed(brokers: &str, group: &str, topic: &str) -> Option<i64> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, 0);
    let got = c
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed offsets");
    match got.find_partition(topic, 0).map(|e| e.offset()) {
        Some(Offset::Offset(o)) => Some(o),
        _ => None,
    }
}

async fn until(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The sink writes each record with its key and headers; a plain consumer reads exactly them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_writes_values_keys_and_headers() {
    let c = cluster();
    let topic = unique("sink");
    create_topic(&c, &topic, 1).await;
    let cfg: KafkaSinkConfig = config(json!({
        "brokers": c.brokers, "topic": topic, "key": ".device", "headers": ["site"],
    }));
    let (ctx, tx, mut failures, metrics) = sink_ctx();
    let records: Vec<Record> = (0..100)
        .map(|i| {
            let mut r = rec(&format!(r#"{{"device":"d{}","i":{i}}}"#, i % 3));
            r.set_attribute("site", "plant-1");
            r.set_attribute("other", "not sent");
            r
        })
        .collect();
    tx.send(records).await.expect("queued");
    drop(tx);
    sink(&cfg).run(ctx).await.expect("runs");
    assert_eq!(metrics.snapshot().sent, 100);
    assert!(crate::testing::records(&mut failures).await.is_empty());
    let got = read_all(&c.brokers, &topic, 100);
    assert_eq!(got.len(), 100);
    for (i, (key, value, headers)) in got.iter().enumerate() {
        assert_eq!(value, &format!(r#"{{"device":"d{}","i":{i}}}"#, i % 3));
        assert_eq!(key, &format!("d{}", i % 3));
        assert_eq!(headers, &[("site".to_owned(), "plant-1".to_owned())]);
    }
}

/// A message over the size limit and a record without a key field go to `failure` with the
/// reason; the others are delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_unkeyable_records_go_to_failure() {
    let c = cluster();
    let topic = unique("big");
    create_topic(&c, &topic, 1).await;
    let cfg: KafkaSinkConfig = config(json!({
        "brokers": c.brokers, "topic": topic, "key": "to_string!(.device)",
        "properties": {"message.max.bytes": "10000"},
    }));
    let (ctx, tx, mut failures, metrics) = sink_ctx();
    let big = "x".repeat(20_000);
    tx.send(vec![
        rec(r#"{"device":"a"}"#),
        rec(&format!(r#"{{"device":"b","blob":"{big}"}}"#)),
        rec(r#"{"device":{"x":1}}"#),
        rec(r#"{"device":"c"}"#),
    ])
    .await
    .expect("queued");
    drop(tx);
    sink(&cfg).run(ctx).await.expect("runs");
    assert_eq!(metrics.snapshot().sent, 2);
    let failed = crate::testing::records(&mut failures).await;
    let mut reasons: Vec<String> = failed
        .iter()
        .map(|r| {
            r.attributes()
                .get("error.message")
                .cloned()
                .unwrap_or_default()
        })
        .collect();
    reasons.sort();
    assert_eq!(failed.len(), 2, "{reasons:?}");
    assert!(
        reasons[0].starts_with("Message production error: MessageSizeTooLarge"),
        "{reasons:?}"
    );
    assert!(reasons[1].starts_with("key: "), "{reasons:?}");
    let got = read_all(&c.brokers, &topic, 2);
    let values: Vec<&str> = got.iter().map(|g| g.1.as_str()).collect();
    assert_eq!(values, [r#"{"device":"a"}"#, r#"{"device":"c"}"#]);
}

/// Records `{"i":…}` in batches of 10, one ack token each.
fn tracked(n: usize) -> (flow_core::ack::AckTracker, Vec<Vec<Record>>) {
    let mut tracker = flow_core::ack::AckTracker::new();
    let batches = (0..n)
        .collect::<Vec<_>>()
        .chunks(10)
        .enumerate()
        .map(|(b, chunk)| {
            let t = tracker.token(b as u64);
            chunk
                .iter()
                .map(|i| {
                    rec(&format!(r#"{{"i":{i}}}"#)).with_acks(flow_core::ack::Acks::one(t.clone()))
                })
                .collect()
        })
        .collect();
    (tracker, batches)
}

/// The broker is down (librdkafka's mock cluster): nothing is acknowledged while it is, even
/// past `delivery_timeout` (those records are produced again, not failed); asked to stop, the
/// sink gives up within bounds and acknowledges nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_with_the_broker_down_acknowledges_nothing_and_a_stop_gives_up() {
    let mock = MockCluster::new(1).expect("mock cluster");
    let topic = unique("down");
    mock.create_topic(&topic, 1, 1).expect("topic");
    mock.broker_down(1).expect("down");
    let cfg: KafkaSinkConfig = config(json!({
        "brokers": mock.bootstrap_servers(), "topic": topic, "delivery_timeout": "1s",
    }));
    let (ctx, tx, mut failures, metrics, stop) = crate::testing::sink_ctx_stoppable();
    let (mut tracker, batches) = tracked(30);
    for b in batches {
        tx.send(b).await.expect("queued");
    }
    let task = tokio::spawn(sink(&cfg).run(ctx));
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(tracker.try_next().is_none(), "acknowledged while down");
    assert!(!task.is_finished());
    stop.cancel();
    let e = tokio::time::timeout(Duration::from_secs(15), task)
        .await
        .expect("a bounded stop")
        .expect("joined")
        .expect_err("gave up");
    assert!(
        matches!(e, flow_core::processor::ProcessorError::Stopped(_)),
        "{e}"
    );
    drop(tx);
    assert!(crate::testing::records(&mut failures).await.is_empty());
    for _ in 0..3 {
        let f = tokio::time::timeout(Duration::from_secs(10), tracker.next())
            .await
            .expect("finished in time")
            .expect("a batch");
        assert!(!f.committable(), "{f:?}");
    }
    assert_eq!(metrics.snapshot().sent, 0);
}

/// The broker is down for longer than `delivery_timeout`, then comes back: every record is
/// delivered and acknowledged only then; none goes to `failure`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_broker_down_then_back_loses_nothing() {
    let mock = MockCluster::new(1).expect("mock cluster");
    let topic = unique("back");
    mock.create_topic(&topic, 1, 1).expect("topic");
    mock.broker_down(1).expect("down");
    let cfg: KafkaSinkConfig = config(json!({
        "brokers": mock.bootstrap_servers(), "topic": topic, "delivery_timeout": "1s",
    }));
    let (ctx, tx, mut failures, metrics) = sink_ctx();
    let (mut tracker, batches) = tracked(30);
    for b in batches {
        tx.send(b).await.expect("queued");
    }
    drop(tx);
    let task = tokio::spawn(sink(&cfg).run(ctx));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(tracker.try_next().is_none(), "acknowledged while down");
    mock.broker_up(1).expect("up");
    tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .expect("in time")
        .expect("joined")
        .expect("runs");
    for _ in 0..3 {
        let f = tracker.next().await.expect("a batch");
        assert_eq!(f.status, flow_core::ack::AckStatus::Delivered);
    }
    assert_eq!(metrics.snapshot().sent, 30);
    assert!(crate::testing::records(&mut failures).await.is_empty());
    let mut got: Vec<String> = read_all(&mock.bootstrap_servers(), &topic, 30)
        .into_iter()
        .map(|r| r.1)
        .collect();
    got.sort();
    got.dedup();
    let mut want: Vec<String> = (0..30).map(|i| format!(r#"{{"i":{i}}}"#)).collect();
    want.sort();
    assert_eq!(got, want);
}

/// The source emits every message with its Kafka attributes, and commits an offset only once
/// every record before it is finished: not past a record still in the flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_commits_only_what_is_finished_in_order() {
    let c = cluster();
    let topic = unique("src");
    let group = unique("group");
    create_topic(&c, &topic, 1).await;
    let values: Vec<String> = (0..10).map(|i| format!(r#"{{"n":{i}}}"#)).collect();
    produce(&c.brokers, &topic, &values).await;
    let cfg: KafkaSourceConfig = config(json!({
        "brokers": c.brokers, "group": group, "topics": [topic],
        "batch_size": 1, "commit_interval": "100ms",
    }));
    let mut h = source_ctx(1);
    let run = tokio::spawn(source(&cfg).run(h.ctx));
    let mut held: Vec<Record> = Vec::new();
    while held.len() < 10 {
        let batch = tokio::time::timeout(Duration::from_secs(30), h.ports[1].recv())
            .await
            .expect("records in time")
            .expect("a batch");
        held.extend(batch);
    }
    let mut texts: Vec<String> = Vec::new();
    for r in &mut held {
        texts.push(String::from_utf8_lossy(r.content()).into_owned());
    }
    assert_eq!(texts, values);
    let a = &held[3].attributes();
    assert_eq!(a["kafka.topic"], topic);
    assert_eq!(a["kafka.partition"], "0");
    assert_eq!(a["kafka.offset"], "3");
    assert_eq!(a["kafka.key"], "k3");
    assert!(a["kafka.timestamp"].parse::<i64>().is_ok());
    // Finish 0..4 and 6..10, keep 4 and 5: the commit stops at 4.
    let mut rest: Vec<Record> = Vec::new();
    for (i, r) in held.into_iter().enumerate() {
        if i == 4 || i == 5 {
            rest.push(r);
        } else {
            r.finish();
        }
    }
    let (b, g, t) = (c.brokers.clone(), group.clone(), topic.clone());
    until(20, "the commit of 0..4", || {
        committed(&b, &g, &t) == Some(4)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(committed(&b, &g, &t), Some(4), "no commit past record 4");
    // The source's lag is the broker's high watermark minus the commit: 6 records left.
    let metrics = h.metrics.clone();
    let partition = format!("{topic}/0");
    let lag = move || {
        metrics
            .snapshot()
            .lag
            .iter()
            .find(|l| l.partition.as_deref() == Some(partition.as_str()))
            .map(|l| (l.unit, l.value))
    };
    until(20, "a lag of 6 records", || {
        lag() == Some((flow_core::runtime::metrics::LagUnit::Records, 6))
    })
    .await;
    finish_all(rest);
    until(20, "the commit of all", || {
        committed(&b, &g, &t) == Some(10)
    })
    .await;
    until(20, "no lag", || {
        lag() == Some((flow_core::runtime::metrics::LagUnit::Records, 0))
    })
    .await;
    h.shutdown.cancel();
    run.await.expect("joined").expect("runs");
}

/// A value that is not JSON goes to `failure` and is still committed (it is finished).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_sends_non_json_values_to_failure() {
    let c = cluster();
    let topic = unique("bad");
    let group = unique("group");
    create_topic(&c, &topic, 1).await;
    produce(
        &c.brokers,
        &topic,
        &[r#"{"ok":1}"#.into(), "not json".into()],
    )
    .await;
    let cfg: KafkaSourceConfig = config(json!({
        "brokers": c.brokers, "group": group, "topics": [topic], "commit_interval": "100ms",
    }));
    let mut h = source_ctx(1);
    let run = tokio::spawn(source(&cfg).run(h.ctx));
    let failed = tokio::time::timeout(Duration::from_secs(30), h.ports[0].recv())
        .await
        .expect("a failure in time")
        .expect("a batch");
    assert_eq!(failed.len(), 1);
    assert!(failed[0].attributes()["error.message"].starts_with("value:"));
    assert_eq!(failed[0].attributes()["kafka.offset"], "1");
    let ok = tokio::time::timeout(Duration::from_secs(30), h.ports[1].recv())
        .await
        .expect("a record in time")
        .expect("a batch");
    assert_eq!(ok.len(), 1);
    finish_all(failed.into_iter().chain(ok));
    let (b, g, t) = (c.brokers.clone(), group.clone(), topic.clone());
    until(30, "the commit", || committed(&b, &g, &t) == Some(2)).await;
    h.shutdown.cancel();
    run.await.expect("joined").expect("runs");
}

/// A value over `max_record_size` goes to `failure` with its first 1 KiB; it is finished, so
/// its offset is committed with the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_sends_values_over_max_record_size_to_failure() {
    let c = cluster();
    let topic = unique("oversized");
    let group = unique("group");
    create_topic(&c, &topic, 1).await;
    let big = format!(r#"{{"big":"{}"}}"#, "x".repeat(3000));
    produce(
        &c.brokers,
        &topic,
        &[r#"{"n":1}"#.into(), big, r#"{"n":2}"#.into()],
    )
    .await;
    let cfg: KafkaSourceConfig = config(json!({
        "brokers": c.brokers, "group": group, "topics": [topic], "commit_interval": "100ms",
        "max_record_size": "2KiB",
    }));
    let mut h = source_ctx(1);
    let run = tokio::spawn(source(&cfg).run(h.ctx));
    let mut failed = tokio::time::timeout(Duration::from_secs(30), h.ports[0].recv())
        .await
        .expect("a failure in time")
        .expect("a batch");
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].content().len(), 1024);
    assert_eq!(
        failed[0].attributes()["error.message"],
        "the value is 3010 bytes, over max_record_size (2.0 KiB); only its first 1024 bytes are \
         kept"
    );
    assert_eq!(failed[0].attributes()["kafka.offset"], "1");
    let mut ok = 0;
    while ok < 2 {
        let batch = tokio::time::timeout(Duration::from_secs(30), h.ports[1].recv())
            .await
            .expect("a record in time")
            .expect("a batch");
        ok += batch.len();
        finish_all(batch);
    }
    finish_all(failed);
    let (b, g, t) = (c.brokers.clone(), group.clone(), topic.clone());
    until(30, "the commit", || committed(&b, &g, &t) == Some(3)).await;
    h.shutdown.cancel();
    run.await.expect("joined").expect("runs");
}
