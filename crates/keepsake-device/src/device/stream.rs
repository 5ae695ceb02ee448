//! Large files sent a batch at a time, and edits sent as the stretches that changed.

use super::*;

/// Which of a streamed file's chunks go to the cloud.
pub(super) enum Wanted {
    /// Those the cloud lacks, asked about a batch at a time, but for those an earlier,
    /// cut-off attempt got acknowledged.
    Lacking { acked: HashSet<ChunkId> },
    /// Just these.
    Only(HashSet<ChunkId>),
}

impl Wanted {
    /// Whether chunk `id` might be sent (the cloud may still hold it).
    pub(super) fn keeps(&self, id: &ChunkId) -> bool {
        match self {
            Wanted::Lacking { acked } => !acked.contains(id),
            Wanted::Only(ids) => ids.contains(id),
        }
    }
}

/// What the thread reading a streamed file hands over: a batch of chunks to send, then
/// the file's manifest and what it says of itself.
pub(super) enum Piece {
    Batch(Vec<(ChunkId, Bytes)>),
    // Boxed: sent once a file, it would make every batch's message as large.
    Done(Box<Result<(Manifest, keepsake_media::MediaInfo), DeviceError>>),
}

/// The target of the events saying a file is sent or fetched a batch at a time, one per
/// file as it starts: so `RUST_LOG=keepsake_device::streamed=info` shows just those, even
/// from passes a kill cuts short.
pub const STREAMED_EVENTS: &str = "keepsake_device::streamed";

/// The default bytes of chunks in one batch of a streamed file. Four batches are in memory
/// at most (one being read, one waiting, [`BATCHES_IN_FLIGHT`] travelling), whatever the
/// file's size.
pub(super) const STREAM_BATCH_BYTES: usize = 32 << 20;

/// By default, files this large and larger, new or edited, are streamed (read, chunked and
/// sent a batch at a time) rather than read whole, and go alone.
pub(super) const STREAMED_FROM: u64 = 64 << 20;

/// Reads, chunks and sends a file too large to hold, a batch at a time: a thread of its own
/// reads and cuts the next batch while this one travels (on a multi-threaded runtime). Returns the manifest of what was
/// read (the caller compares it with what the scan hashed) and what the file says of itself.
pub(super) async fn stream_file<C: Cloud>(
    cloud: &mut C,
    session: &str,
    file: StreamedFile<'_>,
    wanted: Wanted,
    sent: &mut Sent,
) -> Result<(Manifest, keepsake_media::MediaInfo), Shipping> {
    let asks = matches!(wanted, Wanted::Lacking { .. });
    let (path_owned, size, batch_bytes) = (file.path.to_path_buf(), file.size, file.batch_bytes);
    let mut rx = if keepsake_store::on_one_thread() {
        // A single-threaded runtime is the simulation's (or a test's): a reading thread
        // would make what it reads, and when, depend on the OS scheduler, and a run could
        // no longer be replayed from its seed. The file is read here, in one go, as
        // `offload` runs blocking work in place there.
        let (tx, rx) = tokio::sync::mpsc::channel(batches_at_most(size, batch_bytes) + 1);
        let mut queue = |batch| tx.try_send(Piece::Batch(batch)).is_ok();
        let done = read_in_batches(&path_owned, (size, batch_bytes), &wanted, &mut queue);
        let _ = tx.try_send(Piece::Done(Box::new(done)));
        rx
    } else {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        // A thread, not the runtime's blocking pool: it blocks on the channel.
        std::thread::spawn(move || {
            let mut send = |batch| tx.blocking_send(Piece::Batch(batch)).is_ok();
            let done = read_in_batches(&path_owned, (size, batch_bytes), &wanted, &mut send);
            let _ = tx.blocking_send(Piece::Done(Box::new(done)));
        });
        rx
    };
    let mut travelling = tokio::task::JoinSet::new();
    let mut failed = None;
    let mut done = None;
    'reading: while let Some(piece) = rx.recv().await {
        let batch = match piece {
            Piece::Batch(batch) => batch,
            Piece::Done(result) => {
                done = Some(*result);
                break;
            }
        };
        let batch = if asks {
            let ids: Vec<ChunkId> = batch.iter().map(|(id, _)| *id).collect();
            let missing: HashSet<ChunkId> = match cloud.find_missing(session, &ids).await {
                Ok(missing) => missing.into_iter().collect(),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            };
            batch
                .into_iter()
                .filter(|(id, _)| missing.contains(id))
                .collect()
        } else {
            batch
        };
        // Batches travel side by side on lanes: one batch's fsyncs on the cloud overlap
        // the next one's transfer.
        while travelling.len() >= BATCHES_IN_FLIGHT {
            if let Err(e) = land_batch(&mut travelling, sent).await {
                failed = Some(e);
                break 'reading;
            }
        }
        match cloud.lane() {
            Some(mut lane) => {
                let session = session.to_string();
                travelling.spawn(async move {
                    let mut sent = Sent::default();
                    let outcome = send_whole(&mut lane, &session, batch, &mut sent).await;
                    (sent, outcome)
                });
            }
            None => {
                if let Err(e) = send_whole(cloud, session, batch, sent).await {
                    failed = Some(e);
                    break;
                }
            }
        }
    }
    // Stops the reading; whatever travels lands, its acknowledgements kept.
    drop(rx);
    while !travelling.is_empty() {
        if let Err(e) = land_batch(&mut travelling, sent).await {
            failed.get_or_insert(e);
        }
    }
    if let Some(e) = failed {
        return Err(Shipping::Sending(e));
    }
    match done {
        Some(result) => result.map_err(Shipping::Reading),
        None => {
            let stopped = std::io::Error::other("the thread reading the file stopped");
            Err(Shipping::Reading(stopped.into()))
        }
    }
}

