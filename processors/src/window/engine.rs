//! The window engine: assigns records to windows, keeps the watermark, fires windows, and
//! turns its state into a checkpoint and back. Synchronous and clock-free: the task around it
//! supplies processing time, so it is tested without a runtime.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use compact_str::CompactString;
use flow_core::ack::{AckToken, AckTracker, Acks};
use flow_core::processor::{Output, PortId};
use flow_core::record::{Origin, Record, RecordId, Value};
use serde::{Deserialize, Serialize};

use super::aggregate::{Acc, AggSpec};
use super::open::{self, Closed, Numbered, OpenWindows};
use super::{LimitPolicy, WindowKind};

/// Output ports of `window_aggregate`.
pub const OUT: PortId = PortId(1);
/// Records that arrived after their window had fired.
pub const LATE: PortId = PortId(2);

/// What the engine needs from the config, compiled.
pub struct Settings {
    pub kind: WindowKind,
    pub lateness: i64,
    pub aggregates: Vec<(String, AggSpec)>,
    pub key_field: String,
    pub start_field: String,
    pub end_field: String,
    pub max_open_windows: usize,
    pub max_keys: usize,
    pub on_limit: LimitPolicy,
    pub max_parents: usize,
    /// Keep every input's id as a parent of its window's output, not only the first
    /// `max_parents` (provenance is on: its JOIN names them all).
    pub all_parents: bool,
    /// Give each output the origin `(this source id, emission number)`, so that exactly-once
    /// sinks recognise a window emitted again after a restart (see `flow_core::committed`).
    /// Only when firing is deterministic from run to run: state checkpointed, event time, no
    /// idle timeout, the input in order.
    pub origin: Option<u32>,
}

/// One key's aggregates in one window.
#[derive(Serialize, Deserialize)]
struct Slot {
    /// The key as its output writes it, when that is not its text (the key's entry holds
    /// the text): a key that is not a string, or not UTF-8. A string key, the usual one, is
    /// not kept twice (one allocation less per window, and one cache miss less to write it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key: Option<Value>,
    /// Inline for up to three aggregates (each 32 bytes): one allocation and one cache miss
    /// less per window.
    accs: smallvec::SmallVec<[Acc; 3]>,
    count: u64,
    /// Inline for two (a window of two records, the usual one when keys are many: no list
    /// allocated, and no cache miss to reach it, while the window is open).
    parents: smallvec::SmallVec<[RecordId; 2]>,
    #[serde(skip)]
    acks: Acks,
    /// The emission number of a window emitted but not yet delivered (kept in checkpoints,
    /// so that a window emitted again after a restart has the same origin).
    #[serde(default)]
    seq: Option<u64>,
    /// The window's number, in the order windows open: windows that close together fire in
    /// this order (see [`OpenWindows`]). 0 in checkpoints from before windows were numbered.
    #[serde(default)]
    id: u64,
}

impl Slot {
    /// A copy to keep until the window's output is delivered: its content, not its records'
    /// acknowledgements (the output holds those; cloning them only to release them at once
    /// passed each batch's shared count between cores twice).
    fn kept(&self) -> Slot {
        Slot {
            key: self.key.clone(),
            accs: self.accs.clone(),
            count: self.count,
            parents: self.parents.clone(),
            acks: Acks::none(),
            seq: self.seq,
            id: self.id,
        }
    }
}

impl Numbered for Slot {
    fn id(&self) -> u64 {
        self.id
    }
    fn set_id(&mut self, id: u64) {
        self.id = id;
    }
}

/// A window as checkpoints list it: `(end, start, key)`.
type SlotId = (i64, i64, String);

/// A window awaiting delivery as checkpoints list it: `(end, start, key)`.
type HeldId = (i64, i64, CompactString);

/// Windows emitted but not yet delivered, in groups by the sequence number of the delivery
/// token their outputs share: the windows emitted between two sends of the window's output
/// (see [`Engine::seal_delivery`]) carry one token, so a group is delivered, and forgotten,
/// when all of its windows are. A token per window was an allocation, a tracker message and a
/// map entry per window (with `state` the sensors flow ran 10 % slower than without; a token
/// per group took half of that back). A group delivered in part stays
/// whole in the checkpoints: after a crash its windows are emitted again, with the numbers
/// they had (an exactly-once sink skips those it wrote). A hash map: a B-tree moved its
/// entries on every insert and removal. Checkpoints list them in sequence order.
#[derive(Default)]
struct Undelivered {
    tracker: AckTracker,
    pending: hashbrown::HashMap<u64, Vec<(HeldId, Slot)>>,
    /// The group being emitted: its sequence number and token.
    open: Option<(u64, AckToken)>,
    next: u64,
    /// How many windows the last group held: the next one's list is made that large.
    last_group: usize,
}

