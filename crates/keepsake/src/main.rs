//! The `keepsake` binary: runs Keepsake's services.
//!
//! # In detail
//!
//! the binary (`keepsake duplicates`, `library rename`, `export` into the library's folders and
//! names, `status` listing what was left out on purpose and names the library numbered; on
//! glibc it starts itself again with `MALLOC_ARENA_MAX=2`: the server's blocking threads
//! otherwise spread freed buffers over many arenas that keep them — peak 325 → 112 MiB in the 2
//! GiB benchmark): `keepsake device enroll`, `keepsake sync DIR \[--control ADDR\]
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
//! anything unreadable is reported as unknown)

mod agent;
mod backends;
mod conditions;
mod derive_worker;
mod device_cli;
mod doctor;
mod export;
mod ledger_cli;
mod local_cli;
mod migrate;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use keepsake_library::tokens::{PublicKeys, TokenVerifier};
use keepsake_library::{ClientVersion, Cloud, Library, LibraryConfig};
use keepsake_store::{OsEntropy, Store, StoreConfig, SystemClock, random_hex};
use keepsake_transport::ChangeNotifier;
use keepsake_transport::auth::Authenticator;
use keepsake_transport::server::{ServerConfig, Services, serve};
use keepsake_transport::tls::CertifiedKey;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
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
    Revoke {
        #[command(flatten)]
        server: device_cli::ServerArgs,
        #[command(flatten)]
        credentials: device_cli::Credentials,
        /// A device of another account (administrators).
        #[arg(long = "of")]
        of: Option<String>,
        /// The device: its name or id (`keepsake devices` lists them).
        name: String,
    },
    /// Revoke a device and take it out of the list (sold, given away).
    Remove {
        #[command(flatten)]
        server: device_cli::ServerArgs,
        #[command(flatten)]
        credentials: device_cli::Credentials,
        /// A device of another account (administrators).
        #[arg(long = "of")]
        of: Option<String>,
        /// The device: its name or id.
        name: String,
    },
    #[command(flatten)]
    Local(local_cli::LocalCommand),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Which services to run here: `all`, or a comma-separated list (`store`, `library`, `policy`, `delta`).
    #[arg(long, default_value = "all", value_delimiter = ',')]
    services: Vec<String>,
    /// Where the services keep their data.
    #[arg(long, env = "KEEPSAKE_DATA", default_value = "keepsake-data")]
    data: PathBuf,
    /// The library and the store index in PostgreSQL (`postgres://USER@HOST/DB`; the
    /// password from PGPASSWORD or --config, never here) instead of SQLite under --data.
    #[arg(long, env = "KEEPSAKE_DATABASE")]
    database: Option<String>,
    /// The packs in an S3-compatible bucket (`s3://BUCKET?endpoint=URL&region=R&prefix=P`;
    /// keys from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or ~/.aws/credentials) instead of
    /// files under --data.
    #[arg(long, env = "KEEPSAKE_BLOBS")]
    blobs: Option<String>,
    /// A file of `database = …` and `blobs = …` lines (and `database_password = …`), read
    /// when the flags are not given: the way to keep a password off the command line.
    #[arg(long, env = "KEEPSAKE_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on; port 0 picks a free one (the chosen address is printed).
    #[arg(long, env = "KEEPSAKE_LISTEN", default_value = "127.0.0.1:50051", value_parser = parse_listen)]
    listen: SocketAddr,
    /// Public token keys (the library server's token-keys.json), for a process that
    /// serves the store, delta or policy without the library.
    #[arg(long)]
    token_keys: Option<PathBuf>,
    /// Serve TLS with a certificate made for this server (kept in DATA/tls), and print its
    /// fingerprint for devices to pin.
    #[arg(long, conflicts_with_all = ["tls_cert", "tls_key"])]
    tls_self_signed: bool,
    /// Serve TLS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Serve plaintext on a non-loopback address (tokens and photos travel readable).
    #[arg(long)]
    insecure_plaintext: bool,
    /// Bytes the free plan allows (default 5 GB, as iCloud's); the paid plans are unchanged.
    #[arg(long, env = "KEEPSAKE_FREE_PLAN_BYTES")]
    free_plan_bytes: Option<u64>,
    /// Clients older than this get CLIENT_TOO_OLD on every call. 0.2.0 is the first
    /// device that keeps two files with the same bytes apart: an older one merges them.
    #[arg(long, env = "KEEPSAKE_MIN_CLIENT_VERSION", default_value = "0.2.0")]
    min_client_version: String,
    /// Largest store capacity in bytes (a configurable disk size); unlimited when absent.
    #[arg(long)]
    capacity_bytes: Option<u64>,
    /// Seconds between maintenance passes (trash expiry, reference releases, store GC).
    #[arg(long, default_value_t = 600)]
    gc_interval_secs: u64,
    /// Hours between scrubs that read and verify every stored byte (corrupt chunks are
    /// dropped and their photos flagged, so devices that have them send them again).
    #[arg(long, default_value_t = 168)]
    scrub_interval_hours: u64,
    /// Seconds an access token lives (devices trade their device token for a new one
    /// before it ends; tests shorten it).
    #[arg(long, default_value_t = 900, value_parser = clap::value_parser!(u64).range(2..=86_400))]
    access_token_ttl_secs: u64,
}

