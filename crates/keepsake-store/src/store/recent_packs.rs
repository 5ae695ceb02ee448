//! Packs just written, kept in memory by name, for the reads that follow at once.
//!
//! The commonest read of a photo library is another device fetching what one device just
//! uploaded. On local files the page cache answers it (the newest packs keep theirs); on a
//! bucket every read is a request the bucket must serve again from its disk — in the first
//! sync measured here the S3 server spent more CPU on those GETs than on the PUTs. A pack
//! never changes under its name, so the bytes written are the bytes a read would return;
//! every chunk served from here is checked exactly as one read from the bucket is. Scrub
//! and re-checks read the bucket itself: they are about what is at rest.

use super::bounded::BoundedFifo;
use bytes::Bytes;
use std::sync::Arc;

/// The parts a pack was written from, with where each starts in the pack.
struct Pack {
    parts: Vec<Bytes>,
    starts: Vec<u64>,
    len: u64,
}

impl Pack {
    /// `len` bytes at `offset`: a slice of one part (no copy) or joined from several.
    fn read(&self, offset: u64, len: u64) -> Option<Bytes> {
        let end = offset.checked_add(len)?;
        if end > self.len {
            return None;
        }
        // The last part starting at or before `offset`.
        let first = self
            .starts
            .partition_point(|s| *s <= offset)
            .checked_sub(1)?;
        let at = usize::try_from(offset - self.starts[first]).ok()?;
        let part = &self.parts[first];
        if at + len as usize <= part.len() {
            return Some(part.slice(at..at + len as usize));
        }
        let mut joined = Vec::with_capacity(len as usize);
        let mut next = first;
        let mut skip = at;
        while joined.len() < len as usize {
            let part = self.parts.get(next)?;
            let want = (len as usize - joined.len()).min(part.len() - skip);
            joined.extend_from_slice(&part[skip..skip + want]);
            skip = 0;
            next += 1;
        }
        Some(Bytes::from(joined))
    }
}

/// Oldest-written first out, bounded by the bytes it holds; a budget of 0 keeps nothing.
pub(super) struct RecentPacks {
    held: BoundedFifo<String, Arc<Pack>>,
}

impl RecentPacks {
    pub(super) fn new(budget: u64) -> Self {
        Self {
            held: BoundedFifo::new(budget),
        }
    }

    /// Keeps the pack `name` was durably written as (its parts, in order). A pack of more
    /// than a quarter of the budget is not kept: it would push out many photos to keep one.
    pub(super) fn insert(&self, name: &str, parts: Vec<Bytes>) {
        let len: u64 = parts.iter().map(|p| p.len() as u64).sum();
        let budget = self.held.budget();
        if budget == 0 || len > budget / 4 {
            return;
        }
        let mut starts = Vec::with_capacity(parts.len());
        let mut at = 0u64;
        for part in &parts {
            starts.push(at);
            at += part.len() as u64;
        }
        let pack = Arc::new(Pack { parts, starts, len });
        self.held.insert(name.to_string(), pack, len);
    }

    /// `len` bytes at `offset` of pack `name`, if it is kept.
    pub(super) fn read(&self, name: &str, offset: u64, len: u64) -> Option<Bytes> {
        self.held.get(name)?.read(offset, len)
    }

    /// Forgets `name` (deleted or replaced by a repack).
    pub(super) fn remove(&self, name: &str) {
        self.held.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts() -> Vec<Bytes> {
        vec![
            Bytes::from_static(b"0123"),
            Bytes::from_static(b"456789"),
            Bytes::from_static(b"ab"),
        ]
    }

    #[test]
    fn a_kept_pack_reads_back_the_bytes_written_at_any_offset() {
        let recent = RecentPacks::new(1 << 20);
        recent.insert("packs/aa/1", parts());
        let whole: Vec<u8> = parts().concat();
        for offset in 0..whole.len() as u64 {
            for len in 0..=(whole.len() as u64 - offset) {
                let got = recent.read("packs/aa/1", offset, len).unwrap();
                assert_eq!(&got[..], &whole[offset as usize..(offset + len) as usize]);
            }
        }
        assert!(recent.read("packs/aa/1", 10, 3).is_none(), "past the end");
        assert!(recent.read("packs/aa/2", 0, 1).is_none(), "never written");
    }

    #[test]
    fn the_oldest_packs_leave_first_and_a_budget_of_nothing_keeps_nothing() {
        // Packs of 12 bytes, room for four.
        let recent = RecentPacks::new(48);
        for i in 0..5 {
            recent.insert(&format!("p{i}"), parts());
        }
        assert!(recent.read("p0", 0, 1).is_none());
        assert!(recent.read("p1", 0, 1).is_some());
        assert!(recent.read("p4", 0, 1).is_some());
        recent.remove("p4");
        assert!(recent.read("p4", 0, 1).is_none());
        assert_eq!(recent.held.checked_bytes(), 36);
        // More than a quarter of the budget is not kept at all.
        let small = RecentPacks::new(40);
        small.insert("big", parts());
        assert!(small.read("big", 0, 1).is_none());

        let none = RecentPacks::new(0);
        none.insert("p", parts());
        assert!(none.read("p", 0, 1).is_none());
    }
}
