//! Records: what flows along the edges.
//!
//! A record is NiFi's FlowFile plus lineage: content bytes, string attributes, an optional event
//! time, an id and the ids of the records it was made from. Its structured (JSON) view is built
//! once and shared by fan-out copies, even those made before it was built (copies that first
//! read it at the same moment may each build it). Sources
//! build it as they read when a processor they feed reads fields ([`JsonView::Eager`]); in a flow
//! that only moves bytes (a file into Kafka) they only check the content ([`JsonView::Lazy`]),
//! and the view is built, if ever, on first use. Where the processors they feed read only
//! top-level fields of objects (`.temperature > 95`, a window keyed by `.device`), sources
//! index those fields in the content as they check it ([`JsonView::Fields`], see [`Fields`]):
//! no structured view is built unless something else asks for it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use smallvec::SmallVec;
pub use vrl::value::Value;

use crate::ack::{AckStatus, Acks};

/// A record's identity. Unique within a run; the high bits are random per process, so ids of
/// different runs rarely meet.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct RecordId(pub u64);

static NEXT_ID: AtomicU64 = AtomicU64::new(0);
static ID_BASE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();

impl RecordId {
    /// A fresh id.
    pub fn next() -> Self {
        Self::block(1)
    }

    /// The first of `n` fresh consecutive ids (the copies of a batch sent to several edges).
    pub fn block(n: u64) -> Self {
        let base = *ID_BASE.get_or_init(|| rand::random::<u64>() & !0xFFFF_FFFF);
        RecordId(base.wrapping_add(NEXT_ID.fetch_add(n, Ordering::Relaxed)))
    }
}

impl std::fmt::Display for RecordId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Where a record came from: its source and its position in that source's input (a file's line
/// number, a counter). Stable across restarts, so a stateful processor that restores a
/// checkpoint can recognise records a source replays.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct Origin {
    /// The source, as [`Origin::source_id`] of its name.
    pub source: u32,
    /// The position in the source's input; increases along the input.
    pub seq: u64,
}

impl Origin {
    /// A stable id for a source name (FNV-1a), the same in every run.
    pub fn source_id(name: &str) -> u32 {
        name.bytes().fold(0x811c_9dc5_u32, |h, b| {
            (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
        })
    }
}

/// String attributes, sorted by name (`mqtt.topic`, `error.message`, ...).
pub type Attributes = BTreeMap<String, String>;

/// How a source reads JSON content into records.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum JsonView {
    /// Check that it is well-formed; build the structured view on first use (cheap when
    /// nothing reads fields, as when a file is moved into Kafka).
    #[default]
    Lazy,
    /// Build the structured view at once (something reads fields anyway: one pass, not two).
    Eager,
    /// Check it and index the top-level fields of an object ([`Fields`]): what reads only
    /// those (native conditions, field paths) reads them from the content; the structured view
    /// is built on first use. Content that is not an object gets its view at once, as `Eager`.
    Fields,
}