/// `HOST:PORT` to listen on: an address, or a name such as `localhost` (its first address).
fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    text.to_socket_addrs()
        .map_err(|e| format!("{text:?} is not HOST:PORT ({e})"))?
        .next()
        .ok_or_else(|| format!("{text:?} names no address"))
}

/// Prints a line for the person running the server; a closed stdout (a supervisor
/// that stopped reading) must never take the server down.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

const KNOWN_SERVICES: &[&str] = &["store", "library", "policy", "delta"];

/// Starts this program again with glibc's allocator held to two arenas. The server's
/// short-lived blocking threads (an fsync, a pack read, a preview each) otherwise spread
/// their freed 1–16 MiB buffers over up to 16 arenas that keep them: in `cargo xtask bench`
/// a 2 GiB first sync peaked at ~325 MiB resident with the default and ~143 MiB with two
/// arenas, at the same CPU. glibc reads this setting only from the environment at start,
/// hence the exec; it keeps the process id, and where it fails the program runs as it is.
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
    let _failed = again.args(args).env("MALLOC_ARENA_MAX", "2").exec();
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
    match cli.command {
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
        Command::Device(DeviceCommand::Revoke {
            server,
            credentials,
            of,
            name,
        }) => runtime.block_on(ledger_cli::retire(
            server,
            credentials,
            of,
            name,
            ledger_cli::Retire::Revoke,
        )),
        Command::Device(DeviceCommand::Remove {
            server,
            credentials,
            of,
            name,
        }) => runtime.block_on(ledger_cli::retire(
            server,
            credentials,
            of,
            name,
            ledger_cli::Retire::Remove,
        )),
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

fn selected(services: &[String]) -> Result<Vec<&'static str>> {
    if services.iter().any(|s| s == "all") {
        return Ok(KNOWN_SERVICES.to_vec());
    }
    services
        .iter()
        .map(|s| {
            KNOWN_SERVICES
                .iter()
                .find(|k| **k == s.trim())
                .copied()
                .with_context(|| {
                    format!(
                        "unknown service {s:?}; this build has: {}",
                        KNOWN_SERVICES.join(", ")
                    )
                })
        })
        .collect()
}

/// Loads the token file, creating one with a fresh admin token on first run.
/// Where the first administrator's credentials are left for the server's owner.
const INITIAL_CREDENTIALS: &str = "initial-credentials.json";
/// Where the token-signing public keys are published for services run elsewhere.
const TOKEN_KEYS: &str = "token-keys.json";

