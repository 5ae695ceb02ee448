//! rsync-style deltas (fast_rsync) for edits that content-defined chunking handles
//! poorly. fast_rsync's signatures use MD4, so a rebuilt file is trusted only after
//! its BLAKE3 matches the declared hash. It works on whole in-memory slices, so
//! sizes are capped by [`RsyncLimits`].

use crate::DeltaError;
use fast_rsync::{Signature, SignatureOptions};
use keepsake_core::ChunkId;

/// Bounds for rsync deltas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RsyncLimits {
    /// Largest base or new file handled with deltas; larger files use chunk plans.
    pub max_file_bytes: u64,
    /// Largest delta accepted.
    pub max_delta_bytes: u64,
    /// Signature block size.
    pub block_size: u32,
}

impl Default for RsyncLimits {
    fn default() -> Self {
        Self {
            max_file_bytes: 64 << 20,
            max_delta_bytes: 64 << 20,
            block_size: 2048,
        }
    }
}

/// The smallest block a signature may describe; ours use `RsyncLimits::block_size`.
const MIN_BLOCK: u32 = 64;

fn check(what: &'static str, len: usize, limit: u64) -> Result<(), DeltaError> {
    if len as u64 > limit {
        return Err(DeltaError::TooLarge {
            what,
            len: len as u64,
            limit,
        });
    }
    Ok(())
}

/// The signature of `base`.
pub fn signature(base: &[u8], limits: &RsyncLimits) -> Result<Vec<u8>, DeltaError> {
    check("base", base.len(), limits.max_file_bytes)?;
    let options = SignatureOptions {
        block_size: limits.block_size,
        crypto_hash_size: 8,
    };
    Ok(Signature::calculate(base, options).into_serialized())
}

/// The delta that turns the file behind `signature` into `new`.
pub fn delta(signature: &[u8], new: &[u8], limits: &RsyncLimits) -> Result<Vec<u8>, DeltaError> {
    check("new file", new.len(), limits.max_file_bytes)?;
    check("signature", signature.len(), limits.max_file_bytes)?;
    // fast_rsync trusts the header: a block size of 0 makes `diff` loop forever (found by
    // the rsync_delta fuzz target), a huge one allocates. Only sane shapes get through.
    if let Some(header) = signature.get(4..12) {
        let block = u32::from_be_bytes(header[..4].try_into().expect("4 bytes"));
        let strong = u32::from_be_bytes(header[4..].try_into().expect("4 bytes"));
        if !(MIN_BLOCK..=limits.max_file_bytes.min(u64::from(u32::MAX)) as u32).contains(&block)
            || !(1..=32).contains(&strong)
        {
            return Err(DeltaError::BadSignature(format!(
                "block size {block} or strong hash size {strong} out of range"
            )));
        }
    }
    let signature = Signature::deserialize(signature.to_vec())
        .map_err(|e| DeltaError::BadSignature(e.to_string()))?;
    let mut out = Vec::new();
    fast_rsync::diff(&signature.index(), new, &mut out)
        .map_err(|e| DeltaError::BadSignature(e.to_string()))?;
    Ok(out)
}

/// Rebuilds a file from `base` and `delta`, and returns it only if it hashes to `declared`.
pub fn apply(
    base: &[u8],
    delta: &[u8],
    declared: &ChunkId,
    limits: &RsyncLimits,
) -> Result<Vec<u8>, DeltaError> {
    let out = apply_unverified(base, delta, limits)?;
    verify(ChunkId::of(&out), declared)?;
    Ok(out)
}

/// fast_rsync's rebuild, bounded, with no hash check: callers must verify the result.
fn apply_unverified(
    base: &[u8],
    delta: &[u8],
    limits: &RsyncLimits,
) -> Result<Vec<u8>, DeltaError> {
    apply_bounded(base, delta, limits, limits.max_file_bytes)
}

