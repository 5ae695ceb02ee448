//! Reading the library: one asset, its versions, and the per-account change feed.

use super::*;

/// Cursors are opaque: the compaction epoch they were issued in, then the sequence number.
pub(super) const CURSOR_SEQ_BITS: u32 = 48;
pub(super) const CURSOR_SEQ_MASK: u64 = (1 << CURSOR_SEQ_BITS) - 1;

/// The channel each feed move is announced on, with the account as payload, when its
/// transaction commits: how a commit on one server wakes the watchers on every other
/// server of the same PostgreSQL database (`keepsake_sql::listen`).
pub const FEED_CHANNEL: &str = "keepsake_feed";

/// Hands out the account's next sequence number; callers hold the one write lock,
/// so numbers are assigned in commit order and a reader never skips one.
pub(super) fn next_seq(tx: &Db, account: &str) -> Result<u64, LibraryError> {
    tx.notify(FEED_CHANNEL, account)?;
    tx.execute(
        "INSERT INTO feed (account, seq) VALUES (?1, 0) ON CONFLICT (account) DO NOTHING",
        [account],
    )?;
    let seq: i64 = tx.query_row(
        "UPDATE feed SET seq = seq + 1 WHERE account = ?1 RETURNING seq",
        [account],
        |r| r.get(0),
    )?;
    Ok(seq as u64)
}

impl Library {
    /// One asset's latest state (purged ones too, as tombstones, until compaction).
    pub fn get_asset(&self, account: &str, asset_id: &str) -> Result<Asset, LibraryError> {
        self.db()
            .query_row(
                &format!(
                    "SELECT {ASSET_COLUMNS} FROM assets a JOIN versions v
                       ON v.account = a.account AND v.asset_id = a.asset_id AND v.version = a.current_version
                     WHERE a.account = ?1 AND a.asset_id = ?2"
                ),
                params![account, asset_id],
                asset_from_row,
            )
            .optional()?
            .ok_or_else(|| LibraryError::NotFound {
                kind: "asset",
                id: asset_id.to_string(),
            })
    }

    /// Every version of an asset, the original first.
    pub fn list_versions(
        &self,
        account: &str,
        asset_id: &str,
    ) -> Result<Vec<VersionInfo>, LibraryError> {
        let db = self.db();
        let mut stmt = db.prepare_cached(
            "SELECT version, manifest, file_hash, size, base_version, device, created_at, conflicts_with,
                    details
             FROM versions WHERE account = ?1 AND asset_id = ?2 ORDER BY version",
        )?;
        let versions: Vec<VersionInfo> = stmt
            .query_map(params![account, asset_id], |r| {
                Ok(VersionInfo {
                    version: r.get(0)?,
                    manifest: read_id(r.get(1)?)?,
                    file_hash: read_id(r.get(2)?)?,
                    size: r.get::<_, i64>(3)? as u64,
                    base_version: r.get(4)?,
                    device: r.get(5)?,
                    created_at: r.get(6)?,
                    conflicts_with: r.get(7)?,
                    details: MediaDetails::from_stored(r.get(8)?),
                })
            })?
            .collect::<Result<_, _>>()?;
        if versions.is_empty() {
            return Err(LibraryError::NotFound {
                kind: "asset",
                id: asset_id.to_string(),
            });
        }
        Ok(versions)
    }

    /// A cursor at the account's newest change: reading from it yields only later ones
    /// (a page that shows the library already and wants to hear what happens next).
    pub fn head_cursor(&self, account: &str) -> Result<u64, LibraryError> {
        let (head, epoch): (i64, i64) = self
            .db()
            .query_row(
                "SELECT seq, epoch FROM feed WHERE account = ?1",
                [account],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?
            .unwrap_or((0, 0));
        Ok(((epoch as u64) << CURSOR_SEQ_BITS) | head as u64)
    }

    /// Rows changed after `cursor`: each asset's and album's latest state, in sequence
    /// order. Reading from zero yields exactly the current library (plus tombstones).
    pub fn list_changes(
        &self,
        account: &str,
        cursor: u64,
        limit: usize,
    ) -> Result<ChangePage, LibraryError> {
        let limit = limit.clamp(1, self.config.max_page);
        let db = self.db();
        let (head, horizon, epoch): (i64, i64, i64) = db
            .query_row(
                "SELECT seq, horizon, epoch FROM feed WHERE account = ?1",
                [account],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?
            .unwrap_or((0, 0, 0));
        let (cursor_epoch, after) = (cursor >> CURSOR_SEQ_BITS, cursor & CURSOR_SEQ_MASK);
        if after > head as u64 || cursor_epoch > epoch as u64 {
            return Err(LibraryError::CursorFromFuture {
                cursor,
                head: head as u64,
            });
        }
        // A cursor from before the last compaction that had not yet seen the removed
        // tombstones would miss deletions: it must resync. Zero always starts afresh.
        if cursor != 0 && cursor_epoch < epoch as u64 && after < horizon as u64 {
            return Err(LibraryError::CursorExpired {
                cursor,
                horizon: horizon as u64,
            });
        }
        let cursor = after;
        let fetch = limit as i64 + 1;
        let mut changes: Vec<Change> = {
            let mut stmt = db.prepare_cached(&format!(
                "SELECT {ASSET_COLUMNS} FROM assets a JOIN versions v
                   ON v.account = a.account AND v.asset_id = a.asset_id AND v.version = a.current_version
                 WHERE a.account = ?1 AND a.seq > ?2 ORDER BY a.seq LIMIT ?3"
            ))?;
            stmt.query_map(params![account, cursor as i64, fetch], asset_from_row)?
                .map(|a| a.map(Change::Asset))
                .collect::<Result<_, _>>()?
        };
        {
            let mut stmt = db.prepare_cached(
                "SELECT album_id, name, deleted, seq, greatest(name_clock, deleted_clock,
                        COALESCE((SELECT MAX(m.clock) FROM album_members m
                                  WHERE m.account = albums.account AND m.album_id = albums.album_id), ''))
                 FROM albums WHERE account = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
            )?;
            let mut members = db.prepare_cached(
                "SELECT asset_id FROM album_members WHERE account = ?1 AND album_id = ?2 AND present = 1
                 ORDER BY asset_id",
            )?;
            let albums: Vec<(String, String, bool, i64, String)> = stmt
                .query_map(params![account, cursor as i64, fetch], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                })?
                .collect::<Result<_, _>>()?;
            for (album_id, name, deleted, seq, clock) in albums {
                let members = members
                    .query_map(params![account, album_id], |r| r.get(0))?
                    .collect::<Result<Vec<String>, _>>()?;
                changes.push(Change::Album(Album {
                    album_id,
                    name,
                    deleted,
                    members,
                    seq: seq as u64,
                    clock: Hlc::decode(&clock).unwrap_or_else(Hlc::zero),
                }));
            }
        }
        changes.sort_by_key(Change::seq);
        let more = changes.len() > limit;
        changes.truncate(limit);
        let cursor = (epoch as u64) << CURSOR_SEQ_BITS | changes.last().map_or(cursor, Change::seq);
        Ok(ChangePage {
            changes,
            cursor,
            more,
        })
    }
}
