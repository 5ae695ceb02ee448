//! The cloud: the library joined to the chunk store — sign-in and tokens, quota
//! reservations, commits that root their content in the store, purges that release it.

use crate::accounts::SignInFrom;
use crate::library::queue_release;
use crate::tokens::{Claims, PublicKeys, Signer25519, TokenVerifier};
use crate::{AccountInfo, AssetKind, CommitRequest, Committed, Library, LibraryError};
use keepsake_sql::{OptionalExtension, params};
use keepsake_store::{
    ChunkId, Manifest, ManifestId, Session, Splice, Store, StoreError, UnixMillis, random_hex,
};
use std::sync::{Arc, RwLock};

mod commits;
mod port;
mod reservations;
mod sign_in;
mod upkeep;

pub use commits::*;
pub use port::*;
pub use reservations::*;
pub use sign_in::*;
pub use upkeep::*;

/// The library joined to its chunk store.
pub struct Cloud {
    pub(crate) library: Library,
    pub(crate) store: Arc<dyn ChunkStore>,
    verifier: TokenVerifier,
    signer: RwLock<Signer25519>,
}

impl Cloud {
    /// Joins `library` to `store`, creating a signing key on first use.
    pub fn new(library: Library, store: Arc<dyn ChunkStore>) -> Result<Self, LibraryError> {
        let signer = match current_key(&library)? {
            Some(s) => s,
            None => insert_key(&library)?,
        };
        let cloud = Self {
            library,
            store,
            verifier: TokenVerifier::default(),
            signer: RwLock::new(signer),
        };
        cloud.verifier.replace(&cloud.public_keys()?)?;
        Ok(cloud)
    }

    /// The library (reads, metadata, albums, trash, the feed).
    pub fn library(&self) -> &Library {
        &self.library
    }

    /// A verifier sharing this cloud's keys, for every service that checks tokens.
    pub fn verifier(&self) -> TokenVerifier {
        self.verifier.clone()
    }

    /// The public half of every key that may have signed a live token.
    pub fn public_keys(&self) -> Result<PublicKeys, LibraryError> {
        let cutoff = self.library.clock.now_ms() - self.library.config.access_token_ttl_ms;
        let db = self.library.db();
        let mut stmt = db.prepare(
            "SELECT kid, secret FROM signing_keys WHERE retired_at IS NULL OR retired_at > ?1 ORDER BY created_at",
        )?;
        let rows: Vec<(String, Vec<u8>)> = stmt
            .query_map([cutoff], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        let keys = rows
            .into_iter()
            .map(|(kid, secret)| Signer25519::from_secret(kid, &secret).map(|s| s.public()))
            .collect::<Result<_, _>>()?;
        Ok(PublicKeys { keys })
    }

    /// Starts signing with a new key; tokens signed by the old one stay valid until they expire.
    pub fn rotate_signing_key(&self) -> Result<String, LibraryError> {
        let now = self.library.clock.now_ms();
        self.library.db().execute(
            "UPDATE signing_keys SET retired_at = ?1 WHERE retired_at IS NULL",
            [now],
        )?;
        let signer = insert_key(&self.library)?;
        let kid = signer.kid.clone();
        *self.signer.write().unwrap_or_else(|p| p.into_inner()) = signer;
        self.verifier.replace(&self.public_keys()?)?;
        tracing::info!(kid = %kid, "signing key rotated");
        Ok(kid)
    }

    /// Refuses clients older than the server's minimum.
    pub fn admit_client(&self, version: Option<&str>) -> Result<(), LibraryError> {
        self.library.config.min_client_version.admit(version)
    }

    /// The minimum client version.
    pub fn min_client_version(&self) -> crate::ClientVersion {
        self.library.config.min_client_version
    }
}

fn current_key(library: &Library) -> Result<Option<Signer25519>, LibraryError> {
    let row: Option<(String, Vec<u8>)> = library
        .db()
        .query_row(
            "SELECT kid, secret FROM signing_keys WHERE retired_at IS NULL ORDER BY created_at DESC LIMIT 1",
            (),
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    row.map(|(kid, secret)| Signer25519::from_secret(kid, &secret))
        .transpose()
}

fn insert_key(library: &Library) -> Result<Signer25519, LibraryError> {
    let mut secret = [0u8; 32];
    library.entropy.fill(&mut secret);
    let kid = random_hex(library.entropy.as_ref(), 6);
    library.db().execute(
        "INSERT INTO signing_keys (kid, secret, created_at) VALUES (?1, ?2, ?3)",
        params![kid, &secret[..], library.clock.now_ms()],
    )?;
    Signer25519::from_secret(kid, &secret)
}
