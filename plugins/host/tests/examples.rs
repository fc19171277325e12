//! The example plugins of `plugins/examples`, run through the `wasm` processor.

use crate::common;

use crate::common::{config, rec, run};
use flow_core::ack::AckStatus;
use flow_core::processor::ProcessorConfig;
use serde_json::{Value, json};

fn values(contents: &[String]) -> Vec<Value> {
    contents
        .iter()
        .map(|c| serde_json::from_str(c).expect("JSON output"))
        .collect()
}

const HOT: &str = r#"{"device":"car-1","temperature":99.5,"status":"ok"}"#;
const COOL: &str = r#"{"device":"car-2","temperature":20.0,"status":"ok"}"#;
const BROKEN: &str = r#"{"device":"car-3","temperature":120.0,"status":"error"}"#;

/// The same filter in Rust and in Python: same ports, same answers, byte for byte.
async fn alerts(name: &str) {
    let cfg = config(name, json!({ "threshold": 95 }), json!({}));
    assert_eq!(cfg.outputs(), ["matched", "unmatched"]);
    let r = run(
        &cfg,
        vec![vec![rec(HOT), rec(COOL)], vec![rec(BROKEN), rec("{nope")]],
    )
    .await;
    assert_eq!(r.result, Ok(()));
    assert_eq!(r.contents("matched"), [HOT]);
    assert_eq!(r.contents("unmatched"), [COOL, BROKEN]);
    let errors = r.errors();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].starts_with("not a reading"), "{errors:?}");
    assert_eq!(r.finished, [AckStatus::Delivered, AckStatus::Failed]);
    // Pass-through outputs are the input records themselves: no copy, same ids.
    assert_eq!(r.metrics.received, 4);
    assert_eq!(r.metrics.sent, 3);
}

#[tokio::test]
async fn alerts_in_rust() {
    alerts("alerts").await;
}

#[tokio::test]
async fn alerts_in_python_answer_the_same() {
    alerts("alerts_py").await;
}

