//! `file_sink`: write records to a file as lines.

use async_trait::async_trait;
use flow_core::processor::{
    BuildContext, BuildError, ConfigError, Describe, Kind, Processor, ProcessorConfig,
    ProcessorError, Sink, SinkContext,
};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::write::{Commit, Lines, write_lines};

/// Write records to a file, one per line (JSON lines).
///
/// Each record's content is written followed by a newline: a record that was not modified keeps
/// its exact original bytes, a modified one is written as compact JSON. Each batch is one write;
/// records are acknowledged once it succeeded. When the file cannot be written, that is never a
/// record's fault: a full disk or quota (`ENOSPC`, `EDQUOT`) is retried with capped backoff,
/// continuing where the write stopped, while the flow waits; any other error (`EIO`, permission
/// denied, not a writable file) stops the flow with the error, the part of the batch already
/// written cut off again. Either way, records not written are never acknowledged, so their
/// source reads them again on the next run. Missing parent directories are created.
///
/// Exactly-once across crashes, for a regular file in `append` mode: after each batch, the
/// file's length and the positions of the records written are committed in
/// `.NAME.NODE.commit` beside the file (a line appended to a small log whose last whole line
/// counts), before the batch is acknowledged. On restart the file is cut
/// back to the committed length (what was written after the last commit goes) and the records
/// the source replays that the commit covers are skipped, so each record is written once. This
/// holds when a restart replays the same stream (a `file` source with a `checkpoint`, and a
/// `window_aggregate` with `state` and `event_time` below one) and the sink has one path back
/// to that source; otherwise a crash may write again what was written since the source's last
/// commit (at-least-once). Several sinks may append to one file (the cut spares what any of
/// them committed). See docs/reliability.md, "Exactly-once sinks".
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileSinkConfig {
    /// The file to write.
    pub path: String,
    /// Add to the end of the file if it exists; `false` truncates it at start.
    #[serde(default = "default_append")]
    pub append: bool,
    /// Flush to disk (fsync) after every batch: slower, but a batch is acknowledged only once it
    /// is durable.
    #[serde(default)]
    pub sync: bool,
}

fn default_append() -> bool {
    true
}

impl Describe for FileSinkConfig {
    const TYPE: &'static str = "file_sink";
    const KIND: Kind = Kind::Sink;
}

impl ProcessorConfig for FileSinkConfig {
    fn reads_values(&self) -> bool {
        false
    }

    fn outputs(&self) -> Vec<String> {
        Vec::new()
    }

    fn validate(&self) -> Vec<ConfigError> {
        if self.path.is_empty() {
            return vec![ConfigError::new(&["path"], "the path is empty")];
        }
        Vec::new()
    }

    fn build(&self, _: &BuildContext) -> Result<Processor, BuildError> {
        Ok(Processor::Sink(Box::new(FileSink(self.clone()))))
    }
}

struct FileSink(FileSinkConfig);

#[async_trait]
impl Sink for FileSink {
    async fn run(self: Box<Self>, ctx: SinkContext) -> Result<(), ProcessorError> {
        let cfg = self.0;
        let io = |what: &str| {
            let context = format!("{what} `{}`", cfg.path);
            move |source| ProcessorError::Io { context, source }
        };
        let path = std::path::Path::new(&cfg.path);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(io("creating the directory of"))?;
        }
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(cfg.append)
            .write(true)
            .truncate(!cfg.append)
            .open(path)
            .await
            .map_err(io("cannot open"))?;
        let meta = file.metadata().await.map_err(io("cannot read"))?;
        let mut len = meta.len();
        let mut ctx = ctx;
        let commit = if meta.is_file() {
            let commit = Commit::of(path, &ctx.name);
            let resume = if cfg.append {
                commit
                    .load()
                    .map_err(io("cannot read the commit record of"))?
            } else {
                commit
                    .remove()
                    .map_err(io("cannot remove the commit record of"))?;
                None
            };
            // Several sinks may append to one file: cut only what none of them committed.
            let longest = match resume {
                Some(_) => commit
                    .longest()
                    .map_err(io("cannot read the commit records of"))?,
                None => None,
            };
            match (resume, longest) {
                (Some(c), Some(cut)) if cut <= len => {
                    if cut < len {
                        // Written after the last commit: its records were not acknowledged,
                        // and their source replays them.
                        file.set_len(cut).await.map_err(io("cannot cut back"))?;
                        tracing::info!(
                            node = %ctx.name,
                            bytes = len - cut,
                            "cut off what was written after the last commit"
                        );
                        len = cut;
                    }
                    ctx.input.resume_after(c.written);
                }
                (Some(c), _) => tracing::warn!(
                    node = %ctx.name,
                    committed = c.len,
                    len,
                    "the file is shorter than its last commit (changed by someone else?): \
                     writing everything replayed again"
                ),
                (None, _) => {}
            }
            Some(commit)
        } else {
            None
        };
        let lines = Lines {
            target: file.into_std().await,
            name: format!("`{}`", cfg.path),
            destination: cfg.path.clone(),
            len,
            durable: cfg.sync,
            commit,
        };
        write_lines(lines, ctx).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{config, rec, sink, sink_ctx};
    use flow_core::record::Value;
    use serde_json::json;

