//! The library: what each account holds, changed only through sequenced commits.

use crate::{LibraryError, schema};
use keepsake_core::Hlc;
use keepsake_store::{ChunkId, Clock, Entropy, ManifestId, UnixMillis, random_hex};
use rusqlite::{Connection, OptionalExtension, Transaction, params};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

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
    fn as_str(self) -> &'static str {
        match self {
            Self::Photo => "photo",
            Self::Video => "video",
        }
    }

    fn parse(s: &str) -> Self {
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
}

impl CommitRequest {
    /// A hash of every field but the name and path, to tell a retry from a different
    /// request under the same id. A file renamed between an attempt whose answer was lost
    /// and its retry is the same request: the retry gets the first answer (and the device
    /// sends the rename), never REQUEST_ID_REUSED on every pass.
    fn fingerprint(&self) -> [u8; 32] {
        let mut h = blake3::Hasher::new();
        let mut field = |bytes: &[u8]| {
            h.update(&(bytes.len() as u64).to_le_bytes());
            h.update(bytes);
        };
        field(self.request_id.as_bytes());
        field(self.asset_id.as_deref().unwrap_or("\u{0}none").as_bytes());
        field(&self.base_version.map_or(-1, i64::from).to_le_bytes());
        field(self.manifest.as_bytes());
        field(self.file_hash.as_bytes());
        field(&self.size.to_le_bytes());
        field(self.kind.as_str().as_bytes());
        field(&self.capture_time.unwrap_or(i64::MIN).to_le_bytes());
        field(&self.width.map_or(-1, i64::from).to_le_bytes());
        field(&self.height.map_or(-1, i64::from).to_le_bytes());
        field(self.device.as_bytes());
        *h.finalize().as_bytes()
    }
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
}

/// Cursors are opaque: the compaction epoch they were issued in, then the sequence number.
const CURSOR_SEQ_BITS: u32 = 48;
const CURSOR_SEQ_MASK: u64 = (1 << CURSOR_SEQ_BITS) - 1;

/// The cloud library.
pub struct Library {
    pub(crate) db: Mutex<Connection>,
    pub(crate) passwords: crate::passwords::PasswordGate,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) entropy: Arc<dyn Entropy>,
    pub(crate) config: LibraryConfig,
}

const ASSET_COLUMNS: &str =
    "a.asset_id, a.kind, a.capture_time, a.width, a.height, a.original_name,
    a.current_version, v.manifest, v.file_hash, v.size, a.favorite, a.hidden, a.title, a.state,
    a.state_at, a.seq, MAX(a.favorite_clock, a.hidden_clock, a.title_clock),
    (SELECT group_concat(d.role || ' ' || hex(d.manifest) || ' ' || d.width || ' ' || d.height
                         || ' ' || d.bytes, ';')
       FROM derivatives d WHERE d.account = a.account AND d.asset_id = a.asset_id
        AND d.version = a.current_version),
    (SELECT j.state || ' ' || coalesce(j.last_error, '') FROM derive_jobs j
      WHERE j.account = a.account AND j.asset_id = a.asset_id AND j.version = a.current_version),
    a.damaged, coalesce(a.path, a.original_name)";

/// A new asset's id: 48 bits of commit time, then 80 random bits, in hex (32 digits).
///
/// A feed page walks assets by sequence number and looks each up in versions, derivatives
/// and derive jobs by id. With wholly random ids those lookups land all over the index, and a
/// fresh device listing 100,000 assets read most of the index back one page at a time; ids
/// that begin with the time put assets committed together next to each other everywhere.
fn new_asset_id(now: UnixMillis, entropy: &dyn Entropy) -> String {
    let millis = (now.max(0) as u64) & 0xffff_ffff_ffff;
    format!("{millis:012x}{}", random_hex(entropy, 10))
}

/// `role hexmanifest width height bytes;…` as the asset query spells it.
fn derived_from_column(text: Option<String>) -> Vec<Derived> {
    text.unwrap_or_default()
        .split(';')
        .filter_map(|one| {
            let mut parts = one.split(' ');
            let role = parts.next()?.to_string();
            let manifest = ChunkId::from_slice(&hex::decode(parts.next()?).ok()?).ok()?;
            Some(Derived {
                role,
                manifest,
                width: parts.next()?.parse().ok()?,
                height: parts.next()?.parse().ok()?,
                size: parts.next()?.parse().ok()?,
            })
        })
        .collect()
}

fn read_id(bytes: Vec<u8>) -> rusqlite::Result<ChunkId> {
    ChunkId::from_slice(&bytes).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Blob, Box::new(e))
    })
}

fn asset_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Asset> {
    let state: String = r.get(13)?;
    let at: Option<i64> = r.get(14)?;
    Ok(Asset {
        asset_id: r.get(0)?,
        kind: AssetKind::parse(&r.get::<_, String>(1)?),
        capture_time: r.get(2)?,
        width: r.get(3)?,
        height: r.get(4)?,
        original_name: r.get(5)?,
        version: r.get(6)?,
        manifest: read_id(r.get(7)?)?,
        file_hash: read_id(r.get(8)?)?,
        size: r.get::<_, i64>(9)? as u64,
        favorite: r.get(10)?,
        hidden: r.get(11)?,
        title: r.get(12)?,
        state: match state.as_str() {
            "trashed" => AssetState::Trashed(at.unwrap_or(0)),
            "purged" => AssetState::Purged(at.unwrap_or(0)),
            _ => AssetState::Live,
        },
        seq: r.get::<_, i64>(15)? as u64,
        clock: Hlc::decode(&r.get::<_, String>(16)?).unwrap_or_else(Hlc::zero),
        derived: derived_from_column(r.get(17)?),
        derivation: r
            .get::<_, Option<String>>(18)?
            .map(|s| s.trim_end().to_string())
            .unwrap_or_default(),
        damaged: r.get(19)?,
        path: r.get(20)?,
    })
}

/// Which damaged asset's current version has a manifest. Every commit asks, so it starts
/// from the (nearly always empty) partial index of damaged assets: left to itself, SQLite
/// walked every version of the account, and commits slowed as the library grew.
const DAMAGED_WITH_SQL: &str = "SELECT a.asset_id, a.current_version
    FROM assets a INDEXED BY assets_damaged CROSS JOIN versions v
      ON v.account = a.account AND v.asset_id = a.asset_id AND v.version = a.current_version
    WHERE a.account = ?1 AND v.manifest = ?2 AND a.damaged = 1 LIMIT 1";

