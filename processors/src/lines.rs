//! Line-oriented input, shared by the `file` and `stdin` sources: chunked reading, zero-copy line
//! splitting, decoding (JSON lines, raw lines, CSV) and the batch / acknowledgement / commit loop.
//!
//! Lines are cut out of large read chunks as [`Bytes`] slices, so a record's content shares the
//! chunk's allocation instead of being copied. `\n` and `\r\n` both end a line, a last line without
//! a newline is still a line, and empty lines are skipped (they still count in line numbers and
//! offsets).

use std::collections::BTreeMap;
use std::future::Future;

use bytes::{Bytes, BytesMut};
use std::sync::Arc;

use flow_core::ack::{AckToken, AckTracker, Acks, Finished, InOrderCommit};
use flow_core::processor::{Output, PortId, ProcessorError, SourceContext};
use flow_core::record::{JsonView, Origin, Record, Value};
use flow_core::runtime::emit::Emitter;
use flow_core::runtime::metrics::NodeMetrics;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt};

/// How much is read at once.
const CHUNK: usize = 64 * 1024;

/// How each line becomes a record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// One JSON document per line (JSON lines). A line that is not valid JSON goes to `failure`.
    #[default]
    Json,
    /// Each line is a record as is: its content is the raw line, its structured view the string.
    Lines,
    /// CSV with a header line; each row becomes an object of strings keyed by the header. A
    /// quoted field may not contain a line break.
    Csv,
}

/// A position in the input: the byte offset after the last line and how many lines that is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// Bytes from the start of the input.
    pub offset: u64,
    /// Lines from the start of the input.
    pub line: u64,
}

/// Cuts an input into chunks that end on a line boundary.
pub(crate) struct Splitter {
    buf: BytesMut,
    /// How much of `buf` is known to hold no newline.
    scanned: usize,
    eof: bool,
}

impl Splitter {
    pub(crate) fn new() -> Self {
        Self {
            buf: BytesMut::new(),
            scanned: 0,
            eof: false,
        }
    }

    /// The next run of whole lines (the last line may lack its newline at the end of input);
    /// `None` at the end. Cancel-safe: a cancelled call loses no data.
    pub(crate) async fn next_chunk<R: AsyncRead + Unpin>(
        &mut self,
        reader: &mut R,
    ) -> std::io::Result<Option<Bytes>> {
        loop {
            if let Some(i) = memchr::memrchr(b'\n', &self.buf[self.scanned..]) {
                let end = self.scanned + i + 1;
                self.scanned = 0;
                return Ok(Some(self.buf.split_to(end).freeze()));
            }
            self.scanned = self.buf.len();
            if self.eof {
                self.scanned = 0;
                return Ok((!self.buf.is_empty()).then(|| self.buf.split().freeze()));
            }
            self.buf.reserve(CHUNK);
            if reader.read_buf(&mut self.buf).await? == 0 {
                self.eof = true;
            }
        }
    }
}

/// The lines of a chunk: each line without its line ending, and the bytes it took with it.
pub(crate) fn split_lines(chunk: &Bytes) -> impl Iterator<Item = (Bytes, u64)> + '_ {
    let mut start = 0;
    std::iter::from_fn(move || {
        if start >= chunk.len() {
            return None;
        }
        let (end, next) = match memchr::memchr(b'\n', &chunk[start..]) {
            Some(i) => (start + i, start + i + 1),
            None => (chunk.len(), chunk.len()),
        };
        let content_end = if end > start && chunk[end - 1] == b'\r' {
            end - 1
        } else {
            end
        };
        let line = chunk.slice(start..content_end);
        let taken = (next - start) as u64;
        start = next;
        Some((line, taken))
    })
}

/// What a line became.
pub(crate) enum Decoded {
    /// A record.
    Record(Record),
    /// Not a record (the CSV header).
    Skip,
    /// A line that could not be read, as a record over its raw bytes, and why.
    Error(Record, String),
}

/// Turns lines into records.
pub(crate) struct Decoder {
    format: Format,
    json_view: JsonView,
    header: Option<Vec<String>>,
}

impl Decoder {
    pub(crate) fn new(format: Format, json_view: JsonView) -> Self {
        Self {
            format,
            json_view,
            header: None,
        }
    }

    pub(crate) fn decode(&mut self, line: Bytes) -> Decoded {
        match self.format {
            Format::Json => match Record::json(line, self.json_view) {
                Ok(r) => Decoded::Record(r),
                Err((r, e)) => Decoded::Error(r, e.to_string()),
            },
            Format::Lines => Decoded::Record(Record::from_text(line)),
            Format::Csv => self.csv(line),
        }
    }

    fn csv(&mut self, line: Bytes) -> Decoded {
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .from_reader(line.as_ref());
        let mut row = csv::StringRecord::new();
        if let Err(e) = reader.read_record(&mut row) {
            return Decoded::Error(Record::from_bytes(line), format!("invalid CSV: {e}"));
        }
        let Some(header) = &self.header else {
            self.header = Some(row.iter().map(str::to_owned).collect());
            return Decoded::Skip;
        };
        if row.len() != header.len() {
            let msg = format!(
                "row has {} fields, the header has {}",
                row.len(),
                header.len()
            );
            return Decoded::Error(Record::from_bytes(line), msg);
        }
        let object = header
            .iter()
            .zip(row.iter())
            .map(|(k, v)| (k.as_str().into(), Value::from(v)))
            .collect();
        Decoded::Record(Record::from_value(Value::Object(object)))
    }
}

