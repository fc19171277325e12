//! Writing records as lines, shared by the `file_sink` and `stdout` sinks.
//!
//! Each batch is one buffer of lines, written by plain `write` calls on a blocking thread, so
//! the sink knows exactly how many bytes reached the destination. An error that may pass (a
//! full disk, a quota, an interrupted call) is retried with backoff and the write continues
//! where it stopped: no line is written twice or torn. An error retrying cannot fix (`EIO`,
//! permission denied, a closed pipe), or a stop while retrying, ends the sink with the error;
//! the part of the batch already written is cut off again where the destination allows it (a
//! file), and the batch's records are not acknowledged, so their source reads them again.
//!
//! A regular file also gets a commit record beside it (see [`Commit`]): after each batch, its
//! length and the positions written ([`flow_core::committed::Written`]), appended to a small
//! commit log before the batch is acknowledged. On restart the file is cut back to the committed length
//! and replayed records the commit covers are skipped: exactly-once across `kill -9`.

use std::io::Write;

use futures::FutureExt as _;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use flow_core::committed::Written;
use flow_core::processor::{ProcessorError, SinkContext};
use flow_core::retry::Retry;
use serde::{Deserialize, Serialize};

/// Where lines go.
pub(crate) trait Target: Send + 'static {
    /// Write some bytes (as [`std::io::Write::write`]).
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize>;
    /// Make what was written durable (fsync) and flushed.
    fn sync(&mut self, durable: bool) -> std::io::Result<()>;
    /// Cut the destination back to `len` bytes, if it can be (a regular file).
    fn truncate(&mut self, len: u64) -> std::io::Result<()>;
}

impl Target for std::fs::File {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Write::write(self, buf)
    }
    fn sync(&mut self, durable: bool) -> std::io::Result<()> {
        if durable { self.sync_data() } else { Ok(()) }
    }
    fn truncate(&mut self, len: u64) -> std::io::Result<()> {
        if self.metadata()?.is_file() {
            self.set_len(len)?;
        }
        Ok(())
    }
}

impl Target for std::io::Stdout {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.lock().write(buf)
    }
    fn sync(&mut self, _durable: bool) -> std::io::Result<()> {
        self.lock().flush()
    }
    fn truncate(&mut self, _len: u64) -> std::io::Result<()> {
        Ok(())
    }
}

/// A destination, its name for messages, and how much of it is ours (its length, for a
/// file: where a batch that fails half-way is cut back to).
pub(crate) struct Lines<T> {
    pub target: T,
    /// `` `out.jsonl` `` or `standard output`.
    pub name: String,
    /// Where the records go, for provenance's SEND: the file's path, `stdout`.
    pub destination: String,
    pub len: u64,
    /// fsync after every batch.
    pub durable: bool,
    /// Where the commit record goes, for a regular file.
    pub commit: Option<Commit>,
}

/// The last commit in a commit log: its last line that is a whole record (a `kill -9` may have
/// torn the one after it, which was then never acknowledged). A log written before commits were
/// appended holds one record with no newline: read the same way.
fn read_commit(path: &Path) -> std::io::Result<Option<Committed>> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut last_error = None;
    for line in bytes.rsplit(|b| *b == b'\n') {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice(line) {
            Ok(c) => return Ok(Some(c)),
            Err(e) => last_error = last_error.or(Some(e)),
        }
    }
    let message = match last_error {
        Some(e) => format!("no whole commit record in `{}`: {e}", path.display()),
        None => format!("the commit log `{}` is empty", path.display()),
    };
    Err(std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        message,
    ))
}

/// A commit log grows to this many bytes, then is rewritten with its last record alone.
const COMPACT_AT: u64 = 64 * 1024;

/// A file sink's committed state: the file's length after the last acknowledged batch and the
/// positions of the records written up to there, one JSON line per batch appended to a small
/// log beside the file (`.NAME.NODE.commit`) before the batch's records are acknowledged. The
/// last whole line is the commit: a `kill -9` leaves at most a torn line after it. The first
/// commit of a run, and every one that finds the log over [`COMPACT_AT`], replaces the log
/// atomically with itself alone (written aside, then renamed over), so a run never appends
/// after a line a crash tore. One append per batch, where a replace per batch cost a create,
/// a rename and a close (about 6 % of the sensors flow's CPU time).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Committed {
    /// The file's length.
    pub len: u64,
    /// Per source, the highest position written (empty where origins are not ordered).
    #[serde(default)]
    pub written: Written,
}

