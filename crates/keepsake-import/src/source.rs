//! Where an import reads from: a folder tree, a zip, or a tar archive (gzipped or not),
//! read in place entry by entry — an archive is never unpacked whole, and one bad entry
//! is a problem of its own, never the end of the import.

use crate::ImportError;
use bytes::Bytes;
use std::io::{Read, Seek};
use std::path::{Path, PathBuf};

/// An entry at least this large is spooled to a temporary file rather than held (and a
/// folder's file is streamed from where it is).
pub const HELD_BELOW: u64 = 64 << 20;
/// The largest entry taken: larger is a damaged or hostile header, not a photo.
pub const MAX_ENTRY_BYTES: u64 = 64 << 30;
/// The largest side file (a JSON sidecar, an album's metadata) read.
pub const MAX_SIDE_FILE_BYTES: u64 = 1 << 20;
/// The largest details table (an iCloud export's CSV) read.
pub const MAX_TABLE_BYTES: u64 = 64 << 20;
/// An entry that expands more than this many times over is refused: photos and videos
/// are compressed already and barely shrink in an archive (a zip bomb is all ratio).
pub const MAX_EXPANSION: u64 = 100;
/// Entries smaller than this are not held to [`MAX_EXPANSION`] (tiny files compress well).
pub const EXPANSION_CHECKED_FROM: u64 = 1 << 20;

/// The kind of file an import reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A folder tree.
    Folder,
    /// A zip archive.
    Zip,
    /// A tar archive, gzipped or not.
    Tar {
        /// Compressed with gzip (`.tgz`, `.tar.gz`).
        gzip: bool,
    },
}

/// A source to import from.
#[derive(Debug, Clone)]
pub struct Source {
    root: PathBuf,
    format: Format,
}

/// An entry's bytes.
pub enum Content {
    /// Held in memory.
    Held(Bytes),
    /// Spooled from an archive into a temporary file (removed when dropped).
    Spooled(tempfile::TempPath),
    /// A file of the folder being imported, read where it is.
    OnDisk(PathBuf),
}

/// One file of the source.
pub struct Entry {
    /// Its path in the source, `/`-separated, checked to stay inside it.
    pub path: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its modification time, when the source records one.
    pub modified_ms: Option<i64>,
    /// Its bytes.
    pub content: Content,
}

/// An entry that could not be taken, and why, in words for a person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The entry (or the archive) it is about.
    pub path: String,
    /// Why.
    pub reason: String,
}

/// What a walk hands over.
pub enum Item {
    /// A file to import.
    Entry(Entry),
    /// A file that could not be read.
    Problem(Problem),
}

/// What a walk's filter decides for an entry, from its path, size and time alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Want {
    /// Read it and hand it over.
    Read,
    /// Hand over only this problem (nothing is read).
    Refuse(String),
    /// Pass over it silently.
    Pass,
}

/// What one entry's header says, before anything is read.
#[derive(Debug, Clone, Copy)]
pub struct Header<'a> {
    /// Its checked path.
    pub path: &'a str,
    /// Its size.
    pub size: u64,
    /// Its time.
    pub modified_ms: Option<i64>,
}

impl Source {
    /// A folder or an archive, told apart by what it is and its name.
    pub fn open(root: &Path) -> Result<Self, ImportError> {
        let meta = std::fs::metadata(root).map_err(|e| ImportError::Unreadable {
            path: root.display().to_string(),
            reason: e.to_string(),
        })?;
        let name = root
            .file_name()
            .map(|n| n.to_string_lossy().to_lowercase())
            .unwrap_or_default();
        let format = if meta.is_dir() {
            Format::Folder
        } else if name.ends_with(".zip") {
            Format::Zip
        } else if name.ends_with(".tgz") || name.ends_with(".tar.gz") {
            Format::Tar { gzip: true }
        } else if name.ends_with(".tar") {
            Format::Tar { gzip: false }
        } else {
            return Err(ImportError::Unreadable {
                path: root.display().to_string(),
                reason: "not a folder, a .zip, a .tgz/.tar.gz or a .tar".into(),
            });
        };
        Ok(Self {
            root: root.to_path_buf(),
            format,
        })
    }

