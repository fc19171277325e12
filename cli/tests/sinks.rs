//! `flow run` on the example flows `flows/sensors-to-influx.yaml` and `flows/sensors-to-s3.yaml`
//! against the servers `scripts/test.sh` starts (VictoriaMetrics: `FLOW_TEST_INFLUX_URL`;
//! s3s-fs: `FLOW_TEST_S3_*`), and against `file://`. What the flows wrote is read back from
//! the servers and compared with the input. Without a server its tests skip and say so, except
//! with `CI` set, where they fail.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use object_store::{ObjectStore, ObjectStoreExt};

use crate::common::repo;

fn env_or_skip(var: &str, what: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) => Some(v),
        Err(_) if std::env::var_os("CI").is_some() => {
            panic!("{var} is not set but CI is: {what} did not start")
        }
        Err(_) => {
            eprintln!("skipped: {var} is not set (scripts/test.sh starts {what})");
            None
        }
    }
}

fn fixture() -> PathBuf {
    repo().join("tests/fixtures/sensors/seed1")
}

fn flow(file: &str, env: &[(&str, &str)]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_flow"));
    // Provenance stores of test runs stay under target/tmp, not ~/.local/state.
    c.env(
        "XDG_STATE_HOME",
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("state"),
    );
    c.args(["run", "--quiet"])
        .arg(repo().join("flows").join(file));
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

fn run_ok(mut c: Command) {
    let out = c.output().expect("flow runs");
    assert!(
        out.status.success(),
        "flow failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("flowtest/{name}-{}-{nanos}", std::process::id())
}

/// The valid (non-error) input lines, as they were.
fn valid_lines(events: &Path) -> Vec<String> {
    std::fs::read_to_string(events)
        .expect("events")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .is_ok_and(|v| v["status"].as_str() != Some("error"))
        })
        .map(str::to_owned)
        .collect()
}

fn gunzip(data: &[u8]) -> String {
    let mut s = String::new();
    flate2::read::MultiGzDecoder::new(data)
        .read_to_string(&mut s)
        .expect("a complete gzip object");
    s
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Every object under `prefix`, key below the prefix -> raw bytes.
fn objects(store: &dyn ObjectStore, prefix: &str) -> BTreeMap<String, Vec<u8>> {
    runtime().block_on(async {
        let p = object_store::path::Path::from(prefix);
        let metas: Vec<_> = store.list(Some(&p)).try_collect().await.expect("listed");
        let mut out = BTreeMap::new();
        for m in metas {
            let data = store
                .get(&m.location)
                .await
                .expect("get")
                .bytes()
                .await
                .expect("body");
            let key = m.location.as_ref()[prefix.len()..].trim_start_matches('/');
            out.insert(key.to_owned(), data.to_vec());
        }
        out
    })
}

/// Check the objects hold exactly `want`, each under `<device>/dt=<day>/hour=<HH>/part-<uuid>.jsonl.gz`.
fn assert_archive(objs: &BTreeMap<String, Vec<u8>>, want: &[String]) {
    let mut got: Vec<String> = Vec::new();
    for (key, data) in objs {
        let text = gunzip(data);
        assert!(text.ends_with('\n'), "{key}: partial");
        let (dir, file) = key.rsplit_once('/').expect("key");
        assert!(
            file.starts_with("part-") && file.ends_with(".jsonl.gz"),
            "{key}"
        );
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).expect("json");
            let t = chrono_hour(v["ts"].as_i64().expect("ts"));
            assert_eq!(
                dir,
                format!("{}/{t}", v["device"].as_str().expect("device")),
                "{key}"
            );
            got.push(line.to_owned());
        }
    }
    let mut want = want.to_vec();
    got.sort();
    want.sort();
    assert_eq!(got.len(), want.len());
    assert!(got == want, "the archive differs from the valid input");
}

/// `dt=YYYY-MM-DD/hour=HH` of an epoch-ms time (UTC), without a date crate.
fn chrono_hour(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let hour = secs.rem_euclid(86_400) / 3600;
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!("dt={y:04}-{m:02}-{d:02}/hour={hour:02}")
}