/// The content could not be read as JSON.
#[derive(Debug, thiserror::Error)]
#[error("content is not valid JSON: {0}")]
pub struct ParseError(#[from] serde_json::Error);

/// One record.
///
/// 128 bytes: what every record has is inline, what few have ([`Rare`]: parents, attributes,
/// event time, the shared parsed view) is behind one pointer, allocated when first set (the
/// parse cell by [`Record::fork`]: a fan-out of a record not parsed yet allocates one for the
/// record and each copy, the price of sharing the parse). A
/// record moves four to six times a hop (into a batch, out of it, into an output); at 192
/// bytes every move was a call to `memcpy` and three cache lines crossing cores, at 128 or
/// less the compiler moves it inline.
#[derive(Debug)]
pub struct Record {
    id: RecordId,
    /// The raw content. `None` once the structured view was modified (it is re-encoded on
    /// demand).
    content: Option<Bytes>,
    /// The structured view, when this record has it at hand (parsed, given or modified).
    value: Option<Arc<Value>>,
    /// The top-level fields of the unmodified content, when a source indexed them
    /// ([`JsonView::Fields`]); dropped with the content when the record is modified.
    fields: Option<Index>,
    /// Where the record came from, if its source tracks positions.
    pub origin: Option<Origin>,
    acks: Acks,
    /// Parents, attributes, event time and the shared parsed view, when any is set.
    rare: Option<Box<Rare>>,
    /// How the content becomes the structured view.
    text: bool,
    /// Changed (content or attributes) since the runtime last looked: provenance records a
    /// MODIFY for it when it leaves the node, and clears this (see [`Record::take_modified`]).
    /// Set by every way of changing the record ([`Record::value_mut`], [`Record::set_value`],
    /// [`Record::set_attribute`], [`Record::attributes_mut`], [`Record::set_attributes`]).
    modified: bool,
}

/// The parts of a record most records do not have: a source's record has none of them (but
/// attributes, when its source sets some, and the parse cell once forked unparsed), a
/// window's output has parents and an event time.
#[derive(Debug, Default)]
struct Rare {
    parents: Vec<RecordId>,
    /// NiFi-style attributes.
    attributes: Attributes,
    /// Event time in epoch milliseconds, when known.
    event_time: Option<i64>,
    /// The structured view of the unmodified content, parsed by whichever copy of the record
    /// needed it first and shared by all copies: the cell is made by the first
    /// [`Record::fork`] (a record never forked allocates nothing for it).
    parsed: OnceLock<Arc<OnceLock<Arc<Value>>>>,
}

/// The attributes of a record that has none.
static NO_ATTRIBUTES: Attributes = BTreeMap::new();

impl Record {
    fn new(content: Option<Bytes>, text: bool, value: Option<Value>) -> Self {
        Self::numbered(RecordId::next(), content, text, value)
    }

    fn numbered(id: RecordId, content: Option<Bytes>, text: bool, value: Option<Value>) -> Self {
        Self {
            id,
            content,
            value: value.map(Arc::new),
            fields: None,
            origin: None,
            acks: Acks::none(),
            rare: None,
            text,
            modified: false,
        }
    }

    /// The rare parts, made on first write.
    fn rare_mut(&mut self) -> &mut Rare {
        self.rare.get_or_insert_with(Box::default)
    }

    /// The rare parts to write a value into: made if `needed` (the value is not empty), or
    /// `None` when there are none and the value is empty (nothing to write or clear).
    fn rare_for(&mut self, needed: bool) -> Option<&mut Rare> {
        if needed {
            Some(self.rare_mut())
        } else {
            self.rare.as_deref_mut()
        }
    }

    /// The content is about to change: it, its index and the shared parse no longer hold.
    fn forget_content(&mut self) {
        self.modified = true;
        self.content = None;
        self.fields = None;
        if let Some(r) = &mut self.rare {
            r.parsed = OnceLock::new();
        }
    }

    /// The shared parsed view's cell, if a copy made one.
    fn parsed(&self) -> Option<&Arc<OnceLock<Arc<Value>>>> {
        self.rare.as_ref().and_then(|r| r.parsed.get())
    }

    /// A new record over raw JSON content; its structured view is parsed on first use (see
    /// [`Record::parse_json`] to check it first).
    pub fn from_bytes(content: impl Into<Bytes>) -> Self {
        Self::new(Some(content.into()), false, None)
    }

    /// [`Record::from_bytes`] with the id `id` (one of a block the caller took, see
    /// [`Record::json_numbered`]).
    pub fn from_bytes_numbered(id: RecordId, content: impl Into<Bytes>) -> Self {
        Self::numbered(id, Some(content.into()), false, None)
    }

    /// A new record over raw content that is text, not JSON: its structured view is the
    /// content as one string.
    pub fn from_text(content: Bytes) -> Self {
        Self::new(Some(content), true, None)
    }

    /// A new record over a structured value (its content is the value's JSON encoding).
    pub fn from_value(value: Value) -> Self {
        Self::new(None, false, Some(value))
    }

    /// A new record with both views given (the caller guarantees they agree).
    pub fn from_parts(content: Bytes, value: Value) -> Self {
        Self::new(Some(content), false, Some(value))
    }

    /// A record over raw JSON content, once the content is checked to be JSON that the
    /// structured view can be built from (syntax, UTF-8, escapes, number range, nesting; about
    /// a fifth of the cost of building the view, which is built on first use). On error the record comes back with the error, so it can go to
    /// `failure` unchanged.
    #[allow(
        clippy::result_large_err,
        reason = "the record is handed back on the rare error path"
    )]
    pub fn parse_json(content: Bytes) -> Result<Self, (Self, ParseError)> {
        Self::json(content, JsonView::Lazy)
    }

    /// A record over raw JSON content, read as `view` says: checked only, or with its
    /// structured view built. On error the record comes back with the error.
    #[allow(
        clippy::result_large_err,
        reason = "the record is handed back on the rare error path"
    )]
    pub fn json(content: Bytes, view: JsonView) -> Result<Self, (Self, ParseError)> {
        Self::json_numbered(RecordId::next(), content, view)
    }

    /// [`Record::json`] with the id `id` (one of a block the caller took: a source that
    /// decodes on several threads numbers each chunk's records in the input's order, and
    /// takes one id from the shared counter per chunk, not one per record).
    #[allow(
        clippy::result_large_err,
        reason = "the record is handed back on the rare error path"
    )]
    pub fn json_numbered(
        id: RecordId,
        content: Bytes,
        view: JsonView,
    ) -> Result<Self, (Self, ParseError)> {
        let checked = match view {
            JsonView::Lazy => check_json(&content).map(|()| None),
            JsonView::Eager => built(&content),
            JsonView::Fields => match Fields::index(&content) {
                Ok(Some(index)) => {
                    let mut r = Self::from_bytes_numbered(id, content);
                    r.fields = Some(index);
                    return Ok(r);
                }
                // Not an object: checked, and its view is built at once (rare, and small).
                Ok(None) => built(&content),
                Err(e) => Err(e),
            },
        };
        Self::checked(id, content, checked)
    }

    /// A record over `content`, which was checked (with its view built when given), or
    /// comes back with the error.
    #[allow(
        clippy::result_large_err,
        reason = "the record is handed back on the rare error path"
    )]
    fn checked(
        id: RecordId,
        content: Bytes,
        checked: Result<Option<Value>, ParseError>,
    ) -> Result<Self, (Self, ParseError)> {
        match checked {
            Ok(None) => Ok(Self::from_bytes_numbered(id, content)),
            Ok(Some(v)) => Ok(Self::numbered(id, Some(content), false, Some(v))),
            Err(e) => Err((Self::from_bytes_numbered(id, content), e)),
        }
    }

    /// A new record derived from this one (same attributes and event time), with this record
    /// as its parent. The acknowledgement moves to the child.
    pub fn derive(&mut self, value: Value) -> Record {
        Record {
            id: RecordId::next(),
            content: None,
            value: Some(Arc::new(value)),
            fields: None,
            origin: self.origin,
            acks: std::mem::take(&mut self.acks),
            rare: Some(Box::new(Rare {
                parents: vec![self.id],
                attributes: self.attributes().clone(),
                event_time: self.event_time(),
                parsed: OnceLock::new(),
            })),
            text: false,
            modified: false,
        }
    }

    /// This record's id.
    pub fn id(&self) -> RecordId {
        self.id
    }

    /// Give this copy of a record its own id (provenance: a FORK's child).
    pub(crate) fn set_id(&mut self, id: RecordId) {
        self.id = id;
    }

    /// The ids of the records this one was made from (empty for records a source created).
    pub fn parents(&self) -> &[RecordId] {
        self.rare.as_ref().map_or(&[], |r| &r.parents)
    }

    /// Set the parents (for records joined from many, such as window aggregates). With
    /// provenance on, the runtime records a JOIN naming them when the record leaves the node.
    pub fn set_parents(&mut self, parents: Vec<RecordId>) {
        if let Some(r) = self.rare_for(!parents.is_empty()) {
            r.parents = parents;
        }
    }

    /// Take the parents out (the runtime, once it recorded the JOIN, so that the next node
    /// does not record it again).
    pub fn take_parents(&mut self) -> Vec<RecordId> {
        self.rare
            .as_mut()
            .map(|r| std::mem::take(&mut r.parents))
            .unwrap_or_default()
    }

    /// Whether the content or the attributes changed since the last call, which clears it
    /// (the runtime's MODIFY, see [`crate::provenance`]).
    pub fn take_modified(&mut self) -> bool {
        std::mem::take(&mut self.modified)
    }

    /// The NiFi-style attributes.
    pub fn attributes(&self) -> &Attributes {
        self.rare.as_ref().map_or(&NO_ATTRIBUTES, |r| &r.attributes)
    }

    /// The attributes, to change them (marks the record modified).
    pub fn attributes_mut(&mut self) -> &mut Attributes {
        self.modified = true;
        &mut self.rare_mut().attributes
    }

    /// Replace the attributes (marks the record modified if they differ).
    pub fn set_attributes(&mut self, attributes: Attributes) {
        if attributes != *self.attributes() {
            self.modified = true;
            self.rare_mut().attributes = attributes;
        }
    }

    /// This record with these attributes, as its maker gives them (a source, a test): not a
    /// change, so not marked modified.
    pub fn with_attributes(mut self, attributes: Attributes) -> Self {
        if let Some(r) = self.rare_for(!attributes.is_empty()) {
            r.attributes = attributes;
        }
        self
    }

    /// Take the attributes out, leaving none (not marked modified: for whoever consumes the
    /// record, such as a tap).
    pub fn take_attributes(&mut self) -> Attributes {
        self.rare
            .as_mut()
            .map(|r| std::mem::take(&mut r.attributes))
            .unwrap_or_default()
    }

    /// Event time in epoch milliseconds, when known.
    pub fn event_time(&self) -> Option<i64> {
        self.rare.as_ref().and_then(|r| r.event_time)
    }

    /// Set the event time (not a change of content or attributes: not marked modified).
    pub fn set_event_time(&mut self, event_time: Option<i64>) {
        if let Some(r) = self.rare_for(event_time.is_some()) {
            r.event_time = event_time;
        }
    }

    /// The structured view, parsing the content as JSON on first use (by this record or a copy
    /// of it).
    pub fn value(&mut self) -> Result<&Value, ParseError> {
        if self.value.is_none() {
            let shared = self.parsed().and_then(|p| p.get()).cloned();
            let v = match shared {
                Some(v) => v,
                None => {
                    let content = self.content.clone().unwrap_or_default();
                    let v = Arc::new(if self.text {
                        Value::Bytes(content)
                    } else {
                        serde_json::from_slice(&content)?
                    });
                    if let Some(p) = self.parsed() {
                        // A copy that parsed at the same time keeps its own: both are equal.
                        let _ = p.set(v.clone());
                    }
                    v
                }
            };
            self.value = Some(v);
        }
        Ok(self.value.as_deref().unwrap_or(&Value::Null))
    }

    /// The structured view (parsed on first use) and the attributes, together.
    pub fn view(&mut self) -> Result<(&Value, &Attributes), ParseError> {
        self.value()?;
        Ok((
            self.value.as_deref().unwrap_or(&Value::Null),
            self.attributes(),
        ))
    }

    /// The structured view if this copy of the record already has it (after [`Record::value`]).
    pub fn parsed_value(&self) -> Option<&Value> {
        self.value.as_deref()
    }

    /// Ask the CPU for this record's index and the start of its content (up to 256 bytes of
    /// each), ahead of reading them (see [`crate::prefetch`]): a hint; what is read is the
    /// record and its index block's header (shared by a chunk's records).
    #[inline]
    pub fn prefetch(&self) {
        if let Some(ix) = &self.fields {
            let entries = ix.entries();
            crate::prefetch::lines(entries.as_ptr(), std::mem::size_of_val(entries).min(256));
        }
        if let Some(c) = &self.content {
            crate::prefetch::lines(c.as_ptr(), c.len().min(256));
        }
    }

    /// The top-level fields of the record's content, read without building the structured
    /// view, when a source indexed them ([`JsonView::Fields`]) and the record is unmodified.
    pub fn fields(&self) -> Option<FieldsRef<'_>> {
        match (&self.fields, &self.content) {
            (Some(ix), Some(content)) => Some(FieldsRef {
                fields: &ix.block,
                entries: ix.entries(),
                content,
            }),
            _ => None,
        }
    }

    /// A mutable structured view. Invalidates the raw content (re-encoded when needed).
    pub fn value_mut(&mut self) -> Result<&mut Value, ParseError> {
        self.value()?;
        self.forget_content();
        let arc = self.value.get_or_insert_with(|| Arc::new(Value::Null));
        Ok(Arc::make_mut(arc))
    }

    /// Replace the structured view.
    pub fn set_value(&mut self, value: Value) {
        self.forget_content();
        self.value = Some(Arc::new(value));
    }

    /// The content bytes: the original ones if the record was not modified, otherwise the JSON
    /// encoding of the structured view.
    pub fn content(&mut self) -> &Bytes {
        if self.content.is_none() {
            let v = self.value.as_deref().unwrap_or(&Value::Null);
            let encoded = encode_json(v);
            self.content = Some(Bytes::from(encoded));
        }
        self.content.get_or_insert_with(Bytes::new)
    }

    /// The content if it is at hand without encoding.
    pub fn raw_content(&self) -> Option<&Bytes> {
        self.content.as_ref()
    }

    /// Approximate memory in bytes (content, parsed view, attributes), for queue thresholds.
    pub fn size(&self) -> usize {
        let content = self.content.as_ref().map_or(0, Bytes::len);
        let value = self.value.as_deref().map_or(0, value_size);
        let attrs: usize = self
            .attributes()
            .iter()
            .map(|(k, v)| 48 + k.len() + v.len())
            .sum();
        let rare = self
            .rare
            .as_ref()
            .map_or(0, |_| std::mem::size_of::<Rare>());
        content + value + attrs + rare + std::mem::size_of::<Self>()
    }

    /// The acknowledgement tokens this record holds.
    pub fn acks(&self) -> &Acks {
        &self.acks
    }

    /// Attach acknowledgement tokens (sources do this).
    pub fn with_acks(mut self, acks: Acks) -> Self {
        self.acks = acks;
        self
    }

    /// Take the tokens out (a window keeps them until its aggregate is emitted or a checkpoint
    /// holds the record). The record is then no longer tracked: dropping it finishes nothing.
    pub fn take_acks(&mut self) -> Acks {
        std::mem::take(&mut self.acks)
    }

    /// Add tokens (joins).
    pub fn merge_acks(&mut self, acks: Acks) {
        self.acks.merge(acks);
    }

    /// Mark the record's batches with `status`. The record still has to be finished (or
    /// dropped, which abandons it).
    pub fn mark(&self, status: AckStatus) {
        self.acks.mark(status);
    }

    /// This record's journey ended well (a sink wrote it): release its acknowledgement tokens.
    /// A record dropped without this (or another explicit end: [`Record::take_acks`] and
    /// [`Acks::release`]) abandons its batches, so its source does not commit it.
    pub fn finish(mut self) {
        self.take_acks().release();
    }

    /// Set an attribute.
    pub fn set_attribute(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.modified = true;
        self.rare_mut().attributes.insert(key.into(), value.into());
    }
}