/// On first start, creates the administrator account "me" with a random password and
/// leaves the credentials (readable by the owner only) in the data directory.
fn bootstrap_admin(cloud: &Cloud, data: &Path) -> Result<()> {
    if cloud.library().account_exists("me")? {
        return Ok(());
    }
    let path = data.join(INITIAL_CREDENTIALS);
    let password = random_hex(&OsEntropy, 16);
    let body = serde_json::json!({ "account": "me", "password": password });
    // Written before the account exists: a crash in between leaves a file and no
    // account, and the next start simply makes both again.
    let _ = std::fs::remove_file(&path);
    write_private(&path, &serde_json::to_vec_pretty(&body)?)?;
    cloud.create_account("me", &password, None, true)?;
    say!(
        "keepsake: created administrator account \"me\"; its password is in {}",
        path.display()
    );
    Ok(())
}

/// Publishes the public keys (only if they changed), for services run in other processes.
fn publish_keys(cloud: &Cloud, data: &Path) -> Result<()> {
    let path = data.join(TOKEN_KEYS);
    let body = serde_json::to_vec_pretty(&cloud.public_keys()?)?;
    if std::fs::read(&path).ok().as_deref() == Some(&body[..]) {
        return Ok(());
    }
    let tmp = data.join(format!("{TOKEN_KEYS}.tmp"));
    let _ = std::fs::remove_file(&tmp);
    write_private(&tmp, &body)?;
    std::fs::rename(&tmp, &path)?;
    Ok(())
}

/// The certificate to serve, if TLS was asked for: given files, or one made for this
/// server on first use and kept in DATA/tls.
fn tls_material(args: &ServeArgs) -> Result<Option<CertifiedKey>> {
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        return Ok(Some(CertifiedKey {
            cert_pem: std::fs::read_to_string(cert)
                .with_context(|| format!("reading {}", cert.display()))?,
            key_pem: std::fs::read_to_string(key)
                .with_context(|| format!("reading {}", key.display()))?,
        }));
    }
    if !args.tls_self_signed {
        return Ok(None);
    }
    let dir = args.data.join("tls");
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    if cert_path.exists() && key_path.exists() {
        return Ok(Some(CertifiedKey {
            cert_pem: std::fs::read_to_string(&cert_path)?,
            key_pem: std::fs::read_to_string(&key_path)?,
        }));
    }
    std::fs::create_dir_all(&dir)?;
    let mut names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    if let Ok(host) = std::fs::read_to_string("/etc/hostname") {
        names.push(host.trim().to_string());
    }
    if !args.listen.ip().is_unspecified() {
        names.push(args.listen.ip().to_string());
    }
    let mut seen = std::collections::HashSet::new();
    names.retain(|n| !n.is_empty() && seen.insert(n.clone()));
    let made = keepsake_transport::tls::self_signed(&names)?;
    let _ = std::fs::remove_file(&key_path);
    write_private(&key_path, made.key_pem.as_bytes())?;
    let _ = std::fs::remove_file(&cert_path);
    write_private(&cert_path, made.cert_pem.as_bytes())?;
    say!("keepsake: made a TLS certificate for {}", names.join(", "));
    Ok(Some(made))
}

/// The plans on offer, with the free plan's size as configured.
fn plans(free_bytes: Option<u64>) -> Vec<keepsake_library::Plan> {
    let mut plans = keepsake_library::default_plans();
    if let (Some(bytes), Some(free)) = (free_bytes, plans.first_mut()) {
        free.limit_bytes = bytes;
    }
    plans
}

fn read_keys(path: &Path) -> Result<PublicKeys> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading token keys {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing token keys {}", path.display()))
}

pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    Ok(())
}

