//! `keepsake serve`: any subset of the services on one address, on the embedded SQLite +
//! local files or on PostgreSQL + a bucket; the first administrator, the published token
//! keys, TLS, the data directory's lock, the maintenance loop and a bounded shutdown.

use crate::{backends, derive_worker, migrate};
use anyhow::{Context, Result};
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

/// `keepsake serve`'s options.
#[derive(clap::Args)]
pub(crate) struct ServeArgs {
    /// Which services to run here: `all`, or a comma-separated list (`store`, `library`,
    /// `policy`, `delta`, `web` — the web library, on --web-listen).
    #[arg(long, default_value = "all", value_delimiter = ',')]
    pub(crate) services: Vec<String>,
    /// Where the services keep their data.
    #[arg(long, env = "KEEPSAKE_DATA", default_value = "keepsake-data")]
    pub(crate) data: PathBuf,
    /// The library and the store index in PostgreSQL (`postgres://USER@HOST/DB`; the
    /// password from PGPASSWORD or --config, never here) instead of SQLite under --data.
    #[arg(long, env = "KEEPSAKE_DATABASE")]
    pub(crate) database: Option<String>,
    /// The packs in an S3-compatible bucket (`s3://BUCKET?endpoint=URL&region=R&prefix=P`;
    /// keys from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or ~/.aws/credentials) instead of
    /// files under --data.
    #[arg(long, env = "KEEPSAKE_BLOBS")]
    pub(crate) blobs: Option<String>,
    /// A file of `database = …` and `blobs = …` lines (and `database_password = …`), read
    /// when the flags are not given: the way to keep a password off the command line.
    #[arg(long, env = "KEEPSAKE_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    /// Address to listen on; port 0 picks a free one (the chosen address is printed).
    #[arg(long, env = "KEEPSAKE_LISTEN", default_value = "127.0.0.1:50051", value_parser = parse_listen)]
    pub(crate) listen: SocketAddr,
    /// Where the web library answers browsers (`off`: not at all). Off loopback it needs
    /// --insecure-plaintext: put a TLS-terminating proxy in front of it.
    #[arg(long, env = "KEEPSAKE_WEB_LISTEN", default_value = "127.0.0.1:8080", value_parser = parse_web_listen)]
    pub(crate) web_listen: WebListen,
    /// For `--services web` alone: the cloud's address (`http://HOST:PORT` on this
    /// machine, or `https://…` with --cloud-fingerprint).
    #[arg(long)]
    pub(crate) cloud: Option<String>,
    /// The certificate fingerprint `keepsake serve` printed, for an `https://` --cloud.
    #[arg(long, requires = "cloud")]
    pub(crate) cloud_fingerprint: Option<String>,
    /// Public token keys (the library server's token-keys.json), for a process that
    /// serves the store, delta or policy without the library; read again every 5 s, so a
    /// rotated key is trusted here too.
    #[arg(long)]
    pub(crate) token_keys: Option<PathBuf>,
    /// The store in another process (`http://HOST:PORT`, or `https://…` with
    /// --store-fingerprint), for `--services library,policy,delta` on their own: the
    /// library and the delta service reach it over gRPC with --service-key.
    #[arg(long, env = "KEEPSAKE_STORE")]
    pub(crate) store: Option<String>,
    /// The certificate fingerprint the store's `keepsake serve` printed, for an `https://` --store.
    #[arg(long, requires = "store")]
    pub(crate) store_fingerprint: Option<String>,
    /// The secret a library and its store share (64 hex digits; made here if the file does
    /// not exist): a store accepts the library's calls for an account with it. A store
    /// served without the library keeps one in DATA/service-key unless given this.
    #[arg(long, env = "KEEPSAKE_SERVICE_KEY")]
    pub(crate) service_key: Option<PathBuf>,
    /// Serve TLS with a certificate made for this server (kept in DATA/tls), and print its
    /// fingerprint for devices to pin.
    #[arg(long, conflicts_with_all = ["tls_cert", "tls_key"])]
    pub(crate) tls_self_signed: bool,
    /// Serve TLS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, requires = "tls_key")]
    pub(crate) tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub(crate) tls_key: Option<PathBuf>,
    /// Serve plaintext on a non-loopback address (tokens and photos travel readable).
    #[arg(long)]
    pub(crate) insecure_plaintext: bool,
    /// Bytes the free plan allows (default 5 GB, as iCloud's); the paid plans are unchanged.
    #[arg(long, env = "KEEPSAKE_FREE_PLAN_BYTES")]
    pub(crate) free_plan_bytes: Option<u64>,
    /// Clients older than this get CLIENT_TOO_OLD on every call. 0.2.0 is the first
    /// device that keeps two files with the same bytes apart: an older one merges them.
    #[arg(long, env = "KEEPSAKE_MIN_CLIENT_VERSION", default_value = "0.2.0")]
    pub(crate) min_client_version: String,
    /// Largest store capacity in bytes (a configurable disk size); unlimited when absent.
    #[arg(long)]
    pub(crate) capacity_bytes: Option<u64>,
    /// Seconds between maintenance passes (trash expiry, reference releases, store GC).
    #[arg(long, default_value_t = 600)]
    pub(crate) gc_interval_secs: u64,
    /// Hours between scrubs that read and verify every stored byte (corrupt chunks are
    /// dropped and their photos flagged, so devices that have them send them again).
    #[arg(long, default_value_t = 168)]
    pub(crate) scrub_interval_hours: u64,
    /// Seconds an access token lives (devices trade their device token for a new one
    /// before it ends; tests shorten it).
    #[arg(long, default_value_t = 900, value_parser = clap::value_parser!(u64).range(2..=86_400))]
    pub(crate) access_token_ttl_secs: u64,
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

/// Where the web library listens, if anywhere.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WebListen(pub(crate) Option<SocketAddr>);

/// `HOST:PORT` for the web library, or `off`.
fn parse_web_listen(text: &str) -> Result<WebListen, String> {
    if text == "off" {
        return Ok(WebListen(None));
    }
    parse_listen(text).map(|a| WebListen(Some(a)))
}

/// Prints a line for the person running the server; a closed stdout (a supervisor
/// that stopped reading) must never take the server down.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

const KNOWN_SERVICES: &[&str] = &["store", "library", "policy", "delta", "web"];

pub(crate) fn selected(services: &[String]) -> Result<Vec<&'static str>> {
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
/// Where a store served without the library keeps the key libraries call it with.
const SERVICE_KEY: &str = "service-key";

/// The service key in `path`, made there first if there is none (two processes starting
/// together settle on the one written first).
fn load_service_key(path: &Path) -> Result<keepsake_transport::auth::ServiceKey> {
    use keepsake_transport::auth::ServiceKey;
    if !path.exists() {
        let made = ServiceKey::generate(&OsEntropy);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        match write_private(path, made.to_hex().as_bytes()) {
            Ok(()) => return Ok(made),
            Err(e)
                if e.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::AlreadyExists) => {}
            Err(e) => return Err(e.context(format!("writing the service key {}", path.display()))),
        }
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the service key {}", path.display()))?;
    ServiceKey::from_hex(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// The store at `url`, reached with the service key.
fn remote_store(
    args: &ServeArgs,
    url: &str,
    clock: Arc<SystemClock>,
) -> Result<Arc<keepsake_transport::RemoteStore>> {
    use keepsake_transport::{RemoteStore, RemoteStoreConfig, StoreAddress};
    let key_path = args.service_key.as_ref().context(
        "--store needs --service-key FILE: the key the store was given (or made in its DATA/service-key)",
    )?;
    let address = match (url.strip_prefix("https://"), &args.store_fingerprint) {
        (Some(_), Some(pin)) => StoreAddress::Pinned(url.to_string(), pin.clone()),
        (Some(_), None) => anyhow::bail!(
            "--store {url} is TLS: give the fingerprint its `keepsake serve` printed with --store-fingerprint"
        ),
        (None, _) if !url.starts_with("http://") => {
            anyhow::bail!("--store {url:?} is not http://HOST:PORT or https://HOST:PORT")
        }
        (None, _) => {
            if !keepsake_transport::client::is_loopback(url) && !args.insecure_plaintext {
                anyhow::bail!(
                    "--store {url} is plaintext off this machine: serve the store with TLS and give --store https://… --store-fingerprint, or pass --insecure-plaintext if this network is trusted"
                );
            }
            StoreAddress::Plain(url.to_string())
        }
    };
    Ok(Arc::new(RemoteStore::new(
        address,
        load_service_key(key_path)?,
        clock,
        RemoteStoreConfig::default(),
    )?))
}

/// Reads the published token keys again every few seconds, so a key rotated by the
/// library is trusted here within that time (and a retired one dropped).
fn spawn_token_keys_reload(path: PathBuf, verifier: TokenVerifier) {
    let wake = wake_on_unknown_key(&verifier);
    tokio::spawn(async move {
        let mut last = std::fs::read(&path).ok();
        loop {
            next_key_look(&wake).await;
            let now = std::fs::read(&path).ok();
            if now.is_none() || now == last {
                continue;
            }
            match read_keys(&path).and_then(|keys| Ok(verifier.replace(&keys)?)) {
                Ok(()) => {
                    tracing::info!(path = %path.display(), "token keys taken up again");
                    last = now;
                }
                Err(e) => tracing::warn!(error = %e, "token keys not read; keeping the old ones"),
            }
        }
    });
}

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
    match cloud.create_account("me", &password, None, true) {
        Ok(_) => {}
        // A store in another process not up yet: the account is made; only its usage,
        // which the answer includes, could not be read.
        Err(keepsake_library::LibraryError::Store(e))
            if cloud.library().account_exists("me")? =>
        {
            tracing::warn!(error = %e, "administrator created; the store did not answer yet");
        }
        Err(e) => return Err(e.into()),
    }
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

pub(crate) async fn run_serve(mut args: ServeArgs) -> Result<()> {
    let mut services = selected(&args.services)?;
    if args.web_listen.0.is_none() {
        services.retain(|s| *s != "web");
    }
    if services == ["web"] {
        return run_web_alone(&args).await;
    }
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
    let serves_store = store.is_some();
    let remote = match (&store, &args.store) {
        (Some(_), Some(_)) => anyhow::bail!(
            "--store names a store in another process, but this one serves the store too: drop one"
        ),
        (None, Some(url)) => Some(remote_store(&args, url, clock.clone())?),
        _ => None,
    };
    if services.contains(&"delta") {
        if store.is_none() && remote.is_none() {
            anyhow::bail!(
                "the delta service rebuilds versions in a store: serve it with `--services store,delta`, or give --store URL"
            );
        }
        to_serve.delta = true;
        to_serve.remote_store = remote
            .clone()
            .map(|r| r as Arc<dyn keepsake_transport::DeltaStore>);
    }
    if services.contains(&"policy") {
        to_serve.policy = Some(keepsake_policy::PolicyConfig::default());
    }
    let verifier = if services.contains(&"library") {
        let store: Arc<dyn keepsake_library::ChunkStore> = match (&store, &remote) {
            (Some(local), _) => local.clone(),
            (None, Some(remote)) => remote.clone(),
            (None, None) => anyhow::bail!(
                "the library keeps its content in a store: serve it with `--services store,library`, or give --store URL"
            ),
        };
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
        let verifier = TokenVerifier::new(&read_keys(&path)?)?;
        spawn_token_keys_reload(path, verifier.clone());
        verifier
    };
    // Names this process in the leases that keep background work to one server at a time
    // when several share a database.
    let node = random_hex(&OsEntropy, 8);
    if let Some(cloud) = &to_serve.cloud {
        derive_worker::spawn(
            cloud.clone(),
            changes.clone(),
            Duration::from_millis(500),
            node.clone(),
        );
        if let Some(url) = args.database.clone() {
            spawn_feed_listener(url, changes.clone());
        }
        // Other servers on the database rotate keys, and a store elsewhere reads them from
        // the published file: both need them within seconds, not at the next maintenance.
        if args.database.is_some() || remote.is_some() {
            spawn_key_refresh(cloud.clone(), args.data.clone());
        }
    }
    if let Some(cloud) = to_serve.cloud.clone() {
        spawn_maintenance(
            cloud,
            changes,
            node,
            args.data.clone(),
            Duration::from_secs(args.gc_interval_secs.max(1)),
            Duration::from_secs(args.scrub_interval_hours.max(1) * 3600),
        );
    }
    let mut auth = Authenticator::new(verifier, clock, min_version);
    if serves_store && (args.service_key.is_some() || !services.contains(&"library")) {
        let path = args
            .service_key
            .clone()
            .unwrap_or_else(|| args.data.join(SERVICE_KEY));
        auth = auth.with_service_key(load_service_key(&path)?);
        say!(
            "keepsake: libraries elsewhere reach this store with --service-key {}",
            path.display()
        );
    }
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
    if services.contains(&"web")
        && let Some(web_addr) = args.web_listen.0
    {
        let own = match &tls {
            Some(cert) => CloudAddress::Tls(
                format!("https://localhost:{}", addr.port()),
                keepsake_transport::tls::fingerprint_of_pem(&cert.cert_pem)?,
            ),
            None => CloudAddress::Plain(format!("http://127.0.0.1:{}", addr.port())),
        };
        match bind_web(&args, web_addr).await {
            Ok(web) => {
                let spool = args.data.join("web-uploads");
                // The gRPC listener is bound, so this connection waits for the server below.
                tokio::spawn(async move {
                    if let Err(e) = serve_web(web, own, spool).await {
                        tracing::error!(error = %e, "the web library stopped");
                    }
                });
            }
            // The devices' services matter more than the page: they run without it.
            Err(e) => say!("keepsake: no web library: {e:#}"),
        }
    }
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

/// Where the web library finds the cloud.
enum CloudAddress {
    /// `http://` on this machine.
    Plain(String),
    /// `https://`, with the certificate's fingerprint.
    Tls(String, String),
}

/// Binds the web library's address, refusing plaintext off loopback unless told.
async fn bind_web(args: &ServeArgs, addr: SocketAddr) -> Result<tokio::net::TcpListener> {
    if !addr.ip().is_loopback() && !args.insecure_plaintext {
        anyhow::bail!(
            "the web library on {addr} would be reachable from other machines in plaintext: \
             keep it on loopback (--web-listen 127.0.0.1:PORT) behind a TLS-terminating proxy, \
             or pass --insecure-plaintext if this network is trusted"
        );
    }
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen on {addr} for the web library; pass --web-listen HOST:PORT or --web-listen off")
    })?;
    let bound = listener.local_addr()?;
    say!("keepsake: web library on http://{bound}");
    Ok(listener)
}

async fn serve_web(
    listener: tokio::net::TcpListener,
    cloud: CloudAddress,
    spool: PathBuf,
) -> Result<()> {
    let channel = match &cloud {
        CloudAddress::Plain(url) => {
            keepsake_transport::client::connect_plaintext_anywhere(url).await?
        }
        CloudAddress::Tls(url, fingerprint) => {
            keepsake_transport::client::connect_tls(url, fingerprint).await?
        }
    };
    let secure = !listener.local_addr()?.ip().is_loopback();
    let config = keepsake_web::WebConfig {
        secure_cookies: secure,
        ..keepsake_web::WebConfig::new(channel, spool)
    };
    keepsake_web::serve(
        listener,
        config,
        Arc::new(SystemClock),
        Arc::new(OsEntropy),
        shutdown_signal(),
    )
    .await?;
    Ok(())
}

/// `keepsake serve --services web --cloud URL`: the web library alone, in front of a
/// cloud served elsewhere.
async fn run_web_alone(args: &ServeArgs) -> Result<()> {
    let url = args.cloud.clone().context(
        "the web library alone needs the cloud's address: --cloud http://HOST:PORT (or https://… with --cloud-fingerprint)",
    )?;
    let cloud = match &args.cloud_fingerprint {
        Some(fingerprint) => CloudAddress::Tls(url, fingerprint.clone()),
        None if url.starts_with("https://") => anyhow::bail!(
            "an https:// cloud needs --cloud-fingerprint (the one `keepsake serve` printed)"
        ),
        None => {
            if let Some(problem) = keepsake_transport::client::plaintext_problem(&url).await {
                anyhow::bail!("{problem}");
            }
            CloudAddress::Plain(url)
        }
    };
    std::fs::create_dir_all(&args.data)
        .with_context(|| format!("creating data directory {}", args.data.display()))?;
    let _lock = lock_data(&args.data)?;
    let addr = args.web_listen.0.context("--web-listen is off")?;
    let listener = bind_web(args, addr).await?;
    serve_web(listener, cloud, args.data.join("web-uploads")).await?;
    say!("keepsake: stopped");
    Ok(())
}

/// How long calls in flight may finish after SIGTERM or Ctrl-C.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// Holds the data directory for this process: two servers on one directory would each
/// think they own the store's packs and the library's single writer.
/// Wakes this server's feed watchers when any server on the same database commits (each
/// feed move is announced on `FEED_CHANNEL`): a device watching through one node hears of
/// a photo uploaded through another at once, not at its next poll.
fn spawn_feed_listener(url: String, changes: ChangeNotifier) {
    tokio::spawn(async move {
        let heard =
            keepsake_sql::listen(
                &url,
                keepsake_library::FEED_CHANNEL,
                |account| match account {
                    Some(account) if !account.is_empty() => changes.notify(&account),
                    _ => changes.notify_all(),
                },
            )
            .await;
        if let Err(e) = heard {
            tracing::error!(error = %e, "cannot listen for other servers' commits");
        }
    });
}

/// How soon a signing key another server on the database rotated to is trusted (and used)
/// here: a token it signs may reach this server next.
const KEY_REFRESH: Duration = Duration::from_secs(5);

/// Least time between two looks at the keys: tokens naming keys nobody has must not
/// become a flood of reads.
const KEY_LOOK_GAP: Duration = Duration::from_millis(200);

/// Woken when a token names a key the verifier lacks: another server may just have
/// rotated to it, so its devices' calls here need not fail for the rest of `KEY_REFRESH`.
fn wake_on_unknown_key(verifier: &TokenVerifier) -> Arc<tokio::sync::Notify> {
    let wake = Arc::new(tokio::sync::Notify::new());
    let waker = wake.clone();
    verifier.on_unknown_key(move || waker.notify_one());
    wake
}

/// Waits for the next look at the keys: `KEY_REFRESH`, or sooner when `wake` is woken.
async fn next_key_look(wake: &tokio::sync::Notify) {
    tokio::time::sleep(KEY_LOOK_GAP).await;
    tokio::select! {
        _ = tokio::time::sleep(KEY_REFRESH) => {}
        _ = wake.notified() => {}
    }
}

/// Takes up the database's signing keys every `KEY_REFRESH`, or at once when a token names
/// a key this server lacks.
fn spawn_key_refresh(cloud: Arc<Cloud>, data: PathBuf) {
    let wake = wake_on_unknown_key(&cloud.verifier());
    tokio::spawn(async move {
        loop {
            next_key_look(&wake).await;
            let (cloud, data) = (cloud.clone(), data.clone());
            // Published too, for a store in another process that reads them from the file.
            let refreshed = move || -> Result<()> {
                cloud.refresh_keys()?;
                publish_keys(&cloud, &data)
            };
            match tokio::task::spawn_blocking(refreshed).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "signing keys not refreshed; will retry"),
                Err(e) => tracing::error!(error = %e, "key refresh panicked"),
            }
        }
    });
}

