//! The cloud library: the record of what each account holds — assets, their
//! versions, metadata, albums, Recently Deleted — and the per-account change feed
//! every device follows.
//!
//! Every change gets the account's next sequence number inside the transaction
//! that makes it (one writer, so numbers follow commit order and a reader never
//! skips one). The feed returns each row's latest state, not its history; purges
//! leave tombstones until compaction, after which older cursors must resync.
//! Commits are idempotent per request id; a new file is always a new asset (never
//! merged with another of the same bytes) at a path the library keeps unique, case and
//! Unicode folded; metadata and renames merge per field by hybrid logical clock; a stale
//! base version is a conflict that keeps both versions.
//!
//! ```
//! use keepsake_library::*;
//! use keepsake_store::{ChunkId, ManualClock, SeededEntropy};
//! use std::sync::Arc;
//!
//! let lib = Library::open(None, Arc::new(ManualClock::new(1_700_000_000_000)),
//!     Arc::new(SeededEntropy::new(1)), LibraryConfig::default())?;
//! let req = CommitRequest {
//!     request_id: "r1".into(), asset_id: None, base_version: None,
//!     manifest: ChunkId::of(b"m"), file_hash: ChunkId::of(b"f"), size: 1,
//!     kind: AssetKind::Photo, capture_time: None, width: None, height: None,
//!     original_name: "IMG_0001.JPG".into(), path: "2026/IMG_0001.JPG".into(),
//!     device: "phone".into(),
//! };
//! let first = lib.commit("alice", &req)?;
//! assert_eq!(lib.commit("alice", &req)?, first); // a retry changes nothing
//! let page = lib.list_changes("alice", 0, 100)?;
//! assert_eq!(page.changes.len(), 1);
//! # Ok::<(), LibraryError>(())
//! ```

mod accounts;
mod cloud;
mod derive;
mod error;
mod hlc;
mod library;
mod passwords;
mod schema;
pub mod tokens;

pub use accounts::{
    AccountInfo, ClientVersion, Device, DeviceReport, FailedSignIns, KdfCost, Plan, SignInFrom,
    default_plans,
};
pub use cloud::{
    ChunkStore, Cloud, CommitAsset, DamagedAsset, Enrolment, IssuedToken, LibraryScrub,
    Maintenance, ManifestUpload, Reservation,
};
pub use derive::{DeriveJob, DeriveReport, MAX_STILL_BYTES, MadeFile, Original, Outcome};
pub use error::LibraryError;
pub use hlc::Hlc;
pub use library::{
    Album, Asset, AssetKind, AssetState, Change, ChangePage, CommitRequest, Committed,
    ContentMatch, Derived, Library, LibraryConfig, LibraryEdit, MAX_EDITS_PER_CALL, MetadataField,
    VersionInfo,
};
pub use passwords::PasswordLimits;