/// fast_rsync's rebuild, refusing to produce more than `max_out` bytes; no hash check:
/// callers must verify the result.
pub(crate) fn apply_bounded(
    base: &[u8],
    delta: &[u8],
    limits: &RsyncLimits,
    max_out: u64,
) -> Result<Vec<u8>, DeltaError> {
    check("base", base.len(), limits.max_file_bytes)?;
    check("delta", delta.len(), limits.max_delta_bytes)?;
    let mut out = Vec::new();
    fast_rsync::apply_limited(base, delta, &mut out, max_out as usize)
        .map_err(|e| DeltaError::BadDelta(e.to_string()))?;
    Ok(out)
}

fn verify(actual: ChunkId, declared: &ChunkId) -> Result<(), DeltaError> {
    if actual != *declared {
        return Err(DeltaError::HashMismatch {
            declared: *declared,
            actual,
        });
    }
    Ok(())
}

/// Reassembles a stored file from its manifest, fetching each chunk through `fetch`,
/// and checks the whole-file hash. Refuses files over `limits.max_file_bytes`.
pub fn assemble<Chunk: AsRef<[u8]>>(
    manifest: &keepsake_core::Manifest,
    mut fetch: impl FnMut(&ChunkId) -> Result<Chunk, DeltaError>,
    limits: &RsyncLimits,
) -> Result<Vec<u8>, DeltaError> {
    if manifest.total_len > limits.max_file_bytes {
        return Err(DeltaError::TooLarge {
            what: "base",
            len: manifest.total_len,
            limit: limits.max_file_bytes,
        });
    }
    let mut out = Vec::with_capacity(manifest.total_len as usize);
    for e in &manifest.entries {
        let data = fetch(&e.chunk)?;
        let data = data.as_ref();
        if data.len() != e.len as usize {
            return Err(DeltaError::Sink(format!(
                "chunk {} came back wrong",
                e.chunk
            )));
        }
        out.extend_from_slice(data);
    }
    // One hash of the whole file catches any wrong chunk; hashing each chunk again
    // would repeat what the store's verified reads already did.
    verify(ChunkId::of(&out), &manifest.file_hash)?;
    Ok(out)
}

