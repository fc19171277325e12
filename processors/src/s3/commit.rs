//! `s3_sink`'s commit record: what makes it exactly-once across crashes (see
//! [`flow_core::committed`] and docs/reliability.md, "Exactly-once sinks").
//!
//! Several objects are open at once (one per partition) and complete in any order, so one
//! high-water mark cannot say what is written. The commit holds two things per source:
//! `written`, a position at or below which every record is in a completed object (the first
//! position of the oldest object not yet complete, less one), and `done`, the positions above
//! it that are in completed objects too. Completing an object is two-phase: its key is first
//! recorded as `pending`, then the upload completes, then the commit moves the key's positions
//! to `done`; only then are its records acknowledged. On restart, pending objects are deleted
//! (a crash may have come between the upload and the commit: their records were not
//! acknowledged and come again), the input skips what `written` covers, and the sink skips
//! what `done` holds. Everything else is written again, once.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use flow_core::committed::Written;
use flow_core::record::Origin;
use serde::{Deserialize, Serialize};

/// The commit record, stored as JSON in `_flow/NODE.commit` below the sink's prefix (or
/// folder), replaced by each write (a single `PUT`, atomic on S3 and, by a rename, on the local
/// filesystem).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Committed {
    /// Per source: every record at or below this position is in a completed object (or was
    /// skipped).
    #[serde(default)]
    pub written: Written,
    /// Per source: positions above `written` in completed objects, as inclusive ranges.
    #[serde(default)]
    pub done: BTreeMap<u32, Vec<[u64; 2]>>,
    /// Object paths whose upload may have completed without the commit saying so: deleted on
    /// restart.
    #[serde(default)]
    pub pending: BTreeSet<String>,
}

/// The positions of the records in one object, per source, as inclusive ranges.
#[derive(Clone, Debug, Default)]
pub(super) struct Positions(BTreeMap<u32, Vec<(u64, u64)>>);

