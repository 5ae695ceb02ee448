//! The port the device syncs through: what it needs from the cloud, nothing more.

use bytes::Bytes;
pub use keepsake_core::Hlc;
use keepsake_store::{ChunkId, Manifest, ManifestId};
use serde::{Deserialize, Serialize};
use std::future::Future;

/// A failed cloud call, as the sync engine needs to see it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {message}")]
pub struct CloudError {
    /// Retrying can succeed without anyone acting (connection lost, shed load, deadline).
    pub transient: bool,
    /// The stable reason (`QUOTA_EXCEEDED`, `CLIENT_TOO_OLD`, `MISSING_CHUNKS`, …).
    pub reason: Reason,
    /// The sentence to show.
    pub message: String,
}

/// Why the cloud refused or failed a call: each reason the engine acts on is a variant
/// (so a misspelt one is a compile error, not a branch never taken), any other travels by
/// its code. The codes are the API's `ErrorInfo.reason`s.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The plan is full (QUOTA_EXCEEDED).
    QuotaExceeded,
    /// The server's disk is full (STORAGE_FULL).
    StorageFull,
    /// The asset is in Recently Deleted or purged (ASSET_NOT_LIVE).
    AssetNotLive,
    /// No such asset, reservation or manifest for this account (NOT_FOUND).
    NotFound,
    /// The feed cursor predates a compaction (CURSOR_EXPIRED).
    CursorExpired,
    /// Chunks to send before the commit (MISSING_CHUNKS).
    MissingChunks,
    /// The client is older than the server accepts (CLIENT_TOO_OLD).
    ClientTooOld,
    /// The token is invalid or expired, or the device was removed (UNAUTHENTICATED).
    Unauthenticated,
    /// The server does not answer (UNAVAILABLE).
    Unavailable,
    /// The server has no such call (UNIMPLEMENTED).
    Unimplemented,
    /// The server's reply could not be read (BAD_REPLY).
    BadReply,
    /// A transfer made no progress and was abandoned (TRANSFER_STALLED).
    TransferStalled,
    /// The device was revoked or removed from its account (DEVICE_REVOKED).
    DeviceRevoked,
    /// Any other reason, by its code.
    Other(String),
}

impl Reason {
    const KNOWN: [(Reason, &'static str); 13] = [
        (Reason::QuotaExceeded, "QUOTA_EXCEEDED"),
        (Reason::StorageFull, "STORAGE_FULL"),
        (Reason::AssetNotLive, "ASSET_NOT_LIVE"),
        (Reason::NotFound, "NOT_FOUND"),
        (Reason::CursorExpired, "CURSOR_EXPIRED"),
        (Reason::MissingChunks, "MISSING_CHUNKS"),
        (Reason::ClientTooOld, "CLIENT_TOO_OLD"),
        (Reason::Unauthenticated, "UNAUTHENTICATED"),
        (Reason::Unavailable, "UNAVAILABLE"),
        (Reason::Unimplemented, "UNIMPLEMENTED"),
        (Reason::BadReply, "BAD_REPLY"),
        (Reason::TransferStalled, "TRANSFER_STALLED"),
        (Reason::DeviceRevoked, "DEVICE_REVOKED"),
    ];

    /// The reason with this code.
    pub fn parse(code: &str) -> Self {
        Self::KNOWN
            .iter()
            .find(|(_, known)| *known == code)
            .map_or_else(|| Self::Other(code.to_string()), |(r, _)| r.clone())
    }

    /// Its code, as the API spells it.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Other(code) => code,
            known => Self::KNOWN
                .iter()
                .find(|(r, _)| r == known)
                .map_or("", |(_, code)| code),
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<&str> for Reason {
    fn from(code: &str) -> Self {
        Self::parse(code)
    }
}

#[cfg(test)]
mod tests {
    use super::Reason;

    #[test]
    fn every_known_reason_round_trips_through_its_code() {
        for (reason, code) in Reason::KNOWN {
            assert_eq!(Reason::parse(code), reason);
            assert_eq!(reason.as_str(), code);
        }
        assert_eq!(
            Reason::parse("SOMETHING_NEW"),
            Reason::Other("SOMETHING_NEW".into())
        );
        assert_eq!(Reason::parse("SOMETHING_NEW").as_str(), "SOMETHING_NEW");
    }
}

/// What the cloud knows of one whole-file hash.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContentLookup {
    /// Live or trashed assets with this content: each its own file, perhaps elsewhere.
    pub assets: Vec<ContentHolder>,
    /// The paths of purged assets with this content (tombstones are per asset and path).
    pub purged_paths: Vec<String>,
}

/// An asset whose current version has the content looked up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentHolder {
    /// Its id.
    pub asset_id: String,
    /// Its current version.
    pub version: u32,
    /// Its path in the library.
    pub path: String,
    /// In Recently Deleted.
    pub trashed: bool,
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
    /// Its path in the library: untrusted, checked before the device writes there.
    pub path: String,
    /// Live, trashed or purged.
    pub state: RemoteState,
    /// Marked a favourite.
    pub favorite: bool,
    /// Hidden from the main views.
    pub hidden: bool,
    /// The newest clock among its metadata fields (merged into the device's clock).
    pub clock: Hlc,
    /// The server-made preview (or a video's poster) of the current version, once made.
    pub preview: Option<ManifestId>,
    /// The cloud lost part of this version's content: a device holding it sends it again.
    pub damaged: bool,
}

