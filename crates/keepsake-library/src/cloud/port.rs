//! The chunk store as the library needs it, and the embedded store's implementation.

use super::*;

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
    /// Drops what nobody holds, repacks sparse packs, deletes retired ones.
    fn collect_garbage(&self) -> Result<keepsake_store::GcReport, StoreError>;
    /// Verifies again chunks a reader found corrupt; drops those that fail.
    fn recheck(
        &self,
        account: &str,
        ids: &[ChunkId],
    ) -> Result<keepsake_store::Recheck, StoreError>;
    /// Stores a small file (a preview) for the account and roots it for `holder`.
    fn store_file(
        &self,
        account: &str,
        bytes: &[u8],
        holder: &str,
    ) -> Result<ManifestId, StoreError>;
}

/// Pieces a stored preview is cut into (well under the store's chunk limit).
pub const PREVIEW_PIECE_BYTES: usize = 4 << 20;

impl ChunkStore for Store {
    fn scrub(&self) -> Result<keepsake_store::ScrubReport, StoreError> {
        Store::scrub(self)
    }
    fn collect_garbage(&self) -> Result<keepsake_store::GcReport, StoreError> {
        Store::collect_garbage(self)
    }
    fn recheck(
        &self,
        account: &str,
        ids: &[ChunkId],
    ) -> Result<keepsake_store::Recheck, StoreError> {
        Store::recheck(self, account, ids)
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
        copy_file_with(id, &manifest, max_len, out, |ids| {
            self.get_chunks(account, ids)
        })
    }
    fn store_file(
        &self,
        account: &str,
        bytes: &[u8],
        holder: &str,
    ) -> Result<ManifestId, StoreError> {
        store_file_with(self, account, bytes, holder, |session, pieces| {
            self.put_chunks(account, session, pieces).map(drop)
        })
    }
}

/// [`ChunkStore::copy_file`] for any store: the file of `manifest` (whose id is `id`)
/// written to `out` a group of chunks at a time, `fetch` answering each group (in groups,
/// a bucket serves neighbouring chunks in one request).
pub fn copy_file_with(
    id: &ManifestId,
    manifest: &Manifest,
    max_len: u64,
    out: &mut dyn std::io::Write,
    mut fetch: impl FnMut(&[ChunkId]) -> Result<Vec<(ChunkId, bytes::Bytes)>, StoreError>,
) -> std::io::Result<u64> {
    if manifest.total_len > max_len {
        return Err(std::io::Error::new(
            std::io::ErrorKind::FileTooLarge,
            format!("{} bytes, over {max_len}", manifest.total_len),
        ));
    }
    let mut whole = blake3::Hasher::new();
    for group in manifest.entries.chunks(64) {
        let ids: Vec<ChunkId> = group.iter().map(|e| e.chunk).collect();
        let by_id: std::collections::HashMap<ChunkId, bytes::Bytes> = fetch(&ids)
            .map_err(std::io::Error::other)?
            .into_iter()
            .collect();
        for entry in group {
            let chunk = by_id.get(&entry.chunk).ok_or_else(|| {
                std::io::Error::other(StoreError::NotFound {
                    kind: "chunk",
                    id: entry.chunk,
                })
            })?;
            whole.update(chunk);
            out.write_all(chunk)?;
        }
    }
    if ChunkId(*whole.finalize().as_bytes()) != manifest.file_hash {
        return Err(std::io::Error::other(StoreError::Corrupt(*id)));
    }
    Ok(manifest.total_len)
}

/// [`ChunkStore::store_file`] for any store: `bytes` cut into pieces, `put` under a session
/// of their own, the manifest stored and rooted for `holder`, the session ended.
pub fn store_file_with<S: ChunkStore + ?Sized>(
    store: &S,
    account: &str,
    bytes: &[u8],
    holder: &str,
    put: impl FnOnce(&str, &[(ChunkId, bytes::Bytes)]) -> Result<(), StoreError>,
) -> Result<ManifestId, StoreError> {
    let pieces: Vec<(ChunkId, bytes::Bytes)> = bytes
        .chunks(PREVIEW_PIECE_BYTES)
        .map(|p| (ChunkId::of(p), bytes::Bytes::copy_from_slice(p)))
        .collect();
    let session = store.open_session(account, bytes.len() as u64 + 4096, 600_000, None)?;
    let stored = (|| {
        put(&session.id, &pieces)?;
        let manifest = Manifest::from_chunks(&pieces, ChunkId::of(bytes));
        let id = store.put_manifest(account, &session.id, &manifest)?;
        store.reference(account, &id, holder)?;
        Ok(id)
    })();
    let _ = store.end_session(account, &session.id);
    stored
}
