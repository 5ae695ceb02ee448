//! Commits: a device's upload becomes an asset or a new version, once per request.

use super::*;

impl CommitRequest {
    /// A hash of every field but the name and path, to tell a retry from a different
    /// request under the same id. A file renamed between an attempt whose answer was lost
    /// and its retry is the same request: the retry gets the first answer (and the device
    /// sends the rename), never REQUEST_ID_REUSED on every pass.
    fn fingerprint(&self) -> [u8; 32] {
        let mut h = blake3::Hasher::new();
        let mut field = |bytes: &[u8]| {
            h.update(&(bytes.len() as u64).to_le_bytes());
            h.update(bytes);
        };
        field(self.request_id.as_bytes());
        field(self.asset_id.as_deref().unwrap_or("\u{0}none").as_bytes());
        field(&self.base_version.map_or(-1, i64::from).to_le_bytes());
        field(self.manifest.as_bytes());
        field(self.file_hash.as_bytes());
        field(&self.size.to_le_bytes());
        field(self.kind.as_str().as_bytes());
        field(&self.capture_time.unwrap_or(i64::MIN).to_le_bytes());
        field(&self.width.map_or(-1, i64::from).to_le_bytes());
        field(&self.height.map_or(-1, i64::from).to_le_bytes());
        field(self.device.as_bytes());
        *h.finalize().as_bytes()
    }
}

/// A new asset's id: 48 bits of commit time, then 80 random bits, in hex (32 digits).
///
/// A feed page walks assets by sequence number and looks each up in versions, derivatives
/// and derive jobs by id. With wholly random ids those lookups land all over the index, and a
/// fresh device listing 100,000 assets read most of the index back one page at a time; ids
/// that begin with the time put assets committed together next to each other everywhere.
pub(super) fn new_asset_id(now: UnixMillis, entropy: &dyn Entropy) -> String {
    let millis = (now.max(0) as u64) & 0xffff_ffff_ffff;
    format!("{millis:012x}{}", random_hex(entropy, 10))
}

/// Which damaged asset's current version has a manifest. Every commit asks, so it starts
/// from the (nearly always empty) partial index of damaged assets: left to itself, SQLite
/// walked every version of the account, and commits slowed as the library grew.
pub(super) const DAMAGED_WITH_SQL: &str = "SELECT a.asset_id, a.current_version
    FROM assets a INDEXED BY assets_damaged CROSS JOIN versions v
      ON v.account = a.account AND v.asset_id = a.asset_id AND v.version = a.current_version
    WHERE a.account = ?1 AND v.manifest = ?2 AND a.damaged = 1 LIMIT 1";

/// The live or trashed assets whose current content has a hash. `+a.seq` keeps SQLite
/// from walking the whole feed in seq order to satisfy ORDER BY instead of looking the
/// hash up: that plan made every lookup O(library size).
pub(super) const SAME_CONTENT_SQL: &str = "SELECT {ASSET_COLUMNS}
     FROM versions v INDEXED BY versions_by_hash CROSS JOIN assets a
       ON a.account = v.account AND a.asset_id = v.asset_id AND a.current_version = v.version
     WHERE v.account = ?1 AND v.file_hash = ?2 AND a.state != 'purged' ORDER BY +a.seq";

pub(super) fn prior_commit(
    conn: &Db,
    account: &str,
    req: &CommitRequest,
) -> Result<Option<Committed>, LibraryError> {
    let prior = conn
        .query_row(
            "SELECT r.fingerprint, r.asset_id, r.version, r.seq, r.conflict, r.deduplicated,
                    coalesce(a.path, a.original_name, '')
             FROM requests r LEFT JOIN assets a ON a.account = r.account AND a.asset_id = r.asset_id
             WHERE r.account = ?1 AND r.request_id = ?2",
            params![account, req.request_id],
            |r| {
                Ok((
                    r.get::<_, Vec<u8>>(0)?,
                    Committed {
                        asset_id: r.get(1)?,
                        version: r.get(2)?,
                        seq: r.get::<_, i64>(3)? as u64,
                        conflict: r.get(4)?,
                        deduplicated: r.get(5)?,
                        path: r.get(6)?,
                    },
                ))
            },
        )
        .optional()?;
    match prior {
        Some((seen, _)) if seen != req.fingerprint() => {
            Err(LibraryError::RequestIdReused(req.request_id.clone()))
        }
        Some((_, answer)) => Ok(Some(answer)),
        None => Ok(None),
    }
}

