//! Storage: previews, eviction under Optimize Storage, and the mobile-data budget.

use super::*;

impl<C: Cloud> Device<C> {
    pub(super) fn on_cellular(&self) -> bool {
        self.conditions
            .as_ref()
            .is_some_and(|c| c.network == Some(keepsake_policy::Network::Cellular))
    }

    pub(super) fn cellular_key(&self) -> Key<'static> {
        Key::CellularBytes(day_of(self.clock.now_ms(), self.policy.utc_offset_minutes))
    }

    /// Bytes moved over mobile data today (by this device's clock and the policy's offset).
    pub fn cellular_used_today(&self) -> Result<u64, DeviceError> {
        Ok(self
            .journal
            .get(self.cellular_key())?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0))
    }

    /// Whether `bytes` more would overrun today's mobile allowance; says so in the report.
    pub(super) fn over_budget(&self, bytes: u64, report: &mut SyncReport) -> bool {
        let Some(budget) = self.pass.budget else {
            return false;
        };
        let spent = report.bytes_sent + report.bytes_received;
        if spent + bytes > budget {
            report.blocked = Some("CELLULAR_CAP_REACHED".into());
            return true;
        }
        false
    }

    /// Space used here: (bytes of originals the cloud holds, bytes of previews, originals
    /// in the cloud only).
    pub fn storage(&self) -> Result<(u64, u64, u64), DeviceError> {
        let previews = match std::fs::read_dir(self.previews_dir()) {
            Ok(entries) => entries
                .filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum(),
            Err(_) => 0,
        };
        Ok((
            self.journal.synced_bytes()?,
            previews,
            self.journal.count_cloud_only()?,
        ))
    }

    /// Where an asset's preview is kept, if the device has it.
    pub fn preview_path(&self, asset_id: &str) -> Option<PathBuf> {
        let path = self.previews_dir().join(format!("{asset_id}.jpg"));
        path.exists().then_some(path)
    }

    pub(super) fn previews_dir(&self) -> PathBuf {
        self.config.data_dir.join("previews")
    }

    /// Brings an original kept in the cloud only back into the folder, verified; it counts
    /// towards the budget like any other and, being the newest, is evicted last.
    pub async fn fetch_original(&mut self, asset_id: &str) -> Result<PathBuf, DeviceError> {
        let row = self
            .journal
            .cloud_only(asset_id)?
            .ok_or_else(|| DeviceError::Unknown {
                kind: "cloud-only original",
                id: asset_id.to_string(),
            })?;
        let meta = self.journal.meta(asset_id)?;
        let remote = RemoteAsset {
            asset_id: row.asset_id.clone(),
            version: row.version,
            manifest: row.manifest,
            file_hash: row.file_hash,
            size: row.size,
            original_name: keepsake_path::file_name(&row.name).to_string(),
            path: row.name.clone(),
            state: RemoteState::Live,
            favorite: meta.as_ref().is_some_and(|m| m.favorite),
            hidden: meta.as_ref().is_some_and(|m| m.hidden),
            clock: Hlc::default(),
            preview: None,
            damaged: false,
        };
        let mut report = SyncReport::default();
        let (budget, waits) = (self.pass.budget.take(), self.pass.downloads_wait.take());
        let fetched = self.download(&remote, None, None, &mut report).await;
        (self.pass.budget, self.pass.downloads_wait) = (budget, waits);
        fetched?;
        self.journal.remove_cloud_only(asset_id)?;
        let path = self
            .journal
            .file_of_asset(asset_id)?
            .map(|f| self.config.folder.join(f.path))
            .ok_or_else(|| std::io::Error::other("the fetched original was not recorded"))?;
        Ok(path)
    }

    /// Keeps originals within the budget: the oldest synced ones go first, and only when
    /// the cloud acknowledged that exact version (never a pending upload or local edit).
    pub(super) fn evict(&mut self, report: &mut SyncReport) -> Result<(), DeviceError> {
        let Some(budget) = self.config.optimize_budget else {
            return Ok(());
        };
        let mut held = self.journal.synced_bytes()?;
        if held <= budget {
            return Ok(());
        }
        let mut rows: Vec<FileRow> = self
            .journal
            .files()?
            .into_iter()
            .filter(|f| f.synced)
            .collect();
        rows.sort_by_key(|f| f.mtime_ns);
        for f in rows {
            if held <= budget {
                break;
            }
            let Some(asset) = f.asset_id.as_deref() else {
                continue;
            };
            let Some((version, manifest, _)) = self.journal.current(asset)? else {
                continue;
            };
            if f.version != Some(version) {
                continue;
            }
            // The file must still be what the cloud holds: a change not yet scanned stays.
            if !self.unchanged_since_scan(&f) {
                continue;
            }
            let path = self.config.folder.join(&f.path);
            self.journal.evict(&f, &manifest)?;
            std::fs::remove_file(&path)?;
            held -= f.size;
            report.evicted += 1;
            tracing::info!(path = %f.path, asset, "original evicted; the cloud holds it");
        }
        Ok(())
    }

    /// Under Optimize Storage, every asset's preview is here.
    pub(super) async fn fetch_previews(
        &mut self,
        report: &mut SyncReport,
    ) -> Result<(), DeviceError> {
        if self.config.optimize_budget.is_none() {
            return Ok(());
        }
        std::fs::create_dir_all(self.previews_dir())?;
        for (asset_id, preview) in self.journal.previews()? {
            let dest = self.previews_dir().join(format!("{asset_id}.jpg"));
            if dest.exists() {
                continue;
            }
            let manifest = self.cloud.manifest(&preview).await?;
            let ids: Vec<ChunkId> = manifest.entries.iter().map(|e| e.chunk).collect();
            let got: HashMap<ChunkId, Bytes> = self.cloud.chunks(&ids).await?.into_iter().collect();
            let mut bytes = Vec::with_capacity(manifest.total_len as usize);
            for e in &manifest.entries {
                bytes.extend_from_slice(
                    got.get(&e.chunk)
                        .ok_or_else(|| DeviceError::Corrupt(asset_id.clone()))?,
                );
            }
            if ChunkId(*blake3::hash(&bytes).as_bytes()) != manifest.file_hash {
                return Err(DeviceError::Corrupt(asset_id));
            }
            let temp = self
                .config
                .data_dir
                .join("tmp")
                .join(format!("{asset_id}.preview"));
            std::fs::write(&temp, &bytes)?;
            std::fs::rename(&temp, &dest)?;
            report.previews += 1;
        }
        Ok(())
    }
}
