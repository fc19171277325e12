//! Queries over a provenance store: the lineage of a record, a search of events, stats.
//!
//! Opening the store reads each segment's header and index (see [`super::index`]), not its
//! events; a query then reads only the blocks its index says can answer it: those whose id
//! ranges hold the record (and, in turn, each copy FORKs made of it) for a lineage, those in
//! the time range with the node and kind asked for in a search. `stats` reads no event.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::index::{self, Block};
use super::store::{self, Header, StoreError, io, next_frame};
use super::{Event, EventKind, Runs};
use crate::record::RecordId;

/// An event as a query shows it: node and port by name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Found {
    /// The event's id: its segment number (high 32 bits) and its place in the segment.
    pub event: u64,
    /// What happened.
    pub kind: EventKind,
    /// When (epoch ms).
    pub time: i64,
    /// The flow.
    pub flow: String,
    /// The node.
    pub node: String,
    /// The port.
    pub port: Option<String>,
    /// How many records.
    pub records: usize,
    /// The first record's id.
    pub first: String,
    /// FAILURE's message, SEND's destination, DROP's reason.
    pub detail: Option<String>,
    #[serde(skip)]
    raw: Event,
    #[serde(skip)]
    header: usize,
}

/// What a search asks for; `None` matches anything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Search {
    /// Only at this node.
    pub node: Option<String>,
    /// Only at this port.
    pub port: Option<String>,
    /// Only of this kind.
    pub kind: Option<EventKind>,
    /// Only at or after this time (epoch ms).
    pub since: Option<i64>,
    /// Only at or before this time (epoch ms).
    pub until: Option<i64>,
    /// Only records that carry this attribute (name, value), secret attributes never:
    /// an event matches with the records of it that had it (see [`Events::search`]).
    pub attr: Option<(String, String)>,
    /// At most this many (the oldest).
    pub limit: usize,
}

/// One segment, as a query sees it: its header and its blocks.
struct Seg {
    number: u64,
    path: PathBuf,
    header: Header,
    format: store::Format,
    blocks: Vec<Block>,
    bytes: u64,
    index_bytes: u64,
}

/// A store opened for queries: every segment's header and index.
pub struct Events {
    segs: Vec<Seg>,
    /// Blocks read so far (what the indexes saved shows against [`Events::blocks`]).
    reads: std::sync::atomic::AtomicU64,
}

/// A block's place: (segment, block), indexes into [`Events::segs`].
type BlockAt = (usize, usize);

impl Events {
    /// Open the store in `dir` (its headers and indexes; a segment without a whole index is
    /// scanned for the part it lacks).
    pub fn read(dir: &Path) -> Result<Self, StoreError> {
        let mut segs = Vec::new();
        for (number, path) in store::segments(dir)? {
            let Some(loaded) = index::load(&path)? else {
                continue;
            };
            let Some(header) = read_header(&path, loaded.header_end)? else {
                continue;
            };
            let index_bytes = std::fs::metadata(index::path_of(&path)).map_or(0, |m| m.len());
            segs.push(Seg {
                number,
                path,
                header,
                format: loaded.format,
                blocks: loaded.blocks,
                bytes: loaded.len + index_bytes,
                index_bytes,
            });
        }
        Ok(Self {
            segs,
            reads: Default::default(),
        })
    }

    /// How many blocks the store has.
    pub fn blocks(&self) -> usize {
        self.segs.iter().map(|s| s.blocks.len()).sum()
    }

