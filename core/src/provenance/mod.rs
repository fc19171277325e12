//! Provenance: what happened to every record, recorded by the runtime (not by processors)
//! at the two places every batch passes: [`crate::runtime::emit::Emitter::send`] (CREATE at
//! sources, ROUTE, FORK, DROP, FAILURE) and [`crate::runtime::emit::Input::next`] (RECEIVE),
//! plus [`crate::runtime::emit::Input::sent`], which sinks call once a batch is written
//! (SEND, with its destination).
//!
//! Cheap by design: one event per batch, naming its records as runs of consecutive ids
//! ([`Runs`]): a source numbers a batch's records consecutively, so a batch that takes one
//! path is a few bytes whatever its size. Events go through a bounded channel to a writer
//! thread ([`store`]), which writes them in frames; when it falls behind, [`WhenFull`]
//! decides: the flow waits (`block`, the default: nothing lost) or events are dropped
//! (`sample`); either way [`Backlog`] counts it and a warning says so once per burst.
//!
//! Lineage is a tree: a batch sent to several edges (fan-out), or a record a route sends to
//! several ports, is FORKed: every copy gets a new id, and the FORK event maps the parents'
//! ids to their children's, position by position.

pub mod config;
pub mod index;
pub mod query;
pub mod replay;
pub mod store;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::record::{Record, RecordId};

/// What happened. Stored by its index (postcard): add kinds at the end only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum EventKind {
    /// A source made the records (with their origin when the source tracks positions).
    Create,
    /// A node took the records in.
    Receive,
    /// The records left by a port.
    Route,
    /// Each record became several copies, each with its own id (fan-out to several edges, a
    /// route matching several ports).
    Fork,
    /// The records were dropped on purpose (an unconnected port, a processor, a full
    /// `drop_newest` edge): their journey ends here.
    Drop,
    /// The records went to `failure` (`detail`: the `error.message`).
    Failure,
    /// A sink finished the records (`detail`: where they went).
    Send,
    /// Records made from others left the node (a window's aggregate, a plugin's outputs):
    /// one event per batch. `children[0].ids` are the records made, `records` their inputs,
    /// all of them, child after child; `parts` says how many inputs each child was made of
    /// (see [`Event::joined`]). Left empty when there is one child (made of all the records)
    /// or when each child was made of one input (child `i` of record `i`).
    Join,
    /// The node changed the records' content or attributes.
    Modify,
    /// The content and attributes a node received, kept because the flow asks
    /// (`provenance.content`): `detail` holds one JSON object per record, a line each, in
    /// the order of `records` (see [`Kept`]).
    Content,
    /// The kept content of a record (`records`, one) was re-injected into the running flow
    /// at this node (`flow provenance replay --api`): `children` are the new records made
    /// of it, one per node it was sent to (`to`). Lineage follows it like a FORK.
    Replay,
}

impl EventKind {
    /// Every kind.
    pub const ALL: [EventKind; 11] = [
        Self::Create,
        Self::Receive,
        Self::Route,
        Self::Fork,
        Self::Drop,
        Self::Failure,
        Self::Send,
        Self::Join,
        Self::Modify,
        Self::Content,
        Self::Replay,
    ];

    /// Its name: `CREATE`, `RECEIVE`, ...
    pub fn name(self) -> &'static str {
        match self {
            Self::Create => "CREATE",
            Self::Receive => "RECEIVE",
            Self::Route => "ROUTE",
            Self::Fork => "FORK",
            Self::Drop => "DROP",
            Self::Failure => "FAILURE",
            Self::Send => "SEND",
            Self::Join => "JOIN",
            Self::Modify => "MODIFY",
            Self::Content => "CONTENT",
            Self::Replay => "REPLAY",
        }
    }

    /// The kind named `name` (any case).
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|k| k.name().eq_ignore_ascii_case(name))
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Record ids in order, as runs of consecutive ids: `(first, length)`. Stored with each
/// run's start relative to the previous run's end (varints), so a batch a source numbered
/// consecutively costs a few bytes, and one a filter thinned a few bytes per gap.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Runs(pub Vec<(u64, u32)>);

impl Runs {
    /// The runs of `ids`, in their order.
    pub fn from_ids(ids: impl IntoIterator<Item = u64>) -> Self {
        let mut runs = Self::default();
        for id in ids {
            runs.push(id);
        }
        runs
    }

    /// Add `id` after the ids held: it extends the last run when it follows it.
    pub fn push(&mut self, id: u64) {
        match self.0.last_mut() {
            Some((start, len)) if start.wrapping_add(u64::from(*len)) == id && *len < u32::MAX => {
                *len += 1;
            }
            _ => self.0.push((id, 1)),
        }
    }

    /// The ids of a batch's records.
    pub fn of(batch: &[Record]) -> Self {
        Self::from_ids(batch.iter().map(|r| r.id().0))
    }

    /// One run.
    pub fn run(start: u64, len: u32) -> Self {
        Self(vec![(start, len)])
    }

