//! The hash index of the open windows' keys: a key's hash -> its entry's slab index.
//!
//! With a million keys the index is far bigger than the cache, and a record's lookup is
//! paid in cache misses, one after the other: hashbrown's table (a SwissTable) keeps its
//! control bytes apart from its slots, so it missed on the control group, then on the slot,
//! before the key's entry (three dependent misses a record, a quarter of the window's time
//! at a million keys). Here a slot holds a 32-bit tag of the hash beside the slab index, in
//! eight bytes: open addressing with linear probing, so a lookup misses once on its slot (the
//! next slots it may probe are mostly in the same line) before the entry. The slot's place
//! follows from its tag alone, so growing moves slots without reading an entry (hashbrown
//! hashed every key's text again, an entry miss each); deleting shifts the slots after it
//! back (no tombstones).
//!
//! From 2 MiB on the table is a mapping the kernel is asked to back with huge pages (see
//! [`Slots`]): at a million keys a lookup's slot then costs a cache miss but no TLB miss.
//!
//! A tag equal to the sought one is a candidate, confirmed by the caller's comparison of the
//! entry's key; a slab index is found again (to remove it) by tag and index, without its
//! entry. Up to 3 * 2^30 entries (see [`MAX_LEN`]).

/// The most entries an index holds: a slot keeps a slab index below this in 32 bits, and the
/// table (at most three quarters full) then has at most 2^32 slots, which a tag places.
pub(super) const MAX_LEN: usize = 3 << 30;

#[derive(Default)]
pub(super) struct KeyIndex {
    /// `tag << 32 | (slab index + 1)`; 0 is an empty slot. A power of two in length (or 0).
    slots: Slots,
    len: usize,
}

/// Tables of this many bytes and more are mapped with huge pages asked for.
const HUGE: usize = 2 << 20;

/// The slots' memory. A table of a million keys is 16 MB read at random: with 4 KiB pages
/// nearly every lookup also missed the TLB (a page walk, and in a VM a nested one); in 2 MiB
/// pages the whole table is eight TLB entries. So a table from [`HUGE`] bytes on is an
/// anonymous mapping the kernel is asked (`madvise`) to back with transparent huge pages;
/// where it will not (or the mapping fails), it is what a vector would be.
enum Slots {
    Vec(Vec<u64>),
    Mapped(memmap2::MmapMut),
}

impl Default for Slots {
    fn default() -> Self {
        Slots::Vec(Vec::new())
    }
}

impl Slots {
    /// `n` empty slots.
    fn zeroed(n: usize) -> Slots {
        if n.saturating_mul(8) >= HUGE
            && let Ok(map) = memmap2::MmapMut::map_anon(n * 8)
            // A mapping is page-aligned, so this holds; checked once here, so that reading it
            // as slots below never fails.
            && bytemuck::try_cast_slice::<u8, u64>(&map).is_ok_and(|s| s.len() == n)
        {
            #[cfg(target_os = "linux")]
            // A hint: without huge pages the table works as it would in a vector.
            let _ = map.advise(memmap2::Advice::HugePage);
            return Slots::Mapped(map);
        }
        Slots::Vec(vec![0; n])
    }

    fn get(&self) -> &[u64] {
        match self {
            Slots::Vec(v) => v,
            Slots::Mapped(m) => bytemuck::try_cast_slice(m).unwrap_or_default(),
        }
    }

    fn get_mut(&mut self) -> &mut [u64] {
        match self {
            Slots::Vec(v) => v,
            Slots::Mapped(m) => bytemuck::try_cast_slice_mut(m).unwrap_or_default(),
        }
    }
}

/// The tag of a 64-bit hash: its high half (the low half places hashbrown's buckets too, but
/// here the place follows from the tag, so that slots move without their hash).
fn tag(hash: u64) -> u32 {
    (hash >> 32) as u32
}

fn slot(tag: u32, index: u32) -> u64 {
    (u64::from(tag) << 32) | u64::from(index + 1)
}

