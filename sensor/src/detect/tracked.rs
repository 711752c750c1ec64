//! A map with a bound: when full, the key tracked longest is forgotten (and counted). FIFO
//! by first insertion, not by hash order, so the same flows forget the same keys on every
//! replay.
use std::{collections::VecDeque, hash::Hash};

use foldhash::HashMap;

pub struct Tracked<K, V> {
    map: HashMap<K, (V, u64)>,
    /// Keys in insertion order with their generation; entries whose key was removed or
    /// inserted again since are skipped when they come up.
    order: VecDeque<(K, u64)>,
    next_gen: u64,
    cap: usize,
    evictions: u64,
}

impl<K: Hash + Eq + Copy, V> Tracked<K, V> {
    pub fn new(cap: usize) -> Self {
        Self {
            map: HashMap::default(),
            order: VecDeque::new(),
            next_gen: 0,
            cap: cap.max(1),
            evictions: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Keys forgotten to make room.
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    pub fn get_mut(&mut self, k: &K) -> Option<&mut V> {
        self.map.get_mut(k).map(|(v, _)| v)
    }

    /// The value of `k`, made by `new` when `k` is not tracked (forgetting the oldest key
    /// when full).
    pub fn get_or_insert_with(&mut self, k: K, new: impl FnOnce() -> V) -> &mut V {
        self.compact();
        if self.map.len() < self.cap {
            // Room: one lookup, whether the key is there or not.
            let generation = self.next_gen;
            let order = &mut self.order;
            let next_gen = &mut self.next_gen;
            let (v, _) = self.map.entry(k).or_insert_with(|| {
                *next_gen += 1;
                order.push_back((k, generation));
                (new(), generation)
            });
            return v;
        }
        if !self.map.contains_key(&k) {
            while self.map.len() >= self.cap {
                let Some((old, generation)) = self.order.pop_front() else {
                    break;
                };
                if self.map.get(&old).is_some_and(|(_, g)| *g == generation) {
                    self.map.remove(&old);
                    self.evictions += 1;
                }
            }
            let generation = self.next_gen;
            self.next_gen += 1;
            self.order.push_back((k, generation));
            self.map.insert(k, (new(), generation));
        }
        &mut self.map.get_mut(&k).expect("present").0
    }

    pub fn remove(&mut self, k: &K) -> Option<V> {
        self.map.remove(k).map(|(v, _)| v)
    }

    /// Keeps the entries `keep` says to.
    pub fn retain(&mut self, mut keep: impl FnMut(&K, &mut V) -> bool) {
        self.map.retain(|k, (v, _)| keep(k, v));
        self.compact();
    }

    /// Drops the order's stale entries once they outnumber the live ones.
    fn compact(&mut self) {
        if self.order.len() > 2 * self.map.len() + 64 {
            let map = &self.map;
            self.order
                .retain(|(k, g)| map.get(k).is_some_and(|(_, live)| live == g));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_forgets_the_oldest_and_counts_it() {
        let mut t: Tracked<u32, u32> = Tracked::new(3);
        for k in 0..3 {
            *t.get_or_insert_with(k, || 0) += 1;
        }
        // Touching 0 does not make it young: first in, first out.
        *t.get_or_insert_with(0, || 0) += 1;
        t.get_or_insert_with(3, || 0);
        assert_eq!(t.len(), 3);
        assert_eq!(t.evictions(), 1);
        assert!(t.get_mut(&0).is_none());
        // A removed key's old place in the order is skipped.
        t.remove(&1);
        t.get_or_insert_with(4, || 0);
        t.get_or_insert_with(5, || 0);
        assert_eq!(t.evictions(), 2, "2 went, 1 was already gone");
        assert!(t.get_mut(&2).is_none() && t.get_mut(&3).is_some());
    }
}
