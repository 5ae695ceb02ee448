//! The `keepsake` binary: runs Keepsake's services.
//!
//! # In detail
//!
//! the binary (`keepsake duplicates`, `library rename`, `export` into the library's folders and
//! names, `status` listing what was left out on purpose and names the library numbered; on
//! glibc it starts itself again with `MALLOC_ARENA_MAX=2` and buffers under 32 MiB kept for
//! reuse: the server's blocking threads otherwise spread freed buffers over many arenas that
//! keep them — peak 325 → 112 MiB in the 2 GiB benchmark — and fresh pages cost CPU):
//! `keepsake device enroll`, `keepsake sync DIR \[--control ADDR\]
//! \[--stream-from-kib N --stream-batch-kib N\]` and `keepsake device run DIR` (the agent — the
//! two stream options set `DeviceConfig::streamed_from` and `stream_batch_bytes` for a device
//! short of memory: a pass on every file-system event, every WatchChanges message, every
//! settings change or edit, and every interval; DeviceControl on loopback when asked, to
//! callers presenting `DATA/control-secret` (mode 0600); conditions built by `conditions` (the
//! one snapshot builder: the machine's probes, `conditions.json`, the owner's `settings.json`,
//! and the plan or required version read from the server while it refuses — the doctor uses the
//! same); file-system events that only read (the scan's own listings) never wake it; the access
//! token replaced at half its life on every clone of the client (`TokenCell`), so an upload
//! outlives it; `STORAGE_FULL` waited out at least 15 s; retries with seeded, jittered
//! exponential backoff (backon) on transient errors; progress lines; reports to the ledger),
//! `derive_worker` (the derivative queue run with keepsake-media once uploads are quiet —
//! nothing newly committed for 2 s, or the oldest job waited 60 s; video posters through ffmpeg
//! and HEIC previews through heif-convert, under `nice`, when the server has them, else the
//! asset says none exists and why), `export` (`keepsake export DIR \[--versions\]`: verified,
//! resumable, JSON sidecars), `keepsake open ASSET`, `local_cli` (`keepsake device
//! ls|favorite|hide|album|trash|restore|settings|pause|resume|sync-anyway|confirm-deletes`: the
//! device's own journal and settings, no server), `keepsake status`, `keepsake library
//! ls|delete|restore|purge|favorite`, `keepsake devices`, `keepsake account create`, `keepsake
//! plan set`, `keepsake serve` (first start creates the administrator `me` and leaves its
//! password in `initial-credentials.json`; publishes `token-keys.json` for services run
//! elsewhere; one maintenance loop: library, then store GC), `keepsake serve` holds
//! `server.lock` in its data directory and stops within 5 s of SIGTERM (3 s for calls in
//! flight; watch streams are cut), and `keepsake doctor` (signs in as the enrolled device from
//! its data directory, no token; the same `conditions` as the agent — battery from
//! /sys/class/power_supply, free space via statvfs, link type from /sys/class/net; adds the
//! agent's last refusal and whether it runs, `keepsake_device::agent_running` probing its lock;
//! anything unreadable is reported as unknown). Modules: `serve` (`keepsake serve`),
//! `service` (`keepsake service install|uninstall|status`: the agent as a systemd user unit
//! or launchd agent), `ledger_cli` (`keepsake devices`, `device revoke|remove`, `versions`,
//! `revert`, `account show|ls`).

mod agent;
mod backends;
mod conditions;
mod derive_worker;
mod device_cli;
mod doctor;
mod export;
mod import_cli;
mod ledger_cli;
mod local_cli;
mod migrate;
mod progress;
mod serve;
mod service;

