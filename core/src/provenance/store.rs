//! The provenance store: a directory of append-only segment files, each with an index.
//!
//! ```text
//! <dir>/00000001.prov, 00000002.prov, ...    one or more per run, numbered in order
//! <dir>/00000001.idx, ...                    each segment's index (see [`super::index`])
//! segment = MAGIC, frame*                    MAGIC = b"FLOWPRV3" (2: JOINs without `parts`,
//!                                            read as before; 1: no attribute digests, skipped)
//! frame   = len: u32 LE, crc32(payload): u32 LE, payload (postcard)
//! the first frame's payload is a [`Header`] (the flow, its nodes and ports: events name
//! nodes and ports by index); every other frame's is a `Vec<Event>`
//! ```
//!
//! A writer never appends to a segment of an earlier run: it starts a new one (and holds a
//! lock on it while it writes), so a run killed mid-frame (`kill -9`) leaves at most a torn
//! last frame in its last segment. Readers
//! stop at the first frame whose length or checksum is wrong; opening the store truncates
//! such a tail. Retention deletes whole segments, oldest first: those whose newest event is
//! older than `max_age`, then as many as needed to stay under `max_size`.
//!
//! Frames are grouped in blocks of about 64 KiB; each block's entry in the segment's index
//! (its record-id ranges, time range, counts per kind and node) is appended when the block
//! is complete, so queries read only the blocks that can hold what they look for (a
//! record's lineage, a node's events in a minute). The part of a segment its index does not
//! cover yet (the block being written, a run killed before it closed the segment) is scanned.
//!
//! Why segment files and not redb (already in the tree): events are only ever appended and
//! deleted by age or size, never updated. A frame of hundreds of events is one `write` here
//! (no B-tree pages, no commit fsync); deleting old data is unlinking a file, with no
//! compaction; a torn tail is found by its checksum and cut. Measured with
//! `core/examples/provenance_bench.rs` (the README has the figures).

use std::collections::hash_map::Entry as HashEntry;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::config::Settings;
use super::index::{self, BLOCK_BYTES, Builder};
use super::{CHANNEL_EVENTS, Entry, Event, Recorder, WhenFull};

/// A segment file's first bytes.
pub const MAGIC: &[u8; 8] = b"FLOWPRV3";

/// The versions of the segment format this build reads: the one it writes ([`MAGIC`]) and
/// the one before, whose events lack [`Event::parts`] (a JOIN per window then: read as a
/// JOIN of one child). Version 1 (no attribute digests) is skipped by queries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `FLOWPRV2`.
    V2,
    /// `FLOWPRV3`, written now.
    V3,
}

impl Format {
    /// The format of a segment that starts with `head`, if this build reads it.
    pub fn of(head: &[u8]) -> Option<Self> {
        match head.get(..8)? {
            h if h == MAGIC => Some(Self::V3),
            b"FLOWPRV2" => Some(Self::V2),
            _ => None,
        }
    }

    /// The events of a frame's payload.
    pub fn events(self, payload: &[u8]) -> Result<Vec<Event>, postcard::Error> {
        match self {
            Self::V3 => postcard::from_bytes(payload),
            Self::V2 => Ok(postcard::from_bytes::<Vec<EventV2>>(payload)?
                .into_iter()
                .map(Event::from)
                .collect()),
        }
    }
}

/// An event as `FLOWPRV2` segments hold it: [`Event`] without `parts`.
#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
struct EventV2 {
    kind: super::EventKind,
    time: i64,
    node: u32,
    port: Option<u32>,
    records: super::Runs,
    children: Vec<super::Children>,
    origin: Option<super::Origins>,
    detail: Option<String>,
    attrs: super::Digests,
    attr_sets: Vec<super::AttrSet>,
}

impl From<EventV2> for Event {
    fn from(e: EventV2) -> Self {
        Self {
            kind: e.kind,
            time: e.time,
            node: e.node,
            port: e.port,
            records: e.records,
            children: e.children,
            parts: Vec::new(),
            origin: e.origin,
            detail: e.detail,
            attrs: e.attrs,
            attr_sets: e.attr_sets,
        }
    }
}
/// A segment is closed and a new one started past this size (or an eighth of `max_size`).
pub const SEGMENT_BYTES: u64 = 64 << 20;
/// A frame holds at most this many events.
const FRAME_EVENTS: usize = 4096;
/// After writing a frame that emptied the channel, the writer sleeps this long before it
/// takes the next events, so that it writes a frame per interval while the flow is busy,
/// not one per batch: a sleeping writer is not woken by every event sent (no futex wake,
/// no context switch on the workers' cores), which was most of provenance's cost (the
/// sensors flow ran 25 % slower with provenance on, 6,500 frames a second). The cost is
/// latency: a sink's acknowledgement, released once the events before it are written (see
/// [`Entry::Release`]), waits up to this much longer, and so does a source's checkpoint.
/// Once every source's output has closed, the writer no longer lingers (see
/// [`super::SourceOpen`]): the acknowledgements a finished source waits for, and the store's
/// close, are not held up.
const LINGER: std::time::Duration = std::time::Duration::from_millis(5);
/// A frame longer than this is a torn or corrupt length.
const MAX_FRAME: u32 = 256 << 20;

