//! The device side of the CLI: enrol, sync a folder, list devices, manage accounts.

use anyhow::{Context, Result, bail};
use keepsake_device::{Device, DeviceConfig, SyncReport};
use keepsake_store::SystemClock;
use keepsake_transport::client::{self, BearerAuth, CallError, pb};
use keepsake_transport::cloud_client::{ClientConfig, CloudClient};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::Channel;

/// Where and how to reach the server.
#[derive(clap::Args, Clone)]
pub struct ServerArgs {
    /// The Keepsake server.
    #[arg(
        long,
        env = "KEEPSAKE_SERVER",
        default_value = "http://127.0.0.1:50051"
    )]
    pub server: String,
    /// The server certificate's fingerprint (printed by `keepsake serve --tls-self-signed`).
    #[arg(long, env = "KEEPSAKE_FINGERPRINT")]
    pub fingerprint: Option<String>,
}

impl ServerArgs {
    async fn channel(&self) -> Result<Channel> {
        let channel = match &self.fingerprint {
            Some(pin) => client::connect_tls(&self.server, pin).await,
            None => client::connect(&self.server).await,
        };
        channel.with_context(|| format!("cannot reach the Keepsake server at {}", self.server))
    }
}

/// An account's credentials.
#[derive(clap::Args, Clone)]
pub struct Credentials {
    /// The account.
    #[arg(long, env = "KEEPSAKE_ACCOUNT", default_value = "me")]
    pub account: String,
    /// Its password (or KEEPSAKE_PASSWORD).
    #[arg(long, env = "KEEPSAKE_PASSWORD", hide_env_values = true)]
    pub password: String,
}

/// What an enrolled device keeps in its data directory.
#[derive(Serialize, Deserialize)]
struct Enrolled {
    server: String,
    fingerprint: Option<String>,
    account: String,
    device_id: String,
    device_token: String,
}

const ENROLMENT: &str = "device.json";
/// What the agent last said about itself, for `keepsake status` and the doctor.
const STATUS: &str = "status.json";

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn save_status(data: &Path, status: &keepsake_device::AgentStatus) {
    let tmp = data.join(format!("{STATUS}.tmp"));
    if let Ok(body) = serde_json::to_vec_pretty(status)
        && std::fs::write(&tmp, body).is_ok()
    {
        let _ = std::fs::rename(&tmp, data.join(STATUS));
    }
}

/// The agent's last status, if one is running or ran here.
pub fn load_status(data: &Path) -> Option<keepsake_device::AgentStatus> {
    serde_json::from_slice(&std::fs::read(data.join(STATUS)).ok()?).ok()
}

/// `keepsake status`: what the agent last said.
pub fn status(data: PathBuf) -> Result<()> {
    let s = load_status(&data).with_context(|| {
        format!(
            "no agent has run with data directory {}; start one with `keepsake sync DIR --data {}`",
            data.display(),
            data.display()
        )
    })?;
    let age = (now_ms() - s.last_pass_ms) / 1000;
    let since = (now_ms() - s.since_ms) / 1000;
    match &s.reason {
        None => println!("syncing (for {since} s); last pass {age} s ago"),
        Some(r) => println!("not syncing: {r} (for {since} s); last pass {age} s ago"),
    }
    println!(
        "{} files waiting to upload; {} uploaded and {} downloaded since the agent started",
        s.pending_files, s.uploaded, s.downloaded
    );
    if let Some(e) = &s.last_error {
        println!("last transient failure: {e}");
    }
    if let Some(at) = s.last_stall_ms {
        println!(
            "last stalled transfer restarted {} s ago",
            (now_ms() - at) / 1000
        );
    }
    Ok(())
}

/// Optional simulated conditions, re-read before every pass (demos and tests change them live).
const CONDITIONS: &str = "conditions.json";

