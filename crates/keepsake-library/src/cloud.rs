//! The cloud: the library joined to the chunk store — sign-in and tokens, quota
//! reservations, commits that root their content in the store, purges that release it.

use crate::accounts::SignInFrom;
use crate::library::queue_release;
use crate::tokens::{Claims, PublicKeys, Signer25519, TokenVerifier};
use crate::{AccountInfo, AssetKind, CommitRequest, Committed, Library, LibraryError};
use keepsake_store::{
    ChunkId, Manifest, ManifestId, Session, Splice, Store, StoreError, UnixMillis, random_hex,
};
use rusqlite::{OptionalExtension, params};
use std::sync::{Arc, RwLock};

/// What the library needs from the chunk store (the embedded [`Store`] implements it;
/// a remote store is reached through the transport).
pub trait ChunkStore: Send + Sync {
    /// Bytes the account owns.
    fn used_bytes(&self, account: &str) -> Result<u64, StoreError>;
    /// Opens an upload session (idempotent per request id).
    fn open_session(
        &self,
        account: &str,
        bytes: u64,
        ttl_ms: i64,
        request_id: Option<&str>,
    ) -> Result<Session, StoreError>;
    /// Extends a session's lease.
    fn renew_session(
        &self,
        account: &str,
        session_id: &str,
        ttl_ms: i64,
    ) -> Result<Session, StoreError>;
    /// Ends a session.
    fn end_session(&self, account: &str, session_id: &str) -> Result<(), StoreError>;
    /// A manifest the account owns.
    fn manifest(&self, account: &str, id: &ManifestId) -> Result<Manifest, StoreError>;
    /// Stores a manifest whose chunks the account owns, under a live session.
    fn put_manifest(
        &self,
        account: &str,
        session_id: &str,
        manifest: &Manifest,
    ) -> Result<ManifestId, StoreError>;
    /// Stores the manifest `splices` make of `base` (one the account owns), as
    /// [`ChunkStore::put_manifest`] would store it whole.
    fn put_manifest_edit(
        &self,
        account: &str,
        session_id: &str,
        base: &ManifestId,
        splices: &[Splice],
        file_hash: ChunkId,
    ) -> Result<ManifestId, StoreError>;
    /// Roots a manifest whose chunks the account owns, for `holder`.
    fn reference(&self, account: &str, id: &ManifestId, holder: &str) -> Result<(), StoreError>;
    /// Drops `holder`'s root.
    fn release(&self, account: &str, id: &ManifestId, holder: &str) -> Result<(), StoreError>;
    /// A file the account owns written to `out` chunk by chunk, so no more than one chunk is
    /// held; refused with `FileTooLarge` before any byte when it is over `max_len`, and fails
    /// after the last byte when the whole does not match its hash.
    fn copy_file(
        &self,
        account: &str,
        id: &ManifestId,
        max_len: u64,
        out: &mut dyn std::io::Write,
    ) -> std::io::Result<u64>;
    /// Verifies every stored byte and drops corrupt chunks from the index.
    fn scrub(&self) -> Result<keepsake_store::ScrubReport, StoreError>;
    /// Stores a small file (a preview) for the account and roots it for `holder`.
    fn store_file(
        &self,
        account: &str,
        bytes: &[u8],
        holder: &str,
    ) -> Result<ManifestId, StoreError>;
}

/// What a library scrub verified and flagged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LibraryScrub {
    /// The store's report (packs, chunks and bytes verified; corrupt chunks dropped).
    pub store: keepsake_store::ScrubReport,
    /// Live or trashed assets in the library when the scrub finished.
    pub assets_verified: u64,
    /// Assets this scrub flagged as damaged.
    pub damaged: Vec<DamagedAsset>,
    /// Assets whose previews failed verification and were queued to be made again.
    pub previews_requeued: usize,
}

/// An asset a scrub found damaged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DamagedAsset {
    /// Its account.
    pub account: String,
    /// The asset.
    pub asset_id: String,
    /// Its file name, to tell a person which photo.
    pub original_name: String,
}

/// Pieces a stored preview is cut into (well under the store's chunk limit).
const PIECE: usize = 4 << 20;

