//! The store: chunks and manifests by content address, owned per account.

use crate::backend::{Backend, BackendError, LocalFsBackend};
use crate::pack::{PackWriter, RECORD_HEADER, Slot, record_body, record_in, verify_record};
use crate::{ChunkId, ManifestId, StoreError};
use bytes::Bytes;
use keepsake_core::{Clock, Entropy, UnixMillis, random_hex};
use keepsake_core::{Manifest, Splice};
use keepsake_sql::{Db, OptionalExtension, params};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

mod bounded;
mod chunks;
mod manifest_cache;
mod manifests;
mod recent_packs;
mod sessions;
mod upkeep;

pub use chunks::*;
pub use manifests::*;
pub use sessions::*;
pub use upkeep::*;

/// Connections that only look things up, beside the one that writes.
const READERS: usize = 2;
/// Writer connections on PostgreSQL: uploads commit side by side, and their commits share
/// the server's WAL flushes. SQLite has one writer.
const PG_WRITERS: usize = 4;
/// The advisory lock that keeps garbage collection (exclusive) apart from transactions
/// that check a chunk is there and then lean on it (shared), across every process.
pub(super) const SWEEP_LOCK: i64 = 0x6b65_6570_7361_6b65;

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
    /// Bytes of just-written packs kept in memory for the reads that follow (another
    /// device fetching what one uploaded): worth it on a bucket, where each read is a
    /// request; 0 on local files, where the page cache does this.
    pub recent_pack_bytes: u64,
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
            recent_pack_bytes: 0,
        }
    }
}

/// Where the store keeps things and where it gets time and randomness.
pub struct StoreParts {
    /// Object storage for packs.
    pub backend: Arc<dyn Backend>,
    /// Where the index lives.
    pub index: IndexAt,
    /// Time source.
    pub clock: Arc<dyn Clock>,
    /// Randomness source.
    pub entropy: Arc<dyn Entropy>,
    /// Limits.
    pub config: StoreConfig,
}

/// Where the store's index lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IndexAt {
    /// In memory, gone with the process (tests).
    Memory,
    /// A SQLite file: the embedded default.
    File(PathBuf),
    /// A PostgreSQL database, the tables in `schema`.
    Postgres {
        /// `postgres://USER@HOST/DB`.
        url: String,
        /// The schema that holds the store's tables.
        schema: String,
    },
}

/// The content-addressed asset store.
pub struct Store {
    backend: Arc<dyn Backend>,
    writers: Vec<Mutex<Db>>,
    next_writer: std::sync::atomic::AtomicUsize,
    // Lookups on connections of their own, so a download never waits behind an upload's
    // commit (its fsync holds the writer); empty for an in-memory index.
    readers: Vec<Mutex<Db>>,
    next_reader: std::sync::atomic::AtomicUsize,
    clock: Arc<dyn Clock>,
    entropy: Arc<dyn Entropy>,
    config: StoreConfig,
    // Packs written but not yet in the index: GC must not take them for orphans.
    in_flight: Mutex<HashSet<String>>,
    gc_lock: Mutex<()>,
    manifests: manifest_cache::ManifestCache,
    recent: recent_packs::RecentPacks,
}

/// A pack on disk, (name, size), and where each of its chunks sits.
type WrittenPack = ((String, u64), Vec<(ChunkId, Slot, bool)>);