    /// How many blocks queries have read so far.
    pub fn blocks_read(&self) -> u64 {
        self.reads.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The events of a block, in order.
    fn block(&self, (s, b): BlockAt) -> Result<Vec<Event>, StoreError> {
        let seg = &self.segs[s];
        let block = &seg.blocks[b];
        self.reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut bytes = vec![0; usize::try_from(block.len).unwrap_or(0)];
        let mut f = File::open(&seg.path).map_err(io(&seg.path))?;
        f.seek(SeekFrom::Start(block.offset))
            .and_then(|_| f.read_exact(&mut bytes))
            .map_err(io(&seg.path))?;
        let mut at = 0;
        let mut events = Vec::with_capacity(usize::try_from(block.events).unwrap_or(0));
        while let Some(p) = next_frame(&bytes, &mut at) {
            match seg.format.events(p) {
                Ok(mut e) => events.append(&mut e),
                Err(_) => break,
            }
        }
        Ok(events)
    }

    fn found(&self, (s, b): BlockAt, i: usize, raw: Event) -> Found {
        let seg = &self.segs[s];
        let ordinal = seg.blocks[b].first_event + i as u64;
        found(&seg.header, s, (seg.number << 32) | ordinal, raw)
    }

    /// Events matching `q`, oldest first, at most `q.limit`.
    ///
    /// With `q.attr` (`k`, `v`), an event matches with only those of its records that
    /// carried `k` = `v`: for an event with attribute digests (CREATE, RECEIVE, MODIFY,
    /// FAILURE; a JOIN's output), the records whose attribute set then had it; for another
    /// (ROUTE, FORK, DROP, SEND, ...), the records that had it at an earlier event (their
    /// node's RECEIVE or MODIFY, or an earlier node's).
    pub fn search(&self, q: &Search) -> Result<Vec<Found>, StoreError> {
        let mut out = Vec::new();
        let mut attr = q.attr.as_ref().map(|(k, v)| AttrMatch {
            name: k.clone(),
            value: v.clone(),
            digests: Default::default(),
            ids: Default::default(),
        });
        for (s, seg) in self.segs.iter().enumerate() {
            if out.len() >= q.limit {
                break;
            }
            let node = match &q.node {
                Some(name) => match seg.header.nodes.iter().position(|n| &n.name == name) {
                    Some(i) => Some(u32::try_from(i).unwrap_or(u32::MAX)),
                    None => continue,
                },
                None => None,
            };
            for (b, block) in seg.blocks.iter().enumerate() {
                if out.len() >= q.limit {
                    break;
                }
                // An attribute search reads every block up to the time range: the sets
                // its events' digests stand for, and the records that had the attribute.
                let skip = !block.overlaps(q.since, q.until)
                    || q.kind.is_some_and(|k| !block.has_kind(k))
                    || node.is_some_and(|n| !block.has_node(n));
                if skip && (attr.is_none() || q.until.is_some_and(|t| block.time.0 > t)) {
                    continue;
                }
                for (i, mut e) in self.block((s, b))?.into_iter().enumerate() {
                    if let Some(a) = &mut attr {
                        match a.narrow(&mut e) {
                            Some(true) => {}
                            Some(false) | None => continue,
                        }
                    }
                    let hit = node.is_none_or(|n| e.node == n)
                        && q.kind.is_none_or(|k| e.kind == k)
                        && q.since.is_none_or(|t| e.time >= t)
                        && q.until.is_none_or(|t| e.time <= t);
                    if !hit {
                        continue;
                    }
                    let f = self.found((s, b), i, e);
                    if q.port.as_ref().is_some_and(|p| f.port.as_ref() != Some(p)) {
                        continue;
                    }
                    out.push(f);
                    if out.len() >= q.limit {
                        break;
                    }
                }
            }
        }
        Ok(out)
    }

    /// The lineage of record `id`: the tree from the record its source created to every
    /// copy and descendant. `None` if no event names it.
    pub fn lineage(&self, id: RecordId) -> Result<Option<Lineage>, StoreError> {
        let mut r = LineageReader {
            events: self,
            cache: HashMap::new(),
        };
        let mut root = id.0;
        // Up through the forks that made it, to the source's record (a cycle of bad data
        // stops after 64 steps).
        'up: for _ in 0..64 {
            for (at, i) in r.naming(root)? {
                let e = &r.cache[&at][i];
                if !matches!(e.kind, EventKind::Fork | EventKind::Replay) {
                    continue;
                }
                for c in &e.children {
                    if let Some(p) = c.ids.position(root)
                        && let Some(parent) = e.records.get(p)
                    {
                        root = parent;
                        continue 'up;
                    }
                }
            }
            break;
        }
        let tree = r.tree(root, 0, false)?;
        Ok((!tree.events.is_empty()).then_some(tree))
    }

    /// Counts: segments, bytes, events by kind and by node, the time range (from the
    /// indexes: no event is read).
    pub fn stats(&self) -> Stats {
        let mut by_kind: BTreeMap<String, u64> = BTreeMap::new();
        let mut by_node: BTreeMap<String, u64> = BTreeMap::new();
        let (mut events, mut created) = (0u64, 0u64);
        let (mut first, mut last): (Option<i64>, Option<i64>) = (None, None);
        for seg in &self.segs {
            for b in &seg.blocks {
                events += b.events;
                created += b.created;
                if b.events > 0 {
                    first = Some(first.map_or(b.time.0, |f| f.min(b.time.0)));
                    last = Some(last.map_or(b.time.1, |l| l.max(b.time.1)));
                }
                for (k, &n) in b.kinds.iter().enumerate() {
                    if n > 0 {
                        let name = EventKind::ALL
                            .get(k)
                            .map_or_else(|| format!("#{k}"), |k| k.name().to_owned());
                        *by_kind.entry(name).or_default() += n;
                    }
                }
                for &(node, n) in &b.nodes {
                    let name = seg
                        .header
                        .nodes
                        .get(node as usize)
                        .map_or_else(|| format!("#{node}"), |n| n.name.clone());
                    *by_node.entry(name).or_default() += n;
                }
            }
        }
        let mut flows: Vec<String> = self.segs.iter().map(|s| s.header.flow.clone()).collect();
        flows.sort();
        flows.dedup();
        Stats {
            segments: self.segs.len(),
            bytes: self.segs.iter().map(|s| s.bytes).sum(),
            index_bytes: self.segs.iter().map(|s| s.index_bytes).sum(),
            events,
            records_created: created,
            first,
            last,
            by_kind,
            by_node,
            flows,
        }
    }
}

/// A lineage query's reads: each block read once.
struct LineageReader<'a> {
    events: &'a Events,
    cache: HashMap<BlockAt, Vec<Event>>,
}

