//! Golden tests over `flows/`: every example flow validates; the ones that need no server run
//! and their output is compared with checked-in expectations.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use flow_tests::{example_flows, load, node, repo, run};

/// Every variable any example flow may use, set to something plausible.
fn fake_env() -> HashMap<String, String> {
    let plugins = flow_tests::plugins_dir().display().to_string();
    [
        ("INPUT", "events.jsonl"),
        ("OUT_DIR", "out"),
        ("MQTT_URL", "mqtt://127.0.0.1:1883"),
        ("KAFKA_BROKERS", "127.0.0.1:9092"),
        ("REST_URL", "http://127.0.0.1:8000/items"),
        ("INFLUX_URL", "http://127.0.0.1:8428"),
        ("S3_URL", "s3://bucket/prefix"),
        ("PLUGINS", plugins.as_str()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

#[test]
fn every_example_flow_is_valid_without_warnings() {
    let flows = example_flows();
    assert!(flows.iter().any(|f| f.ends_with("demo.yaml")));
    assert!(flows.iter().any(|f| f.ends_with("sensors.yaml")));
    for f in flows {
        let (text, loaded) = load(&f, &fake_env());
        assert!(
            loaded.diagnostics.is_empty(),
            "{}",
            flow_core::spec::render(&f.display().to_string(), &text, &loaded.diagnostics)
        );
    }
}

fn fixture(name: &str) -> PathBuf {
    repo().join("tests/fixtures").join(name)
}

async fn run_sensors(events: &Path) -> (tempfile::TempDir, flow_core::runtime::RunReport) {
    let out = tempfile::tempdir().expect("tmp");
    let report = run(
        &repo().join("flows/sensors.yaml"),
        &[
            ("INPUT", events.to_str().expect("utf-8 path")),
            ("OUT_DIR", out.path().to_str().expect("utf-8 path")),
        ],
    )
    .await;
    (out, report)
}

/// Windows keyed by (device, window_start): (end, count, avg, max_rpm), as `check.py` reads them.
type Windows = BTreeMap<(String, i64), (i64, i64, f64, i64)>;

fn windows(path: &Path) -> (Windows, usize) {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut w = Windows::new();
    let mut duplicates = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line).expect("window is JSON");
        let key = (
            v["device"].as_str().expect("device").to_owned(),
            v["window_start"].as_i64().expect("start"),
        );
        let val = (
            v["window_end"].as_i64().expect("end"),
            v["count"].as_i64().expect("count"),
            v["avg_temperature"].as_f64().expect("avg"),
            v["max_rpm"].as_i64().expect("max_rpm"),
        );
        if w.insert(key, val).is_some() {
            duplicates += 1;
        }
    }
    (w, duplicates)
}

/// `check.py`'s rule: the same windows, integers equal, averages within 1e-6 relative.
fn assert_windows_equal(got: &Windows, want: &Windows, what: &str) {
    let missing: Vec<_> = want.keys().filter(|k| !got.contains_key(*k)).collect();
    let extra: Vec<_> = got.keys().filter(|k| !want.contains_key(*k)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{what}: missing {missing:?}, extra {extra:?}"
    );
    for (k, (e, c, avg, m)) in want {
        let (ge, gc, gavg, gm) = got[k];
        let close = (gavg - avg).abs() <= 1e-6 * gavg.abs().max(avg.abs()).max(1e-12);
        assert!(
            ge == *e && gc == *c && gm == *m && close,
            "{what}: window {k:?}: got {:?}, want {:?}",
            got[k],
            want[k]
        );
    }
}

fn stats(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("stats.json")).expect("stats"))
        .expect("json")
}

fn line_count(path: &Path) -> u64 {
    std::fs::read_to_string(path).map_or(0, |t| t.lines().count() as u64)
}