impl Clone for Record {
    fn clone(&self) -> Self {
        self.copy_with(self.acks.clone())
    }
}

impl Record {
    /// A copy that holds no acknowledgement token (a tap's): holding it holds up no source,
    /// and dropping it finishes nothing.
    pub fn untracked_copy(&self) -> Record {
        self.copy_with(Acks::none())
    }

    /// A copy for another branch of a fan-out (the same id and acknowledgement tokens, as
    /// [`Clone`]). A record not parsed yet shares one cell for its parsed view with its
    /// copies, made here: whichever parses first serves the others. Not one with indexed
    /// fields: its consumers read only top-level fields, so the view is rarely built, and the
    /// cell would cost an allocation per record.
    pub fn fork(&mut self) -> Record {
        self.prepare_fork();
        self.copy_with(self.acks.clone())
    }

    /// Make the cell a record not parsed yet shares with its copies (see [`Record::fork`]), so
    /// that [`Clone`]s made later share it too (a batch shared by several edges is prepared
    /// once, then copied by its consumers).
    pub fn prepare_fork(&mut self) {
        if self.value.is_none() && self.fields.is_none() {
            self.rare_mut().parsed.get_or_init(Default::default);
        }
    }

    fn copy_with(&self, acks: Acks) -> Self {
        let rare = self.rare.as_ref().map(|r| {
            let parsed = OnceLock::new();
            // The cell [`Record::fork`] made, if it did: shared, so either copy's parse
            // serves both.
            if let Some(cell) = r.parsed.get() {
                let _ = parsed.set(cell.clone());
            }
            Box::new(Rare {
                parents: r.parents.clone(),
                attributes: r.attributes.clone(),
                event_time: r.event_time,
                parsed,
            })
        });
        Self {
            id: self.id,
            content: self.content.clone(),
            value: self.value.clone(),
            fields: self.fields.clone(),
            origin: self.origin,
            acks,
            rare,
            text: self.text,
            modified: self.modified,
        }
    }
}

/// Finish every record (see [`Record::finish`]): a sink wrote them all.
pub fn finish_all(records: impl IntoIterator<Item = Record>) {
    records.into_iter().for_each(Record::finish);
}

/// Check that `content` is one JSON value that [`Record::value`] can build, without building it.
fn check_json(content: &[u8]) -> Result<(), ParseError> {
    serde_json::from_slice::<Valid>(content)?;
    Ok(())
}

/// A JSON value, visited and dropped. serde's `IgnoredAny` skips values more loosely than
/// they are built (no nesting limit, no check of `\u` escapes, UTF-8 or number range);
/// visiting every value through `deserialize_any` gets serde_json's own checks, allocating
/// nothing but for strings with escapes.
struct Valid;

impl<'de> serde::Deserialize<'de> for Valid {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(Valid)
    }
}

