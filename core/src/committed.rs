//! Exactly-once sinks: what a sink records with each commit so that a restart writes every
//! replayed record once.
//!
//! **The problem.** A source commits a record only once every branch finished it, and a window
//! holds its records until a checkpoint (every second, say). A sink, though, writes and
//! finishes a record at once. So after a `kill -9` the source re-reads everything after its
//! last commit, and the sinks write again what they had already written: at-least-once, a
//! pile of duplicates per crash.
//!
//! **The contract, in one place for every sink.** Records carry an [`Origin`]: their source
//! and their position in its input, the same in every run (a file's line number, a window's
//! emission number; see [`crate::record::Origin`]). When a sink commits what it wrote (a file's
//! length, a set of finished objects), it records in the **same atomic write** the highest
//! position per source of the records that commit covers: a [`Written`]. On restart it loads
//! its last commit, cuts off whatever it wrote after it (a file is truncated to the committed
//! length, like Flink's two-phase file sinks discard in-progress parts), and hands the
//! [`Written`] to [`crate::runtime::emit::Input::resume_after`]: from then on the sink's input
//! finishes replayed records at or below those positions as delivered without handing them
//! out. Everything after the commit is written again, once. Nothing changes for the sources,
//! the acks or the windows: the source's commit may lag as far behind as it likes.
//!
//! **When it holds.** Positions are only a high-water mark, so a restart must replay the
//! sink's input in the same order as before. The runtime knows when it does
//! ([`crate::runtime::emit::Input::origins_ordered`]): when the sink has one path back to one
//! source (each node upstream has one incoming edge) and that source replays its uncommitted
//! input as one stream in order
//! ([`crate::processor::ProcessorConfig::replays_in_order`]: a `file` with a `checkpoint`).
//! A fan-in may interleave differently in each run, and a broker redelivers in its own order,
//! so there the sink records no positions and stays at-least-once (its file is still cut back
//! to the last commit, removing torn or unacknowledged tails). A window numbers its outputs
//! only when they are deterministic: with `state` (a restart resumes the same windows), event
//! time (no processing-time firing), no idle timeout, and its input replayed in order.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::record::{Origin, Record};

/// Per source ([`Origin::source`]), the highest position ([`Origin::seq`]) of a record a sink
/// has written and committed. Stored by the sink with its committed state, atomically.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Written(BTreeMap<u32, u64>);

impl Written {
    /// Whether a record at `origin` is covered: written before, to be skipped if replayed.
    pub fn covers(&self, origin: Option<Origin>) -> bool {
        origin.is_some_and(|o| self.0.get(&o.source).is_some_and(|&p| o.seq <= p))
    }

    /// Add the positions of these records.
    pub fn note(&mut self, records: &[Record]) {
        for o in records.iter().filter_map(|r| r.origin) {
            let p = self.0.entry(o.source).or_insert(o.seq);
            *p = (*p).max(o.seq);
        }
    }

    /// No position at all.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The positions, per source.
    pub fn iter(&self) -> impl Iterator<Item = (u32, u64)> + '_ {
        self.0.iter().map(|(&s, &p)| (s, p))
    }
}

/// From positions per source (a sink that computes its own high-water marks, as `s3_sink`
/// does with several objects open at once).
impl FromIterator<(u32, u64)> for Written {
    fn from_iter<I: IntoIterator<Item = (u32, u64)>>(iter: I) -> Self {
        Self(iter.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(source: u32, seq: u64) -> Record {
        let mut r = Record::from_bytes("{}");
        r.origin = Some(Origin { source, seq });
        r
    }

    #[test]
    fn covers_per_source_up_to_the_highest_position() {
        let mut w = Written::default();
        assert!(!w.covers(Some(Origin { source: 1, seq: 0 })));
        w.note(&[at(1, 3), at(1, 7), at(2, 1), Record::from_bytes("{}")]);
        assert!(w.covers(Some(Origin { source: 1, seq: 7 })));
        assert!(w.covers(Some(Origin { source: 1, seq: 2 })));
        assert!(!w.covers(Some(Origin { source: 1, seq: 8 })));
        assert!(w.covers(Some(Origin { source: 2, seq: 1 })));
        assert!(!w.covers(Some(Origin { source: 3, seq: 0 })));
        assert!(
            !w.covers(None),
            "records without an origin are always written"
        );
        let json = serde_json::to_string(&w).expect("encodes");
        assert_eq!(json, r#"{"1":7,"2":1}"#);
        assert_eq!(serde_json::from_str::<Written>(&json).expect("decodes"), w);
    }
}
