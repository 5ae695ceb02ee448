//! Shift resistance: inserting, deleting or overwriting k bytes at a random offset
//! of a 64 MiB file changes at most ⌈k/avg⌉ + 2 chunks at the 99th percentile.

use keepsake_core::ChunkId;
use keepsake_delta::{ChunkParams, manifest_of};
use std::collections::HashSet;

const FILE: usize = 64 << 20;
const SEEDS: u64 = 8;

fn noise(len: usize, key: &str) -> Vec<u8> {
    let mut out = vec![0u8; len];
    blake3::Hasher::new_derive_key(key)
        .finalize_xof()
        .fill(&mut out);
    out
}

/// A deterministic offset for a seed.
fn offset_for(seed: u64, len: usize) -> usize {
    let h = blake3::hash(&seed.to_le_bytes());
    (u64::from_le_bytes(h.as_bytes()[..8].try_into().unwrap()) % len as u64) as usize
}

#[test]
fn edits_change_few_chunks_wherever_they_land() {
    let params = ChunkParams::PHOTO;
    let base = noise(FILE, "keepsake shift base");
    let base_ids: HashSet<ChunkId> = manifest_of(&base, params)
        .entries
        .iter()
        .map(|e| e.chunk)
        .collect();
    let mut report = Vec::new();
    for k in [1usize, 4096, 100_000] {
        let bound = k.div_ceil(params.avg as usize) + 2;
        for op in ["insert", "delete", "overwrite"] {
            let mut changed: Vec<usize> = Vec::new();
            for seed in 0..SEEDS {
                let at = offset_for(seed * 7919 + k as u64, FILE - k);
                let patch = noise(k, &format!("patch {seed} {k}"));
                let mut edited = base.clone();
                match op {
                    "insert" => {
                        edited.splice(at..at, patch);
                    }
                    "delete" => {
                        edited.drain(at..at + k);
                    }
                    _ => edited[at..at + k].copy_from_slice(&patch),
                }
                let m = manifest_of(&edited, params);
                changed.push(
                    m.entries
                        .iter()
                        .filter(|e| !base_ids.contains(&e.chunk))
                        .count(),
                );
            }
            changed.sort_unstable();
            let p99 = changed[(changed.len() * 99).div_ceil(100) - 1];
            report.push(format!(
                "k={k:>6} {op:<9} changed chunks {changed:?} p99={p99} bound={bound}"
            ));
            assert!(p99 <= bound, "k={k} {op}: {changed:?} exceeds {bound}");
        }
    }
    // Shown with --nocapture; docs/benchmarks.md records a run.
    println!("{}", report.join("\n"));
}
