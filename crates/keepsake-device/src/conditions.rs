//! The device's conditions, read once for the agent and the doctor alike: the machine's
//! probes (battery, disk, link), `conditions.json` over them, the owner's settings, and what
//! the server last said. One builder, so the agent and the doctor never judge the same
//! device differently (two copies once disagreed on an unknown charging state).

use crate::control::{Conditions, Settings};
use keepsake_policy::{Cellular, DeviceStorage, Network, Power, Quota, Snapshot, Version};
use std::path::{Path, PathBuf};

/// Optional simulated conditions in the data directory, re-read before every pass (demos
/// and tests change them live).
pub const CONDITIONS: &str = "conditions.json";

/// The owner's settings in the data directory.
pub const SETTINGS: &str = "settings.json";

/// A file of the data directory that does not parse.
#[derive(Debug, thiserror::Error)]
pub enum ConditionsError {
    /// `conditions.json` or `settings.json` is not what it should be.
    #[error("{} is not valid {what} JSON: {source}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// "conditions" or "settings".
        what: &'static str,
        /// Why.
        source: serde_json::Error,
    },
    /// A network name that is not one of the four.
    #[error("{0}")]
    Network(String),
}

/// The owner's settings in `data`; the defaults when there are none.
pub fn load_settings(data: &Path) -> Result<Settings, ConditionsError> {
    read_json(&data.join(SETTINGS), "settings")
}

fn read_json<T: serde::de::DeserializeOwned + Default>(
    path: &Path,
    what: &'static str,
) -> Result<T, ConditionsError> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text).map_err(|source| ConditionsError::Invalid {
            path: path.to_path_buf(),
            what,
            source,
        }),
        Err(_) => Ok(T::default()),
    }
}

/// What a person asks the doctor to assume instead of what the machine says.
#[derive(Debug, Clone, Default)]
pub struct Assumed {
    /// The connection.
    pub network: Option<Network>,
    /// Battery percent.
    pub battery_percent: Option<u8>,
    /// On mains power.
    pub charging: Option<bool>,
    /// Low Power Mode on.
    pub low_power: bool,
    /// Free bytes on the device.
    pub free_bytes: Option<u64>,
    /// "And on mobile data?"
    pub cellular_allowed: bool,
}

/// What the server last said that the policy weighs.
#[derive(Debug, Clone, Default)]
pub struct ServerSaid {
    /// It answered.
    pub reachable: bool,
    /// The plan against its use, when the account was read.
    pub quota: Option<Quota>,
    /// The version it requires, when it refused this one.
    pub min_version: Option<Version>,
}

/// The snapshot the policy judges at `now_ms`. Each condition comes from, first to last:
/// what was assumed on the command line, the data directory's `conditions.json`, the
/// machine. An unknown charging state counts as on mains power (a desktop has no battery
/// to read).
pub fn snapshot(
    data: Option<&Path>,
    folder: &Path,
    account: Option<&str>,
    server: &ServerSaid,
    assumed: &Assumed,
    now_ms: i64,
) -> Result<Snapshot, ConditionsError> {
    let c: Conditions = match data {
        Some(data) => read_json(&data.join(CONDITIONS), "conditions")?,
        None => Conditions::default(),
    };
    let probed = crate::probe::machine_cached();
    let (battery, charging) = (probed.battery_percent, probed.charging);
    let (free, total) = read_disk(folder);
    let network = match (&assumed.network, &c.network) {
        (Some(n), _) => Some(*n),
        (None, Some(n)) => Some(parse_network(n).map_err(ConditionsError::Network)?),
        (None, None) => read_network(),
    };
    // The machine's word on metering belongs to the machine's link: with a network assumed
    // or written down, only a written-down `metered` counts.
    let metered = match (&assumed.network, &c.network) {
        (None, None) => c.metered.or(probed.metered),
        _ => c.metered,
    };
    let mut snapshot = Snapshot {
        now: now_ms,
        account: account.map(str::to_string),
        sync_enabled: true,
        paused_until: None,
        power_override_until: None,
        network,
        cellular: Cellular {
            allowed: false,
            unlimited_updates: false,
            daily_cap_bytes: None,
            used_today_bytes: 0,
        },
        power: Power {
            battery_percent: assumed.battery_percent.or(c.battery_percent).or(battery),
            charging: assumed.charging.or(c.charging).or(charging).unwrap_or(true),
            // The machine's power saver counts; its absence (or no answer) never
            // switches off what was assumed or written down.
            low_power_mode: assumed.low_power || c.low_power || probed.power_saver == Some(true),
        },
        storage: DeviceStorage {
            free_bytes: assumed.free_bytes.or(c.free_bytes).or(free),
            total_bytes: total,
            optimize: false,
        },
        quota: server.quota,
        client_version: env!("CARGO_PKG_VERSION")
            .parse::<Version>()
            .unwrap_or(Version(0, 0, 0)),
        server_min_version: server.min_version,
        server_reachable: Some(server.reachable),
        clock_skew_ms: None,
        last_stall_at: None,
        metered: metered == Some(true),
    };
    if let Some(data) = data {
        load_settings(data)?.apply_to(&mut snapshot);
    }
    // A cellular flag given to the doctor is a question ("and on mobile data?").
    snapshot.cellular.allowed |= assumed.cellular_allowed;
    Ok(snapshot)
}

