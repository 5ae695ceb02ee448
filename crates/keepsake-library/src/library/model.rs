//! What the library holds, as its callers see it: assets, versions, albums, changes.

use super::*;
use serde::{Deserialize, Serialize};

/// Limits and retention periods.
#[derive(Debug, Clone)]
pub struct LibraryConfig {
    /// How long an asset stays in Recently Deleted before it is purged.
    pub trash_retention_ms: i64,
    /// How long purge tombstones stay in the feed and in content lookups.
    pub tombstone_retention_ms: i64,
    /// How far ahead of the server a device clock may be.
    pub max_clock_ahead_ms: i64,
    /// Longest file name, title or album name.
    pub max_text_len: usize,
    /// Largest ListChanges page.
    pub max_page: usize,
    /// Password hashing cost.
    pub kdf: crate::KdfCost,
    /// The plans accounts can be on; the first is the default for new accounts.
    pub plans: Vec<crate::Plan>,
    /// Lifetime of an access token.
    pub access_token_ttl_ms: i64,
    /// Lease of an upload reservation (and its store session) between renewals.
    pub upload_ttl_ms: i64,
    /// Clients older than this are refused with CLIENT_TOO_OLD.
    pub min_client_version: crate::ClientVersion,
    /// A store reference taken for a commit that never happened is released after this.
    pub pending_ref_grace_ms: i64,
    /// How many password checks run at once and wait (each holds the KDF's memory).
    pub password_limits: crate::PasswordLimits,
}

impl Default for LibraryConfig {
    fn default() -> Self {
        Self {
            trash_retention_ms: 30 * 24 * 3600 * 1000,
            tombstone_retention_ms: 365 * 24 * 3600 * 1000,
            max_clock_ahead_ms: 5 * 60 * 1000,
            max_text_len: 1024,
            max_page: 1000,
            kdf: crate::KdfCost::default(),
            plans: crate::default_plans(),
            access_token_ttl_ms: 15 * 60 * 1000,
            upload_ttl_ms: 10 * 60 * 1000,
            min_client_version: crate::ClientVersion::default(),
            pending_ref_grace_ms: 3600 * 1000,
            password_limits: crate::PasswordLimits::default(),
        }
    }
}

/// Photo or video.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AssetKind {
    /// A still image.
    Photo,
    /// A video.
    Video,
}

impl AssetKind {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Self::Photo => "photo",
            Self::Video => "video",
        }
    }

    pub(super) fn parse(s: &str) -> Self {
        if s == "video" {
            Self::Video
        } else {
            Self::Photo
        }
    }
}

/// Where an asset is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AssetState {
    /// In the library.
    Live,
    /// In Recently Deleted since this moment.
    Trashed(UnixMillis),
    /// Gone for good since this moment (a tombstone in the feed).
    Purged(UnixMillis),
}

/// A commit of new content: a new asset, or a new version of an existing one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitRequest {
    /// Client-chosen, per account; a retry with the same request returns the first answer.
    pub request_id: String,
    /// `None` for a new asset; the asset for a new version.
    pub asset_id: Option<String>,
    /// The version this edit started from (stale = a conflict, both kept).
    pub base_version: Option<u32>,
    /// The content's manifest in the store.
    pub manifest: ManifestId,
    /// BLAKE3 of the whole file.
    pub file_hash: ChunkId,
    /// Its size.
    pub size: u64,
    /// Photo or video.
    pub kind: AssetKind,
    /// When it was taken, if known.
    pub capture_time: Option<UnixMillis>,
    /// Pixel width, if known.
    pub width: Option<u32>,
    /// Pixel height, if known.
    pub height: Option<u32>,
    /// The original file name: data only, never a path.
    pub original_name: String,
    /// Where the file is in the library folder (`trip/IMG_0001.JPG`), as the device has
    /// it; untrusted. Empty: `original_name`, at the top. A new asset whose path another
    /// live asset holds (case and Unicode normalization folded) is numbered.
    pub path: String,
    /// The device committing.
    pub device: String,
    /// What the file says of itself (camera, place, orientation, length).
    pub details: MediaDetails,
}

/// What a commit did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// The asset.
    pub asset_id: String,
    /// Its version now.
    pub version: u32,
    /// The feed sequence number of the change.
    pub seq: u64,
    /// The edit started from a stale base: both versions are kept, this one is current.
    pub conflict: bool,
    /// The asset already had this content as its current version: no version was made.
    /// A new asset is never merged with another of the same content.
    pub deduplicated: bool,
    /// The asset's path in the library: the one asked for, or numbered where it was taken.
    pub path: String,
}

