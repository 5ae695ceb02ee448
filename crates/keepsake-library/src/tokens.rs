//! Signed, short-lived access tokens that any service can check without asking the library.
//!
//! A token is `ks1.<key id>.<claims as hex JSON>.<Ed25519 signature as hex>`. It names its
//! signing key, so keys rotate without logging anyone out: retired keys keep verifying until
//! every token they signed has expired. Services that run apart from the library only need
//! the public keys ([`PublicKeys`]).

use crate::LibraryError;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use keepsake_store::UnixMillis;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

const PREFIX: &str = "ks1";
/// Longest token accepted; anything longer is refused before it is parsed.
pub const MAX_TOKEN_LEN: usize = 2048;

/// What a token says about its bearer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The account it acts for.
    #[serde(rename = "a")]
    pub account: String,
    /// The enrolled device, if the token was issued to one (else a password sign-in).
    #[serde(rename = "d", default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// May run server-wide maintenance and manage accounts.
    #[serde(rename = "adm", default)]
    pub admin: bool,
    /// Issued at (Unix ms).
    #[serde(rename = "iat")]
    pub issued_at: UnixMillis,
    /// Expires at (Unix ms).
    #[serde(rename = "exp")]
    pub expires_at: UnixMillis,
}

/// Why a token was refused. Every variant means "sign in or refresh again".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a Keepsake token at all.
    #[error("the access token is malformed")]
    Malformed,
    /// Signed by a key this server does not know (or no longer trusts).
    #[error("the access token was signed by an unknown key {0:?}")]
    UnknownKey(String),
    /// The signature does not match.
    #[error("the access token's signature is not valid")]
    BadSignature,
    /// Past its expiry.
    #[error("the access token expired {ago_ms} ms ago; refresh it")]
    Expired {
        /// How long ago.
        ago_ms: i64,
    },
}

/// A public key with its id, as exported for services that run apart from the library.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicKey {
    /// Key id.
    pub kid: String,
    /// Ed25519 public key, hex.
    pub key: String,
}

/// The public half of every key that may have signed a live token.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicKeys {
    /// The keys.
    pub keys: Vec<PublicKey>,
}

/// Checks tokens against a set of public keys; cheap to clone and share between services.
#[derive(Debug, Clone, Default)]
pub struct TokenVerifier {
    keys: Arc<RwLock<BTreeMap<String, VerifyingKey>>>,
    unknown_key: Arc<UnknownKeyHook>,
}

/// Called when a token names a key this verifier does not hold.
type Hook = Box<dyn Fn() + Send + Sync>;

#[derive(Default)]
struct UnknownKeyHook(RwLock<Option<Hook>>);

impl std::fmt::Debug for UnknownKeyHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UnknownKeyHook")
    }
}

impl TokenVerifier {
    /// A verifier trusting exactly `keys`.
    pub fn new(keys: &PublicKeys) -> Result<Self, LibraryError> {
        let verifier = Self::default();
        verifier.replace(keys)?;
        Ok(verifier)
    }

    /// Replaces the trusted keys (after a rotation); every clone sees the change.
    pub fn replace(&self, keys: &PublicKeys) -> Result<(), LibraryError> {
        let mut map = BTreeMap::new();
        for k in &keys.keys {
            let bytes: [u8; 32] = hex::decode(&k.key)
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| {
                    LibraryError::InvalidArgument(format!(
                        "public key {:?} is not 32 hex bytes",
                        k.kid
                    ))
                })?;
            let key = VerifyingKey::from_bytes(&bytes).map_err(|_| {
                LibraryError::InvalidArgument(format!(
                    "public key {:?} is not an Ed25519 key",
                    k.kid
                ))
            })?;
            map.insert(k.kid.clone(), key);
        }
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = map;
        Ok(())
    }

    /// Calls `hook` (on the verifying thread: it must only wake something) whenever a
    /// token names a key this verifier does not hold — another server may have rotated to
    /// it, and whoever keeps the keys can take them up at once rather than at its next look.
    /// One hook is shared by the verifier and its clones; a later call replaces it.
    pub fn on_unknown_key(&self, hook: impl Fn() + Send + Sync + 'static) {
        *self
            .unknown_key
            .0
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Some(Box::new(hook));
    }

    /// The claims of a valid, unexpired token.
    pub fn verify(&self, token: &str, now: UnixMillis) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed);
        }
        let mut parts = token.split('.');
        let (Some(PREFIX), Some(kid), Some(body), Some(sig), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(TokenError::Malformed);
        };
        let signature: [u8; 64] = hex::decode(sig)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or(TokenError::Malformed)?;
        {
            let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
            let Some(key) = keys.get(kid) else {
                if let Some(hook) = &*self.unknown_key.0.read().unwrap_or_else(|p| p.into_inner()) {
                    hook();
                }
                return Err(TokenError::UnknownKey(kid.to_string()));
            };
            let signed = &token[..PREFIX.len() + 1 + kid.len() + 1 + body.len()];
            key.verify_strict(signed.as_bytes(), &Signature::from_bytes(&signature))
                .map_err(|_| TokenError::BadSignature)?;
        }
        let json = hex::decode(body).map_err(|_| TokenError::Malformed)?;
        let claims: Claims = serde_json::from_slice(&json).map_err(|_| TokenError::Malformed)?;
        if claims.expires_at <= now {
            return Err(TokenError::Expired {
                ago_ms: now - claims.expires_at,
            });
        }
        Ok(claims)
    }
}

