//! Provenance SEND against the real servers: each sink records where every record landed, and
//! that place, read back from the server, holds the record. Kafka: the partition and offset
//! (the message there is the record); S3: the object's key (the object holds the record); MQTT:
//! the topic (a subscriber got the record on it); InfluxDB: the write URL.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::{repo, server, unique};
use flow_core::provenance::EventKind;
use flow_core::provenance::query::{Events, Lineage, Search};
use flow_core::record::RecordId;

const RECORDS: u64 = 300;

/// `RECORDS` lines `{"n": i}`.
fn numbered() -> String {
    (0..RECORDS).map(|i| format!("{{\"n\":{i}}}\n")).collect()
}

/// Run a flow reading `input` (`RECORDS` JSON lines, line i with `"n": i`) into `sink` (YAML
/// of one processor named `out`) with its provenance store in `dir`; the SEND destination of
/// each input record, by its `n`.
fn run(dir: &Path, input: &str, sink: &str, env: &[(&str, &str)]) -> BTreeMap<u64, String> {
    std::fs::write(dir.join("in.jsonl"), input).expect("input");
    let flow = format!(
        "name: send\nprovenance:\n  path: {store}\nprocessors:\n  src:\n    type: file\n    \
         path: {input}\n    format: json\n  out:\n{sink}\nconnections:\n  - src -> out\n",
        store = dir.join("store").display(),
        input = dir.join("in.jsonl").display(),
    );
    let file = dir.join("send.yaml");
    std::fs::write(&file, flow).expect("flow");
    let out = Command::new(env!("CARGO_BIN_EXE_flow"))
        .current_dir(repo())
        .args(["run", "--quiet"])
        .arg(&file)
        .envs(env.iter().copied())
        .output()
        .expect("flow runs");
    assert!(
        out.status.success(),
        "flow run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    destinations(&dir.join("store"))
}

/// Each source record's `n` (from its line, which its CREATE names) and the destination of
/// its SEND, from lineage.
fn destinations(store: &Path) -> BTreeMap<u64, String> {
    let events = Events::read(store).expect("the store reads");
    let created = events
        .search(&Search {
            kind: Some(EventKind::Create),
            limit: usize::MAX,
            ..Search::default()
        })
        .expect("search");
    let mut sent = BTreeMap::new();
    for id in created.iter().flat_map(|e| e.ids().collect::<Vec<_>>()) {
        let lineage = events
            .lineage(RecordId(id))
            .expect("read")
            .expect("lineage");
        let line = lineage
            .events
            .iter()
            .find(|s| s.kind == EventKind::Create)
            .and_then(|s| s.origin)
            .expect("CREATE names the record's line");
        let sends = sends(&lineage);
        assert_eq!(sends.len(), 1, "line {line}: one SEND: {lineage:#?}");
        // Lines count from 1: line L holds `"n": L - 1`.
        sent.insert(line - 1, sends[0].clone());
    }
    assert_eq!(sent.len() as u64, RECORDS, "every record has its SEND");
    sent
}

fn sends(l: &Lineage) -> Vec<String> {
    let mut out: Vec<String> = l
        .events
        .iter()
        .filter(|s| s.kind == EventKind::Send)
        .map(|s| s.detail.clone().expect("SEND names its destination"))
        .collect();
    for c in &l.children {
        out.extend(sends(c));
    }
    out
}

fn n_of(payload: &[u8]) -> u64 {
    let v: serde_json::Value = serde_json::from_slice(payload).expect("a JSON record");
    v["n"].as_u64().expect("n")
}

#[test]
fn kafka_send_names_the_partition_and_offset_holding_the_record() {
    use rdkafka::Message as _;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let Some(brokers) = server("FLOW_TEST_KAFKA_BROKERS", "the Kafka broker (tansu)") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let topic = unique("send");
    let sink = format!(
        "    type: kafka_sink\n    brokers: {brokers}\n    topic: {topic}\n    key: .n\n    \
         create_topic:\n      partitions: 3\n"
    );
    let sent = run(dir.path(), &numbered(), &sink, &[]);
    // Read the whole topic back: (partition, offset) -> the record there.
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", unique("send-check"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    consumer.subscribe(&[&topic]).expect("subscribe");
    let mut at: HashMap<String, u64> = HashMap::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while (at.len() as u64) < RECORDS && std::time::Instant::now() < deadline {
        if let Some(m) = consumer.poll(Duration::from_millis(500)) {
            let m = m.expect("message");
            let place = format!("{}/{}@{}", m.topic(), m.partition(), m.offset());
            at.insert(place, n_of(m.payload().expect("payload")));
        }
    }
    assert_eq!(at.len() as u64, RECORDS, "the topic holds every record");
    let partitions: std::collections::BTreeSet<&str> = sent
        .values()
        .filter_map(|d| d.rsplit_once('@').map(|(p, _)| p))
        .collect();
    assert!(
        partitions.len() > 1,
        "keys spread the records: {partitions:?}"
    );
    for (line, place) in &sent {
        assert_eq!(
            at.get(place),
            Some(line),
            "SEND says n={line} is at {place}"
        );
    }
}

#[test]
fn s3_send_names_the_object_holding_the_record() {
    use object_store::ObjectStoreExt as _;
    let Some(endpoint) = server("FLOW_TEST_S3_ENDPOINT", "s3s-fs") else {
        return;
    };
    let var = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} is not set"));
    let (bucket, key, secret) = (
        var("FLOW_TEST_S3_BUCKET"),
        var("FLOW_TEST_S3_ACCESS_KEY"),
        var("FLOW_TEST_S3_SECRET_KEY"),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let prefix = unique("send");
    // Two objects at least: one per parity of n.
    let sink = format!(
        "    type: s3_sink\n    url: s3://{bucket}/{prefix}\n    endpoint: {endpoint}\n    \
         key: \"{{parity}}/part-{{uuid}}.jsonl\"\n    format: json\n    \
         compression: none\n"
    );
    let input: String = (0..RECORDS)
        .map(|i| format!("{{\"n\":{i},\"parity\":\"p{}\"}}\n", i % 2))
        .collect();
    let env = [
        ("AWS_ACCESS_KEY_ID", key.as_str()),
        ("AWS_SECRET_ACCESS_KEY", secret.as_str()),
        ("AWS_REGION", "us-east-1"),
    ];
    let sent = run(dir.path(), &input, &sink, &env);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let store = object_store::aws::AmazonS3Builder::new()
        .with_endpoint(&endpoint)
        .with_allow_http(true)
        .with_bucket_name(&bucket)
        .with_region("us-east-1")
        .with_access_key_id(&key)
        .with_secret_access_key(&secret)
        .build()
        .expect("client");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut objects: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (line, url) in &sent {
        let key = url
            .strip_prefix(&format!("s3://{bucket}/"))
            .unwrap_or_else(|| panic!("`{url}` is an object of the bucket"));
        assert!(
            key.starts_with(&format!("{prefix}/p{}/", line % 2)),
            "{key}"
        );
        if !objects.contains_key(key) {
            let body = rt
                .block_on(async {
                    store
                        .get(&object_store::path::Path::from(key))
                        .await?
                        .bytes()
                        .await
                })
                .expect("the object SEND names is there");
            let ns = body
                .split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .map(n_of)
                .collect();
            objects.insert(key.to_owned(), ns);
        }
        assert!(objects[key].contains(line), "{key} holds line {line}");
    }
    assert!(objects.len() >= 2, "one object per parity at least");
    let all: usize = objects.values().map(Vec::len).sum();
    assert_eq!(
        all as u64, RECORDS,
        "the objects SEND names hold every record, once"
    );
}

#[test]
fn mqtt_send_names_the_topic_a_subscriber_got_the_record_on() {
    let Some(url) = server("FLOW_TEST_MQTT_URL", "Mosquitto") else {
        return;
    };
    let port = url.rsplit(':').next().expect("a port").to_owned();
    let dir = tempfile::tempdir().expect("tempdir");
    let base = unique("flow-test/send");
    let sub = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port, "-q", "1", "-v", "-C"])
        .arg(RECORDS.to_string())
        .args(["-W", "60", "-t"])
        .arg(format!("{base}/#"))
        .stdout(Stdio::piped())
        .spawn()
        .expect("mosquitto_sub");
    // Subscribed before the flow publishes: wait for the subscription to be in place.
    std::thread::sleep(Duration::from_millis(500));
    let sink =
        format!("    type: mqtt_sink\n    url: {url}\n    topic: \"{base}/{{n}}\"\n    qos: 1\n");
    let sent = run(dir.path(), &numbered(), &sink, &[]);
    let out = sub.wait_with_output().expect("mosquitto_sub ends");
    let got: HashMap<u64, String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(topic, payload)| (n_of(payload.as_bytes()), topic.to_owned()))
        .collect();
    assert_eq!(got.len() as u64, RECORDS, "the subscriber got every record");
    for (line, topic) in &sent {
        assert_eq!(got.get(line), Some(topic), "line {line}");
    }
}

#[test]
fn influxdb_send_names_the_write_url() {
    let Some(url) = server("FLOW_TEST_INFLUX_URL", "victoria-metrics") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let bucket = unique("send");
    let sink = format!(
        "    type: influxdb_sink\n    url: {url}\n    org: flow\n    bucket: {bucket}\n    \
         measurement: send\n    fields: [n]\n"
    );
    let sent = run(dir.path(), &numbered(), &sink, &[]);
    for (line, to) in &sent {
        assert!(
            to.starts_with(&format!("{url}/api/v2/write?")) && to.contains(&bucket),
            "line {line}: {to}"
        );
    }
}
