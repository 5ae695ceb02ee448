//! Who is calling: bearer tokens mapped to an account.
//!
//! Until the library issues real accounts and signed tokens, tokens come from an
//! explicit file of token -> account. No token, no access.

use crate::ApiError;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use tonic::{Request, Status};

/// The authenticated caller, placed in each request's extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The account the caller acts for.
    pub account: String,
    /// Whether the caller may run store-wide maintenance (scrub, GC).
    pub admin: bool,
}

/// One entry of the token file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenEntry {
    /// The secret the client sends as `authorization: Bearer <token>`.
    pub token: String,
    /// The account it acts for.
    pub account: String,
    /// Administrator rights.
    #[serde(default)]
    pub admin: bool,
}

/// The token file's contents.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TokenFile {
    /// Every issued token.
    pub tokens: Vec<TokenEntry>,
}

/// Tokens by their BLAKE3 hash, so lookups never compare secrets byte by byte.
#[derive(Debug, Clone, Default)]
pub struct TokenTable {
    by_hash: Arc<HashMap<[u8; 32], Identity>>,
}

impl TokenTable {
    /// Builds the table from a token file's entries.
    pub fn new(file: &TokenFile) -> Self {
        let by_hash = file
            .tokens
            .iter()
            .map(|e| {
                (
                    *blake3::hash(e.token.as_bytes()).as_bytes(),
                    Identity {
                        account: e.account.clone(),
                        admin: e.admin,
                    },
                )
            })
            .collect();
        Self {
            by_hash: Arc::new(by_hash),
        }
    }

    /// Reads a JSON token file.
    pub fn load(path: &Path) -> std::io::Result<Self> {
        let text = std::fs::read_to_string(path)?;
        let file: TokenFile = serde_json::from_str(&text)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        Ok(Self::new(&file))
    }

    /// The identity a bearer token stands for.
    pub fn identify(&self, token: &str) -> Option<Identity> {
        self.by_hash
            .get(blake3::hash(token.as_bytes()).as_bytes())
            .cloned()
    }

    /// A tonic interceptor that admits only known tokens.
    pub fn interceptor(
        &self,
    ) -> impl Fn(Request<()>) -> Result<Request<()>, Status> + Clone + use<> {
        let table = self.clone();
        move |mut req: Request<()>| {
            let token = req
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .ok_or_else(|| {
                    Status::from(ApiError::Unauthenticated(
                        "no access token: send `authorization: Bearer <token>`".into(),
                    ))
                })?;
            let identity = table.identify(token.trim()).ok_or_else(|| {
                Status::from(ApiError::Unauthenticated(
                    "the access token is not valid; ask the server owner for a new one".into(),
                ))
            })?;
            tracing::Span::current().record("account", identity.account.as_str());
            req.extensions_mut().insert(identity);
            Ok(req)
        }
    }
}

/// The caller of a request that passed the interceptor.
pub fn identity<T>(req: &Request<T>) -> Result<Identity, Status> {
    req.extensions()
        .get::<Identity>()
        .cloned()
        .ok_or_else(|| ApiError::Unauthenticated("request was not authenticated".into()).into())
}
