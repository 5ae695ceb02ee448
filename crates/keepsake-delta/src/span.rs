//! Deltas for the changed stretch of an edited file only.
//!
//! An edit in place (a photo's EXIF date rewritten) changes one or two content-defined
//! chunks; sending them whole costs 64 KiB or more for a 20-byte change. A whole-file
//! rsync signature costs 12 bytes per 2 KiB block of the file to fetch. Here the two
//! meet: the chunks the other side lacks are grouped into runs, each run is matched to
//! the stretch of the old version it replaced (between the chunks both versions share),
//! and only that stretch's signature and the delta against it travel. The receiver
//! rebuilds the run and checks every chunk against its id before storing anything.

use crate::DeltaError;
use crate::rsync::{self, RsyncLimits};
use keepsake_core::{ChunkId, Manifest};
use std::collections::{HashMap, HashSet};

/// Largest stretch of either version one span delta covers; larger runs travel as chunks.
pub const MAX_SPAN_BYTES: u64 = 2 << 20;

/// A run of chunks the other side lacks, and the stretch of the old version it replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    /// Where the replaced stretch starts in the old version (a chunk boundary).
    pub base_offset: u64,
    /// Its length (whole chunks of the old version).
    pub base_len: u64,
    /// Where the run starts in the new version.
    pub new_offset: u64,
    /// The run's chunks, in file order: (id, length).
    pub chunks: Vec<(ChunkId, u32)>,
}

impl Span {
    /// Bytes of the run in the new version.
    pub fn new_len(&self) -> u64 {
        self.chunks.iter().map(|(_, len)| u64::from(*len)).sum()
    }
}

/// The runs of `new` whose chunks are in `missing`, each paired with the stretch of `base`
/// between the chunks the two versions share on either side. Runs with nothing to
/// compare against (a pure insertion) or over [`MAX_SPAN_BYTES`] on either side are left
/// out: they travel as chunks.
pub fn plan_spans(base: &Manifest, new: &Manifest, missing: &HashSet<ChunkId>) -> Vec<Span> {
    // Where each chunk of the old version starts; the first occurrence wins.
    let mut base_at: HashMap<ChunkId, usize> = HashMap::new();
    let mut base_offsets = Vec::with_capacity(base.entries.len() + 1);
    let mut at = 0u64;
    for (i, e) in base.entries.iter().enumerate() {
        base_at.entry(e.chunk).or_insert(i);
        base_offsets.push(at);
        at += u64::from(e.len);
    }
    base_offsets.push(at);
    let mut spans = Vec::new();
    let mut i = 0;
    let mut new_at = 0u64;
    // The old-version index just past the last shared chunk seen so far.
    let mut base_from = 0usize;
    while i < new.entries.len() {
        let e = &new.entries[i];
        if !missing.contains(&e.chunk) {
            if let Some(&b) = base_at.get(&e.chunk)
                && b >= base_from
            {
                base_from = b + 1;
            }
            new_at += u64::from(e.len);
            i += 1;
            continue;
        }
        let run_start = i;
        let new_offset = new_at;
        while i < new.entries.len() && missing.contains(&new.entries[i].chunk) {
            new_at += u64::from(new.entries[i].len);
            i += 1;
        }
        // The replaced stretch ends at the next shared chunk the old version has after it.
        let base_to = new.entries[i..]
            .iter()
            .find_map(|e| base_at.get(&e.chunk).copied().filter(|b| *b >= base_from))
            .unwrap_or(base.entries.len());
        let chunks: Vec<(ChunkId, u32)> = new.entries[run_start..i]
            .iter()
            .map(|e| (e.chunk, e.len))
            .collect();
        let base_offset = base_offsets[base_from];
        let base_len = base_offsets[base_to] - base_offset;
        let span = Span {
            base_offset,
            base_len,
            new_offset,
            chunks,
        };
        if base_len > 0 && base_len <= MAX_SPAN_BYTES && span.new_len() <= MAX_SPAN_BYTES {
            spans.push(span);
        }
        base_from = base_to;
    }
    spans
}