/// How many batches [`keepsake_delta::chunk_batches`] can cut a file of `size` into: each
/// holds at least `batch_bytes` (or two of the largest chunks), but the last.
pub(super) fn batches_at_most(size: u64, batch_bytes: usize) -> usize {
    let least = batch_bytes.max(2 * ChunkParams::for_len(size).max as usize) as u64;
    usize::try_from(size / least).unwrap_or(usize::MAX - 2) + 2
}

/// Batches of a streamed file on their way at once.
pub(super) const BATCHES_IN_FLIGHT: usize = 2;

/// Waits for one batch of a streamed file to land, adding what it sent to `sent`.
pub(super) async fn land_batch(
    travelling: &mut tokio::task::JoinSet<(Sent, Result<(), CloudError>)>,
    sent: &mut Sent,
) -> Result<(), CloudError> {
    let Some(joined) = travelling.join_next().await else {
        return Ok(());
    };
    // The set is aborted only when dropped, so a task's error is its panic.
    let (batch, outcome) = joined.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    sent.whole.extend(batch.whole);
    sent.by_delta.extend(batch.by_delta);
    sent.bytes += batch.bytes;
    outcome
}

/// The reading half of [`stream_file`]: each chunk `wanted` keeps, once, in batches of
/// about `batch_bytes` handed to `tx`.
pub(super) fn read_in_batches(
    path: &Path,
    (size, batch_bytes): (u64, usize),
    wanted: &Wanted,
    send: &mut dyn FnMut(Vec<(ChunkId, Bytes)>) -> bool,
) -> Result<(Manifest, keepsake_media::MediaInfo), DeviceError> {
    use std::io::Seek;
    let mut file = std::fs::File::open(path)?;
    let media = keepsake_media::probe_reader(&mut file)?;
    file.rewind()?;
    let params = ChunkParams::for_len(size);
    let mut seen = HashSet::new();
    let manifest = keepsake_delta::chunk_batches(file, params, batch_bytes, |batch| {
        let batch: Vec<(ChunkId, Bytes)> = batch
            .into_iter()
            .filter(|(id, _)| seen.insert(*id) && wanted.keeps(id))
            .collect();
        if !batch.is_empty() && !send(batch) {
            return Err(DeltaError::Read(std::io::Error::other(
                "the upload stopped",
            )));
        }
        fail::fail_point!("device-while-streaming-a-file");
        Ok(())
    })?;
    Ok((manifest, media))
}

/// Sends chunks whole; what the cloud acknowledged is kept even when the call failed.
pub(super) async fn send_whole<C: Cloud>(
    cloud: &mut C,
    session: &str,
    chunks: Vec<(ChunkId, Bytes)>,
    sent: &mut Sent,
) -> Result<(), CloudError> {
    if chunks.is_empty() {
        return Ok(());
    }
    let sizes: HashMap<ChunkId, u64> = chunks.iter().map(|(id, b)| (*id, b.len() as u64)).collect();
    let total: u64 = sizes.values().sum();
    // A large file goes on several streams at once: the cloud verifies, writes and fsyncs
    // each stream's batches on a thread of its own, where one stream would wait for each.
    let wanted = usize::try_from(total / STREAM_BYTES).unwrap_or(usize::MAX);
    let lanes: Vec<C> = (1..wanted.clamp(1, STREAMS_PER_FILE))
        .map_while(|_| cloud.lane())
        .collect();
    let mut parts = split_by_bytes(chunks, lanes.len() + 1).into_iter();
    let first = parts.next().unwrap_or_default();
    let mut others = tokio::task::JoinSet::new();
    for (mut lane, part) in lanes.into_iter().zip(parts) {
        let session = session.to_string();
        others.spawn(async move {
            let mut acknowledged = Vec::new();
            let outcome = lane.put_chunks(&session, part, &mut acknowledged).await;
            (acknowledged, outcome)
        });
    }
    let mut acknowledged = Vec::new();
    let mut outcome = cloud.put_chunks(session, first, &mut acknowledged).await;
    while let Some(joined) = others.join_next().await {
        // The set is never aborted, so a task's error is its panic.
        let (acked, other) = joined.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        acknowledged.extend(acked);
        outcome = outcome.and(other);
    }
    sent.bytes += acknowledged
        .iter()
        .map(|id| sizes.get(id).copied().unwrap_or(0))
        .sum::<u64>();
    sent.whole.extend(acknowledged);
    outcome
}

