//! `mqtt_source` and `mqtt_sink` against a real Mosquitto broker (`FLOW_TEST_MQTT_URL`, started
//! by `scripts/test.sh`), checked with Mosquitto's own clients, `mosquitto_pub` and
//! `mosquitto_sub`. Without the variable the tests skip and say so, except with `CI` set, where
//! they fail.

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flow_core::ack::AckStatus;
use flow_core::processor::ProcessorConfig;
use flow_core::record::{Record, finish_all};
use flow_core::runtime::metrics::NodeMetrics;
use serde_json::json;

use super::{MqttSinkConfig, MqttSourceConfig};
use crate::testing::{config, rec, sink, sink_ctx, sink_ctx_stoppable, source, source_ctx};

/// The test broker's URL; `None` (after saying so) when there is none outside CI.
fn broker() -> Option<String> {
    match std::env::var("FLOW_TEST_MQTT_URL") {
        Ok(u) => Some(u),
        Err(_) if std::env::var_os("CI").is_some() => {
            panic!("FLOW_TEST_MQTT_URL is not set but CI is: the MQTT broker did not start")
        }
        Err(_) => {
            eprintln!("skipped: FLOW_TEST_MQTT_URL is not set (scripts/test.sh starts Mosquitto)");
            None
        }
    }
}

/// A topic prefix no other test or run uses.
fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!("flowtest/{name}/{}-{nanos}", std::process::id())
}

/// Publish each line as one message with `mosquitto_pub`.
fn publish(url: &str, topic: &str, qos: u8, v5: bool, lines: &[String]) {
    let mut c = Command::new("mosquitto_pub");
    c.args([
        "-L",
        &format!("{url}/{topic}"),
        "-q",
        &qos.to_string(),
        "-l",
    ]);
    if v5 {
        c.args(["-V", "mqttv5"]);
    }
    let mut child = c.stdin(Stdio::piped()).spawn().expect("mosquitto_pub runs");
    let mut stdin = child.stdin.take().expect("stdin");
    for l in lines {
        writeln!(stdin, "{l}").expect("written");
    }
    drop(stdin);
    assert!(
        child.wait().expect("waited").success(),
        "mosquitto_pub failed"
    );
}

