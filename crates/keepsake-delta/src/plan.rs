//! Upload plans: which chunks are new, and whether a delta would be cheaper.

use crate::rsync::{self, RsyncLimits};
use crate::{ChunkParams, DeltaError, chunk_stream};
use keepsake_core::{ChunkId, Manifest, ManifestEntry};
use std::collections::HashSet;

/// The chunks of a manifest the other side lacks, once each, in file order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UploadPlan {
    /// Chunks to send.
    pub new: Vec<ManifestEntry>,
    /// Bytes to send.
    pub new_bytes: u64,
    /// Bytes the other side already has.
    pub reused_bytes: u64,
}

/// Splits `manifest` into what must travel and what `have` says is already there.
pub fn plan_upload(manifest: &Manifest, have: impl Fn(&ChunkId) -> bool) -> UploadPlan {
    let mut plan = UploadPlan::default();
    let mut seen = HashSet::new();
    for e in &manifest.entries {
        if !seen.insert(e.chunk) {
            continue;
        }
        if have(&e.chunk) {
            plan.reused_bytes += u64::from(e.len);
        } else {
            plan.new_bytes += u64::from(e.len);
            plan.new.push(*e);
        }
    }
    plan
}

/// How an edited file should travel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    /// Send the chunks the other side lacks.
    Chunks {
        /// The chunk plan.
        plan: UploadPlan,
    },
    /// Send an rsync delta against the base; the server rebuilds the file.
    Delta {
        /// The delta.
        delta: Vec<u8>,
        /// What the chunk plan would have cost instead.
        chunk_bytes: u64,
    },
}

impl Choice {
    /// Bytes this choice puts on the wire (payload only).
    pub fn wire_bytes(&self) -> u64 {
        match self {
            Self::Chunks { plan } => plan.new_bytes,
            Self::Delta { delta, .. } => delta.len() as u64,
        }
    }
}

/// Picks the cheaper way to send `new` given `base` (the version the other side
/// holds, whose manifest is `base_manifest`). Deltas are only considered while both
/// files fit `limits`; larger files always use the chunk plan.
pub fn choose(
    base: &[u8],
    base_manifest: &Manifest,
    new: &[u8],
    params: ChunkParams,
    limits: &RsyncLimits,
) -> Result<Choice, DeltaError> {
    let known: HashSet<ChunkId> = base_manifest.entries.iter().map(|e| e.chunk).collect();
    let manifest = chunk_stream(new, params, |_, _| Ok(()))?;
    let plan = plan_upload(&manifest, |id| known.contains(id));
    if base.len() as u64 > limits.max_file_bytes || new.len() as u64 > limits.max_file_bytes {
        return Ok(Choice::Chunks { plan });
    }
    let signature = rsync::signature(base, limits)?;
    let delta = rsync::delta(&signature, new, limits)?;
    if (delta.len() as u64) < plan.new_bytes {
        Ok(Choice::Delta {
            delta,
            chunk_bytes: plan.new_bytes,
        })
    } else {
        Ok(Choice::Chunks { plan })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_noise as noise;

    #[test]
    fn a_small_in_place_edit_travels_as_a_delta() {
        let base = noise(3 << 20, 1);
        let mut new = base.clone();
        new[1_000_000..1_000_100].copy_from_slice(&[0xAB; 100]);
        let base_manifest = chunk_stream(&base[..], ChunkParams::PHOTO, |_, _| Ok(())).unwrap();
        let choice = choose(
            &base,
            &base_manifest,
            &new,
            ChunkParams::PHOTO,
            &RsyncLimits::default(),
        )
        .unwrap();
        match &choice {
            Choice::Delta { delta, chunk_bytes } => {
                assert!(delta.len() < 20_000, "delta {}", delta.len());
                assert!(*chunk_bytes >= 16 << 10, "a whole chunk changed");
            }
            other => panic!("expected a delta, got {other:?}"),
        }
    }

    #[test]
    fn an_unrelated_file_travels_as_chunks_and_duplicates_count_once() {
        let base = noise(1 << 20, 2);
        let new = [noise(300_000, 3), noise(300_000, 3)].concat();
        let base_manifest = chunk_stream(&base[..], ChunkParams::PHOTO, |_, _| Ok(())).unwrap();
        let choice = choose(
            &base,
            &base_manifest,
            &new,
            ChunkParams::PHOTO,
            &RsyncLimits::default(),
        )
        .unwrap();
        assert!(matches!(choice, Choice::Chunks { .. }), "{choice:?}");
        assert!(choice.wire_bytes() <= new.len() as u64);
    }
}