    /// How many ids.
    pub fn len(&self) -> usize {
        self.0.iter().map(|&(_, n)| n as usize).sum()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|&(_, n)| n == 0)
    }

    /// The ids, in order.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.0
            .iter()
            .flat_map(|&(s, n)| (0..u64::from(n)).map(move |i| s.wrapping_add(i)))
    }

    /// Where `id` is among the ids.
    pub fn position(&self, id: u64) -> Option<usize> {
        let mut before = 0usize;
        for &(s, n) in &self.0 {
            let off = id.wrapping_sub(s);
            if off < u64::from(n) {
                return Some(before + off as usize);
            }
            before += n as usize;
        }
        None
    }

    /// The id at position `i`.
    pub fn get(&self, mut i: usize) -> Option<u64> {
        for &(s, n) in &self.0 {
            if i < n as usize {
                return Some(s.wrapping_add(i as u64));
            }
            i -= n as usize;
        }
        None
    }
    /// The ids of `runs` that are not in `gone`, in increasing order (both taken as sets:
    /// in any order, overlapping or not). What a failed node received and never passed on.
    pub fn without(runs: &[(u64, u32)], gone: &[(u64, u32)]) -> Self {
        /// Sorted, disjoint, half-open `[start, end)` ranges.
        fn merged(runs: &[(u64, u32)]) -> Vec<(u64, u64)> {
            let mut r: Vec<(u64, u64)> = runs
                .iter()
                .filter(|&&(_, n)| n > 0)
                .map(|&(s, n)| (s, s.saturating_add(u64::from(n))))
                .collect();
            r.sort_unstable();
            let mut out: Vec<(u64, u64)> = Vec::with_capacity(r.len());
            for (s, e) in r {
                match out.last_mut() {
                    Some(last) if s <= last.1 => last.1 = last.1.max(e),
                    _ => out.push((s, e)),
                }
            }
            out
        }
        let gone = merged(gone);
        let mut out: Vec<(u64, u32)> = Vec::new();
        let mut push = |mut s: u64, e: u64| {
            while s < e {
                let n = u32::try_from(e - s).unwrap_or(u32::MAX);
                out.push((s, n));
                s += u64::from(n);
            }
        };
        let mut j = 0;
        for (mut s, e) in merged(runs) {
            while gone.get(j).is_some_and(|g| g.1 <= s) {
                j += 1;
            }
            let mut k = j;
            while s < e {
                match gone.get(k) {
                    Some(&(gs, ge)) if gs < e => {
                        push(s, gs.max(s));
                        s = s.max(ge);
                        k += 1;
                    }
                    _ => {
                        push(s, e);
                        s = e;
                    }
                }
            }
        }
        Self(out)
    }
}

impl Serialize for Runs {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        let mut end = 0u64;
        for &(start, len) in &self.0 {
            seq.serialize_element(&(start.wrapping_sub(end) as i64, len))?;
            end = start.wrapping_add(u64::from(len));
        }
        seq.end()
    }
}

impl<'de> Deserialize<'de> for Runs {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let deltas = Vec::<(i64, u32)>::deserialize(d)?;
        let mut end = 0u64;
        Ok(Self(
            deltas
                .into_iter()
                .map(|(delta, len)| {
                    let start = end.wrapping_add(delta as u64);
                    end = start.wrapping_add(u64::from(len));
                    (start, len)
                })
                .collect(),
        ))
    }
}

/// The copies of a FORK that left one way: `ids[i]` is the copy of the event's `records[i]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Children {
    /// The port the copies left by.
    pub port: u32,
    /// The node the copies went to (a fan-out's edge), if the fork was an edge's.
    pub to: Option<u32>,
    /// The copies' ids.
    pub ids: Runs,
}

/// Where a source's records came from: the source's [`crate::record::Origin::source`] and
/// each record's position in its input.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origins {
    /// The source id.
    pub source: u32,
    /// Each record's position, in the order of the event's records.
    pub seqs: Runs,
}

/// Attribute digests as runs: `(digest, how many records in a row have it)`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Digests(pub Vec<(u64, u32)>);

impl Digests {
    /// The digests of `records`' attributes without `secrets`, in order.
    pub fn of<'a>(records: impl IntoIterator<Item = &'a Record>, secrets: &Secrets) -> Self {
        let mut runs: Vec<(u64, u32)> = Vec::new();
        for r in records {
            let d = digest(r.attributes(), secrets);
            match runs.last_mut() {
                Some((last, n)) if *last == d && *n < u32::MAX => *n += 1,
                _ => runs.push((d, 1)),
            }
        }
        Self(runs)
    }

    /// The digest of the `i`th record, if recorded.
    pub fn get(&self, mut i: usize) -> Option<u64> {
        for &(d, n) in &self.0 {
            if i < n as usize {
                return Some(d);
            }
            i -= n as usize;
        }
        None
    }

    /// Whether none is recorded.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The attribute set (secret attributes left out) a digest stands for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttrSet {
    /// The digest ([`digest`]).
    pub digest: u64,
    /// The attributes.
    pub attributes: crate::record::Attributes,
}

/// The digest of an attribute set, secret attributes left out: a 64-bit FxHash-style hash
/// of the names and values in order (stable across runs and machines); 0 for no attributes.
pub fn digest(attributes: &crate::record::Attributes, secrets: &Secrets) -> u64 {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    fn add(h: u64, word: u64) -> u64 {
        (h.rotate_left(5) ^ word).wrapping_mul(K)
    }
    fn bytes(mut h: u64, b: &[u8]) -> u64 {
        let mut chunks = b.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            h = add(h, u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        let mut w = [0u8; 8];
        w[..rest.len()].copy_from_slice(rest);
        add(h, u64::from_le_bytes(w) ^ ((b.len() as u64) << 56))
    }
    // Most records have none: no iterator set up over an empty map (one per record at
    // CREATE; 2 % of the sensors flow's instructions before).
    if attributes.is_empty() {
        return 0;
    }
    let mut h = 0u64;
    let mut any = false;
    for (k, v) in attributes {
        if !secrets.attributes.is_empty() && secrets.attributes.iter().any(|s| s == k) {
            continue;
        }
        any = true;
        h = bytes(bytes(h, k.as_bytes()), v.as_bytes());
    }
    if any { h | 1 } else { 0 }
}

/// The attributes of `record` without `secrets`.
pub fn attr_set(record: &Record, secrets: &Secrets) -> crate::record::Attributes {
    let mut a = record.attributes().clone();
    if !secrets.attributes.is_empty() {
        a.retain(|k, _| !secrets.attributes.contains(k));
    }
    a
}

/// One provenance event: what happened to a batch of records at one node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// What happened.
    pub kind: EventKind,
    /// When, in epoch milliseconds.
    pub time: i64,
    /// The node, as its index in the store segment's header.
    pub node: u32,
    /// The port, as its index among the node's ports (ROUTE, FORK, DROP at a port).
    pub port: Option<u32>,
    /// The records.
    pub records: Runs,
    /// FORK: the copies, per way out. JOIN: the records made (one entry).
    pub children: Vec<Children>,
    /// JOIN: how many of `records` each child was made of, in order (see
    /// [`Event::joined`]); empty for one child or children of one input each.
    pub parts: Vec<u32>,
    /// CREATE: where the records came from; SEND: each record's position at its destination
    /// (a Kafka offset; `source` unused).
    pub origin: Option<Origins>,
    /// FAILURE: the error message; SEND: the destination; DROP: why.
    pub detail: Option<String>,
    /// The digest of each record's attributes (secret ones left out), in the order of
    /// `records`, as runs of one digest ([`Digests`]): a batch whose records share their
    /// attributes costs one. Recorded where a node has the records at hand as they are
    /// (CREATE, RECEIVE, MODIFY, ROUTE, FAILURE, DROP at a port; JOIN: its outputs', in order);
    /// empty on the others (a FORK's copies, a SEND), whose records carry the attributes
    /// of their node's RECEIVE, MODIFY or ROUTE.
    pub attrs: Digests,
    /// The attribute sets behind digests of `attrs` the store's segment has not defined
    /// yet (the writer completes and deduplicates them per segment): what
    /// `search --attr k=v` reads.
    pub attr_sets: Vec<AttrSet>,
}

