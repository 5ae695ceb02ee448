//! The derivative queue: every committed version gets a job (in the commit's own
//! transaction); a worker takes due jobs, reads the original from the store, asks a maker
//! for thumbnails/previews/posters, stores them content-addressed under their own holder,
//! and records them on the asset — bumping it in the feed so devices hear. A file that
//! cannot be read is marked failed with its reason and never holds up the others; a
//! transient failure is retried with a growing delay. What the maker does (image decoding,
//! ffmpeg) is not this crate's business: it is passed in.

use crate::cloud::Cloud;
use crate::error::LibraryError;
use keepsake_sql::params;
use keepsake_store::{ChunkId, ManifestId};

/// Attempts before a transiently failing job is given up as failed.
const MAX_ATTEMPTS: u32 = 5;
/// The first retry waits this long; each later one twice as long.
const FIRST_RETRY_MS: i64 = 5_000;

/// A version whose derivatives are due.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeriveJob {
    /// The account.
    pub account: String,
    /// The asset.
    pub asset_id: String,
    /// Its version.
    pub version: u32,
    /// The version's manifest.
    pub manifest: ManifestId,
    /// A video (wants a poster) rather than a still.
    pub video: bool,
    /// Attempts so far.
    pub attempts: u32,
}

/// One file made from an original.
/// The original a derivation works from. A still is handed over in memory; a video, which
/// can be hundreds of MB, only as a way to write its verified bytes out (to a file a tool
/// reads), so the server never holds one whole.
pub enum Original<'a> {
    /// A still's verified bytes.
    Still(&'a [u8]),
    /// Writes the video's bytes to the writer given, one chunk at a time; fails after the
    /// last byte when they do not match the file's hash.
    Video(&'a dyn Fn(&mut dyn std::io::Write) -> std::io::Result<u64>),
}

/// Stills larger than this get no preview rather than a decode that could exhaust memory.
pub const MAX_STILL_BYTES: u64 = 256 << 20;

/// A derivative file made from an original.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MadeFile {
    /// "thumbnail", "preview" or "poster".
    pub role: String,
    /// Its bytes (a JPEG).
    pub bytes: Vec<u8>,
    /// Width.
    pub width: u32,
    /// Height.
    pub height: u32,
}

/// What the maker did with one original.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// These files.
    Made(Vec<MadeFile>),
    /// Nothing can be made, and that is not an error (a video with no ffmpeg here).
    NoneAvailable(String),
    /// The original cannot be turned into anything (damaged, unknown format): reported.
    Unreadable(String),
    /// Something passing went wrong: try again later.
    Retry(String),
}

/// What one run of the worker did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeriveReport {
    /// Jobs whose files were made and recorded.
    pub done: usize,
    /// Jobs given up (unreadable, or out of attempts).
    pub failed: usize,
    /// Jobs for which nothing can exist.
    pub none: usize,
    /// Jobs put back for a later attempt.
    pub retried: usize,
}

