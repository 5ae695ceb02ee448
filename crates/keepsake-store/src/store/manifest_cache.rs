//! Manifests recently stored or read, kept in memory by id.
//!
//! A device downloading a new photo asks for its manifest moments after another device
//! stored it; on a bucket every read is a request — a round trip before the chunks can be
//! asked for, and billed. A manifest never changes under its id (the id is its hash), so a
//! verified copy stays right for as long as it is kept; the index is still asked every
//! time whether the account owns it.

use crate::ManifestId;
use bytes::Bytes;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// Bytes of encoded manifests kept: about 8,000 photos' worth.
pub(super) const MANIFEST_CACHE_BYTES: usize = 8 << 20;

/// Oldest-stored first out, bounded by the bytes it holds.
pub(super) struct ManifestCache {
    budget: usize,
    held: Mutex<Held>,
}

#[derive(Default)]
struct Held {
    bytes: usize,
    order: VecDeque<ManifestId>,
    by_id: HashMap<ManifestId, Bytes>,
}

impl ManifestCache {
    pub(super) fn new(budget: usize) -> Self {
        Self {
            budget,
            held: Mutex::new(Held::default()),
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        // Every change below leaves the maps consistent before it can panic.
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The encoded manifest, if kept.
    pub(super) fn get(&self, id: &ManifestId) -> Option<Bytes> {
        self.held().by_id.get(id).cloned()
    }

    /// Keeps `encoded` (already verified against `id`), dropping the oldest to make room.
    /// A manifest of more than an eighth of the budget (a very long video's) is not kept:
    /// it would push out hundreds of photos' manifests to save one request.
    pub(super) fn insert(&self, id: ManifestId, encoded: Bytes) {
        if encoded.len() > self.budget / 8 {
            return;
        }
        let mut held = self.held();
        if held.by_id.contains_key(&id) {
            return;
        }
        held.bytes += encoded.len();
        held.order.push_back(id);
        held.by_id.insert(id, encoded);
        while held.bytes > self.budget {
            let Some(oldest) = held.order.pop_front() else {
                break;
            };
            if let Some(gone) = held.by_id.remove(&oldest) {
                held.bytes -= gone.len();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ChunkId;

    fn manifest(n: u8, len: usize) -> (ManifestId, Bytes) {
        let bytes = Bytes::from(vec![n; len]);
        (ChunkId::of(&bytes), bytes)
    }

    #[test]
    fn the_oldest_go_first_and_the_bytes_held_never_pass_the_budget() {
        let cache = ManifestCache::new(1000);
        let kept: Vec<_> = (0..5).map(|n| manifest(n, 120)).collect();
        for (id, bytes) in &kept {
            cache.insert(*id, bytes.clone());
        }
        let (late_id, late) = manifest(9, 125);
        cache.insert(late_id, late.clone());
        for (id, bytes) in &kept {
            assert_eq!(cache.get(id).as_ref(), Some(bytes), "room for all six");
        }
        for n in 10..20 {
            let (id, bytes) = manifest(n, 120);
            cache.insert(id, bytes);
        }
        assert!(cache.get(&kept[0].0).is_none(), "the oldest went first");
        let held = cache.held();
        assert!(held.bytes <= 1000);
        assert_eq!(
            held.bytes,
            held.by_id.values().map(Bytes::len).sum::<usize>()
        );
        assert_eq!(held.order.len(), held.by_id.len());
    }

    #[test]
    fn a_manifest_too_large_to_be_worth_it_is_not_kept() {
        let cache = ManifestCache::new(800);
        let (id, bytes) = manifest(1, 101);
        cache.insert(id, bytes);
        assert!(cache.get(&id).is_none());
        let (id, bytes) = manifest(2, 100);
        cache.insert(id, bytes.clone());
        cache.insert(id, bytes.clone());
        assert_eq!(cache.get(&id), Some(bytes));
        assert_eq!(cache.held().bytes, 100, "kept once");
    }
}