/// The snapshot the policy judges: the conditions file over what the machine says.
fn snapshot(data: &Path, folder: &Path, account: &str) -> Result<keepsake_policy::Snapshot> {
    use keepsake_policy::{Cellular, DeviceStorage, Power, Snapshot, Version};
    let path = data.join(CONDITIONS);
    let c: keepsake_device::Conditions = match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text)
            .with_context(|| format!("{} is not valid conditions JSON", path.display()))?,
        Err(_) => keepsake_device::Conditions::default(),
    };
    let (battery, charging) = crate::doctor::read_battery();
    let (free, total) = crate::doctor::read_disk(folder);
    let network = match &c.network {
        Some(n) => Some(crate::doctor::parse_network(n).map_err(|e| anyhow::anyhow!(e))?),
        None => crate::doctor::read_network(),
    };
    Ok(Snapshot {
        now: 0,
        account: Some(account.to_string()),
        sync_enabled: c.sync_enabled.unwrap_or(true),
        paused_until: None,
        power_override_until: None,
        network,
        cellular: Cellular {
            allowed: c.cellular_allowed,
            unlimited_updates: false,
            daily_cap_bytes: None,
            used_today_bytes: 0,
        },
        power: Power {
            battery_percent: c.battery_percent.or(battery),
            charging: c.charging.or(charging).unwrap_or(true),
            low_power_mode: c.low_power,
        },
        storage: DeviceStorage {
            free_bytes: c.free_bytes.or(free),
            total_bytes: total,
            optimize: false,
        },
        quota: None,
        client_version: env!("CARGO_PKG_VERSION")
            .parse::<Version>()
            .unwrap_or(Version(0, 0, 0)),
        server_min_version: None,
        server_reachable: Some(true),
        clock_skew_ms: None,
        last_stall_at: None,
    })
}

/// Says an error as a sentence with its fix, not as a debug dump.
fn plain(e: CallError) -> anyhow::Error {
    let fix = match e.reason() {
        "CLIENT_TOO_OLD" => format!(
            " Install Keepsake {} or later.",
            e.metadata()
                .get("required_version")
                .map_or("a newer version", String::as_str)
        ),
        "QUOTA_EXCEEDED" => " Free space (empty Recently Deleted) or choose a bigger plan.".into(),
        "UNAUTHENTICATED" => " Check the account and password, or enrol the device again.".into(),
        _ if e.is_transient() => " This clears by itself; Keepsake retries.".into(),
        _ => String::new(),
    };
    anyhow::anyhow!("{} [{}]{fix}", e.message(), e.reason())
}

/// `keepsake device enroll`.
pub async fn enroll(
    server: ServerArgs,
    credentials: Credentials,
    name: String,
    data: PathBuf,
) -> Result<()> {
    let channel = server.channel().await?;
    let mut accounts = client::accounts_client(channel, BearerAuth::anonymous());
    let reply = accounts
        .enroll_device(pb::EnrollDeviceRequest {
            account: credentials.account.clone(),
            password: credentials.password,
            device_name: name.clone(),
            platform: std::env::consts::OS.into(),
            client_version: env!("CARGO_PKG_VERSION").into(),
        })
        .await
        .map_err(|s| plain(s.into()))?
        .into_inner();
    std::fs::create_dir_all(&data)?;
    let record = Enrolled {
        server: server.server,
        fingerprint: server.fingerprint,
        account: credentials.account,
        device_id: reply.device_id.clone(),
        device_token: reply.device_token,
    };
    let path = data.join(ENROLMENT);
    let _ = std::fs::remove_file(&path);
    crate::write_private(&path, &serde_json::to_vec_pretty(&record)?)?;
    println!(
        "enrolled {name:?} as device {} of account {}; its credentials are in {}",
        reply.device_id,
        record.account,
        path.display()
    );
    Ok(())
}

fn load(data: &Path) -> Result<Enrolled> {
    let path = data.join(ENROLMENT);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "{} is missing: enrol this device first (`keepsake device enroll --data {}`)",
            path.display(),
            data.display()
        )
    })?;
    Ok(serde_json::from_str(&text)?)
}

async fn signed_in_client(e: &Enrolled) -> Result<CloudClient> {
    let server = ServerArgs {
        server: e.server.clone(),
        fingerprint: e.fingerprint.clone(),
    };
    let channel = server.channel().await?;
    let mut anonymous = client::accounts_client(channel.clone(), BearerAuth::anonymous());
    let access = anonymous
        .refresh_token(pb::RefreshTokenRequest {
            device_id: e.device_id.clone(),
            device_token: e.device_token.clone(),
            client_version: env!("CARGO_PKG_VERSION").into(),
        })
        .await
        .map_err(|s| plain(s.into()))?
        .into_inner()
        .access
        .context("the server sent no access token")?;
    Ok(CloudClient::new(
        channel,
        BearerAuth::new(&access.token),
        ClientConfig::default(),
    ))
}