use anyhow::Result;
use clap::{Parser, Subcommand};
#[cfg(test)]
use serve::selected;
use serve::{ServeArgs, run_serve};
pub(crate) use serve::{lock_data, shutdown_signal, write_private};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Keepsake: a self-hosted photo library that keeps every device in sync.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the cloud services (by default all of them, on the embedded SQLite + local-file storage).
    Serve(ServeArgs),
    /// Say why this device is or is not syncing, and what fixes it (exit status 1 when blocked).
    Doctor(doctor::DoctorArgs),
    /// Move a stopped embedded server (SQLite + files under --data) to PostgreSQL + an S3
    /// bucket: packs verified chunk by chunk, then every row; resumable; devices re-send nothing.
    Migrate {
        /// The embedded server's data directory.
        #[arg(long, env = "KEEPSAKE_DATA", default_value = "keepsake-data")]
        data: PathBuf,
        /// The PostgreSQL database (`postgres://USER@HOST/DB`; password from PGPASSWORD).
        #[arg(long)]
        to: String,
        /// The bucket (`s3://BUCKET?endpoint=…`; keys from the AWS environment variables).
        #[arg(long)]
        blobs: String,
    },
    /// Manage this device's enrolment.
    #[command(subcommand)]
    Device(DeviceCommand),
    /// Keep a folder in sync with the cloud library (foreground; Ctrl-C stops it).
    Sync {
        /// The library folder.
        dir: PathBuf,
        /// The device's data directory (enrolment, journal, Recently Deleted).
        #[arg(long, env = "KEEPSAKE_DEVICE_DATA", default_value = "keepsake-device")]
        data: PathBuf,
        /// One pass, then exit.
        #[arg(long)]
        once: bool,
        /// Serve the DeviceControl service (status, conditions, import, delete) on this
        /// loopback address.
        #[arg(long)]
        control: Option<SocketAddr>,
        /// Milliseconds between passes when nothing wakes the agent earlier (file system
        /// events and the cloud's change feed do).
        #[arg(long, default_value_t = 10_000)]
        interval_ms: u64,
        #[command(flatten)]
        streaming: agent::StreamArgs,
    },
    /// Verify every stored byte now (as an administrator): prints what was checked, drops
    /// corrupt chunks, and names the photos flagged damaged (devices holding them re-send).
    Scrub {
        #[command(flatten)]
        server: device_cli::ServerArgs,
        #[command(flatten)]
        admin: device_cli::Credentials,
    },
    /// Manage accounts (as an administrator).
    #[command(subcommand)]
    Account(AccountCommand),
    /// Manage plans (as an administrator).
    #[command(subcommand)]
    Plan(PlanCommand),
    /// Keep the agent running in the background: a systemd user service (launchd on
    /// macOS) that starts at login and restarts after a failure.
    #[command(subcommand)]
    Service(service::ServiceCommand),
    /// What this device's agent last said: syncing or why not, since when, what waits.
    Status {
        /// The device's data directory.
        #[arg(long, env = "KEEPSAKE_DEVICE_DATA", default_value = "keepsake-device")]
        data: PathBuf,
    },
    /// Copy every original (and with --versions every earlier version) into a folder, each
    /// with a JSON sidecar of its metadata; verified, resumable.
    Export {
        #[command(flatten)]
        server: device_cli::ServerArgs,
        #[command(flatten)]
        credentials: device_cli::Credentials,
        /// Where to write.
        dir: PathBuf,
        /// Earlier versions too, as NAME.vN.EXT.
        #[arg(long)]
        versions: bool,
        /// Assets in Recently Deleted too.
        #[arg(long)]
        include_trash: bool,
    },
    /// Bring photos in: a folder, a Google Takeout archive (.zip/.tgz) or an iCloud Photos
    /// export, into Imports/<origin> <date>/ with the dates, places, captions, favourites
    /// and albums of their sidecars; bytes the library has already are skipped; running it
    /// again after an interruption goes on where it stopped.
    Import {
        #[command(flatten)]
        server: device_cli::ServerArgs,
        #[command(flatten)]
        credentials: device_cli::Credentials,
        /// The folder or archive.
        source: PathBuf,
        /// Import a file even when the library has the same bytes already.
        #[arg(long)]
        keep_duplicates: bool,
        /// The journal that lets an interrupted import go on (default:
        /// $XDG_STATE_HOME/keepsake/imports.sqlite3).
        #[arg(long)]
        journal: Option<PathBuf>,
    },
    /// Print an asset's original path on this device, fetching it first if Optimize Storage
    /// kept it in the cloud.
    Open {
        /// The asset: its id or file name.
        asset: String,
        #[command(flatten)]
        at: local_cli::DataArg,
    },
    /// Photos whose content is identical (copies under other names), for you to decide
    /// which to keep: the library never merges them.
    Duplicates {
        #[command(flatten)]
        server: device_cli::ServerArgs,
        #[command(flatten)]
        credentials: device_cli::Credentials,
    },
    /// Look at and change the cloud library.
    Library {
        #[command(flatten)]
        server: device_cli::ServerArgs,
        #[command(flatten)]
        credentials: device_cli::Credentials,
        #[command(subcommand)]
        command: device_cli::LibraryCommand,
    },
    /// List the account's devices: state, reason and fix, last contact (a device silent
    /// for more than a day is flagged), what each still has to upload and download, its
    /// network, battery and free space.
    Devices {
        #[command(flatten)]
        server: device_cli::ServerArgs,
        #[command(flatten)]
        credentials: device_cli::Credentials,
        /// Another account's devices (administrators).
        #[arg(long = "of")]
        of: Option<String>,
    },
    /// Find photos and videos: by date, camera, place, kind, favourite, album or name.
    Search {
        #[command(flatten)]
        server: device_cli::ServerArgs,
        #[command(flatten)]
        credentials: device_cli::Credentials,
        #[command(flatten)]
        args: ledger_cli::SearchArgs,
    },
    /// List an asset's versions (PATH in the library, or its id); the current one is marked.
    Versions {
        #[command(flatten)]
        server: device_cli::ServerArgs,
        #[command(flatten)]
        credentials: device_cli::Credentials,
        /// The asset: its path in the library, or its id.
        asset: String,
    },
    /// Make an earlier version current again on every device (nothing is uploaded).
    Revert {
        #[command(flatten)]
        server: device_cli::ServerArgs,
        #[command(flatten)]
        credentials: device_cli::Credentials,
        /// The asset: its path in the library, or its id.
        asset: String,
        /// The version to go back to (`keepsake versions` lists them).
        #[arg(long)]
        to: u32,
    },
}

