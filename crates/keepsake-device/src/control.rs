//! What a running agent shares with whoever controls it: its status, its settings, its
//! simulated conditions, its library folder (to capture or delete a photo as a person
//! would), its journal (to make edits) and its last view of the world (to diagnose).

use crate::DeviceError;
use crate::cloud::{Edit, Hlc};
use crate::device::{local_name, move_file, safe_name, unique_path};
use crate::edits::{self, LocalAlbum, LocalAsset};
use crate::journal::{Journal, Key};
use keepsake_policy::{PolicyConfig, Snapshot, doctor, evaluate};
use keepsake_store::Clock;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// What the agent last said about itself (kept in `status.json` in its data directory).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentStatus {
    /// The device.
    pub device_id: String,
    /// When the last pass ended (Unix ms).
    pub last_pass_ms: i64,
    /// Why it is not syncing, if it is not (a reason code).
    pub reason: Option<String>,
    /// Since when that reason (or its absence) holds.
    pub since_ms: i64,
    /// Files in the folder not yet in the cloud.
    pub pending_files: u64,
    /// Files uploaded since the agent started.
    pub uploaded: u64,
    /// Files downloaded since the agent started.
    pub downloaded: u64,
    /// The last transient failure, if any.
    pub last_error: Option<String>,
    /// When a transfer last stalled and was restarted.
    pub last_stall_ms: Option<i64>,
    /// Edits made here that the cloud does not have yet.
    #[serde(default)]
    pub pending_edits: u64,
    /// What the pass under way is doing, if one is.
    #[serde(default)]
    pub progress: Option<crate::Progress>,
    /// Bytes of originals kept here (all of them the cloud holds too).
    #[serde(default)]
    pub originals_bytes: u64,
    /// Bytes of previews kept here (Optimize Storage).
    #[serde(default)]
    pub previews_bytes: u64,
    /// Originals in the cloud only (Optimize Storage), fetched when opened.
    #[serde(default)]
    pub cloud_only: u64,
    /// The Optimize Storage budget for originals, if it is on.
    #[serde(default)]
    pub optimize_budget: Option<u64>,
    /// Files the last pass left out of sync (unreadable, or a name the library cannot
    /// keep), each with why and what fixes it.
    #[serde(default)]
    pub skipped: Vec<crate::SkippedFile>,
    /// Photos the cloud flagged damaged that this device has no copy of: they arrive once
    /// a device that has them sends them again.
    #[serde(default)]
    pub damaged_waiting: u64,
    /// Files and folders left out on purpose: system litter and what `.keepsakeignore`
    /// names (the last pass's).
    #[serde(default)]
    pub ignored: Vec<String>,
    /// New files whose name another photo held: `(name here, name in the library)`, the
    /// newest last (at most 100).
    #[serde(default)]
    pub numbered: Vec<(String, String)>,
    /// Passes made since the agent started (an idle agent makes one per interval).
    #[serde(default)]
    pub passes: u64,
    /// The cloud's words for `reason` (with its numbers), when the cloud gave it.
    #[serde(default)]
    pub reason_message: Option<String>,
    /// The library folder the agent keeps in sync.
    #[serde(default)]
    pub folder: Option<String>,
    /// What fixes `reason`, in words.
    #[serde(default)]
    pub reason_fix: Option<String>,
    /// Bytes of the files waiting to upload.
    #[serde(default)]
    pub pending_bytes: u64,
    /// Originals waiting to download here (put off by the policy or today's allowance).
    #[serde(default)]
    pub pending_downloads: u64,
    /// Bytes of those.
    #[serde(default)]
    pub pending_download_bytes: u64,
}

