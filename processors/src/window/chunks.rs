//! A slab that grows a chunk at a time: an entry never moves once it is in.
//!
//! The open windows of a key live in one slab entry (see [`super::open`]). In one vector, a
//! million keys of about 300 bytes each were copied whole at every doubling of it (600 MB of
//! copies into fresh pages by the end, 15 % of the window's time with a million keys). Here
//! the entries sit in [`Slab`]s of a fixed capacity, never regrown: a new key goes into a
//! chunk with room, or into a new chunk.

use slab::Slab;

/// Entries per chunk (a power of two: a key is its chunk and its place, in bits).
const BITS: u32 = 10;
pub(super) const CHUNK: usize = 1 << BITS;
const PLACE: usize = CHUNK - 1;

pub(super) struct ChunkedSlab<T> {
    chunks: Vec<Slab<T>>,
    /// The chunks with a free place (each once); new entries go into the last.
    room: Vec<usize>,
    len: usize,
}

impl<T> Default for ChunkedSlab<T> {
    fn default() -> Self {
        Self {
            chunks: Vec::new(),
            room: Vec::new(),
            len: 0,
        }
    }
}

impl<T> ChunkedSlab<T> {
    pub fn len(&self) -> usize {
        self.len
    }

    /// Store `value`; its key until it is removed.
    pub fn insert(&mut self, value: T) -> usize {
        let c = match self.room.last() {
            Some(&c) => c,
            None => {
                self.chunks.push(Slab::with_capacity(CHUNK));
                self.room.push(self.chunks.len() - 1);
                self.chunks.len() - 1
            }
        };
        let chunk = &mut self.chunks[c];
        // Below its capacity a slab fills a free place or pushes within it: never regrown.
        let place = chunk.insert(value);
        debug_assert!(place < CHUNK, "a chunk never regrows");
        if chunk.len() == CHUNK {
            self.room.pop();
        }
        self.len += 1;
        (c << BITS) | place
    }

    pub fn get(&self, key: usize) -> Option<&T> {
        self.chunks.get(key >> BITS)?.get(key & PLACE)
    }

    pub fn get_mut(&mut self, key: usize) -> Option<&mut T> {
        self.chunks.get_mut(key >> BITS)?.get_mut(key & PLACE)
    }

    /// Take the entry of `key` out, if there is one.
    pub fn try_remove(&mut self, key: usize) -> Option<T> {
        let c = key >> BITS;
        let chunk = self.chunks.get_mut(c)?;
        let was_full = chunk.len() == CHUNK;
        let value = chunk.try_remove(key & PLACE)?;
        if was_full {
            self.room.push(c);
        }
        self.len -= 1;
        Some(value)
    }

    /// Every entry with its key.
    pub fn iter(&self) -> impl Iterator<Item = (usize, &T)> + '_ {
        self.chunks
            .iter()
            .enumerate()
            .flat_map(|(c, chunk)| chunk.iter().map(move |(place, v)| ((c << BITS) | place, v)))
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut T> + '_ {
        self.chunks
            .iter_mut()
            .flat_map(|chunk| chunk.iter_mut().map(|(_, v)| v))
    }
}

impl<T> std::ops::Index<usize> for ChunkedSlab<T> {
    type Output = T;
    fn index(&self, key: usize) -> &T {
        &self.chunks[key >> BITS][key & PLACE]
    }
}

impl<T> std::ops::IndexMut<usize> for ChunkedSlab<T> {
    fn index_mut(&mut self, key: usize) -> &mut T {
        &mut self.chunks[key >> BITS][key & PLACE]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against a map from key to value: inserts and removes in a pseudo-random mix, over
    /// several chunks, fill and free places the same; no entry moves (its address stays).
    #[test]
    fn it_holds_what_a_map_holds_and_entries_stay_where_they_are() {
        let mut s = ChunkedSlab::default();
        let mut want = std::collections::HashMap::new();
        let mut addr = std::collections::HashMap::new();
        let mut live: Vec<usize> = Vec::new();
        let mut x: u64 = 7;
        for n in 0..20_000u64 {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            if (x >> 33).is_multiple_of(3) && !live.is_empty() {
                let k = live.swap_remove((x >> 40) as usize % live.len());
                assert_eq!(s.try_remove(k), want.remove(&k));
                addr.remove(&k);
                assert_eq!(s.try_remove(k), None, "gone");
            } else {
                let k = s.insert(n);
                assert_eq!(want.insert(k, n), None, "a fresh key");
                addr.insert(k, std::ptr::from_ref(&s[k]) as usize);
                live.push(k);
            }
            assert_eq!(s.len(), want.len());
        }
        assert!(s.chunks.len() > 3, "several chunks: {}", s.chunks.len());
        for (k, v) in &want {
            assert_eq!(s.get(*k), Some(v));
            assert_eq!(std::ptr::from_ref(&s[*k]) as usize, addr[k], "not moved");
        }
        let mut all: Vec<u64> = s.iter_mut().map(|v| *v).collect();
        let mut values: Vec<u64> = want.values().copied().collect();
        all.sort_unstable();
        values.sort_unstable();
        assert_eq!(all, values);
        assert_eq!(s.get(usize::MAX), None);
    }

    /// A full chunk that frees a place takes the next entry there before a new chunk is made.
    #[test]
    fn a_freed_place_is_filled_before_a_new_chunk() {
        let mut s = ChunkedSlab::default();
        let keys: Vec<usize> = (0..CHUNK).map(|i| s.insert(i)).collect();
        assert_eq!((s.chunks.len(), s.room.len()), (1, 0));
        assert_eq!(s.try_remove(keys[5]), Some(5));
        assert_eq!(s.insert(99), keys[5]);
        assert_eq!(s.chunks.len(), 1);
        assert_eq!(s.insert(100) >> BITS, 1, "a second chunk");
    }
}