/// The store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file of the store could not be read or written.
    #[error("provenance store `{path}`: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A frame could not be encoded.
    #[error("provenance store: encoding: {0}")]
    Encode(#[from] postcard::Error),
}

pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A node, as a segment's header names it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Its name.
    pub name: String,
    /// Its ports, `failure` first.
    pub ports: Vec<String>,
}

/// The first frame of a segment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// The flow's name.
    pub flow: String,
    /// Its nodes, by index.
    pub nodes: Vec<NodeInfo>,
    /// When the run started (epoch ms).
    pub started: i64,
}

/// An open store being written: the recorder to give the runtime, and the writer thread.
pub struct Writer {
    recorder: Recorder,
    thread: Option<JoinHandle<Result<WriterStats, StoreError>>>,
    dir: PathBuf,
}

/// What a writer wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Events written.
    pub events: u64,
    /// Bytes written (frames and headers).
    pub bytes: u64,
    /// Frames written.
    pub frames: u64,
}

impl Writer {
    /// Open (or create) the store in `settings.dir` for a run of the flow that `header`
    /// describes: truncate a torn tail, apply retention, start a new segment and the writer
    /// thread.
    pub fn open(settings: &Settings, header: Header) -> Result<Self, StoreError> {
        Self::open_gated(settings, header, None)
    }

    /// [`Writer::open`], with a writer that writes a frame only after each `()` it receives
    /// on `gate` (freely once the sender is dropped): for tests of a writer that is behind.
    #[doc(hidden)]
    pub fn open_gated(
        settings: &Settings,
        header: Header,
        gate: Option<std::sync::mpsc::Receiver<()>>,
    ) -> Result<Self, StoreError> {
        std::fs::create_dir_all(&settings.dir).map_err(io(&settings.dir))?;
        let segments = segments(&settings.dir)?;
        // The last segment may end torn (a run killed mid-frame); one another process is
        // writing (the same flow run twice) is locked and left alone.
        if let Some((_, last)) = segments.last()
            && let Ok(f) = OpenOptions::new().write(true).open(last)
            && f.try_lock().is_ok()
        {
            repair(last)?;
        }
        retain(&settings.dir, settings.max_age, settings.max_size, 0)?;
        let next = segments.last().map_or(1, |(n, _)| n + 1);
        let (tx, rx) = mpsc::channel(CHANNEL_EVENTS);
        let recorder = Recorder::new(tx);
        let mut seg = Segments {
            dir: settings.dir.clone(),
            header,
            next,
            file: None,
            idx: None,
            block: Builder::default(),
            ordinal: 0,
            len: 0,
            roll_at: SEGMENT_BYTES.min((settings.max_size / 8).max(1 << 20)),
            max_age: settings.max_age,
            max_size: settings.max_size,
            stats: WriterStats::default(),
            sets: Default::default(),
            frames: 0,
            forgotten: recorder.forgotten(),
            defined: Default::default(),
            written: Vec::new(),
        };
        // The segment is created now, so a store that cannot be written fails the start.
        seg.roll()?;
        let backlog = recorder.backlog().clone();
        let thread = std::thread::Builder::new()
            .name("provenance".into())
            .spawn(move || write_loop(seg, rx, gate, &backlog))
            .map_err(io(&settings.dir))?;
        recorder.backlog().set_writer(thread.thread().clone());
        Ok(Self {
            recorder,
            thread: Some(thread),
            dir: settings.dir.clone(),
        })
    }

    /// With this policy for when the writer is behind (see [`WhenFull`]).
    pub fn when_full(mut self, when_full: WhenFull) -> Self {
        self.recorder = self.recorder.clone().when_full(when_full);
        self
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The recorder for the runtime.
    pub fn recorder(&self) -> &Recorder {
        &self.recorder
    }

    /// Wait for every event recorded so far to be written (the recorder's clones must be
    /// gone: the flow has ended), and close the store.
    pub fn close(mut self) -> Result<WriterStats, StoreError> {
        self.finish()
    }

    fn finish(&mut self) -> Result<WriterStats, StoreError> {
        // Close our end of the channel; the thread ends when every clone is gone.
        let (dead, _) = mpsc::channel(1);
        self.recorder = Recorder::new(dead);
        if let Some(t) = &self.thread {
            // Out of its linger: the last events are written now.
            t.thread().unpark();
        }
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(StoreError::Io {
                path: PathBuf::new(),
                source: std::io::Error::other("the provenance writer panicked"),
            }),
            None => Ok(WriterStats::default()),
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if self.thread.is_some()
            && let Err(e) = self.finish()
        {
            tracing::error!(error = %e, "provenance store");
        }
    }
}

struct Segments {
    dir: PathBuf,
    header: Header,
    next: u64,
    file: Option<(File, PathBuf)>,
    /// The segment's index file.
    idx: Option<(File, PathBuf)>,
    /// The block being filled.
    block: Builder,
    /// Events written to the segment so far.
    ordinal: u64,
    len: u64,
    roll_at: u64,
    max_age: Duration,
    max_size: u64,
    stats: WriterStats,
    /// The attribute sets recorders sent, by digest, each with the frame that last used it
    /// (at most [`ATTR_SETS`]: the least recently used half goes when there are more).
    sets: std::collections::HashMap<u64, (KeptSet, u64)>,
    /// Frames written so far (the clock of `sets`).
    frames: u64,
    /// Raised each time sets are forgotten ([`Recorder::forgotten`]).
    forgotten: Arc<std::sync::atomic::AtomicU64>,
    /// The digests the segment being written defines (has the set of).
    defined: std::collections::HashSet<u64>,
    /// The segments this run wrote, in order.
    written: Vec<(u64, PathBuf)>,
}

/// An attribute set the writer keeps to define again, in its postcard encoding: one
/// allocation of its exact size, about 90 bytes for a late record's set (three window
/// attributes), against about 700 in seven allocations as a map (a B-tree node and a string
/// per name and value). The sets live longest of anything the writer allocates; as maps they
/// grew the live heap by 5.8 MB over 10,000,000 sensor events (heaptrack) and pinned the
/// allocator's pages among short-lived allocations (docs/performance.md, step 17).
struct KeptSet(Box<[u8]>);

impl KeptSet {
    fn keep(attributes: &crate::record::Attributes) -> Result<Self, postcard::Error> {
        // Sized first: a vector grown by doubling would keep its last capacity's block.
        let size = postcard::serialize_with_flavor::<_, _, usize>(
            attributes,
            postcard::ser_flavors::Size::default(),
        )?;
        let mut bytes = vec![0; size].into_boxed_slice();
        postcard::to_slice(attributes, &mut bytes)?;
        Ok(Self(bytes))
    }

