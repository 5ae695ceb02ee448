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

mod cloud;
mod control;
mod device;
mod edits;
mod journal;
mod paths;
mod upgrade;

pub use cloud::{
    Cloud, CloudError, CommitReply, ContentHolder, ContentLookup, Edit, FeedPage, NewAsset,
    RemoteAlbum, RemoteAsset, RemoteState, Stamp,
};
pub use control::{
    AgentStatus, CONTROL_SECRET, Conditions, Diagnosis, FolderControl, MAX_IMPORT_BYTES, Settings,
    WAKE_FILE,
};
pub use device::{
    Device, DeviceConfig, DeviceError, Progress, STREAMED_EVENTS, SkippedFile, SyncReport,
    agent_running, safe_name,
};
pub use edits::{LocalAlbum, LocalAsset};
pub use paths::{FsRules, IGNORE_FILE};
