//! Commits rooted in the store, and purges released from it through the outbox.

use super::*;

/// A commit as a device sends it: the content is named by its manifest, whose size and
/// whole-file hash the cloud reads from the store rather than trusting the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitAsset {
    /// Client-chosen, per account.
    pub request_id: String,
    /// `None` for a new asset.
    pub asset_id: Option<String>,
    /// The version the edit started from.
    pub base_version: Option<u32>,
    /// The uploaded manifest.
    pub manifest: ManifestId,
    /// Photo or video.
    pub kind: AssetKind,
    /// When it was taken (or the file time), if known.
    pub capture_time: Option<UnixMillis>,
    /// Pixel width.
    pub width: Option<u32>,
    /// Pixel height.
    pub height: Option<u32>,
    /// The original file name (data, never a path).
    pub original_name: String,
    /// Where it is in the library folder (untrusted; empty: `original_name` at the top).
    pub path: String,
    /// The committing device.
    pub device: String,
    /// What the file says of itself (camera, place, orientation, length).
    pub details: crate::MediaDetails,
    /// The reservation the upload ran under, if any.
    pub reservation_id: Option<String>,
    /// The manifest itself, stored under the reservation first when the store lacks it.
    pub manifest_upload: Option<ManifestUpload>,
}

/// A manifest sent with its commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManifestUpload {
    /// Every entry.
    Whole(Manifest),
    /// Splices of a manifest the account holds (an edited file).
    Edit {
        /// The manifest the splices copy from.
        base: ManifestId,
        /// In order; the new manifest is their concatenation.
        splices: Vec<Splice>,
        /// BLAKE3 of the whole new file.
        file_hash: ChunkId,
    },
}

/// The store reference a commit takes: derived from the request id, so a retried
/// commit takes the same one.
pub(super) fn holder_for(account: &str, request_id: &str) -> String {
    let digest = blake3::hash(format!("{account}\0{request_id}").as_bytes());
    format!("commit:{}", &digest.to_hex()[..32])
}

impl Cloud {
    /// Commits uploaded content: the store roots the manifest first (refusing, with the
    /// missing chunk ids, if any chunk is not owned), then the library records the asset
    /// or version and its feed entry in one transaction. Idempotent per request id.
    pub fn commit_asset(
        &self,
        account: &str,
        commit: &CommitAsset,
    ) -> Result<Committed, LibraryError> {
        let manifest = self.committed_manifest(account, commit)?;
        let req = CommitRequest {
            request_id: commit.request_id.clone(),
            asset_id: commit.asset_id.clone(),
            base_version: commit.base_version,
            manifest: commit.manifest,
            file_hash: manifest.file_hash,
            size: manifest.total_len,
            kind: commit.kind,
            capture_time: commit.capture_time,
            width: commit.width,
            height: commit.height,
            original_name: commit.original_name.clone(),
            path: commit.path.clone(),
            device: commit.device.clone(),
            details: commit.details.clone(),
        };
        // Only a commit naming the damaged asset repairs it: a new file with the same bytes
        // is a photo of its own (its chunks mend the store all the same).
        let repaired = self
            .library
            .damaged_with(account, &commit.manifest)?
            .filter(|(asset_id, _)| commit.asset_id.as_deref() == Some(asset_id.as_str()));
        if let Some((asset_id, version)) = repaired {
            // A device sent a damaged asset's content again. Rooting the manifest under a
            // throwaway holder is the store's proof that every chunk is owned again
            // (MISSING_CHUNKS otherwise); the asset's own reference never went away.
            let probe = holder_for(account, &format!("repair:{}", commit.request_id));
            self.store.reference(account, &commit.manifest, &probe)?;
            self.store.release(account, &commit.manifest, &probe)?;
            self.library.clear_damaged(account, &asset_id)?;
            // Previews that could not be made from the damaged original can be now.
            self.library
                .retry_failed_derivation(account, &asset_id, version)?;
            let asset = self.library.get_asset(account, &asset_id)?;
            return Ok(Committed {
                asset_id,
                version,
                seq: asset.seq,
                conflict: false,
                deduplicated: true,
                path: asset.path,
            });
        }
        if let Some(answer) = self.library.prior_commit(account, &req)? {
            return Ok(answer);
        }
        let holder = holder_for(account, &commit.request_id);
        let now = self.library.clock.now_ms();
        fail::fail_point!("cloud-before-ref-outbox");
        // Written before the store is touched: if we crash after referencing, the
        // reconcile pass finds the row and releases what no commit kept.
        self.library.db().execute(
            "INSERT INTO ref_outbox (account, manifest, holder, action, at) VALUES (?1, ?2, ?3, 'pending', ?4)
             ON CONFLICT (account, manifest, holder) DO NOTHING",
            params![account, &commit.manifest.0[..], holder, now],
        )?;
        fail::fail_point!("cloud-before-store-reference");
        let outcome = self.reference_and_commit(account, &req, &holder, commit);
        fail::fail_point!("cloud-before-release-pending");
        if outcome.as_ref().map_or(true, |c| c.deduplicated) {
            self.release_pending(account, &commit.manifest, &holder)?;
        }
        outcome
    }