#[tokio::test]
async fn zscore_flags_the_spike_of_one_device() {
    let cfg = config(
        "zscore",
        json!({ "window": 10, "threshold": 3, "min_samples": 5 }),
        json!({}),
    );
    assert_eq!(cfg.outputs(), ["normal", "anomaly"]);
    let mut batch = Vec::new();
    for (i, t) in [70.0, 70.5, 69.5, 70.2, 69.8, 70.1, 69.9]
        .iter()
        .enumerate()
    {
        batch.push(rec(&format!(
            r#"{{"device":"a","ts":{i},"temperature":{t}}}"#
        )));
        // Another device, far hotter but steady: never an anomaly.
        batch.push(rec(&format!(
            r#"{{"device":"b","ts":{i},"temperature":{}}}"#,
            t + 30.0
        )));
    }
    batch.push(rec(r#"{"device":"a","ts":99,"temperature":95.0}"#));
    batch.push(rec(r#"{"device":"b","ts":99,"temperature":100.0}"#));
    batch.push(rec(r#"{"device":"a","ts":100}"#));
    let inputs: Vec<_> = batch.iter().map(|r| r.id()).collect();
    let r = run(&cfg, vec![batch]).await;
    let anomalies = values(&r.contents("anomaly"));
    assert_eq!(anomalies.len(), 1, "{anomalies:?}");
    let a = &anomalies[0];
    assert_eq!(
        (a["device"].as_str(), a["ts"].as_i64()),
        (Some("a"), Some(99))
    );
    assert!(a["zscore"].as_f64().is_some_and(|z| z > 3.0), "{a}");
    assert!(
        (a["mean"].as_f64().unwrap_or(0.0) - 70.0).abs() < 0.2,
        "{a}"
    );
    // The anomaly is a new record derived from its input.
    let child = &r.port("anomaly")[0];
    assert_eq!(child.parents(), &[inputs[14]]);
    assert_eq!(r.port("normal").len(), 15);
    assert_eq!(r.errors(), ["no numeric `temperature`"]);
    assert_eq!(r.finished, [AckStatus::Failed]);
}

#[tokio::test]
async fn units_convert_in_place() {
    let cfg = config(
        "units",
        json!({
            "fields": {
                "temperature": { "from": "celsius", "to": "fahrenheit" },
                "pressure": { "from": "kpa", "to": "psi" },
            },
            "decimals": 2,
        }),
        json!({}),
    );
    let r = run(
        &cfg,
        vec![vec![
            rec(r#"{"temperature":100,"pressure":101.325,"id":1}"#),
            rec(r#"{"temperature":-40,"id":2}"#),
            rec(r#"{"temperature":"hot","id":3}"#),
        ]],
    )
    .await;
    assert_eq!(
        values(&r.contents("out")),
        [
            json!({"temperature": 212.0, "pressure": 14.7, "id": 1}),
            json!({"temperature": -40.0, "id": 2}),
        ]
    );
    assert_eq!(r.errors(), ["`temperature` is not a number"]);
}

#[test]
fn units_refuse_to_convert_across_dimensions() {
    let cfg = config(
        "units",
        json!({ "fields": { "t": { "from": "celsius", "to": "psi" } } }),
        json!({}),
    );
    assert!(cfg.validate().is_empty(), "the schema allows it");
    let err = match cfg.build(&flow_core::processor::BuildContext::new("units")) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("the plugin must refuse the config"),
    };
    assert!(
        err.contains("refused its config") && err.contains("cannot convert Celsius"),
        "{err}"
    );
}

#[tokio::test]
async fn redact_masks_personal_data() {
    let cfg = config(
        "redact",
        json!({ "fields": ["ssn"], "mask": "***" }),
        json!({}),
    );
    let clean = r#"{"user":"u1","note":"all good"}"#;
    let r = run(
        &cfg,
        vec![vec![
            rec(r#"{"user":"u1","contact":"write to jane.doe@example.com or +1 (555) 123-4567","ssn":"078-05-1120","card":{"number":"4111 1111 1111 1111"}}"#),
            rec(clean),
        ]],
    )
    .await;
    let out = r.contents("out");
    assert_eq!(
        serde_json::from_str::<Value>(&out[0]).expect("json"),
        json!({"user":"u1","contact":"write to *** or ***","ssn":"***","card":{"number":"***"}})
    );
    assert_eq!(
        r.port("out")[0]
            .attributes()
            .get("redact.count")
            .map(String::as_str),
        Some("4")
    );
    // Nothing to mask: the record goes on byte for byte.
    assert_eq!(out[1], clean);
    assert!(!r.port("out")[1].attributes().contains_key("redact.count"));
}

#[tokio::test]
async fn router_sends_to_several_ports_and_copies_hot_readings() {
    let cfg = config("router", json!({ "hot_above": 90 }), json!({}));
    assert_eq!(cfg.outputs(), ["ok", "warn", "error", "hot"]);
    let ok_hot = r#"{"status":"ok","temperature":95}"#;
    let warn = r#"{"status":"warn","temperature":50}"#;
    let error = r#"{"status":"error","temperature":91}"#;
    let r = run(
        &cfg,
        vec![
            vec![rec(ok_hot), rec(warn)],
            vec![rec(error), rec(r#"{"status":"maybe"}"#)],
        ],
    )
    .await;
    assert_eq!(r.contents("ok"), [ok_hot]);
    assert_eq!(r.contents("warn"), [warn]);
    assert_eq!(r.contents("error"), [error]);
    assert_eq!(r.contents("hot"), [ok_hot, error]);
    assert_eq!(r.errors(), ["unknown status `maybe`"]);
    let route = |port: &str, i: usize| r.port(port)[i].attributes().get("route").cloned();
    assert_eq!(route("ok", 0).as_deref(), Some("ok"));
    assert_eq!(route("hot", 1).as_deref(), Some("hot"));
    // An input copied to two ports is one record in two places.
    assert_eq!(r.port("ok")[0].id(), r.port("hot")[0].id());
    assert_eq!(r.finished, [AckStatus::Delivered, AckStatus::Failed]);
}

#[tokio::test]
async fn outputs_hold_their_input_until_every_copy_is_finished() {
    use flow_core::ack::{AckTracker, Acks};

    let cfg = config("router", json!({}), json!({}));
    let mut live = common::Live::start(&cfg);
    assert_eq!(cfg.outputs(), ["ok", "warn", "error", "hot"]);
    let mut tracker = AckTracker::new();
    let token = tracker.token(0);
    live.send(vec![
        rec(r#"{"status":"ok","temperature":99}"#).with_acks(Acks::one(token)),
    ])
    .await;
    live.input = None;
    (&mut live.task).await.expect("join").expect("runs");
    let ok = live.next(1).await;
    let hot = live.next(4).await;
    flow_core::record::finish_all(ok);
    assert!(
        tracker.try_next().is_none(),
        "the copy on `hot` still holds the input"
    );
    flow_core::record::finish_all(hot);
    let f = tracker.next().await.expect("finished");
    assert_eq!((f.seq, f.status), (0, AckStatus::Delivered));
}

#[tokio::test]
async fn an_absent_config_is_an_empty_one() {
    let cfg: flow_wasm::WasmConfig =
        serde_json::from_value(json!({ "module": common::plugin("alerts_py") })).expect("config");
    assert!(cfg.validate().is_empty(), "{:?}", cfg.validate());
    let r = run(&cfg, vec![vec![rec(HOT), rec(COOL)]]).await;
    assert_eq!(r.contents("matched"), [HOT], "the default threshold, 95");
}
