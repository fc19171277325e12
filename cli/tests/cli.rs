//! The `flow` binary end to end: exit codes, listings, and a graceful SIGTERM mid-run.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::{flow, text};

fn run(c: &mut Command) -> Output {
    c.output().expect("flow runs")
}

#[test]
fn validate_accepts_every_example_flow() {
    let files = flow_tests::example_flows();
    assert!(files.len() >= 2);
    let plugins = flow_tests::plugins_dir();
    let out = run(flow()
        .arg("validate")
        .env("PLUGINS", &plugins)
        .args(&files)
        .env("INPUT", "in.jsonl")
        .env("OUT_DIR", "out")
        .env("MQTT_URL", "mqtt://127.0.0.1:1883")
        .env("KAFKA_BROKERS", "127.0.0.1:9092")
        .env("REST_URL", "http://127.0.0.1:8000/items")
        .env("INFLUX_URL", "http://127.0.0.1:8428")
        .env("S3_URL", "s3://bucket/prefix"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("flows/sensors.yaml: ok"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn validate_reports_errors_with_positions_and_exits_1() {
    let dir = tempfile::tempdir().expect("tmp");
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "processors:\n  a: { type: generate, cuont: 3 }\n  b: { type: stdot }\nconnections:\n  - a -> c\n",
    )
    .expect("write");
    let out = run(flow()
        .arg("validate")
        .arg("--format")
        .arg("short")
        .arg(&bad));
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("bad.yaml:2:24: error: unknown key `cuont`"),
        "{err}"
    );
    assert!(err.contains("did you mean `count`?"), "{err}");
    assert!(
        err.contains("bad.yaml:3:14: error: unknown processor type `stdot`"),
        "{err}"
    );
    assert!(err.contains("did you mean `stdout`?"), "{err}");
    assert!(err.contains("unknown processor `c`"), "{err}");
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(run(flow().arg("validate")).status.code(), Some(2));
    // A file that cannot be read is an invalid file (1), like one that does not parse: the
    // other files given are still checked (cli/tests/output.rs).
    assert_eq!(
        run(flow().arg("validate").arg("/nonexistent.yaml"))
            .status
            .code(),
        Some(1)
    );
    assert_eq!(run(flow().arg("frobnicate")).status.code(), Some(2));
}

#[test]
fn processors_schema_and_graph_describe_the_registry() {
    let out = run(flow().arg("processors"));
    assert!(out.status.success());
    let list = text(&out.stdout);
    for t in [
        "generate",
        "file",
        "stdin",
        "file_sink",
        "stdout",
        "filter",
        "route",
        "remap",
    ] {
        assert!(
            list.lines().any(|l| l.split_whitespace().next() == Some(t)),
            "{t} missing:\n{list}"
        );
    }
    let out = run(flow().arg("schema"));
    let schema: serde_json::Value = serde_json::from_slice(&out.stdout).expect("schema is JSON");
    let variants = schema["properties"]["processors"]["additionalProperties"]["oneOf"]
        .as_array()
        .expect("one schema per processor");
    assert_eq!(variants.len(), list.lines().count());

    let out = run(flow().args(["graph", "flows/demo.yaml", "--format", "mermaid"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let g = text(&out.stdout);
    assert!(g.starts_with("flowchart LR"));
    assert!(g.contains("|matched|"), "{g}");
    let out = run(flow().args(["graph", "flows/demo.yaml"]));
    assert!(text(&out.stdout).contains("\"valid\" -> \"triage\" [label=\"matched\"]"));
}

/// A flow whose `${VAR}`s are unset is drawn (its structure is all `flow graph` needs), and
/// `flow run` refuses it, naming the variables.
#[test]
fn graph_works_without_the_environment_and_run_requires_it() {
    let out = run(flow()
        .args(["graph", "flows/sensors.yaml"])
        .env_remove("INPUT")
        .env_remove("OUT_DIR"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let g = text(&out.stdout);
    assert!(
        g.contains("\"per_device\" -> \"late\" [label=\"late\"]"),
        "{g}"
    );

    let out = run(flow()
        .args(["run", "flows/sensors.yaml"])
        .env_remove("INPUT")
        .env_remove("OUT_DIR"));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("environment variable `INPUT` is not set"),
        "{err}"
    );
    assert!(
        err.contains("environment variable `OUT_DIR` is not set"),
        "{err}"
    );
}

/// SIGTERM in the middle of a run: the flow stops reading, drains, flushes and commits; every
/// record the source read is either written or reported as dropped, the committed position
/// equals what was written, and a restart resumes there without loss or duplicates.
#[test]
fn sigterm_mid_run_drains_commits_and_resumes() {
    let dir = tempfile::tempdir().expect("tmp");
    let input = dir.path().join("in.jsonl");
    let total = 400_000u64;
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&input).expect("create"));
        for i in 0..total {
            let status = if i % 10 == 3 { "error" } else { "ok" };
            writeln!(f, "{{\"n\":{i},\"status\":\"{status}\"}}").expect("write");
        }
    }
    let flow_file = dir.path().join("flow.yaml");
    std::fs::write(
        &flow_file,
        r#"
processors:
  src: { type: file, path: "${DIR}/in.jsonl", checkpoint: "${DIR}/in.checkpoint" }
  ok: { type: filter, condition: '.status == "ok"' }
  sink: { type: file_sink, path: "${DIR}/out.jsonl" }
connections:
  - src -> ok
  - ok.matched -> sink
"#,
    )
    .expect("write flow");
    let out_path = dir.path().join("out.jsonl");
    let report_path = dir.path().join("report.json");
    let child = flow()
        .arg("run")
        .arg(&flow_file)
        .arg("--report")
        .arg(&report_path)
        .env("DIR", dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    // Wait until output appears, then ask it to stop.
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::fs::metadata(&out_path).map(|m| m.len()).unwrap_or(0) < 10_000 {
        assert!(Instant::now() < deadline, "no output within 60 s");
        std::thread::sleep(Duration::from_millis(5));
    }
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill")
            .success()
    );
    let done = child.wait_with_output().expect("wait");
    assert!(
        done.status.success(),
        "exit {:?}: {}",
        done.status,
        text(&done.stderr)
    );

    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report_path).expect("report")).expect("json");
    let node = |name: &str| {
        report["nodes"]
            .as_array()
            .and_then(|n| n.iter().find(|n| n["name"] == name))
            .cloned()
            .expect("node in report")
    };
    let read = node("src")["received"].as_u64().expect("read");
    assert!(
        read > 0 && read < total,
        "SIGTERM came too late to test anything: read {read}"
    );
    let written = node("sink")["sent"].as_u64().expect("written");
    let dropped = node("ok")["dropped"].as_u64().expect("dropped");
    assert_eq!(
        written + dropped,
        read,
        "every record read was written or reported"
    );

    let checkpoint: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("in.checkpoint")).expect("checkpoint"),
    )
    .expect("json");
    let committed_lines = checkpoint["line"].as_u64().expect("line");
    assert_eq!(
        committed_lines, read,
        "committed position = what was read and finished"
    );
    let input_text = std::fs::read_to_string(&input).expect("input");
    let expected_prefix: Vec<&str> = input_text
        .lines()
        .take(read as usize)
        .filter(|l| l.contains("\"ok\""))
        .collect();
    let out_text = std::fs::read_to_string(&out_path).expect("output");
    let got: Vec<&str> = out_text.lines().collect();
    assert_eq!(got.len(), expected_prefix.len());
    assert!(
        got == expected_prefix,
        "output is exactly the valid records read, in order"
    );
    let offset = checkpoint["offset"].as_u64().expect("offset") as usize;
    assert_eq!(input_text[..offset].lines().count() as u64, committed_lines);

    // Restart: resumes at the checkpoint and finishes the file; nothing lost, nothing twice.
    let again = run(flow()
        .arg("run")
        .arg("--quiet")
        .arg(&flow_file)
        .env("DIR", dir.path()));
    assert!(again.status.success(), "{}", text(&again.stderr));
    let out_text = std::fs::read_to_string(&out_path).expect("output");
    let all_ok: Vec<&str> = input_text
        .lines()
        .filter(|l| l.contains("\"ok\""))
        .collect();
    assert_eq!(out_text.lines().collect::<Vec<_>>(), all_ok);
}

