//! `keepsake doctor`'s checklist: the seven reasons sync stops, each ✔, ✘ or ?,
//! rendered from a snapshot and its decision alone (so it is tested without a device).

use crate::decision::{Decision, Reason, ReasonCode};
use crate::snapshot::{Network, Snapshot, UnixMillis};
use serde::Serialize;

/// The seven causes, in the order the checklist shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// Wrong account, or sync switched off.
    AccountAndSyncSwitch,
    /// No connection, or mobile data not allowed.
    ConnectionAndCellular,
    /// Cloud storage full.
    CloudStorage,
    /// Device storage full.
    DeviceStorage,
    /// A glitch "fixed by restarting": stalled transfers, a refused clock.
    StalledTransfers,
    /// Outdated software.
    SoftwareVersion,
    /// Not plugged in, low battery.
    Power,
}

impl Cause {
    /// Every cause in checklist order.
    pub const ALL: [Cause; 7] = [
        Self::AccountAndSyncSwitch,
        Self::ConnectionAndCellular,
        Self::CloudStorage,
        Self::DeviceStorage,
        Self::StalledTransfers,
        Self::SoftwareVersion,
        Self::Power,
    ];

    /// The checklist line's title.
    pub fn title(self) -> &'static str {
        match self {
            Self::AccountAndSyncSwitch => "Account and sync switch",
            Self::ConnectionAndCellular => "Connection and mobile data",
            Self::CloudStorage => "Cloud storage",
            Self::DeviceStorage => "Device storage",
            Self::StalledTransfers => "Stalled transfers",
            Self::SoftwareVersion => "Software version",
            Self::Power => "Power",
        }
    }

    fn codes(self) -> &'static [ReasonCode] {
        use ReasonCode as R;
        match self {
            Self::AccountAndSyncSwitch => &[
                R::NotSignedIn,
                R::SyncDisabled,
                R::PausedByUser,
                R::DeletesNeedConfirmation,
                R::DeviceRevoked,
            ],
            Self::ConnectionAndCellular => &[
                R::Offline,
                R::ServerUnreachable,
                R::CellularNotAllowed,
                R::CellularCapReached,
                R::WaitingForWifi,
            ],
            Self::CloudStorage => &[R::QuotaExceeded, R::ServerStorageFull],
            Self::DeviceStorage => &[R::DeviceStorageLow, R::FolderMissing],
            Self::StalledTransfers => &[
                R::ClockSkew,
                R::AgentNotRunning,
                R::DeviceSilent,
                R::CloudRefused,
            ],
            Self::SoftwareVersion => &[R::ClientTooOld],
            Self::Power => &[R::LowPowerMode, R::LowBattery],
        }
    }
}

/// ✔, ✘ or ?.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckState {
    /// Not in the way.
    Ok,
    /// Stopping some or all sync.
    Blocked,
    /// Could not be read; said so rather than guessed.
    Unknown,
}

/// One line of the checklist.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// Which cause.
    pub cause: Cause,
    /// ✔ / ✘ / ?.
    pub state: CheckState,
    /// What was found, in words.
    pub summary: String,
    /// The reasons behind a ✘, each with its fix.
    pub reasons: Vec<Reason>,
}

/// The whole diagnosis.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// True when nothing is blocked.
    pub syncing: bool,
    /// The seven checks, in order.
    pub checks: Vec<Check>,
    /// Things worth knowing that block nothing.
    pub notices: Vec<Reason>,
}

/// What the gatherer could not read (beyond what the snapshot's `Option`s say).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Unknowns {
    /// The device's sync switch was not available (no device agent).
    pub sync_switch: bool,
    /// The device's transfer history was not available (no device agent).
    pub transfer_history: bool,
}

/// What the device's agent lives through, read from its status file and its lock: the
/// doctor reports it beside the conditions and never contradicts it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentView {
    /// Whether an agent runs for the device now (`None`: it cannot be told).
    pub running: Option<bool>,
    /// The reason code its last pass ended with, if any.
    pub reason: Option<String>,
    /// The cloud's words for it (with its numbers).
    pub message: Option<String>,
    /// When its last pass ended.
    pub last_pass: Option<UnixMillis>,
}

