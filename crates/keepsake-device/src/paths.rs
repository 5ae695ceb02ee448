//! Where a library path lands on this device's disk, what the scan leaves out, and how the
//! device writes into its folder without following a link out of it.

use std::path::{Path, PathBuf};

/// What the file system under the folder refuses or folds. A folder on ext4 keeps every
/// name as written; one on a memory card (exFAT, FAT32), macOS or Windows takes `IMG.JPG`
/// and `img.jpg` for one name, and a card refuses `<>:"|?*` and names ending in a dot or a
/// space. The device behaves as such a file system would make it, so tests on ext4 (which
/// can show neither on its own) meet the same collisions and renames a phone does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FsRules {
    /// Two names that differ only in case or Unicode normalization are one name.
    pub folds_names: bool,
    /// Names keep to what exFAT and FAT accept.
    pub portable_names: bool,
}

impl FsRules {
    /// A memory card's file system: folds names and refuses the characters FAT refuses.
    pub fn memory_card() -> Self {
        Self {
            folds_names: true,
            portable_names: true,
        }
    }
}

/// One component of a library path as this file system takes it: as written, or — where
/// the file system refuses it — with `<>:"|?*` as `_`, trailing dots and spaces dropped,
/// the stem cut to leave room for a " (NNNN)".
pub(crate) fn local_component(name: &str, rules: FsRules) -> String {
    if !rules.portable_names && name.len() <= LOCAL_NAME_MAX_BYTES {
        return name.to_string();
    }
    portable_component(name)
}

/// [`local_component`] for a file system that refuses what FAT refuses.
pub(crate) fn portable_component(name: &str) -> String {
    let portable: String = name
        .chars()
        .map(|c| if "<>:\"|?*".contains(c) { '_' } else { c })
        .collect();
    let trimmed = portable.trim_end_matches(['.', ' ']);
    let trimmed = if trimmed.is_empty() { "_" } else { trimmed };
    let (stem, ext) = match trimmed.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() && ext.len() <= 16 => (stem, &trimmed[stem.len()..]),
        _ => (trimmed, ""),
    };
    let mut cut = LOCAL_NAME_MAX_BYTES
        .saturating_sub(ext.len())
        .min(stem.len());
    while !stem.is_char_boundary(cut) {
        cut -= 1;
    }
    let stem = stem[..cut].trim_end_matches(['.', ' ']);
    format!("{}{ext}", if stem.is_empty() { "_" } else { stem })
}

/// The longest name the device writes, in bytes: room for " (NNNN)" within 255.
pub(crate) const LOCAL_NAME_MAX_BYTES: usize = 240;

/// A library path (already checked by [`keepsake_path::check`]) as a path relative to the
/// folder, each component as this file system takes it.
pub(crate) fn local_path(lib_path: &str, rules: FsRules) -> String {
    lib_path
        .split('/')
        .map(|c| local_component(c, rules))
        .collect::<Vec<_>>()
        .join("/")
}

/// Whether `name` is taken in `dir`: exactly, or — on a file system that folds names — by
/// an entry that folds to the same key.
pub(crate) fn occupied(dir: &Path, name: &str, rules: FsRules) -> bool {
    if std::fs::symlink_metadata(dir.join(name)).is_ok() {
        return true;
    }
    if !rules.folds_names {
        return false;
    }
    let key = keepsake_path::fold(name);
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().into_string().ok())
            .any(|n| keepsake_path::fold(&n) == key)
    })
}

/// `name` in `dir`, or `stem (2).ext`, `stem (3).ext`… whichever is free.
pub(crate) fn unique_in(dir: &Path, name: &str, rules: FsRules) -> String {
    if !occupied(dir, name, rules) {
        return name.to_string();
    }
    (2..)
        .map(|n| keepsake_path::numbered(name, n))
        .find(|candidate| !occupied(dir, candidate, rules))
        .expect("some name is free")
}

/// Creates the folders of `rel_dir` under `folder`, one component at a time, refusing to
/// pass through anything that is not a plain directory: a symbolic link put in the folder
/// (by a person, or planted through a crafted path) never leads a write out of it.
pub(crate) fn make_dirs(folder: &Path, rel_dir: &str) -> std::io::Result<PathBuf> {
    let mut at = folder.to_path_buf();
    for component in rel_dir.split('/').filter(|c| !c.is_empty()) {
        at.push(component);
        match std::fs::symlink_metadata(&at) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    format!("{} is not a plain folder", at.display()),
                ));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir(&at)?;
                if let Some(parent) = at.parent() {
                    crate::device::sync_dir(parent)?;
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(at)
}

