//! The device's conditions, read once for the agent and the doctor alike: the machine's
//! probes (battery, disk, link), `conditions.json` over them, the owner's settings, and what
//! the server last said. One builder, so `keepsake sync` and `keepsake doctor` never judge
//! the same device differently (two copies once disagreed on an unknown charging state).

use anyhow::{Context, Result};
use keepsake_policy::{Cellular, DeviceStorage, Network, Power, Quota, Snapshot, Version};
use keepsake_transport::{client, reason_of};
use std::path::Path;
use tonic_types::StatusExt;

/// Optional simulated conditions, re-read before every pass (demos and tests change them live).
pub(crate) const CONDITIONS: &str = "conditions.json";

/// What a person asks the doctor to assume instead of what the machine says.
#[derive(Debug, Clone, Default)]
pub(crate) struct Assumed {
    pub network: Option<Network>,
    pub battery_percent: Option<u8>,
    pub charging: Option<bool>,
    pub low_power: bool,
    pub free_bytes: Option<u64>,
    pub cellular_allowed: bool,
}

/// The snapshot the policy judges. Each condition comes from, first to last: what was
/// assumed on the command line, the data directory's `conditions.json`, the machine.
/// An unknown charging state counts as on mains power (a desktop has no battery to read).
pub(crate) fn snapshot(
    data: Option<&Path>,
    folder: &Path,
    account: Option<&str>,
    server: &ServerView,
    assumed: &Assumed,
) -> Result<Snapshot> {
    let c: keepsake_device::Conditions = match data.map(|d| d.join(CONDITIONS)) {
        Some(path) => match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text)
                .with_context(|| format!("{} is not valid conditions JSON", path.display()))?,
            Err(_) => keepsake_device::Conditions::default(),
        },
        None => keepsake_device::Conditions::default(),
    };
    let (battery, charging) = read_battery();
    let (free, total) = read_disk(folder);
    let network = match (&assumed.network, &c.network) {
        (Some(n), _) => Some(*n),
        (None, Some(n)) => Some(parse_network(n).map_err(|e| anyhow::anyhow!(e))?),
        (None, None) => read_network(),
    };
    let mut snapshot = Snapshot {
        now: now_ms(),
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
            low_power_mode: assumed.low_power || c.low_power,
        },
        storage: DeviceStorage {
            free_bytes: assumed.free_bytes.or(c.free_bytes).or(free),
            total_bytes: total,
            optimize: false,
        },
        quota: server.quota(),
        client_version: env!("CARGO_PKG_VERSION")
            .parse::<Version>()
            .unwrap_or(Version(0, 0, 0)),
        server_min_version: server.min_version,
        server_reachable: Some(server.reachable),
        clock_skew_ms: None,
        last_stall_at: None,
    };
    if let Some(data) = data {
        crate::device_cli::load_settings(data)?.apply_to(&mut snapshot);
    }
    // A cellular flag given to the doctor is a question ("and on mobile data?").
    snapshot.cellular.allowed |= assumed.cellular_allowed;
    Ok(snapshot)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

pub(crate) fn parse_network(s: &str) -> Result<Network, String> {
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

/// What the server told us: whether it answered, the account (plan and exact usage),
/// and the minimum client version if it refused ours.
pub(crate) struct ServerView {
    pub reachable: bool,
    pub account: Option<client::pb::Account>,
    pub min_version: Option<Version>,
}

impl ServerView {
    /// Asks for the account; a refused client learns the version it must run instead.
    pub(crate) async fn ask_account(&mut self, accounts: &mut client::AccountsApi) {
        match accounts.get_account(client::pb::GetAccountRequest {}).await {
            Ok(reply) => self.account = reply.into_inner().account,
            Err(status) if reason_of(&status).as_deref() == Some("CLIENT_TOO_OLD") => {
                self.min_version = status
                    .get_details_error_info()
                    .and_then(|info| info.metadata.get("required_version")?.parse().ok());
            }
            Err(_) => {}
        }
    }

    /// The plan's limit against used and reserved bytes, if the account was read.
    pub(crate) fn quota(&self) -> Option<Quota> {
        let a = self.account.as_ref()?;
        // Reservations are holds for uploads in flight, not use: they never make a plan
        // look full (the refusal names them when they are what stands in the way).
        Some(Quota {
            used_bytes: a.used_bytes,
            limit_bytes: a.plan.as_ref()?.limit_bytes,
            pending_bytes: 0,
        })
    }
}

/// Battery percent and charging from /sys/class/power_supply; `None` where unreadable.
pub(crate) fn read_battery() -> (Option<u8>, Option<bool>) {
    let Ok(entries) = std::fs::read_dir("/sys/class/power_supply") else {
        return (None, None);
    };
    let (mut percent, mut charging) = (None, None);
    for entry in entries.flatten() {
        let dir = entry.path();
        let read =
            |name: &str| std::fs::read_to_string(dir.join(name)).map(|s| s.trim().to_string());
        match read("type").as_deref() {
            Ok("Battery") => {
                percent = read("capacity").ok().and_then(|c| c.parse().ok());
                if let Ok(status) = read("status") {
                    charging = Some(matches!(status.as_str(), "Charging" | "Full"));
                }
            }
            Ok("Mains") if read("online").is_ok_and(|v| v == "1") => charging = Some(true),
            _ => {}
        }
    }
    (percent, charging)
}

/// Free (to this user) and total bytes of the file system holding `path`.
pub(crate) fn read_disk(path: &Path) -> (Option<u64>, Option<u64>) {
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
pub(crate) fn read_network() -> Option<Network> {
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
