//! Resource exhaustion: what `flow run` does when a disk fills, when a client sends a line or a
//! request of 1 GiB, and when a source is far faster than its sink.
//!
//! - A full disk (a small tmpfs mounted here; the test skips, saying so, where it cannot mount
//!   one: it needs root) under `file_sink`, the window state store and `s3_sink`'s `file://`
//!   objects: the flow says so, commits nothing it did not write (it is killed with `kill -9`
//!   while the disk is full, then restarted), and goes on by itself once space returns; every
//!   line is written once and every window equals the oracle's.
//! - A 1 GiB line on `stdin` and a 1 GiB HTTP body, streamed by a generator (nothing that big
//!   is ever on disk or in the test's memory): refused by `max_record_size` / `max_body`, while
//!   the flow's peak resident memory (`VmHWM`) stays far below the size.
//! - Overload: `generate` as fast as it can into a `file_sink` writing a pipe the test drains
//!   slowly: the resident memory, sampled all along, stays under a bound set by the edges'
//!   back-pressure thresholds.
//!
//! ```text
//! cargo test -p flow-cli --test integration exhaustion:: -- --nocapture
//! ```

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{Flow, free_port, wait_for};

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("written");
    p
}

/// A field of `/proc/PID/status` in KiB (`VmRSS`, `VmHWM`).
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

const MIB: u64 = 1024 * 1024;
const GIB: u64 = 1024 * MIB;

/// `flow -v run --quiet FILE` with its standard input piped from the test.
fn start_with_stdin(file: &Path, log: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_flow"))
        .env(
            "XDG_STATE_HOME",
            Path::new(env!("CARGO_TARGET_TMPDIR")).join("state"),
        )
        .args(["-v", "run", "--quiet"])
        .arg(file)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("log"))
        .spawn()
        .expect("flow starts")
}

/// A 1 GiB line on standard input, between two small ones: it goes to `failure` cut to its
/// first KiB, the lines around it are written, and the flow never holds much of it.
#[test]
fn a_gib_line_is_refused_in_bounded_memory() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    let file = write(
        d,
        "flow.yaml",
        &format!(
            r#"
name: gib-line
processors:
  lines:
    type: stdin
    max_record_size: 1MiB
  out:
    type: file_sink
    path: {0}/out.jsonl
  failed:
    type: file_sink
    path: {0}/failed.jsonl
connections:
  - lines -> out
  - lines.failure -> failed
"#,
            d.display()
        ),
    );
    let mut flow = start_with_stdin(&file, &d.join("flow.log"));
    let pid = flow.id();
    let mut stdin = flow.stdin.take().expect("stdin");
    stdin.write_all(b"{\"n\":0}\n").expect("first line");
    let chunk = vec![b'x'; MIB as usize];
    for _ in 0..GIB / MIB {
        stdin.write_all(&chunk).expect("the long line");
    }
    stdin.write_all(b"\n{\"n\":1}\n").expect("last line");
    let out = d.join("out.jsonl");
    wait_for(120, "the line after the long one", || {
        std::fs::read_to_string(&out).is_ok_and(|t| t.contains("\"n\":1"))
    });
    let peak = status_kib(pid, "VmHWM").expect("VmHWM") * 1024;
    drop(stdin);
    let status = flow.wait().expect("waited");
    let log = std::fs::read_to_string(d.join("flow.log")).unwrap_or_default();
    assert!(status.success(), "{status}:\n{log}");
    eprintln!("peak resident memory with a 1 GiB line: {} MiB", peak / MIB);
    assert_eq!(
        std::fs::read_to_string(&out).expect("out"),
        "{\"n\":0}\n{\"n\":1}\n"
    );
    let failed = std::fs::read_to_string(d.join("failed.jsonl")).expect("failed");
    assert_eq!(failed.lines().count(), 1, "one refused line");
    assert!(
        failed.len() < 4096,
        "only the start of the line is kept: {} bytes",
        failed.len()
    );
    assert!(
        peak < 256 * MIB,
        "peak resident memory {} MiB for a 1 GiB line",
        peak / MIB
    );
}

