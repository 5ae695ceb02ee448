//! The scan: what changed in the folder since the last pass, journalled; no network.

use super::*;

/// Files modified this recently are hashed even when their stat looks unchanged.
pub(super) const RACY_WINDOW_NS: i64 = 2_000_000_000;

/// A file the device leaves out of sync, and why: shown in the agent's status and by
/// `keepsake doctor` until it is fixed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SkippedFile {
    /// Its path in the folder (a name that is not UTF-8 shown with replacement characters).
    pub path: String,
    /// A stable reason code: `NAME_NOT_UTF8`, `FILE_UNREADABLE` or `SYMLINK_NOT_FOLLOWED`.
    pub reason: String,
    /// What is wrong and what fixes it, for a person.
    pub message: String,
}

impl SkippedFile {
    pub(super) fn name_not_utf8(path: String) -> Self {
        SkippedFile {
            path,
            reason: "NAME_NOT_UTF8".into(),
            message: "its name is not UTF-8 text, which the library cannot keep: rename it \
                      and it syncs on the next pass"
                .into(),
        }
    }

    pub(super) fn symlink(path: String) -> Self {
        SkippedFile {
            path,
            reason: "SYMLINK_NOT_FOLLOWED".into(),
            message: "it is a symbolic link, and only what is in the folder itself syncs (a link \
                      could lead out of it, or in a circle): move or copy the photos in"
                .into(),
        }
    }

    pub(super) fn path_refused(path: String, why: &str) -> Self {
        SkippedFile {
            path,
            reason: "PATH_REFUSED".into(),
            message: format!(
                "the library cannot keep this path ({why}): rename it and it syncs on the \
                 next pass"
            ),
        }
    }

    pub(super) fn unreadable(path: String, error: &std::io::Error) -> Self {
        SkippedFile {
            path,
            reason: "FILE_UNREADABLE".into(),
            message: format!(
                "the device cannot read it ({error}): check its permissions and the disk; \
                 it syncs on the pass after it can be read"
            ),
        }
    }
}

/// A file of the folder that could not be read just now is left for this pass — named,
/// unless it only vanished (the next scan sees it gone) — so that it stops neither the
/// other files nor the feed; each pass tries it again.
pub(super) fn left_unread(path: &str, error: &std::io::Error, report: &mut SyncReport) {
    if error.kind() != std::io::ErrorKind::NotFound {
        tracing::warn!(path, %error, "a file in the folder cannot be read");
        report
            .skipped
            .push(SkippedFile::unreadable(path.to_string(), error));
    }
}

/// What a scan found in the folder.
#[derive(Default)]
pub(super) struct Listing {
    /// Files, by path relative to the folder.
    pub(super) files: Vec<(String, std::fs::Metadata)>,
    /// Files and directories left out, and why.
    pub(super) skipped: Vec<SkippedFile>,
    /// Directories that could not be listed: the files the journal has under them are
    /// still there as far as the device knows, never taken for deleted.
    pub(super) unlisted: Vec<String>,
    /// Files and folders left out on purpose (litter, `.keepsakeignore`): never synced,
    /// never taken for deleted either.
    pub(super) ignored: Vec<String>,
}