fn lines_of(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn counts(lines: &[String]) -> std::collections::BTreeMap<&str, usize> {
    let mut m = std::collections::BTreeMap::new();
    for l in lines {
        *m.entry(l.as_str()).or_default() += 1;
    }
    m
}

/// `kill -9` in the middle of `flows/sensors.yaml`, then the same command again: the output
/// equals an uninterrupted run's (which the golden tests tie to the reference oracle), line for
/// line and count for count. The read position (C) and the open windows are checkpointed
/// separately, so a restart replays the input after C, but the sinks are exactly-once: each
/// file is cut back to its last commit and the replayed records (input lines, and windows
/// numbered by the window) that commit covers are skipped (docs/reliability.md).
#[test]
fn kill_9_mid_run_then_restart_matches_an_uninterrupted_run() {
    let dir = tempfile::tempdir().expect("tmp");
    let input = dir.path().join("events.jsonl");
    let made = run(flow()
        .args(["run", "--quiet", "bench/gen-sensors.yaml"])
        .env("COUNT", "400000")
        .env("SEED", "7")
        .env("OUT", &input));
    assert!(made.status.success(), "{}", text(&made.stderr));

    let reference = dir.path().join("reference");
    let done = run(flow()
        .args(["run", "--quiet", "flows/sensors.yaml"])
        .env("INPUT", &input)
        .env("OUT_DIR", &reference));
    assert!(done.status.success(), "{}", text(&done.stderr));

    let out = dir.path().join("crashed");
    let mut child = flow()
        .args(["run", "--quiet", "flows/sensors.yaml"])
        .env("INPUT", &input)
        .env("OUT_DIR", &out)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    // Wait for a window checkpoint and some output, then kill without warning.
    let deadline = Instant::now() + Duration::from_secs(120);
    while !(out.join(".sensors.state").exists()
        && std::fs::metadata(out.join("windows.jsonl"))
            .map(|m| m.len())
            .unwrap_or(0)
            > 0
        && std::fs::metadata(out.join(".sensors.offset")).is_ok())
    {
        assert!(Instant::now() < deadline, "no checkpoint within 120 s");
        assert!(
            child.try_wait().expect("poll").is_none(),
            "finished before it could be killed"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().expect("kill -9");
    child.wait().expect("reaped");
    let offset: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join(".sensors.offset")).expect("offset"))
            .expect("json");
    let committed = offset["line"].as_u64().expect("line") as usize;
    let total = std::fs::read_to_string(&input)
        .expect("input")
        .lines()
        .count();
    assert!(
        committed < total,
        "the crash came after everything was committed"
    );

    let again = run(flow()
        .args(["run", "--quiet", "flows/sensors.yaml"])
        .env("INPUT", &input)
        .env("OUT_DIR", &out));
    assert!(again.status.success(), "{}", text(&again.stderr));

    for name in ["alerts.jsonl", "late.jsonl", "windows.jsonl"] {
        let want = lines_of(&reference.join(name));
        let got = lines_of(&out.join(name));
        let (want_n, got_n) = (counts(&want), counts(&got));
        let missing: Vec<_> = want_n.keys().filter(|k| !got_n.contains_key(*k)).collect();
        let extra: Vec<_> = got_n.keys().filter(|k| !want_n.contains_key(*k)).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "{name}: the same lines (committed line {committed}): missing {missing:?}, extra {extra:?}"
        );
        let repeated: Vec<_> = got_n.iter().filter(|(l, n)| **n > want_n[*l]).collect();
        assert!(repeated.is_empty(), "{name}: written again: {repeated:?}");
        assert_eq!(got.len(), want.len(), "{name}");
    }
}

