//! Chunks in and out: verified, packed with one fsync, indexed, then acknowledged.

use super::*;
use keepsake_sql::{ToValue, Value};

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

pub(super) enum Blob<'a> {
    Chunks(&'a [(ChunkId, Bytes)]),
    Manifest {
        id: ManifestId,
        encoded: Bytes,
        chunks: Vec<ChunkId>,
    },
}

pub(super) fn missing_for(
    conn: &Db,
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
pub(super) fn insert_pack(
    tx: &Db,
    name: &str,
    size: u64,
    now: UnixMillis,
) -> Result<i64, StoreError> {
    Ok(tx.query_row(
        "INSERT INTO packs (name, size, created_at) VALUES (?1, ?2, ?3) RETURNING pack_id",
        params![name, size as i64, now],
        |r| r.get(0),
    )?)
}

pub(super) fn add_usage(tx: &Db, account: &str, bytes: i64, chunks: i64) -> Result<(), StoreError> {
    if bytes == 0 && chunks == 0 {
        return Ok(());
    }
    tx.execute(
        "INSERT INTO usage (account, bytes, chunks) VALUES (?1, ?2, ?3)
         ON CONFLICT (account) DO UPDATE SET bytes = usage.bytes + ?2, chunks = usage.chunks + ?3",
        params![account, bytes, chunks],
    )?;
    Ok(())
}

impl Store {
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
                "INSERT INTO session_pins (session_id, chunk) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
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

    pub(super) fn store_blobs(
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

    pub(super) fn still_present(
        &self,
        ids: &HashSet<ChunkId>,
    ) -> Result<HashSet<ChunkId>, StoreError> {
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
    pub(super) fn write_pack(&self, parts: Vec<Bytes>) -> Result<(String, u64), StoreError> {
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
    pub(super) fn index_batch(
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
            let rows: Vec<Vec<Value>> = slots
                .iter()
                .map(|(id, slot, is_manifest)| {
                    vec![
                        id.0.to_value(),
                        pack_id.to_value(),
                        slot.offset.to_value(),
                        slot.len.to_value(),
                        is_manifest.to_value(),
                    ]
                })
                .collect();
            tx.insert_rows(
                "INSERT INTO chunks (id, pack_id, pack_offset, len, is_manifest)",
                5,
                &rows,
                "ON CONFLICT DO NOTHING",
            )?;
        }
        {
            // Rows in groups: one round trip per group, not per chunk, on PostgreSQL.
            let ownership: Vec<Vec<Value>> = unique
                .iter()
                .map(|(id, _, _)| vec![account.to_value(), id.0.to_value()])
                .collect();
            let newly_owned: HashSet<Vec<u8>> = tx
                .insert_rows(
                    "INSERT INTO owners (account, chunk)",
                    2,
                    &ownership,
                    "ON CONFLICT DO NOTHING RETURNING chunk",
                )?
                .iter()
                .map(|r| r.get::<_, Vec<u8>>(0))
                .collect::<Result<_, _>>()?;
            let pins: Vec<Vec<Value>> = unique
                .iter()
                .map(|(id, _, _)| vec![session_id.to_value(), id.0.to_value()])
                .collect();
            tx.insert_rows(
                "INSERT INTO session_pins (session_id, chunk)",
                2,
                &pins,
                "ON CONFLICT DO NOTHING",
            )?;
            let (mut owned_bytes, mut owned_chunks) = (0i64, 0i64);
            for (id, data, is_manifest) in unique {
                if newly_owned.contains(&id.0[..]) {
                    owned_bytes += data.len() as i64;
                    owned_chunks += 1;
                    new_bytes += data.len() as u64;
                } else if !is_manifest {
                    already_held += 1;
                }
            }
            add_usage(&tx, account, owned_bytes, owned_chunks)?;
        }
        if let Some((manifest_id, chunks)) = manifest {
            let links: Vec<Vec<Value>> = chunks
                .iter()
                .map(|chunk| vec![manifest_id.0.to_value(), chunk.0.to_value()])
                .collect();
            tx.insert_rows(
                "INSERT INTO manifest_chunks (manifest, chunk)",
                2,
                &links,
                "ON CONFLICT DO NOTHING",
            )?;
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

    pub(super) fn locate(
        &self,
        account: &str,
        id: &ChunkId,
        kind: &'static str,
    ) -> Result<(String, Slot, bool), StoreError> {
        let db = self.reader();
        let mut stmt = db.prepare_cached(
            "SELECT p.name, c.pack_offset, c.len, c.is_manifest
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

    pub(super) fn read_slot(
        &self,
        id: &ChunkId,
        pack: &str,
        slot: Slot,
    ) -> Result<Bytes, StoreError> {
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
}
