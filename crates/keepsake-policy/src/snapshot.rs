//! What the policy looks at: one snapshot of a device's conditions and settings.

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch.
pub type UnixMillis = i64;

/// How the device reaches the internet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Network {
    /// No connection.
    Offline,
    /// A cellular (mobile data) connection.
    Cellular,
    /// Wi-Fi.
    Wifi,
    /// A cable.
    Wired,
}

/// The user's cellular settings and today's use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cellular {
    /// Whether Keepsake may use mobile data at all.
    pub allowed: bool,
    /// "Unlimited updates": videos and originals may use mobile data too.
    pub unlimited_updates: bool,
    /// A daily cap in bytes, if the user set one.
    pub daily_cap_bytes: Option<u64>,
    /// Bytes used on mobile data today.
    pub used_today_bytes: u64,
}

/// Battery and charging state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Power {
    /// Charge in percent, `None` when the device has no battery or it cannot be read.
    pub battery_percent: Option<u8>,
    /// Plugged in.
    pub charging: bool,
    /// The OS's low-power mode.
    pub low_power_mode: bool,
}

/// The device's own storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceStorage {
    /// Free bytes where the library lives, `None` if unknown.
    pub free_bytes: Option<u64>,
    /// Total bytes there, `None` if unknown.
    pub total_bytes: Option<u64>,
    /// Optimize Storage is on (originals may live only in the cloud).
    pub optimize: bool,
}

/// The account's cloud storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quota {
    /// Bytes the account uses.
    pub used_bytes: u64,
    /// The plan's limit.
    pub limit_bytes: u64,
    /// Bytes waiting on this device to be uploaded.
    pub pending_bytes: u64,
}

/// A version number `major.minor.patch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Version(pub u32, pub u32, pub u32);

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

impl std::str::FromStr for Version {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.trim().split('.').map(|p| {
            p.parse::<u32>()
                .map_err(|_| format!("{s:?} is not a version like 1.2.3"))
        });
        let mut next = || parts.next().unwrap_or(Ok(0));
        Ok(Self(next()?, next()?, next()?))
    }
}

/// Everything the policy needs to decide, read at one moment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The moment the snapshot describes.
    pub now: UnixMillis,
    /// The signed-in account, if any.
    pub account: Option<String>,
    /// The per-device "sync this device" switch.
    pub sync_enabled: bool,
    /// The user paused sync until this moment.
    pub paused_until: Option<UnixMillis>,
    /// The user chose "resume for one hour" despite low power, until this moment.
    pub power_override_until: Option<UnixMillis>,
    /// The connection, `None` if unknown.
    pub network: Option<Network>,
    /// Mobile data settings.
    pub cellular: Cellular,
    /// Battery and charging.
    pub power: Power,
    /// The device's storage.
    pub storage: DeviceStorage,
    /// The cloud quota, `None` if the server has not said.
    pub quota: Option<Quota>,
    /// This client's version.
    pub client_version: Version,
    /// The oldest client the server accepts, `None` if unknown.
    pub server_min_version: Option<Version>,
    /// Whether the server answered, `None` if not checked.
    pub server_reachable: Option<bool>,
    /// The server refused this device's clock, off by this many milliseconds.
    pub clock_skew_ms: Option<i64>,
    /// When a transfer last stalled and was restarted by the watchdog.
    pub last_stall_at: Option<UnixMillis>,
    /// The Wi-Fi or cable is known to be metered (paid by the byte): it counts as mobile data.
    #[serde(default)]
    pub metered: bool,
}
