//! Who is calling, and whether their client is new enough.
//!
//! Every Keepsake server checks the caller's signed access token itself (no round
//! trip to the library) and the client version the caller sends in
//! [`CLIENT_VERSION_HEADER`], in the [`crate::guard`] layer. The version is checked
//! first, so an outdated client hears "update" rather than a confusing later error.

use crate::ApiError;
use keepsake_library::ClientVersion;
use keepsake_library::tokens::TokenVerifier;
use keepsake_store::Clock;
use std::sync::Arc;
use tonic::{Request, Status};

pub use crate::client::{CLIENT_VERSION_HEADER, TOKEN_HEADER};

/// The longest token looked at (Keepsake's are ~300 bytes); a longer one is refused
/// before any parsing.
const MAX_TOKEN_BYTES: usize = 4096;

/// The authenticated caller, placed in each request's extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The account the caller acts for.
    pub account: String,
    /// The enrolled device, when the token was issued to one.
    pub device: Option<String>,
    /// May manage accounts and run server-wide maintenance.
    pub admin: bool,
}

/// Checks client versions and access tokens for every service of one server.
#[derive(Clone)]
pub struct Authenticator {
    verifier: TokenVerifier,
    clock: Arc<dyn Clock>,
    min_version: ClientVersion,
}

impl Authenticator {
    /// Trusts tokens `verifier` accepts at `clock`'s time; refuses clients below `min_version`.
    pub fn new(verifier: TokenVerifier, clock: Arc<dyn Clock>, min_version: ClientVersion) -> Self {
        Self {
            verifier,
            clock,
            min_version,
        }
    }

    /// The time tokens are checked at.
    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Refuses a client older than the minimum (a client that sends no version is 0.0.0).
    pub fn check_version(&self, headers: &http::HeaderMap) -> Result<(), ApiError> {
        let version = headers
            .get(CLIENT_VERSION_HEADER)
            .and_then(|v| v.to_str().ok());
        self.min_version.admit(version).map_err(ApiError::Library)
    }

    /// The caller a valid token names; `None` without a token; an error for a bad one.
    pub fn identify(&self, headers: &http::HeaderMap) -> Result<Option<Identity>, ApiError> {
        let token = match (headers.get("authorization"), headers.get(TOKEN_HEADER)) {
            (None, None) => return Ok(None),
            (Some(value), _) => value.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")),
            (None, Some(value)) => value.to_str().ok(),
        }
        .ok_or_else(|| {
            ApiError::Unauthenticated(
                "send the access token as `authorization: Bearer <token>`".into(),
            )
        })?;
        if token.len() > MAX_TOKEN_BYTES {
            return Err(ApiError::Unauthenticated(format!(
                "the access token is {} bytes; Keepsake's are under {MAX_TOKEN_BYTES}: sign in again",
                token.len()
            )));
        }
        let claims = self
            .verifier
            .verify(token.trim(), self.clock.now_ms())
            .map_err(|e| {
                ApiError::Unauthenticated(format!(
                    "{e}; sign in again or refresh the device's token"
                ))
            })?;
        let span = tracing::Span::current();
        span.record("account", claims.account.as_str());
        if let Some(device) = &claims.device {
            span.record("device", device.as_str());
        }
        Ok(Some(Identity {
            account: claims.account,
            device: claims.device,
            admin: claims.admin,
        }))
    }
}

/// The caller of a request that passed the guard.
pub fn identity<T>(req: &Request<T>) -> Result<Identity, Status> {
    req.extensions()
        .get::<Identity>()
        .cloned()
        .ok_or_else(|| ApiError::Unauthenticated("this call needs an access token".into()).into())
}

/// The client version a request declared, if any.
pub fn client_version<T>(req: &Request<T>) -> Option<String> {
    req.metadata()
        .get(CLIENT_VERSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}