/// Where a record that counts in no window went: `late` (with its window attributes) or
/// `failure` (with its error). Kept in checkpoints until delivered, see [`Engine::add`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum Aside {
    Late {
        start: i64,
        end: i64,
        watermark: i64,
    },
    Failed(String),
}

/// Records sent to `late` or `failure` and not yet finished downstream, by the sequence number
/// of the delivery token they carry.
#[derive(Default)]
struct AsideUndelivered {
    tracker: AckTracker,
    pending: hashbrown::HashMap<u64, ((u32, u64), Aside)>,
    next: u64,
}

/// Counters the task publishes.
#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    pub late: u64,
    pub evicted: u64,
    pub replayed: u64,
    pub fired: u64,
}

/// A record's window key: a string's text (borrowed from the record's indexed fields or
/// copied beside it, no `Value` made), or any other value as VRL reads it. A string key is
/// its text either way: `Key::Text(b"car-1")` and `Key::Value(Value::from("car-1"))` are
/// the same key.
#[derive(Debug)]
pub enum Key<'a> {
    /// A string's bytes.
    Text(&'a [u8]),
    /// A value of any kind.
    Value(Value),
}

impl From<Value> for Key<'_> {
    fn from(v: Value) -> Self {
        Key::Value(v)
    }
}

impl Key<'_> {
    /// The bytes open windows are found by: a string's text, any other value's JSON.
    fn bytes(&self) -> Cow<'_, [u8]> {
        match self {
            Key::Text(b) => Cow::Borrowed(b),
            Key::Value(Value::Bytes(b)) => Cow::Borrowed(b),
            Key::Value(Value::String(s)) => Cow::Borrowed(s.as_bytes()),
            Key::Value(other) => Cow::Owned(flow_core::record::encode_json(other)),
        }
    }

    /// The key as a new window keeps it beside `text`, its entry's text: nothing when the
    /// key is that text (see [`Slot::key`]). Bytes are copied: a key read from a record is a
    /// slice of the source's read buffer, which an open window would otherwise keep whole.
    fn to_value(&self, text: &str) -> Option<Value> {
        match self {
            Key::Text(b) if *b == text.as_bytes() => None,
            Key::Value(Value::Bytes(b)) if b[..] == *text.as_bytes() => None,
            Key::Text(b) => Some(Value::Bytes(Bytes::copy_from_slice(b))),
            Key::Value(Value::Bytes(b)) => Some(Value::Bytes(Bytes::copy_from_slice(b))),
            Key::Value(other) => Some(other.clone()),
        }
    }
}

/// The engine.
pub struct Engine {
    s: Settings,
    /// Highest event time seen; `None` before the first record.
    max_ts: Option<i64>,
    /// Open slots, found by key (with the sessions a record may touch, without a scan over
    /// every open window) and in order of closing.
    open: OpenWindows<Slot>,
    /// Per source, the highest position whose record is in the state (for the checkpoint).
    positions: BTreeMap<u32, u64>,
    /// Per source, positions at or below which replayed records are skipped (from a restored
    /// checkpoint).
    covered: BTreeMap<u32, u64>,
    /// With a checkpoint store: tokens of windows emitted since the last checkpoint. Their
    /// records may not be committed before a checkpoint records that the window is gone, or a
    /// crash would restore the window without them and emit it partial.
    emitted_acks: Option<Acks>,
    /// With a checkpoint store: windows emitted but not yet delivered by the sinks, by the
    /// sequence number of the delivery token their output carries. Checkpoints keep them, so a
    /// crash before delivery re-emits them instead of losing them.
    undelivered: Option<Undelivered>,
    /// With a checkpoint store: records with an origin sent to `late` or `failure` and not yet
    /// delivered. A checkpoint's `positions` cover them (they are a high-water mark), so a
    /// restart would skip them when replayed, losing them on that path: checkpoints keep them
    /// (`aside`), and a restart sends them again when the source replays them.
    aside_undelivered: Option<AsideUndelivered>,
    /// After a restart: replayed records to send aside again instead of skipping them, by
    /// origin.
    aside_again: HashMap<(u32, u64), Aside>,
    /// How many windows were emitted (in every run: checkpointed), numbering outputs.
    emitted: u64,
    /// How many parents the last window emitted had: a new slot's list starts that large,
    /// so that it is not regrown record by record (a `realloc` per doubling, per window).
    parents_hint: usize,
    /// A restored checkpoint held emitted but undelivered windows: they are emitted again
    /// first, before anything else, so outputs keep the order of their numbers.
    refire: bool,
    /// The watermark has passed windows not emitted yet: a record that moves it emits at
    /// most [`FIRE_CHUNK`] windows, and the task emits the rest in chunks before the next
    /// record ([`Engine::fire_some`]), sending each chunk on, so that a million keys closing
    /// at once are never a million output records in memory at once.
    closing: bool,
    pub counters: Counters,
    /// The output's field names as JSON, `"name":`, in order (key, start, end, aggregates),
    /// when the three first are distinct: each window's content is written with them, its
    /// values encoded one by one (the names' escaping checked once, not per window).
    names_json: Option<Vec<Vec<u8>>>,
}

