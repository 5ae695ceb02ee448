//! One import run: the side files first, then every photo and video — hashed, skipped if
//! the library has those bytes already, else uploaded through the device's upload path
//! into `Imports/<origin> <date>/`, keeping the source's folders, with what its sidecar
//! says (date, place, caption, favourite, hidden, albums).

use crate::ImportError;
use crate::journal::{Journal, Seen};
use crate::sidecar::{Details, Sidecars, side_file_limit};
use crate::source::{Content, Entry, Header, Item, Problem, Source, Want};
use keepsake_device::{
    Cloud, CommitReply, DeviceError, Edit, Hlc, Incoming, IncomingBytes, Overrides, Reason,
    upload_incoming,
};
use keepsake_store::{ChunkId, Clock};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

/// File name endings an import takes as photos and videos.
pub const MEDIA_EXTENSIONS: &[&str] = &[
    "jpg", "jpeg", "heic", "heif", "png", "gif", "webp", "tif", "tiff", "avif", "bmp", "dng",
    "cr2", "cr3", "nef", "arw", "raf", "orf", "rw2", "pef", "srw", "mp4", "mov", "m4v", "3gp",
    "avi", "mkv", "mts", "m2ts", "webm",
];

/// Whether `path` names a photo or a video, by its ending.
pub fn is_media(path: &str) -> bool {
    path.rsplit_once('.')
        .is_some_and(|(_, ext)| MEDIA_EXTENSIONS.contains(&ext.to_ascii_lowercase().as_str()))
}

/// How an import runs.
pub struct Options {
    /// The account imported into (part of every request id, so two accounts importing
    /// the same archive never share one).
    pub account: String,
    /// Import a file even when the library holds the same bytes already.
    pub keep_duplicates: bool,
    /// Where large archive entries are unpacked one at a time.
    pub spool: PathBuf,
    /// Time for the folder's date, files without one and edit stamps.
    pub clock: Arc<dyn Clock>,
}

/// Where an import stands, for a progress bar.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// Photos and videos done (imported, already there, skipped).
    pub done: u64,
    /// Photos and videos in the source.
    pub total: u64,
    /// Their bytes done.
    pub bytes_done: u64,
    /// Their bytes in all.
    pub bytes_total: u64,
}

/// What an import did.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// The library folder it imported into.
    pub destination: String,
    /// Photos and videos uploaded, and their bytes.
    pub imported: u64,
    /// Their bytes.
    pub imported_bytes: u64,
    /// Files whose bytes the library had already: (entry, where the library has them).
    pub already_there: Vec<(String, String)>,
    /// Files done by an earlier run of the same import.
    pub earlier: u64,
    /// Files not taken, and why.
    pub skipped: Vec<Problem>,
    /// Files that are neither photos, videos nor side files (an index page, a readme).
    pub other_files: u64,
    /// Photos imported whose favourite, caption or albums could not all be set, and why.
    pub details_missed: Vec<Problem>,
}

/// What the reading thread hands the uploader.
enum Msg {
    Item(Item),
    Earlier,
    Other,
}