/// How much more a byte the device sends costs than a byte it receives: a phone's uplink is
/// several times slower than its downlink, and the upload is what a person waits for.
pub const UPLOAD_WEIGHT: u64 = 4;

/// The signature block size for a stretch of `len` bytes. The signature comes down at 12
/// bytes per block and a small edit's literal data goes up at about one block, so
/// `UPLOAD_WEIGHT`·block + 12·len/block is least near √(12·len / UPLOAD_WEIGHT): about
/// 640 bytes for a 140 KiB stretch (2.6 KiB of signature down, ~0.7 KiB of delta up).
pub fn block_size_for(len: u64) -> u32 {
    let root = ((12 * len / UPLOAD_WEIGHT) as f64).sqrt() as u32;
    root.next_multiple_of(64).clamp(128, 4096)
}

/// Limits for one span: the block size that suits it, nothing larger than a span.
pub fn span_limits(len: u64) -> RsyncLimits {
    RsyncLimits {
        max_file_bytes: MAX_SPAN_BYTES,
        max_delta_bytes: MAX_SPAN_BYTES + (64 << 10),
        block_size: block_size_for(len),
    }
}

/// Rebuilds a run from the old stretch `base` and `delta`, and splits it into `chunks`,
/// each checked against its id. Nothing is returned unless every chunk verifies.
pub fn rebuild_chunks(
    base: &[u8],
    delta: &[u8],
    chunks: &[(ChunkId, u32)],
) -> Result<Vec<(ChunkId, Vec<u8>)>, DeltaError> {
    let want: u64 = chunks.iter().map(|(_, len)| u64::from(*len)).sum();
    if want > MAX_SPAN_BYTES {
        return Err(DeltaError::TooLarge {
            what: "span",
            len: want,
            limit: MAX_SPAN_BYTES,
        });
    }
    let run = rsync::apply_bounded(base, delta, &span_limits(base.len() as u64), want)?;
    if run.len() as u64 != want {
        return Err(DeltaError::BadDelta(format!(
            "the delta rebuilt {} bytes where the chunks add up to {want}",
            run.len()
        )));
    }
    let mut out = Vec::with_capacity(chunks.len());
    let mut at = 0usize;
    for (id, len) in chunks {
        let data = run[at..at + *len as usize].to_vec();
        at += *len as usize;
        let actual = ChunkId::of(&data);
        if actual != *id {
            return Err(DeltaError::HashMismatch {
                declared: *id,
                actual,
            });
        }
        out.push((*id, data));
    }
    Ok(out)
}

/// The delta that turns the stretch behind `signature` into the run `new`.
pub fn span_delta(signature: &[u8], new: &[u8]) -> Result<Vec<u8>, DeltaError> {
    rsync::delta(signature, new, &span_limits(new.len() as u64))
}