/// The device's sync settings, as its owner chose them (`settings.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// The "sync this device" switch.
    pub sync_enabled: bool,
    /// Mobile data may be used for sync.
    pub cellular_allowed: bool,
    /// On mobile data, no daily cap applies.
    pub unlimited_updates: bool,
    /// On mobile data, at most this many bytes a day.
    pub daily_cap_bytes: Option<u64>,
    /// Sync paused until this moment (Unix ms).
    pub paused_until_ms: Option<i64>,
    /// "Sync anyway for an hour" despite low battery, until this moment (Unix ms).
    pub power_override_until_ms: Option<i64>,
    /// Optimize Storage: at most this many bytes of originals on the device (previews of
    /// everything); `None` downloads and keeps every original.
    pub optimize_budget_bytes: Option<u64>,
    /// Uploads at most this many bytes a second (`None`: as fast as the link goes).
    pub limit_upload_bytes: Option<u64>,
    /// Downloads at most this many bytes a second.
    pub limit_download_bytes: Option<u64>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            sync_enabled: true,
            cellular_allowed: false,
            unlimited_updates: false,
            daily_cap_bytes: None,
            paused_until_ms: None,
            power_override_until_ms: None,
            optimize_budget_bytes: None,
            limit_upload_bytes: None,
            limit_download_bytes: None,
        }
    }
}

impl Settings {
    /// Puts these settings into a snapshot of the device's conditions.
    pub fn apply_to(&self, snapshot: &mut Snapshot) {
        snapshot.sync_enabled = self.sync_enabled;
        snapshot.paused_until = self.paused_until_ms;
        snapshot.power_override_until = self.power_override_until_ms;
        snapshot.storage.optimize = self.optimize_budget_bytes.is_some();
        snapshot.cellular.allowed = self.cellular_allowed;
        snapshot.cellular.unlimited_updates = self.unlimited_updates;
        snapshot.cellular.daily_cap_bytes = if self.unlimited_updates {
            None
        } else {
            self.daily_cap_bytes
        };
    }
}

/// The doctor's answer for a running agent, from what it last saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnosis {
    /// Nothing blocks sync.
    pub syncing: bool,
    /// The checklist as sentences.
    pub text: String,
    /// The same as JSON.
    pub json: String,
}

/// A device's conditions as a person (or a test) sets them (`conditions.json`); anything
/// left out is read from the machine.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Conditions {
    /// "wifi", "wired", "cellular", "offline".
    pub network: Option<String>,
    /// Battery percentage.
    pub battery_percent: Option<u8>,
    /// On a charger.
    pub charging: Option<bool>,
    /// Low-power mode.
    pub low_power: bool,
    /// Free bytes on the device.
    pub free_bytes: Option<u64>,
    /// The connection is metered (else the machine's answer, if it has one).
    pub metered: Option<bool>,
}

const STATUS: &str = "status.json";
const CONDITIONS: &str = "conditions.json";
const SETTINGS: &str = "settings.json";
const SNAPSHOT: &str = "snapshot.json";
/// The DeviceControl secret's file in the data directory.
pub const CONTROL_SECRET: &str = "control-secret";
/// Touched after every edit or settings change, so an agent in another process wakes.
pub const WAKE_FILE: &str = "wake";
/// Largest photo accepted through the control service.
pub const MAX_IMPORT_BYTES: usize = 64 << 20;

/// The agent's folder, data directory and journal, and a way to wake it.
pub struct FolderControl {
    folder: PathBuf,
    data_dir: PathBuf,
    device_id: String,
    journal: Mutex<Journal>,
    clock: Arc<dyn Clock>,
    wake: tokio::sync::mpsc::UnboundedSender<()>,
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), DeviceError> {
    // A temp file of its own per write: the pass and the progress follower both save the
    // status, and a shared temp name let one rename the other's half-written file.
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("{}.{n}.tmp", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, DeviceError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{} is not valid: {e}", path.display()),
            )
        })?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