impl Positions {
    /// Add a record's position (positions come in increasing order per source).
    pub fn add(&mut self, o: Origin) {
        let runs = self.0.entry(o.source).or_default();
        match runs.last_mut() {
            Some((_, end)) if o.seq == *end + 1 => *end = o.seq,
            Some((_, end)) if o.seq <= *end => {}
            _ => runs.push((o.seq, o.seq)),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// What the sink knows of its objects, from which each commit is made.
#[derive(Debug, Default)]
pub(super) struct Ledger {
    /// Per source, the highest position the sink took (written into an object or skipped).
    seen: BTreeMap<u32, u64>,
    /// Per source, positions in completed objects (start -> end, inclusive, disjoint).
    done: BTreeMap<u32, BTreeMap<u64, u64>>,
    /// Objects not complete yet (by serial number): their first position per source.
    unfinished: HashMap<u64, BTreeMap<u32, u64>>,
    /// Objects whose completion has begun and is not recorded yet.
    pending: BTreeSet<String>,
    /// What the commit restarted from covered (the input skips it, but for the batch at hand
    /// when the commit was loaded).
    resumed: Written,
}

impl Ledger {
    /// The state after a restart from `c` (its pending objects deleted by the caller).
    pub fn resume(c: &Committed) -> Self {
        let mut l = Self {
            resumed: c.written.clone(),
            ..Self::default()
        };
        for (s, p) in c.written.iter() {
            l.seen.insert(s, p);
        }
        for (&s, runs) in &c.done {
            for &[a, b] in runs {
                if a <= b {
                    l.insert_done(s, a, b);
                }
            }
        }
        l
    }

    /// Add completed positions. `seen` is left alone: after a restart, positions between
    /// `written` and a completed object's were not taken yet (a pending object's, deleted).
    fn insert_done(&mut self, source: u32, start: u64, end: u64) {
        let runs = self.done.entry(source).or_default();
        // Merge with a run ending right before.
        let (mut start, mut end) = (start, end);
        if let Some((&a, &b)) = runs.range(..start).next_back()
            && b.saturating_add(1) >= start
        {
            runs.remove(&a);
            start = a;
            end = end.max(b);
        }
        if let Some(&b) = runs.get(&end.saturating_add(1)) {
            runs.remove(&(end + 1));
            end = b;
        }
        runs.insert(start, end);
    }

    /// Whether a record at `o` is in a completed object (a replay to skip).
    pub fn covers(&self, o: Origin) -> bool {
        self.resumed.covers(Some(o))
            || self.done.get(&o.source).is_some_and(|runs| {
                runs.range(..=o.seq)
                    .next_back()
                    .is_some_and(|(_, &end)| o.seq <= end)
            })
    }

    /// The sink took a record at `o` without writing it (skipped as written before).
    pub fn passed(&mut self, o: Origin) {
        let seen = self.seen.entry(o.source).or_insert(o.seq);
        *seen = (*seen).max(o.seq);
    }

    /// The sink wrote a record at `o` into object `object`.
    pub fn wrote(&mut self, object: u64, o: Origin) {
        self.unfinished
            .entry(object)
            .or_default()
            .entry(o.source)
            .or_insert(o.seq);
        self.passed(o);
    }

    /// Object `path` is about to be completed.
    pub fn begin(&mut self, path: &str) {
        self.pending.insert(path.to_owned());
    }

    /// Object `object` (`path`) is complete with these positions.
    pub fn complete(&mut self, object: u64, path: &str, positions: &Positions) {
        self.pending.remove(path);
        self.unfinished.remove(&object);
        for (&s, runs) in &positions.0 {
            for &(a, b) in runs {
                self.insert_done(s, a, b);
            }
        }
    }

    /// A record at `o`, standing in as object `object` since it went to `failure`, was
    /// delivered there: its position is done.
    pub fn failed_done(&mut self, object: u64, o: Origin) {
        self.unfinished.remove(&object);
        self.insert_done(o.source, o.seq, o.seq);
    }

    /// The commit to store now; forgets the completed positions `written` covers.
    pub fn commit(&mut self) -> Committed {
        let mut written = BTreeMap::new();
        for (&s, &seen) in &self.seen {
            let first_open = self
                .unfinished
                .values()
                .filter_map(|firsts| firsts.get(&s))
                .min();
            let mark = match first_open {
                Some(&0) => None,
                Some(&f) => Some(f - 1),
                None => Some(seen),
            };
            if let Some(m) = mark {
                written.insert(s, m);
            }
        }
        let mut done = BTreeMap::new();
        for (s, runs) in &mut self.done {
            if let Some(&m) = written.get(s) {
                let below: Vec<u64> = runs.range(..=m).map(|(&a, _)| a).collect();
                for a in below {
                    if let Some(b) = runs.remove(&a)
                        && b > m
                    {
                        runs.insert(m + 1, b);
                    }
                }
            }
            if !runs.is_empty() {
                done.insert(*s, runs.iter().map(|(&a, &b)| [a, b]).collect());
            }
        }
        self.done.retain(|_, runs| !runs.is_empty());
        Committed {
            written: written.into_iter().collect(),
            done,
            pending: self.pending.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seq: u64) -> Origin {
        Origin { source: 7, seq }
    }

    #[test]
    fn written_stops_below_the_oldest_open_object_and_done_holds_the_rest() {
        let mut l = Ledger::default();
        // Object 1 (partition a) gets 0 and 3; object 2 (partition b) gets 1, 2, 4 and completes.
        for (obj, seq) in [(1, 0), (2, 1), (2, 2), (1, 3), (2, 4)] {
            l.wrote(obj, at(seq));
        }
        let mut two = Positions::default();
        for s in [1, 2, 4] {
            two.add(at(s));
        }
        l.begin("b/x");
        let c = l.commit();
        assert!(
            c.written.is_empty(),
            "object 1 starts at 0: nothing below it"
        );
        assert!(c.pending.contains("b/x"));
        l.complete(2, "b/x", &two);
        let c = l.commit();
        assert!(c.pending.is_empty());
        assert_eq!(c.done[&7], vec![[1, 2], [4, 4]]);
        assert!(l.covers(at(4)) && l.covers(at(1)) && !l.covers(at(3)) && !l.covers(at(0)));
        // Object 1 completes: everything up to 4 is written, nothing left in `done`.
        let mut one = Positions::default();
        one.add(at(0));
        one.add(at(3));
        l.complete(1, "a/y", &one);
        let c = l.commit();
        assert_eq!(c.written, [(7, 4)].into_iter().collect());
        assert!(c.done.is_empty());
        // A restart from that commit covers nothing by `done`; the input skips up to 4.
        let json = serde_json::to_string(&c).expect("encodes");
        let back: Committed = serde_json::from_str(&json).expect("decodes");
        assert_eq!(back, c);
        let mut r = Ledger::resume(&back);
        assert_eq!(r.commit(), c);
    }

    /// After a restart, `written` may not pass a gap below a completed object (the records
    /// of a pending object, deleted, come again).
    #[test]
    fn a_restart_keeps_written_below_the_gap() {
        let c = Committed {
            written: [(7, 2)].into_iter().collect(),
            done: [(7, vec![[4, 4]])].into_iter().collect(),
            pending: BTreeSet::new(),
        };
        let mut l = Ledger::resume(&c);
        assert_eq!(l.commit(), c);
        assert!(l.covers(at(1)) && l.covers(at(4)) && !l.covers(at(3)));
        l.wrote(1, at(3));
        l.passed(at(4));
        assert_eq!(l.commit().written, [(7, 2)].into_iter().collect());
        let mut one = Positions::default();
        one.add(at(3));
        l.complete(1, "a", &one);
        assert_eq!(l.commit().written, [(7, 4)].into_iter().collect());
    }

    #[test]
    fn a_done_range_across_written_is_cut_at_it() {
        let mut l = Ledger::default();
        for (obj, seq) in [(1, 0), (1, 1), (1, 2), (2, 3), (1, 4)] {
            l.wrote(obj, at(seq));
        }
        let mut one = Positions::default();
        for s in [0, 1, 2, 4] {
            one.add(at(s));
        }
        l.complete(1, "a", &one);
        let c = l.commit();
        assert_eq!(c.written, [(7, 2)].into_iter().collect());
        assert_eq!(c.done[&7], vec![[4, 4]]);
    }
}
