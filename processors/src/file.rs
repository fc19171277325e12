//! `file`: read records from a file, one per line, resuming from a checkpoint.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use bytesize::ByteSize;
use flow_core::processor::{
    BuildContext, BuildError, ConfigError, Describe, Kind, Processor, ProcessorConfig,
    ProcessorError, Source, SourceContext,
};
use flow_core::record::JsonView;
use schemars::JsonSchema;
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncSeekExt, BufReader};

use crate::lines::{self, Checkpoint, Format, LineInput, Position};

/// Read records from a file, one per line (JSON lines, raw lines or CSV).
///
/// The file is opened when the flow starts (a missing or unreadable file stops the start, before
/// any sink has created anything) and read once, to its end; the flow ends when every source
/// has ended. With a
/// `checkpoint`, the position of the last line whose records were all finished downstream
/// (written by a sink, filtered out, or reported as failed) is saved, and a restarted flow
/// resumes after it: at-least-once delivery. Blank lines are skipped. Lines that cannot be read,
/// and lines longer than `max_record_size` (only their first 1 KiB is kept), go to `failure`
/// with `error.message` ("line N: ...") and `file.line` attributes.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// The file to read.
    pub path: String,
    /// How each line becomes a record.
    #[serde(default)]
    pub format: Format,
    /// Records per batch (each batch is acknowledged and committed as a whole).
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// A file where the committed position is kept (`{"offset":N,"line":M}`); if it exists at
    /// start, reading resumes from there. Written atomically, at most once a second and at the
    /// end.
    #[serde(default)]
    pub checkpoint: Option<String>,
    /// The longest line taken, like `1MiB`; a longer line goes to `failure` with its first 1 KiB
    /// (it is skipped without being held in memory).
    #[serde(default = "crate::record_size::default_max_record_size")]
    #[schemars(with = "String")]
    pub max_record_size: ByteSize,
}

/// Twice the other sources' 1,024: a file is read as fast as the flow takes it, and each
/// task then runs twice as long on its core between hand-offs (the sensors flow 0.32 s
/// against 0.35 with 1,024, edges two batches deep either way; docs/performance.md, step 24).
fn default_batch_size() -> usize {
    2048
}

impl Describe for FileConfig {
    const TYPE: &'static str = "file";
    const KIND: Kind = Kind::Source;
}

impl ProcessorConfig for FileConfig {
    /// Only with a `checkpoint`: a restart then resumes the same reading. Without one, every
    /// run reads the file anew (perhaps another file under the same path), which a sink must
    /// not take for a replay of what it already wrote.
    fn replays_in_order(&self) -> bool {
        self.checkpoint.is_some()
    }

    fn outputs(&self) -> Vec<String> {
        vec!["out".into()]
    }

    fn validate(&self) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        if self.path.is_empty() {
            errors.push(ConfigError::new(&["path"], "the path is empty"));
        }
        if self.batch_size == 0 {
            errors.push(ConfigError::new(&["batch_size"], "must be at least 1"));
        }
        if self.checkpoint.as_deref() == Some("") {
            errors.push(ConfigError::new(&["checkpoint"], "the path is empty"));
        }
        crate::record_size::validate(self.max_record_size, None, &mut errors);
        errors
    }

    /// Opens the file (and reads the checkpoint): a file that cannot be read fails the start of
    /// the flow, before any sink creates its output.
    fn build(&self, ctx: &BuildContext) -> Result<Processor, BuildError> {
        use std::os::unix::fs::FileTypeExt as _;
        let meta = std::fs::metadata(&self.path)
            .map_err(|e| BuildError(format!("cannot open `{}`: {e}", self.path)))?;
        if meta.is_dir() {
            return Err(BuildError(format!(
                "cannot read `{}`: it is a directory",
                self.path
            )));
        }
        // Opening a named pipe waits for its writer: that happens in `run`, where waiting
        // does not hold up the start of the flow, and a stop ends it.
        let file = if meta.file_type().is_fifo() {
            None
        } else {
            Some(
                std::fs::File::open(&self.path)
                    .map_err(|e| BuildError(format!("cannot open `{}`: {e}", self.path)))?,
            )
        };
        let mut checkpoint = FileCheckpoint::new(self.checkpoint.as_deref().map(PathBuf::from));
        let start = checkpoint.load().map_err(|e| BuildError(e.to_string()))?;
        Ok(Processor::Source(Box::new(FileSource {
            cfg: self.clone(),
            json_view: ctx.json_view(),
            file,
            checkpoint,
            start,
        })))
    }
}

