//! The device agent, `keepsake sync DIR` and `keepsake device run DIR`: the loop that runs
//! a pass whenever something changed (the folder, the cloud's feed, the settings, an edit
//! through DeviceControl) or its interval passed, with back-off, token refresh, status and
//! ledger reports. The engine it drives is `keepsake_device::Device`.

use crate::device_cli::{Enrolled, ServerArgs, load, now_ms, plain};
use anyhow::{Context, Result, bail};
use keepsake_device::conditions::{Assumed, CONDITIONS, SETTINGS, load_settings};
use keepsake_device::{AgentError, Device, DeviceConfig, retry_schedule};
use keepsake_store::{Clock, SystemClock};
use keepsake_transport::client::{self, BearerAuth, CallError, pb};
use keepsake_transport::cloud_client::{ClientConfig, CloudClient};
use keepsake_transport::throttle::Limits;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::Channel;

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
            if e.reason() == "DEVICE_REVOKED" {
                return Err(SignInFailure::Refused(anyhow::Error::new(Revoked {
                    message: e.message().to_string(),
                })));
            }
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

/// The device was revoked or removed from its account: the agent stops (exit status
/// [`REVOKED_EXIT`], which the service unit does not restart) and deletes nothing.
#[derive(Debug)]
pub struct Revoked {
    /// The cloud's words.
    pub message: String,
}

impl std::fmt::Display for Revoked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} [DEVICE_REVOKED]. Fix: enrol this device again (`keepsake device enroll`) if it \
             should sync; every file it holds stays where it is",
            self.message.trim_end_matches('.')
        )
    }
}

impl std::error::Error for Revoked {}