/// `path`, or the first of `stem (2).ext`, `stem (3).ext`… that no other live asset holds,
/// case and Unicode normalization folded: every phone names its files `IMG_0001…`, so two
/// devices' photos meeting at one name is routine, and a case-insensitive file system
/// must never be asked to hold two of them.
pub(super) fn free_path(
    tx: &Db,
    account: &str,
    path: &str,
    except: Option<&str>,
) -> Result<String, LibraryError> {
    let mut taken = tx.prepare_cached(
        "SELECT 1 FROM assets WHERE account = ?1 AND path_key = ?2 AND state = 'live'
           AND asset_id != ?3",
    )?;
    let mut candidate = path.to_string();
    for n in 2..=u32::MAX {
        let key = keepsake_path::fold(&candidate);
        if !taken.exists(params![account, key, except.unwrap_or("")])? {
            return Ok(candidate);
        }
        candidate = keepsake_path::numbered(path, n);
    }
    Err(LibraryError::InvalidArgument(format!(
        "no free name near {path:?}"
    )))
}

pub(super) fn insert_version(
    tx: &Db,
    account: &str,
    asset_id: &str,
    version: u32,
    req: &CommitRequest,
    now: UnixMillis,
    (conflicts_with, holder): (Option<u32>, Option<&str>),
) -> Result<(), LibraryError> {
    tx.execute(
        "INSERT INTO versions (account, asset_id, version, manifest, file_hash, size, base_version,
                               device, created_at, conflicts_with, holder, details)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        params![
            account,
            asset_id,
            version,
            &req.manifest.0[..],
            &req.file_hash.0[..],
            req.size as i64,
            req.base_version,
            req.device,
            now,
            conflicts_with,
            holder,
            req.details.stored()
        ],
    )?;
    // Previews are made later, by a worker, from a queue that survives restarts; a job is
    // due from its commit on (which also tells the worker when uploads are still arriving).
    tx.execute(
        "INSERT INTO derive_jobs (account, asset_id, version, manifest, video, next_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT DO NOTHING",
        params![
            account,
            asset_id,
            version,
            &req.manifest.0[..],
            req.kind == AssetKind::Video,
            now
        ],
    )?;
    Ok(())
}

impl Library {
    /// Records new content as a new asset or a new version, once per request id.
    pub fn commit(&self, account: &str, req: &CommitRequest) -> Result<Committed, LibraryError> {
        self.commit_with(account, req, None, None)
    }

    /// The first answer to `req`'s request id, if it was already committed; a reused id
    /// with a different request is refused.
    pub fn prior_commit(
        &self,
        account: &str,
        req: &CommitRequest,
    ) -> Result<Option<Committed>, LibraryError> {
        prior_commit(&self.db(), account, req)
    }