/// A 1 GiB request body, sent chunked (no length announced): answered `413`, the flow's memory
/// stays bounded, and the next request is taken.
#[test]
fn a_gib_request_is_refused_in_bounded_memory() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    let port = free_port();
    let file = write(
        d,
        "flow.yaml",
        &format!(
            r#"
name: gib-request
processors:
  ingest:
    type: http_server
    listen: 127.0.0.1:{port}
    path: /ingest
    max_body: 4MiB
  out:
    type: file_sink
    path: {}/out.jsonl
connections:
  - ingest -> out
"#,
            d.display()
        ),
    );
    let flow = Flow::start(&file, d, "flow", &[]);
    let pid = flow.child.id();
    let addr = format!("127.0.0.1:{port}");
    wait_for(60, "the server", || {
        std::net::TcpStream::connect(&addr).is_ok()
    });
    let mut s = std::net::TcpStream::connect(&addr).expect("connected");
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let head = format!(
        "POST /ingest HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\n\r\n"
    );
    s.write_all(head.as_bytes()).expect("headers");
    // `[` then 1 GiB of one string: one record far over any limit.
    let chunk = vec![b'x'; MIB as usize];
    let mut sent = 0u64;
    let mut refused_while_sending = false;
    let first = b"[\"";
    let _ = s.write_all(format!("{:x}\r\n", first.len()).as_bytes());
    let _ = s.write_all(first);
    let _ = s.write_all(b"\r\n");
    while sent < GIB {
        let framed = s
            .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
            .and_then(|()| s.write_all(&chunk))
            .and_then(|()| s.write_all(b"\r\n"));
        if framed.is_err() {
            // The server answered and closed the connection: it wants no more.
            refused_while_sending = true;
            break;
        }
        sent += MIB;
    }
    if !refused_while_sending {
        let _ = s.write_all(b"2\r\n\"]\r\n0\r\n\r\n");
    }
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    eprintln!(
        "sent {} MiB of the 1 GiB body before the server closed: {}",
        sent / MIB,
        answer.lines().next().unwrap_or("(no answer read)")
    );
    assert!(
        answer.starts_with("HTTP/1.1 413") || (refused_while_sending && answer.is_empty()),
        "answer: {answer}"
    );
    let peak = status_kib(pid, "VmHWM").expect("VmHWM") * 1024;
    eprintln!(
        "peak resident memory with a 1 GiB request: {} MiB",
        peak / MIB
    );
    assert!(peak < 256 * MIB, "peak resident memory {} MiB", peak / MIB);
    // The server still takes requests.
    let mut s = std::net::TcpStream::connect(&addr).expect("connected");
    let body = "{\"n\":1}";
    write!(
        s,
        "POST /ingest HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("sent");
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 20"), "answer: {answer}");
    let out = d.join("out.jsonl");
    wait_for(30, "the record", || {
        std::fs::read_to_string(&out).is_ok_and(|t| t == "{\"n\":1}\n")
    });
    flow.stop_cleanly();
}

