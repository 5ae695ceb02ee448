//! One file's journey to the cloud on its own lane: send what is missing, then commit.

use super::*;

/// The files of an upload pass in flight on their own lanes, and the lanes left idle.
pub(super) struct Flying<C> {
    pub(super) idle: Vec<C>,
    pub(super) tasks: tokio::task::JoinSet<(C, Shipped)>,
    pub(super) hashes: HashSet<ChunkId>,
    /// Chunks of the files in flight; kept until all have landed (an over-estimate is
    /// only a wait, never a chunk sent twice).
    pub(super) chunks: HashSet<ChunkId>,
    pub(super) bytes: u64,
}

impl<C: Cloud> Flying<C> {
    pub(super) fn new(idle: Vec<C>) -> Self {
        Self {
            idle,
            tasks: tokio::task::JoinSet::new(),
            hashes: HashSet::new(),
            chunks: HashSet::new(),
            bytes: 0,
        }
    }

    /// Sends one file on `lane`, in the background.
    pub(super) fn launch(&mut self, mut lane: C, shipment: Shipment) {
        self.hashes.insert(shipment.row.file_hash);
        self.bytes += shipment.row.size;
        if let Content::Held { manifest, .. } = &shipment.content {
            self.chunks.extend(manifest.entries.iter().map(|e| e.chunk));
        }
        self.tasks.spawn(async move {
            let shipped = ship(&mut lane, shipment).await;
            (lane, shipped)
        });
    }
}

/// One file ready to go: everything the network part of its upload needs, owned, so it
/// can travel on a lane of its own.
pub(super) struct Shipment {
    pub(super) row: FileRow,
    pub(super) content: Content,
    /// Chunks the cloud acknowledged for this content in an earlier, cut-off attempt.
    pub(super) acked: HashSet<ChunkId>,
    /// The version this edit replaces (for splices and span deltas), with its manifest
    /// when the journal kept it.
    pub(super) base: Option<(ManifestId, Option<Manifest>)>,
    pub(super) draft: Draft,
}

/// A file's bytes, as an upload has them.
pub(super) enum Content {
    /// Read and chunked already.
    Held { manifest: Manifest, data: Bytes },
    /// Too large to hold (a file of `streamed_from` and more): read, chunked and sent a
    /// batch at a time from this path, its manifest known once all is read.
    Streamed { path: PathBuf, batch_bytes: usize },
}

/// What a commit says besides its content, known before the file is read.
pub(super) struct Draft {
    pub(super) request_id: String,
    /// The file's path in the folder: a new asset's path in the library.
    pub(super) path: String,
    pub(super) original_name: String,
    /// The file's modification time: its capture time when the file names none.
    pub(super) file_time_ms: i64,
    pub(super) reservation_id: String,
    pub(super) asset_id: Option<String>,
    pub(super) base_version: Option<u32>,
    /// What outranks the file's own metadata (an import's sidecar); empty for a folder's
    /// files.
    pub(super) overrides: Overrides,
}

impl Draft {
    /// The commit of `manifest`, described by what the file says of itself.
    pub(super) fn commit(
        &self,
        manifest: &Manifest,
        media: &keepsake_media::MediaInfo,
    ) -> NewAsset {
        // What the file says it is outranks its name; its time outranks the file system's.
        let video = match media.kind {
            keepsake_media::MediaKind::Video => true,
            keepsake_media::MediaKind::Photo => false,
            keepsake_media::MediaKind::Unknown => is_video(&self.original_name),
        };
        NewAsset {
            request_id: self.request_id.clone(),
            manifest: manifest.id(),
            original_name: self.original_name.clone(),
            path: self.path.clone(),
            video,
            capture_time: self
                .overrides
                .capture_time_ms
                .or(media.capture_time_ms)
                .or(Some(self.file_time_ms)),
            width: media.width,
            height: media.height,
            reservation_id: self.reservation_id.clone(),
            asset_id: self.asset_id.clone(),
            base_version: self.base_version,
            camera: (
                media.make.clone().unwrap_or_default(),
                media.model.clone().unwrap_or_default(),
            ),
            position_e7: self.overrides.position_e7.or_else(|| {
                media.gps.and_then(|(lat, lon)| {
                    Some((
                        crate::cloud::degrees_e7(lat)?,
                        crate::cloud::degrees_e7(lon)?,
                    ))
                })
            }),
            orientation: if media.kind == keepsake_media::MediaKind::Photo {
                media.orientation
            } else {
                0
            },
            duration_ms: media.duration_ms,
            content_identifier: media.content_identifier.clone().unwrap_or_default(),
            lens: media.lens.clone().unwrap_or_default(),
            altitude_cm: media.altitude_cm,
            utc_offset_minutes: media.utc_offset_minutes,
            codec: media.codec.unwrap_or_default().to_string(),
        }
    }
}

