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

const CHUNKS_AMONG: &str = "SELECT id FROM chunks WHERE id IN";

/// Chunk ids per `IN` list: one round trip per group on PostgreSQL, not one per chunk.
const ID_GROUP: usize = 64;

/// `(?N, …)` with `ID_GROUP` marks from `?first`. Groups are padded to one size so each
/// query has one text, prepared once.
fn id_marks(first: usize) -> String {
    let marks: Vec<String> = (first..first + ID_GROUP).map(|i| format!("?{i}")).collect();
    format!("({})", marks.join(", "))
}

/// `group` as `ID_GROUP` values, its last id repeated to fill.
fn padded(group: &[ChunkId]) -> impl Iterator<Item = Value> + '_ {
    (0..ID_GROUP).map(|i| group[i.min(group.len() - 1)].0.to_value())
}

/// The rows `select` returns for `ids`, a padded `IN` list per group of `ID_GROUP`.
/// `select` ends with `IN`; when `account` is given it is the first parameter. Each
/// `{ids}` in it is the same list again: a join filters both its tables by it, because
/// PostgreSQL carries an equality to the other side of a join but not an `IN` list, and
/// at a few thousand rows planned a scan of the whole `chunks` table for every lookup.
fn rows_among(
    db: &Db,
    select: &str,
    account: Option<&str>,
    ids: &[ChunkId],
) -> Result<Vec<keepsake_sql::Row>, StoreError> {
    let first = if account.is_some() { 2 } else { 1 };
    let marks = id_marks(first);
    let mut stmt = db.prepare_cached(&format!("{} {marks}", select.replace("{ids}", &marks)))?;
    let mut rows = Vec::new();
    for group in ids.chunks(ID_GROUP) {
        let mut values: Vec<Value> = account.iter().map(|a| a.to_value()).collect();
        values.extend(padded(group));
        rows.extend(stmt.query(values)?);
    }
    Ok(rows)
}

fn chunk_id(row: &keepsake_sql::Row, column: usize) -> Result<ChunkId, StoreError> {
    Ok(ChunkId::from_slice(&row.get::<_, Vec<u8>>(column)?)?)
}

/// The ids among `ids` that `select` (one chunk id column; see [`rows_among`]) finds.
pub(super) fn found_among(
    db: &Db,
    select: &str,
    account: Option<&str>,
    ids: &[ChunkId],
) -> Result<HashSet<ChunkId>, StoreError> {
    rows_among(db, select, account, ids)?
        .iter()
        .map(|row| chunk_id(row, 0))
        .collect()
}

/// The stored length of each data chunk among `ids` that `account` owns.
pub(super) fn owned_lengths(
    db: &Db,
    account: &str,
    ids: &[ChunkId],
) -> Result<HashMap<ChunkId, u32>, StoreError> {
    rows_among(
        db,
        "SELECT o.chunk, c.len FROM owners o JOIN chunks c ON c.id = o.chunk
         WHERE o.account = ?1 AND c.is_manifest = 0 AND c.id IN {ids} AND o.chunk IN",
        Some(account),
        ids,
    )?
    .iter()
    .map(|row| Ok((chunk_id(row, 0)?, row.get(1)?)))
    .collect()
}

pub(super) fn missing_for(
    conn: &Db,
    account: &str,
    chunks: &[ChunkId],
) -> Result<Vec<ChunkId>, StoreError> {
    let owned = found_among(
        conn,
        "SELECT o.chunk FROM owners o JOIN chunks c ON c.id = o.chunk
         WHERE o.account = ?1 AND c.is_manifest = 0 AND c.id IN {ids} AND o.chunk IN",
        Some(account),
        chunks,
    )?;
    Ok(chunks
        .iter()
        .filter(|id| !owned.contains(id))
        .copied()
        .collect())
}