impl ChunkStore for Store {
    fn scrub(&self) -> Result<keepsake_store::ScrubReport, StoreError> {
        Store::scrub(self)
    }
    fn used_bytes(&self, account: &str) -> Result<u64, StoreError> {
        Ok(self.usage(account)?.bytes)
    }
    fn open_session(
        &self,
        account: &str,
        bytes: u64,
        ttl_ms: i64,
        request_id: Option<&str>,
    ) -> Result<Session, StoreError> {
        self.begin_session(account, bytes, ttl_ms, request_id)
    }
    fn renew_session(
        &self,
        account: &str,
        session_id: &str,
        ttl_ms: i64,
    ) -> Result<Session, StoreError> {
        Store::renew_session(self, account, session_id, ttl_ms)
    }
    fn end_session(&self, account: &str, session_id: &str) -> Result<(), StoreError> {
        Store::end_session(self, account, session_id)
    }
    fn manifest(&self, account: &str, id: &ManifestId) -> Result<Manifest, StoreError> {
        self.get_manifest(account, id)
    }
    fn put_manifest(
        &self,
        account: &str,
        session_id: &str,
        manifest: &Manifest,
    ) -> Result<ManifestId, StoreError> {
        Store::put_manifest(self, account, session_id, manifest)
    }
    fn put_manifest_edit(
        &self,
        account: &str,
        session_id: &str,
        base: &ManifestId,
        splices: &[Splice],
        file_hash: ChunkId,
    ) -> Result<ManifestId, StoreError> {
        Store::put_manifest_edit(self, account, session_id, base, splices, file_hash)
    }
    fn reference(&self, account: &str, id: &ManifestId, holder: &str) -> Result<(), StoreError> {
        Store::reference(self, account, id, holder)
    }
    fn release(&self, account: &str, id: &ManifestId, holder: &str) -> Result<(), StoreError> {
        Store::release(self, account, id, holder)
    }
    fn copy_file(
        &self,
        account: &str,
        id: &ManifestId,
        max_len: u64,
        out: &mut dyn std::io::Write,
    ) -> std::io::Result<u64> {
        let manifest = self
            .get_manifest(account, id)
            .map_err(std::io::Error::other)?;
        if manifest.total_len > max_len {
            return Err(std::io::Error::new(
                std::io::ErrorKind::FileTooLarge,
                format!("{} bytes, over {max_len}", manifest.total_len),
            ));
        }
        let mut whole = blake3::Hasher::new();
        for entry in &manifest.entries {
            let chunk = self
                .get_chunk(account, &entry.chunk)
                .map_err(std::io::Error::other)?;
            whole.update(&chunk);
            out.write_all(&chunk)?;
        }
        if ChunkId(*whole.finalize().as_bytes()) != manifest.file_hash {
            return Err(std::io::Error::other(StoreError::Corrupt(*id)));
        }
        Ok(manifest.total_len)
    }
    fn store_file(
        &self,
        account: &str,
        bytes: &[u8],
        holder: &str,
    ) -> Result<ManifestId, StoreError> {
        let pieces: Vec<(ChunkId, bytes::Bytes)> = bytes
            .chunks(PIECE)
            .map(|p| {
                (
                    ChunkId(*blake3::hash(p).as_bytes()),
                    bytes::Bytes::copy_from_slice(p),
                )
            })
            .collect();
        let session = self.begin_session(account, bytes.len() as u64 + 4096, 600_000, None)?;
        let stored = (|| {
            self.put_chunks(account, &session.id, &pieces)?;
            let manifest = Manifest::from_chunks(&pieces, ChunkId(*blake3::hash(bytes).as_bytes()));
            let id = self.put_manifest(account, &session.id, &manifest)?;
            Store::reference(self, account, &id, holder)?;
            Ok(id)
        })();
        let _ = self.end_session(account, &session.id);
        stored
    }
}

/// An access token and when it expires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedToken {
    /// The bearer token.
    pub token: String,
    /// Its expiry (Unix ms).
    pub expires_at: UnixMillis,
}

/// What enrolling a device hands back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enrolment {
    /// The device's id.
    pub device_id: String,
    /// Its long-lived secret: exchanged for access tokens, stored on the server only hashed.
    pub device_token: String,
    /// A first access token.
    pub access: IssuedToken,
}

