//! Accounts, plans, devices and their ledger, client versions.

use crate::LibraryError;
use crate::library::Library;
use keepsake_sql::{OptionalExtension, params};
use keepsake_store::{UnixMillis, random_hex};
use serde::{Deserialize, Serialize};
use std::fmt;

/// A storage plan: a name and how many bytes it allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Its name, as users choose it ("free", "50gb", …).
    pub name: String,
    /// Bytes the account may own in the store.
    pub limit_bytes: u64,
}

/// The plans iCloud+ offers, in decimal units as they are sold.
pub fn default_plans() -> Vec<Plan> {
    [
        ("free", 5),
        ("50gb", 50),
        ("200gb", 200),
        ("2tb", 2_000),
        ("6tb", 6_000),
        ("12tb", 12_000),
    ]
    .into_iter()
    .map(|(name, gb)| Plan {
        name: name.into(),
        limit_bytes: gb * 1_000_000_000,
    })
    .collect()
}

/// Argon2id cost; the default is OWASP's (19 MiB, 2 passes). Tests turn it down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfCost {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Passes.
    pub iterations: u32,
}

impl Default for KdfCost {
    fn default() -> Self {
        Self {
            memory_kib: 19 * 1024,
            iterations: 2,
        }
    }
}

/// A client version `major.minor.patch`; anything unparsable counts as 0.0.0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct ClientVersion(pub u32, pub u32, pub u32);

impl ClientVersion {
    /// Parses `1.2.3` (a missing minor or patch is 0; a suffix like `-beta` is ignored).
    pub fn parse(text: &str) -> Option<Self> {
        let core = text.trim().split(['-', '+']).next()?;
        let mut parts = core.split('.').map(|p| p.parse::<u32>().ok());
        let major = parts.next()??;
        let minor = parts.next().unwrap_or(Some(0))?;
        let patch = parts.next().unwrap_or(Some(0))?;
        if parts.next().is_some() {
            return None;
        }
        Some(Self(major, minor, patch))
    }

    /// Refuses a client older than `self` (a client that sends no version is 0.0.0).
    pub fn admit(&self, client: Option<&str>) -> Result<(), LibraryError> {
        let got = client.and_then(Self::parse).unwrap_or_default();
        if got < *self {
            return Err(LibraryError::ClientTooOld {
                required: self.to_string(),
                got: client.unwrap_or("no version").to_string(),
            });
        }
        Ok(())
    }
}

impl fmt::Display for ClientVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// An account as its owner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountInfo {
    /// Its name.
    pub account: String,
    /// Its plan.
    pub plan: Plan,
    /// Bytes it owns in the store, counted once however often they appear.
    pub used_bytes: u64,
    /// Bytes held for uploads in flight.
    pub reserved_bytes: u64,
    /// May manage accounts and run maintenance.
    pub admin: bool,
    /// Wrong passwords given since the password was last set, the last one's time and
    /// address: what the owner is shown.
    pub failed_sign_ins: FailedSignIns,
    /// Devices enrolled and not revoked.
    pub devices: u64,
    /// What the last scrub proved of this account's originals; `None` before one ran.
    pub integrity: Option<Integrity>,
}

/// What a scrub proved of one account's originals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Integrity {
    /// Live or trashed assets whose current original verified, byte for byte.
    pub verified: u64,
    /// Assets whose original failed and waits for a device to send it again.
    pub waiting: u64,
    /// When the scrub finished.
    pub checked_at: UnixMillis,
}

/// Failed sign-ins the owner is shown.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FailedSignIns {
    /// How many.
    pub count: u64,
    /// When the last was.
    pub last_at: Option<UnixMillis>,
    /// Where it came from.
    pub last_from: Option<String>,
}

