//! Hostile plugins: each misbehaviour is contained. The batch holding the evil record goes to
//! `failure` with the reason, the instance is rebuilt, the batches around it are delivered, and
//! the processor keeps running.

use crate::common;

use crate::common::{config, plugin, rec, run, run_at};
use flow_core::ack::AckStatus;
use flow_core::clock::Clock;
use flow_core::processor::ProcessorConfig;
use flow_core::record::Record;
use flow_wasm::{Limits, Module, PluginError};
use serde_json::json;

const GOOD1: &str = r#"{"n":1}"#;
const GOOD2: &str = r#"{"n":2}"#;
const GOOD3: &str = r#"{"n":3}"#;
const EVIL: &str = r#"{"n":0,"evil":true}"#;

/// Three batches: good, evil with a good neighbour, good. Returns the run and the failure
/// messages of the evil batch.
/// Three batches: a good record, the evil one beside a good one, a good one.
fn batches() -> Vec<Vec<Record>> {
    vec![
        vec![rec(GOOD1)],
        vec![rec(EVIL), rec(GOOD2)],
        vec![rec(GOOD3)],
    ]
}

async fn contained(mode: &str, extra: serde_json::Value) -> common::Run {
    let cfg = config("hostile", json!({ "mode": mode }), extra);
    let r = run(&cfg, batches()).await;
    assert_eq!(r.result, Ok(()), "{mode}: the processor keeps running");
    r
}

/// The whole evil batch failed with one reason containing `expected`; the others went through.
fn batch_failed(r: &common::Run, expected: &str) {
    assert_eq!(r.contents("out"), [GOOD1, GOOD3]);
    let errors = r.errors();
    println!("error.message: {:?}", errors.first());
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert_eq!(errors[0], errors[1], "one reason for the batch");
    assert!(
        errors[0].contains(expected),
        "{:?} lacks {expected:?}",
        errors[0]
    );
    assert_eq!(
        r.finished,
        [
            AckStatus::Delivered,
            AckStatus::Failed,
            AckStatus::Delivered
        ]
    );
    let p = r.port("failure")[0]
        .attributes()
        .get("error.processor")
        .cloned();
    assert_eq!(p.as_deref(), Some("plugin"));
}

#[tokio::test]
async fn an_infinite_loop_is_stopped_at_its_deadline() {
    let r = contained("loop", json!({ "limits": { "deadline": "200ms" } })).await;
    batch_failed(&r, "ran past its deadline of 200ms");
}

#[tokio::test]
async fn a_guest_blocked_in_a_host_call_is_stopped_at_its_deadline() {
    // `sleep` waits in WASI's poll, out of reach of the epoch: the call's timeout stops it.
    let started = std::time::Instant::now();
    let r = contained("sleep", json!({ "limits": { "deadline": "300ms" } })).await;
    batch_failed(&r, "ran past its deadline of 300ms");
    assert!(
        started.elapsed().as_secs() < 30,
        "the minute-long sleep was cut short"
    );
}

#[tokio::test]
async fn a_memory_bomb_hits_its_cap() {
    let r = contained("memory", json!({ "limits": { "memory": "32MiB" } })).await;
    batch_failed(&r, "exceeded its memory limit");
    batch_failed(&r, "more than limits.memory (32.0 MiB)");
}

#[tokio::test]
async fn a_trap_fails_its_batch() {
    let r = contained("trap", json!({})).await;
    batch_failed(&r, "plugin trapped");
    batch_failed(&r, "unreachable");
}

#[tokio::test]
async fn a_panic_fails_its_batch_with_the_panic_message() {
    let r = contained("panic", json!({})).await;
    batch_failed(&r, "plugin trapped");
    batch_failed(&r, "the hostile plugin panics on purpose");
}

#[tokio::test]
async fn a_giant_answer_is_refused() {
    let cfg = config(
        "hostile",
        json!({ "mode": "giant", "size": 4 << 20 }),
        json!({ "limits": { "max_output_bytes": "1MiB" } }),
    );
    let r = run(&cfg, batches()).await;
    batch_failed(&r, "more than limits.max_output_bytes (1048576)");
}

#[tokio::test]
async fn answers_for_inputs_it_was_not_given_are_refused() {
    let r = contained("extra", json!({})).await;
    batch_failed(&r, "malformed results: 3 outcomes for 2 inputs");
}

#[tokio::test]
async fn answers_that_omit_inputs_are_refused() {
    let r = contained("missing", json!({})).await;
    batch_failed(&r, "malformed results: 1 outcomes for 2 inputs");
}

