//! `keepsake doctor`: gathers this machine's real conditions and the server's
//! answers into a policy snapshot, then prints the checklist.

use anyhow::Result;
use keepsake_policy::doctor::{Unknowns, diagnose, render_json, render_text};
use keepsake_policy::{
    Cellular, DeviceStorage, Network, PolicyConfig, Power, Quota, Snapshot, Version, evaluate,
};
use keepsake_transport::{client, reason_of};
use std::path::{Path, PathBuf};
use tonic_types::StatusExt;

/// Options of `keepsake doctor`; the simulated conditions override what the OS says.
#[derive(clap::Args)]
pub struct DoctorArgs {
    /// The Keepsake server.
    #[arg(
        long,
        env = "KEEPSAKE_SERVER",
        default_value = "http://127.0.0.1:50051"
    )]
    server: String,
    /// The server certificate's fingerprint (printed by `keepsake serve`), for https:// servers.
    #[arg(long, env = "KEEPSAKE_FINGERPRINT")]
    fingerprint: Option<String>,
    /// Access token (from Accounts.SignIn or a device's RefreshToken).
    #[arg(long, env = "KEEPSAKE_TOKEN")]
    token: Option<String>,
    /// The library folder whose disk is checked for free space.
    #[arg(long, default_value = ".")]
    library: PathBuf,
    /// The device's data directory: its agent's sync switch and transfer history are read there.
    #[arg(long, env = "KEEPSAKE_DEVICE_DATA")]
    device_data: Option<PathBuf>,
    /// Print JSON for programs instead of the checklist.
    #[arg(long)]
    json: bool,
    /// Simulate the connection: offline, wifi, wired or cellular.
    #[arg(long, value_parser = parse_network)]
    network: Option<Network>,
    /// Simulate the battery level in percent.
    #[arg(long)]
    battery: Option<u8>,
    /// Simulate being plugged in (true/false).
    #[arg(long)]
    charging: Option<bool>,
    /// Simulate low-power mode.
    #[arg(long)]
    low_power: bool,
    /// Simulate free bytes on the library's disk.
    #[arg(long)]
    free_bytes: Option<u64>,
    /// Allow mobile data (for a simulated cellular connection).
    #[arg(long)]
    cellular_allowed: bool,
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

/// Runs the doctor; returns whether sync is blocked.
pub async fn run(args: DoctorArgs) -> Result<bool> {
    let (battery, charging) = read_battery();
    let (free, total) = read_disk(&args.library);
    let agent = args
        .device_data
        .as_deref()
        .and_then(crate::device_cli::load_status);
    // The switch, pause and mobile-data choices live in the device's settings.
    let settings = match args.device_data.as_deref() {
        Some(d) => Some(crate::device_cli::load_settings(d)?),
        None => None,
    };
    let server = ask_server(
        &args.server,
        args.fingerprint.as_deref(),
        args.token.as_deref(),
    )
    .await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let mut snapshot = Snapshot {
        now,
        account: server.account.as_ref().map(|a| a.account.clone()),
        sync_enabled: true,
        paused_until: None,
        power_override_until: None,
        network: args.network.or_else(read_network),
        cellular: Cellular {
            allowed: args.cellular_allowed,
            unlimited_updates: false,
            daily_cap_bytes: None,
            used_today_bytes: 0,
        },
        power: Power {
            battery_percent: args.battery.or(battery),
            charging: args.charging.or(charging).unwrap_or(false),
            low_power_mode: args.low_power,
        },
        storage: DeviceStorage {
            free_bytes: args.free_bytes.or(free),
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
        last_stall_at: agent.as_ref().and_then(|a| a.last_stall_ms),
    };
    if let Some(settings) = &settings {
        settings.apply_to(&mut snapshot);
        // A cellular flag given here is a question ("and on mobile data?"), not a setting.
        snapshot.cellular.allowed |= args.cellular_allowed;
    }
    let decision = evaluate(&snapshot, &PolicyConfig::default());
    let unknown = Unknowns {
        sync_switch: settings.is_none(),
        transfer_history: agent.is_none(),
    };
    let report = diagnose(&snapshot, &decision, &unknown);
    // Files left out block nothing else, so they are not one of the seven causes; they
    // are said after them, each with its fix.
    let (skipped, damaged_waiting) = agent
        .map(|a| (a.skipped, a.damaged_waiting))
        .unwrap_or_default();
    if args.json {
        let mut json: serde_json::Value = serde_json::from_str(&render_json(&report))?;
        json["skipped_files"] = serde_json::to_value(&skipped)?;
        json["damaged_waiting"] = damaged_waiting.into();
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        print!("{}", render_text(&report));
        for f in &skipped {
            println!("left out: {} [{}] {}", f.path, f.reason, f.message);
        }
        if damaged_waiting > 0 {
            println!(
                "waiting: {damaged_waiting} photos the cloud lost part of; they arrive once a device \
                 that has them syncs (`keepsake scrub` on the server names them)"
            );
        }
    }
    Ok(!report.syncing)
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
        // Reserved bytes are promised to uploads in flight: they count against the plan too.
        Some(Quota {
            used_bytes: a.used_bytes + a.reserved_bytes,
            limit_bytes: a.plan.as_ref()?.limit_bytes,
            pending_bytes: 0,
        })
    }
}

async fn ask_server(url: &str, fingerprint: Option<&str>, token: Option<&str>) -> ServerView {
    let mut view = ServerView {
        reachable: false,
        account: None,
        min_version: None,
    };
    let connecting = async {
        match fingerprint {
            Some(pin) => client::connect_tls(url, pin).await,
            None => client::connect(url).await,
        }
    };
    let connect = tokio::time::timeout(std::time::Duration::from_secs(5), connecting);
    let Ok(Ok(channel)) = connect.await else {
        return view;
    };
    view.reachable = true;
    let Some(token) = token else {
        return view;
    };
    let mut accounts = client::accounts_client(channel, client::BearerAuth::new(token));
    view.ask_account(&mut accounts).await;
    view
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