impl LineageReader<'_> {
    /// The events that name `id` (as a record or a FORK's copy), in order: (block, index).
    fn naming(&mut self, id: u64) -> Result<Vec<(BlockAt, usize)>, StoreError> {
        let mut out = Vec::new();
        for (s, seg) in self.events.segs.iter().enumerate() {
            for (b, block) in seg.blocks.iter().enumerate() {
                if !block.may_hold(id) {
                    continue;
                }
                if !self.cache.contains_key(&(s, b)) {
                    let events = self.events.block((s, b))?;
                    self.cache.insert((s, b), events);
                }
                for (i, e) in self.cache[&(s, b)].iter().enumerate() {
                    if e.records.position(id).is_some()
                        || e.children.iter().any(|c| c.ids.position(id).is_some())
                    {
                        out.push(((s, b), i));
                    }
                }
            }
        }
        Ok(out)
    }

    /// The tree of `id`; `joined`: it is a JOIN's output reached from one of its inputs
    /// (whose tree shows the JOIN already).
    fn tree(&mut self, id: u64, depth: usize, joined: bool) -> Result<Lineage, StoreError> {
        let mut steps = Vec::new();
        // Copies (FORK) and outputs (JOIN, `true`) to follow.
        let mut next = Vec::new();
        for (at, i) in self.naming(id)? {
            let e = &self.cache[&at][i];
            let Some(p) = e.records.position(id) else {
                // The record is a JOIN's output: the JOIN is where it began, with its inputs.
                if e.kind == EventKind::Join
                    && !joined
                    && let Some((_, part)) = e.joined().into_iter().find(|(c, _)| *c == id)
                {
                    let inputs = part
                        .clone()
                        .filter_map(|k| e.records.get(k))
                        .map(|i| RecordId(i).to_string())
                        .collect();
                    let mut step = step(
                        joined_step(self.events.found(at, i, e.clone()), id, &part),
                        None,
                    );
                    step.inputs = inputs;
                    steps.push(step);
                }
                continue;
            };
            let mut f = self.events.found(at, i, e.clone());
            let position = e.origin.as_ref().and_then(|o| o.seqs.get(p));
            // A record forked or joined more than 64 deep is a cycle of bad data: stop.
            if depth < 64 {
                match e.kind {
                    EventKind::Fork | EventKind::Replay => {
                        next.extend(
                            e.children
                                .iter()
                                .filter_map(|c| c.ids.get(p))
                                .map(|c| (c, false)),
                        );
                    }
                    EventKind::Join => {
                        if let Some((child, part)) =
                            e.joined().into_iter().find(|(_, part)| part.contains(&p))
                        {
                            f = joined_step(f, child, &part);
                            next.push((child, true));
                        }
                    }
                    _ => {}
                }
            }
            steps.push(step(f, position));
        }
        let mut children = Vec::new();
        for (child, joined) in next {
            children.push(self.tree(child, depth + 1, joined)?);
        }
        Ok(Lineage {
            id: RecordId(id).to_string(),
            events: steps,
            children,
        })
    }
}

/// A lineage step of event `f`; a SEND's position (a Kafka offset) belongs to its
/// destination: `topic/0@42`.
fn step(f: Found, position: Option<u64>) -> Step {
    let (origin, detail) = match (f.kind, position, f.detail) {
        (EventKind::Send, Some(at), Some(d)) => (None, Some(format!("{d}@{at}"))),
        (_, position, detail) => (position, detail),
    };
    Step {
        event: f.event,
        kind: f.kind,
        time: f.time,
        node: f.node,
        port: f.port,
        origin,
        detail,
        inputs: Vec::new(),
    }
}

/// An attribute search's state: the digests of the sets that have the attribute, and the
/// records seen with it so far.
struct AttrMatch {
    name: String,
    value: String,
    digests: std::collections::HashMap<u64, bool>,
    ids: std::collections::HashSet<u64>,
}

impl AttrMatch {
    /// Learn `e`'s attribute sets and narrow its records to those that had the attribute:
    /// `Some(true)` if any is left. Events are given in the order they were written.
    fn narrow(&mut self, e: &mut Event) -> Option<bool> {
        for set in &e.attr_sets {
            let has = set.attributes.get(&self.name) == Some(&self.value);
            self.digests.insert(set.digest, has);
        }
        let mut kept = Vec::new();
        if e.attrs.is_empty() {
            kept.extend(e.records.iter().filter(|id| self.ids.contains(id)));
        } else if e.kind == EventKind::Join {
            // Digest `j` is child `j`'s: the event matches with the children that had it
            // and their inputs (which did not have to have it themselves).
            let joined = e.joined();
            let mut children = Vec::new();
            let mut parts = Vec::new();
            for (j, (child, part)) in joined.iter().enumerate() {
                if e.attrs
                    .get(j)
                    .is_some_and(|d| self.digests.get(&d) == Some(&true))
                {
                    self.ids.insert(*child);
                    children.push(*child);
                    parts.push(u32::try_from(part.len()).unwrap_or(u32::MAX));
                    kept.extend(part.clone().filter_map(|k| e.records.get(k)));
                }
            }
            if children.is_empty() {
                return Some(false);
            }
            if children.len() != joined.len() {
                e.records = Runs::from_ids(kept);
                if let Some(made) = e.children.first_mut() {
                    made.ids = Runs::from_ids(children);
                }
                e.parts = parts;
                e.parts_if_needed();
                e.attrs = Default::default();
            }
            return Some(true);
        } else {
            for (i, id) in e.records.iter().enumerate() {
                if e.attrs
                    .get(i)
                    .is_some_and(|d| self.digests.get(&d) == Some(&true))
                {
                    kept.push(id);
                }
            }
            self.ids.extend(kept.iter().copied());
        }
        // A FORK's copies had what their parents had.
        if e.kind == EventKind::Fork {
            for c in &e.children {
                for (i, parent) in e.records.iter().enumerate() {
                    if self.ids.contains(&parent)
                        && let Some(child) = c.ids.get(i)
                    {
                        self.ids.insert(child);
                    }
                }
            }
        }
        if kept.is_empty() {
            return Some(false);
        }
        if kept.len() != e.records.len() {
            e.records = Runs::from_ids(kept);
            e.attrs = Default::default();
        }
        Some(true)
    }
}

