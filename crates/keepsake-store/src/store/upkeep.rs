//! Scrub, quarantine, garbage collection and repacking.

use super::*;

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

impl Store {
    /// Verifies every indexed byte, and drops corrupt chunks from the index (see
    /// [`Store::quarantine`]).
    pub fn scrub(&self) -> Result<ScrubReport, StoreError> {
        let packs: Vec<(i64, String)> = {
            let db = self.db();
            let mut stmt = db.prepare(
                "SELECT pack_id, name FROM packs WHERE retired_at IS NULL ORDER BY pack_id",
            )?;
            stmt.query_map((), |r| Ok((r.get(0)?, r.get(1)?)))?
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
        tx.hold(SWEEP_LOCK, true)?;
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

    pub(super) fn slots_in(&self, pack_id: i64) -> Result<Vec<(ChunkId, Slot)>, StoreError> {
        let db = self.db();
        let mut stmt = db.prepare_cached(
            "SELECT id, pack_offset, len FROM chunks WHERE pack_id = ?1 ORDER BY pack_offset",
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

    pub(super) fn sweep(&self, now: UnixMillis, report: &mut GcReport) -> Result<(), StoreError> {
        let grace = self.config.grace_ms;
        let mut db = self.db();
        let tx = db.transaction()?;
        tx.hold(SWEEP_LOCK, true)?;
        // A session holds its pins until its lease ends or it is ended, plus the grace period.
        let lapsed = "SELECT session_id FROM sessions
                      WHERE least(COALESCE(ended_at, expires_at), expires_at) + ?1 <= ?2";
        tx.execute(
            &format!("DELETE FROM session_pins WHERE session_id IN ({lapsed})"),
            params![grace, now],
        )?;
        report.sessions_expired = tx.execute(
            "DELETE FROM sessions WHERE least(COALESCE(ended_at, expires_at), expires_at) + ?1 <= ?2",
            params![grace, now],
        )? as u64;
        // What is held, in a table of this connection's own; `WHERE true` keeps SQLite from
        // reading `ON CONFLICT` as the join's `ON`.
        let bytes_type = match tx.dialect() {
            keepsake_sql::Dialect::Sqlite => "BLOB",
            keepsake_sql::Dialect::Postgres => "BYTEA",
        };
        tx.execute_batch(&format!(
            "CREATE TEMP TABLE IF NOT EXISTS gc_keep (account TEXT, chunk {bytes_type}, PRIMARY KEY (account, chunk));
             DELETE FROM gc_keep;
             INSERT INTO gc_keep
                 SELECT s.account, p.chunk FROM session_pins p JOIN sessions s USING (session_id)
                 WHERE true ON CONFLICT DO NOTHING;
             INSERT INTO gc_keep SELECT account, manifest FROM refs WHERE true ON CONFLICT DO NOTHING;
             INSERT INTO gc_keep
                 SELECT r.account, m.chunk FROM refs r JOIN manifest_chunks m ON m.manifest = r.manifest
                 WHERE true ON CONFLICT DO NOTHING;",
        ))?;
        // Ownership nobody holds any more: drop it and its usage.
        let dropped: Vec<(String, i64)> = {
            let mut stmt = tx.prepare(
                "SELECT o.account, c.len FROM owners o JOIN chunks c ON c.id = o.chunk
                 WHERE NOT EXISTS (SELECT 1 FROM gc_keep k WHERE k.account = o.account AND k.chunk = o.chunk)",
            )?;
            stmt.query_map((), |r| Ok((r.get(0)?, r.get(1)?)))?
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
                 (SELECT 1 FROM gc_keep k WHERE k.account = owners.account AND k.chunk = owners.chunk)",
            (),
        )?;
        for (account, (bytes, chunks)) in per_account {
            add_usage(&tx, &account, -bytes, -chunks)?;
        }
        // Chunks no account owns are garbage.
        let (count, bytes): (i64, i64) = tx.query_row(
            "SELECT COUNT(*), COALESCE(SUM(len), 0) FROM chunks
             WHERE NOT EXISTS (SELECT 1 FROM owners o WHERE o.chunk = chunks.id)",
            (),
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        tx.execute(
            "DELETE FROM manifest_chunks WHERE manifest IN
                 (SELECT id FROM chunks WHERE NOT EXISTS (SELECT 1 FROM owners o WHERE o.chunk = chunks.id))",
            (),
        )?;
        tx.execute(
            "DELETE FROM chunks WHERE NOT EXISTS (SELECT 1 FROM owners o WHERE o.chunk = chunks.id)",
            (),
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

    pub(super) fn repack(&self, now: UnixMillis, report: &mut GcReport) -> Result<(), StoreError> {
        // Packs that are small or mostly dead, smallest live share first.
        let candidates: Vec<(i64, String, u64, u64)> = {
            let db = self.db();
            let mut stmt = db.prepare(
                "SELECT p.pack_id, p.name, p.size, COALESCE(SUM(c.len + 36), 0) AS live
                 FROM packs p LEFT JOIN chunks c ON c.pack_id = p.pack_id
                 WHERE p.retired_at IS NULL GROUP BY p.pack_id
                 HAVING p.size < ?1 OR COALESCE(SUM(c.len + 36), 0) * 2 < p.size
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

    pub(super) fn repack_group(
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
            tx.hold(SWEEP_LOCK, true)?;
            if let Some((name, size)) = &written {
                let new_pack = insert_pack(&tx, name, *size, now)?;
                let mut update = tx.prepare_cached(
                    "UPDATE chunks SET pack_id = ?1, pack_offset = ?2 WHERE id = ?3 AND pack_id = ?4",
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
                self.recent.remove(name);
                let _ = self.backend.delete(name);
            }
        }
        result
    }

    pub(super) fn delete_dead_packs(
        &self,
        now: UnixMillis,
        report: &mut GcReport,
    ) -> Result<(), StoreError> {
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
            self.recent.remove(&name);
            self.backend.delete(&name)?;
            self.db()
                .execute("DELETE FROM packs WHERE pack_id = ?1", [pack_id])?;
            report.packs_deleted += 1;
        }
        // Objects the index never learned of: a crash between pack write and index commit.
        // In this order: a pack listed and not yet indexed when the index is read was in
        // flight when in-flight was read (it leaves that set only after its commit).
        let listed = self.backend.list("packs/")?;
        let in_flight = self.in_flight.lock().expect("in-flight lock").clone();
        let known: HashSet<String> = {
            let db = self.db();
            let mut stmt = db.prepare("SELECT name FROM packs")?;
            stmt.query_map((), |r| r.get(0))?
                .collect::<Result<_, _>>()?
        };
        for object in listed {
            if !known.contains(&object.name) && !in_flight.contains(&object.name) {
                self.recent.remove(&object.name);
                self.backend.delete(&object.name)?;
                report.packs_deleted += 1;
            }
        }
        Ok(())
    }
}