/// Pins `ids` to the session, in id order as every writer inserts rows (see `index_batch`).
fn pin<'a>(
    tx: &Db,
    session_id: &str,
    ids: impl Iterator<Item = &'a ChunkId>,
) -> Result<(), StoreError> {
    let mut ids: Vec<&ChunkId> = ids.collect();
    ids.sort();
    let rows: Vec<Vec<Value>> = ids
        .iter()
        .map(|id| vec![session_id.to_value(), id.0.to_value()])
        .collect();
    tx.insert_rows_padded(
        "INSERT INTO session_pins (session_id, chunk)",
        2,
        &rows,
        "ON CONFLICT DO NOTHING",
    )?;
    Ok(())
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
        tx.hold(SWEEP_LOCK, false)?;
        check_live_session(&tx, account, session_id, now)?;
        let owned = found_among(
            &tx,
            "SELECT chunk FROM owners WHERE account = ?1 AND chunk IN",
            Some(account),
            ids,
        )?;
        pin(&tx, session_id, owned.iter())?;
        let missing: Vec<ChunkId> = ids
            .iter()
            .filter(|id| !owned.contains(id))
            .copied()
            .collect();
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
            let ids: Vec<ChunkId> = unique.iter().map(|(id, _, _)| *id).collect();
            // Ownership alone, from the owners' index: the batch's own transaction checks
            // again that each chunk assumed present still has its row (a sweep may have
            // taken it meanwhile), so the join to `chunks` here only cost a scan.
            found_among(
                &db,
                "SELECT chunk FROM owners WHERE account = ?1 AND chunk IN",
                Some(account),
                &ids,
            )?
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
                let parts = writer.finish();
                let pack = self.write_pack(parts.clone())?;
                // An upload's pack is what a device asks for next; a repacked one is not,
                // so only these are kept in memory. No reader can name it before its index
                // row commits.
                self.recent.insert(&pack.0, parts);
                Some((pack, slots))
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
                        self.recent.remove(name);
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
        let ids: Vec<ChunkId> = ids.iter().copied().collect();
        found_among(&self.reader(), CHUNKS_AMONG, None, &ids)
    }

    /// Writes a pack durably and returns (name, size).
    pub(super) fn write_pack(&self, parts: Vec<Bytes>) -> Result<(String, u64), StoreError> {
        let random = random_hex(self.entropy.as_ref(), 16);
        let name = format!("packs/{}/{}", &random[..2], &random[2..]);
        let size: usize = parts.iter().map(|p| p.len()).sum();
        let slices: Vec<&[u8]> = parts.iter().map(|p| &p[..]).collect();
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
        if let Err(e) = self.backend.put_parts(&name, &slices) {
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
        tx.hold(SWEEP_LOCK, false)?;
        check_live_session(&tx, account, session_id, now)?;
        let assumed: Vec<ChunkId> = present.iter().copied().collect();
        if found_among(&tx, CHUNKS_AMONG, None, &assumed)?.len() != assumed.len() {
            return Ok(None);
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
            // Rows in id order, in every transaction: two concurrent batches that share
            // chunks then take their row locks in one order and never deadlock.
            let mut slots: Vec<&(ChunkId, Slot, bool)> = slots.iter().collect();
            slots.sort_by_key(|(id, ..)| *id);
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
            tx.insert_rows_padded(
                "INSERT INTO chunks (id, pack_id, pack_offset, len, is_manifest)",
                5,
                &rows,
                "ON CONFLICT DO NOTHING",
            )?;
        }
        let mut ordered: Vec<&(ChunkId, Bytes, bool)> = unique.iter().collect();
        ordered.sort_by_key(|(id, ..)| *id);
        {
            // Rows in groups: one round trip per group, not per chunk, on PostgreSQL.
            let ownership: Vec<Vec<Value>> = ordered
                .iter()
                .map(|(id, _, _)| vec![account.to_value(), id.0.to_value()])
                .collect();
            let newly_owned: HashSet<Vec<u8>> = tx
                .insert_rows_padded(
                    "INSERT INTO owners (account, chunk)",
                    2,
                    &ownership,
                    "ON CONFLICT DO NOTHING RETURNING chunk",
                )?
                .iter()
                .map(|r| r.get::<_, Vec<u8>>(0))
                .collect::<Result<_, _>>()?;
            pin(&tx, session_id, ordered.iter().map(|(id, ..)| id))?;
            let (mut owned_bytes, mut owned_chunks) = (0i64, 0i64);
            for (id, data, is_manifest) in ordered {
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
            tx.insert_rows_padded(
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
        let (_, data) = self
            .get_chunks(account, std::slice::from_ref(id))?
            .remove(0);
        Ok(data)
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
        let len = RECORD_HEADER + u64::from(slot.len);
        let record = match self.recent.read(pack, slot.offset, len) {
            Some(kept) => Ok(kept),
            None => self
                .backend
                .get_range(pack, slot.offset, len)
                .map(Bytes::from),
        };
        checked_record(id, pack, slot, record, ReadCheck::Verify)
    }

    /// Reads chunks `account` owns, each verified against its id, in the order asked:
    /// one index query for them all and neighbouring chunks of a pack in one backend
    /// read, so a bucket serves a group in a round trip or two rather than two per chunk.
    pub fn get_chunks(
        &self,
        account: &str,
        ids: &[ChunkId],
    ) -> Result<Vec<(ChunkId, Bytes)>, StoreError> {
        self.get_chunks_checked(account, ids, ReadCheck::Verify)
    }

    /// [`Store::get_chunks`], with the check `check` asks for.
    pub fn get_chunks_checked(
        &self,
        account: &str,
        ids: &[ChunkId],
        check: ReadCheck,
    ) -> Result<Vec<(ChunkId, Bytes)>, StoreError> {
        self.read_chunks(account, ids, check, Source::Nearest)
    }

    fn read_chunks(
        &self,
        account: &str,
        ids: &[ChunkId],
        check: ReadCheck,
        source: Source,
    ) -> Result<Vec<(ChunkId, Bytes)>, StoreError> {
        self.check_count(ids.len())?;
        let located: HashMap<ChunkId, (String, Slot)> = rows_among(
            &self.reader(),
            "SELECT o.chunk, p.name, c.pack_offset, c.len
             FROM owners o JOIN chunks c ON c.id = o.chunk
             JOIN packs p ON p.pack_id = c.pack_id
             WHERE o.account = ?1 AND c.id IN {ids} AND o.chunk IN",
            Some(account),
            ids,
        )?
        .iter()
        .map(|row| {
            let slot = Slot {
                offset: row.get::<_, i64>(2)? as u64,
                len: row.get(3)?,
            };
            Ok((chunk_id(row, 0)?, (row.get(1)?, slot)))
        })
        .collect::<Result<_, StoreError>>()?;
        let mut reads = Vec::with_capacity(ids.len());
        for id in ids {
            let (pack, slot) = located.get(id).ok_or(StoreError::NotFound {
                kind: "chunk",
                id: *id,
            })?;
            reads.push((
                pack.as_str(),
                slot.offset,
                RECORD_HEADER + u64::from(slot.len),
            ));
        }
        let records = self.read_ranges(&reads, source);
        ids.iter()
            .zip(records)
            .map(|(id, record)| {
                let (pack, slot) = &located[id];
                checked_record(id, pack, *slot, record, check).map(|data| (*id, data))
            })
            .collect()
    }

    /// Reads again, verified, chunks a reader found corrupt ([`ReadCheck::ByReader`]), and
    /// quarantines those that fail here ([`Store::quarantine`]); returns them and what
    /// they damaged. A chunk the account does not own is skipped as if it were sound, so
    /// a report neither takes content away nor tells of another account's chunks.
    pub fn recheck(&self, account: &str, ids: &[ChunkId]) -> Result<Recheck, StoreError> {
        self.check_count(ids.len())?;
        let mut corrupt = Vec::new();
        for id in ids {
            // From the bucket itself: the question is what is at rest.
            match self.read_chunks(
                account,
                std::slice::from_ref(id),
                ReadCheck::Verify,
                Source::AtRest,
            ) {
                Ok(_) | Err(StoreError::NotFound { .. }) => {}
                Err(StoreError::Corrupt(bad)) => corrupt.push(bad),
                Err(e) => return Err(e),
            }
        }
        corrupt.sort_unstable();
        corrupt.dedup();
        let damaged = if corrupt.is_empty() {
            Vec::new()
        } else {
            tracing::error!(
                account,
                corrupt = corrupt.len(),
                "a reader's report of corrupt chunks confirmed"
            );
            self.quarantine(&corrupt)?
        };
        Ok(Recheck { corrupt, damaged })
    }
}

/// Where a read may be answered from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// Packs kept in memory since they were written, else the backend.
    Nearest,
    /// The backend alone.
    AtRest,
}

impl Store {
    /// Each `(pack, offset, len)` range, from the packs kept in memory where `source`
    /// allows and the rest from the backend in one call.
    fn read_ranges(
        &self,
        reads: &[(&str, u64, u64)],
        source: Source,
    ) -> Vec<Result<Bytes, BackendError>> {
        let mut answers: Vec<Option<Result<Bytes, BackendError>>> = reads
            .iter()
            .map(|&(pack, offset, len)| match source {
                Source::Nearest => self.recent.read(pack, offset, len).map(Ok),
                Source::AtRest => None,
            })
            .collect();
        let missed: Vec<(&str, u64, u64)> = reads
            .iter()
            .zip(&answers)
            .filter(|(_, kept)| kept.is_none())
            .map(|(read, _)| *read)
            .collect();
        if missed.is_empty() {
            return answers.into_iter().flatten().collect();
        }
        let mut fetched = self.backend.get_ranges(&missed).into_iter();
        for answer in &mut answers {
            if answer.is_none() {
                *answer = fetched.next();
            }
        }
        answers
            .into_iter()
            .map(|a| a.unwrap_or_else(|| Err(BackendError::Io(std::io::Error::other("no answer")))))
            .collect()
    }
}

/// What [`Store::recheck`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recheck {
    /// Reported chunks that failed the store's own check, now dropped from the index.
    pub corrupt: Vec<ChunkId>,
    /// Each (account, referenced manifest) that lost one of them.
    pub damaged: Vec<(String, ManifestId)>,
}

/// How much of a chunk the store checks as it reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadCheck {
    /// Its record's header and the BLAKE3 of its bytes: nothing unverified leaves.
    Verify,
    /// Its record's header only: the reader hashes every chunk itself (a device must, to
    /// trust nothing between it and the disk) and reports a mismatch, which
    /// [`Store::recheck`] verifies here. Each byte is hashed once on its way out, not twice.
    ByReader,
}

/// The chunk inside a record read from `pack`, or why it cannot be served.
fn checked_record(
    id: &ChunkId,
    pack: &str,
    slot: Slot,
    record: Result<Bytes, BackendError>,
    check: ReadCheck,
) -> Result<Bytes, StoreError> {
    let record = match record {
        Ok(record) => record,
        Err(BackendError::NotFound(_)) => return Err(StoreError::Corrupt(*id)),
        Err(BackendError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            return Err(StoreError::Corrupt(*id));
        }
        Err(e) => return Err(e.into()),
    };
    let checked = match check {
        ReadCheck::Verify => verify_record(id, slot, &record),
        ReadCheck::ByReader => record_body(id, slot, &record),
    };
    if let Err(e) = checked {
        tracing::error!(chunk = %id, pack, "corrupt chunk refused");
        return Err(e);
    }
    // The chunk is the record past its header; slicing shares the buffer just read
    // rather than copying megabytes per chunk served.
    Ok(record.slice(RECORD_HEADER as usize..))
}
