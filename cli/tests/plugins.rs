//! WebAssembly plugins end to end: the example flows run by the real `flow` binary, their
//! output checked against the native processors or a reference computation; acknowledgements
//! across a crash; `flow validate` on plugin flows; `flow plugin new` and `inspect`.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::common::{self, Flow, repo, text};

/// `flow`, with the example plugins where the flows look for them.
fn flow() -> Command {
    let mut c = common::flow();
    c.env("PLUGINS", flow_tests::plugins_dir());
    c
}

fn ok(c: &mut Command) -> Output {
    let out = c.output().expect("flow runs");
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    out
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(str::to_owned)
        .collect()
}

/// `n` sensor events made by flow's own generator.
fn events(dir: &Path, n: u64) -> PathBuf {
    let path = dir.join("events.jsonl");
    ok(flow()
        .args(["run", "--quiet", "bench/gen-sensors.yaml"])
        .env("COUNT", n.to_string())
        .env("OUT", &path));
    path
}

/// Run `flows/<name>.yaml` with INPUT and OUT_DIR; returns the run report.
fn run_example(name: &str, input: Option<&Path>, out_dir: &Path) -> serde_json::Value {
    std::fs::create_dir_all(out_dir).expect("out dir");
    let report = out_dir.join("report.json");
    let mut c = flow();
    c.args(["run", "--quiet"])
        .arg(format!("flows/{name}.yaml"))
        .arg("--report")
        .arg(&report)
        .env("OUT_DIR", out_dir);
    if let Some(i) = input {
        c.env("INPUT", i);
    }
    let out = ok(&mut c);
    // Every input the plugin took was forwarded, dropped or failed: none was lost on the way.
    let stderr = text(&out.stderr);
    assert!(!stderr.contains("abandoned"), "{stderr}");
    serde_json::from_slice(&std::fs::read(&report).expect("report")).expect("report json")
}

fn node<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["nodes"]
        .as_array()
        .and_then(|n| n.iter().find(|n| n["name"] == name))
        .unwrap_or_else(|| panic!("no node {name} in {report}"))
}

#[test]
fn alerts_plugins_in_rust_and_python_write_exactly_what_the_native_filter_writes() {
    let dir = tempfile::tempdir().expect("tmp");
    let input = events(dir.path(), 20_000);
    let native_flow = dir.path().join("native.yaml");
    std::fs::write(
        &native_flow,
        r#"
processors:
  events: { type: file, path: "${INPUT}", format: json }
  hot: { type: filter, condition: '.status != "error" && .temperature > 95' }
  alerts: { type: file_sink, path: "${OUT_DIR}/alerts.jsonl" }
connections:
  - events -> hot
  - hot.matched -> alerts
"#,
    )
    .expect("flow");
    let native_out = dir.path().join("native");
    std::fs::create_dir_all(&native_out).expect("dir");
    ok(flow()
        .args(["run", "--quiet"])
        .arg(&native_flow)
        .env("INPUT", &input)
        .env("OUT_DIR", &native_out));
    let expected = lines(&native_out.join("alerts.jsonl"));
    assert!(expected.len() > 100, "{} alerts", expected.len());

    for (flow_name, plugin) in [
        ("plugin-alerts", "alerts"),
        ("plugin-alerts-py", "alerts-py"),
    ] {
        let out = dir.path().join(flow_name);
        let report = run_example(flow_name, Some(&input), &out);
        assert_eq!(lines(&out.join("alerts.jsonl")), expected, "{flow_name}");
        let hot = node(&report, "hot");
        assert_eq!(hot["received"], 20_000);
        assert_eq!(hot["status"]["plugin"]["name"], plugin);
        // Every line committed: the checkpoint says the whole file.
        let cp: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join(".alerts.offset")).expect("checkpoint"))
                .expect("json");
        assert_eq!(cp["line"], 20_000, "{flow_name}");
    }
}

