//! Window tests: the engine against hand-computed results, and the task under paused time.

use std::sync::Arc;
use std::time::Duration;

use flow_core::processor::{Output, PortId, ProcessorConfig, TaskContext};
use flow_core::record::{Origin, Record, Value};
use flow_core::runtime::CancellationToken;
use flow_core::runtime::edge::{EdgeReceiver, EdgeSender, WhenFull, edge};
use flow_core::runtime::emit::{Emitter, Input};
use flow_core::runtime::metrics::NodeMetrics;

use super::engine::{Engine, LATE, OUT};
use super::*;
use crate::testing::config;

fn cfg(extra: serde_json::Value) -> WindowAggregateConfig {
    let mut base = serde_json::json!({
        "key": ".k",
        "event_time": ".t",
        "window": { "tumbling": "10ms" },
        "aggregates": { "n": "count()", "sum": "sum(.v)" },
    });
    if let (Some(b), Some(e)) = (base.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            b.insert(k.clone(), v.clone());
        }
    }
    config(base)
}

fn engine(c: &WindowAggregateConfig) -> Engine {
    let errors = c.validate();
    assert!(errors.is_empty(), "{errors:?}");
    Engine::new(c.compile().unwrap_or_else(|_| panic!("compiles")).settings)
}

/// Feed `(key, t, v)` events; returns the output as `key:start-end:n:sum` strings and the late
/// events as `key@t`.
fn feed(
    engine: &mut Engine,
    events: &[(&str, i64, i64)],
    flush: bool,
) -> (Vec<String>, Vec<String>) {
    let mut out = Output::new("w".into(), 3);
    add_events(engine, events, 0, &mut out);
    if flush {
        engine.flush(&mut out);
    }
    summarize(&out)
}