/// Where a file's commit record lives: `.FILE.NODE.commit`, one per sink, since several sinks
/// of a flow may append to one file.
#[derive(Clone)]
pub(crate) struct Commit {
    path: PathBuf,
    tmp: PathBuf,
    /// The file's folder and the prefix of every sink's commit record for it.
    dir: PathBuf,
    prefix: String,
    /// The log open for appending, and its length, once this run replaced it; `None` again
    /// after a failed append (the next commit replaces the log rather than append after a
    /// torn line).
    log: Arc<Mutex<Option<(std::fs::File, u64)>>>,
}

/// `name` with every character but letters, digits, `-` and `_` made `_`: safe in a file
/// name or an object key (a node's name in its commit record's).
pub(crate) fn file_safe(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl Commit {
    /// The commit record of sink `node` writing `file`.
    pub fn of(file: &Path, node: &str) -> Self {
        let name = file.file_name().map(|n| n.to_string_lossy().into_owned());
        let prefix = format!(".{}.", name.unwrap_or_default());
        let dir = file.parent().unwrap_or(Path::new("")).to_path_buf();
        let node = file_safe(node);
        Self {
            path: dir.join(format!("{prefix}{node}.commit")),
            tmp: dir.join(format!("{prefix}{node}.commit.tmp")),
            dir,
            prefix,
            log: Arc::default(),
        }
    }

    /// The last commit, if there is one.
    pub fn load(&self) -> std::io::Result<Option<Committed>> {
        read_commit(&self.path)
    }

    /// The longest length any sink writing this file committed: what lies beyond was
    /// acknowledged by none of them, so a restart may cut it off.
    pub fn longest(&self) -> std::io::Result<Option<u64>> {
        let dir = if self.dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            &self.dir
        };
        let mut longest = None;
        for entry in std::fs::read_dir(dir)? {
            let name = entry?.file_name();
            let name = name.to_string_lossy();
            if let Some(node) = name
                .strip_prefix(&self.prefix)
                .and_then(|n| n.strip_suffix(".commit"))
                && !node.contains('.')
                && let Some(c) = read_commit(&dir.join(&*name))?
            {
                longest = longest.max(Some(c.len));
            }
        }
        Ok(longest)
    }

    /// Forget the commit (the file starts over).
    pub fn remove(&self) -> std::io::Result<()> {
        *self.log.lock().unwrap_or_else(PoisonError::into_inner) = None;
        match std::fs::remove_file(&self.path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Record `c` (durably, with `durable`): appended to the log, or the log replaced by it
    /// alone (see [`Committed`]).
    fn store(&self, c: &Committed, durable: bool) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(c).map_err(std::io::Error::other)?;
        line.push(b'\n');
        let mut log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((f, len)) = log.as_mut().filter(|(_, len)| *len < COMPACT_AT) {
            let appended = f
                .write_all(&line)
                .and_then(|()| if durable { f.sync_data() } else { Ok(()) });
            match appended {
                Ok(()) => {
                    *len += line.len() as u64;
                    return Ok(());
                }
                Err(e) => {
                    *log = None;
                    return Err(e);
                }
            }
        }
        *log = None;
        let mut f = std::fs::File::create(&self.tmp)?;
        f.write_all(&line)?;
        if durable {
            f.sync_data()?;
        }
        drop(f);
        std::fs::rename(&self.tmp, &self.path)?;
        if durable && let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(dir)?.sync_all()?;
        }
        let f = std::fs::OpenOptions::new().append(true).open(&self.path)?;
        *log = Some((f, line.len() as u64));
        Ok(())
    }
}

/// One batch's progress, moved to the blocking thread and back.
struct Progress<T> {
    target: T,
    buf: Vec<u8>,
    written: usize,
}