fn say_pass(r: &SyncReport, reason_changed: bool) {
    let mut parts = Vec::new();
    for (n, what) in [
        (r.uploaded, "uploaded"),
        (r.linked, "already in the cloud"),
        (r.downloaded, "downloaded"),
        (r.trashed_here, "moved to Recently Deleted"),
        (r.trashed_remotely, "deleted everywhere"),
        (r.restored, "restored"),
        (r.purged, "purged"),
        (r.not_resurrected, "deleted elsewhere, not re-uploaded"),
    ] {
        if n > 0 {
            parts.push(format!("{n} {what}"));
        }
    }
    match (&r.blocked, reason_changed) {
        (Some(reason), true) => parts.push(format!("waiting: {reason}")),
        (None, true) => parts.push("syncing".into()),
        _ => {}
    }
    if !parts.is_empty() {
        println!("keepsake sync: {}", parts.join(", "));
    }
}

/// Wakes the sync loop when the cloud's feed moves: a WatchChanges stream from `cursor`,
/// re-opened after any break.
fn watch_feed(
    mut cloud: CloudClient,
    cursor: u64,
    wake: tokio::sync::mpsc::UnboundedSender<()>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut cursor = cursor;
        loop {
            let (_, library, _) = cloud.raw();
            if let Ok(stream) = library
                .watch_changes(pb::WatchChangesRequest { cursor })
                .await
            {
                let mut stream = stream.into_inner();
                while let Ok(Some(page)) = stream.message().await {
                    cursor = page.cursor;
                    if !page.changes.is_empty() && wake.send(()).is_err() {
                        return;
                    }
                }
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    })
}

/// `keepsake sync DIR`: keeps the folder in sync until interrupted (or once). A pass runs
/// when a file in the folder changes, when the cloud's feed moves, and every `interval`.
pub async fn sync(
    folder: PathBuf,
    data: PathBuf,
    once: bool,
    interval: Duration,
    control: Option<std::net::SocketAddr>,
) -> Result<()> {
    use notify::Watcher;
    let enrolled = load(&data)?;
    let mut config = DeviceConfig::new(
        folder.clone(),
        data.join("state"),
        enrolled.device_id.clone(),
    );
    config.stable_ms = 400;
    let client = signed_in_client(&enrolled).await?;
    let mut device = Device::open(config, client.clone(), Arc::new(SystemClock))?;
    println!(
        "keepsake sync: {} <-> {} as device {}",
        folder.display(),
        enrolled.server,
        enrolled.device_id
    );
    let (wake_tx, mut wake) = tokio::sync::mpsc::unbounded_channel::<()>();
    let fs_wake = wake_tx.clone();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // The agent's own temp and marker files are not the user's changes.
        if let Ok(e) = event
            && e.paths
                .iter()
                .any(|p| !p.to_string_lossy().contains(".keepsake"))
        {
            let _ = fs_wake.send(());
        }
    })?;
    if let Err(e) = watcher.watch(&folder, notify::RecursiveMode::Recursive) {
        // Without notifications the periodic pass still finds everything, only later.
        tracing::warn!(error = %e, "cannot watch the folder; relying on periodic rescans");
    }
    let mut feed = watch_feed(client, device.cursor()?, wake_tx.clone());
    if let Some(addr) = control {
        if !addr.ip().is_loopback() {
            bail!("--control serves without tokens: it must listen on loopback, not {addr}");
        }
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} for device control"))?;
        println!(
            "keepsake sync: device control on http://{}",
            listener.local_addr()?
        );
        let control = Arc::new(keepsake_device::FolderControl::new(
            folder.clone(),
            data.clone(),
            wake_tx.clone(),
        ));
        tokio::spawn(keepsake_transport::serve_device(
            listener,
            control,
            std::future::pending(),
        ));
    }
    let mut status = keepsake_device::AgentStatus {
        device_id: enrolled.device_id.clone(),
        since_ms: now_ms(),
        ..keepsake_device::AgentStatus::default()
    };
    let mut backoff = Duration::from_millis(500);
    // Nothing reported yet: the first pass always tells the ledger.
    let mut last_state = "\u{0}".to_string();
    loop {
        device.set_conditions(Some(snapshot(&data, &folder, &enrolled.account)?));
        let mut pause = interval;
        match device.sync_once().await {
            Ok(report) if report.blocked.as_deref() == Some("UNAUTHENTICATED") => {
                // Access tokens are short-lived: trade the device token for a new one.
                let client = signed_in_client(&enrolled).await?;
                feed.abort();
                feed = watch_feed(client.clone(), device.cursor()?, wake_tx.clone());
                *device.cloud_mut() = client;
                continue;
            }
            Ok(report) => {
                backoff = Duration::from_millis(500);
                if report.blocked != status.reason {
                    status.since_ms = now_ms();
                    status.reason = report.blocked.clone();
                }
                status.last_pass_ms = now_ms();
                status.uploaded += report.uploaded as u64;
                status.downloaded += report.downloaded as u64;
                status.pending_files = device.pending_files().unwrap_or(0);
                save_status(&data, &status);
                let state = report.blocked.clone().unwrap_or_default();
                say_pass(&report, state != last_state);
                if state != last_state {
                    report_state(device.cloud_mut(), &report).await;
                    last_state = state;
                }
                if once {
                    return Ok(());
                }
                if report.unstable > 0 {
                    // A file still being written: look again once it has had time to settle.
                    pause = pause.min(Duration::from_millis(250));
                }
            }
            Err(keepsake_device::DeviceError::Cloud(e)) if e.transient && !once => {
                status.last_error = Some(format!("{} [{}]", e.message, e.reason));
                if e.reason == "TRANSFER_STALLED" {
                    status.last_stall_ms = Some(now_ms());
                }
                status.last_pass_ms = now_ms();
                save_status(&data, &status);
                println!(
                    "keepsake sync: {} [{}]; retrying in {} ms",
                    e.message,
                    e.reason,
                    backoff.as_millis()
                );
                pause = backoff;
                backoff = (backoff * 2).min(Duration::from_secs(60));
            }
            Err(e) => bail!("{e}"),
        }
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            Some(()) = wake.recv() => {
                // Let a burst of events (a camera writing several files) settle into one pass.
                tokio::time::sleep(Duration::from_millis(100)).await;
                while wake.try_recv().is_ok() {}
            }
        }
    }
}