/// A network name as people write it.
pub fn parse_network(s: &str) -> Result<Network, String> {
    match s {
        "offline" => Ok(Network::Offline),
        "wifi" => Ok(Network::Wifi),
        "wired" => Ok(Network::Wired),
        "cellular" => Ok(Network::Cellular),
        other => Err(format!(
            "{other:?} is not one of offline, wifi, wired, cellular"
        )),
    }
}

/// Free (to this user) and total bytes of the file system holding `path`.
pub fn read_disk(path: &Path) -> (Option<u64>, Option<u64>) {
    // statvfs, not `df`: an agent asks every pass, and a process per pass cost ~1% of its CPU.
    #[cfg(unix)]
    if let Ok(fs) = rustix::fs::statvfs(path) {
        return (
            Some(fs.f_bavail.saturating_mul(fs.f_frsize)),
            Some(fs.f_blocks.saturating_mul(fs.f_frsize)),
        );
    }
    #[cfg(not(unix))]
    let _ = path;
    (None, None)
}

/// The connection type from /sys/class/net: Wi-Fi if a wireless link is up, wired if another is.
pub fn read_network() -> Option<Network> {
    let entries = std::fs::read_dir("/sys/class/net").ok()?;
    let mut found = Network::Offline;
    for entry in entries.flatten() {
        let dir = entry.path();
        if entry.file_name() == "lo" {
            continue;
        }
        let up = std::fs::read_to_string(dir.join("operstate"))
            .map(|s| matches!(s.trim(), "up" | "unknown"))
            .unwrap_or(false);
        if !up {
            continue;
        }
        if dir.join("wireless").exists() {
            return Some(Network::Wifi);
        }
        found = Network::Wired;
    }
    Some(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_down_metered_link_reaches_the_snapshot_and_an_assumed_network_drops_the_machines_word()
     {
        let data = tempfile::tempdir().unwrap();
        let metered = |conditions: &str, assumed: &Assumed| {
            std::fs::write(data.path().join(CONDITIONS), conditions).unwrap();
            snapshot(
                Some(data.path()),
                data.path(),
                Some("me"),
                &ServerSaid::default(),
                assumed,
                0,
            )
            .unwrap()
            .metered
        };
        let none = Assumed::default();
        assert!(metered(r#"{"network": "wifi", "metered": true}"#, &none));
        assert!(
            metered(r#"{"metered": true}"#, &none),
            "over the machine's link"
        );
        assert!(!metered(r#"{"network": "wifi", "metered": false}"#, &none));
        // A network written down or assumed is not the machine's link: only a written
        // `metered` counts for it, never what nmcli says of the real one.
        assert!(!metered(r#"{"network": "wifi"}"#, &none));
        let on_wifi = Assumed {
            network: Some(Network::Wifi),
            ..Assumed::default()
        };
        assert!(!metered("{}", &on_wifi));
        assert!(metered(r#"{"metered": true}"#, &on_wifi));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_disk_reading_agrees_with_df() {
        let dir = tempfile::tempdir().unwrap();
        let (free, total) = read_disk(dir.path());
        let out = std::process::Command::new("df")
            .args(["-B1", "--output=size"])
            .arg(dir.path())
            .output()
            .expect("df runs");
        let df_total: u64 = String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .expect("df prints a size");
        assert_eq!(total, Some(df_total));
        assert!(free.is_some_and(|f| f > 0 && f <= df_total), "{free:?}");
    }
}
