//! One device's sync engine. [`Device::sync_once`] runs one pass through the stages,
//! each a module: [`scan`] (what changed in the folder), [`upload`] with [`ship`] and
//! [`stream`] (what the cloud lacks, sent lanes at a time), [`outbox`] (edits and
//! deletes), [`feed`] (each remote change, decided by the pure [`reconcile`] and carried
//! out) with [`download`], and [`storage`] (previews, eviction, the mobile budget).
//! What a pass knows lives in its [`Pass`], which starts empty each time.

use crate::cloud::Reason;
use crate::cloud::{
    Cloud, CloudError, CommitReply, ContentHolder, ContentLookup, Edit, Hlc, NewAsset, RemoteAsset,
    RemoteState,
};
use crate::edits::{self, LocalAlbum, LocalAsset};
use crate::journal::{CloudOnlyRow, Family, FileRow, Journal, Key, MetaRow, TrashedRow};
use crate::paths::{self, FsRules, Ignore};
use bytes::Bytes;
use keepsake_delta::{ChunkParams, DeltaError, manifest_of};
use keepsake_policy::{PolicyConfig, Snapshot, WorkClass, evaluate};
use keepsake_store::{ChunkId, Clock, Manifest, ManifestId};
use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

mod download;
mod feed;
mod fsutil;
mod incoming;
mod outbox;
mod reconcile;
mod scan;
mod ship;
mod storage;
mod stream;
mod upload;

use download::*;
pub use fsutil::safe_name;
pub(crate) use fsutil::*;
pub use incoming::{Incoming, IncomingBytes, Overrides, upload_incoming};
pub use scan::SkippedFile;
pub(crate) use scan::*;
use ship::*;
pub use stream::STREAMED_EVENTS;
pub(crate) use stream::*;
use upload::*;

/// The file that marks a folder as a Keepsake library: without it (an unmounted disk, a
/// moved folder) the device deletes nothing and syncs nothing.
pub const MARKER: &str = ".keepsake-library";

/// The file in the data directory an open device holds locked.
const AGENT_LOCK: &str = "agent.lock";

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
    /// The words for `blocked`: the cloud's own for a refusal (with its numbers: what is
    /// used, held and needed for QUOTA_EXCEEDED), else the policy's.
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
    /// What fixes `blocked`, when the policy decided it (its own words for it are in
    /// `blocked_message`).
    pub blocked_fix: Option<String>,
    /// Originals the feed holds that wait to be downloaded here (the policy or today's
    /// allowance put them off), and their bytes; counted only when a download waits.
    pub pending_downloads: u64,
    /// Bytes of those.
    pub pending_download_bytes: u64,
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
    /// What the cloud said of the next new files' contents, asked for all at once, and
    /// when: an answer older than [`LOOKUP_FRESH_MS`] is asked again.
    looked_up: LookedUp,
    /// The last upload stopped on the server's full disk: the next sends one file at a
    /// time until one lands, so waiting out a full disk costs a file a try, not a lane's
    /// worth of them.
    storage_was_full: bool,
    /// The state of the pass under way; a new pass starts from [`Pass::default`].
    pass: Pass,
    progress: tokio::sync::watch::Sender<Progress>,
    /// The last count of originals waiting to download: when, how many, how many bytes.
    waiting_counted: Option<(i64, u64, u64)>,
}

/// How long a count of the originals waiting to download stands before the feed is read
/// to its end again (a device waiting for Wi-Fi passes every minute; the count is for
/// the ledger, which hears every few minutes).
const WAITING_RECOUNT_MS: i64 = 5 * 60_000;

