//! The open windows of `window_aggregate`: found by key for every record, and in order of
//! closing for firing.
//!
//! Each key with open windows is one entry of a slab (in chunks: entries never move), holding
//! its key text once and its open windows inline (one for tumbling windows, a few for hopping
//! and session windows); a hash table of slab indices finds it by text. Windows close in order
//! of `(end, start, id)`: `id` numbers windows as they are made, so windows that close together
//! fire in the order they opened, and the order is ordered by integers alone (no key text
//! compared, no pointer followed). The ids are kept in checkpoints: a restored state fires in the same order as the
//! run that saved it, which keeps the numbers exactly-once sinks see.

use std::collections::BTreeMap;
use std::hash::BuildHasher;

use compact_str::CompactString;
use flow_core::record::eq_bytes;
use smallvec::SmallVec;

use super::chunks::ChunkedSlab;
use super::index::KeyIndex;

/// The most keys the open windows hold (the index's limit, less a chunk of the slab: a slab
/// index is below the most keys it held plus a chunk). Three billion keys would need a
/// terabyte; the configured `max_keys` is the limit that counts.
pub(super) const MAX_KEYS: usize = super::index::MAX_LEN - super::chunks::CHUNK;

/// What the index needs of a window's state: its id, kept with it (and in checkpoints).
pub(super) trait Numbered {
    fn id(&self) -> u64;
    fn set_id(&mut self, id: u64);
}

/// One key's open windows.
struct Keyed<S> {
    /// Inline up to 24 bytes: a record's key is compared where its entry is.
    text: CompactString,
    /// `(end, start, state)`, in the order they opened.
    open: SmallVec<[(i64, i64, S); 1]>,
}

/// A window taken out of the index: its bounds, its key and its state.
pub(super) struct Closed<S> {
    pub end: i64,
    pub start: i64,
    /// Moved out of the key's entry with its last window (a key up to 24 bytes is inline:
    /// taken out without allocating; the window's output makes its text when it needs it).
    pub key: CompactString,
    pub state: S,
}

pub(super) struct OpenWindows<S> {
    keys: ChunkedSlab<Keyed<S>>,
    /// Slab indices of `keys`, by the hash of their text (see [`KeyIndex`]: one cache miss
    /// before the entry where hashbrown's table had two).
    index: KeyIndex,
    hasher: hashbrown::DefaultHashBuilder,
    /// `(end, start, id)` of every open window -> its key's slab index.
    order: BTreeMap<(i64, i64, u64), usize>,
    /// The id of the next window made (ids start at 1: 0 is "none" in old checkpoints).
    next_id: u64,
}

impl<S> Default for OpenWindows<S> {
    fn default() -> Self {
        Self {
            keys: ChunkedSlab::default(),
            index: KeyIndex::default(),
            hasher: hashbrown::DefaultHashBuilder::default(),
            order: BTreeMap::new(),
            next_id: 1,
        }
    }
}

impl<S: Numbered> OpenWindows<S> {
    /// Open windows.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Keys with at least one open window.
    pub fn keys(&self) -> usize {
        self.keys.len()
    }

    /// The slab index of `key`'s entry.
    fn find(&self, key: &str) -> Option<usize> {
        self.find_bytes(key.as_bytes())
    }

    /// The slab index of the entry whose text is `key` (its bytes: keys are hashed and
    /// compared as bytes, so a key read from content need not be checked as UTF-8 first).
    fn find_bytes(&self, key: &[u8]) -> Option<usize> {
        let hash = self.hasher.hash_one(key);
        self.index.find(hash, |i| {
            self.keys
                .get(i)
                .is_some_and(|e| eq_bytes(e.text.as_bytes(), key))
        })
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.find(key).is_some()
    }

    /// The state of the window `[start, end)` of the key whose text is `key` (as bytes), if
    /// it is open.
    pub fn get_mut(&mut self, key: &[u8], end: i64, start: i64) -> Option<&mut S> {
        let i = self.find_bytes(key)?;
        self.keys[i]
            .open
            .iter_mut()
            .find(|(e, s, _)| *e == end && *s == start)
            .map(|(_, _, state)| state)
    }