impl Event {
    /// An event of `kind` at `node` now.
    pub fn new(kind: EventKind, node: u32, records: Runs) -> Self {
        Self {
            kind,
            time: now_ms(),
            node,
            port: None,
            records,
            children: Vec::new(),
            parts: Vec::new(),
            origin: None,
            detail: None,
            attrs: Digests::default(),
            attr_sets: Vec::new(),
        }
    }

    /// At `port`.
    pub fn at(mut self, port: usize) -> Self {
        self.port = Some(u32::try_from(port).unwrap_or(u32::MAX));
        self
    }

    /// With `detail`.
    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// A JOIN's children with the positions in `records` of the inputs each was made of,
    /// in order; empty for another kind, or a JOIN whose `parts` do not add up.
    pub fn joined(&self) -> Vec<(u64, std::ops::Range<usize>)> {
        let Some(made) = self
            .children
            .first()
            .filter(|_| self.kind == EventKind::Join)
        else {
            return Vec::new();
        };
        let inputs = self.records.len();
        if !self.parts.is_empty() {
            let mut at = 0usize;
            let mut out = Vec::with_capacity(self.parts.len());
            for (child, &n) in made.ids.iter().zip(&self.parts) {
                out.push((child, at..at + n as usize));
                at += n as usize;
            }
            return if at == inputs && out.len() == made.ids.len() {
                out
            } else {
                Vec::new()
            };
        }
        match made.ids.len() {
            1 => made.ids.iter().map(|c| (c, 0..inputs)).collect(),
            n if n == inputs => made
                .ids
                .iter()
                .enumerate()
                .map(|(i, c)| (c, i..i + 1))
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Leave `parts` empty where [`Event::joined`] implies them: one child (made of all the
    /// records), or children of one input each.
    pub fn parts_if_needed(&mut self) {
        if self.parts.len() <= 1 || self.parts.iter().all(|&n| n == 1) {
            self.parts.clear();
        }
    }

    /// Every record id the event names, as runs: its records and a FORK's copies. The
    /// store's index finds an event by any of them ([`index::Block::ids`]): a field that
    /// names records must be listed here.
    pub fn id_runs(&self) -> impl Iterator<Item = (u64, u32)> + '_ {
        self.records
            .0
            .iter()
            .chain(self.children.iter().flat_map(|c| c.ids.0.iter()))
            .copied()
    }
}

/// The time now in epoch milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// How many events the channel to the writer holds before the flow waits for it.
pub const CHANNEL_EVENTS: usize = 8192;

/// What a node does with an event when the writer is behind (its channel is full).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// Wait for the writer: the flow slows down, nothing is lost (the default).
    #[default]
    Block,
    /// Drop the event: the flow keeps its pace, the store misses what was dropped.
    Sample,
}

/// What the writer's falling behind cost, shared by a store's recorders (`/metrics` reads
/// it). One warning is logged per burst: a run of full-channel moments less than a second
/// apart. It also tells the writer when to stop lingering: the sources' outputs still open
/// (see [`SourceOpen`]).
#[derive(Debug, Default)]
pub struct Backlog {
    full: AtomicU64,
    dropped: AtomicU64,
    blocked_ns: AtomicU64,
    last_full_ms: AtomicI64,
    /// Sources whose output is open (see [`NodeRecorder::source_open`]).
    sources: std::sync::atomic::AtomicUsize,
    /// Every source's output has closed: the flow is draining, and the writer writes what
    /// comes without lingering (the last acknowledgements, which sources wait for to commit,
    /// are released at once, and the store closes as soon as the flow ends).
    draining: std::sync::atomic::AtomicBool,
    /// The writer's thread, woken from its linger when the flow starts draining.
    writer: std::sync::OnceLock<std::thread::Thread>,
}

/// A source's output, open: while any is, the store's writer lingers between frames under
/// load; when the last one closes (its emitter dropped: the source has read all it will),
/// the writer stops lingering.
#[derive(Debug)]
pub struct SourceOpen(Arc<Backlog>);

impl Drop for SourceOpen {
    fn drop(&mut self) {
        if self.0.sources.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.draining.store(true, Ordering::Release);
            if let Some(writer) = self.0.writer.get() {
                writer.unpark();
            }
        }
    }
}

impl Backlog {
    /// Events dropped because the writer was behind (`when_full: sample`).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Time nodes spent waiting for the writer (`when_full: block`).
    pub fn blocked(&self) -> std::time::Duration {
        std::time::Duration::from_nanos(self.blocked_ns.load(Ordering::Relaxed))
    }

