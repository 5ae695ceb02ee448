//! The device side of the CLI: enrol, sync a folder, list devices, manage accounts.

use anyhow::{Context, Result, bail};
use keepsake_device::{Device, DeviceConfig, SyncReport};
use keepsake_store::{Clock, SystemClock};
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

fn now_ms() -> i64 {
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
    let age = (now_ms() - s.last_pass_ms) / 1000;
    let since = (now_ms() - s.since_ms) / 1000;
    let running = keepsake_device::agent_running(&data.join("state"));
    if running == Some(false) {
        println!(
            "not running: no agent is syncing this device (its last pass ended {age} s ago). \
             Fix: start it with `keepsake sync {} --data {}`",
            s.folder.as_deref().unwrap_or("FOLDER"),
            data.display()
        );
        if let Some(r) = &s.reason {
            println!("when it last ran, it was blocked: {r}");
        }
    } else {
        match &s.reason {
            None => println!("syncing (for {since} s); last pass {age} s ago"),
            Some(r) => {
                println!("not syncing: {r} (for {since} s); last pass {age} s ago");
                match keepsake_policy::doctor::lived_reason(r, s.reason_message.as_deref()) {
                    Some(why) => {
                        println!("  {}", why.message);
                        println!("  Fix: {}", why.fix);
                    }
                    // The policy's own reasons: judged again from the conditions the agent
                    // last saw, for their words and fix.
                    None => {
                        match policy_reason(&data, Path::new(s.folder.as_deref().unwrap_or(".")), r)
                        {
                            Some(why) => {
                                println!("  {}", why.message);
                                println!("  Fix: {}", why.fix);
                            }
                            None => println!("  `keepsake doctor` says what fixes it"),
                        }
                    }
                }
            }
        }
    }
    println!(
        "{} files waiting to upload; {} uploaded and {} downloaded since the agent started",
        s.pending_files, s.uploaded, s.downloaded
    );
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

/// The owner's settings (sync switch, pause, mobile data), re-read before every pass.
const SETTINGS: &str = "settings.json";

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
        &crate::conditions::Assumed::default(),
    )
    .ok()?;
    let decision = keepsake_policy::evaluate(&snapshot, &keepsake_policy::PolicyConfig::default());
    decision
        .reasons()
        .into_iter()
        .find(|r| r.code.as_str() == code)
        .cloned()
}

/// The device's settings (defaults when none were saved).
pub fn load_settings(data: &Path) -> Result<keepsake_device::Settings> {
    let path = data.join(SETTINGS);
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text)
            .with_context(|| format!("{} is not valid settings JSON", path.display())),
        Err(_) => Ok(keepsake_device::Settings::default()),
    }
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

/// Trades the device token for an access token.
async fn fresh_access(e: &Enrolled) -> Result<(Channel, pb::AccessToken), SignInFailure> {
    let server = ServerArgs {
        server: e.server.clone(),
        fingerprint: e.fingerprint.clone(),
    };
    let channel = server.channel().await.map_err(SignInFailure::Unreachable)?;
    let mut anonymous = client::accounts_client(channel.clone(), BearerAuth::anonymous());
    let access = anonymous
        .refresh_token(pb::RefreshTokenRequest {
            device_id: e.device_id.clone(),
            device_token: e.device_token.clone(),
            client_version: env!("CARGO_PKG_VERSION").into(),
        })
        .await;
    let access = match access {
        Ok(reply) => reply.into_inner().access.ok_or_else(|| {
            SignInFailure::Refused(anyhow::anyhow!("the server sent no access token"))
        })?,
        Err(s) => {
            let e = CallError::from(s);
            if !e.is_transient() {
                return Err(SignInFailure::Refused(plain(e)));
            }
            // "transport error, this clears by itself" is wrong for a TLS server reached
            // over http://: say what to change.
            return Err(SignInFailure::Unreachable(
                match client::plaintext_problem(&server.server).await {
                    Some(problem) => anyhow::anyhow!(problem),
                    None => plain(e),
                },
            ));
        }
    };
    Ok((channel, access))
}

/// Replaces the client's access token before it expires (when half its remaining life is
/// gone), so an upload longer than a token's life is never refused half-way. Found by the
/// attack run: a 2.6 GB upload failed "access token expired 136 ms ago".
fn keep_token_fresh(
    enrolled: Arc<Enrolled>,
    client: &CloudClient,
    mut expires_at: i64,
) -> Option<tokio::task::JoinHandle<()>> {
    let cell = client.auth().cell()?;
    Some(tokio::spawn(async move {
        loop {
            let left = u64::try_from(expires_at - now_ms()).unwrap_or(0);
            tokio::time::sleep(Duration::from_millis((left / 2).max(200))).await;
            match fresh_access(&enrolled).await {
                Ok((_, access)) => {
                    cell.set(&access.token);
                    expires_at = access.expires_at_ms;
                }
                // The pass says what is wrong; try again shortly.
                Err(_) => expires_at = now_ms() + 4_000,
            }
        }
    }))
}

