//! Manifests recently stored or read, kept in memory by id.
//!
//! A device downloading a new photo asks for its manifest moments after another device
//! stored it; on a bucket every read is a request — a round trip before the chunks can be
//! asked for, and billed. A manifest never changes under its id (the id is its hash), so a
//! verified copy stays right for as long as it is kept; the index is still asked every
//! time whether the account owns it.

use super::bounded::BoundedFifo;
use crate::ManifestId;
use bytes::Bytes;

/// Bytes of encoded manifests kept: about 8,000 photos' worth.
pub(super) const MANIFEST_CACHE_BYTES: usize = 8 << 20;

/// Oldest-stored first out, bounded by the bytes it holds.
pub(super) struct ManifestCache {
    held: BoundedFifo<ManifestId, Bytes>,
}

impl ManifestCache {
    pub(super) fn new(budget: usize) -> Self {
        Self {
            held: BoundedFifo::new(budget as u64),
        }
    }

    /// The encoded manifest, if kept.
    pub(super) fn get(&self, id: &ManifestId) -> Option<Bytes> {
        self.held.get(id)
    }

    /// Keeps `encoded` (already verified against `id`), dropping the oldest to make room.
    /// A manifest of more than an eighth of the budget (a very long video's) is not kept:
    /// it would push out hundreds of photos' manifests to save one request.
    pub(super) fn insert(&self, id: ManifestId, encoded: Bytes) {
        let size = encoded.len() as u64;
        if size > self.held.budget() / 8 {
            return;
        }
        self.held.insert(id, encoded, size);
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
        assert!(cache.held.checked_bytes() <= 1000);
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
        assert_eq!(cache.held.checked_bytes(), 100, "kept once");
    }
}