#[derive(Subcommand)]
enum AccountCommand {
    /// Create an account.
    Create {
        #[command(flatten)]
        server: device_cli::ServerArgs,
        #[command(flatten)]
        admin: device_cli::Credentials,
        /// The new account's name.
        name: String,
        /// Its password (or KEEPSAKE_NEW_PASSWORD).
        #[arg(long, env = "KEEPSAKE_NEW_PASSWORD", hide_env_values = true)]
        new_password: String,
        /// Its plan (default: the free plan).
        #[arg(long)]
        plan: Option<String>,
    },
    /// The account's plan, usage, devices and integrity proof (when its originals were
    /// last verified, and how many wait for a device to re-send them).
    Show {
        #[command(flatten)]
        server: device_cli::ServerArgs,
        #[command(flatten)]
        credentials: device_cli::Credentials,
    },
    /// Every account with its plan, usage and device count (administrators).
    Ls {
        #[command(flatten)]
        server: device_cli::ServerArgs,
        #[command(flatten)]
        admin: device_cli::Credentials,
    },
    /// Print an access token for scripts (grpcurl, Python): `authorization: Bearer TOKEN`.
    Token {
        #[command(flatten)]
        server: device_cli::ServerArgs,
        #[command(flatten)]
        credentials: device_cli::Credentials,
    },
}

#[derive(Subcommand)]
enum PlanCommand {
    /// Move an account to a plan (free, 50gb, 200gb, 2tb, 6tb, 12tb).
    Set {
        #[command(flatten)]
        server: device_cli::ServerArgs,
        #[command(flatten)]
        admin: device_cli::Credentials,
        /// The account to move.
        #[arg(value_name = "ACCOUNT")]
        target: String,
        /// The plan.
        plan: String,
    },
}