/// Alerts, windows and late records equal the oracle's
/// (`shared/workloads/sensors/oracle.py`) for three generated inputs and the window edge cases.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sensors_equals_the_oracle() {
    for case in ["seed1", "seed2", "seed3", "windows-edge"] {
        let dir = fixture(&format!("sensors/{case}"));
        let (out, report) = run_sensors(&dir.join("events.jsonl")).await;
        let got = std::fs::read_to_string(out.path().join("alerts.jsonl")).expect("alerts");
        let want = std::fs::read_to_string(dir.join("alerts.jsonl")).expect("expected");
        assert_eq!(got, want, "{case}: alerts");
        let (got_w, dup) = windows(&out.path().join("windows.jsonl"));
        let (want_w, _) = windows(&dir.join("windows.jsonl"));
        assert_eq!(dup, 0, "{case}: duplicate windows");
        assert_windows_equal(&got_w, &want_w, case);
        let stats = stats(&dir);
        let late = stats["late_dropped"].as_u64().expect("n");
        assert_eq!(
            line_count(&out.path().join("late.jsonl")),
            late,
            "{case}: late records"
        );
        assert_eq!(
            node(&report, "events").received,
            stats["events"].as_u64().expect("n")
        );
        assert_eq!(
            node(&report, "valid").dropped,
            stats["errors"].as_u64().expect("n")
        );
        assert_eq!(
            node(&report, "alerts").sent,
            stats["alerts"].as_u64().expect("n")
        );
        assert_eq!(
            node(&report, "windows").sent,
            stats["windows"].as_u64().expect("n")
        );
        // A finished run leaves no window state behind.
        assert_eq!(node(&report, "per_device").status["open_windows"], 0);
    }
}

/// Hand-made edge cases: the boundary temperature, spacing kept byte for byte, a non-numeric
/// temperature and a malformed line (both reported as failures, never alerted, never a panic),
/// an empty line and a last line without a newline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sensors_edge_cases() {
    let dir = fixture("sensors/edge");
    let (out, report) = run_sensors(&dir.join("events.jsonl")).await;
    let got = std::fs::read_to_string(out.path().join("alerts.jsonl")).expect("alerts");
    let want = std::fs::read_to_string(dir.join("alerts.jsonl")).expect("expected");
    assert_eq!(got, want);
    // The malformed line fails at the source, the non-numeric temperature at `hot` and at the
    // window (its average cannot take a string).
    assert_eq!(node(&report, "events").failed, 1);
    assert_eq!(node(&report, "hot").failed, 1);
    assert_eq!(node(&report, "per_device").failed, 1);
    assert_eq!(node(&report, "events").received, 10);
}

/// The demo runs with no server and writes every valid reading to its archive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_runs_without_a_server() {
    let out = tempfile::tempdir().expect("tmp");
    let report = run(
        &repo().join("flows/demo.yaml"),
        &[
            ("COUNT", "3000"),
            ("RATE", "1000000"),
            ("OUT_DIR", out.path().to_str().expect("utf-8 path")),
        ],
    )
    .await;
    let archive = std::fs::read_to_string(out.path().join("demo.jsonl")).expect("archive");
    let lines: Vec<&str> = archive.lines().collect();
    assert_eq!(node(&report, "readings").received, 3000);
    assert_eq!(lines.len() as u64, node(&report, "valid").sent);
    assert_eq!(lines.len() as u64 + node(&report, "valid").dropped, 3000);
    assert!(lines.iter().all(|l| !l.contains("\"status\":\"error\"")));
    // The hot ones were labelled and printed.
    let hot = lines
        .iter()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l).expect("json")["temperature"]
                .as_f64()
                .expect("number")
                > 95.0
        })
        .count() as u64;
    assert!(hot > 0);
    assert_eq!(node(&report, "alerts").sent, hot);
    let golden =
        std::fs::read_to_string(repo().join("tests/fixtures/demo/demo.jsonl")).expect("golden");
    assert_eq!(archive, golden, "generate is deterministic for a seed");
}
