//! The control API of `flow run --api`, through real clients: reqwest for HTTP and SSE,
//! `promtool` (Prometheus' own parser and lints) for `/metrics`, VictoriaMetrics scraping it
//! through its `-promscrape.config`, tmux for the interactive `flow top`.

use crate::common;

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::{repo, server, wait_for};

/// A flow started with `--api 127.0.0.1:0`; its stderr is kept, the API's URL read from it.
struct ApiFlow {
    child: Child,
    url: String,
    log: Arc<Mutex<String>>,
}

impl ApiFlow {
    fn start(file: &Path, args: &[&str], env: &[(&str, &str)]) -> ApiFlow {
        let args: Vec<&str> = ["--api", "127.0.0.1:0"]
            .iter()
            .chain(args)
            .copied()
            .collect();
        Self::spawn(file, &args, env)
    }

    /// `flow run --quiet ARGS FILE`: the API must be asked for by `args` or the file.
    fn spawn(file: &Path, args: &[&str], env: &[(&str, &str)]) -> ApiFlow {
        let mut c = Command::new(env!("CARGO_BIN_EXE_flow"));
        // Provenance stores of test runs stay under target/tmp, not ~/.local/state.
        c.env(
            "XDG_STATE_HOME",
            std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("state"),
        );
        c.current_dir(repo())
            .args(["run", "--quiet"])
            .args(args)
            .arg(file)
            .env_remove("FLOW_API_TOKEN")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            c.env(k, v);
        }
        let mut child = c.spawn().expect("flow starts");
        let err = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let kept = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("flow: api listening on ") {
                    let _ = tx.send(url.to_owned());
                }
                let mut l = kept.lock().expect("log");
                l.push_str(&line);
                l.push('\n');
            }
        });
        let url = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("no API address on stderr:\n{}", log.lock().expect("log")));
        ApiFlow { child, url, log }
    }

    fn log(&self) -> String {
        self.log.lock().expect("log").clone()
    }

    /// Wait for the flow to end by itself; panics unless it exits 0.
    fn wait_ok(mut self, secs: u64) {
        let mut status = None;
        wait_for(secs, "the flow to finish", || {
            status = self.child.try_wait().ok().flatten();
            status.is_some()
        });
        assert!(
            status.is_some_and(|s| s.success()),
            "flow exited with {status:?}:\n{}",
            self.log()
        );
    }

    /// SIGTERM; panics unless the flow then exits 0.
    fn stop_ok(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let status = self.child.wait().expect("waited");
        assert!(
            status.success(),
            "flow exited with {status}:\n{}",
            self.log()
        );
    }
}