pub(crate) fn lock_data(data: &Path) -> Result<std::fs::File> {
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
/// releases, compaction, key retirement), then the store's GC — by whichever server of
/// those on one database holds the `maintenance` lease (`node` names this one). Every
/// server publishes its keys each round.
fn spawn_maintenance(
    cloud: Arc<Cloud>,
    changes: ChangeNotifier,
    node: String,
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
            let (cloud, data, node) = (cloud.clone(), data.clone(), node.clone());
            let scrub = last_scrub.elapsed() >= scrub_every;
            let lease_ms = i64::try_from(every.as_millis().saturating_mul(3)).unwrap_or(i64::MAX);
            let done = tokio::task::spawn_blocking(move || -> Result<bool> {
                // Keys another server rotated arrive through spawn_key_refresh.
                publish_keys(&cloud, &data)?;
                if !cloud.hold_lease("maintenance", &node, lease_ms)? {
                    return Ok(false);
                }
                cloud.maintain()?;
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
                // Through the library's ChunkStore, wherever the store runs: the lease
                // makes it once a round across the fleet. A store served without the
                // library does neither by itself — a scrub there would drop chunks without
                // their photos being flagged, and collections would run once per store node.
                cloud.collect_garbage()?;
                Ok(true)
            })
            .await;
            changes.notify_all();
            match done {
                Ok(Ok(ran)) => {
                    if ran && scrub {
                        last_scrub = tokio::time::Instant::now();
                    }
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "maintenance failed; will retry"),
                Err(e) => tracing::error!(error = %e, "maintenance panicked"),
            }
        }
    });
}

/// SIGTERM or Ctrl-C.
pub(crate) async fn shutdown_signal() {
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
