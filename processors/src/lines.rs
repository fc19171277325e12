//! Line-oriented input, shared by the `file` and `stdin` sources: chunked reading, zero-copy line
//! splitting, decoding (JSON lines, raw lines, CSV) and the batch / acknowledgement / commit loop.
//!
//! Lines are cut out of large read chunks as [`Bytes`] slices, so a record's content shares the
//! chunk's allocation instead of being copied. `\n` and `\r\n` both end a line, a last line without
//! a newline is still a line, and blank lines (empty, or only spaces and tabs) are skipped in every
//! format (they still count in line numbers and offsets). A line longer than `max_record_size`
//! goes to `failure` with only its first bytes: it is skipped to its end without being held in
//! memory. JSON lines from a file are decoded a chunk at a time on the runtime's workers, a few
//! chunks ahead, and taken in the input's order.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;

use bytes::{Bytes, BytesMut};
use bytesize::ByteSize;
use std::sync::Arc;

use flow_core::ack::{AckToken, AckTracker, Acks, Finished, InOrderCommit};
use flow_core::processor::{Output, PortId, ProcessorError, SourceContext};
use flow_core::record::{Indexer, JsonView, Origin, Record, RecordId, Value};
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
    /// Each line is a record as is (blank ones are skipped): its content is the raw line, its
    /// structured view the string.
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
    /// How many times the input was found shorter than the checkpoint and read anew (a file
    /// truncated or replaced). Part of the records' origin: a restarted sink that skips what
    /// it already wrote by position must not take the new input's lines for the old ones.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub epoch: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// What the splitter read next.
#[derive(Debug)]
pub(crate) enum Chunk {
    /// A run of whole lines (the last one may lack its newline at the end of input).
    Lines(Bytes),
    /// A line over the limit, skipped without holding it: its first bytes, its size (without
    /// its line ending) and the bytes it took with its line ending.
    Oversized { start: Bytes, size: u64, taken: u64 },
}

/// A line over the limit being skipped.
struct Skipping {
    start: Bytes,
    size: u64,
}

/// Cuts an input into chunks that end on a line boundary. A line longer than `max_line` is not
/// held: once that many bytes of it are buffered, the rest is read and discarded up to its
/// newline, so the buffer never grows far beyond `max_line` (plus one read).
pub(crate) struct Splitter {
    buf: BytesMut,
    /// How much of `buf` is known to hold no newline.
    scanned: usize,
    eof: bool,
    max_line: usize,
    skipping: Option<Skipping>,
}

impl Splitter {
    pub(crate) fn new(max_line: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            scanned: 0,
            eof: false,
            max_line,
            skipping: None,
        }
    }

    /// The buffer's capacity: what the splitter holds however long the lines are.
    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// The next run of whole lines, or a line over the limit; `None` at the end. Cancel-safe:
    /// a cancelled call loses no data.
    pub(crate) async fn next_chunk<R: AsyncRead + Unpin>(
        &mut self,
        reader: &mut R,
    ) -> std::io::Result<Option<Chunk>> {
        loop {
            if let Some(skip) = &mut self.skipping {
                // Discard up to the end of the line; the bytes after it are kept.
                if let Some(i) = memchr::memchr(b'\n', &self.buf) {
                    let size = skip.size + i as u64;
                    let _ = self.buf.split_to(i + 1);
                    let start = std::mem::take(&mut skip.start);
                    self.skipping = None;
                    return Ok(Some(Chunk::Oversized {
                        start,
                        size,
                        taken: size + 1,
                    }));
                }
                skip.size += self.buf.len() as u64;
                self.buf.clear();
                if self.eof {
                    let (start, size) = (std::mem::take(&mut skip.start), skip.size);
                    self.skipping = None;
                    return Ok(Some(Chunk::Oversized {
                        start,
                        size,
                        taken: size,
                    }));
                }
            } else {
                if let Some(i) = memchr::memrchr(b'\n', &self.buf[self.scanned..]) {
                    let end = self.scanned + i + 1;
                    self.scanned = 0;
                    return Ok(Some(Chunk::Lines(self.buf.split_to(end).freeze())));
                }
                // What is buffered is all one line (whole lines before it were returned).
                if self.buf.len() > self.max_line {
                    let kept = self.buf.len().min(crate::record_size::KEPT);
                    self.skipping = Some(Skipping {
                        start: Bytes::copy_from_slice(&self.buf[..kept]),
                        size: self.buf.len() as u64,
                    });
                    self.buf.clear();
                    self.scanned = 0;
                    continue;
                }
                self.scanned = self.buf.len();
                if self.eof {
                    self.scanned = 0;
                    return Ok(
                        (!self.buf.is_empty()).then(|| Chunk::Lines(self.buf.split().freeze()))
                    );
                }
            }
            self.buf.reserve(CHUNK);
            if reader.read_buf(&mut self.buf).await? == 0 {
                self.eof = true;
            }
        }
    }
}