impl FolderControl {
    /// Control over the agent syncing `config.folder`, keeping its status, settings and
    /// conditions in `data_dir`; `wake` starts a pass.
    pub fn open(
        config: &crate::DeviceConfig,
        data_dir: PathBuf,
        clock: Arc<dyn Clock>,
        wake: tokio::sync::mpsc::UnboundedSender<()>,
    ) -> Result<Self, DeviceError> {
        std::fs::create_dir_all(&config.data_dir)?;
        let journal = Journal::open(&config.data_dir.join("journal.sqlite"))?;
        // Without a folder of its own (a CLI next to the agent), the agent's folder.
        let folder = match journal.get(Key::Folder)? {
            Some(known) if config.folder.as_os_str().is_empty() => PathBuf::from(known),
            _ => config.folder.clone(),
        };
        Ok(Self {
            folder,
            data_dir,
            device_id: config.device_id.clone(),
            journal: Mutex::new(journal),
            clock,
            wake,
        })
    }

    /// The data directory this controls.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The secret a DeviceControl caller must present (`x-keepsake-control-secret`), made
    /// on first use in `DATA/control-secret`, readable by the device's owner only. A
    /// loopback port is open to every user of the machine; the file is not.
    pub fn control_secret(&self) -> Result<String, DeviceError> {
        std::fs::create_dir_all(&self.data_dir)?;
        let path = self.data_dir.join(CONTROL_SECRET);
        match std::fs::read_to_string(&path) {
            Ok(secret) if secret.trim().len() >= 32 => return Ok(secret.trim().to_string()),
            Ok(_) => std::fs::remove_file(&path)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        let secret = keepsake_store::random_hex(&keepsake_store::OsEntropy, 32);
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        use std::io::Write;
        let mut file = options.open(&path)?;
        file.write_all(secret.as_bytes())?;
        file.sync_all()?;
        Ok(secret)
    }

    fn journal(&self) -> std::sync::MutexGuard<'_, Journal> {
        self.journal.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes the agent, whether it runs in this process or another.
    fn wake(&self) {
        let _ = self.wake.send(());
        let _ = std::fs::write(self.data_dir.join(WAKE_FILE), b"");
    }

    /// Makes an edit as a person on the device would; the agent sends it on its next pass.
    pub fn edit(&self, edit: Edit) -> Result<Hlc, DeviceError> {
        let stamp = edits::queue(&self.journal(), &edit, self.clock.now_ms(), &self.device_id)?;
        self.wake();
        Ok(stamp)
    }

    /// The original of an asset in the folder, or asks the agent to fetch it (Optimize
    /// Storage kept it in the cloud): `Ok(Some(path))` when it is here.
    pub fn open_original(&self, asset_id: &str) -> Result<Option<PathBuf>, DeviceError> {
        let journal = self.journal();
        if let Some(f) = journal.file_of_asset(asset_id)? {
            return Ok(Some(self.folder.join(f.path)));
        }
        if journal.cloud_only(asset_id)?.is_none() {
            return Err(DeviceError::Unknown {
                kind: "original",
                id: asset_id.to_string(),
            });
        }
        journal.set(Key::WantOriginal(asset_id), "1")?;
        drop(journal);
        self.wake();
        Ok(None)
    }

    /// Allows the deletes held back by the mass-delete guard, on the agent's next pass.
    pub fn confirm_deletes(&self) -> Result<(), DeviceError> {
        self.journal().set(Key::ConfirmDeletes, "1")?;
        self.wake();
        Ok(())
    }

    /// Finds an asset by id, by its path in the folder, or by its file name when only one
    /// asset has it.
    pub fn find_asset(&self, id_or_name: &str) -> Result<LocalAsset, DeviceError> {
        let assets = self.assets()?;
        if let Some(a) = assets.iter().find(|a| a.asset_id == id_or_name) {
            return Ok(a.clone());
        }
        let matches: Vec<&LocalAsset> = assets
            .iter()
            .filter(|a| a.name == id_or_name || a.name.rsplit('/').next() == Some(id_or_name))
            .collect();
        match matches.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(DeviceError::Unknown {
                kind: "asset",
                id: id_or_name.to_string(),
            }),
            many => Err(DeviceError::Invalid(format!(
                "{id_or_name:?} names {} assets ({}); use an asset id",
                many.len(),
                many.iter()
                    .map(|a| a.asset_id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    /// Finds an album by id or by its name.
    pub fn find_album(&self, id_or_name: &str) -> Result<LocalAlbum, DeviceError> {
        let albums = self.albums()?;
        albums
            .iter()
            .find(|a| a.album_id == id_or_name)
            .or_else(|| albums.iter().find(|a| a.name == id_or_name))
            .cloned()
            .ok_or_else(|| DeviceError::Unknown {
                kind: "album",
                id: id_or_name.to_string(),
            })
    }

    /// Every asset the device knows, with its metadata and local edits.
    pub fn assets(&self) -> Result<Vec<LocalAsset>, DeviceError> {
        edits::assets(&self.journal())
    }

    /// Every album the device knows.
    pub fn albums(&self) -> Result<Vec<LocalAlbum>, DeviceError> {
        edits::albums(&self.journal())
    }

    /// The owner's settings (defaults until changed).
    pub fn settings(&self) -> Result<Settings, DeviceError> {
        Ok(read_json(&self.data_dir.join(SETTINGS))?.unwrap_or_default())
    }

    /// Replaces the settings and wakes the agent to obey them.
    pub fn set_settings(&self, settings: &Settings) -> Result<(), DeviceError> {
        let body = serde_json::to_vec_pretty(settings).map_err(std::io::Error::other)?;
        write_atomically(&self.data_dir.join(SETTINGS), &body)?;
        self.wake();
        Ok(())
    }

    /// Records the snapshot the agent's last pass was judged on.
    pub fn save_snapshot(&self, snapshot: &Snapshot) -> Result<(), DeviceError> {
        let body = serde_json::to_vec_pretty(snapshot).map_err(std::io::Error::other)?;
        write_atomically(&self.data_dir.join(SNAPSHOT), &body)
    }

    /// The doctor's checklist for this device, judged now on what the agent last saw. A
    /// refusal from the cloud the conditions do not explain is named too.
    pub fn diagnose(&self) -> Result<Diagnosis, DeviceError> {
        let Some(mut snapshot) = read_json::<Snapshot>(&self.data_dir.join(SNAPSHOT))? else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "the agent has not finished a pass yet; ask again in a moment",
            )
            .into());
        };
        snapshot.now = self.clock.now_ms();
        let status = self.status();
        snapshot.last_stall_at = status.last_stall_ms;
        let decision = evaluate(&snapshot, &PolicyConfig::default());
        let report = doctor::diagnose(&snapshot, &decision, &doctor::Unknowns::default());
        let mut text = doctor::render_text(&report);
        let explained = decision
            .reasons()
            .iter()
            .any(|r| Some(r.code.as_str()) == status.reason.as_deref());
        let mut syncing = report.syncing;
        if let Some(reason) = status.reason.as_deref().filter(|_| !explained) {
            syncing = false;
            text.push_str(&format!("\nThe last pass stopped with {reason}.\n"));
        }
        Ok(Diagnosis {
            syncing,
            text,
            json: doctor::render_json(&report),
        })
    }

    /// The agent's last status (default before its first pass).
    pub fn status(&self) -> AgentStatus {
        std::fs::read(self.data_dir.join(STATUS))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Records the agent's status.
    pub fn save_status(&self, status: &AgentStatus) -> Result<(), DeviceError> {
        let body = serde_json::to_vec_pretty(status).map_err(std::io::Error::other)?;
        write_atomically(&self.data_dir.join(STATUS), &body)
    }

    /// The conditions set for the device, if any were.
    pub fn conditions(&self) -> Result<Option<Conditions>, DeviceError> {
        read_json(&self.data_dir.join(CONDITIONS))
    }

    /// Replaces the device's conditions and wakes the agent to obey them.
    pub fn set_conditions(&self, conditions: &Conditions) -> Result<(), DeviceError> {
        let body = serde_json::to_vec_pretty(conditions).map_err(std::io::Error::other)?;
        write_atomically(&self.data_dir.join(CONDITIONS), &body)?;
        let _ = self.wake.send(());
        Ok(())
    }

    /// Captures a photo: written beside the folder, then renamed in whole.
    pub fn import(&self, name: &str, data: &[u8]) -> Result<String, DeviceError> {
        if data.len() > MAX_IMPORT_BYTES {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("photos are at most {MAX_IMPORT_BYTES} bytes here"),
            )
            .into());
        }
        let name = local_name(name, "import");
        let tmp = self.data_dir.join("tmp").join(format!("import-{name}"));
        std::fs::create_dir_all(self.data_dir.join("tmp"))?;
        std::fs::write(&tmp, data)?;
        std::fs::File::open(&tmp)?.sync_all()?;
        let dest = unique_path(&self.folder, &name);
        move_file(&tmp, &dest)?;
        let _ = self.wake.send(());
        Ok(dest
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or(name))
    }

    /// Deletes a file from the folder (only a plain name in the folder itself).
    pub fn delete(&self, name: &str) -> Result<(), DeviceError> {
        let safe = safe_name(name, "");
        if safe != name {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{name:?} is not a file name in the library folder"),
            )
            .into());
        }
        std::fs::remove_file(self.folder.join(&safe))?;
        let _ = self.wake.send(());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imports_land_whole_and_deletes_stay_inside_the_folder() {
        let root = tempfile::tempdir().unwrap();
        let (folder, data) = (root.path().join("f"), root.path().join("d"));
        std::fs::create_dir_all(&folder).unwrap();
        std::fs::create_dir_all(&data).unwrap();
        let (wake, mut woken) = tokio::sync::mpsc::unbounded_channel();
        let config = crate::DeviceConfig::new(folder.clone(), data.join("state"), "d".into());
        let clock = Arc::new(keepsake_store::SystemClock);
        let control = FolderControl::open(&config, data, clock, wake).unwrap();
        assert_eq!(control.import("IMG.JPG", b"one").unwrap(), "IMG.JPG");
        assert_eq!(control.import("../IMG.JPG", b"two").unwrap(), "IMG (2).JPG");
        assert_eq!(std::fs::read(folder.join("IMG (2).JPG")).unwrap(), b"two");
        assert!(woken.try_recv().is_ok());
        assert!(control.delete("../f/IMG.JPG").is_err());
        control.delete("IMG.JPG").unwrap();
        assert!(!folder.join("IMG.JPG").exists());
        let c = Conditions {
            network: Some("cellular".into()),
            ..Conditions::default()
        };
        control.set_conditions(&c).unwrap();
        assert_eq!(control.conditions().unwrap(), Some(c));
    }

    /// An import is written in the data directory and renamed into the folder: with the
    /// folder on another file system the rename was refused (EXDEV) and nothing arrived.
    #[test]
    fn an_import_reaches_a_folder_on_another_file_system() {
        let folders = tempfile::tempdir().unwrap();
        let Ok(data) = tempfile::tempdir_in("/dev/shm") else {
            eprintln!("no /dev/shm here: nothing crosses a file system");
            return;
        };
        let folder = folders.path().join("f");
        std::fs::create_dir_all(&folder).unwrap();
        let (wake, _woken) = tokio::sync::mpsc::unbounded_channel();
        let config =
            crate::DeviceConfig::new(folder.clone(), data.path().join("state"), "d".into());
        let clock = Arc::new(keepsake_store::SystemClock);
        let control = FolderControl::open(&config, data.path().into(), clock, wake).unwrap();
        assert_eq!(control.import("IMG.JPG", b"one").unwrap(), "IMG.JPG");
        assert_eq!(std::fs::read(folder.join("IMG.JPG")).unwrap(), b"one");
        let left: Vec<_> = std::fs::read_dir(data.path().join("tmp"))
            .unwrap()
            .chain(std::fs::read_dir(&folder).unwrap())
            .map(|e| e.unwrap().file_name())
            .filter(|n| n != "IMG.JPG")
            .collect();
        assert!(left.is_empty(), "left behind: {left:?}");
    }
}