async fn run_serve(mut args: ServeArgs) -> Result<()> {
    let services = selected(&args.services)?;
    backends::settle(&mut args)?;
    migrate::refuse_moved(&args.data, args.database.as_deref())?;
    std::fs::create_dir_all(&args.data)
        .with_context(|| format!("creating data directory {}", args.data.display()))?;
    let _lock = lock_data(&args.data)?;
    let min_version = ClientVersion::parse(&args.min_client_version).with_context(|| {
        format!(
            "--min-client-version {:?} is not major.minor.patch",
            args.min_client_version
        )
    })?;
    let clock = Arc::new(SystemClock);
    let changes = ChangeNotifier::default();
    let mut to_serve = Services {
        changes: changes.clone(),
        ..Services::default()
    };
    let store = if services.contains(&"store") {
        Some(open_store(&args)?)
    } else {
        None
    };
    to_serve.store = store.clone();
    if services.contains(&"delta") {
        if store.is_none() {
            anyhow::bail!(
                "the delta service rebuilds versions next to the store: serve it with `--services store,delta`"
            );
        }
        to_serve.delta = true;
    }
    if services.contains(&"policy") {
        to_serve.policy = Some(keepsake_policy::PolicyConfig::default());
    }
    let verifier = if services.contains(&"library") {
        let store = store.clone().context(
            "the library keeps its content in the store of the same process: serve it with `--services store,library`",
        )?;
        let library = Library::open_on(
            backends::library_db(&args)?,
            clock.clone(),
            Arc::new(OsEntropy),
            LibraryConfig {
                min_client_version: min_version,
                plans: plans(args.free_plan_bytes),
                access_token_ttl_ms: i64::try_from(args.access_token_ttl_secs * 1000)
                    .unwrap_or(i64::MAX),
                ..LibraryConfig::default()
            },
        )?;
        let cloud = Arc::new(Cloud::new(library, store)?);
        bootstrap_admin(&cloud, &args.data)?;
        publish_keys(&cloud, &args.data)?;
        to_serve.cloud = Some(cloud.clone());
        cloud.verifier()
    } else {
        let path = args
            .token_keys
            .clone()
            .context("without the library in this process, pass --token-keys FILE (the library server's token-keys.json) so tokens can be checked")?;
        TokenVerifier::new(&read_keys(&path)?)?
    };
    if let Some(cloud) = &to_serve.cloud {
        derive_worker::spawn(cloud.clone(), changes.clone(), Duration::from_millis(500));
    }
    spawn_maintenance(
        to_serve.cloud.clone(),
        store,
        changes,
        args.data.clone(),
        Duration::from_secs(args.gc_interval_secs.max(1)),
        Duration::from_secs(args.scrub_interval_hours.max(1) * 3600),
    );
    let auth = Authenticator::new(verifier, clock, min_version);
    let tls = tls_material(&args)?;
    if tls.is_none() && !args.listen.ip().is_loopback() && !args.insecure_plaintext {
        anyhow::bail!(
            "{} is reachable from other machines: serve TLS (--tls-self-signed, or --tls-cert/--tls-key), \
             or pass --insecure-plaintext if this network is trusted",
            args.listen
        );
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {}; is another server running there?",
                args.listen
            )
        })?;
    let addr = listener.local_addr()?;
    match &tls {
        Some(cert) => {
            say!(
                "keepsake: serving {} on https://{addr}",
                services.join(", ")
            );
            say!(
                "keepsake: certificate fingerprint {} (pin it on devices)",
                keepsake_transport::tls::fingerprint_of_pem(&cert.cert_pem)?
            );
        }
        None => {
            if !addr.ip().is_loopback() {
                tracing::warn!(%addr, "serving plaintext gRPC on a non-loopback address");
            }
            say!("keepsake: serving {} on http://{addr}", services.join(", "));
        }
    }
    say!("keepsake: data in {}", backends::describe(&args));
    let stopping = Arc::new(tokio::sync::Notify::new());
    let told = stopping.clone();
    let serving = serve(
        listener,
        to_serve,
        auth,
        ServerConfig {
            tls,
            ..ServerConfig::default()
        },
        async move {
            shutdown_signal().await;
            told.notify_one();
        },
    );
    tokio::select! {
        served = serving => served?,
        () = async {
            stopping.notified().await;
            // New calls are refused from the signal on; calls in flight (a commit is one
            // SQLite transaction) get this long. Open watch streams never end by
            // themselves, so waiting for every connection to close would never stop.
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => say!("keepsake: connections still open after {} s were closed", SHUTDOWN_GRACE.as_secs()),
    }
    say!("keepsake: stopped");
    Ok(())
}