    fn attributes(&self) -> Result<crate::record::Attributes, postcard::Error> {
        postcard::from_bytes(&self.0)
    }
}

/// How many attribute sets the writer remembers to define again in a new segment. Sets that
/// differ per record (a late record's window attributes) are used for a moment each, so the
/// writer keeps the recently used ones and forgets the older half when it has more; nodes
/// then send the sets they use again ([`Recorder::forgotten`]). About 90 bytes a set kept
/// ([`KeptSet`]) and 70 in the table: at most about 1.3 MB however long the run.
const ATTR_SETS: usize = 8192;

impl Segments {
    /// Make every event's digests defined in the segment being written, each set once: a
    /// set the segment has already is taken out of the event, one it lacks (a recorder
    /// sent it to an earlier segment) is put in.
    fn define(&mut self, events: &mut [Event]) {
        self.frames += 1;
        let now = self.frames;
        // A set the writer could not keep, or keeps and cannot read back (neither happens:
        // postcard does not fail on strings): the nodes send their sets again, as after
        // forgetting, so that no segment lacks one.
        let mut resend = false;
        for e in events {
            let mut sets = std::mem::take(&mut e.attr_sets);
            sets.retain(|set| {
                match self.sets.entry(set.digest) {
                    HashEntry::Occupied(mut kept) => kept.get_mut().1 = now,
                    HashEntry::Vacant(place) => match KeptSet::keep(&set.attributes) {
                        Ok(kept) => {
                            place.insert((kept, now));
                        }
                        Err(_) => resend = true,
                    },
                }
                self.defined.insert(set.digest)
            });
            for &(digest, _) in &e.attrs.0 {
                if digest == 0 || self.defined.contains(&digest) {
                    continue;
                }
                let Some((kept, used)) = self.sets.get_mut(&digest) else {
                    continue;
                };
                *used = now;
                match kept.attributes() {
                    Ok(attributes) => {
                        self.defined.insert(digest);
                        sets.push(super::AttrSet { digest, attributes });
                    }
                    Err(_) => {
                        self.sets.remove(&digest);
                        resend = true;
                    }
                }
            }
            e.attr_sets = sets;
        }
        if self.sets.len() > ATTR_SETS {
            forget_oldest_half(&mut self.sets);
            resend = true;
        }
        if resend {
            // Nodes send again the sets they use: one the writer forgot comes back.
            self.forgotten
                .fetch_add(1, std::sync::atomic::Ordering::Release);
        }
    }
}

/// Forget the least recently used half of `sets` (by the frame that last used each).
fn forget_oldest_half(sets: &mut std::collections::HashMap<u64, (KeptSet, u64)>) {
    let mut used: Vec<u64> = sets.values().map(|(_, used)| *used).collect();
    if used.is_empty() {
        return;
    }
    let mid = used.len() / 2;
    let (_, &mut median, _) = used.select_nth_unstable(mid);
    sets.retain(|_, (_, used)| *used > median);
}

impl Segments {
    /// Append the block being filled to the segment's index.
    fn close_block(&mut self) -> Result<(), StoreError> {
        if self.block.is_empty() {
            return Ok(());
        }
        let next = Builder::new(self.len, self.ordinal);
        let block = std::mem::replace(&mut self.block, next).finish();
        if let Some((f, path)) = &mut self.idx {
            index::append(f, path, &block)?;
        }
        Ok(())
    }