impl Drop for ApiFlow {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn runtime() -> tokio::runtime::Runtime {
    // reqwest is built without a TLS provider of its own (plain HTTP here, but it asks).
    let _ = rustls::crypto::ring::default_provider().install_default();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn get(url: &str, token: Option<&str>) -> (u16, String) {
    runtime().block_on(async {
        let mut req = reqwest::Client::new().get(url);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.expect("the API answers");
        let status = resp.status().as_u16();
        (status, resp.text().await.expect("a body"))
    })
}

fn json(url: &str) -> serde_json::Value {
    let (status, body) = get(url, None);
    assert_eq!(status, 200, "{url}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{url}: {e}: {body}"))
}

/// `promtool check metrics`: Prometheus' own parser, and its naming lints.
fn promtool_check(scrape: &str) {
    if Command::new("promtool").arg("--version").output().is_err() {
        assert!(
            std::env::var_os("CI").is_none(),
            "promtool is missing but CI is set (scripts/test.sh installs Debian's prometheus)"
        );
        eprintln!(
            "skipped: promtool is not installed (scripts/test.sh installs Debian's prometheus)"
        );
        return;
    }
    let mut p = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    p.stdin
        .take()
        .expect("stdin")
        .write_all(scrape.as_bytes())
        .expect("written");
    let out = p.wait_with_output().expect("promtool ends");
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n--- scrape:\n{scrape}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The value of one sample of the exposition (after promtool accepted it): `name{labels}`
/// written exactly as the encoder writes it.
fn sample(scrape: &str, series: &str) -> Option<f64> {
    scrape.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

fn write_flow(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("flow written");
    p
}

const NUMBERS: &str = r#"
name: observed
processors:
  numbers:
    type: generate
    preset: sequence
    count: ${COUNT}
    rate: ${RATE}
    batch_size: 10
  split:
    type: route
    routes:
      threes: mod!(.n, 3) == 0
  threes:
    type: file_sink
    path: ${OUT_DIR}/threes.jsonl
  others:
    type: file_sink
    path: ${OUT_DIR}/others.jsonl
connections:
  - numbers -> split
  - split.threes -> threes
  - split.unmatched -> others
"#;

/// The counters of a stats snapshot or a report, by node.
fn node_counters(v: &serde_json::Value) -> BTreeMap<String, [u64; 4]> {
    v["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| {
            let c = |k: &str| n[k].as_u64().or_else(|| n["counters"][k].as_u64());
            (
                n["name"].as_str().expect("name").to_owned(),
                [
                    c("received").expect("received"),
                    c("sent").expect("sent"),
                    c("dropped").expect("dropped"),
                    c("failed").expect("failed"),
                ],
            )
        })
        .collect()
}

#[test]
fn scrape_stream_and_report_agree() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().to_str().expect("utf-8");
    let file = write_flow(dir.path(), "numbers.yaml", NUMBERS);
    let report = dir.path().join("report.json");
    let flow = ApiFlow::start(
        &file,
        &["--report", report.to_str().expect("utf-8")],
        &[("COUNT", "3000"), ("RATE", "1000"), ("OUT_DIR", out)],
    );
    let url = flow.url.clone();

    // The stream, read by a real HTTP client from the start to its end.
    let stream_url = format!("{url}/api/v1/stats/stream?interval=200ms");
    let reader = std::thread::spawn(move || {
        runtime().block_on(async {
            let mut resp = reqwest::get(&stream_url).await.expect("stream");
            assert_eq!(resp.status().as_u16(), 200);
            let mut buf = String::new();
            let mut snapshots: Vec<serde_json::Value> = Vec::new();
            while let Ok(Some(chunk)) = resp.chunk().await {
                buf.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = buf.find("\n\n") {
                    let event: String = buf.drain(..end + 2).collect();
                    for data in event.lines().filter_map(|l| l.strip_prefix("data:")) {
                        snapshots.push(serde_json::from_str(data.trim()).expect("JSON"));
                    }
                }
            }
            snapshots
        })
    });

    // A tap on `split.threes` for the whole run: this flow is slow enough that it loses none.
    let tap_url = format!("{url}/api/v1/tap?node=split&port=threes");
    let tap = std::thread::spawn(move || {
        runtime().block_on(async {
            let mut resp = reqwest::get(&tap_url).await.expect("tap");
            let (mut buf, mut seen) = (Vec::new(), Vec::new());
            while let Ok(Some(chunk)) = resp.chunk().await {
                buf.extend_from_slice(&chunk);
                while let Some(end) = buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=end).collect();
                    let m: serde_json::Value = serde_json::from_slice(&line).expect("JSON");
                    assert!(m.get("lost").is_none(), "a tap at 1000 records/s lost some");
                    seen.push(m["content"].clone());
                }
            }
            seen
        })
    });

    // A scrape taken mid-run: records have gone through, the source is not done.
    let mut scrape = String::new();
    wait_for(60, "a mid-run scrape", || {
        let (status, text) = get(&format!("{url}/metrics"), None);
        assert_eq!(status, 200);
        scrape = text;
        sample(&scrape, r#"flow_node_records_out_total{node="numbers"}"#)
            .is_some_and(|v| v > 0.0 && v < 3000.0)
    });
    promtool_check(&scrape);
    for name in [
        "flow_build_info",
        "flow_uptime_seconds",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "flow_node_records_in_total",
        "flow_node_port_records_out_total",
        "flow_node_batch_duration_seconds_bucket",
        "flow_edge_queued_records",
        "flow_edge_capacity_records",
        "flow_edge_records_sent_total",
        "flow_source_acks_pending",
    ] {
        assert!(
            scrape.lines().any(|l| l.starts_with(name)),
            "no {name} in the scrape:\n{scrape}"
        );
    }

    // The graph, readiness, events.
    let graph = json(&format!("{url}/api/v1/flow"));
    assert_eq!(graph["nodes"].as_array().map(Vec::len), Some(4), "{graph}");
    let edges: Vec<(String, String, String)> = graph["edges"]
        .as_array()
        .expect("edges")
        .iter()
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap_or_default().to_owned();
            (s("from"), s("port"), s("to"))
        })
        .collect();
    assert!(edges.contains(&("split".into(), "threes".into(), "threes".into())));
    assert_eq!(json(&format!("{url}/ready"))["ready"], true);
    assert!(json(&format!("{url}/api/v1/events"))["events"].is_array());

    let snapshots = reader.join().expect("stream reader");
    flow.wait_ok(60);

    eprintln!("{} snapshots streamed", snapshots.len());
    // The stream's counters only grow, and its last snapshot is the report.
    assert!(snapshots.len() >= 3, "{} snapshots", snapshots.len());
    let series: Vec<_> = snapshots.iter().map(node_counters).collect();
    for pair in series.windows(2) {
        for (node, c) in &pair[1] {
            let before = pair[0][node];
            assert!(
                c.iter().zip(before).all(|(now, was)| *now >= was),
                "{node}: {before:?} then {c:?}"
            );
        }
    }
    let last = snapshots.last().expect("a snapshot");
    assert_eq!(last["finished"], true, "{last}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).expect("report")).expect("JSON");
    assert_eq!(node_counters(last), node_counters(&report));
    let counters = node_counters(&report);
    assert_eq!(counters["numbers"], [3000, 3000, 0, 0]);
    assert_eq!(counters["threes"][1], 1000);
    assert_eq!(counters["others"][1], 2000);
    assert_eq!(common::lines(&dir.path().join("threes.jsonl")), 1000);

    // The tap saw exactly the port's records from when it opened: the end of the sink's file.
    let seen = tap.join().expect("tap reader");
    let written: Vec<serde_json::Value> = std::fs::read_to_string(dir.path().join("threes.jsonl"))
        .expect("threes")
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON"))
        .collect();
    assert!(!seen.is_empty() && seen.len() <= written.len());
    assert_eq!(seen, written[written.len() - seen.len()..]);
    eprintln!("the tap saw the last {} of 1000", seen.len());
    assert_eq!(common::lines(&dir.path().join("others.jsonl")), 2000);
}

