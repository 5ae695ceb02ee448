//! The store: chunks and manifests by content address, owned per account.

use crate::backend::{Backend, BackendError, LocalFsBackend};
use crate::pack::{PackWriter, RECORD_HEADER, Slot, record_in, verify_record};
use crate::{ChunkId, ManifestId, StoreError};
use bytes::Bytes;
use keepsake_core::{Clock, Entropy, UnixMillis, random_hex};
use keepsake_core::{Manifest, Splice};
use rusqlite::{Connection, OptionalExtension, Transaction, params};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// Connections that only look things up, beside the one that writes.
const READERS: usize = 2;

/// Limits and timings; every bound on network input lives here.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Largest chunk accepted.
    pub max_chunk_bytes: u32,
    /// Most ids in one FindMissing / GetChunks / PutChunks batch.
    pub max_ids_per_call: usize,
    /// Most entries in one manifest.
    pub max_manifest_entries: usize,
    /// Size a pack aims for when repacking.
    pub pack_target_bytes: u64,
    /// Packs smaller than this are merged by repacking.
    pub small_pack_bytes: u64,
    /// How long ended sessions keep their pins, and retired packs their bytes.
    pub grace_ms: i64,
    /// Shortest session lease granted.
    pub min_session_ttl_ms: i64,
    /// Longest session lease granted.
    pub max_session_ttl_ms: i64,
    /// Largest `expected_bytes` a session may announce.
    pub max_expected_bytes: u64,
    /// Longest reference holder name.
    pub max_holder_len: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            max_chunk_bytes: 8 << 20,
            max_ids_per_call: 1 << 17,
            max_manifest_entries: 1 << 18,
            pack_target_bytes: 32 << 20,
            small_pack_bytes: 4 << 20,
            grace_ms: 60 * 60 * 1000,
            min_session_ttl_ms: 10_000,
            max_session_ttl_ms: 24 * 60 * 60 * 1000,
            max_expected_bytes: 1 << 40,
            max_holder_len: 256,
        }
    }
}

/// A leased upload session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// Its id.
    pub id: String,
    /// When the lease ends.
    pub expires_at: UnixMillis,
}

/// What one durable batch acknowledged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PutOutcome {
    /// Every chunk of the batch, now durable and owned by the account.
    pub acknowledged: Vec<ChunkId>,
    /// Bytes new to the account (it did not own them before). Never what is new to the
    /// physical store: that would tell one account what another stores.
    pub new_bytes: u64,
    /// Data chunks of the batch the account already held before it: sent for nothing.
    pub already_held: u64,
}

/// Bytes and chunks one account owns, each counted once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Bytes owned.
    pub bytes: u64,
    /// Chunks (and manifests) owned.
    pub chunks: u64,
}

/// The result of verifying every stored byte.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScrubReport {
    /// Packs read.
    pub packs_verified: u64,
    /// Chunks checked.
    pub chunks_verified: u64,
    /// Bytes of chunks checked.
    pub bytes_verified: u64,
    /// Chunks whose bytes no longer match their id.
    pub corrupt_chunks: Vec<ChunkId>,
    /// Packs that are missing or hold a corrupt chunk.
    pub corrupt_packs: Vec<String>,
    /// Each (account, referenced manifest) that lost a chunk: the content to ask for again.
    pub damaged: Vec<(String, ManifestId)>,
    /// When the scrub finished.
    pub finished_at: UnixMillis,
}

/// What one garbage collection did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Chunks removed from the store.
    pub chunks_collected: u64,
    /// Bytes of those chunks.
    pub bytes_collected: u64,
    /// Packs whose live chunks were moved into new packs.
    pub packs_repacked: u64,
    /// Pack objects deleted (retired past grace, or orphaned by a crash).
    pub packs_deleted: u64,
    /// Sessions whose pins lapsed.
    pub sessions_expired: u64,
}

/// Where the store keeps things and where it gets time and randomness.
pub struct StoreParts {
    /// Object storage for packs.
    pub backend: Arc<dyn Backend>,
    /// The SQLite index file; `None` keeps it in memory (tests).
    pub index_path: Option<PathBuf>,
    /// Time source.
    pub clock: Arc<dyn Clock>,
    /// Randomness source.
    pub entropy: Arc<dyn Entropy>,
    /// Limits.
    pub config: StoreConfig,
}

/// The content-addressed asset store.
pub struct Store {
    backend: Arc<dyn Backend>,
    db: Mutex<Connection>,
    // Lookups on connections of their own, so a download never waits behind an upload's
    // commit (its fsync holds the writer); empty for an in-memory index.
    readers: Vec<Mutex<Connection>>,
    next_reader: std::sync::atomic::AtomicUsize,
    clock: Arc<dyn Clock>,
    entropy: Arc<dyn Entropy>,
    config: StoreConfig,
    // Packs written but not yet in the index: GC must not take them for orphans.
    in_flight: Mutex<HashSet<String>>,
    gc_lock: Mutex<()>,
}

/// A pack on disk, (name, size), and where each of its chunks sits.
type WrittenPack = ((String, u64), Vec<(ChunkId, Slot, bool)>);

enum Blob<'a> {
    Chunks(&'a [(ChunkId, Bytes)]),
    Manifest {
        id: ManifestId,
        encoded: Bytes,
        chunks: Vec<ChunkId>,
    },
}

impl Store {
    /// Opens a store from its parts.
    pub fn open(parts: StoreParts) -> Result<Self, StoreError> {
        let mut conn = match &parts.index_path {
            Some(path) => Connection::open(path)?,
            None => Connection::open_in_memory()?,
        };
        crate::schema::prepare(&mut conn)?;
        let readers = match &parts.index_path {
            Some(path) => (0..READERS)
                .map(|_| crate::schema::reader(path).map(Mutex::new))
                .collect::<Result<_, _>>()?,
            None => Vec::new(),
        };
        Ok(Self {
            backend: parts.backend,
            db: Mutex::new(conn),
            readers,
            next_reader: std::sync::atomic::AtomicUsize::new(0),
            clock: parts.clock,
            entropy: parts.entropy,
            config: parts.config,
            in_flight: Mutex::new(HashSet::new()),
            gc_lock: Mutex::new(()),
        })
    }