/// The serialized form of the state.
#[derive(Serialize, Deserialize)]
struct Snapshot {
    max_ts: Option<i64>,
    positions: BTreeMap<u32, u64>,
    slots: Vec<(SlotId, Slot)>,
    #[serde(default)]
    emitted: u64,
    #[serde(default)]
    aside: Vec<((u32, u64), Aside)>,
}

/// The state could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SnapshotError(String);

/// Count record `id` (its aggregate arguments `args`, its acknowledgements `acks`) in `slot`.
/// On an aggregate's error the slot may be partly updated: the record is rejected, and the
/// error says why; `acks` come back with it.
fn count_in(
    s: &Settings,
    slot: &mut Slot,
    args: &[Value],
    id: RecordId,
    acks: Acks,
) -> Result<(), (String, Acks)> {
    for (acc, arg) in slot.accs.iter_mut().zip(args) {
        if let Err(e) = acc.add(arg) {
            return Err((e.to_string(), acks));
        }
    }
    slot.count += 1;
    if s.all_parents || slot.parents.len() < s.max_parents {
        slot.parents.push(id);
    }
    slot.acks.merge(acks);
    Ok(())
}

/// The windows a record at some event time belongs to, before any state is touched.
enum Bounds {
    /// Tumbling and hopping windows: `(start, end)`, in order of start.
    Fixed(smallvec::SmallVec<[(i64, i64); 1]>),
    /// A session window: it reaches to `end` unless it merges with open sessions.
    Session { end: i64 },
}

/// Fields with distinct names, serialized as a JSON object in their order.
/// A field name as [`in_order`] takes it: `"name":`.
fn name_json(name: &str) -> Vec<u8> {
    let mut json = serde_json::to_vec(name).unwrap_or_default();
    json.push(b':');
    json
}

/// `fields` as a JSON object in their order, with their names already encoded (`names`,
/// `"name":` each): what serde_json writes for the same map.
fn in_order(names: &[Vec<u8>], fields: &[(&str, Value)]) -> Result<Vec<u8>, serde_json::Error> {
    let mut json = Vec::with_capacity(128);
    json.push(b'{');
    for (i, (name, (_, value))) in names.iter().zip(fields).enumerate() {
        if i > 0 {
            json.push(b',');
        }
        json.extend_from_slice(name);
        serde_json::to_writer(&mut json, value)?;
    }
    json.push(b'}');
    Ok(json)
}

/// Whether `v` encoded as JSON reads back as itself (numbers, valid UTF-8 strings, and
/// arrays and objects of them): then a window's output needs no view built up front.
fn reads_back(v: &Value) -> bool {
    match v {
        Value::Null
        | Value::Boolean(_)
        | Value::Integer(_)
        | Value::Float(_)
        | Value::String(_) => true,
        Value::Bytes(b) => std::str::from_utf8(b).is_ok(),
        Value::Array(a) => a.iter().all(reads_back),
        Value::Object(m) => m.values().all(reads_back),
        _ => false,
    }
}

/// The most windows emitted at once when the watermark closes many: the task sends each
/// chunk on before the next.
pub const FIRE_CHUNK: usize = 4096;

/// The most parents a new slot makes room for at once.
const PARENTS_HINT_MAX: usize = 4096;

/// The most windows of a hopping window one record may belong to (`size / slide`, checked
/// when the config is validated).
pub const MAX_HOPS: i64 = 10_000;

