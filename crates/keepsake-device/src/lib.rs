//! The device: a library folder (the camera roll) kept in sync with the cloud.
//!
//! A [`Device`] scans its folder (size, mtime and inode first; only changed files are
//! hashed and chunked). Every file is a photo of its own at its path: a new one is
//! uploaded (only the chunks the cloud lacks travel, so a copy sends its manifest alone), a
//! moved or renamed one is sent as a rename, a deleted one goes to Recently Deleted
//! everywhere. It follows the change feed, writing new assets at their library paths (temp
//! file, verified hash, fsync, rename; folders made without following links), moving
//! renamed ones, and deleted ones to a local Recently Deleted and back on restore.
//! Its SQLite journal lives outside the folder and survives restarts. It talks to the
//! cloud only through the [`Cloud`] trait: `keepsake-transport` implements it over gRPC,
//! tests can fake it.
//!
//! An [`Agent`] keeps a device in sync for as long as it runs: a pass whenever woken or
//! its interval passed, back-off after failures, the status people read and the cloud's
//! device ledger kept current. What belongs to the machine — its conditions
//! ([`conditions::snapshot`]), settings, a new access token, where lines are printed —
//! comes through the [`Host`] trait, so `keepsake sync` and the simulation run one loop.
//!
//! ```no_run
//! # async fn demo<C: keepsake_device::Cloud>(cloud: C) -> Result<(), keepsake_device::DeviceError> {
//! use keepsake_device::{Device, DeviceConfig};
//! let config = DeviceConfig::new("Pictures/Keepsake".into(), "device-data".into(), "phone-1".into());
//! let clock = std::sync::Arc::new(keepsake_store::SystemClock);
//! let mut device = Device::open(config, cloud, clock)?;
//! let report = device.sync_once().await?;
//! println!("{} uploaded, {} downloaded", report.uploaded, report.downloaded);
//! # Ok(()) }
//! ```
//!
//! # In detail
//!
//! the device's sync engine, against its own `Cloud` port (no tonic, no prost):
//! `Device::sync_once` scans the library folder (size/mtime/inode first, only changed files
//! hashed and chunked), pairs a file gone from one path with a new one (by inode, then by
//! content, one to one) as a move, sent as a `Rename` edit (nothing uploaded; a renamed folder
//! is as many moves; not a delete, so the mass-delete guard does not count it); a new file is a
//! new asset with an id of its own in its request id (the journal's `nonce`), whose chunks the
//! cloud mostly has already for a copy (only the manifest travels); it is linked instead only
//! to an unclaimed asset with its content at its own path (put back while in Recently Deleted:
//! restored) or, on a device that never read the feed (a reinstall over a full folder), to any
//! unclaimed asset with its content, path first, never re-uploads purged content, lets the
//! policy (keepsake-policy) decide from the device's conditions what may run this pass, asks
//! the cloud about the next thousand new files' contents in one call (`Cloud::lookups`,
//! FindAssetsByContent; an answer is used for at most a minute, so content purged elsewhere
//! meanwhile is not uploaded again), uploads only missing chunks under one reservation (its
//! request id kept in the journal until everything is sent, so a pass that failed half-way — a
//! full server disk, a crash — takes it up again rather than leaving one more lease; a pass
//! that failed releases it with `Cloud::end_upload` when the cloud can be told), up to four
//! files at once on lanes (`Cloud::lane`, another connection to the same cloud; the next three
//! files that will be sent are read and chunked ahead while the lanes carry the ones before, at
//! most 64 MiB of them — a file is chunked on two threads from 1 MiB up; a file with 32 MiB and
//! more to send puts its chunks on up to three streams at once, so the cloud verifies, writes
//! and fsyncs them side by side; a file of 64 MiB and more (`DeviceConfig::streamed_from`), new
//! or edited, is never held whole: it goes alone, and a thread of its own reads and chunks it
//! into 32 MiB batches — each asked about with FindMissing and sent on a lane, two batches
//! travelling at once — while the next is read (four batches in memory at most, whatever the
//! video's size); its capture time and size come from its `ftyp`/`moov`/`meta` boxes, found by
//! seeking (`keepsake_media::probe_reader`); if the bytes read are not those the scan hashed,
//! nothing is committed and the next pass sends what the file became; the network part of a
//! file's upload — FindMissing, chunks or span deltas, the commit carrying the manifest
//! (`Cloud::commit`, the port's only way to store a manifest; `CloudClient` sends it on its own
//! first to a cloud that ignores it or lacks an edit's base) — runs on a lane (an edit takes
//! its base version's manifest from the journal, which keeps the last 256 versions' manifests
//! it sent or fetched, or fetches it; asks about the chunks the base lacks with each changed
//! stretch's signature — `SpanSignature` pins those the account holds and, when it holds them
//! all, sends no signature and the device no delta — and FindMissing only about what no delta
//! covered; sends the new manifest as splices of the base) and the pass journals what it did
//! when it lands; a file waits for the lanes when it shares a chunk or its content with a file
//! in flight, or would take the bytes held past 160 MiB) (acknowledged chunks journalled even
//! when the call fails; for an edit of a file the cloud has (under 64 MiB), each run of changed
//! chunks of 16 KiB or more goes as a span delta against the current version when signature
//! plus delta is under half the run, falling back to whole chunks on any permanent refusal),
//! commits with a request id hashed from device, asset and content (a file edited here whose
//! photo another device deleted meanwhile — the commit answers ASSET_NOT_LIVE — becomes a new
//! photo of its own, `kept_apart`, instead of blocking every pass), turns files deleted from
//! the folder into trashes (sent as edits are, many a call) — any photo the library has, even
//! one with an edit not yet sent (unless they only moved, or too many vanished at once), then
//! follows the feed: the content of the page's next new assets is fetched ahead on lanes while
//! the current one is written (at most three and 160 MiB, each under 64 MiB, only where the
//! download is certain; dropped and stopped when the page or the pass ends); any other download
//! fetches its chunks 32 MiB at a time on a lane, one batch ahead of the writing, and drops
//! each once written for the last time (a new version of a file here reads the chunks it shares
//! from the old file by offset) — a device never holds a large download whole; downloads go to
//! the asset's library path (`paths`: each folder made one component at a time and never
//! through a symbolic link; names as written unless the file system refuses them, or `FsRules`
//! says it folds names or refuses what exFAT refuses, as tests emulate; a name taken here is
//! numbered here; a file with the same bytes here is copied, not fetched) — a rename or move
//! elsewhere moves the file here (`follow_rename`, never a file changed since the scan; the
//! library numbering a name this device asked for leaves the file its own name; empty folders
//! follow) go into a temp file in its data directory (flushed and its page cache released every
//! 32 MiB and at the end), verifies the whole-file hash, fsyncs and renames into place (every
//! move between the data directory and the folder — downloads, imports, Recently Deleted and
//! back, purged files parked — is a rename or, the folder being on another file system, a copy
//! made durable beside the destination, renamed in, and only then the source removed:
//! `move_file`); trashed assets move to the device's Recently Deleted and back on restore;
//! purges remove them; the feed treats a file changed since the scan as unsynced (it holds an
//! edit the cloud has not seen): never overwritten by a newer version (that lands beside it),
//! moved to Recently Deleted or removed — the next pass sends the edit; a new version of a file
//! already here fetches only the chunks the old file lacks. The feed's metadata and albums are
//! mirrored in the journal (the device's view). `edits`: a person's edits (favourite, hidden,
//! albums, trash, restore) are checked against that view, shown at once and queued in the
//! journal's outbox with a hybrid-logical-clock stamp (moved past every stamp the feed brings);
//! each pass sends the outbox in order before reading the feed — 500 edits a call
//! (`Cloud::edits`, the port's only way to send edits: `ApplyEdits`, which the library applies
//! in one transaction, each edit in a savepoint of its own and answered on its own;
//! `CloudClient` makes one call per edit for a server without it) — drops edits refused for
//! good, keeps the rest across restarts. Policy per class: photos, videos (wait for Wi-Fi on a
//! metered link), metadata, originals (put off, the feed stops before them); today's
//! mobile-data use is counted in the journal and the cap enforced within the pass. `Progress`
//! on a watch channel. Optimize Storage (`optimize_budget`): previews of every asset in the
//! data directory; new originals over the budget stay cloud-only; the oldest originals whose
//! exact version the cloud acknowledged (and whose file is unchanged since the scan) are
//! evicted — journalled as cloud-only in one transaction before the file goes; `fetch_original`
//! brings one back verified. An asset the feed flags `damaged` whose exact original is here is
//! marked unsynced and uploaded again in the same pass; one this device has no copy of is not
//! fetched (it cannot be assembled) and the feed moves on — journalled as waited for
//! (`Device::damaged_waiting`, in the agent's status and the doctor) until the repair's feed
//! entry brings it. The capture time and size committed come from keepsake-media. A marker file
//! guards against an unmounted folder. An open device holds `agent.lock` in its data directory
//! locked, so a second agent on the same data directory refuses to start (`AlreadyRunning`)
//! instead of downloading every photo again beside the first's. One odd entry never fails the
//! scan: a file that cannot be read, whose name is not UTF-8, or a symbolic link (never
//! followed: it could lead out of the folder or in a circle) is left out of the pass as a
//! `SkippedFile` (reason code and fix, in `SyncReport::skipped` and the agent's status), and
//! the journal's files under a directory that cannot be listed count as present, never as
//! deleted. The SQLite journal lives in the data directory; `upgrade` brings one written before
//! paths up to date once (files an older version linked to one asset split, a subfolder sent as
//! a rename). `FolderControl`: what a running agent shares with its controller — `AgentStatus`
//! (`status.json`, with progress), `Settings` (`settings.json`: sync switch, pause, mobile
//! data, daily cap, low-battery override), `Conditions` (`conditions.json`), the last policy
//! snapshot (`snapshot.json`) for `diagnose`, edits through a second journal connection,
//! importing a photo into the folder (written beside, renamed in) and deleting one (plain names
//! only)

mod agent;
mod cloud;
pub mod conditions;
mod control;
mod device;
mod edits;
mod journal;
mod paths;
pub mod probe;
mod upgrade;

pub use agent::{
    Agent, AgentConfig, AgentError, Host, LEDGER_EVERY_MS, Next, Passed, ledger_report,
    retry_schedule, state_of,
};
pub use cloud::{
    Cloud, CloudError, CommitReply, ContentHolder, ContentLookup, Edit, FeedPage, Hlc,
    LedgerReport, NewAsset, Reason, RemoteAlbum, RemoteAsset, RemoteState, degrees_e7,
};
pub use control::{
    AgentStatus, CONTROL_SECRET, Conditions, Diagnosis, FolderControl, MAX_IMPORT_BYTES, Settings,
    WAKE_FILE,
};
pub use device::{
    Device, DeviceConfig, DeviceError, Incoming, IncomingBytes, Overrides, Progress,
    STREAMED_EVENTS, SkippedFile, SyncReport, agent_running, safe_name, upload_incoming,
};
pub use edits::{LocalAlbum, LocalAsset};
pub use paths::{FsRules, IGNORE_FILE};
