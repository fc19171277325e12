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

/// A record's structured view (built from its content if it has not been yet).
fn view(r: &Record) -> Value {
    r.clone().value().cloned().expect("JSON")
}

fn summarize(out: &Output) -> (Vec<String>, Vec<String>) {
    let windows = out
        .port(OUT)
        .iter()
        .map(|r| {
            let v = view(r);
            let v = v.as_object().expect("object");
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

/// A record one of whose aggregates cannot take its argument (`sum` of a string) fails whole:
/// no other aggregate of its window counts it, and it does not move the watermark.
#[test]
fn a_record_with_a_bad_argument_is_counted_by_no_aggregate() {
    let c = cfg(serde_json::json!({}));
    let mut e = engine(&c);
    let mut out = Output::new("w".into(), 3);
    let bad = Record::from_bytes(r#"{"k":"a","t":50,"v":"hot"}"#);
    e.add(
        bad,
        50,
        Value::from("a"),
        &[Value::Null, Value::from("hot")],
        &mut out,
    );
    add_events(&mut e, &[("a", 1, 2)], 0, &mut out);
    e.flush(&mut out);
    assert_eq!(out.port(PortId::FAILURE).len(), 1);
    let (w, late) = summarize(&out);
    assert_eq!(
        w,
        vec!["a:0-10:1:2"],
        "counted once, by the good record only"
    );
    assert!(late.is_empty(), "the bad record did not move the watermark");
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
            // Windows that end together fire in the order they opened.
            "b:10-20:2:13",
            "a:10-20:1:5",
            "c:10-20:1:7",
            "a:20-30:2:9",
        ]
    );
    assert_eq!(late, ["a@8"]);
    assert_eq!(e.counters.late, 1);
}

/// An output's content lists its fields in the configured order; a key field named like the
/// start field holds its place once, with the start (as a map would).
#[test]
fn output_fields_keep_their_order_and_a_shared_name_is_written_once() {
    let content = |extra: serde_json::Value| {
        let c = cfg(extra);
        let mut e = engine(&c);
        let mut out = Output::new("w".into(), 3);
        add_events(&mut e, &[("a", 1, 2)], 0, &mut out);
        e.flush(&mut out);
        let mut r = out.port(OUT)[0].clone();
        String::from_utf8_lossy(r.content()).into_owned()
    };
    assert_eq!(
        content(serde_json::json!({})),
        r#"{"key":"a","window_start":0,"window_end":10,"n":1,"sum":2}"#
    );
    assert_eq!(
        content(serde_json::json!({ "key_field": "window_start" })),
        r#"{"window_start":0,"window_end":10,"n":1,"sum":2}"#
    );
}

/// A record that closes more windows than a chunk emits one chunk; the task emits the rest
/// chunk by chunk (sending each on) before the next record, in the same order as at once. A
/// record that arrives while windows wait to be emitted first emits them all.
#[test]
fn windows_closing_at_once_go_out_in_chunks_in_order() {
    let c = cfg(serde_json::json!({}));
    let keys: Vec<String> = (0..10_000).map(|i| format!("k{i}")).collect();
    let mut events: Vec<(&str, i64, i64)> = keys.iter().map(|k| (k.as_str(), 3, 1)).collect();
    events.push(("z", 10, 2)); // watermark 10: the 10,000 windows [0,10) close
    let expected: Vec<String> = keys.iter().map(|k| format!("{k}:0-10:1:1")).collect();

    let mut e = engine(&c);
    let mut out = Output::new("w".into(), 3);
    add_events(&mut e, &events, 0, &mut out);
    let (mut all, _) = summarize(&out);
    assert_eq!(all.len(), engine::FIRE_CHUNK);
    assert!(e.closing());
    let mut chunks = 1;
    while e.closing() {
        let mut more = Output::new("w".into(), 3);
        e.fire_some(&mut more, engine::FIRE_CHUNK);
        all.extend(summarize(&more).0);
        chunks += 1;
    }
    assert_eq!(chunks, 3);
    assert_eq!(all, expected);
    assert_eq!(e.open(), 1, "z's window stays open");

    // The next record, before the task emitted the rest: they go out first, then it counts.
    let mut e = engine(&c);
    events.push(("z", 11, 3));
    let mut out = Output::new("w".into(), 3);
    add_events(&mut e, &events, 0, &mut out);
    assert!(!e.closing());
    e.flush(&mut out);
    let (all, late) = summarize(&out);
    assert_eq!(all[..10_000], expected[..]);
    assert_eq!(all[10_000..], ["z:10-20:2:5"]);
    assert!(late.is_empty());
}

/// An output whose values read back from JSON as themselves carries its content only (the
/// view is built if a consumer asks, equal to the one made before); one holding a timestamp
/// keeps the view it was made with, where the timestamp stays a timestamp.
#[test]
fn outputs_build_their_view_only_when_it_reads_back_from_json() {
    let c = cfg(serde_json::json!({
        "aggregates": { "avg": "avg(.v)", "first": "first(.v)" },
    }));
    let mut e = engine(&c);
    let mut out = Output::new("w".into(), 3);
    let r = || Record::from_bytes(&br#"{}"#[..]);
    let (x, y) = (Value::from_f64_or_zero(1.5), Value::from(2));
    let ts = Value::Timestamp(chrono::DateTime::from_timestamp_millis(7).expect("time"));
    e.add(r(), 1, Value::from("k"), &[x.clone(), x.clone()], &mut out);
    e.add(r(), 2, Value::from("k"), &[y.clone(), y], &mut out);
    e.add(r(), 11, Value::from("t"), &[x, ts.clone()], &mut out);
    e.flush(&mut out);
    let outs = out.port(OUT);
    assert_eq!(outs.len(), 2);
    assert!(outs[0].parsed_value().is_none(), "built only when asked");
    let v = view(&outs[0]);
    let o = v.as_object().expect("object");
    assert_eq!(o.get("key"), Some(&Value::from("k")));
    assert_eq!(o.get("window_end"), Some(&Value::from(10)));
    assert_eq!(o.get("avg"), Some(&Value::from_f64_or_zero(1.75)));
    assert_eq!(o.get("first"), Some(&Value::from_f64_or_zero(1.5)));
    let held = outs[1]
        .parsed_value()
        .and_then(Value::as_object)
        .expect("made");
    assert_eq!(held.get("first"), Some(&ts));
}

/// Windows are found by a key's bytes; a key that is not UTF-8 is kept by its lossy text,
/// and its records still share one window (found again by that text), as do records whose
/// key is that text, as bytes or as a VRL `String` (its text, not its JSON: a string made by
/// a program and the same text read from content are one key).
#[test]
fn a_key_that_is_not_utf8_keeps_one_window() {
    let c = cfg(serde_json::json!({}));
    let mut e = engine(&c);
    let mut out = Output::new("w".into(), 3);
    let r = || Record::from_bytes(&br#"{}"#[..]);
    let bad = || Value::Bytes(bytes::Bytes::from_static(b"car-\xff"));
    let one = || [Value::Null, Value::from(1)];
    e.add(r(), 1, bad(), &one(), &mut out);
    e.add(r(), 2, bad(), &one(), &mut out);
    e.add(r(), 3, Value::from("car-\u{fffd}"), &one(), &mut out);
    e.add(
        r(),
        4,
        Value::Bytes(bytes::Bytes::from_static(b"car-1")),
        &one(),
        &mut out,
    );
    e.add(r(), 5, Value::from("car-1"), &one(), &mut out);
    e.flush(&mut out);
    let (windows, late) = summarize(&out);
    assert!(late.is_empty());
    assert_eq!(windows, ["car-\u{fffd}:0-10:3:3", "car-1:0-10:2:2"]);
}

/// A window writes its key as it came: a string key (kept once, as its entry's text) as a
/// string, a number as a number, bytes that are not UTF-8 by their lossy text; the same
/// after the open windows went through a checkpoint.
#[test]
fn keys_are_written_as_they_came_also_after_a_checkpoint() {
    let c = cfg(serde_json::json!({}));
    let r = || Record::from_bytes(&br#"{}"#[..]);
    let one = || [Value::Null, Value::from(1)];
    let keys = || {
        [
            Value::from("car-1"),
            Value::from(7),
            Value::Bytes(bytes::Bytes::from_static(b"car-\xff")),
            Value::from(true),
        ]
    };
    let written = |out: &Output| -> Vec<String> {
        out.port(OUT)
            .iter()
            .map(|r| String::from_utf8_lossy(r.clone().content()).into_owned())
            .map(|line| {
                line.split(",\"window_start\"")
                    .next()
                    .unwrap_or("")
                    .to_owned()
            })
            .collect()
    };
    let expected = [
        r#"{"key":"car-1""#,
        r#"{"key":7"#,
        "{\"key\":\"car-\u{fffd}\"",
        r#"{"key":true"#,
    ];
    let mut first = engine(&c);
    let mut out = Output::new("w".into(), 3);
    for k in keys() {
        first.add(r(), 1, k, &one(), &mut out);
    }
    let snapshot = first.snapshot().expect("encodes");
    first.flush(&mut out);
    assert_eq!(written(&out), expected);
    let mut second = engine(&c);
    second.restore(&snapshot).expect("restores");
    let mut out = Output::new("w".into(), 3);
    second.flush(&mut out);
    assert_eq!(written(&out), expected);
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
    // `a` closes first but comes second: the oldest is the window that closes first, not the
    // one opened first. No watermark closes any of them (100 ms of lateness).
    for (k, t, v) in [("b", 15, 2), ("a", 1, 1), ("a", 3, 10), ("c", 25, 3)] {
        let r = Record::from_bytes(format!(r#"{{"k":"{k}"}}"#));
        e.add(
            r,
            t,
            Value::from(k),
            &[Value::Null, Value::from(v)],
            &mut out,
        );
    }
    let (windows, late) = summarize(&out);
    assert_eq!(windows, ["a:0-10:2:11"], "only a's window went, whole");
    assert!(late.is_empty());
    assert!(
        out.port(OUT)
            .iter()
            .all(|r| r.attributes().get("window.evicted").map(String::as_str) == Some("true")),
        "flagged as evicted"
    );
    assert_eq!(e.counters.evicted, 1);
    assert_eq!(e.open(), 2);
    // The two younger windows are still open, intact, and not flagged when they close.
    let mut rest = Output::new("w".into(), 3);
    e.flush(&mut rest);
    assert_eq!(summarize(&rest).0, ["b:10-20:1:2", "c:20-30:1:3"]);
    assert!(
        rest.port(OUT)
            .iter()
            .all(|r| !r.attributes().contains_key("window.evicted"))
    );
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

/// An engine numbering its outputs as source 9, tracking deliveries for checkpoints.
fn numbered(c: &WindowAggregateConfig) -> Engine {
    let mut s = c.compile().unwrap_or_else(|_| panic!("compiles")).settings;
    s.origin = Some(9);
    let mut e = Engine::new(s);
    e.track_for_checkpoints();
    e
}

/// With `Settings::origin`, outputs are numbered in order of emission, and a restart from a
/// checkpoint numbers them the same: the windows emitted but not delivered at the checkpoint
/// come again first with their numbers, then the later ones with the numbers they had.
#[test]
fn a_restart_numbers_windows_as_the_first_run_did() {
    let c = cfg(serde_json::json!({}));
    let numbered = || numbered(&c);
    let events = [
        ("a", 1, 1),
        ("b", 2, 2),
        ("a", 12, 4),
        ("b", 15, 8),
        ("a", 25, 16),
    ];
    let numbers = |out: &Output| -> Vec<(u64, String)> {
        let texts = summarize(out).0;
        out.port(OUT)
            .iter()
            .zip(texts)
            .map(|(r, t)| {
                let o = r.origin.expect("numbered");
                assert_eq!(o.source, 9);
                (o.seq, t)
            })
            .collect()
    };
    let mut first = numbered();
    let mut out = Output::new("w".into(), 3);
    add_events(&mut first, &events[..3], 0, &mut out);
    // A checkpoint while the two windows emitted so far are not delivered yet.
    let snapshot = first.snapshot().expect("encodes");
    add_events(&mut first, &events, 3, &mut out);
    first.flush(&mut out);
    let whole = numbers(&out);
    assert_eq!(
        whole.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
        [0, 1, 2, 3, 4]
    );
    // The crash came after the fourth window; the source replays from its second event.
    let mut second = numbered();
    second.restore(&snapshot).expect("restores");
    let mut again = Output::new("w".into(), 3);
    add_events(&mut second, &events, 1, &mut again);
    second.flush(&mut again);
    assert_eq!(
        numbers(&again),
        whole,
        "the same windows under the same numbers"
    );
}

/// The windows emitted before one send of the output share a delivery token: the checkpoints
/// keep all of them until every one is delivered (a crash in between emits them again, with
/// their numbers), then none.
#[test]
fn windows_sent_together_are_kept_until_all_of_them_are_delivered() {
    let c = cfg(serde_json::json!({}));
    let numbered = || numbered(&c);
    // The numbers of the windows a checkpoint of `e` holds as emitted and not delivered.
    let held = |e: &Engine| -> Vec<u64> {
        let mut restored = numbered();
        restored
            .restore(&e.snapshot().expect("encodes"))
            .expect("restores");
        let mut out = Output::new("w".into(), 3);
        restored.flush(&mut out);
        let numbers = out
            .port(OUT)
            .iter()
            .filter_map(|r| r.origin.map(|o| o.seq))
            .filter(|n| *n < 2)
            .collect();
        for (_, batch) in out.drain() {
            batch.into_iter().for_each(Record::finish);
        }
        numbers
    };
    let mut e = numbered();
    let mut out = Output::new("w".into(), 3);
    // 25 closes the windows [0, 10) of `a` and `b`: emitted together, then sent.
    add_events(
        &mut e,
        &[("a", 1, 1), ("b", 2, 2), ("a", 25, 4)],
        0,
        &mut out,
    );
    e.delivered();
    let mut windows: Vec<Record> = out
        .drain()
        .filter(|(port, _)| *port == OUT)
        .flat_map(|(_, batch)| batch)
        .collect();
    assert_eq!(windows.len(), 2);
    assert_eq!(held(&e), [0, 1]);
    let second = windows.pop().expect("two");
    windows.pop().expect("two").finish();
    e.delivered();
    assert_eq!(held(&e), [0, 1], "one of the two delivered: both kept");
    second.finish();
    e.delivered();
    assert!(held(&e).is_empty(), "both delivered");
}

/// A late record goes to `late` with its own acknowledgement. A checkpoint taken before the
/// late path finished it covers its position anyway (positions are a high-water mark, and a
/// later record passes it): after a crash the source replays it (never acknowledged), and the
/// restored engine must send it to `late` again, not skip it as held by the state (that lost
/// it). Once delivered, it is skipped as before.
#[test]
fn a_late_record_undelivered_at_a_checkpoint_is_sent_again_after_a_restart() {
    let c = cfg(serde_json::json!({}));
    let tracked = || {
        let mut e = engine(&c);
        e.track_for_checkpoints();
        e
    };
    // 3 is late (its window [0, 10) fired at 25); 27 passes its position.
    let events = [("a", 25, 1), ("a", 3, 2), ("a", 27, 4)];
    let late_of = |out: &Output| -> Vec<(String, Vec<(String, String)>)> {
        let late = summarize(out).1;
        out.port(LATE)
            .iter()
            .zip(late)
            .map(|(r, l)| {
                let mut a: Vec<_> = r
                    .attributes()
                    .iter()
                    .filter(|(k, _)| k.starts_with("window."))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                a.sort();
                (l, a)
            })
            .collect()
    };
    let mut first = tracked();
    let mut out = Output::new("w".into(), 3);
    add_events(&mut first, &events, 0, &mut out);
    let sent_late = late_of(&out);
    assert_eq!(sent_late.len(), 1);
    assert_eq!(sent_late[0].0, "a@3");
    first.delivered();
    let undelivered = first.snapshot().expect("encodes");
    // Crash before the late sink finished it; the source replays from the late record.
    let mut second = tracked();
    second.restore(&undelivered).expect("restores");
    let mut again = Output::new("w".into(), 3);
    add_events(&mut second, &events, 1, &mut again);
    assert_eq!(late_of(&again), sent_late, "sent to late again, as it was");
    // Once it is delivered, a checkpoint no longer holds it, and a replay skips it.
    // (A run of its own: `late_of` above looked at copies, whose drop abandons the token.)
    let mut fourth = tracked();
    let mut delivered_out = Output::new("w".into(), 3);
    add_events(&mut fourth, &events, 0, &mut delivered_out);
    for (_, batch) in delivered_out.drain() {
        for r in batch {
            r.finish();
        }
    }
    fourth.delivered();
    let delivered = fourth.snapshot().expect("encodes");
    let mut taken = Output::new("w".into(), 3);
    let mut third = tracked();
    third.restore(&delivered).expect("restores");
    add_events(&mut third, &events, 1, &mut taken);
    assert!(
        late_of(&taken).is_empty(),
        "delivered before the crash: skipped"
    );
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
        input: Input::new(vec![in_rx], metrics.clone()),
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
        got.extend(b.into_batch());
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
    let v = view(&fired[0]);
    assert_eq!(
        v.as_object().and_then(|o| o.get("n")),
        Some(&Value::from(3))
    );
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

/// The window's own reading of records (event time, key, arguments) and its engine, driven
/// without a task, as the task drives them.
fn window(c: &WindowAggregateConfig) -> (Window, Engine) {
    let errors = c.validate();
    assert!(errors.is_empty(), "{errors:?}");
    let compiled = c.compile().unwrap_or_else(|e| panic!("{e:?}"));
    let args = compiled
        .settings
        .aggregates
        .iter()
        .map(|(_, a)| a.arg.clone())
        .collect();
    let w = Window {
        cfg: c.clone(),
        key: compiled.key,
        event_time: compiled.event_time,
        args,
        settings: None,
        clock: Clock::system(),
    };
    (w, Engine::new(compiled.settings))
}

/// Records `{"k":…,"t":<t as written>,"v":…}` through the window, then the end of the input.
/// Returns the windows and late records (as [`summarize`] does) and the failed records as
/// `t => error.message`.
fn run_window(
    c: &WindowAggregateConfig,
    events: &[(&str, &str, i64)],
) -> (Vec<String>, Vec<String>, Vec<String>) {
    let (w, mut engine) = window(c);
    let clock = Clock::system();
    let mut out = Output::new("w".into(), 3);
    let mut args = Vec::new();
    for (k, t, v) in events {
        let r = Record::from_bytes(format!(r#"{{"k":"{k}","t":{t},"v":{v}}}"#));
        w.handle(r, &mut engine, &mut out, &BatchTime::new(&clock), &mut args);
    }
    engine.flush(&mut out);
    let (windows, late) = summarize(&out);
    let failed = out
        .port(PortId::FAILURE)
        .iter()
        .map(|r| {
            let mut r = r.clone();
            let t = r
                .value()
                .ok()
                .and_then(Value::as_object)
                .and_then(|o| o.get("t"))
                .map(|t| t.to_string())
                .unwrap_or_default();
            format!("{t} => {}", r.attributes()["error.message"])
        })
        .collect();
    (windows, late, failed)
}

/// Event times at and beyond the edges of what can be handled, in every time field: none
/// panics (this runs in debug, where overflow panics), each goes to `failure` with a clear
/// message, and the good records around them come out exactly as they do without them (in a
/// release build, wrapped arithmetic used to move the watermark and make good records late).
#[test]
fn edge_of_range_event_times_fail_alone_and_leave_good_records_alone() {
    const HUGE: &str = "10000y"; // the longest any duration may be
    let good: Vec<(&str, &str, i64)> = [
        ("a", "0", 1),
        ("a", "9", 2),
        ("b", "10", 4),
        ("a", "12", 5),
        ("a", "8", 6),
        ("c", "11", 7),
        ("a", "21", 8),
        ("b", "18", 9),
        ("a", "22", 1),
    ]
    .to_vec();
    // Times no window can take, as written in JSON, and what the message says about them.
    let (min, max) = (
        chrono::DateTime::<chrono::Utc>::MIN_UTC.timestamp_millis(),
        chrono::DateTime::<chrono::Utc>::MAX_UTC.timestamp_millis(),
    );
    let (below, above, last) = (
        (min - 1).to_string(),
        (max + 1).to_string(),
        max.to_string(),
    );
    let bad: &[(&str, &str)] = &[
        ("9223372036854775807", "is out of range"),
        ("9223372036854775806", "is out of range"),
        ("18446744073709551615", "is out of range"),
        ("-9223372036854775808", "is out of range"),
        ("-9223372036854775809", "is out of range"),
        (&above, "is out of range"),
        (&below, "is out of range"),
        ("1e300", "is out of range"),
        ("-1e300", "is out of range"),
        ("\"NaN\"", "is not RFC 3339"),
        ("\"+275760-09-13T00:00:00Z\"", "is not RFC 3339"),
        ("4102444800000", "ahead of the wall clock"),
        (&last, "ahead of the wall clock"),
    ];
    let window = |w: serde_json::Value| serde_json::json!({ "window": w });
    let huge_hop = serde_json::json!({ "hopping": { "size": HUGE, "slide": "100y" } });
    let configs = [
        window(serde_json::json!({ "tumbling": "10ms" })),
        serde_json::json!({ "allowed_lateness": HUGE }),
        serde_json::json!({ "allowed_lateness": "2ms", "idle_timeout": HUGE }),
        window(serde_json::json!({ "tumbling": HUGE })),
        window(serde_json::json!({ "hopping": { "size": "10ms", "slide": "5ms" } })),
        window(huge_hop.clone()),
        serde_json::json!({ "window": huge_hop, "allowed_lateness": HUGE }),
        window(serde_json::json!({ "session": { "gap": "5ms" } })),
        window(serde_json::json!({ "session": { "gap": HUGE } })),
        serde_json::json!({ "window": { "session": { "gap": HUGE } }, "allowed_lateness": "3ms" }),
    ];
    for extra in configs {
        let c = cfg(extra.clone());
        let (windows, late, failed) = run_window(&c, &good);
        assert!(failed.is_empty(), "{extra}: {failed:?}");
        assert!(!windows.is_empty(), "{extra}");
        for at in [0, 4, good.len()] {
            let mut events = good.clone();
            for (i, (t, _)) in bad.iter().enumerate() {
                events.insert(at + i, ("x", t, 100));
            }
            let (w, l, f) = run_window(&c, &events);
            assert_eq!(w, windows, "{extra}, bad times at {at}");
            assert_eq!(l, late, "{extra}, bad times at {at}");
            assert_eq!(f.len(), bad.len(), "{extra}: {f:#?}");
            for (failed, (t, says)) in f.iter().zip(bad) {
                assert!(
                    failed.contains(" => event time ") && failed.contains(says),
                    "{extra}: {failed} (expected `{t}`: `{says}`)"
                );
            }
        }
    }
}

/// Numeric times in seconds are multiplied by 1000 with a check, never saturated or wrapped.
#[test]
fn times_in_seconds_that_overflow_in_milliseconds_fail() {
    let c = cfg(serde_json::json!({ "event_time_unit": "s", "window": { "tumbling": "10s" } }));
    let good = [("a", "1", 1), ("a", "2.5", 2), ("a", "11", 4)];
    let (windows, _, failed) = run_window(&c, &good);
    assert_eq!(windows, ["a:0-10000:2:3", "a:10000-20000:1:4"]);
    assert!(failed.is_empty());
    let mut events = good.to_vec();
    events.insert(1, ("x", "9223372036854775", 1));
    events.insert(1, ("x", "9.3e15", 1));
    events.insert(1, ("x", "-9223372036854775", 1));
    let (w, _, f) = run_window(&c, &events);
    assert_eq!(w, windows);
    assert_eq!(f.len(), 3, "{f:?}");
    assert!(
        f.iter()
            .all(|m| m.contains("event time `") && m.contains("is out of range")),
        "{f:?}"
    );
}

/// Engine arithmetic on its own: times at the very ends of `i64` (which the reading of
/// records already refuses) fail in every window shape, leaving the state untouched.
#[test]
fn the_engine_checks_every_bound_it_computes() {
    let ends = [i64::MAX, i64::MAX - 1, i64::MIN, i64::MIN + 1];
    for (w, fail) in [
        (serde_json::json!({ "tumbling": "10ms" }), &ends[..]),
        (serde_json::json!({ "tumbling": "10000y" }), &ends[..]),
        (
            serde_json::json!({ "hopping": { "size": "10ms", "slide": "3ms" } }),
            &ends[..],
        ),
        (
            serde_json::json!({ "hopping": { "size": "10000y", "slide": "1y" } }),
            &ends[..],
        ),
        // `i64::MIN` fits a session: it is only very late.
        (
            serde_json::json!({ "session": { "gap": "10000y" } }),
            &ends[..2],
        ),
    ] {
        let mut e = engine(&cfg(serde_json::json!({ "window": w })));
        let mut out = Output::new("w".into(), 3);
        let mut add = |ts: i64, out: &mut Output| {
            e.add(
                Record::from_bytes(r#"{"k":"a"}"#),
                ts,
                Value::from("a"),
                &[Value::Null, Value::from(1)],
                out,
            );
        };
        add(5, &mut out);
        for ts in fail {
            add(*ts, &mut out);
        }
        let failed = out.port(PortId::FAILURE);
        assert_eq!(failed.len(), fail.len(), "{w}");
        assert!(
            failed
                .iter()
                .all(|r| r.attributes()["error.message"].contains("is out of range")),
            "{w}"
        );
        assert_eq!(e.max_ts(), Some(5), "{w}: the watermark did not move");
        assert_eq!(
            e.open(),
            if w.get("hopping").is_some() {
                e.open()
            } else {
                1
            }
        );
    }
}

/// A duration longer than any event time range is a config error at its key, in every time
/// field.
#[test]
fn durations_beyond_ten_thousand_years_are_config_errors() {
    const TOO_LONG: &str = "10001y";
    for (extra, path) in [
        (
            serde_json::json!({ "window": { "tumbling": TOO_LONG } }),
            "window.tumbling",
        ),
        (
            serde_json::json!({ "window": { "hopping": { "size": TOO_LONG, "slide": "1y" } } }),
            "window.hopping.size",
        ),
        (
            serde_json::json!({ "window": { "hopping": { "size": "1y", "slide": "1ms" } } }),
            "window.hopping.slide",
        ),
        (
            serde_json::json!({ "window": { "session": { "gap": TOO_LONG } } }),
            "window.session.gap",
        ),
        (
            serde_json::json!({ "allowed_lateness": TOO_LONG }),
            "allowed_lateness",
        ),
        (
            serde_json::json!({ "idle_timeout": TOO_LONG }),
            "idle_timeout",
        ),
        (serde_json::json!({ "max_future": TOO_LONG }), "max_future"),
        (
            serde_json::json!({ "checkpoint_interval": TOO_LONG }),
            "checkpoint_interval",
        ),
    ] {
        let errors = cfg(extra.clone()).validate();
        let paths: Vec<String> = errors.iter().map(|e| e.path.join(".")).collect();
        assert_eq!(paths, [path], "{extra}: {errors:?}");
    }
}

/// Durations too long to add to the clock (idle timeout, checkpoint interval, lateness and
/// window sizes in processing time) are deadlines never reached, not a panic.
#[tokio::test(start_paused = true)]
async fn durations_too_long_for_the_clock_are_never_reached() {
    let dir = tempfile::tempdir().expect("tmp");
    let state = dir.path().join("w.redb");
    for extra in [
        serde_json::json!({ "idle_timeout": "10000y", "allowed_lateness": "10000y",
            "checkpoint_interval": "10000y", "state": state }),
        serde_json::json!({ "event_time": null, "window": { "tumbling": "10000y" },
            "allowed_lateness": "10000y" }),
        serde_json::json!({ "event_time": null,
            "window": { "hopping": { "size": "10000y", "slide": "1y" } } }),
        serde_json::json!({ "event_time": null, "window": { "session": { "gap": "10000y" } },
            "idle_timeout": "10000y" }),
    ] {
        let mut h = start(&cfg(extra.clone()));
        let batch = vec![
            Record::from_bytes(r#"{"k":"a","t":1000,"v":1}"#),
            Record::from_bytes(r#"{"k":"a","t":1001,"v":2}"#),
        ];
        h.input.send(batch).await.expect("sent");
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert!(
            try_take(&mut h.out).is_empty(),
            "{extra}: nothing fired yet"
        );
        drop(h.input);
        h.task.await.expect("no panic").expect("ok");
        let fired = try_take(&mut h.out);
        let total: i64 = fired
            .iter()
            .filter_map(|r| view(r).as_object()?.get("n")?.as_integer())
            .sum();
        let hops = i64::try_from(fired.len()).expect("few");
        assert_eq!(total, 2 * hops, "{extra}: every window holds both records");
        assert!(hops >= 1, "{extra}");
    }
}

/// The same records read from their indexed fields (as a source that indexes them hands them
/// over) and from their structured view make the same windows, whatever the key: short keys
/// are copied onto the stack, longer ones read as a value, escaped ones from the view.
#[test]
fn keys_read_from_indexed_fields_make_the_windows_of_the_view() {
    let (w, _) = window(&cfg(serde_json::json!({})));
    let keys = [
        "a".to_owned(),
        "k".repeat(KEY_ON_STACK),
        "k".repeat(KEY_ON_STACK + 1),
        "x".repeat(200),
        r"tab\there".to_owned(),
    ];
    let run = |view: flow_core::record::JsonView| {
        let mut engine = engine(&cfg(serde_json::json!({})));
        let clock = Clock::system();
        let mut out = Output::new("w".into(), 3);
        let mut args = Vec::new();
        for (i, t) in [1, 2, 3, 12].into_iter().enumerate() {
            for k in &keys {
                let line = format!(r#"{{"k":"{k}","t":{t},"v":{i}}}"#);
                let r = Record::json(bytes::Bytes::from(line), view).expect("valid");
                assert_eq!(
                    r.fields().is_some(),
                    view == flow_core::record::JsonView::Fields
                );
                w.handle(r, &mut engine, &mut out, &BatchTime::new(&clock), &mut args);
            }
        }
        engine.flush(&mut out);
        let (mut windows, late) = summarize(&out);
        windows.sort();
        (windows, late)
    };
    let (windows, late) = run(flow_core::record::JsonView::Fields);
    assert_eq!(
        (windows.len(), late.len()),
        (2 * keys.len(), 0),
        "{windows:?}"
    );
    assert!(
        windows.contains(&format!("{}:0-10:3:3", "x".repeat(200))),
        "{windows:?}"
    );
    assert!(
        windows.contains(&"tab\there:10-20:1:3".to_owned()),
        "{windows:?}"
    );
    assert_eq!((windows, late), run(flow_core::record::JsonView::Eager));
}