/// The live or trashed assets whose current content has a hash. `+a.seq` keeps SQLite
/// from walking the whole feed in seq order to satisfy ORDER BY instead of looking the
/// hash up: that plan made every lookup O(library size).
const SAME_CONTENT_SQL: &str = "SELECT {ASSET_COLUMNS}
     FROM versions v INDEXED BY versions_by_hash CROSS JOIN assets a
       ON a.account = v.account AND a.asset_id = v.asset_id AND a.current_version = v.version
     WHERE v.account = ?1 AND v.file_hash = ?2 AND a.state != 'purged' ORDER BY +a.seq";

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
    /// Moves an asset to Recently Deleted.
    Trash {
        /// The asset.
        asset_id: String,
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

/// Hands out the account's next sequence number; callers hold the one write lock,
/// so numbers are assigned in commit order and a reader never skips one.
fn next_seq(tx: &Connection, account: &str) -> Result<u64, LibraryError> {
    tx.execute(
        "INSERT INTO feed (account, seq) VALUES (?1, 0) ON CONFLICT (account) DO NOTHING",
        [account],
    )?;
    let seq: i64 = tx.query_row(
        "UPDATE feed SET seq = seq + 1 WHERE account = ?1 RETURNING seq",
        [account],
        |r| r.get(0),
    )?;
    Ok(seq as u64)
}

impl Library {
    /// Opens the library index (`None` keeps it in memory, for tests).
    pub fn open(
        index_path: Option<PathBuf>,
        clock: Arc<dyn Clock>,
        entropy: Arc<dyn Entropy>,
        config: LibraryConfig,
    ) -> Result<Self, LibraryError> {
        let mut conn = match index_path {
            Some(path) => Connection::open(path)?,
            None => Connection::open_in_memory()?,
        };
        schema::prepare(&mut conn)?;
        Ok(Self {
            db: Mutex::new(conn),
            passwords: crate::passwords::PasswordGate::new(config.kdf, config.password_limits),
            clock,
            entropy,
            config,
        })
    }

    pub(crate) fn db(&self) -> MutexGuard<'_, Connection> {
        self.db.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` in one transaction of its own, committed if it succeeds.
    fn write<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, LibraryError>,
    ) -> Result<T, LibraryError> {
        let mut db = self.db();
        let tx = db.transaction()?;
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    }

    /// Applies a device's edits in order in one transaction — one durable write for all
    /// of them instead of one each. Each is applied as its own call would apply it and
    /// answered on its own (`true`: it changed something); one refused leaves no trace and
    /// stops none after it. A failure of the index itself undoes them all.
    pub fn apply_edits(
        &self,
        account: &str,
        edits: &[LibraryEdit],
    ) -> Result<Vec<Result<bool, LibraryError>>, LibraryError> {
        if edits.len() > MAX_EDITS_PER_CALL {
            return Err(LibraryError::InvalidArgument(format!(
                "{} edits in one call; at most {MAX_EDITS_PER_CALL}",
                edits.len()
            )));
        }
        let mut db = self.db();
        let mut tx = db.transaction()?;
        let mut answers = Vec::with_capacity(edits.len());
        for edit in edits {
            let savepoint = tx.savepoint()?;
            match self.apply_edit_in(&savepoint, account, edit) {
                Ok(applied) => {
                    savepoint.commit()?;
                    answers.push(Ok(applied));
                }
                Err(e @ LibraryError::Index(_)) => return Err(e),
                // Dropping the savepoint rolls back whatever the refused edit wrote.
                Err(refused) => answers.push(Err(refused)),
            }
        }
        tx.commit()?;
        Ok(answers)
    }

    fn apply_edit_in(
        &self,
        tx: &Connection,
        account: &str,
        edit: &LibraryEdit,
    ) -> Result<bool, LibraryError> {
        match edit {
            LibraryEdit::Metadata {
                asset_id,
                field,
                clock,
            } => self.set_metadata_in(tx, account, asset_id, field, clock),
            LibraryEdit::PutAlbum {
                album_id,
                name,
                clock,
            } => self.put_album_in(tx, account, album_id, name, clock),
            LibraryEdit::DeleteAlbum { album_id, clock } => {
                self.delete_album_in(tx, account, album_id, clock)
            }
            LibraryEdit::Member {
                album_id,
                asset_id,
                present,
                clock,
            } => self.set_member_in(tx, account, album_id, asset_id, *present, clock),
            LibraryEdit::Trash { asset_id } => {
                self.set_state_in(tx, account, asset_id, "trashed", &["live"])
            }
            LibraryEdit::Restore { asset_id } => {
                self.set_state_in(tx, account, asset_id, "live", &["trashed"])
            }
            LibraryEdit::Rename {
                asset_id,
                path,
                clock,
            } => self.rename_in(tx, account, asset_id, path, clock),
        }
    }

    pub(crate) fn check_text(&self, what: &str, text: &str) -> Result<(), LibraryError> {
        // Bidirectional overrides too: an album or device named `\u{202E}gpj.exe` shows as
        // `exe.jpg` wherever it is listed.
        if text.len() > self.config.max_text_len
            || text
                .chars()
                .any(|c| c.is_control() || keepsake_path::is_bidi_control(c))
        {
            return Err(LibraryError::InvalidArgument(format!(
                "{what} must be at most {} bytes without control or direction-override characters",
                self.config.max_text_len
            )));
        }
        Ok(())
    }

    fn check_clock(&self, hlc: &Hlc) -> Result<(), LibraryError> {
        let ahead = hlc.wall_ms - self.clock.now_ms();
        if ahead > self.config.max_clock_ahead_ms {
            return Err(LibraryError::ClockSkew { ahead_ms: ahead });
        }
        Ok(())
    }

    /// Records new content as a new asset or a new version, once per request id.
    pub fn commit(&self, account: &str, req: &CommitRequest) -> Result<Committed, LibraryError> {
        self.commit_with(account, req, None, None)
    }

    /// The first answer to `req`'s request id, if it was already committed; a reused id
    /// with a different request is refused.
    pub fn prior_commit(
        &self,
        account: &str,
        req: &CommitRequest,
    ) -> Result<Option<Committed>, LibraryError> {
        prior_commit(&self.db(), account, req)
    }

    /// Like [`Library::commit`], for content the store keeps under `holder` (its
    /// pending outbox row is settled in the same transaction) and paid for from
    /// `reservation`.
    pub(crate) fn commit_with(
        &self,
        account: &str,
        req: &CommitRequest,
        holder: Option<&str>,
        reservation: Option<&str>,
    ) -> Result<Committed, LibraryError> {
        if req.request_id.is_empty() || req.request_id.len() > 128 {
            return Err(LibraryError::InvalidArgument(
                "request_id must be 1..=128 bytes".into(),
            ));
        }
        self.check_text("original_name", &req.original_name)?;
        self.check_text("device", &req.device)?;
        if !req.path.is_empty() {
            keepsake_path::check(&req.path)
                .map_err(|e| LibraryError::InvalidArgument(e.to_string()))?;
        }
        let fingerprint = req.fingerprint();
        let now = self.clock.now_ms();
        let mut db = self.db();
        let tx = db.transaction()?;
        if let Some(answer) = prior_commit(&tx, account, req)? {
            return Ok(answer);
        }
        let committed = match &req.asset_id {
            None => self.commit_new(&tx, account, req, now, holder)?,
            Some(asset_id) => self.commit_version(&tx, account, asset_id, req, now, holder)?,
        };
        if let Some(holder) = holder {
            // A deduplicated commit made no version: the reference taken for it is surplus.
            tx.execute(
                "UPDATE ref_outbox SET action = 'release', at = ?4
                 WHERE account = ?1 AND manifest = ?2 AND holder = ?3",
                params![account, &req.manifest.0[..], holder, now],
            )?;
            if !committed.deduplicated {
                tx.execute(
                    "DELETE FROM ref_outbox WHERE account = ?1 AND manifest = ?2 AND holder = ?3",
                    params![account, &req.manifest.0[..], holder],
                )?;
            }
        }
        if let Some(reservation) = reservation {
            tx.execute(
                "UPDATE reservations SET bytes = MAX(bytes - ?3, 0)
                 WHERE reservation_id = ?1 AND account = ?2",
                params![reservation, account, req.size as i64],
            )?;
        }
        tx.execute(
            "INSERT INTO requests (account, request_id, fingerprint, asset_id, version, seq, conflict, deduplicated)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                account,
                req.request_id,
                &fingerprint[..],
                committed.asset_id,
                committed.version,
                committed.seq as i64,
                committed.conflict,
                committed.deduplicated
            ],
        )?;
        fail::fail_point!("library-before-asset-commit");
        tx.commit()?;
        fail::fail_point!("library-after-asset-commit");
        tracing::debug!(account, asset = %committed.asset_id, version = committed.version, seq = committed.seq, "committed");
        Ok(committed)
    }

    fn commit_new(
        &self,
        tx: &Transaction<'_>,
        account: &str,
        req: &CommitRequest,
        now: UnixMillis,
        holder: Option<&str>,
    ) -> Result<Committed, LibraryError> {
        // A file is an asset: the same bytes under another name (a copy, a twin in another
        // folder) are another asset, sharing chunks in the store, never merged.
        let asked = if req.path.is_empty() {
            req.original_name.as_str()
        } else {
            req.path.as_str()
        };
        let path = free_path(tx, account, asked, None)?;
        let asset_id = new_asset_id(now, self.entropy.as_ref());
        let seq = next_seq(tx, account)?;
        tx.execute(
            "INSERT INTO assets (account, asset_id, kind, capture_time, width, height, original_name,
                                 current_version, state, seq, path, path_key)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 1, 'live', ?8, ?9, ?10)",
            params![
                account,
                asset_id,
                req.kind.as_str(),
                req.capture_time,
                req.width,
                req.height,
                req.original_name,
                seq as i64,
                path,
                keepsake_path::fold(&path)
            ],
        )?;
        insert_version(tx, account, &asset_id, 1, req, now, (None, holder))?;
        Ok(Committed {
            asset_id,
            version: 1,
            seq,
            conflict: false,
            deduplicated: false,
            path,
        })
    }

    fn commit_version(
        &self,
        tx: &Transaction<'_>,
        account: &str,
        asset_id: &str,
        req: &CommitRequest,
        now: UnixMillis,
        holder: Option<&str>,
    ) -> Result<Committed, LibraryError> {
        let (current, state): (u32, String) = tx
            .query_row(
                "SELECT current_version, state FROM assets WHERE account = ?1 AND asset_id = ?2",
                params![account, asset_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?
            .ok_or_else(|| LibraryError::NotFound {
                kind: "asset",
                id: asset_id.to_string(),
            })?;
        if state != "live" {
            return Err(LibraryError::NotLive(asset_id.to_string()));
        }
        // The content the asset already has (a second device re-sending a repaired photo,
        // an edit saved without a change) is no new version.
        let (current_hash, seq): (Vec<u8>, i64) = tx.query_row(
            "SELECT v.file_hash, a.seq FROM assets a JOIN versions v
               ON v.account = a.account AND v.asset_id = a.asset_id AND v.version = a.current_version
             WHERE a.account = ?1 AND a.asset_id = ?2",
            params![account, asset_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let path = asset_path(tx, account, asset_id)?;
        if current_hash == req.file_hash.0 {
            return Ok(Committed {
                asset_id: asset_id.to_string(),
                version: current,
                seq: seq as u64,
                conflict: false,
                deduplicated: true,
                path,
            });
        }
        let max: u32 = tx.query_row(
            "SELECT MAX(version) FROM versions WHERE account = ?1 AND asset_id = ?2",
            params![account, asset_id],
            |r| r.get(0),
        )?;
        let version = max + 1;
        // A stale base is not an error: both versions are kept, the later is current.
        let conflict = req.base_version.is_some_and(|b| b != current);
        insert_version(
            tx,
            account,
            asset_id,
            version,
            req,
            now,
            (conflict.then_some(current), holder),
        )?;
        let seq = next_seq(tx, account)?;
        // What the new bytes say of themselves (an edited capture date, a crop) is the
        // asset's now: it describes the version everyone will see.
        tx.execute(
            "UPDATE assets SET current_version = ?3, seq = ?4, kind = ?5,
                    capture_time = coalesce(?6, capture_time), width = coalesce(?7, width),
                    height = coalesce(?8, height)
             WHERE account = ?1 AND asset_id = ?2",
            params![
                account,
                asset_id,
                version,
                seq as i64,
                req.kind.as_str(),
                req.capture_time,
                req.width,
                req.height
            ],
        )?;
        Ok(Committed {
            asset_id: asset_id.to_string(),
            version,
            seq,
            conflict,
            deduplicated: false,
            path,
        })
    }

    /// Live, trashed and purged assets whose current content has these hashes, and
    /// purge tombstones of content that is gone.
    pub fn find_by_content(
        &self,
        account: &str,
        hashes: &[ChunkId],
    ) -> Result<Vec<ContentMatch>, LibraryError> {
        let db = self.db();
        let mut assets =
            db.prepare_cached(&SAME_CONTENT_SQL.replace("{ASSET_COLUMNS}", ASSET_COLUMNS))?;
        let mut purged = db.prepare_cached(
            "SELECT path, purged_at FROM purged_files WHERE account = ?1 AND file_hash = ?2
             ORDER BY purged_at DESC LIMIT 64",
        )?;
        hashes
            .iter()
            .map(|h| {
                let found = assets
                    .query_map(params![account, &h.0[..]], asset_from_row)?
                    .collect::<Result<Vec<_>, _>>()?;
                let tombstones = purged
                    .query_map(params![account, &h.0[..]], |r| {
                        Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
                    })?
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(ContentMatch {
                    file_hash: *h,
                    assets: found,
                    purged_at: tombstones.iter().map(|(_, at)| *at).max(),
                    purged_paths: tombstones.into_iter().map(|(path, _)| path).collect(),
                })
            })
            .collect()
    }

    /// One asset's latest state (purged ones too, as tombstones, until compaction).
    pub fn get_asset(&self, account: &str, asset_id: &str) -> Result<Asset, LibraryError> {
        self.db()
            .query_row(
                &format!(
                    "SELECT {ASSET_COLUMNS} FROM assets a JOIN versions v
                       ON v.account = a.account AND v.asset_id = a.asset_id AND v.version = a.current_version
                     WHERE a.account = ?1 AND a.asset_id = ?2"
                ),
                params![account, asset_id],
                asset_from_row,
            )
            .optional()?
            .ok_or_else(|| LibraryError::NotFound {
                kind: "asset",
                id: asset_id.to_string(),
            })
    }

    /// Every version of an asset, the original first.
    pub fn list_versions(
        &self,
        account: &str,
        asset_id: &str,
    ) -> Result<Vec<VersionInfo>, LibraryError> {
        let db = self.db();
        let mut stmt = db.prepare_cached(
            "SELECT version, manifest, file_hash, size, base_version, device, created_at, conflicts_with
             FROM versions WHERE account = ?1 AND asset_id = ?2 ORDER BY version",
        )?;
        let versions: Vec<VersionInfo> = stmt
            .query_map(params![account, asset_id], |r| {
                Ok(VersionInfo {
                    version: r.get(0)?,
                    manifest: read_id(r.get(1)?)?,
                    file_hash: read_id(r.get(2)?)?,
                    size: r.get::<_, i64>(3)? as u64,
                    base_version: r.get(4)?,
                    device: r.get(5)?,
                    created_at: r.get(6)?,
                    conflicts_with: r.get(7)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        if versions.is_empty() {
            return Err(LibraryError::NotFound {
                kind: "asset",
                id: asset_id.to_string(),
            });
        }
        Ok(versions)
    }

    /// Applies a metadata change if its clock is newer than the field's; returns whether it won.
    pub fn set_metadata(
        &self,
        account: &str,
        asset_id: &str,
        field: &MetadataField,
        hlc: &Hlc,
    ) -> Result<bool, LibraryError> {
        self.write(|tx| self.set_metadata_in(tx, account, asset_id, field, hlc))
    }

    fn set_metadata_in(
        &self,
        tx: &Connection,
        account: &str,
        asset_id: &str,
        field: &MetadataField,
        hlc: &Hlc,
    ) -> Result<bool, LibraryError> {
        self.check_clock(hlc)?;
        let (column, clock_column, value): (&str, &str, rusqlite::types::Value) = match field {
            MetadataField::Favorite(v) => ("favorite", "favorite_clock", i64::from(*v).into()),
            MetadataField::Hidden(v) => ("hidden", "hidden_clock", i64::from(*v).into()),
            MetadataField::Title(t) => {
                self.check_text("title", t)?;
                ("title", "title_clock", t.clone().into())
            }
        };
        let stored: String = tx
            .query_row(
                &format!("SELECT {clock_column} FROM assets WHERE account = ?1 AND asset_id = ?2 AND state != 'purged'"),
                params![account, asset_id],
                |r| r.get(0),
            )
            .optional()?
            .ok_or_else(|| LibraryError::NotFound {
                kind: "asset",
                id: asset_id.to_string(),
            })?;
        let encoded = hlc.encode();
        if encoded <= stored {
            return Ok(false);
        }
        let seq = next_seq(tx, account)?;
        tx.execute(
            &format!(
                "UPDATE assets SET {column} = ?3, {clock_column} = ?4, seq = ?5 WHERE account = ?1 AND asset_id = ?2"
            ),
            params![account, asset_id, value, encoded, seq as i64],
        )?;
        Ok(true)
    }

    /// Flags the live or trashed assets whose current version is one of `manifests` as
    /// damaged, each with a new feed entry so devices hear of it; returns them.
    pub fn mark_damaged(
        &self,
        account: &str,
        manifests: &[ManifestId],
    ) -> Result<Vec<String>, LibraryError> {
        let mut db = self.db();
        let tx = db.transaction()?;
        let mut flagged = Vec::new();
        for manifest in manifests {
            let ids: Vec<String> = tx
                .prepare_cached(
                    "SELECT a.asset_id FROM assets a JOIN versions v
                       ON v.account = a.account AND v.asset_id = a.asset_id
                      AND v.version = a.current_version
                     WHERE a.account = ?1 AND v.manifest = ?2 AND a.state != 'purged'
                       AND a.damaged = 0",
                )?
                .query_map(params![account, &manifest.0[..]], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            for asset_id in ids {
                let seq = next_seq(&tx, account)?;
                tx.execute(
                    "UPDATE assets SET damaged = 1, seq = ?3 WHERE account = ?1 AND asset_id = ?2",
                    params![account, asset_id, seq as i64],
                )?;
                tracing::error!(account, asset = %asset_id, "asset damaged: part of its content failed verification");
                flagged.push(asset_id);
            }
        }
        tx.commit()?;
        Ok(flagged)
    }

    /// Queues the current version's previews to be made again where a scrub found one of
    /// `manifests` (a derivative) corrupt, or after a damaged original was repaired.
    /// Returns how many assets' derivations were queued again.
    pub fn requeue_derivations(
        &self,
        account: &str,
        manifests: &[ManifestId],
        why: &str,
    ) -> Result<usize, LibraryError> {
        let mut db = self.db();
        let tx = db.transaction()?;
        let mut requeued = std::collections::HashSet::new();
        for manifest in manifests {
            let jobs: Vec<(String, u32)> = tx
                .prepare_cached(
                    "SELECT d.asset_id, d.version FROM derivatives d JOIN assets a
                       ON a.account = d.account AND a.asset_id = d.asset_id
                      AND a.current_version = d.version
                     WHERE d.account = ?1 AND d.manifest = ?2 AND a.state != 'purged'",
                )?
                .query_map(params![account, &manifest.0[..]], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?
                .collect::<Result<_, _>>()?;
            for (asset_id, version) in jobs {
                tx.execute(
                    "UPDATE derive_jobs SET state = 'queued', attempts = 0, next_at = 0, last_error = ?4
                      WHERE account = ?1 AND asset_id = ?2 AND version = ?3",
                    params![account, asset_id, version, why],
                )?;
                tracing::warn!(account, asset = %asset_id, version, "a preview failed verification; it will be made again");
                requeued.insert(asset_id);
            }
        }
        tx.commit()?;
        Ok(requeued.len())
    }

    /// Queues again a version's derivation that ended without previews (its original could
    /// not be read): called when a damaged original has been repaired.
    pub fn retry_failed_derivation(
        &self,
        account: &str,
        asset_id: &str,
        version: u32,
    ) -> Result<bool, LibraryError> {
        let changed = self.db().execute(
            "UPDATE derive_jobs SET state = 'queued', attempts = 0, next_at = 0
              WHERE account = ?1 AND asset_id = ?2 AND version = ?3 AND state = 'failed'",
            params![account, asset_id, version],
        )?;
        Ok(changed > 0)
    }

    /// Live or trashed assets across all accounts.
    pub fn count_assets(&self) -> Result<u64, LibraryError> {
        let n: i64 = self.db().query_row(
            "SELECT COUNT(*) FROM assets WHERE state != 'purged'",
            [],
            |r| r.get(0),
        )?;
        Ok(n as u64)
    }

    /// The damaged asset whose current version is `manifest`, if there is one.
    pub fn damaged_with(
        &self,
        account: &str,
        manifest: &ManifestId,
    ) -> Result<Option<(String, u32)>, LibraryError> {
        Ok(self
            .db()
            .query_row(DAMAGED_WITH_SQL, params![account, &manifest.0[..]], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?)
    }

    /// Clears an asset's damaged flag (its content is whole again), with a feed entry.
    pub fn clear_damaged(&self, account: &str, asset_id: &str) -> Result<(), LibraryError> {
        let mut db = self.db();
        let tx = db.transaction()?;
        let seq = next_seq(&tx, account)?;
        let changed = tx.execute(
            "UPDATE assets SET damaged = 0, seq = ?3 WHERE account = ?1 AND asset_id = ?2 AND damaged = 1",
            params![account, asset_id, seq as i64],
        )?;
        if changed == 1 {
            tx.commit()?;
            tracing::info!(account, asset = %asset_id, "damaged asset repaired");
        }
        Ok(())
    }

    /// Moves an asset to Recently Deleted (idempotent).
    pub fn trash(&self, account: &str, asset_id: &str) -> Result<(), LibraryError> {
        self.write(|tx| self.set_state_in(tx, account, asset_id, "trashed", &["live"]))
            .map(|_| ())
    }

    /// Brings an asset back from Recently Deleted (idempotent).
    pub fn restore(&self, account: &str, asset_id: &str) -> Result<(), LibraryError> {
        self.write(|tx| self.set_state_in(tx, account, asset_id, "live", &["trashed"]))
            .map(|_| ())
    }

    fn set_state_in(
        &self,
        tx: &Connection,
        account: &str,
        asset_id: &str,
        to: &str,
        from: &[&str],
    ) -> Result<bool, LibraryError> {
        let now = self.clock.now_ms();
        let state = asset_state(tx, account, asset_id)?;
        if state == to {
            return Ok(false);
        }
        if !from.contains(&state.as_str()) {
            return Err(LibraryError::NotLive(asset_id.to_string()));
        }
        if to == "live" {
            // Another file may have taken its name while it was in Recently Deleted.
            let path = asset_path(tx, account, asset_id)?;
            let free = free_path(tx, account, &path, Some(asset_id))?;
            if free != path {
                tx.execute(
                    "UPDATE assets SET path = ?3, path_key = ?4 WHERE account = ?1 AND asset_id = ?2",
                    params![account, asset_id, free, keepsake_path::fold(&free)],
                )?;
            }
        }
        let seq = next_seq(tx, account)?;
        tx.execute(
            "UPDATE assets SET state = ?3, state_at = ?4, seq = ?5 WHERE account = ?1 AND asset_id = ?2",
            params![account, asset_id, to, now, seq as i64],
        )?;
        Ok(true)
    }

    /// Moves an asset to another path (idempotent; last writer by clock wins). A path
    /// another live asset holds is numbered, decided here, once, for every device.
    pub fn rename(
        &self,
        account: &str,
        asset_id: &str,
        path: &str,
        clock: &Hlc,
    ) -> Result<bool, LibraryError> {
        self.write(|tx| self.rename_in(tx, account, asset_id, path, clock))
    }

    fn rename_in(
        &self,
        tx: &Connection,
        account: &str,
        asset_id: &str,
        path: &str,
        clock: &Hlc,
    ) -> Result<bool, LibraryError> {
        keepsake_path::check(path).map_err(|e| LibraryError::InvalidArgument(e.to_string()))?;
        self.check_clock(clock)?;
        let (state, current, current_clock): (String, Option<String>, String) = tx
            .query_row(
                "SELECT state, path, path_clock FROM assets WHERE account = ?1 AND asset_id = ?2",
                params![account, asset_id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?
            .ok_or_else(|| LibraryError::NotFound {
                kind: "asset",
                id: asset_id.to_string(),
            })?;
        if state == "purged" {
            return Err(LibraryError::NotLive(asset_id.to_string()));
        }
        let newer = Hlc::decode(&current_clock).is_none_or(|seen| *clock > seen);
        if !newer || current.as_deref() == Some(path) {
            return Ok(false);
        }
        let free = if state == "live" {
            free_path(tx, account, path, Some(asset_id))?
        } else {
            path.to_string()
        };
        let seq = next_seq(tx, account)?;
        tx.execute(
            "UPDATE assets SET path = ?3, path_key = ?4, path_clock = ?5, seq = ?6
             WHERE account = ?1 AND asset_id = ?2",
            params![
                account,
                asset_id,
                free,
                keepsake_path::fold(&free),
                clock.encode(),
                seq as i64
            ],
        )?;
        Ok(true)
    }

    /// Live assets whose current content is identical, grouped: a person decides which to
    /// keep (nothing is merged on its own). At most `limit` groups, largest files first.
    pub fn duplicates(
        &self,
        account: &str,
        limit: usize,
    ) -> Result<Vec<(ChunkId, Vec<Asset>)>, LibraryError> {
        let hashes: Vec<ChunkId> = {
            let db = self.db();
            let mut stmt = db.prepare_cached(
                "SELECT v.file_hash FROM assets a JOIN versions v
                   ON v.account = a.account AND v.asset_id = a.asset_id AND v.version = a.current_version
                 WHERE a.account = ?1 AND a.state = 'live'
                 GROUP BY v.file_hash HAVING COUNT(*) > 1
                 ORDER BY MAX(v.size) DESC, v.file_hash LIMIT ?2",
            )?;
            stmt.query_map(params![account, limit as i64], |r| read_id(r.get(0)?))?
                .collect::<Result<_, _>>()?
        };
        Ok(self
            .find_by_content(account, &hashes)?
            .into_iter()
            .map(|m| {
                let live = m
                    .assets
                    .into_iter()
                    .filter(|a| a.state == AssetState::Live)
                    .collect();
                (m.file_hash, live)
            })
            .collect())
    }

    /// Purges an asset (from anywhere in its life): it becomes a tombstone, its content
    /// hashes are remembered, and the manifests of all its versions are returned so the
    /// caller can release them in the store. Idempotent: a second purge returns nothing.
    pub fn purge(&self, account: &str, asset_id: &str) -> Result<Vec<ManifestId>, LibraryError> {
        let now = self.clock.now_ms();
        let mut db = self.db();
        let tx = db.transaction()?;
        let state = asset_state(&tx, account, asset_id)?;
        if state == "purged" {
            return Ok(Vec::new());
        }
        let released = purge_in(&tx, account, asset_id, now)?;
        tx.commit()?;
        Ok(released)
    }

    /// Purges everything that has been in Recently Deleted past the retention period.
    /// Returns (account, asset, manifests to release).
    pub fn expire_trash(&self) -> Result<Vec<(String, String, Vec<ManifestId>)>, LibraryError> {
        let now = self.clock.now_ms();
        let mut db = self.db();
        let tx = db.transaction()?;
        let due: Vec<(String, String)> = {
            let mut stmt = tx.prepare(
                "SELECT account, asset_id FROM assets WHERE state = 'trashed' AND state_at + ?1 <= ?2",
            )?;
            stmt.query_map(params![self.config.trash_retention_ms, now], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?
            .collect::<Result<_, _>>()?
        };
        let mut out = Vec::new();
        for (account, asset_id) in due {
            let released = purge_in(&tx, &account, &asset_id, now)?;
            out.push((account, asset_id, released));
        }
        tx.commit()?;
        Ok(out)
    }

    /// Drops purge tombstones older than the retention period and moves each
    /// account's feed horizon past them; older cursors must resync.
    pub fn compact(&self) -> Result<u64, LibraryError> {
        let cutoff = self.clock.now_ms() - self.config.tombstone_retention_ms;
        let mut db = self.db();
        let tx = db.transaction()?;
        // Cursors issued before this compaction and older than the rows it removes
        // must resync; the epoch tells them apart from cursors issued after it.
        tx.execute(
            "UPDATE feed SET epoch = epoch + 1, horizon = MAX(horizon,
                 COALESCE((SELECT MAX(seq) FROM assets a
                     WHERE a.account = feed.account AND a.state = 'purged' AND a.state_at <= ?1), 0),
                 COALESCE((SELECT MAX(seq) FROM albums a
                     WHERE a.account = feed.account AND a.deleted = 1), 0))
             WHERE EXISTS (SELECT 1 FROM assets a
                     WHERE a.account = feed.account AND a.state = 'purged' AND a.state_at <= ?1)
                OR EXISTS (SELECT 1 FROM albums a WHERE a.account = feed.account AND a.deleted = 1)",
            [cutoff],
        )?;
        let removed = tx.execute(
            "DELETE FROM assets WHERE state = 'purged' AND state_at <= ?1",
            [cutoff],
        )? as u64;
        tx.execute(
            "DELETE FROM album_members WHERE (account, album_id) IN
                 (SELECT account, album_id FROM albums WHERE deleted = 1)",
            [],
        )?;
        tx.execute("DELETE FROM albums WHERE deleted = 1", [])?;
        tx.execute("DELETE FROM purged_content WHERE purged_at <= ?1", [cutoff])?;
        tx.execute("DELETE FROM purged_files WHERE purged_at <= ?1", [cutoff])?;
        tx.commit()?;
        Ok(removed)
    }

    /// Creates or renames an album; the name merges last-writer-wins by HLC.
    pub fn put_album(
        &self,
        account: &str,
        album_id: &str,
        name: &str,
        hlc: &Hlc,
    ) -> Result<bool, LibraryError> {
        self.write(|tx| self.put_album_in(tx, account, album_id, name, hlc))
    }

    fn put_album_in(
        &self,
        tx: &Connection,
        account: &str,
        album_id: &str,
        name: &str,
        hlc: &Hlc,
    ) -> Result<bool, LibraryError> {
        self.check_clock(hlc)?;
        self.check_text("album name", name)?;
        if album_id.is_empty() || album_id.len() > 64 {
            return Err(LibraryError::InvalidArgument(
                "album_id must be 1..=64 bytes".into(),
            ));
        }
        let stored: Option<(String, bool)> = tx
            .query_row(
                "SELECT name_clock, deleted FROM albums WHERE account = ?1 AND album_id = ?2",
                params![account, album_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let encoded = hlc.encode();
        if let Some((clock, deleted)) = &stored
            && (*deleted || encoded <= *clock)
        {
            return Ok(false);
        }
        let seq = next_seq(tx, account)?;
        tx.execute(
            "INSERT INTO albums (account, album_id, name, name_clock, seq) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (account, album_id) DO UPDATE SET name = ?3, name_clock = ?4, seq = ?5",
            params![account, album_id, name, encoded, seq as i64],
        )?;
        Ok(true)
    }

    /// Deletes an album (a tombstone that wins over every later rename).
    pub fn delete_album(
        &self,
        account: &str,
        album_id: &str,
        hlc: &Hlc,
    ) -> Result<(), LibraryError> {
        self.write(|tx| self.delete_album_in(tx, account, album_id, hlc))
            .map(|_| ())
    }

    fn delete_album_in(
        &self,
        tx: &Connection,
        account: &str,
        album_id: &str,
        hlc: &Hlc,
    ) -> Result<bool, LibraryError> {
        self.check_clock(hlc)?;
        let deleted: bool = tx
            .query_row(
                "SELECT deleted FROM albums WHERE account = ?1 AND album_id = ?2",
                params![account, album_id],
                |r| r.get(0),
            )
            .optional()?
            .ok_or_else(|| LibraryError::NotFound {
                kind: "album",
                id: album_id.to_string(),
            })?;
        if deleted {
            return Ok(false);
        }
        let seq = next_seq(tx, account)?;
        tx.execute(
            "UPDATE albums SET deleted = 1, deleted_clock = ?3, seq = ?4 WHERE account = ?1 AND album_id = ?2",
            params![account, album_id, hlc.encode(), seq as i64],
        )?;
        Ok(true)
    }

    /// Adds or removes an asset in an album; each (album, asset) pair merges on its own clock.
    pub fn set_member(
        &self,
        account: &str,
        album_id: &str,
        asset_id: &str,
        present: bool,
        hlc: &Hlc,
    ) -> Result<bool, LibraryError> {
        self.write(|tx| self.set_member_in(tx, account, album_id, asset_id, present, hlc))
    }

    fn set_member_in(
        &self,
        tx: &Connection,
        account: &str,
        album_id: &str,
        asset_id: &str,
        present: bool,
        hlc: &Hlc,
    ) -> Result<bool, LibraryError> {
        self.check_clock(hlc)?;
        let live_album: bool = tx
            .query_row(
                "SELECT deleted = 0 FROM albums WHERE account = ?1 AND album_id = ?2",
                params![account, album_id],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or(false);
        if !live_album {
            return Err(LibraryError::NotFound {
                kind: "album",
                id: album_id.to_string(),
            });
        }
        let asset_exists: bool = tx
            .query_row(
                "SELECT 1 FROM assets WHERE account = ?1 AND asset_id = ?2 AND state != 'purged'",
                params![account, asset_id],
                |_| Ok(true),
            )
            .optional()?
            .unwrap_or(false);
        if !asset_exists {
            return Err(LibraryError::NotFound {
                kind: "asset",
                id: asset_id.to_string(),
            });
        }
        let stored: Option<String> = tx
            .query_row(
                "SELECT clock FROM album_members WHERE account = ?1 AND album_id = ?2 AND asset_id = ?3",
                params![account, album_id, asset_id],
                |r| r.get(0),
            )
            .optional()?;
        let encoded = hlc.encode();
        if stored.is_some_and(|c| encoded <= c) {
            return Ok(false);
        }
        tx.execute(
            "INSERT INTO album_members (account, album_id, asset_id, present, clock) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (account, album_id, asset_id) DO UPDATE SET present = ?4, clock = ?5",
            params![account, album_id, asset_id, present, encoded],
        )?;
        let seq = next_seq(tx, account)?;
        tx.execute(
            "UPDATE albums SET seq = ?3 WHERE account = ?1 AND album_id = ?2",
            params![account, album_id, seq as i64],
        )?;
        Ok(true)
    }

    /// Rows changed after `cursor`: each asset's and album's latest state, in sequence
    /// order. Reading from zero yields exactly the current library (plus tombstones).
    pub fn list_changes(
        &self,
        account: &str,
        cursor: u64,
        limit: usize,
    ) -> Result<ChangePage, LibraryError> {
        let limit = limit.clamp(1, self.config.max_page);
        let db = self.db();
        let (head, horizon, epoch): (i64, i64, i64) = db
            .query_row(
                "SELECT seq, horizon, epoch FROM feed WHERE account = ?1",
                [account],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?
            .unwrap_or((0, 0, 0));
        let (cursor_epoch, after) = (cursor >> CURSOR_SEQ_BITS, cursor & CURSOR_SEQ_MASK);
        if after > head as u64 || cursor_epoch > epoch as u64 {
            return Err(LibraryError::CursorFromFuture {
                cursor,
                head: head as u64,
            });
        }
        // A cursor from before the last compaction that had not yet seen the removed
        // tombstones would miss deletions: it must resync. Zero always starts afresh.
        if cursor != 0 && cursor_epoch < epoch as u64 && after < horizon as u64 {
            return Err(LibraryError::CursorExpired {
                cursor,
                horizon: horizon as u64,
            });
        }
        let cursor = after;
        let fetch = limit as i64 + 1;
        let mut changes: Vec<Change> = {
            let mut stmt = db.prepare_cached(&format!(
                "SELECT {ASSET_COLUMNS} FROM assets a JOIN versions v
                   ON v.account = a.account AND v.asset_id = a.asset_id AND v.version = a.current_version
                 WHERE a.account = ?1 AND a.seq > ?2 ORDER BY a.seq LIMIT ?3"
            ))?;
            stmt.query_map(params![account, cursor as i64, fetch], asset_from_row)?
                .map(|a| a.map(Change::Asset))
                .collect::<Result<_, _>>()?
        };
        {
            let mut stmt = db.prepare_cached(
                "SELECT album_id, name, deleted, seq, MAX(name_clock, deleted_clock,
                        COALESCE((SELECT MAX(m.clock) FROM album_members m
                                  WHERE m.account = albums.account AND m.album_id = albums.album_id), ''))
                 FROM albums WHERE account = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
            )?;
            let mut members = db.prepare_cached(
                "SELECT asset_id FROM album_members WHERE account = ?1 AND album_id = ?2 AND present = 1
                 ORDER BY asset_id",
            )?;
            let albums: Vec<(String, String, bool, i64, String)> = stmt
                .query_map(params![account, cursor as i64, fetch], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                })?
                .collect::<Result<_, _>>()?;
            for (album_id, name, deleted, seq, clock) in albums {
                let members = members
                    .query_map(params![account, album_id], |r| r.get(0))?
                    .collect::<Result<Vec<String>, _>>()?;
                changes.push(Change::Album(Album {
                    album_id,
                    name,
                    deleted,
                    members,
                    seq: seq as u64,
                    clock: Hlc::decode(&clock).unwrap_or_else(Hlc::zero),
                }));
            }
        }
        changes.sort_by_key(Change::seq);
        let more = changes.len() > limit;
        changes.truncate(limit);
        let cursor = (epoch as u64) << CURSOR_SEQ_BITS | changes.last().map_or(cursor, Change::seq);
        Ok(ChangePage {
            changes,
            cursor,
            more,
        })
    }
}

/// Queues a store reference for release (drained by the cloud after the transaction).
/// Gives an asset a new sequence number: the feed shows it again, with what changed.
pub(crate) fn touch_asset(
    tx: &Transaction<'_>,
    account: &str,
    asset_id: &str,
) -> Result<(), LibraryError> {
    let seq = next_seq(tx, account)?;
    tx.execute(
        "UPDATE assets SET seq = ?3 WHERE account = ?1 AND asset_id = ?2",
        params![account, asset_id, seq as i64],
    )?;
    Ok(())
}

pub(crate) fn queue_release(
    tx: &Transaction<'_>,
    account: &str,
    manifest: &[u8],
    holder: &str,
    now: UnixMillis,
) -> Result<(), LibraryError> {
    tx.execute(
        "INSERT INTO ref_outbox (account, manifest, holder, action, at) VALUES (?1, ?2, ?3, 'release', ?4)
         ON CONFLICT (account, manifest, holder) DO UPDATE SET action = 'release', at = ?4",
        params![account, manifest, holder, now],
    )?;
    Ok(())
}

fn prior_commit(
    conn: &Connection,
    account: &str,
    req: &CommitRequest,
) -> Result<Option<Committed>, LibraryError> {
    let prior = conn
        .query_row(
            "SELECT r.fingerprint, r.asset_id, r.version, r.seq, r.conflict, r.deduplicated,
                    coalesce(a.path, a.original_name, '')
             FROM requests r LEFT JOIN assets a ON a.account = r.account AND a.asset_id = r.asset_id
             WHERE r.account = ?1 AND r.request_id = ?2",
            params![account, req.request_id],
            |r| {
                Ok((
                    r.get::<_, Vec<u8>>(0)?,
                    Committed {
                        asset_id: r.get(1)?,
                        version: r.get(2)?,
                        seq: r.get::<_, i64>(3)? as u64,
                        conflict: r.get(4)?,
                        deduplicated: r.get(5)?,
                        path: r.get(6)?,
                    },
                ))
            },
        )
        .optional()?;
    match prior {
        Some((seen, _)) if seen != req.fingerprint() => {
            Err(LibraryError::RequestIdReused(req.request_id.clone()))
        }
        Some((_, answer)) => Ok(Some(answer)),
        None => Ok(None),
    }
}

/// An asset's path in the library.
fn asset_path(tx: &Connection, account: &str, asset_id: &str) -> Result<String, LibraryError> {
    Ok(tx.query_row(
        "SELECT coalesce(path, original_name) FROM assets WHERE account = ?1 AND asset_id = ?2",
        params![account, asset_id],
        |r| r.get(0),
    )?)
}

/// `path`, or the first of `stem (2).ext`, `stem (3).ext`… that no other live asset holds,
/// case and Unicode normalization folded: every phone names its files `IMG_0001…`, so two
/// devices' photos meeting at one name is routine, and a case-insensitive file system
/// must never be asked to hold two of them.
fn free_path(
    tx: &Connection,
    account: &str,
    path: &str,
    except: Option<&str>,
) -> Result<String, LibraryError> {
    let mut taken = tx.prepare_cached(
        "SELECT 1 FROM assets WHERE account = ?1 AND path_key = ?2 AND state = 'live'
           AND asset_id != ?3",
    )?;
    let mut candidate = path.to_string();
    for n in 2..=u32::MAX {
        let key = keepsake_path::fold(&candidate);
        if !taken.exists(params![account, key, except.unwrap_or("")])? {
            return Ok(candidate);
        }
        candidate = keepsake_path::numbered(path, n);
    }
    Err(LibraryError::InvalidArgument(format!(
        "no free name near {path:?}"
    )))
}

/// An asset's life state ("live", "trashed", "purged"); NOT_FOUND for other accounts' ids too.
fn asset_state(tx: &Connection, account: &str, asset_id: &str) -> Result<String, LibraryError> {
    tx.query_row(
        "SELECT state FROM assets WHERE account = ?1 AND asset_id = ?2",
        params![account, asset_id],
        |r| r.get(0),
    )
    .optional()?
    .ok_or_else(|| LibraryError::NotFound {
        kind: "asset",
        id: asset_id.to_string(),
    })
}

fn insert_version(
    tx: &Transaction<'_>,
    account: &str,
    asset_id: &str,
    version: u32,
    req: &CommitRequest,
    now: UnixMillis,
    (conflicts_with, holder): (Option<u32>, Option<&str>),
) -> Result<(), LibraryError> {
    tx.execute(
        "INSERT INTO versions (account, asset_id, version, manifest, file_hash, size, base_version,
                               device, created_at, conflicts_with, holder)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        params![
            account,
            asset_id,
            version,
            &req.manifest.0[..],
            &req.file_hash.0[..],
            req.size as i64,
            req.base_version,
            req.device,
            now,
            conflicts_with,
            holder
        ],
    )?;
    // Previews are made later, by a worker, from a queue that survives restarts; a job is
    // due from its commit on (which also tells the worker when uploads are still arriving).
    tx.execute(
        "INSERT OR IGNORE INTO derive_jobs (account, asset_id, version, manifest, video, next_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            account,
            asset_id,
            version,
            &req.manifest.0[..],
            req.kind == AssetKind::Video,
            now
        ],
    )?;
    Ok(())
}

fn purge_in(
    tx: &Transaction<'_>,
    account: &str,
    asset_id: &str,
    now: UnixMillis,
) -> Result<Vec<ManifestId>, LibraryError> {
    let versions: Vec<(Vec<u8>, Vec<u8>, Option<String>)> = {
        let mut stmt = tx.prepare_cached(
            "SELECT manifest, file_hash, holder FROM versions WHERE account = ?1 AND asset_id = ?2",
        )?;
        stmt.query_map(params![account, asset_id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?
        .collect::<Result<_, _>>()?
    };
    let derived: Vec<(Vec<u8>, String)> = {
        let mut stmt = tx.prepare_cached(
            "SELECT manifest, holder FROM derivatives WHERE account = ?1 AND asset_id = ?2",
        )?;
        stmt.query_map(params![account, asset_id], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?
    };
    for (manifest, holder) in &derived {
        queue_release(tx, account, manifest, holder, now)?;
    }
    tx.execute(
        "DELETE FROM derivatives WHERE account = ?1 AND asset_id = ?2",
        params![account, asset_id],
    )?;
    tx.execute(
        "DELETE FROM derive_jobs WHERE account = ?1 AND asset_id = ?2",
        params![account, asset_id],
    )?;
    let mut released = Vec::new();
    for (manifest, file_hash, holder) in &versions {
        released.push(read_id(manifest.clone())?);
        if let Some(holder) = holder {
            queue_release(tx, account, manifest, holder, now)?;
        }
        tx.execute(
            "INSERT INTO purged_files (account, file_hash, path, asset_id, purged_at)
             VALUES (?1, ?2, (SELECT coalesce(path, original_name) FROM assets
                              WHERE account = ?1 AND asset_id = ?3), ?3, ?4)
             ON CONFLICT (account, file_hash, asset_id) DO UPDATE SET purged_at = ?4",
            params![account, file_hash, asset_id, now],
        )?;
    }
    let seq = next_seq(tx, account)?;
    tx.execute(
        "UPDATE assets SET state = 'purged', state_at = ?3, seq = ?4 WHERE account = ?1 AND asset_id = ?2",
        params![account, asset_id, now, seq as i64],
    )?;
    // Albums that held the asset change too; each gets its own sequence number so a
    // page boundary can never fall between two rows of one number.
    let albums: Vec<String> = {
        let mut stmt = tx.prepare_cached(
            "SELECT album_id FROM album_members WHERE account = ?1 AND asset_id = ?2 AND present = 1",
        )?;
        stmt.query_map(params![account, asset_id], |r| r.get(0))?
            .collect::<Result<_, _>>()?
    };
    tx.execute(
        "DELETE FROM album_members WHERE account = ?1 AND asset_id = ?2",
        params![account, asset_id],
    )?;
    for album_id in albums {
        let seq = next_seq(tx, account)?;
        tx.execute(
            "UPDATE albums SET seq = ?3 WHERE account = ?1 AND album_id = ?2",
            params![account, album_id, seq as i64],
        )?;
    }
    released.sort();
    released.dedup();
    Ok(released)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SQLite's plan for `sql` (parameters: an account and a 32-byte id), on a schema with
    /// statistics that make the feed index look attractive, as a large library does.
    fn plan_of(sql: &str) -> String {
        let mut conn = Connection::open_in_memory().unwrap();
        schema::prepare(&mut conn).unwrap();
        conn.execute_batch("ANALYZE").unwrap();
        let plan: Vec<String> = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .unwrap()
            .query_map(params!["a", [0u8; 32]], |r| r.get::<_, String>(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        plan.join("\n")
    }

    /// Broke once: with wholly random asset ids, a fresh device listing 100,000 assets
    /// looked each up all over the versions index (ListChanges 773 → 2,557 ms).
    #[test]
    fn asset_ids_begin_with_the_commit_time_so_a_feed_page_reads_neighbouring_rows() {
        let entropy = keepsake_store::SeededEntropy::new(1);
        let t0 = 1_795_000_000_000;
        let ids: Vec<String> = (0..200)
            .map(|i| new_asset_id(t0 + i / 3, &entropy))
            .collect();
        for id in &ids {
            assert_eq!(id.len(), 32, "{id}");
            assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
        }
        let distinct: std::collections::HashSet<&String> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len());
        // Later commits sort after earlier ones (same millisecond: any order).
        for (i, id) in ids.iter().enumerate() {
            for (j, later) in ids.iter().enumerate().skip(i + 1) {
                if j / 3 > i / 3 {
                    assert!(id < later, "{id} !< {later}");
                }
            }
        }
    }

    /// Broke once: the content lookup walked the feed index, so commits slowed as the
    /// library grew (246 commits/s at 5,000 assets instead of 1,233).
    #[test]
    fn content_lookup_uses_the_hash_index_not_a_walk_of_the_feed() {
        let plan = plan_of(&SAME_CONTENT_SQL.replace("{ASSET_COLUMNS}", ASSET_COLUMNS));
        assert!(plan.contains("versions_by_hash"), "{plan}");
        assert!(!plan.contains("assets_by_seq"), "{plan}");
    }

    /// Broke once: the damaged-asset check walked every version of the account, so the
    /// 100,000-commit benchmark had not finished after 16 minutes.
    #[test]
    fn commit_damaged_check_starts_from_the_damaged_index_not_a_walk_of_the_versions() {
        let plan = plan_of(DAMAGED_WITH_SQL);
        assert!(
            plan.lines()
                .next()
                .unwrap_or_default()
                .contains("assets_damaged"),
            "{plan}"
        );
        assert!(
            plan.contains("SEARCH v USING PRIMARY KEY (account=? AND asset_id=? AND version=?)"),
            "{plan}"
        );
    }
}

#[cfg(test)]
mod path_tests {
    use super::*;
    use keepsake_store::{ManualClock, SeededEntropy};

    fn lib() -> Library {
        Library::open(
            None,
            Arc::new(ManualClock::new(1_700_000_000_000)),
            Arc::new(SeededEntropy::new(1)),
            LibraryConfig::default(),
        )
        .unwrap()
    }

    fn req(id: &str, content: &[u8], path: &str) -> CommitRequest {
        CommitRequest {
            request_id: id.into(),
            asset_id: None,
            base_version: None,
            manifest: ChunkId::of(&[b"m", content].concat()),
            file_hash: ChunkId::of(content),
            size: content.len() as u64,
            kind: AssetKind::Photo,
            capture_time: Some(1),
            width: None,
            height: None,
            original_name: keepsake_path::file_name(path).into(),
            path: path.into(),
            device: "phone".into(),
        }
    }

    /// Broke once: a purge's tombstone was per content, so a new copy of the bytes was
    /// taken for the purged photo; now it names the purged asset's path.
    #[test]
    fn a_purge_leaves_a_tombstone_per_asset_and_path() {
        let lib = lib();
        let a = lib
            .commit("u", &req("1", b"x", "trip/VID_0003.MP4"))
            .unwrap();
        let b = lib.commit("u", &req("2", b"x", "copy.mp4")).unwrap();
        lib.purge("u", &a.asset_id).unwrap();
        let found = lib.find_by_content("u", &[ChunkId::of(b"x")]).unwrap();
        assert_eq!(found[0].purged_paths, ["trip/VID_0003.MP4"]);
        assert_eq!(found[0].assets.len(), 1);
        assert_eq!(found[0].assets[0].asset_id, b.asset_id);
    }

    /// Broke once: an edit that rewrote the capture date kept the old date on the asset.
    #[test]
    fn a_new_version_brings_its_own_capture_time() {
        let lib = lib();
        let a = lib.commit("u", &req("1", b"x", "IMG_1.JPG")).unwrap();
        let mut edit = req("2", b"y", "IMG_1.JPG");
        edit.asset_id = Some(a.asset_id.clone());
        edit.base_version = Some(1);
        edit.capture_time = Some(42);
        lib.commit("u", &edit).unwrap();
        assert_eq!(
            lib.get_asset("u", &a.asset_id).unwrap().capture_time,
            Some(42)
        );
    }

    /// Two names a case-insensitive file system takes for one, and a restore onto a name
    /// taken meanwhile, are numbered by the library.
    #[test]
    fn collisions_are_numbered_on_the_folded_key() {
        let lib = lib();
        let first = lib.commit("u", &req("1", b"x", "Caf\u{e9}.jpg")).unwrap();
        let second = lib.commit("u", &req("2", b"y", "CAFE\u{301}.JPG")).unwrap();
        assert_eq!(second.path, "CAFE\u{301} (2).JPG");
        lib.trash("u", &first.asset_id).unwrap();
        let third = lib.commit("u", &req("3", b"z", "café.jpg")).unwrap();
        assert_eq!(third.path, "café.jpg");
        lib.restore("u", &first.asset_id).unwrap();
        assert_eq!(
            lib.get_asset("u", &first.asset_id).unwrap().path,
            "Caf\u{e9} (3).jpg"
        );
        let clock = Hlc {
            wall_ms: 1_700_000_000_000,
            counter: 0,
            device: "phone".into(),
        };
        assert!(
            lib.rename("u", &third.asset_id, "trip/café.jpg", &clock)
                .unwrap()
        );
        assert!(
            lib.rename("u", &third.asset_id, "../x.jpg", &clock)
                .is_err()
        );
        assert_eq!(lib.duplicates("u", 10).unwrap().len(), 0);
    }
}
