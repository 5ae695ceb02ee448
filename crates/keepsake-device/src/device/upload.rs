//! Uploads: new and edited files read, chunked, looked up and sent, lanes at a time.

use super::*;

/// Runs of changed chunks smaller than this go whole: a delta would save too little to
/// pay for its round trips.
pub(super) const MIN_DELTA_RUN_BYTES: u64 = 16 << 10;

/// One question's answers about contents, and when it was asked.
#[derive(Default)]
pub(super) struct LookedUp {
    pub(super) answers: HashMap<ChunkId, ContentLookup>,
    pub(super) asked_at: i64,
}

/// New files whose contents one lookup call asks about.
pub(super) const LOOKUPS_AHEAD: usize = 1000;

/// How long a content lookup's answer is used: a photo purged elsewhere meanwhile must not
/// be uploaded again (a commit of purged content is a deliberate re-import).
pub(super) const LOOKUP_FRESH_MS: i64 = 60_000;

/// Files a pass uploads at once. Measured on 600 MiB, server and camera alone: two gave
/// 2.9–3.2 s until all was in the cloud, four 2.7 s, eight 2.5–2.6 s; on PostgreSQL + a
/// bucket, where each file waits longer on its commits, four 7.8 s and eight 7.4 s for the
/// first sync (docs/benchmarks.md). Eight keep a device's streams (up to three each,
/// [`STREAMS_PER_FILE`]) inside the cloud's 32 calls in flight per device. After the
/// server's disk was found full, one (`storage_was_full`).
pub(super) const UPLOAD_LANES: usize = 8;

/// File bytes held in memory by the files in flight; a larger file goes alone.
pub(super) const LANE_BYTES: u64 = 160 << 20;

/// Files read and chunked ahead of the one being prepared, at most.
pub(super) const READ_AHEAD_FILES: usize = 3;

/// Bytes read ahead, at most (on top of the lanes' [`LANE_BYTES`]); a larger file is read
/// when its turn comes.
pub(super) const READ_AHEAD_BYTES: u64 = 64 << 20;

/// Why a new file needs no upload.
pub(super) enum NoUpload {
    /// The library has this file: an asset with its content that no file here claims,
    /// at its path (or anywhere, for a device that lost its journal). Restored from
    /// Recently Deleted where it was there.
    InCloud(ContentHolder),
    /// A device that lost its journal finds the file of a photo purged elsewhere, at that
    /// photo's path: deleted for good, not uploaded again.
    Purged,
}

/// A file being read and chunked in the background.
pub(super) type Reading = tokio::task::JoinHandle<Result<(Manifest, Bytes), DeviceError>>;

/// The reads an upload pass started ahead: (row index, size, the read), in row order.
#[derive(Default)]
pub(super) struct ReadAhead {
    pub(super) reads: std::collections::VecDeque<(usize, u64, Reading)>,
    /// The first row not yet considered.
    pub(super) next: usize,
}

impl ReadAhead {
    pub(super) fn bytes(&self) -> u64 {
        self.reads.iter().map(|(_, size, _)| size).sum()
    }

    /// The read started for row `at`, if any; reads of rows the pass passed over are dropped.
    pub(super) fn take(&mut self, at: usize) -> Option<Reading> {
        while let Some((index, ..)) = self.reads.front() {
            if *index > at {
                return None;
            }
            let (index, _, reading) = self.reads.pop_front()?;
            if index == at {
                return Some(reading);
            }
        }
        None
    }
}

impl<C: Cloud> Device<C> {
    /// Sends every pending file that is still in the folder, several at once when the
    /// cloud offers lanes: one file's fsyncs on the cloud overlap the next one's transfer.
    pub(super) async fn upload_pending(
        &mut self,
        seen: &HashSet<String>,
        report: &mut SyncReport,
    ) -> Result<(), DeviceError> {
        let rows: Vec<FileRow> = self
            .journal
            .files()?
            .into_iter()
            .filter(|r| !r.synced && seen.contains(&r.path))
            .collect();
        self.progress.send_replace(Progress {
            phase: "uploading".into(),
            items_total: rows.len() as u64,
            bytes_total: rows.iter().map(|r| r.size).sum(),
            ..Progress::default()
        });
        let lanes = if self.storage_was_full {
            1
        } else {
            UPLOAD_LANES
        };
        let mut flying = Flying::new((0..lanes).map_while(|_| self.cloud.lane()).collect());
        let sent = self.send_each(&rows, &mut flying, report).await;
        self.looked_up.answers.clear();
        // Whatever is in flight lands (and is journaled) even when one file failed.
        let landed = self.land_all(&mut flying, report).await;
        let outcome = sent.and(landed);
        match &outcome {
            Err(DeviceError::Cloud(e)) if e.reason == crate::cloud::Reason::StorageFull => {
                self.storage_was_full = true;
            }
            Ok(()) => self.storage_was_full = false,
            Err(_) => {}
        }
        outcome
    }