/// Records read from a file: 0..n as `{"n":i}`.
fn numbers_file(path: &Path, n: u64) {
    let mut text = String::new();
    for i in 0..n {
        text.push_str(&format!("{{\"n\":{i}}}\n"));
    }
    std::fs::write(path, text).expect("input");
}

const FILE_FLOW: &str = r#"
name: tapped
processors:
  numbers:
    type: file
    path: ${INPUT}
    format: json
    checkpoint: ${OUT_DIR}/.offset
  split:
    type: route
    routes:
      threes: mod!(.n, 3) == 0
  threes:
    type: file_sink
    path: ${OUT_DIR}/threes.jsonl
  others:
    type: file_sink
    path: ${OUT_DIR}/others.jsonl
connections:
  - numbers -> split
  - split.threes -> threes
  - split.unmatched -> others
"#;

/// A tap client that sends its request and never reads the answer.
fn idle_tap(url: &str, query: &str) -> std::net::TcpStream {
    let addr = url.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    write!(
        s,
        "GET /api/v1/tap?{query} HTTP/1.1\r\nHost: {addr}\r\nAccept: application/x-ndjson\r\n\r\n"
    )
    .expect("request");
    s
}

#[test]
fn a_tap_sees_its_port_and_changes_nothing() {
    const N: u64 = 200_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("input.jsonl");
    numbers_file(&input, N);
    let file = write_flow(dir.path(), "tapped.yaml", FILE_FLOW);
    let run = |name: &str| {
        let out = dir.path().join(name);
        std::fs::create_dir_all(&out).expect("out");
        let env = [
            ("INPUT", input.to_str().expect("utf-8")),
            ("OUT_DIR", out.to_str().expect("utf-8")),
        ];
        (out.clone(), env.map(|(k, v)| (k, v.to_owned())))
    };

    // Without the API.
    let (plain, env) = run("plain");
    let status = Command::new(env!("CARGO_BIN_EXE_flow"))
        .env(
            "XDG_STATE_HOME",
            std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("state"),
        )
        .current_dir(repo())
        .args(["run", "--quiet"])
        .arg(&file)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .status()
        .expect("flow runs");
    assert!(status.success());

    // With a tap reading `split.threes` and one that never reads on `split.unmatched`.
    let (tapped, env) = run("tapped");
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let flow = ApiFlow::start(&file, &[], &env);
    let idle = idle_tap(&flow.url, "node=split&port=unmatched");
    let tap_url = format!("{}/api/v1/tap?node=split.threes&format=ndjson", flow.url);
    let reader = std::thread::spawn(move || {
        runtime().block_on(async {
            let mut resp = reqwest::get(&tap_url).await.expect("tap");
            assert_eq!(resp.status().as_u16(), 200);
            // Read as fast as the bytes come (parse later): this client keeps up as well as
            // it can; what it still loses, it is told.
            let mut body = Vec::new();
            let clean = loop {
                match resp.chunk().await {
                    Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                    Ok(None) => break true,
                    Err(_) => break false,
                }
            };
            let (mut records, mut lost) = (Vec::new(), 0u64);
            for line in body.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                let m: serde_json::Value = serde_json::from_slice(line).expect("JSON");
                if let Some(l) = m["lost"].as_u64() {
                    lost += l;
                } else {
                    assert_eq!(m["node"], "split");
                    assert_eq!(m["port"], "threes");
                    records.push(m["content"]["n"].as_u64().expect("n"));
                }
            }
            (records, lost, clean)
        })
    });
    flow.wait_ok(120);
    drop(idle);
    let (tapped_n, lost, clean) = reader.join().expect("tap reader");
    eprintln!(
        "tapped {} records of split.threes, told of {lost} lost, stream ended cleanly: {clean}",
        tapped_n.len()
    );

    // Every output and the committed offset are the same as without the API.
    for f in ["threes.jsonl", "others.jsonl", ".offset"] {
        let a = std::fs::read(plain.join(f)).expect("plain output");
        let b = std::fs::read(tapped.join(f)).expect("tapped output");
        assert!(a == b, "{f} differs with a tap open");
    }
    assert_eq!(
        common::lines(&tapped.join("others.jsonl")) as u64,
        N - N / 3 - 1
    );

    // The tap saw that port's records, in order, from when it opened (all of them after
    // that, unless it was told it lost some).
    let written: Vec<u64> = std::fs::read_to_string(tapped.join("threes.jsonl"))
        .expect("threes")
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).expect("JSON")["n"]
                .as_u64()
                .expect("n")
        })
        .collect();
    assert!(!tapped_n.is_empty(), "the tap saw nothing");
    assert!(tapped_n.iter().all(|n| n % 3 == 0));
    let first = written
        .iter()
        .position(|n| *n == tapped_n[0])
        .expect("the first tapped record was written");
    let mut rest = written[first..].iter();
    assert!(tapped_n.iter().all(|t| rest.any(|w| w == t)));
    // Each record of the port since the tap opened (its queue is empty then: the first copy
    // offered is delivered) was delivered or counted lost; unless the stream was cut at the
    // end (the process exits at most 2 s after the flow, however far behind a client is).
    let since = (written.len() - first) as u64;
    if clean {
        assert_eq!(tapped_n.len() as u64 + lost, since);
    } else {
        assert!(tapped_n.len() as u64 + lost <= since);
    }
    if clean && lost == 0 {
        assert_eq!(tapped_n, written[first..]);
    }
}