/// Whether `path` is the entry `dir` of the folder or below it (`a/b` is under `a`, `ab/c`
/// is not).
pub(super) fn is_under(path: &str, dir: &str) -> bool {
    path.strip_prefix(dir)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Lists `dir` into `listing`. Only the folder itself failing to list fails the scan: one
/// odd entry below it must not stop every photo syncing.
pub(super) fn walk(
    dir: &Path,
    prefix: &str,
    ignore: &Ignore,
    listing: &mut Listing,
) -> std::io::Result<()> {
    let below = |name: &str| {
        if prefix.is_empty() {
            name.to_string()
        } else {
            format!("{prefix}/{name}")
        }
    };
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = match entry.file_name().into_string() {
            Ok(name) => name,
            Err(odd) => {
                let shown = below(&odd.to_string_lossy());
                listing.skipped.push(SkippedFile::name_not_utf8(shown));
                continue;
            }
        };
        if name.starts_with(".keepsake") {
            continue;
        }
        let rel = below(&name);
        let meta = match entry.metadata() {
            Ok(meta) => meta,
            // Gone since the directory was read: the next scan sees it gone.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                listing
                    .skipped
                    .push(SkippedFile::unreadable(rel.clone(), &e));
                listing.unlisted.push(rel);
                continue;
            }
        };
        if ignore.ignores(&rel, &name, meta.is_dir()) {
            listing.ignored.push(rel);
            continue;
        }
        if (meta.is_dir() || meta.is_file())
            && let Err(e) = keepsake_path::check(&rel)
        {
            listing
                .skipped
                .push(SkippedFile::path_refused(rel.clone(), e.why));
            if meta.is_dir() {
                listing.unlisted.push(rel);
            }
            continue;
        }
        if meta.is_dir() {
            if let Err(e) = walk(&entry.path(), &rel, ignore, listing) {
                // A directory gone meanwhile is no problem to show, only one to list again.
                if e.kind() != std::io::ErrorKind::NotFound {
                    listing
                        .skipped
                        .push(SkippedFile::unreadable(rel.clone(), &e));
                }
                listing.unlisted.push(rel);
            }
        } else if meta.is_file() {
            listing.files.push((rel, meta));
        } else if meta.file_type().is_symlink() {
            listing.skipped.push(SkippedFile::symlink(rel));
        }
    }
    Ok(())
}