    /// Prepares each row in turn and sends it on an idle lane, or on the pass's own
    /// connection when the cloud has no lanes.
    pub(super) async fn send_each(
        &mut self,
        rows: &[FileRow],
        flying: &mut Flying<C>,
        report: &mut SyncReport,
    ) -> Result<(), DeviceError> {
        let mut ahead = ReadAhead::default();
        for (at, row) in rows.iter().enumerate() {
            // Files in flight count in full against a mobile allowance until they land.
            if report.blocked.is_some() || self.over_budget(row.size + flying.bytes, report) {
                break;
            }
            if self.waits_with_videos(&row.path) {
                continue;
            }
            // The same content already on its way: once it lands, this file is its twin
            // and is linked without sending anything.
            if flying.hashes.contains(&row.file_hash) {
                self.land_all(flying, report).await?;
            }
            self.progress
                .send_modify(|p| p.current = Some(row.path.clone()));
            let lookup = match row.asset_id {
                Some(_) => None,
                None => Some(self.looked_up(&rows[at..]).await?),
            };
            let read = ahead.take(at);
            self.read_ahead(rows, at, &mut ahead, &flying.hashes)?;
            let Some(shipment) = self.prepare(row, lookup, read, report).await? else {
                self.progress.send_modify(|p| p.items_done += 1);
                continue;
            };
            let Content::Held { manifest, data } = &shipment.content else {
                // Its chunks are known only as they are read: it goes alone, on streams
                // of its own, so none of them can be on another lane.
                self.land_all(flying, report).await?;
                let shipped = ship(&mut self.cloud, shipment).await;
                self.land(shipped, report)?;
                continue;
            };
            // A shared chunk would be sent twice by two lanes; too many bytes in memory
            // at once would follow the largest videos. Either waits for the lanes.
            let shares = manifest
                .entries
                .iter()
                .any(|e| flying.chunks.contains(&e.chunk));
            if shares || flying.bytes + data.len() as u64 > LANE_BYTES {
                self.land_all(flying, report).await?;
            }
            while flying.idle.is_empty() && !flying.tasks.is_empty() {
                self.land_next(flying, report).await?;
            }
            match flying.idle.pop() {
                Some(lane) => flying.launch(lane, shipment),
                None => {
                    let shipped = ship(&mut self.cloud, shipment).await;
                    self.land(shipped, report)?;
                }
            }
        }
        Ok(())
    }

    /// What the cloud knows of the first row's content. Asked about with the contents of
    /// the next new files (up to [`LOOKUPS_AHEAD`]): one round trip for them all instead of
    /// one each. An answer is used no longer than [`LOOKUP_FRESH_MS`], so "deleted elsewhere
    /// for good" is never learnt late.
    pub(super) async fn looked_up(
        &mut self,
        rows: &[FileRow],
    ) -> Result<ContentLookup, DeviceError> {
        let hash = rows[0].file_hash;
        if let Some(lookup) = self.fresh_lookup(&hash) {
            return Ok(lookup.clone());
        }
        let mut seen = HashSet::new();
        let next: Vec<ChunkId> = rows
            .iter()
            .filter(|r| r.asset_id.is_none() && seen.insert(r.file_hash))
            .map(|r| r.file_hash)
            .take(LOOKUPS_AHEAD)
            .collect();
        // An answer is as old as its question.
        let asked_at = self.clock.now_ms();
        let found = self.cloud.lookups(&next).await?;
        self.looked_up = LookedUp {
            answers: next.into_iter().zip(found).collect(),
            asked_at,
        };
        Ok(self
            .looked_up
            .answers
            .get(&hash)
            .cloned()
            .unwrap_or_default())
    }