/// A `file` source whose input does not exist: the run fails before anything starts, so no
/// sink creates its output, and the error is printed once.
#[test]
fn a_missing_input_file_fails_once_and_creates_nothing() {
    let dir = tempfile::tempdir().expect("tmp");
    let flow_file = dir.path().join("flow.yaml");
    std::fs::write(
        &flow_file,
        r#"
processors:
  src: { type: file, path: "${DIR}/missing.jsonl" }
  sink: { type: file_sink, path: "${DIR}/out/out.jsonl" }
connections:
  - src -> sink
"#,
    )
    .expect("write flow");
    let out = run(flow()
        .args(["run", "--quiet"])
        .arg(&flow_file)
        .env("DIR", dir.path()));
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert_eq!(
        stderr.matches("missing.jsonl").count(),
        1,
        "the error, once: {stderr}"
    );
    assert!(
        stderr.contains("processor `src`: cannot open `") && stderr.contains("No such file"),
        "{stderr}"
    );
    assert!(
        !dir.path().join("out").exists(),
        "no output was created for a flow that did not start"
    );
}

/// A second signal while a graceful stop cannot finish (the sink is stuck opening a FIFO that
/// nobody reads): the flow exits 130 at once and still writes `--report`, from the live
/// counters, saying the exit was forced.
#[test]
fn a_forced_exit_still_writes_the_report() {
    let dir = tempfile::tempdir().expect("tmp");
    mkfifo(&dir.path().join("stuck"));
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").to_string()
    };
    let flow_file = dir.path().join("flow.yaml");
    std::fs::write(
        &flow_file,
        r#"
processors:
  in: { type: http_server, listen: "${ADDR}" }
  stuck: { type: file_sink, path: "${DIR}/stuck" }
connections:
  - in -> stuck
"#,
    )
    .expect("write flow");
    let report_path = dir.path().join("report.json");
    let log_path = dir.path().join("log");
    let mut child = flow()
        .args(["run", "--quiet", "--report"])
        .arg(&report_path)
        .arg(&flow_file)
        .env("DIR", dir.path())
        .env("ADDR", &addr)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).expect("log"))
        .spawn()
        .expect("spawn");
    let post = |body: &str| -> Option<String> {
        use std::io::Read;
        let mut s = std::net::TcpStream::connect(&addr).ok()?;
        write!(
            s,
            "POST /ingest HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .ok()?;
        let mut answer = String::new();
        s.read_to_string(&mut answer).ok()?;
        Some(answer)
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if post(r#"{"n":1}"#).is_some_and(|a| a.starts_with("HTTP/1.1 202")) {
            break;
        }
        assert!(Instant::now() < deadline, "the server never took a record");
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = child.id().to_string();
    let signal = || {
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill")
    };
    signal();
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    while !log().contains("stopping") {
        assert!(
            Instant::now() < deadline,
            "no graceful stop began: {}",
            log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        child.try_wait().expect("status").is_none(),
        "the stop cannot finish while the sink is stuck"
    );
    signal();
    let status = child.wait().expect("exit");
    assert_eq!(status.code(), Some(130), "{}", log());
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report_path).expect("a report")).expect("json");
    let received = report["nodes"]
        .as_array()
        .and_then(|n| n.iter().find(|n| n["name"] == "in"))
        .map(|n| n["received"].clone());
    assert_eq!(received, Some(serde_json::json!(1)));
    assert!(
        report["errors"][0]
            .as_str()
            .is_some_and(|e| e.starts_with("forced exit")),
        "{report}"
    );
}