const ENDLESS: &str = r#"
name: endless
processors:
  ticks:
    type: generate
    preset: sequence
    rate: 50
  sink:
    type: file_sink
    path: ${OUT_DIR}/ticks.jsonl
connections:
  - ticks -> sink
"#;

#[test]
fn a_token_guards_everything_but_health() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write_flow(dir.path(), "endless.yaml", ENDLESS);
    let out = dir.path().to_str().expect("utf-8");
    let flow = ApiFlow::start(&file, &["--api-token", "s3cret"], &[("OUT_DIR", out)]);
    let url = flow.url.clone();
    assert_eq!(get(&format!("{url}/health"), None).0, 200);
    for path in [
        "/ready",
        "/metrics",
        "/api/v1/flow",
        "/api/v1/stats",
        "/api/v1/events",
        "/api/v1/tap?node=ticks",
    ] {
        assert_eq!(get(&format!("{url}{path}"), None).0, 401, "{path}");
        assert_eq!(get(&format!("{url}{path}"), Some("wrong")).0, 401, "{path}");
    }
    for path in ["/metrics", "/api/v1/stats"] {
        assert_eq!(
            get(&format!("{url}{path}"), Some("s3cret")).0,
            200,
            "{path}"
        );
    }
    flow.stop_ok();

    // The same from the flow file's `api:` section, the token from the environment.
    let sectioned = write_flow(
        dir.path(),
        "sectioned.yaml",
        &format!("api: {{ listen: \"127.0.0.1:0\", token: \"${{TOK}}\" }}\n{ENDLESS}"),
    );
    let flow = ApiFlow::spawn(&sectioned, &[], &[("OUT_DIR", out), ("TOK", "fromenv")]);
    let url = flow.url.clone();
    assert_eq!(get(&format!("{url}/metrics"), None).0, 401);
    assert_eq!(get(&format!("{url}/metrics"), Some("fromenv")).0, 200);
    flow.stop_ok();

    // Anything but loopback without a token: a clear refusal, nothing started.
    let out = Command::new(env!("CARGO_BIN_EXE_flow"))
        .env(
            "XDG_STATE_HOME",
            std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("state"),
        )
        .current_dir(repo())
        .args(["run", "--quiet", "--api", "0.0.0.0:0"])
        .arg(&file)
        .env("OUT_DIR", dir.path().join("public"))
        .env_remove("FLOW_API_TOKEN")
        .output()
        .expect("flow runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("not a loopback address"), "{err}");
    assert!(err.contains("--api-token"), "{err}");
    assert!(!dir.path().join("public").exists());
}

#[test]
fn flow_top_once_and_interactive() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write_flow(dir.path(), "endless.yaml", ENDLESS);
    let out = dir.path().to_str().expect("utf-8");
    let flow = ApiFlow::start(&file, &[], &[("OUT_DIR", out)]);
    let url = flow.url.clone();
    wait_for(30, "records to flow", || {
        let s = json(&format!("{url}/api/v1/stats"));
        s["nodes"][1]["sent"].as_u64().is_some_and(|n| n > 0)
    });

    let once = Command::new(env!("CARGO_BIN_EXE_flow"))
        .env(
            "XDG_STATE_HOME",
            std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("state"),
        )
        .args(["top", "--once", &url])
        .output()
        .expect("flow top");
    assert!(once.status.success(), "{once:?}");
    let table = String::from_utf8_lossy(&once.stdout).into_owned();
    // Counts, rates and fills change from run to run: each becomes `N`, columns one space.
    let redacted: String = table
        .lines()
        .map(|l| {
            l.split_whitespace()
                .map(|w| {
                    if w.starts_with(|c: char| c.is_ascii_digit()) {
                        "N"
                    } else {
                        w
                    }
                })
                .collect::<Vec<_>>()
                .join(" ")
                + "\n"
        })
        .collect();
    insta::assert_snapshot!("flow_top_once", redacted);

    // The interactive view, in a real terminal.
    if Command::new("tmux").arg("-V").output().is_err() {
        assert!(
            std::env::var_os("CI").is_none(),
            "tmux is missing but CI is set"
        );
        eprintln!("skipped: tmux is not installed (the interactive flow top)");
        flow.stop_ok();
        return;
    }
    let session = format!("flowtop{}", std::process::id());
    let top = format!("{} top {url}", env!("CARGO_BIN_EXE_flow"));
    let tmux = |args: &[&str]| Command::new("tmux").args(args).output().expect("tmux runs");
    let started = tmux(&[
        "new-session",
        "-d",
        "-s",
        &session,
        "-x",
        "140",
        "-y",
        "40",
        &top,
    ]);
    assert!(started.status.success(), "{started:?}");
    let mut screen = String::new();
    wait_for(30, "flow top to draw the nodes", || {
        screen = String::from_utf8_lossy(&tmux(&["capture-pane", "-p", "-t", &session]).stdout)
            .into_owned();
        screen.contains("ticks") && screen.contains("sink")
    });
    // It survives the flow restarting: it says it retries, then shows the new run.
    flow.stop_ok();
    wait_for(30, "flow top to say the flow is gone", || {
        screen = String::from_utf8_lossy(&tmux(&["capture-pane", "-p", "-t", &session]).stdout)
            .into_owned();
        screen.contains("retrying")
    });
    assert!(
        screen.contains("ticks"),
        "the last snapshot stays:\n{screen}"
    );
    let addr = url.trim_start_matches("http://");
    let again = ApiFlow::spawn(&file, &["--api", addr], &[("OUT_DIR", out)]);
    assert_eq!(again.url, url);
    wait_for(30, "flow top to show the restarted flow", || {
        screen = String::from_utf8_lossy(&tmux(&["capture-pane", "-p", "-t", &session]).stdout)
            .into_owned();
        !screen.contains("retrying") && screen.contains("ticks") && screen.contains("running")
    });
    tmux(&["send-keys", "-t", &session, "q"]);
    wait_for(10, "flow top to quit on q", || {
        !tmux(&["has-session", "-t", &session]).status.success()
    });
    again.stop_ok();
}

