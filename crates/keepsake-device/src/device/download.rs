//! Downloads: verified content written at library paths, fetched ahead on lanes.

use super::*;

/// The chunks of `manifest` that `have` does not cover, once each, in the order the file
/// needs them, cut into batches of about `batch_bytes`.
pub(super) fn batches_to_fetch(
    manifest: &Manifest,
    batch_bytes: usize,
    have: impl Fn(&ChunkId) -> bool,
) -> Vec<Vec<ChunkId>> {
    let mut seen = HashSet::new();
    let mut batches = vec![Vec::new()];
    let mut bytes = 0usize;
    for entry in &manifest.entries {
        if have(&entry.chunk) || !seen.insert(entry.chunk) {
            continue;
        }
        if bytes >= batch_bytes {
            batches.push(Vec::new());
            bytes = 0;
        }
        bytes += entry.len as usize;
        batches.last_mut().expect("never empty").push(entry.chunk);
    }
    batches.retain(|b| !b.is_empty());
    batches
}

/// A download's chunks, a batch at a time: fetched on a lane of their own one batch ahead
/// of the writing, or on the pass's connection when the cloud offers no lanes.
pub(super) enum Feed {
    Ahead {
        batches: tokio::sync::mpsc::Receiver<Result<Vec<(ChunkId, Bytes)>, CloudError>>,
        /// Held so the fetching stops when the download does.
        _fetching: AbortOnDrop<()>,
    },
    Inline(std::vec::IntoIter<Vec<ChunkId>>),
}

impl Feed {
    /// The next batch, verified; `None` when all were fetched.
    pub(super) async fn next<C: Cloud>(
        &mut self,
        cloud: &mut C,
    ) -> Result<Option<Vec<(ChunkId, Bytes)>>, CloudError> {
        match self {
            Feed::Ahead { batches, .. } => batches.recv().await.transpose(),
            Feed::Inline(batches) => match batches.next() {
                Some(ids) => cloud.chunks(&ids).await.map(Some),
                None => Ok(None),
            },
        }
    }
}

/// How much of a download is written before it is flushed and its pages released, so a
/// long video's next pages reuse memory its first ones held.
pub(super) const RELEASE_EVERY_BYTES: u64 = 32 << 20;

/// Feed entries looked at for content to fetch ahead.
pub(super) const DOWNLOAD_LOOKAHEAD: usize = 8;

/// What fetching one asset's content ahead yields: its manifest and every chunk, verified.
pub(super) type Fetched = Result<(Manifest, HashMap<ChunkId, Bytes>), CloudError>;

/// A task that stops when its handle is dropped: content fetched ahead and never used
/// (the feed page ended, the pass failed) does not keep downloading.
pub(super) struct AbortOnDrop<T>(Option<tokio::task::JoinHandle<T>>);

impl<T> AbortOnDrop<T> {
    pub(super) fn into_inner(mut self) -> tokio::task::JoinHandle<T> {
        self.0.take().expect("the handle is held until taken")
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        if let Some(handle) = self.0.take() {
            handle.abort();
        }
    }
}

/// Downloads under way ahead of the feed's apply loop, by asset.
#[derive(Default)]
pub(super) struct Ahead {
    pub(super) fetching: HashMap<String, (ManifestId, u64, AbortOnDrop<Fetched>)>,
    pub(super) bytes: u64,
    /// Entries of the current page before this index were looked at already.
    pub(super) looked: usize,
}

impl Ahead {
    /// The fetch of `asset`'s content at `manifest`, if one was started.
    pub(super) fn take(
        &mut self,
        asset: &str,
        manifest: &ManifestId,
    ) -> Option<impl Future<Output = Result<Fetched, tokio::task::JoinError>> + use<>> {
        let (id, size, task) = self.fetching.remove(asset)?;
        self.bytes = self.bytes.saturating_sub(size);
        // A fetch of another version than the one applied is dropped, and so stopped.
        (id == *manifest).then(|| task.into_inner())
    }
}

/// Files a pass fetches ahead at once. Each fetch is two requests in a row (manifest,
/// then chunks), and behind a bucket each of those waits on the bucket too: three lanes
/// left B 3–4 s behind A on PostgreSQL + S3, six 2.5 s (`bench backends`). `LANE_BYTES`
/// still bounds what they hold.
pub(super) const LANES: usize = 6;