/// The committed line of a `file` source's checkpoint (0 when it never committed).
fn committed_line(path: &Path) -> u64 {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["line"].as_u64())
        .unwrap_or(0)
}

/// `n` sensor-like events, 100 ms apart, over 5 devices, with `extra` lines inserted at line
/// `at` (0-based).
fn events(n: usize, at: usize, extra: &[&str]) -> String {
    let mut lines: Vec<String> = (0..n)
        .map(|i| {
            format!(
                r#"{{"device":"d{}","ts":{},"temperature":{}}}"#,
                i % 5,
                1_732_300_000_000u64 + 100 * i as u64,
                60 + i % 40
            )
        })
        .collect();
    for (j, l) in extra.iter().enumerate() {
        lines.insert(at + j, (*l).to_owned());
    }
    lines.join("\n") + "\n"
}

const WINDOW_FLOW: &str = r#"
processors:
  events: { type: file, path: "${DIR}/in.jsonl", checkpoint: "${DIR}/in.offset", batch_size: 50 }
  per_device:
    type: window_aggregate
    key: .device
    key_field: device
    event_time: .ts
    window: { tumbling: 10s }
    allowed_lateness: 2s
    aggregates: { count: count(), max_temperature: max(.temperature) }
  archive: { type: file_sink, path: "${DIR}/archive.jsonl" }
  windows: { type: file_sink, path: "${WINDOWS}" }
  late: { type: file_sink, path: "${DIR}/late.jsonl" }
connections:
  - events -> archive
  - events -> per_device
  - per_device -> windows
  - per_device.late -> late
"#;

const STATEFUL_WINDOWS: &str = r#"
processors:
  events: { type: file, path: "${DIR}/in.jsonl", checkpoint: "${DIR}/in.offset", batch_size: 50 }
  per_device:
    type: window_aggregate
    key: .device
    key_field: device
    event_time: .ts
    window: { tumbling: 10s }
    state: ${DIR}/windows.redb
    aggregates: { count: count() }
  windows: { type: file_sink, path: "${DIR}/windows.jsonl" }
connections:
  - events -> per_device
  - per_device -> windows
"#;