/// Why signing in failed.
enum SignInFailure {
    /// The cloud could not be reached or did not answer: try again later.
    Unreachable(anyhow::Error),
    /// The cloud said no (device removed, client too old): trying again changes nothing.
    Refused(anyhow::Error),
}

/// Signs in, waiting out a cloud that cannot be reached. An agent started offline, or
/// whose token expired during a cut, must keep trying: exiting would stop sync silently.
/// Found by `cargo xtask it`'s chaos phase (an agent restarted while its link was cut).
async fn signed_in_patiently(e: &Enrolled, once: bool) -> Result<(CloudClient, i64)> {
    let (channel, access) = access_patiently(e, once).await?;
    Ok((
        CloudClient::new(
            channel,
            BearerAuth::new(&access.token),
            ClientConfig::default(),
        ),
        access.expires_at_ms,
    ))
}

/// An access token, waiting out a cloud that cannot be reached (unless one pass was asked
/// for: then why it cannot run is said at once).
async fn access_patiently(e: &Enrolled, once: bool) -> Result<(Channel, pb::AccessToken)> {
    let mut backoff = retry_schedule(&e.device_id);
    loop {
        match fresh_access(e).await {
            Ok(signed_in) => return Ok(signed_in),
            Err(SignInFailure::Refused(err)) => return Err(err),
            Err(SignInFailure::Unreachable(err)) if once => {
                return Err(err.context("the server cannot be reached [SERVER_UNREACHABLE]"));
            }
            Err(SignInFailure::Unreachable(err)) => {
                let pause = backoff.next().unwrap_or(Duration::from_secs(30));
                println!(
                    "keepsake sync: cannot sign in yet ({err:#}); retrying in {} ms",
                    pause.as_millis()
                );
                tokio::time::sleep(pause).await;
            }
        }
    }
}