#[tokio::test]
async fn an_output_to_an_unknown_port_fails_only_its_input() {
    let r = contained("bad_port", json!({})).await;
    assert_eq!(r.contents("out"), [GOOD1, GOOD2, GOOD3]);
    let errors = r.errors();
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0].contains("port `nowhere`, which it does not declare"),
        "{errors:?}"
    );
}

#[tokio::test]
async fn noise_on_stderr_and_the_log_is_bounded_and_harmless() {
    let r = contained("noise", json!({})).await;
    assert_eq!(r.contents("out"), [GOOD1, EVIL, GOOD2, GOOD3]);
    assert!(r.errors().is_empty());
}

fn answered(r: &common::Run) -> serde_json::Value {
    let out = r.contents("out");
    assert_eq!(out.len(), 4, "{out:?} {:?}", r.errors());
    serde_json::from_str(&out[1]).expect("json answer")
}

#[tokio::test]
async fn the_filesystem_is_closed_unless_granted() {
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(dir.path().join("secret.txt"), "lent on purpose").expect("write");
    let denied = contained("fs", json!({})).await;
    assert_eq!(denied.contents("out"), [GOOD1, GOOD2, GOOD3]);
    let errors = denied.errors();
    assert_eq!(errors.len(), 1, "only the evil record fails");
    assert!(
        errors[0].starts_with("cannot read /etc/passwd"),
        "{errors:?}"
    );

    let cfg = config(
        "hostile",
        json!({ "mode": "fs", "path": "/data/secret.txt" }),
        json!({ "grants": { "dirs": [{ "host": dir.path(), "guest": "/data" }] } }),
    );
    let granted = run(&cfg, batches()).await;
    assert_eq!(answered(&granted), json!({ "read": "lent on purpose" }));
    // A read-only grant: writing is still refused (the plugin has no write mode; the grant
    // itself is what is tested in `sandbox` of the host crate).
}

#[tokio::test]
async fn the_network_is_closed_unless_granted() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let cfg = config("hostile", json!({ "mode": "net", "addr": addr }), json!({}));
    let denied = run(&cfg, batches()).await;
    assert_eq!(denied.contents("out"), [GOOD1, GOOD2, GOOD3]);
    let errors = denied.errors();
    assert!(
        errors.len() == 1 && errors[0].starts_with("cannot connect"),
        "{errors:?}"
    );

    let cfg = config(
        "hostile",
        json!({ "mode": "net", "addr": addr }),
        json!({ "grants": { "network": true } }),
    );
    let granted = run(&cfg, batches()).await;
    assert_eq!(answered(&granted), json!({ "connected": addr }));
}

#[tokio::test]
async fn the_environment_and_the_clock_are_lent_only_when_granted() {
    let denied = contained("env", json!({})).await;
    assert_eq!(answered(&denied), json!({ "value": null }));
    // PATH is set in any test environment.
    let path = std::env::var("PATH").expect("PATH");
    let cfg = config(
        "hostile",
        json!({ "mode": "env", "var": "PATH" }),
        json!({ "grants": { "env": ["PATH"] } }),
    );
    let granted = run(&cfg, batches()).await;
    assert_eq!(answered(&granted), json!({ "value": path }));

    let frozen = contained("clock", json!({})).await;
    assert_eq!(answered(&frozen), json!({ "now_ms": 0 }));
    let real = contained("clock", json!({ "grants": { "clock": true } })).await;
    let now = answered(&real)["now_ms"].as_u64().unwrap_or(0);
    assert!(now > 1_700_000_000_000, "{now}");
}

/// A granted wall clock is the flow's processing time, as `flow test` drives it: a paused
/// clock reads its start, and moves when the flow's time moves.
#[tokio::test(start_paused = true)]
async fn a_granted_wall_clock_reads_the_flows_processing_time() {
    const START: i64 = 1_893_456_000_000; // 2030-01-01T00:00:00Z
    let cfg = config(
        "hostile",
        json!({ "mode": "clock" }),
        json!({ "grants": { "clock": true } }),
    );
    let batches = || batches();
    let r = run_at(&cfg, batches(), Clock::starting_at(START)).await;
    assert_eq!(answered(&r), json!({ "now_ms": START }));

    let clock = Clock::starting_at(START);
    tokio::time::advance(std::time::Duration::from_secs(90)).await;
    let r = run_at(&cfg, batches(), clock).await;
    assert_eq!(answered(&r), json!({ "now_ms": START + 90_000 }));
}