/// A windowed run with `state` that ends by itself (every window emitted), then another on
/// the grown input: the second run's windows are numbered after the first's, so the
/// exactly-once `file_sink` writes them all (it used to take them for windows it had written,
/// the state being cleared at the end, and skip them: a loss). 200 s of events over 5 devices:
/// 100 windows of 20 events, each once.
#[test]
fn a_stateful_window_run_that_ends_then_resumes_on_grown_input_loses_nothing() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    std::fs::write(d.join("flow.yaml"), STATEFUL_WINDOWS).expect("flow");
    let all = events(2000, 0, &[]);
    let lines: Vec<&str> = all.lines().collect();
    for part in [&lines[..1000], &lines[1000..]] {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(d.join("in.jsonl"))
            .expect("input");
        f.write_all((part.join("\n") + "\n").as_bytes())
            .expect("append");
        let o = run(flow()
            .args(["run", "--quiet"])
            .arg(d.join("flow.yaml"))
            .env("DIR", d));
        assert!(o.status.success(), "{}", text(&o.stderr));
    }
    let windows = lines_of(&d.join("windows.jsonl"));
    let mut seen = std::collections::BTreeMap::new();
    for w in &windows {
        let v: serde_json::Value = serde_json::from_str(w).expect("json");
        let key = (v["device"].to_string(), v["window_start"].to_string());
        assert_eq!(v["count"], 20, "{w}");
        *seen.entry(key).or_insert(0) += 1;
    }
    assert_eq!(windows.len(), 100, "{} windows written", windows.len());
    assert!(seen.values().all(|&n| n == 1), "a window written twice");
}

fn run_window_flow(dir: &Path, windows: &Path) -> Output {
    std::fs::write(dir.join("flow.yaml"), WINDOW_FLOW).expect("flow");
    run(flow()
        .args(["run", "--quiet"])
        .arg(dir.join("flow.yaml"))
        .env("DIR", dir)
        .env("WINDOWS", windows))
}

/// A sink that cannot write for good (`/proc/version`: `EIO`) stops the flow with exit 1, and
/// the window, which failed while it held every record in its state, lets the source commit
/// none of them (although the other branch wrote them all): the rerun to a good path writes
/// every window. Before, the failure was a warning, the run exited 0 with the checkpoint past
/// every line, and a rerun wrote nothing.
#[cfg(target_os = "linux")]
#[test]
fn a_failing_sink_and_a_failing_window_never_let_the_source_commit() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    std::fs::write(d.join("in.jsonl"), events(1000, 0, &[])).expect("input");
    let failed = run_window_flow(d, Path::new("/proc/version"));
    assert_eq!(failed.status.code(), Some(1), "{}", text(&failed.stderr));
    assert!(
        text(&failed.stderr).contains("/proc/version"),
        "{}",
        text(&failed.stderr)
    );
    assert_eq!(committed_line(&d.join("in.offset")), 0, "nothing committed");

    let windows = d.join("windows.jsonl");
    let again = run_window_flow(d, &windows);
    assert!(again.status.success(), "{}", text(&again.stderr));
    assert_eq!(committed_line(&d.join("in.offset")), 1000);
    // The same windows as a run that never failed.
    let fresh = tempfile::tempdir().expect("tmp");
    std::fs::write(fresh.path().join("in.jsonl"), events(1000, 0, &[])).expect("input");
    let reference = fresh.path().join("windows.jsonl");
    assert!(run_window_flow(fresh.path(), &reference).status.success());
    assert_eq!(lines_of(&windows), lines_of(&reference));
    assert_eq!(
        lines_of(&windows).len(),
        5 * 10,
        "5 devices, 100 s of events"
    );
}

/// A full device (`/dev/full`) is retried while the flow waits; SIGTERM then stops it within
/// bounds, the run says the sink gave up (exit 1), and the checkpoint stays before every line
/// that was not written, so a rerun to a good path writes them all.
#[cfg(target_os = "linux")]
#[test]
fn a_full_device_is_retried_and_a_stop_commits_nothing_unwritten() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    std::fs::write(d.join("in.jsonl"), events(1000, 0, &[])).expect("input");
    std::fs::write(
        d.join("flow.yaml"),
        r#"
processors:
  events: { type: file, path: "${DIR}/in.jsonl", checkpoint: "${DIR}/in.offset", batch_size: 50 }
  out: { type: file_sink, path: "${OUT}" }
connections:
  - events -> out
"#,
    )
    .expect("flow");
    let child = flow()
        .args(["run", "--quiet"])
        .arg(d.join("flow.yaml"))
        .env("DIR", d)
        .env("OUT", "/dev/full")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill")
            .success()
    );
    let started = Instant::now();
    let done = child.wait_with_output().expect("wait");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "a bounded stop"
    );
    let err = text(&done.stderr);
    assert_eq!(done.status.code(), Some(1), "{err}");
    assert!(err.contains("No space left on device"), "{err}");
    assert!(err.contains("retrying"), "{err}");
    assert_eq!(committed_line(&d.join("in.offset")), 0);
    let out = d.join("out.jsonl");
    let again = run(flow()
        .args(["run", "--quiet"])
        .arg(d.join("flow.yaml"))
        .env("DIR", d)
        .env("OUT", &out));
    assert!(again.status.success(), "{}", text(&again.stderr));
    assert_eq!(lines_of(&out), lines_of(&d.join("in.jsonl")));
}