/// An asset as the feed shows it: its latest state.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Asset {
    /// Its id.
    pub asset_id: String,
    /// Photo or video.
    pub kind: AssetKind,
    /// When it was taken.
    pub capture_time: Option<UnixMillis>,
    /// Pixel width.
    pub width: Option<u32>,
    /// Pixel height.
    pub height: Option<u32>,
    /// The original file name.
    pub original_name: String,
    /// Where it is in the library folder: folders and exact name.
    pub path: String,
    /// The current version.
    pub version: u32,
    /// The current version's manifest.
    pub manifest: ManifestId,
    /// The current version's whole-file hash.
    pub file_hash: ChunkId,
    /// The current version's size.
    pub size: u64,
    /// Favourite.
    pub favorite: bool,
    /// Hidden.
    pub hidden: bool,
    /// Title.
    pub title: String,
    /// Live, trashed or purged.
    pub state: AssetState,
    /// Sequence number of its latest change.
    pub seq: u64,
    /// The newest metadata clock among its fields: devices merge it into their own.
    pub clock: Hlc,
    /// Thumbnails, previews, posters made from the current version.
    pub derived: Vec<Derived>,
    /// Where making them stands: "queued", "done", "failed <why>", "none <why>", or empty
    /// for content committed before derivatives existed.
    pub derivation: String,
    /// A scrub found part of the current version's content corrupt: the cloud cannot serve
    /// it until a device that holds the original sends it again.
    pub damaged: bool,
    /// What the current version's file says of itself.
    pub details: MediaDetails,
    /// The asset this one is a companion of, and what it is to it; `None` for a photo or
    /// video of its own.
    pub companion_of: Option<(String, PairRole)>,
}

/// What a companion resource is to the asset it belongs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PairRole {
    /// A Live Photo's movie (the still is the asset people see).
    Live,
    /// A RAW beside its JPEG (the JPEG is shown, the RAW kept).
    Raw,
}

impl PairRole {
    /// As stored and sent.
    pub fn as_str(self) -> &'static str {
        match self {
            PairRole::Live => "live",
            PairRole::Raw => "raw",
        }
    }

    /// From its stored name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "live" => Some(PairRole::Live),
            "raw" => Some(PairRole::Raw),
            _ => None,
        }
    }
}

/// A derivative of an asset's current version, stored content-addressed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Derived {
    /// "thumbnail", "preview" or "poster".
    pub role: String,
    /// Its manifest in the store (owned by the asset's account).
    pub manifest: ManifestId,
    /// Width.
    pub width: u32,
    /// Height.
    pub height: u32,
    /// Size in bytes.
    pub size: u64,
}

/// What a photo or video file says of itself, kept with each version (as JSON, so a new
/// field needs no migration).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default)]
pub struct MediaDetails {
    /// Camera maker, empty when not recorded.
    pub camera_make: String,
    /// Camera model, empty when not recorded.
    pub camera_model: String,
    /// Where it was taken: latitude and longitude in units of 1e-7 degree (WGS 84), exact
    /// and comparable, as GPS receivers report them.
    pub position_e7: Option<(i32, i32)>,
    /// EXIF orientation 1..=8; 0 when unknown.
    pub orientation: u8,
    /// A video's length.
    pub duration_ms: Option<u64>,
    /// Apple's content identifier: a Live Photo's still and movie share it; empty when none.
    pub content_identifier: String,
    /// The lens; empty when not recorded.
    pub lens: String,
    /// Height above sea level in centimetres, when recorded.
    pub altitude_cm: Option<i32>,
    /// The capture time's offset from UTC in minutes (its time zone), when recorded.
    pub utc_offset_minutes: Option<i16>,
    /// A movie's video codec; empty for stills.
    pub codec: String,
}

impl MediaDetails {
    /// Nothing recorded.
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }

    /// Refuses what no file says: text too long or with control characters, a place off
    /// the globe, an orientation outside 1..=8.
    pub fn check(&self) -> Result<(), String> {
        for (what, text) in [
            ("camera_make", &self.camera_make),
            ("camera_model", &self.camera_model),
            ("content_identifier", &self.content_identifier),
            ("lens", &self.lens),
            ("codec", &self.codec),
        ] {
            if text.len() > 128 || text.chars().any(char::is_control) {
                return Err(format!("{what}: at most 128 bytes, no control characters"));
            }
        }
        if let Some((lat, lon)) = self.position_e7
            && (lat.unsigned_abs() > 900_000_000 || lon.unsigned_abs() > 1_800_000_000)
        {
            return Err("position: latitude within ±90°, longitude within ±180°".into());
        }
        if self
            .utc_offset_minutes
            .is_some_and(|m| m.unsigned_abs() > 14 * 60)
        {
            return Err("utc_offset_minutes: within ±14 hours".into());
        }
        if self.orientation > 8 {
            return Err("orientation: 1..=8, or 0 when unknown".into());
        }
        Ok(())
    }

    /// The camera as search matches it: "make model", lower case; `None` when unknown.
    pub(crate) fn camera_key(&self) -> Option<String> {
        let both = format!("{} {}", self.camera_make.trim(), self.camera_model.trim());
        let both = both.trim();
        (!both.is_empty()).then(|| both.to_lowercase())
    }

    /// As stored: `None` when nothing is recorded.
    pub(crate) fn stored(&self) -> Option<String> {
        (!self.is_empty()).then(|| serde_json::to_string(self).expect("plain fields"))
    }

    /// From the stored column (nothing, or what an older build could not read, is empty).
    pub(crate) fn from_stored(text: Option<String>) -> Self {
        text.and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default()
    }
}