    /// How many times a node found the writer's channel full.
    pub fn full(&self) -> u64 {
        self.full.load(Ordering::Relaxed)
    }

    /// The channel was full: log if this starts a burst.
    fn was_full(&self, policy: WhenFull) {
        self.full.fetch_add(1, Ordering::Relaxed);
        let now = now_ms();
        let last = self.last_full_ms.swap(now, Ordering::Relaxed);
        if now.saturating_sub(last) >= 1000 {
            match policy {
                WhenFull::Block => tracing::warn!(
                    capacity = CHANNEL_EVENTS,
                    "provenance writer is behind: the flow waits for it (when_full: block; \
                     time waited: flow_provenance_blocked_seconds_total)"
                ),
                WhenFull::Sample => tracing::warn!(
                    capacity = CHANNEL_EVENTS,
                    "provenance writer is behind: dropping events (when_full: sample; \
                     count: flow_provenance_events_dropped_total)"
                ),
            }
        }
    }

    fn drop_one(&self) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether every source's output has closed (see [`SourceOpen`]).
    pub(crate) fn draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// The writer runs on `thread` (woken when the flow starts draining).
    pub(crate) fn set_writer(&self, thread: std::thread::Thread) {
        let _ = self.writer.set(thread);
    }

    fn waited(&self, since: std::time::Instant) {
        let ns = u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.blocked_ns.fetch_add(ns, Ordering::Relaxed);
    }
}

/// What recorders send the store's writer, in order.
#[derive(Debug)]
pub enum Entry {
    /// An event to write.
    Event(Event),
    /// A sink's records' acknowledgements, released by the writer once every event sent
    /// before them is written: a source commits only records whose SEND (and every earlier
    /// event) is in the store, so a `kill -9` loses no event of a record it will not read
    /// again. Released at once when the writer is gone or, with `sample`, has no room.
    Release(Vec<crate::ack::Acks>),
    /// The node (by index) failed: whatever it had received and not passed on (in its
    /// state, in hand) is abandoned. The writer records their DROP once the run has ended
    /// and every event of it is written (see [`store`]), so that the hot path keeps no
    /// ledger of what each node holds.
    Failed(u32),
}

impl Entry {
    /// Let an entry go that will not reach the writer: an event is lost (said elsewhere),
    /// acknowledgements are released (provenance never holds data up).
    fn give_up(self) {
        if let Entry::Release(acks) = self {
            acks.into_iter().for_each(crate::ack::Acks::release);
        }
    }
}

/// Where a running flow's events go: cloned into every node (see [`Recorder::node`]).
#[derive(Clone, Debug)]
pub struct Recorder {
    tx: mpsc::Sender<Entry>,
    when_full: WhenFull,
    backlog: Arc<Backlog>,
    /// How many times the writer forgot attribute sets (see [`NodeRecorder::digest`]).
    forgotten: Arc<AtomicU64>,
}

impl Recorder {
    /// A recorder sending into `tx` (the store's writer reads the other end), blocking when
    /// the writer is behind.
    pub fn new(tx: mpsc::Sender<Entry>) -> Self {
        Self {
            tx,
            when_full: WhenFull::Block,
            backlog: Arc::default(),
            forgotten: Arc::default(),
        }
    }

    /// The count the writer raises each time it forgets attribute sets: nodes then send
    /// the sets they use again.
    pub(crate) fn forgotten(&self) -> Arc<AtomicU64> {
        self.forgotten.clone()
    }

    /// With this policy for a writer that is behind.
    pub fn when_full(mut self, when_full: WhenFull) -> Self {
        self.when_full = when_full;
        self
    }

    /// What the writer's falling behind cost so far.
    pub fn backlog(&self) -> &Arc<Backlog> {
        &self.backlog
    }

    /// The recorder of node number `node` (its index in the flow); `source` for sources,
    /// whose batches are CREATEd as they are first sent.
    pub fn node(&self, node: usize, source: bool) -> NodeRecorder {
        NodeRecorder {
            node: u32::try_from(node).unwrap_or(u32::MAX),
            source,
            tx: self.tx.clone(),
            when_full: self.when_full,
            backlog: self.backlog.clone(),
            secrets: Arc::default(),
            keep: None,
            pending: Arc::default(),
            known: Arc::default(),
            forgotten: self.forgotten.clone(),
        }
    }
}

/// What never reaches the store: attributes by name and content fields by path, as the
/// flow's `provenance.secret_attributes` and `secret_fields` name them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Secrets {
    /// Attribute names.
    pub attributes: Vec<String>,
    /// Field paths, split at the dots (`user.password` is `["user", "password"]`).
    pub fields: Vec<Vec<String>>,
}

impl Secrets {
    /// Whether nothing is secret.
    pub fn is_empty(&self) -> bool {
        self.attributes.is_empty() && self.fields.is_empty()
    }

    /// `text` with the values of `record`'s secret attributes replaced by `[secret]` (an
    /// error message may quote one).
    ///
    /// The values of its secret fields too, where its content is JSON: every string (and
    /// every number or other scalar of four characters or more) under each secret path.
    pub fn scrub(&self, record: &Record, text: &str) -> String {
        let mut text = text.to_owned();
        for name in &self.attributes {
            if let Some(v) = record.attributes().get(name)
                && !v.is_empty()
            {
                text = text.replace(v.as_str(), "[secret]");
            }
        }
        if !self.fields.is_empty() {
            let encoded;
            let bytes: &[u8] = match (record.raw_content(), record.parsed_value()) {
                (Some(b), _) => b,
                (None, Some(v)) => {
                    encoded = crate::record::encode_json(v);
                    &encoded
                }
                (None, None) => &[],
            };
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(bytes) {
                let mut values = Vec::new();
                for path in &self.fields {
                    if let Some(at) = path.iter().try_fold(&v, |at, p| at.get(p.as_str())) {
                        leaves(at, &mut values);
                    }
                }
                // Longest first, so that a value inside another goes with it.
                values.sort_by_key(|v| std::cmp::Reverse(v.len()));
                for v in values {
                    text = text.replace(v.as_str(), "[secret]");
                }
            }
        }
        text
    }
}