struct FileSource {
    cfg: FileConfig,
    json_view: JsonView,
    /// Opened by `build`; a named pipe is opened by `run`.
    file: Option<std::fs::File>,
    checkpoint: FileCheckpoint,
    /// Where the checkpoint says to resume.
    start: Position,
}

fn io(context: String) -> impl FnOnce(std::io::Error) -> ProcessorError {
    move |source| ProcessorError::Io { context, source }
}

#[async_trait]
impl Source for FileSource {
    async fn run(self: Box<Self>, ctx: SourceContext) -> Result<(), ProcessorError> {
        let FileSource {
            cfg,
            json_view,
            file,
            mut checkpoint,
            mut start,
        } = *self;
        let mut file = match file {
            Some(f) => tokio::fs::File::from_std(f),
            None => {
                // On a thread of its own, not the runtime's blocking pool: the runtime waits
                // for those at its end, and this open may never return.
                let (tx, rx) = tokio::sync::oneshot::channel();
                let path = PathBuf::from(&cfg.path);
                std::thread::spawn(move || {
                    let _ = tx.send(std::fs::File::open(path));
                });
                tokio::select! {
                    f = rx => match f {
                        Ok(f) => tokio::fs::File::from_std(f.map_err(io(format!("`{}`", cfg.path)))?),
                        Err(_) => return Err(ProcessorError::Other(format!("opening `{}` failed", cfg.path))),
                    },
                    () = ctx.shutdown.cancelled() => {
                        // Free the waiting thread: a writer that opens and closes at once.
                        use std::os::unix::fs::OpenOptionsExt as _;
                        let _ = std::fs::OpenOptions::new()
                            .write(true)
                            .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
                            .open(&cfg.path);
                        return Ok(());
                    }
                }
            }
        };
        let len = file
            .metadata()
            .await
            .map_err(io(format!("`{}`", cfg.path)))?
            .len();
        if start.offset > len {
            tracing::warn!(
                file = %cfg.path,
                offset = start.offset,
                len,
                "the file is shorter than the checkpoint says; reading it from the start"
            );
            start = Position {
                epoch: start.epoch + 1,
                ..Position::default()
            };
        }
        // Resuming inside a CSV file: its header is still needed.
        let header = if cfg.format == Format::Csv && start.offset > 0 {
            let mut line = Vec::new();
            // The header is a line like any other: at most `max_record_size`.
            let most = cfg.max_record_size.as_u64().saturating_add(2);
            BufReader::new((&mut file).take(most))
                .read_until(b'\n', &mut line)
                .await
                .map_err(io(format!("reading `{}`", cfg.path)))?;
            while line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                line.pop();
            }
            Some(Bytes::from(line))
        } else {
            None
        };
        // A pipe cannot seek, and has nothing to resume: it is read from where it is.
        if start.offset > 0 {
            file.seek(std::io::SeekFrom::Start(start.offset))
                .await
                .map_err(io(format!("seeking in `{}`", cfg.path)))?;
        }
        let input = LineInput {
            format: cfg.format,
            json_view,
            batch_size: cfg.batch_size,
            flush_each_read: false,
            start,
            header,
            line_attribute: "file.line",
            max_record_size: cfg.max_record_size,
            size: Some(len),
        };
        lines::run(input, &mut file, ctx, &mut checkpoint).await?;
        Ok(())
    }
}

