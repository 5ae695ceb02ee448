//! The one mapping from domain errors to `tonic::Status` (AIP-193).

#[cfg(feature = "cloud")]
use keepsake_library::LibraryError;
use keepsake_store::StoreError;
use std::collections::HashMap;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The `ErrorInfo.domain` of every Keepsake error.
pub const ERROR_DOMAIN: &str = "keepsake";

/// Missing chunk ids named in one MISSING_CHUNKS status, at most (all of them are counted).
pub const MISSING_IDS_IN_STATUS: usize = 48;

/// Everything a Keepsake RPC can fail with, before it becomes a status.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A store error.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No token, or one nobody issued.
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller is known but may not do this.
    #[error("{0}")]
    PermissionDenied(String),
    /// A request field that cannot become a domain value.
    #[error("{field}: {why}")]
    InvalidField {
        /// Which field.
        field: &'static str,
        /// What is wrong with it, in words.
        why: String,
    },
    /// A library or account error.
    #[cfg(feature = "cloud")]
    #[error(transparent)]
    Library(#[from] keepsake_library::LibraryError),
    /// A delta-engine error.
    #[error(transparent)]
    Delta(#[from] keepsake_delta::DeltaError),
    /// The server is shutting down or a worker died.
    #[error("{0}")]
    Unavailable(String),
    /// The caller made more calls than its rate allows.
    #[error("too many calls from this device; retry in {retry_after_ms} ms")]
    RateLimited {
        /// When a call will be admitted again.
        retry_after_ms: u64,
    },
    /// A transfer made no progress for too long (raised by clients, for their callers).
    #[error("{what} made no progress for {after_ms} ms; restarting it")]
    Stalled {
        /// The call.
        what: String,
        /// How long it waited.
        after_ms: u64,
    },
    /// The server (or this caller's share of it) is at its concurrency limit.
    #[error("the server is busy; retry in {retry_after_ms} ms")]
    Overloaded {
        /// A hint for when to retry.
        retry_after_ms: u64,
    },
    /// A device agent refused a control call.
    #[error(transparent)]
    Device(#[from] keepsake_device::DeviceError),
}

impl ApiError {
    /// A field that failed conversion.
    pub fn field(field: &'static str, why: impl std::fmt::Display) -> Self {
        Self::InvalidField {
            field,
            why: why.to_string(),
        }
    }
}

/// How long a device waits before trying a full server disk again.
const STORAGE_FULL_RETRY_MS: u64 = 15_000;

/// Turns an error into a status with a canonical code, a sentence a person can act
/// on, and an `ErrorInfo` whose stable `reason` a program can act on.
pub fn to_status(err: &ApiError) -> Status {
    let mut metadata: HashMap<String, String> = HashMap::new();
    let mut details = ErrorDetails::new();
    let (code, reason): (Code, &str) = match err {
        ApiError::Unauthenticated(_) => (Code::Unauthenticated, "UNAUTHENTICATED"),
        ApiError::PermissionDenied(_) => (Code::PermissionDenied, "PERMISSION_DENIED"),
        ApiError::InvalidField { field, .. } => {
            details.add_bad_request_violation(*field, err.to_string());
            (Code::InvalidArgument, "INVALID_ARGUMENT")
        }
        ApiError::Unavailable(_) => (Code::Unavailable, "UNAVAILABLE"),
        ApiError::Stalled { after_ms, .. } => {
            metadata.insert("after_ms".into(), after_ms.to_string());
            (Code::DeadlineExceeded, "TRANSFER_STALLED")
        }
        ApiError::RateLimited { retry_after_ms } | ApiError::Overloaded { retry_after_ms } => {
            metadata.insert("retry_after_ms".into(), retry_after_ms.to_string());
            details.set_retry_info(Some(std::time::Duration::from_millis(*retry_after_ms)));
            let reason = if matches!(err, ApiError::RateLimited { .. }) {
                "RATE_LIMITED"
            } else {
                "OVERLOADED"
            };
            (Code::ResourceExhausted, reason)
        }
        ApiError::Delta(e) => {
            use keepsake_delta::DeltaError as D;
            let code = match e {
                D::TooLarge { limit, .. } => {
                    metadata.insert("limit_bytes".into(), limit.to_string());
                    Code::InvalidArgument
                }
                D::BadSignature(_) | D::BadDelta(_) => Code::InvalidArgument,
                D::HashMismatch { declared, actual } => {
                    metadata.insert("declared_hash".into(), declared.to_hex());
                    metadata.insert("actual_hash".into(), actual.to_hex());
                    Code::InvalidArgument
                }
                D::Read(_) | D::Sink(_) => Code::Unavailable,
            };
            (code, e.reason())
        }
        ApiError::Store(e) => (store_code(e, &mut metadata, &mut details), e.reason()),
        #[cfg(feature = "cloud")]
        ApiError::Library(LibraryError::Store(e)) => {
            (store_code(e, &mut metadata, &mut details), e.reason())
        }
        #[cfg(feature = "cloud")]
        ApiError::Library(e) => {
            let code = match e {
                LibraryError::NotFound { .. } => Code::NotFound,
                LibraryError::NotLive(_) => Code::FailedPrecondition,
                LibraryError::RequestIdReused(_)
                | LibraryError::InvalidArgument(_)
                | LibraryError::CursorFromFuture { .. } => Code::InvalidArgument,
                LibraryError::ClockSkew { ahead_ms } => {
                    metadata.insert("ahead_ms".into(), ahead_ms.to_string());
                    Code::FailedPrecondition
                }
                LibraryError::CursorExpired { horizon, .. } => {
                    metadata.insert("horizon".into(), horizon.to_string());
                    Code::FailedPrecondition
                }
                LibraryError::Unauthenticated(_) => Code::Unauthenticated,
                LibraryError::PermissionDenied(_) => Code::PermissionDenied,
                LibraryError::DeviceRevoked { revoked_at_ms } => {
                    metadata.insert("revoked_at_ms".into(), revoked_at_ms.to_string());
                    Code::PermissionDenied
                }
                LibraryError::AccountExists(_) => Code::AlreadyExists,
                LibraryError::QuotaExceeded {
                    used_bytes,
                    reserved_bytes,
                    needed_bytes,
                    limit_bytes,
                } => {
                    for (key, value) in [
                        ("used_bytes", used_bytes),
                        ("reserved_bytes", reserved_bytes),
                        ("needed_bytes", needed_bytes),
                        ("limit_bytes", limit_bytes),
                    ] {
                        metadata.insert(key.into(), value.to_string());
                    }
                    details.add_quota_failure_violation("account storage", err.to_string());
                    Code::ResourceExhausted
                }
                LibraryError::ClientTooOld { required, .. } => {
                    metadata.insert("required_version".into(), required.clone());
                    Code::FailedPrecondition
                }
                LibraryError::TooManyAttempts { retry_after_ms }
                | LibraryError::Overloaded { retry_after_ms, .. } => {
                    metadata.insert("retry_after_ms".into(), retry_after_ms.to_string());
                    details.set_retry_info(Some(std::time::Duration::from_millis(*retry_after_ms)));
                    Code::ResourceExhausted
                }
                LibraryError::Index(_) => Code::Unavailable,
                LibraryError::Store(_) => unreachable!("matched above"),
            };
            (code, e.reason())
        }
        ApiError::Device(e) => {
            use keepsake_device::DeviceError as D;
            use std::io::ErrorKind;
            match e {
                D::Unknown { .. } => (Code::NotFound, "NOT_FOUND"),
                D::Io(io) if io.kind() == ErrorKind::NotFound => (Code::NotFound, "NOT_FOUND"),
                D::Invalid(_) => {
                    details.add_bad_request_violation("edit", err.to_string());
                    (Code::InvalidArgument, "INVALID_ARGUMENT")
                }
                D::Io(io) if io.kind() == ErrorKind::InvalidInput => {
                    details.add_bad_request_violation("name", err.to_string());
                    (Code::InvalidArgument, "INVALID_ARGUMENT")
                }
                _ => (Code::Unavailable, "UNAVAILABLE"),
            }
        }
    };
    if storage_failure(err) {
        tracing::error!(error = %err, "storage failure answered as UNAVAILABLE");
    }
    details.set_error_info(reason, ERROR_DOMAIN, metadata);
    Status::with_error_details(code, err.to_string(), details)
}

/// Whether the server's own storage failed (logged as an error, answered UNAVAILABLE).
fn storage_failure(err: &ApiError) -> bool {
    match err {
        ApiError::Store(StoreError::Backend(_) | StoreError::Index(_)) => true,
        #[cfg(feature = "cloud")]
        ApiError::Library(
            LibraryError::Index(_)
            | LibraryError::Store(StoreError::Backend(_) | StoreError::Index(_)),
        ) => true,
        _ => false,
    }
}

/// The code for a store error, with its details.
fn store_code(
    e: &StoreError,
    metadata: &mut HashMap<String, String>,
    details: &mut ErrorDetails,
) -> Code {
    match e {
        StoreError::HashMismatch { claimed, actual } => {
            metadata.insert("claimed_id".into(), claimed.to_hex());
            metadata.insert("actual_id".into(), actual.to_hex());
            Code::InvalidArgument
        }
        StoreError::ChunkTooLarge { limit, .. } => {
            metadata.insert("limit_bytes".into(), limit.to_string());
            Code::InvalidArgument
        }
        StoreError::TooManyIds { limit, .. } => {
            metadata.insert("limit".into(), limit.to_string());
            Code::InvalidArgument
        }
        StoreError::EmptyChunk
        | StoreError::MalformedId { .. }
        | StoreError::MalformedManifest(_)
        | StoreError::RequestIdReused(_)
        | StoreError::InvalidArgument(_) => Code::InvalidArgument,
        StoreError::MissingChunks(ids) => {
            metadata.insert("missing_count".into(), ids.len().to_string());
            // The ids travel in the trailers, which clients bound (hyper 16 KiB, grpcio
            // 8 KiB): more than this and the caller gets a protocol error instead of the
            // answer. The first ones are enough to act on; FindMissing lists the rest.
            for (at, id) in ids.iter().take(MISSING_IDS_IN_STATUS).enumerate() {
                details.add_precondition_failure_violation(
                    "MISSING_CHUNK",
                    id.to_hex(),
                    if at == 0 {
                        "the account does not own this chunk; upload it first"
                    } else {
                        ""
                    },
                );
            }
            Code::FailedPrecondition
        }
        // What was not found, for a caller that acts on it without reading the sentence
        // (a library whose store runs apart).
        StoreError::NotFound { kind, id } => {
            metadata.insert("kind".into(), (*kind).into());
            metadata.insert("id".into(), id.to_hex());
            Code::NotFound
        }
        StoreError::SessionNotFound(session) => {
            metadata.insert("session_id".into(), session.clone());
            Code::NotFound
        }
        StoreError::SessionExpired(session) => {
            metadata.insert("session_id".into(), session.clone());
            Code::FailedPrecondition
        }
        StoreError::Corrupt(id) => {
            metadata.insert("chunk_id".into(), id.to_hex());
            Code::DataLoss
        }
        StoreError::StorageFull => {
            // The server's disk fills and is freed or grown by its administrator: the
            // device waits and tries again, never re-sending at once.
            metadata.insert("retry_after_ms".into(), STORAGE_FULL_RETRY_MS.to_string());
            details.set_retry_info(Some(std::time::Duration::from_millis(
                STORAGE_FULL_RETRY_MS,
            )));
            Code::ResourceExhausted
        }
        StoreError::Backend(_) | StoreError::Index(_) => Code::Unavailable,
    }
}

impl From<ApiError> for Status {
    fn from(err: ApiError) -> Self {
        to_status(&err)
    }
}

/// The `ErrorInfo.reason` of a status, if it carries one.
pub fn reason_of(status: &Status) -> Option<String> {
    status.get_details_error_info().map(|info| info.reason)
}

#[cfg(test)]
mod tests {
    use super::*;
    use keepsake_store::ChunkId;

    #[test]
    fn every_store_error_maps_to_a_code_and_its_reason() {
        let id = ChunkId::of(b"x");
        let cases: Vec<(StoreError, Code)> = vec![
            (
                StoreError::HashMismatch {
                    claimed: id,
                    actual: id,
                },
                Code::InvalidArgument,
            ),
            (
                StoreError::ChunkTooLarge { len: 2, limit: 1 },
                Code::InvalidArgument,
            ),
            (StoreError::EmptyChunk, Code::InvalidArgument),
            (
                StoreError::TooManyIds { count: 2, limit: 1 },
                Code::InvalidArgument,
            ),
            (StoreError::MalformedId { len: 3 }, Code::InvalidArgument),
            (
                StoreError::MalformedManifest("x".into()),
                Code::InvalidArgument,
            ),
            (
                StoreError::MissingChunks(vec![id]),
                Code::FailedPrecondition,
            ),
            (StoreError::NotFound { kind: "chunk", id }, Code::NotFound),
            (StoreError::SessionNotFound("s".into()), Code::NotFound),
            (
                StoreError::SessionExpired("s".into()),
                Code::FailedPrecondition,
            ),
            (
                StoreError::RequestIdReused("r".into()),
                Code::InvalidArgument,
            ),
            (
                StoreError::InvalidArgument("x".into()),
                Code::InvalidArgument,
            ),
            (StoreError::Corrupt(id), Code::DataLoss),
            (StoreError::StorageFull, Code::ResourceExhausted),
        ];
        for (err, code) in cases {
            let reason = err.reason();
            let status = to_status(&ApiError::Store(err));
            assert_eq!(status.code(), code, "{reason}");
            assert_eq!(reason_of(&status).as_deref(), Some(reason));
            assert!(!status.message().is_empty());
        }
        let status = to_status(&ApiError::Unauthenticated("no token".into()));
        assert_eq!(status.code(), Code::Unauthenticated);
        assert_eq!(reason_of(&status).as_deref(), Some("UNAUTHENTICATED"));
    }

    #[test]
    fn every_library_and_door_error_maps_to_a_code_and_its_reason() {
        use keepsake_library::LibraryError as L;
        let cases: Vec<(ApiError, Code, &str)> = vec![
            (
                L::NotFound {
                    kind: "asset",
                    id: "a".into(),
                }
                .into(),
                Code::NotFound,
                "NOT_FOUND",
            ),
            (
                L::NotLive("a".into()).into(),
                Code::FailedPrecondition,
                "ASSET_NOT_LIVE",
            ),
            (
                L::RequestIdReused("r".into()).into(),
                Code::InvalidArgument,
                "REQUEST_ID_REUSED",
            ),
            (
                L::ClockSkew { ahead_ms: 9 }.into(),
                Code::FailedPrecondition,
                "CLOCK_SKEW",
            ),
            (
                L::CursorExpired {
                    cursor: 1,
                    horizon: 2,
                }
                .into(),
                Code::FailedPrecondition,
                "CURSOR_EXPIRED",
            ),
            (
                L::CursorFromFuture { cursor: 9, head: 1 }.into(),
                Code::InvalidArgument,
                "CURSOR_FROM_FUTURE",
            ),
            (
                L::Unauthenticated("x".into()).into(),
                Code::Unauthenticated,
                "UNAUTHENTICATED",
            ),
            (
                L::PermissionDenied("x".into()).into(),
                Code::PermissionDenied,
                "PERMISSION_DENIED",
            ),
            (
                L::AccountExists("a".into()).into(),
                Code::AlreadyExists,
                "ACCOUNT_EXISTS",
            ),
            (
                L::QuotaExceeded {
                    used_bytes: 1,
                    reserved_bytes: 2,
                    needed_bytes: 3,
                    limit_bytes: 4,
                }
                .into(),
                Code::ResourceExhausted,
                "QUOTA_EXCEEDED",
            ),
            (
                L::ClientTooOld {
                    required: "1.2.0".into(),
                    got: "1.0.0".into(),
                }
                .into(),
                Code::FailedPrecondition,
                "CLIENT_TOO_OLD",
            ),
            (
                L::InvalidArgument("x".into()).into(),
                Code::InvalidArgument,
                "INVALID_ARGUMENT",
            ),
            (
                L::Store(StoreError::StorageFull).into(),
                Code::ResourceExhausted,
                "STORAGE_FULL",
            ),
            (
                ApiError::RateLimited { retry_after_ms: 5 },
                Code::ResourceExhausted,
                "RATE_LIMITED",
            ),
            (
                ApiError::Overloaded { retry_after_ms: 5 },
                Code::ResourceExhausted,
                "OVERLOADED",
            ),
            (
                ApiError::Unavailable("x".into()),
                Code::Unavailable,
                "UNAVAILABLE",
            ),
        ];
        for (err, code, reason) in cases {
            let status = to_status(&err);
            assert_eq!(status.code(), code, "{reason}");
            assert_eq!(reason_of(&status).as_deref(), Some(reason));
            assert!(!status.message().is_empty());
        }
        let quota = to_status(
            &L::QuotaExceeded {
                used_bytes: 1,
                reserved_bytes: 2,
                needed_bytes: 3,
                limit_bytes: 4,
            }
            .into(),
        );
        let meta = quota.get_details_error_info().unwrap().metadata;
        assert_eq!(
            (
                meta["used_bytes"].as_str(),
                meta["needed_bytes"].as_str(),
                meta["limit_bytes"].as_str()
            ),
            ("1", "3", "4")
        );
        let shed = to_status(&ApiError::RateLimited {
            retry_after_ms: 1500,
        });
        assert_eq!(
            shed.get_details_retry_info().unwrap().retry_delay,
            Some(std::time::Duration::from_millis(1500))
        );
    }

    #[test]
    fn missing_chunks_name_each_id_in_a_precondition_failure() {
        let ids = vec![ChunkId::of(b"a"), ChunkId::of(b"b")];
        let status = to_status(&ApiError::Store(StoreError::MissingChunks(ids.clone())));
        let failure = status.get_details_precondition_failure().unwrap();
        let subjects: Vec<_> = failure
            .violations
            .iter()
            .map(|v| v.subject.clone())
            .collect();
        assert_eq!(
            subjects,
            ids.iter().map(ChunkId::to_hex).collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_status_naming_thousands_of_missing_chunks_fits_in_a_clients_trailers() {
        // A commit of a large video whose chunks all went missing answered with 1,000 ids
        // in ~175 KiB of trailers; hyper's client refused them (REQUEST_HEADER_FIELDS_TOO_LARGE)
        // and the device saw only "h2 protocol error", pass after pass.
        let ids: Vec<ChunkId> = (0u32..5000)
            .map(|i| ChunkId::of(&i.to_le_bytes()))
            .collect();
        let status = to_status(&ApiError::Store(StoreError::MissingChunks(ids.clone())));
        let response: tonic::codegen::http::Response<()> = status.clone().into_http();
        let trailer_bytes: usize = response
            .headers()
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 32)
            .sum();
        assert!(trailer_bytes < 8 << 10, "{trailer_bytes} bytes of trailers");
        let named: Vec<String> = status
            .get_details_precondition_failure()
            .unwrap()
            .violations
            .into_iter()
            .map(|v| v.subject)
            .collect();
        assert_eq!(
            named,
            ids[..MISSING_IDS_IN_STATUS]
                .iter()
                .map(ChunkId::to_hex)
                .collect::<Vec<_>>()
        );
        let meta = status.get_details_error_info().unwrap().metadata;
        assert_eq!(meta["missing_count"], "5000");
    }
}