/// A reason an agent reported, as the checklist says it: what is wrong and what fixes
/// it. `None` for the policy's own codes: the doctor judges those from the same
/// conditions afresh.
pub fn lived_reason(code: &str, message: Option<&str>) -> Option<Reason> {
    use ReasonCode as R;
    let said = |fallback: &str| {
        message
            .filter(|m| !m.is_empty())
            .unwrap_or(fallback)
            .to_string()
    };
    let (code, message, fix, clears_when) = match code {
        "QUOTA_EXCEEDED" => {
            let message = said("The cloud refused uploads: the plan is full");
            let fix = if message.contains("for now") {
                "Wait for the uploads other devices have in progress (their holds end within 10 minutes), or choose a bigger plan."
            } else {
                "Delete photos you no longer need (and empty Recently Deleted), or upgrade your plan."
            };
            (R::QuotaExceeded, message, fix, None)
        }
        "STORAGE_FULL" => (
            R::ServerStorageFull,
            said("The server's disk is full"),
            "Ask the server's administrator to free space or give it a bigger disk; Keepsake tries again by itself.",
            Some("when the server has room again"),
        ),
        "CLIENT_TOO_OLD" => (
            R::ClientTooOld,
            said("This Keepsake is too old for the server"),
            "Update Keepsake.",
            None,
        ),
        "UNAUTHENTICATED" | "PERMISSION_DENIED" => (
            R::NotSignedIn,
            said("The server no longer accepts this device"),
            "Enrol the device again with `keepsake device enroll` (it may have been removed from the account).",
            None,
        ),
        "DEVICE_REVOKED" => (
            R::DeviceRevoked,
            said("This device was removed from its Keepsake account"),
            "Enrol this device again (`keepsake device enroll`) if it should sync; nothing it holds was deleted.",
            None,
        ),
        "DEVICE_SILENT" => (
            R::DeviceSilent,
            said("The cloud has not heard from this device for more than a day"),
            "Start Keepsake on it (`keepsake service status` says whether its agent runs) and connect it to the internet; if it is lost, revoke it with `keepsake device revoke NAME`.",
            Some("at its next contact"),
        ),
        // The server answers, but its database or bucket does not: nothing on this device
        // fixes it, and it passes by itself once they are back.
        "CLOUD_UNAVAILABLE" => (
            R::ServerUnreachable,
            said("The cloud's storage (its database or bucket) is not answering"),
            "Nothing to do on this device: it retries by itself. The server's administrator brings the database or the bucket back.",
            Some("when the cloud's storage answers again"),
        ),
        "SERVER_UNREACHABLE" | "UNAVAILABLE" => (
            R::ServerUnreachable,
            said("The Keepsake server does not answer"),
            "Check the server address, and that the server is running and reachable from this network.",
            Some("when the server answers again"),
        ),
        "FOLDER_MISSING" => (
            R::FolderMissing,
            said("The library folder is missing (unmounted or moved)"),
            "Reconnect or mount the folder; Keepsake deletes nothing it cannot see.",
            None,
        ),
        "DELETES_NEED_CONFIRMATION" => (
            R::DeletesNeedConfirmation,
            said("Many files vanished from the folder at once; their deletes wait"),
            "If they were meant to go, run `keepsake device confirm-deletes`; else put them back.",
            None,
        ),
        other if ALL_POLICY_CODES.iter().any(|c| c.as_str() == other) => return None,
        other => (
            R::CloudRefused,
            format!(
                "The last pass was refused: {other} — {}",
                said("no details")
            ),
            "Look at `keepsake status`; if it stays after the next pass, restart the agent.",
            None,
        ),
    };
    Some(Reason {
        code,
        message,
        fix: fix.to_string(),
        clears_at: None,
        clears_when: clears_when.map(str::to_string),
    })
}