/// An album's latest state, as the feed reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteAlbum {
    /// Its id.
    pub album_id: String,
    /// Its name.
    pub name: String,
    /// Deleted (a tombstone).
    pub deleted: bool,
    /// Its member assets.
    pub members: Vec<String>,
    /// The newest clock of its name, deletion and memberships.
    pub clock: Hlc,
}

/// A change a person makes on a device, queued in its outbox until the cloud has it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "edit", rename_all = "snake_case")]
pub enum Edit {
    /// Marks or unmarks a favourite.
    Favorite {
        /// The asset.
        asset_id: String,
        /// Favourite or not.
        value: bool,
    },
    /// Hides or shows an asset.
    Hidden {
        /// The asset.
        asset_id: String,
        /// Hidden or not.
        value: bool,
    },
    /// Sets an asset's title (its caption; empty clears it).
    Title {
        /// The asset.
        asset_id: String,
        /// The title, at most 1,024 bytes.
        title: String,
    },
    /// Creates or renames an album.
    PutAlbum {
        /// The album, its id chosen by the device that creates it.
        album_id: String,
        /// Its name.
        name: String,
    },
    /// Deletes an album (its photos stay).
    DeleteAlbum {
        /// The album.
        album_id: String,
    },
    /// Adds an asset to an album, or takes it out.
    AlbumMember {
        /// The album.
        album_id: String,
        /// The asset.
        asset_id: String,
        /// In the album or not.
        present: bool,
    },
    /// Moves an asset to Recently Deleted everywhere.
    Trash {
        /// The asset.
        asset_id: String,
        /// Only this file, not its companions (a Live Photo's movie, a RAW): a file
        /// deleted from the folder. False: the photo as people see it.
        #[serde(default)]
        alone: bool,
    },
    /// Brings an asset back from Recently Deleted everywhere.
    Restore {
        /// The asset.
        asset_id: String,
    },
    /// Moves an asset to another path (renamed or moved between folders) everywhere.
    Rename {
        /// The asset.
        asset_id: String,
        /// Its new path in the library.
        path: String,
    },
}