impl Store {
    /// Opens a store from its parts.
    pub fn open(parts: StoreParts) -> Result<Self, StoreError> {
        let mut conn = match &parts.index {
            IndexAt::Memory => Db::open_sqlite(None)?,
            IndexAt::File(path) => Db::open_sqlite(Some(path))?,
            IndexAt::Postgres { url, schema } => Db::postgres(url, schema)?,
        };
        crate::schema::prepare(&mut conn)?;
        let mut writers = vec![Mutex::new(conn)];
        if let IndexAt::Postgres { url, schema } = &parts.index {
            for _ in 1..PG_WRITERS {
                writers.push(Mutex::new(Db::postgres(url, schema)?));
            }
        }
        let readers = match &parts.index {
            IndexAt::Memory => Vec::new(),
            IndexAt::File(path) => (0..READERS)
                .map(|_| crate::schema::reader(path).map(Mutex::new))
                .collect::<Result<_, _>>()?,
            IndexAt::Postgres { url, schema } => (0..READERS)
                .map(|_| Db::postgres(url, schema).map(Mutex::new))
                .collect::<Result<_, _>>()?,
        };
        let recent = recent_packs::RecentPacks::new(parts.config.recent_pack_bytes);
        Ok(Self {
            backend: parts.backend,
            writers,
            next_writer: std::sync::atomic::AtomicUsize::new(0),
            readers,
            next_reader: std::sync::atomic::AtomicUsize::new(0),
            clock: parts.clock,
            entropy: parts.entropy,
            config: parts.config,
            in_flight: Mutex::new(HashSet::new()),
            gc_lock: Mutex::new(()),
            manifests: manifest_cache::ManifestCache::new(manifest_cache::MANIFEST_CACHE_BYTES),
            recent,
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
            index: IndexAt::File(dir.join("index.sqlite")),
            clock,
            entropy,
            config,
        })
    }

    /// The store's limits.
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    fn db(&self) -> MutexGuard<'_, Db> {
        // A panic while holding the lock leaves the index consistent (transactions roll back).
        free_or_next(&self.writers, &self.next_writer)
    }

    /// A connection for lookups only: a free reader, else the next one in turn, else (an
    /// in-memory index) the writer.
    fn reader(&self) -> MutexGuard<'_, Db> {
        if self.readers.is_empty() {
            return self.db();
        }
        free_or_next(&self.readers, &self.next_reader)
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
}

/// A free connection of `pool`, else the next one in turn.
fn free_or_next<'a>(
    pool: &'a [Mutex<Db>],
    next: &std::sync::atomic::AtomicUsize,
) -> MutexGuard<'a, Db> {
    for conn in pool {
        if let Ok(conn) = conn.try_lock() {
            return conn;
        }
    }
    let turn = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    pool[turn % pool.len()]
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ManualClock, MemoryBackend, SeededEntropy};

    /// A store over `backend` with the index at `index`, a fixed clock and seed, and
    /// alice's one-chunk photo in it; returns the store and the chunk.
    fn with_one_chunk(
        backend: Arc<MemoryBackend>,
        index: IndexAt,
    ) -> (Store, String, ChunkId, Bytes) {
        let store = Store::open(StoreParts {
            backend,
            index,
            clock: Arc::new(ManualClock::new(1_700_000_000_000)),
            entropy: Arc::new(SeededEntropy::new(7)),
            config: StoreConfig::default(),
        })
        .unwrap();
        let data = Bytes::from_static(b"a photo's first chunk");
        let id = ChunkId::of(&data);
        let session = store.begin_session("alice", 0, 60_000, None).unwrap();
        store
            .put_chunks("alice", &session.id, &[(id, data.clone())])
            .unwrap();
        (store, session.id, id, data)
    }

    #[test]
    fn a_download_does_not_wait_for_an_upload_holding_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _, id, data) = with_one_chunk(
            Arc::new(MemoryBackend::new()),
            IndexAt::File(dir.path().join("index.sqlite")),
        );
        let store = Arc::new(store);

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

    /// A device asks for a photo's manifest right after another stored it; on a bucket
    /// each read was a request of its own before the chunks could be asked for.
    #[test]
    fn a_manifest_just_stored_is_read_without_the_bucket_and_only_by_its_owner() {
        let backend = Arc::new(MemoryBackend::new());
        let (store, session, chunk, data) = with_one_chunk(backend.clone(), IndexAt::Memory);
        let manifest = Manifest::from_chunks(&[(chunk, data.clone())], ChunkId::of(&data));
        let id = store.put_manifest("alice", &session, &manifest).unwrap();
        for object in backend.list("").unwrap() {
            backend.delete(&object.name).unwrap();
        }
        assert_eq!(store.get_manifest("alice", &id).unwrap(), manifest);
        assert!(
            matches!(
                store.get_manifest("bob", &id),
                Err(StoreError::NotFound { .. })
            ),
            "the index still decides who may read it"
        );
        assert!(
            store.get_chunk("alice", &chunk).is_err(),
            "chunks are read from the bucket: it is empty"
        );
    }
}