/// What a device last told the cloud about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceReport {
    /// "syncing", "idle", "paused", "blocked" …
    pub state: String,
    /// The reason code it is not syncing, if it is not.
    pub reason: Option<String>,
    /// Items waiting to upload.
    pub pending_items: u64,
    /// Bytes waiting to upload.
    pub pending_bytes: u64,
    /// Items uploaded or downloaded since it started.
    pub done_items: u64,
    /// Items that failed permanently.
    pub failed_items: u64,
    /// "wifi", "cellular", "wired", "offline" …
    pub network: String,
    /// Battery percentage, if it has one.
    pub battery_percent: Option<u8>,
    /// On a charger.
    pub charging: bool,
    /// Free bytes on the device.
    pub free_bytes: Option<u64>,
    /// Items the device waits to download (their originals).
    #[serde(default)]
    pub pending_downloads: u64,
    /// Bytes of those.
    #[serde(default)]
    pub pending_download_bytes: u64,
    /// Its reason in words, as the device said it.
    #[serde(default)]
    pub reason_message: Option<String>,
    /// What fixes it, as the device said it.
    #[serde(default)]
    pub reason_fix: Option<String>,
}

/// A device in an account's ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// Its id.
    pub device_id: String,
    /// The name its owner gave it.
    pub name: String,
    /// "ios", "android", "linux" …
    pub platform: String,
    /// The client version it declared.
    pub client_version: String,
    /// When it enrolled.
    pub enrolled_at: UnixMillis,
    /// When it was revoked, if it was.
    pub revoked_at: Option<UnixMillis>,
    /// When it last called.
    pub last_seen: Option<UnixMillis>,
    /// Its latest report.
    pub report: Option<DeviceReport>,
    /// Since when its current reason (or lack of one) holds.
    pub reason_since: Option<UnixMillis>,
    /// Not heard from for more than [`SILENT_AFTER_MS`]: since its last contact.
    pub silent_since: Option<UnixMillis>,
}

/// The longest reason message or fix a device may report (the policy's are under 300 bytes;
/// a cloud refusal quoted with its numbers stays well under this).
const MAX_REPORT_WORDS: usize = 2048;

/// A device not heard from for longer than this is flagged silent (DEVICE_SILENT): an agent
/// that runs reports at least every few minutes, and a phone left in a drawer for a day
/// is worth a word to its owner.
pub const SILENT_AFTER_MS: i64 = 24 * 3_600_000;

/// The platform of a browser's sign-in to the web library: a session, not a device that
/// syncs, so it is never flagged silent.
pub const WEB_PLATFORM: &str = "web";

pub(crate) fn check_account_name(name: &str) -> Result<(), LibraryError> {
    // It must begin with a letter or digit: `..`, `.` or `-x` would read as a path or an
    // option wherever a name is used.
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-@".contains(&b));
    if !ok {
        return Err(LibraryError::InvalidArgument(
            "account names are 1..=64 characters of a-z, 0-9, '.', '_', '-', '@'".into(),
        ));
    }
    Ok(())
}

pub(crate) fn check_password(password: &str) -> Result<(), LibraryError> {
    if !(8..=1024).contains(&password.len()) {
        return Err(LibraryError::InvalidArgument(
            "passwords are 8..=1024 bytes".into(),
        ));
    }
    Ok(())
}

fn wrong_credentials() -> LibraryError {
    LibraryError::Unauthenticated("the account name or password is wrong".into())
}

/// Failures from one account or address that cost nothing; each one after doubles the wait.
const FREE_FAILURES_PER_ACCOUNT: i64 = 5;
const FREE_FAILURES_PER_ADDRESS: i64 = 10;
/// The longest an account waits: short, so an attacker guessing from many addresses
/// cannot lock its owner out for long (one guess a minute is 1,440 a day).
const MAX_ACCOUNT_WAIT_MS: i64 = 60_000;
/// The longest an address waits.
const MAX_ADDRESS_WAIT_MS: i64 = 15 * 60_000;
/// Failures older than this are forgotten.
const FAILURE_MEMORY_MS: i64 = 3_600_000;

fn wait_after(failures: i64, free: i64, max_ms: i64) -> i64 {
    if failures < free {
        return 0;
    }
    let doublings = (failures - free).min(30);
    (1000i64 << doublings).min(max_ms)
}