/// The windows of a record at `ts`, every bound computed with checked arithmetic.
fn window_bounds(kind: WindowKind, ts: i64) -> Result<Bounds, Reject> {
    let out_of_range = || Reject::OutOfRange(ts);
    // `ts - ts.rem_euclid(n)`: the start of the `n`-aligned period holding `ts`.
    let aligned = |n: i64| ts.checked_sub(ts.rem_euclid(n)).ok_or_else(out_of_range);
    Ok(match kind {
        WindowKind::Tumbling { size } => {
            let start = aligned(size)?;
            Bounds::Fixed(smallvec::smallvec![(
                start,
                start.checked_add(size).ok_or_else(out_of_range)?,
            )])
        }
        WindowKind::Hopping { size, slide } => {
            // The latest window holding `ts` starts at the slide-aligned time before it; each
            // earlier one starts a slide before, as long as it still ends after `ts` (only
            // bounds of windows that hold `ts` are computed, so only they can overflow).
            let mut start = aligned(slide)?;
            let mut end = start.checked_add(size).ok_or_else(out_of_range)?;
            let mut v = smallvec::SmallVec::new();
            while end > ts {
                v.push((start, end));
                if v.len() as i64 > MAX_HOPS {
                    return Err(out_of_range());
                }
                end = end.checked_sub(slide).ok_or_else(out_of_range)?;
                if end > ts {
                    start = start.checked_sub(slide).ok_or_else(out_of_range)?;
                }
            }
            v.reverse();
            Bounds::Fixed(v)
        }
        WindowKind::Session { gap } => Bounds::Session {
            end: ts.checked_add(gap).ok_or_else(out_of_range)?,
        },
    })
}

/// A record the engine could not use.
#[derive(Debug, thiserror::Error)]
pub enum Reject {
    #[error(
        "event time {0} is out of range: the bounds of its windows do not fit in 64-bit epoch \
         milliseconds"
    )]
    OutOfRange(i64),
    #[error("window state is full ({0}); raise the limit or use `on_limit: evict_oldest`")]
    Full(&'static str),
    #[error("{0}")]
    Aggregate(String),
}

impl Engine {
    pub fn new(s: Settings) -> Self {
        let distinct = s.key_field != s.start_field
            && s.key_field != s.end_field
            && s.start_field != s.end_field;
        let names_json = distinct.then(|| {
            [&s.key_field, &s.start_field, &s.end_field]
                .into_iter()
                .chain(s.aggregates.iter().map(|(name, _)| name))
                .map(|name| name_json(name))
                .collect()
        });
        Self {
            names_json,
            s,
            max_ts: None,
            open: OpenWindows::default(),
            positions: BTreeMap::new(),
            covered: BTreeMap::new(),
            emitted_acks: None,
            undelivered: None,
            aside_undelivered: None,
            aside_again: HashMap::new(),
            emitted: 0,
            parents_hint: 0,
            refire: false,
            closing: false,
            counters: Counters::default(),
        }
    }

    /// The state is checkpointed: hold the acknowledgements of emitted windows until the next
    /// checkpoint, and keep emitted windows in checkpoints until they are delivered.
    pub fn track_for_checkpoints(&mut self) {
        self.emitted_acks = Some(Acks::none());
        self.undelivered = Some(Undelivered::default());
        self.aside_undelivered = Some(AsideUndelivered::default());
    }

    /// The windows emitted so far were sent on: the next ones start a new delivery group (see
    /// [`Undelivered`]). Only the group's size depends on when this is called.
    fn seal_delivery(&mut self) {
        if let Some(u) = &mut self.undelivered {
            u.open = None;
        }
    }

    /// Forget the emitted windows the sinks have delivered since the last call (and seal the
    /// delivery group: this follows a send of the output).
    pub fn delivered(&mut self) {
        self.seal_delivery();
        if let Some(u) = &mut self.undelivered {
            while let Some(f) = u.tracker.try_next() {
                // An abandoned window stays in the checkpoints, to be emitted again.
                if f.committable() {
                    u.pending.remove(&f.seq);
                }
            }
        }
        if let Some(u) = &mut self.aside_undelivered {
            while let Some(f) = u.tracker.try_next() {
                if f.committable() {
                    u.pending.remove(&f.seq);
                }
            }
        }
    }