/// Bytes of chunks that earn a file's upload another stream of its own.
pub(super) const STREAM_BYTES: u64 = 16 << 20;

/// Streams one file's chunks travel on at most.
pub(super) const STREAMS_PER_FILE: usize = 3;

/// `chunks` cut into `parts` runs of about equal bytes, in order.
pub(super) fn split_by_bytes(
    chunks: Vec<(ChunkId, Bytes)>,
    parts: usize,
) -> Vec<Vec<(ChunkId, Bytes)>> {
    let total: usize = chunks.iter().map(|(_, b)| b.len()).sum();
    let per_part = total.div_ceil(parts.max(1)).max(1);
    let mut out: Vec<Vec<(ChunkId, Bytes)>> = vec![Vec::new()];
    let mut filled = 0usize;
    for chunk in chunks {
        if filled >= per_part && out.len() < parts {
            out.push(Vec::new());
            filled = 0;
        }
        filled += chunk.1.len();
        out.last_mut().expect("never empty").push(chunk);
    }
    out
}

/// An edit of a file the cloud has: each run of `changed` chunks (those its base lacks)
/// goes as an rsync delta against the stretch of the current version it replaced, when
/// that is much smaller than the chunks — unless the signature call answers that the cloud
/// holds them all already (an attempt cut off after its delta landed). Returns the changed
/// chunks neither sent nor known to be held.
pub(super) async fn send_changed_stretches<C: Cloud>(
    cloud: &mut C,
    session: &str,
    (base_id, base): (&ManifestId, &Manifest),
    manifest: &Manifest,
    changed: Vec<ChunkId>,
    data: &Bytes,
    sent_now: &mut Sent,
) -> Result<Vec<ChunkId>, CloudError> {
    let wanted: HashSet<ChunkId> = changed.iter().copied().collect();
    let changed_bytes: u64 = manifest
        .entries
        .iter()
        .filter(|e| wanted.contains(&e.chunk))
        .map(|e| u64::from(e.len))
        .sum();
    if changed_bytes < MIN_DELTA_RUN_BYTES {
        return Ok(changed);
    }
    let mut settled: HashSet<ChunkId> = HashSet::new();
    for span in keepsake_delta::span::plan_spans(base, manifest, &wanted) {
        let run_len = span.new_len();
        if run_len < MIN_DELTA_RUN_BYTES {
            continue;
        }
        let run = data.slice(span.new_offset as usize..(span.new_offset + run_len) as usize);
        let stretch = (span.base_offset, span.base_len);
        let ids: Vec<ChunkId> = span.chunks.iter().map(|(id, _)| *id).collect();
        let signature = match cloud
            .span_signature(base_id, stretch, (session, &ids))
            .await
        {
            Ok(Some(sig)) => sig,
            Ok(None) => {
                settled.extend(ids);
                continue;
            }
            Err(e) if !e.transient => {
                // Runs already rebuilt from deltas stay sent; the rest go whole.
                tracing::debug!(reason = %e.reason, "no span signature; sending chunks");
                break;
            }
            Err(e) => return Err(e),
        };
        let Ok(delta) = keepsake_delta::span::span_delta(&signature, &run) else {
            continue; // a signature we cannot use: the chunks go whole
        };
        // Worth it only when clearly smaller: the signature came down for it too.
        if (delta.len() + signature.len()) as u64 * 2 > run_len {
            continue;
        }
        let delta_len = delta.len() as u64;
        match cloud
            .put_chunks_by_delta(session, base_id, stretch, &span.chunks, delta)
            .await
        {
            Ok(acknowledged) => {
                sent_now.bytes += delta_len;
                settled.extend(acknowledged.iter().copied());
                sent_now.by_delta.extend(acknowledged);
            }
            Err(e) if !e.transient => {
                tracing::debug!(reason = %e.reason, message = %e.message, "delta refused; sending chunks");
            }
            Err(e) => return Err(e),
        }
    }
    Ok(changed
        .into_iter()
        .filter(|id| !settled.contains(id))
        .collect())
}
