//! Content addresses.

use crate::Malformed;
use std::fmt;

/// A BLAKE3 hash naming a chunk or a manifest.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId(pub [u8; 32]);

impl ChunkId {
    /// The id of `bytes`: their BLAKE3 hash.
    pub fn of(bytes: &[u8]) -> Self {
        Self(*blake3::hash(bytes).as_bytes())
    }

    /// Parses a 32-byte id from the wire, refusing any other length.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, Malformed> {
        <[u8; 32]>::try_from(bytes)
            .map(Self)
            .map_err(|_| Malformed::Id { len: bytes.len() })
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lower-case hex, 64 characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A prefix is enough to tell ids apart in logs and test failures.
        write!(f, "ChunkId({})", &self.to_hex()[..16])
    }
}

/// Manifests are addressed exactly like chunks.
pub type ManifestId = ChunkId;