/// Runs an import of `source` into the account behind `cloud`. A transient failure (the
/// cloud unreachable) or a full plan stops it with an error; running it again goes on
/// where it stopped.
pub async fn import<C: Cloud>(
    cloud: &mut C,
    source: &Source,
    journal: &Journal,
    options: &Options,
    progress: &mut dyn FnMut(&Progress),
) -> Result<Summary, ImportError> {
    let key = source.key();
    let (sidecars, mut counts) = side_files(source, &options.spool)?;
    let date = crate::day_of(options.clock.now_ms());
    let proposed = format!("Imports/{} {date}", sidecars.origin().label());
    let destination = journal.destination(&key, &proposed)?;
    let done = journal.done(&key)?;
    let mut summary = Summary {
        destination: destination.clone(),
        skipped: sidecars.problems.clone(),
        ..Summary::default()
    };
    progress(&counts);

    let (tx, mut rx) = tokio::sync::mpsc::channel::<Msg>(2);
    let reader = {
        let (source, spool) = (source.clone(), options.spool.clone());
        std::thread::spawn(move || {
            let want_tx = tx.clone();
            let mut want = |h: Header<'_>| {
                if side_file_limit(h.path).is_some() {
                    return Want::Pass;
                }
                if !is_media(h.path) {
                    let _ = want_tx.blocking_send(Msg::Other);
                    return Want::Pass;
                }
                if done.get(h.path) == Some(&(h.size, h.modified_ms)) {
                    let _ = want_tx.blocking_send(Msg::Earlier);
                    return Want::Pass;
                }
                Want::Read
            };
            let mut visit = |item: Item| tx.blocking_send(Msg::Item(item)).is_ok();
            source.walk(&spool, &mut want, &mut visit)
        })
    };

    let mut run = Run {
        cloud,
        options,
        journal,
        key: &key,
        destination: &destination,
        sidecars: &sidecars,
        this_run: HashMap::new(),
        committing: HashSet::new(),
        albums_put: HashSet::new(),
        counter: 0,
        flying: tokio::task::JoinSet::new(),
        flying_hashes: HashSet::new(),
        flying_bytes: 0,
    };
    let mut stopped = None;
    while let Some(msg) = rx.recv().await {
        match msg {
            Msg::Earlier => {
                summary.earlier += 1;
                counts.done += 1;
            }
            Msg::Other => summary.other_files += 1,
            Msg::Item(Item::Problem(problem)) => {
                counts.done += 1;
                summary.skipped.push(problem);
            }
            Msg::Item(Item::Entry(entry)) => {
                counts.done += 1;
                counts.bytes_done += entry.size;
                if let Err(e) = run.take(entry, &mut summary).await {
                    stopped = Some(e);
                    break;
                }
            }
        }
        progress(&counts);
    }
    drop(rx);
    // What is in flight lands (and is journalled) even when the import stops.
    if let Err(e) = run.land_all(&mut summary).await {
        stopped.get_or_insert(e);
    }
    let walked = reader
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e));
    if let Some(e) = stopped {
        return Err(e);
    }
    walked?;
    tracing::info!(
        destination,
        imported = summary.imported,
        already_there = summary.already_there.len(),
        skipped = summary.skipped.len(),
        "import finished"
    );
    Ok(summary)
}

/// Reads the side files, and counts the photos and videos (a tar has no directory: this
/// pass is the only way to know how many there are before the bar starts).
fn side_files(
    source: &Source,
    spool: &std::path::Path,
) -> Result<(Sidecars, Progress), ImportError> {
    let mut sidecars = Sidecars::default();
    let mut counts = Progress::default();
    let mut want = |h: Header<'_>| match side_file_limit(h.path) {
        Some(limit) if h.size > limit => Want::Refuse(format!(
            "too large ({} bytes) for a sidecar: not read",
            h.size
        )),
        Some(_) => Want::Read,
        None => {
            if is_media(h.path) {
                counts.total += 1;
                counts.bytes_total += h.size;
            }
            Want::Pass
        }
    };
    let mut problems = Vec::new();
    let mut visit = |item: Item| {
        match item {
            Item::Entry(Entry {
                path,
                content: Content::Held(bytes),
                ..
            }) => sidecars.add(&path, &bytes),
            Item::Entry(_) => {}
            Item::Problem(p) => problems.push(p),
        }
        true
    };
    source.walk(spool, &mut want, &mut visit)?;
    // The media pass names damaged media entries itself; what this pass saw of the
    // archive as a whole (cut short) it would see again.
    sidecars.problems.extend(
        problems
            .into_iter()
            .filter(|p| side_file_limit(&p.path).is_some()),
    );
    Ok((sidecars, counts))
}

/// Times a transient failure of one entry is waited out before the import stops.
const RETRIES: u32 = 6;