#[test]
fn victoria_metrics_scrapes_the_flow() {
    let Some(vm) = server("FLOW_TEST_INFLUX_URL", "victoria-metrics") else {
        return;
    };
    let Some(config) = server("FLOW_TEST_VM_SCRAPE_CONFIG", "victoria-metrics") else {
        return;
    };
    // Counted records into one sink, and a source that never ends so that the flow is still
    // there to be scraped once the sink has written them all.
    let text = r#"
name: scraped
processors:
  numbers:
    type: generate
    preset: sequence
    count: 500
    rate: 500
  ticks:
    type: generate
    preset: sequence
    rate: 5
  written:
    type: file_sink
    path: ${OUT_DIR}/written.jsonl
  ticked:
    type: file_sink
    path: ${OUT_DIR}/ticks.jsonl
  lines:
    type: file
    path: ${OUT_DIR}/input.jsonl
    format: json
  copied:
    type: file_sink
    path: ${OUT_DIR}/copied.jsonl
connections:
  - numbers -> written
  - ticks -> ticked
  - lines -> copied
"#;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write_flow(dir.path(), "scraped.yaml", text);
    numbers_file(&dir.path().join("input.jsonl"), 100);
    let out = dir.path().to_str().expect("utf-8");
    let flow = ApiFlow::start(&file, &[], &[("OUT_DIR", out)]);
    let job = format!("flow-test-{}", std::process::id());
    std::fs::write(
        &config,
        format!(
            "scrape_configs:\n  - job_name: {job}\n    scrape_interval: 1s\n    static_configs:\n      - targets: ['{}']\n",
            flow.url.trim_start_matches("http://")
        ),
    )
    .expect("scrape config written");
    let url = flow.url.clone();
    wait_for(30, "the sink to write every record", || {
        let s = json(&format!("{url}/api/v1/stats"));
        s["nodes"]
            .as_array()
            .and_then(|n| n.iter().find(|n| n["name"] == "written"))
            .and_then(|n| n["sent"].as_u64())
            == Some(500)
    });
    let query = format!(
        "{vm}/api/v1/query?query=flow_node_records_out_total%7Bjob%3D%22{job}%22%2Cnode%3D%22written%22%7D"
    );
    let mut scraped = None;
    wait_for(60, "VictoriaMetrics to scrape the final count", || {
        let v = json(&query);
        scraped = v["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|s| s.parse::<f64>().ok());
        scraped == Some(500.0)
    });
    // Every panel of the dashboard draws from what was scraped, but the lag of Kafka
    // (records) and MQTT (messages) sources, which this flow has none of. A `rate` needs two
    // scrapes, and the final count may have come with the first: ask again until every panel
    // answers or 30 s have passed, then say which did not.
    let absent = |expr: &str| {
        expr.contains("flow_source_lag_records") || expr.contains("flow_source_lag_messages")
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let answers = loop {
        let answers = dashboard_answers(&vm, &job);
        let settled = answers.iter().all(|(e, n)| (*n > 0) != absent(e));
        if settled || std::time::Instant::now() > deadline {
            break answers;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    };
    flow.stop_ok();
    let _ = std::fs::write(&config, "scrape_configs: []\n");
    assert!(answers.len() >= 12, "{answers:?}");
    for (expr, series) in &answers {
        assert_eq!(*series > 0, !absent(expr), "{expr}: {series} series");
    }
    assert_eq!(
        scraped,
        Some(common::lines(&dir.path().join("written.jsonl")) as f64)
    );
}

/// Every query of the Grafana dashboard (`docs/grafana-dashboard.json`), with its variables
/// set to `job`, as VictoriaMetrics answers it: the expression and how many series it gave.
fn dashboard_answers(vm: &str, job: &str) -> Vec<(String, usize)> {
    let path = common::repo().join("docs/grafana-dashboard.json");
    let text = std::fs::read_to_string(&path).expect("the dashboard is there");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut answers = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"]
                .as_str()
                .expect("a PromQL expression")
                .replace("$job", job)
                .replace("$__rate_interval", "1m");
            let url =
                reqwest::Url::parse_with_params(&format!("{vm}/api/v1/query"), [("query", &expr)])
                    .expect("a query URL");
            let v = json(url.as_str());
            assert_eq!(v["status"], "success", "{expr}: {v}");
            let series = v["data"]["result"].as_array().map_or(0, Vec::len);
            answers.push((expr, series));
        }
    }
    answers
}

/// `/api/v1/provenance/...` answers from the running flow's store, with the JSON
/// `flow provenance --format json` prints; `/metrics` has the writer's counters.
#[test]
fn provenance_lineage_search_and_stats_over_the_api() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("store");
    let file = write_flow(
        dir.path(),
        "endless.yaml",
        &format!("provenance: {{ path: \"${{STORE}}\" }}\n{ENDLESS}"),
    );
    let out = dir.path().to_str().expect("utf-8");
    let store_s = store.to_str().expect("utf-8");
    let flow = ApiFlow::start(&file, &[], &[("OUT_DIR", out), ("STORE", store_s)]);
    let url = flow.url.clone();
    let ticks = dir.path().join("ticks.jsonl");
    let sends = format!("{url}/api/v1/provenance/search?node=sink&event=SEND&limit=5");
    // The sink has written some batches, and the writer has stored their SENDs.
    wait_for(60, "five SENDs in the store", || {
        get(&sends, None).1.matches("\"SEND\"").count() == 5
    });
    let found = json(&sends);
    let found = found.as_array().expect("an array");
    assert_eq!(found.len(), 5);
    let path = ticks.display().to_string();
    for e in found {
        assert_eq!(e["kind"], "SEND");
        assert_eq!(e["node"], "sink");
        assert_eq!(e["detail"], path.as_str());
    }
    let id = found[0]["first"].as_str().expect("an id").to_owned();

    // The lineage reads into the engine's own type (as the designer does).
    let lineage_url = format!("{url}/api/v1/provenance/lineage/{id}");
    let (status, lineage_body) = get(&lineage_url, None);
    assert_eq!(status, 200, "{lineage_body}");
    let tree: flow_core::provenance::query::Lineage =
        serde_json::from_str(&lineage_body).expect("a Lineage");
    assert_eq!(tree.id, id);
    let steps: Vec<(String, String)> = tree
        .events
        .iter()
        .map(|s| (s.kind.to_string(), s.node.clone()))
        .collect();
    let step = |k: &str, n: &str| (k.to_owned(), n.to_owned());
    assert_eq!(
        steps,
        [
            step("CREATE", "ticks"),
            step("ROUTE", "ticks"),
            step("RECEIVE", "sink"),
            step("SEND", "sink"),
        ]
    );

    // Time bounds: everything is from the last hour, nothing from before it.
    assert_eq!(
        json(&format!("{sends}&since=1h")).as_array().map(Vec::len),
        Some(5)
    );
    assert_eq!(
        json(&format!("{sends}&until=1h")).as_array().map(Vec::len),
        Some(0)
    );
    assert_eq!(
        json(&format!("{sends}&since=2020-01-01T00:00:00Z")),
        json(&sends)
    );
    let stats = json(&format!("{url}/api/v1/provenance/stats"));
    assert_eq!(stats["flows"], serde_json::json!(["endless"]));
    assert!(stats["records_created"].as_u64() >= Some(5), "{stats}");

    // Bad requests say why.
    for (path, status) in [
        ("/api/v1/provenance/search?event=NOPE", 400),
        ("/api/v1/provenance/search?since=yesterday", 400),
        ("/api/v1/provenance/lineage/xyz", 400),
        ("/api/v1/provenance/lineage/0000000000000001", 404),
    ] {
        let (got, body) = get(&format!("{url}{path}"), None);
        assert_eq!(got, status, "{path}: {body}");
        assert!(body.contains("\"error\""), "{path}: {body}");
    }
    let (_, scrape) = get(&format!("{url}/metrics"), None);
    assert_eq!(
        sample(&scrape, "flow_provenance_events_dropped_total"),
        Some(0.0)
    );
    assert!(
        sample(&scrape, "flow_provenance_blocked_seconds_total").is_some(),
        "{scrape}"
    );
    let api_lineage: serde_json::Value = serde_json::from_str(&lineage_body).expect("json");
    let api_search = json(&sends);
    flow.stop_ok();

    // The CLI prints the same JSON.
    let cli = |args: &[&str]| -> serde_json::Value {
        let o = Command::new(env!("CARGO_BIN_EXE_flow"))
            .env(
                "XDG_STATE_HOME",
                std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("state"),
            )
            .args(["provenance", "--store", store_s, "--format", "json"])
            .args(args)
            .output()
            .expect("flow runs");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout).expect("json")
    };
    assert_eq!(cli(&["lineage", &id]), api_lineage);
    assert_eq!(
        cli(&[
            "search", "--node", "sink", "--event", "SEND", "--limit", "5"
        ]),
        api_search
    );
}