    /// What kind of source it is.
    pub fn format(&self) -> Format {
        self.format
    }

    /// Where it is.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Names this source across runs, so an interrupted import resumes where it stopped:
    /// the folder's path, or the archive's path, size and time (another download of the
    /// same name is another source).
    pub fn key(&self) -> String {
        let canonical = std::fs::canonicalize(&self.root).unwrap_or_else(|_| self.root.clone());
        let mut hasher = blake3::Hasher::new();
        hasher.update(canonical.to_string_lossy().as_bytes());
        if self.format != Format::Folder
            && let Ok(meta) = std::fs::metadata(&self.root)
        {
            hasher.update(&meta.len().to_le_bytes());
            hasher.update(&modified_ms(&meta).unwrap_or(0).to_le_bytes());
        }
        hex::encode(&hasher.finalize().as_bytes()[..16])
    }

    /// Hands every entry `want` asks for to `visit` (which returns `false` to stop), in the
    /// source's order; where `spool` is, larger archive entries are spooled to. A damaged
    /// entry is a [`Problem`]; an archive that cannot be read on (truncated) ends the walk
    /// with a problem naming where it stopped.
    pub fn walk(
        &self,
        spool: &Path,
        want: &mut dyn FnMut(Header<'_>) -> Want,
        visit: &mut dyn FnMut(Item) -> bool,
    ) -> Result<(), ImportError> {
        let mut walk = Walk { spool, want, visit };
        match self.format {
            Format::Folder => walk.folder(&self.root, ""),
            Format::Zip => walk.zip(&self.root),
            Format::Tar { gzip } => walk.tar(&self.root, gzip),
        }
    }
}

struct Walk<'a> {
    spool: &'a Path,
    want: &'a mut dyn FnMut(Header<'_>) -> Want,
    visit: &'a mut dyn FnMut(Item) -> bool,
}

/// Stop walking (the visitor said so).
struct Stop;

