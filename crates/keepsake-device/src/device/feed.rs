//! Following the feed: each remote change reconciled with the folder and applied.

use super::reconcile::{FileHere, FileStep, Here, There, TrashHere, TrashStep, reconcile};
use super::*;

impl<C: Cloud> Device<C> {
    /// Records what the feed says of an asset's metadata and albums.
    pub(super) fn remember_metadata(&self, a: &RemoteAsset) -> Result<(), DeviceError> {
        self.journal.observe_clock(&a.clock)?;
        if a.state == RemoteState::Purged {
            self.journal.remove_current(&a.asset_id)?;
            self.journal.remove_cloud_only(&a.asset_id)?;
            let _ = std::fs::remove_file(self.previews_dir().join(format!("{}.jpg", a.asset_id)));
        } else {
            self.journal
                .set_current(&a.asset_id, a.version, &a.manifest, a.preview.as_ref())?;
        }
        match a.state {
            RemoteState::Purged => self.journal.remove_meta(&a.asset_id)?,
            state => self.journal.put_meta(&MetaRow {
                asset_id: a.asset_id.clone(),
                name: a.path.clone(),
                state: if state == RemoteState::Trashed {
                    "trashed".into()
                } else {
                    "live".into()
                },
                favorite: a.favorite,
                hidden: a.hidden,
            })?,
        }
        Ok(())
    }

    /// Whether `f` on disk is still what the journal last saw (size, time, inode): a file
    /// changed since the scan holds an edit the cloud has not seen, and stays where it is.
    pub(super) fn unchanged_since_scan(&self, f: &FileRow) -> bool {
        std::fs::metadata(self.config.folder.join(&f.path)).is_ok_and(|meta| {
            (meta.len(), mtime_ns(&meta), inode(&meta)) == (f.size, f.mtime_ns, f.inode)
        })
    }

    pub(super) async fn pull(&mut self, report: &mut SyncReport) -> Result<(), DeviceError> {
        fail::fail_point!("device-before-feed");
        let pulled = self.pull_pages(report).await;
        // What was applied before a failure stays applied, as each write on its own would.
        let ended = self.journal.end_batch();
        pulled?;
        Ok(ended?)
    }

    /// Reads the feed page by page; each page's journal writes are one batch, closed
    /// before any file is touched and at the page's end with the cursor in it.
    async fn pull_pages(&mut self, report: &mut SyncReport) -> Result<(), DeviceError> {
        let mut cursor: u64 = self
            .journal
            .get(Key::Cursor)?
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        loop {
            let page = match self.cloud.changes(cursor).await {
                Err(e) if e.reason == Reason::CursorExpired => {
                    // Tombstones we never saw were compacted: read everything again; every
                    // step below is idempotent against what the folder already holds.
                    cursor = 0;
                    continue;
                }
                other => other?,
            };
            for (i, asset) in page.assets.iter().enumerate() {
                self.journal.begin_batch()?;
                self.fetch_ahead(&page.assets, i, report)?;
                self.apply(asset, report).await?;
                if self.pass.deferred {
                    // Counting reads the rest of the feed: the control service may write.
                    self.journal.end_batch()?;
                    // A download was put off: the cursor stays before this page (what was
                    // applied is idempotent), the rest waits for the next pass.
                    // The count is for the ledger: a failure to read on says nothing of sync.
                    let rest = page.more.then_some(page.cursor);
                    if let Err(e) = self.count_waiting(&page.assets[i..], rest, report).await {
                        tracing::debug!(error = %e, "could not count the downloads that wait");
                    }
                    return Ok(());
                }
                self.remember_metadata(asset)?;
            }
            self.journal.begin_batch()?;
            for album in &page.albums {
                self.journal.observe_clock(&album.clock)?;
                if album.deleted {
                    self.journal.remove_album(&album.album_id)?;
                } else {
                    self.journal
                        .put_album(&album.album_id, &album.name, &album.members)?;
                }
            }
            // Whatever was fetched ahead and not used (the page changed its mind) is dropped.
            self.pass.ahead = Ahead::default();
            cursor = page.cursor;
            self.journal.set(Key::Cursor, &cursor.to_string())?;
            self.journal.end_batch()?;
            if !page.more {
                // Nothing waits: a later wait counts afresh.
                self.waiting_counted = None;
                return Ok(());
            }
        }
    }

