//! The library's errors, each with a stable machine-readable reason.

/// Everything a library operation can refuse or fail with.
#[derive(Debug, thiserror::Error)]
pub enum LibraryError {
    /// No such asset or album for this account (it may exist for someone else: same answer).
    #[error("{kind} {id:?} not found")]
    NotFound {
        /// "asset" or "album".
        kind: &'static str,
        /// The id asked for.
        id: String,
    },
    /// The asset is in Recently Deleted or purged; restore it first.
    #[error("asset {0:?} is not live (it is in Recently Deleted or was purged)")]
    NotLive(String),
    /// A request id reused for a different request.
    #[error("request id {0:?} was already used for a different request")]
    RequestIdReused(String),
    /// The device's clock is too far ahead of the server's.
    #[error(
        "the device clock is {ahead_ms} ms ahead of the server's; set the date and time to automatic"
    )]
    ClockSkew {
        /// How far ahead.
        ahead_ms: i64,
    },
    /// The cursor predates the compaction horizon: resync from zero.
    #[error("cursor {cursor} is older than the feed's horizon {horizon}; resync from the start")]
    CursorExpired {
        /// The cursor sent.
        cursor: u64,
        /// The oldest cursor still served.
        horizon: u64,
    },
    /// A cursor beyond the feed's end.
    #[error("cursor {cursor} is beyond the feed's end {head}")]
    CursorFromFuture {
        /// The cursor sent.
        cursor: u64,
        /// The newest sequence number.
        head: u64,
    },
    /// Wrong account name or password, or a device token that is unknown or revoked.
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller may not do this.
    #[error("{0}")]
    PermissionDenied(String),
    /// The calling device was revoked or removed from its account (permanent: enrol again).
    #[error(
        "this device was removed from its account; enrol it again to sync (nothing on it was deleted)"
    )]
    DeviceRevoked {
        /// When (Unix ms).
        revoked_at_ms: i64,
    },
    /// An account with this name exists already.
    #[error("account {0:?} already exists")]
    AccountExists(String),
    /// The upload or commit would take the account past its plan.
    #[error("{}", quota_message(*used_bytes, *reserved_bytes, *needed_bytes, *limit_bytes))]
    QuotaExceeded {
        /// Bytes the account owns in the store.
        used_bytes: u64,
        /// Bytes held for uploads in flight.
        reserved_bytes: u64,
        /// Bytes this request needs.
        needed_bytes: u64,
        /// The plan's limit.
        limit_bytes: u64,
    },
    /// The client is older than the server's minimum.
    #[error("this Keepsake client ({got}) is too old; update to {required} or later")]
    ClientTooOld {
        /// The minimum version.
        required: String,
        /// What the client said it was.
        got: String,
    },
    /// Too many wrong passwords for this account or from this address: the next check
    /// waits (the wait doubles with each failure, within bounds).
    #[error("too many sign-in attempts; try again in {} s", retry_after_ms.div_ceil(1000))]
    TooManyAttempts {
        /// When the next attempt is checked.
        retry_after_ms: u64,
    },
    /// The server has no room for this now (password checks are limited to a few at once).
    #[error("the server is busy with {what}; try again in {retry_after_ms} ms")]
    Overloaded {
        /// What is busy.
        what: &'static str,
        /// A hint for when to retry.
        retry_after_ms: u64,
    },
    /// The chunk store refused or failed.
    #[error(transparent)]
    Store(#[from] keepsake_store::StoreError),
    /// Any other invalid argument, said in words.
    #[error("{0}")]
    InvalidArgument(String),
    /// The library's database failed (or cannot be reached).
    #[error("library index failed: {0}")]
    Index(keepsake_sql::SqlError),
}

impl From<keepsake_sql::SqlError> for LibraryError {
    fn from(e: keepsake_sql::SqlError) -> Self {
        // A database out of disk is the server's storage full: devices wait it out as such.
        if e.is_full() {
            Self::Store(keepsake_store::StoreError::StorageFull)
        } else {
            Self::Index(e)
        }
    }
}

impl LibraryError {
    /// The stable UPPER_SNAKE reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NotFound { .. } => "NOT_FOUND",
            Self::NotLive(_) => "ASSET_NOT_LIVE",
            Self::RequestIdReused(_) => "REQUEST_ID_REUSED",
            Self::ClockSkew { .. } => "CLOCK_SKEW",
            Self::CursorExpired { .. } => "CURSOR_EXPIRED",
            Self::CursorFromFuture { .. } => "CURSOR_FROM_FUTURE",
            Self::InvalidArgument(_) => "INVALID_ARGUMENT",
            Self::Unauthenticated(_) => "UNAUTHENTICATED",
            Self::PermissionDenied(_) => "PERMISSION_DENIED",
            Self::DeviceRevoked { .. } => "DEVICE_REVOKED",
            Self::AccountExists(_) => "ACCOUNT_EXISTS",
            Self::QuotaExceeded { .. } => "QUOTA_EXCEEDED",
            Self::ClientTooOld { .. } => "CLIENT_TOO_OLD",
            Self::TooManyAttempts { .. } => "TOO_MANY_ATTEMPTS",
            Self::Overloaded { .. } => "OVERLOADED",
            Self::Store(e) => e.reason(),
            Self::Index(_) => "INDEX_IO",
        }
    }
}

fn size(bytes: u64) -> String {
    match bytes {
        b if b >= 1_000_000_000 => format!("{:.1} GB", b as f64 / 1e9),
        b if b >= 1_000_000 => format!("{:.1} MB", b as f64 / 1e6),
        b => format!("{:.1} kB", b as f64 / 1e3),
    }
}

/// QUOTA_EXCEEDED in words: what is used, what is only held for uploads in progress, and
/// the fix that applies — waiting, when the plan fits this upload but for those holds.
fn quota_message(used: u64, reserved: u64, needed: u64, limit: u64) -> String {
    if reserved > 0 && used.saturating_add(needed) <= limit {
        format!(
            "not enough cloud storage for now: {} used of {}, and {} held for uploads other \
             devices have in progress (not used; released when they finish, or within 10 \
             minutes); this upload needs {}. Wait for those uploads, or choose a bigger plan",
            size(used),
            size(limit),
            size(reserved),
            size(needed)
        )
    } else {
        format!(
            "not enough cloud storage: {} used of {}{}; this upload needs {}. Free space \
             (delete photos and empty Recently Deleted) or choose a bigger plan",
            size(used),
            size(limit),
            if reserved > 0 {
                format!(" (and {} held for uploads in progress)", size(reserved))
            } else {
                String::new()
            },
            size(needed)
        )
    }
}