    fn roll(&mut self) -> Result<(), StoreError> {
        self.close_block()?;
        // Another process writing the same store (the flow run twice) may have taken the
        // number: take the next free one.
        let (mut file, path) = loop {
            let path = self.dir.join(format!("{:08}.prov", self.next));
            self.next += 1;
            match OpenOptions::new().create_new(true).write(true).open(&path) {
                Ok(f) => break (f, path),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io(&path)(e)),
            }
        };
        // Held while this run writes it, so that another run does not repair it.
        let _ = file.try_lock();
        let header = postcard::to_allocvec(&self.header)?;
        let mut buf = MAGIC.to_vec();
        frame(&mut buf, &header);
        file.write_all(&buf).map_err(io(&path))?;
        self.len = buf.len() as u64;
        self.stats.bytes += self.len;
        self.idx = Some((index::create(&path)?, index::path_of(&path)));
        self.block = Builder::new(self.len, 0);
        self.ordinal = 0;
        self.defined.clear();
        self.written.push((self.next - 1, path.clone()));
        self.file = Some((file, path));
        retain(&self.dir, self.max_age, self.max_size, self.next - 1)
    }

    fn write(&mut self, events: &mut [Event], buf: &mut Vec<u8>) -> Result<(), StoreError> {
        if self.len >= self.roll_at {
            self.roll()?;
        } else if self.block.len() >= BLOCK_BYTES {
            self.close_block()?;
        }
        self.define(events);
        frame_of(buf, events)?;
        if let Some((file, path)) = &mut self.file {
            file.write_all(buf).map_err(io(path))?;
        }
        self.len += buf.len() as u64;
        self.block.add_frame(buf.len() as u64, events);
        self.ordinal += events.len() as u64;
        self.stats.bytes += buf.len() as u64;
        self.stats.frames += 1;
        self.stats.events += events.len() as u64;
        Ok(())
    }
}

pub(crate) fn frame(buf: &mut Vec<u8>, payload: &[u8]) {
    buf.extend_from_slice(&frame_head(payload));
    buf.extend_from_slice(payload);
}

/// A frame's first bytes: the payload's length and CRC-32, little-endian.
const FRAME_HEAD: usize = 8;

fn frame_head(payload: &[u8]) -> [u8; FRAME_HEAD] {
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    let mut head = [0; FRAME_HEAD];
    head[..4].copy_from_slice(&len.to_le_bytes());
    head[4..].copy_from_slice(&crc32fast::hash(payload).to_le_bytes());
    head
}

/// `value` as one frame in `buf` (cleared first), serialized where the frame lies: the same
/// bytes as [`frame`] of its postcard encoding. The writer's buffer keeps its capacity from
/// frame to frame; the payload was a fresh vector every frame, grown by doubling to hundreds
/// of kilobytes and copied into the buffer after.
pub(crate) fn frame_of<T: serde::Serialize + ?Sized>(
    buf: &mut Vec<u8>,
    value: &T,
) -> Result<(), postcard::Error> {
    /// Appends to a vector (postcard's own vector flavor owns a new one).
    struct Append<'a>(&'a mut Vec<u8>);
    impl postcard::ser_flavors::Flavor for Append<'_> {
        type Output = ();
        fn try_push(&mut self, data: u8) -> postcard::Result<()> {
            self.0.push(data);
            Ok(())
        }
        fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
            // Most pieces are varints of a few bytes (a frame is mostly runs of ids): a
            // byte loop, not a call to `memmove` for each (1 % of the sensors flow's cycles).
            if data.len() <= 16 {
                for &b in data {
                    self.0.push(b);
                }
            } else {
                self.0.extend_from_slice(data);
            }
            Ok(())
        }
        fn finalize(self) -> postcard::Result<()> {
            Ok(())
        }
    }
    buf.clear();
    buf.extend_from_slice(&[0; FRAME_HEAD]);
    postcard::serialize_with_flavor(value, Append(buf))?;
    let head = frame_head(&buf[FRAME_HEAD..]);
    buf[..FRAME_HEAD].copy_from_slice(&head);
    Ok(())
}

fn write_loop(
    mut seg: Segments,
    mut rx: mpsc::Receiver<Entry>,
    mut gate: Option<std::sync::mpsc::Receiver<()>>,
    backlog: &super::Backlog,
) -> Result<WriterStats, StoreError> {
    let mut events = Vec::with_capacity(FRAME_EVENTS);
    // Sinks' acknowledgements, released once the events sent before them are written.
    let mut acks = Vec::new();
    let mut buf = Vec::new();
    // The nodes that failed (see [`Entry::Failed`]).
    let mut failed = Vec::new();
    while let Some(entry) = rx.blocking_recv() {
        if let Some(g) = &gate
            && g.recv().is_err()
        {
            gate = None;
        }
        let mut next = Some(entry);
        while let Some(entry) = next.take() {
            match entry {
                Entry::Event(e) => events.push(e),
                Entry::Release(a) => acks.extend(a),
                Entry::Failed(node) => failed.push(node),
            }
            if events.len() < FRAME_EVENTS {
                next = rx.try_recv().ok();
            }
        }
        let written = if events.is_empty() {
            Ok(())
        } else {
            seg.write(&mut events, &mut buf)
        };
        let full = events.len() >= FRAME_EVENTS;
        events.clear();
        acks.drain(..).for_each(crate::ack::Acks::release);
        if let Err(e) = written {
            // Said once; the flow goes on without provenance: no more sends are taken, and
            // the acknowledgements already sent are released as they are drained.
            tracing::error!(error = %e, "provenance store failed: no more events are recorded");
            rx.close();
            while let Some(entry) = rx.blocking_recv() {
                entry.give_up();
            }
            return Err(e);
        }
        if !full && !backlog.draining() {
            // Woken early when the flow starts draining (or spuriously: a shorter linger).
            std::thread::park_timeout(LINGER);
        }
    }
    seg.abandon_held(&failed, &mut buf)?;
    seg.close_block()?;
    Ok(seg.stats)
}