#[test]
fn a_component_of_another_world_version_is_refused() {
    let path = plugin("hostile_v2");
    let err = Module::load(&path, &Limits::default()).expect_err("refused");
    assert!(
        matches!(&err, PluginError::WorldVersion { found } if found == "0.2.0"),
        "{err}"
    );
    let cfg = config("hostile_v2", json!({}), json!({}));
    let errors = cfg.validate();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].path, ["module"]);
    assert!(
        errors[0].message.contains("built for flow:plugin@0.2.0")
            && errors[0].message.contains("runs flow:plugin@0.1.0"),
        "{}",
        errors[0].message
    );
    assert!(cfg.outputs().is_empty());
}

#[test]
fn files_that_are_not_plugins_are_refused_clearly() {
    let dir = tempfile::tempdir().expect("tmp");
    let core = dir.path().join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").expect("write");
    let err = Module::load(&core, &Limits::default()).expect_err("refused");
    assert!(
        err.to_string()
            .contains("core WebAssembly module, not a component"),
        "{err}"
    );
    let text = dir.path().join("text.wasm");
    std::fs::write(&text, "hello").expect("write");
    let err = Module::load(&text, &Limits::default()).expect_err("refused");
    assert!(
        err.to_string().starts_with("not a WebAssembly component"),
        "{err}"
    );
    let err =
        Module::load(&dir.path().join("missing.wasm"), &Limits::default()).expect_err("refused");
    assert!(err.to_string().starts_with("cannot read"), "{err}");
}

#[test]
fn a_config_against_the_plugins_schema_is_refused_with_its_path() {
    let cfg = config(
        "zscore",
        json!({ "window": "wide", "treshold": 2 }),
        json!({}),
    );
    let errors = cfg.validate();
    let paths: Vec<Vec<String>> = errors.iter().map(|e| e.path.clone()).collect();
    assert_eq!(
        paths,
        [
            vec!["config".to_owned(), "treshold".to_owned()],
            vec!["config".to_owned(), "window".to_owned()]
        ],
        "{errors:?}"
    );
    assert!(errors[0].message.contains("treshold"), "{errors:?}");
    assert!(
        errors[1]
            .message
            .contains("\"wide\" is not of type \"integer\""),
        "{errors:?}"
    );
}

#[tokio::test]
async fn a_new_version_is_picked_up_and_a_broken_one_refused() {
    let dir = tempfile::tempdir().expect("tmp");
    let module = dir.path().join("live.wasm");
    std::fs::copy(plugin("alerts"), &module).expect("copy");
    let cfg: flow_wasm::WasmConfig = serde_json::from_value(json!({
        "module": module,
        "config": { "threshold": 95 },
        "watch": "1ms",
    }))
    .expect("config");
    assert!(cfg.validate().is_empty());
    let mut live = common::Live::start(&cfg);
    // Each batch: a hot reading (to `matched`, port 1) and a malformed one (to `failure`,
    // whose message tells which version handled it).
    let batch = || vec![rec(r#"{"temperature":99,"status":"ok"}"#), rec("{nope")];
    let round = async |live: &mut common::Live| -> String {
        live.send(batch()).await;
        assert_eq!(live.next(1).await.len(), 1);
        let failed = live.next(0).await;
        failed[0]
            .attributes()
            .get("error.message")
            .cloned()
            .unwrap_or_default()
    };
    let pause = || tokio::time::sleep(std::time::Duration::from_millis(20));
    let rust = round(&mut live).await;
    assert!(
        rust.starts_with("not a reading: key must be a string"),
        "{rust}"
    );
    assert_eq!(live.plugin_name(), "alerts");

    // A file that is not a plugin: refused, the running version goes on.
    std::fs::write(&module, b"not a plugin at all").expect("write");
    pause().await;
    assert_eq!(round(&mut live).await, rust);
    // A plugin with other ports: refused too.
    std::fs::copy(plugin("router"), &module).expect("copy");
    pause().await;
    assert_eq!(round(&mut live).await, rust);
    assert_eq!(live.plugin_name(), "alerts");
    // The same filter in Python: same ports, same schema, taken.
    std::fs::copy(plugin("alerts_py"), &module).expect("copy");
    pause().await;
    let python = round(&mut live).await;
    assert!(
        python.starts_with("not a reading: JSONDecodeError"),
        "{python}"
    );
    assert_eq!(live.plugin_name(), "alerts-py");

    live.input = None;
    live.task
        .await
        .expect("join")
        .expect("the processor ends cleanly");
}
