//! The delta engine: makes sure only new bytes ever travel.
//!
//! - [`chunk_stream`] cuts any reader into content-defined chunks (FastCDC) with
//!   bounded memory, hashing each chunk and the whole file, and returns the
//!   [`Manifest`](keepsake_core::Manifest) the store expects. An insertion early in
//!   a file leaves later chunks unchanged.
//! - [`plan_upload`] says which chunks of a manifest are new against what the
//!   other side has, with byte counts.
//! - [`rsync`] makes and applies rsync-style deltas (fast_rsync) for small in-place
//!   edits, always checking the result against the declared BLAKE3.
//! - [`choose`] picks the cheaper of "send new chunks" and "send a delta".
//! - [`span`] sends only the changed stretch of an edited file as a delta: runs of
//!   missing chunks matched to the stretch of the old version they replaced.
//!
//! Pure: no network and no file-system access of its own — callers hand in readers
//! and byte slices.
//!
//! ```
//! use keepsake_delta::{ChunkParams, chunk_stream, plan_upload};
//! let photo = vec![7u8; 300_000];
//! let mut chunks = Vec::new();
//! let manifest = chunk_stream(&photo[..], ChunkParams::PHOTO, |id, data| {
//!     chunks.push((id, data.len()));
//!     Ok(())
//! })?;
//! assert_eq!(manifest.total_len, 300_000);
//! let plan = plan_upload(&manifest, |_| false);
//! assert_eq!(plan.new_bytes, 300_000);
//! # Ok::<(), keepsake_delta::DeltaError>(())
//! ```

mod chunking;
mod plan;
pub mod rsync;
pub mod span;

pub use chunking::{
    ChunkParams, chunk_batches, chunk_files_parallel, chunk_stream, chunk_stream_pipelined,
    manifest_of,
};
pub use plan::{Choice, UploadPlan, choose, plan_upload};

/// Deterministic incompressible bytes for tests.
#[cfg(test)]
fn test_noise(len: usize, seed: u8) -> Vec<u8> {
    let mut out = vec![0u8; len];
    blake3::Hasher::new_keyed(&[seed; 32])
        .finalize_xof()
        .fill(&mut out);
    out
}

/// What the delta engine can fail with.
#[derive(Debug, thiserror::Error)]
pub enum DeltaError {
    /// Reading the input failed.
    #[error("reading the file failed: {0}")]
    Read(#[from] std::io::Error),
    /// The caller's chunk sink refused a chunk.
    #[error("storing a chunk failed: {0}")]
    Sink(String),
    /// An input is larger than the engine accepts for this operation.
    #[error("{what} of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Which input.
        what: &'static str,
        /// Its size.
        len: u64,
        /// The limit.
        limit: u64,
    },
    /// A signature that cannot be parsed.
    #[error("malformed signature: {0}")]
    BadSignature(String),
    /// A delta that is truncated, malformed, or reaches past the end of its base.
    #[error("malformed delta: {0}")]
    BadDelta(String),
    /// The rebuilt file does not hash to what was declared.
    #[error("the rebuilt file hashes to {actual}, not the declared {declared}")]
    HashMismatch {
        /// The declared BLAKE3.
        declared: keepsake_core::ChunkId,
        /// What the rebuilt bytes hash to.
        actual: keepsake_core::ChunkId,
    },
}

impl DeltaError {
    /// The stable machine-readable reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Read(_) => "READ_FAILED",
            Self::Sink(_) => "STORE_FAILED",
            Self::TooLarge { .. } => "TOO_LARGE",
            Self::BadSignature(_) => "BAD_SIGNATURE",
            Self::BadDelta(_) => "BAD_DELTA",
            Self::HashMismatch { .. } => "HASH_MISMATCH",
        }
    }
}
