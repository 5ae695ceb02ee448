//! The agent: the loop that keeps a device in sync for as long as it runs. Each pass reads
//! the conditions, runs [`Device::sync_once`], updates the status people read, tells the
//! cloud's device ledger when the reason changes, and says how long to wait: the interval,
//! a short look again for a file still being written, or a jittered back-off after a
//! transient failure (at least 15 s when the server's disk is full).
//!
//! What is the host's — probing the machine, reading settings, replacing an access token,
//! printing — comes through [`Host`], so the binary and the simulation run this same loop.

use crate::control::AgentStatus;
use crate::{Cloud, Device, DeviceError, LedgerReport, Reason, SyncReport};
use keepsake_policy::{Network, Snapshot};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the agent needs from the machine it runs on.
pub trait Host<C: Cloud>: Send {
    /// The conditions now (network, power, storage, the plan). `blocked` is the last pass's
    /// reason, so a host can ask the cloud for the numbers behind it (the plan and usage
    /// while QUOTA_EXCEEDED) and forget them once it clears. `None`: no policy applies.
    fn conditions(
        &mut self,
        blocked: Option<&str>,
        cloud: &mut C,
    ) -> impl Future<Output = Result<Option<Snapshot>, AgentError>> + Send;
    /// The owner's Optimize Storage budget, read afresh each pass.
    fn optimize_budget(&mut self) -> Result<Option<u64>, AgentError>;
    /// Gives `cloud` a new access token after the cloud said UNAUTHENTICATED.
    fn reauthenticate(
        &mut self,
        cloud: &mut C,
    ) -> impl Future<Output = Result<(), AgentError>> + Send;
    /// Tells the person (a terminal line, a log line, a trace).
    fn say(&mut self, line: &str);
    /// Keeps the status where `keepsake status` and DeviceControl read it; best effort.
    fn save_status(&mut self, status: &AgentStatus);
}

/// Why the agent stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The engine failed and the agent was asked for one pass, or cannot go on.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// The host could not do its part (read the settings, sign in again).
    #[error("{0}")]
    Host(Box<dyn std::error::Error + Send + Sync>),
}

/// What comes after a pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Wait this long (or until woken), then pass again.
    Wait(Duration),
    /// The one pass asked for is done.
    Done,
}

/// A pass, as the agent saw it.
#[derive(Debug)]
pub struct Passed {
    /// What comes next.
    pub next: Next,
    /// What the pass did, when it ran to its end (blocked or not).
    pub report: Option<SyncReport>,
    /// Why it did not, when it failed and will be retried.
    pub failure: Option<String>,
}

impl Passed {
    fn ran(next: Next, report: SyncReport) -> Self {
        Self {
            next,
            report: Some(report),
            failure: None,
        }
    }

    fn failed(next: Next, why: String) -> Self {
        Self {
            next,
            report: None,
            failure: Some(why),
        }
    }
}

/// How the agent paces itself.
#[derive(Debug, Clone, Copy)]
pub struct AgentConfig {
    /// The longest wait between passes when nothing wakes the agent.
    pub interval: Duration,
    /// One pass, then stop: failures end the run instead of being retried.
    pub once: bool,
}

/// The device's sync loop, around its engine.
pub struct Agent<C: Cloud, H: Host<C>> {
    device: Device<C>,
    host: H,
    config: AgentConfig,
    status: Arc<Mutex<AgentStatus>>,
    backoff: backon::ExponentialBackoff,
    /// The last finished pass's reason; `None` before the first pass.
    last_reason: Option<Option<String>>,
    /// What the ledger last heard, and when.
    reported: Option<(i64, LedgerReport)>,
    /// Passes a one-pass run made waiting for files still being written.
    settling: u32,
}

/// How many times a one-pass run looks again for files still being written (250 ms
/// apart): a file copied in just before `sync --once` is sent by that run, and one written
/// without end does not hold it for more than ~10 s.
const ONCE_SETTLE_PASSES: u32 = 40;