impl<'de> serde::de::Visitor<'de> for Valid {
    type Value = Valid;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Valid, E> {
        Ok(Valid)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Valid, E> {
        Ok(Valid)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Valid, E> {
        Ok(Valid)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Valid, E> {
        Ok(Valid)
    }
    fn visit_str<E>(self, _: &str) -> Result<Valid, E> {
        Ok(Valid)
    }
    fn visit_unit<E>(self) -> Result<Valid, E> {
        Ok(Valid)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Valid, A::Error> {
        while seq.next_element::<Valid>()?.is_some() {}
        Ok(Valid)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Valid, A::Error> {
        while map.next_entry::<Valid, Valid>()?.is_some() {}
        Ok(Valid)
    }
}

/// The top-level fields of a JSON object, found in its content by the same parser and checks
/// that build the structured view ([`Value`], VRL's), without building it: each key and its value
/// as a span of the content (a string without escapes), a scalar (null, a boolean, a number as
/// VRL reads it, a string with escapes), or a mark for a nested object or array. Reading
/// `.temperature` is then a scan of a few keys in one buffer, where the view is a B-tree of
/// separately allocated keys built for every record and freed on another thread.
///
/// A source that reads many records at once indexes them into one `Fields` (see
/// [`Indexer`]): each record's index is its run of entries in it.
#[derive(Clone, Debug, Default)]
pub struct Fields {
    /// The fields in the content's order, 24 bytes each (they were 64, a key and a `Value`:
    /// the first read of a record on another core missed the cache five lines deep; then 32,
    /// with the key an enum). Up to eight inline: the index is one allocation, its `Arc`'s
    /// (filled on the stack through a borrow and moved there once: see [`Fields::index`]).
    /// With the escaped parts behind a pointer the index and its `Arc`'s counts are 224 bytes,
    /// a 256-byte block of the allocator (it was 328, a 384-byte one). A block of many
    /// records' entries (an [`Indexer`]'s) is on the heap.
    entries: SmallVec<[Entry; 8]>,
    /// Keys and values with escapes (rare).
    escaped: Option<Box<Escaped>>,
}

/// What [`Fields`] keeps out of the content: keys and string values with escapes.
#[derive(Clone, Debug, Default)]
struct Escaped {
    /// Keys with escapes, unescaped.
    keys: Vec<Box<str>>,
    /// Values kept as the view holds them: strings with escapes.
    values: Vec<Value>,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    key: Key,
    value: Slot,
}

/// A key: a span of the content (start, length), or, when the length is [`OWNED`], a key with
/// escapes (its index in [`Escaped::keys`] as the start). A span's length is less than
/// `u32::MAX`: content past 4 GiB is not indexed.
#[derive(Clone, Copy, Debug)]
struct Key {
    start: u32,
    len: u32,
}

/// [`Key::len`] of a key with escapes.
const OWNED: u32 = u32::MAX;

#[derive(Clone, Copy, Debug)]
enum Slot {
    /// A string without escapes: a span of the content.
    Str(u32, u32),
    /// Numbers, booleans and null as the view holds them (VRL's reading: an integer beyond
    /// `i64` is its nearest float).
    Int(i64),
    Float(f64),
    Bool(bool),
    Null,
    /// Another value the view holds: its index in `values`.
    Owned(u32),
    /// An object or an array: read it from the view.
    Nested,
}

/// A record's indexed fields: its run of entries in a block of [`Fields`] (its own, or one
/// shared with the records a source read with it, see [`Indexer`]).
#[derive(Clone, Debug)]
struct Index {
    block: Arc<Fields>,
    at: u32,
    len: u32,
}

impl Index {
    fn entries(&self) -> &[Entry] {
        self.block
            .entries
            .get(self.at as usize..self.at as usize + self.len as usize)
            .unwrap_or_default()
    }
}

/// Indexes the top-level fields of many records in one block ([`JsonView::Fields`]), for a
/// source that reads records a chunk of input at a time.
///
/// One index per record was an allocation of 224 bytes made on the source's core and freed on
/// the consumer's, filled through a copy of the whole index: a tenth of the sensors flow's
/// time went to the allocator's cross-core frees and those copies. A block is one allocation
/// per chunk, its entries packed (a record's five fields are 120 bytes: two or three cache lines, read
/// in order), shared by its records through one count as their content's buffer is.
///
/// Make the records with [`Indexer::json`], then hand them all to [`Indexer::attach`] in the
/// order they were made (records made otherwise may be among them): until then they have no
/// index, and read as any record does (from the structured view).
#[derive(Debug, Default)]
pub struct Indexer {
    block: Fields,
    /// The records indexed, in order.
    runs: Vec<Run>,
    /// About how many bytes of content the block will index (see [`Indexer::for_bytes`]).
    expected: usize,
}

/// A record [`Indexer::json`] indexed: its id, the content it indexed (where it lies and its
/// length: the record must still hold it to be given the index) and its run of entries.
#[derive(Debug)]
struct Run {
    id: RecordId,
    content: (usize, usize),
    at: u32,
    len: u32,
}

/// The identity of a content buffer: where it lies, and its length.
fn identity(content: &Bytes) -> (usize, usize) {
    (content.as_ptr().addr(), content.len())
}

impl Indexer {
    /// An indexer for about `bytes` bytes of content (a chunk of lines): the block is sized
    /// from the first record's fields per byte, at most one entry per five bytes (`"":0,`, the
    /// shortest field); grown by doubling, it was copied half a dozen times a chunk.
    pub fn for_bytes(bytes: usize) -> Self {
        Self {
            expected: bytes,
            ..Self::default()
        }
    }

    /// [`Record::json_numbered`], the fields indexed into this block when `view` is
    /// [`JsonView::Fields`].
    #[allow(
        clippy::result_large_err,
        reason = "the record is handed back on the rare error path"
    )]
    pub fn json(
        &mut self,
        id: RecordId,
        content: Bytes,
        view: JsonView,
    ) -> Result<Record, (Record, ParseError)> {
        if view != JsonView::Fields {
            return Record::json_numbered(id, content, view);
        }
        let indexed = self.block.index_into(&content);
        if let Ok(Some((at, len))) = indexed {
            if self.runs.is_empty() && !content.is_empty() {
                // Room for the expected bytes at the first record's fields per byte (a
                // block a quarter larger raised the peak memory at 10M events by 2 MB;
                // longer records grow it by doubling).
                let total = (len as usize).saturating_mul(self.expected) / content.len();
                let entries = &mut self.block.entries;
                entries.reserve_exact(total.min(self.expected / 5).saturating_sub(entries.len()));
            }
            self.runs.push(Run {
                id,
                content: identity(&content),
                at,
                len,
            });
            return Ok(Record::from_bytes_numbered(id, content));
        }
        // Not an object: checked, and its view is built at once (rare, and small).
        let checked = indexed.and_then(|_| built(&content));
        Record::checked(id, content, checked)
    }

    /// Give the records made by [`Indexer::json`] their index, in one shared block.
    /// `records` are all those it made, in the order it made them; records made otherwise
    /// may be among them (they get none). A record that no longer holds the content it was
    /// indexed for (modified since) gets none either.
    pub fn attach(self, records: &mut [Record]) {
        if self.runs.is_empty() {
            return;
        }
        let block = Arc::new(self.block);
        let mut runs = self.runs.into_iter().peekable();
        for r in records {
            let Some(run) = runs.next_if(|run| run.id == r.id) else {
                continue;
            };
            let same = !r.modified && r.content.as_ref().map(identity) == Some(run.content);
            if same {
                r.fields = Some(Index {
                    block: block.clone(),
                    at: run.at,
                    len: run.len,
                });
            }
        }
        debug_assert!(
            runs.next().is_none(),
            "records indexed were not attached: missing or out of order"
        );
    }
}

/// The structured view of `content`, built.
fn built(content: &[u8]) -> Result<Option<Value>, ParseError> {
    serde_json::from_slice::<Value>(content)
        .map(Some)
        .map_err(ParseError)
}

/// A top-level field read from [`Fields`].
#[derive(Debug, PartialEq)]
pub enum FieldValue {
    /// The object has no such field (the view's `.name` is null).
    Missing,
    /// The field's value, equal to the view's.
    Value(Value),
    /// An object or an array: read it from the view ([`Record::value`]).
    Nested,
}

/// What [`FieldsRef::read_into`] found.
enum Read {
    Missing,
    Value,
    Nested,
}

/// A record's [`Fields`] with the content they index.
#[derive(Clone, Copy, Debug)]
pub struct FieldsRef<'a> {
    /// The block (for keys and values with escapes).
    fields: &'a Fields,
    /// This record's entries in it.
    entries: &'a [Entry],
    content: &'a Bytes,
}

/// A top-level field's value as comparisons read it, borrowed from the content: no `Value`
/// is made (see [`FieldsRef::get_scalar`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Scalar<'a> {
    /// An integer.
    Int(i64),
    /// A float (never NaN).
    Float(f64),
    /// A string without escapes, as its bytes.
    Str(&'a [u8]),
    /// Anything else (missing, null, a boolean, nested, a string with escapes): read it as
    /// a `Value`.
    Other,
}

impl<'a> FieldsRef<'a> {
    /// The entry of the top-level field `name`; the last of several with that name, as in
    /// the view.
    ///
    /// A reference, not a copy: a `Slot` copied out of the search went through the stack in
    /// two overlapping moves (its 15 bytes after the tag), and reading the second back
    /// straddled both stores, a store-forwarding stall that took two thirds of this
    /// function's time in `perf`.
    fn find(&self, name: &str) -> Option<&'a Slot> {
        let f: &'a Fields = self.fields;
        self.entries.iter().rev().find_map(|e| {
            let Key { start, len } = e.key;
            let found = if len as usize == name.len() && len != OWNED {
                self.content
                    .get(span(start, len))
                    .is_some_and(|k| eq_bytes(k, name.as_bytes()))
            } else {
                len == OWNED
                    && f.escaped
                        .as_ref()
                        .and_then(|x| x.keys.get(start as usize))
                        .is_some_and(|k| &**k == name)
            };
            found.then_some(&e.value)
        })
    }

    /// The top-level field `name`; the last of several with that name, as in the view.
    pub fn get(&self, name: &str) -> FieldValue {
        let mut v = Value::Null;
        match self.read_into(name, &mut v) {
            Read::Missing => FieldValue::Missing,
            Read::Value => FieldValue::Value(v),
            Read::Nested => FieldValue::Nested,
        }
    }

    /// [`FieldsRef::get`] written into `out` (`false`, `out` untouched, for an object or an
    /// array: read it from the view; a missing field is null). One search, and the value
    /// made where it goes (see [`crate::expr::Expr::eval_fields_into`]).
    pub fn get_into(&self, name: &str, out: &mut Value) -> bool {
        match self.read_into(name, out) {
            Read::Missing => *out = Value::Null,
            Read::Value => {}
            Read::Nested => return false,
        }
        true
    }

    /// The field `name` written into `out` when it has a value (only then): what
    /// [`FieldsRef::get`] and [`FieldsRef::get_into`] read. The answer is a bare tag, the
    /// value is written in place: a `Value` returned inside an enum is copied on the way out.
    fn read_into(&self, name: &str, out: &mut Value) -> Read {
        let Some(slot) = self.find(name) else {
            return Read::Missing;
        };
        *out = match *slot {
            Slot::Str(start, len) => match self.content.get(span(start, len)) {
                Some(_) => Value::Bytes(self.content.slice(span(start, len))),
                None => return Read::Missing,
            },
            Slot::Int(i) => Value::Integer(i),
            Slot::Float(x) => Value::from_f64_or_zero(x),
            Slot::Bool(b) => Value::Boolean(b),
            Slot::Null => Value::Null,
            Slot::Owned(i) => match self
                .fields
                .escaped
                .as_ref()
                .and_then(|x| x.values.get(i as usize))
            {
                Some(v) => v.clone(),
                None => return Read::Missing,
            },
            Slot::Nested => return Read::Nested,
        };
        Read::Value
    }

    /// The top-level field `name` as a [`Scalar`]: what [`FieldsRef::get`] gives, for
    /// numbers and plain strings, without making a `Value`.
    pub fn get_scalar(&self, name: &str) -> Scalar<'a> {
        match self.find(name) {
            Some(&Slot::Int(i)) => Scalar::Int(i),
            Some(&Slot::Float(x)) => Scalar::Float(if x.is_nan() { 0.0 } else { x }),
            Some(&Slot::Str(start, len)) => self
                .content
                .get(span(start, len))
                .map_or(Scalar::Other, Scalar::Str),
            _ => Scalar::Other,
        }
    }
}