/// An entry read and hashed, ready to land.
struct Hashed {
    path: String,
    seen: Seen,
    hash: ChunkId,
    bytes: IncomingBytes,
    details: Details,
}

struct Run<'a, C> {
    cloud: &'a mut C,
    options: &'a Options,
    journal: &'a Journal,
    key: &'a str,
    destination: &'a str,
    sidecars: &'a Sidecars,
    /// Contents imported by this run, and the asset each became.
    this_run: HashMap<ChunkId, String>,
    /// Entries this run has sent a commit for (a retry's own commit is not a copy).
    committing: HashSet<String>,
    /// Albums made (or found) by this run.
    albums_put: HashSet<String>,
    counter: u32,
    /// Uploads on lanes of their own, and the contents and bytes they carry.
    flying: tokio::task::JoinSet<Flown>,
    flying_hashes: HashSet<ChunkId>,
    flying_bytes: u64,
}

/// A finished upload: the entry, its spooled file (kept until now), the commit's answer.
type Flown = (
    Hashed,
    Option<tempfile::TempPath>,
    Result<CommitReply, DeviceError>,
);

/// Photos uploading at once: their store fsyncs overlap (as the device's four lanes do).
const LANES: usize = 4;
/// Entry bytes held by the uploads in flight, at most (a larger entry goes alone).
const FLYING_BYTES: u64 = 256 << 20;