/// Tells the library's device ledger how this device is doing; best effort.
async fn report_state(cloud: &mut CloudClient, report: &SyncReport) {
    let (_, _, accounts) = cloud.raw();
    let state = pb::DeviceState {
        state: if report.blocked.is_some() {
            "blocked".into()
        } else {
            "idle".into()
        },
        reason: report.blocked.clone().unwrap_or_default(),
        ..Default::default()
    };
    let _ = accounts
        .report_device_state(pb::ReportDeviceStateRequest { state: Some(state) })
        .await;
}

/// `keepsake devices`: the account's device ledger.
pub async fn devices(server: ServerArgs, credentials: Credentials) -> Result<()> {
    let (channel, token) = signed_in(&server, &credentials).await?;
    let mut accounts = client::accounts_client(channel, BearerAuth::new(&token));
    let list = accounts
        .list_devices(pb::ListDevicesRequest {})
        .await
        .map_err(|s| plain(s.into()))?
        .into_inner()
        .devices;
    if list.is_empty() {
        println!("no devices are enrolled");
    }
    for d in list {
        let state = d.state.unwrap_or_default();
        let status = if d.revoked_at_ms.is_some() {
            "revoked".to_string()
        } else if state.reason.is_empty() {
            state.state.clone()
        } else {
            format!("{} ({})", state.state, state.reason)
        };
        println!(
            "{}  {:<24} {:<8} v{:<8} {}",
            d.device_id, d.name, d.platform, d.client_version, status
        );
    }
    Ok(())
}

/// What `keepsake library` does.
#[derive(clap::Subcommand, Clone)]
pub enum LibraryCommand {
    /// Every asset: id, state, size, name (tombstones included).
    Ls,
    /// Move an asset to Recently Deleted on every device.
    Delete {
        /// The asset.
        asset_id: String,
    },
    /// Bring an asset back from Recently Deleted.
    Restore {
        /// The asset.
        asset_id: String,
    },
    /// Delete an asset for good.
    Purge {
        /// The asset.
        asset_id: String,
    },
    /// Mark an asset as a favourite (or not, with --off).
    Favorite {
        /// The asset.
        asset_id: String,
        /// Remove the mark instead.
        #[arg(long)]
        off: bool,
    },
}

