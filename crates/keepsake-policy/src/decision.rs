//! `evaluate(snapshot) -> Decision`: what may run now, and for what may not, why.

use crate::snapshot::{Network, Snapshot, UnixMillis};
use serde::{Deserialize, Serialize};

/// Kinds of work the sync engine does, each allowed or not on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkClass {
    /// Favourites, albums, deletes, the change feed: small, always first.
    Metadata,
    /// Thumbnails and previews.
    Thumbnails,
    /// Uploading photos.
    PhotoUpload,
    /// Uploading videos.
    VideoUpload,
    /// Downloading full-size originals.
    OriginalDownload,
    /// Rescans, scrubs, full-library downloads.
    Maintenance,
}

impl WorkClass {
    /// Every class, in display order.
    pub const ALL: [WorkClass; 6] = [
        Self::Metadata,
        Self::Thumbnails,
        Self::PhotoUpload,
        Self::VideoUpload,
        Self::OriginalDownload,
        Self::Maintenance,
    ];
    /// Everything but metadata: what heavy conditions stop.
    pub const BULK: [WorkClass; 5] = [
        Self::Thumbnails,
        Self::PhotoUpload,
        Self::VideoUpload,
        Self::OriginalDownload,
        Self::Maintenance,
    ];
}

/// A stable, machine-readable reason code (the same codes the API's errors use).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ReasonCode {
    /// No account on this device.
    NotSignedIn,
    /// The device's sync switch is off.
    SyncDisabled,
    /// The user paused sync.
    PausedByUser,
    /// No connection.
    Offline,
    /// Connected, but the server does not answer.
    ServerUnreachable,
    /// On mobile data, which Keepsake may not use.
    CellularNotAllowed,
    /// Today's mobile-data cap is used up.
    CellularCapReached,
    /// On mobile data; this work waits for Wi-Fi.
    WaitingForWifi,
    /// The cloud storage plan is full.
    QuotaExceeded,
    /// The device is low on space.
    DeviceStorageLow,
    /// Low-power mode is on.
    LowPowerMode,
    /// The battery is low and not charging.
    LowBattery,
    /// This work runs only while charging.
    WaitingForCharger,
    /// This client is older than the server accepts.
    ClientTooOld,
    /// The server refused the device's clock.
    ClockSkew,
    /// A transfer stalled and was restarted (informational).
    TransferStalled,
    /// The server's own disk is full (not the plan).
    #[serde(rename = "STORAGE_FULL")]
    ServerStorageFull,
    /// No agent runs for this device: nothing syncs until one does.
    AgentNotRunning,
    /// The library folder is missing (an unmounted card, a moved folder).
    FolderMissing,
    /// Many files vanished at once: their deletes wait for the owner's word.
    DeletesNeedConfirmation,
    /// The cloud refused the last pass for another reason (said in its words).
    CloudRefused,
    /// The device was revoked or removed from its account: it syncs nothing until enrolled
    /// again, and keeps every file it holds.
    DeviceRevoked,
    /// The cloud has not heard from the device for more than a day (said by the cloud, of
    /// a device that cannot say it of itself).
    DeviceSilent,
}

impl ReasonCode {
    /// The UPPER_SNAKE form used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotSignedIn => "NOT_SIGNED_IN",
            Self::SyncDisabled => "SYNC_DISABLED",
            Self::PausedByUser => "PAUSED_BY_USER",
            Self::Offline => "OFFLINE",
            Self::ServerUnreachable => "SERVER_UNREACHABLE",
            Self::CellularNotAllowed => "CELLULAR_NOT_ALLOWED",
            Self::CellularCapReached => "CELLULAR_CAP_REACHED",
            Self::WaitingForWifi => "WAITING_FOR_WIFI",
            Self::QuotaExceeded => "QUOTA_EXCEEDED",
            Self::DeviceStorageLow => "DEVICE_STORAGE_LOW",
            Self::LowPowerMode => "LOW_POWER_MODE",
            Self::LowBattery => "LOW_BATTERY",
            Self::WaitingForCharger => "WAITING_FOR_CHARGER",
            Self::ClientTooOld => "CLIENT_TOO_OLD",
            Self::ClockSkew => "CLOCK_SKEW",
            Self::TransferStalled => "TRANSFER_STALLED",
            Self::ServerStorageFull => "STORAGE_FULL",
            Self::AgentNotRunning => "AGENT_NOT_RUNNING",
            Self::FolderMissing => "FOLDER_MISSING",
            Self::DeletesNeedConfirmation => "DELETES_NEED_CONFIRMATION",
            Self::CloudRefused => "CLOUD_REFUSED",
            Self::DeviceRevoked => "DEVICE_REVOKED",
            Self::DeviceSilent => "DEVICE_SILENT",
        }
    }
}