    /// The manifest a commit names, stored first from the commit itself where the store
    /// lacks it. A replayed commit finds it stored and never needs the session again.
    pub(super) fn committed_manifest(
        &self,
        account: &str,
        commit: &CommitAsset,
    ) -> Result<Manifest, LibraryError> {
        let upload = match (
            self.store.manifest(account, &commit.manifest),
            &commit.manifest_upload,
        ) {
            (Err(StoreError::NotFound { .. }), Some(upload)) => upload,
            (found, _) => return Ok(found?),
        };
        let session = commit.reservation_id.as_deref().ok_or_else(|| {
            StoreError::InvalidArgument(
                "a manifest sent with a commit needs its reservation".into(),
            )
        })?;
        let stored = match upload {
            ManifestUpload::Whole(manifest) => {
                self.store.put_manifest(account, session, manifest)?
            }
            ManifestUpload::Edit {
                base,
                splices,
                file_hash,
            } => self
                .store
                .put_manifest_edit(account, session, base, splices, *file_hash)?,
        };
        if stored != commit.manifest {
            return Err(StoreError::InvalidArgument(format!(
                "the manifest sent is {stored}, not the manifest_id {} the commit names",
                commit.manifest
            ))
            .into());
        }
        Ok(self.store.manifest(account, &stored)?)
    }

    pub(super) fn reference_and_commit(
        &self,
        account: &str,
        req: &CommitRequest,
        holder: &str,
        commit: &CommitAsset,
    ) -> Result<Committed, LibraryError> {
        self.store.reference(account, &req.manifest, holder)?;
        fail::fail_point!("cloud-after-store-reference");
        let (plan, _) = self.library.account_plan(account)?;
        let used = self.store.used_bytes(account)?;
        if used > plan.limit_bytes {
            return Err(LibraryError::QuotaExceeded {
                used_bytes: used,
                reserved_bytes: 0,
                needed_bytes: 0,
                limit_bytes: plan.limit_bytes,
            });
        }
        self.library
            .commit_with(account, req, Some(holder), commit.reservation_id.as_deref())
    }

    /// Releases a reference no unpurged version holds, then forgets it.
    pub(super) fn release_pending(
        &self,
        account: &str,
        manifest: &ManifestId,
        holder: &str,
    ) -> Result<(), LibraryError> {
        let held: bool = self
            .library
            .db()
            .query_row(
                "SELECT 1 FROM versions v JOIN assets a ON a.account = v.account AND a.asset_id = v.asset_id
                 WHERE v.account = ?1 AND v.holder = ?2 AND v.manifest = ?3 AND a.state != 'purged' LIMIT 1",
                params![account, holder, &manifest.0[..]],
                |_| Ok(true),
            )
            .optional()?
            .unwrap_or(false);
        if !held {
            self.store.release(account, manifest, holder)?;
        }
        self.library.db().execute(
            "DELETE FROM ref_outbox WHERE account = ?1 AND manifest = ?2 AND holder = ?3",
            params![account, &manifest.0[..], holder],
        )?;
        Ok(())
    }

    /// Makes `version` of an asset current again everywhere: a new version whose content is
    /// that version's manifest, which the store already holds, so nothing is uploaded. The
    /// new version's base is the current one, so a device that edited meanwhile keeps both
    /// (a conflict, as for any stale edit). Idempotent per request id.
    pub fn revert(
        &self,
        account: &str,
        asset_id: &str,
        version: u32,
        request_id: &str,
        device: &str,
    ) -> Result<Committed, LibraryError> {
        let asset = self.library.get_asset(account, asset_id)?;
        if asset.state != crate::AssetState::Live {
            return Err(LibraryError::NotLive(asset_id.to_string()));
        }
        let old = self
            .library
            .list_versions(account, asset_id)?
            .into_iter()
            .find(|v| v.version == version)
            .ok_or_else(|| LibraryError::NotFound {
                kind: "version",
                id: format!("{asset_id} v{version}"),
            })?;
        let commit = CommitAsset {
            request_id: request_id.to_string(),
            asset_id: Some(asset_id.to_string()),
            base_version: Some(asset.version),
            manifest: old.manifest,
            kind: asset.kind,
            capture_time: asset.capture_time,
            width: asset.width,
            height: asset.height,
            original_name: asset.original_name,
            path: asset.path,
            device: device.to_string(),
            details: old.details,
            reservation_id: None,
            manifest_upload: None,
        };
        let committed = self.commit_asset(account, &commit)?;
        tracing::info!(account, asset = %asset_id, to = version, now = committed.version, "version reverted");
        Ok(committed)
    }

    /// Purges an asset and releases its content in the store.
    pub fn purge(&self, account: &str, asset_id: &str) -> Result<(), LibraryError> {
        self.library.purge(account, asset_id)?;
        self.drain_releases(Some(account))?;
        Ok(())
    }

    /// Releases queued references (of one account, or all), and abandoned pending ones.
    pub(super) fn drain_releases(&self, account: Option<&str>) -> Result<usize, LibraryError> {
        let cutoff = self.library.clock.now_ms() - self.library.config.pending_ref_grace_ms;
        let rows: Vec<(String, Vec<u8>, String)> = {
            let db = self.library.db();
            let mut stmt = db.prepare(
                "SELECT account, manifest, holder FROM ref_outbox
                 WHERE (CAST(?1 AS TEXT) IS NULL OR account = ?1) AND (action = 'release' OR at <= ?2)",
            )?;
            stmt.query_map(params![account, cutoff], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?
            .collect::<Result<_, _>>()?
        };
        let count = rows.len();
        for (account, manifest, holder) in rows {
            let manifest =
                ChunkId::from_slice(&manifest).map_err(keepsake_store::StoreError::from)?;
            self.release_pending(&account, &manifest, &holder)?;
        }
        Ok(count)
    }
}
