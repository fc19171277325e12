//! Replay (NiFi's): the content and attributes a node kept of a record (`provenance.content`),
//! found again in the store, and written as lines a `file` or `stdin` source reads back as the
//! same records.

use std::path::Path;

use super::query::{Events, Lineage};
use super::store::{self, StoreError};
use super::{EventKind, Kept};
use crate::record::RecordId;

/// One kept record, with the node that kept it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Replayable {
    /// The node that received the record and kept it.
    pub node: String,
    /// What it kept.
    #[serde(flatten)]
    pub kept: Kept,
}

/// Why a record cannot be replayed.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The store could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No event names the record.
    #[error("no event names record {0}")]
    Unknown(RecordId),
    /// Nothing of the record's lineage was kept.
    #[error(
        "no content of record {0} was kept: name the processor it entered in \
         `provenance.content` to keep it"
    )]
    NotKept(RecordId),
    /// What was kept is not the whole record.
    #[error("record {id}'s content at `{node}` was not kept whole: {why}")]
    Partial {
        /// The record.
        id: RecordId,
        /// The node.
        node: String,
        /// Why.
        why: String,
    },
}

/// The kept copies of record `id` and of its descendants (its lineage: fork copies, window
/// outputs), in the order the store has them; only those kept at `node` if given.
pub fn find(dir: &Path, id: RecordId, node: Option<&str>) -> Result<Vec<Replayable>, ReplayError> {
    let events = Events::read(dir)?;
    let tree = events.lineage(id)?.ok_or(ReplayError::Unknown(id))?;
    let mut ids = Vec::new();
    collect(&tree, &mut ids);
    // The record asked for first, then the rest of its tree.
    ids.retain(|i| *i != id.0);
    ids.insert(0, id.0);
    let mut found: Vec<(usize, Replayable)> = Vec::new();
    for (n, path) in store::segments(dir)? {
        let Some(seg) = store::read_segment(n, &path)? else {
            continue;
        };
        for e in seg.frames.iter().flatten() {
            if e.kind != EventKind::Content {
                continue;
            }
            let name = seg
                .header
                .nodes
                .get(e.node as usize)
                .map_or_else(|| format!("#{}", e.node), |n| n.name.clone());
            if node.is_some_and(|want| want != name) {
                continue;
            }
            let lines: Vec<&str> = e.detail.as_deref().unwrap_or("").lines().collect();
            for (rank, want) in ids.iter().enumerate() {
                let Some(i) = e.records.position(*want) else {
                    continue;
                };
                if let Some(kept) = lines
                    .get(i)
                    .and_then(|l| serde_json::from_str::<Kept>(l).ok())
                {
                    found.push((
                        rank,
                        Replayable {
                            node: name.clone(),
                            kept,
                        },
                    ));
                }
            }
        }
    }
    // The record itself before its descendants; each in store order.
    found.sort_by_key(|(rank, _)| usize::from(*rank != 0));
    if found.is_empty() {
        return Err(ReplayError::NotKept(id));
    }
    Ok(found.into_iter().map(|(_, r)| r).collect())
}

fn collect(l: &Lineage, ids: &mut Vec<u64>) {
    if let Ok(id) = u64::from_str_radix(&l.id, 16) {
        ids.push(id);
    }
    for c in &l.children {
        collect(c, ids);
    }
}

/// The line a `file` source (`format: json` or `lines`) reads back as the kept record's
/// content: the content itself, or, if it spans lines, its JSON re-encoded on one.
pub fn line(r: &Replayable) -> Result<String, ReplayError> {
    let partial = |why: &str| ReplayError::Partial {
        id: RecordId(u64::from_str_radix(&r.kept.id, 16).unwrap_or_default()),
        node: r.node.clone(),
        why: why.to_owned(),
    };
    if r.kept.truncated {
        return Err(partial("it was longer than `max_content_bytes`"));
    }
    let Some(content) = &r.kept.content else {
        return Err(partial(r.kept.withheld.as_deref().unwrap_or("withheld")));
    };
    if !content.contains(['\n', '\r']) {
        return Ok(content.clone());
    }
    serde_json::from_str::<serde_json::Value>(content)
        .ok()
        .and_then(|v| serde_json::to_string(&v).ok())
        .ok_or_else(|| partial("it spans several lines and is not JSON"))
}
