//! One device's sync engine: scan, upload, follow the feed, apply.

use crate::cloud::Reason;
use crate::cloud::{
    Cloud, CloudError, CommitReply, ContentHolder, ContentLookup, Edit, Hlc, NewAsset, RemoteAsset,
    RemoteState,
};
use crate::edits::{self, LocalAlbum, LocalAsset};
use crate::journal::{CloudOnlyRow, FileRow, Journal, MetaRow, TrashedRow};
use crate::paths::{self, FsRules, Ignore};
use bytes::Bytes;
use keepsake_delta::{ChunkParams, DeltaError, manifest_of};
use keepsake_policy::{PolicyConfig, Snapshot, WorkClass, evaluate};
use keepsake_store::{ChunkId, Clock, Manifest, ManifestId};
use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The file that marks a folder as a Keepsake library: without it (an unmounted disk, a
/// moved folder) the device deletes nothing and syncs nothing.
pub const MARKER: &str = ".keepsake-library";

/// Journal keys naming originals asked for on demand.
pub(crate) const WANT_ORIGINAL: &str = "want_original:";
/// The file in the data directory an open device holds locked.
const AGENT_LOCK: &str = "agent.lock";
/// Journal key: the request id of the reservation uploads go under until all is sent.
const PASS_RESERVATION: &str = "pass_reservation";
/// Journal keys of the photos the cloud flagged damaged that this device waits for.
const DAMAGED_WAITING: &str = "damaged_waiting:";

/// Journal keys of new files' commits sent and not yet answered: the content sent.
const ATTEMPT: &str = "attempt:";
/// Journal key: "1" when the first scan of a new journal found files in the folder.
const FOUND_FULL: &str = "found_full";

/// Files modified this recently are hashed even when their stat looks unchanged.
const RACY_WINDOW_NS: i64 = 2_000_000_000;

/// Where a device keeps its library and its own data.
#[derive(Debug, Clone)]
pub struct DeviceConfig {
    /// The library folder (the camera roll).
    pub folder: PathBuf,
    /// Journal, temp files and the local Recently Deleted — never inside the folder.
    pub data_dir: PathBuf,
    /// The enrolled device's id (part of every idempotency key it sends).
    pub device_id: String,
    /// A file modified more recently than this is still being written: wait for it.
    pub stable_ms: i64,
    /// Deleting more than this share of the synced library in one pass waits for confirmation…
    pub mass_delete_share: f64,
    /// …when it is also more than this many files.
    pub mass_delete_min: usize,
    /// Optimize Storage: keep at most this many bytes of originals here (previews of
    /// everything, originals of the newest and the recently opened). `None` keeps every
    /// original.
    pub optimize_budget: Option<u64>,
    /// Files this large and larger, new or edited, are read, sent and fetched a batch at a
    /// time, never held whole.
    pub streamed_from: u64,
    /// Bytes of chunks in one such batch (at least two of the largest chunks).
    pub stream_batch_bytes: usize,
    /// What the folder's file system folds or refuses (tests emulate a memory card).
    pub fs: FsRules,
}

impl DeviceConfig {
    /// Defaults for a folder, a data directory and a device id.
    pub fn new(folder: PathBuf, data_dir: PathBuf, device_id: String) -> Self {
        Self {
            folder,
            data_dir,
            device_id,
            stable_ms: 2000,
            mass_delete_share: 0.5,
            mass_delete_min: 20,
            optimize_budget: None,
            streamed_from: STREAMED_FROM,
            stream_batch_bytes: STREAM_BATCH_BYTES,
            fs: FsRules::default(),
        }
    }
}

/// Runs of changed chunks smaller than this go whole: a delta would save too little to
/// pay for its round trips.
const MIN_DELTA_RUN_BYTES: u64 = 16 << 10;

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// New assets (or versions) committed from this device.
    pub uploaded: usize,
    /// Local files found to be already in the cloud: linked, 0 bytes sent.
    pub linked: usize,
    /// Chunks sent.
    pub chunks_sent: usize,
    /// Bytes of chunks sent (for chunks sent as deltas, the delta's bytes).
    pub bytes_sent: u64,
    /// Chunks of edited files rebuilt by the cloud from a delta against the old version.
    pub chunks_by_delta: usize,
    /// Files written into the folder from the cloud.
    pub downloaded: usize,
    /// Files already here with an asset's exact content, taken as that asset (no download).
    pub adopted: usize,
    /// Bytes received.
    pub bytes_received: u64,
    /// Bytes of new versions taken from the file already here instead of the network.
    pub bytes_reused: u64,
    /// Downloads whose content was fetched ahead, while earlier ones were written.
    pub fetched_ahead: usize,
    /// Uploads whose file was read and chunked ahead, while earlier ones travelled.
    pub read_ahead: usize,
    /// Files sent or fetched a batch at a time (`streamed_from` and larger), never held whole.
    pub streamed: usize,
    /// Files moved to the local Recently Deleted because they were deleted elsewhere.
    pub trashed_here: usize,
    /// Files deleted in the folder, sent to Recently Deleted everywhere.
    pub trashed_remotely: usize,
    /// Files brought back from the local Recently Deleted.
    pub restored: usize,
    /// Files removed because they were purged elsewhere.
    pub purged: usize,
    /// Originals left in the cloud only (Optimize Storage), new this pass.
    pub kept_in_cloud: usize,
    /// Originals removed from the device to stay within the budget (the cloud holds them).
    pub evicted: usize,
    /// Previews fetched.
    pub previews: usize,
    /// Local files whose content was purged elsewhere: not uploaded again.
    pub not_resurrected: usize,
    /// Files skipped because they are still being written.
    pub unstable: usize,
    /// Edits made on this device that reached the cloud.
    pub edits_sent: usize,
    /// Files edited here whose photo another device deleted meanwhile: kept as new photos.
    pub kept_apart: usize,
    /// Edits the cloud refused for good (the asset or album is gone): dropped, logged.
    pub edits_dropped: usize,
    /// Originals this device sent again because the cloud flagged them damaged.
    pub repairs: usize,
    /// Photos the cloud flagged damaged that this device has no copy of: not fetched (they
    /// cannot be assembled) until a device that has them sends them again — the repair
    /// announces them anew in the feed.
    pub damaged_waiting: usize,
    /// Why uploads or deletes stopped, if they did (a stable reason code).
    pub blocked: Option<String>,
    /// The cloud's own words for a refusal that blocked the pass (with its numbers: what is
    /// used, held and needed for QUOTA_EXCEEDED), for status and the doctor.
    pub blocked_message: Option<String>,
    /// Files in the folder this pass left out (unreadable, or a name the library cannot
    /// keep), each with why and what fixes it.
    pub skipped: Vec<SkippedFile>,
    /// Files and folders left out on purpose: system litter (`.DS_Store`, `Thumbs.db`…)
    /// and what `.keepsakeignore` names.
    pub ignored: Vec<String>,
    /// Renames and moves made in the folder, sent as metadata (nothing uploaded).
    pub renames_sent: usize,
    /// Files moved in the folder because they were renamed or moved elsewhere.
    pub renamed_here: usize,
    /// New files whose path another photo already held: the library keeps them under a
    /// numbered name, `(path here, path in the library)`; the file keeps its name here.
    pub numbered: Vec<(String, String)>,
    /// Photos written from a file already here with the same bytes (a copy made
    /// elsewhere): nothing fetched.
    pub copied_here: usize,
    /// Photos brought back from Recently Deleted because their file reappeared at its path.
    pub restored_by_return: usize,
}

/// What the pass under way is doing: files and bytes done out of what it set out to move.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Progress {
    /// "uploading", "downloading" or "idle".
    pub phase: String,
    /// Files done in this phase.
    pub items_done: u64,
    /// Files this phase set out to move.
    pub items_total: u64,
    /// Bytes done in this phase.
    pub bytes_done: u64,
    /// Bytes this phase set out to move.
    pub bytes_total: u64,
    /// The file being moved now.
    pub current: Option<String>,
}

/// Why a pass failed.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The file system failed.
    #[error("file system: {0}")]
    Io(#[from] std::io::Error),
    /// The journal failed.
    #[error("journal: {0}")]
    Journal(#[from] rusqlite::Error),
    /// The journal's schema could not be brought up to date.
    #[error("journal schema: {0}")]
    Migration(String),
    /// Chunking failed.
    #[error(transparent)]
    Delta(#[from] DeltaError),
    /// The cloud refused or could not be reached (see `transient`).
    #[error(transparent)]
    Cloud(#[from] CloudError),
    /// Downloaded content did not match its hash: nothing was written.
    #[error("downloaded content of asset {0} does not match its hash; nothing was written")]
    Corrupt(String),
    /// An edit named something this device does not know.
    #[error("this device knows no {kind} {id:?}; list them with `keepsake device ls`")]
    Unknown {
        /// "asset" or "album".
        kind: &'static str,
        /// The id given.
        id: String,
    },
    /// An edit that can never succeed (an empty album name…).
    #[error("{0}")]
    Invalid(String),
    /// Another agent already syncs with this data directory.
    #[error(
        "another agent is already syncing with the data directory {0}: stop it first — two \
         would each download every new photo into the folder"
    )]
    AlreadyRunning(PathBuf),
}

/// One question's answers about contents, and when it was asked.
#[derive(Default)]
struct LookedUp {
    answers: HashMap<ChunkId, ContentLookup>,
    asked_at: i64,
}

/// A device and its library folder.
pub struct Device<C: Cloud> {
    config: DeviceConfig,
    /// Held while the device is open: one agent per data directory.
    _lock: std::fs::File,
    /// The damaged photos the journal says this device waits for (read once at open, so
    /// following a feed of thousands asks the journal nothing per asset).
    waited_for: HashSet<String>,
    cloud: C,
    journal: Journal,
    clock: Arc<dyn Clock>,
    chunks_acknowledged: u64,
    /// Per-process record, to prove the engine never re-sends what was acknowledged.
    acknowledged_ever: HashSet<ChunkId>,
    acknowledged_again: u64,
    conditions: Option<Snapshot>,
    policy: PolicyConfig,
    /// This pass's upload reservation, shared by every file the pass sends.
    reservation: Option<String>,
    /// What the cloud said of the next new files' contents, asked for all at once, and
    /// when: an answer older than [`LOOKUP_FRESH_MS`] is asked again.
    looked_up: LookedUp,
    /// Bytes this pass may still move (today's mobile-data allowance), if limited.
    budget: Option<u64>,
    /// Why videos wait this pass (on mobile data without unlimited updates), if they do.
    videos_wait: Option<String>,
    /// Why originals are not downloaded this pass, if they are not.
    downloads_wait: Option<String>,
    /// A download was put off this pass: the feed stops there and resumes next time.
    deferred: bool,
    /// Content of the feed's next new assets, fetched on lanes while this one is written.
    ahead: Ahead,
    progress: tokio::sync::watch::Sender<Progress>,
}

/// Videos are judged apart from photos (they wait for Wi-Fi on a metered link).
fn is_video(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    ["mp4", "mov", "m4v", "avi", "mkv"]
        .iter()
        .any(|ext| lower.ends_with(&format!(".{ext}")))
}

/// The UTC day a moment falls in, shifted by the policy's offset (for daily mobile caps).
fn day_of(now_ms: i64, utc_offset_minutes: i32) -> i64 {
    (now_ms + i64::from(utc_offset_minutes) * 60_000).div_euclid(86_400_000)
}

fn mtime_ns(meta: &std::fs::Metadata) -> i64 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as i64)
}

#[cfg(unix)]
fn inode(meta: &std::fs::Metadata) -> u64 {
    std::os::unix::fs::MetadataExt::ino(meta)
}

#[cfg(not(unix))]
fn inode(_meta: &std::fs::Metadata) -> u64 {
    0
}

/// A cloud file name as a safe single path component (never `..`, a path, a hidden or
/// control-character name; `asset-ID` when nothing usable is left).
pub fn safe_name(name: &str, asset_id: &str) -> String {
    let last = name.rsplit(['/', '\\']).next().unwrap_or("");
    let cleaned: String = last
        .chars()
        .filter(|c| !c.is_control())
        .collect::<String>()
        // Dots and spaces in any order: " . .x" must not become the hidden ".x" (found by
        // the file_name fuzz target).
        .trim_start_matches(|c: char| c == '.' || c.is_whitespace())
        .trim_end()
        .to_string();
    if cleaned.is_empty() || cleaned.len() > 255 {
        format!("asset-{asset_id}")
    } else {
        cleaned
    }
}

/// The name an asset's file gets in the folder: [`safe_name`], kept to what every file
/// system a library folder may live on accepts. A memory card or a disk shared with
/// another computer is often exFAT or FAT32, which refuse `<>:"|?*` and a name ending in a
/// dot or a space: a photo named `12:30.jpg` on one device would otherwise fail its
/// download on such a folder on every pass. Names are local, so the library keeps the
/// original one.
pub(crate) fn local_name(name: &str, asset_id: &str) -> String {
    let safe = safe_name(name, asset_id);
    if safe.trim_end_matches(['.', ' ']).is_empty() {
        return format!("asset-{asset_id}");
    }
    paths::portable_component(&safe)
}

/// `name`, or `stem (2).ext`, `stem (3).ext`… whichever does not exist in `dir`.
pub(crate) fn unique_path(dir: &Path, name: &str) -> PathBuf {
    let candidate = dir.join(name);
    if !candidate.exists() {
        return candidate;
    }
    let (stem, ext) = match name.rsplit_once('.') {
        Some((s, e)) if !s.is_empty() => (s.to_string(), format!(".{e}")),
        _ => (name.to_string(), String::new()),
    };
    (2..)
        .map(|n| dir.join(format!("{stem} ({n}){ext}")))
        .find(|p| !p.exists())
        .expect("some name is free")
}

/// A file the device leaves out of sync, and why: shown in the agent's status and by
/// `keepsake doctor` until it is fixed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SkippedFile {
    /// Its path in the folder (a name that is not UTF-8 shown with replacement characters).
    pub path: String,
    /// A stable reason code: `NAME_NOT_UTF8`, `FILE_UNREADABLE` or `SYMLINK_NOT_FOLLOWED`.
    pub reason: String,
    /// What is wrong and what fixes it, for a person.
    pub message: String,
}

impl SkippedFile {
    fn name_not_utf8(path: String) -> Self {
        SkippedFile {
            path,
            reason: "NAME_NOT_UTF8".into(),
            message: "its name is not UTF-8 text, which the library cannot keep: rename it \
                      and it syncs on the next pass"
                .into(),
        }
    }

    fn symlink(path: String) -> Self {
        SkippedFile {
            path,
            reason: "SYMLINK_NOT_FOLLOWED".into(),
            message: "it is a symbolic link, and only what is in the folder itself syncs (a link \
                      could lead out of it, or in a circle): move or copy the photos in"
                .into(),
        }
    }

    fn path_refused(path: String, why: &str) -> Self {
        SkippedFile {
            path,
            reason: "PATH_REFUSED".into(),
            message: format!(
                "the library cannot keep this path ({why}): rename it and it syncs on the \
                 next pass"
            ),
        }
    }

    fn unreadable(path: String, error: &std::io::Error) -> Self {
        SkippedFile {
            path,
            reason: "FILE_UNREADABLE".into(),
            message: format!(
                "the device cannot read it ({error}): check its permissions and the disk; \
                 it syncs on the pass after it can be read"
            ),
        }
    }
}

/// A file of the folder that could not be read just now is left for this pass — named,
/// unless it only vanished (the next scan sees it gone) — so that it stops neither the
/// other files nor the feed; each pass tries it again.
fn left_unread(path: &str, error: &std::io::Error, report: &mut SyncReport) {
    if error.kind() != std::io::ErrorKind::NotFound {
        tracing::warn!(path, %error, "a file in the folder cannot be read");
        report
            .skipped
            .push(SkippedFile::unreadable(path.to_string(), error));
    }
}

/// What a scan found in the folder.
#[derive(Default)]
struct Listing {
    /// Files, by path relative to the folder.
    files: Vec<(String, std::fs::Metadata)>,
    /// Files and directories left out, and why.
    skipped: Vec<SkippedFile>,
    /// Directories that could not be listed: the files the journal has under them are
    /// still there as far as the device knows, never taken for deleted.
    unlisted: Vec<String>,
    /// Files and folders left out on purpose (litter, `.keepsakeignore`): never synced,
    /// never taken for deleted either.
    ignored: Vec<String>,
}