/// The codes `evaluate` decides from conditions.
const ALL_POLICY_CODES: [ReasonCode; 16] = [
    ReasonCode::NotSignedIn,
    ReasonCode::SyncDisabled,
    ReasonCode::PausedByUser,
    ReasonCode::Offline,
    ReasonCode::ServerUnreachable,
    ReasonCode::CellularNotAllowed,
    ReasonCode::CellularCapReached,
    ReasonCode::WaitingForWifi,
    ReasonCode::QuotaExceeded,
    ReasonCode::DeviceStorageLow,
    ReasonCode::LowPowerMode,
    ReasonCode::LowBattery,
    ReasonCode::WaitingForCharger,
    ReasonCode::ClientTooOld,
    ReasonCode::ClockSkew,
    ReasonCode::TransferStalled,
];

/// The checklist with what the agent lives through added: its last refusal (under the
/// cause it belongs to, unless that check already says it) and whether it runs at all.
pub fn diagnose_with_agent(
    s: &Snapshot,
    decision: &Decision,
    unknown: &Unknowns,
    agent: &AgentView,
) -> Report {
    let mut report = diagnose(s, decision, unknown);
    let mut lived = Vec::new();
    // A revoked device's agent stopped because of it: "start it" would not help.
    if agent.running == Some(false) && agent.reason.as_deref() != Some("DEVICE_REVOKED") {
        let when = agent.last_pass.map_or_else(
            || "it has not run".to_string(),
            |at| format!("its last pass ended {} s ago", (s.now - at).max(0) / 1000),
        );
        lived.push(Reason {
            code: ReasonCode::AgentNotRunning,
            message: format!("No Keepsake agent is running for this device ({when})"),
            fix: "Start it: `keepsake sync FOLDER --data DIR` (or `keepsake device run`).".into(),
            clears_at: None,
            clears_when: None,
        });
    }
    if let Some(code) = &agent.reason
        && let Some(r) = lived_reason(code, agent.message.as_deref())
    {
        lived.push(r);
    }
    for r in lived {
        let Some(check) = report
            .checks
            .iter_mut()
            .find(|c| c.cause.codes().contains(&r.code))
        else {
            continue;
        };
        if check.reasons.iter().any(|have| have.code == r.code) {
            continue;
        }
        if check.state != CheckState::Blocked {
            check.state = CheckState::Blocked;
            check.summary = r.message.clone();
        }
        check.reasons.push(r);
    }
    report.syncing = report.checks.iter().all(|c| c.state != CheckState::Blocked);
    report
}

fn gb(bytes: u64) -> String {
    format!("{:.1} GB", bytes as f64 / 1e9)
}

/// Builds the checklist from a snapshot and the decision made on it.
pub fn diagnose(s: &Snapshot, decision: &Decision, unknown: &Unknowns) -> Report {
    let reasons = decision.reasons();
    let checks: Vec<Check> = Cause::ALL
        .iter()
        .map(|&cause| {
            let found: Vec<Reason> = reasons
                .iter()
                .filter(|r| cause.codes().contains(&r.code))
                .map(|r| (*r).clone())
                .collect();
            let (state, summary) = if let Some(first) = found.first() {
                (CheckState::Blocked, first.message.clone())
            } else {
                healthy_summary(cause, s, decision, unknown)
            };
            Check {
                cause,
                state,
                summary,
                reasons: found,
            }
        })
        .collect();
    Report {
        syncing: checks.iter().all(|c| c.state != CheckState::Blocked),
        checks,
        notices: decision.notices.clone(),
    }
}