#[test]
fn anomalies_are_the_ones_a_reference_computation_finds() {
    let dir = tempfile::tempdir().expect("tmp");
    let input = events(dir.path(), 30_000);
    let out = dir.path().join("out");
    run_example("plugin-anomalies", Some(&input), &out);
    let got: Vec<serde_json::Value> = lines(&out.join("anomalies.jsonl"))
        .iter()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();

    // The same rule, computed here: the previous 20 temperatures of the device, at least 10
    // of them, |z| >= 3 with the population standard deviation.
    let mut windows: HashMap<String, VecDeque<f64>> = HashMap::new();
    let mut expected = Vec::new();
    for line in lines(&input) {
        let v: serde_json::Value = serde_json::from_str(&line).expect("json");
        let t = v["temperature"].as_f64().expect("temperature");
        let w = windows
            .entry(v["device"].as_str().expect("device").to_owned())
            .or_default();
        if w.len() >= 10 {
            let n = w.len() as f64;
            let mean = w.iter().sum::<f64>() / n;
            let std = (w.iter().map(|x| x * x).sum::<f64>() / n - mean * mean)
                .max(0.0)
                .sqrt();
            let z = if std > 0.0 { (t - mean) / std } else { 0.0 };
            if z.abs() >= 3.0 {
                expected.push((v["device"].clone(), v["ts"].clone(), z));
            }
        }
        w.push_back(t);
        if w.len() > 20 {
            w.pop_front();
        }
    }
    assert!(!expected.is_empty());
    assert_eq!(got.len(), expected.len());
    for (g, (device, ts, z)) in got.iter().zip(&expected) {
        assert_eq!((&g["device"], &g["ts"]), (device, ts));
        let gz = g["zscore"].as_f64().expect("zscore");
        assert!((gz - z).abs() < 0.01, "{g}: expected z {z}");
    }
}

#[test]
fn units_redact_and_router_flows_do_what_they_say() {
    let dir = tempfile::tempdir().expect("tmp");
    // The generator's default seed is the units and router flows' own.
    let input = events(dir.path(), 1_000);
    let readings: Vec<serde_json::Value> = lines(&input)
        .iter()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();

    let out = dir.path().join("units");
    run_example("plugin-units", None, &out);
    let converted: Vec<serde_json::Value> = lines(&out.join("fahrenheit.jsonl"))
        .iter()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(converted.len(), readings.len());
    for (c, r) in converted.iter().zip(&readings) {
        let f = r["temperature"].as_f64().expect("t") * 1.8 + 32.0;
        assert_eq!(c["ts"], r["ts"]);
        assert!(
            (c["temperature"].as_f64().expect("t") - f).abs() <= 0.05 + 1e-9,
            "{c} {r}"
        );
    }

    let out = dir.path().join("router");
    run_example("plugin-router", None, &out);
    let by_status = |s: &str| -> Vec<&serde_json::Value> {
        readings.iter().filter(|r| r["status"] == s).collect()
    };
    for port in ["ok", "warn", "error"] {
        let got: Vec<serde_json::Value> = lines(&out.join(format!("{port}.jsonl")))
            .iter()
            .map(|l| serde_json::from_str(l).expect("json"))
            .collect();
        let want: Vec<serde_json::Value> = by_status(port).into_iter().cloned().collect();
        assert_eq!(got, want, "{port}");
    }
    let hot = lines(&out.join("hot.jsonl")).len();
    let want = readings
        .iter()
        .filter(|r| r["temperature"].as_f64() > Some(95.0))
        .count();
    assert_eq!(hot, want);

    let out = dir.path().join("redact");
    run_example(
        "plugin-redact",
        Some(&repo().join("tests/fixtures/plugins/contacts.jsonl")),
        &out,
    );
    assert_eq!(
        lines(&out.join("redacted.jsonl")),
        lines(&repo().join("tests/fixtures/plugins/redacted.jsonl"))
    );
}

