//! A file from outside any synced folder (an import): the same upload path as a folder's
//! files — only missing chunks travel, large files stream, the commit is idempotent — with
//! no journal, and with what a sidecar says outranking what the file says of itself.

use super::*;

/// The bytes of a file brought in.
#[derive(Debug, Clone)]
pub enum IncomingBytes {
    /// Held in memory (read from an archive entry).
    Held(Bytes),
    /// A file on disk, streamed a batch at a time when large (never held whole).
    File(PathBuf),
}

/// What is known of a file beyond its bytes, where it outranks the file's own metadata
/// (a Takeout sidecar keeps the date a person corrected; the EXIF still has the old one).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    /// When it was taken.
    pub capture_time_ms: Option<i64>,
    /// Where, in 1e-7 degrees (latitude, longitude).
    pub position_e7: Option<(i32, i32)>,
}

/// One file to upload as a new asset.
#[derive(Debug, Clone)]
pub struct Incoming {
    /// The same for every retry of this file (the commit's idempotency key).
    pub request_id: String,
    /// Its path in the library (the library numbers it if another asset holds it).
    pub path: String,
    /// The file's own time: its capture time when nothing else names one.
    pub file_time_ms: i64,
    /// Its bytes.
    pub bytes: IncomingBytes,
    /// What outranks the file's own metadata.
    pub overrides: Overrides,
}

/// Uploads one file as a new asset under a reservation of its own (the quota is checked
/// before any byte travels) and commits it; a retry with the same request id answers as
/// the first commit did.
pub async fn upload_incoming<C: Cloud>(
    cloud: &mut C,
    incoming: Incoming,
) -> Result<CommitReply, DeviceError> {
    let Incoming {
        request_id,
        path,
        file_time_ms,
        bytes,
        overrides,
    } = incoming;
    let size = match &bytes {
        IncomingBytes::Held(data) => data.len() as u64,
        IncomingBytes::File(file) => std::fs::metadata(file)?.len(),
    };
    let reservation_id = cloud.begin_upload(size, &request_id).await?;
    let draft = Draft {
        request_id,
        original_name: path.rsplit('/').next().unwrap_or(&path).to_string(),
        path,
        file_time_ms,
        reservation_id: reservation_id.clone(),
        asset_id: None,
        base_version: None,
        overrides,
    };
    let mut sent = Sent::default();
    let outcome = match bytes {
        IncomingBytes::Held(data) => {
            let (manifest, data) = keepsake_store::offload(move || {
                let manifest = manifest_of(&data, ChunkParams::for_len(data.len() as u64));
                (manifest, data)
            })
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?;
            let none = HashSet::new();
            ship_held(cloud, (manifest, data), &none, None, &draft, &mut sent).await
        }
        IncomingBytes::File(file) => {
            let streamed = StreamedFile {
                path: &file,
                size,
                batch_bytes: STREAM_BATCH_BYTES,
            };
            let wanted = Wanted::Lacking {
                acked: HashSet::new(),
            };
            match stream_file(cloud, &reservation_id, streamed, wanted, &mut sent).await {
                Ok((manifest, media)) => {
                    let source = Source::File(streamed);
                    commit_mending(cloud, &draft, manifest, None, &media, source, &mut sent).await
                }
                Err(e) => Err(e),
            }
        }
    };
    // Best effort: an unreleased reservation lapses by itself.
    let _ = cloud.end_upload(&reservation_id).await;
    match outcome {
        Ok((reply, _)) => Ok(reply),
        Err(Shipping::Sending(e) | Shipping::Committing(e)) => Err(e.into()),
        Err(Shipping::Reading(e)) => Err(e),
        Err(Shipping::Changed) => Err(std::io::Error::other(
            "the file changed while it was read; nothing was committed",
        )
        .into()),
    }
}
