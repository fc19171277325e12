//! Queries over a provenance store: the lineage of a record, a search of events, stats.
//! They read every segment (this first version keeps no index).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::store::{self, Header, StoreError};
use super::{Event, EventKind};
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

/// Every event of a store, in order, with the segments' headers.
pub struct Events {
    headers: Vec<Header>,
    events: Vec<Found>,
    segments: usize,
    bytes: u64,
}

impl Events {
    /// Read the store in `dir`.
    pub fn read(dir: &Path) -> Result<Self, StoreError> {
        let mut headers = Vec::new();
        let mut events = Vec::new();
        let (mut segments, mut bytes) = (0, 0);
        for (n, path) in store::segments(dir)? {
            let Some(seg) = store::read_segment(n, &path)? else {
                continue;
            };
            segments += 1;
            bytes += seg.len;
            let h = headers.len();
            let mut ordinal = 0u64;
            for frame in seg.frames {
                for e in frame {
                    events.push(found(&seg.header, h, (n << 32) | ordinal, e));
                    ordinal += 1;
                }
            }
            headers.push(seg.header);
        }
        Ok(Self {
            headers,
            events,
            segments,
            bytes,
        })
    }

    /// Every event.
    pub fn all(&self) -> &[Found] {
        &self.events
    }

    /// Events at `node` (if given) of `kind` (if given) at `port` (if given), at most `limit`.
    pub fn search(
        &self,
        node: Option<&str>,
        port: Option<&str>,
        kind: Option<EventKind>,
        limit: usize,
    ) -> Vec<&Found> {
        self.events
            .iter()
            .filter(|e| node.is_none_or(|n| e.node == n))
            .filter(|e| port.is_none_or(|p| e.port.as_deref() == Some(p)))
            .filter(|e| kind.is_none_or(|k| e.kind == k))
            .take(limit)
            .collect()
    }

    /// The lineage of record `id`: the tree from the record its source created to every
    /// copy and descendant. `None` if no event names it.
    pub fn lineage(&self, id: RecordId) -> Option<Lineage> {
        let mut root = id.0;
        // Up through the forks that made it, to the source's record.
        'up: loop {
            for e in &self.events {
                if e.kind != EventKind::Fork {
                    continue;
                }
                for c in &e.raw.children {
                    if let Some(i) = c.ids.position(root)
                        && let Some(parent) = e.raw.records.get(i)
                    {
                        root = parent;
                        continue 'up;
                    }
                }
            }
            break;
        }
        let tree = self.tree(root, 0);
        (!tree.events.is_empty()).then_some(tree)
    }

    fn tree(&self, id: u64, depth: usize) -> Lineage {
        let mut steps = Vec::new();
        let mut children = Vec::new();
        for e in &self.events {
            let Some(i) = e.raw.records.position(id) else {
                continue;
            };
            let origin = e.raw.origin.as_ref().and_then(|o| o.seqs.get(i));
            steps.push(Step {
                event: e.event,
                kind: e.kind,
                time: e.time,
                node: e.node.clone(),
                port: e.port.clone(),
                origin,
                detail: e.detail.clone(),
            });
            // A record forked more than 64 deep is a cycle of bad data: stop.
            if e.kind == EventKind::Fork && depth < 64 {
                for c in &e.raw.children {
                    if let Some(child) = c.ids.get(i) {
                        children.push(self.tree(child, depth + 1));
                    }
                }
            }
        }
        Lineage {
            id: RecordId(id).to_string(),
            events: steps,
            children,
        }
    }

    /// Counts: segments, bytes, events by kind and by node, the time range.
    pub fn stats(&self) -> Stats {
        let mut by_kind: BTreeMap<String, u64> = BTreeMap::new();
        let mut by_node: BTreeMap<String, u64> = BTreeMap::new();
        let mut created = 0u64;
        for e in &self.events {
            *by_kind.entry(e.kind.name().to_owned()).or_default() += 1;
            *by_node.entry(e.node.clone()).or_default() += 1;
            if e.kind == EventKind::Create {
                created += e.records as u64;
            }
        }
        Stats {
            segments: self.segments,
            bytes: self.bytes,
            events: self.events.len() as u64,
            records_created: created,
            first: self.events.iter().map(|e| e.time).min(),
            last: self.events.iter().map(|e| e.time).max(),
            by_kind,
            by_node,
            flows: {
                let mut f: Vec<String> = self.headers.iter().map(|h| h.flow.clone()).collect();
                f.sort();
                f.dedup();
                f
            },
        }
    }
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
}

/// A store's numbers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// Segment files.
    pub segments: usize,
    /// Bytes on disk.
    pub bytes: u64,
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