    /// Counts the originals still to download, from `rest` of this page on to the feed's
    /// end (metadata only: nothing is fetched), so the ledger can say what this device
    /// waits for. The feed is read to its end at most once every few minutes.
    async fn count_waiting(
        &mut self,
        rest: &[RemoteAsset],
        mut next: Option<u64>,
        report: &mut SyncReport,
    ) -> Result<(), DeviceError> {
        let now = self.clock.now_ms();
        if let Some((at, count, bytes)) = self.waiting_counted
            && now - at < WAITING_RECOUNT_MS
        {
            (report.pending_downloads, report.pending_download_bytes) = (count, bytes);
            return Ok(());
        }
        let (mut count, mut bytes) = (0u64, 0u64);
        let mut tally = |this: &Self, assets: &[RemoteAsset]| -> Result<(), DeviceError> {
            for a in assets {
                if a.state == RemoteState::Live
                    && !a.damaged
                    && this.journal.file_of_asset(&a.asset_id)?.is_none()
                    && this.journal.cloud_only(&a.asset_id)?.is_none()
                {
                    count += 1;
                    bytes += a.size;
                }
            }
            Ok(())
        };
        tally(self, rest)?;
        while let Some(cursor) = next {
            let page = self.cloud.changes(cursor).await?;
            tally(self, &page.assets)?;
            next = page.more.then_some(page.cursor);
        }
        self.waiting_counted = Some((now, count, bytes));
        (report.pending_downloads, report.pending_download_bytes) = (count, bytes);
        Ok(())
    }

    pub(super) async fn apply(
        &mut self,
        a: &RemoteAsset,
        report: &mut SyncReport,
    ) -> Result<(), DeviceError> {
        // The scan decided what is synced; a file changed since holds an edit the cloud has
        // not seen, so every step below treats it as unsynced: it is never overwritten by a
        // newer version, moved to Recently Deleted, removed on a purge or sent as a repair.
        let local = self.journal.file_of_asset(&a.asset_id)?.map(|mut f| {
            f.synced = f.synced && self.unchanged_since_scan(&f);
            f
        });
        let trashed = self.journal.trashed(&a.asset_id)?;
        let deleted_dir = self.config.data_dir.join("recently-deleted");
        let still_damaged = a.damaged && a.state == RemoteState::Live;
        // Repaired, deleted or purged since: no longer waited for.
        if !still_damaged && self.waited_for.remove(&a.asset_id) {
            self.journal.forget(Key::DamagedWaiting(&a.asset_id))?;
        }
        let cloud_only = match (&local, &trashed) {
            (None, None) => self.journal.cloud_only(&a.asset_id)?,
            _ => None,
        };
        let here = Here {
            file: match &local {
                None => FileHere::Absent,
                Some(f) if f.synced => FileHere::Synced {
                    same: f.file_hash == a.file_hash,
                },
                Some(f) => FileHere::Edited {
                    same: f.file_hash == a.file_hash,
                },
            },
            trash: match &trashed {
                None => TrashHere::Absent,
                Some(t) => TrashHere::Kept {
                    same: t.file_hash == a.file_hash,
                    stored: deleted_dir.join(&t.stored_as).exists(),
                },
            },
            cloud_only: cloud_only.is_some(),
        };
        let there = There {
            state: a.state,
            damaged: a.damaged,
            path_ok: keepsake_path::check(&a.path).is_ok(),
        };
        let plan = reconcile(here, there);
        if plan.moves_files() {
            self.journal.end_batch()?;
        }
        if let Some(t) = &trashed {
            let stored = deleted_dir.join(&t.stored_as);
            match plan.trash {
                TrashStep::Leave => {}
                TrashStep::Discard => {
                    let _ = std::fs::remove_file(stored);
                    self.journal.remove_trashed(&a.asset_id)?;
                    if a.state == RemoteState::Purged {
                        report.purged += 1;
                    }
                }
                TrashStep::Restore => {
                    self.journal.remove_trashed(&a.asset_id)?;
                    let dest = self.place_new(&a.path)?;
                    move_file(&stored, &dest)?;
                    self.record_synced(&dest, a)?;
                    report.restored += 1;
                }
            }
        }
        match (plan.file, local) {
            (FileStep::Resend, Some(mut f)) => {
                // The cloud lost part of this exact content and this device holds it: upload
                // it again against the asset; the commit clears the flag everywhere.
                tracing::warn!(asset = %a.asset_id, path = %f.path, "the cloud lost part of this photo; sending it again");
                f.synced = false;
                f.version = Some(a.version);
                self.journal.upsert(&f)?;
                report.repairs += 1;
            }
            (FileStep::FollowCloudOnly, _) => {
                // Not here by choice: follow the cloud's version, fetch nothing.
                if let Some(mut c) = cloud_only {
                    (c.version, c.manifest, c.file_hash, c.size) =
                        (a.version, a.manifest, a.file_hash, a.size);
                    self.journal.put_cloud_only(&c)?;
                }
            }
            (FileStep::ForgetCloudOnly, _) => self.journal.remove_cloud_only(&a.asset_id)?,
            (FileStep::RefusePath, _) => {
                // The cloud checks every path; one that is not plain anyway is never written.
                tracing::warn!(asset = %a.asset_id, path = %a.path, "a path from the cloud refused");
                report.skipped.push(SkippedFile::path_refused(
                    a.path.clone(),
                    "the cloud sent a path that could lead out of the folder",
                ));
            }
            (FileStep::Keep, Some(f)) => {
                let mut f = self.follow_rename(f, a, report)?;
                if f.version != Some(a.version) {
                    f.version = Some(a.version);
                    self.journal.upsert(&f)?;
                }
            }
            (FileStep::DownloadBeside, Some(f)) => {
                // Never overwritten: the local edit commits later as a conflict, both kept.
                self.download(a, None, None, report).await?;
                tracing::info!(path = %f.path, asset = %a.asset_id, "kept a local edit beside a newer cloud version");
            }
            (FileStep::Replace, Some(f)) => {
                let f = self.follow_rename(f, a, report)?;
                let dest = self.config.folder.join(&f.path);
                self.download(a, Some(dest), None, report).await?;
            }
            (FileStep::Place, _) => self.place(a, report).await?,
            (FileStep::MoveToTrash, Some(f)) => {
                // Only this asset's own file moves: another file with the same bytes is
                // another photo. An edited file stays; its upload becomes a photo of its own
                // (the commit answers ASSET_NOT_LIVE).
                let name = keepsake_path::file_name(&f.path).to_string();
                let stored_as = format!("{}-{}", a.asset_id, name);
                move_file(
                    &self.config.folder.join(&f.path),
                    &deleted_dir.join(&stored_as),
                )?;
                self.journal.put_trashed(&TrashedRow {
                    asset_id: a.asset_id.clone(),
                    name: a.path.clone(),
                    stored_as,
                    file_hash: f.file_hash,
                    version: a.version,
                })?;
                self.journal.remove(&f.path)?;
                report.trashed_here += 1;
            }
            (FileStep::Remove, Some(f)) => {
                let _ = std::fs::remove_file(self.config.folder.join(&f.path));
                self.journal.remove(&f.path)?;
                report.purged += 1;
            }
            (FileStep::Leave, _) => {}
            (step, None) => unreachable!("{step:?} needs a file, and reconcile saw none"),
        }
        Ok(())
    }

