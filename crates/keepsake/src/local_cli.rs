//! `keepsake device …` commands that act on this device alone, through its journal and
//! settings: no server, no password. Edits wait in the device's outbox and a running agent
//! is woken to send them; with no agent running they go with the next `keepsake sync`.

use anyhow::{Context, Result};
use keepsake_device::{DeviceConfig, Edit, FolderControl, Settings};
use std::path::PathBuf;

/// The device's data directory.
#[derive(clap::Args, Clone)]
pub struct DataArg {
    /// The device's data directory.
    #[arg(long, env = "KEEPSAKE_DEVICE_DATA", default_value = "keepsake-device")]
    pub data: PathBuf,
}

/// On or off.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Switch {
    /// On.
    On,
    /// Off.
    Off,
}

impl Switch {
    fn on(self) -> bool {
        matches!(self, Self::On)
    }
}

/// Commands on this device's own library view and settings.
#[derive(clap::Subcommand)]
pub enum LocalCommand {
    /// Every asset this device knows: id, favourite/hidden/deleted flags, albums, name.
    Ls(DataArg),
    /// Mark an asset a favourite (or not, with --off); every device follows.
    Favorite {
        /// The asset: its id, or its file name.
        asset: String,
        /// Remove the mark instead.
        #[arg(long)]
        off: bool,
        #[command(flatten)]
        at: DataArg,
    },
    /// Hide an asset (or show it again, with --off).
    Hide {
        /// The asset: its id, or its file name.
        asset: String,
        /// Show it again instead.
        #[arg(long)]
        off: bool,
        #[command(flatten)]
        at: DataArg,
    },
    /// Move an asset to Recently Deleted on every device.
    Trash {
        /// The asset: its id, or its file name.
        asset: String,
        #[command(flatten)]
        at: DataArg,
    },
    /// Bring an asset back from Recently Deleted on every device.
    Restore {
        /// The asset: its id, or its file name.
        asset: String,
        #[command(flatten)]
        at: DataArg,
    },
    /// Create, rename, fill or delete albums.
    #[command(subcommand)]
    Album(AlbumCommand),
    /// Show or change this device's sync settings.
    Settings {
        /// The "sync this device" switch.
        #[arg(long)]
        sync: Option<Switch>,
        /// May sync use mobile data.
        #[arg(long)]
        cellular: Option<Switch>,
        /// On mobile data, no daily cap.
        #[arg(long)]
        unlimited: Option<Switch>,
        /// On mobile data, at most this many megabytes a day (0 removes the cap).
        #[arg(long)]
        daily_cap_mb: Option<u64>,
        /// Optimize Storage: keep at most this many megabytes of originals here, previews of
        /// everything (0 downloads and keeps every original).
        #[arg(long)]
        optimize_mb: Option<u64>,
        /// Send at most this many bytes a second ("500k", "2M"; "off" removes the limit).
        #[arg(long, value_parser = crate::agent::limit)]
        limit_upload: Option<u64>,
        /// Receive at most this many bytes a second ("off" removes the limit).
        #[arg(long, value_parser = crate::agent::limit)]
        limit_download: Option<u64>,
        #[command(flatten)]
        at: DataArg,
    },
    /// Pause sync for a while.
    Pause {
        /// For how many minutes.
        #[arg(long, default_value_t = 60)]
        minutes: u64,
        #[command(flatten)]
        at: DataArg,
    },
    /// Resume sync now (ends a pause and a low-battery override).
    Resume(DataArg),
    /// Sync despite low battery, for a while.
    SyncAnyway {
        /// For how many minutes.
        #[arg(long, default_value_t = 60)]
        minutes: u64,
        #[command(flatten)]
        at: DataArg,
    },
    /// Allow the deletes held back because many files vanished from the folder at once.
    ConfirmDeletes(DataArg),
}