const REPLAYED: &str = r#"
name: replayed
provenance: { path: "${STORE}", content: [tag] }
processors:
  numbers:
    type: generate
    preset: sequence
    rate: 20
    batch_size: 1
  label:
    type: remap
    source: '%team = "blue" + to_string!(.n)'
  evens:
    type: filter
    condition: mod!(.n, 2) == 0
  tag:
    type: remap
    source: '.tagged = true'
  sink:
    type: file_sink
    path: ${OUT_DIR}/out.jsonl
connections:
  - numbers -> label
  - label -> evens
  - evens -> tag
  - tag -> sink
"#;

fn post(url: &str) -> (u16, String) {
    runtime().block_on(async {
        let resp = reqwest::Client::new()
            .post(url)
            .send()
            .await
            .expect("the API answers");
        let status = resp.status().as_u16();
        (status, resp.text().await.expect("a body"))
    })
}

/// `POST /api/v1/provenance/replay/ID` re-injects the content `tag` kept of a record, with
/// its attributes, into `tag`'s input: it reaches the sink a second time, as a new record
/// whose lineage goes through the original's REPLAY. A record of which nothing was kept is
/// refused (409), an unknown one is not found (404). `flow provenance replay --api` does
/// the same.
#[test]
fn a_replay_over_the_api_reinjects_the_record_where_it_entered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("store");
    let file = write_flow(dir.path(), "replayed.yaml", REPLAYED);
    let out = dir.path().to_str().expect("utf-8");
    let store_s = store.to_str().expect("utf-8");
    let flow = ApiFlow::start(&file, &[], &[("OUT_DIR", out), ("STORE", store_s)]);
    let url = flow.url.clone();
    let sink = dir.path().join("out.jsonl");
    let count = |line: &str| {
        std::fs::read_to_string(&sink)
            .unwrap_or_default()
            .lines()
            .filter(|l| *l == line)
            .count()
    };
    let zero = r#"{"n":0,"tagged":true}"#;
    wait_for(60, "n = 2 at the sink", || {
        count(r#"{"n":2,"tagged":true}"#) == 1
    });
    let created = json(&format!(
        "{url}/api/v1/provenance/search?node=numbers&event=CREATE&limit=2"
    ));
    let first = |i: usize| created[i]["first"].as_str().expect("an id").to_owned();
    let (n0, n1) = (first(0), first(1));

    // n = 1 was filtered out before `tag`: nothing of it was kept.
    let (status, body) = post(&format!("{url}/api/v1/provenance/replay/{n1}"));
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("no content of record"), "{body}");
    let (status, body) = post(&format!("{url}/api/v1/provenance/replay/0000000000000001"));
    assert_eq!(status, 404, "{body}");

    let (status, body) = post(&format!("{url}/api/v1/provenance/replay/{n0}"));
    assert_eq!(status, 200, "{body}");
    let replayed: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(replayed["original"], n0.as_str());
    assert_eq!(replayed["node"], "tag");
    let new = replayed["records"][0]
        .as_str()
        .expect("a new id")
        .to_owned();
    assert_ne!(new, n0);
    wait_for(60, "n = 0 at the sink again", || count(zero) == 2);

    // The CLI asks the same of the running flow.
    let o = Command::new(env!("CARGO_BIN_EXE_flow"))
        .args(["provenance", "replay", &n0, "--api", &url])
        .env_remove("FLOW_API_TOKEN")
        .output()
        .expect("flow runs");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let said = String::from_utf8_lossy(&o.stdout);
    assert!(
        said.starts_with(&format!("replayed {n0} at tag as ")),
        "{said}"
    );
    wait_for(60, "n = 0 at the sink a third time", || count(zero) == 3);

    // The new record's lineage is the original's tree, through the REPLAY, to the sink;
    // it kept its attributes (set upstream of `tag`, which it did not go through again).
    let lineage_of = |id: &str| {
        let (status, body) = get(&format!("{url}/api/v1/provenance/lineage/{id}"), None);
        assert_eq!(status, 200, "{body}");
        serde_json::from_str::<flow_core::provenance::query::Lineage>(&body).expect("a Lineage")
    };
    let sent = |id: &str| {
        json(&format!(
            "{url}/api/v1/provenance/search?node=sink&event=SEND&limit=100000"
        ))
        .as_array()
        .expect("an array")
        .iter()
        .any(|e| e["first"] == id)
    };
    wait_for(60, "the replayed record's SEND", || sent(&new));
    let tree = lineage_of(&new);
    assert_eq!(tree.id, n0, "the lineage names the original");
    let replay = tree
        .events
        .iter()
        .find(|s| s.kind.to_string() == "REPLAY")
        .expect("a REPLAY step");
    assert_eq!(replay.node, "tag");
    let child = tree
        .children
        .iter()
        .find(|c| c.id == new)
        .expect("the replayed record is a child of the original");
    let steps: Vec<(String, String)> = child
        .events
        .iter()
        .map(|s| (s.kind.to_string(), s.node.clone()))
        .collect();
    let step = |k: &str, n: &str| (k.to_owned(), n.to_owned());
    // (The REPLAY is the original's step, as a FORK is.)
    assert_eq!(
        steps[..3],
        [
            step("RECEIVE", "tag"),
            step("CONTENT", "tag"),
            step("MODIFY", "tag")
        ]
    );
    assert!(steps.contains(&step("SEND", "sink")), "{steps:?}");
    let blue0 = json(&format!(
        "{url}/api/v1/provenance/search?node=tag&event=RECEIVE&attr=team=blue0"
    ));
    let ids: Vec<&str> = blue0
        .as_array()
        .expect("an array")
        .iter()
        .filter_map(|e| e["first"].as_str())
        .collect();
    assert!(
        ids.contains(&n0.as_str()) && ids.contains(&new.as_str()),
        "{blue0}"
    );
    flow.stop_ok();
}