/// The committed position, kept in a small JSON file.
struct FileCheckpoint {
    path: Option<PathBuf>,
    last_write: Option<Instant>,
    saved: Option<Position>,
}

const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

impl FileCheckpoint {
    fn new(path: Option<PathBuf>) -> Self {
        Self {
            path,
            last_write: None,
            saved: None,
        }
    }

    /// The saved position; the start of the file when there is none.
    fn load(&mut self) -> Result<Position, ProcessorError> {
        let Some(path) = &self.path else {
            return Ok(Position::default());
        };
        let text = match std::fs::read(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Position::default()),
            Err(e) => return Err(io(format!("reading checkpoint `{}`", path.display()))(e)),
        };
        let pos: Position = serde_json::from_slice(&text).map_err(|e| {
            ProcessorError::Other(format!(
                "checkpoint `{}` is unreadable: {e}",
                path.display()
            ))
        })?;
        self.saved = Some(pos);
        Ok(pos)
    }

    async fn write(path: &Path, pos: Position) -> Result<(), ProcessorError> {
        let err = || format!("writing checkpoint `{}`", path.display());
        let text = serde_json::to_vec(&pos).map_err(|e| ProcessorError::Other(e.to_string()))?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(dir).await.map_err(io(err()))?;
        }
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        tokio::fs::write(&tmp, text).await.map_err(io(err()))?;
        tokio::fs::rename(&tmp, path).await.map_err(io(err()))
    }
}

impl Checkpoint for FileCheckpoint {
    async fn save(&mut self, pos: Position, last: bool) -> Result<(), ProcessorError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let recent = self
            .last_write
            .is_some_and(|t| t.elapsed() < CHECKPOINT_EVERY);
        if self.saved == Some(pos) || (recent && !last) {
            return Ok(());
        }
        Self::write(path, pos).await?;
        self.saved = Some(pos);
        self.last_write = Some(Instant::now());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{SourceHarness, config, drain, records, source, source_ctx};
    use flow_core::record::{Record, finish_all};
    use serde_json::json;

    struct Run {
        out: Vec<Record>,
        failed: Vec<Record>,
        status: std::collections::BTreeMap<String, serde_json::Value>,
    }

    async fn read(cfg: serde_json::Value) -> Run {
        let mut h = source_ctx(1);
        let run = tokio::spawn(source(&config::<FileConfig>(cfg)).run(h.ctx));
        let out = records(&mut h.ports[1]).await;
        let failed = records(&mut h.ports[0]).await;
        run.await.expect("joined").expect("runs");
        let status = h.metrics.snapshot().status;
        Run {
            out,
            failed,
            status,
        }
    }

    fn texts(records: &mut [Record]) -> Vec<String> {
        records
            .iter_mut()
            .map(|r| String::from_utf8_lossy(r.content()).into_owned())
            .collect()
    }

    fn tempfile(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("in.txt");
        std::fs::write(&path, text).expect("written");
        (dir, path)
    }