/// A source far faster than its sink: `generate` without a rate into a `file_sink` writing a
/// pipe the test reads slowly (a few hundred KiB/s). The flow waits on back-pressure; its
/// resident memory, sampled every 250 ms for 20 s, stays under a bound the edge thresholds set
/// (here 1,000 records an edge), and does not grow from the first half of the run to the second.
#[test]
fn overload_keeps_resident_memory_flat() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    let fifo = d.join("slow.pipe");
    let made = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(made.success());
    let file = write(
        d,
        "flow.yaml",
        &format!(
            r#"
name: overload
defaults:
  max_records: 1000
processors:
  fast:
    type: generate
    preset: sensors
  slow:
    type: file_sink
    path: {}
connections:
  - fast -> slow
"#,
            fifo.display()
        ),
    );
    // The reader first: opening a pipe for writing waits for one.
    let reader_path = fifo.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop_reader = stop.clone();
    let reader = std::thread::spawn(move || {
        let mut f = std::fs::File::open(&reader_path).expect("pipe");
        let mut buf = vec![0u8; 16 * 1024];
        let mut total = 0u64;
        while !stop_reader.load(std::sync::atomic::Ordering::Relaxed) {
            match f.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n as u64,
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        total
    });
    let mut flow = Flow::start(&file, d, "flow", &[]);
    let pid = flow.child.id();
    let mut samples = Vec::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        if let Some(kib) = status_kib(pid, "VmRSS") {
            samples.push(kib * 1024);
        }
        if let Ok(Some(status)) = flow.child.try_wait() {
            // Open the pipe, so the reader's open returns, before failing.
            drop(std::fs::OpenOptions::new().write(true).open(&fifo));
            panic!("the flow ended ({status}):\n{}", flow.log());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let m = |s: &[u64]| s.iter().copied().max().unwrap_or(0) / MIB;
    let (first, second) = samples.split_at(samples.len() / 2);
    eprintln!(
        "overload: {} samples of resident memory, max {} MiB in the first 10 s, {} MiB in the \
         last 10 s; every 2 s: {:?} MiB",
        samples.len(),
        m(first),
        m(second),
        samples
            .iter()
            .step_by(8)
            .map(|s| s / MIB)
            .collect::<Vec<_>>()
    );
    flow.kill_9();
    let read = reader.join().expect("reader");
    eprintln!("the slow sink took {} KiB in 20 s", read / 1024);
    assert!(samples.len() > 40, "sampled");
    // Two edges of 1,000 records (~1 KiB each in memory, with their views), the batches in
    // the hands of the source and the sink, plus the binary and runtime: well under this.
    assert!(m(&samples) < 200, "resident memory {} MiB", m(&samples));
    assert!(
        m(second) <= m(first) + 16,
        "resident memory grew from {} MiB to {} MiB",
        m(first),
        m(second)
    );
}

/// A tmpfs of `size` mounted at `dir`, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(dir.to_path_buf()))
    }

    fn resize(&self, size: &str) {
        let ok = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "remount");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Fill the file system of `path` to the last byte.
fn fill(path: &Path) {
    let mut f = std::fs::File::create(path).expect("filler");
    let chunk = vec![0u8; 4096];
    while f.write_all(&chunk).is_ok() {}
    let one = [0u8; 1];
    while f.write_all(&one).is_ok() {}
}

/// `n` events of 4 devices, one every 10 ms each: lines for the file, and the oracle's
/// 1 s tumbling windows (device, start) -> (count, sum).
fn events(n: i64, out: &mut String, oracle: &mut BTreeMap<(String, i64), (i64, i64)>) {
    for i in 0..n {
        let ts = 1_700_000_000_000 + (i / 4) * 10;
        let dev = i % 4;
        let v = i % 7;
        out.push_str(&format!(
            "{{\"device\":\"d{dev}\",\"ts\":{ts},\"v\":{v},\"n\":{i}}}\n"
        ));
        let w = oracle
            .entry((format!("d{dev}"), ts - ts.rem_euclid(1_000)))
            .or_insert((0, 0));
        w.0 += 1;
        w.1 += v;
    }
}