/// A signing key and its id.
pub(crate) struct Signer25519 {
    pub kid: String,
    pub key: SigningKey,
}

impl Signer25519 {
    pub fn from_secret(kid: String, secret: &[u8]) -> Result<Self, LibraryError> {
        let bytes: [u8; 32] = secret.try_into().map_err(|_| {
            LibraryError::InvalidArgument(format!("signing key {kid:?} is corrupt"))
        })?;
        Ok(Self {
            kid,
            key: SigningKey::from_bytes(&bytes),
        })
    }

    pub fn public(&self) -> PublicKey {
        PublicKey {
            kid: self.kid.clone(),
            key: hex::encode(self.key.verifying_key().as_bytes()),
        }
    }

    pub fn sign(&self, claims: &Claims) -> String {
        let body = hex::encode(serde_json::to_vec(claims).expect("claims serialize"));
        let signed = format!("{PREFIX}.{}.{body}", self.kid);
        let signature = self.key.sign(signed.as_bytes());
        format!("{signed}.{}", hex::encode(signature.to_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer(seed: u8, kid: &str) -> Signer25519 {
        Signer25519::from_secret(kid.into(), &[seed; 32]).unwrap()
    }

    fn claims() -> Claims {
        Claims {
            account: "alice".into(),
            device: Some("d1".into()),
            admin: false,
            issued_at: 1_000,
            expires_at: 2_000,
        }
    }

    #[test]
    fn a_token_of_an_unknown_key_wakes_whoever_keeps_the_keys_and_verifies_once_they_are_taken_up()
    {
        use std::sync::atomic::{AtomicU32, Ordering};
        let (old, new) = (signer(1, "k1"), signer(2, "k2"));
        let v = TokenVerifier::new(&PublicKeys {
            keys: vec![old.public()],
        })
        .unwrap();
        let woken = Arc::new(AtomicU32::new(0));
        let counter = woken.clone();
        v.clone().on_unknown_key(move || {
            counter.fetch_add(1, Ordering::Relaxed);
        });
        let token = new.sign(&claims());
        assert_eq!(
            v.verify(&token, 1_500),
            Err(TokenError::UnknownKey("k2".into()))
        );
        assert_eq!(woken.load(Ordering::Relaxed), 1, "a clone shares the hook");
        // A known key's token wakes nobody.
        v.verify(&old.sign(&claims()), 1_500).unwrap();
        assert_eq!(woken.load(Ordering::Relaxed), 1);
        v.replace(&PublicKeys {
            keys: vec![old.public(), new.public()],
        })
        .unwrap();
        assert_eq!(v.verify(&token, 1_500), Ok(claims()));
    }

    #[test]
    fn a_signed_token_verifies_until_it_expires() {
        let s = signer(1, "k1");
        let v = TokenVerifier::new(&PublicKeys {
            keys: vec![s.public()],
        })
        .unwrap();
        let token = s.sign(&claims());
        assert_eq!(v.verify(&token, 1_500), Ok(claims()));
        assert_eq!(
            v.verify(&token, 2_500),
            Err(TokenError::Expired { ago_ms: 500 })
        );
    }

    #[test]
    fn tampered_claims_or_foreign_keys_are_refused() {
        let s = signer(1, "k1");
        let v = TokenVerifier::new(&PublicKeys {
            keys: vec![s.public()],
        })
        .unwrap();
        let token = s.sign(&claims());
        let mut admin = claims();
        admin.admin = true;
        let forged_body = hex::encode(serde_json::to_vec(&admin).unwrap());
        let parts: Vec<&str> = token.split('.').collect();
        let forged = format!("ks1.k1.{forged_body}.{}", parts[3]);
        assert_eq!(v.verify(&forged, 1_500), Err(TokenError::BadSignature));
        // Same key id, different secret: the signature cannot match.
        let impostor = signer(2, "k1").sign(&claims());
        assert_eq!(v.verify(&impostor, 1_500), Err(TokenError::BadSignature));
        let other = signer(3, "k9").sign(&claims());
        assert_eq!(
            v.verify(&other, 1_500),
            Err(TokenError::UnknownKey("k9".into()))
        );
        for junk in ["", "ks1", "ks1.k1.zz.zz", "Bearer x", &"a".repeat(5000)] {
            assert_eq!(v.verify(junk, 1_500), Err(TokenError::Malformed));
        }
    }
}