/// A lineage step at a JOIN of several children of several inputs each, told as the one
/// `child` made of the inputs at `part`.
fn joined_step(mut f: Found, child: u64, part: &std::ops::Range<usize>) -> Found {
    if !f.raw.parts.is_empty() {
        f.detail = Some(format!("{} inputs -> {}", part.len(), RecordId(child)));
    }
    f
}

/// A segment's header: its first frame, which ends at `end`.
fn read_header(path: &Path, end: u64) -> Result<Option<Header>, StoreError> {
    let mut bytes = vec![0; usize::try_from(end).unwrap_or(0)];
    File::open(path)
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(io(path))?;
    let mut at = store::MAGIC.len();
    Ok(next_frame(&bytes, &mut at).and_then(|p| postcard::from_bytes::<Header>(p).ok()))
}

fn found(header: &Header, h: usize, event: u64, raw: Event) -> Found {
    let node = header.nodes.get(raw.node as usize);
    let name = node.map_or_else(|| format!("#{}", raw.node), |n| n.name.clone());
    let port = raw.port.map(|p| {
        node.and_then(|n| n.ports.get(p as usize))
            .cloned()
            .unwrap_or_else(|| format!("#{p}"))
    });
    let detail = match raw.kind {
        EventKind::Replay => Some(
            raw.children
                .iter()
                .map(|c| {
                    let id = c.ids.get(0).map(|i| RecordId(i).to_string());
                    let to = c.to.and_then(|t| header.nodes.get(t as usize));
                    format!(
                        "replayed as {} -> {}",
                        id.unwrap_or_default(),
                        to.map_or("?", |n| n.name.as_str())
                    )
                })
                .collect::<Vec<_>>()
                .join(", "),
        ),
        EventKind::Fork => Some(
            raw.children
                .iter()
                .map(|c| {
                    let port = node
                        .and_then(|n| n.ports.get(c.port as usize))
                        .cloned()
                        .unwrap_or_else(|| format!("#{}", c.port));
                    match c.to.and_then(|t| header.nodes.get(t as usize)) {
                        Some(to) => format!("{port} -> {}", to.name),
                        None => port,
                    }
                })
                .collect::<Vec<_>>()
                .join(", "),
        ),
        // Told by the shape `Event::joined` reads (one child; each of one input; parts).
        EventKind::Join => match raw.joined().as_slice() {
            [] | [_] => None,
            many if many.iter().all(|(_, part)| part.len() == 1) => {
                Some(format!("{} records, each made of one input", many.len()))
            }
            many => Some(format!(
                "{} inputs -> {} records",
                raw.records.len(),
                many.len()
            )),
        }
        .or_else(|| {
            Some(format!(
                "{} inputs -> {}",
                raw.records.len(),
                raw.children
                    .iter()
                    .filter_map(|c| c.ids.get(0))
                    .map(|id| RecordId(id).to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        }),
        // The kept content is for `flow provenance replay`, not for listings.
        EventKind::Content => Some(format!("{} records kept", raw.records.len())),
        _ => raw.detail.clone(),
    };
    Found {
        event,
        kind: raw.kind,
        time: raw.time,
        flow: header.flow.clone(),
        node: name,
        port,
        records: raw.records.len(),
        first: raw
            .records
            .get(0)
            .map(|i| RecordId(i).to_string())
            .unwrap_or_default(),
        detail,
        raw,
        header: h,
    }
}

/// The lineage of a record: what happened to it, and its copies' lineages.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lineage {
    /// The record's id.
    pub id: String,
    /// What happened to it, in order.
    pub events: Vec<Step>,
    /// Its copies (a FORK's children).
    pub children: Vec<Lineage>,
}

/// One event of a record's lineage.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// The event's id.
    pub event: u64,
    /// What happened.
    pub kind: EventKind,
    /// When (epoch ms).
    pub time: i64,
    /// The node.
    pub node: String,
    /// The port.
    pub port: Option<String>,
    /// CREATE: the record's position in its source's input.
    pub origin: Option<u64>,
    /// FAILURE's message, SEND's destination, DROP's reason, FORK's ways out.
    pub detail: Option<String>,
    /// JOIN, in the lineage of the record it made: the ids of all its inputs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<String>,
}

/// A store's numbers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Segment files.
    pub segments: usize,
    /// Bytes on disk (segments and their indexes).
    pub bytes: u64,
    /// Of which the indexes.
    pub index_bytes: u64,
    /// Events.
    pub events: u64,
    /// Records sources created.
    pub records_created: u64,
    /// The first event's time (epoch ms).
    pub first: Option<i64>,
    /// The last event's time (epoch ms).
    pub last: Option<i64>,
    /// Events per kind.
    pub by_kind: BTreeMap<String, u64>,
    /// Events per node.
    pub by_node: BTreeMap<String, u64>,
    /// The flows whose runs the store holds.
    pub flows: Vec<String>,
}