/// Where a sign-in comes from, for throttling and for the owner to see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignInFrom {
    /// A client at this address.
    Address(std::net::IpAddr),
    /// Inside the server (the administrator's bootstrap, tests).
    Local,
}

impl SignInFrom {
    fn key(&self) -> Option<String> {
        match self {
            // IPv6 clients get a /64 each, so count the prefix, not the address.
            Self::Address(std::net::IpAddr::V6(v6)) => {
                let s = v6.segments();
                Some(format!(
                    "address:{:x}:{:x}:{:x}:{:x}::/64",
                    s[0], s[1], s[2], s[3]
                ))
            }
            Self::Address(ip) => Some(format!("address:{ip}")),
            Self::Local => None,
        }
    }

    fn shown(&self) -> String {
        match self {
            Self::Address(ip) => ip.to_string(),
            Self::Local => "this server".into(),
        }
    }
}

impl Library {
    /// Hashes a password with a fresh salt (slow on purpose: call without the lock).
    pub(crate) fn hash_password(&self, password: &str) -> Result<String, LibraryError> {
        let mut salt = [0u8; 16];
        self.entropy.fill(&mut salt);
        self.passwords.hash(password, &salt)
    }

    /// How long until the next attempt for these keys may be checked (0 = now).
    fn throttled_for(&self, keys: &[(String, i64, i64)], now: i64) -> Result<i64, LibraryError> {
        let db = self.db();
        let mut wait = 0;
        for (key, free, max) in keys {
            let row: Option<(i64, i64)> = db
                .query_row(
                    "SELECT failures, last_at FROM sign_in_failures WHERE key = ?1",
                    [key],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            if let Some((failures, last_at)) = row
                && now - last_at < FAILURE_MEMORY_MS
            {
                wait = wait.max(last_at + wait_after(failures, *free, *max) - now);
            }
        }
        Ok(wait)
    }

    fn record_failure(
        &self,
        account: &str,
        keys: &[(String, i64, i64)],
        from: SignInFrom,
        now: i64,
    ) -> Result<(), LibraryError> {
        let mut db = self.db();
        let tx = db.transaction()?;
        for (key, _, _) in keys {
            tx.execute(
                "INSERT INTO sign_in_failures (key, failures, last_at) VALUES (?1, 1, ?2)
                 ON CONFLICT (key) DO UPDATE SET
                     failures = CASE WHEN ?2 - sign_in_failures.last_at < ?3
                                     THEN sign_in_failures.failures + 1 ELSE 1 END,
                     last_at = ?2",
                params![key, now, FAILURE_MEMORY_MS],
            )?;
        }
        tx.execute(
            "UPDATE accounts SET failed_sign_ins = failed_sign_ins + 1, last_failed_at = ?2,
                 last_failed_from = ?3 WHERE account = ?1",
            params![account, now, from.shown()],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Checks `password` against the account's hash; wrong name and wrong password look
    /// alike. Throttled per account and per address: past a few failures, each doubles
    /// the wait before the next attempt is even checked (TOO_MANY_ATTEMPTS says how long),
    /// and a refused attempt costs the server no hashing.
    pub(crate) fn check_credentials(
        &self,
        account: &str,
        password: &str,
        from: SignInFrom,
    ) -> Result<bool, LibraryError> {
        // A name no account can have is a wrong name, said like any other.
        check_account_name(account).map_err(|_| wrong_credentials())?;
        let now = self.clock.now_ms();
        let mut keys = vec![(
            format!("account:{account}"),
            FREE_FAILURES_PER_ACCOUNT,
            MAX_ACCOUNT_WAIT_MS,
        )];
        if let Some(key) = from.key() {
            keys.push((key, FREE_FAILURES_PER_ADDRESS, MAX_ADDRESS_WAIT_MS));
        }
        let wait = self.throttled_for(&keys, now)?;
        if wait > 0 {
            tracing::info!(account, from = %from.shown(), wait_ms = wait, "sign-in throttled");
            return Err(LibraryError::TooManyAttempts {
                retry_after_ms: wait as u64,
            });
        }
        let stored: Option<(String, bool)> = self
            .db()
            .query_row(
                "SELECT password, admin FROM accounts WHERE account = ?1",
                [account],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let matched = match &stored {
            Some((phc, _)) => self.passwords.verify(password, phc)?,
            // An unknown account still costs one hash, so timing does not tell names apart.
            None => {
                self.passwords.decoy(password)?;
                false
            }
        };
        if !matched {
            tracing::info!(account, from = %from.shown(), "sign-in failed");
            self.record_failure(account, &keys, from, now)?;
            return Err(wrong_credentials());
        }
        // The owner's success ends the account's wait; an address's failures only age.
        self.db()
            .execute("DELETE FROM sign_in_failures WHERE key = ?1", [&keys[0].0])?;
        Ok(stored.is_some_and(|(_, admin)| admin))
    }

    /// Drops the failures the throttle no longer counts (older than its memory).
    pub(crate) fn forget_old_sign_in_failures(
        &self,
        now: UnixMillis,
    ) -> Result<usize, LibraryError> {
        Ok(self.db().execute(
            "DELETE FROM sign_in_failures WHERE last_at < ?1",
            [now - FAILURE_MEMORY_MS],
        )?)
    }

    /// Wrong passwords given since the password was last set: how many, when the last
    /// was and from where.
    pub fn failed_sign_ins(&self, account: &str) -> Result<FailedSignIns, LibraryError> {
        let row: Option<(i64, Option<i64>, Option<String>)> = self
            .db()
            .query_row(
                "SELECT failed_sign_ins, last_failed_at, last_failed_from FROM accounts WHERE account = ?1",
                [account],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        Ok(
            row.map_or_else(FailedSignIns::default, |(n, at, from)| FailedSignIns {
                count: n as u64,
                last_at: at,
                last_from: from,
            }),
        )
    }

    /// Every plan on offer.
    pub fn plans(&self) -> &[Plan] {
        &self.config.plans
    }

    /// How long an asset stays in Recently Deleted before it is purged.
    pub fn trash_retention_ms(&self) -> i64 {
        self.config.trash_retention_ms
    }

    pub(crate) fn plan(&self, name: &str) -> Result<Plan, LibraryError> {
        self.config
            .plans
            .iter()
            .find(|p| p.name == name)
            .cloned()
            .ok_or_else(|| {
                let names: Vec<&str> = self.config.plans.iter().map(|p| p.name.as_str()).collect();
                LibraryError::InvalidArgument(format!(
                    "no plan {name:?}; plans are {}",
                    names.join(", ")
                ))
            })
    }

    /// Creates an account on a plan.
    pub fn create_account(
        &self,
        account: &str,
        password: &str,
        plan: &str,
        admin: bool,
    ) -> Result<(), LibraryError> {
        check_account_name(account)?;
        check_password(password)?;
        self.plan(plan)?;
        let phc = self.hash_password(password)?;
        let now = self.clock.now_ms();
        let inserted = self.db().execute(
            "INSERT INTO accounts (account, password, plan, admin, created_at) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (account) DO NOTHING",
            params![account, phc, plan, admin, now],
        )?;
        if inserted == 0 {
            return Err(LibraryError::AccountExists(account.to_string()));
        }
        tracing::info!(account, plan, admin, "account created");
        Ok(())
    }

    /// Whether the account exists.
    pub fn account_exists(&self, account: &str) -> Result<bool, LibraryError> {
        Ok(self
            .db()
            .query_row(
                "SELECT 1 FROM accounts WHERE account = ?1",
                [account],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    /// Replaces the password after checking the old one.
    pub fn change_password(&self, account: &str, old: &str, new: &str) -> Result<(), LibraryError> {
        check_password(new)?;
        self.check_credentials(account, old, SignInFrom::Local)?;
        self.set_password(account, new)
    }

    /// Sets a new password and clears the failed sign-ins the owner was shown.
    pub(crate) fn set_password(&self, account: &str, new: &str) -> Result<(), LibraryError> {
        let phc = self.hash_password(new)?;
        self.db().execute(
            "UPDATE accounts SET password = ?2, failed_sign_ins = 0 WHERE account = ?1",
            params![account, phc],
        )?;
        Ok(())
    }

    /// Moves an account to another plan.
    pub fn set_plan(&self, account: &str, plan: &str) -> Result<(), LibraryError> {
        self.plan(plan)?;
        let changed = self.db().execute(
            "UPDATE accounts SET plan = ?2 WHERE account = ?1",
            params![account, plan],
        )?;
        if changed == 0 {
            return Err(LibraryError::NotFound {
                kind: "account",
                id: account.to_string(),
            });
        }
        Ok(())
    }

    /// The account's plan and whether it is an administrator.
    pub(crate) fn account_plan(&self, account: &str) -> Result<(Plan, bool), LibraryError> {
        let (plan, admin): (String, bool) = self
            .db()
            .query_row(
                "SELECT plan, admin FROM accounts WHERE account = ?1",
                [account],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?
            .ok_or_else(|| LibraryError::NotFound {
                kind: "account",
                id: account.to_string(),
            })?;
        // A plan removed from the configuration leaves its accounts on the smallest one.
        let plan = self
            .plan(&plan)
            .or_else(|_| self.config.plans.first().cloned().ok_or(()))
            .map_err(|_| LibraryError::InvalidArgument("no plans are configured".into()))?;
        Ok((plan, admin))
    }

    /// Enrols a device: returns its id and the secret token it must keep (stored here hashed).
    pub(crate) fn add_device(
        &self,
        account: &str,
        name: &str,
        platform: &str,
        client_version: &str,
    ) -> Result<(String, String), LibraryError> {
        self.check_text("device name", name)?;
        self.check_text("platform", platform)?;
        self.check_text("client version", client_version)?;
        let device_id = random_hex(self.entropy.as_ref(), 16);
        let token = random_hex(self.entropy.as_ref(), 32);
        let now = self.clock.now_ms();
        self.db().execute(
            "INSERT INTO devices (device_id, account, name, platform, client_version, token_hash, enrolled_at, last_seen)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)",
            params![
                device_id,
                account,
                name,
                platform,
                client_version,
                &blake3::hash(token.as_bytes()).as_bytes()[..],
                now
            ],
        )?;
        tracing::info!(account, device = %device_id, name, platform, client_version, "device enrolled");
        Ok((device_id, token))
    }

    /// The account of a live device whose token matches; records the contact.
    pub(crate) fn device_by_token(
        &self,
        device_id: &str,
        token: &str,
        client_version: &str,
    ) -> Result<String, LibraryError> {
        let now = self.clock.now_ms();
        let db = self.db();
        let found: Option<(String, Vec<u8>, Option<i64>)> = db
            .query_row(
                "SELECT account, token_hash, revoked_at FROM devices WHERE device_id = ?1",
                [device_id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        let unknown = || {
            LibraryError::Unauthenticated(
                "this device is not enrolled (or was removed from the account); sign in again"
                    .into(),
            )
        };
        let (account, hash, revoked_at) = found.ok_or_else(unknown)?;
        // Compare digests, never the secrets themselves; only the token's holder learns
        // that the device was revoked.
        if hash != blake3::hash(token.as_bytes()).as_bytes() {
            return Err(unknown());
        }
        if let Some(revoked_at_ms) = revoked_at {
            return Err(LibraryError::DeviceRevoked { revoked_at_ms });
        }
        db.execute(
            "UPDATE devices SET last_seen = ?2, client_version = ?3 WHERE device_id = ?1",
            params![device_id, now, client_version],
        )?;
        Ok(account)
    }

    /// Whether a device of `account` may still call: DEVICE_REVOKED once it was revoked or
    /// removed (its access tokens outlive that by their lifetime; this check does not).
    pub fn check_device(&self, account: &str, device_id: &str) -> Result<(), LibraryError> {
        let revoked: Option<Option<i64>> = self
            .db()
            .query_row(
                "SELECT revoked_at FROM devices WHERE device_id = ?1 AND account = ?2",
                params![device_id, account],
                |r| r.get(0),
            )
            .optional()?;
        match revoked {
            Some(None) => Ok(()),
            Some(Some(revoked_at_ms)) => Err(LibraryError::DeviceRevoked { revoked_at_ms }),
            None => Err(LibraryError::Unauthenticated(
                "this device is not enrolled in this account; enrol it again".into(),
            )),
        }
    }

    /// Revokes a device: its token stops working at once, its access tokens within their
    /// lifetime; it stays in the ledger, marked revoked. Revoking twice changes nothing.
    pub fn revoke_device(&self, account: &str, device_id: &str) -> Result<(), LibraryError> {
        self.retire_device(account, device_id, false)
    }

    /// Revokes a device and takes it out of the ledger (a device sold or thrown away). Its
    /// agent, if it ever calls again, still hears DEVICE_REVOKED.
    pub fn remove_device(&self, account: &str, device_id: &str) -> Result<(), LibraryError> {
        self.retire_device(account, device_id, true)
    }

    fn retire_device(
        &self,
        account: &str,
        device_id: &str,
        remove: bool,
    ) -> Result<(), LibraryError> {
        let now = self.clock.now_ms();
        let changed = self.db().execute(
            "UPDATE devices SET revoked_at = COALESCE(revoked_at, ?3),
                 removed_at = CASE WHEN ?4 = 1 THEN COALESCE(removed_at, ?3) ELSE removed_at END
             WHERE device_id = ?1 AND account = ?2",
            params![device_id, account, now, i64::from(remove)],
        )?;
        if changed == 0 {
            return Err(LibraryError::NotFound {
                kind: "device",
                id: device_id.to_string(),
            });
        }
        tracing::info!(account, device = %device_id, removed = remove, "device revoked");
        Ok(())
    }

    /// Every account's name, in order (administrators list them).
    pub fn account_names(&self) -> Result<Vec<String>, LibraryError> {
        let db = self.db();
        let mut stmt = db.prepare_cached("SELECT account FROM accounts ORDER BY account")?;
        let rows = stmt.query_map((), |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Devices of `account` enrolled and not revoked.
    pub(crate) fn active_devices(&self, account: &str) -> Result<u64, LibraryError> {
        let n: i64 = self.db().query_row(
            "SELECT COUNT(*) FROM devices WHERE account = ?1 AND revoked_at IS NULL",
            [account],
            |r| r.get(0),
        )?;
        Ok(n as u64)
    }

    /// Records, for every account, what a scrub that finished at `at` proved: originals
    /// that verified, and those flagged damaged that wait for a device.
    pub(crate) fn record_integrity(&self, at: UnixMillis) -> Result<(), LibraryError> {
        let mut db = self.db();
        let tx = db.transaction()?;
        tx.execute("DELETE FROM integrity", ())?;
        tx.execute(
            "INSERT INTO integrity (account, verified, waiting, checked_at)
             SELECT c.account, COALESCE(t.verified, 0), COALESCE(t.waiting, 0), ?1
             FROM accounts c LEFT JOIN (
                 SELECT account,
                        SUM(CASE WHEN damaged = 0 THEN 1 ELSE 0 END) AS verified,
                        SUM(CASE WHEN damaged = 0 THEN 0 ELSE 1 END) AS waiting
                 FROM assets WHERE state != 'purged' GROUP BY account
             ) t ON t.account = c.account",
            [at],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// What the last scrub proved of `account`'s originals.
    pub(crate) fn integrity(&self, account: &str) -> Result<Option<Integrity>, LibraryError> {
        Ok(self
            .db()
            .query_row(
                "SELECT verified, waiting, checked_at FROM integrity WHERE account = ?1",
                [account],
                |r| {
                    Ok(Integrity {
                        verified: r.get::<_, i64>(0)? as u64,
                        waiting: r.get::<_, i64>(1)? as u64,
                        checked_at: r.get(2)?,
                    })
                },
            )
            .optional()?)
    }

    /// Records a device's report; the reason's "since" moves only when the reason changes.
    pub fn report_device(
        &self,
        account: &str,
        device_id: &str,
        report: &DeviceReport,
    ) -> Result<(), LibraryError> {
        self.check_text("state", &report.state)?;
        self.check_text("network", &report.network)?;
        if let Some(reason) = &report.reason {
            self.check_text("reason", reason)?;
        }
        for words in [&report.reason_message, &report.reason_fix]
            .into_iter()
            .flatten()
        {
            if words.len() > MAX_REPORT_WORDS {
                return Err(LibraryError::InvalidArgument(format!(
                    "a device's reason in words is at most {MAX_REPORT_WORDS} bytes"
                )));
            }
        }
        let now = self.clock.now_ms();
        let json = serde_json::to_string(report)
            .map_err(|e| LibraryError::InvalidArgument(format!("report: {e}")))?;
        let reason = report.reason.clone().unwrap_or_default();
        let changed = self.db().execute(
            "UPDATE devices SET report = ?3, last_seen = ?4,
                 reason_since = CASE WHEN reason IS NOT DISTINCT FROM ?5 THEN COALESCE(reason_since, ?4) ELSE ?4 END,
                 reason = ?5
             WHERE device_id = ?1 AND account = ?2 AND revoked_at IS NULL",
            params![device_id, account, json, now, reason],
        )?;
        if changed == 0 {
            return Err(LibraryError::NotFound {
                kind: "device",
                id: device_id.to_string(),
            });
        }
        Ok(())
    }

    /// Every device of the account, revoked ones included (removed ones not), by enrolment;
    /// a live device not heard from for a day is flagged silent.
    pub fn list_devices(&self, account: &str) -> Result<Vec<Device>, LibraryError> {
        let now = self.clock.now_ms();
        let db = self.db();
        let mut stmt = db.prepare_cached(
            "SELECT device_id, name, platform, client_version, enrolled_at, revoked_at, last_seen,
                    report, reason_since
             FROM devices WHERE account = ?1 AND removed_at IS NULL
             ORDER BY enrolled_at, device_id",
        )?;
        let rows = stmt.query_map([account], |r| {
            let report: Option<String> = r.get(7)?;
            let revoked_at: Option<i64> = r.get(5)?;
            let last_seen: Option<i64> = r.get(6)?;
            let enrolled_at: i64 = r.get(4)?;
            let heard = last_seen.unwrap_or(enrolled_at);
            let platform: String = r.get(2)?;
            Ok(Device {
                silent_since: (revoked_at.is_none()
                    && platform != WEB_PLATFORM
                    && now - heard > SILENT_AFTER_MS)
                    .then_some(heard),
                device_id: r.get(0)?,
                name: r.get(1)?,
                platform: r.get(2)?,
                client_version: r.get(3)?,
                enrolled_at: r.get(4)?,
                revoked_at: r.get(5)?,
                last_seen: r.get(6)?,
                report: report.and_then(|j| serde_json::from_str(&j).ok()),
                reason_since: r.get(8)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_versions_compare_numerically_and_missing_means_oldest() {
        let min = ClientVersion::parse("1.10.0").unwrap();
        assert!(min.admit(Some("1.10.0")).is_ok());
        assert!(min.admit(Some("2.0")).is_ok());
        assert!(min.admit(Some("1.10.1-beta")).is_ok());
        for old in [
            Some("1.9.9"),
            Some("1.2.10"),
            None,
            Some("banana"),
            Some("1.x"),
        ] {
            let err = min.admit(old).unwrap_err();
            assert_eq!(err.reason(), "CLIENT_TOO_OLD", "{old:?}");
            assert!(err.to_string().contains("1.10.0"));
        }
        assert!(ClientVersion::default().admit(None).is_ok());
    }

    #[test]
    fn account_names_are_plain() {
        assert!(check_account_name("alice@example.org").is_ok());
        for bad in [
            "",
            "Alice",
            "a/b",
            "../x",
            "a b",
            "..",
            ".",
            "-rf",
            &"a".repeat(65),
        ] {
            assert!(check_account_name(bad).is_err(), "{bad:?}");
        }
    }
}