/// Wait until `cond` holds, up to `secs`.
async fn until(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn status(m: &Arc<NodeMetrics>, key: &str) -> Option<serde_json::Value> {
    m.snapshot().status.get(key).cloned()
}

fn text(r: &mut Record) -> String {
    String::from_utf8_lossy(r.content()).into_owned()
}

/// Messages at each QoS and protocol version come out as records, with attributes and the
/// fields the topic template takes; the broker then has nothing left for the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_round_trip_per_qos_and_protocol() {
    let Some(url) = broker() else { return };
    for (qos, protocol) in [(0, "v311"), (1, "v311"), (2, "v311"), (1, "v5"), (2, "v5")] {
        let base = unique(&format!("src-q{qos}-{protocol}"));
        let cfg: MqttSourceConfig = config(json!({
            "url": url, "protocol": protocol, "qos": qos,
            "client_id": format!("src-q{qos}-{protocol}-{}", std::process::id()),
            "clean_session": true,
            "topics": [format!("{base}/+/telemetry")],
            "topic_fields": format!("{base}/{{device}}/telemetry"),
        }));
        let mut h = source_ctx(1);
        let run = tokio::spawn(source(&cfg).run(h.ctx));
        until(10, "the subscription", || {
            status(&h.metrics, "subscribed") == Some(json!(true))
        })
        .await;
        let lines: Vec<String> = (0..50).map(|i| format!(r#"{{"n":{i}}}"#)).collect();
        publish(
            &url,
            &format!("{base}/car-7/telemetry"),
            qos,
            protocol == "v5",
            &lines,
        );
        // Records finish as they come (the broker sends at most its in-flight window, 20 by
        // default, before it sees acks).
        let mut texts = Vec::new();
        let mut first = None;
        while texts.len() < 50 {
            let batch = tokio::time::timeout(Duration::from_secs(10), h.ports[1].recv())
                .await
                .unwrap_or_else(|_| panic!("records in time: {:?}", h.metrics.snapshot()))
                .expect("a batch");
            for mut r in batch {
                texts.push(text(&mut r));
                first.get_or_insert(r.attributes().clone());
                r.finish();
            }
        }
        let want: Vec<String> = (0..50)
            .map(|i| format!(r#"{{"device":"car-7","n":{i}}}"#))
            .collect();
        assert_eq!(texts, want, "qos {qos} {protocol}");
        let a = first.expect("attributes");
        assert_eq!(a["mqtt.topic"], format!("{base}/car-7/telemetry"));
        assert_eq!(a["mqtt.qos"], qos.to_string());
        assert_eq!(a["mqtt.retain"], "false");
        until(10, "the acks", || {
            qos == 0 || status(&h.metrics, "acked") == Some(json!(50))
        })
        .await;
        h.shutdown.cancel();
        run.await.expect("joined").expect("runs");
    }
}

/// A payload that is not JSON goes to `failure` with the parse error; it is still acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_json_payloads_go_to_failure() {
    let Some(url) = broker() else { return };
    let topic = unique("nonjson");
    let cfg: MqttSourceConfig = config(json!({
        "url": url, "client_id": format!("nonjson-{}", std::process::id()),
        "clean_session": true, "topics": [topic.clone()],
    }));
    let mut h = source_ctx(1);
    let run = tokio::spawn(source(&cfg).run(h.ctx));
    until(10, "the subscription", || {
        status(&h.metrics, "subscribed") == Some(json!(true))
    })
    .await;
    publish(
        &url,
        &topic,
        1,
        false,
        &[r#"{"ok":1}"#.into(), "not json {".into()],
    );
    let mut failed = tokio::time::timeout(Duration::from_secs(10), h.ports[0].recv())
        .await
        .expect("in time")
        .expect("a batch");
    assert_eq!(text(&mut failed[0]), "not json {");
    let msg = failed[0].attributes()["error.message"].clone();
    assert!(
        msg.starts_with("payload: content is not valid JSON"),
        "{msg}"
    );
    assert_eq!(failed[0].attributes()["mqtt.topic"], topic);
    finish_all(failed);
    let ok = h.ports[1].recv().await.expect("the good one");
    assert_eq!(ok.len(), 1);
    finish_all(ok);
    until(10, "the acks", || {
        status(&h.metrics, "acked") == Some(json!(2))
    })
    .await;
    h.shutdown.cancel();
    run.await.expect("joined").expect("runs");
}

/// A payload over `max_record_size` goes to `failure` with its first 1 KiB; the messages
/// around it are delivered, and all three are acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payloads_over_max_record_size_go_to_failure() {
    let Some(url) = broker() else { return };
    let topic = unique("oversized");
    let cfg: MqttSourceConfig = config(json!({
        "url": url, "client_id": format!("oversized-{}", std::process::id()),
        "clean_session": true, "topics": [topic.clone()], "max_record_size": "2KiB",
    }));
    let mut h = source_ctx(1);
    let run = tokio::spawn(source(&cfg).run(h.ctx));
    until(10, "the subscription", || {
        status(&h.metrics, "subscribed") == Some(json!(true))
    })
    .await;
    let big = format!(r#"{{"big":"{}"}}"#, "x".repeat(3000));
    publish(
        &url,
        &topic,
        1,
        false,
        &[r#"{"n":1}"#.into(), big, r#"{"n":2}"#.into()],
    );
    let mut failed = tokio::time::timeout(Duration::from_secs(10), h.ports[0].recv())
        .await
        .expect("in time")
        .expect("a batch");
    assert_eq!(failed.len(), 1);
    assert_eq!(
        text(&mut failed[0]),
        format!(r#"{{"big":"{}"#, "x".repeat(1016))
    );
    assert_eq!(
        failed[0].attributes()["error.message"],
        "the payload is 3010 bytes, over max_record_size (2.0 KiB); only its first 1024 bytes \
         are kept"
    );
    assert_eq!(failed[0].attributes()["mqtt.topic"], topic);
    finish_all(failed);
    let mut ok = Vec::new();
    while ok.len() < 2 {
        let batch = tokio::time::timeout(Duration::from_secs(10), h.ports[1].recv())
            .await
            .expect("in time")
            .expect("a batch");
        for mut r in batch {
            ok.push(text(&mut r));
            r.finish();
        }
    }
    assert_eq!(ok, [r#"{"n":1}"#, r#"{"n":2}"#]);
    until(10, "the acks", || {
        status(&h.metrics, "acked") == Some(json!(3))
    })
    .await;
    h.shutdown.cancel();
    run.await.expect("joined").expect("runs");
}

/// A downstream that does not finish records: the source stops at `max_inflight` (10, below
/// Mosquitto's own window of 20) and does not acknowledge, so the broker keeps the backlog; once
/// records finish, all of it arrives, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_downstream_stops_the_source_at_max_inflight() {
    let Some(url) = broker() else { return };
    let topic = unique("slow");
    let cfg: MqttSourceConfig = config(json!({
        "url": url, "client_id": format!("slow-{}", std::process::id()),
        "clean_session": true, "topics": [topic.clone()], "max_inflight": 10, "batch_size": 4,
    }));
    let mut h = source_ctx(1);
    let run = tokio::spawn(source(&cfg).run(h.ctx));
    until(10, "the subscription", || {
        status(&h.metrics, "subscribed") == Some(json!(true))
    })
    .await;
    let lines: Vec<String> = (0..2000).map(|i| format!(r#"{{"n":{i}}}"#)).collect();
    publish(&url, &topic, 1, false, &lines);
    // Hold every record: nothing finishes.
    let mut held = Vec::new();
    let received = |m: &Arc<NodeMetrics>| m.snapshot().received;
    until(10, "a full window", || received(&h.metrics) >= 10).await;
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(300) {
        while let Ok(Some(b)) =
            tokio::time::timeout(Duration::from_millis(20), h.ports[1].recv()).await
        {
            held.extend(b);
        }
        assert!(
            received(&h.metrics) <= 10,
            "the source went past its window: {}",
            received(&h.metrics)
        );
    }
    assert_eq!(held.len(), 10);
    assert_eq!(
        status(&h.metrics, "acked"),
        None,
        "nothing was acknowledged"
    );
    // Its lag: the messages it holds unacknowledged to the broker.
    let lag = |m: &Arc<NodeMetrics>| {
        m.snapshot()
            .lag
            .iter()
            .find(|l| l.unit == flow_core::runtime::metrics::LagUnit::Messages)
            .map(|l| l.value)
    };
    until(10, "a lag of the 10 held", || lag(&h.metrics) == Some(10)).await;
    // Let records finish as they come: everything the broker held arrives, in order.
    let mut seen: Vec<i64> = Vec::new();
    for r in held.iter_mut() {
        seen.push(n(r));
    }
    finish_all(held);
    while seen.len() < 2000 {
        let b = tokio::time::timeout(Duration::from_secs(10), h.ports[1].recv())
            .await
            .expect("in time")
            .expect("a batch");
        assert!(b.len() <= 4);
        for mut r in b {
            seen.push(n(&mut r));
            r.finish();
        }
    }
    assert_eq!(seen, (0..2000).collect::<Vec<_>>());
    until(10, "every message acknowledged", || {
        lag(&h.metrics) == Some(0)
    })
    .await;
    h.shutdown.cancel();
    run.await.expect("joined").expect("runs");
}

fn n(r: &mut Record) -> i64 {
    r.value()
        .ok()
        .and_then(|v| v.as_object().and_then(|o| o.get("n")).cloned())
        .and_then(|v| v.as_integer())
        .expect("a number")
}

/// A live subscriber (a plain `rumqttc` client, QoS 2), subscribed before this returns; the
/// messages it receives come out of the channel as `topic payload` lines.
async fn subscriber(url: &str, filter: &str) -> tokio::sync::mpsc::UnboundedReceiver<String> {
    let u = super::BrokerUrl::parse(url).expect("url");
    let id = format!("sub-{}", unique("x").replace('/', "-"));
    let mut o = rumqttc::MqttOptions::new(id, u.host, u.port);
    o.set_clean_session(true);
    let (client, mut el) = rumqttc::AsyncClient::new(o, 16);
    client
        .subscribe(filter, rumqttc::QoS::ExactlyOnce)
        .await
        .expect("subscribe queued");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let _client = client;
        let mut subscribed_tx = Some(subscribed_tx);
        loop {
            match el.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                    if let Some(t) = subscribed_tx.take() {
                        let _ = t.send(());
                    }
                }
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                    let line = format!("{} {}", p.topic, String::from_utf8_lossy(&p.payload));
                    if tx.send(line).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => panic!("the test subscriber lost the broker: {e}"),
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), subscribed)
        .await
        .expect("subscribed in time")
        .expect("subscribed");
    rx
}

/// The sink publishes on the topic the template makes, at each QoS; a live subscriber receives
/// exactly the records, and each is acknowledged once the broker confirmed it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_round_trip_per_qos() {
    let Some(url) = broker() else { return };
    for (qos, protocol) in [(0, "v311"), (1, "v311"), (2, "v311"), (1, "v5")] {
        let base = unique(&format!("sink-q{qos}-{protocol}"));
        let mut received = subscriber(&url, &format!("{base}/#")).await;
        let cfg: MqttSinkConfig = config(json!({
            "url": url, "protocol": protocol, "qos": qos,
            "client_id": format!("sink-q{qos}-{protocol}-{}", std::process::id()),
            "topic": format!("{base}/{{device}}/commands"),
        }));
        let (ctx, tx, mut failures, metrics) = sink_ctx();
        // One ack token per record (its sequence number is `i`; 30 is the one without a
        // device), so each record's acknowledgement is seen on its own.
        let mut tracker = flow_core::ack::AckTracker::new();
        let records: Vec<Record> = (0..30)
            .map(|i| rec(&format!(r#"{{"device":"d{}","i":{i}}}"#, i % 3)))
            .chain([rec(r#"{"nodevice":true}"#)])
            .enumerate()
            .map(|(i, r)| r.with_acks(flow_core::ack::Acks::one(tracker.token(i as u64))))
            .collect();
        tx.send(records).await.expect("queued");
        drop(tx);
        sink(&cfg).run(ctx).await.expect("runs");
        assert_eq!(metrics.snapshot().sent, 30, "qos {qos}");
        let failed = crate::testing::records(&mut failures).await;
        assert_eq!(failed.len(), 1);
        // Every record finished exactly once: the 30 published ones delivered (at QoS 1 and 2
        // the sink finishes a record on the broker's PUBACK or PUBCOMP, at QoS 0 once it was
        // written), the one whose topic cannot be made failed; none abandoned.
        let mut acks = std::collections::BTreeMap::new();
        while let Some(f) = tracker.next().await {
            assert!(
                acks.insert(f.seq, f.status).is_none(),
                "{f:?} finished twice"
            );
        }
        let want_acks: std::collections::BTreeMap<u64, AckStatus> = (0..31)
            .map(|i| {
                (
                    i,
                    if i < 30 {
                        AckStatus::Delivered
                    } else {
                        AckStatus::Failed
                    },
                )
            })
            .collect();
        assert_eq!(acks, want_acks, "qos {qos} {protocol}");
        let mut lines: Vec<String> = Vec::new();
        while lines.len() < 30 {
            match tokio::time::timeout(Duration::from_secs(10), received.recv()).await {
                Ok(Some(l)) => lines.push(l),
                _ => break,
            }
        }
        // Nothing more than the records comes.
        if let Ok(Some(l)) = tokio::time::timeout(Duration::from_millis(200), received.recv()).await
        {
            lines.push(l);
        }
        lines.sort();
        let mut want: Vec<String> = (0..30)
            .map(|i| {
                format!(
                    r#"{base}/d{}/commands {{"device":"d{}","i":{i}}}"#,
                    i % 3,
                    i % 3
                )
            })
            .collect();
        want.sort();
        assert_eq!(lines, want, "qos {qos} {protocol}");
    }
}

/// A Mosquitto process of the test's own on `port`, stopped when dropped (with the directory
/// of its config).
struct OwnBroker {
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl OwnBroker {
    fn start(port: u16) -> Self {
        let dir = tempfile::tempdir().expect("tmp");
        let conf = dir.path().join("m.conf");
        std::fs::write(
            &conf,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"),
        )
        .expect("conf");
        let bin = std::env::var("FLOW_TEST_MOSQUITTO").unwrap_or_else(|_| "mosquitto".into());
        let child = Command::new(bin)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto starts");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "mosquitto did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        OwnBroker { child, _dir: dir }
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Records `{"n":i}` in one batch with one ack token.
fn tracked(n: usize) -> (flow_core::ack::AckTracker, Vec<Record>) {
    let mut tracker = flow_core::ack::AckTracker::new();
    let t = tracker.token(0);
    let records = (0..n)
        .map(|i| rec(&format!(r#"{{"n":{i}}}"#)).with_acks(flow_core::ack::Acks::one(t.clone())))
        .collect();
    (tracker, records)
}

/// The broker cannot be reached: nothing is acknowledged as delivered; asked to stop, the
/// sink gives up within bounds and acknowledges nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_with_the_broker_down_acknowledges_nothing_and_a_stop_gives_up() {
    if broker().is_none() {
        return;
    }
    let port = crate::http_test::closed_addr().port();
    let cfg: MqttSinkConfig = config(json!({
        "url": format!("mqtt://127.0.0.1:{port}"), "qos": 1, "topic": "t/{n}",
        "client_id": unique("down").replace('/', "-"), "reconnect_max": "200ms",
    }));
    let (ctx, tx, mut failures, metrics, stop) = sink_ctx_stoppable();
    let (mut tracker, records) = tracked(10);
    tx.send(records).await.expect("queued");
    let task = tokio::spawn(sink(&cfg).run(ctx));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(tracker.try_next().is_none(), "acknowledged while down");
    assert!(!task.is_finished());
    stop.cancel();
    let e = tokio::time::timeout(Duration::from_secs(5), task)
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
    let f = tracker.next().await.expect("finished");
    assert!(!f.committable(), "{f:?}");
    assert_eq!(metrics.snapshot().sent, 0);
}

/// The broker is down, then comes back where it was: every record is published and
/// acknowledged only then. (Each on its own retained topic, so a subscriber that comes after
/// them still gets them all.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_broker_down_then_back_loses_nothing() {
    if broker().is_none() {
        return;
    }
    let port = crate::http_test::closed_addr().port();
    let url = format!("mqtt://127.0.0.1:{port}");
    let cfg: MqttSinkConfig = config(json!({
        "url": url, "qos": 1, "topic": "back/{n}", "retain": true,
        "client_id": unique("back").replace('/', "-"), "reconnect_max": "200ms",
    }));
    let (ctx, tx, _failures, metrics) = sink_ctx();
    let (mut tracker, records) = tracked(50);
    tx.send(records).await.expect("queued");
    drop(tx);
    let task = tokio::spawn(sink(&cfg).run(ctx));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(tracker.try_next().is_none(), "acknowledged while down");
    let _broker = OwnBroker::start(port);
    tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .expect("in time")
        .expect("joined")
        .expect("runs");
    let f = tracker.next().await.expect("finished");
    assert_eq!(f.status, flow_core::ack::AckStatus::Delivered);
    assert_eq!(metrics.snapshot().sent, 50);
    let mut received = subscriber(&url, "back/#").await;
    let mut got = std::collections::BTreeSet::new();
    while got.len() < 50 {
        let l = tokio::time::timeout(Duration::from_secs(10), received.recv())
            .await
            .expect("in time")
            .expect("a message");
        got.insert(l);
    }
    let want: std::collections::BTreeSet<String> = (0..50)
        .map(|i| format!(r#"back/{i} {{"n":{i}}}"#))
        .collect();
    assert_eq!(got, want);
}

/// Validation points at the offending keys; unknown keys are rejected.
#[test]
fn configs_validate() {
    let c: MqttSourceConfig = config(json!({"url": "http://x", "topics": ["a/#/b"], "qos": 3}));
    let paths: Vec<String> = c.validate().into_iter().map(|e| e.path.join(".")).collect();
    assert_eq!(paths, ["url", "topics.0", "qos"]);
    let c: MqttSourceConfig = config(json!({"url": "mqtt://h", "topics": ["a"]}));
    assert!(c.validate().is_empty());
    assert_eq!(c.outputs(), ["out"]);
    assert!(!c.clean_session);
    let c: MqttSinkConfig = config(json!({"url": "mqtt://h", "topic": "a/+/{x}"}));
    assert_eq!(c.validate()[0].path, ["topic"]);
    // rumqttc's MQTT 5 client panics on a keep-alive under 5 s: refused at validation.
    for keep_alive in ["0s", "1s", "4s"] {
        let c: MqttSourceConfig = config(
            json!({"url": "mqtt://h", "topics": ["a"], "protocol": "v5", "keep_alive": keep_alive}),
        );
        let paths: Vec<String> = c.validate().into_iter().map(|e| e.path.join(".")).collect();
        assert_eq!(paths, ["keep_alive"], "{keep_alive}");
    }
    let c: MqttSourceConfig =
        config(json!({"url": "mqtt://h", "topics": ["a"], "protocol": "v5", "keep_alive": "5s"}));
    assert!(c.validate().is_empty());
    let c: MqttSourceConfig =
        config(json!({"url": "mqtt://h", "topics": ["a"], "keep_alive": "1s"}));
    assert!(c.validate().is_empty());
    assert!(
        serde_json::from_value::<MqttSinkConfig>(
            json!({"url": "mqtt://h", "topic": "a", "qso": 1})
        )
        .is_err()
    );
}