/// What the network part of one file's upload did.
pub(super) struct Shipped {
    pub(super) row: FileRow,
    pub(super) sent: Sent,
    /// The commit's reply and the manifest committed.
    pub(super) outcome: Result<(CommitReply, Manifest), Shipping>,
}

/// Content a file's upload got the cloud to make durable, whether or not it went on to commit.
#[derive(Default)]
pub(super) struct Sent {
    /// Chunks sent whole.
    pub(super) whole: Vec<ChunkId>,
    /// Chunks the cloud rebuilt from deltas.
    pub(super) by_delta: Vec<ChunkId>,
    pub(super) bytes: u64,
}

/// Where a file's upload stopped.
pub(super) enum Shipping {
    /// Before the commit: finding, sending or storing content.
    Sending(CloudError),
    /// The commit itself.
    Committing(CloudError),
    /// Reading a streamed file failed.
    Reading(DeviceError),
    /// A streamed file's bytes were no longer those the scan hashed: nothing was committed.
    Changed,
}

/// The commit's request id: the same for every retry of one upload (device, asset, content)
/// and different for any other. Hashed to 128 bits because it rides on every commit, where
/// the readable `device:asset:content` was two thirds of an edit's commit message.
pub(super) fn commit_key(device_id: &str, asset_id: Option<&str>, content: &ChunkId) -> String {
    let mut hasher = blake3::Hasher::new();
    for part in [device_id.as_bytes(), asset_id.unwrap_or("").as_bytes()] {
        hasher.update(&(part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    hasher.update(&content.0);
    hex::encode(&hasher.finalize().as_bytes()[..16])
}

/// The network part of one file's upload: the chunks the cloud lacks (as deltas where an
/// edit makes that much smaller), the manifest, the commit. No journal: the caller lands it.
pub(super) async fn ship<C: Cloud>(cloud: &mut C, shipment: Shipment) -> Shipped {
    let Shipment {
        row,
        content,
        acked,
        base,
        draft,
    } = shipment;
    let mut sent = Sent::default();
    let outcome = match content {
        Content::Held { manifest, data } => {
            ship_held(cloud, (manifest, data), &acked, base, &draft, &mut sent).await
        }
        Content::Streamed { path, batch_bytes } => {
            let session = draft.reservation_id.clone();
            let wanted = Wanted::Lacking { acked };
            let file = StreamedFile {
                path: &path,
                size: row.size,
                batch_bytes,
            };
            match stream_file(cloud, &session, file, wanted, &mut sent).await {
                Ok((manifest, _)) if manifest.file_hash != row.file_hash => Err(Shipping::Changed),
                Ok((manifest, media)) => {
                    let source = Source::File(file);
                    commit_mending(cloud, &draft, manifest, None, &media, source, &mut sent).await
                }
                Err(e) => Err(e),
            }
        }
    };
    Shipped { row, sent, outcome }
}

/// [`ship`] for a file read whole already.
pub(super) async fn ship_held<C: Cloud>(
    cloud: &mut C,
    (manifest, data): (Manifest, Bytes),
    acked: &HashSet<ChunkId>,
    base: Option<(ManifestId, Option<Manifest>)>,
    draft: &Draft,
    sent: &mut Sent,
) -> Result<(CommitReply, Manifest), Shipping> {
    let session = draft.reservation_id.clone();
    let mut offsets = HashMap::new();
    let mut at = 0usize;
    for entry in &manifest.entries {
        offsets
            .entry(entry.chunk)
            .or_insert((at, entry.len as usize));
        at += entry.len as usize;
    }
    // An edit: the version it replaces says which chunks the account surely holds, and
    // the new manifest travels as splices of it. Without it, everything is asked about.
    let base = match base {
        Some((id, Some(kept))) => Some((id, kept)),
        Some((id, None)) => match cloud.manifest(&id).await {
            Ok(manifest) => Some((id, manifest)),
            Err(e) if !e.transient => None,
            Err(e) => return Err(Shipping::Sending(e)),
        },
        None => None,
    };
    let held: HashSet<ChunkId> = base
        .iter()
        .flat_map(|(_, m)| m.entries.iter().map(|e| e.chunk))
        .collect();
    let ids: Vec<ChunkId> = {
        let mut unique: Vec<ChunkId> = offsets
            .keys()
            .filter(|id| !held.contains(id))
            .copied()
            .collect();
        unique.sort();
        unique
    };
    // An edit asks about its changed chunks with each stretch's signature (and sends
    // none the cloud already holds); FindMissing is for whatever no delta covered.
    let unsettled = match &base {
        Some((id, base)) => {
            send_changed_stretches(cloud, &session, (id, base), &manifest, ids, &data, sent)
                .await
                .map_err(Shipping::Sending)?
        }
        None => ids,
    };
    let missing = if unsettled.is_empty() {
        Vec::new()
    } else {
        cloud
            .find_missing(&session, &unsettled)
            .await
            .map_err(Shipping::Sending)?
    };
    let chunks = held_chunks((&offsets, &data), &missing, acked);
    send_whole(cloud, &session, chunks, sent)
        .await
        .map_err(Shipping::Sending)?;
    let media = keepsake_media::probe(&data);
    let base = base.as_ref().map(|(id, base)| (id, base));
    let source = Source::Held(&offsets, &data);
    commit_mending(cloud, draft, manifest, base, &media, source, sent).await
}

/// The bytes of chunks `ids` of a file held in memory (`offsets` of each chunk in `data`),
/// leaving out those `skip` names.
pub(super) fn held_chunks(
    (offsets, data): (&HashMap<ChunkId, (usize, usize)>, &Bytes),
    ids: &[ChunkId],
    skip: &HashSet<ChunkId>,
) -> Vec<(ChunkId, Bytes)> {
    ids.iter()
        .filter(|id| !skip.contains(id))
        .filter_map(|id| {
            let (at, len) = offsets.get(id)?;
            Some((*id, data.slice(*at..*at + *len)))
        })
        .collect()
}

/// Where a file's chunks can be had again.
pub(super) enum Source<'a> {
    /// In memory: each chunk's offset and length in the bytes.
    Held(&'a HashMap<ChunkId, (usize, usize)>, &'a Bytes),
    /// Streamed from a file.
    File(StreamedFile<'a>),
}

/// A file too large to hold, as [`stream_file`] reads it.
#[derive(Clone, Copy)]
pub(super) struct StreamedFile<'a> {
    pub(super) path: &'a Path,
    pub(super) size: u64,
    pub(super) batch_bytes: usize,
}

/// Commits `manifest`. The manifest rides on the commit (as splices of the base for an
/// edit): one round trip for both. MISSING_CHUNKS — chunks collected since FindMissing said
/// the account had them, or a base chunk scrub quarantined — names only the first few: ask
/// which of all the file's chunks are missing, send those from `source`, once, and commit
/// again.
pub(super) async fn commit_mending<C: Cloud>(
    cloud: &mut C,
    draft: &Draft,
    manifest: Manifest,
    base: Option<(&ManifestId, &Manifest)>,
    media: &keepsake_media::MediaInfo,
    source: Source<'_>,
    sent: &mut Sent,
) -> Result<(CommitReply, Manifest), Shipping> {
    let commit = draft.commit(&manifest, media);
    match cloud.commit(commit.clone(), &manifest, base).await {
        Err(e) if e.reason == Reason::MissingChunks => {
            let session = &draft.reservation_id;
            let all: Vec<ChunkId> = manifest
                .entries
                .iter()
                .map(|e| e.chunk)
                .collect::<HashSet<_>>()
                .into_iter()
                .collect();
            let missing = cloud
                .find_missing(session, &all)
                .await
                .map_err(Shipping::Sending)?;
            // Acknowledged in an earlier attempt or not, the cloud has lost them.
            match source {
                Source::Held(offsets, data) => {
                    let chunks = held_chunks((offsets, data), &missing, &HashSet::new());
                    send_whole(cloud, session, chunks, sent)
                        .await
                        .map_err(Shipping::Sending)?;
                }
                Source::File(file) => {
                    let only = Wanted::Only(missing.into_iter().collect());
                    let (again, _) = stream_file(cloud, session, file, only, sent).await?;
                    if again.file_hash != manifest.file_hash {
                        return Err(Shipping::Changed);
                    }
                }
            }
            cloud
                .commit(commit, &manifest, base)
                .await
                .map(|reply| (reply, manifest))
                .map_err(Shipping::Committing)
        }
        other => other
            .map(|reply| (reply, manifest))
            .map_err(Shipping::Committing),
    }
}