/// Event times no window can handle (the ends of 64-bit integers, a date in 2100) go to
/// `failure`, logged, and the run is otherwise exactly the run without them: same windows,
/// same late records, everything committed. Before, 9223372036854775807 panicked the window in
/// a debug build, with the checkpoint already past every line.
#[test]
fn bad_event_times_fail_alone_and_everything_is_committed() {
    let bad = [
        r#"{"device":"d1","ts":9223372036854775807,"temperature":1}"#,
        r#"{"device":"d1","ts":18446744073709551615,"temperature":1}"#,
        r#"{"device":"d1","ts":-9223372036854775808,"temperature":1}"#,
        r#"{"device":"d1","ts":4102444800000,"temperature":1}"#,
    ];
    let with = tempfile::tempdir().expect("tmp");
    let without = tempfile::tempdir().expect("tmp");
    std::fs::write(with.path().join("in.jsonl"), events(700, 350, &bad)).expect("input");
    std::fs::write(without.path().join("in.jsonl"), events(700, 0, &[])).expect("input");
    let got = run_window_flow(with.path(), &with.path().join("windows.jsonl"));
    let want = run_window_flow(without.path(), &without.path().join("windows.jsonl"));
    assert!(got.status.success(), "{}", text(&got.stderr));
    assert!(want.status.success(), "{}", text(&want.stderr));
    let err = text(&got.stderr);
    assert!(
        err.contains("the `failure` port has no edge") && err.contains("is out of range"),
        "{err}"
    );
    for f in ["windows.jsonl", "late.jsonl"] {
        assert_eq!(
            lines_of(&with.path().join(f)),
            lines_of(&without.path().join(f)),
            "{f}"
        );
    }
    assert!(!lines_of(&with.path().join("windows.jsonl")).is_empty());
    assert_eq!(committed_line(&with.path().join("in.offset")), 704);
}

/// Late records with no edge on `late` are counted as failed and logged, never dropped
/// silently.
#[test]
fn late_records_on_an_unconnected_port_are_counted_and_logged() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    // 30 s of events, then 10 from its first window, already fired: late.
    let mut input = events(300, 0, &[]);
    for i in 0..10 {
        input.push_str(&format!(
            "{{\"device\":\"d0\",\"ts\":{},\"temperature\":1}}\n",
            1_732_300_000_000u64 + i
        ));
    }
    std::fs::write(d.join("in.jsonl"), input).expect("input");
    std::fs::write(
        d.join("flow.yaml"),
        r#"
processors:
  events: { type: file, path: "${DIR}/in.jsonl" }
  per_device:
    type: window_aggregate
    key: .device
    event_time: .ts
    window: { tumbling: 10s }
    aggregates: { count: count() }
  windows: { type: file_sink, path: "${DIR}/windows.jsonl" }
connections:
  - events -> per_device
  - per_device -> windows
"#,
    )
    .expect("flow");
    let report = d.join("report.json");
    let out = run(flow()
        .args(["run", "--quiet"])
        .arg(d.join("flow.yaml"))
        .arg("--report")
        .arg(&report)
        .env("DIR", d));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("records went to port `late`, which has no edge")
            && err.contains("records=10"),
        "{err}"
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report).expect("report")).expect("json");
    let window = report["nodes"]
        .as_array()
        .and_then(|n| n.iter().find(|n| n["name"] == "per_device"))
        .cloned()
        .expect("node");
    assert_eq!(window["failed"], 10, "{window}");
}