    /// Send `record` to `late` or `failure` as `aside` says. With a checkpoint store, a record
    /// with an origin also carries a delivery token, and stays in the checkpoints until it is
    /// delivered (see `aside_undelivered`).
    fn aside(&mut self, mut record: Record, aside: Aside, out: &mut Output) {
        if let (Some(u), Some(o)) = (&mut self.aside_undelivered, record.origin) {
            let seq = u.next;
            u.next += 1;
            record.merge_acks(Acks::one(u.tracker.token(seq)));
            u.pending.insert(seq, ((o.source, o.seq), aside.clone()));
        }
        match aside {
            Aside::Late {
                start,
                end,
                watermark,
            } => {
                record.set_attribute("window.start", start.to_string());
                record.set_attribute("window.end", end.to_string());
                record.set_attribute("window.watermark", watermark.to_string());
                out.push(LATE, record);
            }
            Aside::Failed(message) => out.fail(record, &message),
        }
    }

    fn reject(&mut self, record: Record, e: &Reject, out: &mut Output) {
        self.aside(record, Aside::Failed(e.to_string()), out);
    }

    /// The watermark: the highest event time seen minus the allowed lateness.
    pub fn watermark(&self) -> Option<i64> {
        self.max_ts.map(|t| t.saturating_sub(self.s.lateness))
    }

    /// The allowed lateness in milliseconds.
    pub fn lateness(&self) -> i64 {
        self.s.lateness
    }

    /// The highest event time seen.
    pub fn max_ts(&self) -> Option<i64> {
        self.max_ts
    }

    /// Open (key, window) slots.
    pub fn open(&self) -> usize {
        self.open.len()
    }

    /// The end of the earliest-closing open window.
    pub fn next_end(&self) -> Option<i64> {
        self.open.first_end()
    }

