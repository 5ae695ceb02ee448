//! The `keepsake` binary: runs Keepsake's services.

mod doctor;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use keepsake_store::{OsEntropy, Store, StoreConfig, SystemClock, random_hex};
use keepsake_transport::auth::{TokenEntry, TokenFile, TokenTable};
use keepsake_transport::server::{ServerConfig, Services, serve};
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
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Which services to run here: `all`, or a comma-separated list (`store`, `policy`, `delta`).
    #[arg(long, default_value = "all", value_delimiter = ',')]
    services: Vec<String>,
    /// Where the services keep their data.
    #[arg(long, env = "KEEPSAKE_DATA", default_value = "keepsake-data")]
    data: PathBuf,
    /// Address to listen on; port 0 picks a free one (the chosen address is printed).
    #[arg(long, env = "KEEPSAKE_LISTEN", default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// JSON file of access tokens (token -> account); created with one admin token if absent.
    #[arg(long)]
    tokens: Option<PathBuf>,
    /// Largest store capacity in bytes (a configurable disk size); unlimited when absent.
    #[arg(long)]
    capacity_bytes: Option<u64>,
    /// Seconds between garbage collections.
    #[arg(long, default_value_t = 600)]
    gc_interval_secs: u64,
}

/// Prints a line for the person running the server; a closed stdout (a supervisor
/// that stopped reading) must never take the server down.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

const KNOWN_SERVICES: &[&str] = &["store", "policy", "delta"];

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new()?;
    match cli.command {
        Command::Serve(args) => runtime.block_on(run_serve(args)),
        Command::Doctor(args) => {
            if runtime.block_on(doctor::run(args))? {
                std::process::exit(1);
            }
            Ok(())
        }
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
fn load_or_create_tokens(path: &Path) -> Result<TokenTable> {
    if !path.exists() {
        let token = random_hex(&OsEntropy, 24);
        let file = TokenFile {
            tokens: vec![TokenEntry {
                token: token.clone(),
                account: "me".into(),
                admin: true,
            }],
        };
        write_private(path, &serde_json::to_vec_pretty(&file)?)?;
        say!(
            "created {} with an admin token for account \"me\":",
            path.display()
        );
        say!("  {token}");
    }
    TokenTable::load(path).with_context(|| format!("reading token file {}", path.display()))
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
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

async fn run_serve(args: ServeArgs) -> Result<()> {
    let services = selected(&args.services)?;
    std::fs::create_dir_all(&args.data)
        .with_context(|| format!("creating data directory {}", args.data.display()))?;
    let tokens_path = args
        .tokens
        .clone()
        .unwrap_or_else(|| args.data.join("tokens.json"));
    let tokens = load_or_create_tokens(&tokens_path)?;
    let mut to_serve = Services::default();
    if services.contains(&"store") {
        let store = open_store(&args)?;
        spawn_gc(
            store.clone(),
            Duration::from_secs(args.gc_interval_secs.max(1)),
        );
        to_serve.store = Some(store);
    }
    if services.contains(&"delta") {
        if to_serve.store.is_none() {
            anyhow::bail!(
                "the delta service rebuilds versions next to the store: serve it with `--services store,delta`"
            );
        }
        to_serve.delta = true;
    }
    if services.contains(&"policy") {
        to_serve.policy = Some(keepsake_policy::PolicyConfig::default());
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
    if !addr.ip().is_loopback() {
        tracing::warn!(%addr, "serving plaintext gRPC on a non-loopback address");
    }
    say!("keepsake: serving {} on http://{addr}", services.join(", "));
    say!("keepsake: data in {}", args.data.display());
    serve(
        listener,
        to_serve,
        tokens,
        ServerConfig::default(),
        shutdown_signal(),
    )
    .await?;
    say!("keepsake: stopped");
    Ok(())
}

fn open_store(args: &ServeArgs) -> Result<Arc<Store>> {
    let dir = args.data.join("store");
    let clock = Arc::new(SystemClock);
    let entropy = Arc::new(OsEntropy);
    let store = match args.capacity_bytes {
        None => Store::open_local(&dir, clock, entropy, StoreConfig::default())?,
        Some(cap) => {
            std::fs::create_dir_all(&dir)?;
            let backend = keepsake_store::LocalFsBackend::open(dir.join("objects"))?;
            let capped = keepsake_store::CappedBackend::new(backend, cap)
                .context("measuring the store's current size")?;
            Store::open(keepsake_store::StoreParts {
                backend: Arc::new(capped),
                index_path: Some(dir.join("index.sqlite")),
                clock,
                entropy,
                config: StoreConfig::default(),
            })?
        }
    };
    Ok(Arc::new(store))
}

fn spawn_gc(store: Arc<Store>, every: Duration) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tick.tick().await;
            let store = store.clone();
            match tokio::task::spawn_blocking(move || store.collect_garbage()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "garbage collection failed; will retry"),
                Err(e) => tracing::error!(error = %e, "garbage collection panicked"),
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
            vec!["store", "policy", "delta"]
        );
    }

    #[test]
    fn cli_parses() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