/// How long calls in flight may finish after SIGTERM or Ctrl-C.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// Holds the data directory for this process: two servers on one directory would each
/// think they own the store's packs and the library's single writer.
fn lock_data(data: &Path) -> Result<std::fs::File> {
    let path = data.join("server.lock");
    let file = std::fs::File::create(&path)
        .with_context(|| format!("cannot write in the data directory {}", data.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "another keepsake server is using {} (it holds {}); stop it first, or give this one another --data",
            data.display(),
            path.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            tracing::warn!(error = %e, "the data directory cannot be locked; make sure one server uses it");
            Ok(file)
        }
    }
}

fn open_store(args: &ServeArgs) -> Result<Arc<Store>> {
    let dir = args.data.join("store");
    let clock = Arc::new(SystemClock);
    let entropy = Arc::new(OsEntropy);
    if args.database.is_some() || args.blobs.is_some() {
        return backends::open_store(args, clock, entropy);
    }
    let store = match args.capacity_bytes {
        None => Store::open_local(&dir, clock, entropy, StoreConfig::default())?,
        Some(cap) => {
            std::fs::create_dir_all(&dir)?;
            let backend = keepsake_store::LocalFsBackend::open(dir.join("objects"))?;
            let capped = keepsake_store::CappedBackend::new(backend, cap)
                .context("measuring the store's current size")?;
            Store::open(keepsake_store::StoreParts {
                backend: Arc::new(capped),
                index: keepsake_store::IndexAt::File(dir.join("index.sqlite")),
                clock,
                entropy,
                config: StoreConfig::default(),
            })?
        }
    };
    Ok(Arc::new(store))
}

/// The periodic jobs: library maintenance (trash expiry, reservations, reference
/// releases, compaction, key retirement), then the store's GC.
fn spawn_maintenance(
    cloud: Option<Arc<Cloud>>,
    store: Option<Arc<Store>>,
    changes: ChangeNotifier,
    data: PathBuf,
    every: Duration,
    scrub_every: Duration,
) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        let mut last_scrub = tokio::time::Instant::now();
        loop {
            tick.tick().await;
            let (cloud, store, data) = (cloud.clone(), store.clone(), data.clone());
            let scrub = last_scrub.elapsed() >= scrub_every;
            if scrub {
                last_scrub = tokio::time::Instant::now();
            }
            let done = tokio::task::spawn_blocking(move || -> Result<()> {
                if let Some(cloud) = &cloud {
                    cloud.maintain()?;
                    publish_keys(cloud, &data)?;
                    if scrub {
                        let r = cloud.scrub()?;
                        say!(
                            "scrub: {} chunks / {} assets verified, {} corrupt, {} photos flagged damaged",
                            r.store.chunks_verified,
                            r.assets_verified,
                            r.store.corrupt_chunks.len(),
                            r.damaged.len()
                        );
                    }
                } else if let (true, Some(store)) = (scrub, &store) {
                    store.scrub()?;
                }
                if let Some(store) = &store {
                    store.collect_garbage()?;
                }
                Ok(())
            })
            .await;
            changes.notify_all();
            match done {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "maintenance failed; will retry"),
                Err(e) => tracing::error!(error = %e, "maintenance panicked"),
            }
        }
    });
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
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
            vec!["store", "library", "policy", "delta"]
        );
    }

    #[test]
    fn cli_parses() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