const REPLAYED_AT_SOURCE: &str = r#"
name: replayed-at-source
provenance: { path: "${STORE}", content: [numbers] }
processors:
  numbers:
    type: generate
    preset: sequence
    rate: 20
    batch_size: 1
  left:
    type: file_sink
    path: ${OUT_DIR}/left.jsonl
  right:
    type: file_sink
    path: ${OUT_DIR}/right.jsonl
connections:
  - numbers -> left
  - numbers -> right
"#;

/// A record whose content its source kept is re-injected where the source's records go:
/// one new record per edge, each reaching its sink again, each a child of the original.
#[test]
fn a_replay_of_a_source_record_goes_to_every_node_the_source_feeds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("store");
    let file = write_flow(dir.path(), "at-source.yaml", REPLAYED_AT_SOURCE);
    let out = dir.path().to_str().expect("utf-8");
    let store_s = store.to_str().expect("utf-8");
    let flow = ApiFlow::start(&file, &[], &[("OUT_DIR", out), ("STORE", store_s)]);
    let url = flow.url.clone();
    let count = |name: &str| {
        std::fs::read_to_string(dir.path().join(name))
            .unwrap_or_default()
            .lines()
            .filter(|l| *l == r#"{"n":0}"#)
            .count()
    };
    wait_for(60, "n = 0 at both sinks", || {
        count("left.jsonl") == 1 && count("right.jsonl") == 1
    });
    let created = json(&format!(
        "{url}/api/v1/provenance/search?node=numbers&event=CREATE&limit=1"
    ));
    let n0 = created[0]["first"].as_str().expect("an id").to_owned();
    let (status, body) = post(&format!("{url}/api/v1/provenance/replay/{n0}"));
    assert_eq!(status, 200, "{body}");
    let replayed: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(replayed["node"], "numbers");
    let new: Vec<String> = replayed["records"]
        .as_array()
        .expect("records")
        .iter()
        .filter_map(|r| r.as_str().map(str::to_owned))
        .collect();
    assert_eq!(new.len(), 2, "one per edge: {body}");
    wait_for(60, "n = 0 at both sinks again", || {
        count("left.jsonl") == 2 && count("right.jsonl") == 2
    });
    let sent = |id: &str| {
        json(&format!(
            "{url}/api/v1/provenance/search?event=SEND&limit=100000"
        ))
        .as_array()
        .expect("an array")
        .iter()
        .any(|e| e["first"] == id)
    };
    wait_for(60, "the copies' SENDs", || new.iter().all(|id| sent(id)));
    let (status, body) = get(&format!("{url}/api/v1/provenance/lineage/{}", new[1]), None);
    assert_eq!(status, 200, "{body}");
    let tree: flow_core::provenance::query::Lineage =
        serde_json::from_str(&body).expect("a Lineage");
    assert_eq!(tree.id, n0, "the lineage names the original");
    let replay_children: Vec<&str> = tree
        .children
        .iter()
        .map(|c| c.id.as_str())
        .filter(|id| new.iter().any(|n| n == id))
        .collect();
    assert_eq!(replay_children.len(), 2, "{body}");
    for c in tree.children.iter().filter(|c| new.contains(&c.id)) {
        let kinds: Vec<(String, String)> = c
            .events
            .iter()
            .map(|s| (s.kind.to_string(), s.node.clone()))
            .collect();
        assert_eq!(kinds[0].0, "RECEIVE", "{kinds:?}");
        assert!(kinds.iter().any(|(k, _)| k == "SEND"), "{kinds:?}");
    }
    flow.stop_ok();
}

/// What was kept cut at `max_content_bytes` is not replayed: 422, saying why.
#[test]
fn a_replay_of_content_not_kept_whole_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("store");
    let file = write_flow(
        dir.path(),
        "cut.yaml",
        &REPLAYED_AT_SOURCE.replace(
            "content: [numbers]",
            "content: [numbers], max_content_bytes: 4",
        ),
    );
    let out = dir.path().to_str().expect("utf-8");
    let store_s = store.to_str().expect("utf-8");
    let flow = ApiFlow::start(&file, &[], &[("OUT_DIR", out), ("STORE", store_s)]);
    let url = flow.url.clone();
    let contents = format!("{url}/api/v1/provenance/search?node=numbers&event=CONTENT&limit=1");
    wait_for(60, "a CONTENT event", || {
        json(&contents).as_array().is_some_and(|a| !a.is_empty())
    });
    let id = json(&contents)[0]["first"]
        .as_str()
        .expect("an id")
        .to_owned();
    let (status, body) = post(&format!("{url}/api/v1/provenance/replay/{id}"));
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("max_content_bytes"), "{body}");
    flow.stop_ok();
}