    /// Opens the embedded default: packs under `dir/objects`, the index at `dir/index.sqlite`.
    pub fn open_local(
        dir: &Path,
        clock: Arc<dyn Clock>,
        entropy: Arc<dyn Entropy>,
        config: StoreConfig,
    ) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Backend(BackendError::Io(e)))?;
        let backend = LocalFsBackend::open(dir.join("objects"))
            .map_err(|e| StoreError::Backend(BackendError::Io(e)))?;
        Self::open(StoreParts {
            backend: Arc::new(backend),
            index_path: Some(dir.join("index.sqlite")),
            clock,
            entropy,
            config,
        })
    }

    /// The store's limits.
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    fn db(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite consistent (transactions roll back).
        self.db.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A connection for lookups only: a free reader, else the next one in turn, else (an
    /// in-memory index) the writer.
    fn reader(&self) -> MutexGuard<'_, Connection> {
        if self.readers.is_empty() {
            return self.db();
        }
        for reader in &self.readers {
            if let Ok(conn) = reader.try_lock() {
                return conn;
            }
        }
        let turn = self
            .next_reader
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.readers[turn % self.readers.len()]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn check_count(&self, count: usize) -> Result<(), StoreError> {
        if count > self.config.max_ids_per_call {
            return Err(StoreError::TooManyIds {
                count,
                limit: self.config.max_ids_per_call,
            });
        }
        Ok(())
    }

    /// Opens a leased session; a retry with the same `request_id` returns the same session.
    pub fn begin_session(
        &self,
        account: &str,
        expected_bytes: u64,
        ttl_ms: i64,
        request_id: Option<&str>,
    ) -> Result<Session, StoreError> {
        if expected_bytes > self.config.max_expected_bytes {
            return Err(StoreError::InvalidArgument(format!(
                "expected_bytes {expected_bytes} exceeds {}",
                self.config.max_expected_bytes
            )));
        }
        if request_id.is_some_and(|r| r.len() > 128) {
            return Err(StoreError::InvalidArgument(
                "request_id is longer than 128 bytes".into(),
            ));
        }
        let ttl = self.clamp_ttl(ttl_ms);
        let now = self.clock.now_ms();
        let mut db = self.db();
        let tx = db.transaction()?;
        if let Some(rid) = request_id {
            let prior: Option<(String, i64, i64)> = tx
                .query_row(
                    "SELECT session_id, expected_bytes, expires_at FROM sessions
                     WHERE account = ?1 AND request_id = ?2",
                    params![account, rid],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?;
            if let Some((id, expected, expires_at)) = prior {
                if expected as u64 != expected_bytes {
                    return Err(StoreError::RequestIdReused(rid.to_string()));
                }
                return Ok(Session { id, expires_at });
            }
        }
        let id = random_hex(self.entropy.as_ref(), 16);
        let expires_at = now + ttl;
        tx.execute(
            "INSERT INTO sessions (session_id, account, request_id, expected_bytes, created_at, expires_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![id, account, request_id, expected_bytes as i64, now, expires_at],
        )?;
        tx.commit()?;
        tracing::debug!(account, session = %id, expected_bytes, "session begun");
        Ok(Session { id, expires_at })
    }

    fn clamp_ttl(&self, ttl_ms: i64) -> i64 {
        ttl_ms.clamp(
            self.config.min_session_ttl_ms,
            self.config.max_session_ttl_ms,
        )
    }

    /// Extends a live session's lease.
    pub fn renew_session(
        &self,
        account: &str,
        session_id: &str,
        ttl_ms: i64,
    ) -> Result<Session, StoreError> {
        let now = self.clock.now_ms();
        let expires_at = now + self.clamp_ttl(ttl_ms);
        let mut db = self.db();
        let tx = db.transaction()?;
        check_live_session(&tx, account, session_id, now)?;
        tx.execute(
            "UPDATE sessions SET expires_at = MAX(expires_at, ?2) WHERE session_id = ?1",
            params![session_id, expires_at],
        )?;
        let expires_at: i64 = tx.query_row(
            "SELECT expires_at FROM sessions WHERE session_id = ?1",
            [session_id],
            |r| r.get(0),
        )?;
        tx.commit()?;
        Ok(Session {
            id: session_id.to_string(),
            expires_at,
        })
    }

    /// Ends a session; its pins lapse after the grace period. Ending twice is fine.
    pub fn end_session(&self, account: &str, session_id: &str) -> Result<(), StoreError> {
        let now = self.clock.now_ms();
        let changed = self.db().execute(
            "UPDATE sessions SET ended_at = COALESCE(ended_at, ?3)
             WHERE session_id = ?1 AND account = ?2",
            params![session_id, account, now],
        )?;
        if changed == 0 {
            return Err(StoreError::SessionNotFound(session_id.to_string()));
        }
        Ok(())
    }

    /// The ids `account` does not own; those it owns are pinned to the session.
    pub fn find_missing(
        &self,
        account: &str,
        session_id: &str,
        ids: &[ChunkId],
    ) -> Result<Vec<ChunkId>, StoreError> {
        self.check_count(ids.len())?;
        let now = self.clock.now_ms();
        let mut db = self.db();
        let tx = db.transaction()?;
        check_live_session(&tx, account, session_id, now)?;
        let mut missing = Vec::new();
        {
            let mut owned =
                tx.prepare_cached("SELECT 1 FROM owners WHERE account = ?1 AND chunk = ?2")?;
            let mut pin = tx.prepare_cached(
                "INSERT OR IGNORE INTO session_pins (session_id, chunk) VALUES (?1, ?2)",
            )?;
            for id in ids {
                if owned.exists(params![account, &id.0[..]])? {
                    pin.execute(params![session_id, &id.0[..]])?;
                } else {
                    missing.push(*id);
                }
            }
        }
        tx.commit()?;
        Ok(missing)
    }

    /// Verifies and durably stores one batch of chunks for `account` (one pack, one fsync).
    pub fn put_chunks(
        &self,
        account: &str,
        session_id: &str,
        chunks: &[(ChunkId, Bytes)],
    ) -> Result<PutOutcome, StoreError> {
        self.check_count(chunks.len())?;
        for (id, data) in chunks {
            self.check_chunk(id, data)?;
        }
        self.store_blobs(account, session_id, Blob::Chunks(chunks))
    }

    /// Checks one chunk's size and hash: the bytes must be what the id says.
    pub fn check_chunk(&self, id: &ChunkId, data: &[u8]) -> Result<(), StoreError> {
        if data.is_empty() {
            return Err(StoreError::EmptyChunk);
        }
        if data.len() > self.config.max_chunk_bytes as usize {
            return Err(StoreError::ChunkTooLarge {
                len: data.len() as u64,
                limit: u64::from(self.config.max_chunk_bytes),
            });
        }
        let actual = ChunkId::of(data);
        if actual != *id {
            return Err(StoreError::HashMismatch {
                claimed: *id,
                actual,
            });
        }
        Ok(())
    }

    fn store_blobs(
        &self,
        account: &str,
        session_id: &str,
        blob: Blob<'_>,
    ) -> Result<PutOutcome, StoreError> {
        let mut unique: Vec<(ChunkId, Bytes, bool)> = Vec::new();
        let mut seen = HashSet::new();
        let manifest_chunks = match &blob {
            Blob::Chunks(chunks) => {
                for (id, data) in chunks.iter() {
                    if seen.insert(*id) {
                        unique.push((*id, data.clone(), false));
                    }
                }
                None
            }
            Blob::Manifest {
                id,
                encoded,
                chunks,
            } => {
                unique.push((*id, encoded.clone(), true));
                Some((*id, chunks))
            }
        };
        let now = self.clock.now_ms();
        // Only what this account owns is skipped. A chunk only another account holds is
        // written again, durably, like fresh bytes (its copy is garbage the next repack
        // collects): the answer's count and its timing are the same as for content nobody
        // has, so an upload never tells its caller what someone else stores.
        let mut present: HashSet<ChunkId> = {
            let db = self.reader();
            check_live_session(&db, account, session_id, now)?;
            let mut stmt = db.prepare_cached(
                "SELECT 1 FROM chunks c JOIN owners o ON o.chunk = c.id
                 WHERE c.id = ?1 AND o.account = ?2",
            )?;
            let mut present = HashSet::new();
            for (id, _, _) in &unique {
                if stmt.exists(params![&id.0[..], account])? {
                    present.insert(*id);
                }
            }
            present
        };
        // A concurrent GC may remove a chunk we chose not to write; then write it and retry.
        for _attempt in 0..4 {
            let to_write: Vec<&(ChunkId, Bytes, bool)> = unique
                .iter()
                .filter(|(id, _, _)| !present.contains(id))
                .collect();
            let written = if to_write.is_empty() {
                None
            } else {
                let mut writer = PackWriter::with_records(to_write.len());
                let slots: Vec<(ChunkId, Slot, bool)> = to_write
                    .iter()
                    .map(|(id, data, is_manifest)| {
                        (*id, writer.push(id, data.clone()), *is_manifest)
                    })
                    .collect();
                Some((self.write_pack(writer.finish())?, slots))
            };
            let result = self.index_batch(
                account,
                session_id,
                now,
                &unique,
                &present,
                written.as_ref(),
                manifest_chunks,
            );
            if let Some(((name, ..), _)) = &written {
                self.in_flight.lock().expect("in-flight lock").remove(name);
            }
            match result {
                Ok(Some(outcome)) => {
                    tracing::debug!(
                        account,
                        chunks = outcome.acknowledged.len(),
                        new_bytes = outcome.new_bytes,
                        "batch durable"
                    );
                    return Ok(outcome);
                }
                Ok(None) | Err(_) => {
                    if let Some(((name, ..), _)) = &written {
                        // Never indexed, so no reader can know of it.
                        let _ = self.backend.delete(name);
                    }
                    match result {
                        Err(e) => return Err(e),
                        Ok(_) => present = self.still_present(&present)?,
                    }
                }
            }
        }
        Err(StoreError::InvalidArgument(
            "the batch kept racing garbage collection; retry".into(),
        ))
    }

    fn still_present(&self, ids: &HashSet<ChunkId>) -> Result<HashSet<ChunkId>, StoreError> {
        let db = self.reader();
        let mut stmt = db.prepare_cached("SELECT 1 FROM chunks WHERE id = ?1")?;
        let mut out = HashSet::new();
        for id in ids {
            if stmt.exists([&id.0[..]])? {
                out.insert(*id);
            }
        }
        Ok(out)
    }

    /// Writes a pack durably and returns (name, size).
    fn write_pack(&self, parts: Vec<Bytes>) -> Result<(String, u64), StoreError> {
        let random = random_hex(self.entropy.as_ref(), 16);
        let name = format!("packs/{}/{}", &random[..2], &random[2..]);
        let size: usize = parts.iter().map(|p| p.len()).sum();
        let parts: Vec<&[u8]> = parts.iter().map(|p| &p[..]).collect();
        self.in_flight
            .lock()
            .expect("in-flight lock")
            .insert(name.clone());
        fail::fail_point!("store-before-pack-put", |_| {
            self.in_flight.lock().expect("in-flight lock").remove(&name);
            Err(StoreError::Backend(BackendError::Io(
                std::io::Error::other("fail point store-before-pack-put"),
            )))
        });
        if let Err(e) = self.backend.put_parts(&name, &parts) {
            self.in_flight.lock().expect("in-flight lock").remove(&name);
            tracing::warn!(pack = %name, error = %e, "pack write failed; nothing acknowledged");
            return Err(e.into());
        }
        Ok((name, size as u64))
    }

    /// Indexes one batch atomically. `Ok(None)` means a chunk assumed present vanished.
    #[allow(clippy::too_many_arguments)]
    fn index_batch(
        &self,
        account: &str,
        session_id: &str,
        now: UnixMillis,
        unique: &[(ChunkId, Bytes, bool)],
        present: &HashSet<ChunkId>,
        written: Option<&WrittenPack>,
        manifest: Option<(ManifestId, &Vec<ChunkId>)>,
    ) -> Result<Option<PutOutcome>, StoreError> {
        fail::fail_point!("store-before-index", |_| Err(StoreError::InvalidArgument(
            "fail point store-before-index".into()
        )));
        let mut db = self.db();
        let tx = db.transaction()?;
        check_live_session(&tx, account, session_id, now)?;
        {
            let mut exists = tx.prepare_cached("SELECT 1 FROM chunks WHERE id = ?1")?;
            for id in present {
                if !exists.exists([&id.0[..]])? {
                    return Ok(None);
                }
            }
        }
        if let Some((_, chunks)) = manifest {
            let missing = missing_for(&tx, account, chunks)?;
            if !missing.is_empty() {
                return Err(StoreError::MissingChunks(missing));
            }
        }
        let (mut new_bytes, mut already_held) = (0u64, 0u64);
        if let Some(((name, size), slots)) = written {
            let pack_id = insert_pack(&tx, name, *size, now)?;
            let mut insert = tx.prepare_cached(
                "INSERT OR IGNORE INTO chunks (id, pack_id, offset, len, is_manifest)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for (id, slot, is_manifest) in slots {
                insert.execute(params![
                    &id.0[..],
                    pack_id,
                    slot.offset as i64,
                    slot.len,
                    *is_manifest
                ])?;
            }
        }
        {
            let mut own =
                tx.prepare_cached("INSERT OR IGNORE INTO owners (account, chunk) VALUES (?1, ?2)")?;
            let mut pin = tx.prepare_cached(
                "INSERT OR IGNORE INTO session_pins (session_id, chunk) VALUES (?1, ?2)",
            )?;
            let (mut owned_bytes, mut owned_chunks) = (0i64, 0i64);
            for (id, data, is_manifest) in unique {
                if own.execute(params![account, &id.0[..]])? == 1 {
                    owned_bytes += data.len() as i64;
                    owned_chunks += 1;
                    new_bytes += data.len() as u64;
                } else if !is_manifest {
                    already_held += 1;
                }
                pin.execute(params![session_id, &id.0[..]])?;
            }
            add_usage(&tx, account, owned_bytes, owned_chunks)?;
        }
        if let Some((manifest_id, chunks)) = manifest {
            let mut link = tx.prepare_cached(
                "INSERT OR IGNORE INTO manifest_chunks (manifest, chunk) VALUES (?1, ?2)",
            )?;
            for chunk in chunks {
                link.execute(params![&manifest_id.0[..], &chunk.0[..]])?;
            }
        }
        fail::fail_point!("store-before-index-commit", |_| Err(
            StoreError::InvalidArgument("fail point store-before-index-commit".into())
        ));
        tx.commit()?;
        fail::fail_point!("store-after-index-commit", |_| Err(
            StoreError::InvalidArgument("fail point store-after-index-commit".into())
        ));
        Ok(Some(PutOutcome {
            acknowledged: unique.iter().map(|(id, _, _)| *id).collect(),
            new_bytes,
            already_held,
        }))
    }

    /// Reads one chunk `account` owns, verified against its id.
    pub fn get_chunk(&self, account: &str, id: &ChunkId) -> Result<Bytes, StoreError> {
        let (name, slot, _) = self.locate(account, id, "chunk")?;
        self.read_slot(id, &name, slot)
    }

    fn locate(
        &self,
        account: &str,
        id: &ChunkId,
        kind: &'static str,
    ) -> Result<(String, Slot, bool), StoreError> {
        let db = self.reader();
        let mut stmt = db.prepare_cached(
            "SELECT p.name, c.offset, c.len, c.is_manifest
             FROM owners o JOIN chunks c ON c.id = o.chunk JOIN packs p ON p.pack_id = c.pack_id
             WHERE o.account = ?1 AND o.chunk = ?2",
        )?;
        stmt.query_row(params![account, &id.0[..]], |r| {
            Ok((
                r.get::<_, String>(0)?,
                Slot {
                    offset: r.get::<_, i64>(1)? as u64,
                    len: r.get(2)?,
                },
                r.get::<_, bool>(3)?,
            ))
        })
        .optional()?
        .ok_or(StoreError::NotFound { kind, id: *id })
    }

    fn read_slot(&self, id: &ChunkId, pack: &str, slot: Slot) -> Result<Bytes, StoreError> {
        let record =
            match self
                .backend
                .get_range(pack, slot.offset, RECORD_HEADER + u64::from(slot.len))
            {
                Ok(record) => record,
                Err(BackendError::NotFound(_)) => return Err(StoreError::Corrupt(*id)),
                Err(BackendError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    return Err(StoreError::Corrupt(*id));
                }
                Err(e) => return Err(e.into()),
            };
        if let Err(e) = verify_record(id, slot, &record) {
            tracing::error!(chunk = %id, pack, "corrupt chunk refused");
            return Err(e);
        }
        // The chunk is the record past its header; slicing shares the buffer just read
        // rather than copying megabytes per chunk served.
        Ok(Bytes::from(record).slice(RECORD_HEADER as usize..))
    }

    /// Stores a manifest whose chunks `account` owns; returns its id.
    pub fn put_manifest(
        &self,
        account: &str,
        session_id: &str,
        manifest: &Manifest,
    ) -> Result<ManifestId, StoreError> {
        manifest.validate(
            self.config.max_manifest_entries,
            self.config.max_chunk_bytes,
        )?;
        let encoded = manifest.encode();
        let id = ChunkId::of(&encoded);
        let mut chunks: Vec<ChunkId> = manifest.entries.iter().map(|e| e.chunk).collect();
        chunks.sort();
        chunks.dedup();
        {
            let db = self.db();
            let missing = missing_for(&db, account, &chunks)?;
            if !missing.is_empty() {
                return Err(StoreError::MissingChunks(missing));
            }
            let mut len_of = db.prepare_cached("SELECT len FROM chunks WHERE id = ?1")?;
            for entry in &manifest.entries {
                let len: u32 = len_of.query_row([&entry.chunk.0[..]], |r| r.get(0))?;
                if len != entry.len {
                    return Err(StoreError::MalformedManifest(format!(
                        "chunk {} is {len} bytes, the manifest says {}",
                        entry.chunk, entry.len
                    )));
                }
            }
        }
        self.store_blobs(
            account,
            session_id,
            Blob::Manifest {
                id,
                encoded: Bytes::from(encoded),
                chunks,
            },
        )?;
        Ok(id)
    }

    /// Stores the manifest `splices` make of `base` (one the account holds) and returns its
    /// id; otherwise exactly [`Store::put_manifest`].
    pub fn put_manifest_edit(
        &self,
        account: &str,
        session_id: &str,
        base: &ManifestId,
        splices: &[Splice],
        file_hash: ChunkId,
    ) -> Result<ManifestId, StoreError> {
        let base = self.get_manifest(account, base)?;
        let manifest =
            Manifest::from_splices(&base, splices, file_hash, self.config.max_manifest_entries)?;
        self.put_manifest(account, session_id, &manifest)
    }

    /// Reads a manifest `account` owns.
    pub fn get_manifest(&self, account: &str, id: &ManifestId) -> Result<Manifest, StoreError> {
        let (name, slot, is_manifest) = self.locate(account, id, "manifest")?;
        if !is_manifest {
            return Err(StoreError::NotFound {
                kind: "manifest",
                id: *id,
            });
        }
        let bytes = self.read_slot(id, &name, slot)?;
        Manifest::decode(&bytes).map_err(|_| StoreError::Corrupt(*id))
    }

    fn check_holder(&self, holder: &str) -> Result<(), StoreError> {
        if holder.is_empty() || holder.len() > self.config.max_holder_len {
            return Err(StoreError::InvalidArgument(format!(
                "holder must be 1..={} bytes",
                self.config.max_holder_len
            )));
        }
        Ok(())
    }

    /// Makes `manifest` a GC root for `holder`, once the account owns every chunk it
    /// names (else `MissingChunks` lists them). Idempotent.
    pub fn reference(
        &self,
        account: &str,
        manifest: &ManifestId,
        holder: &str,
    ) -> Result<(), StoreError> {
        self.check_holder(holder)?;
        let now = self.clock.now_ms();
        let db = self.db();
        let owned: bool = db
            .query_row(
                "SELECT 1 FROM owners o JOIN chunks c ON c.id = o.chunk
                 WHERE o.account = ?1 AND o.chunk = ?2 AND c.is_manifest = 1",
                params![account, &manifest.0[..]],
                |_| Ok(true),
            )
            .optional()?
            .unwrap_or(false);
        if !owned {
            return Err(StoreError::NotFound {
                kind: "manifest",
                id: *manifest,
            });
        }
        // Ownership of a chunk can lapse (GC sweeps unheld ownership) after its manifest
        // was stored: a reference must only ever root content the account still has whole.
        let missing: Vec<ChunkId> = {
            let mut stmt = db.prepare_cached(
                "SELECT m.chunk FROM manifest_chunks m WHERE m.manifest = ?2 AND NOT EXISTS
                     (SELECT 1 FROM owners o WHERE o.account = ?1 AND o.chunk = m.chunk)",
            )?;
            stmt.query_map(params![account, &manifest.0[..]], |r| {
                r.get::<_, Vec<u8>>(0)
            })?
            .map(|r| {
                r.map_err(StoreError::from)
                    .and_then(|b| Ok(ChunkId::from_slice(&b)?))
            })
            .collect::<Result<_, _>>()?
        };
        if !missing.is_empty() {
            return Err(StoreError::MissingChunks(missing));
        }
        db.execute(
            "INSERT OR IGNORE INTO refs (account, manifest, holder, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![account, &manifest.0[..], holder, now],
        )?;
        Ok(())
    }

    /// Drops `holder`'s reference to `manifest`. Idempotent.
    pub fn release(
        &self,
        account: &str,
        manifest: &ManifestId,
        holder: &str,
    ) -> Result<(), StoreError> {
        self.check_holder(holder)?;
        self.db().execute(
            "DELETE FROM refs WHERE account = ?1 AND manifest = ?2 AND holder = ?3",
            params![account, &manifest.0[..], holder],
        )?;
        Ok(())
    }

    /// Bytes and chunks `account` owns.
    pub fn usage(&self, account: &str) -> Result<Usage, StoreError> {
        Ok(self
            .reader()
            .query_row(
                "SELECT bytes, chunks FROM usage WHERE account = ?1",
                [account],
                |r| {
                    Ok(Usage {
                        bytes: r.get::<_, i64>(0)? as u64,
                        chunks: r.get::<_, i64>(1)? as u64,
                    })
                },
            )
            .optional()?
            .unwrap_or_default())
    }

    /// Verifies every indexed byte, and drops corrupt chunks from the index (see
    /// [`Store::quarantine`]).
    pub fn scrub(&self) -> Result<ScrubReport, StoreError> {
        let packs: Vec<(i64, String)> = {
            let db = self.db();
            let mut stmt = db.prepare(
                "SELECT pack_id, name FROM packs WHERE retired_at IS NULL ORDER BY pack_id",
            )?;
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?
        };
        let mut report = ScrubReport::default();
        for (pack_id, name) in packs {
            let slots = self.slots_in(pack_id)?;
            let bytes = match self.backend.get(&name) {
                Ok(bytes) => bytes,
                Err(BackendError::NotFound(_)) => {
                    report.corrupt_packs.push(name);
                    report
                        .corrupt_chunks
                        .extend(slots.iter().map(|(id, _)| *id));
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            report.packs_verified += 1;
            let mut pack_is_corrupt = false;
            for (id, slot) in slots {
                report.chunks_verified += 1;
                report.bytes_verified += u64::from(slot.len);
                if verify_record(&id, slot, record_in(&bytes, slot)).is_err() {
                    report.corrupt_chunks.push(id);
                    pack_is_corrupt = true;
                }
            }
            if pack_is_corrupt {
                report.corrupt_packs.push(name);
            }
        }
        report.damaged = self.quarantine(&report.corrupt_chunks)?;
        report.finished_at = self.clock.now_ms();
        if !report.corrupt_chunks.is_empty() || !report.corrupt_packs.is_empty() {
            tracing::error!(
                corrupt_chunks = report.corrupt_chunks.len(),
                corrupt_packs = report.corrupt_packs.len(),
                "scrub found corruption"
            );
        }
        Ok(report)
    }

    /// Drops corrupt chunks from the index in one transaction, so they are never served,
    /// their owners no longer own them (usage goes down, FindMissing lists them again) and
    /// a commit needing them is refused with MISSING_CHUNKS until someone sends the bytes
    /// again. The bad bytes stay in their pack until it is repacked. Returns each
    /// (account, referenced manifest) that lost a chunk, or whose own record was corrupt.
    pub fn quarantine(&self, corrupt: &[ChunkId]) -> Result<Vec<(String, ManifestId)>, StoreError> {
        let mut db = self.db();
        let tx = db.transaction()?;
        let mut damaged = std::collections::BTreeSet::new();
        for id in corrupt {
            let key = &id.0[..];
            {
                let mut stmt = tx.prepare_cached(
                    "SELECT account, manifest FROM refs WHERE manifest = ?1
                     UNION SELECT r.account, r.manifest FROM refs r
                       JOIN manifest_chunks m ON m.manifest = r.manifest WHERE m.chunk = ?1",
                )?;
                let rows = stmt.query_map([key], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?))
                })?;
                for row in rows {
                    let (account, manifest) = row?;
                    damaged.insert((account, ChunkId::from_slice(&manifest)?));
                }
            }
            let len: Option<i64> = tx
                .query_row("SELECT len FROM chunks WHERE id = ?1", [key], |r| r.get(0))
                .optional()?;
            let Some(len) = len else { continue };
            let owners: Vec<String> = tx
                .prepare_cached("SELECT account FROM owners WHERE chunk = ?1")?
                .query_map([key], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            for account in &owners {
                add_usage(&tx, account, -len, -1)?;
            }
            tx.execute("DELETE FROM owners WHERE chunk = ?1", [key])?;
            tx.execute("DELETE FROM session_pins WHERE chunk = ?1", [key])?;
            tx.execute("DELETE FROM chunks WHERE id = ?1", [key])?;
            tracing::error!(chunk = %id.to_hex(), owners = owners.len(), "corrupt chunk dropped from the index");
        }
        tx.commit()?;
        Ok(damaged.into_iter().collect())
    }

    fn slots_in(&self, pack_id: i64) -> Result<Vec<(ChunkId, Slot)>, StoreError> {
        let db = self.db();
        let mut stmt = db.prepare_cached(
            "SELECT id, offset, len FROM chunks WHERE pack_id = ?1 ORDER BY offset",
        )?;
        let rows = stmt
            .query_map([pack_id], |r| {
                Ok((
                    r.get::<_, Vec<u8>>(0)?,
                    Slot {
                        offset: r.get::<_, i64>(1)? as u64,
                        len: r.get(2)?,
                    },
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        rows.into_iter()
            .map(|(id, slot)| Ok((ChunkId::from_slice(&id)?, slot)))
            .collect()
    }

    /// Collects unheld chunks, repacks small or sparse packs, deletes retired and orphaned packs.
    pub fn collect_garbage(&self) -> Result<GcReport, StoreError> {
        let _gc = self.gc_lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut report = GcReport::default();
        let now = self.clock.now_ms();
        self.sweep(now, &mut report)?;
        self.repack(now, &mut report)?;
        self.delete_dead_packs(now, &mut report)?;
        tracing::info!(
            chunks = report.chunks_collected,
            bytes = report.bytes_collected,
            repacked = report.packs_repacked,
            deleted = report.packs_deleted,
            "garbage collected"
        );
        Ok(report)
    }

    fn sweep(&self, now: UnixMillis, report: &mut GcReport) -> Result<(), StoreError> {
        let grace = self.config.grace_ms;
        let mut db = self.db();
        let tx = db.transaction()?;
        // A session holds its pins until its lease ends or it is ended, plus the grace period.
        let lapsed = "SELECT session_id FROM sessions
                      WHERE MIN(COALESCE(ended_at, expires_at), expires_at) + ?1 <= ?2";
        tx.execute(
            &format!("DELETE FROM session_pins WHERE session_id IN ({lapsed})"),
            params![grace, now],
        )?;
        report.sessions_expired = tx.execute(
            "DELETE FROM sessions WHERE MIN(COALESCE(ended_at, expires_at), expires_at) + ?1 <= ?2",
            params![grace, now],
        )? as u64;
        tx.execute_batch(
            "CREATE TEMP TABLE IF NOT EXISTS keep (account TEXT, chunk BLOB, PRIMARY KEY (account, chunk)) WITHOUT ROWID;
             DELETE FROM temp.keep;
             INSERT OR IGNORE INTO temp.keep
                 SELECT s.account, p.chunk FROM session_pins p JOIN sessions s USING (session_id);
             INSERT OR IGNORE INTO temp.keep SELECT account, manifest FROM refs;
             INSERT OR IGNORE INTO temp.keep
                 SELECT r.account, m.chunk FROM refs r JOIN manifest_chunks m ON m.manifest = r.manifest;",
        )?;
        // Ownership nobody holds any more: drop it and its usage.
        let dropped: Vec<(String, i64)> = {
            let mut stmt = tx.prepare(
                "SELECT o.account, c.len FROM owners o JOIN chunks c ON c.id = o.chunk
                 WHERE NOT EXISTS (SELECT 1 FROM temp.keep k WHERE k.account = o.account AND k.chunk = o.chunk)",
            )?;
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?
        };
        let mut per_account: HashMap<String, (i64, i64)> = HashMap::new();
        for (account, len) in dropped {
            let entry = per_account.entry(account).or_default();
            entry.0 += len;
            entry.1 += 1;
        }
        tx.execute(
            "DELETE FROM owners WHERE NOT EXISTS
                 (SELECT 1 FROM temp.keep k WHERE k.account = owners.account AND k.chunk = owners.chunk)",
            [],
        )?;
        for (account, (bytes, chunks)) in per_account {
            add_usage(&tx, &account, -bytes, -chunks)?;
        }
        // Chunks no account owns are garbage.
        let (count, bytes): (i64, i64) = tx.query_row(
            "SELECT COUNT(*), COALESCE(SUM(len), 0) FROM chunks
             WHERE NOT EXISTS (SELECT 1 FROM owners o WHERE o.chunk = chunks.id)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        tx.execute(
            "DELETE FROM manifest_chunks WHERE manifest IN
                 (SELECT id FROM chunks WHERE NOT EXISTS (SELECT 1 FROM owners o WHERE o.chunk = chunks.id))",
            [],
        )?;
        tx.execute(
            "DELETE FROM chunks WHERE NOT EXISTS (SELECT 1 FROM owners o WHERE o.chunk = chunks.id)",
            [],
        )?;
        tx.execute(
            "UPDATE packs SET retired_at = ?1 WHERE retired_at IS NULL
                 AND NOT EXISTS (SELECT 1 FROM chunks c WHERE c.pack_id = packs.pack_id)",
            [now],
        )?;
        tx.commit()?;
        report.chunks_collected = count as u64;
        report.bytes_collected = bytes as u64;
        Ok(())
    }

    fn repack(&self, now: UnixMillis, report: &mut GcReport) -> Result<(), StoreError> {
        // Packs that are small or mostly dead, smallest live share first.
        let candidates: Vec<(i64, String, u64, u64)> = {
            let db = self.db();
            let mut stmt = db.prepare(
                "SELECT p.pack_id, p.name, p.size, COALESCE(SUM(c.len + 36), 0) AS live
                 FROM packs p LEFT JOIN chunks c ON c.pack_id = p.pack_id
                 WHERE p.retired_at IS NULL GROUP BY p.pack_id
                 HAVING p.size < ?1 OR live * 2 < p.size
                 ORDER BY p.pack_id",
            )?;
            stmt.query_map([self.config.small_pack_bytes as i64], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get::<_, i64>(2)? as u64,
                    r.get::<_, i64>(3)? as u64,
                ))
            })?
            .collect::<Result<_, _>>()?
        };
        let worthwhile = candidates.len() >= 2 || candidates.iter().any(|c| c.3 < c.2);
        if !worthwhile {
            return Ok(());
        }
        let mut group: Vec<(i64, String)> = Vec::new();
        let mut group_live = 0u64;
        for (pack_id, name, _size, live) in candidates {
            group.push((pack_id, name));
            group_live += live;
            if group_live >= self.config.pack_target_bytes {
                self.repack_group(&std::mem::take(&mut group), now, report)?;
                group_live = 0;
            }
        }
        if !group.is_empty() {
            self.repack_group(&group, now, report)?;
        }
        Ok(())
    }

    fn repack_group(
        &self,
        group: &[(i64, String)],
        now: UnixMillis,
        report: &mut GcReport,
    ) -> Result<(), StoreError> {
        let mut writer = PackWriter::default();
        let mut moved: Vec<(ChunkId, i64, Slot)> = Vec::new();
        for (pack_id, name) in group {
            let slots = self.slots_in(*pack_id)?;
            if slots.is_empty() {
                continue;
            }
            let bytes = match self.backend.get(name) {
                Ok(bytes) => Bytes::from(bytes),
                Err(BackendError::NotFound(_)) => continue, // scrub reports it
                Err(e) => return Err(e.into()),
            };
            for (id, slot) in slots {
                // A corrupt chunk stays where it is, for scrub to report; never copy bad bytes.
                if let Ok(data) = verify_record(&id, slot, record_in(&bytes, slot)) {
                    let new_slot = writer.push(&id, bytes.slice_ref(data));
                    moved.push((id, *pack_id, new_slot));
                }
            }
        }
        let written = if writer.is_empty() {
            None
        } else {
            Some(self.write_pack(writer.finish())?)
        };
        let result = (|| -> Result<(), StoreError> {
            let mut db = self.db();
            let tx = db.transaction()?;
            if let Some((name, size)) = &written {
                let new_pack = insert_pack(&tx, name, *size, now)?;
                let mut update = tx.prepare_cached(
                    "UPDATE chunks SET pack_id = ?1, offset = ?2 WHERE id = ?3 AND pack_id = ?4",
                )?;
                for (id, old_pack, slot) in &moved {
                    update.execute(params![new_pack, slot.offset as i64, &id.0[..], old_pack])?;
                }
            }
            let mut retire = tx.prepare_cached(
                "UPDATE packs SET retired_at = ?1 WHERE pack_id = ?2 AND retired_at IS NULL
                     AND NOT EXISTS (SELECT 1 FROM chunks c WHERE c.pack_id = ?2)",
            )?;
            for (pack_id, _) in group {
                report.packs_repacked += retire.execute(params![now, pack_id])? as u64;
            }
            drop(retire);
            fail::fail_point!("store-before-repack-commit", |_| Err(
                StoreError::InvalidArgument("fail point store-before-repack-commit".into())
            ));
            tx.commit()?;
            Ok(())
        })();
        if let Some((name, ..)) = &written {
            self.in_flight.lock().expect("in-flight lock").remove(name);
            if result.is_err() {
                let _ = self.backend.delete(name);
            }
        }
        result
    }

    fn delete_dead_packs(&self, now: UnixMillis, report: &mut GcReport) -> Result<(), StoreError> {
        // Retired packs wait out the grace period for readers that looked them up earlier.
        let retired: Vec<(i64, String)> = {
            let db = self.db();
            let mut stmt = db.prepare(
                "SELECT pack_id, name FROM packs WHERE retired_at IS NOT NULL AND retired_at + ?1 <= ?2",
            )?;
            stmt.query_map(params![self.config.grace_ms, now], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?
            .collect::<Result<_, _>>()?
        };
        for (pack_id, name) in retired {
            self.backend.delete(&name)?;
            self.db()
                .execute("DELETE FROM packs WHERE pack_id = ?1", [pack_id])?;
            report.packs_deleted += 1;
        }
        // Objects the index never learned of: a crash between pack write and index commit.
        let listed = self.backend.list("packs/")?;
        let known: HashSet<String> = {
            let db = self.db();
            let mut stmt = db.prepare("SELECT name FROM packs")?;
            stmt.query_map([], |r| r.get(0))?
                .collect::<Result<_, _>>()?
        };
        let in_flight = self.in_flight.lock().expect("in-flight lock").clone();
        for object in listed {
            if !known.contains(&object.name) && !in_flight.contains(&object.name) {
                self.backend.delete(&object.name)?;
                report.packs_deleted += 1;
            }
        }
        Ok(())
    }
}

fn check_live_session(
    conn: &Connection,
    account: &str,
    session_id: &str,
    now: UnixMillis,
) -> Result<(), StoreError> {
    let row: Option<(String, i64, Option<i64>)> = conn
        .prepare_cached("SELECT account, expires_at, ended_at FROM sessions WHERE session_id = ?1")?
        .query_row([session_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?;
    match row {
        // Another account's session looks exactly like no session.
        None => Err(StoreError::SessionNotFound(session_id.to_string())),
        Some((owner, _, _)) if owner != account => {
            Err(StoreError::SessionNotFound(session_id.to_string()))
        }
        Some((_, expires_at, ended_at)) if ended_at.is_some() || expires_at <= now => {
            Err(StoreError::SessionExpired(session_id.to_string()))
        }
        Some(_) => Ok(()),
    }
}

fn missing_for(
    conn: &Connection,
    account: &str,
    chunks: &[ChunkId],
) -> Result<Vec<ChunkId>, StoreError> {
    let mut owned = conn.prepare_cached(
        "SELECT 1 FROM owners o JOIN chunks c ON c.id = o.chunk
         WHERE o.account = ?1 AND o.chunk = ?2 AND c.is_manifest = 0",
    )?;
    let mut missing = Vec::new();
    for id in chunks {
        if !owned.exists(params![account, &id.0[..]])? {
            missing.push(*id);
        }
    }
    Ok(missing)
}

/// Records a durable pack in the index; returns its row id.
fn insert_pack(
    tx: &Transaction<'_>,
    name: &str,
    size: u64,
    now: UnixMillis,
) -> Result<i64, StoreError> {
    tx.execute(
        "INSERT INTO packs (name, size, created_at) VALUES (?1, ?2, ?3)",
        params![name, size as i64, now],
    )?;
    Ok(tx.last_insert_rowid())
}

fn add_usage(
    tx: &Transaction<'_>,
    account: &str,
    bytes: i64,
    chunks: i64,
) -> Result<(), StoreError> {
    if bytes == 0 && chunks == 0 {
        return Ok(());
    }
    tx.execute(
        "INSERT INTO usage (account, bytes, chunks) VALUES (?1, ?2, ?3)
         ON CONFLICT (account) DO UPDATE SET bytes = bytes + ?2, chunks = chunks + ?3",
        params![account, bytes, chunks],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ManualClock, MemoryBackend, SeededEntropy};

    #[test]
    fn a_download_does_not_wait_for_an_upload_holding_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(
            Store::open(StoreParts {
                backend: Arc::new(MemoryBackend::new()),
                index_path: Some(dir.path().join("index.sqlite")),
                clock: Arc::new(ManualClock::new(1_700_000_000_000)),
                entropy: Arc::new(SeededEntropy::new(7)),
                config: StoreConfig::default(),
            })
            .unwrap(),
        );
        let data = Bytes::from_static(b"a photo's first chunk");
        let id = ChunkId::of(&data);
        let session = store.begin_session("alice", 0, 60_000, None).unwrap();
        store
            .put_chunks("alice", &session.id, &[(id, data.clone())])
            .unwrap();

        // An upload's commit holds the writer through its fsync; here it holds it for good.
        let writer = store.db();
        let (tx, rx) = std::sync::mpsc::channel();
        let reading = store.clone();
        std::thread::spawn(move || {
            let _ = tx.send((reading.get_chunk("alice", &id), reading.usage("alice")));
        });
        let (chunk, usage) = rx
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("the lookup waited for the writer");
        drop(writer);
        assert_eq!(chunk.unwrap(), data.to_vec());
        assert_eq!(usage.unwrap().bytes, data.len() as u64);
    }
}