impl Lineage {
    /// The tree as indented text lines, with times.
    pub fn render(&self) -> String {
        let mut out = String::new();
        self.render_into(&mut out, 0);
        out
    }

    fn render_into(&self, out: &mut String, depth: usize) {
        use std::fmt::Write as _;
        let pad = "  ".repeat(depth);
        let _ = writeln!(out, "{pad}{}", self.id);
        for s in &self.events {
            let at = match &s.port {
                Some(p) => format!("{}.{p}", s.node),
                None => s.node.clone(),
            };
            let _ = write!(
                out,
                "{pad}  {} {:<8} {at}",
                format_time(s.time),
                s.kind.name()
            );
            if let Some(o) = s.origin {
                let _ = write!(out, " origin={o}");
            }
            if let Some(d) = &s.detail {
                let _ = write!(out, " {d}");
            }
            if !s.inputs.is_empty() {
                const SHOWN: usize = 8;
                let _ = write!(
                    out,
                    " from {}",
                    s.inputs[..s.inputs.len().min(SHOWN)].join(" ")
                );
                if s.inputs.len() > SHOWN {
                    let _ = write!(out, " ... (`--format json` lists all)");
                }
            }
            out.push('\n');
        }
        for c in &self.children {
            c.render_into(out, depth + 1);
        }
    }
}

/// Epoch ms as `HH:MM:SS.mmm` UTC (the day is in the JSON).
pub fn format_time(ms: i64) -> String {
    let day_ms = ms.rem_euclid(86_400_000);
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        day_ms / 3_600_000,
        day_ms / 60_000 % 60,
        day_ms / 1000 % 60,
        day_ms % 1000
    )
}

