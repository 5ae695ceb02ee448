//! The device side of the CLI: enrol, sync a folder, list devices, manage accounts.

use anyhow::{Context, Result, bail};
use keepsake_transport::client::{self, BearerAuth, CallError, pb};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
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
    pub(crate) async fn channel(&self) -> Result<Channel> {
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
pub(crate) struct Enrolled {
    pub(crate) server: String,
    pub(crate) fingerprint: Option<String>,
    pub(crate) account: String,
    pub(crate) device_id: String,
    pub(crate) device_token: String,
}

const ENROLMENT: &str = "device.json";
/// What the agent last said about itself, for `keepsake status` and the doctor.
const STATUS: &str = "status.json";

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
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
    let running = keepsake_device::agent_running(&data.join("state"));
    // The words for the reason: what the agent saved (the policy's or the cloud's), else
    // the checklist's, else the policy's judged again from the conditions now.
    let words = s
        .reason
        .as_deref()
        .and_then(|r| match (&s.reason_message, &s.reason_fix) {
            (Some(m), Some(f)) => Some((m.clone(), f.clone())),
            _ => keepsake_policy::doctor::lived_reason(r, s.reason_message.as_deref())
                .or_else(|| policy_reason(&data, Path::new(s.folder.as_deref().unwrap_or(".")), r))
                .map(|why| (why.message, why.fix)),
        });
    for line in headline(&s, running, now_ms(), words, &data) {
        println!("{line}");
    }
    println!(
        "{} files waiting to upload ({}); {} uploaded and {} downloaded since the agent started",
        thousands(s.pending_files),
        size(s.pending_bytes),
        thousands(s.uploaded),
        thousands(s.downloaded)
    );
    if s.pending_downloads > 0 {
        println!(
            "{} originals waiting to download ({})",
            thousands(s.pending_downloads),
            size(s.pending_download_bytes)
        );
    }
    if s.pending_edits > 0 {
        println!("{} edits waiting to be sent", s.pending_edits);
    }
    match s.optimize_budget {
        Some(budget) => println!(
            "Optimize Storage: originals {} of a {} budget, previews {}; {} originals in the cloud only",
            megabytes(s.originals_bytes),
            megabytes(budget),
            megabytes(s.previews_bytes),
            s.cloud_only
        ),
        None => println!(
            "keeping every original here: {}",
            megabytes(s.originals_bytes)
        ),
    }
    if let Some(p) = &s.progress {
        println!(
            "{} {}/{} files, {} of {}{}",
            p.phase,
            p.items_done,
            p.items_total,
            megabytes(p.bytes_done),
            megabytes(p.bytes_total),
            p.current
                .as_ref()
                .map(|c| format!(" (now {c})"))
                .unwrap_or_default()
        );
    }
    if !s.skipped.is_empty() {
        let files = if s.skipped.len() == 1 {
            "file"
        } else {
            "files"
        };
        println!("{} {files} left out of sync:", s.skipped.len());
        for f in &s.skipped {
            println!("  {}: {} [{}]", f.path, f.message, f.reason);
        }
    }
    if !s.numbered.is_empty() {
        println!("kept in the library under another name (another photo had theirs):");
        for (here, library) in &s.numbered {
            println!("  {here} -> {library}");
        }
    }
    if !s.ignored.is_empty() {
        println!(
            "{} left out on purpose (system files, .keepsakeignore): {}",
            s.ignored.len(),
            s.ignored.join(", ")
        );
    }
    if s.damaged_waiting > 0 {
        println!(
            "{} photos are damaged in the cloud and wait for a device that has them to send them again \
             (`keepsake scrub` on the server names them)",
            s.damaged_waiting
        );
    }
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

/// 1,204
pub(crate) fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// 2.1 GB, 340 MB, 12 kB.
pub(crate) fn size(bytes: u64) -> String {
    match bytes {
        b if b >= 1_000_000_000 => format!("{:.1} GB", b as f64 / 1e9),
        b if b >= 1_000_000 => format!("{:.0} MB", b as f64 / 1e6),
        b if b >= 1_000 => format!("{:.0} kB", b as f64 / 1e3),
        b => format!("{b} bytes"),
    }
}

/// "14:02 UTC" today, "2026-12-01 14:02 UTC" on another day.
fn clock_time(at: i64, now: i64) -> String {
    let (when, today) = (utc(at), utc(now));
    if when[..10] == today[..10] {
        format!("{} UTC", &when[11..16])
    } else {
        format!("{} UTC", &when[..16])
    }
}

/// What `keepsake status` says first, in the words of a phone's Photos settings:
/// "Syncing — uploading 1,204 of 3,310 (2.1 GB left)", "Paused — Low Power Mode is on.
/// Fix: …. Since 14:02", "Up to date".
pub(crate) fn headline(
    s: &keepsake_device::AgentStatus,
    running: Option<bool>,
    now: i64,
    words: Option<(String, String)>,
    data: &Path,
) -> Vec<String> {
    let ago = crate::ledger_cli::ago(now, s.last_pass_ms);
    // A revoked device's agent stopped for that reason: starting it again changes nothing.
    let revoked = s.reason.as_deref() == Some("DEVICE_REVOKED");
    if running == Some(false) && !revoked {
        let mut lines = vec![format!(
            "Not running — no agent is syncing this device (its last pass ended {ago}). \
             Fix: start it with `keepsake sync {} --data {}`, or keep it running with \
             `keepsake service install`",
            s.folder.as_deref().unwrap_or("FOLDER"),
            data.display()
        )];
        if let Some(r) = &s.reason {
            lines.push(format!("When it last ran, it was not syncing: [{r}]"));
        }
        return lines;
    }
    let waiting = s.pending_files + s.pending_downloads;
    let state = keepsake_device::state_of(s.reason.as_deref(), waiting);
    match (&s.reason, &s.progress) {
        (Some(code), _) => {
            let title = if state == "paused" {
                "Paused"
            } else {
                "Blocked"
            };
            let (message, fix) = words.unwrap_or_else(|| {
                (
                    code.clone(),
                    "`keepsake doctor` says what fixes it".to_string(),
                )
            });
            let message = message.trim_end_matches('.');
            let fix = fix.trim_end_matches('.');
            vec![format!(
                "{title} — {message}. Fix: {fix}. Since {} [{code}]",
                clock_time(s.since_ms, now)
            )]
        }
        (None, Some(p)) if p.items_total > 0 && p.phase != "idle" => {
            vec![format!(
                "Syncing — {} {} of {} ({} left)",
                p.phase,
                thousands((p.items_done + 1).min(p.items_total)),
                thousands(p.items_total),
                size(p.bytes_total.saturating_sub(p.bytes_done))
            )]
        }
        (None, _) if s.pending_files > 0 => vec![format!(
            "Syncing — {} files to upload ({}); last pass {ago}",
            thousands(s.pending_files),
            size(s.pending_bytes)
        )],
        (None, _) if s.pending_downloads > 0 => vec![format!(
            "Syncing — {} originals to download ({}); last pass {ago}",
            thousands(s.pending_downloads),
            size(s.pending_download_bytes)
        )],
        (None, _) => vec![format!("Up to date — last pass {ago}")],
    }
}

/// The policy's reason `code` judged from the device's conditions now, by the same
/// builder the agent and the doctor use, for its words and fix.
fn policy_reason(data: &Path, folder: &Path, code: &str) -> Option<keepsake_policy::Reason> {
    let account = load(data).ok().map(|e| e.account);
    let server = crate::conditions::ServerView {
        reachable: true,
        account: None,
        min_version: None,
    };
    let snapshot = crate::conditions::snapshot(
        Some(data),
        folder,
        account.as_deref(),
        &server,
        &keepsake_device::conditions::Assumed::default(),
    )
    .ok()?;
    let decision = keepsake_policy::evaluate(&snapshot, &keepsake_policy::PolicyConfig::default());
    decision
        .reasons()
        .into_iter()
        .find(|r| r.code.as_str() == code)
        .cloned()
}

/// Says an error as a sentence with its fix, not as a debug dump.
pub(crate) fn plain(e: CallError) -> anyhow::Error {
    let fix = match e.reason() {
        "CLIENT_TOO_OLD" => format!(
            " Install Keepsake {} or later.",
            e.metadata()
                .get("required_version")
                .map_or("a newer version", String::as_str)
        ),
        "QUOTA_EXCEEDED" => " Free space (empty Recently Deleted) or choose a bigger plan.".into(),
        "UNAUTHENTICATED" => " Check the account and password, or enrol the device again.".into(),
        "TOO_MANY_ATTEMPTS" => " Wait that long, then try again with the right password.".into(),
        "UNKNOWN" if e.message() == "transport error" => {
            " The server closed the connection without a gRPC answer: if it serves TLS, \
             use https:// and --fingerprint."
                .into()
        }
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
    // Checked before the cloud hears of the device: a directory that cannot keep the
    // device's credentials would leave a device enrolled that nothing can act as.
    let path = data.join(ENROLMENT);
    std::fs::create_dir_all(&data)
        .with_context(|| format!("cannot create the data directory {}", data.display()))?;
    let probe = data.join(".keepsake-enrol-check");
    let _ = std::fs::remove_file(&probe);
    crate::write_private(&probe, b"")
        .with_context(|| format!("cannot write in the data directory {}", data.display()))?;
    let _ = std::fs::remove_file(&probe);
    if path.exists() {
        bail!(
            "{} already holds an enrolled device; use another --data, or remove it first",
            data.display()
        );
    }
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
    let record = Enrolled {
        server: server.server,
        fingerprint: server.fingerprint,
        account: credentials.account,
        device_id: reply.device_id.clone(),
        device_token: reply.device_token,
    };
    crate::write_private(&path, &serde_json::to_vec_pretty(&record)?)
        .with_context(|| format!("writing {}", path.display()))?;
    println!(
        "enrolled {name:?} as device {} of account {}; its credentials are in {}",
        reply.device_id,
        record.account,
        path.display()
    );
    Ok(())
}

pub(crate) fn load(data: &Path) -> Result<Enrolled> {
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

/// `YYYY-MM-DD HH:MM:SS UTC` for Unix milliseconds (civil-from-days, proleptic Gregorian).
pub(crate) fn utc(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = keepsake_media::civil::civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// `YYYY-MM-DD` or `YYYY-MM-DD[T ]HH:MM[:SS]`, UTC, as Unix milliseconds.
pub(crate) fn moment_ms(text: &str) -> Result<i64, String> {
    let bad = || format!("{text:?} is not a moment like 2024-05-01 or 2024-05-01T10:30");
    let text = text.trim();
    let (day, time) = match text.split_once(['T', ' ']) {
        Some((day, time)) => (day, Some(time)),
        None => (text, None),
    };
    let parts: Vec<i64> = day
        .splitn(3, '-')
        .map(|p| p.parse().map_err(|_| bad()))
        .collect::<Result<_, _>>()?;
    let [y, m, d] = parts[..] else {
        return Err(bad());
    };
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return Err(bad());
    }
    let seconds = match time {
        None => 0,
        Some(time) => {
            let hms: Vec<i64> = time
                .split(':')
                .map(|p| p.parse().map_err(|_| bad()))
                .collect::<Result<_, _>>()?;
            match hms[..] {
                [h, mi] if h < 24 && mi < 60 => h * 3600 + mi * 60,
                [h, mi, s] if h < 24 && mi < 60 && s < 60 => h * 3600 + mi * 60 + s,
                _ => return Err(bad()),
            }
        }
    };
    let days = keepsake_media::civil::days_from_civil(y, m as u32, d as u32);
    Ok((days * 86_400 + seconds) * 1000)
}

pub(crate) fn megabytes(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

/// What `keepsake library` does.
#[derive(clap::Subcommand, Clone)]
pub enum LibraryCommand {
    /// Every asset: id, state, size, path (tombstones included).
    Ls,
    /// Photos whose content is identical (copies under other names): the library keeps
    /// each, for you to decide.
    Duplicates,
    /// Move an asset to another path (folders and name) on every device.
    Rename {
        /// The asset.
        asset_id: String,
        /// Its new path in the library, e.g. `2024/Rome/IMG_0001.JPG`.
        path: String,
    },
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
    /// Hide an asset (or show it again, with --off).
    Hide {
        /// The asset.
        asset_id: String,
        /// Show it again instead.
        #[arg(long)]
        off: bool,
    },
    /// Correct when an asset was taken (UTC), on every device; the file is not touched.
    Date {
        /// The asset.
        asset_id: String,
        /// `YYYY-MM-DD` or `YYYY-MM-DDTHH:MM[:SS]`, UTC.
        #[arg(value_parser = moment_ms)]
        taken: i64,
    },
    /// Set where an asset was taken (`LAT,LON` in degrees), or `none`; the file is not
    /// touched.
    Place {
        /// The asset.
        asset_id: String,
        /// `48.8584,2.2945`, or `none` to clear it.
        #[arg(allow_hyphen_values = true)]
        place: String,
    },
    /// Create an album holding these assets; prints its id.
    Album {
        /// Its name.
        name: String,
        /// The assets to put in it.
        asset_ids: Vec<String>,
    },
    /// Every album: id, name, size.
    Albums,
}

pub(crate) async fn signed_in(
    server: &ServerArgs,
    credentials: &Credentials,
) -> Result<(Channel, String)> {
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
            for change in whole_feed(&mut lib).await? {
                if let Some(pb::change::Row::Asset(a)) = &change.row {
                    let state = match pb::AssetState::try_from(a.state) {
                        Ok(pb::AssetState::Trashed) => "trashed",
                        Ok(pb::AssetState::Purged) => "purged",
                        _ => "live",
                    };
                    let star = if a.favorite { "*" } else { " " };
                    let path = if a.path.is_empty() {
                        &a.original_name
                    } else {
                        &a.path
                    };
                    println!(
                        "{}  {state:<7} {star} v{:<3} {:>12}  {path}",
                        a.asset_id, a.version, a.size
                    );
                }
            }
        }
        LibraryCommand::Duplicates => {
            let groups = lib
                .list_duplicates(pb::ListDuplicatesRequest { limit: 1000 })
                .await
                .map_err(|s| plain(s.into()))?
                .into_inner()
                .groups;
            if groups.is_empty() {
                println!("no two photos have the same content");
            }
            for group in &groups {
                let size = group.assets.first().map_or(0, |a| a.size);
                println!("{} photos with the same {size} bytes:", group.assets.len());
                for a in &group.assets {
                    println!("  {}  {}", a.asset_id, a.path);
                }
            }
        }
        LibraryCommand::Rename { asset_id, path } => {
            let applied = lib
                .rename_asset(pb::RenameAssetRequest {
                    asset_id: asset_id.clone(),
                    path,
                    clock: cli_clock(&credentials),
                })
                .await
                .map_err(|s| plain(s.into()))?
                .into_inner()
                .applied;
            let now = lib
                .get_asset(pb::GetAssetRequest { asset_id })
                .await
                .map_err(|s| plain(s.into()))?
                .into_inner()
                .asset
                .map(|a| a.path)
                .unwrap_or_default();
            if applied {
                println!("now at {now}");
            } else {
                println!("unchanged: at {now}");
            }
        }
        LibraryCommand::Delete { asset_id } => {
            lib.trash_asset(pb::TrashAssetRequest {
                asset_id,
                alone: false,
            })
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
            lib.set_metadata(pb::SetMetadataRequest {
                asset_id,
                clock: cli_clock(&credentials),
                field: Some(pb::set_metadata_request::Field::Favorite(!off)),
            })
            .await
            .map_err(|s| plain(s.into()))?;
        }
        LibraryCommand::Hide { asset_id, off } => {
            lib.set_metadata(pb::SetMetadataRequest {
                asset_id,
                clock: cli_clock(&credentials),
                field: Some(pb::set_metadata_request::Field::Hidden(!off)),
            })
            .await
            .map_err(|s| plain(s.into()))?;
        }
        LibraryCommand::Date { asset_id, taken } => {
            lib.set_metadata(pb::SetMetadataRequest {
                asset_id,
                clock: cli_clock(&credentials),
                field: Some(pb::set_metadata_request::Field::CaptureTimeMs(taken)),
            })
            .await
            .map_err(|s| plain(s.into()))?;
            println!("taken {}", utc(taken));
        }
        LibraryCommand::Place { asset_id, place } => {
            let (latitude, longitude) = if place.eq_ignore_ascii_case("none") {
                (None, None)
            } else {
                let (lat, lon) = place
                    .split_once(',')
                    .and_then(|(a, o)| Some((a.trim().parse().ok()?, o.trim().parse().ok()?)))
                    .with_context(|| format!("{place:?}: LAT,LON in degrees, or none"))?;
                (Some(lat), Some(lon))
            };
            lib.set_metadata(pb::SetMetadataRequest {
                asset_id,
                clock: cli_clock(&credentials),
                field: Some(pb::set_metadata_request::Field::Place(pb::Place {
                    latitude,
                    longitude,
                })),
            })
            .await
            .map_err(|s| plain(s.into()))?;
        }
        LibraryCommand::Album { name, asset_ids } => {
            let album_id =
                blake3::hash(format!("{name}|{}", now_ms()).as_bytes()).to_hex()[..16].to_string();
            lib.put_album(pb::PutAlbumRequest {
                album_id: album_id.clone(),
                name: name.clone(),
                clock: cli_clock(&credentials),
            })
            .await
            .map_err(|s| plain(s.into()))?;
            for asset_id in asset_ids {
                lib.set_album_member(pb::SetAlbumMemberRequest {
                    album_id: album_id.clone(),
                    asset_id,
                    present: true,
                    clock: cli_clock(&credentials),
                })
                .await
                .map_err(|s| plain(s.into()))?;
            }
            println!("album {name:?} is {album_id}");
        }
        LibraryCommand::Albums => {
            for change in whole_feed(&mut lib).await? {
                if let Some(pb::change::Row::Album(a)) = &change.row
                    && !a.deleted
                {
                    println!("{}  {:?}: {} items", a.album_id, a.name, a.members.len());
                }
            }
        }
    }
    Ok(())
}

/// Every row of the account's feed, page by page.
pub(crate) async fn whole_feed(lib: &mut client::LibraryApi) -> Result<Vec<pb::Change>> {
    client::whole_feed(lib).await.map_err(|s| plain(s.into()))
}

/// A clock reading for an edit made from the CLI (one per call: a new millisecond or a
/// new counter is not needed, the server orders equal readings by device name).
fn cli_clock(credentials: &Credentials) -> Option<pb::Clock> {
    Some(pb::Clock {
        wall_ms: now_ms(),
        counter: 0,
        device: format!("cli:{}", credentials.account),
    })
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

/// `keepsake scrub`: verifies every stored byte and reports what it checked and found.
pub async fn scrub(server: ServerArgs, admin: Credentials) -> Result<()> {
    let (channel, token) = signed_in(&server, &admin).await?;
    let mut lib = client::library_client(channel, BearerAuth::new(&token));
    let r = lib
        .scrub_library(pb::ScrubLibraryRequest {})
        .await
        .map_err(|s| plain(s.into()))?
        .into_inner();
    println!(
        "{} chunks / {} assets verified at {} ({} packs, {}), {} corrupt",
        r.chunks_verified,
        r.assets_verified,
        utc(r.finished_at_unix_ms),
        r.packs_verified,
        megabytes(r.bytes_verified),
        r.corrupt_chunks
    );
    for d in &r.damaged {
        println!(
            "damaged: {} ({}, account {}): a device that still has it will send it again",
            d.original_name, d.asset_id, d.account
        );
    }
    if r.previews_requeued > 0 {
        println!(
            "{} photos' previews failed verification: they are being made again from the originals",
            r.previews_requeued
        );
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_headlines_say_syncing_paused_and_blocked_as_people_read_them() {
        let now = 1_765_000_000_000;
        let data = Path::new("/d");
        let mut s = keepsake_device::AgentStatus {
            last_pass_ms: now - 5_000,
            progress: Some(keepsake_device::Progress {
                phase: "downloading".into(),
                items_done: 9,
                items_total: 9,
                bytes_done: 1_000,
                bytes_total: 341_000_000,
                current: None,
            }),
            ..Default::default()
        };
        // The last file under way: never "10 of 9".
        assert_eq!(
            headline(&s, Some(true), now, None, data),
            ["Syncing — downloading 9 of 9 (341 MB left)"]
        );
        s.progress = None;
        assert_eq!(
            headline(&s, Some(true), now, None, data),
            ["Up to date — last pass 5 s ago"]
        );
        s.reason = Some("LOW_POWER_MODE".into());
        s.since_ms = now - 60_000;
        let words = Some(("Low Power Mode is on.".into(), "Turn it off.".into()));
        let said = headline(&s, Some(true), now, words.clone(), data).join("\n");
        assert!(
            said.starts_with("Paused — Low Power Mode is on. Fix: Turn it off. Since ")
                && said.ends_with(" UTC [LOW_POWER_MODE]"),
            "{said}"
        );
        s.reason = Some("QUOTA_EXCEEDED".into());
        let said = headline(&s, Some(true), now, words.clone(), data).join("\n");
        assert!(said.starts_with("Blocked — "), "{said}");
        let said = headline(&s, Some(false), now, words, data).join("\n");
        assert!(said.starts_with("Not running — "), "{said}");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(thousands(999), "999");
    }

    #[test]
    fn moments_read_as_utc() {
        assert_eq!(moment_ms("2024-05-01"), Ok(1_714_521_600_000));
        assert_eq!(moment_ms("2024-05-01T10:00"), Ok(1_714_557_600_000));
        assert_eq!(moment_ms("2024-05-01 10:00:30"), Ok(1_714_557_630_000));
        for bad in ["2024-13-01", "2024-05", "yesterday", "2024-05-01T25:00"] {
            assert!(moment_ms(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn utc_spells_known_instants() {
        assert_eq!(super::utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(super::utc(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(super::utc(1_767_225_599_000), "2025-12-31 23:59:59 UTC");
    }
}