impl<C: Cloud> Device<C> {
    /// Where in a local file the chunks a new version also has are (chunked as the new one
    /// was, read as a stream): read from there as the new version is written.
    pub(super) async fn local_chunks(
        &self,
        path: &Path,
        new_len: u64,
        wanted: &[ChunkId],
    ) -> Result<HashMap<ChunkId, (u64, usize)>, DeviceError> {
        let path = path.to_path_buf();
        let wanted: HashSet<ChunkId> = wanted.iter().copied().collect();
        keepsake_store::offload(move || -> Result<_, DeviceError> {
            let mut found = HashMap::new();
            let mut at = 0u64;
            let file = std::fs::File::open(&path)?;
            keepsake_delta::chunk_stream(file, ChunkParams::for_len(new_len), |id, data| {
                if wanted.contains(&id) {
                    found.entry(id).or_insert((at, data.len()));
                }
                at += data.len() as u64;
                Ok(())
            })?;
            Ok(found)
        })
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))?
    }

    /// Starts fetching the content of the next few assets of the page that will surely be
    /// downloaded whole (new here, nothing to reuse, no allowance or storage limit to
    /// weigh), each on a lane of its own, so the network works while the disk writes.
    /// `page[at]` is the entry about to be applied; each entry is looked at once per page.
    pub(super) fn fetch_ahead(
        &mut self,
        page: &[RemoteAsset],
        at: usize,
        report: &mut SyncReport,
    ) -> Result<(), DeviceError> {
        if self.pass.budget.is_some()
            || self.pass.downloads_wait.is_some()
            || self.config.optimize_budget.is_some()
        {
            return Ok(());
        }
        let end = page.len().min(at + DOWNLOAD_LOOKAHEAD);
        let mut next = self.pass.ahead.looked.max(at);
        while next < end {
            let a = &page[next];
            // A file this large is fetched a batch at a time when its turn comes.
            let streamed = a.size >= self.config.streamed_from;
            if !streamed
                && (self.pass.ahead.fetching.len() >= LANES
                    || self.pass.ahead.bytes + a.size > LANE_BYTES)
            {
                break;
            }
            next += 1;
            self.pass.ahead.looked = next;
            if streamed
                || a.state != RemoteState::Live
                || a.damaged
                || self.journal.file_of_asset(&a.asset_id)?.is_some()
                || self.journal.trashed(&a.asset_id)?.is_some()
                || self.journal.cloud_only(&a.asset_id)?.is_some()
                || self.journal.file_with_hash(&a.file_hash, "")?.is_some()
                // Something already at the asset's path may be its bytes, to adopt (a
                // reinstall over a copy): only the apply, which hashes it, can tell.
                || self
                    .config
                    .folder
                    .join(paths::local_path(&a.path, self.config.fs))
                    .exists()
            {
                continue;
            }
            let Some(mut lane) = self.cloud.lane() else {
                return Ok(());
            };
            let manifest_id = a.manifest;
            let fetching = tokio::spawn(async move {
                let manifest = lane.manifest(&manifest_id).await?;
                let mut ids: Vec<ChunkId> = manifest.entries.iter().map(|e| e.chunk).collect();
                ids.sort();
                ids.dedup();
                let fetched: HashMap<ChunkId, Bytes> =
                    lane.chunks(&ids).await?.into_iter().collect();
                Ok((manifest, fetched))
            });
            self.pass.ahead.bytes += a.size;
            report.fetched_ahead += 1;
            self.pass.ahead.fetching.insert(
                a.asset_id.clone(),
                (manifest_id, a.size, AbortOnDrop(Some(fetching))),
            );
        }
        Ok(())
    }

    /// Starts fetching `batches` (one waiting at most) on a lane, if there are any and the
    /// cloud has a lane.
    pub(super) fn feed(&self, batches: Vec<Vec<ChunkId>>) -> Feed {
        // Nothing to fetch (content fetched ahead, or all found in the old file): no task.
        let lane = if batches.is_empty() {
            None
        } else {
            self.cloud.lane()
        };
        let Some(mut lane) = lane else {
            return Feed::Inline(batches.into_iter());
        };
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let fetching = tokio::spawn(async move {
            for ids in batches {
                let batch = lane.chunks(&ids).await;
                let failed = batch.is_err();
                if tx.send(batch).await.is_err() || failed {
                    return;
                }
            }
        });
        Feed::Ahead {
            batches: rx,
            _fetching: AbortOnDrop(Some(fetching)),
        }
    }

    /// Fetches an asset's content, verifies it, and only then puts it at its final path.
    /// Writes `a` into the folder: over `replace` (a new version of the file here), or at
    /// its library path. Chunks `replace` or `reuse` (a file here with the same bytes)
    /// already hold are read from there, not fetched.
    pub(super) async fn download(
        &mut self,
        a: &RemoteAsset,
        replace: Option<PathBuf>,
        reuse: Option<PathBuf>,
        report: &mut SyncReport,
    ) -> Result<(), DeviceError> {
        let name = a.path.as_str();
        if a.damaged {
            // Failing here would stop the feed at this photo on every pass, and every photo
            // after it with it; the cursor moves on and the repair's feed entry brings it.
            tracing::warn!(asset = %a.asset_id, name, "damaged in the cloud; waiting for a device that has it");
            self.journal.set(Key::DamagedWaiting(&a.asset_id), "1")?;
            self.waited_for.insert(a.asset_id.clone());
            report.damaged_waiting += 1;
            return Ok(());
        }
        if self.pass.downloads_wait.is_some() || self.over_budget(a.size, report) {
            self.pass.deferred = true;
            return Ok(());
        }
        self.progress.send_modify(|p| {
            p.phase = "downloading".into();
            p.items_total += 1;
            p.bytes_total += a.size;
            p.current = Some(name.to_string());
        });
        let (manifest, mut fetched) = match self.pass.ahead.take(&a.asset_id, &a.manifest) {
            Some(fetching) => fetching
                .await
                .map_err(|e| std::io::Error::other(e.to_string()))??,
            None => (self.cloud.manifest(&a.manifest).await?, HashMap::new()),
        };
        // The manifest must be the one the feed names (its id is the hash of its bytes) and
        // describe the file the feed describes: then chunks that each match their id make
        // exactly that file, with no second pass over it.
        if manifest.id() != a.manifest
            || manifest.file_hash != a.file_hash
            || manifest.total_len != a.size
        {
            return Err(DeviceError::Corrupt(a.asset_id.clone()));
        }
        let streamed = a.size >= self.config.streamed_from;
        if streamed {
            tracing::info!(target: STREAMED_EVENTS, asset = %a.asset_id, name, size = a.size, "fetching in batches");
        }
        // A new version of a file already here shares most of its chunks: those are read
        // from it, the rest fetched.
        let (local, old) = match replace
            .as_ref()
            .or(reuse.as_ref())
            .filter(|p| p.exists() && fetched.is_empty())
        {
            Some(old) => {
                let ids: Vec<ChunkId> = manifest.entries.iter().map(|e| e.chunk).collect();
                let local = self.local_chunks(old, a.size, &ids).await?;
                (local, Some(std::fs::File::open(old)?))
            }
            None => (HashMap::new(), None),
        };
        report.bytes_reused += local.values().map(|(_, len)| *len as u64).sum::<u64>();
        let mut feed = self.feed(batches_to_fetch(
            &manifest,
            self.config.stream_batch_bytes,
            |id| fetched.contains_key(id) || local.contains_key(id),
        ));
        // Chunks fetched are dropped once written for the last time.
        let mut uses: HashMap<ChunkId, usize> = HashMap::new();
        for entry in &manifest.entries {
            *uses.entry(entry.chunk).or_default() += 1;
        }
        let temp = self
            .config
            .data_dir
            .join("tmp")
            .join(format!("{}.part", a.asset_id));
        // Fetched chunks were each verified on arrival. Bytes read from a file here were
        // hashed when it was chunked a moment ago, but may have changed since: only then
        // is the whole file hashed as it is written.
        let mut hasher = old.is_some().then(blake3::Hasher::new);
        let mut size = 0u64;
        let mut released = 0u64;
        let mut reused = Vec::new();
        {
            let mut file = std::fs::File::create(&temp)?;
            for entry in &manifest.entries {
                let data: &[u8] = match (local.get(&entry.chunk), &old) {
                    (Some(&(at, len)), Some(old)) => {
                        read_at(old, at, len, &mut reused)?;
                        &reused
                    }
                    _ => {
                        while !fetched.contains_key(&entry.chunk) {
                            match feed.next(&mut self.cloud).await? {
                                Some(batch) => fetched.extend(batch),
                                None => return Err(DeviceError::Corrupt(a.asset_id.clone())),
                            }
                        }
                        &fetched[&entry.chunk]
                    }
                };
                if let Some(hasher) = hasher.as_mut() {
                    hasher.update(data);
                }
                file.write_all(data)?;
                size += data.len() as u64;
                let left = uses.get_mut(&entry.chunk).expect("counted above");
                *left -= 1;
                if *left == 0 {
                    fetched.remove(&entry.chunk);
                }
                if size - released >= RELEASE_EVERY_BYTES {
                    file.sync_data()?;
                    keepsake_store::release_written_pages(&file);
                    released = size;
                    fail::fail_point!("device-while-writing-a-download");
                }
            }
            if hasher.is_some_and(|h| ChunkId(*h.finalize().as_bytes()) != a.file_hash) {
                drop(file);
                let _ = std::fs::remove_file(&temp);
                return Err(DeviceError::Corrupt(a.asset_id.clone()));
            }
            file.sync_all()?;
            keepsake_store::release_written_pages(&file);
        }
        let dest = match replace {
            Some(dest) => {
                move_file(&temp, &dest)?;
                dest
            }
            None => {
                let dest = self.place_new(&a.path)?;
                match move_file(&temp, &dest) {
                    Ok(()) => dest,
                    // The folder's file system refuses the name (a `:` on a memory card):
                    // the name changes here, the library keeps it as written.
                    Err(e) if refused_name(&e) => {
                        let portable = FsRules {
                            portable_names: true,
                            ..self.config.fs
                        };
                        let dest = self.place_new_as(&a.path, portable)?;
                        tracing::info!(path = %a.path, here = %dest.display(), "the file system refused the name");
                        move_file(&temp, &dest)?;
                        dest
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        };
        fail::fail_point!("device-after-place-before-journal");
        self.record_synced(&dest, a)?;
        // The base of a later edit made here.
        self.journal.keep_manifest(&manifest)?;
        report.downloaded += 1;
        report.bytes_received += size;
        report.streamed += usize::from(streamed);
        self.progress.send_modify(|p| {
            p.items_done += 1;
            p.bytes_done += size;
        });
        Ok(())
    }
}