/// A retry schedule: exponential up to 30 s, spread out (jitter) so devices cut off
/// together do not return together; seeded by the device id, so a run can be replayed.
pub fn retry_schedule(device_id: &str) -> backon::ExponentialBackoff {
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

impl<C: Cloud, H: Host<C>> Agent<C, H> {
    /// An agent for `device`; `status` is shared with whoever shows progress.
    pub fn new(
        device: Device<C>,
        host: H,
        config: AgentConfig,
        status: Arc<Mutex<AgentStatus>>,
    ) -> Self {
        let backoff = retry_schedule(&device.config().device_id);
        Self {
            device,
            host,
            config,
            status,
            backoff,
            last_reason: None,
            reported: None,
            settling: 0,
        }
    }

    /// The engine, for what a person does between passes (edits, opening a photo).
    pub fn device_mut(&mut self) -> &mut Device<C> {
        &mut self.device
    }

    /// The engine.
    pub fn device(&self) -> &Device<C> {
        &self.device
    }

    /// Passes until stopped: after each, waits its pause or until `wake` fires (a burst of
    /// wake-ups — a camera writing several files — settles into one pass).
    pub async fn run(
        &mut self,
        mut wake: tokio::sync::mpsc::UnboundedReceiver<()>,
    ) -> Result<(), AgentError> {
        loop {
            let pause = match self.pass().await?.next {
                Next::Done => return Ok(()),
                Next::Wait(pause) => pause,
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                Some(()) = wake.recv() => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    while wake.try_recv().is_ok() {}
                }
            }
        }
    }

    /// One pass and everything around it; says what it did and what comes next.
    pub async fn pass(&mut self) -> Result<Passed, AgentError> {
        let conditions = self
            .host
            .conditions(
                self.last_reason.as_ref().and_then(Option::as_deref),
                self.device.cloud_mut(),
            )
            .await?;
        self.device.set_conditions(conditions);
        let optimize = self.host.optimize_budget()?;
        self.device.set_optimize(optimize);
        match self.device.sync_once().await {
            Ok(mut report) if report.blocked.as_deref() == Some("UNAUTHENTICATED") => {
                // Access tokens are short-lived (a refresher may have been cut off from the
                // server meanwhile): trade the device token for a new one, and go again.
                match self.host.reauthenticate(self.device.cloud_mut()).await {
                    Ok(()) => Ok(Passed::ran(Next::Wait(Duration::ZERO), report)),
                    Err(AgentError::Device(DeviceError::Cloud(e)))
                        if e.reason == Reason::DeviceRevoked =>
                    {
                        report.blocked = Some(e.reason.to_string());
                        report.blocked_message = Some(e.message);
                        self.after_pass(&report, optimize).await;
                        Ok(Passed::ran(Next::Done, report))
                    }
                    Err(e) => Err(e),
                }
            }
            Ok(report) => {
                self.backoff = retry_schedule(&self.device.config().device_id);
                self.after_pass(&report, optimize).await;
                if report.blocked.as_deref() == Some(Reason::DeviceRevoked.as_str()) {
                    // Nothing this device does changes that: the agent stops, every file
                    // stays where it is, and the status says why and what fixes it.
                    return Ok(Passed::ran(Next::Done, report));
                }
                if self.config.once {
                    // A file still being written was left for later; one pass asked for
                    // means what is in the folder now, so look again once it settles.
                    if report.unstable > 0 && self.settling < ONCE_SETTLE_PASSES {
                        self.settling += 1;
                        return Ok(Passed::ran(Next::Wait(Duration::from_millis(250)), report));
                    }
                    return Ok(Passed::ran(Next::Done, report));
                }
                // A file still being written: look again once it has had time to settle.
                let pause = if report.unstable > 0 {
                    self.config.interval.min(Duration::from_millis(250))
                } else {
                    self.config.interval
                };
                Ok(Passed::ran(Next::Wait(pause), report))
            }
            Err(DeviceError::Cloud(e)) if e.transient && !self.config.once => {
                let mut pause = self.backoff.next().unwrap_or(Duration::from_secs(60));
                if e.reason == Reason::StorageFull {
                    // The server's disk: re-sending at once only fills its logs (an agent
                    // once re-sent ~720 MB in 10 s). Its hint is 15 s and the back-off stops
                    // at 30 s, so sync resumes within a minute of the disk having room.
                    pause = pause.max(Duration::from_secs(15));
                }
                // The policy cannot see a server that stopped answering or whose disk is
                // full: the status says it.
                let reason = match &e.reason {
                    Reason::Unavailable => Some("SERVER_UNREACHABLE"),
                    Reason::StorageFull => Some("STORAGE_FULL"),
                    // The server's database or bucket down: it answered, its storage did not.
                    Reason::Other(code) if code == "STORAGE_IO" || code == "INDEX_IO" => {
                        Some("CLOUD_UNAVAILABLE")
                    }
                    _ => None,
                };
                let now = self.device.now_ms();
                let pending_edits = self.device.pending_edits().unwrap_or(0);
                let shown = self.with_status(|s| {
                    s.pending_edits = pending_edits;
                    if let Some(reason) = reason {
                        if s.reason.as_deref() != Some(reason) {
                            s.since_ms = now;
                            s.reason = Some(reason.to_string());
                        }
                        s.reason_message = Some(e.message.clone());
                    }
                    s.passes += 1;
                    s.last_error = Some(format!("{} [{}]", e.message, e.reason));
                    if e.reason == Reason::TransferStalled {
                        s.last_stall_ms = Some(now);
                    }
                    s.last_pass_ms = now;
                    s.progress = None;
                });
                self.host.save_status(&shown);
                let why = format!("{} [{}]", e.message, e.reason);
                self.host
                    .say(&format!("{why}; retrying in {} ms", pause.as_millis()));
                Ok(Passed::failed(Next::Wait(pause), why))
            }
            Err(e) if self.config.once => Err(e.into()),
            Err(e) => {
                // A local failure (the device's disk full, a folder briefly unreadable) is
                // said and retried; an agent that exited would stop sync without a word.
                let pause = self.backoff.next().unwrap_or(Duration::from_secs(30));
                let now = self.device.now_ms();
                let shown = self.with_status(|s| {
                    s.last_error = Some(e.to_string());
                    s.passes += 1;
                    s.last_pass_ms = now;
                });
                self.host.save_status(&shown);
                self.host
                    .say(&format!("{e}; retrying in {} ms", pause.as_millis()));
                Ok(Passed::failed(Next::Wait(pause), e.to_string()))
            }
        }
    }

    /// The status, the person and the ledger after a pass that ran.
    async fn after_pass(&mut self, report: &SyncReport, optimize: Option<u64>) {
        let now = self.device.now_ms();
        let d = &self.device;
        let (pending_files, pending_bytes, pending_edits) = (
            d.pending_files().unwrap_or(0),
            d.pending_bytes().unwrap_or(0),
            d.pending_edits().unwrap_or(0),
        );
        let storage = d.storage().ok();
        let damaged_waiting = d.damaged_waiting();
        // The words for the reason: the pass's own (the policy's or the cloud's), else the
        // checklist's for a refusal, so status, the doctor and the ledger say one thing.
        let lived = report.blocked.as_deref().and_then(|r| {
            keepsake_policy::doctor::lived_reason(r, report.blocked_message.as_deref())
        });
        let fix = report
            .blocked_fix
            .clone()
            .or_else(|| lived.as_ref().map(|r| r.fix.clone()));
        let mut lines = Vec::new();
        let shown = self.with_status(|s| {
            if report.blocked != s.reason {
                s.since_ms = now;
                s.reason = report.blocked.clone();
            }
            s.reason_message = report.blocked_message.clone();
            s.reason_fix = fix.clone();
            s.passes += 1;
            s.last_pass_ms = now;
            s.uploaded += report.uploaded as u64;
            s.downloaded += report.downloaded as u64;
            s.pending_files = pending_files;
            s.pending_bytes = pending_bytes;
            s.pending_edits = pending_edits;
            s.pending_downloads = report.pending_downloads;
            s.pending_download_bytes = report.pending_download_bytes;
            s.progress = None;
            if let Some((originals, previews, cloud_only)) = storage {
                (s.originals_bytes, s.previews_bytes, s.cloud_only) =
                    (originals, previews, cloud_only);
            }
            s.optimize_budget = optimize;
            if s.skipped != report.skipped {
                for f in &report.skipped {
                    lines.push(format!("left out {}: {} [{}]", f.path, f.message, f.reason));
                }
                s.skipped = report.skipped.clone();
            }
            s.damaged_waiting = damaged_waiting;
            s.ignored = report.ignored.clone();
            for (here, library) in &report.numbered {
                lines.push(format!(
                    "{here} is kept in the library as {library} (another photo had its name)"
                ));
            }
            s.numbered.extend(report.numbered.iter().cloned());
            let over = s.numbered.len().saturating_sub(100);
            s.numbered.drain(..over);
        });
        // Best effort: a full disk must not stop sync over a status file.
        self.host.save_status(&shown);
        for line in lines {
            self.host.say(&line);
        }
        let changed = self.last_reason.as_ref() != Some(&report.blocked);
        if let Some(line) = pass_summary(report, changed) {
            self.host.say(&line);
        }
        if let (true, Some(message), Some(fix)) = (changed, &shown.reason_message, &fix) {
            self.host.say(&format!("{message}. Fix: {fix}"));
        }
        self.last_reason = Some(report.blocked.clone());
        if report.blocked.as_deref() == Some(Reason::DeviceRevoked.as_str()) {
            // The ledger no longer takes this device's word.
            return;
        }
        let ledger = ledger_report(&shown, self.device.conditions(), report.skipped.len());
        let due = match &self.reported {
            None => true,
            Some((at, last)) => !same_news(last, &ledger) || now - at >= LEDGER_EVERY_MS,
        };
        // Best effort: a report that fails is sent again after the next pass.
        if due && self.device.cloud_mut().report_state(&ledger).await.is_ok() {
            self.reported = Some((now, ledger));
        }
    }

    fn with_status(&self, change: impl FnOnce(&mut AgentStatus)) -> AgentStatus {
        let mut s = self.status.lock().unwrap_or_else(|e| e.into_inner());
        change(&mut s);
        s.clone()
    }
}