    /// The answer about `hash` from the last content question, if it is fresh enough.
    pub(super) fn fresh_lookup(&self, hash: &ChunkId) -> Option<&ContentLookup> {
        let fresh = self.clock.now_ms() - self.looked_up.asked_at < LOOKUP_FRESH_MS;
        self.looked_up.answers.get(hash).filter(|_| fresh)
    }

    /// What makes a new file's upload unnecessary, if anything. A file is an asset: a
    /// copy of a photo under another name is a photo of its own (its chunks are the cloud's
    /// already, so nothing but its manifest travels). Only the same file is linked: an
    /// asset with this content at this very path that no file here claims (another
    /// device's photo put here by hand, or a photo brought back to its place while in
    /// Recently Deleted) — and, on a device that lost its journal (a reinstall over a full
    /// folder), any unclaimed asset with this content, path and content first.
    pub(super) fn no_upload_needed(
        &self,
        row: &FileRow,
        lookup: &ContentLookup,
    ) -> Result<Option<NoUpload>, DeviceError> {
        let key = keepsake_path::fold(&row.path);
        // An asset another file here sent and has not heard back about is that file's.
        let mut awaited = HashSet::new();
        for nonce in self.journal.listed(Family::Attempt)? {
            let Ok(nonce) = nonce.parse() else { continue };
            if let Some(attempt) = self.journal.get(Key::Attempt(nonce))? {
                let sent_path = attempt.split_once(' ').map_or("", |(_, p)| p);
                awaited.insert(sent_path.to_string());
            }
        }
        let mut unclaimed = Vec::new();
        for holder in &lookup.assets {
            if self.journal.file_of_asset(&holder.asset_id)?.is_none()
                && self.journal.trashed(&holder.asset_id)?.is_none()
                && !awaited.contains(&paths::unnumbered(&holder.path))
                && !awaited.contains(&holder.path)
            {
                unclaimed.push(holder);
            }
        }
        // At its path: where this device would have put that asset.
        if let Some(at_path) = unclaimed
            .iter()
            .find(|h| paths::local_path(&h.path, self.config.fs) == row.path)
        {
            return Ok(Some(NoUpload::InCloud((*at_path).clone())));
        }
        if !self.reinstalling()? {
            return Ok(None);
        }
        // Path first for every file: an asset at the path of another file here is that
        // file's (the same, or edited since), not this one's.
        for live in unclaimed.iter().filter(|h| !h.trashed) {
            if self.journal.file(&live.path)?.is_none() {
                return Ok(Some(NoUpload::InCloud((*live).clone())));
            }
        }
        let purged_here = lookup
            .purged_paths
            .iter()
            .any(|p| keepsake_path::fold(p) == key);
        Ok(purged_here.then_some(NoUpload::Purged))
    }

    /// Whether a new file was sent before without its answer journalled. If it has been
    /// edited since and the library has an asset of the content it was sent with, at its
    /// path (or the path it was renamed from), that no file here claims, the file is that
    /// asset: its new bytes go as a new version.
    pub(super) async fn adopt_own_lost_commit(
        &mut self,
        row: &mut FileRow,
    ) -> Result<bool, DeviceError> {
        let key = Key::Attempt(row.nonce);
        let Some(attempt) = self.journal.get(key)? else {
            return Ok(false);
        };
        let (sent, sent_path) = attempt.split_once(' ').unwrap_or((&attempt, ""));
        let sent_path = keepsake_path::fold(sent_path);
        let Ok(sent) = hex::decode(sent)
            .map_err(|_| ())
            .and_then(|b| ChunkId::from_slice(&b).map_err(|_| ()))
        else {
            self.journal.forget(key)?;
            return Ok(false);
        };
        if sent == row.file_hash {
            // Sent as it is: the retry, same request id, gets the first answer.
            return Ok(true);
        }
        let found = self.cloud.lookups(&[sent]).await?;
        let here = keepsake_path::fold(&row.path);
        let mut own = None;
        for holder in found.into_iter().flat_map(|l| l.assets) {
            let at = keepsake_path::fold(&paths::unnumbered(&holder.path));
            if !holder.trashed
                && (at == here || at == sent_path)
                && self.journal.file_of_asset(&holder.asset_id)?.is_none()
            {
                own = Some(holder);
                break;
            }
        }
        self.journal.forget(key)?;
        let Some(holder) = own else {
            return Ok(false);
        };
        tracing::info!(path = %row.path, asset = %holder.asset_id, "a commit whose answer was lost: the file's edit goes as its new version");
        row.asset_id = Some(holder.asset_id.clone());
        row.version = Some(holder.version);
        row.lib_path = Some(holder.path.clone());
        self.rename_if_moved(row, &holder.asset_id, &holder.path)?;
        self.journal.upsert(row)?;
        Ok(true)
    }

