//! The sync policy: given a snapshot of a device's conditions (account, switch,
//! network, mobile-data settings, power, storage, quota, versions), decide which
//! classes of work may run now — and for each that may not, the stable reason
//! code, a one-line message, the fix, and when it clears by itself.
//!
//! Pure: no I/O, no clock of its own (`now` is in the snapshot), no network types.
//!
//! ```
//! use keepsake_policy::*;
//! let mut s = Snapshot::example();
//! s.network = Some(Network::Cellular);
//! s.cellular.allowed = false;
//! let d = evaluate(&s, &PolicyConfig::default());
//! assert!(d.allows(WorkClass::Metadata));
//! assert!(!d.allows(WorkClass::PhotoUpload));
//! assert_eq!(d.class(WorkClass::PhotoUpload).reasons[0].code, ReasonCode::CellularNotAllowed);
//! ```

mod decision;
pub mod doctor;
mod snapshot;

pub use decision::{
    ClassDecision, Decision, PolicyConfig, Reason, ReasonCode, WorkClass, evaluate,
};
pub use snapshot::{Cellular, DeviceStorage, Network, Power, Quota, Snapshot, UnixMillis, Version};

impl Snapshot {
    /// A healthy device: signed in, on Wi-Fi, charging, plenty of space and quota.
    pub fn example() -> Self {
        Snapshot {
            now: 1_700_000_000_000,
            account: Some("alice".into()),
            sync_enabled: true,
            paused_until: None,
            power_override_until: None,
            network: Some(Network::Wifi),
            cellular: Cellular {
                allowed: true,
                unlimited_updates: false,
                daily_cap_bytes: None,
                used_today_bytes: 0,
            },
            power: Power {
                battery_percent: Some(80),
                charging: true,
                low_power_mode: false,
            },
            storage: DeviceStorage {
                free_bytes: Some(50_000_000_000),
                total_bytes: Some(128_000_000_000),
                optimize: false,
            },
            quota: Some(Quota {
                used_bytes: 1_000_000_000,
                limit_bytes: 5_000_000_000,
                pending_bytes: 0,
            }),
            client_version: Version(0, 1, 0),
            server_min_version: Some(Version(0, 1, 0)),
            server_reachable: Some(true),
            clock_skew_ms: None,
            last_stall_at: None,
            metered: false,
        }
    }
}