impl Segments {
    /// The run has ended and every event of it is written: record the DROP of what each
    /// failed node had received and not passed on (ROUTE, FORK, JOIN, DROP, FAILURE, SEND)
    /// when it failed, the records in its state and in its hands, abandoned. Read back from
    /// this run's segments, so a run that fails pays for it, and no other.
    fn abandon_held(&mut self, failed: &[u32], buf: &mut Vec<u8>) -> Result<(), StoreError> {
        use super::{EventKind, Runs};
        if failed.is_empty() {
            return Ok(());
        }
        let mut received: Vec<Vec<(u64, u32)>> = vec![Vec::new(); failed.len()];
        let mut passed: Vec<Vec<(u64, u32)>> = vec![Vec::new(); failed.len()];
        // Taken: the run has ended, nothing else reads the list.
        for (number, path) in std::mem::take(&mut self.written) {
            // Retention may have deleted a segment of a long run already.
            if !path.exists() {
                continue;
            }
            let Some(segment) = read_segment(number, &path)? else {
                continue;
            };
            for e in segment.frames.iter().flatten() {
                let Some(k) = failed.iter().position(|&n| n == e.node) else {
                    continue;
                };
                match e.kind {
                    EventKind::Receive => received[k].extend_from_slice(&e.records.0),
                    EventKind::Route
                    | EventKind::Fork
                    | EventKind::Join
                    | EventKind::Drop
                    | EventKind::Failure
                    | EventKind::Send => passed[k].extend_from_slice(&e.records.0),
                    EventKind::Create
                    | EventKind::Modify
                    | EventKind::Content
                    | EventKind::Replay => {}
                }
            }
        }
        let mut events = Vec::new();
        for (k, &node) in failed.iter().enumerate() {
            let held = Runs::without(&received[k], &passed[k]);
            let name = self
                .header
                .nodes
                .get(node as usize)
                .map_or("?", |n| n.name.as_str());
            for runs in held.0.chunks(ABANDONED_RUNS) {
                events.push(
                    Event::new(EventKind::Drop, node, Runs(runs.to_vec()))
                        .detail(format!("abandoned: `{name}` failed while it held it")),
                );
            }
        }
        for chunk in events.chunks_mut(FRAME_EVENTS) {
            self.write(chunk, buf)?;
        }
        Ok(())
    }
}

/// At most this many runs of ids in one DROP of what a failed node held: a store's index
/// finds an event by its id ranges, per block.
const ABANDONED_RUNS: usize = 1024;

/// The store's segments, in order: (number, path).
pub fn segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, StoreError> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io(dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io(dir))?;
        let path = entry.path();
        let n = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".prov"))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(n) = n {
            out.push((n, path));
        }
    }
    out.sort();
    Ok(out)
}

/// A segment as read: its header and its events (frames in order), up to the first torn or
/// corrupt frame.
#[derive(Debug)]
pub struct Segment {
    /// Its number.
    pub number: u64,
    /// Its header.
    pub header: Header,
    /// Its frames' events.
    pub frames: Vec<Vec<Event>>,
    /// The length of its valid part.
    pub valid_len: u64,
    /// Its length on disk.
    pub len: u64,
}

/// Read a segment. `None` if it is too short or torn to have a header.
pub fn read_segment(number: u64, path: &Path) -> Result<Option<Segment>, StoreError> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(io(path))?;
    let len = bytes.len() as u64;
    let Some(format) = Format::of(&bytes) else {
        return Ok(None);
    };
    let mut at = MAGIC.len();
    let mut payloads = Vec::new();
    while let Some(p) = next_frame(&bytes, &mut at) {
        payloads.push(p);
    }
    let mut payloads = payloads.into_iter();
    let Some(header) = payloads
        .next()
        .and_then(|p| postcard::from_bytes::<Header>(p).ok())
    else {
        return Ok(None);
    };
    let mut frames = Vec::new();
    let mut valid = 0;
    for p in payloads {
        match format.events(p) {
            Ok(events) => frames.push(events),
            Err(_) => break,
        }
        valid += 1;
    }
    // The valid length: re-walk the frames kept.
    let mut end = MAGIC.len();
    for _ in 0..=valid {
        next_frame(&bytes, &mut end);
    }
    Ok(Some(Segment {
        number,
        header,
        frames,
        valid_len: end as u64,
        len,
    }))
}

pub(crate) fn next_frame<'a>(bytes: &'a [u8], at: &mut usize) -> Option<&'a [u8]> {
    let head = bytes.get(*at..*at + 8)?;
    let len = u32::from_le_bytes(head[..4].try_into().ok()?);
    let crc = u32::from_le_bytes(head[4..].try_into().ok()?);
    if len > MAX_FRAME {
        return None;
    }
    let payload = bytes.get(*at + 8..*at + 8 + len as usize)?;
    if crc32fast::hash(payload) != crc {
        return None;
    }
    *at += 8 + len as usize;
    Some(payload)
}