/// Whether `path` is the entry `dir` of the folder or below it (`a/b` is under `a`, `ab/c`
/// is not).
fn is_under(path: &str, dir: &str) -> bool {
    path.strip_prefix(dir)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Lists `dir` into `listing`. Only the folder itself failing to list fails the scan: one
/// odd entry below it must not stop every photo syncing.
fn walk(dir: &Path, prefix: &str, ignore: &Ignore, listing: &mut Listing) -> std::io::Result<()> {
    let below = |name: &str| {
        if prefix.is_empty() {
            name.to_string()
        } else {
            format!("{prefix}/{name}")
        }
    };
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = match entry.file_name().into_string() {
            Ok(name) => name,
            Err(odd) => {
                let shown = below(&odd.to_string_lossy());
                listing.skipped.push(SkippedFile::name_not_utf8(shown));
                continue;
            }
        };
        if name.starts_with(".keepsake") {
            continue;
        }
        let rel = below(&name);
        let meta = match entry.metadata() {
            Ok(meta) => meta,
            // Gone since the directory was read: the next scan sees it gone.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                listing
                    .skipped
                    .push(SkippedFile::unreadable(rel.clone(), &e));
                listing.unlisted.push(rel);
                continue;
            }
        };
        if ignore.ignores(&rel, &name, meta.is_dir()) {
            listing.ignored.push(rel);
            continue;
        }
        if (meta.is_dir() || meta.is_file())
            && let Err(e) = keepsake_path::check(&rel)
        {
            listing
                .skipped
                .push(SkippedFile::path_refused(rel.clone(), e.why));
            if meta.is_dir() {
                listing.unlisted.push(rel);
            }
            continue;
        }
        if meta.is_dir() {
            if let Err(e) = walk(&entry.path(), &rel, ignore, listing) {
                // A directory gone meanwhile is no problem to show, only one to list again.
                if e.kind() != std::io::ErrorKind::NotFound {
                    listing
                        .skipped
                        .push(SkippedFile::unreadable(rel.clone(), &e));
                }
                listing.unlisted.push(rel);
            }
        } else if meta.is_file() {
            listing.files.push((rel, meta));
        } else if meta.file_type().is_symlink() {
            listing.skipped.push(SkippedFile::symlink(rel));
        }
    }
    Ok(())
}

pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// Moves a file to `to` durably (its directory synced after), also onto another file
/// system (the data directory on the disk, the folder on a memory card): there it is
/// copied beside `to` under a name the scan skips, made durable and renamed in, and only
/// then is `from` removed — a crash between leaves two copies, never none.
pub(crate) fn move_file(from: &Path, to: &Path) -> std::io::Result<()> {
    let sync_parent = || to.parent().map_or(Ok(()), sync_dir);
    match std::fs::rename(from, to) {
        Ok(()) => sync_parent(),
        Err(e) if e.kind() == std::io::ErrorKind::CrossesDevices => {
            let name = to.file_name().unwrap_or_default().to_string_lossy();
            let beside = to.with_file_name(format!(".keepsake-part-{name}"));
            std::fs::copy(from, &beside)?;
            let copied = std::fs::File::open(&beside)?;
            copied.sync_all()?;
            // A large library moved across should not leave every page it wrote held,
            // for the same reason a download releases its own.
            keepsake_store::release_written_pages(&copied);
            std::fs::rename(&beside, to)?;
            sync_parent()?;
            tracing::debug!(from = %from.display(), to = %to.display(), "copied across file systems");
            std::fs::remove_file(from)
        }
        Err(e) => Err(e),
    }
}

/// Whether an agent holds the data directory `data_dir` now: `Some(false)` when none
/// does, `None` where the file system cannot tell (no locks on some network mounts).
pub fn agent_running(data_dir: &std::path::Path) -> Option<bool> {
    let file = match std::fs::File::open(data_dir.join(AGENT_LOCK)) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Some(false),
        Err(_) => return None,
    };
    match file.try_lock_shared() {
        Ok(()) => Some(false),
        Err(std::fs::TryLockError::WouldBlock) => Some(true),
        Err(std::fs::TryLockError::Error(_)) => None,
    }
}

