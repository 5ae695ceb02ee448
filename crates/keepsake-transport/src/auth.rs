//! Who is calling, and whether their client is new enough.
//!
//! Every Keepsake server checks the caller's signed access token itself (no round
//! trip to the library) and the client version the caller sends in
//! [`CLIENT_VERSION_HEADER`], in the [`crate::guard`] layer. The version is checked
//! first, so an outdated client hears "update" rather than a confusing later error.
//!
//! A library that runs apart from its store calls the store for an account with a
//! [`ServiceKey`] credential in [`SERVICE_HEADER`] instead of anyone's token: accepted on
//! the ChunkStore service alone, and only by a server given the same key.

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

/// The header a library's service credential travels in.
pub const SERVICE_HEADER: &str = "x-keepsake-service";
/// The only calls a service credential is good for.
const SERVICE_PATH_PREFIX: &str = "/keepsake.v1.ChunkStore/";
/// How long a service credential lives; the caller makes a fresh one for every call.
const SERVICE_CREDENTIAL_MS: i64 = 60_000;
/// How far ahead of this server's clock a credential's expiry may be (the nodes' clocks
/// differ a little; a credential good for days must not be accepted).
const SERVICE_SKEW_MS: i64 = 5 * 60_000;

/// The secret a library and its store share, so the library can act for an account on the
/// store without holding anyone's token: `svc1.<expiry>.<account as hex>.<keyed BLAKE3>`.
#[derive(Clone)]
pub struct ServiceKey([u8; 32]);

impl std::fmt::Debug for ServiceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServiceKey(..)")
    }
}

impl ServiceKey {
    /// A new random key.
    pub fn generate(entropy: &dyn keepsake_store::Entropy) -> Self {
        let mut key = [0u8; 32];
        entropy.fill(&mut key);
        Self(key)
    }

    /// The key as its file holds it: 64 hex digits.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// A key from 64 hex digits (surrounding white space ignored).
    pub fn from_hex(text: &str) -> Result<Self, ApiError> {
        let bytes = hex::decode(text.trim())
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or_else(|| ApiError::Unauthenticated("a service key is 64 hex digits".into()))?;
        Ok(Self(bytes))
    }

    fn mac(&self, expires_at: i64, account_hex: &str) -> String {
        let mut hasher = blake3::Hasher::new_keyed(&self.0);
        hasher.update(b"keepsake service credential v1\0");
        hasher.update(&expires_at.to_le_bytes());
        hasher.update(account_hex.as_bytes());
        hasher.finalize().to_hex().to_string()
    }

    /// A credential to act for `account`, good for a minute from `now_ms`.
    pub fn credential(&self, account: &str, now_ms: i64) -> String {
        let expires_at = now_ms + SERVICE_CREDENTIAL_MS;
        let account_hex = hex::encode(account);
        let mac = self.mac(expires_at, &account_hex);
        format!("svc1.{expires_at}.{account_hex}.{mac}")
    }

    /// The account a credential acts for, if this key made it and it is live at `now_ms`.
    pub fn verify(&self, credential: &str, now_ms: i64) -> Result<String, ApiError> {
        let refuse = |why: &str| {
            ApiError::Unauthenticated(format!(
                "service credential refused: {why}; check that the library and the store share one --service-key"
            ))
        };
        let mut parts = credential.trim().split('.');
        let (Some("svc1"), Some(expiry), Some(account_hex), Some(mac), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(refuse("malformed"));
        };
        let expires_at: i64 = expiry.parse().map_err(|_| refuse("malformed"))?;
        // Compared as hashes of equal length in constant time: blake3's Hash eq is.
        let expected = blake3::Hash::from_hex(self.mac(expires_at, account_hex))
            .map_err(|_| refuse("malformed"))?;
        let given = blake3::Hash::from_hex(mac).map_err(|_| refuse("malformed"))?;
        if expected != given {
            return Err(refuse("not made with this server's key"));
        }
        if expires_at <= now_ms {
            return Err(refuse("expired"));
        }
        if expires_at > now_ms + SERVICE_CREDENTIAL_MS + SERVICE_SKEW_MS {
            return Err(refuse("its expiry is too far ahead of this server's clock"));
        }
        let account = hex::decode(account_hex)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .filter(|a| !a.is_empty())
            .ok_or_else(|| refuse("malformed"))?;
        Ok(account)
    }
}

/// Checks client versions and access tokens for every service of one server.
#[derive(Clone)]
pub struct Authenticator {
    verifier: TokenVerifier,
    clock: Arc<dyn Clock>,
    min_version: ClientVersion,
    service: Option<ServiceKey>,
}

impl Authenticator {
    /// Trusts tokens `verifier` accepts at `clock`'s time; refuses clients below `min_version`.
    pub fn new(verifier: TokenVerifier, clock: Arc<dyn Clock>, min_version: ClientVersion) -> Self {
        Self {
            verifier,
            clock,
            min_version,
            service: None,
        }
    }

    /// Also accepts a library's service credentials made with `key`, on the ChunkStore.
    pub fn with_service_key(mut self, key: ServiceKey) -> Self {
        self.service = Some(key);
        self
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

    /// The caller a valid token (or, on the ChunkStore, a service credential) names;
    /// `None` without either; an error for a bad one.
    pub fn identify(
        &self,
        path: &str,
        headers: &http::HeaderMap,
    ) -> Result<Option<Identity>, ApiError> {
        if let Some(credential) = headers.get(SERVICE_HEADER) {
            let (Some(key), true) = (&self.service, path.starts_with(SERVICE_PATH_PREFIX)) else {
                return Err(ApiError::Unauthenticated(
                    "a service credential is accepted only by a store given its --service-key"
                        .into(),
                ));
            };
            let credential = credential.to_str().unwrap_or_default();
            let account = key.verify(credential, self.clock.now_ms())?;
            tracing::Span::current().record("account", account.as_str());
            // The library acting for the account: it may also scrub and re-check, which
            // the ChunkStore keeps to administrators.
            return Ok(Some(Identity {
                account,
                device: None,
                admin: true,
            }));
        }
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