impl Walk<'_> {
    fn problem(&mut self, path: &str, reason: impl Into<String>) -> Result<(), Stop> {
        let problem = Problem {
            path: path.to_string(),
            reason: reason.into(),
        };
        if (self.visit)(Item::Problem(problem)) {
            Ok(())
        } else {
            Err(Stop)
        }
    }

    fn hand(&mut self, entry: Entry) -> Result<(), Stop> {
        if (self.visit)(Item::Entry(entry)) {
            Ok(())
        } else {
            Err(Stop)
        }
    }

    /// Asks the filter about an entry with this raw name; `None` when it is not to be read
    /// (refused, passed over, or its name is unsafe — then said so).
    fn decide(
        &mut self,
        raw: &str,
        size: u64,
        modified_ms: Option<i64>,
    ) -> Result<Option<String>, Stop> {
        let path = match checked_path(raw) {
            Ok(path) => path,
            Err(why) => {
                self.problem(raw, why)?;
                return Ok(None);
            }
        };
        if size > MAX_ENTRY_BYTES {
            self.problem(
                &path,
                format!("says it holds {size} bytes, more than any photo or video: skipped"),
            )?;
            return Ok(None);
        }
        let header = Header {
            path: &path,
            size,
            modified_ms,
        };
        match (self.want)(header) {
            Want::Read => Ok(Some(path)),
            Want::Pass => Ok(None),
            Want::Refuse(why) => {
                self.problem(&path, why)?;
                Ok(None)
            }
        }
    }

    /// Reads exactly `size` bytes from `reader` — held, or spooled when large — or says
    /// why not.
    fn read_entry(&self, reader: &mut dyn Read, size: u64) -> Result<Content, String> {
        let mut limited = reader.take(size + 1);
        if size < HELD_BELOW {
            let mut data = Vec::with_capacity(size as usize);
            limited
                .read_to_end(&mut data)
                .map_err(|e| format!("cannot be read: {e}"))?;
            check_length(data.len() as u64, size)?;
            return Ok(Content::Held(Bytes::from(data)));
        }
        let mut file = tempfile::NamedTempFile::new_in(self.spool)
            .map_err(|e| format!("no room to unpack it in {}: {e}", self.spool.display()))?;
        let copied = std::io::copy(&mut limited, &mut file)
            .map_err(|e| format!("cannot be read or unpacked: {e}"))?;
        check_length(copied, size)?;
        Ok(Content::Spooled(file.into_temp_path()))
    }

    /// Reads an archive entry and hands it over, or the reason it could not be read.
    fn deliver(
        &mut self,
        reader: &mut dyn Read,
        path: String,
        size: u64,
        modified_ms: Option<i64>,
    ) -> Result<(), Stop> {
        match self.read_entry(reader, size) {
            Ok(content) => self.hand(Entry {
                path,
                size,
                modified_ms,
                content,
            }),
            Err(why) => self.problem(&path, why),
        }
    }

    fn folder(&mut self, dir: &Path, prefix: &str) -> Result<(), ImportError> {
        match self.folder_inner(dir, prefix) {
            Ok(()) | Err(Stop) => Ok(()),
        }
    }

    fn folder_inner(&mut self, dir: &Path, prefix: &str) -> Result<(), Stop> {
        let mut names: Vec<_> = match std::fs::read_dir(dir) {
            Ok(entries) => entries.filter_map(|e| e.ok()).collect(),
            Err(e) => return self.problem(prefix, format!("folder cannot be listed: {e}")),
        };
        names.sort_by_key(|e| e.file_name());
        for entry in names {
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                let shown = name.to_string_lossy().into_owned();
                self.problem(&shown, "its name is not UTF-8: rename it and import again")?;
                continue;
            };
            if name.starts_with('.') {
                continue;
            }
            let path = if prefix.is_empty() {
                name.to_string()
            } else {
                format!("{prefix}/{name}")
            };
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_symlink() {
                self.problem(&path, "a symbolic link: not followed")?;
            } else if kind.is_dir() {
                self.folder_inner(&entry.path(), &path)?;
            } else if kind.is_file() {
                let meta = match entry.metadata() {
                    Ok(meta) => meta,
                    Err(e) => {
                        self.problem(&path, format!("cannot be read: {e}"))?;
                        continue;
                    }
                };
                let Some(path) = self.decide(&path, meta.len(), modified_ms(&meta))? else {
                    continue;
                };
                let content = if meta.len() < HELD_BELOW {
                    match std::fs::read(entry.path()) {
                        Ok(data) => Content::Held(Bytes::from(data)),
                        Err(e) => {
                            self.problem(&path, format!("cannot be read: {e}"))?;
                            continue;
                        }
                    }
                } else {
                    Content::OnDisk(entry.path())
                };
                self.hand(Entry {
                    path,
                    size: meta.len(),
                    modified_ms: modified_ms(&meta),
                    content,
                })?;
            }
        }
        Ok(())
    }

    fn zip(&mut self, root: &Path) -> Result<(), ImportError> {
        let unreadable = |reason: String| ImportError::Unreadable {
            path: root.display().to_string(),
            reason,
        };
        let file = std::fs::File::open(root).map_err(|e| unreadable(e.to_string()))?;
        let mut archive = zip::ZipArchive::new(std::io::BufReader::new(file)).map_err(|e| {
            unreadable(format!(
                "not a readable zip archive ({e}): was its download cut short? \
                 Download it again"
            ))
        })?;
        for index in 0..archive.len() {
            match self.zip_entry(&mut archive, index) {
                Ok(()) => {}
                Err(Stop) => break,
            }
        }
        Ok(())
    }

    fn zip_entry<R: Read + Seek>(
        &mut self,
        archive: &mut zip::ZipArchive<R>,
        index: usize,
    ) -> Result<(), Stop> {
        let mut file = match archive.by_index(index) {
            Ok(file) => file,
            Err(e) => return self.problem(&format!("entry {index}"), format!("damaged: {e}")),
        };
        if !file.is_file() {
            return Ok(());
        }
        let raw = match file.name() {
            Ok(name) => name.into_owned(),
            Err(e) => return self.problem(&format!("entry {index}"), format!("bad name: {e}")),
        };
        let (size, packed) = (file.size(), file.compressed_size());
        let modified = file.last_modified().and_then(|t| {
            civil_ms(
                i64::from(t.year()),
                u32::from(t.month()),
                u32::from(t.day()),
                u32::from(t.hour()) * 3600 + u32::from(t.minute()) * 60 + u32::from(t.second()),
            )
        });
        let Some(path) = self.decide(&raw, size, modified)? else {
            return Ok(());
        };
        if size >= EXPANSION_CHECKED_FROM && size > packed.saturating_mul(MAX_EXPANSION) {
            let ratio = size / packed.max(1);
            return self.problem(
                &path,
                format!(
                    "expands {ratio} times over (to {size} bytes) — no photo or video does; \
                     a zip bomb? Skipped"
                ),
            );
        }
        self.deliver(&mut file, path, size, modified)
    }

    fn tar(&mut self, root: &Path, gzip: bool) -> Result<(), ImportError> {
        let unreadable = |reason: String| ImportError::Unreadable {
            path: root.display().to_string(),
            reason,
        };
        let file = std::fs::File::open(root).map_err(|e| unreadable(e.to_string()))?;
        let packed = file.metadata().map(|m| m.len()).unwrap_or(0);
        let reader: Box<dyn Read> = if gzip {
            Box::new(flate2::read::GzDecoder::new(std::io::BufReader::new(file)))
        } else {
            Box::new(std::io::BufReader::new(file))
        };
        // A tar has no directory to check sizes against before reading: the stream as a
        // whole is held to the expansion bound instead.
        let budget = packed
            .saturating_mul(MAX_EXPANSION)
            .max(EXPANSION_CHECKED_FROM);
        let mut archive = tar::Archive::new(Counted::new(reader, budget));
        let entries = archive
            .entries()
            .map_err(|e| unreadable(format!("not a readable tar archive: {e}")))?;
        let mut read = 0usize;
        for entry in entries {
            let mut entry = match entry {
                Ok(entry) => entry,
                Err(e) => {
                    let why = format!(
                        "the archive cannot be read past its first {read} entries ({e}): \
                         was its download cut short? The entries before were imported"
                    );
                    let _ = self.problem(&root.display().to_string(), why);
                    break;
                }
            };
            read += 1;
            if !entry.header().entry_type().is_file() {
                continue;
            }
            let raw = match entry.path() {
                Ok(path) => path.to_string_lossy().into_owned(),
                Err(e) => {
                    if self
                        .problem(&format!("entry {read}"), format!("bad name: {e}"))
                        .is_err()
                    {
                        break;
                    }
                    continue;
                }
            };
            let size = entry.size();
            let modified = entry
                .header()
                .mtime()
                .ok()
                .and_then(|s| i64::try_from(s).ok())
                .map(|s| s * 1000);
            let path = match self.decide(&raw, size, modified) {
                Ok(Some(path)) => path,
                Ok(None) => continue,
                Err(Stop) => break,
            };
            if self.deliver(&mut entry, path, size, modified).is_err() {
                break;
            }
        }
        Ok(())
    }
}