    /// Like [`Library::commit`], for content the store keeps under `holder` (its
    /// pending outbox row is settled in the same transaction) and paid for from
    /// `reservation`.
    pub(crate) fn commit_with(
        &self,
        account: &str,
        req: &CommitRequest,
        holder: Option<&str>,
        reservation: Option<&str>,
    ) -> Result<Committed, LibraryError> {
        if req.request_id.is_empty() || req.request_id.len() > 128 {
            return Err(LibraryError::InvalidArgument(
                "request_id must be 1..=128 bytes".into(),
            ));
        }
        self.check_text("original_name", &req.original_name)?;
        self.check_text("device", &req.device)?;
        if !req.path.is_empty() {
            keepsake_path::check(&req.path)
                .map_err(|e| LibraryError::InvalidArgument(e.to_string()))?;
        }
        let fingerprint = req.fingerprint();
        let now = self.clock.now_ms();
        let mut db = self.db();
        let tx = db.transaction()?;
        if let Some(answer) = prior_commit(&tx, account, req)? {
            return Ok(answer);
        }
        let committed = match &req.asset_id {
            None => self.commit_new(&tx, account, req, now, holder)?,
            Some(asset_id) => self.commit_version(&tx, account, asset_id, req, now, holder)?,
        };
        if let Some(holder) = holder {
            // A deduplicated commit made no version: the reference taken for it is surplus.
            tx.execute(
                "UPDATE ref_outbox SET action = 'release', at = ?4
                 WHERE account = ?1 AND manifest = ?2 AND holder = ?3",
                params![account, &req.manifest.0[..], holder, now],
            )?;
            if !committed.deduplicated {
                tx.execute(
                    "DELETE FROM ref_outbox WHERE account = ?1 AND manifest = ?2 AND holder = ?3",
                    params![account, &req.manifest.0[..], holder],
                )?;
            }
        }
        if let Some(reservation) = reservation {
            tx.execute(
                "UPDATE reservations SET bytes = greatest(bytes - ?3, 0)
                 WHERE reservation_id = ?1 AND account = ?2",
                params![reservation, account, req.size as i64],
            )?;
        }
        tx.execute(
            "INSERT INTO requests (account, request_id, fingerprint, asset_id, version, seq, conflict, deduplicated)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                account,
                req.request_id,
                &fingerprint[..],
                committed.asset_id,
                committed.version,
                committed.seq as i64,
                committed.conflict,
                committed.deduplicated
            ],
        )?;
        fail::fail_point!("library-before-asset-commit");
        tx.commit()?;
        fail::fail_point!("library-after-asset-commit");
        tracing::debug!(account, asset = %committed.asset_id, version = committed.version, seq = committed.seq, "committed");
        Ok(committed)
    }

    pub(super) fn commit_new(
        &self,
        tx: &Db,
        account: &str,
        req: &CommitRequest,
        now: UnixMillis,
        holder: Option<&str>,
    ) -> Result<Committed, LibraryError> {
        // A file is an asset: the same bytes under another name (a copy, a twin in another
        // folder) are another asset, sharing chunks in the store, never merged.
        let asked = if req.path.is_empty() {
            req.original_name.as_str()
        } else {
            req.path.as_str()
        };
        let path = free_path(tx, account, asked, None)?;
        let asset_id = new_asset_id(now, self.entropy.as_ref());
        let seq = next_seq(tx, account)?;
        tx.execute(
            "INSERT INTO assets (account, asset_id, kind, capture_time, width, height, original_name,
                                 current_version, state, seq, path, path_key, camera, lat_e7, lon_e7)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 1, 'live', ?8, ?9, ?10, ?11, ?12, ?13)",
            params![
                account,
                asset_id,
                req.kind.as_str(),
                req.capture_time,
                req.width,
                req.height,
                req.original_name,
                seq as i64,
                path,
                keepsake_path::fold(&path),
                req.details.camera_key(),
                req.details.position_e7.map(|p| p.0),
                req.details.position_e7.map(|p| p.1)
            ],
        )?;
        insert_version(tx, account, &asset_id, 1, req, now, (None, holder))?;
        let key = keepsake_path::fold(&path);
        index_name(tx, account, &asset_id, (None, Some(&key)))?;
        if !req.details.content_identifier.trim().is_empty() {
            tx.execute(
                "UPDATE assets SET content_id = ?3 WHERE account = ?1 AND asset_id = ?2",
                params![account, asset_id, req.details.content_identifier.trim()],
            )?;
        }
        self.pair_new(tx, account, &asset_id, &path, req)?;
        Ok(Committed {
            asset_id,
            version: 1,
            seq,
            conflict: false,
            deduplicated: false,
            path,
        })
    }

    pub(super) fn commit_version(
        &self,
        tx: &Db,
        account: &str,
        asset_id: &str,
        req: &CommitRequest,
        now: UnixMillis,
        holder: Option<&str>,
    ) -> Result<Committed, LibraryError> {
        let (current, state): (u32, String) = tx
            .query_row(
                "SELECT current_version, state FROM assets WHERE account = ?1 AND asset_id = ?2",
                params![account, asset_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?
            .ok_or_else(|| LibraryError::NotFound {
                kind: "asset",
                id: asset_id.to_string(),
            })?;
        if state != "live" {
            return Err(LibraryError::NotLive(asset_id.to_string()));
        }
        // The content the asset already has (a second device re-sending a repaired photo,
        // an edit saved without a change) is no new version.
        let (current_hash, seq): (Vec<u8>, i64) = tx.query_row(
            "SELECT v.file_hash, a.seq FROM assets a JOIN versions v
               ON v.account = a.account AND v.asset_id = a.asset_id AND v.version = a.current_version
             WHERE a.account = ?1 AND a.asset_id = ?2",
            params![account, asset_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let path = asset_path(tx, account, asset_id)?;
        if current_hash == req.file_hash.0 {
            return Ok(Committed {
                asset_id: asset_id.to_string(),
                version: current,
                seq: seq as u64,
                conflict: false,
                deduplicated: true,
                path,
            });
        }
        let max: u32 = tx.query_row(
            "SELECT MAX(version) FROM versions WHERE account = ?1 AND asset_id = ?2",
            params![account, asset_id],
            |r| r.get(0),
        )?;
        let version = max + 1;
        // A stale base is not an error: both versions are kept, the later is current.
        let conflict = req.base_version.is_some_and(|b| b != current);
        insert_version(
            tx,
            account,
            asset_id,
            version,
            req,
            now,
            (conflict.then_some(current), holder),
        )?;
        let seq = next_seq(tx, account)?;
        // What the new bytes say of themselves (an edited capture date, a crop) is the
        // asset's now: it describes the version everyone will see — unless a person set
        // the date or the place in the library, which no file's own outranks.
        tx.execute(
            "UPDATE assets SET current_version = ?3, seq = ?4, kind = ?5,
                    capture_time = CASE WHEN capture_clock = '' THEN coalesce(?6, capture_time)
                                        ELSE capture_time END,
                    width = coalesce(?7, width), height = coalesce(?8, height), camera = ?9,
                    lat_e7 = CASE WHEN place_clock = '' THEN ?10 ELSE lat_e7 END,
                    lon_e7 = CASE WHEN place_clock = '' THEN ?11 ELSE lon_e7 END
             WHERE account = ?1 AND asset_id = ?2",
            params![
                account,
                asset_id,
                version,
                seq as i64,
                req.kind.as_str(),
                req.capture_time,
                req.width,
                req.height,
                req.details.camera_key(),
                req.details.position_e7.map(|p| p.0),
                req.details.position_e7.map(|p| p.1)
            ],
        )?;
        Ok(Committed {
            asset_id: asset_id.to_string(),
            version,
            seq,
            conflict,
            deduplicated: false,
            path,
        })
    }

    /// Live, trashed and purged assets whose current content has these hashes, and
    /// purge tombstones of content that is gone.
    pub fn find_by_content(
        &self,
        account: &str,
        hashes: &[ChunkId],
    ) -> Result<Vec<ContentMatch>, LibraryError> {
        let db = self.db();
        let mut assets =
            db.prepare_cached(&SAME_CONTENT_SQL.replace("{ASSET_COLUMNS}", ASSET_COLUMNS))?;
        let mut purged = db.prepare_cached(
            "SELECT path, purged_at FROM purged_files WHERE account = ?1 AND file_hash = ?2
             ORDER BY purged_at DESC LIMIT 64",
        )?;
        hashes
            .iter()
            .map(|h| {
                let found = assets
                    .query_map(params![account, &h.0[..]], asset_from_row)?
                    .collect::<Result<Vec<_>, _>>()?;
                let tombstones = purged
                    .query_map(params![account, &h.0[..]], |r| {
                        Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
                    })?
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(ContentMatch {
                    file_hash: *h,
                    assets: found,
                    purged_at: tombstones.iter().map(|(_, at)| *at).max(),
                    purged_paths: tombstones.into_iter().map(|(path, _)| path).collect(),
                })
            })
            .collect()
    }
}