/// Why something does not run, and what fixes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reason {
    /// The stable code.
    pub code: ReasonCode,
    /// One line saying what is wrong.
    pub message: String,
    /// What the person can do about it.
    pub fix: String,
    /// When it clears by itself, if it has a known time.
    pub clears_at: Option<UnixMillis>,
    /// When it clears by itself, in words, if it does.
    pub clears_when: Option<String>,
}

/// The verdict for one class of work.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassDecision {
    /// The class.
    pub class: WorkClass,
    /// Whether it may run now.
    pub allowed: bool,
    /// Why not (empty when allowed).
    pub reasons: Vec<Reason>,
}

/// What may run now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// One entry per class, in [`WorkClass::ALL`] order.
    pub classes: Vec<ClassDecision>,
    /// Bytes transfers may still use now (today's cellular allowance), `None` for no limit.
    pub bandwidth_budget_bytes: Option<u64>,
    /// Informational reasons that block nothing (a recent stall).
    pub notices: Vec<Reason>,
}

impl Decision {
    /// The verdict for `class`.
    pub fn class(&self, class: WorkClass) -> &ClassDecision {
        self.classes
            .iter()
            .find(|c| c.class == class)
            .expect("every class is decided")
    }

    /// Whether `class` may run now.
    pub fn allows(&self, class: WorkClass) -> bool {
        self.class(class).allowed
    }

    /// Every distinct reason, in the order first met.
    pub fn reasons(&self) -> Vec<&Reason> {
        let mut out: Vec<&Reason> = Vec::new();
        for reason in self.classes.iter().flat_map(|c| &c.reasons) {
            if !out.iter().any(|r| r.code == reason.code) {
                out.push(reason);
            }
        }
        out
    }

    /// The decision as prose, one line per blocked class and per notice.
    pub fn explain(&self) -> String {
        let mut lines = Vec::new();
        for c in &self.classes {
            if c.allowed {
                lines.push(format!("{:?}: runs now", c.class));
            } else {
                let why: Vec<String> = c
                    .reasons
                    .iter()
                    .map(|r| format!("{} ({}) — {}", r.message, r.code.as_str(), r.fix))
                    .collect();
                lines.push(format!("{:?}: waits: {}", c.class, why.join("; ")));
            }
        }
        for n in &self.notices {
            lines.push(format!("note: {} ({})", n.message, n.code.as_str()));
        }
        lines.join("\n")
    }
}

/// Thresholds and defaults; they follow iCloud Photos' behaviour.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PolicyConfig {
    /// Below this charge, not charging, uploads and downloads pause.
    pub low_battery_percent: u8,
    /// Below this much free space, originals are not downloaded.
    pub low_storage_bytes: u64,
    /// The user's UTC offset, for when "today's" cellular cap resets.
    pub utc_offset_minutes: i32,
    /// How long a stalled transfer stays on the status.
    pub stall_notice_ms: i64,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            low_battery_percent: 20,
            low_storage_bytes: 1 << 30,
            utc_offset_minutes: 0,
            stall_notice_ms: 60 * 60 * 1000,
        }
    }
}

const DAY_MS: i64 = 24 * 60 * 60 * 1000;

fn next_local_midnight(now: UnixMillis, utc_offset_minutes: i32) -> UnixMillis {
    let offset = i64::from(utc_offset_minutes) * 60 * 1000;
    let local = now + offset;
    local - local.rem_euclid(DAY_MS) + DAY_MS - offset
}

