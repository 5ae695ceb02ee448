//! The port the device syncs through: what it needs from the cloud, nothing more.

use bytes::Bytes;
use keepsake_store::{ChunkId, Manifest, ManifestId};
use std::future::Future;

/// A failed cloud call, as the sync engine needs to see it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {message}")]
pub struct CloudError {
    /// Retrying can succeed without anyone acting (connection lost, shed load, deadline).
    pub transient: bool,
    /// The stable reason (`QUOTA_EXCEEDED`, `CLIENT_TOO_OLD`, `MISSING_CHUNKS`, …).
    pub reason: String,
    /// The sentence to show.
    pub message: String,
    /// For MISSING_CHUNKS: the chunks to send before committing again.
    pub missing_chunks: Vec<ChunkId>,
}

/// What the cloud knows of one whole-file hash.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContentLookup {
    /// A live or trashed asset with this content, and its version.
    pub asset: Option<(String, u32)>,
    /// Content with this hash was purged: the photo was deleted elsewhere.
    pub purged: bool,
}

/// Where an asset is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteState {
    /// In the library.
    Live,
    /// In Recently Deleted.
    Trashed,
    /// Gone for good.
    Purged,
}

/// An asset's latest state, as the feed reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteAsset {
    /// Its id.
    pub asset_id: String,
    /// Its current version.
    pub version: u32,
    /// The current version's manifest.
    pub manifest: ManifestId,
    /// The current version's whole-file hash.
    pub file_hash: ChunkId,
    /// Its size.
    pub size: u64,
    /// The original file name (data: sanitised before it becomes a path).
    pub original_name: String,
    /// Live, trashed or purged.
    pub state: RemoteState,
}

/// One page of the change feed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FeedPage {
    /// Assets changed after the cursor (albums are not mirrored into the folder).
    pub assets: Vec<RemoteAsset>,
    /// Where to continue.
    pub cursor: u64,
    /// More changes are waiting.
    pub more: bool,
}

/// A commit of uploaded content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAsset {
    /// Idempotency key: the same content from the same device always commits once.
    pub request_id: String,
    /// The manifest uploaded.
    pub manifest: ManifestId,
    /// The file's name.
    pub original_name: String,
    /// A video rather than a photo.
    pub video: bool,
    /// When it was taken, or the file's time.
    pub capture_time: Option<i64>,
    /// The reservation the bytes were sent under.
    pub reservation_id: String,
    /// For a local edit: the asset it is a new version of…
    pub asset_id: Option<String>,
    /// …and the version it was edited from.
    pub base_version: Option<u32>,
}

/// What a commit made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitReply {
    /// The asset.
    pub asset_id: String,
    /// Its version.
    pub version: u32,
    /// Identical content was already an asset.
    pub deduplicated: bool,
}

/// Everything the device asks of the cloud.
pub trait Cloud: Send {
    /// What the cloud knows of a whole-file hash.
    fn lookup(
        &mut self,
        file_hash: &ChunkId,
    ) -> impl Future<Output = Result<ContentLookup, CloudError>> + Send;
    /// Reserves quota for `bytes`; returns the reservation (the upload session).
    fn begin_upload(
        &mut self,
        bytes: u64,
        request_id: &str,
    ) -> impl Future<Output = Result<String, CloudError>> + Send;
    /// The chunks the account does not hold yet.
    fn find_missing(
        &mut self,
        session: &str,
        ids: &[ChunkId],
    ) -> impl Future<Output = Result<Vec<ChunkId>, CloudError>> + Send;
    /// Sends chunks; `acknowledged` gets every id the cloud made durable, even on failure.
    fn put_chunks(
        &mut self,
        session: &str,
        chunks: Vec<(ChunkId, Bytes)>,
        acknowledged: &mut Vec<ChunkId>,
    ) -> impl Future<Output = Result<(), CloudError>> + Send;
    /// Stores a manifest.
    fn put_manifest(
        &mut self,
        session: &str,
        manifest: &Manifest,
    ) -> impl Future<Output = Result<ManifestId, CloudError>> + Send;
    /// Commits uploaded content as a new asset (or finds it already is one).
    fn commit(
        &mut self,
        asset: NewAsset,
    ) -> impl Future<Output = Result<CommitReply, CloudError>> + Send;
    /// Assets changed after `cursor`.
    fn changes(&mut self, cursor: u64)
    -> impl Future<Output = Result<FeedPage, CloudError>> + Send;
    /// A manifest.
    fn manifest(
        &mut self,
        id: &ManifestId,
    ) -> impl Future<Output = Result<Manifest, CloudError>> + Send;
    /// Chunks, each verified against its id.
    fn chunks(
        &mut self,
        ids: &[ChunkId],
    ) -> impl Future<Output = Result<Vec<(ChunkId, Bytes)>, CloudError>> + Send;
    /// Moves an asset to Recently Deleted everywhere.
    fn trash(&mut self, asset_id: &str) -> impl Future<Output = Result<(), CloudError>> + Send;
}