struct S3 {
    endpoint: String,
    bucket: String,
    key: String,
    secret: String,
}

fn s3() -> Option<S3> {
    let endpoint = env_or_skip("FLOW_TEST_S3_ENDPOINT", "s3s-fs")?;
    let var = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} is not set"));
    Some(S3 {
        endpoint,
        bucket: var("FLOW_TEST_S3_BUCKET"),
        key: var("FLOW_TEST_S3_ACCESS_KEY"),
        secret: var("FLOW_TEST_S3_SECRET_KEY"),
    })
}

impl S3 {
    fn store(&self) -> Arc<dyn ObjectStore> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        Arc::new(
            object_store::aws::AmazonS3Builder::new()
                .with_endpoint(&self.endpoint)
                .with_allow_http(true)
                .with_bucket_name(&self.bucket)
                .with_region("us-east-1")
                .with_access_key_id(&self.key)
                .with_secret_access_key(&self.secret)
                .build()
                .expect("client"),
        )
    }

    fn env<'a>(&'a self, url: &'a str) -> Vec<(&'a str, &'a str)> {
        vec![
            ("S3_URL", url),
            ("S3_ENDPOINT", &self.endpoint),
            ("AWS_ACCESS_KEY_ID", &self.key),
            ("AWS_SECRET_ACCESS_KEY", &self.secret),
        ]
    }
}

#[test]
fn sensors_to_s3_archives_every_valid_event_by_device_and_hour() {
    let Some(s) = s3() else { return };
    let events = fixture().join("events.jsonl");
    let prefix = unique("sensors-to-s3");
    let url = format!("s3://{}/{prefix}", s.bucket);
    let mut env = s.env(&url);
    let input = events.to_str().expect("utf-8");
    env.push(("INPUT", input));
    run_ok(flow("sensors-to-s3.yaml", &env));
    assert_archive(&objects(&*s.store(), &prefix), &valid_lines(&events));
}

#[test]
fn sensors_to_s3_on_the_local_filesystem() {
    let events = fixture().join("events.jsonl");
    let dir = tempfile::tempdir().expect("tmp");
    let url = format!("file://{}/archive", dir.path().display());
    run_ok(flow(
        "sensors-to-s3.yaml",
        &[("INPUT", events.to_str().expect("utf-8")), ("S3_URL", &url)],
    ));
    let store = object_store::local::LocalFileSystem::new_with_prefix(dir.path().join("archive"))
        .expect("fs");
    assert_archive(&objects(&store, ""), &valid_lines(&events));
}