impl KeyIndex {
    /// Where slots with `tag` start, in a table of `cap` slots (a power of two, at most 2^32:
    /// the tag's high bits).
    fn home(tag: u32, cap: usize) -> usize {
        ((u64::from(tag) * cap as u64) >> 32) as usize
    }

    /// The slab index of the entry with `hash` for which `is(index)` holds.
    pub fn find(&self, hash: u64, mut is: impl FnMut(usize) -> bool) -> Option<usize> {
        let slots = self.slots.get();
        let cap = slots.len();
        if cap == 0 {
            return None;
        }
        let t = tag(hash);
        let mask = cap - 1;
        let mut at = Self::home(t, cap);
        loop {
            let s = slots[at];
            if s == 0 {
                return None;
            }
            if (s >> 32) as u32 == t {
                let i = (s as u32 - 1) as usize;
                if is(i) {
                    return Some(i);
                }
            }
            at = (at + 1) & mask;
        }
    }

    /// Slab indices held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Add slab index `index` (below [`MAX_LEN`]) under `hash`; the caller knows it is not in
    /// yet. An index beyond [`MAX_LEN`] is not added (the window refuses keys before).
    pub fn insert(&mut self, hash: u64, index: usize) {
        let Ok(index) = u32::try_from(index) else {
            return;
        };
        if index as usize >= MAX_LEN {
            return;
        }
        // At most three quarters full: probes stay short.
        if (self.len + 1) * 4 > self.slots.get().len() * 3 {
            self.grow();
        }
        Self::place(self.slots.get_mut(), slot(tag(hash), index));
        self.len += 1;
    }

    /// Put `s` into the first free slot from its home (there is one: the table is never full).
    fn place(slots: &mut [u64], s: u64) {
        let cap = slots.len();
        let mask = cap - 1;
        let mut at = Self::home((s >> 32) as u32, cap);
        while slots[at] != 0 {
            at = (at + 1) & mask;
        }
        slots[at] = s;
    }

    fn grow(&mut self) {
        let cap = (self.slots.get().len() * 2).max(16);
        let old = std::mem::replace(&mut self.slots, Slots::zeroed(cap));
        let slots = self.slots.get_mut();
        for &s in old.get().iter().filter(|&&s| s != 0) {
            Self::place(slots, s);
        }
    }