impl Found {
    /// The ids of the event's records.
    pub fn ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.raw.records.iter()
    }

    /// The header index (which run) of this event.
    pub fn run(&self) -> usize {
        self.header
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provenance::config::Settings;
    use crate::provenance::store::{NodeInfo, Writer};
    use crate::provenance::{Children, Runs};

    const T0: i64 = 1_700_000_000_000;
    const BATCHES: u64 = 5000;

    fn header() -> Header {
        let node = |name: &str| NodeInfo {
            name: name.into(),
            ports: vec!["failure".into(), "out".into()],
        };
        Header {
            flow: "shape".into(),
            nodes: vec![node("src"), node("split"), node("sink"), node("drop")],
            started: T0,
        }
    }

    /// Batch `i`: 1000 records created, forked to two nodes, one copy sent, one dropped.
    fn batch(i: u64) -> Vec<Event> {
        let a = i * 3000;
        let at = |mut e: Event| {
            e.time = T0 + i as i64 * 100;
            e
        };
        let mut fork = Event::new(EventKind::Fork, 1, Runs::run(a, 1000)).at(1);
        fork.children = vec![
            Children {
                port: 1,
                to: Some(2),
                ids: Runs::run(a + 1000, 1000),
            },
            Children {
                port: 1,
                to: Some(3),
                ids: Runs::run(a + 2000, 1000),
            },
        ];
        vec![
            at(Event::new(EventKind::Create, 0, Runs::run(a, 1000))),
            at(Event::new(EventKind::Receive, 1, Runs::run(a, 1000))),
            at(fork),
            at(Event::new(EventKind::Receive, 2, Runs::run(a + 1000, 1000))),
            at(Event::new(EventKind::Send, 2, Runs::run(a + 1000, 1000)).detail("out.jsonl")),
            at(Event::new(EventKind::Receive, 3, Runs::run(a + 2000, 1000))),
            at(Event::new(EventKind::Drop, 3, Runs::run(a + 2000, 1000)).at(0)),
        ]
    }

    /// A store of at most `max_size` bytes in `dir` (segments of an eighth of it, at least
    /// 1 MiB), and a runtime to record into it with.
    fn open_store(dir: &Path, max_size: u64) -> (Writer, tokio::runtime::Runtime) {
        let settings = Settings {
            dir: dir.to_owned(),
            max_age: std::time::Duration::from_secs(3600),
            max_size,
        };
        let w = Writer::open(&settings, header()).expect("opens");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        (w, rt)
    }

    /// Close the store (its node's recorder first), check it rolled over several segments,
    /// and read it back.
    fn close_rolled(w: Writer, rec: crate::provenance::NodeRecorder, dir: &Path) -> Events {
        drop(rec);
        w.close().expect("closes");
        assert!(
            store::segments(dir).expect("segments").len() >= 3,
            "several segments"
        );
        Events::read(dir).expect("opens")
    }

    fn write(dir: &Path) {
        let (w, rt) = open_store(dir, 1 << 30);
        let rec = w.recorder().node(0, true);
        rt.block_on(async {
            for i in 0..BATCHES {
                for e in batch(i) {
                    rec.record(e).await;
                }
            }
        });
        drop(rec);
        let stats = w.close().expect("closes");
        assert_eq!(stats.events, BATCHES * 7);
    }

    fn shape(l: &Lineage) -> Vec<String> {
        let mut out: Vec<String> = l
            .events
            .iter()
            .map(|s| format!("{} {} {}", l.id, s.kind, s.node))
            .collect();
        for c in &l.children {
            out.extend(shape(c));
        }
        out
    }

    #[test]
    fn queries_read_only_the_blocks_the_index_points_at_and_agree_without_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path());
        let (_, seg) = store::segments(dir.path())
            .expect("segments")
            .pop()
            .expect("one");
        let idx = index::path_of(&seg);
        let written_index = std::fs::read(&idx).expect("an index");

        let check = |events: &Events| {
            assert!(events.blocks() >= 4, "{} blocks", events.blocks());
            let id = |n: u64| RecordId(n).to_string();
            // A record of batch 2500, asked for by its id and by a copy's.
            let a = 2500 * 3000 + 5;
            let before = events.blocks_read();
            let tree = events.lineage(RecordId(a)).expect("reads").expect("found");
            assert!(events.blocks_read() - before <= 2, "read too much");
            assert_eq!(
                shape(&tree),
                [
                    format!("{} CREATE src", id(a)),
                    format!("{} RECEIVE split", id(a)),
                    format!("{} FORK split", id(a)),
                    format!("{} RECEIVE sink", id(a + 1000)),
                    format!("{} SEND sink", id(a + 1000)),
                    format!("{} RECEIVE drop", id(a + 2000)),
                    format!("{} DROP drop", id(a + 2000)),
                ]
            );
            let from_copy = events.lineage(RecordId(a + 2000)).expect("reads");
            assert_eq!(from_copy.as_ref(), Some(&tree));
            assert_eq!(
                events.lineage(RecordId(BATCHES * 3000)).expect("reads"),
                None
            );

            // One node, ten batches' time.
            let before = events.blocks_read();
            let q = Search {
                node: Some("sink".into()),
                kind: Some(EventKind::Send),
                since: Some(T0 + 1000 * 100),
                until: Some(T0 + 1009 * 100),
                limit: 100,
                ..Search::default()
            };
            let found = events.search(&q).expect("searches");
            assert!(events.blocks_read() - before <= 2, "read too much");
            let firsts: Vec<String> = found.iter().map(|f| f.first.clone()).collect();
            let want: Vec<String> = (1000..1010).map(|i| id(i * 3000 + 1000)).collect();
            assert_eq!(firsts, want);
            assert!(
                found
                    .iter()
                    .all(|f| f.detail.as_deref() == Some("out.jsonl"))
            );
            // A port, without a node.
            let q = Search {
                port: Some("failure".into()),
                limit: 3,
                ..Search::default()
            };
            let dropped: Vec<(EventKind, String)> = events
                .search(&q)
                .expect("searches")
                .into_iter()
                .map(|f| (f.kind, f.node))
                .collect();
            assert_eq!(dropped, vec![(EventKind::Drop, "drop".to_owned()); 3]);

            let s = events.stats();
            assert_eq!(s.events, BATCHES * 7);
            assert_eq!(s.records_created, BATCHES * 1000);
            assert_eq!(s.by_kind["FORK"], BATCHES);
            assert_eq!(s.by_node["sink"], BATCHES * 2);
            assert_eq!(
                (s.first, s.last),
                (Some(T0), Some(T0 + (BATCHES as i64 - 1) * 100))
            );
            s
        };
        let with_index = check(&Events::read(dir.path()).expect("opens"));

        // Without its index (a run killed before it closed the segment), the segment is
        // scanned, with the same answers; the next run writes the same index again.
        std::fs::remove_file(&idx).expect("rm");
        let without = check(&Events::read(dir.path()).expect("opens"));
        assert_eq!(without.index_bytes, 0);
        assert_eq!(without.bytes + written_index.len() as u64, with_index.bytes);
        store::repair(&seg).expect("repairs");
        assert_eq!(std::fs::read(&idx).expect("rebuilt"), written_index);
        // A torn index is cut back to its entries that hold, and completed.
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&idx)
            .expect("open");
        f.set_len(written_index.len() as u64 - 5).expect("cut");
        drop(f);
        check(&Events::read(dir.path()).expect("opens"));
        store::repair(&seg).expect("repairs");
        assert_eq!(std::fs::read(&idx).expect("rebuilt"), written_index);
    }

    #[test]
    fn attribute_search_finds_exactly_the_records_that_had_it_and_never_a_secret() {
        use crate::provenance::Secrets;
        use crate::record::Record;
        let dir = tempfile::tempdir().expect("tempdir");
        // Segments of 1 MiB: the sets must be defined again in every segment.
        let (w, rt) = open_store(dir.path(), 8 << 20);
        let secrets = std::sync::Arc::new(Secrets {
            attributes: vec!["token".into()],
            fields: Vec::new(),
        });
        let rec = w.recorder().node(1, false).with_policy(secrets, None);
        let (mut blue, mut green) = (Vec::new(), Vec::new());
        rt.block_on(async {
            for i in 0..40_000u64 {
                let mut batch: Vec<Record> = (0..4u64)
                    .map(|k| {
                        let mut r = Record::from_bytes(&b"{}"[..]);
                        let team = if (i + k) % 3 == 0 { "blue" } else { "red" };
                        r.set_attribute("team", team);
                        r.set_attribute("token", format!("s3cr3t-{}", i % 5));
                        if team == "blue" {
                            blue.push(r.id().0);
                        }
                        r.take_modified();
                        r
                    })
                    .collect();
                rec.receive(&batch);
                rec.flush().await;
                // One record a batch turns green here.
                batch[1].set_attribute("team", "green");
                green.push(batch[1].id().0);
                for e in rec.made_and_changed(&mut batch, 1) {
                    rec.record(e).await;
                }
                rec.record(rec.event(EventKind::Route, Runs::of(&batch)).at(1))
                    .await;
            }
        });
        let events = close_rolled(w, rec, dir.path());
        let ids = |kind: Option<EventKind>, k: &str, v: &str| -> Vec<u64> {
            let found = events
                .search(&Search {
                    kind,
                    attr: Some((k.into(), v.into())),
                    limit: usize::MAX,
                    ..Search::default()
                })
                .expect("searches");
            let mut ids: Vec<u64> = found.iter().flat_map(|f| f.ids()).collect();
            ids.sort_unstable();
            ids.dedup();
            ids
        };
        blue.sort_unstable();
        green.sort_unstable();
        assert_eq!(ids(Some(EventKind::Receive), "team", "blue"), blue);
        assert_eq!(ids(Some(EventKind::Modify), "team", "green"), green);
        // ROUTE carries no digests: its records that had the attribute at their RECEIVE or
        // MODIFY here.
        let mut either = [blue.clone(), green.clone()].concat();
        either.sort_unstable();
        either.dedup();
        assert_eq!(ids(Some(EventKind::Route), "team", "blue"), blue);
        assert_eq!(ids(None, "team", "green"), green);
        assert!(ids(None, "team", "purple").is_empty());
        // A secret attribute is never found, and its values are nowhere in the files.
        assert!(ids(None, "token", "s3cr3t-1").is_empty());
        for f in std::fs::read_dir(dir.path()).expect("lists") {
            let bytes = std::fs::read(f.expect("entry").path()).expect("reads");
            assert!(
                !bytes.windows(6).any(|w| w == b"s3cr3t"),
                "a secret in the store"
            );
        }
    }

    /// Attribute sets that differ per record (a late record's window attributes) do not
    /// make the writer forget a set still in use: it is defined again in every segment, and
    /// every record that had it is found, however many sets came and went.
    #[test]
    fn a_set_in_use_outlives_many_sets_used_once() {
        use crate::record::Record;
        let dir = tempfile::tempdir().expect("tempdir");
        // Segments of 1 MiB, 8 MiB kept: six segments, none deleted.
        let (w, rt) = open_store(dir.path(), 8 << 20);
        let rec = w.recorder().node(1, false);
        let mut blue = Vec::new();
        let mut once = Vec::new();
        rt.block_on(async {
            for i in 0..40_000u64 {
                let mut batch: Vec<Record> = (0..2u64)
                    .map(|k| {
                        let mut r = Record::from_bytes(&b"{}"[..]);
                        if k == 0 {
                            r.set_attribute("team", "blue");
                            blue.push(r.id().0);
                        } else {
                            r.set_attribute("window.start", format!("{i:0>64}"));
                            once.push(r.id().0);
                        }
                        r.take_modified();
                        r
                    })
                    .collect();
                rec.receive(&batch);
                rec.flush().await;
                rec.record(rec.event(EventKind::Route, Runs::of(&batch)).at(1))
                    .await;
                batch.clear();
            }
        });
        let events = close_rolled(w, rec, dir.path());
        let ids = |k: &str, v: &str| -> Vec<u64> {
            let found = events
                .search(&Search {
                    kind: Some(EventKind::Receive),
                    attr: Some((k.into(), v.into())),
                    limit: usize::MAX,
                    ..Search::default()
                })
                .expect("searches");
            found.iter().flat_map(|f| f.ids()).collect()
        };
        let found = ids("team", "blue");
        let missing: Vec<usize> = (0..blue.len())
            .filter(|&i| !found.contains(&blue[i]))
            .collect();
        assert!(
            missing.is_empty() && found.len() == blue.len(),
            "{} blue records found of {}; missing (by number) {:?}..",
            found.len(),
            blue.len(),
            &missing[..missing.len().min(10)]
        );
        // The last set used once is found too (it is in the last segment).
        let last = format!("{:0>64}", 39_999);
        assert_eq!(ids("window.start", &last), [*once.last().expect("some")]);
    }

    /// A node (1) that received `inputs` and made `outputs` of them in one batch, recorded
    /// in a fresh store in `dir`: one JOIN, the outputs' parents taken.
    fn made_in_one_batch(
        dir: &Path,
        inputs: &[crate::record::Record],
        outputs: &mut [crate::record::Record],
    ) -> Events {
        let (w, rt) = open_store(dir, 1 << 30);
        let rec = w.recorder().node(1, false);
        rt.block_on(async {
            rec.receive(inputs);
            rec.flush().await;
            let events = rec.made_and_changed(outputs, 1);
            assert_eq!(events.len(), 1, "one JOIN for the batch");
            assert!(
                outputs.iter().all(|r| r.parents().is_empty()),
                "parents taken"
            );
            for e in events {
                rec.record(e).await;
            }
        });
        drop(rec);
        w.close().expect("closes");
        Events::read(dir).expect("opens")
    }

    /// The JOIN events, with the records that had attribute `attr` if given.
    fn joins(events: &Events, attr: Option<(&str, &str)>) -> Vec<Found> {
        events
            .search(&Search {
                kind: Some(EventKind::Join),
                attr: attr.map(|(k, v)| (k.into(), v.into())),
                limit: 10,
                ..Search::default()
            })
            .expect("searches")
    }

    /// Windows emitted together (made of three, one and two inputs) are one JOIN: each
    /// input's lineage goes to its own window, each window's lists its own inputs, and an
    /// attribute search finds the windows that had it with their inputs.
    #[test]
    fn records_made_of_several_inputs_each_are_one_join_per_batch() {
        use crate::record::Record;
        let dir = tempfile::tempdir().expect("tempdir");
        let inputs: Vec<Record> = (0..6)
            .map(|n| Record::from_bytes(format!("{{\"n\":{n}}}")))
            .collect();
        let ids: Vec<u64> = inputs.iter().map(|r| r.id().0).collect();
        let parts: [&[u64]; 3] = [&ids[0..3], &ids[3..4], &ids[4..6]];
        let mut windows: Vec<Record> = parts
            .iter()
            .enumerate()
            .map(|(k, part)| {
                let mut r = Record::from_bytes(format!("{{\"window\":{k}}}"));
                r.set_parents(part.iter().map(|&i| RecordId(i)).collect());
                r.set_attribute("team", if k == 2 { "blue" } else { "red" });
                r
            })
            .collect();
        let made: Vec<u64> = windows.iter().map(|r| r.id().0).collect();
        let events = made_in_one_batch(dir.path(), &inputs, &mut windows);
        let id = |n: u64| RecordId(n).to_string();
        for (k, part) in parts.iter().enumerate() {
            for &input in *part {
                let tree = events
                    .lineage(RecordId(input))
                    .expect("reads")
                    .expect("found");
                assert_eq!(tree.children.len(), 1, "input {input}");
                assert_eq!(tree.children[0].id, id(made[k]));
                let join = tree.events.last().expect("a JOIN");
                assert_eq!(join.kind, EventKind::Join);
                let told = format!("{} inputs -> {}", part.len(), id(made[k]));
                assert_eq!(join.detail.as_deref(), Some(told.as_str()));
            }
            let out = events
                .lineage(RecordId(made[k]))
                .expect("reads")
                .expect("found");
            let want: Vec<String> = part.iter().map(|&i| id(i)).collect();
            assert_eq!(out.events[0].inputs, want);
        }
        let all = joins(&events, None);
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].detail.as_deref(), Some("6 inputs -> 3 records"));
        let blue = joins(&events, Some(("team", "blue")));
        assert_eq!(blue.len(), 1);
        assert_eq!(blue[0].ids().collect::<Vec<_>>(), parts[2]);
        let told = format!("2 inputs -> {}", id(made[2]));
        assert_eq!(blue[0].detail.as_deref(), Some(told.as_str()));
    }

    /// Records made of one input each (a plugin's outputs) are one JOIN per batch, not one
    /// per record, and lineage still pairs each output with its own input.
    #[test]
    fn records_made_of_one_input_each_are_one_join_per_batch() {
        use crate::record::Record;
        let dir = tempfile::tempdir().expect("tempdir");
        let mut inputs: Vec<Record> = (0..100)
            .map(|n| {
                let mut r = Record::from_bytes(format!("{{\"n\":{n}}}"));
                r.set_attribute("team", if n == 42 { "blue" } else { "red" });
                r
            })
            .collect();
        let ids: Vec<u64> = inputs.iter().map(|r| r.id().0).collect();
        let mut outputs: Vec<Record> = inputs
            .iter_mut()
            .map(|r| r.derive(vrl::value::Value::from(1)))
            .collect();
        let made: Vec<u64> = outputs.iter().map(|r| r.id().0).collect();
        let events = made_in_one_batch(dir.path(), &inputs, &mut outputs);
        let id = |n: u64| RecordId(n).to_string();
        let tree = events
            .lineage(RecordId(ids[42]))
            .expect("reads")
            .expect("found");
        assert_eq!(tree.children.len(), 1);
        assert_eq!(tree.children[0].id, id(made[42]));
        let from_output = events
            .lineage(RecordId(made[7]))
            .expect("reads")
            .expect("found");
        let join = &from_output.events[0];
        assert_eq!(join.kind, EventKind::Join);
        assert_eq!(join.inputs, [id(ids[7])]);
        let blue = joins(&events, Some(("team", "blue")));
        assert_eq!(blue.len(), 1);
        assert_eq!(blue[0].ids().collect::<Vec<_>>(), [ids[42]]);
    }
}
