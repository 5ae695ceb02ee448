//! Damage, derivations, purges, expiry and compaction: the library's housekeeping.

use super::*;

pub(super) fn purge_in(
    tx: &Db,
    account: &str,
    asset_id: &str,
    now: UnixMillis,
) -> Result<Vec<ManifestId>, LibraryError> {
    let versions: Vec<(Vec<u8>, Vec<u8>, Option<String>)> = {
        let mut stmt = tx.prepare_cached(
            "SELECT manifest, file_hash, holder FROM versions WHERE account = ?1 AND asset_id = ?2",
        )?;
        stmt.query_map(params![account, asset_id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?
        .collect::<Result<_, _>>()?
    };
    let derived: Vec<(Vec<u8>, String)> = {
        let mut stmt = tx.prepare_cached(
            "SELECT manifest, holder FROM derivatives WHERE account = ?1 AND asset_id = ?2",
        )?;
        stmt.query_map(params![account, asset_id], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?
    };
    for (manifest, holder) in &derived {
        queue_release(tx, account, manifest, holder, now)?;
    }
    tx.execute(
        "DELETE FROM derivatives WHERE account = ?1 AND asset_id = ?2",
        params![account, asset_id],
    )?;
    let key = keepsake_path::fold(&asset_path(tx, account, asset_id)?);
    index_name(tx, account, asset_id, (Some(&key), None))?;
    tx.execute(
        "DELETE FROM derive_jobs WHERE account = ?1 AND asset_id = ?2",
        params![account, asset_id],
    )?;
    let mut released = Vec::new();
    for (manifest, file_hash, holder) in &versions {
        released.push(read_id(manifest.clone())?);
        if let Some(holder) = holder {
            queue_release(tx, account, manifest, holder, now)?;
        }
        tx.execute(
            "INSERT INTO purged_files (account, file_hash, path, asset_id, purged_at)
             VALUES (?1, ?2, (SELECT coalesce(path, original_name) FROM assets
                              WHERE account = ?1 AND asset_id = ?3), ?3, ?4)
             ON CONFLICT (account, file_hash, asset_id) DO UPDATE SET purged_at = ?4",
            params![account, file_hash, asset_id, now],
        )?;
    }
    let seq = next_seq(tx, account)?;
    tx.execute(
        "UPDATE assets SET state = 'purged', state_at = ?3, seq = ?4 WHERE account = ?1 AND asset_id = ?2",
        params![account, asset_id, now, seq as i64],
    )?;
    // Albums that held the asset change too; each gets its own sequence number so a
    // page boundary can never fall between two rows of one number.
    let albums: Vec<String> = {
        let mut stmt = tx.prepare_cached(
            "SELECT album_id FROM album_members WHERE account = ?1 AND asset_id = ?2 AND present = 1",
        )?;
        stmt.query_map(params![account, asset_id], |r| r.get(0))?
            .collect::<Result<_, _>>()?
    };
    tx.execute(
        "DELETE FROM album_members WHERE account = ?1 AND asset_id = ?2",
        params![account, asset_id],
    )?;
    for album_id in albums {
        let seq = next_seq(tx, account)?;
        tx.execute(
            "UPDATE albums SET seq = ?3 WHERE account = ?1 AND album_id = ?2",
            params![account, album_id, seq as i64],
        )?;
    }
    released.sort();
    released.dedup();
    Ok(released)
}

impl Library {
    /// Flags the live or trashed assets whose current version is one of `manifests` as
    /// damaged, each with a new feed entry so devices hear of it; returns them.
    pub fn mark_damaged(
        &self,
        account: &str,
        manifests: &[ManifestId],
    ) -> Result<Vec<String>, LibraryError> {
        let mut db = self.db();
        let tx = db.transaction()?;
        let mut flagged = Vec::new();
        for manifest in manifests {
            let ids: Vec<String> = tx
                .prepare_cached(
                    "SELECT a.asset_id FROM assets a JOIN versions v
                       ON v.account = a.account AND v.asset_id = a.asset_id
                      AND v.version = a.current_version
                     WHERE a.account = ?1 AND v.manifest = ?2 AND a.state != 'purged'
                       AND a.damaged = 0",
                )?
                .query_map(params![account, &manifest.0[..]], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            for asset_id in ids {
                let seq = next_seq(&tx, account)?;
                tx.execute(
                    "UPDATE assets SET damaged = 1, seq = ?3 WHERE account = ?1 AND asset_id = ?2",
                    params![account, asset_id, seq as i64],
                )?;
                tracing::error!(account, asset = %asset_id, "asset damaged: part of its content failed verification");
                flagged.push(asset_id);
            }
        }
        tx.commit()?;
        Ok(flagged)
    }

    /// Queues the current version's previews to be made again where a scrub found one of
    /// `manifests` (a derivative) corrupt, or after a damaged original was repaired.
    /// Returns how many assets' derivations were queued again.
    pub fn requeue_derivations(
        &self,
        account: &str,
        manifests: &[ManifestId],
        why: &str,
    ) -> Result<usize, LibraryError> {
        let mut db = self.db();
        let tx = db.transaction()?;
        let mut requeued = std::collections::HashSet::new();
        for manifest in manifests {
            let jobs: Vec<(String, u32)> = tx
                .prepare_cached(
                    "SELECT d.asset_id, d.version FROM derivatives d JOIN assets a
                       ON a.account = d.account AND a.asset_id = d.asset_id
                      AND a.current_version = d.version
                     WHERE d.account = ?1 AND d.manifest = ?2 AND a.state != 'purged'",
                )?
                .query_map(params![account, &manifest.0[..]], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?
                .collect::<Result<_, _>>()?;
            for (asset_id, version) in jobs {
                tx.execute(
                    "UPDATE derive_jobs SET state = 'queued', attempts = 0, next_at = 0, last_error = ?4
                      WHERE account = ?1 AND asset_id = ?2 AND version = ?3",
                    params![account, asset_id, version, why],
                )?;
                tracing::warn!(account, asset = %asset_id, version, "a preview failed verification; it will be made again");
                requeued.insert(asset_id);
            }
        }
        tx.commit()?;
        Ok(requeued.len())
    }

    /// Queues again a version's derivation that ended without previews (its original could
    /// not be read): called when a damaged original has been repaired.
    pub fn retry_failed_derivation(
        &self,
        account: &str,
        asset_id: &str,
        version: u32,
    ) -> Result<bool, LibraryError> {
        let changed = self.db().execute(
            "UPDATE derive_jobs SET state = 'queued', attempts = 0, next_at = 0
              WHERE account = ?1 AND asset_id = ?2 AND version = ?3 AND state = 'failed'",
            params![account, asset_id, version],
        )?;
        Ok(changed > 0)
    }

    /// Live or trashed assets across all accounts.
    pub fn count_assets(&self) -> Result<u64, LibraryError> {
        let n: i64 = self.db().query_row(
            "SELECT COUNT(*) FROM assets WHERE state != 'purged'",
            (),
            |r| r.get(0),
        )?;
        Ok(n as u64)
    }

    /// The damaged asset whose current version is `manifest`, if there is one.
    pub fn damaged_with(
        &self,
        account: &str,
        manifest: &ManifestId,
    ) -> Result<Option<(String, u32)>, LibraryError> {
        Ok(self
            .db()
            .query_row(DAMAGED_WITH_SQL, params![account, &manifest.0[..]], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?)
    }

    /// Clears an asset's damaged flag (its content is whole again), with a feed entry.
    pub fn clear_damaged(&self, account: &str, asset_id: &str) -> Result<(), LibraryError> {
        let mut db = self.db();
        let tx = db.transaction()?;
        let seq = next_seq(&tx, account)?;
        let changed = tx.execute(
            "UPDATE assets SET damaged = 0, seq = ?3 WHERE account = ?1 AND asset_id = ?2 AND damaged = 1",
            params![account, asset_id, seq as i64],
        )?;
        if changed == 1 {
            tx.commit()?;
            tracing::info!(account, asset = %asset_id, "damaged asset repaired");
        }
        Ok(())
    }

    /// Live assets whose current content is identical, grouped: a person decides which to
    /// keep (nothing is merged on its own). At most `limit` groups, largest files first.
    pub fn duplicates(
        &self,
        account: &str,
        limit: usize,
    ) -> Result<Vec<(ChunkId, Vec<Asset>)>, LibraryError> {
        let hashes: Vec<ChunkId> = {
            let db = self.db();
            let mut stmt = db.prepare_cached(
                "SELECT v.file_hash FROM assets a JOIN versions v
                   ON v.account = a.account AND v.asset_id = a.asset_id AND v.version = a.current_version
                 WHERE a.account = ?1 AND a.state = 'live'
                 GROUP BY v.file_hash HAVING COUNT(*) > 1
                 ORDER BY MAX(v.size) DESC, v.file_hash LIMIT ?2",
            )?;
            stmt.query_map(params![account, limit as i64], |r| read_id(r.get(0)?))?
                .collect::<Result<_, _>>()?
        };
        Ok(self
            .find_by_content(account, &hashes)?
            .into_iter()
            .map(|m| {
                let live = m
                    .assets
                    .into_iter()
                    .filter(|a| a.state == AssetState::Live)
                    .collect();
                (m.file_hash, live)
            })
            .collect())
    }

    /// Purges an asset (from anywhere in its life) and its companions in Recently Deleted:
    /// each becomes a tombstone, its content
    /// hashes are remembered, and the manifests of all its versions are returned so the
    /// caller can release them in the store. Idempotent: a second purge returns nothing.
    pub fn purge(&self, account: &str, asset_id: &str) -> Result<Vec<ManifestId>, LibraryError> {
        let now = self.clock.now_ms();
        let mut db = self.db();
        let tx = db.transaction()?;
        let state = asset_state(&tx, account, asset_id)?;
        if state == "purged" {
            return Ok(Vec::new());
        }
        // The companions in Recently Deleted with it go with it (asked while its own
        // moment of deletion is still on record).
        let with_it = self.companions(&tx, account, asset_id, "trashed")?;
        let mut released = purge_in(&tx, account, asset_id, now)?;
        for companion in with_it {
            released.extend(purge_in(&tx, account, &companion, now)?);
        }
        tx.commit()?;
        Ok(released)
    }

    /// Purges everything that has been in Recently Deleted past the retention period.
    /// Returns (account, asset, manifests to release).
    pub fn expire_trash(&self) -> Result<Vec<(String, String, Vec<ManifestId>)>, LibraryError> {
        let now = self.clock.now_ms();
        let mut db = self.db();
        let tx = db.transaction()?;
        let due: Vec<(String, String)> = {
            let mut stmt = tx.prepare(
                "SELECT account, asset_id FROM assets WHERE state = 'trashed' AND state_at + ?1 <= ?2",
            )?;
            stmt.query_map(params![self.config.trash_retention_ms, now], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?
            .collect::<Result<_, _>>()?
        };
        let mut out = Vec::new();
        for (account, asset_id) in due {
            let released = purge_in(&tx, &account, &asset_id, now)?;
            out.push((account, asset_id, released));
        }
        tx.commit()?;
        Ok(out)
    }

    /// Drops purge tombstones older than the retention period and moves each
    /// account's feed horizon past them; older cursors must resync.
    pub fn compact(&self) -> Result<u64, LibraryError> {
        let cutoff = self.clock.now_ms() - self.config.tombstone_retention_ms;
        let mut db = self.db();
        let tx = db.transaction()?;
        // Cursors issued before this compaction and older than the rows it removes
        // must resync; the epoch tells them apart from cursors issued after it.
        tx.execute(
            "UPDATE feed SET epoch = epoch + 1, horizon = greatest(horizon,
                 COALESCE((SELECT MAX(seq) FROM assets a
                     WHERE a.account = feed.account AND a.state = 'purged' AND a.state_at <= ?1), 0),
                 COALESCE((SELECT MAX(seq) FROM albums a
                     WHERE a.account = feed.account AND a.deleted = 1), 0))
             WHERE EXISTS (SELECT 1 FROM assets a
                     WHERE a.account = feed.account AND a.state = 'purged' AND a.state_at <= ?1)
                OR EXISTS (SELECT 1 FROM albums a WHERE a.account = feed.account AND a.deleted = 1)",
            [cutoff],
        )?;
        let removed = tx.execute(
            "DELETE FROM assets WHERE state = 'purged' AND state_at <= ?1",
            [cutoff],
        )? as u64;
        tx.execute(
            "DELETE FROM album_members WHERE (account, album_id) IN
                 (SELECT account, album_id FROM albums WHERE deleted = 1)",
            (),
        )?;
        tx.execute("DELETE FROM albums WHERE deleted = 1", ())?;
        tx.execute("DELETE FROM purged_content WHERE purged_at <= ?1", [cutoff])?;
        tx.execute("DELETE FROM purged_files WHERE purged_at <= ?1", [cutoff])?;
        tx.commit()?;
        Ok(removed)
    }
}