impl<C: Cloud> Device<C> {
    /// Looks at the folder and journals what changed; no network.
    pub(super) async fn scan(
        &mut self,
        report: &mut SyncReport,
    ) -> Result<HashSet<String>, DeviceError> {
        let mut listing = Listing::default();
        let ignore = Ignore::of(&self.config.folder);
        walk(&self.config.folder, "", &ignore, &mut listing)?;
        let on_disk = listing.files;
        let mut seen: HashSet<String> = on_disk.iter().map(|(p, _)| p.clone()).collect();
        let kept_out: Vec<&String> = listing.unlisted.iter().chain(&listing.ignored).collect();
        if !kept_out.is_empty() {
            for row in self.journal.files()? {
                if kept_out.iter().any(|dir| is_under(&row.path, dir)) {
                    seen.insert(row.path);
                }
            }
        }
        report.skipped = listing.skipped;
        report.ignored = listing.ignored;
        if self.journal.get(Key::FoundFull)?.is_none() {
            let full = !on_disk.is_empty() && self.journal.files()?.is_empty();
            self.journal
                .set(Key::FoundFull, if full { "1" } else { "0" })?;
        }
        // Rows whose file is gone from its path: moved (paired below, by inode, then by
        // content), or deleted (the rest, once the pass gets to deletes).
        let mut vanished: Vec<FileRow> = self
            .journal
            .files()?
            .into_iter()
            .filter(|r| !seen.contains(&r.path))
            .collect();
        let mut moves: Vec<(FileRow, String)> = Vec::new();
        if !vanished.is_empty() {
            // The same inode, size and time: the same file under another name. (An inode
            // alone is no proof: a file deleted frees it for the next one written.) By key,
            // so a folder of 10,000 photos renamed pairs in one look each.
            let mut by_stat: HashMap<(u64, u64, i64), Vec<FileRow>> = HashMap::new();
            for v in vanished.drain(..) {
                by_stat
                    .entry((v.inode, v.size, v.mtime_ns))
                    .or_default()
                    .push(v);
            }
            for (path, meta) in &on_disk {
                let key = (inode(meta), meta.len(), mtime_ns(meta));
                if key.0 == 0 || !by_stat.contains_key(&key) || self.journal.file(path)?.is_some() {
                    continue;
                }
                let Some(from) = by_stat.get_mut(&key).and_then(Vec::pop) else {
                    continue;
                };
                let mut row = from.clone();
                row.path = path.clone();
                self.journal.relocate(&from.path, &row)?;
                moves.push((from, path.clone()));
            }
            vanished = by_stat.into_values().flatten().collect();
            vanished.sort_by(|a, b| a.path.cmp(&b.path));
        }
        let mut fresh: Vec<String> = Vec::new();
        let now = self.clock.now_ms() * 1_000_000;
        for (path, meta) in &on_disk {
            let known = self.journal.file(path)?;
            let (size, mtime, ino) = (meta.len(), mtime_ns(meta), inode(meta));
            // A file rewritten within the file system's timestamp granularity keeps its
            // stat; only a stat old enough to have settled is trusted without hashing.
            if let Some(k) = &known
                && (k.size, k.mtime_ns, k.inode) == (size, mtime, ino)
                && now - mtime > RACY_WINDOW_NS
            {
                continue;
            }
            // A file stamped in the future (the clock was set back after it was written)
            // is not "being written": waiting for the clock to catch up could take hours.
            let age = now - mtime;
            if self.config.stable_ms > 0 && (0..self.config.stable_ms * 1_000_000).contains(&age) {
                report.unstable += 1;
                continue;
            }
            let file_hash = match self.hash_file(path).await {
                Ok(hash) => hash,
                // Left as the journal has it (a synced file stays synced, not deleted).
                Err(DeviceError::Io(e)) => {
                    left_unread(path, &e, report);
                    continue;
                }
                Err(e) => return Err(e),
            };
            let mut row = FileRow {
                path: path.clone(),
                size,
                mtime_ns: mtime,
                inode: ino,
                file_hash,
                asset_id: None,
                version: None,
                synced: false,
                lib_path: None,
                nonce: 0,
            };
            match &known {
                Some(k) => (row.lib_path, row.nonce) = (k.lib_path.clone(), k.nonce),
                None => {
                    row.nonce = self.journal.next_nonce()?;
                    fresh.push(path.clone());
                }
            }
            match known {
                // Touched or copied over with the same bytes: only the stat changed.
                Some(k) if k.file_hash == file_hash => {
                    row.asset_id = k.asset_id;
                    row.version = k.version;
                    row.synced = k.synced;
                }
                // A local edit of a synced file becomes a new version of its asset.
                Some(k) => {
                    row.asset_id = k.asset_id;
                    row.version = k.version;
                }
                None => {}
            }
            self.journal.upsert(&row)?;
        }
        // A file gone from one path while a new one has its exact bytes moved there (a
        // rename across file systems, a copy then a delete): one to one, in path order.
        for path in fresh {
            if vanished.is_empty() {
                break;
            }
            let Some(new) = self.journal.file(&path)? else {
                continue;
            };
            if let Some(at) = vanished.iter().position(|v| v.file_hash == new.file_hash) {
                let from = vanished.swap_remove(at);
                let row = FileRow {
                    path: new.path.clone(),
                    size: new.size,
                    mtime_ns: new.mtime_ns,
                    inode: new.inode,
                    ..from.clone()
                };
                self.journal.relocate(&from.path, &row)?;
                moves.push((from, new.path));
            }
        }
        for (from, to) in moves {
            self.moved_here(&from, &to, report)?;
        }
        Ok(seen)
    }

    /// Journals a rename or move a person made in the folder as an edit for every other
    /// device (nothing is uploaded). A file not yet in the library just commits at its
    /// new path.
    pub(super) fn moved_here(
        &mut self,
        from: &FileRow,
        to: &str,
        report: &mut SyncReport,
    ) -> Result<(), DeviceError> {
        tracing::info!(from = %from.path, to, asset = ?from.asset_id, "moved in the folder");
        let Some(asset_id) = from.asset_id.clone() else {
            return Ok(());
        };
        let edit = Edit::Rename {
            asset_id,
            path: to.to_string(),
        };
        self.journal
            .queue_edit(&edit, self.clock.now_ms(), &self.config.device_id)?;
        edits::show(&self.journal, &edit)?;
        if let Some(mut row) = self.journal.file(to)? {
            row.lib_path = Some(to.to_string());
            self.journal.upsert(&row)?;
        }
        report.renames_sent += 1;
        Ok(())
    }
}