    async fn write(path: &std::path::Path, append: bool, records: Vec<flow_core::record::Record>) {
        let cfg: FileSinkConfig = config(json!({"path": path, "append": append}));
        let (ctx, tx, _failures, metrics) = sink_ctx();
        let n = records.len() as u64;
        tx.send(records).await.expect("queued");
        drop(tx);
        sink(&cfg).run(ctx).await.expect("runs");
        assert_eq!(metrics.snapshot().sent, n);
    }

    #[tokio::test]
    async fn passes_bytes_through_and_reencodes_modified_records() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub/dir/out.jsonl");
        let mut modified = rec(r#"{"a":1}"#);
        if let Ok(Value::Object(o)) = modified.value_mut() {
            o.insert("b".into(), Value::from(true));
        }
        let original = r#"{"b":1,  "a":2.50, "z":"é"}"#;
        write(&path, true, vec![rec(original), modified]).await;
        let text = std::fs::read_to_string(&path).expect("written");
        assert_eq!(text, format!("{original}\n{{\"a\":1,\"b\":true}}\n"));
    }

    #[tokio::test]
    async fn appends_or_truncates() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("out.jsonl");
        std::fs::write(&path, "old\n").expect("seeded");
        write(&path, true, vec![rec("a")]).await;
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "old\na\n");
        write(&path, false, vec![rec("b"), rec("c")]).await;
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "b\nc\n");
    }

    /// Records of source 5 at these positions, a batch each as given.
    fn at(batches: &[std::ops::RangeInclusive<u64>]) -> Vec<Vec<flow_core::record::Record>> {
        batches
            .iter()
            .map(|b| {
                b.clone()
                    .map(|i| {
                        let mut r = rec(&format!("{{\"i\":{i}}}"));
                        r.origin = Some(flow_core::record::Origin { source: 5, seq: i });
                        r
                    })
                    .collect()
            })
            .collect()
    }

    async fn run_batches(path: &std::path::Path, batches: Vec<Vec<flow_core::record::Record>>) {
        let cfg: FileSinkConfig = config(json!({ "path": path }));
        let (ctx, tx, _failures, _metrics) = sink_ctx();
        for b in batches {
            tx.send(b).await.expect("queued");
        }
        drop(tx);
        sink(&cfg).run(ctx).await.expect("runs");
    }

    fn lines(upto: u64) -> String {
        (1..=upto).map(|i| format!("{{\"i\":{i}}}\n")).collect()
    }

    /// A crash after a commit, with more written after it (a torn batch): the restart cuts the
    /// file back to the commit and skips the replayed records it covers; every record is in the
    /// file once.
    #[tokio::test]
    async fn a_restart_cuts_back_to_the_commit_and_writes_replayed_records_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("out.jsonl");
        run_batches(&path, at(&[1..=3, 4..=6])).await;
        assert_eq!(std::fs::read_to_string(&path).expect("read"), lines(6));
        let commit = dir.path().join(".out.jsonl.under_test.commit");
        // One line per write, the last is the commit: both batches were waiting when the
        // sink started, so they went in one write with one commit.
        let log = std::fs::read_to_string(&commit).expect("committed");
        let c: Vec<serde_json::Value> = log
            .lines()
            .map(|l| serde_json::from_str(l).expect("json"))
            .collect();
        assert_eq!(c, [json!({"len": lines(6).len(), "written": {"5": 6}})]);
        // Written after the last commit when the process died: never acknowledged.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .expect("open");
        std::io::Write::write_all(&mut f, b"{\"i\":7}\n{\"i\"").expect("torn");
        // The source committed up to 1 and replays from 2.
        let mut replay = at(&[2..=5, 6..=8]);
        replay[1].push(rec("{\"no origin\":1}"));
        run_batches(&path, replay).await;
        assert_eq!(
            std::fs::read_to_string(&path).expect("read"),
            format!("{}{{\"no origin\":1}}\n", lines(8))
        );
        // `append: false` starts over, commit included.
        let cfg: FileSinkConfig = config(json!({ "path": path, "append": false }));
        let (ctx, tx, _failures, _metrics) = sink_ctx();
        for b in at(&[1..=2]) {
            tx.send(b).await.expect("queued");
        }
        drop(tx);
        sink(&cfg).run(ctx).await.expect("runs");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), lines(2));
    }

    /// Two sinks appending to one file: a restart of one cuts off only what neither committed.
    #[tokio::test]
    async fn a_restart_spares_what_another_sink_of_the_file_committed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("out.jsonl");
        let cfg: FileSinkConfig = config(json!({ "path": path }));
        let run = |node: &'static str, batches: Vec<Vec<flow_core::record::Record>>| {
            let cfg = cfg.clone();
            async move {
                let (mut ctx, tx, _failures, _metrics) = sink_ctx();
                ctx.name = node.into();
                for b in batches {
                    tx.send(b).await.expect("queued");
                }
                drop(tx);
                sink(&cfg).run(ctx).await.expect("runs");
            }
        };
        run("a", at(&[1..=2])).await;
        let mut b = at(&[1..=1]);
        b[0][0].origin = Some(flow_core::record::Origin { source: 6, seq: 1 });
        run("b", b).await;
        std::io::Write::write_all(
            &mut std::fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .expect("open"),
            b"{\"torn\"",
        )
        .expect("torn");
        run("a", at(&[2..=3])).await;
        assert_eq!(
            std::fs::read_to_string(&path).expect("read"),
            format!("{}{{\"i\":1}}\n{{\"i\":3}}\n", lines(2))
        );
    }

    /// Records of one batch with one ack token; the tracker says how the batch ended.
    fn tracked(n: usize) -> (flow_core::ack::AckTracker, Vec<flow_core::record::Record>) {
        let mut tracker = flow_core::ack::AckTracker::new();
        let t = tracker.token(0);
        let records = (0..n)
            .map(|i| rec(&format!("{{\"i\":{i}}}")).with_acks(flow_core::ack::Acks::one(t.clone())))
            .collect();
        (tracker, records)
    }

    /// A full device is the sink's problem, not the records': retried (the flow waits) until
    /// the flow is asked to stop; then the sink gives up and nothing is acknowledged.
    #[cfg(target_os = "linux")]
    #[tokio::test(start_paused = true)]
    async fn a_full_device_is_retried_and_a_stop_gives_up_without_acknowledging() {
        let cfg: FileSinkConfig = config(json!({"path": "/dev/full"}));
        let (ctx, tx, mut failures, metrics, stop) = crate::testing::sink_ctx_stoppable();
        let (mut tracker, records) = tracked(2);
        tx.send(records).await.expect("queued");
        let run = tokio::spawn(sink(&cfg).run(ctx));
        tokio::time::sleep(std::time::Duration::from_secs(120)).await;
        assert!(!run.is_finished(), "still retrying");
        assert!(tracker.try_next().is_none(), "nothing acknowledged");
        stop.cancel();
        let e = run.await.expect("joined").expect_err("gave up");
        assert!(matches!(e, ProcessorError::Stopped(_)), "{e}");
        assert!(e.to_string().contains("No space left on device"), "{e}");
        drop(tx);
        let f = tracker.next().await.expect("finished");
        assert!(!f.committable(), "{f:?}");
        assert!(crate::testing::records(&mut failures).await.is_empty());
        assert_eq!(metrics.snapshot().sent, 0);
    }

    /// A file that cannot be written for good (`EIO` from `/proc/version`) stops the flow with
    /// the error, and nothing is acknowledged.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn an_unwritable_file_fails_the_sink_and_acknowledges_nothing() {
        let cfg: FileSinkConfig = config(json!({"path": "/proc/version"}));
        let (ctx, tx, mut failures, _, _) = crate::testing::sink_ctx_stoppable();
        let (mut tracker, records) = tracked(3);
        tx.send(records).await.expect("queued");
        drop(tx);
        let e = sink(&cfg).run(ctx).await.expect_err("fails");
        assert!(e.to_string().contains("/proc/version"), "{e}");
        let f = tracker.next().await.expect("finished");
        assert!(!f.committable(), "{f:?}");
        assert!(crate::testing::records(&mut failures).await.is_empty());
    }

    #[test]
    fn validation() {
        let c: FileSinkConfig = config(json!({"path": ""}));
        assert_eq!(c.validate()[0].path, ["path"]);
        let c: FileSinkConfig = config(json!({"path": "x"}));
        assert!(c.append && !c.sync);
        assert!(c.outputs().is_empty());
    }
}