    /// Places a live asset this device has no file of: adopts the same bytes already at its
    /// path, keeps it in the cloud under Optimize Storage, or fetches it (written from a
    /// file here with the same bytes when there is one).
    async fn place(&mut self, a: &RemoteAsset, report: &mut SyncReport) -> Result<(), DeviceError> {
        let target = paths::local_path(&a.path, self.config.fs);
        if let Some(here) = self.untracked_twin(&target, a)? {
            // The same bytes already sit at the asset's path but the scan has not taken
            // them (a reinstall over a restored folder, a copy still settling): adopt them
            // rather than download a " (2)" twin.
            self.record_synced(&here, a)?;
            report.adopted += 1;
        } else if self
            .config
            .optimize_budget
            .is_some_and(|budget| self.journal.synced_bytes().unwrap_or(u64::MAX) + a.size > budget)
        {
            // Optimize Storage: the preview stands in until it is opened.
            self.journal.put_cloud_only(&CloudOnlyRow {
                asset_id: a.asset_id.clone(),
                name: a.path.clone(),
                version: a.version,
                manifest: a.manifest,
                file_hash: a.file_hash,
                size: a.size,
            })?;
            report.kept_in_cloud += 1;
        } else {
            // A file here with the same bytes, another photo's (a copy made on another
            // device): written from it, nothing fetched.
            let copy_from = self
                .journal
                .file_with_hash(&a.file_hash, "")?
                .filter(|f| f.synced && self.unchanged_since_scan(f))
                .map(|f| self.config.folder.join(f.path));
            if copy_from.is_some() {
                report.copied_here += 1;
            }
            self.journal.end_batch()?;
            self.download(a, None, copy_from, report).await?;
        }
        Ok(())
    }