/// The signature of an old stretch, with the block size that suits its length.
pub fn span_signature(base: &[u8]) -> Result<Vec<u8>, DeltaError> {
    rsync::signature(base, &span_limits(base.len() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_noise as noise;
    use crate::{ChunkParams, manifest_of};
    use proptest::prelude::*;

    fn missing_of(base: &Manifest, new: &Manifest) -> HashSet<ChunkId> {
        let old: HashSet<ChunkId> = base.entries.iter().map(|e| e.chunk).collect();
        new.entries
            .iter()
            .map(|e| e.chunk)
            .filter(|c| !old.contains(c))
            .collect()
    }

    /// Runs every span through signature → delta → rebuild, as the two sides would.
    fn round_trip(base: &[u8], new: &[u8]) -> (u64, u64, usize) {
        let (bm, nm) = (
            manifest_of(base, ChunkParams::PHOTO),
            manifest_of(new, ChunkParams::PHOTO),
        );
        let missing = missing_of(&bm, &nm);
        let missing_bytes: u64 = nm
            .entries
            .iter()
            .filter(|e| missing.contains(&e.chunk))
            .map(|e| u64::from(e.len))
            .sum();
        let mut wire_bytes = 0u64;
        let mut rebuilt = 0usize;
        for span in plan_spans(&bm, &nm, &missing) {
            let old = &base[span.base_offset as usize..(span.base_offset + span.base_len) as usize];
            let run = &new[span.new_offset as usize..(span.new_offset + span.new_len()) as usize];
            let signature = span_signature(old).unwrap();
            let delta = span_delta(&signature, run).unwrap();
            wire_bytes += (signature.len() + delta.len()) as u64;
            let chunks = rebuild_chunks(old, &delta, &span.chunks).unwrap();
            for (id, data) in &chunks {
                assert!(missing.contains(id));
                assert_eq!(ChunkId::of(data), *id);
            }
            rebuilt += chunks.len();
        }
        (missing_bytes, wire_bytes, rebuilt)
    }

    #[test]
    fn an_exif_rewrite_travels_as_a_few_hundred_bytes_not_a_chunk() {
        let base = noise(4 << 20, 3);
        let mut new = base.clone();
        new[1_000_000..1_000_019].copy_from_slice(b"2025:01:11 08:30:00");
        let (missing_bytes, wire_bytes, rebuilt) = round_trip(&base, &new);
        assert!(rebuilt >= 1);
        assert!(
            missing_bytes >= 16 << 10,
            "a whole chunk changed: {missing_bytes}"
        );
        assert!(
            wire_bytes * 16 < missing_bytes,
            "{wire_bytes} bytes of signature and delta for a 19-byte edit ({missing_bytes} bytes of chunks)"
        );
    }

    #[test]
    fn a_pure_insertion_has_no_stretch_to_compare_and_is_left_to_chunks() {
        let base = noise(1 << 20, 4);
        let mut new = base.clone();
        new.extend(noise(300_000, 5));
        let (bm, nm) = (
            manifest_of(&base, ChunkParams::PHOTO),
            manifest_of(&new, ChunkParams::PHOTO),
        );
        for span in plan_spans(&bm, &nm, &missing_of(&bm, &nm)) {
            assert!(span.base_len > 0);
        }
    }

    #[test]
    fn a_delta_that_rebuilds_the_wrong_bytes_stores_nothing() {
        let base = noise(200_000, 6);
        let other = noise(150_000, 7);
        let delta = span_delta(&span_signature(&base).unwrap(), &other).unwrap();
        let wrong = [(ChunkId::of(b"not this"), 150_000u32)];
        assert!(matches!(
            rebuild_chunks(&base, &delta, &wrong),
            Err(DeltaError::HashMismatch { .. })
        ));
        let short = [(ChunkId::of(&other[..1000]), 1000u32)];
        assert!(rebuild_chunks(&base, &delta, &short).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// Any set of in-place edits: every span rebuilds exactly the chunks it names, and
        /// every stretch lies inside the old version.
        #[test]
        fn spans_rebuild_exactly_their_chunks(
            len in 100_000usize..1_500_000,
            edits in proptest::collection::vec((0.0f64..1.0, 1usize..5000), 1..5),
            seed in any::<u8>(),
        ) {
            let base = noise(len, seed);
            let mut new = base.clone();
            for (at, n) in edits {
                let start = ((len - 1) as f64 * at) as usize;
                let end = (start + n).min(len);
                for b in &mut new[start..end] {
                    *b ^= 0x5A;
                }
            }
            let (bm, nm) = (
                manifest_of(&base, ChunkParams::PHOTO),
                manifest_of(&new, ChunkParams::PHOTO),
            );
            for span in plan_spans(&bm, &nm, &missing_of(&bm, &nm)) {
                prop_assert!(span.base_offset + span.base_len <= len as u64);
            }
            let _ = round_trip(&base, &new);
        }
    }
}