fn say_pass(r: &SyncReport, reason_changed: bool) {
    let mut parts = Vec::new();
    for (n, what) in [
        (r.uploaded, "uploaded"),
        (r.linked, "already in the cloud"),
        (r.downloaded, "downloaded"),
        (r.streamed, "streamed in batches"),
        (r.trashed_here, "moved to Recently Deleted"),
        (r.trashed_remotely, "deleted everywhere"),
        (r.restored, "restored"),
        (r.purged, "purged"),
        (r.not_resurrected, "deleted elsewhere, not re-uploaded"),
        (r.edits_sent, "edits sent"),
        (
            r.kept_apart,
            "edited here but deleted elsewhere: kept as new photos",
        ),
        (
            r.edits_dropped,
            "edits dropped (their photo or album is gone)",
        ),
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

/// A clock that is wrong by a fixed amount, as phones' clocks are.
struct SkewedClock(i64);

impl Clock for SkewedClock {
    fn now_ms(&self) -> keepsake_store::UnixMillis {
        SystemClock.now_ms() + self.0
    }
}

/// The agent's clock: the system's, moved by `KEEPSAKE_CLOCK_SKEW_MS` when set, so
/// `cargo xtask it` can show that sync never depends on devices agreeing about the time.
fn device_clock() -> Result<Arc<dyn Clock>> {
    match std::env::var("KEEPSAKE_CLOCK_SKEW_MS") {
        Ok(skew) => Ok(Arc::new(SkewedClock(
            skew.parse()
                .context("KEEPSAKE_CLOCK_SKEW_MS is milliseconds")?,
        ))),
        Err(_) => Ok(Arc::new(SystemClock)),
    }
}

/// `YYYY-MM-DD HH:MM:SS UTC` for Unix milliseconds (civil-from-days, proleptic Gregorian).
fn utc(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

fn megabytes(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

/// Shows the pass under way: a progress line at most once a second, and the same in
/// `status.json` for `keepsake status` and DeviceControl.
fn follow_progress(
    mut progress: tokio::sync::watch::Receiver<keepsake_device::Progress>,
    status: Arc<std::sync::Mutex<keepsake_device::AgentStatus>>,
    control: Arc<keepsake_device::FolderControl>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while progress.changed().await.is_ok() {
            let p = progress.borrow_and_update().clone();
            let shown = {
                let mut s = status.lock().unwrap_or_else(|e| e.into_inner());
                s.progress = (!p.phase.is_empty()).then(|| p.clone());
                s.clone()
            };
            let _ = control.save_status(&shown);
            if !p.phase.is_empty() && p.items_total > 0 {
                println!(
                    "keepsake sync: {} {}/{} files, {} of {}{}",
                    p.phase,
                    p.items_done,
                    p.items_total,
                    megabytes(p.bytes_done),
                    megabytes(p.bytes_total),
                    p.current.map(|c| format!(" ({c})")).unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    })
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
        let mut lost = false;
        loop {
            let (_, library, _) = cloud.raw();
            if let Ok(stream) = library
                .watch_changes(pb::WatchChangesRequest { cursor })
                .await
            {
                // The cloud answers again after a cut: a pass waiting out its backoff can
                // go now instead of minutes later. Found by `cargo xtask it`'s chaos phase.
                if std::mem::take(&mut lost) && wake.send(()).is_err() {
                    return;
                }
                let mut stream = stream.into_inner();
                while let Ok(Some(page)) = stream.message().await {
                    cursor = page.cursor;
                    if !page.changes.is_empty() && wake.send(()).is_err() {
                        return;
                    }
                }
            }
            lost = true;
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    })
}

/// Wakes the loop when the owner changes the device's settings or conditions, or another
/// process (`keepsake device favorite …`) queued an edit.
fn watch_settings(
    data: &Path,
    wake: tokio::sync::mpsc::UnboundedSender<()>,
) -> Result<notify::RecommendedWatcher> {
    use notify::Watcher;
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Reading the settings each pass is not a change to them (see `is_a_change`).
        if let Ok(e) = event
            && is_a_change(&e.kind)
            && e.paths.iter().any(|p| {
                p.file_name().is_some_and(|n| {
                    n == SETTINGS
                        || n == crate::conditions::CONDITIONS
                        || n == keepsake_device::WAKE_FILE
                })
            })
        {
            let _ = wake.send(());
        }
    })?;
    if let Err(e) = watcher.watch(data, notify::RecursiveMode::NonRecursive) {
        tracing::warn!(error = %e, "cannot watch the settings; they apply at the next pass");
    }
    Ok(watcher)
}

/// Whether a file-system event changed something (rather than only reading it). A file
/// closed after writing counts: that is when a camera's photo is complete.
fn is_a_change(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode, EventKind};
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

/// A retry schedule: exponential, capped at a minute, spread out (jitter) so devices cut
/// off together do not return together; seeded by the device id, so a run can be replayed.
fn retry_schedule(device_id: &str) -> backon::ExponentialBackoff {
    use backon::BackoffBuilder;
    let digest = blake3::hash(device_id.as_bytes());
    let mut seed = [0u8; 8];
    seed.copy_from_slice(&digest.as_bytes()[..8]);
    backon::ExponentialBuilder::new()
        .with_min_delay(Duration::from_millis(500))
        .with_max_delay(Duration::from_secs(30))
        .with_jitter()
        .with_jitter_seed(u64::from_le_bytes(seed))
        .without_max_times()
        .build()
}

/// How `keepsake sync` moves files too large to hold in memory.
#[derive(clap::Args, Debug, Clone, Copy, Default)]
pub struct StreamArgs {
    /// Files of this many KiB and more, new or edited, are read, sent and fetched a batch at
    /// a time, never held whole (default 65536: 64 MiB). Lower it on a device short of memory.
    #[arg(long, value_parser = clap::value_parser!(u64).range(64..))]
    pub stream_from_kib: Option<u64>,
    /// KiB of chunks in one such batch: what one batch holds in memory (default 32768).
    #[arg(long, value_parser = clap::value_parser!(u64).range(64..=1_048_576))]
    pub stream_batch_kib: Option<u64>,
}

impl StreamArgs {
    /// Overrides the device's defaults with what was given.
    fn apply(self, config: &mut DeviceConfig) {
        if let Some(kib) = self.stream_from_kib {
            config.streamed_from = kib << 10;
        }
        if let Some(kib) = self.stream_batch_kib {
            // The parser bounds it to 1 GiB, which fits any usize this builds for.
            config.stream_batch_bytes = usize::try_from(kib << 10).unwrap_or(usize::MAX);
        }
    }
}

/// `keepsake sync DIR`: keeps the folder in sync until interrupted (or once). A pass runs
/// when a file in the folder changes, when the cloud's feed moves, when the settings
/// change, when an edit is made through DeviceControl, and every `interval`.
pub async fn sync(
    folder: PathBuf,
    data: PathBuf,
    once: bool,
    interval: Duration,
    control: Option<std::net::SocketAddr>,
    streaming: StreamArgs,
) -> Result<()> {
    use notify::Watcher;
    let enrolled = load(&data)?;
    let mut config = DeviceConfig::new(
        folder.clone(),
        data.join("state"),
        enrolled.device_id.clone(),
    );
    config.stable_ms = 400;
    streaming.apply(&mut config);
    let (wake_tx, mut wake) = tokio::sync::mpsc::unbounded_channel::<()>();
    let clock = device_clock()?;
    let folder_control = Arc::new(keepsake_device::FolderControl::open(
        &config,
        data.clone(),
        clock.clone(),
        wake_tx.clone(),
    )?);
    let enrolled = Arc::new(enrolled);
    let (client, expires_at) = signed_in_patiently(&enrolled, once).await?;
    let _fresh = keep_token_fresh(enrolled.clone(), &client, expires_at);
    let mut device = Device::open(config, client.clone(), clock)?;
    println!(
        "keepsake sync: {} <-> {} as device {}",
        folder.display(),
        enrolled.server,
        enrolled.device_id
    );
    let fs_wake = wake_tx.clone();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // The agent's own temp and marker files are not the user's changes, and neither
        // are reads: the scan's own directory listings (inotify's open and close-nowrite)
        // would otherwise wake the next pass, and that one the next — an idle agent
        // spinning ~9 passes a second.
        if let Ok(e) = event
            && is_a_change(&e.kind)
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
    let _settings_watcher = watch_settings(&data, wake_tx.clone())?;
    let _feed = watch_feed(client, device.cursor()?, wake_tx.clone());
    if let Some(addr) = control {
        if !addr.ip().is_loopback() {
            bail!(
                "--control is for this machine's own apps: it must listen on loopback, not {addr}"
            );
        }
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} for device control"))?;
        folder_control
            .control_secret()
            .context("making the device control secret")?;
        println!(
            "keepsake sync: device control on http://{} (callers present the secret in {})",
            listener.local_addr()?,
            data.join(keepsake_device::CONTROL_SECRET).display()
        );
        tokio::spawn(keepsake_transport::serve_device(
            listener,
            folder_control.clone(),
            std::future::pending(),
        ));
    }
    let status = Arc::new(std::sync::Mutex::new(keepsake_device::AgentStatus {
        device_id: enrolled.device_id.clone(),
        since_ms: now_ms(),
        folder: std::path::absolute(&folder)
            .ok()
            .map(|f| f.to_string_lossy().into_owned()),
        ..keepsake_device::AgentStatus::default()
    }));
    let _progress = follow_progress(device.progress(), status.clone(), folder_control.clone());
    let mut backoff = retry_schedule(&enrolled.device_id);
    let mut server = crate::conditions::ServerView {
        reachable: true,
        account: None,
        min_version: None,
    };
    // Nothing reported yet: the first pass always tells the ledger.
    let mut last_state = "\u{0}".to_string();
    loop {
        let conditions = crate::conditions::snapshot(
            Some(&data),
            &folder,
            Some(&enrolled.account),
            &server,
            &crate::conditions::Assumed::default(),
        )?;
        let _ = folder_control.save_snapshot(&conditions);
        device.set_conditions(Some(conditions));
        let optimize = load_settings(&data)?.optimize_budget_bytes;
        device.set_optimize(optimize);
        let mut pause = interval;
        match device.sync_once().await {
            Ok(report) if report.blocked.as_deref() == Some("UNAUTHENTICATED") => {
                // Access tokens are short-lived (the refresher may have been cut off from the
                // server meanwhile): trade the device token for a new one now. Every clone
                // of the client — the lanes, the feed watcher — shares the token.
                let (_, access) = access_patiently(&enrolled, once).await?;
                if let Some(cell) = device.cloud_mut().auth().cell() {
                    cell.set(&access.token);
                }
                continue;
            }
            Ok(report) => {
                backoff = retry_schedule(&enrolled.device_id);
                // While the cloud refuses, read the numbers the doctor shows (the plan and
                // usage, or the version required); once it stops, forget them.
                if matches!(
                    report.blocked.as_deref(),
                    Some("QUOTA_EXCEEDED" | "CLIENT_TOO_OLD")
                ) {
                    let (_, _, accounts) = device.cloud_mut().raw();
                    server.ask_account(accounts).await;
                } else {
                    server.account = None;
                    server.min_version = None;
                }
                let shown = {
                    let mut s = status.lock().unwrap_or_else(|e| e.into_inner());
                    if report.blocked != s.reason {
                        s.since_ms = now_ms();
                        s.reason = report.blocked.clone();
                    }
                    s.reason_message = report.blocked_message.clone();
                    s.passes += 1;
                    s.last_pass_ms = now_ms();
                    s.uploaded += report.uploaded as u64;
                    s.downloaded += report.downloaded as u64;
                    s.pending_files = device.pending_files().unwrap_or(0);
                    s.pending_edits = device.pending_edits().unwrap_or(0);
                    s.progress = None;
                    if let Ok((originals, previews, cloud_only)) = device.storage() {
                        (s.originals_bytes, s.previews_bytes, s.cloud_only) =
                            (originals, previews, cloud_only);
                    }
                    s.optimize_budget = optimize;
                    if s.skipped != report.skipped {
                        for f in &report.skipped {
                            println!(
                                "keepsake sync: left out {}: {} [{}]",
                                f.path, f.message, f.reason
                            );
                        }
                        s.skipped = report.skipped.clone();
                    }
                    s.damaged_waiting = device.damaged_waiting();
                    s.ignored = report.ignored.clone();
                    for (here, library) in &report.numbered {
                        println!(
                            "keepsake sync: {here} is kept in the library as {library} (another photo had its name)"
                        );
                    }
                    s.numbered.extend(report.numbered.iter().cloned());
                    let over = s.numbered.len().saturating_sub(100);
                    s.numbered.drain(..over);
                    s.clone()
                };
                // Best effort: a full disk must not stop sync over a status file.
                let _ = folder_control.save_status(&shown);
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
                pause = backoff.next().unwrap_or(Duration::from_secs(60));
                if e.reason == keepsake_device::Reason::StorageFull {
                    // The server's disk: re-sending at once only fills its logs (an agent
                    // once re-sent ~720 MB in 10 s). Its hint is 15 s and the backoff stops
                    // at 30 s, so sync resumes within a minute of the disk having room.
                    pause = pause.max(Duration::from_secs(15));
                }
                let shown = {
                    let mut s = status.lock().unwrap_or_else(|e| e.into_inner());
                    // The policy cannot see a server that stopped answering or whose disk
                    // is full: say it here.
                    let reason = match e.reason {
                        keepsake_device::Reason::Unavailable => Some("SERVER_UNREACHABLE".into()),
                        keepsake_device::Reason::StorageFull => Some("STORAGE_FULL".into()),
                        _ => None,
                    };
                    if reason.is_some() {
                        if s.reason != reason {
                            s.since_ms = now_ms();
                            s.reason = reason;
                        }
                        s.reason_message = Some(e.message.clone());
                    }
                    s.passes += 1;
                    s.last_error = Some(format!("{} [{}]", e.message, e.reason));
                    if e.reason == keepsake_device::Reason::TransferStalled {
                        s.last_stall_ms = Some(now_ms());
                    }
                    s.last_pass_ms = now_ms();
                    s.pending_edits = device.pending_edits().unwrap_or(0);
                    s.progress = None;
                    s.clone()
                };
                // Best effort: a full disk must not stop sync over a status file.
                let _ = folder_control.save_status(&shown);
                println!(
                    "keepsake sync: {} [{}]; retrying in {} ms",
                    e.message,
                    e.reason,
                    pause.as_millis()
                );
            }
            Err(e) if once => bail!("{e}"),
            Err(e) => {
                // A local failure (the device's disk full, a folder briefly unreadable) is
                // said and retried; an agent that exited would stop sync without a word.
                pause = backoff.next().unwrap_or(Duration::from_secs(30));
                let shown = {
                    let mut s = status.lock().unwrap_or_else(|e| e.into_inner());
                    s.last_error = Some(e.to_string());
                    s.passes += 1;
                    s.last_pass_ms = now_ms();
                    s.clone()
                };
                let _ = folder_control.save_status(&shown);
                println!("keepsake sync: {e}; retrying in {} ms", pause.as_millis());
            }
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
    // Wrong passwords given for the account: the owner is the one to see them.
    if let Ok(reply) = accounts.get_account(pb::GetAccountRequest {}).await
        && let Some(account) = reply.into_inner().account
        && account.failed_sign_ins > 0
    {
        println!(
            "{} failed sign-ins since the password was set; the last {} s ago from {}",
            account.failed_sign_ins,
            (now_ms() - account.last_failed_sign_in_ms).max(0) / 1000,
            account.last_failed_sign_in_from
        );
    }
    Ok(())
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
    #[test]
    fn utc_spells_known_instants() {
        assert_eq!(super::utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(super::utc(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(super::utc(1_767_225_599_000), "2025-12-31 23:59:59 UTC");
    }
}