    /// Open window `[start, end)` of `key` with `state`, numbered as the next window.
    pub fn insert(&mut self, key: &str, end: i64, start: i64, mut state: S) {
        state.set_id(self.next_id);
        self.next_id += 1;
        self.insert_numbered(key, end, start, state);
    }

    /// Open a window that keeps its number (restored from a checkpoint).
    fn insert_numbered(&mut self, key: &str, end: i64, start: i64, state: S) {
        let id = state.id();
        self.next_id = self.next_id.max(id + 1);
        if self.draining() {
            self.reindex();
        }
        let i = match self.find(key) {
            Some(i) => i,
            None => {
                let i = self.keys.insert(Keyed {
                    text: CompactString::from(key),
                    open: SmallVec::new(),
                });
                self.index.insert(self.hasher.hash_one(key.as_bytes()), i);
                i
            }
        };
        self.keys[i].open.push((end, start, state));
        self.order.insert((end, start, id), i);
    }

    /// Take window `(end, start, id)` of the key at slab index `i` out (found by `id`: ids are
    /// unique); the key's entry goes with its last window.
    /// With `unindex` false the key's entry leaves its slot in the index (see
    /// [`OpenWindows::draining`]).
    fn take(
        &mut self,
        i: usize,
        end: i64,
        start: i64,
        id: u64,
        unindex: bool,
    ) -> Option<Closed<S>> {
        let entry = self.keys.get_mut(i)?;
        let at = entry.open.iter().position(|(_, _, st)| st.id() == id)?;
        let (_, _, state) = entry.open.remove(at);
        let key = if entry.open.is_empty() {
            if unindex {
                self.index
                    .remove(self.hasher.hash_one(entry.text.as_bytes()), i);
            }
            let entry = self.keys.try_remove(i);
            entry.expect("the entry found above").text
        } else {
            entry.text.clone()
        };
        Some(Closed {
            end,
            start,
            key,
            state,
        })
    }

    /// The end of the window that closes first.
    pub fn first_end(&self) -> Option<i64> {
        self.order.first_key_value().map(|((end, _, _), _)| *end)
    }

    /// Take out the window that closes first.
    pub fn pop_first(&mut self) -> Option<Closed<S>> {
        let ((end, start, id), i) = self.order.pop_first()?;
        self.take(i, end, start, id, true)
    }

    /// Take out the window that closes first, when every window is being taken out (the end
    /// of a bounded input): a key's slot stays in the index, which goes whole with the last
    /// key. With a million keys, emptying the index slot by slot was a cache miss per key
    /// (4 % of such a run) for an index about to be dropped.
    pub fn drain_first(&mut self) -> Option<Closed<S>> {
        let ((end, start, id), i) = self.order.pop_first()?;
        let closed = self.take(i, end, start, id, false);
        if self.keys.len() == 0 {
            self.index = KeyIndex::default();
        }
        closed
    }

    /// Whether keys taken out by [`OpenWindows::drain_first`] are still in the index (their
    /// slots name vacant slab places, which no lookup matches): until the last key goes and
    /// the index with it, or a new key comes and the index is made again first.
    fn draining(&self) -> bool {
        self.index.len() > self.keys.len()
    }

    /// Make the index again from the keys held (after [`OpenWindows::drain_first`]).
    fn reindex(&mut self) {
        let mut index = KeyIndex::default();
        for (i, entry) in self.keys.iter() {
            index.insert(self.hasher.hash_one(entry.text.as_bytes()), i);
        }
        self.index = index;
    }