/// A reader that refuses to yield more than `budget` bytes: a gzip stream expanding
/// without bound fails with a reason instead of filling the disk.
struct Counted<R> {
    inner: R,
    left: u64,
}

impl<R> Counted<R> {
    fn new(inner: R, budget: u64) -> Self {
        Self {
            inner,
            left: budget,
        }
    }
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.left = self.left.checked_sub(n as u64).ok_or_else(|| {
            std::io::Error::other(format!(
                "it expands more than {MAX_EXPANSION} times over its size — no photo library \
                 does; a zip bomb?"
            ))
        })?;
        Ok(n)
    }
}

fn check_length(got: u64, size: u64) -> Result<(), String> {
    match got.cmp(&size) {
        std::cmp::Ordering::Equal => Ok(()),
        std::cmp::Ordering::Less => Err(format!(
            "ends after {got} of its {size} bytes: the archive is damaged or was cut short"
        )),
        std::cmp::Ordering::Greater => Err(format!(
            "holds more than the {size} bytes its header says: the archive is damaged"
        )),
    }
}

/// An entry's name as a relative `/`-separated path, or why it cannot be one: an archive
/// is untrusted input, and a name that climbs out (`../`) or starts at the root would
/// write outside where it belongs.
pub fn checked_path(raw: &str) -> Result<String, String> {
    // Archives made on Windows separate with backslashes.
    let unified = raw.replace('\\', "/");
    if unified.starts_with('/') || unified.chars().nth(1) == Some(':') {
        return Err("its name is an absolute path: skipped".into());
    }
    let parts: Vec<&str> = unified
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    if parts.contains(&"..") {
        return Err("its name climbs out of the archive (`..`): skipped".into());
    }
    if parts.is_empty() {
        return Err("it has no name: skipped".into());
    }
    let path = parts.join("/");
    keepsake_path::check(&path).map_err(|e| format!("{e}: skipped"))?;
    Ok(path)
}