impl<C: Cloud> Run<'_, C> {
    /// Takes one photo or video; `Err` only for what stops the whole import.
    async fn take(&mut self, entry: Entry, summary: &mut Summary) -> Result<(), ImportError> {
        let Entry {
            path,
            size,
            modified_ms,
            content,
        } = entry;
        let seen: Seen = (size, modified_ms);
        let details = self.sidecars.details_for(&path).unwrap_or_default();
        if details.deleted {
            summary.skipped.push(Problem {
                path,
                reason: "was in the service's trash when exported: not brought back".into(),
            });
            return Ok(());
        }
        // `_spooled` keeps an unpacked entry's temporary file until its upload is over.
        let (hash, bytes, _spooled) = match hashed(content).await {
            Ok(hashed) => hashed,
            Err(e) => {
                summary.skipped.push(Problem {
                    path,
                    reason: format!("cannot be read: {e}"),
                });
                return Ok(());
            }
        };
        let entry = Hashed {
            path,
            seen,
            hash,
            bytes,
            details,
        };
        // The same bytes already on their way: once they land, this entry is their copy.
        if self.flying_hashes.contains(&entry.hash) {
            self.land_all(summary).await?;
        }
        // A transient refusal (shed load, a rate limit, a dropped connection) is waited
        // out a few times; every step is idempotent, so trying again repeats nothing.
        let mut attempt = 0;
        let incoming = loop {
            match self.prepare(&entry, summary).await {
                Err(ImportError::Cloud(e)) if e.transient && attempt < RETRIES => {
                    attempt += 1;
                    tracing::debug!(path = entry.path, attempt, error = %e, "import waits");
                    tokio::time::sleep(std::time::Duration::from_millis(50 << attempt)).await;
                }
                Err(e) => return Err(e),
                Ok(None) => return Ok(()),
                Ok(Some(incoming)) => break incoming,
            }
        };
        self.launch(entry, _spooled, incoming, summary).await
    }

    /// Sends one upload on a lane of its own (or here, for a cloud without lanes), once
    /// the lanes and the bytes in flight leave room.
    async fn launch(
        &mut self,
        entry: Hashed,
        spooled: Option<tempfile::TempPath>,
        incoming: Incoming,
        summary: &mut Summary,
    ) -> Result<(), ImportError> {
        let size = entry.seen.0;
        while !self.flying.is_empty()
            && (self.flying.len() >= LANES || self.flying_bytes + size > FLYING_BYTES)
        {
            self.land_next(summary).await?;
        }
        self.committing.insert(entry.path.clone());
        match self.cloud.lane() {
            Some(mut lane) => {
                self.flying_hashes.insert(entry.hash);
                self.flying_bytes += size;
                self.flying.spawn(async move {
                    let reply = upload_patiently(&mut lane, incoming).await;
                    (entry, spooled, reply)
                });
                Ok(())
            }
            None => {
                let reply = upload_patiently(self.cloud, incoming).await;
                drop(spooled);
                self.landed(entry, reply, summary).await
            }
        }
    }

    /// Waits for every upload in flight and lands each.
    async fn land_all(&mut self, summary: &mut Summary) -> Result<(), ImportError> {
        let mut first_error = None;
        while !self.flying.is_empty() {
            if let Err(e) = self.land_next(summary).await {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Waits for the next upload in flight to finish and lands it.
    async fn land_next(&mut self, summary: &mut Summary) -> Result<(), ImportError> {
        let Some(joined) = self.flying.join_next().await else {
            return Ok(());
        };
        // The set is never aborted, so a task's error is its panic.
        let (entry, spooled, reply) =
            joined.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        drop(spooled);
        self.flying_hashes.remove(&entry.hash);
        self.flying_bytes = self.flying_bytes.saturating_sub(entry.seen.0);
        self.landed(entry, reply, summary).await
    }

    /// What an upload's answer means: the photo's details set and the entry journalled,
    /// or why it was skipped, or the import stops.
    async fn landed(
        &mut self,
        entry: Hashed,
        reply: Result<CommitReply, DeviceError>,
        summary: &mut Summary,
    ) -> Result<(), ImportError> {
        match reply {
            Ok(reply) => {
                self.this_run.insert(entry.hash, reply.asset_id.clone());
                let mut attempt = 0;
                loop {
                    let set = self
                        .set_details(&reply.asset_id, &entry.path, &entry.details, true, summary)
                        .await;
                    match set {
                        Err(ImportError::Cloud(e)) if e.transient && attempt < RETRIES => {
                            attempt += 1;
                            tokio::time::sleep(std::time::Duration::from_millis(50 << attempt))
                                .await;
                        }
                        other => break other?,
                    }
                }
                self.journal.record(self.key, &entry.path, entry.seen)?;
                summary.imported += 1;
                summary.imported_bytes += entry.seen.0;
                Ok(())
            }
            Err(DeviceError::Cloud(e)) if stops_everything(&e.reason, e.transient) => {
                Err(ImportError::Cloud(e))
            }
            Err(e) => {
                summary.skipped.push(Problem {
                    path: entry.path,
                    reason: e.to_string(),
                });
                Ok(())
            }
        }
    }

    /// An entry the library holds already is settled here (its albums added); else the
    /// upload it needs.
    async fn prepare(
        &mut self,
        entry: &Hashed,
        summary: &mut Summary,
    ) -> Result<Option<Incoming>, ImportError> {
        let Hashed {
            path,
            seen,
            hash,
            bytes,
            details,
        } = entry;
        if !self.options.keep_duplicates
            && let Some((asset_id, there)) = self.already_there(hash, path).await?
        {
            // Takeout puts an album's photos in its folder and in the year's: the second
            // copy adds the album, not a photo.
            self.set_details(&asset_id, path, details, false, summary)
                .await?;
            self.journal.record(self.key, path, *seen)?;
            summary.already_there.push((path.clone(), there));
            return Ok(None);
        }
        Ok(Some(Incoming {
            request_id: self.request_id(path, hash),
            path: format!("{}/{}", self.destination, strip_wrappers(path)),
            file_time_ms: seen.1.unwrap_or_else(|| self.options.clock.now_ms()),
            bytes: bytes.clone(),
            overrides: Overrides {
                capture_time_ms: details.capture_time_ms,
                position_e7: details.position_e7,
            },
        }))
    }

    /// A live asset with these bytes, and its path, if the library (or this run) has one.
    /// The entry itself, landed by an earlier try that failed after its commit, does not
    /// count: trying it again finds its own commit.
    async fn already_there(
        &mut self,
        hash: &ChunkId,
        path: &str,
    ) -> Result<Option<(String, String)>, ImportError> {
        if self.committing.contains(path) {
            return Ok(None);
        }
        if let Some(asset) = self.this_run.get(hash) {
            return Ok(Some((asset.clone(), "this import".into())));
        }
        let lookups = self
            .cloud
            .lookups(std::slice::from_ref(hash))
            .await
            .map_err(ImportError::Cloud)?;
        Ok(lookups
            .into_iter()
            .flat_map(|l| l.assets)
            .find(|a| !a.trashed)
            .map(|a| (a.asset_id, a.path)))
    }

    /// Sets what the sidecar says beyond the bytes (all of it for a photo just imported,
    /// only its albums for one the library had).
    async fn set_details(
        &mut self,
        asset_id: &str,
        path: &str,
        details: &Details,
        new: bool,
        summary: &mut Summary,
    ) -> Result<(), ImportError> {
        let mut edits = Vec::new();
        if new {
            if details.favorite {
                edits.push(Edit::Favorite {
                    asset_id: asset_id.into(),
                    value: true,
                });
            }
            if details.hidden {
                edits.push(Edit::Hidden {
                    asset_id: asset_id.into(),
                    value: true,
                });
            }
            if let Some(title) = &details.description {
                edits.push(Edit::Title {
                    asset_id: asset_id.into(),
                    title: title.clone(),
                });
            }
        }
        let mut made = Vec::new();
        for album in &details.albums {
            let album_id = album_id(album);
            if !self.albums_put.contains(&album_id) {
                made.push(album_id.clone());
                edits.push(Edit::PutAlbum {
                    album_id: album_id.clone(),
                    name: album.clone(),
                });
            }
            edits.push(Edit::AlbumMember {
                album_id,
                asset_id: asset_id.into(),
                present: true,
            });
        }
        if edits.is_empty() {
            return Ok(());
        }
        let now = self.options.clock.now_ms();
        let stamped: Vec<(Edit, Hlc)> = edits
            .into_iter()
            .map(|edit| {
                self.counter = self.counter.wrapping_add(1);
                let stamp = Hlc {
                    wall_ms: now,
                    counter: self.counter,
                    device: format!("import:{}", self.options.account),
                };
                (edit, stamp)
            })
            .collect();
        let answers = match self.cloud.edits(&stamped).await {
            Ok(answers) => answers,
            Err(e) if e.transient => return Err(ImportError::Cloud(e)),
            Err(e) => vec![Err(e)],
        };
        if let Some(Err(e)) = answers
            .iter()
            .find(|a| a.as_ref().is_err_and(|e| e.transient))
        {
            return Err(ImportError::Cloud(e.clone()));
        }
        // Made now: later photos of these albums only join them.
        self.albums_put.extend(made);
        let refused: Vec<String> = answers
            .into_iter()
            .filter_map(|a| a.err())
            .map(|e| e.message)
            .collect();
        if !refused.is_empty() {
            summary.details_missed.push(Problem {
                path: path.into(),
                reason: refused.join("; "),
            });
        }
        Ok(())
    }

    fn request_id(&self, path: &str, hash: &ChunkId) -> String {
        let mut hasher = blake3::Hasher::new_derive_key("keepsake import commit");
        for part in [
            self.options.account.as_bytes(),
            self.key.as_bytes(),
            path.as_bytes(),
        ] {
            hasher.update(&(part.len() as u64).to_le_bytes());
            hasher.update(part);
        }
        hasher.update(&hash.0);
        hex::encode(&hasher.finalize().as_bytes()[..16])
    }
}

/// Uploads one file, waiting out transient refusals a few times (the commit's request id
/// makes every try the same commit).
async fn upload_patiently<C: Cloud>(
    cloud: &mut C,
    incoming: Incoming,
) -> Result<CommitReply, DeviceError> {
    let mut attempt = 0;
    loop {
        match upload_incoming(cloud, incoming.clone()).await {
            Err(DeviceError::Cloud(e)) if e.transient && attempt < RETRIES => {
                attempt += 1;
                tracing::debug!(attempt, error = %e, "upload waits");
                tokio::time::sleep(std::time::Duration::from_millis(50 << attempt)).await;
            }
            other => return other,
        }
    }
}

/// Failures after which no other file can go either.
fn stops_everything(reason: &Reason, transient: bool) -> bool {
    transient
        || matches!(
            reason,
            Reason::QuotaExceeded
                | Reason::StorageFull
                | Reason::Unauthenticated
                | Reason::DeviceRevoked
                | Reason::ClientTooOld
        )
}

/// An album's id, the same for its name in every import (a second import of the same
/// archive joins the albums the first made).
pub fn album_id(name: &str) -> String {
    let hash = blake3::Hasher::new_derive_key("keepsake import album")
        .update(name.as_bytes())
        .finalize();
    format!("import-{}", &hex::encode(hash.as_bytes())[..24])
}

/// The folders every Takeout and iCloud export wraps its photos in, which name nothing of
/// the person's own.
fn strip_wrappers(path: &str) -> &str {
    let mut rest = path;
    for wrapper in [
        "Takeout/",
        "Google Photos/",
        "Google Fotos/",
        "iCloud Photos/",
    ] {
        if let Some(inner) = rest.strip_prefix(wrapper)
            && !inner.is_empty()
        {
            rest = inner;
        }
    }
    rest
}

/// An entry's bytes as an upload takes them, and the temporary file they were unpacked
/// into (removed when dropped).
type Read = (ChunkId, IncomingBytes, Option<tempfile::TempPath>);

/// The whole-file hash of an entry's bytes, and the bytes as an upload takes them.
async fn hashed(content: Content) -> std::io::Result<Read> {
    keepsake_store::offload(move || match content {
        Content::Held(data) => Ok((ChunkId::of(&data), IncomingBytes::Held(data), None)),
        Content::Spooled(temp) => {
            let file = IncomingBytes::File(temp.to_path_buf());
            Ok((hash_file(&temp)?, file, Some(temp)))
        }
        Content::OnDisk(path) => Ok((hash_file(&path)?, IncomingBytes::File(path), None)),
    })
    .await
    .map_err(|e| std::io::Error::other(e.to_string()))?
}

fn hash_file(path: &std::path::Path) -> std::io::Result<ChunkId> {
    let mut hasher = blake3::Hasher::new();
    hasher.update_reader(std::fs::File::open(path)?)?;
    Ok(ChunkId(*hasher.finalize().as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takeout_and_icloud_wrappers_are_not_kept_as_folders() {
        assert_eq!(
            strip_wrappers("Takeout/Google Photos/Trip/IMG.jpg"),
            "Trip/IMG.jpg"
        );
        assert_eq!(
            strip_wrappers("iCloud Photos/Photos/IMG.HEIC"),
            "Photos/IMG.HEIC"
        );
        assert_eq!(strip_wrappers("holiday/IMG.jpg"), "holiday/IMG.jpg");
        assert_eq!(strip_wrappers("Takeout/x.jpg"), "x.jpg");
    }

    #[test]
    fn media_is_told_by_its_ending() {
        assert!(is_media("a/IMG_1.JPG") && is_media("b.mov") && is_media("c.dng"));
        assert!(!is_media("archive_browser.html") && !is_media("x.json") && !is_media("noext"));
    }

    #[test]
    fn album_ids_are_stable_and_distinct() {
        assert_eq!(album_id("Rome"), album_id("Rome"));
        assert_ne!(album_id("Rome"), album_id("Paris"));
        assert!(album_id("Rome").len() <= 64);
    }
}