/// The exit status of an agent whose device was revoked: not a failure a restart mends.
pub const REVOKED_EXIT: i32 = 3;

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
async fn signed_in_patiently(
    e: &Enrolled,
    once: bool,
    waiting: impl Fn(&anyhow::Error),
) -> Result<(CloudClient, i64)> {
    let (channel, access) = access_patiently(e, once, waiting).await?;
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
async fn access_patiently(
    e: &Enrolled,
    once: bool,
    waiting: impl Fn(&anyhow::Error),
) -> Result<(Channel, pb::AccessToken)> {
    let mut backoff = retry_schedule(&e.device_id);
    loop {
        match fresh_access(e).await {
            Ok(signed_in) => return Ok(signed_in),
            Err(SignInFailure::Refused(err)) => return Err(err),
            Err(SignInFailure::Unreachable(err)) if once => {
                return Err(err.context("the server cannot be reached [SERVER_UNREACHABLE]"));
            }
            Err(SignInFailure::Unreachable(err)) => {
                waiting(&err);
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

/// Shows the pass under way: a progress line at most once a second, and the same in
/// `status.json` for `keepsake status` and DeviceControl.
fn follow_progress(
    mut progress: tokio::sync::watch::Receiver<keepsake_device::Progress>,
    status: Arc<std::sync::Mutex<keepsake_device::AgentStatus>>,
    control: Arc<keepsake_device::FolderControl>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        // A bar at a terminal; off one, the pass's own summary line is the log.
        let bar = crate::progress::Bar::new();
        while progress.changed().await.is_ok() {
            let p = progress.borrow_and_update().clone();
            let shown = {
                let mut s = status.lock().unwrap_or_else(|e| e.into_inner());
                s.progress = (!p.phase.is_empty()).then(|| p.clone());
                s.clone()
            };
            let _ = control.save_status(&shown);
            if !p.phase.is_empty() && p.items_total > 0 {
                bar.show_pass(&p);
            } else {
                bar.clear();
            }
            // The status file is rewritten at most every quarter second, the bar as often.
            tokio::time::sleep(Duration::from_millis(250)).await;
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
                .watch_changes(pb::WatchChangesRequest {
                    cursor,
                    from_now: false,
                })
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
                    n == SETTINGS || n == CONDITIONS || n == keepsake_device::WAKE_FILE
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

/// How `keepsake sync` moves files: too large to hold in memory, and how fast.
#[derive(clap::Args, Debug, Clone, Copy, Default)]
pub struct StreamArgs {
    /// Send at most this many bytes a second ("500k", "2M", "off"), so a first sync
    /// leaves room on a home uplink; overrides the device's settings.
    #[arg(long, value_parser = limit)]
    pub limit_upload: Option<u64>,
    /// Receive at most this many bytes a second; overrides the device's settings.
    #[arg(long, value_parser = limit)]
    pub limit_download: Option<u64>,
    /// Files of this many KiB and more, new or edited, are read, sent and fetched a batch at
    /// a time, never held whole (default 65536: 64 MiB). Lower it on a device short of memory.
    #[arg(long, value_parser = clap::value_parser!(u64).range(64..))]
    pub stream_from_kib: Option<u64>,
    /// KiB of chunks in one such batch: what one batch holds in memory (default 32768).
    #[arg(long, value_parser = clap::value_parser!(u64).range(64..=1_048_576))]
    pub stream_batch_kib: Option<u64>,
}

/// A rate as given on the command line: bytes a second, 0 for "off".
pub(crate) fn limit(text: &str) -> Result<u64, String> {
    Ok(keepsake_transport::throttle::parse_rate(text)?.unwrap_or(0))
}

/// The limits in force: the command line's where given (0: none), else the settings'.
fn limits(flags: &StreamArgs, settings: &keepsake_device::Settings) -> Limits {
    let pick = |flag: Option<u64>, set: Option<u64>| match flag {
        Some(0) => None,
        Some(rate) => Some(rate),
        None => set,
    };
    Limits {
        upload: pick(flags.limit_upload, settings.limit_upload_bytes),
        download: pick(flags.limit_download, settings.limit_download_bytes),
    }
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
    let (wake_tx, wake) = tokio::sync::mpsc::unbounded_channel::<()>();
    let clock = device_clock()?;
    let folder_control = Arc::new(keepsake_device::FolderControl::open(
        &config,
        data.clone(),
        clock.clone(),
        wake_tx.clone(),
    )?);
    let enrolled = Arc::new(enrolled);
    // Until it can sign in, the status says why (an agent started while the cloud or its
    // storage is down once said nothing at all).
    let first_wait = std::sync::atomic::AtomicI64::new(0);
    let waiting = |err: &anyhow::Error| {
        let text = format!("{err:#}");
        let storage = text.contains("[INDEX_IO]") || text.contains("[STORAGE_IO]");
        let now = keepsake_store::SystemClock.now_ms();
        let since = match first_wait.compare_exchange(
            0,
            now,
            std::sync::atomic::Ordering::Relaxed,
            std::sync::atomic::Ordering::Relaxed,
        ) {
            Ok(_) => now,
            Err(first) => first,
        };
        let status = keepsake_device::AgentStatus {
            device_id: enrolled.device_id.clone(),
            reason: Some(
                if storage {
                    "CLOUD_UNAVAILABLE"
                } else {
                    "SERVER_UNREACHABLE"
                }
                .into(),
            ),
            reason_message: Some(text),
            since_ms: since,
            last_pass_ms: now,
            folder: Some(folder.to_string_lossy().into_owned()),
            ..keepsake_device::AgentStatus::default()
        };
        let _ = folder_control.save_status(&status);
    };
    // Held while it waits to sign in, so `keepsake status` says an agent runs (and is
    // blocked) rather than that none does; the device takes it over when it opens.
    std::fs::create_dir_all(data.join("state"))?;
    let waiting_lock = std::fs::File::create(data.join("state/agent.lock"))?;
    if let Err(std::fs::TryLockError::WouldBlock) = waiting_lock.try_lock() {
        anyhow::bail!(
            "another agent is already syncing with {}; stop it first",
            data.display()
        );
    }
    let (client, expires_at) = match signed_in_patiently(&enrolled, once, waiting).await {
        Ok(signed_in) => signed_in,
        Err(e) => {
            if let Some(revoked) = e.downcast_ref::<Revoked>() {
                // Said where `keepsake status` and the doctor look, not only on stderr.
                let now = now_ms();
                let _ = folder_control.save_status(&keepsake_device::AgentStatus {
                    device_id: enrolled.device_id.clone(),
                    reason: Some("DEVICE_REVOKED".into()),
                    reason_message: Some(revoked.message.clone()),
                    since_ms: now,
                    last_pass_ms: now,
                    folder: Some(folder.to_string_lossy().into_owned()),
                    ..keepsake_device::AgentStatus::default()
                });
            }
            return Err(e);
        }
    };
    drop(waiting_lock);
    let _fresh = keep_token_fresh(enrolled.clone(), &client, expires_at);
    let device = Device::open(config, client.clone(), clock)?;
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
    let host = AgentHost {
        streaming,
        enrolled: enrolled.clone(),
        data,
        folder,
        once,
        control: folder_control,
        server: crate::conditions::ServerView {
            reachable: true,
            account: None,
            min_version: None,
        },
    };
    let config = keepsake_device::AgentConfig { interval, once };
    let mut agent = keepsake_device::Agent::new(device, host, config, status.clone());
    tokio::select! {
        ran = agent.run(wake) => ran.map_err(|e| anyhow::anyhow!("{e}"))?,
        () = crate::shutdown_signal() => {
            // Stopping mid-pass is what a crash does, and every step is made for that:
            // an acknowledged chunk is never sent again, a commit is retried under its own
            // request id, a half-written download is a temp file the next pass replaces.
            println!("keepsake sync: stopping (SIGTERM)");
            return Ok(());
        }
    }
    let last = status.lock().unwrap_or_else(|e| e.into_inner()).clone();
    if last.reason.as_deref() == Some("DEVICE_REVOKED") {
        return Err(anyhow::Error::new(Revoked {
            message: last.reason_message.unwrap_or_default(),
        }));
    }
    Ok(())
}

/// The machine the agent runs on, for the loop in `keepsake_device::Agent`.
struct AgentHost {
    /// The command line's transfer options (its bandwidth limits win over the settings).
    streaming: StreamArgs,
    enrolled: Arc<Enrolled>,
    data: PathBuf,
    folder: PathBuf,
    once: bool,
    control: Arc<keepsake_device::FolderControl>,
    server: crate::conditions::ServerView,
}

fn host_error(e: anyhow::Error) -> AgentError {
    AgentError::Host(e.into())
}

impl keepsake_device::Host<CloudClient> for AgentHost {
    async fn conditions(
        &mut self,
        blocked: Option<&str>,
        cloud: &mut CloudClient,
    ) -> Result<Option<keepsake_policy::Snapshot>, AgentError> {
        // While the cloud refuses, read the numbers the doctor shows (the plan and usage,
        // or the version required); once it stops, forget them.
        if matches!(blocked, Some("QUOTA_EXCEEDED" | "CLIENT_TOO_OLD")) {
            let (_, _, accounts) = cloud.raw();
            self.server.ask_account(accounts).await;
        } else {
            self.server.account = None;
            self.server.min_version = None;
        }
        let conditions = crate::conditions::snapshot(
            Some(&self.data),
            &self.folder,
            Some(&self.enrolled.account),
            &self.server,
            &Assumed::default(),
        )
        .map_err(host_error)?;
        let _ = self.control.save_snapshot(&conditions);
        // Read every pass, like the rest of the settings: a new limit applies to the
        // transfers of this pass, on every lane.
        let settings = load_settings(&self.data).map_err(|e| AgentError::Host(e.into()))?;
        cloud.throttle().set(limits(&self.streaming, &settings));
        Ok(Some(conditions))
    }

    fn optimize_budget(&mut self) -> Result<Option<u64>, AgentError> {
        Ok(load_settings(&self.data)
            .map_err(|e| AgentError::Host(e.into()))?
            .optimize_budget_bytes)
    }

    async fn reauthenticate(&mut self, cloud: &mut CloudClient) -> Result<(), AgentError> {
        // Every clone of the client — the lanes, the feed watcher — shares the token.
        let (_, access) = match access_patiently(&self.enrolled, self.once, |_| {}).await {
            Ok(signed_in) => signed_in,
            Err(e) => {
                return Err(match e.downcast::<Revoked>() {
                    Ok(revoked) => AgentError::Device(keepsake_device::DeviceError::Cloud(
                        keepsake_device::CloudError {
                            transient: false,
                            reason: keepsake_device::Reason::DeviceRevoked,
                            message: revoked.message,
                        },
                    )),
                    Err(e) => host_error(e),
                });
            }
        };
        if let Some(cell) = cloud.auth().cell() {
            cell.set(&access.token);
        }
        Ok(())
    }

    fn say(&mut self, line: &str) {
        println!("keepsake sync: {line}");
    }

    fn save_status(&mut self, status: &keepsake_device::AgentStatus) {
        // Best effort: a full disk must not stop sync over a status file.
        let _ = self.control.save_status(status);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_lines_limits_win_over_the_settings_and_zero_lifts_one() {
        let settings = keepsake_device::Settings {
            limit_upload_bytes: Some(500_000),
            limit_download_bytes: Some(900_000),
            ..Default::default()
        };
        let flags = StreamArgs {
            limit_upload: Some(2_000_000),
            limit_download: Some(0),
            ..Default::default()
        };
        assert_eq!(
            limits(&flags, &settings),
            Limits {
                upload: Some(2_000_000),
                download: None,
            }
        );
        assert_eq!(
            limits(&StreamArgs::default(), &settings),
            Limits {
                upload: Some(500_000),
                download: Some(900_000),
            }
        );
        assert_eq!(limit("off"), Ok(0));
        assert_eq!(limit("2M"), Ok(2_000_000));
    }
}