fn modified_ms(meta: &std::fs::Metadata) -> Option<i64> {
    let since = meta
        .modified()
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?;
    i64::try_from(since.as_millis()).ok()
}

/// Unix milliseconds of a UTC civil date and a second of the day.
pub fn civil_ms(year: i64, month: u32, day: u32, second_of_day: u32) -> Option<i64> {
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || second_of_day >= 86_400 {
        return None;
    }
    let days = keepsake_media::civil::days_from_civil(year, month, day);
    Some((days * 86_400 + i64::from(second_of_day)) * 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_climb_out_or_start_at_the_root_are_refused() {
        assert_eq!(checked_path("a/./b.jpg").unwrap(), "a/b.jpg");
        assert_eq!(checked_path("win\\dir\\c.jpg").unwrap(), "win/dir/c.jpg");
        for bad in [
            "../x.jpg",
            "a/../../x.jpg",
            "/etc/passwd",
            "C:\\x.jpg",
            "",
            "./",
        ] {
            assert!(checked_path(bad).is_err(), "{bad:?} was taken");
        }
    }

    proptest::proptest! {
        /// Whatever an archive names an entry, what is taken stays inside: relative, no
        /// `..`, no empty or `.` component, no backslash — and a library path.
        #[test]
        fn a_taken_name_never_leaves_the_import(raw in "[a-zA-Z0-9./\\\\:_ -]{0,40}") {
            if let Ok(path) = checked_path(&raw) {
                proptest::prop_assert!(!path.starts_with('/') && !path.contains('\\'));
                for part in path.split('/') {
                    proptest::prop_assert!(!part.is_empty() && part != "." && part != "..");
                }
                proptest::prop_assert!(keepsake_path::check(&path).is_ok());
            }
        }
    }

    #[test]
    fn civil_dates_are_unix_time() {
        assert_eq!(civil_ms(1970, 1, 1, 0), Some(0));
        assert_eq!(
            civil_ms(2020, 6, 16, 14 * 3600 + 12 * 60),
            Some(1_592_316_720_000)
        );
        assert_eq!(civil_ms(2024, 2, 29, 0), Some(1_709_164_800_000));
        assert_eq!(civil_ms(2024, 13, 1, 0), None);
    }
}