    #[tokio::test]
    async fn json_lines_with_crlf_blank_lines_and_no_final_newline() {
        let (_dir, path) = tempfile("{\"a\":1}\r\n\n{\"a\": 2}\n{\"a\":3}");
        let mut r = read(json!({"path": path, "batch_size": 2})).await;
        assert_eq!(
            texts(&mut r.out),
            [r#"{"a":1}"#, r#"{"a": 2}"#, r#"{"a":3}"#]
        );
        assert!(
            r.out
                .iter_mut()
                .all(|r| r.value().is_ok_and(flow_core::record::Value::is_object))
        );
        assert_eq!(r.status["committed_offset"], json!(26));
        assert_eq!(r.status["committed_lines"], json!(4));
    }

    /// A named pipe: building the source does not wait for its writer (the flow starts), the
    /// records come once a writer opens it, and a stop ends a source still waiting for one.
    #[tokio::test]
    async fn a_named_pipe_is_read_once_its_writer_comes_and_a_stop_ends_the_wait() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fifo = dir.path().join("in.fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("mkfifo runs");
        assert!(made.success());
        let cfg = config::<FileConfig>(json!({"path": fifo}));
        // Built with no writer yet: this returned, so it did not block.
        let built = source(&cfg);
        let writer = {
            let fifo = fifo.clone();
            std::thread::spawn(move || std::fs::write(&fifo, "{\"a\":1}\n{\"a\":2}\n"))
        };
        let mut h = source_ctx(1);
        let run = tokio::spawn(built.run(h.ctx));
        let mut out = records(&mut h.ports[1]).await;
        run.await.expect("joined").expect("runs");
        writer.join().expect("writer").expect("written");
        assert_eq!(texts(&mut out), [r#"{"a":1}"#, r#"{"a":2}"#]);

        // No writer ever: a stop ends the wait.
        let h = source_ctx(1);
        let stop = h.shutdown.clone();
        let run = tokio::spawn(source(&cfg).run(h.ctx));
        stop.cancel();
        run.await.expect("joined").expect("a stop is not an error");
    }

    #[tokio::test]
    async fn malformed_lines_go_to_failure_with_their_number() {
        let (_dir, path) = tempfile("{\"a\":1}\n{nope\n{\"a\":3}\n");
        let mut r = read(json!({"path": path})).await;
        assert_eq!(r.out.len(), 2);
        assert_eq!(texts(&mut r.failed), ["{nope"]);
        let attrs = &r.failed[0].attributes();
        assert_eq!(attrs.get("file.line").map(String::as_str), Some("2"));
        let msg = attrs.get("error.message").cloned().unwrap_or_default();
        assert!(msg.starts_with("line 2: "), "{msg}");
        assert_eq!(
            attrs.get("error.processor").map(String::as_str),
            Some(crate::testing::NAME)
        );
    }

    #[tokio::test]
    async fn lines_and_csv() {
        let (_dir, path) = tempfile("hello world\nnot {json\n");
        let mut r = read(json!({"path": path, "format": "lines"})).await;
        assert_eq!(texts(&mut r.out), ["hello world", "not {json"]);
        let v = r.out[0].value().expect("view").clone();
        assert_eq!(v, flow_core::record::Value::from("hello world"));

        let (_dir, path) = tempfile("device,temp\ncar-1,71.5\n\"car,2\",3\nshort\n");
        let mut r = read(json!({"path": path, "format": "csv"})).await;
        assert_eq!(
            texts(&mut r.out),
            [
                r#"{"device":"car-1","temp":"71.5"}"#,
                r#"{"device":"car,2","temp":"3"}"#
            ]
        );
        let msg = r.failed[0]
            .attributes()
            .get("error.message")
            .cloned()
            .unwrap_or_default();
        assert!(msg.starts_with("line 4: row has 1 fields"), "{msg}");
    }

    #[tokio::test]
    async fn resumes_from_the_checkpoint() {
        let (dir, path) = tempfile("a,b\n1,2\n3,4\n");
        let cp = dir.path().join("state/cp.json");
        let cfg = json!({"path": path, "format": "csv", "checkpoint": cp});
        let r = read(cfg.clone()).await;
        assert_eq!(r.out.len(), 2);
        let saved: Position =
            serde_json::from_slice(&std::fs::read(&cp).expect("cp")).expect("json");
        assert_eq!(
            saved,
            Position {
                offset: 12,
                line: 3,
                epoch: 0
            }
        );

        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .expect("open");
        std::io::Write::write_all(&mut file, b"5,6\n").expect("appended");
        let mut r = read(cfg).await;
        assert_eq!(texts(&mut r.out), [r#"{"a":"5","b":"6"}"#]);
        assert_eq!(r.status["committed_lines"], json!(4));
    }

    #[tokio::test]
    async fn commits_only_over_finished_batches() {
        let (dir, path) = tempfile("{\"n\":1}\n{\"n\":2}\n{\"n\":3}\n{\"n\":4}\n{\"n\":5}\n");
        let cp = dir.path().join("cp.json");
        let cfg: FileConfig = config(json!({"path": path, "batch_size": 2, "checkpoint": cp}));
        let SourceHarness {
            ctx,
            mut ports,
            metrics,
            ..
        } = source_ctx(1);
        let run = tokio::spawn(source(&cfg).run(ctx));
        let mut batches = drain(&mut ports[1]).await;
        assert_eq!(batches.iter().map(Vec::len).collect::<Vec<_>>(), [2, 2, 1]);
        let held = batches.remove(1);
        batches.into_iter().for_each(finish_all);
        let status = |key: &str| metrics.snapshot().status.get(key).cloned();
        for _ in 0..100 {
            if status("committed_offset") == Some(json!(16)) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            status("committed_offset"),
            Some(json!(16)),
            "stops before the held batch"
        );
        assert_eq!(status("committed_lines"), Some(json!(2)));
        assert!(!run.is_finished(), "waits for the held batch");
        finish_all(held);
        run.await.expect("joined").expect("runs");
        assert_eq!(status("committed_offset"), Some(json!(40)));
        let saved: Position =
            serde_json::from_slice(&std::fs::read(&cp).expect("cp")).expect("json");
        assert_eq!(
            saved,
            Position {
                offset: 40,
                line: 5,
                epoch: 0
            }
        );
    }

    /// A file found shorter than its checkpoint (truncated, replaced) is read anew, in a new
    /// epoch: its records' origins are not those of the earlier lines, so a sink that skips
    /// replays by position (an exactly-once `file_sink`) writes them.
    #[tokio::test]
    async fn a_file_shorter_than_its_checkpoint_is_read_anew_under_new_origins() {
        let (dir, path) = tempfile("{\"a\":1}\n{\"a\":2}\n{\"a\":3}\n");
        let cp = dir.path().join("cp.json");
        let cfg = json!({"path": path, "checkpoint": cp});
        let first = read(cfg.clone()).await;
        assert_eq!(first.out.len(), 3);
        std::fs::write(&path, "{\"b\":1}\n").expect("truncated and rewritten");
        let mut second = read(cfg.clone()).await;
        assert_eq!(texts(&mut second.out), [r#"{"b":1}"#]);
        let (old, new) = (
            first.out[0].origin.expect("origin"),
            second.out[0].origin.expect("origin"),
        );
        assert_eq!((old.seq, new.seq), (1, 1));
        assert_ne!(old.source, new.source, "a new epoch, another origin");
        let saved: Position =
            serde_json::from_slice(&std::fs::read(&cp).expect("cp")).expect("json");
        assert_eq!(saved.epoch, 1);
        // Resuming in that epoch keeps its origins (a replay after a crash matches).
        std::fs::write(&path, "{\"b\":1}\n{\"b\":2}\n").expect("appended");
        let third = read(cfg).await;
        assert_eq!(third.out.len(), 1);
        assert_eq!(third.out[0].origin.map(|o| o.source), Some(new.source));
    }

    #[test]
    fn a_missing_file_fails_the_build() {
        let cfg: FileConfig = config(json!({"path": "/nonexistent/in.jsonl"}));
        let err = match cfg.build(&BuildContext::new(crate::testing::NAME)) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("built"),
        };
        assert_eq!(
            err,
            "cannot open `/nonexistent/in.jsonl`: No such file or directory (os error 2)"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg: FileConfig = config(json!({"path": dir.path()}));
        assert!(cfg.build(&BuildContext::new("f")).is_err(), "a directory");
    }

    #[test]
    fn validation() {
        let c: FileConfig = config(json!({"path": "", "batch_size": 0, "checkpoint": ""}));
        let paths: Vec<_> = c.validate().into_iter().map(|e| e.path.join(".")).collect();
        assert_eq!(paths, ["path", "batch_size", "checkpoint"]);
        assert!(serde_json::from_value::<FileConfig>(json!({"path": "x", "fmt": "csv"})).is_err());
    }
}