fn reason(code: ReasonCode, message: String, fix: &str) -> Reason {
    Reason {
        code,
        message,
        fix: fix.to_string(),
        clears_at: None,
        clears_when: None,
    }
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GB", bytes as f64 / 1e9)
}

/// Decides, for every class of work, whether it may run now and if not why.
pub fn evaluate(s: &Snapshot, config: &PolicyConfig) -> Decision {
    use ReasonCode as R;
    use WorkClass as W;
    let mut blocks: Vec<(Reason, &[WorkClass])> = Vec::new();

    if let Some(min) = s.server_min_version
        && s.client_version < min
    {
        blocks.push((
            reason(
                R::ClientTooOld,
                format!("Keepsake {} is too old for this server", s.client_version),
                &format!("Update Keepsake to version {min} or newer."),
            ),
            &W::ALL,
        ));
    }
    match &s.account {
        None => blocks.push((
            reason(
                R::NotSignedIn,
                "This device is not signed in to a Keepsake account".into(),
                "Sign in with `keepsake device enroll` using your account.",
            ),
            &W::ALL,
        )),
        Some(_) if !s.sync_enabled => blocks.push((
            reason(
                R::SyncDisabled,
                "Sync is switched off on this device".into(),
                "Turn on \"Sync this device\" in Keepsake's settings.",
            ),
            &W::ALL,
        )),
        Some(_) => {}
    }
    if let Some(until) = s.paused_until
        && until > s.now
    {
        let mut r = reason(
            R::PausedByUser,
            "Sync is paused".into(),
            "Resume sync in Keepsake's settings, or wait.",
        );
        r.clears_at = Some(until);
        r.clears_when = Some("when the pause ends".into());
        blocks.push((r, &W::BULK));
    }
    match s.network {
        Some(Network::Offline) => {
            let mut r = reason(
                R::Offline,
                "This device has no internet connection".into(),
                "Connect to Wi-Fi or mobile data.",
            );
            r.clears_when = Some("when the device is back online".into());
            blocks.push((r, &W::ALL));
        }
        _ if s.server_reachable == Some(false) => {
            let mut r = reason(
                R::ServerUnreachable,
                "The Keepsake server does not answer".into(),
                "Check the server address, and that the server is running and reachable from this network.",
            );
            r.clears_when = Some("when the server answers again".into());
            blocks.push((r, &W::ALL));
        }
        _ => {}
    }
    let mut bandwidth_budget_bytes = None;
    // A metered Wi-Fi or cable costs like mobile data, so the same rules hold; the words
    // say which it is, so the fix is the one that applies.
    let metered = s.metered && matches!(s.network, Some(Network::Wifi | Network::Wired));
    if s.network == Some(Network::Cellular) || metered {
        let c = &s.cellular;
        // The words of each reason, for the link it is on.
        let (on, free_network, join, allow, use_it) = if metered {
            (
                "On a metered connection",
                "an unmetered network",
                "Join an unmetered network",
                "mobile data (and metered connections)",
                "this one",
            )
        } else {
            (
                "On mobile data",
                "Wi-Fi",
                "Join Wi-Fi",
                "mobile data",
                "mobile data",
            )
        };
        if !c.allowed {
            let mut r = reason(
                R::CellularNotAllowed,
                format!("{on}, which Keepsake may not use"),
                &format!("{join}, or allow {allow} in Keepsake's settings."),
            );
            r.clears_when = Some(format!("when the device joins {free_network}"));
            blocks.push((r, &W::BULK));
        } else if let Some(cap) = c.daily_cap_bytes {
            bandwidth_budget_bytes = Some(cap.saturating_sub(c.used_today_bytes));
            if c.used_today_bytes >= cap {
                let mut r = reason(
                    R::CellularCapReached,
                    format!("Today's mobile-data allowance of {} is used up", gib(cap)),
                    &format!("{join}, or raise the daily cap in Keepsake's settings."),
                );
                r.clears_at = Some(next_local_midnight(s.now, config.utc_offset_minutes));
                r.clears_when = Some(format!("at midnight, or on {free_network}"));
                blocks.push((r, &W::BULK));
            }
        }
        if c.allowed {
            let waits: &[WorkClass] = if c.unlimited_updates {
                &[W::Maintenance]
            } else {
                &[W::VideoUpload, W::OriginalDownload, W::Maintenance]
            };
            let mut r = reason(
                R::WaitingForWifi,
                format!("{on}: videos, originals and full-library work wait for {free_network}"),
                &format!("{join}, or turn on \"Unlimited updates\" to use {use_it} for them."),
            );
            r.clears_when = Some(format!("when the device joins {free_network}"));
            blocks.push((r, waits));
        }
    }
    if let Some(skew) = s.clock_skew_ms {
        blocks.push((
            reason(
                R::ClockSkew,
                format!(
                    "The server refused this device's clock, {}s off",
                    skew / 1000
                ),
                "Set the device's date and time to automatic.",
            ),
            &[W::Metadata, W::PhotoUpload, W::VideoUpload],
        ));
    }
    if let Some(q) = s.quota
        && q.used_bytes.saturating_add(q.pending_bytes) > q.limit_bytes
    {
        blocks.push((
            reason(
                R::QuotaExceeded,
                format!(
                    "Cloud storage is full: {} of {} used, {} waiting to upload",
                    gib(q.used_bytes),
                    gib(q.limit_bytes),
                    gib(q.pending_bytes)
                ),
                "Delete photos you no longer need (and empty Recently Deleted), or upgrade your plan.",
            ),
            &[W::PhotoUpload, W::VideoUpload],
        ));
    }
    if let Some(free) = s.storage.free_bytes
        && free < config.low_storage_bytes
    {
        let fix = if s.storage.optimize {
            "Free up space on this device."
        } else {
            "Turn on Optimize Storage so originals stay in the cloud, or free up space."
        };
        blocks.push((
            reason(
                R::DeviceStorageLow,
                format!("This device has only {} free", gib(free)),
                fix,
            ),
            &[W::OriginalDownload, W::Maintenance],
        ));
    }
    let overridden = s.power_override_until.is_some_and(|until| until > s.now);
    let power_classes: &[WorkClass] = if overridden {
        &[W::Maintenance]
    } else {
        &[
            W::Thumbnails,
            W::PhotoUpload,
            W::VideoUpload,
            W::OriginalDownload,
            W::Maintenance,
        ]
    };
    if s.power.low_power_mode {
        let mut r = reason(
            R::LowPowerMode,
            "Low-power mode is on: uploads and downloads are paused".into(),
            "Turn off low-power mode, plug in, or choose \"Resume for one hour\".",
        );
        r.clears_when = Some("when low-power mode turns off".into());
        blocks.push((r, power_classes));
    }
    if let Some(pct) = s.power.battery_percent
        && pct < config.low_battery_percent
        && !s.power.charging
    {
        let mut r = reason(
            R::LowBattery,
            format!("Battery is at {pct}%: uploads and downloads are paused"),
            "Plug in the device, or choose \"Resume for one hour\".",
        );
        r.clears_when = Some("when the device is charging".into());
        blocks.push((r, power_classes));
    }
    if !s.power.charging {
        let mut r = reason(
            R::WaitingForCharger,
            "Full-library work (rescans, scrubs, full downloads) waits for a charger".into(),
            "Plug in the device.",
        );
        r.clears_when = Some("when the device is charging".into());
        blocks.push((r, &[W::Maintenance]));
    }

    let classes = WorkClass::ALL
        .iter()
        .map(|&class| {
            let reasons: Vec<Reason> = blocks
                .iter()
                .filter(|(_, classes)| classes.contains(&class))
                .map(|(r, _)| r.clone())
                .collect();
            ClassDecision {
                class,
                allowed: reasons.is_empty(),
                reasons,
            }
        })
        .collect();
    let mut notices = Vec::new();
    if let Some(at) = s.last_stall_at
        && s.now - at < config.stall_notice_ms
    {
        let mut r = reason(
            R::TransferStalled,
            "A transfer made no progress and was restarted automatically".into(),
            "Nothing to do: Keepsake resumed it. If it keeps happening, check the connection.",
        );
        r.clears_at = Some(at + config.stall_notice_ms);
        notices.push(r);
    }
    Decision {
        classes,
        bandwidth_budget_bytes,
        notices,
    }
}