/// Add `events[skip..]` as records from source 1 whose positions are their 1-based index.
fn add_events(engine: &mut Engine, events: &[(&str, i64, i64)], skip: usize, out: &mut Output) {
    for (i, (k, t, v)) in events.iter().enumerate().skip(skip) {
        let mut r = Record::from_bytes(format!(r#"{{"k":"{k}","t":{t},"v":{v}}}"#));
        r.origin = Some(Origin {
            source: 1,
            seq: i as u64 + 1,
        });
        engine.add(r, *t, Value::from(*k), &[Value::Null, Value::from(*v)], out);
    }
}

fn summarize(out: &Output) -> (Vec<String>, Vec<String>) {
    let windows = out
        .port(OUT)
        .iter()
        .map(|r| {
            let v = r.parsed_value().and_then(Value::as_object).expect("object");
            let g = |f: &str| v.get(f).map(|x| x.to_string()).unwrap_or_default();
            format!(
                "{}:{}-{}:{}:{}",
                g("key").trim_matches('"'),
                g("window_start"),
                g("window_end"),
                g("n"),
                g("sum")
            )
        })
        .collect();
    let late = out
        .port(LATE)
        .iter()
        .map(|r| {
            let mut r = r.clone();
            let v = r
                .value()
                .ok()
                .and_then(Value::as_object)
                .cloned()
                .expect("object");
            format!(
                "{}@{}",
                v.get("k")
                    .map(|x| x.to_string())
                    .unwrap_or_default()
                    .trim_matches('"'),
                v.get("t").map(|x| x.to_string()).unwrap_or_default()
            )
        })
        .collect();
    (windows, late)
}

#[test]
fn tumbling_boundaries_lateness_duplicates_and_single_keys() {
    let c = cfg(serde_json::json!({ "allowed_lateness": "2ms" }));
    let mut e = engine(&c);
    let (w, late) = feed(
        &mut e,
        &[
            ("a", 0, 1),  // first window [0,10)
            ("a", 9, 2),  // last ms of [0,10)
            ("a", 9, 3),  // duplicate timestamp
            ("b", 10, 4), // exactly on the boundary: [10,20)
            ("a", 12, 5), // wm = 10: [0,10) fires (end 10 <= 10)
            ("a", 8, 6),  // late: its window already fired
            ("c", 11, 7), // a key seen once
            ("a", 21, 8), // wm = 19: [10,20) still open (20 > 19)
            ("b", 18, 9), // exactly at the lateness bound: allowed
            ("a", 22, 1), // wm = 20: [10,20) fires
        ],
        true,
    );
    assert_eq!(
        w,
        [
            "a:0-10:3:6",
            "a:10-20:1:5",
            "b:10-20:2:13",
            "c:10-20:1:7",
            "a:20-30:2:9",
        ]
    );
    assert_eq!(late, ["a@8"]);
    assert_eq!(e.counters.late, 1);
}

#[test]
fn hopping_windows_against_hand_computed_results() {
    let c = cfg(serde_json::json!({ "window": { "hopping": { "size": "10ms", "slide": "5ms" } } }));
    let mut e = engine(&c);
    // t=3 is in [-5,5) and [0,10); t=7 in [0,10) and [5,15); t=12 in [5,15) and [10,20).
    let (mut w, late) = feed(&mut e, &[("a", 3, 1), ("a", 7, 2), ("a", 12, 4)], true);
    w.sort();
    assert_eq!(w, ["a:-5-5:1:1", "a:0-10:2:3", "a:10-20:1:4", "a:5-15:2:6"]);
    assert!(late.is_empty());
}

#[test]
fn session_windows_merge_on_overlap_and_close_on_a_gap() {
    let c = cfg(
        serde_json::json!({ "window": { "session": { "gap": "5ms" } }, "allowed_lateness": "100ms" }),
    );
    let mut e = engine(&c);
    let (w, _) = feed(
        &mut e,
        &[
            ("a", 0, 1),  // session [0,5)
            ("a", 10, 2), // new session [10,15)
            ("a", 3, 4),  // extends the first: [0,8)
            ("a", 7, 8),  // bridges both: [0,15)
            ("b", 1, 16), // other key, own session
            ("a", 30, 32),
        ],
        true,
    );
    // Flushed in order of end.
    assert_eq!(w, ["b:1-6:1:16", "a:0-15:4:15", "a:30-35:1:32"]);
}

#[test]
fn limits_fail_or_evict_the_oldest_flagged() {
    let c = cfg(serde_json::json!({ "max_keys": 2 }));
    let mut e = engine(&c);
    let mut out = Output::new("w".into(), 3);
    for k in ["a", "b", "c"] {
        let r = Record::from_bytes(format!(r#"{{"k":"{k}"}}"#));
        e.add(
            r,
            1,
            Value::from(k),
            &[Value::Null, Value::from(1)],
            &mut out,
        );
    }
    assert_eq!(e.open(), 2);
    assert_eq!(
        out.port(PortId::FAILURE).len(),
        1,
        "the third key is refused"
    );

    let c = cfg(
        serde_json::json!({ "max_open_windows": 2, "on_limit": "evict_oldest", "allowed_lateness": "100ms" }),
    );
    let mut e = engine(&c);
    let mut out = Output::new("w".into(), 3);
    for (k, t) in [("a", 1), ("b", 15), ("c", 25)] {
        let r = Record::from_bytes(format!(r#"{{"k":"{k}"}}"#));
        e.add(
            r,
            t,
            Value::from(k),
            &[Value::Null, Value::from(1)],
            &mut out,
        );
    }
    let evicted: Vec<_> = out
        .port(OUT)
        .iter()
        .filter(|r| r.attributes.contains_key("window.evicted"))
        .collect();
    assert_eq!(evicted.len(), 1);
    assert_eq!(e.counters.evicted, 1);
}

#[test]
fn a_restored_checkpoint_skips_what_it_already_holds() {
    let c = cfg(serde_json::json!({}));
    let events = [
        ("a", 1, 1),
        ("a", 2, 2),
        ("a", 3, 4),
        ("a", 11, 8),
        ("a", 12, 16),
    ];
    // Reference: one uninterrupted run.
    let (whole, _) = feed(&mut engine(&c), &events, true);
    // Crash after three events, with a checkpoint taken then; the source replays from the
    // second event (its committed position was behind).
    let mut first = engine(&c);
    let (before, _) = feed(&mut first, &events[..3], false);
    let snapshot = first.snapshot().expect("encodes");
    let mut second = engine(&c);
    second.restore(&snapshot).expect("restores");
    let mut out = Output::new("w".into(), 3);
    add_events(&mut second, &events, 1, &mut out);
    second.flush(&mut out);
    let (after, _) = summarize(&out);
    assert!(before.is_empty());
    assert_eq!(after, whole, "no record counted twice, none lost");
    assert_eq!(second.counters.replayed, 2);
}

struct Harness {
    input: EdgeSender,
    out: EdgeReceiver,
    late: EdgeReceiver,
    task: tokio::task::JoinHandle<Result<(), ProcessorError>>,
}

fn start(c: &WindowAggregateConfig) -> Harness {
    let Ok(Processor::Task(task)) = c.build(&BuildContext::new("w")) else {
        panic!("a task");
    };
    let (in_tx, in_rx, _) = edge(usize::MAX, usize::MAX, WhenFull::Block);
    let mut ports = Vec::new();
    let mut rxs = Vec::new();
    for name in ["failure", "out", "late"] {
        let (tx, rx, _) = edge(usize::MAX, usize::MAX, WhenFull::Block);
        ports.push((name.to_owned(), vec![tx]));
        rxs.push(rx);
    }
    let metrics = Arc::new(NodeMetrics::default());
    let ctx = TaskContext {
        name: "w".into(),
        input: Input::new(vec![in_rx]),
        out: Emitter::new("w".into(), ports, metrics.clone()),
        shutdown: CancellationToken::new(),
        metrics,
    };
    let late = rxs.pop().expect("late");
    let out = rxs.pop().expect("out");
    Harness {
        input: in_tx,
        out,
        late,
        task: tokio::spawn(task.run(ctx)),
    }
}

fn try_take(rx: &mut EdgeReceiver) -> Vec<Record> {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let mut got = Vec::new();
    while let std::task::Poll::Ready(Some(b)) = rx.poll_recv(&mut cx) {
        got.extend(b);
    }
    got
}

#[tokio::test(start_paused = true)]
async fn processing_time_windows_fire_on_the_clock() {
    let c = cfg(serde_json::json!({ "event_time": null, "window": { "tumbling": "1s" } }));
    let mut h = start(&c);
    let batch = (0..3)
        .map(|i| Record::from_bytes(format!(r#"{{"k":"a","v":{i}}}"#)))
        .collect();
    h.input.send(batch).await.expect("sent");
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(try_take(&mut h.out).is_empty(), "the window is still open");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let fired = try_take(&mut h.out);
    assert_eq!(
        fired.len(),
        1,
        "fired by the clock, with the input still open"
    );
    let v = fired[0]
        .parsed_value()
        .and_then(Value::as_object)
        .expect("object");
    assert_eq!(v.get("n"), Some(&Value::from(3)));
    drop(h.input);
    h.task.await.expect("joined").expect("ok");
}

#[tokio::test(start_paused = true)]
async fn an_idle_timeout_advances_event_time_when_input_goes_quiet() {
    let c = cfg(serde_json::json!({
        "window": { "tumbling": "10s" },
        "allowed_lateness": "2s",
        "idle_timeout": "5s",
    }));
    let mut h = start(&c);
    let batch = vec![Record::from_bytes(r#"{"k":"a","t":1000,"v":1}"#)];
    h.input.send(batch).await.expect("sent");
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(try_take(&mut h.out).is_empty());
    // Quiet input: every 5 s event time moves 5 s; [0,10s) fires once the watermark (max - 2s)
    // reaches 10 s: after 11 s + 2 s of event time, i.e. three idle periods.
    tokio::time::sleep(Duration::from_secs(20)).await;
    let fired = try_take(&mut h.out);
    assert_eq!(fired.len(), 1);
    assert!(try_take(&mut h.late).is_empty());
    drop(h.input);
    h.task.await.expect("joined").expect("ok");
}

#[test]
fn bad_configs_are_reported_at_their_key() {
    let c: WindowAggregateConfig = config(serde_json::json!({
        "window": { "tumbling": "10s", "session": { "gap": "1s" } },
        "aggregates": { "x": "avrg(.v)", "key": "count()", "y": "max(.v +)" },
    }));
    let errors = c.validate();
    let paths: Vec<String> = errors.iter().map(|e| e.path.join(".")).collect();
    assert_eq!(
        paths,
        ["window", "aggregates.key", "aggregates.x", "aggregates.y"],
        "{errors:?}"
    );
}