/// The longest the ledger goes without hearing from a running agent (it hears at once when
/// the state, the reason, what waits or the network changes); well inside the day after
/// which the cloud calls a device silent.
pub const LEDGER_EVERY_MS: i64 = 5 * 60_000;

/// Reasons that pass by themselves or at the owner's word (a charger, Wi-Fi, the end of a
/// pause): the device is "paused", not "blocked".
const PAUSING: [&str; 12] = [
    "PAUSED_BY_USER",
    "SYNC_DISABLED",
    "OFFLINE",
    "SERVER_UNREACHABLE",
    "CLOUD_UNAVAILABLE",
    "STORAGE_FULL",
    "CELLULAR_NOT_ALLOWED",
    "CELLULAR_CAP_REACHED",
    "WAITING_FOR_WIFI",
    "LOW_POWER_MODE",
    "LOW_BATTERY",
    "WAITING_FOR_CHARGER",
];

/// A device's state in one word: "paused" for a reason that passes by itself or at the
/// owner's word, "blocked" for one that needs someone, else "syncing" while files wait and
/// "up to date" when none do.
pub fn state_of(reason: Option<&str>, waiting: u64) -> &'static str {
    match reason {
        Some(r) if PAUSING.contains(&r) => "paused",
        Some(_) => "blocked",
        None if waiting > 0 => "syncing",
        None => "up to date",
    }
}

