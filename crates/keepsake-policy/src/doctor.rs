//! `keepsake doctor`'s checklist: the seven reasons sync stops, each ✔, ✘ or ?,
//! rendered from a snapshot and its decision alone (so it is tested without a device).

use crate::decision::{Decision, Reason, ReasonCode};
use crate::snapshot::{Network, Snapshot};
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
            Self::AccountAndSyncSwitch => &[R::NotSignedIn, R::SyncDisabled, R::PausedByUser],
            Self::ConnectionAndCellular => &[
                R::Offline,
                R::ServerUnreachable,
                R::CellularNotAllowed,
                R::CellularCapReached,
                R::WaitingForWifi,
            ],
            Self::CloudStorage => &[R::QuotaExceeded],
            Self::DeviceStorage => &[R::DeviceStorageLow],
            Self::StalledTransfers => &[R::ClockSkew],
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
