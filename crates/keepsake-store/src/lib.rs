//! The content-addressed asset store: chunks and manifests named by their BLAKE3
//! hash, packed into immutable pack files, indexed in SQLite, owned per account.
//!
//! Chunks arrive in batches; each batch becomes one pack written with one fsync,
//! then one index transaction, and only then is it acknowledged. Physical storage
//! is deduplicated across accounts, but an account only *owns* (and can read or
//! learn about) a chunk after uploading its bytes. Chunks held by a live upload
//! session or by a referenced manifest are never garbage collected.
//!
//! The store does blocking I/O; async callers run it through [`offload`].
//!
//! ```
//! use keepsake_store::{ChunkId, IndexAt, Store, StoreParts, StoreConfig, MemoryBackend, ManualClock, SeededEntropy};
//! use std::sync::Arc;
//!
//! let store = Store::open(StoreParts {
//!     backend: Arc::new(MemoryBackend::new()),
//!     index: IndexAt::Memory,
//!     clock: Arc::new(ManualClock::new(1_700_000_000_000)),
//!     entropy: Arc::new(SeededEntropy::new(1)),
//!     config: StoreConfig::default(),
//! })?;
//! let session = store.begin_session("alice", 5, 60_000, None)?;
//! let id = ChunkId::of(b"hello");
//! store.put_chunks("alice", &session.id, &[(id, bytes::Bytes::from_static(b"hello"))])?;
//! assert_eq!(store.get_chunk("alice", &id)?, &b"hello"[..]);
//! assert!(store.get_chunk("bob", &id).is_err()); // bob never uploaded it
//! # Ok::<(), keepsake_store::StoreError>(())
//! ```

mod backend;
mod error;
pub mod pack;
#[cfg(feature = "s3")]
mod s3;
mod schema;
mod store;

#[cfg(feature = "s3")]
pub use s3::{S3Backend, S3Location};

pub use backend::{
    Backend, BackendError, CappedBackend, LocalFsBackend, MemoryBackend, ObjectInfo,
    release_written_pages,
};
// The shared vocabulary, re-exported so the store's users need one import.
pub use error::StoreError;
pub use keepsake_core::{
    ChunkId, Clock, Entropy, Manifest, ManifestEntry, ManifestId, ManualClock, OsEntropy,
    SeededEntropy, Splice, SystemClock, UnixMillis, offload, on_one_thread, random_hex,
};
pub use schema::durable_sqlite;
pub use store::{
    GcReport, IndexAt, PutOutcome, ReadCheck, Recheck, ScrubReport, Session, Store, StoreConfig,
    StoreParts, Usage,
};