/// Whether two byte strings are equal, without a call for short ones (field names, keys,
/// short string values): two overlapping loads from each end. `memcmp` costs a call and its
/// set-up for every candidate key a lookup compares, more than the compare itself.
#[inline]
pub fn eq_bytes(a: &[u8], b: &[u8]) -> bool {
    fn word(s: &[u8], at: usize) -> u64 {
        s.get(at..at + 8)
            .and_then(|w| <[u8; 8]>::try_from(w).ok())
            .map_or(0, u64::from_ne_bytes)
    }
    fn half(s: &[u8], at: usize) -> u32 {
        s.get(at..at + 4)
            .and_then(|w| <[u8; 4]>::try_from(w).ok())
            .map_or(0, u32::from_ne_bytes)
    }
    let n = a.len();
    if n != b.len() {
        return false;
    }
    match n {
        0 => true,
        1..=3 => a.iter().zip(b).all(|(x, y)| x == y),
        4..=8 => half(a, 0) == half(b, 0) && half(a, n - 4) == half(b, n - 4),
        9..=16 => word(a, 0) == word(b, 0) && word(a, n - 8) == word(b, n - 8),
        _ => a == b,
    }
}

/// A span of the content: start, length.
fn span(start: u32, len: u32) -> std::ops::Range<usize> {
    start as usize..start as usize + len as usize
}

impl Fields {
    /// Check `content` as [`check_json`] does and index its top-level fields into an index of
    /// its own; `None` for valid JSON that is not an object (or content past 4 GiB, whose
    /// spans do not fit).
    fn index(content: &[u8]) -> Result<Option<Index>, ParseError> {
        // Filled on the stack and moved into its `Arc` once: filled in the `Arc` (through
        // `Arc::make_mut`), the counts' compare-and-swap waited for the stores of the fresh
        // block, whose lines were last written by the core that freed it.
        let mut fields = Fields::default();
        Ok(fields.index_into(content)?.map(|(at, len)| Index {
            block: Arc::new(fields),
            at,
            len,
        }))
    }