#[derive(Subcommand)]
enum DeviceCommand {
    /// Enrol this device in an account; its credentials go to the data directory.
    Enroll {
        #[command(flatten)]
        server: device_cli::ServerArgs,
        #[command(flatten)]
        credentials: device_cli::Credentials,
        /// The device's name, as its owner will see it.
        #[arg(long, default_value = "this computer")]
        name: String,
        /// The device's data directory.
        #[arg(long, env = "KEEPSAKE_DEVICE_DATA", default_value = "keepsake-device")]
        data: PathBuf,
    },
    /// Run the sync agent with its DeviceControl service (status, settings, edits, doctor)
    /// on a loopback address: what a phone app would drive.
    Run {
        /// The library folder.
        dir: PathBuf,
        /// The device's data directory.
        #[arg(long, env = "KEEPSAKE_DEVICE_DATA", default_value = "keepsake-device")]
        data: PathBuf,
        /// Where DeviceControl listens (loopback only).
        #[arg(long, default_value = "127.0.0.1:50061")]
        control: SocketAddr,
        #[command(flatten)]
        streaming: agent::StreamArgs,
    },
    /// Revoke a device (a lost phone): its agent stops at its next call with
    /// DEVICE_REVOKED and keeps every file; it stays listed, marked revoked.
    Revoke(ledger_cli::RetireArgs),
    /// Revoke a device and take it out of the list (sold, given away).
    Remove(ledger_cli::RetireArgs),
    #[command(flatten)]
    Local(local_cli::LocalCommand),
}

/// Starts this program again with glibc's allocator held to two arenas that keep their
/// buffers. The server's short-lived blocking threads (an fsync, a pack read, a preview
/// each) otherwise spread their freed 1–16 MiB buffers over up to 16 arenas that keep them:
/// in `cargo xtask bench` a 2 GiB first sync peaked at ~325 MiB resident with the default
/// and ~143 MiB with two arenas, at the same CPU. Within those two, a freed buffer under
/// 32 MiB is kept for the next batch (up to 64 MiB left free before memory goes back to the
/// system) instead of unmapped and faulted in fresh each time: the three processes' CPU over
/// that first sync fell from 13.0–14.2 to 11.7–12.4 s, with peaks of ~190–210 MiB (server),
/// ~250–280 MiB (camera) and ~150–240 MiB (viewer). glibc reads these settings only from the
/// environment at start, hence the exec; it keeps the process id, and where it fails the
/// program runs as it is. Settings already in the environment are left as they are.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn restart_with_two_malloc_arenas() {
    use std::os::unix::process::CommandExt;
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let mut args = std::env::args_os();
    let mut again = std::process::Command::new(exe);
    if let Some(name) = args.next() {
        again.arg0(name);
    }
    again.args(args).env("MALLOC_ARENA_MAX", "2");
    for (name, value) in [
        ("MALLOC_MMAP_THRESHOLD_", "33554432"),
        ("MALLOC_TRIM_THRESHOLD_", "67108864"),
    ] {
        if std::env::var_os(name).is_none() {
            again.env(name, value);
        }
    }
    let _failed = again.exec();
}

fn main() -> Result<()> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    restart_with_two_malloc_arenas();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, never into a log file or journal.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new()?;
    let outcome = run(cli.command, &runtime);
    if let Err(e) = &outcome
        && let Some(revoked) = e.downcast_ref::<agent::Revoked>()
    {
        // Its own exit status: a service manager must not restart an agent whose device
        // was revoked (nothing a restart does changes that).
        eprintln!("Error: {revoked}");
        std::process::exit(agent::REVOKED_EXIT);
    }
    outcome
}