/// A full disk under `file_sink`, the window state and `s3_sink` (`file://`): the flow warns,
/// is killed while the disk is full, is started again (still full), and goes on by itself once
/// space returns; every line is written once and the windows are the oracle's, once each.
#[test]
fn a_full_disk_loses_nothing_and_resumes_when_space_returns() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    let Some(disk) = Tmpfs::mount(&d.join("small"), "256k") else {
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        return;
    };
    let small = disk.0.clone();
    let mut text = String::new();
    let mut oracle = BTreeMap::new();
    let n = 20_000;
    events(n, &mut text, &mut oracle);
    std::fs::write(d.join("events.jsonl"), &text).expect("input");
    let file = write(
        d,
        "flow.yaml",
        &format!(
            r#"
name: full-disk
processors:
  events:
    type: file
    path: {d}/events.jsonl
    checkpoint: {d}/events.checkpoint
    batch_size: 500
  copy:
    type: file_sink
    path: {s}/copy.jsonl
  per_device:
    type: window_aggregate
    key: .device
    key_field: device
    event_time: .ts
    window: {{ tumbling: 1s }}
    state: {s}/windows.redb
    checkpoint_interval: 200ms
    aggregates:
      count: count()
      sum: sum(.v)
  archive:
    type: s3_sink
    url: file://{s}/objects
    key: "{{device}}/part-{{uuid}}.jsonl"
    compression: none
    max_records: 5
    max_idle: 1s
connections:
  - events -> copy
  - events -> per_device
  - per_device -> archive
"#,
            d = d.display(),
            s = small.display()
        ),
    );
    // A first run with room, so the window state file and folders exist; then the disk fills.
    std::fs::write(d.join("events.jsonl"), "").expect("input");
    let first = Flow::start(&file, d, "empty", &[]);
    assert!(first.wait(60), "an empty input ends");
    std::fs::write(d.join("events.jsonl"), &text).expect("input");
    fill(&small.join("filler"));
    let flow = Flow::start(&file, d, "full", &[]);
    wait_for(60, "a warning about the full disk", || {
        flow.log().contains("No space left on device")
    });
    eprintln!("while full:\n{}", flow.log());
    flow.kill_9();
    let flow = Flow::start(&file, d, "full-again", &[]);
    // All three writers meet the full disk and wait: the file, the window state, the objects.
    for who in ["node=\"copy\"", "node=\"per_device\"", "node=\"archive\""] {
        wait_for(
            60,
            &format!("a warning about the full disk from {who}"),
            || {
                flow.log()
                    .lines()
                    .any(|l| l.contains(who) && l.contains("No space left on device"))
            },
        );
    }
    eprintln!("full again:\n{}", flow.log());
    // Space returns.
    std::fs::remove_file(small.join("filler")).expect("freed");
    disk.resize("64m");
    let log = flow.log();
    assert!(
        flow.wait(120),
        "the flow ends by itself once there is room:\n{log}"
    );
    let copy = std::fs::read_to_string(small.join("copy.jsonl")).expect("copy");
    let mut seen: HashMap<&str, u32> = HashMap::new();
    for l in copy.lines() {
        *seen.entry(l).or_default() += 1;
    }
    let want: Vec<&str> = text.lines().collect();
    let lost = want.iter().filter(|l| !seen.contains_key(*l)).count();
    let repeated: u32 = seen.values().map(|c| c - 1).sum();
    assert_eq!((lost, repeated), (0, 0), "file_sink: lost, repeated");
    let mut windows: Vec<(String, i64, i64, i64)> = Vec::new();
    for entry in walk(&small.join("objects")) {
        if entry.to_string_lossy().contains("/_flow/") {
            continue;
        }
        let t = std::fs::read_to_string(&entry).expect("object");
        for l in t.lines() {
            let v: serde_json::Value = serde_json::from_str(l).expect("json");
            windows.push((
                v["device"].as_str().expect("device").to_owned(),
                v["window_start"].as_i64().expect("start"),
                v["count"].as_i64().expect("count"),
                v["sum"].as_f64().expect("sum") as i64,
            ));
        }
    }
    windows.sort();
    let want: Vec<(String, i64, i64, i64)> = oracle
        .into_iter()
        .map(|((dev, start), (c, s))| (dev, start, c, s))
        .collect();
    assert_eq!(
        windows.len(),
        want.len(),
        "windows written (repeats or losses)"
    );
    assert_eq!(windows, want);
}

/// Every file below `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}