    /// Remove slab index `index`, added under `hash`; whether it was there.
    pub fn remove(&mut self, hash: u64, index: usize) -> bool {
        let slots = self.slots.get_mut();
        let cap = slots.len();
        let Ok(index) = u32::try_from(index) else {
            return false;
        };
        if cap == 0 || index as usize >= MAX_LEN {
            return false;
        }
        let t = tag(hash);
        let want = slot(t, index);
        let mask = cap - 1;
        let mut at = Self::home(t, cap);
        loop {
            match slots[at] {
                0 => return false,
                s if s == want => break,
                _ => at = (at + 1) & mask,
            }
        }
        // Shift back the slots after it that would not be found past the hole.
        let mut hole = at;
        let mut next = (hole + 1) & mask;
        loop {
            let s = slots[next];
            if s == 0 {
                break;
            }
            let home = Self::home((s >> 32) as u32, cap);
            // `s` may fill the hole when its home is not in (hole, next], cyclically.
            let stays = if hole <= next {
                hole < home && home <= next
            } else {
                hole < home || home <= next
            };
            if !stays {
                slots[hole] = s;
                hole = next;
            }
            next = (next + 1) & mask;
        }
        slots[hole] = 0;
        self.len -= 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Hashes with few distinct tags (colliding homes and tags) and wrapping probes: each
    /// operation's result equals a map's.
    fn check(ops: &[(bool, u8, u8)]) {
        let mut index = KeyIndex::default();
        // slab index -> hash
        let mut want: std::collections::BTreeMap<usize, u64> = std::collections::BTreeMap::new();
        for &(add, k, h) in ops {
            let i = usize::from(k);
            // Tags near the top wrap probes around the end of the table.
            let hash = (u64::from(h) << 58) | u64::from(k);
            if add {
                if let std::collections::btree_map::Entry::Vacant(v) = want.entry(i) {
                    v.insert(hash);
                    index.insert(hash, i);
                }
            } else {
                let had = want.get(&i) == Some(&hash);
                assert_eq!(index.remove(hash, i), had);
                if had {
                    want.remove(&i);
                }
            }
            assert_eq!(index.len, want.len());
            for (&i, &hash) in &want {
                assert_eq!(index.find(hash, |j| j == i), Some(i), "{i} found");
            }
            // The table holds exactly these slots, and a tag with none is not found.
            let mut held: Vec<u64> = index
                .slots
                .get()
                .iter()
                .copied()
                .filter(|&s| s != 0)
                .collect();
            let mut expect: Vec<u64> = want
                .iter()
                .map(|(&i, &hash)| slot(tag(hash), u32::try_from(i).unwrap_or(u32::MAX)))
                .collect();
            held.sort_unstable();
            expect.sort_unstable();
            assert_eq!(held, expect);
            for t in 0..64u64 {
                let hash = t << 58;
                let hit = index.find(hash, |_| true);
                let has = want.values().any(|&x| tag(x) == tag(hash));
                assert_eq!(hit.is_some(), has, "tag {t}");
                if let Some(j) = hit {
                    assert_eq!(tag(want[&j]), tag(hash));
                }
            }
        }
    }

    proptest! {
        #[test]
        fn it_finds_what_a_map_holds(ops in proptest::collection::vec((any::<bool>(), any::<u8>(), 0u8..64), 0..400)) {
            check(&ops);
        }
    }

    #[test]
    fn many_entries_grow_and_shrink_back_to_empty() {
        let mut index = KeyIndex::default();
        let hash = |i: usize| (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        for i in 0..10_000 {
            index.insert(hash(i), i);
        }
        assert!(index.slots.get().len() >= 10_000 * 4 / 3);
        for i in (0..10_000).step_by(3) {
            assert!(index.remove(hash(i), i));
            assert!(!index.remove(hash(i), i), "once");
        }
        for i in 0..10_000 {
            let found = index.find(hash(i), |j| j == i);
            assert_eq!(found.is_some(), i % 3 != 0, "{i}");
        }
        for i in (0..10_000).filter(|i| i % 3 != 0) {
            assert!(index.remove(hash(i), i));
        }
        assert_eq!(index.len, 0);
        assert!(index.slots.get().iter().all(|&s| s == 0));
    }

    /// A table past [`HUGE`] bytes is mapped memory, and holds what a vector holds.
    #[test]
    fn a_large_table_is_mapped_and_works_the_same() {
        let mut index = KeyIndex::default();
        let hash = |i: usize| (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let n = HUGE / 8;
        for i in 0..n {
            index.insert(hash(i), i);
        }
        assert!(matches!(index.slots, Slots::Mapped(_)), "mapped");
        assert_eq!(index.slots.get().len(), (n * 4 / 3).next_power_of_two());
        for i in (0..n).step_by(7) {
            assert_eq!(index.find(hash(i), |j| j == i), Some(i));
            assert!(index.remove(hash(i), i));
            assert_eq!(index.find(hash(i), |j| j == i), None);
        }
        assert_eq!(index.len, n - n.div_ceil(7));
        let held = index.slots.get().iter().filter(|&&s| s != 0).count();
        assert_eq!(held, index.len);
    }

    #[test]
    fn indices_past_the_limit_are_not_added() {
        let mut index = KeyIndex::default();
        index.insert(7, MAX_LEN);
        index.insert(7, usize::MAX);
        assert_eq!(index.len, 0);
        assert_eq!(index.find(7, |_| true), None);
        assert!(!index.remove(7, MAX_LEN));
    }
}
