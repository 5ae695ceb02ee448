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
//!     device: "phone".into(), details: MediaDetails::default(),
//! };
//! let first = lib.commit("alice", &req)?;
//! assert_eq!(lib.commit("alice", &req)?, first); // a retry changes nothing
//! let page = lib.list_changes("alice", 0, 100)?;
//! assert_eq!(page.changes.len(), 1);
//! # Ok::<(), LibraryError>(())
//! ```
//!
//! # In detail
//!
//! the cloud. `Library`: accounts (Argon2id passwords checked through `passwords::PasswordGate`
//! — a few reused buffers, a short queue — and throttled per account and per address in
//! `sign_in_failures`, the owner shown the failures), plans, devices (random tokens stored as
//! BLAKE3 digests, revocable) and their ledger; assets and versions (asset ids begin with the
//! commit time, so a feed page, walked by sequence number, reads neighbouring rows of every
//! table keyed by asset; idempotent commits by request id and fingerprint; a file is an asset,
//! never merged with another of the same bytes (dedup is the store's, per chunk), at a path —
//! folders and exact name — that the library decides: a path another live asset holds on the
//! key `keepsake_path::fold` gives (case and Unicode normalization) is numbered `stem (2).ext`
//! inside the commit, rename (`Rename` edits, last writer by clock) or restore transaction;
//! `duplicates` lists live assets of identical content for a person to decide; stale-base
//! conflicts keep both versions; a new version's capture time and size are its own), per-field
//! LWW metadata by hybrid logical clock with a clock-skew bound, albums with per-member clocks,
//! Recently Deleted / restore / purge / expiry with tombstones per asset and path
//! (`purged_files`: a new copy of purged bytes is a new photo), `apply_edits` (a device's
//! queued edits in one transaction, each in a savepoint and answered on its own — the same
//! answers and feed as one call each, by property test), and the per-account change feed (one
//! sequence number per change in commit order, opaque cursors carrying the compaction epoch,
//! CURSOR_EXPIRED). `tokens`: Ed25519-signed access tokens naming their key id, `TokenVerifier`
//! for any service. `Cloud`: the library joined to the store through the `ChunkStore` port
//! (implemented by `Store`): sign-in, enrolment, refresh, key rotation, `BeginUpload`
//! reservations (quota checked before a byte is sent, a store session per reservation; each
//! remembers its device, whose own reservations never count against it; a retried request id
//! whose lease lapsed is renewed; `EndUpload` releases one at once — the reservation row alone
//! makes a request id idempotent, the store session takes none), `commit_asset` (reference in
//! the store first, then the commit), purges and account deletion released through the
//! `ref_outbox`, `maintain` (trash expiry, reservations, abandoned references, compaction, old
//! keys). `derive`: the derivative queue — a job per committed version written in the commit's
//! transaction; `run_derivations` hands the maker passed in an `Original`: a still's verified
//! bytes (stills over 256 MiB get none), or for a video only a writer that streams its verified
//! chunks (`ChunkStore::copy_file`) to a file the tool reads; it then stores what it made
//! content-addressed under its own holder (`derived:ASSET:VERSION:ROLE`), lists it on the asset
//! and re-announces the asset in the feed; unreadable → `failed <why>`, nothing possible →
//! `none <why>`, passing failures retried with doubling delays; purges release derivatives with
//! the originals

mod accounts;
mod cloud;
mod derive;
mod error;
mod library;
mod passwords;
mod schema;
pub mod tokens;

pub use accounts::{
    AccountInfo, ClientVersion, Device, DeviceReport, FailedSignIns, Integrity, KdfCost, Plan,
    SILENT_AFTER_MS, SignInFrom, WEB_PLATFORM, default_plans,
};
pub use cloud::{
    ChunkStore, Cloud, CommitAsset, DamagedAsset, Enrolment, IssuedToken, LibraryScrub,
    Maintenance, ManifestUpload, PREVIEW_PIECE_BYTES, Reservation, copy_file_with, store_file_with,
};
pub use derive::{DeriveJob, DeriveReport, MAX_STILL_BYTES, MadeFile, Original, Outcome};
pub use error::LibraryError;
pub use keepsake_core::Hlc;
pub use library::{
    Album, AlbumSummary, Asset, AssetKind, AssetState, Change, ChangePage, CommitRequest,
    Committed, ContentMatch, Derived, FEED_CHANNEL, Folder, Library, LibraryConfig, LibraryEdit,
    MAX_EDITS_PER_CALL, MAX_SEARCH_PAGE, MediaDetails, MetadataField, SearchPage, SearchQuery,
    VersionInfo,
};
pub use passwords::PasswordLimits;