/// Where a source keeps its committed position.
pub(crate) trait Checkpoint: Send {
    /// The committed position advanced to `pos`; `last` on the final call, which must persist.
    fn save(
        &mut self,
        pos: Position,
        last: bool,
    ) -> impl Future<Output = Result<(), ProcessorError>> + Send;
}

/// No checkpoint (stdin).
pub(crate) struct NoCheckpoint;

impl Checkpoint for NoCheckpoint {
    async fn save(&mut self, _: Position, _: bool) -> Result<(), ProcessorError> {
        Ok(())
    }
}

/// How to read one input.
pub(crate) struct LineInput<'a> {
    pub format: Format,
    /// How JSON lines are read.
    pub json_view: JsonView,
    pub batch_size: usize,
    /// Send what was read after every read instead of waiting for a full batch (interactive
    /// input).
    pub flush_each_read: bool,
    /// Where reading starts (a resumed checkpoint).
    pub start: Position,
    /// The CSV header line when reading does not start at the top of the input.
    pub header: Option<Bytes>,
    /// The attribute a failed record's line number goes to (`file.line`).
    pub line_attribute: &'a str,
}

/// Fills batches, sends them with one ack token each, and commits in order as they finish.
struct Batcher {
    pending: Output,
    token: Option<AckToken>,
    len: usize,
    tracker: AckTracker,
    seq: u64,
    ends: BTreeMap<u64, Position>,
    commit: InOrderCommit<Position>,
    metrics: Arc<NodeMetrics>,
}

impl Batcher {
    /// The token of the batch being filled.
    fn token(&mut self) -> AckToken {
        let (tracker, seq) = (&mut self.tracker, self.seq);
        self.token.get_or_insert_with(|| tracker.token(seq)).clone()
    }

    /// Send the batch being filled, which ends at `end`.
    async fn send(&mut self, out: &mut Emitter, end: Position) -> Result<(), ProcessorError> {
        let Some(token) = self.token.take() else {
            return Ok(());
        };
        self.ends.insert(self.seq, end);
        self.seq += 1;
        drop(token);
        self.metrics.add_received(self.len as u64);
        self.len = 0;
        out.flush(&mut self.pending)
            .await
            .map_err(|e| ProcessorError::Other(e.to_string()))
    }

    /// A batch finished: the new committed position, if it advanced.
    fn finished(&mut self, f: Finished) -> Option<Position> {
        if !f.committable() {
            // Abandoned downstream: the checkpoint stays before it.
            return None;
        }
        let end = self.ends.remove(&f.seq)?;
        let p = self.commit.finish(f.seq, end)?;
        self.metrics
            .set_status("committed_offset", serde_json::json!(p.offset));
        self.metrics
            .set_status("committed_lines", serde_json::json!(p.line));
        Some(p)
    }
}

/// Read `reader` to its end (or until shutdown), emitting batches of records with one ack token
/// each, and commit in order as batches finish. Returns the committed position once every
/// emitted batch finished.
pub(crate) async fn run<R, C>(
    input: LineInput<'_>,
    reader: &mut R,
    ctx: SourceContext,
    checkpoint: &mut C,
) -> Result<Position, ProcessorError>
where
    R: AsyncRead + Unpin + Send,
    C: Checkpoint,
{
    let SourceContext {
        name,
        mut out,
        shutdown,
        metrics,
    } = ctx;
    metrics.set_status("committed_offset", serde_json::json!(input.start.offset));
    metrics.set_status("committed_lines", serde_json::json!(input.start.line));
    let mut decoder = Decoder::new(input.format, input.json_view);
    if let Some(h) = input.header {
        decoder.decode(h);
    }
    let source_id = Origin::source_id(&name);
    let mut b = Batcher {
        tracker: AckTracker::named(name.clone()),
        pending: Output::new(name, out.port_count()),
        token: None,
        len: 0,
        seq: 0,
        ends: BTreeMap::new(),
        commit: InOrderCommit::new(),
        metrics,
    };
    let mut committed = input.start;
    let mut pos = input.start;
    let mut splitter = Splitter::new();
    loop {
        let chunk = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            c = splitter.next_chunk(reader) => c.map_err(|source| ProcessorError::Io {
                context: "reading input".into(),
                source,
            })?,
        };
        let Some(chunk) = chunk else { break };
        for (line, taken) in split_lines(&chunk) {
            pos.offset += taken;
            pos.line += 1;
            if line.is_empty() {
                continue;
            }
            let token = b.token();
            match decoder.decode(line) {
                Decoded::Record(mut r) => {
                    r.origin = Some(Origin {
                        source: source_id,
                        seq: pos.line,
                    });
                    b.pending
                        .push(PortId::DEFAULT, r.with_acks(Acks::one(token)));
                }
                Decoded::Skip => continue,
                Decoded::Error(r, msg) => {
                    let mut r = r.with_acks(Acks::one(token));
                    r.set_attribute(input.line_attribute, pos.line.to_string());
                    b.pending.fail(r, &format!("line {}: {msg}", pos.line));
                }
            }
            b.len += 1;
            if b.len >= input.batch_size {
                b.send(&mut out, pos).await?;
            }
        }
        if input.flush_each_read {
            b.send(&mut out, pos).await?;
        }
        while let Some(f) = b.tracker.try_next() {
            if let Some(p) = b.finished(f) {
                committed = p;
                checkpoint.save(p, false).await?;
            }
        }
    }
    b.send(&mut out, pos).await?;
    // Let the flow drain, then wait for every batch.
    drop(out);
    while let Some(f) = b.tracker.next().await {
        if let Some(p) = b.finished(f) {
            committed = p;
        }
    }
    checkpoint.save(committed, true).await?;
    Ok(committed)
}