    /// Moves this asset's file to the path the library now gives it, when the library's
    /// path changed since this device last agreed with it (a rename or move made
    /// elsewhere). Not when the only change is the library's number on a name this
    /// device asked for (the file keeps its own name here), and never a file changed since
    /// the scan (it holds an edit; the next pass looks again).
    pub(super) fn follow_rename(
        &mut self,
        f: FileRow,
        a: &RemoteAsset,
        report: &mut SyncReport,
    ) -> Result<FileRow, DeviceError> {
        // A file from before paths were kept (or the library numbering a name this device
        // asked for) stays where it is: the library's path is only noted. An older device's
        // flattened names are never shuffled about, nor sent back as renames.
        let keep_name = match &f.lib_path {
            None => true,
            Some(agreed) if *agreed == a.path => return Ok(f),
            Some(agreed) => paths::unnumbered(&a.path) == *agreed,
        };
        if keep_name {
            let mut f = f;
            f.lib_path = Some(a.path.clone());
            self.journal.upsert(&f)?;
            return Ok(f);
        }
        if !self.unchanged_since_scan(&f) {
            return Ok(f);
        }
        self.journal.end_batch()?;
        let from = self.config.folder.join(&f.path);
        let to = self.place_new(&a.path)?;
        fail::fail_point!("device-before-rename");
        std::fs::rename(&from, &to)?;
        if let Some(parent) = to.parent() {
            sync_dir(parent)?;
        }
        let path = to
            .strip_prefix(&self.config.folder)
            .map_err(|_| std::io::Error::other("renamed outside the folder"))?
            .to_string_lossy()
            .into_owned();
        let row = FileRow {
            path,
            lib_path: Some(a.path.clone()),
            ..f.clone()
        };
        self.journal.relocate(&f.path, &row)?;
        self.remove_empty_dirs(keepsake_path::parent(&f.path));
        tracing::info!(from = %f.path, to = %row.path, asset = %a.asset_id, "renamed here as elsewhere");
        report.renamed_here += 1;
        Ok(row)
    }

    /// Where a file new to this folder goes for library path `lib_path`: its folders made
    /// (never through a link), its name as this file system takes it, numbered where the
    /// name is taken here.
    pub(super) fn place_new(&self, lib_path: &str) -> Result<PathBuf, DeviceError> {
        self.place_new_as(lib_path, self.config.fs)
    }

    pub(super) fn place_new_as(
        &self,
        lib_path: &str,
        rules: FsRules,
    ) -> Result<PathBuf, DeviceError> {
        let local = paths::local_path(lib_path, rules);
        let dir = paths::make_dirs(&self.config.folder, keepsake_path::parent(&local))?;
        let name = paths::unique_in(&dir, keepsake_path::file_name(&local), rules);
        Ok(dir.join(name))
    }

    /// Removes the folders a move left empty, from `rel_dir` up (a folder renamed
    /// elsewhere leaves none behind here).
    pub(super) fn remove_empty_dirs(&self, rel_dir: &str) {
        let mut dir = rel_dir.to_string();
        while !dir.is_empty() {
            // Fails, as it should, on a folder that still holds anything.
            if std::fs::remove_dir(self.config.folder.join(&dir)).is_err() {
                return;
            }
            dir = keepsake_path::parent(&dir).to_string();
        }
    }

    /// Journals a file the device itself wrote, so the scan never mistakes it for a user's.
    /// `folder/name` when no journal row claims it and it holds exactly `a`'s content.
    pub(super) fn untracked_twin(
        &self,
        name: &str,
        a: &RemoteAsset,
    ) -> Result<Option<PathBuf>, DeviceError> {
        let path = self.config.folder.join(name);
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_file() && meta.len() == a.size => {}
            _ => return Ok(None),
        }
        if self.journal.file(name)?.is_some() {
            return Ok(None);
        }
        Ok((whole_file_hash(&path)? == a.file_hash).then_some(path))
    }

    pub(super) fn record_synced(&self, dest: &Path, a: &RemoteAsset) -> Result<(), DeviceError> {
        // Stamped by the device's own clock, not the file system's: every time the sync
        // engine compares comes from one injected source, so a simulated run replays.
        // Stamped a racy window in the past: any later write gives the file a newer time
        // even on a coarse file system, so the stat is trusted at once and the next scans
        // do not read back and hash every file just downloaded.
        let when = std::time::UNIX_EPOCH
            + std::time::Duration::from_nanos(
                (self.clock.now_ms() * 1_000_000 - RACY_WINDOW_NS - 1_000_000).max(0) as u64,
            );
        std::fs::File::options()
            .write(true)
            .open(dest)?
            .set_modified(when)?;
        let meta = std::fs::metadata(dest)?;
        let path = dest
            .strip_prefix(&self.config.folder)
            .map_err(|_| std::io::Error::other("written outside the folder"))?
            .to_string_lossy()
            .into_owned();
        self.journal.upsert(&FileRow {
            path,
            size: meta.len(),
            mtime_ns: mtime_ns(&meta),
            inode: inode(&meta),
            file_hash: a.file_hash,
            asset_id: Some(a.asset_id.clone()),
            version: Some(a.version),
            synced: true,
            lib_path: Some(a.path.clone()),
            nonce: 0,
        })?;
        Ok(())
    }
}