/// Cut a torn or corrupt tail off a segment (a run killed mid-write) and complete its
/// index; a segment without a whole header is deleted, with its index.
pub fn repair(path: &Path) -> Result<(), StoreError> {
    // A segment of a version of the format this build does not read (`FLOWPRV1`: events
    // without attribute digests) is not torn: queries skip it, retention deletes it in its
    // time.
    let mut head = [0u8; 8];
    if File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok()
        && head.starts_with(b"FLOWPRV")
        && Format::of(&head).is_none()
    {
        return Ok(());
    }
    let Some(seg) = index::load(path)? else {
        std::fs::remove_file(path).map_err(io(path))?;
        return remove_if_there(&index::path_of(path));
    };
    if seg.valid_end < seg.len {
        tracing::warn!(
            segment = %path.display(),
            torn_bytes = seg.len - seg.valid_end,
            "provenance store: cutting a torn tail (a run ended mid-write)"
        );
        let f = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(io(path))?;
        f.set_len(seg.valid_end).map_err(io(path))?;
    }
    if seg.incomplete {
        index::rewrite(path, &seg.blocks)?;
    }
    Ok(())
}

fn remove_if_there(path: &Path) -> Result<(), StoreError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(path)(e)),
        _ => Ok(()),
    }
}

/// Delete the segments older than `max_age` (by their last write), then the oldest until the
/// store is under `max_size`; never segment `keep` (the one being written).
fn retain(dir: &Path, max_age: Duration, max_size: u64, keep: u64) -> Result<(), StoreError> {
    let now = SystemTime::now();
    let mut live = Vec::new();
    for (n, path) in segments(dir)? {
        let meta = std::fs::metadata(&path).map_err(io(&path))?;
        let old = meta
            .modified()
            .ok()
            .and_then(|m| now.duration_since(m).ok())
            .is_some_and(|age| age > max_age);
        let idx = index::path_of(&path);
        if old && n != keep {
            std::fs::remove_file(&path).map_err(io(&path))?;
            remove_if_there(&idx)?;
        } else {
            let idx_len = std::fs::metadata(&idx).map_or(0, |m| m.len());
            live.push((n, path, meta.len() + idx_len));
        }
    }
    let mut total: u64 = live.iter().map(|(_, _, l)| l).sum();
    for (n, path, len) in live {
        if total <= max_size || n == keep {
            break;
        }
        std::fs::remove_file(&path).map_err(io(&path))?;
        remove_if_there(&index::path_of(&path))?;
        total -= len;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provenance::query::{Events, Search};
    use crate::provenance::{EventKind, Runs};
    use crate::record::RecordId;

    /// A set the writer keeps compactly gives back the same names and values, in order, and
    /// takes one allocation about the size of its text.
    #[test]
    fn a_kept_set_gives_back_its_attributes() {
        let mut attributes = crate::record::Attributes::new();
        for (k, v) in [
            ("window.start", "1700000000000"),
            ("window.end", "1700000010000"),
            ("window.watermark", "1700000008000"),
            ("empty", ""),
            ("ünïcode ✓", "значение"),
        ] {
            attributes.insert(k.to_owned(), v.to_owned());
        }
        let kept = KeptSet::keep(&attributes).expect("encodes");
        assert_eq!(kept.attributes().expect("decodes"), attributes);
        let encoded = postcard::to_allocvec(&attributes).expect("encodes");
        assert_eq!(*kept.0, *encoded, "the encoding, in a block of its size");
        let text: usize = attributes.iter().map(|(k, v)| k.len() + v.len()).sum();
        assert!(kept.0.len() <= text + 16, "{} bytes", kept.0.len());
        let none = KeptSet::keep(&Default::default()).expect("encodes");
        assert!(none.attributes().expect("decodes").is_empty());
    }

    /// A frame serialized in place is the frame of the encoded payload, byte for byte, and a
    /// reused buffer holds only the last frame.
    #[test]
    fn a_frame_serialized_in_place_is_the_frame_of_its_encoding() {
        let events: Vec<Event> = (0..300u64)
            .map(|i| Event {
                detail: (i % 7 == 0).then(|| format!("detail {i}")),
                ..Event::new(EventKind::Receive, (i % 3) as u32, Runs::run(i * 10, 5))
            })
            .collect();
        let mut buf = vec![9u8; 100_000];
        for n in [300, 0, 1, 17] {
            let mut want = Vec::new();
            frame(
                &mut want,
                &postcard::to_allocvec(&events[..n]).expect("encodes"),
            );
            frame_of(&mut buf, &events[..n]).expect("encodes");
            assert_eq!(buf, want, "{n} events");
        }
    }

    fn header() -> Header {
        Header {
            flow: "t".into(),
            nodes: vec![NodeInfo {
                name: "src".into(),
                ports: vec!["failure".into(), "out".into()],
            }],
            started: 0,
        }
    }

    /// A segment of the earlier format is left for retention, not cut as torn; the new
    /// run writes a segment of its own after it.
    #[test]
    fn a_segment_of_the_earlier_format_is_not_repaired_away() {
        let dir = tempfile::tempdir().expect("tempdir");
        let old = dir.path().join("00000001.prov");
        std::fs::write(&old, b"FLOWPRV1\x05\x00\x00\x00junk").expect("write");
        let w = Writer::open(&settings(dir.path()), header()).expect("opens");
        w.close().expect("closes");
        assert!(old.exists(), "the old segment is still there");
        let numbers: Vec<u64> = segments(dir.path())
            .expect("segments")
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(numbers, [1, 2]);
        assert!(crate::provenance::query::Events::read(dir.path()).is_ok());
    }

    /// A store written by the build before JOINs had `parts` (`FLOWPRV2`: a JOIN per
    /// window) is still read: lineage goes through its JOINs as before.
    #[test]
    fn a_segment_of_version_2_is_read() {
        use crate::provenance::{Children, Digests};
        let dir = tempfile::tempdir().expect("tempdir");
        let v2 = |kind, records: Runs, children: Vec<Children>| EventV2 {
            kind,
            time: 1,
            node: 0,
            port: Some(1),
            records,
            children,
            origin: None,
            detail: None,
            attrs: Digests::default(),
            attr_sets: Vec::new(),
        };
        let join = |inputs: Runs, child: u64| {
            let made = Children {
                port: 1,
                to: None,
                ids: Runs::run(child, 1),
            };
            v2(EventKind::Join, inputs, vec![made])
        };
        let events = vec![
            v2(EventKind::Create, Runs::run(10, 5), Vec::new()),
            join(Runs::run(10, 3), 100),
            join(Runs::run(13, 2), 101),
        ];
        let mut bytes = b"FLOWPRV2".to_vec();
        frame(
            &mut bytes,
            &postcard::to_allocvec(&header()).expect("encodes"),
        );
        frame(
            &mut bytes,
            &postcard::to_allocvec(&events).expect("encodes"),
        );
        let path = dir.path().join("00000001.prov");
        std::fs::write(&path, &bytes).expect("write");

        let seg = read_segment(1, &path).expect("reads").expect("a segment");
        assert_eq!(seg.frames.len(), 1);
        assert_eq!(seg.frames[0][2].joined(), [(101, 0..2)]);
        assert_eq!(seg.valid_len, bytes.len() as u64);
        // Repairing it (a new run opening the store) leaves it whole.
        repair(&path).expect("repairs");
        assert_eq!(std::fs::read(&path).expect("reads"), bytes);
        let q = Events::read(dir.path()).expect("opens");
        let tree = q.lineage(RecordId(14)).expect("reads").expect("found");
        assert_eq!(tree.children.len(), 1);
        assert_eq!(tree.children[0].id, RecordId(101).to_string());
        let out = q.lineage(RecordId(100)).expect("reads").expect("found");
        let ids = |n: std::ops::Range<u64>| n.map(|i| RecordId(i).to_string()).collect::<Vec<_>>();
        assert_eq!(out.events[0].inputs, ids(10..13));
    }

    fn settings(dir: &Path) -> Settings {
        Settings {
            dir: dir.to_owned(),
            max_age: Duration::from_secs(3600),
            max_size: 1 << 30,
        }
    }

    /// Write `n` CREATE events of one record each, ids `first..first + n`.
    fn write(dir: &Path, first: u64, n: u64) {
        let w = Writer::open(&settings(dir), header()).expect("opens");
        let rec = w.recorder().node(0, true);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        rt.block_on(async {
            for id in first..first + n {
                rec.record(rec.event(EventKind::Create, Runs::run(id, 1)))
                    .await;
            }
        });
        drop(rec);
        let stats = w.close().expect("closes");
        assert_eq!(stats.events, n);
    }

    fn ids(dir: &Path) -> Vec<u64> {
        let events = Events::read(dir).expect("reads");
        let q = Search {
            limit: usize::MAX,
            ..Search::default()
        };
        events
            .search(&q)
            .expect("searches")
            .iter()
            .flat_map(|e| e.ids().collect::<Vec<_>>())
            .collect()
    }

    #[test]
    fn a_torn_tail_is_cut_on_reopen_and_the_store_goes_on() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), 100, 50);
        // A run killed mid-frame: half a frame's length, then a frame cut short.
        let (_, last) = segments(dir.path()).expect("segments").pop().expect("one");
        let whole = std::fs::metadata(&last).expect("meta").len();
        let mut f = OpenOptions::new().append(true).open(&last).expect("open");
        f.write_all(&[200, 0, 0, 0, 1, 2, 3, 4, 9, 9])
            .expect("torn");
        drop(f);
        // Readers stop before it.
        assert_eq!(ids(dir.path()), (100..150).collect::<Vec<_>>());
        // The next run cuts it off and writes a segment of its own.
        write(dir.path(), 500, 5);
        assert_eq!(std::fs::metadata(&last).expect("meta").len(), whole);
        let mut want: Vec<u64> = (100..150).collect();
        want.extend(500..505);
        assert_eq!(ids(dir.path()), want);
        assert_eq!(segments(dir.path()).expect("segments").len(), 2);

        // A segment cut inside a frame (not at a frame's end) loses that frame only.
        let (_, second) = segments(dir.path()).expect("segments").pop().expect("two");
        let len = std::fs::metadata(&second).expect("meta").len();
        let f = OpenOptions::new().write(true).open(&second).expect("open");
        f.set_len(len - 3).expect("cut");
        drop(f);
        write(dir.path(), 900, 1);
        let got = ids(dir.path());
        assert!(got.starts_with(&(100..150).collect::<Vec<_>>()));
        assert_eq!(got.last(), Some(&900));
    }

    #[test]
    fn retention_deletes_the_oldest_segments_beyond_the_size_cap() {
        let dir = tempfile::tempdir().expect("tempdir");
        for run in 0..4 {
            write(dir.path(), run * 1000, 10);
        }
        assert_eq!(segments(dir.path()).expect("segments").len(), 4);
        // A segment and its index.
        let size = |p: &Path| {
            std::fs::metadata(p).expect("meta").len()
                + std::fs::metadata(index::path_of(p)).expect("meta").len()
        };
        let one = size(&segments(dir.path()).expect("s")[0].1);
        // Room for two and a half segments: opening deletes the two oldest and starts one
        // (a header only).
        let s = Settings {
            max_size: 2 * one + one / 2,
            ..settings(dir.path())
        };
        drop(Writer::open(&s, header()).expect("opens"));
        let left: Vec<u64> = segments(dir.path())
            .expect("segments")
            .iter()
            .map(|(n, _)| *n)
            .collect();
        assert_eq!(left, [3, 4, 5]);
        let total: u64 = segments(dir.path())
            .expect("segments")
            .iter()
            .map(|(_, p)| size(p))
            .sum();
        assert!(total <= s.max_size);
    }

    /// Write `n` one-record events through a writer that writes nothing until the events
    /// are all recorded (or dropped): the writer's gate opens once the sender is done.
    fn behind(policy: WhenFull, n: u64) -> (u64, Vec<u64>, u64, Duration) {
        let dir = tempfile::tempdir().expect("tempdir");
        let (gate, rx) = std::sync::mpsc::channel();
        let w = Writer::open_gated(&settings(dir.path()), header(), Some(rx))
            .expect("opens")
            .when_full(policy);
        let backlog = w.recorder().backlog().clone();
        let rec = w.recorder().node(0, true);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let sender = rt.spawn(async move {
            for id in 0..n {
                rec.record(rec.event(EventKind::Create, Runs::run(id, 1)))
                    .await;
            }
        });
        if policy == WhenFull::Block {
            // The sender cannot finish while the writer is held: it waits on a full channel.
            while backlog.full() == 0 && !sender.is_finished() {
                std::thread::sleep(Duration::from_millis(5));
            }
            assert!(
                !sender.is_finished(),
                "the sender finished past a full channel"
            );
        } else {
            while !sender.is_finished() {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        drop(gate);
        rt.block_on(sender).expect("sender");
        let stats = w.close().expect("closes");
        let written = ids(dir.path());
        assert_eq!(written.len() as u64, stats.events);
        (stats.events, written, backlog.dropped(), backlog.blocked())
    }

    #[test]
    fn a_writer_behind_drops_and_counts_with_sample_and_loses_nothing_with_block() {
        let n = 3 * CHANNEL_EVENTS as u64;
        // `sample`: the sender never waits; what the writer missed is counted, exactly.
        let (events, written, dropped, blocked) = behind(WhenFull::Sample, n);
        assert!(dropped > 0, "nothing was dropped");
        assert_eq!(events + dropped, n);
        assert!(blocked.is_zero());
        // What was kept is in order and none twice.
        assert!(written.windows(2).all(|w| w[0] < w[1]));
        // `block`: the sender waited, and every event is there.
        let (events, written, dropped, blocked) = behind(WhenFull::Block, n);
        assert_eq!((events, dropped), (n, 0));
        assert_eq!(written, (0..n).collect::<Vec<_>>());
        assert!(!blocked.is_zero());
    }

    #[test]
    fn retention_deletes_segments_older_than_max_age_with_their_indexes() {
        let dir = tempfile::tempdir().expect("tempdir");
        for run in 0..3 {
            write(dir.path(), run * 1000, 10);
        }
        // The first two were last written two hours ago.
        let old = SystemTime::now() - Duration::from_secs(2 * 3600);
        for (_, p) in &segments(dir.path()).expect("segments")[..2] {
            File::options()
                .write(true)
                .open(p)
                .and_then(|f| f.set_modified(old))
                .expect("mtime");
        }
        // An hour's retention: opening deletes them, and their indexes.
        drop(Writer::open(&settings(dir.path()), header()).expect("opens"));
        let left: Vec<u64> = segments(dir.path())
            .expect("segments")
            .iter()
            .map(|(n, _)| *n)
            .collect();
        assert_eq!(left, [3, 4]);
        let mut files: Vec<String> = std::fs::read_dir(dir.path())
            .expect("dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        assert_eq!(
            files,
            [
                "00000003.idx",
                "00000003.prov",
                "00000004.idx",
                "00000004.prov"
            ]
        );
        assert_eq!(ids(dir.path()), (2000..2010).collect::<Vec<_>>());
    }
}