/// Every file under `dir`, recursively (none when it does not exist).
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// An object_store staging file: a name ending in `#` and digits (`part-x.jsonl.gz#1`).
fn is_staging(p: &Path) -> bool {
    let name = p
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    name.rsplit_once('#')
        .is_some_and(|(_, d)| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
}

/// SIGTERM while objects are open: the flow completes them before it exits, so every object is
/// whole; none is partial or left as a staging file. The signal comes once the flow has
/// written its first objects (an object rolls every 50 records of its device), so others are
/// open then.
#[test]
fn sigterm_mid_object_leaves_only_complete_objects() {
    let dir = tempfile::tempdir().expect("tmp");
    let flow_file = dir.path().join("flow.yaml");
    std::fs::write(
        &flow_file,
        r#"
name: s3-stop
processors:
  gen: { type: generate, preset: sensors, rate: 20000, batch_size: 100 }
  archive:
    type: s3_sink
    url: ${S3_URL}
    endpoint: ${S3_ENDPOINT:-}
    key: "{device}/part-{uuid}.jsonl.gz"
    max_age: 1h
    max_idle: 1h
    max_records: 50
    part_size: 5MiB
connections:
  - gen -> archive
"#,
    )
    .expect("flow");
    let mut targets = vec![(format!("file://{}/out", dir.path().display()), None)];
    let s = s3();
    if let Some(s) = &s {
        targets.push((format!("s3://{}/{}", s.bucket, unique("sigterm")), Some(s)));
    }
    for (url, server) in targets {
        let mut c = Command::new(env!("CARGO_BIN_EXE_flow"));
        // Provenance stores of test runs stay under target/tmp, not ~/.local/state.
        c.env(
            "XDG_STATE_HOME",
            std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("state"),
        );
        c.args(["run", "--report"])
            .arg(dir.path().join("report.json"))
            .arg(&flow_file)
            .env("S3_URL", &url)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(s) = server {
            for (k, v) in s.env(&url) {
                c.env(k, v);
            }
        }
        let mut child = c.spawn().expect("flow starts");
        // Wait for a real sign of progress (a first object, or a staging file), not a guess.
        let out_dir = dir.path().join("out");
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let written = match server {
                Some(s) => {
                    let prefix = url.trim_start_matches(&format!("s3://{}/", s.bucket));
                    !objects(&*s.store(), prefix).is_empty()
                }
                None => !walk(&out_dir).is_empty(),
            };
            if written {
                break;
            }
            if let Some(status) = child.try_wait().expect("flow state") {
                panic!("{url}: the flow ended before writing anything: {status}");
            }
            assert!(Instant::now() < deadline, "{url}: nothing written in 120s");
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let started = Instant::now();
        let out = child.wait_with_output().expect("waited");
        assert!(
            out.status.success(),
            "{url}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(started.elapsed() < Duration::from_secs(30));
        let objs = match server {
            Some(s) => {
                let prefix = url.trim_start_matches(&format!("s3://{}/", s.bucket));
                objects(&*s.store(), prefix)
            }
            None => {
                // object_store's listing skips staging files: look at the directory itself.
                let staging: Vec<_> = walk(&out_dir)
                    .into_iter()
                    .filter(|p| is_staging(p))
                    .collect();
                assert!(staging.is_empty(), "{url}: staging files left: {staging:?}");
                let store =
                    object_store::local::LocalFileSystem::new_with_prefix(&out_dir).expect("fs");
                objects(&store, "")
            }
        };
        assert!(!objs.is_empty(), "{url}: nothing written");
        let mut lines = 0;
        for (key, data) in &objs {
            assert!(!key.contains('#'), "{url}: staging file {key} left");
            let text = gunzip(data);
            assert!(text.ends_with('\n'), "{url}: {key} is partial");
            for l in text.lines() {
                serde_json::from_str::<serde_json::Value>(l).expect("whole JSON lines");
                lines += 1;
            }
        }
        let report: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join("report.json")).expect("report"),
        )
        .expect("json");
        let sent = report["nodes"]
            .as_array()
            .and_then(|n| n.iter().find(|n| n["name"] == "archive"))
            .and_then(|n| n["sent"].as_u64())
            .expect("archive.sent");
        assert_eq!(
            lines, sent,
            "{url}: objects hold what the sink reported sent"
        );
        assert!(sent > 0);
    }
}

/// VictoriaMetrics' `engine` points of this run: (device, time) -> (count, avg, max_rpm). A
/// field missing is NaN; one written twice with different values too (so it never matches).
fn export_engine(url: &str, run: &str) -> BTreeMap<(String, i64), (f64, f64, f64)> {
    let mut out: BTreeMap<(String, i64), (f64, f64, f64)> = BTreeMap::new();
    let _ = Command::new("curl")
        .args(["-sf", &format!("{url}/internal/force_flush")])
        .output();
    let matcher = format!("{{__name__=~\"engine_.*\",flowtest_run=\"{run}\"}}");
    let text = Command::new("curl")
        .args([
            "-sf",
            &format!("{url}/api/v1/export"),
            "--data-urlencode",
            &format!("match[]={matcher}"),
        ])
        .output()
        .expect("curl");
    let mut seen = std::collections::HashSet::new();
    for line in String::from_utf8_lossy(&text.stdout).lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("json");
        let name = v["metric"]["__name__"].as_str().expect("name").to_owned();
        let device = v["metric"]["device"].as_str().expect("device").to_owned();
        let ts = v["timestamps"].as_array().expect("ts");
        let vals = v["values"].as_array().expect("values");
        for (t, x) in ts.iter().zip(vals) {
            let t = t.as_i64().expect("ts");
            let e = out
                .entry((device.clone(), t))
                .or_insert((f64::NAN, f64::NAN, f64::NAN));
            let x = x.as_f64().expect("value");
            let slot = match name.as_str() {
                "engine_count" => &mut e.0,
                "engine_avg_temperature" => &mut e.1,
                "engine_max_rpm" => &mut e.2,
                other => panic!("a field the flow does not write: {other}"),
            };
            if !seen.insert((name.clone(), device.clone(), t)) && *slot != x {
                *slot = f64::NAN;
            } else {
                *slot = x;
            }
        }
    }
    out
}

