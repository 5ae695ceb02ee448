//! Library paths: where a file lives in a person's library (`trip/IMG_0001.JPG`), as every
//! device recreates it.
//!
//! A path comes from a client, so it is untrusted input: [`check`] refuses anything that
//! could lead a device to write outside its folder or hide a file (`..`, absolute paths,
//! empty components, backslashes, NUL, control and bidirectional-override characters,
//! Keepsake's own `.keepsake*` names). Two paths that a case-insensitive or normalizing
//! file system (macOS, Windows, exFAT) would take for one name have the same [`fold`]ed
//! key, and the library gives the later one a [`numbered`] name.
//!
//! ```
//! use keepsake_path::{check, fold, numbered};
//! assert!(check("trip/IMG_0001.JPG").is_ok());
//! assert!(check("../etc/passwd").is_err());
//! assert_eq!(fold("Trip/IMG_0001.JPG"), fold("trip/img_0001.jpg"));
//! assert_eq!(numbered("trip/IMG_0001.JPG", 2), "trip/IMG_0001 (2).JPG");
//! ```

use unicode_normalization::UnicodeNormalization;

/// The longest path the library takes, in bytes.
pub const MAX_PATH_BYTES: usize = 1024;
/// The longest single component, in bytes: what ext4, APFS and NTFS accept.
pub const MAX_COMPONENT_BYTES: usize = 255;
/// The deepest path the library takes, in components.
pub const MAX_DEPTH: usize = 32;

/// Why a path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("path {path:?} refused: {why}")]
pub struct PathError {
    /// The path as given (cut to 80 characters).
    pub path: String,
    /// What is wrong with it, for a person.
    pub why: &'static str,
}

fn refuse(path: &str, why: &'static str) -> PathError {
    PathError {
        path: path.chars().take(80).collect(),
        why,
    }
}

/// Characters that reorder how a name is shown: a name could pose as another
/// (`photo\u{202E}gpj.exe` shows as `photoexe.jpg`).
pub fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Whether `path` may name a file in a library: relative, `/`-separated, each component
/// a plain name. Leading and trailing spaces are kept: they are part of a name.
pub fn check(path: &str) -> Result<(), PathError> {
    if path.is_empty() {
        return Err(refuse(path, "it is empty"));
    }
    if path.len() > MAX_PATH_BYTES {
        return Err(refuse(path, "it is longer than 1024 bytes"));
    }
    if path.starts_with('/') {
        return Err(refuse(path, "it is absolute"));
    }
    if path.contains('\\') {
        return Err(refuse(path, "it holds a backslash"));
    }
    if path.chars().any(|c| c.is_control() || is_bidi_control(c)) {
        return Err(refuse(
            path,
            "it holds a control or text-direction character",
        ));
    }
    let mut depth = 0;
    for component in path.split('/') {
        depth += 1;
        match component {
            "" => return Err(refuse(path, "it has an empty component")),
            "." | ".." => return Err(refuse(path, "it has a . or .. component")),
            c if c.len() > MAX_COMPONENT_BYTES => {
                return Err(refuse(path, "a component is longer than 255 bytes"));
            }
            c if c.to_lowercase().starts_with(".keepsake") => {
                return Err(refuse(path, "names starting .keepsake are Keepsake's own"));
            }
            _ => {}
        }
    }
    if depth > MAX_DEPTH {
        return Err(refuse(path, "it is more than 32 folders deep"));
    }
    Ok(())
}

/// The key two paths collide on: the same on a file system that ignores case and Unicode
/// normalization (`Café` written precomposed or decomposed, `IMG.JPG` and `img.jpg`).
pub fn fold(path: &str) -> String {
    let lower = path.nfd().collect::<String>().to_lowercase();
    lower.nfc().collect()
}

/// The file name: the last component.
pub fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// The folder part, empty at the top.
pub fn parent(path: &str) -> &str {
    path.rfind('/').map_or("", |at| &path[..at])
}