    /// Take out every open window of `key` for which `touches(end, start)` holds, in order of
    /// start.
    pub fn take_touching(
        &mut self,
        key: &str,
        touches: impl Fn(i64, i64) -> bool,
    ) -> Vec<Closed<S>> {
        let Some(i) = self.find(key) else {
            return Vec::new();
        };
        let mut hit: Vec<(i64, i64, u64)> = self.keys[i]
            .open
            .iter()
            .filter(|(e, s, _)| touches(*e, *s))
            .map(|(e, s, st)| (*e, *s, st.id()))
            .collect();
        hit.sort_by_key(|&(e, s, _)| (s, e));
        hit.into_iter()
            .filter_map(|(e, s, id)| {
                self.order.remove(&(e, s, id));
                self.take(i, e, s, id, true)
            })
            .collect()
    }

    /// Every open window `((end, start, key), state)` in order of closing.
    pub fn iter(&self) -> impl Iterator<Item = ((i64, i64, &str), &S)> + '_ {
        self.order.iter().filter_map(|(&(end, start, id), &i)| {
            let entry = self.keys.get(i)?;
            let (_, _, state) = entry.open.iter().find(|(_, _, st)| st.id() == id)?;
            Some(((end, start, &*entry.text), state))
        })
    }

    /// Every open window's state.
    pub fn states_mut(&mut self) -> impl Iterator<Item = &mut S> + '_ {
        self.keys
            .iter_mut()
            .flat_map(|entry| entry.open.iter_mut().map(|(_, _, state)| state))
    }

    /// The windows of a checkpoint, in the order it listed them (its order of closing).
    /// Windows from a checkpoint written before windows were numbered (id 0) are numbered in
    /// that order, which was the order they closed in then.
    pub fn restore(windows: impl IntoIterator<Item = ((i64, i64, String), S)>) -> Self {
        let mut open = Self::default();
        let mut windows: Vec<_> = windows.into_iter().collect();
        let unnumbered = windows.iter().any(|(_, s)| s.id() == 0);
        if unnumbered {
            for (n, (_, state)) in windows.iter_mut().enumerate() {
                state.set_id(n as u64 + 1);
            }
        }
        for ((end, start, key), state) in windows {
            open.insert_numbered(&key, end, start, state);
        }
        open
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct W(u64, &'static str);

    impl Numbered for W {
        fn id(&self) -> u64 {
            self.0
        }
        fn set_id(&mut self, id: u64) {
            self.0 = id;
        }
    }

    fn closed(c: Closed<W>) -> (i64, i64, String, &'static str) {
        (c.end, c.start, c.key.into(), c.state.1)
    }

    #[test]
    fn windows_close_by_end_then_in_the_order_they_opened() {
        let mut o = OpenWindows::default();
        o.insert("b", 20, 10, W(0, "b1"));
        o.insert("a", 20, 10, W(0, "a1"));
        o.insert("a", 10, 0, W(0, "a0"));
        o.insert("c", 30, 0, W(0, "c-session"));
        assert_eq!((o.len(), o.keys()), (4, 3));
        assert_eq!(o.first_end(), Some(10));
        o.get_mut(b"a", 20, 10).unwrap_or_else(|| panic!("open")).1 = "a1+";
        assert!(o.get_mut(b"a", 30, 20).is_none());
        assert!(o.get_mut(b"z", 20, 10).is_none());
        let order: Vec<_> = std::iter::from_fn(|| o.pop_first()).map(closed).collect();
        assert_eq!(
            order,
            [
                (10, 0, "a".into(), "a0"),
                (20, 10, "b".into(), "b1"),
                (20, 10, "a".into(), "a1+"),
                (30, 0, "c".into(), "c-session"),
            ]
        );
        assert_eq!((o.len(), o.keys()), (0, 0));
        assert!(!o.contains_key("a"));
    }

    /// Windows drained part of the way leave their keys' slots in the index: the keys
    /// drained are not found, the rest are. A key that comes again (into the slab place
    /// another drained key left: the slab reuses the last freed first) makes the index
    /// again first: it then holds exactly the keys held.
    #[test]
    fn draining_keeps_lookups_right_and_a_new_key_makes_the_index_again() {
        let mut o = OpenWindows::default();
        for (n, k) in ["a", "b", "c", "d"].into_iter().enumerate() {
            let end = 10 * (n as i64 + 1);
            o.insert(k, end, 0, W(0, k));
        }
        let drained: Vec<_> = (0..2).filter_map(|_| o.drain_first()).map(closed).collect();
        assert_eq!(
            drained,
            [(10, 0, "a".into(), "a"), (20, 0, "b".into(), "b")]
        );
        assert!(o.draining());
        assert_eq!(
            (o.keys(), o.index.len()),
            (2, 4),
            "the drained keys' slots stay"
        );
        assert!(o.get_mut(b"a", 10, 0).is_none() && !o.contains_key("b"));
        assert!(o.get_mut(b"c", 30, 0).is_some() && o.contains_key("d"));
        o.insert("a", 60, 0, W(0, "a again"));
        assert!(!o.draining(), "made again");
        assert_eq!(
            (o.keys(), o.index.len()),
            (3, 3),
            "the index holds the keys held"
        );
        assert_eq!(o.find("a"), Some(1), "in b's old place");
        o.insert("e", 50, 0, W(0, "e"));
        assert_eq!((o.keys(), o.index.len()), (4, 4));
        assert!(o.get_mut(b"a", 60, 0).is_some() && o.get_mut(b"a", 10, 0).is_none());
        assert!(!o.contains_key("b"));
        let rest: Vec<_> = std::iter::from_fn(|| o.drain_first()).map(closed).collect();
        assert_eq!(
            rest.iter().map(|c| c.3).collect::<Vec<_>>(),
            ["c", "d", "e", "a again"]
        );
        assert_eq!((o.len(), o.keys()), (0, 0));
        assert!(!o.draining());
    }

    #[test]
    fn touching_windows_come_out_in_order_of_start_and_the_rest_stay() {
        let mut o = OpenWindows::default();
        o.insert("k", 50, 40, W(0, "late"));
        o.insert("k", 20, 10, W(0, "early"));
        o.insert("k", 90, 80, W(0, "far"));
        o.insert("j", 20, 10, W(0, "other key"));
        let taken: Vec<_> = o
            .take_touching("k", |end, start| start <= 55 && 15 <= end)
            .into_iter()
            .map(closed)
            .collect();
        assert_eq!(
            taken,
            [(20, 10, "k".into(), "early"), (50, 40, "k".into(), "late")]
        );
        assert_eq!((o.len(), o.keys()), (2, 2));
        let rest: Vec<_> = o
            .iter()
            .map(|((e, s, k), w)| (e, s, k.to_owned(), w.1))
            .collect();
        assert_eq!(
            rest,
            [
                (20, 10, "j".into(), "other key"),
                (90, 80, "k".into(), "far")
            ]
        );
    }

    #[test]
    fn a_restored_state_closes_in_the_saved_order_and_numbers_after_it() {
        let mut o = OpenWindows::default();
        o.insert("b", 20, 10, W(0, "b"));
        o.insert("a", 20, 10, W(0, "a"));
        let saved: Vec<_> = o
            .iter()
            .map(|((e, s, k), w)| ((e, s, k.to_owned()), W(w.0, w.1)))
            .collect();
        let mut restored = OpenWindows::restore(saved);
        restored.insert("c", 20, 10, W(0, "c"));
        let order: Vec<_> = std::iter::from_fn(|| restored.pop_first())
            .map(|c| c.state.1)
            .collect();
        assert_eq!(order, ["b", "a", "c"]);
        // A checkpoint from before windows were numbered: its own order is kept.
        let old = vec![
            ((20, 10, "a".to_owned()), W(0, "a")),
            ((20, 10, "b".to_owned()), W(0, "b")),
        ];
        let mut restored = OpenWindows::restore(old);
        restored.insert("0", 20, 10, W(0, "new"));
        let order: Vec<_> = std::iter::from_fn(|| restored.pop_first())
            .map(|c| c.state.1)
            .collect();
        assert_eq!(order, ["a", "b", "new"]);
    }
}