/// Every window of the reference output (`windows.jsonl`, all 851 of them) is a point in
/// VictoriaMetrics, and nothing else is: measurement `engine`, tag `device`, fields `count`,
/// `avg_temperature`, `max_rpm`, at `window_start`.
#[test]
fn sensors_to_influx_writes_every_window() {
    let Some(url) = env_or_skip("FLOW_TEST_INFLUX_URL", "VictoriaMetrics") else {
        return;
    };
    which_curl();
    let dir = fixture();
    // VictoriaMetrics adds `extra_label` to every point written: this run's points are told
    // apart from other runs' on the same server (the query string passes through the sink).
    let run = unique("influx").replace(['/', '-'], "_");
    let write_url = format!("{url}/?extra_label=flowtest_run={run}");
    run_ok(flow(
        "sensors-to-influx.yaml",
        &[
            ("INPUT", dir.join("events.jsonl").to_str().expect("utf-8")),
            ("INFLUX_URL", &write_url),
        ],
    ));
    let mut want: BTreeMap<(String, i64), (f64, f64, f64)> = BTreeMap::new();
    for l in std::fs::read_to_string(dir.join("windows.jsonl"))
        .expect("windows")
        .lines()
    {
        let v: serde_json::Value = serde_json::from_str(l).expect("json");
        let key = (
            v["device"].as_str().expect("device").to_owned(),
            v["window_start"].as_i64().expect("start"),
        );
        let fields = (
            v["count"].as_f64().expect("count"),
            v["avg_temperature"].as_f64().expect("avg"),
            v["max_rpm"].as_f64().expect("max"),
        );
        assert!(want.insert(key, fields).is_none(), "one window per key");
    }
    assert_eq!(want.len(), 851, "the reference windows");
    let same = |w: &(f64, f64, f64), g: &(f64, f64, f64)| {
        g.0 == w.0 && g.2 == w.2 && (g.1 - w.1).abs() <= 1e-9 * w.1.abs().max(1.0)
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let got = export_engine(&url, &run);
        let missing: Vec<_> = want.keys().filter(|k| !got.contains_key(*k)).collect();
        let extra: Vec<_> = got.keys().filter(|k| !want.contains_key(*k)).collect();
        let wrong: Vec<_> = want
            .iter()
            .filter_map(|(k, w)| got.get(k).filter(|g| !same(w, g)).map(|g| (k, w, g)))
            .collect();
        if missing.is_empty() && extra.is_empty() && wrong.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "VictoriaMetrics holds {} points for the {} windows: {} missing (first {:?}), {} \
             extra (first {:?}), {} with other values (first {:?})",
            got.len(),
            want.len(),
            missing.len(),
            missing.first(),
            extra.len(),
            extra.first(),
            wrong.len(),
            wrong.first()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn which_curl() {
    assert!(
        Command::new("curl").arg("--version").output().is_ok(),
        "the InfluxDB end-to-end test reads back with curl"
    );
}

#[test]
fn staging_file_names_are_recognised() {
    assert!(is_staging(Path::new("/o/car-1/part-x.jsonl.gz#1")));
    assert!(is_staging(Path::new("part-x#42")));
    assert!(!is_staging(Path::new("part-x.jsonl.gz")));
    assert!(!is_staging(Path::new("part#x")));
    assert!(!is_staging(Path::new("part#")));
}