    /// Check `content` as [`check_json`] does and append the entries of its top-level fields:
    /// their run (first, count) if it is an object; `None`, nothing appended, for valid JSON
    /// that is not an object (or content past 4 GiB, whose spans do not fit). On error
    /// nothing is appended either (keys and values with escapes may be: nothing points to
    /// them).
    fn index_into(&mut self, content: &[u8]) -> Result<Option<(u32, u32)>, ParseError> {
        let Ok(at) = u32::try_from(self.entries.len()) else {
            return check_json(content).map(|()| None);
        };
        if u32::try_from(content.len()).is_err() {
            return check_json(content).map(|()| None);
        }
        let seed = TopSeed {
            base: content.as_ptr() as usize,
            fields: self,
        };
        let object = match std::str::from_utf8(content) {
            // Almost every line: checked once here, and serde_json reads it as text, checking
            // no string again (it checked each string of the bytes on its own, a call each).
            Ok(text) => index_with(serde_json::Deserializer::from_str(text), seed),
            // Read as bytes: the error is serde_json's own, at the same place as always.
            Err(_) => index_with(serde_json::Deserializer::from_slice(content), seed),
        };
        let len = u32::try_from(self.entries.len())
            .ok()
            .and_then(|n| n.checked_sub(at));
        match (object, len) {
            (Ok(true), Some(len)) => Ok(Some((at, len))),
            (object, _) => {
                self.entries.truncate(at as usize);
                object.map(|_| None)
            }
        }
    }
}

/// Index with `de`, which reads the content (text or bytes: the same spans, checks and errors).
fn index_with<'de, R: serde_json::de::Read<'de>>(
    mut de: serde_json::Deserializer<R>,
    seed: TopSeed<'_>,
) -> Result<bool, ParseError> {
    let top = serde::de::DeserializeSeed::deserialize(seed, &mut de)?;
    de.end()?;
    Ok(top)
}

/// Where a borrowed string of the content starts, relative to the content (`base`).
fn offset(base: usize, s: &str) -> (u32, u32) {
    // Both fit: the content is at most `u32::MAX` bytes (checked by `Fields::index_into`).
    let start = (s.as_ptr() as usize).wrapping_sub(base);
    (
        u32::try_from(start).unwrap_or(u32::MAX),
        u32::try_from(s.len()).unwrap_or(0),
    )
}

/// The top-level value while indexing: the fields of an object, into `fields` (`true`), or
/// `false` for anything else (checked).
struct TopSeed<'a> {
    base: usize,
    fields: &'a mut Fields,
}

impl<'de> serde::de::DeserializeSeed<'de> for TopSeed<'_> {
    type Value = bool;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for TopSeed<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(false)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(false)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(false)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(false)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(false)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(false)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        Valid.visit_seq(seq).map(|_| false)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let Fields { entries, escaped } = self.fields;
        let base = self.base;
        while let Some(key) = map.next_key_seed(KeySeed { base })? {
            let key = match key {
                KeyOf::Span(start, len) => Key { start, len },
                KeyOf::Owned(k) => {
                    let keys = &mut escaped.get_or_insert_with(Box::default).keys;
                    keys.push(k);
                    Key {
                        start: u32::try_from(keys.len() - 1).unwrap_or(u32::MAX),
                        len: OWNED,
                    }
                }
            };
            // The value is written where it lies: a `Slot` returned (in a `Result` of an
            // enum) and moved into the entry was copied in moves that read it back at other
            // widths than it was written, a store-forwarding stall for every field.
            entries.push(Entry {
                key,
                value: Slot::Null,
            });
            if let Some(Entry { value, .. }) = entries.last_mut() {
                map.next_value_seed(FieldSeed {
                    base,
                    out: value,
                    escaped,
                })?;
            }
        }
        Ok(true)
    }
}

/// A key as [`Fields`] keeps it.
enum KeyOf {
    Span(u32, u32),
    Owned(Box<str>),
}

struct KeySeed {
    base: usize,
}

impl<'de> serde::de::DeserializeSeed<'de> for KeySeed {
    type Value = KeyOf;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<KeyOf, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> serde::de::Visitor<'de> for KeySeed {
    type Value = KeyOf;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a string")
    }
    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<KeyOf, E> {
        let (start, len) = offset(self.base, s);
        Ok(KeyOf::Span(start, len))
    }
    fn visit_str<E>(self, s: &str) -> Result<KeyOf, E> {
        Ok(KeyOf::Owned(s.into()))
    }
}

/// A field's value, written into `out` as [`Fields`] keeps it (strings with escapes into
/// `escaped`). Numbers and booleans are what VRL's reading (its `Deserialize` for `Value`)
/// makes of them, mapped here without making a `Value` (the view test below and the
/// `json_record` fuzz target hold the two equal).
struct FieldSeed<'a> {
    base: usize,
    out: &'a mut Slot,
    escaped: &'a mut Option<Box<Escaped>>,
}