/// `kill -9` while a plugin transforms a file: the committed offset never passes a record
/// whose plugin outputs (or failure) were not written; the restart finishes the file and loses
/// nothing.
#[test]
fn a_crash_never_commits_past_unwritten_plugin_outputs() {
    let dir = tempfile::tempdir().expect("tmp");
    let total = 400_000u64;
    let mut input = String::new();
    let mut evil = BTreeSet::new();
    for n in 0..total {
        if n % 5_000 == 4_999 {
            evil.insert(n);
            input.push_str(&format!("{{\"n\":{n},\"evil\":true}}\n"));
        } else {
            input.push_str(&format!("{{\"n\":{n}}}\n"));
        }
    }
    std::fs::write(dir.path().join("in.jsonl"), &input).expect("input");
    let flow_file = dir.path().join("flow.yaml");
    std::fs::write(
        &flow_file,
        r#"
processors:
  src: { type: file, path: "${DIR}/in.jsonl", checkpoint: "${DIR}/in.checkpoint", batch_size: 256 }
  plugin:
    type: wasm
    module: ${PLUGINS}/hostile.wasm
    config: { mode: trap }
    max_batch: 64
  out: { type: file_sink, path: "${DIR}/out.jsonl" }
  failed: { type: file_sink, path: "${DIR}/failed.jsonl" }
connections:
  - src -> plugin
  - plugin.out -> out
  - plugin.failure -> failed
"#,
    )
    .expect("flow");
    let plugins = flow_tests::plugins_dir();
    let dir_s = dir.path().to_str().expect("utf-8").to_owned();
    let plugins_s = plugins.to_str().expect("utf-8").to_owned();
    let env = [("DIR", dir_s.as_str()), ("PLUGINS", plugins_s.as_str())];
    let checkpoint = dir.path().join("in.checkpoint");
    let f = Flow::start(&flow_file, dir.path(), "first", &env);
    let deadline = Instant::now() + Duration::from_secs(120);
    while !checkpoint.exists() || common::lines(&dir.path().join("out.jsonl")) < 1_000 {
        assert!(
            Instant::now() < deadline,
            "no checkpoint within 120 s:\n{}",
            f.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    f.kill_9();

    let read_ns = |file: &str| -> BTreeMap<u64, u32> {
        let mut m = BTreeMap::new();
        for l in std::fs::read_to_string(dir.path().join(file))
            .unwrap_or_default()
            .lines()
        {
            let v: serde_json::Value = serde_json::from_str(l).expect("json line");
            *m.entry(v["n"].as_u64().expect("n")).or_insert(0) += 1;
        }
        m
    };
    let cp: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&checkpoint).expect("checkpoint")).expect("json");
    let committed = cp["line"].as_u64().expect("line");
    assert!(
        committed > 0 && committed < total,
        "killed mid-run: {committed}"
    );
    let (out, failed) = (read_ns("out.jsonl"), read_ns("failed.jsonl"));
    for n in 0..committed {
        assert!(
            out.contains_key(&n) || failed.contains_key(&n),
            "line {n} is committed ({committed}) but its plugin output was never written"
        );
    }

    let f = Flow::start(&flow_file, dir.path(), "second", &env);
    assert!(f.wait(300), "the restart finishes");
    let cp: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&checkpoint).expect("checkpoint")).expect("json");
    assert_eq!(cp["line"], total);
    let (out, failed) = (read_ns("out.jsonl"), read_ns("failed.jsonl"));
    for n in 0..total {
        if evil.contains(&n) {
            assert!(!out.contains_key(&n), "evil {n} passed");
            assert!(failed.contains_key(&n), "evil {n} not reported");
        } else {
            assert!(out.contains_key(&n) || failed.contains_key(&n), "{n} lost");
        }
    }
    // A trap fails its whole call (64 records), and only those: the rest is delivered.
    assert!(
        failed.len() as u64 <= evil.len() as u64 * 64,
        "{}",
        failed.len()
    );
}