fn run(command: Command, runtime: &tokio::runtime::Runtime) -> Result<()> {
    match command {
        Command::Serve(args) => runtime.block_on(run_serve(args)),
        Command::Migrate { data, to, blobs } => {
            let database = match std::env::var("PGPASSWORD") {
                Ok(p) if !to.contains('@') || !to.split('@').next().unwrap_or("").contains(':') => {
                    backends::with_password(&to, &p)?
                }
                _ => to,
            };
            migrate::run(&data, &database, &blobs)
        }
        Command::Doctor(args) => {
            if runtime.block_on(doctor::run(args))? {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Device(DeviceCommand::Enroll {
            server,
            credentials,
            name,
            data,
        }) => runtime.block_on(device_cli::enroll(server, credentials, name, data)),
        Command::Device(DeviceCommand::Run {
            dir,
            data,
            control,
            streaming,
        }) => runtime.block_on(agent::sync(
            dir,
            data,
            false,
            Duration::from_secs(10),
            Some(control),
            streaming,
        )),
        Command::Device(DeviceCommand::Revoke(args)) => {
            runtime.block_on(ledger_cli::retire(args, ledger_cli::Retire::Revoke))
        }
        Command::Device(DeviceCommand::Remove(args)) => {
            runtime.block_on(ledger_cli::retire(args, ledger_cli::Retire::Remove))
        }
        Command::Device(DeviceCommand::Local(command)) => local_cli::run(command),
        Command::Sync {
            dir,
            data,
            once,
            control,
            interval_ms,
            streaming,
        } => runtime.block_on(agent::sync(
            dir,
            data,
            once,
            Duration::from_millis(interval_ms),
            control,
            streaming,
        )),
        Command::Devices {
            server,
            credentials,
            of,
        } => runtime.block_on(ledger_cli::devices(server, credentials, of)),
        Command::Search {
            server,
            credentials,
            args,
        } => runtime.block_on(ledger_cli::search(server, credentials, args)),
        Command::Versions {
            server,
            credentials,
            asset,
        } => runtime.block_on(ledger_cli::versions(server, credentials, asset)),
        Command::Revert {
            server,
            credentials,
            asset,
            to,
        } => runtime.block_on(ledger_cli::revert(server, credentials, asset, to)),
        Command::Account(AccountCommand::Show {
            server,
            credentials,
        }) => runtime.block_on(ledger_cli::show_account(server, credentials)),
        Command::Account(AccountCommand::Ls { server, admin }) => {
            runtime.block_on(ledger_cli::list_accounts(server, admin))
        }
        Command::Status { data } => device_cli::status(data),
        Command::Service(command) => service::run(command),
        Command::Account(AccountCommand::Token {
            server,
            credentials,
        }) => runtime.block_on(async {
            let (_, token) = device_cli::signed_in(&server, &credentials).await?;
            println!("{token}");
            Ok(())
        }),
        Command::Account(AccountCommand::Create {
            server,
            admin,
            name,
            new_password,
            plan,
        }) => runtime.block_on(device_cli::create_account(
            server,
            admin,
            name,
            new_password,
            plan,
        )),
        Command::Plan(PlanCommand::Set {
            server,
            admin,
            target,
            plan,
        }) => runtime.block_on(device_cli::set_plan(server, admin, target, plan)),
        Command::Scrub { server, admin } => runtime.block_on(device_cli::scrub(server, admin)),
        Command::Library {
            server,
            credentials,
            command,
        } => runtime.block_on(device_cli::library(server, credentials, command)),
        Command::Duplicates {
            server,
            credentials,
        } => runtime.block_on(device_cli::library(
            server,
            credentials,
            device_cli::LibraryCommand::Duplicates,
        )),
        Command::Open { asset, at } => local_cli::open_original(&asset, &at),
        Command::Import {
            server,
            credentials,
            source,
            keep_duplicates,
            journal,
        } => runtime.block_on(import_cli::run(
            server,
            credentials,
            source,
            keep_duplicates,
            journal,
        )),
        Command::Export {
            server,
            credentials,
            dir,
            versions,
            include_trash,
        } => runtime.block_on(export::run(
            server,
            credentials,
            dir,
            versions,
            include_trash,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_services_are_named_in_the_error() {
        let err = selected(&["store".into(), "photos".into()]).unwrap_err();
        assert!(err.to_string().contains("\"photos\""), "{err}");
        assert_eq!(
            selected(&["all".into()]).unwrap(),
            vec!["store", "library", "policy", "delta", "web"]
        );
    }

    #[test]
    fn cli_parses() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