/// What one pass knows and holds, and nothing outlives: each pass starts from the default,
/// so no field is reset by hand and none leaks into the next pass.
#[derive(Default)]
struct Pass {
    /// The upload reservation, shared by every file the pass sends.
    reservation: Option<String>,
    /// Bytes the pass may still move (today's mobile-data allowance), if limited.
    budget: Option<u64>,
    /// Why videos wait (on mobile data without unlimited updates), if they do.
    videos_wait: Option<String>,
    /// Why originals are not downloaded, if they are not.
    downloads_wait: Option<String>,
    /// A download was put off: the feed stops there and resumes next pass.
    deferred: bool,
    /// Content of the feed's next new assets, fetched on lanes while this one is written.
    ahead: Ahead,
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
        if journal.get(Key::FolderMarked)?.is_none() {
            // Only a brand-new device claims its folder; after that a missing marker
            // means the folder is not the one we know (unmounted, moved), never "empty".
            std::fs::create_dir_all(&config.folder)?;
            let marker = config.folder.join(MARKER);
            if !marker.exists() {
                std::fs::write(&marker, format!("{}\n", config.device_id))?;
            }
            journal.set(Key::FolderMarked, "1")?;
        }
        // Tools that open the journal without the agent (`keepsake open`) learn the folder here.
        let folder = std::path::absolute(&config.folder)?;
        journal.set(Key::Folder, &folder.to_string_lossy())?;
        crate::upgrade::keep_files_apart(&journal, clock.now_ms(), &config.device_id)?;
        let waited_for = journal
            .listed(Family::DamagedWaiting)?
            .into_iter()
            .collect();
        Ok(Self {
            waiting_counted: None,
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
            looked_up: LookedUp::default(),
            storage_was_full: false,
            pass: Pass::default(),
            progress: tokio::sync::watch::Sender::new(Progress::default()),
        })
    }

    /// The device's clock, now.
    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Follows the pass under way: files and bytes done out of the total, and the current file.
    pub fn progress(&self) -> tokio::sync::watch::Receiver<Progress> {
        self.progress.subscribe()
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
        self.journal.set(Key::ConfirmDeletes, "1")?;
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
            .get(Key::Cursor)?
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

    /// The conditions the next pass decides on, if a policy applies.
    pub fn conditions(&self) -> Option<&Snapshot> {
        self.conditions.as_ref()
    }

    /// Bytes of the files in the folder not yet in the cloud.
    pub fn pending_bytes(&self) -> Result<u64, DeviceError> {
        Ok(self.journal.pending_bytes()?)
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
        self.pass = Pass::default();
        let mut policy_reason = None;
        let mut policy_words: Option<keepsake_policy::Reason> = None;
        let (may_upload, may_metadata) = match &self.conditions {
            None => (true, true),
            Some(conditions) => {
                let mut now = conditions.clone();
                now.now = self.clock.now_ms();
                now.cellular.used_today_bytes = self.cellular_used_today()?;
                let decision = evaluate(&now, &self.policy);
                self.pass.budget = decision
                    .bandwidth_budget_bytes
                    .filter(|_| self.on_cellular());
                let first_reason = |class: WorkClass| {
                    decision
                        .class(class)
                        .reasons
                        .first()
                        .map(|r| r.code.as_str().to_string())
                };
                policy_words = [
                    WorkClass::PhotoUpload,
                    WorkClass::Metadata,
                    WorkClass::VideoUpload,
                    WorkClass::OriginalDownload,
                ]
                .into_iter()
                .find_map(|class| decision.class(class).reasons.first().cloned());
                self.pass.videos_wait = first_reason(WorkClass::VideoUpload);
                self.pass.downloads_wait = first_reason(WorkClass::OriginalDownload);
                policy_reason = policy_words.as_ref().map(|r| r.code.as_str().to_string());
                (
                    decision.allows(WorkClass::PhotoUpload),
                    decision.allows(WorkClass::Metadata),
                )
            }
        };
        // A permanent refusal (an outdated client, a revoked device…) is a reason to show,
        // not a crash: the pass ends with it and the next one tries again.
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
                for asset in self.journal.listed(Family::WantOriginal)? {
                    match self.fetch_original(&asset).await {
                        Ok(_) | Err(DeviceError::Unknown { .. }) => {}
                        Err(e) => return Err(e),
                    }
                    self.journal.forget(Key::WantOriginal(&asset))?;
                }
            }
            self.evict(&mut report)?;
            Ok::<(), DeviceError>(())
        }
        .await;
        // The pass ends here: its fetches ahead stop, and nothing of it reaches the next.
        let pass = std::mem::take(&mut self.pass);
        self.progress.send_replace(Progress::default());
        // What the pass itself ran into (a refusal, the cap) comes first; else the policy's.
        if report.blocked.is_none() {
            report.blocked = policy_reason;
            if let Some(words) = policy_words {
                report.blocked_message = Some(words.message);
                report.blocked_fix = Some(words.fix);
            }
        }
        if self.on_cellular() {
            // Counted even when the pass failed: the bytes moved all the same.
            let moved = report.bytes_sent + report.bytes_received;
            let used = self.cellular_used_today()? + moved;
            self.journal.set(self.cellular_key(), &used.to_string())?;
        }
        let finished = outcome.is_ok();
        if let (false, Some(reservation)) = (finished, pass.reservation) {
            // A pass that failed half-way (a full server disk, a cut connection) gives back
            // what its reservation still held, so it never makes the plan look full to the
            // other devices. If the cloud cannot be told, the next pass takes the same
            // reservation up again (its request id stays in the journal).
            if self.cloud.end_upload(&reservation).await.is_ok() {
                self.journal.forget(Key::PassReservation)?;
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
            self.journal.forget(Key::PassReservation)?;
        }
        tracing::info!(?report, "sync pass done");
        Ok(report)
    }
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