#[test]
fn validate_points_at_plugin_problems() {
    let dir = tempfile::tempdir().expect("tmp");
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        r#"processors:
  events: { type: generate, preset: sensors, count: 10 }
  detect:
    type: wasm
    module: ${PLUGINS}/zscore.wasm
    config:
      window: wide
      treshold: 2
  old:
    type: wasm
    module: ${PLUGINS}/hostile_v2.wasm
  gone:
    type: wasm
    module: ${PLUGINS}/missing.wasm
  out: { type: stdout }
connections:
  - events -> detect
  - detect.anomalies -> out
  - events -> old
  - events -> gone
"#,
    )
    .expect("write");
    let out = flow()
        .args(["validate", "--format", "short"])
        .arg(&bad)
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    let name = bad.display().to_string();
    let has = |line_col: &str, what: &str| {
        assert!(
            stderr
                .lines()
                .any(|l| l.starts_with(&format!("{name}:{line_col}: error")) && l.contains(what)),
            "no {line_col} error with {what:?} in:\n{stderr}"
        );
    };
    has(
        "8:17",
        "Additional properties are not allowed ('treshold' was unexpected)",
    );
    has("7:15", "\"wide\" is not of type \"integer\"");
    has("11:13", "built for flow:plugin@0.2.0");
    has("14:13", "cannot read");
    has("18:5", "has no port `anomalies`");
    assert!(stderr.contains("did you mean `anomaly`"), "{stderr}");
}

#[test]
fn plugin_new_builds_a_plugin_that_inspect_and_validate_read() {
    let dir = tempfile::tempdir().expect("tmp");
    let out = ok(flow()
        .args(["plugin", "new", "hot-above", "--dir"])
        .arg(dir.path()));
    assert!(text(&out.stdout).contains("cargo build --release --target wasm32-wasip2"));
    let crate_dir = dir.path().join("hot-above");
    // The examples' target directory already holds the dependencies, built.
    let target = repo().join("plugins/examples/target");
    let build = Command::new("cargo")
        .args(["build", "--release", "--target", "wasm32-wasip2", "--quiet"])
        .current_dir(&crate_dir)
        .env_remove("RUSTFLAGS")
        .env("CARGO_TARGET_DIR", &target)
        .output()
        .expect("cargo");
    assert!(build.status.success(), "{}", text(&build.stderr));
    let wasm = target.join("wasm32-wasip2/release/hot_above.wasm");

    let out = ok(flow().args(["plugin", "inspect"]).arg(&wasm));
    let stdout = text(&out.stdout);
    for want in [
        "plugin   hot-above 0.1.0",
        "world    flow:plugin@0.1.0",
        "ports    matched (default), unmatched, failure",
        "\"above\"",
        "wasi:cli/environment@0.2.6  (needs `grants.env` to do anything)",
    ] {
        assert!(stdout.contains(want), "no {want:?} in:\n{stdout}");
    }
    let out = ok(flow()
        .args(["plugin", "inspect", "--format", "json"])
        .arg(flow_tests::plugins_dir().join("router.wasm")));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        v["outputs"],
        serde_json::json!(["ok", "warn", "error", "hot"])
    );
    assert_eq!(v["world"], "flow:plugin@0.1.0");

    // `above` is required by the plugin's schema.
    let flow_file = dir.path().join("use.yaml");
    std::fs::write(
        &flow_file,
        format!(
            "processors:\n  g: {{ type: generate, preset: sensors, count: 10 }}\n  hot:\n    type: wasm\n    module: {}\n    config: {{ field: rpm }}\n  out: {{ type: stdout }}\nconnections:\n  - g -> hot\n  - hot.matched -> out\n",
            wasm.display()
        ),
    )
    .expect("flow");
    let out = flow()
        .args(["validate", "--format", "short"])
        .arg(&flow_file)
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("\"above\" is a required property"),
        "{}",
        text(&out.stderr)
    );
    let bad = flow()
        .args(["plugin", "new", "Bad Name", "--dir"])
        .arg(dir.path())
        .output()
        .expect("runs");
    assert!(!bad.status.success());
    assert!(
        text(&bad.stderr).contains("is not a crate name"),
        "{}",
        text(&bad.stderr)
    );
}