async fn signed_in(server: &ServerArgs, credentials: &Credentials) -> Result<(Channel, String)> {
    let channel = server.channel().await?;
    let mut anonymous = client::accounts_client(channel.clone(), BearerAuth::anonymous());
    let token = anonymous
        .sign_in(pb::SignInRequest {
            account: credentials.account.clone(),
            password: credentials.password.clone(),
        })
        .await
        .map_err(|s| plain(s.into()))?
        .into_inner()
        .access
        .context("the server sent no access token")?
        .token;
    Ok((channel, token))
}

/// `keepsake library …`.
pub async fn library(
    server: ServerArgs,
    credentials: Credentials,
    command: LibraryCommand,
) -> Result<()> {
    let (channel, token) = signed_in(&server, &credentials).await?;
    let mut lib = client::library_client(channel, BearerAuth::new(&token));
    match command {
        LibraryCommand::Ls => {
            let mut cursor = 0;
            loop {
                let page = lib
                    .list_changes(pb::ListChangesRequest {
                        cursor,
                        page_size: 1000,
                    })
                    .await
                    .map_err(|s| plain(s.into()))?
                    .into_inner();
                for change in &page.changes {
                    if let Some(pb::change::Row::Asset(a)) = &change.row {
                        let state = match pb::AssetState::try_from(a.state) {
                            Ok(pb::AssetState::Trashed) => "trashed",
                            Ok(pb::AssetState::Purged) => "purged",
                            _ => "live",
                        };
                        let star = if a.favorite { "*" } else { " " };
                        println!(
                            "{}  {state:<7} {star} v{:<3} {:>12}  {}",
                            a.asset_id, a.version, a.size, a.original_name
                        );
                    }
                }
                cursor = page.cursor;
                if !page.more {
                    return Ok(());
                }
            }
        }
        LibraryCommand::Delete { asset_id } => {
            lib.trash_asset(pb::TrashAssetRequest { asset_id })
                .await
                .map_err(|s| plain(s.into()))?;
        }
        LibraryCommand::Restore { asset_id } => {
            lib.restore_asset(pb::RestoreAssetRequest { asset_id })
                .await
                .map_err(|s| plain(s.into()))?;
        }
        LibraryCommand::Purge { asset_id } => {
            lib.purge_asset(pb::PurgeAssetRequest { asset_id })
                .await
                .map_err(|s| plain(s.into()))?;
        }
        LibraryCommand::Favorite { asset_id, off } => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64);
            lib.set_metadata(pb::SetMetadataRequest {
                asset_id,
                clock: Some(pb::Clock {
                    wall_ms: now,
                    counter: 0,
                    device: format!("cli:{}", credentials.account),
                }),
                field: Some(pb::set_metadata_request::Field::Favorite(!off)),
            })
            .await
            .map_err(|s| plain(s.into()))?;
        }
    }
    Ok(())
}

/// `keepsake account create`: a new account (the signed-in account must be an administrator).
pub async fn create_account(
    server: ServerArgs,
    admin: Credentials,
    name: String,
    password: String,
    plan: Option<String>,
) -> Result<()> {
    let (channel, token) = signed_in(&server, &admin).await?;
    let mut accounts = client::accounts_client(channel, BearerAuth::new(&token));
    let made = accounts
        .create_account(pb::CreateAccountRequest {
            account: name,
            password,
            plan: plan.unwrap_or_default(),
            admin: false,
        })
        .await
        .map_err(|s| plain(s.into()))?
        .into_inner()
        .account
        .context("the server sent no account")?;
    let plan = made.plan.unwrap_or_default();
    println!(
        "created account {} on plan {} ({} bytes)",
        made.account, plan.name, plan.limit_bytes
    );
    Ok(())
}

/// `keepsake plan set`: moves an account to another plan (administrators only).
pub async fn set_plan(
    server: ServerArgs,
    admin: Credentials,
    account: String,
    plan: String,
) -> Result<()> {
    let (channel, token) = signed_in(&server, &admin).await?;
    let mut accounts = client::accounts_client(channel, BearerAuth::new(&token));
    accounts
        .set_plan(pb::SetPlanRequest {
            account: account.clone(),
            plan: plan.clone(),
        })
        .await
        .map_err(|s| plain(s.into()))?;
    println!("account {account} is now on plan {plan}");
    Ok(())
}
