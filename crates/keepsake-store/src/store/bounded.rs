//! A map bounded by the bytes its values stand for, oldest inserted out first: the shape of
//! both in-memory caches of the store (manifests read or stored, packs just written).

use std::borrow::Borrow;
use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::sync::Mutex;

/// Keys with their values and sizes; inserting past the budget drops the oldest.
pub(super) struct BoundedFifo<K, V> {
    budget: u64,
    held: Mutex<Held<K, V>>,
}

struct Held<K, V> {
    bytes: u64,
    order: VecDeque<K>,
    by_key: HashMap<K, (V, u64)>,
}

impl<K: Hash + Eq + Clone, V: Clone> BoundedFifo<K, V> {
    /// An empty map that holds at most `budget` bytes.
    pub(super) fn new(budget: u64) -> Self {
        Self {
            budget,
            held: Mutex::new(Held {
                bytes: 0,
                order: VecDeque::new(),
                by_key: HashMap::new(),
            }),
        }
    }

    /// The byte budget given at creation.
    pub(super) fn budget(&self) -> u64 {
        self.budget
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Held<K, V>> {
        // Every change below leaves the maps consistent before it can panic.
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The value kept under `key`, if any.
    pub(super) fn get<Q: Hash + Eq + ?Sized>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
    {
        self.held().by_key.get(key).map(|(value, _)| value.clone())
    }

    /// Keeps `value` of `size` bytes under `key` unless a value is already there, then drops
    /// the oldest until the map is within its budget.
    pub(super) fn insert(&self, key: K, value: V, size: u64) {
        let mut held = self.held();
        if held.by_key.contains_key(&key) {
            return;
        }
        held.bytes += size;
        held.order.push_back(key.clone());
        held.by_key.insert(key, (value, size));
        while held.bytes > self.budget {
            let Some(oldest) = held.order.pop_front() else {
                break;
            };
            if let Some((_, gone)) = held.by_key.remove(&oldest) {
                held.bytes -= gone;
            }
        }
    }

    /// Bytes held now, after checking they are the sum of the kept values' sizes and that
    /// every kept key is in the eviction order once.
    #[cfg(test)]
    pub(super) fn checked_bytes(&self) -> u64 {
        let held = self.held();
        assert_eq!(
            held.bytes,
            held.by_key.values().map(|(_, size)| size).sum::<u64>()
        );
        assert_eq!(held.order.len(), held.by_key.len());
        assert!(held.bytes <= self.budget);
        held.bytes
    }

    /// Forgets `key`.
    pub(super) fn remove<Q: Hash + Eq + ?Sized>(&self, key: &Q)
    where
        K: Borrow<Q>,
    {
        let mut held = self.held();
        if let Some((_, gone)) = held.by_key.remove(key) {
            held.bytes -= gone;
            held.order.retain(|k| k.borrow() != key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_go_first_and_the_bytes_held_stay_within_the_budget() {
        let map = BoundedFifo::new(10);
        map.insert("a", 1, 4);
        map.insert("b", 2, 4);
        map.insert("a", 9, 4);
        assert_eq!(map.get("a"), Some(1), "a key already kept keeps its value");
        map.insert("c", 3, 4);
        assert_eq!(
            (map.get("a"), map.get("b"), map.get("c")),
            (None, Some(2), Some(3))
        );
        map.remove("b");
        map.insert("d", 4, 6);
        assert_eq!(
            (map.get("c"), map.get("d")),
            (Some(3), Some(4)),
            "b's bytes were freed"
        );
    }
}