    /// Add one record with its event time, key and aggregate arguments.
    pub fn add<'k>(
        &mut self,
        mut record: Record,
        ts: i64,
        key: impl Into<Key<'k>>,
        args: &[Value],
        out: &mut Output,
    ) {
        let key = key.into();
        if let Some(o) = record.origin
            && self.covered.get(&o.source).is_some_and(|&c| o.seq <= c)
        {
            // Replayed after a restart and already in the restored state, or sent aside
            // before it and not delivered then: sent aside again.
            if let Some(aside) = self.aside_again.remove(&(o.source, o.seq)) {
                return self.aside(record, aside, out);
            }
            self.counters.replayed += 1;
            out.drop_record(record);
            return;
        }
        if std::mem::take(&mut self.refire) || self.closing {
            self.fire(out);
        }
        // Every bound is computed, checked, before anything changes: a time whose windows do
        // not fit in 64 bits goes to `failure` and leaves the watermark and the state alone.
        let bounds = match window_bounds(self.s.kind, ts) {
            Ok(b) => b,
            Err(e) => return self.reject(record, &e, out),
        };
        if let Some(e) = self
            .s
            .aggregates
            .iter()
            .zip(args)
            .find_map(|((_, a), v)| a.check(v).err())
        {
            return self.reject(record, &Reject::Aggregate(e.to_string()), out);
        }
        if let Some(o) = record.origin {
            let p = self.positions.entry(o.source).or_insert(o.seq);
            *p = (*p).max(o.seq);
        }
        // The watermark moves first, as in the reference: an event can close its own window.
        if self.max_ts.is_none_or(|m| ts > m) {
            self.max_ts = Some(ts);
            if matches!(self.s.kind, WindowKind::Session { .. }) {
                // A record merges with the open sessions it touches: the closed ones must be
                // gone first.
                self.fire(out);
            } else {
                // This record's windows end after the watermark (or it is late): the closed
                // ones left open until the task emits them are never its targets.
                self.fire_some(out, FIRE_CHUNK);
            }
        }
        let wm = self.watermark().unwrap_or(i64::MIN);
        // Open windows are found by the key's bytes; its text (checked as UTF-8) is made only
        // for a new window or a session. A string is its text, whichever of VRL's two kinds
        // it is (bytes read from content, a `String` made by a program): the same key.
        let key_bytes = key.bytes();
        let targets = match bounds {
            Bounds::Fixed(windows) => windows,
            Bounds::Session { end } => {
                smallvec::smallvec![self.session_for(&String::from_utf8_lossy(&key_bytes), ts, end)]
            }
        };
        // The windows still open, filtered in place (collected into another `SmallVec`, the
        // bounds were copied through the stack twice a record).
        let last = targets.last().copied();
        let mut open = targets;
        open.retain(|(_, e)| *e > wm);
        if open.is_empty() {
            let (start, end) = last.unwrap_or((ts, ts));
            self.counters.late += 1;
            let late = Aside::Late {
                start,
                end,
                watermark: wm,
            };
            return self.aside(record, late, out);
        }
        let mut acks = record.take_acks();
        let id = record.id();
        for (i, &(start, end)) in open.iter().enumerate() {
            // Each slot holds the record's acknowledgements: the last one takes them (a
            // tumbling window's only one: no reference counted up and down per record).
            let mine = if i + 1 == open.len() {
                std::mem::take(&mut acks)
            } else {
                acks.clone()
            };
            // Most records join an open slot: one lookup. A new slot is made first.
            let added = match self.open.get_mut(&key_bytes, end, start) {
                Some(slot) => count_in(&self.s, slot, args, id, mine),
                None => 'new: {
                    let key_text = String::from_utf8_lossy(&key_bytes);
                    // A key that is not UTF-8 is kept by its lossy text: look that up.
                    if key_text.as_bytes() != &key_bytes[..]
                        && let Some(slot) = self.open.get_mut(key_text.as_bytes(), end, start)
                    {
                        break 'new count_in(&self.s, slot, args, id, mine);
                    }
                    if let Err(e) = self.make_room(&key_text, out) {
                        record.merge_acks(mine);
                        record.merge_acks(acks);
                        return self.reject(record, &e, out);
                    }
                    let hint = self.parents_hint;
                    let mut slot = Slot {
                        key: key.to_value(&key_text),
                        accs: self.s.aggregates.iter().map(|(_, a)| a.start()).collect(),
                        count: 0,
                        parents: smallvec::SmallVec::with_capacity(hint + hint / 4),
                        acks: Acks::none(),
                        seq: None,
                        id: 0,
                    };
                    let added = count_in(&self.s, &mut slot, args, id, mine);
                    self.open.insert(&key_text, end, start, slot);
                    added
                }
            };
            if let Err((e, mine)) = added {
                record.merge_acks(mine);
                record.merge_acks(acks);
                return self.reject(record, &Reject::Aggregate(e), out);
            }
        }
        // The slots hold them now: nothing is left to release.
        acks.release();
    }

    /// The session a record at `ts` belongs to: merges every open session of the key that
    /// `[ts, end)` (`end` = `ts + gap`, checked) touches into one, and returns its bounds.
    fn session_for(&mut self, key: &str, ts: i64, end: i64) -> (i64, i64) {
        let (mut start, reach) = (ts, end);
        let mut end = end;
        // In order of start, so `first` and `last` merge the right way round.
        let touching = self.open.take_touching(key, |e, s| s <= reach && ts <= e);
        let mut merged: Option<Slot> = None;
        for Closed {
            end: e,
            start: s,
            state: slot,
            ..
        } in touching
        {
            start = start.min(s);
            end = end.max(e);
            merged = Some(match merged {
                None => slot,
                Some(mut m) => {
                    for (a, b) in m.accs.iter_mut().zip(slot.accs) {
                        a.merge(b);
                    }
                    m.count += slot.count;
                    m.parents.extend(slot.parents);
                    if !self.s.all_parents {
                        m.parents.truncate(self.s.max_parents);
                    }
                    m.acks.merge(slot.acks);
                    m
                }
            });
        }
        if let Some(m) = merged {
            self.open.insert(key, end, start, m);
        }
        (start, end)
    }

    /// Make room for a new slot of `key`, by the configured policy.
    fn make_room(&mut self, key: &str, out: &mut Output) -> Result<(), Reject> {
        loop {
            let new_key = !self.open.contains_key(key);
            let windows_full = self.open.len() >= self.s.max_open_windows;
            let keys_full = new_key && self.open.keys() >= self.s.max_keys.min(open::MAX_KEYS);
            if !windows_full && !keys_full {
                return Ok(());
            }
            if self.closing {
                // Windows the watermark has closed go out as closed, not evicted.
                self.fire(out);
                continue;
            }
            let what = if windows_full {
                "max_open_windows"
            } else {
                "max_keys"
            };
            match self.s.on_limit {
                LimitPolicy::Fail => return Err(Reject::Full(what)),
                LimitPolicy::EvictOldest => {
                    let Some(closed) = self.open.pop_first() else {
                        return Err(Reject::Full(what));
                    };
                    self.counters.evicted += 1;
                    self.emit(closed, true, out);
                }
            }
        }
    }

    /// Fire every window the watermark has passed.
    pub fn fire(&mut self, out: &mut Output) {
        self.fire_some(out, usize::MAX);
    }

    /// Fire up to `max` windows the watermark has passed; whether any are left.
    pub fn fire_some(&mut self, out: &mut Output, max: usize) -> bool {
        let wm = self.watermark().unwrap_or(i64::MIN);
        for _ in 0..max {
            if self.open.first_end().is_none_or(|end| end > wm) {
                break;
            }
            if let Some(closed) = self.open.pop_first() {
                self.emit(closed, false, out);
            }
        }
        self.closing = self.open.first_end().is_some_and(|end| end <= wm);
        self.closing
    }

    /// Whether windows the watermark has passed wait to be emitted ([`Engine::fire_some`]).
    pub fn closing(&self) -> bool {
        self.closing
    }

    /// Move event time forward without a record (idle timeout, processing time).
    pub fn advance_to(&mut self, ts: i64, out: &mut Output) {
        if self.max_ts.is_none_or(|m| ts > m) {
            self.max_ts = Some(ts);
            self.fire(out);
        }
    }

    /// Emit every open window (end of a bounded input).
    pub fn flush(&mut self, out: &mut Output) {
        self.flush_some(out, usize::MAX);
    }

    /// Emit up to `max` open windows, in order of closing; whether any are left.
    pub fn flush_some(&mut self, out: &mut Output, max: usize) -> bool {
        for _ in 0..max {
            let Some(closed) = self.open.drain_first() else {
                break;
            };
            self.emit(closed, false, out);
        }
        self.closing = false;
        self.open.len() > 0
    }

    fn emit(&mut self, closed: Closed<Slot>, evicted: bool, out: &mut Output) {
        let Closed {
            end,
            start,
            key,
            state: mut slot,
        } = closed;
        let seq = *slot.seq.get_or_insert_with(|| {
            self.emitted += 1;
            self.emitted - 1
        });
        let delivery = match &mut self.undelivered {
            Some(u) => {
                // The checkpoint keeps the window's content; its records are held by the output.
                let (seq, token) = u.open.get_or_insert_with(|| {
                    let seq = u.next;
                    u.next += 1;
                    (seq, u.tracker.token(seq))
                });
                let last = u.last_group;
                let group = u.pending.entry(*seq).or_insert_with(|| {
                    // Sized as the last group: windows close in runs of about the same size
                    // (a slot is 200-odd bytes: growing the list by doubling moved each twice).
                    Vec::with_capacity(last)
                });
                group.push(((end, start, key.clone()), slot.kept()));
                u.last_group = group.len();
                Acks::one(token.clone())
            }
            None => Acks::none(),
        };
        self.counters.fired += 1;
        self.parents_hint = slot.parents.len().min(PARENTS_HINT_MAX);
        let s = &self.s;
        let mut fields: Vec<(&str, Value)> = Vec::with_capacity(3 + slot.accs.len());
        let key_value = slot
            .key
            .take()
            .unwrap_or_else(|| Value::Bytes(Bytes::from(String::from(key))));
        fields.push((&s.key_field, key_value));
        fields.push((&s.start_field, Value::from(start)));
        fields.push((&s.end_field, Value::from(end)));
        for ((name, _), acc) in s.aggregates.iter().zip(slot.accs.iter_mut()) {
            fields.push((name, acc.finish()));
        }
        // The content keeps the configured field order; the structured view is the same data.
        // Aggregates are named apart from the key, start and end fields (validated); those
        // three may share a name, and then the first place holds the last value, as in a map.
        let json = match &self.names_json {
            Some(names) => in_order(names, &fields),
            None => {
                let ordered: indexmap::IndexMap<&str, &Value> =
                    fields.iter().map(|(k, v)| (*k, v)).collect();
                serde_json::to_vec(&ordered)
            }
        };
        let content = Bytes::from(json.unwrap_or_default());
        // Plain JSON reads back as the same view: build it only if a consumer asks (a sink
        // writes the content). A timestamp, say, would read back as a string: kept as made.
        let mut r = if fields.iter().all(|(_, v)| reads_back(v)) {
            Record::from_bytes(content)
        } else {
            let value = Value::Object(fields.into_iter().map(|(k, v)| (k.into(), v)).collect());
            Record::from_parts(content, value)
        };
        if let Some(held) = &mut self.emitted_acks {
            // Windows fire in runs that share batches: checking the last few is enough to keep
            // the list short; a rare duplicate only costs a reference.
            held.merge_recent(&slot.acks);
        }
        r.merge_acks(slot.acks);
        r.merge_acks(delivery);
        r.set_event_time(Some(start));
        r.origin = s.origin.map(|source| Origin { source, seq });
        r.set_parents(slot.parents.into_vec());
        if slot.count as usize > s.max_parents {
            r.set_attribute("window.inputs", slot.count.to_string());
        }
        if evicted {
            r.set_attribute("window.evicted", "true");
        }
        out.push(OUT, r);
    }

    /// The state as bytes (CBOR: floats keep every bit, so a restored running sum continues
    /// exactly as the uninterrupted one would).
    pub fn snapshot(&self) -> Result<Vec<u8>, SnapshotError> {
        #[derive(Serialize)]
        struct SnapshotRef<'a> {
            max_ts: Option<i64>,
            positions: &'a BTreeMap<u32, u64>,
            slots: Vec<((i64, i64, &'a str), &'a Slot)>,
            emitted: u64,
            aside: Vec<(&'a (u32, u64), &'a Aside)>,
        }
        let mut slots: Vec<((i64, i64, &str), &Slot)> = self.open.iter().collect();
        if let Some(u) = &self.undelivered {
            slots.extend(by_seq(&u.pending).flatten().map(|held| {
                let ((e, s, k), slot) = held;
                ((*e, *s, k.as_str()), slot)
            }));
        }
        let mut bytes = Vec::new();
        ciborium::into_writer(
            &SnapshotRef {
                max_ts: self.max_ts,
                positions: &self.positions,
                slots,
                emitted: self.emitted,
                aside: self
                    .aside_undelivered
                    .iter()
                    .flat_map(|u| by_seq(&u.pending).map(|(o, a)| (o, a)))
                    .chain(self.aside_again.iter())
                    .collect(),
            },
            &mut bytes,
        )
        .map_err(|e| SnapshotError(e.to_string()))?;
        Ok(bytes)
    }

    /// Release the acknowledgement tokens of open windows and of windows emitted since the
    /// last checkpoint (once a checkpoint holds them, or once every window was emitted).
    pub fn release_acks(&mut self) {
        self.seal_delivery();
        for slot in self.open.states_mut() {
            std::mem::take(&mut slot.acks).release();
        }
        if let Some(held) = &mut self.emitted_acks {
            std::mem::take(held).release();
        }
    }

    /// Restore a snapshot: open windows come back, and records the sources replay up to the
    /// snapshot's positions are skipped.
    pub fn restore(&mut self, bytes: &[u8]) -> Result<(), SnapshotError> {
        let snap: Snapshot =
            ciborium::from_reader(bytes).map_err(|e| SnapshotError(e.to_string()))?;
        self.max_ts = snap.max_ts;
        self.covered = snap.positions.clone();
        self.positions = snap.positions;
        self.emitted = snap.emitted;
        self.aside_again = snap.aside.into_iter().collect();
        self.refire = snap.slots.iter().any(|(_, s)| s.seq.is_some());
        self.open = OpenWindows::restore(snap.slots);
        Ok(())
    }
}