/// Rebuilds a new version from `base` and `delta`, verifies it against `declared`,
/// and chunks it into `sink`; returns its manifest. Nothing reaches `sink` unless
/// the rebuilt bytes hash to `declared`.
pub fn rebuild(
    base: &[u8],
    delta: &[u8],
    declared: &ChunkId,
    limits: &RsyncLimits,
    mut sink: impl FnMut(ChunkId, &[u8]) -> Result<(), DeltaError>,
) -> Result<keepsake_core::Manifest, DeltaError> {
    let new = apply_unverified(base, delta, limits)?;
    // The manifest's whole-file hash is the check: the file is hashed once, not twice.
    let manifest = crate::manifest_of(&new, crate::ChunkParams::for_len(new.len() as u64));
    verify(manifest.file_hash, declared)?;
    let mut offset = 0usize;
    for e in &manifest.entries {
        let end = offset + e.len as usize;
        sink(e.chunk, &new[offset..end])?;
        offset = end;
    }
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_noise as noise;
    use proptest::prelude::*;

    #[test]
    fn a_signature_with_zero_byte_blocks_is_refused_instead_of_looping_forever() {
        // The fuzzer's input: an MD4 signature header claiming 0-byte blocks.
        let mut evil = b"rs\x01\x36".to_vec();
        evil.extend(0u32.to_be_bytes());
        evil.extend(0u32.to_be_bytes());
        evil.extend([0u8; 24]);
        let limits = RsyncLimits::default();
        assert!(matches!(
            delta(&evil, b"4\x13a", &limits),
            Err(DeltaError::BadSignature(_))
        ));
        // A real signature still works.
        let base = noise(10_000, 1);
        let sig = signature(&base, &limits).unwrap();
        assert!(delta(&sig, &base, &limits).is_ok());
    }

    fn limits() -> RsyncLimits {
        RsyncLimits {
            block_size: 64,
            ..RsyncLimits::default()
        }
    }

    proptest! {
        #[test]
        fn apply_of_delta_rebuilds_any_new_file(
            base in proptest::collection::vec(any::<u8>(), 0..4000),
            new in proptest::collection::vec(any::<u8>(), 0..4000),
        ) {
            let sig = signature(&base, &limits()).unwrap();
            let d = delta(&sig, &new, &limits()).unwrap();
            prop_assert_eq!(apply(&base, &d, &ChunkId::of(&new), &limits()).unwrap(), new);
        }

        #[test]
        fn apply_never_panics_on_garbage_deltas(
            base in proptest::collection::vec(any::<u8>(), 0..500),
            garbage in proptest::collection::vec(any::<u8>(), 0..500),
        ) {
            let _ = apply(&base, &garbage, &ChunkId::of(b""), &limits());
        }
    }

    fn edited() -> (Vec<u8>, Vec<u8>) {
        let base = noise(50_000, 1);
        let mut new = base.clone();
        new[20_000..20_010].copy_from_slice(b"0123456789");
        (base, new)
    }

    #[test]
    fn a_wrong_declared_hash_is_refused() {
        let (base, new) = edited();
        let d = delta(&signature(&base, &limits()).unwrap(), &new, &limits()).unwrap();
        let err = apply(&base, &d, &ChunkId::of(b"something else"), &limits()).unwrap_err();
        assert!(matches!(err, DeltaError::HashMismatch { .. }), "{err}");
    }

    #[test]
    fn a_truncated_delta_is_refused() {
        let (base, new) = edited();
        let d = delta(&signature(&base, &limits()).unwrap(), &new, &limits()).unwrap();
        let err = apply(&base, &d[..d.len() / 2], &ChunkId::of(&new), &limits()).unwrap_err();
        assert!(
            matches!(
                err,
                DeltaError::BadDelta(_) | DeltaError::HashMismatch { .. }
            ),
            "{err}"
        );
    }

    #[test]
    fn a_delta_reaching_past_its_base_is_refused() {
        let (base, new) = edited();
        let d = delta(&signature(&base, &limits()).unwrap(), &new, &limits()).unwrap();
        // The same delta against a shorter base copies from beyond its end.
        let err = apply(&base[..1000], &d, &ChunkId::of(&new), &limits()).unwrap_err();
        assert!(matches!(err, DeltaError::BadDelta(_)), "{err}");
    }

    #[test]
    fn a_delta_made_for_another_base_is_refused() {
        let (base, _) = edited();
        // A delta that copies blocks of `other` cannot rebuild its target from `base`.
        let other = noise(50_000, 2);
        let mut target = other.clone();
        target[100..110].copy_from_slice(b"0123456789");
        let d = delta(&signature(&other, &limits()).unwrap(), &target, &limits()).unwrap();
        let err = apply(&base, &d, &ChunkId::of(&target), &limits()).unwrap_err();
        assert!(matches!(err, DeltaError::HashMismatch { .. }), "{err}");
    }

    #[test]
    fn assemble_refuses_a_chunk_that_comes_back_with_other_bytes() {
        let file = noise(300_000, 5);
        let m = crate::manifest_of(&file, crate::ChunkParams::PHOTO);
        let mut offsets = std::collections::HashMap::new();
        let mut at = 0usize;
        for e in &m.entries {
            offsets.insert(e.chunk, at..at + e.len as usize);
            at += e.len as usize;
        }
        let honest = assemble(&m, |id| Ok(file[offsets[id].clone()].to_vec()), &limits()).unwrap();
        assert_eq!(honest, file);
        let lying = assemble(
            &m,
            |id| {
                let mut bytes = file[offsets[id].clone()].to_vec();
                bytes[0] ^= 1;
                Ok(bytes)
            },
            &limits(),
        );
        assert!(
            matches!(lying, Err(DeltaError::HashMismatch { .. })),
            "{lying:?}"
        );
    }

    #[test]
    fn oversized_inputs_are_refused_before_work() {
        let tiny = RsyncLimits {
            max_file_bytes: 10,
            ..limits()
        };
        assert!(matches!(
            signature(&[0; 11], &tiny),
            Err(DeltaError::TooLarge { .. })
        ));
        assert!(matches!(
            apply(
                &[0; 5],
                &[0; 100],
                &ChunkId::of(b""),
                &RsyncLimits {
                    max_delta_bytes: 10,
                    ..limits()
                }
            ),
            Err(DeltaError::TooLarge { .. })
        ));
    }
}