impl Edit {
    /// The asset the edit is about, if any.
    pub fn asset(&self) -> Option<&str> {
        match self {
            Self::Favorite { asset_id, .. }
            | Self::Hidden { asset_id, .. }
            | Self::Title { asset_id, .. }
            | Self::AlbumMember { asset_id, .. }
            | Self::Trash { asset_id, .. }
            | Self::Restore { asset_id }
            | Self::Rename { asset_id, .. } => Some(asset_id),
            Self::PutAlbum { .. } | Self::DeleteAlbum { .. } => None,
        }
    }
}

/// One page of the change feed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FeedPage {
    /// Assets changed after the cursor.
    pub assets: Vec<RemoteAsset>,
    /// Albums changed after the cursor.
    pub albums: Vec<RemoteAlbum>,
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
    /// Where it is in the folder (a new asset's path; the library may number it).
    pub path: String,
    /// A video rather than a photo.
    pub video: bool,
    /// When it was taken, or the file's time.
    pub capture_time: Option<i64>,
    /// Width as shown, when the file says.
    pub width: Option<u32>,
    /// Height as shown, when the file says.
    pub height: Option<u32>,
    /// The reservation the bytes were sent under.
    pub reservation_id: String,
    /// For a local edit: the asset it is a new version of…
    pub asset_id: Option<String>,
    /// …and the version it was edited from.
    pub base_version: Option<u32>,
    /// The camera's maker and model, as the file records them (empty when it does not).
    pub camera: (String, String),
    /// Where it was taken, in units of 1e-7 degree (latitude, longitude).
    pub position_e7: Option<(i32, i32)>,
    /// EXIF orientation 1..=8; 0 when unknown.
    pub orientation: u8,
    /// A video's length.
    pub duration_ms: Option<u64>,
    /// Apple's content identifier (a Live Photo's halves share it); empty when none.
    pub content_identifier: String,
    /// The lens, as the file names it (empty when it does not).
    pub lens: String,
    /// Height above sea level in centimetres.
    pub altitude_cm: Option<i32>,
    /// The capture time's offset from UTC, in minutes (its time zone).
    pub utc_offset_minutes: Option<i16>,
    /// A movie's video codec (empty for stills).
    pub codec: String,
}

/// Degrees as 1e-7 degree units, the exact form positions travel and are kept in.
pub fn degrees_e7(degrees: f64) -> Option<i32> {
    let units = (degrees * 1e7).round();
    (units.is_finite() && units.abs() <= 1.8e9).then_some(units as i32)
}

/// What a commit made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitReply {
    /// The asset.
    pub asset_id: String,
    /// Its version.
    pub version: u32,
    /// The asset already had this content: no version was made.
    pub deduplicated: bool,
    /// The asset's path in the library (numbered where the one asked for was taken).
    pub path: String,
}

/// What a device tells the cloud's ledger about itself: enough for its owner, on another
/// device or the web, to see whether it syncs, why not, and what it still has to move.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LedgerReport {
    /// "syncing", "up to date", "paused" (a condition that passes by itself) or "blocked"
    /// (it needs someone).
    pub state: String,
    /// Why it does not sync, a reason code, if it does not.
    pub reason: Option<String>,
    /// That reason in words, and what fixes it.
    pub reason_message: Option<String>,
    /// What fixes it.
    pub reason_fix: Option<String>,
    /// Files in the folder not yet in the cloud, and their bytes.
    pub pending_uploads: u64,
    /// Bytes of those.
    pub pending_upload_bytes: u64,
    /// Originals waiting to download here, and their bytes.
    pub pending_downloads: u64,
    /// Bytes of those.
    pub pending_download_bytes: u64,
    /// Files uploaded and downloaded since the agent started.
    pub done_items: u64,
    /// Files the last pass left out (unreadable, or a name the library cannot keep).
    pub failed_items: u64,
    /// "wifi", "cellular", "wired", "offline" or "unknown"; "-metered" when paid by the byte.
    pub network: String,
    /// Battery charge, if it has a battery that can be read.
    pub battery_percent: Option<u8>,
    /// On a charger.
    pub charging: bool,
    /// Free bytes where the library folder lives, if known.
    pub free_bytes: Option<u64>,
}