/// `path` with ` (n)` before its extension: the name a later file gets when `path` is
/// taken. The name keeps to [`MAX_COMPONENT_BYTES`]: the stem gives way at a character
/// boundary, the extension stays.
pub fn numbered(path: &str, n: u32) -> String {
    let (dir, name) = match path.rfind('/') {
        Some(at) => (&path[..=at], &path[at + 1..]),
        None => ("", path),
    };
    let (stem, ext) = split_extension(name);
    let suffix = format!(" ({n})");
    let room = MAX_COMPONENT_BYTES.saturating_sub(suffix.len() + ext.len());
    let mut cut = stem.len().min(room);
    while !stem.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{dir}{}{suffix}{ext}", &stem[..cut])
}

/// `("IMG_0001", ".JPG")`; a leading dot is part of the stem (`.hidden` has no extension).
pub fn split_extension(name: &str) -> (&str, &str) {
    match name.rfind('.') {
        Some(at) if at > 0 => (&name[..at], &name[at..]),
        _ => (name, ""),
    }
}

/// Whether `path` is `dir` or below it (`a/b` is under `a`, `ab/c` is not).
pub fn is_under(path: &str, dir: &str) -> bool {
    dir.is_empty() || path == dir || path.strip_prefix(dir).is_some_and(|r| r.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn hostile_paths_are_refused() {
        for bad in [
            "",
            "/etc/passwd",
            "../x.jpg",
            "a/../../x.jpg",
            "a/./x.jpg",
            "a//x.jpg",
            "a/",
            "a\\..\\x.jpg",
            "x\u{0}.jpg",
            "x\n.jpg",
            "photo\u{202E}gpj.exe",
            ".keepsake/journal.sqlite",
            "a/.KeepSake-tmp",
        ] {
            assert!(check(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(check("a/".repeat(40).trim_end_matches('/')).is_err());
        assert!(check(&"x".repeat(256)).is_err());
    }

    #[test]
    fn names_people_give_are_kept_as_written() {
        for good in [
            "IMG_0001.JPG",
            " leading space.jpg",
            "trailing space .jpg",
            "deep/a/b/c/d/e/nested.jpg",
            "😀 party.heic",
            "Café.jpg",
            "Cafe\u{301}.jpg",
            "12:30.jpg",
            ".hidden-but-allowed.jpg",
        ] {
            assert_eq!(check(good), Ok(()), "{good:?}");
        }
    }

    #[test]
    fn case_and_normalization_siblings_fold_to_one_key() {
        assert_eq!(fold("IMG_0002.JPG"), fold("img_0002.jpg"));
        assert_eq!(fold("Caf\u{e9}.jpg"), fold("Cafe\u{301}.jpg"));
        assert_ne!(fold("a/x.jpg"), fold("b/x.jpg"));
    }

    #[test]
    fn a_numbered_name_keeps_folder_and_extension() {
        assert_eq!(numbered("a/dup.jpg", 2), "a/dup (2).jpg");
        assert_eq!(numbered("README", 3), "README (3)");
        assert_eq!(numbered(".hidden", 2), ".hidden (2)");
        let long = format!("{}.jpg", "é".repeat(200));
        let n = numbered(&long, 12);
        assert!(file_name(&n).len() <= MAX_COMPONENT_BYTES);
        assert!(n.ends_with(" (12).jpg"));
    }

    proptest! {
        /// Whatever check accepts has no component that climbs out or is empty, and a
        /// numbered name of it is accepted too.
        #[test]
        fn accepted_paths_stay_inside_the_folder(s in "[a-zA-Z0-9 ./_\u{e9}\u{301}-]{1,40}") {
            if check(&s).is_ok() {
                prop_assert!(s.split('/').all(|c| !c.is_empty() && c != ".." && c != "."));
                let n = numbered(&s, 2);
                prop_assert!(check(&n).is_ok() || n.split('/').any(|c| c.to_lowercase().starts_with(".keepsake")));
                prop_assert_eq!(fold(&s), fold(&fold(&s)));
            }
        }
    }
}
