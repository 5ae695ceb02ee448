//! Manifests and the references that keep their chunks alive, and usage per account.

use super::*;

/// Bytes and chunks one account owns, each counted once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Bytes owned.
    pub bytes: u64,
    /// Chunks (and manifests) owned.
    pub chunks: u64,
}

impl Store {
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
            // One lookup for ownership and lengths, of the account's own chunks only: a
            // length of someone else's chunk would tell this caller it exists. The batch's
            // own transaction checks ownership again.
            let db = self.reader();
            let lens = owned_lengths(&db, account, &chunks)?;
            let missing: Vec<ChunkId> = chunks
                .iter()
                .filter(|id| !lens.contains_key(id))
                .copied()
                .collect();
            if !missing.is_empty() {
                return Err(StoreError::MissingChunks(missing));
            }
            for entry in &manifest.entries {
                let len = lens.get(&entry.chunk).copied().unwrap_or_default();
                if len != entry.len {
                    return Err(StoreError::MalformedManifest(format!(
                        "chunk {} is {len} bytes, the manifest says {}",
                        entry.chunk, entry.len
                    )));
                }
            }
        }
        let encoded = Bytes::from(encoded);
        self.store_blobs(
            account,
            session_id,
            Blob::Manifest {
                id,
                encoded: encoded.clone(),
                chunks,
            },
        )?;
        self.manifests.insert(id, encoded);
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
        let bytes = match self.manifests.get(id) {
            Some(kept) => kept,
            None => {
                let read = self.read_slot(id, &name, slot)?;
                self.manifests.insert(*id, read.clone());
                read
            }
        };
        Manifest::decode(&bytes).map_err(|_| StoreError::Corrupt(*id))
    }

    pub(super) fn check_holder(&self, holder: &str) -> Result<(), StoreError> {
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
        let mut db = self.db();
        // The checks and the insert as one: a sweep cannot take the chunks between them.
        let db = db.transaction()?;
        db.hold(SWEEP_LOCK, false)?;
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
            "INSERT INTO refs (account, manifest, holder, created_at) VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
            params![account, &manifest.0[..], holder, now],
        )?;
        db.commit()?;
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
}
