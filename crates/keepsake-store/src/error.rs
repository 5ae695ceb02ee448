//! The store's errors, each with a stable machine-readable reason.

use crate::ChunkId;
use crate::backend::BackendError;

/// Everything a store operation can refuse or fail with.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The bytes sent do not hash to the id they were sent under.
    #[error("chunk {claimed} does not match its bytes (they hash to {actual})")]
    HashMismatch {
        /// The id the client sent.
        claimed: ChunkId,
        /// The BLAKE3 of the bytes actually received.
        actual: ChunkId,
    },
    /// A chunk longer than the store accepts.
    #[error("chunk of {len} bytes exceeds the limit of {limit} bytes")]
    ChunkTooLarge {
        /// Its length.
        len: u64,
        /// The limit.
        limit: u64,
    },
    /// An empty chunk: never produced by chunking, so refused.
    #[error("empty chunks are not stored")]
    EmptyChunk,
    /// More ids in one call than the store accepts.
    #[error("{count} ids in one call; at most {limit} are allowed")]
    TooManyIds {
        /// How many were sent.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// An id that is not 32 bytes.
    #[error("an id must be 32 bytes, got {len}")]
    MalformedId {
        /// The length received.
        len: usize,
    },
    /// A manifest that is inconsistent or over the limits.
    #[error("malformed manifest: {0}")]
    MalformedManifest(String),
    /// A manifest naming chunks the account does not own (or with the wrong lengths).
    #[error("{} chunk(s) of the manifest are not stored for this account", .0.len())]
    MissingChunks(Vec<ChunkId>),
    /// No such chunk or manifest for this account (it may exist for nobody, or for someone else).
    #[error("{kind} {id} not found")]
    NotFound {
        /// "chunk" or "manifest".
        kind: &'static str,
        /// The id asked for.
        id: ChunkId,
    },
    /// No such session for this account.
    #[error("upload session {0:?} not found")]
    SessionNotFound(String),
    /// The session's lease ran out or it was ended.
    #[error("upload session {0:?} has expired or ended; begin a new one")]
    SessionExpired(String),
    /// A request id reused for a different request.
    #[error("request id {0:?} was already used for a different request")]
    RequestIdReused(String),
    /// Any other invalid argument, said in words.
    #[error("{0}")]
    InvalidArgument(String),
    /// Stored bytes no longer match their id; they are never served.
    #[error("stored chunk {0} is corrupt")]
    Corrupt(ChunkId),
    /// The disk (or configured capacity) is full; nothing was written.
    #[error("the store's disk is full; free space or raise the capacity")]
    StorageFull,
    /// The object storage below failed.
    #[error("object storage failed: {0}")]
    Backend(BackendError),
    /// The SQLite index failed.
    #[error("index failed: {0}")]
    Index(keepsake_sql::SqlError),
}

impl From<keepsake_sql::SqlError> for StoreError {
    fn from(e: keepsake_sql::SqlError) -> Self {
        // A database out of disk is the server's storage full: devices wait it out as such.
        if e.is_full() {
            Self::StorageFull
        } else {
            Self::Index(e)
        }
    }
}

impl From<BackendError> for StoreError {
    fn from(e: BackendError) -> Self {
        match e {
            BackendError::Full => Self::StorageFull,
            other => Self::Backend(other),
        }
    }
}

impl StoreError {
    /// The stable UPPER_SNAKE reason a client can act on without parsing prose.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::HashMismatch { .. } => "HASH_MISMATCH",
            Self::ChunkTooLarge { .. } => "CHUNK_TOO_LARGE",
            Self::EmptyChunk => "EMPTY_CHUNK",
            Self::TooManyIds { .. } => "TOO_MANY_IDS",
            Self::MalformedId { .. } => "MALFORMED_ID",
            Self::MalformedManifest(_) => "MALFORMED_MANIFEST",
            Self::MissingChunks(_) => "MISSING_CHUNKS",
            Self::NotFound { .. } => "NOT_FOUND",
            Self::SessionNotFound(_) => "SESSION_NOT_FOUND",
            Self::SessionExpired(_) => "SESSION_EXPIRED",
            Self::RequestIdReused(_) => "REQUEST_ID_REUSED",
            Self::InvalidArgument(_) => "INVALID_ARGUMENT",
            Self::Corrupt(_) => "CHUNK_CORRUPT",
            Self::StorageFull => "STORAGE_FULL",
            Self::Backend(_) => "STORAGE_IO",
            Self::Index(_) => "INDEX_IO",
        }
    }
}

impl From<keepsake_core::Malformed> for StoreError {
    fn from(err: keepsake_core::Malformed) -> Self {
        match err {
            keepsake_core::Malformed::Id { len } => Self::MalformedId { len },
            keepsake_core::Malformed::Manifest(why) => Self::MalformedManifest(why),
        }
    }
}