/// Whether a line holds nothing but whitespace (space, tab, CR): such a line is skipped like an
/// empty one, by every line-oriented input.
pub(crate) fn is_blank(line: &[u8]) -> bool {
    line.iter()
        .all(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
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
#[derive(Clone)]
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
        self.decode_numbered(line, None, None)
    }

    /// [`Decoder::decode`], a JSON line's record numbered `id` when given (see
    /// [`Record::json_numbered`]), its fields indexed into `indexer`'s block when given
    /// (the caller attaches it to the records: see [`Indexer`]).
    fn decode_numbered(
        &mut self,
        line: Bytes,
        id: Option<RecordId>,
        indexer: Option<&mut Indexer>,
    ) -> Decoded {
        match self.format {
            Format::Json => {
                let id = id.unwrap_or_else(RecordId::next);
                let record = match indexer {
                    Some(ix) => ix.json(id, line, self.json_view),
                    None => Record::json_numbered(id, line, self.json_view),
                };
                match record {
                    Ok(r) => Decoded::Record(r),
                    Err((r, e)) => Decoded::Error(r, e.to_string()),
                }
            }
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
    /// The longest line taken; a longer one goes to `failure`.
    pub max_record_size: ByteSize,
    /// The input's size in bytes, when known (a file): the source publishes its progress.
    pub size: Option<u64>,
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
    size: Option<u64>,
}

impl Batcher {
    /// The token of the batch being filled.
    fn token(&mut self) -> AckToken {
        let (tracker, seq) = (&mut self.tracker, self.seq);
        self.token.get_or_insert_with(|| tracker.token(seq)).clone()
    }

    /// A line that could not be read goes to `failure`, with its line number.
    fn fail(&mut self, r: Record, msg: &str, pos: Position, line_attribute: &str) {
        let token = self.token();
        let mut r = r.with_acks(Acks::one(token));
        r.set_attribute(line_attribute, pos.line.to_string());
        self.pending.fail(r, &format!("line {}: {msg}", pos.line));
        self.len += 1;
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
        if let Some(size) = self.size {
            self.metrics.set_progress(end.offset, size);
        }
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

/// How many chunks of JSON lines are decoded ahead of the one being taken (one more is read
/// and handed out while the source waits for the oldest).
const DECODING_AHEAD: usize = 2;

/// A chunk's lines, cut and decoded: what each line became, in order, and the records made
/// (kept apart, so that a record moves once more on its way into a batch, not with every
/// line).
struct Cut {
    /// Each line's bytes taken (with its line ending) and what it became.
    lines: Vec<(u64, Line)>,
    /// The records of `Record` and `Failed` lines, in order.
    records: Vec<Record>,
    /// The messages of `Failed` lines, in order.
    errors: Vec<String>,
}

/// What a line became.
#[derive(Clone, Copy)]
enum Line {
    /// Blank (skipped, still counted), or not a record (a CSV header).
    Skip,
    /// A record.
    Record,
    /// A line that could not be read (over the limit: its first bytes), for `failure`.
    Failed,
}

impl Cut {
    /// One line that could not be read.
    fn one_failed(taken: u64, r: Record, msg: String) -> Self {
        Self {
            lines: vec![(taken, Line::Failed)],
            records: vec![r],
            errors: vec![msg],
        }
    }

    fn failed(&mut self, r: Record, msg: String) -> Line {
        self.records.push(r);
        self.errors.push(msg);
        Line::Failed
    }
}

/// Cuts chunks into lines and decodes them.
#[derive(Clone, Copy)]
struct Cutter {
    max_line: usize,
    max_record_size: ByteSize,
}

impl Cutter {
    /// The lines of `chunk`, decoded.
    fn cut(self, chunk: &Bytes, decoder: &mut Decoder) -> Cut {
        self.cut_counted(chunk, line_count(chunk), decoder, None)
    }

    /// The `n` lines of `chunk` (see [`line_count`]), decoded; with `ids`, the `i`th line's
    /// record is numbered `ids + i` (a block of `n` ids taken for the chunk).
    fn cut_counted(
        self,
        chunk: &Bytes,
        n: usize,
        decoder: &mut Decoder,
        ids: Option<RecordId>,
    ) -> Cut {
        let mut cut = Cut {
            lines: Vec::with_capacity(n),
            records: Vec::with_capacity(n),
            errors: Vec::new(),
        };
        // The chunk's records' fields indexed in one block (see `Indexer`).
        let mut indexer = Indexer::for_bytes(chunk.len());
        for (i, (line, taken)) in split_lines(chunk).enumerate() {
            let id = ids.map(|first| RecordId(first.0.wrapping_add(i as u64)));
            let kind = if is_blank(&line) {
                Line::Skip
            } else if line.len() > self.max_line {
                let (r, msg) = crate::record_size::oversized_numbered(
                    id,
                    &line,
                    line.len() as u64,
                    self.max_record_size,
                    "the line",
                );
                cut.failed(r, msg)
            } else {
                match decoder.decode_numbered(line, id, Some(&mut indexer)) {
                    Decoded::Record(r) => {
                        cut.records.push(r);
                        Line::Record
                    }
                    Decoded::Skip => Line::Skip,
                    Decoded::Error(r, msg) => cut.failed(r, msg),
                }
            };
            cut.lines.push((taken, kind));
        }
        indexer.attach(&mut cut.records);
        cut
    }
}

/// What the read loop got next.
enum Next {
    /// A read: a chunk, or the end.
    Read(Option<Chunk>),
    /// The oldest chunk being decoded, decoded.
    Decoded(Result<Cut, tokio::task::JoinError>),
}

/// How many lines `chunk` holds (the last may lack its newline).
fn line_count(chunk: &[u8]) -> usize {
    memchr::memchr_iter(b'\n', chunk).count()
        + usize::from(chunk.last().is_some_and(|&b| b != b'\n'))
}

/// The lines a decoding task cut (a task that panicked is the source's failure).
fn decoded(done: Result<Cut, tokio::task::JoinError>) -> Result<Cut, ProcessorError> {
    done.map_err(|e| ProcessorError::Other(format!("decoding input: {e}")))
}

/// Takes decoded lines in the input's order into batches.
struct Taker<'a> {
    /// The position after the last line taken.
    pos: Position,
    source_id: u32,
    batch_size: usize,
    line_attribute: &'a str,
}

impl Taker<'_> {
    async fn take(
        &mut self,
        b: &mut Batcher,
        out: &mut Emitter,
        cut: Cut,
    ) -> Result<(), ProcessorError> {
        let mut records = cut.records.into_iter();
        let mut errors = cut.errors.into_iter();
        for (taken, line) in cut.lines {
            self.pos.offset += taken;
            self.pos.line += 1;
            match line {
                Line::Skip => continue,
                Line::Failed => {
                    if let (Some(r), Some(msg)) = (records.next(), errors.next()) {
                        b.fail(r, &msg, self.pos, self.line_attribute);
                    }
                }
                Line::Record => {
                    if let Some(mut r) = records.next() {
                        r.origin = Some(Origin {
                            source: self.source_id,
                            seq: self.pos.line,
                        });
                        let token = b.token();
                        b.pending
                            .push(PortId::DEFAULT, r.with_acks(Acks::one(token)));
                        b.len += 1;
                    }
                }
            }
            if b.len >= self.batch_size {
                b.send(out, self.pos).await?;
            }
        }
        Ok(())
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
    let source_id = match input.start.epoch {
        0 => Origin::source_id(&name),
        e => Origin::source_id(&format!("{name}#{e}")),
    };
    let mut b = Batcher {
        tracker: AckTracker::named(name.clone()).counting(metrics.acks()),
        pending: Output::new(name, out.port_count()),
        token: None,
        len: 0,
        seq: 0,
        ends: BTreeMap::new(),
        commit: InOrderCommit::new(),
        metrics,
        size: input.size,
    };
    if let Some(size) = input.size {
        b.metrics.set_progress(input.start.offset, size);
    }
    let mut committed = input.start;
    let max_line = crate::record_size::bytes(input.max_record_size);
    let mut splitter = Splitter::new(max_line);
    let mut taker = Taker {
        pos: input.start,
        source_id,
        batch_size: input.batch_size,
        line_attribute: input.line_attribute,
    };
    let cutter = Cutter {
        max_line,
        max_record_size: input.max_record_size,
    };
    // JSON lines are decoded chunk by chunk in tasks of their own, up to a few chunks ahead
    // of the one being taken, so that a source whose parsing is the flow's slowest part uses
    // the other cores too. Chunks are taken in the input's order, each as soon as it is
    // decoded (a pipe that delivers a line now and then is not held up waiting for more).
    // Interactive input (each read sent at once), CSV (its header) and raw lines (nothing
    // to decode) are cut here.
    let ahead = if input.format == Format::Json && !input.flush_each_read {
        DECODING_AHEAD
    } else {
        0
    };
    let mut decoding: VecDeque<tokio::task::JoinHandle<Cut>> = VecDeque::new();
    loop {
        let next = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            Some(done) = async {
                match decoding.front_mut() {
                    Some(job) => Some(job.await),
                    None => None,
                }
            } => Next::Decoded(done),
            c = splitter.next_chunk(reader), if decoding.len() <= ahead => {
                Next::Read(c.map_err(|source| ProcessorError::Io {
                    context: "reading input".into(),
                    source,
                })?)
            }
        };
        match next {
            Next::Decoded(done) => {
                decoding.pop_front();
                taker.take(&mut b, &mut out, decoded(done)?).await?;
            }
            Next::Read(None) => break,
            Next::Read(Some(Chunk::Lines(lines))) if ahead > 0 => {
                // The chunk's ids are taken here, in the input's order: every record of
                // the input numbered in order whichever thread decodes it, consecutive within
                // a chunk (provenance keeps ids as runs), one count shared between threads
                // touched once a chunk, not once a record.
                let n = line_count(&lines);
                let ids = RecordId::block(n as u64);
                let mut d = decoder.clone();
                decoding.push_back(tokio::spawn(async move {
                    cutter.cut_counted(&lines, n, &mut d, Some(ids))
                }));
                continue;
            }
            Next::Read(Some(Chunk::Lines(lines))) => {
                let cut = cutter.cut(&lines, &mut decoder);
                taker.take(&mut b, &mut out, cut).await?;
                if input.flush_each_read {
                    b.send(&mut out, taker.pos).await?;
                }
            }
            Next::Read(Some(Chunk::Oversized { start, size, taken })) => {
                // After every line before it.
                while let Some(job) = decoding.pop_front() {
                    taker.take(&mut b, &mut out, decoded(job.await)?).await?;
                }
                let (r, msg) =
                    crate::record_size::oversized(&start, size, input.max_record_size, "the line");
                taker
                    .take(&mut b, &mut out, Cut::one_failed(taken, r, msg))
                    .await?;
                if input.flush_each_read {
                    b.send(&mut out, taker.pos).await?;
                }
            }
        }
        while let Some(f) = b.tracker.try_next() {
            if let Some(p) = b.finished(f) {
                committed = p;
                checkpoint.save(p, false).await?;
            }
        }
    }
    // What was read is taken (at shutdown too: it is decoded already, and the position
    // moves past it only as it is taken).
    while let Some(job) = decoding.pop_front() {
        taker.take(&mut b, &mut out, decoded(job.await)?).await?;
    }
    let pos = taker.pos;
    b.send(&mut out, pos).await?;
    if let Some(size) = input.size {
        b.metrics.set_progress(pos.offset, size);
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{records, source_ctx};
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use tokio::io::ReadBuf;

    /// `n` bytes of `x`, made as they are read (the test holds none of them).
    struct Xs(u64);

    impl AsyncRead for Xs {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            let n = usize::try_from(self.0)
                .unwrap_or(usize::MAX)
                .min(buf.remaining());
            buf.initialize_unfilled_to(n).fill(b'x');
            buf.advance(n);
            self.0 -= n as u64;
            Poll::Ready(Ok(()))
        }
    }

    const MB50: u64 = 50_000_000;

    /// `before`, a line of `MB50` bytes (no newline), then `after`.
    fn with_a_huge_line(before: &'static str, after: &'static str) -> impl AsyncRead + Unpin {
        std::io::Cursor::new(before)
            .chain(Xs(MB50))
            .chain(std::io::Cursor::new(after))
    }

    #[tokio::test]
    async fn a_line_over_the_limit_is_skipped_without_being_held() {
        let max = 1024 * 1024;
        let mut reader = with_a_huge_line("a\n", "\r\nb\n");
        let mut s = Splitter::new(max);
        let mut got = Vec::new();
        let mut most_held = 0;
        while let Some(c) = s.next_chunk(&mut reader).await.expect("reads") {
            most_held = most_held.max(s.capacity());
            got.push(match c {
                Chunk::Lines(l) => format!("lines {:?}", String::from_utf8_lossy(&l)),
                Chunk::Oversized { start, size, taken } => {
                    assert!(start.iter().all(|b| *b == b'x'));
                    format!("oversized {} {size} {taken}", start.len())
                }
            });
        }
        assert_eq!(
            got,
            [
                "lines \"a\\n\"".to_owned(),
                format!("oversized 1024 {} {}", MB50 + 1, MB50 + 2),
                "lines \"b\\n\"".to_owned(),
            ]
        );
        // The 50 MB line was never held: the buffer stays near the limit.
        assert!(most_held <= 2 * max + 4 * CHUNK, "held {most_held} bytes");

        // A last line over the limit, without a newline.
        let mut reader = std::io::Cursor::new("a\n").chain(Xs(MB50));
        let mut s = Splitter::new(max);
        let mut sizes = Vec::new();
        while let Some(c) = s.next_chunk(&mut reader).await.expect("reads") {
            if let Chunk::Oversized { size, taken, .. } = c {
                sizes.push((size, taken));
            }
        }
        assert_eq!(sizes, [(MB50, MB50)]);
    }

    /// A chunk's JSON objects come out indexed (one block for the chunk), numbered by the
    /// chunk's ids or not, with blank, failed, oversized and non-object lines between them.
    #[test]
    fn a_chunks_objects_are_indexed() {
        let chunk = Bytes::from_static(
            b"{\"a\":1}\n\n{\"a\":2,}\n[3]\n{\"a\":\"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"}\n{\"a\":4}",
        );
        for ids in [None, Some(RecordId(1_000))] {
            let cutter = Cutter {
                max_line: 32,
                max_record_size: ByteSize::b(32),
            };
            let mut decoder = Decoder::new(Format::Json, JsonView::Fields);
            let cut = cutter.cut_counted(&chunk, line_count(&chunk), &mut decoder, ids);
            assert_eq!(cut.errors.len(), 2, "{:?}", cut.errors);
            let read: Vec<_> = cut
                .records
                .iter()
                .map(|r| r.fields().map(|f| f.get_scalar("a")))
                .collect();
            assert_eq!(
                read,
                // (a failed line's record is among them, without an index)
                [
                    Some(flow_core::record::Scalar::Int(1)),
                    None,
                    None,
                    None,
                    Some(flow_core::record::Scalar::Int(4))
                ],
                "{ids:?}"
            );
        }
    }

    async fn read(
        format: Format,
        max: ByteSize,
        reader: &mut (impl AsyncRead + Unpin + Send),
    ) -> (Vec<Record>, Vec<Record>, Position) {
        let mut h = source_ctx(1);
        let input = LineInput {
            format,
            json_view: JsonView::Eager,
            batch_size: 2,
            flush_each_read: false,
            start: Position::default(),
            header: None,
            line_attribute: "test.line",
            max_record_size: max,
            size: None,
        };
        let mut checkpoint = NoCheckpoint;
        let (mut failed_rx, mut out_rx) = (h.ports.remove(0), h.ports.remove(0));
        let (pos, out, failed) = tokio::join!(
            run(input, reader, h.ctx, &mut checkpoint),
            records(&mut out_rx),
            records(&mut failed_rx),
        );
        (out, failed, pos.expect("runs"))
    }

    fn texts(records: &mut [Record]) -> Vec<String> {
        records
            .iter_mut()
            .map(|r| String::from_utf8_lossy(r.content()).into_owned())
            .collect()
    }

    #[tokio::test]
    async fn an_oversized_line_goes_to_failure_and_the_lines_around_it_are_delivered() {
        let mut reader = with_a_huge_line("{\"n\":1}\n", "\n{\"n\":2}\n");
        let (mut out, mut failed, pos) = read(Format::Json, ByteSize::mib(1), &mut reader).await;
        assert_eq!(texts(&mut out), [r#"{"n":1}"#, r#"{"n":2}"#]);
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].content().len(), crate::record_size::KEPT);
        let attrs = &failed[0].attributes();
        assert_eq!(attrs.get("test.line").map(String::as_str), Some("2"));
        assert_eq!(
            attrs.get("error.message").map(String::as_str),
            Some(
                "line 2: the line is 50000000 bytes, over max_record_size (1.0 MiB); only its \
                 first 1024 bytes are kept"
            )
        );
        assert_eq!(
            pos,
            Position {
                offset: 8 + MB50 + 1 + 8,
                line: 3,
                epoch: 0
            }
        );

        // A line over the limit that arrives whole in one read.
        let mut reader = std::io::Cursor::new("{\"n\":1}\n\"0123456789\"\n{\"n\":2}\n");
        let (mut out, mut failed, _) = read(Format::Json, ByteSize::b(9), &mut reader).await;
        assert_eq!(texts(&mut out), [r#"{"n":1}"#, r#"{"n":2}"#]);
        assert_eq!(texts(&mut failed), ["\"0123456789\""]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lines_decoded_on_several_threads_come_out_in_order() {
        // Enough lines for many reads, decoded ahead on both workers, with lines that are
        // not JSON and blank ones among them: every record and every failure comes out in
        // the input's order, at its line, and the position is the input's end.
        let (mut text, mut want_out, mut want_failed) = (String::new(), Vec::new(), Vec::new());
        for i in 1..=100_000u64 {
            if i % 11 == 0 {
                text.push_str(" \n");
            } else if i % 13 == 0 {
                // Over the limit.
                text.push_str(&format!("{{\"n\":{i},\"pad\":\"{}\"}}\n", "p".repeat(80)));
                want_failed.push(i.to_string());
            } else if i % 7 == 0 {
                text.push_str(&format!("{{\"n\":{i}\n"));
                want_failed.push(i.to_string());
            } else {
                let line = format!("{{\"n\":{i}}}");
                text.push_str(&line);
                text.push('\n');
                want_out.push(line);
            }
        }
        assert!(text.len() > 10 * CHUNK);
        let mut reader = std::io::Cursor::new(text.clone());
        let (mut out, failed, pos) = read(Format::Json, ByteSize::b(64), &mut reader).await;
        assert_eq!(texts(&mut out), want_out);
        let lines: Vec<&str> = failed
            .iter()
            .map(|r| r.attributes().get("test.line").map_or("", String::as_str))
            .collect();
        assert_eq!(lines, want_failed);
        // Every record, delivered or failed, numbered in the input's order, whichever worker
        // decoded it.
        let mut by_line: Vec<(u64, RecordId)> = out
            .iter()
            .map(|r| r.origin.map_or(0, |o| o.seq))
            .zip(out.iter().map(Record::id))
            .chain(failed.iter().map(|r| {
                let line = r.attributes().get("test.line").and_then(|l| l.parse().ok());
                (line.unwrap_or(0), r.id())
            }))
            .collect();
        by_line.sort();
        assert!(
            by_line
                .windows(2)
                .all(|w| w[0].0 < w[1].0 && w[0].1 < w[1].1)
        );
        assert_eq!(
            pos,
            Position {
                offset: text.len() as u64,
                line: 100_000,
                epoch: 0
            }
        );
    }

    #[tokio::test]
    async fn blank_lines_are_skipped_in_every_format() {
        for (format, text, want) in [
            (
                Format::Json,
                "{\"n\":1}\n  \n\t\r\n\n{\"n\":2}",
                [r#"{"n":1}"#, r#"{"n":2}"#],
            ),
            (Format::Lines, "one\n \t \n\n   \r\ntwo", ["one", "two"]),
            (
                Format::Csv,
                "a\n  \n1\n\r\n2\n",
                [r#"{"a":"1"}"#, r#"{"a":"2"}"#],
            ),
        ] {
            let mut reader = std::io::Cursor::new(text);
            let (mut out, failed, pos) = read(format, ByteSize::mib(1), &mut reader).await;
            assert_eq!(texts(&mut out), want, "{format:?}");
            assert!(failed.is_empty(), "{format:?}");
            assert_eq!(pos.offset, text.len() as u64);
        }
    }
}