/// Quota held for an upload, and the store session to upload under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    /// Its id, which is also the store session's id.
    pub reservation_id: String,
    /// Bytes still reserved.
    pub bytes: u64,
    /// When it lapses unless renewed.
    pub expires_at: UnixMillis,
}

/// A commit as a device sends it: the content is named by its manifest, whose size and
/// whole-file hash the cloud reads from the store rather than trusting the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitAsset {
    /// Client-chosen, per account.
    pub request_id: String,
    /// `None` for a new asset.
    pub asset_id: Option<String>,
    /// The version the edit started from.
    pub base_version: Option<u32>,
    /// The uploaded manifest.
    pub manifest: ManifestId,
    /// Photo or video.
    pub kind: AssetKind,
    /// When it was taken (or the file time), if known.
    pub capture_time: Option<UnixMillis>,
    /// Pixel width.
    pub width: Option<u32>,
    /// Pixel height.
    pub height: Option<u32>,
    /// The original file name (data, never a path).
    pub original_name: String,
    /// Where it is in the library folder (untrusted; empty: `original_name` at the top).
    pub path: String,
    /// The committing device.
    pub device: String,
    /// The reservation the upload ran under, if any.
    pub reservation_id: Option<String>,
    /// The manifest itself, stored under the reservation first when the store lacks it.
    pub manifest_upload: Option<ManifestUpload>,
}

/// A manifest sent with its commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManifestUpload {
    /// Every entry.
    Whole(Manifest),
    /// Splices of a manifest the account holds (an edited file).
    Edit {
        /// The manifest the splices copy from.
        base: ManifestId,
        /// In order; the new manifest is their concatenation.
        splices: Vec<Splice>,
        /// BLAKE3 of the whole new file.
        file_hash: ChunkId,
    },
}

/// What a maintenance pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Maintenance {
    /// Assets purged because they sat in Recently Deleted past the retention period.
    pub trash_expired: usize,
    /// Reservations whose lease ran out.
    pub reservations_expired: usize,
    /// Store references released (purges, abandoned commits).
    pub refs_released: usize,
    /// Tombstones compacted.
    pub tombstones_compacted: u64,
}

/// The library joined to its chunk store.
pub struct Cloud {
    pub(crate) library: Library,
    pub(crate) store: Arc<dyn ChunkStore>,
    verifier: TokenVerifier,
    signer: RwLock<Signer25519>,
}