    /// A file committed (or first sent) at a path it has left since: the library has the
    /// asset at `lib_path`, and the move goes as a rename.
    pub(super) fn rename_if_moved(
        &mut self,
        row: &mut FileRow,
        asset_id: &str,
        lib_path: &str,
    ) -> Result<bool, DeviceError> {
        if paths::unnumbered(lib_path) == paths::unnumbered(&row.path) {
            return Ok(false);
        }
        let edit = Edit::Rename {
            asset_id: asset_id.to_string(),
            path: row.path.clone(),
        };
        self.journal
            .queue_edit(&edit, self.clock.now_ms(), &self.config.device_id)?;
        row.lib_path = Some(row.path.clone());
        Ok(true)
    }

    /// Whether this device found its folder full when its journal was new (a reinstall,
    /// or a device joining with a copy of the library) and has not read the feed yet: its
    /// files may be the library's own under other names. A device that started empty
    /// never is: each file it sees was made here.
    pub(super) fn reinstalling(&self) -> Result<bool, DeviceError> {
        Ok(self.journal.get(Key::FoundFull)?.as_deref() == Some("1")
            && self.journal.get(Key::Cursor)?.is_none())
    }

    /// Waits for one file in flight and journals what it did.
    pub(super) async fn land_next(
        &mut self,
        flying: &mut Flying<C>,
        report: &mut SyncReport,
    ) -> Result<(), DeviceError> {
        let Some(joined) = flying.tasks.join_next().await else {
            return Ok(());
        };
        let (lane, shipped) = joined.map_err(|e| std::io::Error::other(e.to_string()))?;
        flying.idle.push(lane);
        flying.hashes.remove(&shipped.row.file_hash);
        flying.bytes = flying.bytes.saturating_sub(shipped.row.size);
        if flying.tasks.is_empty() {
            flying.chunks.clear();
        }
        self.land(shipped, report)
    }

    /// Waits for every file in flight; the first failure is returned after all landed.
    pub(super) async fn land_all(
        &mut self,
        flying: &mut Flying<C>,
        report: &mut SyncReport,
    ) -> Result<(), DeviceError> {
        let mut first = Ok(());
        while !flying.tasks.is_empty() {
            let landed = self.land_next(flying, report).await;
            if first.is_ok() {
                first = landed;
            }
        }
        first
    }

    /// Whether a file waits with the videos (for Wi-Fi, say) this pass. A Live Photo's
    /// movie does not: it carries Apple's content identifier and a still of its name is
    /// here, and it goes with its still, as a photo.
    pub(super) fn waits_with_videos(&self, path: &str) -> bool {
        if self.pass.videos_wait.is_none() || !is_video(path) {
            return false;
        }
        let Some((stem, _)) = path.rsplit_once('.') else {
            return true;
        };
        let still_here = ["HEIC", "heic", "JPG", "jpg", "JPEG", "jpeg"]
            .iter()
            .any(|ext| matches!(self.journal.file(&format!("{stem}.{ext}")), Ok(Some(_))));
        // Only the movie's header is read (its `moov`), however long the movie.
        let live_movie = still_here
            && std::fs::File::open(self.config.folder.join(path))
                .and_then(|mut f| keepsake_media::probe_reader(&mut f))
                .is_ok_and(|m| m.content_identifier.is_some());
        !live_movie
    }

