//! What a running agent shares with whoever controls it: its status, its simulated
//! conditions, and its library folder (to capture or delete a photo as a person would).

use crate::DeviceError;
use crate::device::{safe_name, unique_path};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

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
    /// Mobile data allowed for sync.
    pub cellular_allowed: bool,
    /// The device's sync switch.
    pub sync_enabled: Option<bool>,
}

const STATUS: &str = "status.json";
const CONDITIONS: &str = "conditions.json";
/// Largest photo accepted through the control service.
pub const MAX_IMPORT_BYTES: usize = 64 << 20;

/// The agent's folder and data directory, and a way to wake it.
pub struct FolderControl {
    folder: PathBuf,
    data_dir: PathBuf,
    wake: tokio::sync::mpsc::UnboundedSender<()>,
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), DeviceError> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

impl FolderControl {
    /// Control over the agent syncing `folder` with data in `data_dir`; `wake` starts a pass.
    pub fn new(
        folder: PathBuf,
        data_dir: PathBuf,
        wake: tokio::sync::mpsc::UnboundedSender<()>,
    ) -> Self {
        Self {
            folder,
            data_dir,
            wake,
        }
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
        match std::fs::read(self.data_dir.join(CONDITIONS)) {
            Ok(bytes) => Ok(Some(
                serde_json::from_slice(&bytes).map_err(std::io::Error::other)?,
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
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
        let name = safe_name(name, "import");
        let tmp = self.data_dir.join("tmp").join(format!("import-{name}"));
        std::fs::create_dir_all(self.data_dir.join("tmp"))?;
        std::fs::write(&tmp, data)?;
        std::fs::File::open(&tmp)?.sync_all()?;
        let dest = unique_path(&self.folder, &name);
        std::fs::rename(&tmp, &dest)?;
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
        let control = FolderControl::new(folder.clone(), data, wake);
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
}