/// `flow run` records provenance by default (here under `XDG_STATE_HOME`), `flow provenance`
/// reads it back through the flow file, and `--no-provenance` records nothing.
#[test]
fn provenance_is_recorded_by_default_and_queryable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let out = dir.path().join("out");
    let go = |args: &[&str], state: &Path| {
        let o = run(flow()
            .args(args)
            .env("XDG_STATE_HOME", state)
            .env("COUNT", "300")
            .env("OUT_DIR", &out));
        assert!(o.status.success(), "{args:?}: {}", text(&o.stderr));
        text(&o.stdout)
    };
    go(&["run", "--quiet", "flows/demo.yaml"], &state);
    let json = |s: String| -> serde_json::Value { serde_json::from_str(&s).expect("json") };
    let stats = json(go(
        &[
            "provenance",
            "--flow",
            "flows/demo.yaml",
            "stats",
            "--format",
            "json",
        ],
        &state,
    ));
    assert_eq!(stats["records_created"], 300, "{stats}");
    assert_eq!(stats["flows"], serde_json::json!(["demo"]));
    // A record the archive wrote: its lineage starts at the generator and reaches the file.
    let sent = go(
        &[
            "provenance",
            "--flow",
            "flows/demo.yaml",
            "search",
            "--node",
            "archive",
            "--event",
            "send",
            "--limit",
            "1",
            "--format",
            "json",
        ],
        &state,
    );
    let sent = json(sent)[0].clone();
    let archive = out.join("demo.jsonl").display().to_string();
    assert_eq!(sent["detail"], archive.as_str());
    let id = sent["first"].as_str().expect("an id").to_owned();
    let tree = json(go(
        &[
            "provenance",
            "--flow",
            "flows/demo.yaml",
            "lineage",
            &id,
            "--format",
            "json",
        ],
        &state,
    ));
    assert_eq!(tree["events"][0]["kind"], "CREATE");
    assert_eq!(tree["events"][0]["node"], "readings");
    let text_tree = go(
        &["provenance", "--flow", "flows/demo.yaml", "lineage", &id],
        &state,
    );
    assert!(
        text_tree.contains(&id) && text_tree.contains("SEND"),
        "{text_tree}"
    );

    let off = dir.path().join("off");
    go(
        &["run", "--quiet", "--no-provenance", "flows/demo.yaml"],
        &off,
    );
    assert!(!off.exists(), "--no-provenance wrote a store");
}

const KILLED: &str = r#"
name: killed
provenance: { path: "${STORE}" }
processors:
  numbers:
    type: generate
    preset: sequence
    rate: 2000
    batch_size: 50
  sink:
    type: file_sink
    path: ${DIR}/out.jsonl
connections:
  - numbers -> sink
"#;

/// `kill -9` mid-run, then another run on the same store: the store opens (a torn tail is
/// cut), queries work, and the records the sink wrote have their CREATE and SEND, but for
/// the last few batches whose SEND was still on its way to the store's writer.
#[test]
fn provenance_after_kill_9() {
    let (dir, file, store) = stored_flow(KILLED);
    let out = dir.path().join("out.jsonl");
    let start = || run_stored(&file, dir.path(), &store);
    let mut child = start();
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::fs::read_to_string(&out).map_or(0, |t| t.lines().count()) < 1000 {
        assert!(Instant::now() < deadline, "no output within 60 s");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().expect("kill -9");
    child.wait().expect("waited");
    let written: Vec<u64> = std::fs::read_to_string(&out)
        .expect("output")
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["n"].as_u64())
        .collect();

    // Another run opens the store (cutting a torn tail) and records its own segment.
    let mut again = start();
    let deadline = Instant::now() + Duration::from_secs(60);
    while store_segments(&store) < 2 {
        assert!(Instant::now() < deadline, "no second segment within 60 s");
        std::thread::sleep(Duration::from_millis(5));
    }
    // Running (writing), so past its start-up: a SIGTERM now is a graceful stop, not the
    // default action of a signal that came before the flow listens for it.
    while std::fs::read_to_string(&out).map_or(0, |t| t.lines().count()) <= written.len() {
        assert!(
            Instant::now() < deadline,
            "the second run wrote nothing within 60 s"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        Command::new("kill")
            .args(["-TERM", &again.id().to_string()])
            .status()
            .expect("kill")
            .success()
    );
    assert!(again.wait().expect("waited").success());

    let query = |args: &[&str]| query_store(&store, args);
    // The generator numbers its records in order, and CREATEs them in order: the nth
    // created id is the record of `n`. Only the first run's events (segment 1).
    let created = event_ids(&store, "CREATE", Some(1));
    let sent: std::collections::HashSet<u64> =
        event_ids(&store, "SEND", Some(1)).into_iter().collect();
    // Every record written has its CREATE and SEND, but for a tail still on its way to the
    // writer: a CREATE too may be (the sink can write a batch before the writer has it).
    let missing: Vec<u64> = written
        .iter()
        .filter(|&&n| {
            usize::try_from(n)
                .ok()
                .and_then(|n| created.get(n))
                .is_none_or(|id| !sent.contains(id))
        })
        .copied()
        .collect();
    eprintln!(
        "{} of {} records written lack their SEND or CREATE (in flight at the kill); {} CREATEs",
        missing.len(),
        written.len(),
        created.len()
    );
    let tail = &written[written.len() - missing.len()..];
    assert_eq!(
        missing, tail,
        "only the last records written may lack their SEND or CREATE"
    );
    assert!(
        missing.len() <= 8192 * 50 && missing.len() < written.len(),
        "{} of {} records lack their SEND or CREATE",
        missing.len(),
        written.len()
    );
    // A record written before the kill: its whole lineage.
    let id = format!("{:016x}", created[written[0] as usize]);
    let tree = query(&["lineage", &id]);
    let kinds: Vec<&str> = tree["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    assert_eq!(kinds, ["CREATE", "ROUTE", "RECEIVE", "SEND"]);
    let stats = query(&["stats"]);
    assert_eq!(stats["segments"], 2, "{stats}");
}

/// `flow provenance --store STORE --format json ARGS...`, parsed.
fn query_store(store: &Path, args: &[&str]) -> serde_json::Value {
    let o = run(flow()
        .args(["provenance", "--store"])
        .arg(store)
        .args(["--format", "json"])
        .args(args));
    assert!(o.status.success(), "{args:?}: {}", text(&o.stderr));
    serde_json::from_slice(&o.stdout).expect("json")
}

/// The ids of the records of every `kind` event in the store, in the order recorded; only
/// those of segment `segment` if given (a run's first segment is its own).
fn event_ids(store: &Path, kind: &str, segment: Option<u64>) -> Vec<u64> {
    query_store(store, &["search", "--event", kind, "--limit", "10000000"])
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| segment.is_none_or(|s| e["event"].as_u64().is_some_and(|id| id >> 32 == s)))
        .flat_map(|e| {
            let first = u64::from_str_radix(e["first"].as_str().expect("id"), 16).expect("hex");
            first..first + e["records"].as_u64().expect("records")
        })
        .collect()
}

/// A directory holding `yaml` as `flow.yaml`, and the path of its provenance store there.
fn stored_flow(yaml: &str) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("flow.yaml");
    std::fs::write(&file, yaml).expect("flow");
    let store = dir.path().join("store");
    (dir, file, store)
}

