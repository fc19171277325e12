//! What the tests that run `flow run` against real servers share: starting the binary with an
//! environment, reading its log, waiting, and counting the records it wrote.

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The `flow` binary, run from the repository's root, with the provenance stores of test runs
/// under target/tmp, not ~/.local/state.
pub fn flow() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_flow"));
    c.env(
        "XDG_STATE_HOME",
        Path::new(env!("CARGO_TARGET_TMPDIR")).join("state"),
    );
    c.current_dir(repo());
    c
}

/// Output bytes as text, for messages and comparisons.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
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

/// Write `text` to `dir/name` (a flow file, mostly) and return its path.
pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("flow file");
    p
}

/// Sorted numbers as ranges, for a test's report: `a..=b, c, ...`.
pub fn ranges(d: &[u64]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < d.len() {
        let mut j = i;
        while j + 1 < d.len() && d[j + 1] == d[j] + 1 {
            j += 1;
        }
        out.push(if i == j {
            d[i].to_string()
        } else {
            format!("{}..={}", d[i], d[j])
        });
        i = j + 1;
    }
    out.join(", ")
}

/// `{"n": i}` for each `i` of `numbers`, one QoS 1 message each to `url`/`topic`, published
/// with `mosquitto_pub` (and its `extra` arguments); returns once all are sent.
pub fn publish_numbers(url: &str, topic: &str, numbers: std::ops::Range<u64>, extra: &[&str]) {
    use std::io::Write;
    let mut child = Command::new("mosquitto_pub")
        .args(["-L", &format!("{url}/{topic}"), "-q", "1", "-l"])
        .args(extra)
        .stdin(Stdio::piped())
        .spawn()
        .expect("mosquitto_pub runs");
    let mut text = String::new();
    for i in numbers {
        text.push_str(&format!("{{\"n\":{i}}}\n"));
    }
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(text.as_bytes()).expect("written");
    drop(stdin);
    assert!(
        child.wait().expect("waited").success(),
        "mosquitto_pub failed"
    );
}

/// A binary `scripts/services.sh` named in `var`, else `name` on the PATH or in ~/.cargo/bin.
pub fn binary(var: &str, name: &str) -> PathBuf {
    if let Ok(p) = std::env::var(var) {
        return p.into();
    }
    let cargo = Path::new(&std::env::var("HOME").unwrap_or_default()).join(".cargo/bin");
    if cargo.join(name).exists() {
        return cargo.join(name);
    }
    name.into()
}

/// A server process of the test's own (the suite's shared servers stay up for the tests
/// beside it), stopped and started at will on one port; killed when dropped.
pub struct Server {
    make: Box<dyn Fn() -> Command>,
    pub port: u16,
    child: Option<Child>,
}

impl Server {
    /// A server `make` starts, listening on `port`; not started yet.
    pub fn new(port: u16, make: impl Fn() -> Command + 'static) -> Server {
        Server {
            make: Box::new(make),
            port,
            child: None,
        }
    }

    /// Start it and wait until it listens.
    pub fn start(&mut self) {
        let child = (self.make)()
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the server starts");
        self.child = Some(child);
        let port = self.port;
        wait_for(30, "the server to listen", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
    }

    /// SIGTERM (the server saves what it holds) and wait.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let _ = c.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A Mosquitto of the test's own on `port` (not started): its config and persistence file
/// in `dir`, plus the config lines `extra` (`allow_anonymous true`, `persistence true`, ...).
pub fn mosquitto(dir: &Path, port: u16, extra: &str) -> Server {
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nuser root\nmax_queued_messages 0\n\
             persistence_location {}/\n{extra}\n",
            dir.display()
        ),
    )
    .expect("conf");
    let bin = binary("FLOW_TEST_MOSQUITTO", "mosquitto");
    Server::new(port, move || {
        let mut c = Command::new(&bin);
        c.arg("-c").arg(&conf);
        c
    })
}