/// Write from `written` to the end of `buf`, then sync; `written` counts what reached the
/// destination whatever happens.
fn write_rest<T: Target>(p: &mut Progress<T>, durable: bool) -> std::io::Result<()> {
    while p.written < p.buf.len() {
        match p.target.write(&p.buf[p.written..]) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => p.written += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    p.target.sync(durable)
}

/// How many bytes of lines one write takes at most from batches already waiting (a batch
/// larger than this is still written whole, in one write).
const COALESCE: usize = 256 << 10;

/// Each record's content as a line.
fn append_lines(buf: &mut Vec<u8>, batch: &mut [flow_core::record::Record]) {
    for r in batch {
        buf.extend_from_slice(r.content());
        buf.push(b'\n');
    }
}

/// Write every batch from `ctx.input` to `out`, one line per record (its content, so records
/// that were not modified keep their exact bytes), one write per batch (with the batches
/// already waiting), its commit record in the same trip to a blocking thread, and acknowledge
/// a batch's records once all of it was written (and synced, if asked).
pub(crate) async fn write_lines<T: Target>(
    out: Lines<T>,
    mut ctx: SinkContext,
) -> Result<(), ProcessorError> {
    let retry = Retry::new(&ctx);
    let what = format!("writing to {}", out.name);
    let Lines {
        target,
        name,
        destination,
        mut len,
        durable,
        commit,
    } = out;
    let mut p = Progress {
        target,
        buf: Vec::new(),
        written: 0,
    };
    while let Some(mut batch) = ctx.input.next().await {
        p.buf.clear();
        p.written = 0;
        append_lines(&mut p.buf, &mut batch);
        // Batches already waiting go with this one (up to `COALESCE` bytes): a sink that fell
        // behind catches up in fewer, larger writes; one that keeps up writes each batch as
        // it comes. Taking a batch is cancel-safe, so one not ready yet is left where it is.
        while p.buf.len() < COALESCE
            && let Some(Some(mut more)) = ctx.input.next().now_or_never()
        {
            append_lines(&mut p.buf, &mut more);
            batch.extend(more);
        }
        let committed = commit.as_ref().map(|commit| {
            let c = Committed {
                len: len + p.buf.len() as u64,
                written: ctx.input.commit_point(&batch).unwrap_or_default(),
            };
            (commit.clone(), c)
        });
        // The lines and their commit record in one trip to a blocking thread.
        let mut attempts = retry.attempts(&what);
        let stored = loop {
            let job = committed.clone();
            // The commit record is stored once the lines are written, and comes back with
            // what storing it returned.
            let (back, result, stored) = tokio::task::spawn_blocking(move || {
                let r = write_rest(&mut p, durable);
                let stored = match (&r, job) {
                    (Ok(()), Some((commit, c))) => {
                        let stored = commit.store(&c, durable);
                        Some((commit, c, stored))
                    }
                    _ => None,
                };
                (p, r, stored)
            })
            .await
            .map_err(|e| ProcessorError::other(format!("{what}: {e}")))?;
            p = back;
            let Err(e) = result else {
                attempts.succeeded();
                break stored;
            };
            let e = ProcessorError::io(what.clone(), e);
            if let Err(e) = attempts.failed(e).await {
                // Giving up: cut off the part of the batch that was written, so the next run,
                // which writes these records again, leaves no torn or doubled line.
                return Err(cut_back(p, len, e, &name).await);
            }
        };
        len += p.buf.len() as u64;
        if let Some((commit, c, mut stored)) = stored {
            // A full disk may refuse the commit record too: retried like the data (giving
            // up leaves the batch unacknowledged, cut off by the next run).
            let committing = format!("committing {name}");
            let mut attempts = retry.attempts(&committing);
            while let Err(e) = stored {
                attempts
                    .failed(ProcessorError::io(committing.clone(), e))
                    .await?;
                let (commit, c) = (commit.clone(), c.clone());
                stored = tokio::task::spawn_blocking(move || commit.store(&c, durable))
                    .await
                    .map_err(|e| ProcessorError::other(format!("{committing}: {e}")))?;
            }
            attempts.succeeded();
        }
        let n = batch.len() as u64;
        ctx.input
            .finish_sent(batch, Some(destination.clone()))
            .await;
        ctx.metrics.add_sent(n);
    }
    Ok(())
}

/// Truncate the destination to `len` after a failed batch; the error to report.
async fn cut_back<T: Target>(
    mut p: Progress<T>,
    len: u64,
    e: ProcessorError,
    name: &str,
) -> ProcessorError {
    if p.written == 0 {
        return e;
    }
    let cut = tokio::task::spawn_blocking(move || p.target.truncate(len)).await;
    match cut {
        Ok(Ok(())) => e,
        Ok(Err(t)) => ProcessorError::other(format!(
            "{e}; the part of the batch already written could not be cut off {name} ({t})"
        )),
        Err(t) => ProcessorError::other(format!("{e}; {t}")),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use flow_core::ack::{AckStatus, AckTracker, Acks};

    use super::*;
    use crate::testing::{rec, sink_ctx_stoppable};

    /// A destination that takes at most `room` bytes per write, and fails the writes listed in
    /// `errors` (by call number) with the given errors.
    #[derive(Clone, Default)]
    struct Fake {
        data: Arc<Mutex<Vec<u8>>>,
        calls: Arc<Mutex<u32>>,
        errors: Arc<Mutex<Vec<(u32, std::io::ErrorKind)>>>,
        room: usize,
    }

    impl Target for Fake {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let mut calls = self.calls.lock().expect("lock");
            *calls += 1;
            if let Some((_, kind)) = self
                .errors
                .lock()
                .expect("lock")
                .iter()
                .find(|(c, _)| *c == *calls)
            {
                return Err((*kind).into());
            }
            let n = buf.len().min(self.room);
            self.data.lock().expect("lock").extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn sync(&mut self, _: bool) -> std::io::Result<()> {
            Ok(())
        }
        fn truncate(&mut self, len: u64) -> std::io::Result<()> {
            let len = usize::try_from(len).expect("small");
            self.data.lock().expect("lock").truncate(len);
            Ok(())
        }
    }

    impl Fake {
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.data.lock().expect("lock")).into_owned()
        }
    }

    fn lines(fake: &Fake) -> Lines<Fake> {
        Lines {
            target: fake.clone(),
            name: "`fake`".into(),
            destination: "fake".into(),
            len: 0,
            durable: false,
            commit: None,
        }
    }

    /// Two batches of three records, each batch with its own ack token.
    fn batches(tracker: &mut AckTracker) -> Vec<Vec<flow_core::record::Record>> {
        (0..2)
            .map(|b| {
                let t = tracker.token(b);
                (0..3)
                    .map(|i| {
                        rec(&format!(r#"{{"b":{b},"i":{i}}}"#)).with_acks(Acks::one(t.clone()))
                    })
                    .collect()
            })
            .collect()
    }

    const ALL: &str = "{\"b\":0,\"i\":0}\n{\"b\":0,\"i\":1}\n{\"b\":0,\"i\":2}\n\
                       {\"b\":1,\"i\":0}\n{\"b\":1,\"i\":1}\n{\"b\":1,\"i\":2}\n";

    /// A full disk mid-batch: retried, and the write goes on where it stopped.
    #[tokio::test(start_paused = true)]
    async fn a_full_disk_is_retried_and_the_write_continues_where_it_stopped() {
        let fake = Fake {
            room: 10,
            errors: Arc::new(Mutex::new(vec![
                (2, std::io::ErrorKind::StorageFull),
                (3, std::io::ErrorKind::StorageFull),
                (7, std::io::ErrorKind::QuotaExceeded),
            ])),
            ..Fake::default()
        };
        let mut tracker = AckTracker::new();
        let (ctx, tx, _failures, metrics, _) = sink_ctx_stoppable();
        for b in batches(&mut tracker) {
            tx.send(b).await.expect("queued");
        }
        drop(tx);
        write_lines(lines(&fake), ctx)
            .await
            .expect("written in the end");
        assert_eq!(fake.text(), ALL, "no line doubled or torn");
        assert_eq!(metrics.snapshot().sent, 6);
        for _ in 0..2 {
            let f = tracker.next().await.expect("finished");
            assert_eq!(f.status, AckStatus::Delivered);
        }
    }

    /// An error retrying cannot fix, after part of a batch was written: the sink fails, the
    /// part is cut off, and the batch's records are not acknowledged (the batch before is).
    #[tokio::test(start_paused = true)]
    async fn a_fatal_error_cuts_the_partial_batch_and_abandons_it() {
        let fake = Fake {
            room: 20,
            errors: Arc::new(Mutex::new(vec![(5, std::io::ErrorKind::Other)])),
            ..Fake::default()
        };
        let mut tracker = AckTracker::new();
        let (ctx, tx, _failures, metrics, _) = sink_ctx_stoppable();
        // The second batch comes once the first is written (batches already waiting would
        // be written with it, in one write).
        let mut b = batches(&mut tracker).into_iter();
        tx.send(b.next().expect("first")).await.expect("queued");
        let sink = tokio::spawn(write_lines(lines(&fake), ctx));
        let first = tracker.next().await.expect("first finished");
        assert_eq!(first.status, AckStatus::Delivered);
        tx.send(b.next().expect("second")).await.expect("queued");
        drop(tx);
        let e = sink.await.expect("joined").expect_err("fails");
        assert!(e.to_string().starts_with("writing to `fake`: "), "{e}");
        let first_batch = &ALL[..ALL.len() / 2];
        assert_eq!(
            fake.text(),
            first_batch,
            "the second batch's part was cut off"
        );
        assert_eq!(metrics.snapshot().sent, 3);
        let second = tracker.next().await.expect("second finished");
        assert_eq!(second.status, AckStatus::Abandoned);
    }

    /// Asked to stop while a full disk is being retried: the sink gives up at once, cuts the
    /// partial batch, and leaves it unacknowledged.
    #[tokio::test(start_paused = true)]
    async fn a_stop_while_retrying_gives_up_and_abandons() {
        let fake = Fake {
            room: 4,
            errors: Arc::new(Mutex::new(
                (2..10_000)
                    .map(|c| (c, std::io::ErrorKind::StorageFull))
                    .collect(),
            )),
            ..Fake::default()
        };
        let mut tracker = AckTracker::new();
        let (ctx, tx, _failures, _, stop) = sink_ctx_stoppable();
        let mut b = batches(&mut tracker);
        b.truncate(1);
        tx.send(b.remove(0)).await.expect("queued");
        let sink = tokio::spawn(write_lines(lines(&fake), ctx));
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(!sink.is_finished(), "retrying while the disk is full");
        stop.cancel();
        let e = sink.await.expect("joined").expect_err("gave up");
        assert!(matches!(e, ProcessorError::Stopped(_)), "{e}");
        assert_eq!(fake.text(), "");
        drop(tx);
        let f = tracker.next().await.expect("finished");
        assert_eq!(f.status, AckStatus::Abandoned);
    }

    /// The commit is its log's last whole line: a torn line after it (a `kill -9` in the middle
    /// of an append) is not one; a new run replaces the log before it appends (never after a
    /// torn line); a log of one record with no newline (written before commits were appended)
    /// reads as before; a log past `COMPACT_AT` is replaced by its last record; a log with no
    /// whole record is an error, not a made-up commit.
    #[test]
    fn the_commit_is_the_last_whole_line_of_its_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("out.jsonl");
        let c = |len| Committed {
            len,
            written: Written::default(),
        };
        let commit = Commit::of(&file, "sink");
        assert_eq!(commit.load().expect("read"), None);
        commit.store(&c(1), false).expect("stored");
        commit.store(&c(2), false).expect("stored");
        assert_eq!(commit.load().expect("read"), Some(c(2)));
        let log = || std::fs::read_to_string(&commit.path).expect("read");
        assert_eq!(log().lines().count(), 2);

        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&commit.path)
            .expect("open");
        f.write_all(b"{\"len\":3,\"wri").expect("torn");
        assert_eq!(commit.load().expect("read"), Some(c(2)));

        let again = Commit::of(&file, "sink");
        again.store(&c(3), false).expect("stored");
        assert_eq!(log().lines().count(), 1, "{}", log());
        again.store(&c(4), false).expect("stored");
        assert_eq!(again.load().expect("read"), Some(c(4)));

        std::fs::write(&commit.path, br#"{"len":9}"#).expect("old format");
        assert_eq!(Commit::of(&file, "sink").load().expect("read"), Some(c(9)));

        let big = Commit::of(&file, "big");
        for len in 0..5_000 {
            big.store(&c(len), false).expect("stored");
        }
        let size = std::fs::metadata(&big.path).expect("log").len();
        assert!(size < COMPACT_AT + 100, "{size} bytes");
        assert_eq!(big.load().expect("read"), Some(c(4_999)));

        std::fs::write(&big.path, b"{\"len\":").expect("torn alone");
        assert!(big.load().is_err());
    }
}