/// `flow run --quiet FILE` in the background, with `DIR` and `STORE` (its provenance store)
/// set, its output thrown away.
fn run_stored(file: &Path, dir: &Path, store: &Path) -> std::process::Child {
    flow()
        .args(["run", "--quiet"])
        .arg(file)
        .env("DIR", dir)
        .env("STORE", store)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn")
}

fn mkfifo(path: &Path) {
    assert!(
        Command::new("mkfifo")
            .arg(path)
            .status()
            .expect("mkfifo")
            .success()
    );
}

const COMMITTED: &str = r#"
name: committed
provenance: { path: "${STORE}" }
processors:
  numbers:
    type: file
    path: ${DIR}/in
    checkpoint: ${DIR}/in.checkpoint
    batch_size: 100
  sink: { type: file_sink, path: "${DIR}/out.jsonl" }
connections:
  - numbers -> sink
"#;

/// A source commits only records whose events are in the provenance store: the sinks'
/// acknowledgements wait behind their SEND in the store's writer. Fed slowly through a named
/// pipe, the flow is killed (`kill -9`) once it has committed some thousands of lines; every
/// line up to the committed one then has its SEND in the store.
#[test]
fn after_kill_9_every_committed_record_has_its_send() {
    let (dir, file, store) = stored_flow(COMMITTED);
    let checkpoint = dir.path().join("in.checkpoint");
    mkfifo(&dir.path().join("in"));
    let mut child = run_stored(&file, dir.path(), &store);
    let fifo = dir.path().join("in");
    // Numbered lines, a few thousand a second, until the reader is gone.
    let feeder = std::thread::spawn(move || {
        let Ok(mut pipe) = std::fs::OpenOptions::new().write(true).open(&fifo) else {
            return;
        };
        for chunk in 0u64.. {
            let lines: String = (chunk * 100..(chunk + 1) * 100)
                .map(|n| format!("{{\"n\":{n}}}\n"))
                .collect();
            if pipe.write_all(lines.as_bytes()).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    while committed_line(&checkpoint) < 3000 {
        assert!(Instant::now() < deadline, "nothing committed within 60 s");
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().expect("kill -9");
    child.wait().expect("waited");
    feeder.join().expect("feeder");
    let committed = usize::try_from(committed_line(&checkpoint)).expect("lines");

    // Lines are read and CREATEd in order: the nth created id is line n's record.
    let created = event_ids(&store, "CREATE", None);
    let sent: std::collections::HashSet<u64> =
        event_ids(&store, "SEND", None).into_iter().collect();
    assert!(
        created.len() >= committed,
        "{} CREATEd, {committed} committed",
        created.len()
    );
    let missing = created[..committed]
        .iter()
        .filter(|id| !sent.contains(id))
        .count();
    assert_eq!(
        missing, 0,
        "of {committed} committed records, {missing} have no SEND in the store"
    );
}

fn store_segments(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| {
        d.flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "prov"))
            .count()
    })
}