/// One record's kept content, as a line of a CONTENT event's `detail` and of `flow
/// provenance replay`'s output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kept {
    /// The record's id.
    pub id: String,
    /// Its attributes, without the secret ones.
    pub attributes: crate::record::Attributes,
    /// Its content as text (UTF-8), without the secret fields; `None` when it could not be
    /// kept (see `withheld`).
    pub content: Option<String>,
    /// The content was longer than `max_content_bytes` and is cut there.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
    /// Why the content was not kept (not UTF-8; not JSON while secret fields are set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub withheld: Option<String>,
}

impl Kept {
    /// What to keep of `record`: at most `max_bytes` of its content, without `secrets`.
    pub fn of(record: &Record, max_bytes: usize, secrets: &Secrets) -> Self {
        let mut attributes = record.attributes().clone();
        attributes.retain(|k, _| !secrets.attributes.contains(k));
        let encoded;
        let bytes: &[u8] = match (record.raw_content(), record.parsed_value()) {
            (Some(b), _) => b,
            (None, Some(v)) => {
                encoded = crate::record::encode_json(v);
                &encoded
            }
            (None, None) => &[],
        };
        let mut kept = Self {
            id: record.id().to_string(),
            attributes,
            content: None,
            truncated: false,
            withheld: None,
        };
        let text = if secrets.fields.is_empty() {
            std::str::from_utf8(bytes).map(str::to_owned).ok()
        } else {
            match serde_json::from_slice::<serde_json::Value>(bytes) {
                Ok(mut v) => {
                    for path in &secrets.fields {
                        remove_path(&mut v, path);
                    }
                    serde_json::to_string(&v).ok()
                }
                Err(_) => {
                    kept.withheld = Some("not JSON, and the flow has secret fields".into());
                    return kept;
                }
            }
        };
        let Some(mut text) = text else {
            kept.withheld = Some("not UTF-8".into());
            return kept;
        };
        if text.len() > max_bytes {
            let mut cut = max_bytes;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
            kept.truncated = true;
        }
        kept.content = Some(text);
        kept
    }
}

/// The scalar values under `v` worth scrubbing from a message: strings not empty, other
/// scalars (numbers) of four characters or more (a `1` would scrub every digit one).
fn leaves(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::String(s) if !s.is_empty() => out.push(s.clone()),
        serde_json::Value::Array(a) => a.iter().for_each(|v| leaves(v, out)),
        serde_json::Value::Object(m) => m.values().for_each(|v| leaves(v, out)),
        serde_json::Value::Number(n) if n.to_string().len() >= 4 => out.push(n.to_string()),
        _ => {}
    }
}

fn remove_path(v: &mut serde_json::Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut at = v;
    for p in parents {
        match at.get_mut(p.as_str()) {
            Some(next) => at = next,
            None => return,
        }
    }
    if let Some(map) = at.as_object_mut() {
        map.remove(last.as_str());
    }
}

/// One node's provenance hooks (the runtime calls them; processors do not).
#[derive(Clone, Debug)]
pub struct NodeRecorder {
    node: u32,
    source: bool,
    tx: mpsc::Sender<Entry>,
    when_full: WhenFull,
    backlog: Arc<Backlog>,
    secrets: Arc<Secrets>,
    /// Keep the content of the records the node receives, at most this many bytes each.
    keep: Option<usize>,
    /// A batch's RECEIVE (and CONTENT) the writer had no room for when the batch was taken
    /// (see [`NodeRecorder::receive`]); shared by the node's input and output, and recorded
    /// before any other event of the node, so that the node's events keep their order.
    pending: Arc<parking_lot::Mutex<Vec<Event>>>,
    /// The digests whose attribute set this node has sent the writer (which keeps the
    /// recently used ones for every later segment): a set is cloned once, not per record.
    known: Arc<parking_lot::Mutex<Known>>,
    /// The writer's count of forgettings ([`Recorder::forgotten`]): when it moved, the
    /// node forgets what it sent, so that a set the writer forgot is sent again.
    forgotten: Arc<AtomicU64>,
}

/// The digests a node has sent the writer the sets of, as of a count of the writer's
/// forgettings.
#[derive(Debug, Default)]
struct Known {
    forgotten: u64,
    digests: std::collections::HashSet<u64>,
}

/// How many attribute sets a node remembers having sent before it forgets them all (and
/// sends them again): bounds its memory when attributes differ per record.
const KNOWN_SETS: usize = 1 << 16;

impl NodeRecorder {
    /// The node's index.
    pub fn node(&self) -> u32 {
        self.node
    }

    /// For a source, its output is open until the guard is dropped (see [`SourceOpen`]).
    pub fn source_open(&self) -> Option<SourceOpen> {
        self.source.then(|| {
            // The first source of a run (a store may outlive one): the flow is not draining.
            if self.backlog.sources.fetch_add(1, Ordering::AcqRel) == 0 {
                self.backlog.draining.store(false, Ordering::Release);
            }
            SourceOpen(self.backlog.clone())
        })
    }

    /// Whether the node is a source.
    pub fn is_source(&self) -> bool {
        self.source
    }

    /// Keep nothing of `secrets`; keep the content of received records (at most `keep`
    /// bytes each) if given.
    pub fn with_policy(mut self, secrets: Arc<Secrets>, keep: Option<usize>) -> Self {
        self.secrets = secrets;
        self.keep = keep;
        self
    }

