//! Bytes from the wire or the disk that do not make an id or a manifest.

/// An id or manifest that cannot be what it claims to be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    /// An id that is not 32 bytes.
    #[error("an id must be 32 bytes, got {len}")]
    Id {
        /// The length received.
        len: usize,
    },
    /// A manifest that is inconsistent or over the limits.
    #[error("malformed manifest: {0}")]
    Manifest(String),
}
