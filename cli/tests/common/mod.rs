//! What the tests that run `flow run` against real servers share: starting the binary with an
//! environment, reading its log, waiting, and counting the records it wrote.

#![allow(dead_code, reason = "each test file uses a part")]

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Whether the server behind `var` is there: without it the test skips (and says so), except
/// with `CI` set, where it fails.
pub fn server(var: &str, what: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) => Some(v),
        Err(_) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "{var} is not set but CI is: {what} did not start"
            );
            eprintln!("skipped: {var} is not set (scripts/test.sh starts {what})");
            None
        }
    }
}

/// A name no other run or test uses (topics, buckets, groups): `name-PID-NANOS`.
pub fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{name}-{}-{nanos}", std::process::id())
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

pub fn wait_for(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A running `flow run`, its stderr going to a file.
pub struct Flow {
    pub child: Child,
    log: PathBuf,
}

impl Flow {
    /// `flow -v run --quiet FILE` with these environment variables; the log goes to
    /// `log_dir/<name>.log`.
    pub fn start(file: &Path, log_dir: &Path, name: &str, env: &[(&str, &str)]) -> Flow {
        let log = log_dir.join(format!("{name}.log"));
        let err = std::fs::File::create(&log).expect("log");
        let mut c = Command::new(env!("CARGO_BIN_EXE_flow"));
        // Provenance stores of test runs stay under target/tmp, not ~/.local/state.
        c.env(
            "XDG_STATE_HOME",
            std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("state"),
        );
        c.current_dir(repo())
            // `FLOW_TEST_VERBOSITY=-vv` for a debug log while investigating.
            .arg(std::env::var("FLOW_TEST_VERBOSITY").unwrap_or_else(|_| "-v".into()))
            .args(["run", "--quiet"])
            .arg(file)
            .stdout(Stdio::null())
            .stderr(err);
        for (k, v) in env {
            c.env(k, v);
        }
        let child = c.spawn().expect("flow starts");
        Flow { child, log }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM and wait for a graceful exit; `true` when it exited 0.
    pub fn stop(mut self) -> bool {
        self.terminate().is_some_and(|s| s.success())
    }

    /// SIGTERM; the run must end gracefully (the log is in the failure message).
    pub fn stop_cleanly(mut self) {
        let status = self.terminate().expect("waited");
        assert!(
            status.success(),
            "flow exited with {status}:\n{}",
            self.log()
        );
    }

    /// SIGTERM, then wait for the exit.
    fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.child.wait().ok()
    }

    /// Wait for the flow to end by itself; `true` when it exited 0.
    pub fn wait(mut self, secs: u64) -> bool {
        let mut status = None;
        wait_for(secs, "the flow to finish", || {
            status = self.child.try_wait().ok().flatten();
            status.is_some()
        });
        status.is_some_and(|s| s.success())
    }

    /// SIGKILL: no chance to commit or flush anything.
    pub fn kill_9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Flow {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How many times each `n` was written to the JSON-lines file.
pub fn counts(path: &Path) -> HashMap<u64, u32> {
    let mut m = HashMap::new();
    for line in std::fs::read_to_string(path).unwrap_or_default().lines() {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(line)
            && let Some(n) = v["n"].as_u64()
        {
            *m.entry(n).or_insert(0) += 1;
        }
    }
    m
}

pub fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

/// Duplicates in counts: writes beyond the first.
pub fn duplicates(c: &HashMap<u64, u32>) -> u32 {
    c.values().map(|k| k - 1).sum()
}

/// Every message of `topic` read from the start, `n` -> how many times, once `done` holds for
/// what was read and nothing more came for 2 s (or after `secs`).
pub fn read_kafka(
    brokers: &str,
    topic: &str,
    secs: u64,
    done: impl Fn(&HashMap<u64, u32>) -> bool,
) -> HashMap<u64, u32> {
    let consumer: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("chaos-reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    use rdkafka::Message;
    use rdkafka::consumer::Consumer;
    consumer.subscribe(&[topic]).expect("subscribed");
    let mut got: HashMap<u64, u32> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut quiet_since = Instant::now();
    while Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                quiet_since = Instant::now();
                let v: serde_json::Value =
                    serde_json::from_slice(m.payload().unwrap_or_default()).expect("JSON");
                *got.entry(v["n"].as_u64().expect("n")).or_insert(0) += 1;
            }
            Some(Err(e)) => eprintln!("kafka read: {e}"),
            None => {
                if done(&got) && quiet_since.elapsed() > Duration::from_secs(2) {
                    break;
                }
            }
        }
    }
    got
}