impl Cloud {
    /// Whether a burst of new versions is over, so previews may take the cores from the
    /// uploads still arriving: no job was queued for the first time in the last `quiet_ms`,
    /// or the oldest has waited `max_defer_ms` (previews come late, never starve). Jobs
    /// queued again (retries, repairs) do not hold the worker back.
    pub fn uploads_quiet(&self, quiet_ms: i64, max_defer_ms: i64) -> Result<bool, LibraryError> {
        let now = self.library.clock.now_ms();
        let (oldest, newest): (Option<i64>, Option<i64>) = self.library.db().query_row(
            "SELECT MIN(next_at), MAX(next_at) FROM derive_jobs
              WHERE state = 'queued' AND attempts = 0",
            (),
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        Ok(match (oldest, newest) {
            (Some(oldest), Some(newest)) => {
                newest <= now - quiet_ms || oldest <= now - max_defer_ms
            }
            _ => true,
        })
    }

    /// Due jobs, oldest first.
    pub fn due_derivations(&self, limit: usize) -> Result<Vec<DeriveJob>, LibraryError> {
        let now = self.library.clock.now_ms();
        let db = self.library.db();
        let mut stmt = db.prepare_cached(
            "SELECT account, asset_id, version, manifest, video, attempts FROM derive_jobs
              WHERE state = 'queued' AND next_at <= ?1 ORDER BY next_at, account, asset_id LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![now, limit as i64], |r| {
            let manifest: Vec<u8> = r.get(3)?;
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, u32>(2)?,
                manifest,
                r.get::<_, bool>(4)?,
                r.get::<_, u32>(5)?,
            ))
        })?;
        let mut jobs = Vec::new();
        for row in rows {
            let (account, asset_id, version, manifest, video, attempts) = row?;
            jobs.push(DeriveJob {
                account,
                asset_id,
                version,
                manifest: ChunkId::from_slice(&manifest)
                    .map_err(|e| LibraryError::InvalidArgument(e.to_string()))?,
                video,
                attempts,
            });
        }
        Ok(jobs)
    }

    /// Runs up to `limit` due jobs through `make`.
    pub fn run_derivations(
        &self,
        limit: usize,
        make: &dyn Fn(&DeriveJob, Original<'_>) -> Outcome,
    ) -> Result<DeriveReport, LibraryError> {
        let mut report = DeriveReport::default();
        for job in self.due_derivations(limit)? {
            let outcome = if job.video {
                let write = |out: &mut dyn std::io::Write| {
                    self.store
                        .copy_file(&job.account, &job.manifest, u64::MAX, out)
                };
                make(&job, Original::Video(&write))
            } else {
                let mut bytes = Vec::new();
                match self
                    .store
                    .copy_file(&job.account, &job.manifest, MAX_STILL_BYTES, &mut bytes)
                {
                    Ok(_) => make(&job, Original::Still(&bytes)),
                    Err(e) if e.kind() == std::io::ErrorKind::FileTooLarge => {
                        Outcome::NoneAvailable(format!(
                            "a still too large to decode here ({e} bytes): no preview"
                        ))
                    }
                    // Purged since it was queued, or the store is unwell: decided below.
                    Err(e) => Outcome::Retry(format!("reading the original: {e}")),
                }
            };
            match outcome {
                Outcome::Made(files) => {
                    self.record_derived(&job, files)?;
                    report.done += 1;
                }
                Outcome::NoneAvailable(why) => {
                    self.settle(&job, "none", &why)?;
                    report.none += 1;
                }
                Outcome::Unreadable(why) => {
                    tracing::warn!(asset = %job.asset_id, version = job.version, reason = %why, "no previews can be made");
                    self.settle(&job, "failed", &why)?;
                    report.failed += 1;
                }
                Outcome::Retry(why) if job.attempts + 1 >= MAX_ATTEMPTS => {
                    self.settle(&job, "failed", &why)?;
                    report.failed += 1;
                }
                Outcome::Retry(why) => {
                    let wait = FIRST_RETRY_MS << job.attempts.min(10);
                    self.library.db().execute(
                        "UPDATE derive_jobs SET attempts = attempts + 1, next_at = ?4, last_error = ?5
                          WHERE account = ?1 AND asset_id = ?2 AND version = ?3",
                        params![
                            job.account,
                            job.asset_id,
                            job.version,
                            self.library.clock.now_ms() + wait,
                            why
                        ],
                    )?;
                    report.retried += 1;
                }
            }
        }
        if report != DeriveReport::default() {
            tracing::info!(?report, "derivatives made");
        }
        Ok(report)
    }

    /// Ends a job, and shows the asset again in the feed so devices learn how it ended.
    fn settle(&self, job: &DeriveJob, state: &str, why: &str) -> Result<(), LibraryError> {
        let mut db = self.library.db();
        let tx = db.transaction()?;
        let changed = tx.execute(
            "UPDATE derive_jobs SET state = ?4, last_error = ?5
              WHERE account = ?1 AND asset_id = ?2 AND version = ?3 AND state = 'queued'",
            params![job.account, job.asset_id, job.version, state, why],
        )?;
        if changed > 0 {
            crate::library::touch_asset(&tx, &job.account, &job.asset_id)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Stores the files (each rooted under its own holder, so a purge can release it) and
    /// records them with the job's end in one transaction. A crash between the two leaves
    /// the job queued; running it again stores the same bytes under the same holder.
    fn record_derived(&self, job: &DeriveJob, files: Vec<MadeFile>) -> Result<(), LibraryError> {
        let mut stored = Vec::new();
        for f in &files {
            let holder = format!("derived:{}:{}:{}", job.asset_id, job.version, f.role);
            let manifest = self.store.store_file(&job.account, &f.bytes, &holder)?;
            stored.push((f, manifest, holder));
        }
        let mut db = self.library.db();
        let tx = db.transaction()?;
        let live: bool = tx.query_row(
            "SELECT COUNT(*) FROM derive_jobs WHERE account = ?1 AND asset_id = ?2 AND version = ?3",
            params![job.account, job.asset_id, job.version],
            |r| r.get::<_, i64>(0),
        )? > 0;
        if !live {
            // Purged while we worked: let the references go again.
            let now = self.library.clock.now_ms();
            for (_, manifest, holder) in &stored {
                crate::library::queue_release(&tx, &job.account, &manifest.0, holder, now)?;
            }
            tx.commit()?;
            return Ok(());
        }
        for (f, manifest, holder) in &stored {
            tx.execute(
                "INSERT INTO derivatives (account, asset_id, version, role, manifest, holder, width, height, bytes)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                 ON CONFLICT (account, asset_id, version, role) DO UPDATE SET
                    manifest = ?5, holder = ?6, width = ?7, height = ?8, bytes = ?9",
                params![
                    job.account,
                    job.asset_id,
                    job.version,
                    f.role,
                    &manifest.0[..],
                    holder,
                    f.width,
                    f.height,
                    f.bytes.len() as i64
                ],
            )?;
        }
        tx.execute(
            "UPDATE derive_jobs SET state = 'done', last_error = NULL
              WHERE account = ?1 AND asset_id = ?2 AND version = ?3",
            params![job.account, job.asset_id, job.version],
        )?;
        crate::library::touch_asset(&tx, &job.account, &job.asset_id)?;
        tx.commit()?;
        Ok(())
    }
}