/// Everything the device asks of the cloud.
pub trait Cloud: Send + 'static {
    /// Another connection to the same cloud as the same device, for calls in flight
    /// beside this one's (several files uploading at once). `None`: one call at a time.
    fn lane(&self) -> Option<Self>
    where
        Self: Sized,
    {
        None
    }
    /// What the cloud knows of each of these whole-file hashes, in order: one question for
    /// many files.
    fn lookups(
        &mut self,
        file_hashes: &[ChunkId],
    ) -> impl Future<Output = Result<Vec<ContentLookup>, CloudError>> + Send;
    /// Reserves quota for `bytes`; returns the reservation (the upload session).
    fn begin_upload(
        &mut self,
        bytes: u64,
        request_id: &str,
    ) -> impl Future<Output = Result<String, CloudError>> + Send;
    /// Releases a reservation this device no longer uses (best effort: an unreleased one
    /// lapses by itself and never counts against this device).
    fn end_upload(
        &mut self,
        reservation: &str,
    ) -> impl Future<Output = Result<(), CloudError>> + Send {
        let _ = reservation;
        async { Ok(()) }
    }
    /// Tells the cloud's device ledger where this device stands; best effort (the default
    /// tells nothing).
    fn report_state(
        &mut self,
        report: &LedgerReport,
    ) -> impl Future<Output = Result<(), CloudError>> + Send {
        let _ = report;
        async { Ok(()) }
    }
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
    /// Stores `manifest` — as splices of `base`, the version it replaces, where given — and
    /// commits it as `asset` (or finds it already is one). MISSING_CHUNKS comes back with
    /// the chunks to send before committing again.
    fn commit(
        &mut self,
        asset: NewAsset,
        manifest: &Manifest,
        base: Option<(&ManifestId, &Manifest)>,
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
    /// Applies edits (each stamped with the device's clock) in order, each answered on its
    /// own: `Ok(())` (applied, or a newer change won) or its refusal. The answers stop after
    /// the first transient failure; `Err` means the call failed before any answer.
    /// Idempotent: the same edit with the same stamp changes nothing the second time.
    fn edits(
        &mut self,
        edits: &[(Edit, Hlc)],
    ) -> impl Future<Output = Result<Vec<Result<(), CloudError>>, CloudError>> + Send;
    /// The rsync signature of a stretch `(offset, length)` (whole chunks) of a stored
    /// version, for a delta that would store `wanted` (a session and chunk ids): `None`
    /// when the account holds them all already (pinned to the session, as by
    /// [`Cloud::find_missing`]). A cloud that cannot make signatures says so with a
    /// permanent error, and the device sends chunks.
    fn span_signature(
        &mut self,
        base: &ManifestId,
        stretch: (u64, u64),
        wanted: (&str, &[ChunkId]),
    ) -> impl Future<Output = Result<Option<Vec<u8>>, CloudError>> + Send {
        let _ = (base, stretch, wanted);
        async { Err(CloudError::unsupported("span signatures")) }
    }
    /// Stores the chunks `delta` rebuilds from the stretch `span` (offset, length) of
    /// `base`; returns the ids acknowledged as durable.
    fn put_chunks_by_delta(
        &mut self,
        session: &str,
        base: &ManifestId,
        span: (u64, u64),
        chunks: &[(ChunkId, u32)],
        delta: Vec<u8>,
    ) -> impl Future<Output = Result<Vec<ChunkId>, CloudError>> + Send {
        let _ = (session, base, span, chunks, delta);
        async { Err(CloudError::unsupported("chunks sent as deltas")) }
    }
}

impl CloudError {
    /// What a cloud without an optional capability answers: permanent, so the caller
    /// falls back rather than retries.
    pub fn unsupported(what: &str) -> Self {
        Self {
            transient: false,
            reason: Reason::Unimplemented,
            message: format!("this cloud does not take {what}"),
        }
    }
}
