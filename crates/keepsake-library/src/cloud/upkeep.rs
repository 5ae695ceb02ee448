//! Maintenance and scrub: expiry, releases, compaction, and the proof of every byte.

use super::*;

/// What a library scrub verified and flagged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LibraryScrub {
    /// The store's report (packs, chunks and bytes verified; corrupt chunks dropped).
    pub store: keepsake_store::ScrubReport,
    /// Live or trashed assets in the library when the scrub finished.
    pub assets_verified: u64,
    /// Assets this scrub flagged as damaged.
    pub damaged: Vec<DamagedAsset>,
    /// Assets whose previews failed verification and were queued to be made again.
    pub previews_requeued: usize,
}

/// An asset a scrub found damaged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DamagedAsset {
    /// Its account.
    pub account: String,
    /// The asset.
    pub asset_id: String,
    /// Its file name, to tell a person which photo.
    pub original_name: String,
}

/// What a maintenance pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Maintenance {
    /// Assets purged because they sat in Recently Deleted past the retention period.
    pub trash_expired: usize,
    /// Reservations whose lease ran out.
    pub reservations_expired: usize,
    /// Store references released (purges, abandoned commits).
    pub refs_released: usize,
    /// Tombstones compacted.
    pub tombstones_compacted: u64,
}

impl Cloud {
    /// Verifies every stored byte, drops corrupt chunks from the store's index (never
    /// served), and flags every asset whose current content lost one as damaged, with a
    /// feed entry, so a device that still holds the original sends it again.
    pub fn scrub(&self) -> Result<LibraryScrub, LibraryError> {
        let store = self.store.scrub()?;
        let (damaged, previews_requeued) = self.flag_damaged(&store.damaged)?;
        let assets_verified = self.library.count_assets()?;
        self.library.record_integrity(self.library.clock.now_ms())?;
        tracing::info!(
            chunks = store.chunks_verified,
            assets = assets_verified,
            corrupt = store.corrupt_chunks.len(),
            damaged = damaged.len(),
            "scrub finished"
        );
        Ok(LibraryScrub {
            store,
            assets_verified,
            damaged,
            previews_requeued,
        })
    }

    /// Chunks a device found corrupt on arrival (`account`'s own): the store reads them
    /// again, verified, and only those that fail there are dropped and their assets
    /// flagged damaged, as a scrub would — a report never takes content away. Returns the
    /// chunks confirmed corrupt and every asset flagged (of any account sharing them).
    pub fn report_corrupt(
        &self,
        account: &str,
        ids: &[ChunkId],
    ) -> Result<(Vec<ChunkId>, Vec<DamagedAsset>), LibraryError> {
        let recheck = self.store.recheck(account, ids)?;
        if recheck.corrupt.is_empty() {
            tracing::warn!(
                account,
                reported = ids.len(),
                "reported chunks verified sound here: damaged in transit"
            );
            return Ok((Vec::new(), Vec::new()));
        }
        let (damaged, _) = self.flag_damaged(&recheck.damaged)?;
        Ok((recheck.corrupt, damaged))
    }

    /// Flags every asset whose current content is one of these manifests damaged (a feed
    /// entry each, so a device holding the original sends it again) and queues again the
    /// previews among them. Returns the assets flagged and the previews queued.
    fn flag_damaged(
        &self,
        manifests: &[(String, ManifestId)],
    ) -> Result<(Vec<DamagedAsset>, usize), LibraryError> {
        let mut by_account: std::collections::BTreeMap<&str, Vec<ManifestId>> =
            std::collections::BTreeMap::new();
        for (account, manifest) in manifests {
            by_account.entry(account).or_default().push(*manifest);
        }
        let mut damaged = Vec::new();
        let mut previews_requeued = 0;
        for (account, manifests) in by_account {
            // A damaged preview is made again from the original; a damaged original waits
            // for a device to send it again.
            previews_requeued += self.library.requeue_derivations(
                account,
                &manifests,
                "a preview failed verification",
            )?;
            for asset_id in self.library.mark_damaged(account, &manifests)? {
                let original_name = self.library.get_asset(account, &asset_id)?.original_name;
                damaged.push(DamagedAsset {
                    account: account.to_string(),
                    asset_id,
                    original_name,
                });
            }
        }
        Ok((damaged, previews_requeued))
    }

    /// Takes or renews the lease `name` for `holder` until `ttl_ms` from now; false while
    /// another holder's lease on it is live. Background work that must run once across
    /// every server on one database (maintenance, derivations) runs only while its lease
    /// is held, so no two servers do it at once, and a dead server's share is taken over
    /// when its lease runs out.
    pub fn hold_lease(&self, name: &str, holder: &str, ttl_ms: i64) -> Result<bool, LibraryError> {
        let now = self.library.clock.now_ms();
        let held = self
            .library
            .db()
            .query_row(
                "INSERT INTO leases (name, holder, expires_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (name) DO UPDATE SET holder = excluded.holder,
                     expires_at = excluded.expires_at
                 WHERE leases.holder = excluded.holder OR leases.expires_at <= ?4
                 RETURNING holder",
                params![name, holder, now.saturating_add(ttl_ms), now],
                |_| Ok(()),
            )
            .optional()?
            .is_some();
        Ok(held)
    }

    /// Starts signing with the key the database says is current and trusts every key it
    /// holds: another server on the same database may have rotated them.
    pub fn refresh_keys(&self) -> Result<(), LibraryError> {
        if let Some(current) = super::current_key(&self.library)? {
            let mut signer = self.signer.write().unwrap_or_else(|p| p.into_inner());
            if signer.kid != current.kid {
                tracing::info!(kid = %current.kid, "signing with the key another server made");
                *signer = current;
            }
        }
        self.verifier.replace(&self.public_keys()?)
    }

    /// Collects the store's garbage (wherever the store runs): what no reference holds.
    pub fn collect_garbage(&self) -> Result<keepsake_store::GcReport, LibraryError> {
        Ok(self.store.collect_garbage()?)
    }

    /// The periodic job: expires Recently Deleted and reservations, releases what purges
    /// and abandoned commits left referenced, compacts old tombstones, drops old keys.
    pub fn maintain(&self) -> Result<Maintenance, LibraryError> {
        let trash_expired = self.library.expire_trash()?.len();
        let now = self.library.clock.now_ms();
        let reservations_expired = self
            .library
            .db()
            .execute("DELETE FROM reservations WHERE expires_at <= ?1", [now])?;
        // A flood of made-up account names would otherwise leave a row each for ever.
        self.library.forget_old_sign_in_failures(now)?;
        let refs_released = self.drain_releases(None)?;
        let tombstones_compacted = self.library.compact()?;
        let cutoff = now - self.library.config.access_token_ttl_ms;
        let dropped = self.library.db().execute(
            "DELETE FROM signing_keys WHERE retired_at IS NOT NULL AND retired_at <= ?1",
            [cutoff],
        )?;
        if dropped > 0 {
            self.verifier.replace(&self.public_keys()?)?;
        }
        let report = Maintenance {
            trash_expired,
            reservations_expired,
            refs_released,
            tombstones_compacted,
        };
        tracing::debug!(?report, "maintenance done");
        Ok(report)
    }
}