    /// Record an event, after the node's pending RECEIVE if any. When the writer is behind:
    /// wait for it (`block`, counting the time) or drop the event (`sample`, counting it).
    /// A writer that is gone (its store failed, and said so in the log) loses the event.
    pub async fn record(&self, event: Event) {
        self.send(Entry::Event(event)).await;
    }

    /// Release `acks` (a sink's records, written) once every event this node recorded so
    /// far is in the store (see [`Entry::Release`]). Waits for room like an event (`block`);
    /// with `sample` and no room, or no writer, releases them now.
    pub async fn release_after_written(&self, acks: Vec<crate::ack::Acks>) {
        self.send(Entry::Release(acks)).await;
    }

    async fn send(&self, entry: Entry) {
        self.flush().await;
        match self.tx.try_send(entry) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Closed(e)) => e.give_up(),
            Err(mpsc::error::TrySendError::Full(e)) => {
                self.backlog.was_full(self.when_full);
                match self.when_full {
                    // A failure is told even so: it is one entry, once.
                    WhenFull::Sample if !matches!(e, Entry::Failed(_)) => {
                        if matches!(e, Entry::Event(_)) {
                            self.backlog.drop_one();
                        }
                        e.give_up();
                    }
                    WhenFull::Block | WhenFull::Sample => {
                        let since = std::time::Instant::now();
                        if let Err(mpsc::error::SendError(e)) = self.tx.send(e).await {
                            e.give_up();
                        }
                        self.backlog.waited(since);
                    }
                }
            }
        }
    }

    /// Record the node's pending events (a RECEIVE the writer had no room for), waiting for
    /// room (counted as time blocked). Cancel-safe: an event stays pending until recorded.
    pub async fn flush(&self) {
        if self.pending.lock().is_empty() {
            return;
        }
        let since = std::time::Instant::now();
        while !self.pending.lock().is_empty() {
            let Ok(permit) = self.tx.reserve().await else {
                self.pending.lock().clear();
                break;
            };
            let mut pending = self.pending.lock();
            if !pending.is_empty() {
                permit.send(Entry::Event(pending.remove(0)));
            }
        }
        self.backlog.waited(since);
    }

    /// Record the RECEIVE of `batch` (and its CONTENT if the node keeps content) without
    /// waiting: with `block`, what the writer has no room for now stays pending, recorded
    /// before the node's next event (see [`NodeRecorder::flush`]); with `sample`, it is
    /// dropped and counted. So taking a batch never waits on the writer (cancel-safe), and
    /// holds no room in it while the node is idle.
    pub fn receive(&self, batch: &[Record]) {
        let content = self.content(batch);
        self.receive_with(Runs::of(batch), batch, content);
    }

    /// RECEIVE of `records` known here by `ids` (a fan-out's shared records, see
    /// [`crate::runtime::shared::SharedView`]), kept content aside (see
    /// [`NodeRecorder::keeps_content`]: content names each record by its own id).
    pub fn receive_as(&self, ids: Runs, records: &[Record]) {
        self.receive_with(ids, records, None);
    }

    fn receive_with(&self, ids: Runs, records: &[Record], content: Option<Event>) {
        let mut receive = self.event(EventKind::Receive, ids);
        self.digest(&mut receive, records);
        self.record_now(std::iter::once(receive).chain(content));
    }

    /// Whether records' content is kept (`provenance.content`).
    pub fn keeps_content(&self) -> bool {
        self.keep.is_some()
    }

    /// Record `events` without waiting, in order after the node's pending ones: with
    /// `block`, what the writer has no room for now stays pending, recorded before the
    /// node's next event (see [`NodeRecorder::flush`]); with `sample`, it is dropped and
    /// counted.
    pub fn record_now(&self, events: impl IntoIterator<Item = Event>) {
        let mut pending = self.pending.lock();
        for e in events {
            if !pending.is_empty() {
                pending.push(e);
                continue;
            }
            if let Err(mpsc::error::TrySendError::Full(Entry::Event(e))) =
                self.tx.try_send(Entry::Event(e))
            {
                self.backlog.was_full(self.when_full);
                match self.when_full {
                    WhenFull::Block => pending.push(e),
                    WhenFull::Sample => self.backlog.drop_one(),
                }
            }
        }
    }

    /// Tell the writer this node failed (see [`Entry::Failed`]), after its pending events.
    pub async fn failed(&self) {
        self.send(Entry::Failed(self.node)).await;
    }

    /// The CONTENT of `batch` if this node keeps content (a transform or sink: what it
    /// receives; a source: what it creates).
    pub fn content(&self, batch: &[Record]) -> Option<Event> {
        let max = self.keep?;
        let mut lines = String::new();
        for r in batch {
            let kept = Kept::of(r, max, &self.secrets);
            if let Ok(line) = serde_json::to_string(&kept) {
                lines.push_str(&line);
                lines.push('\n');
            }
        }
        Some(
            self.event(EventKind::Content, Runs::of(batch))
                .detail(lines),
        )
    }

    /// What a batch leaving by `port` says about what the node made and changed: one JOIN
    /// for the records made from others (a window's outputs, a plugin's), naming their
    /// parents, all of them, child after child (see [`Event::joined`]; the parents are
    /// taken out of the records so that the next node does not record them again), and one
    /// MODIFY for the records whose content or attributes changed here (their flag is
    /// cleared). A source's records are new (CREATE): only their flags are cleared. Costs
    /// one pass of two field reads per record when nothing was made or changed.
    pub fn made_and_changed(&self, batch: &mut [Record], port: usize) -> Vec<Event> {
        let mut events = Vec::new();
        let mut modified: Vec<usize> = Vec::new();
        // The records made here (by position) and their parents, in order.
        let mut made: Vec<usize> = Vec::new();
        // The parents' runs, made as they are taken (a window's inputs are scattered: mostly
        // one run each, and a list of their ids first was a second copy grown the same way).
        let mut parents = Runs::default();
        let mut parts: Vec<u32> = Vec::new();
        for (i, r) in batch.iter_mut().enumerate() {
            let changed = r.take_modified();
            if self.source {
                continue;
            }
            if !r.parents().is_empty() {
                let taken = r.take_parents();
                for p in taken.iter() {
                    parents.push(p.0);
                }
                parts.push(u32::try_from(taken.len()).unwrap_or(u32::MAX));
                made.push(i);
            } else if changed {
                modified.push(i);
            }
        }
        if !made.is_empty() {
            let mut e = self.event(EventKind::Join, parents).at(port);
            e.children.push(Children {
                port: u32::try_from(port).unwrap_or(u32::MAX),
                to: None,
                ids: Runs::from_ids(made.iter().map(|&i| batch[i].id().0)),
            });
            e.parts = parts;
            e.parts_if_needed();
            // The outputs' attributes (their inputs' are in their own events).
            self.digest(&mut e, made.iter().map(|&i| &batch[i]));
            events.push(e);
        }
        if !modified.is_empty() {
            let ids = Runs::from_ids(modified.iter().map(|&i| batch[i].id().0));
            let mut e = self.event(EventKind::Modify, ids);
            self.digest(&mut e, modified.iter().map(|&i| &batch[i]));
            events.push(e);
        }
        events
    }

    /// An event at this node.
    pub fn event(&self, kind: EventKind, records: Runs) -> Event {
        Event::new(kind, self.node, records)
    }

    /// Give `e` the attribute digests of `records` (its records, in order), and the
    /// attribute sets of the digests this node has not sent before. One hash per record;
    /// a set is cloned only the first time.
    pub fn digest<'a, I>(&self, e: &mut Event, records: I)
    where
        I: IntoIterator<Item = &'a Record>,
        I::IntoIter: Clone,
    {
        let records = records.into_iter();
        // Most batches carry no attributes at all (a file's lines, a window's outputs): one
        // run of "none", found by a look at each record, not a hash and a run each.
        let mut bare = 0usize;
        if records.clone().all(|r| {
            bare += 1;
            r.attributes().is_empty()
        }) && let Ok(n) = u32::try_from(bare)
        {
            e.attrs = Digests(if n == 0 { Vec::new() } else { vec![(0, n)] });
            return;
        }
        let mut runs: Vec<(u64, u32)> = Vec::new();
        let mut known = None;
        for r in records {
            let d = digest(r.attributes(), &self.secrets);
            match runs.last_mut() {
                Some((last, n)) if *last == d && *n < u32::MAX => {
                    *n += 1;
                    continue;
                }
                _ => runs.push((d, 1)),
            }
            if d == 0 {
                continue;
            }
            let known = known.get_or_insert_with(|| {
                let mut known = self.known.lock();
                let forgotten = self.forgotten.load(Ordering::Acquire);
                if known.forgotten != forgotten {
                    known.forgotten = forgotten;
                    known.digests.clear();
                }
                known
            });
            if known.digests.insert(d) {
                if known.digests.len() > KNOWN_SETS {
                    known.digests.clear();
                    known.digests.insert(d);
                }
                e.attr_sets.push(AttrSet {
                    digest: d,
                    attributes: attr_set(r, &self.secrets),
                });
            }
        }
        e.attrs = Digests(runs);
    }

    /// CREATE for a batch a source made.
    pub fn create(&self, batch: &[Record]) -> Event {
        let mut e = self.event(EventKind::Create, Runs::of(batch));
        self.digest(&mut e, batch);
        let origins: Option<Vec<crate::record::Origin>> = batch.iter().map(|r| r.origin).collect();
        if let Some(first) = origins.as_ref().and_then(|o| o.first())
            && origins.iter().flatten().all(|o| o.source == first.source)
        {
            e.origin = Some(Origins {
                source: first.source,
                seqs: Runs::from_ids(origins.iter().flatten().map(|o| o.seq)),
            });
        }
        e
    }

    /// FAILURE events for a batch on `failure`: one per run of records with the same
    /// `error.message`.
    pub fn failures(&self, batch: &[Record], port: usize) -> Vec<Event> {
        let mut events: Vec<Event> = Vec::new();
        let mut start = 0;
        let message = |r: &Record| r.attributes().get("error.message").cloned();
        for i in 1..=batch.len() {
            if i == batch.len() || message(&batch[i]) != message(&batch[start]) {
                let mut e = self
                    .event(EventKind::Failure, Runs::of(&batch[start..i]))
                    .at(port);
                e.detail = message(&batch[start]);
                self.digest(&mut e, &batch[start..i]);
                if !self.secrets.is_empty()
                    && let Some(d) = &mut e.detail
                {
                    if self.secrets.attributes.iter().any(|a| a == "error.message") {
                        e.detail = None;
                    } else {
                        *d = self.secrets.scrub(&batch[start], d);
                    }
                }
                events.push(e);
                start = i;
            }
        }
        events
    }
}

