//! File-system helpers of the engine: names safe to write, modification times, inodes.

use super::*;

/// Videos are judged apart from photos (they wait for Wi-Fi on a metered link).
pub(super) fn is_video(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    ["mp4", "mov", "m4v", "avi", "mkv"]
        .iter()
        .any(|ext| lower.ends_with(&format!(".{ext}")))
}

/// The UTC day a moment falls in, shifted by the policy's offset (for daily mobile caps).
pub(super) fn day_of(now_ms: i64, utc_offset_minutes: i32) -> i64 {
    (now_ms + i64::from(utc_offset_minutes) * 60_000).div_euclid(86_400_000)
}

pub(super) fn mtime_ns(meta: &std::fs::Metadata) -> i64 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as i64)
}

#[cfg(unix)]
pub(super) fn inode(meta: &std::fs::Metadata) -> u64 {
    std::os::unix::fs::MetadataExt::ino(meta)
}

#[cfg(not(unix))]
pub(super) fn inode(_meta: &std::fs::Metadata) -> u64 {
    0
}

/// A cloud file name as a safe single path component (never `..`, a path, a hidden or
/// control-character name; `asset-ID` when nothing usable is left).
pub fn safe_name(name: &str, asset_id: &str) -> String {
    let last = name.rsplit(['/', '\\']).next().unwrap_or("");
    let cleaned: String = last
        .chars()
        .filter(|c| !c.is_control())
        .collect::<String>()
        // Dots and spaces in any order: " . .x" must not become the hidden ".x" (found by
        // the file_name fuzz target).
        .trim_start_matches(|c: char| c == '.' || c.is_whitespace())
        .trim_end()
        .to_string();
    if cleaned.is_empty() || cleaned.len() > 255 {
        format!("asset-{asset_id}")
    } else {
        cleaned
    }
}

/// The name an asset's file gets in the folder: [`safe_name`], kept to what every file
/// system a library folder may live on accepts. A memory card or a disk shared with
/// another computer is often exFAT or FAT32, which refuse `<>:"|?*` and a name ending in a
/// dot or a space: a photo named `12:30.jpg` on one device would otherwise fail its
/// download on such a folder on every pass. Names are local, so the library keeps the
/// original one.
pub(crate) fn local_name(name: &str, asset_id: &str) -> String {
    let safe = safe_name(name, asset_id);
    if safe.trim_end_matches(['.', ' ']).is_empty() {
        return format!("asset-{asset_id}");
    }
    paths::portable_component(&safe)
}

/// `name`, or `stem (2).ext`, `stem (3).ext`… whichever does not exist in `dir`.
pub(crate) fn unique_path(dir: &Path, name: &str) -> PathBuf {
    let candidate = dir.join(name);
    if !candidate.exists() {
        return candidate;
    }
    let (stem, ext) = match name.rsplit_once('.') {
        Some((s, e)) if !s.is_empty() => (s.to_string(), format!(".{e}")),
        _ => (name.to_string(), String::new()),
    };
    (2..)
        .map(|n| dir.join(format!("{stem} ({n}){ext}")))
        .find(|p| !p.exists())
        .expect("some name is free")
}

pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// Moves a file to `to` durably (its directory synced after), also onto another file
/// system (the data directory on the disk, the folder on a memory card): there it is
/// copied beside `to` under a name the scan skips, made durable and renamed in, and only
/// then is `from` removed — a crash between leaves two copies, never none.
pub(crate) fn move_file(from: &Path, to: &Path) -> std::io::Result<()> {
    let sync_parent = || to.parent().map_or(Ok(()), sync_dir);
    match std::fs::rename(from, to) {
        Ok(()) => sync_parent(),
        Err(e) if e.kind() == std::io::ErrorKind::CrossesDevices => {
            let name = to.file_name().unwrap_or_default().to_string_lossy();
            let beside = to.with_file_name(format!(".keepsake-part-{name}"));
            std::fs::copy(from, &beside)?;
            let copied = std::fs::File::open(&beside)?;
            copied.sync_all()?;
            // A large library moved across should not leave every page it wrote held,
            // for the same reason a download releases its own.
            keepsake_store::release_written_pages(&copied);
            std::fs::rename(&beside, to)?;
            sync_parent()?;
            tracing::debug!(from = %from.display(), to = %to.display(), "copied across file systems");
            std::fs::remove_file(from)
        }
        Err(e) => Err(e),
    }
}

/// Whether a write failed because the file system refuses the name itself.
pub(super) fn refused_name(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::InvalidInput | std::io::ErrorKind::InvalidFilename
    ) || e.raw_os_error() == Some(84) // EILSEQ: not valid on this file system's encoding
}

/// `len` bytes of `file` from `at` into `buf`.
pub(super) fn read_at(
    file: &std::fs::File,
    at: u64,
    len: usize,
    buf: &mut Vec<u8>,
) -> std::io::Result<()> {
    use std::io::{Read, Seek};
    let mut file = file;
    file.seek(std::io::SeekFrom::Start(at))?;
    buf.resize(len, 0);
    file.read_exact(buf)
}

/// BLAKE3 of a file's bytes (a manifest's `file_hash`), read as a stream.
pub(super) fn whole_file_hash(path: &Path) -> std::io::Result<ChunkId> {
    let mut hasher = blake3::Hasher::new();
    hasher.update_reader(std::fs::File::open(path)?)?;
    Ok(ChunkId(*hasher.finalize().as_bytes()))
}