/// The values of a pending map in sequence order (emission order: checkpoints list them so).
fn by_seq<V>(pending: &hashbrown::HashMap<u64, V>) -> impl Iterator<Item = &V> {
    let mut held: Vec<(&u64, &V)> = pending.iter().collect();
    held.sort_unstable_by_key(|(seq, _)| **seq);
    held.into_iter().map(|(_, v)| v)
}

#[cfg(test)]
mod content_tests {
    use super::*;

    #[test]
    fn a_window_is_written_as_serde_json_writes_the_map() {
        let mut object = vrl::value::ObjectMap::new();
        object.insert("a b".into(), Value::from(vec![Value::from(1), Value::Null]));
        let fields = [
            ("dev\"ice", Value::from("car-\u{1}\u{e9}")),
            ("window_start", Value::from(1_732_300_000_000_i64)),
            ("avg", Value::from_f64_or_zero(71.25)),
            ("none", Value::Null),
            ("nested", Value::Object(object)),
        ];
        let names: Vec<Vec<u8>> = fields.iter().map(|(n, _)| name_json(n)).collect();
        let map: indexmap::IndexMap<&str, &Value> = fields.iter().map(|(k, v)| (*k, v)).collect();
        assert_eq!(
            in_order(&names, &fields).expect("encodes"),
            serde_json::to_vec(&map).expect("encodes")
        );
    }
}