/// `path` without the " (n)" the library adds to a taken name: the name that was asked for.
pub(crate) fn unnumbered(path: &str) -> String {
    let dir = keepsake_path::parent(path);
    let (stem, ext) = keepsake_path::split_extension(keepsake_path::file_name(path));
    let stem = match stem.rsplit_once(" (") {
        Some((base, n))
            if n.ends_with(')')
                && n.len() > 1
                && n[..n.len() - 1].bytes().all(|b| b.is_ascii_digit()) =>
        {
            base
        }
        _ => stem,
    };
    if dir.is_empty() {
        format!("{stem}{ext}")
    } else {
        format!("{dir}/{stem}{ext}")
    }
}

/// System and editor litter no one means to keep in a photo library.
fn is_litter(name: &str) -> bool {
    let lower = name.to_lowercase();
    matches!(
        lower.as_str(),
        ".ds_store" | "thumbs.db" | "desktop.ini" | ".localized" | "icon\r" | ".spotlight-v100"
    ) || name.starts_with("._")
        || name.starts_with("~$")
        || name.starts_with(".~lock.")
        || [
            ".tmp",
            ".temp",
            ".part",
            ".partial",
            ".crdownload",
            ".download",
            ".swp",
            ".!qb",
        ]
        .iter()
        .any(|ext| lower.ends_with(ext))
}

/// What the scan leaves out: litter, and what `.keepsakeignore` (gitignore syntax, at the
/// top of the folder) names.
pub(crate) struct Ignore {
    rules: Option<ignore::gitignore::Gitignore>,
}

/// The file in the folder that names what not to sync.
pub const IGNORE_FILE: &str = ".keepsakeignore";

impl Ignore {
    /// Reads the folder's `.keepsakeignore`, if it has one; a line it cannot parse is
    /// left out (logged), never a reason to stop syncing.
    pub(crate) fn of(folder: &Path) -> Self {
        let file = folder.join(IGNORE_FILE);
        if !file.is_file() {
            return Self { rules: None };
        }
        let mut builder = ignore::gitignore::GitignoreBuilder::new(folder);
        if let Some(e) = builder.add(&file) {
            tracing::warn!(error = %e, "part of .keepsakeignore could not be read");
        }
        let rules = builder.build().map_err(|e| {
            tracing::warn!(error = %e, ".keepsakeignore could not be used");
        });
        Self { rules: rules.ok() }
    }

    /// Whether `rel` (a file, or a folder when `dir`) is left out.
    pub(crate) fn ignores(&self, rel: &str, name: &str, dir: bool) -> bool {
        (!dir && is_litter(name))
            || self
                .rules
                .as_ref()
                .is_some_and(|rules| rules.matched(rel, dir).is_ignore())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_kept_as_written_unless_the_file_system_refuses_them() {
        let exact = FsRules::default();
        assert_eq!(
            local_component(" leading space.jpg", exact),
            " leading space.jpg"
        );
        assert_eq!(local_component("12:30.jpg", exact), "12:30.jpg");
        let card = FsRules::memory_card();
        assert_eq!(local_component("12:30.jpg", card), "12_30.jpg");
        assert_eq!(local_component("trailing. ", card), "trailing");
        assert_eq!(local_path("a:b/c?.jpg", card), "a_b/c_.jpg");
    }

    #[test]
    fn a_folding_file_system_takes_case_siblings_for_one_name() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("IMG_0002.JPG"), b"x").unwrap();
        assert!(!occupied(dir.path(), "img_0002.jpg", FsRules::default()));
        assert!(occupied(dir.path(), "img_0002.jpg", FsRules::memory_card()));
        assert_eq!(
            unique_in(dir.path(), "img_0002.jpg", FsRules::memory_card()),
            "img_0002 (2).jpg"
        );
    }

    #[test]
    fn folders_are_never_made_through_a_symbolic_link() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink(outside.path(), dir.path().join("trip")).unwrap();
        #[cfg(unix)]
        assert!(make_dirs(dir.path(), "trip/day1").is_err());
        assert!(make_dirs(dir.path(), "a/b/c").unwrap().is_dir());
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    }

    #[test]
    fn the_library_s_number_is_taken_off() {
        assert_eq!(unnumbered("a/IMG_0001 (2).JPG"), "a/IMG_0001.JPG");
        assert_eq!(unnumbered("x (final).jpg"), "x (final).jpg");
        assert_eq!(unnumbered("IMG (12)"), "IMG");
    }

    #[test]
    fn litter_and_ignored_files_are_left_out() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(IGNORE_FILE), "drafts/\n*.psd\n").unwrap();
        let ignore = Ignore::of(dir.path());
        assert!(ignore.ignores(".DS_Store", ".DS_Store", false));
        assert!(ignore.ignores("a/._IMG_1.JPG", "._IMG_1.JPG", false));
        assert!(ignore.ignores("x.psd", "x.psd", false));
        assert!(ignore.ignores("drafts", "drafts", true));
        assert!(!ignore.ignores("IMG_0001.JPG", "IMG_0001.JPG", false));
    }
}