/// The ledger's view of a device from its status and the conditions it last saw.
pub fn ledger_report(
    status: &AgentStatus,
    conditions: Option<&Snapshot>,
    left_out: usize,
) -> LedgerReport {
    let state = state_of(
        status.reason.as_deref(),
        status.pending_files + status.pending_downloads,
    );
    let network = match conditions.map(|c| (c.network, c.metered)) {
        None | Some((None, _)) => "unknown".to_string(),
        Some((Some(n), metered)) => {
            let name = match n {
                Network::Offline => "offline",
                Network::Cellular => "cellular",
                Network::Wifi => "wifi",
                Network::Wired => "wired",
            };
            if metered && matches!(n, Network::Wifi | Network::Wired) {
                format!("{name}-metered")
            } else {
                name.to_string()
            }
        }
    };
    LedgerReport {
        state: state.into(),
        reason: status.reason.clone(),
        reason_message: status.reason_message.clone(),
        reason_fix: status.reason_fix.clone(),
        pending_uploads: status.pending_files,
        pending_upload_bytes: status.pending_bytes,
        pending_downloads: status.pending_downloads,
        pending_download_bytes: status.pending_download_bytes,
        done_items: status.uploaded + status.downloaded,
        failed_items: left_out as u64,
        network,
        battery_percent: conditions.and_then(|c| c.power.battery_percent),
        charging: conditions.is_some_and(|c| c.power.charging),
        free_bytes: conditions.and_then(|c| c.storage.free_bytes),
    }
}

/// Whether the ledger already knows what `now` says: battery and free space drift every
/// pass and are sent with the next report that is due anyway.
fn same_news(last: &LedgerReport, now: &LedgerReport) -> bool {
    (
        &last.state,
        &last.reason,
        last.pending_uploads,
        last.pending_downloads,
        &last.network,
        last.charging,
        last.failed_items,
    ) == (
        &now.state,
        &now.reason,
        now.pending_uploads,
        now.pending_downloads,
        &now.network,
        now.charging,
        now.failed_items,
    )
}

/// One line saying what a pass did, and the reason when it changed; `None` when a pass
/// did nothing worth a line.
fn pass_summary(r: &SyncReport, reason_changed: bool) -> Option<String> {
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
    (!parts.is_empty()).then(|| parts.join(", "))
}