impl<C: Cloud> Device<C> {
    /// Opens (or starts) the device's journal and marks a new library folder.
    pub fn open(
        config: DeviceConfig,
        cloud: C,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, DeviceError> {
        std::fs::create_dir_all(config.data_dir.join("tmp"))?;
        std::fs::create_dir_all(config.data_dir.join("recently-deleted"))?;
        let lock = std::fs::File::create(config.data_dir.join(AGENT_LOCK))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(DeviceError::AlreadyRunning(config.data_dir.clone()));
            }
            // A file system without locks (some network mounts): run unguarded, as before.
            Err(std::fs::TryLockError::Error(e)) => {
                tracing::warn!(error = %e, "the data directory cannot be locked; make sure one agent runs");
            }
        }
        let journal = Journal::open(&config.data_dir.join("journal.sqlite"))?;
        if journal.get("folder_marked")?.is_none() {
            // Only a brand-new device claims its folder; after that a missing marker
            // means the folder is not the one we know (unmounted, moved), never "empty".
            std::fs::create_dir_all(&config.folder)?;
            let marker = config.folder.join(MARKER);
            if !marker.exists() {
                std::fs::write(&marker, format!("{}\n", config.device_id))?;
            }
            journal.set("folder_marked", "1")?;
        }
        // Tools that open the journal without the agent (`keepsake open`) learn the folder here.
        let folder = std::path::absolute(&config.folder)?;
        journal.set("folder", &folder.to_string_lossy())?;
        crate::upgrade::keep_files_apart(&journal, clock.now_ms(), &config.device_id)?;
        let waited_for = journal
            .keys_with_prefix(DAMAGED_WAITING)?
            .into_iter()
            .collect();
        Ok(Self {
            config,
            cloud,
            journal,
            _lock: lock,
            waited_for,
            clock,
            chunks_acknowledged: 0,
            acknowledged_ever: HashSet::new(),
            acknowledged_again: 0,
            conditions: None,
            policy: PolicyConfig::default(),
            reservation: None,
            looked_up: LookedUp::default(),
            budget: None,
            videos_wait: None,
            downloads_wait: None,
            deferred: false,
            ahead: Ahead::default(),
            progress: tokio::sync::watch::Sender::new(Progress::default()),
        })
    }

    /// Follows the pass under way: files and bytes done out of the total, and the current file.
    pub fn progress(&self) -> tokio::sync::watch::Receiver<Progress> {
        self.progress.subscribe()
    }

    fn on_cellular(&self) -> bool {
        self.conditions
            .as_ref()
            .is_some_and(|c| c.network == Some(keepsake_policy::Network::Cellular))
    }

    fn cellular_key(&self) -> String {
        format!(
            "cellular_bytes:{}",
            day_of(self.clock.now_ms(), self.policy.utc_offset_minutes)
        )
    }

    /// Bytes moved over mobile data today (by this device's clock and the policy's offset).
    pub fn cellular_used_today(&self) -> Result<u64, DeviceError> {
        Ok(self
            .journal
            .get(&self.cellular_key())?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0))
    }

    /// Whether `bytes` more would overrun today's mobile allowance; says so in the report.
    fn over_budget(&self, bytes: u64, report: &mut SyncReport) -> bool {
        let Some(budget) = self.budget else {
            return false;
        };
        let spent = report.bytes_sent + report.bytes_received;
        if spent + bytes > budget {
            report.blocked = Some("CELLULAR_CAP_REACHED".into());
            return true;
        }
        false
    }

    /// Where the device keeps its library and its data.
    pub fn config(&self) -> &DeviceConfig {
        &self.config
    }

    /// The cloud port (to refresh its credentials, say).
    pub fn cloud_mut(&mut self) -> &mut C {
        &mut self.cloud
    }

    /// Allows the deletes held back by the mass-delete guard, on the next pass.
    pub fn confirm_deletes(&mut self) -> Result<(), DeviceError> {
        self.journal.set("confirm_deletes", "1")?;
        Ok(())
    }

    /// The device's conditions and settings (network, power, storage, sync switch…); every
    /// pass asks the policy what may run under them. `None` runs everything.
    pub fn set_conditions(&mut self, conditions: Option<Snapshot>) {
        self.conditions = conditions;
    }

    /// Where this device has read the change feed to.
    pub fn cursor(&self) -> Result<u64, DeviceError> {
        Ok(self
            .journal
            .get("cursor")?
            .and_then(|c| c.parse().ok())
            .unwrap_or(0))
    }

    /// Chunks the cloud acknowledged to this process, counting passes that failed later.
    pub fn chunks_acknowledged(&self) -> u64 {
        self.chunks_acknowledged
    }

    /// Chunks this process sent and had acknowledged although they had been acknowledged
    /// before (a re-send the engine exists to avoid; zero unless something is wrong).
    pub fn chunks_acknowledged_again(&self) -> u64 {
        self.acknowledged_again
    }

    /// Files in the folder not yet in the cloud.
    pub fn pending_files(&self) -> Result<u64, DeviceError> {
        Ok(self.journal.count_pending()?)
    }

    /// Files in the device's Recently Deleted.
    pub fn recently_deleted(&self) -> Result<u64, DeviceError> {
        Ok(self.journal.count_trashed()?)
    }

    /// Makes an edit on this device: shown at once, sent by the next pass that may send
    /// metadata, kept across restarts until the cloud has it.
    pub fn edit(&mut self, edit: Edit) -> Result<Hlc, DeviceError> {
        edits::queue(
            &self.journal,
            &edit,
            self.clock.now_ms(),
            &self.config.device_id,
        )
    }

    /// Switches Optimize Storage on (with a budget for originals) or off.
    pub fn set_optimize(&mut self, budget: Option<u64>) {
        self.config.optimize_budget = budget;
    }

    /// Space used here: (bytes of originals the cloud holds, bytes of previews, originals
    /// in the cloud only).
    pub fn storage(&self) -> Result<(u64, u64, u64), DeviceError> {
        let previews = match std::fs::read_dir(self.previews_dir()) {
            Ok(entries) => entries
                .filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum(),
            Err(_) => 0,
        };
        Ok((
            self.journal.synced_bytes()?,
            previews,
            self.journal.count_cloud_only()?,
        ))
    }

    /// Where an asset's preview is kept, if the device has it.
    pub fn preview_path(&self, asset_id: &str) -> Option<PathBuf> {
        let path = self.previews_dir().join(format!("{asset_id}.jpg"));
        path.exists().then_some(path)
    }

    fn previews_dir(&self) -> PathBuf {
        self.config.data_dir.join("previews")
    }

    /// Brings an original kept in the cloud only back into the folder, verified; it counts
    /// towards the budget like any other and, being the newest, is evicted last.
    pub async fn fetch_original(&mut self, asset_id: &str) -> Result<PathBuf, DeviceError> {
        let row = self
            .journal
            .cloud_only(asset_id)?
            .ok_or_else(|| DeviceError::Unknown {
                kind: "cloud-only original",
                id: asset_id.to_string(),
            })?;
        let meta = self.journal.meta(asset_id)?;
        let remote = RemoteAsset {
            asset_id: row.asset_id.clone(),
            version: row.version,
            manifest: row.manifest,
            file_hash: row.file_hash,
            size: row.size,
            original_name: keepsake_path::file_name(&row.name).to_string(),
            path: row.name.clone(),
            state: RemoteState::Live,
            favorite: meta.as_ref().is_some_and(|m| m.favorite),
            hidden: meta.as_ref().is_some_and(|m| m.hidden),
            clock: Hlc::default(),
            preview: None,
            damaged: false,
        };
        let mut report = SyncReport::default();
        let (budget, waits) = (self.budget.take(), self.downloads_wait.take());
        let fetched = self.download(&remote, None, None, &mut report).await;
        (self.budget, self.downloads_wait) = (budget, waits);
        fetched?;
        self.journal.remove_cloud_only(asset_id)?;
        let path = self
            .journal
            .file_of_asset(asset_id)?
            .map(|f| self.config.folder.join(f.path))
            .ok_or_else(|| std::io::Error::other("the fetched original was not recorded"))?;
        Ok(path)
    }

    /// Keeps originals within the budget: the oldest synced ones go first, and only when
    /// the cloud acknowledged that exact version (never a pending upload or local edit).
    fn evict(&mut self, report: &mut SyncReport) -> Result<(), DeviceError> {
        let Some(budget) = self.config.optimize_budget else {
            return Ok(());
        };
        let mut held = self.journal.synced_bytes()?;
        if held <= budget {
            return Ok(());
        }
        let mut rows: Vec<FileRow> = self
            .journal
            .files()?
            .into_iter()
            .filter(|f| f.synced)
            .collect();
        rows.sort_by_key(|f| f.mtime_ns);
        for f in rows {
            if held <= budget {
                break;
            }
            let Some(asset) = f.asset_id.as_deref() else {
                continue;
            };
            let Some((version, manifest, _)) = self.journal.current(asset)? else {
                continue;
            };
            if f.version != Some(version) {
                continue;
            }
            // The file must still be what the cloud holds: a change not yet scanned stays.
            if !self.unchanged_since_scan(&f) {
                continue;
            }
            let path = self.config.folder.join(&f.path);
            self.journal.evict(&f, &manifest)?;
            std::fs::remove_file(&path)?;
            held -= f.size;
            report.evicted += 1;
            tracing::info!(path = %f.path, asset, "original evicted; the cloud holds it");
        }
        Ok(())
    }

    /// Under Optimize Storage, every asset's preview is here.
    async fn fetch_previews(&mut self, report: &mut SyncReport) -> Result<(), DeviceError> {
        if self.config.optimize_budget.is_none() {
            return Ok(());
        }
        std::fs::create_dir_all(self.previews_dir())?;
        for (asset_id, preview) in self.journal.previews()? {
            let dest = self.previews_dir().join(format!("{asset_id}.jpg"));
            if dest.exists() {
                continue;
            }
            let manifest = self.cloud.manifest(&preview).await?;
            let ids: Vec<ChunkId> = manifest.entries.iter().map(|e| e.chunk).collect();
            let got: HashMap<ChunkId, Bytes> = self.cloud.chunks(&ids).await?.into_iter().collect();
            let mut bytes = Vec::with_capacity(manifest.total_len as usize);
            for e in &manifest.entries {
                bytes.extend_from_slice(
                    got.get(&e.chunk)
                        .ok_or_else(|| DeviceError::Corrupt(asset_id.clone()))?,
                );
            }
            if ChunkId(*blake3::hash(&bytes).as_bytes()) != manifest.file_hash {
                return Err(DeviceError::Corrupt(asset_id));
            }
            let temp = self
                .config
                .data_dir
                .join("tmp")
                .join(format!("{asset_id}.preview"));
            std::fs::write(&temp, &bytes)?;
            std::fs::rename(&temp, &dest)?;
            report.previews += 1;
        }
        Ok(())
    }

    /// Photos the cloud flagged damaged that this device has no copy of and waits for.
    pub fn damaged_waiting(&self) -> u64 {
        self.waited_for.len() as u64
    }

    /// Edits waiting for the cloud.
    pub fn pending_edits(&self) -> Result<u64, DeviceError> {
        Ok(self.journal.count_outbox()?)
    }

    /// Every asset this device knows, with its metadata and local edits.
    pub fn assets(&self) -> Result<Vec<LocalAsset>, DeviceError> {
        edits::assets(&self.journal)
    }

    /// Every album this device knows.
    pub fn albums(&self) -> Result<Vec<LocalAlbum>, DeviceError> {
        edits::albums(&self.journal)
    }

    /// One full pass: local changes up, then the feed down. A transient cloud error ends
    /// the pass early (`Err`, retry later); permanent ones stop uploads with a reason.
    pub async fn sync_once(&mut self) -> Result<SyncReport, DeviceError> {
        let mut report = SyncReport::default();
        if !self.config.folder.join(MARKER).exists() {
            tracing::warn!(folder = %self.config.folder.display(), "library folder or its marker is missing; nothing is synced or deleted");
            report.blocked = Some("FOLDER_MISSING".into());
            return Ok(report);
        }
        self.videos_wait = None;
        self.downloads_wait = None;
        self.deferred = false;
        let mut policy_reason = None;
        let (may_upload, may_metadata) = match &self.conditions {
            None => (true, true),
            Some(conditions) => {
                let mut now = conditions.clone();
                now.now = self.clock.now_ms();
                now.cellular.used_today_bytes = self.cellular_used_today()?;
                let decision = evaluate(&now, &self.policy);
                self.budget = decision
                    .bandwidth_budget_bytes
                    .filter(|_| self.on_cellular());
                let first_reason = |class: WorkClass| {
                    decision
                        .class(class)
                        .reasons
                        .first()
                        .map(|r| r.code.as_str().to_string())
                };
                self.videos_wait = first_reason(WorkClass::VideoUpload);
                self.downloads_wait = first_reason(WorkClass::OriginalDownload);
                policy_reason = [
                    WorkClass::PhotoUpload,
                    WorkClass::Metadata,
                    WorkClass::VideoUpload,
                    WorkClass::OriginalDownload,
                ]
                .into_iter()
                .find_map(first_reason);
                (
                    decision.allows(WorkClass::PhotoUpload),
                    decision.allows(WorkClass::Metadata),
                )
            }
        };
        // A permanent refusal (an outdated client, a revoked device…) is a reason to show,
        // not a crash: the pass ends with it and the next one tries again.
        self.reservation = None;
        let outcome = async {
            // The scan is local: it runs whatever the network, so status knows what waits.
            let seen = self.scan(&mut report).await?;
            if may_upload {
                self.upload_pending(&seen, &mut report).await?;
            }
            if may_metadata {
                self.send_edits(&mut report).await?;
                self.local_deletes(&seen, &mut report).await?;
            }
            if may_metadata {
                self.pull(&mut report).await?;
                if report.repairs > 0 && may_upload {
                    // The cloud lost content this device holds: send it now, not next pass.
                    self.upload_pending(&seen, &mut report).await?;
                }
                // The feed may predate edits still waiting: they stay what the device shows.
                for (_, edit, _, _) in self.journal.outbox()? {
                    edits::show(&self.journal, &edit)?;
                }
                self.fetch_previews(&mut report).await?;
                // Originals someone opened through DeviceControl or `keepsake open`.
                for asset in self.journal.keys_with_prefix(WANT_ORIGINAL)? {
                    match self.fetch_original(&asset).await {
                        Ok(_) | Err(DeviceError::Unknown { .. }) => {}
                        Err(e) => return Err(e),
                    }
                    self.journal
                        .remove_key(&format!("{WANT_ORIGINAL}{asset}"))?;
                }
            }
            self.evict(&mut report)?;
            Ok::<(), DeviceError>(())
        }
        .await;
        self.ahead = Ahead::default();
        self.progress.send_replace(Progress::default());
        // What the pass itself ran into (a refusal, the cap) comes first; else the policy's.
        if report.blocked.is_none() {
            report.blocked = policy_reason;
        }
        if self.on_cellular() {
            // Counted even when the pass failed: the bytes moved all the same.
            let moved = report.bytes_sent + report.bytes_received;
            let used = self.cellular_used_today()? + moved;
            self.journal.set(&self.cellular_key(), &used.to_string())?;
        }
        let finished = outcome.is_ok();
        if let (false, Some(reservation)) = (finished, self.reservation.clone()) {
            // A pass that failed half-way (a full server disk, a cut connection) gives back
            // what its reservation still held, so it never makes the plan look full to the
            // other devices. If the cloud cannot be told, the next pass takes the same
            // reservation up again (its request id stays in the journal).
            if self.cloud.end_upload(&reservation).await.is_ok() {
                self.journal.remove_key(PASS_RESERVATION)?;
            }
        }
        match outcome {
            Err(DeviceError::Cloud(e)) if !e.transient => {
                tracing::warn!(reason = %e.reason, message = %e.message, "sync refused");
                report.blocked = Some(e.reason.to_string());
                report.blocked_message = Some(e.message);
            }
            other => other?,
        }
        if finished && report.blocked.is_none() && self.pending_files()? == 0 {
            // Everything is sent: the next new file starts a reservation of its own size.
            self.journal.remove_key(PASS_RESERVATION)?;
        }
        tracing::info!(?report, "sync pass done");
        Ok(report)
    }

    /// Looks at the folder and journals what changed; no network.
    async fn scan(&mut self, report: &mut SyncReport) -> Result<HashSet<String>, DeviceError> {
        let mut listing = Listing::default();
        let ignore = Ignore::of(&self.config.folder);
        walk(&self.config.folder, "", &ignore, &mut listing)?;
        let on_disk = listing.files;
        let mut seen: HashSet<String> = on_disk.iter().map(|(p, _)| p.clone()).collect();
        let kept_out: Vec<&String> = listing.unlisted.iter().chain(&listing.ignored).collect();
        if !kept_out.is_empty() {
            for row in self.journal.files()? {
                if kept_out.iter().any(|dir| is_under(&row.path, dir)) {
                    seen.insert(row.path);
                }
            }
        }
        report.skipped = listing.skipped;
        report.ignored = listing.ignored;
        if self.journal.get(FOUND_FULL)?.is_none() {
            let full = !on_disk.is_empty() && self.journal.files()?.is_empty();
            self.journal.set(FOUND_FULL, if full { "1" } else { "0" })?;
        }
        // Rows whose file is gone from its path: moved (paired below, by inode, then by
        // content), or deleted (the rest, once the pass gets to deletes).
        let mut vanished: Vec<FileRow> = self
            .journal
            .files()?
            .into_iter()
            .filter(|r| !seen.contains(&r.path))
            .collect();
        let mut moves: Vec<(FileRow, String)> = Vec::new();
        if !vanished.is_empty() {
            // The same inode, size and time: the same file under another name. (An inode
            // alone is no proof: a file deleted frees it for the next one written.) By key,
            // so a folder of 10,000 photos renamed pairs in one look each.
            let mut by_stat: HashMap<(u64, u64, i64), Vec<FileRow>> = HashMap::new();
            for v in vanished.drain(..) {
                by_stat
                    .entry((v.inode, v.size, v.mtime_ns))
                    .or_default()
                    .push(v);
            }
            for (path, meta) in &on_disk {
                let key = (inode(meta), meta.len(), mtime_ns(meta));
                if key.0 == 0 || !by_stat.contains_key(&key) || self.journal.file(path)?.is_some() {
                    continue;
                }
                let Some(from) = by_stat.get_mut(&key).and_then(Vec::pop) else {
                    continue;
                };
                let mut row = from.clone();
                row.path = path.clone();
                self.journal.relocate(&from.path, &row)?;
                moves.push((from, path.clone()));
            }
            vanished = by_stat.into_values().flatten().collect();
            vanished.sort_by(|a, b| a.path.cmp(&b.path));
        }
        let mut fresh: Vec<String> = Vec::new();
        let now = self.clock.now_ms() * 1_000_000;
        for (path, meta) in &on_disk {
            let known = self.journal.file(path)?;
            let (size, mtime, ino) = (meta.len(), mtime_ns(meta), inode(meta));
            // A file rewritten within the file system's timestamp granularity keeps its
            // stat; only a stat old enough to have settled is trusted without hashing.
            if let Some(k) = &known
                && (k.size, k.mtime_ns, k.inode) == (size, mtime, ino)
                && now - mtime > RACY_WINDOW_NS
            {
                continue;
            }
            // A file stamped in the future (the clock was set back after it was written)
            // is not "being written": waiting for the clock to catch up could take hours.
            let age = now - mtime;
            if self.config.stable_ms > 0 && (0..self.config.stable_ms * 1_000_000).contains(&age) {
                report.unstable += 1;
                continue;
            }
            let file_hash = match self.hash_file(path).await {
                Ok(hash) => hash,
                // Left as the journal has it (a synced file stays synced, not deleted).
                Err(DeviceError::Io(e)) => {
                    left_unread(path, &e, report);
                    continue;
                }
                Err(e) => return Err(e),
            };
            let mut row = FileRow {
                path: path.clone(),
                size,
                mtime_ns: mtime,
                inode: ino,
                file_hash,
                asset_id: None,
                version: None,
                synced: false,
                lib_path: None,
                nonce: 0,
            };
            match &known {
                Some(k) => (row.lib_path, row.nonce) = (k.lib_path.clone(), k.nonce),
                None => {
                    row.nonce = self.journal.next_nonce()?;
                    fresh.push(path.clone());
                }
            }
            match known {
                // Touched or copied over with the same bytes: only the stat changed.
                Some(k) if k.file_hash == file_hash => {
                    row.asset_id = k.asset_id;
                    row.version = k.version;
                    row.synced = k.synced;
                }
                // A local edit of a synced file becomes a new version of its asset.
                Some(k) => {
                    row.asset_id = k.asset_id;
                    row.version = k.version;
                }
                None => {}
            }
            self.journal.upsert(&row)?;
        }
        // A file gone from one path while a new one has its exact bytes moved there (a
        // rename across file systems, a copy then a delete): one to one, in path order.
        for path in fresh {
            if vanished.is_empty() {
                break;
            }
            let Some(new) = self.journal.file(&path)? else {
                continue;
            };
            if let Some(at) = vanished.iter().position(|v| v.file_hash == new.file_hash) {
                let from = vanished.swap_remove(at);
                let row = FileRow {
                    path: new.path.clone(),
                    size: new.size,
                    mtime_ns: new.mtime_ns,
                    inode: new.inode,
                    ..from.clone()
                };
                self.journal.relocate(&from.path, &row)?;
                moves.push((from, new.path));
            }
        }
        for (from, to) in moves {
            self.moved_here(&from, &to, report)?;
        }
        Ok(seen)
    }

    /// Journals a rename or move a person made in the folder as an edit for every other
    /// device (nothing is uploaded). A file not yet in the library just commits at its
    /// new path.
    fn moved_here(
        &mut self,
        from: &FileRow,
        to: &str,
        report: &mut SyncReport,
    ) -> Result<(), DeviceError> {
        tracing::info!(from = %from.path, to, asset = ?from.asset_id, "moved in the folder");
        let Some(asset_id) = from.asset_id.clone() else {
            return Ok(());
        };
        let edit = Edit::Rename {
            asset_id,
            path: to.to_string(),
        };
        self.journal
            .queue_edit(&edit, self.clock.now_ms(), &self.config.device_id)?;
        edits::show(&self.journal, &edit)?;
        if let Some(mut row) = self.journal.file(to)? {
            row.lib_path = Some(to.to_string());
            self.journal.upsert(&row)?;
        }
        report.renames_sent += 1;
        Ok(())
    }

    /// Sends every pending file that is still in the folder, several at once when the
    /// cloud offers lanes: one file's fsyncs on the cloud overlap the next one's transfer.
    async fn upload_pending(
        &mut self,
        seen: &HashSet<String>,
        report: &mut SyncReport,
    ) -> Result<(), DeviceError> {
        let rows: Vec<FileRow> = self
            .journal
            .files()?
            .into_iter()
            .filter(|r| !r.synced && seen.contains(&r.path))
            .collect();
        self.progress.send_replace(Progress {
            phase: "uploading".into(),
            items_total: rows.len() as u64,
            bytes_total: rows.iter().map(|r| r.size).sum(),
            ..Progress::default()
        });
        let mut flying = Flying::new((0..UPLOAD_LANES).map_while(|_| self.cloud.lane()).collect());
        let sent = self.send_each(&rows, &mut flying, report).await;
        self.looked_up.answers.clear();
        // Whatever is in flight lands (and is journaled) even when one file failed.
        let landed = self.land_all(&mut flying, report).await;
        sent.and(landed)
    }

    /// Prepares each row in turn and sends it on an idle lane, or on the pass's own
    /// connection when the cloud has no lanes.
    async fn send_each(
        &mut self,
        rows: &[FileRow],
        flying: &mut Flying<C>,
        report: &mut SyncReport,
    ) -> Result<(), DeviceError> {
        let mut ahead = ReadAhead::default();
        for (at, row) in rows.iter().enumerate() {
            // Files in flight count in full against a mobile allowance until they land.
            if report.blocked.is_some() || self.over_budget(row.size + flying.bytes, report) {
                break;
            }
            if self.videos_wait.is_some() && is_video(&row.path) {
                continue;
            }
            // The same content already on its way: once it lands, this file is its twin
            // and is linked without sending anything.
            if flying.hashes.contains(&row.file_hash) {
                self.land_all(flying, report).await?;
            }
            self.progress
                .send_modify(|p| p.current = Some(row.path.clone()));
            let lookup = match row.asset_id {
                Some(_) => None,
                None => Some(self.looked_up(&rows[at..]).await?),
            };
            let read = ahead.take(at);
            self.read_ahead(rows, at, &mut ahead, &flying.hashes)?;
            let Some(shipment) = self.prepare(row, lookup, read, report).await? else {
                self.progress.send_modify(|p| p.items_done += 1);
                continue;
            };
            let Content::Held { manifest, data } = &shipment.content else {
                // Its chunks are known only as they are read: it goes alone, on streams
                // of its own, so none of them can be on another lane.
                self.land_all(flying, report).await?;
                let shipped = ship(&mut self.cloud, shipment).await;
                self.land(shipped, report)?;
                continue;
            };
            // A shared chunk would be sent twice by two lanes; too many bytes in memory
            // at once would follow the largest videos. Either waits for the lanes.
            let shares = manifest
                .entries
                .iter()
                .any(|e| flying.chunks.contains(&e.chunk));
            if shares || flying.bytes + data.len() as u64 > LANE_BYTES {
                self.land_all(flying, report).await?;
            }
            while flying.idle.is_empty() && !flying.tasks.is_empty() {
                self.land_next(flying, report).await?;
            }
            match flying.idle.pop() {
                Some(lane) => flying.launch(lane, shipment),
                None => {
                    let shipped = ship(&mut self.cloud, shipment).await;
                    self.land(shipped, report)?;
                }
            }
        }
        Ok(())
    }

    /// What the cloud knows of the first row's content. Asked about with the contents of
    /// the next new files (up to [`LOOKUPS_AHEAD`]): one round trip for them all instead of
    /// one each. An answer is used no longer than [`LOOKUP_FRESH_MS`], so "deleted elsewhere
    /// for good" is never learnt late.
    async fn looked_up(&mut self, rows: &[FileRow]) -> Result<ContentLookup, DeviceError> {
        let hash = rows[0].file_hash;
        if let Some(lookup) = self.fresh_lookup(&hash) {
            return Ok(lookup.clone());
        }
        let mut seen = HashSet::new();
        let next: Vec<ChunkId> = rows
            .iter()
            .filter(|r| r.asset_id.is_none() && seen.insert(r.file_hash))
            .map(|r| r.file_hash)
            .take(LOOKUPS_AHEAD)
            .collect();
        // An answer is as old as its question.
        let asked_at = self.clock.now_ms();
        let found = self.cloud.lookups(&next).await?;
        self.looked_up = LookedUp {
            answers: next.into_iter().zip(found).collect(),
            asked_at,
        };
        Ok(self
            .looked_up
            .answers
            .get(&hash)
            .cloned()
            .unwrap_or_default())
    }

    /// The answer about `hash` from the last content question, if it is fresh enough.
    fn fresh_lookup(&self, hash: &ChunkId) -> Option<&ContentLookup> {
        let fresh = self.clock.now_ms() - self.looked_up.asked_at < LOOKUP_FRESH_MS;
        self.looked_up.answers.get(hash).filter(|_| fresh)
    }

    /// What makes a new file's upload unnecessary, if anything. A file is an asset: a
    /// copy of a photo under another name is a photo of its own (its chunks are the cloud's
    /// already, so nothing but its manifest travels). Only the same file is linked: an
    /// asset with this content at this very path that no file here claims (another
    /// device's photo put here by hand, or a photo brought back to its place while in
    /// Recently Deleted) — and, on a device that lost its journal (a reinstall over a full
    /// folder), any unclaimed asset with this content, path and content first.
    fn no_upload_needed(
        &self,
        row: &FileRow,
        lookup: &ContentLookup,
    ) -> Result<Option<NoUpload>, DeviceError> {
        let key = keepsake_path::fold(&row.path);
        // An asset another file here sent and has not heard back about is that file's.
        let mut awaited = HashSet::new();
        for nonce in self.journal.keys_with_prefix(ATTEMPT)? {
            if let Some(attempt) = self.journal.get(&format!("{ATTEMPT}{nonce}"))? {
                let sent_path = attempt.split_once(' ').map_or("", |(_, p)| p);
                awaited.insert(sent_path.to_string());
            }
        }
        let mut unclaimed = Vec::new();
        for holder in &lookup.assets {
            if self.journal.file_of_asset(&holder.asset_id)?.is_none()
                && self.journal.trashed(&holder.asset_id)?.is_none()
                && !awaited.contains(&paths::unnumbered(&holder.path))
                && !awaited.contains(&holder.path)
            {
                unclaimed.push(holder);
            }
        }
        // At its path: where this device would have put that asset.
        if let Some(at_path) = unclaimed
            .iter()
            .find(|h| paths::local_path(&h.path, self.config.fs) == row.path)
        {
            return Ok(Some(NoUpload::InCloud((*at_path).clone())));
        }
        if !self.reinstalling()? {
            return Ok(None);
        }
        // Path first for every file: an asset at the path of another file here is that
        // file's (the same, or edited since), not this one's.
        for live in unclaimed.iter().filter(|h| !h.trashed) {
            if self.journal.file(&live.path)?.is_none() {
                return Ok(Some(NoUpload::InCloud((*live).clone())));
            }
        }
        let purged_here = lookup
            .purged_paths
            .iter()
            .any(|p| keepsake_path::fold(p) == key);
        Ok(purged_here.then_some(NoUpload::Purged))
    }

    /// Whether a new file was sent before without its answer journalled. If it has been
    /// edited since and the library has an asset of the content it was sent with, at its
    /// path (or the path it was renamed from), that no file here claims, the file is that
    /// asset: its new bytes go as a new version.
    async fn adopt_own_lost_commit(&mut self, row: &mut FileRow) -> Result<bool, DeviceError> {
        let key = format!("{ATTEMPT}{}", row.nonce);
        let Some(attempt) = self.journal.get(&key)? else {
            return Ok(false);
        };
        let (sent, sent_path) = attempt.split_once(' ').unwrap_or((&attempt, ""));
        let sent_path = keepsake_path::fold(sent_path);
        let Ok(sent) = hex::decode(sent)
            .map_err(|_| ())
            .and_then(|b| ChunkId::from_slice(&b).map_err(|_| ()))
        else {
            self.journal.remove_key(&key)?;
            return Ok(false);
        };
        if sent == row.file_hash {
            // Sent as it is: the retry, same request id, gets the first answer.
            return Ok(true);
        }
        let found = self.cloud.lookups(&[sent]).await?;
        let here = keepsake_path::fold(&row.path);
        let mut own = None;
        for holder in found.into_iter().flat_map(|l| l.assets) {
            let at = keepsake_path::fold(&paths::unnumbered(&holder.path));
            if !holder.trashed
                && (at == here || at == sent_path)
                && self.journal.file_of_asset(&holder.asset_id)?.is_none()
            {
                own = Some(holder);
                break;
            }
        }
        self.journal.remove_key(&key)?;
        let Some(holder) = own else {
            return Ok(false);
        };
        tracing::info!(path = %row.path, asset = %holder.asset_id, "a commit whose answer was lost: the file's edit goes as its new version");
        row.asset_id = Some(holder.asset_id.clone());
        row.version = Some(holder.version);
        row.lib_path = Some(holder.path.clone());
        self.rename_if_moved(row, &holder.asset_id, &holder.path)?;
        self.journal.upsert(row)?;
        Ok(true)
    }

    /// A file committed (or first sent) at a path it has left since: the library has the
    /// asset at `lib_path`, and the move goes as a rename.
    fn rename_if_moved(
        &mut self,
        row: &mut FileRow,
        asset_id: &str,
        lib_path: &str,
    ) -> Result<bool, DeviceError> {
        if paths::unnumbered(lib_path) == paths::unnumbered(&row.path) {
            return Ok(false);
        }
        let edit = Edit::Rename {
            asset_id: asset_id.to_string(),
            path: row.path.clone(),
        };
        self.journal
            .queue_edit(&edit, self.clock.now_ms(), &self.config.device_id)?;
        row.lib_path = Some(row.path.clone());
        Ok(true)
    }

    /// Whether this device found its folder full when its journal was new (a reinstall,
    /// or a device joining with a copy of the library) and has not read the feed yet: its
    /// files may be the library's own under other names. A device that started empty
    /// never is: each file it sees was made here.
    fn reinstalling(&self) -> Result<bool, DeviceError> {
        Ok(self.journal.get(FOUND_FULL)?.as_deref() == Some("1")
            && self.journal.get("cursor")?.is_none())
    }

    /// Waits for one file in flight and journals what it did.
    async fn land_next(
        &mut self,
        flying: &mut Flying<C>,
        report: &mut SyncReport,
    ) -> Result<(), DeviceError> {
        let Some(joined) = flying.tasks.join_next().await else {
            return Ok(());
        };
        let (lane, shipped) = joined.map_err(|e| std::io::Error::other(e.to_string()))?;
        flying.idle.push(lane);
        flying.hashes.remove(&shipped.row.file_hash);
        flying.bytes = flying.bytes.saturating_sub(shipped.row.size);
        if flying.tasks.is_empty() {
            flying.chunks.clear();
        }
        self.land(shipped, report)
    }

    /// Waits for every file in flight; the first failure is returned after all landed.
    async fn land_all(
        &mut self,
        flying: &mut Flying<C>,
        report: &mut SyncReport,
    ) -> Result<(), DeviceError> {
        let mut first = Ok(());
        while !flying.tasks.is_empty() {
            let landed = self.land_next(flying, report).await;
            if first.is_ok() {
                first = landed;
            }
        }
        first
    }

    /// The file's whole-file hash, streamed: the scan needs only this, and chunking (three
    /// times the work) waits until the file is uploaded.
    async fn hash_file(&self, path: &str) -> Result<ChunkId, DeviceError> {
        let full = self.config.folder.join(path);
        keepsake_store::offload(move || -> Result<ChunkId, DeviceError> {
            Ok(whole_file_hash(&full)?)
        })
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))?
    }

    /// Starts reading and chunking one file in the background.
    fn read_and_chunk(&self, path: &str) -> Reading {
        let full = self.config.folder.join(path);
        keepsake_store::offload(move || -> Result<(Manifest, Bytes), DeviceError> {
            fail::fail_point!("device-reading-a-file", |_| Err(
                std::io::Error::from_raw_os_error(5).into()
            ));
            let data = std::fs::read(&full)?;
            let manifest = manifest_of(&data, ChunkParams::for_len(data.len() as u64));
            Ok((manifest, Bytes::from(data)))
        })
    }

    /// Whether `row`'s upload will need its bytes, as far as this pass can tell without
    /// asking: not already linked by the journal or a fresh content lookup, not purged.
    fn will_send(&self, row: &FileRow, flying: &HashSet<ChunkId>) -> Result<bool, DeviceError> {
        if row.asset_id.is_some() {
            return Ok(true);
        }
        if flying.contains(&row.file_hash) || (self.videos_wait.is_some() && is_video(&row.path)) {
            return Ok(false);
        }
        match self.fresh_lookup(&row.file_hash) {
            Some(lookup) => Ok(self.no_upload_needed(row, lookup)?.is_none()),
            None => Ok(false),
        }
    }

    /// Starts reading the files after row `at` that will be sent, within the read-ahead's
    /// bounds, so the next file is chunked while the lanes carry the ones before it.
    fn read_ahead(
        &self,
        rows: &[FileRow],
        at: usize,
        ahead: &mut ReadAhead,
        flying: &HashSet<ChunkId>,
    ) -> Result<(), DeviceError> {
        ahead.next = ahead.next.max(at + 1);
        while ahead.reads.len() < READ_AHEAD_FILES && ahead.next < rows.len() {
            let row = &rows[ahead.next];
            if !self.will_send(row, flying)? || row.size >= self.config.streamed_from {
                ahead.next += 1;
                continue;
            }
            if ahead.bytes() + row.size > READ_AHEAD_BYTES {
                break;
            }
            let reading = self.read_and_chunk(&row.path);
            ahead.reads.push_back((ahead.next, row.size, reading));
            ahead.next += 1;
        }
        Ok(())
    }

    /// Readies one pending file: linked if the cloud already has it, skipped if it was
    /// purged elsewhere (`None` for both), else everything its upload needs.
    async fn prepare(
        &mut self,
        row: &FileRow,
        lookup: Option<ContentLookup>,
        read: Option<Reading>,
        report: &mut SyncReport,
    ) -> Result<Option<Shipment>, DeviceError> {
        let mut row = row.clone();
        // A file sent before: its first content may be an asset already (then what it
        // holds now is an edit of it), or the retry gets the first answer. Either way it
        // is not linked to anything else.
        let sent_before = row.asset_id.is_none() && self.adopt_own_lost_commit(&mut row).await?;
        let no_upload = match &row.asset_id {
            Some(_) => None,
            None if sent_before => None,
            None => self.no_upload_needed(&row, &lookup.unwrap_or_default())?,
        };
        match no_upload {
            None => {}
            Some(NoUpload::InCloud(holder)) => {
                (row.asset_id, row.version, row.synced) =
                    (Some(holder.asset_id.clone()), Some(holder.version), true);
                // The file keeps its name here; the library's path is what it agreed with.
                row.lib_path = Some(holder.path.clone());
                self.journal.upsert(&row)?;
                if holder.trashed {
                    let edit = Edit::Restore {
                        asset_id: holder.asset_id,
                    };
                    self.journal
                        .queue_edit(&edit, self.clock.now_ms(), &self.config.device_id)?;
                    edits::show(&self.journal, &edit)?;
                    report.restored_by_return += 1;
                } else {
                    report.linked += 1;
                }
                return Ok(None);
            }
            Some(NoUpload::Purged) => {
                // Deleted elsewhere for good: never upload it again. The file leaves the
                // folder for the device's own data, where nothing syncs it.
                let parked = self
                    .config
                    .data_dir
                    .join("recently-deleted")
                    .join(format!("purged-{}", hex::encode(&row.file_hash.0[..8])));
                move_file(&self.config.folder.join(&row.path), &parked)?;
                self.journal.remove(&row.path)?;
                report.not_resurrected += 1;
                return Ok(None);
            }
        }
        // Linking needs only the scan's hash: a file changed since is linked as it was
        // scanned, and the next scan sends the change as a new version. An edit of a
        // large video streams too: FindMissing, batch by batch, keeps what the cloud holds
        // off the wire — chunks rather than span deltas, which need the new file whole.
        let content = if row.size >= self.config.streamed_from {
            tracing::info!(target: STREAMED_EVENTS, path = %row.path, size = row.size, "sending in batches");
            Content::Streamed {
                path: self.config.folder.join(&row.path),
                batch_bytes: self.config.stream_batch_bytes,
            }
        } else {
            if read.is_some() {
                report.read_ahead += 1;
            }
            let read = read.unwrap_or_else(|| self.read_and_chunk(&row.path));
            let (manifest, data) = match read
                .await
                .map_err(|e| std::io::Error::other(e.to_string()))?
            {
                Ok(read) => read,
                Err(DeviceError::Io(e)) => {
                    left_unread(&row.path, &e, report);
                    return Ok(None);
                }
                Err(e) => return Err(e),
            };
            if manifest.file_hash != row.file_hash {
                // Changed since it was scanned: the next pass sees the new content.
                return Ok(None);
            }
            Content::Held { manifest, data }
        };
        let entries = match &content {
            Content::Held { manifest, .. } => manifest.entries.len() as u64,
            // At most one entry per smallest chunk.
            Content::Streamed { .. } => {
                row.size / u64::from(ChunkParams::for_len(row.size).min) + 1
            }
        };
        let overhead = 64 + 36 * entries;
        // A new file's own number keeps two new files with the same bytes two commits.
        let new_file = format!("new:{}", row.nonce);
        let key = commit_key(
            &self.config.device_id,
            match (&row.asset_id, row.nonce) {
                (Some(asset_id), _) => Some(asset_id.as_str()),
                (None, 0) => None,
                (None, _) => Some(new_file.as_str()),
            },
            &row.file_hash,
        );
        let session = match self.reservation.clone() {
            Some(session) => session,
            None => {
                // One reservation for everything this pass will send: one round trip and
                // one quota check instead of one per file. If it all does not fit, what
                // fits still goes, one file at a time.
                let pending: u64 = self
                    .journal
                    .files()?
                    .iter()
                    .filter(|f| !f.synced)
                    .map(|f| f.size + 64 + f.size / 1024)
                    .sum();
                // The same request id until everything is sent: a pass that failed half-way
                // (a full server disk, a cut connection, a crash) takes up its reservation
                // again instead of leaving one more lease behind for every retry.
                let pass_key = match self.journal.get(PASS_RESERVATION)? {
                    Some(key) => key,
                    None => {
                        let key = format!("{}:pass:{}", self.config.device_id, self.clock.now_ms());
                        self.journal.set(PASS_RESERVATION, &key)?;
                        key
                    }
                };
                let reserved = match self
                    .cloud
                    .begin_upload(pending.max(row.size), &pass_key)
                    .await
                {
                    Ok(s) => {
                        self.reservation = Some(s.clone());
                        Ok(s)
                    }
                    Err(e) if e.reason == Reason::QuotaExceeded => {
                        self.cloud.begin_upload(row.size + overhead, &key).await
                    }
                    Err(e) => Err(e),
                };
                match reserved {
                    Ok(s) => s,
                    Err(e) if !e.transient => {
                        tracing::warn!(path = %row.path, reason = %e.reason, message = %e.message, "upload refused");
                        report.blocked = Some(e.reason.to_string());
                        report.blocked_message = Some(e.message.clone());
                        return Ok(None);
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        };
        let base = match &row.asset_id {
            Some(asset_id) => match self.journal.current(asset_id)? {
                Some((_, id, _)) => Some((id, self.journal.kept_manifest(&id)?)),
                None => None,
            },
            None => None,
        };
        if row.asset_id.is_none() && row.nonce > 0 {
            // Remembered until the commit's answer is journalled: a reply lost and the file
            // edited before the retry would otherwise leave its first commit an asset no
            // file is (the retry, of other bytes, has another request id).
            self.journal.set(
                &format!("{ATTEMPT}{}", row.nonce),
                &format!("{} {}", hex::encode(row.file_hash.0), row.path),
            )?;
        }
        Ok(Some(Shipment {
            acked: self.journal.acked(&row.file_hash)?.into_iter().collect(),
            base,
            content,
            draft: Draft {
                request_id: key,
                path: row.path.clone(),
                original_name: row.path.rsplit('/').next().unwrap_or(&row.path).to_string(),
                file_time_ms: row.mtime_ns / 1_000_000,
                reservation_id: session,
                asset_id: row.asset_id.clone(),
                base_version: row.version,
            },
            row,
        }))
    }

    /// Journals what one file's upload did: the chunks the cloud acknowledged (even when
    /// it failed after), then the commit.
    fn land(&mut self, shipped: Shipped, report: &mut SyncReport) -> Result<(), DeviceError> {
        let Shipped {
            mut row,
            sent,
            outcome,
        } = shipped;
        let acknowledged: Vec<ChunkId> = sent.whole.iter().chain(&sent.by_delta).copied().collect();
        if !acknowledged.is_empty() {
            fail::fail_point!("device-after-chunks-before-journal");
            self.journal.record_acked(&row.file_hash, &acknowledged)?;
        }
        self.chunks_acknowledged += acknowledged.len() as u64;
        for id in &acknowledged {
            if !self.acknowledged_ever.insert(*id) {
                self.acknowledged_again += 1;
            }
        }
        report.chunks_sent += acknowledged.len();
        report.chunks_by_delta += sent.by_delta.len();
        report.bytes_sent += sent.bytes;
        let (reply, manifest) = match outcome {
            Ok(landed) => landed,
            Err(Shipping::Changed) => {
                // Changed since it was scanned, found while it streamed: the next pass
                // sends what it became; chunks already sent are the cloud's to collect.
                tracing::debug!(path = %row.path, "changed while it was sent");
                return Ok(());
            }
            Err(Shipping::Reading(DeviceError::Io(e))) => {
                left_unread(&row.path, &e, report);
                return Ok(());
            }
            Err(Shipping::Reading(e)) => return Err(e),
            Err(Shipping::Committing(e))
                if row.asset_id.is_some() && e.reason == Reason::AssetNotLive =>
            {
                // Edited here while another device deleted the photo: the edit becomes a
                // photo of its own (the original stays in Recently Deleted), sent on the next
                // pass — refused as a new version, it would block every pass for good. Only
                // this reason: a NOT_FOUND may name the reservation, which the next pass renews.
                tracing::warn!(path = %row.path, asset = ?row.asset_id, reason = %e.reason, "edited here but deleted elsewhere: kept as a new photo");
                row.asset_id = None;
                row.version = None;
                row.synced = false;
                self.journal.upsert(&row)?;
                report.kept_apart += 1;
                return Ok(());
            }
            Err(Shipping::Committing(e)) if !e.transient => {
                tracing::warn!(path = %row.path, reason = %e.reason, message = %e.message, "commit refused");
                report.blocked = Some(e.reason.to_string());
                report.blocked_message = Some(e.message.clone());
                return Ok(());
            }
            Err(Shipping::Committing(e) | Shipping::Sending(e)) => return Err(e.into()),
        };
        fail::fail_point!("device-after-commit-before-journal");
        if row.asset_id.is_none() && reply.path != row.path {
            // Another photo held the name (every phone names its files IMG_0001…): the
            // library numbered this one. The file keeps its name here.
            tracing::info!(path = %row.path, library = %reply.path, "the library numbered a taken name");
            report.numbered.push((row.path.clone(), reply.path.clone()));
        }
        if row.lib_path.is_none() {
            row.lib_path = Some(reply.path.clone());
            // A retry of a commit made before the file was renamed: the library has it at
            // its old path, and the rename goes as one.
            if self.rename_if_moved(&mut row, &reply.asset_id, &reply.path)? {
                report.renames_sent += 1;
            }
        }
        row.asset_id = Some(reply.asset_id);
        row.version = Some(reply.version);
        row.synced = true;
        if row.nonce > 0 {
            self.journal
                .remove_key(&format!("{ATTEMPT}{}", row.nonce))?;
        }
        self.journal.upsert(&row)?;
        self.journal.forget_acked(&row.file_hash)?;
        self.journal.keep_manifest(&manifest)?;
        if reply.deduplicated {
            report.linked += 1;
        } else {
            report.uploaded += 1;
            if row.size >= self.config.streamed_from {
                report.streamed += 1;
            }
        }
        self.progress.send_modify(|p| {
            p.items_done += 1;
            p.bytes_done += row.size;
        });
        Ok(())
    }

    /// Files gone from the folder go to Recently Deleted everywhere — unless they only
    /// moved, or so many vanished at once that the folder itself is suspect.
    async fn local_deletes(
        &mut self,
        seen: &HashSet<String>,
        report: &mut SyncReport,
    ) -> Result<(), DeviceError> {
        let rows = self.journal.files()?;
        let present_assets: HashSet<String> = rows
            .iter()
            .filter(|r| seen.contains(&r.path))
            .filter_map(|r| r.asset_id.clone())
            .collect();
        let mut deletes = Vec::new();
        for row in rows.iter().filter(|r| !seen.contains(&r.path)) {
            // Moves were paired by the scan. A file whose asset another file here still
            // shows is one of two files an older version of the device linked to one asset:
            // the asset stays while any of its files does.
            let moved = row
                .asset_id
                .as_ref()
                .is_some_and(|a| present_assets.contains(a));
            // A photo the library has goes to Recently Deleted even when this device had
            // changed it since (an edit not yet sent): the person deleted the photo, and the
            // edit goes with it. Only content the library never had leaves no trace.
            if moved || row.asset_id.is_none() {
                self.journal.remove(&row.path)?;
            } else {
                deletes.push(row.clone());
            }
        }
        let synced = rows.iter().filter(|r| r.synced).count().max(1);
        let confirmed = self.journal.get("confirm_deletes")?.as_deref() == Some("1");
        if !confirmed
            && deletes.len() > self.config.mass_delete_min
            && deletes.len() as f64 > self.config.mass_delete_share * synced as f64
        {
            tracing::warn!(
                count = deletes.len(),
                "many files vanished at once; deletes wait for confirmation"
            );
            report.blocked = Some("DELETES_NEED_CONFIRMATION".into());
            return Ok(());
        }
        // Sent as edits are, many a call: deleting 300 photos is one round trip, not 300.
        // Trash ignores clocks: the default stamp is never compared.
        for batch in deletes.chunks(EDITS_PER_CALL) {
            let trashes: Vec<(Edit, Hlc)> = batch
                .iter()
                .map(|row| {
                    let asset_id = row.asset_id.clone().unwrap_or_default();
                    (Edit::Trash { asset_id }, Hlc::default())
                })
                .collect();
            for (row, answer) in batch.iter().zip(self.cloud.edits(&trashes).await?) {
                match answer {
                    Ok(()) => {}
                    // Already gone in the cloud: nothing left to delete.
                    Err(e) if matches!(e.reason, Reason::NotFound | Reason::AssetNotLive) => {}
                    Err(e) => return Err(e.into()),
                }
                self.journal.remove(&row.path)?;
                report.trashed_remotely += 1;
            }
        }
        if confirmed {
            self.journal.set("confirm_deletes", "")?;
        }
        Ok(())
    }

    /// Sends the outbox in order, up to [`EDITS_PER_CALL`] edits a call. A transient failure
    /// ends the pass (the rest waits); an edit refused for good is dropped with a log line,
    /// so one stale edit never blocks the ones behind it.
    async fn send_edits(&mut self, report: &mut SyncReport) -> Result<(), DeviceError> {
        let outbox = self.journal.outbox()?;
        for batch in outbox.chunks(EDITS_PER_CALL) {
            let edits: Vec<(Edit, Hlc)> = batch
                .iter()
                .map(|(_, edit, wall_ms, counter)| {
                    let stamp = Hlc {
                        wall_ms: *wall_ms,
                        counter: *counter,
                        device: self.config.device_id.clone(),
                    };
                    (edit.clone(), stamp)
                })
                .collect();
            let answers = match self.cloud.edits(&edits).await {
                Ok(answers) => answers,
                Err(e) => {
                    self.journal.outbox_failed(batch[0].0, e.reason.as_str())?;
                    return Err(e.into());
                }
            };
            let mut stopped = None;
            for ((seq, edit, _, _), answer) in batch.iter().zip(answers) {
                match answer {
                    Ok(()) => {
                        self.journal.outbox_done(*seq)?;
                        report.edits_sent += 1;
                    }
                    Err(e)
                        if !e.transient
                            && matches!(
                                e.reason.as_str(),
                                "NOT_FOUND" | "ASSET_NOT_LIVE" | "INVALID_ARGUMENT"
                            ) =>
                    {
                        tracing::warn!(?edit, reason = %e.reason, message = %e.message, "edit refused for good; dropped");
                        self.journal.outbox_done(*seq)?;
                        report.edits_dropped += 1;
                    }
                    // Transient, or CLOCK_SKEW, CLIENT_TOO_OLD…: the device must change, the
                    // edit must wait. Those after it that the cloud applied are done all the
                    // same — sent again, a trash could undo a restore made elsewhere since.
                    Err(e) => {
                        self.journal.outbox_failed(*seq, e.reason.as_str())?;
                        stopped.get_or_insert(e);
                    }
                }
            }
            if let Some(e) = stopped {
                return Err(e.into());
            }
        }
        Ok(())
    }

    /// Records what the feed says of an asset's metadata and albums.
    fn remember_metadata(&self, a: &RemoteAsset) -> Result<(), DeviceError> {
        self.journal.observe_clock(&a.clock)?;
        if a.state == RemoteState::Purged {
            self.journal.remove_current(&a.asset_id)?;
            self.journal.remove_cloud_only(&a.asset_id)?;
            let _ = std::fs::remove_file(self.previews_dir().join(format!("{}.jpg", a.asset_id)));
        } else {
            self.journal
                .set_current(&a.asset_id, a.version, &a.manifest, a.preview.as_ref())?;
        }
        match a.state {
            RemoteState::Purged => self.journal.remove_meta(&a.asset_id)?,
            state => self.journal.put_meta(&MetaRow {
                asset_id: a.asset_id.clone(),
                name: a.path.clone(),
                state: if state == RemoteState::Trashed {
                    "trashed".into()
                } else {
                    "live".into()
                },
                favorite: a.favorite,
                hidden: a.hidden,
            })?,
        }
        Ok(())
    }

    /// Whether `f` on disk is still what the journal last saw (size, time, inode): a file
    /// changed since the scan holds an edit the cloud has not seen, and stays where it is.
    fn unchanged_since_scan(&self, f: &FileRow) -> bool {
        std::fs::metadata(self.config.folder.join(&f.path)).is_ok_and(|meta| {
            (meta.len(), mtime_ns(&meta), inode(&meta)) == (f.size, f.mtime_ns, f.inode)
        })
    }

    async fn pull(&mut self, report: &mut SyncReport) -> Result<(), DeviceError> {
        fail::fail_point!("device-before-feed");
        let mut cursor: u64 = self
            .journal
            .get("cursor")?
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        loop {
            let page = match self.cloud.changes(cursor).await {
                Err(e) if e.reason == Reason::CursorExpired => {
                    // Tombstones we never saw were compacted: read everything again; every
                    // step below is idempotent against what the folder already holds.
                    cursor = 0;
                    continue;
                }
                other => other?,
            };
            for (i, asset) in page.assets.iter().enumerate() {
                self.fetch_ahead(&page.assets, i, report)?;
                self.apply(asset, report).await?;
                if self.deferred {
                    // A download was put off: the cursor stays before this page (what was
                    // applied is idempotent), the rest waits for the next pass.
                    return Ok(());
                }
                self.remember_metadata(asset)?;
            }
            for album in &page.albums {
                self.journal.observe_clock(&album.clock)?;
                if album.deleted {
                    self.journal.remove_album(&album.album_id)?;
                } else {
                    self.journal
                        .put_album(&album.album_id, &album.name, &album.members)?;
                }
            }
            // Whatever was fetched ahead and not used (the page changed its mind) is dropped.
            self.ahead = Ahead::default();
            cursor = page.cursor;
            self.journal.set("cursor", &cursor.to_string())?;
            if !page.more {
                return Ok(());
            }
        }
    }

    async fn apply(&mut self, a: &RemoteAsset, report: &mut SyncReport) -> Result<(), DeviceError> {
        // The scan decided what is synced; a file changed since holds an edit the cloud has
        // not seen, so every step below treats it as unsynced: it is never overwritten by a
        // newer version, moved to Recently Deleted, removed on a purge or sent as a repair.
        let local = self.journal.file_of_asset(&a.asset_id)?.map(|mut f| {
            f.synced = f.synced && self.unchanged_since_scan(&f);
            f
        });
        let trashed = self.journal.trashed(&a.asset_id)?;
        let deleted_dir = self.config.data_dir.join("recently-deleted");
        let still_damaged = a.damaged && a.state == RemoteState::Live;
        // Repaired, deleted or purged since: no longer waited for.
        if !still_damaged && self.waited_for.remove(&a.asset_id) {
            self.journal
                .remove_key(&format!("{DAMAGED_WAITING}{}", a.asset_id))?;
        }
        if a.damaged
            && let Some(f) = &local
            && f.synced
            && f.file_hash == a.file_hash
        {
            // The cloud lost part of this exact content and this device holds it: upload it
            // again against the asset; the commit clears the flag everywhere.
            tracing::warn!(asset = %a.asset_id, path = %f.path, "the cloud lost part of this photo; sending it again");
            let mut f = f.clone();
            f.synced = false;
            f.version = Some(a.version);
            self.journal.upsert(&f)?;
            report.repairs += 1;
            return Ok(());
        }
        if local.is_none()
            && trashed.is_none()
            && let Some(mut c) = self.journal.cloud_only(&a.asset_id)?
        {
            // Not here by choice: follow the cloud's version, fetch nothing.
            if a.state == RemoteState::Live {
                (c.version, c.manifest, c.file_hash, c.size) =
                    (a.version, a.manifest, a.file_hash, a.size);
                self.journal.put_cloud_only(&c)?;
            } else {
                self.journal.remove_cloud_only(&a.asset_id)?;
            }
            return Ok(());
        }
        if a.state != RemoteState::Purged && keepsake_path::check(&a.path).is_err() {
            // The cloud checks every path; one that is not plain anyway is never written.
            tracing::warn!(asset = %a.asset_id, path = %a.path, "a path from the cloud refused");
            report.skipped.push(SkippedFile::path_refused(
                a.path.clone(),
                "the cloud sent a path that could lead out of the folder",
            ));
            return Ok(());
        }
        match a.state {
            RemoteState::Live => {
                if let Some(t) = trashed {
                    self.journal.remove_trashed(&a.asset_id)?;
                    let stored = deleted_dir.join(&t.stored_as);
                    if t.file_hash == a.file_hash && stored.exists() && local.is_none() {
                        let dest = self.place_new(&a.path)?;
                        move_file(&stored, &dest)?;
                        self.record_synced(&dest, a)?;
                        report.restored += 1;
                        return Ok(());
                    }
                    let _ = std::fs::remove_file(stored);
                }
                match local {
                    Some(f) if f.file_hash == a.file_hash => {
                        let f = self.follow_rename(f, a, report)?;
                        if f.version != Some(a.version) {
                            let mut f = f;
                            f.version = Some(a.version);
                            self.journal.upsert(&f)?;
                        }
                    }
                    // A local edit not yet uploaded: never overwritten. The cloud's version
                    // arrives beside it; the local one commits later as a conflict, both kept.
                    Some(f) if !f.synced => {
                        self.download(a, None, None, report).await?;
                        tracing::info!(path = %f.path, asset = %a.asset_id, "kept a local edit beside a newer cloud version");
                    }
                    Some(f) => {
                        let f = self.follow_rename(f, a, report)?;
                        let dest = self.config.folder.join(&f.path);
                        self.download(a, Some(dest), None, report).await?;
                    }
                    None => {
                        let target = paths::local_path(&a.path, self.config.fs);
                        // A file here with the same bytes, another photo's (a copy made on
                        // another device): written from it, nothing fetched.
                        let copy_from = self
                            .journal
                            .file_with_hash(&a.file_hash, "")?
                            .filter(|f| f.synced && self.unchanged_since_scan(f))
                            .map(|f| self.config.folder.join(f.path));
                        if let Some(here) = self.untracked_twin(&target, a)? {
                            // The same bytes already sit at the asset's path but the scan
                            // has not taken them (a reinstall over a restored folder, a copy
                            // still settling): adopt them rather than download a " (2)" twin.
                            self.record_synced(&here, a)?;
                            report.adopted += 1;
                        } else if self.config.optimize_budget.is_some_and(|budget| {
                            self.journal.synced_bytes().unwrap_or(u64::MAX) + a.size > budget
                        }) {
                            // Optimize Storage: the preview stands in until it is opened.
                            self.journal.put_cloud_only(&CloudOnlyRow {
                                asset_id: a.asset_id.clone(),
                                name: a.path.clone(),
                                version: a.version,
                                manifest: a.manifest,
                                file_hash: a.file_hash,
                                size: a.size,
                            })?;
                            report.kept_in_cloud += 1;
                        } else {
                            if copy_from.is_some() {
                                report.copied_here += 1;
                            }
                            self.download(a, None, copy_from, report).await?;
                        }
                    }
                }
            }
            RemoteState::Trashed => {
                // A file edited here stays (a file edited since the scan too, see above): the
                // next pass uploads the edit, which becomes a photo of its own (the commit
                // answers ASSET_NOT_LIVE). Only this asset's own file moves: another file
                // with the same bytes is another photo.
                if let Some(f) = local
                    && f.synced
                {
                    let name = keepsake_path::file_name(&f.path).to_string();
                    let stored_as = format!("{}-{}", a.asset_id, name);
                    move_file(
                        &self.config.folder.join(&f.path),
                        &deleted_dir.join(&stored_as),
                    )?;
                    self.journal.put_trashed(&TrashedRow {
                        asset_id: a.asset_id.clone(),
                        name: a.path.clone(),
                        stored_as,
                        file_hash: f.file_hash,
                        version: a.version,
                    })?;
                    self.journal.remove(&f.path)?;
                    report.trashed_here += 1;
                }
            }
            RemoteState::Purged => {
                if let Some(t) = trashed {
                    let _ = std::fs::remove_file(deleted_dir.join(&t.stored_as));
                    self.journal.remove_trashed(&a.asset_id)?;
                    report.purged += 1;
                }
                if let Some(f) = local
                    && f.synced
                {
                    let _ = std::fs::remove_file(self.config.folder.join(&f.path));
                    self.journal.remove(&f.path)?;
                    report.purged += 1;
                }
            }
        }
        Ok(())
    }

    /// Moves this asset's file to the path the library now gives it, when the library's
    /// path changed since this device last agreed with it (a rename or move made
    /// elsewhere). Not when the only change is the library's number on a name this
    /// device asked for (the file keeps its own name here), and never a file changed since
    /// the scan (it holds an edit; the next pass looks again).
    fn follow_rename(
        &mut self,
        f: FileRow,
        a: &RemoteAsset,
        report: &mut SyncReport,
    ) -> Result<FileRow, DeviceError> {
        // A file from before paths were kept (or the library numbering a name this device
        // asked for) stays where it is: the library's path is only noted. An older device's
        // flattened names are never shuffled about, nor sent back as renames.
        let keep_name = match &f.lib_path {
            None => true,
            Some(agreed) if *agreed == a.path => return Ok(f),
            Some(agreed) => paths::unnumbered(&a.path) == *agreed,
        };
        if keep_name {
            let mut f = f;
            f.lib_path = Some(a.path.clone());
            self.journal.upsert(&f)?;
            return Ok(f);
        }
        if !self.unchanged_since_scan(&f) {
            return Ok(f);
        }
        let from = self.config.folder.join(&f.path);
        let to = self.place_new(&a.path)?;
        fail::fail_point!("device-before-rename");
        std::fs::rename(&from, &to)?;
        if let Some(parent) = to.parent() {
            sync_dir(parent)?;
        }
        let path = to
            .strip_prefix(&self.config.folder)
            .map_err(|_| std::io::Error::other("renamed outside the folder"))?
            .to_string_lossy()
            .into_owned();
        let row = FileRow {
            path,
            lib_path: Some(a.path.clone()),
            ..f.clone()
        };
        self.journal.relocate(&f.path, &row)?;
        self.remove_empty_dirs(keepsake_path::parent(&f.path));
        tracing::info!(from = %f.path, to = %row.path, asset = %a.asset_id, "renamed here as elsewhere");
        report.renamed_here += 1;
        Ok(row)
    }

    /// Where a file new to this folder goes for library path `lib_path`: its folders made
    /// (never through a link), its name as this file system takes it, numbered where the
    /// name is taken here.
    fn place_new(&self, lib_path: &str) -> Result<PathBuf, DeviceError> {
        self.place_new_as(lib_path, self.config.fs)
    }

    fn place_new_as(&self, lib_path: &str, rules: FsRules) -> Result<PathBuf, DeviceError> {
        let local = paths::local_path(lib_path, rules);
        let dir = paths::make_dirs(&self.config.folder, keepsake_path::parent(&local))?;
        let name = paths::unique_in(&dir, keepsake_path::file_name(&local), rules);
        Ok(dir.join(name))
    }

    /// Removes the folders a move left empty, from `rel_dir` up (a folder renamed
    /// elsewhere leaves none behind here).
    fn remove_empty_dirs(&self, rel_dir: &str) {
        let mut dir = rel_dir.to_string();
        while !dir.is_empty() {
            // Fails, as it should, on a folder that still holds anything.
            if std::fs::remove_dir(self.config.folder.join(&dir)).is_err() {
                return;
            }
            dir = keepsake_path::parent(&dir).to_string();
        }
    }

    /// Journals a file the device itself wrote, so the scan never mistakes it for a user's.
    /// `folder/name` when no journal row claims it and it holds exactly `a`'s content.
    fn untracked_twin(&self, name: &str, a: &RemoteAsset) -> Result<Option<PathBuf>, DeviceError> {
        let path = self.config.folder.join(name);
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_file() && meta.len() == a.size => {}
            _ => return Ok(None),
        }
        if self.journal.file(name)?.is_some() {
            return Ok(None);
        }
        Ok((whole_file_hash(&path)? == a.file_hash).then_some(path))
    }

    fn record_synced(&self, dest: &Path, a: &RemoteAsset) -> Result<(), DeviceError> {
        // Stamped by the device's own clock, not the file system's: every time the sync
        // engine compares comes from one injected source, so a simulated run replays.
        // Stamped a racy window in the past: any later write gives the file a newer time
        // even on a coarse file system, so the stat is trusted at once and the next scans
        // do not read back and hash every file just downloaded.
        let when = std::time::UNIX_EPOCH
            + std::time::Duration::from_nanos(
                (self.clock.now_ms() * 1_000_000 - RACY_WINDOW_NS - 1_000_000).max(0) as u64,
            );
        std::fs::File::options()
            .write(true)
            .open(dest)?
            .set_modified(when)?;
        let meta = std::fs::metadata(dest)?;
        let path = dest
            .strip_prefix(&self.config.folder)
            .map_err(|_| std::io::Error::other("written outside the folder"))?
            .to_string_lossy()
            .into_owned();
        self.journal.upsert(&FileRow {
            path,
            size: meta.len(),
            mtime_ns: mtime_ns(&meta),
            inode: inode(&meta),
            file_hash: a.file_hash,
            asset_id: Some(a.asset_id.clone()),
            version: Some(a.version),
            synced: true,
            lib_path: Some(a.path.clone()),
            nonce: 0,
        })?;
        Ok(())
    }

    /// Where in a local file the chunks a new version also has are (chunked as the new one
    /// was, read as a stream): read from there as the new version is written.
    async fn local_chunks(
        &self,
        path: &Path,
        new_len: u64,
        wanted: &[ChunkId],
    ) -> Result<HashMap<ChunkId, (u64, usize)>, DeviceError> {
        let path = path.to_path_buf();
        let wanted: HashSet<ChunkId> = wanted.iter().copied().collect();
        keepsake_store::offload(move || -> Result<_, DeviceError> {
            let mut found = HashMap::new();
            let mut at = 0u64;
            let file = std::fs::File::open(&path)?;
            keepsake_delta::chunk_stream(file, ChunkParams::for_len(new_len), |id, data| {
                if wanted.contains(&id) {
                    found.entry(id).or_insert((at, data.len()));
                }
                at += data.len() as u64;
                Ok(())
            })?;
            Ok(found)
        })
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))?
    }

    /// Starts fetching the content of the next few assets of the page that will surely be
    /// downloaded whole (new here, nothing to reuse, no allowance or storage limit to
    /// weigh), each on a lane of its own, so the network works while the disk writes.
    /// `page[at]` is the entry about to be applied; each entry is looked at once per page.
    fn fetch_ahead(
        &mut self,
        page: &[RemoteAsset],
        at: usize,
        report: &mut SyncReport,
    ) -> Result<(), DeviceError> {
        if self.budget.is_some()
            || self.downloads_wait.is_some()
            || self.config.optimize_budget.is_some()
        {
            return Ok(());
        }
        let end = page.len().min(at + DOWNLOAD_LOOKAHEAD);
        let mut next = self.ahead.looked.max(at);
        while next < end {
            let a = &page[next];
            // A file this large is fetched a batch at a time when its turn comes.
            let streamed = a.size >= self.config.streamed_from;
            if !streamed
                && (self.ahead.fetching.len() >= LANES || self.ahead.bytes + a.size > LANE_BYTES)
            {
                break;
            }
            next += 1;
            self.ahead.looked = next;
            if streamed
                || a.state != RemoteState::Live
                || a.damaged
                || self.journal.file_of_asset(&a.asset_id)?.is_some()
                || self.journal.trashed(&a.asset_id)?.is_some()
                || self.journal.cloud_only(&a.asset_id)?.is_some()
                || self.journal.file_with_hash(&a.file_hash, "")?.is_some()
                // Something already at the asset's path may be its bytes, to adopt (a
                // reinstall over a copy): only the apply, which hashes it, can tell.
                || self
                    .config
                    .folder
                    .join(paths::local_path(&a.path, self.config.fs))
                    .exists()
            {
                continue;
            }
            let Some(mut lane) = self.cloud.lane() else {
                return Ok(());
            };
            let manifest_id = a.manifest;
            let fetching = tokio::spawn(async move {
                let manifest = lane.manifest(&manifest_id).await?;
                let mut ids: Vec<ChunkId> = manifest.entries.iter().map(|e| e.chunk).collect();
                ids.sort();
                ids.dedup();
                let fetched: HashMap<ChunkId, Bytes> =
                    lane.chunks(&ids).await?.into_iter().collect();
                Ok((manifest, fetched))
            });
            self.ahead.bytes += a.size;
            report.fetched_ahead += 1;
            self.ahead.fetching.insert(
                a.asset_id.clone(),
                (manifest_id, a.size, AbortOnDrop(Some(fetching))),
            );
        }
        Ok(())
    }

    /// Starts fetching `batches` (one waiting at most) on a lane, if there are any and the
    /// cloud has a lane.
    fn feed(&self, batches: Vec<Vec<ChunkId>>) -> Feed {
        // Nothing to fetch (content fetched ahead, or all found in the old file): no task.
        let lane = if batches.is_empty() {
            None
        } else {
            self.cloud.lane()
        };
        let Some(mut lane) = lane else {
            return Feed::Inline(batches.into_iter());
        };
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let fetching = tokio::spawn(async move {
            for ids in batches {
                let batch = lane.chunks(&ids).await;
                let failed = batch.is_err();
                if tx.send(batch).await.is_err() || failed {
                    return;
                }
            }
        });
        Feed::Ahead {
            batches: rx,
            _fetching: AbortOnDrop(Some(fetching)),
        }
    }

    /// Fetches an asset's content, verifies it, and only then puts it at its final path.
    /// Writes `a` into the folder: over `replace` (a new version of the file here), or at
    /// its library path. Chunks `replace` or `reuse` (a file here with the same bytes)
    /// already hold are read from there, not fetched.
    async fn download(
        &mut self,
        a: &RemoteAsset,
        replace: Option<PathBuf>,
        reuse: Option<PathBuf>,
        report: &mut SyncReport,
    ) -> Result<(), DeviceError> {
        let name = a.path.as_str();
        if a.damaged {
            // Failing here would stop the feed at this photo on every pass, and every photo
            // after it with it; the cursor moves on and the repair's feed entry brings it.
            tracing::warn!(asset = %a.asset_id, name, "damaged in the cloud; waiting for a device that has it");
            self.journal
                .set(&format!("{DAMAGED_WAITING}{}", a.asset_id), "1")?;
            self.waited_for.insert(a.asset_id.clone());
            report.damaged_waiting += 1;
            return Ok(());
        }
        if self.downloads_wait.is_some() || self.over_budget(a.size, report) {
            self.deferred = true;
            return Ok(());
        }
        self.progress.send_modify(|p| {
            p.phase = "downloading".into();
            p.items_total += 1;
            p.bytes_total += a.size;
            p.current = Some(name.to_string());
        });
        let (manifest, mut fetched) = match self.ahead.take(&a.asset_id, &a.manifest) {
            Some(fetching) => fetching
                .await
                .map_err(|e| std::io::Error::other(e.to_string()))??,
            None => (self.cloud.manifest(&a.manifest).await?, HashMap::new()),
        };
        let streamed = a.size >= self.config.streamed_from;
        if streamed {
            tracing::info!(target: STREAMED_EVENTS, asset = %a.asset_id, name, size = a.size, "fetching in batches");
        }
        // A new version of a file already here shares most of its chunks: those are read
        // from it, the rest fetched.
        let (local, old) = match replace
            .as_ref()
            .or(reuse.as_ref())
            .filter(|p| p.exists() && fetched.is_empty())
        {
            Some(old) => {
                let ids: Vec<ChunkId> = manifest.entries.iter().map(|e| e.chunk).collect();
                let local = self.local_chunks(old, a.size, &ids).await?;
                (local, Some(std::fs::File::open(old)?))
            }
            None => (HashMap::new(), None),
        };
        report.bytes_reused += local.values().map(|(_, len)| *len as u64).sum::<u64>();
        let mut feed = self.feed(batches_to_fetch(
            &manifest,
            self.config.stream_batch_bytes,
            |id| fetched.contains_key(id) || local.contains_key(id),
        ));
        // Chunks fetched are dropped once written for the last time.
        let mut uses: HashMap<ChunkId, usize> = HashMap::new();
        for entry in &manifest.entries {
            *uses.entry(entry.chunk).or_default() += 1;
        }
        let temp = self
            .config
            .data_dir
            .join("tmp")
            .join(format!("{}.part", a.asset_id));
        let mut hasher = blake3::Hasher::new();
        let mut size = 0u64;
        let mut released = 0u64;
        let mut reused = Vec::new();
        {
            let mut file = std::fs::File::create(&temp)?;
            for entry in &manifest.entries {
                let data: &[u8] = match (local.get(&entry.chunk), &old) {
                    (Some(&(at, len)), Some(old)) => {
                        read_at(old, at, len, &mut reused)?;
                        &reused
                    }
                    _ => {
                        while !fetched.contains_key(&entry.chunk) {
                            match feed.next(&mut self.cloud).await? {
                                Some(batch) => fetched.extend(batch),
                                None => return Err(DeviceError::Corrupt(a.asset_id.clone())),
                            }
                        }
                        &fetched[&entry.chunk]
                    }
                };
                hasher.update(data);
                file.write_all(data)?;
                size += data.len() as u64;
                let left = uses.get_mut(&entry.chunk).expect("counted above");
                *left -= 1;
                if *left == 0 {
                    fetched.remove(&entry.chunk);
                }
                if size - released >= RELEASE_EVERY_BYTES {
                    file.sync_data()?;
                    keepsake_store::release_written_pages(&file);
                    released = size;
                    fail::fail_point!("device-while-writing-a-download");
                }
            }
            if ChunkId(*hasher.finalize().as_bytes()) != a.file_hash {
                drop(file);
                let _ = std::fs::remove_file(&temp);
                return Err(DeviceError::Corrupt(a.asset_id.clone()));
            }
            file.sync_all()?;
            keepsake_store::release_written_pages(&file);
        }
        let dest = match replace {
            Some(dest) => {
                move_file(&temp, &dest)?;
                dest
            }
            None => {
                let dest = self.place_new(&a.path)?;
                match move_file(&temp, &dest) {
                    Ok(()) => dest,
                    // The folder's file system refuses the name (a `:` on a memory card):
                    // the name changes here, the library keeps it as written.
                    Err(e) if refused_name(&e) => {
                        let portable = FsRules {
                            portable_names: true,
                            ..self.config.fs
                        };
                        let dest = self.place_new_as(&a.path, portable)?;
                        tracing::info!(path = %a.path, here = %dest.display(), "the file system refused the name");
                        move_file(&temp, &dest)?;
                        dest
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        };
        fail::fail_point!("device-after-place-before-journal");
        self.record_synced(&dest, a)?;
        // The base of a later edit made here.
        self.journal.keep_manifest(&manifest)?;
        report.downloaded += 1;
        report.bytes_received += size;
        report.streamed += usize::from(streamed);
        self.progress.send_modify(|p| {
            p.items_done += 1;
            p.bytes_done += size;
        });
        Ok(())
    }
}

/// Whether a write failed because the file system refuses the name itself.
fn refused_name(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::InvalidInput | std::io::ErrorKind::InvalidFilename
    ) || e.raw_os_error() == Some(84) // EILSEQ: not valid on this file system's encoding
}

/// The chunks of `manifest` that `have` does not cover, once each, in the order the file
/// needs them, cut into batches of about `batch_bytes`.
fn batches_to_fetch(
    manifest: &Manifest,
    batch_bytes: usize,
    have: impl Fn(&ChunkId) -> bool,
) -> Vec<Vec<ChunkId>> {
    let mut seen = HashSet::new();
    let mut batches = vec![Vec::new()];
    let mut bytes = 0usize;
    for entry in &manifest.entries {
        if have(&entry.chunk) || !seen.insert(entry.chunk) {
            continue;
        }
        if bytes >= batch_bytes {
            batches.push(Vec::new());
            bytes = 0;
        }
        bytes += entry.len as usize;
        batches.last_mut().expect("never empty").push(entry.chunk);
    }
    batches.retain(|b| !b.is_empty());
    batches
}

/// `len` bytes of `file` from `at` into `buf`.
fn read_at(file: &std::fs::File, at: u64, len: usize, buf: &mut Vec<u8>) -> std::io::Result<()> {
    use std::io::{Read, Seek};
    let mut file = file;
    file.seek(std::io::SeekFrom::Start(at))?;
    buf.resize(len, 0);
    file.read_exact(buf)
}

/// A download's chunks, a batch at a time: fetched on a lane of their own one batch ahead
/// of the writing, or on the pass's connection when the cloud offers no lanes.
enum Feed {
    Ahead {
        batches: tokio::sync::mpsc::Receiver<Result<Vec<(ChunkId, Bytes)>, CloudError>>,
        /// Held so the fetching stops when the download does.
        _fetching: AbortOnDrop<()>,
    },
    Inline(std::vec::IntoIter<Vec<ChunkId>>),
}

impl Feed {
    /// The next batch, verified; `None` when all were fetched.
    async fn next<C: Cloud>(
        &mut self,
        cloud: &mut C,
    ) -> Result<Option<Vec<(ChunkId, Bytes)>>, CloudError> {
        match self {
            Feed::Ahead { batches, .. } => batches.recv().await.transpose(),
            Feed::Inline(batches) => match batches.next() {
                Some(ids) => cloud.chunks(&ids).await.map(Some),
                None => Ok(None),
            },
        }
    }
}

/// How much of a download is written before it is flushed and its pages released, so a
/// long video's next pages reuse memory its first ones held.
const RELEASE_EVERY_BYTES: u64 = 32 << 20;

/// New files whose contents one lookup call asks about.
const LOOKUPS_AHEAD: usize = 1000;

/// How long a content lookup's answer is used: a photo purged elsewhere meanwhile must not
/// be uploaded again (a commit of purged content is a deliberate re-import).
const LOOKUP_FRESH_MS: i64 = 60_000;

/// Queued edits sent in one call: one round trip and one durable write on the server for
/// a person's "add these 500 photos to an album".
const EDITS_PER_CALL: usize = 500;

/// Feed entries looked at for content to fetch ahead.
const DOWNLOAD_LOOKAHEAD: usize = 8;

/// What fetching one asset's content ahead yields: its manifest and every chunk, verified.
type Fetched = Result<(Manifest, HashMap<ChunkId, Bytes>), CloudError>;

/// A task that stops when its handle is dropped: content fetched ahead and never used
/// (the feed page ended, the pass failed) does not keep downloading.
struct AbortOnDrop<T>(Option<tokio::task::JoinHandle<T>>);

impl<T> AbortOnDrop<T> {
    fn into_inner(mut self) -> tokio::task::JoinHandle<T> {
        self.0.take().expect("the handle is held until taken")
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        if let Some(handle) = self.0.take() {
            handle.abort();
        }
    }
}

/// Downloads under way ahead of the feed's apply loop, by asset.
#[derive(Default)]
struct Ahead {
    fetching: HashMap<String, (ManifestId, u64, AbortOnDrop<Fetched>)>,
    bytes: u64,
    /// Entries of the current page before this index were looked at already.
    looked: usize,
}

impl Ahead {
    /// The fetch of `asset`'s content at `manifest`, if one was started.
    fn take(
        &mut self,
        asset: &str,
        manifest: &ManifestId,
    ) -> Option<impl Future<Output = Result<Fetched, tokio::task::JoinError>> + use<>> {
        let (id, size, task) = self.fetching.remove(asset)?;
        self.bytes = self.bytes.saturating_sub(size);
        // A fetch of another version than the one applied is dropped, and so stopped.
        (id == *manifest).then(|| task.into_inner())
    }
}

/// Files a pass fetches ahead at once.
const LANES: usize = 3;

/// Files a pass uploads at once. Measured on 600 MiB, server and camera alone: two gave
/// 2.9–3.2 s until all was in the cloud, four 2.7 s, eight 2.5–2.6 s (docs/benchmarks.md);
/// four keep a device's streams (up to three each, [`STREAMS_PER_FILE`]) well inside the
/// cloud's 32 calls in flight per device.
const UPLOAD_LANES: usize = 4;

/// File bytes held in memory by the files in flight; a larger file goes alone.
const LANE_BYTES: u64 = 160 << 20;

/// Files read and chunked ahead of the one being prepared, at most.
const READ_AHEAD_FILES: usize = 3;

/// Bytes read ahead, at most (on top of the lanes' [`LANE_BYTES`]); a larger file is read
/// when its turn comes.
const READ_AHEAD_BYTES: u64 = 64 << 20;

/// Why a new file needs no upload.
enum NoUpload {
    /// The library has this file: an asset with its content that no file here claims,
    /// at its path (or anywhere, for a device that lost its journal). Restored from
    /// Recently Deleted where it was there.
    InCloud(ContentHolder),
    /// A device that lost its journal finds the file of a photo purged elsewhere, at that
    /// photo's path: deleted for good, not uploaded again.
    Purged,
}

/// A file being read and chunked in the background.
type Reading = tokio::task::JoinHandle<Result<(Manifest, Bytes), DeviceError>>;

/// The reads an upload pass started ahead: (row index, size, the read), in row order.
#[derive(Default)]
struct ReadAhead {
    reads: std::collections::VecDeque<(usize, u64, Reading)>,
    /// The first row not yet considered.
    next: usize,
}

impl ReadAhead {
    fn bytes(&self) -> u64 {
        self.reads.iter().map(|(_, size, _)| size).sum()
    }

    /// The read started for row `at`, if any; reads of rows the pass passed over are dropped.
    fn take(&mut self, at: usize) -> Option<Reading> {
        while let Some((index, ..)) = self.reads.front() {
            if *index > at {
                return None;
            }
            let (index, _, reading) = self.reads.pop_front()?;
            if index == at {
                return Some(reading);
            }
        }
        None
    }
}

/// The files of an upload pass in flight on their own lanes, and the lanes left idle.
struct Flying<C> {
    idle: Vec<C>,
    tasks: tokio::task::JoinSet<(C, Shipped)>,
    hashes: HashSet<ChunkId>,
    /// Chunks of the files in flight; kept until all have landed (an over-estimate is
    /// only a wait, never a chunk sent twice).
    chunks: HashSet<ChunkId>,
    bytes: u64,
}

impl<C: Cloud> Flying<C> {
    fn new(idle: Vec<C>) -> Self {
        Self {
            idle,
            tasks: tokio::task::JoinSet::new(),
            hashes: HashSet::new(),
            chunks: HashSet::new(),
            bytes: 0,
        }
    }

    /// Sends one file on `lane`, in the background.
    fn launch(&mut self, mut lane: C, shipment: Shipment) {
        self.hashes.insert(shipment.row.file_hash);
        self.bytes += shipment.row.size;
        if let Content::Held { manifest, .. } = &shipment.content {
            self.chunks.extend(manifest.entries.iter().map(|e| e.chunk));
        }
        self.tasks.spawn(async move {
            let shipped = ship(&mut lane, shipment).await;
            (lane, shipped)
        });
    }
}

/// One file ready to go: everything the network part of its upload needs, owned, so it
/// can travel on a lane of its own.
struct Shipment {
    row: FileRow,
    content: Content,
    /// Chunks the cloud acknowledged for this content in an earlier, cut-off attempt.
    acked: HashSet<ChunkId>,
    /// The version this edit replaces (for splices and span deltas), with its manifest
    /// when the journal kept it.
    base: Option<(ManifestId, Option<Manifest>)>,
    draft: Draft,
}

/// A file's bytes, as an upload has them.
enum Content {
    /// Read and chunked already.
    Held { manifest: Manifest, data: Bytes },
    /// Too large to hold (a file of `streamed_from` and more): read, chunked and sent a
    /// batch at a time from this path, its manifest known once all is read.
    Streamed { path: PathBuf, batch_bytes: usize },
}

/// What a commit says besides its content, known before the file is read.
struct Draft {
    request_id: String,
    /// The file's path in the folder: a new asset's path in the library.
    path: String,
    original_name: String,
    /// The file's modification time: its capture time when the file names none.
    file_time_ms: i64,
    reservation_id: String,
    asset_id: Option<String>,
    base_version: Option<u32>,
}

impl Draft {
    /// The commit of `manifest`, described by what the file says of itself.
    fn commit(&self, manifest: &Manifest, media: &keepsake_media::MediaInfo) -> NewAsset {
        // What the file says it is outranks its name; its time outranks the file system's.
        let video = match media.kind {
            keepsake_media::MediaKind::Video => true,
            keepsake_media::MediaKind::Photo => false,
            keepsake_media::MediaKind::Unknown => is_video(&self.original_name),
        };
        NewAsset {
            request_id: self.request_id.clone(),
            manifest: manifest.id(),
            original_name: self.original_name.clone(),
            path: self.path.clone(),
            video,
            capture_time: media.capture_time_ms.or(Some(self.file_time_ms)),
            width: media.width,
            height: media.height,
            reservation_id: self.reservation_id.clone(),
            asset_id: self.asset_id.clone(),
            base_version: self.base_version,
        }
    }
}

/// What the network part of one file's upload did.
struct Shipped {
    row: FileRow,
    sent: Sent,
    /// The commit's reply and the manifest committed.
    outcome: Result<(CommitReply, Manifest), Shipping>,
}

/// Content a file's upload got the cloud to make durable, whether or not it went on to commit.
#[derive(Default)]
struct Sent {
    /// Chunks sent whole.
    whole: Vec<ChunkId>,
    /// Chunks the cloud rebuilt from deltas.
    by_delta: Vec<ChunkId>,
    bytes: u64,
}

/// Where a file's upload stopped.
enum Shipping {
    /// Before the commit: finding, sending or storing content.
    Sending(CloudError),
    /// The commit itself.
    Committing(CloudError),
    /// Reading a streamed file failed.
    Reading(DeviceError),
    /// A streamed file's bytes were no longer those the scan hashed: nothing was committed.
    Changed,
}

/// The commit's request id: the same for every retry of one upload (device, asset, content)
/// and different for any other. Hashed to 128 bits because it rides on every commit, where
/// the readable `device:asset:content` was two thirds of an edit's commit message.
fn commit_key(device_id: &str, asset_id: Option<&str>, content: &ChunkId) -> String {
    let mut hasher = blake3::Hasher::new();
    for part in [device_id.as_bytes(), asset_id.unwrap_or("").as_bytes()] {
        hasher.update(&(part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    hasher.update(&content.0);
    hex::encode(&hasher.finalize().as_bytes()[..16])
}

/// BLAKE3 of a file's bytes (a manifest's `file_hash`), read as a stream.
fn whole_file_hash(path: &Path) -> std::io::Result<ChunkId> {
    let mut hasher = blake3::Hasher::new();
    hasher.update_reader(std::fs::File::open(path)?)?;
    Ok(ChunkId(*hasher.finalize().as_bytes()))
}

/// The network part of one file's upload: the chunks the cloud lacks (as deltas where an
/// edit makes that much smaller), the manifest, the commit. No journal: the caller lands it.
async fn ship<C: Cloud>(cloud: &mut C, shipment: Shipment) -> Shipped {
    let Shipment {
        row,
        content,
        acked,
        base,
        draft,
    } = shipment;
    let mut sent = Sent::default();
    let outcome = match content {
        Content::Held { manifest, data } => {
            ship_held(cloud, (manifest, data), &acked, base, &draft, &mut sent).await
        }
        Content::Streamed { path, batch_bytes } => {
            let session = draft.reservation_id.clone();
            let wanted = Wanted::Lacking { acked };
            let file = StreamedFile {
                path: &path,
                size: row.size,
                batch_bytes,
            };
            match stream_file(cloud, &session, file, wanted, &mut sent).await {
                Ok((manifest, _)) if manifest.file_hash != row.file_hash => Err(Shipping::Changed),
                Ok((manifest, media)) => {
                    let source = Source::File(file);
                    commit_mending(cloud, &draft, manifest, None, &media, source, &mut sent).await
                }
                Err(e) => Err(e),
            }
        }
    };
    Shipped { row, sent, outcome }
}

/// [`ship`] for a file read whole already.
async fn ship_held<C: Cloud>(
    cloud: &mut C,
    (manifest, data): (Manifest, Bytes),
    acked: &HashSet<ChunkId>,
    base: Option<(ManifestId, Option<Manifest>)>,
    draft: &Draft,
    sent: &mut Sent,
) -> Result<(CommitReply, Manifest), Shipping> {
    let session = draft.reservation_id.clone();
    let mut offsets = HashMap::new();
    let mut at = 0usize;
    for entry in &manifest.entries {
        offsets
            .entry(entry.chunk)
            .or_insert((at, entry.len as usize));
        at += entry.len as usize;
    }
    // An edit: the version it replaces says which chunks the account surely holds, and
    // the new manifest travels as splices of it. Without it, everything is asked about.
    let base = match base {
        Some((id, Some(kept))) => Some((id, kept)),
        Some((id, None)) => match cloud.manifest(&id).await {
            Ok(manifest) => Some((id, manifest)),
            Err(e) if !e.transient => None,
            Err(e) => return Err(Shipping::Sending(e)),
        },
        None => None,
    };
    let held: HashSet<ChunkId> = base
        .iter()
        .flat_map(|(_, m)| m.entries.iter().map(|e| e.chunk))
        .collect();
    let ids: Vec<ChunkId> = {
        let mut unique: Vec<ChunkId> = offsets
            .keys()
            .filter(|id| !held.contains(id))
            .copied()
            .collect();
        unique.sort();
        unique
    };
    // An edit asks about its changed chunks with each stretch's signature (and sends
    // none the cloud already holds); FindMissing is for whatever no delta covered.
    let unsettled = match &base {
        Some((id, base)) => {
            send_changed_stretches(cloud, &session, (id, base), &manifest, ids, &data, sent)
                .await
                .map_err(Shipping::Sending)?
        }
        None => ids,
    };
    let missing = if unsettled.is_empty() {
        Vec::new()
    } else {
        cloud
            .find_missing(&session, &unsettled)
            .await
            .map_err(Shipping::Sending)?
    };
    let chunks = held_chunks((&offsets, &data), &missing, acked);
    send_whole(cloud, &session, chunks, sent)
        .await
        .map_err(Shipping::Sending)?;
    let media = keepsake_media::probe(&data);
    let base = base.as_ref().map(|(id, base)| (id, base));
    let source = Source::Held(&offsets, &data);
    commit_mending(cloud, draft, manifest, base, &media, source, sent).await
}

/// The bytes of chunks `ids` of a file held in memory (`offsets` of each chunk in `data`),
/// leaving out those `skip` names.
fn held_chunks(
    (offsets, data): (&HashMap<ChunkId, (usize, usize)>, &Bytes),
    ids: &[ChunkId],
    skip: &HashSet<ChunkId>,
) -> Vec<(ChunkId, Bytes)> {
    ids.iter()
        .filter(|id| !skip.contains(id))
        .filter_map(|id| {
            let (at, len) = offsets.get(id)?;
            Some((*id, data.slice(*at..*at + *len)))
        })
        .collect()
}

/// Where a file's chunks can be had again.
enum Source<'a> {
    /// In memory: each chunk's offset and length in the bytes.
    Held(&'a HashMap<ChunkId, (usize, usize)>, &'a Bytes),
    /// Streamed from a file.
    File(StreamedFile<'a>),
}

/// A file too large to hold, as [`stream_file`] reads it.
#[derive(Clone, Copy)]
struct StreamedFile<'a> {
    path: &'a Path,
    size: u64,
    batch_bytes: usize,
}

/// Commits `manifest`. The manifest rides on the commit (as splices of the base for an
/// edit): one round trip for both. MISSING_CHUNKS — chunks collected since FindMissing said
/// the account had them, or a base chunk scrub quarantined — names only the first few: ask
/// which of all the file's chunks are missing, send those from `source`, once, and commit
/// again.
async fn commit_mending<C: Cloud>(
    cloud: &mut C,
    draft: &Draft,
    manifest: Manifest,
    base: Option<(&ManifestId, &Manifest)>,
    media: &keepsake_media::MediaInfo,
    source: Source<'_>,
    sent: &mut Sent,
) -> Result<(CommitReply, Manifest), Shipping> {
    let commit = draft.commit(&manifest, media);
    match cloud.commit(commit.clone(), &manifest, base).await {
        Err(e) if e.reason == Reason::MissingChunks => {
            let session = &draft.reservation_id;
            let all: Vec<ChunkId> = manifest
                .entries
                .iter()
                .map(|e| e.chunk)
                .collect::<HashSet<_>>()
                .into_iter()
                .collect();
            let missing = cloud
                .find_missing(session, &all)
                .await
                .map_err(Shipping::Sending)?;
            // Acknowledged in an earlier attempt or not, the cloud has lost them.
            match source {
                Source::Held(offsets, data) => {
                    let chunks = held_chunks((offsets, data), &missing, &HashSet::new());
                    send_whole(cloud, session, chunks, sent)
                        .await
                        .map_err(Shipping::Sending)?;
                }
                Source::File(file) => {
                    let only = Wanted::Only(missing.into_iter().collect());
                    let (again, _) = stream_file(cloud, session, file, only, sent).await?;
                    if again.file_hash != manifest.file_hash {
                        return Err(Shipping::Changed);
                    }
                }
            }
            cloud
                .commit(commit, &manifest, base)
                .await
                .map(|reply| (reply, manifest))
                .map_err(Shipping::Committing)
        }
        other => other
            .map(|reply| (reply, manifest))
            .map_err(Shipping::Committing),
    }
}

/// Which of a streamed file's chunks go to the cloud.
enum Wanted {
    /// Those the cloud lacks, asked about a batch at a time, but for those an earlier,
    /// cut-off attempt got acknowledged.
    Lacking { acked: HashSet<ChunkId> },
    /// Just these.
    Only(HashSet<ChunkId>),
}

impl Wanted {
    /// Whether chunk `id` might be sent (the cloud may still hold it).
    fn keeps(&self, id: &ChunkId) -> bool {
        match self {
            Wanted::Lacking { acked } => !acked.contains(id),
            Wanted::Only(ids) => ids.contains(id),
        }
    }
}

/// What the thread reading a streamed file hands over: a batch of chunks to send, then
/// the file's manifest and what it says of itself.
enum Piece {
    Batch(Vec<(ChunkId, Bytes)>),
    Done(Result<(Manifest, keepsake_media::MediaInfo), DeviceError>),
}

/// The target of the events saying a file is sent or fetched a batch at a time, one per
/// file as it starts: so `RUST_LOG=keepsake_device::streamed=info` shows just those, even
/// from passes a kill cuts short.
pub const STREAMED_EVENTS: &str = "keepsake_device::streamed";

/// The default bytes of chunks in one batch of a streamed file. Four batches are in memory
/// at most (one being read, one waiting, [`BATCHES_IN_FLIGHT`] travelling), whatever the
/// file's size.
const STREAM_BATCH_BYTES: usize = 32 << 20;

/// By default, files this large and larger, new or edited, are streamed (read, chunked and
/// sent a batch at a time) rather than read whole, and go alone.
const STREAMED_FROM: u64 = 64 << 20;

/// Reads, chunks and sends a file too large to hold, a batch at a time: a thread of its own
/// reads and cuts the next batch while this one travels (on a multi-threaded runtime). Returns the manifest of what was
/// read (the caller compares it with what the scan hashed) and what the file says of itself.
async fn stream_file<C: Cloud>(
    cloud: &mut C,
    session: &str,
    file: StreamedFile<'_>,
    wanted: Wanted,
    sent: &mut Sent,
) -> Result<(Manifest, keepsake_media::MediaInfo), Shipping> {
    let asks = matches!(wanted, Wanted::Lacking { .. });
    let (path_owned, size, batch_bytes) = (file.path.to_path_buf(), file.size, file.batch_bytes);
    let mut rx = if keepsake_store::on_one_thread() {
        // A single-threaded runtime is the simulation's (or a test's): a reading thread
        // would make what it reads, and when, depend on the OS scheduler, and a run could
        // no longer be replayed from its seed. The file is read here, in one go, as
        // `offload` runs blocking work in place there.
        let (tx, rx) = tokio::sync::mpsc::channel(batches_at_most(size, batch_bytes) + 1);
        let mut queue = |batch| tx.try_send(Piece::Batch(batch)).is_ok();
        let done = read_in_batches(&path_owned, (size, batch_bytes), &wanted, &mut queue);
        let _ = tx.try_send(Piece::Done(done));
        rx
    } else {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        // A thread, not the runtime's blocking pool: it blocks on the channel.
        std::thread::spawn(move || {
            let mut send = |batch| tx.blocking_send(Piece::Batch(batch)).is_ok();
            let done = read_in_batches(&path_owned, (size, batch_bytes), &wanted, &mut send);
            let _ = tx.blocking_send(Piece::Done(done));
        });
        rx
    };
    let mut travelling = tokio::task::JoinSet::new();
    let mut failed = None;
    let mut done = None;
    'reading: while let Some(piece) = rx.recv().await {
        let batch = match piece {
            Piece::Batch(batch) => batch,
            Piece::Done(result) => {
                done = Some(result);
                break;
            }
        };
        let batch = if asks {
            let ids: Vec<ChunkId> = batch.iter().map(|(id, _)| *id).collect();
            let missing: HashSet<ChunkId> = match cloud.find_missing(session, &ids).await {
                Ok(missing) => missing.into_iter().collect(),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            };
            batch
                .into_iter()
                .filter(|(id, _)| missing.contains(id))
                .collect()
        } else {
            batch
        };
        // Batches travel side by side on lanes: one batch's fsyncs on the cloud overlap
        // the next one's transfer.
        while travelling.len() >= BATCHES_IN_FLIGHT {
            if let Err(e) = land_batch(&mut travelling, sent).await {
                failed = Some(e);
                break 'reading;
            }
        }
        match cloud.lane() {
            Some(mut lane) => {
                let session = session.to_string();
                travelling.spawn(async move {
                    let mut sent = Sent::default();
                    let outcome = send_whole(&mut lane, &session, batch, &mut sent).await;
                    (sent, outcome)
                });
            }
            None => {
                if let Err(e) = send_whole(cloud, session, batch, sent).await {
                    failed = Some(e);
                    break;
                }
            }
        }
    }
    // Stops the reading; whatever travels lands, its acknowledgements kept.
    drop(rx);
    while !travelling.is_empty() {
        if let Err(e) = land_batch(&mut travelling, sent).await {
            failed.get_or_insert(e);
        }
    }
    if let Some(e) = failed {
        return Err(Shipping::Sending(e));
    }
    match done {
        Some(result) => result.map_err(Shipping::Reading),
        None => {
            let stopped = std::io::Error::other("the thread reading the file stopped");
            Err(Shipping::Reading(stopped.into()))
        }
    }
}

/// How many batches [`keepsake_delta::chunk_batches`] can cut a file of `size` into: each
/// holds at least `batch_bytes` (or two of the largest chunks), but the last.
fn batches_at_most(size: u64, batch_bytes: usize) -> usize {
    let least = batch_bytes.max(2 * ChunkParams::for_len(size).max as usize) as u64;
    usize::try_from(size / least).unwrap_or(usize::MAX - 2) + 2
}

/// Batches of a streamed file on their way at once.
const BATCHES_IN_FLIGHT: usize = 2;

/// Waits for one batch of a streamed file to land, adding what it sent to `sent`.
async fn land_batch(
    travelling: &mut tokio::task::JoinSet<(Sent, Result<(), CloudError>)>,
    sent: &mut Sent,
) -> Result<(), CloudError> {
    let Some(joined) = travelling.join_next().await else {
        return Ok(());
    };
    // The set is aborted only when dropped, so a task's error is its panic.
    let (batch, outcome) = joined.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    sent.whole.extend(batch.whole);
    sent.by_delta.extend(batch.by_delta);
    sent.bytes += batch.bytes;
    outcome
}

/// The reading half of [`stream_file`]: each chunk `wanted` keeps, once, in batches of
/// about `batch_bytes` handed to `tx`.
fn read_in_batches(
    path: &Path,
    (size, batch_bytes): (u64, usize),
    wanted: &Wanted,
    send: &mut dyn FnMut(Vec<(ChunkId, Bytes)>) -> bool,
) -> Result<(Manifest, keepsake_media::MediaInfo), DeviceError> {
    use std::io::Seek;
    let mut file = std::fs::File::open(path)?;
    let media = keepsake_media::probe_reader(&mut file)?;
    file.rewind()?;
    let params = ChunkParams::for_len(size);
    let mut seen = HashSet::new();
    let manifest = keepsake_delta::chunk_batches(file, params, batch_bytes, |batch| {
        let batch: Vec<(ChunkId, Bytes)> = batch
            .into_iter()
            .filter(|(id, _)| seen.insert(*id) && wanted.keeps(id))
            .collect();
        if !batch.is_empty() && !send(batch) {
            return Err(DeltaError::Read(std::io::Error::other(
                "the upload stopped",
            )));
        }
        fail::fail_point!("device-while-streaming-a-file");
        Ok(())
    })?;
    Ok((manifest, media))
}

/// Sends chunks whole; what the cloud acknowledged is kept even when the call failed.
async fn send_whole<C: Cloud>(
    cloud: &mut C,
    session: &str,
    chunks: Vec<(ChunkId, Bytes)>,
    sent: &mut Sent,
) -> Result<(), CloudError> {
    if chunks.is_empty() {
        return Ok(());
    }
    let sizes: HashMap<ChunkId, u64> = chunks.iter().map(|(id, b)| (*id, b.len() as u64)).collect();
    let total: u64 = sizes.values().sum();
    // A large file goes on several streams at once: the cloud verifies, writes and fsyncs
    // each stream's batches on a thread of its own, where one stream would wait for each.
    let wanted = usize::try_from(total / STREAM_BYTES).unwrap_or(usize::MAX);
    let lanes: Vec<C> = (1..wanted.clamp(1, STREAMS_PER_FILE))
        .map_while(|_| cloud.lane())
        .collect();
    let mut parts = split_by_bytes(chunks, lanes.len() + 1).into_iter();
    let first = parts.next().unwrap_or_default();
    let mut others = tokio::task::JoinSet::new();
    for (mut lane, part) in lanes.into_iter().zip(parts) {
        let session = session.to_string();
        others.spawn(async move {
            let mut acknowledged = Vec::new();
            let outcome = lane.put_chunks(&session, part, &mut acknowledged).await;
            (acknowledged, outcome)
        });
    }
    let mut acknowledged = Vec::new();
    let mut outcome = cloud.put_chunks(session, first, &mut acknowledged).await;
    while let Some(joined) = others.join_next().await {
        // The set is never aborted, so a task's error is its panic.
        let (acked, other) = joined.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        acknowledged.extend(acked);
        outcome = outcome.and(other);
    }
    sent.bytes += acknowledged
        .iter()
        .map(|id| sizes.get(id).copied().unwrap_or(0))
        .sum::<u64>();
    sent.whole.extend(acknowledged);
    outcome
}

/// Bytes of chunks that earn a file's upload another stream of its own.
const STREAM_BYTES: u64 = 16 << 20;

/// Streams one file's chunks travel on at most.
const STREAMS_PER_FILE: usize = 3;

/// `chunks` cut into `parts` runs of about equal bytes, in order.
fn split_by_bytes(chunks: Vec<(ChunkId, Bytes)>, parts: usize) -> Vec<Vec<(ChunkId, Bytes)>> {
    let total: usize = chunks.iter().map(|(_, b)| b.len()).sum();
    let per_part = total.div_ceil(parts.max(1)).max(1);
    let mut out: Vec<Vec<(ChunkId, Bytes)>> = vec![Vec::new()];
    let mut filled = 0usize;
    for chunk in chunks {
        if filled >= per_part && out.len() < parts {
            out.push(Vec::new());
            filled = 0;
        }
        filled += chunk.1.len();
        out.last_mut().expect("never empty").push(chunk);
    }
    out
}

/// An edit of a file the cloud has: each run of `changed` chunks (those its base lacks)
/// goes as an rsync delta against the stretch of the current version it replaced, when
/// that is much smaller than the chunks — unless the signature call answers that the cloud
/// holds them all already (an attempt cut off after its delta landed). Returns the changed
/// chunks neither sent nor known to be held.
async fn send_changed_stretches<C: Cloud>(
    cloud: &mut C,
    session: &str,
    (base_id, base): (&ManifestId, &Manifest),
    manifest: &Manifest,
    changed: Vec<ChunkId>,
    data: &Bytes,
    sent_now: &mut Sent,
) -> Result<Vec<ChunkId>, CloudError> {
    let wanted: HashSet<ChunkId> = changed.iter().copied().collect();
    let changed_bytes: u64 = manifest
        .entries
        .iter()
        .filter(|e| wanted.contains(&e.chunk))
        .map(|e| u64::from(e.len))
        .sum();
    if changed_bytes < MIN_DELTA_RUN_BYTES {
        return Ok(changed);
    }
    let mut settled: HashSet<ChunkId> = HashSet::new();
    for span in keepsake_delta::span::plan_spans(base, manifest, &wanted) {
        let run_len = span.new_len();
        if run_len < MIN_DELTA_RUN_BYTES {
            continue;
        }
        let run = data.slice(span.new_offset as usize..(span.new_offset + run_len) as usize);
        let stretch = (span.base_offset, span.base_len);
        let ids: Vec<ChunkId> = span.chunks.iter().map(|(id, _)| *id).collect();
        let signature = match cloud
            .span_signature(base_id, stretch, (session, &ids))
            .await
        {
            Ok(Some(sig)) => sig,
            Ok(None) => {
                settled.extend(ids);
                continue;
            }
            Err(e) if !e.transient => {
                // Runs already rebuilt from deltas stay sent; the rest go whole.
                tracing::debug!(reason = %e.reason, "no span signature; sending chunks");
                break;
            }
            Err(e) => return Err(e),
        };
        let Ok(delta) = keepsake_delta::span::span_delta(&signature, &run) else {
            continue; // a signature we cannot use: the chunks go whole
        };
        // Worth it only when clearly smaller: the signature came down for it too.
        if (delta.len() + signature.len()) as u64 * 2 > run_len {
            continue;
        }
        let delta_len = delta.len() as u64;
        match cloud
            .put_chunks_by_delta(session, base_id, stretch, &span.chunks, delta)
            .await
        {
            Ok(acknowledged) => {
                sent_now.bytes += delta_len;
                settled.extend(acknowledged.iter().copied());
                sent_now.by_delta.extend(acknowledged);
            }
            Err(e) if !e.transient => {
                tracing::debug!(reason = %e.reason, message = %e.message, "delta refused; sending chunks");
            }
            Err(e) => return Err(e),
        }
    }
    Ok(changed
        .into_iter()
        .filter(|id| !settled.contains(id))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_under_a_directory_that_cannot_be_listed_are_not_taken_for_deleted() {
        assert!(is_under("2019/Summer/a.jpg", "2019/Summer"));
        assert!(is_under("2019/Summer", "2019/Summer"));
        assert!(!is_under("2019/Summer 2/a.jpg", "2019/Summer"));
        assert!(!is_under("2019/Summers/a.jpg", "2019/Summer"));
        assert!(!is_under("2019", "2019/Summer"));
    }

    #[test]
    fn cloud_names_never_escape_the_folder() {
        assert_eq!(safe_name("IMG_1.JPG", "a"), "IMG_1.JPG");
        assert_eq!(safe_name("../../etc/passwd", "a"), "passwd");
        assert_eq!(safe_name("..\\..\\boot.ini", "a"), "boot.ini");
        assert_eq!(safe_name(".hidden", "a"), "hidden");
        assert_eq!(safe_name("..", "a1"), "asset-a1");
        assert_eq!(safe_name("a\u{0}b\nc.jpg", "a"), "abc.jpg");
        assert_eq!(safe_name("", "x"), "asset-x");
    }

    #[test]
    fn names_written_into_the_folder_suit_a_memory_card() {
        assert_eq!(local_name("12:30 \"best\"?.jpg", "a"), "12_30 _best__.jpg");
        assert_eq!(local_name("a<b>c|d*e.heic", "a"), "a_b_c_d_e.heic");
        assert_eq!(local_name("IMG_1.JPG. . ", "a"), "IMG_1.JPG");
        assert_eq!(local_name("...", "a1"), "asset-a1");
        assert_eq!(local_name("..\\x.jpg", "a"), "x.jpg");
        assert_eq!(local_name("Café 😀.jpg", "a"), "Café 😀.jpg");
        // A long name leaves room for " (2)" and keeps its extension and whole characters.
        let long = format!("{}.jpeg", "é".repeat(124));
        let local = local_name(&long, "a");
        assert!(
            local.len() <= paths::LOCAL_NAME_MAX_BYTES,
            "{}",
            local.len()
        );
        assert!(local.ends_with("é.jpeg"), "{local}");
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(&local), b"one").unwrap();
        let second = unique_path(dir.path(), &local);
        std::fs::write(&second, b"two").unwrap();
        assert_eq!(std::fs::read(dir.path().join(&local)).unwrap(), b"one");
    }

    #[test]
    fn a_name_of_spaces_and_dots_never_becomes_a_hidden_file() {
        assert_eq!(safe_name(" . .", "a1"), "asset-a1");
        assert_eq!(safe_name(" .bashrc", "a"), "bashrc");
        assert_eq!(safe_name(". . .profile ", "a"), "profile");
    }

    #[test]
    fn a_commit_key_is_stable_per_upload_and_distinct_across_devices_assets_and_content() {
        let (x, y) = (ChunkId([1; 32]), ChunkId([2; 32]));
        let key = commit_key("dev-a", Some("asset-1"), &x);
        assert_eq!(key, commit_key("dev-a", Some("asset-1"), &x));
        assert_eq!(key.len(), 32);
        let others = [
            commit_key("dev-b", Some("asset-1"), &x),
            commit_key("dev-a", Some("asset-2"), &x),
            commit_key("dev-a", None, &x),
            commit_key("dev-a", Some("asset-1"), &y),
            // Lengths are hashed too, so moving a boundary is another key.
            commit_key("dev-aasset-1", Some(""), &x),
        ];
        for other in others {
            assert_ne!(key, other);
        }
    }

    #[test]
    fn a_taken_name_gets_a_number() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("IMG.JPG"), b"1").unwrap();
        std::fs::write(dir.path().join("IMG (2).JPG"), b"2").unwrap();
        assert_eq!(
            unique_path(dir.path(), "IMG.JPG"),
            dir.path().join("IMG (3).JPG")
        );
        assert_eq!(
            unique_path(dir.path(), "new.png"),
            dir.path().join("new.png")
        );
    }
}