/// One version of an asset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionInfo {
    /// Its number (1 = the original).
    pub version: u32,
    /// Its manifest.
    pub manifest: ManifestId,
    /// Whole-file hash.
    pub file_hash: ChunkId,
    /// Size.
    pub size: u64,
    /// The version it was edited from.
    pub base_version: Option<u32>,
    /// The device that made it.
    pub device: String,
    /// When it was committed.
    pub created_at: UnixMillis,
    /// The version that was current when this one arrived from a stale base.
    pub conflicts_with: Option<u32>,
    /// What its file says of itself.
    pub details: MediaDetails,
}

/// An album as the feed shows it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Album {
    /// Its id (chosen by the device that made it).
    pub album_id: String,
    /// Its name.
    pub name: String,
    /// Deleted (a tombstone).
    pub deleted: bool,
    /// Member asset ids, sorted.
    pub members: Vec<String>,
    /// Sequence number of its latest change.
    pub seq: u64,
    /// The newest clock of its name, deletion and memberships: devices merge it into their own.
    pub clock: Hlc,
}

/// One row of the change feed.
// Nearly every row of a feed page is an asset: boxing them would cost an allocation each
// to save room only in the rare album row.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Change {
    /// An asset's latest state.
    Asset(Asset),
    /// An album's latest state.
    Album(Album),
}

impl Change {
    /// Its sequence number.
    pub fn seq(&self) -> u64 {
        match self {
            Self::Asset(a) => a.seq,
            Self::Album(a) => a.seq,
        }
    }
}

/// One page of the change feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangePage {
    /// Changes after the cursor, in sequence order.
    pub changes: Vec<Change>,
    /// The opaque cursor to ask from next.
    pub cursor: u64,
    /// More changes follow.
    pub more: bool,
}

/// What a content lookup found for one whole-file hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentMatch {
    /// The hash asked about.
    pub file_hash: ChunkId,
    /// Live or trashed assets whose current version has this content.
    pub assets: Vec<Asset>,
    /// When an asset with this content was last purged, if one was (a tombstone).
    pub purged_at: Option<UnixMillis>,
    /// The paths of purged assets with this content: a tombstone is per asset and path, so
    /// only a file at one of these (a device that lost its journal) is the purged photo.
    pub purged_paths: Vec<String>,
}

/// A metadata field that merges last-writer-wins by HLC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetadataField {
    /// Favourite.
    Favorite(bool),
    /// Hidden.
    Hidden(bool),
    /// Title.
    Title(String),
    /// When it was taken, as a person corrected it (the file is not touched).
    CaptureTime(UnixMillis),
    /// Where it was taken (1e-7 degrees), as a person set it; `None` clears it.
    Place(Option<(i32, i32)>),
}

/// The most edits one [`Library::apply_edits`] call takes.
pub const MAX_EDITS_PER_CALL: usize = 1000;

/// One edit a person made on a device, as [`Library::apply_edits`] takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LibraryEdit {
    /// A metadata field, merged by clock.
    Metadata {
        /// The asset.
        asset_id: String,
        /// The field and its new value.
        field: MetadataField,
        /// When it was made.
        clock: Hlc,
    },
    /// Creates or renames an album.
    PutAlbum {
        /// The album.
        album_id: String,
        /// Its name.
        name: String,
        /// When it was made.
        clock: Hlc,
    },
    /// Deletes an album.
    DeleteAlbum {
        /// The album.
        album_id: String,
        /// When it was made.
        clock: Hlc,
    },
    /// Adds an asset to an album or takes it out.
    Member {
        /// The album.
        album_id: String,
        /// The asset.
        asset_id: String,
        /// In the album.
        present: bool,
        /// When it was made.
        clock: Hlc,
    },
    /// Moves an asset to Recently Deleted: with its companions (a Live Photo's movie, a
    /// RAW), unless `alone` (a file deleted from a folder takes only that file).
    Trash {
        /// The asset.
        asset_id: String,
        /// Only this resource.
        alone: bool,
    },
    /// Brings an asset back from Recently Deleted.
    Restore {
        /// The asset.
        asset_id: String,
    },
    /// Moves an asset to another path (a rename, a move between folders), merged by clock.
    Rename {
        /// The asset.
        asset_id: String,
        /// Its new path (untrusted: checked, and numbered where another asset holds it).
        path: String,
        /// When it was made.
        clock: Hlc,
    },
}