/// Give every record a transform pushed to several ports its own id per copy, and the FORK
/// events that say so (a route matching several routes). `batches` are the transform's
/// output per port; only the records whose id is on more than one port are renumbered.
pub fn fork_copies(node: &NodeRecorder, batches: &mut [Vec<Record>]) -> Vec<Event> {
    use std::collections::{BTreeMap, HashMap};
    let mut seen: HashMap<RecordId, Vec<(usize, usize)>> = HashMap::new();
    for (p, b) in batches.iter().enumerate() {
        for (i, r) in b.iter().enumerate() {
            seen.entry(r.id()).or_default().push((p, i));
        }
    }
    // Group the forked records by the ports their copies took, in id order.
    let mut parents: Vec<(RecordId, Vec<(usize, usize)>)> =
        seen.into_iter().filter(|(_, at)| at.len() > 1).collect();
    parents.sort_by_key(|(id, _)| *id);
    // Per set of ports: the parents, and per port the copies.
    type Group = (Vec<u64>, Vec<Vec<u64>>);
    let mut groups: BTreeMap<Vec<usize>, Group> = BTreeMap::new();
    for (id, at) in parents {
        let ports: Vec<usize> = at.iter().map(|&(p, _)| p).collect();
        let group = groups
            .entry(ports)
            .or_insert_with(|| (Vec::new(), vec![Vec::new(); at.len()]));
        group.0.push(id.0);
        for (k, &(p, i)) in at.iter().enumerate() {
            let child = RecordId::next();
            batches[p][i].set_id(child);
            group.1[k].push(child.0);
        }
    }
    groups
        .into_iter()
        .map(|(ports, (records, children))| {
            let mut e = node.event(EventKind::Fork, Runs::from_ids(records));
            e.children = ports
                .iter()
                .zip(children)
                .map(|(&p, ids)| Children {
                    port: u32::try_from(p).unwrap_or(u32::MAX),
                    to: None,
                    ids: Runs::from_ids(ids),
                })
                .collect();
            e
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The writer lingers between frames while any source's output is open, and stops once
    /// the last one closed (the flow is draining); a transform's output does not count.
    #[test]
    fn the_flow_drains_once_every_sources_output_closed() {
        let (tx, _rx) = mpsc::channel(8);
        let rec = Recorder::new(tx);
        let (a, b, t) = (rec.node(0, true), rec.node(1, true), rec.node(2, false));
        assert!(t.source_open().is_none());
        let (open_a, open_b) = (a.source_open(), b.source_open());
        assert!(!rec.backlog().draining());
        drop(open_a);
        assert!(!rec.backlog().draining(), "one source still reads");
        drop(open_b);
        assert!(rec.backlog().draining());
        // The store's next run: lingering again while its source reads.
        let again = a.source_open();
        assert!(!rec.backlog().draining());
        drop(again);
        assert!(rec.backlog().draining());
    }

    #[test]
    fn runs_round_trip_compactly() {
        let ids = [10u64, 11, 12, 20, 21, 5, u64::MAX, 0];
        let runs = Runs::from_ids(ids);
        assert_eq!(runs.0, vec![(10, 3), (20, 2), (5, 1), (u64::MAX, 2)]);
        assert_eq!(runs.iter().collect::<Vec<_>>(), ids);
        assert_eq!(runs.position(21), Some(4));
        assert_eq!(runs.get(4), Some(21));
        assert_eq!(runs.position(13), None);
        let bytes = postcard::to_allocvec(&runs).expect("encodes");
        assert_eq!(postcard::from_bytes::<Runs>(&bytes).expect("decodes"), runs);
        // A batch of 1,000 consecutive ids with random high bits: a dozen bytes.
        let big = Runs::run(0xdead_beef_0000_0000, 1000);
        assert!(postcard::to_allocvec(&big).expect("encodes").len() <= 13);
    }

    /// `Runs::without` against a set difference of plain ids, on runs in any order,
    /// overlapping, touching and empty.
    #[test]
    fn without_is_the_set_difference() {
        use std::collections::BTreeSet;
        type Ids = &'static [(u64, u32)];
        let cases: [(Ids, Ids); 6] = [
            (&[(0, 10)], &[(3, 2)]),
            (
                &[(20, 5), (0, 10), (8, 4)],
                &[(0, 1), (9, 0), (9, 13), (40, 2)],
            ),
            (&[(5, 5)], &[(0, 100)]),
            (&[(5, 5), (10, 5)], &[]),
            (&[], &[(1, 1)]),
            (&[(u64::MAX - 3, 3)], &[(u64::MAX - 2, 1)]),
        ];
        for (runs, gone) in cases {
            let ids = |r: &[(u64, u32)]| -> BTreeSet<u64> {
                r.iter()
                    .flat_map(|&(s, n)| (0..u64::from(n)).map(move |i| s + i))
                    .collect()
            };
            let want: Vec<u64> = ids(runs).difference(&ids(gone)).copied().collect();
            let got = Runs::without(runs, gone);
            assert_eq!(got.iter().collect::<Vec<_>>(), want, "{runs:?} - {gone:?}");
            assert!(
                got.0
                    .windows(2)
                    .all(|w| w[0].0 + u64::from(w[0].1) < w[1].0)
            );
        }
    }

    #[test]
    fn kept_content_is_bounded_and_leaves_secrets_out() {
        let mut r = Record::from_bytes(&br#"{"a":1,"pw":"s3","u":{"t":"s4","n":"ann"}}"#[..]);
        r.set_attribute("auth", "s1");
        r.set_attribute("team", "blue");
        let secrets = Secrets {
            attributes: vec!["auth".into()],
            fields: vec![vec!["pw".into()], vec!["u".into(), "t".into()]],
        };
        let kept = Kept::of(&r, 1 << 10, &secrets);
        assert_eq!(kept.content.as_deref(), Some(r#"{"a":1,"u":{"n":"ann"}}"#));
        assert_eq!(kept.attributes.keys().collect::<Vec<_>>(), ["team"]);
        // Without secret fields the bytes are kept as they came, cut at the bound.
        let cut = Kept::of(&r, 8, &Secrets::default());
        assert_eq!(cut.content.as_deref(), Some(r#"{"a":1,""#));
        assert!(cut.truncated);
        // Content that cannot be checked for secret fields is not kept.
        let text = Record::from_text(bytes::Bytes::from_static(b"pw=s3"));
        let withheld = Kept::of(&text, 1 << 10, &secrets);
        assert_eq!(withheld.content, None);
        assert!(withheld.withheld.is_some());
        // A failure message quoting a secret attribute does not keep it.
        assert_eq!(secrets.scrub(&r, "bad token s1"), "bad token [secret]");
        // ... nor a secret field's value.
        assert_eq!(
            secrets.scrub(&r, "user ann: bad password s3, token s4"),
            "user ann: bad password [secret], token [secret]"
        );
    }
}