/// Album edits.
#[derive(clap::Subcommand)]
pub enum AlbumCommand {
    /// Create an album; prints its id.
    Create {
        /// Its name.
        name: String,
        #[command(flatten)]
        at: DataArg,
    },
    /// Rename an album.
    Rename {
        /// The album: its id or name.
        album: String,
        /// The new name.
        name: String,
        #[command(flatten)]
        at: DataArg,
    },
    /// Put an asset in an album.
    Add {
        /// The album: its id or name.
        album: String,
        /// The asset: its id or file name.
        asset: String,
        #[command(flatten)]
        at: DataArg,
    },
    /// Take an asset out of an album.
    Remove {
        /// The album: its id or name.
        album: String,
        /// The asset: its id or file name.
        asset: String,
        #[command(flatten)]
        at: DataArg,
    },
    /// Delete an album (its photos stay).
    Delete {
        /// The album: its id or name.
        album: String,
        #[command(flatten)]
        at: DataArg,
    },
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn open(at: &DataArg) -> Result<FolderControl> {
    let enrolled: serde_json::Value = serde_json::from_slice(
        &std::fs::read(at.data.join("device.json")).with_context(|| {
            format!(
                "{} is not an enrolled device's data directory (`keepsake device enroll --data {}`)",
                at.data.display(),
                at.data.display()
            )
        })?,
    )?;
    let device_id = enrolled["device_id"]
        .as_str()
        .context("device.json names no device")?
        .to_string();
    // No folder here: FolderControl takes the one the agent recorded in the journal.
    let config = DeviceConfig::new(PathBuf::new(), at.data.join("state"), device_id);
    let (wake, _) = tokio::sync::mpsc::unbounded_channel();
    let clock = std::sync::Arc::new(keepsake_store::SystemClock);
    Ok(FolderControl::open(&config, at.data.clone(), clock, wake)?)
}

fn edit(control: &FolderControl, edit: Edit, done: &str) -> Result<()> {
    control.edit(edit)?;
    let agent = control.status();
    if agent.last_pass_ms > 0 && now_ms() - agent.last_pass_ms < 120_000 {
        println!("{done}; the agent sends it now");
    } else {
        println!("{done}; it is sent when `keepsake sync` next runs");
    }
    Ok(())
}

fn print_settings(s: &Settings) {
    let on = |b: bool| if b { "on" } else { "off" };
    println!("sync:           {}", on(s.sync_enabled));
    println!("mobile data:    {}", on(s.cellular_allowed));
    match (s.unlimited_updates, s.daily_cap_bytes) {
        (true, _) => println!("daily cap:      none (unlimited updates)"),
        (false, Some(cap)) => println!("daily cap:      {} MB", cap / 1_000_000),
        (false, None) => println!("daily cap:      none"),
    }
    let until = |at: Option<i64>| {
        at.filter(|t| *t > now_ms())
            .map(|t| format!("for {} more minutes", (t - now_ms()) / 60_000 + 1))
    };
    match s.optimize_budget_bytes {
        Some(b) => println!(
            "storage:        Optimize, {} MB of originals",
            b / 1_000_000
        ),
        None => println!("storage:        Download and Keep Originals"),
    }
    let rate =
        |r: Option<u64>| r.map_or_else(|| "none".to_string(), |b| format!("{} kB/s", b / 1000));
    println!("upload limit:   {}", rate(s.limit_upload_bytes));
    println!("download limit: {}", rate(s.limit_download_bytes));
    if let Some(left) = until(s.paused_until_ms) {
        println!("paused:         {left}");
    }
    if let Some(left) = until(s.power_override_until_ms) {
        println!("low battery:    syncing anyway {left}");
    }
}

/// Runs a device-local command.
pub fn run(command: LocalCommand) -> Result<()> {
    match command {
        LocalCommand::Ls(at) => {
            let control = open(&at)?;
            for a in control.assets()? {
                let flags = format!(
                    "{}{}{}",
                    if a.favorite { "*" } else { "-" },
                    if a.hidden { "h" } else { "-" },
                    if a.trashed { "d" } else { "-" },
                );
                let albums = if a.albums.is_empty() {
                    String::new()
                } else {
                    format!("  [{}]", a.albums.join(", "))
                };
                println!("{}  {flags}  {}{albums}", a.asset_id, a.name);
            }
            for album in control.albums()? {
                println!(
                    "album {}  {:?}: {} items",
                    album.album_id,
                    album.name,
                    album.members.len()
                );
            }
            let pending = control.status().pending_edits;
            if pending > 0 {
                println!("{pending} edits waiting to be sent");
            }
        }
        LocalCommand::Favorite { asset, off, at } => {
            let control = open(&at)?;
            let a = control.find_asset(&asset)?;
            let done = if off {
                format!("{} is no longer a favourite", a.name)
            } else {
                format!("{} is a favourite", a.name)
            };
            edit(
                &control,
                Edit::Favorite {
                    asset_id: a.asset_id,
                    value: !off,
                },
                &done,
            )?;
        }
        LocalCommand::Hide { asset, off, at } => {
            let control = open(&at)?;
            let a = control.find_asset(&asset)?;
            let done = format!("{} is {}", a.name, if off { "shown" } else { "hidden" });
            edit(
                &control,
                Edit::Hidden {
                    asset_id: a.asset_id,
                    value: !off,
                },
                &done,
            )?;
        }
        LocalCommand::Trash { asset, at } => {
            let control = open(&at)?;
            let a = control.find_asset(&asset)?;
            let done = format!("{} goes to Recently Deleted", a.name);
            edit(
                &control,
                Edit::Trash {
                    asset_id: a.asset_id,
                    alone: false,
                },
                &done,
            )?;
        }
        LocalCommand::Restore { asset, at } => {
            let control = open(&at)?;
            let a = control.find_asset(&asset)?;
            let done = format!("{} comes back from Recently Deleted", a.name);
            edit(
                &control,
                Edit::Restore {
                    asset_id: a.asset_id,
                },
                &done,
            )?;
        }
        LocalCommand::Album(album) => run_album(album)?,
        LocalCommand::Settings {
            sync,
            cellular,
            unlimited,
            daily_cap_mb,
            optimize_mb,
            limit_upload,
            limit_download,
            at,
        } => {
            let control = open(&at)?;
            let mut s = control.settings()?;
            let changed = sync.is_some()
                || cellular.is_some()
                || unlimited.is_some()
                || daily_cap_mb.is_some()
                || optimize_mb.is_some()
                || limit_upload.is_some()
                || limit_download.is_some();
            if let Some(rate) = limit_upload {
                s.limit_upload_bytes = (rate > 0).then_some(rate);
            }
            if let Some(rate) = limit_download {
                s.limit_download_bytes = (rate > 0).then_some(rate);
            }
            if let Some(v) = sync {
                s.sync_enabled = v.on();
            }
            if let Some(v) = cellular {
                s.cellular_allowed = v.on();
            }
            if let Some(v) = unlimited {
                s.unlimited_updates = v.on();
            }
            if let Some(mb) = daily_cap_mb {
                s.daily_cap_bytes = (mb > 0).then(|| mb.saturating_mul(1_000_000));
            }
            if let Some(mb) = optimize_mb {
                s.optimize_budget_bytes = (mb > 0).then(|| mb.saturating_mul(1_000_000));
            }
            if changed {
                control.set_settings(&s)?;
            }
            print_settings(&s);
        }
        LocalCommand::Pause { minutes, at } => {
            let control = open(&at)?;
            let mut s = control.settings()?;
            s.paused_until_ms = Some(now_ms() + minutes as i64 * 60_000);
            control.set_settings(&s)?;
            println!("sync paused for {minutes} minutes (`keepsake device resume` ends it)");
        }
        LocalCommand::Resume(at) => {
            let control = open(&at)?;
            let mut s = control.settings()?;
            s.paused_until_ms = None;
            s.power_override_until_ms = None;
            control.set_settings(&s)?;
            println!("sync resumed");
        }
        LocalCommand::SyncAnyway { minutes, at } => {
            let control = open(&at)?;
            let mut s = control.settings()?;
            s.power_override_until_ms = Some(now_ms() + minutes as i64 * 60_000);
            control.set_settings(&s)?;
            println!("syncing despite low battery for {minutes} minutes");
        }
        LocalCommand::ConfirmDeletes(at) => {
            open(&at)?.confirm_deletes()?;
            println!("the held-back deletes go on the agent's next pass");
        }
    }
    Ok(())
}

fn run_album(command: AlbumCommand) -> Result<()> {
    match command {
        AlbumCommand::Create { name, at } => {
            let control = open(&at)?;
            // Chosen here, unique without asking anyone: device, name and moment.
            let seed = format!("{}|{name}|{}", control.status().device_id, now_ms());
            let album_id = blake3::hash(seed.as_bytes()).to_hex()[..16].to_string();
            let done = format!("album {name:?} created as {album_id}");
            edit(&control, Edit::PutAlbum { album_id, name }, &done)?;
        }
        AlbumCommand::Rename { album, name, at } => {
            let control = open(&at)?;
            let album = control.find_album(&album)?;
            let done = format!("album {:?} renamed {name:?}", album.name);
            let edit_ = Edit::PutAlbum {
                album_id: album.album_id,
                name,
            };
            edit(&control, edit_, &done)?;
        }
        AlbumCommand::Add { album, asset, at } => membership(&at, &album, &asset, true)?,
        AlbumCommand::Remove { album, asset, at } => membership(&at, &album, &asset, false)?,
        AlbumCommand::Delete { album, at } => {
            let control = open(&at)?;
            let album = control.find_album(&album)?;
            let done = format!("album {:?} deleted; its photos stay", album.name);
            edit(
                &control,
                Edit::DeleteAlbum {
                    album_id: album.album_id,
                },
                &done,
            )?;
        }
    }
    Ok(())
}

fn membership(at: &DataArg, album: &str, asset: &str, present: bool) -> Result<()> {
    let control = open(at)?;
    let album = control.find_album(album)?;
    let a = control.find_asset(asset)?;
    let done = if present {
        format!("{} added to {:?}", a.name, album.name)
    } else {
        format!("{} taken out of {:?}", a.name, album.name)
    };
    edit(
        &control,
        Edit::AlbumMember {
            album_id: album.album_id,
            asset_id: a.asset_id,
            present,
        },
        &done,
    )
}

/// `keepsake open ASSET`: the original's path, fetched first if Optimize Storage kept it in
/// the cloud (the running agent fetches and verifies it).
pub fn open_original(asset: &str, at: &DataArg) -> Result<()> {
    let control = open(at)?;
    let a = control.find_asset(asset)?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    // The agent fetches it; a large one shows its download as it goes.
    let bar = crate::progress::Bar::on_stderr();
    loop {
        if let Some(path) = control.open_original(&a.asset_id)? {
            bar.clear();
            println!("{}", path.display());
            return Ok(());
        }
        if let Some(p) = crate::device_cli::load_status(&at.data).and_then(|s| s.progress)
            && p.phase == "downloading"
        {
            bar.show_pass(&p);
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!(
                "the original of {} has not arrived; is the agent running? (`keepsake status --data {}`)",
                a.name,
                at.data.display()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}