fn healthy_summary(
    cause: Cause,
    s: &Snapshot,
    decision: &Decision,
    unknown: &Unknowns,
) -> (CheckState, String) {
    use CheckState::{Ok, Unknown};
    match cause {
        Cause::AccountAndSyncSwitch => {
            let account = s.account.as_deref().unwrap_or("?");
            if unknown.sync_switch {
                (
                    Unknown,
                    format!("signed in as {account}; the sync switch is unknown (no device agent)"),
                )
            } else {
                (Ok, format!("signed in as {account}; sync is on"))
            }
        }
        Cause::ConnectionAndCellular => {
            let server = match s.server_reachable {
                Some(true) => "the server answers",
                Some(false) => "the server does not answer",
                None => "the server was not checked",
            };
            match s.network {
                None => (Unknown, format!("the connection type is unknown; {server}")),
                Some(n) => {
                    let kind = match n {
                        Network::Wifi if s.metered => "on a metered Wi-Fi (allowed)",
                        Network::Wired if s.metered => "on a metered wired connection (allowed)",
                        Network::Wifi => "on Wi-Fi",
                        Network::Wired => "on a wired connection",
                        Network::Cellular => "on mobile data (allowed)",
                        Network::Offline => "offline",
                    };
                    let state = if s.server_reachable.is_none() {
                        Unknown
                    } else {
                        Ok
                    };
                    (state, format!("{kind}; {server}"))
                }
            }
        }
        Cause::CloudStorage => match s.quota {
            None => (
                Unknown,
                "the server has not reported the plan's quota".into(),
            ),
            Some(q) => (
                Ok,
                format!("{} of {} used", gb(q.used_bytes), gb(q.limit_bytes)),
            ),
        },
        Cause::DeviceStorage => match s.storage.free_bytes {
            None => (Unknown, "free space could not be read".into()),
            Some(free) => (
                Ok,
                format!(
                    "{} free; Optimize Storage is {}",
                    gb(free),
                    if s.storage.optimize { "on" } else { "off" }
                ),
            ),
        },
        Cause::StalledTransfers => {
            if unknown.transfer_history {
                (
                    Unknown,
                    "transfer history is unknown (no device agent)".into(),
                )
            } else if decision
                .notices
                .iter()
                .any(|n| n.code == ReasonCode::TransferStalled)
            {
                (
                    Ok,
                    "a transfer stalled recently and was restarted automatically".into(),
                )
            } else {
                (Ok, "no stalled transfers".into())
            }
        }
        Cause::SoftwareVersion => match s.server_min_version {
            None => (
                Unknown,
                format!(
                    "Keepsake {}; the server's minimum is unknown",
                    s.client_version
                ),
            ),
            Some(min) => (
                Ok,
                format!(
                    "Keepsake {}; the server accepts {min} or newer",
                    s.client_version
                ),
            ),
        },
        Cause::Power => {
            let charging = if s.power.charging {
                "charging"
            } else {
                "not charging"
            };
            match s.power.battery_percent {
                None => (Unknown, format!("battery level unknown; {charging}")),
                Some(pct) => (Ok, format!("battery {pct}%, {charging}")),
            }
        }
    }
}

/// The checklist as text for a terminal.
pub fn render_text(report: &Report) -> String {
    let mut out = String::new();
    out.push_str(if report.syncing {
        "Keepsake doctor: nothing is blocking sync\n"
    } else {
        "Keepsake doctor: sync is blocked\n"
    });
    for check in &report.checks {
        let mark = match check.state {
            CheckState::Ok => "✔",
            CheckState::Blocked => "✘",
            CheckState::Unknown => "?",
        };
        out.push_str(&format!(
            "{mark} {}: {}\n",
            check.cause.title(),
            check.summary
        ));
        for r in &check.reasons {
            out.push_str(&format!("    [{}] {}\n", r.code.as_str(), r.message));
            out.push_str(&format!("    fix: {}\n", r.fix));
            if let Some(when) = &r.clears_when {
                out.push_str(&format!("    clears by itself {when}\n"));
            }
        }
    }
    for n in &report.notices {
        out.push_str(&format!("note: [{}] {}\n", n.code.as_str(), n.message));
    }
    out
}

/// The checklist as JSON for programs.
pub fn render_json(report: &Report) -> String {
    serde_json::to_string_pretty(report).expect("a report always serialises")
}