impl FieldSeed<'_> {
    fn set<E>(self, slot: Slot) -> Result<(), E> {
        *self.out = slot;
        Ok(())
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for FieldSeed<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for FieldSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<(), E> {
        self.set(Slot::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<(), E> {
        self.set(Slot::Int(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<(), E> {
        // VRL: an integer beyond `i64` is its nearest float.
        #[allow(clippy::cast_precision_loss, reason = "as VRL reads it")]
        self.set(i64::try_from(v).map_or(Slot::Float(v as f64), Slot::Int))
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<(), E> {
        // VRL refuses NaN, which JSON cannot spell (serde_json never gives one).
        if v.is_nan() {
            return Err(E::invalid_value(serde::de::Unexpected::Float(v), &self));
        }
        self.set(Slot::Float(v))
    }
    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<(), E> {
        let (start, len) = offset(self.base, s);
        self.set(Slot::Str(start, len))
    }
    fn visit_str<E>(self, s: &str) -> Result<(), E> {
        let values = &mut self.escaped.get_or_insert_with(Box::default).values;
        values.push(Value::from(s));
        let at = u32::try_from(values.len() - 1).unwrap_or(u32::MAX);
        self.set(Slot::Owned(at))
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        self.set(Slot::Null)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<(), A::Error> {
        Valid.visit_seq(seq)?;
        self.set(Slot::Nested)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        Valid.visit_map(map)?;
        self.set(Slot::Nested)
    }
}

/// Approximate heap size of a value, in constant time (it is computed for every record on
/// every edge): a B-tree slot, a key and a small payload per top-level entry.
fn value_size(v: &Value) -> usize {
    const SLOT: usize = std::mem::size_of::<Value>();
    match v {
        Value::Bytes(b) => SLOT + b.len(),
        Value::Object(m) => 64 + m.len() * (SLOT + 24 + 32),
        Value::Array(a) => SLOT + a.len() * (SLOT + 32),
        _ => SLOT,
    }
}

/// Encode a value as compact JSON (one line, no trailing newline).
pub fn encode_json(v: &Value) -> Vec<u8> {
    // Encoding a `Value` cannot fail: every variant serializes (bytes lossily as UTF-8).
    serde_json::to_vec(v).unwrap_or_else(|_| b"null".to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eq_bytes_is_slice_equality() {
        // Every length through the short paths and past them: equal, one byte different at
        // each place, one byte shorter.
        for n in 0..=40usize {
            let a: Vec<u8> = (0..n).map(|i| b'a' + (i % 26) as u8).collect();
            assert!(eq_bytes(&a, &a.clone()), "{n}");
            for i in 0..n {
                let mut b = a.clone();
                b[i] ^= 0x20;
                assert!(!eq_bytes(&a, &b), "{n} at {i}");
            }
            if n > 0 {
                assert!(!eq_bytes(&a, &a[..n - 1]), "{n} shorter");
            }
        }
    }

    #[test]
    fn unmodified_content_is_kept_byte_for_byte() {
        let raw = Bytes::from_static(br#"{"b":1,  "a":2.50}"#);
        let mut r = Record::parse_json(raw.clone()).expect("valid");
        let expected: Value = serde_json::from_str("2.5").expect("json");
        assert_eq!(
            r.value()
                .expect("parsed")
                .as_object()
                .and_then(|o| o.get("a")),
            Some(&expected)
        );
        assert_eq!(r.content(), &raw);
    }

    #[test]
    fn modified_content_is_reencoded() {
        let mut r = Record::from_bytes(&br#"{"a":1}"#[..]);
        let v = r.value_mut().expect("parsed");
        v.as_object_mut()
            .expect("object")
            .insert("b".into(), Value::from("x"));
        assert_eq!(r.content().as_ref(), br#"{"a":1,"b":"x"}"#);
    }

    /// Found by the `json_record` fuzz target: an integer over `i64::MAX` is valid JSON (the
    /// check takes it), and the view, which has only `i64` and `f64` numbers (VRL's), holds
    /// the nearest float. Re-encoded, that float must read back as itself: with serde_json's
    /// default parser it came back one ULP off, so a modified record changed a number it did
    /// not touch at every hop through a flow. Floats near the parser's edge cases too.
    #[test]
    fn numbers_of_the_view_read_back_as_themselves() {
        for raw in [
            "18443372036845877508",
            "[18446744073709551615, 9223372036845877508, -9223372036854775808]",
            "1.8443372036845877e19",
            "2.2250738585072014e-308",
            "0.30000000000000004",
            "1.7976931348623157e308",
            r#"{"a":{"b":[123456789012345678901234567890, 5e-324]}}"#,
        ] {
            let content = Bytes::copy_from_slice(raw.as_bytes());
            let Ok(mut lazy) = Record::parse_json(content.clone()) else {
                panic!("{raw}: the check refused it");
            };
            let Ok(eager) = Record::json(content, JsonView::Eager) else {
                panic!("{raw}: the view could not be built");
            };
            let v = lazy.value().expect("a view").clone();
            assert_eq!(eager.value.as_deref(), Some(&v), "{raw}: both views agree");
            let back: Value = serde_json::from_slice(&encode_json(&v)).expect("re-encoded JSON");
            assert_eq!(back, v, "{raw}: the view re-encodes to itself");
        }
        // Beyond `i64`, an integer is the nearest float in the view; the content of a record
        // nobody modified stays as it was read.
        let raw = Bytes::from_static(b"18443372036845877508");
        let Ok(mut r) = Record::parse_json(raw.clone()) else {
            panic!("the check refused it");
        };
        #[allow(clippy::cast_precision_loss, reason = "the nearest float is the point")]
        let nearest = Value::from(&serde_json::json!(18443372036845877508u64 as f64));
        assert_eq!(r.value().ok(), Some(&nearest));
        assert_eq!(r.content(), &raw);
    }

    /// Indexed fields read what the structured view holds: the last of duplicate keys, keys and
    /// strings with escapes, integers beyond `i64` (as VRL's nearest float), floats, nulls,
    /// booleans; objects and arrays are left to the view; a missing field is missing. Content
    /// that is not an object gets its view at once, and JSON the view refuses is refused alike.
    #[test]
    fn indexed_fields_read_what_the_view_holds() {
        let raw = r#"{"device":"car-1","t":95.5,"n":-3,"big":18446744073709551615,"ok":true,
            "none":null,"esc\u00e9":"a\"b","s":"\ud83d\ude00","nested":{"a":[1]},"list":[1,2],
            "dup":1,"dup":"last","e":1e3,"":"empty key"}"#;
        let content = Bytes::copy_from_slice(raw.as_bytes());
        let Ok(r) = Record::json(content.clone(), JsonView::Fields) else {
            panic!("refused");
        };
        assert!(r.parsed_value().is_none(), "no view built");
        let Some(fields) = r.fields() else {
            panic!("not indexed");
        };
        let Ok(Value::Object(view)) = serde_json::from_slice::<Value>(&content) else {
            panic!("no view");
        };
        for (k, v) in &view {
            let want = match v {
                Value::Object(_) | Value::Array(_) => FieldValue::Nested,
                v => FieldValue::Value(v.clone()),
            };
            assert_eq!(fields.get(k.as_str()), want, "{k}");
        }
        assert_eq!(view.len(), 13);
        assert_eq!(fields.get("dup"), FieldValue::Value(Value::from("last")));
        assert_eq!(fields.get("missing"), FieldValue::Missing);
        // Modified, the record no longer has them (its content is re-encoded).
        let mut m = r.clone();
        m.set_attribute("a", "b");
        assert!(m.fields().is_some(), "attributes are not the content");
        m.set_value(Value::from(1));
        assert!(m.fields().is_none());

        for other in ["[1,2]", "3", "\"x\"", "null"] {
            let Ok(mut r) = Record::json(Bytes::from_static(other.as_bytes()), JsonView::Fields)
            else {
                panic!("{other} refused");
            };
            assert!(r.fields().is_none());
            assert!(r.parsed_value().is_some(), "{other}: view built at once");
            let want: Value = serde_json::from_str(other).expect("json");
            assert_eq!(r.value().expect("view"), &want);
        }
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(200), "]".repeat(200));
        for bad in [
            &b"{\"a\":1,}"[..],
            b"{\"a\":\"\xff\"}",
            b"{\"a\":\"\\ud800\"}",
            b"{\"a\":1e400}",
            b"{\"a\":1} x",
            b"{\"\xff\":1}",
            deep.as_bytes(),
        ] {
            let eager = Record::json(Bytes::copy_from_slice(bad), JsonView::Eager);
            let fields = Record::json(Bytes::copy_from_slice(bad), JsonView::Fields);
            match (eager, fields) {
                (Err((_, e)), Err((_, f))) => assert_eq!(e.to_string(), f.to_string()),
                _ => panic!("{:?} accepted", String::from_utf8_lossy(bad)),
            }
        }
    }

    /// Records indexed into one block ([`Indexer`]) read what their own indexes read, field
    /// for field, whatever fails or is not an object between them (escaped keys and values
    /// of several records in one block, a failed record's partial entries left out); until
    /// attached they have no index, and records made elsewhere among them keep none.
    #[test]
    fn records_indexed_in_one_block_read_as_their_own() {
        let lines: [&[u8]; 8] = [
            br#"{"device":"a","t":1,"esc\u00e9":"x\"y"}"#,
            b"{\"device\":\"b\",\"bad\":1,}",
            b"[1,2]",
            br#"{"k\u0041":"v\u0042","t":2.5,"n":{"a":1}}"#,
            br#"{}"#,
            b"{\"a\":\"\xff\"}",
            br#"{"device":"c","dup":1,"dup":2}"#,
            br#"{"esc\u00e9":"z\n"}"#,
        ];
        let mut ix = Indexer::for_bytes(lines.iter().map(|l| l.len()).sum());
        let mut records = Vec::new();
        let mut failed = 0;
        for (i, line) in lines.iter().enumerate() {
            let content = Bytes::from_static(line);
            match ix.json(RecordId(i as u64 + 1), content.clone(), JsonView::Fields) {
                Ok(r) => {
                    assert!(r.fields().is_none(), "not attached yet");
                    records.push(r);
                }
                Err((r, e)) => {
                    failed += 1;
                    let Err((_, own)) = Record::json(content.clone(), JsonView::Fields) else {
                        panic!("accepted on its own");
                    };
                    assert_eq!(e.to_string(), own.to_string());
                    assert_eq!(r.raw_content(), Some(&content), "handed back unchanged");
                }
            }
            if i == 4 {
                records.push(Record::from_bytes_numbered(
                    RecordId(100),
                    &b"{\"x\":1}"[..],
                ));
            }
        }
        assert_eq!(failed, 2);
        // What failed left nothing behind: the block holds exactly the runs.
        let held: u32 = ix.runs.iter().map(|r| r.len).sum();
        assert_eq!(ix.block.entries.len(), held as usize);
        ix.attach(&mut records);
        assert!(
            records
                .iter()
                .all(|r| r.id() != RecordId(100) || r.fields().is_none())
        );
        let mut indexed = 0;
        for r in records.iter().filter(|r| r.id() != RecordId(100)) {
            let content = r.raw_content().expect("unmodified").clone();
            let own = Record::json(content.clone(), JsonView::Fields).expect("valid");
            match (r.fields(), own.fields()) {
                (Some(block), Some(own)) => {
                    indexed += 1;
                    let Ok(Value::Object(view)) = serde_json::from_slice::<Value>(&content) else {
                        panic!("not an object");
                    };
                    for k in view.keys().map(|k| k.as_str()).chain(["missing"]) {
                        assert_eq!(block.get(k), own.get(k), "{k}");
                    }
                    assert_eq!(block.entries.len(), own.entries.len());
                }
                (None, None) => assert!(r.parsed_value().is_some(), "not an object: viewed"),
                _ => panic!("indexed one way only"),
            }
        }
        assert_eq!(indexed, 5);

        // A record modified before it is attached (its content re-encoded) gets no index.
        let mut ix = Indexer::default();
        let mut r = ix
            .json(
                RecordId(1),
                Bytes::from_static(br#"{"a":1}"#),
                JsonView::Fields,
            )
            .expect("valid");
        r.set_value(Value::from(2));
        let _ = r.content();
        let mut records = vec![r];
        ix.attach(&mut records);
        assert!(records[0].fields().is_none());
    }

    /// A block is sized from the first record's fields per byte, at most an entry per five
    /// bytes: a wide first line before many short or blank ones asks for no more than that.
    #[test]
    fn a_block_is_sized_by_bytes_not_lines() {
        let wide = format!("{{{}\"z\":0}}", "\"\":0,".repeat(20_000));
        let mut chunk = wide.clone().into_bytes();
        chunk.extend(std::iter::repeat_n(b'\n', 60_000));
        let mut ix = Indexer::for_bytes(chunk.len());
        ix.json(RecordId(1), Bytes::from(wide), JsonView::Fields)
            .expect("valid");
        // (the first record's own entries grew the block by doubling)
        let cap = ix.block.entries.capacity();
        assert!(cap <= (chunk.len() / 5).max(2 * 20_001), "{cap}");
        assert!(ix.block.entries.capacity() >= 20_001);
    }

    #[test]
    fn malformed_json_is_an_error_not_a_panic() {
        let mut r = Record::from_bytes(&b"{nope"[..]);
        assert!(r.value().is_err());
        assert!(Record::parse_json(Bytes::from_static(b"[1,")).is_err());
    }

    #[test]
    fn copies_made_before_the_parse_share_it() {
        let mut r = Record::parse_json(Bytes::from_static(br#"{"a":1}"#)).expect("valid");
        let mut c = r.fork();
        let mut d = c.clone();
        assert!(r.parsed_value().is_none());
        let parsed: *const Value = c.value().expect("parsed");
        assert!(std::ptr::eq(r.value().expect("parsed"), parsed));
        assert!(std::ptr::eq(d.value().expect("parsed"), parsed));
        // A modified copy leaves the others alone.
        d.value_mut()
            .expect("parsed")
            .as_object_mut()
            .expect("object")
            .clear();
        assert_eq!(d.content().as_ref(), b"{}");
        assert_eq!(r.content().as_ref(), br#"{"a":1}"#);
        assert!(std::ptr::eq(r.value().expect("parsed"), parsed));
    }

    /// Copies of a record with indexed fields do not share a cell for the view (their
    /// consumers read fields; the cell cost an allocation per copy): each builds its own,
    /// equal to the other's.
    #[test]
    fn copies_of_indexed_records_build_their_own_view() {
        let raw = Bytes::from_static(br#"{"a":1,"b":"x"}"#);
        let mut r = Record::json(raw, JsonView::Fields).expect("valid");
        assert!(r.fields().is_some());
        let mut c = r.fork();
        assert!(r.parsed().is_none() && c.parsed().is_none());
        let parsed: *const Value = c.value().expect("parsed");
        assert!(!std::ptr::eq(r.value().expect("parsed"), parsed));
        assert_eq!(r.value().expect("parsed"), c.value().expect("parsed"));
    }

    #[test]
    fn json_is_checked_without_building_it() {
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        let bad: [&[u8]; 8] = [
            b"{nope",
            b"[1,",
            b"{\"a\":1} x",
            b"\"\xff\"",
            b"",
            b"\"\\ud800\"",
            b"[1e400]",
            deep.as_bytes(),
        ];
        for bad in bad {
            let lazy = Record::json(Bytes::copy_from_slice(bad), JsonView::Lazy);
            let eager = Record::json(Bytes::copy_from_slice(bad), JsonView::Eager);
            // Whatever reads the view later, a source finds the same lines bad.
            match (lazy, eager) {
                (Err((_, l)), Err((_, e))) => assert_eq!(l.to_string(), e.to_string()),
                _ => panic!("{:?} accepted", String::from_utf8_lossy(bad)),
            }
        }
        let mut r =
            Record::parse_json(Bytes::from_static(br#" {"a": [1, "\u00e9"]} "#)).expect("valid");
        assert!(r.parsed_value().is_none());
        assert!(r.value().expect("parsed").is_object());
        let eager = Record::json(Bytes::from_static(br#"{"a":1}"#), JsonView::Eager);
        assert!(eager.expect("valid").parsed_value().is_some());
        assert!(Record::json(Bytes::from_static(b"[1,"), JsonView::Eager).is_err());
        let mut t = Record::from_text(Bytes::from_static(b"not json"));
        assert_eq!(t.value().expect("text"), &Value::from("not json"));
    }

    /// A record's own index with its `Arc`'s counts fits the allocator's 256-byte blocks.
    #[test]
    fn an_index_is_at_most_240_bytes() {
        let size = std::mem::size_of::<Fields>();
        assert!(size + 16 <= 256, "{size}");
        assert_eq!(std::mem::size_of::<Entry>(), 24);
    }

    /// Records move inline (no `memcpy` call) and take two cache lines at most.
    #[test]
    fn a_record_is_at_most_128_bytes() {
        assert!(
            std::mem::size_of::<Record>() <= 128,
            "{}",
            std::mem::size_of::<Record>()
        );
    }

    #[test]
    fn clones_share_the_parsed_view() {
        let mut r = Record::from_bytes(&br#"{"a":1}"#[..]);
        r.value().expect("parsed");
        let c = r.clone();
        assert!(c.parsed_value().is_some());
        assert_eq!(c.id(), r.id());
    }

    #[test]
    fn derive_links_the_parent_and_moves_the_ack() {
        let mut tracker = crate::ack::AckTracker::new();
        let mut r = Record::from_bytes(&b"{}"[..]).with_acks(Acks::one(tracker.token(0)));
        let child = r.derive(Value::from(1));
        assert_eq!(child.parents(), &[r.id()]);
        assert!(r.acks().is_empty());
        assert_eq!(child.acks().len(), 1);
        drop(r);
        child.finish();
        let f = tracker.try_next().expect("finished");
        assert_eq!(f.status, AckStatus::Delivered);
    }
}