    /// The file's whole-file hash, streamed: the scan needs only this, and chunking (three
    /// times the work) waits until the file is uploaded.
    pub(super) async fn hash_file(&self, path: &str) -> Result<ChunkId, DeviceError> {
        let full = self.config.folder.join(path);
        keepsake_store::offload(move || -> Result<ChunkId, DeviceError> {
            Ok(whole_file_hash(&full)?)
        })
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))?
    }

    /// Starts reading and chunking one file in the background.
    pub(super) fn read_and_chunk(&self, path: &str) -> Reading {
        let full = self.config.folder.join(path);
        keepsake_store::offload(move || -> Result<(Manifest, Bytes), DeviceError> {
            fail::fail_point!("device-reading-a-file", |_| Err(
                std::io::Error::from_raw_os_error(5).into()
            ));
            let data = std::fs::read(&full)?;
            let manifest = manifest_of(&data, ChunkParams::for_len(data.len() as u64));
            Ok((manifest, Bytes::from(data)))
        })
    }

    /// Whether `row`'s upload will need its bytes, as far as this pass can tell without
    /// asking: not already linked by the journal or a fresh content lookup, not purged.
    pub(super) fn will_send(
        &self,
        row: &FileRow,
        flying: &HashSet<ChunkId>,
    ) -> Result<bool, DeviceError> {
        if row.asset_id.is_some() {
            return Ok(true);
        }
        if flying.contains(&row.file_hash) || self.waits_with_videos(&row.path) {
            return Ok(false);
        }
        match self.fresh_lookup(&row.file_hash) {
            Some(lookup) => Ok(self.no_upload_needed(row, lookup)?.is_none()),
            None => Ok(false),
        }
    }

    /// Starts reading the files after row `at` that will be sent, within the read-ahead's
    /// bounds, so the next file is chunked while the lanes carry the ones before it.
    pub(super) fn read_ahead(
        &self,
        rows: &[FileRow],
        at: usize,
        ahead: &mut ReadAhead,
        flying: &HashSet<ChunkId>,
    ) -> Result<(), DeviceError> {
        ahead.next = ahead.next.max(at + 1);
        while ahead.reads.len() < READ_AHEAD_FILES && ahead.next < rows.len() {
            let row = &rows[ahead.next];
            if !self.will_send(row, flying)? || row.size >= self.config.streamed_from {
                ahead.next += 1;
                continue;
            }
            if ahead.bytes() + row.size > READ_AHEAD_BYTES {
                break;
            }
            let reading = self.read_and_chunk(&row.path);
            ahead.reads.push_back((ahead.next, row.size, reading));
            ahead.next += 1;
        }
        Ok(())
    }

    /// Readies one pending file: linked if the cloud already has it, skipped if it was
    /// purged elsewhere (`None` for both), else everything its upload needs.
    pub(super) async fn prepare(
        &mut self,
        row: &FileRow,
        lookup: Option<ContentLookup>,
        read: Option<Reading>,
        report: &mut SyncReport,
    ) -> Result<Option<Shipment>, DeviceError> {
        let mut row = row.clone();
        // A file sent before: its first content may be an asset already (then what it
        // holds now is an edit of it), or the retry gets the first answer. Either way it
        // is not linked to anything else.
        let sent_before = row.asset_id.is_none() && self.adopt_own_lost_commit(&mut row).await?;
        let no_upload = match &row.asset_id {
            Some(_) => None,
            None if sent_before => None,
            None => self.no_upload_needed(&row, &lookup.unwrap_or_default())?,
        };
        match no_upload {
            None => {}
            Some(NoUpload::InCloud(holder)) => {
                (row.asset_id, row.version, row.synced) =
                    (Some(holder.asset_id.clone()), Some(holder.version), true);
                // The file keeps its name here; the library's path is what it agreed with.
                row.lib_path = Some(holder.path.clone());
                self.journal.upsert(&row)?;
                if holder.trashed {
                    let edit = Edit::Restore {
                        asset_id: holder.asset_id,
                    };
                    self.journal
                        .queue_edit(&edit, self.clock.now_ms(), &self.config.device_id)?;
                    edits::show(&self.journal, &edit)?;
                    report.restored_by_return += 1;
                } else {
                    report.linked += 1;
                }
                return Ok(None);
            }
            Some(NoUpload::Purged) => {
                // Deleted elsewhere for good: never upload it again. The file leaves the
                // folder for the device's own data, where nothing syncs it.
                let parked = self
                    .config
                    .data_dir
                    .join("recently-deleted")
                    .join(format!("purged-{}", hex::encode(&row.file_hash.0[..8])));
                move_file(&self.config.folder.join(&row.path), &parked)?;
                self.journal.remove(&row.path)?;
                report.not_resurrected += 1;
                return Ok(None);
            }
        }
        // Linking needs only the scan's hash: a file changed since is linked as it was
        // scanned, and the next scan sends the change as a new version. An edit of a
        // large video streams too: FindMissing, batch by batch, keeps what the cloud holds
        // off the wire — chunks rather than span deltas, which need the new file whole.
        let content = if row.size >= self.config.streamed_from {
            tracing::info!(target: STREAMED_EVENTS, path = %row.path, size = row.size, "sending in batches");
            Content::Streamed {
                path: self.config.folder.join(&row.path),
                batch_bytes: self.config.stream_batch_bytes,
            }
        } else {
            if read.is_some() {
                report.read_ahead += 1;
            }
            let read = read.unwrap_or_else(|| self.read_and_chunk(&row.path));
            let (manifest, data) = match read
                .await
                .map_err(|e| std::io::Error::other(e.to_string()))?
            {
                Ok(read) => read,
                Err(DeviceError::Io(e)) => {
                    left_unread(&row.path, &e, report);
                    return Ok(None);
                }
                Err(e) => return Err(e),
            };
            if manifest.file_hash != row.file_hash {
                // Changed since it was scanned: the next pass sees the new content.
                return Ok(None);
            }
            Content::Held { manifest, data }
        };
        let entries = match &content {
            Content::Held { manifest, .. } => manifest.entries.len() as u64,
            // At most one entry per smallest chunk.
            Content::Streamed { .. } => {
                row.size / u64::from(ChunkParams::for_len(row.size).min) + 1
            }
        };
        let overhead = 64 + 36 * entries;
        // A new file's own number keeps two new files with the same bytes two commits.
        let new_file = format!("new:{}", row.nonce);
        let key = commit_key(
            &self.config.device_id,
            match (&row.asset_id, row.nonce) {
                (Some(asset_id), _) => Some(asset_id.as_str()),
                (None, 0) => None,
                (None, _) => Some(new_file.as_str()),
            },
            &row.file_hash,
        );
        let session = match self.pass.reservation.clone() {
            Some(session) => session,
            None => {
                // One reservation for everything this pass will send: one round trip and
                // one quota check instead of one per file. If it all does not fit, what
                // fits still goes, one file at a time.
                let pending: u64 = self
                    .journal
                    .files()?
                    .iter()
                    .filter(|f| !f.synced)
                    .map(|f| f.size + 64 + f.size / 1024)
                    .sum();
                // The same request id until everything is sent: a pass that failed half-way
                // (a full server disk, a cut connection, a crash) takes up its reservation
                // again instead of leaving one more lease behind for every retry.
                let pass_key = match self.journal.get(Key::PassReservation)? {
                    Some(key) => key,
                    None => {
                        let key = format!("{}:pass:{}", self.config.device_id, self.clock.now_ms());
                        self.journal.set(Key::PassReservation, &key)?;
                        key
                    }
                };
                let reserved = match self
                    .cloud
                    .begin_upload(pending.max(row.size), &pass_key)
                    .await
                {
                    Ok(s) => {
                        self.pass.reservation = Some(s.clone());
                        Ok(s)
                    }
                    Err(e) if e.reason == Reason::QuotaExceeded => {
                        self.cloud.begin_upload(row.size + overhead, &key).await
                    }
                    Err(e) => Err(e),
                };
                match reserved {
                    Ok(s) => s,
                    Err(e) if !e.transient => {
                        tracing::warn!(path = %row.path, reason = %e.reason, message = %e.message, "upload refused");
                        report.blocked = Some(e.reason.to_string());
                        report.blocked_message = Some(e.message.clone());
                        return Ok(None);
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        };
        let base = match &row.asset_id {
            Some(asset_id) => match self.journal.current(asset_id)? {
                Some((_, id, _)) => Some((id, self.journal.kept_manifest(&id)?)),
                None => None,
            },
            None => None,
        };
        if row.asset_id.is_none() && row.nonce > 0 {
            // Remembered until the commit's answer is journalled: a reply lost and the file
            // edited before the retry would otherwise leave its first commit an asset no
            // file is (the retry, of other bytes, has another request id).
            self.journal.set(
                Key::Attempt(row.nonce),
                &format!("{} {}", hex::encode(row.file_hash.0), row.path),
            )?;
        }
        Ok(Some(Shipment {
            acked: self.journal.acked(&row.file_hash)?.into_iter().collect(),
            base,
            content,
            draft: Draft {
                request_id: key,
                path: row.path.clone(),
                original_name: row.path.rsplit('/').next().unwrap_or(&row.path).to_string(),
                file_time_ms: row.mtime_ns / 1_000_000,
                reservation_id: session,
                asset_id: row.asset_id.clone(),
                base_version: row.version,
                overrides: Overrides::default(),
            },
            row,
        }))
    }

    /// Journals what one file's upload did: the chunks the cloud acknowledged (even when
    /// it failed after), then the commit.
    pub(super) fn land(
        &mut self,
        shipped: Shipped,
        report: &mut SyncReport,
    ) -> Result<(), DeviceError> {
        let Shipped {
            mut row,
            sent,
            outcome,
        } = shipped;
        let acknowledged: Vec<ChunkId> = sent.whole.iter().chain(&sent.by_delta).copied().collect();
        if !acknowledged.is_empty() {
            fail::fail_point!("device-after-chunks-before-journal");
            self.journal.record_acked(&row.file_hash, &acknowledged)?;
        }
        self.chunks_acknowledged += acknowledged.len() as u64;
        for id in &acknowledged {
            if !self.acknowledged_ever.insert(*id) {
                self.acknowledged_again += 1;
            }
        }
        report.chunks_sent += acknowledged.len();
        report.chunks_by_delta += sent.by_delta.len();
        report.bytes_sent += sent.bytes;
        let (reply, manifest) = match outcome {
            Ok(landed) => landed,
            Err(Shipping::Changed) => {
                // Changed since it was scanned, found while it streamed: the next pass
                // sends what it became; chunks already sent are the cloud's to collect.
                tracing::debug!(path = %row.path, "changed while it was sent");
                return Ok(());
            }
            Err(Shipping::Reading(DeviceError::Io(e))) => {
                left_unread(&row.path, &e, report);
                return Ok(());
            }
            Err(Shipping::Reading(e)) => return Err(e),
            Err(Shipping::Committing(e))
                if row.asset_id.is_some() && e.reason == Reason::AssetNotLive =>
            {
                // Edited here while another device deleted the photo: the edit becomes a
                // photo of its own (the original stays in Recently Deleted), sent on the next
                // pass — refused as a new version, it would block every pass for good. Only
                // this reason: a NOT_FOUND may name the reservation, which the next pass renews.
                tracing::warn!(path = %row.path, asset = ?row.asset_id, reason = %e.reason, "edited here but deleted elsewhere: kept as a new photo");
                row.asset_id = None;
                row.version = None;
                row.synced = false;
                self.journal.upsert(&row)?;
                report.kept_apart += 1;
                return Ok(());
            }
            Err(Shipping::Committing(e)) if !e.transient => {
                tracing::warn!(path = %row.path, reason = %e.reason, message = %e.message, "commit refused");
                report.blocked = Some(e.reason.to_string());
                report.blocked_message = Some(e.message.clone());
                return Ok(());
            }
            Err(Shipping::Committing(e) | Shipping::Sending(e)) => return Err(e.into()),
        };
        fail::fail_point!("device-after-commit-before-journal");
        if row.asset_id.is_none() && reply.path != row.path {
            // Another photo held the name (every phone names its files IMG_0001…): the
            // library numbered this one. The file keeps its name here.
            tracing::info!(path = %row.path, library = %reply.path, "the library numbered a taken name");
            report.numbered.push((row.path.clone(), reply.path.clone()));
        }
        if row.lib_path.is_none() {
            row.lib_path = Some(reply.path.clone());
            // A retry of a commit made before the file was renamed: the library has it at
            // its old path, and the rename goes as one.
            if self.rename_if_moved(&mut row, &reply.asset_id, &reply.path)? {
                report.renames_sent += 1;
            }
        }
        row.asset_id = Some(reply.asset_id);
        row.version = Some(reply.version);
        row.synced = true;
        if row.nonce > 0 {
            self.journal.forget(Key::Attempt(row.nonce))?;
        }
        self.journal.upsert(&row)?;
        self.journal.forget_acked(&row.file_hash)?;
        self.journal.keep_manifest(&manifest)?;
        if reply.deduplicated {
            report.linked += 1;
        } else {
            report.uploaded += 1;
            if row.size >= self.config.streamed_from {
                report.streamed += 1;
            }
        }
        self.progress.send_modify(|p| {
            p.items_done += 1;
            p.bytes_done += row.size;
        });
        Ok(())
    }
}