/// The store reference a commit takes: derived from the request id, so a retried
/// commit takes the same one.
fn holder_for(account: &str, request_id: &str) -> String {
    let digest = blake3::hash(format!("{account}\0{request_id}").as_bytes());
    format!("commit:{}", &digest.to_hex()[..32])
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

    fn issue(
        &self,
        account: &str,
        device: Option<&str>,
        admin: bool,
    ) -> Result<IssuedToken, LibraryError> {
        let now = self.library.clock.now_ms();
        let expires_at = now + self.library.config.access_token_ttl_ms;
        let claims = Claims {
            account: account.to_string(),
            device: device.map(str::to_string),
            admin,
            issued_at: now,
            expires_at,
        };
        let token = self
            .signer
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .sign(&claims);
        Ok(IssuedToken { token, expires_at })
    }

    /// Creates an account (`plan` `None` = the first configured plan).
    pub fn create_account(
        &self,
        account: &str,
        password: &str,
        plan: Option<&str>,
        admin: bool,
    ) -> Result<AccountInfo, LibraryError> {
        let plan = match plan {
            Some(p) => p.to_string(),
            None => self
                .library
                .config
                .plans
                .first()
                .map(|p| p.name.clone())
                .ok_or_else(|| LibraryError::InvalidArgument("no plans are configured".into()))?,
        };
        self.library
            .create_account(account, password, &plan, admin)?;
        self.account_info(account)
    }

    /// Signs in with a password: an access token for the account (not tied to a device).
    pub fn sign_in(&self, account: &str, password: &str) -> Result<IssuedToken, LibraryError> {
        self.sign_in_from(account, password, SignInFrom::Local)
    }

    /// [`Cloud::sign_in`] by a client at `from` (throttled per account and per address).
    pub fn sign_in_from(
        &self,
        account: &str,
        password: &str,
        from: SignInFrom,
    ) -> Result<IssuedToken, LibraryError> {
        let admin = self.library.check_credentials(account, password, from)?;
        self.issue(account, None, admin)
    }

    /// Enrols a device with the account's credentials.
    pub fn enroll_device(
        &self,
        account: &str,
        password: &str,
        name: &str,
        platform: &str,
        client_version: &str,
    ) -> Result<Enrolment, LibraryError> {
        self.enroll_device_from(
            account,
            password,
            name,
            platform,
            client_version,
            SignInFrom::Local,
        )
    }

    /// [`Cloud::enroll_device`] by a client at `from`.
    pub fn enroll_device_from(
        &self,
        account: &str,
        password: &str,
        name: &str,
        platform: &str,
        client_version: &str,
        from: SignInFrom,
    ) -> Result<Enrolment, LibraryError> {
        self.admit_client(Some(client_version))?;
        let admin = self.library.check_credentials(account, password, from)?;
        let (device_id, device_token) =
            self.library
                .add_device(account, name, platform, client_version)?;
        let access = self.issue(account, Some(&device_id), admin)?;
        Ok(Enrolment {
            device_id,
            device_token,
            access,
        })
    }

    /// Replaces the password after checking the old one (throttled like a sign-in).
    pub fn change_password_from(
        &self,
        account: &str,
        old: &str,
        new: &str,
        from: SignInFrom,
    ) -> Result<(), LibraryError> {
        crate::accounts::check_password(new)?;
        self.library.check_credentials(account, old, from)?;
        self.library.set_password(account, new)
    }

    /// Exchanges a device token for a fresh access token.
    pub fn refresh_token(
        &self,
        device_id: &str,
        device_token: &str,
        client_version: &str,
    ) -> Result<IssuedToken, LibraryError> {
        self.admit_client(Some(client_version))?;
        let account = self
            .library
            .device_by_token(device_id, device_token, client_version)?;
        let (_, admin) = self.library.account_plan(&account)?;
        self.issue(&account, Some(device_id), admin)
    }

    /// Plan, exact usage from the store, and reservations.
    pub fn account_info(&self, account: &str) -> Result<AccountInfo, LibraryError> {
        let (plan, admin) = self.library.account_plan(account)?;
        let used_bytes = self.store.used_bytes(account)?;
        let reserved_bytes = held_bytes(
            &self.library.db(),
            account,
            self.library.clock.now_ms(),
            None,
        )?;
        Ok(AccountInfo {
            account: account.to_string(),
            plan,
            used_bytes,
            reserved_bytes,
            admin,
            failed_sign_ins: self.library.failed_sign_ins(account)?,
        })
    }

    /// Deletes an account after checking its password: every asset is purged, every store
    /// reference released (the store's GC then reclaims the bytes), every device revoked.
    pub fn delete_account(&self, account: &str, password: &str) -> Result<(), LibraryError> {
        self.delete_account_from(account, password, SignInFrom::Local)
    }

    /// [`Cloud::delete_account`] asked by a client at `from`.
    pub fn delete_account_from(
        &self,
        account: &str,
        password: &str,
        from: SignInFrom,
    ) -> Result<(), LibraryError> {
        self.library.check_credentials(account, password, from)?;
        let now = self.library.clock.now_ms();
        let sessions: Vec<String> = {
            let mut db = self.library.db();
            let tx = db.transaction()?;
            let versions: Vec<(Vec<u8>, String)> = {
                let mut stmt = tx.prepare(
                    "SELECT manifest, holder FROM versions WHERE account = ?1 AND holder IS NOT NULL",
                )?;
                stmt.query_map([account], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<Result<_, _>>()?
            };
            for (manifest, holder) in &versions {
                queue_release(&tx, account, manifest, holder, now)?;
            }
            let sessions: Vec<String> = {
                let mut stmt =
                    tx.prepare("SELECT reservation_id FROM reservations WHERE account = ?1")?;
                stmt.query_map([account], |r| r.get(0))?
                    .collect::<Result<_, _>>()?
            };
            for table in [
                "assets",
                "versions",
                "requests",
                "purged_content",
                "albums",
                "album_members",
                "feed",
                "devices",
                "reservations",
                "accounts",
            ] {
                tx.execute(
                    &format!("DELETE FROM {table} WHERE account = ?1"),
                    [account],
                )?;
            }
            tx.commit()?;
            sessions
        };
        for session in sessions {
            match self.store.end_session(account, &session) {
                Ok(()) | Err(StoreError::SessionNotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.drain_releases(Some(account))?;
        tracing::info!(account, "account deleted");
        Ok(())
    }

    /// Reserves quota for `bytes` and opens the store session to upload them under.
    /// Over quota, the answer comes here, before a byte is sent. Idempotent per request id.
    pub fn begin_upload(
        &self,
        account: &str,
        bytes: u64,
        request_id: Option<&str>,
    ) -> Result<Reservation, LibraryError> {
        self.begin_upload_for(account, None, bytes, request_id)
    }

    /// [`Cloud::begin_upload`] for an enrolled device. A device's own reservations never
    /// count against its next one: after a crash of either side, or a pass that failed
    /// half-way, the device goes on at once instead of waiting out its own leases. A
    /// retried request id whose lease lapsed is renewed, never answered expired.
    pub fn begin_upload_for(
        &self,
        account: &str,
        device: Option<&str>,
        bytes: u64,
        request_id: Option<&str>,
    ) -> Result<Reservation, LibraryError> {
        if request_id.is_some_and(|r| r.is_empty() || r.len() > 128) {
            return Err(LibraryError::InvalidArgument(
                "request_id must be 1..=128 bytes".into(),
            ));
        }
        let (plan, _) = self.library.account_plan(account)?;
        let used = self.store.used_bytes(account)?;
        let now = self.library.clock.now_ms();
        let mut db = self.library.db();
        let tx = db.transaction()?;
        if let Some(rid) = request_id {
            let prior: Option<Reservation> = tx
                .query_row(
                    "SELECT reservation_id, bytes, expires_at FROM reservations
                     WHERE account = ?1 AND request_id = ?2",
                    params![account, rid],
                    |r| {
                        Ok(Reservation {
                            reservation_id: r.get(0)?,
                            bytes: r.get::<_, i64>(1)? as u64,
                            expires_at: r.get(2)?,
                        })
                    },
                )
                .optional()?;
            if let Some(prior) = prior {
                if prior.expires_at > now {
                    return Ok(prior);
                }
                drop(tx);
                drop(db);
                match self.renew_upload(account, &prior.reservation_id) {
                    Ok(renewed) => return Ok(renewed),
                    // The store's session is gone with its lease: a new one below.
                    Err(LibraryError::Store(_)) => {
                        self.library.db().execute(
                            "DELETE FROM reservations WHERE reservation_id = ?1",
                            [&prior.reservation_id],
                        )?;
                        return self.begin_upload_for(account, device, bytes, request_id);
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        let held = held_bytes(&tx, account, now, device)?;
        if used.saturating_add(held).saturating_add(bytes) > plan.limit_bytes {
            tracing::info!(
                account,
                used,
                held,
                bytes,
                limit = plan.limit_bytes,
                "upload refused: quota"
            );
            return Err(LibraryError::QuotaExceeded {
                used_bytes: used,
                reserved_bytes: held,
                needed_bytes: bytes,
                limit_bytes: plan.limit_bytes,
            });
        }
        // The reservation row makes a request id idempotent; the session takes none, so a
        // request id taken up again after a release or a lapse opens a new one.
        let session =
            self.store
                .open_session(account, bytes, self.library.config.upload_ttl_ms, None)?;
        tx.execute(
            "INSERT INTO reservations (reservation_id, account, request_id, bytes, expires_at, device)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                session.id,
                account,
                request_id,
                bytes as i64,
                session.expires_at,
                device
            ],
        )?;
        tx.commit()?;
        Ok(Reservation {
            reservation_id: session.id,
            bytes,
            expires_at: session.expires_at,
        })
    }

    /// Extends a reservation and its store session.
    pub fn renew_upload(
        &self,
        account: &str,
        reservation_id: &str,
    ) -> Result<Reservation, LibraryError> {
        let bytes: i64 = self
            .library
            .db()
            .query_row(
                "SELECT bytes FROM reservations WHERE reservation_id = ?1 AND account = ?2",
                params![reservation_id, account],
                |r| r.get(0),
            )
            .optional()?
            .ok_or_else(|| LibraryError::NotFound {
                kind: "reservation",
                id: reservation_id.to_string(),
            })?;
        let session =
            self.store
                .renew_session(account, reservation_id, self.library.config.upload_ttl_ms)?;
        self.library.db().execute(
            "UPDATE reservations SET expires_at = ?2 WHERE reservation_id = ?1",
            params![reservation_id, session.expires_at],
        )?;
        Ok(Reservation {
            reservation_id: reservation_id.to_string(),
            bytes: bytes as u64,
            expires_at: session.expires_at,
        })
    }

    /// Releases a reservation and its store session: its unused bytes stop counting at
    /// once. Chunks sent under it stay the account's until a collection finds them
    /// unreferenced. Idempotent: an unknown reservation is already released.
    pub fn end_upload(&self, account: &str, reservation_id: &str) -> Result<(), LibraryError> {
        let removed = self.library.db().execute(
            "DELETE FROM reservations WHERE reservation_id = ?1 AND account = ?2",
            params![reservation_id, account],
        )?;
        if removed > 0 {
            match self.store.end_session(account, reservation_id) {
                Ok(()) | Err(StoreError::SessionNotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
            tracing::info!(
                account,
                reservation = reservation_id,
                "reservation released"
            );
        }
        Ok(())
    }

    /// Verifies every stored byte, drops corrupt chunks from the store's index (never
    /// served), and flags every asset whose current content lost one as damaged, with a
    /// feed entry, so a device that still holds the original sends it again.
    pub fn scrub(&self) -> Result<LibraryScrub, LibraryError> {
        let store = self.store.scrub()?;
        let mut by_account: std::collections::BTreeMap<&str, Vec<ManifestId>> =
            std::collections::BTreeMap::new();
        for (account, manifest) in &store.damaged {
            by_account.entry(account).or_default().push(*manifest);
        }
        let mut damaged = Vec::new();
        let mut previews_requeued = 0;
        for (account, manifests) in by_account {
            // A damaged preview is made again from the original; a damaged original waits
            // for a device to send it again (below).
            previews_requeued += self.library.requeue_derivations(
                account,
                &manifests,
                "a preview failed verification",
            )?;
            for asset_id in self.library.mark_damaged(account, &manifests)? {
                let original_name = self.library.get_asset(account, &asset_id)?.original_name;
                damaged.push(DamagedAsset {
                    account: account.to_string(),
                    asset_id,
                    original_name,
                });
            }
        }
        let assets_verified = self.library.count_assets()?;
        tracing::info!(
            chunks = store.chunks_verified,
            assets = assets_verified,
            corrupt = store.corrupt_chunks.len(),
            damaged = damaged.len(),
            "scrub finished"
        );
        Ok(LibraryScrub {
            store,
            assets_verified,
            damaged,
            previews_requeued,
        })
    }

    /// Commits uploaded content: the store roots the manifest first (refusing, with the
    /// missing chunk ids, if any chunk is not owned), then the library records the asset
    /// or version and its feed entry in one transaction. Idempotent per request id.
    pub fn commit_asset(
        &self,
        account: &str,
        commit: &CommitAsset,
    ) -> Result<Committed, LibraryError> {
        let manifest = self.committed_manifest(account, commit)?;
        let req = CommitRequest {
            request_id: commit.request_id.clone(),
            asset_id: commit.asset_id.clone(),
            base_version: commit.base_version,
            manifest: commit.manifest,
            file_hash: manifest.file_hash,
            size: manifest.total_len,
            kind: commit.kind,
            capture_time: commit.capture_time,
            width: commit.width,
            height: commit.height,
            original_name: commit.original_name.clone(),
            path: commit.path.clone(),
            device: commit.device.clone(),
        };
        // Only a commit naming the damaged asset repairs it: a new file with the same bytes
        // is a photo of its own (its chunks mend the store all the same).
        let repaired = self
            .library
            .damaged_with(account, &commit.manifest)?
            .filter(|(asset_id, _)| commit.asset_id.as_deref() == Some(asset_id.as_str()));
        if let Some((asset_id, version)) = repaired {
            // A device sent a damaged asset's content again. Rooting the manifest under a
            // throwaway holder is the store's proof that every chunk is owned again
            // (MISSING_CHUNKS otherwise); the asset's own reference never went away.
            let probe = holder_for(account, &format!("repair:{}", commit.request_id));
            self.store.reference(account, &commit.manifest, &probe)?;
            self.store.release(account, &commit.manifest, &probe)?;
            self.library.clear_damaged(account, &asset_id)?;
            // Previews that could not be made from the damaged original can be now.
            self.library
                .retry_failed_derivation(account, &asset_id, version)?;
            let asset = self.library.get_asset(account, &asset_id)?;
            return Ok(Committed {
                asset_id,
                version,
                seq: asset.seq,
                conflict: false,
                deduplicated: true,
                path: asset.path,
            });
        }
        if let Some(answer) = self.library.prior_commit(account, &req)? {
            return Ok(answer);
        }
        let holder = holder_for(account, &commit.request_id);
        let now = self.library.clock.now_ms();
        fail::fail_point!("cloud-before-ref-outbox");
        // Written before the store is touched: if we crash after referencing, the
        // reconcile pass finds the row and releases what no commit kept.
        self.library.db().execute(
            "INSERT INTO ref_outbox (account, manifest, holder, action, at) VALUES (?1, ?2, ?3, 'pending', ?4)
             ON CONFLICT (account, manifest, holder) DO NOTHING",
            params![account, &commit.manifest.0[..], holder, now],
        )?;
        fail::fail_point!("cloud-before-store-reference");
        let outcome = self.reference_and_commit(account, &req, &holder, commit);
        fail::fail_point!("cloud-before-release-pending");
        if outcome.as_ref().map_or(true, |c| c.deduplicated) {
            self.release_pending(account, &commit.manifest, &holder)?;
        }
        outcome
    }

    /// The manifest a commit names, stored first from the commit itself where the store
    /// lacks it. A replayed commit finds it stored and never needs the session again.
    fn committed_manifest(
        &self,
        account: &str,
        commit: &CommitAsset,
    ) -> Result<Manifest, LibraryError> {
        let upload = match (
            self.store.manifest(account, &commit.manifest),
            &commit.manifest_upload,
        ) {
            (Err(StoreError::NotFound { .. }), Some(upload)) => upload,
            (found, _) => return Ok(found?),
        };
        let session = commit.reservation_id.as_deref().ok_or_else(|| {
            StoreError::InvalidArgument(
                "a manifest sent with a commit needs its reservation".into(),
            )
        })?;
        let stored = match upload {
            ManifestUpload::Whole(manifest) => {
                self.store.put_manifest(account, session, manifest)?
            }
            ManifestUpload::Edit {
                base,
                splices,
                file_hash,
            } => self
                .store
                .put_manifest_edit(account, session, base, splices, *file_hash)?,
        };
        if stored != commit.manifest {
            return Err(StoreError::InvalidArgument(format!(
                "the manifest sent is {stored}, not the manifest_id {} the commit names",
                commit.manifest
            ))
            .into());
        }
        Ok(self.store.manifest(account, &stored)?)
    }

    fn reference_and_commit(
        &self,
        account: &str,
        req: &CommitRequest,
        holder: &str,
        commit: &CommitAsset,
    ) -> Result<Committed, LibraryError> {
        self.store.reference(account, &req.manifest, holder)?;
        fail::fail_point!("cloud-after-store-reference");
        let (plan, _) = self.library.account_plan(account)?;
        let used = self.store.used_bytes(account)?;
        if used > plan.limit_bytes {
            return Err(LibraryError::QuotaExceeded {
                used_bytes: used,
                reserved_bytes: 0,
                needed_bytes: 0,
                limit_bytes: plan.limit_bytes,
            });
        }
        self.library
            .commit_with(account, req, Some(holder), commit.reservation_id.as_deref())
    }

    /// Releases a reference no unpurged version holds, then forgets it.
    fn release_pending(
        &self,
        account: &str,
        manifest: &ManifestId,
        holder: &str,
    ) -> Result<(), LibraryError> {
        let held: bool = self
            .library
            .db()
            .query_row(
                "SELECT 1 FROM versions v JOIN assets a ON a.account = v.account AND a.asset_id = v.asset_id
                 WHERE v.account = ?1 AND v.holder = ?2 AND v.manifest = ?3 AND a.state != 'purged' LIMIT 1",
                params![account, holder, &manifest.0[..]],
                |_| Ok(true),
            )
            .optional()?
            .unwrap_or(false);
        if !held {
            self.store.release(account, manifest, holder)?;
        }
        self.library.db().execute(
            "DELETE FROM ref_outbox WHERE account = ?1 AND manifest = ?2 AND holder = ?3",
            params![account, &manifest.0[..], holder],
        )?;
        Ok(())
    }

    /// Purges an asset and releases its content in the store.
    pub fn purge(&self, account: &str, asset_id: &str) -> Result<(), LibraryError> {
        self.library.purge(account, asset_id)?;
        self.drain_releases(Some(account))?;
        Ok(())
    }

    /// Releases queued references (of one account, or all), and abandoned pending ones.
    fn drain_releases(&self, account: Option<&str>) -> Result<usize, LibraryError> {
        let cutoff = self.library.clock.now_ms() - self.library.config.pending_ref_grace_ms;
        let rows: Vec<(String, Vec<u8>, String)> = {
            let db = self.library.db();
            let mut stmt = db.prepare(
                "SELECT account, manifest, holder FROM ref_outbox
                 WHERE (?1 IS NULL OR account = ?1) AND (action = 'release' OR at <= ?2)",
            )?;
            stmt.query_map(params![account, cutoff], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?
            .collect::<Result<_, _>>()?
        };
        let count = rows.len();
        for (account, manifest, holder) in rows {
            let manifest =
                ChunkId::from_slice(&manifest).map_err(keepsake_store::StoreError::from)?;
            self.release_pending(&account, &manifest, &holder)?;
        }
        Ok(count)
    }

    /// The periodic job: expires Recently Deleted and reservations, releases what purges
    /// and abandoned commits left referenced, compacts old tombstones, drops old keys.
    pub fn maintain(&self) -> Result<Maintenance, LibraryError> {
        let trash_expired = self.library.expire_trash()?.len();
        let now = self.library.clock.now_ms();
        let reservations_expired = self
            .library
            .db()
            .execute("DELETE FROM reservations WHERE expires_at <= ?1", [now])?;
        // A flood of made-up account names would otherwise leave a row each for ever.
        self.library.forget_old_sign_in_failures(now)?;
        let refs_released = self.drain_releases(None)?;
        let tombstones_compacted = self.library.compact()?;
        let cutoff = now - self.library.config.access_token_ttl_ms;
        let dropped = self.library.db().execute(
            "DELETE FROM signing_keys WHERE retired_at IS NOT NULL AND retired_at <= ?1",
            [cutoff],
        )?;
        if dropped > 0 {
            self.verifier.replace(&self.public_keys()?)?;
        }
        let report = Maintenance {
            trash_expired,
            reservations_expired,
            refs_released,
            tombstones_compacted,
        };
        tracing::debug!(?report, "maintenance done");
        Ok(report)
    }
}

/// Bytes held by the account's unexpired reservations.
fn held_bytes(
    conn: &rusqlite::Connection,
    account: &str,
    now: UnixMillis,
    except_device: Option<&str>,
) -> Result<u64, LibraryError> {
    let held: i64 = conn.query_row(
        "SELECT COALESCE(SUM(bytes), 0) FROM reservations
         WHERE account = ?1 AND expires_at > ?2 AND (?3 IS NULL OR device IS NOT ?3)",
        params![account, now, except_device],
        |r| r.get(0),
    )?;
    Ok(held as u64)
}

fn current_key(library: &Library) -> Result<Option<Signer25519>, LibraryError> {
    let row: Option<(String, Vec<u8>)> = library
        .db()
        .query_row(
            "SELECT kid, secret FROM signing_keys WHERE retired_at IS NULL ORDER BY created_at DESC LIMIT 1",
            [],
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
